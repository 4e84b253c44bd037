//! A fingerprint of what the operator applies, stored on each child, so that a reconcile
//! can tell from its watch cache alone — without a request — that a child is already as
//! desired.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use md5::{Digest, Md5};
use serde::Serialize;

/// Annotation holding the fingerprint of the last applied metadata and spec.
pub const ANNOTATION: &str = "rigging.dev/applied-hash";

/// Adds the fingerprint of `meta` (without the annotation itself) and `spec` to `meta`.
/// MD5 is used as a change detector, not for security: it is stable across builds, which
/// keeps the committed `render` snapshots stable too.
pub fn stamp<S: Serialize>(meta: &mut ObjectMeta, spec: &S) {
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(ANNOTATION);
    }
    let mut hasher = Md5::new();
    // Serialising types made of strings, numbers, maps and vectors cannot fail.
    if let Ok(bytes) = serde_json::to_vec(&(&*meta, spec)) {
        hasher.update(&bytes);
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION.into(), hex);
}

/// The fingerprint stamped on an object, if any.
pub fn of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(ANNOTATION)
        .map(String::as_str)
}
