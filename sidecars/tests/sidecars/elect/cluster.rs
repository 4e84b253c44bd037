//! A real etcd cluster on 127.0.0.1: `etcd` processes (Debian's `etcd-server`), each with a
//! data directory of its own, that a test can kill, stop and continue.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::{Proc, free_port, local, require_tool, signal};

use super::{get_json, wait_for};

/// One member.
pub struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    proc: Option<Proc>,
}

/// An etcd cluster, stopped when dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster is healthy.
    pub fn start(size: usize) -> EtcdCluster {
        // In memory where there is a tmpfs: etcd fsyncs every write, and on a shared
        // machine a slow disk turns into spurious etcd leader elections.
        let dir = tempfile::Builder::new()
            .prefix("rigging-etcd-")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temporary directory");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: local(free_port()),
                peer: local(free_port()),
                data: dir.path().join(format!("m{i}")),
                proc: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            dir,
        };
        for i in 0..size {
            cluster.launch(i);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn launch(&mut self, i: usize) {
        let etcd = require_tool("etcd");
        let member = &self.members[i];
        let client = format!("http://{}", member.client);
        let peer = format!("http://{}", member.peer);
        let data = member.data.display().to_string();
        let args = [
            "--name",
            &member.name,
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "rigging-elect-test",
            "--log-level",
            "error",
            "--logger",
            "zap",
        ];
        // Its log goes beside its data, for a failing test to be read; the test's own
        // output stays about the sidecars.
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name)))
            .expect("create the etcd log");
        let child = std::process::Command::new(&etcd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("clone the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", etcd.display()));
        self.members[i].proc = Some(Proc {
            child,
            name: format!("etcd {}", member.name),
        });
    }

    /// Waits until every running member answers `/health` with `"health":"true"`.
    pub fn wait_healthy(&self, timeout: Duration) {
        wait_for(timeout, "a healthy etcd cluster", || {
            self.members
                .iter()
                .filter(|m| m.proc.is_some())
                .all(|m| {
                    get_json(m.client, "/health", Duration::from_secs(2))
                        .is_ok_and(|h| h["health"] == "true")
                })
                .then_some(())
        });
    }

    /// The members' client URLs as `--etcd-endpoint` flags.
    pub fn endpoint_flags(&self) -> Vec<String> {
        self.members
            .iter()
            .flat_map(|m| ["--etcd-endpoint".to_owned(), format!("http://{}", m.client)])
            .collect()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut proc) = self.members[i].proc.take() {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }

    /// SIGSTOPs member `i` (it keeps its sockets: clients wait rather than fail).
    pub fn stop(&self, i: usize) {
        if let Some(proc) = &self.members[i].proc {
            signal(proc.pid(), "STOP");
        }
    }

    /// SIGCONTs member `i`.
    pub fn resume(&self, i: usize) {
        if let Some(proc) = &self.members[i].proc {
            signal(proc.pid(), "CONT");
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // A stopped member would ignore the SIGTERM of Proc's drop.
        for i in 0..self.members.len() {
            self.resume(i);
        }
    }
}
