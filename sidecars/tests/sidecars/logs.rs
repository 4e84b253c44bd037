//! `rigging-sidecar logs` as a user runs it: following a real nginx's access log across
//! logrotate-style rotations, reading stdin, and reading a file to its end.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Proc, free_port, http_get, local, redis_server_on, require_tool, sidecar_bin, signal,
    wait_port, wait_ready,
};

const WAIT: Duration = Duration::from_secs(30);

/// A real nginx (master + one worker, foreground) writing the `combined` access log to
/// `dir/access.log`. It answers every request with `ok\n` (3 bytes).
struct Nginx {
    proc: Proc,
    addr: SocketAddr,
    log: PathBuf,
}

impl Nginx {
    fn start(dir: &Path) -> Nginx {
        let nginx = require_tool("nginx");
        let port = free_port();
        let log = dir.join("access.log");
        let d = dir.display();
        let conf = format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log {log} combined;\n\
               client_body_temp_path {d}/client_body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{ return 200 \"ok\\n\"; }}\n\
               }}\n\
             }}\n",
            log = log.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let proc = Proc::spawn(
            nginx,
            &[
                "-p",
                &d.to_string(),
                "-e",
                &format!("{d}/error.log"),
                "-c",
                &conf_path.display().to_string(),
            ],
        );
        let addr = local(port);
        wait_port(addr, WAIT);
        Nginx { proc, addr, log }
    }

    /// Makes nginx reopen its logs, as logrotate's postrotate does.
    fn reopen_logs(&self) {
        signal(self.proc.pid(), "USR1");
    }
}

/// A GET with the headers whose logging the test checks; returns the status.
fn request(addr: SocketAddr, path: &str, referer: &str, agent: &str) -> u16 {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nReferer: {referer}\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// One record per line of the sidecar's output; every line must be a JSON object.
fn parse_records(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Complete records written to `path` so far: a line the sidecar is still writing (its
/// output is buffered, so a write may end mid-record) is left for the next read.
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    parse_records(complete)
}

/// Waits until `path` holds at least `n` records; returns them.
fn wait_records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = records(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} records after {WAIT:?}, expected {n}: {got:#?}",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One sample from the sidecar's /metrics (labels written as in the exposition).
fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (status, body) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
}

fn wait_metric(admin: SocketAddr, series: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    while metric(admin, series) != want {
        assert!(Instant::now() < deadline, "{series} never reached {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const AGENT: &str = r#"probe "quoted" \ agent/1.0"#;

/// Requests `/req/{phase}/{i}` for each i.
fn requests(nginx: &Nginx, phase: &str, range: std::ops::Range<u32>) {
    for i in range {
        let status = request(
            nginx.addr,
            &format!("/req/{phase}/{i}?q=a%20b"),
            "http://referer.test/page",
            AGENT,
        );
        assert_eq!(status, 200);
    }
}

#[test]
fn follows_a_real_nginx_access_log_across_rename_and_copytruncate_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path());
    let out = dir.path().join("records.jsonl");
    let admin = local(free_port());
    let mut sidecar = Proc::sidecar(&[
        "logs",
        "--format",
        "nginx",
        "--input",
        &nginx.log.display().to_string(),
        "--follow",
        "--output",
        &out.display().to_string(),
        "--admin",
        &admin.to_string(),
    ]);
    wait_ready(admin, WAIT);

    requests(&nginx, "before", 0..20);
    wait_records(&out, 20);

    // logrotate `create`: rename, the app keeps writing to the renamed file until it is
    // told to reopen, then writes to a new file at the same path.
    std::fs::rename(&nginx.log, dir.path().join("access.log.1")).unwrap();
    requests(&nginx, "renamed", 0..10);
    nginx.reopen_logs();
    let deadline = Instant::now() + WAIT;
    while !nginx.log.exists() {
        assert!(Instant::now() < deadline, "nginx did not reopen its log");
        std::thread::sleep(Duration::from_millis(10));
    }
    requests(&nginx, "reopened", 0..10);
    wait_metric(admin, r#"rigging_logs_rotations_total{kind="rename"}"#, 1.0);
    wait_records(&out, 40);

    // logrotate `copytruncate`: copy, then truncate the file the app still writes to.
    requests(&nginx, "copied", 0..20);
    wait_records(&out, 60);
    std::fs::copy(&nginx.log, dir.path().join("access.log.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&nginx.log)
        .unwrap()
        .set_len(0)
        .unwrap();
    wait_metric(
        admin,
        r#"rigging_logs_rotations_total{kind="truncate"}"#,
        1.0,
    );
    requests(&nginx, "truncated", 0..10);
    let got = wait_records(&out, 70);

    // Every request exactly once, with nginx's fields.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &got {
        assert!(r.get("error").is_none(), "parse error: {r}");
        assert_eq!(r["remote_addr"], "127.0.0.1", "{r}");
        assert_eq!(r["remote_user"], "");
        assert_eq!(r["method"], "GET");
        assert_eq!(r["protocol"], "HTTP/1.1");
        assert_eq!(r["status"], 200);
        assert_eq!(r["body_bytes_sent"], 3);
        assert_eq!(r["http_referer"], "http://referer.test/page");
        assert_eq!(r["http_user_agent"], AGENT, "nginx's \\x22 escapes undone");
        let time = r["time"].as_str().unwrap();
        assert!(
            time.len() == 25 && time.as_bytes()[10] == b'T' && time.as_bytes()[22] == b':',
            "RFC 3339 with an offset: {time}"
        );
        let path = r["path"].as_str().unwrap();
        let id = path
            .strip_suffix("?q=a%20b")
            .unwrap_or_else(|| panic!("path {path}"));
        *seen.entry(id.to_owned()).or_default() += 1;
    }
    for (phase, n) in [
        ("before", 20),
        ("renamed", 10),
        ("reopened", 10),
        ("copied", 20),
        ("truncated", 10),
    ] {
        for i in 0..n {
            let id = format!("/req/{phase}/{i}");
            assert_eq!(
                seen.get(&id),
                Some(&1),
                "{id} seen {:?} times",
                seen.get(&id)
            );
        }
    }
    assert_eq!(seen.len(), 70);

    assert_eq!(metric(admin, "rigging_logs_records_written_total"), 70.0);
    assert_eq!(metric(admin, "rigging_logs_lines_read_total"), 70.0);
    assert_eq!(metric(admin, "rigging_logs_parse_errors_total"), 0.0);

    sidecar.terminate();
    assert_eq!(sidecar.wait_exit(WAIT), Some(0), "clean exit on SIGTERM");
    assert_eq!(records(&out).len(), 70, "nothing written twice at shutdown");
}

/// Runs the sidecar with `input` on stdin; returns its stdout records.
fn run_stdin(args: &[&str], input: &[u8]) -> Vec<Value> {
    let mut child = Command::new(sidecar_bin())
        .arg("logs")
        .args(args)
        .args(["--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    parse_records(&String::from_utf8(output.stdout).unwrap())
}

/// Runs the sidecar on the file `input` to its end; returns its stdout records.
fn run_file(args: &[&str], input: &Path) -> Vec<Value> {
    let output = Command::new(sidecar_bin())
        .arg("logs")
        .args(args)
        .arg("--input")
        .arg(input)
        .output()
        .unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    parse_records(&String::from_utf8(output.stdout).unwrap())
}

#[test]
fn stdin_records_keep_bad_lines_and_the_partial_last_line() {
    let input =
        b"1.2.3.4 - - [01/Jan/2024:10:00:00 +0000] \"GET /a HTTP/1.1\" 200 5 \"-\" \"curl\"\r\n\
garbage line\n\
\xc3\x28 not utf-8\n\
[2001:db8::1] - - [01/Jan/2024:10:00:01 +0000] \"GET /b HTTP/1.1\" 404 - \"-\" \"curl\"\n\
2001:db8::1 - - [01/Jan/2024:10:00:02 -0800] \"POST /partial HTTP/1.1\" 201 0 \"-\" \"curl\"";
    let got = run_stdin(&["--format", "nginx"], input);
    assert_eq!(got.len(), 5, "{got:#?}");
    assert_eq!(got[0]["path"], "/a");
    assert_eq!(got[0]["http_user_agent"], "curl", "CR of CRLF dropped");
    assert_eq!(got[1]["message"], "garbage line");
    assert!(got[1]["error"].is_string());
    assert_eq!(got[2]["message_base64"], "wyggbm90IHV0Zi04");
    assert_eq!(got[3]["remote_addr"], "[2001:db8::1]");
    assert_eq!(got[3]["body_bytes_sent"], 0);
    assert_eq!(
        got[4]["path"], "/partial",
        "partial last line flushed at EOF"
    );
    assert_eq!(got[4]["time"], "2024-01-01T10:00:02-08:00");
}

#[test]
fn file_input_with_a_pattern_joins_stack_traces() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("app.log");
    std::fs::write(
        &input,
        "2024-01-01 10:00:00 ERROR request failed\n\
         java.lang.IllegalStateException: boom\n\
         \tat com.example.App.main(App.java:10)\n\
         2024-01-01 10:00:01 INFO recovered\n\
         2024-01-01 10:00:02 WARN last, no newline",
    )
    .unwrap();
    let got = run_file(
        &[
            "--format",
            "regex",
            "--pattern",
            r"(?s)^(?P<time>\S+ \S+) (?P<level>[A-Z]+) (?P<message>.*)$",
            "--multiline-start",
            r"^\d{4}-\d\d-\d\d ",
        ],
        &input,
    );
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(got[0]["level"], "ERROR");
    assert_eq!(
        got[0]["message"],
        "request failed\njava.lang.IllegalStateException: boom\n\tat com.example.App.main(App.java:10)"
    );
    assert_eq!(got[1]["message"], "recovered");
    assert_eq!(got[2]["message"], "last, no newline");
}

#[test]
fn bad_flags_and_missing_input_fail_with_a_message_naming_them() {
    let run = |args: &[&str]| {
        let out = Command::new(sidecar_bin())
            .arg("logs")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    };
    assert!(run(&["--format", "regex", "--input", "-"]).contains("--format regex needs --pattern"));
    assert!(
        run(&[
            "--format",
            "regex",
            "--pattern",
            "(unclosed",
            "--input",
            "-"
        ])
        .contains("invalid --pattern")
    );
    assert!(
        run(&["--format", "regex", "--pattern", r"^(\w+)$", "--input", "-"])
            .contains("no named group")
    );
    assert!(
        run(&["--format", "nginx", "--input", "/nonexistent/access.log"])
            .contains("cannot open input /nonexistent/access.log")
    );
}

#[test]
fn lines_written_to_the_old_file_after_rotation_are_still_read() {
    // logrotate `create` without an immediate reopen: the new file exists while the app
    // still appends to the renamed one. `tail -F` drops those lines; we keep them.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let out = dir.path().join("records.jsonl");
    let mut old = std::fs::File::create(&log).unwrap();
    let mut sidecar = Proc::sidecar(&[
        "logs",
        "--format",
        "logfmt",
        "--input",
        &log.display().to_string(),
        "--follow",
        "--output",
        &out.display().to_string(),
    ]);
    writeln!(old, "n=1 file=old").unwrap();
    wait_records(&out, 1);
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    let mut new = std::fs::File::create(&log).unwrap();
    writeln!(new, "n=2 file=new").unwrap();
    wait_records(&out, 2);
    writeln!(old, "n=3 file=old").unwrap();
    write!(new, "n=4 file=new partial").unwrap();
    wait_records(&out, 3);
    sidecar.terminate();
    assert_eq!(sidecar.wait_exit(WAIT), Some(0));
    let mut got: Vec<String> = records(&out)
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["n"].as_str().unwrap(),
                r["file"].as_str().unwrap()
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["1:old", "2:new", "3:old", "4:new"],
        "partial line flushed at stop"
    );
}

/// `rigging-sidecar logs --follow` of `log` (logfmt) into `out`, with `extra` flags.
fn follow_logfmt(log: &Path, out: &Path, extra: &[&str]) -> Proc {
    let (log, out) = (log.display().to_string(), out.display().to_string());
    let mut args = vec![
        "logs", "--format", "logfmt", "--input", &log, "--follow", "--output", &out,
    ];
    args.extend_from_slice(extra);
    Proc::sidecar(&args)
}

#[test]
fn every_line_written_before_sigterm_comes_out() {
    // A worker's last lines (its error, often) are written just before the pod stops: the
    // adapter reads the file to its end before exiting, not just what it had in hand.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let out = dir.path().join("records.jsonl");
    let mut file = std::fs::File::create(&log).unwrap();
    let mut sidecar = follow_logfmt(&log, &out, &[]);
    writeln!(file, "n=0").unwrap();
    wait_records(&out, 1);
    let last = 100_000;
    let burst: String = (1..=last).map(|i| format!("n={i} msg=work\n")).collect();
    file.write_all(burst.as_bytes()).unwrap();
    writeln!(file, "n=final level=error msg=\"worker failed\"").unwrap();
    sidecar.terminate();
    assert_eq!(sidecar.wait_exit(WAIT), Some(0));
    let got = records(&out);
    assert_eq!(got.len(), last + 2, "lines lost at stop");
    assert_eq!(got[last]["n"], format!("{last}"));
    assert_eq!(got[last + 1]["msg"], "worker failed");
}

#[test]
fn a_file_nothing_rotates_keeps_only_its_unread_part_on_disk_and_loses_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let out = dir.path().join("records.jsonl");
    // As an app opens its log: appending.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut sidecar = follow_logfmt(&log, &out, &["--reclaim-after", "64Ki"]);
    let pad = "x".repeat(180);
    let mut written = 0;
    for round in 0..20 {
        // 100 KB a round, the last line of each split across two writes.
        let lines: String = (0..500)
            .map(|i| format!("round={round} i={i} pad={pad}\n"))
            .collect();
        let (head, tail) = lines.split_at(lines.len() - 50);
        file.write_all(head.as_bytes()).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        file.write_all(tail.as_bytes()).unwrap();
        written += 500;
        wait_records(&out, written);
    }
    let on_disk = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&log).unwrap()) * 512;
    assert!(
        on_disk <= 2 * 64 * 1024,
        "{on_disk} bytes of the 2 MB written are still on disk"
    );
    sidecar.terminate();
    assert_eq!(sidecar.wait_exit(WAIT), Some(0));
    let got = records(&out);
    assert_eq!(got.len(), written, "lines lost");
    for (n, record) in got.iter().enumerate() {
        assert_eq!(record["round"], format!("{}", n / 500));
        assert_eq!(record["i"], format!("{}", n % 500));
        assert_eq!(record["pad"], pad.as_str(), "record {n}: {record}");
    }
}

#[test]
fn a_real_redis_log_parses_completely() {
    let dir = tempfile::tempdir().unwrap();
    let logfile = dir.path().join("redis.log");
    let port = free_port();
    let mut redis = redis_server_on(
        port,
        &[
            "--dir",
            &dir.path().display().to_string(),
            "--logfile",
            &logfile.display().to_string(),
            "--loglevel",
            "verbose",
        ],
    );
    let pid = redis.pid();
    redis.terminate();
    assert!(redis.wait_exit(WAIT).is_some(), "redis-server did not stop");

    let got = run_file(&["--format", "redis"], &logfile);
    let lines = std::fs::read_to_string(&logfile)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(got.len(), lines);
    for r in &got {
        assert!(r.get("error").is_none(), "did not parse: {r}");
        assert_eq!(r["pid"], pid, "{r}");
        assert!(["notice", "verbose", "warning", "debug"].contains(&r["level"].as_str().unwrap()));
    }
    let messages: Vec<&str> = got.iter().map(|r| r["message"].as_str().unwrap()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Ready to accept connections")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("Redis is now ready to exit")),
        "{messages:#?}"
    );
}

#[test]
fn a_joined_record_is_written_once_the_followed_file_goes_quiet() {
    // The last stack trace in a file has no next record to end it; following, it must
    // still come out without waiting for shutdown.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let out = dir.path().join("records.jsonl");
    let mut app = std::fs::File::create(&log).unwrap();
    let _sidecar = Proc::sidecar(&[
        "logs",
        "--format",
        "regex",
        "--pattern",
        r"(?s)^(?P<level>[A-Z]+) (?P<message>.*)$",
        "--multiline-start",
        r"^[A-Z]+ ",
        "--input",
        &log.display().to_string(),
        "--follow",
        "--output",
        &out.display().to_string(),
    ]);
    write!(
        app,
        "INFO one\nERROR two\n  at a.b(C.java:1)\n  at d.e(F.java:2)\n"
    )
    .unwrap();
    let got = wait_records(&out, 2);
    assert_eq!(got[0]["message"], "one");
    assert_eq!(got[1]["level"], "ERROR");
    assert_eq!(
        got[1]["message"],
        "two\n  at a.b(C.java:1)\n  at d.e(F.java:2)"
    );
}
