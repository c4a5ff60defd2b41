//! When a device whose rule says `grab = true` may be read, decided without I/O. Such a device
//! is read only once this daemon holds its grab: while another process (the POS app, X, a stray
//! `evtest --grab`) holds it, its keystrokes reach that process, and decoding them here too
//! would hand a PIN or key id to both. So the grab is retried with a backoff for as long as the
//! node exists, the wait is shown as the device's state, and input queued before the grab
//! succeeded is discarded.

use std::io;
use std::time::Duration;

/// The first retry after a failed grab; each failure doubles it up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// A wait that goes on is logged again every this many failures (at [`RETRY_MAX`] apart:
/// every 5 minutes), so a held reader stays visible in the log without flooding it.
pub const LOG_EVERY: u32 = 60;

/// How long to wait after the `failures`-th failed grab in a row (1-based) before trying again.
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// The device's state while its grab fails, as `tillctl devices` and the log show it.
pub fn waiting_text(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(nix::libc::EBUSY) => "waiting to grab: held by another process (EBUSY)".to_owned(),
        _ => format!("waiting to grab: {error}"),
    }
}

/// What to do after one failed grab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Wait this long before the next attempt.
    pub delay: Duration,
    /// Failures in a row so far, this one included.
    pub failures: u32,
    /// Log this failure: the first, one whose reason differs from the last logged, or every
    /// [`LOG_EVERY`]th.
    pub log: bool,
    /// The reason differs from the previous failure's: show it in the registry.
    pub changed: bool,
}

/// The failures in a row of one device's grab.
#[derive(Debug, Default)]
pub struct GrabRetry {
    failures: u32,
    last_logged: Option<String>,
    last: Option<String>,
}

impl GrabRetry {
    /// Records a failed attempt whose reason is `text` (from [`waiting_text`]).
    pub fn failed(&mut self, text: &str) -> Retry {
        self.failures = self.failures.saturating_add(1);
        let changed = self.last.as_deref() != Some(text);
        if changed {
            self.last = Some(text.to_owned());
        }
        let log =
            self.last_logged.as_deref() != Some(text) || self.failures.is_multiple_of(LOG_EVERY);
        if log {
            self.last_logged = Some(text.to_owned());
        }
        Retry {
            delay: retry_delay(self.failures),
            failures: self.failures,
            log,
            changed,
        }
    }

    /// Failed attempts so far (0: the first grab succeeded).
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Whether an event stamped `time` was queued for this descriptor before the grab took effect
/// (`grabbed_at` is read on the event's clock right after the grab succeeded): such input also
/// reached every other reader of the node and must not be decoded.
pub fn before_grab(time: Duration, grabbed_at: Duration) -> bool {
    time <= grabbed_at
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_100_ms_and_double_up_to_5_s() {
        let delays: Vec<u128> = (1..=9).map(|n| retry_delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(retry_delay(0), RETRY_FIRST);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn busy_says_another_process_holds_the_device() {
        let busy = io::Error::from_raw_os_error(nix::libc::EBUSY);
        assert_eq!(
            waiting_text(&busy),
            "waiting to grab: held by another process (EBUSY)"
        );
        let other = io::Error::from_raw_os_error(nix::libc::EPERM);
        let text = waiting_text(&other);
        assert!(text.starts_with("waiting to grab: "), "{text}");
        assert!(text.contains("not permitted"), "{text}");
    }

    #[test]
    fn a_long_wait_is_logged_once_then_rarely() {
        let mut retry = GrabRetry::default();
        let busy = "waiting to grab: held by another process (EBUSY)";
        let logged: Vec<u32> = (0..200)
            .map(|_| retry.failed(busy))
            .filter(|r| r.log)
            .map(|r| r.failures)
            .collect();
        assert_eq!(logged, [1, 60, 120, 180]);
        assert_eq!(retry.failures(), 200);
    }

    #[test]
    fn a_new_reason_is_logged_and_shown_at_once() {
        let mut retry = GrabRetry::default();
        let first = retry.failed("waiting to grab: held by another process (EBUSY)");
        assert!(first.log && first.changed);
        let same = retry.failed("waiting to grab: held by another process (EBUSY)");
        assert!(!same.log && !same.changed);
        let other = retry.failed("waiting to grab: Operation not permitted (os error 1)");
        assert!(other.log && other.changed);
        assert_eq!(other.delay, Duration::from_millis(400));
    }

    #[test]
    fn input_stamped_up_to_the_grab_is_discarded() {
        let grabbed_at = Duration::from_millis(5_000);
        assert!(before_grab(Duration::from_millis(4_999), grabbed_at));
        assert!(before_grab(grabbed_at, grabbed_at));
        assert!(!before_grab(Duration::from_millis(5_001), grabbed_at));
    }
}
