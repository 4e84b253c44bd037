//! The broker layer: what the queue sidecar (and, later, batch outputs) need of a message
//! broker, as one small trait, [`Broker`], with one implementation, [`JetStream`].
//!
//! The contract every implementation keeps:
//! - a topic is a named, durable, ordered log; a publish carries an id, and a second
//!   publish of the same id within the broker's dedup window is dropped (and reported as
//!   a duplicate), so a replay publishes nothing twice;
//! - a consumer is named: replicas with one name share a topic's messages, consumers with
//!   different names each see all of them;
//! - a delivery is settled exactly one way: acked (done), retried after a delay, or left
//!   unsettled, in which case the broker delivers it again after the consumer's ack wait
//!   (a crashed pod loses nothing).

mod jetstream;

pub use jetstream::{JetStream, StreamSettings};

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

/// What went wrong talking to the broker. The messages name the topic or consumer.
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
