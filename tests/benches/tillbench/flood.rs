//! Holding under a flood (issue 10): 64 clients on the login socket send wrong PINs and unknown
//! keys as fast as they can while a cashier logs in with a genuine key on a serial reader (a
//! real pseudo-terminal the daemon reads). Measured: that key login's latency, the daemon's peak
//! RSS, and the audit rows the flood writes — each against the target the issue sets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tillgate_client::proto as pb;
use tillgate_client::{SNAPSHOT_CHUNK, TillClient, snapshot_chunks};
use tillgate_tests::Pty;

use crate::daemon::{Tillgated, write_config_with};
use crate::data::{self, RealHashes, Rng, Targets};
use crate::report::{Row, Stats, Target, num};

/// Concurrent clients on the login socket.
pub const CLIENTS: usize = 64;
/// Connections the flood shares: `login_socket.max_connections_per_uid`'s default (16) less the
/// one this process already holds for the Watch stream. One more would be closed at accept and
/// every call on it would fail at once, which floods nothing.
const CONNECTIONS: usize = 15;
/// Users in the replica (targets exist at every size from 1k).
const USERS: usize = 1_000;
/// What the issue allows above idle + hashing cap while flooded.
const RSS_SLACK_KIB: u64 = 16 * 1024;
/// Audit rows the flood may write in its 60 s.
const AUDIT_ROWS: f64 = 10.0;
/// Pause between two genuine key logins (a cashier does not log in back to back).
const KEY_LOGIN_PAUSE: Duration = Duration::from_millis(200);

/// What the flood's clients got back, by gRPC code.
type Outcomes = BTreeMap<String, u64>;

pub async fn run(
    root: &Path,
    duration: Duration,
    hashing_cap: u64,
    targets: &Targets,
    real: &RealHashes,
    argon: Stats,
) -> (Vec<Row>, Value) {
    let dir = root.join("flood");
    let link = dir.join("reader");
    std::fs::create_dir_all(&dir).unwrap();
    let mut pty = Pty::open(&link);
    write_config_with(
        &dir,
        &format!(
            "[[input.serial]]\nname = \"bench reader\"\npath = \"{}\"\nbaud = 9600\nprofile = \"generic-wedge\"\n",
            link.display()
        ),
    );
    let d = Tillgated::start(&dir).await;
    let mut sync = d.sync().await;
    let applied = sync
        .apply_snapshot_chunks(snapshot_chunks(
            data::snapshot(USERS, 1, 1, real),
            SNAPSHOT_CHUNK,
        ))
        .await
        .unwrap();
    assert_eq!(applied.users, USERS as u64);
    let mut client = d.client().await;
    tillgate_tests::wait_device(&mut client, &link, true).await;
    let mut watch = client.watch().await.unwrap();
    let first = next_event(&mut watch).await;
    assert_eq!(first.kind, pb::SessionEventKind::Current as i32);

    // One genuine key login before the flood: it warms the reader path, and its audit row is
    // written before the count starts.
    let key_users = &targets.key_users;
    key_login(&mut pty, &mut watch, &key_users[0]).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, _) = d.memory();
    let audit_before = sync.pull_audit(0, 1).await.unwrap().last_seq;
    d.reset_peak();

    let flood = {
        let socket = d.socket.clone();
        let wrong_pins = wrong_pins(targets);
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(flood(socket, wrong_pins, duration))
        })
    };

    let mut latencies = Vec::new();
    let mut i = 1;
    while !flood.is_finished() {
        let user = &key_users[i % key_users.len()];
        latencies.push(key_login(&mut pty, &mut watch, user).await);
        i += 1;
        tokio::time::sleep(KEY_LOGIN_PAUSE).await;
    }
    let (outcomes, attempts) = flood.join().unwrap();
    let (_, hwm) = d.memory();
    let threads = d.threads();
    let lockouts = client.lockouts().await.unwrap();

    // Every audit row written since the flood began, the flood's (socket sources) apart from
    // the genuine key logins' (the reader).
    let mut after = audit_before;
    let mut by_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let page = sync.pull_audit(after, 0).await.unwrap();
        let Some(last) = page.events.last() else {
            break;
        };
        after = last.seq;
        for e in page.events {
            by_source
                .entry(e.source)
                .or_default()
                .push(format!("{} {}", e.kind, e.outcome));
        }
    }
    let flood_rows: Vec<String> = by_source
        .iter()
        .filter(|(source, _)| source.starts_with("socket"))
        .flat_map(|(_, rows)| rows.iter().cloned())
        .collect();
    let reader_rows: usize = by_source
        .iter()
        .filter(|(source, _)| !source.starts_with("socket"))
        .map(|(_, rows)| rows.len())
        .sum();
    drop(client);
    drop(sync);
    d.stop().await;

    assert_eq!(
        outcomes.get("Ok"),
        None,
        "no flood attempt may log in: {outcomes:?}"
    );
    // Every attempt must have reached the daemon and been answered by it: a connection closed
    // at accept (over the per-uid cap) fails its calls at once with Unknown or Cancelled, a
    // flood that loads nothing.
    for code in ["Unknown", "Cancelled", "Unavailable"] {
        assert_eq!(
            outcomes.get(code),
            None,
            "flood calls that never reached a handler: {outcomes:?}"
        );
    }
    let key = Stats::of(&latencies);
    let m_cost_kib = u64::from(data::production_params().m_cost());
    let cap = hashing_cap * m_cost_kib;
    let secs = duration.as_secs_f64();
    let outcome_text = outcomes
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    crate::say(format!(
        "flood: {attempts} attempts in {secs:.0} s ({outcome_text}); key login p50 {:.2} ms, p99 {:.2} ms, n={}; VmHWM {} KiB (idle {idle}); {} audit rows from the flood, {reader_rows} from the reader",
        key.p50,
        key.p99,
        key.n,
        hwm,
        flood_rows.len()
    ));
    let rows = vec![
        Row::new(
            "flood_key_login_p50",
            format!(
                "genuine key login on a serial reader (pty → Login event) while {CLIENTS} socket clients flood wrong PINs and unknown keys, p50"
            ),
            key.p50,
            "ms",
        )
        .floor(argon.p50, "argon2id p50, timed just before the flood")
        .target(Target::Ratio(2.5))
        .note(format!(
            "p99 {} ms, max {} ms, n={}; flood: {attempts} attempts in {secs:.0} s ({outcome_text})",
            num(key.p99),
            num(key.max),
            key.n
        )),
        Row::new(
            "flood_peak_rss",
            format!("peak RSS (VmHWM) during the {CLIENTS}-client flood"),
            hwm as f64 / 1024.0,
            "MiB",
        )
        .floor(
            (idle + cap) as f64 / 1024.0,
            format!(
                "idle RSS + hashing cap {hashing_cap} × m_cost {} MiB",
                num(m_cost_kib as f64 / 1024.0)
            ),
        )
        .target(Target::Abs((idle + cap + RSS_SLACK_KIB) as f64 / 1024.0))
        .note(format!(
            "{} MiB above idle; target: floor + 16 MiB; {threads} threads",
            num(hwm.saturating_sub(idle) as f64 / 1024.0)
        )),
        Row::new(
            "flood_audit_rows",
            format!("audit rows written by the {secs:.0} s flood (PullAuditEvents, socket sources)"),
            flood_rows.len() as f64,
            "rows",
        )
        .target(Target::Abs(AUDIT_ROWS))
        .note(format!(
            "{}; plus {reader_rows} rows of the genuine key logins",
            if flood_rows.is_empty() {
                "none".to_owned()
            } else {
                summarize(&flood_rows)
            }
        )),
    ];
    let extra = json!({
        "clients": CLIENTS,
        "duration_s": secs,
        "attempts": attempts,
        "outcomes": outcomes,
        "key_login": key.json(),
        "argon2id_before": argon.json(),
        "idle_rss_kib": idle,
        "vmhwm_kib": hwm,
        "hashing_cap_kib": cap,
        "threads": threads,
        "audit_rows_flood": flood_rows,
        "audit_rows_reader": reader_rows,
        "lockouts": lockouts.iter().map(|l| json!({
            "source": l.source,
            "failures": l.failures,
            "strikes": l.strikes,
            "locked": l.locked_until.is_some(),
        })).collect::<Vec<_>>(),
    });
    (rows, extra)
}

/// "kind outcome ×n" per distinct row.
fn summarize(rows: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(r, n)| format!("{r} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// 4-digit PINs no target has (the other users' hashes are not real, so these never match).
fn wrong_pins(targets: &Targets) -> Vec<String> {
    let taken: BTreeSet<&str> = targets.pin_users.iter().map(|u| u.pin.as_str()).collect();
    (0..10_000)
        .map(|p| format!("{p:04}"))
        .filter(|p| !taken.contains(p.as_str()))
        .collect()
}

/// Writes `user`'s key to the reader and waits for the daemon's Login event for that user.
async fn key_login(
    pty: &mut Pty,
    watch: &mut tonic::Streaming<pb::SessionEvent>,
    user: &data::GenUser,
) -> Duration {
    let start = Instant::now();
    pty.write(format!("{}\r\n", user.key).as_bytes());
    loop {
        let event = next_event(watch).await;
        let id = event
            .session
            .as_ref()
            .and_then(|s| s.user.as_ref())
            .map(|u| u.id.as_str());
        if id == Some(user.id.as_str()) {
            return start.elapsed();
        }
    }
}

async fn next_event(watch: &mut tonic::Streaming<pb::SessionEvent>) -> pb::SessionEvent {
    tillgate_tests::next_event(watch, Duration::from_secs(30)).await
}

/// `CLIENTS` connections, each sending wrong PINs and unknown keys back to back until
/// `duration` is over. Returns the answers by code and the number of attempts.
async fn flood(
    socket: std::path::PathBuf,
    wrong_pins: Vec<String>,
    duration: Duration,
) -> (Outcomes, u64) {
    // One uid holds at most login_socket.max_connections_per_uid connections (16 by default,
    // more are closed at accept): the flooders share 15, each on streams of its own.
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        connections.push(TillClient::connect(&socket).await.unwrap());
    }
    let clients: Vec<TillClient> = (0..CLIENTS)
        .map(|c| connections[c % CONNECTIONS].clone())
        .collect();
    let deadline = Instant::now() + duration;
    let tasks = clients.into_iter().enumerate().map(|(c, mut client)| {
        let pins = wrong_pins.clone();
        async move {
            let mut rng = Rng::new(data::SEED, 0xF100_0000 + c as u64);
            let mut outcomes = Outcomes::new();
            let mut attempts = 0u64;
            while Instant::now() < deadline {
                let result = if attempts.is_multiple_of(2) {
                    let pin = &pins[rng.below(pins.len() as u64) as usize];
                    client.login_with_pin(pin).await
                } else {
                    // Random 64-bit ids: none is a user's key.
                    client
                        .login_with_key(&format!("{:016X}", rng.next_u64()))
                        .await
                };
                let code = match result {
                    Ok(_) => "Ok".to_owned(),
                    Err(e) => format!("{:?}", tillgate_tests::status(Err::<(), _>(e)).code()),
                };
                *outcomes.entry(code).or_default() += 1;
                attempts += 1;
            }
            (outcomes, attempts)
        }
    });
    let mut total = Outcomes::new();
    let mut attempts = 0;
    for (outcomes, n) in futures::future::join_all(tasks).await {
        attempts += n;
        for (code, count) in outcomes {
            *total.entry(code).or_default() += count;
        }
    }
    (total, attempts)
}
