//! Which configured rule an input device matches: pure, tested without devices.

use std::path::PathBuf;

use glob::Pattern;

use crate::config::{ConfigError, DeviceRole, DeviceRule, invalid};

/// What evdev tells about a device node, plus the by-id links pointing at it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    pub path: PathBuf,
    pub name: String,
    pub vendor: u16,
    pub product: u16,
    pub phys: String,
    pub uniq: String,
    pub by_id: Vec<PathBuf>,
}

impl DeviceInfo {
    pub fn vendor_product(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.product)
    }
}

/// A rule with its patterns compiled.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub index: usize,
    pub name: Option<Pattern>,
    pub vendor_product: Option<(u16, u16)>,
    pub phys: Option<Pattern>,
    pub uniq: Option<String>,
    pub by_id: Option<PathBuf>,
    pub role: DeviceRole,
    pub profile: String,
    pub grab: bool,
}

impl CompiledRule {
    /// `known_profile` tells whether a profile name exists (built-in or configured).
    pub fn compile(
        index: usize,
        rule: &DeviceRule,
        known_profile: &dyn Fn(&str) -> bool,
    ) -> Result<CompiledRule, ConfigError> {
        let key = |field: &str| format!("input.rules[{index}].{field}");
        let pattern = |field: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| {
                    Pattern::new(t)
                        .map_err(|e| invalid(key(field), format!("{t:?} is not a valid glob: {e}")))
                })
                .transpose()
        };
        let vendor_product = rule
            .vendor_product
            .as_deref()
            .map(|vp| {
                parse_vendor_product(vp).ok_or_else(|| {
                    invalid(
                        key("vendor_product"),
                        format!("{vp:?} is not vvvv:pppp in hex"),
                    )
                })
            })
            .transpose()?;
        if rule.name.is_none()
            && rule.vendor_product.is_none()
            && rule.phys.is_none()
            && rule.uniq.is_none()
            && rule.by_id.is_none()
        {
            return Err(invalid(
                format!("input.rules[{index}]"),
                "needs at least one of name, vendor_product, phys, uniq, by_id",
            ));
        }
        let role = rule
            .role
            .ok_or_else(|| invalid(key("role"), "missing: pin_pad or key_reader"))?;
        let profile = rule
            .profile
            .clone()
            .unwrap_or_else(|| "generic-wedge".into());
        if role == DeviceRole::KeyReader && !known_profile(&profile) {
            return Err(invalid(
                key("profile"),
                format!("unknown profile {profile:?}: not built in and not in [input.profiles]"),
            ));
        }
        if role == DeviceRole::PinPad && rule.profile.is_some() {
            return Err(invalid(key("profile"), "PIN pads take no reader profile"));
        }
        Ok(CompiledRule {
            index,
            name: pattern("name", &rule.name)?,
            vendor_product,
            phys: pattern("phys", &rule.phys)?,
            uniq: rule.uniq.clone(),
            by_id: rule.by_id.clone(),
            role,
            profile,
            // PIN digits are secrets: a dedicated pad is grabbed unless the rule opts out.
            grab: rule.grab.unwrap_or(true),
        })
    }

    pub fn matches(&self, device: &DeviceInfo) -> bool {
        self.name.as_ref().is_none_or(|p| p.matches(&device.name))
            && self
                .vendor_product
                .is_none_or(|(v, p)| v == device.vendor && p == device.product)
            && self.phys.as_ref().is_none_or(|p| p.matches(&device.phys))
            && self.uniq.as_ref().is_none_or(|u| *u == device.uniq)
            && self
                .by_id
                .as_ref()
                .is_none_or(|link| device.by_id.contains(link))
    }

    /// A short description for `tillctl devices` and logs.
    pub fn describe(&self) -> String {
        let role = match self.role {
            DeviceRole::PinPad => "pin_pad",
            DeviceRole::KeyReader => "key_reader",
        };
        match self.role {
            DeviceRole::KeyReader => format!("rules[{}] {role} ({})", self.index, self.profile),
            DeviceRole::PinPad => format!("rules[{}] {role}", self.index),
        }
    }
}

fn parse_vendor_product(text: &str) -> Option<(u16, u16)> {
    let (v, p) = text.split_once(':')?;
    Some((
        u16::from_str_radix(v, 16).ok()?,
        u16::from_str_radix(p, 16).ok()?,
    ))
}

/// The first rule that matches the device.
pub fn first_match<'a>(rules: &'a [CompiledRule], device: &DeviceInfo) -> Option<&'a CompiledRule> {
    rules.iter().find(|rule| rule.matches(device))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn builtin_only(name: &str) -> bool {
        crate::input::profile::builtin(name).is_some()
    }

    fn device() -> DeviceInfo {
        DeviceInfo {
            path: "/dev/input/event7".into(),
            name: "Addimat Waiter Lock".into(),
            vendor: 0x16c0,
            product: 0x27db,
            phys: "usb-0000:00:14.0-2/input0".into(),
            uniq: "A1".into(),
            by_id: vec!["/dev/input/by-id/usb-Addimat-event-kbd".into()],
        }
    }

    fn rule(f: impl FnOnce(&mut DeviceRule)) -> DeviceRule {
        let mut r = DeviceRule {
            role: Some(DeviceRole::KeyReader),
            ..DeviceRule::default()
        };
        f(&mut r);
        r
    }

    #[test]
    fn each_matcher_and_first_match_wins() {
        let rules: Vec<_> = [
            rule(|r| r.name = Some("Keyboard*".into())),
            rule(|r| r.vendor_product = Some("16C0:27DB".into())),
            rule(|r| r.name = Some("Addimat*".into())),
        ]
        .iter()
        .enumerate()
        .map(|(i, r)| CompiledRule::compile(i, r, &builtin_only).unwrap())
        .collect();
        assert_eq!(first_match(&rules, &device()).unwrap().index, 1);
        let phys = CompiledRule::compile(
            0,
            &rule(|r| r.phys = Some("usb-*-2/input0".into())),
            &builtin_only,
        )
        .unwrap();
        assert!(phys.matches(&device()));
        let by_id = CompiledRule::compile(
            0,
            &rule(|r| r.by_id = Some("/dev/input/by-id/usb-Addimat-event-kbd".into())),
            &builtin_only,
        )
        .unwrap();
        assert!(by_id.matches(&device()));
        let both = CompiledRule::compile(
            0,
            &rule(|r| {
                r.name = Some("Addimat Waiter Lock".into());
                r.uniq = Some("B2".into());
            }),
            &builtin_only,
        )
        .unwrap();
        assert!(!both.matches(&device()), "every given key must match");
    }

    #[test]
    fn defaults_and_errors_name_the_rule() {
        let reader =
            CompiledRule::compile(0, &rule(|r| r.name = Some("x".into())), &builtin_only).unwrap();
        assert!(reader.grab);
        assert_eq!(reader.profile, "generic-wedge");
        let pad = CompiledRule::compile(
            0,
            &DeviceRule {
                name: Some("p".into()),
                role: Some(DeviceRole::PinPad),
                ..Default::default()
            },
            &builtin_only,
        )
        .unwrap();
        assert!(
            pad.grab,
            "a PIN pad is grabbed unless the rule says grab = false"
        );
        let err = CompiledRule::compile(3, &rule(|_| {}), &builtin_only).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config key input.rules[3]: needs at least one"),
            "{err}"
        );
        let err = CompiledRule::compile(
            1,
            &rule(|r| r.vendor_product = Some("16c0".into())),
            &builtin_only,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config key input.rules[1].vendor_product"),
            "{err}"
        );
        let err = CompiledRule::compile(
            0,
            &rule(|r| {
                r.name = Some("x".into());
                r.profile = Some("nope".into());
            }),
            &builtin_only,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown profile \"nope\": not built in"),
            "{err}"
        );
        let err = CompiledRule::compile(0, &rule(|r| r.name = Some("[".into())), &builtin_only)
            .unwrap_err();
        assert!(err.to_string().contains("input.rules[0].name"), "{err}");
    }
}
