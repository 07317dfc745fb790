//! Placement. PURE (no IO, no clock): which worker of a plan runs which instance of which app.
//!
//! Three steps, each a function:
//!
//! 1. [`demands`]: how many instances each app's process type should run on a plan: Heroku's
//!    formation (§8.2 of the reference) read through Azure's plan semantics (§2.2).
//! 2. [`place`]: which workers run them, starting from the placement stored in the plan.
//! 3. [`desired_instances`]: one [`InstanceSpec`] per placed instance, for the worker agents.
//!
//! [`next_placement`] chains the first two for one plan, as the controller does whenever apps,
//! formations, caps or the worker count change; it then stores the result with the worker count
//! it was made for (`Plan::placement`, `Plan::placed_on`) before calling [`desired_instances`].
//!
//! # Demands
//!
//! Without per-app scaling, every app may use all of the plan's workers (Azure: "every app in
//! the plan runs on every instance"). With `Plan::per_app_scaling`, an app may use
//! `min(max_workers.unwrap_or(workers), workers)` of them (Azure's `numberOfWorkers`): its cap.
//! Each process type of the current release's Procfile, except `release` (Heroku's
//! release-phase command), demands `App::formation[type]` instances, or by default the cap for
//! `web` and 0 for any other type. Every count is clipped to the cap, because two instances of
//! one app's process type never share a worker. Formation entries for types the Procfile lacks,
//! and apps with no deployed code, demand nothing.
//!
//! # Placing
//!
//! Azure's rules (§2.2): best-effort even distribution, never two instances of one app on the
//! same worker, no metrics, and apps are rebalanced only when workers are added or removed. Load
//! here is the number of instances on a worker, all apps and types counted alike: Stamp has no
//! per-app size, and sizes measured at run time would be metrics.
//!
//! - **Keep.** Every assignment of the previous placement that is still valid (its worker still
//!   exists, its app still demands that type) stays where it is. Restarting an instance on
//!   another worker costs a cold start, so nothing moves without a reason.
//! - **Shrink.** A pair running on more workers than it now demands leaves the most loaded of
//!   them (ties: the highest index, the first to go on scale-in).
//! - **Grow.** A pair demanding more (or a new app) is added, one instance at a time, on the
//!   least loaded worker that does not run it yet (ties: the lowest index). A new pair placed
//!   on loads that differ by at most one keeps them so, whatever the order of the pairs: its
//!   `n` instances go to the `n` least loaded workers, which raises the lighter level first.
//!   So a placement made from scratch is always even.
//! - **Rebalance, only when the worker count changed** (`previous_workers != workers`):
//!   instances move one at a time from the most loaded worker to the least loaded until loads
//!   differ by at most one. Assignments on removed workers were dropped at the keep step and
//!   re-added at the grow step, which already prefers the emptiest (often the new) workers. A
//!   legal move always exists while loads differ by two or more (the busier worker runs a pair
//!   the idler one lacks), so the spread always gets even, with the fewest moves.
//!
//! While the worker count stays the same, adding, removing or re-capping an app never moves
//! another app, even if the loads drift apart (say an app on a single worker is deleted); the
//! next additions go to the emptiest workers and the next scale evens everything out. This is
//! the trade Azure makes too, and why `place` takes the previous worker count explicitly rather
//! than guessing it from the indexes in use.
//!
//! Everything is deterministic (no randomness, sorted maps, fixed tie rules), so the controller
//! computes the same placement on every run and a restart moves nothing.

mod demand;
mod place;
#[cfg(test)]
mod tests;

pub use demand::{Demand, cap, demands};
pub use place::place;

use stamp_model::{
    InstanceKey, InstanceSpec, LaneConfig, Millis, Placement, Plan, Release, Sku, Swap, WorkerId,
    WorkerLimits,
};

/// How long an instance may take to accept connections on `$PORT` (Azure's default start limit).
pub const DEFAULT_START_TIMEOUT: Millis = Millis::from_secs(230);

/// One app with the release its production slot runs, its other slots' current releases and
/// its swap in progress.
pub struct AppState<'a> {
    pub app: &'a stamp_model::App,
    pub release: Option<&'a Release>,
    /// The current release of each non-production slot that has one.
    pub slot_releases: Vec<&'a Release>,
    pub swap: Option<&'a Swap>,
}

impl<'a> AppState<'a> {
    /// An app with only a production slot and no swap.
    pub fn new(app: &'a stamp_model::App, release: Option<&'a Release>) -> AppState<'a> {
        AppState {
            app,
            release,
            slot_releases: Vec::new(),
            swap: None,
        }
    }

    /// What each of the app's slots runs, by lane, production first: a swap's source runs the
    /// swap's `source_config`; any other slot its current release, if that has code.
    pub fn lanes(&self) -> Vec<(u32, LaneConfig)> {
        let mut out = Vec::new();
        for slot in self.app.all_slots() {
            if let Some(swap) = self.swap
                && swap.source == slot.name
            {
                out.push((slot.lane, swap.source_config.clone()));
                continue;
            }
            let release = if slot.name.is_production() {
                self.release
            } else {
                self.slot_releases
                    .iter()
                    .copied()
                    .find(|r| r.slot == slot.name)
            };
            let Some(release) = release else {
                continue;
            };
            let (Some(artifact), Some(procfile)) = (&release.artifact, &release.procfile) else {
                continue;
            };
            out.push((
                slot.lane,
                LaneConfig {
                    slot: slot.name.clone(),
                    release: release.version,
                    generation: slot.generation,
                    artifact: artifact.clone(),
                    procfile: procfile.clone(),
                    settings: release.settings.clone(),
                    health_check: slot.site.health_check.clone(),
                },
            ));
        }
        out
    }
}

/// The placement `plan` should store now: [`demands`] of its apps placed with [`place`] from
/// `plan.placement`, which was made for `plan.placed_on` workers, onto `plan.workers` workers.
/// Store it with `placed_on = plan.workers`.
pub fn next_placement(plan: &Plan, apps: &[AppState<'_>]) -> Placement {
    place(
        plan.placed_on,
        plan.workers,
        &demands(plan, apps),
        &plan.placement,
    )
}

/// The desired instances of every app in `plans`, sorted by key: one per (app, lane, process
/// type, worker) of each plan's stored `placement`, for workers the plan still has and process
/// types the lane's configuration defines (never `release`, the release-phase command). Every
/// slot of an app runs on the workers the placement gives the app (Azure: slots run on the same
/// plan instances as production). Slots without deployed code run nothing.
pub fn desired_instances(plans: &[Plan], apps: &[AppState<'_>]) -> Vec<InstanceSpec> {
    let mut out = Vec::new();
    for plan in plans {
        // An unknown SKU cannot be stored (the API validates it); the smallest size is a safe
        // fallback rather than a reason to run nothing.
        let limits =
            WorkerLimits::of(&Sku::find(&plan.sku).unwrap_or(stamp_model::sku::CATALOG[0]));
        for state in apps.iter().filter(|s| s.app.plan == plan.name) {
            let Some(types) = plan.placement.0.get(&state.app.name) else {
                continue;
            };
            for (lane, config) in state.lanes() {
                for (process_type, workers) in types {
                    if !demand::is_formation_type(process_type) {
                        continue;
                    }
                    let Some(command) = config.procfile.command(process_type) else {
                        continue;
                    };
                    for &index in workers.iter().filter(|&&i| i < plan.workers) {
                        out.push(InstanceSpec {
                            key: InstanceKey {
                                app: state.app.name.clone(),
                                lane,
                                process_type: process_type.clone(),
                                worker: WorkerId {
                                    plan: plan.name.clone(),
                                    index,
                                },
                            },
                            slot: config.slot.clone(),
                            release: config.release,
                            generation: config.generation,
                            artifact: config.artifact.clone(),
                            command: command.to_string(),
                            env: config.settings.0.clone(),
                            grace_period: config.settings.grace_period(),
                            start_timeout: DEFAULT_START_TIMEOUT,
                            health_check: config.health_check.clone(),
                            limits: limits.clone(),
                        });
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}
