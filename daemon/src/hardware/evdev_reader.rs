//! evdev adapter: discovers PIN pads and key readers under the input directory, follows
//! hot-plug with inotify, grabs readers, and feeds their key events to the framers.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use evdev::raw_stream::RawDevice;
use futures::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::task::JoinSet;

use super::InputSettings;
use super::dispatch::{DeviceLabel, Dispatcher, Framer};
use super::matching::{CompiledRule, DeviceInfo, first_match};
use super::registry::{ActivityKind, DeviceKind, DeviceState};
use crate::config::DeviceRole;
use crate::input::event::InputEvent;
use crate::input::pin_pad::PinPad;
use crate::input::profile::Profile;

/// Attempts to open a new node: udev may set its permissions a moment after it appears.
const OPEN_ATTEMPTS: u32 = 20;
const OPEN_RETRY: Duration = Duration::from_millis(100);
/// How long to wait for held keys to be released before grabbing anyway.
const GRAB_WAIT: Duration = Duration::from_secs(2);
const DIR_RETRY: Duration = Duration::from_secs(5);
const BUSY_RETRY: Duration = Duration::from_millis(500);
const GRAB_BUSY_ATTEMPTS: u32 = 30;

struct Context {
    settings: Arc<InputSettings>,
    dispatcher: Arc<Dispatcher>,
    /// Nodes with a task reading or opening them, so inotify bursts attach each once.
    busy: Mutex<HashSet<PathBuf>>,
}

/// Runs until `stop` turns true (then every device is released before it returns) or the task
/// is aborted.
pub async fn run(
    settings: Arc<InputSettings>,
    dispatcher: Arc<Dispatcher>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let ctx = Arc::new(Context {
        settings,
        dispatcher,
        busy: Mutex::new(HashSet::new()),
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
                                ctx.dispatcher.registry.remove(&path);
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

/// Starts a task that opens, matches and reads `path`, unless one is already on it. A node
/// re-created under the same name while the old task is still winding down (a fast re-plug) is
/// tried once more a moment later.
fn attach(ctx: &Arc<Context>, path: PathBuf, devices: &mut JoinSet<()>) {
    let ctx = ctx.clone();
    if claim(&ctx, &path) {
        devices.spawn(async move { serve_claimed(&ctx, &path).await });
    } else {
        devices.spawn(async move {
            tokio::time::sleep(BUSY_RETRY).await;
            if claim(&ctx, &path) {
                serve_claimed(&ctx, &path).await;
            }
        });
    }
}

fn claim(ctx: &Context, path: &Path) -> bool {
    ctx.busy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.to_owned())
}

async fn serve_claimed(ctx: &Context, path: &Path) {
    serve_device(ctx, path).await;
    ctx.busy
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(path);
}

async fn open_with_retry(path: &Path) -> io::Result<RawDevice> {
    let mut attempt = 0;
    loop {
        match RawDevice::open(path) {
            Ok(device) => return Ok(device),
            Err(e) if attempt + 1 < OPEN_ATTEMPTS && e.kind() != io::ErrorKind::NotFound => {
                attempt += 1;
                tokio::time::sleep(OPEN_RETRY).await;
            }
            Err(e) => return Err(e),
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

fn now_since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

async fn serve_device(ctx: &Context, path: &Path) {
    let registry = &ctx.dispatcher.registry;
    let mut device = match open_with_retry(path).await {
        Ok(device) => device,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "input node not readable");
            return;
        }
    };
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
    };
    let Some(rule) = rule else {
        tracing::debug!(path = %path.display(), name = %info.name, "input device matches no rule; left alone");
        registry.upsert(state);
        return;
    };
    let label = DeviceLabel::new(&info.name, &info.phys, path.to_owned());
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
    tracing::info!(device = %label.source, path = %path.display(), rule = %rule.describe(), grabbed = rule.grab, "input device attached");
    ctx.dispatcher.activity(
        &label,
        ActivityKind::Attached,
        String::new(),
        rule.describe(),
    );

    let reason = loop {
        let deadline = framer.deadline();
        let wait = deadline.map(|d| d.saturating_sub(now_since_epoch()));
        tokio::select! {
            event = events.next_event() => match event {
                Ok(event) => {
                    let time = event.timestamp().duration_since(UNIX_EPOCH).unwrap_or_default();
                    let event = InputEvent::new(time, event.event_type().0, event.code(), event.value());
                    for framed in framer.feed(&event) {
                        ctx.dispatcher.handle(&label, profile.as_ref(), framed).await;
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => break e,
            },
            () = sleep_for(wait) => {
                if let Some(framed) = framer.expire(now_since_epoch()) {
                    ctx.dispatcher.handle(&label, profile.as_ref(), framed).await;
                }
            }
        }
    };
    // ENODEV when unplugged; the node's reappearance attaches it again through inotify.
    tracing::info!(device = %label.source, path = %path.display(), error = %reason, "input device detached");
    registry.update(path, |s| {
        s.attached = false;
        s.grabbed = false;
        s.error = reason.to_string();
    });
    ctx.dispatcher.activity(
        &label,
        ActivityKind::Detached,
        String::new(),
        reason.to_string(),
    );
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

fn framer_for(rule: &CompiledRule, ctx: &Context) -> Result<(Framer, Option<Profile>), String> {
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
            Ok((Framer::KeyReader(profile.key_reader()), Some(profile)))
        }
    }
}

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // The borrow the wait returns is dropped here, before the caller awaits anything else.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// EVIOCGRAB; EBUSY means another descriptor still holds the grab (a reader set being
/// replaced by a reload is closing it): retry for a moment before giving up.
async fn grab(device: &mut RawDevice) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        match device.grab() {
            Err(e)
                if e.raw_os_error() == Some(nix::libc::EBUSY) && attempts < GRAB_BUSY_ATTEMPTS =>
            {
                attempts += 1;
                tokio::time::sleep(OPEN_RETRY).await;
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
