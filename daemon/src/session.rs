//! The terminal's one current session and the ordered stream of its changes: login, logout,
//! idle lock, unlock by the same user, key removal, and changes a sync makes to its user.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::model::{CredentialKind, Cursor};
use crate::resolve::{DenialReason, may_log_in};
use crate::store::UserProfile;

/// Capacity of the event channel; a watcher this far behind is told it lost events.
const EVENT_BUFFER: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub session_id: String,
    pub user_id: String,
    pub first_name: String,
    pub last_name: String,
    pub role_ids: Vec<String>,
    pub permissions: Vec<String>,
    pub method: CredentialKind,
    /// Where the credential came from: "socket uid=… gid=… pid=…" or "device <name> (<path>)".
    pub source: String,
    pub started_at: SystemTime,
    pub replica: Cursor,
    pub last_sync_at: Option<SystemTime>,
    /// Locked (idle, or its key was removed): nothing is granted until its user resumes it.
    pub locked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Current,
    Login,
    Logout,
    Locked,
    Unlocked,
    PermissionsChanged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    pub sequence: u64,
    pub kind: EventKind,
    pub session: Option<Session>,
    pub previous: Option<Session>,
    pub reason: String,
    pub at: SystemTime,
}

/// What removing the key that opened the session does (`session.on_key_removal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyRemoval {
    Lock,
    #[default]
    Logout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionPolicy {
    /// Lock an unlocked session after this long without activity (`session.idle_lock`).
    pub idle_lock: Option<Duration>,
    pub on_key_removal: KeyRemoval,
}

/// How a sync changed the current session's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileChange {
    /// The session must end; the reason names why.
    End(&'static str),
    /// Roles or effective permissions here changed.
    Permissions {
        first_name: String,
        last_name: String,
        role_ids: Vec<String>,
        permissions: Vec<String>,
    },
}

/// Compares the session with its user's profile after a sync (pure).
pub fn profile_change(session: &Session, profile: Option<&UserProfile>) -> Option<ProfileChange> {
    let Some(profile) = profile else {
        return Some(ProfileChange::End("user deleted"));
    };
    match may_log_in(profile.active, profile.assigned_here) {
        Ok(()) => {}
        Err(DenialReason::Inactive) => return Some(ProfileChange::End("user deactivated")),
        Err(DenialReason::NoAccessHere) => {
            return Some(ProfileChange::End("access to this terminal removed"));
        }
    }
    if profile.permissions != session.permissions || profile.role_ids != session.role_ids {
        return Some(ProfileChange::Permissions {
            first_name: profile.first_name.clone(),
            last_name: profile.last_name.clone(),
            role_ids: profile.role_ids.clone(),
            permissions: profile.permissions.clone(),
        });
    }
    None
}

#[derive(Debug)]
struct State {
    current: Option<Session>,
    sequence: u64,
    /// Last activity of the current session (login, resume, permission check, touch).
    last_activity: Instant,
}

#[derive(Debug)]
pub struct SessionManager {
    state: Mutex<State>,
    events: broadcast::Sender<SessionEvent>,
    policy: SessionPolicy,
    /// Wakes the idle-lock task when the deadline moves.
    activity: Notify,
}

impl Default for SessionManager {
    fn default() -> Self {
        SessionManager::new(SessionPolicy::default())
    }
}

impl SessionManager {
    pub fn new(policy: SessionPolicy) -> Self {
        SessionManager {
            state: Mutex::new(State {
                current: None,
                sequence: 0,
                last_activity: Instant::now(),
            }),
            events: broadcast::channel(EVENT_BUFFER).0,
            policy,
            activity: Notify::new(),
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State half-updated (plain assignments),
        // so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    pub fn current(&self) -> Option<Session> {
        self.lock_state().current.clone()
    }

    /// A successful credential: resumes the locked session when it is the same user's (same
    /// session id, UNLOCKED), otherwise makes `session` the current one (LOGIN; cashier
    /// switching replaces any previous session, locked or not).
    pub fn login(&self, session: Session) -> SessionEvent {
        let mut state = self.lock_state();
        state.last_activity = Instant::now();
        self.activity.notify_one();
        if let Some(current) = state.current.as_mut()
            && current.locked
            && current.user_id == session.user_id
        {
            let previous = current.clone();
            current.locked = false;
            // The credential that resumed it now holds the session (its key's removal locks it).
            current.method = session.method;
            current.source = session.source;
            // What the replica says now (a sync may have changed it while the session was locked).
            current.first_name = session.first_name;
            current.last_name = session.last_name;
            current.role_ids = session.role_ids;
            current.permissions = session.permissions;
            current.replica = session.replica;
            current.last_sync_at = session.last_sync_at;
            let resumed = current.clone();
            return self.publish(
                &mut state,
                EventKind::Unlocked,
                Some(resumed),
                Some(previous),
                "resumed by its user",
            );
        }
        let previous = state.current.replace(session.clone());
        let reason = match &previous {
            Some(p) if p.user_id != session.user_id => "user switched",
            Some(_) => "same user logged in again",
            None => "login",
        };
        self.publish(
            &mut state,
            EventKind::Login,
            Some(session),
            previous,
            reason,
        )
    }

    /// Ends the current session; None if there was none.
    pub fn logout(&self, reason: &str) -> Option<SessionEvent> {
        let mut state = self.lock_state();
        let previous = state.current.take()?;
        Some(self.publish(&mut state, EventKind::Logout, None, Some(previous), reason))
    }

    /// Activity at the till: restarts the idle timer of an unlocked session. Returns the current
    /// session.
    pub fn touch(&self) -> Option<Session> {
        let mut state = self.lock_state();
        if state.current.as_ref().is_some_and(|s| !s.locked) {
            state.last_activity = Instant::now();
            self.activity.notify_one();
        }
        state.current.clone()
    }

    /// Locks the current session if it is unlocked; None otherwise.
    pub fn lock(&self, reason: &str) -> Option<SessionEvent> {
        let mut state = self.lock_state();
        self.lock_locked(&mut state, reason)
    }

    fn lock_locked(&self, state: &mut State, reason: &str) -> Option<SessionEvent> {
        let current = state.current.as_mut().filter(|s| !s.locked)?;
        let previous = current.clone();
        current.locked = true;
        let locked = current.clone();
        Some(self.publish(
            state,
            EventKind::Locked,
            Some(locked),
            Some(previous),
            reason,
        ))
    }

    /// When an unlocked session locks for idleness, if idle locking is on.
    pub fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.policy.idle_lock?;
        let state = self.lock_state();
        state
            .current
            .as_ref()
            .filter(|s| !s.locked)
            .map(|_| state.last_activity + idle)
    }

    /// Locks the session if it has been idle for `session.idle_lock` at `now`.
    pub fn lock_if_idle(&self, now: Instant) -> Option<SessionEvent> {
        let idle = self.policy.idle_lock?;
        let mut state = self.lock_state();
        if now < state.last_activity + idle {
            return None;
        }
        let reason = format!("idle for {}", humantime::format_duration(idle));
        self.lock_locked(&mut state, &reason)
    }

    /// Locks the session when it is idle; runs until the task is dropped (a no-op without
    /// `session.idle_lock`).
    pub async fn run_idle_lock(self: Arc<Self>) {
        if self.policy.idle_lock.is_none() {
            return;
        }
        loop {
            // Registered before reading the deadline, so no activity falls in between.
            let activity = self.activity.notified();
            match self.idle_deadline() {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            if let Some(event) = self.lock_if_idle(Instant::now())
                                && let Some(session) = &event.session
                            {
                                tracing::info!(user_id = %session.user_id, session_id = %session.session_id, reason = %event.reason, "session locked");
                            }
                        }
                        _ = activity => {}
                    }
                }
                None => activity.await,
            }
        }
    }

    /// A key reader reports that the key was taken away from `source`: locks or ends (per
    /// `session.on_key_removal`) the session that a key from that same source opened or resumed.
    /// None when the current session is not such a session (or is locked already and the policy
    /// is to lock).
    pub fn key_removed(&self, source: &str) -> Option<SessionEvent> {
        let mut state = self.lock_state();
        let held = state
            .current
            .as_ref()
            .is_some_and(|s| s.method == CredentialKind::Key && s.source == source);
        if !held {
            return None;
        }
        match self.policy.on_key_removal {
            KeyRemoval::Lock => self.lock_locked(&mut state, "key removed"),
            KeyRemoval::Logout => {
                let previous = state.current.take();
                Some(self.publish(&mut state, EventKind::Logout, None, previous, "key removed"))
            }
        }
    }

    /// Applies what a sync changed about the user of session `session_id` (ignored if that is no
    /// longer the current session).
    pub fn apply_profile_change(
        &self,
        session_id: &str,
        change: ProfileChange,
    ) -> Option<SessionEvent> {
        let mut state = self.lock_state();
        if state.current.as_ref().map(|s| s.session_id.as_str()) != Some(session_id) {
            return None;
        }
        match change {
            ProfileChange::End(reason) => {
                let previous = state.current.take();
                Some(self.publish(&mut state, EventKind::Logout, None, previous, reason))
            }
            ProfileChange::Permissions {
                first_name,
                last_name,
                role_ids,
                permissions,
            } => {
                let current = state.current.as_mut()?;
                let previous = current.clone();
                current.first_name = first_name;
                current.last_name = last_name;
                current.role_ids = role_ids;
                current.permissions = permissions;
                let updated = current.clone();
                Some(self.publish(
                    &mut state,
                    EventKind::PermissionsChanged,
                    Some(updated),
                    Some(previous),
                    "roles or permissions changed by sync",
                ))
            }
        }
    }

    /// The current state as a first message, plus a receiver for every later change. Both are
    /// taken under the lock, so no change falls between them.
    pub fn watch(&self) -> (SessionEvent, broadcast::Receiver<SessionEvent>) {
        let state = self.lock_state();
        let receiver = self.events.subscribe();
        let first = SessionEvent {
            sequence: state.sequence,
            kind: EventKind::Current,
            session: state.current.clone(),
            previous: None,
            reason: String::new(),
            at: SystemTime::now(),
        };
        (first, receiver)
    }

    fn publish(
        &self,
        state: &mut State,
        kind: EventKind,
        session: Option<Session>,
        previous: Option<Session>,
        reason: &str,
    ) -> SessionEvent {
        state.sequence += 1;
        let event = SessionEvent {
            sequence: state.sequence,
            kind,
            session,
            previous,
            reason: reason.to_owned(),
            at: SystemTime::now(),
        };
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event.clone());
        event
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn session(user: &str) -> Session {
        Session {
            session_id: format!("s-{user}"),
            user_id: user.into(),
            first_name: String::new(),
            last_name: String::new(),
            role_ids: vec![],
            permissions: vec![],
            method: CredentialKind::Pin,
            source: "test".into(),
            started_at: SystemTime::now(),
            replica: Cursor::EMPTY,
            last_sync_at: None,
            locked: false,
        }
    }

    fn key_session(user: &str, source: &str) -> Session {
        Session {
            method: CredentialKind::Key,
            source: source.into(),
            ..session(user)
        }
    }

    fn profile(active: bool, here: bool, permissions: &[&str]) -> UserProfile {
        UserProfile {
            user_id: "a".into(),
            first_name: String::new(),
            last_name: String::new(),
            active,
            assigned_here: here,
            role_ids: vec![],
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    fn idle(secs: u64) -> SessionManager {
        SessionManager::new(SessionPolicy {
            idle_lock: Some(Duration::from_secs(secs)),
            on_key_removal: KeyRemoval::Lock,
        })
    }

    #[tokio::test]
    async fn watchers_see_changes_in_order_after_current_state() {
        let manager = SessionManager::default();
        manager.login(session("a"));
        let (first, mut rx) = manager.watch();
        assert_eq!(first.kind, EventKind::Current);
        assert_eq!(first.session.unwrap().user_id, "a");
        let switched = manager.login(session("b"));
        assert_eq!(switched.reason, "user switched");
        manager.logout("logout");
        assert!(manager.logout("again").is_none());
        let e1 = rx.recv().await.unwrap();
        let e2 = rx.recv().await.unwrap();
        assert_eq!(
            (e1.kind, e1.sequence),
            (EventKind::Login, first.sequence + 1)
        );
        assert_eq!(e1.previous.unwrap().user_id, "a");
        assert_eq!(
            (e2.kind, e2.sequence),
            (EventKind::Logout, first.sequence + 2)
        );
        assert!(manager.current().is_none());
    }

    #[tokio::test]
    async fn idle_session_locks_once_and_activity_postpones_it() {
        let manager = idle(60);
        assert!(manager.idle_deadline().is_none(), "nobody logged in");
        let start = Instant::now();
        manager.login(session("a"));
        assert!(
            manager
                .lock_if_idle(start + Duration::from_secs(59))
                .is_none()
        );
        assert!(manager.lock_if_idle(Instant::now()).is_none());
        let deadline = manager.idle_deadline().unwrap();
        assert!(deadline >= start + Duration::from_secs(60));
        let locked = manager
            .lock_if_idle(start + Duration::from_secs(61))
            .unwrap();
        assert_eq!(locked.kind, EventKind::Locked);
        assert_eq!(locked.reason, "idle for 1m");
        assert!(locked.session.as_ref().unwrap().locked);
        assert!(!locked.previous.as_ref().unwrap().locked);
        assert!(
            manager
                .lock_if_idle(start + Duration::from_secs(999))
                .is_none(),
            "locked once"
        );
        assert!(
            manager.idle_deadline().is_none(),
            "no deadline while locked"
        );
        // Touching a locked session does not unlock it.
        assert!(manager.touch().unwrap().locked);
        // Idle locking off: never.
        let off = SessionManager::default();
        off.login(session("a"));
        assert!(
            off.lock_if_idle(start + Duration::from_secs(1_000_000))
                .is_none()
        );
    }

    #[tokio::test]
    async fn same_user_resumes_the_locked_session_another_user_switches() {
        let manager = idle(60);
        manager.login(session("a"));
        manager.lock("test");
        let mut again = session("a");
        again.session_id = "new-id".into();
        again.method = CredentialKind::Key;
        again.source = "device front".into();
        let resumed = manager.login(again);
        assert_eq!(resumed.kind, EventKind::Unlocked);
        let s = resumed.session.unwrap();
        assert_eq!((s.session_id.as_str(), s.locked), ("s-a", false));
        assert_eq!(
            (s.method, s.source.as_str()),
            (CredentialKind::Key, "device front")
        );

        manager.lock("test");
        let switched = manager.login(session("b"));
        assert_eq!(switched.kind, EventKind::Login);
        assert_eq!(switched.reason, "user switched");
        assert!(switched.previous.unwrap().locked);
        assert_eq!(manager.current().unwrap().session_id, "s-b");
    }

    #[test]
    fn key_removal_acts_only_on_the_session_that_key_opened() {
        let manager = idle(60);
        manager.login(session("a"));
        assert!(manager.key_removed("test").is_none(), "a PIN session");
        manager.login(key_session("k", "device front (/dev/x)"));
        assert!(manager.key_removed("device back (/dev/y)").is_none());
        let locked = manager.key_removed("device front (/dev/x)").unwrap();
        assert_eq!(
            (locked.kind, locked.reason.as_str()),
            (EventKind::Locked, "key removed")
        );
        assert!(
            manager.key_removed("device front (/dev/x)").is_none(),
            "already locked"
        );

        let logout = SessionManager::default();
        logout.login(key_session("k", "device front (/dev/x)"));
        let ended = logout.key_removed("device front (/dev/x)").unwrap();
        assert_eq!(ended.kind, EventKind::Logout);
        assert!(logout.current().is_none());
    }

    #[test]
    fn profile_changes_end_or_update_the_session() {
        let mut s = session("a");
        s.permissions = vec!["sale".into()];
        assert_eq!(
            profile_change(&s, None),
            Some(ProfileChange::End("user deleted"))
        );
        assert_eq!(
            profile_change(&s, Some(&profile(false, true, &["sale"]))),
            Some(ProfileChange::End("user deactivated"))
        );
        assert_eq!(
            profile_change(&s, Some(&profile(true, false, &["sale"]))),
            Some(ProfileChange::End("access to this terminal removed"))
        );
        assert_eq!(
            profile_change(&s, Some(&profile(true, true, &["sale"]))),
            None
        );
        let Some(ProfileChange::Permissions { permissions, .. }) =
            profile_change(&s, Some(&profile(true, true, &["refund", "sale"])))
        else {
            panic!("expected a permission change");
        };
        assert_eq!(permissions, vec!["refund", "sale"]);

        let manager = SessionManager::default();
        manager.login(s.clone());
        assert!(
            manager
                .apply_profile_change("other", ProfileChange::End("user deleted"))
                .is_none()
        );
        let event = manager
            .apply_profile_change(
                "s-a",
                ProfileChange::Permissions {
                    first_name: "A".into(),
                    last_name: String::new(),
                    role_ids: vec!["r".into()],
                    permissions: vec!["refund".into()],
                },
            )
            .unwrap();
        assert_eq!(event.kind, EventKind::PermissionsChanged);
        assert_eq!(event.session.unwrap().permissions, vec!["refund"]);
        assert_eq!(event.previous.unwrap().permissions, vec!["sale"]);
        let ended = manager
            .apply_profile_change("s-a", ProfileChange::End("user deactivated"))
            .unwrap();
        assert_eq!(
            (ended.kind, ended.reason.as_str()),
            (EventKind::Logout, "user deactivated")
        );
    }
}
