//! The request path: resolve the host in the current snapshot, apply the app's front-end rules
//! (access restrictions, HTTPS only, body limit), pick an instance (affinity cookie, else round
//! robin or least requests), forward the request with hop-by-hop headers stripped and forwarding
//! headers added, retry on another instance when a connection could not be made (within the
//! app's retry budget), and stream the answer back, or splice a WebSocket.
//!
//! Nothing here takes a lock or waits on the controller: the snapshot is one atomic load, and
//! everything a request touches afterwards (cursors, in-flight counts, metrics) is an atomic the
//! snapshot reaches. The registry behind a mutex is for `set_routes`, draining and metrics
//! rendering only.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::header::{
    CONNECTION, EXPECT, HOST, LOCATION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use stamp_model::{AppName, InstanceId};
use stamp_routes::{AppRoute, Lookup, RouteTable};
use tokio::time::Instant;

use crate::FrontendConfig;
use crate::affinity::{self, AffinityCookie, AffinityKey};
use crate::body::{ClientBody, RequestBody, ResponseBody, Target, Tracker, is_too_large};
use crate::conn::ConnInfo;
use crate::error::{FrontendError, PageContext, error_response};
use crate::forwarded;
use crate::metrics::{self, AppCounters, AppMetrics, GlobalErrors, InstanceCounters};
use crate::ramp;
use crate::upgrade;

mod fast;
pub(crate) use fast::{Ended, Rewind};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_TLS_VERSION: HeaderName = HeaderName::from_static("x-forwarded-tlsversion");
const X_APPSERVICE_PROTO: HeaderName = HeaderName::from_static("x-appservice-proto");
const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

/// Other ways a client names an earlier hop, the original scheme or the port. From a peer that
/// is not a trusted proxy they are claims an app might believe, so they are dropped.
const UNTRUSTED_CLAIMS: [HeaderName; 5] = [
    http::header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("client-ip"),
];

/// The headers `Forwarding::apply` sets afresh (or removes) whatever the client sent under
/// those names. The fast path drops the client's copies by this list.
const SET_BY_FRONT_END: [HeaderName; 8] = [
    HOST,
    forwarded::X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_APPSERVICE_PROTO,
    X_FORWARDED_TLS_VERSION,
    X_FORWARDED_HOST,
    X_ORIGINAL_URL,
    X_REQUEST_ID,
];

/// The largest request head (request line and headers) a client may send; beyond it hyper
/// answers `431 Request Header Fields Too Large`. nginx's default is 4 × 8 KiB.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long an idle pooled connection to an instance is kept. Below the keep-alive timeout of
/// common app servers (Node.js: 5 s), so the front end does not reuse a connection the app is
/// closing at that moment, which would fail a request that cannot be retried.
const UPSTREAM_IDLE: Duration = Duration::from_secs(4);

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// non-standard ones still seen in the wild. Never forwarded in either direction (an upgrade
/// puts its two back).
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];

/// One instance of one app at one address, as long as a snapshot routes to it or a request to it
/// is under way: where requests go, how many are in flight there, its counters and its affinity
/// cookie. The same `Instance` is carried from snapshot to snapshot while it stays in rotation,
/// so its counts survive table swaps.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) app: Arc<AppCounters>,
    pub(crate) id: InstanceId,
    pub(crate) addr: SocketAddr,
    authority: Authority,
    /// Requests whose response has not finished. Read by least-requests balancing and draining.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) counters: InstanceCounters,
    affinity: AffinityCookie,
    /// Idle keep-alive connections to the instance that no client connection holds, for the
    /// fast path. Lock-free, and bounded: one more is closed.
    idle: ArrayQueue<fast::Upstream>,
}

/// One request counted in flight at an instance while it is being sent; dropped (and uncounted)
/// if the attempt fails, or kept for the response's [`Tracker`].
struct Attempt<'a>(&'a Arc<Instance>);

impl<'a> Attempt<'a> {
    fn start(instance: &'a Arc<Instance>) -> Attempt<'a> {
        instance.in_flight.fetch_add(1, Ordering::Relaxed);
        Attempt(instance)
    }

    /// The count now belongs to the returned target.
    fn keep(self) -> Target {
        let target = Target::Instance(Arc::clone(self.0));
        std::mem::forget(self);
        target
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An app in a snapshot: its counters and, in the order of its route's backends, its instances.
struct AppState {
    counters: Arc<AppCounters>,
    instances: Vec<Arc<Instance>>,
}

impl AppState {
    /// The instance an affinity token names, if it is in this snapshot.
    fn pinned(&self, token: Option<&str>) -> Option<usize> {
        let token = token?;
        self.instances
            .iter()
            .position(|i| i.affinity.token == token)
    }

    /// Where a request goes first: the instance it is pinned to, else the app's balancing pick.
    fn first(&self, route: &AppRoute, pinned: Option<usize>) -> Option<usize> {
        pinned.or_else(|| {
            let load = |i: usize| self.instances[i].in_flight.load(Ordering::Relaxed);
            route
                .pick_balanced(rand::random, load)
                .map(|(index, _)| index)
        })
    }
}

/// One immutable routing state: the table and, per route (by index), its state.
struct Snapshot {
    table: RouteTable,
    apps: Vec<AppState>,
}

/// What outlives snapshots: app counters while the app exists, and every instance entry anything
/// still holds (a snapshot, a response), by address.
#[derive(Default)]
struct Registry {
    apps: HashMap<AppName, Arc<AppCounters>>,
    instances: HashMap<SocketAddr, Vec<Weak<Instance>>>,
}

/// Shared by every clone of a `Frontend` and every connection task.
pub(crate) struct Inner {
    pub(crate) config: FrontendConfig,
    routes: ArcSwap<Snapshot>,
    /// Touched by `set_routes`, `is_drained` and metrics rendering, never on the request path.
    registry: Mutex<Registry>,
    global_errors: GlobalErrors,
    affinity: AffinityKey,
    /// Time zero of the retry budgets.
    epoch: Instant,
    client: Client<HttpConnector, RequestBody>,
}

/// What the request path needs of an app once the host resolved.
struct AppCx<'a> {
    route: &'a AppRoute,
    state: &'a AppState,
    host: &'a str,
    domain: &'a str,
}

impl Inner {
    pub(crate) fn new(config: FrontendConfig) -> Inner {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(UPSTREAM_IDLE)
            .build(connector);
        let table = RouteTable::empty(&config.domain);
        Inner {
            affinity: AffinityKey::new(config.affinity_key),
            config,
            routes: ArcSwap::from_pointee(Snapshot {
                table,
                apps: Vec::new(),
            }),
            registry: Mutex::default(),
            global_errors: GlobalErrors::default(),
            epoch: Instant::now(),
            client,
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_routes(&self, table: RouteTable) {
        // Held across the store so concurrent callers publish in the order they built.
        let mut registry = self.registry();
        let registry = &mut *registry;
        let mut apps = Vec::with_capacity(table.routes().len());
        for route in table.routes() {
            let counters = Arc::clone(
                registry
                    .apps
                    .entry(route.app.clone())
                    .or_insert_with(|| Arc::new(AppCounters::new(route.app.clone()))),
            );
            let mut instances = Vec::with_capacity(route.backends.len());
            for backend in &route.backends {
                let entries = registry.instances.entry(backend.addr).or_default();
                let existing = entries
                    .iter()
                    .filter_map(Weak::upgrade)
                    .find(|i| i.id == backend.instance && Arc::ptr_eq(&i.app, &counters));
                let instance = match existing {
                    Some(instance) => instance,
                    None => {
                        let Ok(authority) = Authority::try_from(backend.addr.to_string()) else {
                            tracing::warn!(addr = %backend.addr, "skipping a backend address that is not a valid URI authority");
                            continue;
                        };
                        let instance = Arc::new(Instance {
                            app: Arc::clone(&counters),
                            id: backend.instance.clone(),
                            addr: backend.addr,
                            authority,
                            in_flight: AtomicUsize::new(0),
                            counters: InstanceCounters::default(),
                            affinity: self.affinity.cookie(&route.app, &backend.instance),
                            idle: ArrayQueue::new(fast::IDLE_PER_INSTANCE),
                        });
                        entries.push(Arc::downgrade(&instance));
                        instance
                    }
                };
                instances.push(instance);
            }
            // Keep the instances aligned with the route's backends even if one was skipped: the
            // picker indexes both with the same number.
            if instances.len() != route.backends.len() {
                tracing::warn!(app = %route.app, "serving no instance of the app: a backend address was invalid");
                instances.clear();
            }
            apps.push(AppState {
                counters,
                instances,
            });
        }
        let names: HashSet<&AppName> = table.routes().iter().map(|r| &r.app).collect();
        registry.apps.retain(|name, _| names.contains(name));
        drop(names);
        self.routes.store(Arc::new(Snapshot { table, apps }));
        registry.instances.retain(|_, entries| {
            entries.retain(|e| e.strong_count() > 0);
            !entries.is_empty()
        });
    }

    /// An address is drained when no route of the current snapshot has it and nothing holds an
    /// instance entry for it: no response from it is still streaming, and no request that loaded
    /// an older snapshot is still deciding where to go (a retry could still pick it).
    pub(crate) fn is_drained(&self, addr: SocketAddr) -> bool {
        if self.routes.load().table.backends().any(|b| b.addr == addr) {
            return false;
        }
        self.registry()
            .instances
            .get(&addr)
            .is_none_or(|entries| entries.iter().all(|e| e.strong_count() == 0))
    }

    pub(crate) fn in_flight(&self, addr: SocketAddr) -> usize {
        self.registry().instances.get(&addr).map_or(0, |entries| {
            entries
                .iter()
                .filter_map(Weak::upgrade)
                .map(|i| i.in_flight.load(Ordering::Relaxed))
                .sum()
        })
    }

    pub(crate) fn render_metrics(&self, out: &mut String) {
        let registry = self.registry();
        let mut apps: Vec<&AppCounters> = registry.apps.values().map(|a| &**a).collect();
        apps.sort_by(|a, b| a.app.cmp(&b.app));
        let live: Vec<Arc<Instance>> = registry
            .instances
            .values()
            .flatten()
            .filter_map(Weak::upgrade)
            .collect();
        let mut views: Vec<metrics::InstanceView<'_>> = live
            .iter()
            .map(|i| metrics::InstanceView {
                app: &i.app.app,
                instance: &i.id,
                in_flight: i.in_flight.load(Ordering::Relaxed) as u64,
                counters: &i.counters,
            })
            .collect();
        views.sort_by(|a, b| (a.app, a.instance).cmp(&(b.app, b.instance)));
        metrics::render(out, &apps, &views, &self.global_errors);
    }

    pub(crate) fn app_metrics(&self) -> Vec<AppMetrics> {
        let registry = self.registry();
        let mut in_flight: HashMap<&AppName, u64> = HashMap::new();
        let live: Vec<Arc<Instance>> = registry
            .instances
            .values()
            .flatten()
            .filter_map(Weak::upgrade)
            .collect();
        for instance in &live {
            *in_flight.entry(&instance.app.app).or_default() +=
                instance.in_flight.load(Ordering::Relaxed) as u64;
        }
        let mut out: Vec<AppMetrics> = registry
            .apps
            .values()
            .map(|app| metrics::app_metrics(app, in_flight.get(&app.app).copied().unwrap_or(0)))
            .collect();
        out.sort_by(|a, b| a.app.cmp(&b.app));
        out
    }

    /// Answers one request, always with a response: the instance's, a redirect or an error page.
    /// Every response carries the request's id.
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let version = request.version();
        let request = request.map(|body| ClientBody::new(body, version));
        let request_id = match request.headers().get(&X_REQUEST_ID) {
            Some(id) if is_valid_request_id(id) => id.clone(),
            _ => new_request_id(),
        };
        let mut response = self.route(request, conn, start, &request_id).await;
        response.headers_mut().insert(X_REQUEST_ID, request_id);
        response
    }

    async fn route(
        &self,
        request: Request<ClientBody>,
        conn: &ConnInfo,
        start: Instant,
        request_id: &HeaderValue,
    ) -> Response<ResponseBody> {
        let snapshot = self.routes.load_full();
        let Some(host) = host_of(&request) else {
            return self.global_error(FrontendError::MissingHost, &snapshot, "");
        };
        let Ok(host_str) = host.to_str() else {
            let shown = String::from_utf8_lossy(host.as_bytes());
            return self.global_error(FrontendError::NoSuchApp, &snapshot, &shown);
        };
        // A connection opened for one server name must not be used for another app (RFC 9110
        // §15.5.20): its certificate, and so its client's trust, was for the SNI name.
        if let Some(tls) = &conn.tls
            && let Some(sni) = &tls.sni
            && !stamp_routes::host_name(host_str).is_some_and(|name| name.eq_ignore_ascii_case(sni))
        {
            return self.global_error(FrontendError::MisdirectedRequest, &snapshot, host_str);
        }
        let route = match snapshot.table.lookup(host_str) {
            Lookup::NoSuchApp => {
                return self.global_error(FrontendError::NoSuchApp, &snapshot, host_str);
            }
            Lookup::App(route) => route,
        };
        let forwarding = Forwarding::new(
            host.clone(),
            conn,
            request_id,
            request.headers(),
            &self.config.trusted_proxies,
        );
        // Testing in production: a production route with routing rules may hand the request to
        // one of its slots, which then serves it as if its own host had been asked for, once
        // production's own gate (access rules, quota stop, HTTPS only) let it through.
        let (route, routing_cookie) = if route.ramp.is_empty() {
            (route, None)
        } else {
            let production = AppCx {
                route,
                state: &snapshot.apps[route.index()],
                host: host_str,
                domain: snapshot.table.domain(),
            };
            if let Some(refused) = self.gate(&production, &request, &forwarding, start) {
                return refused;
            }
            ramp::choose(
                &snapshot.table,
                route,
                request.uri(),
                request.headers(),
                conn.tls.is_some(),
                || rand::random::<u32>() % 100,
            )
        };
        let cx = AppCx {
            route,
            state: &snapshot.apps[route.index()],
            host: host_str,
            domain: snapshot.table.domain(),
        };
        let mut response = self.serve_app(&cx, request, forwarding, start).await;
        if let Some(cookie) = routing_cookie {
            response.headers_mut().append(SET_COOKIE, cookie);
        }
        response
    }

    /// The app route's gate: its access rules, its quota stop and HTTPS only. `Some` is the
    /// refusal (or redirect) to send instead of serving the request.
    fn gate(
        &self,
        cx: &AppCx<'_>,
        request: &Request<ClientBody>,
        forwarding: &Forwarding<'_>,
        start: Instant,
    ) -> Option<Response<ResponseBody>> {
        let site = &*cx.route.site;
        if !site.allows(forwarding.client) {
            return Some(self.app_error(FrontendError::AccessDenied, cx, start));
        }
        if site.stopped {
            return Some(self.app_error(FrontendError::AppStopped, cx, start));
        }
        if site.https_only && forwarding.conn.tls.is_none() {
            return Some(self.redirect_to_https(request, cx, start));
        }
        None
    }

    /// Answers a request for the app route `cx.route`: its front-end rules, then the request
    /// forwarded to one of its instances.
    async fn serve_app(
        &self,
        cx: &AppCx<'_>,
        request: Request<ClientBody>,
        forwarding: Forwarding<'_>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let route = cx.route;
        if let Some(refused) = self.gate(cx, &request, &forwarding, start) {
            return refused;
        }
        if request.body().size_hint().lower() > self.config.max_request_body {
            return self.app_error(FrontendError::RequestTooLarge, cx, start);
        }
        if route.backends.is_empty() || cx.state.instances.is_empty() {
            return self.app_error(FrontendError::NoReadyInstance, cx, start);
        }
        match self.forward(cx, request, forwarding, start).await {
            Ok(response) => response,
            Err(error) => self.app_error(error, cx, start),
        }
    }

    /// Whether the app's retry budget allows one more try now, and takes it.
    fn may_retry(&self, state: &AppState) -> bool {
        let now = Instant::now().duration_since(self.epoch);
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        state
            .counters
            .budget
            .try_withdraw(state.counters.requests.total(), now_ms)
    }

    /// An error for a request that named no app: counted once, globally.
    fn global_error(
        &self,
        error: FrontendError,
        snapshot: &Snapshot,
        host: &str,
    ) -> Response<ResponseBody> {
        self.global_errors.add(error);
        error_response(
            error,
            &PageContext {
                host,
                domain: snapshot.table.domain(),
                app: None,
                request_timeout: stamp_model::site::DEFAULT_REQUEST_TIMEOUT.as_duration(),
                max_request_body: self.config.max_request_body,
            },
        )
    }

    /// An error for a request to an app: counted in the app's errors and requests.
    fn app_error(
        &self,
        error: FrontendError,
        cx: &AppCx<'_>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let counters = &cx.state.counters;
        counters.error(error);
        let mut response = error_response(
            error,
            &PageContext {
                host: cx.host,
                domain: cx.domain,
                app: Some(cx.route.app.as_str()),
                request_timeout: cx.route.site.request_timeout.as_duration(),
                max_request_body: self.config.max_request_body,
            },
        );
        let class = metrics::class_of(response.status());
        response.body_mut().track(Tracker::new(
            Target::App(Arc::clone(counters)),
            start,
            class,
        ));
        response
    }

    /// `301` to the same host (without its port, with the front end's HTTPS port unless 443),
    /// path and query over HTTPS.
    fn redirect_to_https(
        &self,
        request: &Request<ClientBody>,
        cx: &AppCx<'_>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let name = stamp_routes::host_name(cx.host).unwrap_or(cx.host);
        let port = match self.config.https_port {
            Some(port) if port != 443 => format!(":{port}"),
            _ => String::new(),
        };
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", PathAndQuery::as_str);
        let path = if path.starts_with('/') { path } else { "/" };
        let location = format!("https://{name}{port}{path}");
        let mut response = Response::new(ResponseBody::page(Bytes::new()));
        *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
        match HeaderValue::try_from(location) {
            Ok(location) => {
                response.headers_mut().insert(LOCATION, location);
            }
            // The host and path were valid header text, so this does not happen; an error page
            // is still better than a redirect to nowhere.
            Err(_) => return self.app_error(FrontendError::Internal, cx, start),
        }
        response.body_mut().track(Tracker::new(
            Target::App(Arc::clone(&cx.state.counters)),
            start,
            metrics::class_of(StatusCode::MOVED_PERMANENTLY),
        ));
        response
    }

    /// Sends the request to the instance its affinity cookie names, else to the one the app's
    /// balancing picks, and to the next one when a connection could not be made and the request
    /// has no body (so nothing was consumed), within the retry budget: each instance at most
    /// once. The whole exchange up to the response head is bounded by the app's request timeout.
    async fn forward(
        &self,
        cx: &AppCx<'_>,
        mut request: Request<ClientBody>,
        fwd: Forwarding<'_>,
        start: Instant,
    ) -> Result<Response<ResponseBody>, FrontendError> {
        let AppCx { route, state, .. } = *cx;
        let site = &*route.site;
        let upgrade =
            upgrade::websocket_upgrade(request.version(), request.method(), request.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;

        let pinned = site
            .client_affinity
            .then(|| state.pinned(affinity::token_of(&headers)))
            .flatten();
        let first = state
            .first(route, pinned)
            .ok_or(FrontendError::NoReadyInstance)?;

        fwd.apply(&mut headers, &parts.uri, upgrade.clone());
        let method = parts.method;
        let path = match parts.uri.path_and_query() {
            Some(path) if path.as_str().starts_with('/') => path.clone(),
            _ => PathAndQuery::from_static("/"),
        };

        let retriable = body.is_end_stream();
        let mut body = if retriable { None } else { Some(body) };
        let count = state.instances.len();
        let attempts = async {
            let mut index = first;
            let mut tried = 1;
            loop {
                let instance = &state.instances[index];
                let attempt = Attempt::start(instance);
                let last = !retriable || tried >= count;
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(instance.authority.clone());
                uri.path_and_query = Some(path.clone());
                let uri = Uri::from_parts(uri).map_err(|_| FrontendError::Internal)?;
                let mut upstream = Request::new(match body.take() {
                    Some(body) => RequestBody::Streaming {
                        body,
                        limit: self.config.max_request_body,
                        received: 0,
                        instance: Arc::clone(instance),
                    },
                    None => RequestBody::Empty,
                });
                *upstream.method_mut() = method.clone();
                *upstream.uri_mut() = uri;
                *upstream.version_mut() = Version::HTTP_11;
                // The client consumes the request even when it fails to connect, so a request
                // that may be retried keeps a copy of its headers.
                *upstream.headers_mut() = if last {
                    std::mem::take(&mut headers)
                } else {
                    headers.clone()
                };
                let error = match self.client.request(upstream).await {
                    Ok(response) => return Ok((response, index, attempt.keep())),
                    Err(error) => error,
                };
                if !error.is_connect() {
                    if is_too_large(&error) {
                        return Err(FrontendError::RequestTooLarge);
                    }
                    tracing::warn!(app = %route.app, instance = %instance.id, addr = %instance.addr, error = %Chain(&error), "the instance failed the request");
                    return Err(FrontendError::InstanceClosedConnection);
                }
                if last {
                    tracing::warn!(app = %route.app, instance = %instance.id, addr = %instance.addr, error = %Chain(&error), "failed to connect to the instance");
                    return Err(FrontendError::InstanceUnreachable);
                }
                if !self.may_retry(state) {
                    tracing::warn!(app = %route.app, instance = %instance.id, addr = %instance.addr, error = %Chain(&error), "failed to connect to the instance; not retrying: the app's retry budget is spent");
                    return Err(FrontendError::InstanceUnreachable);
                }
                tracing::debug!(app = %route.app, instance = %instance.id, addr = %instance.addr, error = %Chain(&error), "failed to connect to the instance; trying the next one");
                index = (index + 1) % count;
                tried += 1;
            }
        };
        let timeout = site.request_timeout.as_duration();
        let (mut response, served, target) = match tokio::time::timeout(timeout, attempts).await {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!(app = %route.app, ?timeout, "the instance did not answer in time");
                return Err(FrontendError::InstanceTimeout);
            }
        };

        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let instance_upgrade = match (&client_upgrade, switching) {
            (Some(_), true) => Some(hyper::upgrade::on(&mut response)),
            _ => None,
        };
        let (mut parts, body) = response.into_parts();
        let upgrade_value = parts.headers.get(UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if site.client_affinity && pinned != Some(served) {
            for cookie in &state.instances[served].affinity.set_cookie {
                parts.headers.append(SET_COOKIE, cookie.clone());
            }
        }
        let mut tracker = Tracker::new(target, start, metrics::class_of(parts.status));
        if let (Some(client), Some(instance)) = (client_upgrade, instance_upgrade) {
            if let Some(value) = upgrade_value.or(upgrade) {
                upgrade::restore_headers(&mut parts.headers, value);
            }
            tracker.stop_clock();
            upgrade::splice(client, instance, tracker);
            return Ok(Response::from_parts(
                parts,
                ResponseBody::page(Bytes::new()),
            ));
        }
        if switching {
            // An instance switching protocols unasked would leave the client's connection in a
            // state neither side expects.
            tracing::warn!(app = %route.app, "the instance answered 101 to a request that asked for no upgrade");
            drop(tracker);
            return Err(FrontendError::InstanceClosedConnection);
        }
        Ok(Response::from_parts(
            parts,
            ResponseBody::upstream(body, tracker),
        ))
    }
}

/// The headers a forwarded request gets, computed once per request.
struct Forwarding<'a> {
    /// As the client sent it (port included).
    host: HeaderValue,
    /// The socket peer, canonical.
    peer: std::net::IpAddr,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-For` is kept).
    trusted: bool,
    /// The client address access rules judge: the peer, or what a trusted proxy forwarded.
    client: std::net::IpAddr,
    conn: &'a ConnInfo,
    request_id: &'a HeaderValue,
}

impl<'a> Forwarding<'a> {
    /// Who sent the request, worked out once per request.
    fn new(
        host: HeaderValue,
        conn: &'a ConnInfo,
        request_id: &'a HeaderValue,
        headers: &http::HeaderMap,
        trusted_proxies: &[ipnet::IpNet],
    ) -> Forwarding<'a> {
        let peer = conn.peer_ip();
        let trusted = forwarded::peer_trusted(peer, trusted_proxies);
        let client = if trusted {
            forwarded::client_ip(peer, headers, trusted_proxies)
        } else {
            peer
        };
        Forwarding {
            host,
            peer,
            trusted,
            client,
            conn,
            request_id,
        }
    }

    /// Strips hop-by-hop headers (putting back the two an upgrade needs) and sets `Host`,
    /// `X-Forwarded-*`, `X-AppService-Proto`, `X-Original-URL` and `X-Request-Id`, replacing
    /// whatever the client sent under those names.
    fn apply(self, headers: &mut HeaderMap, uri: &Uri, upgrade: Option<HeaderValue>) {
        strip_hop_by_hop(headers);
        strip_underscored(headers);
        if !self.trusted {
            for name in UNTRUSTED_CLAIMS {
                headers.remove(name);
            }
        }
        // hyper has already answered `Expect: 100-continue` on our side when the body is read.
        headers.remove(EXPECT);
        if let Some(upgrade) = upgrade {
            upgrade::restore_headers(headers, upgrade);
        }
        forwarded::set_forwarded_for(headers, self.peer, self.trusted);
        let proto = HeaderValue::from_static(self.conn.scheme());
        headers.insert(X_FORWARDED_PROTO, proto.clone());
        headers.insert(X_APPSERVICE_PROTO, proto);
        match &self.conn.tls {
            Some(tls) => {
                headers.insert(
                    X_FORWARDED_TLS_VERSION,
                    HeaderValue::from_static(tls.version),
                );
            }
            None => {
                headers.remove(X_FORWARDED_TLS_VERSION);
            }
        }
        headers.insert(X_FORWARDED_HOST, self.host.clone());
        headers.insert(HOST, self.host);
        let original = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        match HeaderValue::from_str(original) {
            Ok(value) => {
                headers.insert(X_ORIGINAL_URL, value);
            }
            Err(_) => {
                headers.remove(X_ORIGINAL_URL);
            }
        }
        headers.insert(X_REQUEST_ID, self.request_id.clone());
    }
}

/// The host a request is for: the URI's authority (absolute-form requests and HTTP/2) without
/// any `user:password@`, else the Host header.
fn host_of<B>(request: &Request<B>) -> Option<HeaderValue> {
    if let Some(authority) = request.uri().authority() {
        let host = authority.as_str();
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        return HeaderValue::from_str(host).ok();
    }
    request.headers().get(HOST).cloned()
}

/// Removes the hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.get(CONNECTION)
        && (headers.get_all(CONNECTION).iter().count() > 1
            || connection.as_bytes().contains(&b',')
            || !is_plain_connection_option(connection.as_bytes()))
    {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Removes headers whose name has an underscore, as nginx does by default: servers and
/// frameworks that map `_` to `-` (CGI-style variables) would read `Transfer_Encoding` or
/// `Content_Length` as framing headers the front end never saw, or `X_Forwarded_For` as the
/// front end's own.
fn strip_underscored(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| name.as_str().contains('_')) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// `keep-alive`, `close` and `upgrade` name no other header worth looking up: the common case
/// needs no list.
fn is_plain_connection_option(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(b"keep-alive")
        || value.eq_ignore_ascii_case(b"close")
        || value.eq_ignore_ascii_case(b"upgrade")
}

/// A client's request id is kept when it is 1 to 200 characters of `[A-Za-z0-9._-]`, so it can
/// be logged and echoed safely.
fn is_valid_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=200).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 128 random bits as 32 lowercase hex characters.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let bits = rand::random::<u128>();
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id)
        .unwrap_or_else(|_| unreachable!("hex digits are a valid header value"))
}

/// Displays an error with its sources, `outer: inner: innermost`, for logs.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                HeaderValue::from_str(value).expect("valid value"),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_stripped() {
        for (input, kept) in [
            (&[("x-a", "1")][..], &["x-a"][..]),
            (
                &[
                    ("connection", "close, X-Secret"),
                    ("connection", "x-other"),
                    ("x-secret", "1"),
                    ("x-other", "1"),
                    ("x-kept", "1"),
                ],
                &["x-kept"],
            ),
            (&[("connection", "x-secret"), ("x-secret", "1")], &[]),
            (&[("connection", "close"), ("x-kept", "1")], &["x-kept"]),
            (
                &[
                    ("connection", "keep-alive"),
                    ("connection", "x-secret"),
                    ("x-secret", "1"),
                ],
                &[],
            ),
            (
                &[
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("te", "trailers"),
                    ("trailer", "x-t"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "websocket"),
                    ("proxy-authenticate", "Basic"),
                    ("proxy-authorization", "Basic eA=="),
                    ("content-length", "3"),
                ],
                &["content-length"],
            ),
        ] {
            let mut map = headers(input);
            strip_hop_by_hop(&mut map);
            assert_eq!(names(&map), kept, "{input:?}");
        }
    }

    #[test]
    fn underscored_names_are_stripped() {
        let mut map = headers(&[
            ("transfer_encoding", "chunked"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x-kept", "1"),
        ]);
        strip_underscored(&mut map);
        assert_eq!(names(&map), ["x-kept"]);
    }

    #[test]
    fn request_ids_are_checked() {
        for (id, valid) in [
            ("abc-123", true),
            ("A.b_C-9", true),
            ("bad id", false),
            ("a/b", false),
            ("", false),
            (&"a".repeat(200), true),
            (&"a".repeat(201), false),
        ] {
            let value = HeaderValue::from_str(id).expect("valid value");
            assert_eq!(is_valid_request_id(&value), valid, "{id:?}");
        }
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(is_valid_request_id(&id));
        assert!(
            id.as_bytes()
                .iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(new_request_id(), id);
    }

    #[test]
    fn host_comes_from_the_authority_then_the_header() {
        let request = |uri: &str, host: Option<&str>| {
            let mut builder = Request::builder().uri(uri);
            if let Some(host) = host {
                builder = builder.header(HOST, host);
            }
            builder.body(()).expect("valid request")
        };
        for (uri, host, expected) in [
            ("/", Some("hello.localhost"), Some("hello.localhost")),
            (
                "/x",
                Some("hello.localhost:8080"),
                Some("hello.localhost:8080"),
            ),
            (
                "http://world.localhost/x",
                Some("hello.localhost"),
                Some("world.localhost"),
            ),
            (
                "http://u:p@world.localhost:81/",
                None,
                Some("world.localhost:81"),
            ),
            ("/", None, None),
        ] {
            let got = host_of(&request(uri, host));
            assert_eq!(
                got.as_ref().and_then(|h| h.to_str().ok()),
                expected,
                "{uri} {host:?}"
            );
        }
    }
}
