//! PIN pad framer: turns one PIN pad's key events into submitted PINs.
//!
//! A human types here, slowly and with corrections, so the framer supports Backspace, Escape
//! and an idle timeout, and ignores auto-repeat (a held key must not enter a digit twice).
//! Time comes only from event timestamps (and the `now` passed to [`PinPad::expire`]), so
//! behaviour is reproducible from recordings.
//!
//! Rules, in the order they apply to a key press:
//! 1. Auto-repeat (value 2) is ignored entirely.
//! 2. If more than `idle_timeout` passed since the previous press, a partial entry is dropped
//!    first (`Dropped(Idle)`), then the key is handled as the start of a new entry.
//! 3. Digits (top row or keypad) are appended. Past `max_len` the entry is wiped and
//!    `Rejected(TooLong)` is emitted once; further digits are swallowed until Enter, Escape or
//!    idle end the entry, so the tail of an over-long PIN never becomes a PIN of its own.
//!    Backspace does not undo this.
//!    Reaching `fixed_len` submits at once.
//! 4. Enter / keypad Enter submits if `min_len <= len`; shorter gives `Rejected(TooShort)`.
//!    Enter with nothing entered does nothing.
//! 5. Backspace removes the last digit. Escape always clears and emits `Cleared` (feedback for
//!    the person pressing it).
//! 6. Other characters: see [`NonDigit`] (default: ignored, so a pad's `*`/`#`/`.` keys are
//!    harmless). Tab and unmapped keys are ignored.
//! 7. `SYN_DROPPED` drops a partial entry (`Dropped(SyncLost)`) and throws away the digits
//!    that follow up to Enter, Escape or idle (reported at Enter if nothing was pending at the
//!    drop): digits of that entry may have been lost, and a PIN missing its first digits must
//!    not be tried (failed attempts count towards lockout).

use std::time::Duration;

use thiserror::Error;

use super::event::InputEvent;
use super::keymap::{Decoded, DecodedKey, KeyboardState};
use super::secret::{Secret, wipe_bytes};

/// What a non-digit character does to the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonDigit {
    /// Ignore it (default): PIN pads carry `*`, `#`, `.` keys people hit by accident.
    #[default]
    Ignore,
    /// Drop the partial entry (`Dropped(NonDigit)`): for full keyboards used as PIN pads,
    /// where a letter means the person is not typing a PIN.
    Clear,
}

/// PIN pad settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinPadConfig {
    /// A partial entry older than this (since its last key press) is dropped.
    pub idle_timeout: Duration,
    /// Fewest digits Enter accepts.
    pub min_len: usize,
    /// Most digits accepted; one more rejects the entry.
    pub max_len: usize,
    /// Submit automatically when this many digits are entered (pads without Enter).
    pub fixed_len: Option<usize>,
    /// Handling of non-digit characters.
    pub non_digit: NonDigit,
}

impl Default for PinPadConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10),
            min_len: 4,
            max_len: 8,
            fixed_len: None,
            non_digit: NonDigit::Ignore,
        }
    }
}

/// An inconsistent [`PinPadConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PinPadConfigError {
    /// A zero idle timeout would drop every entry.
    #[error("pin pad idle timeout must be greater than zero")]
    ZeroIdleTimeout,
    /// Empty PINs are never valid.
    #[error("pin pad min_len must be at least 1")]
    ZeroMinLen,
    /// No length could be accepted.
    #[error("pin pad min_len {min} is greater than max_len {max}")]
    MinAboveMax {
        /// Configured minimum.
        min: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Auto-submit length outside min/max.
    #[error("pin pad fixed_len {fixed} is outside {min}..={max}")]
    FixedLenOutOfRange {
        /// Configured fixed length.
        fixed: usize,
        /// Configured minimum.
        min: usize,
        /// Configured maximum.
        max: usize,
    },
}

impl PinPadConfig {
    /// Checks the settings are consistent.
    pub fn validate(&self) -> Result<(), PinPadConfigError> {
        let (min, max) = (self.min_len, self.max_len);
        if self.idle_timeout.is_zero() {
            return Err(PinPadConfigError::ZeroIdleTimeout);
        }
        if min == 0 {
            return Err(PinPadConfigError::ZeroMinLen);
        }
        if min > max {
            return Err(PinPadConfigError::MinAboveMax { min, max });
        }
        if let Some(fixed) = self.fixed_len
            && !(min..=max).contains(&fixed)
        {
            return Err(PinPadConfigError::FixedLenOutOfRange { fixed, min, max });
        }
        Ok(())
    }
}

/// Why a partial entry was dropped without a decision by the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinDrop {
    /// No key for longer than the idle timeout.
    Idle,
    /// `SYN_DROPPED`: events were lost.
    SyncLost,
    /// A non-digit character with [`NonDigit::Clear`].
    NonDigit,
}

/// Why an entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReject {
    /// Enter with fewer than `min_len` digits.
    TooShort,
    /// More than `max_len` digits.
    TooLong,
}

/// What the framer reports. Only `Submitted` carries the PIN (redacted in `Debug`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinOutcome {
    /// A complete PIN.
    Submitted(Secret),
    /// Escape was pressed.
    Cleared,
    /// A partial entry was dropped.
    Dropped(PinDrop),
    /// The entry was refused.
    Rejected(PinReject),
}

/// An entry being thrown away until Enter, Escape or the idle timeout, so the digits after
/// an over-long entry or an event loss never become a PIN of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Discard {
    outcome: DiscardCause,
    /// Already reported when the discard began.
    reported: bool,
    /// Keys were swallowed since (there is something to report).
    swallowed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiscardCause {
    TooLong,
    SyncLost,
}

impl Discard {
    fn end(self) -> Option<PinOutcome> {
        (!self.reported && self.swallowed).then_some(match self.outcome {
            DiscardCause::TooLong => PinOutcome::Rejected(PinReject::TooLong),
            DiscardCause::SyncLost => PinOutcome::Dropped(PinDrop::SyncLost),
        })
    }
}

/// The PIN pad state machine for one device. `Debug` shows the entry's length, not its digits.
#[derive(Clone)]
pub struct PinPad {
    config: PinPadConfig,
    keyboard: KeyboardState,
    digits: Vec<u8>,
    discard: Option<Discard>,
    last_press: Option<Duration>,
}

impl std::fmt::Debug for PinPad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinPad")
            .field("config", &self.config)
            .field("keyboard", &self.keyboard)
            .field("pending_len", &self.digits.len())
            .field("discard", &self.discard)
            .field("last_press", &self.last_press)
            .finish()
    }
}

impl PinPad {
    /// A framer with validated settings.
    pub fn new(config: PinPadConfig) -> Result<Self, PinPadConfigError> {
        config.validate()?;
        let digits = Vec::with_capacity(config.max_len + 1);
        Ok(Self {
            config,
            keyboard: KeyboardState::new(),
            digits,
            discard: None,
            last_press: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &PinPadConfig {
        &self.config
    }

    /// The modifier state, e.g. to set caps lock from the device's LED when it is opened.
    pub fn keyboard_mut(&mut self) -> &mut KeyboardState {
        &mut self.keyboard
    }

    /// Digits entered so far (for a masked `****` display); 0 while an entry is discarded.
    pub fn pending_len(&self) -> usize {
        self.digits.len()
    }

    /// True while an entry is in progress (including one being discarded).
    pub fn is_pending(&self) -> bool {
        !self.digits.is_empty() || self.discard.is_some()
    }

    /// When the pending entry times out: [`PinPad::expire`] drops it once `now` is past this.
    /// `None` when nothing is pending, so the daemon needs no timer.
    pub fn deadline(&self) -> Option<Duration> {
        if !self.is_pending() {
            return None;
        }
        self.last_press
            .map(|t| t.saturating_add(self.config.idle_timeout))
    }

    /// Drops a pending entry that has been idle for more than the timeout at `now` (same clock
    /// as the event timestamps). A clock that went backwards counts as no time passed.
    /// An entry already reported as too long / lost ends silently.
    pub fn expire(&mut self, now: Duration) -> Option<PinOutcome> {
        let last = self.last_press?;
        if !self.is_pending() || now.saturating_sub(last) <= self.config.idle_timeout {
            return None;
        }
        let outcome = match self.discard {
            Some(discard) => discard.end(),
            None => Some(PinOutcome::Dropped(PinDrop::Idle)),
        };
        self.reset();
        outcome
    }

    /// Forgets any pending entry silently (device closed or re-grabbed).
    pub fn reset(&mut self) {
        wipe_bytes(&mut self.digits);
        self.discard = None;
    }

    /// Feeds one raw event; returns what it caused (usually nothing, at most two outcomes:
    /// an idle drop followed by the effect of the new key).
    ///
    /// After `SYN_DROPPED` the digits that follow are thrown away up to Enter, Escape or the
    /// idle timeout (measured from the drop): some digits of that entry may have been lost.
    #[must_use]
    pub fn feed(&mut self, ev: &InputEvent) -> Vec<PinOutcome> {
        let mut out = Vec::new();
        match self.keyboard.event(ev) {
            None => {}
            Some(Decoded::SyncLost) => {
                let was_pending = self.is_pending();
                self.reset();
                self.discard = Some(Discard {
                    outcome: DiscardCause::SyncLost,
                    reported: was_pending,
                    swallowed: false,
                });
                self.last_press = Some(ev.time);
                if was_pending {
                    out.push(PinOutcome::Dropped(PinDrop::SyncLost));
                }
            }
            Some(Decoded::Press(press)) => {
                if press.repeat {
                    return out;
                }
                out.extend(self.expire(ev.time));
                self.last_press = Some(ev.time);
                out.extend(self.key(press.key));
            }
        }
        out
    }

    fn key(&mut self, key: DecodedKey) -> Option<PinOutcome> {
        if let Some(discard) = &mut self.discard {
            match key {
                DecodedKey::Enter => {
                    let outcome = discard.end();
                    self.reset();
                    return outcome;
                }
                DecodedKey::Escape => {}
                DecodedKey::Char(_) => {
                    discard.swallowed = true;
                    return None;
                }
                _ => return None,
            }
        }
        match key {
            DecodedKey::Char(c) if c.is_ascii_digit() => {
                self.digits.push(c as u8);
                if self.digits.len() > self.config.max_len {
                    self.reset();
                    self.discard = Some(Discard {
                        outcome: DiscardCause::TooLong,
                        reported: true,
                        swallowed: true,
                    });
                    return Some(PinOutcome::Rejected(PinReject::TooLong));
                }
                if self.config.fixed_len == Some(self.digits.len()) {
                    return Some(self.submit());
                }
                None
            }
            DecodedKey::Char(_) => match self.config.non_digit {
                NonDigit::Ignore => None,
                NonDigit::Clear if self.is_pending() => {
                    self.reset();
                    Some(PinOutcome::Dropped(PinDrop::NonDigit))
                }
                NonDigit::Clear => None,
            },
            DecodedKey::Enter => {
                if self.digits.is_empty() {
                    None
                } else if self.digits.len() < self.config.min_len {
                    self.reset();
                    Some(PinOutcome::Rejected(PinReject::TooShort))
                } else {
                    Some(self.submit())
                }
            }
            DecodedKey::Backspace => {
                if let Some(last) = self.digits.last_mut() {
                    *last = 0;
                    self.digits.pop();
                }
                None
            }
            DecodedKey::Escape => {
                self.reset();
                Some(PinOutcome::Cleared)
            }
            DecodedKey::Tab | DecodedKey::Other(_) => None,
        }
    }

    fn submit(&mut self) -> PinOutcome {
        let pin: String = self.digits.iter().map(|&b| char::from(b)).collect();
        self.reset();
        PinOutcome::Submitted(Secret::new(pin))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::keymap::{KEY_BACKSPACE, KEY_ESC, encode};
    use super::super::synth::{Typist, keypad_code};
    use super::*;
    use proptest::prelude::*;

    const HOLD: Duration = Duration::from_millis(80);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pad() -> PinPad {
        PinPad::new(PinPadConfig::default()).unwrap()
    }

    fn run(pad: &mut PinPad, events: &[InputEvent]) -> Vec<PinOutcome> {
        events.iter().flat_map(|e| pad.feed(e)).collect()
    }

    fn submitted(pin: &str) -> PinOutcome {
        PinOutcome::Submitted(Secret::from(pin))
    }

    #[test]
    fn slow_human_typing_submits() {
        let mut t = Typist::new(ms(1000));
        for (c, gap) in "2580".chars().zip([300, 900, 450, 700]) {
            t.type_char(c, HOLD).unwrap().wait(ms(gap));
        }
        t.tap_enter(HOLD);
        assert_eq!(run(&mut pad(), t.events()), vec![submitted("2580")]);
    }

    #[test]
    fn backspace_and_escape() {
        let mut t = Typist::new(ms(0));
        t.type_text("129", HOLD, ms(300)).unwrap();
        t.tap(KEY_BACKSPACE, HOLD).wait(ms(300));
        t.type_text("34", HOLD, ms(300)).unwrap().tap_enter(HOLD);
        assert_eq!(run(&mut pad(), t.events()), vec![submitted("1234")]);

        let mut t = Typist::new(ms(0));
        t.type_text("99", HOLD, ms(300)).unwrap();
        t.tap(KEY_ESC, HOLD).wait(ms(300));
        t.type_text("4321", HOLD, ms(300)).unwrap().tap_enter(HOLD);
        assert_eq!(
            run(&mut pad(), t.events()),
            vec![PinOutcome::Cleared, submitted("4321")]
        );
    }

    #[test]
    fn backspace_on_empty_and_enter_on_empty_do_nothing() {
        let mut t = Typist::new(ms(0));
        t.tap(KEY_BACKSPACE, HOLD).tap_enter(HOLD);
        assert!(run(&mut pad(), t.events()).is_empty());
    }

    #[test]
    fn idle_gap_drops_partial_then_new_entry_counts() {
        let mut t = Typist::new(ms(0));
        t.type_text("12", HOLD, ms(300)).unwrap().wait(ms(11_000));
        t.type_text("5678", HOLD, ms(300)).unwrap().tap_enter(HOLD);
        assert_eq!(
            run(&mut pad(), t.events()),
            vec![PinOutcome::Dropped(PinDrop::Idle), submitted("5678")]
        );
    }

    #[test]
    fn expire_drops_on_timer_and_deadline_tracks_last_press() {
        let mut p = pad();
        let mut t = Typist::new(ms(500));
        t.type_text("12", HOLD, ms(0)).unwrap();
        assert!(run(&mut p, t.events()).is_empty());
        let last_press = ms(500) + HOLD;
        assert_eq!(p.deadline(), Some(last_press + ms(10_000)));
        assert_eq!(p.expire(last_press + ms(10_000)), None, "not past yet");
        assert_eq!(
            p.expire(last_press + ms(10_001)),
            Some(PinOutcome::Dropped(PinDrop::Idle))
        );
        assert_eq!(p.deadline(), None);
        assert_eq!(p.expire(ms(99_000)), None);
        // A clock running backwards does not expire anything.
        let mut t = Typist::new(ms(50_000));
        t.type_char('1', HOLD).unwrap();
        let _ = run(&mut p, t.events());
        assert_eq!(p.expire(ms(0)), None);
    }

    #[test]
    fn too_long_rejects_once_and_swallows_rest() {
        let mut t = Typist::new(ms(0));
        t.type_text("1234567890", HOLD, ms(200))
            .unwrap()
            .tap_enter(HOLD);
        t.wait(ms(300))
            .type_text("2468", HOLD, ms(200))
            .unwrap()
            .tap_enter(HOLD);
        assert_eq!(
            run(&mut pad(), t.events()),
            vec![PinOutcome::Rejected(PinReject::TooLong), submitted("2468")]
        );
    }

    #[test]
    fn too_short_rejected() {
        let mut t = Typist::new(ms(0));
        t.type_text("12", HOLD, ms(200)).unwrap().tap_enter(HOLD);
        assert_eq!(
            run(&mut pad(), t.events()),
            vec![PinOutcome::Rejected(PinReject::TooShort)]
        );
    }

    #[test]
    fn fixed_length_auto_submits() {
        let mut p = PinPad::new(PinPadConfig {
            fixed_len: Some(4),
            ..PinPadConfig::default()
        })
        .unwrap();
        let mut t = Typist::new(ms(0));
        t.type_text("97531", HOLD, ms(200)).unwrap();
        assert_eq!(run(&mut p, t.events()), vec![submitted("9753")]);
        assert_eq!(p.pending_len(), 1);
    }

    #[test]
    fn non_digit_policies() {
        let mut t = Typist::new(ms(0));
        t.type_text("12*34#", HOLD, ms(200))
            .unwrap()
            .tap_enter(HOLD);
        assert_eq!(run(&mut pad(), t.events()), vec![submitted("1234")]);

        let mut p = PinPad::new(PinPadConfig {
            non_digit: NonDigit::Clear,
            ..PinPadConfig::default()
        })
        .unwrap();
        assert_eq!(
            run(&mut p, t.events()),
            vec![
                PinOutcome::Dropped(PinDrop::NonDigit),
                PinOutcome::Dropped(PinDrop::NonDigit)
            ]
        );
    }

    #[test]
    fn auto_repeat_is_ignored() {
        let mut t = Typist::new(ms(0));
        t.type_char('7', HOLD).unwrap();
        // Hold '8' for 600 ms: the kernel repeats it after 250 ms every 33 ms.
        let (code, _) = encode('8').unwrap();
        t.key(code, 1);
        t.wait(ms(250));
        for _ in 0..10 {
            t.key(code, 2).wait(ms(33));
        }
        t.key(code, 0).wait(ms(300));
        t.type_text("99", HOLD, ms(300)).unwrap().tap_enter(HOLD);
        assert_eq!(run(&mut pad(), t.events()), vec![submitted("7899")]);
    }

    #[test]
    fn syn_dropped_discards_partial_and_its_tail() {
        let mut t = Typist::new(ms(0));
        t.type_text("12", HOLD, ms(300)).unwrap().syn_dropped();
        t.type_text("3456", HOLD, ms(300)).unwrap().tap_enter(HOLD);
        t.wait(ms(500));
        t.type_text("3456", HOLD, ms(300)).unwrap().tap_enter(HOLD);
        assert_eq!(
            run(&mut pad(), t.events()),
            vec![PinOutcome::Dropped(PinDrop::SyncLost), submitted("3456")]
        );
        // A drop while idle may have eaten the first digits: the entry is refused at Enter.
        let mut t = Typist::new(ms(0));
        t.syn_dropped().wait(ms(300));
        t.type_text("3456", HOLD, ms(300)).unwrap().tap_enter(HOLD);
        assert_eq!(
            run(&mut pad(), t.events()),
            vec![PinOutcome::Dropped(PinDrop::SyncLost)]
        );
        // Escape during the discard starts afresh.
        let mut t = Typist::new(ms(0));
        t.syn_dropped().wait(ms(300));
        t.type_text("34", HOLD, ms(300)).unwrap().tap(KEY_ESC, HOLD);
        t.type_text("5678", HOLD, ms(300)).unwrap().tap_enter(HOLD);
        assert_eq!(
            run(&mut pad(), t.events()),
            vec![PinOutcome::Cleared, submitted("5678")]
        );
    }

    #[test]
    fn config_validation() {
        let bad = |c: PinPadConfig| PinPad::new(c).unwrap_err();
        let d = PinPadConfig::default;
        assert_eq!(
            bad(PinPadConfig {
                idle_timeout: Duration::ZERO,
                ..d()
            }),
            PinPadConfigError::ZeroIdleTimeout
        );
        assert_eq!(
            bad(PinPadConfig { min_len: 0, ..d() }),
            PinPadConfigError::ZeroMinLen
        );
        assert_eq!(
            bad(PinPadConfig { min_len: 9, ..d() }),
            PinPadConfigError::MinAboveMax { min: 9, max: 8 }
        );
        assert!(matches!(
            bad(PinPadConfig {
                fixed_len: Some(3),
                ..d()
            }),
            PinPadConfigError::FixedLenOutOfRange { .. }
        ));
    }

    #[test]
    fn debug_hides_pin() {
        let text = format!("{:?}", submitted("8642"));
        assert!(!text.contains("8642"), "{text}");
        let mut p = pad();
        let mut t = Typist::new(ms(0));
        t.type_text("8642", HOLD, ms(300)).unwrap();
        let _ = run(&mut p, t.events());
        let text = format!("{p:?}");
        assert!(text.contains("pending_len: 4"), "{text}");
        assert!(!text.contains("56") && !text.contains("8642"), "{text}");
    }

    proptest! {
        #[test]
        fn any_pin_with_gaps_below_idle_is_submitted(
            pin in "[0-9]{4,8}",
            gaps in prop::collection::vec(0u64..9_000, 9),
            holds in prop::collection::vec(1u64..900, 9),
            numpad in any::<bool>(),
        ) {
            let mut t = Typist::new(ms(12_345));
            for (i, c) in pin.chars().enumerate() {
                let hold = ms(holds[i]);
                if numpad {
                    t.tap(keypad_code(c).unwrap(), hold);
                } else {
                    t.type_char(c, hold).unwrap();
                }
                // press-to-press = hold + gap <= 9.9 s < 10 s idle timeout
                t.wait(ms(gaps[i]));
            }
            t.tap_enter(ms(holds[8]));
            prop_assert_eq!(run(&mut pad(), t.events()), vec![submitted(&pin)]);
        }
    }
}
