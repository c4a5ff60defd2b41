//! Which clock the kernel stamps a device's events with. evdev uses CLOCK_REALTIME unless told
//! otherwise, so a wall-clock step (NTP, an operator's `date -s`) in the middle of a reader's
//! burst would look like a long gap and split the key id. EVIOCSCLOCKID switches the device to
//! CLOCK_MONOTONIC; the framers' deadlines are then compared with the same clock.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// The clock a device's event timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClock {
    Monotonic,
    /// The kernel refused EVIOCSCLOCKID (very old kernels): wall-clock stamps, as before.
    Realtime,
}

impl EventClock {
    /// Switches `device`'s timestamps to CLOCK_MONOTONIC; on failure the device keeps
    /// CLOCK_REALTIME and the error says why.
    pub fn select_monotonic(device: &impl AsFd) -> (EventClock, Option<io::Error>) {
        match set_clock_id(device.as_fd(), nix::libc::CLOCK_MONOTONIC) {
            Ok(()) => (EventClock::Monotonic, None),
            Err(e) => (EventClock::Realtime, Some(io::Error::from(e))),
        }
    }

    /// Now, on this clock, as the duration since its zero (the form event timestamps take).
    pub fn now(self) -> Duration {
        match self {
            EventClock::Monotonic => clock_gettime(ClockId::CLOCK_MONOTONIC)
                .map(Duration::from)
                .unwrap_or_default(),
            EventClock::Realtime => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EventClock::Monotonic => "monotonic",
            EventClock::Realtime => "realtime",
        }
    }
}

// EVIOCSCLOCKID is _IOW('E', 0xa0, int): the kernel reads an int through the pointer. (The
// evdev crate declares it as a by-value int ioctl and does not export it.)
nix::ioctl_write_ptr!(eviocsclockid, b'E', 0xa0, nix::libc::c_int);

/// The daemon's one ioctl outside the evdev crate, isolated here as the socket-activation fd
/// takeover is in `systemd.rs`.
#[allow(unsafe_code)]
fn set_clock_id(fd: BorrowedFd<'_>, clock: nix::libc::c_int) -> nix::Result<()> {
    // SAFETY: `fd` is a live descriptor borrowed for the duration of the call, and the pointer
    // is to a local c_int that outlives it; EVIOCSCLOCKID only reads that int. On a descriptor
    // that is not an evdev node the kernel answers ENOTTY/EINVAL, it touches no memory of ours.
    unsafe { eviocsclockid(fd.as_raw_fd(), &clock) }.map(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_an_input_device_keeps_the_wall_clock_and_says_why() {
        let file = tempfile::tempfile().unwrap();
        let (clock, error) = EventClock::select_monotonic(&file);
        assert_eq!(clock, EventClock::Realtime);
        assert_eq!(
            error.and_then(|e| e.raw_os_error()),
            Some(nix::libc::ENOTTY)
        );
    }

    #[test]
    fn monotonic_now_is_not_the_wall_clock() {
        let wall = EventClock::Realtime.now();
        let mono = EventClock::Monotonic.now();
        // Since boot vs since 1970: decades apart on any machine this runs on.
        assert!(wall > mono + Duration::from_secs(365 * 24 * 3600));
        assert!(EventClock::Monotonic.now() >= mono);
    }
}
