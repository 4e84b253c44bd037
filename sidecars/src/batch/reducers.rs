//! The built-in reducers, pure: one output in at a time, the running value kept, the
//! result out at the end. No IO, so every rule is tested here without a broker.
//!
//! An output that does not fit its reducer (not JSON, nothing countable at the path, a
//! string where a number is summed) is left out whole with the reason, and counted: a
//! reducer that guessed would give a result that looks right and is not.
//!
//! Memory: a count keeps one entry per distinct value, a sum the shape of the total, a
//! histogram its buckets; concat keeps nothing (each output becomes one line at once).

use std::collections::BTreeMap;

use rigging_crds::sidecar::batch::Reducer;
use serde_json::{Map, Value};

use crate::json::{self, Path, SumError};

/// Why one output was left out of the result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeftOut {
    /// The output is not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// Nothing at the path (some step is not an object with the key).
    #[error("no value at {0}")]
    Missing(String),
    /// A value a count does not count: null, an array, an object.
    #[error("{at} is {found}: a count counts strings, numbers and booleans")]
    NotCountable {
        /// The path.
        at: String,
        /// What is there.
        found: &'static str,
    },
    /// A histogram's value that is not a number.
    #[error("{at} is {found}, not a number")]
    NotNumber {
        /// The path.
        at: String,
        /// What is there.
        found: &'static str,
    },
    /// No object at a sum's path.
    #[error("no object at {0}")]
    NotObject(String),
    /// The object cannot be added to the running sum.
    #[error(transparent)]
    Sum(#[from] SumError),
    /// The histogram's sum would leave the numbers JSON can hold.
    #[error("the histogram's sum would not be a finite number")]
    Overflow,
}

/// A reducer that keeps a running value: every reducer but concat.
#[derive(Debug, Clone, PartialEq)]
pub enum Fold {
    /// Outputs per value at `path`.
    Count {
        /// Where the value is.
        path: Path,
        /// Per value's text, how many outputs have it.
        counts: BTreeMap<String, u64>,
    },
    /// The objects at `path`, added.
    Sum {
        /// Where the object is.
        path: Path,
        /// The total so far.
        total: Map<String, Value>,
    },
    /// The numbers at `path`, bucketed.
    Histogram {
        /// Where the number is.
        path: Path,
        /// The buckets' upper bounds, ascending (the contract checks them).
        bounds: Vec<f64>,
        /// Per bucket (one more than the bounds: `+Inf`), how many numbers fell in it.
        counts: Vec<u64>,
        /// Numbers bucketed.
        count: u64,
        /// Their sum.
        sum: f64,
    },
}

impl Fold {
    /// The running value of `reducer`; `None` for concat, which keeps none.
    pub fn new(reducer: Reducer, path: &str, bounds: &[f64]) -> Option<Self> {
        let path = Path::parse(path);
        match reducer {
            Reducer::Count => Some(Fold::Count {
                path,
                counts: BTreeMap::new(),
            }),
            Reducer::Sum => Some(Fold::Sum {
                path,
                total: Map::new(),
            }),
            Reducer::Histogram => Some(Fold::Histogram {
                path,
                bounds: bounds.to_vec(),
                counts: vec![0; bounds.len() + 1],
                count: 0,
                sum: 0.0,
            }),
            Reducer::Concat | Reducer::Container => None,
        }
    }

    /// Adds one output, or leaves it out (and the running value as it was) with the reason.
    pub fn add(&mut self, output: &[u8]) -> Result<(), LeftOut> {
        let mut doc: Value =
            serde_json::from_slice(output).map_err(|e| LeftOut::NotJson(e.to_string()))?;
        match self {
            Fold::Count { path, counts } => {
                let key = match path.get(&doc) {
                    None => return Err(LeftOut::Missing(named(path))),
                    Some(Value::String(s)) => s.clone(),
                    // A number under the text serde_json prints for it (`12`, `1.5`, `1e20`).
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                    Some(other) => {
                        return Err(LeftOut::NotCountable {
                            at: named(path),
                            found: json::kind(other),
                        });
                    }
                };
                *counts.entry(key).or_default() += 1;
                Ok(())
            }
            Fold::Sum { path, total } => {
                let Some(Value::Object(object)) = path.take(&mut doc) else {
                    return Err(LeftOut::NotObject(named(path)));
                };
                json::add_checked(total, object, &path.dotted())?;
                Ok(())
            }
            Fold::Histogram {
                path,
                bounds,
                counts,
                count,
                sum,
            } => {
                let value = match path.get(&doc) {
                    None => return Err(LeftOut::Missing(named(path))),
                    Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                    Some(other) => {
                        return Err(LeftOut::NotNumber {
                            at: named(path),
                            found: json::kind(other),
                        });
                    }
                };
                let new_sum = *sum + value;
                if !new_sum.is_finite() {
                    return Err(LeftOut::Overflow);
                }
                // Not cumulative: the first bucket whose bound is at least the value.
                let bucket = bounds.partition_point(|b| *b < value);
                counts[bucket] += 1;
                *count += 1;
                *sum = new_sum;
                Ok(())
            }
        }
    }

    /// The result: for a count `{value: count}` (keys sorted), for a sum the total, for a
    /// histogram `{"buckets": [{"le": B, "count": n}, …, {"le": "+Inf", "count": n}],
    /// "count": N, "sum": S}`.
    pub fn result(self) -> Value {
        match self {
            Fold::Count { counts, .. } => Value::Object(
                counts
                    .into_iter()
                    .map(|(value, n)| (value, Value::from(n)))
                    .collect(),
            ),
            Fold::Sum { total, .. } => Value::Object(total),
            Fold::Histogram {
                bounds,
                counts,
                count,
                sum,
                ..
            } => {
                let les = bounds
                    .iter()
                    .map(|b| Value::from(*b))
                    .chain(std::iter::once(Value::from("+Inf")));
                let buckets: Vec<Value> = les
                    .zip(counts)
                    .map(|(le, n)| serde_json::json!({"le": le, "count": n}))
                    .collect();
                serde_json::json!({"buckets": buckets, "count": count, "sum": sum})
            }
        }
    }
}

/// `path` as a message names it: its dotted text, or "the output" for the whole of it.
fn named(path: &Path) -> String {
    path.named("the output")
}

/// One line of a concat's result, newline included: `{"key": K, "output": O}`, where O is
/// the output parsed as JSON, or the output as a JSON string when it is not JSON (bytes
/// that are not UTF-8 become U+FFFD). Compact whatever the output's layout, so that a
/// pretty-printed output still takes one line.
pub fn concat_line(key: &str, output: &[u8]) -> Vec<u8> {
    let parsed = serde_json::from_slice::<Value>(output)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(output).into_owned()));
    let mut line = Vec::with_capacity(output.len() + key.len() + 24);
    line.extend_from_slice(b"{\"key\":");
    // Writing a string or a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut line, key);
    line.extend_from_slice(b",\"output\":");
    let _ = serde_json::to_writer(&mut line, &parsed);
    line.extend_from_slice(b"}\n");
    line
}

/// The count of outputs read, reduced and left out, with the first reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Outputs read.
    pub outputs: u64,
    /// Outputs that are in the result.
    pub reduced: u64,
    /// Outputs left out.
    pub left_out: u64,
    /// The first [`FIRST_LEFT_OUT`] outputs left out: key and reason.
    pub first_left_out: Vec<(String, String)>,
}

/// How many left-out outputs the summary names.
pub const FIRST_LEFT_OUT: usize = 10;

impl Tally {
    /// Counts the output `key` as `outcome` says.
    pub fn record(&mut self, key: &str, outcome: Result<(), LeftOut>) {
        self.outputs += 1;
        match outcome {
            Ok(()) => self.reduced += 1,
            Err(reason) => {
                self.left_out += 1;
                if self.first_left_out.len() < FIRST_LEFT_OUT {
                    self.first_left_out
                        .push((key.to_owned(), reason.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn fold(reducer: Reducer, path: &str, bounds: &[f64], outputs: &[&str]) -> (Value, Tally) {
        let mut fold = Fold::new(reducer, path, bounds).expect("not concat");
        let mut tally = Tally::default();
        for (i, output) in outputs.iter().enumerate() {
            tally.record(&i.to_string(), fold.add(output.as_bytes()));
        }
        (fold.result(), tally)
    }

    fn reasons(tally: &Tally) -> Vec<&str> {
        tally
            .first_left_out
            .iter()
            .map(|(_, r)| r.as_str())
            .collect()
    }

    #[test]
    fn count_counts_strings_numbers_and_booleans_by_their_text() {
        let (result, tally) = fold(
            Reducer::Count,
            "a",
            &[],
            &[
                r#"{"a":"x"}"#,
                r#"{"a":12}"#,
                r#"{"a":1.0}"#,
                r#"{"a":true}"#,
                r#"{"a":null}"#,
                r#"{"a":[1]}"#,
                r#"{}"#,
                "not json",
                r#"{"a":"12"}"#,
                r#"{"a":1e20}"#,
                r#"{"a":1.5e-7}"#,
                r#"{"a":0.00001}"#,
                r#"{"a":-0}"#,
            ],
        );
        // The reference's own self-test case (scripts/bench/batch-reference/reduce.py),
        // but for `1e+20`: the serde_json of Cargo.lock (1.0.154, which prints floats with
        // zmij) writes a positive exponent with its sign, where ryu wrote `1e20`.
        assert_eq!(
            result,
            json!({"x": 1, "12": 2, "1.0": 1, "true": 1, "1e+20": 1, "1.5e-7": 1,
                   "0.00001": 1, "-0.0": 1})
        );
        assert_eq!((tally.outputs, tally.reduced, tally.left_out), (13, 9, 4));
        let reasons = reasons(&tally);
        assert_eq!(
            reasons[0],
            "a is null: a count counts strings, numbers and booleans"
        );
        assert_eq!(
            reasons[1],
            "a is an array: a count counts strings, numbers and booleans"
        );
        assert_eq!(reasons[2], "no value at a");
        assert!(reasons[3].starts_with("not JSON: "), "{}", reasons[3]);
    }

    #[test]
    fn count_at_the_root_counts_whole_outputs() {
        let (result, tally) = fold(Reducer::Count, "", &[], &[r#""a""#, "3", r#""a""#, "{}"]);
        assert_eq!(result, json!({"a": 2, "3": 1}));
        assert_eq!(
            reasons(&tally),
            ["the output is an object: a count counts strings, numbers and booleans"]
        );
    }

    #[test]
    fn sum_adds_as_the_gather_sum_does_and_leaves_out_whole_outputs() {
        let (result, tally) = fold(
            Reducer::Sum,
            "",
            &[],
            &[
                r#"{"a":1,"b":{"c":2}}"#,
                r#"{"a":2,"b":{"c":0.5,"d":1}}"#,
                r#"{"a":"x"}"#,
                r#"{"a":{"z":1}}"#,
                r#"{"b":3}"#,
                r#"{"e":true}"#,
                "[1]",
                "1",
                r#"{"e":{"f":null}}"#,
                r#"{"n":{}}"#,
            ],
        );
        assert_eq!(result, json!({"a": 3, "b": {"c": 2.5, "d": 1}, "n": {}}));
        assert_eq!(
            reasons(&tally),
            [
                "a is a string, where a number or an object is summed",
                "a is a number in one answer and an object in another",
                "b is a number in one answer and an object in another",
                "e is a boolean, where a number or an object is summed",
                "no object at the output",
                "no object at the output",
                "e.f is null, where a number or an object is summed",
            ]
        );
        let (at_path, _) = fold(
            Reducer::Sum,
            "m",
            &[],
            &[r#"{"m":{"a":1}}"#, r#"{"m":2}"#, r#"{"m":{"a":2}}"#],
        );
        assert_eq!(
            at_path,
            json!({"a": 3}),
            "the object at the path, unwrapped"
        );
        let (big, _) = fold(
            Reducer::Sum,
            "",
            &[],
            &[
                r#"{"a":-9223372036854775808}"#,
                r#"{"a":18446744073709551615}"#,
            ],
        );
        assert_eq!(big, json!({"a": i64::MAX}));
    }

    #[test]
    fn a_sum_of_nothing_is_an_empty_object() {
        assert_eq!(fold(Reducer::Sum, "", &[], &[]).0, json!({}));
        assert_eq!(fold(Reducer::Count, "a", &[], &[]).0, json!({}));
    }

    #[test]
    fn histogram_buckets_are_not_cumulative_and_the_last_is_inf() {
        let (result, tally) = fold(
            Reducer::Histogram,
            "v",
            &[1.0, 2.0],
            &[
                r#"{"v":1}"#,
                r#"{"v":2}"#,
                r#"{"v":2.5}"#,
                r#"{"v":100}"#,
                r#"{"v":true}"#,
                r#"{"v":"1"}"#,
                r#"{"w":1}"#,
            ],
        );
        assert_eq!(
            result,
            json!({"buckets": [{"le": 1.0, "count": 1}, {"le": 2.0, "count": 1},
                               {"le": "+Inf", "count": 2}], "count": 4, "sum": 105.5})
        );
        assert_eq!(
            reasons(&tally),
            [
                "v is a boolean, not a number",
                "v is a string, not a number",
                "no value at v"
            ]
        );
        let (empty, _) = fold(Reducer::Histogram, "v", &[0.5], &[]);
        assert_eq!(
            empty,
            json!({"buckets": [{"le": 0.5, "count": 0}, {"le": "+Inf", "count": 0}],
                   "count": 0, "sum": 0.0})
        );
        let (_, overflow) = fold(
            Reducer::Histogram,
            "v",
            &[0.5],
            &[r#"{"v":1e308}"#, r#"{"v":1e308}"#],
        );
        assert_eq!(overflow.left_out, 1);
    }

    #[test]
    fn concat_keeps_json_as_json_and_anything_else_as_a_string() {
        let line = |key: &str, output: &[u8]| {
            let line = concat_line(key, output);
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            assert!(line.ends_with(b"\n"));
            serde_json::from_slice::<Value>(&line).unwrap()
        };
        assert_eq!(
            line("a", b"{\n  \"x\": 1\n}\n"),
            json!({"key": "a", "output": {"x": 1}})
        );
        assert_eq!(line("b", b"oops"), json!({"key": "b", "output": "oops"}));
        assert_eq!(line("c", b"NaN"), json!({"key": "c", "output": "NaN"}));
        assert_eq!(
            line("d", b"\xff\"x"),
            json!({"key": "d", "output": "\u{fffd}\"x"})
        );
        assert_eq!(line("e", b""), json!({"key": "e", "output": ""}));
    }

    #[test]
    fn the_tally_names_only_the_first_ten_left_out() {
        let outputs = vec!["nope"; 25];
        let (_, tally) = fold(Reducer::Sum, "", &[], &outputs);
        assert_eq!((tally.outputs, tally.left_out), (25, 25));
        assert_eq!(tally.first_left_out.len(), FIRST_LEFT_OUT);
        assert_eq!(tally.first_left_out[9].0, "9");
    }

    proptest! {
        /// Every number lands in exactly one bucket: the first whose bound it does not
        /// exceed, and the buckets add up to the count.
        #[test]
        fn each_number_falls_in_exactly_one_bucket(
            mut bounds in prop::collection::btree_set(-100i32..100, 1..6),
            values in prop::collection::vec(-150i32..150, 0..50),
        ) {
            let bounds: Vec<f64> = std::mem::take(&mut bounds).into_iter().map(f64::from).collect();
            let outputs: Vec<String> = values.iter().map(|v| format!("{{\"v\":{v}}}")).collect();
            let refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
            let (result, tally) = fold(Reducer::Histogram, "v", &bounds, &refs);
            prop_assert_eq!(tally.reduced, values.len() as u64);
            let counts: Vec<u64> = result["buckets"].as_array().unwrap().iter()
                .map(|b| b["count"].as_u64().unwrap()).collect();
            prop_assert_eq!(counts.iter().sum::<u64>(), values.len() as u64);
            for (i, count) in counts.iter().enumerate() {
                let low = if i == 0 { f64::NEG_INFINITY } else { bounds[i - 1] };
                let high = bounds.get(i).copied().unwrap_or(f64::INFINITY);
                let expected = values.iter().filter(|v| low < f64::from(**v) && f64::from(**v) <= high).count();
                prop_assert_eq!(*count, expected as u64);
            }
            let sum: i64 = values.iter().map(|v| i64::from(*v)).sum();
            prop_assert_eq!(result["sum"].as_f64().unwrap(), sum as f64);
        }

        /// A count is the number of outputs per value, whatever their order.
        #[test]
        fn count_is_per_value_in_any_order(values in prop::collection::vec("[a-c]|[0-2]", 0..40)) {
            let outputs: Vec<String> = values.iter().map(|v| match v.parse::<u8>() {
                Ok(n) => format!("{{\"v\":{n}}}"),
                Err(_) => format!("{{\"v\":\"{v}\"}}"),
            }).collect();
            let mut reversed = outputs.clone();
            reversed.reverse();
            let forward: Vec<&str> = outputs.iter().map(String::as_str).collect();
            let backward: Vec<&str> = reversed.iter().map(String::as_str).collect();
            let (result, _) = fold(Reducer::Count, "v", &[], &forward);
            let (again, _) = fold(Reducer::Count, "v", &[], &backward);
            let mut expected = BTreeMap::<String, u64>::new();
            for v in &values {
                *expected.entry(v.clone()).or_default() += 1;
            }
            prop_assert_eq!(&result, &json!(expected));
            prop_assert_eq!(&again, &json!(expected));
        }

        /// A concat line always parses back to its key and an output equal to the input's
        /// JSON, or to its text.
        #[test]
        fn concat_lines_are_one_json_line_each(key in "[a-z0-9=_-]{1,8}", output in ".{0,40}") {
            let line = concat_line(&key, output.as_bytes());
            prop_assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            let parsed: Value = serde_json::from_slice(&line).unwrap();
            prop_assert_eq!(&parsed["key"], &json!(key));
            let expected = serde_json::from_str::<Value>(&output).unwrap_or(json!(output));
            prop_assert_eq!(&parsed["output"], &expected);
        }
    }
}
