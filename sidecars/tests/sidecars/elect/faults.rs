//! Three sidecars over a 3-member etcd cluster through the faults of the issue, one after
//! the other, with the checker and fenced writers running throughout.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::checker::Checker;
use super::cluster::EtcdCluster;
use super::store::{FencedStore, Writer};
use super::{
    LEASE_DURATION, RETRY_PERIOD, Replica, SLACK, leader_of, short_timings, wait_for,
    wait_new_leader,
};

fn etcd_args(cluster: &EtcdCluster, election: &str) -> Vec<String> {
    let mut args = vec![
        "--backend".to_owned(),
        "etcd".into(),
        "--election".into(),
        election.into(),
    ];
    args.extend(cluster.endpoint_flags());
    args.extend(short_timings());
    args
}

fn all(replicas: &[Replica]) -> Vec<&Replica> {
    replicas.iter().collect()
}

fn all_but(replicas: &[Replica], skip: usize) -> Vec<&Replica> {
    replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, r)| r)
        .collect()
}

#[test]
fn etcd_leadership_survives_faults_and_a_deposed_leaders_writes_are_fenced() {
    let mut cluster = EtcdCluster::start(3);
    let args = etcd_args(&cluster, "faults");
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|name| Replica::start(name, &args, &[]))
        .collect();
    let mut checker = Checker::new();
    for replica in &replicas {
        checker.watch_leader(replica);
    }
    let store = FencedStore::start();
    let mut writers: Vec<Writer> = replicas
        .iter()
        .map(|r| Writer::start(r, store.addr))
        .collect();
    // A new term within the lease duration and a retry period, after the last renewal.
    let bound = LEASE_DURATION + RETRY_PERIOD + SLACK;

    // A first leader.
    let (first, token, took) = wait_new_leader(&all(&replicas), 0, Duration::from_secs(20));
    eprintln!(
        "elect faults: {} leads with token {token} after {took:?}",
        replicas[first].name
    );

    // The checker polls on its own threads: on a busy machine it may not have asked the
    // first leader yet, and a term it never saw would be missing from its count.
    wait_for(
        Duration::from_secs(5),
        "the checker to see the first term",
        || checker.has_seen(token).then_some(()),
    );

    // SIGKILL of the leader's sidecar: it renews no more, its lease expires.
    replicas[first].kill();
    let (next, token, took) = wait_new_leader(&all_but(&replicas, first), token, bound);
    let next = if next >= first { next + 1 } else { next };
    eprintln!(
        "elect faults: after SIGKILL, {} leads after {took:?}",
        replicas[next].name
    );
    // Back to three, with a new identity.
    replicas[first] = Replica::start("a2", &args, &[]);
    checker.watch_leader(&replicas[first]);
    let retired = [std::mem::replace(
        &mut writers[first],
        Writer::start(&replicas[first], store.addr),
    )
    .finish()];

    // SIGSTOP of the leader for twice the lease duration (a long pause), while its app
    // holds the token it read just before.
    let paused = next;
    let held = writers[paused].pause_with_token(Duration::from_secs(5));
    assert_eq!(held, token, "the app holds the current term's token");
    replicas[paused].signal("STOP");
    let stopped = Instant::now();
    let (successor, token, took) = wait_new_leader(&all_but(&replicas, paused), token, bound);
    let successor = if successor >= paused {
        successor + 1
    } else {
        successor
    };
    eprintln!(
        "elect faults: with {} stopped, {} leads after {took:?}",
        replicas[paused].name, replicas[successor].name
    );
    wait_for(Duration::from_secs(5), "a write of the new leader", || {
        (store.highest() >= token).then_some(())
    });
    std::thread::sleep((stopped + 2 * LEASE_DURATION).saturating_duration_since(Instant::now()));
    replicas[paused].signal("CONT");
    // Its very first answer after the pause: it no longer leads.
    let view = replicas[paused]
        .leader()
        .expect("the resumed sidecar answers");
    assert_eq!(view["isLeader"], false, "resumed old leader: {view}");
    assert!(view["fencingToken"].is_null(), "{view}");
    // Its app wakes up too, and writes with the old token: the store refuses it.
    writers[paused].resume();

    // One etcd member killed: a majority remains, and so does a leader.
    cluster.kill(0);
    std::thread::sleep(2 * LEASE_DURATION);
    wait_for(bound, "a leader with one etcd member down", || {
        leader_of(&all(&replicas))
    });

    // A majority gone (one killed, one stopped): nobody may claim once the renew
    // deadlines have passed, for as long as the majority is away.
    cluster.stop(1);
    std::thread::sleep(LEASE_DURATION + Duration::from_secs(1));
    let quiet = Instant::now();
    while quiet.elapsed() < 2 * LEASE_DURATION {
        for replica in &replicas {
            let view = replica.leader().expect("sidecars answer without etcd");
            assert_eq!(
                view["isLeader"], false,
                "{} leads without a quorum: {view}",
                replica.name
            );
            assert!(
                view["leader"].is_null(),
                "{}: no leader can be named: {view}",
                replica.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.resume(1);
    let (back, token, took) = wait_new_leader(&all(&replicas), 0, Duration::from_secs(20));
    eprintln!(
        "elect faults: quorum back, {} leads with token {token} after {took:?}",
        replicas[back].name
    );

    // What every sidecar claimed, checked as a whole (after a few more polls of the last
    // term).
    std::thread::sleep(Duration::from_millis(300));
    let summary = checker.verify();
    assert!(
        summary.answers > 100,
        "the checker saw {} answers",
        summary.answers
    );
    let terms: BTreeSet<u64> = summary.claims.iter().map(|c| c.token).collect();
    assert!(terms.len() >= 4, "terms seen: {terms:?}");

    // The fenced write path lost nothing that was acknowledged.
    let outcomes: Vec<_> = writers.into_iter().map(Writer::finish).collect();
    let everyone: Vec<_> = outcomes.iter().chain(retired.iter()).collect();
    let log = store.log();
    assert!(
        outcomes[paused].refused.contains(&held),
        "the deposed leader's write with token {held} was refused: {:?}",
        outcomes[paused]
    );
    assert!(
        log.windows(2).all(|w| w[0].token <= w[1].token),
        "accepted tokens never go down"
    );
    let mut writer_of = std::collections::BTreeMap::new();
    for write in &log {
        let writer = writer_of.entry(write.token).or_insert(write.writer.clone());
        assert_eq!(
            writer, &write.writer,
            "token {} written by two writers",
            write.token
        );
    }
    for outcome in &everyone {
        for acked in &outcome.acked {
            assert!(
                log.contains(acked),
                "acknowledged write {acked:?} is in the store"
            );
        }
    }
    let acked: usize = everyone.iter().map(|o| o.acked.len()).sum();
    assert_eq!(
        acked,
        log.len(),
        "every accepted write was acknowledged to its writer"
    );
    assert!(
        writer_of.len() >= 3,
        "writes under tokens {:?}",
        writer_of.keys()
    );
}
