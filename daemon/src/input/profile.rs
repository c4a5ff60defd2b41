//! Reader profiles: how a reader model frames its output and how its raw text becomes ONE
//! canonical key id before hashing.
//!
//! The same physical key must give the same canonical id whichever reader read it, so a key
//! enrolled at one till works at another with a different reader model. For 1-Wire (iButton)
//! keys the canonical id is therefore always rebuilt as the 8-byte ROM id in 1-Wire read
//! order (family, serial LSB first, CRC), printed as 16 upper-case hex digits, e.g.
//! `017A6945260000AC` for the key engraved `AC 00002645697A 01`, whether the reader typed it in
//! printed order, read order, or only the serial. Pipeline of [`Profile::canonical_id`]:
//!
//! 1. trim surrounding whitespace (if `trim`), then check `min_len..=max_len` characters;
//! 2. decode per [`Encoding`];
//! 3. hex only: reverse the byte order (if `reverse_bytes`), then, for [`RomConfig`], complete
//!    the ROM id (family from config when the reader omits it, CRC computed when omitted),
//!    check the CRC (if `check_crc`) and the family, reject blank reads, and strip family/CRC
//!    from the output if asked;
//! 4. format the canonical form: text as typed, upper-case hex, or zero-padded decimal.

use thiserror::Error;

use super::crc::crc8;
use super::key_reader::{KeyReader, KeyReaderConfig, KeyReaderConfigError, Terminator};
use super::secret::Secret;

/// How the reader encodes the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Any text, used as typed (case-sensitive). Canonical: the text itself.
    #[default]
    Text,
    /// Hex digits, either case, an even number. Canonical: upper-case hex.
    Hex,
    /// Decimal digits. Canonical: the number without leading zeros, zero-padded to
    /// `decimal_width` (so "9334109" and "0009334109" are the same card).
    Decimal,
}

/// Which parts of the 1-Wire ROM id the reader types, described in read order (after any
/// `reverse_bytes`): family, 48-bit serial LSB first, CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RomParts {
    /// All 8 bytes (16 hex digits).
    #[default]
    Full,
    /// Family and serial, no CRC (14 hex digits); the CRC is computed.
    FamilySerial,
    /// Serial only (12 hex digits); family from [`RomConfig::family`], CRC computed. Such reads
    /// cannot be checked for errors.
    Serial,
}

/// Treat the hex bytes as a Dallas 1-Wire ROM id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RomConfig {
    /// What the reader types.
    pub parts: RomParts,
    /// Family code to assume for [`RomParts::Serial`]; with the other parts, a family the read
    /// id must have (e.g. `0x01` for DS1990A keys). `None`: any family.
    pub family: Option<u8>,
    /// Reject ids whose CRC-8 over all 8 bytes is not 0 ([`ProfileError::BadCrc`]); only
    /// possible with [`RomParts::Full`].
    pub check_crc: bool,
    /// Leave the family byte out of the canonical id (compatibility with ids enrolled by
    /// other software). All profiles of one site must agree on this and `strip_crc`.
    pub strip_family: bool,
    /// Leave the CRC byte out of the canonical id.
    pub strip_crc: bool,
}

/// How raw reader text becomes a canonical id. Plain data; the daemon's config layer fills it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileConfig {
    /// Remove surrounding whitespace first (readers sometimes add a space or CR).
    pub trim: bool,
    /// Fewest characters accepted (after trimming).
    pub min_len: usize,
    /// Most characters accepted (after trimming).
    pub max_len: usize,
    /// How the id is written.
    pub encoding: Encoding,
    /// Hex only: the reader prints bytes in reverse of the 1-Wire read order (e.g. CRC first,
    /// family last, as engraved on iButtons and typed by Addimat locks).
    pub reverse_bytes: bool,
    /// Hex only: interpret the bytes as a 1-Wire ROM id.
    pub rom: Option<RomConfig>,
    /// Decimal only: width the canonical number is zero-padded to (0: no padding).
    pub decimal_width: usize,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            trim: true,
            min_len: 1,
            max_len: 64,
            encoding: Encoding::Text,
            reverse_bytes: false,
            rom: None,
            decimal_width: 0,
        }
    }
}

/// An inconsistent profile.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProfileConfigError {
    /// Empty ids are never valid.
    #[error("profile min_len must be at least 1")]
    ZeroMinLen,
    /// No length could be accepted.
    #[error("profile min_len {min} is greater than max_len {max}")]
    MinAboveMax {
        /// Configured minimum.
        min: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Byte options on non-hex input.
    #[error("reverse_bytes and rom need hex encoding")]
    BytesNeedHex,
    /// Serial-only ROM reads need a family to rebuild the id.
    #[error("a serial-only 1-Wire profile needs a family code")]
    SerialNeedsFamily,
    /// The CRC can only be checked when the reader sends it.
    #[error("check_crc needs a reader that sends all 8 ROM bytes")]
    CrcNotSent,
    /// The framing settings are inconsistent.
    #[error(transparent)]
    Reader(#[from] KeyReaderConfigError),
}

/// Why raw text did not give a key id. Never carries the content. [`ProfileError::is_bad_read`]
/// tells reads to log as reader faults from ids that are simply malformed for this profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProfileError {
    /// Nothing left after trimming.
    #[error("empty id")]
    Empty,
    /// Wrong number of characters.
    #[error("id has {len} characters, profile accepts {min}..={max}")]
    Length {
        /// Characters read.
        len: usize,
        /// Profile minimum.
        min: usize,
        /// Profile maximum.
        max: usize,
    },
    /// A character that is not a hex digit.
    #[error("id is not hexadecimal")]
    NotHex,
    /// Hex ids must be whole bytes.
    #[error("hex id has an odd number of digits")]
    OddHexDigits,
    /// A character that is not a decimal digit.
    #[error("id is not decimal")]
    NotDecimal,
    /// Wrong number of ROM bytes for the configured parts.
    #[error("1-Wire id has {got} bytes, profile expects {expected}")]
    RomLength {
        /// Bytes read.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The 1-Wire CRC does not match: a bad read (bounce, half-inserted key), not a login
    /// failure.
    #[error("1-Wire CRC mismatch (bad read)")]
    BadCrc,
    /// All-zero or all-one ROM id: a reader fault or shorted contact, not a key.
    #[error("blank 1-Wire id (bad read)")]
    BlankRom,
    /// The id's family code is not the required one.
    #[error("1-Wire family code is not {expected:#04x}")]
    WrongFamily {
        /// Required family.
        expected: u8,
    },
}

impl ProfileError {
    /// True for errors that mean the reader misread a key: log as a bad read and let the person
    /// retry; do not count a failed login.
    pub fn is_bad_read(&self) -> bool {
        matches!(self, Self::BadCrc | Self::BlankRom)
    }
}

/// A validated reader profile: framing plus id canonicalisation.
#[derive(Debug, Clone)]
pub struct Profile {
    name: String,
    reader: KeyReader,
    config: ProfileConfig,
}

impl Profile {
    /// Validates and builds a profile.
    pub fn new(
        name: impl Into<String>,
        reader: KeyReaderConfig,
        config: ProfileConfig,
    ) -> Result<Self, ProfileConfigError> {
        let (min, max) = (config.min_len, config.max_len);
        if min == 0 {
            return Err(ProfileConfigError::ZeroMinLen);
        }
        if min > max {
            return Err(ProfileConfigError::MinAboveMax { min, max });
        }
        if config.encoding != Encoding::Hex && (config.reverse_bytes || config.rom.is_some()) {
            return Err(ProfileConfigError::BytesNeedHex);
        }
        if let Some(rom) = config.rom {
            if rom.parts == RomParts::Serial && rom.family.is_none() {
                return Err(ProfileConfigError::SerialNeedsFamily);
            }
            if rom.check_crc && rom.parts != RomParts::Full {
                return Err(ProfileConfigError::CrcNotSent);
            }
        }
        Ok(Self {
            name: name.into(),
            reader: KeyReader::new(reader)?,
            config,
        })
    }

    /// The profile name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The canonicalisation settings.
    pub fn config(&self) -> &ProfileConfig {
        &self.config
    }

    /// The framing settings.
    pub fn reader_config(&self) -> &KeyReaderConfig {
        self.reader.config()
    }

    /// A fresh framer for one device using this profile.
    pub fn key_reader(&self) -> KeyReader {
        let mut reader = self.reader.clone();
        reader.reset();
        reader
    }

    /// Turns a framed id (from [`KeyReader`] or a serial frame) into the canonical key id.
    pub fn canonical_id(&self, raw: &Secret) -> Result<Secret, ProfileError> {
        let cfg = &self.config;
        let text = if cfg.trim {
            raw.expose().trim()
        } else {
            raw.expose()
        };
        if text.is_empty() {
            return Err(ProfileError::Empty);
        }
        let len = text.chars().count();
        if !(cfg.min_len..=cfg.max_len).contains(&len) {
            return Err(ProfileError::Length {
                len,
                min: cfg.min_len,
                max: cfg.max_len,
            });
        }
        match cfg.encoding {
            Encoding::Text => Ok(Secret::from(text)),
            Encoding::Decimal => decimal(text, cfg.decimal_width),
            Encoding::Hex => {
                let mut bytes = hex_bytes(text)?;
                if cfg.reverse_bytes {
                    bytes.reverse();
                }
                let out = match cfg.rom {
                    Some(rom) => rom_id(&bytes, rom),
                    None => Ok(to_hex(&bytes)),
                };
                bytes.iter_mut().for_each(|b| *b = 0);
                out
            }
        }
    }
}

fn decimal(text: &str, width: usize) -> Result<Secret, ProfileError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProfileError::NotDecimal);
    }
    let digits = text.trim_start_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    Ok(Secret::new(format!("{digits:0>width$}")))
}

fn hex_bytes(text: &str) -> Result<Vec<u8>, ProfileError> {
    // Report non-hex before odd length: it is the more useful diagnosis. (`hex`'s own errors
    // would name the offending character, which is part of a key id.)
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ProfileError::NotHex);
    }
    hex::decode(text).map_err(|e| match e {
        hex::FromHexError::OddLength => ProfileError::OddHexDigits,
        _ => ProfileError::NotHex,
    })
}

fn to_hex(bytes: &[u8]) -> Secret {
    Secret::new(hex::encode_upper(bytes))
}

fn rom_id(bytes: &[u8], rom: RomConfig) -> Result<Secret, ProfileError> {
    let expected = match rom.parts {
        RomParts::Full => 8,
        RomParts::FamilySerial => 7,
        RomParts::Serial => 6,
    };
    if bytes.len() != expected {
        return Err(ProfileError::RomLength {
            got: bytes.len(),
            expected,
        });
    }
    let mut id = [0u8; 8];
    match rom.parts {
        RomParts::Full => id.copy_from_slice(bytes),
        RomParts::FamilySerial => id[..7].copy_from_slice(bytes),
        RomParts::Serial => {
            id[0] = rom.family.unwrap_or_default();
            id[1..7].copy_from_slice(bytes);
        }
    }
    if rom.parts != RomParts::Full {
        id[7] = crc8(&id[..7]);
    }
    if id.iter().all(|&b| b == 0) || id.iter().all(|&b| b == 0xff) {
        return Err(ProfileError::BlankRom);
    }
    if rom.check_crc && crc8(&id) != 0 {
        return Err(ProfileError::BadCrc);
    }
    if let Some(expected) = rom.family
        && id[0] != expected
    {
        return Err(ProfileError::WrongFamily { expected });
    }
    let start = usize::from(rom.strip_family);
    let end = if rom.strip_crc { 7 } else { 8 };
    let out = to_hex(&id[start..end]);
    id.iter_mut().for_each(|b| *b = 0);
    Ok(out)
}

/// Names of the built-in profiles, for `--help` and config validation.
pub const BUILTIN_NAMES: &[&str] = &[
    "generic-wedge",
    "ibutton-hex16",
    "ibutton-serial12",
    "addimat",
    "rfid-em4100-dec10",
];

/// A built-in profile by name:
///
/// - `generic-wedge`: any text of 1..=64 characters then Enter (keys typed at most 100 ms
///   apart). Canonical id: the text as typed, surrounding whitespace trimmed, case kept.
///   For tokens and readers without a dedicated profile.
/// - `ibutton-hex16`: 16 hex digits (either case) then Enter, in 1-Wire read order (family
///   first, CRC last), CRC checked. Canonical id: the same 16 digits upper-case.
/// - `ibutton-serial12`: 12 hex digits then Enter: the 48-bit serial as engraved (most
///   significant byte first), family assumed 0x01 (DS1990A), CRC computed (such reads cannot
///   be checked). Canonical id: the full 16-digit ROM id in read order.
/// - `addimat`: Addimat waiter locks: 16 hex digits then Enter in printed order (CRC first,
///   family last, e.g. `AC00002645697A01`), CRC checked; `OUT` + Enter when the key is pulled
///   gives `Removed`. Canonical id: the ROM id in read order (`017A6945260000AC`), the same as
///   `ibutton-hex16` and `ibutton-serial12` give for that key.
/// - `rfid-em4100-dec10`: EM4100 wedges: exactly 10 decimal digits then Enter (the card's
///   32-bit number). Canonical id: the 10 digits.
pub fn builtin(name: &str) -> Option<Profile> {
    let reader = |min_len, max_len| KeyReaderConfig {
        min_len,
        max_len,
        terminator: Terminator::Enter,
        ..KeyReaderConfig::default()
    };
    let rom_hex = |len, reverse_bytes, rom| ProfileConfig {
        trim: true,
        min_len: len,
        max_len: len,
        encoding: Encoding::Hex,
        reverse_bytes,
        rom: Some(rom),
        decimal_width: 0,
    };
    let checked = RomConfig {
        parts: RomParts::Full,
        check_crc: true,
        ..RomConfig::default()
    };
    let profile = match name {
        "generic-wedge" => Profile::new(name, reader(1, 64), ProfileConfig::default()),
        "ibutton-hex16" => Profile::new(name, reader(16, 16), rom_hex(16, false, checked)),
        "ibutton-serial12" => Profile::new(
            name,
            reader(12, 12),
            rom_hex(
                12,
                true,
                RomConfig {
                    parts: RomParts::Serial,
                    family: Some(0x01),
                    ..RomConfig::default()
                },
            ),
        ),
        "addimat" => Profile::new(
            name,
            KeyReaderConfig {
                removal_token: Some("OUT".into()),
                ..reader(16, 16)
            },
            rom_hex(16, true, checked),
        ),
        "rfid-em4100-dec10" => Profile::new(
            name,
            reader(10, 10),
            ProfileConfig {
                min_len: 10,
                max_len: 10,
                encoding: Encoding::Decimal,
                decimal_width: 10,
                ..ProfileConfig::default()
            },
        ),
        _ => return None,
    };
    profile.ok()
}

/// All built-in profiles.
pub fn builtins() -> Vec<Profile> {
    BUILTIN_NAMES.iter().filter_map(|n| builtin(n)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The key from the notes with its CRC corrected (the notes' `9B...` has a bad CRC).
    const ADDIMAT_GOOD: &str = "AC00002645697A01";
    const ADDIMAT_NOTES_BAD_CRC: &str = "9B00002645697A01";
    const CANONICAL: &str = "017A6945260000AC";

    fn id(profile: &str, raw: &str) -> Result<String, ProfileError> {
        builtin(profile)
            .unwrap()
            .canonical_id(&Secret::from(raw))
            .map(|s| s.expose().to_owned())
    }

    #[test]
    fn all_builtins_are_valid_and_listed() {
        assert_eq!(builtins().len(), BUILTIN_NAMES.len());
        for p in builtins() {
            assert!(BUILTIN_NAMES.contains(&p.name()));
        }
        assert!(builtin("nope").is_none());
    }

    #[test]
    fn generic_wedge_uses_text_trimmed() {
        assert_eq!(
            id("generic-wedge", "  ccccjgjgkhcb ").unwrap(),
            "ccccjgjgkhcb"
        );
        assert_eq!(id("generic-wedge", "Ab-1").unwrap(), "Ab-1");
        assert_eq!(id("generic-wedge", "   "), Err(ProfileError::Empty));
    }

    #[test]
    fn addimat_good_bad_crc_and_removal() {
        assert_eq!(id("addimat", ADDIMAT_GOOD).unwrap(), CANONICAL);
        assert_eq!(
            id("addimat", &ADDIMAT_GOOD.to_lowercase()).unwrap(),
            CANONICAL
        );
        let err = id("addimat", ADDIMAT_NOTES_BAD_CRC).unwrap_err();
        assert_eq!(err, ProfileError::BadCrc);
        assert!(err.is_bad_read());
        assert_eq!(
            builtin("addimat")
                .unwrap()
                .reader_config()
                .removal_token
                .as_deref(),
            Some("OUT")
        );
    }

    #[test]
    fn ibutton_hex16_read_order() {
        assert_eq!(id("ibutton-hex16", "017a6945260000ac").unwrap(), CANONICAL);
        assert_eq!(
            id("ibutton-hex16", "017A69452600009B"),
            Err(ProfileError::BadCrc)
        );
        // Printed order into a read-order profile: CRC fails, so a misconfigured reader shows up.
        assert_eq!(id("ibutton-hex16", ADDIMAT_GOOD), Err(ProfileError::BadCrc));
        assert_eq!(
            id("ibutton-hex16", "0000000000000000"),
            Err(ProfileError::BlankRom)
        );
        assert_eq!(
            id("ibutton-hex16", "FFFFFFFFFFFFFFFF"),
            Err(ProfileError::BlankRom)
        );
        assert_eq!(
            id("ibutton-hex16", "017A6945260000"),
            Err(ProfileError::Length {
                len: 14,
                min: 16,
                max: 16
            })
        );
        assert_eq!(
            id("ibutton-hex16", "017A6945260000AG"),
            Err(ProfileError::NotHex)
        );
    }

    #[test]
    fn same_key_same_id_across_reader_orders() {
        let ids = [
            id("addimat", ADDIMAT_GOOD).unwrap(),
            id("ibutton-hex16", CANONICAL).unwrap(),
            id("ibutton-serial12", "00002645697A").unwrap(),
        ];
        assert!(ids.iter().all(|i| i == CANONICAL), "{ids:?}");
    }

    #[test]
    fn rfid_decimal() {
        assert_eq!(id("rfid-em4100-dec10", "0009334109").unwrap(), "0009334109");
        assert_eq!(
            id("rfid-em4100-dec10", "000933410X"),
            Err(ProfileError::NotDecimal)
        );
        assert!(matches!(
            id("rfid-em4100-dec10", "9334109"),
            Err(ProfileError::Length { len: 7, .. })
        ));
        // A looser decimal profile pads to the same canonical form.
        let loose = Profile::new(
            "dec",
            KeyReaderConfig::default(),
            ProfileConfig {
                encoding: Encoding::Decimal,
                decimal_width: 10,
                ..ProfileConfig::default()
            },
        )
        .unwrap();
        assert_eq!(
            loose
                .canonical_id(&Secret::from("9334109"))
                .unwrap()
                .expose(),
            "0009334109"
        );
        assert_eq!(
            loose.canonical_id(&Secret::from("000")).unwrap().expose(),
            "0000000000"
        );
    }

    #[test]
    fn plain_hex_reversal_and_strip_options() {
        let p = |reverse_bytes, rom| {
            Profile::new(
                "x",
                KeyReaderConfig::default(),
                ProfileConfig {
                    encoding: Encoding::Hex,
                    reverse_bytes,
                    rom,
                    ..ProfileConfig::default()
                },
            )
            .unwrap()
        };
        let raw = Secret::from("0a0b0c");
        assert_eq!(
            p(false, None).canonical_id(&raw).unwrap().expose(),
            "0A0B0C"
        );
        assert_eq!(p(true, None).canonical_id(&raw).unwrap().expose(), "0C0B0A");
        assert_eq!(
            p(false, None).canonical_id(&Secret::from("abc")),
            Err(ProfileError::OddHexDigits)
        );
        let short = RomConfig {
            strip_family: true,
            strip_crc: true,
            check_crc: true,
            ..RomConfig::default()
        };
        assert_eq!(
            p(true, Some(short))
                .canonical_id(&Secret::from(ADDIMAT_GOOD))
                .unwrap()
                .expose(),
            "7A6945260000"
        );
        let family_serial = RomConfig {
            parts: RomParts::FamilySerial,
            family: Some(0x01),
            ..RomConfig::default()
        };
        assert_eq!(
            p(false, Some(family_serial))
                .canonical_id(&Secret::from("017A6945260000"))
                .unwrap()
                .expose(),
            CANONICAL
        );
        assert_eq!(
            p(false, Some(family_serial)).canonical_id(&Secret::from("097A6945260000")),
            Err(ProfileError::WrongFamily { expected: 0x01 })
        );
        assert_eq!(
            p(false, Some(family_serial)).canonical_id(&Secret::from(CANONICAL)),
            Err(ProfileError::RomLength {
                got: 8,
                expected: 7
            })
        );
    }

    #[test]
    fn config_validation() {
        let mk = |config| Profile::new("x", KeyReaderConfig::default(), config).unwrap_err();
        assert_eq!(
            mk(ProfileConfig {
                reverse_bytes: true,
                ..ProfileConfig::default()
            }),
            ProfileConfigError::BytesNeedHex
        );
        let hex_rom = |rom| ProfileConfig {
            encoding: Encoding::Hex,
            rom: Some(rom),
            ..ProfileConfig::default()
        };
        assert_eq!(
            mk(hex_rom(RomConfig {
                parts: RomParts::Serial,
                ..RomConfig::default()
            })),
            ProfileConfigError::SerialNeedsFamily
        );
        assert_eq!(
            mk(hex_rom(RomConfig {
                parts: RomParts::FamilySerial,
                check_crc: true,
                ..RomConfig::default()
            })),
            ProfileConfigError::CrcNotSent
        );
        assert_eq!(
            mk(ProfileConfig {
                min_len: 5,
                max_len: 4,
                ..ProfileConfig::default()
            }),
            ProfileConfigError::MinAboveMax { min: 5, max: 4 }
        );
        let bad_reader = Profile::new(
            "x",
            KeyReaderConfig {
                min_len: 0,
                ..KeyReaderConfig::default()
            },
            ProfileConfig::default(),
        )
        .unwrap_err();
        assert_eq!(
            bad_reader,
            ProfileConfigError::Reader(KeyReaderConfigError::ZeroMinLen)
        );
    }

    #[test]
    fn errors_never_contain_the_id() {
        for (profile, raw) in [
            ("addimat", ADDIMAT_NOTES_BAD_CRC),
            ("ibutton-hex16", "017A6945260000AG"),
            ("rfid-em4100-dec10", "12345678901"),
        ] {
            let err = id(profile, raw).unwrap_err();
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains(raw), "{text}");
                assert!(!text.contains(&raw[..6]), "{text}");
            }
        }
    }

    fn hex(bytes: &[u8]) -> String {
        hex::encode_upper(bytes)
    }

    proptest! {
        #[test]
        fn every_reader_order_gives_the_same_canonical_id(
            family in 1u8..=0xfe,
            serial in prop::array::uniform6(any::<u8>()),
        ) {
            let mut read = vec![family];
            read.extend_from_slice(&serial);
            read.push(crc8(&read));
            let printed: Vec<u8> = read.iter().rev().copied().collect();
            let canonical = hex(&read);
            prop_assert_eq!(id("ibutton-hex16", &canonical).unwrap(), canonical.clone());
            prop_assert_eq!(id("addimat", &hex(&printed)).unwrap(), canonical.clone());
            if family == 0x01 {
                let engraved: Vec<u8> = serial.iter().rev().copied().collect();
                prop_assert_eq!(id("ibutton-serial12", &hex(&engraved)).unwrap(), canonical);
            }
        }
    }
}
