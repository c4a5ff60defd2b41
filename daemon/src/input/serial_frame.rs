//! Framing of byte streams from serial readers.
//!
//! A serial read returns whatever bytes have arrived, so a frame may be split across reads or
//! several frames may arrive in one. The framer keeps state between chunks and its output
//! depends only on the byte stream, never on how it was chunked.
//!
//! - [`SerialFraming::Lines`]: a frame ends at CR, LF or CRLF; empty lines are skipped (so
//!   CRLF yields one frame, also when split between reads).
//! - [`SerialFraming::StxEtx`]: a frame is the bytes between STX (0x02) and ETX (0x03). Bytes
//!   outside a frame are dropped (counted in [`SerialFramer::dropped_bytes`]); a second STX
//!   before ETX restarts the frame (`Rejected(Interrupted)`). Payload bytes are returned as
//!   sent (ProMag MR2S sends `STX hex CR LF ETX`: trim in the profile). Binary protocols whose
//!   payload may contain 0x02/0x03 (EM4100 `02 Len Type SNR BCC 03`) need a length-aware
//!   parser instead.
//!
//! A frame longer than `max_len` is discarded up to its end and reported once as
//! `Rejected(TooLong)`.

use super::secret::{SecretBytes, wipe_bytes};

/// Start of text.
pub const STX: u8 = 0x02;
/// End of text.
pub const ETX: u8 = 0x03;

/// How frames are delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SerialFraming {
    /// Lines ended by CR, LF or CRLF.
    #[default]
    Lines,
    /// STX ... ETX.
    StxEtx,
}

/// Serial framing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialFramerConfig {
    /// Delimiting.
    pub framing: SerialFraming,
    /// Longest payload accepted, in bytes.
    pub max_len: usize,
}

impl Default for SerialFramerConfig {
    fn default() -> Self {
        Self {
            framing: SerialFraming::Lines,
            max_len: 64,
        }
    }
}

/// Why a frame was refused (never with its content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SerialReject {
    /// Longer than `max_len`.
    TooLong {
        /// Configured maximum.
        max: usize,
    },
    /// STX arrived inside a frame: the partial one is dropped.
    Interrupted,
}

/// What the framer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutcome {
    /// A complete frame's payload (delimiters removed; redacted in `Debug`).
    Frame(SecretBytes),
    /// A refused frame.
    Rejected(SerialReject),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames (StxEtx: waiting for STX).
    Idle,
    /// Collecting payload.
    InFrame,
    /// Frame too long: skipping to its end.
    Overflow,
}

/// The framer for one serial port. `Debug` shows the partial frame's length only.
#[derive(Clone)]
pub struct SerialFramer {
    config: SerialFramerConfig,
    buf: Vec<u8>,
    state: State,
    dropped: u64,
}

impl std::fmt::Debug for SerialFramer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialFramer")
            .field("config", &self.config)
            .field("pending_len", &self.buf.len())
            .field("state", &self.state)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl SerialFramer {
    /// A framer; any `max_len` works (0 rejects every non-empty frame).
    pub fn new(config: SerialFramerConfig) -> Self {
        Self {
            config,
            buf: Vec::with_capacity(config.max_len + 1),
            state: State::Idle,
            dropped: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SerialFramerConfig {
        &self.config
    }

    /// Bytes dropped outside frames so far (line noise before STX, after ETX).
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// True while a frame is partly received: the daemon may [`SerialFramer::reset`] it after
    /// its own timeout (serial reads carry no timestamps).
    pub fn is_pending(&self) -> bool {
        self.state != State::Idle || !self.buf.is_empty()
    }

    /// Forgets a partial frame (port reopened or timed out). Returns whether one was dropped.
    pub fn reset(&mut self) -> bool {
        let was = self.is_pending();
        wipe_bytes(&mut self.buf);
        self.state = State::Idle;
        was
    }

    /// Feeds the next chunk read from the port.
    #[must_use]
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SerialOutcome> {
        let mut out = Vec::new();
        for &b in chunk {
            match self.config.framing {
                SerialFraming::Lines => self.line_byte(b, &mut out),
                SerialFraming::StxEtx => self.stx_byte(b, &mut out),
            }
        }
        out
    }

    fn line_byte(&mut self, b: u8, out: &mut Vec<SerialOutcome>) {
        if b == b'\r' || b == b'\n' {
            match self.state {
                State::Overflow => out.push(self.too_long()),
                _ if !self.buf.is_empty() => out.push(self.take_frame()),
                _ => {}
            }
            self.state = State::Idle;
            return;
        }
        if self.state != State::Overflow {
            self.state = State::InFrame;
            self.collect(b);
        }
    }

    fn stx_byte(&mut self, b: u8, out: &mut Vec<SerialOutcome>) {
        match (self.state, b) {
            (State::Idle, STX) => self.state = State::InFrame,
            (State::Idle, _) => self.dropped += 1,
            (State::InFrame, STX) => {
                if !self.buf.is_empty() {
                    wipe_bytes(&mut self.buf);
                    out.push(SerialOutcome::Rejected(SerialReject::Interrupted));
                }
            }
            (State::Overflow, STX) => {
                out.push(self.too_long());
                self.state = State::InFrame;
            }
            (State::InFrame, ETX) => {
                if !self.buf.is_empty() {
                    out.push(self.take_frame());
                }
                self.state = State::Idle;
            }
            (State::Overflow, ETX) => {
                out.push(self.too_long());
                self.state = State::Idle;
            }
            (State::InFrame, _) => self.collect(b),
            (State::Overflow, _) => {}
        }
    }

    fn collect(&mut self, b: u8) {
        self.buf.push(b);
        if self.buf.len() > self.config.max_len {
            wipe_bytes(&mut self.buf);
            self.state = State::Overflow;
        }
    }

    fn take_frame(&mut self) -> SerialOutcome {
        let frame = SecretBytes::new(self.buf.clone());
        wipe_bytes(&mut self.buf);
        SerialOutcome::Frame(frame)
    }

    fn too_long(&self) -> SerialOutcome {
        SerialOutcome::Rejected(SerialReject::TooLong {
            max: self.config.max_len,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framer(framing: SerialFraming, max_len: usize) -> SerialFramer {
        SerialFramer::new(SerialFramerConfig { framing, max_len })
    }

    fn frames(f: &mut SerialFramer, chunks: &[&[u8]]) -> Vec<SerialOutcome> {
        chunks.iter().flat_map(|c| f.push(c)).collect()
    }

    fn frame(b: &[u8]) -> SerialOutcome {
        SerialOutcome::Frame(SecretBytes::new(b.to_vec()))
    }

    #[test]
    fn lines_cr_lf_crlf_split_across_reads() {
        let mut f = framer(SerialFraming::Lines, 32);
        let got = frames(
            &mut f,
            &[
                b"AC0000",
                b"2645697A01\r",
                b"\n0009",
                b"334109\n\nX\r",
                b"\r\nY",
            ],
        );
        assert_eq!(
            got,
            vec![
                frame(b"AC00002645697A01"),
                frame(b"0009334109"),
                frame(b"X")
            ]
        );
        assert!(f.is_pending(), "Y waits for its terminator");
        assert_eq!(f.push(b"\r\n"), vec![frame(b"Y")]);
        assert!(!f.is_pending());
    }

    #[test]
    fn lines_too_long_reported_once_then_recovers() {
        let mut f = framer(SerialFraming::Lines, 4);
        let got = frames(&mut f, &[b"123", b"456789", b"\r\n1234\r\n"]);
        assert_eq!(
            got,
            vec![
                SerialOutcome::Rejected(SerialReject::TooLong { max: 4 }),
                frame(b"1234")
            ]
        );
    }

    #[test]
    fn stx_etx_with_garbage_and_split_chunks() {
        let mut f = framer(SerialFraming::StxEtx, 32);
        let got = frames(
            &mut f,
            &[
                b"\xff\x00noise\x02AC0000264",
                b"5697A01\r\n",
                b"\x03junk\x02",
                b"12\x03",
            ],
        );
        assert_eq!(got, vec![frame(b"AC00002645697A01\r\n"), frame(b"12")]);
        assert_eq!(f.dropped_bytes(), 2 + 5 + 4);
    }

    #[test]
    fn stx_restarts_and_overflow() {
        let mut f = framer(SerialFraming::StxEtx, 4);
        let got = frames(
            &mut f,
            &[
                b"\x02AB\x02CD\x03",
                b"\x02\x03",
                b"\x0212345\x03\x0212345\x02OK\x03",
            ],
        );
        assert_eq!(
            got,
            vec![
                SerialOutcome::Rejected(SerialReject::Interrupted),
                frame(b"CD"),
                SerialOutcome::Rejected(SerialReject::TooLong { max: 4 }),
                SerialOutcome::Rejected(SerialReject::TooLong { max: 4 }),
                frame(b"OK"),
            ]
        );
    }

    #[test]
    fn reset_drops_partial() {
        let mut f = framer(SerialFraming::StxEtx, 8);
        assert!(f.push(b"\x02AB").is_empty());
        assert!(f.reset());
        assert!(!f.reset());
        assert_eq!(f.push(b"CD\x03\x02EF\x03"), vec![frame(b"EF")]);
    }

    #[test]
    fn debug_hides_payload() {
        let text = format!("{:?}", frame(b"0009334109"));
        assert!(!text.contains("0009334109"), "{text}");
        let mut f = framer(SerialFraming::Lines, 32);
        assert!(f.push(b"XK9Q").is_empty());
        let text = format!("{f:?}");
        assert!(
            text.contains("pending_len: 4") && !text.contains("XK9Q") && !text.contains("88"),
            "{text}"
        );
    }

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        // Biased towards delimiters so frames actually form.
        prop::collection::vec(
            prop_oneof![
                4 => b'0'..=b'9',
                1 => Just(b'\r'),
                1 => Just(b'\n'),
                1 => Just(STX),
                1 => Just(ETX),
                1 => any::<u8>(),
            ],
            0..200,
        )
    }

    proptest! {
        #[test]
        fn output_is_independent_of_chunking(
            bytes in stream(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
            stx in any::<bool>(),
            max_len in 0usize..12,
        ) {
            let framing = if stx { SerialFraming::StxEtx } else { SerialFraming::Lines };
            let whole = framer(framing, max_len).push(&bytes);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.push(0);
            points.push(bytes.len());
            points.sort_unstable();
            let mut f = framer(framing, max_len);
            let chunked: Vec<SerialOutcome> = points
                .windows(2)
                .flat_map(|w| f.push(&bytes[w[0]..w[1]]))
                .collect();
            prop_assert_eq!(chunked, whole);
        }

        #[test]
        fn lines_round_trip(lines in prop::collection::vec("[0-9A-F]{1,16}", 0..10), crlf in any::<bool>()) {
            let sep: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let mut bytes = Vec::new();
            for l in &lines {
                bytes.extend_from_slice(l.as_bytes());
                bytes.extend_from_slice(sep);
            }
            let got = framer(SerialFraming::Lines, 16).push(&bytes);
            let want: Vec<SerialOutcome> = lines.iter().map(|l| frame(l.as_bytes())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
