//! Central's data: users, roles, credentials (re-keyed), access, and the cursor. Nothing here
//! is the terminal's own: the whole file can be thrown away and rebuilt from the next snapshot.

mod explain;
mod legacy;
mod read;
pub(super) mod schema;
mod snapshot_file;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use rusqlite::Connection;

pub use read::{Counts, UserProfile};
pub use snapshot_file::{ReadySnapshot, SnapshotFile, discard_incoming, incoming_path};
pub use write::{ApplyError, ApplySummary};

use super::sqlite::{self, Damage, get_meta, get_meta_u64, set_meta};
use super::{OpenOutcome, StoreError};
use crate::model::{CredentialKind, Cursor, HashScheme};

const STORE: &str = "replica";

/// Cursor and sync time as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaState {
    pub cursor: Cursor,
    pub last_sync_at: Option<SystemTime>,
}

#[derive(Debug)]
pub struct Replica {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Set by [`Self::close_cleanly`]: no write may follow the closed-cleanly marker (a detached
    /// login or a sync still running at shutdown fails instead, like at a crash).
    closed: std::sync::atomic::AtomicBool,
    /// Distinct hash schemes per credential kind; `None` after a write until the next login
    /// reads them again (a scan of the credentials table, so not done per attempt).
    schemes: RwLock<Option<Vec<(CredentialKind, HashScheme)>>>,
    /// Bumped by every invalidation, so a load that read the old data cannot store it after
    /// a write invalidated the cache in the meantime.
    schemes_generation: std::sync::atomic::AtomicU64,
}

impl Replica {
    /// Opens (creating if needed) and migrates the replica. A file that is not a database,
    /// fails `quick_check`, or was written under another terminal key is moved aside and an
    /// empty replica takes its place.
    pub fn open(
        path: &Path,
        key_fingerprint: &[u8; 32],
    ) -> Result<(Replica, OpenOutcome), StoreError> {
        Replica::open_beside(path, key_fingerprint, false)
    }

    /// [`Replica::open`], told whether the local store copied the terminal's state out of this
    /// file when it was a single-file replica (schema 1–3). When it did not and those tables
    /// hold rows, the file is first copied aside whole (`replica.db.release-0.1-<stamp>`), so
    /// the migration that drops them never destroys the only copy.
    pub fn open_beside(
        path: &Path,
        key_fingerprint: &[u8; 32],
        local_copied_single_file_state: bool,
    ) -> Result<(Replica, OpenOutcome), StoreError> {
        let prepare = |conn: &mut Connection| {
            check_and_migrate(conn, path, key_fingerprint, local_copied_single_file_state)
        };
        let (connections, outcome) = sqlite::open_store(STORE, path, &prepare)?;
        Ok((
            Replica {
                path: path.to_owned(),
                writer: Mutex::new(connections.writer),
                reader: Mutex::new(connections.reader),
                schemes: RwLock::new(None),
                schemes_generation: std::sync::atomic::AtomicU64::new(0),
                closed: std::sync::atomic::AtomicBool::new(false),
            },
            outcome,
        ))
    }

    fn invalidate_schemes(&self) {
        if let Ok(mut schemes) = self.schemes.write() {
            self.schemes_generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *schemes = None;
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
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

    pub fn state(&self) -> Result<ReplicaState, StoreError> {
        let conn = self.reader()?;
        read_state(&conn)
    }

    /// Sets the last sync time alone (tests of `replica.max_age`).
    #[cfg(test)]
    pub(crate) fn touch_last_sync(&self) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        set_meta(
            &tx,
            "last_sync_at_ms",
            &sqlite::unix_millis(SystemTime::now()).to_string(),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Folds the WAL back into the database file.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.writer()?
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
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
    key_fingerprint: &[u8; 32],
    local_copied_single_file_state: bool,
) -> Result<Result<(), Damage>, StoreError> {
    if let Err(damage) = sqlite::check_unless_closed_cleanly(conn, STORE)? {
        return Ok(Err(damage));
    }
    if !local_copied_single_file_state {
        legacy::set_aside_uncopied_terminal_state(conn, path)?;
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    sqlite::migrate(&tx, STORE, path, schema::MIGRATIONS)?;
    // A database can pass quick_check and carry our version number yet miss tables (a bad
    // restore, a hand edit): probe every table the daemon reads so that shows up here, as damage,
    // rather than as a failure on every request.
    if let Err(damage) = sqlite::probe_tables(
        &tx,
        &[
            "meta",
            "users",
            "roles",
            "credentials",
            "user_roles",
            "user_access",
            "role_permissions",
            "applied_batches",
        ],
    )? {
        return Ok(Err(damage));
    }
    sqlite::clear_closed_cleanly(&tx)?;
    let fingerprint = hex::encode(key_fingerprint);
    match get_meta(&tx, "key_fingerprint")? {
        Some(stored) if stored != fingerprint => {
            return Ok(Err(Damage(
                "the replica was written under another terminal key; its credentials cannot be checked"
                    .into(),
            )));
        }
        Some(_) => {}
        None => set_meta(&tx, "key_fingerprint", &fingerprint)?,
    }
    tx.commit()?;
    Ok(Ok(()))
}

pub(crate) fn read_state(conn: &Connection) -> Result<ReplicaState, StoreError> {
    let epoch = get_meta_u64(conn, "epoch")?.unwrap_or(0);
    let revision = get_meta_u64(conn, "revision")?.unwrap_or(0);
    let last_sync_at = get_meta_u64(conn, "last_sync_at_ms")?.map(sqlite::from_unix_millis);
    Ok(ReplicaState {
        cursor: Cursor { epoch, revision },
        last_sync_at,
    })
}

#[cfg(test)]
mod tests;
