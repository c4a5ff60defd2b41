//! Lookups for login and status.

use std::sync::atomic::Ordering;

use rusqlite::OptionalExtension;
use rusqlite::types::Value;

use super::{Replica, StoreError};
use crate::model::{CredentialKind, Effect, HashScheme, Terminal};
use crate::resolve::{Candidate, assignment_applies, effective_permissions, may_log_in};

/// What a session shows of a user at this terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    pub user_id: String,
    pub first_name: String,
    pub last_name: String,
    pub active: bool,
    pub assigned_here: bool,
    /// Roles that apply here (account-wide and this Sales Point's), sorted.
    pub role_ids: Vec<String>,
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub users: u64,
    pub roles: u64,
    /// Active users assigned to this terminal.
    pub users_at_terminal: u64,
}

/// The access rows (`a`) that put a user at this terminal: this Sales Point (?1) or this
/// sub-terminal (?2). The SQL only reports this fact; whether the user may log in is decided by
/// `resolve::may_log_in`.
const ACCESS_HERE: &str = "((a.kind = 1 AND a.target = ?1) OR (a.kind = 2 AND a.target = ?2))";

/// Whether user `u` is assigned here, as a column (one index probe per user).
pub(super) fn assigned_here_column() -> String {
    format!("EXISTS (SELECT 1 FROM user_access a WHERE a.user_id = u.id AND {ACCESS_HERE})")
}

/// The key of the `credentials_by_scheme` index, in order.
const SCHEME_KEY: [&str; 6] = ["kind", "m_cost", "t_cost", "p_cost", "output_len", "salt"];
const SCHEME_COLUMNS: &str = "kind, m_cost, t_cost, p_cost, output_len, salt";

/// Every distinct (kind, costs, salt) of the credentials in `conn`, walked through the
/// `credentials_by_scheme` index: each step seeks the next key after the previous one (longest
/// equal prefix first), so the cost is a few index seeks per distinct scheme, not a scan of every
/// credential (a `SELECT DISTINCT` reads all 200k index entries of a 100k-user replica: ~20 ms
/// inside every delta's transaction).
pub(super) fn distinct_schemes(
    conn: &rusqlite::Connection,
) -> Result<Vec<(CredentialKind, HashScheme)>, rusqlite::Error> {
    let mut found = Vec::new();
    let mut current = conn
        .prepare_cached(&format!(
            "SELECT {SCHEME_COLUMNS} FROM credentials ORDER BY {SCHEME_COLUMNS} LIMIT 1"
        ))?
        .query_row([], scheme_row)
        .optional()?;
    while let Some(scheme) = current {
        current = None;
        for equal in (0..SCHEME_KEY.len()).rev() {
            let condition: Vec<String> = SCHEME_KEY[..equal]
                .iter()
                .enumerate()
                .map(|(i, column)| format!("{column} = ?{}", i + 1))
                .chain([format!("{} > ?{}", SCHEME_KEY[equal], equal + 1)])
                .collect();
            let sql = format!(
                "SELECT {SCHEME_COLUMNS} FROM credentials WHERE {} ORDER BY {SCHEME_COLUMNS} LIMIT 1",
                condition.join(" AND ")
            );
            let values = scheme_values(&scheme);
            current = conn
                .prepare_cached(&sql)?
                .query_row(
                    rusqlite::params_from_iter(values.iter().take(equal + 1)),
                    scheme_row,
                )
                .optional()?;
            if current.is_some() {
                break;
            }
        }
        found.push(scheme);
    }
    Ok(found)
}

fn scheme_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(CredentialKind, HashScheme)> {
    let kind = if row.get::<_, i64>(0)? == CredentialKind::Pin.as_db() {
        CredentialKind::Pin
    } else {
        CredentialKind::Key
    };
    Ok((
        kind,
        HashScheme {
            m_cost: row.get(1)?,
            t_cost: row.get(2)?,
            p_cost: row.get(3)?,
            output_len: row.get(4)?,
            salt: row.get(5)?,
        },
    ))
}

fn scheme_values((kind, scheme): &(CredentialKind, HashScheme)) -> [Value; 6] {
    [
        Value::Integer(kind.as_db()),
        Value::Integer(scheme.m_cost.into()),
        Value::Integer(scheme.t_cost.into()),
        Value::Integer(scheme.p_cost.into()),
        Value::Integer(scheme.output_len.into()),
        Value::Blob(scheme.salt.clone()),
    ]
}

impl Replica {
    /// The distinct (salt, costs) among credentials of `kind`: one argon2 evaluation each per
    /// login attempt (normally one, as central uses one salt per account).
    pub fn hash_schemes(&self, kind: CredentialKind) -> Result<Vec<HashScheme>, StoreError> {
        let cached = self
            .schemes
            .read()
            .map_err(|_| StoreError::Poisoned)?
            .clone();
        let all = match cached {
            Some(all) => all,
            None => {
                let generation = self.schemes_generation.load(Ordering::SeqCst);
                let all = self.load_schemes()?;
                let mut cache = self.schemes.write().map_err(|_| StoreError::Poisoned)?;
                // A write since the load may have changed the schemes: use, don't cache.
                if self.schemes_generation.load(Ordering::SeqCst) == generation {
                    *cache = Some(all.clone());
                }
                all
            }
        };
        Ok(all
            .into_iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, scheme)| scheme)
            .collect())
    }

    /// The distinct (kind, costs, salt) of every credential (see [`distinct_schemes`]).
    fn load_schemes(&self) -> Result<Vec<(CredentialKind, HashScheme)>, StoreError> {
        let conn = self.reader()?;
        Ok(distinct_schemes(&conn)?)
    }

    /// Users holding a credential of `kind` with this digest, with what decides eligibility.
    pub fn candidates(
        &self,
        kind: CredentialKind,
        digest: &[u8; 32],
        terminal: &Terminal,
    ) -> Result<Vec<Candidate>, StoreError> {
        let conn = self.reader()?;
        let sql = format!(
            "SELECT DISTINCT u.id, u.ordinal, u.active, {}
             FROM credentials c JOIN users u ON u.id = c.user_id
             WHERE c.kind = ?3 AND c.digest = ?4",
            assigned_here_column()
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            (
                &terminal.sales_point_id,
                &terminal.sub_terminal_id,
                kind.as_db(),
                digest.as_slice(),
            ),
            |row| {
                Ok(Candidate {
                    user_id: row.get(0)?,
                    ordinal: row.get(1)?,
                    active: row.get(2)?,
                    assigned_here: row.get(3)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The user's names, roles and effective permissions at this terminal.
    pub fn user_profile(
        &self,
        user_id: &str,
        terminal: &Terminal,
    ) -> Result<Option<UserProfile>, StoreError> {
        let conn = self.reader()?;
        let sql = format!(
            "SELECT u.first_name, u.last_name, u.active, {} FROM users u WHERE u.id = ?3",
            assigned_here_column()
        );
        let head = conn
            .prepare_cached(&sql)?
            .query_row(
                (&terminal.sales_point_id, &terminal.sub_terminal_id, user_id),
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, bool>(2)?,
                        row.get::<_, bool>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((first_name, last_name, active, assigned_here)) = head else {
            return Ok(None);
        };
        let mut stmt = conn.prepare_cached(
            "SELECT ur.role_id, ur.sales_point_id, rp.permission, rp.effect
             FROM user_roles ur LEFT JOIN role_permissions rp ON rp.role_id = ur.role_id
             WHERE ur.user_id = ?1",
        )?;
        let rows = stmt
            .query_map([user_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let applicable: Vec<_> = rows
            .iter()
            .filter(|(_, scope, _, _)| {
                let scope = Some(scope.as_str()).filter(|s| !s.is_empty());
                assignment_applies(scope, &terminal.sales_point_id)
            })
            .collect();
        let mut role_ids: Vec<String> = applicable.iter().map(|(r, _, _, _)| r.clone()).collect();
        role_ids.sort();
        role_ids.dedup();
        let grants = applicable.iter().filter_map(|(_, _, permission, effect)| {
            Some((permission.as_deref()?, Effect::from_db((*effect)?)?))
        });
        Ok(Some(UserProfile {
            user_id: user_id.to_owned(),
            first_name,
            last_name,
            active,
            assigned_here,
            role_ids,
            permissions: effective_permissions(grants).into_iter().collect(),
        }))
    }

    pub fn counts(&self, terminal: &Terminal) -> Result<Counts, StoreError> {
        let conn = self.reader()?;
        let users: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))?;
        let roles: i64 = conn.query_row("SELECT COUNT(*) FROM roles", [], |row| row.get(0))?;
        // The users assigned here, counted per `active`, driven from the access index (only
        // this terminal's users are visited, not every user with a per-user probe).
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT u.active, COUNT(*) FROM users u
             WHERE u.id IN (SELECT a.user_id FROM user_access a WHERE {ACCESS_HERE})
             GROUP BY u.active"
        ))?;
        let groups = stmt
            .query_map(
                (&terminal.sales_point_id, &terminal.sub_terminal_id),
                |row| Ok((row.get::<_, bool>(0)?, row.get::<_, i64>(1)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let at_terminal: i64 = groups
            .into_iter()
            .filter(|(active, _)| may_log_in(*active, true).is_ok())
            .map(|(_, n)| n)
            .sum();
        Ok(Counts {
            users: users as u64,
            roles: roles as u64,
            users_at_terminal: at_terminal as u64,
        })
    }
}
