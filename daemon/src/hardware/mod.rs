//! Hardware input adapters: evdev PIN pads and key readers (grabbed, decoded by key position, so
//! independent of the keyboard layout) and serial key readers. Framed PINs and key ids go through
//! exactly the same resolution as a gRPC login; the session change reaches WatchSession.

pub mod capture;
pub mod clock;
pub mod dispatch;
pub mod evdev_reader;
pub mod grab;
pub mod matching;
pub mod profiles;
pub mod registry;
pub mod serial_reader;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigError, InputConfig, ParityConfig, SerialFramingConfig, invalid};
use crate::input::pin_pad::PinPadConfig;
use crate::input::profile::Profile;
use crate::input::serial_frame::{SerialFramerConfig, SerialFraming};

pub use dispatch::{Dispatcher, InputQueue};
pub use matching::{CompiledRule, DeviceInfo};
pub use registry::{ActivityKind, DeviceRegistry, DeviceState, InputActivity};

/// The validated `[input]` section.
#[derive(Debug, Clone)]
pub struct InputSettings {
    pub dir: PathBuf,
    pub rules: Vec<CompiledRule>,
    pub serial: Vec<SerialSettings>,
    pub pin_pad: PinPadConfig,
    /// Built-in and configured reader profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// The `[input]` section as written, so a reload can tell whether it changed.
    pub source: InputConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub label: String,
    pub path: PathBuf,
    pub baud: u32,
    pub parity: ParityConfig,
    pub data_bits: u8,
    pub stop_bits: u8,
    pub framer: SerialFramerConfig,
    pub profile: String,
}

impl InputSettings {
    pub fn from_config(config: &InputConfig) -> Result<InputSettings, ConfigError> {
        let profiles = profiles::build(&config.profiles)?;
        let known = |name: &str| profiles.contains_key(name);
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| CompiledRule::compile(i, rule, &known))
            .collect::<Result<Vec<_>, _>>()?;
        let pin_pad = PinPadConfig {
            idle_timeout: Duration::from_millis(config.pin_pad.idle_timeout_ms),
            min_len: config.pin_pad.min_len,
            max_len: config.pin_pad.max_len,
            fixed_len: config.pin_pad.fixed_len,
            ..PinPadConfig::default()
        };
        pin_pad
            .validate()
            .map_err(|e| invalid("input.pin_pad", e.to_string()))?;
        let mut serial = Vec::with_capacity(config.serial.len());
        for (i, port) in config.serial.iter().enumerate() {
            let key = |field: &str| format!("input.serial[{i}].{field}");
            if port.path.as_os_str().is_empty() {
                return Err(invalid(key("path"), "must not be empty"));
            }
            if port.baud == 0 {
                return Err(invalid(key("baud"), "must be greater than 0"));
            }
            if !(5..=8).contains(&port.data_bits) {
                return Err(invalid(
                    key("data_bits"),
                    format!("{} is not 5, 6, 7 or 8", port.data_bits),
                ));
            }
            if !(1..=2).contains(&port.stop_bits) {
                return Err(invalid(
                    key("stop_bits"),
                    format!("{} is not 1 or 2", port.stop_bits),
                ));
            }
            let Some(profile) = profiles.get(&port.profile) else {
                return Err(invalid(
                    key("profile"),
                    format!(
                        "unknown profile {:?}; known: {}",
                        port.profile,
                        known_names(&profiles)
                    ),
                ));
            };
            serial.push(SerialSettings {
                label: port
                    .name
                    .clone()
                    .unwrap_or_else(|| port.path.display().to_string()),
                path: port.path.clone(),
                baud: port.baud,
                parity: port.parity,
                data_bits: port.data_bits,
                stop_bits: port.stop_bits,
                framer: SerialFramerConfig {
                    framing: match port.framing {
                        SerialFramingConfig::Line => SerialFraming::Lines,
                        SerialFramingConfig::StxEtx => SerialFraming::StxEtx,
                    },
                    max_len: profile.reader_config().max_frame_len().max(16),
                },
                profile: port.profile.clone(),
            });
        }
        Ok(InputSettings {
            dir: config.dir.clone(),
            rules,
            serial,
            pin_pad,
            profiles,
            source: config.clone(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.serial.is_empty()
    }
}

pub fn known_names(profiles: &BTreeMap<String, Profile>) -> String {
    profiles
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The readers of one input configuration.
#[derive(Debug)]
struct Readers {
    /// The evdev watcher and the signal that asks it to release its devices and stop.
    evdev: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Sender<bool>,
    )>,
    serial: Vec<tokio::task::JoinHandle<()>>,
}

/// How long a reader set may take to release its devices before it is aborted.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl Readers {
    fn start(settings: &Arc<InputSettings>, queue: &InputQueue) -> Readers {
        let evdev = (!settings.rules.is_empty()).then(|| {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(evdev_reader::run(settings.clone(), queue.clone(), stopped));
            (task, stop)
        });
        let serial = settings
            .serial
            .iter()
            .cloned()
            .map(|port| {
                let profile = settings.profiles.get(&port.profile).cloned();
                tokio::spawn(serial_reader::run(port, profile, queue.clone()))
            })
            .collect();
        Readers { evdev, serial }
    }

    /// Stops every reader and waits until their devices are closed, so readers started next
    /// can grab them (a grab fails while an old descriptor still holds it).
    async fn stop(mut self) {
        if let Some((task, stop)) = self.evdev.take() {
            let _ = stop.send(true);
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
        for task in std::mem::take(&mut self.serial) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Readers {
    /// The supervisor itself was aborted (shutdown): stop everything without waiting.
    fn drop(&mut self) {
        if let Some((task, _)) = &self.evdev {
            task.abort();
        }
        for task in &self.serial {
            task.abort();
        }
    }
}

/// Runs the readers for the current input settings, and replaces them all whenever a reload
/// publishes new ones (devices are released, re-matched and grabbed again under the new
/// rules). The dispatcher runs in the same task, fed by the readers through the input queue.
/// Aborting the returned task stops every reader and the dispatcher.
pub fn supervise(
    mut settings: tokio::sync::watch::Receiver<Arc<InputSettings>>,
    dispatcher: Arc<Dispatcher>,
) -> tokio::task::JoinHandle<()> {
    let (queue, framed) = InputQueue::new(dispatcher.registry.clone(), dispatcher.captures.clone());
    let registry = dispatcher.registry.clone();
    let readers = async move {
        loop {
            let current = settings.borrow_and_update().clone();
            let readers = Readers::start(&current, &queue);
            if settings.changed().await.is_err() {
                // The sender is gone: keep these readers until the task is aborted.
                std::future::pending::<()>().await;
            }
            readers.stop().await;
            // Devices seen so far stay listed (as detached) until readers re-attach them.
            registry.all_detached();
            tracing::info!("input rules reloaded: readers restarted");
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            () = readers => {}
            () = dispatcher.run(framed) => {}
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings(input: &str) -> Result<InputSettings, ConfigError> {
        Config::parse(&format!("[terminal]\nsales_point_id = \"sp\"\n{input}"))?
            .validate()
            .map(|s| s.input)
    }

    #[test]
    fn input_section_parses_and_validates() {
        let s = settings(
            "[[input.rules]]\nname = \"Addimat*\"\nrole = \"key_reader\"\nprofile = \"addimat\"\n\
             [[input.rules]]\nvendor_product = \"04d9:1203\"\nrole = \"pin_pad\"\n\
             [[input.serial]]\npath = \"/dev/ttyUSB0\"\nbaud = 19200\nframing = \"stx_etx\"\n\
             [input.pin_pad]\nidle_timeout_ms = 5000\n",
        )
        .unwrap();
        assert_eq!(s.rules.len(), 2);
        assert!(s.rules[0].grab && s.rules[1].grab);
        assert_eq!(s.serial[0].framer.framing, SerialFraming::StxEtx);
        assert_eq!(s.pin_pad.idle_timeout, Duration::from_secs(5));
        assert!(settings("").unwrap().is_empty());
    }

    #[test]
    fn input_errors_name_the_key() {
        let err = settings("[[input.serial]]\npath = \"/dev/ttyS0\"\nstop_bits = 3\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config key input.serial[0].stop_bits"),
            "{err}"
        );
        let err = settings("[input.pin_pad]\nmin_len = 9\n").unwrap_err();
        assert!(
            err.to_string().starts_with("config key input.pin_pad:"),
            "{err}"
        );
        let err = settings("[[input.rules]]\nname = \"x\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config key input.rules[0].role"),
            "{err}"
        );
    }
}
