//! The session's life beyond login and logout, end to end: idle lock, resume by the same user,
//! switch by another, activity, and changes a sync makes to the current user.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use tillgate_client::proto as pb;
use tillgate_tests::*;
use tonic::Code;

use pb::SessionEventKind as K;

const WAIT: Duration = Duration::from_secs(5);

fn staff() -> Vec<serde_json::Value> {
    vec![
        user_with_keys("amy", 1, Some("1111"), &["K-AMY-01"]),
        user("bob", 2, Some("2222")),
        user("cid", 3, Some("3333")),
    ]
}

fn cashier(allow: &[&str]) -> serde_json::Value {
    role("cashier", allow, &[])
}

#[tokio::test]
async fn an_idle_session_locks_its_user_resumes_it_and_another_user_switches() {
    let daemon = Daemon::start_with("", "[session]\nidle_lock = \"1s\"\n");
    daemon
        .push_snapshot(snapshot(1, 1, vec![cashier(&["sale.create"])], staff()))
        .await;
    let mut client = daemon.client().await;
    let mut watch = daemon.client().await.watch().await.unwrap();
    assert_eq!(kind(&next_event(&mut watch, WAIT).await), K::Current);

    let amy = client.login_with_pin("1111").await.unwrap();
    assert_eq!(kind(&next_event(&mut watch, WAIT).await), K::Login);
    // Activity (permission checks, touches) keeps it unlocked past the idle time...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if client.check_permission("sale.create").await.unwrap().locked {
            panic!("locked despite activity");
        }
        client.touch().await.unwrap();
    }
    // ... and without activity it locks: same session, LOCKED, nothing granted.
    let locked = next_event(&mut watch, WAIT).await;
    assert_eq!(kind(&locked), K::Locked);
    assert_eq!(locked.reason, "idle for 1s");
    let session = locked.session.unwrap();
    assert!(session.locked);
    assert_eq!(session.session_id, amy.session_id);
    assert!(!locked.previous.unwrap().locked);
    let check = client.check_permission("sale.create").await.unwrap();
    assert!(!check.granted && check.locked);
    assert_eq!(check.user_id, "amy");
    assert!(client.session().await.unwrap().unwrap().locked);
    let (ok, out, _) = run_tillctl(&daemon, &["can", "sale.create"], "", &[]);
    assert!(!ok && out.contains("denied"), "{out}");
    let (_, out, _) = run_tillctl(&daemon, &["session"], "", &[]);
    assert!(out.contains("locked:      yes"), "{out}");

    // A wrong credential leaves it locked; the same user's key resumes it (same session id).
    assert_eq!(
        code(client.login_with_pin("0000").await).0,
        Code::Unauthenticated
    );
    let resumed = client.login_with_key("K-AMY-01").await.unwrap();
    assert_eq!(resumed.session_id, amy.session_id);
    assert!(!resumed.locked);
    let unlocked = next_event(&mut watch, WAIT).await;
    assert_eq!(kind(&unlocked), K::Unlocked);
    assert_eq!(unlocked.session.unwrap().session_id, amy.session_id);
    assert!(
        client
            .check_permission("sale.create")
            .await
            .unwrap()
            .granted
    );

    // Locks again; this time bob's PIN switches users (a new session).
    let locked = next_event(&mut watch, Duration::from_secs(3)).await;
    assert_eq!(kind(&locked), K::Locked);
    let bob = client.login_with_pin("2222").await.unwrap();
    assert_ne!(bob.session_id, amy.session_id);
    let switched = next_event(&mut watch, WAIT).await;
    assert_eq!(kind(&switched), K::Login);
    assert_eq!(switched.reason, "user switched");
    let previous = switched.previous.unwrap();
    assert!(previous.locked && previous.user.unwrap().id == "amy");
    let audit = client.audit_tail(10).await.unwrap().events;
    let outcomes: Vec<_> = audit.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        vec!["accepted", "no_match", "resumed", "accepted"],
        "{audit:?}"
    );
}

#[tokio::test]
async fn idle_lock_off_keeps_the_session_unlocked() {
    let daemon = Daemon::start_with("", "[session]\nidle_lock = \"off\"\n");
    // The control: the same session under a 1 s idle lock, logged in after the one under test.
    let control = Daemon::start_with("", "[session]\nidle_lock = \"1s\"\n");
    for d in [&daemon, &control] {
        d.push_snapshot(snapshot(1, 1, vec![cashier(&["sale.create"])], staff()))
            .await;
    }
    let mut client = daemon.client().await;
    client.login_with_pin("1111").await.unwrap();
    let mut watch = daemon.client().await.watch().await.unwrap();
    assert_eq!(kind(&next_event(&mut watch, WAIT).await), K::Current);
    let mut control_client = control.client().await;
    control_client.login_with_pin("1111").await.unwrap();
    let mut control_watch = control.client().await.watch().await.unwrap();
    assert_eq!(
        kind(&next_event(&mut control_watch, WAIT).await),
        K::Current
    );

    // Barrier: the control locks. Had "off" locked as soon (or at all by now), its LOCKED would
    // be published before the LOGOUT below, which events keep in order.
    assert_eq!(kind(&next_event(&mut control_watch, WAIT).await), K::Locked);
    assert!(
        client
            .check_permission("sale.create")
            .await
            .unwrap()
            .granted
    );
    client.logout().await.unwrap();
    assert_eq!(kind(&next_event(&mut watch, WAIT).await), K::Logout);
}

#[tokio::test]
async fn sync_changes_to_the_current_user_reach_the_session_at_once() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(snapshot(1, 1, vec![cashier(&["sale.create"])], staff()))
        .await
        .unwrap();
    let mut client = daemon.client().await;
    let amy = client.login_with_pin("1111").await.unwrap();
    let mut watch = daemon.client().await.watch().await.unwrap();
    assert_eq!(kind(&next_event(&mut watch, WAIT).await), K::Current);

    // A change that does not concern amy publishes nothing.
    let mut bob = user("bob", 2, Some("2222"));
    bob["first_name"] = json!("Robert");
    sync.apply_changes(changes((1, 1), 2, vec![], vec![bob], &[], &[]))
        .await
        .unwrap();

    // Her role gains a permission: PERMISSIONS_CHANGED with the new set, same session. This is
    // also the barrier for the change above: an event it had published would come first.
    sync.apply_changes(changes(
        (1, 2),
        3,
        vec![cashier(&["sale.create", "refund.create"])],
        vec![],
        &[],
        &[],
    ))
    .await
    .unwrap();
    let changed = next_event(&mut watch, WAIT).await;
    assert_eq!(kind(&changed), K::PermissionsChanged);
    let session = changed.session.unwrap();
    assert_eq!(session.session_id, amy.session_id);
    assert_eq!(session.permissions, vec!["refund.create", "sale.create"]);
    assert_eq!(changed.previous.unwrap().permissions, vec!["sale.create"]);
    assert!(
        client
            .check_permission("refund.create")
            .await
            .unwrap()
            .granted
    );
    // A replay of the same batch changes nothing and publishes nothing.
    sync.apply_changes(changes(
        (1, 2),
        3,
        vec![cashier(&["sale.create", "refund.create"])],
        vec![],
        &[],
        &[],
    ))
    .await
    .unwrap();

    // Access to this terminal removed: the session ends, naming why. The LOGOUT is the next
    // event, so the replay above published nothing.
    let mut moved = user_with_keys("amy", 1, Some("1111"), &["K-AMY-01"]);
    moved["sales_points"] = json!(["sp-airport"]);
    sync.apply_changes(changes((1, 3), 4, vec![], vec![moved], &[], &[]))
        .await
        .unwrap();
    let ended = next_event(&mut watch, WAIT).await;
    assert_eq!(kind(&ended), K::Logout);
    assert_eq!(ended.reason, "access to this terminal removed");
    assert_eq!(ended.previous.unwrap().user.unwrap().id, "amy");
    assert!(client.session().await.unwrap().is_none());

    // Deactivated.
    client.login_with_pin("2222").await.unwrap();
    assert_eq!(kind(&next_event(&mut watch, WAIT).await), K::Login);
    let mut inactive = user("bob", 2, Some("2222"));
    inactive["active"] = json!(false);
    sync.apply_changes(changes((1, 4), 5, vec![], vec![inactive], &[], &[]))
        .await
        .unwrap();
    let ended = next_event(&mut watch, WAIT).await;
    assert_eq!(
        (kind(&ended), ended.reason.as_str()),
        (K::Logout, "user deactivated")
    );

    // Deleted, by a delta and by a snapshot that no longer holds the user.
    client.login_with_pin("3333").await.unwrap();
    assert_eq!(kind(&next_event(&mut watch, WAIT).await), K::Login);
    sync.apply_changes(changes((1, 5), 6, vec![], vec![], &["cid"], &[]))
        .await
        .unwrap();
    let ended = next_event(&mut watch, WAIT).await;
    assert_eq!(
        (kind(&ended), ended.reason.as_str()),
        (K::Logout, "user deleted")
    );
    sync.apply_snapshot(snapshot(
        2,
        1,
        vec![cashier(&["sale.create"])],
        vec![user("dan", 4, Some("4444")), user("eve", 5, Some("5555"))],
    ))
    .await
    .unwrap();
    client.login_with_pin("4444").await.unwrap();
    assert_eq!(kind(&next_event(&mut watch, WAIT).await), K::Login);
    sync.apply_snapshot(snapshot(
        2,
        2,
        vec![cashier(&["sale.create"])],
        vec![user("eve", 5, Some("5555"))],
    ))
    .await
    .unwrap();
    let ended = next_event(&mut watch, WAIT).await;
    assert_eq!(
        (kind(&ended), ended.reason.as_str()),
        (K::Logout, "user deleted")
    );
}

#[tokio::test]
async fn a_permission_check_for_a_session_that_is_gone_answers_session_changed() {
    let daemon = Daemon::start();
    daemon
        .push_snapshot(snapshot(
            1,
            1,
            vec![cashier(&["sale.create", "refund.create"])],
            staff(),
        ))
        .await;
    let mut client = daemon.client().await;
    let amy = client.login_with_pin("1111").await.unwrap();
    let granted = client
        .check_permission_in("refund.create", &amy.session_id)
        .await
        .unwrap();
    assert!(granted.granted);
    assert_eq!(granted.user_id, "amy");
    assert_eq!(
        client
            .session_if(&amy.session_id)
            .await
            .unwrap()
            .unwrap()
            .session_id,
        amy.session_id
    );

    // Bob takes over the till: the POS app still holding amy's session id is told, instead of
    // getting bob's answer.
    let bob = client.login_with_pin("2222").await.unwrap();
    for changed in [
        status(
            client
                .check_permission_in("refund.create", &amy.session_id)
                .await,
        ),
        status(client.session_if(&amy.session_id).await),
    ] {
        assert_eq!(changed.code(), Code::FailedPrecondition, "{changed:?}");
        assert_eq!(
            changed.message(),
            "session changed: another session is current"
        );
        let info = tonic_types::StatusExt::get_details_error_info(&changed).unwrap();
        assert_eq!(info.reason, "SESSION_CHANGED");
    }
    // Without an id the answer is for whoever is current, as before.
    assert_eq!(
        client
            .check_permission("refund.create")
            .await
            .unwrap()
            .user_id,
        "bob"
    );
    assert!(
        client
            .check_permission_in("refund.create", &bob.session_id)
            .await
            .unwrap()
            .granted
    );
    client.logout().await.unwrap();
    let gone = status(
        client
            .check_permission_in("sale.create", &bob.session_id)
            .await,
    );
    assert_eq!(
        (gone.code(), gone.message()),
        (
            Code::FailedPrecondition,
            "session changed: no session is current"
        )
    );
}
