//! The guess throttle's counters (see `lockout.rs`), changed in the same transaction as the
//! audit rows that report the attempt: a restart keeps both, and neither is written without the
//! other.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::audit::{audit_stats, insert_audit};
use super::summary::{record_failure, write_summaries};
use super::{LocalStore, StoreError};
use crate::audit::{AuditRecord, AuditStats};
use crate::coalesce::{Pending, is_hashed_failure};
use crate::lockout::{
    Budget, Counter, LockoutPolicy, Now, Refusal, admit, budget_of, source_scope,
};

/// What the outcome of an admitted attempt does to the charges made when it was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The right credential: its charges are refunded (the source's counter is reset).
    Refund(Budget),
    /// A wrong credential, or anything that is not a success: the charges stay.
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecorded {
    pub audit: AuditStats,
}

/// An admitted attempt: the lockouts its charge started (scope, delay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub locked: Vec<(String, std::time::Duration)>,
}

const COLUMNS: &str = "failures, level_milli, boot, updated_ms, locked_until_ms";

fn counter_from(row: &rusqlite::Row<'_>, at: usize) -> Result<Counter, rusqlite::Error> {
    let boot: String = row.get(at + 2)?;
    Ok(Counter {
        failures: row.get(at)?,
        level_milli: row.get::<_, i64>(at + 1)?.max(0) as u64,
        // An unreadable boot id is "another boot": the counter is rebased, never dropped.
        boot: u128::from_str_radix(&boot, 16).unwrap_or(0),
        updated_ms: row.get::<_, i64>(at + 3)?.max(0) as u64,
        locked_until_ms: row.get::<_, i64>(at + 4)?.max(0) as u64,
    })
}

fn load(conn: &Connection, scope: &str) -> Result<Option<Counter>, rusqlite::Error> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM lockouts WHERE scope = ?1"))?
        .query_row([scope], |row| counter_from(row, 0))
        .optional()
}

fn store(conn: &Connection, scope: &str, c: &Counter) -> Result<(), rusqlite::Error> {
    if *c == Counter::default() {
        conn.prepare_cached("DELETE FROM lockouts WHERE scope = ?1")?
            .execute([scope])?;
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO lockouts (scope, failures, level_milli, boot, updated_ms, locked_until_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(scope) DO UPDATE SET failures = excluded.failures,
             level_milli = excluded.level_milli, boot = excluded.boot,
             updated_ms = excluded.updated_ms, locked_until_ms = excluded.locked_until_ms",
    )?
    .execute((
        scope,
        c.failures,
        clamp(c.level_milli),
        format!("{:032x}", c.boot),
        clamp(c.updated_ms),
        clamp(c.locked_until_ms),
    ))?;
    Ok(())
}

fn clamp(ms: u64) -> i64 {
    ms.min(i64::MAX as u64) as i64
}

fn all(conn: &Connection) -> Result<Vec<(String, Counter)>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT scope, {COLUMNS} FROM lockouts ORDER BY scope"
    ))?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, counter_from(row, 1)?)))?;
    rows.collect()
}

fn scoped(
    conn: &Connection,
    policy: &LockoutPolicy,
    budget: Budget,
    source: &str,
) -> Result<Vec<(String, Counter)>, rusqlite::Error> {
    policy
        .scopes(budget, source)
        .into_iter()
        .map(|scope| Ok((scope.clone(), load(conn, &scope)?.unwrap_or_default())))
        .collect()
}

impl LocalStore {
    /// Whether an attempt from `source` would be refused now (a read: the cheap check before
    /// an attempt queues for hashing).
    pub fn refusal(
        &self,
        budget: Budget,
        source: &str,
        policy: &LockoutPolicy,
        now: Now,
    ) -> Result<Option<Refusal>, StoreError> {
        let conn = self.reader()?;
        let mut counters = scoped(&conn, policy, budget, source)?;
        Ok(admit(policy, &mut counters, now).err())
    }

    /// Admits an attempt and charges it to its scopes, in one transaction; or refuses it,
    /// writing nothing.
    pub fn admit_attempt(
        &self,
        budget: Budget,
        source: &str,
        policy: &LockoutPolicy,
        now: Now,
    ) -> Result<Result<Admitted, Refusal>, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut counters = scoped(&tx, policy, budget, source)?;
        if let Err(refusal) = admit(policy, &mut counters, now) {
            return Ok(Err(refusal));
        }
        let mut locked = Vec::new();
        for (scope, counter) in &counters {
            store(&tx, scope, counter)?;
            if let Some(delay) = counter.lockout_started(policy, scope) {
                locked.push((scope.clone(), delay));
            }
        }
        tx.commit()?;
        Ok(Ok(Admitted { locked }))
    }

    /// Writes the audit row of an attempt and settles its charges, in one transaction. A hashed
    /// failure after the first of its source's streak is counted for the summary row instead
    /// of a row of its own. A success has its own row and ends no streak: a source that
    /// interleaves successes with wrong credentials still has only the first of them as a row
    /// (see `coalesce.rs`).
    pub fn record_attempt(
        &self,
        record: &AuditRecord,
        settlement: Settlement,
        source: &str,
        policy: &LockoutPolicy,
        now: Now,
    ) -> Result<AttemptRecorded, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Settlement::Refund(budget) = settlement {
            for (scope, counter) in scoped(&tx, policy, budget, source)? {
                let mut counter = counter.rebased(now);
                counter.refund(policy, &scope, now);
                store(&tx, &scope, &counter)?;
            }
        }
        match record.method {
            Some(method) if settlement == Settlement::Keep && is_hashed_failure(record) => {
                let scope = source_scope(budget_of(method), source);
                record_failure(&tx, &scope, method, record)?;
            }
            _ => insert_audit(&tx, record)?,
        }
        let audit = audit_stats(&tx)?;
        tx.commit()?;
        Ok(AttemptRecorded { audit })
    }

    /// Moves every counter onto this boot's clock (at start): from then on a read sees the
    /// same lockout as the next write.
    pub fn rebase_lockouts(&self, now: Now) -> Result<usize, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut rebased = 0;
        for (scope, counter) in all(&tx)? {
            if counter.boot != now.boot {
                store(&tx, &scope, &counter.rebased(now))?;
                rebased += 1;
            }
        }
        tx.commit()?;
        Ok(rebased)
    }

    /// Every counter still worth showing (failures, a lockout, a budget in use), as of `now`.
    pub fn lockout_counters(
        &self,
        policy: &LockoutPolicy,
        now: Now,
    ) -> Result<Vec<(String, Counter)>, StoreError> {
        let conn = self.reader()?;
        Ok(all(&conn)?
            .into_iter()
            .map(|(scope, c)| {
                let c = c.rebased(now);
                (scope, c)
            })
            .filter(|(scope, c)| !c.is_spent(policy, scope, now))
            .collect())
    }

    /// Clears the counters of `scope` (all when None) and audits it, with the pending summary
    /// rows of the same scopes (`refused`: their in-memory refusal counts), in one
    /// transaction. Returns the scopes that had a counter.
    pub fn clear_lockouts(
        &self,
        scope: Option<&str>,
        record: &AuditRecord,
        refused: &[(String, Pending)],
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
        write_summaries(&tx, scope, refused)?;
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
