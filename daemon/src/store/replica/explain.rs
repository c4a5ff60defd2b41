//! The facts `explain` and `collisions` work on: a user's row, access and credentials, and the
//! users sharing a credential digest.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension};

use super::read::assigned_here_column;
use super::{Replica, StoreError};
use crate::explain::{HeldCredential, Person, UserFacts};
use crate::model::{CredentialKind, Terminal};

fn kind_from_db(value: i64) -> CredentialKind {
    if value == CredentialKind::Pin.as_db() {
        CredentialKind::Pin
    } else {
        CredentialKind::Key
    }
}

fn holders(
    conn: &Connection,
    terminal: &Terminal,
    kind: i64,
    digest: &[u8],
) -> Result<Vec<Person>, rusqlite::Error> {
    let assigned_here = assigned_here_column();
    let sql = format!(
        "SELECT DISTINCT u.id, u.first_name, u.last_name, u.ordinal, u.active, {assigned_here}
         FROM credentials c JOIN users u ON u.id = c.user_id
         WHERE c.kind = ?3 AND c.digest = ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        (
            &terminal.sales_point_id,
            &terminal.sub_terminal_id,
            kind,
            digest,
        ),
        person,
    )?;
    rows.collect()
}

fn person(row: &rusqlite::Row<'_>) -> Result<Person, rusqlite::Error> {
    Ok(Person {
        user_id: row.get(0)?,
        first_name: row.get(1)?,
        last_name: row.get(2)?,
        ordinal: row.get(3)?,
        active: row.get(4)?,
        assigned_here: row.get(5)?,
    })
}

impl Replica {
    /// The user's row, access and roles here; None when the replica does not hold the user.
    pub fn user_facts(
        &self,
        user_id: &str,
        terminal: &Terminal,
    ) -> Result<Option<UserFacts>, StoreError> {
        let Some(profile) = self.user_profile(user_id, terminal)? else {
            return Ok(None);
        };
        let conn = self.reader()?;
        let row = conn
            .prepare_cached(
                "SELECT u.ordinal,
                        EXISTS (SELECT 1 FROM user_access a WHERE a.user_id = u.id AND a.kind = 1 AND a.target = ?1),
                        EXISTS (SELECT 1 FROM user_access a WHERE a.user_id = u.id AND a.kind = 2 AND a.target = ?2)
                 FROM users u WHERE u.id = ?3",
            )?
            .query_row(
                (&terminal.sales_point_id, &terminal.sub_terminal_id, user_id),
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, bool>(1)?, row.get::<_, bool>(2)?)),
            )
            .optional()?;
        // Deleted between the two reads (a sync in between): report it as absent.
        let Some((ordinal, via_sales_point, via_sub_terminal)) = row else {
            return Ok(None);
        };
        Ok(Some(UserFacts {
            person: Person {
                user_id: profile.user_id,
                first_name: profile.first_name,
                last_name: profile.last_name,
                ordinal,
                active: profile.active,
                assigned_here: profile.assigned_here,
            },
            assigned_to_sales_point: via_sales_point,
            assigned_to_sub_terminal: via_sub_terminal,
            role_ids: profile.role_ids,
            permissions: profile.permissions,
        }))
    }

    /// The user's credentials (PIN first, then keys in the order central sent them), each with
    /// every user holding the same digest.
    pub fn held_credentials(
        &self,
        user_id: &str,
        terminal: &Terminal,
    ) -> Result<Vec<HeldCredential>, StoreError> {
        let conn = self.reader()?;
        let own: Vec<(i64, Vec<u8>)> = conn
            .prepare_cached(
                "SELECT kind, digest FROM credentials WHERE user_id = ?1 ORDER BY kind, rowid",
            )?
            .query_map([user_id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut keys = 0;
        let mut out = Vec::with_capacity(own.len());
        for (kind, digest) in own {
            let kind_enum = kind_from_db(kind);
            let index = match kind_enum {
                CredentialKind::Pin => 0,
                CredentialKind::Key => {
                    keys += 1;
                    keys
                }
            };
            out.push(HeldCredential {
                kind: kind_enum,
                index,
                holders: holders(&conn, terminal, kind, &digest)?,
            });
        }
        Ok(out)
    }

    /// Every group of two or more users holding an equal credential (one group per digest).
    pub fn shared_credentials(
        &self,
        terminal: &Terminal,
    ) -> Result<Vec<(CredentialKind, Vec<Person>)>, StoreError> {
        let conn = self.reader()?;
        let assigned_here = assigned_here_column();
        let sql = format!(
            "SELECT DISTINCT u.id, u.first_name, u.last_name, u.ordinal, u.active, {assigned_here},
                    c.kind, c.digest
             FROM credentials c JOIN users u ON u.id = c.user_id
             WHERE (c.kind, c.digest) IN (SELECT kind, digest FROM credentials
                                          GROUP BY kind, digest HAVING COUNT(DISTINCT user_id) > 1)"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            (&terminal.sales_point_id, &terminal.sub_terminal_id),
            |row| {
                Ok((
                    row.get::<_, i64>(6)?,
                    row.get::<_, Vec<u8>>(7)?,
                    person(row)?,
                ))
            },
        )?;
        let mut groups: BTreeMap<(i64, Vec<u8>), Vec<Person>> = BTreeMap::new();
        for row in rows {
            let (kind, digest, person) = row?;
            groups.entry((kind, digest)).or_default().push(person);
        }
        Ok(groups
            .into_iter()
            .map(|((kind, _), people)| (kind_from_db(kind), people))
            .collect())
    }
}
