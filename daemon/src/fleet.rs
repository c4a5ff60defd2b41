//! Input devices as `GetSyncState` reports them to central. The hardware input module registers
//! each reader when it opens it and marks it disconnected when it goes away; this registry only
//! keeps the list.

use std::sync::RwLock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDeviceInfo {
    /// The configured reader name (also its lockout source: "device <name>").
    pub name: String,
    pub path: String,
    /// e.g. "ibutton", "rfid", "keyboard".
    pub kind: String,
    pub connected: bool,
}

#[derive(Debug, Default)]
pub struct DeviceRegistry {
    devices: RwLock<Vec<InputDeviceInfo>>,
}

impl DeviceRegistry {
    /// Adds a reader, or replaces the one with the same name.
    pub fn register(&self, device: InputDeviceInfo) {
        let mut devices = self.devices.write().unwrap_or_else(|p| p.into_inner());
        match devices.iter_mut().find(|d| d.name == device.name) {
            Some(existing) => *existing = device,
            None => devices.push(device),
        }
    }

    /// Marks a reader (dis)connected; false when no reader has that name.
    pub fn set_connected(&self, name: &str, connected: bool) -> bool {
        let mut devices = self.devices.write().unwrap_or_else(|p| p.into_inner());
        match devices.iter_mut().find(|d| d.name == name) {
            Some(device) => {
                device.connected = connected;
                true
            }
            None => false,
        }
    }

    /// Every registered reader, by name.
    pub fn list(&self) -> Vec<InputDeviceInfo> {
        let mut list = self
            .devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn reader(name: &str) -> InputDeviceInfo {
        InputDeviceInfo {
            name: name.into(),
            path: format!("/dev/{name}"),
            kind: "ibutton".into(),
            connected: true,
        }
    }

    #[test]
    fn register_replace_and_disconnect() {
        let registry = DeviceRegistry::default();
        registry.register(reader("b"));
        registry.register(reader("a"));
        registry.register(InputDeviceInfo {
            kind: "rfid".into(),
            ..reader("b")
        });
        assert!(registry.set_connected("a", false));
        assert!(!registry.set_connected("zz", false));
        let list = registry.list();
        assert_eq!(
            list.iter()
                .map(|d| (d.name.as_str(), d.kind.as_str(), d.connected))
                .collect::<Vec<_>>(),
            vec![("a", "ibutton", false), ("b", "rfid", true)]
        );
    }
}
