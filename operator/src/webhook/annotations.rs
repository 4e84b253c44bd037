//! What a pod asks of the injector, read from its annotations: which sidecars, and their
//! options. Every option is checked by the same schema and CEL rules as the `sidecars`
//! block of a Rigging kind, and an error names the annotation to fix.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use kube::CustomResourceExt;
use rigging_crds::sidecar::spec::{SidecarResources, Sidecars};
use rigging_crds::{FieldError, ReplicatedService};
use serde_json::{Map, Value, json};

use crate::schema;
use crate::sidecars::TlsTermination;

/// The label a pod carries to be injected; the webhook's objectSelector filters on it, so
/// the API server never calls the webhook for other pods.
pub const INJECT_LABEL: &str = "rigging.dev/inject";
/// The value of [`INJECT_LABEL`] that asks for injection.
pub const INJECT_ENABLED: &str = "enabled";
/// Set by the injector to the sidecars it added: a pod that carries it is never injected
/// again (which makes `reinvocationPolicy: IfNeeded` safe).
pub const INJECTED: &str = "rigging.dev/injected";
/// Prefix of every annotation the injector reads.
const PREFIX: &str = "rigging.dev/";

/// The sidecars a pod may ask for in `rigging.dev/sidecars`.
pub const SIDECARS: [&str; 8] = [
    "tls", "logs", "metrics", "health", "shard", "http", "elect", "queue",
];

/// Every option annotation: (annotation, sidecar it belongs to, field path in the
/// `sidecars` block, or "" for those outside it).
const OPTIONS: [(&str, &str, &str); 33] = [
    ("rigging.dev/app-port", "", ""),
    ("rigging.dev/tls-secret", "tls", ""),
    ("rigging.dev/tls-port", "tls", ""),
    ("rigging.dev/logs-file", "logs", "logs.file"),
    ("rigging.dev/logs-format", "logs", "logs.format"),
    ("rigging.dev/logs-pattern", "logs", "logs.pattern"),
    (
        "rigging.dev/logs-multiline-start",
        "logs",
        "logs.multilineStart",
    ),
    ("rigging.dev/metrics-source", "metrics", "metrics.source"),
    ("rigging.dev/health-checks", "health", "health.checks"),
    ("rigging.dev/shard-service", "shard", "shard.service"),
    ("rigging.dev/shard-port", "shard", "shard.port"),
    ("rigging.dev/http-config-map", "http", "http.configMap"),
    ("rigging.dev/http-port", "http", "http.port"),
    ("rigging.dev/elect-election", "elect", "elect.election"),
    ("rigging.dev/elect-backend", "elect", "elect.backend"),
    (
        "rigging.dev/elect-etcd-endpoints",
        "elect",
        "elect.etcdEndpoints",
    ),
    (
        "rigging.dev/elect-lease-duration",
        "elect",
        "elect.leaseDuration",
    ),
    (
        "rigging.dev/elect-renew-deadline",
        "elect",
        "elect.renewDeadline",
    ),
    (
        "rigging.dev/elect-retry-period",
        "elect",
        "elect.retryPeriod",
    ),
    ("rigging.dev/elect-items", "elect", "elect.items"),
    ("rigging.dev/elect-leader-file", "elect", "elect.leaderFile"),
    (
        "rigging.dev/elect-active-passive",
        "elect",
        "elect.activePassive",
    ),
    ("rigging.dev/queue-url", "queue", "queue.url"),
    ("rigging.dev/queue-url-secret", "queue", "queue.urlSecret"),
    ("rigging.dev/queue-stream", "queue", "queue.stream"),
    ("rigging.dev/queue-subscribe", "queue", "queue.subscribe"),
    ("rigging.dev/queue-consumer", "queue", "queue.consumer"),
    ("rigging.dev/queue-deliver-to", "queue", "queue.deliverTo"),
    ("rigging.dev/queue-outputs", "queue", "queue.outputs"),
    (
        "rigging.dev/queue-max-in-flight",
        "queue",
        "queue.maxInFlight",
    ),
    (
        "rigging.dev/queue-max-deliveries",
        "queue",
        "queue.maxDeliveries",
    ),
    (
        "rigging.dev/queue-delivery-timeout",
        "queue",
        "queue.deliveryTimeout",
    ),
    ("rigging.dev/sidecars", "", ""),
];

/// The resource annotations: `rigging.dev/<sidecar>-<cpu|memory>-<request|limit>`, for
/// each of [`SIDECARS`], as Linkerd's `config.linkerd.io/proxy-memory-limit` and its
/// kin are spelled. Returns the sidecar, the list (`requests` or `limits`) and the
/// resource.
fn resource_annotation(key: &str) -> Option<(&'static str, &'static str, &'static str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let sidecar = SIDECARS
        .iter()
        .find(|s| rest.strip_prefix(**s).is_some_and(|r| r.starts_with('-')))?;
    let (resource, list) = rest[sidecar.len() + 1..].split_once('-')?;
    let resource = ["cpu", "memory"].into_iter().find(|r| *r == resource)?;
    let list = match list {
        "request" => "requests",
        "limit" => "limits",
        _ => return None,
    };
    Some((sidecar, list, resource))
}

/// The annotation that sets `list`.`resource` of `sidecar`.
fn resource_annotation_name(sidecar: &str, list: &str, resource: &str) -> String {
    format!(
        "{PREFIX}{sidecar}-{resource}-{}",
        list.trim_end_matches('s')
    )
}

/// The `resources` block of `sidecar` that its annotations stand for, if any is set.
fn resources_of<'a>(sidecar: &str, get: &impl Fn(&str) -> Option<&'a str>) -> Option<Value> {
    let mut lists = Map::new();
    for list in ["requests", "limits"] {
        let mut values = Map::new();
        for resource in ["cpu", "memory"] {
            if let Some(value) = get(&resource_annotation_name(sidecar, list, resource)) {
                values.insert(resource.into(), json!(value));
            }
        }
        if !values.is_empty() {
            lists.insert(list.into(), Value::Object(values));
        }
    }
    (!lists.is_empty()).then_some(Value::Object(lists))
}

/// The resources `sidecar` (whose container is `container`) asks for, checked as the
/// operator checks a `resources` block, with errors naming the annotation.
fn check_resources<'a>(
    sidecar: &str,
    container: &str,
    get: &impl Fn(&str) -> Option<&'a str>,
    errors: &mut Vec<FieldError>,
) -> Option<SidecarResources> {
    let block: SidecarResources = serde_json::from_value(resources_of(sidecar, get)?).ok()?;
    let annotation = |list: &str, resource: &str| {
        format!(
            "metadata.annotations[{}]",
            resource_annotation_name(sidecar, list, resource)
        )
    };
    if let Err(found) =
        crate::sidecars::resources::resolve_named(container, Some(&block), annotation)
    {
        errors.extend(found);
    }
    Some(block)
}

/// What a pod asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The names in `rigging.dev/sidecars`, in the order of [`SIDECARS`].
    pub names: Vec<&'static str>,
    /// `rigging.dev/app-port`.
    pub app_port: Option<i32>,
    /// The TLS terminator, when `tls` is asked for.
    pub tls: Option<TlsTermination>,
    /// The adapters and the health monitor.
    pub sidecars: Sidecars,
}

/// Reads the request of a pod with `annotations`, or every reason it is wrong, each naming
/// its annotation.
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Request, Vec<FieldError>> {
    let mut errors = Vec::new();
    let error = |annotation: &str, message: String| {
        FieldError::new(format!("metadata.annotations[{annotation}]"), message)
    };
    for key in annotations.keys().filter(|k| k.starts_with(PREFIX)) {
        if key != INJECTED
            && !OPTIONS.iter().any(|(a, _, _)| a == key)
            && resource_annotation(key).is_none()
        {
            let known: Vec<&str> = OPTIONS.iter().map(|(a, _, _)| *a).collect();
            errors.push(error(
                key,
                format!(
                    "unknown annotation; the injector reads {}, and rigging.dev/<sidecar>-<cpu|memory>-<request|limit>",
                    known.join(", ")
                ),
            ));
        }
    }
    let get = |key: &str| {
        annotations
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let mut names = Vec::new();
    for name in get("rigging.dev/sidecars")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
    {
        match SIDECARS.iter().find(|s| **s == name) {
            Some(known) if !names.contains(known) => names.push(*known),
            Some(_) => {}
            None if name.is_empty() => {}
            None => errors.push(error(
                "rigging.dev/sidecars",
                format!("unknown sidecar {name:?}; known: {}", SIDECARS.join(", ")),
            )),
        }
    }
    if names.is_empty() && errors.is_empty() {
        errors.push(error(
            "rigging.dev/sidecars",
            format!(
                "name the sidecars to inject, comma-separated, from {}",
                SIDECARS.join(", ")
            ),
        ));
    }
    names.sort_by_key(|n| SIDECARS.iter().position(|s| s == n));
    // An option of a sidecar that is not asked for is a mistake the user wants to hear of.
    let resource_options = annotations
        .keys()
        .filter_map(|k| Some((k.as_str(), resource_annotation(k)?.0)));
    for (annotation, sidecar) in OPTIONS
        .iter()
        .map(|(a, s, _)| (*a, *s))
        .chain(resource_options)
    {
        if !sidecar.is_empty() && get(annotation).is_some() && !names.contains(&sidecar) {
            errors.push(error(
                annotation,
                format!("set, but {sidecar:?} is not in rigging.dev/sidecars"),
            ));
        }
    }
    let port = |annotation: &str, errors: &mut Vec<FieldError>| {
        let text = get(annotation)?;
        match text.parse::<i32>() {
            Ok(p) if (1..=65535).contains(&p) => Some(p),
            _ => {
                errors.push(error(
                    annotation,
                    format!("{text:?} is not a port (1 to 65535)"),
                ));
                None
            }
        }
    };
    let app_port = port("rigging.dev/app-port", &mut errors);
    let tls = if names.contains(&"tls") {
        let secret = get("rigging.dev/tls-secret");
        if secret.is_none() {
            errors.push(error(
                "rigging.dev/tls-secret",
                "required with the tls sidecar: the kubernetes.io/tls Secret it serves".into(),
            ));
        }
        if app_port.is_none() && get("rigging.dev/app-port").is_none() {
            errors.push(error(
                "rigging.dev/app-port",
                "required with the tls sidecar: the port it forwards to".into(),
            ));
        }
        let tls_port = port("rigging.dev/tls-port", &mut errors).unwrap_or(8443);
        match (secret, app_port) {
            (Some(secret), Some(app_port)) => Some(TlsTermination {
                port: tls_port,
                secret_name: secret.to_owned(),
                app_port,
                resources: check_resources("tls", crate::sidecars::TLS, &get, &mut errors),
            }),
            _ => None,
        }
    } else {
        None
    };
    let mut block = sidecars_block(&names, &get);
    for (sidecar, container) in [
        ("logs", crate::sidecars::LOGS),
        ("metrics", crate::sidecars::METRICS),
        ("health", crate::sidecars::HEALTH),
        ("shard", crate::sidecars::SHARD),
        ("http", crate::sidecars::HTTP),
        ("elect", crate::sidecars::ELECT),
        ("queue", crate::sidecars::QUEUE),
    ] {
        if let Some(Value::Object(entry)) = block.get_mut(sidecar)
            && let Some(resources) = check_resources(sidecar, container, &get, &mut errors)
        {
            entry.insert(
                "resources".into(),
                serde_json::to_value(resources).unwrap_or_default(),
            );
        }
    }
    let sidecars = match check_block(&block) {
        Ok(sidecars) => Some(sidecars),
        Err(found) => {
            errors.extend(found);
            None
        }
    };
    // The election sidecar's own rules (timings, endpoints), and its election, which a
    // pod must name: the injector knows no object whose name it could default to.
    let elect = sidecars.as_ref().and_then(|s| s.elect.as_ref());
    if let Some(Err(found)) = elect.map(|e| crate::sidecars::elect::args(e, None)) {
        errors.extend(found.0.into_iter().map(|mut e| {
            e.field = e.field.trim_start_matches("spec.sidecars").to_owned();
            name_annotation(e)
        }));
    }
    match sidecars {
        Some(sidecars) if errors.is_empty() => Ok(Request {
            names,
            app_port,
            tls,
            sidecars,
        }),
        _ => Err(errors),
    }
}

/// The `sidecars` block the annotations stand for, as JSON, for the schema to check.
fn sidecars_block<'a>(names: &[&str], get: &impl Fn(&str) -> Option<&'a str>) -> Value {
    let mut block = Map::new();
    if names.contains(&"logs") {
        let mut logs = Map::new();
        for (annotation, _, path) in OPTIONS.iter().filter(|(_, s, _)| *s == "logs") {
            if let (Some(value), Some(field)) = (get(annotation), path.strip_prefix("logs.")) {
                logs.insert(field.to_owned(), json!(value));
            }
        }
        block.insert("logs".into(), Value::Object(logs));
    }
    if names.contains(&"metrics") {
        let source = get("rigging.dev/metrics-source");
        block.insert(
            "metrics".into(),
            source.map_or_else(|| json!({}), |s| json!({"source": s})),
        );
    }
    if names.contains(&"health") {
        let checks: Vec<&str> = get("rigging.dev/health-checks")
            .map(|c| c.split_whitespace().collect())
            .unwrap_or_default();
        block.insert(
            "health".into(),
            if checks.is_empty() {
                json!({})
            } else {
                json!({"checks": checks})
            },
        );
    }
    if names.contains(&"shard") {
        let mut shard = Map::new();
        if let Some(service) = get("rigging.dev/shard-service") {
            shard.insert("service".into(), json!(service));
        }
        if let Some(port) = get("rigging.dev/shard-port") {
            shard.insert("port".into(), number_or_text(port));
        }
        block.insert("shard".into(), Value::Object(shard));
    }
    if names.contains(&"http") {
        let mut http = Map::new();
        if let Some(config_map) = get("rigging.dev/http-config-map") {
            http.insert("configMap".into(), json!(config_map));
        }
        if let Some(port) = get("rigging.dev/http-port") {
            http.insert("port".into(), number_or_text(port));
        }
        block.insert("http".into(), Value::Object(http));
    }
    if names.contains(&"elect") {
        let mut elect = Map::new();
        for (annotation, _, path) in OPTIONS.iter().filter(|(_, s, _)| *s == "elect") {
            let (Some(value), Some(field)) = (get(annotation), path.strip_prefix("elect.")) else {
                continue;
            };
            let value = match field {
                // A list: URLs separated by commas or whitespace.
                "etcdEndpoints" => json!(
                    value
                        .split(|c: char| c == ',' || c.is_whitespace())
                        .filter(|e| !e.is_empty())
                        .collect::<Vec<_>>()
                ),
                "items" => number_or_text(value),
                "activePassive" => match value {
                    "true" => json!(true),
                    "false" => json!(false),
                    other => json!(other),
                },
                _ => json!(value),
            };
            elect.insert(field.to_owned(), value);
        }
        block.insert("elect".into(), Value::Object(elect));
    }
    if names.contains(&"queue") {
        let mut queue = Map::new();
        for (annotation, _, path) in OPTIONS.iter().filter(|(_, s, _)| *s == "queue") {
            let (Some(value), Some(field)) = (get(annotation), path.strip_prefix("queue.")) else {
                continue;
            };
            let value = match field {
                // Lists: topics separated by commas or whitespace.
                "subscribe" | "outputs" => json!(
                    value
                        .split(|c: char| c == ',' || c.is_whitespace())
                        .filter(|t| !t.is_empty())
                        .collect::<Vec<_>>()
                ),
                "maxInFlight" | "maxDeliveries" => number_or_text(value),
                // `SECRET/KEY`; anything else goes to the schema as text, which it refuses.
                "urlSecret" => match value.split_once('/') {
                    Some((name, key)) => json!({"name": name, "key": key}),
                    None => json!(value),
                },
                _ => json!(value),
            };
            queue.insert(field.to_owned(), value);
        }
        block.insert("queue".into(), Value::Object(queue));
    }
    Value::Object(block)
}

/// A port annotation as JSON: a number when it is one; otherwise the text, for the schema
/// to refuse naming the annotation.
fn number_or_text(text: &str) -> Value {
    text.parse::<i64>()
        .map_or_else(|_| json!(text), |p| json!(p))
}

/// The `sidecars` block checked by the CRD's own schema and CEL rules (those of a
/// ReplicatedService, which every kind shares), with errors named by annotation.
fn check_block(block: &Value) -> Result<Sidecars, Vec<FieldError>> {
    let (structure, rules) = sidecars_schema();
    let mut errors = schema::validate(structure, block, "");
    if errors.is_empty() {
        errors = rules.check(block);
    }
    if !errors.is_empty() {
        return Err(errors.into_iter().map(name_annotation).collect());
    }
    serde_json::from_value(block.clone())
        .map_err(|e| vec![FieldError::new("metadata.annotations", e.to_string())])
}

/// The error of a field of the `sidecars` block, as one about the annotation that set it.
fn name_annotation(error: FieldError) -> FieldError {
    let field = error.field.trim_start_matches('.');
    let annotation = OPTIONS
        .iter()
        .filter(|(_, _, path)| !path.is_empty())
        .find(|(_, _, path)| field == *path || field.starts_with(&format!("{path}[")))
        .map(|(a, _, _)| a.to_string())
        .unwrap_or_else(|| format!("rigging.dev/sidecars ({field})"));
    FieldError::new(format!("metadata.annotations[{annotation}]"), error.message)
}

/// The schema of the shared `sidecars` block, and its CEL rules, compiled once.
fn sidecars_schema() -> &'static (Value, schema::Rules) {
    static SCHEMA: OnceLock<(Value, schema::Rules)> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = ReplicatedService::crd();
        let whole = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        let block = whole
            .pointer("/properties/spec/properties/sidecars")
            .cloned()
            .unwrap_or(Value::Null);
        (block.clone(), schema::Rules::compile(&block))
    })
}
