//! The audit outbox end to end: rows per attempt, pull and acknowledge, restarts, the size cap,
//! and no secret in the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use tillgate_client::Credential;
use tillgate_client::proto as pb;
use tillgate_tests::*;
use tonic::Code;

// Eight-digit PINs and key ids with non-hex letters, so that they cannot appear by chance in a
// uuid or a digest when the database files are searched for them.
const AMY_PIN: &str = "48213957";
const WRONG_PIN: &str = "73950264";
const AMY_KEY: &str = "K-AMY-77EE3129";
const WRONG_KEY: &str = "K-WRONG-DEADBEEF";
const DORA_PIN: &str = "13572468";

fn people() -> Vec<serde_json::Value> {
    let mut dora = user("dora", 3, Some(DORA_PIN));
    dora["active"] = json!(false);
    let mut max = user("max", 1, Some("90009000"));
    max["roles"] = json!([{ "role": "manager" }]);
    vec![
        user_with_keys("amy", 2, Some(AMY_PIN), &[AMY_KEY]),
        dora,
        max,
    ]
}

fn roles() -> Vec<serde_json::Value> {
    vec![
        role("cashier", &["sale.create"], &[]),
        role("manager", &["refund.create"], &[]),
    ]
}

#[tokio::test]
async fn every_attempt_is_an_outbox_row_until_central_acknowledges_it() {
    let mut daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(snapshot(1, 1, roles(), people()))
        .await
        .unwrap();
    let mut client = daemon.client().await;
    client.login_with_pin(AMY_PIN).await.unwrap();
    assert_eq!(
        code(client.login_with_pin(WRONG_PIN).await).0,
        Code::Unauthenticated
    );
    assert_eq!(
        code(client.login_with_pin(DORA_PIN).await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        code(client.login_with_key(WRONG_KEY).await).0,
        Code::Unauthenticated
    );
    assert_eq!(
        code(client.login_with_pin("").await).0,
        Code::InvalidArgument
    );
    client.login_with_key(AMY_KEY).await.unwrap();
    client
        .authorize(Credential::Pin("90009000"), "refund.create")
        .await
        .unwrap();

    let first = sync.pull_audit(0, 2).await.unwrap();
    assert_eq!(
        first.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!((first.backlog, first.last_seq), (6, 6));
    let rest = sync.pull_audit(2, 0).await.unwrap().events;
    let all: Vec<pb::AuditEvent> = first.events.into_iter().chain(rest).collect();
    let summary: Vec<_> = all
        .iter()
        .map(|e| {
            (
                e.kind.as_str(),
                e.method,
                e.outcome.as_str(),
                e.user_id.as_str(),
                // A "coalesced" row's reason carries times: checked on its own below.
                if e.outcome == "coalesced" {
                    ""
                } else {
                    e.reason.as_str()
                },
            )
        })
        .collect();
    let (pin, key) = (pb::LoginMethod::Pin as i32, pb::LoginMethod::Key as i32);
    assert_eq!(
        summary,
        vec![
            ("login", pin, "accepted", "amy", ""),
            (
                "login",
                pin,
                "no_match",
                "",
                "no user matches this credential"
            ),
            // Dora's PIN (inactive) has a row of its own although the PIN streak is open: it
            // says whose PIN was found.
            ("login", pin, "denied", "dora", "user inactive"),
            // The first failure of a key streak has its own row too (another budget).
            (
                "login",
                key,
                "no_match",
                "",
                "no user matches this credential"
            ),
            ("login", key, "accepted", "amy", ""),
            // The empty PIN has no row of its own: it is counted for the source's summary row
            // (each audit.summary_interval and at shutdown, below); a success ends no streak.
            ("authorize", pin, "granted", "max", ""),
        ]
    );
    let source = my_socket_source();
    for event in &all {
        assert!(
            event.source.starts_with(&format!("{source} gid=")) || event.source == source,
            "{event:?}"
        );
        assert!(event.at.is_some());
        assert_eq!(event.uuid.len(), 36, "{event:?}");
    }
    assert_eq!(all[5].session_user_id, "amy");
    assert_eq!(all[5].permission, "refund.create");
    let mut uuids: Vec<_> = all.iter().map(|e| e.uuid.clone()).collect();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 6);

    // Acknowledged rows are deleted, the rest stay; re-acknowledging is harmless; acknowledging
    // what was never written is refused.
    let ack = sync.ack_audit(3).await.unwrap();
    assert_eq!((ack.deleted, ack.backlog), (3, 3));
    assert_eq!(sync.ack_audit(2).await.unwrap().deleted, 0);
    let beyond = status(sync.ack_audit(99).await);
    assert_eq!(beyond.code(), Code::InvalidArgument);
    assert!(
        beyond.message().contains("the last audit row written is 6"),
        "{}",
        beyond.message()
    );
    let after = sync.pull_audit(0, 100).await.unwrap();
    assert_eq!(after.events[0].seq, 4);
    assert_eq!(after.events[0].uuid, all[3].uuid);
    // Pulling and acknowledging need the token.
    let mut anonymous = daemon.sync(None).await;
    assert_eq!(
        code(anonymous.pull_audit(0, 10).await).0,
        Code::Unauthenticated
    );
    assert_eq!(code(anonymous.ack_audit(7).await).0, Code::Unauthenticated);

    // A restart keeps unacknowledged rows, and sequence numbers go on; the shutdown wrote the
    // pending summary row (the empty PIN).
    daemon.stop().await;
    let daemon = Daemon::spawn(&daemon.dir);
    let mut sync = daemon.sync(Some(&token_of(&daemon).await)).await;
    let kept = sync.pull_audit(0, 100).await.unwrap().events;
    assert_eq!(kept.len(), 4);
    let summary = &kept[3];
    assert_eq!((summary.seq, summary.outcome.as_str()), (7, "coalesced"));
    assert_eq!(summary.source, my_socket_source());
    assert!(
        summary
            .reason
            .starts_with("1 attempt without a row of their own from ")
            && summary.reason.ends_with(": refused.malformed=1"),
        "{}",
        summary.reason
    );
    assert_eq!(sync.ack_audit(7).await.unwrap().backlog, 0);
    daemon.client().await.login_with_pin(AMY_PIN).await.unwrap();
    let next = sync.pull_audit(0, 100).await.unwrap();
    assert_eq!(
        next.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![8]
    );

    // tillctl audit shows the tail.
    let (ok, out, err) = run_tillctl(&daemon, &["audit"], "", &[]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("backlog: 1 rows not yet acknowledged by central (ok)"),
        "{out}"
    );
    assert!(
        out.contains("#8 ") && out.contains(" login pin accepted ["),
        "{out}"
    );
}

async fn token_of(daemon: &Daemon) -> String {
    daemon
        .client()
        .await
        .create_token("central-2")
        .await
        .unwrap()
        .token
}

#[tokio::test]
async fn over_the_cap_the_status_is_loud_and_nothing_is_dropped() {
    let daemon = Daemon::start_with("", "[audit]\nmax_rows = 3\n");
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(snapshot(1, 1, roles(), people()))
        .await
        .unwrap();
    let mut client = daemon.client().await;
    for _ in 0..5 {
        client.login_with_pin(AMY_PIN).await.unwrap();
    }
    let state = sync.state().await.unwrap();
    assert_eq!(state.audit_backlog, 5);
    assert!(
        state
            .audit_status
            .starts_with("over cap: 5 audit rows wait for central"),
        "{}",
        state.audit_status
    );
    assert_eq!(sync.pull_audit(0, 100).await.unwrap().events.len(), 5);
    assert_eq!(
        daemon
            .log_text()
            .matches("audit outbox over its cap")
            .count(),
        1,
        "logged at the crossing:\n{}",
        daemon.log_text()
    );
    let (ok, out, _) = run_tillctl(&daemon, &["audit", "-n", "2"], "", &[]);
    assert!(
        ok && out.starts_with("backlog: 5 rows not yet acknowledged by central (over cap"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 3, "{out}");
    // Once central catches up the status is ok again.
    sync.ack_audit(5).await.unwrap();
    assert_eq!(sync.state().await.unwrap().audit_status, "ok");
}

#[tokio::test]
async fn no_pin_or_key_id_is_ever_written_to_the_database() {
    let mut daemon = Daemon::start();
    daemon
        .push_snapshot(snapshot(1, 1, roles(), people()))
        .await;
    let mut client = daemon.client().await;
    client.login_with_pin(AMY_PIN).await.unwrap();
    client.login_with_key(AMY_KEY).await.unwrap();
    let _ = client.login_with_pin(WRONG_PIN).await;
    let _ = client.login_with_key(WRONG_KEY).await;
    let _ = client.login_with_pin(DORA_PIN).await;
    let _ = client
        .authorize(Credential::Key(WRONG_KEY), "refund.create")
        .await;
    let _ = client
        .authorize(Credential::Pin(AMY_PIN), "refund.create")
        .await;
    // Two logins, the first failure of each budget, Dora's PIN (denied: a row of its own), the
    // granted authorization; the wrong key's authorization waits in the key summary.
    assert_eq!(client.audit_tail(100).await.unwrap().events.len(), 6);
    // Search the database, its WAL and everything else in the state directory, before and
    // after the shutdown checkpoint.
    let state_dir = daemon.state_dir();
    let search = |when: &str| {
        let mut searched = 0;
        for entry in std::fs::read_dir(&state_dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            searched += bytes.len();
            for secret in [AMY_PIN, WRONG_PIN, DORA_PIN, AMY_KEY, WRONG_KEY] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} found in {} {when}",
                    path.display()
                );
            }
        }
        assert!(searched > 0);
    };
    search("while running");
    daemon.stop().await;
    let db = std::fs::read(daemon.state_dir().join("local.db")).unwrap();
    assert!(
        db.windows(b"no_match".len()).any(|w| w == b"no_match"),
        "the rows are in the file that was searched"
    );
    search("after shutdown");
    let log = daemon.log_text();
    for secret in [AMY_PIN, WRONG_PIN, DORA_PIN, AMY_KEY, WRONG_KEY] {
        assert!(!log.contains(secret), "{secret} in the debug log");
    }
}
