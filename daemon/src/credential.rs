//! Credential handling: parsing central's argon2id PHC strings, re-keying them with the
//! terminal key, and hashing a typed secret at login.
//!
//! Central hashes every PIN and key id with argon2id under one salt per account. The daemon
//! keeps HMAC-SHA256(terminal key, argon2 output) instead of the argon2 output itself, so a copied
//! replica without the key file (which never lives in the database) cannot be brute-forced.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::model::HashScheme;

pub const TERMINAL_KEY_LEN: usize = 32;
const MIN_SALT_LEN: usize = 8;
const MIN_OUTPUT_LEN: usize = 16;
const MAX_OUTPUT_LEN: usize = 64;

/// Upper bounds on the argon2 costs accepted from sync, so a bad record cannot make every login
/// allocate gigabytes or spin for minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostLimits {
    pub max_m_cost_kib: u32,
    pub max_t_cost: u32,
    pub max_p_cost: u32,
}

impl Default for CostLimits {
    fn default() -> Self {
        CostLimits {
            max_m_cost_kib: 262_144,
            max_t_cost: 16,
            max_p_cost: 4,
        }
    }
}

/// Why a PHC string was refused. Never carries the string itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PhcError {
    #[error("malformed PHC string ({0})")]
    Malformed(String),
    #[error("algorithm must be argon2id, found {0}")]
    Algorithm(String),
    #[error("argon2 version must be 19 (0x13)")]
    Version,
    #[error("missing salt")]
    MissingSalt,
    #[error("salt must be at least {MIN_SALT_LEN} bytes")]
    ShortSalt,
    #[error("missing hash")]
    MissingHash,
    #[error("hash output must be {MIN_OUTPUT_LEN} to {MAX_OUTPUT_LEN} bytes")]
    OutputLength,
    #[error("argon2 cost {name}={value} is above the limit {limit}")]
    CostTooHigh {
        name: &'static str,
        value: u32,
        limit: u32,
    },
}

/// An argon2id hash from central: the scheme and the raw output (secret-equivalent, so no Debug).
pub struct ParsedHash {
    pub scheme: HashScheme,
    pub output: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ParsedHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedHash")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// Parses and checks `$argon2id$v=19$m=…,t=…,p=…$salt$hash`.
pub fn parse_phc(phc: &str, limits: &CostLimits) -> Result<ParsedHash, PhcError> {
    let hash = PasswordHash::new(phc).map_err(|e| PhcError::Malformed(e.to_string()))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(PhcError::Algorithm(hash.algorithm.as_str().to_owned()));
    }
    if hash.version != Some(0x13) {
        return Err(PhcError::Version);
    }
    let params = Params::try_from(&hash).map_err(|e| PhcError::Malformed(e.to_string()))?;
    let salt = hash.salt.ok_or(PhcError::MissingSalt)?;
    let mut salt_buf = [0u8; 64];
    let salt = salt
        .decode_b64(&mut salt_buf)
        .map_err(|e| PhcError::Malformed(format!("salt: {e}")))?;
    if salt.len() < MIN_SALT_LEN {
        return Err(PhcError::ShortSalt);
    }
    let output = hash.hash.ok_or(PhcError::MissingHash)?;
    let output = output.as_bytes();
    if !(MIN_OUTPUT_LEN..=MAX_OUTPUT_LEN).contains(&output.len()) {
        return Err(PhcError::OutputLength);
    }
    for (name, value, limit) in [
        ("m", params.m_cost(), limits.max_m_cost_kib),
        ("t", params.t_cost(), limits.max_t_cost),
        ("p", params.p_cost(), limits.max_p_cost),
    ] {
        if value > limit {
            return Err(PhcError::CostTooHigh { name, value, limit });
        }
    }
    Ok(ParsedHash {
        scheme: HashScheme {
            m_cost: params.m_cost(),
            t_cost: params.t_cost(),
            p_cost: params.p_cost(),
            output_len: output.len() as u32,
            salt: salt.to_vec(),
        },
        output: Zeroizing::new(output.to_vec()),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("terminal key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("terminal key file {path} must hold exactly {TERMINAL_KEY_LEN} bytes, found {found}")]
    Length { path: PathBuf, found: usize },
}

/// The 32-byte secret that re-keys every stored credential. Lives in a 0600 file beside the
/// database, never inside it.
pub struct TerminalKey {
    bytes: Zeroizing<[u8; TERMINAL_KEY_LEN]>,
}

impl fmt::Debug for TerminalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TerminalKey(****)")
    }
}

impl TerminalKey {
    pub fn from_bytes(bytes: [u8; TERMINAL_KEY_LEN]) -> Self {
        TerminalKey {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// Loads the key, or creates it (mode 0600, fsynced) when the file does not exist.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(TerminalKey, bool), KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        match File::open(path) {
            Ok(mut file) => {
                let mut bytes = Zeroizing::new(Vec::new());
                file.read_to_end(&mut bytes).map_err(io)?;
                let key: [u8; TERMINAL_KEY_LEN] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| KeyFileError::Length {
                            path: path.to_owned(),
                            found: bytes.len(),
                        })?;
                let mode = file.metadata().map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "terminal key file is readable by others; it should be mode 0600");
                }
                Ok((TerminalKey::from_bytes(key), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; TERMINAL_KEY_LEN];
                rand::fill(&mut key);
                // Written whole to a temporary file, fsynced, then linked to the final name in one
                // step: a power cut leaves no key file or a complete one, never an empty one.
                let tmp = path.with_extension("key.tmp");
                let _ = std::fs::remove_file(&tmp);
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                file.write_all(&key).map_err(io)?;
                file.sync_all().map_err(io)?;
                drop(file);
                let linked = std::fs::hard_link(&tmp, path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {}
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Self::load_or_create(path);
                    }
                    Err(e) => return Err(io(e)),
                }
                if let Some(dir) = path.parent() {
                    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                }
                Ok((TerminalKey::from_bytes(key), true))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// HMAC-SHA256 of an argon2 output under this key: what the replica stores and looks up.
    pub fn rekey(&self, argon2_output: &[u8]) -> [u8; 32] {
        self.mac(b"credential\0", argon2_output)
    }

    /// A value that identifies the key without revealing it, stored in the replica so that a
    /// replica paired with a different key file is detected at start.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.mac(b"fingerprint\0", b"")
    }

    fn mac(&self, domain: &[u8], data: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.bytes.as_slice())
            .unwrap_or_else(|_| unreachable_hmac());
        mac.update(domain);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

#[allow(clippy::panic)]
fn unreachable_hmac() -> Hmac<Sha256> {
    panic!("HMAC-SHA256 accepts keys of any length")
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2: {0}")]
    Argon2(String),
}

/// Computes argon2id of a typed secret under a stored scheme.
pub fn argon2id(secret: &[u8], scheme: &HashScheme) -> Result<Zeroizing<Vec<u8>>, HashError> {
    argon2id_in(secret, scheme, &mut Vec::new())
}

/// Like [`argon2id`], with the m_cost KiB of working memory taken from `memory`, which grows to
/// the size the scheme needs and is kept for the next call. Reusing a few buffers keeps the
/// daemon's memory at `hashing.max_concurrent × m_cost`: allocating 19 MiB per evaluation on
/// whichever blocking thread runs it lets the allocator keep freed buffers per thread arena,
/// hundreds of MiB after a burst of logins.
pub fn argon2id_in(
    secret: &[u8],
    scheme: &HashScheme,
    memory: &mut Vec<Block>,
) -> Result<Zeroizing<Vec<u8>>, HashError> {
    let params = Params::new(
        scheme.m_cost,
        scheme.t_cost,
        scheme.p_cost,
        Some(scheme.output_len as usize),
    )
    .map_err(|e| HashError::Argon2(e.to_string()))?;
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut out = Zeroizing::new(vec![0u8; scheme.output_len as usize]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into_with_memory(secret, &scheme.salt, &mut out, memory.as_mut_slice())
        .map_err(|e| HashError::Argon2(e.to_string()))?;
    Ok(out)
}

/// The PHC string of an argon2id output under `scheme`: what central stores for a user, and
/// what [`parse_phc`] reads back. PHC's base64 is the standard alphabet without padding.
pub fn phc_string(scheme: &HashScheme, output: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        scheme.m_cost,
        scheme.t_cost,
        scheme.p_cost,
        b64.encode(&scheme.salt),
        b64.encode(output)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;

    fn phc_of(secret: &str, salt_b64: &str, params: Params) -> String {
        let salt = SaltString::from_b64(salt_b64).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(secret.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn small() -> Params {
        Params::new(64, 1, 1, Some(32)).unwrap()
    }

    #[test]
    fn phc_string_is_what_the_argon2_crate_writes() {
        let phc = phc_of("04A1B2C3D4", "c2FsdHNhbHRzYWx0", small());
        let parsed = parse_phc(&phc, &CostLimits::default()).unwrap();
        let output = argon2id(b"04A1B2C3D4", &parsed.scheme).unwrap();
        assert_eq!(phc_string(&parsed.scheme, &output), phc);
    }

    #[test]
    fn parses_and_recomputes() {
        let phc = phc_of("1234", "c2FsdHNhbHRzYWx0", small());
        let parsed = parse_phc(&phc, &CostLimits::default()).unwrap();
        assert_eq!(parsed.scheme.m_cost, 64);
        assert_eq!(parsed.scheme.salt, b"saltsaltsalt");
        let again = argon2id(b"1234", &parsed.scheme).unwrap();
        assert_eq!(again.as_slice(), parsed.output.as_slice());
        let other = argon2id(b"1235", &parsed.scheme).unwrap();
        assert_ne!(other.as_slice(), parsed.output.as_slice());
    }

    #[test]
    fn reused_memory_gives_the_same_hash() {
        let phc = phc_of("1234", "c2FsdHNhbHRzYWx0", small());
        let parsed = parse_phc(&phc, &CostLimits::default()).unwrap();
        let mut memory = Vec::new();
        for secret in [b"1235", b"1234", b"1234"] {
            let fresh = argon2id(secret, &parsed.scheme).unwrap();
            let reused = argon2id_in(secret, &parsed.scheme, &mut memory).unwrap();
            assert_eq!(fresh.as_slice(), reused.as_slice());
        }
        assert_eq!(memory.len(), 64, "one block per KiB of m_cost");
        let mut bigger = parsed.scheme.clone();
        bigger.m_cost = 128;
        argon2id_in(b"1234", &bigger, &mut memory).unwrap();
        assert_eq!(memory.len(), 128);
        let again = argon2id_in(b"1234", &parsed.scheme, &mut memory).unwrap();
        assert_eq!(again.as_slice(), parsed.output.as_slice());
    }

    #[test]
    fn rejects_bad_strings_without_echoing_them() {
        let limits = CostLimits::default();
        let err = parse_phc("not-a-phc", &limits).unwrap_err();
        assert!(matches!(err, PhcError::Malformed(_)));
        assert!(!err.to_string().contains("not-a-phc"));
        let argon2i = phc_of("1", "c2FsdHNhbHRzYWx0", small()).replacen("argon2id", "argon2i", 1);
        assert!(matches!(
            parse_phc(&argon2i, &limits),
            Err(PhcError::Algorithm(_))
        ));
        let heavy = phc_of(
            "1",
            "c2FsdHNhbHRzYWx0",
            Params::new(64, 20, 1, Some(32)).unwrap(),
        );
        assert!(matches!(
            parse_phc(&heavy, &limits),
            Err(PhcError::CostTooHigh { name: "t", .. })
        ));
        let no_hash = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0";
        assert_eq!(
            parse_phc(no_hash, &limits).unwrap_err(),
            PhcError::MissingHash
        );
    }

    #[test]
    fn rekey_depends_on_key() {
        let a = TerminalKey::from_bytes([1; 32]);
        let b = TerminalKey::from_bytes([2; 32]);
        assert_ne!(a.rekey(b"x"), b.rekey(b"x"));
        assert_eq!(a.rekey(b"x"), a.rekey(b"x"));
        assert_ne!(a.rekey(b"x"), a.fingerprint());
        assert_eq!(format!("{a:?}"), "TerminalKey(****)");
    }

    #[test]
    fn key_file_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("terminal.key");
        let (k1, created) = TerminalKey::load_or_create(&path).unwrap();
        assert!(created);
        assert!(
            !path.with_extension("key.tmp").exists(),
            "the temporary file is gone"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = TerminalKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.fingerprint(), k2.fingerprint());
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            TerminalKey::load_or_create(&path),
            Err(KeyFileError::Length { found: 5, .. })
        ));
    }
}
