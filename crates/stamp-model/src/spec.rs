//! What should run (an [`InstanceSpec`], desired state) and what runs (an [`ObservedInstance`],
//! observed state). The controller computes specs; a worker agent reports observations.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::{AppName, Digest, InstanceId, PlanName, ProcessType, SlotName};
use crate::site::HealthCheck;
use crate::time::Millis;

/// One worker of a plan: a slice of a node of the plan's SKU size. A plan with N workers has
/// workers 0..N; scaling in removes the highest indexes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId {
    pub plan: PlanName,
    pub index: u32,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.plan, self.index)
    }
}

/// Where an instance belongs: at most one current instance exists per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceKey {
    pub app: AppName,
    /// The lane (see [`crate::slots`]): which slot the instance serves is the slot that owns
    /// its lane now, which a swap changes without restarting it.
    pub lane: u32,
    pub process_type: ProcessType,
    pub worker: WorkerId,
}

/// Everything a worker agent needs to start an instance. Two instances with equal specs are
/// interchangeable; any difference (release, restart generation) means replace, rolling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub key: InstanceKey,
    /// The slot whose configuration (release, settings) this instance runs: `WEBSITE_SLOT_NAME`.
    pub slot: SlotName,
    /// Release number (vN) of the slot this instance runs.
    pub release: u32,
    /// Bumped by `stamp app restart`, so equal releases still get fresh instances.
    pub generation: u64,
    pub artifact: Digest,
    pub command: String,
    /// The app's settings snapshot from the release (platform variables are added by the agent).
    pub env: BTreeMap<String, String>,
    /// Time between SIGTERM and SIGKILL when the instance stops.
    pub grace_period: Millis,
    /// Milliseconds to wait for `$PORT` to accept connections before the start counts as a crash.
    pub start_timeout: Millis,
    /// The app's health check, probed by the worker agent. Part of the spec, so changing it
    /// replaces the instances (rolling), as changing it restarts the app in Azure.
    pub health_check: Option<HealthCheck>,
    /// The worker's size and the limits its sandbox enforces (from the plan's SKU). Part of the
    /// spec, so scaling a plan up or down moves its instances to workers of the new size.
    pub limits: WorkerLimits,
}

impl InstanceSpec {
    /// Only `web` instances listen on `$PORT` and take HTTP traffic (Heroku's rule).
    pub fn takes_traffic(&self) -> bool {
        self.key.process_type.is_web()
    }
}

/// How many warm workers of a size a node keeps ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolTarget {
    pub limits: WorkerLimits,
    pub warm: u32,
}

/// A node's workers of one size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub size: String,
    /// Warm workers ready to be taken (Azure's `WorkersAvailable`).
    pub available: u32,
    /// Workers running plans' instances.
    pub in_use: u32,
}

/// What a worker of a size may use, from the SKU catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkerLimits {
    /// The worker size ([`crate::Sku::size`]): which warm pool the worker comes from.
    pub size: String,
    /// CPU quota, thousandths of a core.
    pub millicores: u32,
    pub memory_mib: u32,
    /// Open outbound TCP connections per instance.
    pub outbound_connections: u32,
}

impl WorkerLimits {
    pub fn of(sku: &crate::Sku) -> WorkerLimits {
        WorkerLimits {
            size: sku.size.to_string(),
            millicores: sku.millicores,
            memory_mib: sku.memory_mib,
            outbound_connections: sku.outbound_connections,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Process started, not yet accepting connections on `$PORT`.
    Starting,
    /// Accepting connections; in rotation.
    Ready,
    /// Exited or failed to start; restarts after its backoff.
    Crashed,
    /// Out of rotation, finishing in-flight requests before SIGTERM.
    Draining,
    /// SIGTERM sent; SIGKILL follows after the grace period.
    Stopping,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Crashed => "crashed",
            InstanceState::Draining => "draining",
            InstanceState::Stopping => "stopping",
        }
    }

    /// Going away: no longer counts as the current instance of its key.
    pub fn is_leaving(self) -> bool {
        matches!(self, InstanceState::Draining | InstanceState::Stopping)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedInstance {
    pub id: InstanceId,
    pub spec: InstanceSpec,
    pub state: InstanceState,
    /// The process id while a process runs.
    pub pid: Option<u32>,
    /// The port the instance listens on (127.0.0.1).
    pub port: u16,
    /// Wall-clock start of the current process (Unix ms).
    pub started_at: Millis,
    /// How many times the process has been restarted after a crash.
    pub restarts: u32,
    /// False once the health check failed `unhealthy_after` times in a row; true again after
    /// one success. Always true without a health check. The routing table decides how many
    /// unhealthy instances actually leave rotation.
    pub healthy: bool,
}
