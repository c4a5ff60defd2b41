//! Who may call what, decided in one place. Every method of every service the daemon serves is
//! in [`ACCESS`] with its requirement; a tower layer on the login socket looks each call up
//! before any handler runs, refuses a method that is missing from the table, and refuses admin
//! methods to other uids. A test compares the table with the services' descriptors, so a new
//! method without an entry fails the build's tests rather than going unchecked.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::UdsConnectInfo;

use super::login::peer_label_from;

/// What a caller needs for a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Any peer the login socket admitted (its mode and the uid/gid allow-list).
    AnyPeer,
    /// One of `login_socket.admin_uids` (or the daemon's own uid).
    AdminUid,
    /// A credential typed at the till, checked by the use case: a manager's holding
    /// `enrolment.permission`, the user's own (ChangePin), or else an admin uid.
    Approval,
    /// The Sync listener's bearer token (checked by its interceptor on the whole service).
    SyncToken,
}

/// Every method, by gRPC path.
pub const ACCESS: &[(&str, Requirement)] = &[
    ("/tillgate.v1.Login/LoginWithPin", Requirement::AnyPeer),
    ("/tillgate.v1.Login/LoginWithKey", Requirement::AnyPeer),
    ("/tillgate.v1.Login/Logout", Requirement::AnyPeer),
    ("/tillgate.v1.Login/GetSession", Requirement::AnyPeer),
    ("/tillgate.v1.Login/WatchSession", Requirement::AnyPeer),
    ("/tillgate.v1.Login/CheckPermission", Requirement::AnyPeer),
    ("/tillgate.v1.Login/Authorize", Requirement::AnyPeer),
    ("/tillgate.v1.Login/Touch", Requirement::AnyPeer),
    ("/tillgate.v1.Login/GetStatus", Requirement::AnyPeer),
    ("/tillgate.v1.Login/EnrollKey", Requirement::Approval),
    ("/tillgate.v1.Login/ChangePin", Requirement::Approval),
    ("/tillgate.v1.Admin/CreateToken", Requirement::AdminUid),
    ("/tillgate.v1.Admin/ListTokens", Requirement::AdminUid),
    ("/tillgate.v1.Admin/RevokeToken", Requirement::AdminUid),
    ("/tillgate.v1.Admin/Unlock", Requirement::AdminUid),
    ("/tillgate.v1.Admin/ListLockouts", Requirement::AdminUid),
    ("/tillgate.v1.Admin/ListAuditEvents", Requirement::AdminUid),
    ("/tillgate.v1.Admin/Explain", Requirement::AdminUid),
    ("/tillgate.v1.Admin/ListCollisions", Requirement::AdminUid),
    ("/tillgate.v1.Devices/ListDevices", Requirement::AnyPeer),
    ("/tillgate.v1.Devices/WatchInput", Requirement::AnyPeer),
    ("/tillgate.v1.Sync/GetSyncState", Requirement::SyncToken),
    ("/tillgate.v1.Sync/ApplySnapshot", Requirement::SyncToken),
    ("/tillgate.v1.Sync/ApplyChanges", Requirement::SyncToken),
    ("/tillgate.v1.Sync/PullAuditEvents", Requirement::SyncToken),
    ("/tillgate.v1.Sync/AckAuditEvents", Requirement::SyncToken),
    ("/tillgate.v1.Sync/Explain", Requirement::SyncToken),
    ("/tillgate.v1.Sync/ListCollisions", Requirement::SyncToken),
    ("/grpc.health.v1.Health/Check", Requirement::AnyPeer),
    ("/grpc.health.v1.Health/Watch", Requirement::AnyPeer),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Requirement::AnyPeer,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Requirement::AnyPeer,
    ),
];

pub fn requirement(path: &str) -> Option<Requirement> {
    ACCESS.iter().find(|(p, _)| *p == path).map(|(_, r)| *r)
}

/// Who is calling, as the access layer established it; handlers of [`Requirement::Approval`]
/// methods read it (a request extension) to accept an admin uid in place of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// "uid=… gid=… pid=…".
    pub label: String,
    pub admin: bool,
}

/// The login socket's access check: a pure decision from the path and the peer's uid.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// Configured admin uids plus the daemon's own.
    pub admin_uids: Vec<u32>,
}

impl AccessPolicy {
    pub fn check(&self, path: &str, uid: Option<u32>) -> Result<bool, Status> {
        let admin = uid.is_some_and(|uid| self.admin_uids.contains(&uid));
        match requirement(path) {
            None => Err(Status::unimplemented(format!(
                "{path} is not in the daemon's access table"
            ))),
            Some(Requirement::SyncToken) => Err(Status::unimplemented(format!(
                "{path} is served on the sync listener, not on the login socket"
            ))),
            Some(Requirement::AdminUid) if !admin => Err(Status::permission_denied(
                "admin calls are allowed only for the admin uids in the config",
            )),
            Some(_) => Ok(admin),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AccessLayer(pub Arc<AccessPolicy>);

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            policy: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
    policy: Arc<AccessPolicy>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Access<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        let label = peer_label_from(cred);
        let path = request.uri().path().to_owned();
        match self.policy.check(&path, cred.map(|c| c.uid())) {
            Ok(admin) => {
                if requirement(&path) == Some(Requirement::AdminUid) {
                    tracing::info!(peer = %label, method = %path, "admin call");
                }
                request.extensions_mut().insert(Caller { label, admin });
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                if status.code() == tonic::Code::PermissionDenied {
                    tracing::warn!(peer = %label, method = %path, "admin call refused: peer is not an admin uid");
                } else {
                    tracing::warn!(peer = %label, method = %path, error = %status.message(), "call refused by the access table");
                }
                let response = status.into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    /// Every method of every service in a descriptor set, as gRPC paths.
    fn methods(descriptor_set: &[u8]) -> BTreeSet<String> {
        let set = prost_types::FileDescriptorSet::decode(descriptor_set).unwrap();
        let mut paths = BTreeSet::new();
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        paths
    }

    #[test]
    fn every_method_of_every_service_is_in_the_table_and_nothing_else() {
        let mut served = methods(tillgate_proto::v1::FILE_DESCRIPTOR_SET);
        served.extend(methods(tonic_health::pb::FILE_DESCRIPTOR_SET));
        served.extend(methods(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET));
        served.extend(methods(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET));
        let table: BTreeSet<String> = ACCESS.iter().map(|(p, _)| (*p).to_owned()).collect();
        assert_eq!(table.len(), ACCESS.len(), "a method is listed twice");
        let missing: Vec<_> = served.difference(&table).collect();
        assert!(
            missing.is_empty(),
            "methods without an access requirement: {missing:?}"
        );
        let stale: Vec<_> = table.difference(&served).collect();
        assert!(stale.is_empty(), "table entries for no method: {stale:?}");
    }

    #[test]
    fn unknown_methods_and_admin_calls_from_other_uids_are_refused() {
        let policy = AccessPolicy {
            admin_uids: vec![0],
        };
        assert!(
            !policy
                .check("/tillgate.v1.Login/GetSession", Some(1000))
                .unwrap()
        );
        assert!(
            policy
                .check("/tillgate.v1.Admin/ListTokens", Some(0))
                .unwrap()
        );
        let denied = policy
            .check("/tillgate.v1.Admin/ListTokens", Some(1000))
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(policy.check("/tillgate.v1.Admin/Unlock", None).is_err());
        let unknown = policy
            .check("/tillgate.v1.Admin/DropEverything", Some(0))
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::Unimplemented);
        let sync = policy
            .check("/tillgate.v1.Sync/ApplySnapshot", Some(0))
            .unwrap_err();
        assert_eq!(sync.code(), tonic::Code::Unimplemented);
        assert!(
            policy
                .check("/tillgate.v1.Login/EnrollKey", Some(0))
                .unwrap()
        );
    }
}
