//! `rigging-sidecar metrics` against real Redis, memcached and nginx, and a JSON endpoint
//! served by the test; every exposition is checked by `promtool check metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    self, Proc, free_port, http_get, local, redis_server_on, require_tool, wait_port, wait_ready,
};

const WAIT: Duration = Duration::from_secs(30);

/// Starts the adapter on a free port and waits until it is ready.
fn adapter(source: &str, interval: &str) -> (Proc, SocketAddr) {
    let listen = local(free_port());
    let proc = Proc::sidecar(&[
        "metrics",
        "--source",
        source,
        "--admin",
        &listen.to_string(),
        "--interval",
        interval,
    ]);
    wait_ready(listen, WAIT);
    (proc, listen)
}

/// GET /metrics, which must answer 200.
fn scrape(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Fails the test unless `promtool check metrics` accepts `text` without a single lint.
pub fn promtool_check(text: &str) {
    let mut child = Command::new(require_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics refused the exposition:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The value of the sample written exactly as `series` (name plus labels), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("sample value"))
}

/// Polls `f` until it returns `Some`, for at most `WAIT`.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `redis-cli -p PORT args…` and returns its output.
fn redis_cli(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(require_tool("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Calls of INFO the server had answered before this one (which is an INFO itself, so
/// each measurement adds one to the next).
fn info_calls(addr: SocketAddr) -> u64 {
    let stats = redis_cli(addr, &["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_info:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn redis_info_becomes_a_clean_exposition_with_keys_per_db() {
    let (_redis, addr) = support::redis_server();
    redis_cli(addr, &["SET", "a", "1"]);
    redis_cli(addr, &["-n", "2", "SET", "b", "1"]);
    redis_cli(addr, &["-n", "2", "SETEX", "c", "100", "1"]);
    redis_cli(addr, &["GET", "a"]);
    redis_cli(addr, &["GET", "missing"]);
    let (mut adapter_proc, admin) = adapter(&format!("redis://{addr}"), "0s");

    let text = scrape(admin);
    promtool_check(&text);
    assert_eq!(sample(&text, "redis_up"), Some(1.0));
    assert_eq!(sample(&text, "redis_db_keys{db=\"db0\"}"), Some(1.0));
    assert_eq!(sample(&text, "redis_db_keys{db=\"db2\"}"), Some(2.0));
    assert_eq!(
        sample(&text, "redis_db_keys_expiring{db=\"db2\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "redis_keyspace_hits_total"), Some(1.0));
    assert_eq!(sample(&text, "redis_keyspace_misses_total"), Some(1.0));
    assert!(sample(&text, "redis_connected_clients").unwrap() >= 1.0);
    assert!(sample(&text, "redis_memory_used_bytes").unwrap() > 0.0);
    assert!(sample(&text, "redis_commands_processed_total").unwrap() >= 5.0);
    assert!(text.contains("# TYPE redis_commands_processed_total counter\n"));
    assert!(text.contains("role=\"master\""), "{text}");
    assert_eq!(
        sample(&text, "redis_commands_total{cmd=\"setex\"}"),
        Some(1.0)
    );

    adapter_proc.terminate();
    assert_eq!(adapter_proc.wait_exit(WAIT), Some(0), "SIGTERM must exit 0");
}

#[test]
fn redis_down_answers_up_0_and_the_values_come_back_with_it() {
    let port = free_port();
    let redis = redis_server_on(port, &[]);
    let addr = local(port);
    let (_adapter, admin) = adapter(&format!("redis://{addr}"), "0s");
    assert_eq!(sample(&scrape(admin), "redis_up"), Some(1.0));

    drop(redis);
    let text = eventually("redis_up 0", || {
        let text = scrape(admin);
        (sample(&text, "redis_up") == Some(0.0)).then_some(text)
    });
    promtool_check(&text);
    assert!(
        !text.contains("redis_connected_clients"),
        "stale values while down:\n{text}"
    );
    // The adapter's own metrics are refreshed at most once a second.
    eventually("the failed request counted", || {
        let errors = sample(&scrape(admin), "rigging_metrics_source_errors_total")?;
        (errors >= 1.0).then_some(())
    });

    let _redis = redis_server_on(port, &[]);
    redis_cli(addr, &["SET", "back", "1"]);
    let text = eventually("redis_up 1", || {
        let text = scrape(admin);
        (sample(&text, "redis_up") == Some(1.0)).then_some(text)
    });
    assert_eq!(sample(&text, "redis_db_keys{db=\"db0\"}"), Some(1.0));
    promtool_check(&text);
}

#[test]
fn a_password_in_the_source_url_is_used_and_never_shown() {
    let port = free_port();
    let _redis = redis_server_on(port, &["--requirepass", "s3cret"]);
    let (_good, admin) = adapter(&format!("redis://:s3cret@127.0.0.1:{port}"), "0s");
    let text = scrape(admin);
    assert_eq!(sample(&text, "redis_up"), Some(1.0));
    assert!(!text.contains("s3cret"), "{text}");

    let (_bad, admin) = adapter(&format!("redis://:wrong@127.0.0.1:{port}"), "0s");
    assert_eq!(sample(&scrape(admin), "redis_up"), Some(0.0));
}

#[test]
fn a_burst_of_scrapes_within_the_interval_costs_one_info() {
    let (_redis, addr) = support::redis_server();
    let (_cached, admin) = adapter(&format!("redis://{addr}"), "10m");
    let before = info_calls(addr);
    let first = scrape(admin);
    for _ in 0..5 {
        assert_eq!(
            scrape(admin),
            first,
            "a cached scrape must be the same body"
        );
    }
    assert_eq!(info_calls(addr) - before - 1, 1);

    let (_uncached, admin) = adapter(&format!("redis://{addr}"), "0s");
    let before = info_calls(addr);
    for _ in 0..5 {
        scrape(admin);
    }
    assert_eq!(
        info_calls(addr) - before - 1,
        5,
        "--interval 0s asks on every scrape"
    );
}

#[test]
fn memcached_stats_become_a_clean_exposition() {
    let (_memcached, addr) = support::memcached();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(b"set k 0 0 1\r\nx\r\nget k\r\nget nope\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.ends_with(b"END\r\nEND\r\n") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "memcached closed the connection");
        seen.extend_from_slice(&buf[..n]);
    }
    let (_adapter, admin) = adapter(&format!("memcached://{addr}"), "0s");

    let text = scrape(admin);
    promtool_check(&text);
    assert_eq!(sample(&text, "memcached_up"), Some(1.0));
    let hits = "memcached_commands_total{command=\"get\",status=\"hit\"}";
    assert_eq!(sample(&text, hits), Some(1.0));
    let misses = "memcached_commands_total{command=\"get\",status=\"miss\"}";
    assert_eq!(sample(&text, misses), Some(1.0));
    assert_eq!(sample(&text, "memcached_current_items"), Some(1.0));
    assert_eq!(
        sample(&text, "memcached_limit_bytes"),
        Some(64.0 * 1024.0 * 1024.0)
    );
    assert!(sample(&text, "memcached_current_connections").unwrap() >= 2.0);
}

#[test]
fn nginx_stub_status_becomes_a_clean_exposition() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  \
         proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  \
         scgi_temp_path {d};\n  server {{ listen 127.0.0.1:{port}; \
         location /stub_status {{ stub_status; }} }}\n}}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let error_log = dir.path().join("error.log");
    let _nginx = Proc::spawn(
        require_tool("nginx"),
        &[
            "-c",
            conf_path.to_str().unwrap(),
            "-e",
            error_log.to_str().unwrap(),
        ],
    );
    wait_port(local(port), WAIT);
    for _ in 0..3 {
        http_get(local(port), "/stub_status").unwrap();
    }
    let (_adapter, admin) = adapter(
        &format!("nginx-status+http://127.0.0.1:{port}/stub_status"),
        "0s",
    );

    let text = scrape(admin);
    promtool_check(&text);
    assert_eq!(sample(&text, "nginx_up"), Some(1.0));
    // Three requests by the test, and this scrape's own is the fourth (wait_port's bare
    // connection is accepted but makes no request).
    assert_eq!(sample(&text, "nginx_http_requests_total"), Some(4.0));
    assert!(sample(&text, "nginx_connections_accepted_total").unwrap() >= 4.0);
    assert_eq!(sample(&text, "nginx_connections_writing"), Some(1.0));
}

/// A JSON endpoint answering whatever `body` holds at the time of the request.
fn json_server(body: Arc<Mutex<String>>) -> SocketAddr {
    support::http_stub(move || (200, "application/json", body.lock().unwrap().clone()))
}

#[test]
fn a_json_endpoint_is_mapped_by_the_yaml_rules() {
    let body = Arc::new(Mutex::new(
        r#"{"queue": {"depth": 7}, "http": {"get": 10, "post": 3}, "ok": true}"#.to_owned(),
    ));
    let server = json_server(body.clone());
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("map.yaml");
    std::fs::write(
        &map,
        "namespace: shop\nmetrics:\n\
         - {pointer: /queue/depth, name: shop_queue_depth, type: gauge, help: Jobs waiting.}\n\
         - {pointer: /http/get, name: shop_requests_total, type: counter, help: Requests., labels: {method: GET}}\n\
         - {pointer: /http/post, name: shop_requests_total, type: counter, help: Requests., labels: {method: POST}}\n\
         - {pointer: /ok, name: shop_healthy, type: gauge, help: Self-check passes.}\n",
    )
    .unwrap();
    let (_adapter, admin) = adapter(
        &format!("json+http://{server}/stats?map={}", map.display()),
        "0s",
    );

    let text = scrape(admin);
    promtool_check(&text);
    assert_eq!(sample(&text, "shop_up"), Some(1.0));
    assert_eq!(sample(&text, "shop_queue_depth"), Some(7.0));
    assert_eq!(
        sample(&text, "shop_requests_total{method=\"GET\"}"),
        Some(10.0)
    );
    assert_eq!(
        sample(&text, "shop_requests_total{method=\"POST\"}"),
        Some(3.0)
    );
    assert_eq!(sample(&text, "shop_healthy"), Some(1.0));

    *body.lock().unwrap() = r#"{"queue": {"depth": 2}, "#.to_owned();
    let text = scrape(admin);
    assert_eq!(sample(&text, "shop_up"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "shop_queue_depth"), None);
    promtool_check(&text);
}

#[test]
fn a_changed_mapping_file_is_used_without_a_restart_and_a_broken_one_is_not() {
    let body = Arc::new(Mutex::new(r#"{"a": 1, "b": 2}"#.to_owned()));
    let server = json_server(body);
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("map.yaml");
    let rule = |name: &str, pointer: &str| {
        format!("metrics:\n- {{pointer: {pointer}, name: {name}, type: gauge, help: x.}}\n")
    };
    std::fs::write(&map, rule("app_apples", "/a")).unwrap();
    let (_adapter, admin) = adapter(
        &format!("json+http://{server}/?map={}", map.display()),
        "0s",
    );
    assert_eq!(sample(&scrape(admin), "app_apples"), Some(1.0));

    // Broken (a gauge named like a counter): the previous mapping stays in use.
    std::fs::write(&map, rule("app_bananas_total", "/b")).unwrap();
    let errors = "rigging_metrics_mapping_reloads_total{result=\"error\"}";
    eventually("the broken file seen", || {
        (sample(&scrape(admin), errors)? >= 1.0).then_some(())
    });
    for _ in 0..3 {
        let text = scrape(admin);
        assert_eq!(sample(&text, "app_apples"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "app_bananas_total"), None, "{text}");
    }

    std::fs::write(&map, rule("app_bananas", "/b")).unwrap();
    let text = eventually("the new mapping", || {
        let text = scrape(admin);
        sample(&text, "app_bananas").map(|_| text)
    });
    assert_eq!(sample(&text, "app_bananas"), Some(2.0));
    assert_eq!(sample(&text, "app_apples"), None);
    promtool_check(&text);
}

#[test]
fn a_bad_mapping_file_stops_the_adapter_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("map.yaml");
    std::fs::write(
        &map,
        "metrics:\n- {pointer: /n, name: jobs_done, type: counter, help: Jobs.}\n",
    )
    .unwrap();
    let out = Command::new(support::sidecar_bin())
        .args(["metrics", "--admin", "127.0.0.1:0", "--source"])
        .arg(format!("json+http://127.0.0.1:1/?map={}", map.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&map.display().to_string()), "{stderr}");
    assert!(stderr.contains("must end in _total"), "{stderr}");
}
