//! `POST /publish/{topic}`: the app's way in. The body is the message; `Idempotency-Key`,
//! when given, is its id, so an app that retries a publish it is unsure of stores it once;
//! `Content-Type` travels with it. The answer is JSON: the id, the topic, the broker's
//! sequence, and whether the broker already had the message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use rigging_crds::sidecar::queue::is_topic;
use tokio::net::TcpListener;

use super::metrics::Metrics;
use crate::broker::{Broker, BrokerError, Outgoing};
use crate::forwarding;
use crate::runtime::Lifecycle;

/// NATS's default largest message; the server refuses more unless configured otherwise.
const MAX_BODY: usize = 1 << 20;
/// Connections to the publish API at once (they come from the pod's own containers).
const MAX_CONNECTIONS: usize = 1024;

/// The header whose value becomes the message id.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Serves the publish API until the sidecar stops.
pub async fn serve<B: Broker>(
    listener: TcpListener,
    broker: B,
    metrics: Metrics,
    life: &Lifecycle,
) {
    let ids = Arc::new(Ids::new());
    let builder = Arc::new(forwarding::server_builder(std::time::Duration::from_secs(
        30,
    )));
    forwarding::accept_loop(&listener, MAX_CONNECTIONS, life, |tcp, _peer, slot| {
        let broker = broker.clone();
        let metrics = metrics.clone();
        let ids = ids.clone();
        let builder = builder.clone();
        let stop = life.token().clone();
        async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let broker = broker.clone();
                let metrics = metrics.clone();
                let ids = ids.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(answer(req, &broker, &metrics, &ids).await)
                }
            });
            let _ = forwarding::serve_connection(&builder, tcp, service, &stop).await;
        }
    })
    .await;
}

async fn answer<B: Broker>(
    req: Request<Incoming>,
    broker: &B,
    metrics: &Metrics,
    ids: &Ids,
) -> Response<Full<Bytes>> {
    let Some(topic) = req
        .uri()
        .path()
        .strip_prefix("/publish/")
        .map(str::to_owned)
    else {
        return forwarding::text(
            StatusCode::NOT_FOUND,
            "not found: publish with POST /publish/{topic}\n",
        );
    };
    if req.method() != Method::POST {
        return forwarding::text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
    }
    if !is_topic(&topic) {
        return forwarding::text(
            StatusCode::BAD_REQUEST,
            format!(
                "topic {topic:?} is not valid: use a-z, 0-9 and '-' (TOPIC.dead-letter for a dead-letter topic)\n"
            ),
        );
    }
    let id = match req.headers().get(IDEMPOTENCY_KEY).map(HeaderValue::to_str) {
        Some(Ok(key)) if !key.is_empty() => key.to_owned(),
        Some(_) => {
            return forwarding::text(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be non-empty visible ASCII\n",
            );
        }
        None => ids.next(),
    };
    let headers = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| vec![("Content-Type".to_owned(), v.to_owned())])
        .unwrap_or_default();
    let payload = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return forwarding::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a message is at most {MAX_BODY} bytes\n"),
            );
        }
        Err(e) => {
            return forwarding::text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}\n"),
            );
        }
    };
    let message = Outgoing {
        topic: topic.clone(),
        id: id.clone(),
        headers,
        payload,
    };
    match broker.publish(message).await {
        Ok(published) => {
            let result = if published.duplicate {
                "duplicate"
            } else {
                "stored"
            };
            metrics.published.with_label_values(&[&topic, result]).inc();
            let body = serde_json::json!({
                "id": id,
                "topic": topic,
                "sequence": published.sequence,
                "duplicate": published.duplicate,
            });
            let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            metrics
                .published
                .with_label_values(&[&topic, "error"])
                .inc();
            let status = match e {
                BrokerError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            tracing::warn!(topic = %topic, error = %e, "publish failed");
            forwarding::text(status, format!("{e}\n"))
        }
    }
}

/// Ids for messages published without an `Idempotency-Key`: unique to this process (the
/// pod name or the pid, and the start time) and counted up.
struct Ids {
    prefix: String,
    next: AtomicU64,
}

impl Ids {
    fn new() -> Ids {
        let who =
            std::env::var("POD_NAME").unwrap_or_else(|_| format!("pid{}", std::process::id()));
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ids {
            prefix: format!("{who}-{started:x}"),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}
