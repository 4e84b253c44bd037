//! A budget for extra requests (the ambassador's retries, the scatter/gather root's hedged
//! requests): a token bucket filled by the live traffic, so that the extra load is a share
//! of the real load and stops growing when every upstream is slow or failing.

use std::sync::Mutex;
use std::time::Instant;

/// Tokens earned by requests (`ratio` each) and by time (`per_second`), spent one per
/// extra request, and capped so that a quiet spell does not save up for a storm. It starts
/// full: the first extra requests of a new process are not refused for want of history.
pub struct Budget {
    ratio: f64,
    per_second: f64,
    cap: f64,
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    /// A full bucket of `cap` tokens, earning `ratio` of a token per request and
    /// `per_second` tokens a second.
    pub fn new(ratio: f64, per_second: f64, cap: f64) -> Self {
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

    /// Records one request that is not itself an extra one, which earns its share.
    pub fn deposit(&self) {
        let mut state = self.state.lock().expect("budget lock");
        let (tokens, last) = &mut *state;
        self.refill(tokens, last);
        *tokens = (*tokens + self.ratio).min(self.cap);
    }

    /// Takes one token for an extra request, if there is one.
    pub fn withdraw(&self) -> bool {
        let mut state = self.state.lock().expect("budget lock");
        let (tokens, last) = &mut *state;
        self.refill(tokens, last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The tokens in the bucket now, for a gauge.
    pub fn tokens(&self) -> f64 {
        let mut state = self.state.lock().expect("budget lock");
        let (tokens, last) = &mut *state;
        self.refill(tokens, last);
        *tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spending_is_bounded_by_the_cap_plus_the_share_of_requests() {
        let budget = Budget::new(0.05, 0.0, 10.0);
        let mut spent = 0;
        for _ in 0..1000 {
            budget.deposit();
            while budget.withdraw() {
                spent += 1;
            }
        }
        // 10 saved at the start, then one per 20 requests.
        assert!((58..=60).contains(&spent), "{spent} spent");
        assert!(budget.tokens() < 1.0);
    }

    #[test]
    fn an_empty_cap_never_pays() {
        let budget = Budget::new(0.0, 0.0, 0.0);
        budget.deposit();
        assert!(!budget.withdraw());
    }
}
