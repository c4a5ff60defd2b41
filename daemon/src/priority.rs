//! CPU priority of background work. A 100k-user snapshot is seconds of CPU (validation, inserts,
//! index builds) on a till with two cores, next to a login's argon2 evaluation and the POS app.
//! It runs on a thread of its own at a lower priority (nice [`BACKGROUND_NICE`]), so logins are
//! not made to wait for it; when nothing else runs it gets the whole core anyway.
//!
//! Raising priority back needs `CAP_SYS_NICE`, which the daemon does not have, so a pooled
//! thread is never lowered: only a thread that ends with its work.
//!
//! Only work that holds no lock a login needs may run here (a lowered thread holding such a lock
//! would make logins wait for it: priority inversion). The snapshot's side file qualifies; its
//! switch into place does not, and runs at normal priority.

use std::time::{Duration, Instant};

/// The nice value of background threads (0 is normal, 19 the lowest).
pub const BACKGROUND_NICE: i32 = 10;

/// The longest background work waits for logins at one step: longer than one argon2 evaluation
/// at the default costs (≈ 15–25 ms on a till), so a login in progress finishes undisturbed, yet
/// bounded, so a stream of logins slows a snapshot down but never stops it.
pub const MAX_STEP_ASIDE: Duration = Duration::from_millis(50);

const POLL: Duration = Duration::from_millis(1);

/// Lets long background work (a snapshot build) step aside while logins are hashing. Niceness
/// alone is not enough on a two-core till: the two cores are often SMT siblings or share a
/// cache, so a busy neighbour slows argon2 down at any priority. The work is cut into steps of a
/// few milliseconds, and before each step it waits (at most [`MAX_STEP_ASIDE`]) until no login is
/// hashing: a login overlaps at most one step.
pub struct StepAside {
    busy: Box<dyn Fn() -> bool + Send + Sync>,
    max_wait: Duration,
}

impl std::fmt::Debug for StepAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepAside")
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl StepAside {
    /// `busy` says whether a login is hashing now.
    pub fn new(busy: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        StepAside {
            busy: Box::new(busy),
            max_wait: MAX_STEP_ASIDE,
        }
    }

    /// Never waits (tests, tools).
    pub fn never() -> Self {
        StepAside::new(|| false)
    }

    /// Waits until nothing is busy, or `max_wait` has passed; returns how long it waited.
    pub fn step(&self) -> Duration {
        let start = Instant::now();
        while (self.busy)() && start.elapsed() < self.max_wait {
            std::thread::sleep(POLL);
        }
        start.elapsed()
    }
}

/// Runs `work` on a new thread named `name` at background priority and waits for it. A panic in
/// `work` is resumed here. Err only when the thread could not be started.
pub fn run_in_background<T: Send>(
    name: &str,
    work: impl FnOnce() -> T + Send,
) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn_scoped(scope, || {
                lower_this_thread();
                work()
            })?;
        match handle.join() {
            Ok(out) => Ok(out),
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Lowers the calling thread's CPU priority (Linux nice values are per thread). Failure only
/// costs the priority: the work still runs.
fn lower_this_thread() {
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), BACKGROUND_NICE) {
        tracing::debug!(error = %e, "could not lower the priority of a background thread");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_lowered_on_its_own_thread_and_the_caller_keeps_its_priority() {
        let me = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let (nice, name) = run_in_background("bg-test", || {
            let nice =
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
            (nice, std::thread::current().name().map(str::to_owned))
        })
        .unwrap();
        assert_eq!(nice, BACKGROUND_NICE.max(me));
        assert_eq!(name.as_deref(), Some("bg-test"));
        let after = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_eq!(after, me, "the calling thread is not lowered");
    }

    #[test]
    fn a_step_waits_while_busy_and_no_longer_than_its_bound() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        assert!(StepAside::never().step() < MAX_STEP_ASIDE);
        // Busy for the first three polls, then free: the step ends after them, well before the bound.
        let polls = Arc::new(AtomicUsize::new(0));
        let seen = polls.clone();
        let freed = StepAside::new(move || seen.fetch_add(1, Ordering::SeqCst) < 3);
        freed.step();
        assert_eq!(polls.load(Ordering::SeqCst), 4, "polled until free");
        // Always busy: the step gives up at the bound (a stream of logins cannot stop the work).
        let waited = StepAside::new(|| true).step();
        assert!(waited >= MAX_STEP_ASIDE, "{waited:?}");
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| run_in_background("bg-panic", || panic!("boom")));
        assert!(caught.is_err());
    }
}
