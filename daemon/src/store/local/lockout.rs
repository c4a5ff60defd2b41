//! Failed-attempt counters, changed in the same transaction as the audit row that reports the
//! attempt: a restart keeps both, and neither is written without the other.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::audit::{audit_stats, insert_audit};
use super::{LocalStore, StoreError};
use crate::audit::{AuditRecord, AuditStats};
use crate::lockout::{Counter, LockoutPolicy, scope_of};
use crate::store::sqlite::unix_millis;

/// What an attempt does to the counters of its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterChange {
    /// A credential that matched nobody: counted for the source and the terminal.
    Failure,
    /// A credential that resolved to a user: the source's counter is reset.
    Success,
    /// Audited only (malformed input, a refusal before any check, a bad read).
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecorded {
    /// Lockouts this failure started: (scope, delay).
    pub locked: Vec<(String, Duration)>,
    pub audit: AuditStats,
}

fn load(conn: &Connection, scope: &str) -> Result<Option<Counter>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT failures, window_start_ms, strikes, locked_until_ms, last_failure_ms
         FROM lockouts WHERE scope = ?1",
    )?
    .query_row([scope], |row| {
        Ok(Counter {
            failures: row.get(0)?,
            window_start_ms: row.get::<_, i64>(1)? as u64,
            strikes: row.get(2)?,
            locked_until_ms: row.get::<_, i64>(3)? as u64,
            last_failure_ms: row.get::<_, i64>(4)? as u64,
        })
    })
    .optional()
}

fn store(conn: &Connection, scope: &str, c: &Counter) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO lockouts (scope, failures, window_start_ms, strikes, locked_until_ms, last_failure_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(scope) DO UPDATE SET failures = excluded.failures,
             window_start_ms = excluded.window_start_ms, strikes = excluded.strikes,
             locked_until_ms = excluded.locked_until_ms, last_failure_ms = excluded.last_failure_ms",
    )?
    .execute((
        scope,
        c.failures,
        clamp(c.window_start_ms),
        c.strikes,
        clamp(c.locked_until_ms),
        clamp(c.last_failure_ms),
    ))?;
    Ok(())
}

fn clamp(ms: u64) -> i64 {
    ms.min(i64::MAX as u64) as i64
}

fn all(conn: &Connection) -> Result<Vec<(String, Counter)>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT scope, failures, window_start_ms, strikes, locked_until_ms, last_failure_ms
         FROM lockouts ORDER BY scope",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get(0)?,
            Counter {
                failures: row.get(1)?,
                window_start_ms: row.get::<_, i64>(2)? as u64,
                strikes: row.get(3)?,
                locked_until_ms: row.get::<_, i64>(4)? as u64,
                last_failure_ms: row.get::<_, i64>(5)? as u64,
            },
        ))
    })?;
    rows.collect()
}

impl LocalStore {
    /// The longest running lockout among `scopes`, if any: its scope and remaining time.
    pub fn locked_for(
        &self,
        scopes: &[String],
        now: SystemTime,
    ) -> Result<Option<(String, Duration)>, StoreError> {
        let conn = self.reader()?;
        let now_ms = unix_millis(now);
        let mut longest: Option<(String, Duration)> = None;
        for scope in scopes {
            if let Some(wait) = load(&conn, scope)?.and_then(|c| c.retry_after(now_ms))
                && longest.as_ref().is_none_or(|(_, l)| wait > *l)
            {
                longest = Some((scope.clone(), wait));
            }
        }
        Ok(longest)
    }

    /// Every counter still worth showing (failures in a running window, a lockout, strikes).
    pub fn lockout_counters(
        &self,
        policy: &LockoutPolicy,
        now: SystemTime,
    ) -> Result<Vec<(String, Counter)>, StoreError> {
        let now_ms = unix_millis(now);
        let conn = self.reader()?;
        Ok(all(&conn)?
            .into_iter()
            .filter(|(_, c)| !c.is_spent(policy, now_ms))
            .collect())
    }

    /// Writes the audit row of an attempt and applies `change` to its source's counters, in one
    /// transaction.
    pub fn record_attempt(
        &self,
        record: &AuditRecord,
        change: CounterChange,
        policy: &LockoutPolicy,
    ) -> Result<AttemptRecorded, StoreError> {
        let now_ms = unix_millis(record.at);
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut locked = Vec::new();
        match change {
            CounterChange::Failure => {
                for scope in policy.scopes(&record.source) {
                    let Some(threshold) = policy.threshold(&scope) else {
                        continue;
                    };
                    let mut counter = load(&tx, &scope)?.unwrap_or_default();
                    if let Some(delay) = counter.record_failure(policy, threshold, now_ms) {
                        locked.push((scope.clone(), delay));
                    }
                    store(&tx, &scope, &counter)?;
                }
            }
            CounterChange::Success => {
                tx.prepare_cached("DELETE FROM lockouts WHERE scope = ?1")?
                    .execute([scope_of(&record.source)])?;
            }
            CounterChange::Unchanged => {}
        }
        insert_audit(&tx, record)?;
        let audit = audit_stats(&tx)?;
        tx.commit()?;
        Ok(AttemptRecorded { locked, audit })
    }

    /// Clears the counters of `scope` (all when None) and audits it, in one transaction.
    /// Returns the scopes that had a counter.
    pub fn clear_lockouts(
        &self,
        scope: Option<&str>,
        record: &AuditRecord,
    ) -> Result<(Vec<String>, AuditStats), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cleared: Vec<String> = all(&tx)?
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| scope.is_none_or(|wanted| wanted == s))
            .collect();
        match scope {
            Some(scope) => tx.execute("DELETE FROM lockouts WHERE scope = ?1", [scope])?,
            None => tx.execute("DELETE FROM lockouts", [])?,
        };
        let mut record = record.clone();
        if record.reason.is_empty() {
            record.reason = if cleared.is_empty() {
                "nothing to clear".to_owned()
            } else {
                format!("cleared {}", cleared.join(", "))
            };
        }
        insert_audit(&tx, &record)?;
        let stats = audit_stats(&tx)?;
        tx.commit()?;
        Ok((cleared, stats))
    }
}
