//! Sync token rows: name, SHA-256 digest, creation time. The token itself is never stored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::TransactionBehavior;

use super::{LocalStore, StoreError};
use crate::store::sqlite::unix_millis;

#[derive(Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub name: String,
    pub digest: [u8; 32],
    pub created_at: SystemTime,
}

impl std::fmt::Debug for TokenRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRow")
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    /// Inserts a token; returns false if the name is taken.
    pub fn insert_token(&self, row: &TokenRow) -> Result<bool, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO sync_tokens (name, digest, created_at) VALUES (?1, ?2, ?3)",
            (
                &row.name,
                row.digest.as_slice(),
                unix_millis(row.created_at),
            ),
        )?;
        tx.commit()?;
        Ok(inserted == 1)
    }

    pub fn delete_token(&self, name: &str) -> Result<bool, StoreError> {
        let conn = self.writer()?;
        Ok(conn.execute("DELETE FROM sync_tokens WHERE name = ?1", [name])? == 1)
    }

    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let conn = self.reader()?;
        let mut stmt =
            conn.prepare("SELECT name, digest, created_at FROM sync_tokens ORDER BY name")?;
        let rows = stmt.query_map([], |row| {
            let digest: Vec<u8> = row.get(1)?;
            let created: u64 = row.get(2)?;
            Ok((row.get::<_, String>(0)?, digest, created))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, digest, created) = row?;
            let digest: [u8; 32] =
                digest
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::BadMeta {
                        key: "sync_tokens.digest",
                        value: name.clone(),
                    })?;
            out.push(TokenRow {
                name,
                digest,
                created_at: UNIX_EPOCH + Duration::from_millis(created),
            });
        }
        Ok(out)
    }
}
