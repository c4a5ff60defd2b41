//! The two stores together: migration from the single-file replica, and quarantining one store
//! without touching the other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use super::*;
use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
use crate::lockout::LockoutPolicy;
use crate::model::{CredentialKind, Cursor};

const KEY: [u8; 32] = [9; 32];

struct Paths {
    _dir: tempfile::TempDir,
    replica: PathBuf,
    local: PathBuf,
}

fn paths() -> Paths {
    let dir = tempfile::tempdir().unwrap();
    Paths {
        replica: dir.path().join("replica.db"),
        local: dir.path().join("local.db"),
        _dir: dir,
    }
}

fn open_local(p: &Paths) -> (LocalStore, OpenOutcome) {
    LocalStore::open(&p.local, &p.replica).unwrap()
}

fn open_replica(p: &Paths) -> (Replica, OpenOutcome) {
    Replica::open(&p.replica, &KEY).unwrap()
}

/// A replica as the single-file releases wrote it (schema 3): cursor 4/17, a token, audit rows
/// 1–5 of which 1–2 were acknowledged (or all when `all_acked`), and a running lockout.
fn write_single_file_replica(path: &Path, all_acked: bool) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    for migration in &replica::schema::MIGRATIONS[..3] {
        conn.execute_batch(migration).unwrap();
    }
    conn.pragma_update(None, "user_version", 3).unwrap();
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('key_fingerprint', ?1), ('epoch', '4'), ('revision', '17')",
        [hex::encode(KEY)],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO sync_tokens (name, digest, created_at) VALUES ('central', zeroblob(32), 5)",
        [],
    )
    .unwrap();
    for seq in 1..=5 {
        conn.execute(
            "INSERT INTO audit_events (seq, uuid, at_ms, kind, method, source, outcome, reason)
             VALUES (?1, 'uuid-' || ?1, 1000, 'login', 1, 'socket uid=7', 'no_match', '')",
            [seq],
        )
        .unwrap();
    }
    let acked = if all_acked { 5 } else { 2 };
    conn.execute("DELETE FROM audit_events WHERE seq <= ?1", [acked])
        .unwrap();
    conn.execute(
        "INSERT INTO lockouts VALUES ('terminal', 0, 1000, 1, 4000000000000, 1000)",
        [],
    )
    .unwrap();
}

fn record() -> AuditRecord {
    AuditRecord::new(
        AuditKind::Login,
        Some(CredentialKind::Pin),
        "socket uid=7",
        AuditOutcome::NoMatch,
    )
}

fn table_names(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_single_file_replica_hands_its_terminal_state_to_the_local_store() {
    let p = paths();
    write_single_file_replica(&p.replica, false);
    let (local, outcome) = open_local(&p);
    assert_eq!(outcome, OpenOutcome::Opened);
    let (replica, outcome) = open_replica(&p);
    assert_eq!(outcome, OpenOutcome::Opened);
    assert_eq!(
        replica.state().unwrap().cursor,
        Cursor {
            epoch: 4,
            revision: 17
        }
    );
    assert!(
        !table_names(&p.replica)
            .iter()
            .any(|t| ["sync_tokens", "audit_events", "lockouts"].contains(&t.as_str())),
        "{:?}",
        table_names(&p.replica)
    );
    assert_eq!(local.tokens().unwrap()[0].name, "central");
    assert_eq!(
        local.identity().origin,
        "migrated from the single-file replica"
    );
    let rows = local.audit_after(0, 100).unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.seq, r.uuid.as_str()))
            .collect::<Vec<_>>(),
        vec![(3, "uuid-3"), (4, "uuid-4"), (5, "uuid-5")]
    );
    // The fixture's terminal lockout (a wall-clock deadline far ahead) keeps running.
    let policy = LockoutPolicy::default();
    let now = crate::clock::now();
    local.rebase_lockouts(now).unwrap();
    let locked = local
        .refusal(crate::lockout::Budget::Pin, "socket uid=1", &policy, now)
        .unwrap();
    assert!(
        matches!(locked, Some(ref r) if r.terminal_wide()),
        "{locked:?}"
    );
    assert_eq!(local.append_audit(&record()).unwrap().last_seq, 6);

    // A second start copies nothing again and keeps the stream.
    let stream = local.identity().stream_id.clone();
    drop((local, replica));
    let (local, _) = open_local(&p);
    assert_eq!(local.identity().stream_id, stream);
    assert_eq!(local.audit_stats().unwrap().backlog, 4);
}

#[test]
fn seqs_continue_after_the_last_one_written_when_everything_was_acknowledged() {
    let p = paths();
    write_single_file_replica(&p.replica, true);
    let (local, _) = open_local(&p);
    assert_eq!(local.audit_stats().unwrap().backlog, 0);
    assert_eq!(local.audit_stats().unwrap().last_seq, 5);
    assert_eq!(local.append_audit(&record()).unwrap().last_seq, 6);
}

#[test]
fn a_stop_between_the_two_migrations_copies_once_and_drops_afterwards() {
    let p = paths();
    write_single_file_replica(&p.replica, false);
    // The local store is created, then the daemon stops before the replica is migrated.
    drop(open_local(&p));
    assert!(table_names(&p.replica).contains(&"audit_events".to_owned()));
    let (local, _) = open_local(&p);
    let (_replica, _) = open_replica(&p);
    assert_eq!(local.audit_stats().unwrap().backlog, 3);
    assert_eq!(local.tokens().unwrap().len(), 1);
    assert!(!table_names(&p.replica).contains(&"audit_events".to_owned()));
}

#[test]
fn quarantining_the_replica_keeps_tokens_audit_and_lockouts() {
    let p = paths();
    write_single_file_replica(&p.replica, false);
    let (local, _) = open_local(&p);
    drop(open_replica(&p));
    let stream = local.identity().stream_id.clone();
    drop(local);
    std::fs::write(&p.replica, vec![0x42; 8192]).unwrap();
    let (local, outcome) = open_local(&p);
    assert_eq!(outcome, OpenOutcome::Opened);
    let (replica, outcome) = open_replica(&p);
    assert!(matches!(outcome, OpenOutcome::Quarantined { .. }));
    assert!(replica.state().unwrap().cursor.needs_snapshot());
    assert_eq!(local.identity().stream_id, stream);
    assert_eq!(local.tokens().unwrap().len(), 1);
    assert_eq!(local.audit_stats().unwrap().backlog, 3);
    assert_eq!(
        local
            .lockout_counters(&LockoutPolicy::default(), crate::clock::now())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_damaged_local_store_is_moved_aside_and_a_new_stream_starts() {
    let p = paths();
    let (local, _) = open_local(&p);
    local.append_audit(&record()).unwrap();
    let stream = local.identity().stream_id.clone();
    drop(local);
    let (replica, _) = open_replica(&p);
    drop(replica);
    std::fs::write(&p.local, vec![0x17; 8192]).unwrap();
    let (local, outcome) = open_local(&p);
    let OpenOutcome::Quarantined { moved_to, .. } = outcome else {
        panic!("expected a quarantine, got {outcome:?}");
    };
    assert_eq!(std::fs::read(moved_to).unwrap(), vec![0x17; 8192]);
    assert_ne!(local.identity().stream_id, stream);
    assert_eq!(local.audit_stats().unwrap().last_seq, 0);
    let origin = local.identity().origin.clone();
    assert!(
        origin.starts_with("replaced a damaged local store (moved to "),
        "{origin}"
    );
    drop(local);
    assert_eq!(open_local(&p).0.identity().origin, origin, "kept");
    // The replica is not touched.
    let (_replica, outcome) = open_replica(&p);
    assert_eq!(outcome, OpenOutcome::Opened);
}

#[test]
fn an_unreadable_old_replica_costs_only_the_copy() {
    let p = paths();
    std::fs::write(&p.replica, vec![0x42; 8192]).unwrap();
    let (local, outcome) = open_local(&p);
    assert_eq!(outcome, OpenOutcome::Opened);
    assert!(local.tokens().unwrap().is_empty());
    assert_eq!(local.identity().origin, "new");
    let (_replica, outcome) = open_replica(&p);
    assert!(matches!(outcome, OpenOutcome::Quarantined { .. }));
}

#[test]
fn the_local_store_takes_no_write_after_its_clean_close() {
    let p = paths();
    let (local, _) = open_local(&p);
    local.close_cleanly().unwrap();
    let refused = local.delete_token("central").unwrap_err();
    assert!(
        matches!(refused, StoreError::Closed { store: "local" }),
        "{refused:?}"
    );
    assert!(local.tokens().unwrap().is_empty());
}
