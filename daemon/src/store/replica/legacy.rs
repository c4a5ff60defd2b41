//! The single-file releases (replica schema 1–3) kept the terminal's own state — sync tokens,
//! the audit outbox, lockout counters — in replica.db. Migration 4 drops those tables; the local
//! store copies them first when it is created beside such a file (`store::local::legacy`). When
//! it did not (the copy failed, or a local store already existed, e.g. an old replica.db
//! restored from a backup), the whole file is copied aside before the drop, so the only copy of
//! tokens and audit rows central has not pulled is never destroyed.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::Connection;

use crate::store::StoreError;

/// The tables of the terminal's own state that schema 1–3 held.
const TERMINAL_STATE_TABLES: [&str; 3] = ["sync_tokens", "audit_events", "lockouts"];

/// The first schema version without those tables.
const DROPPED_AT_VERSION: i64 = 4;

/// Copies the file to `<path>.release-0.1-<stamp>` (a consistent copy, `VACUUM INTO`, synced
/// with its directory) when it is about to lose terminal state that exists nowhere else; returns
/// where it went. An error stops the open: nothing is dropped unless it was copied somewhere.
pub(super) fn set_aside_uncopied_terminal_state(
    conn: &Connection,
    path: &Path,
) -> Result<Option<PathBuf>, StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if !(1..DROPPED_AT_VERSION).contains(&version) {
        return Ok(None);
    }
    let rows = terminal_state_rows(conn)?;
    if rows == 0 {
        return Ok(None);
    }
    let stamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let aside = PathBuf::from(format!("{}.release-0.1-{stamp}", path.display()));
    let side_file = |source| StoreError::SideFile {
        path: aside.clone(),
        source,
    };
    let Some(target) = aside.to_str() else {
        return Err(side_file(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "path is not UTF-8",
        )));
    };
    conn.execute("VACUUM INTO ?1", [target])?;
    std::fs::File::open(&aside)
        .and_then(|f| f.sync_all())
        .map_err(side_file)?;
    if let Some(dir) = aside.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(side_file)?;
    }
    tracing::error!(path = %path.display(), kept_in = %aside.display(), rows,
        "the replica holds sync tokens, audit rows or lockouts of the single-file release that the local store did \
         not copy (see the local store's log line): the whole file was copied aside before the migration drops them; \
         recover tokens and unpulled audit rows from that copy");
    Ok(Some(aside))
}

/// Rows in the terminal-state tables of a schema 1–3 file (0 for tables it lacks).
fn terminal_state_rows(conn: &Connection) -> Result<u64, rusqlite::Error> {
    let mut rows = 0u64;
    for table in TERMINAL_STATE_TABLES {
        let exists = conn
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([table])?;
        if exists {
            let count: i64 =
                conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                    row.get(0)
                })?;
            rows += u64::try_from(count).unwrap_or(0);
        }
    }
    Ok(rows)
}
