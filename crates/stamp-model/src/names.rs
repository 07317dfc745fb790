//! Validated names and ids. A value of these types is always valid; construct with `parse`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid {kind} name {name:?}: {why}; use 1 to {max} characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'"
    )]
    Invalid {
        kind: &'static str,
        name: String,
        why: &'static str,
        max: usize,
    },
    #[error("invalid artifact digest {0:?}: expected 64 lowercase hex characters (sha256)")]
    Digest(String),
    #[error(
        "invalid process type {0:?}: use letters, digits, '_' or '-' (at most 63), as in a Procfile"
    )]
    ProcessType(String),
}

/// DNS-label rules (RFC 1123), lowercase only, and a length cap so `<app>-<slot>` stays a label.
fn check_label(kind: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    let err = |why| {
        Err(NameError::Invalid {
            kind,
            name: name.to_string(),
            why,
            max,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > max {
        return err("it is too long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("it contains a character other than a-z, 0-9 or '-'");
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return err("it does not start with a letter");
    }
    if name.ends_with('-') {
        return err("it ends with '-'");
    }
    Ok(())
}

macro_rules! label_name {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub fn parse(name: &str) -> Result<Self, NameError> {
                check_label($kind, name, $max)?;
                Ok(Self(name.to_string()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::parse(&s)
            }
        }
        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }
    };
}

label_name!(
    /// An app's name: a DNS label, so `<app>.<domain>` is its hostname. At most 40 characters,
    /// leaving room for `-<slot>` within the 63-character label limit.
    AppName,
    "app",
    40
);
label_name!(
    /// A plan's name.
    PlanName,
    "plan",
    40
);
label_name!(
    /// A deployment slot's name; `production` always exists.
    SlotName,
    "slot",
    20
);

impl SlotName {
    pub fn production() -> SlotName {
        SlotName("production".to_string())
    }
    pub fn is_production(&self) -> bool {
        self.0 == "production"
    }
}

/// A Procfile process type (`web`, `worker`, `release`, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProcessType(String);

impl ProcessType {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(NameError::ProcessType(s.to_string()))
        }
    }
    pub fn web() -> ProcessType {
        ProcessType("web".to_string())
    }
    pub fn is_web(&self) -> bool {
        self.0 == "web"
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for ProcessType {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse(&s)
    }
}
impl From<ProcessType> for String {
    fn from(n: ProcessType) -> String {
        n.0
    }
}
impl fmt::Display for ProcessType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sha256 of an artifact, lowercase hex: the artifact's name in the content-addressed store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_string()))
        } else {
            Err(NameError::Digest(s.to_string()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 characters, for display.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}
impl TryFrom<String> for Digest {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse(&s)
    }
}
impl From<Digest> for String {
    fn from(n: Digest) -> String {
        n.0
    }
}
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An instance's id, unique on its node for the life of the stamp (e.g. `hello-web-0-3f9a1c`).
/// Made by the worker agent; opaque to everyone else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(pub String);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_follow_dns_label_rules() {
        for ok in ["a", "hello", "my-app-2", &"a".repeat(40)] {
            assert!(AppName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Hello",
            "2app",
            "-app",
            "app-",
            "my_app",
            "app.x",
            &"a".repeat(41),
        ] {
            let err = AppName::parse(bad).unwrap_err().to_string();
            assert!(err.contains("invalid app name"), "{err}");
        }
    }

    #[test]
    fn digest_is_lower_hex_sha256() {
        assert!(Digest::parse(&"ab".repeat(32)).is_ok());
        assert!(Digest::parse(&"AB".repeat(32)).is_err());
        assert!(Digest::parse("abc").is_err());
    }

    #[test]
    fn process_types() {
        assert!(ProcessType::parse("web").is_ok());
        assert!(ProcessType::parse("worker_2").is_ok());
        assert!(ProcessType::parse("bad type").is_err());
        assert!(ProcessType::parse("").is_err());
    }
}
