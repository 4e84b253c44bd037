//! `rigging-sidecar output` and `rigging-sidecar reduce` against a real `nats-server` with
//! JetStream: each built-in reducer over 10,000 outputs against the Python reference
//! (`scripts/bench/batch-reference/reduce.py`), the output sidecar's SIGTERM upload and
//! refusals, a reducer killed mid-run, the empty run, and the two steps around a reducer
//! container of the user's.
//!
//! Outputs are stored through the library's own store ([`JetStreamStore`]), the way the
//! output sidecar stores one, without starting 10,000 processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rigging_sidecar::broker::{BucketSettings, JetStreamStore, OutputStore, ResultInfo};
use serde_json::{Value, json};

use crate::support::{Nats, Proc, free_port, local, metric, sidecar_bin, signal, wait_ready};

const BUCKET: &str = "outputs";
const RESULTS: &str = "outputs-results";

/// A client of the test's NATS server through the library's store.
struct Store {
    runtime: tokio::runtime::Runtime,
    store: JetStreamStore,
}

impl Store {
    fn connect(nats: &Nats) -> Store {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = runtime
            .block_on(JetStreamStore::connect(
                &nats.url(),
                "rigging-test",
                BucketSettings {
                    outputs_retention: Duration::from_secs(3600),
                    replicas: 1,
                },
            ))
            .unwrap();
        Store { runtime, store }
    }

    /// Stores `outputs` of `run` one after another: the store's order is theirs.
    fn put(&self, run: &str, outputs: &[(String, String)]) {
        self.runtime.block_on(async {
            for (key, output) in outputs {
                self.store
                    .put_output(
                        BUCKET,
                        &format!("{run}.{key}"),
                        output.clone().into(),
                        1 << 20,
                    )
                    .await
                    .unwrap();
            }
        });
    }

    /// Stores `outputs` of `run` many at a time, in no particular order.
    fn put_many(&self, run: &str, outputs: &[(String, String)]) {
        self.runtime.block_on(async {
            futures::stream::iter(outputs)
                .map(|(key, output)| async move {
                    let key = format!("{run}.{key}");
                    self.store
                        .put_output(BUCKET, &key, output.clone().into(), 1 << 20)
                        .await
                })
                .buffer_unordered(256)
                .for_each(|put| async move { put.unwrap() })
                .await;
        });
    }

    fn result_info(&self, name: &str) -> Option<ResultInfo> {
        self.runtime
            .block_on(self.store.result_info(RESULTS, name))
            .unwrap()
    }

    /// How many outputs of `run` the store holds.
    fn count(&self, run: &str) -> u64 {
        self.runtime.block_on(async {
            let outputs = self.store.outputs(BUCKET, run).await.unwrap();
            outputs.stream.count().await as u64
        })
    }
}

/// A small seeded generator: the same outputs on every run of the tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` outputs of a vote tally, keyed `item-<i>`, with a few that each reducer must leave
/// out: not JSON, a vote that is null or an object, a score that is a string, a tally
/// with a string where a number is summed, a tally that is a number.
fn outputs(n: usize, seed: u64) -> Vec<(String, String)> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|i| {
            let key = format!("item-{i}");
            if i % 997 == 13 {
                return (key, format!("not json {{ {i}"));
            }
            let vote = match rng.below(40) {
                0 => json!(null),
                1 => json!({"nested": true}),
                2 => json!(7),
                3 => json!(true),
                4 => json!(2.5),
                r => json!(format!("series-{}", r % 6)),
            };
            let score = match rng.below(50) {
                0 => json!("high"),
                1 => json!(rng.below(10)),
                _ => json!(rng.below(20_000) as f64 / 1000.0),
            };
            let a = rng.below(1000) as i64 - 200;
            let tally = match rng.below(60) {
                0 => json!({"a": "many"}),
                1 => json!(5),
                2 => json!({"a": a, "b": {"c": rng.below(100), "d": i}}),
                _ => json!({"a": a, "b": {"c": rng.below(100)}}),
            };
            let mut doc = json!({"vote": vote, "score": score, "tally": tally, "i": i, "who": "é"});
            if rng.below(30) == 0 {
                doc.as_object_mut().unwrap().remove("vote");
            }
            let text = if i % 101 == 0 {
                serde_json::to_string_pretty(&doc).unwrap()
            } else {
                doc.to_string()
            };
            (key, text)
        })
        .collect()
}

/// The outputs as the reference reads them: `{"key": K, "output": "<text>"}` per line.
fn write_jsonl(path: &Path, outputs: &[(String, String)]) {
    let mut text = String::new();
    for (key, output) in outputs {
        text.push_str(&json!({"key": key, "output": output}).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// What the Python reference makes of the JSONL file.
fn reference(args: &[&str], jsonl: &Path) -> String {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench/batch-reference/reduce.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .arg("--jsonl")
        .arg(jsonl)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "the reference failed: {:?}",
        out.status
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One `rigging-sidecar reduce` of the outputs in [`BUCKET`] to the end, its files in
/// `dir`: its exit code and how long it took.
fn reduce(nats: &Nats, dir: &Path, args: &[&str]) -> (Option<i32>, Duration) {
    reduce_from(nats, BUCKET, dir, args)
}

/// [`reduce`] of the outputs in `bucket`.
fn reduce_from(nats: &Nats, bucket: &str, dir: &Path, args: &[&str]) -> (Option<i32>, Duration) {
    let (url, admin) = (nats.url(), local(free_port()).to_string());
    let mut all = vec![
        "reduce", "--nats", &url, "--bucket", bucket, "--admin", &admin,
    ];
    let files = files(dir);
    all.extend(["--result-file", &files[0], "--summary-file", &files[1]]);
    all.extend(["--termination-log", &files[2]]);
    all.extend_from_slice(args);
    let started = Instant::now();
    let mut proc = reducer(&all);
    let code = proc.wait_exit(Duration::from_secs(60));
    assert!(code.is_some(), "reduce {args:?} did not end within 60 s");
    (code, started.elapsed())
}

/// The result, summary and termination log files of the reduces run in `dir`.
fn files(dir: &Path) -> [String; 3] {
    ["result", "summary.json", "termination-log"].map(|f| dir.join(f).display().to_string())
}

/// A reduce process on one worker thread: what "one core" means for the reducer.
fn reducer(args: &[&str]) -> Proc {
    let child = Command::new(sidecar_bin())
        .args(args)
        .env("RIGGING_WORKER_THREADS", "1")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Proc {
        child,
        name: "rigging-sidecar reduce".into(),
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&read(dir, "summary.json")).unwrap()
}

/// 10,000 outputs stored in run `run`, and the same in a JSONL file for the reference.
fn ten_thousand(nats: &Nats, dir: &Path, run: &str) -> PathBuf {
    let outputs = outputs(10_000, 0x5eed);
    Store::connect(nats).put(run, &outputs);
    let jsonl = dir.join("outputs.jsonl");
    write_jsonl(&jsonl, &outputs);
    jsonl
}

/// Runs `reducer` (with `flags`) over 10,000 outputs; the result as Rigging and as the
/// reference compute it.
fn both(reducer_flags: &[&str]) -> (String, String, Value) {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = ten_thousand(&nats, dir.path(), "r1");
    let mut args = vec!["--run", "r1", "--reducer"];
    args.extend_from_slice(reducer_flags);
    let (code, took) = reduce(&nats, dir.path(), &args);
    assert_eq!(code, Some(0), "reduce {reducer_flags:?} failed");
    eprintln!("reduce {reducer_flags:?} of 10,000 outputs took {took:?} on one worker thread");
    let summary = summary(dir.path());
    assert_eq!(summary["outputs"], 10_000, "{summary}");
    assert_eq!(
        summary["reduced"].as_u64().unwrap() + summary["leftOut"].as_u64().unwrap(),
        10_000,
        "{summary}"
    );
    assert_eq!(summary["result"], "outputs-results/r1");
    assert_eq!(
        json_of(&read(dir.path(), "termination-log")),
        summary,
        "the termination message is the summary"
    );
    let stored = Store::connect(&nats)
        .result_info("r1")
        .expect("the result object");
    assert_eq!(summary["resultBytes"].as_u64(), Some(stored.size));
    let ours = read(dir.path(), "result");
    let mut reference_args = vec!["--reducer"];
    reference_args.extend_from_slice(reducer_flags);
    let theirs = reference(&reference_args, &jsonl);
    (ours, theirs, summary)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The tests that load tens of thousands of outputs take a core each for seconds: one at a
/// time, so that the rest of the suite, whose servers start on free ports within a bound,
/// keeps a core while they run.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn count_of_10000_outputs_matches_the_reference() {
    let _one = one_at_a_time();
    let (ours, theirs, summary) = both(&["count", "--path", "vote"]);
    assert_eq!(json_of(&ours), json_of(&theirs));
    assert!(summary["leftOut"].as_u64().unwrap() > 0, "{summary}");
    let reasons = summary["firstLeftOut"].as_array().unwrap();
    assert!(!reasons.is_empty() && reasons.len() <= 10, "{summary}");
    assert!(
        reasons
            .iter()
            .all(|r| r["key"].is_string() && r["reason"].is_string()),
        "{summary}"
    );
}

#[test]
fn sum_of_10000_outputs_matches_the_reference() {
    let _one = one_at_a_time();
    let (ours, theirs, summary) = both(&["sum", "--path", "tally"]);
    let ours = json_of(&ours);
    assert_eq!(ours, json_of(&theirs));
    assert!(ours["a"].is_i64() && ours["b"]["c"].is_u64(), "{ours}");
    let reasons = summary["firstLeftOut"].to_string();
    assert!(
        reasons.contains("tally.a is a string, where a number or an object is summed"),
        "{reasons}"
    );
    assert!(reasons.contains("not JSON"), "{reasons}");
}

#[test]
fn histogram_of_10000_outputs_matches_the_reference() {
    let _one = one_at_a_time();
    let bounds = ["--le", "0.5", "--le", "1", "--le", "5", "--le", "12.25"];
    let mut flags = vec!["histogram", "--path", "score"];
    flags.extend(bounds);
    let (ours, theirs, _) = both(&flags);
    let (ours, theirs) = (json_of(&ours), json_of(&theirs));
    let buckets = |v: &Value| -> Vec<(String, u64)> {
        v["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let le = match &b["le"] {
                    Value::String(s) => s.clone(),
                    n => format!("{}", n.as_f64().unwrap()),
                };
                (le, b["count"].as_u64().unwrap())
            })
            .collect()
    };
    assert_eq!(buckets(&ours), buckets(&theirs));
    assert_eq!(buckets(&ours).len(), 5);
    assert_eq!(ours["count"], theirs["count"]);
    let (s, r) = (
        ours["sum"].as_f64().unwrap(),
        theirs["sum"].as_f64().unwrap(),
    );
    assert!((s - r).abs() <= 1e-6 * r.abs(), "sum {s} against {r}");
}

#[test]
fn concat_of_10000_outputs_matches_the_reference() {
    let _one = one_at_a_time();
    let (ours, theirs, summary) = both(&["concat"]);
    let lines = |text: &str| text.lines().map(json_of).collect::<Vec<_>>();
    let (ours, theirs) = (lines(&ours), lines(&theirs));
    assert_eq!(ours.len(), 10_000);
    assert_eq!(ours, theirs);
    assert_eq!(summary["leftOut"], 0, "concat keeps every output");
    assert_eq!(ours[13]["output"], "not json { 13");
}

/// An output sidecar with its files in `dir`; `extra` flags after the usual ones.
fn output_sidecar(nats_url: &str, dir: &Path, key: &str, extra: &[&str]) -> (Proc, String) {
    let admin = local(free_port());
    let (a, file, log) = (
        admin.to_string(),
        dir.join(format!("{key}.out")).display().to_string(),
        dir.join(format!("{key}.termination-log"))
            .display()
            .to_string(),
    );
    let mut args = vec![
        "output",
        "--nats",
        nats_url,
        "--bucket",
        BUCKET,
        "--run",
        "r1",
        "--key",
        key,
        "--file",
        &file,
        "--termination-log",
        &log,
        "--admin",
        &a,
    ];
    args.extend_from_slice(extra);
    let proc = Proc::sidecar(&args);
    // Ready at once, whatever the broker: a native sidecar's readiness holds the worker.
    wait_ready(admin, Duration::from_secs(10));
    (proc, log)
}

#[test]
fn an_output_is_stored_on_sigterm_and_the_reducer_sees_it() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut first, first_log) = output_sidecar(&nats.url(), dir.path(), "item-1", &[]);
    let (mut second, _) = output_sidecar(&nats.url(), dir.path(), "item-2", &[]);
    std::fs::write(dir.path().join("item-1.out"), r#"{"votes": {"a": 2}}"#).unwrap();
    std::fs::write(
        dir.path().join("item-2.out"),
        r#"{"votes": {"a": 3, "b": 1}}"#,
    )
    .unwrap();
    // Nothing is stored before SIGTERM: the worker may still be writing.
    std::thread::sleep(Duration::from_millis(300));
    let store = Store::connect(&nats);
    assert_eq!(store.count("r1"), 0);
    first.terminate();
    second.terminate();
    assert_eq!(first.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(second.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(
        std::fs::read_to_string(&first_log).unwrap(),
        "stored output of item-1 (19 bytes) in outputs"
    );
    let (code, _) = reduce(
        &nats,
        dir.path(),
        &["--run", "r1", "--reducer", "sum", "--path", "votes"],
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        json_of(&read(dir.path(), "result")),
        json!({"a": 5, "b": 1})
    );
    assert_eq!(summary(dir.path())["outputs"], 2);
}

#[test]
fn an_output_over_max_size_is_refused_naming_the_item_and_nothing_is_stored() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, log) = output_sidecar(&nats.url(), dir.path(), "big-7", &["--max-size", "100"]);
    std::fs::write(dir.path().join("big-7.out"), "x".repeat(1000)).unwrap();
    proc.terminate();
    assert_eq!(proc.wait_exit(Duration::from_secs(20)), Some(1));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "output of item big-7 is 1000 bytes, over the limit of 100 bytes (--max-size)"
    );
    assert_eq!(Store::connect(&nats).count("r1"), 0, "nothing was stored");
}

#[test]
fn a_missing_output_file_fails_with_its_message() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, log) = output_sidecar(&nats.url(), dir.path(), "item-9", &[]);
    proc.terminate();
    assert_eq!(proc.wait_exit(Duration::from_secs(20)), Some(1));
    let path = dir.path().join("item-9.out");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("no output: the worker wrote nothing to {}", path.display())
    );
}

#[test]
fn an_unreachable_broker_fails_the_output_naming_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let (mut proc, log) =
        output_sidecar(&nowhere, dir.path(), "item-3", &["--upload-timeout", "1s"]);
    std::fs::write(dir.path().join("item-3.out"), "{}").unwrap();
    proc.terminate();
    assert_eq!(proc.wait_exit(Duration::from_secs(20)), Some(1));
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(
        message.starts_with("cannot store output of item item-3 in bucket outputs within 1s: "),
        "{message}"
    );
    assert!(message.contains(&nowhere), "the broker is named: {message}");
}

#[test]
fn a_reducer_killed_mid_run_leaves_no_result_and_the_next_reduces_once() {
    let _one = one_at_a_time();
    let nats = Nats::start();
    let store = Store::connect(&nats);
    let outputs: Vec<(String, String)> = (0..100_000)
        .map(|i| (format!("item-{i}"), format!(r#"{{"n":{i}}}"#)))
        .collect();
    store.put_many("big", &outputs);

    // A clean run into another bucket: what the run's result must be.
    let clean = tempfile::tempdir().unwrap();
    let args = ["--run", "big", "--reducer", "concat"];
    let mut with_clean = args.to_vec();
    with_clean.extend(["--results", "clean"]);
    let (code, took) = reduce(&nats, clean.path(), &with_clean);
    assert_eq!(code, Some(0));
    eprintln!("concat of 100,000 outputs took {took:?}");

    // Killed once it has read some outputs and before it has stored its result.
    let killed = tempfile::tempdir().unwrap();
    let admin = local(free_port());
    let (url, a) = (nats.url(), admin.to_string());
    let files = files(killed.path());
    let mut proc = reducer(&[
        "reduce",
        "--nats",
        &url,
        "--bucket",
        BUCKET,
        "--admin",
        &a,
        "--run",
        "big",
        "--reducer",
        "concat",
        "--termination-log",
        &files[2],
    ]);
    wait_ready(admin, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(admin, "rigging_reduce_outputs_total") < 1.0 {
        assert!(Instant::now() < deadline, "the reducer read nothing");
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(proc.pid(), "KILL");
    assert_eq!(
        proc.wait_exit(Duration::from_secs(10)),
        None,
        "the reducer was killed, it did not finish first"
    );
    assert_eq!(
        store.result_info("big"),
        None,
        "a killed reducer stores no result"
    );

    // Run again: reduced from the start, the same result as the clean run.
    let second = tempfile::tempdir().unwrap();
    let (code, _) = reduce(&nats, second.path(), &args);
    assert_eq!(code, Some(0));
    assert_eq!(read(second.path(), "result"), read(clean.path(), "result"));
    let stored = store.result_info("big").expect("the result object");
    let first_summary = summary(second.path());
    assert_eq!(first_summary["outputs"], 100_000);
    assert_eq!(
        first_summary["resultBytes"].as_u64(),
        Some(stored.size),
        "{first_summary}"
    );

    // And a third time: nothing is reduced or written, the summary comes again.
    let third = tempfile::tempdir().unwrap();
    let (code, _) = reduce(&nats, third.path(), &args);
    assert_eq!(code, Some(0));
    let again = store.result_info("big").expect("the result object");
    assert_eq!((&again.id, &again.modified), (&stored.id, &stored.modified));
    assert_eq!(summary(third.path()), first_summary);
    assert_eq!(
        read(third.path(), "termination-log"),
        read(second.path(), "termination-log")
    );
    assert_eq!(read(third.path(), "result"), read(clean.path(), "result"));
}

#[test]
fn an_empty_run_reduces_to_an_empty_sum_without_waiting() {
    let nats = Nats::start();
    Store::connect(&nats).put("other", &outputs(10, 1));
    // A run with no outputs in a bucket that holds another run's, and in a bucket that
    // does not exist.
    for bucket in [BUCKET, "no-such-bucket"] {
        let dir = tempfile::tempdir().unwrap();
        let (code, took) = reduce_from(
            &nats,
            bucket,
            dir.path(),
            &["--run", "empty", "--reducer", "sum"],
        );
        assert_eq!(code, Some(0), "{bucket}");
        assert!(took < Duration::from_secs(10), "{bucket}: {took:?}");
        assert_eq!(json_of(&read(dir.path(), "result")), json!({}));
        let summary = summary(dir.path());
        assert_eq!(summary["outputs"], 0, "{summary}");
        assert_eq!(summary["leftOut"], 0, "{summary}");
    }
}

#[test]
fn a_run_with_fewer_outputs_than_the_join_counted_is_refused_and_nothing_is_written() {
    let nats = Nats::start();
    let store = Store::connect(&nats);
    store.put("short", &outputs(2, 7));
    let dir = tempfile::tempdir().unwrap();
    let (code, _) = reduce_from(
        &nats,
        BUCKET,
        dir.path(),
        &["--run", "short", "--reducer", "sum", "--min-outputs", "3"],
    );
    assert_ne!(
        code,
        Some(0),
        "an item that stored no output is not a done item"
    );
    let message = read(dir.path(), "termination-log");
    assert!(
        message.contains("run short: 2 outputs stored, the join needs 3"),
        "{message}"
    );
    assert!(
        store.result_info("short").is_none(),
        "no result for the run"
    );
    // With the third output stored, the same run reduces.
    store.put("short", &outputs(3, 7));
    let (code, _) = reduce_from(
        &nats,
        BUCKET,
        dir.path(),
        &["--run", "short", "--reducer", "sum", "--min-outputs", "3"],
    );
    assert_eq!(code, Some(0));
    assert!(store.result_info("short").is_some());
}

/// The reducer container the test stands in for: counts the outputs it reads and the
/// votes per series, written as JSON.
const OWN_REDUCER: &str = r#"
import json, sys
votes, n = {}, 0
for line in open(sys.argv[1]):
    n += 1
    out = json.loads(line)["output"]
    v = out.get("vote") if isinstance(out, dict) else None
    if isinstance(v, str):
        votes[v] = votes.get(v, 0) + 1
json.dump({"outputs": n, "votes": votes}, open(sys.argv[2], "w"), sort_keys=True)
"#;

#[test]
fn a_reducer_container_reads_every_output_as_a_line_and_its_result_is_stored_once() {
    let nats = Nats::start();
    let stored = outputs(1_000, 11);
    let store = Store::connect(&nats);
    store.put("own", &stored);
    let dir = tempfile::tempdir().unwrap();
    let (lines, result) = (dir.path().join("outputs.jsonl"), dir.path().join("own"));
    let (lines_arg, result_arg) = (lines.display().to_string(), result.display().to_string());
    let first = [
        "--run",
        "own",
        "--reducer",
        "container",
        "--min-outputs",
        "1000",
    ];
    let mut write_step = first.to_vec();
    write_step.extend(["--outputs-file", &lines_arg]);
    let (code, _) = reduce(&nats, dir.path(), &write_step);
    assert_eq!(code, Some(0), "the outputs step");

    // One line per stored output, in the store's order: its key, and the output as JSON
    // (text when it is not JSON).
    let text = std::fs::read_to_string(&lines).unwrap();
    let written: Vec<Value> = text.lines().map(json_of).collect();
    assert_eq!(written.len(), stored.len());
    for ((key, output), line) in stored.iter().zip(&written) {
        assert_eq!(line["key"], json!(key));
        let expected = serde_json::from_str(output).unwrap_or_else(|_| json!(output));
        assert_eq!(line["output"], expected, "{key}");
    }

    // The user's reducer, then the step that stores what it wrote.
    let own = |to: &Path| {
        let status = Command::new("python3")
            .args(["-c", OWN_REDUCER, &lines_arg, &to.display().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "the stand-in reducer container failed");
    };
    own(&result);
    let mut store_step = write_step.clone();
    store_step.extend(["--result-from", &result_arg]);
    let (code, _) = reduce(&nats, dir.path(), &store_step);
    assert_eq!(code, Some(0), "the store step");
    let ours = read(dir.path(), "own");
    assert_eq!(json_of(&ours)["outputs"], 1_000);
    assert_eq!(
        read(dir.path(), "result"),
        ours,
        "--result-file is the result"
    );
    let summary = summary(dir.path());
    assert_eq!(summary["reducer"], "container", "{summary}");
    assert_eq!(summary["outputs"], 1_000, "{summary}");
    assert_eq!(summary["result"], "outputs-results/own");
    assert_eq!(
        summary["resultBytes"].as_u64(),
        Some(store.result_info("own").expect("the result object").size)
    );

    // Tried again (the Job's next pod) after a result is stored, with a container whose
    // result differs: the stored result stands.
    std::fs::write(&result, "{\"another\": true}\n").unwrap();
    let (code, _) = reduce(&nats, dir.path(), &store_step);
    assert_eq!(code, Some(0), "the store step again");
    assert_eq!(
        read(dir.path(), "result"),
        ours,
        "the result is written once"
    );

    // A container that wrote nothing fails the step, saying so, and stores nothing.
    store.put("none", &stored[..3]);
    let mut store_step = vec!["--run", "none", "--reducer", "container"];
    let missing = dir.path().join("missing").display().to_string();
    store_step.extend(["--outputs-file", &lines_arg, "--result-from", &missing]);
    let (code, _) = reduce(&nats, dir.path(), &store_step);
    assert_ne!(code, Some(0));
    let message = read(dir.path(), "termination-log");
    assert!(
        message.contains("the reducer container wrote no result to") && message.contains(&missing),
        "{message}"
    );
    assert!(store.result_info("none").is_none());
}
