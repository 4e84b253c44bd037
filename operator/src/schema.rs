//! Validation of a manifest against a CRD's structural OpenAPI v3 schema, the way the API
//! server checks it before CEL rules: types, required fields, enums, bounds, and unknown
//! fields (which the API server prunes or, with strict field validation, refuses).
//!
//! It covers the subset of OpenAPI that structural schemas allow. The CEL rules
//! (`x-kubernetes-validations`) are then evaluated by [`Rules`], with kube's CEL engine, on
//! the same schema: the rules written on the Rust types are the only copy, and `render`
//! refuses exactly what they refuse.

use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use rigging_crds::FieldError;
use serde_json::Value;

/// The CEL rules of one CRD schema, compiled once.
pub struct Rules(CompiledSchema);

impl Rules {
    /// Compiles every rule of `open_api_v3_schema`.
    pub fn compile(open_api_v3_schema: &Value) -> Self {
        Self(compile_schema(open_api_v3_schema))
    }

    /// Evaluates the rules on `value` (after the schema's defaults, as the API server
    /// does), one error per failing rule, named by the field the rule points at, in the
    /// order of those fields.
    pub fn check(&self, value: &Value) -> Vec<FieldError> {
        let Err(errors) = Validator::new().validate_compiled(&self.0, value, None) else {
            return Vec::new();
        };
        let mut errors: Vec<FieldError> = errors
            .into_vec()
            .into_iter()
            .map(|e| FieldError::new(e.field_path, e.message))
            .collect();
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        errors
    }
}

/// A CRD's `openAPIV3Schema` completed with the fields the API server adds to every
/// custom resource (`apiVersion`, `kind`, `metadata`), so a whole manifest can be checked.
pub fn for_whole_object(open_api_v3_schema: &Value) -> Value {
    let mut schema = open_api_v3_schema.clone();
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
        properties.insert("kind".into(), serde_json::json!({"type": "string"}));
        properties
            .entry("metadata")
            .or_insert_with(|| serde_json::json!({"type": "object"}));
    }
    schema
}

/// Checks `value` against `schema`, collecting every error with its path from `path`.
pub fn validate(schema: &Value, value: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check(schema, value, path, &mut errors);
    errors
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let flag = |name: &str| schema.get(name).and_then(Value::as_bool).unwrap_or(false);
    if value.is_null() {
        // The API server drops nulls of non-nullable fields; `required` catches what matters.
        return;
    }
    if flag("x-kubernetes-int-or-string") {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(FieldError::new(path, "must be an integer or a string"));
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let type_ok = match ty {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        let ty = ty.unwrap_or("?");
        let article = if ty.starts_with(['a', 'e', 'i', 'o']) {
            "an"
        } else {
            "a"
        };
        errors.push(FieldError::new(
            path,
            format!("must be {article} {ty}, not {}", describe(value)),
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(FieldError::new(
            path,
            format!("must be one of {}", list.join(", ")),
        ));
    }
    check_bounds(schema, value, path, errors);
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|v| v.is_object());
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = name.as_str()
                    && map.get(name).is_none_or(Value::is_null)
                {
                    errors.push(FieldError::new(join(path, name), "required"));
                }
            }
            for (key, child) in map {
                let child_path = join(path, key);
                if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                    check(child_schema, child, &child_path, errors);
                } else if let Some(child_schema) = additional {
                    check(child_schema, child, &child_path, errors);
                } else if properties.is_some() && !flag("x-kubernetes-preserve-unknown-fields") {
                    errors.push(FieldError::new(child_path, "unknown field"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn check_bounds(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let bound = |name: &str| schema.get(name).and_then(Value::as_f64);
    if let Some(n) = value.as_f64() {
        if let Some(min) = bound("minimum")
            && n < min
        {
            errors.push(FieldError::new(path, format!("must be >= {min}")));
        }
        if let Some(max) = bound("maximum")
            && n > max
        {
            errors.push(FieldError::new(path, format!("must be <= {max}")));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as f64;
        if let Some(min) = bound("minLength")
            && len < min
        {
            let message = if min <= 1.0 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {min} characters long")
            };
            errors.push(FieldError::new(path, message));
        }
        if let Some(max) = bound("maxLength")
            && len > max
        {
            errors.push(FieldError::new(
                path,
                format!("must be at most {max} characters long"),
            ));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && !matches_pattern(pattern, s)
        {
            errors.push(FieldError::new(
                path,
                format!("{s:?} should match '{pattern}'"),
            ));
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as f64;
        if let Some(min) = bound("minItems")
            && len < min
        {
            errors.push(FieldError::new(
                path,
                format!("must have at least {min} items"),
            ));
        }
        if let Some(max) = bound("maxItems")
            && len > max
        {
            errors.push(FieldError::new(
                path,
                format!("must have at most {max} items"),
            ));
        }
    }
}

/// Whether `s` matches the schema `pattern`. The API server's regular expressions are Go's
/// RE2, whose syntax the regex crate shares for what the CRDs use; a pattern that does not
/// compile checks nothing. Each is compiled once: the webhook checks every labelled pod's
/// annotations against the same few.
fn matches_pattern(pattern: &str, s: &str) -> bool {
    static COMPILED: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, Option<regex::Regex>>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut compiled = COMPILED.lock().expect("pattern cache lock");
    if !compiled.contains_key(pattern) {
        compiled.insert(pattern.to_owned(), regex::Regex::new(pattern).ok());
    }
    compiled[pattern].as_ref().is_none_or(|re| re.is_match(s))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["port"],
            "properties": {
                "port": {"type": "integer", "minimum": 1.0, "maximum": 65535.0},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"},
                "budget": {"x-kubernetes-int-or-string": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"n": {"type": "integer"}}}
            }
        })
    }

    fn messages(value: Value) -> Vec<String> {
        validate(&schema(), &value, "spec")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_valid_object_has_no_errors() {
        let value = json!({"port": 80, "mode": "a", "name": "web-1", "budget": "50%", "labels": {"x": "y"},
            "items": [{"name": "n"}], "free": {"n": 1, "anything": true}});
        assert_eq!(messages(value), Vec::<String>::new());
    }

    #[test]
    fn errors_name_the_field_path() {
        let value = json!({"port": 0, "mode": "c", "name": "Web_1", "budget": 1.5, "labels": {"x": 1},
            "items": [{"name": 3}], "free": {"n": "one"}});
        assert_eq!(
            messages(value),
            [
                "spec.budget: must be an integer or a string",
                "spec.free.n: must be an integer, not a string",
                "spec.items[0].name: must be a string, not an integer",
                "spec.labels.x: must be a string, not an integer",
                "spec.mode: must be one of \"a\", \"b\"",
                "spec.name: \"Web_1\" should match '^[a-z]([-a-z0-9]*[a-z0-9])?$'",
                "spec.port: must be >= 1",
            ]
        );
    }

    #[test]
    fn unknown_and_missing_fields_are_refused() {
        assert_eq!(
            messages(json!({"prot": 80, "items": [{"nmae": "x"}]})),
            [
                "spec.port: required",
                "spec.items[0].nmae: unknown field",
                "spec.prot: unknown field"
            ]
        );
    }
}
