//! The book's sharded ownership: which locks this replica should try to take and which it
//! should let go, from what it sees. Pure: the elector runs it after every round.
//!
//! The leader lock is taken whenever it is free. Of the `N` items, each replica holds at
//! most its fair share, `ceil(N / live replicas)`: it takes free items while below it and
//! releases its highest-numbered items while above it (a replica joined), so the others can
//! take them. Since `replicas × ceil(N / replicas) ≥ N`, every item finds an owner once
//! every replica is at its share.

use std::time::Instant;

use super::lock::{LockId, Seen, View};

/// What to do after a round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free locks to try to take, in order.
    pub acquire: Vec<LockId>,
    /// Held items to let go (this replica holds more than its share).
    pub release: Vec<LockId>,
}

/// `ceil(items / members)`: the most items one replica holds.
pub fn fair_share(items: u32, members: usize) -> u32 {
    let members = u32::try_from(members.max(1)).unwrap_or(u32::MAX);
    items.div_ceil(members)
}

/// The plan for `view` at `now`, with `items` items. `start` is where this replica begins
/// looking for free items (different per replica, so that replicas racing for free items
/// mostly go for different ones).
pub fn plan(view: &View, items: u32, start: u32, now: Instant) -> Plan {
    let mut plan = Plan::default();
    if matches!(view.locks.get(&LockId::Leader), Some(Seen::Free { .. })) {
        plan.acquire.push(LockId::Leader);
    }
    if items == 0 {
        return plan;
    }
    // Without a membership count the share is unknown: keep what is held, take nothing.
    let Some(members) = view.members else {
        return plan;
    };
    let share = fair_share(items, members) as usize;
    let mut owned: Vec<u32> = view
        .claims_at(now)
        .filter_map(|(id, _)| match id {
            LockId::Item(n) => Some(n),
            LockId::Leader => None,
        })
        .collect();
    if owned.len() > share {
        owned.sort_unstable_by(|a, b| b.cmp(a));
        plan.release = owned[..owned.len() - share]
            .iter()
            .map(|n| LockId::Item(*n))
            .collect();
        return plan;
    }
    let wanted = share - owned.len();
    plan.acquire.extend(
        (0..items)
            .map(|i| (start.wrapping_add(i)) % items)
            .filter(|n| matches!(view.locks.get(&LockId::Item(*n)), Some(Seen::Free { .. })))
            .take(wanted)
            .map(LockId::Item),
    );
    plan
}

/// A replica's starting point among the items: a hash of its identity (FNV-1a).
pub fn start_for(identity: &str, items: u32) -> u32 {
    if items == 0 {
        return 0;
    }
    let hash = identity.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % u64::from(items)) as u32
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::elect::lock::Claim;

    struct Fixture {
        now: Instant,
        view: View,
    }

    /// A view of `items` items, all free, with `members` replicas.
    fn items(n: u32, members: usize) -> Fixture {
        let mut locks = BTreeMap::new();
        locks.insert(LockId::Leader, Seen::Free { term: 0 });
        for i in 0..n {
            locks.insert(LockId::Item(i), Seen::Free { term: 0 });
        }
        Fixture {
            now: Instant::now(),
            view: View {
                members: Some(members),
                locks,
            },
        }
    }

    impl Fixture {
        fn mine(mut self, owned: &[u32]) -> Self {
            for n in owned {
                self.view.locks.insert(
                    LockId::Item(*n),
                    Seen::Mine(Claim {
                        token: 7,
                        valid_until: self.now + Duration::from_secs(1),
                        renewed_at: SystemTime::now(),
                    }),
                );
            }
            self
        }

        fn lapsed(mut self, n: u32) -> Self {
            self.view.locks.insert(
                LockId::Item(n),
                Seen::Mine(Claim {
                    token: 7,
                    valid_until: self.now,
                    renewed_at: SystemTime::now(),
                }),
            );
            self
        }

        fn others(mut self, held: &[u32]) -> Self {
            for n in held {
                self.view.locks.insert(
                    LockId::Item(*n),
                    Seen::Other {
                        holder: "b".into(),
                        term: 3,
                        renewed_at: None,
                        until: self.now + Duration::from_secs(1),
                    },
                );
            }
            self
        }

        fn leader_held(mut self) -> Self {
            self.view.locks.insert(
                LockId::Leader,
                Seen::Other {
                    holder: "b".into(),
                    term: 1,
                    renewed_at: None,
                    until: self.now + Duration::from_secs(1),
                },
            );
            self
        }

        fn plan(&self, start: u32) -> Plan {
            let n = self.view.locks.len() as u32 - 1;
            plan(&self.view, n, start, self.now)
        }
    }

    fn ids(items: &[u32]) -> Vec<LockId> {
        items.iter().map(|n| LockId::Item(*n)).collect()
    }

    #[test]
    fn the_fair_share_rounds_up() {
        assert_eq!(fair_share(7, 3), 3);
        assert_eq!(fair_share(6, 3), 2);
        assert_eq!(fair_share(1, 3), 1);
        assert_eq!(fair_share(7, 0), 7, "no membership yet counts as one");
    }

    #[test]
    fn a_free_leader_lock_is_taken_and_a_held_one_is_not() {
        let plan = items(0, 1).plan(0);
        assert_eq!(plan.acquire, vec![LockId::Leader]);
        assert_eq!(items(0, 1).leader_held().plan(0), Plan::default());
    }

    #[test]
    fn free_items_are_taken_up_to_the_share_from_the_replicas_start() {
        let plan = items(7, 3).leader_held().plan(5);
        assert_eq!(plan.acquire, ids(&[5, 6, 0]));
        assert!(plan.release.is_empty());
        let plan = items(7, 3).leader_held().mine(&[1]).others(&[5]).plan(5);
        assert_eq!(plan.acquire, ids(&[6, 0]), "one held, item 5 taken by b");
    }

    #[test]
    fn a_replica_above_its_share_lets_its_highest_items_go() {
        // Four replicas now: the share of 7 is 2.
        let plan = items(7, 4).leader_held().mine(&[0, 3, 6]).plan(0);
        assert_eq!(plan.release, ids(&[6]));
        assert!(plan.acquire.is_empty());
    }

    #[test]
    fn a_lapsed_claim_is_neither_owned_nor_free() {
        let plan = items(3, 3).leader_held().lapsed(0).others(&[1, 2]).plan(0);
        assert_eq!(plan, Plan::default());
        let plan = items(3, 1).leader_held().lapsed(0).plan(0);
        assert_eq!(plan.acquire, ids(&[1, 2]), "share 3, nothing standing");
    }

    #[test]
    fn without_a_membership_count_no_item_is_taken() {
        let mut fixture = items(3, 1).leader_held();
        fixture.view.members = None;
        assert_eq!(fixture.plan(0), Plan::default());
    }

    #[test]
    fn starts_spread_over_the_items() {
        assert_eq!(start_for("a", 0), 0);
        let starts: std::collections::BTreeSet<u32> = (0..20)
            .map(|i| start_for(&format!("replica-{i}"), 10))
            .collect();
        assert!(starts.len() > 3, "{starts:?}");
        assert!(starts.iter().all(|s| *s < 10));
    }
}
