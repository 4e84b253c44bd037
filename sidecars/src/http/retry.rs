//! Retry budgets: retries may add at most a share of a route's live requests, plus a few
//! a second whatever the traffic. When a backend fails everything, clients see the
//! failures instead of the backend seeing every request several times over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;
use rigging_crds::sidecar::http::Retries;

/// A route's retry policy and budget.
pub struct RetryPolicy {
    /// Attempts after the first, at most.
    pub attempts: u32,
    /// Longest one attempt may take; `None` for the route's timeout.
    pub per_try_timeout: Option<Duration>,
    budget: Budget,
}

impl RetryPolicy {
    /// The policy of `retries`.
    pub fn new(retries: &Retries) -> Self {
        Self {
            attempts: retries.attempts,
            per_try_timeout: (!retries.per_try_timeout.is_zero())
                .then_some(retries.per_try_timeout),
            budget: Budget::new(retries.budget_percent / 100.0, retries.min_per_second),
        }
    }

    /// Records one request (a first attempt), which earns the budget its share.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

/// Whether a request may be sent again after it may have reached the server: only an
/// idempotent method (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Tokens earned by requests (`ratio` each) and by time (`per_second`), spent one per
/// retry, and capped so that a quiet spell does not save up for a storm.
struct Budget {
    ratio: f64,
    per_second: f64,
    cap: f64,
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    fn new(ratio: f64, per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        // A second's worth of the floor, and room for the share of a burst.
        let cap = per_second.max(1.0) + 10.0 * ratio;
        Self {
            ratio,
            per_second,
            cap,
            state: Mutex::new((cap, Instant::now())),
        }
    }

    fn refill(&self, tokens: &mut f64, last: &mut Instant) {
        let now = Instant::now();
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.cap);
        *last = now;
    }

    fn deposit(&self) {
        let mut state = self.state.lock().expect("retry budget lock");
        let (tokens, last) = &mut *state;
        self.refill(tokens, last);
        *tokens = (*tokens + self.ratio).min(self.cap);
    }

    fn withdraw(&self) -> bool {
        let mut state = self.state.lock().expect("retry budget lock");
        let (tokens, last) = &mut *state;
        self.refill(tokens, last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_total_failure_retries_stay_within_the_share_of_requests() {
        // 20 % and no floor: 1,000 requests that all fail earn about 200 retries, plus
        // the small starting allowance, never one per request.
        let policy = RetryPolicy::new(&Retries {
            attempts: 3,
            budget_percent: 20.0,
            min_per_second: 0,
            per_try_timeout: Duration::ZERO,
        });
        let mut retries = 0;
        for _ in 0..1000 {
            policy.deposit();
            while policy.withdraw() {
                retries += 1;
            }
        }
        assert!((195..=210).contains(&retries), "{retries} retries");
    }

    #[test]
    fn only_idempotent_methods_are_resent() {
        assert!(
            idempotent(&Method::GET) && idempotent(&Method::PUT) && idempotent(&Method::DELETE)
        );
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }
}
