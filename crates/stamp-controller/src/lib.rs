//! Stamp's controller: the only writer of desired state.
//!
//! It serves the REST API ([`api`]), checks bearer tokens, turns requests into desired state in
//! the store, computes the desired instances with [`stamp_placement`] and hands them to the node
//! ([`Node`]), and keeps the front end's routing table ([`RouteSink`]) in step with what the node
//! observes. Every change, and startup itself, goes through [`Controller::sync`]: read the
//! store, place, publish. The controller never talks to instances; a running app keeps serving
//! from the front end's last routing table if the controller stops.

pub mod api;
mod error;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use stamp_artifact::BlobStore;
use stamp_logs::LogBook;
use stamp_model::sku::{self, Capacity};
use stamp_model::{AppName, InstanceSpec, ObservedInstance, Sku, WallClock};
use stamp_placement::AppState;
use stamp_routes::RouteTable;
use stamp_store::Store;
use tokio::sync::watch;

pub use error::ApiError;

/// Where instances run: the worker agent(s). In `stamp up` the one in-process agent.
pub trait Node: Send + Sync + 'static {
    /// Replaces the whole desired set.
    fn set_desired(&self, specs: Vec<InstanceSpec>);
    /// What runs, updated on every state change.
    fn observed(&self) -> watch::Receiver<Vec<ObservedInstance>>;
}

/// Where routing tables go: the front end(s).
pub trait RouteSink: Send + Sync + 'static {
    fn set_routes(&self, table: RouteTable);
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
    routes: Arc<dyn RouteSink>,
    /// Serialises changes to desired state, so check-then-write (names, capacity) is atomic.
    writer: tokio::sync::Mutex<()>,
    /// The last desired set given to the node, for status views.
    desired: Mutex<Vec<InstanceSpec>>,
    /// Apps that exist (hosts the front end knows), for the routing task.
    apps: watch::Sender<Vec<AppName>>,
}

impl Controller {
    pub fn new(
        config: ControllerConfig,
        store: Store,
        blobs: BlobStore,
        logs: LogBook,
        clock: Arc<dyn WallClock>,
        node: Arc<dyn Node>,
        routes: Arc<dyn RouteSink>,
    ) -> Controller {
        Controller {
            inner: Arc::new(Inner {
                config,
                store,
                blobs,
                logs,
                clock,
                node,
                routes,
                writer: tokio::sync::Mutex::new(()),
                desired: Mutex::new(Vec::new()),
                apps: watch::channel(Vec::new()).0,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Reads desired state from the store and publishes it: desired instances to the node, the
    /// app list to the routing task. The one path for startup and every change.
    pub fn sync(&self) -> anyhow::Result<()> {
        let store = &self.inner.store;
        let plans = store.plans()?;
        let apps = store.apps()?;
        let releases = store.current_releases()?;
        let states: Vec<AppState<'_>> = apps
            .iter()
            .map(|app| AppState {
                app,
                release: releases
                    .iter()
                    .find(|r| r.app == app.name && r.slot.is_production()),
            })
            .collect();
        let desired = stamp_placement::desired_instances(&plans, &states);
        *self.inner.desired.lock().unwrap_or_else(|p| p.into_inner()) = desired.clone();
        self.inner
            .apps
            .send_replace(apps.iter().map(|a| a.name.clone()).collect());
        self.inner.node.set_desired(desired);
        Ok(())
    }

    /// Keeps the front end's routing table in step with the app list and the node's observed
    /// instances. Runs until the node's observation channel closes.
    pub async fn run_routes(&self) {
        let mut observed = self.inner.node.observed();
        let mut apps = self.inner.apps.subscribe();
        loop {
            let table = RouteTable::build(
                &self.inner.config.domain,
                &apps.borrow_and_update(),
                &observed.borrow_and_update(),
            );
            self.inner.routes.set_routes(table);
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
