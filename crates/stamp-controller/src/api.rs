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
use stamp_model::sku::{self, CATALOG};
use stamp_model::{
    App, AppName, InstanceSpec, InstanceState, Millis, ObservedInstance, Plan, PlanName, Procfile,
    ProcfileError, Release, Settings, Sku, SlotName,
};
use stamp_store::NewRelease;

use crate::{ApiError, Controller};

type ApiResult<T> = Result<T, ApiError>;

/// The API router, with authentication on every route.
pub fn router(c: Controller) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/skus", get(skus))
        .route("/plans", get(list_plans).post(create_plan))
        .route("/plans/{plan}", get(show_plan).delete(delete_plan))
        .route("/plans/{plan}/scale", post(scale_plan))
        .route("/apps", get(list_apps).post(create_app))
        .route("/apps/{app}", get(show_app).delete(delete_app))
        .route("/apps/{app}/restart", post(restart_app))
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
        .layer(middleware::from_fn_with_state(c.clone(), authenticate))
        .with_state(c);
    Router::new()
        .nest(wire::API_PREFIX, api)
        .fallback(|| async {
            ApiError::not_found("no such API route; the API lives under /api/v1")
        })
}

/// The hex sha256 under which a token's secret is stored.
pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

async fn authenticate(State(c): State<Controller>, req: Request, next: Next) -> Response {
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
        Ok(Some(_role)) => next.run(req).await,
        Ok(None) => ApiError::unauthorized(
            "the bearer token is not one this stamp issued; use the token in <data dir>/admin-token",
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `Json<T>` whose rejection is a Stamp error body.
struct JsonBody<T>(T);

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

fn app_name(s: &str) -> ApiResult<AppName> {
    Ok(AppName::parse(s)?)
}

fn plan_name(s: &str) -> ApiResult<PlanName> {
    Ok(PlanName::parse(s)?)
}

impl Controller {
    fn now(&self) -> Millis {
        self.inner.clock.now()
    }

    fn url(&self, app: &AppName) -> String {
        let domain = &self.inner.config.domain;
        match self.inner.config.http_port {
            80 => format!("http://{app}.{domain}"),
            port => format!("http://{app}.{domain}:{port}"),
        }
    }

    fn observed(&self) -> Vec<ObservedInstance> {
        self.inner.node.observed().borrow().clone()
    }

    fn synced(&self) -> ApiResult<()> {
        self.sync().map_err(ApiError::internal)
    }

    fn app_view(
        &self,
        app: &App,
        release: Option<&Release>,
        desired: &[InstanceSpec],
        observed: &[ObservedInstance],
    ) -> wire::AppView {
        let mine: Vec<&InstanceSpec> = desired.iter().filter(|d| d.key.app == app.name).collect();
        let ready = observed
            .iter()
            .filter(|o| o.state == InstanceState::Ready && mine.contains(&&o.spec))
            .count();
        let stale = observed
            .iter()
            .filter(|o| o.spec.key.app == app.name && !mine.contains(&&o.spec))
            .count();
        wire::AppView {
            name: app.name.to_string(),
            plan: app.plan.to_string(),
            hostname: format!("{}.{}", app.name, self.inner.config.domain),
            url: self.url(&app.name),
            release: release.map(|r| r.version),
            instances: wire::InstanceCounts {
                desired: mine.len() as u32,
                ready: ready as u32,
                stale: stale as u32,
            },
            created_at: app.created_at.0,
        }
    }

    fn plan_view(&self, plan: &Plan, apps: &[App]) -> ApiResult<wire::PlanView> {
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
            created_at: plan.created_at.0,
        })
    }

    fn event_for_plan_apps(&self, plan: &PlanName, text: &str) -> ApiResult<()> {
        for app in self.store().apps()? {
            if &app.plan == plan {
                self.inner.logs.event(&app.name, text);
            }
        }
        Ok(())
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

fn release_view(r: &Release) -> wire::ReleaseView {
    wire::ReleaseView {
        version: r.version,
        artifact: r.artifact.as_ref().map(|d| d.to_string()),
        process_types: r
            .procfile
            .as_ref()
            .map(|p| p.processes.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default(),
        description: r.description.clone(),
        created_at: r.created_at.0,
    }
}

fn instance_view(o: &ObservedInstance) -> wire::InstanceView {
    wire::InstanceView {
        id: o.id.to_string(),
        process_type: o.spec.key.process_type.to_string(),
        worker: o.spec.key.worker.to_string(),
        release: o.spec.release,
        state: o.state.as_str().to_string(),
        pid: o.pid,
        port: o.port,
        started_at: o.started_at.0,
        restarts: o.restarts,
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
        )?;
        c.synced()?;
    }
    Ok(Json(c.plan_view(&plan, &c.store().apps()?)?))
}

async fn delete_plan(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let name = plan_name(&name)?;
    let _w = c.inner.writer.lock().await;
    c.store().delete_plan(&name)?;
    Ok(StatusCode::NO_CONTENT)
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
    c.store().plan(&plan).map_err(|_| {
        ApiError::not_found(format!(
            "no plan named {plan}; create it first with `stamp plan create {plan} --sku B1`"
        ))
    })?;
    let app = App {
        name,
        plan,
        settings: Settings::default(),
        generation: 0,
        site: stamp_model::SiteConfig::default(),
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
) -> ApiResult<Json<wire::AppView>> {
    let name = app_name(&name)?;
    let _w = c.inner.writer.lock().await;
    let generation = c.store().bump_generation(&name)?;
    c.inner.logs.event(
        &name,
        &format!("restart requested (generation {generation}): rolling"),
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

// ---- deploy and releases

async fn deploy(
    State(c): State<Controller>,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<wire::ReleaseView>)> {
    let name = app_name(&name)?;
    c.store().app(&name)?;
    let limit = c.inner.config.max_upload_bytes;
    let mut writer = c.inner.blobs.writer(limit)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid(format!("the upload was interrupted: {e}")))?;
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
        let bytes = match std::fs::read(root.join("Procfile")) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::invalid(ProcfileError::Missing));
            }
            Err(e) => return Err(ApiError::invalid(format!("cannot read the Procfile: {e}"))),
        };
        Procfile::parse_bytes(&bytes).map_err(ApiError::invalid)
    })
    .await
    .map_err(ApiError::internal)?;
    let procfile = match checked {
        Ok(p) => p,
        Err(e) => {
            // An archive that fails the check was never used by a release: drop it.
            let _ = std::fs::remove_file(c.inner.blobs.path(&digest));
            return Err(e);
        }
    };

    let _w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    let release = c.store().create_release(
        &name,
        &SlotName::production(),
        NewRelease {
            artifact: Some(digest.clone()),
            procfile: Some(procfile),
            settings: app.settings,
            description: format!("Deploy {}", digest.short()),
            created_at: c.now(),
        },
    )?;
    c.inner.logs.event(
        &name,
        &format!(
            "deploy: release v{} created from artifact {} ({size} bytes)",
            release.version,
            digest.short()
        ),
    );
    c.synced()?;
    Ok((StatusCode::CREATED, Json(release_view(&release))))
}

async fn list_releases(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<wire::ReleaseView>>> {
    let name = app_name(&name)?;
    c.store().app(&name)?;
    let releases = c.store().releases(&name, &SlotName::production())?;
    Ok(Json(releases.iter().map(release_view).collect()))
}

async fn list_instances(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<wire::InstanceView>>> {
    let name = app_name(&name)?;
    c.store().app(&name)?;
    Ok(Json(
        c.observed()
            .iter()
            .filter(|o| o.spec.key.app == name)
            .map(instance_view)
            .collect(),
    ))
}

// ---- settings

async fn show_settings(
    State(c): State<Controller>,
    Path(name): Path<String>,
) -> ApiResult<Json<wire::SettingsView>> {
    let app = c.store().app(&app_name(&name)?)?;
    Ok(Json(wire::SettingsView {
        settings: app.settings.0,
        release: None,
    }))
}

async fn update_settings(
    State(c): State<Controller>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<wire::UpdateSettings>,
) -> ApiResult<Json<wire::SettingsView>> {
    let name = app_name(&name)?;
    let _w = c.inner.writer.lock().await;
    let app = c.store().app(&name)?;
    let next = app.settings.apply(&req.set, &req.unset)?;
    if next == app.settings {
        return Ok(Json(wire::SettingsView {
            settings: next.0,
            release: None,
        }));
    }
    let current = c.store().current_release(&name, &SlotName::production())?;
    let description = describe_settings_change(&app.settings, &next);
    let release = c.store().create_release(
        &name,
        &SlotName::production(),
        NewRelease {
            artifact: current.as_ref().and_then(|r| r.artifact.clone()),
            procfile: current.and_then(|r| r.procfile),
            settings: next.clone(),
            description: description.clone(),
            created_at: c.now(),
        },
    )?;
    c.inner.logs.event(
        &name,
        &format!(
            "config: release v{} created: {description}",
            release.version
        ),
    );
    c.synced()?;
    Ok(Json(wire::SettingsView {
        settings: next.0,
        release: Some(release_view(&release)),
    }))
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
}

fn log_line_json(l: &stamp_logs::LogLine) -> bytes::Bytes {
    let view = wire::LogLineView {
        ts: l.ts.0,
        source: l.source.clone(),
        text: l.text.clone(),
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
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let name = app_name(&name)?;
    c.store().app(&name)?;
    let rx = c.inner.logs.subscribe(&name);
    let past = c
        .inner
        .logs
        .last(&name, q.lines.unwrap_or(100))
        .map_err(ApiError::internal)?;
    let last_seen = past.last().map(|l| (l.ts, l.text.clone()));
    let head = futures_util::stream::iter(
        past.iter()
            .map(|l| Ok::<_, std::convert::Infallible>(log_line_json(l)))
            .collect::<Vec<_>>(),
    );
    let body = if q.tail {
        // Lines that arrived between `subscribe` and `last` may be in both; skip those.
        let follow = futures_util::stream::unfold((rx, last_seen), |(mut rx, seen)| async move {
            loop {
                match rx.recv().await {
                    Ok(line) => {
                        if let Some((ts, text)) = &seen
                            && (line.ts < *ts || (line.ts == *ts && &line.text == text))
                        {
                            continue;
                        }
                        return Some((Ok(log_line_json(&line)), (rx, None)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Body::from_stream(head.chain(follow))
    } else {
        Body::from_stream(head)
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
