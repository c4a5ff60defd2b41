//! Bearer-token check for the Sync listener.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::tokens::TokenRegistry;

/// The name of the token a sync call was authenticated with (a request extension).
#[derive(Debug, Clone)]
pub struct TokenName(pub String);

/// Rejects calls without a valid `authorization: Bearer <token>`. Failures are logged with the
/// peer address, never with what was presented.
#[derive(Debug, Clone)]
pub struct BearerCheck {
    pub tokens: Arc<TokenRegistry>,
}

impl tonic::service::Interceptor for BearerCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let peer = request
            .remote_addr()
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
        tracing::debug!(%peer, token = %name, "sync call authenticated");
        request.extensions_mut().insert(TokenName(name));
        Ok(request)
    }
}
