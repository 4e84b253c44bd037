//! A check's state over time: consecutive results against the thresholds, the way the
//! kubelet counts probe results.

use std::time::Duration;

/// How many consecutive results flip a check.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Consecutive failures that turn a passing check failing.
    pub failure: u32,
    /// Consecutive successes that turn a failing (or never passed) check passing.
    pub success: u32,
}

/// Where one check stands.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckState {
    /// Passing, by the thresholds. False until the check has passed `success` times in a
    /// row: an app is not ready before it was seen ready.
    pub up: bool,
    /// Failures in a row (0 after a success).
    pub consecutive_failures: u32,
    /// Successes in a row (0 after a failure).
    pub consecutive_successes: u32,
    /// The last failure's error, kept until the check passes again.
    pub error: Option<String>,
    /// How long the last run took.
    pub duration_seconds: f64,
    /// Runs so far.
    pub runs: u64,
}

impl CheckState {
    /// Counts one result.
    pub fn record(&mut self, result: Result<(), String>, took: Duration, th: Thresholds) {
        self.runs += 1;
        self.duration_seconds = took.as_secs_f64();
        match result {
            Ok(()) => {
                self.consecutive_successes += 1;
                self.consecutive_failures = 0;
                if self.consecutive_successes >= th.success {
                    self.up = true;
                    self.error = None;
                }
            }
            Err(error) => {
                self.consecutive_failures += 1;
                self.consecutive_successes = 0;
                self.error = Some(error);
                if self.consecutive_failures >= th.failure {
                    self.up = false;
                }
            }
        }
    }

    /// Failing for readiness: not up (including before it ever passed).
    pub fn fails_readiness(&self) -> bool {
        !self.up
    }

    /// Failing for liveness: it failed `failure` times in a row. A check that has not
    /// run yet, or is still starting, does not fail liveness — restarting a container
    /// because its dependency is slow to start only makes it slower.
    pub fn fails_liveness(&self, th: Thresholds) -> bool {
        !self.up && self.consecutive_failures >= th.failure
    }

    /// Why it fails, for the JSON body.
    pub fn reason(&self, th: Thresholds) -> String {
        match (&self.error, self.runs) {
            (Some(error), _) => error.clone(),
            (None, 0) => "not checked yet".to_owned(),
            (None, _) => format!(
                "passed {} of the {} times in a row needed",
                self.consecutive_successes, th.success
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TH: Thresholds = Thresholds {
        failure: 3,
        success: 2,
    };

    fn run(state: &mut CheckState, ok: bool) {
        let result = if ok {
            Ok(())
        } else {
            Err("refused".to_owned())
        };
        state.record(result, Duration::from_millis(1), TH);
    }

    #[test]
    fn a_new_check_is_unready_but_alive_until_it_proves_either() {
        let mut s = CheckState::default();
        assert!(s.fails_readiness());
        assert!(!s.fails_liveness(TH));
        assert_eq!(s.reason(TH), "not checked yet");
        run(&mut s, true);
        assert!(s.fails_readiness(), "one success of two");
        assert_eq!(s.reason(TH), "passed 1 of the 2 times in a row needed");
        run(&mut s, true);
        assert!(!s.fails_readiness());
    }

    #[test]
    fn failures_flip_only_at_the_threshold_and_successes_flip_back() {
        let mut s = CheckState::default();
        run(&mut s, true);
        run(&mut s, true);
        run(&mut s, false);
        run(&mut s, false);
        assert!(!s.fails_readiness(), "two failures of three");
        assert_eq!(s.error.as_deref(), Some("refused"));
        run(&mut s, false);
        assert!(s.fails_readiness() && s.fails_liveness(TH));
        run(&mut s, true);
        assert!(s.fails_readiness() && !s.fails_liveness(TH));
        run(&mut s, true);
        assert!(!s.fails_readiness());
        assert_eq!(s.error, None);
        assert_eq!(s.runs, 7);
    }
}
