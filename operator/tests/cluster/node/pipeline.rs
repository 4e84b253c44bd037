//! Pipelines on the node: the examples Ready with the broker the operator runs, messages
//! through every stage to the handlers, the status accounting for every delivery, a stage
//! pod killed and the broker restarted mid-stream with every input still reaching the
//! sink, a stage scaled out on its backlog and back in, and a bad predicate refused at
//! admission.
//!
//! Messages enter from a publisher pod with the queue sidecar injected by the chart's
//! webhook, as any app of users' would publish.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::node::{ClientPod, POD_SETTLE, all_pods_ready, node_cluster, wait_for_condition};
use crate::support::{Cluster, eventually};

/// The pipelines' pods are many for one node of 2 cores: one pipeline at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the operator may take to show what the pods count: it asks them every 15 s,
/// and they read their backlog from JetStream every 5 s.
const STATUS_SETTLE: Duration = Duration::from_secs(90);

/// A handler's app: busybox httpd whose CGI script appends each delivery's body, one per
/// line, to /tmp/received.log (as the examples' APIs do); with `SLEEP` set, it takes that
/// long to answer.
const RECEIVER: &str = r#"mkdir -p /www/cgi-bin
cat > /www/cgi-bin/receive <<'CGI'
#!/bin/sh
body=$(head -c "$CONTENT_LENGTH")
[ -n "$SLEEP" ] && sleep "$SLEEP"
echo "$body" >> /tmp/received.log
printf 'Status: 200 OK\r\n\r\n'
CGI
chmod +x /www/cgi-bin/receive
exec httpd -f -p 8080 -h /www"#;

/// A handler stage of the receiver, consuming `from`.
fn receiver_stage(name: &str, from: &str, extra: Value) -> Value {
    let mut stage = json!({
        "name": name,
        "from": [from],
        "handler": {
            "port": 8080,
            "path": "/cgi-bin/receive",
            "template": {"spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "app",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", RECEIVER],
                    "env": [{"name": "SLEEP", "value": extra.get("sleep").and_then(Value::as_str).unwrap_or("")}],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}},
                }],
            }},
        },
    });
    if let Some(fields) = extra.as_object() {
        for (k, v) in fields.iter().filter(|(k, _)| *k != "sleep") {
            stage[k] = v.clone();
        }
    }
    stage
}

/// A pod that publishes through an injected queue sidecar to the broker of `pipeline`.
async fn publisher<'a>(cluster: &'a Cluster, namespace: &str, pipeline: &str) -> ClientPod<'a> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "publisher",
            "namespace": namespace,
            "labels": {"app": "publisher", "rigging.dev/inject": "enabled"},
            "annotations": {
                "rigging.dev/sidecars": "queue",
                "rigging.dev/queue-url": format!("nats://{pipeline}-broker:4222"),
                "rigging.dev/queue-stream": pipeline,
            },
        },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sleep", "86400"]}],
        },
    });
    cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&pod.to_string()));
    all_pods_ready(cluster, namespace, "app=publisher", 1).await;
    ClientPod {
        cluster,
        namespace: namespace.to_owned(),
        name: "publisher".into(),
    }
}

/// The shell that publishes each `ID BODY` line of its stdin to `topic`, the id as the
/// idempotency key, again until the sidecar takes it (it answers 503 while the broker
/// restarts).
fn publish_loop(topic: &str) -> String {
    format!(
        r#"while read -r id body; do
  until wget -q -O /dev/null --header "Idempotency-Key: $id" --header "Content-Type: application/json" --post-data "$body" http://127.0.0.1:9127/publish/{topic}; do sleep 0.2; done
done"#
    )
}

/// Publishes `messages` (`(id, JSON body)`) to `topic` from `publisher`, one after another.
fn publish(publisher: &ClientPod, topic: &str, messages: &[(String, String)]) {
    let input: String = messages
        .iter()
        .map(|(id, body)| format!("{id} {body}\n"))
        .collect();
    let script = format!("printf '%s' \"$1\" | {{ {} ; }}", publish_loop(topic));
    publisher.exec_ok(&["sh", "-c", &script, "sh", &input]);
}

/// How many times each message (by the `id` of its JSON body) reached a stage's handler
/// pods that run now (their first container, `kubectl exec`'s default).
fn received(
    cluster: &Cluster,
    namespace: &str,
    pipeline: &str,
    stage: &str,
) -> BTreeMap<String, usize> {
    let pods = cluster.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        &format!("app.kubernetes.io/instance={pipeline},rigging.dev/stage={stage}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for pod in pods.split_whitespace() {
        let out = cluster.kubectl(&[
            "exec",
            "-n",
            namespace,
            pod,
            "--",
            "cat",
            "/tmp/received.log",
        ]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(body) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(id) = body["id"].as_str() {
                *ids.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    ids
}

/// Waits until every id of `want` has reached `stage`'s handler; how many times each
/// message did.
async fn reaches(
    cluster: &Cluster,
    namespace: &str,
    pipeline: &str,
    stage: &str,
    want: &[String],
) -> BTreeMap<String, usize> {
    eventually(
        &format!("{} messages at stage {stage}", want.len()),
        POD_SETTLE,
        || async {
            let got = received(cluster, namespace, pipeline, stage);
            want.iter().all(|id| got.contains_key(id)).then_some(got)
        },
    )
    .await
}

fn pipeline_status(cluster: &Cluster, namespace: &str, name: &str) -> Value {
    let out = cluster.kubectl_ok(&["get", "-n", namespace, "pipeline", name, "-o", "json"]);
    serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
}

fn stage_status<'a>(status: &'a Value, stage: &str) -> &'a Value {
    status["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == stage))
        .unwrap_or(&Value::Null)
}

fn condition(status: &Value, type_: &str) -> String {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .map(|c| {
            format!(
                "{} {}",
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_banking_example_sends_each_transaction_to_exactly_the_two_apis_of_its_branch() {
    let Some(cluster) = node_cluster("pipeline-banking").await else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let ns = cluster.namespace("pipeline-banking").await;
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/pipeline/banking.yaml",
    ]);
    wait_for_condition(&cluster, &ns.name, "pipeline/banking", "Ready");
    all_pods_ready(&cluster, &ns.name, "app.kubernetes.io/instance=banking", 6).await;

    // A bad predicate is refused when applied, naming the stage and the field.
    let bad =
        std::fs::read_to_string(crate::support::root().join("examples/pipeline/banking.yaml"))
            .unwrap()
            .replace("message.amount >= 10000", "amount >= 10000");
    let refused = cluster.kubectl_with_input(&["apply", "-n", &ns.name, "-f", "-"], Some(&bad));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a predicate reading `amount` was accepted"
    );
    assert!(
        stderr.contains("spec.stages[0].split.when[0].if") && stderr.contains("stage validate"),
        "{stderr}"
    );

    let shell = publisher(&cluster, &ns.name, "banking").await;
    let transactions: Vec<(String, String)> = (0..40)
        .map(|n| {
            let id = format!("tx-{n}");
            (
                id.clone(),
                format!(r#"{{"id":"{id}","amount":{}}}"#, n * 700),
            )
        })
        .collect();
    publish(&shell, "transactions", &transactions);
    let (suspicious, valid): (Vec<String>, Vec<String>) = {
        let (s, v): (Vec<_>, Vec<_>) = (0..40).partition(|n| n * 700 >= 10_000);
        (
            s.iter().map(|n| format!("tx-{n}")).collect(),
            v.iter().map(|n| format!("tx-{n}")).collect(),
        )
    };
    for (stage, want) in [
        ("fraud-review", &suspicious),
        ("audit", &suspicious),
        ("ledger", &valid),
        ("notify", &valid),
    ] {
        let got = reaches(&cluster, &ns.name, "banking", stage, want).await;
        let ids: Vec<&String> = got.keys().collect();
        let mut expected: Vec<&String> = want.iter().collect();
        expected.sort();
        assert_eq!(ids, expected, "stage {stage} got exactly its branch");
        assert!(
            got.values().all(|n| *n == 1),
            "stage {stage}: each once: {got:?}"
        );
    }

    // The status accounts for every delivery of every stage.
    let status = eventually(
        "the status counts the 40 transactions",
        STATUS_SETTLE,
        || async {
            let status = pipeline_status(&cluster, &ns.name, "banking");
            let validate = stage_status(&status, "validate");
            let ledger = stage_status(&status, "ledger");
            (validate["out"] == 40 && ledger["out"] == valid.len() && status["lag"] == 0)
                .then_some(status)
        },
    )
    .await;
    for stage in ["validate", "fraud-review", "audit", "ledger", "notify"] {
        let s = stage_status(&status, stage);
        assert_eq!(s["unaccounted"], 0, "{stage}: {s}");
        assert_eq!(s["inFlight"], 0, "{stage}: {s}");
    }
    assert_eq!(condition(&status, "Conserved"), "True Balanced", "{status}");
    let topic = |name: &str| {
        status["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(topic("suspicious")["published"], suspicious.len());
    assert_eq!(topic("valid")["published"], valid.len());
    assert_eq!(
        topic("suspicious")["consumers"],
        json!(["fraud-review", "audit"])
    );
}

#[tokio::test]
async fn the_signup_example_runs_on_a_three_server_broker_and_bills_paid_plans_only() {
    let Some(cluster) = node_cluster("pipeline-signup").await else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let ns = cluster.namespace("pipeline-signup").await;
    cluster.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        "examples/pipeline/signup.yaml",
    ]);
    wait_for_condition(&cluster, &ns.name, "pipeline/signup", "Ready");
    all_pods_ready(
        &cluster,
        &ns.name,
        "app.kubernetes.io/instance=signup,app.kubernetes.io/component=broker",
        3,
    )
    .await;
    let shell = publisher(&cluster, &ns.name, "signup").await;
    let plans = ["free", "pro", "free", "team", "free", "pro"];
    let signups: Vec<(String, String)> = plans
        .iter()
        .enumerate()
        .map(|(n, plan)| {
            let id = format!("user-{n}");
            (
                id.clone(),
                format!(r#"{{"id":"{id}","email":"{id}@example.com","plan":"{plan}"}}"#),
            )
        })
        .collect();
    publish(&shell, "signups", &signups);
    let everyone: Vec<String> = signups.iter().map(|(id, _)| id.clone()).collect();
    let paid: Vec<String> = plans
        .iter()
        .enumerate()
        .filter(|(_, p)| **p != "free")
        .map(|(n, _)| format!("user-{n}"))
        .collect();
    let mailed = reaches(&cluster, &ns.name, "signup", "mailer", &everyone).await;
    let mut e = everyone.clone();
    e.sort();
    assert_eq!(mailed.keys().cloned().collect::<Vec<_>>(), e);
    let billed = reaches(&cluster, &ns.name, "signup", "invoicer", &paid).await;
    assert_eq!(
        billed.keys().cloned().collect::<Vec<_>>(),
        paid,
        "paid plans only"
    );
    let status = eventually("the filter's count", STATUS_SETTLE, || async {
        let status = pipeline_status(&cluster, &ns.name, "signup");
        (stage_status(&status, "paid-only")["filtered"] == 3).then_some(status)
    })
    .await;
    assert_eq!(stage_status(&status, "paid-only")["out"], 3, "{status}");
    assert!(
        status["broker"]
            .as_str()
            .unwrap()
            .contains("signup-broker-2.signup-broker:4222"),
        "{status}"
    );
}

/// `/jsz` of the managed broker, asked from `shell`: the stream's state.
fn stream_messages(shell: &ClientPod, pipeline: &str) -> Option<u64> {
    let out = shell.exec(&[
        "wget",
        "-q",
        "-O-",
        &format!("http://{pipeline}-broker-0.{pipeline}-broker:8222/jsz?streams=true"),
    ]);
    let jsz: Value = serde_json::from_slice(&out.stdout).ok()?;
    jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .find(|s| s["name"] == pipeline)?["state"]["messages"]
        .as_u64()
}

#[tokio::test]
async fn through_a_killed_stage_pod_and_a_broker_restart_every_input_reaches_the_sink() {
    const N: usize = 3000;
    let Some(cluster) = node_cluster("pipeline-crash").await else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let ns = cluster.namespace("pipeline-crash").await;
    let pipeline = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "crash", "namespace": ns.name},
        "spec": {"stages": [
            {"name": "copy", "from": ["in"], "copy": {"to": ["out"]}, "deliveryTimeout": "2s"},
            receiver_stage("sink", "out", json!({"maxInFlight": 16})),
        ]},
    });
    cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&pipeline.to_string()));
    wait_for_condition(&cluster, &ns.name, "pipeline/crash", "Ready");
    let shell = publisher(&cluster, &ns.name, "crash").await;

    let ids: Vec<String> = (0..N).map(|n| format!("m{n}")).collect();
    let input: String = ids
        .iter()
        .map(|id| format!("{id} {{\"id\":\"{id}\"}}\n"))
        .collect();
    let script = format!("printf '%s' \"$1\" | {{ {} ; }}", publish_loop("in"));
    let publishing = shell.spawn(&["sh", "-c", &script, "sh", &input]);

    // Mid-stream: the copy stage's pod killed at once (no SIGTERM, no drain)...
    eventually("a quarter through the copy stage", POD_SETTLE, || async {
        (received(&cluster, &ns.name, "crash", "sink").len() >= N / 4).then_some(())
    })
    .await;
    cluster.kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &ns.name,
        "-l",
        "rigging.dev/stage=copy",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    // ... and the broker's pod too, while the publisher and the replacement stage run.
    eventually("half through the copy stage", POD_SETTLE, || async {
        (received(&cluster, &ns.name, "crash", "sink").len() >= N / 2).then_some(())
    })
    .await;
    cluster.kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &ns.name,
        "crash-broker-0",
        "--grace-period=0",
        "--force",
    ]);
    let published = tokio::task::spawn_blocking(move || publishing.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );

    let got = reaches(&cluster, &ns.name, "crash", "sink", &ids).await;
    let mut want = ids.clone();
    want.sort();
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        want,
        "every input at the sink, no other"
    );
    // The stream holds each input once and each copy once: the replayed stage stored no
    // copy twice. (The sink itself is delivered to at least once: a delivery whose ack
    // went down with the broker comes again, the same stored message.)
    let stored = eventually("the stream's count", POD_SETTLE, || async {
        stream_messages(&shell, "crash")
    })
    .await;
    assert_eq!(stored, 2 * N as u64, "N inputs and N copies");
}

#[tokio::test]
async fn a_stage_scales_out_on_its_backlog_and_back_in_when_it_drains() {
    let Some(cluster) = node_cluster("pipeline-scale").await else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let ns = cluster.namespace("pipeline-scale").await;
    let pipeline = json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "jobs", "namespace": ns.name},
        "spec": {"stages": [receiver_stage("slow", "jobs", json!({
            "sleep": "1",
            "maxInFlight": 2,
            "autoscale": {"min": 1, "max": 3, "targetLag": 20},
        }))]},
    });
    cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&pipeline.to_string()));
    wait_for_condition(&cluster, &ns.name, "pipeline/jobs", "Ready");
    let shell = publisher(&cluster, &ns.name, "jobs").await;
    let jobs: Vec<(String, String)> = (0..150)
        .map(|n| (format!("job-{n}"), format!(r#"{{"n":{n}}}"#)))
        .collect();
    publish(&shell, "jobs", &jobs);

    // The backlog shows in the status (and the pods' metrics it is read from), and the
    // stage grows for it.
    let slow = eventually("three pods for the backlog", STATUS_SETTLE, || async {
        let status = pipeline_status(&cluster, &ns.name, "jobs");
        let slow = stage_status(&status, "slow").clone();
        (slow["replicas"] == 3).then_some(slow)
    })
    .await;
    assert!(slow["lag"].as_i64().unwrap() > 0, "{slow}");
    assert_eq!(slow["unaccounted"], 0, "{slow}");
    cluster
        .event_containing(&ns.name, "Scaled", "", "stage slow: 1 → ")
        .await;
    // Back in once JetStream has nothing left for the stage. (Which pod handled what is
    // not looked at here: the pods scaled in go with their logs.)
    eventually(
        "back to one pod once drained",
        STATUS_SETTLE * 2,
        || async {
            let status = pipeline_status(&cluster, &ns.name, "jobs");
            let slow = stage_status(&status, "slow");
            (slow["replicas"] == 1 && slow["lag"] == 0).then_some(())
        },
    )
    .await;
}
