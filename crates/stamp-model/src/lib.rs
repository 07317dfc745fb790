//! Stamp's domain model. PURE: no IO, no clock, no async runtime.
//!
//! Everything here is a value: validated names, the SKU catalog, Procfiles, settings, the
//! specification of an instance (what should run) and its observed state (what runs), and the
//! reconcile function that turns the difference into actions. Runtime crates own the IO; they
//! pass `now` in as a [`time::Millis`].

pub mod backoff;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod health;
pub mod names;
pub mod procfile;
pub mod quota;
pub mod reconcile;
pub mod records;
pub mod settings;
pub mod site;
pub mod sku;
pub mod slots;
pub mod spec;
pub mod time;
pub mod usage;

pub use names::{AppName, Digest, InstanceId, NameError, PlanName, ProcessType, SlotName};
pub use procfile::{Procfile, ProcfileError};
pub use records::{App, AutoscaleRecord, AutoscaleRun, Certificate, Placement, Plan, Release};
pub use settings::{SettingError, Settings};
pub use site::{AccessAction, AccessRule, Balancing, HealthCheck, SiteConfig};
pub use sku::{Sku, Tier};
pub use slots::{LaneConfig, Slot, Swap, SwapPhase};
pub use spec::{
    InstanceKey, InstanceSpec, InstanceState, ObservedInstance, PoolStatus, PoolTarget, WorkerId,
    WorkerLimits,
};
pub use time::{Millis, SystemClock, WallClock};
