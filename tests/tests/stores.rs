//! The two stores through the real binary: replica.db holds central's data, local.db the
//! terminal's own state; migration from the single-file release; quarantining the replica keeps
//! tokens, audit and lockouts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;
use tillgate_tests::*;
use tonic::Code;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/release-0.1-single-store"
);
/// The fixture's lockout settings (its terminal lockout runs for decades).
const FIXTURE_LOCKOUT: &str = "[lockout]\nmax_failures = 1000\nterminal_max_failures = 3\n\
                               delay = \"50years\"\nmax_delay = \"50years\"\n";

fn tables(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A test directory whose state directory is a copy of the single-store fixture.
fn from_fixture() -> (tempfile::TempDir, Value) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    std::fs::write(
        dir.join("tillgated.toml"),
        config_text(dir, "", FIXTURE_LOCKOUT),
    )
    .unwrap();
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    for file in ["replica.db", "terminal.key"] {
        std::fs::copy(Path::new(FIXTURE).join(file), state.join(file)).unwrap();
        // A checkout does not keep the key's 0600.
        std::fs::set_permissions(state.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let expected = std::fs::read_to_string(Path::new(FIXTURE).join("expected.json")).unwrap();
    (temp, serde_json::from_str(&expected).unwrap())
}

#[tokio::test]
async fn the_single_store_release_is_migrated_keeping_tokens_audit_and_lockouts() {
    let (temp, expected) = from_fixture();
    let mut daemon = Daemon::spawn(temp.path());
    let token = expected["token"].as_str().unwrap();

    // Central's token still works, and the replica kept its data and cursor.
    let mut sync = daemon.sync(Some(token)).await;
    let state = sync.state().await.unwrap();
    let cursor = state.cursor.unwrap();
    assert_eq!(
        (cursor.epoch, cursor.revision),
        (
            expected["cursor"][0].as_u64().unwrap(),
            expected["cursor"][1].as_u64().unwrap()
        )
    );
    assert_eq!(state.users, 2);
    assert_eq!(
        state.audit_stream_origin,
        "migrated from the single-file replica"
    );

    // The rows central had not acknowledged are there with their seqs and uuids; the next row
    // continues the sequence.
    let acked = expected["acked_seq"].as_u64().unwrap();
    let pulled = sync.pull_audit(acked, 0).await.unwrap();
    let seen: Vec<(u64, String)> = pulled
        .events
        .iter()
        .map(|e| (e.seq, e.uuid.clone()))
        .collect();
    let pending: Vec<(u64, String)> = expected["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["uuid"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(seen, pending);
    assert_eq!(pulled.last_seq, expected["last_seq"].as_u64().unwrap());

    // The running terminal lockout is still running: PIN entry refused, keys still work.
    let mut client = daemon.client().await;
    let lockouts = client.lockouts().await.unwrap();
    let terminal = lockouts
        .iter()
        .find(|l| l.source == "terminal")
        .expect("the terminal lockout survived");
    let fixture_terminal = expected["lockouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["source"] == "terminal")
        .unwrap();
    // Carried over as the time it had left (the throttle runs on the boot's monotonic clock):
    // it ends when it did, give or take the second the copy took.
    let shown = terminal.locked_until.as_ref().unwrap().seconds as u64;
    let fixture_until = fixture_terminal["locked_until_s"].as_u64().unwrap();
    assert!(
        shown.abs_diff(fixture_until) <= 2,
        "{shown} vs {fixture_until}"
    );
    assert_eq!(
        code(client.login_with_pin("48213957").await).0,
        Code::ResourceExhausted
    );
    assert_eq!(key_user(&mut client, "K-AMY-77EE3129").await, "amy");
    let after = sync.pull_audit(acked, 0).await.unwrap();
    assert_eq!(after.last_seq, pulled.last_seq + 2);

    // The replica file holds central's data only; the terminal's state is in local.db.
    daemon.stop().await;
    let state_dir = daemon.state_dir();
    let replica_tables = tables(&state_dir.join("replica.db"));
    for gone in ["sync_tokens", "audit_events", "lockouts"] {
        assert!(
            !replica_tables.iter().any(|t| t == gone),
            "{gone} left in replica.db: {replica_tables:?}"
        );
        assert!(
            tables(&state_dir.join("local.db"))
                .iter()
                .any(|t| t == gone)
        );
    }
    assert!(
        daemon
            .log_text()
            .contains("local store created from the single-file replica"),
        "{}",
        daemon.log_text()
    );
}

/// A single-file replica that meets a local store which did not copy its state (here: an old
/// replica.db restored into a state directory that already has a local store) is copied aside
/// whole before the migration drops its tokens, audit rows and lockouts.
#[tokio::test]
async fn an_uncopied_single_file_state_is_set_aside_before_its_tables_are_dropped() {
    let (temp, expected) = from_fixture();
    let state_dir = temp.path().join("state");
    // A first start without the old file makes a local store of its own ("new").
    let parked = temp.path().join("replica.db.parked");
    std::fs::rename(state_dir.join("replica.db"), &parked).unwrap();
    let mut first = Daemon::spawn(temp.path());
    first.stop().await;
    for file in ["replica.db", "replica.db-wal", "replica.db-shm"] {
        let _ = std::fs::remove_file(state_dir.join(file));
    }
    std::fs::rename(&parked, state_dir.join("replica.db")).unwrap();

    let mut daemon = Daemon::spawn(temp.path());
    let token = expected["token"].as_str().unwrap();
    // The local store is the one of the first start: the old token is not in it.
    assert_eq!(
        code(daemon.sync(Some(token)).await.state().await).0,
        Code::Unauthenticated
    );
    let state = daemon.authorized_sync().await.state().await.unwrap();
    assert_eq!(state.audit_stream_origin, "new");
    assert_eq!(
        state.users, 2,
        "the replica itself migrated and kept central's data"
    );
    daemon.stop().await;

    let replica_tables = tables(&state_dir.join("replica.db"));
    assert!(
        !replica_tables.iter().any(|t| t == "sync_tokens"),
        "{replica_tables:?}"
    );
    let aside: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("replica.db.release-0.1-")
        })
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "one copy aside: {aside:?}\n{}",
        daemon.log_text()
    );
    let copy = rusqlite::Connection::open(&aside[0]).unwrap();
    let count = |table: &str| -> i64 {
        copy.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    let fixture = rusqlite::Connection::open(Path::new(FIXTURE).join("replica.db")).unwrap();
    for table in ["sync_tokens", "audit_events", "lockouts"] {
        let want: i64 = fixture
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert!(want > 0, "the fixture has {table} rows");
        assert_eq!(count(table), want, "{table} kept in the copy aside");
    }
    assert!(
        daemon
            .log_text()
            .contains("the whole file was copied aside"),
        "{}",
        daemon.log_text()
    );
}

#[tokio::test]
async fn a_quarantined_replica_keeps_tokens_audit_and_lockouts() {
    let mut daemon = Daemon::start_with(
        "",
        "[lockout]\nmax_failures = 2\nterminal_max_failures = 100\ndelay = \"1h\"\nmax_delay = \"1h\"\n",
    );
    let token = daemon
        .client()
        .await
        .create_token("central")
        .await
        .unwrap()
        .token;
    let people = || vec![user("amy", 1, Some("48213957"))];
    let roles = || vec![role("cashier", &["sale.create"], &[])];
    daemon
        .sync(Some(&token))
        .await
        .apply_snapshot(snapshot(1, 3, roles(), people()))
        .await
        .unwrap();
    let mut client = daemon.client().await;
    for _ in 0..2 {
        let _ = client.login_with_pin("00000000").await;
    }
    let before = daemon
        .sync(Some(&token))
        .await
        .pull_audit(0, 0)
        .await
        .unwrap();
    assert_eq!(before.last_seq, 2);
    daemon.stop().await;

    // The replica is damaged: it is moved aside at the next start.
    let replica = daemon.state_dir().join("replica.db");
    std::fs::write(&replica, vec![0x42; 8192]).unwrap();
    let mut daemon = Daemon::spawn(&daemon.dir.clone());
    let mut sync = daemon.sync(Some(&token)).await;
    let state = sync.state().await.unwrap();
    assert_eq!(state.users, 0);
    // Central pushes right away, with the same token.
    sync.apply_snapshot(snapshot(1, 3, roles(), people()))
        .await
        .unwrap();
    let after = sync.pull_audit(0, 0).await.unwrap();
    assert_eq!(
        after.events.iter().map(|e| &e.uuid).collect::<Vec<_>>(),
        before.events.iter().map(|e| &e.uuid).collect::<Vec<_>>()
    );
    // The source is still locked out.
    let mut client = daemon.client().await;
    assert_eq!(
        code(client.login_with_pin("48213957").await).0,
        Code::ResourceExhausted
    );
    daemon.stop().await;
}

#[tokio::test]
async fn the_audit_stream_id_changes_with_the_local_store_only() {
    let mut daemon = Daemon::start();
    let token = daemon
        .client()
        .await
        .create_token("central")
        .await
        .unwrap()
        .token;
    let mut sync = daemon.sync(Some(&token)).await;
    sync.apply_snapshot(snapshot(
        1,
        1,
        vec![role("cashier", &[], &[])],
        vec![user("amy", 1, Some("48213957"))],
    ))
    .await
    .unwrap();
    let mut client = daemon.client().await;
    pin_user(&mut client, "48213957").await;
    let first = sync.pull_audit(0, 0).await.unwrap();
    let stream = first.stream_id.clone();
    assert_eq!(stream.len(), 36, "a uuid: {stream:?}");
    assert_eq!(first.last_seq, 1);
    assert_eq!(sync.state().await.unwrap().audit_stream_id, stream);
    let dir = daemon.dir.clone();
    daemon.stop().await;

    // A restart, and a quarantined replica, keep the stream (and the token).
    let mut restarted = Daemon::spawn(&dir);
    let pulled = restarted
        .sync(Some(&token))
        .await
        .pull_audit(0, 0)
        .await
        .unwrap();
    assert_eq!(
        (pulled.stream_id.as_str(), pulled.last_seq),
        (stream.as_str(), 1)
    );
    restarted.stop().await;
    std::fs::write(dir.join("state/replica.db"), vec![0x42; 8192]).unwrap();
    let mut quarantined = Daemon::spawn(&dir);
    let pulled = quarantined
        .sync(Some(&token))
        .await
        .pull_audit(0, 0)
        .await
        .unwrap();
    assert_eq!(
        (pulled.stream_id.as_str(), pulled.last_seq),
        (stream.as_str(), 1)
    );
    quarantined.stop().await;

    // A damaged local store is moved aside: a new stream, starting again at seq 1, and central
    // needs a new token.
    std::fs::write(dir.join("state/local.db"), vec![0x17; 8192]).unwrap();
    let reset = Daemon::spawn(&dir);
    assert!(
        reset.log_text().contains("the local store was unusable"),
        "{}",
        reset.log_text()
    );
    assert_eq!(
        code(reset.sync(Some(&token)).await.pull_audit(0, 0).await).0,
        Code::Unauthenticated
    );
    let mut sync = reset.authorized_sync().await;
    let fresh = sync.pull_audit(0, 0).await.unwrap();
    assert_ne!(fresh.stream_id, stream);
    assert_eq!((fresh.last_seq, fresh.events.len()), (0, 0));
    let origin = sync.state().await.unwrap().audit_stream_origin;
    assert!(
        origin.starts_with("replaced a damaged local store (moved to "),
        "{origin}"
    );
    sync.apply_snapshot(snapshot(
        1,
        1,
        vec![role("cashier", &[], &[])],
        vec![user("amy", 1, Some("48213957"))],
    ))
    .await
    .unwrap();
    let _ = reset.client().await.login_with_pin("00000000").await;
    let next = sync.pull_audit(0, 0).await.unwrap();
    assert_eq!(
        next.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1]
    );
    // An acknowledgement meant for the old stream deletes nothing.
    let refused = status(sync.ack_audit_in(&stream, 1).await);
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        tillgate_client::error_reason(&refused).as_deref(),
        Some("AUDIT_STREAM_CHANGED")
    );
    assert_eq!(sync.pull_audit(0, 0).await.unwrap().backlog, 1);
    let acked = sync.ack_audit_in(&fresh.stream_id, 1).await.unwrap();
    assert_eq!((acked.deleted, acked.backlog), (1, 0));
}
