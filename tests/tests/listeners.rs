//! One peer cannot hold the listeners or make the daemon do unbounded work a second, end to
//! end: the per-uid connection cap and call rate on the login socket, the per-address cap and
//! the authentication deadline on the sync listener.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tillgate_client::proto as pb;
use tillgate_client::{TillClient, TillSyncClient};
use tillgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a test waits for something the daemon is bound to do soon (a bound, not a pause).
const PATIENCE: Duration = Duration::from_secs(30);

fn sync_socket_addr(daemon: &Daemon) -> SocketAddr {
    daemon
        .sync_addr
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

/// A channel to the sync listener that counts the TCP connections it opens, so a test can tell
/// "the same connection is still served" from "tonic quietly reconnected".
async fn counted_channel(addr: SocketAddr) -> (Channel, Arc<AtomicUsize>) {
    let connects = Arc::new(AtomicUsize::new(0));
    let counter = connects.clone();
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(TokioIo::new(TcpStream::connect(addr).await?))
            }
        }))
        .await
        .unwrap();
    (channel, connects)
}

/// Reads (and discards the server's HTTP/2 preface) until the daemon closes the connection.
async fn read_until_closed(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: still open after {PATIENCE:?}");
}

#[tokio::test]
async fn one_uid_gets_max_connections_per_uid_and_another_uid_still_gets_answers() {
    if !root_or_skip("run tillctl as another uid") {
        return;
    }
    let daemon = Daemon::start_with(
        "",
        "[login_socket]\nmode = \"0666\"\nmax_connections_per_uid = 2\n",
    );
    let mut mine = vec![daemon.client().await, daemon.client().await];
    for c in &mut mine {
        c.status().await.unwrap();
    }
    let third = async {
        let mut c = TillClient::connect(&daemon.socket).await?;
        c.status().await
    };
    assert!(
        third.await.is_err(),
        "a third connection from this uid is closed"
    );
    // While this uid holds its whole share, another uid connects and is answered.
    let nobody = tillctl_as_nobody(&daemon, &["status"]);
    assert!(
        nobody.status.success(),
        "{}",
        String::from_utf8_lossy(&nobody.stderr)
    );
    for c in &mut mine {
        c.status().await.unwrap();
    }
    // A slot of this uid comes back when one of its connections closes.
    drop(mine.pop());
    let again = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(mut c) = TillClient::connect(&daemon.socket).await
                && c.status().await.is_ok()
            {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "the uid's slot never came back");
    let log = daemon.log_text();
    assert!(
        log.contains("connection closed: this peer already has login_socket.max_connections_per_uid connections open"),
        "{log}"
    );
}

#[tokio::test]
async fn sync_connections_without_a_valid_token_in_time_are_closed_and_central_gets_in() {
    let temp = tempfile::tempdir().unwrap();
    let config = config_text(temp.path(), "", "").replace(
        "[sync]\n",
        "[sync]\nauth_timeout = \"1s\"\nmax_connections_per_peer = 3\n",
    );
    std::fs::write(temp.path().join("tillgated.toml"), config).unwrap();
    let daemon = Daemon::spawn(temp.path());
    let addr = sync_socket_addr(&daemon);
    let token = daemon
        .client()
        .await
        .create_token("central")
        .await
        .unwrap()
        .token;

    // Central authenticates with its first call, on a connection that then stays.
    let (channel, central_connects) = counted_channel(addr).await;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let mut central = pb::sync_client::SyncClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        },
    );
    central
        .get_sync_state(pb::GetSyncStateRequest {})
        .await
        .unwrap();

    // Two peers that connect and never send a byte take the rest of 127.0.0.1's share: a
    // fourth connection is closed at accept ...
    let mut idle = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    read_until_closed(&mut fourth, "a connection over max_connections_per_peer").await;
    // ... and the idle two are closed once auth_timeout has passed.
    for stream in &mut idle {
        read_until_closed(stream, "an idle connection").await;
    }

    // Health checks need no token, and do not count as authenticating.
    let (channel, health_connects) = counted_channel(addr).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    health.check(check()).await.unwrap();
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            let answer = health.check(check()).await;
            if answer.is_err() || health_connects.load(Ordering::SeqCst) > 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a connection that only checks health is closed"
    );

    // Central's connection is older than the health check's, so its deadline has passed too:
    // it is still open, and still answered.
    central
        .get_sync_state(pb::GetSyncStateRequest {})
        .await
        .unwrap();
    assert_eq!(central_connects.load(Ordering::SeqCst), 1, "no reconnect");

    // A new central connection gets in and pushes.
    let mut push = TillSyncClient::connect(&daemon.sync_addr, Some(&token), None)
        .await
        .unwrap();
    push.apply_snapshot(snapshot(
        1,
        1,
        vec![role("cashier", &["sale.create"], &[])],
        vec![user("amy", 1, Some("1111"))],
    ))
    .await
    .unwrap();
    let mut client = daemon.client().await;
    assert_eq!(pin_user(&mut client, "1111").await, "amy");

    let log = daemon.log_text();
    for line in [
        "connection closed: this peer already has sync.max_connections_per_peer connections open",
        "sync connection closed: no call with a valid token within sync.auth_timeout",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }
}

#[tokio::test]
async fn one_uid_is_held_to_its_call_rate_and_a_turn_too_far_away_is_refused_at_once() {
    let daemon = Daemon::start_with(
        "",
        "[login_socket]\ncalls_per_second = 5\ncall_burst = 5\nmax_call_wait = \"2s\"\n",
    );
    let mut client = daemon.client().await;
    // 5 at once, then one every 200 ms: 25 calls one after another take at least 4 s. (A lower
    // bound: load can only make them slower.)
    let start = Instant::now();
    for _ in 0..25 {
        client.status().await.unwrap();
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(3900), "{elapsed:?}");

    // 30 at once: those whose turn is within 2 s wait for it; the others are refused at
    // once, so every refusal is answered before the last call that waited.
    let order = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let mut c = client.clone();
            let order = order.clone();
            tokio::spawn(async move {
                let answer = match c.status().await {
                    Ok(_) => (Code::Ok, String::new()),
                    Err(e) => code(Err::<(), _>(e)),
                };
                (answer, order.fetch_add(1, Ordering::SeqCst))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let waited: Vec<usize> = answers
        .iter()
        .filter(|((c, _), _)| *c == Code::Ok)
        .map(|(_, at)| *at)
        .collect();
    let refused: Vec<_> = answers
        .iter()
        .filter(|((c, _), _)| *c == Code::ResourceExhausted)
        .collect();
    assert_eq!(waited.len() + refused.len(), 30, "{answers:?}");
    assert!(!waited.is_empty() && !refused.is_empty(), "{answers:?}");
    let last_waited = waited.iter().max().unwrap();
    for ((_, message), at) in &refused {
        assert!(
            message.starts_with(&format!(
                "uid {} is over login_socket.calls_per_second (5 a second after a burst of 5)",
                nix::unistd::geteuid()
            )) && message.contains("more than login_socket.max_call_wait (2s)"),
            "{message}"
        );
        assert!(at < last_waited, "a refusal did not wait: {answers:?}");
    }
    assert!(
        daemon
            .log_text()
            .contains("call refused: this uid is over its login_socket call rate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uids_call_goes_past_calls_waiting_for_their_turn() {
    if !root_or_skip("run tillctl as another uid") {
        return;
    }
    let daemon = Daemon::start_with(
        "",
        "[login_socket]\nmode = \"0666\"\ncalls_per_second = 1\ncall_burst = 1\n\
         max_call_wait = \"40s\"\ncall_timeout = \"60s\"\n",
    );
    let client = daemon.client().await;
    // 20 calls from this uid: one now, the others one a second for the next 19 s.
    const CALLS: usize = 20;
    let answered = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let mut c = client.clone();
            let answered = answered.clone();
            tokio::spawn(async move {
                c.status().await.unwrap();
                answered.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    // Once the first is answered the others have their turns and wait.
    tokio::time::timeout(PATIENCE, async {
        while answered.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let nobody = tokio::task::block_in_place(|| tillctl_as_nobody(&daemon, &["status"]));
    let answered_meanwhile = answered.load(Ordering::SeqCst);
    assert!(
        nobody.status.success(),
        "{}",
        String::from_utf8_lossy(&nobody.stderr)
    );
    assert!(
        answered_meanwhile < CALLS,
        "uid 65534 was answered only after all of this uid's waiting calls"
    );
    for call in calls {
        call.abort();
    }
}

#[tokio::test]
async fn a_pos_peer_that_stops_answering_pings_is_closed_after_the_keepalive() {
    let daemon = Daemon::start_with("", "[login_socket]\nkeepalive = \"1s\"\n");
    // A raw HTTP/2 client: the preface and empty SETTINGS, then silence — it answers nothing,
    // as a POS app on a frozen machine would.
    let mut peer = UnixStream::connect(&daemon.socket).await.unwrap();
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // Frames until the daemon closes the connection: one of them must be its PING, so the
    // close is the keepalive's doing.
    let mut frame_types = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut header = [0u8; 9];
            if peer.read_exact(&mut header).await.is_err() {
                break;
            }
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            frame_types.push(header[3]);
            let mut payload = vec![0u8; length];
            if peer.read_exact(&mut payload).await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "still open after {PATIENCE:?}: {frame_types:?}"
    );
    const PING: u8 = 0x6;
    assert!(frame_types.contains(&PING), "{frame_types:?}");
    // The daemon still serves everyone else.
    daemon.client().await.status().await.unwrap();
}

#[tokio::test]
async fn idle_connections_from_four_addresses_do_not_lock_central_out() {
    let daemon = Daemon::start();
    let addr = sync_socket_addr(&daemon);
    let token = daemon
        .client()
        .await
        .create_token("central")
        .await
        .unwrap()
        .token;
    // An attacker on the sync network with four addresses (127.0.0.2-5 here) opens its share
    // from each and never sends a byte.
    let mut idle = Vec::new();
    for host in 2..=5u8 {
        for _ in 0..4 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::from(([127, 0, 0, host], 0)))
                .unwrap();
            idle.push(socket.connect(addr).await.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let central = tokio::time::timeout(Duration::from_secs(5), async {
        TillSyncClient::connect(&daemon.sync_addr, Some(&token), None)
            .await?
            .state()
            .await
    })
    .await;
    assert!(
        matches!(central, Ok(Ok(_))),
        "central locked out by {} idle connections: {central:?}",
        idle.len()
    );
    // Central's connection took the place of the attacker's oldest (every address held four).
    read_until_closed(&mut idle[0], "the oldest idle connection").await;
    // An authenticated connection is never evicted: the attacker's next connections evict
    // his own, and central is still answered on the connection it has.
    let (channel, central_connects) = counted_channel(addr).await;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let mut central = pb::sync_client::SyncClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        },
    );
    central
        .get_sync_state(pb::GetSyncStateRequest {})
        .await
        .unwrap();
    for _ in 0..8 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        if let Ok(stream) = socket.connect(addr).await {
            idle.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    central
        .get_sync_state(pb::GetSyncStateRequest {})
        .await
        .unwrap();
    assert_eq!(central_connects.load(Ordering::SeqCst), 1, "no reconnect");
    let log = daemon.log_text();
    assert!(
        log.contains("connection closed to make room for a new one"),
        "{log}"
    );
}
