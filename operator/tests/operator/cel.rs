//! The CRD's CEL rules (`x-kubernetes-validations`), evaluated client-side with kube's CEL
//! engine: they compile, stay within the API server's cost budget as far as a static
//! estimate can tell, accept every example, and refuse what `render` refuses with the same
//! message.

use kube::core::cel::{CompiledSchema, Validator, WarningKind, compile_schema, estimate_rule_cost};
use rigging_operator::controller::RenderConfig;
use rigging_operator::render;
use serde_json::{Value, json};

use crate::fixtures::{committed_crds, documents, example_files, root};

/// The committed CRD schema of `kind`, as the API server holds it.
fn committed_schema_raw(kind: &str) -> Value {
    committed_crds()
        .into_iter()
        .map(|(_, text)| serde_norway::from_str::<Value>(&text).unwrap())
        .find(|crd| crd["spec"]["names"]["kind"] == kind)
        .map(|crd| crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone())
        .unwrap_or_else(|| panic!("no committed CRD of kind {kind}"))
}

/// What the CEL rules of the document's own kind say about it.
fn cel_messages(doc: &Value) -> Vec<String> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    match Validator::new().validate(&committed_schema_raw(kind), doc, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .as_slice()
            .iter()
            .map(|e| e.message.clone())
            .collect(),
    }
}

/// Every rule of `schema` and the schemas below it, with the schema it is attached to.
fn rules<'a>(
    schema: &'a CompiledSchema,
    path: &str,
    out: &mut Vec<(String, String, &'a CompiledSchema)>,
) {
    for v in &schema.validations {
        match v {
            Ok(compiled) => out.push((path.to_owned(), compiled.rule.rule.clone(), schema)),
            Err(e) => panic!("{path}: a CEL rule does not compile: {e:?}"),
        }
    }
    for (name, child) in &schema.properties {
        rules(child, &format!("{path}.{name}"), out);
    }
    if let Some(items) = &schema.items {
        rules(items, &format!("{path}[]"), out);
    }
}

#[test]
fn every_cel_rule_compiles_and_stays_within_the_cost_budget() {
    let mut found = Vec::new();
    let schemas: Vec<CompiledSchema> = ["ReplicatedService", "ShardedService", "WorkQueue"]
        .iter()
        .map(|kind| compile_schema(&committed_schema_raw(kind)))
        .collect();
    for compiled in &schemas {
        let before = found.len();
        rules(compiled, "", &mut found);
        assert!(
            found.len() >= before + 2,
            "each CRD carries its cross-field rules: {found:?}",
            found = found.iter().map(|r| &r.1).collect::<Vec<_>>()
        );
    }
    for (path, rule, schema) in &found {
        let over: Vec<_> = estimate_rule_cost(rule, schema)
            .into_iter()
            .filter(|w| w.kind == WarningKind::CostExceeded)
            .collect();
        assert!(over.is_empty(), "{path}: {rule}: {over:?}");
    }
}

#[test]
fn every_example_passes_the_cel_rules() {
    for file in example_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        for (i, doc) in documents(&text).into_iter().enumerate() {
            assert_eq!(
                cel_messages(&doc),
                Vec::<String>::new(),
                "{}: document {}",
                file.display(),
                i + 1
            );
        }
    }
}

fn full_example() -> Value {
    let text =
        std::fs::read_to_string(root().join("examples/replicated-service/full.yaml")).unwrap();
    documents(&text).remove(0)
}

/// What `render` says about `doc`, without the file and document prefix and field path.
fn render_messages(doc: &Value) -> Vec<String> {
    let yaml = serde_norway::to_string(doc).unwrap();
    match render::render_values("x.yaml", &yaml, &RenderConfig::default()) {
        Ok(_) => Vec::new(),
        Err(render::RenderError::Invalid { errors, .. }) => {
            errors.into_iter().map(|e| e.message).collect()
        }
        Err(other) => panic!("{other}"),
    }
}

/// A change that makes the full example invalid.
type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn render_refuses_what_the_committed_crds_rules_refuse_with_their_messages() {
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "min above max",
            Box::new(|d| {
                d["spec"]["autoscaling"] = json!({"minReplicas": 5, "maxReplicas": 2, "targetCPUUtilizationPercentage": 80})
            }),
        ),
        (
            "both budgets",
            Box::new(|d| {
                d["spec"]["disruptionBudget"] = json!({"minAvailable": 1, "maxUnavailable": 1})
            }),
        ),
        (
            "no budget",
            Box::new(|d| d["spec"]["disruptionBudget"] = json!({})),
        ),
        (
            "regex logs without a pattern",
            Box::new(|d| {
                d["spec"]["sidecars"] =
                    json!({"logs": {"format": "regex", "file": "/var/log/app/app.log"}})
            }),
        ),
        (
            "an exec check for the distroless monitor",
            Box::new(|d| {
                d["spec"]["sidecars"] = json!({"health": {"checks": ["exec:pg_isready -q"]}})
            }),
        ),
        (
            "a log file in no directory",
            Box::new(|d| {
                d["spec"]["sidecars"] = json!({"logs": {"format": "nginx", "file": "access.log"}})
            }),
        ),
        (
            "a frontend over tls",
            Box::new(|d| d["spec"]["frontend"] = json!({})),
        ),
        (
            "a frontend on a name too long for <name>-frontend",
            Box::new(|d| {
                d["metadata"]["name"] = json!("n".repeat(55));
                d["spec"].as_object_mut().unwrap().remove("tls");
                d["spec"]["frontend"] = json!({});
            }),
        ),
        (
            "a cache size in megabytes",
            Box::new(|d| {
                d["spec"].as_object_mut().unwrap().remove("tls");
                d["spec"]["frontend"] = json!({"cache": {"maxSize": "64MB"}});
            }),
        ),
        (
            "a freshness without a unit",
            Box::new(|d| {
                d["spec"].as_object_mut().unwrap().remove("tls");
                d["spec"]["frontend"] = json!({"cache": {"staleIfError": "600"}});
            }),
        ),
        (
            "a rate limit by a header it does not name",
            Box::new(|d| {
                d["spec"].as_object_mut().unwrap().remove("tls");
                d["spec"]["frontend"] =
                    json!({"rateLimit": {"requestsPerSecond": 10, "key": "Header"}});
            }),
        ),
        (
            "a rate limit header that is no header name",
            Box::new(|d| {
                d["spec"].as_object_mut().unwrap().remove("tls");
                d["spec"]["frontend"] = json!({"rateLimit": {"requestsPerSecond": 10, "key": "Header", "header": "X Api Key"}});
            }),
        ),
        (
            "an http ambassador whose ConfigMap is no name",
            Box::new(|d| d["spec"]["sidecars"] = json!({"http": {"configMap": "Web_HTTP"}})),
        ),
        (
            "an etcd election without endpoints",
            Box::new(|d| d["spec"]["sidecars"] = json!({"elect": {"backend": "Etcd"}})),
        ),
        (
            "etcd endpoints for a Lease election",
            Box::new(|d| {
                d["spec"]["sidecars"] = json!({"elect": {"etcdEndpoints": ["http://etcd:2379"]}})
            }),
        ),
        (
            "an etcd endpoint over TLS",
            Box::new(|d| {
                d["spec"]["sidecars"] =
                    json!({"elect": {"backend": "Etcd", "etcdEndpoints": ["https://etcd:2379"]}})
            }),
        ),
        (
            "a lease duration without a unit",
            Box::new(|d| d["spec"]["sidecars"] = json!({"elect": {"leaseDuration": "15"}})),
        ),
        (
            "a leader file in no directory",
            Box::new(|d| d["spec"]["sidecars"] = json!({"elect": {"leaderFile": "leader.json"}})),
        ),
        (
            "an election that is no DNS label",
            Box::new(|d| d["spec"]["sidecars"] = json!({"elect": {"election": "Jobs_1"}})),
        ),
        (
            "no readiness probe",
            Box::new(|d| {
                d["spec"]["template"]["spec"]["containers"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("readinessProbe");
            }),
        ),
    ];
    for (name, mutate) in cases {
        let mut doc = full_example();
        mutate(&mut doc);
        let cel = cel_messages(&doc);
        assert!(!cel.is_empty(), "{name}: the CRD's rules accept it");
        assert_eq!(cel, render_messages(&doc), "{name}");
    }
}

#[test]
fn only_a_replicated_service_is_active_passive() {
    for (example, message) in [
        (
            "examples/sharded-redis/router.yaml",
            "a shard that is not ready drops out of the ring",
        ),
        (
            "examples/work-queue/minimal.yaml",
            "no traffic reaches a worker",
        ),
    ] {
        let text = std::fs::read_to_string(root().join(example)).unwrap();
        let mut doc = documents(&text).remove(0);
        doc["spec"]["sidecars"] = json!({"elect": {"activePassive": true}});
        let cel = cel_messages(&doc);
        assert_eq!(cel.len(), 1, "{example}: {cel:?}");
        assert!(cel[0].contains(message), "{example}: {cel:?}");
        assert_eq!(cel, render_messages(&doc), "{example}");
        doc["spec"]["sidecars"] = json!({"elect": {"activePassive": false}});
        assert_eq!(cel_messages(&doc), Vec::<String>::new(), "{example}");
    }
    let mut doc = full_example();
    doc["spec"]["sidecars"] = json!({"elect": {"activePassive": true, "leaseDuration": "4s", "renewDeadline": "3s", "retryPeriod": "500ms", "items": 4}});
    assert_eq!(cel_messages(&doc), Vec::<String>::new());
    // Only the leader's pod is ever ready, so full.yaml's budget would block every drain:
    // the CRD cannot count pods, `render` and the operator can.
    let refused = render_messages(&doc);
    assert!(
        refused.len() == 1 && refused[0].contains("only the leader's pod is ever ready"),
        "{refused:?}"
    );
    doc["spec"]
        .as_object_mut()
        .unwrap()
        .remove("disruptionBudget");
    assert_eq!(render_messages(&doc), Vec::<String>::new());
}
