//! The enrolment use case: a key captured at the till, or a new PIN, turned into the PHC string
//! central assigns to the user. The secret lives only in this process's memory: the reader's
//! key never reaches a text field (the reader stays grabbed), and only the hash leaves — in the
//! answer and in a `credential_enrolled` outbox row central pulls. The replica is not changed:
//! central stays the only writer of users and pushes the credential back in its next sync.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::instrument;
use zeroize::Zeroizing;

use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
use crate::config::DeviceRole;
use crate::hardware::DeviceRegistry;
use crate::hardware::capture::{CaptureError, Captured, KeyCaptures, ReaderChoice};
use crate::login::{Authenticator, LoginError};
use crate::model::{CredentialKind, Terminal};
use crate::store::{Replica, StoreError};

/// The `[enrolment]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentSettings {
    /// The permission a manager's credential must hold.
    pub permission: String,
    pub min_pin_len: usize,
    pub capture_timeout: Duration,
    /// The longest capture a call may ask for: `login_socket.call_timeout` less
    /// [`capture_margin`], so the capture ends before the listener cancels the call.
    pub max_capture_timeout: Duration,
}

/// Time left between a capture's end and the call's timeout, for its audit row and answer:
/// 2 s, or a quarter of a shorter call timeout.
pub fn capture_margin(call_timeout: Duration) -> Duration {
    (call_timeout / 4).min(Duration::from_secs(2))
}

/// Who approves an enrolment.
#[derive(Debug)]
pub enum Approval {
    /// No credential was given and the caller is an admin uid (the access table decided);
    /// the text names the caller ("admin uid=…").
    AdminUid(String),
    /// A manager's PIN or key, which must hold `enrolment.permission`.
    Manager {
        kind: CredentialKind,
        secret: Zeroizing<String>,
    },
    /// ChangePin only: the user's own current PIN.
    OwnPin(Zeroizing<String>),
    /// ChangePin only: the open, unlocked session is the user's.
    Session,
}

/// A key to capture for a user.
#[derive(Debug)]
pub struct KeyEnrolment {
    pub user_id: String,
    pub approval: Approval,
    pub reader: ReaderChoice,
    /// None: `enrolment.capture_timeout`. Capped at `max_capture_timeout`.
    pub timeout: Option<Duration>,
    /// Where the call came from ("socket uid=…"), for the audit rows.
    pub source: String,
}

/// A new PIN for a user.
#[derive(Debug)]
pub struct PinChange {
    pub user_id: String,
    pub new_pin: Zeroizing<String>,
    pub new_pin_again: Zeroizing<String>,
    pub approval: Approval,
    pub source: String,
}

/// The answer: what central assigns to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub user_id: String,
    pub kind: CredentialKind,
    pub phc: String,
    /// Users that already hold this credential (keys; a PIN in use is refused instead).
    pub holders: Vec<String>,
    pub authorized_by: String,
    /// The reader that captured the key.
    pub reader: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("no user {0:?} in the replica")]
    UnknownUser(String),
    #[error("{0}")]
    NotAuthorized(String),
    #[error("the two new PINs differ")]
    PinsDiffer,
    #[error("the new PIN is shorter than enrolment.min_pin_len ({0} characters)")]
    PinTooShort(usize),
    #[error("a user of this account already has this PIN: choose another")]
    PinInUse,
    #[error("no key reader is attached{}", match .0 { ReaderChoice::Any => String::new(), named => format!(" as {named}") })]
    NoReader(ReaderChoice),
    #[error(transparent)]
    Busy(#[from] CaptureError),
    #[error("no key was presented within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("the key capture ended: {0}")]
    Ended(String),
    #[error("the enrolment call was cancelled")]
    Cancelled,
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a key capture ended.
enum Ending {
    Got(Captured),
    TimedOut,
    Cancelled,
}

#[derive(Debug)]
pub struct Enrolment {
    pub auth: Arc<Authenticator>,
    pub replica: Arc<Replica>,
    pub terminal: Terminal,
    pub captures: Arc<KeyCaptures>,
    pub devices: Arc<DeviceRegistry>,
    pub settings: EnrolmentSettings,
}

impl Enrolment {
    /// Captures the next key on the chosen reader for `request.user_id`. `cancelled` resolves
    /// when the caller went away: the capture then ends (audited) and the reader logs in again.
    #[instrument(skip_all, fields(user_id = %request.user_id, reader = %request.reader))]
    pub async fn enroll_key(
        &self,
        request: KeyEnrolment,
        cancelled: oneshot::Receiver<()>,
    ) -> Result<Enrolled, EnrolError> {
        let KeyEnrolment {
            user_id,
            approval,
            reader,
            timeout,
            source,
        } = request;
        if matches!(approval, Approval::OwnPin(_) | Approval::Session) {
            return Err(EnrolError::NotAuthorized(
                "a key is enrolled by a manager's credential or an admin uid".into(),
            ));
        }
        self.known_user(&user_id).await?;
        // Before the approval: a manager's credential is not spent on a capture that cannot run.
        if !self.key_reader_attached(&reader) {
            return Err(EnrolError::NoReader(reader));
        }
        let authorized_by = self.approve(&user_id, approval, &source).await?;
        let mut capture = self.captures.begin(reader.clone())?;
        let timeout = timeout
            .unwrap_or(self.settings.capture_timeout)
            .min(self.settings.max_capture_timeout);
        tracing::info!(%authorized_by, timeout = %humantime::format_duration(timeout), "key capture started: the next key on the reader is not a login");
        let mut ending = tokio::select! {
            got = &mut capture.outcome => got.map_or(Ending::Cancelled, Ending::Got),
            () = tokio::time::sleep(timeout) => Ending::TimedOut,
            _ = cancelled => Ending::Cancelled,
        };
        // A key handed over just as the wait ended is used, not lost between the two.
        if !matches!(ending, Ending::Got(_))
            && let Ok(got) = capture.outcome.try_recv()
        {
            ending = Ending::Got(got);
        }
        // Withdraws the capture (if still waiting): the reader logs in as before.
        drop(capture);
        let row = |outcome: AuditOutcome| {
            let mut record = AuditRecord::new(
                AuditKind::KeyCapture,
                Some(CredentialKind::Key),
                &source,
                outcome,
            )
            .user(&user_id);
            record.authorizer = Some(authorized_by.clone());
            record
        };
        let (id, reader) = match ending {
            Ending::Got(Captured::Key { id, reader }) => (id, reader),
            other => {
                let (outcome, error) = match other {
                    Ending::Got(Captured::BadRead(fault)) => (
                        AuditOutcome::BadRead,
                        EnrolError::Ended(format!("damaged read ({fault})")),
                    ),
                    Ending::Got(Captured::Removed) => (
                        AuditOutcome::Removed,
                        EnrolError::Ended("the key was removed".into()),
                    ),
                    Ending::Got(Captured::ReaderGone) => (
                        AuditOutcome::ReaderGone,
                        EnrolError::Ended("the reader went away".into()),
                    ),
                    Ending::TimedOut => (AuditOutcome::TimedOut, EnrolError::TimedOut(timeout)),
                    Ending::Got(Captured::Key { .. }) | Ending::Cancelled => {
                        (AuditOutcome::Cancelled, EnrolError::Cancelled)
                    }
                };
                tracing::info!(error = %error, "key capture ended without a key");
                self.auth
                    .audit(row(outcome).reason(error.to_string()))
                    .await?;
                return Err(error);
            }
        };
        self.auth
            .audit(row(AuditOutcome::Captured).reason(reader.source.clone()))
            .await?;
        let secret = Zeroizing::new(id.expose().to_owned());
        drop(id);
        let hashed = self
            .auth
            .hash_new_credential(CredentialKind::Key, secret, &source)
            .await?;
        let enrolled = Enrolled {
            user_id,
            kind: CredentialKind::Key,
            phc: hashed.phc,
            holders: hashed.holders,
            authorized_by,
            reader: Some(reader.source),
        };
        self.record_enrolled(&enrolled, &source).await?;
        Ok(enrolled)
    }

    /// A new PIN for `change.user_id`, refused when any user of the account already has it.
    #[instrument(skip_all, fields(user_id = %change.user_id))]
    pub async fn change_pin(&self, change: PinChange) -> Result<Enrolled, EnrolError> {
        let PinChange {
            user_id,
            new_pin,
            new_pin_again,
            approval,
            source,
        } = change;
        if new_pin.as_bytes() != new_pin_again.as_bytes() {
            return Err(EnrolError::PinsDiffer);
        }
        if new_pin.chars().count() < self.settings.min_pin_len {
            return Err(EnrolError::PinTooShort(self.settings.min_pin_len));
        }
        self.known_user(&user_id).await?;
        let authorized_by = self.approve(&user_id, approval, &source).await?;
        let hashed = self
            .auth
            .hash_new_credential(CredentialKind::Pin, new_pin, &source)
            .await?;
        if !hashed.holders.is_empty() {
            // Who holds it stays in the daemon: the answer only says "in use".
            let mut record = AuditRecord::new(
                AuditKind::CredentialEnrolled,
                Some(CredentialKind::Pin),
                &source,
                AuditOutcome::PinInUse,
            )
            .user(&user_id)
            .reason(EnrolError::PinInUse.to_string());
            record.authorizer = Some(authorized_by);
            self.auth.audit(record).await?;
            tracing::info!("PIN change refused: the PIN is in use");
            return Err(EnrolError::PinInUse);
        }
        let enrolled = Enrolled {
            user_id,
            kind: CredentialKind::Pin,
            phc: hashed.phc,
            holders: Vec::new(),
            authorized_by,
            reader: None,
        };
        self.record_enrolled(&enrolled, &source).await?;
        Ok(enrolled)
    }

    /// The outbox row central picks up with `PullAuditEvents`.
    async fn record_enrolled(&self, enrolled: &Enrolled, source: &str) -> Result<(), EnrolError> {
        let mut record = AuditRecord::new(
            AuditKind::CredentialEnrolled,
            Some(enrolled.kind),
            source,
            AuditOutcome::Enrolled,
        )
        .user(&enrolled.user_id);
        if !enrolled.holders.is_empty() {
            record = record.reason(format!("also held by {}", enrolled.holders.join(", ")));
        }
        record.phc = Some(enrolled.phc.clone());
        record.authorizer = Some(enrolled.authorized_by.clone());
        self.auth.audit(record).await?;
        tracing::info!(kind = enrolled.kind.label(), authorized_by = %enrolled.authorized_by, holders = enrolled.holders.len(), "credential enrolled: PHC string in the outbox for central");
        Ok(())
    }

    async fn known_user(&self, user_id: &str) -> Result<(), EnrolError> {
        let (replica, terminal, id) = (
            self.replica.clone(),
            self.terminal.clone(),
            user_id.to_owned(),
        );
        let profile = tokio::task::spawn_blocking(move || replica.user_profile(&id, &terminal))
            .await
            .map_err(|e| LoginError::Task(e.to_string()))??;
        match profile {
            Some(_) => Ok(()),
            None => Err(EnrolError::UnknownUser(user_id.to_owned())),
        }
    }

    /// Checks the approval; returns who approved, for the answer and the audit rows.
    async fn approve(
        &self,
        user_id: &str,
        approval: Approval,
        source: &str,
    ) -> Result<String, EnrolError> {
        match approval {
            Approval::AdminUid(caller) => Ok(caller),
            Approval::Manager { kind, secret } => {
                let answer = self
                    .auth
                    .authorize_detached(
                        kind,
                        secret,
                        self.settings.permission.clone(),
                        source.to_owned(),
                    )
                    .await?;
                if answer.granted {
                    Ok(format!("manager {}", answer.authorizer.user_id))
                } else {
                    Err(EnrolError::NotAuthorized(format!(
                        "{} does not hold the permission {:?}",
                        answer.authorizer.user_id, self.settings.permission
                    )))
                }
            }
            Approval::OwnPin(pin) => {
                self.auth.confirm_own_pin(user_id, pin, source).await?;
                Ok("own PIN".into())
            }
            Approval::Session => match self.auth.sessions().current() {
                Some(session) if session.user_id == user_id && !session.locked => {
                    Ok("session".into())
                }
                _ => Err(EnrolError::NotAuthorized(format!(
                    "the open session is not {user_id:?}'s (or it is locked)"
                ))),
            },
        }
    }

    fn key_reader_attached(&self, reader: &ReaderChoice) -> bool {
        self.devices.list().iter().any(|device| {
            device.attached
                && device.role == Some(DeviceRole::KeyReader)
                && match reader {
                    ReaderChoice::Any => true,
                    ReaderChoice::Named(name) => {
                        device.info.name == *name || device.info.path.to_str() == Some(name)
                    }
                }
        })
    }
}
