//! The API of workers: per-app scaling (`PATCH /plans/{plan}`, an app's `max_workers`),
//! process formation (`/apps/{app}/formation`) and warm worker pools (`/pools`).
//!
//! Every handler validates everything before it writes, so a refused request changes nothing.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use stamp_api_types as wire;
use stamp_model::sku::{self, Sku};
use stamp_model::{App, Plan, ProcessType, SlotName};
use stamp_placement::AppState;

use crate::api::{JsonBody, app_name, plan_name};
use crate::{ApiError, Controller};

type ApiResult<T> = Result<T, ApiError>;

/// Warm workers kept per size unless `stamp pool set` says otherwise: one, so a scale-out of any
/// size finds a prepared worker. An idle warm worker is an empty sandbox with its limits set; it
/// reserves no node capacity.
pub const DEFAULT_WARM: u32 = 1;

pub(crate) async fn update_plan(
    State(c): State<Controller>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<wire::UpdatePlan>,
) -> ApiResult<Json<wire::PlanView>> {
    let name = plan_name(&name)?;
    let w = c.inner.writer.lock().await;
    let plan = c.store().plan(&name)?;
    let sku = Sku::find(&plan.sku).map_err(ApiError::internal)?;
    if let Some(on) = req.per_app_scaling
        && on != plan.per_app_scaling
    {
        if on && !sku.per_app_scaling() {
            return Err(ApiError::limit(format!(
                "per-app scaling needs Standard or higher; plan {name} is {} ({}). Move the app to a Standard or Premium plan first",
                sku.name,
                sku.tier.as_str()
            )));
        }
        c.store().set_per_app_scaling(&name, on)?;
        c.event_for_plan_apps(
            &name,
            &format!(
                "scale: per-app scaling {} on plan {name}",
                if on { "on" } else { "off" }
            ),
        );
        c.synced()?;
    }
    drop(w);
    Ok(Json(
        c.plan_view(&c.store().plan(&name)?, &c.store().apps()?)?,
    ))
}

/// The cap an update asks for, checked against the app's plan: `Ok(None)` for `"all"`.
pub(crate) fn check_cap(cap: &wire::WorkerCap, plan: &Plan) -> ApiResult<Option<u32>> {
    let n = match cap {
        wire::WorkerCap::All(s) if s.eq_ignore_ascii_case("all") => return Ok(None),
        wire::WorkerCap::All(s) => {
            return Err(ApiError::invalid(format!(
                "max workers must be a number of workers or \"all\"; got {s:?}"
            )));
        }
        wire::WorkerCap::Count(n) => *n,
    };
    if !plan.per_app_scaling {
        return Err(ApiError::invalid(format!(
            "plan {} has per-app scaling off, so every app runs on all its workers; turn it on with `stamp plan update {} --per-app-scaling true` (Standard tier or higher)",
            plan.name, plan.name
        )));
    }
    if n < 1 || n > i64::from(plan.workers) {
        return Err(ApiError::invalid(format!(
            "max workers must be between 1 and the plan's {} workers; got {n}. Scale the plan first for more",
            plan.workers
        )));
    }
    Ok(Some(n as u32))
}

pub(crate) async fn show_formation(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<wire::FormationView>> {
    let app = c.store().app(&app_name(&name)?)?;
    formation_view(&c, &app).map(Json)
}

pub(crate) async fn update_formation(
    State(c): State<Controller>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<wire::UpdateFormation>,
) -> ApiResult<Json<wire::FormationView>> {
    let name = app_name(&name)?;
    if req.counts.is_empty() {
        return Err(ApiError::invalid(
            "name at least one process type and count, e.g. `stamp scale APP web=2 worker=1`",
        ));
    }
    let w = c.inner.writer.lock().await;
    let mut app = c.store().app(&name)?;
    let plan = c.store().plan(&app.plan)?;
    let release = c.store().current_release(&name, &SlotName::production())?;
    let Some(procfile) = release.as_ref().and_then(|r| r.procfile.as_ref()) else {
        return Err(ApiError::invalid(format!(
            "app {name} has no code yet, so it has no process types; deploy first (`stamp deploy {name} DIR`)"
        )));
    };
    let room = if plan.per_app_scaling {
        app.max_workers.unwrap_or(plan.workers).min(plan.workers)
    } else {
        plan.workers
    };
    let mut formation = app.formation.clone();
    let mut changes = Vec::new();
    for (kind, &count) in &req.counts {
        let kind = ProcessType::parse(kind)?;
        if kind.as_str() == "release" {
            return Err(ApiError::invalid(
                "`release` is the release-phase command, run once per release, not a process type to scale",
            ));
        }
        if procfile.command(&kind).is_none() {
            let types: Vec<&str> = procfile.processes.keys().map(|t| t.as_str()).collect();
            return Err(ApiError::invalid(format!(
                "the Procfile of app {name}'s current release has no process type \"{kind}\"; it has: {}",
                types.join(", ")
            )));
        }
        if count < 0 || count > i64::from(room) {
            return Err(ApiError::invalid(format!(
                "{kind}={count}: a process type runs at most one instance per worker, and app {name} may use {room} worker(s) of plan {}; choose 0 to {room}, or scale the plan{}",
                plan.name,
                if plan.per_app_scaling {
                    " or raise the app's --max-workers"
                } else {
                    ""
                }
            )));
        }
        formation.insert(kind.clone(), count as u32);
        changes.push(format!("{kind}={count}"));
    }
    if formation != app.formation {
        c.store().set_formation(&name, &formation)?;
        c.inner
            .logs
            .event(&name, &format!("scale: formation {}", changes.join(" ")));
        app.formation = formation;
        c.synced()?;
    }
    drop(w);
    formation_view(&c, &app).map(Json)
}

fn formation_view(c: &Controller, app: &App) -> ApiResult<wire::FormationView> {
    let plan = c.store().plan(&app.plan)?;
    let release = c
        .store()
        .current_release(&app.name, &SlotName::production())?;
    let demands = stamp_placement::demands(&plan, &[AppState::new(app, release.as_ref())]);
    let types = release
        .as_ref()
        .and_then(|r| r.procfile.as_ref())
        .map(|p| {
            p.processes
                .iter()
                .map(|(kind, command)| wire::ProcessFormationView {
                    process_type: kind.to_string(),
                    command: command.clone(),
                    count: demands
                        .iter()
                        .find(|d| &d.process_type == kind)
                        .map_or(0, |d| d.count),
                    default: !app.formation.contains_key(kind),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(wire::FormationView {
        app: app.name.to_string(),
        types,
    })
}

/// The plan's placement for its view: worker index to `app/type`s.
pub(crate) fn placement_view(plan: &Plan) -> Vec<wire::WorkerPlacementView> {
    let mut by_worker: BTreeMap<u32, Vec<String>> =
        (0..plan.workers).map(|i| (i, Vec::new())).collect();
    for (app, types) in &plan.placement.0 {
        for (kind, workers) in types {
            for w in workers {
                if let Some(runs) = by_worker.get_mut(w) {
                    runs.push(format!("{app}/{kind}"));
                }
            }
        }
    }
    by_worker
        .into_iter()
        .map(|(index, mut runs)| {
            runs.sort();
            wire::WorkerPlacementView { index, runs }
        })
        .collect()
}

// ---- warm worker pools

/// Every size's warm target: the stored ones, [`DEFAULT_WARM`] for the rest.
pub(crate) fn pool_targets(c: &Controller) -> ApiResult<BTreeMap<String, u32>> {
    let set = c.store().pools()?;
    Ok(sku::sizes()
        .iter()
        .map(|s| {
            let warm = set.get(s.size).copied().unwrap_or(DEFAULT_WARM);
            (s.size.to_string(), warm)
        })
        .collect())
}

pub(crate) async fn list_pools(
    State(c): State<Controller>,
) -> ApiResult<Json<Vec<wire::PoolView>>> {
    pools_view(&c).map(Json)
}

fn pools_view(c: &Controller) -> ApiResult<Vec<wire::PoolView>> {
    let targets = pool_targets(c)?;
    let status = c.inner.node.pools();
    Ok(sku::sizes()
        .iter()
        .map(|s| {
            let live = status.iter().find(|p| p.size == s.size);
            wire::PoolView {
                size: s.size.to_string(),
                skus: sku::CATALOG
                    .iter()
                    .filter(|k| k.size == s.size)
                    .map(|k| k.name.to_string())
                    .collect(),
                millicores: s.millicores,
                memory_mib: s.memory_mib,
                warm_target: targets.get(s.size).copied().unwrap_or(DEFAULT_WARM),
                available: live.map_or(0, |p| p.available),
                in_use: live.map_or(0, |p| p.in_use),
            }
        })
        .collect())
}

/// Most warm workers a pool may be asked to keep: enough for any plan to scale out at once
/// (Premium's 30), small enough that a typo cannot make the node create thousands of groups.
pub const MAX_WARM: i64 = 30;

pub(crate) async fn set_pool(
    State(c): State<Controller>,
    Path(size): Path<String>,
    JsonBody(req): JsonBody<wire::SetPool>,
) -> ApiResult<Json<wire::PoolView>> {
    let size = sku::find_size(&size).map_err(ApiError::not_found)?.size;
    if !(0..=MAX_WARM).contains(&req.warm) {
        return Err(ApiError::invalid(format!(
            "a pool keeps 0 to {MAX_WARM} warm workers; got {}",
            req.warm
        )));
    }
    let w = c.inner.writer.lock().await;
    c.store().set_pool(size, req.warm as u32)?;
    c.synced()?;
    drop(w);
    pools_view(&c)?
        .into_iter()
        .find(|p| p.size == size)
        .map(Json)
        .ok_or_else(|| ApiError::internal("the pool vanished"))
}
