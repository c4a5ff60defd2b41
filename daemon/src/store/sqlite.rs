//! What both stores do the same way: open a connection (WAL, synchronous=FULL, foreign keys),
//! check and migrate at start, move an unusable file aside, and keep small values in `meta`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction};

use super::{OpenOutcome, StoreError};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a database file is treated as damaged (and moved aside) rather than as an error.
#[derive(Debug)]
pub(super) struct Damage(pub String);

/// A store's two connections, checked and migrated.
#[derive(Debug)]
pub(super) struct Connections {
    pub writer: Connection,
    pub reader: Connection,
}

/// Checks and migrates a freshly opened writer connection; `Ok(Err(_))` means the file is
/// damaged and should be moved aside.
pub(super) type Prepare<'a> = &'a dyn Fn(&mut Connection) -> Result<Result<(), Damage>, StoreError>;

/// Opens (creating if needed) the store at `path` and runs `prepare` on it. A file that is not a
/// database or that `prepare` finds damaged is moved aside and a new one created in its place.
pub(super) fn open_store(
    store: &'static str,
    path: &Path,
    prepare: Prepare<'_>,
) -> Result<(Connections, OpenOutcome), StoreError> {
    match try_open(store, path, prepare)? {
        Ok(connections) => Ok((connections, OpenOutcome::Opened)),
        Err(Damage(reason)) => {
            let moved_to = quarantine(path)?;
            tracing::error!(path = %path.display(), moved_to = %moved_to.display(), %reason,
                "{store} database was unusable: moved aside, starting a new one");
            match try_open(store, path, prepare)? {
                Ok(connections) => Ok((connections, OpenOutcome::Quarantined { moved_to, reason })),
                Err(Damage(reason)) => Err(StoreError::Open {
                    store,
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
    store: &'static str,
    path: &Path,
    prepare: Prepare<'_>,
) -> Result<Result<Connections, Damage>, StoreError> {
    let open_error = |source| StoreError::Open {
        store,
        path: path.to_owned(),
        source,
    };
    let mut writer = match open_connection(path, true) {
        Ok(conn) => conn,
        Err(e) if is_damage(&e) => return Ok(Err(Damage(e.to_string()))),
        Err(e) => return Err(open_error(e)),
    };
    match prepare(&mut writer) {
        Ok(Ok(())) => {}
        Ok(Err(damage)) => return Ok(Err(damage)),
        Err(StoreError::Sqlite(e)) if is_damage(&e) => return Ok(Err(Damage(e.to_string()))),
        Err(e) => return Err(e),
    }
    let reader = open_connection(path, false).map_err(open_error)?;
    Ok(Ok(Connections { writer, reader }))
}

pub(super) fn open_connection(path: &Path, create: bool) -> Result<Connection, rusqlite::Error> {
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
    // FULL: a till gets unplugged; an acknowledged revision, an audit row or a lockout counter
    // must survive a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

pub(super) fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Set in `meta` by a clean shutdown, after the final checkpoint, and cleared by the next start:
/// while it is set nothing has written to the file since the daemon closed it itself, so the start
/// skips `quick_check` (a read of the whole file, growing with its size).
const CLOSED_CLEANLY: &str = "closed_cleanly";

/// `quick_check` unless the last process closed the file cleanly (then only the schema is read).
pub(super) fn check_unless_closed_cleanly(
    conn: &Connection,
    store: &'static str,
) -> Result<Result<(), Damage>, StoreError> {
    let clean = match get_meta(conn, CLOSED_CLEANLY) {
        Ok(value) => value.as_deref() == Some("1"),
        Err(e) if is_damage(&e) => return Ok(Err(Damage(e.to_string()))),
        // No meta table yet: a new file.
        Err(_) => false,
    };
    if clean {
        tracing::debug!(store, "closed cleanly last time: quick_check skipped");
        return Ok(Ok(()));
    }
    tracing::info!(
        store,
        "not closed cleanly last time (or new): running quick_check"
    );
    quick_check(conn)
}

/// Clears the clean-shutdown mark, inside the start's migration transaction: from here on, an
/// exit that does not go through [`close_cleanly`] is unclean.
pub(super) fn clear_closed_cleanly(tx: &Transaction<'_>) -> Result<(), rusqlite::Error> {
    set_meta(tx, CLOSED_CLEANLY, "0")
}

/// At shutdown: marks the file closed cleanly and folds the WAL into it, so the next start needs
/// neither `quick_check` nor WAL recovery.
pub(super) fn close_cleanly(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    set_meta(&tx, CLOSED_CLEANLY, "1")?;
    tx.commit()?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Fails (as damage) if one of `tables` is missing. Prepared only, never run: a start reads no
/// rows for this, whatever the size.
pub(super) fn probe_tables(
    conn: &Connection,
    tables: &[&str],
) -> Result<Result<(), Damage>, StoreError> {
    for table in tables {
        if let Err(e) = conn.prepare(&format!("SELECT 1 FROM \"{table}\" LIMIT 1")) {
            return Ok(Err(Damage(format!("schema check: {e}"))));
        }
    }
    Ok(Ok(()))
}

/// `PRAGMA quick_check`, as damage rather than an error.
pub(super) fn quick_check(conn: &Connection) -> Result<Result<(), Damage>, StoreError> {
    let check: String = conn.query_row("PRAGMA quick_check(1)", [], |row| row.get(0))?;
    Ok(if check == "ok" {
        Ok(())
    } else {
        Err(Damage(format!("quick_check: {check}")))
    })
}

/// Runs the migrations past the file's `user_version` inside `tx`; a file newer than this build
/// is an error (never damage: a downgrade must not throw newer data away).
pub(super) fn migrate(
    tx: &Transaction<'_>,
    store: &'static str,
    path: &Path,
    migrations: &[&str],
) -> Result<(), StoreError> {
    let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let supported = migrations.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew {
            store,
            path: path.to_owned(),
            found,
            supported,
        });
    }
    for (index, migration) in migrations.iter().enumerate().skip(found.max(0) as usize) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tracing::info!(store, version = index + 1, "schema migrated");
    }
    Ok(())
}

/// Renames the database and its WAL/SHM files to `<name>.corrupt-<timestamp>`.
pub(super) fn quarantine(path: &Path) -> Result<PathBuf, StoreError> {
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

pub(super) fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute((key, value))?;
    Ok(())
}

pub(super) fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>, rusqlite::Error> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()
}

pub(super) fn get_meta_u64(
    conn: &Connection,
    key: &'static str,
) -> Result<Option<u64>, StoreError> {
    get_meta(conn, key)?
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| StoreError::BadMeta { key, value: v })
        })
        .transpose()
}

pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn from_unix_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
