//! The queue sidecar in pods on the node: injected by the chart's webhook from annotations,
//! started as a native sidecar before the app, and carrying messages from one pod's app to
//! another's through a JetStream server in the cluster (the `nats:2.10` stand-in), by
//! Service name.

use std::collections::BTreeMap;

use serde_json::json;

use crate::node::{ClientPod, POD_SETTLE, all_pods_ready, node_cluster};
use crate::support::eventually;

/// The app of the subscribing pod: busybox's httpd, whose CGI script appends each
/// delivery's body, one per line, to a file the test reads.
const RECEIVER: &str = r#"mkdir -p /www/cgi-bin
cat > /www/cgi-bin/orders <<'CGI'
#!/bin/sh
head -c "$CONTENT_LENGTH" >> /tmp/orders.log
echo >> /tmp/orders.log
printf 'Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n'
CGI
chmod +x /www/cgi-bin/orders
exec httpd -f -p 8080 -h /www"#;

#[tokio::test]
async fn an_injected_queue_sidecar_carries_messages_between_apps_once_each() {
    let Some(cluster) = node_cluster("queue-injected").await else {
        return;
    };
    let ns = cluster.namespace("queue-injected").await;
    let objects = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "nats", "namespace": ns.name},
                "spec": {
                    "selector": {"matchLabels": {"app": "nats"}},
                    "template": {
                        "metadata": {"labels": {"app": "nats"}},
                        "spec": {"containers": [{
                            "name": "nats",
                            "image": "nats:2.10",
                            "args": ["-js", "-sd", "/data"],
                            "ports": [{"containerPort": 4222}],
                            "readinessProbe": {"tcpSocket": {"port": 4222}},
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }],
                        "volumes": [{"name": "data", "emptyDir": {}}]},
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "nats", "namespace": ns.name},
                "spec": {"selector": {"app": "nats"}, "ports": [{"port": 4222}]},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "receiver",
                    "namespace": ns.name,
                    "labels": {"app": "receiver", "rigging.dev/inject": "enabled"},
                    "annotations": {
                        "rigging.dev/sidecars": "queue",
                        "rigging.dev/queue-url": "nats://nats:4222",
                        "rigging.dev/queue-subscribe": "orders",
                        "rigging.dev/queue-consumer": "billing",
                        "rigging.dev/queue-deliver-to": "http://127.0.0.1:8080/cgi-bin/orders",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app",
                        "image": "busybox:1.36",
                        "command": ["sh", "-c", RECEIVER],
                        "ports": [{"containerPort": 8080}],
                    }],
                },
            },
        ],
    });
    cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&objects.to_string()));
    all_pods_ready(&cluster, &ns.name, "app=nats", 1).await;
    all_pods_ready(&cluster, &ns.name, "app=receiver", 1).await;

    // The publisher: a pod whose app is a shell, with the sidecar injected beside it.
    let publisher = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "publisher",
            "namespace": ns.name,
            "labels": {"app": "publisher", "rigging.dev/inject": "enabled"},
            "annotations": {
                "rigging.dev/sidecars": "queue",
                "rigging.dev/queue-url": "nats://nats:4222",
            },
        },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sleep", "86400"]}],
        },
    });
    cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&publisher.to_string()));
    all_pods_ready(&cluster, &ns.name, "app=publisher", 1).await;
    let shell = ClientPod {
        cluster: &cluster,
        namespace: ns.name.clone(),
        name: "publisher".into(),
    };
    let injected = cluster.kubectl_ok(&[
        "get",
        "pod",
        "-n",
        &ns.name,
        "publisher",
        "-o",
        "jsonpath={.spec.initContainers[*].name}",
    ]);
    assert_eq!(injected, "rigging-queue", "a native sidecar");

    let publish = |key: &str| {
        let body = format!(r#"{{"id":"{key}"}}"#);
        shell.exec_ok(&[
            "wget",
            "-q",
            "-O-",
            "--header",
            &format!("Idempotency-Key: {key}"),
            "--header",
            "Content-Type: application/json",
            "--post-data",
            &body,
            "http://127.0.0.1:9127/publish/orders",
        ])
    };
    for n in 0..20 {
        let answer = publish(&format!("order-{n}"));
        assert!(answer.contains(r#""duplicate":false"#), "{answer}");
    }
    // The app retries a publish it was unsure of: stored once.
    let again = publish("order-7");
    assert!(again.contains(r#""duplicate":true"#), "{again}");

    let received = eventually(
        "20 orders delivered to the receiver",
        POD_SETTLE,
        || async {
            let out = cluster.kubectl(&[
                "exec",
                "-n",
                &ns.name,
                "receiver",
                "-c",
                "app",
                "--",
                "cat",
                "/tmp/orders.log",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut ids = BTreeMap::<String, usize>::new();
            for line in text.lines().filter(|l| !l.is_empty()) {
                let order: serde_json::Value = serde_json::from_str(line).ok()?;
                *ids.entry(order["id"].as_str()?.to_owned()).or_default() += 1;
            }
            (ids.len() == 20).then_some(ids)
        },
    )
    .await;
    assert!(
        received.values().all(|&n| n == 1),
        "each order once: {received:?}"
    );
}
