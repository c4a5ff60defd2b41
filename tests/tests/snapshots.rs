//! Snapshots beside everything else, through the real binary: one at a time, logins and batches
//! going on while one streams, and the history rules deciding which of a batch and a snapshot
//! built meanwhile wins.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tillgate_client::proto as pb;
use tillgate_client::{ClientError, TillSyncClient, cursor_from_status, error_reason};
use tillgate_tests::*;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn cashier() -> Vec<serde_json::Value> {
    vec![role("cashier", &["sale.create"], &[])]
}

/// A snapshot stream opened and held after all but its final chunk.
struct HeldSnapshot {
    last: pb::SnapshotChunk,
    sender: mpsc::Sender<pb::SnapshotChunk>,
    call: JoinHandle<Result<pb::ApplyResult, ClientError>>,
}

impl HeldSnapshot {
    /// Sends every chunk but the last and waits until the daemon is building it (its log says
    /// so), so what the test does next happens while the snapshot is in progress.
    async fn open(
        daemon: &Daemon,
        sync: &TillSyncClient,
        snapshot: tillgate_client::export::Snapshot,
    ) -> HeldSnapshot {
        let opened_before = opened_count(daemon);
        let mut chunks = tillgate_client::snapshot_chunks(snapshot, 1);
        let last = chunks.pop().unwrap();
        let (sender, receiver) = mpsc::channel(chunks.len() + 1);
        for chunk in chunks {
            sender.send(chunk).await.unwrap();
        }
        let mut sync = sync.clone();
        let call = tokio::spawn(async move {
            sync.apply_snapshot_stream(ReceiverStream::new(receiver))
                .await
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while opened_count(daemon) == opened_before {
            assert!(
                Instant::now() < deadline,
                "snapshot never started:\n{}",
                daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        HeldSnapshot { last, sender, call }
    }

    async fn finish(self) -> Result<pb::ApplyResult, ClientError> {
        self.sender.send(self.last).await.unwrap();
        drop(self.sender);
        self.call.await.unwrap()
    }
}

fn opened_count(daemon: &Daemon) -> usize {
    daemon.log_text().matches("snapshot stream opened").count()
}

#[tokio::test]
async fn one_snapshot_at_a_time_while_logins_and_batches_go_on() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(snapshot(
        1,
        1,
        cashier(),
        vec![user("amy", 1, Some("1111"))],
    ))
    .await
    .unwrap();

    let held = HeldSnapshot::open(
        &daemon,
        &sync,
        snapshot(
            1,
            5,
            cashier(),
            vec![user("bob", 2, Some("2222")), user("dan", 4, Some("4444"))],
        ),
    )
    .await;
    // A second snapshot is refused at once, naming why.
    let second = status(sync.apply_snapshot(snapshot(1, 6, cashier(), vec![])).await);
    assert_eq!(second.code(), Code::Aborted, "{second:?}");
    assert!(second.message().contains("another snapshot"), "{second:?}");
    // Logins and a batch go on against the live replica meanwhile.
    let mut client = daemon.client().await;
    assert_eq!(pin_user(&mut client, "1111").await, "amy");
    let batch = changes(
        (1, 1),
        2,
        vec![],
        vec![user("cid", 3, Some("3333"))],
        &[],
        &[],
    );
    assert!(sync.apply_changes(batch).await.unwrap().applied);
    assert_eq!(pin_user(&mut client, "3333").await, "cid");

    // The held snapshot (1:5) is newer than the batch (1:2): it wins when it switches in.
    let result = held.finish().await.unwrap();
    assert_eq!(result.cursor.unwrap().revision, 5);
    assert_eq!(
        code(client.login_with_pin("3333").await).0,
        Code::Unauthenticated
    );
    assert_eq!(pin_user(&mut client, "2222").await, "bob");

    // The other way round: a batch moves the replica past a snapshot being built, which is then
    // refused as stale; the batch's change stays.
    let held = HeldSnapshot::open(
        &daemon,
        &sync,
        snapshot(1, 6, cashier(), vec![user("eve", 5, Some("5555"))]),
    )
    .await;
    let batch = changes(
        (1, 5),
        7,
        vec![],
        vec![user("fay", 6, Some("6666"))],
        &[],
        &[],
    );
    assert!(sync.apply_changes(batch).await.unwrap().applied);
    let refused = status(held.finish().await);
    assert_eq!(
        (
            refused.code(),
            error_reason(&refused).as_deref(),
            cursor_from_status(&refused).map(|c| (c.epoch, c.revision))
        ),
        (
            Code::FailedPrecondition,
            Some("STALE_SNAPSHOT"),
            Some((1, 7))
        )
    );
    assert_eq!(pin_user(&mut client, "6666").await, "fay");
    assert_eq!(
        code(client.login_with_pin("5555").await).0,
        Code::Unauthenticated
    );

    // The gate is free again, and nothing is left beside the replica.
    sync.apply_snapshot(snapshot(
        2,
        1,
        cashier(),
        vec![user("gus", 7, Some("7777"))],
    ))
    .await
    .unwrap();
    assert_eq!(pin_user(&mut client, "7777").await, "gus");
    let leftovers: Vec<String> = std::fs::read_dir(daemon.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("incoming"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_stale_snapshot_is_refused_at_its_first_chunk() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(snapshot(
        3,
        1,
        cashier(),
        vec![user("amy", 1, Some("1111"))],
    ))
    .await
    .unwrap();
    // Only the first chunk is sent and the stream stays open: the refusal cannot wait for more.
    let (sender, receiver) = mpsc::channel(4);
    let mut chunks = tillgate_client::snapshot_chunks(
        snapshot(2, 9, cashier(), vec![user("bob", 2, Some("2222"))]),
        1,
    );
    sender.send(chunks.remove(0)).await.unwrap();
    let refused = status(
        tokio::time::timeout(
            Duration::from_secs(20),
            sync.apply_snapshot_stream(ReceiverStream::new(receiver)),
        )
        .await
        .expect("refused without waiting for the rest of the stream"),
    );
    assert_eq!(error_reason(&refused).as_deref(), Some("STALE_EPOCH"));
    drop(sender);
}

#[tokio::test]
async fn quick_check_runs_only_after_a_stop_that_was_not_clean() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    std::fs::write(dir.join("tillgated.toml"), config_text(dir, "", "")).unwrap();
    let skipped = |d: &Daemon| d.log_text().matches("quick_check skipped").count();
    let checked = |d: &Daemon| d.log_text().matches("running quick_check").count();

    let mut daemon = Daemon::spawn(dir);
    daemon
        .push_snapshot(snapshot(
            1,
            1,
            cashier(),
            vec![user("amy", 1, Some("1111"))],
        ))
        .await;
    assert_eq!(
        (skipped(&daemon), checked(&daemon)),
        (0, 2),
        "new stores are checked"
    );
    assert!(daemon.stop().await.success());

    // After a clean stop neither store is read in full.
    let mut daemon = Daemon::spawn(dir);
    assert_eq!((skipped(&daemon), checked(&daemon)), (2, 0));
    assert_eq!(pin_user(&mut daemon.client().await, "1111").await, "amy");
    daemon.kill();

    // After a kill both are.
    let daemon = Daemon::spawn(dir);
    assert_eq!((skipped(&daemon), checked(&daemon)), (0, 2));
    assert_eq!(pin_user(&mut daemon.client().await, "1111").await, "amy");
}
