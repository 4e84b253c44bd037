//! The checker: one thread per sidecar asks it, again and again, what it claims (`/leader`,
//! `/owned`), recording when each question was sent and when the answer came. At the end
//! it asserts, over everything recorded:
//!
//! - no term is claimed by two sidecars (a lock's token names one term of one holder);
//! - no sidecar claims a term once a newer term of the same lock had been claimed by an
//!   answer that came *before the question was sent* (the resumed old leader steps down
//!   before it acts; tokens only grow);
//! - no sidecar's view of the leader term goes backwards.
//!
//! Answers that overlap in time prove nothing either way and are not compared.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Replica, get_json};

/// Which lock an answer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lock {
    Leader,
    Item(u64),
}

/// One claim, as answered.
#[derive(Debug, Clone)]
pub struct Claim {
    pub replica: String,
    pub lock: Lock,
    pub token: u64,
    pub asked: Instant,
    pub answered: Instant,
}

/// One `/leader` answer's term, for the no-going-back check.
#[derive(Debug, Clone)]
struct Term {
    replica: String,
    term: u64,
    asked: Instant,
}

#[derive(Default)]
struct Records {
    claims: Vec<Claim>,
    terms: Vec<Term>,
    answers: usize,
}

/// Records what sidecars claim, from threads, until [`Checker::verify`].
pub struct Checker {
    records: Arc<Mutex<Records>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

/// What the checker saw, for the test's own assertions.
pub struct Summary {
    pub claims: Vec<Claim>,
    pub answers: usize,
}

const POLL: Duration = Duration::from_millis(25);

impl Checker {
    pub fn new() -> Checker {
        Checker {
            records: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Polls `replica`'s `/leader` until the end.
    pub fn watch_leader(&mut self, replica: &Replica) {
        self.watch(replica, "/leader");
    }

    /// Polls `replica`'s `/owned` until the end.
    pub fn watch_owned(&mut self, replica: &Replica) {
        self.watch(replica, "/owned");
    }

    fn watch(&mut self, replica: &Replica, path: &'static str) {
        let (name, admin) = (replica.name.clone(), replica.admin);
        let records = self.records.clone();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                poll(&name, admin, path, &records);
                std::thread::sleep(POLL);
            }
        }));
    }

    /// Whether some sidecar has been seen claiming `token` yet.
    pub fn has_seen(&self, token: u64) -> bool {
        let records = self.records.lock().unwrap();
        records.claims.iter().any(|c| c.token == token)
    }

    /// Stops polling and asserts the invariants; panics naming the offending answers.
    pub fn verify(mut self) -> Summary {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            assert!(
                thread.join().is_ok(),
                "a checker thread found a malformed answer (its message is above)"
            );
        }
        let records = std::mem::take(&mut *self.records.lock().unwrap());
        let at = |t: Instant| format!("{:.3}s", t.duration_since(self.started).as_secs_f64());
        // One holder per term.
        let mut holders: BTreeMap<(Lock, u64), &Claim> = BTreeMap::new();
        for claim in &records.claims {
            if let Some(other) = holders.get(&(claim.lock, claim.token)) {
                assert_eq!(
                    other.replica,
                    claim.replica,
                    "{:?} token {} claimed by {} (at {}) and by {} (at {})",
                    claim.lock,
                    claim.token,
                    other.replica,
                    at(other.answered),
                    claim.replica,
                    at(claim.answered)
                );
            } else {
                holders.insert((claim.lock, claim.token), claim);
            }
        }
        // No claim of an older term after a newer one was answered.
        let mut by_lock: BTreeMap<Lock, Vec<&Claim>> = BTreeMap::new();
        for claim in &records.claims {
            by_lock.entry(claim.lock).or_default().push(claim);
        }
        for (lock, mut claims) in by_lock {
            claims.sort_by_key(|c| c.answered);
            // The highest token answered by each point in time.
            let mut highest: Vec<(Instant, u64, &Claim)> = Vec::with_capacity(claims.len());
            for claim in &claims {
                let best = match highest.last() {
                    Some((_, token, best)) if *token >= claim.token => *best,
                    _ => claim,
                };
                highest.push((claim.answered, best.token, best));
            }
            for claim in &claims {
                let before = highest.partition_point(|(answered, _, _)| *answered < claim.asked);
                if before == 0 {
                    continue;
                }
                let (_, token, newer) = highest[before - 1];
                assert!(
                    token <= claim.token,
                    "{lock:?}: {} claimed token {} (asked at {}) after {} had claimed the newer \
                     token {} (answered at {})",
                    claim.replica,
                    claim.token,
                    at(claim.asked),
                    newer.replica,
                    token,
                    at(newer.answered)
                );
            }
        }
        // Each sidecar's view of the leader term only moves forward.
        let mut last: BTreeMap<&str, (u64, Instant)> = BTreeMap::new();
        let mut terms = records.terms.clone();
        terms.sort_by_key(|t| t.asked);
        for term in &terms {
            if let Some((seen, when)) = last.get(term.replica.as_str()) {
                assert!(
                    term.term >= *seen,
                    "{} reported term {} at {} after term {} at {}",
                    term.replica,
                    term.term,
                    at(term.asked),
                    seen,
                    at(*when)
                );
            }
            last.insert(&term.replica, (term.term, term.asked));
        }
        Summary {
            claims: records.claims,
            answers: records.answers,
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn poll(name: &str, admin: SocketAddr, path: &str, records: &Mutex<Records>) {
    let asked = Instant::now();
    // Long enough to outlast a SIGSTOP: the answer a resumed sidecar gives is the one
    // that matters most.
    let Ok(answer) = get_json(admin, path, Duration::from_secs(10)) else {
        return;
    };
    let answered = Instant::now();
    let mut records = records.lock().unwrap();
    records.answers += 1;
    if path == "/leader" {
        let term = answer["term"].as_u64().unwrap_or(0);
        records.terms.push(Term {
            replica: name.to_owned(),
            term,
            asked,
        });
        if answer["isLeader"] == true {
            let token = answer["fencingToken"]
                .as_u64()
                .expect("a leader's answer has a fencing token");
            assert_eq!(token, term, "a leader's token is its term: {answer}");
            records.claims.push(Claim {
                replica: name.to_owned(),
                lock: Lock::Leader,
                token,
                asked,
                answered,
            });
        } else {
            assert!(
                answer["fencingToken"].is_null(),
                "a follower offers no token: {answer}"
            );
        }
    } else {
        for item in answer["items"].as_array().into_iter().flatten() {
            records.claims.push(Claim {
                replica: name.to_owned(),
                lock: Lock::Item(item["item"].as_u64().expect("an item number")),
                token: item["fencingToken"].as_u64().expect("an item token"),
                asked,
                answered,
            });
        }
    }
}
