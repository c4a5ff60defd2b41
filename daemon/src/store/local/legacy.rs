//! Migration from the single-file releases, whose replica.db (schema 1–3) also held the sync
//! tokens, the audit outbox and the lockout counters. A new local store copies them, seqs
//! included, in the transaction that creates it; the replica's own migration drops them
//! afterwards (the local store opens first), so a crash in between leaves them in both files,
//! never in neither.
//!
//! Anything wrong with the old file (unreadable, damaged) only costs the copy: the local store is
//! created empty, loudly, and the replica's own checks decide what happens to that file.

use std::path::Path;

use rusqlite::{Connection, Transaction};

use crate::store::StoreError;

const SCHEMA: &str = "legacy";

/// What the copy brought over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Copied {
    pub tokens: u64,
    pub audit_rows: u64,
    pub counters: u64,
    /// The highest audit seq the old file had written (the new stream continues after it).
    pub last_seq: u64,
}

/// Attaches `replica` as `legacy` if it exists; false when there is nothing to read.
pub(super) fn attach(conn: &Connection, replica: &Path) -> Result<bool, StoreError> {
    if !replica.is_file() {
        return Ok(false);
    }
    let Some(path) = replica.to_str() else {
        tracing::error!(path = %replica.display(), "old replica path is not UTF-8: its tokens, audit rows and lockouts are not copied");
        return Ok(false);
    };
    if let Err(e) = conn.execute(&format!("ATTACH DATABASE ?1 AS {SCHEMA}"), [path]) {
        tracing::error!(path = %replica.display(), error = %e, "could not open the old replica: its tokens, audit rows and lockouts are not copied");
        return Ok(false);
    }
    Ok(true)
}

pub(super) fn detach(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(&format!("DETACH DATABASE {SCHEMA}"), [])?;
    Ok(())
}

/// Copies the old tables that exist into the new store, inside `tx`; None (and nothing copied)
/// when there were none or the old file could not be read.
pub(super) fn copy(tx: &mut Transaction<'_>) -> Option<Copied> {
    let savepoint = match tx.savepoint() {
        Ok(savepoint) => savepoint,
        Err(e) => {
            tracing::error!(error = %e, "could not copy from the old replica");
            return None;
        }
    };
    match copy_tables(&savepoint) {
        Ok(Some(copied)) => match savepoint.commit() {
            Ok(()) => Some(copied),
            Err(e) => {
                tracing::error!(error = %e, "could not copy from the old replica");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            // Dropping the savepoint rolls the partial copy back.
            tracing::error!(error = %e,
                "could not read the terminal's state from the old replica (damaged?): tokens, audit rows and lockouts not copied");
            None
        }
    }
}

fn copy_tables(conn: &Connection) -> Result<Option<Copied>, rusqlite::Error> {
    let has = |table: &str| -> Result<bool, rusqlite::Error> {
        conn.prepare(&format!(
            "SELECT 1 FROM {SCHEMA}.sqlite_master WHERE type = 'table' AND name = ?1"
        ))?
        .exists([table])
    };
    let (tokens, audit, lockouts) = (has("sync_tokens")?, has("audit_events")?, has("lockouts")?);
    if !(tokens || audit || lockouts) {
        return Ok(None);
    }
    let mut copied = Copied {
        tokens: 0,
        audit_rows: 0,
        counters: 0,
        last_seq: 0,
    };
    if tokens {
        copied.tokens = conn.execute(
            &format!(
                "INSERT INTO main.sync_tokens (name, digest, created_at)
                 SELECT name, digest, created_at FROM {SCHEMA}.sync_tokens"
            ),
            [],
        )? as u64;
    }
    if audit {
        copied.audit_rows = conn.execute(
            &format!(
                "INSERT INTO main.audit_events (seq, uuid, at_ms, kind, method, source, outcome,
                                                user_id, session_user_id, permission, reason)
                 SELECT seq, uuid, at_ms, kind, method, source, outcome,
                        user_id, session_user_id, permission, reason
                 FROM {SCHEMA}.audit_events ORDER BY seq"
            ),
            [],
        )? as u64;
        // A seq is never reused: continue after the last one the old file wrote, also when
        // every row had been acknowledged (and deleted) already.
        let old_last: i64 = conn.query_row(
            &format!(
                "SELECT COALESCE((SELECT seq FROM {SCHEMA}.sqlite_sequence WHERE name = 'audit_events'), 0)"
            ),
            [],
            |row| row.get(0),
        )?;
        let updated = conn.execute(
            "UPDATE main.sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = 'audit_events'",
            [old_last],
        )?;
        if updated == 0 && old_last > 0 {
            conn.execute(
                "INSERT INTO main.sqlite_sequence (name, seq) VALUES ('audit_events', ?1)",
                [old_last],
            )?;
        }
        copied.last_seq = old_last.max(0) as u64;
    }
    if lockouts {
        // The old counters kept wall-clock deadlines; the throttle runs on the boot's monotonic
        // clock. A running lockout keeps the time it has left now (boot "0" is no boot: the
        // counter is rebased to this one at start, see `lockout::Counter::rebased`), the terminal's
        // failures fill its budget, and a source keeps its count.
        let now_ms = crate::store::unix_millis(std::time::SystemTime::now());
        copied.counters = conn.execute(
            &format!(
                "INSERT INTO main.lockouts (scope, failures, level_milli, boot, updated_ms,
                                            locked_until_ms)
                 SELECT scope, failures,
                        CASE WHEN scope = 'terminal' THEN failures * 1000 ELSE 0 END,
                        '0', 0, MAX(0, locked_until_ms - ?1)
                 FROM {SCHEMA}.lockouts"
            ),
            [i64::try_from(now_ms).unwrap_or(i64::MAX)],
        )? as u64;
    }
    Ok(Some(copied))
}
