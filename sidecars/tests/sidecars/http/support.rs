//! What the HTTP ambassador's tests share: the ambassador as a process with a config file
//! it reloads, real nginx backends, test backends whose speed and answers a test
//! controls, and a blocking keep-alive client.

#![allow(dead_code)] // each test module uses a different part of this

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    Proc, free_port, http_get, local, parse_metric, require_tool, wait_port, wait_ready,
};

/// `rigging-sidecar http` on free ports, with its config file in a temporary directory.
pub struct Ambassador {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ambassador {
    /// Starts the ambassador on `config` (YAML) and waits until it is ready.
    pub fn start(config: &str) -> Ambassador {
        Self::start_with(config, &[])
    }

    /// The same, with extra flags.
    pub fn start_with(config: &str, extra: &[&str]) -> Ambassador {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("http.yaml");
        std::fs::write(&path, config).unwrap();
        let listen = local(free_port());
        let admin = local(free_port());
        let mut args = vec![
            "http".to_owned(),
            "--config".into(),
            path.display().to_string(),
            "--listen".into(),
            listen.to_string(),
            "--admin".into(),
            admin.to_string(),
        ];
        if !extra.contains(&"--reload-interval") {
            args.extend(["--reload-interval".into(), "100ms".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = Proc::sidecar(&args);
        wait_ready(admin, Duration::from_secs(10));
        Ambassador {
            proc,
            listen,
            admin,
            config: path,
            _dir: dir,
        }
    }

    /// Writes a new config and waits until a reload has been tried (taken or refused).
    pub fn reload(&self, config: &str) {
        let before = self.reloads();
        std::fs::write(&self.config, config).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.reloads() == before {
            assert!(
                Instant::now() < deadline,
                "the config change was not noticed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn reloads(&self) -> f64 {
        self.metric(r#"rigging_http_config_reloads_total{result="ok"}"#)
            + self.metric(r#"rigging_http_config_reloads_total{result="failed"}"#)
    }

    /// The value of one series on `/metrics` (0 when absent), e.g.
    /// `rigging_http_requests_total{route="api",class="2xx"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = http_get(self.admin, "/metrics").expect("GET /metrics");
        parse_metric(&body, series)
    }

    /// `/status`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(self.admin, "/status").expect("GET /status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// The state of server `address` of backend `backend` in `/status`.
    pub fn server_state(&self, backend: &str, address: SocketAddr) -> String {
        let status = self.status();
        let servers = status["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == backend)
            .unwrap_or_else(|| panic!("no backend {backend} in {status}"))["servers"]
            .clone();
        servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["address"] == address.to_string())
            .unwrap_or_else(|| panic!("no server {address} in {servers}"))["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// A real nginx serving `name\n` on `/` and `ok` on `/status`, one worker, keep-alive on.
pub struct Nginx {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(name: &str) -> Nginx {
        Self::start_on(name, free_port())
    }

    /// On `port`, e.g. to bring one back where a killed one was.
    pub fn start_on(name: &str, port: u16) -> Nginx {
        let nginx = require_tool("nginx");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               keepalive_requests 100000;\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 location = /status {{ return 200 'ok'; }}\n\
                 location / {{ default_type text/plain; return 200 '{name}\\n'; }}\n  }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let proc = Proc::spawn(
            nginx,
            &[
                "-c",
                conf_path.to_str().unwrap(),
                "-p",
                dir.path().to_str().unwrap(),
                "-e",
                &format!("{d}/error.log"),
            ],
        );
        let addr = local(port);
        wait_port(addr, Duration::from_secs(10));
        Nginx {
            proc,
            addr,
            _dir: dir,
        }
    }

    /// Kills nginx at once, master and workers: an orphaned worker may keep serving
    /// (seen under gVisor), so waiting for it to notice its master is gone is not enough.
    pub fn kill(&mut self) {
        let master = self.proc.pid().to_string();
        let workers: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| {
                let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // pid (comm) state ppid …: comm may hold spaces, so split after its ')'.
                let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
                (ppid == master).then_some(pid)
            })
            .collect();
        // The master first: it would start a new worker for one killed before it.
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        for worker in workers {
            crate::support::signal(worker, "KILL");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "nginx on {} did not die",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a [`TestBackend`] saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// A keep-alive HTTP/1.1 server in a thread whose delay and status a test changes while
/// it runs: for slow backends, failing backends and shadows. Answers `name\n` by default.
#[derive(Clone)]
pub struct TestBackend {
    pub addr: SocketAddr,
    pub name: String,
    /// Milliseconds to wait before answering.
    pub delay_ms: Arc<AtomicU64>,
    /// The status to answer with.
    pub status: Arc<AtomicU16>,
    /// Requests answered (or being answered).
    pub hits: Arc<AtomicU64>,
    /// When set, connections are closed without an answer.
    pub broken: Arc<AtomicBool>,
    /// Extra response headers, as `name: value` lines.
    pub headers: Arc<Mutex<Vec<String>>>,
    /// The body to answer with, instead of the name.
    pub body: Arc<Mutex<Option<Vec<u8>>>>,
    /// Every request seen, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestBackend {
    pub fn start(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = TestBackend {
            addr: listener.local_addr().unwrap(),
            name: name.to_owned(),
            delay_ms: Arc::new(AtomicU64::new(0)),
            status: Arc::new(AtomicU16::new(200)),
            hits: Arc::new(AtomicU64::new(0)),
            broken: Arc::new(AtomicBool::new(false)),
            headers: Arc::new(Mutex::new(Vec::new())),
            body: Arc::new(Mutex::new(None)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let shared = backend.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let me = shared.clone();
                std::thread::spawn(move || me.connection(stream));
            }
        });
        backend
    }

    fn connection(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        while let Some(seen) = read_request(&mut reader) {
            let method = seen.method.clone();
            self.hits.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().unwrap().push(seen);
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            if self.broken.load(Ordering::SeqCst) {
                return;
            }
            let status = self.status.load(Ordering::SeqCst);
            let payload = self
                .body
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| format!("{}\n", self.name).into_bytes());
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n",
                payload.len()
            );
            for h in self.headers.lock().unwrap().iter() {
                head.push_str(h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let mut out = head.into_bytes();
            if method != "HEAD" {
                out.extend_from_slice(&payload);
            }
            if writer.write_all(&out).is_err() {
                return;
            }
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP/1.1 request (with a `Content-Length` body, if any) as a test server
/// sees it; `None` when the connection ends first.
pub fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("").to_owned();
    let path = words.next().unwrap_or("").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

/// A blocking HTTP/1.1 client on one keep-alive connection (reconnecting when the server
/// closes it).
pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

/// A response as [`Client`] reads it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    /// GET `path` with `headers`.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
        self.request("GET", path, headers, b"")
    }

    /// One request; reconnects once if a kept-alive connection turns out closed.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        let fresh = self.conn.is_none();
        match self.try_request(method, path, headers, body) {
            Ok(reply) => Ok(reply),
            Err(_) if !fresh => {
                self.conn = None;
                self.try_request(method, path, headers, body)
            }
            Err(err) => Err(err),
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let stream = conn.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let result = read_reply(conn, method == "HEAD");
        match &result {
            Ok(reply)
                if reply
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")) =>
            {
                self.conn = None
            }
            Err(_) => self.conn = None,
            _ => {}
        }
        result
    }
}

fn read_reply(conn: &mut BufReader<TcpStream>, head_only: bool) -> std::io::Result<Reply> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not a status line: {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        conn.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if !head_only && status != 204 && status != 304 {
        if let Some(length) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(length, 0);
            conn.read_exact(&mut body)?;
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                conn.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
                let mut chunk = vec![0u8; n + 2];
                conn.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A config with one route `main` sending everything to backend `pool` over `servers`,
/// with `backend_extra` (YAML lines indented for the backend) and `route_extra` (for the
/// route).
pub fn one_backend(servers: &[SocketAddr], route_extra: &str, backend_extra: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|s| format!("{{address: \"{s}\"}}"))
        .collect();
    format!(
        "routes:\n  - name: main\n    backend: pool\n{route_extra}backends:\n  - name: pool\n    servers: [{}]\n{backend_extra}",
        servers.join(", ")
    )
}

/// Counts `requests` GETs of `/` through `addr` by the body each got, one keep-alive
/// connection; failures are counted under their status (`"502"`) or `"error"`.
pub fn spread(
    addr: SocketAddr,
    requests: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut client = Client::new(addr);
    let mut counts = HashMap::new();
    for _ in 0..requests {
        let key = match client.get("/", headers) {
            Ok(reply) if reply.status == 200 => reply.text().trim().to_owned(),
            Ok(reply) => reply.status.to_string(),
            Err(_) => "error".to_owned(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// Silences the unused import warning for `http_get` in modules that do not use it.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get(addr, path).expect("GET")
}
