//! Failed-attempt counting and lockout delays: pure functions over a counter and the time, no
//! I/O. The store keeps one [`Counter`] per scope and runs these inside the transaction that also
//! writes the audit row.
//!
//! Rules:
//! - A failure is a credential that matches nobody (a wrong PIN, an unknown key). A credential
//!   of an inactive or unassigned user, a malformed request or a bad CRC read is not one.
//! - Failures are counted per input source (a socket peer's uid, a reader's name) and, with a
//!   separate threshold, for the whole terminal.
//! - `max_failures` failures within `window` of the first one lock the scope: PIN login (and PIN
//!   authorization) from it is refused for `delay`, doubled with every further lockout
//!   (`strikes`), up to `max_delay`.
//! - A success resets the source's counter. The terminal counter is not reset by a success (so
//!   that someone who knows one valid PIN cannot reset it between guesses); it is cleared by
//!   `tillctl unlock` or forgotten after a quiet period.
//! - The doubling is forgotten after a quiet period of `max_delay` after the lockout ended.

use std::time::Duration;

/// The scope counting every failure at this terminal, whatever its source.
pub const TERMINAL_SCOPE: &str = "terminal";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures within `window` that lock a source.
    pub max_failures: u32,
    /// Failures within `window` that lock the whole terminal; 0 disables the terminal counter.
    pub terminal_max_failures: u32,
    pub window: Duration,
    /// The first lockout's length; each further one doubles it.
    pub delay: Duration,
    pub max_delay: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            max_failures: 5,
            terminal_max_failures: 10,
            window: Duration::from_secs(60),
            delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(15 * 60),
        }
    }
}

impl LockoutPolicy {
    /// Failures that lock `scope`; None when the scope is not counted.
    pub fn threshold(&self, scope: &str) -> Option<u32> {
        if scope == TERMINAL_SCOPE {
            Some(self.terminal_max_failures).filter(|n| *n > 0)
        } else {
            Some(self.max_failures)
        }
    }

    /// The scopes a failure from `source` counts against.
    pub fn scopes(&self, source: &str) -> Vec<String> {
        let mut scopes = vec![scope_of(source)];
        if self.threshold(TERMINAL_SCOPE).is_some() {
            scopes.push(TERMINAL_SCOPE.to_owned());
        }
        scopes
    }

    /// The lockout length after `strikes` lockouts: `delay * 2^(strikes-1)`, at most `max_delay`.
    pub fn delay_for(&self, strikes: u32) -> Duration {
        let doublings = strikes.saturating_sub(1).min(31);
        self.delay
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// The counter key of an input source: socket peers are counted per uid (their pid and gid
/// change between connections), devices per name. Anything else is its own scope.
pub fn scope_of(source: &str) -> String {
    if let Some(rest) = source.strip_prefix("socket ") {
        if let Some(uid) = rest.split_whitespace().find(|f| f.starts_with("uid=")) {
            return format!("socket {uid}");
        }
        return "socket".to_owned();
    }
    if let Some(rest) = source.strip_prefix("device ") {
        // `device "<name>" (<place>)`: the name is quoted (it may hold spaces).
        if let Some(quoted) = rest.strip_prefix('"')
            && let Some((name, _)) = quoted.split_once('"')
        {
            return format!("device {name}");
        }
        let name = rest.split(" (").next().unwrap_or(rest).trim();
        return format!("device {name}");
    }
    source.to_owned()
}

/// One scope's state, as stored. Times are Unix milliseconds, so the counter survives restarts
/// (wall clock: a lockout also spans a reboot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    /// Failures in the current window.
    pub failures: u32,
    pub window_start_ms: u64,
    /// Lockouts since the last reset; the next delay doubles with each.
    pub strikes: u32,
    /// 0 when never locked.
    pub locked_until_ms: u64,
    pub last_failure_ms: u64,
}

impl Counter {
    /// How long PIN login stays refused, if it is.
    pub fn retry_after(&self, now_ms: u64) -> Option<Duration> {
        (self.locked_until_ms > now_ms)
            .then(|| Duration::from_millis(self.locked_until_ms - now_ms))
    }

    /// Counts one failure; returns the lockout it started, if it reached the threshold.
    pub fn record_failure(
        &mut self,
        policy: &LockoutPolicy,
        threshold: u32,
        now_ms: u64,
    ) -> Option<Duration> {
        let quiet_since = self.locked_until_ms.max(self.last_failure_ms);
        if self.strikes > 0
            && self.retry_after(now_ms).is_none()
            && now_ms.saturating_sub(quiet_since) >= millis(policy.max_delay)
        {
            self.strikes = 0;
        }
        if self.failures == 0
            || now_ms.saturating_sub(self.window_start_ms) >= millis(policy.window)
        {
            self.failures = 0;
            self.window_start_ms = now_ms;
        }
        self.failures += 1;
        self.last_failure_ms = now_ms;
        if self.failures < threshold.max(1) {
            return None;
        }
        self.strikes = self.strikes.saturating_add(1);
        self.failures = 0;
        let delay = policy.delay_for(self.strikes);
        self.locked_until_ms = now_ms.saturating_add(millis(delay));
        Some(delay)
    }

    /// True when the counter holds nothing worth keeping: no failures in a running window, no
    /// running lockout, no strikes still remembered.
    pub fn is_spent(&self, policy: &LockoutPolicy, now_ms: u64) -> bool {
        let window_over = self.failures == 0
            || now_ms.saturating_sub(self.window_start_ms) >= millis(policy.window);
        let quiet_since = self.locked_until_ms.max(self.last_failure_ms);
        let strikes_forgotten =
            self.strikes == 0 || now_ms.saturating_sub(quiet_since) >= millis(policy.max_delay);
        window_over && self.retry_after(now_ms).is_none() && strikes_forgotten
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1000;

    fn policy() -> LockoutPolicy {
        LockoutPolicy::default()
    }

    fn fail(counter: &mut Counter, times: u32, now_ms: u64) -> Option<Duration> {
        let mut last = None;
        for _ in 0..times {
            last = counter.record_failure(&policy(), 5, now_ms);
        }
        last
    }

    #[test]
    fn five_failures_within_the_window_lock_for_the_delay() {
        let mut c = Counter::default();
        assert_eq!(fail(&mut c, 4, 100 * S), None);
        assert_eq!(c.retry_after(100 * S), None);
        assert_eq!(fail(&mut c, 1, 110 * S), Some(Duration::from_secs(30)));
        assert_eq!(c.retry_after(110 * S), Some(Duration::from_secs(30)));
        assert_eq!(c.retry_after(130 * S), Some(Duration::from_secs(10)));
        assert_eq!(c.retry_after(140 * S), None);
    }

    #[test]
    fn failures_spread_beyond_the_window_start_a_new_one() {
        let mut c = Counter::default();
        fail(&mut c, 4, 0);
        // The fifth comes 60 s after the first: a new window, count 1.
        assert_eq!(fail(&mut c, 1, 60 * S), None);
        assert_eq!(c.failures, 1);
        assert_eq!(fail(&mut c, 3, 61 * S), None);
        assert!(fail(&mut c, 1, 62 * S).is_some());
    }

    #[test]
    fn each_further_lockout_doubles_up_to_the_cap() {
        let mut c = Counter::default();
        let mut now = 0;
        let mut delays = vec![];
        for _ in 0..8 {
            delays.push(fail(&mut c, 5, now).unwrap().as_secs());
            now = c.locked_until_ms + S;
        }
        assert_eq!(delays, vec![30, 60, 120, 240, 480, 900, 900, 900]);
    }

    #[test]
    fn strikes_are_forgotten_after_a_quiet_period_of_max_delay() {
        let mut c = Counter::default();
        fail(&mut c, 5, 0);
        assert_eq!(c.strikes, 1);
        // Lock ended at 30 s; quiet until 30 s + 15 min: the next lockout is the base delay.
        let later = 30 * S + 15 * 60 * S;
        assert_eq!(fail(&mut c, 5, later), Some(Duration::from_secs(30)));
        // But not when it comes sooner.
        let mut c = Counter::default();
        fail(&mut c, 5, 0);
        assert_eq!(fail(&mut c, 5, 31 * S), Some(Duration::from_secs(60)));
    }

    #[test]
    fn spent_counters_can_be_dropped() {
        let p = policy();
        let mut c = Counter::default();
        assert!(c.is_spent(&p, 0));
        fail(&mut c, 1, 0);
        assert!(!c.is_spent(&p, 59 * S));
        assert!(c.is_spent(&p, 60 * S));
        fail(&mut c, 5, 100 * S);
        assert!(!c.is_spent(&p, 129 * S), "locked");
        assert!(!c.is_spent(&p, 131 * S), "strike remembered");
        assert!(c.is_spent(&p, 130 * S + 900 * S));
    }

    #[test]
    fn scopes_count_socket_peers_per_uid_and_devices_per_name() {
        assert_eq!(
            scope_of("socket uid=1000 gid=1000 pid=42"),
            "socket uid=1000"
        );
        assert_eq!(scope_of("socket uid=1000 gid=5 pid=?"), "socket uid=1000");
        assert_eq!(
            scope_of("device front-reader (/dev/hidraw0)"),
            "device front-reader"
        );
        assert_eq!(scope_of("device front-reader"), "device front-reader");
        assert_eq!(
            scope_of("device \"door reader\" (usb-0000:00:14.0-2/input0)"),
            "device door reader"
        );
        assert_eq!(scope_of("socket unknown peer"), "socket");
        assert_eq!(scope_of("other"), "other");
        let p = policy();
        assert_eq!(
            p.scopes("socket uid=7 gid=7 pid=1"),
            vec!["socket uid=7".to_owned(), TERMINAL_SCOPE.to_owned()]
        );
        let off = LockoutPolicy {
            terminal_max_failures: 0,
            ..p
        };
        assert_eq!(
            off.scopes("socket uid=7 gid=7 pid=1"),
            vec!["socket uid=7".to_owned()]
        );
        assert_eq!(off.threshold(TERMINAL_SCOPE), None);
        assert_eq!(p.threshold(TERMINAL_SCOPE), Some(10));
        assert_eq!(p.threshold("socket uid=7"), Some(5));
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_the_cap_and_never_shrinks(strikes in 1u32..100) {
            let p = policy();
            let d = p.delay_for(strikes);
            prop_assert!(d <= p.max_delay);
            prop_assert!(d >= p.delay_for(strikes.saturating_sub(1).max(1)));
        }

        #[test]
        fn never_locked_below_the_threshold(times in proptest::collection::vec(0u64..1_000_000, 0..4)) {
            let mut c = Counter::default();
            let mut sorted = times.clone();
            sorted.sort();
            for t in sorted {
                prop_assert_eq!(c.record_failure(&policy(), 5, t), None);
            }
            prop_assert_eq!(c.strikes, 0);
        }
    }
}
