//! The broker layer: what the sidecars need of a message broker, as two small traits with
//! one implementation each, on NATS JetStream:
//! - [`Broker`] ([`JetStream`]): topics and named consumers, for the queue sidecar;
//! - [`OutputStore`] ([`JetStreamStore`]): the outputs of a batch run's items and the
//!   run's result, for `output` and `reduce`.
//!
//! The contract every [`Broker`] keeps:
//! - a topic is a named, durable, ordered log; a publish carries an id, and a second
//!   publish of the same id within the broker's dedup window is dropped (and reported as
//!   a duplicate), so a replay publishes nothing twice;
//! - a consumer is named: replicas with one name share a topic's messages, consumers with
//!   different names each see all of them;
//! - a delivery is settled exactly one way: acked (done), retried after a delay, or left
//!   unsettled, in which case the broker delivers it again after the consumer's ack wait
//!   (a crashed pod loses nothing).
//!
//! The contract every [`OutputStore`] keeps:
//! - an output is the last value stored under its key (`<run>.<item>`): an item tried
//!   again replaces its output, it does not add one;
//! - the outputs of a run are read as one stream, in the order they were stored, each key
//!   once, in memory that does not grow with their number, and the stream ends once every
//!   output stored when it started has come;
//! - a result object exists only once all of it is stored: a writer that dies part way
//!   leaves no object under the name it was writing.

mod jetstream;
mod store;

pub use jetstream::{JetStream, StreamSettings};
pub use store::{BucketSettings, JetStreamStore};

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::io::AsyncRead;

/// What went wrong talking to the broker. The messages name the topic, consumer, bucket,
/// key or object.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection to the broker.
    #[error("cannot connect to the broker at {url}: {reason}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// The stream that holds the topics could not be found or made.
    #[error("stream {stream}: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// A consumer could not be made, read or pulled from.
    #[error("consumer {consumer} of topic {topic}: {reason}")]
    Consumer {
        /// The consumer.
        consumer: String,
        /// Its topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The broker did not take a message.
    #[error("publish to {topic}: {reason}")]
    Publish {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A message over the broker's size limit.
    #[error("publish to {topic}: the message is {size} bytes, over the broker's limit")]
    TooLarge {
        /// The topic.
        topic: String,
        /// The payload's size.
        size: usize,
    },
    /// An ack or a retry did not reach the broker (the message will come again).
    #[error("settle message {id}: {reason}")]
    Settle {
        /// The message id.
        id: String,
        /// Why.
        reason: String,
    },
    /// A key-value or object store bucket could not be found or made.
    #[error("bucket {bucket}: {reason}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// Why.
        reason: String,
    },
    /// An output over the size allowed: by the caller, or by the broker's message limit.
    #[error("output {key} is {size} bytes, over the limit of {limit} bytes ({by})")]
    OutputTooLarge {
        /// Its key.
        key: String,
        /// Its size.
        size: usize,
        /// The limit it is over.
        limit: usize,
        /// Whose limit: the caller's, or the broker's `max_payload`.
        by: &'static str,
    },
    /// The store did not take an output.
    #[error("put {key} in bucket {bucket}: {reason}")]
    Put {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The outputs of a run could not be read.
    #[error("read the outputs {prefix}.* of bucket {bucket}: {reason}")]
    Read {
        /// The bucket.
        bucket: String,
        /// The key prefix (the run).
        prefix: String,
        /// Why.
        reason: String,
    },
    /// A result object could not be read, written or renamed.
    #[error("object {name} of bucket {bucket}: {reason}")]
    Object {
        /// The bucket.
        bucket: String,
        /// The object.
        name: String,
        /// Why.
        reason: String,
    },
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The topic.
    pub topic: String,
    /// The message id the broker dedups on.
    pub id: String,
    /// Headers carried with the message (`Content-Type`, a dead letter's reason).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub payload: Bytes,
}

/// What the broker said of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The message's position in the broker's log.
    pub sequence: u64,
    /// A message with this id was already published within the dedup window: nothing new
    /// was stored.
    pub duplicate: bool,
}

/// A message delivered to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The id it was published with (or one the broker derived from its position, for a
    /// message published without one).
    pub id: String,
    /// The topic it came from.
    pub topic: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub payload: Bytes,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub attempt: u64,
    /// What the broker needs to settle it.
    pub token: String,
}

impl Delivery {
    /// The value of header `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How far behind a consumer is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Messages of its topic not yet delivered to it.
    pub pending: u64,
    /// Messages delivered and not yet settled, in every replica.
    pub in_flight: u64,
}

impl Backlog {
    /// Messages the consumer has still to finish: the lag.
    pub fn lag(&self) -> u64 {
        self.pending + self.in_flight
    }
}

/// A consumer of one topic, as the broker knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    /// Its name (shared by its replicas).
    pub name: String,
    /// The topic it reads.
    pub topic: String,
    /// How long a delivery may stay unsettled before the broker delivers it again.
    pub ack_wait: Duration,
}

/// A message broker with topics, dedup on publish, and named consumers with acks.
pub trait Broker: Clone + Send + Sync + 'static {
    /// Publishes one message and waits until the broker has stored it (or found it a
    /// duplicate).
    fn publish(
        &self,
        message: Outgoing,
    ) -> impl Future<Output = Result<Published, BrokerError>> + Send;

    /// Makes the consumer if it does not exist yet, or brings its settings up to date.
    fn ensure_consumer(
        &self,
        consumer: &ConsumerSpec,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Asks for up to `max` messages: they arrive on the stream as they come, and the stream
    /// ends when `max` have come or `wait` has passed. Each one counts against the
    /// consumer until it is settled.
    fn pull(
        &self,
        consumer: &ConsumerSpec,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<BoxStream<'static, Result<Delivery, BrokerError>>, BrokerError>>
    + Send;

    /// Done with a delivery: the broker never delivers it to this consumer again.
    fn ack(&self, delivery: &Delivery) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Not done: deliver it again, not before `after`.
    fn retry(
        &self,
        delivery: &Delivery,
        after: Duration,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// How far behind the consumer is.
    fn backlog(
        &self,
        consumer: &ConsumerSpec,
    ) -> impl Future<Output = Result<Backlog, BrokerError>> + Send;
}

/// One output: its key without the run's prefix, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The item's key (`<key>` of `<run>.<key>`).
    pub key: String,
    /// The output as the worker wrote it.
    pub value: Bytes,
}

/// The outputs of a run, as a stream.
pub struct Outputs {
    /// How many outputs the store held when the stream started: the stream ends after
    /// them (and any stored while it runs). Zero: the stream is empty.
    pub expected: u64,
    /// The outputs, in the order they were stored.
    pub stream: BoxStream<'static, Result<Output, BrokerError>>,
}

/// A stored result object, as the store describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultInfo {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The id of this version of it: a new write gets a new one.
    pub id: String,
    /// When it was written (RFC 3339), if the store says.
    pub modified: Option<String>,
    /// The summary it was committed with.
    pub summary: Option<String>,
}

/// A reader of a result object's bytes.
pub type ResultReader = std::pin::Pin<Box<dyn AsyncRead + Send>>;

/// Where the items of a batch run keep their outputs and the run keeps its result: a
/// key-value bucket of outputs, and an object store bucket of results.
pub trait OutputStore: Clone + Send + Sync + 'static {
    /// Stores `value` under `key` of `bucket` (making the bucket when it is missing),
    /// replacing what the key held. A value over `max` bytes is refused before anything is
    /// sent ([`BrokerError::OutputTooLarge`]), as is one over the broker's message limit.
    fn put_output(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        max: usize,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The last value of every key `<prefix>.*` of `bucket`, in the order they were
    /// stored; deleted keys are left out. A bucket that does not exist holds none.
    fn outputs(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> impl Future<Output = Result<Outputs, BrokerError>> + Send;

    /// The object `name` of `bucket`, if it exists.
    fn result_info(
        &self,
        bucket: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ResultInfo>, BrokerError>> + Send;

    /// Writes the object `name` of `bucket` (making the bucket when it is missing) from
    /// `data`, read to its end, replacing any object of that name. The object exists only
    /// once `data` has ended and all of it is stored.
    fn put_result(
        &self,
        bucket: &str,
        name: &str,
        data: &mut (dyn AsyncRead + Unpin + Send),
    ) -> impl Future<Output = Result<ResultInfo, BrokerError>> + Send;

    /// Renames the object `from` to `to`, with `summary`, in one step: `to` appears whole
    /// with its summary, or not at all. Fails when `to` exists already.
    fn commit_result(
        &self,
        bucket: &str,
        from: &str,
        to: &str,
        summary: &str,
    ) -> impl Future<Output = Result<ResultInfo, BrokerError>> + Send;

    /// The bytes of the object `name` of `bucket`.
    fn get_result(
        &self,
        bucket: &str,
        name: &str,
    ) -> impl Future<Output = Result<ResultReader, BrokerError>> + Send;
}
