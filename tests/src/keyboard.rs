//! uinput keyboards for the guest drivers: a key reader typing a burst, a person on a PIN pad,
//! and a second, non-grabbing reader of a node that shows whether someone holds the grab.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use evdev::uinput::VirtualDevice;
use evdev::{AttributeSet, Device, EventType, InputEvent, KeyCode};

/// A keyboard-like uinput device: digits, letters, Enter, the keypad, shift, Backspace, Escape
/// (udev tags it as a keyboard: group `input`, `ID_INPUT_KEYBOARD=1`).
pub fn create_device(name: &str) -> Result<VirtualDevice, String> {
    let mut keys = AttributeSet::<KeyCode>::new();
    for (_, code) in LETTERS.iter().chain(DIGITS.iter()) {
        keys.insert(*code);
    }
    for code in KEYPAD {
        keys.insert(code);
    }
    for code in [
        KeyCode::KEY_ENTER,
        KeyCode::KEY_KPENTER,
        KeyCode::KEY_LEFTSHIFT,
        KeyCode::KEY_RIGHTSHIFT,
        KeyCode::KEY_BACKSPACE,
        KeyCode::KEY_ESC,
    ] {
        keys.insert(code);
    }
    VirtualDevice::builder()
        .and_then(|b| b.name(name).with_keys(&keys))
        .and_then(|b| b.build())
        .map_err(|e| format!("create uinput device {name} (/dev/uinput): {e}"))
}

/// The device's /dev/input/eventN, once it exists.
pub fn dev_node(device: &mut VirtualDevice, patience: Duration) -> Result<PathBuf, String> {
    let deadline = Instant::now() + patience;
    loop {
        let nodes = device
            .enumerate_dev_nodes_blocking()
            .and_then(|nodes| nodes.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("list the uinput device's nodes: {e}"))?;
        if let Some(node) = nodes.into_iter().find(|n| n.exists()) {
            return Ok(node);
        }
        if Instant::now() > deadline {
            return Err("the uinput device's /dev/input node never appeared".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a node as a second, non-grabbing, non-blocking reader.
pub fn open_spy(node: &Path) -> Result<Device, String> {
    let device = Device::open(node).map_err(|e| format!("open {}: {e}", node.display()))?;
    device
        .set_nonblocking(true)
        .map_err(|e| format!("make {} non-blocking: {e}", node.display()))?;
    Ok(device)
}

/// Reads everything queued on `spy` and counts the key events (press, release, repeat).
/// uinput delivers synchronously, so what was emitted before this call is already queued.
pub fn key_events(spy: &mut Device) -> Result<usize, String> {
    let mut count = 0;
    loop {
        match spy.fetch_events() {
            Ok(events) => count += events.filter(|e| e.event_type() == EventType::KEY).count(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(count),
            Err(e) => return Err(format!("read from the second reader: {e}")),
        }
    }
}

pub fn key(device: &mut VirtualDevice, code: KeyCode, value: i32) -> Result<(), String> {
    device
        .emit(&[InputEvent::new(EventType::KEY.0, code.0, value)])
        .map_err(|e| format!("emit a key event: {e}"))
}

pub fn tap(device: &mut VirtualDevice, code: KeyCode) -> Result<(), String> {
    key(device, code, 1)?;
    key(device, code, 0)
}

/// Whether a shift tap on `device` reaches `spy`: false while someone else holds the grab.
/// A shift tap alone types nothing, so a reader sees no frame from it.
pub fn tap_reaches(device: &mut VirtualDevice, spy: &mut Device) -> Result<bool, String> {
    key_events(spy)?;
    tap(device, KeyCode::KEY_LEFTSHIFT)?;
    Ok(key_events(spy)? > 0)
}

/// A keyboard-wedge reader: the whole id within a few ms per key, upper case with shift, Enter.
/// Returns the longest pause between two keys as the guest saw it (a busy host can stall a
/// guest past the daemon's 100 ms framing gap; the caller then types the burst again).
pub fn type_burst(device: &mut VirtualDevice, text: &str) -> Result<Duration, String> {
    let mut slowest = Duration::ZERO;
    let mut last = Instant::now();
    for (i, c) in text.chars().enumerate() {
        let (code, shift) = char_key(c)?;
        slowest = slowest.max(last.elapsed());
        last = Instant::now();
        if shift {
            key(device, KeyCode::KEY_LEFTSHIFT, 1)?;
        }
        tap(device, code)?;
        if shift {
            key(device, KeyCode::KEY_LEFTSHIFT, 0)?;
        }
        // 2 to 5 ms between keys, as a wedge types.
        std::thread::sleep(Duration::from_millis(2 + (i as u64 % 4)));
    }
    slowest = slowest.max(last.elapsed());
    tap(device, KeyCode::KEY_ENTER)?;
    Ok(slowest)
}

/// A person on a numeric keypad: ~80 ms key holds, ~150 ms from one press to the next, KP-Enter.
pub fn type_human(device: &mut VirtualDevice, digits: &str) -> Result<(), String> {
    let codes = digits
        .chars()
        .map(|c| {
            c.to_digit(10)
                .map(|d| KEYPAD[d as usize])
                .ok_or_else(|| format!("{c:?} is not a digit"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for code in codes.into_iter().chain([KeyCode::KEY_KPENTER]) {
        key(device, code, 1)?;
        std::thread::sleep(Duration::from_millis(80));
        key(device, code, 0)?;
        std::thread::sleep(Duration::from_millis(70));
    }
    Ok(())
}

pub const DIGITS: [(char, KeyCode); 10] = [
    ('1', KeyCode::KEY_1),
    ('2', KeyCode::KEY_2),
    ('3', KeyCode::KEY_3),
    ('4', KeyCode::KEY_4),
    ('5', KeyCode::KEY_5),
    ('6', KeyCode::KEY_6),
    ('7', KeyCode::KEY_7),
    ('8', KeyCode::KEY_8),
    ('9', KeyCode::KEY_9),
    ('0', KeyCode::KEY_0),
];

pub const LETTERS: [(char, KeyCode); 26] = [
    ('a', KeyCode::KEY_A),
    ('b', KeyCode::KEY_B),
    ('c', KeyCode::KEY_C),
    ('d', KeyCode::KEY_D),
    ('e', KeyCode::KEY_E),
    ('f', KeyCode::KEY_F),
    ('g', KeyCode::KEY_G),
    ('h', KeyCode::KEY_H),
    ('i', KeyCode::KEY_I),
    ('j', KeyCode::KEY_J),
    ('k', KeyCode::KEY_K),
    ('l', KeyCode::KEY_L),
    ('m', KeyCode::KEY_M),
    ('n', KeyCode::KEY_N),
    ('o', KeyCode::KEY_O),
    ('p', KeyCode::KEY_P),
    ('q', KeyCode::KEY_Q),
    ('r', KeyCode::KEY_R),
    ('s', KeyCode::KEY_S),
    ('t', KeyCode::KEY_T),
    ('u', KeyCode::KEY_U),
    ('v', KeyCode::KEY_V),
    ('w', KeyCode::KEY_W),
    ('x', KeyCode::KEY_X),
    ('y', KeyCode::KEY_Y),
    ('z', KeyCode::KEY_Z),
];

/// Keypad digits 0 to 9, indexed by digit.
pub const KEYPAD: [KeyCode; 10] = [
    KeyCode::KEY_KP0,
    KeyCode::KEY_KP1,
    KeyCode::KEY_KP2,
    KeyCode::KEY_KP3,
    KeyCode::KEY_KP4,
    KeyCode::KEY_KP5,
    KeyCode::KEY_KP6,
    KeyCode::KEY_KP7,
    KeyCode::KEY_KP8,
    KeyCode::KEY_KP9,
];

/// The US-position key for a character, and whether it needs shift.
pub fn char_key(c: char) -> Result<(KeyCode, bool), String> {
    let lower = c.to_ascii_lowercase();
    DIGITS
        .iter()
        .chain(LETTERS.iter())
        .find(|(k, _)| *k == lower)
        .map(|(_, code)| (*code, c.is_ascii_uppercase()))
        .ok_or_else(|| format!("no key types {c:?}"))
}
