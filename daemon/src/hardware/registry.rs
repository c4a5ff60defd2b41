//! What the daemon knows about input devices right now, and a live feed of their activity
//! (`tillctl devices`, `tillctl devices --watch`). Nothing secret is kept: framed input appears
//! only as its length.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::broadcast;

use super::matching::DeviceInfo;
use crate::config::DeviceRole;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Evdev,
    Serial,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub kind: DeviceKind,
    pub info: DeviceInfo,
    /// The rule that matched (description), if any.
    pub rule: Option<String>,
    pub role: Option<DeviceRole>,
    pub grabbed: bool,
    /// Being read now.
    pub attached: bool,
    /// The last problem (open failure, read error, a grab another process holds), if any.
    pub error: String,
    /// When the device was last being read: set when it detaches (unplug, port gone), so
    /// `tillctl devices` keeps showing it as detached until the daemon restarts.
    pub last_seen: Option<SystemTime>,
}

impl DeviceState {
    /// Once read under a rule and no longer: unplugged, or its port went away.
    pub fn detached(&self) -> bool {
        !self.attached && self.last_seen.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    Attached,
    Detached,
    Pin,
    Key,
    Removal,
    BadRead,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputActivity {
    pub at: SystemTime,
    pub device: String,
    pub path: PathBuf,
    pub kind: ActivityKind,
    /// "**** (4)": never the content.
    pub masked: String,
    pub outcome: String,
}

pub fn mask(len: usize) -> String {
    format!("**** ({len})")
}

#[derive(Debug)]
pub struct DeviceRegistry {
    devices: Mutex<BTreeMap<PathBuf, DeviceState>>,
    activity: broadcast::Sender<InputActivity>,
}

impl Default for DeviceRegistry {
    fn default() -> Self {
        DeviceRegistry {
            devices: Mutex::new(BTreeMap::new()),
            activity: broadcast::channel(256).0,
        }
    }
}

impl DeviceRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, DeviceState>> {
        // Plain map updates cannot be left half-done by a panic.
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn upsert(&self, state: DeviceState) {
        self.lock().insert(state.info.path.clone(), state);
    }

    pub fn update(&self, path: &Path, f: impl FnOnce(&mut DeviceState)) {
        if let Some(state) = self.lock().get_mut(path) {
            f(state);
        }
    }

    /// Marks `path` detached now (it was being read and no longer is), with why.
    pub fn detach(&self, path: &Path, reason: String) {
        self.update(path, |s| {
            s.attached = false;
            s.grabbed = false;
            s.error = reason;
            s.last_seen = Some(SystemTime::now());
        });
    }

    /// The readers are being restarted: every device read so far is detached now; a device
    /// that was never read (no rule matched) is forgotten, the new rules may match it.
    pub fn all_detached(&self) {
        let now = SystemTime::now();
        self.lock().retain(|_, s| {
            if s.attached {
                s.attached = false;
                s.grabbed = false;
                s.last_seen = Some(now);
            }
            s.last_seen.is_some()
        });
    }

    /// A node was removed: forget it unless it was read under a rule (then its reader
    /// marks it detached and it stays listed).
    pub fn node_removed(&self, path: &Path) {
        let mut devices = self.lock();
        if devices
            .get(path)
            .is_some_and(|s| s.role.is_none() || (!s.attached && s.last_seen.is_none()))
        {
            devices.remove(path);
        }
    }

    pub fn list(&self) -> Vec<DeviceState> {
        self.lock().values().cloned().collect()
    }

    /// Devices being read now.
    pub fn attached_count(&self) -> usize {
        self.lock().values().filter(|d| d.attached).count()
    }

    pub fn publish(&self, activity: InputActivity) {
        // Nobody watching is fine.
        let _ = self.activity.send(activity);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<InputActivity> {
        self.activity.subscribe()
    }
}
