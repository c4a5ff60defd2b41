//! The terminal's one current session and the ordered stream of its changes.

use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::model::{CredentialKind, Cursor};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Current,
    Login,
    Logout,
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

#[derive(Debug)]
struct State {
    current: Option<Session>,
    sequence: u64,
}

#[derive(Debug)]
pub struct SessionManager {
    state: Mutex<State>,
    events: broadcast::Sender<SessionEvent>,
}

impl Default for SessionManager {
    fn default() -> Self {
        SessionManager {
            state: Mutex::new(State {
                current: None,
                sequence: 0,
            }),
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl SessionManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State half-updated (plain assignments),
        // so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn current(&self) -> Option<Session> {
        self.lock().current.clone()
    }

    /// Makes `session` the current one (cashier switching replaces any previous session).
    pub fn login(&self, session: Session) -> SessionEvent {
        let mut state = self.lock();
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
        let mut state = self.lock();
        let previous = state.current.take()?;
        Some(self.publish(&mut state, EventKind::Logout, None, Some(previous), reason))
    }

    /// A reader reported its key pulled: ends the session if a key from that same reader opened
    /// it. Another user's session, or one opened by PIN, is left alone.
    pub fn key_removed(&self, source: &str) -> Option<SessionEvent> {
        let mut state = self.lock();
        let opened_here = state
            .current
            .as_ref()
            .is_some_and(|s| s.method == CredentialKind::Key && s.source == source);
        if !opened_here {
            return None;
        }
        let previous = state.current.take();
        Some(self.publish(&mut state, EventKind::Logout, None, previous, "key removed"))
    }

    /// The current state as a first message, plus a receiver for every later change. Both are
    /// taken under the lock, so no change falls between them.
    pub fn watch(&self) -> (SessionEvent, broadcast::Receiver<SessionEvent>) {
        let state = self.lock();
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
        }
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
}
