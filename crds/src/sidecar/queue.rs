//! `rigging-sidecar queue`: the pub/sub ambassador's command line.
//!
//! One sidecar plays three parts, by its flags:
//! - **publisher**: the app posts to `POST /publish/{topic}` on `--listen`;
//! - **subscriber**: with `--subscribe` and `--deliver-to`, each message of the topics is
//!   posted to the app, and a 2xx answer acknowledges it;
//! - **built-in stage**: with `--subscribe` and `--stage`, the sidecar routes each message
//!   itself (copy, filter, split, shard) and no app is involved. A merge is a copy from
//!   several topics to one.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{SidecarArgs, duration, ports};

/// The NATS server when none is given.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// The stream that holds the topics when `--stream` is not given.
pub const DEFAULT_STREAM: &str = "rigging";

/// The suffix of a topic's dead-letter topic: `orders` → `orders.dead-letter`.
pub const DEAD_LETTER_SUFFIX: &str = ".dead-letter";

/// Longest topic name. A topic is a NATS subject token under the stream's prefix, a label
/// value where the operator names things after it, and part of a consumer name.
pub const MAX_TOPIC: usize = 63;

/// What a built-in stage does with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Every message to every `--output` topic (several `--subscribe` topics: a merge).
    Copy,
    /// Messages for which `--filter` is true to every `--output` topic; the rest are
    /// dropped and counted as filtered.
    Filter,
    /// Each message to the topic of the first `--when` predicate that holds, else to
    /// `--otherwise` (dropped and counted as filtered when there is none).
    Split,
    /// Each message to one of the `--output` topics, by the consistent hash of `--key`.
    Shard,
}

/// The flags of `rigging-sidecar queue`.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct QueueArgs {
    /// The NATS server, `nats://HOST:PORT` ([`DEFAULT_NATS`] when neither the flag nor
    /// `RIGGING_NATS_URL` is given); `nats://USER:PASSWORD@HOST:PORT` for password
    /// authentication (set `RIGGING_NATS_URL` from a Secret rather than the flag, so the
    /// password stays out of the pod spec). Several, comma-separated, for a cluster.
    #[arg(long, env = "RIGGING_NATS_URL")]
    pub nats: Option<String>,
    /// The JetStream stream that holds the topics: topic `T` is subject `STREAM.T`. Created
    /// on start when missing.
    #[arg(long, default_value = DEFAULT_STREAM, value_name = "NAME")]
    pub stream: String,
    /// Replicas of the stream when this sidecar creates it (1, or 3 on a 3-node cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub stream_replicas: u32,
    /// How long the stream keeps a message when this sidecar creates it.
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub retention: Duration,
    /// Within this window the broker drops a second publish of the same message id, when
    /// this sidecar creates the stream. A replay later than that is published again.
    #[arg(long, default_value = "2m", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub dedup_window: Duration,
    /// Where the app publishes: `POST /publish/{topic}`. Loopback by default: only the
    /// pod's own containers reach it.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], ports::QUEUE)))]
    pub listen: SocketAddr,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::QUEUE_ADMIN)))]
    pub admin: SocketAddr,
    /// A topic to consume, repeatable.
    #[arg(long = "subscribe", value_name = "TOPIC")]
    #[serde(rename = "subscribe")]
    pub subscribe: Vec<String>,
    /// The name of this consumer (a pipeline stage): replicas with the same name share
    /// the messages, consumers with different names each get all of them. It also seeds
    /// the ids of the messages this stage publishes.
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
    /// The app's endpoint that receives each message as a POST: `http://127.0.0.1:PORT/PATH`.
    #[arg(long, value_name = "URL", conflicts_with = "stage")]
    pub deliver_to: Option<String>,
    /// Route messages with a built-in stage instead of an app.
    #[arg(long, value_enum)]
    pub stage: Option<Stage>,
    /// Where this stage's messages go, repeatable: copy, filter and shard targets, and the
    /// topic of an app's answers.
    #[arg(long = "output", value_name = "TOPIC")]
    #[serde(rename = "output")]
    pub outputs: Vec<String>,
    /// `--stage filter`: a CEL predicate over the message (`message` is its JSON body).
    #[arg(long, value_name = "CEL")]
    pub filter: Option<String>,
    /// `--stage split`: `TOPIC=CEL`, repeatable, tried in order.
    #[arg(long = "when", value_name = "TOPIC=CEL")]
    #[serde(rename = "when")]
    pub when: Vec<String>,
    /// `--stage split`: the topic of messages no `--when` takes.
    #[arg(long, value_name = "TOPIC")]
    pub otherwise: Option<String>,
    /// `--stage shard`: a CEL expression giving the shard key (`message.account`).
    #[arg(long, value_name = "CEL")]
    pub key: Option<String>,
    /// Messages delivered and not yet answered, at most, in this pod.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_in_flight: u32,
    /// Deliveries of a message that fail before it goes to its dead-letter topic.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_deliveries: u32,
    /// How long the app has to answer a delivery; no answer in time is a failure.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub delivery_timeout: Duration,
    /// The wait before the first redelivery of a failed message; it doubles with each
    /// failure, up to `--max-backoff`.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub backoff: Duration,
    /// The longest wait between redeliveries.
    #[arg(long, default_value = "1m", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    /// On SIGTERM: how long messages in flight have to finish after pulling stops.
    #[arg(long, default_value = "20s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
}

impl SidecarArgs for QueueArgs {
    const SUBCOMMAND: &'static str = "queue";
}

/// Why a queue sidecar's flags do not make a sidecar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueArgsError {
    /// A topic name that is not a single lowercase token.
    #[error(
        "{flag}: topic {topic:?} is not a valid topic: use 1 to {MAX_TOPIC} characters of a-z, 0-9 and '-', starting and ending with a letter or digit (a dead-letter topic is TOPIC.dead-letter)"
    )]
    Topic {
        /// The flag that named it.
        flag: &'static str,
        /// The name.
        topic: String,
    },
    /// A stream or consumer name NATS would refuse.
    #[error("{flag}: {name:?} is not a valid name: use 1 to 63 characters of a-z, 0-9 and '-'")]
    Name {
        /// The flag.
        flag: &'static str,
        /// The name.
        name: String,
    },
    /// `--subscribe` with nothing to deliver to.
    #[error("--subscribe needs --deliver-to (an app) or --stage (a built-in stage)")]
    NowhereToDeliver,
    /// `--deliver-to` or `--stage` without a topic to consume.
    #[error("--deliver-to and --stage need at least one --subscribe topic")]
    NothingToConsume,
    /// `--deliver-to` that is not a plain `http://` URL.
    #[error("--deliver-to {0:?}: use http://HOST:PORT/PATH")]
    DeliverTo(String),
    /// A flag the stage needs is missing, or one it does not take is given.
    #[error("--stage {stage}: {message}")]
    Stage {
        /// The stage.
        stage: &'static str,
        /// What is wrong.
        message: String,
    },
    /// `--when` without `=`.
    #[error("--when {0:?}: use TOPIC=CEL, e.g. suspicious=message.amount > 10000")]
    When(String),
}

/// Whether `topic` is a topic name: a lowercase token, or such a token followed by
/// [`DEAD_LETTER_SUFFIX`].
pub fn is_topic(topic: &str) -> bool {
    let base = topic.strip_suffix(DEAD_LETTER_SUFFIX).unwrap_or(topic);
    is_token(base, MAX_TOPIC)
}

fn is_token(name: &str, max: usize) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}{DEAD_LETTER_SUFFIX}")
}

impl QueueArgs {
    /// A publish-only sidecar on `nats` (`None`: from `RIGGING_NATS_URL`), every other
    /// setting at its default.
    pub fn new(nats: Option<String>) -> Self {
        Self {
            nats,
            stream: DEFAULT_STREAM.to_owned(),
            stream_replicas: 1,
            retention: Duration::from_secs(24 * 3600),
            dedup_window: Duration::from_secs(120),
            listen: SocketAddr::from(([127, 0, 0, 1], ports::QUEUE)),
            admin: SocketAddr::from(([0, 0, 0, 0], ports::QUEUE_ADMIN)),
            subscribe: Vec::new(),
            consumer: None,
            deliver_to: None,
            stage: None,
            outputs: Vec::new(),
            filter: None,
            when: Vec::new(),
            otherwise: None,
            key: None,
            max_in_flight: 64,
            max_deliveries: 5,
            delivery_timeout: Duration::from_secs(30),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(20),
        }
    }

    /// The consumer name: `--consumer`, else derived from the topics consumed.
    pub fn consumer_name(&self) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(|| format!("{}-reader", self.subscribe.join("-").replace('.', "-")))
    }

    /// `--when` split into (topic, predicate) pairs.
    pub fn routes(&self) -> Result<Vec<(&str, &str)>, QueueArgsError> {
        self.when
            .iter()
            .map(|rule| {
                rule.split_once('=')
                    .map(|(topic, predicate)| (topic.trim(), predicate.trim()))
                    .filter(|(topic, predicate)| !topic.is_empty() && !predicate.is_empty())
                    .ok_or_else(|| QueueArgsError::When(rule.clone()))
            })
            .collect()
    }

    /// The rules the flags must keep, beyond what each flag's parser checks: names NATS
    /// accepts, something to deliver to, and what each stage needs. CEL is compiled by
    /// whoever runs it.
    pub fn check(&self) -> Result<(), QueueArgsError> {
        if !is_token(&self.stream, 63) {
            return Err(QueueArgsError::Name {
                flag: "--stream",
                name: self.stream.clone(),
            });
        }
        if let Some(consumer) = &self.consumer
            && !is_token(consumer, 63)
        {
            return Err(QueueArgsError::Name {
                flag: "--consumer",
                name: consumer.clone(),
            });
        }
        let topic = |flag: &'static str, topic: &str| match is_topic(topic) {
            true => Ok(()),
            false => Err(QueueArgsError::Topic {
                flag,
                topic: topic.to_owned(),
            }),
        };
        for t in &self.subscribe {
            topic("--subscribe", t)?;
        }
        for t in &self.outputs {
            topic("--output", t)?;
        }
        for (t, _) in self.routes()? {
            topic("--when", t)?;
        }
        if let Some(t) = &self.otherwise {
            topic("--otherwise", t)?;
        }
        let consumes = self.deliver_to.is_some() || self.stage.is_some();
        match (self.subscribe.is_empty(), consumes) {
            (false, false) => return Err(QueueArgsError::NowhereToDeliver),
            (true, true) => return Err(QueueArgsError::NothingToConsume),
            _ => {}
        }
        if let Some(url) = &self.deliver_to
            && !url.starts_with("http://")
        {
            return Err(QueueArgsError::DeliverTo(url.clone()));
        }
        if let Some(stage) = self.stage {
            self.check_stage(stage)?;
        }
        Ok(())
    }

    fn check_stage(&self, stage: Stage) -> Result<(), QueueArgsError> {
        // Per stage: its name, the flags it needs, the flags it does not take (each with
        // whether it was given).
        type Flags<'a> = &'a [(&'a str, bool)];
        let (name, needs, takes): (&'static str, Flags, Flags) = match stage {
            Stage::Copy => (
                "copy",
                &[("--output", !self.outputs.is_empty())],
                &[
                    ("--filter", self.filter.is_some()),
                    ("--when", !self.when.is_empty()),
                    ("--otherwise", self.otherwise.is_some()),
                    ("--key", self.key.is_some()),
                ],
            ),
            Stage::Filter => (
                "filter",
                &[
                    ("--output", !self.outputs.is_empty()),
                    ("--filter", self.filter.is_some()),
                ],
                &[
                    ("--when", !self.when.is_empty()),
                    ("--otherwise", self.otherwise.is_some()),
                    ("--key", self.key.is_some()),
                ],
            ),
            Stage::Split => (
                "split",
                &[("--when", !self.when.is_empty())],
                &[
                    ("--output", !self.outputs.is_empty()),
                    ("--filter", self.filter.is_some()),
                    ("--key", self.key.is_some()),
                ],
            ),
            Stage::Shard => (
                "shard",
                &[
                    ("--output", self.outputs.len() >= 2),
                    ("--key", self.key.is_some()),
                ],
                &[
                    ("--filter", self.filter.is_some()),
                    ("--when", !self.when.is_empty()),
                    ("--otherwise", self.otherwise.is_some()),
                ],
            ),
        };
        if let Some((flag, _)) = needs.iter().find(|(_, given)| !given) {
            let what = match (stage, *flag) {
                (Stage::Shard, "--output") => "needs at least two --output topics".to_owned(),
                _ => format!("needs {flag}"),
            };
            return Err(QueueArgsError::Stage {
                stage: name,
                message: what,
            });
        }
        if let Some((flag, _)) = takes.iter().find(|(_, given)| *given) {
            return Err(QueueArgsError::Stage {
                stage: name,
                message: format!("does not take {flag}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(stage: Stage) -> QueueArgs {
        QueueArgs {
            subscribe: vec!["in".into()],
            stage: Some(stage),
            ..QueueArgs::new(None)
        }
    }

    #[test]
    fn topics_are_lowercase_tokens_or_their_dead_letter_topics() {
        assert!(is_topic("orders"));
        assert!(is_topic("orders-2"));
        assert!(is_topic("orders.dead-letter"));
        assert!(!is_topic("Orders"));
        assert!(!is_topic("orders.eu"));
        assert!(!is_topic("orders.>"));
        assert!(!is_topic("-orders"));
        assert!(!is_topic(""));
        assert!(!is_topic(&"a".repeat(MAX_TOPIC + 1)));
        assert_eq!(dead_letter_topic("orders"), "orders.dead-letter");
    }

    #[test]
    fn a_publisher_needs_no_topic_and_a_subscriber_needs_somewhere_to_deliver() {
        assert_eq!(QueueArgs::new(None).check(), Ok(()));
        let no_target = QueueArgs {
            subscribe: vec!["in".into()],
            ..QueueArgs::new(None)
        };
        assert_eq!(no_target.check(), Err(QueueArgsError::NowhereToDeliver));
        let no_topic = QueueArgs {
            deliver_to: Some("http://127.0.0.1:8080/".into()),
            ..QueueArgs::new(None)
        };
        assert_eq!(no_topic.check(), Err(QueueArgsError::NothingToConsume));
    }

    #[test]
    fn each_stage_names_the_flag_it_lacks_or_does_not_take() {
        let err = stage(Stage::Filter).check().unwrap_err().to_string();
        assert_eq!(err, "--stage filter: needs --output");
        let shard = QueueArgs {
            outputs: vec!["a".into()],
            key: Some("message.id".into()),
            ..stage(Stage::Shard)
        };
        assert_eq!(
            shard.check().unwrap_err().to_string(),
            "--stage shard: needs at least two --output topics"
        );
        let copy = QueueArgs {
            outputs: vec!["a".into()],
            filter: Some("true".into()),
            ..stage(Stage::Copy)
        };
        assert_eq!(
            copy.check().unwrap_err().to_string(),
            "--stage copy: does not take --filter"
        );
    }

    #[test]
    fn the_default_consumer_name_is_one_nats_accepts() {
        let args = QueueArgs {
            subscribe: vec!["in".into(), "in.dead-letter".into()],
            ..QueueArgs::new(None)
        };
        assert_eq!(args.consumer_name(), "in-in-dead-letter-reader");
    }

    #[test]
    fn split_rules_are_topic_equals_predicate() {
        let split = QueueArgs {
            when: vec!["big = message.amount > 10".into(), "broken".into()],
            ..stage(Stage::Split)
        };
        assert_eq!(
            split.check(),
            Err(QueueArgsError::When("broken".to_owned()))
        );
        let split = QueueArgs {
            when: vec!["big = message.amount > 10".into()],
            ..stage(Stage::Split)
        };
        assert_eq!(
            split.routes().unwrap(),
            vec![("big", "message.amount > 10")]
        );
        assert_eq!(split.check(), Ok(()));
    }

    #[test]
    fn a_bad_topic_is_named_with_its_flag() {
        let args = QueueArgs {
            outputs: vec!["Valid".into()],
            ..stage(Stage::Copy)
        };
        let err = args.check().unwrap_err().to_string();
        assert!(err.starts_with("--output: topic \"Valid\""), "{err}");
    }
}
