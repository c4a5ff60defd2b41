//! Serial key readers end to end: the real daemon reads a real pseudo-terminal, logs the key in,
//! survives the other end closing, and re-opens the port when it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use tillgate_client::TillClient;
use tillgate_client::proto as pb;
use tillgate_tests::*;

async fn wait_attached(client: &mut TillClient, path: &Path, attached: bool) -> pb::InputDevice {
    wait_device(client, path, attached).await;
    let devices = client.list_devices().await.unwrap();
    devices
        .into_iter()
        .find(|d| Path::new(&d.path) == path)
        .unwrap()
}

async fn next(watch: &mut tonic::Streaming<pb::SessionEvent>) -> pb::SessionEvent {
    next_event(watch, Duration::from_secs(20)).await
}

#[tokio::test]
async fn serial_reader_logs_in_and_reopens_after_the_other_end_comes_back() {
    let temp = tempfile::tempdir().unwrap();
    let link = temp.path().join("reader");
    let mut pty = Pty::open(&link);
    let daemon = Daemon::start_with(
        "",
        &format!(
            "[[input.serial]]\nname = \"door reader\"\npath = \"{}\"\nbaud = 9600\nprofile = \"generic-wedge\"\n",
            link.display()
        ),
    );
    daemon
        .push_snapshot(snapshot(
            1,
            1,
            vec![role("cashier", &["sale.create"], &[])],
            vec![
                user_with_keys("kim", 1, None, &["04A1B2C3D4"]),
                user_with_keys("lou", 2, None, &["04FFEEDDCC"]),
            ],
        ))
        .await;
    let mut client = daemon.client().await;
    let device = wait_attached(&mut client, &link, true).await;
    assert_eq!(
        (device.kind.as_str(), device.role.as_str()),
        ("serial", "key_reader")
    );

    let mut watch = client.watch().await.unwrap();
    assert_eq!(
        next(&mut watch).await.kind,
        pb::SessionEventKind::Current as i32
    );
    pty.write(b"04A1B2C3D4\r\n");
    let login = next(&mut watch).await;
    assert_eq!(login.kind, pb::SessionEventKind::Login as i32);
    let session = login.session.unwrap();
    assert_eq!(session.user.unwrap().id, "kim");
    assert_eq!(session.method, pb::LoginMethod::Key as i32);
    assert!(session.source.contains("door reader"), "{}", session.source);

    // The other end goes away: the daemon notices and keeps trying; the reader stays listed
    // as detached, with when it was last seen.
    drop(pty);
    let gone = wait_attached(&mut client, &link, false).await;
    let last_seen =
        std::time::SystemTime::try_from(gone.last_seen.expect("last_seen is set")).unwrap();
    assert!(last_seen.elapsed().unwrap() < Duration::from_secs(60));
    assert!(!gone.error.is_empty(), "{gone:?}");
    // It comes back (a new pseudo-terminal behind the same path): the daemon re-opens it.
    let mut pty = Pty::open(&link);
    wait_attached(&mut client, &link, true).await;
    pty.write(b"04FFEEDDCC\n");
    let switch = next(&mut watch).await;
    assert_eq!(switch.session.unwrap().user.unwrap().id, "lou");

    let log = daemon.log_text();
    assert!(
        log.contains("serial reader attached") && log.contains("serial reader detached"),
        "{log}"
    );
    assert!(
        !log.contains("04A1B2C3D4") && !log.contains("04FFEEDDCC"),
        "key ids never reach the log"
    );
}

#[tokio::test]
async fn addimat_over_serial_removal_ends_the_session_and_bad_crc_is_not_a_login() {
    let temp = tempfile::tempdir().unwrap();
    let link = temp.path().join("lock");
    let mut pty = Pty::open(&link);
    let daemon = Daemon::start_with(
        "",
        &format!(
            "[[input.serial]]\npath = \"{}\"\nframing = \"stx_etx\"\nprofile = \"addimat\"\n",
            link.display()
        ),
    );
    // The Addimat prints CRC first, family last; the canonical id is the 1-Wire read order.
    daemon
        .push_snapshot(snapshot(
            1,
            1,
            vec![role("cashier", &[], &[])],
            vec![
                user_with_keys("waiter", 1, None, &["017A6945260000AC"]),
                user("pinny", 2, Some("1111")),
            ],
        ))
        .await;
    let mut client = daemon.client().await;
    wait_attached(&mut client, &link, true).await;
    let mut activity = client.watch_input().await.unwrap();
    let mut watch = client.watch().await.unwrap();
    next(&mut watch).await;

    // A damaged read (bad CRC) is reported as such and is not a login attempt.
    pty.write(b"\x029B00002645697A01\x03");
    let bad = tokio::time::timeout(Duration::from_secs(20), activity.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bad.kind, pb::InputActivityKind::BadRead as i32);
    assert_eq!(bad.masked, "**** (16)");
    assert!(client.session().await.unwrap().is_none());

    pty.write(b"\x02AC00002645697A01\x03");
    let login = next(&mut watch).await;
    assert_eq!(login.session.unwrap().user.unwrap().id, "waiter");

    // Pulling the key ends the session it opened.
    pty.write(b"\x02OUT\x03");
    let logout = next(&mut watch).await;
    assert_eq!(logout.kind, pb::SessionEventKind::Logout as i32);
    assert_eq!(logout.reason, "key removed");
    assert_eq!(logout.previous.unwrap().user.unwrap().id, "waiter");

    // A removal never ends a session the key did not open. Barrier: the key again, read after
    // the OUT on the same port, logs the waiter in over pinny; had the OUT ended pinny's session,
    // its LOGOUT would come first.
    client.login_with_pin("1111").await.unwrap();
    next(&mut watch).await;
    pty.write(b"\x02OUT\x03");
    pty.write(b"\x02AC00002645697A01\x03");
    let login = next(&mut watch).await;
    assert_eq!(login.kind, pb::SessionEventKind::Login as i32);
    assert_eq!(login.previous.unwrap().user.unwrap().id, "pinny");
    assert_eq!(login.session.unwrap().user.unwrap().id, "waiter");
    assert!(!daemon.log_text().contains("AC00002645697A01"));
}

#[tokio::test]
async fn a_reader_added_to_the_config_is_read_after_sighup() {
    let temp = tempfile::tempdir().unwrap();
    let link = temp.path().join("late-reader");
    let mut pty = Pty::open(&link);
    let daemon = Daemon::start();
    daemon
        .push_snapshot(snapshot(
            1,
            1,
            vec![role("cashier", &[], &[])],
            vec![user_with_keys("kim", 1, None, &["04A1B2C3D4"])],
        ))
        .await;
    let mut client = daemon.client().await;
    assert!(client.list_devices().await.unwrap().is_empty());

    let config = daemon.dir.join("tillgated.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[input.serial]]\npath = \"{}\"\n",
        link.display()
    ));
    std::fs::write(&config, text).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_attached(&mut client, &link, true).await;

    let mut watch = client.watch().await.unwrap();
    next(&mut watch).await;
    pty.write(b"04A1B2C3D4\r");
    assert_eq!(
        next(&mut watch).await.session.unwrap().user.unwrap().id,
        "kim"
    );
    assert!(daemon.log_text().contains("input rules reloaded"));
}
