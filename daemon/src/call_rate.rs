//! A call-rate budget per peer (a login socket uid): `per_second` calls a second after a burst
//! of `burst`. A call over the budget is given a later start time — the caller waits for it,
//! so a flooding client is slowed down rather than answered faster — unless that wait would
//! exceed `max_wait`; then it is refused at once and takes nothing from the budget.
//!
//! The arithmetic is GCRA (a token bucket expressed as the time at which the bucket is full
//! again) on a caller-supplied clock, so it is a plain function tested without I/O. Crates such
//! as `governor` answer "may this call go now?", not "reserve me the next free start time": the
//! reservation is what keeps waiting calls first come, first served with a wait known up front.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// The budget each peer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRate {
    /// Sustained calls a second (at least 1).
    pub per_second: u32,
    /// Calls a peer may make at once after being quiet (at least 1).
    pub burst: u32,
    /// The longest a call waits for its turn; a longer wait is refused at once.
    pub max_wait: Duration,
}

impl CallRate {
    /// Time between two calls at the sustained rate.
    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.per_second.max(1)
    }

    /// How far ahead of the sustained rate a peer may run: the burst, less the call itself.
    fn tolerance(&self) -> Duration {
        self.interval() * self.burst.max(1).saturating_sub(1)
    }
}

/// What a call gets from the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the budget: it goes now.
    Now,
    /// Its turn comes after this wait (at most `max_wait`).
    After(Duration),
    /// Its turn would come only after `wait`, more than `max_wait`: refused, nothing reserved.
    Refused { wait: Duration },
}

/// One peer's budget: the instant (on the caller's clock) at which it is full again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    full_at: Duration,
}

impl Bucket {
    /// Reserves the next start time for a call arriving at `now`.
    pub fn reserve(&mut self, now: Duration, rate: &CallRate) -> Admission {
        let base = self.full_at.max(now);
        let starts_at = base.saturating_sub(rate.tolerance());
        let wait = starts_at.saturating_sub(now);
        if wait > rate.max_wait {
            return Admission::Refused { wait };
        }
        self.full_at = base + rate.interval();
        if wait.is_zero() {
            Admission::Now
        } else {
            Admission::After(wait)
        }
    }

    /// A full bucket is the same as no bucket: it may be forgotten.
    fn is_full(&self, now: Duration) -> bool {
        self.full_at <= now
    }
}

/// Buckets above this many are swept of full ones (bounds memory under many peers).
const SWEEP_ABOVE: usize = 256;

/// The budgets of all peers of one listener.
#[derive(Debug)]
pub struct CallRates<K> {
    rate: CallRate,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq> CallRates<K> {
    pub fn new(rate: CallRate) -> Self {
        CallRates {
            rate,
            buckets: HashMap::new(),
        }
    }

    pub fn rate(&self) -> &CallRate {
        &self.rate
    }

    /// Reserves a start time for `peer`'s call arriving at `now` (a monotonic clock).
    pub fn reserve(&mut self, peer: K, now: Duration) -> Admission {
        if self.buckets.len() > SWEEP_ABOVE {
            self.buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        let rate = self.rate;
        self.buckets.entry(peer).or_default().reserve(now, &rate)
    }

    /// Peers whose budget is not full (for tests and status).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32, max_wait_ms: u64) -> CallRate {
        CallRate {
            per_second,
            burst,
            max_wait: Duration::from_millis(max_wait_ms),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_quiet_peer_gets_its_burst_at_once_then_the_sustained_rate() {
        let rate = rate(5, 5, 10_000);
        let mut bucket = Bucket::default();
        let at = ms(1_000);
        for _ in 0..5 {
            assert_eq!(bucket.reserve(at, &rate), Admission::Now);
        }
        // The sixth, seventh … arriving at the same instant start 200 ms apart.
        assert_eq!(bucket.reserve(at, &rate), Admission::After(ms(200)));
        assert_eq!(bucket.reserve(at, &rate), Admission::After(ms(400)));
    }

    #[test]
    fn sequential_calls_that_each_wait_their_turn_run_at_the_sustained_rate() {
        // 25 calls one after another, each starting when its turn comes: the 25th starts
        // (25 - burst) intervals after the first, whatever the caller does in between.
        let rate = rate(5, 5, 2_000);
        let mut bucket = Bucket::default();
        let mut now = ms(0);
        for _ in 0..25 {
            match bucket.reserve(now, &rate) {
                Admission::Now => {}
                Admission::After(wait) => now += wait,
                Admission::Refused { wait } => panic!("refused after {wait:?}"),
            }
            now += ms(1); // the call itself
        }
        assert!(now >= ms(4_000), "{now:?}");
        assert!(now < ms(4_100), "{now:?}");
    }

    #[test]
    fn a_wait_over_the_bound_is_refused_and_reserves_nothing() {
        let rate = rate(1, 1, 1_000);
        let mut bucket = Bucket::default();
        assert_eq!(bucket.reserve(ms(0), &rate), Admission::Now);
        assert_eq!(bucket.reserve(ms(0), &rate), Admission::After(ms(1_000)));
        assert_eq!(
            bucket.reserve(ms(0), &rate),
            Admission::Refused { wait: ms(2_000) }
        );
        // The refusal took nothing: 1.5 s later the next turn is at 2 s, as before it.
        assert_eq!(bucket.reserve(ms(1_500), &rate), Admission::After(ms(500)));
    }

    #[test]
    fn the_budget_refills_while_the_peer_is_quiet_but_never_beyond_the_burst() {
        let rate = rate(10, 3, 0);
        let mut bucket = Bucket::default();
        for _ in 0..3 {
            assert_eq!(bucket.reserve(ms(0), &rate), Admission::Now);
        }
        assert!(matches!(
            bucket.reserve(ms(0), &rate),
            Admission::Refused { .. }
        ));
        // One interval later, one call.
        assert_eq!(bucket.reserve(ms(100), &rate), Admission::Now);
        assert!(matches!(
            bucket.reserve(ms(100), &rate),
            Admission::Refused { .. }
        ));
        // An hour of quiet buys the burst, not an hour's worth of calls.
        let later = ms(3_600_000);
        for _ in 0..3 {
            assert_eq!(bucket.reserve(later, &rate), Admission::Now);
        }
        assert!(matches!(
            bucket.reserve(later, &rate),
            Admission::Refused { .. }
        ));
    }

    #[test]
    fn a_flood_is_held_to_the_rate_over_any_long_stretch() {
        // A peer calling every millisecond for 10 s, with every refused call retried at once:
        // what it gets is the burst plus per_second × 10, however it times its calls.
        let rate = rate(50, 100, 2_000);
        let mut bucket = Bucket::default();
        let mut admitted = 0u32;
        for t in 0..10_000 {
            if !matches!(bucket.reserve(ms(t), &rate), Admission::Refused { .. }) {
                admitted += 1;
            }
        }
        // Reservations may reach max_wait past the end: at most that much more.
        assert!(admitted <= 100 + 50 * 10 + 50 * 2, "{admitted}");
        assert!(admitted >= 100 + 50 * 10, "{admitted}");
    }

    #[test]
    fn peers_have_separate_budgets_and_full_ones_are_forgotten() {
        let mut rates = CallRates::new(rate(1, 1, 0));
        assert_eq!(rates.reserve(1000u32, ms(0)), Admission::Now);
        assert!(matches!(
            rates.reserve(1000, ms(0)),
            Admission::Refused { .. }
        ));
        assert_eq!(rates.reserve(65534, ms(0)), Admission::Now);
        for peer in 0..(SWEEP_ABOVE as u32 + 1) {
            rates.reserve(peer + 100_000, ms(0));
        }
        assert!(rates.tracked() > SWEEP_ABOVE);
        // Two seconds later every bucket is full again; the next call sweeps them.
        assert_eq!(rates.reserve(1000, ms(2_000)), Admission::Now);
        assert_eq!(rates.tracked(), 1);
    }
}
