//! The terminal's two SQLite stores, kept apart because they are lost and restored differently:
//!
//! - [`Replica`] (`replica.db`): central's data — users, roles, credentials, access — and the
//!   cursor. Replaceable as a whole file: the next snapshot rebuilds it.
//! - [`LocalStore`] (`local.db`): what only this terminal has — sync tokens, the audit outbox,
//!   the failed-attempt counters and the terminal's identity (the audit stream id). Nobody else
//!   holds a copy: this is the file to back up.
//!
//! Each store has one writer and one reader connection (WAL lets reads run beside a write), and
//! every change is one IMMEDIATE transaction that rolls back on drop, so a crash leaves the old
//! state or the new one. An unusable file is moved aside on its own: quarantining one store never
//! touches the other.

mod local;
mod replica;
mod sqlite;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use local::Identity;
pub use local::{
    AckError, AckSummary, Admitted, AttemptRecorded, LocalStore, MAX_AUDIT_BATCH, Settlement,
    TokenRow,
};
pub use replica::{
    ApplyError, ApplySummary, Counts, ReadySnapshot, Replica, ReplicaState, SnapshotFile,
    UserProfile, discard_incoming, incoming_path,
};
pub(crate) use sqlite::unix_millis;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store} database {path}: {source}")]
    Open {
        store: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "{store} database {path} has schema version {found}, newer than this build's {supported}; \
         upgrade tillgated or move the file aside"
    )]
    SchemaTooNew {
        store: &'static str,
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("could not move the damaged database {path} aside: {source}")]
    Quarantine {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored value {key} is not valid: {value:?}")]
    BadMeta { key: &'static str, value: String },
    #[error("database lock poisoned by an earlier panic")]
    Poisoned,
    #[error("{store} database already closed for shutdown: no more writes")]
    Closed { store: &'static str },
    #[error("snapshot side file {path}: {source}")]
    SideFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// SQLite could not write because the disk (or the state directory's filesystem) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sqlite(e) | StoreError::Open { source: e, .. } => {
                e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            _ => false,
        }
    }
}

/// What happened to a database file at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    Opened,
    /// The old file was unusable; it was renamed and an empty store created.
    Quarantined {
        moved_to: PathBuf,
        reason: String,
    },
}
