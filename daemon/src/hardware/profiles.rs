//! Reader profiles from the config: the built-ins plus the site's own `[input.profiles.NAME]`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{ConfigError, EncodingDef, ProfileDef, RomPartsDef, TerminatorDef, invalid};
use crate::input::key_reader::{KeyReaderConfig, Terminator};
use crate::input::profile::{
    BUILTIN_NAMES, Encoding, Profile, ProfileConfig, RomConfig, RomParts, builtin,
};

/// Every profile a rule may name: built-ins, then the configured ones (which may shadow them).
pub fn build(
    defs: &BTreeMap<String, ProfileDef>,
) -> Result<BTreeMap<String, Profile>, ConfigError> {
    let mut profiles: BTreeMap<String, Profile> = BUILTIN_NAMES
        .iter()
        .filter_map(|name| builtin(name).map(|p| ((*name).to_owned(), p)))
        .collect();
    for (name, def) in defs {
        profiles.insert(name.clone(), build_one(name, def)?);
    }
    Ok(profiles)
}

fn build_one(name: &str, def: &ProfileDef) -> Result<Profile, ConfigError> {
    let key = format!("input.profiles.{name}");
    let (mut reader, mut config) = match &def.base {
        Some(base) => {
            let base_profile = builtin(base).ok_or_else(|| {
                invalid(
                    format!("{key}.base"),
                    format!(
                        "unknown built-in profile {base:?}; known: {}",
                        BUILTIN_NAMES.join(", ")
                    ),
                )
            })?;
            (
                base_profile.reader_config().clone(),
                base_profile.config().clone(),
            )
        }
        None => (KeyReaderConfig::default(), ProfileConfig::default()),
    };
    if let Some(ms) = def.max_gap_ms {
        reader.max_gap = Duration::from_millis(ms);
    }
    if let Some(prefix) = &def.prefix {
        reader.prefix = prefix.clone();
    }
    if let Some(suffix) = &def.suffix {
        reader.suffix = suffix.clone();
    }
    reader.terminator = match (def.terminator, def.fixed_length) {
        (Some(TerminatorDef::None), Some(len)) => Terminator::FixedLength(len),
        (Some(TerminatorDef::None), None) => {
            return Err(invalid(
                format!("{key}.fixed_length"),
                "required when terminator = \"none\"",
            ));
        }
        (Some(TerminatorDef::Enter), None) => Terminator::Enter,
        (Some(TerminatorDef::Tab), None) => Terminator::Tab,
        (None, None) => reader.terminator,
        (_, Some(_)) => {
            return Err(invalid(
                format!("{key}.fixed_length"),
                "only with terminator = \"none\"",
            ));
        }
    };
    if let Some(min) = def.min_len {
        reader.min_len = min;
        config.min_len = min;
    }
    if let Some(max) = def.max_len {
        reader.max_len = max;
        config.max_len = max;
    }
    if let Some(token) = &def.removal_token {
        reader.removal_token = Some(token.clone()).filter(|t| !t.is_empty());
    }
    if let Some(encoding) = def.encoding {
        config.encoding = match encoding {
            EncodingDef::Text => Encoding::Text,
            EncodingDef::Hex => Encoding::Hex,
            EncodingDef::Decimal => Encoding::Decimal,
        };
    }
    if let Some(reverse) = def.reverse_bytes {
        config.reverse_bytes = reverse;
    }
    if let Some(parts) = def.rom {
        config.rom = Some(RomConfig {
            parts: match parts {
                RomPartsDef::Full => RomParts::Full,
                RomPartsDef::FamilySerial => RomParts::FamilySerial,
                RomPartsDef::Serial => RomParts::Serial,
            },
            ..config.rom.unwrap_or_default()
        });
    }
    if let Some(rom) = config.rom.as_mut() {
        if let Some(family) = def.family {
            rom.family = Some(family);
        }
        if let Some(check) = def.check_crc {
            rom.check_crc = check;
        }
        if let Some(strip) = def.strip_family {
            rom.strip_family = strip;
        }
        if let Some(strip) = def.strip_crc {
            rom.strip_crc = strip;
        }
    } else if def.family.is_some()
        || def.check_crc.is_some()
        || def.strip_family.is_some()
        || def.strip_crc.is_some()
    {
        return Err(invalid(
            format!("{key}.rom"),
            "family, check_crc, strip_family and strip_crc need rom = \"full\" | \"family_serial\" | \"serial\"",
        ));
    }
    if let Some(width) = def.decimal_width {
        config.decimal_width = width;
    }
    if let Some(trim) = def.trim {
        config.trim = trim;
    }
    Profile::new(name, reader, config).map_err(|e| invalid(key, e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::input::secret::Secret;

    fn def(toml_text: &str) -> ProfileDef {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn custom_profile_on_a_base_with_prefix_and_removal() {
        let defs = BTreeMap::from([(
            "door".to_owned(),
            def(
                "base = \"rfid-em4100-dec10\"\nprefix = \";\"\nremoval_token = \"GONE\"\nmax_gap_ms = 40\n",
            ),
        )]);
        let profiles = build(&defs).unwrap();
        let door = &profiles["door"];
        assert_eq!(door.reader_config().prefix, ";");
        assert_eq!(door.reader_config().removal_token.as_deref(), Some("GONE"));
        assert_eq!(door.reader_config().max_gap, Duration::from_millis(40));
        assert_eq!(
            door.canonical_id(&Secret::from("0009334109"))
                .unwrap()
                .expose(),
            "0009334109"
        );
        assert!(profiles.contains_key("addimat"), "built-ins stay available");
    }

    #[test]
    fn custom_ibutton_profile_checks_crc() {
        let defs = BTreeMap::from([(
            "reversed".to_owned(),
            def(
                "encoding = \"hex\"\nreverse_bytes = true\nrom = \"full\"\ncheck_crc = true\nmin_len = 16\nmax_len = 16\n",
            ),
        )]);
        let profile = &build(&defs).unwrap()["reversed"];
        assert_eq!(
            profile
                .canonical_id(&Secret::from("AC00002645697A01"))
                .unwrap()
                .expose(),
            "017A6945260000AC"
        );
        assert!(
            profile
                .canonical_id(&Secret::from("9B00002645697A01"))
                .unwrap_err()
                .is_bad_read()
        );
    }

    #[test]
    fn errors_name_the_profile_key() {
        let bad_base = BTreeMap::from([("x".to_owned(), def("base = \"nope\""))]);
        let err = build(&bad_base).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config key input.profiles.x.base"),
            "{err}"
        );
        let no_len = BTreeMap::from([("x".to_owned(), def("terminator = \"none\""))]);
        assert!(
            build(&no_len)
                .unwrap_err()
                .to_string()
                .contains("input.profiles.x.fixed_length")
        );
        let crc_no_rom = BTreeMap::from([("x".to_owned(), def("check_crc = true"))]);
        assert!(
            build(&crc_no_rom)
                .unwrap_err()
                .to_string()
                .contains("input.profiles.x.rom")
        );
        let text_rom = BTreeMap::from([("x".to_owned(), def("rom = \"full\""))]);
        assert!(
            build(&text_rom)
                .unwrap_err()
                .to_string()
                .starts_with("config key input.profiles.x:")
        );
    }
}
