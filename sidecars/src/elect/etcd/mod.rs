//! The etcd backend, the book's own election: one etcd lease per replica (TTL =
//! `--lease-duration`, kept alive every retry period), and one key per lock, created only
//! if absent (a transaction comparing the key's create revision with 0) and attached to
//! that lease, so that it vanishes when the replica stops renewing.
//!
//! Keys, under `PREFIX` + `ELECTION` + `/`: `leader`, `items/N`, and `members/ID` (the
//! membership, when items are shared). The fencing token of a term is its key's create
//! revision: etcd's revision only grows, so every new term's token is higher than every
//! earlier one, whoever held it. Followers read the keys every retry period (a linearizable
//! range, so a member cut off from its quorum cannot show a stale "free").
//!
//! A replica's claims lapse together with its lease's renewal: at the time the last
//! successful keep-alive was sent plus the renew deadline, shorter than the TTL that etcd
//! counts from when it received it. A lapsed lease is given up for good (revoked as soon as
//! etcd answers) and a new one granted: a term that lapsed is never resumed.

pub mod gateway;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use gateway::{Created, Gateway, GatewayError};

use super::elector::Backend;
use super::lock::{Claim, LockId, Seen, View};

/// The timings the backend needs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `--lease-duration`: the etcd lease's TTL (whole seconds).
    pub lease_duration: Duration,
    /// `--renew-deadline`.
    pub renew_deadline: Duration,
    /// The longest one request to one member may take.
    pub attempt_timeout: Duration,
}

/// This replica's etcd lease.
#[derive(Debug, Clone, Copy)]
struct OwnLease {
    id: i64,
    valid_until: Instant,
    renewed_at: SystemTime,
}

/// Another replica's key, as last read.
#[derive(Debug, Clone)]
struct Observed {
    holder: String,
    token: u64,
    read_at: Instant,
    read_wall: SystemTime,
}

/// The etcd backend.
pub struct EtcdBackend {
    gateway: Gateway,
    me: String,
    /// `PREFIX` + `ELECTION` + `/`.
    root: String,
    items: u32,
    timing: Timing,
    lease: Option<OwnLease>,
    /// Leases given up and not yet revoked, with when they were given up.
    abandoned: Vec<(i64, Instant)>,
    /// The locks held, with their tokens.
    held: BTreeMap<LockId, u64>,
    /// Let go, not yet released.
    releasing: Vec<(LockId, u64)>,
    observed: BTreeMap<LockId, Observed>,
    max_token: BTreeMap<LockId, u64>,
    member_written: bool,
    members: Option<usize>,
}

/// What a key under the root is.
enum KeyKind {
    Lock(LockId),
    Member,
    Other,
}

impl EtcdBackend {
    /// A backend on the etcd members `endpoints`, keys under `prefix` + `election` + `/`.
    pub fn new(
        endpoints: &[String],
        prefix: &str,
        election: &str,
        me: String,
        items: u32,
        timing: Timing,
    ) -> EtcdBackend {
        tracing::info!(endpoints = ?endpoints, %election, "electing on etcd");
        EtcdBackend {
            gateway: Gateway::new(endpoints, timing.attempt_timeout),
            me,
            root: format!("{prefix}{election}/"),
            items,
            timing,
            lease: None,
            abandoned: Vec::new(),
            held: BTreeMap::new(),
            releasing: Vec::new(),
            observed: BTreeMap::new(),
            max_token: BTreeMap::new(),
            member_written: false,
            members: None,
        }
    }

    fn key(&self, lock: LockId) -> Vec<u8> {
        match lock {
            LockId::Leader => format!("{}leader", self.root),
            LockId::Item(n) => format!("{}items/{n}", self.root),
        }
        .into_bytes()
    }

    fn member_key(&self) -> Vec<u8> {
        format!("{}members/{}", self.root, self.me).into_bytes()
    }

    fn kind(&self, key: &[u8]) -> KeyKind {
        let Some(rest) = key.strip_prefix(self.root.as_bytes()) else {
            return KeyKind::Other;
        };
        if rest == b"leader" {
            return KeyKind::Lock(LockId::Leader);
        }
        if rest.starts_with(b"members/") {
            return KeyKind::Member;
        }
        match rest
            .strip_prefix(b"items/")
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(n) if n < self.items => KeyKind::Lock(LockId::Item(n)),
            _ => KeyKind::Other,
        }
    }

    /// The claim the lease gives, the same for every lock held.
    fn claim(&self, token: u64) -> Option<Claim> {
        self.lease.map(|lease| Claim {
            token,
            valid_until: lease.valid_until,
            renewed_at: lease.renewed_at,
        })
    }

    fn note_token(&mut self, lock: LockId, token: u64) {
        let max = self.max_token.entry(lock).or_default();
        *max = (*max).max(token);
    }

    /// Gives the lease up: every claim ends, and the lease is revoked as soon as etcd
    /// answers, so its keys go at once rather than at its TTL.
    fn abandon(&mut self) -> Vec<LockId> {
        let lost: Vec<LockId> = self.held.keys().copied().collect();
        self.held.clear();
        self.member_written = false;
        if let Some(lease) = self.lease.take() {
            self.abandoned.push((lease.id, Instant::now()));
        }
        lost
    }

    /// Renews the lease (or grants one), so that the replica's keys live on.
    async fn renew_lease(&mut self) -> Result<(), GatewayError> {
        let ttl = i64::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i64::MAX);
        let sent = Instant::now();
        let granted = match self.lease {
            Some(lease) => {
                let left = self.gateway.keep_alive(lease.id).await?;
                if left <= 0 {
                    tracing::warn!(
                        lease = lease.id,
                        "etcd lease expired: this replica's terms are over"
                    );
                    self.abandon();
                    None
                } else {
                    Some((lease.id, left))
                }
            }
            None => None,
        };
        let (id, ttl) = match granted {
            Some(renewed) => renewed,
            None => self.gateway.grant(ttl).await?,
        };
        // etcd counts the TTL from when it received the request, after `sent`.
        let lasts = self
            .timing
            .renew_deadline
            .min(Duration::from_secs(u64::try_from(ttl).unwrap_or(0)));
        if self.lease.is_none_or(|l| l.id != id) {
            tracing::debug!(lease = id, ttl, "etcd lease granted");
            self.member_written = false;
        }
        self.lease = Some(OwnLease {
            id,
            valid_until: sent + lasts,
            renewed_at: SystemTime::now(),
        });
        Ok(())
    }
}

impl Backend for EtcdBackend {
    type Error = GatewayError;

    async fn sync(&mut self) -> Result<(), GatewayError> {
        self.renew_lease().await?;
        let lease = self.lease.expect("renew_lease leaves a lease").id;
        // Leases given up are revoked once etcd answers again; one not revoked within a few
        // TTLs has expired (etcd extends leases across its own leader changes, hence more
        // than one TTL).
        let forget = self.timing.lease_duration * 5;
        let mut kept = Vec::new();
        for (id, since) in std::mem::take(&mut self.abandoned) {
            if self.gateway.revoke(id).await.is_err() && since.elapsed() < forget {
                kept.push((id, since));
            }
        }
        self.abandoned = kept;
        if self.items > 0 && !self.member_written {
            let key = self.member_key();
            self.gateway.put(&key, self.me.as_bytes(), lease).await?;
            self.member_written = true;
        }
        let kvs = self.gateway.range_prefix(self.root.as_bytes()).await?;
        let read_at = Instant::now();
        let read_wall = SystemTime::now();
        self.observed.clear();
        let mut members = 0;
        let mut still_mine = Vec::new();
        for kv in kvs {
            match self.kind(&kv.key) {
                KeyKind::Lock(lock) => {
                    self.note_token(lock, kv.create_revision);
                    if self.held.get(&lock) == Some(&kv.create_revision) && kv.lease == lease {
                        still_mine.push(lock);
                    } else {
                        self.observed.insert(
                            lock,
                            Observed {
                                holder: String::from_utf8_lossy(&kv.value).into_owned(),
                                token: kv.create_revision,
                                read_at,
                                read_wall,
                            },
                        );
                    }
                }
                KeyKind::Member => members += 1,
                KeyKind::Other => {}
            }
        }
        self.held.retain(|lock, _| {
            let kept = still_mine.contains(lock);
            if !kept {
                tracing::warn!(%lock, "this replica's key is gone or replaced: its term is over");
            }
            kept
        });
        if self.items > 0 {
            self.members = Some(members.max(1));
        }
        Ok(())
    }

    async fn acquire(&mut self, lock: LockId) -> Result<bool, GatewayError> {
        let Some(lease) = self.lease else {
            return Ok(false);
        };
        let key = self.key(lock);
        match self
            .gateway
            .create(&key, self.me.as_bytes(), lease.id)
            .await?
        {
            Created::At(token) => {
                self.note_token(lock, token);
                self.observed.remove(&lock);
                self.held.insert(lock, token);
                Ok(true)
            }
            // A retry on another member of a transaction that the first had committed.
            Created::Exists(Some(kv)) if kv.lease == lease.id && kv.value == self.me.as_bytes() => {
                self.note_token(lock, kv.create_revision);
                self.observed.remove(&lock);
                self.held.insert(lock, kv.create_revision);
                Ok(true)
            }
            Created::Exists(Some(kv)) => {
                self.note_token(lock, kv.create_revision);
                self.observed.insert(
                    lock,
                    Observed {
                        holder: String::from_utf8_lossy(&kv.value).into_owned(),
                        token: kv.create_revision,
                        read_at: Instant::now(),
                        read_wall: SystemTime::now(),
                    },
                );
                Ok(false)
            }
            Created::Exists(None) => Ok(false),
        }
    }

    fn let_go(&mut self, lock: LockId) {
        if let Some(token) = self.held.remove(&lock) {
            self.releasing.push((lock, token));
        }
    }

    async fn release(&mut self) -> Result<(), GatewayError> {
        let mut failed = None;
        for (lock, token) in std::mem::take(&mut self.releasing) {
            let key = self.key(lock);
            match self.gateway.delete_if(&key, token).await {
                Ok(_) => tracing::info!(%lock, token, "released"),
                Err(err) => {
                    failed.get_or_insert(err);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn shutdown(&mut self) -> Result<(), GatewayError> {
        // Revoking the lease deletes every key on it at once: the terms, the membership.
        self.releasing.clear();
        self.abandon();
        let mut failed = None;
        for (id, _) in std::mem::take(&mut self.abandoned) {
            match self.gateway.revoke(id).await {
                Ok(_) => tracing::info!(lease = id, "etcd lease revoked"),
                Err(err) => {
                    failed.get_or_insert(err);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn lapse(&mut self, now: Instant) -> Vec<LockId> {
        match self.lease {
            Some(lease) if lease.valid_until <= now => self.abandon(),
            _ => Vec::new(),
        }
    }

    fn view(&self) -> View {
        let mut locks = BTreeMap::new();
        let all = std::iter::once(LockId::Leader).chain((0..self.items).map(LockId::Item));
        for lock in all {
            let seen = match (
                self.held.get(&lock).and_then(|t| self.claim(*t)),
                self.observed.get(&lock),
            ) {
                (Some(claim), _) => Seen::Mine(claim),
                (None, Some(o)) => Seen::Other {
                    holder: o.holder.clone(),
                    term: o.token,
                    renewed_at: Some(o.read_wall),
                    until: o.read_at + self.timing.lease_duration,
                },
                (None, None) => Seen::Free {
                    term: self.max_token.get(&lock).copied().unwrap_or(0),
                },
            };
            locks.insert(lock, seen);
        }
        View {
            members: self.members,
            locks,
        }
    }
}
