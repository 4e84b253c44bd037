//! The loop every backend runs under: one round per retry period (renew what is held, read
//! every lock), then the fair-share plan (take free locks, let excess items go), and the
//! result published to the API, the leader file and the metrics. Between rounds it wakes at
//! the earliest renew deadline to step down on time even when the backend is silent.
//!
//! The order on the way out is what makes the SIGTERM handoff safe: first this replica stops
//! claiming (published to the API and the file), then it releases the locks, so nobody can
//! take over while it still claims.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::watch;

use super::leader_file;
use super::lock::{LockId, Seen, View};
use super::share;
use crate::runtime::{Lifecycle, error_chain};

/// A place an election is kept. Each method is one step of the elector's round; the
/// backend keeps its own records (resource versions, leases) and shows what it knows
/// through [`Backend::view`].
pub trait Backend {
    /// What can go wrong talking to it.
    type Error: std::error::Error;

    /// Renews what this replica holds (claims, membership) and reads every lock.
    async fn sync(&mut self) -> Result<(), Self::Error>;

    /// Tries to take `lock`, which the last view showed free. `Ok(false)`: someone else
    /// was faster.
    async fn acquire(&mut self, lock: LockId) -> Result<bool, Self::Error>;

    /// Stops claiming `lock` at once, and queues its release for [`Backend::release`]:
    /// the elector publishes that it no longer claims before anything is sent.
    fn let_go(&mut self, lock: LockId);

    /// Releases the locks [`Backend::let_go`] queued, so that others need not wait for
    /// them to expire.
    async fn release(&mut self) -> Result<(), Self::Error>;

    /// Releases what is queued and leaves the election (the membership, an etcd lease).
    async fn shutdown(&mut self) -> Result<(), Self::Error>;

    /// Drops the claims whose renew deadline has passed at `now`; returns them.
    fn lapse(&mut self, now: Instant) -> Vec<LockId>;

    /// What it knows now.
    fn view(&self) -> View;
}

/// What the API serves: the latest view, with who is asking about it.
#[derive(Debug, Clone)]
pub struct Status {
    /// This replica's identity.
    pub me: String,
    /// `--items` (0 without).
    pub items: u32,
    /// The backend's latest view.
    pub view: View,
    /// Set once shutdown has begun: no claim stands any more.
    pub stopping: bool,
}

impl Status {
    /// The status before the first round: everything free, nothing known.
    pub fn initial(me: String, items: u32) -> Status {
        let mut locks = std::collections::BTreeMap::new();
        locks.insert(LockId::Leader, Seen::Free { term: 0 });
        for n in 0..items {
            locks.insert(LockId::Item(n), Seen::Free { term: 0 });
        }
        Status {
            me,
            items,
            view: View {
                members: None,
                locks,
            },
            stopping: false,
        }
    }

    /// The leader lock as seen.
    pub fn leader(&self) -> &Seen {
        self.view
            .locks
            .get(&LockId::Leader)
            .expect("the leader lock is always in the view")
    }

    /// Whether this replica leads at `now`.
    pub fn is_leader_at(&self, now: Instant) -> bool {
        !self.stopping && self.leader().claim_at(now).is_some()
    }
}

/// The elector's metrics.
pub struct Metrics {
    is_leader: IntGauge,
    term: IntGauge,
    fencing_token: IntGauge,
    leader_transitions: IntCounter,
    acquisitions: IntCounterVec,
    step_downs: IntCounterVec,
    renew_failures: IntCounter,
    items_owned: IntGauge,
    members: IntGauge,
}

impl Metrics {
    /// Registers the election's metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter_vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let leader_transitions = IntCounter::new(
            "rigging_elect_leader_transitions_total",
            "New leader terms this replica has seen (its own included).",
        )?;
        registry.register(Box::new(leader_transitions.clone()))?;
        let renew_failures = IntCounter::new(
            "rigging_elect_renew_failures_total",
            "Rounds in which renewing or reading the election failed.",
        )?;
        registry.register(Box::new(renew_failures.clone()))?;
        let metrics = Metrics {
            is_leader: gauge(
                "rigging_elect_is_leader",
                "1 while this replica leads (its claim stands), else 0.",
            )?,
            term: gauge(
                "rigging_elect_term",
                "The leader term (fencing token) this replica last saw.",
            )?,
            fencing_token: gauge(
                "rigging_elect_fencing_token",
                "This replica's fencing token while it leads, else 0.",
            )?,
            leader_transitions,
            acquisitions: counter_vec(
                "rigging_elect_acquisitions_total",
                "Terms this replica started, by lock (leader or item).",
                "lock",
            )?,
            step_downs: counter_vec(
                "rigging_elect_step_downs_total",
                "Terms of this replica that ended, by reason: deadline (not renewed in time), \
                 lost (taken or removed by another), released (handed over).",
                "reason",
            )?,
            renew_failures,
            items_owned: gauge(
                "rigging_elect_items_owned",
                "Items whose claim this replica holds.",
            )?,
            members: gauge(
                "rigging_elect_members",
                "Live replicas of the election, as this replica counts them (items only).",
            )?,
        };
        for lock in ["leader", "item"] {
            metrics.acquisitions.with_label_values(&[lock]);
        }
        for reason in ["deadline", "lost", "released"] {
            metrics.step_downs.with_label_values(&[reason]);
        }
        Ok(metrics)
    }
}

/// The elector's settings.
pub struct Settings {
    /// Time between rounds.
    pub retry_period: Duration,
    /// `--items` (0 without).
    pub items: u32,
    /// `--leader-file`.
    pub leader_file: Option<PathBuf>,
    /// Longest the release on shutdown may take.
    pub shutdown_timeout: Duration,
}

/// Runs the election until the lifecycle stops, then hands over.
pub async fn run<B: Backend>(
    mut backend: B,
    settings: Settings,
    status: watch::Sender<Arc<Status>>,
    metrics: Metrics,
    life: Lifecycle,
) {
    let me = status.borrow().me.clone();
    let start = share::start_for(&me, settings.items);
    let mut publisher = Publisher {
        status,
        metrics,
        leader_file: settings.leader_file,
        claims: BTreeSet::new(),
        last_term: 0,
        file_view: None,
    };
    'rounds: loop {
        let round = Instant::now();
        let lapsed = backend.lapse(round);
        publisher.stepped_down(&lapsed, "deadline");
        if let Err(err) = backend.sync().await {
            publisher.metrics.renew_failures.inc();
            tracing::warn!(error = %error_chain(&err), "election round failed");
        } else {
            let lapsed = backend.lapse(Instant::now());
            publisher.stepped_down(&lapsed, "deadline");
            publisher.publish(backend.view(), false).await;
            let plan = share::plan(&backend.view(), settings.items, start, Instant::now());
            if !plan.release.is_empty() {
                for lock in &plan.release {
                    tracing::info!(%lock, "releasing: above the fair share");
                    backend.let_go(*lock);
                }
                publisher.stepped_down(&plan.release, "released");
                publisher.publish(backend.view(), false).await;
                if let Err(err) = backend.release().await {
                    tracing::warn!(error = %error_chain(&err), "release failed; the locks expire instead");
                }
            }
            for lock in plan.acquire {
                match backend.acquire(lock).await {
                    Ok(true) => {
                        let label = if lock == LockId::Leader {
                            "leader"
                        } else {
                            "item"
                        };
                        publisher
                            .metrics
                            .acquisitions
                            .with_label_values(&[label])
                            .inc();
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::warn!(%lock, error = %error_chain(&err), "acquiring failed");
                        break;
                    }
                }
            }
        }
        let lapsed = backend.lapse(Instant::now());
        publisher.stepped_down(&lapsed, "deadline");
        publisher.publish(backend.view(), false).await;
        // Sleep to the next round, waking at each renew deadline on the way to step down
        // on time even while the backend does not answer.
        let next = tokio::time::Instant::from_std(round + settings.retry_period);
        loop {
            let wake = backend
                .view()
                .next_deadline()
                .map(tokio::time::Instant::from_std)
                .filter(|d| *d < next)
                .unwrap_or(next);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = life.stopping() => break 'rounds,
            }
            if tokio::time::Instant::now() >= next {
                break;
            }
            let lapsed = backend.lapse(Instant::now());
            publisher.stepped_down(&lapsed, "deadline");
            publisher.publish(backend.view(), false).await;
        }
    }
    // Stop claiming first, then let go.
    let held: Vec<LockId> = backend
        .view()
        .claims_at(Instant::now())
        .map(|(id, _)| id)
        .collect();
    for lock in &held {
        backend.let_go(*lock);
    }
    publisher.stepped_down(&held, "released");
    publisher.publish(backend.view(), true).await;
    tracing::info!(locks = held.len(), "shutting down: releasing the election");
    match tokio::time::timeout(settings.shutdown_timeout, backend.shutdown()).await {
        Ok(Ok(())) => tracing::info!("released; exiting"),
        Ok(Err(err)) => {
            tracing::warn!(error = %error_chain(&err), "release failed; the locks expire instead")
        }
        Err(_) => tracing::warn!(
            timeout_ms = settings.shutdown_timeout.as_millis() as u64,
            "release did not finish in time; the locks expire instead"
        ),
    }
}

/// Publishes views: to the API's watch, the metrics and the leader file.
struct Publisher {
    status: watch::Sender<Arc<Status>>,
    metrics: Metrics,
    leader_file: Option<PathBuf>,
    /// The claims standing at the last publication.
    claims: BTreeSet<LockId>,
    /// The leader term last published.
    last_term: u64,
    /// What the leader file holds, to rewrite it only when the leadership changes.
    file_view: Option<leader_file::Key>,
}

impl Publisher {
    /// Counts the end of the claims in `locks` under `reason`, so that [`Self::publish`]
    /// does not count them again as lost.
    fn stepped_down(&mut self, locks: &[LockId], reason: &str) {
        for lock in locks {
            if self.claims.remove(lock) {
                self.metrics.step_downs.with_label_values(&[reason]).inc();
                match reason {
                    "deadline" => tracing::warn!(
                        %lock,
                        "renew deadline passed without a renewal: stepping down"
                    ),
                    _ => tracing::info!(%lock, reason, "stepping down"),
                }
            }
        }
    }

    async fn publish(&mut self, view: View, stopping: bool) {
        let now = Instant::now();
        let standing: BTreeSet<LockId> = if stopping {
            BTreeSet::new()
        } else {
            view.claims_at(now).map(|(id, _)| id).collect()
        };
        for lost in self.claims.difference(&standing) {
            self.metrics.step_downs.with_label_values(&["lost"]).inc();
            tracing::warn!(lock = %lost, "claim lost: another replica took the lock, or it was removed");
        }
        for gained in standing.difference(&self.claims) {
            let token = view.locks.get(gained).map(Seen::term).unwrap_or_default();
            tracing::info!(lock = %gained, token, "claim taken");
        }
        self.claims = standing;
        let status = Status {
            me: self.status.borrow().me.clone(),
            items: self.status.borrow().items,
            view,
            stopping,
        };
        let term = status.leader().term();
        if term != self.last_term && term != 0 {
            self.metrics.leader_transitions.inc();
            self.last_term = term;
        }
        let leads = status.is_leader_at(now);
        self.metrics.is_leader.set(i64::from(leads));
        self.metrics
            .term
            .set(i64::try_from(term).unwrap_or(i64::MAX));
        self.metrics.fencing_token.set(if leads {
            i64::try_from(term).unwrap_or(i64::MAX)
        } else {
            0
        });
        self.metrics.items_owned.set(
            self.claims
                .iter()
                .filter(|id| matches!(id, LockId::Item(_)))
                .count() as i64,
        );
        if let Some(members) = status.view.members {
            self.metrics.members.set(members as i64);
        }
        let status = Arc::new(status);
        if let Some(path) = &self.leader_file {
            let body = super::api::leader_view(&status, now);
            let key = leader_file::Key::of(&body);
            if self.file_view.as_ref() != Some(&key) {
                match leader_file::write(path, &body).await {
                    Ok(()) => self.file_view = Some(key),
                    Err(err) => tracing::warn!(
                        file = %path.display(),
                        error = %error_chain(&err),
                        "cannot write the leader file"
                    ),
                }
            }
        }
        self.status.send_replace(status);
    }
}
