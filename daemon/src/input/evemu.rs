//! Reader and writer for the `evemu-record` text format.
//!
//! Recordings let us replay real (or carefully written) device sessions through the framers in
//! tests, and let an installer record a new reader model for a bug report. Format:
//!
//! ```text
//! # EVEMU 1.3
//! N: Addimat waiter lock          <- device name
//! I: 0003 0000 0000 0000          <- other description lines (I:, P:, B:, A:, L:, S:, ...) ignored
//! E: 0.000001 0004 0004 458792    # EV_MSC / MSC_SCAN   <- trailing comments allowed
//! E: 0.000001 0001 001e 1         <- <sec>.<usec> <type hex> <code hex> <value dec>
//! ```
//!
//! Errors name the 1-based line and the problem, never the field text: a recording of a PIN pad
//! contains the PIN.

use std::fmt::Write as _;
use std::time::Duration;

use thiserror::Error;

use super::event::InputEvent;

/// A parsed recording of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recording {
    /// The device name from the `N:` line, if there was one.
    pub name: Option<String>,
    /// The events in file order.
    pub events: Vec<InputEvent>,
}

/// A malformed line in an evemu recording.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("evemu line {line}: {problem}")]
pub struct EvemuError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub problem: EvemuProblem,
}

/// What is wrong with an evemu line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EvemuProblem {
    /// Neither a `#` comment nor an `X:` description or event line.
    #[error("not a comment, a description line (`X: ...`) or an event line (`E: ...`)")]
    Unrecognised,
    /// An `E:` line without exactly four fields.
    #[error("event line needs 4 fields `<sec>.<usec> <type> <code> <value>`, found {0}")]
    FieldCount(usize),
    /// Bad timestamp.
    #[error("timestamp must be `<seconds>.<microseconds as 6 digits>`")]
    Timestamp,
    /// Bad event type.
    #[error("event type must be 1 to 4 hex digits")]
    Type,
    /// Bad event code.
    #[error("event code must be 1 to 4 hex digits")]
    Code,
    /// Bad event value.
    #[error("event value must be a decimal 32-bit integer")]
    Value,
    /// A second `N:` line (one recording describes one device).
    #[error("second device name (`N:`) line; one recording holds one device")]
    DuplicateName,
    /// `N:` with nothing after it.
    #[error("empty device name")]
    EmptyName,
}

/// Parses an evemu recording.
pub fn parse(text: &str) -> Result<Recording, EvemuError> {
    let mut rec = Recording::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |problem| EvemuError { line, problem };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut chars = trimmed.chars();
        let (Some(tag), Some(':')) = (chars.next(), chars.next()) else {
            return Err(err(EvemuProblem::Unrecognised));
        };
        if !tag.is_ascii_uppercase() {
            return Err(err(EvemuProblem::Unrecognised));
        }
        let rest = chars.as_str();
        match tag {
            'N' => {
                let name = rest.trim();
                if name.is_empty() {
                    return Err(err(EvemuProblem::EmptyName));
                }
                if rec.name.is_some() {
                    return Err(err(EvemuProblem::DuplicateName));
                }
                rec.name = Some(name.to_owned());
            }
            'E' => rec.events.push(parse_event(rest).map_err(err)?),
            _ => {} // device description: not needed for decoding
        }
    }
    Ok(rec)
}

fn parse_event(rest: &str) -> Result<InputEvent, EvemuProblem> {
    let body = rest.split('#').next().unwrap_or_default();
    let fields: Vec<&str> = body.split_whitespace().collect();
    let [time, kind, code, value] = fields.as_slice() else {
        return Err(EvemuProblem::FieldCount(fields.len()));
    };
    Ok(InputEvent {
        time: parse_time(time).ok_or(EvemuProblem::Timestamp)?,
        kind: parse_hex16(kind).ok_or(EvemuProblem::Type)?,
        code: parse_hex16(code).ok_or(EvemuProblem::Code)?,
        value: value.parse().map_err(|_| EvemuProblem::Value)?,
    })
}

fn parse_time(field: &str) -> Option<Duration> {
    let (sec, usec) = field.split_once('.')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(sec) || usec.len() != 6 || !all_digits(usec) {
        return None;
    }
    let secs: u64 = sec.parse().ok()?;
    let micros: u32 = usec.parse().ok()?;
    Some(Duration::new(secs, micros * 1000))
}

fn parse_hex16(field: &str) -> Option<u16> {
    if field.is_empty() || field.len() > 4 || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(field, 16).ok()
}

/// Writes events in evemu format (as `evemu-record` does, minus the device capabilities), so
/// tests and tools can produce fixtures that [`parse`] and `evemu-play` read.
/// Sub-microsecond parts of timestamps are truncated.
pub fn write(name: &str, events: &[InputEvent]) -> String {
    let mut out = String::from("# EVEMU 1.3\n");
    let name: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let name = name.trim();
    let _ = writeln!(out, "N: {}", if name.is_empty() { "unnamed" } else { name });
    for ev in events {
        let _ = writeln!(
            out,
            "E: {}.{:06} {:04x} {:04x} {}",
            ev.time.as_secs(),
            ev.time.subsec_micros(),
            ev.kind,
            ev.code,
            ev.value
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "# EVEMU 1.3\n\
        # Kernel: 6.1.0\n\
        N: Sample Keyboard\n\
        I: 0003 046d c31c 0110\n\
        P: 00 00 00 00 00 00 00 00\n\
        B: 00 0b 00 00 00 00 00 00 00\n\
        A: 00 0 255 0 0 0\n\
        L: 00 00\n\
        \n\
        E: 0.000000 0004 0004 458782\t# EV_MSC / MSC_SCAN 458782\n\
        E: 0.000000 0001 0002 1\t# EV_KEY / KEY_1 1\n\
        E: 0.000000 0000 0000 0000\t# ------------ SYN_REPORT (0) ----------\n\
        E: 12.080500 0001 0002 0\n\
        E: 12.080500 0000 0003 -1\n";

    #[test]
    fn parses_header_and_events() {
        let rec = parse(SAMPLE).unwrap();
        assert_eq!(rec.name.as_deref(), Some("Sample Keyboard"));
        assert_eq!(rec.events.len(), 5);
        assert_eq!(rec.events[0], InputEvent::new(Duration::ZERO, 4, 4, 458782));
        assert_eq!(rec.events[1], InputEvent::key(Duration::ZERO, 2, 1));
        assert_eq!(
            rec.events[3],
            InputEvent::key(Duration::from_micros(12_080_500), 2, 0)
        );
        assert_eq!(rec.events[4].value, -1);
        assert!(rec.events[2].is_syn_report());
    }

    #[test]
    fn crlf_and_no_name() {
        let rec = parse("E: 1.000002 0001 001c 1\r\n").unwrap();
        assert_eq!(rec.name, None);
        assert_eq!(rec.events[0].time, Duration::from_micros(1_000_002));
    }

    fn problem(text: &str) -> EvemuError {
        parse(text).unwrap_err()
    }

    #[test]
    fn errors_name_line_and_problem() {
        let e = problem("# x\nN: a\nE: 0.1 0001 0002 1\n");
        assert_eq!(
            e,
            EvemuError {
                line: 3,
                problem: EvemuProblem::Timestamp
            }
        );
        assert_eq!(
            e.to_string(),
            "evemu line 3: timestamp must be `<seconds>.<microseconds as 6 digits>`"
        );
        assert_eq!(
            problem("E: 0.000000 0001 0002\n").problem,
            EvemuProblem::FieldCount(3)
        );
        assert_eq!(
            problem("E: 0.000000 10001 0002 1\n").problem,
            EvemuProblem::Type
        );
        assert_eq!(
            problem("E: 0.000000 0001 00g2 1\n").problem,
            EvemuProblem::Code
        );
        assert_eq!(
            problem("E: 0.000000 0001 0002 x\n").problem,
            EvemuProblem::Value
        );
        assert_eq!(problem("\n\nhello\n").line, 3);
        assert_eq!(
            problem("e: 0.000000 0001 0002 1").problem,
            EvemuProblem::Unrecognised
        );
        assert_eq!(problem("N: a\nN: b\n").problem, EvemuProblem::DuplicateName);
        assert_eq!(problem("N:   \n").problem, EvemuProblem::EmptyName);
        assert_eq!(
            problem("E: -1.000000 0001 0002 1").problem,
            EvemuProblem::Timestamp
        );
    }

    #[test]
    fn error_does_not_echo_field_text() {
        let e = problem("E: 0.000000 0001 0002 12345678901234\n");
        assert!(!e.to_string().contains("12345678901234"));
    }

    proptest! {
        #[test]
        fn write_then_parse_roundtrips(
            name in "[A-Za-z0-9 ]{1,20}",
            raw in prop::collection::vec((0u64..10_000_000_000, any::<u16>(), any::<u16>(), any::<i32>()), 0..50),
        ) {
            let events: Vec<InputEvent> = raw
                .iter()
                .map(|&(us, k, c, v)| InputEvent::new(Duration::from_micros(us), k, c, v))
                .collect();
            let rec = parse(&write(&name, &events)).unwrap();
            prop_assert_eq!(rec.events, events);
            prop_assert_eq!(rec.name.as_deref(), Some(name.trim()).filter(|n| !n.is_empty()).or(Some("unnamed")));
        }
    }
}
