//! Retry budgets: retries may add at most a share of a route's live requests, plus a few
//! a second whatever the traffic. When a backend fails everything, clients see the
//! failures instead of the backend seeing every request several times over.

use std::time::Duration;

use http::Method;
use rigging_crds::sidecar::http::Retries;

use crate::forwarding::Budget;

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
            budget: {
                let ratio = retries.budget_percent / 100.0;
                let per_second = f64::from(retries.min_per_second);
                // A second's worth of the floor, and room for the share of a burst.
                Budget::new(ratio, per_second, per_second.max(1.0) + 10.0 * ratio)
            },
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
