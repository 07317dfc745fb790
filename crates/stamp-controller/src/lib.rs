//! Stamp's controller: the only writer of desired state.
//!
//! It serves the REST API ([`api`]), checks bearer tokens, turns requests into desired state in
//! the store, computes the desired instances with [`stamp_placement`] and hands them to the node
//! ([`Node`]), and keeps the front end's routing table ([`FrontEnd`]) in step with what the node
//! observes. Every change, and startup itself, goes through [`Controller::sync`]: read the
//! store, place, publish. The controller never talks to instances; a running app keeps serving
//! from the front end's last routing table if the controller stops.

pub mod api;
pub mod autoscale;
mod error;
mod quota;
mod slots;
pub mod workers;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use stamp_artifact::BlobStore;
use stamp_logs::LogBook;
use stamp_model::sku::{self, Capacity};
use stamp_model::{
    AppName, Certificate, InstanceSpec, ObservedInstance, PoolStatus, PoolTarget, Sku, WallClock,
    WorkerLimits,
};
use stamp_placement::AppState;
use stamp_routes::{RouteTable, SiteRoute};
use stamp_store::Store;
use tokio::sync::watch;

pub use error::ApiError;

/// Where instances run: the worker agent(s). In `stamp up` the one in-process agent.
pub trait Node: Send + Sync + 'static {
    /// Replaces the whole desired set.
    fn set_desired(&self, specs: Vec<InstanceSpec>);
    /// What runs, updated on every state change.
    fn observed(&self) -> watch::Receiver<Vec<ObservedInstance>>;
    /// CPU and memory the instances of each worker use now.
    fn usage(&self) -> Vec<autoscale::WorkerUsage>;
    /// How many warm workers to keep per size, replacing the previous targets.
    fn set_pools(&self, targets: Vec<PoolTarget>);
    /// Warm and busy workers per size now.
    fn pools(&self) -> Vec<PoolStatus>;
}

/// The front end(s): where routing tables and certificates go, and where request metrics come
/// from.
pub trait FrontEnd: Send + Sync + 'static {
    fn set_routes(&self, table: RouteTable);
    /// Every app's uploaded certificates, replacing the previous set.
    fn set_certificates(&self, certs: &[Certificate]);
    /// Appends the front end's metrics in Prometheus text format.
    fn render_metrics(&self, out: &mut String);
    /// Per-app request counters, cumulative, for the autoscale metrics.
    fn request_counters(&self) -> Vec<autoscale::AppCounters>;
    /// Checks that the front end can serve this certificate and key (PEM): the user-facing
    /// problem if not.
    fn inspect_certificate(&self, cert_pem: &str, key_pem: &str) -> Result<CertSummary, String>;
}

/// The hostnames of `app` a certificate naming `cert_names` may be served for: its default
/// hostname, its slots' hostnames (`<app>-<slot>.<domain>`) and custom domains (of every slot) that the certificate covers (exactly, or by a one-label
/// wildcard), and its wildcard custom domains the certificate names exactly.
pub fn served_names(cert_names: &[String], app: &stamp_model::App, domain: &str) -> Vec<String> {
    let covers = |name: &str, host: &str| {
        name == host
            || name.strip_prefix("*.").is_some_and(|parent| {
                !host.starts_with("*.")
                    && host
                        .split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == parent)
            })
    };
    let mut owned: Vec<String> = app
        .all_slots()
        .iter()
        .map(|s| {
            format!(
                "{}.{domain}",
                stamp_model::slots::host_label(&app.name, &s.name)
            )
        })
        .collect();
    owned.extend(app.site.domains.iter().cloned());
    owned.extend(
        app.slots
            .iter()
            .flat_map(|s| s.site.domains.iter().cloned()),
    );
    let mut names: Vec<String> = owned
        .into_iter()
        .filter(|host| cert_names.iter().any(|n| covers(n, host)))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What the front end found in an uploaded certificate.
#[derive(Debug, Clone)]
pub struct CertSummary {
    /// Hex sha256 of the leaf certificate.
    pub thumbprint: String,
    /// DNS names it covers, lowercase, wildcards as `*.example.com`.
    pub hostnames: Vec<String>,
    /// Expiry, Unix milliseconds.
    pub not_after: stamp_model::Millis,
}

pub struct ControllerConfig {
    /// Apps are reachable at `<app>.<domain>`.
    pub domain: String,
    /// The front end's HTTP port, for the URLs the API shows.
    pub http_port: u16,
    /// What the node offers to workers.
    pub capacity: Capacity,
    /// Largest deploy upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Scratch space for checking uploads (same filesystem as the data directory).
    pub tmp_dir: PathBuf,
    /// Milliseconds of CPU in a "CPU minute" of the daily quotas: 60,000 except in tests.
    pub cpu_minute_ms: u64,
}

#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    config: ControllerConfig,
    store: Store,
    blobs: BlobStore,
    logs: LogBook,
    clock: Arc<dyn WallClock>,
    node: Arc<dyn Node>,
    frontend: Arc<dyn FrontEnd>,
    /// Serialises changes to desired state, so check-then-write (names, capacity) is atomic.
    writer: tokio::sync::Mutex<()>,
    /// Serialises [`Controller::sync`], which stores placements it computes.
    syncing: Mutex<()>,
    /// The last desired set given to the node, for status views.
    desired: Mutex<Vec<InstanceSpec>>,
    /// Every slot of every app with its front-end configuration, for the routing task.
    apps: watch::Sender<Vec<SiteRoute>>,
    /// Each app's current or last swap, as the CLI follows it.
    /// Keyed by app; the swap's start time tells one swap's progress from the next one's.
    swaps:
        Mutex<std::collections::HashMap<AppName, (stamp_model::Millis, stamp_api_types::SwapView)>>,
    /// Set when the stamp stops: long-lived responses (log tails) end.
    stopping: watch::Sender<bool>,
    /// One-second samples of plan metrics, for autoscale.
    metrics: autoscale::MetricStore,
    autoscale_memory: autoscale::RunMemory,
    /// For webhooks.
    http: reqwest::Client,
    /// The day's CPU per app on Free and Shared plans, and who is stopped for it.
    quota: Mutex<quota::QuotaBook>,
}

impl Controller {
    pub fn new(
        config: ControllerConfig,
        store: Store,
        blobs: BlobStore,
        logs: LogBook,
        clock: Arc<dyn WallClock>,
        node: Arc<dyn Node>,
        frontend: Arc<dyn FrontEnd>,
    ) -> Controller {
        Controller {
            inner: Arc::new(Inner {
                config,
                store,
                blobs,
                logs,
                clock,
                node,
                frontend,
                writer: tokio::sync::Mutex::new(()),
                syncing: Mutex::new(()),
                desired: Mutex::new(Vec::new()),
                apps: watch::channel(Vec::new()).0,
                swaps: Mutex::default(),
                stopping: watch::channel(false).0,
                metrics: autoscale::MetricStore::default(),
                autoscale_memory: autoscale::RunMemory::default(),
                http: reqwest::Client::new(),
                quota: Mutex::new(quota::QuotaBook::default()),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Reads desired state from the store and publishes it: desired instances to the node, the
    /// app list to the routing task. The one path for startup and every change.
    pub fn sync(&self) -> anyhow::Result<()> {
        let _syncing = self.inner.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let store = &self.inner.store;
        let mut plans = store.plans()?;
        let apps = store.apps()?;
        let releases = store.current_releases()?;
        let swaps = store.swaps()?;
        let states: Vec<AppState<'_>> = apps
            .iter()
            .map(|app| AppState {
                app,
                release: releases
                    .iter()
                    .find(|r| r.app == app.name && r.slot.is_production()),
                slot_releases: releases
                    .iter()
                    .filter(|r| r.app == app.name && !r.slot.is_production())
                    .collect(),
                swap: swaps.iter().find(|s| s.app == app.name),
            })
            .collect();
        for plan in &mut plans {
            let placement = stamp_placement::next_placement(plan, &states);
            if placement != plan.placement || plan.placed_on != plan.workers {
                // Publishing must not wait on a full disk: the next sync stores it again.
                if let Err(e) = store.set_placement(&plan.name, &placement, plan.workers) {
                    tracing::error!("failed to store the placement of plan {}: {e}", plan.name);
                }
                plan.placement = placement;
                plan.placed_on = plan.workers;
            }
        }
        let stopped = self.quota_stopped(&apps, &plans)?;
        let mut desired = stamp_placement::desired_instances(&plans, &states);
        // Apps out of their day's CPU quota run nothing until it resets.
        desired.retain(|spec| !stopped.contains(&spec.key.app));
        *self.inner.desired.lock().unwrap_or_else(|p| p.into_inner()) = desired.clone();
        self.inner.apps.send_replace(
            apps.iter()
                .flat_map(|a| {
                    a.all_slots().into_iter().map(|slot| {
                        let mut site = slot.site;
                        site.stopped = stopped.contains(&a.name);
                        SiteRoute {
                            app: a.name.clone(),
                            slot: slot.name,
                            lane: slot.lane,
                            site,
                            routing: slot.routing,
                        }
                    })
                })
                .collect(),
        );
        self.inner.node.set_desired(desired);
        let targets = workers::pool_targets(self).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        self.inner.node.set_pools(
            stamp_model::sku::sizes()
                .iter()
                .map(|s| PoolTarget {
                    limits: WorkerLimits::of(s),
                    warm: targets
                        .get(s.size)
                        .copied()
                        .unwrap_or(workers::DEFAULT_WARM),
                })
                .collect(),
        );
        // A certificate is served only for hostnames its app owns now, so an app cannot take
        // over another app's name by uploading a certificate for it.
        let certs: Vec<Certificate> = store
            .certificates()?
            .into_iter()
            .filter_map(|mut cert| {
                let app = apps.iter().find(|a| a.name == cert.app)?;
                cert.hostnames = served_names(&cert.hostnames, app, &self.inner.config.domain);
                (!cert.hostnames.is_empty()).then_some(cert)
            })
            .collect();
        self.inner.frontend.set_certificates(&certs);
        Ok(())
    }

    /// Prometheus text: the controller's own gauges, then the front end's request metrics.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let observed = self.inner.node.observed().borrow().clone();
        let mut counts: std::collections::BTreeMap<(String, &'static str), u32> =
            Default::default();
        for o in &observed {
            *counts
                .entry((o.spec.key.app.to_string(), o.state.as_str()))
                .or_default() += 1;
        }
        out.push_str("# HELP stamp_instances Instances on the node by app and state.\n");
        out.push_str("# TYPE stamp_instances gauge\n");
        for ((app, state), n) in &counts {
            let _ = writeln!(
                out,
                "stamp_instances{{app=\"{app}\",state=\"{state}\"}} {n}"
            );
        }
        if let Ok(plans) = self.inner.store.plans() {
            out.push_str("# HELP stamp_plan_workers Workers of each plan.\n");
            out.push_str("# TYPE stamp_plan_workers gauge\n");
            for p in plans {
                let _ = writeln!(
                    out,
                    "stamp_plan_workers{{plan=\"{}\",sku=\"{}\"}} {}",
                    p.name, p.sku, p.workers
                );
            }
        }
        let usage = self.inner.node.usage();
        type Gauge = (
            &'static str,
            &'static str,
            fn(&autoscale::WorkerUsage) -> String,
        );
        let gauges: [Gauge; 3] = [
            (
                "stamp_instance_cpu_cores",
                "CPU each instance used over the last second, in cores.",
                |u| format!("{:.3}", u.cpu_cores),
            ),
            (
                "stamp_instance_memory_bytes",
                "Memory each instance uses (its control group's working set, else its resident set).",
                |u| u.memory_bytes.to_string(),
            ),
            (
                "stamp_instance_outbound_connections",
                "Open outbound TCP connections of each instance.",
                |u| u.outbound_connections.to_string(),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for u in &usage {
                let _ = writeln!(
                    out,
                    "{name}{{app=\"{}\",instance=\"{}\",worker=\"{}/{}\"}} {}",
                    u.app,
                    u.instance,
                    u.plan,
                    u.worker,
                    value(u)
                );
            }
        }
        out.push_str("# HELP stamp_pool_workers_available Warm workers ready per size (Azure's WorkersAvailable).\n");
        out.push_str("# TYPE stamp_pool_workers_available gauge\n");
        for p in self.inner.node.pools() {
            let _ = writeln!(
                out,
                "stamp_pool_workers_available{{size=\"{}\"}} {}",
                p.size, p.available
            );
        }
        self.inner.frontend.render_metrics(&mut out);
        out
    }

    /// Publishes desired state after a change was committed. A failure here must not turn an
    /// acknowledged change into an error: it is logged and retried in the background until a
    /// sync succeeds.
    pub(crate) fn sync_after_commit(&self) {
        if let Err(e) = self.sync() {
            tracing::error!("failed to publish desired state (retrying): {e:#}");
            let c = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    match c.sync() {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::error!("failed to publish desired state (retrying): {e:#}")
                        }
                    }
                }
            });
        }
    }

    /// Ends long-lived API responses (log tails) so the API server can stop.
    pub fn begin_shutdown(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// Keeps the front end's routing table in step with the app list and the node's observed
    /// instances. Runs until the node's observation channel closes.
    pub async fn run_routes(&self) {
        let mut observed = self.inner.node.observed();
        let mut apps = self.inner.apps.subscribe();
        loop {
            let table = RouteTable::build_slots(
                &self.inner.config.domain,
                &apps.borrow_and_update(),
                &observed.borrow_and_update(),
            );
            self.inner.frontend.set_routes(table);
            tokio::select! {
                r = observed.changed() => if r.is_err() { return },
                r = apps.changed() => if r.is_err() { return },
            }
        }
    }

    fn desired(&self) -> Vec<InstanceSpec> {
        self.inner
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Capacity used by every plan except `except`.
    fn used_capacity(&self, except: Option<&str>) -> Result<Capacity, ApiError> {
        let mut used = Capacity {
            millicores: 0,
            memory_mib: 0,
        };
        for plan in self.inner.store.plans()? {
            if Some(plan.name.as_str()) == except {
                continue;
            }
            let sku = Sku::find(&plan.sku).map_err(ApiError::internal)?;
            let u = sku::usage(sku, plan.workers);
            used.millicores = used.millicores.saturating_add(u.millicores);
            used.memory_mib = used.memory_mib.saturating_add(u.memory_mib);
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_serve_only_names_their_app_owns() {
        let mut app = stamp_model::App {
            name: AppName::parse("a").unwrap(),
            plan: stamp_model::PlanName::parse("p").unwrap(),
            settings: Default::default(),
            generation: 0,
            site: stamp_model::SiteConfig::default(),
            max_workers: None,
            formation: Default::default(),
            lane: 0,
            slot_settings: Default::default(),
            slots: Vec::new(),
            created_at: stamp_model::Millis(0),
        };
        app.site.domains = vec!["www.example.com".into(), "*.shop.example.com".into()];
        let names = |cert: &[&str]| {
            let cert: Vec<String> = cert.iter().map(|s| s.to_string()).collect();
            served_names(&cert, &app, "localhost")
        };
        assert_eq!(names(&["www.example.com"]), ["www.example.com"]);
        assert_eq!(names(&["*.example.com"]), ["www.example.com"]);
        assert_eq!(names(&["*.localhost"]), ["a.localhost"]);
        app.slots.push(stamp_model::Slot {
            name: stamp_model::SlotName::parse("staging").unwrap(),
            lane: 1,
            settings: Default::default(),
            generation: 0,
            site: stamp_model::SiteConfig::default(),
            auto_swap_to: None,
            routing: None,
            created_at: stamp_model::Millis(0),
        });
        let names = |cert: &[&str]| {
            let cert: Vec<String> = cert.iter().map(|s| s.to_string()).collect();
            served_names(&cert, &app, "localhost")
        };
        assert_eq!(
            names(&["*.localhost"]),
            ["a-staging.localhost", "a.localhost"]
        );
        assert_eq!(names(&["*.shop.example.com"]), ["*.shop.example.com"]);
        assert!(names(&["b.localhost", "other.example.com"]).is_empty());
        assert!(names(&["*.com"]).is_empty());
    }
}
