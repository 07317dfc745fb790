//! App settings: environment variables for an app's instances, as in Azure's app settings and
//! Heroku's config vars.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Millis;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Settings(pub BTreeMap<String, String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error(
        "invalid setting name {0:?}: use letters, digits and '_', not starting with a digit (at most 128 characters)"
    )]
    BadName(String),
    #[error("setting {0} is set by Stamp for every instance and cannot be changed")]
    Reserved(String),
    #[error("setting {name} must be {what}; got {value:?}")]
    BadValue {
        name: String,
        what: &'static str,
        value: String,
    },
    #[error("expected KEY=VALUE, got {0:?}")]
    NotAssignment(String),
}

/// The setting that sets an app's stop grace period in seconds (Azure's name for it).
pub const GRACE_PERIOD_SETTING: &str = "WEBSITES_CONTAINER_STOP_TIME_LIMIT";
/// Stamp's default grace period: Heroku's 30 s (Azure's is 5 s; 30 s is kinder to apps that
/// finish requests on SIGTERM).
pub const DEFAULT_GRACE_PERIOD: Millis = Millis::from_secs(30);
/// The most a grace period may be.
pub const MAX_GRACE_PERIOD_SECS: u64 = 3600;

/// Variables Stamp sets on every instance; a user setting may not shadow them.
pub const RESERVED: &[&str] = &[
    "PORT",
    "HOME",
    "TMPDIR",
    "WEBSITE_SITE_NAME",
    "WEBSITE_INSTANCE_ID",
    "WEBSITE_SLOT_NAME",
    "WEBSITE_HOSTNAME",
];

pub fn check_name(name: &str) -> Result<(), SettingError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(SettingError::BadName(name.to_string()));
    }
    if RESERVED.contains(&name) || name.starts_with("STAMP_") {
        return Err(SettingError::Reserved(name.to_string()));
    }
    Ok(())
}

pub fn check_value(name: &str, value: &str) -> Result<(), SettingError> {
    if name == GRACE_PERIOD_SETTING {
        match value.parse::<u64>() {
            Ok(n) if n <= MAX_GRACE_PERIOD_SECS => {}
            _ => {
                return Err(SettingError::BadValue {
                    name: name.to_string(),
                    what: "a whole number of seconds from 0 to 3600",
                    value: value.to_string(),
                });
            }
        }
    }
    if let Some(what) = crate::slots::check_warmup_value(name, value) {
        return Err(SettingError::BadValue {
            name: name.to_string(),
            what,
            value: value.to_string(),
        });
    }
    if value.contains('\0') {
        return Err(SettingError::BadValue {
            name: name.to_string(),
            what: "text without NUL characters",
            value: value.escape_debug().to_string(),
        });
    }
    Ok(())
}

/// Parses `KEY=VALUE` as typed on a command line.
pub fn parse_assignment(s: &str) -> Result<(String, String), SettingError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| SettingError::NotAssignment(s.to_string()))?;
    check_name(k)?;
    check_value(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

impl Settings {
    /// Applies `set` then `unset`, validating everything first: on error nothing changes.
    pub fn apply(
        &self,
        set: &BTreeMap<String, String>,
        unset: &[String],
    ) -> Result<Settings, SettingError> {
        for (k, v) in set {
            check_name(k)?;
            check_value(k, v)?;
        }
        for k in unset {
            check_name(k)?;
        }
        let mut next = self.0.clone();
        next.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        for k in unset {
            next.remove(k);
        }
        Ok(Settings(next))
    }

    pub fn grace_period(&self) -> Millis {
        self.0
            .get(GRACE_PERIOD_SETTING)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|s| Millis::from_secs(s.min(MAX_GRACE_PERIOD_SECS)))
            .unwrap_or(DEFAULT_GRACE_PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values() {
        assert!(check_name("GREETING").is_ok());
        assert!(check_name("_x1").is_ok());
        assert!(matches!(check_name("1X"), Err(SettingError::BadName(_))));
        assert!(matches!(check_name("A-B"), Err(SettingError::BadName(_))));
        assert!(matches!(check_name("PORT"), Err(SettingError::Reserved(_))));
        assert!(matches!(
            check_name("STAMP_APP"),
            Err(SettingError::Reserved(_))
        ));
        assert!(check_value(GRACE_PERIOD_SETTING, "10").is_ok());
        assert!(check_value(GRACE_PERIOD_SETTING, "ten").is_err());
        assert_eq!(
            parse_assignment("A=b=c").unwrap(),
            ("A".to_string(), "b=c".to_string())
        );
        assert!(parse_assignment("novalue").is_err());
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let s = Settings::default()
            .apply(&[("A".into(), "1".into())].into(), &[])
            .unwrap();
        let bad = s.apply(
            &[("B".into(), "2".into()), ("PORT".into(), "1".into())].into(),
            &[],
        );
        assert!(bad.is_err());
        let s2 = s
            .apply(&[("B".into(), "2".into())].into(), &["A".into()])
            .unwrap();
        assert_eq!(s2.0, [("B".to_string(), "2".to_string())].into());
        assert_eq!(s2.grace_period(), DEFAULT_GRACE_PERIOD);
        let s3 = s2
            .apply(&[(GRACE_PERIOD_SETTING.into(), "2".into())].into(), &[])
            .unwrap();
        assert_eq!(s3.grace_period(), Millis(2000));
    }
}
