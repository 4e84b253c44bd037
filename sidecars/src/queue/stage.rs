//! The built-in stages: where each message goes, decided from its JSON body with CEL. Pure:
//! no broker, no IO, so every routing rule is tested here without a server.
//!
//! In every expression `message` is the parsed JSON body, `topic` the topic it came from
//! and `id` its message id.

use cel::{Context, Program, Value};
use rigging_crds::sidecar::queue::{QueueArgs, QueueArgsError, Stage};
use rigging_crds::sidecar::shard::hash::HashKind;
use rigging_crds::sidecar::shard::ring::{Ring, ServerSpec};

/// Why a stage could not be built from its flags.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The flags break a rule of the contract.
    #[error(transparent)]
    Args(#[from] QueueArgsError),
    /// An expression does not parse.
    #[error("{flag} {expression:?} is not valid CEL: {reason}")]
    Cel {
        /// The flag that holds it.
        flag: String,
        /// The expression.
        expression: String,
        /// The parser's message.
        reason: String,
    },
}

/// What a stage does with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Publish it to these topics, in this order (the index is part of each output's id).
    To(Vec<String>),
    /// Drop it on purpose: a filter said no, or a split had no rule and no `otherwise`.
    Filtered,
    /// It can never be routed (not JSON, or an expression fails on it): dead-letter it now,
    /// since redelivering it would fail the same way.
    Poison(String),
}

/// A compiled built-in stage.
pub struct Router {
    stage: Stage,
    /// CEL's standard functions, registered once: each message gets a child scope of this
    /// with its own variables (a fresh `Context::default()` registers some thirty functions,
    /// which cost more than the predicate itself).
    functions: Context<'static>,
    outputs: Vec<String>,
    filter: Option<Program>,
    rules: Vec<(String, Program)>,
    otherwise: Option<String>,
    key: Option<Program>,
    ring: Option<Ring>,
}

fn compile(flag: &str, expression: &str) -> Result<Program, StageError> {
    Program::compile(expression).map_err(|e| StageError::Cel {
        flag: flag.to_owned(),
        expression: expression.to_owned(),
        reason: e.to_string(),
    })
}

impl Router {
    /// Builds the stage `args` name, compiling its expressions.
    pub fn new(stage: Stage, args: &QueueArgs) -> Result<Router, StageError> {
        let filter = args
            .filter
            .as_deref()
            .map(|e| compile("--filter", e))
            .transpose()?;
        let rules = args
            .routes()?
            .into_iter()
            .map(|(topic, e)| Ok((topic.to_owned(), compile(&format!("--when {topic}="), e)?)))
            .collect::<Result<Vec<_>, StageError>>()?;
        let key = args
            .key
            .as_deref()
            .map(|e| compile("--key", e))
            .transpose()?;
        let ring = (stage == Stage::Shard).then(|| {
            let servers: Vec<ServerSpec> = args
                .outputs
                .iter()
                .map(|topic| ServerSpec {
                    host: topic.clone(),
                    port: 0,
                    weight: 1,
                    name: Some(topic.clone()),
                })
                .collect();
            // MD5 keys on the ketama ring (libmemcached's classic): short, similar keys such
            // as account ids spread evenly, which twemproxy's default FNV does not do.
            Ring::new(&servers, &[], HashKind::Md5, None)
        });
        Ok(Router {
            stage,
            functions: Context::default(),
            outputs: args.outputs.clone(),
            filter,
            rules,
            otherwise: args.otherwise.clone(),
            key,
            ring,
        })
    }

    /// Where a message with this body goes.
    pub fn route(&self, topic: &str, id: &str, body: &[u8]) -> Route {
        if self.stage == Stage::Copy {
            // A copy never looks inside: any body, JSON or not, is passed on.
            return Route::To(self.outputs.clone());
        }
        let message: serde_json::Value = match serde_json::from_slice(body) {
            Ok(value) => value,
            Err(e) => return Route::Poison(format!("the body is not JSON: {e}")),
        };
        let mut context = self.functions.new_inner_scope();
        context.add_variable_from_value("message", to_cel(message));
        context.add_variable_from_value("topic", topic.to_owned());
        context.add_variable_from_value("id", id.to_owned());
        match self.stage {
            Stage::Copy => unreachable!("answered above"),
            Stage::Filter => {
                let filter = self.filter.as_ref().expect("checked: filter has --filter");
                match predicate("--filter", filter, &context) {
                    Ok(true) => Route::To(self.outputs.clone()),
                    Ok(false) => Route::Filtered,
                    Err(reason) => Route::Poison(reason),
                }
            }
            Stage::Split => {
                for (topic, rule) in &self.rules {
                    match predicate(&format!("--when {topic}="), rule, &context) {
                        Ok(true) => return Route::To(vec![topic.clone()]),
                        Ok(false) => {}
                        Err(reason) => return Route::Poison(reason),
                    }
                }
                match &self.otherwise {
                    Some(topic) => Route::To(vec![topic.clone()]),
                    None => Route::Filtered,
                }
            }
            Stage::Shard => {
                let key = self.key.as_ref().expect("checked: shard has --key");
                let ring = self.ring.as_ref().expect("made for shard");
                let key = match key.execute(&context) {
                    Ok(value) => key_bytes(&value),
                    Err(e) => return Route::Poison(format!("--key: {e}")),
                };
                let Some(key) = key else {
                    return Route::Poison(
                        "--key gave no string or number for this message".to_owned(),
                    );
                };
                let index = ring.server_for(key.as_bytes()).unwrap_or(0);
                Route::To(vec![self.outputs[index].clone()])
            }
        }
    }
}

fn predicate(flag: &str, program: &Program, context: &Context) -> Result<bool, String> {
    match program.execute(context) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("{flag} gave {other:?}, not true or false")),
        Err(e) => Err(format!("{flag}: {e}")),
    }
}

/// A JSON value as CEL sees it. Whole numbers are `int` (as they are in the YAML CEL rules
/// of Kubernetes), so `message.n % 2 == 0` and `message.amount > 10000` read as written;
/// serde's default would make them `uint`, which CEL does not mix with `int` literals.
fn to_cel(value: serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(s.into()),
        Json::Array(items) => Value::List(items.into_iter().map(to_cel).collect::<Vec<_>>().into()),
        Json::Object(fields) => Value::from(
            fields
                .into_iter()
                .map(|(k, v)| (k, to_cel(v)))
                .collect::<std::collections::HashMap<String, Value>>(),
        ),
    }
}

/// The shard key as text: strings as they are, numbers and booleans as JSON writes them.
fn key_bytes(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.to_string()),
        Value::Int(n) => Some(n.to_string()),
        Value::UInt(n) => Some(n.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The id of output `index` of message `input` from stage `stage`: the same on every replay,
/// so the broker's dedup drops a replayed stage's outputs.
pub fn output_id(input: &str, stage: &str, index: usize) -> String {
    format!("{input}/{stage}/{index}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn router(stage: Stage, edit: impl FnOnce(&mut QueueArgs)) -> Router {
        let mut args = QueueArgs {
            subscribe: vec!["in".into()],
            stage: Some(stage),
            ..QueueArgs::new(None)
        };
        edit(&mut args);
        args.check().expect("valid flags");
        Router::new(stage, &args).expect("valid stage")
    }

    fn to(topics: &[&str]) -> Route {
        Route::To(topics.iter().map(|t| t.to_string()).collect())
    }

    #[test]
    fn copy_passes_any_body_to_every_output() {
        let copy = router(Stage::Copy, |a| a.outputs = vec!["a".into(), "b".into()]);
        assert_eq!(copy.route("in", "1", b"not json"), to(&["a", "b"]));
    }

    #[test]
    fn filter_keeps_what_the_predicate_accepts() {
        let filter = router(Stage::Filter, |a| {
            a.outputs = vec!["big".into()];
            a.filter = Some("message.amount >= 100".into());
        });
        assert_eq!(filter.route("in", "1", br#"{"amount": 250}"#), to(&["big"]));
        assert_eq!(
            filter.route("in", "2", br#"{"amount": 5}"#),
            Route::Filtered
        );
    }

    #[test]
    fn split_takes_the_first_rule_that_holds_then_otherwise() {
        let split = router(Stage::Split, |a| {
            a.when = vec![
                "suspicious = message.amount > 10000 || message.country != 'NL'".into(),
                "small = message.amount < 10".into(),
            ];
            a.otherwise = Some("valid".into());
        });
        let route = |body: &str| split.route("tx", "1", body.as_bytes());
        assert_eq!(
            route(r#"{"amount": 20000, "country": "NL"}"#),
            to(&["suspicious"])
        );
        assert_eq!(
            route(r#"{"amount": 5, "country": "DE"}"#),
            to(&["suspicious"])
        );
        assert_eq!(route(r#"{"amount": 5, "country": "NL"}"#), to(&["small"]));
        assert_eq!(route(r#"{"amount": 50, "country": "NL"}"#), to(&["valid"]));
    }

    #[test]
    fn json_numbers_mix_with_cel_literals() {
        let filter = router(Stage::Filter, |a| {
            a.outputs = vec!["even".into()];
            a.filter = Some("message.n % 2 == 0 && message.items[0].price < 2.5".into());
        });
        let route = |body: &str| filter.route("in", "1", body.as_bytes());
        assert_eq!(
            route(r#"{"n": 4, "items": [{"price": 1.5}]}"#),
            to(&["even"])
        );
        assert_eq!(
            route(r#"{"n": 3, "items": [{"price": 1.5}]}"#),
            Route::Filtered
        );
        assert_eq!(
            route(r#"{"n": -2, "items": [{"price": 9}]}"#),
            Route::Filtered
        );
    }

    #[test]
    fn split_without_otherwise_filters_what_no_rule_takes() {
        let split = router(Stage::Split, |a| {
            a.when = vec!["big = message.n > 1".into()]
        });
        assert_eq!(split.route("in", "1", br#"{"n": 0}"#), Route::Filtered);
    }

    #[test]
    fn shard_sends_one_key_always_to_one_topic_and_spreads_keys() {
        let shard = router(Stage::Shard, |a| {
            a.outputs = vec!["s0".into(), "s1".into(), "s2".into()];
            a.key = Some("message.account".into());
        });
        let mut tally = BTreeMap::<String, usize>::new();
        for n in 0..3000 {
            let body = format!(r#"{{"account": "acct-{}"}}"#, n % 300);
            let Route::To(topics) = shard.route("in", "x", body.as_bytes()) else {
                panic!("not routed");
            };
            let again = shard.route("in", "y", body.as_bytes());
            assert_eq!(again, Route::To(topics.clone()), "same key, same topic");
            *tally.entry(topics[0].clone()).or_default() += 1;
        }
        assert_eq!(tally.len(), 3, "{tally:?}");
        assert!(tally.values().all(|&n| n > 500), "{tally:?}");
    }

    #[test]
    fn a_message_no_expression_can_read_is_poison_with_the_reason() {
        let filter = router(Stage::Filter, |a| {
            a.outputs = vec!["out".into()];
            a.filter = Some("message.amount > 1".into());
        });
        let Route::Poison(reason) = filter.route("in", "1", b"{oops") else {
            panic!("not poison");
        };
        assert!(reason.contains("not JSON"), "{reason}");
        let Route::Poison(reason) = filter.route("in", "1", br#"{"amount": "many"}"#) else {
            panic!("not poison");
        };
        assert!(reason.starts_with("--filter"), "{reason}");
        let Route::Poison(reason) = filter.route("in", "1", br#"{}"#) else {
            panic!("not poison");
        };
        assert!(reason.starts_with("--filter"), "{reason}");
    }

    #[test]
    fn a_filter_that_is_not_a_predicate_is_poison() {
        let filter = router(Stage::Filter, |a| {
            a.outputs = vec!["out".into()];
            a.filter = Some("message.amount".into());
        });
        let Route::Poison(reason) = filter.route("in", "1", br#"{"amount": 3}"#) else {
            panic!("not poison");
        };
        assert!(reason.contains("not true or false"), "{reason}");
    }

    #[test]
    fn bad_cel_is_refused_naming_the_flag() {
        let args = QueueArgs {
            subscribe: vec!["in".into()],
            stage: Some(Stage::Filter),
            outputs: vec!["out".into()],
            filter: Some("message.amount >".into()),
            ..QueueArgs::new(None)
        };
        let Err(err) = Router::new(Stage::Filter, &args) else {
            panic!("bad CEL compiled");
        };
        let err = err.to_string();
        assert!(
            err.starts_with("--filter \"message.amount >\" is not valid CEL"),
            "{err}"
        );
    }

    #[test]
    fn output_ids_are_the_same_on_a_replay_and_differ_by_stage_and_index() {
        assert_eq!(output_id("m1", "copy", 0), output_id("m1", "copy", 0));
        assert_ne!(output_id("m1", "copy", 0), output_id("m1", "copy", 1));
        assert_ne!(output_id("m1", "copy", 0), output_id("m1", "keep", 0));
    }
}
