//! `rigging-sidecar health` against real Redis, memcached, PostgreSQL, an HTTP server run
//! by the test, TCP ports and shell commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::metrics::{eventually, promtool_check, sample};
use crate::support::{self, Proc, free_port, http_get, local, redis_server_on, wait_port};

/// Starts the monitor with fast checks and the given extra flags.
fn monitor(checks: &[&str], extra: &[&str]) -> (Proc, SocketAddr) {
    let listen = local(free_port());
    let listen_arg = listen.to_string();
    let mut args = vec!["health", "--admin", &listen_arg, "--interval", "100ms"];
    for check in checks {
        args.extend(["--check", check]);
    }
    args.extend_from_slice(extra);
    let proc = Proc::sidecar(&args);
    wait_port(listen, Duration::from_secs(30));
    (proc, listen)
}

/// Waits until `path` answers `status`; returns the body (JSON).
fn wait_status(admin: SocketAddr, path: &str, status: u16) -> serde_json::Value {
    eventually(&format!("{path} → {status}"), || {
        let (got, body) = http_get(admin, path).ok()?;
        (got == status).then(|| serde_json::from_str(&body).expect("JSON body"))
    })
}

/// The `failing` entries of a verdict as `(check, error)`.
fn failing(body: &serde_json::Value) -> Vec<(String, String)> {
    body["failing"]
        .as_array()
        .expect("failing is a list")
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_owned(),
                f["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn readiness_flips_to_503_when_redis_dies_and_back_when_it_returns() {
    let port = free_port();
    let redis = redis_server_on(port, &[]);
    let check = format!("redis://127.0.0.1:{port}#name=cache");
    let (mut monitor_proc, admin) = monitor(&[&check], &["--failure-threshold", "2"]);
    let body = wait_status(admin, "/readyz", 200);
    assert_eq!(body["status"], "ok");

    drop(redis);
    let body = wait_status(admin, "/readyz", 503);
    assert_eq!(body["status"], "fail");
    let failing = failing(&body);
    assert_eq!(failing.len(), 1, "{body}");
    assert_eq!(failing[0].0, "cache");
    assert!(
        failing[0].1.contains(&format!("127.0.0.1:{port}")),
        "{body}"
    );
    // A dependency is not liveness unless marked so: no restart of the app for it.
    assert_eq!(http_get(admin, "/healthz").unwrap().0, 200);

    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    promtool_check(&metrics);
    assert_eq!(
        sample(&metrics, "rigging_health_check_up{check=\"cache\"}"),
        Some(0.0)
    );
    assert!(
        sample(
            &metrics,
            "rigging_health_check_failures_total{check=\"cache\"}"
        )
        .unwrap()
            >= 2.0
    );
    assert!(
        sample(
            &metrics,
            "rigging_health_check_duration_seconds_count{check=\"cache\"}"
        )
        .unwrap()
            >= 3.0
    );

    let _redis = redis_server_on(port, &[]);
    let body = wait_status(admin, "/readyz", 200);
    assert!(failing_is_empty(&body), "{body}");
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    assert_eq!(
        sample(&metrics, "rigging_health_check_up{check=\"cache\"}"),
        Some(1.0)
    );

    monitor_proc.terminate();
    let code = monitor_proc.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "SIGTERM must exit 0");
}

fn failing_is_empty(body: &serde_json::Value) -> bool {
    body["failing"].as_array().is_some_and(|f| f.is_empty())
}

#[test]
fn redis_auth_from_the_url_is_used_and_a_wrong_password_fails() {
    let port = free_port();
    let _redis = redis_server_on(port, &["--requirepass", "s3cret"]);
    let good = format!("redis://:s3cret@127.0.0.1:{port}#name=good");
    let bad = format!("redis://:wrong@127.0.0.1:{port}#name=bad&optional");
    let none = format!("redis://127.0.0.1:{port}#name=none&optional");
    let (_monitor, admin) = monitor(&[&good, &bad, &none], &[]);
    let body = wait_status(admin, "/readyz", 200);
    // Optional checks are reported but do not gate readiness.
    let checks = body["checks"].as_array().unwrap();
    let error_of = |name: &str| {
        eventually(&format!("an error for {name}"), || {
            let (_, body) = http_get(admin, "/readyz").ok()?;
            let body: serde_json::Value = serde_json::from_str(&body).ok()?;
            let check = body["checks"]
                .as_array()?
                .iter()
                .find(|c| c["check"] == name)?
                .clone();
            check["error"].as_str().map(str::to_owned)
        })
    };
    assert_eq!(checks.len(), 3);
    assert!(error_of("bad").contains("WRONGPASS"), "{}", error_of("bad"));
    assert!(error_of("none").contains("NOAUTH"), "{}", error_of("none"));
    let text = serde_json::to_string(&body).unwrap();
    assert!(
        !text.contains("s3cret") && !text.contains("wrong@"),
        "password leaked: {text}"
    );
}

#[test]
fn http_tcp_and_exec_checks_pass_and_fail_for_the_right_reasons() {
    let app = support::http_stub(|| (200, "text/plain", "status: ok".to_owned()));
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("ready");
    std::fs::write(&flag, "").unwrap();
    let closed = free_port();
    let checks = [
        format!("http://{app}/healthz#name=app&body=ok$"),
        format!("tcp://{app}#name=port"),
        format!("exec:test -f {}#name=flag-file", flag.display()),
        format!("http://{app}/healthz#name=wrong-status&status=204&optional"),
        format!("http://{app}/healthz#name=wrong-body&body=^ready$&optional"),
        format!("tcp://127.0.0.1:{closed}#name=closed&optional&liveness"),
        format!(
            "exec:ls {}/missing#name=script&optional",
            dir.path().display()
        ),
    ];
    let checks: Vec<&str> = checks.iter().map(String::as_str).collect();
    let (_monitor, admin) = monitor(&checks, &["--failure-threshold", "1"]);

    // Ready, and every check (the optional ones too) has run at least once.
    let body = eventually("ready with every check run", || {
        let body = wait_status(admin, "/readyz", 200);
        let checks = body["checks"].as_array()?;
        checks
            .iter()
            .all(|c| c["runs"].as_u64() >= Some(1))
            .then_some(body)
    });
    let report = |name: &str| -> serde_json::Value {
        body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no check {name} in {body}"))
            .clone()
    };
    for name in ["app", "port", "flag-file"] {
        assert_eq!(report(name)["up"], true, "{body}");
    }
    let error = |name: &str| {
        report(name)["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(error("wrong-status"), "status 200, expected 204");
    assert!(error("wrong-body").contains("does not match"), "{body}");
    assert!(error("closed").contains("cannot connect"), "{body}");
    let script = error("script");
    assert!(
        script.starts_with("exit status: 2: ") && script.contains("missing"),
        "run without a shell, with its arguments: {script}"
    );

    // A failing `liveness` check fails /healthz, naming only itself.
    let live = wait_status(admin, "/healthz", 503);
    assert_eq!(failing(&live), vec![("closed".to_owned(), error("closed"))]);

    std::fs::remove_file(&flag).unwrap();
    let body = wait_status(admin, "/readyz", 503);
    assert_eq!(
        failing(&body)
            .iter()
            .map(|f| f.0.as_str())
            .collect::<Vec<_>>(),
        vec!["flag-file"]
    );
    assert!(failing(&body)[0].1.contains("exit status: 1"), "{body}");
}

#[test]
fn memcached_version_check_follows_the_server() {
    let (memcached, addr) = support::memcached();
    let check = format!("memcached://{addr}");
    let (_monitor, admin) = monitor(&[&check], &["--failure-threshold", "1"]);
    wait_status(admin, "/readyz", 200);
    drop(memcached);
    let body = wait_status(admin, "/readyz", 503);
    assert_eq!(failing(&body)[0].0, check);
}

#[test]
fn bad_checks_are_refused_at_start_with_the_reason() {
    for (check, expect) in [
        ("ftp://x", "expected http://"),
        ("http://127.0.0.1:1/#colour=red", "unknown option"),
        ("tcp://127.0.0.1", "needs a port"),
    ] {
        let out = Command::new(support::sidecar_bin())
            .args(["health", "--admin", "127.0.0.1:0", "--check", check])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{check} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{check}: {stderr}");
    }
}

/// A throwaway PostgreSQL cluster in a temporary directory, stopped on drop.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Postgres {
    /// initdb + pg_ctl start on a free port, as the `postgres` user when run as root
    /// (PostgreSQL refuses to run as root).
    fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed: run scripts/test.sh")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("no /usr/lib/postgresql/*/bin/initdb: run scripts/test.sh");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            let owner = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(owner.success(), "chown to postgres failed");
        }
        let port = free_port();
        let pg = Postgres {
            bin,
            data,
            _dir: dir,
            port,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        let log = pg.data.with_file_name("postgres.log");
        let socket_dir = pg.data.parent().unwrap().to_str().unwrap().to_owned();
        let options = format!("-p {port} -h 127.0.0.1 -k {socket_dir} -c fsync=off");
        pg.run(
            "pg_ctl",
            &[
                "-D",
                pg.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        wait_port(local(port), Duration::from_secs(30));
        pg
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let path = self.bin.join(tool);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if Path::new(&self.data).join("postmaster.pid").exists() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
        }
    }
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

#[test]
fn postgres_checks_run_their_query_against_a_real_server() {
    let pg = Postgres::start();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let ok = format!("{url}#name=db");
    let broken = format!("{url}#name=bad-query&optional&query=SELECT%201%2F0");
    let (_monitor, admin) = monitor(
        &[&ok, &broken],
        &["--failure-threshold", "1", "--timeout", "10s"],
    );

    let body = wait_status(admin, "/readyz", 200);
    let bad_error = eventually("the bad query's error", || {
        let (_, body) = http_get(admin, "/readyz").ok()?;
        let body: serde_json::Value = serde_json::from_str(&body).ok()?;
        let check = body["checks"]
            .as_array()?
            .iter()
            .find(|c| c["check"] == "bad-query")?
            .clone();
        check["error"].as_str().map(str::to_owned)
    });
    assert!(
        bad_error.contains("division by zero"),
        "{bad_error} / {body}"
    );

    pg.stop();
    let body = wait_status(admin, "/readyz", 503);
    let failing = failing(&body);
    assert_eq!(failing[0].0, "db", "{body}");
    assert!(failing[0].1.starts_with("postgres:"), "{body}");
}
