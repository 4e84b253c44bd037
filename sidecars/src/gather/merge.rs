//! The merges of JSON answers: `concat`, `topK` and `sum`. Pure: answers in, one merged
//! document and the answers that could not take part out, so that every rule is tested
//! here without a leaf.
//!
//! An answer that does not fit its merge (not JSON, no array where the path says, an item
//! without its rank, a string where a number is summed) is left out whole, with the
//! reason: half an answer would be a wrong answer that looks right.

use rigging_crds::sidecar::gather::{
    COVERAGE_FIELD, Concat, Merge as MergeConfig, Order, Sum, TopK,
};
use serde_json::{Map, Value};

pub use crate::json::Path;
use crate::json::{self, SumError};

/// `path` as a message names it: its dotted text, or "the answer" for the whole of it.
fn named(path: &Path) -> String {
    path.named("the answer")
}

/// Why one answer was left out of the merge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    /// The body is not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// No array at the merge's path.
    #[error("no array at {0}")]
    NotArray(String),
    /// An item of the array has no number at `by`.
    #[error("item {index} of {path} has no number at {by}")]
    NoRank {
        /// The array's path.
        path: String,
        /// The item's index in it.
        index: usize,
        /// The rank's path inside the item.
        by: String,
    },
    /// No object at the sum's path.
    #[error("no object at {0}")]
    NotObject(String),
    /// The object at the sum's path cannot be added to the others.
    #[error(transparent)]
    Sum(#[from] SumError),
}

/// A merge of JSON answers, compiled from the config.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonMerge {
    /// The arrays at `path`, one after another in shard order.
    Concat {
        /// Where the array is, in every answer and in the merged one.
        path: Path,
    },
    /// The `k` items of the arrays at `path` ranked by the number at `by`.
    TopK {
        /// Where the array is, in every answer and in the merged one.
        path: Path,
        /// Where the rank is, inside each item.
        by: Path,
        /// Items kept.
        k: usize,
        /// Highest first, or lowest first.
        order: Order,
    },
    /// The objects at `path` added key by key.
    Sum {
        /// Where the object is, in every answer and in the merged one.
        path: Path,
    },
}

impl JsonMerge {
    /// The JSON merge of a merge config; `None` for `first` and `merger`, which the root
    /// does not merge itself.
    pub fn new(merge: &MergeConfig) -> Option<Self> {
        if let Some(Concat { path }) = &merge.concat {
            return Some(JsonMerge::Concat {
                path: Path::parse(path),
            });
        }
        if let Some(TopK { path, by, k, order }) = &merge.top_k {
            return Some(JsonMerge::TopK {
                path: Path::parse(path),
                by: Path::parse(by),
                k: *k as usize,
                order: *order,
            });
        }
        merge.sum.as_ref().map(|Sum { path }| JsonMerge::Sum {
            path: Path::parse(path),
        })
    }

    /// The merge's name, as the config file spells it.
    pub fn name(&self) -> &'static str {
        match self {
            JsonMerge::Concat { .. } => "concat",
            JsonMerge::TopK { .. } => "topK",
            JsonMerge::Sum { .. } => "sum",
        }
    }
}

/// The outcome of a JSON merge.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The merged document, without its coverage: always an object.
    pub doc: Map<String, Value>,
    /// The answers left out, by shard, with why.
    pub bad: Vec<(usize, BadAnswer)>,
}

/// Merges `answers` (shard index and body, in shard order) by `merge`.
pub fn merge(merge: &JsonMerge, answers: &[(usize, &[u8])]) -> Merged {
    let mut bad = Vec::new();
    let mut docs = Vec::with_capacity(answers.len());
    for &(shard, body) in answers {
        match serde_json::from_slice::<Value>(body) {
            Ok(doc) => docs.push((shard, doc)),
            Err(err) => bad.push((shard, BadAnswer::NotJson(err.to_string()))),
        }
    }
    let (merged, mut left_out) = match merge {
        JsonMerge::Concat { path } => {
            let (items, left_out) = arrays(path, docs);
            (
                path.wrap(Value::Array(items.into_iter().collect())),
                left_out,
            )
        }
        JsonMerge::TopK { path, by, k, order } => {
            let (items, left_out) = top_k(path, by, *k, *order, docs);
            (path.wrap(Value::Array(items)), left_out)
        }
        JsonMerge::Sum { path } => {
            let (total, left_out) = sum(path, docs);
            (path.wrap(Value::Object(total)), left_out)
        }
    };
    bad.append(&mut left_out);
    bad.sort_by_key(|(shard, _)| *shard);
    let doc = match merged {
        Value::Object(doc) => doc,
        // Not reached: the contract gives concat and topK a path, which wraps the array
        // in an object, and a sum is an object. Kept whole rather than dropped.
        other => {
            let mut doc = Map::new();
            doc.insert("value".to_owned(), other);
            doc
        }
    };
    Merged { doc, bad }
}

/// The items of the arrays at `path`, in order, and the answers that have none.
fn arrays(path: &Path, docs: Vec<(usize, Value)>) -> (Vec<Value>, Vec<(usize, BadAnswer)>) {
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for (shard, mut doc) in docs {
        match path.take(&mut doc) {
            Some(Value::Array(mut array)) => items.append(&mut array),
            _ => bad.push((shard, BadAnswer::NotArray(named(path)))),
        }
    }
    (items, bad)
}

fn top_k(
    path: &Path,
    by: &Path,
    k: usize,
    order: Order,
    docs: Vec<(usize, Value)>,
) -> (Vec<Value>, Vec<(usize, BadAnswer)>) {
    let mut ranked: Vec<(f64, Value)> = Vec::new();
    let mut bad = Vec::new();
    'answers: for (shard, mut doc) in docs {
        let Some(Value::Array(items)) = path.take(&mut doc) else {
            bad.push((shard, BadAnswer::NotArray(named(path))));
            continue;
        };
        let mut ranks = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match by.get(item).and_then(Value::as_f64) {
                Some(rank) => ranks.push(rank),
                None => {
                    bad.push((
                        shard,
                        BadAnswer::NoRank {
                            path: named(path),
                            index,
                            by: named(by),
                        },
                    ));
                    continue 'answers;
                }
            }
        }
        ranked.extend(ranks.into_iter().zip(items));
    }
    // A stable sort: equal ranks keep shard order, then their order within the answer.
    // (JSON has no NaN; `-0.0` and `0.0` are the same rank.)
    let rank = |a: f64, b: f64| a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal);
    match order {
        Order::Desc => ranked.sort_by(|a, b| rank(b.0, a.0)),
        Order::Asc => ranked.sort_by(|a, b| rank(a.0, b.0)),
    }
    ranked.truncate(k);
    (ranked.into_iter().map(|(_, item)| item).collect(), bad)
}

fn sum(path: &Path, docs: Vec<(usize, Value)>) -> (Map<String, Value>, Vec<(usize, BadAnswer)>) {
    let mut total = Map::new();
    let mut bad = Vec::new();
    let at = path.dotted();
    for (shard, mut doc) in docs {
        let Some(Value::Object(mut object)) = path.take(&mut doc) else {
            bad.push((shard, BadAnswer::NotObject(named(path))));
            continue;
        };
        if path.is_root() {
            // The merged answer's coverage goes there: a leaf's own is not summed.
            object.remove(COVERAGE_FIELD);
        }
        if let Err(err) = json::add_checked(&mut total, object, &at) {
            bad.push((shard, err.into()));
        }
    }
    (total, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn run(merge_: &JsonMerge, answers: &[Value]) -> Merged {
        let bodies: Vec<Vec<u8>> = answers.iter().map(|a| a.to_string().into_bytes()).collect();
        let refs: Vec<(usize, &[u8])> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b.as_slice()))
            .collect();
        merge(merge_, &refs)
    }

    fn concat(path: &str) -> JsonMerge {
        JsonMerge::Concat {
            path: Path::parse(path),
        }
    }

    fn top(path: &str, by: &str, k: usize, order: Order) -> JsonMerge {
        JsonMerge::TopK {
            path: Path::parse(path),
            by: Path::parse(by),
            k,
            order,
        }
    }

    fn summed(path: &str) -> JsonMerge {
        JsonMerge::Sum {
            path: Path::parse(path),
        }
    }

    #[test]
    fn concat_joins_the_arrays_in_shard_order_under_the_same_path() {
        let merged = run(
            &concat("result.items"),
            &[
                json!({"result": {"items": [1, 2]}, "took": 3}),
                json!({"result": {"items": []}}),
                json!({"result": {"items": ["x"]}}),
            ],
        );
        assert_eq!(
            Value::Object(merged.doc),
            json!({"result": {"items": [1, 2, "x"]}})
        );
        assert!(merged.bad.is_empty());
    }

    #[test]
    fn an_answer_without_the_array_or_not_json_is_left_out_with_the_reason() {
        let bodies: [&[u8]; 3] = [br#"{"hits": [1]}"#, br#"{"hits": 5}"#, b"<html>"];
        let answers: Vec<(usize, &[u8])> = bodies.iter().copied().enumerate().collect();
        let merged = merge(&concat("hits"), &answers);
        assert_eq!(Value::Object(merged.doc), json!({"hits": [1]}));
        assert_eq!(merged.bad.len(), 2);
        assert_eq!(merged.bad[0], (1, BadAnswer::NotArray("hits".into())));
        assert!(matches!(merged.bad[1], (2, BadAnswer::NotJson(_))));
    }

    #[test]
    fn top_k_ranks_across_shards_and_breaks_ties_by_shard_order() {
        let merged = run(
            &top("hits", "score", 3, Order::Desc),
            &[
                json!({"hits": [{"id": "a", "score": 5}, {"id": "b", "score": 1}]}),
                json!({"hits": [{"id": "c", "score": 9}, {"id": "d", "score": 5}]}),
            ],
        );
        let ids: Vec<&str> = merged.doc["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["c", "a", "d"]);

        let lowest = run(
            &top("hits", "m.latency", 1, Order::Asc),
            &[
                json!({"hits": [{"m": {"latency": 0.5}}]}),
                json!({"hits": [{"m": {"latency": 0.25}}]}),
            ],
        );
        assert_eq!(lowest.doc["hits"], json!([{"m": {"latency": 0.25}}]));
    }

    #[test]
    fn an_item_without_its_rank_leaves_its_whole_answer_out() {
        let merged = run(
            &top("hits", "score", 10, Order::Desc),
            &[
                json!({"hits": [{"score": 1}]}),
                json!({"hits": [{"score": 7}, {"score": "high"}]}),
            ],
        );
        assert_eq!(merged.doc["hits"], json!([{"score": 1}]));
        assert_eq!(
            merged.bad[0].1.to_string(),
            "item 1 of hits has no number at score"
        );
    }

    #[test]
    fn sum_adds_vote_tallies_key_by_key() {
        let merged = run(
            &summed("votes"),
            &[
                json!({"votes": {"seriesA": 10, "seriesB": 2}}),
                json!({"votes": {"seriesA": 5, "seriesC": 1.5}}),
            ],
        );
        assert_eq!(
            Value::Object(merged.doc),
            json!({"votes": {"seriesA": 15, "seriesB": 2, "seriesC": 1.5}})
        );
    }

    #[test]
    fn sum_recurses_into_objects_and_at_the_root_ignores_a_leafs_coverage() {
        let merged = run(
            &summed(""),
            &[
                json!({"a": {"x": 1}, "n": 1, "coverage": {"answered": 1}}),
                json!({"a": {"x": 2, "y": 3}, "n": 1}),
            ],
        );
        assert_eq!(
            Value::Object(merged.doc),
            json!({"a": {"x": 3, "y": 3}, "n": 2})
        );
    }

    #[test]
    fn a_value_that_cannot_be_summed_leaves_its_whole_answer_out() {
        let merged = run(
            &summed("votes"),
            &[
                json!({"votes": {"a": 1, "b": {"c": 1}}}),
                json!({"votes": {"a": 100, "z": "many"}}),
                json!({"votes": {"a": 100, "b": 4}}),
                json!({"votes": [1]}),
            ],
        );
        assert_eq!(merged.doc["votes"], json!({"a": 1, "b": {"c": 1}}));
        let reasons: Vec<String> = merged.bad.iter().map(|(_, b)| b.to_string()).collect();
        assert_eq!(
            reasons,
            [
                "votes.z is a string, where a number or an object is summed",
                "votes.b is a number in one answer and an object in another",
                "no object at votes",
            ]
        );
    }

    #[test]
    fn sums_stay_exact_past_i64_and_turn_float_only_when_they_must() {
        let merged = run(
            &summed(""),
            &[
                json!({"big": i64::MAX, "f": 1e308}),
                json!({"big": 1, "f": 1}),
            ],
        );
        assert_eq!(merged.doc["big"], json!(i64::MAX as u64 + 1));
        let overflow = run(&summed(""), &[json!({"f": 1e308}), json!({"f": 1e308})]);
        assert!(matches!(
            overflow.bad[0].1,
            BadAnswer::Sum(SumError::Overflow { .. })
        ));
    }

    #[test]
    fn paths_wrap_and_find() {
        let path = Path::parse("a.b");
        let doc = path.wrap(json!([1]));
        assert_eq!(doc, json!({"a": {"b": [1]}}));
        assert_eq!(path.get(&doc), Some(&json!([1])));
        assert_eq!(Path::parse("").wrap(json!(1)), json!(1));
        assert_eq!(named(&Path::parse("")), "the answer");
    }

    fn shard_items() -> impl Strategy<Value = Vec<Vec<(i32, u8)>>> {
        prop::collection::vec(prop::collection::vec((-5i32..5, any::<u8>()), 0..6), 1..5)
    }

    proptest! {
        /// topK is the concatenation sorted (stably) by rank, cut at k.
        #[test]
        fn top_k_is_sort_then_take_of_the_concatenation(
            shards in shard_items(),
            k in 1usize..12,
            asc in any::<bool>(),
        ) {
            let order = if asc { Order::Asc } else { Order::Desc };
            let answers: Vec<Value> = shards
                .iter()
                .map(|items| json!({"hits": items.iter().map(|(s, id)| json!({"s": s, "id": id})).collect::<Vec<_>>()}))
                .collect();
            let merged = run(&top("hits", "s", k, order), &answers);
            let mut all = run(&concat("hits"), &answers).doc["hits"].as_array().unwrap().clone();
            all.sort_by_key(|item| {
                let s = item["s"].as_i64().unwrap();
                if asc { s } else { -s }
            });
            all.truncate(k);
            prop_assert_eq!(merged.doc["hits"].as_array().unwrap(), &all);
            prop_assert!(merged.bad.is_empty());
        }

        /// A sum of integer tallies is each key's total, whatever the shard order.
        #[test]
        fn sum_is_the_total_per_key_in_any_order(
            tallies in prop::collection::vec(
                prop::collection::btree_map("[a-d]", -1000i64..1000, 0..4), 1..6),
        ) {
            let answers: Vec<Value> = tallies.iter().map(|t| json!({"votes": t})).collect();
            let mut reversed = answers.clone();
            reversed.reverse();
            let merged = run(&summed("votes"), &answers);
            let mut expected = std::collections::BTreeMap::<String, i64>::new();
            for tally in &tallies {
                for (key, n) in tally {
                    *expected.entry(key.clone()).or_default() += n;
                }
            }
            prop_assert_eq!(&merged.doc["votes"], &json!(expected));
            prop_assert_eq!(&run(&summed("votes"), &reversed).doc["votes"], &json!(expected));
        }
    }
}
