//! Key captures for enrolment: while a capture waits on a reader, the next key framed there is
//! handed to it instead of being a login. At most one capture per reader ("any reader" counts
//! as every reader). A capture that is dropped (timeout, cancelled call) withdraws itself, so
//! the reader logs in as before.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::dispatch::DeviceLabel;
use crate::input::secret::Secret;

/// What ended a capture, other than a timeout or its caller going away.
#[derive(Debug)]
pub enum Captured {
    /// The key's canonical id (per the reader's profile) and the reader it came from.
    Key { id: Secret, reader: DeviceLabel },
    /// The reader's profile rejected the read as damaged (e.g. bad CRC): a fixed text.
    BadRead(String),
    /// The key was pulled (removal token) before a key was read.
    Removed,
    /// The reader was unplugged or its port went away.
    ReaderGone,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureError {
    #[error("a key capture is already waiting on {0}")]
    Busy(String),
}

/// Which reader a capture waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderChoice {
    Any,
    /// A reader's name or path (as `tillctl devices` shows it).
    Named(String),
}

impl ReaderChoice {
    pub fn matches(&self, device: &DeviceLabel) -> bool {
        match self {
            ReaderChoice::Any => true,
            ReaderChoice::Named(name) => {
                device.name == *name || device.path.to_str() == Some(name.as_str())
            }
        }
    }

    fn overlaps(&self, other: &ReaderChoice) -> bool {
        match (self, other) {
            (ReaderChoice::Named(a), ReaderChoice::Named(b)) => a == b,
            _ => true,
        }
    }
}

impl std::fmt::Display for ReaderChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReaderChoice::Any => f.write_str("any key reader"),
            ReaderChoice::Named(name) => write!(f, "reader {name:?}"),
        }
    }
}

#[derive(Debug)]
struct Waiting {
    id: u64,
    reader: ReaderChoice,
    reply: oneshot::Sender<Captured>,
}

#[derive(Debug, Default)]
pub struct KeyCaptures {
    state: Mutex<(u64, Vec<Waiting>)>,
}

/// A capture in progress; dropping it withdraws it.
#[derive(Debug)]
pub struct Capture {
    captures: Arc<KeyCaptures>,
    id: u64,
    pub outcome: oneshot::Receiver<Captured>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.captures.lock().1.retain(|w| w.id != self.id);
    }
}

impl KeyCaptures {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Waiting>)> {
        // A Vec push/retain cannot be left half-done by a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts waiting for the next key on `reader`, unless a capture already waits there.
    pub fn begin(self: &Arc<Self>, reader: ReaderChoice) -> Result<Capture, CaptureError> {
        let mut state = self.lock();
        if let Some(other) = state.1.iter().find(|w| w.reader.overlaps(&reader)) {
            return Err(CaptureError::Busy(other.reader.to_string()));
        }
        state.0 += 1;
        let id = state.0;
        let (reply, outcome) = oneshot::channel();
        state.1.push(Waiting { id, reader, reply });
        Ok(Capture {
            captures: self.clone(),
            id,
            outcome,
        })
    }

    /// Whether a capture waits on `device` (the dispatcher then does not log its key in).
    pub fn waiting_on(&self, device: &DeviceLabel) -> bool {
        self.lock().1.iter().any(|w| w.reader.matches(device))
    }

    /// Hands `what` to the capture waiting on `device`, if any. Returns it back when nobody
    /// took it (no capture, or its caller just went away).
    fn offer(&self, device: &DeviceLabel, what: Captured) -> Option<Captured> {
        let waiting = {
            let mut state = self.lock();
            let Some(at) = state.1.iter().position(|w| w.reader.matches(device)) else {
                return Some(what);
            };
            state.1.remove(at)
        };
        waiting.reply.send(what).err()
    }

    /// A key framed on `device`: taken by the capture waiting there, or given back (a login).
    pub fn offer_key(&self, device: &DeviceLabel, id: Secret) -> Option<Secret> {
        let key = Captured::Key {
            id,
            reader: device.clone(),
        };
        match self.offer(device, key) {
            Some(Captured::Key { id, .. }) => Some(id),
            _ => None,
        }
    }

    /// A damaged read or a removal on `device` ends the capture waiting there; true if one did.
    pub fn end(&self, device: &DeviceLabel, why: Captured) -> bool {
        self.offer(device, why).is_none()
    }

    /// The reader went away: captures waiting on it by name end.
    pub fn reader_gone(&self, device: &DeviceLabel) {
        let ended: Vec<Waiting> = {
            let mut state = self.lock();
            let (gone, kept) = std::mem::take(&mut state.1).into_iter().partition(|w| {
                matches!(w.reader, ReaderChoice::Named(_)) && w.reader.matches(device)
            });
            state.1 = kept;
            gone
        };
        for waiting in ended {
            let _ = waiting.reply.send(Captured::ReaderGone);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn reader(name: &str) -> DeviceLabel {
        DeviceLabel::new(name, "", format!("/dev/input/{name}").into())
    }

    fn key(id: &str, name: &str) -> Captured {
        Captured::Key {
            id: Secret::new(id.to_owned()),
            reader: reader(name),
        }
    }

    #[test]
    fn one_capture_per_reader_and_any_reader_overlaps_all() {
        let captures = Arc::new(KeyCaptures::default());
        let front = captures.begin(ReaderChoice::Named("front".into())).unwrap();
        assert_eq!(
            captures
                .begin(ReaderChoice::Named("front".into()))
                .unwrap_err(),
            CaptureError::Busy("reader \"front\"".into())
        );
        assert!(captures.begin(ReaderChoice::Any).is_err());
        let back = captures.begin(ReaderChoice::Named("back".into())).unwrap();
        drop((front, back));
        let any = captures.begin(ReaderChoice::Any).unwrap();
        assert!(captures.begin(ReaderChoice::Named("back".into())).is_err());
        drop(any);
        assert!(captures.begin(ReaderChoice::Any).is_ok());
    }

    #[test]
    fn the_next_key_on_the_reader_goes_to_the_capture_once() {
        let captures = Arc::new(KeyCaptures::default());
        let mut capture = captures.begin(ReaderChoice::Named("front".into())).unwrap();
        // Another reader's key is not taken: it logs in as usual.
        assert!(captures.offer(&reader("back"), key("1", "back")).is_some());
        assert!(captures.waiting_on(&reader("front")));
        assert!(
            captures
                .offer_key(&reader("front"), Secret::new("2".into()))
                .is_none()
        );
        match capture.outcome.try_recv().unwrap() {
            Captured::Key { id, reader } => {
                assert_eq!(id.expose(), "2");
                assert_eq!(reader.name, "front");
            }
            other => panic!("{other:?}"),
        }
        // The capture is used up: the next key is a login again.
        assert!(!captures.waiting_on(&reader("front")));
        let back = captures.offer_key(&reader("front"), Secret::new("3".into()));
        assert_eq!(back.unwrap().expose(), "3");
    }

    #[test]
    fn a_dropped_capture_withdraws_and_the_key_logs_in() {
        let captures = Arc::new(KeyCaptures::default());
        let capture = captures.begin(ReaderChoice::Any).unwrap();
        drop(capture);
        assert!(!captures.waiting_on(&reader("front")));
        assert!(
            captures
                .offer(&reader("front"), key("1", "front"))
                .is_some()
        );
        assert!(!captures.end(&reader("front"), Captured::Removed));
    }

    #[test]
    fn a_reader_going_away_ends_its_named_capture_only() {
        let captures = Arc::new(KeyCaptures::default());
        let mut named = captures
            .begin(ReaderChoice::Named("/dev/input/front".into()))
            .unwrap();
        captures.reader_gone(&reader("front"));
        assert!(matches!(
            named.outcome.try_recv().unwrap(),
            Captured::ReaderGone
        ));
        let mut any = captures.begin(ReaderChoice::Any).unwrap();
        captures.reader_gone(&reader("front"));
        assert!(any.outcome.try_recv().is_err(), "still waiting");
    }
}
