//! Serial key readers: open the port, frame by line or STX…ETX, and re-open with backoff when
//! the port disappears (USB unplug, the other end of a pseudo-terminal closing).

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::SerialSettings;
use super::dispatch::{DeviceLabel, Framed, InputQueue};
use super::matching::DeviceInfo;
use super::registry::{ActivityKind, DeviceKind, DeviceState};
use crate::config::{DeviceRole, ParityConfig};
use crate::input::profile::Profile;
use crate::input::secret::Secret;
use crate::input::serial_frame::{SerialFramer, SerialOutcome};

const READ_TIMEOUT: Duration = Duration::from_millis(200);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Runs until the daemon stops.
pub async fn run(port: SerialSettings, profile: Option<Profile>, queue: InputQueue) {
    let Some(profile) = profile.map(Arc::new) else {
        // Validated at config load; kept as a guard.
        tracing::error!(port = %port.label, profile = %port.profile, "unknown reader profile");
        return;
    };
    let removal = profile.reader_config().removal_token.clone();
    let label = DeviceLabel::new(&port.label, "", port.path.clone());
    let registry = queue.registry.clone();
    registry.upsert(DeviceState {
        kind: DeviceKind::Serial,
        info: DeviceInfo {
            path: port.path.clone(),
            name: port.label.clone(),
            ..DeviceInfo::default()
        },
        rule: Some(format!("serial {} baud ({})", port.baud, port.profile)),
        role: Some(DeviceRole::KeyReader),
        grabbed: false,
        attached: false,
        error: String::new(),
        last_seen: None,
    });
    let mut backoff = BACKOFF_START;
    loop {
        match open(&port) {
            Ok(reader) => {
                backoff = BACKOFF_START;
                registry.update(&port.path, |s| {
                    s.attached = true;
                    s.error.clear();
                });
                tracing::info!(device = %label.source, "serial reader attached");
                queue.activity(
                    &label,
                    ActivityKind::Attached,
                    String::new(),
                    port.profile.clone(),
                );
                let (tx, mut rx) = mpsc::channel(16);
                let framer = SerialFramer::new(port.framer);
                let reading = tokio::task::spawn_blocking(move || read_frames(reader, framer, tx));
                while let Some(outcome) = rx.recv().await {
                    let framed = match outcome {
                        SerialOutcome::Frame(bytes) => match bytes.to_text() {
                            Some(text) if removal.as_deref() == Some(text.expose().trim()) => {
                                Framed::Removal
                            }
                            Some(text) => Framed::Key(Secret::new(text.expose().trim().to_owned())),
                            None => Framed::Rejected("frame is not text".into()),
                        },
                        SerialOutcome::Rejected(reason) => Framed::Rejected(format!("{reason:?}")),
                    };
                    queue.push(&label, Some(&profile), framed);
                }
                let reason = match reading.await {
                    Ok(reason) => reason,
                    Err(e) => io::Error::other(e.to_string()),
                };
                tracing::info!(device = %label.source, error = %reason, "serial reader detached; re-opening");
                registry.detach(&port.path, reason.to_string());
                queue.detached(&label, reason.to_string());
            }
            Err(e) => {
                tracing::debug!(device = %label.source, error = %e, retry = ?backoff, "serial reader not available");
                registry.update(&port.path, |s| s.error = e.to_string());
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn open(port: &SerialSettings) -> serialport::Result<Box<dyn serialport::SerialPort>> {
    let data_bits = match port.data_bits {
        5 => serialport::DataBits::Five,
        6 => serialport::DataBits::Six,
        7 => serialport::DataBits::Seven,
        _ => serialport::DataBits::Eight,
    };
    serialport::new(port.path.to_string_lossy(), port.baud)
        .data_bits(data_bits)
        .parity(match port.parity {
            ParityConfig::None => serialport::Parity::None,
            ParityConfig::Odd => serialport::Parity::Odd,
            ParityConfig::Even => serialport::Parity::Even,
        })
        .stop_bits(if port.stop_bits == 2 {
            serialport::StopBits::Two
        } else {
            serialport::StopBits::One
        })
        .flow_control(serialport::FlowControl::None)
        .timeout(READ_TIMEOUT)
        .open()
}

/// Blocking read loop (a thread of its own); returns why the port stopped being readable.
fn read_frames(
    mut reader: Box<dyn serialport::SerialPort>,
    mut framer: SerialFramer,
    frames: mpsc::Sender<SerialOutcome>,
) -> io::Error {
    let mut buf = [0u8; 256];
    loop {
        match reader.read(&mut buf) {
            // End of file: the other side went away.
            Ok(0) => return io::Error::new(io::ErrorKind::UnexpectedEof, "port closed"),
            Ok(n) => {
                for outcome in framer.push(&buf[..n]) {
                    if frames.blocking_send(outcome).is_err() {
                        return io::Error::other("daemon stopping");
                    }
                }
                buf[..n].fill(0);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                ) =>
            {
                if frames.is_closed() {
                    return io::Error::other("daemon stopping");
                }
            }
            Err(e) => return e,
        }
    }
}
