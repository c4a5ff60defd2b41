//! A snapshot is built in a side file next to the replica and switched in by one rename, so the
//! live replica keeps serving logins (and batches) for as long as central streams, and a crash at
//! any instant leaves the old file or the new one.
//!
//! The side file is scratch until it is renamed: no journal and no fsync per write while it is
//! built (a crash just leaves garbage that the next snapshot or start removes), secondary indexes
//! built once after the rows, then one fsync of the file before the rename and one of the
//! directory after it. What the build has written is pushed to disk in steps of
//! [`WRITEBACK_BYTES`] as it goes: left to the end, the final fsync of a 100k-user file (tens of
//! MiB) queued every login's own fsync behind it on the same disk.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::write::{ApplyError, ApplySummary, insert_role, insert_user};
use super::{Replica, read_state, schema};
use crate::history::check_snapshot;
use crate::model::{Cursor, RoleRecord, UserRecord};
use crate::snapshot::ValidChunk;
use crate::store::StoreError;
use crate::store::sqlite::{open_connection, set_meta, unix_millis};

/// Page cache of the side file's connection (KiB): bounds the memory the build and the index
/// sorts take, whatever the snapshot's size.
const BUILD_CACHE_KIB: i64 = 4096;

/// Growth of the side file between two writebacks (started, not waited for): a login's fsync
/// that arrives meanwhile finds at most about this much of the snapshot's data queued.
const WRITEBACK_BYTES: u64 = 1024 * 1024;

/// The side file's name: `<replica>.incoming`.
pub fn incoming_path(replica: &Path) -> PathBuf {
    PathBuf::from(format!("{}.incoming", replica.display()))
}

/// A second link to the replica file being replaced, so the switch's rename frees nothing:
/// freeing a 100k replica's blocks takes ~30 ms on ext4, and the switch holds the logins' locks.
/// The link is removed afterwards, gradually ([`Replica::discard_retired`]).
fn retired_path(replica: &Path) -> PathBuf {
    PathBuf::from(format!("{}.retired", replica.display()))
}

/// Bytes of the retired file freed per step (a few milliseconds of the kernel's time each).
const RETIRE_STEP_BYTES: u64 = 8 << 20;

/// Removes a side file left by an aborted snapshot or a crash, and a retired replica's link.
pub fn discard_incoming(replica: &Path) -> Result<(), std::io::Error> {
    let incoming = incoming_path(replica);
    for suffix in ["", "-journal", "-wal", "-shm"] {
        remove_if_there(Path::new(&format!("{}{suffix}", incoming.display())))?;
    }
    remove_if_there(&retired_path(replica))
}

fn remove_if_there(path: &Path) -> Result<(), std::io::Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A snapshot being written into the side file. Dropped before [`SnapshotFile::finish`], the
/// side file is removed and the replica is as it was.
#[derive(Debug)]
pub struct SnapshotFile {
    replica: PathBuf,
    path: PathBuf,
    conn: Option<Connection>,
    target: Cursor,
    indexes: Vec<(String, String)>,
    /// A second descriptor of the side file for the stepped writeback, and its length then.
    writeback: Option<std::fs::File>,
    written_back: u64,
}

/// A complete side file, synced to disk, waiting for [`Replica::install_snapshot`].
#[derive(Debug)]
pub struct ReadySnapshot {
    path: PathBuf,
    target: Cursor,
    users: u64,
    roles: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ApplyError + '_ {
    move |source| {
        ApplyError::Store(StoreError::SideFile {
            path: path.to_owned(),
            source,
        })
    }
}

impl Replica {
    /// Starts a snapshot at `target` in a fresh side file. Refused at once if `target` would move
    /// the replica's history backwards (checked again when it is installed).
    pub fn begin_snapshot(&self, target: Cursor) -> Result<SnapshotFile, ApplyError> {
        check_snapshot(self.state()?.cursor, target)?;
        let fingerprint = self.key_fingerprint()?;
        discard_incoming(&self.path).map_err(io(&self.path))?;
        let path = incoming_path(&self.path);
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Scratch until renamed: no journal, no fsync per write (see the module comment).
        let _: String = conn.query_row("PRAGMA journal_mode = OFF", [], |row| row.get(0))?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "cache_size", -BUILD_CACHE_KIB)?;
        // References are checked by the validator across chunks (a role may come after its users).
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        let tx = conn.transaction()?;
        for (index, migration) in schema::MIGRATIONS.iter().enumerate() {
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
        }
        set_meta(&tx, "key_fingerprint", &fingerprint)?;
        // Rows first, secondary indexes once at the end: sorting 200,000 keys once is several
        // times faster than as many random inserts into a B-tree.
        let indexes = super::write::secondary_indexes(&tx)?;
        for (name, _) in &indexes {
            tx.execute_batch(&format!("DROP INDEX \"{name}\""))?;
        }
        tx.commit()?;
        conn.execute_batch("BEGIN")?;
        Ok(SnapshotFile {
            replica: self.path.clone(),
            path,
            conn: Some(conn),
            target,
            indexes,
            writeback: None,
            written_back: 0,
        })
    }

    /// Switches the replica to a built snapshot: under both locks (a few milliseconds), checks
    /// the history rules against the cursor now (a batch may have been applied meanwhile), folds
    /// the WAL into the old file, closes it, renames the side file over it, syncs the directory
    /// and reopens. Logins wait only for this switch.
    pub fn install_snapshot(&self, ready: ReadySnapshot) -> Result<ApplySummary, ApplyError> {
        let summary = self.switch_to(&ready);
        self.invalidate_caches();
        summary
    }

    fn switch_to(&self, ready: &ReadySnapshot) -> Result<ApplySummary, ApplyError> {
        let mut writer = self.writer()?;
        check_snapshot(read_state(&writer)?.cursor, ready.target)?;
        let mut reader = self.reader()?;
        let held = std::time::Instant::now();
        // The old file's WAL must not be replayed onto the new file: fold it in and empty it
        // before the old connections close (closing the last one removes it).
        let busy: i64 =
            writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy != 0 {
            return Err(ApplyError::Store(StoreError::Sqlite(
                rusqlite::Error::InvalidParameterName(
                    "the replica's WAL could not be checkpointed before the switch".into(),
                ),
            )));
        }
        // In-memory stand-ins hold the locks' places while the file is switched; they are
        // opened first so nothing can fail between closing the first old connection and the second.
        let (stand_in_writer, stand_in_reader) =
            (Connection::open_in_memory()?, Connection::open_in_memory()?);
        drop(std::mem::replace(&mut *reader, stand_in_reader));
        drop(std::mem::replace(&mut *writer, stand_in_writer));
        let checkpointed = held.elapsed();
        let switched = self.rename_into_place(&ready.path);
        let renamed = held.elapsed();
        // Whatever happened, reopen the file now at the replica's path (the old one if the rename
        // failed, the new one if only the directory sync did): never leave the stand-ins serving.
        let reopened = open_connection(&self.path, false).and_then(|new_writer| {
            *writer = new_writer;
            *reader = open_connection(&self.path, false)?;
            Ok(())
        });
        switched?;
        reopened?;
        // How long logins waited for the replica: the one pause a snapshot costs them.
        tracing::info!(
            held_ms = held.elapsed().as_secs_f64() * 1e3,
            checkpoint_ms = checkpointed.as_secs_f64() * 1e3,
            rename_and_sync_ms = (renamed - checkpointed).as_secs_f64() * 1e3,
            "replica switched to the snapshot file"
        );
        Ok(ApplySummary {
            cursor: ready.target,
            applied: true,
            users: ready.users,
            roles: ready.roles,
        })
    }

    /// Renames the side file over the replica and syncs the directory so the rename survives a
    /// power cut.
    fn rename_into_place(&self, side_file: &Path) -> Result<(), ApplyError> {
        // Keep the old file linked (see `retired_path`); without the link the rename still
        // works, only slower.
        let retired = retired_path(&self.path);
        remove_if_there(&retired).map_err(io(&retired))?;
        if let Err(e) = std::fs::hard_link(&self.path, &retired) {
            tracing::debug!(error = %e, "could not keep a link to the replaced replica; the switch frees it at once");
        }
        if let Err(e) = std::fs::rename(side_file, &self.path) {
            // The link is the live replica now, not a replaced one: it must not stay as
            // garbage for `discard_retired` to truncate.
            if let Err(unlink) = remove_if_there(&retired) {
                tracing::warn!(error = %unlink, "could not remove the second link to the replica after a failed switch");
            }
            return Err(io(side_file)(e));
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))
    }

    /// Removes the replaced replica file after a switch, a slice at a time from its end with
    /// `between_steps` before each (logins go first), so no single step holds the disk or a
    /// core for long. Nothing reads it: it is garbage, also after a crash (removed at start).
    pub fn discard_retired(&self, between_steps: &dyn Fn()) -> Result<(), StoreError> {
        let retired = retired_path(&self.path);
        let side_file = |source| StoreError::SideFile {
            path: retired.clone(),
            source,
        };
        let file = match std::fs::OpenOptions::new().write(true).open(&retired) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(side_file(e)),
        };
        let metadata = file.metadata().map_err(side_file)?;
        // Never the file being served (a link left by a switch whose rename failed): only the
        // name goes.
        let live = std::fs::metadata(&self.path).map_err(side_file)?;
        if (metadata.dev(), metadata.ino()) == (live.dev(), live.ino()) {
            drop(file);
            return remove_if_there(&retired).map_err(side_file);
        }
        let mut len = metadata.len();
        while len > 0 {
            between_steps();
            len = len.saturating_sub(RETIRE_STEP_BYTES);
            file.set_len(len).map_err(side_file)?;
        }
        drop(file);
        remove_if_there(&retired).map_err(side_file)
    }

    fn key_fingerprint(&self) -> Result<String, StoreError> {
        let conn = self.reader()?;
        let value = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'key_fingerprint'",
                [],
                |row| row.get(0),
            )
            .map_err(StoreError::Sqlite)?;
        Ok(value)
    }
}

impl SnapshotFile {
    pub fn target(&self) -> Cursor {
        self.target
    }

    fn conn(&self) -> Result<&Connection, ApplyError> {
        self.conn.as_ref().ok_or_else(|| {
            ApplyError::Store(StoreError::Sqlite(rusqlite::Error::InvalidParameterName(
                "snapshot side file already closed".into(),
            )))
        })
    }

    /// Writes one validated chunk.
    pub fn insert(&mut self, chunk: &ValidChunk) -> Result<(), ApplyError> {
        self.insert_roles(&chunk.roles)?;
        self.insert_users(&chunk.users)
    }

    pub fn insert_roles(&mut self, roles: &[RoleRecord]) -> Result<(), ApplyError> {
        let conn = self.conn()?;
        for role in roles {
            insert_role(conn, role)?;
        }
        self.write_back()
    }

    pub fn insert_users(&mut self, users: &[UserRecord]) -> Result<(), ApplyError> {
        let conn = self.conn()?;
        for user in users {
            insert_user(conn, user)?;
        }
        self.write_back()
    }

    /// Starts writing what SQLite has handed the kernel so far to disk once the file grew by
    /// [`WRITEBACK_BYTES`] since the last time, so the data goes to disk in small steps
    /// beside the logins' fsyncs instead of in one burst at the end (see the module comment).
    fn write_back(&mut self) -> Result<(), ApplyError> {
        let file = match &mut self.writeback {
            Some(file) => file,
            None => {
                let file = std::fs::File::open(&self.path).map_err(io(&self.path))?;
                self.writeback.insert(file)
            }
        };
        let length = file.metadata().map_err(io(&self.path))?.len();
        if length >= self.written_back + WRITEBACK_BYTES {
            start_writeback(file).map_err(io(&self.path))?;
            self.written_back = length;
        }
        Ok(())
    }

    /// Builds the indexes, records the cursor, commits, closes and syncs the side file.
    pub fn finish(self) -> Result<ReadySnapshot, ApplyError> {
        self.finish_pacing(&|| {})
    }

    /// [`SnapshotFile::finish`], calling `between_steps` before each of its long steps (one
    /// index build each, the reference check, the sync) so the caller can let logins go first.
    pub fn finish_pacing(mut self, between_steps: &dyn Fn()) -> Result<ReadySnapshot, ApplyError> {
        let indexes = std::mem::take(&mut self.indexes);
        for (_, sql) in &indexes {
            between_steps();
            self.conn()?.execute_batch(sql)?;
            self.write_back()?;
        }
        between_steps();
        let conn = self.conn()?;
        // The validator resolves references across chunks; the file checks them once more, so
        // a dangling one can never be switched in.
        let dangling: Option<(String, String)> = conn
            .query_row("PRAGMA foreign_key_check", [], |row| {
                Ok((row.get(0)?, row.get(2)?))
            })
            .optional()?;
        if let Some((table, parent)) = dangling {
            return Err(ApplyError::DanglingReference { table, parent });
        }
        set_meta(conn, "epoch", &self.target.epoch.to_string())?;
        set_meta(conn, "revision", &self.target.revision.to_string())?;
        set_meta(
            conn,
            "last_sync_at_ms",
            &unix_millis(SystemTime::now()).to_string(),
        )?;
        let users: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))?;
        let roles: i64 = conn.query_row("SELECT COUNT(*) FROM roles", [], |row| row.get(0))?;
        conn.execute_batch("COMMIT")?;
        // The replica is opened in WAL mode: switch now, while the side file is still scratch, so
        // reopening it after the rename needs no write (which could fail on a nearly-full disk).
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ApplyError::Store(StoreError::Sqlite(
                rusqlite::Error::InvalidParameterName(format!(
                    "the snapshot side file stayed in journal_mode {mode}, WAL required"
                )),
            )));
        }
        if let Some(conn) = self.conn.take() {
            conn.close().map_err(|(_, e)| ApplyError::from(e))?;
        }
        between_steps();
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(io(&self.path))?;
        Ok(ReadySnapshot {
            path: std::mem::take(&mut self.path),
            target: self.target,
            users: users as u64,
            roles: roles as u64,
        })
    }
}

/// Starts writing the file's dirty pages to disk without waiting for them (the final fsync
/// does): the build goes on while the disk works, and no burst is left for the end.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_writeback(file: &std::fs::File) -> Result<(), std::io::Error> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call (borrowed from `file`), and
    // sync_file_range takes no pointer; offset 0 and length 0 mean the whole file.
    let done =
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(file: &std::fs::File) -> Result<(), std::io::Error> {
    file.sync_data()
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        drop(self.conn.take());
        if !self.path.as_os_str().is_empty()
            && let Err(e) = discard_incoming(&self.replica)
        {
            tracing::warn!(error = %e, "could not remove an unfinished snapshot file");
        }
    }
}

impl Drop for ReadySnapshot {
    fn drop(&mut self) {
        // Still there when the install was refused (e.g. a batch moved the cursor past it).
        if self.path.exists()
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(error = %e, "could not remove a refused snapshot file");
        }
    }
}
