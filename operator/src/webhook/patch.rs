//! The injection itself: the JSON Patch that adds a pod's sidecars, built from the pod's
//! raw JSON. The sidecars are rendered by the one renderer the controllers use
//! ([`sidecars::place`]) on a typed copy of the pod; what it added is then written as `add`
//! operations against the raw object, so that no field of the pod is ever lost by a
//! round trip through a typed Pod (another injector silently dropped `restartPolicy` that
//! way).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use rigging_crds::FieldError;
use serde::Serialize;
use serde_json::Value;

use super::annotations::{self, INJECT_ENABLED, INJECT_LABEL, INJECTED};
use crate::controller::RenderConfig;
use crate::sidecars::{self, Placement};

/// What the injector does with one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing to do, and why (not labelled, or injected already).
    Untouched(&'static str),
    /// The patch that adds the sidecars named.
    Inject {
        /// The operations, in order.
        patch: Patch,
        /// What was injected, as recorded in [`INJECTED`].
        injected: String,
    },
    /// The pod asks for something wrong: its creation is refused with this message.
    Deny(String),
}

/// Decides what to do with `pod`, the raw object of an admission request.
pub fn inject(pod: &Value, config: &RenderConfig) -> Outcome {
    let metadata = &pod["metadata"];
    if metadata["labels"][INJECT_LABEL].as_str() != Some(INJECT_ENABLED) {
        return Outcome::Untouched("not labelled rigging.dev/inject=enabled");
    }
    if metadata["annotations"].get(INJECTED).is_some() {
        return Outcome::Untouched("injected already");
    }
    let typed: Pod = match serde_json::from_value(pod.clone()) {
        Ok(p) => p,
        Err(e) => return Outcome::Deny(format!("the pod does not parse: {e}")),
    };
    let annotations = typed.metadata.annotations.clone().unwrap_or_default();
    let request = match annotations::parse(&annotations) {
        Ok(r) => r,
        Err(errors) => return Outcome::Deny(message(&errors)),
    };
    let before = PodTemplateSpec {
        metadata: Some(typed.metadata.clone()),
        spec: typed.spec.clone(),
    };
    let mut after = before.clone();
    let placement = Placement {
        app_port: request.app_port,
        tls: request.tls.as_ref(),
        sidecars: Some(&request.sidecars),
        // A pod has no owner Rigging knows: it names its election.
        election: None,
    };
    if let Err(errors) = sidecars::place(&mut after, &placement, config) {
        return Outcome::Deny(message(&errors.0));
    }
    let injected = request.names.join(",");
    match operations(pod, &before, &after, &injected) {
        Ok(ops) => Outcome::Inject {
            patch: Patch(ops),
            injected,
        },
        Err(e) => Outcome::Deny(format!("cannot write the patch: {e}")),
    }
}

/// One line per error, as the API server shows a denial.
fn message(errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("rigging.dev sidecar injection: {}", lines.join("; "))
}

/// The `add` operations that turn `pod` (whose typed form is `before`) into `after`.
fn operations(
    pod: &Value,
    before: &PodTemplateSpec,
    after: &PodTemplateSpec,
    injected: &str,
) -> Result<Vec<PatchOperation>, serde_json::Error> {
    let (Some(old), Some(new)) = (before.spec.as_ref(), after.spec.as_ref()) else {
        return Ok(Vec::new());
    };
    let mut ops = Vec::new();
    let spec = &pod["spec"];
    let old_init = old.init_containers.as_ref().map_or(0, Vec::len);
    let new_init = new.init_containers.clone().unwrap_or_default();
    append(
        &mut ops,
        spec,
        &["spec", "initContainers"],
        &added(&new_init, old_init),
    )?;
    let new_containers = new.containers.clone();
    append(
        &mut ops,
        spec,
        &["spec", "containers"],
        &added(&new_containers, old.containers.len()),
    )?;
    let old_volumes = old.volumes.as_ref().map_or(0, Vec::len);
    let new_volumes = new.volumes.clone().unwrap_or_default();
    append(
        &mut ops,
        spec,
        &["spec", "volumes"],
        &added(&new_volumes, old_volumes),
    )?;
    if let (Some(old_app), Some(new_app)) = (old.containers.first(), new.containers.first()) {
        let app = &spec["containers"][0];
        let old_mounts = old_app.volume_mounts.as_ref().map_or(0, Vec::len);
        let new_mounts = new_app.volume_mounts.clone().unwrap_or_default();
        let path = ["spec", "containers", "0", "volumeMounts"];
        append(&mut ops, app, &path, &added(&new_mounts, old_mounts))?;
        if let (None, Some(probe)) = (&old_app.readiness_probe, &new_app.readiness_probe) {
            ops.push(add(&["spec", "containers", "0", "readinessProbe"], probe)?);
        }
    }
    // Labels the renderer adds (a shard ambassador's client label), each as its own add.
    let old_labels = labels_of(before);
    let new_labels: BTreeMap<String, String> = labels_of(after)
        .into_iter()
        .filter(|(k, _)| !old_labels.contains_key(k))
        .collect();
    if !new_labels.is_empty() {
        if pod["metadata"]["labels"].is_object() {
            for (key, value) in &new_labels {
                ops.push(add(&["metadata", "labels", key], value)?);
            }
        } else {
            ops.push(add(&["metadata", "labels"], &new_labels)?);
        }
    }
    let old_annotations = annotations_of(before);
    let mut new_annotations: BTreeMap<String, String> = annotations_of(after)
        .into_iter()
        .filter(|(k, _)| !old_annotations.contains_key(k))
        .collect();
    new_annotations.insert(INJECTED.into(), injected.into());
    if pod["metadata"]["annotations"].is_object() {
        for (key, value) in &new_annotations {
            ops.push(add(&["metadata", "annotations", key], value)?);
        }
    } else {
        ops.push(add(&["metadata", "annotations"], &new_annotations)?);
    }
    Ok(ops)
}

/// The items of `new` past the first `old`: what the renderer appended.
fn added<T: Clone>(new: &[T], old: usize) -> Vec<T> {
    new.get(old..).unwrap_or_default().to_vec()
}

fn labels_of(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn annotations_of(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

/// Appends `items` to the list at `path` (whose last token is the list's field in
/// `parent`): one `add` of the whole list when the pod has none, else one `add … /-` per
/// item, so that what the pod has stays untouched.
fn append<T: Serialize>(
    ops: &mut Vec<PatchOperation>,
    parent: &Value,
    path: &[&str],
    items: &[T],
) -> Result<(), serde_json::Error> {
    if items.is_empty() {
        return Ok(());
    }
    let field = path.last().copied().unwrap_or_default();
    if parent.get(field).is_some_and(Value::is_array) {
        for item in items {
            let mut each = path.to_vec();
            each.push("-");
            ops.push(add(&each, item)?);
        }
    } else {
        ops.push(add(path, &items)?);
    }
    Ok(())
}

/// An `add` at the pointer of `tokens`, each escaped (`/` as `~1`, `~` as `~0`).
fn add<T: Serialize + ?Sized>(
    tokens: &[&str],
    value: &T,
) -> Result<PatchOperation, serde_json::Error> {
    Ok(PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value: serde_json::to_value(value)?,
    }))
}
