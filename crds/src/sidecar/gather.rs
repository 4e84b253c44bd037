//! `rigging-sidecar gather`: the scatter/gather root's command line ([`GatherArgs`]) and
//! its reloadable YAML config file ([`GatherConfig`]).
//!
//! The root takes a client's request, sends a copy to one replica of every shard, merges
//! the answers and returns them. The file holds what may change while the root serves
//! (the leaves, the merge, the request's fate) and is reloaded; the flags hold what needs
//! a restart. Keys are camelCase; durations are humantime text (`250ms`); an unknown key is
//! an error that names it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::{SidecarArgs, duration, ports};

/// The header every answer of the root carries: `answered/total` shards.
pub const COVERAGE_HEADER: &str = "rigging-coverage";

/// The field of a merged JSON answer that holds its coverage
/// (`{"answered": 7, "total": 8, "missing": [3]}`).
pub const COVERAGE_FIELD: &str = "coverage";

/// The environment variable that tells a leaf its shard index (0-based).
pub const SHARD_ENV: &str = "RIGGING_SHARD";

/// The environment variable that tells a leaf the shard count.
pub const SHARDS_ENV: &str = "RIGGING_SHARDS";

/// The flags of `rigging-sidecar gather`.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct GatherArgs {
    /// The YAML config file ([`GatherConfig`]); watched and reloaded on change.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Address clients connect to.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], 8080)))]
    pub listen: SocketAddr,
    /// Admin address for /healthz, /readyz, /metrics and /status.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::GATHER_ADMIN)))]
    pub admin: SocketAddr,
    /// Longest a client may take to send a request's headers.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// A client connection with no request in flight for this long is closed.
    #[arg(long, default_value = "2m", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Most client connections open at once; further clients wait in the listen backlog.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Largest request body the root copies to the leaves; a larger one gets 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_request_body: u64,
    /// Largest answer a leaf may give; a larger one counts as that shard's failure.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_leaf_body: u64,
    /// How often the config file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub reload_interval: Duration,
    /// On SIGTERM, how long in-flight requests get to finish before the process exits.
    #[arg(long, default_value = "20s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
}

impl SidecarArgs for GatherArgs {
    const SUBCOMMAND: &'static str = "gather";
}

impl GatherArgs {
    /// The root reading `config`, with every other setting at its default.
    pub fn new(config: PathBuf) -> Self {
        Self {
            config,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin: SocketAddr::from(([0, 0, 0, 0], ports::GATHER_ADMIN)),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
            max_request_body: 1 << 20,
            max_leaf_body: 8 << 20,
            reload_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// The config file of `rigging-sidecar gather`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatherConfig {
    /// The shards, in shard order: shard `i` is `shards[i]`.
    pub shards: Vec<Shard>,
    /// How the leaves' answers become the client's.
    pub merge: Merge,
    /// Longest a request may take, fan-out and merge included. At the deadline the root
    /// answers with the shards that have answered, and cancels the rest.
    #[serde(default = "default_deadline", with = "duration")]
    pub deadline: Duration,
    /// Fewest shards whose answers still make an answer; all of them when absent (one
    /// for `merge.first`). Below it the client gets 502 naming the shards that did not
    /// answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_shards: Option<u32>,
    /// Longest one request to one leaf may take; the deadline when absent. A leaf that
    /// fails or times out is tried again on another replica of its shard while the
    /// deadline allows.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub leaf_timeout: Option<Duration>,
    /// Backup requests to a shard's other replica when its first is slow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<Hedge>,
}

fn default_deadline() -> Duration {
    Duration::from_secs(1)
}

/// One shard: the addresses of its replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Shard {
    /// `HOST:PORT` of each replica, looked up on every new connection; a replica whose
    /// name does not resolve (a pod that is not ready) is skipped.
    pub replicas: Vec<String>,
}

/// How the answers are merged: exactly one of the fields is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Merge {
    /// The arrays at `path` of every answer, one after another in shard order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concat: Option<Concat>,
    /// The `k` items of the arrays at `path` with the highest (or lowest) `by`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<TopK>,
    /// The objects at `path` added: numbers per key, nested objects key by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<Sum>,
    /// The first 2xx answer, as it came; the other requests are cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<First>,
    /// Every answer posted to a merger, whose answer the client gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merger: Option<Merger>,
}

/// `merge.concat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Concat {
    /// Dotted path of the array in each answer (`hits`, `result.items`).
    pub path: String,
}

/// `merge.topK`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopK {
    /// Dotted path of the array in each answer.
    pub path: String,
    /// Dotted path, inside each item, of the number it is ranked by.
    pub by: String,
    /// How many items the merged answer keeps.
    pub k: u32,
    /// `desc` (the highest first, the default) or `asc`.
    #[serde(default)]
    pub order: Order,
}

/// The order of `topK`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// The highest first.
    #[default]
    Desc,
    /// The lowest first.
    Asc,
}

/// `merge.sum`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sum {
    /// Dotted path of the object in each answer; the whole answer when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

/// `merge.first`: no settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct First {}

/// `merge.merger`: a process (in the root's pod) that merges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Merger {
    /// Where the root posts `{"answers": [{"shard": 0, "status": 200, "body": …}, …],
    /// "coverage": {…}}`: `http://127.0.0.1:PORT/PATH`.
    pub url: String,
}

/// `hedge`: a backup request to another replica of a slow shard, the first answer wins
/// and the other request is cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hedge {
    /// When a shard's request is slow enough to hedge: a quantile of that shard's recent
    /// latencies (`p95`) or a fixed duration (`10ms`).
    pub after: HedgeAfter,
    /// Backup requests allowed, as a share of the leaf requests sent (`5%`): a token bucket
    /// over the live rate, so that hedging stops itself when every leaf is slow.
    #[serde(default = "default_budget")]
    pub budget: Percent,
}

fn default_budget() -> Percent {
    Percent(5.0)
}

/// `hedge.after`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeAfter {
    /// The shard's recent latency at this quantile, in (0, 100): `p95` is 95.0.
    Quantile(f64),
    /// A fixed wait.
    Fixed(Duration),
}

impl HedgeAfter {
    /// Parses `p95`, `p99.9` or a humantime duration.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(q) = text.strip_prefix('p') {
            return match q.parse::<f64>() {
                Ok(q) if q > 0.0 && q < 100.0 => Ok(Self::Quantile(q)),
                _ => Err(format!(
                    "{text:?}: a quantile is p followed by a number between 0 and 100, e.g. p95"
                )),
            };
        }
        duration::parse(text)
            .map(Self::Fixed)
            .map_err(|e| format!("{e}, or a quantile such as p95"))
    }
}

impl fmt::Display for HedgeAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Quantile(q) => write!(f, "p{q}"),
            Self::Fixed(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl Serialize for HedgeAfter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HedgeAfter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

/// A share written `5%`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

impl Percent {
    /// Parses `5%` or `0.5%`, between 0 and 100.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.strip_suffix('%').map(str::parse::<f64>) {
            Some(Ok(p)) if (0.0..=100.0).contains(&p) => Ok(Self(p)),
            _ => Err(format!(
                "{text:?}: give a share between 0% and 100%, e.g. 5%"
            )),
        }
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

/// A config file that parses but cannot work, with the path of the field at fault
/// (`merge.topK.k`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Where, as a path into the file.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError {
        field: field.into(),
        message: message.into(),
    })
}

impl Merge {
    /// The names of the fields that are set, in declaration order.
    pub fn chosen(&self) -> Vec<&'static str> {
        [
            ("concat", self.concat.is_some()),
            ("topK", self.top_k.is_some()),
            ("sum", self.sum.is_some()),
            ("first", self.first.is_some()),
            ("merger", self.merger.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// Checks the merge alone; `at` is its path in the file (`merge`, `spec.merge`).
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        match self.chosen().as_slice() {
            [_] => {}
            [] => refuse(at, "choose one of concat, topK, sum, first and merger")?,
            many => refuse(at, format!("{} are set: choose one", many.join(" and ")))?,
        }
        let path_ok = |field: String, path: &str, empty_ok: bool| {
            if path.is_empty() && !empty_ok {
                return refuse(field, "give the dotted path of the field, e.g. hits");
            }
            if !path.is_empty() && path.split('.').any(str::is_empty) {
                return refuse(field, format!("{path:?} has an empty segment"));
            }
            if path.split('.').next() == Some(COVERAGE_FIELD) {
                return refuse(
                    field,
                    format!("{COVERAGE_FIELD:?} is where the root reports coverage"),
                );
            }
            Ok(())
        };
        if let Some(c) = &self.concat {
            path_ok(format!("{at}.concat.path"), &c.path, false)?;
        }
        if let Some(t) = &self.top_k {
            path_ok(format!("{at}.topK.path"), &t.path, false)?;
            if t.by.is_empty() || t.by.split('.').any(str::is_empty) {
                refuse(
                    format!("{at}.topK.by"),
                    "give the dotted path of the number items are ranked by, e.g. score",
                )?;
            }
            if t.k == 0 {
                refuse(format!("{at}.topK.k"), "keep at least 1 item")?;
            }
        }
        if let Some(s) = &self.sum
            && !s.path.is_empty()
        {
            path_ok(format!("{at}.sum.path"), &s.path, true)?;
        }
        if let Some(m) = &self.merger {
            // The sidecar parses it as a URI too; this is what the operator can check
            // before writing the file: a scheme, an authority, and nothing a URI refuses.
            let authority = m
                .url
                .strip_prefix("http://")
                .map(|rest| rest.split('/').next().unwrap_or_default());
            let printable = m.url.bytes().all(|b| b.is_ascii_graphic());
            if authority.is_none_or(str::is_empty) || !printable {
                refuse(
                    format!("{at}.merger.url"),
                    format!("{:?}: use http://HOST:PORT/PATH", m.url),
                )?;
            }
        }
        Ok(())
    }
}

impl GatherConfig {
    /// The least coverage that still answers: `minShards`, or every shard; one for
    /// `merge.first`, which answers with one shard by design (its coverage is always
    /// `1/T`, so "every shard" would refuse every request).
    pub fn min_shards(&self) -> usize {
        let all = if self.merge.first.is_some() {
            1
        } else {
            self.shards.len()
        };
        self.min_shards
            .map_or(all, |n| n as usize)
            .min(self.shards.len())
    }

    /// The per-leaf timeout: `leafTimeout`, or the deadline.
    pub fn leaf_timeout(&self) -> Duration {
        self.leaf_timeout.unwrap_or(self.deadline)
    }

    /// Checks what the types alone cannot. The sidecar runs it before taking a file, and
    /// the operator before writing one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shards.is_empty() {
            refuse("shards", "give at least one shard")?;
        }
        for (i, shard) in self.shards.iter().enumerate() {
            if shard.replicas.is_empty() {
                refuse(format!("shards[{i}].replicas"), "give at least one replica")?;
            }
            for (j, replica) in shard.replicas.iter().enumerate() {
                let port = replica
                    .rsplit_once(':')
                    .map(|(host, port)| (host, port.parse::<u16>()));
                if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p > 0) {
                    refuse(
                        format!("shards[{i}].replicas[{j}]"),
                        format!("{replica:?}: use HOST:PORT"),
                    )?;
                }
            }
        }
        self.merge.validate("merge")?;
        if self.deadline.is_zero() {
            refuse("deadline", "give a deadline longer than 0")?;
        }
        if let Some(n) = self.min_shards {
            if n == 0 {
                refuse("minShards", "at least 1 shard must answer")?;
            }
            if n as usize > self.shards.len() {
                refuse(
                    "minShards",
                    format!("{n} is more than the {} shards", self.shards.len()),
                )?;
            }
            if self.merge.first.is_some() && n > 1 {
                refuse(
                    "minShards",
                    "merge first answers with one shard: minShards cannot ask for more",
                )?;
            }
        }
        if let Some(t) = self.leaf_timeout {
            if t.is_zero() {
                refuse("leafTimeout", "give a timeout longer than 0")?;
            }
            if t > self.deadline {
                refuse(
                    "leafTimeout",
                    format!(
                        "{} is longer than the deadline {}: no leaf may outlive its request",
                        humantime::format_duration(t),
                        humantime::format_duration(self.deadline)
                    ),
                )?;
            }
        }
        if let Some(h) = &self.hedge {
            if let HedgeAfter::Fixed(d) = h.after
                && d >= self.leaf_timeout()
            {
                refuse(
                    "hedge.after",
                    "a hedge after the leaf timeout would never be sent",
                )?;
            }
            if self.shards.iter().all(|s| s.replicas.len() < 2) {
                refuse(
                    "hedge",
                    "a hedge goes to another replica of the shard, and no shard has two",
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<GatherConfig, String> {
        let config: GatherConfig = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    const SHARDS: &str = "shards:\n  - replicas: [a:80, b:80]\n  - replicas: [c:80, d:80]\n";

    #[test]
    fn a_full_file_reads_back_as_written() {
        let text = format!(
            "{SHARDS}merge:\n  topK: {{path: hits, by: score, k: 10}}\ndeadline: 250ms\nminShards: 1\nleafTimeout: 200ms\nhedge: {{after: p95, budget: 5%}}\n"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.min_shards(), 1);
        assert_eq!(
            config.hedge.as_ref().unwrap().after,
            HedgeAfter::Quantile(95.0)
        );
        assert_eq!(config.hedge.as_ref().unwrap().budget, Percent(5.0));
        let again: GatherConfig =
            serde_norway::from_str(&serde_norway::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
        let first = parse(&format!("{SHARDS}merge: {{first: {{}}}}\n")).unwrap();
        assert_eq!(first.min_shards(), 1, "first answers with one shard");
    }

    #[test]
    fn bad_files_are_refused_naming_the_field() {
        let cases = [
            (
                "merge: {sum: {}, first: {}}\n",
                "merge: sum and first are set",
            ),
            ("merge: {}\n", "merge: choose one"),
            (
                "merge: {topK: {path: hits, by: score, k: 0}}\n",
                "merge.topK.k",
            ),
            ("merge: {concat: {path: coverage}}\n", "merge.concat.path"),
            ("merge: {merger: {url: 'ftp://x'}}\n", "merge.merger.url"),
            (
                "merge: {merger: {url: 'http://a b/x'}}\n",
                "merge.merger.url",
            ),
            (
                "merge: {merger: {url: 'http:///merge'}}\n",
                "merge.merger.url",
            ),
            ("merge: {first: {}}\nminShards: 2\n", "minShards"),
            ("merge: {sum: {}}\nminShards: 3\n", "minShards: 3 is more"),
            (
                "merge: {sum: {}}\ndeadline: 1s\nleafTimeout: 2s\n",
                "leafTimeout",
            ),
            ("merge: {sum: {}}\nhedge: {after: p100}\n", "p100"),
            (
                "merge: {sum: {}}\nhedge: {after: 5ms, budget: 500%}\n",
                "500%",
            ),
            ("merge: {sum: {}}\nhedge: {after: 1s}\n", "hedge.after"),
        ];
        for (rest, expected) in cases {
            let err = parse(&format!("{SHARDS}{rest}")).unwrap_err();
            assert!(err.contains(expected), "{rest}: {err}");
        }
        let err = parse("shards:\n  - replicas: [nohost]\nmerge: {first: {}}\n").unwrap_err();
        assert!(err.contains("shards[0].replicas[0]"), "{err}");
        let err = parse("shards:\n  - replicas: [a:1]\nmerge: {first: {}}\nhedge: {after: p95}\n")
            .unwrap_err();
        assert!(
            err.contains("hedge: a hedge goes to another replica"),
            "{err}"
        );
    }
}
