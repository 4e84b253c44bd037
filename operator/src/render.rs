//! `rigging-operator render`: the pure half of every controller, offline. Rigging
//! resources in (multi-document YAML), the Kubernetes objects the operator would apply out.

use std::fmt;
use std::sync::OnceLock;

use std::collections::BTreeMap;

use rigging_crds::{
    FieldError, MapReduce, Pipeline, ReplicatedService, ScatterGather, ShardedService, WorkQueue,
};
use serde::Deserialize;
use serde_json::Value;

use crate::controller::{Child, Kind, Observed, RenderConfig};
use crate::{crdgen, schema};

/// The `apiVersion` of every kind `render` knows.
const API_VERSION: &str = "rigging.dev/v1alpha1";

/// Why one input could not be rendered. Every variant names the input; those about one
/// document name it too (1-based, as `---` separates them).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The input is not YAML.
    #[error("{source_name}: {error}")]
    Yaml {
        /// File name (`<stdin>` for `-`).
        source_name: String,
        /// The parser's message, with line and column.
        error: serde_norway::Error,
    },
    /// A document is not a Rigging resource this version knows.
    #[error(
        "{source_name}: document {document}: unknown kind {kind:?} (apiVersion {api_version:?}); render knows ReplicatedService, ShardedService, WorkQueue, Pipeline, ScatterGather and MapReduce (rigging.dev/v1alpha1)"
    )]
    UnknownKind {
        /// File name.
        source_name: String,
        /// 1-based document index.
        document: usize,
        /// The document's `kind`.
        kind: String,
        /// The document's `apiVersion`.
        api_version: String,
    },
    /// A document breaks the schema or the rules of its kind.
    #[error("{}", Invalid(.source_name, *.document, .errors))]
    Invalid {
        /// File name.
        source_name: String,
        /// 1-based document index.
        document: usize,
        /// Every invalid field.
        errors: Vec<FieldError>,
    },
    /// The rendered objects did not serialise (a bug, reported rather than panicking).
    #[error("{source_name}: document {document}: serialising output: {error}")]
    Output {
        /// File name.
        source_name: String,
        /// 1-based document index.
        document: usize,
        /// The serialiser's message.
        error: String,
    },
}

struct Invalid<'a>(&'a str, usize, &'a [FieldError]);

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.2.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: document {}: {e}", self.0, self.1)?;
        }
        Ok(())
    }
}

/// The schema of every kind (keyed by `kind`) with its compiled CEL rules, built once:
/// generating them is far costlier than rendering one object.
fn schemas() -> &'static BTreeMap<String, (Value, schema::Rules)> {
    static SCHEMAS: OnceLock<BTreeMap<String, (Value, schema::Rules)>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        crdgen::all()
            .into_iter()
            .map(|crd| {
                let schema = crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref());
                let schema = serde_json::to_value(schema).unwrap_or(Value::Null);
                let compiled = (
                    schema::for_whole_object(&schema),
                    schema::Rules::compile(&schema),
                );
                (crd.spec.names.kind, compiled)
            })
            .collect()
    })
}

/// Renders every document of `input` (named `source_name` in errors) to the objects the
/// operator would apply, as JSON values in a stable order.
pub fn render_values(
    source_name: &str,
    input: &str,
    config: &RenderConfig,
) -> Result<Vec<Value>, RenderError> {
    let mut out = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(input).enumerate() {
        let document_no = i + 1;
        let value = Value::deserialize(document).map_err(|error| RenderError::Yaml {
            source_name: source_name.to_owned(),
            error,
        })?;
        if value.is_null() {
            continue;
        }
        out.extend(render_document(source_name, document_no, value, config)?);
    }
    Ok(out)
}

fn render_document(
    source_name: &str,
    document: usize,
    value: Value,
    config: &RenderConfig,
) -> Result<Vec<Value>, RenderError> {
    let invalid = |errors: Vec<FieldError>| RenderError::Invalid {
        source_name: source_name.to_owned(),
        document,
        errors,
    };
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let known = schemas().get(&kind).filter(|_| api_version == API_VERSION);
    let Some((structure, rules)) = known else {
        return Err(RenderError::UnknownKind {
            source_name: source_name.to_owned(),
            document,
            kind,
            api_version,
        });
    };
    let mut errors = schema::validate(structure, &value, "");
    if value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errors.push(FieldError::new("metadata.name", "required"));
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    // The CEL rules only on a well-formed object: on a field of the wrong type, what they
    // say would mislead.
    let errors = rules.check(&value);
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let children = match kind.as_str() {
        "ShardedService" => children::<ShardedService>(value, config),
        "WorkQueue" => children::<WorkQueue>(value, config),
        "Pipeline" => children::<Pipeline>(value, config),
        "ScatterGather" => children::<ScatterGather>(value, config),
        "MapReduce" => children::<MapReduce>(value, config),
        _ => children::<ReplicatedService>(value, config),
    }
    .map_err(invalid)?;
    children
        .iter()
        .map(Child::to_value)
        .collect::<Result<_, _>>()
        .map_err(|e| RenderError::Output {
            source_name: source_name.to_owned(),
            document,
            error: e.to_string(),
        })
}

/// What the first reconcile of `value`, a `K`, creates in an empty namespace.
fn children<K: Kind>(value: Value, config: &RenderConfig) -> Result<Vec<Child>, Vec<FieldError>> {
    let obj: K = serde_json::from_value(value)
        .map_err(|e| vec![FieldError::new("(document)", e.to_string())])?;
    obj.desired(config, &Observed::nothing()).map_err(|e| e.0)
}

/// Renders `input` to multi-document YAML (documents separated by `---`).
pub fn render_yaml(
    source_name: &str,
    input: &str,
    config: &RenderConfig,
) -> Result<String, RenderError> {
    let values = render_values(source_name, input, config)?;
    to_yaml_stream(source_name, &values)
}

/// Joins objects into one YAML stream.
pub fn to_yaml_stream(source_name: &str, values: &[Value]) -> Result<String, RenderError> {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let yaml = serde_norway::to_string(v).map_err(|e| RenderError::Output {
            source_name: source_name.to_owned(),
            document: i + 1,
            error: e.to_string(),
        })?;
        out.push_str(&quote_yaml11_words(&yaml));
    }
    Ok(out)
}

/// The plain scalars a YAML 1.1 reader takes for booleans. The emitter follows YAML 1.2 and
/// leaves them unquoted, but kubectl (sigs.k8s.io/yaml) and many tools read YAML 1.1:
/// `args: [--appendonly, yes]` would reach them as `[--appendonly, true]` and be refused.
const YAML11_BOOLEANS: [&str; 16] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// `yaml` (as the emitter wrote it: block style, one key or item per line) with every key
/// or value in [`YAML11_BOOLEANS`] single-quoted, so that YAML 1.1 and 1.2 readers agree.
/// The text of block scalars (`|-`) is left as it is.
fn quote_yaml11_words(yaml: &str) -> String {
    let quote = |word: &str| {
        if YAML11_BOOLEANS.contains(&word) {
            format!("'{word}'")
        } else {
            word.to_owned()
        }
    };
    let mut out = String::with_capacity(yaml.len() + 16);
    // The indentation of the line that opened the block scalar being read, if any.
    let mut block: Option<usize> = None;
    for line in yaml.split_inclusive('\n') {
        let text = line.trim_end_matches('\n');
        let indent = text.len() - text.trim_start_matches(' ').len();
        if let Some(opened) = block {
            if text.trim().is_empty() || indent > opened {
                out.push_str(line);
                continue;
            }
            block = None;
        }
        let mut rest = &text[indent..];
        let mut head = text[..indent].to_owned();
        while let Some(item) = rest.strip_prefix("- ") {
            head.push_str("- ");
            rest = item;
        }
        let (key, value) = match rest.split_once(": ") {
            Some((key, value)) if !key.starts_with(['\'', '"']) => (Some(key), value),
            _ => match rest.strip_suffix(':') {
                Some(key) if !key.starts_with(['\'', '"']) => (Some(key), ""),
                _ => (None, rest),
            },
        };
        if let Some(key) = key {
            head.push_str(&quote(key));
            head.push(':');
            if !value.is_empty() || rest.ends_with(": ") {
                head.push(' ');
            }
        }
        if value.starts_with(['|', '>']) {
            block = Some(indent);
            head.push_str(value);
        } else {
            head.push_str(&quote(value));
        }
        out.push_str(&head);
        if line.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(spec: &str) -> Vec<String> {
        let input = format!(
            "apiVersion: rigging.dev/v1alpha1\nkind: ReplicatedService\nmetadata: {{name: web}}\nspec:\n{spec}"
        );
        match render_values("web.yaml", &input, &RenderConfig::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    #[test]
    fn yaml_1_1_booleans_are_quoted_and_nothing_else_changes() {
        let value = serde_json::json!({
            "args": ["--appendonly", "yes", "no", "on", "yesterday", "true"],
            "y": "n",
            "script": "yes\nno\n",
            "nested": [{"enabled": "off", "count": 3}],
        });
        let yaml = to_yaml_stream("t", std::slice::from_ref(&value)).unwrap();
        assert!(
            yaml.contains("- 'yes'\n- 'no'\n- 'on'\n- yesterday\n"),
            "{yaml}"
        );
        assert!(yaml.contains("'y': 'n'\n"), "{yaml}");
        assert!(yaml.contains("  enabled: 'off'\n"), "{yaml}");
        // Block scalars keep their text; the whole still reads back as it was written.
        let back: Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, value, "{yaml}");
    }

    const APP: &str = "  template: {spec: {containers: [{name: app, image: a, readinessProbe: {tcpSocket: {port: 8080}}}]}}\n";

    #[test]
    fn the_crd_cel_rules_refuse_with_the_field_they_name() {
        let spec = format!(
            "  port: 8080\n{APP}  autoscaling: {{minReplicas: 9, maxReplicas: 2}}\n  disruptionBudget: {{minAvailable: 1, maxUnavailable: 1}}\n"
        );
        assert_eq!(
            refusal(&spec),
            [
                "web.yaml: document 1: spec.autoscaling.minReplicas: minReplicas must be <= maxReplicas",
                "web.yaml: document 1: spec.disruptionBudget: set exactly one of maxUnavailable or minAvailable",
            ]
        );
    }

    #[test]
    fn schema_bounds_are_refused_before_the_cel_rules_run() {
        let spec =
            format!("  port: 8080\n  replicas: -1\n{APP}  tls: {{secretName: t, port: 8080}}\n");
        assert_eq!(
            refusal(&spec),
            ["web.yaml: document 1: spec.replicas: must be >= 0"]
        );
    }

    #[test]
    fn a_port_two_holders_want_is_refused_naming_both() {
        let spec = format!(
            "  port: 8080\n{APP}  tls: {{secretName: t, port: 8080}}\n  sidecars: {{health: {{checks: ['tcp://127.0.0.1:8080']}}, metrics: {{source: 'redis://127.0.0.1:6379'}}}}\n"
        );
        assert_eq!(
            refusal(&spec),
            [
                "web.yaml: document 1: spec.tls.port: port 8080 is the TLS terminator's port and also the app's port (spec.port): containers of a pod share its network, so each port has one holder"
            ]
        );
        let on_admin = "  port: 9121\n  template: {spec: {containers: [{name: app, image: a}]}}\n  sidecars: {health: {checks: ['tcp://127.0.0.1:9121']}, metrics: {source: 'redis://127.0.0.1:6379'}}\n";
        assert_eq!(
            refusal(on_admin),
            [
                "web.yaml: document 1: spec.sidecars.metrics: port 9121 is the metrics adapter's port and also the app's port (spec.port): containers of a pod share its network, so each port has one holder"
            ]
        );
    }

    #[test]
    fn a_missing_readiness_probe_names_the_container() {
        let refused =
            refusal("  port: 8080\n  template: {spec: {containers: [{name: web, image: a}]}}\n");
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].starts_with(
                "web.yaml: document 1: spec.template: container \"web\" (the app container"
            ),
            "{refused:?}"
        );
    }
}
