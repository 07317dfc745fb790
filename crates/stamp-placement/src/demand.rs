//! Demands: how many instances of each app's process type a plan should run (the formation,
//! clipped to the workers the app may use).

use stamp_model::{AppName, Plan, ProcessType};

use crate::AppState;

/// Heroku's release-phase command: a one-off run per release, never a formation type.
const RELEASE_PHASE: &str = "release";

/// How many instances of one app's process type should run: at most one per worker, so
/// `count` never exceeds the app's cap (see [`cap`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Demand {
    pub app: AppName,
    pub process_type: ProcessType,
    pub count: u32,
}

/// How many of `plan`'s workers `app` may use. Without per-app scaling every app uses all of them
/// (Azure's default); with it, the app's `max_workers` (Azure's `numberOfWorkers`) caps that,
/// and `None` means all of them.
pub fn cap(plan: &Plan, app: &stamp_model::App) -> u32 {
    if plan.per_app_scaling {
        app.max_workers.unwrap_or(plan.workers).min(plan.workers)
    } else {
        plan.workers
    }
}

/// The demands of `plan`'s apps, sorted by app then process type. Apps of other plans and apps
/// without deployed code (no release, or a release without artifact or Procfile) demand nothing.
///
/// One demand per process type of the Procfile of any slot's release (slots run on the workers
/// production's placement gives the app; see [`crate::AppState::lanes`]), except `release` (Heroku's
/// release-phase command): `web` defaults to the app's cap, other types to 0, and a formation
/// entry overrides the default. Every count is clipped to the cap. Formation entries for types
/// the Procfile lacks demand nothing (Heroku keeps them at 0 until a Procfile defines the type).
/// Zero counts are listed too, so a caller can show the whole formation.
pub fn demands(plan: &Plan, apps: &[AppState<'_>]) -> Vec<Demand> {
    let mut out = Vec::new();
    for state in apps {
        let app = state.app;
        if app.plan != plan.name {
            continue;
        }
        let cap = cap(plan, app);
        let lanes = state.lanes();
        let types: std::collections::BTreeSet<&ProcessType> = lanes
            .iter()
            .flat_map(|(_, config)| config.procfile.processes.keys())
            .collect();
        for process_type in types {
            if !is_formation_type(process_type) {
                continue;
            }
            let default = if process_type.is_web() { cap } else { 0 };
            let count = app.formation.get(process_type).copied().unwrap_or(default);
            out.push(Demand {
                app: app.name.clone(),
                process_type: process_type.clone(),
                count: count.min(cap),
            });
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.app == b.app && a.process_type == b.process_type);
    out
}

/// Whether `process_type` is a formation type at all (everything but the release phase).
pub(crate) fn is_formation_type(process_type: &ProcessType) -> bool {
    process_type.as_str() != RELEASE_PHASE
}
