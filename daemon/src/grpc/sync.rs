//! Central's Sync service: state and fleet health, snapshots, incremental batches, the audit
//! outbox, explain and collision reports.

use std::sync::Arc;

use tillgate_proto::v1 as pb;
use tillgate_proto::v1::sync_server::Sync;
use tonic::{Request, Response, Status, Streaming};

use super::auth::TokenName;
use super::devices::device_to_pb;
use super::policy::{audit_to_pb, collision_report, explain_user, lockout_states};
use super::{cursor_from_pb, cursor_to_pb, join_error, login::replica_status, timestamp};
use crate::audit;
use crate::credential::{CostLimits, TerminalKey};
use crate::hardware::DeviceRegistry;
use crate::history::{BatchDigest, BatchHeader};
use crate::login::{Authenticator, replica_too_old};
use crate::model::Terminal;
use crate::priority::StepAside;
use crate::snapshot::{self, SnapshotError};
use crate::store::{ApplyError, ApplySummary, LocalStore, Replica};
use crate::validate::{Ingest, ValidationError, validate_changes};

/// Upper bound on the encoded size of one snapshot (all chunks): it is written to a side file
/// as it streams, so this bounds the disk a runaway stream can take.
pub const MAX_SNAPSHOT_BYTES: usize = 512 << 20;
/// Chunks queued between the stream and the side-file builder.
const CHUNKS_IN_FLIGHT: usize = 2;

/// Audit rows per pull when central does not say.
const DEFAULT_AUDIT_PULL: u32 = 100;

#[derive(Debug)]
pub struct SyncService {
    pub replica: Arc<Replica>,
    pub local: Arc<LocalStore>,
    pub key: Arc<TerminalKey>,
    pub limits: CostLimits,
    /// `hashing.max_schemes`: distinct hash schemes per credential kind a sync may leave.
    pub max_schemes: usize,
    pub terminal: Terminal,
    /// Signalled after every batch or snapshot that changed the replica.
    pub applied: Arc<tokio::sync::Notify>,
    /// Re-evaluates the current session after every applied change.
    pub auth: Arc<Authenticator>,
    pub devices: Arc<DeviceRegistry>,
    /// One snapshot at a time: a second one is refused with ABORTED while this is taken.
    pub snapshots: Arc<tokio::sync::Semaphore>,
}

impl SyncService {
    /// Applies a change and then re-evaluates the current session, in a task of its own: a
    /// cancelled request (central's deadline, a reset stream) cannot commit the change and skip
    /// ending the session of a user it deleted or deactivated. Replays re-evaluate too, so a
    /// retry after such a cancellation still catches up.
    async fn apply(
        &self,
        what: &'static str,
        token: String,
        work: impl FnOnce() -> Result<ApplySummary, ApplyError> + Send + 'static,
    ) -> Result<ApplySummary, Status> {
        let (auth, applied) = (self.auth.clone(), self.applied.clone());
        let task = tokio::spawn(async move {
            let summary = tokio::task::spawn_blocking(work)
                .await
                .map_err(join_error)?;
            log_outcome(what, &token, &summary, &applied);
            if summary.is_ok()
                && let Err(e) = auth.replica_changed().await
            {
                tracing::error!(error = %e, "re-evaluating the session after a sync failed");
            }
            Ok::<_, Status>(summary?)
        });
        task.await.map_err(join_error)?
    }
}

type Built = (
    Result<crate::store::ReadySnapshot, SnapshotError>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// The blocking task that builds a snapshot's side file, holding the one-snapshot slot.
///
/// hyper drops a call's handler at its next await once central resets the stream (its deadline,
/// a dropped call) or the connection goes, and tonic does at the listener's `call_timeout`.
/// Dropping the chunk sender ends the builder at once; dropping this then waits for it in a
/// task of its own, so the slot is free, and the refusal logged, before that task ends — a
/// central that went away never holds the slot, nor leaves the daemon silent about it.
struct SideFileBuilder {
    token: String,
    task: Option<tokio::task::JoinHandle<Built>>,
}

impl SideFileBuilder {
    /// The builder's outcome, once the chunk sender is dropped (or it stopped on its own).
    async fn finish(&mut self) -> Result<Built, Status> {
        let Some(task) = self.task.as_mut() else {
            return Err(Status::internal("snapshot builder already finished"));
        };
        let built = task.await.map_err(join_error);
        self.task = None;
        built
    }
}

impl Drop for SideFileBuilder {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the runtime is shutting down: the process ends, and the side file with it
        };
        let token = std::mem::take(&mut self.token);
        runtime.spawn(async move {
            // The permit comes back with the result: dropping it frees the slot before the log.
            // An unfinished stream was logged by the builder already.
            let outcome = task.await;
            let (unfinished, failed) = match &outcome {
                Ok((Err(SnapshotError::Incomplete { .. }), _)) => (true, true),
                Ok((built, _)) => (false, built.is_err()),
                Err(_) => (false, true),
            };
            drop(outcome);
            if !unfinished {
                tracing::warn!(token = %token, "snapshot call ended before it was answered (central reset the stream or went away, or call_timeout passed); replica unchanged");
            }
            if failed {
                tokio::task::spawn_blocking(crate::memory::release_free_memory);
            }
        });
    }
}

fn caller<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<TokenName>()
        .map(|t| t.0.clone())
        .unwrap_or_default()
}

fn result_to_pb(summary: ApplySummary) -> pb::ApplyResult {
    pb::ApplyResult {
        cursor: Some(cursor_to_pb(summary.cursor)),
        applied: summary.applied,
        users: summary.users,
        roles: summary.roles,
    }
}

#[tonic::async_trait]
impl Sync for SyncService {
    async fn get_sync_state(
        &self,
        _request: Request<pb::GetSyncStateRequest>,
    ) -> Result<Response<pb::SyncState>, Status> {
        let (replica, local) = (self.replica.clone(), self.local.clone());
        let terminal = self.terminal.clone();
        let (state, counts, audit_stats) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((
                replica.state()?,
                replica.counts(&terminal)?,
                local.audit_stats()?,
            ))
        })
        .await
        .map_err(join_error)??;
        let policy = self.auth.policy();
        let session = self.auth.sessions().current();
        Ok(Response::new(pb::SyncState {
            cursor: Some(cursor_to_pb(state.cursor)),
            status: replica_status(state.cursor).into(),
            users: counts.users,
            roles: counts.roles,
            users_at_terminal: counts.users_at_terminal,
            last_sync_at: state.last_sync_at.map(timestamp),
            sales_point_id: self.terminal.sales_point_id.clone(),
            sub_terminal_id: self.terminal.sub_terminal_id.clone().unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            audit_backlog: audit_stats.backlog,
            audit_max_rows: policy.audit_max_rows,
            audit_status: audit::status(audit_stats.backlog, policy.audit_max_rows),
            lockouts: lockout_states(&self.local, policy.lockout).await?,
            input_devices: self.devices.list().into_iter().map(device_to_pb).collect(),
            replica_stale: !state.cursor.needs_snapshot()
                && policy.max_replica_age.is_some_and(|max| {
                    replica_too_old(state.last_sync_at, std::time::SystemTime::now(), max)
                }),
            audit_stream_id: self.local.identity().stream_id.clone(),
            audit_stream_started_at: Some(timestamp(self.local.identity().created_at)),
            audit_stream_origin: self.local.identity().origin.clone(),
            disk_full: self.auth.disk_full(),
            session_user_id: session
                .as_ref()
                .map(|s| s.user_id.clone())
                .unwrap_or_default(),
            session_locked: session.is_some_and(|s| s.locked),
        }))
    }

    async fn apply_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::ApplyResult>, Status> {
        let token = caller(&request);
        // Held until the snapshot is installed or dropped: its side file is the only one.
        let permit = self.snapshots.clone().try_acquire_owned().map_err(|_| {
            Status::aborted("another snapshot is being applied; retry when it has finished")
        })?;
        let mut stream = request.into_inner();
        // A few chunks in flight between the stream and the builder: memory stays flat, and a
        // slow disk slows central down instead of filling the queue.
        let (sender, mut receiver) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
        let (replica, key, limits) = (self.replica.clone(), self.key.clone(), self.limits);
        let max_schemes = self.max_schemes;
        let auth = self.auth.clone();
        let builder_token = token.clone();
        let builder = tokio::task::spawn_blocking(move || {
            let ingest = Ingest {
                key: &key,
                limits: &limits,
            };
            // At background priority: seconds of CPU that must not delay a login's argon2.
            // Stepping aside while a login hashes: a login overlaps at most one step of the build.
            let pace = StepAside::new(move || auth.hashing_busy());
            let built = crate::priority::run_in_background("snapshot-build", || {
                snapshot::build(
                    std::iter::from_fn(|| receiver.blocking_recv()),
                    &replica,
                    ingest,
                    max_schemes,
                    &pace,
                )
            })
            .unwrap_or_else(|e| Err(SnapshotError::Thread(e)));
            // Logged here, once the slot is free: if the client went away (hyper reports a reset
            // stream as its end), this call's handler may be gone already.
            if let Err(SnapshotError::Incomplete { chunks }) = &built {
                drop(permit);
                tracing::warn!(token = %builder_token, chunks, "snapshot stream ended before its final chunk; replica unchanged");
                return (built, None);
            }
            (built, Some(permit))
        });
        let mut builder = SideFileBuilder {
            token: token.clone(),
            task: Some(builder),
        };
        let mut total_bytes = 0usize;
        let mut too_large = false;
        let mut broke_off = None;
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                // The builder stopped at a bad or stale chunk: answer now, not when central is
                // done streaming.
                () = sender.closed() => break,
            };
            match next {
                Ok(Some(chunk)) => {
                    total_bytes += prost::Message::encoded_len(&chunk);
                    if total_bytes > MAX_SNAPSHOT_BYTES {
                        too_large = true;
                        break;
                    }
                    if sender.send(chunk).await.is_err() {
                        break; // the builder stopped at a bad chunk: its error follows
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    broke_off = Some(e);
                    break;
                }
            }
        }
        drop(sender);
        let (built, permit) = builder.finish().await?;
        if built.is_err() {
            tokio::task::spawn_blocking(crate::memory::release_free_memory);
        }
        if too_large {
            drop(permit);
            tracing::warn!(token = %token, max_mib = MAX_SNAPSHOT_BYTES >> 20, "snapshot stream over the size limit; replica unchanged");
            return Err(Status::resource_exhausted(format!(
                "snapshot is larger than {} MiB; replica unchanged",
                MAX_SNAPSHOT_BYTES >> 20
            )));
        }
        if let Some(e) = broke_off {
            tracing::warn!(token = %token, error = %e, "snapshot stream broke off; replica unchanged");
            return Err(Status::aborted(format!(
                "snapshot stream broke off ({}); replica unchanged",
                e.message()
            )));
        }
        let ready = match built {
            Ok(ready) => ready,
            // Logged by the builder, which may outlive this handler.
            Err(SnapshotError::Incomplete { .. }) => {
                return Err(Status::aborted(
                    "snapshot stream ended without a chunk marked final; replica unchanged",
                ));
            }
            Err(SnapshotError::Apply(e)) => {
                log_refusal("snapshot", &token, &e);
                return Err(e.into());
            }
            Err(e @ SnapshotError::Thread(_)) => {
                tracing::error!(token = %token, error = %e, "snapshot not applied");
                return Err(Status::unavailable(e.to_string()));
            }
        };
        let replica = self.replica.clone();
        let auth = self.auth.clone();
        let summary = self
            .apply("snapshot", token, move || {
                let installed = replica.install_snapshot(ready);
                let pace = StepAside::new(move || auth.hashing_busy());
                if let Err(e) = replica.discard_retired(&|| {
                    pace.step();
                }) {
                    tracing::warn!(error = %e, "could not remove the replaced replica file; it is removed at the next start");
                }
                drop(permit);
                crate::memory::release_free_memory();
                installed
            })
            .await?;
        // Once more after the session re-check, which reads the new file on the blocking pool
        // (its connections' caches and what the switch's threads freed since).
        tokio::task::spawn_blocking(crate::memory::release_free_memory);
        Ok(Response::new(result_to_pb(summary)))
    }

    async fn apply_changes(
        &self,
        request: Request<pb::ChangeBatch>,
    ) -> Result<Response<pb::ApplyResult>, Status> {
        let token = caller(&request);
        let batch = request.into_inner();
        let base = cursor_from_pb(batch.base)
            .ok_or_else(|| Status::invalid_argument(ValidationError::MissingBase.to_string()))?;
        let header = BatchHeader {
            base,
            new_revision: batch.new_revision,
            empty: batch.upsert_users.is_empty()
                && batch.delete_user_ids.is_empty()
                && batch.upsert_roles.is_empty()
                && batch.delete_role_ids.is_empty(),
            digest: BatchDigest::of(&prost::Message::encode_to_vec(&batch)),
        };
        let (replica, key, limits) = (self.replica.clone(), self.key.clone(), self.limits);
        let max_schemes = self.max_schemes;
        let summary = self
            .apply("changes", token, move || {
                replica.apply_changes_bounded(&header, max_schemes, |role_in_replica| {
                    let ingest = Ingest {
                        key: &key,
                        limits: &limits,
                    };
                    validate_changes(batch, ingest, role_in_replica)
                })
            })
            .await?;
        Ok(Response::new(result_to_pb(summary)))
    }

    async fn pull_audit_events(
        &self,
        request: Request<pb::PullAuditEventsRequest>,
    ) -> Result<Response<pb::PullAuditEventsResponse>, Status> {
        let token = caller(&request);
        let request = request.into_inner();
        let limit = match request.limit {
            0 => DEFAULT_AUDIT_PULL,
            n => n,
        };
        let local = self.local.clone();
        let (rows, stats) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((
                local.audit_after(request.after_seq, limit)?,
                local.audit_stats()?,
            ))
        })
        .await
        .map_err(join_error)??;
        tracing::debug!(
            token,
            after_seq = request.after_seq,
            rows = rows.len(),
            backlog = stats.backlog,
            "audit pulled"
        );
        Ok(Response::new(pb::PullAuditEventsResponse {
            events: rows.into_iter().map(audit_to_pb).collect(),
            backlog: stats.backlog,
            last_seq: stats.last_seq,
            stream_id: self.local.identity().stream_id.clone(),
        }))
    }

    async fn ack_audit_events(
        &self,
        request: Request<pb::AckAuditEventsRequest>,
    ) -> Result<Response<pb::AckAuditEventsResponse>, Status> {
        let token = caller(&request);
        let request = request.into_inner();
        let seq = request.seq;
        let stream_id = Some(request.stream_id).filter(|s| !s.is_empty());
        let local = self.local.clone();
        let outcome =
            tokio::task::spawn_blocking(move || local.audit_ack(stream_id.as_deref(), seq))
                .await
                .map_err(join_error)?;
        match &outcome {
            Ok(ack) => tracing::info!(
                token,
                seq,
                deleted = ack.deleted,
                backlog = ack.stats.backlog,
                "audit acknowledged"
            ),
            Err(e) => tracing::warn!(token, seq, error = %e, "audit acknowledgement refused"),
        }
        let ack = outcome?;
        Ok(Response::new(pb::AckAuditEventsResponse {
            deleted: ack.deleted,
            backlog: ack.stats.backlog,
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::Explanation>, Status> {
        let token = caller(&request);
        let user_id = request.into_inner().user_id;
        tracing::info!(token, user_id = %user_id, "explain");
        Ok(Response::new(
            explain_user(&self.replica, &self.terminal, user_id).await?,
        ))
    }

    async fn list_collisions(
        &self,
        request: Request<pb::ListCollisionsRequest>,
    ) -> Result<Response<pb::CollisionReport>, Status> {
        tracing::info!(token = caller(&request), "collision report");
        Ok(Response::new(
            collision_report(&self.replica, &self.terminal).await?,
        ))
    }
}

fn log_outcome(
    what: &str,
    token: &str,
    outcome: &Result<ApplySummary, ApplyError>,
    applied: &tokio::sync::Notify,
) {
    match outcome {
        Ok(s) if s.applied => {
            tracing::info!(token, cursor = %s.cursor, users = s.users, roles = s.roles, "{what} applied");
            applied.notify_one();
        }
        Ok(s) => {
            tracing::info!(token, cursor = %s.cursor, "{what} already applied (replay acknowledged)")
        }
        Err(e) => log_refusal(what, token, e),
    }
}

fn log_refusal(what: &str, token: &str, error: &ApplyError) {
    match error {
        ApplyError::Store(e) => {
            tracing::error!(token, error = %e, "{what} failed; replica unchanged")
        }
        e => tracing::warn!(token, error = %e, "{what} refused; replica unchanged"),
    }
}
