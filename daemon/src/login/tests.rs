//! The Authenticator against real stores in a temporary directory (cheap argon2 costs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use super::*;
use crate::audit::AuditRow;
use crate::credential::argon2id;
use crate::lockout::TERMINAL_SCOPE;
use crate::model::{
    Cursor, Effect, HashScheme, RoleAssignment, RolePermission, RoleRecord, StoredCredential,
    UserRecord,
};
use crate::session::{EventKind, SessionPolicy};
use crate::validate::ValidSnapshot;

const SOCKET: &str = "socket uid=1000 gid=1000 pid=7";
const OTHER_PID: &str = "socket uid=1000 gid=1000 pid=8";
const OTHER_UID: &str = "socket uid=2000 gid=2000 pid=9";

fn scheme() -> HashScheme {
    HashScheme {
        m_cost: 8,
        t_cost: 1,
        p_cost: 1,
        output_len: 32,
        salt: b"account-salt".to_vec(),
    }
}

fn credential(key: &TerminalKey, kind: CredentialKind, secret: &str) -> StoredCredential {
    let output = argon2id(secret.as_bytes(), &scheme()).unwrap();
    StoredCredential {
        kind,
        scheme: scheme(),
        digest: key.rekey(&output),
    }
}

fn user(key: &TerminalKey, id: &str, ordinal: i64, pin: &str, role: &str) -> UserRecord {
    UserRecord {
        id: id.into(),
        ordinal,
        first_name: id.to_uppercase(),
        last_name: String::new(),
        email: String::new(),
        active: true,
        credentials: vec![
            credential(key, CredentialKind::Pin, pin),
            credential(key, CredentialKind::Key, &format!("KEY-{id}")),
        ],
        roles: vec![RoleAssignment {
            role_id: role.into(),
            sales_point_id: None,
        }],
        sales_point_ids: vec!["sp".into()],
        sub_terminal_ids: vec![],
    }
}

fn role(id: &str, allow: &[&str]) -> RoleRecord {
    RoleRecord {
        id: id.into(),
        name: id.into(),
        rank: 1,
        permissions: allow
            .iter()
            .map(|p| RolePermission {
                name: (*p).into(),
                effect: Effect::Allow,
            })
            .collect(),
    }
}

fn terminal() -> Terminal {
    Terminal {
        sales_point_id: "sp".into(),
        sub_terminal_id: None,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    replica: Arc<Replica>,
    local: Arc<LocalStore>,
    key: Arc<TerminalKey>,
    auth: Authenticator,
}

fn policy() -> PolicySettings {
    PolicySettings {
        lockout: LockoutPolicy {
            max_failures: 3,
            terminal_max_failures: 5,
            ..LockoutPolicy::default()
        },
        ..PolicySettings::default()
    }
}

fn fixture(policy: PolicySettings) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(TerminalKey::from_bytes([3; 32]));
    let (replica, _) = Replica::open(&dir.path().join("r.db"), &key.fingerprint()).unwrap();
    let replica = Arc::new(replica);
    let (local, _) = LocalStore::open(&dir.path().join("l.db"), &dir.path().join("r.db")).unwrap();
    let local = Arc::new(local);
    replica
        .apply_snapshot(
            Cursor {
                epoch: 1,
                revision: 1,
            },
            ValidSnapshot {
                users: vec![
                    user(&key, "cashier", 1, "1111", "cashier"),
                    user(&key, "manager", 2, "9999", "manager"),
                ],
                roles: vec![
                    role("cashier", &["sale"]),
                    role("manager", &["sale", "refund"]),
                ],
            },
        )
        .unwrap();
    let sessions = Arc::new(SessionManager::new(SessionPolicy::default()));
    let auth = Authenticator::new(
        replica.clone(),
        local.clone(),
        key.clone(),
        terminal(),
        sessions,
        crate::hashing::HashingQueue::new(2, 4),
        policy,
    );
    Fixture {
        _dir: dir,
        replica,
        local,
        key,
        auth,
    }
}

fn pin(s: &str) -> Zeroizing<String> {
    Zeroizing::new(s.to_owned())
}

fn audit(f: &Fixture) -> Vec<AuditRow> {
    f.local.audit_after(0, 1000).unwrap()
}

fn outcomes(f: &Fixture) -> Vec<&'static str> {
    audit(f).iter().map(|r| r.record.outcome.as_str()).collect()
}

#[tokio::test]
async fn wrong_pins_lock_pin_entry_per_uid_but_not_keys() {
    let f = fixture(policy());
    for _ in 0..3 {
        let e = f.auth.login(CredentialKind::Pin, pin("0000"), SOCKET).await;
        assert!(matches!(e, Err(LoginError::NoMatch)), "{e:?}");
    }
    // Another connection of the same uid is the same source: locked, even with a right PIN.
    let e = f
        .auth
        .login(CredentialKind::Pin, pin("1111"), OTHER_PID)
        .await;
    let Err(LoginError::LockedOut {
        retry_after,
        terminal_wide: false,
    }) = e
    else {
        panic!("expected a lockout of the source, got {e:?}");
    };
    assert!(retry_after <= Duration::from_secs(30) && retry_after > Duration::from_secs(25));
    // Manager override by PIN from that source is refused too.
    let e = f
        .auth
        .authorize(CredentialKind::Pin, pin("9999"), "refund", SOCKET)
        .await;
    assert!(matches!(e, Err(LoginError::LockedOut { .. })), "{e:?}");
    // Another uid is another source.
    let session = f
        .auth
        .login(CredentialKind::Pin, pin("1111"), OTHER_UID)
        .await
        .unwrap();
    assert_eq!(session.user_id, "cashier");
    // A key from the locked source still works: lockout is about guessing PINs.
    let session = f
        .auth
        .login(CredentialKind::Key, pin("KEY-manager"), SOCKET)
        .await
        .unwrap();
    assert_eq!(session.user_id, "manager");
    // The first wrong PIN has its row; the two after it and the two refusals are counted for
    // the source's summary. A key login is another budget: it ends no PIN streak.
    assert_eq!(outcomes(&f), vec!["no_match", "accepted", "accepted"]);
    assert_eq!(f.auth.flush_summaries().await.unwrap(), 1);
    let rows = audit(&f);
    let summary = &rows[3].record;
    assert_eq!(
        (summary.outcome, summary.source.as_str()),
        (AuditOutcome::Coalesced, "socket uid=1000")
    );
    assert_eq!(
        crate::coalesce::parse_counts(&summary.reason)
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![
            ("login.no_match".to_owned(), 2),
            ("refused.locked_out".to_owned(), 2)
        ],
        "{}",
        summary.reason
    );
    // Every row is in the outbox with a distinct uuid and increasing seq.
    let rows = audit(&f);
    let mut uuids: Vec<_> = rows.iter().map(|r| r.uuid.clone()).collect();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), rows.len());
    assert!(rows.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
}

#[tokio::test]
async fn success_resets_the_source_but_not_the_terminal_budget() {
    let f = fixture(policy());
    let now = crate::clock::now();
    for _ in 0..2 {
        let _ = f.auth.login(CredentialKind::Pin, pin("0000"), SOCKET).await;
    }
    f.auth
        .login(CredentialKind::Pin, pin("1111"), SOCKET)
        .await
        .unwrap();
    let counters = f.local.lockout_counters(&policy().lockout, now).unwrap();
    assert_eq!(
        counters
            .iter()
            .map(|(s, c)| (s.as_str(), c.level_milli.div_ceil(1000)))
            .collect::<Vec<_>>(),
        vec![(TERMINAL_SCOPE, 2)],
        "the source's counter is gone; the terminal keeps the two failures (the success was refunded)"
    );
    // Three more wrong PINs from two uids: 2 + 3 = 5 in the terminal budget, at most 2 per source.
    for source in [SOCKET, OTHER_UID, SOCKET] {
        let e = f.auth.login(CredentialKind::Pin, pin("0000"), source).await;
        assert!(matches!(e, Err(LoginError::NoMatch)), "{e:?}");
    }
    let e = f
        .auth
        .login(CredentialKind::Pin, pin("1111"), "socket uid=3 gid=3 pid=3")
        .await;
    let Err(
        e @ LoginError::LockedOut {
            terminal_wide: true,
            ..
        },
    ) = e
    else {
        panic!("expected a terminal-wide lockout, got {e:?}");
    };
    assert!(
        e.to_string().starts_with(
            "too many failed attempts at this terminal: PIN entry is refused for another 20m"
        ),
        "{e}"
    );
    // Keys still work, and a valid key clears nothing.
    f.auth
        .login(
            CredentialKind::Key,
            pin("KEY-cashier"),
            "socket uid=3 gid=3 pid=3",
        )
        .await
        .unwrap();
    assert!(
        f.auth
            .login(CredentialKind::Pin, pin("1111"), OTHER_UID)
            .await
            .is_err()
    );
    // An admin clears it; audited, with the summary row of the refused attempts.
    let cleared = f
        .auth
        .clear_lockouts(None, "socket uid=0 gid=0 pid=1")
        .await
        .unwrap();
    assert_eq!(cleared.len(), 3, "{cleared:?}");
    f.auth
        .login(CredentialKind::Pin, pin("1111"), SOCKET)
        .await
        .unwrap();
    let last = audit(&f);
    let clear = last
        .iter()
        .find(|r| r.record.outcome == AuditOutcome::Cleared)
        .unwrap();
    assert_eq!(clear.record.kind, AuditKind::LockoutCleared);
    assert!(clear.record.reason.contains(TERMINAL_SCOPE));
    // Summary rows, with the clear: one per scope with anything pending. SOCKET's success
    // ended no streak, so its three wrong PINs after the first are in one row; then the two
    // lockout refusals.
    let summaries: Vec<_> = last
        .iter()
        .filter(|r| r.record.outcome == AuditOutcome::Coalesced)
        .map(|r| {
            let counts = crate::coalesce::parse_counts(&r.record.reason).unwrap();
            (
                r.record.source.as_str(),
                counts.into_iter().collect::<Vec<_>>(),
            )
        })
        .collect();
    let one = |label: &str| vec![(label.to_owned(), 1)];
    assert_eq!(
        summaries,
        vec![
            ("socket uid=1000", vec![("login.no_match".to_owned(), 3)]),
            ("socket uid=2000", one("refused.locked_out")),
            ("socket uid=3", one("refused.locked_out")),
        ]
    );
}

#[tokio::test]
async fn denied_pins_count_as_failures_and_malformed_ones_are_coalesced() {
    let f = fixture(policy());
    let now = crate::clock::now();
    let mut inactive = user(&f.key, "gone", 0, "5555", "cashier");
    inactive.active = false;
    f.replica
        .apply_changes(
            &crate::history::BatchHeader {
                base: Cursor {
                    epoch: 1,
                    revision: 1,
                },
                new_revision: 2,
                empty: false,
                digest: crate::history::BatchDigest([2; 32]),
            },
            |_| {
                Ok(crate::validate::ValidChanges {
                    upsert_users: vec![inactive],
                    delete_user_ids: vec![],
                    upsert_roles: vec![],
                    delete_role_ids: vec![],
                })
            },
        )
        .unwrap();
    for _ in 0..3 {
        let e = f.auth.login(CredentialKind::Pin, pin("5555"), SOCKET).await;
        assert!(
            matches!(e, Err(LoginError::Denied(DenialReason::Inactive))),
            "{e:?}"
        );
        let e = f.auth.login(CredentialKind::Pin, pin(""), SOCKET).await;
        assert!(matches!(e, Err(LoginError::BadInput(_))), "{e:?}");
        f.auth
            .report_bad_read("device front (/dev/hidraw0)", ReadFault::Crc)
            .await
            .unwrap();
    }
    // Three denied PINs are three failures: the source is locked.
    let e = f.auth.login(CredentialKind::Pin, pin("1111"), SOCKET).await;
    assert!(matches!(e, Err(LoginError::LockedOut { .. })), "{e:?}");
    let counters = f.local.lockout_counters(&policy().lockout, now).unwrap();
    assert_eq!(
        counters
            .iter()
            .map(|(s, c)| (s.as_str(), c.failures))
            .collect::<Vec<_>>(),
        vec![("socket uid=1000", 3), (TERMINAL_SCOPE, 3)]
    );
    // Rows: each denied PIN (it names the user whose PIN was found) and the 3 bad reads; the
    // malformed ones and the lockout refusal are counted for the source's summary. The first
    // bad read has its row (it opens the reader's key streak); the two after it are counted for
    // the reader's summary.
    let rows = audit(&f);
    assert_eq!(rows.len(), 4);
    let denied = &rows[0].record;
    assert_eq!(
        (denied.outcome, denied.user_id.as_deref()),
        (AuditOutcome::Denied, Some("gone"))
    );
    assert_eq!(denied.reason, "user inactive");
    let bad = &rows[1].record;
    assert_eq!(
        (bad.kind, bad.outcome),
        (AuditKind::BadRead, AuditOutcome::BadRead)
    );
    assert_eq!(bad.reason, "CRC mismatch");
    assert_eq!(bad.source, "device front (/dev/hidraw0)");
    // A valid key from the source: its own row.
    f.auth
        .login(CredentialKind::Key, pin("KEY-cashier"), SOCKET)
        .await
        .unwrap();
    assert_eq!(audit(&f)[4].record.outcome, AuditOutcome::Accepted);
    // The summary rows (each audit.summary_interval, and at shutdown) say what they cover.
    assert_eq!(f.auth.flush_summaries().await.unwrap(), 2);
    let rows = audit(&f);
    let reader = &rows[5].record;
    assert_eq!(
        (reader.outcome, reader.source.as_str()),
        (AuditOutcome::Coalesced, "device front (keys)")
    );
    assert!(
        reader.reason.ends_with(": bad_read.crc=2"),
        "{}",
        reader.reason
    );
    let summary = &rows[6].record;
    assert_eq!(
        (summary.outcome, summary.source.as_str()),
        (AuditOutcome::Coalesced, "socket uid=1000")
    );
    assert!(
        summary
            .reason
            .starts_with("4 attempts without a row of their own from "),
        "{}",
        summary.reason
    );
    assert!(
        summary
            .reason
            .ends_with(": refused.locked_out=1, refused.malformed=3"),
        "{}",
        summary.reason
    );
}

#[tokio::test]
async fn authorize_answers_without_touching_the_session_and_audits_both_users() {
    let f = fixture(policy());
    let session = f
        .auth
        .login(CredentialKind::Pin, pin("1111"), SOCKET)
        .await
        .unwrap();
    let answer = f
        .auth
        .authorize(CredentialKind::Pin, pin("9999"), "refund", SOCKET)
        .await
        .unwrap();
    assert!(answer.granted);
    assert_eq!(answer.authorizer.user_id, "manager");
    assert_eq!(answer.session_user_id.as_deref(), Some("cashier"));
    let no = f
        .auth
        .authorize(CredentialKind::Key, pin("KEY-cashier"), "refund", SOCKET)
        .await
        .unwrap();
    assert!(!no.granted);
    assert_eq!(f.auth.sessions().current().unwrap(), session);
    let rows = audit(&f);
    let row = &rows[1].record;
    assert_eq!(
        (row.kind, row.outcome),
        (AuditKind::Authorize, AuditOutcome::Granted)
    );
    assert_eq!(row.user_id.as_deref(), Some("manager"));
    assert_eq!(row.session_user_id.as_deref(), Some("cashier"));
    assert_eq!(row.permission.as_deref(), Some("refund"));
    assert_eq!(rows[2].record.outcome, AuditOutcome::NotGranted);
    assert_eq!(rows[2].record.method, Some(CredentialKind::Key));
}

#[tokio::test]
async fn a_stale_replica_refuses_logins() {
    let f = fixture(PolicySettings {
        max_replica_age: Some(Duration::from_secs(3600)),
        ..policy()
    });
    f.auth
        .login(CredentialKind::Pin, pin("1111"), SOCKET)
        .await
        .unwrap();
    let old = fixture(PolicySettings {
        max_replica_age: Some(Duration::from_secs(1)),
        ..policy()
    });
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = old
        .auth
        .login(CredentialKind::Pin, pin("1111"), SOCKET)
        .await;
    let Err(e @ LoginError::Stale { .. }) = e else {
        panic!("expected stale, got {e:?}");
    };
    assert!(
        e.to_string()
            .starts_with("replica is stale: the last successful sync was 20"),
        "{e}"
    );
    assert!(e.to_string().contains("replica.max_age is 1s"), "{e}");
    // Refusals while stale are counted, not a row each: a flood cannot fill the disk.
    for _ in 0..49 {
        assert!(matches!(
            old.auth
                .login(CredentialKind::Pin, pin("1111"), SOCKET)
                .await,
            Err(LoginError::Stale { .. })
        ));
    }
    assert!(outcomes(&old).is_empty(), "{:?}", outcomes(&old));
    // The pending count is written as one summary row (each minute, and at shutdown).
    assert_eq!(old.auth.flush_summaries().await.unwrap(), 1);
    assert_eq!(old.auth.flush_summaries().await.unwrap(), 0);
    let rows = audit(&old);
    assert_eq!(outcomes(&old), vec!["coalesced"]);
    let reason = rows[0].record.reason.clone();
    assert!(
        reason.starts_with("50 attempts without a row") && reason.ends_with(": refused.stale=50"),
        "{reason}"
    );
    // A sync (here an idempotent replay, central's heartbeat) makes it fresh again.
    old.replica.touch_last_sync().unwrap();
    old.auth
        .login(CredentialKind::Pin, pin("1111"), SOCKET)
        .await
        .unwrap();
}

#[test]
fn replica_age_rules() {
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    assert!(replica_too_old(None, now, hour));
    assert!(!replica_too_old(Some(now - hour), now, hour));
    assert!(replica_too_old(
        Some(now - hour - Duration::from_secs(1)),
        now,
        hour
    ));
    assert!(
        replica_too_old(Some(now + Duration::from_secs(1)), now, hour),
        "a sync time in the future (the clock was set back) is stale"
    );
    assert_eq!(
        round_up_to_seconds(Duration::from_millis(1)),
        Duration::from_secs(1)
    );
    assert_eq!(
        round_up_to_seconds(Duration::from_secs(4)),
        Duration::from_secs(4)
    );
}

#[tokio::test]
async fn locked_session_resumes_for_its_user_and_sync_changes_reach_it() {
    let f = fixture(policy());
    let first = f
        .auth
        .login(CredentialKind::Pin, pin("1111"), SOCKET)
        .await
        .unwrap();
    f.auth.sessions().lock("test").unwrap();
    let resumed = f
        .auth
        .login(CredentialKind::Key, pin("KEY-cashier"), SOCKET)
        .await
        .unwrap();
    assert_eq!(resumed.session_id, first.session_id);
    assert!(!resumed.locked);
    assert_eq!(outcomes(&f), vec!["accepted", "resumed"]);

    // A sync grants the cashier "refund": PERMISSIONS_CHANGED with the new set.
    let (_, mut rx) = f.auth.sessions().watch();
    f.replica
        .apply_changes(
            &crate::history::BatchHeader {
                base: Cursor {
                    epoch: 1,
                    revision: 1,
                },
                new_revision: 2,
                empty: false,
                digest: crate::history::BatchDigest([2; 32]),
            },
            |_| {
                Ok(crate::validate::ValidChanges {
                    upsert_roles: vec![role("cashier", &["refund", "sale"])],
                    upsert_users: vec![],
                    delete_user_ids: vec![],
                    delete_role_ids: vec![],
                })
            },
        )
        .unwrap();
    let event = f.auth.replica_changed().await.unwrap().unwrap();
    assert_eq!(event.kind, EventKind::PermissionsChanged);
    assert_eq!(event.session.unwrap().permissions, vec!["refund", "sale"]);
    assert_eq!(rx.recv().await.unwrap().kind, EventKind::PermissionsChanged);
    assert!(
        f.auth.replica_changed().await.unwrap().is_none(),
        "nothing new"
    );
    // Deleting the user ends the session, naming why.
    f.replica
        .apply_changes(
            &crate::history::BatchHeader {
                base: Cursor {
                    epoch: 1,
                    revision: 2,
                },
                new_revision: 3,
                empty: false,
                digest: crate::history::BatchDigest([3; 32]),
            },
            |_| {
                Ok(crate::validate::ValidChanges {
                    delete_user_ids: vec!["cashier".into()],
                    upsert_roles: vec![],
                    upsert_users: vec![],
                    delete_role_ids: vec![],
                })
            },
        )
        .unwrap();
    let event = f.auth.replica_changed().await.unwrap().unwrap();
    assert_eq!(
        (event.kind, event.reason.as_str()),
        (EventKind::Logout, "user deleted")
    );
    assert!(f.auth.sessions().current().is_none());
}

#[tokio::test]
async fn a_new_credential_is_hashed_under_the_scheme_of_its_own_kind() {
    let f = fixture(policy());
    // Keys under a scheme that sorts above the PINs' one (another salt).
    let key_scheme = HashScheme {
        salt: b"key-salt-sorts-higher".to_vec(),
        ..scheme()
    };
    assert!(key_scheme > scheme());
    let mut manager = user(&f.key, "manager", 1, "9999", "manager");
    manager.credentials[1] = StoredCredential {
        kind: CredentialKind::Key,
        digest: f.key.rekey(&argon2id(b"KEY-manager", &key_scheme).unwrap()),
        scheme: key_scheme.clone(),
    };
    f.replica
        .apply_snapshot(
            Cursor {
                epoch: 2,
                revision: 1,
            },
            ValidSnapshot {
                users: vec![manager],
                roles: vec![role("manager", &["sale"])],
            },
        )
        .unwrap();
    let phc_under = |scheme: &HashScheme, secret: &str| {
        crate::credential::phc_string(scheme, &argon2id(secret.as_bytes(), scheme).unwrap())
    };

    let new_pin = f
        .auth
        .hash_new_credential(CredentialKind::Pin, pin("24681357"), SOCKET)
        .await
        .unwrap();
    assert_eq!(new_pin.phc, phc_under(&scheme(), "24681357"));
    let new_key = f
        .auth
        .hash_new_credential(CredentialKind::Key, pin("KEY-new"), SOCKET)
        .await
        .unwrap();
    assert_eq!(new_key.phc, phc_under(&key_scheme, "KEY-new"));
    // The in-use check finds the manager's PIN under the PINs' scheme.
    let in_use = f
        .auth
        .hash_new_credential(CredentialKind::Pin, pin("9999"), SOCKET)
        .await
        .unwrap();
    assert_eq!(in_use.holders, vec!["manager".to_owned()]);
}

#[test]
fn a_kind_without_credentials_borrows_the_other_kinds_scheme() {
    assert_eq!(enrolment_scheme(vec![1, 3], vec![9]), Some(3));
    assert_eq!(enrolment_scheme(Vec::new(), vec![2, 9]), Some(9));
    assert_eq!(enrolment_scheme::<u8>(Vec::new(), Vec::new()), None);
}

#[tokio::test]
async fn a_locked_source_is_refused_from_memory_until_an_unlock_forgets_it() {
    let f = fixture(policy());
    for _ in 0..3 {
        let e = f.auth.login(CredentialKind::Pin, pin("0000"), SOCKET).await;
        assert!(matches!(e, Err(LoginError::NoMatch)), "{e:?}");
    }
    // The store answers the first refusal; the memory keeps it.
    let e = f.auth.login(CredentialKind::Pin, pin("1111"), SOCKET).await;
    assert!(matches!(e, Err(LoginError::LockedOut { .. })), "{e:?}");
    // With the counters unreadable, the locked source is still refused (no SQLite read), while
    // another source, which needs the store, fails.
    let side = rusqlite::Connection::open(f.local.path()).unwrap();
    side.execute_batch("ALTER TABLE lockouts RENAME TO lockouts_away")
        .unwrap();
    for _ in 0..20 {
        let e = f
            .auth
            .login(CredentialKind::Pin, pin("1111"), OTHER_PID)
            .await;
        assert!(
            matches!(
                e,
                Err(LoginError::LockedOut {
                    terminal_wide: false,
                    ..
                })
            ),
            "{e:?}"
        );
    }
    let e = f
        .auth
        .login(CredentialKind::Pin, pin("1111"), OTHER_UID)
        .await;
    assert!(matches!(e, Err(LoginError::Store(_))), "{e:?}");
    side.execute_batch("ALTER TABLE lockouts_away RENAME TO lockouts")
        .unwrap();
    // An unlock takes effect at once: the memory forgets the scope with the store.
    f.auth
        .clear_lockouts(
            Some("socket uid=1000".to_owned()),
            "socket uid=0 gid=0 pid=1",
        )
        .await
        .unwrap();
    let session = f
        .auth
        .login(CredentialKind::Pin, pin("1111"), SOCKET)
        .await
        .unwrap();
    assert_eq!(session.user_id, "cashier");
}

#[tokio::test]
async fn a_flood_that_interleaves_one_valid_key_writes_a_bounded_number_of_rows() {
    let f = fixture(policy());
    for _ in 0..50 {
        f.auth
            .login(CredentialKind::Key, pin("KEY-cashier"), SOCKET)
            .await
            .unwrap();
        let e = f
            .auth
            .login(CredentialKind::Key, pin("KEY-nobody"), SOCKET)
            .await;
        assert!(matches!(e, Err(LoginError::NoMatch)), "{e:?}");
    }
    // 100 attempts from one source well inside one audit.summary_interval: README (Threat model,
    // "audit rows under a flood") says a source writes a row per success and at most 2 rows per
    // budget besides (the first wrong credential, the summary row), whatever successes come
    // between its failures. (Every login is audited: the 50 successes keep their rows.)
    f.auth.flush_summaries().await.unwrap();
    let rows = outcomes(&f);
    let accepted = rows.iter().filter(|o| **o == "accepted").count();
    assert_eq!(accepted, 50, "{rows:?}");
    assert!(
        rows.len() - accepted <= 2,
        "{} rows besides the successes: {rows:?}",
        rows.len() - accepted
    );
    let summary = audit(&f)
        .into_iter()
        .find(|r| r.record.outcome == AuditOutcome::Coalesced)
        .unwrap();
    assert_eq!(summary.record.source, "socket uid=1000 (keys)");
    assert_eq!(
        crate::coalesce::parse_counts(&summary.record.reason).unwrap()["login.no_match"],
        49,
        "{}",
        summary.record.reason
    );
}

#[tokio::test]
async fn every_denied_pin_names_the_user_it_matched() {
    let f = fixture(policy());
    let mut gone = user(&f.key, "gone", 3, "5555", "cashier");
    gone.active = false;
    let mut left = user(&f.key, "left", 4, "6666", "cashier");
    left.active = false;
    f.replica
        .apply_changes(
            &crate::history::BatchHeader {
                base: Cursor {
                    epoch: 1,
                    revision: 1,
                },
                new_revision: 2,
                empty: false,
                digest: crate::history::BatchDigest([2; 32]),
            },
            |_| {
                Ok(crate::validate::ValidChanges {
                    upsert_users: vec![gone, left],
                    delete_user_ids: vec![],
                    upsert_roles: vec![],
                    delete_role_ids: vec![],
                })
            },
        )
        .unwrap();
    for secret in ["5555", "6666"] {
        let e = f.auth.login(CredentialKind::Pin, pin(secret), SOCKET).await;
        assert!(matches!(e, Err(LoginError::Denied(_))), "{e:?}");
    }
    f.auth.flush_summaries().await.unwrap();
    let named: Vec<Option<String>> = audit(&f)
        .into_iter()
        .filter(|r| r.record.outcome == AuditOutcome::Denied)
        .map(|r| r.record.user_id)
        .collect();
    assert_eq!(
        named,
        vec![Some("gone".to_owned()), Some("left".to_owned())],
        "{:?}",
        outcomes(&f)
    );
}

#[tokio::test]
async fn a_flood_of_bad_reads_writes_a_bounded_number_of_rows() {
    let f = fixture(policy());
    for _ in 0..100 {
        f.auth
            .report_bad_read("device front (/dev/hidraw0)", ReadFault::Crc)
            .await
            .unwrap();
    }
    f.auth.flush_summaries().await.unwrap();
    let rows = audit(&f).len();
    assert!(
        rows <= 10,
        "{rows} rows for one reader's flood of bad reads"
    );
    // The first has its row (it opened the reader's key streak), the rest one summary row with
    // a count per fault.
    assert_eq!(outcomes(&f), vec!["bad_read", "coalesced"]);
    let summary = &audit(&f)[1].record;
    assert_eq!(summary.source, "device front (keys)");
    assert_eq!(
        crate::coalesce::parse_counts(&summary.reason)
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![("bad_read.crc".to_owned(), 99)]
    );
    // The streak is the reader's key streak: a wrong key now is counted, not a row.
    let e = f
        .auth
        .login(
            CredentialKind::Key,
            pin("KEY-nobody"),
            "device front (/dev/hidraw0)",
        )
        .await;
    assert!(matches!(e, Err(LoginError::NoMatch)), "{e:?}");
    f.auth
        .report_bad_read("device front (/dev/hidraw0)", ReadFault::Framing)
        .await
        .unwrap();
    assert_eq!(f.auth.flush_summaries().await.unwrap(), 1);
    let rows = audit(&f);
    assert_eq!(rows.len(), 3);
    assert_eq!(
        crate::coalesce::parse_counts(&rows[2].record.reason)
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![
            ("bad_read.framing".to_owned(), 1),
            ("login.no_match".to_owned(), 1)
        ]
    );
    // After the interval ticks with no wrong key, the streak ends: the next bad read has a
    // row of its own again (at most one per reader and interval).
    f.auth.summary_tick().await.unwrap();
    f.auth.summary_tick().await.unwrap();
    f.auth
        .report_bad_read("device front (/dev/hidraw0)", ReadFault::Crc)
        .await
        .unwrap();
    assert_eq!(audit(&f)[3].record.outcome, AuditOutcome::BadRead);
}

#[tokio::test]
async fn an_authorization_without_a_permission_is_counted_like_any_malformed_attempt() {
    let f = fixture(policy());
    let e = f
        .auth
        .authorize(CredentialKind::Pin, pin("9999"), "", SOCKET)
        .await;
    assert!(matches!(e, Err(LoginError::BadInput(_))), "{e:?}");
    let auth = Arc::new(f.auth);
    let e = auth
        .authorize_detached(
            CredentialKind::Pin,
            pin("9999"),
            String::new(),
            SOCKET.to_owned(),
        )
        .await;
    assert!(matches!(e, Err(LoginError::BadInput(_))), "{e:?}");
    assert_eq!(auth.flush_summaries().await.unwrap(), 1);
    let rows = f.local.audit_after(0, 1000).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].record.reason.ends_with(": refused.malformed=2"),
        "{}",
        rows[0].record.reason
    );
}
