//! The only types that cross the network: JSON bodies of the REST API under `/api/v1` and its
//! error codes. Plain data with public fields; the controller converts from the model at the
//! edge, the client deserialises. Names and numbers are strings or integers, never model
//! newtypes, so the wire format does not move when the model does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const API_PREFIX: &str = "/api/v1";

/// Every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: see [`codes`].
    pub code: String,
    /// For people: what was wrong and how to fix it.
    pub message: String,
}

/// Error codes, with the HTTP status each goes with.
pub mod codes {
    /// 400: the request is malformed or a value is invalid.
    pub const INVALID: &str = "invalid";
    /// 401: no bearer token, or not one Stamp knows.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// 404
    pub const NOT_FOUND: &str = "not_found";
    /// 409: the name is taken, or the resource is in use.
    pub const CONFLICT: &str = "conflict";
    /// 413: the upload is over the size limit.
    pub const TOO_LARGE: &str = "too_large";
    /// 422: the request is well-formed but cannot be done (e.g. over a tier or capacity limit).
    pub const LIMIT: &str = "limit";
    /// 500
    pub const INTERNAL: &str = "internal";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub domain: String,
    /// `http://<app>.<domain>:<port>` with `{app}` in place of the name.
    pub app_url_template: String,
    pub node: NodeView,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub millicores: u32,
    pub memory_mib: u32,
    pub used_millicores: u32,
    pub used_memory_mib: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkuView {
    pub name: String,
    pub tier: String,
    pub millicores: u32,
    pub memory_mib: u32,
    pub max_workers: u32,
    pub slots_per_app: u32,
    pub outbound_connections: u32,
    pub autoscale: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatePlan {
    pub name: String,
    pub sku: String,
    /// Default 1.
    #[serde(default)]
    pub workers: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalePlan {
    pub workers: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanView {
    pub name: String,
    pub sku: SkuView,
    pub workers: u32,
    pub apps: Vec<String>,
    /// Azure's `perSiteScaling`: each app's `max_workers` caps how many workers run it.
    #[serde(default)]
    pub per_app_scaling: bool,
    /// Which app's process types each worker runs, worker 0 first.
    #[serde(default)]
    pub placement: Vec<WorkerPlacementView>,
    /// Unix milliseconds.
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlacementView {
    pub index: u32,
    /// `app/type`, e.g. `shop/web`, sorted.
    pub runs: Vec<String>,
}

/// `PATCH /plans/{plan}`: only the fields present change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdatePlan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_app_scaling: Option<bool>,
}

/// An app's cap on workers: a count, or `"all"` for no cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WorkerCap {
    /// Signed so that a negative value gets a clear error rather than a parse failure.
    Count(i64),
    All(String),
}

/// `PUT /apps/{app}/formation`: absolute instance counts for the named process types; types
/// not named keep their count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateFormation {
    pub counts: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormationView {
    pub app: String,
    pub types: Vec<ProcessFormationView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessFormationView {
    pub process_type: String,
    pub command: String,
    /// Instances wanted (after the plan's worker count and the app's cap).
    pub count: u32,
    /// True when no count was set and the default applies (web: one per worker; others: 0).
    pub default: bool,
}

/// A warm worker pool of one worker size on the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolView {
    /// `shared`, `small`, `medium`, `large`, or a Premium size such as `p1v3`.
    pub size: String,
    pub skus: Vec<String>,
    pub millicores: u32,
    pub memory_mib: u32,
    /// Warm workers the node keeps ready for this size.
    pub warm_target: u32,
    /// Warm workers ready now (Azure's `WorkersAvailable`).
    pub available: u32,
    /// Workers of this size running plans' instances.
    pub in_use: u32,
}

/// `PUT /pools/{size}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetPool {
    pub warm: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateApp {
    pub name: String,
    pub plan: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    pub name: String,
    pub plan: String,
    pub hostname: String,
    pub url: String,
    /// The production slot's current release, if any.
    pub release: Option<u32>,
    pub instances: InstanceCounts,
    pub site: SiteView,
    /// At most this many of the plan's workers run the app (per-app scaling); None: all.
    #[serde(default)]
    pub max_workers: Option<u32>,
    pub created_at: u64,
}

/// An app's front-end configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SiteView {
    pub https_only: bool,
    pub client_affinity: bool,
    /// `round-robin` or `least-requests`.
    pub balancing: String,
    pub request_timeout_secs: u64,
    pub health_check: Option<HealthCheckView>,
    pub domains: Vec<String>,
    pub access_rules: Vec<AccessRuleView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthCheckView {
    pub path: String,
    pub interval_secs: u64,
    pub unhealthy_after: u32,
    pub max_unhealthy_percent: u32,
}

/// `PATCH /apps/{app}`: only the fields present change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateApp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_affinity: Option<bool>,
    /// `round-robin` or `least-requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancing: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_secs: Option<u64>,
    /// The health check path; an empty string turns the health check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_interval_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_unhealthy_after: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_max_unhealthy_percent: Option<u32>,
    /// Per-app scaling cap: a count, or `"all"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<WorkerCap>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessRuleView {
    pub name: String,
    pub priority: u32,
    /// `allow` or `deny`.
    pub action: String,
    /// CIDR, e.g. `10.0.0.0/8` or `2001:db8::/32`; a bare address means one host.
    pub network: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateView {
    pub thumbprint: String,
    pub hostnames: Vec<String>,
    /// Unix milliseconds.
    pub not_after: u64,
    pub created_at: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceCounts {
    /// Instances the current release and formation call for.
    pub desired: u32,
    /// Of those, how many are ready (in rotation).
    pub ready: u32,
    /// Instances of an older release or restart generation still running (a rollout is under
    /// way, or the new release is not becoming ready).
    pub stale: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseView {
    pub version: u32,
    #[serde(default)]
    pub slot: String,
    pub artifact: Option<String>,
    pub process_types: Vec<String>,
    pub description: String,
    /// Who made it: the caller's role, or `stamp` for releases the platform made.
    #[serde(default)]
    pub actor: String,
    pub created_at: u64,
    /// In a deploy's answer: the slot this release's auto swap started into, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_swap_to: Option<String>,
}

/// Query of every per-app route that acts on one slot: `?slot=staging` (default production).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SlotQuery {
    pub slot: Option<String>,
}

/// `POST /apps/{app}/slots`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSlot {
    pub name: String,
    /// Copy this slot's settings (Azure clones settings, never content).
    #[serde(default)]
    pub clone_settings_from: Option<String>,
}

/// `PATCH /apps/{app}/slots/{slot}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateSlot {
    /// Auto swap target; `""` turns auto swap off.
    #[serde(default)]
    pub auto_swap_to: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotView {
    pub name: String,
    pub hostname: String,
    pub url: String,
    /// The current release, if any.
    pub release: Option<u32>,
    pub auto_swap_to: Option<String>,
    /// Share of production's clients routed here; `None`: no routing rule.
    pub routing: Option<u8>,
    pub instances: InstanceCounts,
    /// The slot's own front-end configuration (never swapped).
    #[serde(default)]
    pub site: SiteView,
}

/// `PUT /apps/{app}/routing`: the whole rule set; slots left out get no rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetRouting {
    pub rules: BTreeMap<String, u8>,
}

/// `POST /apps/{app}/swap`: start a swap, or finish (`complete`) or revert (`cancel`) a swap
/// with preview.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwapRequest {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub preview: bool,
    /// `complete` or `cancel`.
    #[serde(default)]
    pub action: Option<String>,
}

/// A swap's progress: `GET /apps/{app}/swap`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwapView {
    pub source: String,
    pub target: String,
    /// `applying`, `warming`, `preview`, `completed`, `reverted`, or `none`.
    pub state: String,
    /// Whether the swap has ended (completed or reverted).
    pub done: bool,
    /// Every step so far, oldest first.
    pub steps: Vec<String>,
}

/// `POST /apps/{app}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollback {
    pub version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    /// The slot whose lane the instance is on.
    #[serde(default)]
    pub slot: String,
    pub process_type: String,
    pub worker: String,
    pub release: u32,
    /// `starting`, `ready`, `crashed`, `draining` or `stopping`.
    pub state: String,
    pub pid: Option<u32>,
    pub port: u16,
    /// Unix milliseconds.
    pub started_at: u64,
    pub restarts: u32,
    /// False once the app's health check failed enough times in a row.
    pub healthy: bool,
}

/// `PATCH /apps/{app}/settings`: applied together, as one new release.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateSettings {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
    /// `true`: mark the names in `set` as slot settings (they stay with their slot in a swap);
    /// `false`: unmark the names in `set` and `unset`.
    #[serde(default)]
    pub slot_setting: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingsView {
    pub settings: BTreeMap<String, String>,
    /// The app's slot settings (sticky names, the same list in every slot).
    #[serde(default)]
    pub slot_settings: Vec<String>,
    /// The release the change created, when there was one.
    pub release: Option<ReleaseView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLineView {
    /// The slots the line concerns; empty: the whole app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<String>,
    /// Unix milliseconds.
    pub ts: u64,
    /// `stamp` for platform events, otherwise the instance id.
    pub source: String,
    pub text: String,
}

/// A plan's autoscale setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoscaleView {
    pub plan: String,
    pub enabled: bool,
    /// The setting as it was set (Azure's `autoscaleSettings` JSON).
    pub setting: serde_json::Value,
    pub profiles: Vec<String>,
    pub webhooks: usize,
    /// When a rule last scaled the plan (Unix ms) and the cooldown it started, in seconds.
    pub last_action_at: Option<u64>,
    pub cooldown_secs: Option<u64>,
}

/// One evaluation of a plan's autoscale setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoscaleRunView {
    /// Unix milliseconds.
    pub at: u64,
    pub scaled: bool,
    pub summary: String,
    /// The engine's full explanation: profile, each rule's observed value and threshold, the
    /// flapping projection, the decision and its reason, events.
    pub evaluation: serde_json::Value,
}

/// `POST /plans/{plan}/metrics`: a custom metric sample for autoscale rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricSample {
    pub metric: String,
    pub value: f64,
}
