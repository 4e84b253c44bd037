//! Whether a live child already holds what the operator would apply, decided from the
//! watch cache alone, so that an unchanged child costs no request and a child edited by
//! hand is set back on the next reconcile (which its own watch event triggers).
//!
//! The test is containment, not equality: the live object may carry more than the
//! operator applies (defaults the API server fills in, fields and annotations other
//! managers own), and none of that is drift. Only a field the operator applies, holding
//! another value or missing, is.

use serde_json::Value;

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
}
