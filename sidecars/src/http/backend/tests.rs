//! Backends as the request path uses them: picks, outcomes, ejections, health verdicts,
//! reloads and DNS changes, with no network unless a test says so.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn metrics() -> Metrics {
    Metrics::register(&prometheus::Registry::new()).unwrap()
}

fn backend_of(yaml: &str, metrics: &Metrics) -> Arc<Backend> {
    let config: config::Backend = serde_norway::from_str(yaml).unwrap();
    Backend::new(&config, None, metrics)
}

fn backend(yaml: &str) -> Arc<Backend> {
    backend_of(yaml, &metrics())
}

fn three(extra: &str) -> String {
    format!(
        "name: pool\nservers: [{{address: \"a:1\"}}, {{address: \"b:1\"}}, {{address: \"c:1\"}}]\n{extra}"
    )
}

struct Request {
    headers: HeaderMap,
    client_ip: IpAddr,
}

impl Request {
    fn plain() -> Self {
        Self {
            headers: HeaderMap::new(),
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        }
    }

    fn with(header: &str, value: &str) -> Self {
        let mut request = Self::plain();
        request.headers.insert(
            http::HeaderName::from_bytes(header.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        request
    }

    fn from(ip: [u8; 4]) -> Self {
        Self {
            client_ip: IpAddr::from(ip),
            ..Self::plain()
        }
    }

    fn ctx(&self) -> PickContext<'_> {
        PickContext {
            client_ip: self.client_ip,
            headers: &self.headers,
        }
    }
}

fn pick(backend: &Backend) -> String {
    pick_for(backend, &Request::plain())
}

fn pick_for(backend: &Backend, request: &Request) -> String {
    backend.pick(&request.ctx(), &[]).unwrap().address.clone()
}

fn shares(backend: &Backend, n: usize) -> HashMap<String, usize> {
    let mut shares = HashMap::new();
    for _ in 0..n {
        *shares.entry(pick(backend)).or_default() += 1;
    }
    shares
}

fn server(backend: &Backend, address: &str) -> Arc<Server> {
    backend
        .servers
        .load()
        .iter()
        .find(|s| s.address == address)
        .unwrap()
        .clone()
}

fn answer(backend: &Backend, address: &str, outcome: Outcome) {
    server(backend, address).begin().finish(outcome);
}

const E503: Outcome = Outcome::Status(StatusCode::SERVICE_UNAVAILABLE);
const OK: Outcome = Outcome::Status(StatusCode::OK);

fn state_of(backend: &Backend, address: &str) -> &'static str {
    backend
        .status()
        .servers
        .iter()
        .find(|s| s.address == address)
        .unwrap()
        .state
}

#[test]
fn weighted_round_robin_is_smooth() {
    let backend = backend(
        "name: pool\nservers: [{address: \"a:1\", weight: 5}, {address: \"b:1\"}, {address: \"c:1\"}]",
    );
    let order: Vec<String> = (0..7).map(|_| pick(&backend)).collect();
    assert_eq!(order, ["a:1", "a:1", "b:1", "a:1", "c:1", "a:1", "a:1"]);
}

#[test]
fn a_retry_goes_to_a_server_not_tried_yet_while_there_is_one() {
    let backend = backend(&three(""));
    let request = Request::plain();
    let mut tried = Vec::new();
    for _ in 0..3 {
        let s = backend.pick(&request.ctx(), &tried).unwrap();
        assert!(!tried.iter().any(|t| Arc::ptr_eq(t, &s)));
        tried.push(s);
    }
    // Every server tried: any will do.
    backend.pick(&request.ctx(), &tried).unwrap();
}

#[test]
fn weight_zero_takes_requests_only_when_nothing_else_can() {
    let backend = backend(
        "name: pool\nservers: [{address: \"a:1\", weight: 0}, {address: \"b:1\"}]\noutlier: {consecutive5xx: 1, maxEjectedPercent: 100}",
    );
    assert_eq!(shares(&backend, 10)["b:1"], 10);
    answer(&backend, "b:1", E503);
    assert_eq!(state_of(&backend, "b:1"), "ejected");
    assert_eq!(shares(&backend, 10)["a:1"], 10);
}

#[test]
fn least_request_prefers_fewer_attempts_in_flight_and_heavier_servers() {
    let least = backend(&three("balance: leastRequest"));
    let busy: Vec<Attempt> = (0..3)
        .flat_map(|_| [server(&least, "a:1").begin(), server(&least, "b:1").begin()])
        .collect();
    let got = shares(&least, 200);
    // c is idle: of any two chosen, it wins when it is one of them (2 pairs in 3).
    assert!(got.get("c:1").copied().unwrap_or(0) > 100, "{got:?}");
    drop(busy);
    assert_eq!(least.status().servers[0].in_flight, 0);

    let weighted = backend(
        "name: pool\nservers: [{address: \"a:1\", weight: 3}, {address: \"b:1\"}]\nbalance: leastRequest",
    );
    assert_eq!(shares(&weighted, 50)["a:1"], 50);
}

#[test]
fn peak_ewma_avoids_a_slow_server_and_tries_one_never_measured() {
    let backend = backend(&three("balance: peakEwma"));
    let now = Instant::now();
    server(&backend, "a:1")
        .state
        .ewma
        .observe(Duration::from_millis(50), now);
    server(&backend, "b:1")
        .state
        .ewma
        .observe(Duration::from_millis(1), now);
    // c, unmeasured, costs the mean of the others (25.5 ms): between them.
    let got = shares(&backend, 300);
    assert_eq!(got.get("a:1"), None, "{got:?}");
    assert!(got["b:1"] > got["c:1"] && got["c:1"] > 50, "{got:?}");
    let status = backend.status();
    assert_eq!(status.servers[0].ewma_ms.map(f64::round), Some(50.0));
    assert_eq!(status.servers[2].ewma_ms, None);
}

#[test]
fn a_failure_makes_a_server_look_slow_to_peak_ewma() {
    let backend =
        backend("name: pool\nservers: [{address: \"a:1\"}, {address: \"b:1\"}]\nbalance: peakEwma");
    answer(&backend, "b:1", OK);
    answer(&backend, "a:1", Outcome::ConnectError);
    assert_eq!(shares(&backend, 50)["b:1"], 50);
    assert!(backend.status().servers[0].ewma_ms.unwrap() >= 999.0);
}

#[test]
fn a_hashed_key_keeps_its_server_and_only_a_removed_servers_keys_move() {
    let yaml = |servers: &str| {
        format!("name: pool\nservers: [{servers}]\nbalance: {{hash: {{header: x-user}}}}")
    };
    let all = backend(&yaml(
        "{address: \"a:1\"}, {address: \"b:1\"}, {address: \"c:1\"}, {address: \"d:1\"}",
    ));
    let placed: Vec<(String, String)> = (0..1000)
        .map(|i| {
            let user = format!("user-{i}");
            let at = pick_for(&all, &Request::with("x-user", &user));
            assert_eq!(at, pick_for(&all, &Request::with("x-user", &user)));
            (user, at)
        })
        .collect();
    let mut per_server: HashMap<&str, usize> = HashMap::new();
    for (_, at) in &placed {
        *per_server.entry(at.as_str()).or_default() += 1;
    }
    for n in per_server.values() {
        assert!((180..320).contains(n), "{per_server:?}");
    }

    // c goes away (a reload): its keys spread, the others stay.
    let fewer = Backend::new(
        &serde_norway::from_str(&yaml(
            "{address: \"a:1\"}, {address: \"b:1\"}, {address: \"d:1\"}",
        ))
        .unwrap(),
        Some(&all),
        &metrics(),
    );
    for (user, before) in &placed {
        let now = pick_for(&fewer, &Request::with("x-user", user));
        if before != "c:1" {
            assert_eq!(&now, before, "{user} moved");
        }
    }
    // Another replica, built alone, places every key the same way.
    let replica = backend(&yaml(
        "{address: \"d:1\"}, {address: \"c:1\"}, {address: \"b:1\"}, {address: \"a:1\"}",
    ));
    for (user, at) in placed.iter().take(100) {
        assert_eq!(&pick_for(&replica, &Request::with("x-user", user)), at);
    }
}

#[test]
fn a_hash_respects_weights_and_requests_without_the_header_go_round_robin() {
    let backend = backend(
        "name: pool\nservers: [{address: \"a:1\", weight: 3}, {address: \"b:1\"}]\nbalance: {hash: {header: x-user}}",
    );
    let heavy = (0..2000)
        .filter(|i| pick_for(&backend, &Request::with("x-user", &format!("u{i}"))) == "a:1")
        .count();
    assert!((1380..1620).contains(&heavy), "{heavy}");
    let got = shares(&backend, 8);
    assert_eq!((got["a:1"], got["b:1"]), (6, 2));
}

#[test]
fn a_client_address_hash_keeps_each_client_on_one_server() {
    let backend = backend(&three("balance: {hash: clientIp}"));
    let mut servers = std::collections::BTreeSet::new();
    for last in 0..50 {
        let request = Request::from([10, 0, 0, last]);
        let first = pick_for(&backend, &request);
        for _ in 0..5 {
            assert_eq!(pick_for(&backend, &request), first);
        }
        servers.insert(first);
    }
    assert_eq!(servers.len(), 3);
}

#[test]
fn a_server_failing_in_a_row_is_ejected_counted_and_avoided() {
    let metrics = metrics();
    let backend = backend_of(
        &three("outlier: {consecutive5xx: 3, ejectionTime: 30s, maxEjectedPercent: 50}"),
        &metrics,
    );
    answer(&backend, "a:1", E503);
    answer(&backend, "a:1", E503);
    assert_eq!(backend.status().servers[0].consecutive_5xx, 2);
    answer(&backend, "a:1", E503);
    let a = &backend.status().servers[0];
    assert_eq!((a.state, a.ejections), ("ejected", 1));
    assert!(a.ejected_until.is_some());
    assert_eq!(server(&backend, "a:1").metrics.ejections.get(), 1);
    assert_eq!(server(&backend, "a:1").metrics.up.get(), 0);
    assert_eq!(server(&backend, "b:1").metrics.up.get(), 1);
    assert_eq!(shares(&backend, 30).get("a:1"), None);

    // 50% of 3 is one server: b fails as much but stays in.
    for _ in 0..6 {
        answer(&backend, "b:1", E503);
    }
    assert_eq!(state_of(&backend, "b:1"), "up");
    assert_eq!(server(&backend, "b:1").metrics.ejections.get(), 0);
}

#[test]
fn the_last_server_in_service_is_never_ejected() {
    let backend = backend(
        "name: pool\nservers: [{address: \"a:1\"}, {address: \"b:1\"}]\noutlier: {consecutiveConnectErrors: 2, maxEjectedPercent: 100}",
    );
    for outcome in [Outcome::ConnectError, Outcome::TimedOut] {
        answer(&backend, "a:1", outcome);
    }
    assert_eq!(state_of(&backend, "a:1"), "ejected");
    for _ in 0..4 {
        answer(&backend, "b:1", Outcome::Failed);
    }
    assert_eq!(state_of(&backend, "b:1"), "up");
    assert_eq!(shares(&backend, 10)["b:1"], 10);
}

#[test]
fn abandoned_attempts_teach_nothing() {
    let backend = backend(&three(
        "outlier: {consecutive5xx: 1, consecutiveConnectErrors: 1}\nbalance: peakEwma",
    ));
    for _ in 0..5 {
        answer(&backend, "a:1", Outcome::Abandoned);
    }
    // Dropped unfinished: cancelled by the client, nothing counted either.
    drop(server(&backend, "a:1").begin());
    let a = &backend.status().servers[0];
    assert_eq!((a.state, a.in_flight, a.ewma_ms), ("up", 0, None));
}

#[test]
fn an_ejected_server_returns_after_its_time() {
    let backend = backend(&three("outlier: {consecutive5xx: 1, ejectionTime: 50ms}"));
    answer(&backend, "a:1", E503);
    assert_eq!(state_of(&backend, "a:1"), "ejected");
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(state_of(&backend, "a:1"), "up");
    assert!(shares(&backend, 30).contains_key("a:1"));
    // Failing again with no good answer between: twice as long.
    answer(&backend, "a:1", E503);
    assert_eq!(backend.status().servers[0].ejections, 2);
}

fn checked(extra: &str) -> Arc<Backend> {
    backend(&three(&format!(
        "healthCheck: {{path: /status, healthyThreshold: 1, unhealthyThreshold: 1}}\n{extra}"
    )))
}

fn check_result(backend: &Backend, address: &str, passed: bool) {
    let check = backend.config.health_check.clone().unwrap();
    let result = if passed {
        Ok(())
    } else {
        Err("answered 503".into())
    };
    let server = server(backend, address);
    server.state.health.record(result, &check);
    server.state.refresh_gauge(Instant::now());
}

#[test]
fn unchecked_servers_serve_only_while_no_server_is_known_healthy() {
    let backend = checked("");
    assert_eq!(state_of(&backend, "a:1"), "unchecked");
    assert_eq!(server(&backend, "a:1").metrics.up.get(), 0);
    assert_eq!(shares(&backend, 30).len(), 3);
    assert!(!backend.status().panic);
    check_result(&backend, "b:1", true);
    assert_eq!(shares(&backend, 30)["b:1"], 30);
    assert_eq!(server(&backend, "b:1").metrics.up.get(), 1);
}

#[test]
fn when_every_server_is_out_requests_go_to_all_of_them() {
    let backend = checked("outlier: {consecutive5xx: 1, maxEjectedPercent: 100}");
    check_result(&backend, "a:1", true);
    check_result(&backend, "b:1", false);
    check_result(&backend, "c:1", false);
    answer(&backend, "a:1", E503);
    // a is the last server in service: not ejected.
    assert_eq!(state_of(&backend, "a:1"), "up");
    check_result(&backend, "a:1", false);
    let status = backend.status();
    assert!(status.panic);
    assert!(status.servers.iter().all(|s| s.state == "unhealthy"));
    assert_eq!(shares(&backend, 30).len(), 3);
    assert!(backend.panic.load(Ordering::Relaxed));
    check_result(&backend, "c:1", true);
    assert_eq!(shares(&backend, 10)["c:1"], 10);
    assert!(!backend.status().panic);
    assert!(!backend.panic.load(Ordering::Relaxed));
}

#[test]
fn a_reload_keeps_what_is_known_of_the_servers_it_keeps() {
    let metrics = metrics();
    let before = backend_of(
        &three("outlier: {consecutive5xx: 1}\nhealthCheck: {path: /status}"),
        &metrics,
    );
    check_result(&before, "a:1", true);
    check_result(&before, "b:1", true);
    answer(&before, "b:1", E503);
    let _running = server(&before, "a:1").begin();
    let after: config::Backend = serde_norway::from_str(
        "name: pool\nservers: [{address: \"a:1\"}, {address: \"b:1\", weight: 2}, {address: \"d:1\"}]\noutlier: {consecutive5xx: 2}\nhealthCheck: {path: /healthz}\nlimits: {maxConnections: 5}",
    )
    .unwrap();
    let after = Backend::new(&after, Some(&before), &metrics);
    let status = after.status();
    let states: Vec<(&str, &str, usize)> = status
        .servers
        .iter()
        .map(|s| (s.address.as_str(), s.state, s.in_flight))
        .collect();
    assert_eq!(
        states,
        [
            ("a:1", "up", 1),
            ("b:1", "ejected", 0),
            ("d:1", "unchecked", 0)
        ]
    );
    // Turning checks off brings an unhealthy server back.
    check_result(&after, "a:1", false);
    let unchecked: config::Backend = serde_norway::from_str(&three("")).unwrap();
    let later = Backend::new(&unchecked, Some(&after), &metrics);
    assert_eq!(state_of(&later, "a:1"), "up");
    assert_eq!(state_of(&later, "c:1"), "up");
}

#[test]
fn a_removed_server_is_no_longer_counted_up() {
    let metrics = metrics();
    let before = backend_of(&three(""), &metrics);
    let c = server(&before, "c:1").metrics.up.clone();
    assert_eq!(c.get(), 1);
    let after = Backend::new(
        &serde_norway::from_str("name: pool\nservers: [{address: \"a:1\"}]").unwrap(),
        Some(&before),
        &metrics,
    );
    drop(before);
    assert_eq!(c.get(), 0);
    assert_eq!(server(&after, "a:1").metrics.up.get(), 1);
}

#[test]
fn a_dns_backend_has_no_servers_until_resolved_then_follows_the_records() {
    let metrics = metrics();
    let backend = backend_of(
        "name: pool\ndns: {name: web.example, port: 80}\noutlier: {consecutive5xx: 1}",
        &metrics,
    );
    let request = Request::plain();
    assert!(matches!(
        backend.pick(&request.ctx(), &[]),
        Err(Unavailable::NoServers { .. })
    ));
    assert!(!backend.status().resolved);
    backend.set_servers(&["10.0.0.1:80".into(), "10.0.0.2:80".into()]);
    assert!(backend.status().resolved);
    assert_eq!(shares(&backend, 10).len(), 2);
    answer(&backend, "10.0.0.2:80", E503);
    backend.set_servers(&["10.0.0.2:80".into(), "10.0.0.3:80".into()]);
    let status = backend.status();
    let states: Vec<(&str, &str)> = status
        .servers
        .iter()
        .map(|s| (s.address.as_str(), s.state))
        .collect();
    assert_eq!(states, [("10.0.0.2:80", "ejected"), ("10.0.0.3:80", "up")]);

    // A reload that resolves the same name starts with the servers found.
    let reloaded = Backend::new(
        &serde_norway::from_str("name: pool\ndns: {name: web.example, port: 80, refresh: 1s}")
            .unwrap(),
        Some(&backend),
        &metrics,
    );
    assert!(reloaded.status().resolved);
    assert_eq!(reloaded.status().servers.len(), 2);
    let other = Backend::new(
        &serde_norway::from_str("name: pool\ndns: {name: api.example, port: 80}").unwrap(),
        Some(&backend),
        &metrics,
    );
    assert!(other.status().servers.is_empty());
}

/// A server on 127.0.0.1 answering every request with `status`, closing after each.
async fn answering(status: u16) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn health_checks_run_from_start_until_retire() {
    let good = answering(204).await;
    let moved = answering(302).await;
    let bad = answering(500).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let backend = backend(&format!(
        "name: pool\nservers: [{{address: \"{good}\"}}, {{address: \"{moved}\"}}, {{address: \"{bad}\"}}, {{address: \"{closed}\"}}]\nhealthCheck: {{path: /status, interval: 20ms, timeout: 500ms}}"
    ));
    backend.start();
    let deadline = Instant::now() + Duration::from_secs(5);
    let expected = ["up", "up", "unhealthy", "unhealthy"];
    loop {
        let status = backend.status();
        let states: Vec<&str> = status.servers.iter().map(|s| s.state).collect();
        if states == expected {
            let bad = &status.servers[2];
            assert!(
                bad.check_error.as_deref().unwrap().contains("500"),
                "{bad:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    backend.retire();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let failures = backend.status().servers[2].check_failures;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(backend.status().servers[2].check_failures, failures);
}

#[tokio::test]
async fn a_dns_backend_resolves_when_started() {
    let backend = backend("name: pool\ndns: {name: localhost, port: 8080, refresh: 1s}");
    backend.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.status().servers.is_empty() {
        assert!(Instant::now() < deadline, "localhost did not resolve");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addresses: Vec<String> = backend
        .status()
        .servers
        .into_iter()
        .map(|s| s.address)
        .collect();
    assert!(
        addresses
            .iter()
            .any(|a| a == "127.0.0.1:8080" || a == "[::1]:8080"),
        "{addresses:?}"
    );
    backend.retire();
}

#[tokio::test]
async fn a_failed_lookup_keeps_the_servers_last_known() {
    let backend = backend("name: pool\ndns: {name: nothing.invalid, port: 80, refresh: 1s}");
    backend.set_servers(&["10.0.0.1:80".into()]);
    backend.start();
    // The first lookup runs at once and fails (`.invalid` never resolves).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = backend.status();
    assert!(status.resolved);
    assert_eq!(status.servers.len(), 1);
    assert_eq!(status.servers[0].address, "10.0.0.1:80");
    backend.retire();
}
