//! `rigging-sidecar elect` as users run it: several sidecars over a real 3-member etcd
//! cluster (Debian's `etcd-server`) on 127.0.0.1, faults injected with signals, and a
//! checker that records every sidecar's answers with timestamps and asserts what the
//! election promises: no two claims of one term, no claim of an old term once a newer one
//! was seen, a new leader within the lease duration and a retry period (with slack for a
//! shared machine; these are behaviour bounds, not performance figures).
//!
//! The Lease backend runs the same checks on a real API server in [`leases`] when
//! `RIGGING_KUBECONFIG` names one.

mod checker;
mod cluster;
mod faults;
mod handoff;
mod items;
mod leases;
mod store;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Proc, free_port, local, signal};

/// The timings of the tests' elections: short, so that the suite stays quick.
pub const LEASE_DURATION: Duration = Duration::from_secs(2);
pub const RENEW_DEADLINE: Duration = Duration::from_millis(1500);
pub const RETRY_PERIOD: Duration = Duration::from_millis(500);
/// Room for a loaded machine on top of every bound.
pub const SLACK: Duration = Duration::from_secs(3);

/// `--lease-duration 2s --renew-deadline 1500ms --retry-period 500ms`.
pub fn short_timings() -> Vec<String> {
    timings(LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD)
}

/// The three timing flags.
pub fn timings(lease: Duration, renew: Duration, retry: Duration) -> Vec<String> {
    let text = |d: Duration| humantime::format_duration(d).to_string();
    vec![
        "--lease-duration".into(),
        text(lease),
        "--renew-deadline".into(),
        text(renew),
        "--retry-period".into(),
        text(retry),
    ]
}

/// One election sidecar.
pub struct Replica {
    /// Its identity.
    pub name: String,
    /// Its API and admin address.
    pub admin: SocketAddr,
    /// The process.
    pub proc: Proc,
}

impl Replica {
    /// Starts `rigging-sidecar elect --identity NAME --admin … ARGS…` (with `env` set) and
    /// waits for its API.
    pub fn start(name: &str, args: &[String], env: &[(&str, &str)]) -> Replica {
        let admin = local(free_port());
        let mut all = vec![
            "elect".to_owned(),
            "--identity".into(),
            name.into(),
            "--admin".into(),
            admin.to_string(),
        ];
        all.extend(args.iter().cloned());
        let mut command = std::process::Command::new(crate::support::sidecar_bin());
        command.args(&all).stdin(std::process::Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start rigging-sidecar elect");
        let proc = Proc {
            child,
            name: format!("elect {name}"),
        };
        let replica = Replica {
            name: name.to_owned(),
            admin,
            proc,
        };
        wait_for(Duration::from_secs(20), "the sidecar's API", || {
            matches!(get(admin, "/healthz", Duration::from_secs(1)), Ok((200, _))).then_some(())
        });
        replica
    }

    /// `GET /leader`, or why not.
    pub fn leader(&self) -> Result<Value, String> {
        get_json(self.admin, "/leader", Duration::from_secs(2))
    }

    /// `GET /owned`: the item numbers with their tokens.
    pub fn owned(&self) -> Result<Vec<(u64, u64)>, String> {
        let owned = get_json(self.admin, "/owned", Duration::from_secs(2))?;
        Ok(owned["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| {
                        (
                            i["item"].as_u64().unwrap_or(u64::MAX),
                            i["fencingToken"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The token, if this replica says it leads.
    pub fn leads(&self) -> Option<u64> {
        let view = self.leader().ok()?;
        (view["isLeader"] == true).then(|| view["fencingToken"].as_u64().unwrap_or(0))
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, `TERM`).
    pub fn signal(&self, name: &str) {
        signal(self.proc.pid(), name);
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// The replica among `replicas` that says it leads, with its token.
pub fn leader_of(replicas: &[&Replica]) -> Option<(usize, u64)> {
    replicas
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.leads().map(|t| (i, t)))
}

/// Waits until one of `replicas` leads with a token above `above`; returns which, its
/// token and how long it took. Panics after `within`.
pub fn wait_new_leader(
    replicas: &[&Replica],
    above: u64,
    within: Duration,
) -> (usize, u64, Duration) {
    let start = Instant::now();
    let (i, token) = wait_for(within, "a new leader", || {
        leader_of(replicas).filter(|(_, t)| *t > above)
    });
    (i, token, start.elapsed())
}

/// Calls `probe` every 20 ms until it returns something; panics, naming `what`, after
/// `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "no {what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking `GET path` with `Connection: close`, the body parsed as JSON.
pub fn get_json(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Value, String> {
    let (status, body) = get(addr, path, timeout)?;
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("not JSON ({e}): {body}"))
}

/// A blocking `GET path`: status and body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .map_err(|e| format!("read {path}: {e}"))?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {raw:?}"))?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
