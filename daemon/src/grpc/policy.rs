//! Session-policy messages shared by the Admin service (socket) and the Sync service (TCP):
//! audit rows, lockout counters, explanations, collision reports.

use std::time::{Duration, UNIX_EPOCH};

use tillgate_proto::v1 as pb;
use tonic::Status;
use tonic_types::StatusExt;

use super::{join_error, method_to_pb, timestamp};
use crate::audit::AuditRow;
use crate::explain::{self, Collision, CredentialCheck, Explanation, Person};
use crate::lockout::{Counter, LockoutPolicy, Now, TERMINAL_SCOPE};
use crate::model::Terminal;
use crate::store::{AckError, LocalStore, Replica, StoreError};

pub fn audit_to_pb(row: AuditRow) -> pb::AuditEvent {
    let r = row.record;
    pb::AuditEvent {
        seq: row.seq,
        uuid: row.uuid,
        at: Some(timestamp(r.at)),
        kind: r.kind.as_str().to_owned(),
        method: r
            .method
            .map(method_to_pb)
            .unwrap_or(pb::LoginMethod::Unspecified) as i32,
        source: r.source,
        outcome: r.outcome.as_str().to_owned(),
        user_id: r.user_id.unwrap_or_default(),
        session_user_id: r.session_user_id.unwrap_or_default(),
        permission: r.permission.unwrap_or_default(),
        reason: r.reason,
        phc: r.phc.unwrap_or_default(),
        authorizer: r.authorizer.unwrap_or_default(),
    }
}

/// A counter as `ListLockouts` shows it. For the terminal budget, `failures` is the charges
/// still in it (rounded up); for a source, the failures since its last success, and `strikes`
/// the delays it has earned (each doubles the last).
pub fn lockout_to_pb(
    scope: String,
    counter: Counter,
    policy: &LockoutPolicy,
    now: Now,
) -> pb::LockoutState {
    let terminal = scope == TERMINAL_SCOPE;
    let failures = if terminal {
        u32::try_from(counter.level_milli.div_ceil(1000)).unwrap_or(u32::MAX)
    } else {
        counter.failures
    };
    let locked_until = counter
        .retry_after(policy, &scope, now)
        .map(|wait| timestamp(UNIX_EPOCH + Duration::from_millis(now.wall_ms) + wait));
    pb::LockoutState {
        source: scope,
        failures,
        strikes: if terminal {
            0
        } else {
            (counter.failures + 1).saturating_sub(policy.max_failures.max(1))
        },
        locked_until,
    }
}

fn user_ref(person: &Person) -> pb::UserRef {
    pb::UserRef {
        id: person.user_id.clone(),
        first_name: person.first_name.clone(),
        last_name: person.last_name.clone(),
    }
}

fn check_to_pb(check: CredentialCheck) -> pb::CredentialCheck {
    pb::CredentialCheck {
        method: method_to_pb(check.kind) as i32,
        index: check.index,
        shared_with: check.shared_with.iter().map(user_ref).collect(),
        logs_in: check.logs_in.as_ref().map(user_ref),
        wins: check.wins,
        outcome: check.outcome,
    }
}

pub fn explanation_to_pb(e: Explanation, terminal: &Terminal) -> pb::Explanation {
    let facts = e.facts;
    pb::Explanation {
        user_id: e.user_id,
        present: facts.is_some(),
        user: facts.as_ref().map(|f| user_ref(&f.person)),
        ordinal: facts.as_ref().map(|f| f.person.ordinal).unwrap_or_default(),
        active: facts.as_ref().is_some_and(|f| f.person.active),
        assigned_to_sales_point: facts.as_ref().is_some_and(|f| f.assigned_to_sales_point),
        assigned_to_sub_terminal: facts.as_ref().is_some_and(|f| f.assigned_to_sub_terminal),
        has_pin: e.has_pin,
        keys: e.keys,
        role_ids: facts
            .as_ref()
            .map(|f| f.role_ids.clone())
            .unwrap_or_default(),
        permissions: facts.map(|f| f.permissions).unwrap_or_default(),
        credentials: e.credentials.into_iter().map(check_to_pb).collect(),
        can_log_in: e.can_log_in,
        problems: e.problems,
        sales_point_id: terminal.sales_point_id.clone(),
        sub_terminal_id: terminal.sub_terminal_id.clone().unwrap_or_default(),
    }
}

fn collision_to_pb(c: Collision) -> pb::Collision {
    pb::Collision {
        method: method_to_pb(c.kind) as i32,
        members: c
            .members
            .iter()
            .map(|p| pb::CollisionMember {
                user: Some(user_ref(p)),
                ordinal: p.ordinal,
                active: p.active,
                assigned_here: p.assigned_here,
            })
            .collect(),
        winner: c.winner.as_ref().map(user_ref),
    }
}

/// `Explain` for both listeners.
pub async fn explain_user(
    replica: &std::sync::Arc<Replica>,
    terminal: &Terminal,
    user_id: String,
) -> Result<pb::Explanation, Status> {
    if user_id.is_empty() {
        return Err(Status::invalid_argument("user_id is empty"));
    }
    let (replica, t) = (replica.clone(), terminal.clone());
    let explanation = tokio::task::spawn_blocking(move || {
        let facts = replica.user_facts(&user_id, &t)?;
        let held = if facts.is_some() {
            replica.held_credentials(&user_id, &t)?
        } else {
            vec![]
        };
        Ok::<_, StoreError>(explain::explain(
            &user_id,
            facts,
            held,
            &t.sales_point_id,
            t.sub_terminal_id.as_deref(),
        ))
    })
    .await
    .map_err(join_error)??;
    Ok(explanation_to_pb(explanation, terminal))
}

/// `ListCollisions` for both listeners.
pub async fn collision_report(
    replica: &std::sync::Arc<Replica>,
    terminal: &Terminal,
) -> Result<pb::CollisionReport, Status> {
    let (replica, t) = (replica.clone(), terminal.clone());
    let groups = tokio::task::spawn_blocking(move || replica.shared_credentials(&t))
        .await
        .map_err(join_error)??;
    Ok(pb::CollisionReport {
        collisions: explain::collisions(groups)
            .into_iter()
            .map(collision_to_pb)
            .collect(),
    })
}

/// The lockout counters worth showing, for both listeners.
pub async fn lockout_states(
    local: &std::sync::Arc<LocalStore>,
    policy: LockoutPolicy,
) -> Result<Vec<pb::LockoutState>, Status> {
    let local = local.clone();
    let now = crate::clock::now();
    let counters = tokio::task::spawn_blocking(move || local.lockout_counters(&policy, now))
        .await
        .map_err(join_error)??;
    Ok(counters
        .into_iter()
        .map(|(scope, counter)| lockout_to_pb(scope, counter, &policy, now))
        .collect())
}

impl From<AckError> for Status {
    fn from(e: AckError) -> Status {
        match e {
            AckError::BeyondLast { .. } => Status::invalid_argument(e.to_string()),
            AckError::StreamChanged { ref current, .. } => Status::with_error_details(
                tonic::Code::FailedPrecondition,
                e.to_string(),
                tonic_types::ErrorDetails::with_error_info(
                    "AUDIT_STREAM_CHANGED",
                    super::ERROR_DOMAIN,
                    std::collections::HashMap::from([("stream_id".to_owned(), current.clone())]),
                ),
            ),
            AckError::Store(s) => s.into(),
        }
    }
}
