//! An app's front-end configuration (Azure's `siteConfig` and site properties): HTTPS only,
//! affinity, load balancing, request timeout, health check, access restrictions, custom domains.
//! Stored with the app; it travels to the front end in the routing table and, for the health
//! check, to the worker in each instance's spec.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// How the front end picks an instance for a request without affinity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balancing {
    /// Each instance in turn (the seed's and Azure's default).
    #[default]
    RoundRobin,
    /// Least outstanding requests of two instances picked at random (power of two choices).
    LeastRequests,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessAction {
    Allow,
    Deny,
}

/// One access restriction: requests from `network` get `action`; lower priority first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRule {
    pub name: String,
    pub priority: u32,
    pub action: AccessAction,
    pub network: IpNet,
}

/// Azure's health check: GET `path` on every instance every `interval`; an instance failing
/// `unhealthy_after` times in a row leaves rotation, but never more than
/// `max_unhealthy_percent` of an app's instances, and none when all are unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Millis,
    pub unhealthy_after: u32,
    pub max_unhealthy_percent: u32,
}

pub const DEFAULT_REQUEST_TIMEOUT: Millis = Millis::from_secs(230);
pub const DEFAULT_HEALTH_INTERVAL: Millis = Millis::from_secs(60);
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 10;
pub const DEFAULT_MAX_UNHEALTHY_PERCENT: u32 = 50;
/// Azure's limits.
pub const MAX_ACCESS_RULES: usize = 512;
pub const MAX_DOMAINS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SiteConfig {
    /// Redirect HTTP to HTTPS with 301.
    pub https_only: bool,
    /// Pin a client to an instance with the ARRAffinity cookie.
    pub client_affinity: bool,
    pub balancing: Balancing,
    /// The instance's response head must arrive within this time, else 504.
    pub request_timeout: Millis,
    pub health_check: Option<HealthCheck>,
    /// Sorted by priority (then name); once any exists, unmatched requests are denied.
    pub access_rules: Vec<AccessRule>,
    /// Custom hostnames (lowercase) besides `<app>.<domain>`.
    pub domains: Vec<String>,
    /// Set by the controller while the app is stopped for its day's CPU quota: the front end
    /// answers 403 "app stopped". Never stored.
    #[serde(skip)]
    pub stopped: bool,
}

impl Default for SiteConfig {
    fn default() -> SiteConfig {
        SiteConfig {
            https_only: false,
            client_affinity: true,
            balancing: Balancing::RoundRobin,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            health_check: None,
            access_rules: Vec::new(),
            domains: Vec::new(),
            stopped: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    #[error("{0}")]
    Invalid(String),
}

fn invalid(s: impl Into<String>) -> SiteError {
    SiteError::Invalid(s.into())
}

impl SiteConfig {
    /// The verdict of the access rules for a client address: first match by priority wins;
    /// no rules means open; rules but no match means deny.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.access_rules.is_empty() {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.access_rules
            .iter()
            .find(|r| r.network.contains(&ip))
            .is_some_and(|r| r.action == AccessAction::Allow)
    }

    /// Checks every field; the first problem found is the error.
    pub fn validate(&self) -> Result<(), SiteError> {
        let t = self.request_timeout.0;
        if !(1_000..=3_600_000).contains(&t) {
            return Err(invalid(
                "the request timeout must be from 1 to 3600 seconds (Azure's is 230)",
            ));
        }
        if let Some(h) = &self.health_check {
            check_health_path(&h.path)?;
            if !(1_000..=3_600_000).contains(&h.interval.0) {
                return Err(invalid(
                    "the health check interval must be from 1 to 3600 seconds (default 60)",
                ));
            }
            if !(2..=10).contains(&h.unhealthy_after) {
                return Err(invalid(
                    "the health check's failure threshold must be from 2 to 10 (default 10), as in Azure",
                ));
            }
            if !(1..=100).contains(&h.max_unhealthy_percent) {
                return Err(invalid(
                    "the share of instances a health check may remove must be from 1 to 100 percent (default 50)",
                ));
            }
        }
        if self.access_rules.len() > MAX_ACCESS_RULES {
            return Err(invalid(format!(
                "an app has at most {MAX_ACCESS_RULES} access rules"
            )));
        }
        for r in &self.access_rules {
            check_rule_name(&r.name)?;
        }
        if self.domains.len() > MAX_DOMAINS {
            return Err(invalid(format!(
                "an app has at most {MAX_DOMAINS} custom domains"
            )));
        }
        for d in &self.domains {
            check_domain(d)?;
        }
        Ok(())
    }

    /// Keeps rules in evaluation order.
    pub fn sort_rules(&mut self) {
        self.access_rules
            .sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    }
}

pub fn check_health_path(path: &str) -> Result<(), SiteError> {
    let ok =
        path.starts_with('/') && path.len() <= 1024 && path.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "health check path {path:?} must start with '/' and contain no spaces or control characters, e.g. /healthz"
        )))
    }
}

pub fn check_rule_name(name: &str) -> Result<(), SiteError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "access rule name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A custom domain: a lowercase DNS name of at least two labels (`example.com`,
/// `www.example.com`), or a wildcard `*.example.com`.
pub fn check_domain(domain: &str) -> Result<(), SiteError> {
    let name = domain.strip_prefix("*.").unwrap_or(domain);
    let labels: Vec<&str> = name.split('.').collect();
    let ok = domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{domain:?} is not a custom domain Stamp can serve: use a lowercase DNS name such as www.example.com or *.example.com"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, priority: u32, action: AccessAction, net: &str) -> AccessRule {
        AccessRule {
            name: name.into(),
            priority,
            action,
            network: net.parse().unwrap(),
        }
    }

    #[test]
    fn access_rules_first_match_by_priority_then_deny() {
        let mut s = SiteConfig::default();
        assert!(s.allows("203.0.113.9".parse().unwrap()), "no rules: open");
        s.access_rules = vec![
            rule("office", 200, AccessAction::Allow, "10.0.0.0/8"),
            rule("bad", 100, AccessAction::Deny, "10.1.0.0/16"),
            rule("v6", 300, AccessAction::Allow, "2001:db8::/32"),
        ];
        s.sort_rules();
        assert!(!s.allows("10.1.2.3".parse().unwrap()), "deny at 100 wins");
        assert!(s.allows("10.2.0.1".parse().unwrap()));
        assert!(s.allows("2001:db8::1".parse().unwrap()));
        assert!(s.allows("::ffff:10.2.0.1".parse().unwrap()), "mapped v4");
        assert!(!s.allows("192.0.2.1".parse().unwrap()), "implicit deny");
    }

    #[test]
    fn validation() {
        let mut s = SiteConfig::default();
        assert!(s.validate().is_ok());
        s.request_timeout = Millis(0);
        assert!(s.validate().is_err());
        s.request_timeout = DEFAULT_REQUEST_TIMEOUT;
        s.health_check = Some(HealthCheck {
            path: "healthz".into(),
            interval: DEFAULT_HEALTH_INTERVAL,
            unhealthy_after: 10,
            max_unhealthy_percent: 50,
        });
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("start with '/'")
        );
        s.health_check.as_mut().unwrap().path = "/healthz".into();
        s.health_check.as_mut().unwrap().unhealthy_after = 11;
        assert!(s.validate().unwrap_err().to_string().contains("2 to 10"));
        s.health_check.as_mut().unwrap().unhealthy_after = 2;
        assert!(s.validate().is_ok());
        for ok in [
            "example.com",
            "www.example.com",
            "*.example.com",
            "a-b.c0.io",
        ] {
            assert!(check_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "localhost",
            "Example.com",
            "a..b",
            "-a.com",
            "a.*.com",
            "*.com.",
            "x_y.com",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }
}
