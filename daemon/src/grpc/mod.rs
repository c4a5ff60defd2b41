//! gRPC adapters: the Login and Admin services on the Unix socket, the Sync service on TCP.

pub mod access;
pub mod admin;
pub mod auth;
pub mod call_rate;
pub mod devices;
pub mod limits;
pub mod login;
pub mod policy;
pub mod sync;

use std::collections::HashMap;
use std::time::SystemTime;

use tillgate_proto::v1 as pb;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::history::HistoryError;
use crate::login::{LoginError, round_up_to_seconds};
use crate::model::{CredentialKind, Cursor};
use crate::session::{EventKind, Session, SessionEvent};
use crate::store::{ApplyError, StoreError};

/// Error domain in ErrorInfo details.
pub const ERROR_DOMAIN: &str = "tillgate.v1";

pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

pub fn cursor_to_pb(cursor: Cursor) -> pb::Cursor {
    pb::Cursor {
        epoch: cursor.epoch,
        revision: cursor.revision,
    }
}

pub fn cursor_from_pb(cursor: Option<pb::Cursor>) -> Option<Cursor> {
    cursor.map(|c| Cursor {
        epoch: c.epoch,
        revision: c.revision,
    })
}

pub fn session_to_pb(session: &Session) -> pb::Session {
    pb::Session {
        session_id: session.session_id.clone(),
        user: Some(pb::UserRef {
            id: session.user_id.clone(),
            first_name: session.first_name.clone(),
            last_name: session.last_name.clone(),
        }),
        permissions: session.permissions.clone(),
        method: method_to_pb(session.method) as i32,
        started_at: Some(timestamp(session.started_at)),
        replica: Some(cursor_to_pb(session.replica)),
        last_sync_at: session.last_sync_at.map(timestamp),
        role_ids: session.role_ids.clone(),
        source: session.source.clone(),
        locked: session.locked,
    }
}

pub fn method_to_pb(kind: CredentialKind) -> pb::LoginMethod {
    match kind {
        CredentialKind::Pin => pb::LoginMethod::Pin,
        CredentialKind::Key => pb::LoginMethod::Key,
    }
}

pub fn event_to_pb(event: &SessionEvent) -> pb::SessionEvent {
    pb::SessionEvent {
        sequence: event.sequence,
        kind: match event.kind {
            EventKind::Current => pb::SessionEventKind::Current,
            EventKind::Login => pb::SessionEventKind::Login,
            EventKind::Logout => pb::SessionEventKind::Logout,
            EventKind::Locked => pb::SessionEventKind::Locked,
            EventKind::Unlocked => pb::SessionEventKind::Unlocked,
            EventKind::PermissionsChanged => pb::SessionEventKind::PermissionsChanged,
        } as i32,
        session: event.session.as_ref().map(session_to_pb),
        previous: event.previous.as_ref().map(session_to_pb),
        reason: event.reason.clone(),
        at: Some(timestamp(event.at)),
    }
}

/// Internal failures are logged in full and reported without detail.
pub fn internal(context: &str, error: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %error, "{context}");
    Status::internal(format!("{context}; see the daemon log"))
}

impl From<LoginError> for Status {
    fn from(e: LoginError) -> Status {
        match e {
            LoginError::NoReplica => Status::unavailable("no replica yet"),
            LoginError::NoMatch => Status::unauthenticated("no user matches this credential"),
            LoginError::Denied(reason) => Status::permission_denied(reason.to_string()),
            LoginError::BadInput(problem) => Status::invalid_argument(problem),
            LoginError::LockedOut { retry_after, .. } => Status::with_error_details(
                Code::ResourceExhausted,
                e.to_string(),
                ErrorDetails::with_retry_info(Some(round_up_to_seconds(retry_after))),
            ),
            LoginError::Busy(_) => Status::resource_exhausted(e.to_string()),
            LoginError::DiskFull => Status::unavailable(e.to_string()),
            LoginError::Stale { .. } => Status::with_error_details(
                Code::FailedPrecondition,
                e.to_string(),
                ErrorDetails::with_error_info("REPLICA_STALE", ERROR_DOMAIN, HashMap::new()),
            ),
            LoginError::NoAccountScheme => Status::failed_precondition(e.to_string()),
            other => internal("login failed", &other),
        }
    }
}

/// FAILED_PRECONDITION carrying the replica's cursor, so central knows what to send next.
pub fn cursor_status(reason: &str, message: String, current: Cursor) -> Status {
    let metadata = HashMap::from([
        ("epoch".to_owned(), current.epoch.to_string()),
        ("revision".to_owned(), current.revision.to_string()),
    ]);
    Status::with_error_details(
        Code::FailedPrecondition,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

impl From<ApplyError> for Status {
    fn from(e: ApplyError) -> Status {
        match e {
            ApplyError::Invalid(v) => Status::invalid_argument(v.to_string()),
            ApplyError::RoleInUse { .. } | ApplyError::DanglingReference { .. } => {
                Status::invalid_argument(e.to_string())
            }
            ApplyError::History(refusal) => {
                let current = refusal.current();
                let reason = match refusal {
                    _ if current.needs_snapshot() => "NEEDS_SNAPSHOT",
                    HistoryError::StaleEpoch { .. } => "STALE_EPOCH",
                    HistoryError::StaleSnapshot { .. } => "STALE_SNAPSHOT",
                    HistoryError::ConflictingBatch { .. } => "CONFLICTING_BATCH",
                    HistoryError::CursorMismatch { .. }
                    | HistoryError::UnverifiableReplay { .. } => "CURSOR_MISMATCH",
                };
                cursor_status(reason, refusal.to_string(), current)
            }
            ApplyError::Store(s) => internal("replica write failed", &s),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        internal("replica read failed", &e)
    }
}

pub fn join_error(e: tokio::task::JoinError) -> Status {
    internal("worker task failed", &e)
}
