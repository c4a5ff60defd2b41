//! The session policy for hardware input, end to end over pseudo-terminal serial readers: bad
//! reads are audited but never counted, wrong keys count per reader, and pulling the key can
//! lock the session it opened (the same key resumes it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tillgate_client::proto as pb;
use tillgate_tests::*;

use pb::SessionEventKind as K;

const WAIT: Duration = Duration::from_secs(20);
// An Addimat prints the iButton ROM CRC first, family last: this is 01 7A6945260000 AC.
const GOOD: &[u8] = b"\x02AC00002645697A01\x03";
const BAD_CRC: &[u8] = b"\x029B00002645697A01\x03";

#[tokio::test]
async fn bad_reads_are_audited_not_counted_wrong_keys_count_per_reader_and_removal_locks() {
    let temp = tempfile::tempdir().unwrap();
    let (lock_path, door_path) = (temp.path().join("lock"), temp.path().join("door"));
    let mut lock = Pty::open(&lock_path);
    let mut door = Pty::open(&door_path);
    let daemon = Daemon::start_with(
        "",
        &format!(
            "[lockout]\nmax_failures = 2\n[session]\non_key_removal = \"lock\"\n\
             [[input.serial]]\nname = \"waiter lock\"\npath = \"{}\"\nframing = \"stx_etx\"\nprofile = \"addimat\"\n\
             [[input.serial]]\nname = \"door reader\"\npath = \"{}\"\nprofile = \"generic-wedge\"\n",
            lock_path.display(),
            door_path.display()
        ),
    );
    let waiter = user_with_keys("waiter", 1, None, &["017A6945260000AC"]);
    daemon
        .push_snapshot(snapshot(
            1,
            1,
            vec![role("cashier", &["sale.create"], &[])],
            vec![waiter, user("pinny", 2, Some("1111"))],
        ))
        .await;
    let mut client = daemon.client().await;
    wait_device(&mut client, &lock_path, true).await;
    wait_device(&mut client, &door_path, true).await;
    let mut activity = client.watch_input().await.unwrap();
    let mut watch = client.watch().await.unwrap();
    assert_eq!(kind(&next_event(&mut watch, WAIT).await), K::Current);

    // Three damaged reads, more than lockout.max_failures: audited, never counted against a
    // budget. The first opens the reader's key streak and has a row of its own; the others
    // are counted for the reader's summary row (per fault: "bad_read.crc=2").
    for _ in 0..3 {
        lock.write(BAD_CRC);
        let seen = tokio::time::timeout(WAIT, activity.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(seen.kind, pb::InputActivityKind::BadRead as i32);
    }
    let audit = client.audit_tail(10).await.unwrap().events;
    assert_eq!(audit.len(), 1, "{audit:?}");
    for row in &audit {
        assert_eq!(
            (row.kind.as_str(), row.outcome.as_str()),
            ("bad_read", "bad_read")
        );
        assert_eq!(row.method, pb::LoginMethod::Key as i32);
        assert_eq!(row.reason, "CRC mismatch");
        assert!(
            row.source.starts_with("device \"waiter lock\" ("),
            "{}",
            row.source
        );
    }
    assert!(client.lockouts().await.unwrap().is_empty());

    // A wrong key is a failure, counted against the reader's key budget (keys have no
    // terminal-wide budget).
    door.write(b"04DEADBEEF\r\n");
    let seen = tokio::time::timeout(WAIT, activity.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kind, pb::InputActivityKind::Key as i32);
    let lockouts: Vec<_> = client
        .lockouts()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.source, l.failures))
        .collect();
    assert_eq!(lockouts, vec![("device door reader (keys)".into(), 1)]);

    // The key logs in; pulling it locks the session; the same key resumes it.
    lock.write(GOOD);
    let login = next_event(&mut watch, WAIT).await;
    assert_eq!(kind(&login), K::Login);
    let session = login.session.unwrap();
    assert_eq!(session.user.unwrap().id, "waiter");
    lock.write(b"\x02OUT\x03");
    let locked = next_event(&mut watch, WAIT).await;
    assert_eq!(
        (kind(&locked), locked.reason.as_str()),
        (K::Locked, "key removed")
    );
    assert_eq!(
        locked.session.as_ref().unwrap().session_id,
        session.session_id
    );
    assert!(
        !client
            .check_permission("sale.create")
            .await
            .unwrap()
            .granted
    );
    lock.write(GOOD);
    let resumed = next_event(&mut watch, WAIT).await;
    assert_eq!(kind(&resumed), K::Unlocked);
    assert_eq!(resumed.session.unwrap().session_id, session.session_id);
    assert!(
        client
            .check_permission("sale.create")
            .await
            .unwrap()
            .granted
    );

    let rows = client.audit_tail(10).await.unwrap().events;
    let outcomes: Vec<_> = rows.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        vec!["bad_read", "no_match", "accepted", "resumed"]
    );
    let text = format!("{rows:?}{}", daemon.log_text());
    for secret in [
        "017A6945260000AC",
        "AC00002645697A01",
        "9B00002645697A01",
        "04DEADBEEF",
    ] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
}
