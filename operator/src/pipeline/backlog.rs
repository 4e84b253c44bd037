//! What a Pipeline's stage pods answer the operator: the queue sidecar's `/metrics`, read
//! for each stage's accounting (`rigging_queue_accounting`, one consistent whole per pod),
//! its backlog (`rigging_queue_lag`, JetStream's count for the stage's consumer) and what
//! it published (`rigging_queue_published_total`).

use std::collections::BTreeMap;

use super::desired::STAGE_LABEL;
use crate::controller::Answers;

/// One stage's counts, summed over the pods that answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageCounts {
    /// Pods that answered.
    pub pods: i32,
    /// Deliveries taken from the broker.
    pub delivered: i64,
    /// Deliveries acknowledged with their outputs published.
    pub out: i64,
    /// Deliveries dropped on purpose.
    pub filtered: i64,
    /// Deliveries moved to a dead-letter topic.
    pub dead_lettered: i64,
    /// Deliveries that failed and come again.
    pub retried: i64,
    /// Deliveries not yet settled.
    pub in_flight: i64,
    /// The consumer's backlog over its topics. Every pod of a stage reports the same
    /// consumer's count, read at its own moment: the largest is kept, never a sum.
    pub lag: i64,
    /// Messages stored, by topic.
    pub published: BTreeMap<String, i64>,
}

impl StageCounts {
    /// `in - (out + filtered + deadLettered + retried + inFlight)`: 0 when every delivery
    /// is accounted for.
    pub fn unaccounted(&self) -> i64 {
        self.delivered
            - (self.out + self.filtered + self.dead_lettered + self.retried + self.in_flight)
    }
}

/// Each stage's counts, by stage name, from the pods' answers. A pod that did not answer,
/// or whose stage label is missing, counts for nothing.
pub fn counts(answers: &Answers) -> BTreeMap<String, StageCounts> {
    let mut stages: BTreeMap<String, StageCounts> = BTreeMap::new();
    for answer in &answers.0 {
        let (Some(stage), Ok(text)) = (answer.labels.get(STAGE_LABEL), &answer.reply) else {
            continue;
        };
        let counts = stages.entry(stage.clone()).or_default();
        counts.pods += 1;
        let mut lag = 0;
        for (name, labels, value) in samples(text) {
            match name {
                "rigging_queue_accounting" => {
                    let slot = match label(labels, "count") {
                        Some("in") => &mut counts.delivered,
                        Some("out") => &mut counts.out,
                        Some("filtered") => &mut counts.filtered,
                        Some("dead_lettered") => &mut counts.dead_lettered,
                        Some("retried") => &mut counts.retried,
                        Some("in_flight") => &mut counts.in_flight,
                        _ => continue,
                    };
                    *slot += value;
                }
                "rigging_queue_lag" => lag += value,
                "rigging_queue_published_total" if label(labels, "result") == Some("stored") => {
                    if let Some(topic) = label(labels, "topic") {
                        *counts.published.entry(topic.to_owned()).or_default() += value;
                    }
                }
                _ => {}
            }
        }
        counts.lag = counts.lag.max(lag);
    }
    stages
}

/// The samples of a Prometheus text exposition: `(name, labels, value)`, the labels as
/// written between the braces, values as whole numbers (every series read here counts).
fn samples(text: &str) -> impl Iterator<Item = (&str, &str, i64)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let value: f64 = value.parse().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        // Counts well below 2^53: exact as f64.
        Some((name, labels, value as i64))
    })
}

/// The value of label `key` in `labels` (`a="1",b="2"`). Label values read here are
/// topic names and fixed words, with no quotes or commas inside.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::PodAnswer;

    const POD: &str = r#"# HELP rigging_queue_accounting This pod's deliveries.
# TYPE rigging_queue_accounting gauge
rigging_queue_accounting{count="dead_lettered"} 1
rigging_queue_accounting{count="filtered"} 3
rigging_queue_accounting{count="in"} 20
rigging_queue_accounting{count="in_flight"} 2
rigging_queue_accounting{count="out"} 12
rigging_queue_accounting{count="retried"} 2
rigging_queue_lag{topic="a"} 40
rigging_queue_lag{topic="b"} 2
rigging_queue_published_total{result="duplicate",topic="valid"} 4
rigging_queue_published_total{result="stored",topic="valid"} 12
"#;

    fn answer(pod: &str, stage: Option<&str>, reply: Result<&str, &str>) -> PodAnswer {
        PodAnswer {
            pod: pod.into(),
            labels: stage
                .map(|s| BTreeMap::from([(STAGE_LABEL.to_owned(), s.to_owned())]))
                .unwrap_or_default(),
            reply: reply.map(str::to_owned).map_err(str::to_owned),
        }
    }

    #[test]
    fn each_stage_sums_its_pods_and_keeps_the_largest_backlog() {
        let answers = Answers(vec![
            answer("a-1", Some("validate"), Ok(POD)),
            answer(
                "a-2",
                Some("validate"),
                Ok(&POD.replace("{topic=\"a\"} 40", "{topic=\"a\"} 39")),
            ),
            answer("a-3", Some("validate"), Err("no pod IP yet")),
            answer("b-1", None, Ok(POD)),
        ]);
        let counts = counts(&answers);
        let validate = &counts["validate"];
        assert_eq!(validate.pods, 2);
        assert_eq!(validate.delivered, 40);
        assert_eq!(validate.out, 24);
        assert_eq!(validate.in_flight, 4);
        assert_eq!(validate.lag, 42, "the largest, not the sum");
        assert_eq!(validate.published["valid"], 24, "stored only");
        assert_eq!(validate.unaccounted(), 0);
        assert_eq!(counts.len(), 1);
    }

    #[test]
    fn a_delivery_nothing_accounts_for_shows() {
        let answers = Answers(vec![answer(
            "a-1",
            Some("validate"),
            Ok(&POD.replace("{count=\"in\"} 20", "{count=\"in\"} 21")),
        )]);
        assert_eq!(counts(&answers)["validate"].unaccounted(), 1);
    }
}
