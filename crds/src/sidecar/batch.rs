//! `rigging-sidecar output` and `rigging-sidecar reduce`: coordinated batch (book ch. 12)
//! on a WorkQueue, with the outputs kept off the Kubernetes objects.
//!
//! - **output** ([`OutputArgs`]) is a native sidecar in each worker pod. The worker writes
//!   its result to the file named by [`OUTPUT_FILE_ENV`]; when the worker has exited, the
//!   kubelet sends the sidecar SIGTERM, and it stores the file in a JetStream key-value
//!   bucket under `<run>.<key>`.
//! - **reduce** ([`ReduceArgs`]) is the reduce Job's container: it streams every output of
//!   the run through a built-in reducer and stores the result once, as the object `<run>`
//!   of an object store bucket (and, when asked, in a ConfigMap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::queue::DEFAULT_NATS;
use super::{SidecarArgs, duration, ports};

/// The environment variable that names the file a worker writes its output to.
pub const OUTPUT_FILE_ENV: &str = "WORK_OUTPUT_FILE";

/// The environment variable the output sidecar reads its item's key from.
pub const OUTPUT_KEY_ENV: &str = "RIGGING_OUTPUT_KEY";

/// The directory the output file is in when none is given: a volume the worker and the
/// output sidecar share.
pub const DEFAULT_OUTPUT_DIR: &str = "/var/run/rigging/output";

/// The output file when none is given.
pub const DEFAULT_OUTPUT_FILE: &str = "/var/run/rigging/output/output";

/// The environment variable that names the file a reducer container reads the run's
/// outputs from, one JSON line each.
pub const REDUCE_OUTPUTS_FILE_ENV: &str = "REDUCE_OUTPUTS_FILE";

/// The environment variable that names the file a reducer container writes its result to.
pub const REDUCE_RESULT_FILE_ENV: &str = "REDUCE_RESULT_FILE";

/// The directory of those two files in the reduce Job's pod: a volume its containers
/// share.
pub const REDUCE_DIR: &str = "/var/run/rigging/reduce";

/// The key-value bucket that holds the outputs when none is given.
pub const DEFAULT_OUTPUTS_BUCKET: &str = "rigging-outputs";

/// The suffix of the results bucket's default name: outputs in `B`, results in `B-results`.
pub const RESULTS_SUFFIX: &str = "-results";

/// The largest output an item may store by default, in bytes.
pub const DEFAULT_MAX_OUTPUT_SIZE: u32 = 512 * 1024;

/// The largest `--max-size`: NATS refuses a message over its `max_payload` (1 MiB by
/// default), and a stored output is one message; this leaves room for its subject and
/// headers.
pub const MAX_OUTPUT_SIZE: u32 = 1_000_000;

/// The largest result inlined in the ConfigMap by default, in bytes.
pub const DEFAULT_INLINE_LIMIT: u32 = 256 * 1024;

/// The largest `--inline-limit`: a ConfigMap holds at most 1 MiB in all, and the summary
/// and the object's metadata need some of it.
pub const MAX_INLINE_LIMIT: u32 = 900 * 1024;

/// Kubernetes's path for a container's termination message.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The field manager of the ConfigMap the reducer applies.
pub const REDUCE_FIELD_MANAGER: &str = "rigging-reduce";

/// How long outputs are kept, when the output sidecar makes the bucket.
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the reducer makes of the run's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[cfg_attr(feature = "api", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Reducer {
    /// How many outputs have each value at `--path`: `{"value": count}`.
    Count,
    /// The objects at `--path` (the whole output when empty) added key by key.
    Sum,
    /// How many numbers at `--path` fall in each bucket bounded by `--le`.
    Histogram,
    /// Every output, one JSON line each, in the order the store holds them.
    Concat,
    /// A reducer container of your own. Without `--result-from`, the run's outputs are
    /// written to `--outputs-file` for it to read (a concat's lines: one JSON line per
    /// output); with it, the file the container wrote is stored as the run's result.
    Container,
}

impl Reducer {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Reducer::Count => "count",
            Reducer::Sum => "sum",
            Reducer::Histogram => "histogram",
            Reducer::Concat => "concat",
            Reducer::Container => "container",
        }
    }
}

/// The flags of `rigging-sidecar output`.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct OutputArgs {
    /// The NATS server, `nats://HOST:PORT` (`nats://127.0.0.1:4222` when neither the flag
    /// nor `RIGGING_NATS_URL` is given), several comma-separated for a cluster; set
    /// `RIGGING_NATS_URL` from a Secret when it holds a password.
    #[arg(long, env = "RIGGING_NATS_URL")]
    pub nats: Option<String>,
    /// The JetStream key-value bucket the output goes to; made when missing (history 1,
    /// `--retention` as its age limit).
    #[arg(long, default_value = DEFAULT_OUTPUTS_BUCKET, value_name = "NAME")]
    pub bucket: String,
    /// The run this item belongs to: the first part of the output's key.
    #[arg(long, value_name = "RUN")]
    pub run: String,
    /// The item's key: the output is stored under `<run>.<key>`.
    #[arg(long, env = OUTPUT_KEY_ENV, value_name = "KEY")]
    pub key: String,
    /// The file the worker writes its output to.
    #[arg(long, env = OUTPUT_FILE_ENV, default_value = DEFAULT_OUTPUT_FILE, value_name = "FILE")]
    pub file: PathBuf,
    /// The largest output stored, in bytes; a larger one is refused and the sidecar fails.
    #[arg(long, default_value_t = DEFAULT_MAX_OUTPUT_SIZE, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_OUTPUT_SIZE)))]
    pub max_size: u32,
    /// How long the sidecar tries to store the output after SIGTERM (the pod's grace
    /// period must be longer).
    #[arg(long, default_value = "20s", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub upload_timeout: Duration,
    /// How long the bucket keeps an output, when this sidecar makes the bucket.
    #[arg(long, default_value = "7d", value_parser = duration::parse)]
    #[serde(with = "duration")]
    pub retention: Duration,
    /// Where the one-line outcome goes, for `kubectl describe` and the operator.
    #[arg(long, default_value = TERMINATION_LOG, value_name = "FILE")]
    pub termination_log: PathBuf,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::OUTPUT_ADMIN)))]
    pub admin: SocketAddr,
}

impl SidecarArgs for OutputArgs {
    const SUBCOMMAND: &'static str = "output";
}

impl OutputArgs {
    /// The output sidecar of item `key` in run `run`, every other setting at its default.
    pub fn new(run: String, key: String) -> Self {
        Self {
            nats: None,
            bucket: DEFAULT_OUTPUTS_BUCKET.to_owned(),
            run,
            key,
            file: PathBuf::from(DEFAULT_OUTPUT_FILE),
            max_size: DEFAULT_MAX_OUTPUT_SIZE,
            upload_timeout: Duration::from_secs(20),
            retention: DEFAULT_RETENTION,
            termination_log: PathBuf::from(TERMINATION_LOG),
            admin: SocketAddr::from(([0, 0, 0, 0], ports::OUTPUT_ADMIN)),
        }
    }

    /// The NATS URL: `--nats`, or [`DEFAULT_NATS`].
    pub fn nats_url(&self) -> &str {
        self.nats.as_deref().unwrap_or(DEFAULT_NATS)
    }

    /// The key the output is stored under: `<run>.<key>`.
    pub fn output_key(&self) -> String {
        output_key(&self.run, &self.key)
    }

    /// The rules beyond each flag's parser: names the store accepts.
    pub fn check(&self) -> Result<(), BatchArgsError> {
        check_bucket("--bucket", &self.bucket)?;
        check_token("--run", &self.run)?;
        check_token("--key", &self.key)?;
        if self.upload_timeout.is_zero() {
            return Err(BatchArgsError::Zero("--upload-timeout"));
        }
        Ok(())
    }
}

/// The flags of `rigging-sidecar reduce`.
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct ReduceArgs {
    /// The NATS server, `nats://HOST:PORT` (`nats://127.0.0.1:4222` when neither the flag
    /// nor `RIGGING_NATS_URL` is given), several comma-separated for a cluster; set
    /// `RIGGING_NATS_URL` from a Secret when it holds a password.
    #[arg(long, env = "RIGGING_NATS_URL")]
    pub nats: Option<String>,
    /// The key-value bucket the outputs are in.
    #[arg(long, default_value = DEFAULT_OUTPUTS_BUCKET, value_name = "NAME")]
    pub bucket: String,
    /// The run to reduce: every key `<run>.*` of the bucket.
    #[arg(long, value_name = "RUN")]
    pub run: String,
    /// The reducer.
    #[arg(long, value_enum)]
    pub reducer: Reducer,
    /// Dotted path into each output (`votes.total`): the value counted, the object summed
    /// (the whole output when empty), the number put in a histogram bucket.
    #[arg(long, default_value = "", value_name = "PATH")]
    pub path: String,
    /// `--reducer histogram`: a bucket's upper bound, repeatable, ascending; a last
    /// bucket `+Inf` is added.
    #[arg(long = "le", value_name = "BOUND", allow_negative_numbers = true)]
    #[serde(rename = "le")]
    pub le: Vec<f64>,
    /// The object store bucket the result goes to, as the object `<run>`; made when
    /// missing. Default: `<bucket>-results`.
    #[arg(long, value_name = "NAME")]
    pub results: Option<String>,
    /// Also write the result to this file.
    #[arg(long, value_name = "FILE")]
    pub result_file: Option<PathBuf>,
    /// Write the summary (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_file: Option<PathBuf>,
    /// `--reducer container`: the file the run's outputs are written to, one JSON line
    /// each (`{"key": K, "output": O}`), for the container to read; with
    /// `--result-from`, the outputs are counted from it.
    #[arg(long, value_name = "FILE")]
    pub outputs_file: Option<PathBuf>,
    /// `--reducer container`: the file the container wrote its result to, stored as the
    /// run's result.
    #[arg(long, value_name = "FILE")]
    pub result_from: Option<PathBuf>,
    /// Where the summary goes as the container's termination message (cut to 4 KiB).
    #[arg(long, default_value = TERMINATION_LOG, value_name = "FILE")]
    pub termination_log: PathBuf,
    /// Apply (server-side) the ConfigMap of this name with the run, the summary and, when
    /// small enough, the result.
    #[arg(long, value_name = "NAME")]
    pub config_map: Option<String>,
    /// The ConfigMap's namespace (the pod's, from `POD_NAMESPACE`).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Fewest outputs the run must have: with fewer, nothing is written and the reducer
    /// fails, naming the shortfall (the join barrier's count: an item whose worker
    /// succeeded without storing an output does not count as done).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub min_outputs: u64,
    /// The largest result put in the ConfigMap, in bytes; a larger one is only named there.
    #[arg(long, default_value_t = DEFAULT_INLINE_LIMIT, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_INLINE_LIMIT)))]
    pub inline_limit: u32,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::REDUCE_ADMIN)))]
    pub admin: SocketAddr,
}

impl SidecarArgs for ReduceArgs {
    const SUBCOMMAND: &'static str = "reduce";
}

impl ReduceArgs {
    /// The reduce of run `run` by `reducer`, every other setting at its default.
    pub fn new(run: String, reducer: Reducer) -> Self {
        Self {
            nats: None,
            bucket: DEFAULT_OUTPUTS_BUCKET.to_owned(),
            run,
            reducer,
            path: String::new(),
            le: Vec::new(),
            results: None,
            result_file: None,
            summary_file: None,
            outputs_file: None,
            result_from: None,
            termination_log: PathBuf::from(TERMINATION_LOG),
            config_map: None,
            namespace: None,
            min_outputs: 0,
            inline_limit: DEFAULT_INLINE_LIMIT,
            admin: SocketAddr::from(([0, 0, 0, 0], ports::REDUCE_ADMIN)),
        }
    }

    /// The NATS URL: `--nats`, or [`DEFAULT_NATS`].
    pub fn nats_url(&self) -> &str {
        self.nats.as_deref().unwrap_or(DEFAULT_NATS)
    }

    /// The results bucket: `--results`, or `<bucket>-results`.
    pub fn results_bucket(&self) -> String {
        self.results
            .clone()
            .unwrap_or_else(|| format!("{}{RESULTS_SUFFIX}", self.bucket))
    }

    /// The rules beyond each flag's parser: names the store and the API server accept,
    /// and what each reducer needs.
    pub fn check(&self) -> Result<(), BatchArgsError> {
        check_bucket("--bucket", &self.bucket)?;
        check_bucket("--results", &self.results_bucket())?;
        check_token("--run", &self.run)?;
        if !self.path.is_empty() && self.path.split('.').any(str::is_empty) {
            return Err(BatchArgsError::Path(self.path.clone()));
        }
        let reducer = self.reducer.name();
        match self.reducer {
            Reducer::Count | Reducer::Histogram if self.path.is_empty() => {
                return Err(BatchArgsError::Reducer {
                    reducer,
                    message: "needs --path, the dotted path of the value it reads".into(),
                });
            }
            Reducer::Concat | Reducer::Container if !self.path.is_empty() => {
                return Err(BatchArgsError::Reducer {
                    reducer,
                    message: "does not take --path: it keeps every output whole".into(),
                });
            }
            _ => {}
        }
        match (self.reducer, &self.outputs_file, &self.result_from) {
            (Reducer::Container, None, _) => {
                return Err(BatchArgsError::Reducer {
                    reducer,
                    message: "needs --outputs-file, where the container reads the outputs".into(),
                });
            }
            (Reducer::Container, _, _) | (_, None, None) => {}
            _ => {
                return Err(BatchArgsError::Reducer {
                    reducer,
                    message: "does not take --outputs-file or --result-from, which are a reducer container's".into(),
                });
            }
        }
        match self.reducer {
            Reducer::Histogram => check_bounds(&self.le)?,
            _ if !self.le.is_empty() => {
                return Err(BatchArgsError::Reducer {
                    reducer,
                    message: "does not take --le, which bounds a histogram's buckets".into(),
                });
            }
            _ => {}
        }
        if let Some(name) = &self.config_map {
            if !is_dns_subdomain(name) {
                return Err(BatchArgsError::ConfigMap(name.clone()));
            }
            match self.namespace.as_deref() {
                None | Some("") => return Err(BatchArgsError::NoNamespace),
                Some(ns) if !is_dns_label(ns) => {
                    return Err(BatchArgsError::Namespace(ns.to_owned()));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Why the flags of `output` or `reduce` do not make a sidecar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchArgsError {
    /// A run or a key the store would refuse (or split into more tokens).
    #[error(
        "{flag} {value:?}: use 1 or more of a-z, A-Z, 0-9, '-', '_' and '=' (it is one token of the key <run>.<key>)"
    )]
    Token {
        /// The flag.
        flag: &'static str,
        /// What it was.
        value: String,
    },
    /// A bucket name NATS would refuse.
    #[error("{flag} {value:?}: a bucket name is 1 or more of a-z, A-Z, 0-9, '-' and '_'")]
    Bucket {
        /// The flag.
        flag: &'static str,
        /// What it was.
        value: String,
    },
    /// A duration that must be longer than zero.
    #[error("{0}: give a duration longer than 0")]
    Zero(&'static str),
    /// A dotted path with an empty segment.
    #[error("--path {0:?} has an empty segment: use a dotted path such as votes.total")]
    Path(String),
    /// A flag the reducer needs is missing, or one it does not take is given.
    #[error("--reducer {reducer}: {message}")]
    Reducer {
        /// The reducer.
        reducer: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Histogram bounds that are not finite and strictly ascending.
    #[error("--le: {0}")]
    Bounds(String),
    /// A ConfigMap name the API server would refuse.
    #[error(
        "--config-map {0:?}: a ConfigMap name is at most 253 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
    )]
    ConfigMap(String),
    /// `--config-map` with no namespace to put it in.
    #[error("--config-map needs --namespace (or POD_NAMESPACE)")]
    NoNamespace,
    /// A namespace the API server would refuse.
    #[error("--namespace {0:?} is not a namespace name (a DNS label)")]
    Namespace(String),
}

/// Whether `text` may be a run or a key: one token of `<run>.<key>`, in the characters
/// every NATS key-value client accepts.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

/// The key-value key of `key` in run `run`.
pub fn output_key(run: &str, key: &str) -> String {
    format!("{run}.{key}")
}

fn check_token(flag: &'static str, value: &str) -> Result<(), BatchArgsError> {
    match is_token(value) {
        true => Ok(()),
        false => Err(BatchArgsError::Token {
            flag,
            value: value.to_owned(),
        }),
    }
}

/// NATS's rule for key-value and object store bucket names.
fn check_bucket(flag: &'static str, value: &str) -> Result<(), BatchArgsError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    match ok {
        true => Ok(()),
        false => Err(BatchArgsError::Bucket {
            flag,
            value: value.to_owned(),
        }),
    }
}

/// A histogram's bounds: at least one, each finite, each above the one before.
pub fn check_bounds(bounds: &[f64]) -> Result<(), BatchArgsError> {
    if bounds.is_empty() {
        return Err(BatchArgsError::Bounds(
            "a histogram needs at least one bound, e.g. --le 0.1 --le 1 --le 10".into(),
        ));
    }
    if let Some(b) = bounds.iter().find(|b| !b.is_finite()) {
        return Err(BatchArgsError::Bounds(format!(
            "{b} is not a finite number (the +Inf bucket is always added)"
        )));
    }
    if let Some(w) = bounds.windows(2).find(|w| w[0] >= w[1]) {
        return Err(BatchArgsError::Bounds(format!(
            "{} after {}: give the bounds strictly ascending",
            w[1], w[0]
        )));
    }
    Ok(())
}

fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        sidecar: Sidecar,
    }

    #[derive(Debug, PartialEq, clap::Subcommand)]
    enum Sidecar {
        Output(OutputArgs),
        Reduce(ReduceArgs),
    }

    fn parse(args: &[String]) -> Result<Sidecar, String> {
        let argv = std::iter::once("rigging-sidecar".to_owned()).chain(args.iter().cloned());
        Cli::try_parse_from(argv)
            .map(|cli| cli.sidecar)
            .map_err(|e| e.to_string())
    }

    fn full_reduce() -> ReduceArgs {
        ReduceArgs {
            nats: Some("nats://nats.batch:4222".into()),
            bucket: "votes".into(),
            path: "tally.score".into(),
            le: vec![-1.5, 0.25, 10.0, 1e6],
            results: Some("votes-final".into()),
            result_file: Some("/out/result.json".into()),
            summary_file: Some("/out/summary.json".into()),
            termination_log: "/tmp/term".into(),
            config_map: Some("votes-run-3".into()),
            namespace: Some("batch".into()),
            inline_limit: 1024,
            admin: "127.0.0.1:9999".parse().unwrap(),
            ..ReduceArgs::new("run-3".into(), Reducer::Histogram)
        }
    }

    #[test]
    fn rendered_command_lines_parse_back_to_what_was_rendered() {
        let mut output = OutputArgs::new("run-1".into(), "item_7=a".into());
        output.nats = Some("nats://nats:4222".into());
        output.file = "/work/out.json".into();
        output.max_size = 1000;
        output.upload_timeout = Duration::from_millis(1500);
        let cases = [
            Sidecar::Output(OutputArgs::new("r".into(), "k".into())),
            Sidecar::Output(output),
            Sidecar::Reduce(ReduceArgs::new("r".into(), Reducer::Concat)),
            Sidecar::Reduce(full_reduce()),
        ];
        for want in cases {
            let args = match &want {
                Sidecar::Output(a) => a.to_args(),
                Sidecar::Reduce(a) => a.to_args(),
            };
            assert_eq!(parse(&args).unwrap(), want, "{args:?}");
        }
    }

    #[test]
    fn the_constructors_defaults_are_the_flags_defaults() {
        let args = |rest: &[&str]| rest.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // The test process may have these set; the flags then follow them.
        let env_free = std::env::var_os(OUTPUT_FILE_ENV).is_none()
            && std::env::var_os("RIGGING_NATS_URL").is_none()
            && std::env::var_os("POD_NAMESPACE").is_none();
        if !env_free {
            return;
        }
        assert_eq!(
            parse(&args(&["output", "--run", "r", "--key", "k"])).unwrap(),
            Sidecar::Output(OutputArgs::new("r".into(), "k".into()))
        );
        assert_eq!(
            parse(&args(&["reduce", "--run", "r", "--reducer", "sum"])).unwrap(),
            Sidecar::Reduce(ReduceArgs::new("r".into(), Reducer::Sum))
        );
    }

    #[test]
    fn max_size_and_inline_limit_stay_under_what_nats_and_a_config_map_hold() {
        let over = format!("{}", MAX_OUTPUT_SIZE + 1);
        let err =
            parse(&["output", "--run", "r", "--key", "k", "--max-size", &over].map(String::from))
                .unwrap_err();
        assert!(err.contains("--max-size"), "{err}");
        let over = format!("{}", MAX_INLINE_LIMIT + 1);
        let err = parse(
            &[
                "reduce",
                "--run",
                "r",
                "--reducer",
                "sum",
                "--inline-limit",
                &over,
            ]
            .map(String::from),
        )
        .unwrap_err();
        assert!(err.contains("--inline-limit"), "{err}");
    }

    #[test]
    fn runs_and_keys_are_single_tokens_named_with_their_flag() {
        assert!(is_token("run-1"));
        assert!(is_token("Item_7=b"));
        for bad in ["", "a.b", "a b", "a*", "a>", "é"] {
            assert!(!is_token(bad), "{bad:?}");
        }
        let err = OutputArgs::new("run.1".into(), "k".into())
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--run \"run.1\""), "{err}");
        let err = OutputArgs::new("r".into(), "k/1".into())
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--key \"k/1\""), "{err}");
        let mut bucket = OutputArgs::new("r".into(), "k".into());
        bucket.bucket = "my.bucket".into();
        assert!(matches!(
            bucket.check(),
            Err(BatchArgsError::Bucket {
                flag: "--bucket",
                ..
            })
        ));
        assert_eq!(output_key("r", "k"), "r.k");
    }

    #[test]
    fn histogram_bounds_are_finite_and_strictly_ascending() {
        assert_eq!(check_bounds(&[-1.0, 0.0, 2.5]), Ok(()));
        let refused = |b: &[f64]| check_bounds(b).unwrap_err().to_string();
        assert!(refused(&[]).contains("at least one bound"));
        assert!(refused(&[1.0, 1.0]).contains("1 after 1: give the bounds strictly ascending"));
        assert!(refused(&[2.0, 1.0]).contains("strictly ascending"));
        assert!(refused(&[1.0, f64::INFINITY]).contains("inf is not a finite number"));
        assert!(refused(&[f64::NAN]).contains("not a finite number"));
        let mut args = ReduceArgs::new("r".into(), Reducer::Histogram);
        args.path = "latency".into();
        args.le = vec![5.0, 1.0];
        assert!(
            args.check().unwrap_err().to_string().starts_with("--le: "),
            "the error names the flag"
        );
        // `--le inf` parses as a number; the contract refuses it.
        let mut cli = vec!["reduce", "--run", "r", "--reducer", "histogram"];
        cli.extend(["--path", "v", "--le", "inf"]);
        let cli: Vec<String> = cli.into_iter().map(String::from).collect();
        let Sidecar::Reduce(parsed) = parse(&cli).unwrap() else {
            panic!("not reduce")
        };
        assert!(matches!(parsed.check(), Err(BatchArgsError::Bounds(_))));
    }

    #[test]
    fn each_reducer_names_the_flag_it_lacks_or_does_not_take() {
        let check = |reducer: Reducer, path: &str, le: &[f64]| {
            let mut args = ReduceArgs::new("r".into(), reducer);
            args.path = path.into();
            args.le = le.to_vec();
            args.check().map_err(|e| e.to_string())
        };
        assert_eq!(check(Reducer::Sum, "", &[]), Ok(()));
        assert_eq!(check(Reducer::Count, "vote", &[]), Ok(()));
        assert_eq!(check(Reducer::Concat, "", &[]), Ok(()));
        assert!(
            check(Reducer::Count, "", &[])
                .unwrap_err()
                .contains("needs --path")
        );
        assert!(
            check(Reducer::Histogram, "", &[1.0])
                .unwrap_err()
                .contains("needs --path")
        );
        assert!(
            check(Reducer::Concat, "a", &[])
                .unwrap_err()
                .contains("does not take --path")
        );
        assert!(
            check(Reducer::Sum, "", &[1.0])
                .unwrap_err()
                .contains("does not take --le")
        );
        assert!(
            check(Reducer::Sum, "a..b", &[])
                .unwrap_err()
                .contains("empty segment")
        );
        let mut own = ReduceArgs::new("r".into(), Reducer::Container);
        assert!(
            own.check()
                .unwrap_err()
                .to_string()
                .contains("needs --outputs-file")
        );
        own.outputs_file = Some("/o/outputs.jsonl".into());
        assert_eq!(own.check(), Ok(()));
        own.result_from = Some("/o/result".into());
        assert_eq!(own.check(), Ok(()));
        assert!(
            check(Reducer::Container, "a", &[])
                .unwrap_err()
                .contains("does not take --path")
        );
        let mut sum = ReduceArgs::new("r".into(), Reducer::Sum);
        sum.result_from = Some("/o/result".into());
        assert!(
            sum.check()
                .unwrap_err()
                .to_string()
                .contains("does not take --outputs-file or --result-from")
        );
        let mut cm = ReduceArgs::new("r".into(), Reducer::Sum);
        cm.config_map = Some("votes".into());
        assert_eq!(cm.check(), Err(BatchArgsError::NoNamespace));
        cm.namespace = Some("batch".into());
        assert_eq!(cm.check(), Ok(()));
        cm.config_map = Some("Votes".into());
        assert!(matches!(cm.check(), Err(BatchArgsError::ConfigMap(_))));
        assert_eq!(full_reduce().check(), Ok(()));
        assert_eq!(full_reduce().results_bucket(), "votes-final");
        assert_eq!(
            ReduceArgs::new("r".into(), Reducer::Sum).results_bucket(),
            "rigging-outputs-results"
        );
    }
}
