//! The raw input event every decoder here is fed with, mirroring `struct input_event`.
//!
//! Keeping our own plain type (instead of the `evdev` crate's) keeps the decoders pure and lets
//! tests feed recordings parsed from evemu text. Note that the `code` of a key event reveals which
//! key was pressed: do not log events from PIN pads or readers.

use std::time::Duration;

/// `EV_SYN`: synchronisation events.
pub const EV_SYN: u16 = 0x00;
/// `EV_KEY`: key press / release / auto-repeat.
pub const EV_KEY: u16 = 0x01;
/// `EV_MSC`: miscellaneous (e.g. `MSC_SCAN` before each key); ignored by the framers.
pub const EV_MSC: u16 = 0x04;
/// `EV_LED`: keyboard LEDs (caps lock state).
pub const EV_LED: u16 = 0x11;

/// `SYN_REPORT`: end of one atomic batch of events.
pub const SYN_REPORT: u16 = 0;
/// `SYN_DROPPED`: the kernel buffer overflowed and events were lost until the next `SYN_REPORT`.
pub const SYN_DROPPED: u16 = 3;

/// `MSC_SCAN`: the hardware scan code of the following key event.
pub const MSC_SCAN: u16 = 4;

/// Key event value: released.
pub const KEY_UP: i32 = 0;
/// Key event value: pressed.
pub const KEY_DOWN: i32 = 1;
/// Key event value: auto-repeat of a held key.
pub const KEY_REPEAT: i32 = 2;

/// One input event. `time` is the kernel timestamp (seconds + microseconds as a `Duration`);
/// the daemon should select `CLOCK_MONOTONIC` on the device so timestamps never jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InputEvent {
    /// Kernel timestamp of the event.
    pub time: Duration,
    /// Event type (`EV_*`); `type` is a keyword.
    pub kind: u16,
    /// Event code (`KEY_*`, `SYN_*`, ...).
    pub code: u16,
    /// Event value (key: 0 up, 1 down, 2 repeat).
    pub value: i32,
}

impl InputEvent {
    /// Builds an event.
    pub const fn new(time: Duration, kind: u16, code: u16, value: i32) -> Self {
        Self {
            time,
            kind,
            code,
            value,
        }
    }

    /// A key event (`EV_KEY`).
    pub const fn key(time: Duration, code: u16, value: i32) -> Self {
        Self::new(time, EV_KEY, code, value)
    }

    /// A `SYN_REPORT`.
    pub const fn syn_report(time: Duration) -> Self {
        Self::new(time, EV_SYN, SYN_REPORT, 0)
    }

    /// A `SYN_DROPPED`.
    pub const fn syn_dropped(time: Duration) -> Self {
        Self::new(time, EV_SYN, SYN_DROPPED, 0)
    }

    /// True for `SYN_DROPPED`.
    pub const fn is_syn_dropped(&self) -> bool {
        self.kind == EV_SYN && self.code == SYN_DROPPED
    }

    /// True for `SYN_REPORT`.
    pub const fn is_syn_report(&self) -> bool {
        self.kind == EV_SYN && self.code == SYN_REPORT
    }
}
