//! The readable account export that `tillctl push` reads (users with plaintext PINs and key ids,
//! as an admin export holds them), and its conversion into sync messages. Secrets are hashed
//! here, client-side, with argon2id under one salt per account; only PHC strings leave.

use std::fmt;

use argon2::password_hash::SaltString;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tillgate_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::ClientError;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportCursor {
    pub epoch: u64,
    pub revision: u64,
}

impl From<ExportCursor> for pb::Cursor {
    fn from(c: ExportCursor) -> Self {
        pb::Cursor {
            epoch: c.epoch,
            revision: c.revision,
        }
    }
}

/// Hashing settings shared by snapshot and change exports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The account (tenant) id; the salt is derived from it unless `account_salt` is given.
    pub id: String,
    /// Base64 (PHC alphabet, no padding) salt, 8 to 48 bytes once decoded.
    #[serde(default)]
    pub account_salt: Option<String>,
    /// argon2id costs; the argon2 crate's defaults (19 MiB, t=2, p=1) when absent.
    #[serde(default)]
    pub m_cost_kib: Option<u32>,
    #[serde(default)]
    pub t_cost: Option<u32>,
    #[serde(default)]
    pub p_cost: Option<u32>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportUser {
    pub id: String,
    pub ordinal: i64,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub pin: Option<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub roles: Vec<ExportAssignment>,
    #[serde(default)]
    pub sales_points: Vec<String>,
    #[serde(default)]
    pub sub_terminals: Vec<String>,
}

impl fmt::Debug for ExportUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportUser")
            .field("id", &self.id)
            .field("has_pin", &self.pin.is_some())
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportAssignment {
    pub role: String,
    /// Absent: account-wide.
    #[serde(default)]
    pub sales_point: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRole {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub rank: i64,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `tillctl push snapshot FILE.json`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotExport {
    pub account: Account,
    pub cursor: ExportCursor,
    #[serde(default)]
    pub roles: Vec<ExportRole>,
    #[serde(default)]
    pub users: Vec<ExportUser>,
}

/// `tillctl push changes FILE.json`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesExport {
    pub account: Account,
    pub base: ExportCursor,
    pub new_revision: u64,
    #[serde(default)]
    pub upsert_roles: Vec<ExportRole>,
    #[serde(default)]
    pub delete_role_ids: Vec<String>,
    #[serde(default)]
    pub upsert_users: Vec<ExportUser>,
    #[serde(default)]
    pub delete_user_ids: Vec<String>,
}

/// Hashes secrets the way central does: argon2id, one salt for the whole account.
pub struct AccountHasher {
    salt: SaltString,
    argon2: Argon2<'static>,
}

impl fmt::Debug for AccountHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountHasher").finish_non_exhaustive()
    }
}

impl AccountHasher {
    pub fn new(account: &Account) -> Result<AccountHasher, ClientError> {
        let salt = match &account.account_salt {
            Some(b64) => SaltString::from_b64(b64)
                .map_err(|e| ClientError::Export(format!("account.account_salt: {e}")))?,
            None => {
                // Salts are public; what matters is that each account has its own.
                let digest = Sha256::digest(format!("tillgate account salt\0{}", account.id));
                SaltString::encode_b64(&digest[..16])
                    .map_err(|e| ClientError::Export(format!("account salt: {e}")))?
            }
        };
        let defaults = Params::default();
        let params = Params::new(
            account.m_cost_kib.unwrap_or(defaults.m_cost()),
            account.t_cost.unwrap_or(defaults.t_cost()),
            account.p_cost.unwrap_or(defaults.p_cost()),
            None,
        )
        .map_err(|e| ClientError::Export(format!("account argon2 costs: {e}")))?;
        Ok(AccountHasher {
            salt,
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        })
    }

    /// The PHC string of one secret.
    pub fn hash(&self, secret: &str) -> Result<String, ClientError> {
        self.argon2
            .hash_password(secret.as_bytes(), &self.salt)
            .map(|h| h.to_string())
            .map_err(|e| ClientError::Export(format!("argon2: {e}")))
    }
}

fn user_to_pb(user: ExportUser, hasher: &AccountHasher) -> Result<pb::User, ClientError> {
    let context = |e: ClientError| ClientError::Export(format!("user {:?}: {e}", user.id));
    let pin = match &user.pin {
        Some(pin) => {
            let pin = Zeroizing::new(pin.clone());
            Some(pb::Credential {
                phc: hasher.hash(&pin).map_err(context)?,
            })
        }
        None => None,
    };
    let keys = user
        .keys
        .iter()
        .map(|key| hasher.hash(key).map(|phc| pb::Credential { phc }))
        .collect::<Result<Vec<_>, _>>()
        .map_err(context)?;
    Ok(pb::User {
        id: user.id,
        ordinal: user.ordinal,
        first_name: user.first_name,
        last_name: user.last_name,
        email: user.email,
        active: user.active,
        pin,
        keys,
        roles: user
            .roles
            .into_iter()
            .map(|a| pb::RoleAssignment {
                role_id: a.role,
                sales_point_id: a.sales_point.unwrap_or_default(),
            })
            .collect(),
        sales_point_ids: user.sales_points,
        sub_terminal_ids: user.sub_terminals,
    })
}

fn role_to_pb(role: ExportRole) -> pb::Role {
    let permission = |effect: pb::Effect| {
        move |name: String| pb::Permission {
            name,
            effect: effect as i32,
        }
    };
    let mut permissions: Vec<pb::Permission> = role
        .allow
        .into_iter()
        .map(permission(pb::Effect::Allow))
        .collect();
    permissions.extend(role.deny.into_iter().map(permission(pb::Effect::Deny)));
    pb::Role {
        id: role.id,
        name: role.name,
        rank: role.rank,
        permissions,
    }
}

fn users_to_pb(
    users: Vec<ExportUser>,
    hasher: &AccountHasher,
) -> Result<Vec<pb::User>, ClientError> {
    users.into_iter().map(|u| user_to_pb(u, hasher)).collect()
}

/// A snapshot ready to send: target cursor, users with hashed credentials, roles.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub target: pb::Cursor,
    pub users: Vec<pb::User>,
    pub roles: Vec<pb::Role>,
}

/// serde_json's type errors quote the offending value ("invalid type: integer `1234`"), and
/// in an export that value may be a PIN or a key id: say where and what kind of problem only.
fn export_error(what: &str, e: &serde_json::Error) -> ClientError {
    let message = e.to_string();
    let quotes_a_value = ["invalid type", "invalid value", "invalid length"]
        .iter()
        .any(|m| message.contains(m));
    if quotes_a_value {
        ClientError::Export(format!(
            "{what}: a value has the wrong type or form at line {} column {} (value not shown: it may be a secret)",
            e.line(),
            e.column()
        ))
    } else {
        ClientError::Export(format!("{what}: {message}"))
    }
}

impl SnapshotExport {
    pub fn parse(json: &str) -> Result<SnapshotExport, ClientError> {
        serde_json::from_str(json).map_err(|e| export_error("snapshot export", &e))
    }

    pub fn into_snapshot(self) -> Result<Snapshot, ClientError> {
        let hasher = AccountHasher::new(&self.account)?;
        Ok(Snapshot {
            target: self.cursor.into(),
            users: users_to_pb(self.users, &hasher)?,
            roles: self.roles.into_iter().map(role_to_pb).collect(),
        })
    }
}

impl ChangesExport {
    pub fn parse(json: &str) -> Result<ChangesExport, ClientError> {
        serde_json::from_str(json).map_err(|e| export_error("changes export", &e))
    }

    pub fn into_batch(self) -> Result<pb::ChangeBatch, ClientError> {
        let hasher = AccountHasher::new(&self.account)?;
        Ok(pb::ChangeBatch {
            base: Some(self.base.into()),
            new_revision: self.new_revision,
            upsert_users: users_to_pb(self.upsert_users, &hasher)?,
            delete_user_ids: self.delete_user_ids,
            upsert_roles: self.upsert_roles.into_iter().map(role_to_pb).collect(),
            delete_role_ids: self.delete_role_ids,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const SMALL: &str = r#"{"id": "acme", "m_cost_kib": 64, "t_cost": 1, "p_cost": 1}"#;

    #[test]
    fn one_salt_per_account_and_no_plaintext() {
        let json = format!(
            r#"{{"account": {SMALL}, "cursor": {{"epoch": 1, "revision": 2}},
                "roles": [{{"id": "cashier", "allow": ["sale"], "deny": ["drawer"]}}],
                "users": [
                  {{"id": "a", "ordinal": 1, "pin": "1234", "keys": ["K1"], "sales_points": ["sp"]}},
                  {{"id": "b", "ordinal": 2, "pin": "1234", "roles": [{{"role": "cashier"}}]}}
                ]}}"#
        );
        let snapshot = SnapshotExport::parse(&json)
            .unwrap()
            .into_snapshot()
            .unwrap();
        let a = snapshot.users[0].pin.as_ref().unwrap().phc.clone();
        let b = snapshot.users[1].pin.as_ref().unwrap().phc.clone();
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert_eq!(a, b, "same PIN under the account salt gives the same hash");
        let encoded = format!("{:?}", snapshot.users);
        assert!(!encoded.contains("1234") && !encoded.contains("\"K1\""));
        assert_eq!(snapshot.roles[0].permissions.len(), 2);
    }

    #[test]
    fn type_errors_never_quote_the_value() {
        let err = SnapshotExport::parse(
            r#"{"account": {"id": "a"}, "cursor": {"epoch": 1, "revision": 1},
                "users": [{"id": "u", "ordinal": 1, "pin": 918273, "keys": "0001234567"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            !err.contains("918273") && !err.contains("0001234567"),
            "{err}"
        );
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = SnapshotExport::parse(
            r#"{"account": {"id": "a"}, "cursor": {"epoch": 1, "revision": 1}, "userz": []}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `userz`"), "{err}");
    }
}
