//! Schemas shared by the kinds: the Kubernetes types they embed, without descriptions.

use k8s_openapi::api::core::v1::{Container, PersistentVolumeClaim, PodTemplateSpec};
use schemars::{JsonSchema, Schema, SchemaGenerator};

/// The schema of a pod `template`: the full PodTemplateSpec without its descriptions, which
/// alone would push a CRD past the 256 KiB `kubectl apply` annotation limit. The fields are
/// documented by Kubernetes itself (`kubectl explain pod.spec`).
pub(crate) fn pod_template_schema(generator: &mut SchemaGenerator) -> Schema {
    undescribed::<PodTemplateSpec>(generator)
}

/// The schema of one container, without descriptions.
pub(crate) fn container_schema(generator: &mut SchemaGenerator) -> Schema {
    undescribed::<Container>(generator)
}

/// The schema of a list of PersistentVolumeClaims (a StatefulSet's
/// `volumeClaimTemplates`), without descriptions.
pub(crate) fn volume_claims_schema(generator: &mut SchemaGenerator) -> Schema {
    undescribed::<Vec<PersistentVolumeClaim>>(generator)
}

/// A duration as the CRDs take it: numbers with units, `90s`, `2m`, `1h30m`, `500ms` (text
/// that humantime, which the sidecars parse durations with, reads the same way).
const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// The CEL rule that the optional string field `field` is a duration, if set.
pub(crate) fn duration_rule(field: &str) -> String {
    format!("!has(self.{field}) || self.{field}.matches('{DURATION_PATTERN}')")
}

/// The message of [`duration_rule`].
pub(crate) fn duration_message(field: &str) -> String {
    format!("{field} must be a duration: numbers with units ms, s, m or h (90s, 2m, 1h30m)")
}

fn undescribed<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<T>();
    if let Some(map) = schema.as_object_mut() {
        strip_object_descriptions(map);
    }
    schema
}

/// Removes `description` from a schema and every schema below it, leaving alone
/// properties that happen to be named `description`.
fn strip_descriptions(schema: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = schema {
        strip_object_descriptions(map);
    }
}

fn strip_object_descriptions(map: &mut serde_json::Map<String, serde_json::Value>) {
    map.remove("description");
    for (key, value) in map.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" => {
                if let serde_json::Value::Object(children) = value {
                    children.values_mut().for_each(strip_descriptions);
                }
            }
            "items" | "additionalProperties" | "not" => match value {
                serde_json::Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
                other => strip_descriptions(other),
            },
            "allOf" | "anyOf" | "oneOf" => {
                if let serde_json::Value::Array(items) = value {
                    items.iter_mut().for_each(strip_descriptions);
                }
            }
            _ => {}
        }
    }
}
