//! Restarts, corrupt databases, watchers, listeners, socket access, TLS, tillctl and the demo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use tillgate_client::proto as pb;
use tillgate_client::{SyncTls, TillClient, TillSyncClient};
use tillgate_tests::*;
use tonic::Code;

fn small_snapshot() -> tillgate_client::export::Snapshot {
    snapshot(
        3,
        5,
        vec![role("cashier", &["sale.create"], &[])],
        vec![user("amy", 1, Some("1111")), user("bob", 2, Some("2222"))],
    )
}

#[tokio::test]
async fn restart_keeps_the_replica_and_sigterm_exits_zero() {
    let mut daemon = Daemon::start();
    daemon.push_snapshot(small_snapshot()).await;
    let status = daemon.stop().await;
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(!daemon.socket.exists(), "socket removed at shutdown");

    let restarted = Daemon::spawn(&daemon.dir);
    let status = restarted.client().await.status().await.unwrap();
    assert_eq!(
        status.cursor.unwrap(),
        pb::Cursor {
            epoch: 3,
            revision: 5
        }
    );
    assert_eq!((status.users, status.replica_status.as_str()), (2, "ok"));
    let session = restarted
        .client()
        .await
        .login_with_pin("2222")
        .await
        .unwrap();
    assert_eq!(session.user.unwrap().id, "bob");
    // The sync token survived too (only its hash is stored).
    let names: Vec<_> = restarted
        .client()
        .await
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["central"]);
}

#[tokio::test]
async fn corrupt_database_is_quarantined_and_the_daemon_starts_empty() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    std::fs::write(dir.join("tillgated.toml"), config_text(dir, "", "")).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(
        dir.join("state/replica.db"),
        b"this is not an SQLite database, just garbage bytes".repeat(200),
    )
    .unwrap();

    let daemon = Daemon::spawn(dir);
    let moved: Vec<_> = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("replica.db.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    let mut client = daemon.client().await;
    assert_eq!(
        client.status().await.unwrap().replica_status,
        "needs snapshot"
    );
    let (c, message) = code(client.login_with_pin("1111").await);
    assert_eq!((c, message.as_str()), (Code::Unavailable, "no replica yet"));
    assert!(daemon.log_text().contains("replica database was unusable"));
    // It recovers with a snapshot.
    daemon.push_snapshot(small_snapshot()).await;
    assert_eq!(pin_user(&mut client, "1111").await, "amy");
}

#[tokio::test]
async fn replica_copied_without_its_key_is_not_trusted() {
    let mut daemon = Daemon::start();
    daemon.push_snapshot(small_snapshot()).await;
    daemon.stop().await;
    std::fs::remove_file(daemon.state_dir().join("terminal.key")).unwrap();
    let restarted = Daemon::spawn(&daemon.dir);
    let status = restarted.client().await.status().await.unwrap();
    assert_eq!(status.replica_status, "needs snapshot");
}

#[tokio::test]
async fn watchers_see_login_switch_and_logout_in_order() {
    let daemon = Daemon::start();
    daemon.push_snapshot(small_snapshot()).await;
    let mut client = daemon.client().await;
    client.login_with_pin("1111").await.unwrap();

    let mut watch = daemon.client().await.watch().await.unwrap();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.kind, pb::SessionEventKind::Current as i32);
    assert_eq!(first.session.unwrap().user.unwrap().id, "amy");

    client.login_with_pin("2222").await.unwrap();
    assert_eq!(
        code(client.login_with_pin("0000").await).0,
        Code::Unauthenticated
    );
    client.logout().await.unwrap();
    client.logout().await.unwrap();

    let switch = watch.message().await.unwrap().unwrap();
    assert_eq!(switch.kind, pb::SessionEventKind::Login as i32);
    assert_eq!(switch.sequence, first.sequence + 1);
    assert_eq!(switch.session.unwrap().user.unwrap().id, "bob");
    assert_eq!(switch.previous.unwrap().user.unwrap().id, "amy");
    assert_eq!(switch.reason, "user switched");
    let logout = watch.message().await.unwrap().unwrap();
    assert_eq!(logout.kind, pb::SessionEventKind::Logout as i32);
    assert_eq!(logout.sequence, first.sequence + 2);
    assert!(logout.session.is_none());
    assert_eq!(logout.previous.unwrap().user.unwrap().id, "bob");
    // Nothing else: the failed login and the second (empty) logout are not session changes.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.message())
            .await
            .is_err()
    );
    assert!(client.session().await.unwrap().is_none());
}

#[tokio::test]
async fn health_and_reflection_on_both_listeners() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Request;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Response;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;

    let daemon = Daemon::start();
    let unix = tillgate_client::connect_unix(&daemon.socket).await.unwrap();
    let tcp = tonic::transport::Endpoint::from_shared(daemon.sync_addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Each listener's reflection lists what that listener serves, no more: health, reflection
    // and its own tillgate services. Neither needs a token on the sync port (this channel sends
    // none).
    let login_socket = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "tillgate.v1.Admin",
        "tillgate.v1.Devices",
        "tillgate.v1.Login",
    ];
    let sync_port = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "tillgate.v1.Sync",
    ];
    for (channel, service, listed) in [
        (unix.clone(), "tillgate.v1.Login", &login_socket[..]),
        (tcp.clone(), "tillgate.v1.Sync", &sync_port[..]),
    ] {
        let response = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status, ServingStatus::Serving as i32, "{service}");

        let request = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(V1Request::ListServices(String::new())),
        };
        let mut stream = V1::new(channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(V1Response::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("v1 reflection: no service list");
        };
        let mut names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        assert_eq!(names, listed, "v1 reflection on the {service} listener");

        let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        };
        let mut stream = V1Alpha::new(channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(AlphaResponse::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("v1alpha reflection: no service list");
        };
        let mut names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        let alpha: Vec<_> = listed
            .iter()
            .map(|name| name.replace(".v1.ServerReflection", ".v1alpha.ServerReflection"))
            .collect();
        assert_eq!(names, alpha, "v1alpha reflection on the {service} listener");
    }
}

#[tokio::test]
async fn socket_mode_and_peer_allow_list() {
    let daemon = Daemon::start();
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);

    let uid = nix::unistd::geteuid().as_raw();
    let refused = Daemon::start_with(
        "",
        &format!("[login_socket]\nallow_uids = [{}]\n", uid + 4242),
    );
    let result = async {
        let mut client = TillClient::connect(&refused.socket).await?;
        client.status().await
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), result)
        .await
        .expect("refusal is prompt");
    assert!(
        outcome.is_err(),
        "a peer outside the allow-list must not be served"
    );
    assert!(
        refused.log_text().contains("login socket peer refused"),
        "{}",
        refused.log_text()
    );

    let allowed = Daemon::start_with("", &format!("[login_socket]\nallow_uids = [{uid}]\n"));
    assert!(allowed.client().await.status().await.is_ok());
}

#[tokio::test]
async fn admin_calls_need_an_admin_uid() {
    if !root_or_skip("run tillctl as another uid") {
        return;
    }
    let daemon = Daemon::start_with("", "[login_socket]\nmode = \"0666\"\n");
    let run_as_nobody = |args: &[&str]| tillctl_as_nobody(&daemon, args);
    let output = run_as_nobody(&["token", "create", "sneaky"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    // The same peer may use the Login API.
    let output = run_as_nobody(&["status"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(daemon.log_text().contains("admin call refused"));
}

#[tokio::test]
async fn sync_over_mutual_tls() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    };
    let (server_cert, server_key) = leaf("localhost");
    let (client_cert, client_key) = leaf("central");
    for (name, bytes) in [
        ("ca.pem", ca_cert.pem().into_bytes()),
        ("server.pem", server_cert),
        ("server.key", server_key),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let tls = format!(
        "[sync.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        dir.join("server.pem").display(),
        dir.join("server.key").display(),
        dir.join("ca.pem").display()
    );
    std::fs::write(
        dir.join("tillgated.toml"),
        config_text(dir, "", "").replace("[log]", &format!("{tls}\n[log]")),
    )
    .unwrap();
    let daemon = Daemon::spawn(dir);
    assert!(daemon.client().await.status().await.unwrap().sync_tls);
    let token = daemon
        .client()
        .await
        .create_token("central")
        .await
        .unwrap()
        .token;
    let addr = daemon.sync_addr.replace("http://", "https://");
    let tls_settings = |identity| SyncTls {
        ca_pem: Some(ca_cert.pem().into_bytes()),
        domain: Some("localhost".into()),
        identity,
    };
    let mut sync = TillSyncClient::connect(
        &addr,
        Some(&token),
        Some(tls_settings(Some((client_cert, client_key)))),
    )
    .await
    .unwrap();
    sync.apply_snapshot(small_snapshot()).await.unwrap();
    assert_eq!(sync.state().await.unwrap().users, 2);

    // Without a client certificate the handshake or the first call fails.
    let without = async {
        let mut sync =
            TillSyncClient::connect(&addr, Some(&token), Some(tls_settings(None))).await?;
        sync.state().await
    };
    assert!(without.await.is_err());
    // Plain text is not served on a TLS listener.
    let plain = async { daemon.sync(Some(&token)).await.state().await };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), plain)
            .await
            .map(|r| r.is_err())
            .unwrap_or(true)
    );
}

#[tokio::test]
async fn tillctl_push_login_and_secrets_stay_out_of_logs_and_disk() {
    let daemon = Daemon::start();
    let export = daemon.dir.join("export.json");
    std::fs::write(
        &export,
        serde_json::json!({
            "account": account(),
            "cursor": { "epoch": 1, "revision": 1 },
            "roles": [role("cashier", &["sale.create"], &["drawer.open"])],
            "users": [{ "id": "amy", "ordinal": 1, "first_name": "Amy", "pin": "582046193", "keys": ["K-77EE3129"],
                        "sales_points": [SALES_POINT], "roles": [{ "role": "cashier" }] }]
        })
        .to_string(),
    )
    .unwrap();
    let (ok, token, err) = run_tillctl(&daemon, &["token", "create", "central"], "", &[]);
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    let (ok, _, err) = run_tillctl(
        &daemon,
        &["push", "snapshot", export.to_str().unwrap()],
        "",
        &[],
    );
    assert!(!ok && err.contains("UNAUTHENTICATED"), "{err}");
    let (ok, out, err) = run_tillctl(
        &daemon,
        &["push", "snapshot", export.to_str().unwrap()],
        "",
        &[("TILLGATE_TOKEN", &token)],
    );
    assert!(ok, "{err}");
    assert!(out.contains("applied at 1:1 (1 users, 1 roles)"), "{out}");

    let (ok, out, err) = run_tillctl(&daemon, &["login", "--pin"], "582046193\n", &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("amy (Amy Test)") || out.contains("amy (Amy"),
        "{out}"
    );
    let (ok, out, _) = run_tillctl(&daemon, &["can", "drawer.open"], "", &[]);
    assert!(!ok && out.contains("denied"), "{out}");
    let (ok, out, _) = run_tillctl(&daemon, &["can", "sale.create"], "", &[]);
    assert!(ok && out.contains("granted"), "{out}");
    let (ok, out, err) = run_tillctl(&daemon, &["login", "--key"], "K-77EE3129\n", &[]);
    assert!(ok && out.contains("method:      key"), "{out}{err}");
    let (ok, _, err) = run_tillctl(&daemon, &["login", "--pin"], "0000\n", &[]);
    assert!(!ok && err.contains("UNAUTHENTICATED"), "{err}");
    let (ok, out, _) = run_tillctl(&daemon, &["status"], "", &[]);
    assert!(ok && out.contains("1:1 (ok)"), "{out}");
    let (ok, out, err) = run_tillctl(&daemon, &["sync-state"], "", &[("TILLGATE_TOKEN", &token)]);
    assert!(ok && out.contains("1 at this terminal"), "{out}{err}");
    let (ok, out, _) = run_tillctl(&daemon, &["hash", "--account", "acme"], "582046193\n", &[]);
    assert!(ok && out.starts_with("$argon2id$v=19$"), "{out}");

    // No PIN, key id or token in the debug-level log or in any file of the state directory.
    let log = daemon.log_text();
    assert!(
        log.contains("login accepted"),
        "the log is at debug level and saw the logins"
    );
    for secret in ["582046193", "K-77EE3129", token.as_str()] {
        assert!(!log.contains(secret), "{secret:?} leaked into the log");
        for entry in std::fs::read_dir(daemon.state_dir()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} on disk"
            );
        }
    }
}

#[tokio::test]
async fn demo_mode_serves_the_built_in_account() {
    let temp = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin("tillgated"))
        .args(["--demo", "--demo-sync-listen", "127.0.0.1:0", "--demo-dir"])
        .arg(temp.path().join("demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = temp.path().join("demo/run/login.sock");
    let mut ready = false;
    for _ in 0..300 {
        if socket.exists()
            && let Ok(mut client) = TillClient::connect(&socket).await
            && client.status().await.is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "demo daemon did not come up");
    let mut client = TillClient::connect(&socket).await.unwrap();
    assert_eq!(pin_user(&mut client, "1234").await, "u-anna");
    let carla = client.login_with_pin("2468").await.unwrap();
    assert!(!carla.permissions.contains(&"drawer.open".to_owned()));
    assert_eq!(code(client.login_with_pin("1357").await).1, "user inactive");
    assert_eq!(
        code(client.login_with_pin("8642").await).1,
        "no access to this Sales Point"
    );
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let guide = String::from_utf8_lossy(&output.stdout);
    assert!(
        guide.contains("login socket:") && guide.contains("2468"),
        "{guide}"
    );
}

/// Logins before the first snapshot are refused without a row each (a flood cannot fill the
/// disk); their count is one summary row, written at the latest when the daemon stops.
#[tokio::test]
async fn refusals_without_a_replica_are_one_summary_row_written_at_shutdown() {
    let mut daemon = Daemon::start();
    let mut client = daemon.client().await;
    for _ in 0..30 {
        let (c, _) = code(client.login_with_pin("1111").await);
        assert_eq!(c, Code::Unavailable);
    }
    // Each refusal was answered after its (absent) write: nothing is written yet.
    let events = client.audit_tail(1000).await.unwrap().events;
    assert!(events.is_empty(), "{events:?}");
    drop(client);
    assert!(daemon.stop().await.success());

    let restarted = Daemon::spawn(&daemon.dir);
    let events = restarted
        .client()
        .await
        .audit_tail(1000)
        .await
        .unwrap()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].outcome, "coalesced");
    assert!(
        events[0].reason.ends_with(": refused.no_replica=30"),
        "{}",
        events[0].reason
    );
}
