//! Sync validation: turns central's records into replica records, or names the first bad one.
//! Pure: nothing here touches the replica, so a rejected batch cannot have written anything.

use std::collections::HashSet;

use tillgate_proto::v1 as pb;

use crate::credential::{CostLimits, PhcError, TerminalKey, parse_phc};
use crate::model::{
    CredentialKind, Effect, HashScheme, RoleAssignment, RolePermission, RoleRecord,
    StoredCredential, UserRecord,
};

const MAX_ID_LEN: usize = 256;
/// Keys per user; far above any real use, low enough that one record cannot be huge.
pub const MAX_KEYS_PER_USER: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    #[error("{what}[{index}]: id is empty")]
    EmptyId { what: &'static str, index: usize },
    #[error("{what}[{index}]: id is longer than {MAX_ID_LEN} bytes")]
    LongId { what: &'static str, index: usize },
    #[error("user \"{0}\" appears more than once")]
    DuplicateUser(String),
    #[error("user \"{user_id}\": {count} keys, at most {MAX_KEYS_PER_USER} are accepted")]
    TooManyKeys { user_id: String, count: usize },
    #[error("role \"{0}\" appears more than once")]
    DuplicateRole(String),
    #[error("user \"{user_id}\": role assignment names unknown role \"{role_id}\"")]
    UnknownRole { user_id: String, role_id: String },
    #[error("user \"{user_id}\": {credential} credential: {source}")]
    Credential {
        user_id: String,
        credential: String,
        #[source]
        source: PhcError,
    },
    #[error("user \"{user_id}\": {field} holds an empty id")]
    EmptyReference {
        user_id: String,
        field: &'static str,
    },
    #[error("role \"{role_id}\": permission[{index}] has an empty name")]
    EmptyPermission { role_id: String, index: usize },
    #[error("role \"{role_id}\": permission \"{permission}\" has no effect (ALLOW or DENY)")]
    MissingEffect { role_id: String, permission: String },
    #[error("{what} \"{id}\" is both upserted and deleted in one batch")]
    UpsertAndDelete { what: &'static str, id: String },
    #[error("snapshot: the first chunk must carry the target cursor")]
    MissingTarget,
    #[error("snapshot: chunk {index} names target {found}, the first chunk named {expected}")]
    TargetChanged {
        index: usize,
        expected: String,
        found: String,
    },
    #[error("snapshot: target revision must be greater than 0")]
    ZeroRevision,
    #[error("snapshot: chunk after the final chunk")]
    ChunkAfterFinal,
    #[error("snapshot holds more than {max} users and roles")]
    TooManyRecords { max: usize },
    #[error("changes: base cursor is missing")]
    MissingBase,
    #[error("changes: new revision {new} must be greater than the base revision {base}")]
    RevisionNotAfterBase { base: u64, new: u64 },
    #[error(
        "{kind} credentials would use {count} distinct hash schemes (salt and costs), more than \
         hashing.max_schemes = {max}; user \"{user_id}\" brings one too many. Every login runs \
         argon2 once per scheme: hash an account's secrets under one salt"
    )]
    TooManySchemes {
        kind: &'static str,
        count: usize,
        max: usize,
        user_id: String,
    },
}

/// Refuses credentials that would leave more than `max` distinct hash schemes per credential
/// kind: `kept` are the schemes of the credentials that stay as they are, `users` the new
/// records in order. Names the total count and the first user that went over.
pub fn check_scheme_count(
    kept: &[(CredentialKind, HashScheme)],
    users: &[UserRecord],
    max: usize,
) -> Result<(), ValidationError> {
    let mut seen: HashSet<(CredentialKind, &HashScheme)> =
        kept.iter().map(|(kind, scheme)| (*kind, scheme)).collect();
    let mut first_over: Option<(CredentialKind, &str)> = None;
    for user in users {
        for credential in &user.credentials {
            if seen.insert((credential.kind, &credential.scheme)) && first_over.is_none() {
                let of_kind = seen.iter().filter(|(k, _)| *k == credential.kind).count();
                if of_kind > max {
                    first_over = Some((credential.kind, user.id.as_str()));
                }
            }
        }
    }
    match first_over {
        None => Ok(()),
        Some((kind, user_id)) => Err(ValidationError::TooManySchemes {
            kind: kind.label(),
            count: seen.iter().filter(|(k, _)| *k == kind).count(),
            max,
            user_id: user_id.to_owned(),
        }),
    }
}

/// Everything needed to turn central's hashes into stored credentials.
#[derive(Debug, Clone, Copy)]
pub struct Ingest<'a> {
    pub key: &'a TerminalKey,
    pub limits: &'a CostLimits,
}

fn check_id(id: &str, what: &'static str, index: usize) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(ValidationError::EmptyId { what, index });
    }
    if id.len() > MAX_ID_LEN {
        return Err(ValidationError::LongId { what, index });
    }
    Ok(())
}

pub fn convert_role(role: pb::Role, index: usize) -> Result<RoleRecord, ValidationError> {
    check_id(&role.id, "role", index)?;
    let mut permissions = Vec::with_capacity(role.permissions.len());
    for (index, permission) in role.permissions.into_iter().enumerate() {
        if permission.name.is_empty() {
            return Err(ValidationError::EmptyPermission {
                role_id: role.id,
                index,
            });
        }
        let effect = match pb::Effect::try_from(permission.effect) {
            Ok(pb::Effect::Allow) => Effect::Allow,
            Ok(pb::Effect::Deny) => Effect::Deny,
            _ => {
                return Err(ValidationError::MissingEffect {
                    role_id: role.id,
                    permission: permission.name,
                });
            }
        };
        permissions.push(RolePermission {
            name: permission.name,
            effect,
        });
    }
    Ok(RoleRecord {
        id: role.id,
        name: role.name,
        rank: role.rank,
        permissions,
    })
}

/// Converts one user; `role_known` answers whether a role id exists after the batch.
pub fn convert_user(
    user: pb::User,
    index: usize,
    ingest: Ingest<'_>,
    role_known: &dyn Fn(&str) -> bool,
) -> Result<UserRecord, ValidationError> {
    check_id(&user.id, "user", index)?;
    if user.keys.len() > MAX_KEYS_PER_USER {
        return Err(ValidationError::TooManyKeys {
            user_id: user.id,
            count: user.keys.len(),
        });
    }
    let mut credentials = Vec::with_capacity(user.keys.len() + 1);
    let labelled = user
        .pin
        .iter()
        .map(|c| (CredentialKind::Pin, "pin".to_owned(), c))
        .chain(
            user.keys
                .iter()
                .enumerate()
                .map(|(i, c)| (CredentialKind::Key, format!("key[{i}]"), c)),
        );
    for (kind, label, credential) in labelled {
        let parsed = parse_phc(&credential.phc, ingest.limits).map_err(|source| {
            ValidationError::Credential {
                user_id: user.id.clone(),
                credential: label,
                source,
            }
        })?;
        credentials.push(StoredCredential {
            kind,
            digest: ingest.key.rekey(&parsed.output),
            scheme: parsed.scheme,
        });
    }
    let mut roles = Vec::with_capacity(user.roles.len());
    for assignment in user.roles {
        if assignment.role_id.is_empty() {
            return Err(ValidationError::EmptyReference {
                user_id: user.id,
                field: "roles",
            });
        }
        if !role_known(&assignment.role_id) {
            return Err(ValidationError::UnknownRole {
                user_id: user.id,
                role_id: assignment.role_id,
            });
        }
        let assignment = RoleAssignment {
            role_id: assignment.role_id,
            sales_point_id: Some(assignment.sales_point_id).filter(|sp| !sp.is_empty()),
        };
        if !roles.contains(&assignment) {
            roles.push(assignment);
        }
    }
    for (field, ids) in [
        ("sales_point_ids", &user.sales_point_ids),
        ("sub_terminal_ids", &user.sub_terminal_ids),
    ] {
        if ids.iter().any(String::is_empty) {
            return Err(ValidationError::EmptyReference {
                user_id: user.id,
                field,
            });
        }
    }
    Ok(UserRecord {
        id: user.id,
        ordinal: user.ordinal,
        first_name: user.first_name,
        last_name: user.last_name,
        email: user.email,
        active: user.active,
        credentials,
        roles,
        sales_point_ids: dedup(user.sales_point_ids),
        sub_terminal_ids: dedup(user.sub_terminal_ids),
    })
}

fn dedup(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids.dedup();
    ids
}

/// A complete, validated snapshot.
#[derive(Debug)]
pub struct ValidSnapshot {
    pub users: Vec<UserRecord>,
    pub roles: Vec<RoleRecord>,
}

/// Validates a whole snapshot: unique ids, known roles, well-formed hashes.
pub fn validate_snapshot(
    users: Vec<pb::User>,
    roles: Vec<pb::Role>,
    ingest: Ingest<'_>,
) -> Result<ValidSnapshot, ValidationError> {
    let roles = convert_roles(roles)?;
    let role_ids: HashSet<&str> = roles.iter().map(|r| r.id.as_str()).collect();
    let users = convert_users(users, ingest, &|id| role_ids.contains(id))?;
    Ok(ValidSnapshot { users, roles })
}

fn convert_roles(roles: Vec<pb::Role>) -> Result<Vec<RoleRecord>, ValidationError> {
    let mut seen = HashSet::with_capacity(roles.len());
    let mut out = Vec::with_capacity(roles.len());
    for (index, role) in roles.into_iter().enumerate() {
        let role = convert_role(role, index)?;
        if !seen.insert(role.id.clone()) {
            return Err(ValidationError::DuplicateRole(role.id));
        }
        out.push(role);
    }
    Ok(out)
}

fn convert_users(
    users: Vec<pb::User>,
    ingest: Ingest<'_>,
    role_known: &dyn Fn(&str) -> bool,
) -> Result<Vec<UserRecord>, ValidationError> {
    let mut seen = HashSet::with_capacity(users.len());
    let mut out = Vec::with_capacity(users.len());
    for (index, user) in users.into_iter().enumerate() {
        if !user.id.is_empty() && !seen.insert(user.id.clone()) {
            return Err(ValidationError::DuplicateUser(user.id));
        }
        out.push(convert_user(user, index, ingest, role_known)?);
    }
    Ok(out)
}

/// A validated incremental batch.
#[derive(Debug)]
pub struct ValidChanges {
    pub upsert_users: Vec<UserRecord>,
    pub delete_user_ids: Vec<String>,
    pub upsert_roles: Vec<RoleRecord>,
    pub delete_role_ids: Vec<String>,
}

/// Validates a batch against itself and the replica's roles (`role_in_replica`).
pub fn validate_changes(
    batch: pb::ChangeBatch,
    ingest: Ingest<'_>,
    role_in_replica: &dyn Fn(&str) -> bool,
) -> Result<ValidChanges, ValidationError> {
    let upsert_roles = convert_roles(batch.upsert_roles)?;
    let delete_role_ids = dedup(batch.delete_role_ids);
    let delete_user_ids = dedup(batch.delete_user_ids);
    for (what, ids) in [("role", &delete_role_ids), ("user", &delete_user_ids)] {
        if let Some(index) = ids.iter().position(String::is_empty) {
            return Err(ValidationError::EmptyId {
                what: if what == "role" {
                    "delete_role_ids"
                } else {
                    "delete_user_ids"
                },
                index,
            });
        }
    }
    if let Some(role) = upsert_roles
        .iter()
        .find(|r| delete_role_ids.binary_search(&r.id).is_ok())
    {
        return Err(ValidationError::UpsertAndDelete {
            what: "role",
            id: role.id.clone(),
        });
    }
    let upserted: HashSet<&str> = upsert_roles.iter().map(|r| r.id.as_str()).collect();
    let role_known = |id: &str| {
        upserted.contains(id)
            || (delete_role_ids
                .binary_search_by(|d| d.as_str().cmp(id))
                .is_err()
                && role_in_replica(id))
    };
    let upsert_users = convert_users(batch.upsert_users, ingest, &role_known)?;
    if let Some(user) = upsert_users
        .iter()
        .find(|u| delete_user_ids.binary_search(&u.id).is_ok())
    {
        return Err(ValidationError::UpsertAndDelete {
            what: "user",
            id: user.id.clone(),
        });
    }
    Ok(ValidChanges {
        upsert_users,
        delete_user_ids,
        upsert_roles,
        delete_role_ids,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use argon2::password_hash::SaltString;
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};

    fn phc(secret: &str) -> pb::Credential {
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
        let params = Params::new(64, 1, 1, Some(32)).unwrap();
        pb::Credential {
            phc: Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(secret.as_bytes(), &salt)
                .unwrap()
                .to_string(),
        }
    }

    fn user(id: &str, roles: &[&str]) -> pb::User {
        pb::User {
            id: id.into(),
            pin: Some(phc("1234")),
            roles: roles
                .iter()
                .map(|r| pb::RoleAssignment {
                    role_id: (*r).into(),
                    sales_point_id: String::new(),
                })
                .collect(),
            sales_point_ids: vec!["sp1".into()],
            active: true,
            ..Default::default()
        }
    }

    fn role(id: &str) -> pb::Role {
        pb::Role {
            id: id.into(),
            name: id.into(),
            rank: 1,
            permissions: vec![pb::Permission {
                name: "sale".into(),
                effect: pb::Effect::Allow as i32,
            }],
        }
    }

    fn ingest_ctx() -> (TerminalKey, CostLimits) {
        (TerminalKey::from_bytes([7; 32]), CostLimits::default())
    }

    #[test]
    fn valid_snapshot_converts() {
        let (key, limits) = ingest_ctx();
        let ingest = Ingest {
            key: &key,
            limits: &limits,
        };
        let snap = validate_snapshot(
            vec![user("u1", &["cashier"])],
            vec![role("cashier")],
            ingest,
        )
        .unwrap();
        assert_eq!(snap.users[0].credentials.len(), 1);
        assert_eq!(snap.users[0].credentials[0].kind, CredentialKind::Pin);
    }

    #[test]
    fn names_the_offending_record() {
        let (key, limits) = ingest_ctx();
        let ingest = Ingest {
            key: &key,
            limits: &limits,
        };
        let err =
            validate_snapshot(vec![user("u1", &[]), user("u1", &[])], vec![], ingest).unwrap_err();
        assert_eq!(err, ValidationError::DuplicateUser("u1".into()));

        let err = validate_snapshot(vec![user("u1", &["ghost"])], vec![], ingest).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user \"u1\": role assignment names unknown role \"ghost\""
        );

        let mut bad = user("u2", &[]);
        bad.keys.push(pb::Credential {
            phc: "$argon2id$garbage".into(),
        });
        let err = validate_snapshot(vec![user("u1", &[]), bad], vec![], ingest).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("user \"u2\": key[0] credential: "),
            "{err}"
        );

        let mut keyring = user("keyring", &[]);
        keyring.keys = vec![phc("k"); MAX_KEYS_PER_USER + 1];
        let err = validate_snapshot(vec![keyring], vec![], ingest).unwrap_err();
        assert!(
            matches!(err, ValidationError::TooManyKeys { count: 65, .. }),
            "{err}"
        );

        let err = validate_snapshot(vec![user("", &[])], vec![], ingest).unwrap_err();
        assert_eq!(err.to_string(), "user[0]: id is empty");

        let err = validate_snapshot(vec![], vec![role("r"), role("r")], ingest).unwrap_err();
        assert_eq!(err, ValidationError::DuplicateRole("r".into()));

        let mut no_effect = role("r");
        no_effect.permissions[0].effect = 0;
        let err = validate_snapshot(vec![], vec![no_effect], ingest).unwrap_err();
        assert!(matches!(err, ValidationError::MissingEffect { .. }));
    }

    #[test]
    fn changes_resolve_roles_against_batch_and_replica() {
        let (key, limits) = ingest_ctx();
        let ingest = Ingest {
            key: &key,
            limits: &limits,
        };
        let in_replica = |id: &str| id == "old";
        let batch = pb::ChangeBatch {
            upsert_users: vec![user("u1", &["old", "new"])],
            upsert_roles: vec![role("new")],
            ..Default::default()
        };
        assert!(validate_changes(batch, ingest, &in_replica).is_ok());

        let batch = pb::ChangeBatch {
            upsert_users: vec![user("u1", &["old"])],
            delete_role_ids: vec!["old".into()],
            ..Default::default()
        };
        let err = validate_changes(batch, ingest, &in_replica).unwrap_err();
        assert!(matches!(err, ValidationError::UnknownRole { .. }));

        let batch = pb::ChangeBatch {
            upsert_users: vec![user("u1", &[])],
            delete_user_ids: vec!["u1".into()],
            ..Default::default()
        };
        let err = validate_changes(batch, ingest, &in_replica).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user \"u1\" is both upserted and deleted in one batch"
        );
    }

    #[test]
    fn scheme_count_names_the_total_and_the_first_user_over_it() {
        let scheme = |salt: &[u8]| HashScheme {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
            output_len: 32,
            salt: salt.to_vec(),
        };
        let user_with = |id: &str, salts: &[&[u8]]| UserRecord {
            id: id.into(),
            ordinal: 1,
            first_name: String::new(),
            last_name: String::new(),
            email: String::new(),
            active: true,
            credentials: salts
                .iter()
                .map(|salt| StoredCredential {
                    kind: CredentialKind::Pin,
                    scheme: scheme(salt),
                    digest: [0; 32],
                })
                .collect(),
            roles: vec![],
            sales_point_ids: vec![],
            sub_terminal_ids: vec![],
        };
        let users = vec![
            user_with("a", &[b"salt-one-16bytes"]),
            user_with("b", &[b"salt-one-16bytes"]),
            user_with("c", &[b"salt-two-16bytes"]),
            user_with("d", &[b"salt-3-16-bytes!"]),
        ];
        assert_eq!(check_scheme_count(&[], &users, 3), Ok(()));
        assert_eq!(
            check_scheme_count(&[], &users, 2),
            Err(ValidationError::TooManySchemes {
                kind: "pin",
                count: 3,
                max: 2,
                user_id: "d".into()
            })
        );
        // Schemes kept by the replica count first: here "c" is already one too many.
        let kept = vec![(CredentialKind::Pin, scheme(b"kept-salt-16byte"))];
        let Err(ValidationError::TooManySchemes { count, user_id, .. }) =
            check_scheme_count(&kept, &users, 2)
        else {
            panic!("expected too many schemes");
        };
        assert_eq!((count, user_id.as_str()), (4, "c"));
        // Key schemes are counted on their own.
        let keys = vec![(CredentialKind::Key, scheme(b"key-salt-16bytes"))];
        assert_eq!(check_scheme_count(&keys, &users[..3], 2), Ok(()));
    }
}
