//! Guest side of the systemd test (`tests/tests/vm_systemd.rs`). The guest boots Debian with
//! systemd as PID 1; a test unit runs this as root once the system is up. It installs the
//! tillgate .deb and checks, from systemctl and the journal, what the package and the hardened
//! unit do under a real systemd:
//!
//! 1. the package: user, groups, units enabled, nothing started while the config names no
//!    Sales Point;
//! 2. socket activation: a POS app user's first connection starts tillgated.service;
//! 3. the unit as shipped opens and grabs a uinput key reader and reads a uinput PIN pad: a key
//!    login and a PIN login, seen by a `WatchSession` client running as a `tillgate-pos` member;
//!    a user outside the group is refused by the socket's mode;
//! 4. `systemctl reload` applies a changed `[input]` rule (the reader's grab is dropped);
//! 5. the watchdog: a SIGSTOPped daemon is killed and restarted, the replica intact;
//! 6. `systemctl stop` exits 0 in time;
//! 7. `systemd-analyze security tillgated.service` ≤ 2.0;
//! 8. the journal holds the daemon's structured lines and none of the PIN, key id or token.
//!
//! Run with the argument `watch` (as the POS user) it follows the session and prints one line
//! per event; with `probe` it only tries to connect to the login socket.
//!
//! It ends with one line `TILLGATE-VM-RESULT: PASS` or `TILLGATE-VM-RESULT: FAIL: <reason>`.

use std::fmt::Display;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use evdev::uinput::VirtualDevice;
use serde_json::{Value, json};
use tillgate_client::export::SnapshotExport;
use tillgate_client::proto::{LoginMethod, SessionEventKind};
use tillgate_client::{TillClient, TillSyncClient};
use tillgate_tests::keyboard;

const MARKER: &str = "TILLGATE-VM-RESULT:";
const DEB: &str = "/root/tillgate.deb";
const CONFIG: &str = "/etc/tillgate/tillgated.toml";
const SOCKET: &str = "/run/tillgate/login.sock";
const READER: &str = "tillgate-test-reader";
const PINPAD: &str = "tillgate-test-pinpad";
/// Long and distinctive, so that finding them in the journal cannot be a coincidence.
const KEY_ID: &str = "04A1B2C3D4E5F6";
const PIN: &str = "73915246";
const KEY_USER: &str = "u-key";
const PIN_USER: &str = "u-pin";
const POS_USER: &str = "posapp";
const OTHER_USER: &str = "intruder";
const UNIT: &str = "tillgated.service";

/// How long to wait for anything (generous: the guest runs under TCG on a busy host).
const PATIENCE: Duration = Duration::from_secs(60);

type Res<T> = Result<T, String>;

fn say(message: impl Display) {
    println!("vm-systemd: {message}");
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("watch") => return watch_as_pos_app(),
        Some("probe") => return probe(),
        _ => {}
    }
    let started = Instant::now();
    let mut guest = Guest::default();
    let result = run(&mut guest);
    for mut child in guest.children.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
    match result {
        Ok(()) => {
            say(format_args!(
                "all checks passed in {:.1} s",
                started.elapsed().as_secs_f64()
            ));
            println!("{MARKER} PASS");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            say("---- journalctl -u tillgated (on failure) ----");
            if let Ok(out) = Command::new("journalctl")
                .args(["--no-pager", "-o", "short-monotonic", "-u", "tillgated*"])
                .output()
            {
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
            println!("{MARKER} FAIL: {reason}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Guest {
    children: Vec<Child>,
}

fn run(guest: &mut Guest) -> Res<()> {
    // 1. The package.
    let install = sh("dpkg", &["-i", DEB])?;
    say(format_args!(
        "dpkg -i: {}",
        install.trim().replace('\n', " | ")
    ));
    if !install.contains("not started: set terminal.sales_point_id") {
        return Err(format!(
            "the postinst did not say the service waits for the Sales Point: {install}"
        ));
    }
    for unit in ["tillgated.socket", UNIT] {
        expect_eq(&systemctl(&["is-enabled", unit])?, "enabled", unit)?;
        expect_eq(&systemctl(&["is-active", unit])?, "inactive", unit)?;
    }
    let groups = sh("id", &["-nG", "tillgate"])?;
    for group in ["tillgate", "tillgate-pos", "input", "dialout"] {
        if !groups.split_whitespace().any(|g| g == group) {
            return Err(format!("user tillgate is not in group {group}: {groups}"));
        }
    }
    say(format_args!(
        "installed: units enabled, nothing started; tillgate in {}",
        groups.trim()
    ));
    sh("useradd", &["--system", "-G", "tillgate-pos", POS_USER])?;
    sh("useradd", &["--system", OTHER_USER])?;

    // The devices exist before the daemon starts: it finds them by enumeration.
    let mut reader = keyboard::create_device(READER)?;
    let mut pinpad = keyboard::create_device(PINPAD)?;
    let reader_node = keyboard::dev_node(&mut reader, PATIENCE)?;
    keyboard::dev_node(&mut pinpad, PATIENCE)?;
    sh("udevadm", &["settle"])?;
    let mut spy = keyboard::open_spy(&reader_node)?;
    if !keyboard::tap_reaches(&mut reader, &mut spy)? {
        return Err("control failed: an ungrabbed reader node delivered no key events".into());
    }

    let config = std::fs::read_to_string(CONFIG).map_err(|e| format!("read {CONFIG}: {e}"))?;
    let config = config.replacen(
        "sales_point_id = \"\"",
        &format!("sales_point_id = \"{}\"", tillgate_tests::SALES_POINT),
        1,
    );
    write_config(&config, true)?;
    sh("tillgated", &["--check-config", "--config", CONFIG])?;

    // 2. Socket activation.
    systemctl(&["start", "tillgated.socket"])?;
    expect_eq(
        &systemctl(&["is-active", "tillgated.socket"])?,
        "active",
        "tillgated.socket",
    )?;
    expect_eq(&systemctl(&["is-active", UNIT])?, "inactive", UNIT)?;
    let socket_meta = sh("stat", &["-c", "%U:%G %a", SOCKET])?;
    expect_eq(&socket_meta, "root:tillgate-pos 660", SOCKET)?;
    let events = spawn_watcher(guest)?;
    expect_line(&events, "CONNECTED", "the POS app's first connection")?;
    expect_eq(&systemctl(&["is-active", UNIT])?, "active", UNIT)?;
    let listening = wait_journal(|e| message(e).contains("listening"), "the `listening` line")?;
    if field(&listening, "F_ACTIVATED") != "true" {
        return Err(format!(
            "the daemon did not take the socket from systemd: {listening}"
        ));
    }
    say("socket activation: the POS app's first connection started tillgated.service");
    let current = expect_line(&events, "EVENT CURRENT", "the first session event")?;
    say(format_args!("POS app ({POS_USER}) watching: {current}"));

    // The user outside tillgate-pos: refused by the socket file's mode.
    let probe = as_user(OTHER_USER, "probe")?
        .output()
        .map_err(|e| format!("run the probe: {e}"))?;
    let probe = String::from_utf8_lossy(&probe.stdout).into_owned();
    if !probe.contains("PermissionDenied") {
        return Err(format!(
            "{OTHER_USER} was not refused by the socket's mode: {probe}"
        ));
    }
    say(format_args!(
        "{OTHER_USER} (not in tillgate-pos): {}",
        probe.trim()
    ));

    // Users, pushed over the sync listener with a token made on the socket by root (an admin).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let token = runtime.block_on(push_users())?;

    // 3. The key reader, grabbed by the hardened service, and the PIN pad.
    wait_for(PATIENCE, "the service to grab the key reader", || {
        keyboard::tap_reaches(&mut reader, &mut spy).map(|reached| !reached)
    })?;
    say("the service holds the grab on the key reader");
    present_key(&mut reader, &events)?;
    if keyboard::key_events(&mut spy)? != 0 {
        return Err("the grabbed reader's keystrokes reached a second reader".into());
    }
    wait_journal(
        |e| message(e).contains("input device attached") && e.to_string().contains(PINPAD),
        "the PIN pad attached",
    )?;
    keyboard::type_human(&mut pinpad, PIN)?;
    let login = expect_line(&events, "EVENT LOGIN", "the PIN login")?;
    if !login.contains(&format!("{PIN_USER} Pin")) || !login.contains(PINPAD) {
        return Err(format!(
            "expected the PIN login of {PIN_USER} from {PINPAD}: {login}"
        ));
    }
    say(format_args!("PIN login seen by the POS app: {login}"));

    // 4. Reload applies a changed [input] rule: the reader is no longer grabbed.
    let before = systemctl(&["show", "-P", "MainPID", UNIT])?;
    write_config(&config, false)?;
    systemctl(&["reload", UNIT])?;
    wait_journal(
        |e| message(e).contains("input rules changed"),
        "input rules changed",
    )?;
    wait_for(PATIENCE, "the reload to release the reader's grab", || {
        keyboard::tap_reaches(&mut reader, &mut spy)
    })?;
    expect_eq(
        &systemctl(&["show", "-P", "MainPID", UNIT])?,
        &before,
        "MainPID after reload",
    )?;
    say("systemctl reload applied grab = false: a second reader sees the keys again, same process");

    // 5. The watchdog: freeze the daemon; systemd kills it and starts a new one.
    let cursor_before = runtime.block_on(status())?;
    sh("kill", &["-STOP", before.trim()])?;
    say(format_args!("SIGSTOP to tillgated (pid {})", before.trim()));
    let frozen = Instant::now();
    wait_for(
        Duration::from_secs(120),
        "systemd to restart the frozen daemon",
        || {
            let pid = systemctl(&["show", "-P", "MainPID", UNIT])?;
            let active = systemctl(&["is-active", UNIT])?;
            Ok(pid != before && pid != "0" && active == "active")
        },
    )?;
    wait_journal(
        |e| message(e).contains("Watchdog timeout"),
        "systemd's watchdog timeout",
    )?;
    let restarts = systemctl(&["show", "-P", "NRestarts", UNIT])?;
    expect_eq(&restarts, "1", "NRestarts")?;
    let cursor_after = runtime.block_on(status())?;
    if cursor_after != cursor_before {
        return Err(format!(
            "the replica changed across the watchdog restart: {cursor_before} then {cursor_after}"
        ));
    }
    runtime.block_on(async {
        let mut client = TillClient::connect(SOCKET)
            .await
            .map_err(|e| e.to_string())?;
        let session = client
            .login_with_pin(PIN)
            .await
            .map_err(|e| format!("PIN login after the restart: {e}"))?;
        match session.user {
            Some(user) if user.id == PIN_USER => Ok(()),
            other => Err(format!("PIN login after the restart logged in {other:?}")),
        }
    })?;
    say(format_args!(
        "watchdog: killed and restarted {:.1} s after SIGSTOP; replica intact ({cursor_after}), PIN login works",
        frozen.elapsed().as_secs_f64()
    ));

    // 6. Stop.
    let stopping = Instant::now();
    systemctl(&["stop", UNIT])?;
    let took = stopping.elapsed();
    let result = systemctl(&["show", "-P", "Result", UNIT])?;
    let code = systemctl(&["show", "-P", "ExecMainStatus", UNIT])?;
    expect_eq(&result, "success", "Result after stop")?;
    expect_eq(&code, "0", "ExecMainStatus after stop")?;
    if took > Duration::from_secs(20) {
        return Err(format!(
            "systemctl stop took {took:?}, more than TimeoutStopSec=20"
        ));
    }
    wait_journal(|e| message(e) == "stopped", "the daemon's `stopped` line")?;
    say(format_args!(
        "systemctl stop: exit 0 after {:.1} s",
        took.as_secs_f64()
    ));

    // 7. The exposure score, from the booted system.
    let security = sh("systemd-analyze", &["security", "--no-pager", UNIT])?;
    let score = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for tillgated.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .ok_or_else(|| format!("no exposure level in: {security}"))?;
    if score > 2.0 {
        return Err(format!(
            "systemd-analyze security rates tillgated.service {score}: {security}"
        ));
    }
    say(format_args!(
        "systemd-analyze security tillgated.service: {score}"
    ));

    // 8. The journal: structured lines, no secrets.
    check_journal(&token)?;
    Ok(())
}

/// Writes the config with input rules for the two devices; `grab_reader` false drops the grab.
fn write_config(base: &str, grab_reader: bool) -> Res<()> {
    let text = format!(
        "{base}\n[input]\n\n[[input.rules]]\nname = \"{READER}\"\nrole = \"key_reader\"\n\
         profile = \"generic-wedge\"\ngrab = {grab_reader}\n\n\
         [[input.rules]]\nname = \"{PINPAD}\"\nrole = \"pin_pad\"\n"
    );
    std::fs::write(CONFIG, text).map_err(|e| format!("write {CONFIG}: {e}"))
}

async fn push_users() -> Res<String> {
    let mut client = TillClient::connect(SOCKET)
        .await
        .map_err(|e| format!("connect as root: {e}"))?;
    let token = client
        .create_token("central")
        .await
        .map_err(|e| format!("create a sync token: {e}"))?
        .token;
    let addr = std::fs::read_to_string("/run/tillgate/sync.addr")
        .map_err(|e| format!("read /run/tillgate/sync.addr: {e}"))?;
    let mut sync = TillSyncClient::connect(&format!("http://{}", addr.trim()), Some(&token), None)
        .await
        .map_err(|e| format!("connect to the sync listener: {e}"))?;
    let mut key_user = tillgate_tests::user(KEY_USER, 1, None);
    key_user["keys"] = json!([KEY_ID]);
    let export = json!({
        "account": tillgate_tests::account(),
        "cursor": { "epoch": 1, "revision": 1 },
        "roles": [tillgate_tests::role("cashier", &["sale"], &[])],
        "users": [key_user, tillgate_tests::user(PIN_USER, 2, Some(PIN))],
    });
    let snapshot = SnapshotExport::parse(&export.to_string())
        .and_then(SnapshotExport::into_snapshot)
        .map_err(|e| format!("build the snapshot: {e}"))?;
    sync.apply_snapshot(snapshot)
        .await
        .map_err(|e| format!("push the snapshot: {e}"))?;
    say("pushed 2 users over the sync listener with a fresh token");
    Ok(token)
}

/// The replica as GetStatus shows it: cursor and counts.
async fn status() -> Res<String> {
    let mut client = TillClient::connect(SOCKET)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let status = client
        .status()
        .await
        .map_err(|e| format!("GetStatus: {e}"))?;
    let cursor = status.cursor.unwrap_or_default();
    Ok(format!(
        "cursor {}:{} {}, {} users, {} roles",
        cursor.epoch, cursor.revision, status.replica_status, status.users, status.roles
    ))
}

/// The key login, typed again if a busy host stalled the guest in mid-burst (see vm_driver).
fn present_key(reader: &mut VirtualDevice, events: &mpsc::Receiver<String>) -> Res<()> {
    for _ in 0..3 {
        let slowest = keyboard::type_burst(reader, KEY_ID)?;
        let wait = if slowest <= Duration::from_millis(60) {
            PATIENCE
        } else {
            say(format_args!(
                "a {} ms stall in mid-burst; typing again",
                slowest.as_millis()
            ));
            Duration::from_secs(2)
        };
        if let Ok(login) = events.recv_timeout(wait) {
            if login.starts_with("EVENT LOGIN") && login.contains(&format!("{KEY_USER} Key")) {
                say(format_args!("key login seen by the POS app: {login}"));
                return Ok(());
            }
            return Err(format!("expected the key login of {KEY_USER}, got {login}"));
        }
    }
    Err("no key login after three bursts".into())
}

/// Starts `watch` as the POS app's user; its lines arrive on the receiver.
fn spawn_watcher(guest: &mut Guest) -> Res<mpsc::Receiver<String>> {
    let mut child = as_user(POS_USER, "watch")?
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start the watcher as {POS_USER}: {e}"))?;
    let stdout: ChildStdout = child.stdout.take().ok_or("the watcher has no stdout")?;
    guest.children.push(child);
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    Ok(receive)
}

fn expect_line(events: &mpsc::Receiver<String>, prefix: &str, what: &str) -> Res<String> {
    let line = events.recv_timeout(PATIENCE).map_err(|_| {
        format!(
            "{what}: nothing from the watcher within {} s",
            PATIENCE.as_secs()
        )
    })?;
    if line.starts_with(prefix) {
        Ok(line)
    } else {
        Err(format!(
            "{what}: expected `{prefix}…` from the watcher, got `{line}`"
        ))
    }
}

/// This program again, as `user` with its groups (setpriv from util-linux).
fn as_user(user: &str, mode: &str) -> Res<Command> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut command = Command::new("setpriv");
    command
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "--",
        ])
        .arg(exe)
        .arg(mode)
        .stdin(Stdio::null());
    Ok(command)
}

/// `watch`: as the POS app, connect (which starts the daemon) and print the session events.
fn watch_as_pos_app() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            println!("ERROR tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Res<()> = runtime.block_on(async {
        let mut client = TillClient::connect(SOCKET)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut events = client
            .watch()
            .await
            .map_err(|e| format!("WatchSession: {e}"))?;
        println!("CONNECTED");
        while let Some(event) = events.message().await.map_err(|e| format!("stream: {e}"))? {
            let kind = SessionEventKind::try_from(event.kind)
                .map(|k| format!("{k:?}").to_uppercase())
                .unwrap_or_default();
            let session = event.session.as_ref();
            let user = session
                .and_then(|s| s.user.as_ref())
                .map(|u| u.id.clone())
                .unwrap_or_default();
            let method = session
                .and_then(|s| LoginMethod::try_from(s.method).ok())
                .map(|m| format!("{m:?}"))
                .unwrap_or_default();
            let source = session.map(|s| s.source.clone()).unwrap_or_default();
            println!("EVENT {kind} {user} {method} {source}");
        }
        Ok(())
    });
    if let Err(e) = result {
        println!("ERROR {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `probe`: try to connect to the login socket and print the outcome.
fn probe() -> ExitCode {
    match std::os::unix::net::UnixStream::connect(SOCKET) {
        Ok(_) => println!("connected"),
        Err(e) => println!("refused: {:?} ({e})", e.kind()),
    }
    ExitCode::SUCCESS
}

fn sh(program: &str, args: &[&str]) -> Res<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {program}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{program} {} failed ({}): {text}",
            args.join(" "),
            output.status
        ))
    }
}

/// systemctl's answer, trimmed; `is-active` / `is-enabled` answer on stdout with a non-zero
/// status for "inactive", so only a failing action is an error.
fn systemctl(args: &[&str]) -> Res<String> {
    let output = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run systemctl: {e}"))?;
    let query = matches!(args.first(), Some(&"is-active" | &"is-enabled" | &"show"));
    if !output.status.success() && !query {
        return Err(format!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn expect_eq(actual: &str, expected: &str, what: &str) -> Res<()> {
    if actual.trim() == expected {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected `{expected}`, got `{}`",
            actual.trim()
        ))
    }
}

fn wait_for(patience: Duration, what: &str, mut done: impl FnMut() -> Res<bool>) -> Res<()> {
    let deadline = Instant::now() + patience;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {} s waiting for {what}",
                patience.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every journal entry as JSON (`journalctl -o json`), oldest first.
fn journal() -> Res<Vec<Value>> {
    let text = sh("journalctl", &["--no-pager", "-o", "json"])?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn message(entry: &Value) -> String {
    field(entry, "MESSAGE")
}

fn field(entry: &Value, name: &str) -> String {
    match &entry[name] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Waits for a journal entry of tillgated.service (or about it, from systemd) matching `matches`.
fn wait_journal(matches: impl Fn(&Value) -> bool, what: &str) -> Res<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = journal()?.into_iter().find(|e| {
            (field(e, "_SYSTEMD_UNIT") == UNIT || field(e, "UNIT") == UNIT) && matches(e)
        });
        if let Some(entry) = found {
            return Ok(entry);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no journal entry for {what} within {} s",
                PATIENCE.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The daemon's lines are structured (tracing-journald: TARGET, F_* fields), and no field any
/// program gave the journal holds the PIN, the key id or the token. Journald's own fields (`_PID`,
/// `__CURSOR`, timestamps) are left out: they are numbers and hashes the test did not choose.
fn check_journal(token: &str) -> Res<()> {
    let entries = journal()?;
    let daemon: Vec<&Value> = entries
        .iter()
        .filter(|e| field(e, "_SYSTEMD_UNIT") == UNIT)
        .collect();
    let structured = daemon
        .iter()
        .filter(|e| {
            field(e, "TARGET").starts_with("tillgate")
                && e.as_object()
                    .is_some_and(|o| o.keys().any(|k| k.starts_with("F_")))
        })
        .count();
    if structured < 5 {
        return Err(format!(
            "only {structured} of the daemon's {} journal entries carry TARGET and F_* fields",
            daemon.len()
        ));
    }
    let secrets = [
        ("the PIN", PIN.to_owned()),
        ("the key id", KEY_ID.to_lowercase()),
        ("the token", token.to_lowercase()),
    ];
    for entry in &entries {
        let Some(fields) = entry.as_object() else {
            continue;
        };
        for (name, value) in fields.iter().filter(|(k, _)| !k.starts_with('_')) {
            let value = value.to_string().to_lowercase();
            for (what, secret) in &secrets {
                if value.contains(secret.as_str()) {
                    return Err(format!("{what} is in the journal, field {name}: {entry}"));
                }
            }
        }
    }
    say(format_args!(
        "journal: {} entries from tillgated, {structured} structured; no PIN, key id or token in any of {} entries",
        daemon.len(),
        entries.len()
    ));
    Ok(())
}
