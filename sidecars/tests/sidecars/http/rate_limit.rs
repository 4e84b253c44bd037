//! Rate limits on real processes: a token bucket per key holds its rate, keys are limited
//! apart, and refusals are 429 with a `Retry-After`. Counts only: nothing here depends on
//! how fast the machine is.

use std::time::{Duration, Instant};

use super::support::{Ambassador, Client, Reply, TestBackend, one_backend};

/// Sends `GET /` with `headers` until the reply is refused; returns how many got 200
/// (at most `tries`) and the refusal.
fn until_refused(
    client: &mut Client,
    headers: &[(&str, &str)],
    tries: usize,
) -> (usize, Option<Reply>) {
    for accepted in 0..tries {
        let reply = client.get("/", headers).unwrap();
        match reply.status {
            200 => {}
            429 => return (accepted, Some(reply)),
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    (tries, None)
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a 429 without Retry-After: {reply:?}"))
}

#[test]
fn a_rate_limit_holds_within_five_percent_over_ten_seconds() {
    let backend = TestBackend::start("app");
    let amb = Ambassador::start(&one_backend(
        &[backend.addr],
        "    rateLimit: {requestsPerSecond: 50}\n",
        "",
    ));
    let mut client = Client::new(amb.listen);
    let (mut accepted, mut refused) = (0u64, 0u64);
    let started = Instant::now();
    let mut last = started;
    while started.elapsed() < Duration::from_secs(10) {
        let reply = client.get("/", &[]).unwrap();
        last = Instant::now();
        match reply.status {
            200 => accepted += 1,
            429 => {
                refused += 1;
                assert_eq!(retry_after(&reply), 1, "a 20 ms wait is rounded up to 1 s");
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    // The bucket starts full (burst = 50) and earns 50 tokens a second from the first
    // request to the last.
    let expected = 50.0 + 50.0 * last.duration_since(started).as_secs_f64();
    let off = (accepted as f64 - expected).abs() / expected;
    assert!(
        off <= 0.05,
        "{accepted} accepted, {expected:.0} expected ({:.1} % off), {refused} refused",
        off * 100.0
    );
    assert!(refused > 0, "the client never went over the limit");
    assert_eq!(
        backend.hits(),
        accepted,
        "refused requests never reach the backend"
    );
    assert_eq!(
        amb.metric(r#"rigging_http_rate_limited_total{route="main"}"#),
        refused as f64
    );
}

#[test]
fn keys_are_limited_apart_by_header_with_the_client_address_as_fallback() {
    let backend = TestBackend::start("app");
    // 0.1 a second: no token comes back while the test runs, so counts are exact.
    let amb = Ambassador::start(&one_backend(
        &[backend.addr],
        "    rateLimit: {requestsPerSecond: 0.1, burst: 5, key: {header: x-user}}\n",
        "",
    ));
    let mut client = Client::new(amb.listen);
    let (alice, refusal) = until_refused(&mut client, &[("x-user", "alice")], 20);
    assert_eq!(alice, 5, "alice's burst");
    let wait = retry_after(&refusal.expect("alice is refused past her burst"));
    assert!(
        (1..=10).contains(&wait),
        "Retry-After {wait}: a token every 10 s"
    );
    let (bob, _) = until_refused(&mut client, &[("x-user", "bob")], 20);
    assert_eq!(bob, 5, "bob has his own bucket");
    let (nobody, _) = until_refused(&mut client, &[], 20);
    assert_eq!(nobody, 5, "without the header: the client address's bucket");
    let (again, _) = until_refused(&mut client, &[("x-user", "alice")], 20);
    assert_eq!(again, 0, "alice's bucket is still empty");
    assert_eq!(backend.hits(), 15);
}

#[test]
fn client_address_keys_follow_the_first_forwarded_for_hop() {
    let backend = TestBackend::start("app");
    let amb = Ambassador::start(&one_backend(
        &[backend.addr],
        "    rateLimit: {requestsPerSecond: 0.1, burst: 3}\n",
        "",
    ));
    let mut client = Client::new(amb.listen);
    let via = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(until_refused(&mut client, &via("192.0.2.1"), 10).0, 3);
    assert_eq!(
        until_refused(&mut client, &via("192.0.2.2, 10.0.0.1"), 10).0,
        3
    );
    assert_eq!(until_refused(&mut client, &[], 10).0, 3, "127.0.0.1 itself");
    assert_eq!(until_refused(&mut client, &via("192.0.2.1"), 10).0, 0);
}
