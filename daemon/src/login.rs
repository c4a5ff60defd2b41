//! The login use case, shared by the gRPC API and the hardware readers: hash the typed secret
//! once per distinct scheme, look the digest up, apply first-match resolution, and make the
//! winner the terminal's session — with the session policy around it: lockout after repeated
//! failures, a refusal when the replica is too old, an audit row per attempt, manager
//! authorization, and re-evaluating the session when a sync changes its user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tracing::instrument;
use zeroize::Zeroizing;

use argon2::Block;

use crate::audit::{self, AuditKind, AuditOutcome, AuditRecord, ReadFault};
use crate::credential::{HashError, TerminalKey, argon2id_in};
use crate::lockout::{LockoutPolicy, TERMINAL_SCOPE};
use crate::model::{CredentialKind, Terminal};
use crate::resolve::{Candidate, DenialReason, Resolution, may_log_in, resolve};
use crate::session::{Session, SessionEvent, SessionManager, profile_change};
use crate::store::{
    AttemptRecorded, CounterChange, LocalStore, Replica, ReplicaState, StoreError, UserProfile,
};

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
    #[error(
        "too many failed attempts {}: PIN entry is refused for another {}",
        if *terminal_wide { "at this terminal" } else { "from this source" },
        humantime::format_duration(round_up_to_seconds(*retry_after))
    )]
    LockedOut {
        retry_after: Duration,
        /// The terminal-wide counter (rather than the source's) caused it.
        terminal_wide: bool,
    },
    #[error(
        "replica is stale: the last successful sync was {} and replica.max_age is {}; \
         logins are refused until central syncs this terminal",
        last_sync_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()).unwrap_or_else(|| "never".into()),
        humantime::format_duration(*max_age)
    )]
    Stale {
        last_sync_at: Option<SystemTime>,
        max_age: Duration,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("login task failed: {0}")]
    Task(String),
    #[error(
        "the replica holds no credential yet, so the account's salt and argon2 costs are unknown"
    )]
    NoAccountScheme,
}

/// Rounds up, so "retry in 0s" is never shown while still locked.
pub fn round_up_to_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// Whether logins must be refused because the last successful sync is older than `max_age`.
/// A replica that never synced is stale; a sync time in the future (the clock was set back) is not.
pub fn replica_too_old(
    last_sync_at: Option<SystemTime>,
    now: SystemTime,
    max_age: Duration,
) -> bool {
    match last_sync_at {
        None => true,
        Some(at) => now.duration_since(at).is_ok_and(|age| age > max_age),
    }
}

/// The policy settings the Authenticator applies (from the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicySettings {
    pub lockout: LockoutPolicy,
    /// `replica.max_age`: refuse logins when the last sync is older. None: never.
    pub max_replica_age: Option<Duration>,
    /// `audit.max_rows`: beyond it the outbox status is loud (rows are kept).
    pub audit_max_rows: u64,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            lockout: LockoutPolicy::default(),
            max_replica_age: None,
            audit_max_rows: 100_000,
        }
    }
}

/// The answer to a manager override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub granted: bool,
    pub authorizer: UserProfile,
    pub permission: String,
    /// The current session's user at the time, if any.
    pub session_user_id: Option<String>,
}

/// What a credential check is for: it decides the audit row's kind and details.
#[derive(Debug, Clone)]
enum Purpose {
    Login,
    Authorize {
        permission: String,
        session_user_id: Option<String>,
    },
}

impl Purpose {
    fn record(&self, kind: CredentialKind, source: &str, outcome: AuditOutcome) -> AuditRecord {
        match self {
            Purpose::Login => AuditRecord::new(AuditKind::Login, Some(kind), source, outcome),
            Purpose::Authorize {
                permission,
                session_user_id,
            } => {
                let mut record =
                    AuditRecord::new(AuditKind::Authorize, Some(kind), source, outcome);
                record.permission = Some(permission.clone());
                record.session_user_id = session_user_id.clone();
                record
            }
        }
    }
}

#[derive(Debug)]
pub struct Authenticator {
    replica: Arc<Replica>,
    /// Lockout counters and the audit outbox.
    local: Arc<LocalStore>,
    key: Arc<TerminalKey>,
    terminal: Terminal,
    sessions: Arc<SessionManager>,
    /// Bounds concurrent credential checks (each evaluates argon2, holding m_cost KiB), so a
    /// flood of attempts queues instead of exhausting memory. A permit is held from the lockout
    /// check to the counter update, so at most this many attempts can slip past a lockout that
    /// is just being reached.
    hashing: Semaphore,
    /// argon2 working memory, one buffer per permit at most, reused from one evaluation to the
    /// next so that the memory really stays at `max_concurrent × m_cost`.
    memory: HashMemory,
    policy: PolicySettings,
    /// Serializes "read the user's profile, then change the session" between logins and the
    /// re-evaluation after a sync, so a login cannot install permissions a sync just replaced.
    profile_gate: tokio::sync::Mutex<()>,
}

/// A credential that resolved to a user (the hashing permit is still held).
struct Verified<'a> {
    user_id: String,
    state: ReplicaState,
    _permit: tokio::sync::SemaphorePermit<'a>,
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
        local: Arc<LocalStore>,
        key: Arc<TerminalKey>,
        terminal: Terminal,
        sessions: Arc<SessionManager>,
        max_concurrent_hashes: usize,
        policy: PolicySettings,
    ) -> Self {
        Authenticator {
            replica,
            local,
            key,
            terminal,
            sessions,
            hashing: Semaphore::new(max_concurrent_hashes),
            memory: HashMemory::default(),
            policy,
            profile_gate: tokio::sync::Mutex::new(()),
        }
    }

    pub fn sessions(&self) -> &SessionManager {
        &self.sessions
    }

    pub fn policy(&self) -> &PolicySettings {
        &self.policy
    }

    /// Logs in with a PIN or key id. The same user's credential resumes a locked session;
    /// otherwise the winner replaces the current session.
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
            Err(e) => log_refusal("login", e),
        }
        outcome
    }

    async fn login_inner(
        &self,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        source: &str,
    ) -> Result<Session, LoginError> {
        let purpose = Purpose::Login;
        let verified = self.verify(kind, secret, source, &purpose).await?;
        let _gate = self.profile_gate.lock().await;
        let profile = self.profile(&verified, kind, source, &purpose).await?;
        let resumes = self
            .sessions
            .current()
            .is_some_and(|s| s.locked && s.user_id == profile.user_id);
        let outcome = if resumes {
            AuditOutcome::Resumed
        } else {
            AuditOutcome::Accepted
        };
        self.record(
            purpose.record(kind, source, outcome).user(&profile.user_id),
            CounterChange::Success,
        )
        .await?;
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
            replica: verified.state.cursor,
            last_sync_at: verified.state.last_sync_at,
            locked: false,
        };
        let event = self.sessions.login(session.clone());
        Ok(event.session.unwrap_or(session))
    }

    /// [`Authenticator::login`] run to completion in a task of its own, so a cancelled caller (a
    /// client deadline or disconnect, a reader restarted by a reload) cannot split the audit row
    /// from the session change.
    pub async fn login_detached(
        self: &Arc<Self>,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        source: String,
    ) -> Result<Session, LoginError> {
        let auth = self.clone();
        tokio::spawn(async move { auth.login(kind, secret, &source).await })
            .await
            .map_err(|e| LoginError::Task(e.to_string()))?
    }

    /// [`Authenticator::authorize`] run to completion in a task of its own (see
    /// [`Authenticator::login_detached`]).
    pub async fn authorize_detached(
        self: &Arc<Self>,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        permission: String,
        source: String,
    ) -> Result<Authorization, LoginError> {
        let auth = self.clone();
        tokio::spawn(async move { auth.authorize(kind, secret, &permission, &source).await })
            .await
            .map_err(|e| LoginError::Task(e.to_string()))?
    }

    /// Manager override: does the user this credential resolves to (same rules as login) hold
    /// `permission`? Never changes the current session; audited with both users. Counts as
    /// activity at the till.
    #[instrument(skip_all, fields(method = kind.label(), source = source, permission = permission))]
    pub async fn authorize(
        &self,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        permission: &str,
        source: &str,
    ) -> Result<Authorization, LoginError> {
        let outcome = self.authorize_inner(kind, secret, permission, source).await;
        match &outcome {
            Ok(a) => tracing::info!(
                authorizer = %a.authorizer.user_id,
                session_user_id = a.session_user_id.as_deref().unwrap_or(""),
                granted = a.granted,
                "authorization checked"
            ),
            Err(e) => log_refusal("authorization", e),
        }
        outcome
    }

    async fn authorize_inner(
        &self,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        permission: &str,
        source: &str,
    ) -> Result<Authorization, LoginError> {
        if permission.is_empty() {
            return Err(LoginError::BadInput("permission is empty"));
        }
        let session_user_id = self.sessions.current().map(|s| s.user_id);
        let purpose = Purpose::Authorize {
            permission: permission.to_owned(),
            session_user_id: session_user_id.clone(),
        };
        let verified = self.verify(kind, secret, source, &purpose).await?;
        let profile = self.profile(&verified, kind, source, &purpose).await?;
        let granted = profile.permissions.iter().any(|p| p == permission);
        let outcome = if granted {
            AuditOutcome::Granted
        } else {
            AuditOutcome::NotGranted
        };
        self.record(
            purpose.record(kind, source, outcome).user(&profile.user_id),
            CounterChange::Success,
        )
        .await?;
        self.sessions.touch();
        Ok(Authorization {
            granted,
            authorizer: profile,
            permission: permission.to_owned(),
            session_user_id,
        })
    }

    /// For the hardware readers: a key read that failed its checksum (or framing). Audited, but
    /// not a failed login: no counter changes.
    #[instrument(skip_all, fields(source = source, fault = %fault))]
    pub async fn report_bad_read(&self, source: &str, fault: ReadFault) -> Result<(), LoginError> {
        let record = AuditRecord::new(
            AuditKind::BadRead,
            Some(CredentialKind::Key),
            source,
            AuditOutcome::BadRead,
        )
        .reason(fault.to_string());
        self.record(record, CounterChange::Unchanged).await?;
        tracing::info!("bad key read (not counted as a failed login)");
        Ok(())
    }

    /// Clears the failed-attempt counters of `scope` (all when None), for an admin; audited.
    #[instrument(skip_all, fields(admin = admin_source))]
    pub async fn clear_lockouts(
        &self,
        scope: Option<String>,
        admin_source: &str,
    ) -> Result<Vec<String>, LoginError> {
        let record = AuditRecord::new(
            AuditKind::LockoutCleared,
            None,
            admin_source,
            AuditOutcome::Cleared,
        );
        let local = self.local.clone();
        let (cleared, stats) =
            blocking(move || local.clear_lockouts(scope.as_deref(), &record)).await??;
        audit::warn_if_over_cap(stats, self.policy.audit_max_rows);
        tracing::info!(cleared = %cleared.join(", "), "lockouts cleared");
        Ok(cleared)
    }

    /// After a sync changed the replica: ends the current session if its user was deleted,
    /// deactivated or lost access here, or publishes its new permissions if they changed.
    pub async fn replica_changed(&self) -> Result<Option<SessionEvent>, LoginError> {
        let _gate = self.profile_gate.lock().await;
        let Some(current) = self.sessions.current() else {
            return Ok(None);
        };
        let (replica, terminal, user_id) = (
            self.replica.clone(),
            self.terminal.clone(),
            current.user_id.clone(),
        );
        let profile = blocking(move || replica.user_profile(&user_id, &terminal)).await??;
        let Some(change) = profile_change(&current, profile.as_ref()) else {
            return Ok(None);
        };
        let event = self
            .sessions
            .apply_profile_change(&current.session_id, change);
        if let Some(event) = &event {
            tracing::info!(user_id = %current.user_id, session_id = %current.session_id, kind = ?event.kind, reason = %event.reason, "session changed by sync");
        }
        Ok(event)
    }

    /// Every check before a user is known, then the resolution; audits and counts every
    /// refusal. On success the hashing permit is still held (released by the caller).
    async fn verify(
        &self,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        source: &str,
        purpose: &Purpose,
    ) -> Result<Verified<'_>, LoginError> {
        let refuse = |outcome, error: &LoginError| {
            purpose
                .record(kind, source, outcome)
                .reason(error.to_string())
        };
        if let Err(e) = check_secret(kind, &secret) {
            self.record(
                refuse(AuditOutcome::InvalidInput, &e),
                CounterChange::Unchanged,
            )
            .await?;
            return Err(e);
        }
        let replica = self.replica.clone();
        let state = blocking(move || replica.state()).await??;
        if state.cursor.needs_snapshot() {
            let e = LoginError::NoReplica;
            self.record(
                refuse(AuditOutcome::NoReplica, &e),
                CounterChange::Unchanged,
            )
            .await?;
            return Err(e);
        }
        if let Some(max_age) = self.policy.max_replica_age
            && replica_too_old(state.last_sync_at, SystemTime::now(), max_age)
        {
            let e = LoginError::Stale {
                last_sync_at: state.last_sync_at,
                max_age,
            };
            self.record(
                refuse(AuditOutcome::ReplicaStale, &e),
                CounterChange::Unchanged,
            )
            .await?;
            return Err(e);
        }
        let permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| LoginError::Task(e.to_string()))?;
        if kind == CredentialKind::Pin {
            let scopes = self.policy.lockout.scopes(source);
            let local = self.local.clone();
            let locked = blocking(move || local.locked_for(&scopes, SystemTime::now())).await??;
            if let Some((scope, retry_after)) = locked {
                let e = LoginError::LockedOut {
                    retry_after,
                    terminal_wide: scope == TERMINAL_SCOPE,
                };
                self.record(
                    refuse(AuditOutcome::LockedOut, &e),
                    CounterChange::Unchanged,
                )
                .await?;
                return Err(e);
            }
        }
        let secret = Arc::new(secret);
        match resolve(self.matching_users(kind, secret).await?) {
            Resolution::Accepted { user_id } => Ok(Verified {
                user_id,
                state,
                _permit: permit,
            }),
            Resolution::Denied { user_id, reason } => {
                tracing::debug!(%user_id, "first matching user may not log in here");
                let e = LoginError::Denied(reason);
                self.record(
                    refuse(AuditOutcome::Denied, &e).user(user_id),
                    CounterChange::Unchanged,
                )
                .await?;
                Err(e)
            }
            Resolution::NoMatch => {
                let e = LoginError::NoMatch;
                self.record(refuse(AuditOutcome::NoMatch, &e), CounterChange::Failure)
                    .await?;
                Err(e)
            }
        }
    }

    /// The resolved user's profile here, read again under the profile gate. A sync may have
    /// deleted, deactivated or unassigned the user since the lookup: then the attempt is refused
    /// (audited, not counted) — never a session from a stale decision.
    async fn profile(
        &self,
        verified: &Verified<'_>,
        kind: CredentialKind,
        source: &str,
        purpose: &Purpose,
    ) -> Result<UserProfile, LoginError> {
        let (replica, terminal, user_id) = (
            self.replica.clone(),
            self.terminal.clone(),
            verified.user_id.clone(),
        );
        match blocking(move || replica.user_profile(&user_id, &terminal)).await?? {
            Some(profile) => {
                let Err(reason) = may_log_in(profile.active, profile.assigned_here) else {
                    return Ok(profile);
                };
                let e = LoginError::Denied(reason);
                let record = purpose
                    .record(kind, source, AuditOutcome::Denied)
                    .user(&verified.user_id)
                    .reason(e.to_string());
                self.record(record, CounterChange::Unchanged).await?;
                Err(e)
            }
            None => {
                let record = purpose
                    .record(kind, source, AuditOutcome::NoMatch)
                    .user(&verified.user_id)
                    .reason("user removed by a sync during the attempt");
                self.record(record, CounterChange::Unchanged).await?;
                Err(LoginError::NoMatch)
            }
        }
    }

    /// Writes an audit row and changes the counters in one transaction; logs new lockouts and
    /// an outbox over its cap.
    async fn record(
        &self,
        record: AuditRecord,
        change: CounterChange,
    ) -> Result<AttemptRecorded, LoginError> {
        let local = self.local.clone();
        let policy = self.policy.lockout;
        let recorded = blocking(move || local.record_attempt(&record, change, &policy)).await??;
        audit::warn_if_over_cap(recorded.audit, self.policy.audit_max_rows);
        for (scope, delay) in &recorded.locked {
            tracing::warn!(%scope, delay = %humantime::format_duration(*delay), "too many failed attempts: PIN entry locked");
        }
        Ok(recorded)
    }

    /// Every user whose credential of `kind` equals the secret: one argon2 evaluation per
    /// distinct scheme, then an index lookup of the re-keyed digest. The caller holds a hashing
    /// permit.
    async fn matching_users(
        &self,
        kind: CredentialKind,
        secret: Arc<Zeroizing<String>>,
    ) -> Result<Vec<Candidate>, LoginError> {
        let replica = self.replica.clone();
        let schemes = blocking(move || replica.hash_schemes(kind)).await??;
        let mut by_user: HashMap<String, Candidate> = HashMap::new();
        for scheme in schemes {
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

/// A credential hashed for enrolment, not stored anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    /// The PHC string under the account's scheme.
    pub phc: String,
    /// Users in the replica that already hold this secret (any terminal), sorted.
    pub holders: Vec<String>,
}

/// Enrolment: the hashing of new credentials and the check of a cashier's own PIN go through
/// the same permit, lockout and audit path as logins.
impl Authenticator {
    /// Hashes `secret` under the account's salt and costs, as the replica's credentials carry
    /// them (the highest costs when central has used several), and finds every user that
    /// already holds it by an index lookup per distinct scheme: no plaintext compare.
    #[instrument(skip_all, fields(method = kind.label()))]
    pub async fn hash_new_credential(
        &self,
        kind: CredentialKind,
        secret: Zeroizing<String>,
    ) -> Result<NewCredential, LoginError> {
        check_secret(kind, &secret)?;
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| LoginError::Task(e.to_string()))?;
        let replica = self.replica.clone();
        let scheme = blocking(move || {
            let mut schemes = replica.hash_schemes(CredentialKind::Pin)?;
            schemes.extend(replica.hash_schemes(CredentialKind::Key)?);
            Ok::<_, StoreError>(schemes.into_iter().max())
        })
        .await??
        .ok_or(LoginError::NoAccountScheme)?;
        let secret = Arc::new(secret);
        let mut memory = self.take_memory();
        let (output, memory) = {
            let (secret, scheme) = (secret.clone(), scheme.clone());
            blocking(move || (argon2id_in(secret.as_bytes(), &scheme, &mut memory), memory)).await?
        };
        self.return_memory(memory);
        let phc = crate::credential::phc_string(&scheme, &output?);
        let mut holders: Vec<String> = self
            .matching_users(kind, secret)
            .await?
            .into_iter()
            .map(|c| c.user_id)
            .collect();
        holders.sort();
        Ok(NewCredential { phc, holders })
    }

    /// A cashier confirming a change with their own PIN: the same checks as a login (lockout,
    /// stale replica, resolution, failure counting), audited as an authorization of
    /// [`OWN_PIN_PERMISSION`]. The PIN must resolve to `user_id` itself.
    #[instrument(skip_all, fields(source = source))]
    pub async fn confirm_own_pin(
        &self,
        user_id: &str,
        pin: Zeroizing<String>,
        source: &str,
    ) -> Result<(), LoginError> {
        let purpose = Purpose::Authorize {
            permission: OWN_PIN_PERMISSION.to_owned(),
            session_user_id: self.sessions.current().map(|s| s.user_id),
        };
        let kind = CredentialKind::Pin;
        let verified = self.verify(kind, pin, source, &purpose).await?;
        if verified.user_id != user_id {
            // Another user's PIN: a wrong PIN for this user, counted as such.
            let e = LoginError::NoMatch;
            self.record(
                purpose
                    .record(kind, source, AuditOutcome::NoMatch)
                    .reason("not the user's own PIN"),
                CounterChange::Failure,
            )
            .await?;
            return Err(e);
        }
        let profile = self.profile(&verified, kind, source, &purpose).await?;
        self.record(
            purpose
                .record(kind, source, AuditOutcome::Granted)
                .user(&profile.user_id),
            CounterChange::Success,
        )
        .await?;
        Ok(())
    }

    /// Writes one audit row of the enrolment use case (no counters change).
    pub async fn audit(&self, record: AuditRecord) -> Result<(), LoginError> {
        self.record(record, CounterChange::Unchanged)
            .await
            .map(drop)
    }
}

/// The permission an own-PIN confirmation is audited under (no role grants it; it is never
/// checked against the replica).
pub const OWN_PIN_PERMISSION: &str = "own PIN";

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

fn log_refusal(what: &str, e: &LoginError) {
    match e {
        LoginError::Denied(reason) => tracing::info!(%reason, "{what} denied"),
        LoginError::NoMatch => tracing::info!("{what} failed: no matching credential"),
        LoginError::NoReplica
        | LoginError::BadInput(_)
        | LoginError::LockedOut { .. }
        | LoginError::Stale { .. }
        | LoginError::NoAccountScheme => tracing::info!(error = %e, "{what} refused"),
        LoginError::Store(_) | LoginError::Hash(_) | LoginError::Task(_) => {
            tracing::error!(error = %e, "{what} failed")
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

#[cfg(test)]
mod tests;
