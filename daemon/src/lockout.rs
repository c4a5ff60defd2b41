//! Guess throttling: pure policy over stored counters and a clock, no I/O. The store keeps one
//! [`Counter`] per scope and runs these functions inside the transaction that also writes the
//! audit row.
//!
//! # The adversary and the guess budget G
//!
//! The adversary controls every input source of one terminal (any socket uid, every reader),
//! knows one valid PIN and holds one valid key, and may interleave successes, daemon restarts,
//! reboots and wall-clock steps. They do not hold an admin uid (`tillctl unlock`).
//!
//! PIN attempts are **charged before they are answered** (the commit runs beside the hash; a
//! refused charge discards the hash unread), in one transaction with the lockout check: one failure to the source's counter and one to the terminal's budget. A success
//! refunds its own terminal charge and resets its source's counter; anything else (a wrong
//! PIN, a PIN of an inactive or unassigned user, a crash half-way) keeps the charge.
//!
//! - The **terminal budget** is a leaky bucket: it holds at most `terminal_max_failures`
//!   charges and one charge drains every `terminal_refill`. An attempt is admitted only if the
//!   bucket has room. Successes, keys and time never reset it; only `tillctl unlock` does.
//!   Over any interval of length T, admitted charges ≤ room at the start + drained + refunds,
//!   and refunds ≤ successes, so the wrong PINs tested in T are at most
//!   `G(T) = terminal_max_failures + ⌊T / terminal_refill⌋`
//!   (defaults 20 + ⌊24 h / 20 min⌋ = 92 per 24 h) — whatever the number of sources. Per-source
//!   counters alone would not bound this: an attacker with many sources multiplies them.
//! - **Per-source delays** escalate in the spirit of Android's Gatekeeper: after
//!   `max_failures` failures since the last success from that source, every further failure
//!   locks it for `delay · 2^(failures − max_failures)`, at most `max_delay`. Only a success from
//!   the same source (or `tillctl unlock`) resets it — not time, not another source's success.
//!   They slow down a guesser at one source long before the terminal budget runs out.
//! - **Keys** have a budget of their own: a wrong key counts against the source's key counter
//!   (same schedule), a valid key resets only that, and never touches a PIN counter. Key ids
//!   are not guessable like PINs, so there is no terminal-wide key budget: a flood of unknown
//!   keys from the POS socket cannot lock out the cashiers' key readers.
//!
//! # Time
//!
//! Delays and draining run on the monotonic clock of the current boot ([`Now::mono_ms`],
//! `CLOCK_BOOTTIME`), never the wall clock: a clock step in either direction neither shortens
//! nor lengthens a lockout. A counter written during another boot is rebased: its lockout
//! restarts with the time that was left when it was last written (at most `max_delay`) and
//! the terminal budget does not drain for the time in between — a reboot gains an attacker
//! nothing, and no lockout lasts longer than `max_delay` of the terminal's running time past
//! the moment it was set.

use std::time::Duration;

pub mod cache;

/// The scope of the terminal-wide PIN budget.
pub const TERMINAL_SCOPE: &str = "terminal";

/// Suffix of a source's key scope ("socket uid=1000 (keys)").
const KEY_SCOPE_SUFFIX: &str = " (keys)";

/// Fixed-point unit of the terminal bucket: one charge.
const CHARGE: u64 = 1000;

/// Which counters an attempt draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Pin,
    Key,
}

/// A moment as the throttle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// This boot's identity: monotonic times of another boot are not comparable.
    pub boot: u128,
    /// Milliseconds on this boot's monotonic clock (never steps).
    pub mono_ms: u64,
    /// Wall-clock Unix milliseconds: for display only, never for a decision.
    pub wall_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures from one source (since its last success) that pass without a delay.
    pub max_failures: u32,
    /// The delay after the first failure beyond `max_failures`; it doubles with each further one.
    pub delay: Duration,
    pub max_delay: Duration,
    /// The terminal budget: wrong PINs it takes at once, all sources together.
    pub terminal_max_failures: u32,
    /// One charge of the terminal budget drains every this long.
    pub terminal_refill: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            max_failures: 5,
            delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(15 * 60),
            terminal_max_failures: 20,
            terminal_refill: Duration::from_secs(20 * 60),
        }
    }
}

impl LockoutPolicy {
    /// G: the most wrong PINs an adversary can test at this terminal within `period`.
    pub fn guess_budget(&self, period: Duration) -> u64 {
        let refill = millis(self.terminal_refill).max(1);
        u64::from(self.terminal_max_failures) + millis(period) / refill
    }

    /// The scopes an attempt from `source` is charged to: its source scope, plus the
    /// terminal's for a PIN.
    pub fn scopes(&self, budget: Budget, source: &str) -> Vec<String> {
        match budget {
            Budget::Pin => vec![scope_of(source), TERMINAL_SCOPE.to_owned()],
            Budget::Key => vec![key_scope_of(source)],
        }
    }

    /// How long a source stays locked after its `failures`-th failure, if at all.
    pub fn source_delay(&self, failures: u32) -> Option<Duration> {
        let beyond = failures.checked_sub(self.max_failures.max(1))?;
        let doubled = self
            .delay
            .checked_mul(1u32 << beyond.min(31))
            .unwrap_or(self.max_delay);
        Some(doubled.min(self.max_delay))
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

/// The budget an attempt with a credential of `kind` draws on.
pub fn budget_of(kind: crate::model::CredentialKind) -> Budget {
    match kind {
        crate::model::CredentialKind::Pin => Budget::Pin,
        crate::model::CredentialKind::Key => Budget::Key,
    }
}

/// The scope of a source's own counter for `budget` (its PIN scope or its key scope): the
/// first of [`LockoutPolicy::scopes`].
pub fn source_scope(budget: Budget, source: &str) -> String {
    match budget {
        Budget::Pin => scope_of(source),
        Budget::Key => key_scope_of(source),
    }
}

/// The key-budget scope of an input source.
pub fn key_scope_of(source: &str) -> String {
    format!("{}{KEY_SCOPE_SUFFIX}", scope_of(source))
}

/// One scope's state, as stored. Times are on the monotonic clock of `boot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    /// Failures charged since the last reset (for a source: its last success).
    pub failures: u32,
    /// Terminal scope: the charges in the bucket, in thousandths.
    pub level_milli: u64,
    pub boot: u128,
    /// When the counter last changed.
    pub updated_ms: u64,
    /// 0 when not locked.
    pub locked_until_ms: u64,
}

/// Why an attempt was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub scope: String,
    pub retry_after: Duration,
}

impl Refusal {
    pub fn terminal_wide(&self) -> bool {
        self.scope == TERMINAL_SCOPE
    }
}

impl Counter {
    /// The counter on this boot's clock: a counter from another boot keeps the lockout time
    /// it had left when last written, and the terminal bucket keeps its level.
    pub fn rebased(mut self, now: Now) -> Counter {
        if self.boot != now.boot {
            let left = self.locked_until_ms.saturating_sub(self.updated_ms);
            self.locked_until_ms = if left > 0 { now.mono_ms + left } else { 0 };
            self.updated_ms = now.mono_ms;
            self.boot = now.boot;
        }
        self
    }

    /// The bucket level now, after draining since the last change (terminal scope).
    fn drained_level(&self, policy: &LockoutPolicy, now: Now) -> u64 {
        let elapsed = now.mono_ms.saturating_sub(self.updated_ms);
        let refill = millis(policy.terminal_refill).max(1);
        let drained = u64::try_from(u128::from(elapsed) * u128::from(CHARGE) / u128::from(refill))
            .unwrap_or(u64::MAX);
        self.level_milli.saturating_sub(drained)
    }

    /// How long attempts charged to this scope are refused, if they are. The counter must be
    /// rebased to `now`'s boot.
    pub fn retry_after(&self, policy: &LockoutPolicy, scope: &str, now: Now) -> Option<Duration> {
        let locked = (self.locked_until_ms > now.mono_ms)
            .then(|| Duration::from_millis(self.locked_until_ms - now.mono_ms));
        if scope != TERMINAL_SCOPE {
            return locked;
        }
        // The terminal is locked while its budget is full (and, for a lockout carried over
        // from the window counters of release 0.1, until that lockout's end).
        let full = u64::from(policy.terminal_max_failures) * CHARGE;
        let level = self.drained_level(policy, now);
        if level + CHARGE <= full {
            return locked;
        }
        // Until the level has drained to one charge below full.
        let excess = level + CHARGE - full;
        let refill = millis(policy.terminal_refill).max(1);
        let wait = u128::from(excess) * u128::from(refill) / u128::from(CHARGE);
        let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(u64::MAX).max(1));
        Some(locked.map_or(wait, |l| l.max(wait)))
    }

    /// Charges one attempt (counted as a failure until [`Counter::refund`]). The caller has
    /// checked [`Counter::retry_after`] first.
    pub fn charge(&mut self, policy: &LockoutPolicy, scope: &str, now: Now) {
        self.failures = self.failures.saturating_add(1);
        if scope == TERMINAL_SCOPE {
            self.level_milli = self.drained_level(policy, now).saturating_add(CHARGE);
        } else if let Some(delay) = policy.source_delay(self.failures) {
            self.locked_until_ms = now.mono_ms.saturating_add(millis(delay));
        }
        self.updated_ms = now.mono_ms;
        self.boot = now.boot;
    }

    /// Undoes the charge of an attempt that succeeded: the terminal gets its charge back, a
    /// source is reset (failures and lockout).
    pub fn refund(&mut self, policy: &LockoutPolicy, scope: &str, now: Now) {
        if scope == TERMINAL_SCOPE {
            self.failures = self.failures.saturating_sub(1);
            self.level_milli = self.drained_level(policy, now).saturating_sub(CHARGE);
            self.updated_ms = now.mono_ms;
            self.boot = now.boot;
        } else {
            *self = Counter::default();
        }
    }

    /// True when the counter holds nothing worth keeping.
    pub fn is_spent(&self, policy: &LockoutPolicy, scope: &str, now: Now) -> bool {
        if scope == TERMINAL_SCOPE {
            self.drained_level(policy, now) == 0 && self.retry_after(policy, scope, now).is_none()
        } else {
            self.failures == 0 && self.retry_after(policy, scope, now).is_none()
        }
    }

    /// Delay set by this scope's latest charge (for the log line of a new lockout).
    pub fn lockout_started(&self, policy: &LockoutPolicy, scope: &str) -> Option<Duration> {
        if scope == TERMINAL_SCOPE {
            None
        } else {
            policy.source_delay(self.failures)
        }
    }
}

/// Admits one attempt against its scopes' counters, all rebased to `now` and changed in
/// place: refused by the longest running lockout among them (nothing charged), or charged to
/// every scope.
pub fn admit(
    policy: &LockoutPolicy,
    counters: &mut [(String, Counter)],
    now: Now,
) -> Result<(), Refusal> {
    for (_, counter) in counters.iter_mut() {
        *counter = counter.rebased(now);
    }
    let refusal = counters
        .iter()
        .filter_map(|(scope, c)| {
            c.retry_after(policy, scope, now)
                .map(|retry_after| Refusal {
                    scope: scope.clone(),
                    retry_after,
                })
        })
        .max_by_key(|r| r.retry_after);
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    for (scope, counter) in counters.iter_mut() {
        counter.charge(policy, scope, now);
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
