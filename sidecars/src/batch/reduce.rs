//! `rigging-sidecar reduce`: a run's outputs through a built-in reducer, into one result,
//! stored exactly once; or, for a reducer container of the user's, the outputs written to
//! a file for it (one step) and the file it writes stored as the result (another).
//!
//! The outputs come as one stream (one ordered consumer over the run's keys), so memory
//! does not grow with their number; a concat's result is streamed into the store as its
//! lines are made, never held whole.
//!
//! Exactly once: the result is the object `<run>` of the results bucket, and that object
//! is the proof that the run was reduced. The reducer writes its result to `<run>.partial`
//! and, once all of it is stored, renames it to `<run>` together with its summary (one
//! metadata message in JetStream's object store). A reducer killed at any point before
//! the rename leaves no `<run>`, so its Job's next try reduces from the start; a reducer
//! that finds `<run>` reduces nothing, writes nothing to the store, and emits the stored
//! summary again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use prometheus::{IntCounter, IntGauge, Registry};
use rigging_crds::sidecar::batch::{BatchArgsError, ReduceArgs, Reducer};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use super::config_map::{self, ConfigMapError, ResultData};
use super::reducers::{Fold, Tally, concat_line};
use crate::broker::{BrokerError, BucketSettings, JetStreamStore, Output, OutputStore, ResultInfo};
use crate::runtime::{self, Lifecycle, admin};

/// The suffix of the object a result is written to before it is committed as `<run>`
/// (a run name has no dot, so no run is named like it).
const PARTIAL_SUFFIX: &str = ".partial";

/// How long the reducer waits for the broker to answer at all, before it gives up (its
/// Job may try again). Once it has answered, any failure ends the run at once.
const BROKER_WAIT: Duration = Duration::from_secs(60);

/// The concat's pipe into the store: one object store chunk (128 KiB).
const PIPE: usize = 128 * 1024;

/// The longest reason the summary gives for one output left out.
const MAX_REASON: usize = 200;

/// Why the run was not reduced (or its ConfigMap not applied).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flags break a rule of the contract.
    #[error(transparent)]
    Args(#[from] BatchArgsError),
    /// The admin port or the metrics could not be set up.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// The broker failed, or never answered.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The broker did not answer within a minute of the start.
    #[error("the broker did not answer within {}s: {problem}: {last}", BROKER_WAIT.as_secs())]
    Unreachable {
        /// Why, as the connection says.
        problem: String,
        /// The last request's failure.
        last: BrokerError,
    },
    /// A local file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A local file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The reducer container left no result file.
    #[error("the reducer container wrote no result to {}: {source}", path.display())]
    NoResult {
        /// The file it should have written.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The result object was written, but reading it back failed.
    #[error("cannot read back the result {name}: {source}")]
    ReadBack {
        /// The object.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// A stored result without the summary its commit gives it: not written by this
    /// reducer.
    #[error(
        "the result object {0} exists but has no summary: it was not written by rigging-sidecar reduce; delete it to reduce the run again"
    )]
    NoSummary(String),
    /// Fewer outputs than the join barrier counted on.
    #[error(
        "run {run}: {stored} outputs stored, the join needs {needed}: an item whose worker succeeded without storing its output (its rigging-output container's termination message says why) does not count; nothing was written"
    )]
    TooFewOutputs {
        /// The run.
        run: String,
        /// Outputs read.
        stored: u64,
        /// `--min-outputs`.
        needed: u64,
    },
    /// SIGTERM came before the result was stored.
    #[error(
        "stopped before the result was stored: nothing was written, the run can be reduced again"
    )]
    Stopped,
    /// The result is stored, the ConfigMap is not.
    #[error(transparent)]
    ConfigMap(#[from] ConfigMapError),
}

/// What the summary says of a run: written to `--summary-file`, as the termination
/// message, to the log, and as the result object's description.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The run.
    pub run: String,
    /// The reducer.
    pub reducer: &'static str,
    /// Outputs read.
    pub outputs: u64,
    /// Outputs in the result.
    pub reduced: u64,
    /// Outputs left out.
    pub left_out: u64,
    /// The first outputs left out, with why.
    pub first_left_out: Vec<LeftOutEntry>,
    /// The result's size.
    pub result_bytes: u64,
    /// Where the result is: `<results bucket>/<run>`.
    pub result: String,
}

/// One output left out, in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeftOutEntry {
    /// Its key.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// The run's outcome: its summary, and what the ConfigMap needs of its result.
struct Reduced {
    summary: String,
    size: u64,
    /// The result, when a ConfigMap is asked for and it is within `--inline-limit`.
    inline: Option<Vec<u8>>,
}

/// The reducer's metrics.
struct Metrics {
    expected: IntGauge,
    outputs: IntCounter,
    left_out: IntCounter,
    result_bytes: IntGauge,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let expected = IntGauge::new(
            "rigging_reduce_expected_outputs",
            "Outputs the store held when the reduce started.",
        )?;
        let outputs = IntCounter::new("rigging_reduce_outputs_total", "Outputs read.")?;
        let left_out = IntCounter::new(
            "rigging_reduce_left_out_total",
            "Outputs left out of the result (not JSON, or not fitting the reducer).",
        )?;
        let result_bytes = IntGauge::new(
            "rigging_reduce_result_bytes",
            "Size of the stored result, once stored.",
        )?;
        registry.register(Box::new(expected.clone()))?;
        registry.register(Box::new(outputs.clone()))?;
        registry.register(Box::new(left_out.clone()))?;
        registry.register(Box::new(result_bytes.clone()))?;
        Ok(Self {
            expected,
            outputs,
            left_out,
            result_bytes,
        })
    }
}

/// Reduces the run (or finds it reduced), emits the summary, applies the ConfigMap.
pub async fn run(args: ReduceArgs) -> Result<(), Error> {
    let started = Instant::now();
    args.check()?;
    let life = Lifecycle::new();
    let registry = Registry::new();
    let metrics = Metrics::register(&registry).map_err(runtime::Error::from)?;
    admin::spawn(args.admin, registry, life.clone()).await?;
    life.set_ready(true);
    let store = JetStreamStore::connect(
        args.nats_url(),
        "rigging-sidecar-reduce",
        BucketSettings {
            // The reducer never makes the outputs bucket: a missing one holds no outputs.
            outputs_retention: Duration::ZERO,
            replicas: 1,
        },
    )
    .await?;
    if let (Reducer::Container, Some(path), None) =
        (args.reducer, &args.outputs_file, &args.result_from)
    {
        let outcome = tokio::select! {
            outcome = write_outputs(&args, &store, path, &metrics) => outcome,
            _ = life.stopping() => Err(Error::Stopped),
        };
        let outputs = match outcome {
            Ok(outputs) => outputs,
            Err(err) => return Err(told(&args, err).await),
        };
        tracing::info!(run = %args.run, outputs, file = %path.display(), "outputs written for the reducer container");
        return Ok(());
    }
    let outcome = tokio::select! {
        outcome = reduce_once(&args, &store, &metrics) => outcome,
        _ = life.stopping() => Err(Error::Stopped),
    };
    let reduced = match outcome {
        Ok(reduced) => reduced,
        Err(err) => return Err(told(&args, err).await),
    };
    metrics.result_bytes.set(reduced.size as i64);
    if let Some(path) = &args.summary_file {
        let mut text = reduced.summary.clone();
        text.push('\n');
        write_file(path, text.as_bytes()).await?;
    }
    super::write_termination_log(
        &args.termination_log,
        &termination_message(&reduced.summary),
    )
    .await;
    tracing::info!(
        summary = %reduced.summary,
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "run reduced"
    );
    if let (Some(name), Some(namespace)) = (&args.config_map, &args.namespace) {
        let result = result_data(&args, reduced.inline);
        let applied = config_map::apply(name, namespace, &args.run, &reduced.summary, result).await;
        if let Err(err) = applied {
            return Err(told(&args, err.into()).await);
        }
        tracing::info!(config_map = %name, namespace = %namespace, "ConfigMap applied");
    }
    Ok(())
}

/// What the ConfigMap says of the result: the result itself when it was kept (within the
/// inline limit) and is text, else where it is stored. A ConfigMap's data is text: a
/// reducer container's result that is not UTF-8 is only named there (the built-in
/// reducers write serde_json's output, always UTF-8).
fn result_data(args: &ReduceArgs, inline: Option<Vec<u8>>) -> ResultData {
    match inline.and_then(|bytes| String::from_utf8(bytes).ok()) {
        Some(text) => ResultData::Inline {
            key: match args.reducer {
                Reducer::Concat => "result.jsonl",
                // The container's own format, which may not be JSON.
                Reducer::Container => "result",
                _ => "result.json",
            },
            text,
        },
        None => ResultData::Elsewhere(format!(
            "nats object store {}/{}",
            args.results_bucket(),
            args.run
        )),
    }
}

/// `err`, once it is the termination message.
async fn told(args: &ReduceArgs, err: Error) -> Error {
    super::write_termination_log(&args.termination_log, &runtime::error_chain(&err)).await;
    err
}

/// Whether the run has the outputs the join counted on.
fn enough(args: &ReduceArgs, stored: u64) -> Result<(), Error> {
    if stored < args.min_outputs {
        return Err(Error::TooFewOutputs {
            run: args.run.clone(),
            stored,
            needed: args.min_outputs,
        });
    }
    Ok(())
}

/// The reduce proper: the stored result when there is one, else a new one, committed.
async fn reduce_once(
    args: &ReduceArgs,
    store: &JetStreamStore,
    metrics: &Metrics,
) -> Result<Reduced, Error> {
    let results = args.results_bucket();
    let inline_limit = args.config_map.as_ref().map(|_| args.inline_limit as u64);
    let existing = first_contact(store, || store.result_info(&results, &args.run)).await?;
    if let Some(info) = existing {
        tracing::info!(
            run = %args.run,
            result = %format!("{results}/{}", args.run),
            "the run was reduced already: its result is not written again"
        );
        return stored(args, store, &results, info, inline_limit).await;
    }
    tracing::info!(run = %args.run, reducer = args.reducer.name(), "reducing");
    let partial = format!("{}{PARTIAL_SUFFIX}", args.run);
    let (tally, info, inline) = match Fold::new(args.reducer, &args.path, &args.le) {
        Some(fold) => {
            let outputs = read(args, store, metrics).await?;
            let (tally, result) = fold_all(fold, outputs, metrics).await?;
            enough(args, tally.outputs)?;
            if let Some(path) = &args.result_file {
                write_file(path, &result).await?;
            }
            let info = store
                .put_result(&results, &partial, &mut result.as_slice())
                .await?;
            let inline = inline_limit.filter(|limit| result.len() as u64 <= *limit);
            (tally, info, inline.map(|_| result))
        }
        None => match (&args.outputs_file, &args.result_from) {
            (Some(outputs), Some(result)) => {
                container_result(args, store, (&results, &partial), outputs, result).await?
            }
            _ => {
                let outputs = read(args, store, metrics).await?;
                concat(args, store, &results, &partial, outputs, metrics).await?
            }
        },
    };
    // (A concat streamed its result to the partial object, which stays unreferenced.)
    enough(args, tally.outputs)?;
    let summary = Summary {
        run: args.run.clone(),
        reducer: args.reducer.name(),
        outputs: tally.outputs,
        reduced: tally.reduced,
        left_out: tally.left_out,
        first_left_out: tally
            .first_left_out
            .into_iter()
            .map(|(key, reason)| LeftOutEntry {
                key,
                reason: super::cut(&reason, MAX_REASON).to_owned(),
            })
            .collect(),
        result_bytes: info.size,
        result: format!("{results}/{}", args.run),
    };
    let text = serde_json::to_string(&summary).expect("a summary is always JSON");
    match store
        .commit_result(&results, &partial, &args.run, &text)
        .await
    {
        Ok(_) => Ok(Reduced {
            summary: text,
            size: info.size,
            inline,
        }),
        // Another reducer of the same run committed first: its result stands.
        Err(err) => match store.result_info(&results, &args.run).await? {
            Some(theirs) => stored(args, store, &results, theirs, inline_limit).await,
            None => Err(err.into()),
        },
    }
}

/// The run's outputs, as one stream.
async fn read(
    args: &ReduceArgs,
    store: &JetStreamStore,
    metrics: &Metrics,
) -> Result<BoxStream<'static, Result<Output, BrokerError>>, BrokerError> {
    let outputs = store.outputs(&args.bucket, &args.run).await?;
    metrics.expected.set(outputs.expected as i64);
    tracing::info!(run = %args.run, outputs = outputs.expected, "reading the outputs");
    Ok(outputs.stream)
}

/// A reducer container's first step: every output of the run into `path`, one concat line
/// each, streamed (memory does not grow with the outputs; the file does). Fails, having
/// written the file, when the run has fewer outputs than the join counted on. Returns how
/// many there were.
async fn write_outputs(
    args: &ReduceArgs,
    store: &JetStreamStore,
    path: &Path,
    metrics: &Metrics,
) -> Result<u64, Error> {
    let mut outputs = first_contact(store, || read(args, store, metrics)).await?;
    let write_error = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = BufWriter::with_capacity(PIPE, create_file(path).await?);
    let mut count = 0;
    while let Some(output) = outputs.next().await {
        let output = output?;
        file.write_all(&concat_line(&output.key, &output.value))
            .await
            .map_err(write_error)?;
        metrics.outputs.inc();
        count += 1;
    }
    file.flush().await.map_err(write_error)?;
    enough(args, count)?;
    Ok(count)
}

/// A reducer container's last step: the file it wrote (`result`) stored as the object
/// `partial` of `results`, for the run whose outputs it read from `outputs` (counted there).
async fn container_result(
    args: &ReduceArgs,
    store: &JetStreamStore,
    (results, partial): (&str, &str),
    outputs: &Path,
    result: &Path,
) -> Result<(Tally, ResultInfo, Option<Vec<u8>>), Error> {
    let count = count_lines(outputs).await?;
    enough(args, count)?;
    let no_result = |source| Error::NoResult {
        path: result.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(result).await.map_err(no_result)?;
    let info = store.put_result(results, partial, &mut file).await?;
    if let Some(copy) = &args.result_file {
        tokio::fs::copy(result, copy)
            .await
            .map_err(|source| Error::Write {
                path: copy.clone(),
                source,
            })?;
    }
    let inline = match &args.config_map {
        Some(_) if info.size <= u64::from(args.inline_limit) => {
            Some(tokio::fs::read(result).await.map_err(no_result)?)
        }
        _ => None,
    };
    let tally = Tally {
        outputs: count,
        reduced: count,
        ..Tally::default()
    };
    Ok((tally, info, inline))
}

/// The lines of the file at `path`, read in chunks.
async fn count_lines(path: &Path) -> Result<u64, Error> {
    let read_error = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let mut chunk = vec![0; PIPE];
    let mut lines = 0;
    loop {
        let n = file.read(&mut chunk).await.map_err(read_error)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += chunk[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

/// The first request to the broker, retried while the broker does not answer (it may
/// start after this Job), at most [`BROKER_WAIT`].
async fn first_contact<T, F, Fut>(store: &JetStreamStore, mut ask: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BrokerError>>,
{
    let deadline = Instant::now() + BROKER_WAIT;
    let mut backoff = Duration::from_millis(100);
    loop {
        let err = match ask().await {
            Ok(answer) => return Ok(answer),
            Err(err) => err,
        };
        let Some(problem) = store.connection_problem() else {
            return Err(err.into());
        };
        if Instant::now() + backoff > deadline {
            return Err(Error::Unreachable { problem, last: err });
        }
        tracing::warn!(error = %problem, "broker not reachable yet, retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A run reduced before: its stored summary, and its result where it is asked for.
async fn stored(
    args: &ReduceArgs,
    store: &JetStreamStore,
    results: &str,
    info: ResultInfo,
    inline_limit: Option<u64>,
) -> Result<Reduced, Error> {
    let summary = info
        .summary
        .clone()
        .ok_or_else(|| Error::NoSummary(format!("{results}/{}", info.name)))?;
    let read_back = |source| Error::ReadBack {
        name: format!("{results}/{}", info.name),
        source,
    };
    if let Some(path) = &args.result_file {
        let mut reader = store.get_result(results, &info.name).await?;
        let mut file = create_file(path).await?;
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(read_back)?;
        file.flush().await.map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    }
    let inline = match inline_limit {
        Some(limit) if info.size <= limit => {
            let mut bytes = Vec::with_capacity(info.size as usize);
            store
                .get_result(results, &info.name)
                .await?
                .take(limit + 1)
                .read_to_end(&mut bytes)
                .await
                .map_err(read_back)?;
            Some(bytes)
        }
        _ => None,
    };
    Ok(Reduced {
        summary,
        size: info.size,
        inline,
    })
}

/// Every output through `fold`; the result as JSON and a newline.
async fn fold_all(
    mut fold: Fold,
    mut outputs: BoxStream<'static, Result<Output, BrokerError>>,
    metrics: &Metrics,
) -> Result<(Tally, Vec<u8>), Error> {
    let mut tally = Tally::default();
    while let Some(output) = outputs.next().await {
        let output = output?;
        let outcome = fold.add(&output.value);
        metrics.outputs.inc();
        if outcome.is_err() {
            metrics.left_out.inc();
        }
        tally.record(&output.key, outcome);
    }
    let mut result = serde_json::to_vec(&fold.result()).expect("a result is always JSON");
    result.push(b'\n');
    Ok((tally, result))
}

/// Every output as one line, streamed into the object `partial` (and `--result-file`) as
/// the lines are made: the pipe between holds one chunk, so memory does not grow with the
/// result. Returns the tally, the object, and the result when it is within the inline
/// limit (collected only up to it).
async fn concat(
    args: &ReduceArgs,
    store: &JetStreamStore,
    results: &str,
    partial: &str,
    mut outputs: BoxStream<'static, Result<Output, BrokerError>>,
    metrics: &Metrics,
) -> Result<(Tally, ResultInfo, Option<Vec<u8>>), Error> {
    let (writer, reader) = tokio::io::duplex(PIPE);
    let inline_limit = args.config_map.as_ref().map(|_| args.inline_limit as usize);
    let produce = async move {
        let mut pipe = BufWriter::with_capacity(PIPE, writer);
        let mut file = match &args.result_file {
            Some(path) => Some((path, BufWriter::new(create_file(path).await?))),
            None => None,
        };
        let mut inline = inline_limit.map(|_| Vec::new());
        let mut tally = Tally::default();
        while let Some(output) = outputs.next().await {
            let output = output?;
            let line = concat_line(&output.key, &output.value);
            metrics.outputs.inc();
            tally.record(&output.key, Ok(()));
            // Fails only when the store stopped reading: its error is the one reported.
            if pipe.write_all(&line).await.is_err() {
                return Ok(None);
            }
            if let Some((path, file)) = &mut file {
                file.write_all(&line).await.map_err(|source| Error::Write {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            if let (Some(kept), Some(limit)) = (&mut inline, inline_limit) {
                match kept.len() + line.len() <= limit {
                    true => kept.extend_from_slice(&line),
                    false => inline = None,
                }
            }
        }
        // The end of the pipe is the end of the object.
        if pipe.shutdown().await.is_err() {
            return Ok(None);
        }
        if let Some((path, mut file)) = file {
            file.flush().await.map_err(|source| Error::Write {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok::<_, Error>(Some((tally, inline)))
    };
    // The reader is the put's own: when the put ends (or fails), the writer sees a broken
    // pipe instead of waiting on a full one.
    let put = async move {
        let mut reader = reader;
        store.put_result(results, partial, &mut reader).await
    };
    let (produced, put) = tokio::join!(produce, put);
    // A failed read of the outputs ends the pipe early, and the put stores what came: a
    // `.partial` that is never committed.
    match (produced?, put) {
        (Some((tally, inline)), Ok(info)) => Ok((tally, info, inline)),
        (_, Err(err)) => Err(err.into()),
        // The put reads to the end of the pipe, so it cannot have ended well first.
        (None, Ok(_)) => Err(BrokerError::Object {
            bucket: results.to_owned(),
            name: partial.to_owned(),
            reason: "the store stopped reading before the end of the result".into(),
        }
        .into()),
    }
}

/// The summary as a termination message: within what the kubelet keeps, and still JSON
/// (the outputs left out are dropped from the end until it fits).
fn termination_message(summary: &str) -> String {
    let mut value: serde_json::Value = match serde_json::from_str(summary) {
        Ok(value) => value,
        Err(_) => return summary.to_owned(),
    };
    let mut text = summary.to_owned();
    while text.len() > super::TERMINATION_MESSAGE_MAX {
        let Some(first) = value
            .get_mut("firstLeftOut")
            .and_then(serde_json::Value::as_array_mut)
            .filter(|list| !list.is_empty())
        else {
            break;
        };
        first.pop();
        text = value.to_string();
    }
    text
}

async fn create_file(path: &Path) -> Result<tokio::fs::File, Error> {
    tokio::fs::File::create(path)
        .await
        .map_err(|source| Error::Write {
            path: path.to_owned(),
            source,
        })
}

async fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    tokio::fs::write(path, bytes)
        .await
        .map_err(|source| Error::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_map_holds_a_result_that_is_text_and_names_one_that_is_not() {
        let own = ReduceArgs::new("4".into(), Reducer::Container);
        assert_eq!(
            result_data(&own, Some(b"a\nb\n".to_vec())),
            ResultData::Inline {
                key: "result",
                text: "a\nb\n".into()
            }
        );
        let pointer = ResultData::Elsewhere("nats object store rigging-outputs-results/4".into());
        assert_eq!(result_data(&own, Some(vec![0xff, 0xfe, 0])), pointer);
        assert_eq!(result_data(&own, None), pointer);
        let concat = ReduceArgs::new("4".into(), Reducer::Concat);
        assert!(matches!(
            result_data(&concat, Some(b"{}\n".to_vec())),
            ResultData::Inline {
                key: "result.jsonl",
                ..
            }
        ));
    }

    #[test]
    fn a_long_summary_drops_left_out_outputs_until_it_fits_and_stays_json() {
        let summary = Summary {
            run: "r".into(),
            reducer: "sum",
            outputs: 100,
            reduced: 90,
            left_out: 10,
            first_left_out: (0..10)
                .map(|i| LeftOutEntry {
                    key: format!("{i}-{}", "k".repeat(400)),
                    reason: "x".repeat(MAX_REASON),
                })
                .collect(),
            result_bytes: 12,
            result: "b-results/r".into(),
        };
        let text = serde_json::to_string(&summary).unwrap();
        assert!(text.len() > 4096);
        let cut = termination_message(&text);
        assert!(cut.len() <= 4096, "{}", cut.len());
        let value: serde_json::Value = serde_json::from_str(&cut).unwrap();
        assert_eq!(value["leftOut"], 10);
        assert!(!value["firstLeftOut"].as_array().unwrap().is_empty());
        let short = termination_message("{\"run\":\"r\"}");
        assert_eq!(short, "{\"run\":\"r\"}");
    }
}
