//! Asking pods before the desired state is computed, for what only the pods know (which
//! ring a sharding router has in service). A kind says, without IO, which pods to ask and
//! what ([`Inquiry`]); this layer lists them, asks each over HTTP at once with a short
//! timeout, and hands every answer, or why there is none, to the kind's pure half.
//!
//! A pod that does not answer is an answer too: the kind decides what it means (a router
//! that cannot be asked is a router that may still use the old ring). Only a failed list
//! of the pods fails the reconcile.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::Context;
use crate::error::{Error, Result};

/// How long one pod has to answer, connection included: a slow pod must not hold up the
/// reconcile of its owner for long, and is asked again at the next one.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The most bytes of an answer that are read.
const MAX_ANSWER: usize = 1 << 20;

/// Which pods of the object's namespace to ask, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inquiry {
    /// The pods: those whose labels hold all of these.
    pub selector: BTreeMap<String, String>,
    /// The name of the container port to ask on (a sidecar's admin port), looked up in
    /// each pod's own spec, init containers (native sidecars) included.
    pub port: String,
    /// The path of the `GET`.
    pub path: String,
}

/// One pod's answer: the body of a `200 OK`, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAnswer {
    /// The pod's name.
    pub pod: String,
    /// The pod's labels: which part of the object it runs (a pipeline's stage).
    pub labels: BTreeMap<String, String>,
    /// The body, or why the pod gave none.
    pub reply: Result<String, String>,
}

/// The answers of every pod the inquiry concerned, by pod name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers(pub Vec<PodAnswer>);

/// Lists the pods `inquiry` selects in `namespace` and asks each, all at once. Pods that
/// are not scheduled yet, or have finished, are not asked: no process of theirs runs, and
/// one that starts later starts with what is current then. A scheduled pod without an
/// address yet is asked nothing but answers that it has none.
pub async fn ask(ctx: &Context, namespace: &str, inquiry: &Inquiry) -> Result<Answers> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = inquiry
        .selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListPods {
            namespace: namespace.to_owned(),
            selector: selector.clone(),
            source,
        })?;
    let asked = list
        .items
        .iter()
        .filter(|pod| is_running(pod))
        .map(|pod| async move {
            PodAnswer {
                pod: pod.name_any(),
                labels: pod.labels().clone(),
                reply: ask_pod(pod, inquiry).await,
            }
        });
    let mut answers = futures::future::join_all(asked).await;
    answers.sort_by(|a, b| a.pod.cmp(&b.pod));
    for answer in &answers {
        if let Err(why) = &answer.reply {
            tracing::info!(pod = %answer.pod, path = %inquiry.path, %why, "pod did not answer");
        }
    }
    Ok(Answers(answers))
}

/// Whether a process of `pod` may run: it is on a node and has not finished.
fn is_running(pod: &Pod) -> bool {
    let scheduled = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.node_name.as_deref().is_some_and(|n| !n.is_empty()));
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    scheduled && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The port named `name` in `pod`'s containers.
fn named_port(pod: &Pod, name: &str) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

async fn ask_pod(pod: &Pod, inquiry: &Inquiry) -> Result<String, String> {
    let ip: IpAddr = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .ok_or("no pod IP yet")?
        .parse()
        .map_err(|e| format!("pod IP: {e}"))?;
    let port = named_port(pod, &inquiry.port)
        .ok_or_else(|| format!("no container port named {}", inquiry.port))?;
    let addr = SocketAddr::new(ip, port);
    tokio::time::timeout(ANSWER_TIMEOUT, get(addr, &inquiry.path))
        .await
        .map_err(|_| {
            format!(
                "no answer from {addr} within {} s",
                ANSWER_TIMEOUT.as_secs()
            )
        })?
}

/// One HTTP/1.1 `GET` of `path` on `addr`, on a connection of its own.
async fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {path} on {addr}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("GET {path} on {addr}: {e}"))?
        .to_bytes();
    driver.abort();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("GET {path} on {addr}: {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_pods_on_a_node_that_have_not_finished_are_asked() {
        let on_node = |phase: &str| {
            pod(serde_json::json!({
                "metadata": {"name": "r"},
                "spec": {"nodeName": "n1", "containers": []},
                "status": {"phase": phase}
            }))
        };
        assert!(is_running(&on_node("Running")));
        assert!(
            is_running(&on_node("Pending")),
            "its volumes may be mounted"
        );
        assert!(!is_running(&on_node("Succeeded")));
        assert!(!is_running(&on_node("Failed")));
        let unscheduled = pod(serde_json::json!({
            "metadata": {"name": "r"},
            "spec": {"containers": []},
            "status": {"phase": "Pending"}
        }));
        assert!(!is_running(&unscheduled));
    }

    #[test]
    fn the_port_is_found_by_name_in_containers_and_native_sidecars() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "r"},
            "spec": {
                "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
                "initContainers": [{"name": "rigging-shard", "restartPolicy": "Always",
                    "ports": [{"name": "shard-admin", "containerPort": 9122}]}]
            }
        }));
        assert_eq!(named_port(&p, "shard-admin"), Some(9122));
        assert_eq!(named_port(&p, "http"), Some(8080));
        assert_eq!(named_port(&p, "metrics"), None);
    }

    #[tokio::test]
    async fn a_pod_without_an_address_or_port_answers_why() {
        let inquiry = Inquiry {
            selector: BTreeMap::new(),
            port: "shard-admin".into(),
            path: "/ring".into(),
        };
        let no_ip = pod(serde_json::json!({
            "metadata": {"name": "r"},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "s", "ports": [{"name": "shard-admin", "containerPort": 9122}]}
            ]},
            "status": {"phase": "Pending"}
        }));
        assert_eq!(
            ask_pod(&no_ip, &inquiry).await,
            Err("no pod IP yet".to_owned())
        );
        let no_port = pod(serde_json::json!({
            "metadata": {"name": "r"},
            "spec": {"nodeName": "n1", "containers": [{"name": "s"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7"}
        }));
        assert_eq!(
            ask_pod(&no_port, &inquiry).await,
            Err("no container port named shard-admin".to_owned())
        );
    }
}
