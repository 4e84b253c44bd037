//! A JSON endpoint → Prometheus, by a YAML mapping file: each rule takes the value at a
//! JSON pointer (RFC 6901) and exports it under a metric name, type, help and fixed labels.
//!
//! ```yaml
//! namespace: shop          # `shop_up` says whether the endpoint answered (default `json`)
//! metrics:
//!   - pointer: /queue/depth
//!     name: shop_queue_depth
//!     type: gauge
//!     help: Jobs waiting in the queue.
//!   - pointer: /http/get
//!     name: shop_requests_total
//!     type: counter
//!     help: Requests served.
//!     labels: {method: GET}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::exposition::{self, Kind};

/// A mapping file that cannot be used, with the file and the rule at fault.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file could not be read or is not the expected YAML.
    #[error(transparent)]
    Load(#[from] crate::runtime::Error),
    /// One rule breaks the Prometheus data model or the format's lint rules.
    #[error("{path}: metrics[{index}] ({name}): {reason}")]
    Rule {
        /// The mapping file.
        path: PathBuf,
        /// The rule's position in `metrics`.
        index: usize,
        /// The rule's metric name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The file-level fields are wrong.
    #[error("{path}: {reason}")]
    File {
        /// The mapping file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_namespace")]
    namespace: String,
    metrics: Vec<Rule>,
}

fn default_namespace() -> String {
    "json".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    pointer: String,
    name: String,
    #[serde(rename = "type")]
    kind: Kind,
    help: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// A validated mapping, grouped into families in the file's order, each sample's
/// `name{labels} ` prefix rendered once at start-up.
#[derive(Debug)]
pub struct Mapping {
    /// `<namespace>_up`.
    pub up_metric: String,
    families: Vec<Family>,
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<(String, Vec<u8>)>,
}

impl Mapping {
    /// Reads and validates a mapping file.
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let file: File = crate::runtime::config::load_yaml(path)?;
        Mapping::from_file(path, file)
    }

    /// Validates a mapping given as YAML text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Mapping, MappingError> {
        let file: File = crate::runtime::config::parse_yaml(path, text)?;
        Mapping::from_file(path, file)
    }

    fn from_file(path: &Path, file: File) -> Result<Mapping, MappingError> {
        let up_metric = format!("{}_up", file.namespace);
        if !exposition::valid_metric_name(&up_metric) {
            return Err(MappingError::File {
                path: path.to_owned(),
                reason: format!(
                    "namespace {:?} does not make a valid metric name",
                    file.namespace
                ),
            });
        }
        if file.metrics.is_empty() {
            return Err(MappingError::File {
                path: path.to_owned(),
                reason: "`metrics` is empty: nothing to export".into(),
            });
        }
        let mut families: Vec<Family> = Vec::new();
        for (index, rule) in file.metrics.into_iter().enumerate() {
            let fail = |reason: String| MappingError::Rule {
                path: path.to_owned(),
                index,
                name: rule.name.clone(),
                reason,
            };
            if !exposition::valid_metric_name(&rule.name) {
                return Err(fail(
                    "not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)".into(),
                ));
            }
            if rule.name == up_metric {
                return Err(fail(format!("{up_metric} is the adapter's own")));
            }
            match (rule.kind, rule.name.ends_with("_total")) {
                (Kind::Counter, false) => {
                    return Err(fail("a counter's name must end in _total".into()));
                }
                (Kind::Gauge, true) => return Err(fail("only counters end in _total".into())),
                _ => {}
            }
            if rule.help.trim().is_empty() {
                return Err(fail("help is empty".into()));
            }
            if !(rule.pointer.is_empty() || rule.pointer.starts_with('/')) {
                return Err(fail(format!(
                    "pointer {:?} must start with / (RFC 6901)",
                    rule.pointer
                )));
            }
            for label in rule.labels.keys() {
                if !exposition::valid_label_name(label) {
                    return Err(fail(format!("label name {label:?} is not valid")));
                }
            }
            let labels: Vec<(&str, &[u8])> = rule
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            let mut prefix = Vec::new();
            exposition::sample(&mut prefix, &rule.name, &labels, b"");
            prefix.pop(); // the newline; the value goes after the space
            match families.iter_mut().find(|f| f.name == rule.name) {
                Some(family) => {
                    if family.kind != rule.kind || family.help != rule.help {
                        return Err(fail(
                            "same name as an earlier rule with another type or help".into(),
                        ));
                    }
                    if family.samples.iter().any(|(_, p)| *p == prefix) {
                        return Err(fail("same name and labels as an earlier rule".into()));
                    }
                    family.samples.push((rule.pointer, prefix));
                }
                None => families.push(Family {
                    name: rule.name,
                    help: rule.help,
                    kind: rule.kind,
                    samples: vec![(rule.pointer, prefix)],
                }),
            }
        }
        Ok(Mapping {
            up_metric,
            families,
        })
    }

    /// Writes the families found in `doc`. A pointer that finds nothing, or a value that is
    /// not a number, a boolean or a numeric string, leaves that sample out.
    pub fn render(&self, doc: &serde_json::Value, out: &mut Vec<u8>) {
        for family in &self.families {
            let start = out.len();
            exposition::header(out, &family.name, &family.help, family.kind);
            let mut any = false;
            for (pointer, prefix) in &family.samples {
                let value = match doc.pointer(pointer) {
                    Some(serde_json::Value::Number(n)) => n.as_f64(),
                    Some(serde_json::Value::Bool(b)) => Some(f64::from(u8::from(*b))),
                    Some(serde_json::Value::String(s)) => {
                        exposition::parse_f64(s.trim().as_bytes())
                    }
                    _ => None,
                };
                if let Some(v) = value {
                    out.extend_from_slice(prefix);
                    exposition::write_f64(out, v);
                    out.push(b'\n');
                    any = true;
                }
            }
            if !any {
                out.truncate(start);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "namespace: shop\nmetrics:\n\
        - {pointer: /queue/depth, name: shop_queue_depth, type: gauge, help: Jobs waiting.}\n\
        - {pointer: /http/get, name: shop_requests_total, type: counter, help: Requests., labels: {method: GET}}\n\
        - {pointer: /http/post, name: shop_requests_total, type: counter, help: Requests., labels: {method: POST}}\n\
        - {pointer: /ok, name: shop_healthy, type: gauge, help: Self-check.}\n\
        - {pointer: /missing, name: shop_missing, type: gauge, help: Never there.}\n\
        - {pointer: /ratio, name: shop_ratio, type: gauge, help: As text.}\n";

    fn parse(text: &str) -> Result<Mapping, MappingError> {
        Mapping::parse(Path::new("/etc/map.yaml"), text)
    }

    #[test]
    fn pointers_pick_values_into_grouped_families() {
        let mapping = parse(MAP).unwrap();
        assert_eq!(mapping.up_metric, "shop_up");
        let doc = serde_json::json!({
            "queue": {"depth": 7},
            "http": {"get": 10, "post": 2.5},
            "ok": true,
            "ratio": " 0.75",
        });
        let mut out = Vec::new();
        mapping.render(&doc, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# HELP shop_queue_depth Jobs waiting.\n# TYPE shop_queue_depth gauge\nshop_queue_depth 7\n\
             # HELP shop_requests_total Requests.\n# TYPE shop_requests_total counter\n\
             shop_requests_total{method=\"GET\"} 10\nshop_requests_total{method=\"POST\"} 2.5\n\
             # HELP shop_healthy Self-check.\n# TYPE shop_healthy gauge\nshop_healthy 1\n\
             # HELP shop_ratio As text.\n# TYPE shop_ratio gauge\nshop_ratio 0.75\n"
        );
    }

    #[test]
    fn rules_that_would_fail_promtool_are_refused_with_file_and_index() {
        for (rule, expect) in [
            (
                "{pointer: /a, name: a_count, type: counter, help: x}",
                "must end in _total",
            ),
            (
                "{pointer: /a, name: a_total, type: gauge, help: x}",
                "only counters",
            ),
            (
                "{pointer: /a, name: 9a, type: gauge, help: x}",
                "not a valid metric name",
            ),
            (
                "{pointer: a, name: a, type: gauge, help: x}",
                "must start with /",
            ),
            (
                "{pointer: /a, name: a, type: gauge, help: ''}",
                "help is empty",
            ),
            (
                "{pointer: /a, name: a, type: gauge, help: x, labels: {a-b: c}}",
                "label name",
            ),
            (
                "{pointer: /a, name: a, type: histogram, help: x}",
                "unknown variant",
            ),
        ] {
            let err = parse(&format!("metrics:\n- {rule}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("/etc/map.yaml"), "{err}");
            assert!(err.contains(expect), "{rule}: {err}");
        }
        let dup = "metrics:\n- {pointer: /a, name: a, type: gauge, help: x}\n\
                   - {pointer: /b, name: a, type: gauge, help: x}\n";
        let err = parse(dup).unwrap_err().to_string();
        assert!(
            err.contains("metrics[1]") && err.contains("same name and labels"),
            "{err}"
        );
    }
}
