//! [`Broker`] on NATS JetStream: one stream holds every topic (topic `T` is subject
//! `STREAM.T`), publish dedup is the stream's `Nats-Msg-Id` window (the id is sent as
//! `TOPIC/ID`, so one id may be used on several topics), and each consumer is a
//! durable pull consumer per topic with explicit acks.
//!
//! JetStream gives up on a message after the consumer's `max_deliver`; that would be a
//! silent loss, so the consumers here deliver without limit and the queue sidecar, which
//! sees the attempt count, moves a message to its dead-letter topic itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{Backlog, Broker, BrokerError, ConsumerSpec, Delivery, Outgoing, Published};

/// How the stream is made when it does not exist yet. An existing stream is used as it is:
/// its owner (the operator, or whoever made it) decides its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// The stream's name; its subjects are `NAME.>`.
    pub name: String,
    /// Copies of each message (1, or 3 on a 3-node cluster).
    pub replicas: usize,
    /// How long a message is kept.
    pub retention: Duration,
    /// The dedup window.
    pub dedup_window: Duration,
}

/// A connection to a JetStream server and the stream that holds the topics.
#[derive(Clone)]
pub struct JetStream {
    client: async_nats::Client,
    context: Context,
    stream: Arc<str>,
    settings: Arc<StreamSettings>,
    /// Consumers made by `ensure_consumer`, so that a pull needs no lookup.
    consumers: Arc<Mutex<HashMap<String, PullConsumer>>>,
}

impl JetStream {
    /// Connects to `url`. The first connection is retried in the background: a broker that
    /// is not up yet (it starts beside the pipeline) is waited for, not a crash.
    pub async fn connect(url: &str, settings: StreamSettings) -> Result<Self, BrokerError> {
        let client = connect(url, "rigging-sidecar-queue", None).await?;
        let context = jetstream::new(client.clone());
        Ok(Self {
            client,
            context,
            stream: Arc::from(settings.name.as_str()),
            settings: Arc::new(settings),
            consumers: Arc::default(),
        })
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Makes the stream when it does not exist.
    pub async fn ensure_stream(&self) -> Result<(), BrokerError> {
        let settings = &*self.settings;
        let config = stream::Config {
            name: settings.name.clone(),
            subjects: vec![format!("{}.>", settings.name)],
            storage: StorageType::File,
            num_replicas: settings.replicas,
            max_age: settings.retention,
            duplicate_window: settings.dedup_window,
            ..Default::default()
        };
        self.context
            .get_or_create_stream(config)
            .await
            .map(drop)
            .map_err(|e| BrokerError::Stream {
                stream: settings.name.clone(),
                reason: e.to_string(),
            })
    }

    fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.stream)
    }

    fn consumer_error(consumer: &ConsumerSpec, reason: impl ToString) -> BrokerError {
        BrokerError::Consumer {
            consumer: consumer.name.clone(),
            topic: consumer.topic.clone(),
            reason: reason.to_string(),
        }
    }

    /// The durable name of `consumer` on the broker: one per topic it reads.
    fn durable(consumer: &ConsumerSpec) -> String {
        format!("{}_{}", consumer.name, consumer.topic.replace('.', "_"))
    }

    fn delivery(&self, message: jetstream::Message) -> Result<Delivery, String> {
        let info = message.info().map_err(|e| e.to_string())?;
        let attempt = u64::try_from(info.delivered).unwrap_or(1);
        let sequence = info.stream_sequence;
        let message = message.message;
        let topic = message
            .subject
            .as_str()
            .strip_prefix(&*self.stream)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(message.subject.as_str())
            .to_owned();
        let mut id = None;
        let mut headers = Vec::new();
        for (name, values) in message.headers.iter().flat_map(HeaderMap::iter) {
            let name: &str = name.as_ref();
            for value in values {
                if name.eq_ignore_ascii_case(async_nats::header::NATS_MESSAGE_ID.as_ref()) {
                    id = Some(value.as_str().to_owned());
                } else {
                    headers.push((name.to_owned(), value.as_str().to_owned()));
                }
            }
        }
        let token = message
            .reply
            .map(|reply| reply.to_string())
            .ok_or("a delivery without an ack subject")?;
        Ok(Delivery {
            // Stable across redeliveries, so the ids derived from it are too.
            id: match id {
                Some(id) => match id
                    .strip_prefix(topic.as_str())
                    .and_then(|i| i.strip_prefix('/'))
                {
                    Some(own) => own.to_owned(),
                    None => id,
                },
                None => format!("{}-{sequence}", self.stream),
            },
            topic,
            headers,
            payload: message.payload,
            attempt,
            token,
        })
    }

    async fn settle(&self, delivery: &Delivery, reply: Bytes) -> Result<(), BrokerError> {
        self.client
            .publish(delivery.token.clone(), reply)
            .await
            .map_err(|e| BrokerError::Settle {
                id: delivery.id.clone(),
                reason: e.to_string(),
            })
    }
}

/// A client of the NATS server(s) at `url` (several comma-separated, for a cluster),
/// named `name` on the server. It returns at once: the first connection is retried in the
/// background, so a broker that starts beside the sidecar is waited for, not a crash, and
/// requests made meanwhile wait or time out. `events`, when given, holds the client's last
/// connection event (`client error: …`, `disconnected`), which is what a person needs to
/// read when the broker never answers.
pub(super) async fn connect(
    url: &str,
    name: &str,
    events: Option<Arc<Mutex<String>>>,
) -> Result<async_nats::Client, BrokerError> {
    // Several servers of a cluster, comma-separated: the client tries them in turn and
    // moves to another when its server goes.
    let servers = url
        .split(',')
        .map(|server| server.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BrokerError::Connect {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    if let Some(events) = events {
        options = options.event_callback(move |event| {
            let events = events.clone();
            async move {
                *events.lock().expect("events lock") = event.to_string();
            }
        });
    }
    options
        .connect(servers.as_slice())
        .await
        .map_err(|e| BrokerError::Connect {
            url: url.to_owned(),
            reason: e.to_string(),
        })
}

impl Broker for JetStream {
    async fn publish(&self, message: Outgoing) -> Result<Published, BrokerError> {
        let topic = message.topic;
        let size = message.payload.len();
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        let publish = PublishMessage::build()
            .headers(headers)
            .message_id(format!("{topic}/{}", message.id))
            .payload(message.payload);
        let error = |e: &dyn std::fmt::Display| BrokerError::Publish {
            topic: topic.clone(),
            reason: e.to_string(),
        };
        let ack = match self
            .context
            .send_publish(self.subject(&topic), publish)
            .await
        {
            Ok(ack) => ack,
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                return Err(BrokerError::TooLarge { topic, size });
            }
            Err(e) => return Err(error(&e)),
        };
        let ack = ack.await.map_err(|e| error(&e))?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn ensure_consumer(&self, consumer: &ConsumerSpec) -> Result<(), BrokerError> {
        let durable = Self::durable(consumer);
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: self.subject(&consumer.topic),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: consumer.ack_wait,
            // Unlimited: the sidecar dead-letters, so nothing is dropped unseen.
            max_deliver: -1,
            // The per-pod `--max-in-flight` is the bound; the server's default of 1,000
            // in flight per consumer would cap a stage's replicas together.
            max_ack_pending: -1,
            ..Default::default()
        };
        let made = self
            .context
            .create_consumer_on_stream(config, &*self.stream)
            .await
            .map_err(|e| Self::consumer_error(consumer, e))?;
        self.consumers
            .lock()
            .expect("consumers lock")
            .insert(durable, made);
        Ok(())
    }

    async fn pull(
        &self,
        consumer: &ConsumerSpec,
        max: usize,
        wait: Duration,
    ) -> Result<BoxStream<'static, Result<Delivery, BrokerError>>, BrokerError> {
        let made = self
            .consumers
            .lock()
            .expect("consumers lock")
            .get(&Self::durable(consumer))
            .cloned();
        let Some(made) = made else {
            return Err(Self::consumer_error(consumer, "not made yet"));
        };
        let batch = made
            .batch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| Self::consumer_error(consumer, e))?;
        let this = self.clone();
        let spec = consumer.clone();
        Ok(batch
            .map(move |message| {
                message
                    .map_err(|e| e.to_string())
                    .and_then(|message| this.delivery(message))
                    .map_err(|e| Self::consumer_error(&spec, e))
            })
            .boxed())
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        self.settle(delivery, Bytes::from_static(b"+ACK")).await
    }

    async fn retry(&self, delivery: &Delivery, after: Duration) -> Result<(), BrokerError> {
        let nak = format!("-NAK {{\"delay\":{}}}", after.as_nanos());
        self.settle(delivery, Bytes::from(nak)).await
    }

    async fn backlog(&self, consumer: &ConsumerSpec) -> Result<Backlog, BrokerError> {
        let stream = self
            .context
            .get_stream_no_info(&*self.stream)
            .await
            .map_err(|e| Self::consumer_error(consumer, e))?;
        let info = stream
            .consumer_info(Self::durable(consumer))
            .await
            .map_err(|e| Self::consumer_error(consumer, e))?;
        Ok(Backlog {
            pending: info.num_pending,
            in_flight: info.num_ack_pending as u64,
        })
    }
}
