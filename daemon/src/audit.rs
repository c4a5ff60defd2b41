//! The audit outbox's domain: what a row says, and the size-cap status. No I/O.
//!
//! Every credential attempt (login, unlock of a locked session, manager authorization), every
//! bad read reported by a reader and every lockout cleared by an admin is one row, written in
//! the same transaction as the lockout counters it changed. Enrolment adds a row per key capture
//! and a `credential_enrolled` row carrying the new credential's PHC string, which is how
//! central learns it. Central pulls rows after a sequence number and acknowledges them; only
//! acknowledged rows are deleted.
//!
//! Rows never hold a PIN or a key id: only the method, the source, the matched user, the outcome
//! and a reason chosen from fixed texts.
//!
//! Size cap: when more than `audit.max_rows` rows wait for central, the daemon keeps writing
//! (refusing logins would stop the till, dropping rows would lose evidence) and says so loudly:
//! an error in the log at the first row over the cap and every 1000 rows after, and
//! `audit_status` in `GetSyncState` / `tillctl audit`.

use std::fmt;
use std::time::SystemTime;

use crate::model::CredentialKind;

/// Log an over-cap error once per this many rows.
pub const OVER_CAP_LOG_EVERY: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    Login,
    Authorize,
    BadRead,
    LockoutCleared,
    /// An enrolment key capture ended (captured, timed out, cancelled, damaged read, removal,
    /// reader gone).
    KeyCapture,
    /// A new credential's PHC string for central to assign (or a refused PIN change).
    CredentialEnrolled,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Login => "login",
            AuditKind::Authorize => "authorize",
            AuditKind::BadRead => "bad_read",
            AuditKind::LockoutCleared => "lockout_cleared",
            AuditKind::KeyCapture => "key_capture",
            AuditKind::CredentialEnrolled => "credential_enrolled",
        }
    }

    pub fn parse(text: &str) -> Option<AuditKind> {
        [
            AuditKind::Login,
            AuditKind::Authorize,
            AuditKind::BadRead,
            AuditKind::LockoutCleared,
            AuditKind::KeyCapture,
            AuditKind::CredentialEnrolled,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    /// A login that started a session.
    Accepted,
    /// A login by the locked session's user: the session resumed.
    Resumed,
    /// Manager override: the authorizer holds the permission.
    Granted,
    /// Manager override: the credential resolved, but that user lacks the permission.
    NotGranted,
    NoMatch,
    /// Only inactive or unassigned users hold the credential.
    Denied,
    LockedOut,
    ReplicaStale,
    NoReplica,
    InvalidInput,
    BadRead,
    Cleared,
    /// Enrolment: a key was captured.
    Captured,
    /// Enrolment: no key within the capture's timeout.
    TimedOut,
    /// Enrolment: the caller went away before a key was presented.
    Cancelled,
    /// Enrolment: the key was pulled (removal token) before a key was read.
    Removed,
    /// Enrolment: the reader was unplugged during the capture.
    ReaderGone,
    /// Enrolment: a PHC string was produced for central.
    Enrolled,
    /// Enrolment: a new PIN refused because a user of the account already has it.
    PinInUse,
    /// One row for many attempts refused without a row each (locked out, malformed, too busy),
    /// with the count in the reason. Written by releases before coalescing; still read.
    Refused,
    /// One row for the attempts of one source and budget without a row of their own: hashed
    /// failures after the first of a streak, and refusals (see `coalesce.rs`); the counts per
    /// outcome and kind, and the first and last time, in the reason.
    Coalesced,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Accepted => "accepted",
            AuditOutcome::Resumed => "resumed",
            AuditOutcome::Granted => "granted",
            AuditOutcome::NotGranted => "not_granted",
            AuditOutcome::NoMatch => "no_match",
            AuditOutcome::Denied => "denied",
            AuditOutcome::LockedOut => "locked_out",
            AuditOutcome::ReplicaStale => "replica_stale",
            AuditOutcome::NoReplica => "no_replica",
            AuditOutcome::InvalidInput => "invalid_input",
            AuditOutcome::BadRead => "bad_read",
            AuditOutcome::Cleared => "cleared",
            AuditOutcome::Captured => "captured",
            AuditOutcome::TimedOut => "timed_out",
            AuditOutcome::Cancelled => "cancelled",
            AuditOutcome::Removed => "removed",
            AuditOutcome::ReaderGone => "reader_gone",
            AuditOutcome::Enrolled => "enrolled",
            AuditOutcome::PinInUse => "pin_in_use",
            AuditOutcome::Refused => "refused",
            AuditOutcome::Coalesced => "coalesced",
        }
    }

    pub fn parse(text: &str) -> Option<AuditOutcome> {
        use AuditOutcome::*;
        [
            Accepted,
            Resumed,
            Granted,
            NotGranted,
            NoMatch,
            Denied,
            LockedOut,
            ReplicaStale,
            NoReplica,
            InvalidInput,
            BadRead,
            Cleared,
            Captured,
            TimedOut,
            Cancelled,
            Removed,
            ReaderGone,
            Enrolled,
            PinInUse,
            Refused,
            Coalesced,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// Why a reader could not read a key. Deliberately not free text: a row must never carry the
/// bytes that were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFault {
    /// The key's checksum (e.g. the iButton ROM CRC-8) did not match.
    Crc,
    /// The reader's frame was malformed or incomplete.
    Framing,
    /// Another fault, named by the reader (a fixed text).
    Other(&'static str),
}

impl ReadFault {
    /// The count's name in a summary row (fixed texts: a reader's own text is never a label).
    pub fn label(self) -> &'static str {
        match self {
            ReadFault::Crc => "bad_read.crc",
            ReadFault::Framing => "bad_read.framing",
            ReadFault::Other(_) => "bad_read.other",
        }
    }
}

impl fmt::Display for ReadFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadFault::Crc => f.write_str("CRC mismatch"),
            ReadFault::Framing => f.write_str("malformed frame"),
            ReadFault::Other(what) => f.write_str(what),
        }
    }
}

/// One row as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: SystemTime,
    pub kind: AuditKind,
    pub method: Option<CredentialKind>,
    pub source: String,
    pub outcome: AuditOutcome,
    pub user_id: Option<String>,
    pub session_user_id: Option<String>,
    pub permission: Option<String>,
    pub reason: String,
    /// `credential_enrolled`: the new credential's PHC string (a hash, never the secret).
    pub phc: Option<String>,
    /// Enrolment rows: who authorised it ("manager <user id>", "admin uid=…", "own PIN",
    /// "session").
    pub authorizer: Option<String>,
}

impl AuditRecord {
    pub fn new(
        kind: AuditKind,
        method: Option<CredentialKind>,
        source: &str,
        outcome: AuditOutcome,
    ) -> AuditRecord {
        AuditRecord {
            at: SystemTime::now(),
            kind,
            method,
            source: source.to_owned(),
            outcome,
            user_id: None,
            session_user_id: None,
            permission: None,
            reason: String::new(),
            phc: None,
            authorizer: None,
        }
    }

    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }
}

/// A row as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: u64,
    pub uuid: String,
    pub record: AuditRecord,
}

/// Outbox size after a write, for the cap status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditStats {
    /// Rows not yet acknowledged.
    pub backlog: u64,
    /// The highest seq written so far (0: none).
    pub last_seq: u64,
}

/// "ok", or a warning naming the backlog and the cap.
pub fn status(backlog: u64, max_rows: u64) -> String {
    if backlog > max_rows {
        format!(
            "over cap: {backlog} audit rows wait for central, more than audit.max_rows = {max_rows}; \
             rows are kept (nothing is dropped) until central acknowledges them"
        )
    } else {
        "ok".to_owned()
    }
}

/// Whether a write that left `backlog` rows should log the over-cap error: at the first row over
/// the cap and every [`OVER_CAP_LOG_EVERY`] rows after, so the log stays loud but bounded.
pub fn should_log_over_cap(backlog: u64, max_rows: u64) -> bool {
    backlog > max_rows && (backlog - max_rows - 1).is_multiple_of(OVER_CAP_LOG_EVERY)
}

/// Logs the over-cap error if this write calls for one.
pub fn warn_if_over_cap(stats: AuditStats, max_rows: u64) {
    if should_log_over_cap(stats.backlog, max_rows) {
        tracing::error!(
            backlog = stats.backlog,
            max_rows,
            "audit outbox over its cap: central has not acknowledged audit rows; they are kept, nothing is dropped"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn status_is_ok_up_to_the_cap_and_loud_beyond() {
        assert_eq!(status(0, 10), "ok");
        assert_eq!(status(10, 10), "ok");
        let over = status(11, 10);
        assert!(over.starts_with("over cap: 11 audit rows"), "{over}");
        assert!(over.contains("nothing is dropped"));
    }

    #[test]
    fn over_cap_error_is_logged_at_the_crossing_and_every_thousand_rows() {
        let logged: Vec<u64> = (0..2500).filter(|b| should_log_over_cap(*b, 100)).collect();
        assert_eq!(logged, vec![101, 1101, 2101]);
    }

    #[test]
    fn kinds_and_outcomes_round_trip() {
        for kind in [
            AuditKind::Login,
            AuditKind::Authorize,
            AuditKind::BadRead,
            AuditKind::LockoutCleared,
            AuditKind::KeyCapture,
            AuditKind::CredentialEnrolled,
        ] {
            assert_eq!(AuditKind::parse(kind.as_str()), Some(kind));
        }
        for text in [
            "accepted",
            "no_match",
            "locked_out",
            "not_granted",
            "cleared",
            "captured",
            "timed_out",
            "reader_gone",
            "enrolled",
            "pin_in_use",
            "refused",
            "coalesced",
        ] {
            assert_eq!(AuditOutcome::parse(text).unwrap().as_str(), text);
        }
        assert_eq!(AuditOutcome::parse("nope"), None);
    }

    #[test]
    fn read_faults_are_fixed_texts() {
        assert_eq!(ReadFault::Crc.to_string(), "CRC mismatch");
        assert_eq!(
            ReadFault::Other("reader timeout").to_string(),
            "reader timeout"
        );
    }
}
