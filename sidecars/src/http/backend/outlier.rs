//! Passive outlier ejection (Envoy's, nginx's `max_fails`): what real attempts say about
//! a server. 5xx answers in a row, or attempts in a row that got no answer, eject it for
//! `ejectionTime` times the number of ejections in a row; an answer below 500 resets the
//! counts. The backend decides whether an ejection is allowed (`maxEjectedPercent`, never
//! the last server in service).

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rigging_crds::sidecar::http::Outlier;

use super::Outcome;

/// The longest an ejection lasts, however many came before it in a row, unless
/// `ejectionTime` itself is longer (Envoy's `max_ejection_time`).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// A server's outlier counts and ejection.
#[derive(Default)]
pub struct Passive {
    counts: Mutex<Counts>,
    /// Set (under the lock) while an ejection may last, so that every pick need not take
    /// the lock of every server that is not ejected.
    maybe_ejected: AtomicBool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// 5xx answers in a row.
    pub consecutive_5xx: u32,
    /// Attempts in a row that got no answer.
    pub consecutive_errors: u32,
    /// Ejections with no good answer between them.
    pub ejections: u32,
    /// When the current ejection ends.
    pub until: Option<Instant>,
}

/// Why a server reached a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// This many 5xx answers in a row.
    FiveXx(u32),
    /// This many attempts in a row without an answer.
    Errors(u32),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::FiveXx(n) => write!(f, "{n} 5xx answers in a row"),
            Reason::Errors(n) => write!(f, "{n} attempts in a row without an answer"),
        }
    }
}

impl Passive {
    /// Whether the server is ejected at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        if !self.maybe_ejected.load(Ordering::Acquire) {
            return false;
        }
        let counts = self.lock();
        let ejected = counts.until.is_some_and(|until| until > now);
        if !ejected {
            self.maybe_ejected.store(false, Ordering::Release);
        }
        ejected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().expect("outlier lock")
    }

    /// The counts, with `until` only while the ejection lasts.
    pub fn snapshot(&self, now: Instant) -> Counts {
        let mut counts = *self.lock();
        counts.until = counts.until.filter(|&until| until > now);
        counts
    }

    /// Counts one attempt's outcome; returns why when a threshold is reached. Outcomes
    /// of attempts that end while the server is ejected (they began before) are not
    /// counted: they would only say again what ejected it.
    pub fn record(&self, outcome: Outcome, config: &Outlier, now: Instant) -> Option<Reason> {
        let mut c = self.lock();
        if c.until.is_some_and(|until| until > now) {
            return None;
        }
        match outcome {
            Outcome::Status(status) if status.is_server_error() => {
                c.consecutive_5xx += 1;
                // It answered: the connection works.
                c.consecutive_errors = 0;
            }
            Outcome::Status(_) => {
                *c = Counts {
                    until: c.until,
                    ..Counts::default()
                };
            }
            Outcome::ConnectError | Outcome::Failed | Outcome::TimedOut => {
                c.consecutive_errors += 1;
            }
            Outcome::Abandoned => {}
        }
        if config.consecutive_5xx > 0 && c.consecutive_5xx >= config.consecutive_5xx {
            Some(Reason::FiveXx(c.consecutive_5xx))
        } else if config.consecutive_connect_errors > 0
            && c.consecutive_errors >= config.consecutive_connect_errors
        {
            Some(Reason::Errors(c.consecutive_errors))
        } else {
            None
        }
    }

    /// Ejects the server from `now`; returns for how long.
    pub fn eject(&self, config: &Outlier, now: Instant) -> Duration {
        let mut c = self.lock();
        c.ejections += 1;
        let time = config
            .ejection_time
            .checked_mul(c.ejections)
            .unwrap_or(Duration::MAX)
            .min(MAX_EJECTION.max(config.ejection_time));
        c.until = Some(now + time);
        self.maybe_ejected.store(true, Ordering::Release);
        c.consecutive_5xx = 0;
        c.consecutive_errors = 0;
        time
    }

    /// The server reached a threshold but may not be ejected now: it starts counting
    /// again, so that it is looked at again after as many failures more.
    pub fn spare(&self) {
        let mut c = self.lock();
        c.consecutive_5xx = 0;
        c.consecutive_errors = 0;
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn config() -> Outlier {
        Outlier {
            consecutive_5xx: 3,
            consecutive_connect_errors: 2,
            ejection_time: Duration::from_secs(10),
            max_ejected_percent: 50,
        }
    }

    const E503: Outcome = Outcome::Status(StatusCode::SERVICE_UNAVAILABLE);
    const OK: Outcome = Outcome::Status(StatusCode::OK);

    #[test]
    fn a_threshold_of_5xx_in_a_row_is_reached_and_a_good_answer_resets_it() {
        let (p, c, t) = (Passive::default(), config(), Instant::now());
        assert_eq!(p.record(E503, &c, t), None);
        assert_eq!(p.record(E503, &c, t), None);
        assert_eq!(p.record(OK, &c, t), None);
        assert_eq!(p.record(E503, &c, t), None);
        assert_eq!(p.record(E503, &c, t), None);
        // A 404 is the client's mistake, a good answer for the server.
        assert_eq!(
            p.record(Outcome::Status(StatusCode::NOT_FOUND), &c, t),
            None
        );
        assert_eq!(p.record(E503, &c, t), None);
        assert_eq!(p.record(E503, &c, t), None);
        assert_eq!(p.record(E503, &c, t), Some(Reason::FiveXx(3)));
    }

    #[test]
    fn attempts_without_an_answer_count_and_abandoned_ones_teach_nothing() {
        let (p, c, t) = (Passive::default(), config(), Instant::now());
        assert_eq!(p.record(Outcome::ConnectError, &c, t), None);
        assert_eq!(p.record(Outcome::Abandoned, &c, t), None);
        assert_eq!(p.record(Outcome::Abandoned, &c, t), None);
        assert_eq!(p.record(Outcome::TimedOut, &c, t), Some(Reason::Errors(2)));
        p.spare();
        assert_eq!(p.record(Outcome::Failed, &c, t), None);
        // A 5xx is an answer: the connection works.
        assert_eq!(p.record(E503, &c, t), None);
        assert_eq!(p.record(Outcome::Failed, &c, t), None);
        assert_eq!(p.snapshot(t).consecutive_5xx, 1);
    }

    #[test]
    fn ejections_in_a_row_last_longer_up_to_a_cap_and_a_good_answer_forgets_them() {
        let (p, c, t) = (Passive::default(), config(), Instant::now());
        assert_eq!(p.eject(&c, t), Duration::from_secs(10));
        assert!(p.ejected(t + Duration::from_secs(9)));
        assert!(!p.ejected(t + Duration::from_secs(10)));
        // Outcomes while ejected are not counted.
        assert_eq!(p.record(E503, &c, t + Duration::from_secs(1)), None);
        assert_eq!(p.snapshot(t).consecutive_5xx, 0);
        let back = t + Duration::from_secs(10);
        assert_eq!(p.snapshot(back).until, None);
        assert_eq!(p.eject(&c, back), Duration::from_secs(20));
        let back = back + Duration::from_secs(20);
        assert_eq!(p.eject(&c, back), Duration::from_secs(30));
        for _ in 0..100 {
            p.eject(&c, back);
        }
        assert_eq!(p.eject(&c, back), MAX_EJECTION);
        let back = back + MAX_EJECTION;
        p.record(OK, &c, back);
        assert_eq!(p.snapshot(back).ejections, 0);
        assert_eq!(p.eject(&c, back), Duration::from_secs(10));
    }
}
