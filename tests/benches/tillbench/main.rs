//! tillbench: login, sync and footprint of the real `tillgated`, each against a floor measured
//! in the same run. Run it with
//!
//! ```sh
//! cargo bench -p tillgate-tests --bench tillbench
//! ```
//!
//! It builds the release `tillgated` first (a nested `cargo build --release`), starts it on
//! state directories under `target/tillbench/`, prints a Markdown table and writes the same
//! figures to `target/tillbench.json`. `TILLBENCH_QUICK=1` runs a smaller sample for a smoke
//! test (its figures are not the benchmark); `TILLBENCH_ONLY=flood` runs only the flood rows.
//! A missed target makes it exit non-zero. See BENCHMARKS.md for what each figure means.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod baseline;
mod daemon;
mod data;
mod flood;
mod floor;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tillgate_client::proto as pb;
use tillgate_client::{SNAPSHOT_CHUNK, TillClient, snapshot_chunks};

use tillgate_daemon::credential::{CostLimits, TerminalKey};
use tillgate_daemon::validate::{Ingest, validate_snapshot};

use crate::baseline::Candidates;
use crate::daemon::{Tillgated, write_config};
use crate::data::{GenUser, Rng};
use crate::report::{Row, Stats, Target, ms, num};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const FULL: usize = 100_000;
const CONCURRENT_LOGINS: usize = 64;
/// `login_socket.max_connections_per_uid`'s default: the connections the bench's one uid may hold.
const CONNECTIONS_PER_UID: usize = 16;
/// `hashing.max_concurrent`'s default, which the benchmark config keeps.
const HASHING_CAP: u64 = 2;

struct Plan {
    quick: bool,
    /// Logins per series at 100k users, and at the smaller growth sizes.
    logins: usize,
    growth_logins: usize,
    argon2_samples: usize,
    deltas: usize,
    logins_after_delta: usize,
    restarts: usize,
    /// Candidates in the baseline that is measured in full; the larger one is extrapolated from
    /// `baseline_sample` verifications.
    baseline_full: usize,
    baseline_large: usize,
    baseline_sample: usize,
    /// How long the socket is flooded (the issue's 60 s).
    flood: Duration,
    /// Only the flood rows (`TILLBENCH_ONLY=flood`).
    only_flood: bool,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                logins: 30,
                growth_logins: 10,
                argon2_samples: 10,
                deltas: 20,
                logins_after_delta: 5,
                restarts: 2,
                baseline_full: 100,
                baseline_large: 10_000,
                baseline_sample: 20,
                flood: Duration::from_secs(5),
                only_flood: false,
            }
        } else {
            Plan {
                quick,
                logins: 300,
                growth_logins: 100,
                argon2_samples: 50,
                deltas: 200,
                logins_after_delta: 20,
                restarts: 5,
                baseline_full: 1_000,
                baseline_large: 10_000,
                baseline_sample: 200,
                flood: Duration::from_secs(60),
                only_flood: false,
            }
        }
    }
}

fn main() {
    let mut plan = Plan::new(std::env::var_os("TILLBENCH_QUICK").is_some_and(|v| v != "0"));
    plan.only_flood = match std::env::var("TILLBENCH_ONLY").as_deref() {
        Err(_) | Ok("") => false,
        Ok("flood") => true,
        Ok(other) => panic!("TILLBENCH_ONLY={other}: the only filter is \"flood\""),
    };
    build_daemon();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(plan));
}

/// Builds the release `tillgated` next to this benchmark (unless TILLGATE_BIN_DIR points at
/// one): `cargo bench` builds only this package's targets.
fn build_daemon() {
    if std::env::var_os("TILLGATE_BIN_DIR").is_some() {
        return;
    }
    let dir = tillgate_tests::bin_dir();
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "-p", "tillgate-daemon", "--bin", "tillgated"]);
    // What `cargo bench` sets for this package must not leak into the nested build: some build
    // scripts (ring's) rerun when CARGO_MANIFEST_DIR changes, which would rebuild half the
    // dependency tree on every run, and again on the next plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&name)
        {
            cmd.env_remove(name);
        }
    }
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("tillbench: building tillgated ({profile})");
    let status = cmd.status().unwrap();
    assert!(status.success(), "building tillgated failed: {status}");
    if profile != "release" {
        eprintln!("tillbench: WARNING: {profile} build, figures are not representative");
    }
}

fn say(what: impl AsRef<str>) {
    eprintln!("tillbench: {}", what.as_ref());
}

fn time_argon2(samples: usize) -> Vec<Duration> {
    let argon2 = data::argon2();
    let salt = data::account_salt();
    let mut out = [0u8; data::OUTPUT_LEN];
    (0..samples)
        .map(|i| {
            let pin = format!("{:04}", i * 7919 % 10_000);
            let start = Instant::now();
            argon2
                .hash_password_into(pin.as_bytes(), &salt, &mut out)
                .unwrap();
            start.elapsed()
        })
        .collect()
}

/// Login latencies, and the argon2id evaluations timed in this process just before each login:
/// the floor, measured under the same conditions as the logins it divides.
struct Series {
    logins: Vec<Duration>,
    argon2: Vec<Duration>,
}

/// Times `n` logins with targets drawn in a fixed pseudo-random order, each preceded by one
/// argon2id evaluation in this process (while the daemon is idle).
async fn time_logins(
    client: &mut TillClient,
    targets: &[GenUser],
    n: usize,
    pin: bool,
    stream: u64,
) -> Series {
    let mut rng = Rng::new(data::SEED, stream);
    let mut samples = Vec::with_capacity(n);
    let mut argon2 = Vec::with_capacity(n);
    for _ in 0..n {
        let target = &targets[rng.below(targets.len() as u64) as usize];
        argon2.extend(time_argon2(1));
        let start = Instant::now();
        let session = if pin {
            client.login_with_pin(&target.pin).await
        } else {
            client.login_with_key(&target.key).await
        };
        let elapsed = start.elapsed();
        let session = session.unwrap();
        if !pin {
            // Keys are unique, so the key's owner is the one logged in.
            assert_eq!(session.user.unwrap().id, target.id);
        }
        samples.push(elapsed);
    }
    Series {
        logins: samples,
        argon2,
    }
}

/// Two parts of a snapshot's cost, timed in this process with the daemon's own code: the
/// protobuf round trip of the chunks, and validation (PHC parsing and re-keying).
fn snapshot_breakdown(chunks: &[pb::SnapshotChunk]) -> (Duration, Duration) {
    use prost::Message;
    let start = Instant::now();
    let decoded: Vec<pb::SnapshotChunk> = chunks
        .iter()
        .map(|c| pb::SnapshotChunk::decode(c.encode_to_vec().as_slice()).unwrap())
        .collect();
    let codec = start.elapsed();
    let (mut users, mut roles) = (Vec::new(), Vec::new());
    for chunk in decoded {
        users.extend(chunk.users);
        roles.extend(chunk.roles);
    }
    let key = TerminalKey::from_bytes([7; 32]);
    let limits = CostLimits::default();
    let start = Instant::now();
    let valid = validate_snapshot(
        users,
        roles,
        Ingest {
            key: &key,
            limits: &limits,
        },
    )
    .unwrap();
    let validate = start.elapsed();
    drop(valid);
    (codec, validate)
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

struct Growth {
    users: usize,
    snapshot: Duration,
    floor: Duration,
    pin: Stats,
    key: Stats,
    /// argon2id p50 interleaved with this size's logins.
    argon2: Stats,
}

async fn run(plan: Plan) {
    let bench_start = Instant::now();
    let target_dir = tillgate_tests::bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let root = target_dir.join("tillbench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let load_start = loadavg();
    let machine = machine(&root);
    say(format!("machine: {machine}"));
    say(format!("load average at start: {load_start}"));
    if plan.quick {
        say("TILLBENCH_QUICK: small samples, not the benchmark");
    }

    // Setup: the targets' real hashes (not measured).
    let targets = data::targets();
    let t = Instant::now();
    let real = data::real_hashes(&targets);
    say(format!(
        "hashed {} PINs and {} keys for real in {:.1} s",
        real.pins.len(),
        real.keys.len(),
        t.elapsed().as_secs_f64()
    ));

    // A first look at the floor of every login figure (it warms the CPU up too); the floors
    // in the table are the evaluations interleaved with the logins.
    let standalone = Stats::of(&time_argon2(plan.argon2_samples));
    say(format!(
        "argon2id eval: p50 {:.2} ms, p99 {:.2} ms",
        standalone.p50, standalone.p99
    ));
    let mut argon: Option<Stats> = None;

    // Floors of start time and idle memory: the same daemon with an empty replica.
    let empty_dir = root.join("empty");
    write_config(&empty_dir);
    Tillgated::start(&empty_dir).await.stop().await;
    let mut empty_start = Vec::new();
    let mut empty_rss = Vec::new();
    for _ in 0..plan.restarts {
        let d = Tillgated::start(&empty_dir).await;
        empty_start.push(d.ready_after);
        tokio::time::sleep(Duration::from_secs(1)).await;
        empty_rss.push(d.memory().0);
        d.stop().await;
    }
    empty_rss.sort();
    let empty_rss = empty_rss[(empty_rss.len() - 1) / 2];
    let empty_start = Stats::of(&empty_start);
    say(format!(
        "empty replica: ready after {:.1} ms, idle RSS {} KiB",
        empty_start.p50, empty_rss
    ));

    let mut schema: Option<Vec<String>> = None;
    let mut growth = Vec::new();
    let mut rows = Vec::new();
    let mut extra = serde_json::Map::new();
    let mut breakdown: Option<(Duration, Duration)> = None;
    let mut start_1k: Option<Stats> = None;
    let sizes: &[usize] = if plan.only_flood { &[] } else { &SIZES };
    for &size in sizes {
        let dir = root.join(format!("n{size}"));
        write_config(&dir);
        let d = Tillgated::start(&dir).await;
        let mut sync = d.sync().await;

        let chunks = snapshot_chunks(data::snapshot(size, 1, 1, &real), SNAPSHOT_CHUNK);
        if size == FULL {
            breakdown = Some(snapshot_breakdown(&chunks));
        }
        d.reset_peak();
        let start = Instant::now();
        let applied = sync.apply_snapshot_chunks(chunks).await.unwrap();
        let snapshot_time = start.elapsed();
        assert_eq!(applied.users, size as u64);
        let (_, hwm_snapshot) = d.memory();
        // What the snapshot leaves behind, once the daemon had a second to give memory back.
        let (rss_after_snapshot, rss_parts_after_snapshot, threads_after_snapshot) = if size == FULL
        {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (d.memory().0, d.rss_parts(), d.threads())
        } else {
            (0, (0, 0), 0)
        };

        let schema = schema.get_or_insert_with(|| floor::schema_of(&d.replica_path()));
        let floor_rows = floor::rows(size);
        let floor_db = root.join(format!("floor-{size}.db"));
        let mut conn = floor::open(&floor_db, schema);
        let floor_time = floor::bulk_insert(&mut conn, &floor_rows, false);
        // The same with the indexes built after the rows, in a second file (an extra floor
        // only at 100k, where it matters).
        let floor_rebuild = (size == FULL).then(|| {
            let path = root.join("floor-indexes-after.db");
            let mut conn = floor::open(&path, schema);
            let t = floor::bulk_insert(&mut conn, &floor_rows, true);
            drop(conn);
            remove_db(&path);
            t
        });
        say(format!(
            "{size} users: snapshot {:.0} ms, bulk-insert floor {:.0} ms",
            ms(snapshot_time),
            ms(floor_time)
        ));

        let mut client = d.client().await;
        let _ = time_logins(&mut client, &targets.pin_users, 3, true, 1).await;
        let n = if size == FULL {
            plan.logins
        } else {
            plan.growth_logins
        };
        let pin = time_logins(&mut client, &targets.pin_users, n, true, 2).await;
        let key = time_logins(&mut client, &targets.key_users, n, false, 3).await;
        let argon_here = Stats::of(&[pin.argon2.as_slice(), key.argon2.as_slice()].concat());
        let (pin, key) = (Stats::of(&pin.logins), Stats::of(&key.logins));
        say(format!(
            "{size} users: PIN login p50 {:.2} ms, key login p50 {:.2} ms, argon2id p50 {:.2} ms",
            pin.p50, key.p50, argon_here.p50
        ));
        growth.push(Growth {
            users: size,
            snapshot: snapshot_time,
            floor: floor_time,
            pin,
            key,
            argon2: argon_here,
        });
        if size != FULL {
            d.stop().await;
            drop(conn);
            remove_db(&floor_db);
            if size == SIZES[0] {
                let mut starts = Vec::new();
                for _ in 0..plan.restarts {
                    let d = Tillgated::start(&dir).await;
                    starts.push(d.ready_after);
                    d.stop().await;
                }
                start_1k = Some(Stats::of(&starts));
            }
            continue;
        }

        // --- 100k: the headline figures ---
        let argon = *argon.insert(argon_here);
        rows.push(
            Row::new(
                "argon2id",
                "one argon2id evaluation (m=19456 KiB, t=2, p=1), p50",
                argon.p50,
                "ms",
            )
            .note(format!(
                "p99 {} ms, n={}, interleaved with the 100k logins",
                num(argon.p99),
                argon.n
            )),
        );
        for (kind, stats, key) in [("PIN", &pin, "pin_login"), ("key", &key, "key_login")] {
            rows.push(
                Row::new(
                    &format!("{key}_p50"),
                    format!("{kind} login end to end, 100k users (10k here), p50"),
                    stats.p50,
                    "ms",
                )
                .floor(argon.p50, "argon2id p50, same run")
                .target(Target::Ratio(1.10))
                .note(format!("n={}", stats.n)),
            );
            rows.push(
                Row::new(
                    &format!("{key}_p99"),
                    format!("{kind} login end to end, 100k users, p99"),
                    stats.p99,
                    "ms",
                )
                .floor(argon.p50, "argon2id p50, same run"),
            );
        }

        rows.push(
            Row::new(
                "snapshot_100k",
                "full snapshot, 100k users, into an empty replica (sync endpoint, acknowledged)",
                ms(snapshot_time),
                "ms",
            )
            .floor(ms(floor_time), "rusqlite bulk insert, one transaction")
            .target(Target::Both(2.0, 3000.0)),
        );
        if let Some((codec, validate)) = breakdown {
            rows.push(
                Row::new(
                    "snapshot_100k_codec",
                    "of which (in this process): protobuf encode + decode of the 100 chunks",
                    ms(codec),
                    "ms",
                )
                .note("not a target"),
            );
            rows.push(
                Row::new(
                    "snapshot_100k_validate",
                    "of which (in this process): validate_snapshot (parse 200k PHC strings, re-key)",
                    ms(validate),
                    "ms",
                )
                .note("not a target"),
            );
        }
        if let Some(rebuild) = floor_rebuild {
            rows.push(
                Row::new(
                    "snapshot_100k_vs_indexes_after",
                    "full snapshot, 100k users, into an empty replica",
                    ms(snapshot_time),
                    "ms",
                )
                .floor(
                    ms(rebuild),
                    "rusqlite bulk insert, indexes built after the rows, one transaction",
                )
                .note("the same figure against the floor of the daemon's own technique"),
            );
        }
        extra.insert(
            "memory_after_snapshot_kib".into(),
            json!({ "rss": rss_after_snapshot, "hwm": hwm_snapshot }),
        );

        // A second snapshot replacing the 100k replica (central re-sends everything), sent from
        // a thread of its own while this one logs in with PINs until it is acknowledged.
        let chunks = snapshot_chunks(data::snapshot(size, 1, 2, &real), SNAPSHOT_CHUNK);
        let sender = {
            let addr = d.sync_addr.clone();
            let token = client.create_token("bench-replace").await.unwrap().token;
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let mut sync =
                        tillgate_client::TillSyncClient::connect(&addr, Some(&token), None)
                            .await
                            .unwrap();
                    let start = Instant::now();
                    sync.apply_snapshot_chunks(chunks).await.unwrap();
                    start.elapsed()
                })
            })
        };
        let mut during = Vec::new();
        let mut rng = Rng::new(data::SEED, 4);
        while !sender.is_finished() {
            let target = &targets.pin_users[rng.below(targets.pin_users.len() as u64) as usize];
            let start = Instant::now();
            client.login_with_pin(&target.pin).await.unwrap();
            during.push(start.elapsed());
        }
        let replace_time = sender.join().unwrap();
        let during = Stats::of(&during);
        say(format!(
            "PIN logins while the 100k snapshot was applied: p50 {:.2} ms, p99 {:.2} ms, n={}",
            during.p50, during.p99, during.n
        ));
        rows.push(
            Row::new(
                "pin_login_during_snapshot_p99",
                "PIN login end to end while a 100k snapshot is being applied, p99",
                during.p99,
                "ms",
            )
            .floor(argon.p50, "argon2id p50, same run")
            .target(Target::Ratio(2.0))
            .note(format!(
                "p50 {} ms, max {} ms, n={}",
                num(during.p50),
                num(during.max),
                during.n
            )),
        );
        rows.push(
            Row::new(
                "snapshot_100k_replace",
                "full snapshot, 100k users, replacing a 100k replica",
                ms(replace_time),
                "ms",
            )
            .floor(ms(floor_time), "rusqlite bulk insert, one transaction")
            .note(format!(
                "not a target; central's periodic re-send, timed while PIN logins ran back to back \
                 ({} of them): the build steps aside for every login",
                during.n
            )),
        );

        // One-user deltas, acknowledged after commit (fsync).
        let mut revision = 2;
        let mut rng = Rng::new(data::SEED, 0xF000_0000);
        let delta = |revision: &mut u64, rng: &mut Rng| {
            let mut u = data::user(rng.below(size as u64) as usize);
            u.last_name = format!("{}-{}", u.last_name, *revision);
            let batch = pb::ChangeBatch {
                base: Some(pb::Cursor {
                    epoch: 1,
                    revision: *revision,
                }),
                new_revision: *revision + 1,
                upsert_users: vec![data::pb_user(&u, &real)],
                ..Default::default()
            };
            *revision += 1;
            batch
        };
        let mut delta_samples = Vec::new();
        for _ in 0..plan.deltas {
            let batch = delta(&mut revision, &mut rng);
            let start = Instant::now();
            let result = sync.apply_changes(batch).await.unwrap();
            delta_samples.push(start.elapsed());
            assert!(result.applied);
        }
        let deltas = Stats::of(&delta_samples);
        let mut floor_delta = Vec::new();
        for i in 0..plan.deltas {
            floor_delta.push(floor::replace_one(
                &mut conn,
                &floor_rows[i * 7919 % floor_rows.len()],
            ));
        }
        let floor_delta = Stats::of(&floor_delta);
        drop(conn);
        remove_db(&floor_db);
        rows.push(
            Row::new(
                "delta_p50",
                "one-user delta applied and acknowledged, p50",
                deltas.p50,
                "ms",
            )
            .floor(floor_delta.p50, "rusqlite one-user replace + commit, p50")
            .target(Target::Abs(10.0))
            .note(format!("n={}", deltas.n)),
        );
        rows.push(
            Row::new(
                "delta_p99",
                "one-user delta applied and acknowledged, p99",
                deltas.p99,
                "ms",
            )
            .floor(floor_delta.p99, "rusqlite one-user replace + commit, p99"),
        );

        // The first login after a change: the daemon re-reads its distinct hash schemes.
        let mut after_delta = Vec::new();
        for i in 0..plan.logins_after_delta {
            let batch = delta(&mut revision, &mut rng);
            sync.apply_changes(batch).await.unwrap();
            let target = &targets.pin_users[i % targets.pin_users.len()];
            let start = Instant::now();
            client.login_with_pin(&target.pin).await.unwrap();
            after_delta.push(start.elapsed());
        }
        let after_delta = Stats::of(&after_delta);
        rows.push(
            Row::new(
                "pin_login_after_delta_p50",
                "PIN login right after a delta, 100k users, p50",
                after_delta.p50,
                "ms",
            )
            .floor(argon.p50, "argon2id p50, same run")
            .note(format!("n={}, not a target", after_delta.n)),
        );
        drop(client);
        drop(sync);
        d.stop().await;

        // Restarts with the 100k replica: time to serving and idle memory; the last one also
        // takes 64 concurrent logins.
        let mut starts = Vec::new();
        let mut idle = Vec::new();
        let mut status_times = Vec::new();
        for r in 0..plan.restarts {
            let d = Tillgated::start(&dir).await;
            starts.push(d.ready_after);
            tokio::time::sleep(Duration::from_secs(1)).await;
            idle.push(d.memory().0);
            let mut client = d.client().await;
            for _ in 0..3 {
                let start = Instant::now();
                client.status().await.unwrap();
                status_times.push(start.elapsed());
            }
            drop(client);
            if r + 1 == plan.restarts {
                let idle_now = d.memory().0;
                d.reset_peak();
                // One uid may hold login_socket.max_connections_per_uid (16) connections: the
                // 64 calls share half of them as HTTP/2 streams, all in flight at once (the
                // other half leaves room for the status client just dropped, whose close the
                // daemon may not have seen yet: a 17th connection would be closed at accept).
                let mut connections = Vec::new();
                for _ in 0..CONNECTIONS_PER_UID / 2 {
                    connections.push(d.client().await);
                }
                let clients: Vec<TillClient> = (0..CONCURRENT_LOGINS)
                    .map(|i| connections[i % connections.len()].clone())
                    .collect();
                let start = Instant::now();
                let logins = clients.into_iter().enumerate().map(|(i, mut c)| {
                    let pin = targets.pin_users[i % targets.pin_users.len()].pin.clone();
                    async move {
                        let t = Instant::now();
                        // Beyond hashing.max_waiting_per_source (all 64 share one socket
                        // uid) the daemon answers RESOURCE_EXHAUSTED at once: counted.
                        let busy = match c.login_with_pin(&pin).await {
                            Ok(_) => false,
                            Err(e) => {
                                let status = tillgate_tests::status(Err::<(), _>(e));
                                assert_eq!(
                                    status.code(),
                                    tonic::Code::ResourceExhausted,
                                    "{status:?}"
                                );
                                true
                            }
                        };
                        (t.elapsed(), c, busy)
                    }
                });
                let done = futures::future::join_all(logins).await;
                let wall = start.elapsed();
                let (_, hwm) = d.memory();
                let latencies: Vec<Duration> = done.iter().map(|(t, _, _)| *t).collect();
                let busy = done.iter().filter(|(_, _, busy)| *busy).count();
                drop(done);
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (rss_after, _) = d.memory();
                let m_cost_kib = u64::from(data::production_params().m_cost());
                let bound = HASHING_CAP * m_cost_kib;
                rows.push(
                    Row::new(
                        "peak_rss_64_logins",
                        "peak RSS (VmHWM) during 64 concurrent PIN logins",
                        hwm as f64 / 1024.0,
                        "MiB",
                    )
                    .floor(
                        (idle_now + bound) as f64 / 1024.0,
                        "idle RSS + hashing cap 2 × m_cost 19 MiB",
                    )
                    .note(format!(
                        "{} MiB above idle; {busy} of 64 refused RESOURCE_EXHAUSTED (per-source queue bound); {} threads; all 64 done in {} ms (slowest {} ms)",
                        num(hwm.saturating_sub(idle_now) as f64 / 1024.0),
                        d.threads(),
                        num(ms(wall)),
                        num(Stats::of(&latencies).max)
                    )),
                );
                extra.insert(
                    "concurrent_logins".into(),
                    json!({
                        "n": CONCURRENT_LOGINS,
                        "idle_rss_before_kib": idle_now,
                        "vmhwm_kib": hwm,
                        "bound_above_idle_kib": bound,
                        "rss_1s_after_kib": rss_after,
                        "wall_ms": ms(wall),
                        "refused_busy": busy,
                        "latency": Stats::of(&latencies).json(),
                    }),
                );
                rows.push(
                    Row::new(
                        "rss_after_logins",
                        "RSS 1 s after the 64 logins, 100k replica",
                        rss_after as f64 / 1024.0,
                        "MiB",
                    )
                    .floor(empty_rss as f64 / 1024.0, "idle RSS, empty replica")
                    .note("not a target"),
                );
            }
            d.stop().await;
        }
        idle.sort();
        let idle_rss = idle[(idle.len() - 1) / 2];
        let starts = Stats::of(&starts);
        rows.push(
            Row::new(
                "idle_rss",
                "idle RSS after start, 100k replica (median of restarts)",
                idle_rss as f64 / 1024.0,
                "MiB",
            )
            .floor(empty_rss as f64 / 1024.0, "idle RSS, empty replica")
            .target(Target::Abs(25.0)),
        );
        rows.push(
            Row::new(
                "peak_rss_snapshot_100k",
                "peak RSS (VmHWM) while applying the 100k snapshot",
                hwm_snapshot as f64 / 1024.0,
                "MiB",
            )
            .floor(empty_rss as f64 / 1024.0, "idle RSS, empty replica")
            .target(Target::Abs(64.0)),
        );
        rows.push(
            Row::new(
                "rss_1s_after_snapshot",
                "RSS 1 s after applying the 100k snapshot (same process)",
                rss_after_snapshot as f64 / 1024.0,
                "MiB",
            )
            .floor(
                idle_rss as f64 / 1024.0,
                "idle RSS after start, 100k replica",
            )
            .target(Target::Ratio(1.5))
            .note(format!(
                "heap {} MiB, mapped files {} MiB, {threads_after_snapshot} threads",
                num(rss_parts_after_snapshot.0 as f64 / 1024.0),
                num(rss_parts_after_snapshot.1 as f64 / 1024.0)
            )),
        );
        let status = Stats::of(&status_times);
        rows.push(
            Row::new(
                "get_status_100k",
                "GetStatus with the 100k replica, p50",
                status.p50,
                "ms",
            )
            .note(format!(
                "n={}, counts the users active here; not a target",
                status.n
            )),
        );
        let start_1k = start_1k.expect("the 1k size runs first");
        rows.push(
            Row::new(
                "start_to_serving_1k",
                "start to serving (spawn → Login health check SERVING) after a clean stop, 1k replica, p50",
                start_1k.p50,
                "ms",
            )
            .floor(empty_start.p50, "same, empty replica")
            .target(Target::Abs(50.0))
            .note(format!("max {} ms, n={}", num(start_1k.max), start_1k.n)),
        );
        rows.push(
            Row::new(
                "start_to_serving",
                "start to serving after a clean stop, 100k replica, p50",
                starts.p50,
                "ms",
            )
            .floor(start_1k.p50, "same, 1k replica")
            .target(Target::Both(2.0, 50.0))
            .note(format!(
                "max {} ms, n={}, warm page cache",
                num(starts.max),
                starts.n
            )),
        );
    }

    // The flood, against argon2id evaluations timed just before it.
    let flood_argon = Stats::of(&time_argon2(plan.argon2_samples));
    let (flood_rows, flood_extra) =
        flood::run(&root, plan.flood, HASHING_CAP, &targets, &real, flood_argon).await;
    rows.extend(flood_rows);
    extra.insert("flood".into(), flood_extra);

    // The per-user-salt baseline, PIN and key.
    if let Some(argon) = argon {
        baseline_rows(&plan, argon, &growth, &mut rows);
    }

    // Growth.
    let mut growth_table = String::from(
        "| users (assigned here) | snapshot | bulk-insert floor | ratio | PIN login p50 / p99 | key login p50 / p99 | PIN p50 ÷ argon2id p50 |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for g in &growth {
        growth_table.push_str(&format!(
            "| {} ({}) | {} ms | {} ms | {:.2}× | {} / {} ms | {} / {} ms | {:.2}× |\n",
            g.users,
            g.users / data::TERMINAL_EVERY,
            num(ms(g.snapshot)),
            num(ms(g.floor)),
            ms(g.snapshot) / ms(g.floor),
            num(g.pin.p50),
            num(g.pin.p99),
            num(g.key.p50),
            num(g.key.p99),
            g.pin.p50 / g.argon2.p50
        ));
    }

    let load_end = loadavg();
    let main_table = report::table(&rows);
    println!();
    println!("## tillbench");
    println!();
    println!("{machine}");
    println!("load average: {load_start} at start, {load_end} at end");
    println!();
    println!("{main_table}");
    println!("### Growth");
    println!();
    println!("{growth_table}");
    let json_path = target_dir.join("tillbench.json");
    let doc = json!({
        "quick": plan.quick,
        "machine": machine,
        "load_average": { "start": load_start, "end": load_end },
        "seed": format!("{:#x}", data::SEED),
        "argon2id": { "m_cost_kib": data::production_params().m_cost(), "t_cost": data::production_params().t_cost(), "p_cost": data::production_params().p_cost(), "eval_interleaved_100k": argon.map(|a| a.json()), "eval_before_flood": flood_argon.json(), "eval_standalone": standalone.json() },
        "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "growth": growth.iter().map(|g| json!({
            "users": g.users,
            "users_here": g.users / data::TERMINAL_EVERY,
            "snapshot_ms": ms(g.snapshot),
            "bulk_insert_floor_ms": ms(g.floor),
            "pin_login": g.pin.json(),
            "key_login": g.key.json(),
            "argon2id_interleaved": g.argon2.json(),
        })).collect::<Vec<_>>(),
        "startup_empty_replica": empty_start.json(),
        "idle_rss_empty_replica_kib": empty_rss,
        "extra": extra,
        "total_s": bench_start.elapsed().as_secs_f64(),
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("figures written to {}", json_path.display());
    say(format!(
        "done in {:.0} s",
        bench_start.elapsed().as_secs_f64()
    ));
    if std::env::var_os("TILLBENCH_KEEP").is_some() {
        println!("state directories kept in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    let missed: Vec<&str> = rows
        .iter()
        .filter(|r| r.met() == Some(false))
        .map(|r| r.key.as_str())
        .collect();
    if !missed.is_empty() {
        say(format!("missed targets: {}", missed.join(", ")));
        std::process::exit(1);
    }
}

/// The per-user-salt baseline, PIN and key: what a login costs when every user has a salt.
fn baseline_rows(plan: &Plan, argon: Stats, growth: &[Growth], rows: &mut Vec<Row>) {
    let full = plan.baseline_full;
    let p50_at = full.div_ceil(2);
    let p99_at = (full * 99).div_ceil(100);
    for (kind, stream, a, b) in [
        ("PIN", 0x1_0000_u64, "4821", "1907"),
        ("key", 0x2_0000, "017A6945260000AC", "01B3C2D4E5F60718"),
    ] {
        let t = Instant::now();
        let candidates = Candidates::new(full, stream, &[(p50_at, a), (p99_at, b)]);
        let (found, p50) = candidates.login(a, full);
        assert_eq!(found, Some(p50_at));
        let (found, p99) = candidates.login(b, full);
        assert_eq!(found, Some(p99_at));
        let per_candidate = (p50 + p99).as_secs_f64() * 1e3 / (p50_at + p99_at) as f64;
        let key = kind.to_lowercase();
        let ours = growth
            .iter()
            .find(|g| g.users == FULL)
            .map(|g| if kind == "PIN" { g.pin.p50 } else { g.key.p50 })
            .unwrap();
        let versus = |value: f64| format!("{:.0}× tillgated's {kind} login p50", value / ours);
        rows.push(
            Row::new(
                &format!("baseline_{key}_{full}_p50"),
                format!("baseline, per-user salts, {kind}, {full} candidates, p50 (measured)"),
                ms(p50),
                "ms",
            )
            .floor(argon.p50, "argon2id p50, same run")
            .note(format!("match at position {p50_at}; {}", versus(ms(p50)))),
        );
        rows.push(
            Row::new(
                &format!("baseline_{key}_{full}_p99"),
                format!("baseline, per-user salts, {kind}, {full} candidates, p99 (measured)"),
                ms(p99),
                "ms",
            )
            .floor(argon.p50, "argon2id p50, same run")
            .note(format!("match at position {p99_at}; {}", versus(ms(p99)))),
        );
        // The large one: per-candidate cost from a measured sample, times the positions.
        let large = plan.baseline_large;
        let sample = Candidates::new(plan.baseline_sample, stream + 1, &[]);
        let (found, sample_time) = sample.login(a, plan.baseline_sample);
        assert_eq!(found, None);
        let per = ms(sample_time) / plan.baseline_sample as f64;
        for (label, position) in [
            ("p50", large.div_ceil(2)),
            ("p99", (large * 99).div_ceil(100)),
        ] {
            rows.push(
                Row::new(
                    &format!("baseline_{key}_{large}_{label}"),
                    format!(
                        "baseline, per-user salts, {kind}, {large} candidates, {label} (extrapolated)"
                    ),
                    per * position as f64,
                    "ms",
                )
                .floor(argon.p50, "argon2id p50, same run")
                .note(format!(
                    "{position} × {} ms per candidate, from {} measured; {}",
                    num(per),
                    plan.baseline_sample,
                    versus(per * position as f64)
                )),
            );
        }
        say(format!(
            "baseline {kind}: {full} candidates in {:.1} s ({} ms per candidate measured in full, {} ms in the sample)",
            t.elapsed().as_secs_f64(),
            num(per_candidate),
            num(per)
        ));
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// nproc, CPU model, memory, kernel, and the filesystem the state directories live on.
fn machine(dir: &Path) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let fs = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mount, fstype) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(mount)
                .then(|| (mount.len(), format!("{fstype} on {mount}")))
        })
        .max()
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "unknown".into());
    format!(
        "nproc {nproc}, CPU {cpu}, {:.1} GiB RAM, Linux {}, state on {fs}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}
