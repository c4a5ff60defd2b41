//! Typed async client for tillgated: the Login/Admin API over the Unix socket and the Sync API
//! over TCP (optionally TLS), plus the account export format `tillctl push` reads.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cli;
pub mod export;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tillgate_proto::v1 as pb;
use tillgate_proto::v1::admin_client::AdminClient;
use tillgate_proto::v1::devices_client::DevicesClient;
use tillgate_proto::v1::login_client::LoginClient;
use tillgate_proto::v1::sync_client::SyncClient;
use tokio::net::UnixStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use tonic::{Request, Status, Streaming};
use tonic_types::StatusExt;

pub use tillgate_proto::v1 as proto;

pub const DEFAULT_SOCKET: &str = "/run/tillgate/login.sock";
pub const DEFAULT_SYNC_ADDR: &str = "http://127.0.0.1:7870";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Export(String),
    #[error("{0}")]
    Config(String),
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[from] Status),
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .flat_map(|c| {
            if c.is_uppercase() {
                vec!['_', c]
            } else {
                vec![c.to_ascii_uppercase()]
            }
        })
        .collect::<String>()
        .trim_start_matches('_')
        .to_owned()
}

/// How long to wait before retrying, from the RetryInfo detail of a RESOURCE_EXHAUSTED lockout.
pub fn retry_after_from_status(status: &Status) -> Option<Duration> {
    status.get_error_details().retry_info()?.retry_delay
}

/// The ErrorInfo reason of a status (e.g. `REPLICA_STALE`, `CURSOR_MISMATCH`), if any.
pub fn error_reason(status: &Status) -> Option<String> {
    Some(status.get_error_details().error_info()?.reason.clone())
}

/// Who approves a PIN change.
#[derive(Clone, Copy)]
pub enum PinApproval<'a> {
    /// No credential: the caller must be an admin uid.
    AdminUid,
    /// The user's own current PIN.
    CurrentPin(&'a str),
    /// The open session is the user's.
    Session,
    /// A manager's PIN or key.
    Manager(Credential<'a>),
}

impl std::fmt::Debug for PinApproval<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PinApproval::AdminUid => "AdminUid",
            PinApproval::CurrentPin(_) => "CurrentPin(****)",
            PinApproval::Session => "Session",
            PinApproval::Manager(_) => "Manager(****)",
        })
    }
}

fn approver_to_pb(credential: Credential<'_>) -> pb::Approver {
    use pb::approver::Credential as C;
    pb::Approver {
        credential: Some(match credential {
            Credential::Pin(pin) => C::Pin(pin.to_owned()),
            Credential::Key(key) => C::KeyId(key.to_owned()),
        }),
    }
}

/// A PIN or a key id, for a manager override.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    Pin(&'a str),
    Key(&'a str),
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Pin(_) => "Pin(****)",
            Credential::Key(_) => "Key(****)",
        })
    }
}

/// The replica cursor a FAILED_PRECONDITION from the Sync API carries, if any.
pub fn cursor_from_status(status: &Status) -> Option<pb::Cursor> {
    let info = status.get_error_details().error_info()?.clone();
    Some(pb::Cursor {
        epoch: info.metadata.get("epoch")?.parse().ok()?,
        revision: info.metadata.get("revision")?.parse().ok()?,
    })
}

/// Opens a channel to the daemon's Unix socket.
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel, ClientError> {
    let path: PathBuf = path.as_ref().to_owned();
    let target = path.display().to_string();
    // The URI is a placeholder: the connector ignores it and dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|source| ClientError::Connect { target, source })
}

/// The largest response the login socket sends and this client accepts. Requests stay under
/// `login_socket.max_message_bytes` (64 KiB by default): that limit is about what peers may
/// make the daemon read. Responses are bounded by the data instead: `audit -n 1000` is about
/// 0.2 MB, `collisions` over 100k users sharing 4-digit PINs a few MB.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The POS app's view of the daemon.
#[derive(Debug, Clone)]
pub struct TillClient {
    login: LoginClient<Channel>,
    admin: AdminClient<Channel>,
    devices: DevicesClient<Channel>,
}

impl TillClient {
    pub async fn connect(socket: impl AsRef<Path>) -> Result<TillClient, ClientError> {
        Ok(Self::from_channel(connect_unix(socket).await?))
    }

    pub fn from_channel(channel: Channel) -> TillClient {
        TillClient {
            login: LoginClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES),
            admin: AdminClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES),
            devices: DevicesClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES),
        }
    }

    pub async fn login_with_pin(&mut self, pin: &str) -> Result<pb::Session, ClientError> {
        let request = pb::LoginWithPinRequest {
            pin: pin.to_owned(),
        };
        Ok(self.login.login_with_pin(request).await?.into_inner())
    }

    pub async fn login_with_key(&mut self, key_id: &str) -> Result<pb::Session, ClientError> {
        let request = pb::LoginWithKeyRequest {
            key_id: key_id.to_owned(),
        };
        Ok(self.login.login_with_key(request).await?.into_inner())
    }

    pub async fn logout(&mut self) -> Result<Option<pb::Session>, ClientError> {
        Ok(self
            .login
            .logout(pb::LogoutRequest {})
            .await?
            .into_inner()
            .ended)
    }

    pub async fn session(&mut self) -> Result<Option<pb::Session>, ClientError> {
        Ok(self
            .login
            .get_session(pb::GetSessionRequest::default())
            .await?
            .into_inner()
            .session)
    }

    pub async fn watch(&mut self) -> Result<Streaming<pb::SessionEvent>, ClientError> {
        Ok(self
            .login
            .watch_session(pb::WatchSessionRequest {})
            .await?
            .into_inner())
    }

    pub async fn check_permission(
        &mut self,
        permission: &str,
    ) -> Result<pb::CheckPermissionResponse, ClientError> {
        self.check_permission_in(permission, "").await
    }

    /// [`Client::check_permission`] for the session `session_id` only: another session (or
    /// none) is FAILED_PRECONDITION "session changed". An empty id asks for whoever is current.
    pub async fn check_permission_in(
        &mut self,
        permission: &str,
        session_id: &str,
    ) -> Result<pb::CheckPermissionResponse, ClientError> {
        let request = pb::CheckPermissionRequest {
            permission: permission.to_owned(),
            session_id: session_id.to_owned(),
        };
        Ok(self.login.check_permission(request).await?.into_inner())
    }

    /// The current session, if it is `session_id` (else FAILED_PRECONDITION "session changed").
    pub async fn session_if(
        &mut self,
        session_id: &str,
    ) -> Result<Option<pb::Session>, ClientError> {
        Ok(self
            .login
            .get_session(pb::GetSessionRequest {
                session_id: session_id.to_owned(),
            })
            .await?
            .into_inner()
            .session)
    }

    /// Manager override: does the user this credential resolves to hold `permission`? The
    /// current session is not changed.
    pub async fn authorize(
        &mut self,
        credential: Credential<'_>,
        permission: &str,
    ) -> Result<pb::AuthorizeResponse, ClientError> {
        use pb::authorize_request::Credential as C;
        let request = pb::AuthorizeRequest {
            credential: Some(match credential {
                Credential::Pin(pin) => C::Pin(pin.to_owned()),
                Credential::Key(key) => C::KeyId(key.to_owned()),
            }),
            permission: permission.to_owned(),
        };
        Ok(self.login.authorize(request).await?.into_inner())
    }

    /// Captures the next key on `reader` (empty: any key reader) for `user_id`; `approver` is a
    /// manager's credential, or None when the caller is an admin uid. Waits up to
    /// `timeout_seconds` (0: the daemon's `enrolment.capture_timeout`) for the key.
    pub async fn enroll_key(
        &mut self,
        user_id: &str,
        approver: Option<Credential<'_>>,
        reader: &str,
        timeout_seconds: u32,
    ) -> Result<pb::EnrolledCredential, ClientError> {
        let request = pb::EnrollKeyRequest {
            user_id: user_id.to_owned(),
            authorizer: approver.map(approver_to_pb),
            reader: reader.to_owned(),
            timeout_seconds,
        };
        Ok(self.login.enroll_key(request).await?.into_inner())
    }

    /// A new PIN for `user_id` (typed twice), approved as `approval` says.
    pub async fn change_pin(
        &mut self,
        user_id: &str,
        new_pin: &str,
        new_pin_again: &str,
        approval: PinApproval<'_>,
    ) -> Result<pb::EnrolledCredential, ClientError> {
        use pb::change_pin_request::Authorizer;
        let request = pb::ChangePinRequest {
            user_id: user_id.to_owned(),
            new_pin: new_pin.to_owned(),
            new_pin_again: new_pin_again.to_owned(),
            authorizer: match approval {
                PinApproval::AdminUid => None,
                PinApproval::CurrentPin(pin) => Some(Authorizer::CurrentPin(pin.to_owned())),
                PinApproval::Session => Some(Authorizer::Session(true)),
                PinApproval::Manager(credential) => {
                    Some(Authorizer::Manager(approver_to_pb(credential)))
                }
            },
        };
        Ok(self.login.change_pin(request).await?.into_inner())
    }

    /// Reports activity at the till (restarts the idle timer); returns the current session.
    pub async fn touch(&mut self) -> Result<Option<pb::Session>, ClientError> {
        Ok(self
            .login
            .touch(pb::TouchRequest {})
            .await?
            .into_inner()
            .session)
    }

    pub async fn status(&mut self) -> Result<pb::DaemonStatus, ClientError> {
        Ok(self
            .login
            .get_status(pb::GetStatusRequest {})
            .await?
            .into_inner())
    }

    pub async fn list_devices(&mut self) -> Result<Vec<pb::InputDevice>, ClientError> {
        Ok(self
            .devices
            .list_devices(pb::ListDevicesRequest {})
            .await?
            .into_inner()
            .devices)
    }

    pub async fn watch_input(&mut self) -> Result<Streaming<pb::InputActivity>, ClientError> {
        Ok(self
            .devices
            .watch_input(pb::WatchInputRequest {})
            .await?
            .into_inner())
    }

    pub async fn create_token(
        &mut self,
        name: &str,
    ) -> Result<pb::CreateTokenResponse, ClientError> {
        let request = pb::CreateTokenRequest {
            name: name.to_owned(),
        };
        Ok(self.admin.create_token(request).await?.into_inner())
    }

    pub async fn list_tokens(&mut self) -> Result<Vec<pb::TokenInfo>, ClientError> {
        Ok(self
            .admin
            .list_tokens(pb::ListTokensRequest {})
            .await?
            .into_inner()
            .tokens)
    }

    pub async fn revoke_token(&mut self, name: &str) -> Result<bool, ClientError> {
        let request = pb::RevokeTokenRequest {
            name: name.to_owned(),
        };
        Ok(self.admin.revoke_token(request).await?.into_inner().revoked)
    }

    /// Clears the lockout of `source` ("" for every source); returns the sources cleared.
    pub async fn unlock(&mut self, source: &str) -> Result<Vec<String>, ClientError> {
        let request = pb::UnlockRequest {
            source: source.to_owned(),
        };
        Ok(self.admin.unlock(request).await?.into_inner().cleared)
    }

    pub async fn lockouts(&mut self) -> Result<Vec<pb::LockoutState>, ClientError> {
        Ok(self
            .admin
            .list_lockouts(pb::ListLockoutsRequest {})
            .await?
            .into_inner()
            .lockouts)
    }

    /// The newest `limit` audit rows (0: the daemon's default), oldest first.
    pub async fn audit_tail(
        &mut self,
        limit: u32,
    ) -> Result<pb::ListAuditEventsResponse, ClientError> {
        let request = pb::ListAuditEventsRequest { limit };
        Ok(self.admin.list_audit_events(request).await?.into_inner())
    }

    pub async fn explain(&mut self, user_id: &str) -> Result<pb::Explanation, ClientError> {
        let request = pb::ExplainRequest {
            user_id: user_id.to_owned(),
        };
        Ok(self.admin.explain(request).await?.into_inner())
    }

    pub async fn collisions(&mut self) -> Result<pb::CollisionReport, ClientError> {
        Ok(self
            .admin
            .list_collisions(pb::ListCollisionsRequest {})
            .await?
            .into_inner())
    }
}

/// Adds `authorization: Bearer <token>` to every sync call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(****)")
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// TLS settings for the sync connection.
#[derive(Debug, Clone, Default)]
pub struct SyncTls {
    pub ca_pem: Option<Vec<u8>>,
    pub domain: Option<String>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Central's view of one terminal.
#[derive(Debug, Clone)]
pub struct TillSyncClient {
    inner: SyncClient<InterceptedService<Channel, Bearer>>,
}

/// Users and roles per snapshot chunk.
pub const SNAPSHOT_CHUNK: usize = 1000;

impl TillSyncClient {
    /// `addr` is a URI such as `http://127.0.0.1:7870` (or `https://…` with `tls`).
    /// `token` may be None to test the refusal.
    pub async fn connect(
        addr: &str,
        token: Option<&str>,
        tls: Option<SyncTls>,
    ) -> Result<TillSyncClient, ClientError> {
        let connect_error = |source| ClientError::Connect {
            target: addr.to_owned(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(addr.to_owned())
            .map_err(connect_error)?
            .connect_timeout(Duration::from_secs(10));
        if let Some(tls) = tls {
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = tls.ca_pem {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some(domain) = tls.domain {
                config = config.domain_name(domain);
            }
            if let Some((cert, key)) = tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(config).map_err(connect_error)?;
        }
        let channel = endpoint.connect().await.map_err(connect_error)?;
        let bearer = token
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    ClientError::Config("token holds characters not allowed in a header".into())
                })
            })
            .transpose()?;
        Ok(TillSyncClient {
            inner: SyncClient::with_interceptor(channel, Bearer(bearer))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(16 << 20),
        })
    }

    pub async fn state(&mut self) -> Result<pb::SyncState, ClientError> {
        Ok(self
            .inner
            .get_sync_state(pb::GetSyncStateRequest {})
            .await?
            .into_inner())
    }

    /// Sends a snapshot in chunks of [`SNAPSHOT_CHUNK`] records.
    pub async fn apply_snapshot(
        &mut self,
        snapshot: export::Snapshot,
    ) -> Result<pb::ApplyResult, ClientError> {
        self.apply_snapshot_chunks(snapshot_chunks(snapshot, SNAPSHOT_CHUNK))
            .await
    }

    /// Sends pre-built chunks as they are (tests use this to send incomplete streams).
    pub async fn apply_snapshot_chunks(
        &mut self,
        chunks: Vec<pb::SnapshotChunk>,
    ) -> Result<pb::ApplyResult, ClientError> {
        Ok(self
            .inner
            .apply_snapshot(tokio_stream::iter(chunks))
            .await?
            .into_inner())
    }

    /// Sends chunks from any stream, e.g. one that fails midway.
    pub async fn apply_snapshot_stream(
        &mut self,
        chunks: impl tonic::IntoStreamingRequest<Message = pb::SnapshotChunk>,
    ) -> Result<pb::ApplyResult, ClientError> {
        Ok(self.inner.apply_snapshot(chunks).await?.into_inner())
    }

    pub async fn apply_changes(
        &mut self,
        batch: pb::ChangeBatch,
    ) -> Result<pb::ApplyResult, ClientError> {
        Ok(self.inner.apply_changes(batch).await?.into_inner())
    }

    /// Audit rows after `after_seq` (at most `limit`; 0: the daemon's default).
    pub async fn pull_audit(
        &mut self,
        after_seq: u64,
        limit: u32,
    ) -> Result<pb::PullAuditEventsResponse, ClientError> {
        let request = pb::PullAuditEventsRequest { after_seq, limit };
        Ok(self.inner.pull_audit_events(request).await?.into_inner())
    }

    /// Acknowledges (and so deletes) every audit row up to `seq`.
    /// Acknowledges `seq` whatever the stream (prefer [`TillSyncClient::ack_audit_in`]).
    pub async fn ack_audit(&mut self, seq: u64) -> Result<pb::AckAuditEventsResponse, ClientError> {
        self.ack_audit_in("", seq).await
    }

    /// Acknowledges `seq` of the audit stream `stream_id` (refused when the terminal's stream
    /// is another one: its local state was reset).
    pub async fn ack_audit_in(
        &mut self,
        stream_id: &str,
        seq: u64,
    ) -> Result<pb::AckAuditEventsResponse, ClientError> {
        let request = pb::AckAuditEventsRequest {
            seq,
            stream_id: stream_id.to_owned(),
        };
        Ok(self.inner.ack_audit_events(request).await?.into_inner())
    }

    pub async fn explain(&mut self, user_id: &str) -> Result<pb::Explanation, ClientError> {
        let request = pb::ExplainRequest {
            user_id: user_id.to_owned(),
        };
        Ok(self.inner.explain(request).await?.into_inner())
    }

    pub async fn collisions(&mut self) -> Result<pb::CollisionReport, ClientError> {
        Ok(self
            .inner
            .list_collisions(pb::ListCollisionsRequest {})
            .await?
            .into_inner())
    }
}

/// Splits a snapshot into chunks; the first carries the target, the last is marked final.
pub fn snapshot_chunks(snapshot: export::Snapshot, per_chunk: usize) -> Vec<pb::SnapshotChunk> {
    let per_chunk = per_chunk.max(1);
    let mut chunks = Vec::new();
    let mut roles = snapshot.roles.into_iter().peekable();
    let mut users = snapshot.users.into_iter().peekable();
    loop {
        let chunk_roles: Vec<_> = roles.by_ref().take(per_chunk).collect();
        let room = per_chunk - chunk_roles.len();
        let chunk_users: Vec<_> = users.by_ref().take(room).collect();
        let last = roles.peek().is_none() && users.peek().is_none();
        chunks.push(pb::SnapshotChunk {
            target: Some(snapshot.target),
            users: chunk_users,
            roles: chunk_roles,
            r#final: last,
        });
        if last {
            return chunks;
        }
    }
}
