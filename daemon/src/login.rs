//! The login use case, shared by the gRPC API and (later) the hardware readers: hash the typed
//! secret once per distinct scheme, look the digest up, apply first-match resolution, and make
//! the winner the terminal's session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Semaphore;
use tracing::instrument;
use zeroize::Zeroizing;

use argon2::Block;

use crate::credential::{HashError, TerminalKey, argon2id_in};
use crate::model::{CredentialKind, Terminal};
use crate::resolve::{Candidate, DenialReason, Resolution, resolve};
use crate::session::{Session, SessionManager};
use crate::store::{Replica, StoreError};

const MAX_PIN_LEN: usize = 32;
const MAX_KEY_ID_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("no replica yet: the terminal has not received a snapshot from central")]
    NoReplica,
    #[error("no user matches this credential")]
    NoMatch,
    #[error("{0}")]
    Denied(DenialReason),
    #[error("{0}")]
    BadInput(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("login task failed: {0}")]
    Task(String),
}

#[derive(Debug)]
pub struct Authenticator {
    replica: Arc<Replica>,
    key: Arc<TerminalKey>,
    terminal: Terminal,
    sessions: Arc<SessionManager>,
    /// Bounds concurrent argon2 evaluations: each holds m_cost KiB, so a flood of attempts
    /// queues instead of exhausting memory.
    hashing: Semaphore,
    /// argon2 working memory, one buffer per permit at most, reused from one evaluation to the
    /// next so that the memory really stays at `max_concurrent × m_cost`.
    memory: HashMemory,
}

/// Free argon2 working buffers. Their contents derive from typed secrets: never printed.
#[derive(Default)]
struct HashMemory(Mutex<Vec<Vec<Block>>>);

impl std::fmt::Debug for HashMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let free = self.0.lock().map(|free| free.len()).unwrap_or(0);
        write!(f, "HashMemory({free} free buffers)")
    }
}

impl Authenticator {
    pub fn new(
        replica: Arc<Replica>,
        key: Arc<TerminalKey>,
        terminal: Terminal,
        sessions: Arc<SessionManager>,
        max_concurrent_hashes: usize,
    ) -> Self {
        Authenticator {
            replica,
            key,
            terminal,
            sessions,
            hashing: Semaphore::new(max_concurrent_hashes),
            memory: HashMemory::default(),
        }
    }

    pub fn sessions(&self) -> &SessionManager {
        &self.sessions
    }

    /// Logs in with a PIN or key id; the winner replaces the current session.
    #[instrument(skip_all, fields(method = kind.label(), source = source))]
    pub async fn login(
        &self,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        source: &str,
    ) -> Result<Session, LoginError> {
        let outcome = self.login_inner(kind, secret, source).await;
        match &outcome {
            Ok(session) => {
                tracing::info!(user_id = %session.user_id, session_id = %session.session_id, "login accepted")
            }
            Err(LoginError::Denied(reason)) => tracing::info!(%reason, "login denied"),
            Err(LoginError::NoMatch) => tracing::info!("login failed: no matching credential"),
            Err(e @ (LoginError::NoReplica | LoginError::BadInput(_))) => {
                tracing::info!(error = %e, "login refused")
            }
            Err(e) => tracing::error!(error = %e, "login failed"),
        }
        outcome
    }

    async fn login_inner(
        &self,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        source: &str,
    ) -> Result<Session, LoginError> {
        check_secret(kind, &secret)?;
        let state = self.replica.state()?;
        if state.cursor.needs_snapshot() {
            return Err(LoginError::NoReplica);
        }
        let secret = Arc::new(secret);
        let user_id = match resolve(self.matching_users(kind, secret).await?) {
            Resolution::Accepted { user_id } => user_id,
            Resolution::Denied { user_id, reason } => {
                tracing::debug!(%user_id, "first matching user may not log in here");
                return Err(LoginError::Denied(reason));
            }
            Resolution::NoMatch => return Err(LoginError::NoMatch),
        };
        let replica = self.replica.clone();
        let terminal = self.terminal.clone();
        let profile = blocking(move || replica.user_profile(&user_id, &terminal))
            .await??
            .ok_or(LoginError::NoMatch)?;
        let session = Session {
            session_id: uuid::Uuid::new_v4().to_string(),
            user_id: profile.user_id,
            first_name: profile.first_name,
            last_name: profile.last_name,
            role_ids: profile.role_ids,
            permissions: profile.permissions,
            method: kind,
            source: source.to_owned(),
            started_at: SystemTime::now(),
            replica: state.cursor,
            last_sync_at: state.last_sync_at,
        };
        self.sessions.login(session.clone());
        Ok(session)
    }

    /// Every user whose credential of `kind` equals the secret: one argon2 evaluation per
    /// distinct scheme, then an index lookup of the re-keyed digest.
    async fn matching_users(
        &self,
        kind: CredentialKind,
        secret: Arc<Zeroizing<String>>,
    ) -> Result<Vec<Candidate>, LoginError> {
        let schemes = self.replica.hash_schemes(kind)?;
        let mut by_user: HashMap<String, Candidate> = HashMap::new();
        for scheme in schemes {
            let permit = self
                .hashing
                .acquire()
                .await
                .map_err(|e| LoginError::Task(e.to_string()))?;
            let secret = secret.clone();
            let key = self.key.clone();
            // A buffer lost to a failed task is simply allocated again next time.
            let mut memory = self.take_memory();
            let (digest, memory) = blocking(move || {
                let digest = argon2id_in(secret.as_bytes(), &scheme, &mut memory)
                    .map(|output| key.rekey(&output));
                (digest, memory)
            })
            .await?;
            self.return_memory(memory);
            drop(permit);
            let digest = digest?;
            let replica = self.replica.clone();
            let terminal = self.terminal.clone();
            let found = blocking(move || replica.candidates(kind, &digest, &terminal)).await??;
            for candidate in found {
                by_user
                    .entry(candidate.user_id.clone())
                    .or_insert(candidate);
            }
        }
        Ok(by_user.into_values().collect())
    }
}

impl Authenticator {
    fn take_memory(&self) -> Vec<Block> {
        self.memory
            .0
            .lock()
            .ok()
            .and_then(|mut free| free.pop())
            .unwrap_or_default()
    }

    fn return_memory(&self, memory: Vec<Block>) {
        if let Ok(mut free) = self.memory.0.lock() {
            free.push(memory);
        }
    }
}

fn check_secret(kind: CredentialKind, secret: &str) -> Result<(), LoginError> {
    match kind {
        CredentialKind::Pin if secret.is_empty() => Err(LoginError::BadInput("pin is empty")),
        CredentialKind::Pin if secret.len() > MAX_PIN_LEN => {
            Err(LoginError::BadInput("pin is longer than 32 characters"))
        }
        CredentialKind::Key if secret.is_empty() => Err(LoginError::BadInput("key id is empty")),
        CredentialKind::Key if secret.len() > MAX_KEY_ID_LEN => {
            Err(LoginError::BadInput("key id is longer than 256 bytes"))
        }
        _ => Ok(()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LoginError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LoginError::Task(e.to_string()))
}
