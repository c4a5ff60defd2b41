//! The POS app's Login service.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tillgate_proto::v1 as pb;
use tillgate_proto::v1::login_server::Login;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use tonic_types::StatusExt;
use zeroize::Zeroizing;

use super::access::Caller;
use super::{cursor_to_pb, event_to_pb, join_error, method_to_pb, session_to_pb, timestamp};
use crate::enroll::{Approval, EnrolError, Enrolled, Enrolment, KeyEnrolment, PinChange};
use crate::hardware::capture::ReaderChoice;
use crate::login::Authenticator;
use crate::model::{CredentialKind, Terminal};
use crate::store::Replica;

/// Facts about the running daemon that `GetStatus` reports.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub login_socket: String,
    pub sync_listen: String,
    pub sync_tls: bool,
}

#[derive(Debug)]
pub struct LoginService {
    pub auth: Arc<Authenticator>,
    pub enrolment: Arc<Enrolment>,
    pub replica: Arc<Replica>,
    pub terminal: Terminal,
    pub listeners: ListenerInfo,
    /// Ends watch streams at shutdown, so they do not hold the graceful stop open.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// "uid=… gid=… pid=…" of the Unix socket peer, for logs.
pub fn peer_label<T>(request: &Request<T>) -> String {
    peer_label_from(
        request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred),
    )
}

/// "uid=… gid=… pid=…" of a peer's credentials.
pub fn peer_label_from(cred: Option<tokio::net::unix::UCred>) -> String {
    cred.map(|cred| {
        format!(
            "uid={} gid={} pid={}",
            cred.uid(),
            cred.gid(),
            cred.pid()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into())
        )
    })
    .unwrap_or_else(|| "unknown peer".into())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Login for LoginService {
    async fn login_with_pin(
        &self,
        request: Request<pb::LoginWithPinRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let source = format!("socket {}", peer_label(&request));
        let pin = Zeroizing::new(request.into_inner().pin);
        let session = self
            .auth
            .login_detached(CredentialKind::Pin, pin, source)
            .await?;
        Ok(Response::new(session_to_pb(&session)))
    }

    async fn login_with_key(
        &self,
        request: Request<pb::LoginWithKeyRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let source = format!("socket {}", peer_label(&request));
        let key_id = Zeroizing::new(request.into_inner().key_id);
        let session = self
            .auth
            .login_detached(CredentialKind::Key, key_id, source)
            .await?;
        Ok(Response::new(session_to_pb(&session)))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let peer = peer_label(&request);
        let ended = self.auth.sessions().logout("logout");
        if let Some(event) = &ended {
            let user_id = event
                .previous
                .as_ref()
                .map(|s| s.user_id.as_str())
                .unwrap_or("");
            tracing::info!(%user_id, %peer, "logout");
        }
        Ok(Response::new(pb::LogoutResponse {
            ended: ended.and_then(|e| e.previous).as_ref().map(session_to_pb),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let current = self.auth.sessions().current();
        require_session(&request.into_inner().session_id, current.as_ref())?;
        Ok(Response::new(pb::GetSessionResponse {
            session: current.as_ref().map(session_to_pb),
        }))
    }

    type WatchSessionStream = EventStream;

    async fn watch_session(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        tracing::debug!(peer = %peer_label(&request), "session watcher attached");
        let (first, receiver) = self.auth.sessions().watch();
        let later = BroadcastStream::new(receiver).map(|item| match item {
            Ok(event) => Ok(event_to_pb(&event)),
            Err(BroadcastStreamRecvError::Lagged(missed)) => Err(Status::data_loss(format!(
                "watcher fell {missed} events behind; watch again for the current state"
            ))),
        });
        // A lagging watcher gets one DATA_LOSS and the stream ends there.
        let mut failed = false;
        let later = later.take_while(move |item| {
            let keep = !failed;
            failed = item.is_err();
            std::future::ready(keep)
        });
        let mut shutdown = self.shutdown.clone();
        let stopping = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        let stream = futures::stream::once(std::future::ready(Ok(event_to_pb(&first))))
            .chain(later)
            .take_until(stopping);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn check_permission(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> Result<Response<pb::CheckPermissionResponse>, Status> {
        let pb::CheckPermissionRequest {
            permission,
            session_id,
        } = request.into_inner();
        if permission.is_empty() {
            return Err(Status::invalid_argument("permission is empty"));
        }
        // Checked before the touch: a check for a session that is gone is not activity.
        require_session(&session_id, self.auth.sessions().current().as_ref())?;
        // A permission check is activity at the till: it restarts the idle timer.
        let current = self.auth.sessions().touch();
        // The session may have changed between the two reads: answer for the one asked about.
        require_session(&session_id, current.as_ref())?;
        let locked = current.as_ref().is_some_and(|s| s.locked);
        Ok(Response::new(pb::CheckPermissionResponse {
            granted: !locked
                && current
                    .as_ref()
                    .is_some_and(|s| s.permissions.binary_search(&permission).is_ok()),
            user_id: current.map(|s| s.user_id).unwrap_or_default(),
            locked,
        }))
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let source = format!("socket {}", peer_label(&request));
        let request = request.into_inner();
        let (kind, secret) = match request.credential {
            Some(pb::authorize_request::Credential::Pin(pin)) => {
                (CredentialKind::Pin, Zeroizing::new(pin))
            }
            Some(pb::authorize_request::Credential::KeyId(key_id)) => {
                (CredentialKind::Key, Zeroizing::new(key_id))
            }
            None => {
                return Err(Status::invalid_argument(
                    "credential is missing: set pin or key_id",
                ));
            }
        };
        let permission = request.permission.clone();
        let answer = self
            .auth
            .authorize_detached(kind, secret, permission, source)
            .await?;
        Ok(Response::new(pb::AuthorizeResponse {
            granted: answer.granted,
            authorizer: Some(pb::UserRef {
                id: answer.authorizer.user_id,
                first_name: answer.authorizer.first_name,
                last_name: answer.authorizer.last_name,
            }),
            permission: answer.permission,
            session_user_id: answer.session_user_id.unwrap_or_default(),
        }))
    }

    async fn touch(
        &self,
        _request: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::TouchResponse>, Status> {
        Ok(Response::new(pb::TouchResponse {
            session: self.auth.sessions().touch().as_ref().map(session_to_pb),
        }))
    }

    async fn enroll_key(
        &self,
        request: Request<pb::EnrollKeyRequest>,
    ) -> Result<Response<pb::EnrolledCredential>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let approval = match request.authorizer.and_then(|a| a.credential) {
            Some(credential) => manager(credential),
            None => admin_approval(&caller, "EnrollKey")?,
        };
        let enrolment = KeyEnrolment {
            user_id: request.user_id,
            approval,
            reader: match request.reader.trim() {
                "" => ReaderChoice::Any,
                name => ReaderChoice::Named(name.to_owned()),
            },
            timeout: (request.timeout_seconds > 0)
                .then(|| std::time::Duration::from_secs(request.timeout_seconds.into())),
            source: format!("socket {}", caller.label),
        };
        // The use case runs in a task of its own so that a cancelled call still ends the capture
        // cleanly (and audits it): dropping `_cancel` tells it the caller went away.
        let (_cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let use_case = self.enrolment.clone();
        let enrolled = tokio::spawn(async move { use_case.enroll_key(enrolment, cancelled).await })
            .await
            .map_err(join_error)??;
        Ok(Response::new(enrolled_to_pb(enrolled)))
    }

    async fn change_pin(
        &self,
        request: Request<pb::ChangePinRequest>,
    ) -> Result<Response<pb::EnrolledCredential>, Status> {
        use pb::change_pin_request::Authorizer;
        let caller = caller(&request);
        let request = request.into_inner();
        let approval = match request.authorizer {
            Some(Authorizer::CurrentPin(pin)) => Approval::OwnPin(Zeroizing::new(pin)),
            Some(Authorizer::Session(true)) => Approval::Session,
            Some(Authorizer::Manager(pb::Approver {
                credential: Some(credential),
            })) => manager(credential),
            Some(Authorizer::Session(false)) | Some(Authorizer::Manager(_)) | None => {
                admin_approval(&caller, "ChangePin")?
            }
        };
        let change = PinChange {
            user_id: request.user_id,
            new_pin: Zeroizing::new(request.new_pin),
            new_pin_again: Zeroizing::new(request.new_pin_again),
            approval,
            source: format!("socket {}", caller.label),
        };
        let use_case = self.enrolment.clone();
        let enrolled = tokio::spawn(async move { use_case.change_pin(change).await })
            .await
            .map_err(join_error)??;
        Ok(Response::new(enrolled_to_pb(enrolled)))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::DaemonStatus>, Status> {
        let replica = self.replica.clone();
        let terminal = self.terminal.clone();
        let (state, counts) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((replica.state()?, replica.counts(&terminal)?))
        })
        .await
        .map_err(join_error)??;
        Ok(Response::new(pb::DaemonStatus {
            cursor: Some(cursor_to_pb(state.cursor)),
            replica_status: replica_status(state.cursor).into(),
            users: counts.users,
            roles: counts.roles,
            users_at_terminal: counts.users_at_terminal,
            last_sync_at: state.last_sync_at.map(timestamp),
            sales_point_id: self.terminal.sales_point_id.clone(),
            sub_terminal_id: self.terminal.sub_terminal_id.clone().unwrap_or_default(),
            login_socket: self.listeners.login_socket.clone(),
            sync_listen: self.listeners.sync_listen.clone(),
            sync_tls: self.listeners.sync_tls,
            version: env!("CARGO_PKG_VERSION").into(),
            disk_full: self.auth.disk_full(),
        }))
    }
}

/// FAILED_PRECONDITION "session changed" when the caller names a session that is not the
/// current one. An empty id asks for whoever is current.
fn require_session(
    session_id: &str,
    current: Option<&crate::session::Session>,
) -> Result<(), Status> {
    if session_id.is_empty() || current.is_some_and(|s| s.session_id == session_id) {
        return Ok(());
    }
    let now = match current {
        Some(_) => "another session is current",
        None => "no session is current",
    };
    Err(Status::with_error_details(
        tonic::Code::FailedPrecondition,
        format!("session changed: {now}"),
        tonic_types::ErrorDetails::with_error_info(
            "SESSION_CHANGED",
            super::ERROR_DOMAIN,
            std::collections::HashMap::new(),
        ),
    ))
}

pub fn replica_status(cursor: crate::model::Cursor) -> &'static str {
    if cursor.needs_snapshot() {
        "needs snapshot"
    } else {
        "ok"
    }
}

/// Set by the access layer on every call it lets through.
fn caller<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| Caller {
            label: peer_label(request),
            admin: false,
        })
}

fn manager(credential: pb::approver::Credential) -> Approval {
    match credential {
        pb::approver::Credential::Pin(pin) => Approval::Manager {
            kind: CredentialKind::Pin,
            secret: Zeroizing::new(pin),
        },
        pb::approver::Credential::KeyId(key_id) => Approval::Manager {
            kind: CredentialKind::Key,
            secret: Zeroizing::new(key_id),
        },
    }
}

/// Without a credential only an admin uid may enrol.
fn admin_approval(caller: &Caller, method: &str) -> Result<Approval, Status> {
    if caller.admin {
        Ok(Approval::AdminUid(format!("admin {}", caller.label)))
    } else {
        tracing::warn!(peer = %caller.label, %method, "enrolment refused: no approving credential and not an admin uid");
        Err(Status::permission_denied(format!(
            "{method} needs a manager's credential (or the user's own, for ChangePin), \
             or a caller among the admin uids"
        )))
    }
}

fn enrolled_to_pb(enrolled: Enrolled) -> pb::EnrolledCredential {
    pb::EnrolledCredential {
        user_id: enrolled.user_id,
        kind: method_to_pb(enrolled.kind) as i32,
        phc: enrolled.phc,
        holders: enrolled.holders,
        authorized_by: enrolled.authorized_by,
        reader: enrolled.reader.unwrap_or_default(),
    }
}

impl From<EnrolError> for Status {
    fn from(e: EnrolError) -> Status {
        match e {
            EnrolError::UnknownUser(_) => Status::not_found(e.to_string()),
            EnrolError::NotAuthorized(_) => Status::permission_denied(e.to_string()),
            EnrolError::PinsDiffer | EnrolError::PinTooShort(_) => {
                Status::invalid_argument(e.to_string())
            }
            EnrolError::PinInUse => Status::already_exists(e.to_string()),
            EnrolError::NoReader(_) | EnrolError::Busy(_) => {
                Status::failed_precondition(e.to_string())
            }
            EnrolError::TimedOut(_) => Status::deadline_exceeded(e.to_string()),
            EnrolError::Ended(_) => Status::aborted(e.to_string()),
            EnrolError::Cancelled => Status::cancelled(e.to_string()),
            EnrolError::Login(login) => login.into(),
            EnrolError::Store(store) => store.into(),
        }
    }
}
