#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::history::{BatchDigest, BatchHeader, HistoryError, REMEMBERED_BATCHES};
use crate::model::{
    CredentialKind, Effect, HashScheme, RoleAssignment, RolePermission, RoleRecord,
    StoredCredential, Terminal, UserRecord,
};
use crate::validate::{ValidChanges, ValidSnapshot, ValidationError};

const KEY: [u8; 32] = [9; 32];

fn open(dir: &tempfile::TempDir) -> Replica {
    Replica::open(&dir.path().join("replica.db"), &KEY)
        .unwrap()
        .0
}

/// A non-empty batch {base → new} whose digest names its position.
fn batch(base: Cursor, new_revision: u64) -> BatchHeader {
    BatchHeader {
        base,
        new_revision,
        empty: false,
        digest: BatchDigest::of(format!("{base}->{new_revision}").as_bytes()),
    }
}

fn scheme() -> HashScheme {
    HashScheme {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
        output_len: 32,
        salt: b"account-salt".to_vec(),
    }
}

fn user(id: &str, ordinal: i64, digest: u8) -> UserRecord {
    UserRecord {
        id: id.into(),
        ordinal,
        first_name: id.into(),
        last_name: String::new(),
        email: String::new(),
        active: true,
        credentials: vec![StoredCredential {
            kind: CredentialKind::Pin,
            scheme: scheme(),
            digest: [digest; 32],
        }],
        roles: vec![RoleAssignment {
            role_id: "cashier".into(),
            sales_point_id: None,
        }],
        sales_point_ids: vec!["sp".into()],
        sub_terminal_ids: vec![],
    }
}

fn cashier() -> RoleRecord {
    RoleRecord {
        id: "cashier".into(),
        name: "Cashier".into(),
        rank: 1,
        permissions: vec![RolePermission {
            name: "sale".into(),
            effect: Effect::Allow,
        }],
    }
}

fn terminal() -> Terminal {
    Terminal {
        sales_point_id: "sp".into(),
        sub_terminal_id: None,
    }
}

fn cursor(epoch: u64, revision: u64) -> Cursor {
    Cursor { epoch, revision }
}

fn seeded(dir: &tempfile::TempDir) -> Replica {
    let replica = open(dir);
    let snapshot = ValidSnapshot {
        users: vec![user("a", 1, 1), user("b", 2, 1)],
        roles: vec![cashier()],
    };
    replica.apply_snapshot(cursor(1, 5), snapshot).unwrap();
    replica
}

fn no_changes() -> ValidChanges {
    ValidChanges {
        upsert_users: vec![],
        delete_user_ids: vec![],
        upsert_roles: vec![],
        delete_role_ids: vec![],
    }
}

#[test]
fn new_replica_is_empty_and_needs_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, outcome) = Replica::open(&dir.path().join("r.db"), &KEY).unwrap();
    assert_eq!(outcome, OpenOutcome::Opened);
    assert!(replica.state().unwrap().cursor.needs_snapshot());
    let version: i64 = replica
        .reader()
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::current_version());
}

#[test]
fn snapshot_replaces_everything_and_finds_candidates_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let found = replica
        .candidates(CredentialKind::Pin, &[1; 32], &terminal())
        .unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(
        replica.hash_schemes(CredentialKind::Pin).unwrap(),
        vec![scheme()]
    );
    assert!(
        replica
            .hash_schemes(CredentialKind::Key)
            .unwrap()
            .is_empty()
    );

    let next = ValidSnapshot {
        users: vec![user("c", 1, 2)],
        roles: vec![cashier()],
    };
    let summary = replica.apply_snapshot(cursor(2, 1), next).unwrap();
    assert_eq!((summary.users, summary.roles), (1, 1));
    assert!(
        replica
            .candidates(CredentialKind::Pin, &[1; 32], &terminal())
            .unwrap()
            .is_empty()
    );
    let profile = replica.user_profile("c", &terminal()).unwrap().unwrap();
    assert_eq!(profile.permissions, vec!["sale"]);
    assert_eq!(replica.user_profile("a", &terminal()).unwrap(), None);
}

#[test]
fn every_distinct_hash_scheme_is_found_and_changes_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let replica = open(&dir);
    // Schemes that differ in each column of the index, shared by many users or by one.
    let variants: Vec<(CredentialKind, HashScheme)> = vec![
        (CredentialKind::Pin, scheme()),
        (
            CredentialKind::Pin,
            HashScheme {
                salt: b"account-salt-2".to_vec(),
                ..scheme()
            },
        ),
        (
            CredentialKind::Pin,
            HashScheme {
                output_len: 16,
                ..scheme()
            },
        ),
        (
            CredentialKind::Pin,
            HashScheme {
                p_cost: 2,
                ..scheme()
            },
        ),
        (
            CredentialKind::Pin,
            HashScheme {
                t_cost: 3,
                ..scheme()
            },
        ),
        (
            CredentialKind::Pin,
            HashScheme {
                m_cost: 32,
                ..scheme()
            },
        ),
        (CredentialKind::Key, scheme()),
        (
            CredentialKind::Key,
            HashScheme {
                m_cost: 128,
                salt: vec![0; 8],
                ..scheme()
            },
        ),
    ];
    let users: Vec<UserRecord> = (0..40)
        .map(|i| {
            let (kind, scheme) = variants[if i < 30 { 0 } else { i % variants.len() }].clone();
            let mut u = user(&format!("u{i:02}"), i as i64, i as u8);
            u.credentials = vec![StoredCredential {
                kind,
                scheme,
                digest: [i as u8; 32],
            }];
            u
        })
        .collect();
    let snapshot = ValidSnapshot {
        users,
        roles: vec![cashier()],
    };
    let users = snapshot.users.clone();
    replica.apply_snapshot(cursor(1, 1), snapshot).unwrap();
    let snapshot = ValidSnapshot {
        users,
        roles: vec![],
    };
    let mut expected: Vec<(CredentialKind, HashScheme)> = snapshot
        .users
        .iter()
        .map(|u| (u.credentials[0].kind, u.credentials[0].scheme.clone()))
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(expected.len(), variants.len());
    for kind in [CredentialKind::Pin, CredentialKind::Key] {
        let mut want: Vec<HashScheme> = expected
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, s)| s.clone())
            .collect();
        want.sort();
        let mut got = replica.hash_schemes(kind).unwrap();
        got.sort();
        assert_eq!(got, want, "{kind:?}");
    }

    // A change that removes every holder of a scheme and brings a new one is seen.
    let holders: Vec<String> = snapshot
        .users
        .iter()
        .filter(|u| u.credentials[0].scheme.m_cost == 128)
        .map(|u| u.id.clone())
        .collect();
    assert!(!holders.is_empty());
    let mut newcomer = user("new", 99, 99);
    newcomer.credentials[0].scheme.salt = b"rotated-salt".to_vec();
    let mut changes = no_changes();
    changes.delete_user_ids = holders;
    changes.upsert_users = vec![newcomer];
    replica
        .apply_changes(&batch(cursor(1, 1), 2), |_| Ok(changes))
        .unwrap();
    let keys = replica.hash_schemes(CredentialKind::Key).unwrap();
    assert_eq!(keys, vec![scheme()]);
    let pins = replica.hash_schemes(CredentialKind::Pin).unwrap();
    assert!(pins.iter().any(|s| s.salt == b"rotated-salt"));
    assert_eq!(pins.len(), 7);
}

#[test]
fn changes_need_the_current_base_and_replays_are_no_ops() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let upsert = || {
        Ok(ValidChanges {
            upsert_users: vec![user("c", 3, 3)],
            ..no_changes()
        })
    };
    let applied = replica
        .apply_changes(&batch(cursor(1, 5), 6), |_| upsert())
        .unwrap();
    assert!(applied.applied);
    assert_eq!(applied.cursor, cursor(1, 6));
    // Replay: validation is not even consulted.
    let replay = replica
        .apply_changes(
            &batch(cursor(1, 5), 6),
            |_| -> Result<ValidChanges, ValidationError> {
                panic!("a replay must not be validated or applied")
            },
        )
        .unwrap();
    assert!(!replay.applied);
    // Gap and another epoch.
    for (base, new) in [(cursor(1, 7), 8), (cursor(2, 6), 7)] {
        match replica.apply_changes(&batch(base, new), |_| upsert()) {
            Err(ApplyError::History(refusal)) => assert_eq!(refusal.current(), cursor(1, 6)),
            other => panic!("{other:?}"),
        }
    }
    // Another batch at the applied revision: a conflict, not a replay.
    let mut other = batch(cursor(1, 5), 6);
    other.digest = BatchDigest::of(b"another batch");
    assert!(matches!(
        replica.apply_changes(&other, |_| upsert()),
        Err(ApplyError::History(HistoryError::ConflictingBatch { .. }))
    ));
    // A lower epoch is stale.
    assert!(matches!(
        replica.apply_changes(&batch(cursor(0, 9), 10), |_| upsert()),
        Err(ApplyError::History(HistoryError::StaleEpoch { .. }))
    ));
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 6));
}

#[test]
fn a_failed_batch_rolls_back_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    // The role delete fails after the user delete and upsert were written in the transaction.
    let result = replica.apply_changes(&batch(cursor(1, 5), 6), |_| {
        Ok(ValidChanges {
            delete_user_ids: vec!["a".into()],
            upsert_users: vec![user("c", 3, 3)],
            delete_role_ids: vec!["cashier".into()],
            ..no_changes()
        })
    });
    assert!(matches!(result, Err(ApplyError::RoleInUse { ref user_id, .. }) if user_id == "b"));
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
    assert!(replica.user_profile("a", &terminal()).unwrap().is_some());
    assert!(replica.user_profile("c", &terminal()).unwrap().is_none());
    // A validation error: nothing written either.
    let result = replica.apply_changes(&batch(cursor(1, 5), 6), |role_known| {
        assert!(role_known("cashier") && !role_known("ghost"));
        Err(ValidationError::DuplicateUser("x".into()))
    });
    assert!(matches!(result, Err(ApplyError::Invalid(_))));
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
}

fn index_definitions(replica: &Replica) -> Vec<(String, String)> {
    let conn = replica.reader().unwrap();
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name")
        .unwrap();
    stmt.query_map([], |row| {
        Ok((
            row.get(0)?,
            row.get::<_, Option<String>>(1)?.unwrap_or_default(),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[test]
fn snapshot_rebuilds_its_indexes_and_a_failed_one_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = open(&dir);
    let before = index_definitions(&fresh);
    assert!(
        before
            .iter()
            .any(|(name, _)| name == "credentials_by_digest")
    );
    drop(fresh);
    let replica = seeded(&dir);
    assert_eq!(index_definitions(&replica), before);
    // The candidates query still finds users through the rebuilt index.
    assert_eq!(
        replica
            .candidates(CredentialKind::Pin, &[1; 32], &terminal())
            .unwrap()
            .len(),
        2
    );
    // A snapshot that fails after the indexes were dropped (a role the store cannot reference)
    // leaves the replica and its indexes as they were.
    let mut ghost = user("g", 1, 7);
    ghost.roles = vec![RoleAssignment {
        role_id: "ghost".into(),
        sales_point_id: None,
    }];
    let broken = ValidSnapshot {
        users: vec![user("c", 1, 2), ghost],
        roles: vec![cashier()],
    };
    assert!(replica.apply_snapshot(cursor(1, 6), broken).is_err());
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
    assert_eq!(index_definitions(&replica), before);
    assert!(replica.user_profile("a", &terminal()).unwrap().is_some());
    assert!(replica.user_profile("c", &terminal()).unwrap().is_none());
}

#[test]
fn stale_snapshot_in_the_same_epoch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let empty = ValidSnapshot {
        users: vec![],
        roles: vec![],
    };
    assert!(matches!(
        replica.apply_snapshot(cursor(1, 4), empty),
        Err(ApplyError::History(HistoryError::StaleSnapshot { .. }))
    ));
    assert_eq!(replica.counts(&terminal()).unwrap().users, 2);
}

#[test]
fn replica_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    drop(seeded(&dir));
    let replica = open(&dir);
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
    assert_eq!(replica.counts(&terminal()).unwrap().users_at_terminal, 2);
}

#[test]
fn garbage_file_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    std::fs::write(&path, vec![0x42; 8192]).unwrap();
    let (replica, outcome) = Replica::open(&path, &KEY).unwrap();
    let OpenOutcome::Quarantined { moved_to, .. } = outcome else {
        panic!("expected quarantine");
    };
    assert!(moved_to.exists());
    assert_eq!(std::fs::read(&moved_to).unwrap(), vec![0x42; 8192]);
    assert!(replica.state().unwrap().cursor.needs_snapshot());
}

#[test]
fn damaged_pages_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let replica = seeded(&dir);
    replica.checkpoint().unwrap();
    drop(replica);
    // Overwrite everything after the header page with noise.
    let mut bytes = std::fs::read(&path).unwrap();
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i * 31 % 251) as u8;
    }
    std::fs::write(&path, bytes).unwrap();
    let (_, outcome) = Replica::open(&path, &KEY).unwrap();
    assert!(
        matches!(outcome, OpenOutcome::Quarantined { .. }),
        "{outcome:?}"
    );
}

#[test]
fn another_terminal_key_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    drop(seeded(&dir));
    let (replica, outcome) = Replica::open(&dir.path().join("replica.db"), &[1; 32]).unwrap();
    assert!(
        matches!(outcome, OpenOutcome::Quarantined { ref reason, .. } if reason.contains("another terminal key"))
    );
    assert!(replica.state().unwrap().cursor.needs_snapshot());
}

#[test]
fn a_version_1_database_is_migrated_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('key_fingerprint', ?1), ('epoch', '4'), ('revision', '2')",
            [hex::encode(KEY)],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO sync_tokens (name, digest, created_at) VALUES ('central', x'00', 0)",
            [],
        )
        .unwrap();
    }
    let (replica, outcome) = Replica::open(&path, &KEY).unwrap();
    assert_eq!(outcome, OpenOutcome::Opened);
    assert_eq!(replica.state().unwrap().cursor, cursor(4, 2));
    let version: i64 = replica
        .reader()
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::current_version());
    // The terminal's own tables went to the local store.
    let left: i64 = replica
        .reader()
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('sync_tokens', 'audit_events', 'lockouts')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn shared_digests_are_grouped_with_who_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let groups = replica.shared_credentials(&terminal()).unwrap();
    assert_eq!(groups.len(), 1);
    let (kind, people) = &groups[0];
    assert_eq!(*kind, CredentialKind::Pin);
    let mut ids: Vec<_> = people.iter().map(|p| p.user_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["a", "b"]);
    let held = replica.held_credentials("a", &terminal()).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].holders.len(), 2);
    let facts = replica.user_facts("a", &terminal()).unwrap().unwrap();
    assert!(facts.assigned_to_sales_point && !facts.assigned_to_sub_terminal);
    assert_eq!(facts.person.ordinal, 1);
    assert!(replica.user_facts("nobody", &terminal()).unwrap().is_none());
}

#[test]
fn missing_tables_are_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    drop(seeded(&dir));
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE user_access;")
        .unwrap();
    drop(conn);
    let (replica, outcome) = Replica::open(&path, &KEY).unwrap();
    assert!(
        matches!(outcome, OpenOutcome::Quarantined { ref reason, .. } if reason.contains("no such table")),
        "{outcome:?}"
    );
    assert!(replica.state().unwrap().cursor.needs_snapshot());
}

#[test]
fn only_the_last_batches_are_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let last = 5 + REMEMBERED_BATCHES + 3;
    for revision in 6..=last {
        replica
            .apply_changes(&batch(cursor(1, revision - 1), revision), |_| {
                Ok(no_changes())
            })
            .unwrap();
    }
    let oldest_kept = last - REMEMBERED_BATCHES + 1;
    let replay = replica
        .apply_changes(&batch(cursor(1, oldest_kept - 1), oldest_kept), |_| {
            Ok(no_changes())
        })
        .unwrap();
    assert!(!replay.applied);
    assert!(matches!(
        replica.apply_changes(&batch(cursor(1, oldest_kept - 2), oldest_kept - 1), |_| {
            Ok(no_changes())
        }),
        Err(ApplyError::History(HistoryError::UnverifiableReplay { .. }))
    ));
}

fn chunk(users: Vec<UserRecord>, roles: Vec<RoleRecord>) -> crate::snapshot::ValidChunk {
    crate::snapshot::ValidChunk { users, roles }
}

#[test]
fn a_snapshot_built_beside_the_replica_is_switched_in_and_read_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let mut file = replica.begin_snapshot(cursor(1, 7)).unwrap();
    assert!(incoming_path(replica.path()).exists());
    file.insert(&chunk(vec![user("c", 3, 3)], vec![])).unwrap();
    // The live replica keeps answering while the side file is written.
    assert!(replica.user_profile("a", &terminal()).unwrap().is_some());
    file.insert(&chunk(vec![user("d", 4, 4)], vec![cashier()]))
        .unwrap();
    let ready = file.finish().unwrap();
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
    let summary = replica.install_snapshot(ready).unwrap();
    assert_eq!(
        (summary.cursor, summary.users, summary.roles),
        (cursor(1, 7), 2, 1)
    );
    assert!(!incoming_path(replica.path()).exists());
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 7));
    assert!(replica.user_profile("a", &terminal()).unwrap().is_none());
    assert!(replica.user_profile("d", &terminal()).unwrap().is_some());
    assert_eq!(
        replica
            .candidates(CredentialKind::Pin, &[4; 32], &terminal())
            .unwrap()
            .len(),
        1
    );
    // Indexes are all there, and the writer works on the new file.
    let names: Vec<String> = index_definitions(&replica)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.contains(&"credentials_by_digest".to_owned()),
        "{names:?}"
    );
    replica
        .apply_changes(&batch(cursor(1, 7), 8), |_| Ok(no_changes()))
        .unwrap();
    drop(replica);
    let reopened = open(&dir);
    assert_eq!(reopened.state().unwrap().cursor, cursor(1, 8));
    let check: String = reopened
        .reader()
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn a_finished_side_file_is_already_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let mut file = replica.begin_snapshot(cursor(1, 7)).unwrap();
    file.insert(&chunk(vec![user("c", 3, 3)], vec![cashier()]))
        .unwrap();
    let ready = file.finish().unwrap();
    // Header bytes 18/19 are the read/write format versions: 2 = WAL. Reopening a file still in
    // rollback mode after the rename would have to write page 1 first.
    let header = std::fs::read(incoming_path(replica.path())).unwrap();
    assert_eq!((header[18], header[19]), (2, 2));
    drop(ready);
}

#[test]
fn a_failed_switch_leaves_the_old_replica_serving() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let mut file = replica.begin_snapshot(cursor(1, 7)).unwrap();
    file.insert(&chunk(vec![user("c", 3, 3)], vec![cashier()]))
        .unwrap();
    let ready = file.finish().unwrap();
    // The rename fails: its source is gone.
    std::fs::remove_file(incoming_path(replica.path())).unwrap();
    let failed = replica.install_snapshot(ready).unwrap_err();
    assert!(
        matches!(failed, ApplyError::Store(StoreError::SideFile { .. })),
        "{failed:?}"
    );
    // Reads, writes, a later snapshot and the clean close all work on the old file.
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
    assert!(replica.user_profile("a", &terminal()).unwrap().is_some());
    replica
        .apply_changes(&batch(cursor(1, 5), 6), |_| Ok(no_changes()))
        .unwrap();
    let file = replica.begin_snapshot(cursor(1, 8)).unwrap();
    replica.install_snapshot(file.finish().unwrap()).unwrap();
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 8));
    replica.close_cleanly().unwrap();
}

#[test]
fn a_snapshot_applied_whole_leaves_no_retired_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    assert!(!dir.path().join("replica.db.retired").exists());
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
}

#[test]
fn a_failed_switch_leaves_no_retired_link_to_the_live_replica() {
    // grpc/sync.rs calls `discard_retired` after every `install_snapshot`, failed or not. When the
    // rename fails after the old file was linked as `replica.db.retired`, that link is the live
    // replica: discarding it truncates the file the daemon is serving from.
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let file = replica.begin_snapshot(cursor(1, 7)).unwrap();
    let ready = file.finish().unwrap();
    std::fs::remove_file(incoming_path(replica.path())).unwrap();
    replica.install_snapshot(ready).unwrap_err();
    // What grpc/sync.rs does next, whatever the install's outcome.
    replica.discard_retired(&|| {}).unwrap();
    assert!(
        std::fs::metadata(replica.path()).unwrap().len() > 0,
        "the live replica was truncated"
    );
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
    assert!(replica.user_profile("a", &terminal()).unwrap().is_some());
    // However such a link came about, discarding it never truncates the file being served.
    std::fs::hard_link(replica.path(), dir.path().join("replica.db.retired")).unwrap();
    replica.discard_retired(&|| {}).unwrap();
    assert!(!dir.path().join("replica.db.retired").exists());
    assert!(replica.user_profile("a", &terminal()).unwrap().is_some());
    replica.close_cleanly().unwrap();
    let replica = open(&dir);
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
}

#[test]
fn the_replaced_file_stays_linked_through_the_switch_and_is_freed_in_steps_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let path = dir.path().join("replica.db");
    let retired = dir.path().join("replica.db.retired");
    let old_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    let file = replica.begin_snapshot(cursor(1, 8)).unwrap();
    replica.install_snapshot(file.finish().unwrap()).unwrap();
    // The rename freed nothing: the old file is still there under the second link.
    let kept = std::fs::metadata(&retired).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&kept), old_inode);
    assert!(kept.len() > 0);
    let steps = std::cell::Cell::new(0);
    replica
        .discard_retired(&|| steps.set(steps.get() + 1))
        .unwrap();
    assert!(steps.get() >= 1);
    assert!(!retired.exists());
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 8));
    // A link left by a crash between the switch and the removal is garbage at the next start.
    std::fs::hard_link(&path, &retired).unwrap();
    crate::store::discard_incoming(&path).unwrap();
    assert!(!retired.exists());
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 8));
}

#[test]
fn no_write_follows_the_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    replica.close_cleanly().unwrap();
    let refused = replica
        .apply_changes(&batch(cursor(1, 5), 6), |_| Ok(no_changes()))
        .unwrap_err();
    assert!(
        refused.to_string().contains("closed for shutdown"),
        "{refused}"
    );
    // Reads still answer until the process exits.
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
    drop(replica);
    assert_eq!(open(&dir).state().unwrap().cursor, cursor(1, 5));
}

#[test]
fn an_unfinished_snapshot_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    let mut file = replica.begin_snapshot(cursor(2, 1)).unwrap();
    file.insert(&chunk(vec![user("c", 3, 3)], vec![cashier()]))
        .unwrap();
    drop(file);
    assert!(!incoming_path(replica.path()).exists());
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
    assert!(replica.user_profile("a", &terminal()).unwrap().is_some());
}

#[test]
fn a_batch_applied_during_the_build_is_kept_unless_the_snapshot_is_newer() {
    let dir = tempfile::tempdir().unwrap();
    let replica = seeded(&dir);
    // Snapshot at 1:6 is started; batch 1:5 → 1:7 lands meanwhile: the snapshot is now older.
    let file = replica.begin_snapshot(cursor(1, 6)).unwrap();
    replica
        .apply_changes(&batch(cursor(1, 5), 7), |_| {
            Ok(ValidChanges {
                upsert_users: vec![user("c", 3, 3)],
                ..no_changes()
            })
        })
        .unwrap();
    let refused = replica
        .install_snapshot(file.finish().unwrap())
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ApplyError::History(HistoryError::StaleSnapshot { .. })
        ),
        "{refused:?}"
    );
    assert!(!incoming_path(replica.path()).exists());
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 7));
    assert!(replica.user_profile("c", &terminal()).unwrap().is_some());
    // A stale target is refused before anything is written.
    assert!(matches!(
        replica.begin_snapshot(cursor(0, 9)),
        Err(ApplyError::History(HistoryError::StaleEpoch { .. }))
    ));
}

#[test]
fn quick_check_runs_only_after_an_exit_that_was_not_clean() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let replica = seeded(&dir);
    let root: usize = replica
        .reader()
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'credentials_by_digest'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    replica.close_cleanly().unwrap();
    drop(replica);
    // Damage a page the start does not read: the root of a credentials index.
    let mut bytes = std::fs::read(&path).unwrap();
    let page = (root - 1) * 4096..root * 4096;
    for (i, b) in bytes[page].iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    std::fs::write(&path, bytes).unwrap();
    // Closed cleanly: the start reads the schema and meta only, and does not see it.
    let (replica, outcome) = Replica::open(&path, &KEY).unwrap();
    assert_eq!(outcome, OpenOutcome::Opened);
    assert_eq!(replica.state().unwrap().cursor, cursor(1, 5));
    // This run ends without closing cleanly: the next start checks the whole file.
    drop(replica);
    let (_, outcome) = Replica::open(&path, &KEY).unwrap();
    assert!(
        matches!(&outcome, OpenOutcome::Quarantined { reason, .. } if reason.contains("quick_check")),
        "{outcome:?}"
    );
}
