//! Audit coalescing: which attempts get a row of their own, and the arithmetic of the summary
//! row that stands for the rest. Pure; the local store keeps the durable part (hashed failures,
//! counted in the transaction that charges and records them) and the authenticator the
//! in-memory part (refusals, which are never charged).
//!
//! Per source and budget (a source's PIN scope, its key scope), the first hashed failure (a
//! wrong credential), or for the key scope a reader's bad read, opens the scope's streak and has
//! a row of its own. A credential of a
//! user who may not log in here (`denied`) always has its own row: it says whose credential was
//! found. Every later wrong credential of the streak and every refusal (locked out, malformed,
//! busy, no replica, stale) is counted in the scope's [`Pending`] summary, written as one
//! `coalesced` row every `audit.summary_interval` while anything is pending, at an unlock, at
//! shutdown, and at start for what a crash left. A success has its own row (every login is
//! audited) but ends no streak: a source that interleaves a valid credential with guesses
//! would otherwise win a row per guess. A streak ends at the interval's tick that finds it idle
//! for a whole interval (no wrong credential since the tick before), so its first failure's own
//! row comes at most once per interval. So a source writes at most a row per success and per
//! denied credential (charged like a wrong one) plus 2 rows per budget and interval however
//! hard it floods. Bad reads (never charged) after the first are counted in memory with the
//! refusals, per fault (`bad_read.crc`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
use crate::model::CredentialKind;

/// Why an attempt was refused before it was hashed or charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedFor {
    LockedOut,
    Malformed,
    Busy,
    NoReplica,
    Stale,
}

impl RefusedFor {
    /// The count's name in a summary row.
    pub fn label(self) -> &'static str {
        match self {
            RefusedFor::LockedOut => "refused.locked_out",
            RefusedFor::Malformed => "refused.malformed",
            RefusedFor::Busy => "refused.busy",
            RefusedFor::NoReplica => "refused.no_replica",
            RefusedFor::Stale => "refused.stale",
        }
    }
}

/// Whether an attempt's row is a hashed failure that may be coalesced: the kind of row a
/// guesser's streak is made of (a wrong credential). A credential of a user who may not log in
/// here (`denied`) always has its own row: it names the user whose PIN or key was found, which
/// a count would lose, and it is charged like a wrong one (PINs: at most G a day).
pub fn is_hashed_failure(record: &AuditRecord) -> bool {
    record.outcome == AuditOutcome::NoMatch
        && matches!(record.kind, AuditKind::Login | AuditKind::Authorize)
        && record.method.is_some()
}

/// The count's name of a hashed failure in a summary row ("login.no_match").
pub fn failure_label(record: &AuditRecord) -> String {
    format!("{}.{}", record.kind.as_str(), record.outcome.as_str())
}

/// What happens to a hashed failure's row: its own row when it opens its scope's streak,
/// otherwise a count in the scope's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureRow {
    Own,
    Coalesced,
}

pub fn failure_row(streak_open: bool) -> FailureRow {
    if streak_open {
        FailureRow::Coalesced
    } else {
        FailureRow::Own
    }
}

/// Attempts of one scope waiting for their summary row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub method: CredentialKind,
    pub first: SystemTime,
    pub last: SystemTime,
    /// Count per label ("login.no_match", "refused.busy").
    pub counts: BTreeMap<String, u64>,
}

impl Pending {
    pub fn new(method: CredentialKind, at: SystemTime) -> Pending {
        Pending {
            method,
            first: at,
            last: at,
            counts: BTreeMap::new(),
        }
    }

    /// Counts one more attempt.
    pub fn count(&mut self, label: &str, at: SystemTime) {
        self.add(label, 1, at);
    }

    fn add(&mut self, label: &str, n: u64, at: SystemTime) {
        if n == 0 {
            return;
        }
        *self.counts.entry(label.to_owned()).or_default() += n;
        self.first = self.first.min(at);
        self.last = self.last.max(at);
    }

    /// Folds `other` (the same scope's counts kept elsewhere) into this one.
    pub fn merge(&mut self, other: &Pending) {
        for (label, n) in &other.counts {
            *self.counts.entry(label.clone()).or_default() += n;
        }
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The summary row: counts per outcome and kind, the first and last time, the scope. Never
    /// a secret: only labels from fixed texts and numbers.
    pub fn record(&self, scope: &str) -> AuditRecord {
        let counts: Vec<String> = self
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(label, n)| format!("{label}={n}"))
            .collect();
        let total = self.total();
        let mut record = AuditRecord::new(
            AuditKind::Login,
            Some(self.method),
            scope,
            AuditOutcome::Coalesced,
        )
        .reason(format!(
            "{} without a row of their own from {} to {}: {}",
            if total == 1 {
                "1 attempt".to_owned()
            } else {
                format!("{total} attempts")
            },
            humantime::format_rfc3339_seconds(self.first),
            humantime::format_rfc3339_seconds(self.last),
            counts.join(", ")
        ));
        record.at = self.last;
        record
    }
}

/// Merges the in-memory refusals into the durable counts by scope: one summary per scope.
pub fn merge_by_scope(
    durable: Vec<(String, Pending)>,
    memory: &[(String, Pending)],
) -> Vec<(String, Pending)> {
    let mut all: BTreeMap<String, Pending> = durable.into_iter().collect();
    for (scope, pending) in memory {
        match all.get_mut(scope) {
            Some(p) => p.merge(pending),
            None => {
                all.insert(scope.clone(), pending.clone());
            }
        }
    }
    all.into_iter().filter(|(_, p)| p.total() > 0).collect()
}

/// The counts a summary row's reason carries, by label (for readers of the outbox and tests).
pub fn parse_counts(reason: &str) -> Option<BTreeMap<String, u64>> {
    let (_, tail) = reason.rsplit_once(": ")?;
    tail.split(", ")
        .map(|pair| {
            let (label, n) = pair.split_once('=')?;
            Some((label.to_owned(), n.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn failure(outcome: AuditOutcome) -> AuditRecord {
        AuditRecord::new(
            AuditKind::Login,
            Some(CredentialKind::Pin),
            "socket uid=1000 gid=1000 pid=7",
            outcome,
        )
    }

    #[test]
    fn only_hashed_failures_of_a_credential_are_coalesced_and_the_first_of_a_streak_is_not() {
        assert!(is_hashed_failure(&failure(AuditOutcome::NoMatch)));
        assert!(
            !is_hashed_failure(&failure(AuditOutcome::Denied)),
            "a denied credential names its user: never coalesced"
        );
        assert!(!is_hashed_failure(&failure(AuditOutcome::Accepted)));
        assert!(!is_hashed_failure(&failure(AuditOutcome::BadRead)));
        let mut bad_read = failure(AuditOutcome::NoMatch);
        bad_read.kind = AuditKind::BadRead;
        assert!(!is_hashed_failure(&bad_read));
        assert_eq!(failure_row(false), FailureRow::Own);
        assert_eq!(failure_row(true), FailureRow::Coalesced);
        assert_eq!(
            failure_label(&failure(AuditOutcome::NoMatch)),
            "login.no_match"
        );
    }

    #[test]
    fn a_summary_sums_durable_and_in_memory_counts_per_scope_and_says_what_it_covers() {
        let mut durable = Pending::new(CredentialKind::Pin, t(10));
        durable.count("login.no_match", t(10));
        durable.count("login.no_match", t(20));
        durable.count("authorize.denied", t(30));
        let mut memory = Pending::new(CredentialKind::Pin, t(5));
        memory.count(RefusedFor::Busy.label(), t(5));
        memory.count(RefusedFor::LockedOut.label(), t(40));
        let mut keys = Pending::new(CredentialKind::Key, t(7));
        keys.count(RefusedFor::Malformed.label(), t(7));
        let empty = Pending::new(CredentialKind::Key, t(1));
        let merged = merge_by_scope(
            vec![("socket uid=1000".into(), durable)],
            &[
                ("socket uid=1000".into(), memory),
                ("socket uid=1000 (keys)".into(), keys),
                ("device pad".into(), empty),
            ],
        );
        assert_eq!(merged.len(), 2, "an empty summary is no row: {merged:?}");
        let (scope, pin) = &merged[0];
        assert_eq!(scope, "socket uid=1000");
        assert_eq!(pin.total(), 5);
        let row = pin.record(scope);
        assert_eq!(row.outcome, AuditOutcome::Coalesced);
        assert_eq!(row.source, "socket uid=1000");
        assert_eq!(row.method, Some(CredentialKind::Pin));
        assert_eq!(row.at, t(40));
        assert_eq!(
            row.reason,
            "5 attempts without a row of their own from 2027-01-15T08:00:05Z to \
             2027-01-15T08:00:40Z: authorize.denied=1, login.no_match=2, \
             refused.busy=1, refused.locked_out=1"
        );
        let counts = parse_counts(&row.reason).unwrap();
        assert_eq!(counts.values().sum::<u64>(), 5);
        assert_eq!(counts["login.no_match"], 2);
        let keys_row = merged[1].1.record(&merged[1].0);
        assert!(
            keys_row.reason.starts_with("1 attempt without"),
            "{}",
            keys_row.reason
        );
    }
}
