//! Floors measured with plain rusqlite: the same rows, the daemon's own schema (read from the
//! replica it created) and its pragmas (WAL, synchronous=FULL, foreign_keys=ON), no gRPC, no
//! validation, no PHC parsing or re-keying.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};

use crate::data::{self, GenUser};

/// The CREATE statements of the daemon's replica, in creation order.
pub fn schema_of(replica: &Path) -> Vec<String> {
    let conn =
        Connection::open_with_flags(replica, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'
             ORDER BY rowid",
        )
        .unwrap();
    stmt.query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// One user's rows, prepared before the clock starts.
pub struct Rows {
    user: GenUser,
    salt: [u8; 16],
    pin_digest: [u8; 32],
    key_digest: [u8; 32],
}

pub fn rows(users: usize) -> Vec<Rows> {
    let salt = data::account_salt();
    (0..users)
        .map(|i| {
            let user = data::user(i);
            let mut rng = data::Rng::new(data::SEED, 0xE000_0000 + i as u64);
            let (mut pin_digest, mut key_digest) = ([0u8; 32], [0u8; 32]);
            rng.fill(&mut pin_digest);
            rng.fill(&mut key_digest);
            Rows {
                user,
                salt,
                pin_digest,
                key_digest,
            }
        })
        .collect()
}

pub fn open(path: &Path, schema: &[String]) -> Connection {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let conn = Connection::open(path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    for sql in schema {
        conn.execute_batch(sql).unwrap();
    }
    conn
}

fn insert_user(tx: &Connection, r: &Rows) {
    let u = &r.user;
    let p = data::production_params();
    tx.prepare_cached(
        "INSERT INTO users (id, ordinal, first_name, last_name, email, active)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .unwrap()
    .execute((
        &u.id,
        u.ordinal,
        &u.first_name,
        &u.last_name,
        &u.email,
        u.active,
    ))
    .unwrap();
    let mut credential = tx
        .prepare_cached(
            "INSERT INTO credentials (user_id, kind, m_cost, t_cost, p_cost, output_len, salt, digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .unwrap();
    for (kind, digest) in [(1, &r.pin_digest), (2, &r.key_digest)] {
        credential
            .execute((
                &u.id,
                kind,
                p.m_cost(),
                p.t_cost(),
                p.p_cost(),
                data::OUTPUT_LEN as u32,
                r.salt.as_slice(),
                digest.as_slice(),
            ))
            .unwrap();
    }
    let mut role = tx
        .prepare_cached(
            "INSERT INTO user_roles (user_id, role_id, sales_point_id) VALUES (?1, ?2, ?3)",
        )
        .unwrap();
    for (role_id, sales_point) in &u.roles {
        role.execute((&u.id, role_id, sales_point)).unwrap();
    }
    let mut access = tx
        .prepare_cached("INSERT INTO user_access (user_id, kind, target) VALUES (?1, ?2, ?3)")
        .unwrap();
    for sp in &u.sales_points {
        access.execute((&u.id, 1, sp)).unwrap();
    }
}

/// The same roles and users inserted in one transaction, committed (fsync) — the floor of a
/// full snapshot. With `indexes_after`, the secondary indexes are dropped first and built again
/// before the commit (the technique the daemon's snapshot uses), still in one transaction.
pub fn bulk_insert(conn: &mut Connection, rows: &[Rows], indexes_after: bool) -> Duration {
    let roles = data::roles();
    let start = Instant::now();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    let indexes: Vec<(String, String)> = if indexes_after {
        tx.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    } else {
        Vec::new()
    };
    for (name, _) in &indexes {
        tx.execute_batch(&format!("DROP INDEX \"{name}\"")).unwrap();
    }
    for role in &roles {
        tx.prepare_cached("INSERT INTO roles (id, name, rank) VALUES (?1, ?2, ?3)")
            .unwrap()
            .execute((&role.id, &role.name, role.rank))
            .unwrap();
        let mut perm = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO role_permissions (role_id, permission, effect) VALUES (?1, ?2, ?3)",
            )
            .unwrap();
        for p in &role.permissions {
            perm.execute((&role.id, &p.name, p.effect as i64)).unwrap();
        }
    }
    for r in rows {
        insert_user(&tx, r);
    }
    for (_, sql) in &indexes {
        tx.execute_batch(sql).unwrap();
    }
    tx.commit().unwrap();
    start.elapsed()
}

/// One user replaced (delete with its dependent rows, insert again) in one committed
/// transaction — the floor of a one-user delta.
pub fn replace_one(conn: &mut Connection, r: &Rows) -> Duration {
    let start = Instant::now();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    tx.prepare_cached("DELETE FROM users WHERE id = ?1")
        .unwrap()
        .execute([&r.user.id])
        .unwrap();
    insert_user(&tx, r);
    tx.commit().unwrap();
    start.elapsed()
}
