//! `rigging-sidecar tls` against real clients (curl, `openssl s_client`) in front of a
//! small HTTP/1.1 app written here with hyper. Certificates are made at test time with
//! rcgen.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::support::{Proc, free_port, http_get, local, require_tool, sidecar_bin, wait_ready};

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The app behind the terminator.

type AppBody = BoxBody<Bytes, std::io::Error>;

/// A plain HTTP/1.1 app on 127.0.0.1 with the endpoints the tests need:
/// `/headers` echoes request headers, `/count` streams and counts the request body,
/// `/big?n=BYTES` streams a generated body, `/slow` answers after two seconds, `/echo`
/// upgrades and echoes bytes, anything else says hello.
struct App {
    addr: SocketAddr,
    slow_started: Arc<AtomicUsize>,
    /// Connections open to the app now.
    open: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl App {
    fn start() -> App {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let slow_started = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let counter = slow_started.clone();
        let connections = open.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                let connections = connections.clone();
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |req| app(req, counter.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                    connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        App {
            addr,
            slow_started,
            open,
            _runtime: runtime,
        }
    }
}

fn full(text: impl Into<Bytes>) -> AppBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The byte at offset `i` of a generated body (a pattern the receiver can check).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

async fn app(
    mut req: Request<Incoming>,
    slow_started: Arc<AtomicUsize>,
) -> Result<Response<AppBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let response = match path.as_str() {
        "/headers" => {
            let mut text = String::new();
            for (name, value) in req.headers() {
                text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            Response::new(full(text))
        }
        "/count" => {
            let mut body = req.into_body();
            let (mut count, mut sum) = (0u64, 0u64);
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    for b in data.iter() {
                        sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
                    }
                    count += data.len() as u64;
                }
            }
            Response::new(full(format!("bytes={count} sum={sum}")))
        }
        "/big" => {
            let n: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            const CHUNK: u64 = 64 * 1024;
            let chunks = futures::stream::unfold(0u64, move |at| async move {
                if at >= n {
                    return None;
                }
                let len = CHUNK.min(n - at);
                let data: Vec<u8> = (at..at + len).map(pattern).collect();
                Some((
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from(data))),
                    at + len,
                ))
            });
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        "/slow" => {
            slow_started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::new(full("slow done"))
        }
        "/echo" if req.headers().contains_key(http::header::UPGRADE) => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(full(""))
                .unwrap()
        }
        _ => Response::new(full("hello from the app")),
    };
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// Certificates.

/// A CA and the leaf certificates it signs, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_file: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = CertifiedIssuer::self_signed(params, key).unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki { dir, ca, ca_file }
    }

    /// A leaf for `localhost` (server) or a client, returned as (cert PEM, key PEM).
    fn leaf_pem(&self, common_name: &str, client: bool) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf as `<name>.crt` and `<name>.key`.
    fn leaf(&self, name: &str, client: bool) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf_pem(name, client);
        let c = self.dir.path().join(format!("{name}.crt"));
        let k = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }
}

/// Publishes `tls.crt`/`tls.key` into `dir` the way the kubelet updates a mounted Secret:
/// a new timestamped directory, then an atomic rename of the `..data` symlink.
fn kubelet_publish(dir: &Path, version: &str, cert: &str, key: &str) {
    let data = dir.join(version);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tls.crt"), cert).unwrap();
    std::fs::write(data.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The sidecar and its clients.

struct Sidecar {
    proc: Proc,
    port: u16,
    admin: SocketAddr,
}

fn start_sidecar(upstream: SocketAddr, cert: &Path, key: &Path, extra: &[&str]) -> Sidecar {
    let port = free_port();
    let admin = local(free_port());
    let listen = local(port).to_string();
    let upstream = upstream.to_string();
    let admin_arg = admin.to_string();
    let mut args = vec![
        "tls",
        "--listen",
        &listen,
        "--upstream",
        &upstream,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--admin",
        &admin_arg,
        "--reload-interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    let proc = Proc::sidecar(&args);
    wait_ready(admin, WAIT);
    Sidecar { proc, port, admin }
}

impl Sidecar {
    /// The value of one metric series, e.g. `rigging_tls_requests_total{class="5xx"}`.
    fn metric(&self, series: &str) -> f64 {
        let (status, body) = http_get(self.admin, "/metrics").expect("admin /metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{body}"))
    }
}

/// curl against `https://localhost:<port><path>`, trusting `ca`.
fn curl(port: u16, ca: &Path, path: &str, args: &[&str]) -> Output {
    Command::new(require_tool("curl"))
        .args(["-sS", "--max-time", "120", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .args(args)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `openssl s_client` run to completion with no input: handshake, print, close.
fn s_client_once(port: u16, args: &[&str]) -> Output {
    Command::new(require_tool("openssl"))
        .args(["s_client", "-connect"])
        .arg(local(port).to_string())
        .args(["-servername", "localhost"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs")
}

/// An interactive `openssl s_client -quiet`: one TLS connection the test writes raw
/// HTTP into and reads the answers from.
struct SClient {
    child: Child,
    stdin: ChildStdin,
    output: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl SClient {
    fn connect(port: u16, args: &[&str]) -> SClient {
        let mut child = Command::new(require_tool("openssl"))
            .args(["s_client", "-quiet", "-connect"])
            .arg(local(port).to_string())
            .args(["-servername", "localhost"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl runs");
        let stdin = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        SClient {
            child,
            stdin,
            output,
            seen: String::new(),
        }
    }

    fn send(&mut self, text: &str) {
        self.stdin.write_all(text.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits until `needle` appears in what was received after `from`; returns the
    /// offset just past it.
    fn wait_for(&mut self, needle: &str, from: usize) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.seen[from..].find(needle) {
                return from + i + needle.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!("never saw {needle:?}; got {:?}", &self.seen[from..]),
            }
        }
    }

    /// Waits for the server to close the connection (s_client exits).
    fn wait_closed(&mut self) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the connection stayed open");
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server PKI, one leaf, and a sidecar in front of a fresh app.
fn setup(extra: &[&str]) -> (App, Pki, Sidecar) {
    let app = App::start();
    let pki = Pki::new("server");
    let (cert, key) = pki.leaf("server", false);
    let sidecar = start_sidecar(app.addr, &cert, &key, extra);
    (app, pki, sidecar)
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn curl_over_http1_and_http2_reaches_the_app_with_forwarded_headers() {
    let (_app, pki, sidecar) = setup(&[]);

    let h1 = curl(sidecar.port, &pki.ca_file, "/headers", &["--http1.1", "-v"]);
    assert!(h1.status.success(), "{}", stderr(&h1));
    assert!(
        stderr(&h1).contains("ALPN: server accepted http/1.1"),
        "{}",
        stderr(&h1)
    );
    let body = stdout(&h1);
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(
        body.contains(&format!("x-forwarded-host: localhost:{}", sidecar.port)),
        "{body}"
    );

    let h2 = curl(sidecar.port, &pki.ca_file, "/headers", &["--http2", "-v"]);
    assert!(h2.status.success(), "{}", stderr(&h2));
    let log = stderr(&h2);
    assert!(log.contains("ALPN: server accepted h2"), "{log}");
    assert!(log.contains("< HTTP/2 200"), "{log}");
    let body = stdout(&h2);
    // The app speaks HTTP/1.1 only: the h2 `:authority` must arrive as its Host.
    assert!(
        body.contains(&format!("host: localhost:{}", sidecar.port)),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: https"), "{body}");

    assert_eq!(
        sidecar.metric(r#"rigging_tls_requests_total{class="2xx"}"#),
        2.0
    );
    assert_eq!(
        sidecar.metric(r#"rigging_tls_handshakes_total{result="ok",version="TLSv1.3"}"#),
        2.0
    );
}

#[test]
fn s_client_negotiates_h2_over_tls13_and_tls12_is_accepted_too() {
    let (_app, pki, sidecar) = setup(&[]);
    let ca = pki.ca_file.to_str().unwrap();

    let out = s_client_once(sidecar.port, &["-alpn", "h2,http/1.1", "-CAfile", ca]);
    let text = stdout(&out);
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

    let out = s_client_once(
        sidecar.port,
        &["-tls1_2", "-alpn", "http/1.1", "-CAfile", ca],
    );
    let text = stdout(&out);
    assert!(text.contains("Protocol  : TLSv1.2"), "{text}");
    assert!(text.contains("ALPN protocol: http/1.1"), "{text}");
    assert_eq!(
        sidecar.metric(r#"rigging_tls_handshakes_total{result="ok",version="TLSv1.2"}"#),
        1.0
    );
}

#[test]
fn the_servers_suite_order_wins_aes_128_first_and_chacha_for_clients_without_aes() {
    let (_app, _pki, sidecar) = setup(&[]);
    // OpenSSL's client lists TLS_AES_256_GCM_SHA384 first, and ECDHE AES-256 for TLS 1.2.
    let text = stdout(&s_client_once(sidecar.port, &["-tls1_3"]));
    assert!(text.contains("Cipher is TLS_AES_128_GCM_SHA256"), "{text}");
    let text = stdout(&s_client_once(sidecar.port, &["-tls1_2"]));
    assert!(
        text.contains("Cipher    : ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{text}"
    );
    // A client that offers no AES suite still gets one it offered.
    let text = stdout(&s_client_once(
        sidecar.port,
        &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
    ));
    assert!(
        text.contains("Cipher is TLS_CHACHA20_POLY1305_SHA256"),
        "{text}"
    );
}

#[test]
fn tls_1_1_is_refused() {
    let (_app, _pki, sidecar) = setup(&[]);
    // SECLEVEL=0 lets OpenSSL 3 offer TLS 1.1 at all, so the refusal is the server's.
    let out = s_client_once(sidecar.port, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    // No session: OpenSSL prints the version it asked for but no cipher.
    assert!(
        stdout(&out).contains("Cipher is (NONE)"),
        "{}",
        stdout(&out)
    );
    // The server answered with an alert rather than a session.
    assert!(
        stderr(&out).contains("SSL alert number"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        sidecar.metric(r#"rigging_tls_handshakes_total{result="error",version="none"}"#),
        1.0,
        "the sidecar saw and refused the handshake"
    );
}

#[test]
fn large_bodies_stream_both_ways_without_being_buffered() {
    let (_app, pki, sidecar) = setup(&[]);
    const SIZE: u64 = 96 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();

    // Upload over HTTP/2 (flow control) and check the app got every byte in order.
    let upload = dir.path().join("upload.bin");
    let data: Vec<u8> = (0..SIZE).map(|i| pattern(i ^ 0x5a)).collect();
    std::fs::write(&upload, &data).unwrap();
    let sum = data
        .iter()
        .fold(0u64, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
    drop(data);
    let up = curl(
        sidecar.port,
        &pki.ca_file,
        "/count",
        &[
            "--http2",
            "-H",
            "content-type: application/octet-stream",
            "--data-binary",
            &format!("@{}", upload.display()),
        ],
    );
    assert!(up.status.success(), "{}", stderr(&up));
    assert_eq!(stdout(&up), format!("bytes={SIZE} sum={sum}"));

    // Download over HTTP/1.1 (chunked from the app).
    let download = dir.path().join("download.bin");
    let down = curl(
        sidecar.port,
        &pki.ca_file,
        &format!("/big?n={SIZE}"),
        &["--http1.1", "-o", download.to_str().unwrap()],
    );
    assert!(down.status.success(), "{}", stderr(&down));
    let got = std::fs::read(&download).unwrap();
    assert_eq!(got.len() as u64, SIZE);
    assert!(got.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)));

    // Peak RSS far below one body: neither was held whole in memory.
    let status = std::fs::read_to_string(format!("/proc/{}/status", sidecar.proc.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kib < 48 * 1024, "peak RSS {peak_kib} KiB");
}

#[test]
fn a_kubelet_data_swap_rotates_the_certificate_under_load_with_no_failed_request() {
    let app = App::start();
    let pki = Pki::new("server");
    let secret = tempfile::tempdir().unwrap();
    let (cert1, key1) = pki.leaf_pem("rigging test v1", false);
    kubelet_publish(secret.path(), "..2026_11_22_v1", &cert1, &key1);
    let sidecar = start_sidecar(
        app.addr,
        &secret.path().join("tls.crt"),
        &secret.path().join("tls.key"),
        &[],
    );
    let port = sidecar.port;

    // A connection opened before the rotation must keep working after it.
    let mut open = SClient::connect(port, &["-alpn", "http/1.1"]);
    open.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mark = open.wait_for("hello from the app", 0);

    // Load: new connections back to back from four threads, verifying the chain.
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let ca = pki.ca_file.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    let out = curl(port, &ca, "/", &["--http1.1"]);
                    if out.status.success() && stdout(&out) == "hello from the app" {
                        ok += 1;
                    } else {
                        failed.push(stderr(&out));
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    let serving = |subject: &str| {
        let out = curl(port, &pki.ca_file, "/", &["--http1.1", "-v"]);
        stderr(&out).contains(subject)
    };
    assert!(serving("rigging test v1"));
    let (cert2, key2) = pki.leaf_pem("rigging test v2", false);
    kubelet_publish(secret.path(), "..2026_11_22_v2", &cert2, &key2);
    let deadline = Instant::now() + WAIT;
    while !serving("rigging test v2") {
        assert!(Instant::now() < deadline, "new certificate never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Keep the load going a little past the switch, then stop it.
    let after = sidecar.metric("rigging_tls_connections_total") + 20.0;
    while sidecar.metric("rigging_tls_connections_total") < after {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let mut total_ok = 0;
    for loader in loaders {
        let (ok, failed) = loader.join().unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during rotation: {failed:?}"
        );
        total_ok += ok;
    }
    assert!(total_ok > 20, "only {total_ok} requests made");
    assert_eq!(
        sidecar.metric(r#"rigging_tls_cert_reloads_total{result="ok"}"#),
        1.0
    );

    // The connection from before the rotation still answers.
    open.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    open.wait_for("hello from the app", mark);
}

#[test]
fn an_unusable_new_certificate_keeps_the_old_one_serving() {
    let app = App::start();
    let pki = Pki::new("server");
    let secret = tempfile::tempdir().unwrap();
    let (cert1, key1) = pki.leaf_pem("rigging test v1", false);
    kubelet_publish(secret.path(), "..v1", &cert1, &key1);
    let sidecar = start_sidecar(
        app.addr,
        &secret.path().join("tls.crt"),
        &secret.path().join("tls.key"),
        &[],
    );
    // A key that belongs to another certificate.
    let (cert2, _) = pki.leaf_pem("rigging test v2", false);
    kubelet_publish(secret.path(), "..v2", &cert2, &key1);
    let deadline = Instant::now() + WAIT;
    while sidecar.metric(r#"rigging_tls_cert_reloads_total{result="failed"}"#) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the bad pair was never looked at"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = curl(sidecar.port, &pki.ca_file, "/", &["-v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("rigging test v1"), "{}", stderr(&out));
}

#[test]
fn sigterm_drains_an_in_flight_slow_request_and_exits_zero() {
    let (app, pki, mut sidecar) = setup(&[]);
    let port = sidecar.port;
    let ca = pki.ca_file.clone();
    let slow = std::thread::spawn(move || curl(port, &ca, "/slow", &["--http1.1"]));
    let deadline = Instant::now() + WAIT;
    while app.slow_started.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the app"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    sidecar.proc.terminate();
    let out = slow.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "slow done");
    assert_eq!(sidecar.proc.wait_exit(WAIT), Some(0));
}

#[test]
fn client_certificates_signed_by_the_client_ca_are_accepted_and_others_refused() {
    let app = App::start();
    let server = Pki::new("server");
    let (cert, key) = server.leaf("server", false);
    let clients = Pki::new("clients");
    let strangers = Pki::new("strangers");
    let sidecar = start_sidecar(
        app.addr,
        &cert,
        &key,
        &["--client-ca", clients.ca_file.to_str().unwrap()],
    );
    let (good_cert, good_key) = clients.leaf("alice", true);
    let (bad_cert, bad_key) = strangers.leaf("mallory", true);

    let signed = curl(
        sidecar.port,
        &server.ca_file,
        "/",
        &[
            "--cert",
            good_cert.to_str().unwrap(),
            "--key",
            good_key.to_str().unwrap(),
        ],
    );
    assert!(signed.status.success(), "{}", stderr(&signed));
    assert_eq!(stdout(&signed), "hello from the app");

    let unsigned = curl(
        sidecar.port,
        &server.ca_file,
        "/",
        &[
            "--cert",
            bad_cert.to_str().unwrap(),
            "--key",
            bad_key.to_str().unwrap(),
        ],
    );
    assert!(!unsigned.status.success(), "{}", stdout(&unsigned));
    assert!(!stdout(&unsigned).contains("hello"));

    let anonymous = curl(sidecar.port, &server.ca_file, "/", &[]);
    assert!(!anonymous.status.success(), "{}", stdout(&anonymous));
    assert!(!stdout(&anonymous).contains("hello"));

    assert_eq!(
        sidecar.metric(r#"rigging_tls_requests_total{class="2xx"}"#),
        1.0
    );
    assert_eq!(
        sidecar.metric(r#"rigging_tls_handshakes_total{result="error",version="none"}"#),
        2.0
    );
}

#[test]
fn an_upgrade_becomes_a_tunnel_to_the_app() {
    let (_app, _pki, sidecar) = setup(&[]);
    let mut conn = SClient::connect(sidecar.port, &["-alpn", "http/1.1"]);
    conn.send(
        "GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    );
    let at = conn.wait_for("HTTP/1.1 101", 0);
    let at = conn.wait_for("\r\n\r\n", at);
    conn.send("ping through the tunnel\n");
    let at = conn.wait_for("ping through the tunnel\n", at);
    conn.send("and back again\n");
    conn.wait_for("and back again\n", at);
}

#[test]
fn a_down_app_gets_a_502_not_a_hang() {
    let pki = Pki::new("server");
    let (cert, key) = pki.leaf("server", false);
    let nothing = local(free_port());
    let sidecar = start_sidecar(nothing, &cert, &key, &[]);
    let out = curl(
        sidecar.port,
        &pki.ca_file,
        "/",
        &["-o", "/dev/stderr", "-w", "%{http_code}"],
    );
    assert_eq!(stdout(&out), "502", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be reached"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sidecar.metric("rigging_tls_upstream_errors_total"), 1.0);
}

#[test]
fn garbage_closes_only_that_connection() {
    let (_app, pki, sidecar) = setup(&[]);

    // Not TLS at all.
    let mut raw = TcpStream::connect(local(sidecar.port)).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = raw.write_all(&junk);
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest); // returns once the sidecar closes it

    // TLS, then not HTTP.
    let mut tls = SClient::connect(sidecar.port, &["-alpn", "http/1.1"]);
    tls.send("\u{1}\u{2} this is not HTTP\r\n\r\n");
    tls.wait_closed();

    // Everyone else is unaffected.
    let out = curl(sidecar.port, &pki.ca_file, "/", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from the app");
    assert_eq!(
        sidecar.metric(r#"rigging_tls_handshakes_total{result="error",version="none"}"#),
        1.0
    );
}

/// Runs the sidecar expecting it to fail at start-up; returns its stderr.
fn start_failure(cert: &Path, key: &Path) -> String {
    let mut child = Command::new(sidecar_bin())
        .args([
            "tls",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
            "--cert",
        ])
        .arg(cert)
        .arg("--key")
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sidecar kept running with a bad certificate");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "exit status {status}; stderr {err}");
    err
}

#[test]
fn bad_certificate_files_stop_start_up_naming_the_file() {
    let pki = Pki::new("server");
    let (cert, key) = pki.leaf("good", false);
    let (_, other_key) = pki.leaf("other", false);

    let garbage = pki.dir.path().join("garbage.crt");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let err = start_failure(&garbage, &key);
    assert!(err.contains("garbage.crt"), "{err}");

    let missing = pki.dir.path().join("missing.key");
    let err = start_failure(&cert, &missing);
    assert!(err.contains("missing.key"), "{err}");

    let err = start_failure(&cert, &other_key);
    assert!(
        err.contains("other.key") && err.contains("good.crt"),
        "{err}"
    );
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let (_app, pki, sidecar) = setup(&["--handshake-timeout", "1s"]);
    let mut silent = TcpStream::connect(local(sidecar.port)).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    // EOF (or a reset) rather than our read timeout: the sidecar hung up.
    match silent.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "unexpected bytes"),
        Err(err) => assert_ne!(err.kind(), std::io::ErrorKind::WouldBlock, "never closed"),
    }
    assert_eq!(
        sidecar.metric(r#"rigging_tls_handshakes_total{result="timeout",version="none"}"#),
        1.0
    );
    let out = curl(sidecar.port, &pki.ca_file, "/", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_idle_connection_is_closed_but_a_slow_response_is_not() {
    // A header timeout far beyond the wait: only the idle timeout can close it.
    let (_app, _pki, sidecar) = setup(&["--idle-timeout", "1s", "--header-timeout", "10m"]);

    // A request that takes twice the idle timeout still gets its answer.
    let mut busy = SClient::connect(sidecar.port, &["-alpn", "http/1.1"]);
    busy.send("GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n");
    busy.wait_for("slow done", 0);

    // Then nothing moves on it: the sidecar closes it.
    busy.wait_closed();
}

// ---------------------------------------------------------------------------------------
// Defects found with outside test suites (issue 14), each fixed on the shared HTTP core.

#[test]
fn a_clients_broken_body_is_a_400_and_a_client_error_not_an_app_outage() {
    let (_app, _pki, sidecar) = setup(&[]);
    // A bad chunk-size line, then a chunk size that overflows.
    for chunk in ["zz\r\n", "fffffffffffffffffffff\r\n"] {
        let mut c = SClient::connect(sidecar.port, &[]);
        c.send(&format!(
            "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
        ));
        c.wait_for("HTTP/1.1 400", 0);
    }
    // An upload the client gives up on half-way.
    let mut c = SClient::connect(sidecar.port, &[]);
    c.send("POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789");
    std::thread::sleep(Duration::from_millis(300));
    drop(c);
    let deadline = Instant::now() + WAIT;
    while sidecar.metric("rigging_tls_client_errors_total") < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the aborted upload was not counted as a client error"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sidecar.metric("rigging_tls_upstream_errors_total"), 0.0);
    assert_eq!(
        sidecar.metric(r#"rigging_tls_requests_total{class="5xx"}"#),
        0.0
    );
}

#[test]
fn a_connection_that_sends_nothing_after_the_handshake_gets_the_header_timeout() {
    // A handshake timeout longer than the header timeout, so that adding one to the other
    // (held for 6 s instead of 1 s, issue 21) shows.
    let (_app, _pki, sidecar) = setup(&[
        "--handshake-timeout",
        "5s",
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "10m",
    ]);
    let connecting = Instant::now();
    let mut silent = SClient::connect(sidecar.port, &[]);
    silent.wait_closed();
    let held = connecting.elapsed();
    // The handshake ends after `connecting`, and the header timeout runs from there: the
    // lower bound is exact. The upper one leaves 3 s of slack for a loaded machine and
    // stays below the handshake timeout.
    assert!(
        held >= Duration::from_millis(900),
        "closed after {held:?}, before the header timeout"
    );
    assert!(
        held < Duration::from_secs(4),
        "held for {held:?}: the header timeout is 1 s from the end of the handshake"
    );
}

#[test]
fn no_host_two_hosts_and_connect_are_refused_not_forwarded() {
    let (_app, _pki, sidecar) = setup(&[]);
    let mut c = SClient::connect(sidecar.port, &[]);
    c.send("GET /headers HTTP/1.1\r\n\r\n");
    c.wait_for("HTTP/1.1 400", 0);
    let mut c = SClient::connect(sidecar.port, &[]);
    c.send("GET /headers HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n");
    let at = c.wait_for("HTTP/1.1 400", 0);
    assert!(
        !c.seen[at..].contains("host: "),
        "the app answered: {}",
        c.seen
    );
    let mut c = SClient::connect(sidecar.port, &[]);
    c.send("CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n");
    c.wait_for("HTTP/1.1 405", 0);
    // HTTP/1.0 needs no Host: it is still forwarded.
    let mut c = SClient::connect(sidecar.port, &[]);
    c.send("GET / HTTP/1.0\r\n\r\n");
    c.wait_for("hello from the app", 0);
    assert_eq!(sidecar.metric("rigging_tls_client_errors_total"), 3.0);
}

#[test]
fn the_400_and_431_that_hyper_sends_itself_are_counted() {
    let (_app, _pki, sidecar) = setup(&[]);
    let mut c = SClient::connect(sidecar.port, &[]);
    c.send("GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n");
    c.wait_for("HTTP/1.1 400", 0);
    let mut c = SClient::connect(sidecar.port, &[]);
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    c.send(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"));
    c.wait_for("HTTP/1.1 431", 0);
    let deadline = Instant::now() + WAIT;
    while sidecar.metric(r#"rigging_tls_requests_total{class="4xx"}"#) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "hyper's own answers were not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_connections_to_the_app_are_capped_after_a_burst() {
    let (app, pki, sidecar) = setup(&["--max-idle-upstream", "4"]);
    let port = sidecar.port;
    let ca = pki.ca_file.clone();
    let burst: Vec<_> = (0..24)
        .map(|_| {
            let ca = ca.clone();
            std::thread::spawn(move || curl(port, &ca, "/slow", &[]))
        })
        .collect();
    for t in burst {
        let out = t.join().unwrap();
        assert_eq!(stdout(&out), "slow done", "{}", stderr(&out));
    }
    assert!(app.slow_started.load(Ordering::SeqCst) >= 24);
    let deadline = Instant::now() + WAIT;
    while app.open.load(Ordering::SeqCst) > 4 {
        assert!(
            Instant::now() < deadline,
            "{} connections to the app stay open after the burst",
            app.open.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
