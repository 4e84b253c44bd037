//! The election's HTTP API, on the sidecar's admin port beside `/healthz`, `/readyz` and
//! `/metrics`:
//!
//! - `GET /leader` → `{leader, me, term, fencingToken, renewedAt, isLeader}`;
//!   `?wait=30s` holds the answer until the leadership changes (leader, term, or whether
//!   this replica leads) or the wait ends; with `&after=TOKEN` it answers as soon as the
//!   term is not `TOKEN` (at once if it already is not) or this replica starts or stops
//!   leading, and not merely because the old leader is gone.
//! - `GET /owned` → the items this replica owns, each with its fencing token; `?wait=30s`
//!   holds the answer until that set changes.
//! - `GET /readyz?leader=true` → 200 only while this replica leads (for an active-passive
//!   Service); plain `/readyz` → 200 while the sidecar runs.
//!
//! Every answer is computed when it is sent, from the claim's own deadline: a replica whose
//! renewals stopped (a pause, a partition) stops saying it leads on time, even before the
//! elector has noticed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use serde::Serialize;
use tokio::sync::watch;

use super::elector::Status;
use super::lock::{LockId, Seen};
use super::share;
use crate::runtime::{self, Lifecycle, admin};

/// The longest `?wait=` honoured; longer waits are cut to it.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// The `/leader` answer (and the leader file's contents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderView {
    /// Who leads, as this replica knows it; null when nobody does, or when this replica
    /// cannot tell (it lost contact with the backend for longer than a lease).
    pub leader: Option<String>,
    /// This replica's identity.
    pub me: String,
    /// The current (or last known) term's token.
    pub term: u64,
    /// The token to write with: the term's, while this replica leads; null otherwise.
    pub fencing_token: Option<u64>,
    /// When the term was last renewed (RFC 3339).
    pub renewed_at: Option<String>,
    /// Whether this replica leads now.
    pub is_leader: bool,
}

/// One owned item in `/owned`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedItem {
    /// The item's number, 0 … N-1.
    pub item: u32,
    /// The token of this replica's term on it.
    pub fencing_token: u64,
    /// When it was last renewed (RFC 3339).
    pub renewed_at: String,
}

/// The `/owned` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedView {
    /// This replica's identity.
    pub me: String,
    /// `--items`.
    pub total: u32,
    /// Live replicas as counted in the last round.
    pub members: Option<usize>,
    /// The most items one replica holds, from that count.
    pub fair_share: Option<u32>,
    /// The items this replica owns now.
    pub items: Vec<OwnedItem>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The `/leader` answer for `status` at `now`.
pub fn leader_view(status: &Status, now: Instant) -> LeaderView {
    let me = status.me.clone();
    let seen = status.leader();
    let (leader, renewed_at, is_leader) = match seen {
        Seen::Mine(claim) if claim.stands_at(now) && !status.stopping => {
            (Some(me.clone()), Some(claim.renewed_at), true)
        }
        // A lapsed claim: this replica no longer leads, and cannot tell who does.
        Seen::Mine(claim) => (None, Some(claim.renewed_at), false),
        Seen::Other {
            holder,
            renewed_at,
            until,
            ..
        } => ((now < *until).then(|| holder.clone()), *renewed_at, false),
        Seen::Free { .. } => (None, None, false),
    };
    let term = seen.term();
    LeaderView {
        leader,
        me,
        term,
        fencing_token: is_leader.then_some(term),
        renewed_at: renewed_at.map(rfc3339),
        is_leader,
    }
}

/// The `/owned` answer for `status` at `now`.
pub fn owned_view(status: &Status, now: Instant) -> OwnedView {
    let items = if status.stopping {
        Vec::new()
    } else {
        status
            .view
            .claims_at(now)
            .filter_map(|(id, claim)| match id {
                LockId::Item(item) => Some(OwnedItem {
                    item,
                    fencing_token: claim.token,
                    renewed_at: rfc3339(claim.renewed_at),
                }),
                LockId::Leader => None,
            })
            .collect()
    };
    OwnedView {
        me: status.me.clone(),
        total: status.items,
        members: status.view.members,
        fair_share: status
            .view
            .members
            .map(|m| share::fair_share(status.items, m)),
        items,
    }
}

/// The API's state.
struct Api {
    status: watch::Receiver<Arc<Status>>,
    registry: Registry,
    life: Lifecycle,
}

/// Binds `addr` and serves the API and the admin endpoints in the background, for as long
/// as the process lives (through the handoff on shutdown, so that the app sees the
/// leadership end). Returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    registry: Registry,
    life: Lifecycle,
    status: watch::Receiver<Arc<Status>>,
) -> Result<SocketAddr, runtime::Error> {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    // Registering twice is the only failure, and harmless.
    let _ = registry.register(Box::new(collector));
    let listener = runtime::bind(addr).await?;
    let local = listener
        .local_addr()
        .map_err(|source| runtime::Error::Bind { addr, source })?;
    let api = Arc::new(Api {
        status,
        registry,
        life,
    });
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "API accept failed");
                    // Out of file descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let api = api.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.respond(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

/// A request's query parameters that the API knows.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    wait: Option<Duration>,
    after: Option<u64>,
    leader: bool,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, String> {
        let mut out = Query::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "wait" => {
                    let wait = humantime::parse_duration(value)
                        .map_err(|e| format!("wait={value}: {e} (e.g. wait=30s)"))?;
                    out.wait = Some(wait.min(MAX_WAIT));
                }
                "after" => {
                    out.after = Some(value.parse().map_err(|_| {
                        format!("after={value}: expected a fencing token (a number)")
                    })?)
                }
                "leader" => {
                    out.leader = match value {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => return Err(format!("leader={value}: expected true or false")),
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

impl Api {
    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        let query = match Query::parse(req.uri().query()) {
            Ok(query) => query,
            Err(message) => return text(StatusCode::BAD_REQUEST, &format!("{message}\n")),
        };
        match req.uri().path() {
            "/leader" => json(&self.leader(&query).await),
            "/owned" => json(&self.owned(&query).await),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz(&query),
            "/metrics" => admin::metrics(&self.registry),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /leader, /owned, /healthz, /readyz or /metrics\n",
            ),
        }
    }

    fn readyz(&self, query: &Query) -> Response<Full<Bytes>> {
        if self.life.is_stopping() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        }
        if !query.leader {
            return match self.life.is_ready() {
                true => text(StatusCode::OK, "ready\n"),
                false => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            };
        }
        let leads = self.status.borrow().is_leader_at(Instant::now());
        match leads {
            true => text(StatusCode::OK, "leader\n"),
            false => text(StatusCode::SERVICE_UNAVAILABLE, "not the leader\n"),
        }
    }

    /// `status` as this replica stands: once a shutdown has begun (SIGTERM) nothing is
    /// claimed any more, even before the elector has published it.
    fn current(&self, status: &Status) -> Status {
        let mut status = status.clone();
        status.stopping |= self.life.is_stopping();
        status
    }

    fn leader_now(&self, status: &Status) -> LeaderView {
        leader_view(&self.current(status), Instant::now())
    }

    fn owned_now(&self, status: &Status) -> OwnedView {
        owned_view(&self.current(status), Instant::now())
    }

    async fn leader(&self, query: &Query) -> LeaderView {
        let first = self.leader_now(&self.status.borrow());
        // With `after`, the asker knows that term and waits for the next one (or for this
        // replica to start or stop leading); without, any change of leadership answers.
        let changed = |view: &LeaderView| match query.after {
            Some(after) => view.term != after || view.is_leader != first.is_leader,
            None => {
                view.term != first.term
                    || view.leader != first.leader
                    || view.is_leader != first.is_leader
            }
        };
        if changed(&first) {
            return first;
        }
        self.wait_for(query.wait, |status| {
            let view = self.leader_now(status);
            changed(&view).then_some(view)
        })
        .await
        .unwrap_or_else(|| self.leader_now(&self.status.borrow()))
    }

    async fn owned(&self, query: &Query) -> OwnedView {
        let first = self.owned_now(&self.status.borrow());
        let tokens = |view: &OwnedView| -> Vec<(u32, u64)> {
            view.items
                .iter()
                .map(|i| (i.item, i.fencing_token))
                .collect()
        };
        let before = tokens(&first);
        self.wait_for(query.wait, |status| {
            let view = self.owned_now(status);
            (tokens(&view) != before).then_some(view)
        })
        .await
        .unwrap_or_else(|| self.owned_now(&self.status.borrow()))
    }

    /// Waits up to `wait` for `done` to return something, trying it on every change of
    /// the status and at each claim's deadline (a claim lapses without any publication).
    async fn wait_for<T>(
        &self,
        wait: Option<Duration>,
        done: impl Fn(&Status) -> Option<T>,
    ) -> Option<T> {
        let wait = wait?;
        let end = tokio::time::Instant::now() + wait;
        let mut status = self.status.clone();
        loop {
            let deadline = status
                .borrow_and_update()
                .view
                .next_deadline()
                .map(tokio::time::Instant::from_std)
                .filter(|d| *d > tokio::time::Instant::now())
                .map_or(end, |d| d.min(end));
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let latest = status.borrow().clone();
            if let Some(answer) = done(&latest) {
                return Some(answer);
            }
            if tokio::time::Instant::now() >= end {
                return None;
            }
        }
    }
}

fn json<T: Serialize>(body: &T) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).expect("API answers serialize");
    bytes.push(b'\n');
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response parts are valid")
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::elect::lock::{Claim, View};

    fn status(leader: Seen) -> Status {
        let mut locks = BTreeMap::new();
        locks.insert(LockId::Leader, leader);
        Status {
            me: "a".into(),
            items: 0,
            view: View {
                members: None,
                locks,
            },
            stopping: false,
        }
    }

    fn mine(valid_until: Instant) -> Seen {
        Seen::Mine(Claim {
            token: 9,
            valid_until,
            renewed_at: SystemTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn a_standing_claim_is_leadership_with_its_token() {
        let now = Instant::now();
        let view = leader_view(&status(mine(now + Duration::from_secs(1))), now);
        assert_eq!(
            view,
            LeaderView {
                leader: Some("a".into()),
                me: "a".into(),
                term: 9,
                fencing_token: Some(9),
                renewed_at: Some("1970-01-01T00:00:00.000Z".into()),
                is_leader: true,
            }
        );
        let json = serde_json::to_value(&view).unwrap();
        for key in [
            "leader",
            "me",
            "term",
            "fencingToken",
            "renewedAt",
            "isLeader",
        ] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
    }

    #[test]
    fn a_claim_past_its_deadline_is_not_leadership_even_unpublished() {
        let now = Instant::now();
        let view = leader_view(&status(mine(now)), now);
        assert!(!view.is_leader);
        assert_eq!(view.fencing_token, None);
        assert_eq!(view.leader, None, "a lapsed leader cannot tell who leads");
        assert_eq!(view.term, 9);
    }

    #[test]
    fn a_stopping_replica_does_not_lead() {
        let now = Instant::now();
        let mut stopping = status(mine(now + Duration::from_secs(5)));
        stopping.stopping = true;
        assert!(!leader_view(&stopping, now).is_leader);
        assert!(!stopping.is_leader_at(now));
    }

    #[test]
    fn a_follower_names_the_leader_only_while_its_news_is_fresh() {
        let now = Instant::now();
        let other = |until| Seen::Other {
            holder: "b".into(),
            term: 4,
            renewed_at: None,
            until,
        };
        let fresh = leader_view(&status(other(now + Duration::from_secs(1))), now);
        assert_eq!(fresh.leader.as_deref(), Some("b"));
        assert_eq!((fresh.term, fresh.fencing_token), (4, None));
        let stale = leader_view(&status(other(now)), now);
        assert_eq!(stale.leader, None);
    }

    #[test]
    fn queries_parse_and_bad_ones_are_named() {
        assert_eq!(
            Query::parse(Some("wait=30s&after=12")).unwrap(),
            Query {
                wait: Some(Duration::from_secs(30)),
                after: Some(12),
                leader: false
            }
        );
        assert!(Query::parse(Some("leader=true")).unwrap().leader);
        assert!(!Query::parse(None).unwrap().leader);
        assert_eq!(Query::parse(Some("wait=1h")).unwrap().wait, Some(MAX_WAIT));
        let err = Query::parse(Some("wait=soon")).unwrap_err();
        assert!(err.starts_with("wait=soon"), "{err}");
        assert!(
            Query::parse(Some("after=x"))
                .unwrap_err()
                .contains("after=x")
        );
        assert!(Query::parse(Some("leader=maybe")).is_err());
    }
}
