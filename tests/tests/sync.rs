//! The sync protocol end to end: deltas, replays, gaps, aborted and invalid input, tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use tillgate_client::proto as pb;
use tillgate_client::{ClientError, cursor_from_status, error_reason};
use tillgate_tests::*;
use tonic::Code;

fn base_snapshot() -> tillgate_client::export::Snapshot {
    snapshot(
        7,
        10,
        vec![role("cashier", &["sale.create"], &[])],
        vec![user("amy", 1, Some("1111")), user("bob", 2, Some("2222"))],
    )
}

async fn cursor(sync: &mut tillgate_client::TillSyncClient) -> (u64, u64) {
    let c = sync.state().await.unwrap().cursor.unwrap();
    (c.epoch, c.revision)
}

fn status_cursor(result: Result<pb::ApplyResult, ClientError>) -> (Code, Option<(u64, u64)>) {
    match result {
        Err(ClientError::Rpc(status)) => (
            status.code(),
            cursor_from_status(&status).map(|c| (c.epoch, c.revision)),
        ),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// Code, ErrorInfo reason and reported cursor of a refused sync call.
fn refusal(result: Result<pb::ApplyResult, ClientError>) -> (Code, String, Option<(u64, u64)>) {
    let status = status(result);
    (
        status.code(),
        error_reason(&status).unwrap_or_default(),
        cursor_from_status(&status).map(|c| (c.epoch, c.revision)),
    )
}

#[tokio::test]
async fn history_only_moves_forward() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    let staff = |pin: &str| vec![user("amy", 1, Some(pin))];
    let cashier = || vec![role("cashier", &["sale.create"], &[])];
    sync.apply_snapshot(snapshot(2, 1, cashier(), staff("1111")))
        .await
        .unwrap();

    // A delayed retry of an old epoch's snapshot, even at a higher revision, is refused.
    assert_eq!(
        refusal(
            sync.apply_snapshot(snapshot(1, 9, cashier(), staff("9999")))
                .await
        ),
        (Code::FailedPrecondition, "STALE_EPOCH".into(), Some((2, 1)))
    );
    // So is a batch from the old epoch, applicable or replay-looking.
    for (base, new) in [((1, 9), 10), ((1, 0), 1)] {
        let old = changes(base, new, vec![], staff("9999"), &[], &[]);
        assert_eq!(
            refusal(sync.apply_changes(old).await),
            (Code::FailedPrecondition, "STALE_EPOCH".into(), Some((2, 1)))
        );
    }

    // The same batch again is a replay; another batch at that revision is a conflict.
    let batch = changes((2, 1), 2, vec![], staff("2222"), &[], &[]);
    assert!(sync.apply_changes(batch.clone()).await.unwrap().applied);
    let replay = sync.apply_changes(batch).await.unwrap();
    assert!(!replay.applied);
    let restored_central = changes((2, 1), 2, vec![], vec![], &["amy"], &[]);
    assert_eq!(
        refusal(sync.apply_changes(restored_central).await),
        (
            Code::FailedPrecondition,
            "CONFLICTING_BATCH".into(),
            Some((2, 2))
        )
    );
    // A batch at a revision the replica reached by a snapshot cannot be verified: central is
    // told where the replica is, nothing is acknowledged as applied.
    let covered = changes((2, 0), 1, vec![], vec![], &["amy"], &[]);
    assert_eq!(
        refusal(sync.apply_changes(covered).await),
        (
            Code::FailedPrecondition,
            "CURSOR_MISMATCH".into(),
            Some((2, 2))
        )
    );

    // Nothing of the refused calls was applied: amy is there with the batch's PIN.
    let mut client = daemon.client().await;
    assert_eq!(pin_user(&mut client, "2222").await, "amy");
    assert_eq!(
        code(client.login_with_pin("9999").await).0,
        Code::Unauthenticated
    );
    assert_eq!(cursor(&mut sync).await, (2, 2));

    // A new epoch moves on, and the old epoch's batches stay refused.
    sync.apply_snapshot(snapshot(3, 1, cashier(), staff("3333")))
        .await
        .unwrap();
    let batch = changes((2, 1), 2, vec![], staff("2222"), &[], &[]);
    assert_eq!(refusal(sync.apply_changes(batch).await).1, "STALE_EPOCH");
}

#[tokio::test]
async fn delta_apply_replay_and_gap() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    let state = sync.state().await.unwrap();
    assert_eq!(state.status, "needs snapshot");
    assert_eq!(
        status_cursor(
            sync.apply_changes(changes((0, 0), 1, vec![], vec![], &[], &[]))
                .await
        ),
        (Code::FailedPrecondition, Some((0, 0))),
        "an empty replica needs a snapshot first"
    );
    sync.apply_snapshot(base_snapshot()).await.unwrap();
    assert_eq!(cursor(&mut sync).await, (7, 10));

    let batch = changes(
        (7, 10),
        11,
        vec![],
        vec![user("cid", 3, Some("3333"))],
        &["bob"],
        &[],
    );
    let result = sync.apply_changes(batch.clone()).await.unwrap();
    assert!(result.applied);
    assert_eq!((result.users, result.cursor.unwrap().revision), (2, 11));
    let mut client = daemon.client().await;
    assert_eq!(pin_user(&mut client, "3333").await, "cid");
    assert_eq!(
        code(client.login_with_pin("2222").await).0,
        Code::Unauthenticated
    );

    // Replaying the same batch is an idempotent success that changes nothing.
    let replay = sync.apply_changes(batch).await.unwrap();
    assert!(!replay.applied);
    assert_eq!(replay.cursor.unwrap().revision, 11);

    // A gap (base 12, replica at 11) is refused with the current cursor.
    let gap = changes(
        (7, 12),
        13,
        vec![],
        vec![user("dan", 4, Some("4444"))],
        &[],
        &[],
    );
    assert_eq!(
        status_cursor(sync.apply_changes(gap).await),
        (Code::FailedPrecondition, Some((7, 11)))
    );
    // Another epoch too.
    let other_epoch = changes((8, 11), 12, vec![], vec![], &[], &[]);
    assert_eq!(
        status_cursor(sync.apply_changes(other_epoch).await),
        (Code::FailedPrecondition, Some((7, 11)))
    );
    assert_eq!(
        code(client.login_with_pin("4444").await).0,
        Code::Unauthenticated
    );
    assert_eq!(cursor(&mut sync).await, (7, 11));

    // A stale snapshot from the same epoch is refused; a new epoch replaces everything.
    assert_eq!(
        status_cursor(sync.apply_snapshot(snapshot(7, 9, vec![], vec![])).await).0,
        Code::FailedPrecondition
    );
    sync.apply_snapshot(snapshot(
        9,
        1,
        vec![role("cashier", &[], &[])],
        vec![user("eve", 1, Some("5555"))],
    ))
    .await
    .unwrap();
    assert_eq!(cursor(&mut sync).await, (9, 1));
    assert_eq!(
        code(client.login_with_pin("3333").await).0,
        Code::Unauthenticated,
        "users not in the snapshot are removed"
    );
    assert_eq!(pin_user(&mut client, "5555").await, "eve");
}

#[tokio::test]
async fn aborted_snapshot_stream_leaves_the_replica_unchanged() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(base_snapshot()).await.unwrap();
    let replacement = snapshot(
        8,
        1,
        vec![role("cashier", &[], &[])],
        vec![user("zed", 1, Some("9999"))],
    );

    // 1. The stream ends without a chunk marked final.
    let mut chunks = tillgate_client::snapshot_chunks(replacement.clone(), 1);
    chunks.pop();
    let (c, _) = code(sync.apply_snapshot_chunks(chunks).await);
    assert_eq!(c, Code::Aborted);

    // 2. The client goes away in the middle of the stream: giving up on the call resets the
    // HTTP/2 stream (and dropping the client closes the connection): hyper ends the call's
    // stream, or drops the call.
    // The line logged once an unfinished stream's builder has ended and its slot is free
    // (whether or not hyper has dropped the call by then).
    let refusals = || {
        daemon
            .log_text()
            .matches("snapshot stream ended before its final chunk")
            .count()
    };
    let before = refusals();
    let first = tillgate_client::snapshot_chunks(replacement.clone(), 1).remove(0);
    let stalled = futures::stream::iter(vec![first]).chain(futures::stream::pending());
    let mut sync2 = daemon.authorized_sync_named("central-2").await;
    let attempt = tokio::time::timeout(
        Duration::from_millis(500),
        sync2.apply_snapshot_stream(stalled),
    )
    .await;
    assert!(attempt.is_err(), "the stalled stream cannot complete");
    drop(sync2);
    // Barrier: the daemon has seen the stream end, freed its snapshot slot and said so (long
    // before sync.call_timeout) before the replica is read.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while refusals() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never noticed the dropped stream: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(cursor(&mut sync).await, (7, 10));
    let mut client = daemon.client().await;
    assert_eq!(pin_user(&mut client, "1111").await, "amy");
    assert_eq!(
        code(client.login_with_pin("9999").await).0,
        Code::Unauthenticated
    );

    // The vanished central does not hold the one-snapshot slot: the next snapshot applies.
    let applied = sync.apply_snapshot(replacement).await.unwrap();
    assert_eq!(applied.cursor.map(|c| (c.epoch, c.revision)), Some((8, 1)));
    assert_eq!(pin_user(&mut client, "9999").await, "zed");
}

use futures::StreamExt;

#[tokio::test]
async fn invalid_records_are_rejected_by_name_with_nothing_applied() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(base_snapshot()).await.unwrap();
    let mut client = daemon.client().await;

    // A malformed PHC string in the last user of a snapshot.
    let mut bad = snapshot(
        7,
        20,
        vec![role("cashier", &[], &[])],
        vec![
            user("new", 1, Some("7777")),
            user("broken", 2, Some("8888")),
        ],
    );
    bad.users[1].pin = Some(pb::Credential {
        phc: "$argon2id$v=19$nonsense".into(),
    });
    let (c, message) = code(sync.apply_snapshot(bad).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(
        message.starts_with("user \"broken\": pin credential: "),
        "{message}"
    );

    // Duplicate ids, unknown role, empty id.
    let (c, message) = code(
        sync.apply_snapshot(snapshot(
            7,
            20,
            vec![role("cashier", &[], &[])],
            vec![user("dup", 1, None), user("dup", 2, None)],
        ))
        .await,
    );
    assert_eq!(
        (c, message.as_str()),
        (Code::InvalidArgument, "user \"dup\" appears more than once")
    );
    let mut ghost = user("ghost-holder", 1, Some("6666"));
    ghost["roles"] = json!([{ "role": "ghost" }]);
    let (c, message) = code(
        sync.apply_changes(changes(
            (7, 10),
            11,
            vec![],
            vec![user("fine", 5, Some("5555")), ghost],
            &["amy"],
            &[],
        ))
        .await,
    );
    assert_eq!(
        (c, message.as_str()),
        (
            Code::InvalidArgument,
            "user \"ghost-holder\": role assignment names unknown role \"ghost\""
        )
    );
    let (c, message) = code(
        sync.apply_changes(changes(
            (7, 10),
            11,
            vec![],
            vec![user("", 5, None)],
            &[],
            &[],
        ))
        .await,
    );
    assert_eq!(
        (c, message.as_str()),
        (Code::InvalidArgument, "user[0]: id is empty")
    );
    // Deleting a role a remaining user holds.
    let (c, message) = code(
        sync.apply_changes(changes((7, 10), 11, vec![], vec![], &[], &["cashier"]))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(
        message.contains("role \"cashier\" cannot be deleted"),
        "{message}"
    );

    // Nothing of any of them was applied.
    assert_eq!(cursor(&mut sync).await, (7, 10));
    assert_eq!(pin_user(&mut client, "1111").await, "amy");
    assert_eq!(
        code(client.login_with_pin("5555").await).0,
        Code::Unauthenticated
    );
    assert_eq!(
        code(client.login_with_pin("7777").await).0,
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn missing_wrong_and_revoked_tokens_are_refused() {
    let daemon = Daemon::start();
    let (c, message) = code(daemon.sync(None).await.state().await);
    assert_eq!(
        (c, message.as_str()),
        (
            Code::Unauthenticated,
            "missing authorization: Bearer <token>"
        )
    );
    let wrong = "tgs_thisisnotavalidtokenatallxxxxxxxxxxxxxxx";
    let (c, _) = code(daemon.sync(Some(wrong)).await.state().await);
    assert_eq!(c, Code::Unauthenticated);

    let mut admin = daemon.client().await;
    let token = admin.create_token("central").await.unwrap().token;
    assert_eq!(
        code(admin.create_token("central").await).0,
        Code::AlreadyExists
    );
    assert_eq!(
        code(admin.create_token("bad name").await).0,
        Code::InvalidArgument
    );
    assert!(daemon.sync(Some(&token)).await.state().await.is_ok());
    let names: Vec<_> = admin
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["central"]);
    assert!(admin.revoke_token("central").await.unwrap());
    assert_eq!(
        code(daemon.sync(Some(&token)).await.state().await).0,
        Code::Unauthenticated
    );

    let log = daemon.log_text();
    assert!(log.contains("sync call rejected: invalid token"));
    assert!(
        !log.contains(&token) && !log.contains(wrong),
        "tokens never reach the log"
    );
}

#[tokio::test]
async fn a_sync_that_would_exceed_max_schemes_is_refused_by_count_and_user_with_nothing_applied() {
    let daemon = Daemon::start_with("", "[hashing]\nmax_schemes = 1\n");
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(base_snapshot()).await.unwrap();
    // Another account hashes under another salt: a second PIN scheme.
    let other = json!({ "id": "other-account", "m_cost_kib": 64, "t_cost": 1, "p_cost": 1 });
    let batch = tillgate_client::export::ChangesExport::parse(
        &json!({
            "account": other,
            "base": { "epoch": 7, "revision": 10 },
            "new_revision": 11,
            "upsert_users": [user("cid", 3, Some("3333"))],
        })
        .to_string(),
    )
    .unwrap()
    .into_batch()
    .unwrap();
    let refused = status(sync.apply_changes(batch).await);
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with(
            "pin credentials would use 2 distinct hash schemes (salt and costs), more than \
             hashing.max_schemes = 1; user \"cid\" brings one too many."
        ),
        "{}",
        refused.message()
    );
    assert_eq!(cursor(&mut sync).await, (7, 10), "nothing applied");
    let mut client = daemon.client().await;
    assert_eq!(
        code(client.login_with_pin("3333").await).0,
        Code::Unauthenticated
    );

    // A snapshot mixing the two accounts is refused the same way; the replica stays.
    let mut mixed = snapshot(
        7,
        12,
        vec![role("cashier", &[], &[])],
        vec![user("amy", 1, Some("1111"))],
    );
    let foreign = tillgate_client::export::SnapshotExport::parse(
        &json!({
            "account": other,
            "cursor": { "epoch": 7, "revision": 12 },
            "roles": [role("cashier", &[], &[])],
            "users": [user("dee", 4, Some("4444"))],
        })
        .to_string(),
    )
    .unwrap()
    .into_snapshot()
    .unwrap();
    mixed.users.extend(foreign.users);
    let refused = status(sync.apply_snapshot(mixed).await);
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("user \"dee\" brings one too many"),
        "{}",
        refused.message()
    );
    assert_eq!(cursor(&mut sync).await, (7, 10));
    assert_eq!(pin_user(&mut client, "1111").await, "amy");
}

/// A TCP relay that forwards both ways until `freeze`, then neither reads nor writes nor closes
/// anything: to the daemon, a peer whose host lost power or network.
async fn freezing_relay(
    upstream: std::net::SocketAddr,
    freeze: tokio::sync::watch::Receiver<bool>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pipe(client_read, server_write, freeze.clone()));
            tokio::spawn(pipe(server_read, client_write, freeze.clone()));
        }
    });
    addr
}

/// Copies `from` to `to` until either ends or `freeze`; then holds both open, silent.
async fn pipe(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut freeze: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { break },
            },
            _ = async { let _ = freeze.wait_for(|frozen| *frozen).await; } => break,
        }
    }
    std::future::pending::<()>().await;
    drop((from, to));
}

#[tokio::test]
async fn a_central_that_vanishes_without_closing_frees_the_snapshot_slot_after_keepalive() {
    let temp = tempfile::tempdir().unwrap();
    let config =
        config_text(temp.path(), "", "").replace("[sync]\n", "[sync]\nkeepalive = \"1s\"\n");
    std::fs::write(temp.path().join("tillgated.toml"), config).unwrap();
    let daemon = Daemon::spawn(temp.path());
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(base_snapshot()).await.unwrap();
    let replacement = snapshot(
        8,
        1,
        vec![role("cashier", &[], &[])],
        vec![user("zed", 1, Some("9999"))],
    );

    // Central-2 streams the first chunk through the relay, then its host goes silent.
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    let upstream = daemon
        .sync_addr
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let relay = freezing_relay(upstream, frozen).await;
    let token = daemon
        .client()
        .await
        .create_token("central-2")
        .await
        .unwrap()
        .token;
    let mut vanishing =
        tillgate_client::TillSyncClient::connect(&format!("http://{relay}"), Some(&token), None)
            .await
            .unwrap();
    let first = tillgate_client::snapshot_chunks(replacement.clone(), 1).remove(0);
    let stalled = futures::stream::iter(vec![first]).chain(futures::stream::pending());
    let call = tokio::spawn(async move { vanishing.apply_snapshot_stream(stalled).await });
    let opened = "building beside the replica target=8:1";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.log_text().contains(opened) {
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot never started: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    freeze.send(true).unwrap();

    // Barrier: the unanswered ping closes the connection and frees the slot (sync.call_timeout
    // is 10 minutes: only the keepalive can end this call within the deadline).
    let ended = "snapshot stream ended before its final chunk; replica unchanged token=central-2";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !daemon.log_text().contains(ended) {
        assert!(
            std::time::Instant::now() < deadline,
            "the vanished central still holds the snapshot slot: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !call.is_finished(),
        "central-2 heard nothing: its host is gone"
    );
    call.abort();

    assert_eq!(cursor(&mut sync).await, (7, 10));
    let applied = sync.apply_snapshot(replacement).await.unwrap();
    assert_eq!(applied.cursor.map(|c| (c.epoch, c.revision)), Some((8, 1)));
}
