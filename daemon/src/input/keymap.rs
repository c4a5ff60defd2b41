//! Linux evdev key codes to characters with a fixed US-position table.
//!
//! Keyboard-mode readers emit key *positions* as if on a US keyboard. Decoding through the host's
//! layout would turn "0013748911" into "àà&\"è'!ç&&" on AZERTY, so ids and PINs are decoded here
//! with one fixed table, whatever the host layout. Codes are the kernel's
//! `input-event-codes.h` values.

use super::event::{EV_KEY, InputEvent, KEY_DOWN, KEY_REPEAT, KEY_UP};

/// `KEY_ESC`.
pub const KEY_ESC: u16 = 1;
/// `KEY_1` (`KEY_2`..`KEY_9` follow, then `KEY_0` = 11).
pub const KEY_1: u16 = 2;
/// `KEY_0`.
pub const KEY_0: u16 = 11;
/// `KEY_MINUS`.
pub const KEY_MINUS: u16 = 12;
/// `KEY_EQUAL`.
pub const KEY_EQUAL: u16 = 13;
/// `KEY_BACKSPACE`.
pub const KEY_BACKSPACE: u16 = 14;
/// `KEY_TAB`.
pub const KEY_TAB: u16 = 15;
/// `KEY_Q`.
pub const KEY_Q: u16 = 16;
/// `KEY_ENTER`.
pub const KEY_ENTER: u16 = 28;
/// `KEY_LEFTCTRL`.
pub const KEY_LEFTCTRL: u16 = 29;
/// `KEY_A`.
pub const KEY_A: u16 = 30;
/// `KEY_LEFTSHIFT`.
pub const KEY_LEFTSHIFT: u16 = 42;
/// `KEY_Z`.
pub const KEY_Z: u16 = 44;
/// `KEY_RIGHTSHIFT`.
pub const KEY_RIGHTSHIFT: u16 = 54;
/// `KEY_LEFTALT`.
pub const KEY_LEFTALT: u16 = 56;
/// `KEY_SPACE`.
pub const KEY_SPACE: u16 = 57;
/// `KEY_CAPSLOCK`.
pub const KEY_CAPSLOCK: u16 = 58;
/// `KEY_F1`.
pub const KEY_F1: u16 = 59;
/// `KEY_NUMLOCK`.
pub const KEY_NUMLOCK: u16 = 69;
/// `KEY_SCROLLLOCK`.
pub const KEY_SCROLLLOCK: u16 = 70;
/// `KEY_KP7`.
pub const KEY_KP7: u16 = 71;
/// `KEY_KP8`.
pub const KEY_KP8: u16 = 72;
/// `KEY_KP9`.
pub const KEY_KP9: u16 = 73;
/// `KEY_KP4`.
pub const KEY_KP4: u16 = 75;
/// `KEY_KP5`.
pub const KEY_KP5: u16 = 76;
/// `KEY_KP6`.
pub const KEY_KP6: u16 = 77;
/// `KEY_KP1`.
pub const KEY_KP1: u16 = 79;
/// `KEY_KP2`.
pub const KEY_KP2: u16 = 80;
/// `KEY_KP3`.
pub const KEY_KP3: u16 = 81;
/// `KEY_KP0`.
pub const KEY_KP0: u16 = 82;
/// `KEY_KPENTER`.
pub const KEY_KPENTER: u16 = 96;
/// `KEY_RIGHTCTRL`.
pub const KEY_RIGHTCTRL: u16 = 97;
/// `KEY_RIGHTALT`.
pub const KEY_RIGHTALT: u16 = 100;
/// `KEY_LEFTMETA`.
pub const KEY_LEFTMETA: u16 = 125;
/// `KEY_RIGHTMETA`.
pub const KEY_RIGHTMETA: u16 = 126;

/// Characters of the main block: (code, unshifted, shifted). Letters are listed lower-case;
/// caps lock is applied separately because it affects letters only.
const MAIN: &[(u16, char, char)] = &[
    (2, '1', '!'),
    (3, '2', '@'),
    (4, '3', '#'),
    (5, '4', '$'),
    (6, '5', '%'),
    (7, '6', '^'),
    (8, '7', '&'),
    (9, '8', '*'),
    (10, '9', '('),
    (11, '0', ')'),
    (12, '-', '_'),
    (13, '=', '+'),
    (16, 'q', 'Q'),
    (17, 'w', 'W'),
    (18, 'e', 'E'),
    (19, 'r', 'R'),
    (20, 't', 'T'),
    (21, 'y', 'Y'),
    (22, 'u', 'U'),
    (23, 'i', 'I'),
    (24, 'o', 'O'),
    (25, 'p', 'P'),
    (26, '[', '{'),
    (27, ']', '}'),
    (30, 'a', 'A'),
    (31, 's', 'S'),
    (32, 'd', 'D'),
    (33, 'f', 'F'),
    (34, 'g', 'G'),
    (35, 'h', 'H'),
    (36, 'j', 'J'),
    (37, 'k', 'K'),
    (38, 'l', 'L'),
    (39, ';', ':'),
    (40, '\'', '"'),
    (41, '`', '~'),
    (43, '\\', '|'),
    (44, 'z', 'Z'),
    (45, 'x', 'X'),
    (46, 'c', 'C'),
    (47, 'v', 'V'),
    (48, 'b', 'B'),
    (49, 'n', 'N'),
    (50, 'm', 'M'),
    (51, ',', '<'),
    (52, '.', '>'),
    (53, '/', '?'),
    (57, ' ', ' '),
];

/// Numeric keypad characters. PIN pads often never send NumLock, so the keypad always decodes
/// as digits/operators and shift does not change it.
const KEYPAD: &[(u16, char)] = &[
    (55, '*'),
    (71, '7'),
    (72, '8'),
    (73, '9'),
    (74, '-'),
    (75, '4'),
    (76, '5'),
    (77, '6'),
    (78, '+'),
    (79, '1'),
    (80, '2'),
    (81, '3'),
    (82, '0'),
    (83, '.'),
    (98, '/'),
    (117, '='),
    (121, ','),
];

/// A decoded key press. `Char` of a PIN pad or reader is part of a secret: do not log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodedKey {
    /// A printable character.
    Char(char),
    /// `KEY_ENTER` or `KEY_KPENTER`.
    Enter,
    /// `KEY_BACKSPACE`.
    Backspace,
    /// `KEY_ESC`.
    Escape,
    /// `KEY_TAB`.
    Tab,
    /// Any key without a meaning here (function keys, arrows, ...), with its code.
    Other(u16),
}

/// One key press (or auto-repeat) after modifier handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyPress {
    /// What the key means.
    pub key: DecodedKey,
    /// The evdev code, e.g. to tell `KEY_KPENTER` from `KEY_ENTER`.
    pub code: u16,
    /// True for auto-repeat (value 2). Framers ignore these: readers never hold keys, and a
    /// held PIN pad key must not enter the digit several times.
    pub repeat: bool,
}

/// What [`KeyboardState::event`] makes of one raw event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decoded {
    /// A key press or auto-repeat.
    Press(KeyPress),
    /// `SYN_DROPPED`: events were lost; the framer must discard its partial entry.
    SyncLost,
}

/// Decodes `code` with the given modifier state; `None` for modifier and lock keys themselves
/// (shift, ctrl, alt, meta, caps/num/scroll lock), which never stand for input on their own.
pub fn decode(code: u16, shift: bool, caps_lock: bool) -> Option<DecodedKey> {
    if is_modifier(code) {
        return None;
    }
    let key = match code {
        KEY_ENTER | KEY_KPENTER => DecodedKey::Enter,
        KEY_BACKSPACE => DecodedKey::Backspace,
        KEY_ESC => DecodedKey::Escape,
        KEY_TAB => DecodedKey::Tab,
        _ => {
            if let Some(&(_, plain, shifted)) = MAIN.iter().find(|(c, _, _)| *c == code) {
                // Caps lock inverts shift for letters only (as on a real keyboard).
                let upper = if plain.is_ascii_alphabetic() {
                    shift != caps_lock
                } else {
                    shift
                };
                DecodedKey::Char(if upper { shifted } else { plain })
            } else if let Some(&(_, c)) = KEYPAD.iter().find(|(k, _)| *k == code) {
                DecodedKey::Char(c)
            } else {
                DecodedKey::Other(code)
            }
        }
    };
    Some(key)
}

/// The inverse of [`decode`] on the main block: the key code for `c` and whether shift is
/// needed. Used to validate configured prefixes/suffixes and to synthesise test input.
pub fn encode(c: char) -> Option<(u16, bool)> {
    MAIN.iter().find_map(|&(code, plain, shifted)| {
        if c == plain {
            Some((code, false))
        } else if c == shifted {
            Some((code, true))
        } else {
            None
        }
    })
}

/// True for modifier and lock keys.
pub fn is_modifier(code: u16) -> bool {
    matches!(
        code,
        KEY_LEFTSHIFT
            | KEY_RIGHTSHIFT
            | KEY_CAPSLOCK
            | KEY_LEFTCTRL
            | KEY_RIGHTCTRL
            | KEY_LEFTALT
            | KEY_RIGHTALT
            | KEY_LEFTMETA
            | KEY_RIGHTMETA
            | KEY_NUMLOCK
            | KEY_SCROLLLOCK
    )
}

/// Per-device modifier state: which shift keys are held, caps lock, and whether we are
/// skipping events after `SYN_DROPPED`.
///
/// Keep one per device: modifiers of one keyboard must never apply to another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyboardState {
    left_shift: bool,
    right_shift: bool,
    caps_lock: bool,
    syncing: bool,
}

impl KeyboardState {
    /// No modifiers held, caps lock off.
    pub fn new() -> Self {
        Self::default()
    }

    /// True while either shift key is held.
    pub fn shift(&self) -> bool {
        self.left_shift || self.right_shift
    }

    /// Current caps lock state.
    pub fn caps_lock(&self) -> bool {
        self.caps_lock
    }

    /// Sets caps lock, e.g. from the device's LED state when it is opened (the real state is
    /// not visible in the event stream).
    pub fn set_caps_lock(&mut self, on: bool) {
        self.caps_lock = on;
    }

    /// Sets whether shift is held, e.g. after resynchronising from `EVIOCGKEY`.
    pub fn set_shift(&mut self, held: bool) {
        self.left_shift = held;
        self.right_shift = false;
    }

    /// Releases held modifiers (caps lock is a toggle and is kept).
    pub fn reset_modifiers(&mut self) {
        self.left_shift = false;
        self.right_shift = false;
    }

    /// Feeds one `EV_KEY` (code, value). Returns the press for value 1 and, flagged as repeat,
    /// for value 2; `None` for releases, modifiers and unknown values.
    pub fn key(&mut self, code: u16, value: i32) -> Option<KeyPress> {
        match code {
            KEY_LEFTSHIFT => self.left_shift = value != KEY_UP,
            KEY_RIGHTSHIFT => self.right_shift = value != KEY_UP,
            KEY_CAPSLOCK if value == KEY_DOWN => self.caps_lock = !self.caps_lock,
            _ => {}
        }
        if value != KEY_DOWN && value != KEY_REPEAT {
            return None;
        }
        let key = decode(code, self.shift(), self.caps_lock)?;
        Some(KeyPress {
            key,
            code,
            repeat: value == KEY_REPEAT,
        })
    }

    /// Feeds any raw event. Handles `SYN_DROPPED` the way the kernel documents it: report the
    /// loss once, then ignore everything up to and including the next `SYN_REPORT`. Held
    /// modifiers are released then, because their release may have been among the lost events.
    pub fn event(&mut self, ev: &InputEvent) -> Option<Decoded> {
        if ev.is_syn_dropped() {
            self.syncing = true;
            self.reset_modifiers();
            return Some(Decoded::SyncLost);
        }
        if self.syncing {
            if ev.is_syn_report() {
                self.syncing = false;
            }
            return None;
        }
        if ev.kind != EV_KEY {
            return None;
        }
        self.key(ev.code, ev.value).map(Decoded::Press)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ch(state: &mut KeyboardState, code: u16) -> char {
        match state.key(code, KEY_DOWN).unwrap().key {
            DecodedKey::Char(c) => c,
            other => panic!("not a char: {other:?}"),
        }
    }

    #[test]
    fn top_row_digits() {
        let mut s = KeyboardState::new();
        let got: String = (KEY_1..=KEY_0).map(|c| ch(&mut s, c)).collect();
        assert_eq!(got, "1234567890");
    }

    #[test]
    fn numpad_digits_ignore_shift() {
        let mut s = KeyboardState::new();
        let codes = [82, 79, 80, 81, 75, 76, 77, 71, 72, 73];
        let got: String = codes.iter().map(|&c| ch(&mut s, c)).collect();
        assert_eq!(got, "0123456789");
        s.key(KEY_LEFTSHIFT, KEY_DOWN);
        assert_eq!(ch(&mut s, KEY_KP5), '5');
    }

    #[test]
    fn letters_follow_us_positions() {
        let mut s = KeyboardState::new();
        let rows: String = (16..=25)
            .chain(30..=38)
            .chain(44..=50)
            .map(|c| ch(&mut s, c))
            .collect();
        assert_eq!(rows, "qwertyuiopasdfghjklzxcvbnm");
    }

    #[test]
    fn shift_and_caps() {
        let mut s = KeyboardState::new();
        s.key(KEY_RIGHTSHIFT, KEY_DOWN);
        assert_eq!(ch(&mut s, KEY_A), 'A');
        assert_eq!(ch(&mut s, KEY_1), '!');
        assert_eq!(ch(&mut s, 53), '?');
        // Left shift down and up while right is still held: still shifted.
        s.key(KEY_LEFTSHIFT, KEY_DOWN);
        s.key(KEY_LEFTSHIFT, KEY_UP);
        assert_eq!(ch(&mut s, KEY_Z), 'Z');
        s.key(KEY_RIGHTSHIFT, KEY_UP);
        assert_eq!(ch(&mut s, KEY_Z), 'z');

        s.key(KEY_CAPSLOCK, KEY_DOWN);
        s.key(KEY_CAPSLOCK, KEY_REPEAT); // a held caps lock does not toggle again
        s.key(KEY_CAPSLOCK, KEY_UP);
        assert!(s.caps_lock());
        assert_eq!(ch(&mut s, KEY_Q), 'Q');
        assert_eq!(ch(&mut s, KEY_1), '1', "caps affects letters only");
        s.key(KEY_LEFTSHIFT, KEY_DOWN);
        assert_eq!(ch(&mut s, KEY_Q), 'q', "shift inverts caps for letters");
        assert_eq!(ch(&mut s, KEY_1), '!');
    }

    #[test]
    fn control_keys_and_values() {
        let mut s = KeyboardState::new();
        assert_eq!(s.key(KEY_ENTER, 1).unwrap().key, DecodedKey::Enter);
        assert_eq!(s.key(KEY_KPENTER, 1).unwrap().key, DecodedKey::Enter);
        assert_eq!(s.key(KEY_BACKSPACE, 1).unwrap().key, DecodedKey::Backspace);
        assert_eq!(s.key(KEY_ESC, 1).unwrap().key, DecodedKey::Escape);
        assert_eq!(s.key(KEY_TAB, 1).unwrap().key, DecodedKey::Tab);
        assert_eq!(s.key(59, 1).unwrap().key, DecodedKey::Other(59));
        assert!(s.key(KEY_A, KEY_UP).is_none());
        assert!(s.key(KEY_A, 7).is_none());
        assert!(s.key(KEY_LEFTCTRL, KEY_DOWN).is_none());
        assert!(s.key(KEY_A, KEY_REPEAT).unwrap().repeat);
        assert!(!s.key(KEY_A, KEY_DOWN).unwrap().repeat);
    }

    #[test]
    fn symbols() {
        let mut s = KeyboardState::new();
        let plain: String = [12, 13, 26, 27, 39, 40, 41, 43, 51, 52, 53, 57]
            .iter()
            .map(|&c| ch(&mut s, c))
            .collect();
        assert_eq!(plain, "-=[];'`\\,./ ");
        s.key(KEY_LEFTSHIFT, KEY_DOWN);
        let shifted: String = [12, 13, 26, 27, 39, 40, 41, 43, 51, 52, 53]
            .iter()
            .map(|&c| ch(&mut s, c))
            .collect();
        assert_eq!(shifted, "_+{}:\"~|<>?");
    }

    #[test]
    fn encode_inverts_decode() {
        for c in ' '..='~' {
            let (code, shift) = encode(c).unwrap();
            assert_eq!(decode(code, shift, false), Some(DecodedKey::Char(c)));
        }
        assert!(encode('é').is_none());
    }

    #[test]
    fn syn_dropped_skips_to_next_report_and_releases_shift() {
        let t = Duration::ZERO;
        let mut s = KeyboardState::new();
        s.key(KEY_LEFTSHIFT, KEY_DOWN);
        assert_eq!(
            s.event(&InputEvent::syn_dropped(t)),
            Some(Decoded::SyncLost)
        );
        assert!(!s.shift());
        assert_eq!(s.event(&InputEvent::key(t, KEY_A, 1)), None);
        assert_eq!(s.event(&InputEvent::syn_report(t)), None);
        assert!(matches!(
            s.event(&InputEvent::key(t, KEY_A, 1)),
            Some(Decoded::Press(KeyPress {
                key: DecodedKey::Char('a'),
                ..
            }))
        ));
    }
}
