//! Deployment slots (Azure App Service §3): records, what swaps and what sticks, the swap's
//! phases and warm-up settings, and the traffic-routing choice. PURE.
//!
//! # Lanes
//!
//! A slot serves from a **lane**: the instances keyed by `(app, lane)`. A swap never renames an
//! instance: it prepares the source slot's lane with the target's configuration, then exchanges
//! the two slots' lanes in one store transaction, so routing flips to instances that are already
//! warm and nothing restarts at the flip. Production starts on lane 0; each new slot takes the
//! lowest lane no slot of the app uses.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::names::{AppName, Digest, SlotName};
use crate::procfile::Procfile;
use crate::settings::Settings;
use crate::site::{HealthCheck, SiteConfig};
use crate::time::Millis;

/// A non-production slot. Production's equivalents live on [`crate::App`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub name: SlotName,
    pub lane: u32,
    /// The settings the slot's next release carries (its latest release's snapshot).
    pub settings: Settings,
    /// Bumped by `stamp app restart --slot`.
    pub generation: u64,
    /// The slot's own front-end configuration (never swapped).
    pub site: SiteConfig,
    /// Azure's auto swap: every successful deploy to this slot swaps it into that one.
    pub auto_swap_to: Option<SlotName>,
    /// Azure's ramp-up rule: the share of production's clients (0–100) routed here. `None`: no
    /// rule (no random routing, no opt-in); `Some(0)`: manual opt-in only.
    pub routing: Option<u8>,
    pub created_at: Millis,
}

/// A slot's hostname label under the stamp's domain: `<app>` for production, `<app>-<slot>`
/// for any other slot (Azure's `<site>-<slot>.azurewebsites.net`).
pub fn host_label(app: &AppName, slot: &SlotName) -> String {
    if slot.is_production() {
        app.to_string()
    } else {
        format!("{app}-{slot}")
    }
}

/// What a slot's lane runs, resolved from its current release or, for a swap's source, from
/// the swap. Everything [`crate::InstanceSpec`] takes from the slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneConfig {
    /// The slot whose configuration this is (`WEBSITE_SLOT_NAME`).
    pub slot: SlotName,
    pub release: u32,
    pub generation: u64,
    pub artifact: Digest,
    pub procfile: Procfile,
    pub settings: Settings,
    pub health_check: Option<HealthCheck>,
}

/// Where a swap is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwapPhase {
    /// Phase 1–4: the source's instances restart with the target's slot settings, then warm up.
    /// A controller restarted in this phase resumes from the restart wait.
    Applying,
    /// Swap with preview: the source runs with the target's settings, waiting for `--complete`
    /// or `--cancel`.
    Preview,
}

impl SwapPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            SwapPhase::Applying => "applying",
            SwapPhase::Preview => "preview",
        }
    }
}

/// A swap in progress: at most one per app, stored until it completes or reverts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    pub app: AppName,
    pub source: SlotName,
    pub target: SlotName,
    pub preview: bool,
    pub phase: SwapPhase,
    /// What the source's lane runs during the swap: its code with the target's slot settings,
    /// numbered as the target's next release, so the flip restarts nothing.
    pub source_config: LaneConfig,
    pub started_at: Millis,
    /// Who started it: the author of the two releases the flip makes.
    #[serde(default)]
    pub actor: String,
}

/// The settings a slot ends up with when it takes `incoming`'s content: every setting of
/// `incoming` except the sticky ones, plus the sticky ones `own` has. Azure: app settings follow
/// the content unless marked as slot settings.
pub fn swapped_settings(
    incoming: &Settings,
    own: &Settings,
    sticky: &BTreeSet<String>,
) -> Settings {
    let mut out: BTreeMap<String, String> = incoming
        .0
        .iter()
        .filter(|(k, _)| !sticky.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in &own.0 {
        if sticky.contains(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    Settings(out)
}

/// `WEBSITE_SWAP_WARMUP_PING_PATH`: the path requested on each source instance (default `/`).
pub const WARMUP_PATH_SETTING: &str = "WEBSITE_SWAP_WARMUP_PING_PATH";
/// `WEBSITE_SWAP_WARMUP_PING_STATUSES`: accepted statuses, comma separated (default: any).
pub const WARMUP_STATUSES_SETTING: &str = "WEBSITE_SWAP_WARMUP_PING_STATUSES";
/// Stamp's name for the per-request warm-up timeout in seconds (Azure's fixed 90 s).
pub const WARMUP_TIMEOUT_SETTING: &str = "WEBSITE_SWAP_WARMUP_PING_TIMEOUT";
/// Azure's `WEBSITE_SLOT_MAX_NUMBER_OF_TIMEOUTS`: warm-up requests per instance that may time
/// out before the swap stops (default 5).
pub const WARMUP_TRIES_SETTING: &str = "WEBSITE_SLOT_MAX_NUMBER_OF_TIMEOUTS";

/// How a swap warms up the source's instances, read from the source's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warmup {
    pub path: String,
    /// Empty: any status counts.
    pub statuses: Vec<u16>,
    pub timeout: Millis,
    pub tries: u32,
}

impl Default for Warmup {
    fn default() -> Warmup {
        Warmup {
            path: "/".to_string(),
            statuses: Vec::new(),
            timeout: Millis::from_secs(90),
            tries: 5,
        }
    }
}

impl Warmup {
    /// Reads the warm-up settings; values that fail [`check_warmup_value`] keep their default
    /// (the API rejects them before they are stored).
    pub fn from_settings(settings: &Settings) -> Warmup {
        let mut w = Warmup::default();
        let get = |k: &str| settings.0.get(k).map(|v| v.trim());
        if let Some(p) = get(WARMUP_PATH_SETTING)
            && p.starts_with('/')
        {
            w.path = p.to_string();
        }
        if let Some(s) = get(WARMUP_STATUSES_SETTING)
            && let Ok(list) = parse_statuses(s)
        {
            w.statuses = list;
        }
        if let Some(t) = get(WARMUP_TIMEOUT_SETTING).and_then(|v| v.parse::<u64>().ok())
            && (1..=MAX_WARMUP_TIMEOUT_SECS).contains(&t)
        {
            w.timeout = Millis::from_secs(t);
        }
        if let Some(n) = get(WARMUP_TRIES_SETTING).and_then(|v| v.parse::<u32>().ok())
            && (1..=MAX_WARMUP_TRIES).contains(&n)
        {
            w.tries = n;
        }
        w
    }

    pub fn accepts(&self, status: u16) -> bool {
        self.statuses.is_empty() || self.statuses.contains(&status)
    }
}

const MAX_WARMUP_TIMEOUT_SECS: u64 = 230;
const MAX_WARMUP_TRIES: u32 = 20;

fn parse_statuses(s: &str) -> Result<Vec<u16>, ()> {
    s.split(',')
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(n),
            _ => Err(()),
        })
        .collect()
}

/// Validates a warm-up setting's value: `Some(what it must be)` when it is wrong.
pub fn check_warmup_value(name: &str, value: &str) -> Option<&'static str> {
    let v = value.trim();
    let ok = match name {
        WARMUP_PATH_SETTING => v.starts_with('/'),
        WARMUP_STATUSES_SETTING => parse_statuses(v).is_ok(),
        WARMUP_TIMEOUT_SETTING => v
            .parse::<u64>()
            .is_ok_and(|t| (1..=MAX_WARMUP_TIMEOUT_SECS).contains(&t)),
        WARMUP_TRIES_SETTING => v
            .parse::<u32>()
            .is_ok_and(|n| (1..=MAX_WARMUP_TRIES).contains(&n)),
        _ => return None,
    };
    if ok {
        return None;
    }
    Some(match name {
        WARMUP_PATH_SETTING => "a path starting with '/'",
        WARMUP_STATUSES_SETTING => "a comma-separated list of HTTP status codes (100-599)",
        WARMUP_TIMEOUT_SETTING => "a whole number of seconds from 1 to 230",
        _ => "a whole number from 1 to 20",
    })
}

/// The routing cookie and query parameter (Azure's names).
pub const ROUTING_NAME: &str = "x-ms-routing-name";
/// The value that names production in the routing cookie and query.
pub const ROUTING_SELF: &str = "self";
/// How long a routing cookie pins a client (Azure: one hour).
pub const ROUTING_COOKIE_MAX_AGE_SECS: u64 = 3600;

/// Picks the slot a fresh client of production goes to: `rules` are `(slot, percent)` with
/// percentages summing to at most 100, `dice` a uniform number in `0..100`. `None`: production.
pub fn pick_by_percent<T>(rules: impl IntoIterator<Item = (T, u8)>, dice: u32) -> Option<T> {
    let mut edge = 0u32;
    for (slot, percent) in rules {
        edge += u32::from(percent);
        if dice < edge {
            return Some(slot);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn sticky_settings_stay_and_the_rest_follows_the_content() {
        let staging = settings(&[("GREETING", "new"), ("DB", "staging-db"), ("ONLY_S", "1")]);
        let production = settings(&[("GREETING", "old"), ("DB", "prod-db"), ("ONLY_P", "1")]);
        let sticky: BTreeSet<String> = ["DB".to_string(), "ONLY_P".to_string()].into();
        let new_production = swapped_settings(&staging, &production, &sticky);
        assert_eq!(
            new_production,
            settings(&[
                ("GREETING", "new"),
                ("DB", "prod-db"),
                ("ONLY_S", "1"),
                ("ONLY_P", "1")
            ])
        );
        let new_staging = swapped_settings(&production, &staging, &sticky);
        assert_eq!(
            new_staging,
            settings(&[("GREETING", "old"), ("DB", "staging-db")])
        );
    }

    #[test]
    fn warmup_defaults_and_overrides() {
        assert_eq!(
            Warmup::from_settings(&Settings::default()),
            Warmup::default()
        );
        let w = Warmup::from_settings(&settings(&[
            (WARMUP_PATH_SETTING, "/ready"),
            (WARMUP_STATUSES_SETTING, "200, 202"),
            (WARMUP_TIMEOUT_SETTING, "3"),
            (WARMUP_TRIES_SETTING, "2"),
        ]));
        assert_eq!(w.path, "/ready");
        assert_eq!(w.statuses, vec![200, 202]);
        assert!(w.accepts(202) && !w.accepts(500));
        assert_eq!(w.timeout, Millis::from_secs(3));
        assert_eq!(w.tries, 2);
        assert!(Warmup::default().accepts(500));
    }

    #[test]
    fn warmup_values_are_checked() {
        assert_eq!(check_warmup_value("OTHER", "x"), None);
        assert_eq!(check_warmup_value(WARMUP_PATH_SETTING, "/x"), None);
        assert!(check_warmup_value(WARMUP_PATH_SETTING, "x").is_some());
        assert!(check_warmup_value(WARMUP_STATUSES_SETTING, "200,abc").is_some());
        assert!(check_warmup_value(WARMUP_STATUSES_SETTING, "99").is_some());
        assert!(check_warmup_value(WARMUP_TIMEOUT_SETTING, "0").is_some());
        assert!(check_warmup_value(WARMUP_TRIES_SETTING, "21").is_some());
        assert_eq!(check_warmup_value(WARMUP_TRIES_SETTING, "3"), None);
    }

    #[test]
    fn percent_picks_cover_their_share() {
        let rules = [("a", 10u8), ("b", 20u8)];
        let picks: Vec<Option<&str>> = (0..100).map(|d| pick_by_percent(rules, d)).collect();
        assert_eq!(picks.iter().filter(|p| **p == Some("a")).count(), 10);
        assert_eq!(picks.iter().filter(|p| **p == Some("b")).count(), 20);
        assert_eq!(picks.iter().filter(|p| p.is_none()).count(), 70);
        assert_eq!(pick_by_percent::<&str>([], 0), None);
    }
}
