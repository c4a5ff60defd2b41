//! The terminal's own state: sync tokens, the audit outbox, the failed-attempt counters and the
//! terminal's identity (the audit stream id). Nobody else holds a copy, so nothing here is ever
//! replaced by a sync; the replica can be quarantined or rebuilt without touching it.

mod audit;
mod legacy;
mod lockout;
mod schema;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use rusqlite::{Connection, TransactionBehavior};

pub use audit::{AckError, AckSummary, MAX_AUDIT_BATCH};
pub use lockout::{Admitted, AttemptRecorded, Settlement};
pub use tokens::TokenRow;

use super::sqlite::{self, Damage, get_meta, set_meta};
use super::{OpenOutcome, StoreError};

const STORE: &str = "local";

/// The origin of a local store that copied the terminal's state out of a single-file replica.
const ORIGIN_MIGRATED: &str = "migrated from the single-file replica";

/// Who this store is: made once with the file, never changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Random (v4) id of the audit stream: seqs count within it, so a new id tells central
    /// that the seqs started again.
    pub stream_id: String,
    pub created_at: SystemTime,
    /// How the store came to be, for the operator: "new", "migrated from the single-file
    /// replica", or "replaced a damaged local store (…)". Kept, so it shows after restarts too.
    pub origin: String,
}

#[derive(Debug)]
pub struct LocalStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Set by [`Self::close_cleanly`]: no write may follow the closed-cleanly marker (a detached
    /// login or a sync still running at shutdown fails instead, like at a crash).
    closed: std::sync::atomic::AtomicBool,
    identity: Identity,
}

impl LocalStore {
    /// Opens (creating if needed) the local store. A new store copies the terminal's state from
    /// `legacy_replica` when that file is a single-store replica (schema 1–3), in the
    /// transaction that creates it. A file that is not a database or fails `quick_check` is
    /// moved aside and a new store, with a new audit stream, takes its place.
    pub fn open(
        path: &Path,
        legacy_replica: &Path,
    ) -> Result<(LocalStore, OpenOutcome), StoreError> {
        let prepare = |conn: &mut Connection| check_and_migrate(conn, path, legacy_replica);
        let (mut connections, outcome) = sqlite::open_store(STORE, path, &prepare)?;
        if let OpenOutcome::Quarantined { moved_to, reason } = &outcome {
            // The store was just created in place of the damaged one: say so for good.
            let origin = format!(
                "replaced a damaged local store (moved to {}: {reason})",
                moved_to.display()
            );
            let tx = connections
                .writer
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            set_meta(&tx, "origin", &origin)?;
            tx.commit()?;
        }
        let identity = read_identity(&connections.reader)?;
        Ok((
            LocalStore {
                path: path.to_owned(),
                writer: Mutex::new(connections.writer),
                reader: Mutex::new(connections.reader),
                identity,
                closed: std::sync::atomic::AtomicBool::new(false),
            },
            outcome,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// True when this store was made by copying the tokens, audit rows and lockouts out of a
    /// single-file replica: only then may the replica's migration drop its copies of them.
    pub fn copied_single_file_state(&self) -> bool {
        self.identity.origin == ORIGIN_MIGRATED
    }

    fn writer(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        let conn = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Closed { store: STORE });
        }
        Ok(conn)
    }

    fn reader(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.reader.lock().map_err(|_| StoreError::Poisoned)
    }

    /// At shutdown: marks the file closed cleanly (the next start skips `quick_check`), folds
    /// the WAL into it and refuses every later write, so the mark stays true.
    pub fn close_cleanly(&self) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        sqlite::close_cleanly(&mut conn)?;
        // Under the writer lock: every write that took it earlier is done, every later one fails.
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

fn check_and_migrate(
    conn: &mut Connection,
    path: &Path,
    legacy_replica: &Path,
) -> Result<Result<(), Damage>, StoreError> {
    if let Err(damage) = sqlite::check_unless_closed_cleanly(conn, STORE)? {
        return Ok(Err(damage));
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    // ATTACH cannot run inside a transaction: the legacy file is attached first, read inside the
    // creating transaction, and detached after it.
    let attached = version == 0 && legacy::attach(conn, legacy_replica)?;
    let created = create_or_migrate(conn, path, attached);
    if attached {
        legacy::detach(conn)?;
    }
    created
}

fn create_or_migrate(
    conn: &mut Connection,
    path: &Path,
    legacy_attached: bool,
) -> Result<Result<(), Damage>, StoreError> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    sqlite::migrate(&tx, STORE, path, schema::MIGRATIONS)?;
    if let Err(damage) =
        sqlite::probe_tables(&tx, &["meta", "sync_tokens", "audit_events", "lockouts"])?
    {
        return Ok(Err(damage));
    }
    sqlite::clear_closed_cleanly(&tx)?;
    if get_meta(&tx, "stream_id")?.is_none() {
        let stream_id = uuid::Uuid::new_v4().to_string();
        set_meta(&tx, "stream_id", &stream_id)?;
        set_meta(
            &tx,
            "created_at_ms",
            &sqlite::unix_millis(SystemTime::now()).to_string(),
        )?;
        let copied = if legacy_attached {
            legacy::copy(&mut tx)
        } else {
            None
        };
        let origin = match copied {
            Some(_) => ORIGIN_MIGRATED,
            None => "new",
        };
        set_meta(&tx, "origin", origin)?;
        match copied {
            Some(c) => tracing::warn!(%stream_id, tokens = c.tokens, audit_rows = c.audit_rows,
                counters = c.counters, last_seq = c.last_seq,
                "local store created from the single-file replica: tokens, unacknowledged audit rows and lockouts kept; \
                 a new audit stream id (central pulls again from seq 0)"),
            None => tracing::warn!(%stream_id,
                "new local store: no sync tokens (create one for central), no lockouts, a new audit stream from seq 1"),
        }
    }
    tx.commit()?;
    Ok(Ok(()))
}

fn read_identity(conn: &Connection) -> Result<Identity, StoreError> {
    let stream_id = get_meta(conn, "stream_id")?.ok_or(StoreError::BadMeta {
        key: "stream_id",
        value: String::new(),
    })?;
    let created_at = sqlite::get_meta_u64(conn, "created_at_ms")?
        .map(sqlite::from_unix_millis)
        .unwrap_or(std::time::UNIX_EPOCH);
    let origin = get_meta(conn, "origin")?.unwrap_or_else(|| "new".to_owned());
    Ok(Identity {
        stream_id,
        created_at,
        origin,
    })
}

#[cfg(test)]
mod tests;
