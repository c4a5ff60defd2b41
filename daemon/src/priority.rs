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

/// The nice value of background threads (0 is normal, 19 the lowest).
pub const BACKGROUND_NICE: i32 = 10;

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
    fn a_panic_in_the_work_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| run_in_background("bg-panic", || panic!("boom")));
        assert!(caught.is_err());
    }
}
