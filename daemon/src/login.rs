//! The login use case, shared by the gRPC API and the hardware readers: hash the typed secret
//! once per distinct scheme, look the digest up, apply first-match resolution, and make the
//! winner the terminal's session — with the session policy around it: lockout after repeated
//! failures, a refusal when the replica is too old, an audit row per attempt, manager
//! authorization, and re-evaluating the session when a sync changes its user.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::instrument;
use zeroize::Zeroizing;

use argon2::Block;

use crate::audit::{self, AuditKind, AuditOutcome, AuditRecord, ReadFault};
use crate::coalesce::{FailureRow, Pending, RefusedFor};
use crate::credential::{HashError, TerminalKey, argon2id_in};
use crate::hashing::{HashingPermit, HashingQueue, QueueFull};
use crate::lockout::cache::LockedScopes;
use crate::lockout::{Budget, LockoutPolicy, Refusal, budget_of, scope_of, source_scope};
use crate::model::{CredentialKind, Terminal};
use crate::resolve::{Candidate, DenialReason, Resolution, may_log_in, resolve};
use crate::session::{Session, SessionEvent, SessionManager, profile_change};
use crate::store::{
    Admitted, AttemptRecorded, LocalStore, Replica, ReplicaState, Settlement, StoreError,
    UserProfile,
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
    #[error("{0}")]
    Busy(#[from] QueueFull),
    #[error(
        "the state directory is full: attempts cannot be counted or audited, so logins are \
         refused until space is freed"
    )]
    DiskFull,
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("login task failed: {0}")]
    Task(String),
    #[error(
        "the replica holds no credential yet, so the account's salt and argon2 costs are unknown"
    )]
    NoAccountScheme,
}

impl From<StoreError> for LoginError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            LoginError::DiskFull
        } else {
            LoginError::Store(e)
        }
    }
}

/// Rounds up, so "retry in 0s" is never shown while still locked.
pub fn round_up_to_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// Whether logins must be refused because the last successful sync is older than `max_age`.
/// A replica that never synced is stale, and so is one whose sync time lies in the future: the
/// clock was stepped back since, and how old the replica really is cannot be known.
pub fn replica_too_old(
    last_sync_at: Option<SystemTime>,
    now: SystemTime,
    max_age: Duration,
) -> bool {
    match last_sync_at {
        None => true,
        Some(at) => now.duration_since(at).map_or(true, |age| age > max_age),
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
    /// `audit.summary_interval`: how often pending summary rows are written.
    pub audit_summary_interval: Duration,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            lockout: LockoutPolicy::default(),
            max_replica_age: None,
            audit_max_rows: 100_000,
            audit_summary_interval: Duration::from_secs(60),
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
    /// Hashing permits, queued fairly per source and bounded (each argon2 evaluation holds
    /// m_cost KiB). An attempt is charged to its lockout counters after it gets a permit, in the
    /// same transaction that checks them, so no attempt slips past a lockout.
    hashing: HashingQueue,
    /// argon2 working memory, one buffer per permit at most, reused from one evaluation to the
    /// next so that the memory really stays at `max_concurrent × m_cost`.
    memory: HashMemory,
    policy: PolicySettings,
    /// Serializes "read the user's profile, then change the session" between logins and the
    /// re-evaluation after a sync, so a login cannot install permissions a sync just replaced.
    profile_gate: tokio::sync::Mutex<()>,
    /// Attempts refused without a row of their own (locked out, malformed, too busy, no
    /// replica, stale), per budget scope, until the scope's summary row carries the counts (see
    /// `coalesce.rs`). Kept in memory so that a flood of refusals writes nothing; a crash loses
    /// only these counts, never a decision nor a hashed failure.
    refused: Mutex<HashMap<String, Pending>>,
    /// Key scopes whose streak the store was found (or made) open since the last summary tick:
    /// their bad reads are counted with the refusals, no transaction each. Emptied each tick,
    /// when idle streaks end.
    streaks_open: Mutex<HashSet<String>>,
    /// Lockouts the store answered, so a locked source's further attempts are refused without
    /// SQLite or the blocking pool. Never looser than the store: see `lockout/cache.rs`.
    locked: Mutex<LockedScopes>,
    /// Set while writes fail because the state directory is full.
    disk_full: AtomicBool,
}

/// A credential that resolved to a user (the hashing permit is still held).
struct Verified {
    user_id: String,
    state: ReplicaState,
    _permit: HashingPermit,
}

/// An attempt that passed the checks before hashing and holds a permit.
struct Admission {
    permit: HashingPermit,
    state: ReplicaState,
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

fn locked_out(refusal: Refusal) -> LoginError {
    LoginError::LockedOut {
        terminal_wide: refusal.terminal_wide(),
        retry_after: refusal.retry_after,
    }
}

impl Authenticator {
    pub fn new(
        replica: Arc<Replica>,
        local: Arc<LocalStore>,
        key: Arc<TerminalKey>,
        terminal: Terminal,
        sessions: Arc<SessionManager>,
        hashing: HashingQueue,
        policy: PolicySettings,
    ) -> Self {
        Authenticator {
            replica,
            local,
            key,
            terminal,
            sessions,
            hashing,
            memory: HashMemory::default(),
            policy,
            profile_gate: tokio::sync::Mutex::new(()),
            refused: Mutex::new(HashMap::new()),
            streaks_open: Mutex::new(HashSet::new()),
            locked: Mutex::new(LockedScopes::default()),
            disk_full: AtomicBool::new(false),
        }
    }

    pub fn sessions(&self) -> &SessionManager {
        &self.sessions
    }

    pub fn policy(&self) -> &PolicySettings {
        &self.policy
    }

    /// The hashing queue (shared with other hashing jobs such as enrolment).
    pub fn hashing(&self) -> &HashingQueue {
        &self.hashing
    }

    /// True while the state directory is full: attempts are refused with `UNAVAILABLE`.
    pub fn disk_full(&self) -> bool {
        self.disk_full.load(Ordering::Relaxed)
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
        let outcome = match self.admission(kind, &secret, source).await {
            Ok(admission) => self.login_admitted(admission, kind, secret, source).await,
            Err(e) => Err(e),
        };
        log_login(&outcome);
        outcome
    }

    /// [`Authenticator::login`] whose part after the wait for a hashing permit runs to
    /// completion in a task of its own: a caller that goes away while queued (a client deadline
    /// or disconnect, a reader restarted by a reload) is dropped before anything is hashed or
    /// counted, and one that goes away later cannot split the audit row from the session change.
    pub async fn login_detached(
        self: &Arc<Self>,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        source: String,
    ) -> Result<Session, LoginError> {
        let admission = match self.admission(kind, &secret, &source).await {
            Ok(admission) => admission,
            Err(e) => {
                log_refusal("login", &e);
                return Err(e);
            }
        };
        let auth = self.clone();
        tokio::spawn(async move {
            let outcome = auth.login_admitted(admission, kind, secret, &source).await;
            log_login(&outcome);
            outcome
        })
        .await
        .map_err(|e| LoginError::Task(e.to_string()))?
    }

    async fn login_admitted(
        &self,
        admission: Admission,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        source: &str,
    ) -> Result<Session, LoginError> {
        let purpose = Purpose::Login;
        let verified = self
            .verify(admission, kind, secret, source, &purpose)
            .await?;
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
            Settlement::Refund(budget_of(kind)),
            source,
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

    /// [`Authenticator::authorize`] with the same cancellation boundary as
    /// [`Authenticator::login_detached`].
    pub async fn authorize_detached(
        self: &Arc<Self>,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        permission: String,
        source: String,
    ) -> Result<Authorization, LoginError> {
        let session_user_id = self.sessions.current().map(|s| s.user_id);
        let purpose = Purpose::Authorize {
            permission: permission.clone(),
            session_user_id,
        };
        let admitted = if permission.is_empty() {
            self.count_refused(&source, kind, RefusedFor::Malformed);
            Err(LoginError::BadInput("permission is empty"))
        } else {
            self.admission(kind, &secret, &source).await
        };
        let admission = match admitted {
            Ok(admission) => admission,
            Err(e) => {
                log_refusal("authorization", &e);
                return Err(e);
            }
        };
        let auth = self.clone();
        tokio::spawn(async move {
            let outcome = auth
                .authorize_admitted(admission, kind, secret, &purpose, &source)
                .await;
            log_authorization(&outcome);
            outcome
        })
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
        let purpose = Purpose::Authorize {
            permission: permission.to_owned(),
            session_user_id: self.sessions.current().map(|s| s.user_id),
        };
        let outcome = if permission.is_empty() {
            self.count_refused(source, kind, RefusedFor::Malformed);
            Err(LoginError::BadInput("permission is empty"))
        } else {
            match self.admission(kind, &secret, source).await {
                Ok(admission) => {
                    self.authorize_admitted(admission, kind, secret, &purpose, source)
                        .await
                }
                Err(e) => Err(e),
            }
        };
        log_authorization(&outcome);
        outcome
    }

    async fn authorize_admitted(
        &self,
        admission: Admission,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        purpose: &Purpose,
        source: &str,
    ) -> Result<Authorization, LoginError> {
        let Purpose::Authorize {
            permission,
            session_user_id,
        } = purpose
        else {
            return Err(LoginError::BadInput("not an authorization"));
        };
        let verified = self
            .verify(admission, kind, secret, source, purpose)
            .await?;
        let profile = self.profile(&verified, kind, source, purpose).await?;
        let granted = profile.permissions.iter().any(|p| p == permission);
        let outcome = if granted {
            AuditOutcome::Granted
        } else {
            AuditOutcome::NotGranted
        };
        self.record(
            purpose.record(kind, source, outcome).user(&profile.user_id),
            Settlement::Refund(budget_of(kind)),
            source,
        )
        .await?;
        self.sessions.touch();
        Ok(Authorization {
            granted,
            authorizer: profile,
            permission: permission.clone(),
            session_user_id: session_user_id.clone(),
        })
    }

    /// For the hardware readers: a key read that failed its checksum (or framing). Audited, but
    /// not a failed login: no counter changes. Coalesced like the wrong keys of the reader's
    /// key scope: the first failure since its streak ended (wrong key or bad read) has a row of
    /// its own; the later bad reads are counted in memory (per fault, `bad_read.crc`) for the
    /// scope's summary row, with no transaction each.
    #[instrument(skip_all, fields(source = source, fault = %fault))]
    pub async fn report_bad_read(&self, source: &str, fault: ReadFault) -> Result<(), LoginError> {
        let scope = source_scope(Budget::Key, source);
        let known_open = self
            .streaks_open
            .lock()
            .is_ok_and(|open| open.contains(&scope));
        let row = if known_open {
            FailureRow::Coalesced
        } else {
            let record = AuditRecord::new(
                AuditKind::BadRead,
                Some(CredentialKind::Key),
                source,
                AuditOutcome::BadRead,
            )
            .reason(fault.to_string());
            let (local, owned) = (self.local.clone(), scope.clone());
            let opened =
                blocking(move || local.open_streak_with(&owned, CredentialKind::Key, &record))
                    .await?;
            let (row, stats) = self.written(opened)?;
            if row == FailureRow::Own {
                audit::warn_if_over_cap(stats, self.policy.audit_max_rows);
            }
            if let Ok(mut open) = self.streaks_open.lock() {
                open.insert(scope.clone());
            }
            row
        };
        if row == FailureRow::Coalesced {
            self.count_pending(scope, CredentialKind::Key, fault.label());
        }
        let seen = BAD_READS.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == 1 || seen.is_multiple_of(1000) {
            tracing::info!(
                bad_reads = seen,
                "bad key read (not counted as a failed login)"
            );
        } else {
            tracing::debug!(
                bad_reads = seen,
                "bad key read (not counted as a failed login)"
            );
        }
        Ok(())
    }

    /// Clears the failed-attempt counters of `scope` (all when None), for an admin; audited,
    /// with the summary rows of the attempts refused meanwhile.
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
        let pending = self.take_all_refused(scope.as_deref());
        let (local, memory, wanted) = (self.local.clone(), pending.clone(), scope.clone());
        let cleared =
            blocking(move || local.clear_lockouts(wanted.as_deref(), &record, &memory)).await?;
        let (cleared, stats) = match self.written(cleared) {
            Ok(done) => done,
            Err(e) => {
                self.restore_refused(pending);
                return Err(e);
            }
        };
        // The store no longer refuses these scopes: neither may the memory.
        if let Ok(mut locked) = self.locked.lock() {
            match scope {
                Some(scope) => locked.forget(&[scope]),
                None => locked.forget_all(),
            }
        }
        audit::warn_if_over_cap(stats, self.policy.audit_max_rows);
        tracing::info!(cleared = %cleared.join(", "), "lockouts cleared");
        Ok(cleared)
    }

    /// True while a login, authorization or enrolment is hashing (background work steps aside).
    pub fn hashing_busy(&self) -> bool {
        self.hashing.busy()
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

    /// Every check before hashing, then the wait for a hashing permit in the source's queue.
    /// Nothing here is charged or hashed, so a caller may go away at any point: it is then
    /// simply dropped from the queue. Refusals that would write a row each under a flood
    /// (locked out, malformed, queue full) are only counted for the source's summary row.
    async fn admission(
        &self,
        kind: CredentialKind,
        secret: &str,
        source: &str,
    ) -> Result<Admission, LoginError> {
        if let Err(e) = check_secret(kind, secret) {
            self.count_refused(source, kind, RefusedFor::Malformed);
            return Err(e);
        }
        // From memory unless a sync wrote since the last read.
        let state = match self.replica.cached_state() {
            Some(state) => state,
            None => {
                let replica = self.replica.clone();
                blocking(move || replica.state()).await??
            }
        };
        // Counted, not a row each: these last until central acts, and a flood must not fill
        // the disk meanwhile.
        if state.cursor.needs_snapshot() {
            self.count_refused(source, kind, RefusedFor::NoReplica);
            return Err(LoginError::NoReplica);
        }
        if let Some(max_age) = self.policy.max_replica_age
            && replica_too_old(state.last_sync_at, SystemTime::now(), max_age)
        {
            self.count_refused(source, kind, RefusedFor::Stale);
            return Err(LoginError::Stale {
                last_sync_at: state.last_sync_at,
                max_age,
            });
        }
        let budget = budget_of(kind);
        let now = crate::clock::now();
        // A lockout the store answered before: refused without SQLite or the blocking pool.
        let scopes = self.policy.lockout.scopes(budget, source);
        let remembered = self
            .locked
            .lock()
            .ok()
            .and_then(|locked| locked.refusal(&scopes, now));
        if let Some(refusal) = remembered {
            self.count_refused(source, kind, RefusedFor::LockedOut);
            return Err(locked_out(refusal));
        }
        let (local, policy, owned) = (self.local.clone(), self.policy.lockout, source.to_owned());
        let read_at = self.lockout_generation();
        let locked = blocking(move || local.refusal(budget, &owned, &policy, now)).await??;
        if let Some(refusal) = locked {
            self.remember_lockout(&refusal, now, read_at);
            self.count_refused(source, kind, RefusedFor::LockedOut);
            return Err(locked_out(refusal));
        }
        match self.hashing.acquire(&scope_of(source)).await {
            Ok(permit) => Ok(Admission { permit, state }),
            Err(full) => {
                self.count_refused(source, kind, RefusedFor::Busy);
                Err(LoginError::Busy(full))
            }
        }
    }

    /// With a permit: charges the attempt to its counters (refused if a lockout started
    /// meanwhile) while it hashes, resolves; audits every refusal. Runs to completion. On success the
    /// permit is still held (released by the caller) and the charge awaits its refund.
    async fn verify(
        &self,
        admission: Admission,
        kind: CredentialKind,
        secret: Zeroizing<String>,
        source: &str,
        purpose: &Purpose,
    ) -> Result<Verified, LoginError> {
        let Admission { permit, state } = admission;
        // The charge's commit (an fsync) runs while argon2 does: the budget needs the charge on
        // disk before any answer leaves, not before the hash starts. Nothing is answered until
        // both are done, and a refused charge (a lockout that started meanwhile, a full disk)
        // throws the hash's result away unread.
        let secret = Arc::new(secret);
        let (admitted, matches) =
            tokio::join!(self.charge(kind, source), self.matching_users(kind, secret));
        let admitted = admitted?;
        let refuse = |outcome, error: &LoginError| {
            purpose
                .record(kind, source, outcome)
                .reason(error.to_string())
        };
        let resolution = resolve(matches?);
        // The lockout a failure starts was set when it was charged: report it with the outcome.
        let report_lockouts = || {
            for (scope, delay) in &admitted.locked {
                tracing::warn!(%scope, delay = %humantime::format_duration(*delay), "too many failed attempts: entry from this source locked");
            }
        };
        match resolution {
            Resolution::Accepted { user_id } => Ok(Verified {
                user_id,
                state,
                _permit: permit,
            }),
            Resolution::Denied { user_id, reason } => {
                // Counted like a wrong credential: the answer tells a guesser that it exists.
                tracing::debug!(%user_id, "first matching user may not log in here");
                let e = LoginError::Denied(reason);
                self.record(
                    refuse(AuditOutcome::Denied, &e).user(user_id),
                    Settlement::Keep,
                    source,
                )
                .await?;
                report_lockouts();
                Err(e)
            }
            Resolution::NoMatch => {
                let e = LoginError::NoMatch;
                self.record(refuse(AuditOutcome::NoMatch, &e), Settlement::Keep, source)
                    .await?;
                report_lockouts();
                Err(e)
            }
        }
    }

    /// Charges an admitted attempt to its counters; refused (nothing written) if a lockout
    /// started meanwhile.
    async fn charge(&self, kind: CredentialKind, source: &str) -> Result<Admitted, LoginError> {
        let (local, policy, owned) = (self.local.clone(), self.policy.lockout, source.to_owned());
        let budget = budget_of(kind);
        let now = crate::clock::now();
        let read_at = self.lockout_generation();
        let admitted = blocking(move || local.admit_attempt(budget, &owned, &policy, now)).await?;
        match self.written(admitted)? {
            Ok(admitted) => Ok(admitted),
            Err(refusal) => {
                self.remember_lockout(&refusal, now, read_at);
                self.count_refused(source, kind, RefusedFor::LockedOut);
                Err(locked_out(refusal))
            }
        }
    }

    /// The in-memory lockouts' generation, read before the store is: a refusal read from the
    /// store is only remembered if no success or unlock forgot a scope meanwhile.
    fn lockout_generation(&self) -> u64 {
        // Unreadable: a generation no forget leads to, so nothing is remembered.
        self.locked
            .lock()
            .map(|locked| locked.generation())
            .unwrap_or(u64::MAX)
    }

    fn remember_lockout(&self, refusal: &Refusal, now: crate::lockout::Now, read_at: u64) {
        if let Ok(mut locked) = self.locked.lock() {
            locked.remember(refusal, &self.policy.lockout, now, read_at);
        }
    }

    /// The resolved user's profile here, read again under the profile gate. A sync may have
    /// deleted, deactivated or unassigned the user since the lookup: then the attempt is refused
    /// (audited; its charge stays) — never a session from a stale decision.
    async fn profile(
        &self,
        verified: &Verified,
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
                self.record(record, Settlement::Keep, source).await?;
                Err(e)
            }
            None => {
                let record = purpose
                    .record(kind, source, AuditOutcome::NoMatch)
                    .user(&verified.user_id)
                    .reason("user removed by a sync during the attempt");
                self.record(record, Settlement::Keep, source).await?;
                Err(LoginError::NoMatch)
            }
        }
    }

    /// Writes an audit row (or counts a hashed failure for its source's summary) and settles
    /// the attempt's charges in one transaction. A success has its own row and ends no streak:
    /// its source's coalesced counts wait for the next summary row (see `coalesce.rs`).
    async fn record(
        &self,
        record: AuditRecord,
        settlement: Settlement,
        source: &str,
    ) -> Result<AttemptRecorded, LoginError> {
        let refunded = match settlement {
            Settlement::Refund(budget) => Some(budget),
            Settlement::Keep => None,
        };
        let (local, policy, owned) = (self.local.clone(), self.policy.lockout, source.to_owned());
        let now = crate::clock::now();
        let recorded =
            blocking(move || local.record_attempt(&record, settlement, &owned, &policy, now)).await;
        let recorded = recorded.and_then(|r| self.written(r))?;
        if let Some(budget) = refunded
            && let Ok(mut locked) = self.locked.lock()
        {
            // A refund ends the source's lockout and gives the terminal its charge back.
            locked.forget(&policy.scopes(budget, source));
        }
        audit::warn_if_over_cap(recorded.audit, self.policy.audit_max_rows);
        Ok(recorded)
    }

    /// The outcome of a write, with the full-disk state kept up to date (and loud).
    fn written<T>(&self, result: Result<T, StoreError>) -> Result<T, LoginError> {
        match result {
            Ok(value) => {
                if self.disk_full.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "the state directory has space again: attempts are counted and audited"
                    );
                }
                Ok(value)
            }
            Err(e) if e.is_disk_full() => {
                if !self.disk_full.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "the state directory is full: logins are refused (UNAVAILABLE) until space is freed");
                }
                Err(LoginError::DiskFull)
            }
            Err(e) => Err(LoginError::Store(e)),
        }
    }

    fn count_refused(&self, source: &str, kind: CredentialKind, why: RefusedFor) {
        self.count_pending(source_scope(budget_of(kind), source), kind, why.label());
    }

    /// Counts an attempt without a row of its own for `scope`'s summary row.
    fn count_pending(&self, scope: String, kind: CredentialKind, label: &str) {
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        let now = SystemTime::now();
        refused
            .entry(scope)
            .or_insert_with(|| Pending::new(kind, now))
            .count(label, now);
    }

    /// Writes the summary row of every scope with coalesced failures or refusals pending
    /// (each `audit.summary_interval` while any are, and at shutdown and start), so a flood
    /// followed by silence is still audited. Returns the rows written.
    pub async fn flush_summaries(&self) -> Result<usize, LoginError> {
        let pending = self.take_all_refused(None);
        let (local, memory) = (self.local.clone(), pending.clone());
        let written = blocking(move || local.flush_summaries(&memory)).await;
        match written.and_then(|w| self.written(w)) {
            Ok((rows, stats)) => {
                if rows > 0 {
                    audit::warn_if_over_cap(stats, self.policy.audit_max_rows);
                }
                Ok(rows)
            }
            Err(e) => {
                self.restore_refused(pending);
                Err(e)
            }
        }
    }

    /// The `audit.summary_interval` tick: [`Authenticator::flush_summaries`], and the streaks
    /// idle since the previous tick end (their next wrong credential has a row of its own
    /// again: at most one per source and budget per interval). Returns the rows written.
    pub async fn summary_tick(&self) -> Result<usize, LoginError> {
        let pending = self.take_all_refused(None);
        let (local, memory) = (self.local.clone(), pending.clone());
        let written = blocking(move || local.summary_tick(&memory)).await;
        // Idle streaks end now: the next bad read of a scope asks the store again.
        if let Ok(mut open) = self.streaks_open.lock() {
            open.clear();
        }
        match written.and_then(|w| self.written(w)) {
            Ok((rows, ended, stats)) => {
                if rows > 0 {
                    audit::warn_if_over_cap(stats, self.policy.audit_max_rows);
                }
                if ended > 0 {
                    tracing::debug!(ended, "idle failure streaks ended");
                }
                Ok(rows)
            }
            Err(e) => {
                self.restore_refused(pending);
                Err(e)
            }
        }
    }

    /// Runs [`Authenticator::summary_tick`] every `period` (the first one `period` after the
    /// start, which flushed what the last run left), for as long as the daemon runs.
    pub async fn run_summary_flush(self: Arc<Self>, period: Duration) {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(e) = self.summary_tick().await {
                tracing::warn!(error = %e, "writing the audit summary rows failed; kept for the next try");
            }
        }
    }

    fn take_all_refused(&self, scope: Option<&str>) -> Vec<(String, Pending)> {
        let Ok(mut refused) = self.refused.lock() else {
            return Vec::new();
        };
        let scopes: Vec<String> = refused
            .keys()
            .filter(|s| scope.is_none_or(|wanted| wanted == s.as_str()))
            .cloned()
            .collect();
        scopes
            .into_iter()
            .filter_map(|s| refused.remove(&s).map(|r| (s, r)))
            .collect()
    }

    /// Puts counts back whose summary row could not be written.
    fn restore_refused(&self, pending: Vec<(String, Pending)>) {
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        for (scope, p) in pending {
            match refused.get_mut(&scope) {
                Some(entry) => entry.merge(&p),
                None => {
                    refused.insert(scope, p);
                }
            }
        }
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

/// The scheme a new credential is hashed under: the highest of its own kind's, so a new PIN
/// shares the salt of the other PINs (the in-use check and one argon2 run per login rely on
/// it); the other kind's only when none of its kind exists yet.
fn enrolment_scheme<S: Ord>(same_kind: Vec<S>, other_kind: Vec<S>) -> Option<S> {
    same_kind
        .into_iter()
        .max()
        .or_else(|| other_kind.into_iter().max())
}

fn other_kind(kind: CredentialKind) -> CredentialKind {
    match kind {
        CredentialKind::Pin => CredentialKind::Key,
        CredentialKind::Key => CredentialKind::Pin,
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
        source: &str,
    ) -> Result<NewCredential, LoginError> {
        // "A user holds this PIN" is what a right guess tells: a new PIN's lookup is admitted and
        // charged like a login and never refunded, whatever it finds, so the guess budget G
        // covers it. A key is only looked up when presented at a reader.
        let _permit = match kind {
            CredentialKind::Pin => {
                let admission = self.admission(kind, &secret, source).await?;
                let admitted = self.charge(kind, source).await?;
                for (scope, delay) in &admitted.locked {
                    tracing::warn!(%scope, delay = %humantime::format_duration(*delay), "too many PINs tested: entry from this source locked");
                }
                admission.permit
            }
            CredentialKind::Key => {
                check_secret(kind, &secret)?;
                // The same fair per-source queue as logins.
                self.hashing
                    .acquire(&scope_of(source))
                    .await
                    .map_err(LoginError::Busy)?
            }
        };
        let replica = self.replica.clone();
        let scheme = blocking(move || {
            Ok::<_, StoreError>(enrolment_scheme(
                replica.hash_schemes(kind)?,
                replica.hash_schemes(other_kind(kind))?,
            ))
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

    /// A cashier confirming a change with their own PIN: the same checks as a login (throttle,
    /// stale replica, resolution, the attempt charged and refunded on success), audited as an
    /// authorization of [`OWN_PIN_PERMISSION`]. The PIN must resolve to `user_id` itself.
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
        let admission = self.admission(kind, &pin, source).await?;
        let verified = self.verify(admission, kind, pin, source, &purpose).await?;
        if verified.user_id != user_id {
            // Another user's PIN: a wrong PIN for this user; its charge stays.
            self.record(
                purpose
                    .record(kind, source, AuditOutcome::NoMatch)
                    .reason("not the user's own PIN"),
                Settlement::Keep,
                source,
            )
            .await?;
            return Err(LoginError::NoMatch);
        }
        let profile = self.profile(&verified, kind, source, &purpose).await?;
        self.record(
            purpose
                .record(kind, source, AuditOutcome::Granted)
                .user(&profile.user_id),
            Settlement::Refund(budget_of(kind)),
            source,
        )
        .await?;
        Ok(())
    }

    /// Writes one audit row of the enrolment use case (no counters change).
    pub async fn audit(&self, record: AuditRecord) -> Result<(), LoginError> {
        let source = record.source.clone();
        self.record(record, Settlement::Keep, &source)
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

fn log_login(outcome: &Result<Session, LoginError>) {
    match outcome {
        Ok(session) => {
            tracing::info!(user_id = %session.user_id, session_id = %session.session_id, "login accepted")
        }
        Err(e) => log_refusal("login", e),
    }
}

fn log_authorization(outcome: &Result<Authorization, LoginError>) {
    match outcome {
        Ok(a) => tracing::info!(
            authorizer = %a.authorizer.user_id,
            session_user_id = a.session_user_id.as_deref().unwrap_or(""),
            granted = a.granted,
            "authorization checked"
        ),
        Err(e) => log_refusal("authorization", e),
    }
}

fn log_refusal(what: &str, e: &LoginError) {
    match e {
        LoginError::Denied(reason) => tracing::info!(%reason, "{what} denied"),
        LoginError::NoMatch => tracing::info!("{what} failed: no matching credential"),
        // Refused before hashing: under a flood these come as fast as the caller sends them.
        // They are counted for the audit's summary row; the log says so once, then every
        // 1000th of each kind (the rest at debug), so a flood cannot crowd the journal out.
        LoginError::NoReplica
        | LoginError::BadInput(_)
        | LoginError::LockedOut { .. }
        | LoginError::Busy(_)
        | LoginError::Stale { .. } => {
            let refused = count_refusal_logged(e);
            if refused == 1 || refused.is_multiple_of(1000) {
                tracing::info!(error = %e, refused, "{what} refused");
            } else {
                tracing::debug!(error = %e, refused, "{what} refused");
            }
        }
        LoginError::NoAccountScheme => tracing::info!(error = %e, "{what} refused"),
        LoginError::DiskFull | LoginError::Store(_) | LoginError::Hash(_) | LoginError::Task(_) => {
            tracing::error!(error = %e, "{what} failed")
        }
    }
}

/// Bad key reads so far (for the log's throttle: a reader sending garbage must not flood it).
static BAD_READS: AtomicU64 = AtomicU64::new(0);

/// Refusals before hashing so far, per kind (for the log's throttle).
static REFUSALS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Counts one refusal of `e`'s kind; returns how many there were so far.
fn count_refusal_logged(e: &LoginError) -> u64 {
    let kind = match e {
        LoginError::LockedOut { .. } => 0,
        LoginError::BadInput(_) => 1,
        LoginError::Busy(_) => 2,
        LoginError::NoReplica => 3,
        _ => 4,
    };
    REFUSALS[kind].fetch_add(1, Ordering::Relaxed) + 1
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
