//! evdev adapter: discovers PIN pads and key readers under the input directory, follows
//! hot-plug with inotify, grabs readers, and feeds their key events to the framers. A device
//! task only reads and frames: what it frames goes onto the dispatcher's queue without waiting,
//! so an unplug ends the task at once whatever logins are still hashing.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use evdev::raw_stream::RawDevice;
use futures::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::InputSettings;
use super::clock::EventClock;
use super::dispatch::{DeviceLabel, Framer, InputQueue};
use super::matching::{CompiledRule, DeviceInfo, first_match};
use super::registry::{ActivityKind, DeviceKind, DeviceState};
use crate::config::DeviceRole;
use crate::input::event::InputEvent;
use crate::input::pin_pad::PinPad;
use crate::input::profile::Profile;

/// Opening a new node is retried (udev may set its permissions a moment after it appears)
/// with this backoff, until it opens or the node is gone; an inotify event on the node retries
/// at once.
const OPEN_RETRY_FIRST: Duration = Duration::from_millis(10);
const OPEN_RETRY_MAX: Duration = Duration::from_secs(2);
/// How long to wait for held keys to be released before grabbing anyway.
const GRAB_WAIT: Duration = Duration::from_secs(2);
const DIR_RETRY: Duration = Duration::from_secs(5);
const GRAB_BUSY_RETRY: Duration = Duration::from_millis(20);
const GRAB_BUSY_ATTEMPTS: u32 = 150;

/// One node's task: at most one per path.
#[derive(Debug, Default)]
struct Slot {
    /// The node was created again or changed while its task was busy: when the task ends
    /// (the old device is gone), it serves the path once more.
    again: AtomicBool,
    /// Wakes a task that is waiting to retry opening the node.
    poke: Notify,
}

struct Context {
    settings: Arc<InputSettings>,
    queue: InputQueue,
    slots: Mutex<HashMap<PathBuf, Arc<Slot>>>,
}

/// Runs until `stop` turns true (then every device is released before it returns) or the task
/// is aborted.
pub async fn run(
    settings: Arc<InputSettings>,
    queue: InputQueue,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let ctx = Arc::new(Context {
        settings,
        queue,
        slots: Mutex::new(HashMap::new()),
    });
    let dir = ctx.settings.dir.clone();
    // Device tasks belong to this set: when this task is aborted (shutdown, reload), dropping
    // the set aborts them and releases (ungrabs) every device.
    let mut devices = JoinSet::new();
    loop {
        // Watch first, then scan, so a node created in between is not missed.
        match watch(&dir) {
            Ok(mut events) => {
                scan(&ctx, &dir, &mut devices);
                loop {
                    let event = tokio::select! {
                        event = events.next() => event,
                        Some(_) = devices.join_next(), if !devices.is_empty() => continue,
                        () = stopped(&mut stop) => {
                            devices.shutdown().await;
                            return;
                        }
                    };
                    let Some(event) = event else { break };
                    match event {
                        Ok(event) => {
                            let Some(name) = event.name.as_deref().filter(|n| is_event_node(n))
                            else {
                                continue;
                            };
                            let path = dir.join(name);
                            if event.mask.contains(inotify::EventMask::DELETE) {
                                // A task opening it sees NotFound and ends; one reading it
                                // sees ENODEV and marks it detached.
                                ctx.queue.registry.node_removed(&path);
                            } else {
                                attach(&ctx, path, &mut devices);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(dir = %dir.display(), error = %e, "input directory watch failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, retry = ?DIR_RETRY, "cannot watch the input directory");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(DIR_RETRY) => {}
            () = stopped(&mut stop) => {
                devices.shutdown().await;
                return;
            }
        }
    }
}

fn watch(dir: &Path) -> io::Result<inotify::EventStream<[u8; 4096]>> {
    let inotify = Inotify::init()?;
    inotify.watches().add(
        dir,
        WatchMask::CREATE | WatchMask::ATTRIB | WatchMask::DELETE,
    )?;
    inotify.into_event_stream([0u8; 4096])
}

fn is_event_node(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with("event"))
}

fn scan(ctx: &Arc<Context>, dir: &Path, devices: &mut JoinSet<()>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list the input directory");
            return;
        }
    };
    for entry in entries.flatten() {
        if is_event_node(&entry.file_name()) {
            attach(ctx, entry.path(), devices);
        }
    }
}

/// Starts a task that opens, matches and reads `path`. When a task is already on it (a fast
/// re-plug: the old device's task is ending; or udev changing the node's permissions while it
/// is being opened), that task is asked to try the node again instead.
fn attach(ctx: &Arc<Context>, path: PathBuf, devices: &mut JoinSet<()>) {
    let slot = {
        let mut slots = ctx.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(&path) {
            slot.again.store(true, Ordering::SeqCst);
            slot.poke.notify_one();
            return;
        }
        let slot = Arc::new(Slot::default());
        slots.insert(path.clone(), slot.clone());
        slot
    };
    let ctx = ctx.clone();
    devices.spawn(async move {
        loop {
            serve_device(&ctx, &path, &slot).await;
            let mut slots = ctx.slots.lock().unwrap_or_else(|p| p.into_inner());
            if !slot.again.swap(false, Ordering::SeqCst) {
                slots.remove(&path);
                return;
            }
        }
    });
}

/// Opens the node, retrying until it opens or is gone (NotFound).
async fn open_until_gone(path: &Path, slot: &Slot) -> io::Result<RawDevice> {
    let mut delay = OPEN_RETRY_FIRST;
    loop {
        slot.again.store(false, Ordering::SeqCst);
        match RawDevice::open(path) {
            Ok(device) => return Ok(device),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
            Err(e) => {
                if delay == OPEN_RETRY_MAX {
                    tracing::debug!(path = %path.display(), error = %e, "input node not readable yet; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = slot.poke.notified() => {}
                }
                delay = (delay * 2).min(OPEN_RETRY_MAX);
            }
        }
    }
}

fn describe(device: &RawDevice, path: &Path, dir: &Path) -> DeviceInfo {
    let id = device.input_id();
    DeviceInfo {
        path: path.to_owned(),
        name: device.name().unwrap_or_default().to_owned(),
        vendor: id.vendor(),
        product: id.product(),
        phys: device.physical_path().unwrap_or_default().to_owned(),
        uniq: device.unique_name().unwrap_or_default().to_owned(),
        by_id: links_to(path, &[dir.join("by-id"), dir.join("by-path")]),
    }
}

/// The udev symlinks in `dirs` that point at `path`.
fn links_to(path: &Path, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(target) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let mut links: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .map(|entry| entry.path())
        .filter(|link| std::fs::canonicalize(link).is_ok_and(|t| t == target))
        .collect();
    links.sort();
    links
}

async fn serve_device(ctx: &Context, path: &Path, slot: &Slot) {
    let registry = &ctx.queue.registry;
    let mut device = match open_until_gone(path, slot).await {
        Ok(device) => device,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "input node gone before it opened");
            return;
        }
    };
    // First thing after opening: changing the clock flushes what is already queued (the kernel
    // then queues SYN_DROPPED), and right now the queue is empty or nearly so.
    let (clock, refused) = EventClock::select_monotonic(&device);
    let info = describe(&device, path, &ctx.settings.dir);
    let rule = first_match(&ctx.settings.rules, &info).cloned();
    let mut state = DeviceState {
        kind: DeviceKind::Evdev,
        info: info.clone(),
        rule: rule.as_ref().map(CompiledRule::describe),
        role: rule.as_ref().map(|r| r.role),
        grabbed: false,
        attached: false,
        error: String::new(),
        last_seen: None,
    };
    let Some(rule) = rule else {
        tracing::debug!(path = %path.display(), name = %info.name, "input device matches no rule; left alone");
        registry.upsert(state);
        return;
    };
    let label = DeviceLabel::new(&info.name, &info.phys, path.to_owned());
    if let Some(e) = refused {
        tracing::warn!(device = %label.source, error = %e, "kernel refused monotonic event timestamps; a wall-clock step during a burst can split it");
    }
    let (mut framer, profile) = match framer_for(&rule, ctx) {
        Ok(pair) => pair,
        Err(problem) => {
            state.error = problem;
            registry.upsert(state);
            return;
        }
    };
    if rule.grab {
        wait_for_release(&device).await;
        if let Err(e) = grab(&mut device).await {
            tracing::warn!(device = %label.source, error = %e, "could not grab the device; its keystrokes also reach other readers");
            state.error = format!("grab failed: {e}");
        } else {
            state.grabbed = true;
        }
    }
    let mut events = match device.into_event_stream() {
        Ok(events) => events,
        Err(e) => {
            state.error = format!("cannot read: {e}");
            registry.upsert(state);
            return;
        }
    };
    state.attached = true;
    registry.upsert(state);
    tracing::info!(device = %label.source, path = %path.display(), rule = %rule.describe(), grabbed = rule.grab, clock = clock.name(), "input device attached");
    ctx.queue.activity(
        &label,
        ActivityKind::Attached,
        String::new(),
        rule.describe(),
    );

    let reason = loop {
        let deadline = framer.deadline();
        let wait = deadline.map(|d| d.saturating_sub(clock.now()));
        tokio::select! {
            event = events.next_event() => match event {
                Ok(event) => {
                    // The kernel's stamp on `clock`, as a duration since that clock's zero.
                    let time = event.timestamp().duration_since(UNIX_EPOCH).unwrap_or_default();
                    let event = InputEvent::new(time, event.event_type().0, event.code(), event.value());
                    for framed in framer.feed(&event) {
                        ctx.queue.push(&label, profile.as_ref(), framed);
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => break e,
            },
            () = sleep_for(wait) => {
                if let Some(framed) = framer.expire(clock.now()) {
                    ctx.queue.push(&label, profile.as_ref(), framed);
                }
            }
        }
    };
    // ENODEV when unplugged; the node's reappearance attaches it again through inotify.
    tracing::info!(device = %label.source, path = %path.display(), error = %reason, "input device detached");
    registry.detach(path, reason.to_string());
    ctx.queue.detached(&label, reason.to_string());
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

fn framer_for(
    rule: &CompiledRule,
    ctx: &Context,
) -> Result<(Framer, Option<Arc<Profile>>), String> {
    match rule.role {
        DeviceRole::PinPad => PinPad::new(ctx.settings.pin_pad.clone())
            .map(|pad| (Framer::PinPad(pad), None))
            .map_err(|e| e.to_string()),
        DeviceRole::KeyReader => {
            let profile = ctx
                .settings
                .profiles
                .get(&rule.profile)
                .cloned()
                .ok_or_else(|| format!("unknown profile {}", rule.profile))?;
            Ok((
                Framer::KeyReader(profile.key_reader()),
                Some(Arc::new(profile)),
            ))
        }
    }
}

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // The borrow the wait returns is dropped here, before the caller awaits anything else.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// EVIOCGRAB; EBUSY means another descriptor still holds the grab (a reader set being
/// replaced by a reload is closing it): retry for up to 3 s before giving up.
async fn grab(device: &mut RawDevice) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        match device.grab() {
            Err(e)
                if e.raw_os_error() == Some(nix::libc::EBUSY) && attempts < GRAB_BUSY_ATTEMPTS =>
            {
                attempts += 1;
                tokio::time::sleep(GRAB_BUSY_RETRY).await;
            }
            other => return other,
        }
    }
}

/// Grabbing while a key is down would leave it stuck down for the desktop.
async fn wait_for_release(device: &RawDevice) {
    let deadline = tokio::time::Instant::now() + GRAB_WAIT;
    while tokio::time::Instant::now() < deadline {
        match device.get_key_state() {
            Ok(keys) if keys.iter().next().is_some() => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            _ => return,
        }
    }
}
