//! How one server is chosen among an attempt's candidates: smooth weighted round robin,
//! least request and peak-EWMA (each the better of two random choices), and a weighted
//! rendezvous hash of the client's address or a header.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderName;
use rigging_crds::sidecar::http::{Balance, HashKey};

use super::{PickContext, Server, keys};

/// Peak-EWMA's time constant: a response time counts for `e⁻¹` of its weight this long
/// after it was seen, and an estimate nothing refreshes decays towards 0 as fast, so that
/// a server once slow is tried again (Linkerd and Finagle use 10 s).
pub const DECAY: Duration = Duration::from_secs(10);

/// The response time an attempt that got no answer (refused, reset, timed out) counts as,
/// at least: a server that fails fast must not look like the fastest one.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// The response time assumed when no candidate has been measured yet: any value will do,
/// since all of them then get it.
const UNMEASURED_NS: f64 = 10e6;

/// A backend's balancing strategy, with its state.
pub struct Balancer {
    strategy: Strategy,
    round_robin: RoundRobin,
}

enum Strategy {
    RoundRobin,
    LeastRequest,
    PeakEwma,
    Hash(HashBy),
}

enum HashBy {
    ClientIp,
    Header(HeaderName),
}

impl Balancer {
    /// The balancer of `balance`. A header name that is not one (the file's checks let it
    /// through) leaves the backend on round robin, with an error logged.
    pub fn new(balance: &Balance, backend: &str) -> Self {
        let strategy = match balance {
            Balance::RoundRobin => Strategy::RoundRobin,
            Balance::LeastRequest => Strategy::LeastRequest,
            Balance::PeakEwma => Strategy::PeakEwma,
            Balance::Hash(HashKey::ClientIp) => Strategy::Hash(HashBy::ClientIp),
            Balance::Hash(HashKey::Header(name)) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Strategy::Hash(HashBy::Header(name)),
                Err(_) => {
                    tracing::error!(%backend, header = %name, "not a header name: the backend balances round robin");
                    Strategy::RoundRobin
                }
            },
        };
        Self {
            strategy,
            round_robin: RoundRobin::default(),
        }
    }

    /// One of `candidates` (indexes into `servers`, at least one).
    pub fn pick(
        &self,
        servers: &[Arc<Server>],
        candidates: &[usize],
        ctx: &PickContext<'_>,
        now: Instant,
    ) -> usize {
        match &self.strategy {
            Strategy::RoundRobin => self.round_robin.pick(servers, candidates),
            Strategy::LeastRequest => better_of_two(candidates, |i| {
                let s = &servers[i];
                (s.state.in_flight.load(Ordering::Relaxed) + 1) as f64 / weight(s)
            }),
            Strategy::PeakEwma => {
                let Some((a, b)) = two_random(candidates) else {
                    return candidates[0];
                };
                let (ea, eb) = (
                    servers[a].state.ewma.estimate(now),
                    servers[b].state.ewma.estimate(now),
                );
                let unmeasured = match (ea, eb) {
                    (Some(_), Some(_)) => 0.0,
                    _ => neutral_estimate(servers, candidates, now),
                };
                let cost = |i: usize, estimate: Option<f64>| {
                    let s = &servers[i];
                    estimate.unwrap_or(unmeasured)
                        * (s.state.in_flight.load(Ordering::Relaxed) + 1) as f64
                        / weight(s)
                };
                if cost(b, eb) < cost(a, ea) { b } else { a }
            }
            Strategy::Hash(by) => {
                let mut octets = [0u8; 16];
                let key: &[u8] = match (by, ctx.client_ip) {
                    (HashBy::ClientIp, IpAddr::V4(ip)) => {
                        octets[..4].copy_from_slice(&ip.octets());
                        &octets[..4]
                    }
                    (HashBy::ClientIp, IpAddr::V6(ip)) => {
                        octets = ip.octets();
                        &octets
                    }
                    (HashBy::Header(name), _) => match ctx.headers.get(name) {
                        Some(value) => value.as_bytes(),
                        None => return self.round_robin.pick(servers, candidates),
                    },
                };
                rendezvous(servers, candidates, key)
            }
        }
    }
}

fn weight(server: &Server) -> f64 {
    f64::from(server.weight.max(1))
}

/// What an unmeasured server is taken to cost: the mean of the measured candidates, so
/// that a new server is neither flooded (as a cost of 0 would) nor starved.
fn neutral_estimate(servers: &[Arc<Server>], candidates: &[usize], now: Instant) -> f64 {
    let (sum, n) = candidates
        .iter()
        .filter_map(|&i| servers[i].state.ewma.estimate(now))
        .fold((0.0, 0u32), |(sum, n), e| (sum + e, n + 1));
    if n == 0 {
        UNMEASURED_NS
    } else {
        sum / f64::from(n)
    }
}

/// Of two distinct candidates chosen at random, the one of lower cost ("the power of two
/// random choices": nearly as good as the best of all, without herding every balancer
/// onto the same server).
fn better_of_two(candidates: &[usize], cost: impl Fn(usize) -> f64) -> usize {
    match two_random(candidates) {
        Some((a, b)) if cost(b) < cost(a) => b,
        Some((a, _)) => a,
        None => candidates[0],
    }
}

/// Two distinct candidates chosen at random, or `None` when there is only one.
fn two_random(candidates: &[usize]) -> Option<(usize, usize)> {
    if candidates.len() < 2 {
        return None;
    }
    let a = random_below(candidates.len());
    let mut b = random_below(candidates.len() - 1);
    if b >= a {
        b += 1;
    }
    Some((candidates[a], candidates[b]))
}

/// Weighted rendezvous (highest random weight) hashing: every candidate scores the key,
/// the highest score wins. A key keeps its server for as long as that server is a
/// candidate, whatever else comes and goes; when it leaves, its keys spread over the
/// others by weight. The score `w / -ln(u)`, `u` uniform in (0, 1) from the hash of key
/// and server, makes a server win a share of keys proportional to its weight.
fn rendezvous(servers: &[Arc<Server>], candidates: &[usize], key: &[u8]) -> usize {
    let key = keys::stable_hash(&[key]).to_le_bytes();
    let score = |i: usize| {
        let s = &servers[i];
        let h = keys::stable_hash(&[&key, &s.address_hash.to_le_bytes()]);
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        weight(s) / -u.ln()
    };
    let mut best = candidates[0];
    let mut best_score = score(best);
    for &i in &candidates[1..] {
        let s = score(i);
        if s > best_score {
            (best, best_score) = (i, s);
        }
    }
    best
}

/// Smooth weighted round robin (nginx's): every pick adds each candidate's weight to its
/// score and takes the highest, which then gives back the total. Weights 5:1:1 give
/// a a b a c a a, not a a a a a b c.
#[derive(Default)]
struct RoundRobin {
    next: AtomicUsize,
    scores: Mutex<Vec<i64>>,
}

impl RoundRobin {
    fn pick(&self, servers: &[Arc<Server>], candidates: &[usize]) -> usize {
        if candidates
            .iter()
            .all(|&i| servers[i].weight == servers[candidates[0]].weight)
        {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            return candidates[n % candidates.len()];
        }
        let mut scores = self.scores.lock().expect("round-robin lock");
        scores.resize(servers.len(), 0);
        let total: i64 = candidates
            .iter()
            .map(|&i| i64::from(servers[i].weight))
            .sum();
        let mut best = candidates[0];
        for &i in candidates {
            scores[i] += i64::from(servers[i].weight);
            if scores[i] > scores[best] {
                best = i;
            }
        }
        scores[best] -= total;
        best
    }
}

/// A server's peak-EWMA response time (Finagle's, Linkerd's): a time-weighted moving
/// average that jumps to any response time above it at once, and decays towards 0 while
/// nothing is measured.
#[derive(Default)]
pub struct PeakEwma(Mutex<Option<(f64, Instant)>>);

impl PeakEwma {
    /// Records one response time, seen at `now`.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut estimate = self.0.lock().expect("ewma lock");
        *estimate = Some(match *estimate {
            Some((ewma, at)) if rtt <= ewma => {
                let kept = decay(now.saturating_duration_since(at));
                (ewma * kept + rtt * (1.0 - kept), now)
            }
            _ => (rtt, now),
        });
    }

    /// The estimate at `now`, in nanoseconds, or `None` before the first response.
    pub fn estimate(&self, now: Instant) -> Option<f64> {
        let estimate = *self.0.lock().expect("ewma lock");
        estimate.map(|(ewma, at)| ewma * decay(now.saturating_duration_since(at)))
    }
}

/// The share of an old value kept after `elapsed`.
fn decay(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
}

/// A number in `0..n` (`n > 0`) from a per-thread xorshift64*: choices need to be cheap
/// and independent, not unpredictable.
fn random_below(n: usize) -> usize {
    RNG.with(|rng| {
        let mut x = rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rng.set(x);
        ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n as u64) as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_to_a_peak_and_decays_with_its_time_constant() {
        let t0 = Instant::now();
        let ewma = PeakEwma::default();
        assert_eq!(ewma.estimate(t0), None);
        ewma.observe(Duration::from_millis(1), t0);
        ewma.observe(Duration::from_millis(50), t0);
        assert_eq!(ewma.estimate(t0), Some(50e6));
        // Unrefreshed, it loses 1/e of itself per time constant, so a slow server is
        // tried again.
        let later = ewma.estimate(t0 + DECAY).unwrap();
        assert!((later - 50e6 / std::f64::consts::E).abs() < 1.0, "{later}");
        // A faster answer pulls it down by its weight in time, not at once.
        ewma.observe(Duration::from_millis(1), t0 + Duration::from_secs(1));
        let after = ewma.estimate(t0 + Duration::from_secs(1)).unwrap();
        let kept = decay(Duration::from_secs(1));
        assert!((after - (50e6 * kept + 1e6 * (1.0 - kept))).abs() < 1.0);
        assert!(after > 40e6, "{after}");
    }

    #[test]
    fn two_random_choices_are_distinct_and_cover_every_pair() {
        let candidates = [3, 5, 8];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let (a, b) = two_random(&candidates).unwrap();
            assert_ne!(a, b);
            seen.insert((a.min(b), a.max(b)));
            // The costliest is never chosen: it is always drawn with a cheaper one.
            assert_ne!(better_of_two(&candidates, |i| i as f64), 8);
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(better_of_two(&[7], |_| 0.0), 7);
        assert_eq!(two_random(&[7]), None);
    }

    #[test]
    fn random_choices_are_spread_evenly() {
        let mut buckets = [0u32; 5];
        for _ in 0..50_000 {
            buckets[random_below(5)] += 1;
        }
        for n in buckets {
            assert!((9_000..11_000).contains(&n), "{buckets:?}");
        }
    }
}
