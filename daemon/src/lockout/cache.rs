//! Lockouts remembered in memory, so that a locked source's further attempts are refused with
//! no SQLite read and no blocking-pool task. Pure: the authenticator holds one behind a mutex.
//!
//! The cache may only ever refuse what the store would refuse. An entry is made from a refusal
//! the store itself answered (scope → the end of that refusal on the monotonic clock of
//! [`crate::clock::now`]). A running lockout only ends earlier than that through a refund (a
//! success from the same scope, or for the terminal scope a success anywhere that was admitted
//! before the lock) or a clear (`tillctl unlock`); the authenticator forgets the scopes of
//! both. A policy change takes a restart (an empty cache); so does a quarantined local store.
//!
//! A refusal read from the store may reach the cache after a concurrent refund or clear forgot
//! its scope (the read runs on the blocking pool, the forget right after the refund's commit):
//! remembered then, it would refuse for up to `lockout.max_delay` what the store admits. So
//! every forget counts a generation, the caller reads the generation before it reads the
//! store, and a refusal is only remembered when no forget came in between.

use std::collections::HashMap;
use std::time::Duration;

use super::{CHARGE, LockoutPolicy, Now, Refusal, TERMINAL_SCOPE, millis};

/// Entries kept before the expired ones are dropped.
const PRUNE_ABOVE: usize = 64;

#[derive(Debug, Default)]
pub struct LockedScopes {
    boot: u128,
    /// Scope → the end of its lockout, in ms on `boot`'s monotonic clock.
    until: HashMap<String, u64>,
    /// Forgets so far: a refusal read before one of them may be stale.
    generation: u64,
}

impl LockedScopes {
    /// The generation to read before asking the store (see [`LockedScopes::remember`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Remembers a refusal the store answered at `now`, from a read made at `read_at` (the
    /// [`LockedScopes::generation`] before it): not at all if a forget came since, as that
    /// refund or clear may have ended the lockout after the read. A source's lockout ends at a
    /// stored instant; the terminal budget drains in steps of a thousandth of a charge, so its
    /// end is only known within one step: that one is remembered as ending a step early.
    pub fn remember(&mut self, refusal: &Refusal, policy: &LockoutPolicy, now: Now, read_at: u64) {
        if read_at != self.generation {
            return;
        }
        if self.boot != now.boot {
            self.until.clear();
            self.boot = now.boot;
        }
        if self.until.len() >= PRUNE_ABOVE {
            self.until.retain(|_, end| *end > now.mono_ms);
        }
        let slack = if refusal.scope == TERMINAL_SCOPE {
            millis(policy.terminal_refill) / CHARGE + 1
        } else {
            0
        };
        let retry_ms = millis(refusal.retry_after).saturating_sub(slack);
        if retry_ms == 0 {
            return;
        }
        let end = now.mono_ms.saturating_add(retry_ms);
        let entry = self.until.entry(refusal.scope.clone()).or_insert(end);
        *entry = (*entry).max(end);
    }

    /// The longest remembered lockout among `scopes` still running at `now`, if any.
    pub fn refusal(&self, scopes: &[String], now: Now) -> Option<Refusal> {
        if self.boot != now.boot {
            return None;
        }
        scopes
            .iter()
            .filter_map(|scope| {
                let end = *self.until.get(scope)?;
                (end > now.mono_ms).then(|| Refusal {
                    scope: scope.clone(),
                    retry_after: Duration::from_millis(end - now.mono_ms),
                })
            })
            .max_by_key(|r| r.retry_after)
    }

    /// Forgets `scopes` (their lockout was cleared or refunded).
    pub fn forget(&mut self, scopes: &[String]) {
        self.generation = self.generation.wrapping_add(1);
        for scope in scopes {
            self.until.remove(scope);
        }
    }

    pub fn forget_all(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.until.clear();
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::lockout::{Budget, Counter, LockoutPolicy, TERMINAL_SCOPE, admit};

    fn at(mono_ms: u64) -> Now {
        Now {
            boot: 7,
            mono_ms,
            wall_ms: 1_700_000_000_000 + mono_ms,
        }
    }

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            max_failures: 2,
            delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(60),
            terminal_max_failures: 6,
            terminal_refill: Duration::from_secs(30),
        }
    }

    /// The store's counters and the daemon's cache, driven the way `login.rs` drives them.
    #[derive(Default)]
    struct Till {
        store: BTreeMap<String, Counter>,
        cache: LockedScopes,
        /// Attempts admitted and charged, not yet settled: (budget, source).
        in_flight: Vec<(Budget, &'static str)>,
    }

    impl Till {
        fn counters(&self, scopes: &[String]) -> Vec<(String, Counter)> {
            scopes
                .iter()
                .map(|s| (s.clone(), self.store.get(s).copied().unwrap_or_default()))
                .collect()
        }

        /// What the store would answer now (without charging).
        fn store_refusal(&self, scopes: &[String], now: Now) -> Option<Refusal> {
            admit(&policy(), &mut self.counters(scopes), now).err()
        }

        /// One attempt: refused from memory, refused by the store (and remembered), or
        /// admitted and charged. Asserts the cache never refuses what the store would not.
        fn attempt(&mut self, budget: Budget, source: &'static str, now: Now) -> bool {
            let scopes = policy().scopes(budget, source);
            if let Some(cached) = self.cache.refusal(&scopes, now) {
                let stored = self.store_refusal(&scopes, now);
                let stored = stored.unwrap_or_else(|| {
                    panic!("the cache refused {cached:?} where the store admits")
                });
                assert!(
                    stored.retry_after >= cached.retry_after,
                    "{stored:?} {cached:?}"
                );
                return false;
            }
            let mut counters = self.counters(&scopes);
            match admit(&policy(), &mut counters, now) {
                Ok(()) => {
                    self.store.extend(counters);
                    self.in_flight.push((budget, source));
                    true
                }
                Err(refusal) => {
                    let read_at = self.cache.generation();
                    self.cache.remember(&refusal, &policy(), now, read_at);
                    false
                }
            }
        }

        fn settle(&mut self, index: usize, success: bool, now: Now) {
            if self.in_flight.is_empty() {
                return;
            }
            let (budget, source) = self.in_flight.remove(index % self.in_flight.len());
            if success {
                let scopes = policy().scopes(budget, source);
                for scope in &scopes {
                    let mut c = self.store.get(scope).copied().unwrap_or_default();
                    c.refund(&policy(), scope, now);
                    self.store.insert(scope.clone(), c);
                }
                self.cache.forget(&scopes);
            }
        }

        fn clear(&mut self, scope: Option<String>) {
            match scope {
                Some(scope) => {
                    self.store.remove(&scope);
                    self.cache.forget(&[scope]);
                }
                None => {
                    self.store.clear();
                    self.cache.forget_all();
                }
            }
        }
    }

    #[test]
    fn a_remembered_lockout_refuses_until_its_end_and_not_a_millisecond_longer() {
        let mut till = Till::default();
        let source = "socket uid=1000 gid=1000 pid=1";
        for _ in 0..2 {
            assert!(till.attempt(Budget::Pin, source, at(1000)));
        }
        // The second failure locked the source for 10 s: the store refuses, the cache learns it.
        assert!(!till.attempt(Budget::Pin, source, at(2000)));
        assert_eq!(till.cache.len(), 1);
        let scopes = policy().scopes(Budget::Pin, source);
        for ms in [2001, 5000, 10_999] {
            let cached = till.cache.refusal(&scopes, at(ms)).unwrap();
            let stored = till.store_refusal(&scopes, at(ms)).unwrap();
            assert_eq!(cached, stored, "exactly the store's answer at {ms} ms");
        }
        assert_eq!(till.cache.refusal(&scopes, at(11_000)), None);
        assert_eq!(till.store_refusal(&scopes, at(11_000)), None);
        // Another boot's clock is not comparable: nothing is refused from memory.
        let other_boot = Now {
            boot: 8,
            ..at(3000)
        };
        assert_eq!(till.cache.refusal(&scopes, other_boot), None);
    }

    #[test]
    fn a_clear_or_a_success_forgets_at_once() {
        let mut till = Till::default();
        let source = "device pad";
        for _ in 0..2 {
            assert!(till.attempt(Budget::Pin, source, at(0)));
        }
        assert!(!till.attempt(Budget::Pin, source, at(1)));
        till.clear(Some(crate::lockout::scope_of(source)));
        assert!(till.attempt(Budget::Pin, source, at(2)), "unlocked at once");
        // An attempt admitted before a lock that then succeeds resets its source.
        assert!(till.attempt(Budget::Pin, source, at(3)));
        assert!(!till.attempt(Budget::Pin, source, at(4)));
        assert_eq!(till.cache.len(), 1);
        till.settle(till.in_flight.len() - 1, true, at(5));
        assert!(
            till.attempt(Budget::Pin, source, at(6)),
            "reset by the success"
        );
        assert!(
            till.cache
                .refusal(&[TERMINAL_SCOPE.to_owned()], at(6))
                .is_none()
        );
    }

    #[test]
    fn a_refusal_read_before_a_concurrent_success_is_not_remembered() {
        let mut till = Till::default();
        let source = "socket uid=1000 gid=1000 pid=1";
        let scopes = policy().scopes(Budget::Pin, source);
        // Two attempts admitted and charged; the second locks the source for 10 s.
        assert!(till.attempt(Budget::Pin, source, at(0)));
        assert!(till.attempt(Budget::Pin, source, at(1)));
        // A third attempt reads the store's refusal (on the blocking pool)...
        let read_at = till.cache.generation();
        let refusal = till.store_refusal(&scopes, at(2)).unwrap();
        // ... meanwhile the second turns out to be the right PIN: refunded, and forgotten.
        till.settle(1, true, at(3));
        assert_eq!(till.store_refusal(&scopes, at(4)), None, "the store admits");
        // The third attempt's refusal arrives late: it must not be remembered.
        till.cache.remember(&refusal, &policy(), at(4), read_at);
        assert_eq!(till.cache.refusal(&scopes, at(5)), None);
        assert!(till.attempt(Budget::Pin, source, at(6)), "admitted");
        // A refusal read after the forget is remembered as before.
        assert!(till.attempt(Budget::Pin, source, at(7)));
        assert!(!till.attempt(Budget::Pin, source, at(8)));
        assert!(till.cache.refusal(&scopes, at(9)).is_some());
    }

    #[derive(Debug, Clone)]
    enum Step {
        Attempt { budget: Budget, source: usize },
        Settle { index: usize, success: bool },
        Clear { scope: Option<usize> },
        Wait { ms: u64 },
    }

    const SOURCES: [&str; 3] = ["socket uid=1000 gid=1 pid=2", "device pad", "device reader"];

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (any::<bool>(), 0..SOURCES.len()).prop_map(|(pin, source)| Step::Attempt {
                budget: if pin { Budget::Pin } else { Budget::Key },
                source,
            }),
            3 => (any::<usize>(), prop::bool::weighted(0.2))
                .prop_map(|(index, success)| Step::Settle { index, success }),
            1 => prop::option::of(0..SOURCES.len() + 1).prop_map(|scope| Step::Clear { scope }),
            3 => (0u64..40_000).prop_map(|ms| Step::Wait { ms }),
        ]
    }

    proptest! {
        /// Under any schedule of attempts, in-flight successes and failures, clears and waits,
        /// the cache refuses only while the store would, never longer.
        #[test]
        fn the_cache_never_refuses_what_the_store_would_admit(
            steps in prop::collection::vec(step(), 1..300)
        ) {
            let mut till = Till::default();
            let mut now = 0u64;
            for step in steps {
                now += 1;
                match step {
                    Step::Attempt { budget, source } => {
                        till.attempt(budget, SOURCES[source], at(now));
                    }
                    Step::Settle { index, success } => till.settle(index, success, at(now)),
                    Step::Clear { scope } => till.clear(scope.map(|i| match SOURCES.get(i) {
                        Some(source) => crate::lockout::scope_of(source),
                        None => TERMINAL_SCOPE.to_owned(),
                    })),
                    Step::Wait { ms } => now += ms,
                }
                // At every instant, for every source and budget.
                for source in SOURCES {
                    for budget in [Budget::Pin, Budget::Key] {
                        let scopes = policy().scopes(budget, source);
                        if let Some(cached) = till.cache.refusal(&scopes, at(now)) {
                            let stored = till.store_refusal(&scopes, at(now));
                            prop_assert!(
                                stored.as_ref().is_some_and(|s| s.retry_after >= cached.retry_after),
                                "cache {:?}, store {:?}", cached, stored
                            );
                        }
                    }
                }
            }
        }
    }
}
