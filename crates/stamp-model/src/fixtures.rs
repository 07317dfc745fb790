//! Test fixtures: specs and observed instances with everything but the interesting fields
//! defaulted. For tests of this crate and, through the `fixtures` feature, of others.

use std::collections::BTreeMap;

use crate::names::{AppName, Digest, InstanceId, PlanName, ProcessType, SlotName};
use crate::spec::{InstanceKey, InstanceSpec, InstanceState, ObservedInstance, WorkerId};
use crate::time::Millis;

/// A spec of `app`'s `process_type` in `slot` on worker `worker` of plan `p`, release `release`.
pub fn spec_in(
    app: &str,
    slot: &str,
    process_type: &str,
    worker: u32,
    release: u32,
) -> InstanceSpec {
    InstanceSpec {
        key: InstanceKey {
            app: AppName::parse(app).expect("valid app name"),
            lane: u32::from(slot != "production"),
            process_type: ProcessType::parse(process_type).expect("valid process type"),
            worker: WorkerId {
                plan: PlanName::parse("p").expect("valid plan name"),
                index: worker,
            },
        },
        slot: SlotName::parse(slot).expect("valid slot name"),
        release,
        generation: 0,
        artifact: Digest::parse(&"ab".repeat(32)).expect("valid digest"),
        command: "run".to_string(),
        env: BTreeMap::new(),
        grace_period: Millis::from_secs(30),
        start_timeout: Millis::from_secs(60),
        health_check: None,
        limits: crate::spec::WorkerLimits::of(&crate::Sku::find("B1").expect("B1 exists")),
    }
}

/// A production web spec.
pub fn spec(app: &str, worker: u32, release: u32) -> InstanceSpec {
    spec_in(app, "production", "web", worker, release)
}

/// An observed instance `id` of `spec` in `state`, listening on `port`.
pub fn observed(id: &str, spec: InstanceSpec, state: InstanceState, port: u16) -> ObservedInstance {
    ObservedInstance {
        id: InstanceId(id.to_string()),
        spec,
        state,
        pid: Some(1),
        port,
        started_at: Millis::ZERO,
        restarts: 0,
        healthy: true,
    }
}
