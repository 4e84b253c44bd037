//! The request path: route, rate limit, split, cache, then attempts on the backend's
//! servers with retries within the budget, a copy to the shadow, and header rules.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::backend::{Backend, Outcome, PickContext, Unavailable};
use super::cache::Body;
use super::keys;
use super::retry::idempotent;
use super::table::{Destination, Mirror, Route, Table};
use crate::forwarding::{self, RequestBody, ResponseBody, SendError};

/// Request bodies up to this size are read before the first attempt, so that the request
/// can be retried and mirrored; larger ones stream, and are retried only when no byte of
/// them was sent.
const REPLAYABLE_BODY: u64 = 64 * 1024;

/// Which requests are copied to a shadow: a counter, so that the share is exact.
static MIRROR_TICKS: AtomicU64 = AtomicU64::new(0);

/// Handles one request against `table`.
pub async fn handle(
    table: &Table,
    peer: SocketAddr,
    peer_ip: &HeaderValue,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let upgrade = forwarding::wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if let Some(why) = forwarding::host_error(&parts) {
        let status = if parts.method == Method::CONNECT {
            StatusCode::METHOD_NOT_ALLOWED
        } else {
            StatusCode::BAD_REQUEST
        };
        return own(status, why).map(Either::Left);
    }
    let Some(route) = table.route_for(&parts) else {
        return own(
            StatusCode::NOT_FOUND,
            format!("no route takes {} {}\n", parts.method, parts.uri.path()),
        )
        .map(Either::Left);
    };
    let started = Instant::now();
    forwarding::to_origin_form(&mut parts);
    let response = serve(table, route, parts, body, peer, peer_ip, upgrade).await;
    route
        .metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    route.metrics.response(response.status());
    response
}

async fn serve(
    table: &Table,
    route: &Route,
    mut parts: Parts,
    body: Incoming,
    peer: SocketAddr,
    peer_ip: &HeaderValue,
    upgrade: Option<OnUpgrade>,
) -> Response<Body> {
    let client_ip = keys::client_ip(&parts.headers, peer.ip());
    if let Some(limit) = &route.rate_limit
        && let Err(wait) = limit.check(&parts.headers, peer.ip())
    {
        route.metrics.rate_limited.inc();
        let mut response = own(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "429 too many requests: route {} allows fewer, retry later\n",
                route.name
            ),
        );
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return response.map(Either::Left);
    }
    let (backend, set_cookie) = match &route.destination {
        Destination::Backend(backend) => (backend, None),
        Destination::Split(split) => {
            let (arm, cookie) = split.choose(&parts.headers, peer.ip());
            arm.requests.inc();
            split.strip_cookie(&mut parts.headers);
            (&arm.backend, cookie)
        }
    };

    forwarding::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    forwarding::add_forwarded_for(&mut parts.headers, peer_ip);
    route.request_headers.apply(&mut parts.headers);
    if let Some(client_side) = upgrade {
        // Boxed, as the cache below: a rare branch's state must not make every request's
        // future larger, which hyper moves into place for each request.
        let mut response =
            Box::pin(tunnel(route, backend, parts, body, client_ip, client_side)).await;
        route.response_headers.apply(response.headers_mut());
        if let Some(cookie) = set_cookie {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        return response.map(Either::Left);
    }

    let mut outgoing = match Outgoing::read(body).await {
        Ok(outgoing) => outgoing,
        Err(err) => {
            tracing::debug!(route = %route.name, error = %err, "client request body failed");
            return own(
                StatusCode::BAD_REQUEST,
                "400 bad request: the request body was malformed or cut short\n",
            )
            .map(Either::Left);
        }
    };
    if let Some(mirror) = &route.mirror {
        copy_to_shadow(route, mirror, &parts, &outgoing, client_ip);
    }

    let cacheable = route.cache && (parts.method == Method::GET || parts.method == Method::HEAD);
    let mut response = match (&table.cache, cacheable) {
        (Some(cache), true) => {
            let fetch = |fill: Parts| {
                let mut body = Outgoing::Buffered(Bytes::new());
                async move { attempts(route, backend, fill, &mut body, client_ip).await }
            };
            Box::pin(cache.serve(&backend.name, &parts, fetch)).await
        }
        _ => attempts(route, backend, parts, &mut outgoing, client_ip)
            .await
            .map(Either::Left),
    };

    forwarding::strip_hop_by_hop(response.headers_mut(), false);
    route.response_headers.apply(response.headers_mut());
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// An upgrade (WebSocket): one attempt, never cached, mirrored or retried once sent;
/// when the server answers `101`, the two connections become a byte tunnel.
async fn tunnel(
    route: &Route,
    backend: &Arc<Backend>,
    parts: Parts,
    body: Incoming,
    client_ip: IpAddr,
    client_side: OnUpgrade,
) -> Response<ResponseBody> {
    let _admitted = match backend.admit() {
        Ok(admitted) => admitted,
        Err(unavailable) => return unavailable_answer(&unavailable),
    };
    let ctx = PickContext {
        client_ip,
        headers: &parts.headers,
    };
    let server = match backend.pick(&ctx, &[]) {
        Ok(server) => server,
        Err(unavailable) => return unavailable_answer(&unavailable),
    };
    let running = server.begin();
    let request = Request::from_parts(parts, Either::Left(body));
    let mut response = match tokio::time::timeout(route.timeout, server.pool.send(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(failed)) => {
            running.finish(if failed.error.may_have_been_sent() {
                Outcome::Failed
            } else {
                Outcome::ConnectError
            });
            return own(
                StatusCode::BAD_GATEWAY,
                format!("502 bad gateway: {}\n", failed.error),
            );
        }
        Err(_) => {
            running.finish(Outcome::TimedOut);
            return own(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "504 gateway timeout: {} did not answer the upgrade in time\n",
                    server.address
                ),
            );
        }
    };
    running.finish(Outcome::Status(response.status()));
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let server_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, server_side) {
                Ok((client, server)) => {
                    let mut client = TokioIo::new(client);
                    let mut server = TokioIo::new(server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                Err(err) => tracing::debug!(error = %err, "upgrade failed"),
            }
        });
    } else {
        forwarding::strip_hop_by_hop(response.headers_mut(), false);
    }
    response.map(Either::Left)
}

/// A request body as attempts need it.
enum Outgoing {
    /// Read whole: every attempt gets a copy.
    Buffered(Bytes),
    /// Streaming: only the first attempt gets it, unless it comes back unsent.
    Streaming(Option<Incoming>),
}

impl Outgoing {
    async fn read(body: Incoming) -> Result<Self, hyper::Error> {
        if body.is_end_stream() {
            return Ok(Outgoing::Buffered(Bytes::new()));
        }
        if body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= REPLAYABLE_BODY)
        {
            return Ok(Outgoing::Buffered(body.collect().await?.to_bytes()));
        }
        Ok(Outgoing::Streaming(Some(body)))
    }

    fn replayable(&self) -> bool {
        matches!(self, Outgoing::Buffered(_))
    }

    fn take(&mut self) -> Option<RequestBody> {
        match self {
            Outgoing::Buffered(bytes) => Some(Either::Right(Full::new(bytes.clone()))),
            Outgoing::Streaming(body) => body.take().map(Either::Left),
        }
    }

    /// A body that came back from a request never sent.
    fn restore(&mut self, body: RequestBody) {
        if let (Outgoing::Streaming(slot), Either::Left(incoming)) = (self, body) {
            *slot = Some(incoming);
        }
    }
}

/// Sends the request to `backend`, retrying within the route's policy and budget, until a
/// response or the route's timeout.
async fn attempts(
    route: &Route,
    backend: &Arc<Backend>,
    parts: Parts,
    body: &mut Outgoing,
    client_ip: IpAddr,
) -> Response<ResponseBody> {
    let deadline = tokio::time::Instant::now() + route.timeout;
    match tokio::time::timeout_at(
        deadline,
        attempt_loop(route, backend, parts, body, client_ip, deadline),
    )
    .await
    {
        Ok(response) => response,
        Err(_) => own(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "504 gateway timeout: backend {} gave no answer within {}\n",
                backend.name,
                humantime::format_duration(route.timeout)
            ),
        ),
    }
}

async fn attempt_loop(
    route: &Route,
    backend: &Arc<Backend>,
    parts: Parts,
    body: &mut Outgoing,
    client_ip: IpAddr,
    deadline: tokio::time::Instant,
) -> Response<ResponseBody> {
    let _admitted = match backend.admit() {
        Ok(admitted) => admitted,
        Err(unavailable) => return unavailable_answer(&unavailable),
    };
    if let Some(policy) = &route.retries {
        policy.deposit();
    }
    let retries = route.retries.as_ref().map_or(0, |p| p.attempts);
    let resend_ok = idempotent(&parts.method) && body.replayable();
    let per_try_timeout = route.retries.as_ref().and_then(|p| p.per_try_timeout);
    // The last attempt takes the parts; earlier ones send copies.
    let mut parts = Some(parts);
    let mut tried = Vec::new();
    let mut last_error: Option<Response<ResponseBody>> = None;
    for attempt in 0..=retries {
        let last = attempt == retries;
        if attempt > 0 {
            let policy = route
                .retries
                .as_ref()
                .expect("attempt > 0 only with a policy");
            if !policy.withdraw() {
                route.metrics.retries_refused.inc();
                break;
            }
            route.metrics.retries.inc();
        }
        let current = parts
            .as_ref()
            .expect("only the last attempt takes the parts");
        let ctx = PickContext {
            client_ip,
            headers: &current.headers,
        };
        let server = match backend.pick(&ctx, &tried) {
            Ok(server) => server,
            Err(unavailable) => return unavailable_answer(&unavailable),
        };
        let Some(request_body) = body.take() else {
            break;
        };
        let request_parts = if last {
            parts.take().expect("only the last attempt takes the parts")
        } else {
            tried.push(server.clone());
            current.clone()
        };
        let request = Request::from_parts(request_parts, request_body);
        let running = server.begin();
        // Without a per-try timeout the route's deadline, enforced around this loop, is
        // the only one: no second timer per request.
        let sent = match per_try_timeout {
            Some(per_try) => {
                let per_try = deadline.min(tokio::time::Instant::now() + per_try);
                tokio::time::timeout_at(per_try, server.pool.send(request)).await
            }
            None => Ok(server.pool.send(request).await),
        };
        match sent {
            Ok(Ok(response)) => {
                let status = response.status();
                running.finish(Outcome::Status(status));
                if status.is_server_error() && resend_ok && !last {
                    // Dropped unread: its connection closes rather than go back dirty.
                    drop(response);
                    last_error = Some(own(status, format!("{status} from {}\n", server.address)));
                    continue;
                }
                return response.map(Either::Left);
            }
            Ok(Err(failed)) => {
                if let SendError::Overloaded { .. } = failed.error {
                    running.finish(Outcome::Abandoned);
                    backend.count_overloaded();
                    return own(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("503 service unavailable: {}\n", failed.error),
                    );
                }
                if failed.error.is_client_body_error() {
                    running.finish(Outcome::Abandoned);
                    return own(
                        StatusCode::BAD_REQUEST,
                        "400 bad request: the request body was malformed or cut short\n",
                    );
                }
                let sent = failed.error.may_have_been_sent();
                running.finish(if sent {
                    Outcome::Failed
                } else {
                    Outcome::ConnectError
                });
                tracing::debug!(route = %route.name, server = %server.address, error = %forwarding::error_chain(&failed.error), "attempt failed");
                if let Some(unsent) = failed.unsent {
                    body.restore(unsent.into_body());
                }
                last_error = Some(own(
                    StatusCode::BAD_GATEWAY,
                    format!("502 bad gateway: {}\n", failed.error),
                ));
                if sent && !resend_ok {
                    break;
                }
            }
            Err(_) => {
                running.finish(Outcome::TimedOut);
                last_error = Some(own(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "504 gateway timeout: {} gave no answer in time\n",
                        server.address
                    ),
                ));
                if !resend_ok {
                    break;
                }
            }
        }
    }
    last_error.unwrap_or_else(|| {
        own(
            StatusCode::BAD_GATEWAY,
            format!(
                "502 bad gateway: backend {} could not take the request\n",
                backend.name
            ),
        )
    })
}

fn unavailable_answer(unavailable: &Unavailable) -> Response<ResponseBody> {
    own(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("503 service unavailable: {unavailable}\n"),
    )
}

/// Sends a copy of the request to the shadow, in the background. Its answer is read and
/// dropped; its slowness and failures are counted, never felt by the client. The copy
/// keeps the request's `Host`: a shadow behind a host-routing proxy must be reached as
/// the real one is.
fn copy_to_shadow(
    route: &Route,
    mirror: &Mirror,
    parts: &Parts,
    body: &Outgoing,
    client_ip: IpAddr,
) {
    let tick = MIRROR_TICKS.fetch_add(1, Ordering::Relaxed);
    if (keys::stable_hash(&[&tick.to_le_bytes()]) % 10_000) as f64 >= mirror.share * 10_000.0 {
        return;
    }
    let Outgoing::Buffered(bytes) = body else {
        route.metrics.mirror_skipped.inc();
        return;
    };
    let Ok(permit) = mirror.in_flight.clone().try_acquire_owned() else {
        route.metrics.mirror_skipped.inc();
        return;
    };
    let backend = mirror.backend.clone();
    let request = Request::from_parts(parts.clone(), Either::Right(Full::new(bytes.clone())));
    let metrics = route.metrics.clone();
    let timeout = route.timeout;
    tokio::spawn(async move {
        let _permit = permit;
        let headers = request.headers().clone();
        let ctx = PickContext {
            client_ip,
            headers: &headers,
        };
        let Ok(server) = backend.pick(&ctx, &[]) else {
            metrics.mirror_failed.inc();
            return;
        };
        let running = server.begin();
        let exchange = async {
            let response = server
                .pool
                .send(request)
                .await
                .map_err(|f| f.error.to_string())?;
            let status = response.status();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(status)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(status)) => {
                running.finish(Outcome::Status(status));
                metrics.mirrored.inc();
            }
            Ok(Err(_)) => {
                running.finish(Outcome::Failed);
                metrics.mirror_failed.inc();
            }
            Err(_) => {
                running.finish(Outcome::TimedOut);
                metrics.mirror_failed.inc();
            }
        }
    });
}

/// An answer of the ambassador's own.
pub fn own(status: StatusCode, message: impl Into<Bytes>) -> Response<ResponseBody> {
    forwarding::text(status, message).map(Either::Right)
}
