//! Processes and ports for the real-process tests.

#![allow(dead_code)] // each test module uses a different part of this

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `rigging-sidecar` binary cargo built for these tests.
pub fn sidecar_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rigging-sidecar"))
}

#[path = "../../../testing/ports.rs"]
mod ports;
pub use ports::free_port;

/// `127.0.0.1:<port>`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The full path of a tool `scripts/test.sh` installs; panics with a hint when absent.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("`{name}` is not installed: run scripts/test.sh, which installs the test tools");
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Starts `program args…` with stdout and stderr inherited (cargo captures them).
    pub fn spawn(program: impl AsRef<Path>, args: &[&str]) -> Proc {
        let program = program.as_ref();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            child,
            name: program.display().to_string(),
        }
    }

    /// Starts `rigging-sidecar args…`.
    pub fn sidecar(args: &[&str]) -> Proc {
        Proc::spawn(sidecar_bin(), args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits up to `timeout` for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`) with `kill(1)`.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_port(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on {addr} after {timeout:?}");
}

/// A blocking HTTP/1.1 GET with `Connection: close`; returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {raw:?}")))?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits until `GET http://addr/readyz` answers 200.
pub fn wait_ready(admin: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if matches!(http_get(admin, "/readyz"), Ok((200, _))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("sidecar admin {admin} not ready after {timeout:?}");
}

/// A redis-server on a free port, no persistence.
pub fn redis_server() -> (Proc, SocketAddr) {
    let port = free_port();
    (
        redis_server_on(port, &["--loglevel", "warning"]),
        local(port),
    )
}

/// A redis-server on `port` (e.g. to restart one where the previous one was), no
/// persistence, with `extra` redis-server options; returns once it accepts connections.
pub fn redis_server_on(port: u16, extra: &[&str]) -> Proc {
    let port_arg = port.to_string();
    let mut args = vec![
        "--port",
        port_arg.as_str(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ];
    args.extend_from_slice(extra);
    let proc = Proc::spawn(require_tool("redis-server"), &args);
    wait_port(local(port), Duration::from_secs(30));
    proc
}

/// A memcached on a free port (as `nobody`: memcached refuses to run as root).
pub fn memcached() -> (Proc, SocketAddr) {
    memcached_with(&[])
}

/// A memcached on a free port with `extra` options (`-o idle_timeout=1`).
pub fn memcached_with(extra: &[&str]) -> (Proc, SocketAddr) {
    let port = free_port();
    let port_arg = port.to_string();
    let mut args = vec![
        "-l",
        "127.0.0.1",
        "-p",
        &port_arg,
        "-U",
        "0",
        "-u",
        "nobody",
        "-m",
        "64",
    ];
    args.extend_from_slice(extra);
    let proc = Proc::spawn(require_tool("memcached"), &args);
    let addr = local(port);
    wait_port(addr, Duration::from_secs(5));
    (proc, addr)
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for sidecars to poll: every request gets the
/// status, content type and body `respond` returns at that moment, then the connection
/// closes. Runs until the test process exits.
pub fn http_stub(respond: impl Fn() -> (u16, &'static str, String) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stub server");
    let addr = listener.local_addr().expect("stub server address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let (status, content_type, body) = respond();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// The value of `series` in a Prometheus text exposition; labels must be written in the
/// order the exposition has them.
pub fn parse_metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

/// The value of `series` on the `/metrics` of the sidecar whose admin port is `admin` (0 when
/// absent).
pub fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").expect("GET /metrics");
    parse_metric(&body, series)
}

/// nats-server with JetStream: one server, or a cluster of three on 127.0.0.1, each on free
/// ports with its store in a temp dir, each restartable on the same ports and store.
pub struct Nats {
    servers: Vec<Server>,
}

struct Server {
    proc: Option<Proc>,
    port: u16,
    cluster_port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::of(1)
    }

    /// A JetStream cluster of three, up once it has elected its meta leader.
    pub fn cluster() -> Nats {
        Nats::of(3)
    }

    pub fn of(size: usize) -> Nats {
        let mut nats = Nats {
            servers: (0..size)
                .map(|_| Server {
                    proc: None,
                    port: free_port(),
                    cluster_port: free_port(),
                    store: tempfile::tempdir().expect("temp dir"),
                })
                .collect(),
        };
        for i in 0..size {
            nats.restart(i);
        }
        nats
    }

    pub fn restart(&mut self, i: usize) {
        let routes: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| format!("nats://127.0.0.1:{}", s.cluster_port))
            .collect();
        let server = &self.servers[i];
        let (port, store) = (
            server.port.to_string(),
            server.store.path().to_str().unwrap().to_owned(),
        );
        let (name, cluster, routes) = (
            format!("n{i}"),
            format!("nats://127.0.0.1:{}", server.cluster_port),
            routes.join(","),
        );
        let mut args = vec![
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port,
            "-sd",
            &store,
            "-n",
            &name,
        ];
        if self.servers.len() > 1 {
            args.extend([
                "--cluster_name",
                "rigging",
                "-cluster",
                &cluster,
                "-routes",
                &routes,
            ]);
        }
        let proc = Proc::spawn(require_tool("nats-server"), &args);
        wait_port(local(server.port), Duration::from_secs(10));
        self.servers[i].proc = Some(proc);
    }

    /// kill -9 of server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut proc) = self.servers[i].proc.take() {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }

    /// Every server's URL, comma-separated, as the sidecar's `--nats` takes them.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect();
        urls.join(",")
    }
}
