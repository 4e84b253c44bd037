//! `rigging-sidecar logs`: the log adapter (book ch. 4). Reads an app's log file (or
//! stdin), parses each record in a known format, and writes one JSON object per record to
//! stdout, where cluster log collectors pick it up.
//!
//! The reading and parsing run on one dedicated thread with blocking IO: the work is a
//! tight byte loop (memchr, hand-written parsers, one reusable output buffer), which
//! async would only slow down. The tokio side serves the admin port and turns SIGTERM
//! into a stop flag the thread checks between reads.

pub mod follow;
pub mod format;
pub mod lines;
pub mod output;
pub mod pipeline;

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::runtime::{self, Lifecycle, admin};
use format::Parser;
use lines::{LineBuf, finish_partial, step};
use pipeline::{Pipeline, Stats};

/// The flags of `rigging-sidecar logs`, and the formats `--format` accepts: the contract
/// types the operator renders.
pub use rigging_crds::sidecar::logs::{Format, LogsArgs as Args};

/// Errors of the log adapter; each names the flag, file or address at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--format regex` without `--pattern`.
    #[error(
        "--format regex needs --pattern with named groups, e.g. --pattern '^(?P<level>\\w+) (?P<message>.*)$'"
    )]
    MissingPattern,
    /// `--pattern` given with another format.
    #[error("--pattern is only used with --format regex (the format is {0:?})")]
    PatternWithoutRegex(Format),
    /// A regex flag did not compile.
    #[error("invalid {flag} {pattern:?}: {source}")]
    Pattern {
        /// `--pattern` or `--multiline-start`.
        flag: &'static str,
        /// What was given.
        pattern: String,
        /// The regex compiler's message.
        source: regex::Error,
    },
    /// `--pattern` has no named group, so records would be empty.
    #[error("--pattern {0:?} has no named group (?P<name>…): its records would be empty")]
    NoNamedGroups(String),
    /// The input file could not be opened.
    #[error("cannot open input {path}: {source}")]
    OpenInput {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading the input failed.
    #[error("cannot read input {path}: {source}")]
    Read {
        /// The file, or `stdin`.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The output could not be opened.
    #[error("cannot open output {path}: {source}")]
    OpenOutput {
        /// The file, or `stdout`.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Writing records failed (a closed stdout, a full disk).
    #[error("cannot write records to {path}: {source}")]
    Write {
        /// The file, or `stdout`.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The admin port or metrics could not be set up.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// The reader thread could not be started.
    #[error("cannot start the log reader thread: {0}")]
    Thread(io::Error),
    /// The reader thread panicked (a bug: parsers must not panic on any input).
    #[error("the log reader thread panicked")]
    Panicked,
}

/// The adapter's metrics on the admin port.
#[derive(Clone)]
pub struct Metrics {
    bytes_read: IntCounter,
    lines_read: IntCounter,
    records_written: IntCounter,
    parse_errors: IntCounter,
    rotations: IntCounterVec,
    reclaimed: IntCounterVec,
    published: std::sync::Arc<std::sync::Mutex<Stats>>,
}

impl Metrics {
    /// Creates the counters and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, runtime::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, runtime::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let rotations = IntCounterVec::new(
            Opts::new(
                "rigging_logs_rotations_total",
                "Log rotations followed, by kind (rename: renamed and recreated; truncate: copytruncate).",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(rotations.clone()))?;
        for kind in ["rename", "truncate"] {
            rotations.with_label_values(&[kind]);
        }
        let reclaimed = IntCounterVec::new(
            Opts::new(
                "rigging_logs_reclaimed_bytes_total",
                "Disk space of the followed file given back once read, by how (hole: punched out, nothing lost; truncate: the file emptied).",
            ),
            &["how"],
        )?;
        registry.register(Box::new(reclaimed.clone()))?;
        for how in ["hole", "truncate"] {
            reclaimed.with_label_values(&[how]);
        }
        Ok(Metrics {
            bytes_read: counter(
                "rigging_logs_read_bytes_total",
                "Bytes read from the input.",
            )?,
            lines_read: counter(
                "rigging_logs_lines_read_total",
                "Lines read from the input.",
            )?,
            records_written: counter(
                "rigging_logs_records_written_total",
                "JSON records written, error records included.",
            )?,
            parse_errors: counter(
                "rigging_logs_parse_errors_total",
                "Records that did not parse (or were not UTF-8), written whole with an error field.",
            )?,
            rotations,
            reclaimed,
            published: Default::default(),
        })
    }

    /// Adds what `stats` counted since the last call.
    pub fn publish(&self, stats: &Stats) {
        let mut last = self.published.lock().unwrap_or_else(|e| e.into_inner());
        self.bytes_read.inc_by(stats.bytes - last.bytes);
        self.lines_read.inc_by(stats.lines - last.lines);
        self.records_written.inc_by(stats.records - last.records);
        self.parse_errors.inc_by(stats.errors - last.errors);
        *last = *stats;
    }
}

/// Compiles the flags into a parser and an optional multi-line start pattern.
pub fn build(args: &Args) -> Result<(Parser, Option<regex::bytes::Regex>), Error> {
    let compile = |flag: &'static str, pattern: &str| {
        regex::bytes::Regex::new(pattern).map_err(|source| Error::Pattern {
            flag,
            pattern: pattern.to_owned(),
            source,
        })
    };
    let parser = match (args.format, &args.pattern) {
        (Format::Regex, None) => return Err(Error::MissingPattern),
        (Format::Regex, Some(p)) => Parser::Regex(
            format::regex::Captures::new(compile("--pattern", p)?)
                .ok_or_else(|| Error::NoNamedGroups(p.clone()))?,
        ),
        (other, Some(_)) => return Err(Error::PatternWithoutRegex(other)),
        (Format::Nginx, None) => Parser::Nginx(format::nginx::Combined),
        (Format::Apache, None) => Parser::Apache(format::nginx::Combined),
        (Format::Redis, None) => Parser::Redis,
        (Format::Logfmt, None) => Parser::Logfmt,
        (Format::Json, None) => Parser::Json,
    };
    let multiline = args
        .multiline_start
        .as_deref()
        .map(|p| compile("--multiline-start", p))
        .transpose()?;
    Ok((parser, multiline))
}

/// How long a stopping adapter gets to read to the end of its file and emit what it
/// holds: the follower's drain, and a second to write out.
const STOP_DEADLINE: Duration = follow::DRAIN.saturating_add(Duration::from_secs(1));

/// Runs the `logs` sidecar: until the input ends, or until SIGTERM with `--follow`.
pub async fn run(args: Args) -> Result<(), Error> {
    let (parser, multiline) = build(&args)?;
    let registry = Registry::new();
    let metrics = Metrics::new(&registry)?;
    let life = Lifecycle::new();
    if let Some(addr) = args.admin {
        admin::spawn(addr, registry, life.clone()).await?;
    }
    let output_name = if args.output == "-" {
        "stdout".to_owned()
    } else {
        args.output.clone()
    };
    let sink = open_output(&args.output).map_err(|source| Error::OpenOutput {
        path: output_name.clone(),
        source,
    })?;
    let input = if args.input == "-" {
        Input::Stdin
    } else if args.follow {
        Input::Follow(PathBuf::from(&args.input))
    } else {
        let path = PathBuf::from(&args.input);
        let file = File::open(&path).map_err(|source| Error::OpenInput {
            path: path.clone(),
            source,
        })?;
        Input::File(path, file)
    };

    let stop = life.token().clone();
    let reclaim_after = args.reclaim_after.0;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rigging-logs".into())
        .spawn(move || {
            let mut pipe = Pipeline::new(parser, multiline, sink);
            let result = match input {
                Input::Follow(path) => follow::follow(
                    &path,
                    &mut pipe,
                    &stop,
                    &metrics,
                    &output_name,
                    reclaim_after,
                ),
                Input::File(path, file) => read_to_end(
                    file,
                    &path.display().to_string(),
                    &mut pipe,
                    &stop,
                    &metrics,
                    &output_name,
                ),
                Input::Stdin => read_to_end(
                    io::stdin().lock(),
                    "stdin",
                    &mut pipe,
                    &stop,
                    &metrics,
                    &output_name,
                ),
            };
            let _ = done_tx.send(result);
        })
        .map_err(Error::Thread)?;
    life.set_ready(true);

    let mut done_rx = done_rx;
    tokio::select! {
        result = &mut done_rx => result.map_err(|_| Error::Panicked)?,
        _ = life.stopping() => {
            // The thread sees the cancelled token between reads; a blocked stdin read
            // does not return, so the wait is bounded.
            match tokio::time::timeout(STOP_DEADLINE, done_rx).await {
                Ok(result) => result.map_err(|_| Error::Panicked)?,
                Err(_) => {
                    tracing::warn!("reader still blocked at shutdown; exiting anyway");
                    Ok(())
                }
            }
        }
    }
}

enum Input {
    Stdin,
    File(PathBuf, File),
    Follow(PathBuf),
}

/// Stdout as a plain file: Rust's `Stdout` is line-buffered, and records are already
/// written in large blocks.
fn open_output(output: &str) -> io::Result<File> {
    if output == "-" {
        Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
    } else {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(output))
    }
}

/// Reads an input to its end (or until stopped), flushing the partial last line.
fn read_to_end<W: io::Write>(
    mut reader: impl Read,
    name: &str,
    pipe: &mut Pipeline<W>,
    stop: &CancellationToken,
    metrics: &Metrics,
    output: &str,
) -> Result<(), Error> {
    let write_err = |source| Error::Write {
        path: output.to_owned(),
        source,
    };
    let mut lines = LineBuf::default();
    loop {
        match step(&mut lines, &mut reader, pipe) {
            Ok(0) => break,
            // Caught up with a pipe: send what we have rather than wait for more.
            Ok(_) if lines.caught_up() => pipe.flush().map_err(write_err)?,
            Ok(_) => {}
            Err(err) => return Err(err.naming(name, output)),
        }
        metrics.publish(&pipe.stats());
        if stop.is_cancelled() {
            break;
        }
    }
    finish_partial(&mut lines, pipe).map_err(write_err)?;
    pipe.finish().map_err(write_err)?;
    metrics.publish(&pipe.stats());
    let stats = pipe.stats();
    tracing::info!(
        input = name,
        lines = stats.lines,
        records = stats.records,
        parse_errors = stats.errors,
        "input ended"
    );
    Ok(())
}
