//! The admin views on a large replica: `tillctl audit -n 1000` and `tillctl collisions` over
//! 100,000 users answer in full through the login socket, whose *request* limit stays 64 KiB.
//!
//! Only one user has a real PIN hash (the one that logs in to fill the audit outbox); the other
//! 99,999 carry the same account salt and costs with stand-in output bytes, equal for equal PINs
//! as real hashes would be, so 10,000 PIN values give 10,000 collisions of about 10 users each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde_json::json;
use sha2::{Digest, Sha256};
use tillgate_client::export::SnapshotExport;
use tillgate_tests::*;

const USERS: usize = 100_000;
const LOGIN_PIN: &str = "987654321";

/// The snapshot: `u-login` with a real hash of LOGIN_PIN, then users whose PINs are the 10,000
/// four-digit values in turn, all assigned to this terminal.
fn large_snapshot() -> tillgate_client::export::Snapshot {
    let export = json!({
        "account": account(),
        "cursor": { "epoch": 1, "revision": 1 },
        "roles": [role("cashier", &["sale"], &[])],
        "users": [user("u-login", 0, Some(LOGIN_PIN))],
    });
    let mut snapshot = SnapshotExport::parse(&export.to_string())
        .and_then(SnapshotExport::into_snapshot)
        .unwrap();
    let template = snapshot.users[0].clone();
    let real = template.pin.as_ref().unwrap().phc.clone();
    // "$argon2id$v=19$m=64,t=1,p=1$<salt>$<output>": keep everything but the output.
    let (prefix, output) = real.rsplit_once('$').unwrap();
    let output_len = STANDARD_NO_PAD.decode(output).unwrap().len();
    for i in 1..USERS {
        let pin = format!("{:04}", i % 10_000);
        let fake = Sha256::digest(format!("stand-in output for PIN {pin}"));
        let mut user = template.clone();
        user.id = format!("u-{i:06}");
        user.ordinal = i as i64;
        user.first_name = format!("First{i}");
        user.last_name = format!("Last{i}");
        user.pin.as_mut().unwrap().phc =
            format!("{prefix}${}", STANDARD_NO_PAD.encode(&fake[..output_len]));
        snapshot.users.push(user);
    }
    snapshot
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_1000_and_collisions_at_100k_users_fit_through_the_login_socket() {
    // 1000 logins back to back from one uid: lift its call rate, which is not what this is about.
    let daemon = Daemon::start_with(
        "",
        "[login_socket]\ncalls_per_second = 10000\ncall_burst = 10000\n",
    );
    daemon.push_snapshot(large_snapshot()).await;
    let mut client = daemon.client().await;
    assert_eq!(client.status().await.unwrap().users, USERS as u64);

    // 1000 audit rows: logins of the one real user.
    for _ in 0..1000 {
        client.login_with_pin(LOGIN_PIN).await.unwrap();
    }

    let (ok, out, err) = run_tillctl(&daemon, &["audit", "-n", "1000"], "", &[]);
    assert!(ok, "tillctl audit -n 1000 failed: {err}");
    let rows = out.lines().filter(|l| l.contains("u-login")).count();
    assert_eq!(rows, 1000, "{err}");
    let tail = client.audit_tail(1000).await.unwrap();
    assert_eq!(tail.events.len(), 1000);
    let audit_bytes = prost::Message::encoded_len(&tail);

    let (ok, out, err) = run_tillctl(&daemon, &["collisions"], "", &[]);
    assert!(ok, "tillctl collisions failed: {err}");
    let report = client.collisions().await.unwrap();
    assert_eq!(
        report.collisions.len(),
        10_000,
        "{}",
        &out[..out.len().min(2000)]
    );
    assert!(
        report.collisions.iter().all(|c| c.members.len() >= 9),
        "every four-digit PIN is shared by about ten users"
    );
    for user in ["u-000001", "u-099999"] {
        assert!(out.contains(user), "tillctl collisions names {user}");
    }
    let collision_bytes = prost::Message::encoded_len(&report);
    println!(
        "at {USERS} users: audit -n 1000 response {audit_bytes} bytes, collisions response \
         {collision_bytes} bytes (login socket request limit 65536)"
    );
    assert!(audit_bytes > 65_536 && collision_bytes > 65_536);
    assert!(collision_bytes < tillgate_client::MAX_RESPONSE_BYTES);

    // Requests keep the 64 KiB limit, refused with gRPC's code for it.
    let (code, message) = code(client.login_with_pin(&"1".repeat(70_000)).await);
    assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
    assert!(message.contains("limit of 65536 bytes"), "{message}");
    assert!(!message.contains("1111111111"), "{message}");
}
