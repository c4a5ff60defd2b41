//! Sync bearer tokens: 256-bit random values shown once at creation; only their SHA-256 digests
//! are kept (in the local store and in memory). Verification compares digests in constant time.

use std::sync::RwLock;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::store::{LocalStore, StoreError, TokenRow};

const TOKEN_PREFIX: &str = "tgs_";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token name must be 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    BadName,
    #[error("a token named \"{0}\" exists already; revoke it first")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The known token digests, mirrored from the local store.
#[derive(Debug, Default)]
pub struct TokenRegistry {
    rows: RwLock<Vec<TokenRow>>,
}

impl TokenRegistry {
    pub fn load(store: &LocalStore) -> Result<TokenRegistry, StoreError> {
        Ok(TokenRegistry {
            rows: RwLock::new(store.tokens()?),
        })
    }

    /// Creates a token and returns it; this is the only time its plaintext exists.
    pub fn create(&self, store: &LocalStore, name: &str) -> Result<Zeroizing<String>, TokenError> {
        if !valid_name(name) {
            return Err(TokenError::BadName);
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::fill(raw.as_mut_slice());
        let token = Zeroizing::new(format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(raw.as_slice())
        ));
        let row = TokenRow {
            name: name.to_owned(),
            digest: digest(&token),
            created_at: SystemTime::now(),
        };
        if !store.insert_token(&row)? {
            return Err(TokenError::Exists(name.to_owned()));
        }
        self.reload(store)?;
        Ok(token)
    }

    pub fn revoke(&self, store: &LocalStore, name: &str) -> Result<bool, TokenError> {
        let removed = store.delete_token(name)?;
        // Forget it in memory directly: a failed re-read must not leave a revoked token valid.
        match self.rows.write() {
            Ok(mut rows) => rows.retain(|row| row.name != name),
            Err(poisoned) => poisoned.into_inner().retain(|row| row.name != name),
        }
        Ok(removed)
    }

    pub fn list(&self) -> Vec<TokenRow> {
        self.rows
            .read()
            .map(|rows| rows.clone())
            .unwrap_or_default()
    }

    pub fn reload(&self, store: &LocalStore) -> Result<(), StoreError> {
        let rows = store.tokens()?;
        if let Ok(mut guard) = self.rows.write() {
            *guard = rows;
        }
        Ok(())
    }

    /// The name of the token matching `presented`, comparing against every digest in constant
    /// time so the timing says nothing about which or how much matched.
    pub fn verify(&self, presented: &str) -> Option<String> {
        let presented = digest(presented);
        let rows = self.rows.read().ok()?;
        let mut found = None;
        for row in rows.iter() {
            if bool::from(row.digest.ct_eq(&presented)) {
                found = Some(row.name.clone());
            }
        }
        found
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("central-eu.1"));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name(&"x".repeat(65)));
    }

    #[test]
    fn create_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.db");
        let (store, _) = LocalStore::open(&path, &dir.path().join("replica.db")).unwrap();
        let registry = TokenRegistry::load(&store).unwrap();
        let token = registry.create(&store, "central").unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(registry.verify(&token).as_deref(), Some("central"));
        assert_eq!(registry.verify("tgs_wrong"), None);
        assert!(matches!(
            registry.create(&store, "central"),
            Err(TokenError::Exists(_))
        ));
        // Only the digest is stored.
        let reloaded = TokenRegistry::load(&store).unwrap();
        assert_eq!(reloaded.verify(&token).as_deref(), Some("central"));
        assert!(registry.revoke(&store, "central").unwrap());
        assert_eq!(registry.verify(&token), None);
        let bytes = std::fs::read(&path).unwrap();
        let needle = token.as_bytes();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }
}
