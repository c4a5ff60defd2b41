//! The throttle's clock: this boot's identity and its monotonic time (`CLOCK_BOOTTIME`, which
//! counts suspend and never steps), plus the wall clock for display.

use std::sync::OnceLock;
use std::time::SystemTime;

use nix::time::{ClockId, clock_gettime};

use crate::lockout::Now;

const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The moment now. Without a readable boot id (no /proc) every start counts as a new boot,
/// which only ever keeps lockouts longer.
pub fn now() -> Now {
    let mono_ms = clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1000) + nanos / 1_000_000
        })
        .unwrap_or(0);
    Now {
        boot: boot_id(),
        mono_ms,
        wall_ms: crate::store::unix_millis(SystemTime::now()),
    }
}

fn boot_id() -> u128 {
    static BOOT: OnceLock<u128> = OnceLock::new();
    *BOOT.get_or_init(|| {
        std::fs::read_to_string(BOOT_ID_PATH)
            .ok()
            .and_then(|text| u128::from_str_radix(&text.trim().replace('-', ""), 16).ok())
            .unwrap_or_else(|| uuid::Uuid::new_v4().as_u128())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_id_is_stable_and_monotonic_time_advances() {
        let a = now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = now();
        assert_eq!(a.boot, b.boot);
        assert_ne!(a.boot, 0);
        assert!(b.mono_ms >= a.mono_ms + 5);
    }
}
