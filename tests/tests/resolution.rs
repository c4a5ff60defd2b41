//! The resolution rules, end to end: real daemon, real sockets, credentials pushed through sync.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use tillgate_tests::*;
use tonic::Code;

fn cashier() -> serde_json::Value {
    role("cashier", &["sale.create", "drawer.open"], &[])
}

#[tokio::test]
async fn rule1_shared_pin_first_by_ordinal_then_id() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(snapshot(
        1,
        1,
        vec![cashier()],
        vec![
            user("zoe", 30, Some("1111")),
            user("bob", 20, Some("1111")),
            user("amy", 20, Some("2222")),
            user("abe", 20, Some("2222")),
        ],
    ))
    .await
    .unwrap();
    let mut client = daemon.client().await;
    let session = client.login_with_pin("1111").await.unwrap();
    assert_eq!(session.user.unwrap().id, "bob", "lowest ordinal wins");
    let session = client.login_with_pin("2222").await.unwrap();
    assert_eq!(
        session.user.unwrap().id,
        "abe",
        "equal ordinals: lowest id wins"
    );
}

#[tokio::test]
async fn rule1_skips_inactive_and_unassigned_users() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    let mut inactive = user("first", 1, Some("1234"));
    inactive["active"] = json!(false);
    let mut elsewhere = user("second", 2, Some("1234"));
    elsewhere["sales_points"] = json!(["sp-other"]);
    sync.apply_snapshot(snapshot(
        1,
        1,
        vec![cashier()],
        vec![inactive, elsewhere, user("third", 3, Some("1234"))],
    ))
    .await
    .unwrap();
    let session = daemon.client().await.login_with_pin("1234").await.unwrap();
    assert_eq!(session.user.unwrap().id, "third");
}

#[tokio::test]
async fn rule2_only_ineligible_matches_give_the_first_users_reason() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    let mut inactive = user("dora", 1, Some("1357"));
    inactive["active"] = json!(false);
    let mut elsewhere_late = user("late", 9, Some("1357"));
    elsewhere_late["sales_points"] = json!(["sp-other"]);
    let mut elsewhere = user("erik", 1, Some("8642"));
    elsewhere["sales_points"] = json!(["sp-other"]);
    sync.apply_snapshot(snapshot(
        1,
        1,
        vec![cashier()],
        vec![inactive, elsewhere_late, elsewhere],
    ))
    .await
    .unwrap();
    let mut client = daemon.client().await;
    assert_eq!(
        code(client.login_with_pin("1357").await),
        (Code::PermissionDenied, "user inactive".into())
    );
    assert_eq!(
        code(client.login_with_pin("8642").await),
        (
            Code::PermissionDenied,
            "no access to this Sales Point".into()
        )
    );
    assert!(
        client.session().await.unwrap().is_none(),
        "a refusal never opens a session"
    );
}

#[tokio::test]
async fn rule3_no_match_says_nothing_about_users() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(snapshot(
        1,
        1,
        vec![cashier()],
        vec![user("amy", 1, Some("1234"))],
    ))
    .await
    .unwrap();
    let (code_, message) = code(daemon.client().await.login_with_pin("9999").await);
    assert_eq!(code_, Code::Unauthenticated);
    assert!(!message.contains("amy"), "{message}");
    let (code_, _) = code(daemon.client().await.login_with_key("NOPE").await);
    assert_eq!(code_, Code::Unauthenticated);
}

#[tokio::test]
async fn rule4_denial_beats_permission_and_scoped_roles_apply_only_at_their_sales_point() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    let mut carla = user("carla", 1, Some("2468"));
    carla["roles"] = json!([{ "role": "cashier" }, { "role": "trainee" }]);
    let mut fay = user("fay", 2, Some("5555"));
    fay["roles"] = json!([
        { "role": "cashier" },
        { "role": "manager", "sales_point": "sp-other" },
        { "role": "supervisor", "sales_point": SALES_POINT }
    ]);
    sync.apply_snapshot(snapshot(
        1,
        1,
        vec![
            cashier(),
            role("trainee", &[], &["drawer.open"]),
            role("manager", &["refund.create"], &[]),
            role("supervisor", &["sale.void"], &[]),
        ],
        vec![carla, fay],
    ))
    .await
    .unwrap();
    let mut client = daemon.client().await;
    let session = client.login_with_pin("2468").await.unwrap();
    assert_eq!(session.permissions, vec!["sale.create"]);
    assert_eq!(session.role_ids, vec!["cashier", "trainee"]);
    let answer = client.check_permission("drawer.open").await.unwrap();
    assert!(!answer.granted);
    assert_eq!(answer.user_id, "carla");
    assert!(
        client
            .check_permission("sale.create")
            .await
            .unwrap()
            .granted
    );

    let session = client.login_with_pin("5555").await.unwrap();
    assert_eq!(
        session.permissions,
        vec!["drawer.open", "sale.create", "sale.void"]
    );
    assert_eq!(session.role_ids, vec!["cashier", "supervisor"]);
    assert!(
        !client
            .check_permission("refund.create")
            .await
            .unwrap()
            .granted
    );
}

#[tokio::test]
async fn rule5_reactivation_makes_the_old_pin_work_again() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(snapshot(
        1,
        1,
        vec![cashier()],
        vec![user("dora", 1, Some("1357"))],
    ))
    .await
    .unwrap();
    let mut client = daemon.client().await;
    client.login_with_pin("1357").await.unwrap();

    // Deactivate without sending a PIN again: the credential stays in the replica ...
    let mut inactive = user("dora", 1, Some("1357"));
    inactive["active"] = json!(false);
    sync.apply_changes(changes((1, 1), 2, vec![], vec![inactive], &[], &[]))
        .await
        .unwrap();
    assert_eq!(
        code(client.login_with_pin("1357").await).0,
        Code::PermissionDenied
    );

    // ... and reactivating makes it work at once.
    sync.apply_changes(changes(
        (1, 2),
        3,
        vec![],
        vec![user("dora", 1, Some("1357"))],
        &[],
        &[],
    ))
    .await
    .unwrap();
    let session = client.login_with_pin("1357").await.unwrap();
    assert_eq!(session.user.unwrap().id, "dora");
}

#[tokio::test]
async fn key_login_uses_the_same_rules() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    let mut max = user("max", 5, None);
    max["keys"] = json!(["01A1B2C3D4E5F6C8", "SPARE-KEY"]);
    let mut shared = user("shared", 9, None);
    shared["keys"] = json!(["01A1B2C3D4E5F6C8"]);
    sync.apply_snapshot(snapshot(1, 1, vec![cashier()], vec![max, shared]))
        .await
        .unwrap();
    let mut client = daemon.client().await;
    let session = client.login_with_key("01A1B2C3D4E5F6C8").await.unwrap();
    assert_eq!(session.user.unwrap().id, "max");
    assert_eq!(
        session.method,
        tillgate_client::proto::LoginMethod::Key as i32
    );
    assert_eq!(key_user(&mut client, "SPARE-KEY").await, "max");
    // A key id is not a PIN.
    assert_eq!(
        code(client.login_with_pin("01A1B2C3D4E5F6C8").await).0,
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn sub_terminal_access() {
    let daemon = Daemon::start_with("sub_terminal_id = \"sp-main-2\"", "");
    let mut sync = daemon.authorized_sync().await;
    let mut sub_only = user("sub", 1, Some("1111"));
    sub_only["sales_points"] = json!([]);
    sub_only["sub_terminals"] = json!(["sp-main-2"]);
    let mut other_sub = user("other", 1, Some("2222"));
    other_sub["sales_points"] = json!([]);
    other_sub["sub_terminals"] = json!(["sp-main-3"]);
    sync.apply_snapshot(snapshot(
        1,
        1,
        vec![cashier()],
        vec![sub_only, other_sub, user("whole", 2, Some("3333"))],
    ))
    .await
    .unwrap();
    let mut client = daemon.client().await;
    assert_eq!(pin_user(&mut client, "1111").await, "sub");
    assert_eq!(pin_user(&mut client, "3333").await, "whole");
    assert_eq!(
        code(client.login_with_pin("2222").await),
        (
            Code::PermissionDenied,
            "no access to this Sales Point".into()
        )
    );
    assert_eq!(client.status().await.unwrap().users_at_terminal, 2);
}

#[tokio::test]
async fn empty_replica_refuses_logins_as_unavailable() {
    let daemon = Daemon::start();
    let (c, message) = code(daemon.client().await.login_with_pin("1234").await);
    assert_eq!((c, message.as_str()), (Code::Unavailable, "no replica yet"));
    assert_eq!(
        daemon.client().await.status().await.unwrap().replica_status,
        "needs snapshot"
    );
    assert_eq!(
        code(daemon.client().await.login_with_pin("").await).0,
        Code::InvalidArgument
    );
}
