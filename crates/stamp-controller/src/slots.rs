//! Deployment slots (Azure App Service §3): the slots API, traffic routing rules, rollback, and
//! the swap, a task per app that survives a controller restart.
//!
//! A swap, source → target, in Azure's order:
//! 1. The source's lane gets the swap's `source_config` (its code, the target's slot settings,
//!    health check and identity, numbered as the target's next release) and restarts, rolling.
//! 2. Every source instance must come up on it; a crash reverts the swap.
//! 3. (With preview: stop here until `complete` or `cancel`.)
//! 4. Warm-up: each source web instance answers `WEBSITE_SWAP_WARMUP_PING_PATH` with an accepted
//!    status, within the timeout and tries; otherwise the swap reverts.
//! 5. The flip: one store transaction gives each slot its new release and exchanges their lanes;
//!    the routing table follows at once. Nothing restarts on the target's side.
//! 6. The old target instances, now the source's lane, restart with the source's settings.
//!
//! The swap record is stored at step 1 and removed by the flip or a revert, so a controller
//! that restarts mid-swap resumes it from step 2: it ends completed or reverted, never mixed.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use stamp_api_types as wire;
use stamp_model::slots::{Warmup, host_label, swapped_settings};
use stamp_model::{
    App, AppName, InstanceState, LaneConfig, Release, Sku, Slot, SlotName, Swap, SwapPhase,
};
use stamp_store::{NewRelease, StoreError};

use crate::api::{Caller, JsonBody, app_name, release_view};
use crate::{ApiError, Controller};

type ApiResult<T> = Result<T, ApiError>;

/// Who the platform names as the author of the releases it makes itself.
pub(crate) const PLATFORM: &str = "stamp";

/// Crashes of one source instance, in a row, that revert a swap.
const CRASHES_TO_REVERT: u32 = 3;

/// How long a swap waits for the source's instances to run its new configuration.
const RESTART_WAIT: Duration = Duration::from_secs(300);

/// The slot a `?slot=` query names (default production).
pub(crate) fn slot_of(q: &wire::SlotQuery) -> ApiResult<SlotName> {
    match q.slot.as_deref() {
        None | Some("") => Ok(SlotName::production()),
        Some(s) => Ok(SlotName::parse(s)?),
    }
}

/// The app's slot `name`, or a not-found error that says how to list them.
pub(crate) fn find_slot(app: &App, name: &SlotName) -> ApiResult<Slot> {
    app.slot(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "app {} has no slot named {name}; `stamp slot list {}` shows its slots",
            app.name, app.name
        ))
    })
}

/// Who uses `label` as a hostname label under the domain: `app X` for an app of that name,
/// `slot S of app A` when `label` is `<A>-<S>` for an existing slot. Apps and slots must never
/// share one, so both creations check it.
pub(crate) fn label_owner(c: &Controller, label: &str) -> ApiResult<Option<String>> {
    if let Ok(name) = AppName::parse(label)
        && c.store().app(&name).is_ok()
    {
        return Ok(Some(format!("app {name}")));
    }
    for (i, _) in label.match_indices('-') {
        let (owner, slot) = (&label[..i], &label[i + 1..]);
        if let (Ok(owner), Ok(slot)) = (AppName::parse(owner), SlotName::parse(slot))
            && !slot.is_production()
            && let Ok(owner) = c.store().app(&owner)
            && owner.slot(&slot).is_some()
        {
            return Ok(Some(format!("slot {slot} of app {}", owner.name)));
        }
    }
    Ok(None)
}

/// Refuses a change to `slot` while a swap of the app involves it.
pub(crate) fn ensure_not_swapping(c: &Controller, app: &AppName, slot: &SlotName) -> ApiResult<()> {
    if let Some(swap) = c.store().swap(app)?
        && (&swap.source == slot || &swap.target == slot)
    {
        return Err(ApiError::conflict(format!(
            "slot {slot} of app {app} is in a swap ({} → {}, {}); wait for it to end, or finish a swap with preview with `stamp slot swap {app} --complete` or `--cancel`",
            swap.source,
            swap.target,
            swap.phase.as_str()
        )));
    }
    Ok(())
}

impl Controller {
    /// `<app>.<domain>` for production, `<app>-<slot>.<domain>` for any other slot.
    pub(crate) fn slot_hostname(&self, app: &AppName, slot: &SlotName) -> String {
        format!("{}.{}", host_label(app, slot), self.inner.config.domain)
    }

    fn slot_url(&self, app: &AppName, slot: &SlotName) -> String {
        let host = self.slot_hostname(app, slot);
        match self.inner.config.http_port {
            80 => format!("http://{host}"),
            port => format!("http://{host}:{port}"),
        }
    }

    /// The slot's view; `release` is its current release. Reads the desired and observed
    /// instances once per call: a caller listing several slots uses [`Controller::slot_views`].
    fn slot_view(&self, app: &App, slot: &Slot) -> ApiResult<wire::SlotView> {
        let release = self.store().current_release(&app.name, &slot.name)?;
        Ok(self.slot_view_with(
            app,
            slot,
            release.as_ref(),
            &self.desired(),
            &self.observed(),
        ))
    }

    /// Every slot's view, production first.
    fn slot_views(&self, app: &App) -> ApiResult<Vec<wire::SlotView>> {
        let (desired, observed) = (self.desired(), self.observed());
        app.all_slots()
            .iter()
            .map(|s| {
                let release = self.store().current_release(&app.name, &s.name)?;
                Ok(self.slot_view_with(app, s, release.as_ref(), &desired, &observed))
            })
            .collect()
    }

    fn slot_view_with(
        &self,
        app: &App,
        slot: &Slot,
        release: Option<&Release>,
        desired: &[stamp_model::InstanceSpec],
        observed: &[stamp_model::ObservedInstance],
    ) -> wire::SlotView {
        wire::SlotView {
            name: slot.name.to_string(),
            hostname: self.slot_hostname(&app.name, &slot.name),
            url: self.slot_url(&app.name, &slot.name),
            release: release.map(|r| r.version),
            auto_swap_to: slot.auto_swap_to.as_ref().map(|s| s.to_string()),
            routing: slot.routing,
            instances: crate::api::counts(&app.name, slot.lane, desired, observed),
            site: crate::api::site_view(&slot.site),
        }
    }

    /// Logs a swap step to the app's stream and to the swap's progress.
    fn swap_step(&self, swap: &Swap, state: &str, text: &str) {
        let line = format!("swap {} → {}: {text}", swap.source, swap.target);
        self.inner
            .logs
            .slot_event(&swap.app, &[&swap.source, &swap.target], &line);
        let mut all = self.inner.swaps.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || (swap.started_at, swap_view(swap, state));
        let (started_at, view) = all.entry(swap.app.clone()).or_insert_with(fresh);
        if *started_at != swap.started_at {
            // Another swap of the same app: its progress starts afresh.
            (*started_at, *view) = fresh();
        }
        view.state = state.to_string();
        view.done = matches!(state, "completed" | "reverted");
        view.steps.push(text.to_string());
    }

    /// Starts a swap: validates, stores the swap with the source's new configuration, publishes
    /// (the source's lane restarts) and hands the rest to [`Controller::drive_swap`].
    pub(crate) fn start_swap(
        &self,
        app: &App,
        source: &SlotName,
        target: &SlotName,
        preview: bool,
        actor: &str,
    ) -> ApiResult<Swap> {
        let release = self.store().current_release(&app.name, source)?;
        let swap = self.plan_swap(app, source, target, preview, actor, release.as_ref())?;
        self.store().start_swap(&swap).map_err(|e| match e {
            StoreError::Conflict { .. } => {
                ApiError::conflict(format!("a swap of app {} is already running", app.name))
            }
            e => e.into(),
        })?;
        self.launch_swap(&swap);
        Ok(swap)
    }

    /// The swap of `source` (whose release is `release`) into `target`, validated, not stored.
    pub(crate) fn plan_swap(
        &self,
        app: &App,
        source: &SlotName,
        target: &SlotName,
        preview: bool,
        actor: &str,
        release: Option<&Release>,
    ) -> ApiResult<Swap> {
        if source.is_production() {
            return Err(ApiError::invalid(format!(
                "production is the target of a swap, never its source (the source runs with the target's settings while it warms up); use `stamp slot swap {} --source <slot>`",
                app.name
            )));
        }
        if source == target {
            return Err(ApiError::invalid(format!(
                "the source and target are both {source}; swap two different slots of app {}",
                app.name
            )));
        }
        find_slot(app, source)?;
        let target_slot = find_slot(app, target)?;
        let store = self.store();
        if let Some(running) = store.swap(&app.name)? {
            return Err(ApiError::conflict(format!(
                "a swap of app {} is already running ({} → {}, {}); wait for it to end, or finish a swap with preview with --complete or --cancel",
                app.name,
                running.source,
                running.target,
                running.phase.as_str()
            )));
        }
        let Some((release, artifact, procfile)) = release.and_then(|r| {
            let artifact = r.artifact.clone()?;
            let procfile = r.procfile.clone()?;
            Some((r, artifact, procfile))
        }) else {
            return Err(ApiError::invalid(format!(
                "slot {source} of app {} has no deployed code to swap; deploy to it first with `stamp deploy PATH --app {} --slot {source}`",
                app.name, app.name
            )));
        };
        let next_target_version = store
            .current_release(&app.name, target)?
            .map_or(1, |r| r.version + 1);
        let swap = Swap {
            app: app.name.clone(),
            source: source.clone(),
            target: target.clone(),
            preview,
            phase: SwapPhase::Applying,
            source_config: LaneConfig {
                slot: target.clone(),
                release: next_target_version,
                generation: target_slot.generation,
                artifact,
                procfile,
                settings: swapped_settings(
                    &release.settings,
                    &target_slot.settings,
                    &app.slot_settings,
                ),
                health_check: target_slot.site.health_check.clone(),
            },
            started_at: self.now(),
            actor: actor.to_string(),
        };
        Ok(swap)
    }

    /// After a swap was stored: its first step, the publish that restarts the source's lane,
    /// and the task that drives the rest.
    pub(crate) fn launch_swap(&self, swap: &Swap) {
        self.swap_step(
            swap,
            "applying",
            &format!(
                "started{}: applying {}'s slot settings to {}'s instances (restart, rolling)",
                if swap.preview { " with preview" } else { "" },
                swap.target,
                swap.source
            ),
        );
        self.sync_after_commit();
        let c = self.clone();
        let name = swap.app.clone();
        tokio::spawn(async move { c.drive_swap(name).await });
    }

    /// Resumes every stored swap that was not waiting for a preview decision: after a restart,
    /// each ends completed or reverted.
    pub fn resume_swaps(&self) {
        let swaps = match self.store().swaps() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot read the swaps in progress: {e}");
                return;
            }
        };
        for swap in swaps {
            if swap.phase == SwapPhase::Preview {
                continue;
            }
            self.swap_step(&swap, "applying", "resumed after a controller restart");
            let c = self.clone();
            tokio::spawn(async move { c.drive_swap(swap.app).await });
        }
    }

    /// Steps 2–5 of the app's stored swap.
    async fn drive_swap(&self, app: AppName) {
        let swap = match self.store().swap(&app) {
            Ok(Some(s)) if s.phase == SwapPhase::Applying => s,
            Ok(_) => return,
            Err(e) => {
                tracing::error!("cannot read the swap of app {app}: {e}");
                return;
            }
        };
        let ports = match self.wait_source_ready(&swap).await {
            Ok(ports) => ports,
            Err(reason) => return self.revert_swap(&swap, &reason).await,
        };
        self.swap_step(
            &swap,
            "applying",
            &format!(
                "{} instance(s) of {} restarted with {}'s settings",
                ports.len(),
                swap.source,
                swap.target
            ),
        );
        if swap.preview {
            let mut paused = swap.clone();
            paused.phase = SwapPhase::Preview;
            let _w = self.inner.writer.lock().await;
            match self.store().update_swap(&swap, &paused) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::error!("cannot store the swap's preview phase: {e}");
                    return;
                }
            }
            self.swap_step(
                &swap,
                "preview",
                &format!(
                    "preview: {} runs with {}'s settings at {}; finish with `stamp slot swap {app} --complete` or revert with `--cancel`",
                    swap.source,
                    swap.target,
                    self.slot_url(&app, &swap.source)
                ),
            );
            return;
        }
        if let Err(reason) = self.warm_up(&swap, &ports).await {
            return self.revert_swap(&swap, &reason).await;
        }
        let _w = self.inner.writer.lock().await;
        // A cancel could not have happened (only previews cancel), but the record is the truth.
        match self.store().swap(&app) {
            Ok(Some(s)) if s == swap => {}
            _ => {
                self.swap_step(&swap, "reverted", "ended: the swap was no longer stored");
                return;
            }
        }
        match self.store().complete_swap(&swap, &swap.actor, self.now()) {
            Ok(releases) => {
                self.sync_after_commit();
                self.swap_step(
                    &swap,
                    "completed",
                    &format!(
                        "routing switched: {} now serves release v{} ({}); {} gets release v{} and restarts",
                        swap.target,
                        releases.target.version,
                        releases.target.description,
                        swap.source,
                        releases.source.version
                    ),
                );
            }
            Err(e) => {
                drop(_w);
                self.revert_swap(&swap, &format!("the store could not switch routing: {e}"))
                    .await
            }
        }
    }

    /// Reverts a swap: the source's lane goes back to its own release (rolling restart).
    async fn revert_swap(&self, swap: &Swap, reason: &str) {
        let _w = self.inner.writer.lock().await;
        match self.store().end_swap(swap) {
            // Gone already (the app was deleted, or the record changed): nothing to undo.
            Ok(false) => {
                // A deleted app gets no log lines (they would recreate its log file).
                if self.store().app(&swap.app).is_ok() {
                    self.swap_step(
                        swap,
                        "reverted",
                        &format!(
                            "ended without a revert ({reason}): the swap was no longer stored"
                        ),
                    );
                }
            }
            Ok(true) => {
                self.sync_after_commit();
                self.swap_step(
                    swap,
                    "reverted",
                    &format!(
                        "reverted: {reason}; {} keeps serving its release, {} gets its own settings back",
                        swap.target, swap.source
                    ),
                );
            }
            Err(e) => tracing::error!("cannot revert the swap of app {}: {e}", swap.app),
        }
    }

    /// Waits until every desired instance of the source's lane runs the swap's configuration
    /// and is ready; returns the web instances' `(instance, port)`. A crash of one of them, or
    /// the wait running out, is the reason to revert.
    async fn wait_source_ready(&self, swap: &Swap) -> Result<Vec<(String, u16)>, String> {
        let lane = self
            .store()
            .app(&swap.app)
            .map_err(|e| e.to_string())?
            .slot(&swap.source)
            .ok_or("the source slot was deleted")?
            .lane;
        let mut observed = self.inner.node.observed();
        let deadline = tokio::time::Instant::now() + RESTART_WAIT;
        loop {
            // The source's lane as the swap published it (not an older desired set).
            let desired: Vec<_> = self
                .desired()
                .into_iter()
                .filter(|d| {
                    d.key.app == swap.app
                        && d.key.lane == lane
                        && d.slot == swap.target
                        && d.release == swap.source_config.release
                })
                .collect();
            if desired.is_empty() {
                return Err(format!(
                    "{} runs no instance (no workers, or the app is stopped)",
                    swap.source
                ));
            }
            match readiness(&desired, &observed.borrow_and_update()) {
                Readiness::Ready(ports) => return Ok(ports),
                Readiness::Failed(id, crashes) => {
                    return Err(format!(
                        "instance {id} of {} failed to start with the new settings ({crashes} times)",
                        swap.source
                    ));
                }
                Readiness::Waiting => {}
            }
            tokio::select! {
                r = observed.changed() => if r.is_err() { return Err("the node stopped".into()) },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!("{}'s instances did not restart within {} s", swap.source, RESTART_WAIT.as_secs()));
                }
            }
        }
    }

    /// Step 4: every source web instance answers the warm-up path with an accepted status.
    async fn warm_up(&self, swap: &Swap, ports: &[(String, u16)]) -> Result<(), String> {
        let warmup = Warmup::from_settings(&swap.source_config.settings);
        let host = self.slot_hostname(&swap.app, &swap.target);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(warmup.timeout.0))
            .build()
            .map_err(|e| e.to_string())?;
        for (instance, port) in ports {
            let url = format!("http://127.0.0.1:{port}{}", warmup.path);
            let mut last = String::new();
            let mut answered = None;
            let mut pause = Duration::from_millis(100);
            for attempt in 0..warmup.tries {
                if attempt > 0 {
                    // A failed try waits before the next (doubling to 5 s), so a few refused
                    // connections in a row do not end a swap within milliseconds.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                match client
                    .get(&url)
                    .header(reqwest::header::HOST, &host)
                    .header("X-Stamp-Warmup", "1")
                    .send()
                    .await
                {
                    Ok(r) => {
                        answered = Some(r.status().as_u16());
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            let Some(status) = answered else {
                return Err(format!(
                    "warm-up of instance {instance} ({}) got no answer in {} tries: {last}",
                    warmup.path, warmup.tries
                ));
            };
            self.swap_step(
                swap,
                "warming",
                &format!(
                    "warm-up of instance {instance}: {} answered {status}",
                    warmup.path
                ),
            );
            if !warmup.accepts(status) {
                return Err(format!(
                    "warm-up of instance {instance} got status {status}, not one of WEBSITE_SWAP_WARMUP_PING_STATUSES ({})",
                    warmup
                        .statuses
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
        }
        Ok(())
    }

    /// A deploy's auto swap (the writer lock held): the swap of `slot` into its auto swap
    /// target that `new` would start once it is the slot's release, if the slot has auto swap
    /// and the swap can start; otherwise `None`, with the reason in the log.
    pub(crate) fn plan_auto_swap(
        &self,
        app: &App,
        slot: &SlotName,
        new: &NewRelease,
    ) -> Option<Swap> {
        let target = app.slot(slot).and_then(|s| s.auto_swap_to)?;
        let prospective = Release {
            app: app.name.clone(),
            slot: slot.clone(),
            version: 0,
            artifact: new.artifact.clone(),
            procfile: new.procfile.clone(),
            settings: new.settings.clone(),
            description: new.description.clone(),
            actor: new.actor.clone(),
            created_at: new.created_at,
        };
        match self.plan_swap(app, slot, &target, false, PLATFORM, Some(&prospective)) {
            Ok(swap) => Some(swap),
            Err(e) => {
                self.inner.logs.slot_event(
                    &app.name,
                    &[slot, &target],
                    &format!("auto swap {slot} → {target} not started: {}", e.message),
                );
                None
            }
        }
    }
}

/// A swap's progress with no step yet.
fn swap_view(swap: &Swap, state: &str) -> wire::SwapView {
    wire::SwapView {
        source: swap.source.to_string(),
        target: swap.target.to_string(),
        state: state.to_string(),
        done: false,
        steps: Vec::new(),
    }
}

/// Where a swap's source instances are.
enum Readiness {
    /// Every one runs the new configuration; the web ones, to warm up, as (instance, port).
    Ready(Vec<(String, u16)>),
    /// This one crashed in a row more than its restarts can be expected to cure (Azure: an
    /// instance that fails to restart); one crash alone may be the machine, not the settings.
    /// (instance, crashes in a row).
    Failed(String, u32),
    Waiting,
}

fn readiness(
    desired: &[stamp_model::InstanceSpec],
    observed: &[stamp_model::ObservedInstance],
) -> Readiness {
    let mut ports = Vec::new();
    let mut all_ready = true;
    for d in desired {
        let mine = || observed.iter().filter(|o| o.spec == *d);
        if let Some(o) = mine()
            .find(|o| o.state == InstanceState::Crashed && o.restarts >= CRASHES_TO_REVERT - 1)
        {
            return Readiness::Failed(o.id.to_string(), o.restarts + 1);
        }
        match mine().find(|o| o.state == InstanceState::Ready) {
            Some(o) if d.takes_traffic() => ports.push((o.id.to_string(), o.port)),
            Some(_) => {}
            None => all_ready = false,
        }
    }
    if all_ready {
        Readiness::Ready(ports)
    } else {
        Readiness::Waiting
    }
}

// ---- handlers

pub(crate) async fn list_slots(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<wire::SlotView>>> {
    let app = c.store().app(&app_name(&name)?)?;
    Ok(Json(c.slot_views(&app)?))
}

pub(crate) async fn create_slot(
    State(c): State<Controller>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<wire::CreateSlot>,
) -> ApiResult<(StatusCode, Json<wire::SlotView>)> {
    let name = app_name(&name)?;
    let slot_name = SlotName::parse(&req.name)?;
    if slot_name.is_production() {
        return Err(ApiError::invalid(
            "every app has a production slot already; name the new slot something else, e.g. staging",
        ));
    }
    if slot_name.as_str() == stamp_model::slots::ROUTING_SELF {
        return Err(ApiError::invalid(
            "`self` names production in the x-ms-routing-name cookie and query; name the slot something else",
        ));
    }
    let _w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    let plan = c.store().plan(&app.plan)?;
    let sku = Sku::find(&plan.sku).map_err(ApiError::internal)?;
    if app.slots.len() as u32 >= sku.slots_per_app {
        return Err(ApiError::limit(if sku.slots_per_app == 0 {
            format!(
                "plan {} ({}) allows no deployment slots; slots need Standard (5 per app) or Premium (20 per app)",
                plan.name, sku.name
            )
        } else {
            format!(
                "app {name} has {} slots besides production, the most plan {} ({}) allows",
                app.slots.len(),
                plan.name,
                sku.name
            )
        }));
    }
    let label = host_label(&name, &slot_name);
    if label.len() > 63 {
        return Err(ApiError::invalid(format!(
            "the slot's hostname label {label} is over 63 characters; use a shorter slot name"
        )));
    }
    if let Some(owner) = label_owner(&c, &label)? {
        return Err(ApiError::conflict(format!(
            "{label}.{} is the hostname of {owner}; pick another slot name",
            c.inner.config.domain
        )));
    }
    let settings = match req.clone_settings_from.as_deref() {
        None | Some("") => Default::default(),
        Some(from) => find_slot(&app, &SlotName::parse(from)?)?.settings,
    };
    let slot = Slot {
        name: slot_name.clone(),
        lane: app.free_lane(),
        settings,
        generation: 0,
        site: Default::default(),
        auto_swap_to: None,
        routing: None,
        created_at: c.now(),
    };
    c.store()
        .create_slot(&name, &slot, &caller.0)
        .map_err(|e| match e {
            StoreError::Conflict { .. } => {
                ApiError::conflict(format!("app {name} already has a slot named {slot_name}"))
            }
            e => e.into(),
        })?;
    c.inner.logs.slot_event(
        &name,
        &[&slot_name],
        &format!(
            "slot {slot_name} created{}",
            req.clone_settings_from
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| format!(" with settings cloned from {s}"))
                .unwrap_or_default()
        ),
    );
    c.synced()?;
    let app = c.store().app(&name)?;
    Ok((
        StatusCode::CREATED,
        Json(c.slot_view(&app, &find_slot(&app, &slot_name)?)?),
    ))
}

pub(crate) async fn delete_slot(
    State(c): State<Controller>,
    Path((name, slot)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let name = app_name(&name)?;
    let slot = SlotName::parse(&slot)?;
    if slot.is_production() {
        return Err(ApiError::invalid(
            "the production slot cannot be deleted; delete the app instead",
        ));
    }
    let _w = c.inner.writer.lock().await;
    ensure_not_swapping(&c, &name, &slot)?;
    c.store().delete_slot(&name, &slot).map_err(|e| match e {
        StoreError::NotFound { .. } => {
            ApiError::not_found(format!("app {name} has no slot named {slot}"))
        }
        e => e.into(),
    })?;
    c.inner.logs.slot_event(
        &name,
        &[&slot],
        &format!("slot {slot} deleted with its releases"),
    );
    c.synced()?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn update_slot(
    State(c): State<Controller>,
    Path((name, slot)): Path<(String, String)>,
    JsonBody(req): JsonBody<wire::UpdateSlot>,
) -> ApiResult<Json<wire::SlotView>> {
    let name = app_name(&name)?;
    let slot = SlotName::parse(&slot)?;
    let _w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    let current = find_slot(&app, &slot)?;
    if let Some(target) = &req.auto_swap_to {
        if slot.is_production() {
            return Err(ApiError::invalid(
                "auto swap is set on the slot you deploy to (e.g. staging), not on production",
            ));
        }
        let target = match target.as_str() {
            "" => None,
            t => {
                let t = SlotName::parse(t)?;
                if t == slot {
                    return Err(ApiError::invalid(format!(
                        "slot {slot} cannot auto swap into itself"
                    )));
                }
                find_slot(&app, &t)?;
                Some(t)
            }
        };
        if target != current.auto_swap_to {
            c.store().set_auto_swap(&name, &slot, target.as_ref())?;
            c.inner.logs.slot_event(
                &name,
                &[&slot],
                &match &target {
                    Some(t) => format!("slot {slot}: auto swap into {t} after every deploy"),
                    None => format!("slot {slot}: auto swap off"),
                },
            );
        }
    }
    let app = c.store().app(&name)?;
    Ok(Json(c.slot_view(&app, &find_slot(&app, &slot)?)?))
}

pub(crate) async fn set_routing(
    State(c): State<Controller>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<wire::SetRouting>,
) -> ApiResult<Json<Vec<wire::SlotView>>> {
    let name = app_name(&name)?;
    let _w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    let mut total = 0u32;
    let mut named = BTreeSet::new();
    for (slot, percent) in &req.rules {
        let slot = SlotName::parse(slot)?;
        if slot.is_production() {
            return Err(ApiError::invalid(
                "production takes whatever share the other slots leave; give percentages to the other slots only",
            ));
        }
        find_slot(&app, &slot)?;
        if *percent > 100 {
            return Err(ApiError::invalid(format!(
                "{slot}={percent}: a share is a percentage from 0 to 100"
            )));
        }
        total += u32::from(*percent);
        named.insert(slot);
    }
    if total > 100 {
        return Err(ApiError::invalid(format!(
            "the shares add up to {total} %, over 100 %; lower them so production keeps the rest"
        )));
    }
    for slot in &named {
        if req.rules[slot.as_str()] > 0
            && c.store()
                .current_release(&name, slot)?
                .is_none_or(|r| r.artifact.is_none())
        {
            return Err(ApiError::invalid(format!(
                "slot {slot} has no deployed code, so its share of clients would get errors (and stay pinned to it for an hour); deploy to it first, or use {slot}=0 for opt-in only"
            )));
        }
    }
    let rules: Vec<(SlotName, Option<u8>)> = app
        .slots
        .iter()
        .map(|s| {
            let percent = named.contains(&s.name).then(|| req.rules[s.name.as_str()]);
            (s.name.clone(), percent)
        })
        .collect();
    let changed: Vec<String> = rules
        .iter()
        .filter(|(slot, p)| app.slot(slot).is_some_and(|s| s.routing != *p))
        .map(|(slot, p)| match p {
            Some(p) => format!("{slot}={p} %"),
            None => format!("{slot}: no rule"),
        })
        .collect();
    if !changed.is_empty() {
        c.store().set_routing(&name, &rules)?;
        // Production's clients and every slot whose rule changed are concerned.
        let production = SlotName::production();
        let mut concerned: Vec<&SlotName> = vec![&production];
        concerned.extend(
            rules
                .iter()
                .filter(|(slot, p)| app.slot(slot).is_some_and(|s| s.routing != *p))
                .map(|(slot, _)| slot),
        );
        c.inner.logs.slot_event(
            &name,
            &concerned,
            &format!("traffic routing: {}", changed.join(", ")),
        );
        c.synced()?;
    }
    drop(_w);
    list_slots(State(c), Path(name.to_string())).await
}

pub(crate) async fn swap(
    State(c): State<Controller>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<wire::SwapRequest>,
) -> ApiResult<(StatusCode, Json<wire::SwapView>)> {
    let name = app_name(&name)?;
    let _w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    if let Some(action) = req.action.as_deref() {
        if req.source.is_some() || req.target.is_some() || req.preview {
            return Err(ApiError::invalid(
                "--complete and --cancel act on the swap with preview in progress; leave out --source, --target and --preview",
            ));
        }
        let Some(swap) = c.store().swap(&name)? else {
            return Err(ApiError::not_found(format!(
                "app {name} has no swap waiting in preview; start one with `stamp slot swap {name} --source staging --preview`"
            )));
        };
        if swap.phase != SwapPhase::Preview {
            return Err(ApiError::conflict(format!(
                "the swap of app {name} ({} → {}) is not waiting in preview but {}; wait for it",
                swap.source,
                swap.target,
                swap.phase.as_str()
            )));
        }
        match action {
            "complete" => {
                let mut next = swap.clone();
                next.phase = SwapPhase::Applying;
                next.preview = false;
                if !c.store().update_swap(&swap, &next)? {
                    return Err(ApiError::conflict(format!(
                        "the swap of app {name} changed meanwhile; `stamp slot status {name}` shows where it is"
                    )));
                }
                c.swap_step(
                    &next,
                    "warming",
                    "completing the swap with preview: warm-up",
                );
                let (c2, app) = (c.clone(), name.clone());
                tokio::spawn(async move { c2.drive_swap(app).await });
            }
            "cancel" => {
                if !c.store().end_swap(&swap)? {
                    return Err(ApiError::conflict(format!(
                        "the swap of app {name} changed meanwhile; `stamp slot status {name}` shows where it is"
                    )));
                }
                c.sync_after_commit();
                c.swap_step(
                    &swap,
                    "reverted",
                    &format!(
                        "cancelled: {} gets its own settings back (restart, rolling); {} is unchanged",
                        swap.source, swap.target
                    ),
                );
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown swap action {other:?}; use complete or cancel"
                )));
            }
        }
        return Ok((StatusCode::ACCEPTED, Json(c.swap_progress(&name))));
    }
    let source = SlotName::parse(req.source.as_deref().ok_or_else(|| {
        ApiError::invalid("name the slot to swap in with --source (e.g. --source staging)")
    })?)?;
    let target = match req.target.as_deref() {
        None | Some("") => SlotName::production(),
        Some(t) => SlotName::parse(t).map_err(|e| {
            ApiError::invalid(format!(
                "{e}; slots swap only within one app, so --target names a slot of app {name}"
            ))
        })?,
    };
    c.start_swap(&app, &source, &target, req.preview, &caller.0)?;
    Ok((StatusCode::ACCEPTED, Json(c.swap_progress(&name))))
}

pub(crate) async fn swap_status(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<wire::SwapView>> {
    let name = app_name(&name)?;
    c.store().app(&name)?;
    Ok(Json(c.swap_progress(&name)))
}

impl Controller {
    /// The app's current or last swap; after a restart, what the store says.
    fn swap_progress(&self, app: &AppName) -> wire::SwapView {
        if let Some(v) = self
            .inner
            .swaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
        {
            return v.1.clone();
        }
        match self.store().swap(app) {
            Ok(Some(s)) => swap_view(&s, s.phase.as_str()),
            _ => wire::SwapView {
                source: String::new(),
                target: String::new(),
                state: "none".to_string(),
                done: true,
                steps: Vec::new(),
            },
        }
    }
}

pub(crate) async fn rollback(
    State(c): State<Controller>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
    JsonBody(req): JsonBody<wire::Rollback>,
) -> ApiResult<(StatusCode, Json<wire::ReleaseView>)> {
    let name = app_name(&name)?;
    let slot = slot_of(&q)?;
    let _w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    find_slot(&app, &slot)?;
    ensure_not_swapping(&c, &name, &slot)?;
    let releases = c.store().releases(&name, &slot)?;
    let Some(old) = releases.iter().find(|r| r.version == req.version) else {
        return Err(ApiError::not_found(format!(
            "slot {slot} of app {name} has no release v{}; `stamp releases {name}{}` lists them",
            req.version,
            if slot.is_production() {
                String::new()
            } else {
                format!(" --slot {slot}")
            }
        )));
    };
    if old.artifact.is_none() {
        return Err(ApiError::invalid(format!(
            "v{} of slot {slot} has no code (it only changed settings before the first deploy), so rolling back to it would stop the slot; roll back to a deployed release",
            old.version
        )));
    }
    let release = c.store().create_release(
        &name,
        &slot,
        NewRelease {
            artifact: old.artifact.clone(),
            procfile: old.procfile.clone(),
            settings: old.settings.clone(),
            description: format!("Rollback to v{}", old.version),
            actor: caller.0.clone(),
            created_at: c.now(),
        },
    )?;
    c.inner.logs.slot_event(
        &name,
        &[&slot],
        &format!(
            "rollback: slot {slot} release v{} re-activates v{} (code and settings), rolling",
            release.version, old.version
        ),
    );
    c.synced()?;
    Ok((StatusCode::CREATED, Json(release_view(&release))))
}
