//! Bearer-token check for the Sync listener.

use std::sync::Arc;

use tonic::transport::server::TlsConnectInfo;
use tonic::{Request, Status};

use crate::listener::SyncPeer;
use crate::tokens::TokenRegistry;

/// The name of the token a sync call was authenticated with (a request extension).
#[derive(Debug, Clone)]
pub struct TokenName(pub String);

/// Rejects calls without a valid `authorization: Bearer <token>`, and marks the connection of a
/// call with a valid one as authenticated (so `sync.auth_timeout` no longer closes it). Failures
/// are logged with the peer address, never with what was presented.
#[derive(Debug, Clone)]
pub struct BearerCheck {
    pub tokens: Arc<TokenRegistry>,
}

/// The sync connection a call came on, with or without TLS.
fn sync_peer<T>(request: &Request<T>) -> Option<&SyncPeer> {
    let extensions = request.extensions();
    extensions.get::<SyncPeer>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<SyncPeer>>()
            .map(|tls| tls.get_ref())
    })
}

impl tonic::service::Interceptor for BearerCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let connection = sync_peer(&request);
        let peer = connection
            .and_then(|c| c.tcp.remote_addr())
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        let Some(value) = request.metadata().get("authorization") else {
            tracing::warn!(%peer, "sync call rejected: no authorization header");
            return Err(Status::unauthenticated(
                "missing authorization: Bearer <token>",
            ));
        };
        let token = value.to_str().ok().and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        let Some(name) = token.and_then(|t| self.tokens.verify(t.trim())) else {
            tracing::warn!(%peer, "sync call rejected: invalid token");
            return Err(Status::unauthenticated("invalid sync token"));
        };
        if let Some(connection) = connection {
            connection.authenticated.set();
        }
        tracing::debug!(%peer, token = %name, "sync call authenticated");
        request.extensions_mut().insert(TokenName(name));
        Ok(request)
    }
}
