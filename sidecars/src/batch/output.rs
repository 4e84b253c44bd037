//! `rigging-sidecar output`: stores a worker's output when the worker is done.
//!
//! It runs as a native sidecar (an init container with `restartPolicy: Always`), so it
//! starts before the worker and the kubelet stops it only after the worker has exited:
//! SIGTERM is the signal that the output file is final. Until then it only serves its
//! admin port, ready at once: a native sidecar that is not ready holds the worker back,
//! and the broker may well start later than the pod.
//!
//! On SIGTERM it reads the file, refuses it when it is over `--max-size`, and stores it
//! under `<run>.<key>`, retrying until `--upload-timeout`. The outcome is one line in the
//! termination log (what the operator and `kubectl describe` read) and the exit code: 0
//! stored, 1 not.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rigging_crds::sidecar::batch::{BatchArgsError, OutputArgs};
use tokio::io::AsyncReadExt;

use crate::broker::{BrokerError, BucketSettings, JetStreamStore, OutputStore};
use crate::runtime::{self, Lifecycle, admin};

/// The first wait between two tries of a put; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why the output was not stored (or the sidecar could not start).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flags break a rule of the contract.
    #[error(transparent)]
    Args(#[from] BatchArgsError),
    /// The admin port or the metrics could not be set up.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// The broker URL is malformed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The worker wrote no output file.
    #[error("no output: the worker wrote nothing to {}", .0.display())]
    NoOutput(PathBuf),
    /// The output file could not be read.
    #[error("cannot read the output file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The output is larger than `--max-size`.
    #[error("output of item {key} is {size} bytes, over the limit of {max} bytes (--max-size)")]
    TooLarge {
        /// The item.
        key: String,
        /// The output's size.
        size: u64,
        /// `--max-size`.
        max: u64,
    },
    /// The broker refuses a message of this size.
    #[error(
        "output of item {key} is {size} bytes, over the broker's message limit of {limit} bytes (its max_payload)"
    )]
    OverBrokerLimit {
        /// The item.
        key: String,
        /// The output's size.
        size: usize,
        /// The broker's limit.
        limit: usize,
    },
    /// The broker did not take the output in time.
    #[error("cannot store output of item {key} in bucket {bucket} within {}: {reason}", humantime::format_duration(*.timeout))]
    Store {
        /// The item.
        key: String,
        /// The bucket.
        bucket: String,
        /// `--upload-timeout`.
        timeout: Duration,
        /// The last failure.
        reason: String,
    },
}

/// An output stored.
struct Stored {
    bytes: usize,
}

/// Serves the admin port until SIGTERM, then stores the output and exits.
pub async fn run(args: OutputArgs) -> Result<(), Error> {
    args.check()?;
    let life = Lifecycle::new();
    let registry = prometheus::Registry::new();
    admin::spawn(args.admin, registry, life.clone()).await?;
    life.set_ready(true);
    // Connected now, in the background, so that the connection is up by SIGTERM; a broker
    // that is not up yet is retried, not an error.
    let store = JetStreamStore::connect(
        args.nats_url(),
        "rigging-sidecar-output",
        BucketSettings {
            outputs_retention: args.retention,
            replicas: 1,
        },
    )
    .await?;
    tracing::info!(
        run = %args.run,
        key = %args.key,
        file = %args.file.display(),
        bucket = %args.bucket,
        "output sidecar ready: the output is stored on SIGTERM"
    );
    life.stopping().await;
    let outcome = store_output(&args, &store).await;
    let message = match &outcome {
        Ok(stored) => format!(
            "stored output of {} ({} bytes) in {}",
            args.key, stored.bytes, args.bucket
        ),
        Err(err) => runtime::error_chain(err),
    };
    super::write_termination_log(&args.termination_log, &message).await;
    outcome.map(|_| tracing::info!(key = %args.key, "{message}"))
}

/// Reads the output file and stores it, retrying the broker until `--upload-timeout`.
async fn store_output(args: &OutputArgs, store: &JetStreamStore) -> Result<Stored, Error> {
    let deadline = Instant::now() + args.upload_timeout;
    let value = read_output(args).await?;
    let key = args.output_key();
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let put = store.put_output(&args.bucket, &key, value.clone(), args.max_size as usize);
        let reason = match tokio::time::timeout(left, put).await {
            Ok(Ok(())) => return Ok(Stored { bytes: value.len() }),
            Ok(Err(BrokerError::OutputTooLarge { size, limit, .. })) => {
                return Err(Error::OverBrokerLimit {
                    key: args.key.clone(),
                    size,
                    limit,
                });
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        // A broker that was never reached says little more than "timed out": name it.
        let reason = match store.connection_problem() {
            Some(problem) => format!("{problem}; {reason}"),
            None => reason,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Store {
                key: args.key.clone(),
                bucket: args.bucket.clone(),
                timeout: args.upload_timeout,
                reason: match attempts {
                    1 => format!("{reason} (1 try)"),
                    n => format!("{reason} ({n} tries)"),
                },
            });
        }
        tracing::warn!(key = %args.key, error = %reason, "cannot store the output yet, retrying");
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The output file's bytes; never more than `--max-size` of them are read.
async fn read_output(args: &OutputArgs) -> Result<Bytes, Error> {
    let path = &args.file;
    let read_error = |source| Error::Read {
        path: path.clone(),
        source,
    };
    let file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoOutput(path.clone()));
        }
        Err(err) => return Err(read_error(err)),
    };
    let max = u64::from(args.max_size);
    let too_large = |size| Error::TooLarge {
        key: args.key.clone(),
        size,
        max,
    };
    let size = file.metadata().await.map_err(read_error)?.len();
    if size > max {
        return Err(too_large(size));
    }
    // Read through a limit: a worker still writing (an orphaned process) cannot make
    // this read more than the limit.
    let mut value = Vec::with_capacity(size as usize);
    file.take(max + 1)
        .read_to_end(&mut value)
        .await
        .map_err(read_error)?;
    if value.len() as u64 > max {
        return Err(too_large(value.len() as u64));
    }
    Ok(Bytes::from(value))
}
