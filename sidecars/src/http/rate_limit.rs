//! Rate limits: a token bucket per key. Interface only so far: nothing is limited.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderMap;
use rigging_crds::sidecar::http as config;

/// The buckets of one route's rate limit.
pub struct RateLimiter {
    config: config::RateLimit,
}

impl RateLimiter {
    /// The limiter of `config`; the error says what is wrong with its key.
    pub fn new(config: &config::RateLimit) -> Result<Self, String> {
        Ok(Self {
            config: config.clone(),
        })
    }

    /// The config it was built from (a reload with the same keeps the buckets).
    pub fn config(&self) -> &config::RateLimit {
        &self.config
    }

    /// Takes a token for the request's key, or says how long until there is one.
    pub fn check(&self, headers: &HeaderMap, peer: IpAddr) -> Result<(), Duration> {
        let _ = (headers, peer);
        Ok(())
    }
}
