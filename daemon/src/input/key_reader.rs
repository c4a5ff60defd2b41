//! Key reader burst framer: turns one keyboard-mode reader's key events into raw id frames.
//!
//! A reader (iButton, RFID, token) types a whole id within a few milliseconds per key. Since
//! each device is read separately and its role is configured, timing is used only to frame
//! bursts within this one device, never to guess whether a human is typing.
//!
//! Rules for each key press (auto-repeat, value 2, is ignored: readers do not hold keys):
//! 1. If more than `max_gap` passed since the previous press, the partial frame is discarded
//!    (`Rejected(Incomplete)`, or `Removed` if it spells the removal token), and the current key
//!    starts a new frame.
//! 2. Characters are appended. When the frame exceeds `prefix + max_len + suffix` characters it
//!    is wiped and the rest of the burst swallowed; the terminator (or the gap) then yields one
//!    `Rejected(TooLong)`.
//! 3. The terminator (Enter, Tab, or reaching a fixed length) completes the frame:
//!    raw == removal token → `Removed`; missing prefix/suffix → rejected; prefix and suffix are
//!    stripped; body == removal token → `Removed`; body length outside `min_len..=max_len` →
//!    rejected; otherwise `Frame(body)`.
//! 4. Enter/Tab (when not the terminator), Escape and Backspace in the middle of a frame reject
//!    it (`UnexpectedKey`); on an empty frame they are ignored, as are unmapped keys (function
//!    keys, Ctrl, ...).
//! 5. `SYN_DROPPED` discards the partial frame (`Rejected(SyncLost)`) and the rest of that
//!    burst (up to its terminator or a gap after the drop): its tail must not pass as an id.
//!    If nothing was pending, a burst that follows within the gap is reported at its end.
//!
//! Rejections never carry the frame's content.

use std::time::Duration;

use thiserror::Error;

use super::event::InputEvent;
use super::keymap::{Decoded, DecodedKey, KeyboardState, encode};
use super::secret::{Secret, wipe_string};

/// What ends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Terminator {
    /// Enter or keypad Enter (most readers).
    #[default]
    Enter,
    /// Tab (readers set up for form fields).
    Tab,
    /// No terminator key: the frame is complete after this many characters, counting prefix
    /// and suffix.
    FixedLength(usize),
}

/// Reader framing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReaderConfig {
    /// Longest pause between two key presses of one burst.
    pub max_gap: Duration,
    /// Text the reader types before every id (empty: none). Required and stripped.
    pub prefix: String,
    /// Text the reader types after every id, before the terminator (empty: none).
    pub suffix: String,
    /// What ends a frame.
    pub terminator: Terminator,
    /// Fewest characters of the id (without prefix/suffix).
    pub min_len: usize,
    /// Most characters of the id (without prefix/suffix).
    pub max_len: usize,
    /// What the reader types when a key is pulled (e.g. `OUT` for Addimat locks).
    pub removal_token: Option<String>,
}

impl Default for KeyReaderConfig {
    fn default() -> Self {
        Self {
            max_gap: Duration::from_millis(100),
            prefix: String::new(),
            suffix: String::new(),
            terminator: Terminator::Enter,
            min_len: 1,
            max_len: 64,
            removal_token: None,
        }
    }
}

/// Which configured text field is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    /// `prefix`.
    Prefix,
    /// `suffix`.
    Suffix,
    /// `removal_token`.
    RemovalToken,
}

/// An inconsistent [`KeyReaderConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyReaderConfigError {
    /// Every burst would be split.
    #[error("reader max_gap must be greater than zero")]
    ZeroGap,
    /// Empty ids are never valid.
    #[error("reader min_len must be at least 1")]
    ZeroMinLen,
    /// No length could be accepted.
    #[error("reader min_len {min} is greater than max_len {max}")]
    MinAboveMax {
        /// Configured minimum.
        min: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A fixed length that cannot hold prefix + an id of allowed length + suffix.
    #[error("reader fixed length {fixed} leaves an id length outside min_len..=max_len")]
    FixedLengthMismatch {
        /// Configured fixed length.
        fixed: usize,
    },
    /// A text a reader could not type through the US-position table, so it would never match.
    #[error("reader {0:?} contains a character the US key table cannot produce")]
    Untypable(TextField),
    /// An empty removal token would match nothing useful.
    #[error("reader removal_token is empty")]
    EmptyRemovalToken,
    /// A removal token longer than the longest frame can never be seen.
    #[error("reader removal_token is longer than the longest frame")]
    RemovalTokenTooLong,
}

impl KeyReaderConfig {
    /// Longest raw frame (prefix + id + suffix) in characters.
    pub fn max_frame_len(&self) -> usize {
        self.prefix.len() + self.max_len + self.suffix.len()
    }

    /// Checks the settings are consistent.
    pub fn validate(&self) -> Result<(), KeyReaderConfigError> {
        let (min, max) = (self.min_len, self.max_len);
        if self.max_gap.is_zero() {
            return Err(KeyReaderConfigError::ZeroGap);
        }
        if min == 0 {
            return Err(KeyReaderConfigError::ZeroMinLen);
        }
        if min > max {
            return Err(KeyReaderConfigError::MinAboveMax { min, max });
        }
        let typable = |s: &str| s.chars().all(|c| encode(c).is_some());
        if !typable(&self.prefix) {
            return Err(KeyReaderConfigError::Untypable(TextField::Prefix));
        }
        if !typable(&self.suffix) {
            return Err(KeyReaderConfigError::Untypable(TextField::Suffix));
        }
        if let Terminator::FixedLength(fixed) = self.terminator {
            let wrap = self.prefix.len() + self.suffix.len();
            if fixed < wrap || !(min..=max).contains(&(fixed - wrap)) {
                return Err(KeyReaderConfigError::FixedLengthMismatch { fixed });
            }
        }
        if let Some(token) = &self.removal_token {
            if token.is_empty() {
                return Err(KeyReaderConfigError::EmptyRemovalToken);
            }
            if !typable(token) {
                return Err(KeyReaderConfigError::Untypable(TextField::RemovalToken));
            }
            if token.len() > self.max_frame_len() {
                return Err(KeyReaderConfigError::RemovalTokenTooLong);
            }
        }
        Ok(())
    }
}

/// Why a frame was refused. Lengths are reported (they help diagnose a misconfigured
/// profile); the content never is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The burst stopped before its terminator (gap exceeded or [`KeyReader::expire`]).
    Incomplete,
    /// `SYN_DROPPED`: keys were lost.
    SyncLost,
    /// A control key (Escape, Backspace, a non-terminator Enter/Tab) inside a frame.
    UnexpectedKey,
    /// The configured prefix was not there.
    MissingPrefix,
    /// The configured suffix was not there.
    MissingSuffix,
    /// Id shorter than `min_len`.
    TooShort {
        /// Characters read.
        len: usize,
        /// Configured minimum.
        min: usize,
    },
    /// Frame longer than allowed.
    TooLong {
        /// Configured maximum id length.
        max: usize,
    },
}

/// What the framer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderOutcome {
    /// A complete id as typed, prefix and suffix stripped (redacted in `Debug`).
    Frame(Secret),
    /// The reader typed its removal token: the key was pulled.
    Removed,
    /// A bad or partial read.
    Rejected(RejectReason),
}

/// A burst being thrown away until its end (terminator or gap), so its tail never becomes
/// a frame of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Discard {
    reason: RejectReason,
    /// Already reported when the discard began.
    reported: bool,
    /// Keys of the burst were swallowed (there is something to report).
    swallowed: bool,
}

impl Discard {
    fn end(self) -> Option<ReaderOutcome> {
        (!self.reported && self.swallowed).then_some(ReaderOutcome::Rejected(self.reason))
    }
}

/// The reader state machine for one device. `Debug` shows the frame's length, not its text.
#[derive(Clone)]
pub struct KeyReader {
    config: KeyReaderConfig,
    keyboard: KeyboardState,
    frame: String,
    discard: Option<Discard>,
    last_press: Option<Duration>,
}

impl std::fmt::Debug for KeyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyReader")
            .field("config", &self.config)
            .field("keyboard", &self.keyboard)
            .field("pending_len", &self.frame.len())
            .field("discard", &self.discard)
            .field("last_press", &self.last_press)
            .finish()
    }
}

impl KeyReader {
    /// A framer with validated settings.
    pub fn new(config: KeyReaderConfig) -> Result<Self, KeyReaderConfigError> {
        config.validate()?;
        let frame = String::with_capacity(config.max_frame_len() + 1);
        Ok(Self {
            config,
            keyboard: KeyboardState::new(),
            frame,
            discard: None,
            last_press: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &KeyReaderConfig {
        &self.config
    }

    /// The modifier state (e.g. to set caps lock from the device LED when opened).
    pub fn keyboard_mut(&mut self) -> &mut KeyboardState {
        &mut self.keyboard
    }

    /// True while a frame is being received (or a broken burst is being thrown away).
    pub fn is_pending(&self) -> bool {
        !self.frame.is_empty() || self.discard.is_some()
    }

    /// When the partial frame goes stale: [`KeyReader::expire`] discards it once `now` is past
    /// this. `None` when idle.
    pub fn deadline(&self) -> Option<Duration> {
        if !self.is_pending() {
            return None;
        }
        self.last_press
            .map(|t| t.saturating_add(self.config.max_gap))
    }

    /// Ends a burst whose last key is more than `max_gap` before `now` (same clock as event
    /// timestamps; a clock going backwards counts as no time passed). A stale partial that
    /// spells the removal token yields `Removed` (readers that type it without a terminator);
    /// any other partial yields `Rejected(Incomplete)`.
    pub fn expire(&mut self, now: Duration) -> Option<ReaderOutcome> {
        let last = self.last_press?;
        if !self.is_pending() || now.saturating_sub(last) <= self.config.max_gap {
            return None;
        }
        let outcome = match self.discard {
            Some(discard) => discard.end(),
            None => {
                let removal = self.is_removal(&self.frame)
                    || self.strip(&self.frame).is_ok_and(|b| self.is_removal(b));
                Some(if removal {
                    ReaderOutcome::Removed
                } else {
                    ReaderOutcome::Rejected(RejectReason::Incomplete)
                })
            }
        };
        self.reset();
        outcome
    }

    /// Forgets any partial frame silently (device closed or re-grabbed).
    pub fn reset(&mut self) {
        wipe_string(&mut self.frame);
        self.discard = None;
    }

    /// Feeds one raw event; returns what it caused (at most two outcomes: a stale partial
    /// followed by the effect of the new key).
    ///
    /// After `SYN_DROPPED` the rest of the burst is thrown away too (up to its terminator or a
    /// gap, measured from the drop), because its first keys may be among the lost events.
    #[must_use]
    pub fn feed(&mut self, ev: &InputEvent) -> Vec<ReaderOutcome> {
        let mut out = Vec::new();
        match self.keyboard.event(ev) {
            None => {}
            Some(Decoded::SyncLost) => {
                let was_pending = self.is_pending();
                self.reset();
                self.discard = Some(Discard {
                    reason: RejectReason::SyncLost,
                    reported: was_pending,
                    swallowed: false,
                });
                self.last_press = Some(ev.time);
                if was_pending {
                    out.push(ReaderOutcome::Rejected(RejectReason::SyncLost));
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

    fn key(&mut self, key: DecodedKey) -> Option<ReaderOutcome> {
        let terminator = self.config.terminator;
        let is_terminator = matches!(
            (key, terminator),
            (DecodedKey::Enter, Terminator::Enter) | (DecodedKey::Tab, Terminator::Tab)
        );
        if let Some(discard) = &mut self.discard {
            if is_terminator {
                return self.complete();
            }
            if !matches!(key, DecodedKey::Other(_)) {
                discard.swallowed = true;
            }
            return None;
        }
        match key {
            _ if is_terminator => self.complete(),
            DecodedKey::Char(c) => {
                self.frame.push(c);
                if self.frame.len() > self.config.max_frame_len() {
                    self.reset();
                    self.discard = Some(Discard {
                        reason: RejectReason::TooLong {
                            max: self.config.max_len,
                        },
                        reported: false,
                        swallowed: true,
                    });
                    return None;
                }
                match terminator {
                    Terminator::FixedLength(n) if self.frame.len() == n => self.complete(),
                    _ => None,
                }
            }
            DecodedKey::Enter | DecodedKey::Tab | DecodedKey::Escape | DecodedKey::Backspace => {
                if self.is_pending() {
                    self.reset();
                    Some(ReaderOutcome::Rejected(RejectReason::UnexpectedKey))
                } else {
                    None
                }
            }
            DecodedKey::Other(_) => None,
        }
    }

    fn complete(&mut self) -> Option<ReaderOutcome> {
        if let Some(discard) = self.discard {
            self.reset();
            return discard.end();
        }
        if self.frame.is_empty() {
            return None;
        }
        let outcome = self.judge();
        self.reset();
        Some(outcome)
    }

    fn judge(&self) -> ReaderOutcome {
        let raw = self.frame.as_str();
        if self.is_removal(raw) {
            return ReaderOutcome::Removed;
        }
        let body = match self.strip(raw) {
            Ok(body) => body,
            Err(reason) => return ReaderOutcome::Rejected(reason),
        };
        if self.is_removal(body) {
            return ReaderOutcome::Removed;
        }
        let (len, min, max) = (body.len(), self.config.min_len, self.config.max_len);
        if len < min {
            ReaderOutcome::Rejected(RejectReason::TooShort { len, min })
        } else if len > max {
            ReaderOutcome::Rejected(RejectReason::TooLong { max })
        } else {
            ReaderOutcome::Frame(Secret::from(body))
        }
    }

    fn strip<'a>(&self, raw: &'a str) -> Result<&'a str, RejectReason> {
        let body = raw
            .strip_prefix(self.config.prefix.as_str())
            .ok_or(RejectReason::MissingPrefix)?;
        body.strip_suffix(self.config.suffix.as_str())
            .ok_or(RejectReason::MissingSuffix)
    }

    fn is_removal(&self, text: &str) -> bool {
        self.config.removal_token.as_deref() == Some(text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::keymap::{KEY_ESC, KEY_F1, KEY_TAB};
    use super::super::synth::Typist;
    use super::*;
    use proptest::prelude::*;

    const KEY: Duration = Duration::from_millis(2);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn reader(config: KeyReaderConfig) -> KeyReader {
        KeyReader::new(config).unwrap()
    }

    fn run(r: &mut KeyReader, events: &[InputEvent]) -> Vec<ReaderOutcome> {
        events.iter().flat_map(|e| r.feed(e)).collect()
    }

    fn burst(t: &mut Typist, text: &str) {
        t.type_text(text, KEY, KEY).unwrap().tap_enter(KEY);
    }

    fn frame(s: &str) -> ReaderOutcome {
        ReaderOutcome::Frame(Secret::from(s))
    }

    fn rejected(r: RejectReason) -> ReaderOutcome {
        ReaderOutcome::Rejected(r)
    }

    #[test]
    fn fast_burst_is_one_frame() {
        let mut t = Typist::new(ms(0));
        burst(&mut t, "0013748911");
        t.wait(ms(2000));
        burst(&mut t, "A1b2");
        assert_eq!(
            run(&mut reader(KeyReaderConfig::default()), t.events()),
            vec![frame("0013748911"), frame("A1b2")]
        );
    }

    #[test]
    fn gap_exceeded_splits_and_new_key_starts_frame() {
        let mut t = Typist::new(ms(0));
        t.type_text("1234", KEY, KEY).unwrap().wait(ms(150));
        burst(&mut t, "5678");
        assert_eq!(
            run(&mut reader(KeyReaderConfig::default()), t.events()),
            vec![rejected(RejectReason::Incomplete), frame("5678")]
        );
    }

    #[test]
    fn terminator_arriving_late_is_not_attached() {
        let mut t = Typist::new(ms(0));
        t.type_text("1234", KEY, KEY)
            .unwrap()
            .wait(ms(500))
            .tap_enter(KEY);
        assert_eq!(
            run(&mut reader(KeyReaderConfig::default()), t.events()),
            vec![rejected(RejectReason::Incomplete)]
        );
    }

    #[test]
    fn expire_and_deadline() {
        let mut r = reader(KeyReaderConfig::default());
        let mut t = Typist::new(ms(10));
        t.type_text("12", KEY, KEY).unwrap();
        assert!(run(&mut r, t.events()).is_empty());
        let last = ms(10) + KEY + KEY; // second press
        assert_eq!(r.deadline(), Some(last + ms(100)));
        assert_eq!(r.expire(last + ms(100)), None);
        assert_eq!(
            r.expire(last + ms(101)),
            Some(rejected(RejectReason::Incomplete))
        );
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn prefix_and_suffix_are_required_and_stripped() {
        let cfg = KeyReaderConfig {
            prefix: "%B".into(),
            suffix: "?".into(),
            ..KeyReaderConfig::default()
        };
        let mut t = Typist::new(ms(0));
        burst(&mut t, "%B0009334109?");
        t.wait(ms(1000));
        burst(&mut t, "0009334109?");
        t.wait(ms(1000));
        burst(&mut t, "%B0009334109");
        t.wait(ms(1000));
        burst(&mut t, "%B?");
        assert_eq!(
            run(&mut reader(cfg), t.events()),
            vec![
                frame("0009334109"),
                rejected(RejectReason::MissingPrefix),
                rejected(RejectReason::MissingSuffix),
                rejected(RejectReason::TooShort { len: 0, min: 1 }),
            ]
        );
    }

    #[test]
    fn removal_token() {
        let cfg = KeyReaderConfig {
            removal_token: Some("OUT".into()),
            min_len: 16,
            max_len: 16,
            ..KeyReaderConfig::default()
        };
        let mut t = Typist::new(ms(0));
        burst(&mut t, "AC00002645697A01");
        t.wait(ms(5000));
        burst(&mut t, "OUT");
        t.wait(ms(5000));
        burst(&mut t, "OUTX");
        assert_eq!(
            run(&mut reader(cfg.clone()), t.events()),
            vec![
                frame("AC00002645697A01"),
                ReaderOutcome::Removed,
                rejected(RejectReason::TooShort { len: 4, min: 16 })
            ]
        );
        // Wrapped in prefix/suffix, and without any terminator (seen when the gap expires).
        let cfg = KeyReaderConfig {
            prefix: "[".into(),
            suffix: "]".into(),
            ..cfg
        };
        let mut t = Typist::new(ms(0));
        burst(&mut t, "[OUT]");
        t.wait(ms(1000)).type_text("OUT", KEY, KEY).unwrap();
        let mut r = reader(cfg);
        assert_eq!(run(&mut r, t.events()), vec![ReaderOutcome::Removed]);
        assert_eq!(r.expire(t.now() + ms(200)), Some(ReaderOutcome::Removed));
    }

    #[test]
    fn tab_and_fixed_length_terminators() {
        let cfg = KeyReaderConfig {
            terminator: Terminator::Tab,
            ..KeyReaderConfig::default()
        };
        let mut t = Typist::new(ms(0));
        t.type_text("777", KEY, KEY).unwrap().tap(KEY_TAB, KEY);
        t.wait(ms(500));
        burst(&mut t, "888"); // Enter is not the terminator here
        assert_eq!(
            run(&mut reader(cfg), t.events()),
            vec![frame("777"), rejected(RejectReason::UnexpectedKey)]
        );

        let cfg = KeyReaderConfig {
            terminator: Terminator::FixedLength(12),
            prefix: "ID".into(),
            min_len: 10,
            max_len: 10,
            ..KeyReaderConfig::default()
        };
        let mut t = Typist::new(ms(0));
        t.type_text("ID0009334109ID0000000042", KEY, KEY).unwrap();
        t.tap_enter(KEY); // a stray Enter after a complete frame is ignored
        assert_eq!(
            run(&mut reader(cfg), t.events()),
            vec![frame("0009334109"), frame("0000000042")]
        );
    }

    #[test]
    fn too_long_rejected_once() {
        let cfg = KeyReaderConfig {
            max_len: 8,
            ..KeyReaderConfig::default()
        };
        let mut t = Typist::new(ms(0));
        burst(&mut t, "0123456789ABCDEF");
        t.wait(ms(500));
        burst(&mut t, "01234567");
        t.wait(ms(500)).type_text("0123456789", KEY, KEY).unwrap();
        let mut r = reader(cfg);
        assert_eq!(
            run(&mut r, t.events()),
            vec![
                rejected(RejectReason::TooLong { max: 8 }),
                frame("01234567")
            ]
        );
        assert_eq!(
            r.expire(t.now() + ms(500)),
            Some(rejected(RejectReason::TooLong { max: 8 }))
        );
    }

    #[test]
    fn control_keys_inside_frame_reject_and_unmapped_are_ignored() {
        let mut t = Typist::new(ms(0));
        t.type_text("12", KEY, KEY).unwrap().tap(KEY_ESC, KEY);
        t.tap(KEY_ESC, KEY).wait(ms(500));
        t.type_text("34", KEY, KEY).unwrap().tap(KEY_F1, KEY);
        t.type_text("56", KEY, KEY).unwrap().tap_enter(KEY);
        assert_eq!(
            run(&mut reader(KeyReaderConfig::default()), t.events()),
            vec![rejected(RejectReason::UnexpectedKey), frame("3456")]
        );
    }

    #[test]
    fn syn_dropped_discards_and_next_burst_is_fine() {
        let mut t = Typist::new(ms(0));
        t.type_text("0013", KEY, KEY).unwrap().syn_dropped();
        t.type_text("748911", KEY, KEY).unwrap().tap_enter(KEY);
        t.wait(ms(800));
        burst(&mut t, "0013748911");
        assert_eq!(
            run(&mut reader(KeyReaderConfig::default()), t.events()),
            vec![rejected(RejectReason::SyncLost), frame("0013748911")],
            "the tail of the cut burst must not become a frame"
        );
        // A drop between bursts may have eaten the start of the next burst: that burst is
        // thrown away and reported once; a burst after a gap is fine.
        let mut t = Typist::new(ms(0));
        t.syn_dropped();
        burst(&mut t, "3748911");
        t.wait(ms(800));
        burst(&mut t, "0013748911");
        assert_eq!(
            run(&mut reader(KeyReaderConfig::default()), t.events()),
            vec![rejected(RejectReason::SyncLost), frame("0013748911")]
        );
    }

    #[test]
    fn debug_hides_partial_frame() {
        let mut r = reader(KeyReaderConfig::default());
        let mut t = Typist::new(ms(0));
        t.type_text("XK9Q", KEY, KEY).unwrap();
        let _ = run(&mut r, t.events());
        let text = format!("{r:?}");
        assert!(text.contains("pending_len: 4"), "{text}");
        assert!(!text.contains("XK9Q"), "{text}");
    }

    #[test]
    fn auto_repeat_ignored() {
        let mut t = Typist::new(ms(0));
        t.type_text("12", KEY, KEY).unwrap();
        let (code, _) = encode('3').unwrap();
        t.key(code, 1)
            .wait(KEY)
            .key(code, 2)
            .key(code, 2)
            .key(code, 0);
        burst(&mut t, "4");
        assert_eq!(
            run(&mut reader(KeyReaderConfig::default()), t.events()),
            vec![frame("1234")]
        );
    }

    #[test]
    fn config_validation() {
        let d = KeyReaderConfig::default;
        let bad = |c: KeyReaderConfig| c.validate().unwrap_err();
        assert_eq!(
            bad(KeyReaderConfig {
                max_gap: Duration::ZERO,
                ..d()
            }),
            KeyReaderConfigError::ZeroGap
        );
        assert_eq!(
            bad(KeyReaderConfig { min_len: 0, ..d() }),
            KeyReaderConfigError::ZeroMinLen
        );
        assert_eq!(
            bad(KeyReaderConfig {
                prefix: "é".into(),
                ..d()
            }),
            KeyReaderConfigError::Untypable(TextField::Prefix)
        );
        assert_eq!(
            bad(KeyReaderConfig {
                terminator: Terminator::FixedLength(3),
                prefix: "ABCD".into(),
                ..d()
            }),
            KeyReaderConfigError::FixedLengthMismatch { fixed: 3 }
        );
        assert_eq!(
            bad(KeyReaderConfig {
                removal_token: Some(String::new()),
                ..d()
            }),
            KeyReaderConfigError::EmptyRemovalToken
        );
        assert_eq!(
            bad(KeyReaderConfig {
                removal_token: Some("REMOVED".into()),
                max_len: 4,
                min_len: 4,
                ..d()
            }),
            KeyReaderConfigError::RemovalTokenTooLong
        );
    }

    proptest! {
        #[test]
        fn any_id_typed_within_gap_is_one_frame(
            id in "[0-9A-Fa-f]{1,32}",
            gaps in prop::collection::vec(0u64..=48, 33),
        ) {
            let mut t = Typist::new(ms(7));
            for (c, gap) in id.chars().zip(&gaps) {
                // press-to-press = 2 ms hold + gap <= 50 ms < 100 ms
                t.type_char(c, KEY).unwrap().wait(ms(*gap));
            }
            t.tap_enter(KEY);
            prop_assert_eq!(
                run(&mut reader(KeyReaderConfig::default()), t.events()),
                vec![frame(&id)]
            );
        }
    }
}
