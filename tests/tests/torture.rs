//! kill -9 torture: the real daemon is killed at random instants while a snapshot, a run of
//! batches and logins are in flight, over and over. After every kill, with the daemon dead, each
//! store passes `PRAGMA integrity_check`, nothing was quarantined, and the replica is exactly
//! one state central sent (old or new, never a mix): its cursor is one that was sent, not behind
//! the last one acknowledged, and its rows are those of that cursor. A login cut by a kill keeps
//! its throttle charge (no free guess), and no more than that: amy's right PIN is never refused.
//! amy's PIN is hashed at real costs, so most kills that cut a login land while it is hashed:
//! the very instant a charge written late would be lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tillgate_client::TillSyncClient;
use tillgate_client::export::Snapshot;
use tillgate_client::proto as pb;
use tillgate_tests::*;

/// Kills (and restarts) at least this many times.
const KILLS: usize = 100;
/// Users in every snapshot besides the marker.
const SNAPSHOT_USERS: usize = 300;
/// Batches sent per round, each after the previous one was acknowledged.
const BATCHES_PER_ROUND: u64 = 20;
/// Argon2 costs of amy's PIN: tens of milliseconds, so the hash is a real part of a login's time
/// (higher costs leave no login granted within a round).
const AMY_M_COST_KIB: u32 = 32 * 1024;
const AMY_T_COST: u32 = 2;

type Cursor = (u64, u64);

/// What central sent: for every cursor it ever asked for, the users the replica must then hold.
#[derive(Default)]
struct Central {
    expected_users: HashMap<Cursor, i64>,
    acknowledged: Option<Cursor>,
}

impl Central {
    fn acknowledge(&mut self, cursor: Cursor) {
        if self.acknowledged.is_none_or(|last| cursor > last) {
            self.acknowledged = Some(cursor);
        }
    }
}

/// The user whose first name records the cursor of the last change that wrote it.
fn marker(cursor: Cursor) -> serde_json::Value {
    let mut marker = user("marker", 0, None);
    marker["first_name"] = serde_json::json!(format!("E{}R{}", cursor.0, cursor.1));
    marker
}

fn snapshot_at(base: &Snapshot, marker_user: &pb::User, cursor: Cursor) -> Snapshot {
    let mut snapshot = base.clone();
    snapshot.target = pb::Cursor {
        epoch: cursor.0,
        revision: cursor.1,
    };
    let mut marker_user = marker_user.clone();
    marker_user.first_name = format!("E{}R{}", cursor.0, cursor.1);
    snapshot.users.push(marker_user);
    snapshot
}

/// The throttle charges a PIN before hashing it and a success refunds the charge, so a kill -9
/// between the two keeps it: a crash gives no free guess. Each kill cuts at most one login (one
/// login client), so this room keeps every one of amy's right PINs admitted over the whole run,
/// and the budget never drains by itself meanwhile: what it holds at the end is exactly the
/// logins the kills cut short.
fn lockout_room() -> String {
    let room = KILLS + 1;
    format!(
        "[lockout]\nmax_failures = {room}\nterminal_max_failures = {room}\nterminal_refill = \"1000h\"\n"
    )
}

/// The terminal budget's charges in the local store of a dead daemon.
fn terminal_charges(state: &Path) -> f64 {
    let local = rusqlite::Connection::open(state.join("local.db")).unwrap();
    local
        .query_row(
            "SELECT level_milli FROM lockouts WHERE scope = 'terminal'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map(|milli| milli as f64 / 1000.0)
        .unwrap_or(0.0)
}

/// What the login client saw in one round.
#[derive(Default)]
struct Logins {
    granted: usize,
    /// The last login was sent and never answered: the kill cut it.
    cut_short: bool,
    /// RESOURCE_EXHAUSTED: the throttle (or the hashing queue) refused a right PIN, how often
    /// and why.
    throttled: usize,
    first_refusal: Option<String>,
}

/// Checks the state directory of a dead daemon.
fn check_stores(state: &Path, central: &Central, round: usize) -> Cursor {
    let names: Vec<String> = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("corrupt")),
        "round {round}: a store was quarantined: {names:?}"
    );
    let stores: Vec<&String> = names.iter().filter(|n| n.ends_with(".db")).collect();
    for store in ["replica.db", "local.db"] {
        assert!(
            names.iter().any(|n| n == store),
            "round {round}: no {store}: {names:?}"
        );
    }
    for store in &stores {
        let conn = rusqlite::Connection::open(state.join(store)).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok", "round {round}: {store} failed integrity_check");
    }
    let replica = rusqlite::Connection::open(state.join("replica.db")).unwrap();
    let meta = |key: &str| -> u64 {
        replica
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get::<_, String>(0)
            })
            .map(|v| v.parse().unwrap())
            .unwrap_or(0)
    };
    let cursor = (meta("epoch"), meta("revision"));
    if cursor == (0, 0) {
        assert_eq!(
            central.acknowledged, None,
            "round {round}: an acknowledged snapshot was lost"
        );
        return cursor;
    }
    let expected = central
        .expected_users
        .get(&cursor)
        .unwrap_or_else(|| panic!("round {round}: cursor {cursor:?} is none that central sent"));
    if let Some(acknowledged) = central.acknowledged {
        assert!(
            cursor >= acknowledged,
            "round {round}: cursor {cursor:?} is behind the acknowledged {acknowledged:?}"
        );
    }
    let marker: String = replica
        .query_row(
            "SELECT first_name FROM users WHERE id = 'marker'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        marker,
        format!("E{}R{}", cursor.0, cursor.1),
        "round {round}: mixed state"
    );
    let users: i64 = replica
        .query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        users, *expected,
        "round {round}: rows of another state at {cursor:?}"
    );
    cursor
}

/// Sends batches one after the other from `cursor`, each adding a user and moving the marker;
/// stops at the first refusal or failure (a snapshot switched in, or the daemon died).
async fn batches(mut sync: TillSyncClient, mut cursor: Cursor, base_users: i64) -> Vec<Cursor> {
    let mut acknowledged = Vec::new();
    let mut users = base_users;
    for _ in 0..BATCHES_PER_ROUND {
        let next = (cursor.0, cursor.1 + 1);
        let added = user(&format!("d-{}-{}", next.0, next.1), 1, None);
        let batch = changes(cursor, next.1, vec![], vec![added, marker(next)], &[], &[]);
        users += 1;
        match sync.apply_changes(batch).await {
            Ok(result) if result.applied => {
                assert_eq!(result.users as i64, users);
                acknowledged.push(next);
                cursor = next;
            }
            _ => break,
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_instants_leaves_one_whole_state() {
    let seed: u64 = std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("torture seed {seed} (TORTURE_SEED={seed} repeats this run)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    std::fs::write(
        dir.join("tillgated.toml"),
        config_text(dir, "", &lockout_room()),
    )
    .unwrap();
    let mut staff: Vec<serde_json::Value> = (0..SNAPSHOT_USERS)
        .map(|i| user(&format!("u{i:04}"), i as i64 + 1, None))
        .collect();
    staff[0] = user("amy", 1, Some("1111"));
    let mut costly = account();
    costly["m_cost_kib"] = serde_json::json!(AMY_M_COST_KIB);
    costly["t_cost"] = serde_json::json!(AMY_T_COST);
    let base = snapshot_under(
        costly,
        1,
        1,
        vec![role("cashier", &["sale.create"], &[])],
        staff,
    );
    let marker_user = snapshot(1, 1, vec![], vec![marker((0, 0))]).users.remove(0);
    let snapshot_users = SNAPSHOT_USERS as i64 + 1;

    let mut central = Central::default();
    let mut daemon = Daemon::spawn(dir);
    let token = daemon
        .client()
        .await
        .create_token("central")
        .await
        .unwrap()
        .token;
    let mut cursor: Cursor = (0, 0);
    let (mut switched, mut acknowledged_batches, mut granted_logins) = (0, 0, 0);
    // Logins cut by a kill, and those of them whose charge survived it.
    let (mut cut_logins, mut cut_and_kept) = (0, 0);
    let mut charges_before = 0.0;
    for round in 0..KILLS {
        let sync = daemon.sync(Some(&token)).await;
        // The snapshot: usually further on in this epoch, sometimes a new epoch.
        let target = if cursor.0 == 0 || rng.random_ratio(1, 4) {
            (cursor.0 + 1, 1)
        } else {
            (cursor.0, cursor.1 + 100)
        };
        central.expected_users.insert(target, snapshot_users);
        let base_users = if cursor == (0, 0) {
            0
        } else {
            central.expected_users[&cursor]
        };
        for k in 1..=BATCHES_PER_ROUND {
            central
                .expected_users
                .insert((cursor.0, cursor.1 + k), base_users + k as i64);
        }
        let snapshot_call = {
            let mut sync = sync.clone();
            let snapshot = snapshot_at(&base, &marker_user, target);
            tokio::spawn(async move { sync.apply_snapshot(snapshot).await })
        };
        let batch_calls = tokio::spawn(batches(sync.clone(), cursor, base_users));
        let logins = {
            let socket = daemon.socket.clone();
            tokio::spawn(async move {
                let mut seen = Logins::default();
                let Ok(mut client) = tillgate_client::TillClient::connect(&socket).await else {
                    return seen;
                };
                loop {
                    match client.login_with_pin("1111").await {
                        Ok(_) => seen.granted += 1,
                        Err(tillgate_client::ClientError::Rpc(status))
                            if status.code() == tonic::Code::ResourceExhausted =>
                        {
                            seen.throttled += 1;
                            seen.first_refusal
                                .get_or_insert(status.message().to_owned());
                        }
                        // Before the first snapshot there is no amy; once killed, nothing answers.
                        Err(_) if client.status().await.is_ok() => {}
                        Err(_) => {
                            seen.cut_short = true;
                            return seen;
                        }
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
        daemon.kill();

        if let Ok(Ok(result)) = snapshot_call.await {
            let c = result.cursor.unwrap();
            central.acknowledge((c.epoch, c.revision));
            switched += 1;
        }
        for c in batch_calls.await.unwrap() {
            central.acknowledge(c);
            acknowledged_batches += 1;
        }
        let seen = logins.await.unwrap();
        granted_logins += seen.granted;
        assert!(
            seen.throttled == 0,
            "round {round}: amy's right PIN was refused {} times: {:?} (the budget holds {} charges)",
            seen.throttled,
            seen.first_refusal,
            terminal_charges(&daemon.state_dir())
        );
        cursor = check_stores(&daemon.state_dir(), &central, round);
        // Every other login succeeded and refunded its own charge: a kill adds at most the
        // charge of the login it cut, and none when it cut none.
        let charges_after = terminal_charges(&daemon.state_dir());
        let kept = (charges_after - charges_before).round() as i64;
        assert!(
            kept <= i64::from(seen.cut_short),
            "round {round}: {kept} charges kept by a kill that cut {} login",
            u8::from(seen.cut_short)
        );
        if seen.cut_short {
            cut_logins += 1;
            cut_and_kept += kept;
        }
        charges_before = charges_after;

        daemon = Daemon::spawn(dir);
        let mut sync = daemon.sync(Some(&token)).await;
        let state = sync.state().await.unwrap().cursor.unwrap();
        assert_eq!(
            (state.epoch, state.revision),
            cursor,
            "round {round}: cursor after restart"
        );
        assert!(
            !daemon.state_dir().join("replica.db.incoming").exists(),
            "round {round}: the unfinished side file was not removed at start"
        );
    }
    // The run exercised both outcomes, and the daemon still works.
    assert!(
        switched > 0 && acknowledged_batches > 0 && granted_logins > 0,
        "{switched} snapshots, {acknowledged_batches} batches, {granted_logins} logins acknowledged"
    );
    let mut client = daemon.client().await;
    if cursor != (0, 0) {
        assert_eq!(pin_user(&mut client, "1111").await, "amy");
    }
    daemon.stop().await;
    // A success refunds its own charge: what is left are logins cut between charge and refund.
    let kept = terminal_charges(&daemon.state_dir());
    assert!(
        (kept - charges_before).abs() < 0.5,
        "{kept} charges at the end, {charges_before} after the last kill"
    );
    // A cut login keeps no charge only when the kill came before its charge was written or after
    // its refund, a small part of a login's time next to the hash: a charge written after the
    // hash (a free guess per crash) or lost by a crash keeps almost none (measured: 2 of 100 with
    // the hash moved before the charge, 82-84 of 100 as it is).
    assert!(
        cut_logins >= KILLS as i64 / 2 && cut_and_kept * 2 >= cut_logins,
        "of {cut_logins} logins cut by a kill only {cut_and_kept} kept their charge"
    );
    eprintln!(
        "{KILLS} kills in {:.1} s: {switched} snapshots, {acknowledged_batches} batches and \
         {granted_logins} logins acknowledged; {cut_and_kept} of {cut_logins} logins cut by a \
         kill kept their charge",
        started.elapsed().as_secs_f64()
    );
}
