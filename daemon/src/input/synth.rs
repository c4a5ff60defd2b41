//! Synthesises evdev event streams as a keyboard-mode device would send them.
//!
//! For tests (here and in the daemon) and for writing evemu fixtures: "type 4711 with 80 ms
//! holds and 600 ms gaps" is clearer and harder to get wrong than hundreds of event lines.
//! Each key change is followed by a `SYN_REPORT`, as the kernel sends it.

use std::time::Duration;

use thiserror::Error;

use super::event::{InputEvent, KEY_DOWN, KEY_UP};
use super::keymap::{KEY_ENTER, KEY_KP0, KEY_KP1, KEY_LEFTSHIFT, encode};

/// A character the fixed US table cannot type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("character cannot be typed with the US-position key table")]
pub struct Untypable;

/// Builds an event stream with a running clock.
#[derive(Debug, Clone, Default)]
pub struct Typist {
    now: Duration,
    events: Vec<InputEvent>,
}

impl Typist {
    /// Starts the clock at `start` (kernel timestamp of the first event).
    pub fn new(start: Duration) -> Self {
        Self {
            now: start,
            events: Vec::new(),
        }
    }

    /// The current timestamp.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Advances the clock.
    pub fn wait(&mut self, d: Duration) -> &mut Self {
        self.now += d;
        self
    }

    /// One key event (value 0 up, 1 down, 2 repeat) and its `SYN_REPORT`, at the current time.
    pub fn key(&mut self, code: u16, value: i32) -> &mut Self {
        self.events.push(InputEvent::key(self.now, code, value));
        self.events.push(InputEvent::syn_report(self.now));
        self
    }

    /// Press, hold for `hold`, release.
    pub fn tap(&mut self, code: u16, hold: Duration) -> &mut Self {
        self.key(code, KEY_DOWN).wait(hold).key(code, KEY_UP)
    }

    /// Taps Enter.
    pub fn tap_enter(&mut self, hold: Duration) -> &mut Self {
        self.tap(KEY_ENTER, hold)
    }

    /// Types one character on the main block, with left shift around it when needed.
    pub fn type_char(&mut self, c: char, hold: Duration) -> Result<&mut Self, Untypable> {
        let (code, shift) = encode(c).ok_or(Untypable)?;
        if shift {
            self.key(KEY_LEFTSHIFT, KEY_DOWN);
        }
        self.tap(code, hold);
        if shift {
            self.key(KEY_LEFTSHIFT, KEY_UP);
        }
        Ok(self)
    }

    /// Types `text`: each character held for `hold`, then `gap` of silence before the next
    /// (so presses are `hold + gap` apart).
    pub fn type_text(
        &mut self,
        text: &str,
        hold: Duration,
        gap: Duration,
    ) -> Result<&mut Self, Untypable> {
        for c in text.chars() {
            self.type_char(c, hold)?.wait(gap);
        }
        Ok(self)
    }

    /// A kernel buffer overrun: `SYN_DROPPED`, then the `SYN_REPORT` that ends the damaged
    /// packet.
    pub fn syn_dropped(&mut self) -> &mut Self {
        self.events.push(InputEvent::syn_dropped(self.now));
        self.events.push(InputEvent::syn_report(self.now));
        self
    }

    /// The events so far.
    pub fn events(&self) -> &[InputEvent] {
        &self.events
    }

    /// Takes the events.
    pub fn into_events(self) -> Vec<InputEvent> {
        self.events
    }
}

/// The numeric keypad code of a digit.
pub fn keypad_code(digit: char) -> Option<u16> {
    match digit {
        '0' => Some(KEY_KP0),
        '1'..='9' => {
            // KP1..KP3 = 79..81, KP4..KP6 = 75..77, KP7..KP9 = 71..73.
            let d = u16::try_from(digit.to_digit(10)?).ok()?;
            let row = (d - 1) / 3;
            Some(KEY_KP1 - 4 * row + (d - 1) % 3)
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::keymap::{DecodedKey, KeyboardState};
    use super::*;

    #[test]
    fn keypad_codes_match_kernel_values() {
        let codes: Vec<u16> = "0123456789"
            .chars()
            .map(|c| keypad_code(c).unwrap())
            .collect();
        assert_eq!(codes, [82, 79, 80, 81, 75, 76, 77, 71, 72, 73]);
        assert_eq!(keypad_code('a'), None);
    }

    #[test]
    fn typed_text_decodes_back() {
        let mut t = Typist::new(Duration::ZERO);
        t.type_text(
            "Ab1!~ z",
            Duration::from_millis(3),
            Duration::from_millis(2),
        )
        .unwrap();
        let mut kb = KeyboardState::new();
        let got: String = t
            .events()
            .iter()
            .filter(|e| e.kind == super::super::event::EV_KEY)
            .filter_map(|e| kb.key(e.code, e.value))
            .filter_map(|p| match p.key {
                DecodedKey::Char(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(got, "Ab1!~ z");
        assert_eq!(t.now(), Duration::from_millis(35));
        assert!(t.type_char('é', Duration::ZERO).is_err());
    }
}
