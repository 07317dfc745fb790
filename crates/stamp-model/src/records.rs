//! The durable records of desired state: plans, apps and releases, as the store keeps them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::names::{AppName, Digest, PlanName, ProcessType, SlotName};
use crate::procfile::Procfile;
use crate::settings::Settings;
use crate::site::SiteConfig;
use crate::slots::Slot;
use crate::time::Millis;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: PlanName,
    /// SKU name from [`crate::sku::CATALOG`].
    pub sku: String,
    pub workers: u32,
    /// Azure's `perSiteScaling`: each app's `max_workers` caps how many workers run it.
    pub per_app_scaling: bool,
    /// Which workers run each app's process types. Kept (not recomputed from scratch) so apps
    /// move only when workers are added or removed; see `stamp_placement::place`.
    pub placement: Placement,
    /// The worker count `placement` was made for: a different count now means workers were
    /// added or removed, the one time apps may move.
    pub placed_on: u32,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub name: AppName,
    pub plan: PlanName,
    /// The settings the next release will carry; always equal to the latest release's snapshot.
    pub settings: Settings,
    /// Bumped by a restart so every instance is replaced (rolling) without a new release.
    pub generation: u64,
    /// Front-end configuration: HTTPS only, affinity, balancing, health check, access rules,
    /// custom domains.
    pub site: SiteConfig,
    /// Azure's `numberOfWorkers` under per-app scaling: at most this many of the plan's workers
    /// run the app. `None`: all of them. Ignored while the plan's per-app scaling is off.
    pub max_workers: Option<u32>,
    /// Heroku's formation: instances per process type. `web` defaults to one per worker the app
    /// may use; other types default to 0.
    pub formation: BTreeMap<ProcessType, u32>,
    /// The lane production serves from (see [`crate::slots`]).
    pub lane: u32,
    /// Azure's `slotConfigNames`: settings that stay with their slot in a swap, in every slot.
    pub slot_settings: BTreeSet<String>,
    /// The app's other slots, by name.
    pub slots: Vec<Slot>,
    pub created_at: Millis,
}

impl App {
    /// Production as a [`Slot`]: its settings, generation and site are the app's.
    pub fn production(&self) -> Slot {
        Slot {
            name: SlotName::production(),
            lane: self.lane,
            settings: self.settings.clone(),
            generation: self.generation,
            site: self.site.clone(),
            auto_swap_to: None,
            routing: None,
            created_at: self.created_at,
        }
    }

    /// Every slot, production first.
    pub fn all_slots(&self) -> Vec<Slot> {
        let mut all = vec![self.production()];
        all.extend(self.slots.iter().cloned());
        all
    }

    /// The slot named `name` (production included).
    pub fn slot(&self, name: &SlotName) -> Option<Slot> {
        if name.is_production() {
            return Some(self.production());
        }
        self.slots.iter().find(|s| &s.name == name).cloned()
    }

    /// The lowest lane none of the app's slots uses, for a new slot.
    pub fn free_lane(&self) -> u32 {
        let used: BTreeSet<u32> = self.all_slots().iter().map(|s| s.lane).collect();
        (0..).find(|l| !used.contains(l)).unwrap_or(0)
    }
}

/// Immutable once created: code (artifact and Procfile) plus a settings snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub app: AppName,
    pub slot: SlotName,
    /// v1, v2, ... per app and slot.
    pub version: u32,
    /// None until the first deploy (a settings change before any code still makes a release).
    pub artifact: Option<Digest>,
    pub procfile: Option<Procfile>,
    pub settings: Settings,
    /// What changed, e.g. `Deploy 3f9a1c2b7d10` or `Set GREETING`.
    pub description: String,
    /// Who made it: the API caller's role, or `stamp` for releases the platform made.
    pub actor: String,
    pub created_at: Millis,
}

/// A TLS certificate uploaded for an app, served by SNI for the hostnames it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub app: AppName,
    /// Hex sha256 of the leaf certificate (DER), as Azure names certificates by thumbprint.
    pub thumbprint: String,
    /// DNS names from the certificate's subject alternative names (may include wildcards).
    pub hostnames: Vec<String>,
    /// Expiry, Unix milliseconds.
    pub not_after: Millis,
    pub cert_pem: String,
    pub key_pem: String,
    pub created_at: Millis,
}

/// A plan's autoscale setting as stored: the user's Azure-style JSON, kept verbatim so `show`
/// returns what was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscaleRecord {
    pub plan: PlanName,
    pub setting_json: String,
    pub enabled: bool,
    /// When a rule last scaled the plan, and the cooldown that action started (both survive a
    /// restart, so a cooldown does too).
    pub last_action_at: Option<Millis>,
    pub last_cooldown: Option<Millis>,
    pub updated_at: Millis,
}

/// One evaluation of a plan's autoscale setting, kept as its run history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscaleRun {
    pub plan: PlanName,
    pub at: Millis,
    /// Whether this run changed the plan's worker count.
    pub scaled: bool,
    pub summary: String,
    /// The engine's full explanation (JSON).
    pub evaluation_json: String,
}

/// Which of a plan's workers (by index) run each app's process types. At most one instance of
/// an app's process type runs on a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Placement(pub BTreeMap<AppName, BTreeMap<ProcessType, BTreeSet<u32>>>);

impl Placement {
    /// The workers running `app`'s `process_type`, in index order.
    pub fn workers(&self, app: &AppName, process_type: &ProcessType) -> Vec<u32> {
        self.0
            .get(app)
            .and_then(|types| types.get(process_type))
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }
}
