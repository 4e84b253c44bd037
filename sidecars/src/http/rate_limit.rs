//! Rate limits: a token bucket per key. Each key earns `requestsPerSecond` tokens a
//! second up to `burst`, and a request takes one; a request that finds none is refused
//! with the time until the next.
//!
//! The buckets live in this process only: behind N replicas a key gets N times the rate.
//! Keys are held as 64-bit hashes under a per-process random seed (so that a client
//! choosing its header value cannot aim at another key's bucket), in shards with a lock
//! each, and at most [`MAX_KEYS`] of them: past that, buckets that have filled up again
//! (their key has been quiet for `burst / requestsPerSecond`) are dropped first, since a
//! new full bucket is the same thing.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use rigging_crds::sidecar::http as config;

use super::keys::Key;

/// Keys tracked per limiter at most: about 4 MiB of buckets.
pub const MAX_KEYS: usize = 100_000;

/// Shards of the bucket map, each behind its own lock, so that requests of different keys
/// rarely wait for each other.
const SHARDS: usize = 16;

/// The longest wait a refusal names (a rate of one request a year would name more).
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// When a full shard has no idle bucket to drop, the next sweep waits this long: a flood
/// of new keys costs one arbitrary eviction each, not a scan of the shard each.
const SWEEP_BACKOFF: Duration = Duration::from_millis(100);

/// The buckets of one route's rate limit.
pub struct RateLimiter {
    config: config::RateLimit,
    key: Key,
    /// Tokens earned per second.
    rate: f64,
    /// Tokens a bucket holds at most.
    burst: f64,
    seed: std::collections::hash_map::RandomState,
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<u64, Bucket>,
    /// No sweep for idle buckets before this.
    next_sweep: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// The limiter of `config`; the error says what is wrong with its key.
    pub fn new(config: &config::RateLimit) -> Result<Self, String> {
        Self::with_capacity(config, MAX_KEYS)
    }

    fn with_capacity(config: &config::RateLimit, max_keys: usize) -> Result<Self, String> {
        let key = Key::compile(&config.key)?;
        let rate = config.requests_per_second;
        // A burst below one token would refuse every request forever.
        let burst = config.burst.map_or(rate.max(1.0), |b| f64::from(b.max(1)));
        Ok(Self {
            config: config.clone(),
            key,
            rate,
            burst,
            seed: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_capacity: max_keys.div_ceil(SHARDS).max(1),
        })
    }

    /// The config it was built from (a reload with the same keeps the buckets).
    pub fn config(&self) -> &config::RateLimit {
        &self.config
    }

    /// Takes a token for the request's key, or says how long until there is one.
    pub fn check(&self, headers: &HeaderMap, peer: IpAddr) -> Result<(), Duration> {
        let key = self.key.of(headers, peer);
        self.take(self.seed.hash_one(&*key), Instant::now())
    }

    /// Takes a token from bucket `key` at `now`.
    fn take(&self, key: u64, now: Instant) -> Result<(), Duration> {
        // The high bits pick the shard; the map hashes the whole value again.
        let shard = &self.shards[(key >> 60) as usize % SHARDS];
        let mut shard = shard.lock().expect("rate limit shard lock");
        if !shard.buckets.contains_key(&key) && shard.buckets.len() >= self.shard_capacity {
            self.make_room(&mut shard, now);
        }
        let bucket = shard.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(Duration::try_from_secs_f64(wait).map_or(MAX_WAIT, |w| w.min(MAX_WAIT)))
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(bucket.updated).as_secs_f64() * self.rate;
        (bucket.tokens + earned).min(self.burst)
    }

    /// Drops the buckets that are full again; when none is, one arbitrary bucket (its key
    /// starts over with a full bucket, a burst of leniency).
    fn make_room(&self, shard: &mut Shard, now: Instant) {
        if shard.next_sweep.is_none_or(|at| now >= at) {
            let before = shard.buckets.len();
            shard
                .buckets
                .retain(|_, bucket| self.refilled(bucket, now) < self.burst);
            if shard.buckets.len() < before {
                shard.next_sweep = None;
                return;
            }
            shard.next_sweep = Some(now + SWEEP_BACKOFF);
        }
        if let Some(&victim) = shard.buckets.keys().next() {
            shard.buckets.remove(&victim);
        }
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().buckets.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use rigging_crds::sidecar::http::StickyKey;

    fn limit(rps: f64, burst: Option<u32>) -> RateLimiter {
        RateLimiter::new(&config::RateLimit {
            requests_per_second: rps,
            burst,
            key: StickyKey::ClientIp,
        })
        .unwrap()
    }

    fn accepted(limiter: &RateLimiter, key: u64, now: Instant, tries: usize) -> usize {
        (0..tries)
            .filter(|_| limiter.take(key, now).is_ok())
            .count()
    }

    #[test]
    fn a_quiet_key_gets_its_burst_then_the_rate() {
        let limiter = limit(10.0, Some(5));
        let t0 = Instant::now();
        assert_eq!(accepted(&limiter, 1, t0, 20), 5, "the burst");
        // 10 a second: 2 tokens in 200 ms, never more than the burst however long.
        assert_eq!(
            accepted(&limiter, 1, t0 + Duration::from_millis(200), 20),
            2
        );
        assert_eq!(accepted(&limiter, 1, t0 + Duration::from_secs(60), 20), 5);
    }

    #[test]
    fn a_refusal_says_how_long_until_the_next_token() {
        let limiter = limit(4.0, Some(1));
        let t0 = Instant::now();
        assert!(limiter.take(7, t0).is_ok());
        let wait = limiter.take(7, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(250));
        let wait = limiter
            .take(7, t0 + Duration::from_millis(100))
            .unwrap_err();
        assert!(
            wait.abs_diff(Duration::from_millis(150)) < Duration::from_millis(1),
            "{wait:?}"
        );
        assert!(limiter.take(7, t0 + Duration::from_millis(250)).is_ok());
    }

    #[test]
    fn a_very_slow_rate_names_a_day_at_most() {
        let limiter = limit(1e-300, Some(1));
        let t0 = Instant::now();
        assert!(limiter.take(1, t0).is_ok());
        assert_eq!(limiter.take(1, t0), Err(MAX_WAIT));
    }

    #[test]
    fn the_default_burst_is_a_seconds_worth_and_at_least_one() {
        let t0 = Instant::now();
        assert_eq!(accepted(&limit(50.0, None), 1, t0, 100), 50);
        assert_eq!(accepted(&limit(0.2, None), 1, t0, 100), 1);
        assert_eq!(
            accepted(&limit(5.0, Some(0)), 1, t0, 100),
            1,
            "burst 0 is 1"
        );
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let limiter = RateLimiter::new(&config::RateLimit {
            requests_per_second: 1.0,
            burst: Some(3),
            key: StickyKey::Header("x-user".into()),
        })
        .unwrap();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let user = |name: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-user", HeaderValue::from_static(name));
            h
        };
        let count = |h: &HeaderMap| (0..10).filter(|_| limiter.check(h, peer).is_ok()).count();
        assert_eq!(count(&user("alice")), 3);
        assert_eq!(count(&user("bob")), 3);
        assert_eq!(count(&HeaderMap::new()), 3, "no header: the client address");
        assert_eq!(count(&user("alice")), 0);
    }

    #[test]
    fn the_key_count_is_bounded_and_idle_buckets_go_first() {
        let limiter = RateLimiter::with_capacity(
            &config::RateLimit {
                requests_per_second: 1.0,
                burst: Some(2),
                key: StickyKey::ClientIp,
            },
            SHARDS * 10,
        )
        .unwrap();
        let t0 = Instant::now();
        // Keys spread over the shards by their high bits.
        let key = |i: u64| (i % SHARDS as u64) << 60 | i;
        for i in 0..(SHARDS as u64 * 10) {
            assert!(limiter.take(key(i), t0).is_ok());
        }
        assert_eq!(limiter.keys(), SHARDS * 10);
        // Key 0 keeps sending and stays empty; every other key is full again 1 s later.
        let later = t0 + Duration::from_secs(1);
        assert!(limiter.take(key(0), later).is_ok());
        assert!(limiter.take(key(0), later).is_ok());
        assert!(limiter.take(key(0), later).is_err());
        // Nine new keys a shard: room is made by dropping the nine idle buckets.
        for i in 1000..1000 + SHARDS as u64 * 9 {
            assert!(limiter.take(key(i), later).is_ok(), "a new key is taken");
        }
        assert!(limiter.keys() <= SHARDS * 10, "{} keys", limiter.keys());
        assert!(
            limiter.take(key(0), later).is_err(),
            "the busy key kept its empty bucket"
        );
        // Every bucket busy: a new key still gets in, in place of an arbitrary one.
        for i in 5000..5000 + SHARDS as u64 * 30 {
            let _ = limiter.take(key(i), later);
        }
        assert!(limiter.keys() <= SHARDS * 10, "{} keys", limiter.keys());
    }
}
