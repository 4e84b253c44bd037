//! A shard's recent latencies: the last [`SIZE`] answers, for its quantiles (the hedge's
//! `after: p95`, `/status`) and for spotting stragglers.

use std::time::Duration;

/// Answers the window holds: enough for a p99 to mean something, few enough to follow a
/// change within seconds at a few hundred requests a second.
pub const SIZE: usize = 256;

/// Answers a window needs before its quantiles are used to hedge: with fewer, a p95 is
/// one or two samples and a single fast answer would set it.
pub const MIN_SAMPLES: usize = 20;

/// How many new answers before a cached quantile is computed again: a quantile sorts the
/// window, and the hedge asks for one on every request.
const REFRESH_EVERY: u64 = 16;

/// The latencies of a shard's last [`SIZE`] answers, in microseconds, as a ring.
#[derive(Debug, Default)]
pub struct Window {
    samples: Vec<u32>,
    /// Where the next sample goes once the ring is full.
    next: usize,
    /// Samples ever recorded.
    recorded: u64,
    /// The last quantile computed for the hedge: (quantile, recorded then, value).
    cached: Option<(f64, u64, Option<Duration>)>,
}

impl Window {
    /// Records one answer's latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        if self.samples.len() < SIZE {
            self.samples.push(micros);
        } else {
            self.samples[self.next] = micros;
            self.next = (self.next + 1) % SIZE;
        }
        self.recorded += 1;
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The quantiles `qs` (each in (0, 100)) by nearest rank, sorting once; `None` each
    /// when empty.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<Duration>; N] {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        qs.map(|q| nearest_rank(&sorted, q))
    }

    /// The quantile `q` once the window holds [`MIN_SAMPLES`], computed again only every
    /// few new samples.
    pub fn hedge_quantile(&mut self, q: f64) -> Option<Duration> {
        if self.samples.len() < MIN_SAMPLES {
            return None;
        }
        if let Some((cached_q, at, value)) = self.cached
            && cached_q == q
            && self.recorded - at < REFRESH_EVERY
        {
            return value;
        }
        let [value] = self.quantiles([q]);
        self.cached = Some((q, self.recorded, value));
        value
    }
}

/// The smallest sample at or above `q` percent of them.
fn nearest_rank(sorted: &[u32], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(Duration::from_micros(u64::from(sorted[index])))
}

/// Straggler shards: those whose p95 is more than [`STRAGGLER_FACTOR`] times the median
/// shard's p95. Only shards with [`MIN_SAMPLES`] count, and the median is taken over
/// them (for an even number, the lower of the two middle values).
pub fn stragglers(p95s: &[Option<Duration>]) -> Vec<usize> {
    let mut measured: Vec<Duration> = p95s.iter().flatten().copied().collect();
    if measured.len() < 2 {
        return Vec::new();
    }
    measured.sort_unstable();
    let median = measured[(measured.len() - 1) / 2];
    p95s.iter()
        .enumerate()
        .filter(|(_, p95)| p95.is_some_and(|p| p > median * STRAGGLER_FACTOR))
        .map(|(shard, _)| shard)
        .collect()
}

/// How many times the median shard's p95 makes a straggler.
pub const STRAGGLER_FACTOR: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn quantiles_are_by_nearest_rank_over_the_last_samples() {
        let mut window = Window::default();
        for n in 1..=100 {
            window.record(ms(n));
        }
        assert_eq!(
            window.quantiles([50.0, 95.0, 99.0]),
            [Some(ms(50)), Some(ms(95)), Some(ms(99))]
        );
        // The ring forgets the oldest: 300 more samples of 1 ms leave no trace of them.
        for _ in 0..SIZE {
            window.record(ms(1));
        }
        assert_eq!(window.len(), SIZE);
        assert_eq!(window.quantiles([99.0]), [Some(ms(1))]);
        assert_eq!(Window::default().quantiles([50.0]), [None]);
    }

    #[test]
    fn the_hedge_waits_for_enough_samples_and_follows_changes() {
        let mut window = Window::default();
        for _ in 0..MIN_SAMPLES - 1 {
            window.record(ms(10));
        }
        assert_eq!(window.hedge_quantile(95.0), None);
        window.record(ms(10));
        assert_eq!(window.hedge_quantile(95.0), Some(ms(10)));
        for _ in 0..SIZE {
            window.record(ms(40));
        }
        assert_eq!(window.hedge_quantile(95.0), Some(ms(40)));
    }

    #[test]
    fn a_straggler_is_twice_the_median_shards_p95() {
        let p95s = [Some(ms(10)), Some(ms(12)), None, Some(ms(25)), Some(ms(20))];
        // Median of 10, 12, 20, 25 (lower middle): 12; 25 > 24, 20 is not.
        assert_eq!(stragglers(&p95s), [3]);
        assert!(stragglers(&[Some(ms(100)), None]).is_empty());
        assert_eq!(stragglers(&[Some(ms(10)), Some(ms(30))]), [1]);
    }
}
