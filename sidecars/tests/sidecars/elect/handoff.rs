//! SIGTERM hands leadership over at once (much sooner than the lease could expire), and
//! what an app watches follows: the long-poll, the leader file, `/readyz?leader=true`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::checker::Checker;
use super::cluster::EtcdCluster;
use super::{Replica, get, get_json, timings, wait_for, wait_new_leader};

/// Long enough that an expiry could never pass for a handoff.
const LEASE: Duration = Duration::from_secs(6);

fn file(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

#[test]
fn etcd_sigterm_hands_over_at_once_and_the_api_and_file_follow() {
    let cluster = EtcdCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let mut args = vec![
                "--backend".to_owned(),
                "etcd".into(),
                "--election".into(),
                "handoff".into(),
                "--leader-file".into(),
                dir.path()
                    .join(format!("{name}.json"))
                    .display()
                    .to_string(),
            ];
            args.extend(cluster.endpoint_flags());
            args.extend(timings(
                LEASE,
                Duration::from_secs(4),
                Duration::from_millis(500),
            ));
            Replica::start(name, &args, &[])
        })
        .collect();
    let mut checker = Checker::new();
    for replica in &replicas {
        checker.watch_leader(replica);
    }
    let refs: Vec<&Replica> = replicas.iter().collect();
    let (leader, token, _) = wait_new_leader(&refs, 0, Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    let name = replicas[leader].name.clone();

    // Readiness for an active-passive Service.
    for (i, replica) in replicas.iter().enumerate() {
        let (status, _) =
            get(replica.admin, "/readyz?leader=true", Duration::from_secs(2)).unwrap();
        assert_eq!(
            status,
            if i == leader { 200 } else { 503 },
            "{}",
            replica.name
        );
        let (status, _) = get(replica.admin, "/readyz", Duration::from_secs(2)).unwrap();
        assert_eq!(status, 200, "plain readiness of {}", replica.name);
    }
    // The files follow the leader.
    wait_for(
        Duration::from_secs(3),
        "leader files naming the leader",
        || {
            replicas
                .iter()
                .all(|r| {
                    file(&dir.path().join(format!("{}.json", r.name)))
                        .is_some_and(|f| f["leader"] == name.as_str() && f["term"] == token)
                })
                .then_some(())
        },
    );
    let own = file(&dir.path().join(format!("{name}.json"))).unwrap();
    assert_eq!(
        (own["isLeader"].clone(), own["fencingToken"].clone()),
        (true.into(), token.into())
    );

    // A long-poll with nothing changing returns at the end of its wait, unchanged.
    let started = Instant::now();
    let same = get_json(
        replicas[follower].admin,
        "/leader?wait=1s",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(same["term"], token);
    // A long-poll after the current term waits for the next.
    let admin = replicas[follower].admin;
    let poll = std::thread::spawn(move || {
        let asked = Instant::now();
        let answer = get_json(
            admin,
            &format!("/leader?wait=30s&after={token}"),
            Duration::from_secs(40),
        );
        (answer, asked.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !poll.is_finished(),
        "the long-poll waits while the term stands"
    );

    replicas[leader].signal("TERM");
    let others: Vec<&Replica> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, r)| r)
        .collect();
    let (_, next_token, took) = wait_new_leader(&others, token, LEASE);
    eprintln!("elect handoff: new leader {took:?} after SIGTERM (lease {LEASE:?})");
    assert!(
        took < LEASE / 2,
        "a handoff takes a retry period or so, not an expiry: {took:?}"
    );
    assert_eq!(
        replicas[leader].proc.wait_exit(Duration::from_secs(10)),
        Some(0)
    );

    let (answer, waited) = poll.join().unwrap();
    let answer = answer.expect("the long-poll answers");
    assert!(answer["term"].as_u64().unwrap() > token, "{answer}");
    assert!(
        waited >= Duration::from_millis(500),
        "it waited: {waited:?}"
    );
    let successor = answer["leader"].as_str().map(str::to_owned);
    wait_for(
        Duration::from_secs(3),
        "the files naming the new leader",
        || {
            let path = dir
                .path()
                .join(format!("{}.json", successor.as_deref().unwrap_or("?")));
            file(&path)
                .is_some_and(|f| f["isLeader"] == true && f["fencingToken"] == next_token)
                .then_some(())
        },
    );
    let summary = checker.verify();
    assert!(summary.answers > 20, "{} answers", summary.answers);
}
