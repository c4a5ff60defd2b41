//! The design tillgate avoids: one salt per *user*. A PIN (or key id) alone does not say who
//! is typing, so a login must verify the typed secret against the candidates assigned to this
//! terminal, in first-match order, one argon2id evaluation each, until one matches.
//!
//! The baseline runs in the benchmark process with its candidates already in memory as parsed
//! PHC strings: no socket, no gRPC, no database query. That only flatters it.

use std::time::{Duration, Instant};

use argon2::{PasswordHash, PasswordVerifier};

use crate::data::{self, OUTPUT_LEN, Rng};

/// A candidate list with per-user salts; the secrets in `planted` are real hashes at the given
/// 1-based positions, everything else can never match.
pub struct Candidates {
    phcs: Vec<String>,
}

impl Candidates {
    pub fn new(n: usize, stream: u64, planted: &[(usize, &str)]) -> Candidates {
        let mut rng = Rng::new(data::SEED, stream);
        let phcs = (1..=n)
            .map(|position| {
                let mut salt = [0u8; 16];
                rng.fill(&mut salt);
                let mut output = [0u8; OUTPUT_LEN];
                match planted.iter().find(|(p, _)| *p == position) {
                    Some((_, secret)) => data::argon2()
                        .hash_password_into(secret.as_bytes(), &salt, &mut output)
                        .unwrap(),
                    None => rng.fill(&mut output),
                }
                data::phc(&salt, &output)
            })
            .collect();
        Candidates { phcs }
    }

    /// Verifies `secret` against the candidates in order until the first match (or `limit`
    /// candidates). Returns the 1-based position of the match and the time taken.
    pub fn login(&self, secret: &str, limit: usize) -> (Option<usize>, Duration) {
        let parsed: Vec<PasswordHash<'_>> = self
            .phcs
            .iter()
            .take(limit)
            .map(|phc| PasswordHash::new(phc).unwrap())
            .collect();
        let argon2 = data::argon2();
        let start = Instant::now();
        let found = parsed
            .iter()
            .position(|hash| argon2.verify_password(secret.as_bytes(), hash).is_ok())
            .map(|i| i + 1);
        (found, start.elapsed())
    }
}
