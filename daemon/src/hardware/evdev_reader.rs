//! evdev adapter: discovers PIN pads and key readers under the input directory, follows
//! hot-plug with inotify, grabs readers, and feeds their key events to the framers. A device
//! task only reads and frames: what it frames goes onto the dispatcher's queue without waiting,
//! so an unplug ends the task at once whatever logins are still hashing. A device whose rule
//! says grab is not read until this daemon holds its grab (policy in [`super::grab`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use evdev::raw_stream::{EventStream, RawDevice};
use futures::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::InputSettings;
use super::clock::EventClock;
use super::dispatch::{DeviceLabel, Framer, InputQueue};
use super::grab::{self, GrabRetry};
use super::matching::{CompiledRule, DeviceInfo, first_match};
use super::registry::{ActivityKind, DeviceKind, DeviceRegistry, DeviceState};
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
    let device = match open_until_gone(path, slot).await {
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
    let mut events = match device.into_event_stream() {
        Ok(events) => events,
        Err(e) => {
            state.error = format!("cannot read: {e}");
            registry.upsert(state);
            return;
        }
    };
    // Input that reached this descriptor before its grab also reached every other reader of the
    // node: it is not ours to decode. What was stamped after it is.
    let mut after_grab = Vec::new();
    let grabbed = if rule.grab {
        let grabbed = match grab_when_free(&mut events, &label, slot, clock, &mut state, registry)
            .await
        {
            Ok(grabbed) => grabbed,
            Err(e) => {
                tracing::debug!(device = %label.source, path = %path.display(), error = %e, "input device gone before it could be grabbed");
                // Never read, so not kept as detached.
                registry.node_removed(path);
                return;
            }
        };
        match discard_before_grab(&mut events, grabbed.at) {
            Ok(after) => after_grab = after,
            Err(e) => {
                tracing::debug!(device = %label.source, path = %path.display(), error = %e, "input device gone as it was grabbed");
                registry.node_removed(path);
                return;
            }
        }
        Some(grabbed)
    } else {
        None
    };
    state.grabbed = grabbed.is_some();
    state.attached = true;
    state.error.clear();
    registry.upsert(state);
    tracing::info!(
        device = %label.source,
        path = %path.display(),
        rule = %rule.describe(),
        grabbed = grabbed.is_some(),
        failed_grabs = grabbed.map_or(0, |g| g.failures),
        clock = clock.name(),
        "input device attached"
    );
    ctx.queue.activity(
        &label,
        ActivityKind::Attached,
        String::new(),
        rule.describe(),
    );

    let feed = |framer: &mut Framer, event: evdev::InputEvent| {
        // The kernel's stamp on `clock`, as a duration since that clock's zero.
        let event = InputEvent::new(
            stamp(&event),
            event.event_type().0,
            event.code(),
            event.value(),
        );
        for framed in framer.feed(&event) {
            ctx.queue.push(&label, profile.as_ref(), framed);
        }
    };
    for event in after_grab {
        feed(&mut framer, event);
    }
    let reason = loop {
        let deadline = framer.deadline();
        let wait = deadline.map(|d| d.saturating_sub(clock.now()));
        tokio::select! {
            event = events.next_event() => match event {
                Ok(event) => feed(&mut framer, event),
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

/// An event's kernel timestamp on its device's clock, as a duration since that clock's zero.
fn stamp(event: &evdev::InputEvent) -> Duration {
    event
        .timestamp()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// When this daemon's grab of a device took effect (on the device's event clock), and how many
/// attempts failed before it.
#[derive(Debug, Clone, Copy)]
struct Grabbed {
    at: Duration,
    failures: u32,
}

/// EVIOCGRAB, retried with a backoff for as long as the node exists while another descriptor
/// holds the grab (the POS app, X, `evtest --grab`; or, for a moment, the reader set a reload
/// is replacing). Until it succeeds the device is listed as waiting and is not read: whatever
/// reaches this descriptor meanwhile is drained and dropped (reading is also how its removal
/// shows). Err: the node is gone.
async fn grab_when_free(
    events: &mut EventStream,
    label: &DeviceLabel,
    slot: &Slot,
    clock: EventClock,
    state: &mut DeviceState,
    registry: &DeviceRegistry,
) -> io::Result<Grabbed> {
    let mut retry = GrabRetry::default();
    loop {
        wait_for_release(events.device()).await;
        let error = match events.device_mut().grab() {
            Ok(()) => {
                let failures = retry.failures();
                if failures > 0 {
                    tracing::info!(device = %label.source, failed_grabs = failures, "input device no longer held by another process: grabbed");
                }
                return Ok(Grabbed {
                    at: clock.now(),
                    failures,
                });
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => return Err(e),
            Err(e) => e,
        };
        let text = grab::waiting_text(&error);
        let next = retry.failed(&text);
        if next.changed {
            state.error.clone_from(&text);
            registry.upsert(state.clone());
        }
        if next.log && next.failures == 1 {
            tracing::warn!(device = %label.source, state = %text, "input device not read until this daemon can grab it (its keystrokes go to whoever holds it)");
        } else if next.log {
            tracing::warn!(device = %label.source, state = %text, failed_grabs = next.failures, retry = ?next.delay, "input device still not grabbed; not read");
        }
        drain_for(events, next.delay, slot).await?;
    }
}

/// Reads and drops what arrives for `delay` (or until the node is poked by inotify).
async fn drain_for(events: &mut EventStream, delay: Duration, slot: &Slot) -> io::Result<()> {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return Ok(()),
            () = slot.poke.notified() => return Ok(()),
            event = events.next_event() => match event {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(e),
            },
        }
    }
}

/// Drops every event that was queued for this descriptor before its grab took effect at
/// `grabbed_at`: the kernel had also delivered it to every other reader of the node. Reads the
/// descriptor itself until it would block (the stream's readiness may not know of input queued
/// before it was registered); returns what was stamped after the grab, to be decoded.
fn discard_before_grab(
    events: &mut EventStream,
    grabbed_at: Duration,
) -> io::Result<Vec<evdev::InputEvent>> {
    let mut after = Vec::new();
    let mut dropped = 0usize;
    loop {
        // Also yields what the stream had buffered but not handed out yet: read before the
        // grab, so dropped with the rest.
        match events.device_mut().fetch_events() {
            Ok(batch) => {
                for event in batch {
                    if grab::before_grab(stamp(&event), grabbed_at) {
                        dropped += 1;
                    } else {
                        after.push(event);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if dropped > 0 {
        tracing::debug!(
            events = dropped,
            "dropped input queued before the grab: other readers had it too"
        );
    }
    Ok(after)
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
