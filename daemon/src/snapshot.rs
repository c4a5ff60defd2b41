//! A snapshot as it streams in: each chunk is validated and converted as it arrives, so memory
//! holds a few chunks and the ids seen so far, never the whole snapshot.
//!
//! [`SnapshotValidator`] is pure: it keeps what the checks across chunks need (ids seen, role
//! references not yet resolved). [`build`] feeds each validated chunk to a side file of the
//! replica ([`crate::store::SnapshotFile`]), which is switched in once the final chunk is in.

use std::collections::{BTreeMap, HashSet};

use tillgate_proto::v1 as pb;

use crate::model::{CredentialKind, Cursor, HashScheme, RoleRecord, UserRecord};
use crate::store::{ApplyError, ReadySnapshot, Replica, SnapshotFile};
use crate::validate::{Ingest, ValidationError, check_scheme_count, convert_role, convert_user};

/// Why a streamed snapshot was not built.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("snapshot stream ended without a chunk marked final; replica unchanged")]
    Incomplete { chunks: usize },
    #[error("could not start the snapshot builder thread: {0}; replica unchanged")]
    Thread(std::io::Error),
}

impl From<ValidationError> for SnapshotError {
    fn from(e: ValidationError) -> Self {
        SnapshotError::Apply(ApplyError::Invalid(e))
    }
}

/// Validates and writes `chunks` as they come into a side file of `replica`; returns it complete
/// and synced, ready for [`Replica::install_snapshot`]. On any error the side file is removed and
/// the replica is as it was. Memory holds one chunk at a time (plus the ids seen).
pub fn build(
    chunks: impl IntoIterator<Item = pb::SnapshotChunk>,
    replica: &Replica,
    ingest: Ingest<'_>,
    max_schemes: usize,
) -> Result<ReadySnapshot, SnapshotError> {
    let mut validator = SnapshotValidator::new().with_max_schemes(max_schemes);
    let mut file: Option<SnapshotFile> = None;
    for chunk in chunks {
        let target = validator.header(chunk.target.map(|c| Cursor {
            epoch: c.epoch,
            revision: c.revision,
        }))?;
        // The side file is begun (and a stale target refused) before the first records are read.
        let side = match &mut file {
            Some(side) => side,
            None => {
                let side = replica.begin_snapshot(target)?;
                tracing::debug!(target = %target, "snapshot stream opened: building beside the replica");
                file.insert(side)
            }
        };
        let valid = validator.records(chunk.users, chunk.roles, chunk.r#final, ingest)?;
        side.insert(&valid)?;
    }
    match file {
        Some(side) if validator.is_complete() => Ok(side.finish()?),
        _ => Err(SnapshotError::Incomplete {
            chunks: validator.chunks,
        }),
    }
}

/// Upper bound on users plus roles in one snapshot.
pub const MAX_SNAPSHOT_RECORDS: usize = 2_000_000;

/// One chunk, validated and converted.
#[derive(Debug, Default)]
pub struct ValidChunk {
    pub users: Vec<UserRecord>,
    pub roles: Vec<RoleRecord>,
}

/// Checks that span chunks: the target cursor, unique ids, and role assignments that name a
/// role of the snapshot (which may arrive in a later chunk than the user).
#[derive(Debug, Default)]
pub struct SnapshotValidator {
    target: Option<Cursor>,
    chunks: usize,
    complete: bool,
    user_ids: HashSet<String>,
    role_ids: HashSet<String>,
    /// Roles named before they were seen: role id → (index, id) of the first user naming it.
    unresolved: BTreeMap<String, (usize, String)>,
    /// The distinct hash schemes seen so far, and how many per kind are allowed (None: any).
    schemes: Vec<(CredentialKind, HashScheme)>,
    max_schemes: Option<usize>,
}

impl SnapshotValidator {
    pub fn new() -> SnapshotValidator {
        SnapshotValidator::default()
    }

    /// Refuses the snapshot once its credentials use more than `max` distinct hash schemes per
    /// kind (`hashing.max_schemes`).
    pub fn with_max_schemes(mut self, max: usize) -> SnapshotValidator {
        self.max_schemes = Some(max);
        self
    }

    /// The target cursor, once the first chunk named it.
    pub fn target(&self) -> Option<Cursor> {
        self.target
    }

    /// Whether the chunk marked final has been accepted.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Validates the header of the next chunk (target, order) before its records: the first
    /// chunk must name the target, later ones may repeat it but not change it.
    pub fn header(&mut self, target: Option<Cursor>) -> Result<Cursor, ValidationError> {
        if self.complete {
            return Err(ValidationError::ChunkAfterFinal);
        }
        let index = self.chunks;
        self.chunks += 1;
        match (self.target, target) {
            (None, None) => Err(ValidationError::MissingTarget),
            (None, Some(t)) if t.revision == 0 => Err(ValidationError::ZeroRevision),
            (None, Some(t)) => {
                self.target = Some(t);
                Ok(t)
            }
            (Some(expected), Some(found)) if expected != found => {
                Err(ValidationError::TargetChanged {
                    index,
                    expected: expected.to_string(),
                    found: found.to_string(),
                })
            }
            (Some(expected), _) => Ok(expected),
        }
    }

    /// Validates and converts the records of a chunk whose header was accepted.
    pub fn records(
        &mut self,
        users: Vec<pb::User>,
        roles: Vec<pb::Role>,
        last: bool,
        ingest: Ingest<'_>,
    ) -> Result<ValidChunk, ValidationError> {
        if self.user_ids.len() + self.role_ids.len() + users.len() + roles.len()
            > MAX_SNAPSHOT_RECORDS
        {
            return Err(ValidationError::TooManyRecords {
                max: MAX_SNAPSHOT_RECORDS,
            });
        }
        let mut chunk = ValidChunk {
            users: Vec::with_capacity(users.len()),
            roles: Vec::with_capacity(roles.len()),
        };
        for role in roles {
            let role = convert_role(role, self.role_ids.len())?;
            if !self.role_ids.insert(role.id.clone()) {
                return Err(ValidationError::DuplicateRole(role.id));
            }
            self.unresolved.remove(&role.id);
            chunk.roles.push(role);
        }
        for user in users {
            let index = self.user_ids.len();
            if !user.id.is_empty() && self.user_ids.contains(&user.id) {
                return Err(ValidationError::DuplicateUser(user.id));
            }
            let user = convert_user(user, index, ingest, &|_| true)?;
            for assignment in &user.roles {
                if !self.role_ids.contains(&assignment.role_id) {
                    self.unresolved
                        .entry(assignment.role_id.clone())
                        .or_insert_with(|| (index, user.id.clone()));
                }
            }
            self.user_ids.insert(user.id.clone());
            chunk.users.push(user);
        }
        if let Some(max) = self.max_schemes {
            check_scheme_count(&self.schemes, &chunk.users, max)?;
            for user in &chunk.users {
                for credential in &user.credentials {
                    let scheme = (credential.kind, credential.scheme.clone());
                    if !self.schemes.contains(&scheme) {
                        self.schemes.push(scheme);
                    }
                }
            }
        }
        if last {
            self.finish()?;
        }
        Ok(chunk)
    }

    /// At the final chunk: every role named by a user must have arrived.
    fn finish(&mut self) -> Result<(), ValidationError> {
        let first = self
            .unresolved
            .iter()
            .min_by_key(|(_, (index, _))| *index)
            .map(|(role_id, (_, user_id))| (role_id.clone(), user_id.clone()));
        if let Some((role_id, user_id)) = first {
            return Err(ValidationError::UnknownRole { user_id, role_id });
        }
        self.complete = true;
        self.user_ids = HashSet::new();
        self.role_ids = HashSet::new();
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::credential::{CostLimits, TerminalKey};
    use argon2::password_hash::SaltString;
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};

    fn phc() -> pb::Credential {
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
        let params = Params::new(64, 1, 1, Some(32)).unwrap();
        pb::Credential {
            phc: Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(b"1234", &salt)
                .unwrap()
                .to_string(),
        }
    }

    fn user(id: &str, roles: &[&str]) -> pb::User {
        pb::User {
            id: id.into(),
            pin: Some(phc()),
            roles: roles
                .iter()
                .map(|r| pb::RoleAssignment {
                    role_id: (*r).into(),
                    sales_point_id: String::new(),
                })
                .collect(),
            active: true,
            ..Default::default()
        }
    }

    fn role(id: &str) -> pb::Role {
        pb::Role {
            id: id.into(),
            name: id.into(),
            rank: 1,
            permissions: vec![],
        }
    }

    fn c(epoch: u64, revision: u64) -> Cursor {
        Cursor { epoch, revision }
    }

    struct Ctx(TerminalKey, CostLimits);

    impl Ctx {
        fn new() -> Ctx {
            Ctx(TerminalKey::from_bytes([7; 32]), CostLimits::default())
        }
        fn ingest(&self) -> Ingest<'_> {
            Ingest {
                key: &self.0,
                limits: &self.1,
            }
        }
    }

    #[test]
    fn the_first_chunk_names_the_target_and_later_ones_keep_it() {
        let mut v = SnapshotValidator::new();
        assert_eq!(v.header(None), Err(ValidationError::MissingTarget));
        let mut v = SnapshotValidator::new();
        assert_eq!(v.header(Some(c(1, 0))), Err(ValidationError::ZeroRevision));
        let mut v = SnapshotValidator::new();
        assert_eq!(v.header(Some(c(1, 2))), Ok(c(1, 2)));
        assert_eq!(v.header(None), Ok(c(1, 2)));
        assert_eq!(v.header(Some(c(1, 2))), Ok(c(1, 2)));
        assert_eq!(
            v.header(Some(c(1, 3))),
            Err(ValidationError::TargetChanged {
                index: 3,
                expected: "1:2".into(),
                found: "1:3".into()
            })
        );
    }

    #[test]
    fn roles_may_arrive_after_the_users_that_name_them() {
        let ctx = Ctx::new();
        let mut v = SnapshotValidator::new();
        v.header(Some(c(1, 1))).unwrap();
        let first = v
            .records(vec![user("u1", &["cashier"])], vec![], false, ctx.ingest())
            .unwrap();
        assert_eq!(first.users.len(), 1);
        v.header(None).unwrap();
        let last = v
            .records(vec![], vec![role("cashier")], true, ctx.ingest())
            .unwrap();
        assert_eq!(last.roles.len(), 1);
        assert!(v.is_complete());
        assert_eq!(v.header(None), Err(ValidationError::ChunkAfterFinal));
    }

    #[test]
    fn an_unknown_role_is_named_with_the_first_user_holding_it() {
        let ctx = Ctx::new();
        let mut v = SnapshotValidator::new();
        v.header(Some(c(1, 1))).unwrap();
        v.records(
            vec![user("u1", &["cashier"]), user("u2", &["ghost"])],
            vec![],
            false,
            ctx.ingest(),
        )
        .unwrap();
        v.header(None).unwrap();
        let err = v
            .records(
                vec![user("u3", &["ghost", "phantom"])],
                vec![role("cashier")],
                true,
                ctx.ingest(),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "user \"u2\": role assignment names unknown role \"ghost\""
        );
        assert!(!v.is_complete());
    }

    #[test]
    fn duplicates_are_found_across_chunks() {
        let ctx = Ctx::new();
        let mut v = SnapshotValidator::new();
        v.header(Some(c(1, 1))).unwrap();
        v.records(vec![user("u1", &[])], vec![role("r")], false, ctx.ingest())
            .unwrap();
        v.header(None).unwrap();
        assert_eq!(
            v.records(vec![user("u1", &[])], vec![], false, ctx.ingest())
                .unwrap_err(),
            ValidationError::DuplicateUser("u1".into())
        );
        let mut v = SnapshotValidator::new();
        v.header(Some(c(1, 1))).unwrap();
        v.records(vec![], vec![role("r")], false, ctx.ingest())
            .unwrap();
        v.header(None).unwrap();
        assert_eq!(
            v.records(vec![], vec![role("r")], true, ctx.ingest())
                .unwrap_err(),
            ValidationError::DuplicateRole("r".into())
        );
    }

    #[test]
    fn a_bad_record_is_named_by_its_position_in_the_whole_snapshot() {
        let ctx = Ctx::new();
        let mut v = SnapshotValidator::new();
        v.header(Some(c(1, 1))).unwrap();
        v.records(
            vec![user("u0", &[]), user("u1", &[])],
            vec![],
            false,
            ctx.ingest(),
        )
        .unwrap();
        v.header(None).unwrap();
        assert_eq!(
            v.records(vec![user("", &[])], vec![], true, ctx.ingest())
                .unwrap_err()
                .to_string(),
            "user[2]: id is empty"
        );
    }
}
