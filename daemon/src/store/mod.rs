//! The SQLite replica: what central pushed, re-keyed, plus the sync tokens, the failed-attempt
//! counters and the audit outbox.
//!
//! One writer connection and one reader connection (WAL lets logins read while a snapshot is
//! being written). Every change is one IMMEDIATE transaction that rolls back on drop, so a crash
//! leaves the old state or the new one.

mod audit;
mod explain;
mod lockout;
mod read;
mod schema;
mod snapshot_file;
mod tokens;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

pub use audit::{AckError, AckSummary, MAX_AUDIT_BATCH};
pub use lockout::{AttemptRecorded, CounterChange};
pub use read::{Counts, UserProfile};
pub use snapshot_file::{ReadySnapshot, SnapshotFile, discard_incoming, incoming_path};
pub use tokens::TokenRow;
pub use write::{ApplyError, ApplySummary};

use crate::model::{CredentialKind, Cursor, HashScheme};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("replica database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("replica database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "replica database {path} has schema version {found}, newer than this build's {supported}; \
         upgrade tillgated or move the file aside"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("could not move the damaged replica {path} aside: {source}")]
    Quarantine {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replica meta value {key} is not valid: {value:?}")]
    BadMeta { key: &'static str, value: String },
    #[error("replica lock poisoned by an earlier panic")]
    Poisoned,
    #[error("snapshot side file {path}: {source}")]
    SideFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What happened to the database file at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    Opened,
    /// The old file was unusable; it was renamed and an empty replica created.
    Quarantined {
        moved_to: PathBuf,
        reason: String,
    },
}

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
    /// Distinct hash schemes per credential kind; `None` after a write until the next login
    /// reads them again (a scan of the credentials table, so not done per attempt).
    schemes: RwLock<Option<Vec<(CredentialKind, HashScheme)>>>,
    /// Bumped by every invalidation, so a load that read the old data cannot store it after
    /// a write invalidated the cache in the meantime.
    schemes_generation: std::sync::atomic::AtomicU64,
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a database file is treated as damaged (and moved aside) rather than as an error.
enum Damage {
    Corrupt(String),
}

impl Replica {
    /// Opens (creating if needed) and migrates the replica. A file that is not a database,
    /// fails `quick_check`, or was written under another terminal key is moved aside and an
    /// empty replica takes its place.
    pub fn open(
        path: &Path,
        key_fingerprint: &[u8; 32],
    ) -> Result<(Replica, OpenOutcome), StoreError> {
        match Self::try_open(path, key_fingerprint)? {
            Ok(replica) => Ok((replica, OpenOutcome::Opened)),
            Err(Damage::Corrupt(reason)) => {
                let moved_to = quarantine(path)?;
                tracing::error!(path = %path.display(), moved_to = %moved_to.display(), %reason,
                    "replica database was unusable: moved aside, starting empty (needs snapshot)");
                match Self::try_open(path, key_fingerprint)? {
                    Ok(replica) => Ok((replica, OpenOutcome::Quarantined { moved_to, reason })),
                    Err(Damage::Corrupt(reason)) => Err(StoreError::Open {
                        path: path.to_owned(),
                        source: rusqlite::Error::InvalidParameterName(format!(
                            "fresh database unusable: {reason}"
                        )),
                    }),
                }
            }
        }
    }

    fn try_open(
        path: &Path,
        key_fingerprint: &[u8; 32],
    ) -> Result<Result<Replica, Damage>, StoreError> {
        let writer = match open_connection(path, true) {
            Ok(conn) => conn,
            Err(e) if is_damage(&e) => return Ok(Err(Damage::Corrupt(e.to_string()))),
            Err(source) => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut writer = writer;
        match check_and_migrate(&mut writer, path, key_fingerprint) {
            Ok(Ok(())) => {}
            Ok(Err(damage)) => return Ok(Err(damage)),
            Err(StoreError::Sqlite(e)) if is_damage(&e) => {
                return Ok(Err(Damage::Corrupt(e.to_string())));
            }
            Err(e) => return Err(e),
        }
        let reader = open_connection(path, false).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Ok(Replica {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            schemes: RwLock::new(None),
            schemes_generation: std::sync::atomic::AtomicU64::new(0),
        }))
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
        self.writer.lock().map_err(|_| StoreError::Poisoned)
    }

    fn reader(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.reader.lock().map_err(|_| StoreError::Poisoned)
    }

    pub fn state(&self) -> Result<ReplicaState, StoreError> {
        let conn = self.reader()?;
        read_state(&conn)
    }

    /// Records a successful sync exchange that changed nothing (an idempotent replay).
    pub fn touch_last_sync(&self) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        set_meta(
            &tx,
            "last_sync_at_ms",
            &unix_millis(SystemTime::now()).to_string(),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Folds the WAL back into the database file (at shutdown).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.writer()?
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

fn open_connection(path: &Path, create: bool) -> Result<Connection, rusqlite::Error> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode stayed {mode}, WAL required"
        )));
    }
    // FULL: a till gets unplugged; an acknowledged revision must survive a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn check_and_migrate(
    conn: &mut Connection,
    path: &Path,
    key_fingerprint: &[u8; 32],
) -> Result<Result<(), Damage>, StoreError> {
    let check: String = conn.query_row("PRAGMA quick_check(1)", [], |row| row.get(0))?;
    if check != "ok" {
        return Ok(Err(Damage::Corrupt(format!("quick_check: {check}"))));
    }
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let supported = schema::current_version();
    if found > supported {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported,
        });
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (index, migration) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tracing::info!(version = index + 1, "replica schema migrated");
    }
    // A database can pass quick_check and carry our version number yet miss tables (a bad
    // restore, a hand edit): probe every table the daemon reads so that shows up here, as damage,
    // rather than as a failure on every request.
    if let Err(e) = tx.query_row(
        "SELECT (SELECT COUNT(*) FROM meta) + (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM roles)
              + (SELECT COUNT(*) FROM credentials) + (SELECT COUNT(*) FROM user_roles)
              + (SELECT COUNT(*) FROM user_access) + (SELECT COUNT(*) FROM role_permissions)
              + (SELECT COUNT(*) FROM sync_tokens) + (SELECT COUNT(*) FROM audit_events)
              + (SELECT COUNT(*) FROM lockouts) + (SELECT COUNT(*) FROM applied_batches)",
        [],
        |row| row.get::<_, i64>(0),
    ) {
        return Ok(Err(Damage::Corrupt(format!("schema check: {e}"))));
    }
    let fingerprint = hex(key_fingerprint);
    let stored: Option<String> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'key_fingerprint'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    match stored {
        Some(stored) if stored != fingerprint => {
            return Ok(Err(Damage::Corrupt(
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

/// Renames the database and its WAL/SHM files to `<name>.corrupt-<timestamp>`.
fn quarantine(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let stamp: String = stamp
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let moved_to = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    std::fs::rename(path, &moved_to).map_err(|source| StoreError::Quarantine {
        path: path.to_owned(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let target = PathBuf::from(format!("{}{suffix}", moved_to.display()));
            std::fs::rename(&side, target).map_err(|source| StoreError::Quarantine {
                path: side.clone(),
                source,
            })?;
        }
    }
    Ok(moved_to)
}

pub(crate) fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute((key, value))?;
    Ok(())
}

fn get_meta_u64(conn: &Connection, key: &'static str) -> Result<Option<u64>, StoreError> {
    let value: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?;
    value
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| StoreError::BadMeta { key, value: v })
        })
        .transpose()
}

pub(crate) fn read_state(conn: &Connection) -> Result<ReplicaState, StoreError> {
    let epoch = get_meta_u64(conn, "epoch")?.unwrap_or(0);
    let revision = get_meta_u64(conn, "revision")?.unwrap_or(0);
    let last_sync_at =
        get_meta_u64(conn, "last_sync_at_ms")?.map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    Ok(ReplicaState {
        cursor: Cursor { epoch, revision },
        last_sync_at,
    })
}

pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
