//! Domain types of the replica, independent of protobuf and SQLite.

use std::fmt;

/// Position of the replica in central's history. `(0, 0)` is the empty replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    pub epoch: u64,
    pub revision: u64,
}

impl Cursor {
    pub const EMPTY: Cursor = Cursor {
        epoch: 0,
        revision: 0,
    };

    /// An empty replica has never received a snapshot.
    pub fn needs_snapshot(self) -> bool {
        self == Self::EMPTY
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.revision)
    }
}

/// Which secret a credential holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CredentialKind {
    Pin,
    Key,
}

impl CredentialKind {
    pub fn as_db(self) -> i64 {
        match self {
            CredentialKind::Pin => 1,
            CredentialKind::Key => 2,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CredentialKind::Pin => "pin",
            CredentialKind::Key => "key",
        }
    }
}

/// Whether a role permits or forbids a permission. A denial beats a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_db(self) -> i64 {
        match self {
            Effect::Allow => 1,
            Effect::Deny => 2,
        }
    }

    pub fn from_db(value: i64) -> Option<Effect> {
        match value {
            1 => Some(Effect::Allow),
            2 => Some(Effect::Deny),
            _ => None,
        }
    }
}

/// The argon2id cost parameters and salt a credential was hashed with. Credentials that share
/// one (normally all of an account's) need a single argon2 evaluation per login attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashScheme {
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub output_len: u32,
    pub salt: Vec<u8>,
}

/// A credential as stored: HMAC-SHA256(terminal key, argon2id output) plus what is needed to
/// recompute the argon2id output from a typed secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub kind: CredentialKind,
    pub scheme: HashScheme,
    pub digest: [u8; 32],
}

impl fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCredential")
            .field("kind", &self.kind)
            .field("m_cost", &self.scheme.m_cost)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignment {
    pub role_id: String,
    /// `None`: account-wide; `Some(id)`: only at that Sales Point.
    pub sales_point_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub ordinal: i64,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub active: bool,
    pub credentials: Vec<StoredCredential>,
    pub roles: Vec<RoleAssignment>,
    pub sales_point_ids: Vec<String>,
    pub sub_terminal_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePermission {
    pub name: String,
    pub effect: Effect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRecord {
    pub id: String,
    pub name: String,
    pub rank: i64,
    pub permissions: Vec<RolePermission>,
}

/// The terminal this daemon serves, from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal {
    pub sales_point_id: String,
    pub sub_terminal_id: Option<String>,
}

impl Terminal {
    /// A user is assigned here through this Sales Point (all its terminals) or this sub-terminal.
    pub fn admits(&self, sales_point_ids: &[String], sub_terminal_ids: &[String]) -> bool {
        sales_point_ids.contains(&self.sales_point_id)
            || self
                .sub_terminal_id
                .as_ref()
                .is_some_and(|sub| sub_terminal_ids.contains(sub))
    }
}
