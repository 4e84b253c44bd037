//! The injection webhook on AdmissionReview fixtures: the patch it returns, applied to the
//! raw pod, gives the pod with its sidecars (golden files), keeps every field of the
//! pod, and is never applied twice; bad requests are refused with the annotation named.

use clap::Parser;
use json_patch::Patch;
use k8s_openapi::api::core::v1::{Container, Pod};
use rigging_operator::controller::RenderConfig;
use rigging_operator::metrics::Metrics;
use rigging_operator::webhook::server::review;
use serde_json::{Value, json};

fn config() -> RenderConfig {
    RenderConfig {
        sidecar_image: "sidecar:test".into(),
        ..RenderConfig::default()
    }
}

/// An AdmissionReview of the creation of `pod`.
fn admission(pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0d5e1a2c-1111-2222-3333-444455556666",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "shop",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false
        }
    }))
    .unwrap()
}

/// The webhook's answer to the creation of `pod`: its response object.
fn answer(pod: &Value) -> Value {
    let review = review(&admission(pod), &config(), &Metrics::new());
    let response = serde_json::to_value(&review).unwrap()["response"].clone();
    assert_eq!(
        response["uid"], "0d5e1a2c-1111-2222-3333-444455556666",
        "the uid is echoed"
    );
    response
}

/// `pod` after the webhook's patch, or `None` when it sent none.
fn patched(pod: &Value) -> Option<Value> {
    let response = answer(pod);
    assert_eq!(response["allowed"], true, "{response}");
    let bytes = response.get("patch")?;
    assert_eq!(response["patchType"], "JSONPatch");
    // kube writes the `[]byte` as a JSON array of bytes, which the API server's decoder
    // takes as readily as base64.
    let bytes: Vec<u8> = serde_json::from_value(bytes.clone()).unwrap();
    let patch: Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap_or_else(|e| panic!("the patch applies: {e}"));
    Some(out)
}

/// A pod as the ReplicaSet controller creates it: labelled, annotated, with fields the
/// typed Pod of this operator's k8s-openapi may not know.
fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-6d4f9-",
            "namespace": "shop",
            "labels": {"app": "web", "rigging.dev/inject": "enabled"},
            "annotations": annotations
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "nginx:1.27",
                "ports": [{"containerPort": 8080}],
                "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
                "aFieldFromTheFuture": {"kept": true}
            }],
            "initContainers": [{
                "name": "migrate",
                "image": "migrate:1",
                "restartPolicy": "Never"
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "hostnameOverride": "kept-as-sent"
        }
    })
}

fn full_request() -> Value {
    json!({
        "rigging.dev/sidecars": "tls, health, logs, metrics",
        "rigging.dev/app-port": "8080",
        "rigging.dev/tls-secret": "web-tls",
        "rigging.dev/health-checks": "http://127.0.0.1:8080/healthz tcp://127.0.0.1:8080",
        "rigging.dev/logs-file": "/var/log/nginx/access.log",
        "rigging.dev/logs-format": "nginx",
        "rigging.dev/metrics-source": "nginx-status+http://127.0.0.1:8080/status"
    })
}

#[test]
fn a_labelled_pod_gets_its_sidecars_and_keeps_every_field_it_had() {
    let original = pod(full_request());
    let out = patched(&original).expect("a patch");
    // Fields the typed Pod does not model survive: the patch never re-serialises the pod.
    assert_eq!(out["spec"]["hostnameOverride"], "kept-as-sent");
    assert_eq!(
        out["spec"]["containers"][0]["aFieldFromTheFuture"]["kept"],
        true
    );
    assert_eq!(out["spec"]["initContainers"][0]["restartPolicy"], "Never");
    assert_eq!(out["spec"]["volumes"][0]["name"], "data");
    let typed: Pod = serde_json::from_value(out.clone()).unwrap();
    let spec = typed.spec.unwrap();
    let init: Vec<(&str, Option<&str>)> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.restart_policy.as_deref()))
        .collect();
    assert_eq!(
        init,
        [
            ("migrate", Some("Never")),
            ("rigging-tls", Some("Always")),
            ("rigging-logs", Some("Always")),
            ("rigging-metrics", Some("Always")),
            ("rigging-health", Some("Always")),
        ]
    );
    let annotations = typed.metadata.annotations.unwrap();
    assert_eq!(
        annotations["rigging.dev/injected"],
        "tls,logs,metrics,health"
    );
    assert_eq!(annotations["prometheus.io/port"], "9121");
    insta::assert_yaml_snapshot!("webhook_full_injection", out);
}

#[test]
fn a_pod_injected_already_passes_untouched() {
    let mut annotations = full_request();
    annotations["rigging.dev/injected"] = json!("tls,logs,metrics,health");
    assert_eq!(patched(&pod(annotations)), None);
}

#[test]
fn an_unlabelled_pod_passes_untouched_even_with_annotations() {
    let mut unlabelled = pod(full_request());
    unlabelled["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("rigging.dev/inject");
    assert_eq!(patched(&unlabelled), None);
}

#[test]
fn a_pod_without_lists_gets_them_whole() {
    let bare = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "bare",
            "labels": {"rigging.dev/inject": "enabled"},
            "annotations": {"rigging.dev/sidecars": "health", "rigging.dev/health-checks": "tcp://127.0.0.1:6379"}
        },
        "spec": {"containers": [{"name": "redis", "image": "redis:7"}]}
    });
    let out = patched(&bare).expect("a patch");
    assert_eq!(out["spec"]["initContainers"][0]["name"], "rigging-health");
    // No readiness probe of its own: the app's readiness is the monitor's.
    assert_eq!(
        out["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        9102
    );
    assert_eq!(
        out["metadata"]["annotations"]["rigging.dev/injected"],
        "health"
    );
}

#[test]
fn a_shard_client_gets_the_ambassador_on_localhost_and_the_client_label() {
    let out = patched(&pod(json!({
        "rigging.dev/sidecars": "shard",
        "rigging.dev/shard-service": "cache",
        "rigging.dev/shard-port": "6379"
    })))
    .expect("a patch");
    let typed: Pod = serde_json::from_value(out.clone()).unwrap();
    let spec = typed.spec.unwrap();
    let ambassador = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "rigging-shard")
        .expect("the ambassador");
    let args = ambassador.args.clone().unwrap().join(" ");
    assert!(args.contains("--listen 127.0.0.1:6379"), "{args}");
    assert!(
        args.contains("--config /etc/rigging/shard/shard.yaml"),
        "{args}"
    );
    let ring = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "rigging-shard")
        .unwrap();
    assert_eq!(ring.config_map.as_ref().unwrap().name, "cache-ring");
    // The label the ShardedService's NetworkPolicy admits, added beside the pod's own.
    assert_eq!(
        out["metadata"]["labels"]["rigging.dev/shard-client"],
        "cache"
    );
    assert_eq!(out["metadata"]["labels"]["app"], "web");
    let bad = denial(&pod(json!({
        "rigging.dev/sidecars": "shard",
        "rigging.dev/shard-service": "cache",
        "rigging.dev/shard-port": "many"
    })));
    assert!(
        bad.contains("metadata.annotations[rigging.dev/shard-port]"),
        "{bad}"
    );
}

#[test]
fn an_http_client_gets_the_ambassador_on_localhost_reading_its_config_map() {
    let ambassador = |annotations: Value| {
        let out = patched(&pod(annotations)).expect("a patch");
        let typed: Pod = serde_json::from_value(out.clone()).unwrap();
        let spec = typed.spec.unwrap();
        let c = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == "rigging-http")
            .expect("the ambassador")
            .clone();
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "rigging-http")
            .expect("its config volume")
            .clone();
        (c, volume, out)
    };
    let (c, volume, out) = ambassador(json!({
        "rigging.dev/sidecars": "http",
        "rigging.dev/http-config-map": "web-http"
    }));
    let args = c.args.clone().unwrap().join(" ");
    assert!(
        args.contains("--listen 127.0.0.1:9080"),
        "the default port: {args}"
    );
    assert!(
        args.contains("--config /etc/rigging/http/http.yaml"),
        "{args}"
    );
    assert_eq!(c.restart_policy.as_deref(), Some("Always"));
    assert_eq!(volume.config_map.unwrap().name, "web-http");
    assert_eq!(
        out["metadata"]["annotations"]["rigging.dev/injected"],
        "http"
    );
    let (c, _, _) = ambassador(json!({
        "rigging.dev/sidecars": "http",
        "rigging.dev/http-config-map": "web-http",
        "rigging.dev/http-port": "7000"
    }));
    let args = c.args.unwrap().join(" ");
    assert!(args.contains("--listen 127.0.0.1:7000"), "{args}");

    let refused = [
        (
            json!({"rigging.dev/sidecars": "http"}),
            "metadata.annotations[rigging.dev/http-config-map]: required",
        ),
        (
            json!({"rigging.dev/sidecars": "http", "rigging.dev/http-config-map": "Web_HTTP"}),
            "metadata.annotations[rigging.dev/http-config-map]: configMap must be the name of a ConfigMap",
        ),
        (
            json!({"rigging.dev/sidecars": "http", "rigging.dev/http-config-map": "web-http", "rigging.dev/http-port": "many"}),
            "metadata.annotations[rigging.dev/http-port]: ",
        ),
        (
            json!({"rigging.dev/sidecars": "health", "rigging.dev/health-checks": "tcp://127.0.0.1:1", "rigging.dev/http-config-map": "web-http"}),
            "metadata.annotations[rigging.dev/http-config-map]: set, but \"http\" is not in rigging.dev/sidecars",
        ),
        (
            // The app container declares 8080.
            json!({"rigging.dev/sidecars": "http", "rigging.dev/http-config-map": "web-http", "rigging.dev/http-port": "8080"}),
            "port 8080 is the HTTP ambassador's port and also a port of container \"app\"",
        ),
    ];
    assert_denied(&refused);
}

#[test]
fn an_elected_pod_gets_the_election_sidecar_with_its_identity_from_the_downward_api() {
    let annotations = json!({
        "rigging.dev/sidecars": "elect",
        "rigging.dev/elect-election": "scheduler",
        "rigging.dev/elect-lease-duration": "4s",
        "rigging.dev/elect-renew-deadline": "3s",
        "rigging.dev/elect-retry-period": "500ms",
        "rigging.dev/elect-items": "8",
        "rigging.dev/elect-leader-file": "/var/run/elect/leader.json",
        "rigging.dev/elect-active-passive": "true"
    });
    let out = patched(&pod(annotations)).expect("a patch");
    let typed: Pod = serde_json::from_value(out.clone()).unwrap();
    let spec = typed.spec.unwrap();
    let c = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "rigging-elect")
        .expect("the election sidecar")
        .clone();
    assert_eq!(c.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        c.args.clone().unwrap().join(" "),
        "elect --admin 0.0.0.0:9125 --backend lease --election scheduler --etcd-prefix /rigging/elect/ --items 8 --leader-file /var/run/elect/leader.json --lease-duration 4s --renew-deadline 3s --retry-period 500ms"
    );
    let env: Vec<(String, String)> = c
        .env
        .iter()
        .flatten()
        .map(|e| {
            let field = e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
            (e.name.clone(), field.field_path.clone())
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME".to_owned(), "metadata.name".to_owned()),
            ("POD_NAMESPACE".to_owned(), "metadata.namespace".to_owned())
        ]
    );
    let ready = c.readiness_probe.unwrap().http_get.unwrap();
    assert_eq!(ready.path.as_deref(), Some("/readyz?leader=true"));
    let mounts: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(
        mounts,
        [
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "/var/run/elect"
        ]
    );
    let app_mount = spec.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .last()
        .unwrap();
    assert_eq!(
        (app_mount.mount_path.as_str(), app_mount.read_only),
        ("/var/run/elect", Some(true))
    );
    // The injector makes no RBAC: the pod's own ServiceAccount must hold the Leases.
    assert!(spec.service_account_name.is_none());
    assert_eq!(
        out["metadata"]["annotations"]["rigging.dev/injected"],
        "elect"
    );

    let refused = [
        (
            json!({"rigging.dev/sidecars": "elect"}),
            "metadata.annotations[rigging.dev/elect-election]: required here",
        ),
        (
            json!({"rigging.dev/sidecars": "elect", "rigging.dev/elect-election": "Jobs"}),
            "metadata.annotations[rigging.dev/elect-election]: election must be a DNS label",
        ),
        (
            json!({"rigging.dev/sidecars": "elect", "rigging.dev/elect-election": "jobs", "rigging.dev/elect-backend": "Etcd"}),
            "metadata.annotations[rigging.dev/elect-etcd-endpoints]: etcdEndpoints is required with backend Etcd",
        ),
        (
            json!({"rigging.dev/sidecars": "elect", "rigging.dev/elect-election": "jobs", "rigging.dev/elect-backend": "etcd"}),
            "metadata.annotations[rigging.dev/elect-backend]: must be one of",
        ),
        (
            json!({"rigging.dev/sidecars": "elect", "rigging.dev/elect-election": "jobs", "rigging.dev/elect-lease-duration": "4s", "rigging.dev/elect-renew-deadline": "5s"}),
            "metadata.annotations[rigging.dev/elect-renew-deadline]: renewDeadline 5s must be shorter than leaseDuration 4s",
        ),
        (
            json!({"rigging.dev/sidecars": "elect", "rigging.dev/elect-election": "jobs", "rigging.dev/elect-items": "lots"}),
            "metadata.annotations[rigging.dev/elect-items]: ",
        ),
        (
            json!({"rigging.dev/sidecars": "elect", "rigging.dev/elect-election": "jobs", "rigging.dev/elect-active-passive": "yes"}),
            "metadata.annotations[rigging.dev/elect-active-passive]: ",
        ),
        (
            json!({"rigging.dev/sidecars": "health", "rigging.dev/health-checks": "tcp://127.0.0.1:1", "rigging.dev/elect-election": "jobs"}),
            "metadata.annotations[rigging.dev/elect-election]: set, but \"elect\" is not in rigging.dev/sidecars",
        ),
    ];
    assert_denied(&refused);
    // On etcd, the endpoints come comma- or space-separated, and no token is mounted.
    let out = patched(&pod(json!({
        "rigging.dev/sidecars": "elect",
        "rigging.dev/elect-election": "jobs",
        "rigging.dev/elect-backend": "Etcd",
        "rigging.dev/elect-etcd-endpoints": "http://etcd-0.etcd:2379, http://etcd-1.etcd:2379 http://etcd-2.etcd:2379"
    })))
    .expect("a patch");
    let c = &out["spec"]["initContainers"][1];
    assert_eq!(c["name"], "rigging-elect");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args.iter().filter(|a| **a == "--etcd-endpoint").count(),
        3,
        "{args:?}"
    );
    assert!(c.get("volumeMounts").is_none(), "{c}");
}

/// The denial message of `pod`.
/// Each pod of `cases` (its annotations) is refused with a message holding the text given.
/// The init container `name` (a native sidecar) of the patched pod `out`.
fn init_container(out: &Value, name: &str) -> Container {
    let typed: Pod = serde_json::from_value(out.clone()).unwrap();
    typed
        .spec
        .unwrap()
        .init_containers
        .into_iter()
        .flatten()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no init container {name}"))
}

fn assert_denied(cases: &[(Value, &str)]) {
    for (annotations, expected) in cases {
        let message = denial(&pod(annotations.clone()));
        assert!(message.contains(expected), "{annotations}: {message}");
    }
}

fn denial(pod: &Value) -> String {
    let response = answer(pod);
    assert_eq!(response["allowed"], false, "{response}");
    assert!(response.get("patch").is_none());
    response["status"]["message"].as_str().unwrap().to_owned()
}

#[test]
fn each_sidecar_takes_its_cpu_and_memory_from_annotations_and_keeps_its_defaults_otherwise() {
    let resources = |annotations: Value, container: &str| {
        let out = patched(&pod(annotations)).expect("a patch");
        let c = init_container(&out, container);
        let r = c.resources.unwrap();
        let (requests, limits) = (r.requests.unwrap(), r.limits.unwrap());
        let values = [
            &requests["cpu"],
            &requests["memory"],
            &limits["cpu"],
            &limits["memory"],
        ]
        .map(|q| q.0.clone());
        (values, c.args.unwrap_or_default().join(" "))
    };
    let (http, args) = resources(
        json!({
            "rigging.dev/sidecars": "http,tls",
            "rigging.dev/http-config-map": "web-http",
            "rigging.dev/http-memory-limit": "1Gi",
            "rigging.dev/http-cpu-request": "0.25",
            "rigging.dev/app-port": "8080",
            "rigging.dev/tls-secret": "web-tls",
        }),
        "rigging-http",
    );
    // Written as the API server writes them, so that they never look changed.
    assert_eq!(http, ["250m", "32Mi", "1", "1Gi"]);
    assert!(
        args.contains("--memory-limit 1Gi"),
        "the ambassador knows its limit, for its cache: {args}"
    );
    let (tls, _) = resources(
        json!({
            "rigging.dev/sidecars": "tls",
            "rigging.dev/app-port": "8080",
            "rigging.dev/tls-secret": "web-tls",
            "rigging.dev/tls-cpu-limit": "2",
        }),
        "rigging-tls",
    );
    assert_eq!(tls, ["50m", "32Mi", "2", "128Mi"]);

    let refused = [
        (
            json!({"rigging.dev/sidecars": "http", "rigging.dev/http-config-map": "c", "rigging.dev/http-memory-limit": "lots"}),
            "metadata.annotations[rigging.dev/http-memory-limit]: \"lots\" is not a memory quantity",
        ),
        (
            json!({"rigging.dev/sidecars": "http", "rigging.dev/http-config-map": "c", "rigging.dev/http-memory-request": "1Gi"}),
            "metadata.annotations[rigging.dev/http-memory-request]: 1Gi is more than the memory limit 256Mi",
        ),
        (
            json!({"rigging.dev/sidecars": "http", "rigging.dev/http-config-map": "c", "rigging.dev/logs-cpu-limit": "1"}),
            "metadata.annotations[rigging.dev/logs-cpu-limit]: set, but \"logs\" is not in rigging.dev/sidecars",
        ),
        (
            json!({"rigging.dev/sidecars": "http", "rigging.dev/http-config-map": "c", "rigging.dev/http-memory-max": "1Gi"}),
            "metadata.annotations[rigging.dev/http-memory-max]: unknown annotation",
        ),
    ];
    assert_denied(&refused);
}

#[test]
fn bad_requests_are_refused_naming_the_annotation() {
    let cases = [
        (
            json!({"rigging.dev/sidecars": "tls,sharding"}),
            "metadata.annotations[rigging.dev/sidecars]: unknown sidecar \"sharding\"",
        ),
        (
            json!({"rigging.dev/sidecars": "tls", "rigging.dev/app-port": "8080"}),
            "metadata.annotations[rigging.dev/tls-secret]: required with the tls sidecar",
        ),
        (
            json!({"rigging.dev/sidecars": "logs", "rigging.dev/logs-file": "app.log", "rigging.dev/logs-format": "json"}),
            "metadata.annotations[rigging.dev/logs-file]: file must be an absolute path",
        ),
        (
            json!({"rigging.dev/sidecars": "logs", "rigging.dev/logs-file": "/var/log/a.log", "rigging.dev/logs-format": "xml"}),
            "metadata.annotations[rigging.dev/logs-format]: must be one of",
        ),
        (
            json!({"rigging.dev/sidecars": "health"}),
            "metadata.annotations[rigging.dev/health-checks]: required",
        ),
        (
            json!({"rigging.dev/sidecars": "health", "rigging.dev/health-checks": "tcp://127.0.0.1:1", "rigging.dev/tls-port": "8443"}),
            "metadata.annotations[rigging.dev/tls-port]: set, but \"tls\" is not in rigging.dev/sidecars",
        ),
        (
            json!({"rigging.dev/sidecars": "health", "rigging.dev/health-checks": "tcp://127.0.0.1:1", "rigging.dev/helth-checks": "x"}),
            "metadata.annotations[rigging.dev/helth-checks]: unknown annotation",
        ),
        (
            json!({"rigging.dev/sidecars": "tls", "rigging.dev/app-port": "8080", "rigging.dev/tls-secret": "t", "rigging.dev/tls-port": "8080"}),
            "port 8080 is the TLS terminator's port and also the app's port",
        ),
    ];
    for (annotations, expected) in cases {
        let message = denial(&pod(annotations.clone()));
        assert!(
            message.starts_with("rigging.dev sidecar injection: "),
            "{message}"
        );
        assert!(message.contains(expected), "{annotations}: {message}");
    }
}

#[test]
fn what_is_not_an_admission_review_gets_an_invalid_answer_not_a_crash() {
    for body in [&b"{"[..], b"[]", b"{\"kind\": \"AdmissionReview\"}"] {
        let review = review(body, &config(), &Metrics::new());
        let response = serde_json::to_value(&review).unwrap()["response"].clone();
        assert_eq!(response["allowed"], false, "{response}");
        assert!(
            response["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("not an AdmissionReview"),
            "{response}"
        );
    }
}

#[test]
fn without_native_sidecars_they_are_appended_to_the_containers() {
    let plain = RenderConfig {
        native_sidecars: false,
        ..config()
    };
    let original = pod(full_request());
    let review = review(&admission(&original), &plain, &Metrics::new());
    let response = serde_json::to_value(&review).unwrap()["response"].clone();
    let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
    let patch: Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = original.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    let names: Vec<&str> = out["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "app",
            "rigging-tls",
            "rigging-logs",
            "rigging-metrics",
            "rigging-health"
        ]
    );
    assert_eq!(
        out["spec"]["initContainers"],
        original["spec"]["initContainers"]
    );
}

#[test]
fn a_pod_asking_for_the_queue_sidecar_publishes_and_receives_through_it() {
    let annotations = json!({
        "rigging.dev/sidecars": "queue",
        "rigging.dev/queue-url-secret": "nats-auth/url",
        "rigging.dev/queue-subscribe": "orders, refunds",
        "rigging.dev/queue-consumer": "billing",
        "rigging.dev/queue-deliver-to": "http://127.0.0.1:8080/events",
        "rigging.dev/queue-max-in-flight": "16",
        "rigging.dev/queue-delivery-timeout": "10s"
    });
    let out = patched(&pod(annotations)).expect("a patch");
    let c = init_container(&out, "rigging-queue");
    assert_eq!(c.restart_policy.as_deref(), Some("Always"));
    let args = c.args.clone().unwrap();
    assert_eq!(
        args.join(" "),
        "queue --admin 0.0.0.0:9126 --backoff 1s --consumer billing --dedup-window 2m --deliver-to http://127.0.0.1:8080/events --delivery-timeout 10s --drain-timeout 20s --listen 127.0.0.1:9127 --max-backoff 1m --max-deliveries 5 --max-in-flight 16 --retention 1day --stream rigging --stream-replicas 1 --subscribe orders --subscribe refunds"
    );
    // The sidecar's own parser takes what was rendered, and its own rules hold.
    let cli = rigging_sidecar::cli::Cli::try_parse_from(
        std::iter::once("rigging-sidecar").chain(args.iter().map(String::as_str)),
    )
    .expect("the sidecar parses its args");
    let rigging_sidecar::cli::Command::Queue(parsed) = cli.command else {
        panic!("not the queue subcommand");
    };
    parsed.check().expect("the sidecar's rules hold");
    // The URL and its password come from the Secret, never from the pod spec.
    let secret = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "RIGGING_NATS_URL")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .expect("RIGGING_NATS_URL from the Secret");
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("nats-auth", "url")
    );
    assert_eq!(
        out["metadata"]["annotations"]["rigging.dev/injected"],
        "queue"
    );

    let refused = [
        (
            json!({"rigging.dev/sidecars": "queue"}),
            "give the NATS server as url, or as urlSecret",
        ),
        (
            json!({"rigging.dev/sidecars": "queue", "rigging.dev/queue-url": "nats://app:secret@nats:4222"}),
            "metadata.annotations[rigging.dev/queue-url]: url must be nats://HOST:PORT",
        ),
        (
            json!({"rigging.dev/sidecars": "queue", "rigging.dev/queue-url": "nats://nats:4222", "rigging.dev/queue-subscribe": "Orders", "rigging.dev/queue-deliver-to": "http://127.0.0.1:8080/"}),
            "metadata.annotations[rigging.dev/queue-subscribe]: subscribe: a topic is",
        ),
        (
            json!({"rigging.dev/sidecars": "queue", "rigging.dev/queue-url": "nats://nats:4222", "rigging.dev/queue-subscribe": "orders"}),
            "metadata.annotations[rigging.dev/queue-deliver-to]: subscribe and deliverTo go together",
        ),
        (
            json!({"rigging.dev/sidecars": "queue", "rigging.dev/queue-url": "nats://nats:4222", "rigging.dev/queue-subscribe": "orders", "rigging.dev/queue-deliver-to": "http://orders:8080/"}),
            "metadata.annotations[rigging.dev/queue-deliver-to]: deliverTo must be the app's URL in the pod",
        ),
    ];
    assert_denied(&refused);
}

/// The webhook's answer to the creation of Pipeline `object`.
fn pipeline_answer(object: &Value) -> Value {
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "7a1f0000-1111-2222-3333-444455556666",
            "kind": {"group": "rigging.dev", "version": "v1alpha1", "kind": "Pipeline"},
            "resource": {"group": "rigging.dev", "version": "v1alpha1", "resource": "pipelines"},
            "operation": "CREATE",
            "namespace": "bank",
            "userInfo": {"username": "alice"},
            "object": object,
            "dryRun": false
        }
    }))
    .unwrap();
    let review = rigging_operator::webhook::server::review_pipeline(&body, &Metrics::new());
    serde_json::to_value(&review).unwrap()["response"].clone()
}

fn split_pipeline(predicate: &str) -> Value {
    json!({
        "apiVersion": "rigging.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "banking", "namespace": "bank"},
        "spec": {"stages": [
            {"name": "copy-in", "from": ["raw"], "copy": {"to": ["transactions"]}},
            {"name": "validate", "from": ["transactions"], "split": {
                "when": [{"if": "message.amount < 10000", "to": "valid"},
                         {"if": predicate, "to": "suspicious"}]
            }}
        ]}
    })
}

#[test]
fn a_pipeline_whose_predicate_is_not_cel_over_the_message_is_refused_naming_stage_and_field() {
    let good = pipeline_answer(&split_pipeline("message.amount >= 10000"));
    assert_eq!(good["allowed"], true, "{good}");
    assert!(good.get("patch").is_none(), "nothing is changed: {good}");
    for (predicate, why) in [
        ("message.amount >=", "not CEL"),
        ("amount >= 10000", "reads amount"),
    ] {
        let refused = pipeline_answer(&split_pipeline(predicate));
        assert_eq!(refused["allowed"], false, "{predicate}: {refused}");
        let message = refused["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("spec.stages[1].split.when[1].if")
                && message.contains("stage validate")
                && message.contains(why),
            "{message}"
        );
    }
}
