//! What every backend knows about the locks of one election, in one vocabulary: the leader
//! lock and the item locks, each free, held by another replica, or claimed by this one.
//! The elector, the API and the fair-share plan read only this, never a backend's records.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Instant, SystemTime};

/// One lock of an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockId {
    /// The single leader.
    Leader,
    /// Item `N` of `--items` (0-based).
    Item(u32),
}

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockId::Leader => f.write_str("leader"),
            LockId::Item(n) => write!(f, "item {n}"),
        }
    }
}

/// A term this replica holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The term's fencing token.
    pub token: u64,
    /// The instant past which this replica no longer claims the lock, renewed or not: when
    /// the last renewal that succeeded was *sent*, plus the renew deadline. Measured on the
    /// monotonic clock, so a pause of the process (SIGSTOP, a long GC) counts against it.
    pub valid_until: Instant,
    /// Wall-clock time of that renewal, for people reading `/leader`.
    pub renewed_at: SystemTime,
}

impl Claim {
    /// Whether the claim still stands at `now`.
    pub fn stands_at(&self, now: Instant) -> bool {
        now < self.valid_until
    }
}

/// What this replica knows of one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Nobody holds it: absent, released, or expired by this replica's own observation.
    Free {
        /// The highest token this replica has seen for the lock (0: none).
        term: u64,
    },
    /// Another replica holds it, as far as this one can tell.
    Other {
        /// Its identity.
        holder: String,
        /// Its term's token.
        term: u64,
        /// When it last renewed, by its own clock (Leases) or when this replica last saw
        /// the term alive (etcd).
        renewed_at: Option<SystemTime>,
        /// Past this instant this replica stops naming it leader without news: the term
        /// may have ended unseen (this replica may be cut off from the backend).
        until: Instant,
    },
    /// This replica holds it (the claim may have lapsed: check [`Claim::stands_at`]).
    Mine(Claim),
}

impl Seen {
    /// The claim, if this replica holds the lock and the claim stands at `now`.
    pub fn claim_at(&self, now: Instant) -> Option<Claim> {
        match self {
            Seen::Mine(claim) if claim.stands_at(now) => Some(*claim),
            _ => None,
        }
    }

    /// The term's token as this replica knows it.
    pub fn term(&self) -> u64 {
        match self {
            Seen::Free { term } | Seen::Other { term, .. } => *term,
            Seen::Mine(claim) => claim.token,
        }
    }
}

/// Everything a backend knows at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Live replicas, this one included, when the election shares items (`None` when it
    /// does not, or before the membership was first read).
    pub members: Option<usize>,
    /// Every lock of the election: the leader, then the items in order.
    pub locks: BTreeMap<LockId, Seen>,
}

impl View {
    /// The claims standing at `now`.
    pub fn claims_at(&self, now: Instant) -> impl Iterator<Item = (LockId, Claim)> + '_ {
        self.locks
            .iter()
            .filter_map(move |(id, seen)| seen.claim_at(now).map(|c| (*id, c)))
    }

    /// The earliest instant at which a claim of this replica lapses.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.locks
            .values()
            .filter_map(|seen| match seen {
                Seen::Mine(claim) => Some(claim.valid_until),
                _ => None,
            })
            .min()
    }
}
