//! The durable half of audit coalescing (see `coalesce.rs`): failure streaks and their
//! coalesced counts, changed inside the transaction that records an attempt, so a crash loses
//! no hashed failure; and the summary rows that carry them (with the in-memory refusal counts
//! folded in), written in the transaction that empties them.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{Connection, TransactionBehavior};

use super::audit::{audit_stats, insert_audit};
use super::{LocalStore, StoreError};
use crate::audit::{AuditRecord, AuditStats};
use crate::coalesce::{FailureRow, Pending, failure_label, failure_row, merge_by_scope};
use crate::model::CredentialKind;
use crate::store::sqlite::unix_millis;

/// Records a hashed failure of `scope`'s streak: its own row when it opens the streak,
/// otherwise one more count in the scope's pending summary.
pub(super) fn record_failure(
    conn: &Connection,
    scope: &str,
    method: CredentialKind,
    record: &AuditRecord,
) -> Result<FailureRow, rusqlite::Error> {
    let open = conn
        .prepare_cached("SELECT 1 FROM failure_streaks WHERE scope = ?1")?
        .exists([scope])?;
    let row = failure_row(open);
    match row {
        FailureRow::Own => {
            conn.prepare_cached(
                "INSERT INTO failure_streaks (scope, method, first_ms, last_ms)
                 VALUES (?1, ?2, NULL, NULL)",
            )?
            .execute((scope, method.as_db()))?;
            insert_audit(conn, record)?;
        }
        FailureRow::Coalesced => {
            let at = unix_millis(record.at);
            conn.prepare_cached(
                "INSERT INTO coalesced_failures (scope, label, count) VALUES (?1, ?2, 1)
                 ON CONFLICT(scope, label) DO UPDATE SET count = count + 1",
            )?
            .execute((scope, failure_label(record)))?;
            conn.prepare_cached(
                "UPDATE failure_streaks SET first_ms = MIN(COALESCE(first_ms, ?2), ?2),
                     last_ms = MAX(COALESCE(last_ms, ?2), ?2), idle = 0
                 WHERE scope = ?1",
            )?
            .execute((scope, at))?;
        }
    }
    Ok(row)
}

/// The coalesced failures waiting for their summary row, of `scope` (all when None).
fn pending(conn: &Connection, scope: Option<&str>) -> Result<Vec<(String, Pending)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.scope, s.method, s.first_ms, s.last_ms, c.label, c.count
         FROM failure_streaks s JOIN coalesced_failures c ON c.scope = s.scope
         WHERE ?1 IS NULL OR s.scope = ?1
         ORDER BY s.scope, c.label",
    )?;
    let rows = stmt.query_map([scope], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, Option<i64>>(2)?,
            row.get::<_, Option<i64>>(3)?,
            row.get::<_, String>(4)?,
            row.get::<_, i64>(5)?,
        ))
    })?;
    let time = |ms: Option<i64>| UNIX_EPOCH + Duration::from_millis(ms.unwrap_or(0).max(0) as u64);
    let mut out: BTreeMap<String, Pending> = BTreeMap::new();
    for row in rows {
        let (scope, method, first_ms, last_ms, label, count) = row?;
        let method = match method {
            1 => CredentialKind::Pin,
            2 => CredentialKind::Key,
            other => {
                return Err(StoreError::BadMeta {
                    key: "failure_streaks.method",
                    value: other.to_string(),
                });
            }
        };
        let pending = out.entry(scope).or_insert_with(|| Pending {
            method,
            first: time(first_ms),
            last: time(last_ms.or(first_ms)),
            counts: BTreeMap::new(),
        });
        *pending.counts.entry(label).or_default() += count.max(0) as u64;
    }
    Ok(out.into_iter().collect())
}

/// Writes the summary rows of `scope` (all when None): its coalesced failures with `memory`
/// (the refusal counts of the same scopes) folded in, and empties the counts. The streaks stay
/// open. Returns the rows written.
pub(super) fn write_summaries(
    conn: &Connection,
    scope: Option<&str>,
    memory: &[(String, Pending)],
) -> Result<usize, StoreError> {
    let summaries = merge_by_scope(pending(conn, scope)?, memory);
    for (scope, summary) in &summaries {
        insert_audit(conn, &summary.record(scope))?;
    }
    conn.prepare_cached("DELETE FROM coalesced_failures WHERE ?1 IS NULL OR scope = ?1")?
        .execute([scope])?;
    conn.prepare_cached(
        "UPDATE failure_streaks SET first_ms = NULL, last_ms = NULL
         WHERE ?1 IS NULL OR scope = ?1",
    )?
    .execute([scope])?;
    Ok(summaries.len())
}

impl LocalStore {
    /// Writes every pending summary row (each `audit.summary_interval`, at shutdown, and at
    /// start for what a crash left), with `memory` folded in, in one transaction.
    pub fn flush_summaries(
        &self,
        memory: &[(String, Pending)],
    ) -> Result<(usize, AuditStats), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let written = write_summaries(&tx, None, memory)?;
        let stats = audit_stats(&tx)?;
        tx.commit()?;
        Ok((written, stats))
    }

    /// A row that may open `scope`'s streak but is never counted on disk (a bad read: not
    /// charged, so counted in memory like a refusal). When the streak is not open, opens it and
    /// writes `record`, in one transaction: the first failure of the scope since its streak
    /// ended, wrong credential or bad read, has the one row of its own. When it is open,
    /// writes nothing and answers [`FailureRow::Coalesced`]: the caller counts it.
    pub fn open_streak_with(
        &self,
        scope: &str,
        method: CredentialKind,
        record: &AuditRecord,
    ) -> Result<(FailureRow, AuditStats), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let open = tx
            .prepare_cached("SELECT 1 FROM failure_streaks WHERE scope = ?1")?
            .exists([scope])?;
        let row = failure_row(open);
        if row == FailureRow::Own {
            tx.prepare_cached(
                "INSERT INTO failure_streaks (scope, method, first_ms, last_ms)
                 VALUES (?1, ?2, NULL, NULL)",
            )?
            .execute((scope, method.as_db()))?;
            insert_audit(&tx, record)?;
        }
        let stats = audit_stats(&tx)?;
        tx.commit()?;
        Ok((row, stats))
    }

    /// The `audit.summary_interval` tick: writes every pending summary row like
    /// [`LocalStore::flush_summaries`] and, in the same transaction, ends the streaks that had
    /// no wrong credential since the previous tick (their counts are in the rows just written).
    /// So a scope's streak, and with it the row of its own its first wrong credential has,
    /// is granted at most once per interval, and the table holds only the scopes that failed
    /// in the last interval or two: a device that re-enumerates under new names, or a uid per
    /// process, cannot grow it without bound. Returns (rows written, streaks ended, stats).
    pub fn summary_tick(
        &self,
        memory: &[(String, Pending)],
    ) -> Result<(usize, usize, AuditStats), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let written = write_summaries(&tx, None, memory)?;
        let ended = tx
            .prepare_cached("DELETE FROM failure_streaks WHERE idle <> 0")?
            .execute([])?;
        tx.prepare_cached("UPDATE failure_streaks SET idle = 1")?
            .execute([])?;
        let stats = audit_stats(&tx)?;
        tx.commit()?;
        Ok((written, ended, stats))
    }

    /// The scopes with an open streak (for tests).
    #[cfg(test)]
    pub(crate) fn open_streaks(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached("SELECT scope FROM failure_streaks ORDER BY scope")?;
        let scopes = stmt.query_map([], |row| row.get(0))?;
        Ok(scopes.collect::<Result<_, _>>()?)
    }

    /// The coalesced failures not yet in a summary row (`tillctl`-free inspection for tests).
    pub fn pending_summaries(&self) -> Result<Vec<(String, Pending)>, StoreError> {
        pending(&*self.reader()?, None)
    }
}
