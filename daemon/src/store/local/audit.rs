//! The audit outbox table: append in the caller's transaction, read the tail or after a seq,
//! delete acknowledged rows.

use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::{LocalStore, StoreError};
use crate::audit::{AuditKind, AuditOutcome, AuditRecord, AuditRow, AuditStats};
use crate::model::CredentialKind;
use crate::store::sqlite::unix_millis;

/// Most rows one read returns.
pub const MAX_AUDIT_BATCH: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error(
        "cannot acknowledge audit seq {seq} of stream {presented}: the current audit stream is {current} \
         (the terminal's local state was reset); pull again from seq 0"
    )]
    StreamChanged {
        seq: u64,
        presented: String,
        current: String,
    },
    #[error(
        "cannot acknowledge audit seq {seq}: the last audit row written is {last_seq}; pull before acknowledging"
    )]
    BeyondLast { seq: u64, last_seq: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for AckError {
    fn from(e: rusqlite::Error) -> Self {
        AckError::Store(StoreError::Sqlite(e))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckSummary {
    pub deleted: u64,
    pub stats: AuditStats,
}

/// Appends one row inside the caller's transaction.
pub(crate) fn insert_audit(conn: &Connection, record: &AuditRecord) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO audit_events (uuid, at_ms, kind, method, source, outcome, user_id,
                                   session_user_id, permission, reason, phc, authorizer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute((
        uuid::Uuid::new_v4().to_string(),
        unix_millis(record.at),
        record.kind.as_str(),
        record.method.map(CredentialKind::as_db),
        &record.source,
        record.outcome.as_str(),
        &record.user_id,
        &record.session_user_id,
        &record.permission,
        &record.reason,
        &record.phc,
        &record.authorizer,
    ))?;
    Ok(())
}

/// Backlog and last seq. Rows are only ever deleted as a prefix (acknowledged seqs), so the rows
/// left are contiguous and the backlog is `max - min + 1` (an index lookup, not a count).
pub(crate) fn audit_stats(conn: &Connection) -> Result<AuditStats, rusqlite::Error> {
    let (min, max): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT MIN(seq), MAX(seq) FROM audit_events")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let last_seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'audit_events'")?
        .query_row([], |row| row.get(0))
        .optional()?;
    let backlog = match (min, max) {
        (Some(min), Some(max)) => (max - min + 1) as u64,
        _ => 0,
    };
    Ok(AuditStats {
        backlog,
        last_seq: last_seq.unwrap_or(0).max(0) as u64,
    })
}

fn read_rows(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, Option<i64>>(4)?,
            row.get::<_, String>(5)?,
            row.get::<_, String>(6)?,
            row.get::<_, Option<String>>(7)?,
            row.get::<_, Option<String>>(8)?,
            row.get::<_, Option<String>>(9)?,
            row.get::<_, String>(10)?,
            row.get::<_, Option<String>>(11)?,
            row.get::<_, Option<String>>(12)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            seq,
            uuid,
            at_ms,
            kind,
            method,
            source,
            outcome,
            user_id,
            session_user_id,
            permission,
            reason,
            phc,
            authorizer,
        ) = row?;
        let bad = |key: &'static str, value: String| StoreError::BadMeta { key, value };
        out.push(AuditRow {
            seq: seq as u64,
            uuid,
            record: AuditRecord {
                at: UNIX_EPOCH + Duration::from_millis(at_ms.max(0) as u64),
                kind: AuditKind::parse(&kind)
                    .ok_or_else(|| bad("audit_events.kind", kind.clone()))?,
                method: match method {
                    None => None,
                    Some(1) => Some(CredentialKind::Pin),
                    Some(2) => Some(CredentialKind::Key),
                    Some(other) => return Err(bad("audit_events.method", other.to_string())),
                },
                source,
                outcome: AuditOutcome::parse(&outcome)
                    .ok_or_else(|| bad("audit_events.outcome", outcome.clone()))?,
                user_id,
                session_user_id,
                permission,
                reason,
                phc,
                authorizer,
            },
        });
    }
    Ok(out)
}

const COLUMNS: &str = "seq, uuid, at_ms, kind, method, source, outcome, user_id, session_user_id, permission, reason, \
     phc, authorizer";

impl LocalStore {
    /// Appends one row on its own (tests; the daemon writes rows with their counter change).
    #[cfg(test)]
    pub(crate) fn append_audit(&self, record: &AuditRecord) -> Result<AuditStats, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_audit(&tx, record)?;
        let stats = audit_stats(&tx)?;
        tx.commit()?;
        Ok(stats)
    }

    /// Appends rows that belong to no attempt (the summaries of refused attempts), in one
    /// transaction.
    pub fn append_audit_rows(&self, records: &[AuditRecord]) -> Result<AuditStats, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for record in records {
            insert_audit(&tx, record)?;
        }
        let stats = audit_stats(&tx)?;
        tx.commit()?;
        Ok(stats)
    }

    pub fn audit_stats(&self) -> Result<AuditStats, StoreError> {
        Ok(audit_stats(&*self.reader()?)?)
    }

    /// Rows with seq > `after_seq`, oldest first, at most `limit` (capped at [`MAX_AUDIT_BATCH`]).
    pub fn audit_after(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let conn = self.reader()?;
        read_rows(
            &conn,
            &format!("SELECT {COLUMNS} FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2"),
            (
                after_seq.min(i64::MAX as u64) as i64,
                limit.min(MAX_AUDIT_BATCH),
            ),
        )
    }

    /// The newest `limit` rows, oldest first.
    pub fn audit_tail(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let conn = self.reader()?;
        let mut rows = read_rows(
            &conn,
            &format!("SELECT {COLUMNS} FROM audit_events ORDER BY seq DESC LIMIT ?1"),
            [limit.min(MAX_AUDIT_BATCH)],
        )?;
        rows.reverse();
        Ok(rows)
    }

    /// Deletes every row with seq <= `seq` (central has stored them). Acknowledging again is a
    /// no-op; acknowledging beyond the last row written, or a seq of another stream than this
    /// store's (when `stream_id` is given), is refused, as it would mean central's bookkeeping
    /// is off.
    pub fn audit_ack(&self, stream_id: Option<&str>, seq: u64) -> Result<AckSummary, AckError> {
        if let Some(presented) = stream_id
            && presented != self.identity.stream_id
        {
            return Err(AckError::StreamChanged {
                seq,
                presented: presented.to_owned(),
                current: self.identity.stream_id.clone(),
            });
        }
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let before = audit_stats(&tx)?;
        if seq > before.last_seq {
            return Err(AckError::BeyondLast {
                seq,
                last_seq: before.last_seq,
            });
        }
        let deleted = tx
            .prepare_cached("DELETE FROM audit_events WHERE seq <= ?1")?
            .execute([seq.min(i64::MAX as u64) as i64])?;
        let stats = audit_stats(&tx)?;
        tx.commit()?;
        Ok(AckSummary {
            deleted: deleted as u64,
            stats,
        })
    }
}
