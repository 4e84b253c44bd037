//! [`OutputStore`] on NATS JetStream: outputs in a key-value bucket (one key per item,
//! history 1, so an item tried again replaces its output), results in an object store
//! bucket.
//!
//! Reading a run is one ordered consumer over the run's subjects (`$KV.<bucket>.<run>.>`)
//! with deliver policy last-per-subject: what a key-value watch reads, one message per
//! key, in stream order, pulled in batches, so memory stays flat however many outputs
//! there are. The consumer's pending count at creation says how many there are, so a run
//! with none ends at once instead of waiting for a first message.
//!
//! An object store `put` publishes the object's chunks under a fresh id first and its
//! metadata message (the object's name, size and chunk id) last; the object is found only
//! through that last message. So an object exists whole or not at all, and a rename
//! (`commit_result`) is one more metadata message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::context::{Context, GetStreamErrorKind};
use async_nats::jetstream::object_store::{
    self, InfoErrorKind, ObjectInfo, ObjectStore, UpdateMetadata, UpdateMetadataErrorKind,
};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode, kv};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncRead;

use super::jetstream::connect;
use super::{BrokerError, Output, OutputStore, Outputs, ResultInfo, ResultReader};

/// The header a key-value delete or purge carries; a put carries none (or `PUT`).
const KV_OPERATION: &str = "KV-Operation";

/// Outputs asked for in one pull of a run's read.
const READ_BATCH: i64 = 128;

/// How the buckets this store makes are made. A bucket that exists is used as it is: its
/// owner decides its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketSettings {
    /// How long an output is kept (zero: until deleted). Results are kept until deleted.
    pub outputs_retention: Duration,
    /// Copies of each output and result (1, or 3 on a 3-node cluster).
    pub replicas: usize,
}

/// A connection to a JetStream server holding outputs and results.
#[derive(Clone)]
pub struct JetStreamStore {
    client: async_nats::Client,
    context: Context,
    url: Arc<str>,
    settings: Arc<BucketSettings>,
    /// The client's last connection event, for the message when the broker never answers.
    events: Arc<Mutex<String>>,
    /// Buckets looked up or made, so that a put needs no lookup.
    outputs: Arc<Mutex<HashMap<String, kv::Store>>>,
    results: Arc<Mutex<HashMap<String, ObjectStore>>>,
    looking_up: Arc<tokio::sync::Mutex<()>>,
}

impl JetStreamStore {
    /// Connects to `url` as `name`. Returns at once (only a malformed URL fails): the
    /// connection is made in the background and retried until the broker answers.
    pub async fn connect(
        url: &str,
        name: &str,
        settings: BucketSettings,
    ) -> Result<Self, BrokerError> {
        let events = Arc::new(Mutex::new(String::new()));
        let client = connect(url, name, Some(events.clone())).await?;
        Ok(Self {
            context: jetstream::new(client.clone()),
            client,
            url: Arc::from(url),
            settings: Arc::new(settings),
            events,
            outputs: Arc::default(),
            results: Arc::default(),
            looking_up: Arc::default(),
        })
    }

    /// Why the broker cannot be reached, when it cannot: what to add to a timeout's
    /// message. `None` while connected.
    pub fn connection_problem(&self) -> Option<String> {
        use async_nats::connection::State;
        if self.client.connection_state() == State::Connected {
            return None;
        }
        let last = self.events.lock().expect("events lock").clone();
        Some(match last.is_empty() {
            true => format!("no connection to the broker at {}", self.url),
            false => format!("no connection to the broker at {} (last: {last})", self.url),
        })
    }

    fn bucket_error(bucket: &str, reason: impl ToString) -> BrokerError {
        BrokerError::Bucket {
            bucket: bucket.to_owned(),
            reason: reason.to_string(),
        }
    }

    fn object_error(bucket: &str, name: &str, reason: impl ToString) -> BrokerError {
        BrokerError::Object {
            bucket: bucket.to_owned(),
            name: name.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// Whether the stream `name` exists; an error when the server cannot say.
    async fn stream_exists(&self, name: &str) -> Result<bool, String> {
        match self.context.get_stream(name).await {
            Ok(_) => Ok(true),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(e.to_string()),
            },
        }
    }

    /// The bucket `bucket`, whose stream is `stream`: from `cache`, else looked up with
    /// `get`, else made with `create` when `make` is set; `None` when missing otherwise.
    async fn bucket<S: Clone, E: ToString>(
        &self,
        cache: &Mutex<HashMap<String, S>>,
        bucket: &str,
        stream: &str,
        make: bool,
        get: impl AsyncFnOnce() -> Result<S, E>,
        create: impl AsyncFnOnce() -> Result<S, BrokerError>,
    ) -> Result<Option<S>, BrokerError> {
        let cached = || cache.lock().expect("buckets lock").get(bucket).cloned();
        if let Some(store) = cached() {
            return Ok(Some(store));
        }
        // One lookup (and make) at a time: many puts at once on a new bucket would each
        // try to make it, and the server refuses a stream that is being made.
        let _one = self.looking_up.lock().await;
        if let Some(store) = cached() {
            return Ok(Some(store));
        }
        let store = match get().await {
            Ok(store) => store,
            Err(err) => {
                let exists = self
                    .stream_exists(stream)
                    .await
                    .map_err(|e| Self::bucket_error(bucket, e))?;
                if exists {
                    return Err(Self::bucket_error(bucket, err));
                }
                if !make {
                    return Ok(None);
                }
                create().await?
            }
        };
        cache
            .lock()
            .expect("buckets lock")
            .insert(bucket.to_owned(), store.clone());
        Ok(Some(store))
    }

    /// The outputs bucket `bucket`: made when missing and `make` is set, `None` when
    /// missing otherwise.
    async fn outputs_bucket(
        &self,
        bucket: &str,
        make: bool,
    ) -> Result<Option<kv::Store>, BrokerError> {
        // The key-value wire format (ADR-8): bucket B is the stream KV_B.
        let stream = format!("KV_{bucket}");
        let get = async || self.context.get_key_value(bucket).await;
        let create = async || {
            // The bucket's stream as the key-value clients make it (ADR-8), made
            // directly: async-nats's `create_key_value` first asks for the account's
            // info in a shape a 2.9 server does not answer in.
            let config = stream::Config {
                name: stream.clone(),
                description: Some("Rigging: the outputs of batch runs' items, <run>.<key>".into()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: self.settings.outputs_retention,
                storage: StorageType::File,
                num_replicas: self.settings.replicas.max(1),
                discard: DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                ..Default::default()
            };
            if let Err(made) = self.context.create_stream(config).await {
                // Made by another pod meanwhile, or really not makeable.
                if !self.stream_exists(&stream).await.unwrap_or(false) {
                    return Err(Self::bucket_error(bucket, made));
                }
            }
            self.context
                .get_key_value(bucket)
                .await
                .map_err(|e| Self::bucket_error(bucket, e))
        };
        self.bucket(&self.outputs, bucket, &stream, make, get, create)
            .await
    }

    /// The results bucket `bucket`, as [`Self::outputs_bucket`] finds or makes it.
    async fn results_bucket(
        &self,
        bucket: &str,
        make: bool,
    ) -> Result<Option<ObjectStore>, BrokerError> {
        // The object store wire format (ADR-20): bucket B is the stream OBJ_B.
        let stream = format!("OBJ_{bucket}");
        let get = async || self.context.get_object_store(bucket).await;
        let create = async || {
            let config = object_store::Config {
                bucket: bucket.to_owned(),
                description: Some("Rigging: the results of batch runs, one per run".into()),
                storage: StorageType::File,
                num_replicas: self.settings.replicas,
                ..Default::default()
            };
            match self.context.create_object_store(config).await {
                Ok(store) => Ok(store),
                // Made by another pod meanwhile, or really not makeable.
                Err(made) => self
                    .context
                    .get_object_store(bucket)
                    .await
                    .map_err(|_| Self::bucket_error(bucket, made)),
            }
        };
        self.bucket(&self.results, bucket, &stream, make, get, create)
            .await
    }
}

fn result_info(info: ObjectInfo) -> ResultInfo {
    ResultInfo {
        name: info.name,
        size: info.size as u64,
        id: info.nuid,
        modified: info.modified.map(|t| t.to_string()),
        summary: info.description,
    }
}

/// Where a run's reading is: the consumer's messages, and whether the last has come.
struct Reading {
    messages: pull::Ordered,
    /// `$KV.<bucket>.<run>.`: taken off each subject to leave the item's key.
    key_prefix: String,
    bucket: String,
    prefix: String,
    done: bool,
}

impl Reading {
    fn error(&mut self, reason: impl ToString) -> BrokerError {
        self.done = true;
        BrokerError::Read {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            reason: reason.to_string(),
        }
    }

    /// The next output: `None` after the last one (the one with nothing pending behind it).
    async fn next(&mut self) -> Option<Result<Output, BrokerError>> {
        while !self.done {
            let message = match self.messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Some(Err(self.error(e))),
                None => return Some(Err(self.error("the broker ended the read early"))),
            };
            let pending = match message.info() {
                Ok(info) => info.pending,
                Err(e) => return Some(Err(self.error(e))),
            };
            self.done = pending == 0;
            let message = message.message;
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get(KV_OPERATION))
                .is_some_and(|op| op.as_str() != "PUT");
            if deleted {
                continue;
            }
            let subject = message.subject.as_str();
            let key = subject.strip_prefix(&self.key_prefix).unwrap_or(subject);
            return Some(Ok(Output {
                key: key.to_owned(),
                value: message.payload,
            }));
        }
        None
    }
}

impl OutputStore for JetStreamStore {
    async fn put_output(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        max: usize,
    ) -> Result<(), BrokerError> {
        let too_large = |limit: usize, by: &'static str| BrokerError::OutputTooLarge {
            key: key.to_owned(),
            size: value.len(),
            limit,
            by,
        };
        if value.len() > max {
            return Err(too_large(max, "the limit asked for"));
        }
        // Known once connected: a server configured below NATS's default 1 MiB refuses
        // the message whatever the caller allows, and retrying would not change that.
        let max_payload = self.client.server_info().max_payload;
        if max_payload > 0 && value.len() > max_payload {
            return Err(too_large(max_payload, "the broker's max_payload"));
        }
        let Some(store) = self.outputs_bucket(bucket, true).await? else {
            return Err(Self::bucket_error(bucket, "not made"));
        };
        store
            .put(key, value)
            .await
            .map(drop)
            .map_err(|e| BrokerError::Put {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                reason: e.to_string(),
            })
    }

    async fn outputs(&self, bucket: &str, prefix: &str) -> Result<Outputs, BrokerError> {
        let Some(store) = self.outputs_bucket(bucket, false).await? else {
            return Ok(Outputs {
                expected: 0,
                stream: futures::stream::empty().boxed(),
            });
        };
        let read_error = |reason: String| BrokerError::Read {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            reason,
        };
        let key_prefix = format!("{}{prefix}.", store.prefix);
        let consumer = store
            .stream
            .create_consumer(pull::OrderedConfig {
                description: Some(format!("rigging reduce of {prefix}")),
                filter_subject: format!("{key_prefix}>"),
                deliver_policy: DeliverPolicy::LastPerSubject,
                replay_policy: ReplayPolicy::Instant,
                // What one pull asks for (the client asks again at half): the most outputs
                // in memory at once, ~200 MiB at the 1 MB limit, a few hundred KiB for
                // typical outputs, with no loss of speed on one connection.
                max_batch: READ_BATCH,
                ..Default::default()
            })
            .await
            .map_err(|e| read_error(e.to_string()))?;
        let expected = consumer.cached_info().num_pending;
        if expected == 0 {
            return Ok(Outputs {
                expected,
                stream: futures::stream::empty().boxed(),
            });
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| read_error(e.to_string()))?;
        let reading = Reading {
            messages,
            key_prefix,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            done: false,
        };
        let stream = futures::stream::unfold(reading, |mut reading| async move {
            reading.next().await.map(|output| (output, reading))
        });
        Ok(Outputs {
            expected,
            stream: stream.boxed(),
        })
    }

    async fn result_info(
        &self,
        bucket: &str,
        name: &str,
    ) -> Result<Option<ResultInfo>, BrokerError> {
        let Some(store) = self.results_bucket(bucket, false).await? else {
            return Ok(None);
        };
        match store.info(name).await {
            Ok(info) if info.deleted => Ok(None),
            Ok(info) => Ok(Some(result_info(info))),
            Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::object_error(bucket, name, e)),
        }
    }

    async fn put_result(
        &self,
        bucket: &str,
        name: &str,
        mut data: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<ResultInfo, BrokerError> {
        let Some(store) = self.results_bucket(bucket, true).await? else {
            return Err(Self::bucket_error(bucket, "not made"));
        };
        store
            .put(name, &mut data)
            .await
            .map(result_info)
            .map_err(|e| Self::object_error(bucket, name, e))
    }

    async fn commit_result(
        &self,
        bucket: &str,
        from: &str,
        to: &str,
        summary: &str,
    ) -> Result<ResultInfo, BrokerError> {
        let Some(store) = self.results_bucket(bucket, false).await? else {
            return Err(Self::object_error(
                bucket,
                from,
                "the bucket does not exist",
            ));
        };
        // A rename purges `from`'s metadata message, then publishes `to`'s pointing at the
        // same chunks: killed in between, neither name exists and the run is reduced
        // again; `to` never exists without its summary.
        let update = UpdateMetadata {
            name: to.to_owned(),
            description: Some(summary.to_owned()),
            ..Default::default()
        };
        store
            .update_metadata(from, update)
            .await
            .map(result_info)
            .map_err(|e| match e.kind() {
                UpdateMetadataErrorKind::NameAlreadyInUse => {
                    Self::object_error(bucket, to, "exists already")
                }
                _ => Self::object_error(bucket, from, e),
            })
    }

    async fn get_result(&self, bucket: &str, name: &str) -> Result<ResultReader, BrokerError> {
        let Some(store) = self.results_bucket(bucket, false).await? else {
            return Err(Self::object_error(
                bucket,
                name,
                "the bucket does not exist",
            ));
        };
        let object = store
            .get(name)
            .await
            .map_err(|e| Self::object_error(bucket, name, e))?;
        Ok(Box::pin(object))
    }
}
