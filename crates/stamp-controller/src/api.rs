//! The REST API under `/api/v1`: JSON in and out, a bearer token on every call, errors as
//! `{"error": {"code", "message"}}`. Handlers validate at the edge, take the writer lock for
//! changes, write the store, then [`Controller::sync`].

use axum::body::Body;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use stamp_api_types as wire;
use stamp_artifact::UnpackLimits;
use stamp_model::site::{
    self, DEFAULT_HEALTH_INTERVAL, DEFAULT_MAX_UNHEALTHY_PERCENT, DEFAULT_UNHEALTHY_AFTER,
};
use stamp_model::sku::{self, CATALOG};
use stamp_model::{
    AccessAction, AccessRule, App, AppName, Balancing, Certificate, HealthCheck, InstanceSpec,
    InstanceState, Millis, ObservedInstance, Plan, PlanName, Procfile, ProcfileError, Release,
    Settings, SiteConfig, Sku, SlotName,
};
use stamp_store::NewRelease;

use crate::slots::{self, ensure_not_swapping, find_slot, slot_of};
use crate::{ApiError, Controller, workers};

type ApiResult<T> = Result<T, ApiError>;

/// The API router, with authentication on every route.
pub fn router(c: Controller) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/skus", get(skus))
        .route("/plans", get(list_plans).post(create_plan))
        .route(
            "/plans/{plan}",
            get(show_plan)
                .patch(workers::update_plan)
                .delete(delete_plan),
        )
        .route("/plans/{plan}/scale", post(scale_plan))
        .route(
            "/plans/{plan}/autoscale",
            get(show_autoscale)
                .put(set_autoscale)
                .delete(delete_autoscale),
        )
        .route("/plans/{plan}/autoscale/enable", post(enable_autoscale))
        .route("/plans/{plan}/autoscale/disable", post(disable_autoscale))
        .route("/plans/{plan}/autoscale/history", get(autoscale_history))
        .route("/plans/{plan}/metrics", post(post_metric))
        .route("/apps", get(list_apps).post(create_app))
        .route(
            "/apps/{app}",
            get(show_app).patch(update_app).delete(delete_app),
        )
        .route("/apps/{app}/domains", get(list_domains))
        .route(
            "/apps/{app}/certificates",
            get(list_certificates).post(upload_certificate),
        )
        .route(
            "/apps/{app}/certificates/{thumbprint}",
            axum::routing::delete(remove_certificate),
        )
        .route(
            "/apps/{app}/domains/{domain}",
            axum::routing::put(add_domain).delete(remove_domain),
        )
        .route(
            "/apps/{app}/access-rules",
            get(list_access_rules).post(add_access_rule),
        )
        .route(
            "/apps/{app}/access-rules/{name}",
            axum::routing::delete(remove_access_rule),
        )
        .route("/apps/{app}/restart", post(restart_app))
        .route(
            "/apps/{app}/formation",
            get(workers::show_formation).put(workers::update_formation),
        )
        .route("/pools", get(workers::list_pools))
        .route("/pools/{size}", axum::routing::put(workers::set_pool))
        .route(
            "/apps/{app}/deploy",
            post(deploy).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/apps/{app}/releases", get(list_releases))
        .route("/apps/{app}/instances", get(list_instances))
        .route(
            "/apps/{app}/settings",
            get(show_settings).patch(update_settings),
        )
        .route("/apps/{app}/logs", get(logs))
        .route(
            "/apps/{app}/slots",
            get(slots::list_slots).post(slots::create_slot),
        )
        .route(
            "/apps/{app}/slots/{slot}",
            axum::routing::patch(slots::update_slot).delete(slots::delete_slot),
        )
        .route(
            "/apps/{app}/routing",
            axum::routing::put(slots::set_routing),
        )
        .route(
            "/apps/{app}/swap",
            get(slots::swap_status).post(slots::swap),
        )
        .route("/apps/{app}/rollback", post(slots::rollback))
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: wire::codes::INVALID,
                message: "this route does not take that HTTP method".to_string(),
            }
        })
        .layer(middleware::from_fn_with_state(c.clone(), authenticate))
        .with_state(c.clone());
    Router::new()
        .nest(wire::API_PREFIX, api)
        // Prometheus scrapes without a token, like most exporters; the API listens on loopback
        // by default.
        .route(
            "/metrics",
            get(|State(c): State<Controller>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    c.render_metrics(),
                )
            })
            .with_state(c),
        )
        .fallback(|| async {
            ApiError::not_found("no such API route; the API lives under /api/v1")
        })
}

/// The hex sha256 under which a token's secret is stored.
pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Who made an API call: the role of its token (`admin`). Releases record it.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("no caller on an authenticated request"))
    }
}

async fn authenticate(State(c): State<Controller>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return ApiError::unauthorized(
            "this call needs a bearer token (Authorization: Bearer <token>); `stamp up` writes the admin token to <data dir>/admin-token, and the CLI on the same machine reads it from there or from STAMP_TOKEN",
        )
        .into_response();
    };
    match c.store().token_role(&token_hash(token)) {
        Ok(Some(role)) => {
            req.extensions_mut().insert(Caller(role));
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized(
            "the bearer token is not one this stamp issued; use the token in <data dir>/admin-token",
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `Json<T>` whose rejection is a Stamp error body.
pub(crate) struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::invalid(format!(
                "the request body is not valid: {}",
                e.body_text()
            ))),
        }
    }
}

pub(crate) fn app_name(s: &str) -> ApiResult<AppName> {
    Ok(AppName::parse(s)?)
}

pub(crate) fn plan_name(s: &str) -> ApiResult<PlanName> {
    Ok(PlanName::parse(s)?)
}

impl Controller {
    pub(crate) fn now(&self) -> Millis {
        self.inner.clock.now()
    }

    fn url(&self, app: &AppName) -> String {
        let domain = &self.inner.config.domain;
        match self.inner.config.http_port {
            80 => format!("http://{app}.{domain}"),
            port => format!("http://{app}.{domain}:{port}"),
        }
    }

    pub(crate) fn observed(&self) -> Vec<ObservedInstance> {
        self.inner.node.observed().borrow().clone()
    }

    /// After a commit: publish, never failing the request (see `sync_after_commit`).
    pub(crate) fn synced(&self) -> ApiResult<()> {
        self.sync_after_commit();
        Ok(())
    }

    fn app_view(
        &self,
        app: &App,
        release: Option<&Release>,
        desired: &[InstanceSpec],
        observed: &[ObservedInstance],
    ) -> wire::AppView {
        wire::AppView {
            name: app.name.to_string(),
            plan: app.plan.to_string(),
            hostname: format!("{}.{}", app.name, self.inner.config.domain),
            url: self.url(&app.name),
            release: release.map(|r| r.version),
            instances: counts(&app.name, app.lane, desired, observed),
            site: site_view(&app.site),
            max_workers: app.max_workers,
            created_at: app.created_at.0,
        }
    }

    pub(crate) fn plan_view(&self, plan: &Plan, apps: &[App]) -> ApiResult<wire::PlanView> {
        let sku = Sku::find(&plan.sku).map_err(ApiError::internal)?;
        Ok(wire::PlanView {
            name: plan.name.to_string(),
            sku: sku_view(&sku),
            workers: plan.workers,
            apps: apps
                .iter()
                .filter(|a| a.plan == plan.name)
                .map(|a| a.name.to_string())
                .collect(),
            per_app_scaling: plan.per_app_scaling,
            placement: workers::placement_view(plan),
            created_at: plan.created_at.0,
        })
    }

    /// Logs an event to every app of the plan; after a commit, so it never fails the request.
    pub(crate) fn event_for_plan_apps(&self, plan: &PlanName, text: &str) {
        match self.store().apps() {
            Ok(apps) => {
                for app in apps.iter().filter(|a| &a.plan == plan) {
                    self.inner.logs.event(&app.name, text);
                }
            }
            Err(e) => tracing::warn!("failed to log a scale event: {e:#}"),
        }
    }
}

fn sku_view(s: &Sku) -> wire::SkuView {
    wire::SkuView {
        name: s.name.to_string(),
        tier: s.tier.as_str().to_string(),
        millicores: s.millicores,
        memory_mib: s.memory_mib,
        max_workers: s.max_instances,
        slots_per_app: s.slots_per_app,
        outbound_connections: s.outbound_connections,
        autoscale: s.autoscale,
    }
}

pub(crate) fn site_view(s: &SiteConfig) -> wire::SiteView {
    wire::SiteView {
        https_only: s.https_only,
        client_affinity: s.client_affinity,
        balancing: balancing_name(s.balancing).to_string(),
        request_timeout_secs: s.request_timeout.0 / 1000,
        health_check: s.health_check.as_ref().map(|h| wire::HealthCheckView {
            path: h.path.clone(),
            interval_secs: h.interval.0 / 1000,
            unhealthy_after: h.unhealthy_after,
            max_unhealthy_percent: h.max_unhealthy_percent,
        }),
        domains: s.domains.clone(),
        access_rules: s.access_rules.iter().map(access_rule_view).collect(),
    }
}

fn balancing_name(b: Balancing) -> &'static str {
    match b {
        Balancing::RoundRobin => "round-robin",
        Balancing::LeastRequests => "least-requests",
    }
}

fn access_rule_view(r: &AccessRule) -> wire::AccessRuleView {
    wire::AccessRuleView {
        name: r.name.clone(),
        priority: r.priority,
        action: match r.action {
            AccessAction::Allow => "allow",
            AccessAction::Deny => "deny",
        }
        .to_string(),
        network: r.network.to_string(),
    }
}

/// Instance counts of one lane of an app (a slot's instances).
pub(crate) fn counts(
    app: &AppName,
    lane: u32,
    desired: &[InstanceSpec],
    observed: &[ObservedInstance],
) -> wire::InstanceCounts {
    let mine: Vec<&InstanceSpec> = desired
        .iter()
        .filter(|d| d.key.app == *app && d.key.lane == lane)
        .collect();
    let ready = observed
        .iter()
        .filter(|o| o.state == InstanceState::Ready && mine.contains(&&o.spec))
        .count();
    let stale = observed
        .iter()
        .filter(|o| o.spec.key.app == *app && o.spec.key.lane == lane && !mine.contains(&&o.spec))
        .count();
    wire::InstanceCounts {
        desired: mine.len() as u32,
        ready: ready as u32,
        stale: stale as u32,
    }
}

pub(crate) fn release_view(r: &Release) -> wire::ReleaseView {
    wire::ReleaseView {
        version: r.version,
        slot: r.slot.to_string(),
        actor: r.actor.clone(),
        artifact: r.artifact.as_ref().map(|d| d.to_string()),
        process_types: r
            .procfile
            .as_ref()
            .map(|p| p.processes.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default(),
        description: r.description.clone(),
        created_at: r.created_at.0,
        auto_swap_to: None,
    }
}

fn instance_view(o: &ObservedInstance, slot: &SlotName) -> wire::InstanceView {
    wire::InstanceView {
        id: o.id.to_string(),
        slot: slot.to_string(),
        process_type: o.spec.key.process_type.to_string(),
        worker: o.spec.key.worker.to_string(),
        release: o.spec.release,
        state: o.state.as_str().to_string(),
        pid: o.pid,
        port: o.port,
        started_at: o.started_at.0,
        restarts: o.restarts,
        healthy: o.healthy,
    }
}

// ---- status and SKUs

async fn status(State(c): State<Controller>) -> ApiResult<Json<wire::Status>> {
    let used = c.used_capacity(None)?;
    let cap = c.inner.config.capacity;
    let domain = &c.inner.config.domain;
    Ok(Json(wire::Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        domain: domain.clone(),
        app_url_template: c
            .url(&AppName::parse("app").map_err(ApiError::internal)?)
            .replacen("app.", "{app}.", 1),
        node: wire::NodeView {
            millicores: cap.millicores,
            memory_mib: cap.memory_mib,
            used_millicores: used.millicores,
            used_memory_mib: used.memory_mib,
        },
    }))
}

async fn skus() -> Json<Vec<wire::SkuView>> {
    Json(CATALOG.iter().map(sku_view).collect())
}

// ---- plans

async fn list_plans(State(c): State<Controller>) -> ApiResult<Json<Vec<wire::PlanView>>> {
    let apps = c.store().apps()?;
    let plans = c.store().plans()?;
    Ok(Json(
        plans
            .iter()
            .map(|p| c.plan_view(p, &apps))
            .collect::<ApiResult<_>>()?,
    ))
}

async fn show_plan(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<wire::PlanView>> {
    let plan = c.store().plan(&plan_name(&name)?)?;
    Ok(Json(c.plan_view(&plan, &c.store().apps()?)?))
}

async fn create_plan(
    State(c): State<Controller>,
    JsonBody(req): JsonBody<wire::CreatePlan>,
) -> ApiResult<(StatusCode, Json<wire::PlanView>)> {
    let name = plan_name(&req.name)?;
    let sku = Sku::find(&req.sku).map_err(ApiError::invalid)?;
    let workers = req.workers.unwrap_or(1);
    let _w = c.inner.writer.lock().await;
    if workers < 1 {
        return Err(ApiError::invalid(sku::ScaleError::BelowOne(workers)));
    }
    sku::check_scale(
        sku,
        workers,
        c.inner.config.capacity,
        c.used_capacity(None)?,
    )
    .map_err(ApiError::limit)?;
    let plan = Plan {
        name,
        sku: sku.name.to_string(),
        workers,
        per_app_scaling: false,
        placement: Default::default(),
        placed_on: 0,
        created_at: c.now(),
    };
    c.store().create_plan(&plan)?;
    Ok((StatusCode::CREATED, Json(c.plan_view(&plan, &[])?)))
}

async fn scale_plan(
    State(c): State<Controller>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<wire::ScalePlan>,
) -> ApiResult<Json<wire::PlanView>> {
    let name = plan_name(&name)?;
    let _w = c.inner.writer.lock().await;
    let mut plan = c.store().plan(&name)?;
    let sku = Sku::find(&plan.sku).map_err(ApiError::internal)?;
    if req.workers < 1 {
        return Err(ApiError::invalid(sku::ScaleError::BelowOne(req.workers)));
    }
    sku::check_scale(
        sku,
        req.workers,
        c.inner.config.capacity,
        c.used_capacity(Some(name.as_str()))?,
    )
    .map_err(ApiError::limit)?;
    let before = plan.workers;
    if before != req.workers {
        c.store().set_plan_workers(&name, req.workers)?;
        plan.workers = req.workers;
        c.event_for_plan_apps(
            &name,
            &format!(
                "scale: plan {name} from {before} to {} workers",
                req.workers
            ),
        );
        c.synced()?;
    }
    // Re-read: the sync placed the apps on the new workers.
    let plan = c.store().plan(&name)?;
    Ok(Json(c.plan_view(&plan, &c.store().apps()?)?))
}

async fn delete_plan(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let name = plan_name(&name)?;
    let _w = c.inner.writer.lock().await;
    c.store().delete_plan(&name)?;
    c.inner.metrics.forget(&name);
    c.inner.autoscale_memory.forget(&name);
    Ok(StatusCode::NO_CONTENT)
}

// ---- autoscale

fn autoscale_view(r: &stamp_model::AutoscaleRecord) -> ApiResult<wire::AutoscaleView> {
    let setting: serde_json::Value =
        serde_json::from_str(&r.setting_json).map_err(ApiError::internal)?;
    let profiles = setting
        .pointer("/profiles")
        .or_else(|| setting.pointer("/properties/profiles"))
        .and_then(|p| p.as_array())
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.get("name").and_then(|n| n.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let webhooks = crate::autoscale::parse_setting(&r.setting_json, u32::MAX)
        .map(|s| s.webhooks.len())
        .unwrap_or(0);
    Ok(wire::AutoscaleView {
        plan: r.plan.to_string(),
        enabled: r.enabled,
        setting,
        profiles,
        webhooks,
        last_action_at: r.last_action_at.map(|m| m.0),
        cooldown_secs: r.last_cooldown.map(|m| m.0 / 1000),
    })
}

async fn show_autoscale(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<wire::AutoscaleView>> {
    let plan = plan_name(&name)?;
    c.store().plan(&plan)?;
    let record = c
        .store()
        .autoscale(&plan)
        .map_err(|e| no_setting(e, &plan))?;
    Ok(Json(autoscale_view(&record)?))
}

/// A missing setting, said with what to do about it.
fn no_setting(e: stamp_store::StoreError, plan: &PlanName) -> ApiError {
    match e {
        stamp_store::StoreError::NotFound { .. } => ApiError::not_found(format!(
            "plan {plan} has no autoscale setting; set one with `stamp autoscale set {plan} --file setting.json`"
        )),
        e => e.into(),
    }
}

/// `PUT /plans/{plan}/autoscale` with Azure's `autoscaleSettings` JSON (the resource or its
/// `properties`) as the body. An invalid setting is refused with every problem listed, and the
/// previous setting stays in force.
async fn set_autoscale(
    State(c): State<Controller>,
    Path(name): Path<String>,
    body: String,
) -> ApiResult<Json<wire::AutoscaleView>> {
    let plan_name = plan_name(&name)?;
    let _w = c.inner.writer.lock().await;
    let plan = c.store().plan(&plan_name)?;
    let sku = Sku::find(&plan.sku).map_err(ApiError::internal)?;
    if !sku.autoscale {
        return Err(ApiError::limit(format!(
            "plan {} is {} ({}): autoscale needs Standard or above, as in Azure; scale it by hand or move to S1 or P1v3",
            plan.name,
            sku.name,
            sku.tier.as_str()
        )));
    }
    let setting =
        crate::autoscale::parse_setting(&body, sku.max_instances).map_err(ApiError::invalid)?;
    c.store()
        .set_autoscale(&plan.name, &body, setting.enabled, c.now())?;
    c.event_for_plan_apps(
        &plan.name,
        &format!(
            "autoscale: setting for plan {} {} ({} profile(s))",
            plan.name,
            if setting.enabled {
                "set"
            } else {
                "set, disabled"
            },
            setting.profiles.len()
        ),
    );
    Ok(Json(autoscale_view(&c.store().autoscale(&plan.name)?)?))
}

async fn toggle_autoscale(
    c: Controller,
    name: String,
    enabled: bool,
) -> ApiResult<Json<wire::AutoscaleView>> {
    let plan = plan_name(&name)?;
    let _w = c.inner.writer.lock().await;
    c.store().plan(&plan)?;
    c.store()
        .set_autoscale_enabled(&plan, enabled, c.now())
        .map_err(|e| no_setting(e, &plan))?;
    c.event_for_plan_apps(
        &plan,
        &format!(
            "autoscale: {} for plan {plan}",
            if enabled { "enabled" } else { "disabled" }
        ),
    );
    Ok(Json(autoscale_view(&c.store().autoscale(&plan)?)?))
}

async fn enable_autoscale(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<wire::AutoscaleView>> {
    toggle_autoscale(c, name, true).await
}

async fn disable_autoscale(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<wire::AutoscaleView>> {
    toggle_autoscale(c, name, false).await
}

async fn delete_autoscale(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let plan = plan_name(&name)?;
    let _w = c.inner.writer.lock().await;
    c.store().plan(&plan)?;
    c.store()
        .delete_autoscale(&plan)
        .map_err(|e| no_setting(e, &plan))?;
    c.inner.autoscale_memory.forget(&plan);
    c.event_for_plan_apps(
        &plan,
        &format!("autoscale: setting for plan {plan} deleted"),
    );
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
    #[serde(default)]
    scaled: bool,
}

async fn autoscale_history(
    State(c): State<Controller>,
    Path(name): Path<String>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<wire::AutoscaleRunView>>> {
    let Query(q) = q.map_err(|e| {
        ApiError::invalid(format!(
            "bad query: {}; use ?limit=<number>&scaled=<true|false>",
            e.body_text()
        ))
    })?;
    let plan = plan_name(&name)?;
    c.store().plan(&plan)?;
    let runs = c
        .store()
        .autoscale_runs(&plan, q.limit.unwrap_or(50).min(1000), q.scaled)?;
    Ok(Json(
        runs.iter()
            .map(|r| wire::AutoscaleRunView {
                at: r.at.0,
                scaled: r.scaled,
                summary: r.summary.clone(),
                evaluation: serde_json::from_str(&r.evaluation_json).unwrap_or_default(),
            })
            .collect(),
    ))
}

/// A custom metric sample, recorded at the current second for the plan's rules.
async fn post_metric(
    State(c): State<Controller>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<wire::MetricSample>,
) -> ApiResult<StatusCode> {
    let plan = plan_name(&name)?;
    c.store().plan(&plan)?;
    let ok_name = !req.metric.is_empty()
        && req.metric.len() <= 128
        && req
            .metric
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./ ".contains(&b));
    if !ok_name {
        return Err(ApiError::invalid(
            "metric names use letters, digits, spaces and _-./ (at most 128 characters)",
        ));
    }
    if crate::autoscale::BUILT_IN_METRICS.contains(&req.metric.as_str()) {
        return Err(ApiError::invalid(format!(
            "{} is measured by Stamp itself; give a custom metric another name",
            req.metric
        )));
    }
    if !c.inner.metrics.has(&plan, &req.metric)
        && c.inner.metrics.metric_count(&plan) >= crate::autoscale::MAX_METRICS_PER_PLAN
    {
        return Err(ApiError::limit(format!(
            "plan {plan} already has {} metrics; reuse a metric name",
            crate::autoscale::MAX_METRICS_PER_PLAN
        )));
    }
    if !req.value.is_finite() {
        return Err(ApiError::invalid(
            "the metric value must be a finite number",
        ));
    }
    let second = i64::try_from(c.now().0 / 1000).unwrap_or(i64::MAX);
    c.inner
        .metrics
        .record(&plan, &req.metric, second, req.value);
    Ok(StatusCode::ACCEPTED)
}

// ---- apps

async fn list_apps(State(c): State<Controller>) -> ApiResult<Json<Vec<wire::AppView>>> {
    let releases = c.store().current_releases()?;
    let (desired, observed) = (c.desired(), c.observed());
    Ok(Json(
        c.store()
            .apps()?
            .iter()
            .map(|a| {
                let r = releases
                    .iter()
                    .find(|r| r.app == a.name && r.slot.is_production());
                c.app_view(a, r, &desired, &observed)
            })
            .collect(),
    ))
}

async fn show_app(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<wire::AppView>> {
    let name = app_name(&name)?;
    let app = c.store().app(&name)?;
    let release = c.store().current_release(&name, &SlotName::production())?;
    Ok(Json(c.app_view(
        &app,
        release.as_ref(),
        &c.desired(),
        &c.observed(),
    )))
}

async fn create_app(
    State(c): State<Controller>,
    JsonBody(req): JsonBody<wire::CreateApp>,
) -> ApiResult<(StatusCode, Json<wire::AppView>)> {
    let name = app_name(&req.name)?;
    let plan = plan_name(&req.plan)?;
    let _w = c.inner.writer.lock().await;
    c.store().plan(&plan).map_err(|e| match e {
        stamp_store::StoreError::NotFound { .. } => ApiError::not_found(format!(
            "no plan named {plan}; create it first with `stamp plan create {plan} --sku B1`"
        )),
        e => e.into(),
    })?;
    if let Some(owner) = slots::label_owner(&c, name.as_str())? {
        return Err(ApiError::conflict(format!(
            "{name}.{} is the hostname of {owner}; pick another app name",
            c.inner.config.domain
        )));
    }
    let app = App {
        name,
        plan,
        settings: Settings::default(),
        generation: 0,
        site: stamp_model::SiteConfig::default(),
        max_workers: None,
        formation: Default::default(),
        lane: 0,
        slot_settings: Default::default(),
        slots: Vec::new(),
        created_at: c.now(),
    };
    c.store().create_app(&app)?;
    c.inner.logs.event(
        &app.name,
        &format!("app {} created in plan {}", app.name, app.plan),
    );
    c.synced()?;
    Ok((StatusCode::CREATED, Json(c.app_view(&app, None, &[], &[]))))
}

async fn delete_app(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let name = app_name(&name)?;
    let _w = c.inner.writer.lock().await;
    c.store().delete_app(&name)?;
    c.synced()?;
    c.inner.logs.remove(&name);
    Ok(StatusCode::NO_CONTENT)
}

async fn restart_app(
    State(c): State<Controller>,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
) -> ApiResult<Json<wire::AppView>> {
    let name = app_name(&name)?;
    let slot = slot_of(&q)?;
    let _w = c.inner.writer.lock().await;
    find_slot(&c.store().app(&name)?, &slot)?;
    ensure_not_swapping(&c, &name, &slot)?;
    let generation = c.store().bump_slot_generation(&name, &slot)?;
    c.inner.logs.slot_event(
        &name,
        &[&slot],
        &format!("restart of slot {slot} requested (generation {generation}): rolling"),
    );
    c.synced()?;
    let app = c.store().app(&name)?;
    let release = c.store().current_release(&name, &SlotName::production())?;
    Ok(Json(c.app_view(
        &app,
        release.as_ref(),
        &c.desired(),
        &c.observed(),
    )))
}

// ---- front-end configuration: site, domains, access rules

/// Applies a partial update to a site config; the result is validated as a whole.
fn apply_update(mut site: SiteConfig, u: &wire::UpdateApp) -> ApiResult<SiteConfig> {
    if let Some(v) = u.https_only {
        site.https_only = v;
    }
    if let Some(v) = u.client_affinity {
        site.client_affinity = v;
    }
    if let Some(b) = &u.balancing {
        site.balancing = match b.as_str() {
            "round-robin" => Balancing::RoundRobin,
            "least-requests" => Balancing::LeastRequests,
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown balancing {other:?}; use round-robin or least-requests"
                )));
            }
        };
    }
    if let Some(secs) = u.request_timeout_secs {
        site.request_timeout = Millis(secs.saturating_mul(1000));
    }
    let health_fields = u.health_check_interval_secs.is_some()
        || u.health_check_unhealthy_after.is_some()
        || u.health_check_max_unhealthy_percent.is_some();
    match u.health_check_path.as_deref() {
        Some("") => {
            if health_fields {
                return Err(ApiError::invalid(
                    "an empty health check path turns the health check off; leave out its other settings",
                ));
            }
            site.health_check = None;
        }
        Some(path) => {
            let h = site.health_check.get_or_insert(HealthCheck {
                path: String::new(),
                interval: DEFAULT_HEALTH_INTERVAL,
                unhealthy_after: DEFAULT_UNHEALTHY_AFTER,
                max_unhealthy_percent: DEFAULT_MAX_UNHEALTHY_PERCENT,
            });
            h.path = path.to_string();
        }
        None if health_fields && site.health_check.is_none() => {
            return Err(ApiError::invalid(
                "set a health check path first (--health-path /healthz)",
            ));
        }
        None => {}
    }
    if let Some(h) = site.health_check.as_mut() {
        if let Some(secs) = u.health_check_interval_secs {
            h.interval = Millis(secs.saturating_mul(1000));
        }
        if let Some(n) = u.health_check_unhealthy_after {
            h.unhealthy_after = n;
        }
        if let Some(p) = u.health_check_max_unhealthy_percent {
            h.max_unhealthy_percent = p;
        }
    }
    site.validate().map_err(ApiError::invalid)?;
    Ok(site)
}

/// Loads the app, lets `change` edit its site config, validates, stores and syncs; logs
/// `event` to the app's stream. Returns the app as it is now.
async fn change_site(
    c: &Controller,
    name: &AppName,
    slot: &SlotName,
    event: &str,
    change: impl FnOnce(SiteConfig) -> ApiResult<SiteConfig>,
) -> ApiResult<SiteConfig> {
    let _w = c.inner.writer.lock().await;
    let current = find_slot(&c.store().app(name)?, slot)?.site;
    let site = change(current.clone())?;
    site.validate().map_err(ApiError::invalid)?;
    if site != current {
        // A swap's prepared instances carry its target's health check; keep the slots of a
        // swap as they are until it ends.
        ensure_not_swapping(c, name, slot)?;
        c.store().set_slot_site(name, slot, &site)?;
        let event = if slot.is_production() {
            event.to_string()
        } else {
            format!("{event} (slot {slot})")
        };
        c.inner.logs.slot_event(name, &[slot], &event);
        c.synced()?;
    }
    Ok(site)
}

async fn update_app(
    State(c): State<Controller>,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
    JsonBody(req): JsonBody<wire::UpdateApp>,
) -> ApiResult<Json<wire::AppView>> {
    let name = app_name(&name)?;
    let slot = slot_of(&q)?;
    if !slot.is_production() {
        // A slot's own front-end configuration; scale settings are the app's (they stay with
        // the plan and its production slot, as in Azure).
        if req.max_workers.is_some() {
            return Err(ApiError::invalid(
                "--max-workers is a scale setting of the app, not of a slot; leave out --slot",
            ));
        }
        let event = format!("config: front end updated: {}", describe_update(&req));
        change_site(&c, &name, &slot, &event, |site| apply_update(site, &req)).await?;
        let app = c.store().app(&name)?;
        let release = c.store().current_release(&name, &SlotName::production())?;
        return Ok(Json(c.app_view(
            &app,
            release.as_ref(),
            &c.desired(),
            &c.observed(),
        )));
    }
    let w = c.inner.writer.lock().await;
    let mut app = c.store().app(&name)?;
    let site = apply_update(app.site.clone(), &req)?;
    site.validate().map_err(ApiError::invalid)?;
    let cap = match &req.max_workers {
        Some(cap) => workers::check_cap(cap, &c.store().plan(&app.plan)?)?,
        None => app.max_workers,
    };
    if site != app.site || cap != app.max_workers {
        if site != app.site {
            // The swap's prepared instances carry production's health check: changing it now
            // would restart them right after the flip.
            ensure_not_swapping(&c, &name, &SlotName::production())?;
        }
        c.store().update_app_config(&name, &site, cap)?;
        let text = |event: &str| format!("{event}: {}", describe_update(&req));
        if site != app.site {
            c.inner.logs.slot_event(
                &name,
                &[&SlotName::production()],
                &text("config: front end updated"),
            );
        } else {
            c.inner
                .logs
                .event(&name, &text("scale: per-app cap updated"));
        }
        app.site = site;
        app.max_workers = cap;
        c.synced()?;
    }
    drop(w);
    let release = c.store().current_release(&name, &SlotName::production())?;
    Ok(Json(c.app_view(
        &app,
        release.as_ref(),
        &c.desired(),
        &c.observed(),
    )))
}

/// `https_only=true, balancing="least-requests"`: the fields the update sets.
fn describe_update(u: &wire::UpdateApp) -> String {
    match serde_json::to_value(u) {
        Ok(serde_json::Value::Object(fields)) => fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

async fn list_domains(
    State(c): State<Controller>,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
) -> ApiResult<Json<Vec<String>>> {
    let app = c.store().app(&app_name(&name)?)?;
    Ok(Json(find_slot(&app, &slot_of(&q)?)?.site.domains))
}

fn domain_name(domain: &str) -> ApiResult<String> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    site::check_domain(&d).map_err(ApiError::invalid)?;
    Ok(d)
}

async fn add_domain(
    State(c): State<Controller>,
    Path((name, domain)): Path<(String, String)>,
    Query(q): Query<wire::SlotQuery>,
) -> ApiResult<Json<Vec<String>>> {
    let name = app_name(&name)?;
    let slot = slot_of(&q)?;
    let domain = domain_name(&domain)?;
    let suffix = format!(".{}", c.inner.config.domain);
    if domain == c.inner.config.domain || domain.ends_with(&suffix) {
        return Err(ApiError::invalid(format!(
            "{domain} is under the stamp's own domain {}; apps get <app>.{} already",
            c.inner.config.domain, c.inner.config.domain
        )));
    }
    let _w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    let current = find_slot(&app, &slot)?.site.domains;
    if current.contains(&domain) {
        return Ok(Json(current));
    }
    if current.len() >= site::MAX_DOMAINS {
        return Err(ApiError::limit(format!(
            "a slot has at most {} custom domains",
            site::MAX_DOMAINS
        )));
    }
    c.store()
        .add_domain(&name, &slot, &domain)
        .map_err(|e| match e {
            stamp_store::StoreError::Conflict { .. } => ApiError::conflict(format!(
                "{domain} already belongs to another app or slot; remove it there first (stamp domain remove <app> {domain} [--slot S])"
            )),
            e => e.into(),
        })?;
    c.inner.logs.slot_event(
        &name,
        &[&slot],
        &format!("domain: {domain} added to slot {slot}"),
    );
    c.synced()?;
    Ok(Json(find_slot(&c.store().app(&name)?, &slot)?.site.domains))
}

async fn remove_domain(
    State(c): State<Controller>,
    Path((name, domain)): Path<(String, String)>,
    Query(q): Query<wire::SlotQuery>,
) -> ApiResult<Json<Vec<String>>> {
    let name = app_name(&name)?;
    let slot = slot_of(&q)?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let _w = c.inner.writer.lock().await;
    c.store().remove_domain(&name, &slot, &domain)?;
    c.inner.logs.slot_event(
        &name,
        &[&slot],
        &format!("domain: {domain} removed from slot {slot}"),
    );
    c.synced()?;
    Ok(Json(find_slot(&c.store().app(&name)?, &slot)?.site.domains))
}

async fn list_access_rules(
    State(c): State<Controller>,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
) -> ApiResult<Json<Vec<wire::AccessRuleView>>> {
    let app = c.store().app(&app_name(&name)?)?;
    let slot = find_slot(&app, &slot_of(&q)?)?;
    Ok(Json(
        slot.site
            .access_rules
            .iter()
            .map(access_rule_view)
            .collect(),
    ))
}

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (one host).
fn network(s: &str) -> ApiResult<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| match n {
            // A rule on an IPv4-mapped IPv6 network means the IPv4 network: client addresses
            // are compared as IPv4.
            ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(ipnet::IpNet::V4)
                    .unwrap_or(n),
                None => n,
            },
            n => n,
        })
        .map(|n| n.trunc())
        .map_err(|_| {
            ApiError::invalid(format!(
                "{s:?} is not an IP network; use CIDR notation such as 10.0.0.0/8 or 2001:db8::/32"
            ))
        })
}

async fn add_access_rule(
    State(c): State<Controller>,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
    JsonBody(req): JsonBody<wire::AccessRuleView>,
) -> ApiResult<(StatusCode, Json<Vec<wire::AccessRuleView>>)> {
    let name = app_name(&name)?;
    let slot = slot_of(&q)?;
    let action = match req.action.as_str() {
        "allow" => AccessAction::Allow,
        "deny" => AccessAction::Deny,
        other => {
            return Err(ApiError::invalid(format!(
                "unknown action {other:?}; use allow or deny"
            )));
        }
    };
    site::check_rule_name(&req.name).map_err(ApiError::invalid)?;
    if req.priority == 0 {
        return Err(ApiError::invalid(
            "priority must be at least 1 (lower numbers are checked first)",
        ));
    }
    let rule = AccessRule {
        name: req.name.clone(),
        priority: req.priority,
        action,
        network: network(&req.network)?,
    };
    let event = format!(
        "access: rule {} added ({} {} at priority {})",
        rule.name, req.action, rule.network, rule.priority
    );
    let site = change_site(&c, &name, &slot, &event, |mut site| {
        if site.access_rules.iter().any(|r| r.name == rule.name) {
            return Err(ApiError::conflict(format!(
                "access rule {} already exists; remove it first or choose another --name",
                rule.name
            )));
        }
        site.access_rules.push(rule);
        site.sort_rules();
        Ok(site)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(site.access_rules.iter().map(access_rule_view).collect()),
    ))
}

async fn remove_access_rule(
    State(c): State<Controller>,
    Path((name, rule)): Path<(String, String)>,
    Query(q): Query<wire::SlotQuery>,
) -> ApiResult<Json<Vec<wire::AccessRuleView>>> {
    let name = app_name(&name)?;
    let slot = slot_of(&q)?;
    let event = format!("access: rule {rule} removed");
    let site = change_site(&c, &name, &slot, &event, |mut site| {
        let before = site.access_rules.len();
        site.access_rules.retain(|r| r.name != rule);
        if site.access_rules.len() == before {
            return Err(ApiError::not_found(format!(
                "app {name} has no access rule named {rule}"
            )));
        }
        Ok(site)
    })
    .await?;
    Ok(Json(
        site.access_rules.iter().map(access_rule_view).collect(),
    ))
}

fn certificate_view(c: &Certificate) -> wire::CertificateView {
    wire::CertificateView {
        thumbprint: c.thumbprint.clone(),
        hostnames: c.hostnames.clone(),
        not_after: c.not_after.0,
        created_at: c.created_at.0,
    }
}

async fn list_certificates(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<wire::CertificateView>>> {
    let name = app_name(&name)?;
    c.store().app(&name)?;
    let certs = c.store().certificates()?;
    Ok(Json(
        certs
            .iter()
            .filter(|cert| cert.app == name)
            .map(certificate_view)
            .collect(),
    ))
}

/// Largest PEM accepted for a certificate chain or a key.
const MAX_PEM_BYTES: usize = 256 * 1024;

async fn upload_certificate(
    State(c): State<Controller>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<wire::UploadCertificate>,
) -> ApiResult<(StatusCode, Json<wire::CertificateView>)> {
    let name = app_name(&name)?;
    if req.cert_pem.len() > MAX_PEM_BYTES || req.key_pem.len() > MAX_PEM_BYTES {
        return Err(ApiError::invalid(
            "a certificate chain or key over 256 KiB is not a PEM file Stamp expects",
        ));
    }
    let summary = c
        .inner
        .frontend
        .inspect_certificate(&req.cert_pem, &req.key_pem)
        .map_err(ApiError::invalid)?;
    let now = c.now();
    if summary.not_after <= now {
        return Err(ApiError::invalid(format!(
            "the certificate expired at {} (Unix ms); upload a current one",
            summary.not_after.0
        )));
    }
    let _w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    if crate::served_names(&summary.hostnames, &app, &c.inner.config.domain).is_empty() {
        return Err(ApiError::invalid(format!(
            "the certificate is for {}, none of which is a hostname of app {name} ({}.{} and its custom domains); add the custom domain first (stamp domain add {name} <domain>)",
            summary.hostnames.join(", "),
            name,
            c.inner.config.domain
        )));
    }
    let cert = Certificate {
        app: name.clone(),
        thumbprint: summary.thumbprint,
        hostnames: summary.hostnames,
        not_after: summary.not_after,
        cert_pem: req.cert_pem,
        key_pem: req.key_pem,
        created_at: now,
    };
    c.store().add_certificate(&cert).map_err(|e| match e {
        stamp_store::StoreError::Conflict { .. } => ApiError::conflict(format!(
            "app {name} already has the certificate {}",
            cert.thumbprint
        )),
        e => e.into(),
    })?;
    c.inner.logs.event(
        &name,
        &format!(
            "certificate {} uploaded for {}",
            &cert.thumbprint[..cert.thumbprint.len().min(16)],
            cert.hostnames.join(", ")
        ),
    );
    c.synced()?;
    Ok((StatusCode::CREATED, Json(certificate_view(&cert))))
}

async fn remove_certificate(
    State(c): State<Controller>,
    Path((name, thumbprint)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let name = app_name(&name)?;
    let thumbprint = thumbprint.to_ascii_lowercase();
    let _w = c.inner.writer.lock().await;
    c.store().remove_certificate(&name, &thumbprint)?;
    c.inner
        .logs
        .event(&name, &format!("certificate {thumbprint} removed"));
    c.synced()?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- deploy and releases

async fn deploy(
    State(c): State<Controller>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<wire::ReleaseView>)> {
    let name = app_name(&name)?;
    let slot = slot_of(&q)?;
    find_slot(&c.store().app(&name)?, &slot)?;
    ensure_not_swapping(&c, &name, &slot)?;
    let limit = c.inner.config.max_upload_bytes;
    let mut writer = c.inner.blobs.writer(limit)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid(format!("the upload was interrupted: {e}")))?;
        // Past the limit the answer goes out at once; `stamp up` serves the API with
        // `stamp_frontend::Lingering` bodies, so the rest is read and thrown away.
        writer.write(&chunk)?;
    }
    let (digest, size) = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(ApiError::internal)??;

    // Check the archive by unpacking it for real, exactly as a worker will.
    let blob = c.inner.blobs.path(&digest);
    let tmp_dir = c.inner.config.tmp_dir.clone();
    let checked = tokio::task::spawn_blocking(move || -> ApiResult<Procfile> {
        let tmp = tempfile::tempdir_in(&tmp_dir).map_err(ApiError::internal)?;
        let root = tmp.path().join("app");
        stamp_artifact::unpack(&blob, &root, &UnpackLimits::default())?;
        let bytes = read_procfile(&root.join("Procfile"))?;
        Procfile::parse_bytes(&bytes).map_err(ApiError::invalid)
    })
    .await
    .map_err(ApiError::internal)?;
    let procfile = match checked {
        Ok(p) => p,
        Err(e) => {
            // The archive is bad: drop the blob, unless a release uses the same bytes (a
            // stricter check than when it was deployed) or the failure was ours, not the
            // archive's.
            if e.status.is_client_error() {
                let _w = c.inner.writer.lock().await;
                if !c.store().artifact_in_use(&digest)? {
                    let _ = std::fs::remove_file(c.inner.blobs.path(&digest));
                }
            }
            return Err(e);
        }
    };

    let w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    let settings = find_slot(&app, &slot)?.settings;
    ensure_not_swapping(&c, &name, &slot)?;
    let new = NewRelease {
        artifact: Some(digest.clone()),
        procfile: Some(procfile),
        settings,
        description: format!("Deploy {}", digest.short()),
        actor: caller.0,
        created_at: c.now(),
    };
    // With auto swap, the release and its swap commit together: a crash cannot leave the
    // release deployed without the swap it asked for.
    let auto_swap = c.plan_auto_swap(&app, &slot, &new);
    let release = match &auto_swap {
        Some(swap) => c.store().create_release_and_swap(&name, &slot, new, swap)?,
        None => c.store().create_release(&name, &slot, new)?,
    };
    c.inner.logs.slot_event(
        &name,
        &[&slot],
        &format!(
            "deploy: release v{} of slot {slot} created from artifact {} ({size} bytes)",
            release.version,
            digest.short()
        ),
    );
    // With auto swap the new release goes straight into a swap, whose start publishes it: the
    // slot's lane starts once, with the swap's configuration.
    // The swap's start publishes the new release straight with the swap's configuration, so
    // the slot's instances start once.
    match &auto_swap {
        Some(swap) => c.launch_swap(swap),
        None => c.synced()?,
    }
    drop(w);
    let mut view = release_view(&release);
    view.auto_swap_to = auto_swap.map(|s| s.target.to_string());
    Ok((StatusCode::CREATED, Json(view)))
}

/// Largest Procfile read: a Procfile is a few lines; anything bigger is not one.
const MAX_PROCFILE_BYTES: u64 = 64 * 1024;

fn read_procfile(path: &std::path::Path) -> ApiResult<Vec<u8>> {
    use std::io::Read as _;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::invalid(ProcfileError::Missing));
        }
        Err(e) => return Err(ApiError::invalid(format!("cannot read the Procfile: {e}"))),
    };
    let mut bytes = Vec::new();
    f.take(MAX_PROCFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::invalid(format!("cannot read the Procfile: {e}")))?;
    if bytes.len() as u64 > MAX_PROCFILE_BYTES {
        return Err(ApiError::invalid(
            "the Procfile is over 64 KiB; it should hold one `type: command` line per process type",
        ));
    }
    Ok(bytes)
}

async fn list_releases(
    State(c): State<Controller>,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
) -> ApiResult<Json<Vec<wire::ReleaseView>>> {
    let name = app_name(&name)?;
    let slot = slot_of(&q)?;
    find_slot(&c.store().app(&name)?, &slot)?;
    let releases = c.store().releases(&name, &slot)?;
    Ok(Json(releases.iter().map(release_view).collect()))
}

/// The app's instances, of every slot, or of `?slot=` only.
async fn list_instances(
    State(c): State<Controller>,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
) -> ApiResult<Json<Vec<wire::InstanceView>>> {
    let name = app_name(&name)?;
    let app = c.store().app(&name)?;
    let only = match q.slot {
        Some(_) => Some(find_slot(&app, &slot_of(&q)?)?.lane),
        None => None,
    };
    let slots = app.all_slots();
    Ok(Json(
        c.observed()
            .iter()
            .filter(|o| o.spec.key.app == name && only.is_none_or(|l| o.spec.key.lane == l))
            .filter_map(|o| {
                let slot = slots.iter().find(|s| s.lane == o.spec.key.lane)?;
                Some(instance_view(o, &slot.name))
            })
            .collect(),
    ))
}

// ---- settings

async fn show_settings(
    State(c): State<Controller>,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
) -> ApiResult<Json<wire::SettingsView>> {
    let app = c.store().app(&app_name(&name)?)?;
    let slot = find_slot(&app, &slot_of(&q)?)?;
    Ok(Json(wire::SettingsView {
        settings: slot.settings.0,
        slot_settings: app.slot_settings.into_iter().collect(),
        release: None,
    }))
}

async fn update_settings(
    State(c): State<Controller>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<wire::SlotQuery>,
    JsonBody(req): JsonBody<wire::UpdateSettings>,
) -> ApiResult<Json<wire::SettingsView>> {
    let name = app_name(&name)?;
    let slot = slot_of(&q)?;
    let _w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    let current_settings = find_slot(&app, &slot)?.settings;
    let next = current_settings.apply(&req.set, &req.unset)?;
    // Marking names sticky (Azure's slotConfigNames) applies to the app, in every slot;
    // unsetting a setting everywhere is the user's business, so names stay until unmarked.
    let mut sticky = app.slot_settings.clone();
    match req.slot_setting {
        Some(true) => sticky.extend(req.set.keys().cloned()),
        Some(false) => {
            for k in req.set.keys().chain(&req.unset) {
                sticky.remove(k);
            }
        }
        None => {}
    }
    if next != current_settings {
        ensure_not_swapping(&c, &name, &slot)?;
    }
    if sticky != app.slot_settings
        && let Some(swap) = c.store().swap(&name)?
    {
        // The list decides what moves in a swap, so it must not change under one.
        return Err(ApiError::conflict(format!(
            "a swap of app {name} is in progress ({} → {}); change which settings are slot settings after it ends",
            swap.source, swap.target
        )));
    }
    if sticky != app.slot_settings {
        c.store().set_slot_settings(&name, &sticky)?;
        let list = sticky.iter().cloned().collect::<Vec<_>>().join(", ");
        c.inner.logs.event(
            &name,
            &format!(
                "config: slot settings (stay with their slot in a swap) are now {}",
                if list.is_empty() { "none" } else { &list }
            ),
        );
    }
    let view = |settings: Settings, release: Option<&Release>| wire::SettingsView {
        settings: settings.0,
        slot_settings: sticky.iter().cloned().collect(),
        release: release.map(release_view),
    };
    if next == current_settings {
        return Ok(Json(view(next, None)));
    }
    let current = c.store().current_release(&name, &slot)?;
    let description = describe_settings_change(&current_settings, &next);
    let release = c.store().create_release(
        &name,
        &slot,
        NewRelease {
            artifact: current.as_ref().and_then(|r| r.artifact.clone()),
            procfile: current.and_then(|r| r.procfile),
            settings: next.clone(),
            description: description.clone(),
            actor: caller.0,
            created_at: c.now(),
        },
    )?;
    c.inner.logs.slot_event(
        &name,
        &[&slot],
        &format!(
            "config: slot {slot} release v{} created: {description}",
            release.version
        ),
    );
    c.synced()?;
    Ok(Json(view(next, Some(&release))))
}

/// `Set A, B; unset C`: names only, never values (they may be secrets).
fn describe_settings_change(before: &Settings, after: &Settings) -> String {
    let set: Vec<&str> = after
        .0
        .iter()
        .filter(|(k, v)| before.0.get(*k) != Some(v))
        .map(|(k, _)| k.as_str())
        .collect();
    let unset: Vec<&str> = before
        .0
        .keys()
        .filter(|k| !after.0.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mut parts = Vec::new();
    if !set.is_empty() {
        parts.push(format!("Set {}", set.join(", ")));
    }
    if !unset.is_empty() {
        parts.push(format!("Unset {}", unset.join(", ")));
    }
    parts.join("; ")
}

// ---- logs

#[derive(Deserialize)]
struct LogsQuery {
    /// How many past lines to send first (default 100).
    lines: Option<usize>,
    /// Keep the response open and stream new lines.
    #[serde(default)]
    tail: bool,
    /// Only the lines that concern this slot (its instances' and events, and the app's).
    slot: Option<String>,
}

fn log_line_json(l: &stamp_logs::LogLine) -> bytes::Bytes {
    let view = wire::LogLineView {
        ts: l.ts.0,
        source: l.source.clone(),
        text: l.text.clone(),
        slots: l.slots.clone(),
    };
    let mut v = serde_json::to_vec(&view).unwrap_or_default();
    v.push(b'\n');
    v.into()
}

/// Newline-delimited JSON of [`wire::LogLineView`]: the last `lines`, then, with `tail`, every
/// new line as it arrives.
async fn logs(
    State(c): State<Controller>,
    Path(name): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| {
        ApiError::invalid(format!(
            "bad query: {}; use ?lines=<number>&tail=<true|false>&slot=<slot>",
            e.body_text()
        ))
    })?;
    let name = app_name(&name)?;
    let app = c.store().app(&name)?;
    let slot = match &q.slot {
        Some(s) => {
            let slot = slot_of(&wire::SlotQuery {
                slot: Some(s.clone()),
            })?;
            Some(find_slot(&app, &slot)?.name.to_string())
        }
        None => None,
    };
    let rx = c.inner.logs.subscribe(&name);
    let past = {
        let (logs, name, n) = (c.inner.logs.clone(), name.clone(), q.lines.unwrap_or(100));
        let slot = slot.clone();
        tokio::task::spawn_blocking(move || {
            logs.last_matching(&name, n, |l| slot.as_deref().is_none_or(|s| l.concerns(s)))
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
    };
    let last_seen = past.last().map(|l| (l.ts, l.text.clone()));
    let head = futures_util::stream::iter(
        past.iter()
            .map(|l| Ok::<_, std::convert::Infallible>(log_line_json(l)))
            .collect::<Vec<_>>(),
    );
    let body = if q.tail {
        // Lines that arrived between `subscribe` and `last` may be in both; skip those.
        let slot = std::sync::Arc::new(slot);
        let follow = futures_util::stream::unfold((rx, last_seen), move |(mut rx, seen)| {
            let slot = std::sync::Arc::clone(&slot);
            async move {
                loop {
                    match rx.recv().await {
                        Ok(line) => {
                            if let Some((ts, text)) = &seen
                                && (line.ts < *ts || (line.ts == *ts && &line.text == text))
                            {
                                continue;
                            }
                            if slot.as_deref().is_some_and(|s| !line.concerns(s)) {
                                continue;
                            }
                            return Some((Ok(log_line_json(&line)), (rx, None)));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        // Ends when the stamp stops, so a tail never holds up shutdown.
        let mut stopping = c.inner.stopping.subscribe();
        let stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        Body::from_stream(head.chain(follow.take_until(stopped)))
    } else {
        Body::from_stream(head)
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
