//! Session policy end to end: lockout, manager override, stale replica, explain and collisions,
//! fleet health, admin-only calls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use tillgate_client::proto as pb;
use tillgate_client::{Credential, error_reason, retry_after_from_status};
use tillgate_tests::*;
use tonic::Code;

fn roles() -> Vec<serde_json::Value> {
    vec![
        role("cashier", &["sale.create"], &[]),
        role("manager", &["sale.create", "refund.create"], &[]),
    ]
}

fn staff() -> Vec<serde_json::Value> {
    let mut manager = user_with_keys("max", 1, Some("9000"), &["K-MAX-01"]);
    manager["roles"] = json!([{ "role": "manager" }]);
    vec![
        manager,
        user_with_keys("amy", 2, Some("1111"), &["K-AMY-01"]),
        user("bob", 3, Some("2222")),
    ]
}

async fn started(extra: &str) -> Daemon {
    let daemon = Daemon::start_with("", extra);
    daemon.push_snapshot(snapshot(1, 1, roles(), staff())).await;
    daemon
}

#[tokio::test]
async fn lockout_refuses_pin_entry_with_retry_info_survives_a_restart_and_tillctl_unlock_clears_it()
{
    let mut daemon = started("[lockout]\nmax_failures = 3\n").await;
    let mut client = daemon.client().await;
    for _ in 0..3 {
        assert_eq!(
            code(client.login_with_pin("0000").await).0,
            Code::Unauthenticated
        );
    }
    // Even the right PIN is refused now, with a RetryInfo detail (default delay 30 s).
    let refused = status(client.login_with_pin("1111").await);
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("too many failed attempts"),
        "{}",
        refused.message()
    );
    let wait = retry_after_from_status(&refused).expect("RetryInfo detail");
    assert!(
        wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    // So is a manager override by PIN from the same source.
    assert_eq!(
        status(
            client
                .authorize(Credential::Pin("9000"), "refund.create")
                .await
        )
        .code(),
        Code::ResourceExhausted
    );
    // The counters live in the replica: a restart keeps the lockout.
    daemon.stop().await;
    let daemon = Daemon::spawn(&daemon.dir);
    let mut client = daemon.client().await;
    assert_eq!(
        status(client.login_with_pin("1111").await).code(),
        Code::ResourceExhausted
    );
    let source = my_socket_source();
    let (ok, out, err) = run_tillctl(&daemon, &["lockouts"], "", &[]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{source}\t")) && l.contains("PIN entry locked until")),
        "{out}"
    );
    let (ok, _, err) = run_tillctl(&daemon, &["login", "--pin"], "1111\n", &[]);
    assert!(!ok && err.contains("RESOURCE_EXHAUSTED"), "{err}");
    assert!(err.contains("tillctl: retry in "), "{err}");

    let (ok, out, err) = run_tillctl(&daemon, &["unlock", &source], "", &[]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("cleared {source}"));
    let session = client.login_with_pin("1111").await.unwrap();
    assert_eq!(session.user.unwrap().id, "amy");

    // Locked again: a key is not a guessed PIN, so key login still works — but a valid key
    // never clears a PIN lockout; only the right PIN from this source or an admin does ...
    for _ in 0..3 {
        assert_eq!(
            code(client.login_with_pin("0000").await).0,
            Code::Unauthenticated
        );
    }
    assert_eq!(
        status(client.login_with_pin("1111").await).code(),
        Code::ResourceExhausted
    );
    let session = client.login_with_key("K-AMY-01").await.unwrap();
    assert_eq!(session.user.unwrap().id, "amy");
    assert_eq!(
        status(client.login_with_pin("2222").await).code(),
        Code::ResourceExhausted
    );
    // That last refusal came from the daemon's memory of the lockout (no store read); the
    // unlock must clear that too, at once: the very next PIN is admitted.
    let (ok, out, err) = run_tillctl(&daemon, &["unlock", &source], "", &[]);
    assert!(
        ok && out.trim() == format!("cleared {source}"),
        "{out}{err}"
    );
    client.login_with_pin("2222").await.unwrap();
    // ... and the terminal budget keeps its 6 failures (of 20): successes, keys and a source
    // unlock give nothing back; only time (one per lockout.terminal_refill) or an admin does.
    let lockouts = client.lockouts().await.unwrap();
    assert_eq!(
        lockouts
            .iter()
            .map(|l| (l.source.as_str(), l.failures, l.locked_until.is_some()))
            .collect::<Vec<_>>(),
        vec![("terminal", 6, false)]
    );
    let (ok, out, _) = run_tillctl(&daemon, &["unlock"], "", &[]);
    assert!(ok && out.trim() == "cleared terminal", "{out}");
    let (ok, out, _) = run_tillctl(&daemon, &["unlock"], "", &[]);
    assert!(ok && out.trim() == "nothing to clear", "{out}");
    let audit = client.audit_tail(50).await.unwrap().events;
    let cleared: Vec<_> = audit
        .iter()
        .filter(|e| e.kind == "lockout_cleared")
        .collect();
    assert_eq!(cleared.len(), 4, "{audit:?}");
    assert_eq!(cleared[0].reason, format!("cleared {source}"));
}

#[tokio::test]
async fn lockout_delay_doubles_up_to_the_cap_and_a_success_resets_the_count() {
    let daemon = started(
        "[lockout]\nmax_failures = 2\nterminal_max_failures = 100\ndelay = \"1s\"\nmax_delay = \"2s\"\n",
    )
    .await;
    let mut client = daemon.client().await;
    assert_eq!(
        code(client.login_with_pin("0000").await).0,
        Code::Unauthenticated
    );
    // From the second failure on, each one locks the source: 1 s, doubled, capped at 2 s.
    let mut waits = vec![];
    for _ in 0..3 {
        assert_eq!(
            code(client.login_with_pin("0000").await).0,
            Code::Unauthenticated
        );
        let refused = status(client.login_with_pin("0000").await);
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let wait = retry_after_from_status(&refused).unwrap();
        waits.push(wait.as_secs());
        tokio::time::sleep(wait + Duration::from_millis(100)).await;
    }
    assert_eq!(waits, vec![1, 2, 2], "1 s, doubled, capped at 2 s");
    // The right PIN from this source resets it.
    client.login_with_pin("2222").await.unwrap();
    // One failure, a success, one failure: the success reset the count, so no lockout.
    assert_eq!(
        code(client.login_with_pin("0000").await).0,
        Code::Unauthenticated
    );
    client.login_with_pin("2222").await.unwrap();
    assert_eq!(
        code(client.login_with_pin("0000").await).0,
        Code::Unauthenticated
    );
    assert_eq!(pin_user(&mut client, "2222").await, "bob");
}

#[tokio::test]
async fn manager_override_answers_without_touching_the_session_and_is_audited_with_both_users() {
    let daemon = started("").await;
    let mut client = daemon.client().await;
    let cashier = client.login_with_pin("1111").await.unwrap();
    let mut watch = daemon.client().await.watch().await.unwrap();
    assert_eq!(
        kind(&next_event(&mut watch, Duration::from_secs(5)).await),
        pb::SessionEventKind::Current
    );

    let answer = client
        .authorize(Credential::Pin("9000"), "refund.create")
        .await
        .unwrap();
    assert!(answer.granted);
    assert_eq!(answer.authorizer.unwrap().id, "max");
    assert_eq!(answer.session_user_id, "amy");
    let answer = client
        .authorize(Credential::Key("K-AMY-01"), "refund.create")
        .await
        .unwrap();
    assert!(!answer.granted, "amy may not refund");
    // Same resolution errors as login.
    assert_eq!(
        code(
            client
                .authorize(Credential::Pin("0000"), "refund.create")
                .await
        )
        .0,
        Code::Unauthenticated
    );
    assert_eq!(
        code(client.authorize(Credential::Pin("9000"), "").await).0,
        Code::InvalidArgument
    );
    // The session is exactly as it was, and no session event was published: the barrier, a
    // logout and a login again, gives the next two events, and a stray one would come first.
    assert_eq!(client.session().await.unwrap().unwrap(), cashier);
    client.logout().await.unwrap();
    assert_eq!(
        kind(&next_event(&mut watch, Duration::from_secs(5)).await),
        pb::SessionEventKind::Logout
    );
    client.login_with_pin("1111").await.unwrap();
    assert_eq!(
        kind(&next_event(&mut watch, Duration::from_secs(5)).await),
        pb::SessionEventKind::Login
    );

    let (ok, out, err) = run_tillctl(
        &daemon,
        &["authorize", "refund.create", "--pin"],
        "9000\n",
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("granted: max"), "{out}");
    let (ok, out, _) = run_tillctl(
        &daemon,
        &["authorize", "refund.create", "--key"],
        "K-AMY-01\n",
        &[],
    );
    assert!(!ok && out.starts_with("denied: amy"), "{out}");

    let (ok, out, err) = run_tillctl(&daemon, &["audit", "-n", "10"], "", &[]);
    assert!(ok, "{err}");
    let granted: Vec<_> = out
        .lines()
        .filter(|l| l.contains(" authorize pin granted "))
        .collect();
    assert_eq!(granted.len(), 2, "{out}");
    assert!(
        granted[0].contains("user=max session_user=amy permission=refund.create"),
        "{out}"
    );
    assert!(out.contains(" authorize key not_granted "), "{out}");
    assert!(out.contains(" authorize pin no_match "), "{out}");
}

#[tokio::test]
async fn a_stale_replica_refuses_logins_until_central_syncs_again() {
    let daemon = started("[replica]\nmax_age = \"2s\"\n").await;
    let mut client = daemon.client().await;
    client.login_with_pin("1111").await.unwrap();
    let mut sync = daemon.authorized_sync_named("central-2").await;
    assert!(!sync.state().await.unwrap().replica_stale);
    tokio::time::sleep(Duration::from_millis(2300)).await;

    let refused = status(client.login_with_pin("1111").await);
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .starts_with("replica is stale: the last successful sync was ")
            && refused.message().contains("replica.max_age is 2s"),
        "{}",
        refused.message()
    );
    assert_eq!(error_reason(&refused).as_deref(), Some("REPLICA_STALE"));
    assert_eq!(
        status(client.login_with_key("K-AMY-01").await).code(),
        Code::FailedPrecondition
    );
    assert!(sync.state().await.unwrap().replica_stale);

    // Central's heartbeat: an empty batch at the current revision is an idempotent success that
    // records a successful sync.
    let replay = sync
        .apply_changes(changes((1, 1), 1, vec![], vec![], &[], &[]))
        .await
        .unwrap();
    assert!(!replay.applied);
    assert_eq!(pin_user(&mut client, "1111").await, "amy");
    assert!(!sync.state().await.unwrap().replica_stale);
}

fn collision_staff() -> Vec<serde_json::Value> {
    let mut dora = user("dora", 5, Some("1234"));
    dora["active"] = json!(false);
    let mut erik = user("erik", 1, Some("8642"));
    erik["sales_points"] = json!(["sp-airport"]);
    vec![
        user("anna", 10, Some("1234")),
        user_with_keys("ben", 20, Some("1234"), &["K-BEN-01"]),
        dora,
        erik,
        user_with_keys("cleo", 30, None, &["K-SHARED"]),
        user_with_keys("dan", 31, None, &["K-SHARED"]),
    ]
}

#[tokio::test]
async fn explain_and_collisions_on_the_socket_and_on_the_sync_listener() {
    let daemon = Daemon::start();
    let mut sync = daemon.authorized_sync().await;
    sync.apply_snapshot(snapshot(
        1,
        1,
        vec![role("cashier", &["sale.create"], &[])],
        collision_staff(),
    ))
    .await
    .unwrap();
    let mut client = daemon.client().await;

    let ben = client.explain("ben").await.unwrap();
    assert!(ben.present && ben.active && ben.assigned_to_sales_point);
    assert!(!ben.assigned_to_sub_terminal);
    assert!(ben.has_pin && ben.keys == 1 && ben.can_log_in);
    assert_eq!(ben.role_ids, vec!["cashier"]);
    assert_eq!(ben.permissions, vec!["sale.create"]);
    assert_eq!(ben.sales_point_id, SALES_POINT);
    let pin = &ben.credentials[0];
    assert_eq!(pin.method, pb::LoginMethod::Pin as i32);
    assert!(!pin.wins);
    assert_eq!(pin.logs_in.as_ref().unwrap().id, "anna");
    let mut shared: Vec<_> = pin.shared_with.iter().map(|u| u.id.as_str()).collect();
    shared.sort();
    assert_eq!(shared, vec!["anna", "dora"]);
    assert!(ben.credentials[1].wins, "his key logs him in");
    assert_eq!(
        ben.problems,
        vec!["PIN: logs in as anna instead (shares it and comes first: ordinal 10)"]
    );

    let erik = client.explain("erik").await.unwrap();
    assert!(!erik.can_log_in && !erik.assigned_to_sales_point);
    assert_eq!(
        erik.problems,
        vec![format!(
            "user is not assigned to Sales Point \"{SALES_POINT}\""
        )]
    );
    let ghost = client.explain("ghost").await.unwrap();
    assert!(!ghost.present && !ghost.can_log_in);

    // tillctl prints the checklist; exit 0 when the user can log in here, 1 when not.
    let (ok, out, err) = run_tillctl(&daemon, &["explain", "ben"], "", &[]);
    assert!(ok, "{err}");
    assert!(out.contains("active:            yes"), "{out}");
    assert!(
        out.contains("PIN:               logs in as anna instead") && out.contains("[shared with"),
        "{out}"
    );
    assert!(
        out.contains("key 1:             logs in as this user"),
        "{out}"
    );
    let (ok, out, _) = run_tillctl(&daemon, &["explain", "dora"], "", &[]);
    assert!(!ok && out.contains("active:            no"), "{out}");
    assert!(out.contains("  - user is inactive"), "{out}");

    // The collision report: PIN 1234 (anna wins over ben; dora is inactive) and the shared key.
    let report = client.collisions().await.unwrap();
    let summary: Vec<_> = report
        .collisions
        .iter()
        .map(|c| {
            (
                c.method,
                c.members
                    .iter()
                    .map(|m| m.user.as_ref().unwrap().id.clone())
                    .collect::<Vec<_>>(),
                c.winner.as_ref().map(|u| u.id.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                pb::LoginMethod::Pin as i32,
                vec!["dora".into(), "anna".into(), "ben".into()],
                Some("anna".into())
            ),
            (
                pb::LoginMethod::Key as i32,
                vec!["cleo".into(), "dan".into()],
                Some("cleo".into())
            ),
        ]
    );
    let (ok, out, _) = run_tillctl(&daemon, &["collisions"], "", &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "PIN shared by dora (ordinal 5, inactive), anna (ordinal 10), ben (ordinal 20) -> anna logs in"
        ),
        "{out}"
    );

    // Central gets the same over the sync listener, with its token; without one it is refused.
    assert_eq!(sync.explain("ben").await.unwrap(), ben);
    assert_eq!(sync.collisions().await.unwrap(), report);
    let mut anonymous = daemon.sync(None).await;
    assert_eq!(
        code(anonymous.explain("ben").await).0,
        Code::Unauthenticated
    );
    assert_eq!(code(anonymous.collisions().await).0, Code::Unauthenticated);
    // No digest, PIN or key leaves in an explanation.
    let text = format!("{ben:?}{report:?}");
    for secret in ["1234", "K-BEN-01", "K-SHARED"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test]
async fn fleet_health_reports_audit_backlog_lockouts_devices_session_and_version() {
    let daemon = started("[audit]\nmax_rows = 500\n").await;
    let mut client = daemon.client().await;
    assert_eq!(
        code(client.login_with_pin("0000").await).0,
        Code::Unauthenticated
    );
    client.login_with_pin("1111").await.unwrap();
    assert_eq!(
        code(client.login_with_pin("0000").await).0,
        Code::Unauthenticated
    );
    let mut sync = daemon.authorized_sync_named("central-2").await;
    let state = sync.state().await.unwrap();
    // The wrong PIN after the success is the same streak's: counted for its summary row.
    assert_eq!(state.audit_backlog, 2);
    assert_eq!(state.audit_max_rows, 500);
    assert_eq!(state.audit_status, "ok");
    let lockouts: Vec<_> = state
        .lockouts
        .iter()
        .map(|l| (l.source.clone(), l.failures, l.locked_until.is_some()))
        .collect();
    assert_eq!(
        lockouts,
        vec![
            (my_socket_source(), 1, false),
            ("terminal".into(), 2, false)
        ]
    );
    assert!(state.input_devices.is_empty());
    assert_eq!(state.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (state.session_user_id.as_str(), state.session_locked),
        ("amy", false)
    );
    assert!(!state.replica_stale);

    let token = daemon
        .client()
        .await
        .create_token("ops")
        .await
        .unwrap()
        .token;
    let (ok, out, err) = run_tillctl(&daemon, &["sync-state"], "", &[("TILLGATE_TOKEN", &token)]);
    assert!(ok, "{err}");
    assert!(out.contains("audit backlog:     2 (cap 500; ok)"), "{out}");
    assert!(out.contains("session:           amy"), "{out}");
    assert!(out.contains("lockouts:          2"), "{out}");
}

#[tokio::test]
async fn policy_admin_calls_need_an_admin_uid() {
    if !root_or_skip("run tillctl as another uid") {
        return;
    }
    let daemon = started("[login_socket]\nmode = \"0666\"\n").await;
    let run_as_nobody = |args: &[&str]| tillctl_as_nobody(&daemon, args);
    for args in [
        &["unlock"][..],
        &["lockouts"],
        &["audit"],
        &["explain", "amy"],
        &["collisions"],
    ] {
        let output = run_as_nobody(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("PERMISSION_DENIED"),
            "{args:?}: {stderr}"
        );
    }
    // The Login API is open to the same peer, and its failures count under its own uid.
    let output = run_as_nobody(&["login", "--key", "K-NOBODY"]);
    assert!(!output.status.success());
    let lockouts = daemon.client().await.lockouts().await.unwrap();
    assert!(
        lockouts
            .iter()
            .any(|l| l.source == "socket uid=65534 (keys)"),
        "{lockouts:?}"
    );
}
