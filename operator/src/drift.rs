//! Whether a live child already holds what the operator would apply, decided from the
//! watch cache alone, so that an unchanged child costs no request and a child edited by
//! hand is set back on the next reconcile (which its own watch event triggers).
//!
//! The test is containment, not equality: the live object may carry more than the
//! operator applies (defaults the API server fills in, fields and annotations other
//! managers own), and none of that is drift. Only a field the operator applies, holding
//! another value or missing, is; and a field it applied before and no longer does
//! ([`drops_owned`]), which server-side apply removes only when applied without it.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use serde_json::Value;

use crate::controller::MANAGER;

/// Whether `entry` records the operator's own server-side apply of the object itself (not
/// of a subresource): the one `managedFields` entry a reconcile reads.
pub fn is_own_apply(entry: &ManagedFieldsEntry) -> bool {
    entry.manager.as_deref() == Some(MANAGER)
        && entry.operation.as_deref() == Some("Apply")
        && entry.subresource.is_none()
}

/// The field sets of the operator's own applies of an object, as trees: parsed from their
/// JSON text where the watch cache keeps them so
/// ([`crate::controller::children::keep_own_fields`]), as the API server sent them
/// otherwise. (The server's is always a JSON object, never a string.)
pub fn own_field_sets(meta: &ObjectMeta) -> impl Iterator<Item = Cow<'_, Value>> {
    let entries = meta.managed_fields.iter().flatten();
    entries
        .filter(|m| is_own_apply(m))
        .filter_map(|m| match &m.fields_v1.as_ref()?.0 {
            Value::String(text) => serde_json::from_str(text).ok().map(Cow::Owned),
            tree => Some(Cow::Borrowed(tree)),
        })
}

/// Whether `live` holds every field of `desired` with the same value.
///
/// Maps are compared key by key; lists element by element in order (server-side apply
/// keeps the applied order). An empty list, empty map or `null` in `desired` matches a
/// field the API server dropped on the way in. Where the server rewrites a value into
/// another spelling (a quantity `0.5` read back as `500m`), the child counts as drifted
/// and is applied again: that request changes nothing, so it cannot start a loop.
pub fn holds(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Object(live), Value::Object(desired)) => {
            desired.iter().all(|(key, want)| match live.get(key) {
                Some(have) => holds(have, want),
                None => is_empty(want),
            })
        }
        (Value::Array(live), Value::Array(desired)) => {
            live.len() >= desired.len()
                && live
                    .iter()
                    .zip(desired)
                    .all(|(have, want)| holds(have, want))
        }
        (Value::Null, want) => is_empty(want),
        (have, want) => have == want,
    }
}

/// Whether `desired` leaves out a field that `owned` — the `fieldsV1` set of the
/// operator's last apply, from the live object's `managedFields` — says the operator
/// applied. Under server-side apply such a field is only removed by applying without it,
/// so its absence is drift too, though the live object still holds everything desired
/// (a sidecar, a volume, a `serviceAccountName` the spec no longer asks for).
///
/// `f:NAME` is a field, `k:{…}` an item of a keyed list (matched by its key fields; one
/// the desired item leaves out is taken as the server's default, such as a port's
/// `protocol`), `v:…` an item of a set, `i:N` a list position; `.` is the field itself.
pub fn drops_owned(owned: &Value, desired: &Value) -> bool {
    let Value::Object(fields) = owned else {
        return false;
    };
    fields.iter().any(|(key, below)| {
        let found = if key == "." {
            return false;
        } else if let Some(name) = key.strip_prefix("f:") {
            desired.get(name).filter(|v| !v.is_null())
        } else if let Some(item) = key.strip_prefix("k:") {
            let Ok(Value::Object(wanted)) = serde_json::from_str::<Value>(item) else {
                return false;
            };
            desired.as_array().and_then(|items| {
                items.iter().find(|i| {
                    wanted
                        .iter()
                        .all(|(k, v)| i.get(k).is_none_or(|have| have == v))
                })
            })
        } else if let Some(value) = key.strip_prefix("v:") {
            let Ok(value) = serde_json::from_str::<Value>(value) else {
                return false;
            };
            let items = desired.as_array();
            return !items.is_some_and(|items| items.contains(&value));
        } else if let Some(index) = key.strip_prefix("i:") {
            index
                .parse::<usize>()
                .ok()
                .and_then(|i| desired.as_array()?.get(i))
        } else {
            // A kind of entry this does not know: never a reason to apply.
            return false;
        };
        match found {
            Some(value) => drops_owned(below, value),
            None => true,
        }
    })
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.values().all(is_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::holds;
    use serde_json::json;

    #[test]
    fn defaults_and_fields_of_other_managers_are_not_drift() {
        let desired =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80}]}});
        let live = json!({
            "metadata": {"labels": {"a": "1"}, "annotations": {"by-hand": "yes"}, "uid": "u"},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.0.0.7"}
        });
        assert!(holds(&live, &desired));
    }

    #[test]
    fn a_changed_or_missing_field_is_drift() {
        let desired =
            json!({"spec": {"replicas": 3, "template": {"containers": [{"image": "app:1"}]}}});
        let edited =
            json!({"spec": {"replicas": 3, "template": {"containers": [{"image": "app:2"}]}}});
        let scaled =
            json!({"spec": {"replicas": 7, "template": {"containers": [{"image": "app:1"}]}}});
        let missing = json!({"spec": {"template": {"containers": [{"image": "app:1"}]}}});
        let shorter = json!({"spec": {"replicas": 3, "template": {"containers": []}}});
        for live in [edited, scaled, missing, shorter] {
            assert!(!holds(&live, &desired), "{live} does not hold {desired}");
        }
    }

    #[test]
    fn empty_values_the_server_drops_still_match() {
        let desired = json!({"spec": {"volumes": [], "nodeSelector": {}, "hostname": null}});
        assert!(holds(&json!({"spec": {}}), &desired));
        assert!(holds(&json!({}), &desired));
    }

    #[test]
    fn a_field_the_operator_applied_and_no_longer_does_is_drift() {
        use super::drops_owned;
        // What the last apply owned: a container with a volume mount and a port (keyed,
        // with the protocol the server filled in), an init container, the account.
        let owned = json!({
            "f:spec": {"f:template": {"f:spec": {
                "f:serviceAccountName": {},
                "f:containers": {"k:{\"name\":\"app\"}": {
                    ".": {}, "f:name": {},
                    "f:ports": {"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}},
                    "f:volumeMounts": {"k:{\"mountPath\":\"/var/run/elect\"}": {"f:name": {}}}
                }},
                "f:initContainers": {"k:{\"name\":\"rigging-elect\"}": {"f:name": {}}}
            }}},
            "f:metadata": {"f:finalizers": {"v:\"a\"": {}}}
        });
        let all = json!({
            "metadata": {"finalizers": ["a"]},
            "spec": {"template": {"spec": {
                "serviceAccountName": "web-elect",
                "containers": [{"name": "app", "ports": [{"containerPort": 8080}],
                                "volumeMounts": [{"name": "rigging-elect", "mountPath": "/var/run/elect"}]}],
                "initContainers": [{"name": "rigging-elect"}]
            }}}
        });
        assert!(
            !drops_owned(&owned, &all),
            "the same apply again drops nothing"
        );
        let without = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut desired = all.clone();
            edit(&mut desired);
            drops_owned(&owned, &desired)
        };
        let pod = "/spec/template/spec";
        assert!(without(&|d| {
            d.pointer_mut(pod)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove("initContainers");
        }));
        assert!(without(&|d| {
            d.pointer_mut(pod)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove("serviceAccountName");
        }));
        assert!(without(&|d| {
            d.pointer_mut(&format!("{pod}/containers/0")).unwrap()["volumeMounts"] = json!([]);
        }));
        assert!(without(&|d| {
            d.pointer_mut(&format!("{pod}/containers/0")).unwrap()["ports"] =
                json!([{"containerPort": 9090}]);
        }));
        assert!(without(&|d| d["metadata"]["finalizers"] = json!(["b"])));
    }
}
