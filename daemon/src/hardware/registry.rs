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
    /// The last problem (open failure, read error), if any.
    pub error: String,
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

    /// Forgets every device (the readers are being restarted).
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn remove(&self, path: &Path) {
        self.lock().remove(path);
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
