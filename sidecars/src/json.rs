//! JSON documents as the sidecars that combine them read them: a dotted [`Path`] into a
//! document, and the key-by-key sum of objects ([`add_checked`]). One copy, shared by the
//! scatter/gather root's `sum` merge and the batch reducer's `sum`, so that a tally summed
//! by either comes out the same.
//!
//! The sum's rules: numbers add (exactly while both are integers and the sum fits 64 bits,
//! as floats otherwise), objects add key by key, a key only one side has is kept as it is.
//! An addend that breaks a rule anywhere (a string where a number is summed, a number
//! meeting an object, a sum that is not finite) adds nothing at all: half an addend would
//! be a wrong total that looks right.

use serde_json::{Map, Number, Value};

/// A dotted path into a JSON document (`result.items`); empty for the document itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(Vec<String>);

impl Path {
    /// The path `dotted` names (checked by the contract: no empty segment).
    pub fn parse(dotted: &str) -> Self {
        Self(
            dotted
                .split('.')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Whether this is the document itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as a message names it: its dotted text, or `whole` (`the answer`, `the
    /// output`) for the document itself.
    pub fn named(&self, whole: &str) -> String {
        if self.is_root() {
            whole.to_owned()
        } else {
            self.dotted()
        }
    }

    /// The path as it was written (`result.items`; empty for the document itself).
    pub fn dotted(&self) -> String {
        self.0.join(".")
    }

    /// The value at this path of `doc`, if every step is an object with the key.
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(doc, |at, key| at.get(key))
    }

    /// Takes the value at this path out of `doc` (leaving `null`).
    pub fn take(&self, doc: &mut Value) -> Option<Value> {
        let mut at = doc;
        for key in &self.0 {
            at = at.get_mut(key)?;
        }
        Some(at.take())
    }

    /// `value` placed at this path of an empty document: `hits` and `[…]` give
    /// `{"hits": […]}`.
    pub fn wrap(&self, value: Value) -> Value {
        self.0.iter().rev().fold(value, |inner, key| {
            let mut object = Map::new();
            object.insert(key.clone(), inner);
            Value::Object(object)
        })
    }
}

/// Why an object cannot be added to a running sum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SumError {
    /// A value that is neither a number nor an object, where a sum needs one.
    #[error("{at} is {found}, where a number or an object is summed")]
    NotSummable {
        /// Where, as a dotted path from the document's root.
        at: String,
        /// What it is (`a string`).
        found: &'static str,
    },
    /// A number in one addend and an object in another at the same place.
    #[error("{at} is a number in one answer and an object in another")]
    Mismatch {
        /// Where.
        at: String,
    },
    /// The sum leaves the numbers JSON can hold.
    #[error("the sum at {at} is not a finite number")]
    Overflow {
        /// Where.
        at: String,
    },
}

/// Adds `addend` into `total` key by key, or, when any part of it cannot be added, leaves
/// `total` as it was and says why. `at` is where the objects are in their documents
/// (dotted, empty for the root): the error names the place from the document's root.
pub fn add_checked(
    total: &mut Map<String, Value>,
    addend: Map<String, Value>,
    at: &str,
) -> Result<(), SumError> {
    // Checked whole before anything is added: a bad addend adds nothing.
    summable(Some(total), &addend, at)?;
    add(total, addend);
    Ok(())
}

fn child(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

/// Whether `addend` can be added to `total`: numbers where `total` has numbers (or
/// nothing), objects where it has objects (or nothing), and sums that stay finite.
fn summable(
    total: Option<&Map<String, Value>>,
    addend: &Map<String, Value>,
    at: &str,
) -> Result<(), SumError> {
    for (key, value) in addend {
        let here = total.and_then(|t| t.get(key));
        match (value, here) {
            (Value::Number(_), None) => {}
            (Value::Number(n), Some(Value::Number(m))) => {
                if add_numbers(m, n).is_none() {
                    return Err(SumError::Overflow { at: child(at, key) });
                }
            }
            (Value::Object(inner), None) => summable(None, inner, &child(at, key))?,
            (Value::Object(inner), Some(Value::Object(sum))) => {
                summable(Some(sum), inner, &child(at, key))?
            }
            (Value::Number(_) | Value::Object(_), Some(_)) => {
                return Err(SumError::Mismatch { at: child(at, key) });
            }
            (other, _) => {
                return Err(SumError::NotSummable {
                    at: child(at, key),
                    found: kind(other),
                });
            }
        }
    }
    Ok(())
}

/// Adds `addend` into `total`; [`summable`] has said it fits.
fn add(total: &mut Map<String, Value>, addend: Map<String, Value>) {
    for (key, value) in addend {
        match (total.get_mut(&key), value) {
            (None, value) => {
                total.insert(key, value);
            }
            (Some(Value::Number(m)), Value::Number(n)) => {
                if let Some(sum) = add_numbers(m, &n) {
                    *m = sum;
                }
            }
            (Some(Value::Object(sum)), Value::Object(inner)) => add(sum, inner),
            // Ruled out by `summable`.
            _ => {}
        }
    }
}

/// `a + b`: exact while both are integers and the sum fits 64 bits (signed or not), a
/// float otherwise; `None` when the float is not finite.
pub fn add_numbers(a: &Number, b: &Number) -> Option<Number> {
    let integer = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    if let (Some(x), Some(y)) = (integer(a), integer(b)) {
        let s = x + y;
        if let Ok(s) = i64::try_from(s) {
            return Some(s.into());
        }
        if let Ok(s) = u64::try_from(s) {
            return Some(s.into());
        }
        return Number::from_f64(s as f64);
    }
    Number::from_f64(a.as_f64()? + b.as_f64()?)
}

/// What kind of value `value` is, as a message says it (`a string`).
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn paths_wrap_find_and_take() {
        let path = Path::parse("a.b");
        let mut doc = path.wrap(json!([1]));
        assert_eq!(doc, json!({"a": {"b": [1]}}));
        assert_eq!(path.get(&doc), Some(&json!([1])));
        assert_eq!(path.dotted(), "a.b");
        assert_eq!(path.take(&mut doc), Some(json!([1])));
        assert_eq!(doc, json!({"a": {"b": null}}));
        assert_eq!(Path::parse("").wrap(json!(1)), json!(1));
        assert!(Path::parse("").is_root());
        assert_eq!(Path::parse("x.y").get(&json!({"x": 1})), None);
    }

    #[test]
    fn a_bad_addend_leaves_the_total_as_it_was() {
        let mut total = object(json!({"a": 1, "b": {"c": 2}}));
        let before = total.clone();
        let err = add_checked(
            &mut total,
            object(json!({"a": 5, "b": {"c": "x"}})),
            "votes",
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "votes.b.c is a string, where a number or an object is summed"
        );
        assert_eq!(total, before);
        add_checked(&mut total, object(json!({"a": 5, "d": {"e": 1.5}})), "").unwrap();
        assert_eq!(
            Value::Object(total),
            json!({"a": 6, "b": {"c": 2}, "d": {"e": 1.5}})
        );
    }

    #[test]
    fn numbers_add_exactly_within_64_bits_and_as_floats_past_them() {
        let n = |v: Value| match v {
            Value::Number(n) => n,
            _ => unreachable!(),
        };
        assert_eq!(
            add_numbers(&n(json!(i64::MIN)), &n(json!(u64::MAX))),
            Some(n(json!(i64::MAX)))
        );
        assert_eq!(
            add_numbers(&n(json!(u64::MAX)), &n(json!(1))),
            Number::from_f64(18446744073709551616.0)
        );
        assert_eq!(add_numbers(&n(json!(1e308)), &n(json!(1e308))), None);
    }
}
