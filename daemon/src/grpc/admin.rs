//! Local administration (sync tokens, lockouts, audit tail, explain), for the admin uids only:
//! the access table (`access.rs`) refuses every other caller before a handler here runs.

use std::sync::Arc;

use tillgate_proto::v1 as pb;
use tillgate_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::policy::{audit_to_pb, collision_report, explain_user, lockout_states};
use super::{internal, join_error, login::peer_label, timestamp};
use crate::audit;
use crate::login::Authenticator;
use crate::model::Terminal;
use crate::store::{LocalStore, Replica};
use crate::tokens::{TokenError, TokenRegistry};

/// Rows `tillctl audit` shows by default.
const DEFAULT_AUDIT_TAIL: u32 = 20;

#[derive(Debug)]
pub struct AdminService {
    pub replica: Arc<Replica>,
    pub local: Arc<LocalStore>,
    pub tokens: Arc<TokenRegistry>,
    pub auth: Arc<Authenticator>,
    pub terminal: Terminal,
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Status {
        match e {
            TokenError::BadName => Status::invalid_argument(e.to_string()),
            TokenError::Exists(_) => Status::already_exists(e.to_string()),
            TokenError::Store(s) => internal("token store failed", &s),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let name = request.into_inner().name;
        let (local, tokens, n) = (self.local.clone(), self.tokens.clone(), name.clone());
        let token = tokio::task::spawn_blocking(move || tokens.create(&local, &n))
            .await
            .map_err(join_error)??;
        tracing::info!(token = %name, "sync token created");
        Ok(Response::new(pb::CreateTokenResponse {
            name,
            token: token.to_string(),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        Ok(Response::new(pb::ListTokensResponse {
            tokens: self
                .tokens
                .list()
                .into_iter()
                .map(|row| pb::TokenInfo {
                    name: row.name,
                    created_at: Some(timestamp(row.created_at)),
                })
                .collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let name = request.into_inner().name;
        let (local, tokens, n) = (self.local.clone(), self.tokens.clone(), name.clone());
        let revoked = tokio::task::spawn_blocking(move || tokens.revoke(&local, &n))
            .await
            .map_err(join_error)??;
        tracing::info!(token = %name, revoked, "sync token revoke");
        Ok(Response::new(pb::RevokeTokenResponse { revoked }))
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let admin = format!("socket {}", peer_label(&request));
        let source = request.into_inner().source;
        let scope = Some(source).filter(|s| !s.is_empty());
        let cleared = self.auth.clear_lockouts(scope, &admin).await?;
        Ok(Response::new(pb::UnlockResponse { cleared }))
    }

    async fn list_lockouts(
        &self,
        _request: Request<pb::ListLockoutsRequest>,
    ) -> Result<Response<pb::ListLockoutsResponse>, Status> {
        Ok(Response::new(pb::ListLockoutsResponse {
            lockouts: lockout_states(&self.local, self.auth.policy().lockout).await?,
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => DEFAULT_AUDIT_TAIL,
            n => n,
        };
        let local = self.local.clone();
        let (rows, stats) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((local.audit_tail(limit)?, local.audit_stats()?))
        })
        .await
        .map_err(join_error)??;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: rows.into_iter().map(audit_to_pb).collect(),
            backlog: stats.backlog,
            audit_status: audit::status(stats.backlog, self.auth.policy().audit_max_rows),
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::Explanation>, Status> {
        let user_id = request.into_inner().user_id;
        Ok(Response::new(
            explain_user(&self.replica, &self.terminal, user_id).await?,
        ))
    }

    async fn list_collisions(
        &self,
        _request: Request<pb::ListCollisionsRequest>,
    ) -> Result<Response<pb::CollisionReport>, Status> {
        Ok(Response::new(
            collision_report(&self.replica, &self.terminal).await?,
        ))
    }
}
