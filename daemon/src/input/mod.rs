//! Hardware input decoding and framing: pure code fed with events that carry kernel timestamps.
//! The evdev and serial adapters in `crate::hardware` drive it; nothing here does I/O.

pub mod crc;
#[cfg(any(test, feature = "testing"))]
pub mod evemu;
pub mod event;
pub mod key_reader;
pub mod keymap;
pub mod pin_pad;
pub mod profile;
pub mod secret;
pub mod serial_frame;
#[cfg(test)]
pub mod synth;
