//! The Kubernetes backend: `coordination.k8s.io/v1` Leases, with client-go's semantics.
//!
//! - One Lease per lock: `ELECTION` (the leader), `ELECTION-item-N` (the items), and, when
//!   items are shared, one membership Lease per replica, `ELECTION-member-ID`.
//! - Every write carries the resourceVersion it was computed from (a precondition): a 409
//!   means someone else wrote first, and this replica lost the race.
//! - A Lease held by another replica expires `leaseDurationSeconds` after this replica
//!   *saw its record change*, by this replica's monotonic clock. The `renewTime` written by
//!   another host's clock is shown to people and never compared with this host's clock.
//! - The holder's claim lapses at the time its last successful renewal was sent plus the
//!   renew deadline, which is shorter than the lease duration: it stops claiming before any
//!   other replica can judge the Lease expired.
//! - The fencing token is `leaseTransitions`, raised by one on every new term (a new
//!   holder, or this process taking over a term it does not hold, e.g. after a restart).
//!   A Lease this replica creates starts above the highest token it has seen for the lock,
//!   so a deleted and re-created Lease does not hand out old tokens again to a replica that
//!   saw them.
//! - Releasing (SIGTERM, items above the fair share) clears `holderIdentity` and sets
//!   `leaseDurationSeconds: 1`, as client-go does, so the next replica takes over at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};

use super::elector::Backend;
use super::lock::{Claim, LockId, Seen, View};

/// The label every Lease of an election carries: its name.
pub const ELECTION_LABEL: &str = "rigging.dev/election";
/// The label telling a Lease's role: `leader`, `item` or `member`.
pub const ROLE_LABEL: &str = "rigging.dev/elect-role";

/// What can go wrong with the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// No usable client configuration (in-cluster, or `KUBECONFIG`).
    #[error(
        "cannot configure a Kubernetes client (in-cluster service account, or KUBECONFIG): {0}"
    )]
    Config(#[source] kube::Error),
    /// A request failed.
    #[error("{verb} Lease {namespace}/{name}: {source}")]
    Api {
        /// `get`, `list`, `create`, `replace` or `delete`.
        verb: &'static str,
        /// The namespace.
        namespace: String,
        /// The Lease (or the label selector, for `list`).
        name: String,
        /// What the client said.
        source: kube::Error,
    },
    /// A request had no answer in time.
    #[error("{verb} Lease {namespace}/{name}: no answer within {timeout:?}")]
    Timeout {
        /// As for [`LeaseError::Api`].
        verb: &'static str,
        /// The namespace.
        namespace: String,
        /// The Lease.
        name: String,
        /// How long it waited.
        timeout: Duration,
    },
}

impl LeaseError {
    /// The HTTP status the API server answered, if it answered.
    fn code(&self) -> Option<u16> {
        match self {
            LeaseError::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// The timings the backend needs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `--lease-duration` (whole seconds).
    pub lease_duration: Duration,
    /// `--renew-deadline`.
    pub renew_deadline: Duration,
    /// The longest one request may take.
    pub attempt_timeout: Duration,
}

/// What this replica last saw of a Lease.
#[derive(Debug, Clone)]
struct Observed {
    resource_version: String,
    spec: LeaseSpec,
    /// When this replica first saw this version: the start of its expiry.
    seen_at: Instant,
}

/// A term this replica holds on a Lease.
#[derive(Debug, Clone)]
struct Held {
    /// The resourceVersion of this replica's last write.
    resource_version: String,
    token: u64,
    valid_until: Instant,
    renewed_at: SystemTime,
}

/// Everything this replica knows about one lock's Lease. Pure: the IO is in
/// [`LeaseBackend`], which feeds it what the API server answered.
#[derive(Debug)]
struct LockState {
    name: String,
    role: &'static str,
    observed: Option<Observed>,
    held: Option<Held>,
    /// A claim let go and not yet released.
    releasing: Option<Held>,
    /// The highest token seen for the lock.
    max_token: u64,
}

fn transitions(spec: &LeaseSpec) -> u64 {
    spec.lease_transitions
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(0)
}

fn micro_time(t: SystemTime) -> MicroTime {
    MicroTime(Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn whole_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX).max(1)
}

impl LockState {
    fn new(name: String, role: &'static str) -> LockState {
        LockState {
            name,
            role,
            observed: None,
            held: None,
            releasing: None,
            max_token: 0,
        }
    }

    /// Takes in what a read returned (`None`: there is no such Lease) at `now`.
    fn observe(&mut self, lease: Option<&Lease>, now: Instant) {
        let Some(lease) = lease else {
            self.observed = None;
            if self.held.take().is_some() {
                tracing::warn!(lease = %self.name, "the Lease this replica held was deleted");
            }
            return;
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        self.max_token = self.max_token.max(transitions(&spec));
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.resource_version != version);
        if let Some(held) = &self.held
            && held.resource_version != version
        {
            tracing::warn!(
                lease = %self.name,
                holder = spec.holder_identity.as_deref().unwrap_or(""),
                "the Lease was written by someone else: this replica's term is over"
            );
            self.held = None;
        }
        if changed {
            self.observed = Some(Observed {
                resource_version: version,
                spec,
                seen_at: now,
            });
        }
    }

    /// How long `spec`'s term lasts without renewal.
    fn duration_of(spec: &LeaseSpec, default: Duration) -> Duration {
        spec.lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(default, Duration::from_secs)
    }

    fn seen(&self, me: &str, default_duration: Duration, now: Instant) -> Seen {
        if let Some(held) = &self.held {
            return Seen::Mine(Claim {
                token: held.token,
                valid_until: held.valid_until,
                renewed_at: held.renewed_at,
            });
        }
        let free = Seen::Free {
            term: self.max_token,
        };
        let Some(observed) = &self.observed else {
            return free;
        };
        let holder = observed.spec.holder_identity.as_deref().unwrap_or("");
        let until = observed.seen_at + Self::duration_of(&observed.spec, default_duration);
        // A record naming this replica that this process does not hold is a term of an
        // earlier process with the same identity: over, since this one runs.
        if holder.is_empty() || holder == me || now >= until {
            return free;
        }
        Seen::Other {
            holder: holder.to_owned(),
            term: transitions(&observed.spec),
            renewed_at: observed
                .spec
                .renew_time
                .as_ref()
                .map(|t| SystemTime::from(t.0)),
            until,
        }
    }

    /// The write that starts a new term: the resourceVersion it must apply to (`None`:
    /// create the Lease), the record, and the term's token.
    fn acquire_write(
        &self,
        me: &str,
        lease_duration: Duration,
        now: SystemTime,
    ) -> (Option<String>, LeaseSpec, u64) {
        let mut spec = self
            .observed
            .as_ref()
            .map(|o| o.spec.clone())
            .unwrap_or_default();
        let token = transitions(&spec).max(self.max_token) + 1;
        spec.holder_identity = Some(me.to_owned());
        spec.lease_duration_seconds = Some(whole_seconds(lease_duration));
        spec.acquire_time = Some(micro_time(now));
        spec.renew_time = Some(micro_time(now));
        spec.lease_transitions = Some(i32::try_from(token).unwrap_or(i32::MAX));
        let version = self.observed.as_ref().map(|o| o.resource_version.clone());
        (version, spec, token)
    }

    /// The renewal of the held term, if one is held.
    fn renew_write(&self, now: SystemTime) -> Option<(String, LeaseSpec, u64)> {
        let held = self.held.as_ref()?;
        let mut spec = self.observed.as_ref()?.spec.clone();
        spec.renew_time = Some(micro_time(now));
        Some((held.resource_version.clone(), spec, held.token))
    }

    /// The release of a let-go term: no holder, and a one-second duration, so that the
    /// others take over at once.
    fn release_write(&self, held: &Held, now: SystemTime) -> Option<(String, LeaseSpec)> {
        let mut spec = self.observed.as_ref()?.spec.clone();
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro_time(now));
        spec.lease_transitions = Some(i32::try_from(held.token).unwrap_or(i32::MAX));
        Some((held.resource_version.clone(), spec))
    }

    /// Takes in this replica's own successful write of a term with `token`, sent at
    /// `sent`: the claim stands until `sent + renew_deadline`.
    fn written(&mut self, lease: &Lease, token: u64, sent: Instant, renew_deadline: Duration) {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        let renewed_at = spec
            .renew_time
            .as_ref()
            .map_or_else(SystemTime::now, |t| SystemTime::from(t.0));
        self.max_token = self.max_token.max(token);
        self.held = Some(Held {
            resource_version: version.clone(),
            token,
            valid_until: sent + renew_deadline,
            renewed_at,
        });
        self.observed = Some(Observed {
            resource_version: version,
            spec,
            seen_at: sent,
        });
    }

    /// Drops the claim if its deadline has passed.
    fn lapse(&mut self, now: Instant) -> bool {
        if self.held.as_ref().is_some_and(|h| h.valid_until <= now) {
            self.held = None;
            return true;
        }
        false
    }
}

/// The Lease object for `spec`, to be written over `resource_version` (or created).
fn record(
    name: &str,
    election: &str,
    role: &str,
    resource_version: Option<String>,
    spec: LeaseSpec,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version,
            labels: Some(
                [
                    (ELECTION_LABEL.to_owned(), election.to_owned()),
                    (ROLE_LABEL.to_owned(), role.to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    }
}

/// A membership Lease's name for `identity`: the identity made a valid name (lowercase
/// letters, digits, `-`, `.`), with a hash of the original when that changed it.
pub fn member_name(election: &str, identity: &str) -> String {
    let mut clean: String = identity
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    clean = clean
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    clean.truncate(180);
    if clean != identity || clean.is_empty() {
        let hash = identity.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        clean = format!("{}-{hash:08x}", clean.trim_end_matches(['-', '.']))
            .trim_start_matches('-')
            .to_owned();
    }
    format!("{election}-member-{clean}")
}

/// Another replica's membership Lease, as last seen.
#[derive(Debug)]
struct MemberSeen {
    resource_version: String,
    seen_at: Instant,
    duration: Duration,
    live_holder: bool,
}

/// The Lease backend.
pub struct LeaseBackend {
    api: Api<Lease>,
    namespace: String,
    me: String,
    election: String,
    timing: Timing,
    locks: BTreeMap<LockId, LockState>,
    items: u32,
    /// This replica's membership Lease (items only) and its resourceVersion.
    member: Option<(String, Option<String>)>,
    others: BTreeMap<String, MemberSeen>,
    members: Option<usize>,
}

impl LeaseBackend {
    /// A backend on the Leases of `namespace` (the client's default namespace when
    /// `None`: the pod's own in a cluster).
    pub async fn connect(
        namespace: Option<String>,
        me: String,
        election: String,
        items: u32,
        timing: Timing,
    ) -> Result<LeaseBackend, LeaseError> {
        let client = kube::Client::try_default()
            .await
            .map_err(LeaseError::Config)?;
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
        let api = Api::namespaced(client, &namespace);
        let mut locks = BTreeMap::new();
        locks.insert(LockId::Leader, LockState::new(election.clone(), "leader"));
        for n in 0..items {
            locks.insert(
                LockId::Item(n),
                LockState::new(format!("{election}-item-{n}"), "item"),
            );
        }
        let member = (items > 0).then(|| (member_name(&election, &me), None));
        tracing::info!(%namespace, %election, "electing on Kubernetes Leases");
        Ok(LeaseBackend {
            api,
            namespace,
            me,
            election,
            timing,
            locks,
            items,
            member,
            others: BTreeMap::new(),
            members: None,
        })
    }

    /// Runs one request with the attempt timeout, naming the Lease in any error.
    async fn call<T>(
        &self,
        verb: &'static str,
        name: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(self.timing.attempt_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(LeaseError::Api {
                verb,
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                source,
            }),
            Err(_) => Err(LeaseError::Timeout {
                verb,
                namespace: self.namespace.clone(),
                name: name.to_owned(),
                timeout: self.timing.attempt_timeout,
            }),
        }
    }

    /// Renews the held term of `id`, if any. A 409 or 404 ends the term.
    async fn renew(&mut self, id: LockId) -> Result<(), LeaseError> {
        let state = &self.locks[&id];
        let Some((version, spec, token)) = state.renew_write(SystemTime::now()) else {
            return Ok(());
        };
        let name = state.name.clone();
        let lease = record(&name, &self.election, state.role, Some(version), spec);
        let sent = Instant::now();
        let result = self
            .call(
                "replace",
                &name,
                self.api.replace(&name, &PostParams::default(), &lease),
            )
            .await;
        let state = self.locks.get_mut(&id).expect("every lock has a state");
        match result {
            Ok(written) => {
                state.written(&written, token, sent, self.timing.renew_deadline);
                Ok(())
            }
            Err(err) if matches!(err.code(), Some(404 | 409)) => {
                tracing::warn!(lease = %name, error = %err, "renewal refused: this replica's term is over");
                state.held = None;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Reads the membership Leases from `leases`, renews this replica's own and counts the
    /// live ones.
    async fn sync_members(&mut self, leases: &[Lease]) -> Result<(), LeaseError> {
        let Some((own, _)) = self.member.clone() else {
            return Ok(());
        };
        let now = Instant::now();
        let mut present = Vec::new();
        let mut own_version = None;
        for lease in leases {
            let (Some(name), Some(version)) = (
                lease.metadata.name.as_deref(),
                lease.metadata.resource_version.as_deref(),
            ) else {
                continue;
            };
            let is_member = lease
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ROLE_LABEL))
                .is_some_and(|r| r == "member");
            if !is_member {
                continue;
            }
            if name == own {
                own_version = Some(version.to_owned());
                continue;
            }
            let spec = lease.spec.clone().unwrap_or_default();
            present.push(name.to_owned());
            let duration = LockState::duration_of(&spec, self.timing.lease_duration);
            let live_holder = spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty());
            let entry = self
                .others
                .entry(name.to_owned())
                .or_insert_with(|| MemberSeen {
                    resource_version: version.to_owned(),
                    seen_at: now,
                    duration,
                    live_holder,
                });
            if entry.resource_version != version {
                *entry = MemberSeen {
                    resource_version: version.to_owned(),
                    seen_at: now,
                    duration,
                    live_holder,
                };
            }
        }
        self.others.retain(|name, _| present.contains(name));
        let live = self
            .others
            .values()
            .filter(|m| m.live_holder && now < m.seen_at + m.duration)
            .count();
        self.members = Some(live + 1);
        // Membership Leases of replicas long gone are removed, so they do not pile up.
        let stale: Vec<(String, String)> = self
            .others
            .iter()
            .filter(|(_, m)| now >= m.seen_at + m.duration + self.timing.lease_duration)
            .map(|(name, m)| (name.clone(), m.resource_version.clone()))
            .collect();
        for (name, version) in stale {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(version),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            if self
                .call("delete", &name, self.api.delete(&name, &params))
                .await
                .is_ok()
            {
                tracing::info!(lease = %name, "removed the membership Lease of a replica gone");
                self.others.remove(&name);
            }
        }
        // This replica's own membership: renewed like a term, without a token.
        let spec = LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(whole_seconds(self.timing.lease_duration)),
            renew_time: Some(micro_time(SystemTime::now())),
            ..LeaseSpec::default()
        };
        let lease = record(&own, &self.election, "member", own_version.clone(), spec);
        let written = match own_version {
            Some(_) => {
                self.call(
                    "replace",
                    &own,
                    self.api.replace(&own, &PostParams::default(), &lease),
                )
                .await
            }
            None => {
                self.call(
                    "create",
                    &own,
                    self.api.create(&PostParams::default(), &lease),
                )
                .await
            }
        };
        match written {
            Ok(lease) => {
                self.member = Some((own, lease.metadata.resource_version));
                Ok(())
            }
            // Raced with a cleanup or an earlier self: the next round reads it again.
            Err(err) if matches!(err.code(), Some(404 | 409)) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

impl Backend for LeaseBackend {
    type Error = LeaseError;

    async fn sync(&mut self) -> Result<(), LeaseError> {
        let leader = self.locks[&LockId::Leader].name.clone();
        let lease = self.call("get", &leader, self.api.get_opt(&leader)).await?;
        self.locks
            .get_mut(&LockId::Leader)
            .expect("the leader lock")
            .observe(lease.as_ref(), Instant::now());
        let mut listed = Vec::new();
        if self.items > 0 {
            let selector = format!("{ELECTION_LABEL}={}", self.election);
            listed = self
                .call(
                    "list",
                    &selector,
                    self.api.list(&ListParams::default().labels(&selector)),
                )
                .await?
                .items;
            let now = Instant::now();
            for (id, state) in self.locks.iter_mut() {
                if *id == LockId::Leader {
                    continue;
                }
                let lease = listed
                    .iter()
                    .find(|l| l.metadata.name.as_deref() == Some(state.name.as_str()));
                state.observe(lease, now);
            }
        }
        let held: Vec<LockId> = self
            .locks
            .iter()
            .filter(|(_, s)| s.held.is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut failed = None;
        for id in held {
            if let Err(err) = self.renew(id).await {
                failed.get_or_insert(err);
            }
        }
        if let Err(err) = self.sync_members(&listed).await {
            failed.get_or_insert(err);
        }
        failed.map_or(Ok(()), Err)
    }

    async fn acquire(&mut self, id: LockId) -> Result<bool, LeaseError> {
        let state = &self.locks[&id];
        let (version, spec, token) =
            state.acquire_write(&self.me, self.timing.lease_duration, SystemTime::now());
        let name = state.name.clone();
        let create = version.is_none();
        let lease = record(&name, &self.election, state.role, version, spec);
        let sent = Instant::now();
        let result = if create {
            self.call(
                "create",
                &name,
                self.api.create(&PostParams::default(), &lease),
            )
            .await
        } else {
            self.call(
                "replace",
                &name,
                self.api.replace(&name, &PostParams::default(), &lease),
            )
            .await
        };
        let state = self.locks.get_mut(&id).expect("every lock has a state");
        match result {
            Ok(written) => {
                state.written(&written, token, sent, self.timing.renew_deadline);
                Ok(true)
            }
            // Someone else wrote first (409), or it was deleted meanwhile (404).
            Err(err) if err.code() == Some(409) => Ok(false),
            Err(err) if err.code() == Some(404) => {
                state.observed = None;
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    fn let_go(&mut self, id: LockId) {
        if let Some(state) = self.locks.get_mut(&id) {
            state.releasing = state.held.take();
        }
    }

    async fn release(&mut self) -> Result<(), LeaseError> {
        let mut failed = None;
        let ids: Vec<LockId> = self
            .locks
            .iter()
            .filter(|(_, s)| s.releasing.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let state = self.locks.get_mut(&id).expect("listed above");
            let Some(held) = state.releasing.take() else {
                continue;
            };
            let Some((version, spec)) = state.release_write(&held, SystemTime::now()) else {
                continue;
            };
            let name = state.name.clone();
            let lease = record(&name, &self.election, state.role, Some(version), spec);
            match self
                .call(
                    "replace",
                    &name,
                    self.api.replace(&name, &PostParams::default(), &lease),
                )
                .await
            {
                Ok(_) => tracing::info!(lease = %name, token = held.token, "released"),
                // Already someone else's, or gone: nothing to release.
                Err(err) if matches!(err.code(), Some(404 | 409)) => {}
                Err(err) => {
                    failed.get_or_insert(err);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn shutdown(&mut self) -> Result<(), LeaseError> {
        let released = self.release().await;
        if let Some((own, _)) = self.member.take() {
            let _ = self
                .call(
                    "delete",
                    &own,
                    self.api.delete(&own, &DeleteParams::default()),
                )
                .await;
        }
        released
    }

    fn lapse(&mut self, now: Instant) -> Vec<LockId> {
        self.locks
            .iter_mut()
            .filter_map(|(id, state)| state.lapse(now).then_some(*id))
            .collect()
    }

    fn view(&self) -> View {
        let now = Instant::now();
        View {
            members: self.members,
            locks: self
                .locks
                .iter()
                .map(|(id, s)| (*id, s.seen(&self.me, self.timing.lease_duration, now)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LD: Duration = Duration::from_secs(15);
    const RD: Duration = Duration::from_secs(10);

    /// A Lease as the API server would answer it.
    fn lease(version: &str, holder: &str, transitions: i32, renewed: SystemTime) -> Lease {
        record(
            "jobs",
            "jobs",
            "leader",
            Some(version.into()),
            LeaseSpec {
                holder_identity: (!holder.is_empty()).then(|| holder.to_owned()),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(transitions),
                renew_time: Some(micro_time(renewed)),
                ..LeaseSpec::default()
            },
        )
    }

    /// What the API server answers to a write: the record with a new version.
    fn stored(version: &str, spec: LeaseSpec) -> Lease {
        record("jobs", "jobs", "leader", Some(version.into()), spec)
    }

    fn state() -> LockState {
        LockState::new("jobs".into(), "leader")
    }

    #[test]
    fn expiry_is_judged_by_when_this_replica_saw_the_record_change_not_by_renew_time() {
        let t0 = Instant::now();
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let mut s = state();
        // Written by a host whose clock is an hour behind: not expired on sight.
        s.observe(Some(&lease("1", "b", 3, an_hour_ago)), t0);
        assert!(
            matches!(s.seen("a", LD, t0), Seen::Other { ref holder, term: 3, .. } if holder == "b")
        );
        // The same version seen again later does not restart the clock...
        s.observe(Some(&lease("1", "b", 3, an_hour_ago)), t0 + LD / 2);
        assert!(matches!(
            s.seen("a", LD, t0 + LD - Duration::from_millis(1)),
            Seen::Other { .. }
        ));
        assert_eq!(s.seen("a", LD, t0 + LD), Seen::Free { term: 3 });
        // ...a new version does, whatever time it carries (even one in the future).
        let future = SystemTime::now() + Duration::from_secs(3600);
        s.observe(Some(&lease("2", "b", 3, future)), t0 + LD);
        assert!(matches!(
            s.seen("a", LD, t0 + LD + LD / 2),
            Seen::Other { .. }
        ));
        assert_eq!(s.seen("a", LD, t0 + LD + LD), Seen::Free { term: 3 });
    }

    #[test]
    fn a_new_term_raises_the_token_and_a_renewal_keeps_it() {
        let t0 = Instant::now();
        let mut s = state();
        s.observe(Some(&lease("7", "", 4, SystemTime::now())), t0);
        assert_eq!(
            s.seen("a", LD, t0),
            Seen::Free { term: 4 },
            "released: free at once"
        );
        let (version, spec, token) = s.acquire_write("a", LD, SystemTime::now());
        assert_eq!((version.as_deref(), token), (Some("7"), 5));
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        s.written(&stored("8", spec), token, t0, RD);
        let (version, spec, token) = s.renew_write(SystemTime::now()).unwrap();
        assert_eq!((version.as_str(), token), ("8", 5));
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    }

    #[test]
    fn a_lease_created_again_starts_above_every_token_seen() {
        let t0 = Instant::now();
        let mut s = state();
        s.observe(Some(&lease("3", "b", 9, SystemTime::now())), t0);
        s.observe(None, t0 + Duration::from_secs(1));
        let (version, spec, token) = s.acquire_write("a", LD, SystemTime::now());
        assert_eq!((version, token), (None, 10), "create, above 9");
        assert_eq!(spec.lease_duration_seconds, Some(15));
        let (_, _, first) = state().acquire_write("a", LD, SystemTime::now());
        assert_eq!(first, 1, "a first term is 1, never 0");
    }

    #[test]
    fn the_claim_lasts_the_renew_deadline_from_when_the_write_was_sent() {
        let sent = Instant::now();
        let mut s = state();
        let (_, spec, token) = s.acquire_write("a", LD, SystemTime::now());
        s.written(&stored("1", spec), token, sent, RD);
        let claim = s.seen("a", LD, sent).claim_at(sent).unwrap();
        assert_eq!(claim.valid_until, sent + RD);
        assert!(!s.lapse(sent + RD - Duration::from_millis(1)));
        assert!(s.lapse(sent + RD));
        assert_eq!(
            s.seen("a", LD, sent + RD),
            Seen::Free { term: 1 },
            "own identity: free"
        );
    }

    #[test]
    fn a_record_written_by_another_ends_the_term() {
        let t0 = Instant::now();
        let mut s = state();
        let (_, spec, token) = s.acquire_write("a", LD, SystemTime::now());
        s.written(&stored("1", spec), token, t0, RD);
        s.observe(Some(&lease("2", "b", 2, SystemTime::now())), t0);
        assert!(s.held.is_none());
        assert!(matches!(s.seen("a", LD, t0), Seen::Other { term: 2, .. }));
    }

    #[test]
    fn a_term_of_an_earlier_process_with_this_identity_is_taken_over_with_a_new_token() {
        let t0 = Instant::now();
        let mut s = state();
        s.observe(Some(&lease("5", "a", 6, SystemTime::now())), t0);
        assert_eq!(s.seen("a", LD, t0), Seen::Free { term: 6 });
        let (_, _, token) = s.acquire_write("a", LD, SystemTime::now());
        assert_eq!(token, 7);
    }

    #[test]
    fn a_release_clears_the_holder_and_keeps_the_token() {
        let t0 = Instant::now();
        let mut s = state();
        let (_, spec, token) = s.acquire_write("a", LD, SystemTime::now());
        s.written(&stored("1", spec), token, t0, RD);
        let held = s.held.take().unwrap();
        let (version, spec) = s.release_write(&held, SystemTime::now()).unwrap();
        assert_eq!(version, "1");
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(1));
    }

    #[test]
    fn member_names_are_valid_lease_names() {
        assert_eq!(
            member_name("jobs", "jobs-7f9c-x2"),
            "jobs-member-jobs-7f9c-x2"
        );
        let odd = member_name("jobs", "Host_Name/1");
        assert!(odd.starts_with("jobs-member-host-name-1-"), "{odd}");
        assert_ne!(odd, member_name("jobs", "host-name-1"));
        let long = member_name("jobs", &"x".repeat(300));
        assert!(long.len() <= 253, "{}", long.len());
        assert!(
            member_name("jobs", "__")
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
