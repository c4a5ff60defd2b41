//! End-to-end tests on evemu recordings in `tests/fixtures/`: parse, frame, canonicalise.
//! `input::evemu` is a test-only helper: this crate's `testing` feature, enabled for its own
//! tests by its dev-dependency on itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tillgate_daemon::input;

use input::evemu::{self, Recording};
use input::event::{EV_KEY, InputEvent, KEY_DOWN};
use input::key_reader::{KeyReader, ReaderOutcome, RejectReason};
use input::pin_pad::{PinOutcome, PinPad, PinPadConfig};
use input::profile::builtin;
use input::secret::Secret;
use input::serial_frame::{SerialFramer, SerialFramerConfig, SerialFraming, SerialOutcome};

const PIN_TOPROW: &str = include_str!("fixtures/pin_human_toprow.evemu");
const PIN_NUMPAD: &str = include_str!("fixtures/pin_numpad_repeat.evemu");
const ADDIMAT: &str = include_str!("fixtures/addimat_insert_remove.evemu");
const RFID_DROPPED: &str = include_str!("fixtures/rfid_syn_dropped.evemu");

/// Canonical id of the fixture key AC00002645697A01 (read order).
const CANONICAL: &str = "017A6945260000AC";

fn load(text: &str) -> Recording {
    evemu::parse(text).unwrap()
}

/// Gaps between successive key presses (value 1) in a recording.
fn press_gaps(events: &[InputEvent]) -> Vec<Duration> {
    let presses: Vec<Duration> = events
        .iter()
        .filter(|e| e.kind == EV_KEY && e.value == KEY_DOWN)
        .map(|e| e.time)
        .collect();
    presses.windows(2).map(|w| w[1] - w[0]).collect()
}

fn pin_pad(events: &[InputEvent]) -> Vec<PinOutcome> {
    let mut pad = PinPad::new(PinPadConfig::default()).unwrap();
    events.iter().flat_map(|e| pad.feed(e)).collect()
}

fn read(profile: &str, events: &[InputEvent]) -> Vec<ReaderOutcome> {
    let mut reader = builtin(profile).unwrap().key_reader();
    events.iter().flat_map(|e| reader.feed(e)).collect()
}

fn submitted(pin: &str) -> PinOutcome {
    PinOutcome::Submitted(Secret::from(pin))
}

fn frame(raw: &str) -> ReaderOutcome {
    ReaderOutcome::Frame(Secret::from(raw))
}

#[test]
fn fixtures_are_what_they_claim() {
    let human = load(PIN_TOPROW);
    assert_eq!(human.name.as_deref(), Some("Lenovo USB Keyboard"));
    let gaps = press_gaps(&human.events);
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(300)),
        "{gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_millis(900)),
        "{gaps:?}"
    );

    let reader = load(ADDIMAT);
    assert_eq!(reader.name.as_deref(), Some("Addimat Waiter Lock"));
    let gaps = press_gaps(&reader.events);
    let fast = gaps
        .iter()
        .filter(|g| **g <= Duration::from_millis(6))
        .count();
    assert_eq!(
        fast,
        gaps.len() - 1,
        "one slow gap between insert and removal"
    );
}

#[test]
fn slow_human_pin_on_top_row() {
    assert_eq!(pin_pad(&load(PIN_TOPROW).events), vec![submitted("135790")]);
}

#[test]
fn numpad_with_auto_repeat_and_kp_enter() {
    let rec = load(PIN_NUMPAD);
    assert!(rec.events.iter().any(|e| e.kind == EV_KEY && e.value == 2));
    assert_eq!(pin_pad(&rec.events), vec![submitted("2468")]);
}

#[test]
fn addimat_burst_is_one_id_then_removal() {
    let events = load(ADDIMAT).events;
    let out = read("addimat", &events);
    assert_eq!(out, vec![frame("AC00002645697A01"), ReaderOutcome::Removed]);
    let ReaderOutcome::Frame(raw) = &out[0] else {
        panic!("no frame");
    };
    let id = builtin("addimat").unwrap().canonical_id(raw).unwrap();
    assert_eq!(id.expose(), CANONICAL);
}

#[test]
fn rfid_burst_cut_by_syn_dropped_then_clean_burst() {
    let out = read("rfid-em4100-dec10", &load(RFID_DROPPED).events);
    assert_eq!(
        out,
        vec![
            ReaderOutcome::Rejected(RejectReason::SyncLost),
            frame("0009334109")
        ]
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Device {
    Pad,
    Reader,
}

/// Both devices' events in arrival (timestamp) order, tagged with their device.
fn interleaved() -> Vec<(Device, InputEvent)> {
    let pad = load(PIN_NUMPAD).events;
    // Shift the reader so its insert burst lands while the human holds the 4 on the keypad.
    let shift = Duration::from_millis(3_600);
    let reader = load(ADDIMAT).events.into_iter().map(|mut e| {
        e.time += shift;
        e
    });
    let mut all: Vec<(Device, InputEvent)> = pad
        .into_iter()
        .map(|e| (Device::Pad, e))
        .chain(reader.map(|e| (Device::Reader, e)))
        .collect();
    all.sort_by_key(|(_, e)| e.time); // stable: per-device order kept
    all
}

#[test]
fn reader_burst_while_human_types_on_other_device() {
    let events = interleaved();
    // The burst really is in the middle of the PIN entry.
    let first_reader = events
        .iter()
        .position(|(d, _)| *d == Device::Reader)
        .unwrap();
    let last_pad = events.iter().rposition(|(d, _)| *d == Device::Pad).unwrap();
    assert!(first_reader < last_pad);

    let mut pad = PinPad::new(PinPadConfig::default()).unwrap();
    let mut reader: KeyReader = builtin("addimat").unwrap().key_reader();
    let (mut pins, mut reads) = (Vec::new(), Vec::new());
    for (device, ev) in &events {
        match device {
            Device::Pad => pins.extend(pad.feed(ev)),
            Device::Reader => reads.extend(reader.feed(ev)),
        }
    }
    assert_eq!(pins, vec![submitted("2468")]);
    assert_eq!(
        reads,
        vec![frame("AC00002645697A01"), ReaderOutcome::Removed]
    );

    // Control: one framer fed both devices' events (what a single merged keyboard stream would
    // give) does not produce the PIN, so the test above would catch mixing.
    let mut merged = PinPad::new(PinPadConfig::default()).unwrap();
    let mixed: Vec<PinOutcome> = events.iter().flat_map(|(_, e)| merged.feed(e)).collect();
    assert!(!mixed.contains(&submitted("2468")), "{mixed:?}");
}

#[test]
fn evemu_round_trip_of_fixture() {
    let rec = load(ADDIMAT);
    let again = evemu::parse(&evemu::write(rec.name.as_deref().unwrap(), &rec.events)).unwrap();
    assert_eq!(again, rec);
}

#[test]
fn serial_reader_frames_into_same_canonical_id() {
    // ProMag-style STX hex CR LF ETX, split across reads, with line noise before STX.
    let mut framer = SerialFramer::new(SerialFramerConfig {
        framing: SerialFraming::StxEtx,
        max_len: 32,
    });
    let chunks: [&[u8]; 3] = [b"\x00\xfe\x02AC0000", b"2645697A01\r", b"\n\x03"];
    let frames: Vec<SerialOutcome> = chunks.iter().flat_map(|c| framer.push(c)).collect();
    let [SerialOutcome::Frame(bytes)] = frames.as_slice() else {
        panic!("{frames:?}");
    };
    let id = builtin("addimat")
        .unwrap()
        .canonical_id(&bytes.to_text().unwrap())
        .unwrap();
    assert_eq!(id.expose(), CANONICAL);

    // Line mode: the same key as 14-hex-digit reads would need another profile, but a
    // read-order line reader gives the same canonical id via ibutton-hex16.
    let mut lines = SerialFramer::new(SerialFramerConfig::default());
    let out = lines.push(b"017A6945260000AC\r\n");
    let [SerialOutcome::Frame(bytes)] = out.as_slice() else {
        panic!("{out:?}");
    };
    let id = builtin("ibutton-hex16")
        .unwrap()
        .canonical_id(&bytes.to_text().unwrap())
        .unwrap();
    assert_eq!(id.expose(), CANONICAL);
}
