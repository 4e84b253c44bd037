//! Consuming: pulling no more than the pod may have in flight, handing each message to the
//! app or the built-in stage, publishing what comes out, and settling the message: ack,
//! retry after a backoff, or dead-letter.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use rigging_crds::sidecar::queue::{DEAD_LETTER_SUFFIX, dead_letter_topic, is_topic};
use tokio::sync::Semaphore;

use super::metrics::{Metrics, Settled, TopicMetrics};
use super::stage::{Route, Router, output_id};
use super::{Args, PULL_WAIT};
use crate::broker::{Broker, BrokerError, ConsumerSpec, Delivery, Outgoing};
use crate::forwarding::{Pool, PoolConfig, error_chain};
use crate::runtime::Lifecycle;

/// An app's answer is read up to this size; more fails the delivery.
const MAX_ANSWER: usize = 1 << 20;

/// Headers of a message as the app sees it, and of a dead letter.
pub mod headers {
    /// The message id.
    pub const MESSAGE_ID: &str = "rigging-message-id";
    /// The topic it came from.
    pub const TOPIC: &str = "rigging-topic";
    /// 1 for the first delivery, then 2, 3, …
    pub const DELIVERY: &str = "rigging-delivery";
    /// A dead letter's reason.
    pub const DEAD_LETTER_REASON: &str = "Rigging-Dead-Letter-Reason";
    /// The consumer that gave up on a dead letter.
    pub const DEAD_LETTER_CONSUMER: &str = "Rigging-Dead-Letter-Consumer";
    /// How many times a dead letter was delivered.
    pub const DEAD_LETTER_DELIVERIES: &str = "Rigging-Dead-Letter-Deliveries";
}

/// The app that receives deliveries: `--deliver-to`.
pub struct App {
    pool: Pool,
    authority: String,
    path: String,
}

impl App {
    /// The app at `url` (`http://HOST:PORT/PATH`); the URL back as the error when it is not
    /// one.
    pub fn new(url: &str) -> Result<App, String> {
        let uri: http::Uri = url.parse().map_err(|_| url.to_owned())?;
        let authority = match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(authority)) if authority.port_u16().is_some() => {
                authority.to_string()
            }
            _ => return Err(url.to_owned()),
        };
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(App {
            pool: Pool::new(authority.clone(), PoolConfig::default()),
            authority,
            path,
        })
    }

    /// Posts the message; the answer's topic (if it named one) and body on a 2xx.
    async fn deliver(
        &self,
        delivery: &Delivery,
        timeout: Duration,
    ) -> Result<(Option<String>, Option<String>, Bytes), String> {
        let mut request = Request::post(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(headers::MESSAGE_ID, delivery.id.as_str())
            .header(headers::TOPIC, delivery.topic.as_str())
            .header(headers::DELIVERY, delivery.attempt)
            .body(Either::Right(Full::new(delivery.payload.clone())))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        for (name, value) in &delivery.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                request.headers_mut().append(name, value);
            }
        }
        let exchange = async {
            let response = self
                .pool
                .send(request)
                .await
                .map_err(|failed| error_chain(&failed.error))?;
            let status = response.status();
            let topic = response
                .headers()
                .get(headers::TOPIC)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("cannot read the answer: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(answer_error(status, &body));
            }
            Ok((topic, content_type, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    }
}

fn answer_error(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.trim();
    match text.is_empty() {
        true => format!("the app answered {status}"),
        false => format!("the app answered {status}: {text}"),
    }
}

/// What became of one delivery before it is settled.
enum Outcome {
    /// Done; publish these (topic, content type, body) first.
    Handled(Vec<(String, Option<String>, Bytes)>),
    /// Dropped on purpose.
    Filtered,
    /// Will never succeed: dead-letter it now.
    Poison(String),
    /// Failed this time.
    Failed(String),
}

/// One consumer (a stage) of one or more topics in this pod.
pub struct Consumer<B> {
    broker: B,
    name: String,
    router: Option<Router>,
    app: Option<App>,
    outputs: Vec<String>,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    max_deliveries: u64,
    delivery_timeout: Duration,
    backoff: Duration,
    max_backoff: Duration,
    metrics: Metrics,
    /// The series of each subscribed topic.
    topics: HashMap<String, TopicMetrics>,
    /// Deliveries of a message (by topic and id) that ended because the broker did not
    /// take its outputs: not the message's fault, so not counted against
    /// `--max-deliveries`. Kept until the message is settled here, and for at most
    /// [`BROKER_FAILURES_KEPT`] messages at once.
    broker_failures: Mutex<HashMap<(String, String), u64>>,
}

/// Messages whose broker failures are remembered at once; beyond that a broker failure
/// counts as the message's own, as it would in a new pod.
const BROKER_FAILURES_KEPT: usize = 10_000;

impl<B: Broker> Consumer<B> {
    /// A consumer named `name` that hands messages to `router` or `app`.
    pub fn new(
        broker: B,
        name: String,
        router: Option<Router>,
        app: Option<App>,
        args: &Args,
        metrics: Metrics,
    ) -> Self {
        Self {
            broker,
            name,
            router,
            app,
            outputs: args.outputs.clone(),
            slots: Arc::new(Semaphore::new(args.max_in_flight as usize)),
            max_in_flight: args.max_in_flight as usize,
            max_deliveries: u64::from(args.max_deliveries),
            delivery_timeout: args.delivery_timeout,
            backoff: args.backoff,
            max_backoff: args.max_backoff,
            topics: args
                .subscribe
                .iter()
                .map(|topic| (topic.clone(), metrics.topic(topic)))
                .collect(),
            metrics,
            broker_failures: Mutex::default(),
        }
    }

    /// The series of `topic`: looked up at start for every subscribed topic.
    fn counts(&self, topic: &str) -> Cow<'_, TopicMetrics> {
        match self.topics.get(topic) {
            Some(counts) => Cow::Borrowed(counts),
            None => Cow::Owned(self.metrics.topic(topic)),
        }
    }

    /// Pulls `spec`'s topic until the sidecar stops. Each pull asks for as many messages as
    /// there are free slots, so the pod never holds more than `--max-in-flight`.
    pub async fn run(self: Arc<Self>, spec: ConsumerSpec, life: Lifecycle) {
        let mut failures = 0u32;
        loop {
            let mut slots = tokio::select! {
                _ = life.stopping() => return,
                slot = self.slots.clone().acquire_owned() => slot.expect("never closed"),
            };
            while slots.num_permits() < self.max_in_flight {
                match self.slots.clone().try_acquire_owned() {
                    Ok(more) => slots.merge(more),
                    Err(_) => break,
                }
            }
            let mut messages = match self
                .broker
                .pull(&spec, slots.num_permits(), PULL_WAIT)
                .await
            {
                Ok(messages) => messages,
                Err(e) => {
                    failures += 1;
                    drop(slots);
                    let wait = self.backoff_for(failures).min(Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot pull");
                    tokio::select! {
                        _ = life.stopping() => return,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            failures = 0;
            loop {
                let next = tokio::select! {
                    _ = life.stopping() => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => {
                        // One slot per message asked for; should the broker send more, the
                        // extra one waits for a slot rather than exceed the bound.
                        let slot = match slots.split(1) {
                            Some(slot) => slot,
                            None => self
                                .slots
                                .clone()
                                .acquire_owned()
                                .await
                                .expect("never closed"),
                        };
                        let this = self.clone();
                        life.tracker().spawn(async move {
                            this.handle(delivery).await;
                            drop(slot);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "pull ended early");
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    fn backoff_for(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }

    async fn handle(&self, delivery: Delivery) {
        // The topic's series, looked up once for the whole of this delivery.
        let counts = self.counts(&delivery.topic);
        let counts = counts.as_ref();
        counts.delivered.inc();
        if delivery.attempt > 1 {
            counts.redelivered.inc();
        }
        self.metrics.in_flight.inc();
        self.metrics.accounting.delivered();
        let attempt = self.own_attempt(&delivery);
        let outcome = if attempt > self.max_deliveries {
            // Delivered that often without being settled: each delivery timed out or its
            // pod died before it could fail it.
            Outcome::Poison(format!("delivered {} times without an answer", attempt - 1))
        } else {
            self.process(&delivery, counts).await
        };
        let settled = self.settle(&delivery, outcome, counts).await;
        if settled != Settled::Retried {
            let mut failures = self.broker_failures.lock().expect("broker failures lock");
            // Empty but through a broker outage: no key to build for every delivery.
            if !failures.is_empty() {
                failures.remove(&(delivery.topic.clone(), delivery.id.clone()));
            }
        }
        self.metrics.accounting.settled(settled);
        self.metrics.in_flight.dec();
    }

    /// Which delivery of the message this is, not counting those the broker failed.
    fn own_attempt(&self, delivery: &Delivery) -> u64 {
        let failures = self.broker_failures.lock().expect("broker failures lock");
        // Empty but through a broker outage: no key to build for every delivery.
        let failed = if failures.is_empty() {
            0
        } else {
            let key = (delivery.topic.clone(), delivery.id.clone());
            failures.get(&key).copied().unwrap_or(0)
        };
        delivery.attempt.saturating_sub(failed)
    }

    async fn process(&self, delivery: &Delivery, counts: &TopicMetrics) -> Outcome {
        if let Some(router) = &self.router {
            let content_type = delivery.header("content-type").map(str::to_owned);
            return match router.route(&delivery.topic, &delivery.id, &delivery.payload) {
                Route::To(topics) => Outcome::Handled(
                    topics
                        .into_iter()
                        .map(|t| (t, content_type.clone(), delivery.payload.clone()))
                        .collect(),
                ),
                Route::Filtered => Outcome::Filtered,
                Route::Poison(reason) => Outcome::Poison(reason),
            };
        }
        let app = self.app.as_ref().expect("checked: --deliver-to or --stage");
        let started = Instant::now();
        let answer = app.deliver(delivery, self.delivery_timeout).await;
        counts
            .delivery_duration
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Err(reason) => Outcome::Failed(reason),
            Ok((_, _, body)) if body.is_empty() => Outcome::Handled(Vec::new()),
            Ok((Some(topic), content_type, body)) => match is_topic(&topic) {
                true => Outcome::Handled(vec![(topic, content_type, body)]),
                false => Outcome::Failed(format!(
                    "the app answered with Rigging-Topic {topic:?}, which is not a valid topic"
                )),
            },
            Ok((None, content_type, body)) => Outcome::Handled(
                self.outputs
                    .iter()
                    .map(|t| (t.clone(), content_type.clone(), body.clone()))
                    .collect(),
            ),
        }
    }

    async fn settle(
        &self,
        delivery: &Delivery,
        outcome: Outcome,
        counts: &TopicMetrics,
    ) -> Settled {
        let (acked, settled) = match outcome {
            Outcome::Handled(outputs) => match self.publish_outputs(delivery, outputs).await {
                Ok(published) => {
                    counts.out.inc_by(published);
                    counts.acked.inc();
                    (self.broker.ack(delivery).await, Settled::Out)
                }
                // Over the broker's size limit: the message's own doing, every time.
                Err(e @ BrokerError::TooLarge { .. }) => {
                    return self.fail(delivery, e.to_string(), counts).await;
                }
                Err(e) => return self.broker_failed(delivery, e.to_string(), counts).await,
            },
            Outcome::Filtered => {
                counts.filtered.inc();
                (self.broker.ack(delivery).await, Settled::Filtered)
            }
            Outcome::Poison(reason) => return self.dead_letter(delivery, reason, counts).await,
            Outcome::Failed(reason) => return self.fail(delivery, reason, counts).await,
        };
        if let Err(e) = acked {
            tracing::warn!(error = %e, "ack lost: the message will come again");
        }
        settled
    }

    async fn publish_outputs(
        &self,
        delivery: &Delivery,
        outputs: Vec<(String, Option<String>, Bytes)>,
    ) -> Result<u64, BrokerError> {
        let count = outputs.len() as u64;
        for (index, (topic, content_type, payload)) in outputs.into_iter().enumerate() {
            let message = Outgoing {
                topic: topic.clone(),
                id: output_id(&delivery.id, &self.name, index),
                headers: content_type
                    .map(|v| vec![("Content-Type".to_owned(), v)])
                    .unwrap_or_default(),
                payload,
            };
            match self.broker.publish(message).await {
                Ok(published) => {
                    let result = if published.duplicate {
                        "duplicate"
                    } else {
                        "stored"
                    };
                    self.metrics
                        .published
                        .with_label_values(&[&topic, result])
                        .inc();
                }
                Err(e) => {
                    self.metrics
                        .published
                        .with_label_values(&[&topic, "error"])
                        .inc();
                    return Err(e);
                }
            }
        }
        Ok(count)
    }

    /// A delivery whose outputs the broker did not take (down, failing over, no quorum):
    /// again after a backoff, however often, as the message is not at fault. Outputs
    /// stored before the failure are stored once: they are published again with their ids.
    async fn broker_failed(
        &self,
        delivery: &Delivery,
        reason: String,
        counts: &TopicMetrics,
    ) -> Settled {
        let failures = {
            let mut failures = self.broker_failures.lock().expect("broker failures lock");
            let key = (delivery.topic.clone(), delivery.id.clone());
            if failures.len() < BROKER_FAILURES_KEPT || failures.contains_key(&key) {
                let n = failures.entry(key).or_insert(0);
                *n += 1;
                *n
            } else {
                delivery.attempt
            }
        };
        let what = "outputs not stored: the broker failed; not counted against --max-deliveries";
        self.again(delivery, failures, &reason, what, counts).await
    }

    /// A failed delivery: again after a backoff, or to the dead-letter topic when it has had
    /// its deliveries.
    async fn fail(&self, delivery: &Delivery, reason: String, counts: &TopicMetrics) -> Settled {
        let attempt = self.own_attempt(delivery);
        if attempt >= self.max_deliveries {
            return self.dead_letter(delivery, reason, counts).await;
        }
        self.again(delivery, attempt, &reason, "delivery failed", counts)
            .await
    }

    /// Has the broker deliver `delivery` again after the backoff of its `failures`th
    /// failure, saying `what` happened and why.
    async fn again(
        &self,
        delivery: &Delivery,
        failures: u64,
        reason: &str,
        what: &str,
        counts: &TopicMetrics,
    ) -> Settled {
        counts.failed.inc();
        let wait = self.backoff_for(u32::try_from(failures).unwrap_or(u32::MAX));
        tracing::info!(
            id = %delivery.id,
            topic = %delivery.topic,
            delivery = delivery.attempt,
            retry_in = ?wait,
            reason = %reason,
            "{what}"
        );
        if let Err(e) = self.broker.retry(delivery, wait).await {
            tracing::warn!(error = %e, "retry lost: the message comes again after the ack wait");
        }
        Settled::Retried
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: String,
        counts: &TopicMetrics,
    ) -> Settled {
        let topic = delivery.topic.as_str();
        if topic.ends_with(DEAD_LETTER_SUFFIX) {
            // A dead letter has nowhere further to go: keep it, and try again slowly.
            counts.failed.inc();
            tracing::warn!(id = %delivery.id, topic, reason = %reason, "a dead letter failed again");
            let _ = self.broker.retry(delivery, self.max_backoff).await;
            return Settled::Retried;
        }
        let mut headers = delivery.headers.clone();
        headers.extend([
            (headers::DEAD_LETTER_REASON.to_owned(), reason.clone()),
            (headers::DEAD_LETTER_CONSUMER.to_owned(), self.name.clone()),
            (
                headers::DEAD_LETTER_DELIVERIES.to_owned(),
                delivery.attempt.to_string(),
            ),
        ]);
        let letter = Outgoing {
            topic: dead_letter_topic(topic),
            id: format!("{}/{}/dead-letter", delivery.id, self.name),
            headers,
            payload: delivery.payload.clone(),
        };
        tracing::warn!(id = %delivery.id, topic, delivery = delivery.attempt, reason = %reason, "dead-lettered");
        match self.broker.publish(letter).await {
            Ok(_) => {
                counts.dead_lettered.inc();
                if let Err(e) = self.broker.ack(delivery).await {
                    tracing::warn!(error = %e, "ack lost: the message will come again");
                }
                Settled::DeadLettered
            }
            Err(e) => {
                // Not acked: the message stays, and comes back to be dead-lettered again.
                tracing::warn!(error = %e, "cannot publish the dead letter");
                counts.failed.inc();
                let _ = self.broker.retry(delivery, self.backoff).await;
                Settled::Retried
            }
        }
    }
}
