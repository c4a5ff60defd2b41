//! The deterministic data generator: users, roles and credentials for any replica size.
//!
//! User `i` is generated from its own PRNG stream (seed and index), so the first 1,000 users
//! are the same in the 1k, 10k and 100k replicas and the login targets exist in all three.
//!
//! Credentials are argon2id PHC strings at the production costs under one account salt. Only
//! the credentials the benchmark logs in with are real hashes; every other one carries the
//! account salt and costs with pseudo-random output bytes (equal PINs get equal bytes, as real
//! hashes would). For the daemon they cost exactly the same to parse, re-key, store and look up;
//! they can never match a typed secret. Hashing all 200,000 credentials of the 100k replica for
//! real would take hours, and hashing all 10^4 PIN values would take minutes.

use std::collections::{BTreeMap, HashMap};

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use tillgate_client::export::Snapshot;
use tillgate_client::proto as pb;

pub const SEED: u64 = 0x7111_6a7e_0006_2026;
/// This terminal's Sales Point (the harness's config uses the same id).
pub const HERE: &str = tillgate_tests::SALES_POINT;
/// One user in `TERMINAL_EVERY` is assigned to this terminal: 10,000 of 100,000.
pub const TERMINAL_EVERY: usize = 10;
pub const OTHER_SALES_POINTS: u64 = 2_000;
pub const ROLES: usize = 24;
pub const PERMISSIONS_PER_ROLE: usize = 6;
/// Login targets are drawn from the first `TARGET_POOL` users so they exist at every size.
pub const TARGET_POOL: usize = 1_000;
pub const OUTPUT_LEN: usize = 32;

/// The production costs: the argon2 crate's defaults (m=19456 KiB, t=2, p=1), as `tillctl`
/// and the README use.
pub fn production_params() -> Params {
    Params::default()
}

pub fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, production_params())
}

/// SplitMix64: small, fast, and stable across crate versions (the data must not change when a
/// dependency does).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

const FIRST: &[&str] = &[
    "Anna", "Ben", "Chloé", "Deniz", "Emil", "Fatma", "Greta", "Hugo", "Ines", "Jonas", "Kai",
    "Lena", "Mats", "Nora", "Oskar", "Pia",
];
const LAST: &[&str] = &[
    "Berg", "Costa", "Dahl", "Eriksen", "Fischer", "García", "Holm", "Ivanova", "Jensen", "Klein",
    "Lund", "Moreau", "Novak", "Olsen", "Petit", "Quist",
];

/// One generated user, in plaintext: what an admin export would hold.
#[derive(Debug, Clone)]
pub struct GenUser {
    pub index: usize,
    pub id: String,
    pub ordinal: i64,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub active: bool,
    pub pin: String,
    pub key: String,
    /// Account-wide role, and a role scoped to the user's first Sales Point.
    pub roles: [(String, String); 2],
    pub sales_points: [String; 3],
}

pub fn role_id(r: usize) -> String {
    format!("role-{r:02}")
}

pub fn user(index: usize) -> GenUser {
    let mut rng = Rng::new(SEED, index as u64 + 1);
    let first = FIRST[rng.below(FIRST.len() as u64) as usize];
    let last = LAST[rng.below(LAST.len() as u64) as usize];
    let ordinal = rng.below(1_000_000_000) as i64;
    let active = rng.below(50) != 0;
    let pin = format!("{:04}", rng.below(10_000));
    let key = format!("{:016X}", rng.next_u64());
    let mut others = [0u64; 3];
    for slot in 0..3 {
        loop {
            let sp = rng.below(OTHER_SALES_POINTS);
            if !others[..slot].contains(&sp) {
                others[slot] = sp;
                break;
            }
        }
    }
    let mut sales_points = others.map(|sp| format!("sp-{sp:04}"));
    if index.is_multiple_of(TERMINAL_EVERY) {
        sales_points[0] = HERE.to_owned();
    }
    let wide = rng.below(ROLES as u64) as usize;
    let scoped = (wide + 1 + rng.below(ROLES as u64 - 1) as usize) % ROLES;
    GenUser {
        index,
        id: format!("u-{index:06}"),
        ordinal,
        first_name: first.to_owned(),
        last_name: last.to_owned(),
        email: format!(
            "{}.{}.{index}@example.com",
            first.to_lowercase(),
            last.to_lowercase()
        ),
        active,
        pin,
        key,
        roles: [
            (role_id(wide), String::new()),
            (role_id(scoped), sales_points[0].clone()),
        ],
        sales_points,
    }
}

pub fn roles() -> Vec<pb::Role> {
    (0..ROLES)
        .map(|r| {
            let mut rng = Rng::new(SEED, 0xA000_0000 + r as u64);
            let permissions = (0..PERMISSIONS_PER_ROLE)
                .map(|p| pb::Permission {
                    name: format!("perm.{:02}", rng.below(40) + (p as u64) * 40),
                    effect: if rng.below(8) == 0 {
                        pb::Effect::Deny
                    } else {
                        pb::Effect::Allow
                    } as i32,
                })
                .collect();
            pb::Role {
                id: role_id(r),
                name: format!("Role {r}"),
                rank: r as i64,
                permissions,
            }
        })
        .collect()
}

/// The account salt: one per account, as central uses.
pub fn account_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    Rng::new(SEED, 0xB000_0000).fill(&mut salt);
    salt
}

pub fn phc(salt: &[u8], output: &[u8]) -> String {
    let p = production_params();
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        p.m_cost(),
        p.t_cost(),
        p.p_cost(),
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(output)
    )
}

/// Stand-in output bytes for a credential nobody logs in with. Equal PINs get equal bytes.
fn fake_pin_output(pin: &str) -> [u8; OUTPUT_LEN] {
    let mut out = [0u8; OUTPUT_LEN];
    let value: u64 = pin.parse().unwrap_or(0);
    Rng::new(SEED, 0xC000_0000 + value).fill(&mut out);
    out
}

fn fake_key_output(index: usize) -> [u8; OUTPUT_LEN] {
    let mut out = [0u8; OUTPUT_LEN];
    Rng::new(SEED, 0xD000_0000 + index as u64).fill(&mut out);
    out
}

/// Real argon2id outputs under the account salt, for the credentials the benchmark logs in with.
#[derive(Debug, Default)]
pub struct RealHashes {
    pub pins: HashMap<String, [u8; OUTPUT_LEN]>,
    pub keys: HashMap<usize, [u8; OUTPUT_LEN]>,
}

/// Who the benchmark logs in as: active users assigned here among the first `TARGET_POOL`,
/// with pairwise distinct PINs for the PIN targets.
#[derive(Debug)]
pub struct Targets {
    pub pin_users: Vec<GenUser>,
    pub key_users: Vec<GenUser>,
}

pub fn targets() -> Targets {
    let mut by_pin: BTreeMap<String, GenUser> = BTreeMap::new();
    let mut key_users = Vec::new();
    for index in (0..TARGET_POOL).step_by(TERMINAL_EVERY) {
        let u = user(index);
        if !u.active {
            continue;
        }
        by_pin.entry(u.pin.clone()).or_insert_with(|| u.clone());
        key_users.push(u);
    }
    let mut pin_users: Vec<GenUser> = by_pin.into_values().collect();
    pin_users.sort_by_key(|u| u.index);
    Targets {
        pin_users,
        key_users,
    }
}

/// Hashes the targets' PINs and keys for real (on every core: these are the slow part of the
/// setup, not part of any measurement).
pub fn real_hashes(targets: &Targets) -> RealHashes {
    let salt = account_salt();
    let mut jobs: Vec<(bool, usize, String)> = targets
        .pin_users
        .iter()
        .map(|u| (true, u.index, u.pin.clone()))
        .chain(
            targets
                .key_users
                .iter()
                .map(|u| (false, u.index, u.key.clone())),
        )
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = jobs.len().div_ceil(threads).max(1);
    let mut results: Vec<(bool, usize, String, [u8; OUTPUT_LEN])> = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks_mut(per)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(pin, index, secret)| {
                            let mut out = [0u8; OUTPUT_LEN];
                            argon2()
                                .hash_password_into(secret.as_bytes(), &salt, &mut out)
                                .unwrap();
                            (*pin, *index, secret.clone(), out)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            results.extend(h.join().unwrap());
        }
    });
    let mut real = RealHashes::default();
    for (pin, index, secret, out) in results {
        if pin {
            real.pins.insert(secret, out);
        } else {
            real.keys.insert(index, out);
        }
    }
    real
}

/// The PHC strings of one user: real where the benchmark logs in with them.
pub fn credentials(u: &GenUser, real: &RealHashes) -> (String, String) {
    let salt = account_salt();
    let pin = real
        .pins
        .get(&u.pin)
        .copied()
        .unwrap_or_else(|| fake_pin_output(&u.pin));
    let key = real
        .keys
        .get(&u.index)
        .copied()
        .unwrap_or_else(|| fake_key_output(u.index));
    (phc(&salt, &pin), phc(&salt, &key))
}

pub fn pb_user(u: &GenUser, real: &RealHashes) -> pb::User {
    let (pin, key) = credentials(u, real);
    pb::User {
        id: u.id.clone(),
        ordinal: u.ordinal,
        first_name: u.first_name.clone(),
        last_name: u.last_name.clone(),
        email: u.email.clone(),
        active: u.active,
        pin: Some(pb::Credential { phc: pin }),
        keys: vec![pb::Credential { phc: key }],
        roles: u
            .roles
            .iter()
            .map(|(role_id, sales_point_id)| pb::RoleAssignment {
                role_id: role_id.clone(),
                sales_point_id: sales_point_id.clone(),
            })
            .collect(),
        sales_point_ids: u.sales_points.to_vec(),
        sub_terminal_ids: Vec::new(),
    }
}

pub fn snapshot(users: usize, epoch: u64, revision: u64, real: &RealHashes) -> Snapshot {
    Snapshot {
        target: pb::Cursor { epoch, revision },
        users: (0..users).map(|i| pb_user(&user(i), real)).collect(),
        roles: roles(),
    }
}
