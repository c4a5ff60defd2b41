//! systemd integration, end to end: the shipped units checked by systemd-analyze, the real
//! `tillgated` under `systemd-socket-activate` with a stand-in NOTIFY_SOCKET (readiness, status,
//! watchdog, the activated socket, SIGTERM, SIGHUP reloads), journald detection, and a debug-level
//! run whose whole log is searched for the secrets it used.
//!
//! Tests that need systemd's tools fail under CI=true when the tools are missing (.ci/run
//! installs Debian's systemd package) and are skipped with a note elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tillgate_tests::*;
use tonic::Code;

/// Where the Debian package puts the daemon; ExecStart= names it.
const INSTALLED_BINARY: &str = "/usr/bin/tillgated";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The shipped units, copied to `dir` with ExecStart='s installed path pointed at the built
/// binary: `verify` checks that the command exists, and nothing is installed here. No other
/// byte changes. `extra` is added to the service's [Service] section.
fn units_in(dir: &Path, extra: &str) -> Vec<PathBuf> {
    let built = bin("tillgated");
    ["tillgated.service", "tillgated.socket"]
        .iter()
        .map(|name| {
            let mut text = std::fs::read_to_string(repo_file(&format!("systemd/{name}"))).unwrap();
            if *name == "tillgated.service" {
                assert!(
                    text.contains(&format!("ExecStart={INSTALLED_BINARY} ")),
                    "ExecStart runs {INSTALLED_BINARY}"
                );
                text = text.replace(INSTALLED_BINARY, built.to_str().unwrap());
                text = text.replace("[Service]\n", &format!("[Service]\n{extra}"));
            }
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_tool("systemd-analyze") else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let units = units_in(temp.path(), "");
    let (ok, output) = run(Command::new(&analyze)
        .args(["verify", "--man=no"])
        .args(&units));
    assert!(
        ok && output.trim().is_empty(),
        "systemd-analyze verify must print nothing:\n{output}"
    );

    // The check can fail: an unknown key only warns (exit 0), and is caught by the output.
    let broken = tempfile::tempdir().unwrap();
    let units = units_in(broken.path(), "ProtectEverything=yes\n");
    let (_, output) = run(Command::new(&analyze)
        .args(["verify", "--man=no"])
        .args(&units));
    assert!(output.contains("ProtectEverything"), "{output}");
}

/// "→ Overall exposure level for tillgated.service: 1.6 OK 🙂" → 1.6
fn exposure(output: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{output}"));
    let value = line.rsplit(':').next().unwrap().split_whitespace().next();
    value.unwrap().parse().unwrap()
}

#[test]
fn service_exposure_is_2_0_or_better() {
    let Some(analyze) = systemd_tool("systemd-analyze") else {
        return;
    };
    let (ok, output) = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager", "--threshold=20"])
        .arg(repo_file("systemd/tillgated.service")));
    let score = exposure(&output);
    eprintln!("tillgated.service exposure: {score}");
    assert!(
        ok && score <= 2.0,
        "exposure {score} (2.0 at most):\n{output}"
    );

    // Control: without its hardening the same service scores far worse and fails the threshold.
    let temp = tempfile::tempdir().unwrap();
    let plain = temp.path().join("plain.service");
    std::fs::write(
        &plain,
        format!("[Service]\nType=notify\nExecStart={INSTALLED_BINARY}\n"),
    )
    .unwrap();
    let (ok, output) = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager", "--threshold=20"])
        .arg(&plain));
    assert!(!ok && exposure(&output) > 5.0, "{output}");
}

/// `Key=value` lines of a unit or config-like file.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn units_tmpfiles_and_example_config_agree_on_paths() {
    let service = std::fs::read_to_string(repo_file("systemd/tillgated.service")).unwrap();
    let socket = std::fs::read_to_string(repo_file("systemd/tillgated.socket")).unwrap();
    let tmpfiles = std::fs::read_to_string(repo_file("systemd/tillgate.tmpfiles")).unwrap();
    let example = std::fs::read_to_string(repo_file("systemd/tillgated.toml"))
        .unwrap()
        .replace("sales_point_id = \"\"", "sales_point_id = \"main-street\"");
    let settings = tillgate_daemon::config::Config::parse(&example)
        .unwrap()
        .validate()
        .unwrap();

    assert_eq!(
        values(&service, "ExecStart"),
        vec![format!(
            "{INSTALLED_BINARY} --config /etc/tillgate/tillgated.toml"
        )]
    );
    assert_eq!(values(&service, "ConfigurationDirectory"), vec!["tillgate"]);
    assert_eq!(values(&service, "StateDirectory"), vec!["tillgate"]);
    assert_eq!(values(&service, "RuntimeDirectory"), vec!["tillgate"]);
    assert_eq!(settings.state_dir, Path::new("/var/lib/tillgate"));
    assert_eq!(settings.runtime_dir, Path::new("/run/tillgate"));
    assert_eq!(
        values(&socket, "ListenStream"),
        vec![settings.socket_path.display().to_string()]
    );
    assert_eq!(values(&socket, "SocketMode"), vec!["0660"]);
    assert_eq!(settings.socket_mode, 0o660);
    for dir in ["/var/lib/tillgate", "/run/tillgate", "/etc/tillgate"] {
        assert!(
            tmpfiles
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(dir)),
            "tmpfiles.d creates {dir}"
        );
    }
    // The runtime directory outlives a service restart: the socket unit's login.sock is in it.
    assert_eq!(values(&service, "RuntimeDirectoryPreserve"), vec!["yes"]);
}

#[test]
fn sysusers_and_tmpfiles_apply_to_a_scratch_root() {
    let (Some(sysusers), Some(tmpfiles)) = (
        systemd_tool("systemd-sysusers"),
        systemd_tool("systemd-tmpfiles"),
    ) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let (ok, output) = run(Command::new(sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg(
            repo_file("systemd/tillgate.sysusers")
                .canonicalize()
                .unwrap(),
        ));
    assert!(ok, "{output}");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("tillgate:"))
        .unwrap_or_else(|| panic!("no tillgate user:\n{passwd}"))
        .split(':')
        .collect();
    assert_eq!(user[5], "/var/lib/tillgate");
    let uid: u32 = user[2].parse().unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let service = std::fs::read_to_string(repo_file("systemd/tillgated.service")).unwrap();
    let socket = std::fs::read_to_string(repo_file("systemd/tillgated.socket")).unwrap();
    let socket_group = values(&socket, "SocketGroup");
    for name in ["input", "dialout", socket_group[0].as_str()] {
        let line = group
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no group {name}:\n{group}"));
        assert!(
            line.rsplit(':')
                .next()
                .unwrap()
                .split(',')
                .any(|m| m == "tillgate"),
            "tillgate is in {name}: {line}"
        );
    }
    assert_eq!(values(&service, "User"), vec!["tillgate"]);

    let (ok, output) = run(Command::new(tmpfiles)
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(
            repo_file("systemd/tillgate.tmpfiles")
                .canonicalize()
                .unwrap(),
        ));
    assert!(ok, "{output}");
    for (dir, mode, owner) in [
        ("var/lib/tillgate", 0o700, uid),
        ("run/tillgate", 0o755, uid),
        ("etc/tillgate", 0o755, 0),
    ] {
        let meta = std::fs::metadata(root.path().join(dir)).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.uid()),
            (mode, owner),
            "{dir}"
        );
    }
}

/// A test daemon's config at `level`, with its login socket at `<dir>/run/login.sock`.
fn write_config(dir: &Path, level: &str, extra: &str) {
    let text = config_text(dir, "", extra).replace(
        "[log]\nlevel = \"debug\"",
        &format!("[log]\nlevel = \"{level}\""),
    );
    assert!(text.contains(&format!("level = \"{level}\"")));
    std::fs::write(dir.join("tillgated.toml"), text).unwrap();
}

/// `tillgated` under `systemd-socket-activate` on `<dir>/run/login.sock`, with NOTIFY_SOCKET
/// and WATCHDOG_USEC. It starts at the first connection.
fn launch_activated(
    activate: &Path,
    dir: &Path,
    notify: &NotifySocket,
    watchdog: Duration,
) -> Daemon {
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let socket = dir.join("run/login.sock");
    Daemon::launch(dir, |_| {
        let mut command = Command::new(activate);
        command
            .arg("--listen")
            .arg(&socket)
            .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.path.display()))
            .arg(format!("--setenv=WATCHDOG_USEC={}", watchdog.as_micros()))
            .arg(bin("tillgated"))
            .arg("--config")
            .arg(dir.join("tillgated.toml"))
            .env_remove("RUST_LOG");
        command
    })
}

fn two_users() -> tillgate_client::export::Snapshot {
    snapshot(
        1,
        1,
        vec![role("cashier", &["sale.create"], &[])],
        vec![
            user("amy", 1, Some("482913")),
            user("bob", 2, Some("739105")),
        ],
    )
}

fn status_lines(notify: &NotifySocket) -> Vec<String> {
    notify
        .messages()
        .iter()
        .flat_map(|m| m.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.starts_with("STATUS="))
        .collect()
}

#[tokio::test]
async fn socket_activation_readiness_status_watchdog_and_sigterm() {
    let Some(activate) = systemd_tool("systemd-socket-activate") else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    write_config(dir, "info", "");
    let notify = NotifySocket::bind(&dir.join("notify.sock"));
    let mut daemon = launch_activated(&activate, dir, &notify, Duration::from_millis(400));

    // systemd-socket-activate owns the socket file; tillgated starts at the first connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no socket from systemd-socket-activate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inode = std::fs::metadata(&daemon.socket).unwrap().ino();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(notify.messages().is_empty(), "{:?}", notify.messages());

    daemon.wait_serving().await;
    notify
        .wait_until("READY=1", |m| m.iter().any(|m| m.contains("READY=1")))
        .await;
    let first = notify.messages();
    let ready = first.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        ready.contains("STATUS=cursor 0:0 (needs snapshot), 0 users"),
        "{ready:?}"
    );
    let log = daemon.log_text();
    assert!(log.contains("activated=true"), "{log}");

    // The activated socket is served: the token, a snapshot, a real login.
    let mut client = daemon.client().await;
    let status = client.status().await.unwrap();
    assert_eq!(Path::new(&status.login_socket), daemon.socket);
    daemon.push_snapshot(two_users()).await;
    notify
        .wait_until("a STATUS after the snapshot", |_| {
            status_lines(&notify)
                .iter()
                .any(|l| l.starts_with("STATUS=cursor 1:1 (ok), 2 users, 2 at this terminal"))
        })
        .await;
    let session = client.login_with_pin("739105").await.unwrap();
    assert_eq!(session.user.unwrap().id, "bob");

    // Watchdog pings every 200 ms (half of WATCHDOG_USEC).
    let before = notify.count("WATCHDOG=1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pings = notify.count("WATCHDOG=1") - before;
    assert!((3..=8).contains(&pings), "{pings} pings in 1.1 s");

    let status = daemon.stop().await;
    assert!(
        status.success(),
        "SIGTERM exit: {status}\n{}",
        daemon.log_text()
    );
    assert!(notify.count("STOPPING=1") == 1, "{:?}", notify.messages());
    // The socket file is systemd's: still there, the very same one.
    assert_eq!(std::fs::metadata(&daemon.socket).unwrap().ino(), inode);
    assert!(!dir.join("run/sync.addr").exists());
    assert!(daemon.log_text().contains("stopped"));
}

/// Sends SIGHUP and waits for the reload to finish (RELOADING=1, then READY=1 again).
async fn reload(daemon: &Daemon, notify: &NotifySocket) {
    let readies = notify.count("READY=1");
    let reloads = notify.count("RELOADING=1");
    daemon.signal(Signal::SIGHUP);
    notify
        .wait_until("RELOADING=1 and READY=1 after SIGHUP", |_| {
            notify.count("RELOADING=1") == reloads + 1 && notify.count("READY=1") == readies + 1
        })
        .await;
}

/// Adds or removes a sync token behind the daemon's back, as a provisioning tool writing the
/// local store would: only SIGHUP makes the running daemon see it.
fn edit_tokens(dir: &Path, sql: &str, params: &[&dyn rusqlite::ToSql]) {
    let conn = rusqlite::Connection::open(dir.join("state/local.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(sql, params).unwrap();
}

const PROVISIONED_TOKEN: &str = "tgs_provisioned-by-central-7f3a9c1e";

#[tokio::test]
async fn sighup_reloads_tokens_and_log_level_and_keeps_the_session() {
    let Some(activate) = systemd_tool("systemd-socket-activate") else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    write_config(dir, "info", "");
    let notify = NotifySocket::bind(&dir.join("notify.sock"));
    let mut daemon = launch_activated(&activate, dir, &notify, Duration::from_secs(10));
    daemon.wait_serving().await;
    let central = daemon
        .client()
        .await
        .create_token("central")
        .await
        .unwrap()
        .token;
    daemon
        .sync(Some(&central))
        .await
        .apply_snapshot(two_users())
        .await
        .unwrap();
    let mut client = daemon.client().await;
    let session = client.login_with_pin("482913").await.unwrap();
    let connected = "login socket peer connected"; // a debug line
    assert!(!daemon.log_text().contains(connected));

    use sha2::Digest;
    let digest = sha2::Sha256::digest(PROVISIONED_TOKEN.as_bytes()).to_vec();
    edit_tokens(
        dir,
        "INSERT INTO sync_tokens (name, digest, created_at) VALUES ('provisioned', ?1, 0)",
        &[&digest],
    );
    edit_tokens(dir, "DELETE FROM sync_tokens WHERE name = 'central'", &[]);
    // Not seen yet: the daemon serves its loaded tokens until told to reload.
    assert_eq!(
        code(daemon.sync(Some(PROVISIONED_TOKEN)).await.state().await).0,
        Code::Unauthenticated
    );
    assert!(daemon.sync(Some(&central)).await.state().await.is_ok());

    // New level, and a key that needs a restart.
    let sync_listen = client.status().await.unwrap().sync_listen;
    write_config(dir, "debug", "");
    let text = std::fs::read_to_string(dir.join("tillgated.toml")).unwrap();
    std::fs::write(
        dir.join("tillgated.toml"),
        text.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\""),
    )
    .unwrap();
    reload(&daemon, &notify).await;

    assert!(
        daemon
            .sync(Some(PROVISIONED_TOKEN))
            .await
            .state()
            .await
            .is_ok()
    );
    assert_eq!(
        code(daemon.sync(Some(&central)).await.state().await).0,
        Code::Unauthenticated
    );
    let mut fresh = daemon.client().await;
    assert_eq!(fresh.status().await.unwrap().sync_listen, sync_listen);
    let log = daemon.log_text();
    assert!(log.contains("log level changed"), "{log}");
    assert!(
        log.contains(connected),
        "debug lines after the reload:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("next restart") && l.contains("sync.listen")),
        "{log}"
    );
    assert!(
        log.contains("sync tokens reloaded from the local store tokens=1"),
        "{log}"
    );

    // The session survived, untouched.
    let current = fresh.session().await.unwrap().unwrap();
    assert_eq!(current.session_id, session.session_id);
    assert_eq!(current.user.unwrap().id, "amy");

    let status = daemon.stop().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sighup_with_a_broken_config_is_refused_and_serving_goes_on() {
    let Some(activate) = systemd_tool("systemd-socket-activate") else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    write_config(dir, "debug", "");
    let good = std::fs::read_to_string(dir.join("tillgated.toml")).unwrap();
    let notify = NotifySocket::bind(&dir.join("notify.sock"));
    let mut daemon = launch_activated(&activate, dir, &notify, Duration::from_secs(10));
    daemon.wait_serving().await;
    daemon.push_snapshot(two_users()).await;
    let mut client = daemon.client().await;
    let session = client.login_with_pin("739105").await.unwrap();

    for (broken, complaint) in [
        (
            good.replace(
                "[log]\nlevel = \"debug\"",
                "[log]\nlevel = \"info\"\nformat = \"xml\"",
            ),
            "unknown variant `xml`",
        ),
        (
            good.replace("listen = \"127.0.0.1:0\"", "listen = \"nowhere\""),
            "config key sync.listen",
        ),
        (good.replace("[terminal]", "[terminal"), "tillgated.toml"),
    ] {
        std::fs::write(dir.join("tillgated.toml"), &broken).unwrap();
        let connected = daemon
            .log_text()
            .matches("login socket peer connected")
            .count();
        reload(&daemon, &notify).await;
        let log = daemon.log_text();
        let refusal = log
            .lines()
            .rfind(|l| l.contains("config reload refused"))
            .unwrap_or_else(|| panic!("no refusal in the log:\n{log}"));
        assert!(refusal.contains(complaint), "{refusal}");

        // Still serving, same session, and still at debug level (the old config holds).
        let mut fresh = daemon.client().await;
        let current = fresh.session().await.unwrap().unwrap();
        assert_eq!(current.session_id, session.session_id);
        assert!(fresh.status().await.is_ok());
        assert!(
            daemon
                .log_text()
                .matches("login socket peer connected")
                .count()
                > connected,
            "debug level kept"
        );
    }
    let status = daemon.stop().await;
    assert!(status.success(), "{status}");
}

/// Where journald runs (a booted host), JOURNAL_STREAM naming stderr sends the daemon's lines
/// to the journal, structured, and none to stderr; where it does not (a container, CI), the
/// daemon says so on stderr and logs there. Both paths are real, so neither is skipped.
#[tokio::test]
async fn journal_stream_on_stderr_goes_to_journald_or_falls_back_to_stderr() {
    if Path::new("/run/systemd/journal/socket").exists() {
        return logs_to_the_running_journald().await;
    }
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    write_config(dir, "info", "");
    let daemon = Daemon::spawn_with_command(dir, |log| {
        let meta = std::fs::metadata(log).unwrap();
        let mut command = tillgated_command(dir);
        command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        command
    });
    assert!(daemon.client().await.status().await.is_ok());
    let log = daemon.log_text();
    assert!(log.contains("journald cannot be reached"), "{log}");
    assert!(log.contains("listening"), "{log}");

    // JOURNAL_STREAM naming another file (inherited by a child whose stderr moved) is ignored.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    write_config(dir, "info", "");
    let elsewhere = std::fs::metadata(temp.path()).unwrap();
    let daemon = Daemon::spawn_with_command(dir, |_| {
        let mut command = tillgated_command(dir);
        command.env(
            "JOURNAL_STREAM",
            format!("{}:{}", elsewhere.dev(), elsewhere.ino()),
        );
        command
    });
    // Barrier: the daemon serves, so its start-up lines are all in the log.
    assert!(daemon.client().await.status().await.is_ok());
    let log = daemon.log_text();
    assert!(!log.contains("journald"), "{log}");
    assert!(log.contains("listening"), "{log}");
}

async fn logs_to_the_running_journald() {
    let Some(journalctl) = systemd_tool("journalctl") else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    write_config(dir, "info", "");
    let daemon = Daemon::spawn_with_command(dir, |log| {
        let meta = std::fs::metadata(log).unwrap();
        let mut command = tillgated_command(dir);
        command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        command
    });
    assert!(daemon.client().await.status().await.is_ok());
    let pid = daemon.pid().to_string();
    // The journal is written asynchronously: wait for the line (a positive barrier).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let entry = loop {
        let (_, out) = run(Command::new(&journalctl).args([
            "--no-pager",
            "-o",
            "json",
            &format!("_PID={pid}"),
        ]));
        if let Some(line) = out.lines().find(|l| l.contains("\"listening\"")) {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `listening` entry from pid {pid} in the journal: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry["F_ACTIVATED"], "false", "{entry}");
    assert!(
        entry["TARGET"].as_str().unwrap().starts_with("tillgate"),
        "{entry}"
    );
    let log = daemon.log_text();
    assert!(
        !log.contains("listening"),
        "logged to stderr as well: {log}"
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn secrets_never_reach_the_debug_log_the_notify_socket_or_the_disk() {
    use serde_json::json;
    // Long, distinctive values: a 4-digit PIN would also "match" timestamps, ports and pids.
    let (amy_pin, bob_pin, bob_new_pin) = ("583920174", "640918273", "302948571");
    let (carl_pin, dina_pin, wrong_pin) = ("771204938", "918273645", "119283746");
    let long_pin = "over-long-pin-5c8f2a9e1d7b3f6a0e4c8b2d9f1a";
    let (amy_key, bob_key, bob_new_key) = (
        "IBTN-01A7F3C9D2E4B8",
        "RFID-9F8E7D6C5B4A",
        "RFID-0C1D2E3F4A5B",
    );
    let unknown_key = "RFID-DEADBEEF0BAD";
    let wrong_token = "tgs_wrong-token-never-issued-4e6f8a0c2b";

    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    write_config(dir, "debug", "");
    let notify = NotifySocket::bind(&dir.join("notify.sock"));
    let notify_path = notify.path.clone();
    let mut daemon = Daemon::spawn_with_command(dir, |_| {
        let mut command = tillgated_command(dir);
        command
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "500000");
        command
    });
    let mut client = daemon.client().await;

    // Tokens: create two, use both, revoke one, present a revoked and a made-up one.
    let central = client.create_token("central").await.unwrap().token;
    let backup = client.create_token("backup").await.unwrap().token;
    let person = |id: &str, ordinal: i64, pin: &str, keys: &[&str], active: bool, sp: &str| {
        json!({ "id": id, "ordinal": ordinal, "first_name": id, "last_name": "Test", "pin": pin,
                "keys": keys, "active": active, "sales_points": [sp], "roles": [{ "role": "cashier" }] })
    };
    let users = vec![
        person("amy", 1, amy_pin, &[amy_key], true, SALES_POINT),
        person("bob", 2, bob_pin, &[bob_key], true, SALES_POINT),
        person("carl", 3, carl_pin, &[], false, SALES_POINT),
        person("dina", 4, dina_pin, &[], true, "sp-elsewhere"),
    ];
    let roles = vec![role("cashier", &["sale.create"], &["drawer.open"])];
    assert_eq!(
        code(
            daemon
                .sync(Some(wrong_token))
                .await
                .apply_snapshot(snapshot(1, 1, roles.clone(), users.clone()))
                .await
        )
        .0,
        Code::Unauthenticated
    );
    daemon
        .sync(Some(&central))
        .await
        .apply_snapshot(snapshot(1, 1, roles, users))
        .await
        .unwrap();
    // bob gets a new PIN and key through a batch pushed with the other token.
    daemon
        .sync(Some(&backup))
        .await
        .apply_changes(changes(
            (1, 1),
            2,
            vec![],
            vec![person(
                "bob",
                2,
                bob_new_pin,
                &[bob_new_key],
                true,
                SALES_POINT,
            )],
            &[],
            &[],
        ))
        .await
        .unwrap();
    assert!(client.revoke_token("backup").await.unwrap());
    assert_eq!(
        code(daemon.sync(Some(&backup)).await.state().await).0,
        Code::Unauthenticated
    );
    assert!(daemon.sync(Some(&central)).await.state().await.is_ok());

    // Logins: accepted, switched, refused for every reason.
    let mut watch = daemon.client().await.watch().await.unwrap();
    assert_eq!(pin_user(&mut client, amy_pin).await, "amy");
    assert_eq!(key_user(&mut client, amy_key).await, "amy");
    assert_eq!(pin_user(&mut client, bob_new_pin).await, "bob");
    assert_eq!(key_user(&mut client, bob_new_key).await, "bob");
    for (result, expected) in [
        (client.login_with_pin(bob_pin).await, Code::Unauthenticated),
        (client.login_with_key(bob_key).await, Code::Unauthenticated),
        (
            client.login_with_key(unknown_key).await,
            Code::Unauthenticated,
        ),
        (
            client.login_with_pin(wrong_pin).await,
            Code::Unauthenticated,
        ),
        (
            client.login_with_pin(carl_pin).await,
            Code::PermissionDenied,
        ),
        (
            client.login_with_pin(dina_pin).await,
            Code::PermissionDenied,
        ),
        (client.login_with_pin(long_pin).await, Code::InvalidArgument),
    ] {
        assert_eq!(code(result).0, expected);
    }
    assert!(
        !client
            .check_permission("drawer.open")
            .await
            .unwrap()
            .granted
    );
    client.logout().await.unwrap();
    assert!(watch.message().await.unwrap().is_some());

    // A reload and a stop complete the run.
    daemon.signal(Signal::SIGHUP);
    notify
        .wait_until("READY=1 after SIGHUP", |m| {
            m.iter().filter(|m| m.contains("READY=1")).count() == 2
        })
        .await;
    let status = daemon.stop().await;
    assert!(status.success(), "{status}");

    let log = daemon.log_text();
    for expected in [
        "sync token created",
        "sync call rejected: invalid token",
        "snapshot applied",
        "changes applied",
        "sync token revoke",
        "login accepted",
        "login failed: no matching credential",
        "login denied",
        "login refused",
        "reload done",
        "stopped",
    ] {
        assert!(
            log.contains(expected),
            "the run logged {expected:?}:\n{log}"
        );
    }
    assert!(log.contains(" DEBUG "), "the log is at debug level");
    let notified = notify.messages().join("\n");
    assert!(notified.contains("STATUS=cursor 1:2 (ok)"), "{notified}");
    let mut on_disk = Vec::new();
    for file in files_under(dir) {
        if file != daemon.log {
            on_disk.push((file.clone(), std::fs::read(&file).unwrap()));
        }
    }
    let secrets = [
        amy_pin,
        bob_pin,
        bob_new_pin,
        carl_pin,
        dina_pin,
        wrong_pin,
        long_pin,
        amy_key,
        bob_key,
        bob_new_key,
        unknown_key,
        wrong_token,
        &central,
        &backup,
    ];
    for secret in secrets {
        assert!(!log.contains(secret), "{secret:?} leaked into the log");
        // Also the token without its prefix, as bare base64.
        if let Some(bare) = secret.strip_prefix("tgs_") {
            assert!(!log.contains(bare), "{secret:?} leaked into the log");
        }
        assert!(
            !notified.contains(secret),
            "{secret:?} sent to the service manager"
        );
        for (file, bytes) in &on_disk {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} in {}",
                file.display()
            );
        }
    }
}
