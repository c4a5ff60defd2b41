#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::model::CredentialKind;

fn open(dir: &tempfile::TempDir) -> LocalStore {
    LocalStore::open(&dir.path().join("local.db"), &dir.path().join("replica.db"))
        .unwrap()
        .0
}

fn attempt(source: &str, outcome: crate::audit::AuditOutcome) -> crate::audit::AuditRecord {
    crate::audit::AuditRecord::new(
        crate::audit::AuditKind::Login,
        Some(CredentialKind::Pin),
        source,
        outcome,
    )
}

#[test]
fn audit_rows_are_deleted_only_when_acknowledged_and_seqs_never_reused() {
    use crate::audit::AuditOutcome;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for _ in 0..5 {
        store
            .append_audit(&attempt("s", AuditOutcome::NoMatch))
            .unwrap();
    }
    let rows = store.audit_after(0, 100).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(store.audit_after(3, 100).unwrap().len(), 2);
    assert_eq!(store.audit_after(0, 2).unwrap().len(), 2);
    assert_eq!(
        store
            .audit_tail(2)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    let ack = store.audit_ack(None, 3).unwrap();
    assert_eq!(
        (ack.deleted, ack.stats.backlog, ack.stats.last_seq),
        (3, 2, 5)
    );
    assert_eq!(
        store.audit_ack(None, 3).unwrap().deleted,
        0,
        "acknowledging again is a no-op"
    );
    assert!(matches!(
        store.audit_ack(None, 6),
        Err(AckError::BeyondLast {
            seq: 6,
            last_seq: 5
        })
    ));
    store.audit_ack(None, 5).unwrap();
    assert_eq!(store.audit_stats().unwrap().backlog, 0);
    // Everything acknowledged: the next row still gets a new seq (AUTOINCREMENT), also after a
    // reopen.
    drop(store);
    let store = open(&dir);
    let stats = store
        .append_audit(&attempt("s", AuditOutcome::Accepted))
        .unwrap();
    assert_eq!((stats.backlog, stats.last_seq), (1, 6));
    assert_eq!(store.audit_after(0, 10).unwrap()[0].seq, 6);
}

#[test]
fn counters_change_only_together_with_their_audit_row() {
    use crate::audit::AuditOutcome;
    use crate::lockout::{Budget, LockoutPolicy, Now};
    let dir = tempfile::tempdir().unwrap();
    let replica = open(&dir);
    let policy = LockoutPolicy::default();
    let source = "socket uid=5 gid=5 pid=5";
    let now = Now {
        boot: 7,
        mono_ms: 1000,
        wall_ms: 1_700_000_000_000,
    };
    replica
        .admit_attempt(Budget::Pin, source, &policy, now)
        .unwrap()
        .unwrap();
    let failures = |r: &LocalStore| {
        r.lockout_counters(&policy, now)
            .unwrap()
            .into_iter()
            .map(|(s, c)| (s, c.failures))
            .collect::<Vec<_>>()
    };
    let expected = vec![("socket uid=5".to_owned(), 1), ("terminal".to_owned(), 1)];
    assert_eq!(failures(&replica), expected);
    // Make the audit insert fail: the refund in the same transaction rolls back.
    replica
        .writer()
        .unwrap()
        .execute_batch("ALTER TABLE audit_events RENAME TO audit_moved")
        .unwrap();
    assert!(
        replica
            .record_attempt(
                &attempt(source, AuditOutcome::Accepted),
                Settlement::Refund(Budget::Pin),
                source,
                &policy,
                now,
            )
            .is_err()
    );
    assert_eq!(failures(&replica), expected);
    replica
        .writer()
        .unwrap()
        .execute_batch("ALTER TABLE audit_moved RENAME TO audit_events")
        .unwrap();
    // Counters survive a reopen; a success resets the source's and refunds the terminal's.
    drop(replica);
    let replica = open(&dir);
    assert_eq!(failures(&replica), expected);
    replica
        .record_attempt(
            &attempt(source, AuditOutcome::Accepted),
            Settlement::Refund(Budget::Pin),
            source,
            &policy,
            now,
        )
        .unwrap();
    assert_eq!(failures(&replica), vec![]);
}

#[test]
fn a_reboot_rebases_counters_onto_the_new_clock() {
    use crate::lockout::{Budget, LockoutPolicy, Now};
    let dir = tempfile::tempdir().unwrap();
    let replica = open(&dir);
    let policy = LockoutPolicy::default();
    let source = "socket uid=5 gid=5 pid=5";
    let before = Now {
        boot: 1,
        mono_ms: 9_000_000,
        wall_ms: 1_700_000_000_000,
    };
    for _ in 0..5 {
        replica
            .admit_attempt(Budget::Pin, source, &policy, before)
            .unwrap()
            .unwrap();
    }
    // The next boot's monotonic clock starts low; the wall clock jumped a year.
    let after = Now {
        boot: 2,
        mono_ms: 4_000,
        wall_ms: before.wall_ms + 365 * 86_400_000,
    };
    assert_eq!(replica.rebase_lockouts(after).unwrap(), 2);
    let refusal = replica
        .refusal(Budget::Pin, source, &policy, after)
        .unwrap()
        .unwrap();
    assert_eq!(refusal.retry_after, std::time::Duration::from_secs(30));
    let later = Now {
        mono_ms: after.mono_ms + 30_000,
        ..after
    };
    assert!(
        replica
            .refusal(Budget::Pin, source, &policy, later)
            .unwrap()
            .is_none()
    );
}

#[test]
fn an_acknowledgement_for_another_stream_deletes_nothing() {
    use crate::audit::AuditOutcome;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for _ in 0..3 {
        store
            .append_audit(&attempt("s", AuditOutcome::NoMatch))
            .unwrap();
    }
    let stream = store.identity().stream_id.clone();
    assert!(matches!(
        store.audit_ack(Some("an-older-stream"), 2),
        Err(AckError::StreamChanged { ref current, .. }) if *current == stream
    ));
    assert_eq!(store.audit_stats().unwrap().backlog, 3);
    assert_eq!(store.audit_ack(Some(&stream), 2).unwrap().deleted, 2);
    // The id belongs to the file: a reopen keeps it.
    drop(store);
    assert_eq!(open(&dir).identity().stream_id, stream);
}

#[test]
fn a_streak_keeps_its_first_failure_as_a_row_and_the_rest_durably_counted_whatever_successes_come_between()
 {
    use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
    use crate::coalesce::{Pending, RefusedFor, parse_counts};
    use crate::lockout::{Budget, LockoutPolicy, Now};
    use crate::model::CredentialKind;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let policy = LockoutPolicy::default();
    let source = "socket uid=5 gid=5 pid=5";
    let now = Now {
        boot: 7,
        mono_ms: 1000,
        wall_ms: 1_700_000_000_000,
    };
    let failure = |kind, outcome| {
        AuditRecord::new(kind, Some(CredentialKind::Pin), source, outcome).reason("wrong")
    };
    let record = |store: &LocalStore, r: &AuditRecord, settlement| {
        store
            .record_attempt(r, settlement, source, &policy, now)
            .unwrap()
    };
    let outcomes = |store: &LocalStore| {
        store
            .audit_tail(100)
            .unwrap()
            .into_iter()
            .map(|r| r.record.outcome.as_str())
            .collect::<Vec<_>>()
    };
    for _ in 0..3 {
        record(
            &store,
            &failure(AuditKind::Login, AuditOutcome::NoMatch),
            Settlement::Keep,
        );
    }
    // A credential of a user who may not log in here: a row of its own (it names the user),
    // whatever the streak.
    record(
        &store,
        &failure(AuditKind::Authorize, AuditOutcome::Denied),
        Settlement::Keep,
    );
    // A wrong key of the same source is another budget: its own streak, its own first row.
    let mut key = failure(AuditKind::Login, AuditOutcome::NoMatch);
    key.method = Some(CredentialKind::Key);
    record(&store, &key, Settlement::Keep);
    record(&store, &key, Settlement::Keep);
    assert_eq!(outcomes(&store), vec!["no_match", "denied", "no_match"]);
    // A crash now: the coalesced counts are on disk.
    drop(store);
    let store = open(&dir);
    let pending = store.pending_summaries().unwrap();
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert_eq!(pending[0].0, "socket uid=5");
    assert_eq!(pending[0].1.total(), 2);
    assert_eq!(pending[1].0, "socket uid=5 (keys)");
    // A success has its own row and ends no streak: the next wrong PIN is counted, not a row
    // (a source interleaving one valid credential with guesses writes no row per guess).
    record(
        &store,
        &failure(AuditKind::Login, AuditOutcome::Accepted),
        Settlement::Refund(Budget::Pin),
    );
    record(
        &store,
        &failure(AuditKind::Login, AuditOutcome::NoMatch),
        Settlement::Keep,
    );
    assert_eq!(
        outcomes(&store),
        vec!["no_match", "denied", "no_match", "accepted"]
    );
    // The periodic flush writes one summary row per scope, the in-memory refusals folded in,
    // and keeps the streaks open: their next failure is counted, not a row.
    let mut refused = Pending::new(CredentialKind::Pin, std::time::SystemTime::now());
    refused.count(RefusedFor::Busy.label(), std::time::SystemTime::now());
    assert_eq!(
        store
            .flush_summaries(&[("socket uid=5".to_owned(), refused)])
            .unwrap()
            .0,
        2
    );
    let rows = store.audit_tail(100).unwrap();
    assert_eq!(
        outcomes(&store),
        vec![
            "no_match",
            "denied",
            "no_match",
            "accepted",
            "coalesced",
            "coalesced"
        ]
    );
    let summary = &rows[4].record;
    assert_eq!(summary.source, "socket uid=5");
    assert_eq!(summary.method, Some(CredentialKind::Pin));
    let counts = parse_counts(&summary.reason).unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        vec![
            ("login.no_match".to_owned(), 3),
            ("refused.busy".to_owned(), 1)
        ]
    );
    assert_eq!(store.flush_summaries(&[]).unwrap().0, 0);
    record(&store, &key, Settlement::Keep);
    assert_eq!(outcomes(&store).len(), 6);
    assert_eq!(store.pending_summaries().unwrap()[0].1.total(), 1);
}

#[test]
fn the_lockout_cache_refuses_exactly_while_the_store_would() {
    use crate::lockout::cache::LockedScopes;
    use crate::lockout::{Budget, LockoutPolicy, Now};
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let policy = LockoutPolicy {
        max_failures: 2,
        terminal_max_failures: 3,
        terminal_refill: std::time::Duration::from_secs(60),
        ..LockoutPolicy::default()
    };
    let at = |mono_ms: u64| Now {
        boot: 3,
        mono_ms,
        wall_ms: 1_700_000_000_000 + mono_ms,
    };
    let mut cache = LockedScopes::default();
    // Two sources: the first is locked by its own counter, then the terminal budget fills.
    let (a, b) = ("socket uid=5 gid=5 pid=5", "device pad");
    for (source, ms) in [(a, 0), (a, 10), (b, 20)] {
        store
            .admit_attempt(Budget::Pin, source, &policy, at(ms))
            .unwrap()
            .unwrap();
    }
    for source in [a, b] {
        let refusal = store
            .refusal(Budget::Pin, source, &policy, at(30))
            .unwrap()
            .unwrap();
        let read_at = cache.generation();
        cache.remember(&refusal, &policy, at(30), read_at);
    }
    // Step through the lockouts on the simulated clock: whenever the cache refuses, so does the
    // store, with at least as long to wait; and the store refuses longer than the cache only
    // within one drain step of the terminal budget (a minute / 1000, plus a millisecond).
    let mut refused_from_memory = 0;
    for ms in (30..200_000).step_by(10) {
        for source in [a, b] {
            let cached = cache.refusal(&policy.scopes(Budget::Pin, source), at(ms));
            let stored = store.refusal(Budget::Pin, source, &policy, at(ms)).unwrap();
            match (&cached, &stored) {
                (Some(cached), Some(stored)) => {
                    assert!(
                        stored.retry_after >= cached.retry_after,
                        "{stored:?} {cached:?}"
                    );
                    refused_from_memory += 1;
                }
                (Some(cached), None) => panic!("the cache refused {cached:?} at {ms} ms"),
                (None, Some(stored)) => assert!(
                    stored.retry_after <= std::time::Duration::from_millis(61),
                    "the store refuses for {stored:?} more at {ms} ms"
                ),
                (None, None) => {}
            }
        }
    }
    assert!(refused_from_memory > 10_000, "{refused_from_memory}");
    assert!(
        cache
            .refusal(&policy.scopes(Budget::Pin, b), at(199_999))
            .is_none()
    );
    assert!(
        store
            .refusal(Budget::Pin, b, &policy, at(199_999))
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_summary_tick_ends_idle_streaks_so_renamed_sources_do_not_grow_the_table() {
    use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
    use crate::lockout::{LockoutPolicy, Now};
    use crate::model::CredentialKind;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let policy = LockoutPolicy::default();
    let now = Now {
        boot: 7,
        mono_ms: 1000,
        wall_ms: 1_700_000_000_000,
    };
    let wrong_key = |store: &LocalStore, source: &str| {
        let record = AuditRecord::new(
            AuditKind::Login,
            Some(CredentialKind::Key),
            source,
            AuditOutcome::NoMatch,
        );
        store
            .record_attempt(&record, Settlement::Keep, source, &policy, now)
            .unwrap();
    };
    let rows = |store: &LocalStore| store.audit_tail(1000).unwrap().len();
    // A reader that re-enumerates under a new name for each read: 100 scopes, a streak each.
    for n in 0..100 {
        wrong_key(&store, &format!("device reader-{n} (/dev/hidraw{n})"));
    }
    // One source keeps failing through the ticks.
    let busy = "device door (/dev/hidraw100)";
    wrong_key(&store, busy);
    assert_eq!(store.open_streaks().unwrap().len(), 101);
    assert_eq!(rows(&store), 101);
    // The first tick after a failure keeps its streak; the next one without a failure ends it,
    // in the transaction that writes the summary rows.
    wrong_key(&store, busy);
    let (written, ended, _) = store.summary_tick(&[]).unwrap();
    assert_eq!((written, ended), (1, 0));
    wrong_key(&store, busy);
    let (written, ended, _) = store.summary_tick(&[]).unwrap();
    assert_eq!((written, ended), (1, 100));
    assert_eq!(
        store.open_streaks().unwrap(),
        vec!["device door (keys)".to_owned()]
    );
    assert_eq!(rows(&store), 103);
    // The busy source's streak goes on: its failures are counted, not rows.
    wrong_key(&store, busy);
    assert_eq!(rows(&store), 103);
    // An ended streak's scope fails again: its first wrong key has a row of its own again (at
    // most once per interval: the streak it opens lasts at least until the next tick but one).
    wrong_key(&store, "device reader-7 (/dev/hidraw7)");
    assert_eq!(rows(&store), 104);
    wrong_key(&store, "device reader-7 (/dev/hidraw7)");
    assert_eq!(rows(&store), 104);
    // A plain flush (shutdown, start) writes the rows and ends no streak.
    assert_eq!(store.flush_summaries(&[]).unwrap().0, 2);
    assert_eq!(store.open_streaks().unwrap().len(), 2);
    // Survives a reopen (the column is on disk), and idle streaks end at the next two ticks.
    drop(store);
    let store = open(&dir);
    store.summary_tick(&[]).unwrap();
    let (_, ended, _) = store.summary_tick(&[]).unwrap();
    assert_eq!(ended, 2);
    assert!(store.open_streaks().unwrap().is_empty());
}
