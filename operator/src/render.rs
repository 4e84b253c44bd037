//! `rigging-operator render`: the pure half of every controller, offline. Rigging
//! resources in (multi-document YAML), the Kubernetes objects the operator would apply out.

use std::fmt;
use std::sync::OnceLock;

use kube::CustomResourceExt;
use rigging_crds::{FieldError, ReplicatedService};
use serde::Deserialize;
use serde_json::Value;

use crate::replicated_service::desired::{self, RenderConfig};
use crate::schema;

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
        "{source_name}: document {document}: unknown kind {kind:?} (apiVersion {api_version:?}); render knows ReplicatedService (rigging.dev/v1alpha1)"
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

/// The CRD schema of ReplicatedService, built once: generating it is far costlier than
/// rendering one object.
fn replicated_service_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = ReplicatedService::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref());
        schema::for_whole_object(&serde_json::to_value(schema).unwrap_or(Value::Null))
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
    if (api_version.as_str(), kind.as_str()) != ("rigging.dev/v1alpha1", "ReplicatedService") {
        return Err(RenderError::UnknownKind {
            source_name: source_name.to_owned(),
            document,
            kind,
            api_version,
        });
    }
    let mut errors = schema::validate(replicated_service_schema(), &value, "");
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
    let rs: ReplicatedService = serde_json::from_value(value)
        .map_err(|e| invalid(vec![FieldError::new("(document)", e.to_string())]))?;
    let children = desired::desired(&rs, config).map_err(|e| invalid(e.0))?;
    children.to_values().map_err(|e| RenderError::Output {
        source_name: source_name.to_owned(),
        document,
        error: e.to_string(),
    })
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
        out.push_str(&yaml);
    }
    Ok(out)
}
