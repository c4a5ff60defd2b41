//! Guest side of the real-kernel test (`tests/tests/vm.rs`). It runs as the only program of a
//! small qemu guest, after /init has loaded evdev and uinput:
//!
//! 1. creates a key reader and a PIN pad with uinput,
//! 2. starts `tillgated` with input rules for both, pushes a snapshot and watches the session,
//! 3. types a key id on the reader and a PIN on the pad and checks the LOGIN events,
//!    and meanwhile types on a third reader whose grab another descriptor holds (as the POS app
//!    or a stray `evtest --grab` would): the daemon lists it as waiting to grab and does not
//!    read it, the holder gets the keystrokes; once the holder lets go the daemon grabs it
//!    within its backoff, drops what was typed before its grab, and the next key logs in,
//! 4. checks that the grabbed reader's keystrokes never reach a second, non-grabbing reader,
//! 5. unplugs and re-creates the reader and checks that the daemon lets go of the old node and
//!    attaches (and grabs) the new one,
//! 6. unplugs and re-plugs the reader while a login from it is still hashing (a user with slow
//!    argon2 costs): the new node is grabbed without waiting for that login, the login completes,
//!    and a key typed next (with the wall clock stepped an hour forward in mid-burst) logs in
//!    while a second reader of the node sees none of its keystrokes,
//! 7. enrols a key for the PIN user from the uinput reader (EnrollKey): the key typed is
//!    captured, not logged in, and the answer's PHC string verifies it.
//! 8. unplugs a reader that another descriptor holds while the daemon waits to grab it: the
//!    wait ends, the daemon closes the node and no longer lists it.
//!
//! It ends with one line `TILLGATE-VM-RESULT: PASS` or `TILLGATE-VM-RESULT: FAIL: <reason>` on
//! stdout (the serial console), which the host test looks for.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use evdev::uinput::VirtualDevice;
use evdev::{AttributeSet, Device, EventType, InputEvent, KeyCode};
use serde_json::json;
use tillgate_client::export::SnapshotExport;
use tillgate_client::proto::{LoginMethod, SessionEvent, SessionEventKind};
use tillgate_client::{TillClient, TillSyncClient};
use tillgate_tests::keyboard::{DIGITS, KEYPAD, LETTERS, char_key};
use tonic::Streaming;

const MARKER: &str = "TILLGATE-VM-RESULT:";
const READER: &str = "tillgate-test-reader";
const PINPAD: &str = "tillgate-test-pinpad";
const KEY_ID: &str = "04A1B2C3D4";
const PIN: &str = "2468";
const KEY_USER: &str = "u-key";
const PIN_USER: &str = "u-pin";
const SLOW_KEY: &str = "05C0FFEE77";
const NEW_KEY: &str = "06DEADBEEF";
const SLOW_USER: &str = "u-slow";
/// A key reader another descriptor has grabbed before the daemon starts.
const CONTESTED: &str = "tillgate-test-contested";
const CONTESTED_KEY: &str = "07A5A5A5A5";
const CONTESTED_USER: &str = "u-contested";
/// What `tillctl devices` shows for a reader another process holds.
const WAITING: &str = "waiting to grab: held by another process (EBUSY)";
/// The daemon retries a held grab at most this far apart (`hardware::grab::RETRY_MAX`); it may
/// also wait up to 2 s for keys to be released first. Generous for TCG on a busy host.
const GRAB_WITHIN: Duration = Duration::from_secs(10);
/// argon2id m_cost (KiB) and t_cost of the slow user's key: about 3 s per evaluation in this
/// guest under TCG (64 MiB takes ~1 s a pass there).
const SLOW_COSTS: (u32, u32) = (64 * 1024, 3);
const WORK_DIR: &str = "/tmp/tillgate";
const TILLGATED: &str = "/bin/tillgated";

/// How long to wait for anything the daemon does (generous: the guest runs under TCG).
const PATIENCE: Duration = Duration::from_secs(30);

type Res<T> = Result<T, String>;

trait Context<T> {
    fn context(self, what: impl Display) -> Res<T>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: impl Display) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

fn say(message: impl Display) {
    println!("vm-driver: {message}");
}

fn main() -> ExitCode {
    let mut daemon = None;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
        .and_then(|runtime| runtime.block_on(run(&mut daemon)));
    let log = std::fs::read_to_string(log_path()).unwrap_or_default();
    if let Some(mut child) = daemon {
        let _ = child.kill();
        let _ = child.wait();
    }
    match result {
        Ok(()) => {
            for line in log.lines().filter(|l| l.contains("tillgate-test-")) {
                say(format_args!("tillgated| {line}"));
            }
            println!("{MARKER} PASS");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            for line in log.lines() {
                say(format_args!("tillgated| {line}"));
            }
            println!("{MARKER} FAIL: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn log_path() -> PathBuf {
    Path::new(WORK_DIR).join("tillgated.log")
}

async fn run(daemon_slot: &mut Option<Child>) -> Res<()> {
    let started = Instant::now();
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("run `ip link set lo up`")?;
    if !status.success() {
        return Err(format!("`ip link set lo up` failed: {status}"));
    }

    // The devices exist before the daemon starts: it must find them by enumeration.
    let mut reader = create_device(READER)?;
    let mut pinpad = create_device(PINPAD)?;
    let reader_node = dev_node(&mut reader).await?;
    let pinpad_node = dev_node(&mut pinpad).await?;
    say(format_args!(
        "{READER} is {}, {PINPAD} is {}",
        reader_node.display(),
        pinpad_node.display()
    ));

    // Control: with nobody grabbing, a second reader of the node sees the keystrokes. This is
    // what makes the "receives nothing while grabbed" checks below mean something.
    let mut spy = open_spy(&reader_node)?;
    tap(&mut reader, KeyCode::KEY_LEFTSHIFT)?;
    let seen = key_events(&mut spy)?;
    if seen != 2 {
        return Err(format!(
            "control failed: an ungrabbed reader node delivered {seen} key events for one \
             press and release, expected 2"
        ));
    }

    // Another program holds this reader's grab before the daemon starts.
    let mut contested = create_device(CONTESTED)?;
    let contested_node = dev_node(&mut contested).await?;
    let mut holder = hold(&contested_node)?;
    say(format_args!(
        "{CONTESTED} is {}, grabbed by another descriptor",
        contested_node.display()
    ));

    let daemon = start_daemon()?;
    let pid = daemon.id();
    let socket = Path::new(WORK_DIR).join("run").join("login.sock");
    *daemon_slot = Some(daemon);
    let sync_addr = wait_ready(daemon_slot, &socket).await?;
    say(format_args!(
        "tillgated ready after {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let mut client = TillClient::connect(&socket)
        .await
        .context("connect to the login socket")?;
    let token = client
        .create_token("vm")
        .await
        .context("create a sync token")?
        .token;
    let mut sync = TillSyncClient::connect(&sync_addr, Some(&token), None)
        .await
        .context("connect to the sync listener")?;
    sync.apply_snapshot(snapshot()?)
        .await
        .context("push the snapshot")?;
    let mut events = client.watch().await.context("WatchSession")?;
    let first = next_event(&mut events).await?;
    if first.kind != SessionEventKind::Current as i32 || first.session.is_some() {
        return Err(format!(
            "WatchSession should open with CURRENT and no session, got {}",
            describe(&first)
        ));
    }

    // 1. The key reader: the daemon grabs it, so a tap no longer reaches the spy.
    wait_grabbed(&mut reader, &mut spy, "grab the key reader").await?;
    say("the daemon holds the grab on the key reader");
    wait_for_log(daemon_slot, PINPAD).await?;

    let login = present_key(
        &mut reader,
        &mut events,
        KEY_ID,
        KEY_USER,
        None,
        None,
        READER,
    )
    .await?;
    say(format_args!("key login: {}", describe(&login)));
    let leaked = key_events(&mut spy)?;
    if leaked != 0 {
        return Err(format!(
            "the grabbed key reader's keystrokes reached a second reader of {}: {leaked} key \
             events",
            reader_node.display()
        ));
    }
    say("a second reader of the grabbed node received no key events");

    // The contested reader: listed as waiting, not read; what is typed on it goes to its holder.
    let mut client_devices = client.clone();
    wait_device(&mut client_devices, &contested_node, |d| {
        d.is_some_and(|d| !d.attached && !d.grabbed && d.error == WAITING)
    })
    .await?;
    say(format_args!("tillgated lists {CONTESTED} as {WAITING:?}"));
    type_clean_burst(&mut contested, CONTESTED_KEY).await?;
    let held_keys = key_events(&mut holder)?;
    let burst_keys = burst_key_events(CONTESTED_KEY)?;
    if held_keys < burst_keys {
        return Err(format!(
            "the process holding {CONTESTED} received {held_keys} key events of a {burst_keys}-event \
             burst"
        ));
    }
    say(format_args!(
        "a key id typed on {CONTESTED} went to its holder ({held_keys} key events)"
    ));

    // 2. The PIN pad, typed at human speed, switches the session to the PIN user. PIN pads are
    // grabbed by default, so a second reader of the pad (a focused text field) sees no digit.
    // That this is the next session event also shows the contested reader's key id logged
    // nobody in.
    let mut pad_spy = open_spy(&pinpad_node)?;
    wait_grabbed(&mut pinpad, &mut pad_spy, "grab the PIN pad").await?;
    type_human(&mut pinpad, PIN).await?;
    let login = expect_login(
        &mut events,
        PIN_USER,
        LoginMethod::Pin,
        PINPAD,
        Some(KEY_USER),
    )
    .await?;
    say(format_args!("PIN login: {}", describe(&login)));
    let pad_keys = key_events(&mut pad_spy)?;
    if pad_keys != 0 {
        return Err(format!(
            "a second reader of the PIN pad (grabbed by default) saw {pad_keys} key events of \
             the PIN"
        ));
    }

    // The holder lets go. A key id typed at once reaches the daemon's descriptor before the
    // daemon's next grab attempt (it retries seconds apart by now): that input also reached the
    // holder and must not log anyone in. Then the daemon grabs the reader within its backoff.
    holder
        .ungrab()
        .context(format_args!("release {}", contested_node.display()))?;
    let released = Instant::now();
    type_clean_burst(&mut contested, KEY_ID).await?;
    let before_grab = key_events(&mut holder)?;
    let key_id_keys = burst_key_events(KEY_ID)?;
    let grabbed_at = wait_grabbed(
        &mut contested,
        &mut holder,
        "grab the contested reader once its holder let go",
    )
    .await?;
    let grab_after = grabbed_at - released;
    if grab_after > GRAB_WITHIN {
        return Err(format!(
            "tillgated grabbed {CONTESTED} {} ms after its holder let go, more than {} s",
            grab_after.as_millis(),
            GRAB_WITHIN.as_secs()
        ));
    }
    let mut previous = PIN_USER;
    if before_grab == 0 {
        // The daemon's retry came first, so the key id was its own input: a login.
        say("the daemon grabbed the contested reader before the key id was typed; it logs in");
        expect_login(
            &mut events,
            KEY_USER,
            LoginMethod::Key,
            CONTESTED,
            Some(PIN_USER),
        )
        .await?;
        previous = KEY_USER;
    } else if before_grab >= key_id_keys {
        say(format_args!(
            "a key id typed after the holder let go and before the daemon's grab reached the \
             holder ({before_grab} key events); the daemon must drop it"
        ));
    } else {
        say("the daemon grabbed the contested reader in mid-burst; that partial id logs nobody in");
    }
    say(format_args!(
        "tillgated grabbed {CONTESTED} {} ms after its holder let go",
        grab_after.as_millis()
    ));
    wait_device(&mut client_devices, &contested_node, |d| {
        d.is_some_and(|d| d.attached && d.grabbed && d.error.is_empty())
    })
    .await?;
    let attached_line = std::fs::read_to_string(log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(CONTESTED) && l.contains("input device attached"))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    if attached_line.len() != 1 || !attached_line[0].contains("grabbed=true") {
        return Err(format!(
            "want one \"input device attached\" line with grabbed=true for {CONTESTED}, got \
             {attached_line:?}"
        ));
    }
    // The next session event is this login: the key id typed before the grab logged nobody in.
    let login = present_key(
        &mut contested,
        &mut events,
        CONTESTED_KEY,
        CONTESTED_USER,
        Some(previous),
        None,
        CONTESTED,
    )
    .await?;
    say(format_args!(
        "key login on the contested reader once grabbed: {}",
        describe(&login)
    ));
    let leaked = key_events(&mut holder)?;
    if leaked != 0 {
        return Err(format!(
            "after the daemon's grab the former holder of {CONTESTED} still received {leaked} \
             key events"
        ));
    }

    // 3. Unplug the reader: the daemon lets go of the node and stays up; plug it back in: the
    // daemon attaches the new node, grabs it, and reads the key again.
    let held = input_fds(pid)?;
    if !held.iter().any(|p| Path::new(p) == reader_node) {
        return Err(format!(
            "tillgated holds no descriptor of {} (it holds {held:?})",
            reader_node.display()
        ));
    }
    drop(spy);
    drop(reader);
    say("reader unplugged");
    wait_released(daemon_slot, pid).await?;
    say("the daemon closed the unplugged node");

    let mut reader = create_device(READER)?;
    let reader_node = dev_node(&mut reader).await?;
    say(format_args!(
        "reader plugged back in as {}",
        reader_node.display()
    ));
    let mut spy = open_spy(&reader_node)?;
    wait_grabbed(
        &mut reader,
        &mut spy,
        "re-attach and grab the re-created key reader",
    )
    .await?;
    say("the daemon grabbed the re-created reader");
    let again = input_fds(pid)?;
    if again.len() != held.len() {
        return Err(format!(
            "tillgated held {} input descriptors before the unplug ({held:?}) and {} after the \
             re-attach ({again:?})",
            held.len(),
            again.len()
        ));
    }

    let login = present_key(
        &mut reader,
        &mut events,
        KEY_ID,
        KEY_USER,
        Some(CONTESTED_USER),
        None,
        READER,
    )
    .await?;
    say(format_args!(
        "key login after re-attach: {}",
        describe(&login)
    ));
    let leaked = key_events(&mut spy)?;
    if leaked != 0 {
        return Err(format!(
            "after the re-attach the reader's keystrokes reached a second reader: {leaked} key \
             events"
        ));
    }

    // 4. Unplug and re-plug while a login from this reader is still hashing.
    let burst_at = Instant::now();
    type_clean_burst(&mut reader, SLOW_KEY).await?;
    drop(spy);
    drop(reader);
    say("slow key typed; reader unplugged and plugged back in while its login hashes");
    let mut reader = create_device(READER)?;
    let reader_node = dev_node(&mut reader).await?;
    let appeared = Instant::now();
    let mut spy = open_spy(&reader_node)?;
    let grabbed_at = wait_grabbed(
        &mut reader,
        &mut spy,
        "grab the re-plugged reader while a login from it is hashing",
    )
    .await?;
    let grabbed_after = grabbed_at - appeared;
    let login = expect_login(
        &mut events,
        SLOW_USER,
        LoginMethod::Key,
        READER,
        Some(KEY_USER),
    )
    .await?;
    let login_after = burst_at.elapsed();
    if grabbed_at - burst_at >= login_after {
        return Err(format!(
            "the slow login ({} ms) finished before the re-plugged reader was grabbed, so this \
             run did not test a re-plug during a login: raise SLOW_COSTS",
            login_after.as_millis()
        ));
    }
    say(format_args!(
        "re-plugged reader grabbed {} ms after its node appeared; the slow login landed {} ms \
         after its burst ({})",
        grabbed_after.as_millis(),
        login_after.as_millis(),
        describe(&login)
    ));
    // 5. Enrolment: the next key on the reader is captured for the PIN user, not logged in.
    let mut enrolling = TillClient::connect(&socket)
        .await
        .context("connect to the login socket")?;
    let capture = tokio::spawn(async move {
        enrolling
            .enroll_key(PIN_USER, None, READER, PATIENCE.as_secs() as u32)
            .await
    });
    wait_for_log(daemon_slot, "key capture started").await?;
    type_clean_burst(&mut reader, NEW_KEY).await?;
    let enrolled = capture
        .await
        .context("EnrollKey task")?
        .context("EnrollKey")?;
    let phc = argon2::password_hash::PasswordHash::new(&enrolled.phc).context("parse the PHC")?;
    argon2::PasswordVerifier::verify_password(&argon2::Argon2::default(), NEW_KEY.as_bytes(), &phc)
        .context("the captured PHC does not verify the key typed")?;
    if !enrolled.holders.is_empty() {
        return Err(format!("a new key reported holders {:?}", enrolled.holders));
    }
    say(format_args!(
        "key captured for {PIN_USER} from the uinput reader; PHC verifies, authorized by {}",
        enrolled.authorized_by
    ));
    let login = present_key(
        &mut reader,
        &mut events,
        KEY_ID,
        KEY_USER,
        Some(SLOW_USER),
        Some(Duration::from_secs(3600)),
        READER,
    )
    .await?;
    say(format_args!(
        "key login on the re-plugged reader, wall clock stepped 1 h in mid-burst: {}",
        describe(&login)
    ));
    let leaked = key_events(&mut spy)?;
    if leaked != 0 {
        return Err(format!(
            "the re-plugged reader's keystrokes reached a second reader: {leaked} key events"
        ));
    }

    // 6. A reader unplugged while another descriptor holds it and the daemon waits to grab it:
    // the wait ends, the daemon closes the node and no longer lists it (it never read it). The
    // daemon is stopped while the node appears, so the other descriptor grabs it first.
    let daemon_pid = nix::unistd::Pid::from_raw(i32::try_from(pid).context("pid")?);
    signal(daemon_pid, nix::sys::signal::Signal::SIGSTOP)?;
    let held = hold_new_device(CONTESTED).await;
    signal(daemon_pid, nix::sys::signal::Signal::SIGCONT)?;
    let (device, node, holder) = held?;
    wait_device(&mut client_devices, &node, |d| {
        d.is_some_and(|d| !d.attached && d.error == WAITING)
    })
    .await?;
    drop(device);
    drop(holder);
    say(format_args!(
        "a second held reader ({}) unplugged while the daemon waits to grab it",
        node.display()
    ));
    wait_released(daemon_slot, pid).await?;
    wait_device(&mut client_devices, &node, |d| d.is_none()).await?;
    say("the daemon closed it and no longer lists it");

    stop_daemon(daemon_slot).await?;
    say(format_args!(
        "all checks passed in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// A keyboard-like uinput device: digits, letters, Enter, the keypad, shift, Backspace, Escape.
fn create_device(name: &str) -> Res<VirtualDevice> {
    let mut keys = AttributeSet::<KeyCode>::new();
    for (_, code) in LETTERS.iter().chain(DIGITS.iter()) {
        keys.insert(*code);
    }
    for code in KEYPAD {
        keys.insert(code);
    }
    for code in [
        KeyCode::KEY_ENTER,
        KeyCode::KEY_KPENTER,
        KeyCode::KEY_LEFTSHIFT,
        KeyCode::KEY_RIGHTSHIFT,
        KeyCode::KEY_BACKSPACE,
        KeyCode::KEY_ESC,
    ] {
        keys.insert(code);
    }
    VirtualDevice::builder()
        .and_then(|b| b.name(name).with_keys(&keys))
        .and_then(|b| b.build())
        .context(format_args!("create uinput device {name} (/dev/uinput)"))
}

/// The device's /dev/input/eventN, once devtmpfs has created it.
async fn dev_node(device: &mut VirtualDevice) -> Res<PathBuf> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let nodes = device
            .enumerate_dev_nodes_blocking()
            .context("list the uinput device's nodes")?
            .collect::<Result<Vec<_>, _>>()
            .context("list the uinput device's nodes")?;
        if let Some(node) = nodes.into_iter().find(|n| n.exists()) {
            return Ok(node);
        }
        if Instant::now() > deadline {
            return Err("the uinput device's /dev/input node never appeared".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a node and grabs it, as the POS app or `evtest --grab` would: the returned descriptor
/// (non-blocking) gets every event of the node until it is released or closed.
fn hold(node: &Path) -> Res<Device> {
    let mut device = Device::open(node).context(format_args!("open {}", node.display()))?;
    device
        .grab()
        .context(format_args!("grab {}", node.display()))?;
    device
        .set_nonblocking(true)
        .context(format_args!("make {} non-blocking", node.display()))?;
    Ok(device)
}

/// Creates a reader named `name` and grabs its node at once.
async fn hold_new_device(name: &str) -> Res<(VirtualDevice, PathBuf, Device)> {
    let mut device = create_device(name)?;
    let node = dev_node(&mut device).await?;
    let holder = hold(&node)?;
    Ok((device, node, holder))
}

fn signal(pid: nix::unistd::Pid, signal: nix::sys::signal::Signal) -> Res<()> {
    nix::sys::signal::kill(pid, signal).context(format_args!("send {signal} to tillgated"))
}

/// Opens a node as a second, non-grabbing, non-blocking reader.
fn open_spy(node: &Path) -> Res<Device> {
    let device = Device::open(node).context(format_args!("open {}", node.display()))?;
    device
        .set_nonblocking(true)
        .context(format_args!("make {} non-blocking", node.display()))?;
    Ok(device)
}

/// Reads everything queued on `spy` and counts the key events (press, release, repeat).
/// uinput delivers synchronously, so what was emitted before this call is already queued.
fn key_events(spy: &mut Device) -> Res<usize> {
    let mut count = 0;
    loop {
        match spy.fetch_events() {
            Ok(events) => count += events.filter(|e| e.event_type() == EventType::KEY).count(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(count),
            Err(e) => return Err(format!("read from the second reader: {e}")),
        }
    }
}

fn key(device: &mut VirtualDevice, code: KeyCode, value: i32) -> Res<()> {
    device
        .emit(&[InputEvent::new(EventType::KEY.0, code.0, value)])
        .context("emit a key event")
}

fn tap(device: &mut VirtualDevice, code: KeyCode) -> Res<()> {
    key(device, code, 1)?;
    key(device, code, 0)
}

/// The key events (press and release) `type_burst` emits for `text`.
fn burst_key_events(text: &str) -> Res<usize> {
    let mut count = 2; // Enter
    for c in text.chars() {
        count += if char_key(c)?.1 { 4 } else { 2 };
    }
    Ok(count)
}

/// Waits until what the daemon's Devices service lists for `node` (what `tillctl devices`
/// shows; None: not listed) is what `want` accepts.
async fn wait_device(
    client: &mut TillClient,
    node: &Path,
    want: impl Fn(Option<&tillgate_client::proto::InputDevice>) -> bool,
) -> Res<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let devices = client.list_devices().await.context("ListDevices")?;
        let device = devices.iter().find(|d| Path::new(&d.path) == node);
        if want(device) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "tillgated did not list {} as expected within {} s; it lists {device:?}",
                node.display(),
                PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the daemon holds the grab on `device`'s node: a shift tap on it no longer reaches
/// `spy`. A shift tap alone types nothing, so the daemon sees no frame from it. Returns when the
/// grab was first seen (probed every 10 ms).
async fn wait_grabbed(device: &mut VirtualDevice, spy: &mut Device, what: &str) -> Res<Instant> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        key_events(spy)?;
        tap(device, KeyCode::KEY_LEFTSHIFT)?;
        if key_events(spy)? == 0 {
            let seen = Instant::now();
            // Let the probing taps end their own "burst" before anything is typed next.
            tokio::time::sleep(SETTLE).await;
            return Ok(seen);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "tillgated did not {what} within {} s: its keystrokes still reach a second reader \
                 of the node",
                PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Longer than the framer's 100 ms gap: keys typed after this pause start a burst of their own.
const SETTLE: Duration = Duration::from_millis(250);

/// The key reader framer's longest gap between two keys of one burst (kernel timestamps).
const FRAME_GAP: Duration = Duration::from_millis(100);

/// Longest pause between two keys of a burst that still counts as one: the framer allows 100 ms
/// (kernel timestamps), this leaves room for the guest's scheduling.
const STALL: Duration = Duration::from_millis(60);

/// Presents `key_id` on the reader and expects the login of `user`. A busy host can stall the
/// whole guest for longer than the framer's gap in the middle of a burst; such a burst is not
/// what a reader types (the daemon frames a wrong id from it, which logs nobody in), so it is
/// typed again. `clock_step` moves the wall clock forward by that much in mid-burst (and back
/// after it). `source` names the reader, as the login's source shows it.
async fn present_key(
    reader: &mut VirtualDevice,
    events: &mut Streaming<SessionEvent>,
    key_id: &str,
    user: &str,
    previous: Option<&str>,
    clock_step: Option<Duration>,
    source: &str,
) -> Res<SessionEvent> {
    for _ in 0..3 {
        let slowest = type_burst(reader, key_id, clock_step).await?;
        if slowest <= STALL {
            let event = next_event(events)
                .await
                .context(format_args!("waiting for the key login of {user}"))?;
            return check_login(event, user, LoginMethod::Key, source, previous);
        }
        say(format_args!(
            "the guest stalled {} ms between two keys of the burst (busy host); typing it again",
            slowest.as_millis()
        ));
        if let Ok(event) = tokio::time::timeout(Duration::from_secs(2), next_event(events)).await {
            return check_login(event?, user, LoginMethod::Key, source, previous);
        }
    }
    Err("the host is too busy: three bursts in a row stalled the guest in mid-burst".into())
}

/// Types `key_id` as one burst, typing it again (after the framer's gap) if the guest stalled
/// in mid-burst for longer than that gap, so exactly one clean frame reaches the daemon.
/// Nothing is awaited from it. (A shorter stall still frames whole: typing it again would make
/// two logins.)
async fn type_clean_burst(reader: &mut VirtualDevice, key_id: &str) -> Res<()> {
    for _ in 0..3 {
        if type_burst(reader, key_id, None).await? <= FRAME_GAP {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err("the host is too busy: three bursts in a row stalled the guest in mid-burst".into())
}

/// Steps CLOCK_REALTIME by `step`, forward or back.
fn step_wall_clock(step: Duration, forward: bool) -> Res<()> {
    use nix::time::{ClockId, clock_gettime, clock_settime};
    let now = Duration::from(clock_gettime(ClockId::CLOCK_REALTIME).context("read the clock")?);
    let then = if forward {
        now + step
    } else {
        now.saturating_sub(step)
    };
    clock_settime(ClockId::CLOCK_REALTIME, then.into()).context("step the wall clock")
}

/// A keyboard-wedge reader: the whole id within a few ms per key, upper case with shift, Enter.
/// Returns the longest pause between two keys as the guest saw it. With `clock_step`, the wall
/// clock jumps forward that much halfway through and back after the burst.
async fn type_burst(
    device: &mut VirtualDevice,
    text: &str,
    clock_step: Option<Duration>,
) -> Res<Duration> {
    let mut slowest = Duration::ZERO;
    let mut last = Instant::now();
    for (i, c) in text.chars().enumerate() {
        if i == text.len() / 2
            && let Some(step) = clock_step
        {
            step_wall_clock(step, true)?;
        }
        let (code, shift) = char_key(c)?;
        slowest = slowest.max(last.elapsed());
        last = Instant::now();
        if shift {
            key(device, KeyCode::KEY_LEFTSHIFT, 1)?;
        }
        tap(device, code)?;
        if shift {
            key(device, KeyCode::KEY_LEFTSHIFT, 0)?;
        }
        // 2 to 5 ms between keys, as a wedge types.
        tokio::time::sleep(Duration::from_millis(2 + (i as u64 % 4))).await;
    }
    slowest = slowest.max(last.elapsed());
    tap(device, KeyCode::KEY_ENTER)?;
    if let Some(step) = clock_step {
        step_wall_clock(step, false)?;
    }
    Ok(slowest)
}

/// A person on a numeric keypad: ~80 ms key holds, ~150 ms from one press to the next, KP-Enter.
async fn type_human(device: &mut VirtualDevice, digits: &str) -> Res<()> {
    let codes = digits
        .chars()
        .map(|c| {
            c.to_digit(10)
                .map(|d| KEYPAD[d as usize])
                .ok_or_else(|| format!("{c:?} is not a digit"))
        })
        .collect::<Res<Vec<_>>>()?;
    for code in codes.into_iter().chain([KeyCode::KEY_KPENTER]) {
        key(device, code, 1)?;
        tokio::time::sleep(Duration::from_millis(80)).await;
        key(device, code, 0)?;
        tokio::time::sleep(Duration::from_millis(70)).await;
    }
    Ok(())
}

fn start_daemon() -> Res<Child> {
    let dir = Path::new(WORK_DIR);
    std::fs::create_dir_all(dir).context(format_args!("create {WORK_DIR}"))?;
    let config = dir.join("tillgated.toml");
    let sales_point = tillgate_tests::SALES_POINT;
    let text = format!(
        r#"[terminal]
sales_point_id = "{sales_point}"

[paths]
state_dir = "{WORK_DIR}/state"
runtime_dir = "{WORK_DIR}/run"

[sync]
listen = "127.0.0.1:0"

[log]
level = "info,tillgate_daemon=debug"

[input]
dir = "/dev/input"

[[input.rules]]
name = "{READER}"
role = "key_reader"
profile = "generic-wedge"

[[input.rules]]
name = "{PINPAD}"
role = "pin_pad"

[[input.rules]]
name = "{CONTESTED}"
role = "key_reader"
profile = "generic-wedge"
"#
    );
    std::fs::write(&config, text).context(format_args!("write {}", config.display()))?;
    let log = std::fs::File::create(log_path())
        .context(format_args!("create {}", log_path().display()))?;
    Command::new(TILLGATED)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context(format_args!("start {TILLGATED}"))
}

fn check_running(daemon: &mut Option<Child>) -> Res<()> {
    let child = daemon.as_mut().ok_or("tillgated is not running")?;
    match child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => {
            daemon.take();
            Err(format!("tillgated exited ({status})"))
        }
        Err(e) => Err(format!("wait for tillgated: {e}")),
    }
}

/// Waits for the login socket and the bound sync address; returns the sync URI.
async fn wait_ready(daemon: &mut Option<Child>, socket: &Path) -> Res<String> {
    let addr_file = Path::new(WORK_DIR).join("run").join("sync.addr");
    let deadline = Instant::now() + PATIENCE;
    loop {
        check_running(daemon)?;
        if let Ok(addr) = std::fs::read_to_string(&addr_file)
            && socket.exists()
        {
            return Ok(format!("http://{}", addr.trim()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "tillgated not ready within {} s",
                PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the daemon's log mentions `text` (it logs every device it attaches, by name).
async fn wait_for_log(daemon: &mut Option<Child>, text: &str) -> Res<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        check_running(daemon)?;
        if std::fs::read_to_string(log_path()).is_ok_and(|log| log.contains(text)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "tillgated did not log attaching {text} within {} s",
                PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The input device nodes the process holds open, as /proc shows them ("… (deleted)" for a node
/// that has been removed).
fn input_fds(pid: u32) -> Res<Vec<String>> {
    let dir = format!("/proc/{pid}/fd");
    let mut held = Vec::new();
    for entry in std::fs::read_dir(&dir).context(format_args!("list {dir}"))? {
        let Ok(entry) = entry else { continue };
        // A descriptor may close while we look: skip it.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with("/dev/input/") {
            held.push(target);
        }
    }
    held.sort();
    Ok(held)
}

/// Waits until the daemon holds no descriptor of a removed input node, while it keeps running.
async fn wait_released(daemon: &mut Option<Child>, pid: u32) -> Res<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        check_running(daemon)?;
        let stale = input_fds(pid)?
            .into_iter()
            .filter(|p| p.ends_with(" (deleted)"))
            .collect::<Vec<_>>();
        if stale.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} s after the unplug tillgated still holds {stale:?}",
                PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop_daemon(daemon: &mut Option<Child>) -> Res<()> {
    let mut child = daemon.take().ok_or("tillgated is not running")?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).context("pid")?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("SIGTERM tillgated")?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().context("wait for tillgated")? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("tillgated exited with {status} on SIGTERM"))
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("tillgated did not stop on SIGTERM".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Users for the test: one with the key, one with the PIN, cheap argon2 costs; and one whose
/// key is hashed with SLOW_COSTS. Every key login hashes under both schemes from then on.
fn snapshot() -> Res<tillgate_client::export::Snapshot> {
    let mut snapshot = cheap_snapshot()?;
    let (m_cost_kib, t_cost) = SLOW_COSTS;
    let mut slow_user = tillgate_tests::user(SLOW_USER, 3, None);
    slow_user["keys"] = json!([SLOW_KEY]);
    let mut account = tillgate_tests::account();
    account["m_cost_kib"] = json!(m_cost_kib);
    account["t_cost"] = json!(t_cost);
    let export = json!({
        "account": account,
        "cursor": { "epoch": 1, "revision": 1 },
        "users": [slow_user],
    });
    let started = Instant::now();
    let slow = SnapshotExport::parse(&export.to_string())
        .and_then(SnapshotExport::into_snapshot)
        .context("hash the slow user's key")?;
    say(format_args!(
        "slow user's key hashed with m={m_cost_kib} KiB t={t_cost} in {} ms",
        started.elapsed().as_millis()
    ));
    snapshot.users.extend(slow.users);
    Ok(snapshot)
}

fn cheap_snapshot() -> Res<tillgate_client::export::Snapshot> {
    let mut key_user = tillgate_tests::user(KEY_USER, 1, None);
    key_user["keys"] = json!([KEY_ID]);
    let mut contested_user = tillgate_tests::user(CONTESTED_USER, 4, None);
    contested_user["keys"] = json!([CONTESTED_KEY]);
    let export = json!({
        "account": tillgate_tests::account(),
        "cursor": { "epoch": 1, "revision": 1 },
        "roles": [tillgate_tests::role("cashier", &["sale"], &[])],
        "users": [key_user, tillgate_tests::user(PIN_USER, 2, Some(PIN)), contested_user],
    });
    SnapshotExport::parse(&export.to_string())
        .and_then(SnapshotExport::into_snapshot)
        .context("build the snapshot")
}

async fn next_event(events: &mut Streaming<SessionEvent>) -> Res<SessionEvent> {
    match tokio::time::timeout(PATIENCE, events.message()).await {
        Err(_) => Err(format!("no session event within {} s", PATIENCE.as_secs())),
        Ok(Err(status)) => Err(format!("WatchSession failed: {status}")),
        Ok(Ok(None)) => Err("WatchSession ended".into()),
        Ok(Ok(Some(event))) => Ok(event),
    }
}

/// The next event must be a LOGIN of `user` by `method` from the device named `device`,
/// replacing the session of `previous`.
async fn expect_login(
    events: &mut Streaming<SessionEvent>,
    user: &str,
    method: LoginMethod,
    device: &str,
    previous: Option<&str>,
) -> Res<SessionEvent> {
    let event = next_event(events)
        .await
        .context(format_args!("waiting for the {method:?} login of {user}"))?;
    check_login(event, user, method, device, previous)
}

fn check_login(
    event: SessionEvent,
    user: &str,
    method: LoginMethod,
    device: &str,
    previous: Option<&str>,
) -> Res<SessionEvent> {
    let session = event.session.as_ref();
    let ok = event.kind == SessionEventKind::Login as i32
        && session.and_then(|s| s.user.as_ref()).map(|u| u.id.as_str()) == Some(user)
        && session.map(|s| s.method) == Some(method as i32)
        && session.is_some_and(|s| s.source.contains(device))
        && event
            .previous
            .as_ref()
            .and_then(|s| s.user.as_ref())
            .map(|u| u.id.as_str())
            == previous;
    if ok {
        Ok(event)
    } else {
        Err(format!(
            "expected a LOGIN of {user} by {method:?} from {device} replacing {previous:?}, got {}",
            describe(&event)
        ))
    }
}

fn describe(event: &SessionEvent) -> String {
    let kind = SessionEventKind::try_from(event.kind)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|_| format!("kind {}", event.kind));
    let who = |s: Option<&tillgate_client::proto::Session>| match s {
        Some(s) => format!(
            "{} by {:?} from {:?}",
            s.user.as_ref().map(|u| u.id.as_str()).unwrap_or("?"),
            LoginMethod::try_from(s.method).unwrap_or(LoginMethod::Unspecified),
            s.source
        ),
        None => "nobody".into(),
    };
    format!(
        "#{} {kind}: {} (was {}) {:?}",
        event.sequence,
        who(event.session.as_ref()),
        who(event.previous.as_ref()),
        event.reason
    )
}
