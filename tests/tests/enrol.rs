//! Enrolment end to end through the real daemon: a key captured from a serial reader on a real
//! pseudo-terminal (not a login; hashed under the account's scheme; collisions reported; the
//! outbox row central pulls), captures that time out or are refused, and PIN changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use serde_json::json;
use tillgate_client::proto as pb;
use tillgate_client::{ClientError, Credential, PinApproval, TillClient};
use tillgate_tests::*;

const MANAGER_PIN: &str = "918273645";
const KIM_PIN: &str = "1357";
const KIM_KEY: &str = "04A1B2C3D4";
const LOU_KEY: &str = "04FFEEDDCC";
const PERMISSION: &str = "user.credentials.manage";

fn manager(id: &str, ordinal: i64, pin: &str) -> serde_json::Value {
    let mut boss = user(id, ordinal, Some(pin));
    boss["roles"] = json!([{ "role": "manager" }]);
    boss
}

/// A daemon reading a serial key reader ("door reader") on a pseudo-terminal, with a manager
/// (boss), two cashiers with keys (kim, lou) and a new user without credentials (newbie).
async fn till(extra: &str) -> (Daemon, Pty, tempfile::TempDir) {
    let temp = tempfile::tempdir().unwrap();
    let link = temp.path().join("reader");
    let pty = Pty::open(&link);
    let daemon = Daemon::start_with(
        "",
        &format!(
            "[[input.serial]]\nname = \"door reader\"\npath = \"{}\"\nprofile = \"generic-wedge\"\n{extra}",
            link.display()
        ),
    );
    daemon
        .push_snapshot(snapshot(
            1,
            1,
            vec![
                role("cashier", &["sale.create"], &[]),
                role("manager", &[PERMISSION, "sale.void"], &[]),
            ],
            vec![
                manager("boss", 1, MANAGER_PIN),
                user_with_keys("kim", 2, Some(KIM_PIN), &[KIM_KEY]),
                user_with_keys("lou", 3, None, &[LOU_KEY]),
                user("newbie", 4, None),
            ],
        ))
        .await;
    let mut client = daemon.client().await;
    wait_device(&mut client, &link, true).await;
    (daemon, pty, temp)
}

fn code(result: Result<pb::EnrolledCredential, ClientError>) -> tonic::Code {
    match result {
        Err(ClientError::Rpc(status)) => status.code(),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// Waits until the daemon's log shows `count` key captures waiting (the positive barrier before
/// a key is presented or a second capture is tried).
async fn captures_started(daemon: &Daemon, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.log_text().matches("key capture started").count() < count {
        assert!(
            Instant::now() < deadline,
            "no key capture started:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn verifies(phc: &str, secret: &str) -> bool {
    argon2::Argon2::default()
        .verify_password(secret.as_bytes(), &PasswordHash::new(phc).unwrap())
        .is_ok()
}

async fn enrolled_rows(client: &mut TillClient) -> Vec<pb::AuditEvent> {
    client
        .audit_tail(1000)
        .await
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.kind == "credential_enrolled")
        .collect()
}

#[tokio::test]
async fn a_key_captured_at_the_till_is_hashed_for_central_not_logged_in() {
    let (daemon, mut pty, _temp) = till("").await;
    let mut client = daemon.client().await;
    let mut watch = client.watch().await.unwrap();
    assert_eq!(
        next_event(&mut watch, Duration::from_secs(10)).await.kind,
        pb::SessionEventKind::Current as i32
    );

    // A manager approves; the next key on the door reader is captured for newbie. It is lou's
    // key: the answer says so (a collision), found through the index.
    let mut enrolling = daemon.client().await;
    let capture = tokio::spawn(async move {
        enrolling
            .enroll_key(
                "newbie",
                Some(Credential::Pin(MANAGER_PIN)),
                "door reader",
                20,
            )
            .await
    });
    captures_started(&daemon, 1).await;
    pty.write(format!("{LOU_KEY}\r\n").as_bytes());
    let enrolled = capture.await.unwrap().unwrap();
    assert_eq!(enrolled.user_id, "newbie");
    assert_eq!(enrolled.kind, pb::LoginMethod::Key as i32);
    assert_eq!(enrolled.authorized_by, "manager boss");
    assert!(enrolled.reader.contains("door reader"), "{enrolled:?}");
    assert_eq!(enrolled.holders, ["lou"]);
    assert!(
        verifies(&enrolled.phc, LOU_KEY),
        "the PHC string verifies the key's canonical id"
    );
    // Under the account's salt and costs: the same scheme as the replica's credentials.
    let account_scheme = |phc: &str| phc.rsplit_once('$').unwrap().0.to_owned();
    let lou_phc =
        tillgate_client::export::AccountHasher::new(&serde_json::from_value(account()).unwrap())
            .unwrap()
            .hash(LOU_KEY)
            .unwrap();
    assert_eq!(account_scheme(&enrolled.phc), account_scheme(&lou_phc));
    assert_eq!(enrolled.phc, lou_phc);

    // The captured key was not a login: the next session event is kim's key login.
    pty.write(format!("{KIM_KEY}\r\n").as_bytes());
    let login = next_event(&mut watch, Duration::from_secs(20)).await;
    assert_eq!(login.kind, pb::SessionEventKind::Login as i32);
    assert_eq!(login.session.unwrap().user.unwrap().id, "kim");

    // Central learns it through the outbox: one credential_enrolled row with the PHC string.
    let rows = enrolled_rows(&mut client).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(
        (
            row.user_id.as_str(),
            row.method,
            row.phc.as_str(),
            row.authorizer.as_str(),
            row.outcome.as_str()
        ),
        (
            "newbie",
            pb::LoginMethod::Key as i32,
            enrolled.phc.as_str(),
            "manager boss",
            "enrolled"
        )
    );
    let audit = client.audit_tail(1000).await.unwrap().events;
    assert!(
        audit
            .iter()
            .any(|e| e.kind == "key_capture" && e.outcome == "captured" && e.user_id == "newbie"),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|e| e.kind == "authorize"
            && e.outcome == "granted"
            && e.user_id == "boss"
            && e.permission == PERMISSION),
        "{audit:?}"
    );

    // The replica is unchanged until central pushes the credential back.
    assert_eq!(
        code(
            client
                .enroll_key("nobody-here", None, "door reader", 1)
                .await
        ),
        tonic::Code::NotFound
    );
    let session = client.login_with_key(LOU_KEY).await.unwrap();
    assert_eq!(session.user.unwrap().id, "lou");

    // No plaintext anywhere: not in the log, not in the state files.
    let log = daemon.log_text();
    for secret in [LOU_KEY, KIM_KEY, MANAGER_PIN] {
        assert!(!log.contains(secret), "{secret} reached the log");
    }
    for file in ["local.db", "local.db-wal", "replica.db", "replica.db-wal"] {
        let path = daemon.state_dir().join(file);
        if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(LOU_KEY),
                "{} holds the key id",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn captures_time_out_one_per_reader_and_need_an_approver() {
    let (daemon, mut pty, _temp) = till("[login_socket]\nmode = \"0666\"\n").await;
    let mut client = daemon.client().await;

    // This test runs as the daemon's own uid: an admin uid, so no credential is needed.
    let mut first = daemon.client().await;
    let waiting =
        tokio::spawn(async move { first.enroll_key("newbie", None, "door reader", 2).await });
    captures_started(&daemon, 1).await;
    // Only one capture at a time per reader ("any reader" overlaps it too).
    assert_eq!(
        code(client.enroll_key("newbie", None, "door reader", 1).await),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        code(client.enroll_key("newbie", None, "", 1).await),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(code(waiting.await.unwrap()), tonic::Code::DeadlineExceeded);

    // The timed-out capture left the reader logging in as before.
    let mut watch = client.watch().await.unwrap();
    next_event(&mut watch, Duration::from_secs(10)).await;
    pty.write(format!("{KIM_KEY}\r\n").as_bytes());
    let login = next_event(&mut watch, Duration::from_secs(20)).await;
    assert_eq!(login.session.unwrap().user.unwrap().id, "kim");
    let audit = client.audit_tail(1000).await.unwrap().events;
    assert!(
        audit
            .iter()
            .any(|e| e.kind == "key_capture" && e.outcome == "timed_out"),
        "{audit:?}"
    );
    assert!(enrolled_rows(&mut client).await.is_empty());

    // A reader that is not attached, a manager without the permission, another uid without a
    // credential: all refused before any capture.
    assert_eq!(
        code(client.enroll_key("newbie", None, "back door", 1).await),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        code(
            client
                .enroll_key("newbie", Some(Credential::Pin(KIM_PIN)), "", 1)
                .await
        ),
        tonic::Code::PermissionDenied
    );
    let refused = tillctl_as_nobody(&daemon, &["enroll-key", "newbie", "--timeout", "1"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("admin uids"), "{stderr}");
    assert_eq!(daemon.log_text().matches("key capture started").count(), 1);
}

#[tokio::test]
async fn a_pin_change_is_refused_when_in_use_and_answered_as_a_phc_otherwise() {
    let (daemon, _pty, _temp) = till("").await;
    let mut client = daemon.client().await;
    let own = PinApproval::CurrentPin(KIM_PIN);

    // The manager's PIN is in use: refused without saying by whom.
    assert_eq!(
        code(
            client
                .change_pin("kim", MANAGER_PIN, MANAGER_PIN, own)
                .await
        ),
        tonic::Code::AlreadyExists
    );
    assert_eq!(
        code(
            client
                .change_pin("kim", "246813579", "246813570", own)
                .await
        ),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(client.change_pin("kim", "24", "24", own).await),
        tonic::Code::InvalidArgument
    );
    // A wrong current PIN is a failed attempt like a wrong login.
    assert_eq!(
        code(
            client
                .change_pin(
                    "kim",
                    "246813579",
                    "246813579",
                    PinApproval::CurrentPin("0000")
                )
                .await
        ),
        tonic::Code::Unauthenticated
    );

    let enrolled = client
        .change_pin("kim", "246813579", "246813579", own)
        .await
        .unwrap();
    assert_eq!(enrolled.authorized_by, "own PIN");
    assert_eq!(enrolled.kind, pb::LoginMethod::Pin as i32);
    assert!(verifies(&enrolled.phc, "246813579"));
    assert!(enrolled.holders.is_empty());

    // An operator at the till (admin uid) with tillctl, the PIN typed twice on stdin.
    let (ok, stdout, stderr) = run_tillctl(
        &daemon,
        &["change-pin", "newbie"],
        "864297531\n864297531\n",
        &[],
    );
    assert!(ok, "{stderr}");
    let phc = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("phc:"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(verifies(&phc, "864297531"), "{stdout}");

    // Two rows for central; a refusal row for the PIN in use. The replica is unchanged: kim
    // still logs in with the old PIN until central pushes the new one.
    let rows = enrolled_rows(&mut client).await;
    let enrolled_rows: Vec<_> = rows.iter().filter(|r| r.outcome == "enrolled").collect();
    assert_eq!(enrolled_rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r.outcome == "pin_in_use" && r.phc.is_empty())
    );
    let session = client.login_with_pin(KIM_PIN).await.unwrap();
    assert_eq!(session.user.unwrap().id, "kim");
    let log = daemon.log_text();
    for secret in ["246813579", "864297531", MANAGER_PIN] {
        assert!(!log.contains(secret), "{secret} reached the log");
    }
}

/// A capture asked to wait longer than the login socket lets a call run is cut to fit, so it
/// ends with its own DEADLINE_EXCEEDED (audited), not the listener's CANCELLED.
#[tokio::test]
async fn a_capture_longer_than_the_call_timeout_ends_before_it() {
    let (daemon, _pty, _temp) =
        till("[login_socket]\ncall_timeout = \"4s\"\n[enrolment]\ncapture_timeout = \"1s\"\n")
            .await;
    let mut client = daemon.client().await;
    // Runs as the daemon's own uid: an admin uid.
    assert_eq!(
        code(client.enroll_key("newbie", None, "door reader", 600).await),
        tonic::Code::DeadlineExceeded
    );
    let audit = client.audit_tail(1000).await.unwrap().events;
    assert!(
        audit
            .iter()
            .any(|e| e.kind == "key_capture" && e.outcome == "timed_out"),
        "{audit:?}"
    );
}

/// A new PIN's in-use check tells whether someone holds the PIN: each one is a guess charged to
/// the terminal's budget and never refunded, found in use or not, so a cashier's open session
/// cannot be used to test PINs for free.
#[tokio::test]
async fn every_new_pin_tested_by_a_pin_change_is_charged_like_a_wrong_login() {
    const TERMINAL_MAX_FAILURES: usize = 3;
    let (daemon, _pty, _temp) = till(&format!(
        "[lockout]\nmax_failures = 100\nterminal_max_failures = {TERMINAL_MAX_FAILURES}\nterminal_refill = \"1000h\"\n"
    ))
    .await;
    let mut client = daemon.client().await;
    // A right PIN is refunded: the session costs nothing.
    client.login_with_pin(KIM_PIN).await.unwrap();

    let probes = ["111111", MANAGER_PIN, "222222"];
    assert_eq!(probes.len(), TERMINAL_MAX_FAILURES);
    for probe in probes {
        let answer = client
            .change_pin("kim", probe, probe, PinApproval::Session)
            .await;
        if probe == MANAGER_PIN {
            assert_eq!(code(answer), tonic::Code::AlreadyExists);
        } else {
            answer.unwrap();
        }
    }
    // The budget is spent: the next probe, and any PIN entry at this terminal, is refused.
    assert_eq!(
        code(
            client
                .change_pin("kim", "333333", "333333", PinApproval::Session)
                .await
        ),
        tonic::Code::ResourceExhausted
    );
    match client.login_with_pin(MANAGER_PIN).await {
        Err(ClientError::Rpc(status)) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}")
        }
        other => panic!("PIN entry is still open: {other:?}"),
    }
    let lockouts = client.lockouts().await.unwrap();
    assert!(
        lockouts.iter().any(|l| l.source == "terminal"
            && l.failures as usize == TERMINAL_MAX_FAILURES
            && l.locked_until.is_some()),
        "{lockouts:?}"
    );
}

#[tokio::test]
async fn a_damaged_read_a_removal_an_unplug_or_a_cancelled_call_ends_the_capture_cleanly() {
    let temp = tempfile::tempdir().unwrap();
    let link = temp.path().join("lock");
    let mut pty = Pty::open(&link);
    let daemon = Daemon::start_with(
        "",
        &format!(
            "[[input.serial]]\nname = \"waiter lock\"\npath = \"{}\"\nframing = \"stx_etx\"\nprofile = \"addimat\"\n",
            link.display()
        ),
    );
    daemon
        .push_snapshot(snapshot(
            1,
            1,
            vec![role("cashier", &[], &[])],
            vec![
                user_with_keys("waiter", 1, None, &["017A6945260000AC"]),
                user("newbie", 2, None),
            ],
        ))
        .await;
    let mut client = daemon.client().await;
    wait_device(&mut client, &link, true).await;
    let start = |daemon: &Daemon| {
        let socket = daemon.socket.clone();
        tokio::spawn(async move {
            let mut client = TillClient::connect(&socket).await.unwrap();
            client.enroll_key("newbie", None, "waiter lock", 20).await
        })
    };

    // A bad CRC: the capture ends as a damaged read, and the read is audited as ever.
    let capture = start(&daemon);
    captures_started(&daemon, 1).await;
    pty.write(b"\x029B00002645697A01\x03");
    assert_eq!(code(capture.await.unwrap()), tonic::Code::Aborted);

    // The key pulled (Addimat's OUT) before a key was read.
    let capture = start(&daemon);
    captures_started(&daemon, 2).await;
    pty.write(b"\x02OUT\x03");
    assert_eq!(code(capture.await.unwrap()), tonic::Code::Aborted);

    // The caller goes away: the daemon ends the capture (audited) and the reader logs in.
    let capture = start(&daemon);
    captures_started(&daemon, 3).await;
    capture.abort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let audit = client.audit_tail(1000).await.unwrap().events;
        if audit.iter().any(|e| e.outcome == "cancelled") {
            break;
        }
        assert!(Instant::now() < deadline, "no cancelled capture: {audit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut watch = client.watch().await.unwrap();
    next_event(&mut watch, Duration::from_secs(10)).await;
    pty.write(b"\x02AC00002645697A01\x03");
    let login = next_event(&mut watch, Duration::from_secs(20)).await;
    assert_eq!(login.session.unwrap().user.unwrap().id, "waiter");

    // The reader goes away during a capture.
    let capture = start(&daemon);
    captures_started(&daemon, 4).await;
    drop(pty);
    assert_eq!(code(capture.await.unwrap()), tonic::Code::Aborted);

    let outcomes: Vec<String> = client
        .audit_tail(1000)
        .await
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.kind == "key_capture")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(
        outcomes,
        ["bad_read", "removed", "cancelled", "reader_gone"],
        "one row per capture, in order"
    );
    assert!(enrolled_rows(&mut client).await.is_empty());
}
