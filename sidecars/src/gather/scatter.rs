//! The fan-out: one request to one replica of every shard, at once, with failover to
//! another replica, a hedge when a shard is slow, and the deadline over all of it.
//!
//! Every leaf request is a future owned by the client request's own future: nothing is
//! spawned. So when the deadline comes (or `first` has its answer, or a hedge's race is
//! won, or the client goes away) dropping the futures is the cancellation, and it is
//! complete: a pooled request dropped before its answer is read closes its connection, so
//! the leaf sees its client disconnect instead of working on for nobody.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use tokio::time::Instant;

use super::table::{Replica, Shard, Table};
use crate::forwarding::{Pool, RequestBody, SendError};

/// The client's request as every leaf gets it: hop-by-hop headers gone, body read whole.
pub struct Outgoing {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub uri: Uri,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Outgoing {
    fn request(&self) -> Request<RequestBody> {
        let mut request = Request::new(Either::Right(Full::new(self.body.clone())));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// A leaf's (or the merger's) answer, read whole.
#[derive(Debug, Clone)]
pub struct LeafAnswer {
    /// Who answered.
    pub address: String,
    /// Its status, below 500.
    pub status: StatusCode,
    /// Its `Content-Type`, if any.
    pub content_type: Option<HeaderValue>,
    /// Its body.
    pub body: Bytes,
}

/// Why a shard (or the merger) gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeafError {
    /// No answer within `leafTimeout`.
    #[error("timeout: {address} gave no answer within {}", humantime::format_duration(*after))]
    Timeout {
        /// The replica.
        address: String,
        /// The timeout.
        after: Duration,
    },
    /// No answer by the request's deadline; its request was cancelled.
    #[error("timeout: no answer by the deadline ({})", humantime::format_duration(*after))]
    Deadline {
        /// The deadline.
        after: Duration,
    },
    /// No connection could be made.
    #[error("connect failed: {0}")]
    Connect(String),
    /// A 5xx answer.
    #[error("status {} from {address}", status.as_u16())]
    Status {
        /// The replica.
        address: String,
        /// The status.
        status: StatusCode,
    },
    /// The exchange broke after the request was sent.
    #[error("{address} failed: {reason}")]
    Failed {
        /// The replica.
        address: String,
        /// What hyper said.
        reason: String,
    },
    /// The answer was larger than `--max-leaf-body`.
    #[error("the answer from {address} is larger than {limit} bytes")]
    TooLarge {
        /// The replica.
        address: String,
        /// The limit.
        limit: usize,
    },
}

/// How a shard's request ended.
#[derive(Debug, Clone)]
pub enum ShardResult {
    /// A replica answered (any status below 500).
    Answer(LeafAnswer),
    /// No replica did.
    Failed(LeafError),
}

impl ShardResult {
    /// Whether this is a 2xx answer.
    pub fn is_success(&self) -> bool {
        matches!(self, ShardResult::Answer(a) if a.status.is_success())
    }
}

/// Sends `outgoing` to every shard of `table` and returns each shard's result, in shard
/// order, once all have one or at `deadline` (`cut_off` after the request arrived),
/// whichever is first; with `first`, as soon as one shard answers 2xx. Whatever is still
/// running then is cancelled, and a shard cut off by the deadline gets
/// [`LeafError::Deadline`].
pub async fn scatter(
    table: &Table,
    outgoing: &Outgoing,
    (deadline, cut_off): (Instant, Duration),
    first: bool,
) -> Vec<ShardResult> {
    let mut results: Vec<Option<ShardResult>> = vec![None; table.shards.len()];
    let mut running: FuturesUnordered<_> = table
        .shards
        .iter()
        .map(|shard| async move {
            (
                shard.index,
                shard_call(table, shard, outgoing, deadline).await,
            )
        })
        .collect();
    let collect = async {
        while let Some((index, result)) = running.next().await {
            let won = first && result.is_success();
            results[index] = Some(result);
            if won {
                return;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, collect).await;
    // The cancellation: every leaf request still running is dropped here.
    drop(running);
    let answered_first = first && results.iter().flatten().any(ShardResult::is_success);
    results
        .into_iter()
        .zip(&table.shards)
        .map(|(result, shard)| {
            result.unwrap_or_else(|| {
                // With `first`, the shards cancelled because another answered did not
                // time out.
                if !answered_first {
                    shard.stats.metrics.timeouts.inc();
                }
                ShardResult::Failed(LeafError::Deadline { after: cut_off })
            })
        })
        .collect()
}

/// Why a leaf request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The shard's first request, or a failover after a failure.
    Plain,
    /// A backup request to another replica while the first is slow.
    Hedge,
}

/// One shard's part of the request: a replica, failover while time remains, and a hedge.
async fn shard_call(
    table: &Table,
    shard: &Shard,
    outgoing: &Outgoing,
    deadline: Instant,
) -> ShardResult {
    let metrics = &shard.stats.metrics;
    let mut tried = Vec::with_capacity(2);
    let mut running = FuturesUnordered::new();
    let replica = shard.first(std::time::Instant::now());
    tried.push(replica);
    running.push(leaf(table, shard, replica, Kind::Plain, outgoing, deadline));
    let mut hedge_at = table.hedge_delay(shard).map(|d| Instant::now() + d);
    let mut hedged = false;
    loop {
        let hedge_timer = async {
            match hedge_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((kind, result)) = running.next() => match result {
                Ok(answer) => {
                    if kind == Kind::Hedge {
                        metrics.hedges_won.inc();
                    }
                    // Returning drops the other request of a hedge's race: cancelled.
                    return ShardResult::Answer(answer);
                }
                Err(err) => {
                    if !running.is_empty() {
                        // The other request of a hedge's race may still answer.
                        continue;
                    }
                    let now = Instant::now();
                    let next = (now < deadline)
                        .then(|| shard.another(&tried, now.into_std()))
                        .flatten();
                    let Some(next) = next else {
                        return ShardResult::Failed(err);
                    };
                    tried.push(next);
                    running.push(leaf(table, shard, next, Kind::Plain, outgoing, deadline));
                    if !hedged {
                        hedge_at = table.hedge_delay(shard).map(|d| now + d);
                    }
                }
            },
            () = hedge_timer => {
                hedge_at = None;
                let Some(hedge) = &table.hedge else { continue };
                let Some(next) = shard.another(&tried, std::time::Instant::now()) else {
                    continue;
                };
                if !hedge.withdraw() {
                    metrics.hedges_refused.inc();
                    continue;
                }
                metrics.hedges_sent.inc();
                hedged = true;
                tried.push(next);
                running.push(leaf(table, shard, next, Kind::Hedge, outgoing, deadline));
            }
        }
    }
}

/// One leaf request to replica `index` of `shard`, within `leafTimeout` and the deadline;
/// counted, and its latency recorded when it answers.
async fn leaf(
    table: &Table,
    shard: &Shard,
    index: usize,
    kind: Kind,
    outgoing: &Outgoing,
    deadline: Instant,
) -> (Kind, Result<LeafAnswer, LeafError>) {
    let replica: &Replica = &shard.replicas[index];
    let metrics = &shard.stats.metrics;
    metrics.requests.inc();
    if kind == Kind::Plain
        && let Some(hedge) = &table.hedge
    {
        hedge.deposit();
    }
    let started = Instant::now();
    let leaf_deadline = started + table.leaf_timeout;
    let exchange = fetch(&replica.pool, outgoing.request(), table.max_leaf_body);
    // At the request's deadline the whole fan-out is dropped; a second timer for the same
    // instant would only race it.
    let result = if leaf_deadline < deadline {
        tokio::time::timeout_at(leaf_deadline, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(LeafError::Timeout {
                    address: replica.address.clone(),
                    after: table.leaf_timeout,
                })
            })
    } else {
        exchange.await
    };
    match &result {
        Ok(_) => {
            let took = started.elapsed();
            metrics.duration.observe(took.as_secs_f64());
            shard.stats.window.lock().expect("window lock").record(took);
        }
        Err(LeafError::Timeout { .. }) => {
            metrics.timeouts.inc();
            replica.failed();
        }
        Err(err) => {
            tracing::debug!(shard = shard.index, error = %err, "leaf request failed");
            metrics.failures.inc();
            replica.failed();
        }
    }
    (kind, result)
}

/// Sends `request` on `pool` and reads the answer whole, at most `limit` bytes. A 5xx
/// answer is an error (its body unread: its connection closes rather than go back).
pub async fn fetch(
    pool: &Pool,
    request: Request<RequestBody>,
    limit: usize,
) -> Result<LeafAnswer, LeafError> {
    let address = pool.address();
    let response = pool
        .send(request)
        .await
        .map_err(|failed| match failed.error {
            err @ (SendError::Connect { .. } | SendError::Overloaded { .. }) => {
                LeafError::Connect(err.to_string())
            }
            SendError::Upstream { source, .. } => LeafError::Failed {
                address: address.to_owned(),
                reason: source.to_string(),
            },
        })?;
    let status = response.status();
    if status.is_server_error() {
        return Err(LeafError::Status {
            address: address.to_owned(),
            status,
        });
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                LeafError::TooLarge {
                    address: address.to_owned(),
                    limit,
                }
            } else {
                LeafError::Failed {
                    address: address.to_owned(),
                    reason: format!("reading the answer: {err}"),
                }
            }
        })?
        .to_bytes();
    Ok(LeafAnswer {
        address: address.to_owned(),
        status,
        content_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarding::PoolConfig;
    use tokio::io::AsyncReadExt;

    /// What the deadline and hedges rely on: a leaf request dropped before its answer
    /// closes its pooled connection, so the leaf sees its client go away.
    #[tokio::test]
    async fn dropping_a_leaf_request_in_flight_closes_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let leaf = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let request = socket.read(&mut buf).await.unwrap();
            // Never answers; reads what comes next: 0 bytes is the client closing.
            let next = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await;
            (request, next)
        });
        let pool = Pool::new(address, PoolConfig::default());
        let request = Request::get("/")
            .header(header::HOST, "leaf")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap();
        let waited =
            tokio::time::timeout(Duration::from_millis(300), fetch(&pool, request, 1024)).await;
        assert!(waited.is_err(), "the leaf never answers");
        let (request, next) = leaf.await.unwrap();
        assert!(request > 0, "the request was sent");
        let closed = next.expect("the connection was closed, not left open");
        assert_eq!(closed.unwrap(), 0);
    }
}
