//! `--items N`: each replica owns at most its fair share, every item finds an owner, and
//! items move when replicas leave (SIGTERM: at once; SIGKILL: at expiry) and join. The
//! checker asserts throughout that no item term is claimed twice.

use std::time::{Duration, Instant};

use super::checker::Checker;
use super::cluster::EtcdCluster;
use super::{LEASE_DURATION, RETRY_PERIOD, Replica, SLACK, short_timings, wait_for};

const ITEMS: u64 = 7;

/// Each replica's owned items, once every item is owned exactly once and no replica owns
/// more than `share`.
fn settled(replicas: &[&Replica], share: usize) -> Option<Vec<Vec<u64>>> {
    let owned: Vec<Vec<u64>> = replicas
        .iter()
        .map(|r| {
            r.owned()
                .ok()
                .map(|o| o.into_iter().map(|(item, _)| item).collect())
        })
        .collect::<Option<_>>()?;
    let mut all: Vec<u64> = owned.iter().flatten().copied().collect();
    all.sort_unstable();
    let fair = owned.iter().all(|o| o.len() <= share);
    (fair && all == (0..ITEMS).collect::<Vec<_>>()).then_some(owned)
}

#[test]
fn etcd_items_are_shared_fairly_and_handed_over_as_replicas_come_and_go() {
    let cluster = EtcdCluster::start(3);
    let mut args = vec![
        "--backend".to_owned(),
        "etcd".into(),
        "--election".into(),
        "items".into(),
        "--items".into(),
        ITEMS.to_string(),
    ];
    args.extend(cluster.endpoint_flags());
    args.extend(short_timings());
    let start = |name: &str| Replica::start(name, &args, &[]);
    let (a, mut b, c) = (start("a"), start("b"), start("c"));
    let mut checker = Checker::new();
    for replica in [&a, &b, &c] {
        checker.watch_owned(replica);
    }
    let owned = wait_for(Duration::from_secs(20), "7 items over 3 replicas", || {
        settled(&[&a, &b, &c], 3)
    });
    eprintln!("elect items: 3 replicas own {owned:?}");

    // One leaves with SIGTERM: its items are released and taken at once.
    c.signal("TERM");
    let left = Instant::now();
    let owned = wait_for(LEASE_DURATION + SLACK, "7 items over 2 replicas", || {
        settled(&[&a, &b], 4)
    });
    eprintln!(
        "elect items: after SIGTERM, {owned:?} in {:?}",
        left.elapsed()
    );
    let mut c = c;
    assert_eq!(c.proc.wait_exit(Duration::from_secs(10)), Some(0));

    // One joins: the others let their excess go, and it takes it.
    let d = start("d");
    checker.watch_owned(&d);
    let owned = wait_for(
        LEASE_DURATION + SLACK,
        "items handed to the new replica",
        || settled(&[&a, &b, &d], 3).filter(|o| !o[2].is_empty()),
    );
    eprintln!("elect items: after d joined, {owned:?}");

    // One dies: its items are taken once its lease has expired.
    b.kill();
    let owned = wait_for(
        LEASE_DURATION + 2 * RETRY_PERIOD + SLACK,
        "b's items taken over",
        || settled(&[&a, &d], 4),
    );
    eprintln!("elect items: after SIGKILL of b, {owned:?}");
    checker.verify();
}
