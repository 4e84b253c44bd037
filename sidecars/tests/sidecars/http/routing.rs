//! Routing, sticky splits, mirrors, retries and their budget, the circuit breaker, header
//! rules and reloads, on real processes.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::support::{Ambassador, Client, TestBackend, one_backend, spread};
use crate::support::{free_port, local, sidecar_bin};

fn two_backends(extra_routes: &str, a: &TestBackend, b: &TestBackend) -> String {
    format!(
        "routes:\n{extra_routes}backends:\n  - name: a\n    servers: [{{address: \"{}\"}}]\n  - name: b\n    servers: [{{address: \"{}\"}}]\n",
        a.addr, b.addr
    )
}

#[test]
fn routes_match_on_path_host_method_and_headers_in_order() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let routes = "  - name: canary-header\n    match: {headers: [{name: x-canary, value: '1'}]}\n    backend: b\n\
                  \x20 - name: images\n    match: {path: {suffix: .jpg}}\n    backend: b\n\
                  \x20 - name: users\n    match: {path: {regex: '/users/[0-9]+'}, methods: [GET]}\n    backend: b\n\
                  \x20 - name: admin-host\n    match: {host: admin.example}\n    backend: b\n\
                  \x20 - name: api\n    match: {path: {prefix: /api}}\n    backend: a\n";
    let amb = Ambassador::start(&two_backends(routes, &a, &b));
    let mut c = Client::new(amb.listen);
    let body = |c: &mut Client, path: &str, headers: &[(&str, &str)]| {
        let reply = c.get(path, headers).unwrap();
        (reply.status, reply.text().trim().to_owned())
    };
    assert_eq!(body(&mut c, "/api/orders", &[]), (200, "a".into()));
    assert_eq!(
        body(&mut c, "/api/orders", &[("x-canary", "1")]),
        (200, "b".into())
    );
    assert_eq!(body(&mut c, "/api/logo.jpg", &[]), (200, "b".into()));
    assert_eq!(body(&mut c, "/users/42", &[]), (200, "b".into()));
    let post = c.request("POST", "/users/42", &[], b"").unwrap();
    assert_eq!(post.status, 404, "a POST is not taken by a GET-only route");
    assert!(post.text().contains("POST /users/42"), "{}", post.text());
    let mut admin = Client::new(amb.listen);
    let reply = admin.get("/x", &[("Host", "admin.example:8080")]).unwrap();
    assert_eq!(
        reply.text().trim(),
        "b",
        "the host matches without its port"
    );
    let raw = raw_request(
        amb.listen,
        "GET /x HTTP/1.1\r\nHost: admin.example\r\nHost: other.example\r\n\r\n",
    );
    assert!(
        raw.starts_with("HTTP/1.1 400"),
        "two Host headers are refused: {raw}"
    );
    let raw = raw_request(amb.listen, "GET /x HTTP/1.1\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 400"), "no Host is refused: {raw}");
    let (status, _) = body(&mut c, "/apix", &[]);
    assert_eq!(status, 404, "a prefix matches at a segment boundary");
    assert_eq!(
        amb.metric(r#"rigging_http_requests_total{class="2xx",route="api"}"#),
        1.0
    );
}

fn raw_request(addr: std::net::SocketAddr, text: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(text.as_bytes()).unwrap();
    s.write_all(b"").unwrap();
    let mut out = vec![0u8; 4096];
    let n = s.read(&mut out).unwrap();
    String::from_utf8_lossy(&out[..n]).into_owned()
}

#[test]
fn the_backend_gets_the_clients_host_forwarded_for_and_header_rules() {
    let a = TestBackend::start("a");
    let route_extra = "    requestHeaders: {set: {x-env: prod}, remove: [x-internal]}\n    responseHeaders: {remove: [x-powered-by], add: {via: 1.1 rigging}}\n";
    a.headers.lock().unwrap().push("X-Powered-By: php".into());
    let amb = Ambassador::start(&one_backend(&[a.addr], route_extra, ""));
    let mut c = Client::new(amb.listen);
    let reply = c
        .get(
            "/p?q=1",
            &[
                ("x-internal", "secret"),
                ("x-forwarded-for", "192.0.2.1"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "1"),
            ],
        )
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-powered-by"), None);
    assert_eq!(reply.header("via"), Some("1.1 rigging"));
    let seen = a.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/p?q=1");
    assert_eq!(
        seen.headers["host"],
        amb.listen.to_string(),
        "the Host is the client's"
    );
    assert_eq!(seen.headers["x-forwarded-for"], "192.0.2.1, 127.0.0.1");
    assert_eq!(seen.headers["x-env"], "prod");
    assert!(!seen.headers.contains_key("x-internal"));
    assert!(
        !seen.headers.contains_key("x-hop"),
        "headers named in Connection are hop-by-hop"
    );
}

fn split_config(a: &TestBackend, b: &TestBackend, wa: u32, wb: u32) -> String {
    let routes = format!(
        "  - name: shop\n    split:\n      key: {{header: x-user}}\n      arms:\n        - {{name: stable, backend: a, weight: {wa}}}\n        - {{name: canary, backend: b, weight: {wb}}}\n"
    );
    two_backends(&routes, a, b)
}

/// The arm a user is in, by the backend that answered, and the cookie set if any.
fn arm_of(c: &mut Client, user: &str, cookie: Option<&str>) -> (String, Option<String>) {
    let mut headers = vec![("x-user", user)];
    let cookie_header;
    if let Some(arm) = cookie {
        cookie_header = format!("rigging-shop={arm}");
        headers.push(("cookie", cookie_header.as_str()));
    }
    let reply = c.get("/", &headers).unwrap();
    assert_eq!(reply.status, 200);
    let set = reply.header("set-cookie").map(|v| {
        v.split(';')
            .next()
            .unwrap()
            .trim_start_matches("rigging-shop=")
            .to_owned()
    });
    (reply.text().trim().to_owned(), set)
}

#[test]
fn a_user_stays_in_one_arm_across_requests_and_a_change_of_weights() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let amb = Ambassador::start(&split_config(&a, &b, 50, 50));
    let mut c = Client::new(amb.listen);

    // One user, 1,000 requests, with and without sending the cookie back: one arm.
    let (first, cookie) = arm_of(&mut c, "alice", None);
    let cookie = cookie.expect("the first answer sets the arm cookie");
    assert_eq!(cookie, if first == "a" { "stable" } else { "canary" });
    for i in 0..1000 {
        let with_cookie = i % 2 == 0;
        let (arm, set) = arm_of(&mut c, "alice", with_cookie.then_some(cookie.as_str()));
        assert_eq!(arm, first, "request {i} changed arm");
        if with_cookie {
            assert_eq!(set, None, "a cookie that names the arm is not set again");
        }
    }

    // 200 users pick their arms at 50/50, keeping their cookies.
    let users: Vec<(String, String, String)> = (0..200)
        .map(|i| {
            let user = format!("user-{i}");
            let (arm, cookie) = arm_of(&mut c, &user, None);
            (user, arm, cookie.unwrap())
        })
        .collect();
    // The canary is ramped down to 10 %: everyone with a cookie stays where they were.
    amb.reload(&split_config(&a, &b, 90, 10));
    for (user, arm, cookie) in &users {
        assert_eq!(
            &arm_of(&mut c, user, Some(cookie)).0,
            arm,
            "{user} changed arm"
        );
    }
    // Without cookies the hash decides: nobody who was in the stable arm moves (its share
    // grew), only some canary users do.
    for (user, arm, _) in &users {
        if arm == "a" {
            assert_eq!(
                arm_of(&mut c, user, None).0,
                "a",
                "{user} left the arm that grew"
            );
        }
    }
    // An arm taken out of the config frees its users: they are placed by the hash again.
    let only_stable = two_backends(
        "  - name: shop\n    split:\n      key: {header: x-user}\n      arms:\n        - {name: stable, backend: a, weight: 1}\n",
        &a,
        &b,
    );
    amb.reload(&only_stable);
    let canary_user = users
        .iter()
        .find(|(_, arm, _)| arm == "b")
        .expect("someone was in the canary");
    let (arm, set) = arm_of(&mut c, &canary_user.0, Some(&canary_user.2));
    assert_eq!((arm.as_str(), set.as_deref()), ("a", Some("stable")));
}

#[test]
fn ten_thousand_new_users_split_within_two_points_of_the_weights() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let amb = Ambassador::start(&split_config(&a, &b, 80, 20));
    let mut c = Client::new(amb.listen);
    let mut canary = 0;
    for i in 0..10_000 {
        if arm_of(&mut c, &format!("new-user-{i}"), None).0 == "b" {
            canary += 1;
        }
    }
    let share = f64::from(canary) / 100.0;
    assert!(
        (18.0..=22.0).contains(&share),
        "canary got {share:.2} % of new users, want 20 ± 2"
    );
    assert_eq!(
        amb.metric(r#"rigging_http_split_total{arm="canary",route="shop"}"#),
        f64::from(canary)
    );
}

#[test]
fn the_mirror_gets_its_share_and_a_failing_or_hanging_shadow_changes_nothing() {
    let main = TestBackend::start("main");
    let shadow = TestBackend::start("shadow");
    let config = format!(
        "routes:\n  - name: api\n    backend: main\n    mirror: {{backend: shadow, percent: 25}}\n    timeout: 2s\n\
         backends:\n  - name: main\n    servers: [{{address: \"{}\"}}]\n  - name: shadow\n    servers: [{{address: \"{}\"}}]\n",
        main.addr, shadow.addr
    );
    let amb = Ambassador::start(&config);
    let counts = spread(amb.listen, 2000, &[("host", "api.example")]);
    assert_eq!(counts.get("main"), Some(&2000), "{counts:?}");
    // Copies run in the background: wait for them to land.
    std::thread::sleep(Duration::from_millis(500));
    let copies = shadow.hits();
    assert!(
        (450..=550).contains(&copies),
        "the shadow got {copies} of 2000, want 25 %"
    );
    let seen = shadow.seen.lock().unwrap()[0].clone();
    assert_eq!(
        seen.headers["host"], "api.example",
        "the copy keeps the Host"
    );

    // A shadow that drops every connection, then one that hangs past the route timeout.
    shadow.broken.store(true, Ordering::SeqCst);
    let counts = spread(amb.listen, 400, &[]);
    assert_eq!(counts.get("main"), Some(&400), "{counts:?}");
    shadow.broken.store(false, Ordering::SeqCst);
    shadow.delay_ms.store(10_000, Ordering::SeqCst);
    let counts = spread(amb.listen, 400, &[]);
    assert_eq!(counts.get("main"), Some(&400), "{counts:?}");
    assert!(amb.metric(r#"rigging_http_mirrored_total{result="failed",route="api"}"#) >= 50.0);
}

#[test]
fn retries_cover_connect_failures_and_idempotent_requests_only() {
    let good = TestBackend::start("good");
    let broken = TestBackend::start("broken");
    broken.broken.store(true, Ordering::SeqCst);
    let dead = local(free_port());
    let config = one_backend(
        &[good.addr, broken.addr, dead],
        "    retries: {attempts: 3, budgetPercent: 100}\n",
        "",
    );
    let amb = Ambassador::start(&config);
    let counts = spread(amb.listen, 300, &[]);
    assert_eq!(
        counts.get("good"),
        Some(&300),
        "GETs are retried past a dead and a broken server: {counts:?}"
    );

    // A POST that reached the broken server is not sent again: it may have had its effect.
    let mut c = Client::new(amb.listen);
    let before = broken.hits();
    let mut statuses = HashMap::new();
    for _ in 0..30 {
        let status = c
            .request("POST", "/orders", &[], b"{\"qty\":1}")
            .map(|r| r.status)
            .unwrap_or(0);
        *statuses.entry(status).or_insert(0) += 1;
    }
    let posts_to_broken = broken.hits() - before;
    assert!(
        posts_to_broken > 0,
        "round robin sends some POSTs to the broken server"
    );
    assert_eq!(
        statuses.get(&502).copied().unwrap_or(0) as u64,
        posts_to_broken,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.get(&200).copied().unwrap_or(0) + statuses.get(&502).copied().unwrap_or(0),
        30,
        "{statuses:?}"
    );
}

#[test]
fn the_retry_budget_keeps_a_failing_backend_from_a_retry_storm() {
    let failing = TestBackend::start("failing");
    failing.status.store(503, Ordering::SeqCst);
    let config = one_backend(
        &[failing.addr],
        "    retries: {attempts: 3, budgetPercent: 20, minPerSecond: 0}\n",
        "",
    );
    let amb = Ambassador::start(&config);
    let counts = spread(amb.listen, 1000, &[]);
    assert_eq!(counts.get("503"), Some(&1000), "{counts:?}");
    // Without a budget 3 retries each would be 4,000 attempts.
    let attempts = failing.hits();
    assert!(
        attempts <= 1220,
        "{attempts} attempts for 1000 requests: over the 20 % budget"
    );
    assert!(amb.metric(r#"rigging_http_retries_total{result="refused",route="main"}"#) > 0.0);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn past_its_limits_a_backend_answers_503_at_once_and_memory_stays_bounded() {
    let slow = TestBackend::start("slow");
    slow.delay_ms.store(300, Ordering::SeqCst);
    let config = one_backend(
        &[slow.addr],
        "",
        "    limits: {maxConnections: 2, maxPending: 2}\n",
    );
    let amb = Ambassador::start(&config);
    let before = rss_kib(amb.proc.pid());
    let listen = amb.listen;
    let threads: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::new(listen);
                (0..5)
                    .map(|_| c.get("/", &[]).map(|r| r.status).unwrap_or(0))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(
        ok + refused,
        500,
        "every request got 200 or 503: {statuses:?}"
    );
    // At most 4 are served or waiting at any time; the rest are refused, not queued.
    assert!(refused >= 400, "only {refused} of 500 refused");
    assert!(slow.hits() as usize == ok);
    assert_eq!(
        amb.metric(r#"rigging_http_overloaded_total{backend="pool"}"#),
        refused as f64
    );
    let after = rss_kib(amb.proc.pid());
    assert!(
        after < before + 50 * 1024,
        "RSS grew from {before} KiB to {after} KiB under overload"
    );
}

/// Runs the ambassador on `config` until it exits (it should: the file is bad).
fn start_once(config: &std::path::Path) -> std::process::Output {
    start_once_with(config, &[])
}

/// [`start_once`] with more flags.
fn start_once_with(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(sidecar_bin())
        .args(["http", "--config", config.to_str().unwrap()])
        .args(extra)
        .args(["--listen", &local(free_port()).to_string()])
        .args(["--admin", &local(free_port()).to_string()])
        .output()
        .unwrap()
}

#[test]
fn a_bad_config_is_refused_naming_the_field_and_the_old_one_keeps_serving() {
    let a = TestBackend::start("a");
    let good = one_backend(&[a.addr], "", "");
    // At start-up: the process exits and says which field.
    let dir = tempfile::tempdir().unwrap();
    let bad_path = dir.path().join("http.yaml");
    std::fs::write(&bad_path, good.replace("backend: pool", "backend: pools")).unwrap();
    let out = start_once(&bad_path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].backend: no backend is named \"pools\""),
        "{stderr}"
    );
    std::fs::write(&bad_path, good.replace("servers:", "server:")).unwrap();
    let out = start_once(&bad_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `server`"), "{stderr}");

    // On reload: refused, counted, and the old table keeps serving on the same connection.
    let amb = Ambassador::start(&good);
    let mut c = Client::new(amb.listen);
    assert_eq!(c.get("/", &[]).unwrap().status, 200);
    amb.reload(&good.replace("name: main", "name: \"bad name\""));
    assert_eq!(
        amb.metric("rigging_http_config_reloads_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(c.get("/", &[]).unwrap().text().trim(), "a");
}

#[test]
fn a_cache_the_memory_limit_cannot_hold_is_refused_at_start_and_on_reload() {
    let a = TestBackend::start("a");
    let with_cache = |size: &str| {
        format!(
            "{}cache: {{maxSize: {size}}}\n",
            one_backend(&[a.addr], "    cache: true\n", "")
        )
    };
    let limit = ["--memory-limit", "100Mi"];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.yaml");
    std::fs::write(&path, with_cache("64Mi")).unwrap();
    let out = start_once_with(&path, &limit);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cache.maxSize: 64Mi is more than half the container's memory limit 100Mi"),
        "{stderr}"
    );

    let amb = Ambassador::start_with(&with_cache("50Mi"), &limit);
    let mut c = Client::new(amb.listen);
    assert_eq!(c.get("/", &[]).unwrap().text().trim(), "a");
    amb.reload(&with_cache("51Mi"));
    assert_eq!(
        amb.metric("rigging_http_config_reloads_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(c.get("/", &[]).unwrap().text().trim(), "a");
}

#[test]
fn a_reload_changes_routing_without_dropping_a_kept_alive_connection() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let amb = Ambassador::start(&two_backends("  - name: all\n    backend: a\n", &a, &b));
    let mut c = Client::new(amb.listen);
    assert_eq!(c.get("/", &[]).unwrap().text().trim(), "a");
    amb.reload(&two_backends("  - name: all\n    backend: b\n", &a, &b));
    // Same client connection (Client reconnects only on error, which would show as a
    // second connection in the backend's view: the ambassador's side is what matters).
    let reply = c.get("/", &[]).unwrap();
    assert_eq!(reply.text().trim(), "b");
    assert_eq!(
        amb.metric("rigging_http_config_reloads_total{result=\"ok\"}"),
        1.0
    );
}

#[test]
fn sighup_reloads_the_config_at_once() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    // Files are polled only hourly: only the hang-up can make this reload happen.
    let amb = Ambassador::start_with(
        &two_backends("  - name: all\n    backend: a\n", &a, &b),
        &["--reload-interval", "1h"],
    );
    std::fs::write(
        &amb.config,
        two_backends("  - name: all\n    backend: b\n", &a, &b),
    )
    .unwrap();
    crate::support::signal(amb.proc.pid(), "HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while amb.metric("rigging_http_config_reloads_total{result=\"ok\"}") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        Client::new(amb.listen).get("/", &[]).unwrap().text().trim(),
        "b"
    );
}

#[test]
fn a_port_in_use_is_reported_once_with_its_cause() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TestBackend::start("a");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.yaml");
    std::fs::write(&path, one_backend(&[a.addr], "", "")).unwrap();
    let out = Command::new(sidecar_bin())
        .args(["http", "--config", path.to_str().unwrap()])
        .args(["--listen", &taken.local_addr().unwrap().to_string()])
        .args(["--admin", &local(free_port()).to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("rigging-sidecar: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains(&format!("cannot listen on {}", taken.local_addr().unwrap())),
        "{line}"
    );
    assert_eq!(
        line.matches("in use").count(),
        1,
        "the cause is said once: {line}"
    );
}

#[test]
fn a_split_route_with_a_cache_serves_users_in_each_arm_from_the_cache() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let config = format!(
        "{}cache: {{maxSize: 1Mi}}\n",
        split_config(&a, &b, 50, 50)
            .replace("  - name: shop\n", "  - name: shop\n    cache: true\n")
    );
    a.headers
        .lock()
        .unwrap()
        .push("Cache-Control: max-age=60".into());
    b.headers
        .lock()
        .unwrap()
        .push("Cache-Control: max-age=60".into());
    let amb = Ambassador::start(&config);
    let mut c = Client::new(amb.listen);
    for i in 0..40 {
        let user = format!("cached-user-{i}");
        let (_, cookie) = arm_of(&mut c, &user, None);
        // With its arm cookie, the user is still served from the cache.
        arm_of(&mut c, &user, cookie.as_deref());
    }
    // One fill per arm; everything else came from the cache, cookie or not.
    assert_eq!((a.hits(), b.hits()), (1, 1));
    let seen = a.seen.lock().unwrap()[0].clone();
    assert!(
        !seen.headers.contains_key("cookie"),
        "the split's cookie is the ambassador's"
    );
}

/// A server that answers every upgrade request with `101` and then echoes bytes.
fn echo_upgrade_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: echo") || !head.contains("connection: upgrade") {
                    let _ = s.write_all(b"HTTP/1.1 400 X\r\ncontent-length: 0\r\n\r\n");
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n");
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn an_upgrade_becomes_a_tunnel_to_the_server() {
    use std::io::{Read, Write};
    let amb = Ambassador::start(&one_backend(&[echo_upgrade_server()], "", ""));
    let mut s = std::net::TcpStream::connect(amb.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed after {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for word in ["ping", "pong and more"] {
        s.write_all(word.as_bytes()).unwrap();
        let mut got = vec![0u8; word.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, word.as_bytes());
    }
}
