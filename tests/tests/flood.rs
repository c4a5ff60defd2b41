//! Holding under a flood, end to end: the per-source bound on attempts waiting for hashing,
//! the per-call timeout (a caller that is gone is dropped before it hashes), and the connection
//! cap on both listeners.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use tillgate_client::export::SnapshotExport;
use tillgate_client::proto as pb;
use tillgate_client::{TillClient, TillSyncClient};
use tillgate_tests::*;
use tonic::Code;

/// argon2 costs that make one evaluation take a noticeable time (≈ 0.2–1 s), so that
/// concurrent attempts really queue.
fn slow_snapshot() -> tillgate_client::export::Snapshot {
    let export = json!({
        "account": { "id": "slow", "m_cost_kib": 65536, "t_cost": 3, "p_cost": 1 },
        "cursor": { "epoch": 1, "revision": 1 },
        "roles": [role("cashier", &["sale.create"], &[])],
        "users": [user("amy", 1, Some("1111"))],
    });
    SnapshotExport::parse(&export.to_string())
        .unwrap()
        .into_snapshot()
        .unwrap()
}

/// The status code of a call (OK for a success) and its message.
fn answer<T>(result: Result<T, tillgate_client::ClientError>) -> (Code, String) {
    match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(_) => code(result.map(|_| ())),
    }
}

async fn clients(daemon: &Daemon, n: usize) -> Vec<TillClient> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(daemon.client().await);
    }
    all
}

#[tokio::test]
async fn attempts_beyond_the_per_source_bound_are_refused_at_once_without_a_row_each() {
    let daemon = Daemon::start_with(
        "",
        "[hashing]\nmax_concurrent = 1\nmax_waiting_per_source = 2\n",
    );
    daemon.push_snapshot(slow_snapshot()).await;
    let calls: Vec<_> = clients(&daemon, 10)
        .await
        .into_iter()
        .map(|mut c| tokio::spawn(async move { answer(c.login_with_pin("1111").await) }))
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let ok = answers.iter().filter(|(c, _)| *c == Code::Ok).count();
    let busy: Vec<_> = answers
        .iter()
        .filter(|(c, _)| *c == Code::ResourceExhausted)
        .collect();
    assert_eq!(ok + busy.len(), 10, "{answers:?}");
    assert!(
        ok >= 3,
        "one hashing and two waiting get through: {answers:?}"
    );
    assert!(!busy.is_empty(), "{answers:?}");
    assert!(
        busy.iter()
            .all(|(_, m)| m.contains("attempts from this source are already waiting for hashing")),
        "{busy:?}"
    );
    // Each login wrote its row; the refusals have none of their own: they are counted in the
    // source's summary row, written with the source's next success (or at the latest each
    // audit.summary_interval and at shutdown, hence the stop).
    let mut daemon = daemon;
    daemon.stop().await;
    let daemon = Daemon::spawn(&daemon.dir);
    let mut client = daemon.client().await;
    let rows = client.audit_tail(100).await.unwrap().events;
    assert_eq!(rows.iter().filter(|r| r.outcome == "accepted").count(), ok);
    let summaries: Vec<_> = rows.iter().filter(|r| r.outcome == "coalesced").collect();
    let summed: u64 = summaries
        .iter()
        .map(|r| counts(&r.reason)["refused.busy"])
        .sum();
    assert_eq!(summed, busy.len() as u64, "{rows:?}");
    assert_eq!(rows.len(), ok + summaries.len(), "{rows:?}");
}

/// The counts of a `coalesced` row: "… from <t1> to <t2>: login.no_match=3, refused.busy=9".
fn counts(reason: &str) -> std::collections::BTreeMap<String, u64> {
    let (_, tail) = reason.rsplit_once(": ").unwrap();
    tail.split(", ")
        .map(|pair| {
            let (label, n) = pair.split_once('=').unwrap();
            (label.to_owned(), n.parse().unwrap())
        })
        .collect()
}

/// Every attempt of a source as the audit accounts for it: 1 per row of its own, plus the
/// counts of its summary rows.
fn accounted(rows: &[pb::AuditEvent]) -> u64 {
    rows.iter()
        .map(|r| match r.outcome.as_str() {
            "coalesced" => counts(&r.reason).values().sum(),
            _ => 1,
        })
        .sum()
}

#[tokio::test]
async fn a_flood_of_wrong_credentials_writes_a_bounded_number_of_rows_that_account_for_every_attempt()
 {
    // No summary flush during the test: only the first failure of each streak has a row, the
    // rest is written at shutdown.
    let mut daemon = Daemon::start_with(
        "",
        "[hashing]\nmax_concurrent = 1\nmax_waiting_per_source = 4\n\
         [audit]\nsummary_interval = \"1h\"\n",
    );
    daemon.push_snapshot(slow_snapshot()).await;
    const CLIENTS: usize = 16;
    const EACH: usize = 12;
    let calls: Vec<_> = clients(&daemon, CLIENTS)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for j in 0..EACH {
                    let answer = if (i + j) % 3 == 0 {
                        answer(c.login_with_key("NO-SUCH-KEY").await)
                    } else {
                        answer(c.login_with_pin("0000").await)
                    };
                    codes.push(answer.0);
                }
                codes
            })
        })
        .collect();
    let mut codes = Vec::new();
    for call in calls {
        codes.extend(call.await.unwrap());
    }
    let attempts = (CLIENTS * EACH) as u64;
    assert_eq!(codes.len() as u64, attempts);
    assert!(!codes.contains(&Code::Ok), "{codes:?}");
    let hashed = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    assert!(hashed >= 2, "both budgets hashed some: {codes:?}");
    // Today's daemon would have written one no_match row per hashed attempt (at least 5 per
    // budget before the lockout) and a summary row with each of them.
    let mut client = daemon.client().await;
    let before = client.audit_tail(1000).await.unwrap().events;
    assert!(
        before.iter().all(|r| r.outcome == "no_match")
            && before
                .iter()
                .filter(|r| r.method == pb::LoginMethod::Pin as i32)
                .count()
                <= 1
            && before
                .iter()
                .filter(|r| r.method == pb::LoginMethod::Key as i32)
                .count()
                <= 1,
        "only the first failure of each budget's streak has a row: {before:?}"
    );
    assert!(before.len() <= 2, "{before:?}");
    drop(client);
    daemon.stop().await;
    let daemon = Daemon::spawn(&daemon.dir);
    let rows = daemon.client().await.audit_tail(1000).await.unwrap().events;
    // ≤ 2 rows per budget (the first failure, the summary) for all these attempts, and
    // together they account for every one of them.
    assert!(rows.len() <= 4, "{rows:?}");
    assert_eq!(accounted(&rows), attempts, "{rows:?}");
    let hashed_in_rows: u64 = rows
        .iter()
        .map(|r| match r.outcome.as_str() {
            "coalesced" => counts(&r.reason)
                .iter()
                .filter(|(label, _)| label.starts_with("login."))
                .map(|(_, n)| n)
                .sum(),
            "no_match" => 1,
            _ => 0,
        })
        .sum();
    assert_eq!(hashed_in_rows, hashed as u64, "{rows:?}");
}

#[tokio::test]
async fn coalesced_failures_survive_a_kill_9_in_the_middle_of_a_streak() {
    // No lockout gets in the way: every wrong PIN is hashed and answered.
    let mut daemon = Daemon::start_with(
        "",
        "[lockout]
max_failures = 100
terminal_max_failures = 100
         [audit]
summary_interval = \"1h\"
",
    );
    daemon.push_snapshot(slow_snapshot()).await;
    let mut client = daemon.client().await;
    for _ in 0..6 {
        assert_eq!(
            answer(client.login_with_pin("0000").await).0,
            Code::Unauthenticated
        );
    }
    let rows = client.audit_tail(100).await.unwrap().events;
    assert_eq!(rows.len(), 1, "only the first has a row: {rows:?}");
    drop(client);
    // Every answered failure was counted in its own transaction: a kill loses none.
    assert!(!daemon.kill().success());
    let daemon = Daemon::spawn(&daemon.dir);
    let mut client = daemon.client().await;
    let rows = client.audit_tail(100).await.unwrap().events;
    assert_eq!(
        rows.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
        vec!["no_match", "coalesced"],
        "the start-up wrote the summary the kill left: {rows:?}"
    );
    assert_eq!(
        counts(&rows[1].reason).into_iter().collect::<Vec<_>>(),
        vec![("login.no_match".to_owned(), 5)]
    );
    assert_eq!(rows[1].source, my_socket_source());
    assert!(
        daemon
            .log_text()
            .contains("audit summary rows written for failures coalesced before the last stop"),
        "{}",
        daemon.log_text()
    );
    // The streak goes on after the restart: the next failure is counted, not a row.
    assert_eq!(
        answer(client.login_with_pin("0000").await).0,
        Code::Unauthenticated
    );
    assert_eq!(client.audit_tail(100).await.unwrap().events.len(), 2);
}

#[tokio::test]
async fn a_call_past_its_timeout_completes_atomically_and_callers_gone_while_queued_never_hash() {
    let daemon = Daemon::start_with(
        "",
        "[hashing]\nmax_concurrent = 1\nmax_waiting_per_source = 16\n\
         [login_socket]\ncall_timeout = \"1s\"\n[enrolment]\ncapture_timeout = \"500ms\"\n\
         [lockout]\nmax_failures = 100\nterminal_max_failures = 100\n",
    );
    // One evaluation of these costs takes over a second.
    let export = json!({
        "account": { "id": "slow", "m_cost_kib": 131072, "t_cost": 10, "p_cost": 1 },
        "cursor": { "epoch": 1, "revision": 1 },
        "roles": [role("cashier", &["sale.create"], &[])],
        "users": [user("amy", 1, Some("1111"))],
    });
    let snapshot = SnapshotExport::parse(&export.to_string())
        .unwrap()
        .into_snapshot()
        .unwrap();
    daemon.push_snapshot(snapshot).await;
    let mut first = daemon.client().await;
    let started = std::time::Instant::now();
    let holder = tokio::spawn(async move { answer(first.login_with_pin("0000").await) });
    // Five more from the same source give up after 200 ms, while the first one still hashes.
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let mut c = daemon.client().await;
        waiting.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(200), c.login_with_pin("0000")).await
        }));
    }
    for w in waiting {
        assert!(w.await.unwrap().is_err(), "gave up");
    }
    // The first call outlives login_socket.call_timeout: CANCELLED to its caller...
    assert_eq!(
        holder.await.unwrap(),
        (Code::Cancelled, "Timeout expired".to_owned())
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    // ... but the attempt completes: counted and audited together, once the hash is done.
    let mut client = daemon.client().await;
    let (failures, rows) = loop {
        let failures = client
            .lockouts()
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.source == my_socket_source())
            .map(|l| l.failures)
            .unwrap_or(0);
        let rows = client.audit_tail(100).await.unwrap().events;
        if !rows.is_empty() {
            break (failures, rows);
        }
        tokio::task::yield_now().await;
    };
    // A wrong key from the same source queues behind anything still waiting there (one queue
    // per source, first in first out), so once it is answered nothing else is pending.
    assert_eq!(
        answer(client.login_with_key("NO-SUCH-KEY").await).0,
        Code::Unauthenticated
    );
    let pin_failures = client
        .lockouts()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.source == my_socket_source())
        .map(|l| l.failures);
    let pin_rows: Vec<_> = client
        .audit_tail(100)
        .await
        .unwrap()
        .events
        .into_iter()
        .filter(|r| r.method == pb::LoginMethod::Pin as i32)
        .collect();
    // The five that left while queued were never hashed, counted or audited.
    assert_eq!((failures, pin_failures), (1, Some(1)), "{rows:?}");
    assert_eq!(pin_rows.len(), 1, "{pin_rows:?}");
    assert_eq!(pin_rows[0].outcome, "no_match");
}

#[tokio::test]
async fn each_listener_closes_connections_beyond_its_cap() {
    let temp = tempfile::tempdir().unwrap();
    let config = config_text(temp.path(), "", "[login_socket]\nmax_connections = 2\n")
        .replace("[sync]\n", "[sync]\nmax_connections = 1\n");
    std::fs::write(temp.path().join("tillgated.toml"), config).unwrap();
    let daemon = Daemon::spawn(temp.path());
    let mut first = clients(&daemon, 2).await;
    for c in &mut first {
        c.status().await.unwrap();
    }
    let third = async {
        let mut c = TillClient::connect(&daemon.socket).await?;
        c.status().await
    };
    assert!(third.await.is_err(), "a third connection is closed");
    // A slot comes back when a connection closes.
    drop(first.pop());
    let again = loop {
        if let Ok(mut c) = TillClient::connect(&daemon.socket).await
            && c.status().await.is_ok()
        {
            break c;
        }
        tokio::task::yield_now().await;
    };
    drop(again);

    let mut sync = daemon.sync(None).await;
    let _ = sync.state().await;
    let second = async {
        let mut s = TillSyncClient::connect(&daemon.sync_addr, None, None).await?;
        s.state().await
    };
    match second.await {
        Err(e) => assert!(
            !matches!(e, tillgate_client::ClientError::Rpc(ref s) if s.code() == Code::Unauthenticated),
            "refused before any call: {e:?}"
        ),
        Ok(_) => panic!("a second sync connection is closed"),
    }
    let log = daemon.log_text();
    assert!(
        log.contains("connection closed: the listener's max_connections are open"),
        "{log}"
    );
}

#[tokio::test]
async fn a_flood_of_refused_attempts_does_not_become_a_log_flood() {
    let daemon = Daemon::start_with(
        "",
        "[login_socket]\ncalls_per_second = 10000\ncall_burst = 10000\n",
    );
    daemon.push_snapshot(slow_snapshot()).await;
    let mut client = daemon.client().await;
    let mut refused = 0;
    for _ in 0..200 {
        let wrong = answer(client.login_with_pin("0000").await).0;
        let empty = answer(client.login_with_pin("").await).0;
        refused += usize::from(wrong == Code::ResourceExhausted);
        refused += usize::from(empty == Code::InvalidArgument);
    }
    assert!(refused > 300, "{refused}");
    // The refusals are counted for the audit's summary row; the log says so once, then rarely,
    // like the listeners' refusals, so a flood cannot push everything else out of the journal.
    let log = daemon.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("login refused") && !l.contains(" DEBUG "))
        .count();
    assert!(
        lines <= 10,
        "{lines} 'login refused' lines above debug for one flood"
    );
}
