//! Applying snapshots and incremental batches, each in one transaction.

use std::cell::RefCell;
use std::time::SystemTime;

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior};

use super::{Replica, StoreError, read_state};
use crate::history::{
    AppliedBatch, BatchDecision, BatchDigest, BatchHeader, HistoryError, REMEMBERED_BATCHES,
    check_batch,
};
use crate::model::{Cursor, RoleRecord, UserRecord};
use crate::snapshot::ValidChunk;
use crate::store::sqlite::{set_meta, unix_millis};
use crate::validate::{ValidChanges, ValidSnapshot, ValidationError, check_scheme_count};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("role \"{role_id}\" cannot be deleted: user \"{user_id}\" still holds it")]
    RoleInUse { role_id: String, user_id: String },
    #[error("snapshot: a {table} row references a missing {parent} row")]
    DanglingReference { table: String, parent: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        ApplyError::Store(StoreError::Sqlite(e))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplySummary {
    pub cursor: Cursor,
    /// False for an idempotent replay of an already-applied batch.
    pub applied: bool,
    pub users: u64,
    pub roles: u64,
}

impl Replica {
    /// Replaces the whole replica with an already validated `snapshot` at `target`, through the
    /// same side file and switch as a streamed one (the demo account, tests).
    pub fn apply_snapshot(
        &self,
        target: Cursor,
        snapshot: ValidSnapshot,
    ) -> Result<ApplySummary, ApplyError> {
        let mut file = self.begin_snapshot(target)?;
        file.insert(&ValidChunk {
            users: snapshot.users,
            roles: snapshot.roles,
        })?;
        let installed = self.install_snapshot(file.finish()?);
        // Nothing else frees the replaced file on this path: it would stay until the next
        // snapshot or start.
        if let Err(e) = self.discard_retired(&|| {}) {
            tracing::warn!(error = %e, "could not remove the replaced replica file; it is removed at the next start");
        }
        installed
    }

    /// Applies an incremental batch if its base is the replica's cursor; acknowledges it again
    /// if this very batch was applied before (see [`check_batch`]). `validate` runs inside the
    /// transaction, before any write, with a lookup of the roles the replica holds.
    pub fn apply_changes(
        &self,
        batch: &BatchHeader,
        validate: impl FnOnce(&dyn Fn(&str) -> bool) -> Result<ValidChanges, ValidationError>,
    ) -> Result<ApplySummary, ApplyError> {
        self.apply_changes_bounded(batch, usize::MAX, validate)
    }

    /// [`Replica::apply_changes`], refused (nothing applied) when the replica would hold more
    /// than `max_schemes` distinct hash schemes per credential kind afterwards.
    pub fn apply_changes_bounded(
        &self,
        batch: &BatchHeader,
        max_schemes: usize,
        validate: impl FnOnce(&dyn Fn(&str) -> bool) -> Result<ValidChanges, ValidationError>,
    ) -> Result<ApplySummary, ApplyError> {
        let summary = self.write_changes(batch, max_schemes, validate);
        self.invalidate_caches();
        summary
    }

    fn write_changes(
        &self,
        batch: &BatchHeader,
        max_schemes: usize,
        validate: impl FnOnce(&dyn Fn(&str) -> bool) -> Result<ValidChanges, ValidationError>,
    ) -> Result<ApplySummary, ApplyError> {
        let BatchHeader {
            base,
            new_revision,
            digest,
            ..
        } = *batch;
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = read_state(&tx)?.cursor;
        let mut lookup_failed = None;
        let decision = check_batch(current, batch, |revision| {
            remembered_batch(&tx, current.epoch, revision)
                .map_err(|e| lookup_failed = Some(e))
                .ok()
                .flatten()
        });
        if let Some(e) = lookup_failed {
            return Err(e.into());
        }
        if decision? == BatchDecision::Replay {
            // The same batch applied before, or a heartbeat: acknowledge so central moves on.
            set_meta(
                &tx,
                "last_sync_at_ms",
                &unix_millis(SystemTime::now()).to_string(),
            )?;
            let (users, roles) = counts(&tx)?;
            tx.commit()?;
            return Ok(ApplySummary {
                cursor: current,
                applied: false,
                users,
                roles,
            });
        }
        if new_revision <= base.revision {
            return Err(ValidationError::RevisionNotAfterBase {
                base: base.revision,
                new: new_revision,
            }
            .into());
        }
        let changes = {
            let lookup = RefCell::new(tx.prepare_cached("SELECT 1 FROM roles WHERE id = ?1")?);
            let role_in_replica = |id: &str| lookup.borrow_mut().exists([id]).unwrap_or(false);
            validate(&role_in_replica)?
        };
        for id in &changes.delete_user_ids {
            tx.prepare_cached("DELETE FROM users WHERE id = ?1")?
                .execute([id])?;
        }
        for role in &changes.upsert_roles {
            // Permissions are replaced; user assignments to the role stay.
            tx.prepare_cached(
                "INSERT INTO roles (id, name, rank) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET name = excluded.name, rank = excluded.rank",
            )?
            .execute((&role.id, &role.name, role.rank))?;
            tx.prepare_cached("DELETE FROM role_permissions WHERE role_id = ?1")?
                .execute([&role.id])?;
            insert_permissions(&tx, role)?;
        }
        for user in &changes.upsert_users {
            tx.prepare_cached("DELETE FROM users WHERE id = ?1")?
                .execute([&user.id])?;
        }
        if max_schemes < usize::MAX {
            // The schemes of every credential that stays, then the new ones in batch order.
            let kept = super::read::distinct_schemes(&tx)?;
            check_scheme_count(&kept, &changes.upsert_users, max_schemes)?;
        }
        for user in &changes.upsert_users {
            insert_user(&tx, user)?;
        }
        for role_id in &changes.delete_role_ids {
            let holder: Option<String> = tx
                .prepare_cached(
                    "SELECT user_id FROM user_roles WHERE role_id = ?1 ORDER BY user_id LIMIT 1",
                )?
                .query_row([role_id], |row| row.get(0))
                .optional()?;
            if let Some(user_id) = holder {
                return Err(ApplyError::RoleInUse {
                    role_id: role_id.clone(),
                    user_id,
                });
            }
            tx.prepare_cached("DELETE FROM roles WHERE id = ?1")?
                .execute([role_id])?;
        }
        remember_batch(
            &tx,
            AppliedBatch {
                base,
                new_revision,
                digest,
            },
        )?;
        finish(
            tx,
            Cursor {
                epoch: base.epoch,
                revision: new_revision,
            },
        )
    }
}

/// The batch that ended at `revision` in `epoch`, if it is among the last ones remembered.
fn remembered_batch(
    tx: &Transaction<'_>,
    epoch: u64,
    revision: u64,
) -> Result<Option<AppliedBatch>, rusqlite::Error> {
    tx.prepare_cached(
        "SELECT base_revision, digest FROM applied_batches WHERE epoch = ?1 AND revision = ?2",
    )?
    .query_row((epoch as i64, revision as i64), |row| {
        let digest: Vec<u8> = row.get(1)?;
        Ok((row.get::<_, i64>(0)?, digest))
    })
    .optional()
    .map(|found| {
        found.and_then(|(base_revision, digest)| {
            Some(AppliedBatch {
                base: Cursor {
                    epoch,
                    revision: base_revision as u64,
                },
                new_revision: revision,
                digest: BatchDigest(digest.try_into().ok()?),
            })
        })
    })
}

/// Records an applied batch and forgets all but the last [`REMEMBERED_BATCHES`] of its epoch.
fn remember_batch(tx: &Transaction<'_>, batch: AppliedBatch) -> Result<(), rusqlite::Error> {
    let epoch = batch.base.epoch as i64;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO applied_batches (epoch, revision, base_revision, digest)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute((
        epoch,
        batch.new_revision as i64,
        batch.base.revision as i64,
        batch.digest.0.as_slice(),
    ))?;
    tx.prepare_cached("DELETE FROM applied_batches WHERE epoch != ?1 OR revision <= ?2 - ?3")?
        .execute((epoch, batch.new_revision as i64, REMEMBERED_BATCHES as i64))?;
    Ok(())
}

/// The indexes a snapshot rebuilds: every declared index (not the primary keys) on the tables
/// it rewrites, as (name, CREATE statement) from the schema itself.
pub(super) fn secondary_indexes(
    tx: &rusqlite::Connection,
) -> Result<Vec<(String, String)>, rusqlite::Error> {
    let mut stmt = tx.prepare(
        "SELECT name, sql FROM sqlite_master
         WHERE type = 'index' AND sql IS NOT NULL
           AND tbl_name IN ('credentials', 'user_roles', 'user_access', 'users',
                            'role_permissions', 'roles')
         ORDER BY name",
    )?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

fn finish(tx: Transaction<'_>, cursor: Cursor) -> Result<ApplySummary, ApplyError> {
    set_meta(&tx, "epoch", &cursor.epoch.to_string())?;
    set_meta(&tx, "revision", &cursor.revision.to_string())?;
    set_meta(
        &tx,
        "last_sync_at_ms",
        &unix_millis(SystemTime::now()).to_string(),
    )?;
    let (users, roles) = counts(&tx)?;
    tx.commit()?;
    Ok(ApplySummary {
        cursor,
        applied: true,
        users,
        roles,
    })
}

fn counts(tx: &Transaction<'_>) -> Result<(u64, u64), rusqlite::Error> {
    let users: i64 = tx.query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))?;
    let roles: i64 = tx.query_row("SELECT COUNT(*) FROM roles", [], |row| row.get(0))?;
    Ok((users as u64, roles as u64))
}

pub(super) fn insert_role(
    tx: &rusqlite::Connection,
    role: &RoleRecord,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached("INSERT INTO roles (id, name, rank) VALUES (?1, ?2, ?3)")?
        .execute((&role.id, &role.name, role.rank))?;
    insert_permissions(tx, role)
}

fn insert_permissions(tx: &rusqlite::Connection, role: &RoleRecord) -> Result<(), rusqlite::Error> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO role_permissions (role_id, permission, effect) VALUES (?1, ?2, ?3)",
    )?;
    for permission in &role.permissions {
        insert.execute((&role.id, &permission.name, permission.effect.as_db()))?;
    }
    Ok(())
}

pub(super) fn insert_user(
    tx: &rusqlite::Connection,
    user: &UserRecord,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO users (id, ordinal, first_name, last_name, email, active)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute((
        &user.id,
        user.ordinal,
        &user.first_name,
        &user.last_name,
        &user.email,
        user.active,
    ))?;
    let mut credential = tx.prepare_cached(
        "INSERT INTO credentials (user_id, kind, m_cost, t_cost, p_cost, output_len, salt, digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for c in &user.credentials {
        credential.execute((
            &user.id,
            c.kind.as_db(),
            c.scheme.m_cost,
            c.scheme.t_cost,
            c.scheme.p_cost,
            c.scheme.output_len,
            &c.scheme.salt,
            c.digest.as_slice(),
        ))?;
    }
    let mut role = tx.prepare_cached(
        "INSERT INTO user_roles (user_id, role_id, sales_point_id) VALUES (?1, ?2, ?3)",
    )?;
    for assignment in &user.roles {
        role.execute((
            &user.id,
            &assignment.role_id,
            assignment.sales_point_id.as_deref().unwrap_or(""),
        ))?;
    }
    let mut access =
        tx.prepare_cached("INSERT INTO user_access (user_id, kind, target) VALUES (?1, ?2, ?3)")?;
    for id in &user.sales_point_ids {
        access.execute((&user.id, 1, id))?;
    }
    for id in &user.sub_terminal_ids {
        access.execute((&user.id, 2, id))?;
    }
    Ok(())
}
