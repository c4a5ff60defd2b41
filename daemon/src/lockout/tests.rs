//! The throttle on a simulated clock: unit cases, then the guess budget G and clock safety as
//! properties over adversarial schedules.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;

use super::*;

const S: u64 = 1000;
const DAY: u64 = 86_400 * S;

fn policy() -> LockoutPolicy {
    LockoutPolicy::default()
}

fn at(mono_ms: u64) -> Now {
    Now {
        boot: 1,
        mono_ms,
        wall_ms: 1_700_000_000_000 + mono_ms,
    }
}

/// Persisted counters plus a clock that the adversary partly controls.
#[derive(Debug, Clone)]
struct Terminal {
    policy: LockoutPolicy,
    counters: BTreeMap<String, Counter>,
    boot: u128,
    mono_ms: u64,
    wall_ms: u64,
    /// Time that really passed (what "per 24 h" is measured in).
    real_ms: u64,
    /// Real times of wrong PINs that were tested (admitted and not refunded).
    wrong_tested: Vec<u64>,
}

impl Terminal {
    fn new(policy: LockoutPolicy) -> Self {
        Terminal {
            policy,
            counters: BTreeMap::new(),
            boot: 1,
            mono_ms: 5 * S,
            wall_ms: 1_700_000_000_000,
            real_ms: 0,
            wrong_tested: vec![],
        }
    }

    fn now(&self) -> Now {
        Now {
            boot: self.boot,
            mono_ms: self.mono_ms,
            wall_ms: self.wall_ms,
        }
    }

    fn counters_for(&self, budget: Budget, source: &str) -> Vec<(String, Counter)> {
        self.policy
            .scopes(budget, source)
            .into_iter()
            .map(|s| {
                let c = self.counters.get(&s).copied().unwrap_or_default();
                (s, c)
            })
            .collect()
    }

    /// One attempt, as the store runs it: admit (charge) in one transaction, then the outcome.
    fn attempt(&mut self, budget: Budget, source: &str, right: bool) -> Result<(), Refusal> {
        let now = self.now();
        let mut counters = self.counters_for(budget, source);
        let admitted = admit(&self.policy, &mut counters, now);
        // A refusal writes nothing back but the rebase, which is harmless either way.
        for (scope, c) in &counters {
            self.counters.insert(scope.clone(), *c);
        }
        admitted?;
        if right {
            for (scope, _) in &counters {
                let c = self.counters.entry(scope.clone()).or_default();
                c.refund(&self.policy, scope, now);
            }
        } else if budget == Budget::Pin {
            self.wrong_tested.push(self.real_ms);
        }
        Ok(())
    }

    /// How long until `source` would be admitted.
    fn wait_needed(&self, budget: Budget, source: &str) -> Option<Duration> {
        let now = self.now();
        self.counters_for(budget, source)
            .into_iter()
            .filter_map(|(s, c)| c.rebased(now).retry_after(&self.policy, &s, now))
            .max()
    }

    fn pass(&mut self, ms: u64) {
        self.mono_ms += ms;
        self.wall_ms += ms;
        self.real_ms += ms;
    }

    fn reboot(&mut self, down_ms: u64, mono_after_boot: u64) {
        self.boot += 1;
        self.real_ms += down_ms + mono_after_boot;
        self.mono_ms = mono_after_boot;
    }

    /// The most wrong PINs tested within any `window` of real time.
    fn most_in_any(&self, window: u64) -> usize {
        let mut open: VecDeque<u64> = VecDeque::new();
        let mut most = 0;
        for &t in &self.wrong_tested {
            open.push_back(t);
            while open.front().is_some_and(|&first| t - first >= window) {
                open.pop_front();
            }
            most = most.max(open.len());
        }
        most
    }
}

fn source(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("socket uid={i} gid={i} pid=1")
    } else {
        format!("device reader-{i} (/dev/hidraw{i})")
    }
}

#[test]
fn the_default_budget_is_92_wrong_pins_a_day() {
    assert_eq!(policy().guess_budget(Duration::from_secs(86_400)), 92);
    assert!(policy().guess_budget(Duration::from_secs(86_400)) <= 100);
}

#[test]
fn source_delays_escalate_from_the_sixth_failure_up_to_the_cap() {
    let p = policy();
    let delays: Vec<_> = (1..=12)
        .map(|n| p.source_delay(n).map(|d| d.as_secs()))
        .collect();
    assert_eq!(
        delays,
        vec![
            None,
            None,
            None,
            None,
            Some(30),
            Some(60),
            Some(120),
            Some(240),
            Some(480),
            Some(900),
            Some(900),
            Some(900)
        ]
    );
}

#[test]
fn a_source_locks_at_max_failures_and_only_its_own_success_resets_it() {
    let mut t = Terminal::new(policy());
    let a = source(0);
    let b = source(2);
    for _ in 0..5 {
        t.attempt(Budget::Pin, &a, false).unwrap();
    }
    let refusal = t.attempt(Budget::Pin, &a, true).unwrap_err();
    assert_eq!(refusal.scope, "socket uid=0");
    assert_eq!(refusal.retry_after, Duration::from_secs(30));
    // Another source's success, a valid key from the same source, and time short of the delay
    // change nothing.
    t.attempt(Budget::Pin, &b, true).unwrap();
    t.attempt(Budget::Key, &a, true).unwrap();
    t.pass(29 * S);
    assert_eq!(
        t.attempt(Budget::Pin, &a, true).unwrap_err().retry_after,
        Duration::from_secs(1)
    );
    // Time alone does not forget the count: the next failure doubles the delay.
    t.pass(3600 * S);
    t.attempt(Budget::Pin, &a, false).unwrap();
    assert_eq!(
        t.wait_needed(Budget::Pin, &a),
        Some(Duration::from_secs(60))
    );
    t.pass(60 * S);
    // The right PIN from this source resets it.
    t.attempt(Budget::Pin, &a, true).unwrap();
    assert_eq!(t.counters[&scope_of(&a)], Counter::default());
    for _ in 0..4 {
        t.attempt(Budget::Pin, &a, false).unwrap();
    }
    assert_eq!(t.wait_needed(Budget::Pin, &a), None);
}

#[test]
fn keys_have_their_own_budget_and_keep_working_while_pin_entry_is_locked() {
    let mut t = Terminal::new(LockoutPolicy {
        terminal_max_failures: 3,
        ..policy()
    });
    for i in 0..3 {
        t.attempt(Budget::Pin, &source(i), false).unwrap();
    }
    let locked = t.attempt(Budget::Pin, &source(4), true).unwrap_err();
    assert!(locked.terminal_wide());
    // Keys: still admitted; a valid one clears nothing of the PIN budget.
    t.attempt(Budget::Key, &source(4), true).unwrap();
    assert!(t.attempt(Budget::Pin, &source(4), true).is_err());
    // Wrong keys lock only that source's key budget.
    for _ in 0..5 {
        t.attempt(Budget::Key, &source(0), false).unwrap();
    }
    let key_lock = t.attempt(Budget::Key, &source(0), true).unwrap_err();
    assert_eq!(key_lock.scope, "socket uid=0 (keys)");
    t.attempt(Budget::Key, &source(1), true).unwrap();
}

#[test]
fn the_terminal_budget_drains_one_charge_per_refill_and_a_success_refunds_its_own() {
    let p = LockoutPolicy {
        terminal_max_failures: 2,
        max_failures: 100,
        ..policy()
    };
    let mut t = Terminal::new(p);
    t.attempt(Budget::Pin, &source(0), false).unwrap();
    // A success (someone's valid PIN) is charged and refunded: the failure stays.
    t.attempt(Budget::Pin, &source(1), true).unwrap();
    t.attempt(Budget::Pin, &source(2), false).unwrap();
    let r = t.attempt(Budget::Pin, &source(3), true).unwrap_err();
    assert!(r.terminal_wide());
    assert_eq!(r.retry_after, Duration::from_secs(20 * 60));
    t.pass(20 * 60 * S - 1);
    assert!(t.attempt(Budget::Pin, &source(3), false).is_err());
    t.pass(1);
    t.attempt(Budget::Pin, &source(3), false).unwrap();
    assert!(t.attempt(Budget::Pin, &source(3), false).is_err());
}

#[test]
fn a_greedy_attacker_with_many_sources_gets_g_a_day_and_no_more() {
    let p = policy();
    let mut t = Terminal::new(p);
    let sources: Vec<String> = (0..16).map(source).collect();
    // Three days: guess whenever any source is admitted, and use the known PIN after every
    // guess from that source to reset it.
    while t.real_ms < 3 * DAY {
        let best = sources
            .iter()
            .map(|s| (t.wait_needed(Budget::Pin, s).unwrap_or_default(), s.clone()))
            .min()
            .unwrap();
        t.pass(millis(best.0));
        t.attempt(Budget::Pin, &best.1, false).unwrap();
        // Refused while the terminal budget is full, like anyone's PIN.
        let _ = t.attempt(Budget::Pin, &best.1, true);
    }
    let g = p.guess_budget(Duration::from_millis(DAY)) as usize;
    let most = t.most_in_any(DAY);
    assert!(most <= g, "{most} > G = {g}");
    assert!(most >= g - 1, "the bound is tight: {most} of {g}");
}

#[test]
fn a_reboot_keeps_the_time_left_and_the_budget() {
    let mut t = Terminal::new(LockoutPolicy {
        terminal_max_failures: 6,
        ..policy()
    });
    let a = source(0);
    for _ in 0..5 {
        t.attempt(Budget::Pin, &a, false).unwrap();
    }
    t.pass(10 * S);
    // Rebooted with the wall clock a day ahead and the monotonic clock starting over.
    t.reboot(3600 * S, 2 * S);
    t.wall_ms += DAY;
    assert_eq!(
        t.wait_needed(Budget::Pin, &a),
        Some(Duration::from_secs(30)),
        "the lockout restarts with the time it had when written, not more"
    );
    t.pass(30 * S);
    t.attempt(Budget::Pin, &source(2), false).unwrap();
    // 6 charges in the bucket, none drained across the reboot gap.
    assert!(
        t.attempt(Budget::Pin, &source(4), false)
            .unwrap_err()
            .terminal_wide()
    );
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
        p.scopes(Budget::Pin, "socket uid=7 gid=7 pid=1"),
        vec!["socket uid=7".to_owned(), TERMINAL_SCOPE.to_owned()]
    );
    assert_eq!(
        p.scopes(Budget::Key, "socket uid=7 gid=7 pid=1"),
        vec!["socket uid=7 (keys)".to_owned()]
    );
}

#[test]
fn spent_counters_can_be_dropped() {
    let p = policy();
    let mut c = Counter::default();
    assert!(c.is_spent(&p, TERMINAL_SCOPE, at(0)));
    c.charge(&p, TERMINAL_SCOPE, at(0));
    assert!(!c.is_spent(&p, TERMINAL_SCOPE, at(20 * 60 * S - 1)));
    assert!(c.is_spent(&p, TERMINAL_SCOPE, at(20 * 60 * S)));
    let mut s = Counter::default();
    s.charge(&p, "socket uid=1", at(0));
    assert!(
        !s.is_spent(&p, "socket uid=1", at(DAY)),
        "a source forgets nothing with time"
    );
}

/// What the adversary does next.
#[derive(Debug, Clone)]
enum Move {
    /// A PIN from source i, wrong or the known valid one.
    Pin {
        source: usize,
        right: bool,
    },
    /// The known valid key (or a wrong one) from source i.
    Key {
        source: usize,
        right: bool,
    },
    /// Wait until source i is admitted again (the greedy move).
    WaitFor {
        source: usize,
    },
    Wait {
        ms: u64,
    },
    /// The wall clock is stepped (NTP, an operator, the attacker).
    StepWall {
        forward: bool,
        ms: u64,
    },
    /// The daemon restarts: counters are persisted, nothing changes.
    Restart,
    Reboot {
        down_ms: u64,
        uptime_ms: u64,
    },
}

fn moves() -> impl Strategy<Value = Move> {
    prop_oneof![
        6 => (0usize..12, any::<bool>()).prop_map(|(source, right)| Move::Pin { source, right }),
        1 => (0usize..12, any::<bool>()).prop_map(|(source, right)| Move::Key { source, right }),
        6 => (0usize..12).prop_map(|source| Move::WaitFor { source }),
        2 => (0u64..4 * 3600 * S).prop_map(|ms| Move::Wait { ms }),
        1 => (any::<bool>(), 0u64..30 * DAY).prop_map(|(forward, ms)| Move::StepWall { forward, ms }),
        1 => Just(Move::Restart),
        1 => (0u64..3600 * S, 0u64..600 * S)
            .prop_map(|(down_ms, uptime_ms)| Move::Reboot { down_ms, uptime_ms }),
    ]
}

fn play(t: &mut Terminal, m: &Move) {
    match *m {
        Move::Pin { source: i, right } => {
            let _ = t.attempt(Budget::Pin, &source(i), right);
        }
        Move::Key { source: i, right } => {
            let _ = t.attempt(Budget::Key, &source(i), right);
        }
        Move::WaitFor { source: i } => {
            if let Some(wait) = t.wait_needed(Budget::Pin, &source(i)) {
                t.pass(millis(wait));
            }
        }
        Move::Wait { ms } => t.pass(ms),
        Move::StepWall { forward, ms } => {
            t.wall_ms = if forward {
                t.wall_ms + ms
            } else {
                t.wall_ms.saturating_sub(ms)
            }
        }
        Move::Restart => {}
        Move::Reboot { down_ms, uptime_ms } => t.reboot(down_ms, uptime_ms),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// G holds against any interleaving of guesses from many sources, successes with the known
    /// PIN and key, waits timed to the lockouts, wall-clock steps, restarts and reboots.
    #[test]
    fn no_schedule_tests_more_than_g_wrong_pins_in_any_24_hours(
        schedule in proptest::collection::vec(moves(), 1..1500),
        burst in 1u32..40,
        refill_min in 1u64..120,
    ) {
        let p = LockoutPolicy {
            terminal_max_failures: burst,
            terminal_refill: Duration::from_secs(refill_min * 60),
            ..policy()
        };
        let mut t = Terminal::new(p);
        for m in &schedule {
            play(&mut t, m);
        }
        let g = p.guess_budget(Duration::from_millis(DAY)) as usize;
        prop_assert!(t.most_in_any(DAY) <= g, "{} > G = {}", t.most_in_any(DAY), g);
    }

    /// A wall-clock step in either direction changes no decision; no source lockout lasts
    /// longer than `max_delay` past the moment it was set (within a boot).
    #[test]
    fn clock_steps_neither_shorten_nor_lengthen_a_lockout(
        failures in 5u32..40,
        steps in proptest::collection::vec((any::<bool>(), 0u64..365 * DAY, 0u64..1000 * S), 1..50),
    ) {
        let p = policy();
        let scope = "socket uid=1";
        let mut c = Counter::default();
        let set_at = at(100 * S);
        for _ in 0..failures {
            c.charge(&p, scope, set_at);
        }
        let delay = p.source_delay(failures).unwrap();
        prop_assert!(delay <= p.max_delay);
        let mut now = set_at;
        for (forward, wall_step, mono_step) in steps {
            now.wall_ms = if forward { now.wall_ms + wall_step } else { now.wall_ms.saturating_sub(wall_step) };
            now.mono_ms += mono_step;
            let c = c.rebased(now);
            let elapsed = Duration::from_millis(now.mono_ms - set_at.mono_ms);
            let expected = delay.checked_sub(elapsed).filter(|d| !d.is_zero());
            prop_assert_eq!(c.retry_after(&p, scope, now), expected);
            if let Some(left) = c.retry_after(&p, scope, now) {
                prop_assert!(elapsed + left <= p.max_delay);
            }
        }
    }

    #[test]
    fn delay_never_exceeds_the_cap_and_never_shrinks(failures in 1u32..200) {
        let p = policy();
        let d = p.source_delay(failures).unwrap_or_default();
        prop_assert!(d <= p.max_delay);
        prop_assert!(d >= p.source_delay(failures.saturating_sub(1)).unwrap_or_default());
    }
}
