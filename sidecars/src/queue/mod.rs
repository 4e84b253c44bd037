//! `rigging-sidecar queue`: the pub/sub ambassador (book ch. 3 and 8). The app speaks plain
//! HTTP on localhost and never links a broker client:
//! - it publishes with `POST /publish/{topic}` on `--listen` (an `Idempotency-Key` header
//!   becomes the message id, so a retried publish is stored once);
//! - with `--deliver-to`, each message of the `--subscribe` topics is posted to it; a 2xx
//!   answer acknowledges it, and a non-empty answer body is published to the `--output`
//!   topics (or the answer's `Rigging-Topic`);
//! - with `--stage`, the sidecar routes messages itself (copy, filter, split, shard).
//!
//! Delivery is at least once. A failed delivery (not 2xx, no answer within
//! `--delivery-timeout`, the app not listening) comes again after a backoff that doubles up
//! to `--max-backoff`; after `--max-deliveries` it goes to `TOPIC.dead-letter` with the
//! reason in `Rigging-Dead-Letter-Reason`, and is acknowledged, so the consumer moves on.
//! A message that can never be routed (not JSON for a CEL stage) goes there at once. At most
//! `--max-in-flight` messages are unsettled in the pod: a slow app slows its consumer.
//!
//! Outputs have ids derived from the input's id, the consumer and the output's index, so
//! a stage that replays a message (it crashed before its ack) publishes nothing new within
//! the broker's dedup window.

mod consume;
mod metrics;
mod publish;
pub mod stage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rigging_crds::sidecar::queue::{DEFAULT_NATS, QueueArgsError};

use crate::broker::{Broker, BrokerError, ConsumerSpec, JetStream, StreamSettings};
use crate::runtime::{self, Lifecycle, admin};
use consume::{App, Consumer};
use metrics::Metrics;
use stage::{Router, StageError};

/// Command-line arguments of `rigging-sidecar queue`: the contract type the operator
/// renders.
pub use rigging_crds::sidecar::queue::QueueArgs as Args;

/// How long one pull waits for messages before it asks again.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// How often each consumer's lag is read from the broker.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Why the queue sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flags break a rule of the contract.
    #[error(transparent)]
    Args(#[from] QueueArgsError),
    /// A built-in stage's expressions do not compile.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// The broker client could not be set up.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The ports or the metrics could not be set up.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
}

/// Runs the queue sidecar until SIGTERM, then drains.
pub async fn run(args: Args) -> Result<(), Error> {
    let started = Instant::now();
    args.check()?;
    let router = args
        .stage
        .map(|stage| Router::new(stage, &args))
        .transpose()?;
    let app = args
        .deliver_to
        .as_deref()
        .map(App::new)
        .transpose()
        .map_err(QueueArgsError::DeliverTo)?;
    let life = Lifecycle::new();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).map_err(runtime::Error::from)?;
    admin::spawn(args.admin, registry, life.clone()).await?;
    let listener = runtime::bind(args.listen).await?;
    let broker = JetStream::connect(
        args.nats.as_deref().unwrap_or(DEFAULT_NATS),
        StreamSettings {
            name: args.stream.clone(),
            replicas: args.stream_replicas as usize,
            retention: args.retention,
            dedup_window: args.dedup_window,
        },
    )
    .await?;

    let name = args.consumer_name();
    let specs: Vec<ConsumerSpec> = args
        .subscribe
        .iter()
        .map(|topic| ConsumerSpec {
            name: name.clone(),
            topic: topic.clone(),
            // Twice the app's deadline: time for the outputs to be published and the ack
            // to arrive; also how long a killed pod's messages wait to come again.
            ack_wait: args.delivery_timeout.saturating_mul(2),
        })
        .collect();
    if !prepare(&broker, &specs, &life).await {
        return Ok(());
    }
    life.set_ready(true);
    tracing::info!(
        listen = %args.listen,
        stream = %args.stream,
        consumer = %name,
        topics = ?args.subscribe,
        stage = ?args.stage,
        deliver_to = args.deliver_to.as_deref().unwrap_or(""),
        startup_ms = started.elapsed().as_secs_f64() * 1e3,
        "queue sidecar ready"
    );

    let consumer = Arc::new(Consumer::new(
        broker.clone(),
        name,
        router,
        app,
        &args,
        metrics.clone(),
    ));
    let mut loops = Vec::new();
    for spec in specs {
        loops.push(tokio::spawn(
            consumer.clone().run(spec.clone(), life.clone()),
        ));
        tokio::spawn(watch_lag(
            broker.clone(),
            spec,
            metrics.clone(),
            life.clone(),
        ));
    }
    publish::serve(listener, broker, metrics, &life).await;
    for pulling in loops {
        let _ = pulling.await;
    }
    if !life.drain(args.drain_timeout).await {
        tracing::warn!(
            deadline = ?args.drain_timeout,
            "messages still in flight at the drain deadline: the broker delivers them again after the ack wait"
        );
    }
    Ok(())
}

/// Makes the stream and the consumers, retrying while the broker is not there yet. False
/// when the sidecar was stopped first.
async fn prepare(broker: &JetStream, specs: &[ConsumerSpec], life: &Lifecycle) -> bool {
    let mut logged = false;
    loop {
        let attempt = async {
            broker.ensure_stream().await?;
            for spec in specs {
                broker.ensure_consumer(spec).await?;
            }
            Ok::<(), BrokerError>(())
        };
        let error = tokio::select! {
            _ = life.stopping() => return false,
            result = attempt => match result {
                Ok(()) => return true,
                Err(e) => e,
            },
        };
        // Once at warn, then quietly: a broker starting beside the pipeline is normal.
        match logged {
            false => tracing::warn!(error = %error, "broker not ready, retrying every second"),
            true => tracing::debug!(error = %error, "broker not ready"),
        }
        logged = true;
        tokio::select! {
            _ = life.stopping() => return false,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Keeps the lag gauge of one consumer current.
async fn watch_lag(broker: JetStream, spec: ConsumerSpec, metrics: Metrics, life: Lifecycle) {
    let gauge = metrics.lag.with_label_values(&[&spec.topic]);
    loop {
        match broker.backlog(&spec).await {
            Ok(backlog) => gauge.set(i64::try_from(backlog.lag()).unwrap_or(i64::MAX)),
            Err(e) => tracing::debug!(error = %e, "cannot read the consumer's lag"),
        }
        tokio::select! {
            _ = life.stopping() => return,
            _ = tokio::time::sleep(LAG_INTERVAL) => {}
        }
    }
}
