//! From framed input to a login: the shared path of evdev and serial readers. Device tasks only
//! read and frame; they push what they framed onto a bounded queue and go back to reading, so
//! an unplug, a re-plug or a fast burst is never stuck behind a login that is still hashing.
//! One dispatcher task takes the queue in order (a removal is handled after the login its key
//! made, whichever device each came from).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::instrument;
use zeroize::Zeroizing;

use super::capture::{Captured, KeyCaptures};
use super::registry::{ActivityKind, DeviceRegistry, InputActivity, mask};
use crate::audit::ReadFault;
use crate::input::event::InputEvent;
use crate::input::key_reader::{KeyReader, ReaderOutcome};
use crate::input::pin_pad::{PinOutcome, PinPad};
use crate::input::profile::Profile;
use crate::input::profile::ProfileError;
use crate::input::secret::Secret;
use crate::login::{Authenticator, LoginError};
use crate::model::CredentialKind;

/// What a device produced, independent of how it was framed.
#[derive(Debug)]
pub enum Framed {
    Pin(Secret),
    /// Raw reader text, before the profile's canonicalisation.
    Key(Secret),
    Removal,
    /// A frame refused before any lookup (bad length, missing suffix, lost sync...).
    Rejected(String),
}

/// A device's framing state machine.
#[derive(Debug)]
pub enum Framer {
    PinPad(PinPad),
    KeyReader(KeyReader),
}

impl Framer {
    pub fn feed(&mut self, event: &InputEvent) -> Vec<Framed> {
        match self {
            Framer::PinPad(pad) => pad.feed(event).into_iter().filter_map(from_pin).collect(),
            Framer::KeyReader(reader) => reader.feed(event).into_iter().map(from_reader).collect(),
        }
    }

    /// Kernel-clock instant (since the epoch) at which a partial entry expires.
    pub fn deadline(&self) -> Option<Duration> {
        match self {
            Framer::PinPad(pad) => pad.deadline(),
            Framer::KeyReader(reader) => reader.deadline(),
        }
    }

    pub fn expire(&mut self, now: Duration) -> Option<Framed> {
        match self {
            Framer::PinPad(pad) => pad.expire(now).and_then(from_pin),
            Framer::KeyReader(reader) => reader.expire(now).map(from_reader),
        }
    }
}

fn from_pin(outcome: PinOutcome) -> Option<Framed> {
    match outcome {
        PinOutcome::Submitted(pin) => Some(Framed::Pin(pin)),
        PinOutcome::Rejected(reason) => Some(Framed::Rejected(format!("{reason:?}"))),
        // Cleared and idle-dropped entries are a person changing their mind: not an attempt.
        PinOutcome::Cleared | PinOutcome::Dropped(_) => None,
    }
}

fn from_reader(outcome: ReaderOutcome) -> Framed {
    match outcome {
        ReaderOutcome::Frame(raw) => Framed::Key(raw),
        ReaderOutcome::Removed => Framed::Removal,
        ReaderOutcome::Rejected(reason) => Framed::Rejected(format!("{reason:?}")),
    }
}

/// The audit outbox's name for a misread (a fixed text, never the content).
fn read_fault(e: ProfileError) -> ReadFault {
    match e {
        ProfileError::BadCrc => ReadFault::Crc,
        ProfileError::BlankRom => ReadFault::Other("blank 1-Wire id"),
        _ => ReadFault::Other("misread"),
    }
}

/// Who a device is, for logs, sessions and `tillctl devices --watch`.
#[derive(Debug, Clone)]
pub struct DeviceLabel {
    pub name: String,
    pub path: PathBuf,
    /// Stable across re-plugs on the same port: `device "<name>" (<phys or path>)`.
    pub source: String,
}

impl DeviceLabel {
    pub fn new(name: &str, phys: &str, path: PathBuf) -> DeviceLabel {
        let place = if phys.is_empty() {
            path.display().to_string()
        } else {
            phys.to_owned()
        };
        DeviceLabel {
            source: format!("device {name:?} ({place})"),
            name: name.to_owned(),
            path,
        }
    }
}

/// Framed items waiting for the dispatcher. Beyond this many a reader's input is dropped
/// (loudly) rather than making its device task wait.
pub const QUEUE_LEN: usize = 64;

/// One framed item on its way to the dispatcher.
#[derive(Debug)]
pub struct FramedInput {
    pub device: DeviceLabel,
    /// Canonicalises key ids (key readers only).
    pub profile: Option<Arc<Profile>>,
    pub framed: Framed,
}

/// The device tasks' end of the queue: pushing never waits.
#[derive(Debug, Clone)]
pub struct InputQueue {
    sender: mpsc::Sender<FramedInput>,
    /// Items dropped because the queue was full, so far (shared by the clones).
    dropped: Arc<AtomicU64>,
    pub registry: Arc<DeviceRegistry>,
    captures: Arc<KeyCaptures>,
}

impl InputQueue {
    pub fn new(
        registry: Arc<DeviceRegistry>,
        captures: Arc<KeyCaptures>,
    ) -> (InputQueue, mpsc::Receiver<FramedInput>) {
        let (sender, receiver) = mpsc::channel(QUEUE_LEN);
        (
            InputQueue {
                sender,
                dropped: Arc::default(),
                registry,
                captures,
            },
            receiver,
        )
    }

    /// Items dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The device went away: says so, and ends a key capture waiting on it.
    pub fn detached(&self, device: &DeviceLabel, reason: String) {
        self.captures.reader_gone(device);
        self.activity(device, ActivityKind::Detached, String::new(), reason);
    }

    /// Hands a framed item to the dispatcher without waiting. A full queue drops it (its secret
    /// is zeroed on drop) and says so in the log and on `tillctl devices --watch`.
    pub fn push(&self, device: &DeviceLabel, profile: Option<&Arc<Profile>>, framed: Framed) {
        let input = FramedInput {
            device: device.clone(),
            profile: profile.cloned(),
            framed,
        };
        match self.sender.try_send(input) {
            Ok(()) => {}
            Err(TrySendError::Full(input)) => {
                // A reader flooding the queue drops an item per frame: the warning says so for
                // the first and every 1000th (with the count), the rest at debug, so the
                // journal is not flooded with it.
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped == 1 || dropped.is_multiple_of(1000) {
                    tracing::warn!(device = %device.source, capacity = QUEUE_LEN, dropped, "input dropped: the dispatcher queue is full");
                } else {
                    tracing::debug!(device = %device.source, capacity = QUEUE_LEN, dropped, "input dropped: the dispatcher queue is full");
                }
                self.activity(
                    device,
                    ActivityKind::Rejected,
                    String::new(),
                    "dropped: the dispatcher queue is full".into(),
                );
                drop(input);
            }
            Err(TrySendError::Closed(_)) => {
                tracing::debug!(device = %device.source, "input dropped: the dispatcher has stopped");
            }
        }
    }

    pub fn activity(
        &self,
        device: &DeviceLabel,
        kind: ActivityKind,
        masked: String,
        outcome: String,
    ) {
        publish(&self.registry, device, kind, masked, outcome);
    }
}

fn publish(
    registry: &DeviceRegistry,
    device: &DeviceLabel,
    kind: ActivityKind,
    masked: String,
    outcome: String,
) {
    registry.publish(InputActivity {
        at: SystemTime::now(),
        device: device.name.clone(),
        path: device.path.clone(),
        kind,
        masked,
        outcome,
    });
}

#[derive(Debug)]
pub struct Dispatcher {
    pub auth: Arc<Authenticator>,
    pub registry: Arc<DeviceRegistry>,
    /// Enrolment: a key framed on a reader with a capture waiting is handed to it, not logged in.
    pub captures: Arc<KeyCaptures>,
}

impl Dispatcher {
    /// Takes framed items off the queue in order until every sender is gone.
    pub async fn run(self: Arc<Self>, mut queue: mpsc::Receiver<FramedInput>) {
        while let Some(input) = queue.recv().await {
            self.handle(&input.device, input.profile.as_deref(), input.framed)
                .await;
        }
    }

    /// Handles one framed item from `device`; `profile` canonicalises key ids.
    #[instrument(skip_all, fields(device = %device.source))]
    pub async fn handle(&self, device: &DeviceLabel, profile: Option<&Profile>, framed: Framed) {
        match framed {
            Framed::Pin(pin) => {
                let masked = mask(pin.len());
                let outcome = self.login(device, CredentialKind::Pin, pin.expose()).await;
                self.activity(device, ActivityKind::Pin, masked, outcome);
            }
            Framed::Key(raw) => {
                let masked = mask(raw.len());
                let Some(profile) = profile else {
                    self.activity(
                        device,
                        ActivityKind::Rejected,
                        masked,
                        "no reader profile".into(),
                    );
                    return;
                };
                match profile.canonical_id(&raw) {
                    Ok(id) => {
                        let Some(id) = self.captures.offer_key(device, id) else {
                            tracing::info!("key captured for enrolment (not a login)");
                            self.activity(
                                device,
                                ActivityKind::Key,
                                masked,
                                "captured for enrolment".into(),
                            );
                            return;
                        };
                        let outcome = self.login(device, CredentialKind::Key, id.expose()).await;
                        self.activity(device, ActivityKind::Key, masked, outcome);
                    }
                    Err(e) if e.is_bad_read() => {
                        // A misread, not a wrong key: no login attempt is made and no failure
                        // is counted, but the audit outbox records it.
                        tracing::warn!(profile = profile.name(), error = %e, "bad key read ignored");
                        self.captures.end(device, Captured::BadRead(e.to_string()));
                        if let Err(audit) = self
                            .auth
                            .report_bad_read(&device.source, read_fault(e))
                            .await
                        {
                            tracing::error!(error = %audit, "could not audit a bad key read");
                        }
                        self.activity(device, ActivityKind::BadRead, masked, e.to_string());
                    }
                    Err(e) => {
                        tracing::info!(profile = profile.name(), error = %e, "key frame refused by the reader profile");
                        self.activity(device, ActivityKind::Rejected, masked, e.to_string());
                    }
                }
            }
            Framed::Removal => {
                self.captures.end(device, Captured::Removed);
                // Locks or ends the session per `session.on_key_removal`.
                let changed = self.auth.sessions().key_removed(&device.source);
                let outcome = match changed {
                    Some(event) => {
                        let user = event.previous.map(|s| s.user_id).unwrap_or_default();
                        let what = match event.session {
                            Some(_) => "locked",
                            None => "ended",
                        };
                        tracing::info!(user_id = %user, "key removed: session {what}");
                        format!("session of {user} {what}")
                    }
                    None => "no session opened by this reader".into(),
                };
                self.activity(device, ActivityKind::Removal, String::new(), outcome);
            }
            Framed::Rejected(reason) => {
                tracing::info!(%reason, "input frame refused");
                self.activity(device, ActivityKind::Rejected, String::new(), reason);
            }
        }
    }

    async fn login(&self, device: &DeviceLabel, kind: CredentialKind, secret: &str) -> String {
        let secret = Zeroizing::new(secret.to_owned());
        match self
            .auth
            .login_detached(kind, secret, device.source.clone())
            .await
        {
            Ok(session) => format!("logged in {}", session.user_id),
            Err(LoginError::NoMatch) => "no match".into(),
            Err(e) => e.to_string(),
        }
    }

    pub fn activity(
        &self,
        device: &DeviceLabel,
        kind: ActivityKind,
        masked: String,
        outcome: String,
    ) {
        publish(&self.registry, device, kind, masked, outcome);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_loudly_without_waiting_and_keeps_the_order() {
        let registry = Arc::new(DeviceRegistry::default());
        let mut activity = registry.subscribe();
        let (queue, mut framed) = InputQueue::new(registry, Arc::default());
        let reader = DeviceLabel::new("front", "", "/dev/input/event9".into());
        for i in 0..QUEUE_LEN + 1 {
            // Never blocks, whatever the dispatcher is doing.
            queue.push(&reader, None, Framed::Rejected(i.to_string()));
        }
        let dropped = activity.try_recv().unwrap();
        assert_eq!(dropped.kind, ActivityKind::Rejected);
        assert!(dropped.outcome.contains("queue is full"), "{dropped:?}");
        assert!(activity.try_recv().is_err(), "only the one over capacity");
        for i in 0..QUEUE_LEN {
            match framed.try_recv().unwrap().framed {
                Framed::Rejected(n) => assert_eq!(n, i.to_string()),
                other => panic!("{other:?}"),
            }
        }
        assert!(framed.try_recv().is_err());
    }

    /// Log lines written while `f` runs, at warn and above.
    fn warnings(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = buffer.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_reader_flooding_the_full_queue_is_logged_at_the_first_and_every_1000th_drop() {
        let registry = Arc::new(DeviceRegistry::default());
        let (queue, _framed) = InputQueue::new(registry, Arc::default());
        let reader = DeviceLabel::new("front", "", "/dev/input/event9".into());
        let log = warnings(|| {
            for i in 0..QUEUE_LEN + 2500 {
                queue.push(&reader, None, Framed::Rejected(i.to_string()));
            }
        });
        assert_eq!(queue.dropped(), 2500);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("the dispatcher queue is full"))
            .collect();
        assert_eq!(lines.len(), 3, "{log}");
        for (line, count) in lines.iter().zip([1, 1000, 2000]) {
            assert!(line.contains(&format!("dropped={count}")), "{line}");
        }
    }
}
