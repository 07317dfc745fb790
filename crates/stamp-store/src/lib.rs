//! The only crate with SQL. Keeps Stamp's desired state: plans, apps (with their current
//! settings and restart generation), releases, and API token hashes.
//!
//! Custom domains live in their own table (a domain belongs to one app at most, enforced by its
//! primary key); [`App::site`]'s `domains` is filled from it on read and never stored in the
//! `site` JSON.
//!
//! What is persisted is exactly what a user asked for; everything observed (instances, ports,
//! routes) is rebuilt from it at startup through the normal reconcile path. SQLite runs in WAL
//! mode with `synchronous = FULL`, so a call that returned has reached the disk: an API request
//! is acknowledged only after its transaction commits, and survives `kill -9` of the process.
//!
//! Calls are synchronous and short; the controller makes them from async code and accepts the
//! brief block (an fsync) rather than hopping threads for every statement.

mod slots;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
pub use slots::SwapReleases;
use slots::{insert_release, query_slots};
use stamp_model::{
    App, AppName, AutoscaleRecord, AutoscaleRun, Certificate, Digest, Millis, Placement, Plan,
    PlanName, ProcessType, Procfile, Release, Settings, SiteConfig, SlotName,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name} already exists")]
    Conflict { kind: &'static str, name: String },
    #[error("no {kind} named {name}")]
    NotFound { kind: &'static str, name: String },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store holds a record it cannot read ({0}); was the database edited by hand?")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE plans (
    name        TEXT PRIMARY KEY,
    sku         TEXT NOT NULL,
    workers     INTEGER NOT NULL CHECK (workers >= 1),
    created_at  INTEGER NOT NULL
);
CREATE TABLE apps (
    name        TEXT PRIMARY KEY,
    plan        TEXT NOT NULL REFERENCES plans(name),
    settings    TEXT NOT NULL,
    generation  INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
CREATE TABLE releases (
    app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    slot        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    artifact    TEXT,
    procfile    TEXT,
    settings    TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (app, slot, version)
);
CREATE TABLE tokens (
    sha256      TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
"#,
    r#"
-- Front-end configuration of each app (JSON of stamp_model::SiteConfig).
ALTER TABLE apps ADD COLUMN site TEXT NOT NULL DEFAULT '{}';
-- Custom domains: a domain belongs to one app at most.
CREATE TABLE domains (
    domain      TEXT PRIMARY KEY,
    app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE
);
-- Uploaded TLS certificates (PEM), per app.
CREATE TABLE certificates (
    app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    thumbprint  TEXT NOT NULL,
    hostnames   TEXT NOT NULL,
    not_after   INTEGER NOT NULL,
    cert_pem    TEXT NOT NULL,
    key_pem     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (app, thumbprint)
);
"#,
    r#"
-- A plan's autoscale setting (Azure JSON, verbatim) and the last action's cooldown.
CREATE TABLE autoscale (
    plan            TEXT PRIMARY KEY REFERENCES plans(name) ON DELETE CASCADE,
    setting         TEXT NOT NULL,
    enabled         INTEGER NOT NULL,
    last_action_at  INTEGER,
    last_cooldown   INTEGER,
    updated_at      INTEGER NOT NULL
);
-- Every evaluation, explained; bounded per plan by the writer.
CREATE TABLE autoscale_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    plan        TEXT NOT NULL REFERENCES plans(name) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    scaled      INTEGER NOT NULL,
    summary     TEXT NOT NULL,
    evaluation  TEXT NOT NULL
);
CREATE INDEX autoscale_runs_by_plan ON autoscale_runs (plan, id);
"#,
    r#"
-- Per-app scaling, and which workers run each app (JSON of stamp_model::Placement).
ALTER TABLE plans ADD COLUMN per_app_scaling INTEGER NOT NULL DEFAULT 0;
ALTER TABLE plans ADD COLUMN placement TEXT NOT NULL DEFAULT '{}';
ALTER TABLE plans ADD COLUMN placed_on INTEGER NOT NULL DEFAULT 0;
-- Per-app cap on workers, and the process formation (JSON: process type -> count).
ALTER TABLE apps ADD COLUMN max_workers INTEGER CHECK (max_workers >= 1);
ALTER TABLE apps ADD COLUMN formation TEXT NOT NULL DEFAULT '{}';
-- Warm worker pool targets per worker size; sizes without a row use the default.
CREATE TABLE pools (
    size        TEXT PRIMARY KEY,
    warm        INTEGER NOT NULL CHECK (warm >= 0)
);
"#,
    r#"
-- CPU used per app and UTC day (days since 1970), for the Free and Shared daily quotas.
CREATE TABLE cpu_used (
    app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    day         INTEGER NOT NULL,
    cpu_ms      INTEGER NOT NULL,
    PRIMARY KEY (app, day)
);
"#,
    r#"
-- Deployment slots. Production's settings, generation and site stay on `apps`; `lane` says
-- which instances serve it, and a swap exchanges lanes.
ALTER TABLE apps ADD COLUMN lane INTEGER NOT NULL DEFAULT 0;
-- Azure's slotConfigNames: settings that stay with their slot (JSON array).
ALTER TABLE apps ADD COLUMN slot_settings TEXT NOT NULL DEFAULT '[]';
CREATE TABLE slots (
    app             TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    lane            INTEGER NOT NULL,
    settings        TEXT NOT NULL,
    generation      INTEGER NOT NULL DEFAULT 0,
    site            TEXT NOT NULL DEFAULT '{}',
    auto_swap_to    TEXT,
    routing         INTEGER CHECK (routing BETWEEN 0 AND 100),
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (app, name)
);
-- A swap in progress (JSON of stamp_model::Swap): one per app.
CREATE TABLE swaps (
    app         TEXT PRIMARY KEY REFERENCES apps(name) ON DELETE CASCADE,
    swap        TEXT NOT NULL
);
-- Who made a release (the API caller's role, or the platform).
ALTER TABLE releases ADD COLUMN actor TEXT NOT NULL DEFAULT '';
"#,
    r#"
-- The slot a custom domain routes to (custom domains stay with their slot in a swap).
ALTER TABLE domains ADD COLUMN slot TEXT NOT NULL DEFAULT 'production';
"#,
];

pub struct Store {
    conn: Mutex<Connection>,
}

/// What a new release carries; the store numbers it.
pub struct NewRelease {
    pub artifact: Option<Digest>,
    pub procfile: Option<Procfile>,
    pub settings: Settings,
    pub description: String,
    /// Who asked for it.
    pub actor: String,
    pub created_at: Millis,
}

/// Releases matching `filter` (a WHERE clause with its ORDER BY).
fn releases_where(
    c: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Release>> {
    {
        let sql = format!(
            "SELECT app, slot, version, artifact, procfile, settings, description, created_at, actor FROM releases {filter}"
        );
        let mut stmt = c.prepare(&sql)?;
        let rows = stmt.query_map(args, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, u64>(7)?,
                r.get::<_, String>(8)?,
            ))
        })?;
        rows.map(|row| {
            let (app, slot, version, artifact, procfile, settings, description, created_at, actor) =
                row?;
            Ok(Release {
                app: AppName::parse(&app).map_err(corrupt)?,
                slot: SlotName::parse(&slot).map_err(corrupt)?,
                version,
                artifact: artifact
                    .map(|d| Digest::parse(&d))
                    .transpose()
                    .map_err(corrupt)?,
                procfile: procfile
                    .map(|p| serde_json::from_str(&p))
                    .transpose()
                    .map_err(corrupt)?,
                settings: serde_json::from_str(&settings).map_err(corrupt)?,
                description,
                actor,
                created_at: Millis(created_at),
            })
        })
        .collect()
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The `site` column: the config without its domains (they have their own table).
fn site_json(site: &SiteConfig) -> Result<String> {
    let mut stored = site.clone();
    stored.domains.clear();
    serde_json::to_string(&stored).map_err(corrupt)
}

/// Maps a unique-constraint violation to `Conflict` on `kind` `name`; other errors pass.
fn conflict(
    kind: &'static str,
    name: impl Into<String>,
) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| {
        if is_unique_violation(&e) {
            StoreError::Conflict {
                kind,
                name: name.into(),
            }
        } else {
            e.into()
        }
    }
}

/// `NotFound` on `kind` `name` when a statement changed no row.
fn found(changed: usize, kind: &'static str, name: impl Into<String>) -> Result<()> {
    if changed == 0 {
        return Err(StoreError::NotFound {
            kind,
            name: name.into(),
        });
    }
    Ok(())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

impl Store {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        Store::init(conn)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Store> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let tx = conn.transaction()?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
        }
        tx.commit()?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    fn tx<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    // ---- plans

    pub fn create_plan(&self, plan: &Plan) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO plans (name, sku, workers, created_at, per_app_scaling, placement, placed_on)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    plan.name.as_str(),
                    plan.sku,
                    plan.workers,
                    plan.created_at.0,
                    plan.per_app_scaling,
                    serde_json::to_string(&plan.placement).map_err(corrupt)?,
                    plan.placed_on,
                ],
            )
            .map_err(conflict("plan", plan.name.to_string()))?;
            Ok(())
        })
    }

    pub fn plans(&self) -> Result<Vec<Plan>> {
        self.query_plans(None)
    }

    pub fn plan(&self, name: &PlanName) -> Result<Plan> {
        self.query_plans(Some(name.as_str()))?
            .pop()
            .ok_or_else(|| StoreError::NotFound {
                kind: "plan",
                name: name.to_string(),
            })
    }

    /// Every plan, or only the one named `only`.
    fn query_plans(&self, only: Option<&str>) -> Result<Vec<Plan>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, sku, workers, created_at, per_app_scaling, placement, placed_on FROM plans
                 WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([only], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get::<_, String>(5)?,
                    r.get(6)?,
                ))
            })?;
            rows.map(|row| {
                let (name, sku, workers, created_at, per_app_scaling, placement, placed_on) = row?;
                Ok(Plan {
                    name: PlanName::parse(&name).map_err(corrupt)?,
                    sku,
                    workers,
                    per_app_scaling,
                    placement: serde_json::from_str(&placement).map_err(corrupt)?,
                    placed_on,
                    created_at: Millis(created_at),
                })
            })
            .collect()
        })
    }

    pub fn set_plan_workers(&self, name: &PlanName, workers: u32) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE plans SET workers = ?2 WHERE name = ?1",
                params![name.as_str(), workers],
            )?;
            found(n, "plan", name.to_string())
        })
    }

    pub fn set_per_app_scaling(&self, name: &PlanName, on: bool) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE plans SET per_app_scaling = ?2 WHERE name = ?1",
                params![name.as_str(), on],
            )?;
            found(n, "plan", name.to_string())
        })
    }

    /// Records which workers run each app of the plan, placed on `placed_on` workers.
    pub fn set_placement(
        &self,
        name: &PlanName,
        placement: &Placement,
        placed_on: u32,
    ) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE plans SET placement = ?2, placed_on = ?3 WHERE name = ?1",
                params![
                    name.as_str(),
                    serde_json::to_string(placement).map_err(corrupt)?,
                    placed_on
                ],
            )?;
            found(n, "plan", name.to_string())
        })
    }

    /// Deletes a plan; a plan that still has apps is a conflict.
    pub fn delete_plan(&self, name: &PlanName) -> Result<()> {
        self.tx(|tx| {
            let apps: i64 = tx.query_row(
                "SELECT count(*) FROM apps WHERE plan = ?1",
                [name.as_str()],
                |r| r.get(0),
            )?;
            if apps > 0 {
                return Err(StoreError::Conflict {
                    kind: "plan with apps",
                    name: name.to_string(),
                });
            }
            let n = tx.execute("DELETE FROM plans WHERE name = ?1", [name.as_str()])?;
            found(n, "plan", name.to_string())
        })
    }

    // ---- apps

    pub fn create_app(&self, app: &App) -> Result<()> {
        self.with(|c| {
            let settings = serde_json::to_string(&app.settings).map_err(corrupt)?;
            let site = site_json(&app.site)?;
            c.execute(
                "INSERT INTO apps (name, plan, settings, generation, created_at, site, max_workers, formation, lane, slot_settings)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    app.name.as_str(),
                    app.plan.as_str(),
                    settings,
                    app.generation,
                    app.created_at.0,
                    site,
                    app.max_workers,
                    serde_json::to_string(&app.formation).map_err(corrupt)?,
                    app.lane,
                    serde_json::to_string(&app.slot_settings).map_err(corrupt)?,
                ],
            )
            .map_err(conflict("app", app.name.to_string()))?;
            Ok(())
        })
    }

    pub fn apps(&self) -> Result<Vec<App>> {
        self.query_apps(None)
    }

    pub fn app(&self, name: &AppName) -> Result<App> {
        self.query_apps(Some(name.as_str()))?
            .pop()
            .ok_or_else(|| StoreError::NotFound {
                kind: "app",
                name: name.to_string(),
            })
    }

    /// Every app, or only the one named `only`, with its custom domains.
    fn query_apps(&self, only: Option<&str>) -> Result<Vec<App>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, plan, settings, generation, created_at, site, max_workers, formation,
                        lane, slot_settings
                 FROM apps WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([only], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get::<_, String>(5)?,
                    r.get(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, u32>(8)?,
                    r.get::<_, String>(9)?,
                ))
            })?;
            let mut apps = rows
                .map(|row| {
                    let (
                        name,
                        plan,
                        settings,
                        generation,
                        created_at,
                        site,
                        max_workers,
                        formation,
                        lane,
                        slot_settings,
                    ) = row?;
                    Ok(App {
                        name: AppName::parse(&name).map_err(corrupt)?,
                        plan: PlanName::parse(&plan).map_err(corrupt)?,
                        settings: serde_json::from_str(&settings).map_err(corrupt)?,
                        generation,
                        site: serde_json::from_str(&site).map_err(corrupt)?,
                        max_workers,
                        formation: serde_json::from_str(&formation).map_err(corrupt)?,
                        lane,
                        slot_settings: serde_json::from_str(&slot_settings).map_err(corrupt)?,
                        slots: Vec::new(),
                        created_at: Millis(created_at),
                    })
                })
                .collect::<Result<Vec<App>>>()?;
            for (app, slot) in query_slots(c, only)? {
                if let Some(a) = apps.iter_mut().find(|a| a.name.as_str() == app) {
                    a.slots.push(slot);
                }
            }
            let mut stmt = c.prepare(
                "SELECT domain, app, slot FROM domains WHERE ?1 IS NULL OR app = ?1 ORDER BY domain",
            )?;
            let domains = stmt.query_map([only], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            for row in domains {
                let (domain, app, slot) = row?;
                let Some(a) = apps.iter_mut().find(|a| a.name.as_str() == app) else {
                    continue;
                };
                if slot == "production" {
                    a.site.domains.push(domain);
                } else if let Some(s) = a.slots.iter_mut().find(|s| s.name.as_str() == slot) {
                    s.site.domains.push(domain);
                }
            }
            Ok(apps)
        })
    }

    /// Deletes an app and its releases.
    pub fn delete_app(&self, name: &AppName) -> Result<()> {
        self.with(|c| {
            let n = c.execute("DELETE FROM apps WHERE name = ?1", [name.as_str()])?;
            found(n, "app", name.to_string())
        })
    }

    /// Sets the app's front-end configuration (without its domains: see
    /// [`Store::set_site`]) and its per-app scaling cap (`None`: all of the plan's workers) at
    /// once.
    pub fn update_app_config(
        &self,
        name: &AppName,
        site: &SiteConfig,
        max_workers: Option<u32>,
    ) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE apps SET site = ?2, max_workers = ?3 WHERE name = ?1",
                params![name.as_str(), site_json(site)?, max_workers],
            )?;
            found(n, "app", name.to_string())
        })
    }

    /// Replaces the app's process formation.
    pub fn set_formation(
        &self,
        name: &AppName,
        formation: &BTreeMap<ProcessType, u32>,
    ) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE apps SET formation = ?2 WHERE name = ?1",
                params![
                    name.as_str(),
                    serde_json::to_string(formation).map_err(corrupt)?
                ],
            )?;
            found(n, "app", name.to_string())
        })
    }

    // ---- daily CPU quotas

    /// Adds CPU time to each app's count for `day`, in one transaction, and drops counts of
    /// days before it.
    pub fn add_cpu_used(&self, day: u64, used_ms: &[(AppName, u64)]) -> Result<()> {
        self.tx(|tx| {
            tx.execute("DELETE FROM cpu_used WHERE day < ?1", [day])?;
            for (app, ms) in used_ms {
                tx.execute(
                    "INSERT INTO cpu_used (app, day, cpu_ms) SELECT ?1, ?2, ?3
                     WHERE EXISTS (SELECT 1 FROM apps WHERE name = ?1)
                     ON CONFLICT (app, day) DO UPDATE SET cpu_ms = cpu_ms + excluded.cpu_ms",
                    params![app.as_str(), day, ms],
                )?;
            }
            Ok(())
        })
    }

    /// Each app's CPU count for `day`.
    pub fn cpu_used(&self, day: u64) -> Result<BTreeMap<AppName, u64>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT app, cpu_ms FROM cpu_used WHERE day = ?1")?;
            let rows =
                stmt.query_map([day], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
            rows.map(|row| {
                let (app, ms) = row?;
                Ok((AppName::parse(&app).map_err(corrupt)?, ms))
            })
            .collect()
        })
    }

    // ---- warm worker pools

    /// The warm-worker targets set per size (sizes never set are absent).
    pub fn pools(&self) -> Result<BTreeMap<String, u32>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT size, warm FROM pools ORDER BY size")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<BTreeMap<String, u32>>>()?)
        })
    }

    pub fn set_pool(&self, size: &str, warm: u32) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO pools (size, warm) VALUES (?1, ?2)
                 ON CONFLICT (size) DO UPDATE SET warm = excluded.warm",
                params![size, warm],
            )?;
            Ok(())
        })
    }

    /// Replaces the app's front-end configuration (its `domains` are kept in their own table:
    /// use [`Store::add_domain`]).
    pub fn set_site(&self, name: &AppName, site: &SiteConfig) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE apps SET site = ?2 WHERE name = ?1",
                params![name.as_str(), site_json(site)?],
            )?;
            found(n, "app", name.to_string())
        })
    }

    /// Binds a custom domain to an app's slot; a domain bound anywhere is a conflict.
    pub fn add_domain(&self, app: &AppName, slot: &SlotName, domain: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO domains (domain, app, slot) VALUES (?1, ?2, ?3)",
                params![domain, app.as_str(), slot.as_str()],
            )
            .map_err(conflict("domain", domain.to_string()))?;
            Ok(())
        })
    }

    pub fn remove_domain(&self, app: &AppName, slot: &SlotName, domain: &str) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "DELETE FROM domains WHERE domain = ?1 AND app = ?2 AND slot = ?3",
                params![domain, app.as_str(), slot.as_str()],
            )?;
            found(n, "domain", format!("{domain} on slot {slot} of app {app}"))
        })
    }

    /// Stores a certificate; the same certificate twice for one app is a conflict.
    pub fn add_certificate(&self, cert: &Certificate) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO certificates (app, thumbprint, hostnames, not_after, cert_pem, key_pem, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    cert.app.as_str(),
                    cert.thumbprint,
                    serde_json::to_string(&cert.hostnames).map_err(corrupt)?,
                    cert.not_after.0,
                    cert.cert_pem,
                    cert.key_pem,
                    cert.created_at.0
                ],
            )
            .map_err(conflict("certificate", cert.thumbprint.clone()))?;
            Ok(())
        })
    }

    /// Every app's certificates, by app then upload time.
    pub fn certificates(&self) -> Result<Vec<Certificate>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT app, thumbprint, hostnames, not_after, cert_pem, key_pem, created_at
                 FROM certificates ORDER BY app, created_at",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, u64>(6)?,
                ))
            })?;
            rows.map(|row| {
                let (app, thumbprint, hostnames, not_after, cert_pem, key_pem, created_at) = row?;
                Ok(Certificate {
                    app: AppName::parse(&app).map_err(corrupt)?,
                    thumbprint,
                    hostnames: serde_json::from_str(&hostnames).map_err(corrupt)?,
                    not_after: Millis(not_after),
                    cert_pem,
                    key_pem,
                    created_at: Millis(created_at),
                })
            })
            .collect()
        })
    }

    pub fn remove_certificate(&self, app: &AppName, thumbprint: &str) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "DELETE FROM certificates WHERE app = ?1 AND thumbprint = ?2",
                params![app.as_str(), thumbprint],
            )?;
            found(n, "certificate", format!("{thumbprint} on app {app}"))
        })
    }

    /// Bumps the app's restart generation; returns the new one.
    pub fn bump_generation(&self, name: &AppName) -> Result<u64> {
        self.with(|c| {
            c.query_row(
                "UPDATE apps SET generation = generation + 1 WHERE name = ?1 RETURNING generation",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "app",
                name: name.to_string(),
            })
        })
    }

    // ---- releases

    /// Creates the next release of the app's slot and makes its settings the slot's settings,
    /// in one transaction.
    pub fn create_release(
        &self,
        app: &AppName,
        slot: &SlotName,
        new: NewRelease,
    ) -> Result<Release> {
        self.tx(|tx| insert_release(tx, app, slot, new))
    }

    /// Releases of a slot, newest first.
    pub fn releases(&self, app: &AppName, slot: &SlotName) -> Result<Vec<Release>> {
        self.query_releases(
            "WHERE app = ?1 AND slot = ?2 ORDER BY version DESC",
            params![app.as_str(), slot.as_str()],
        )
    }

    /// The newest release of every app's slot.
    pub fn current_releases(&self) -> Result<Vec<Release>> {
        self.query_releases(
            "WHERE (app, slot, version) IN (SELECT app, slot, max(version) FROM releases GROUP BY app, slot) ORDER BY app, slot",
            [],
        )
    }

    pub fn current_release(&self, app: &AppName, slot: &SlotName) -> Result<Option<Release>> {
        self.with(|c| slots::current_release_in(c, app, slot))
    }

    fn query_releases(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<Release>> {
        self.with(|c| releases_where(c, filter, args))
    }

    /// Whether any release of any app uses this artifact.
    pub fn artifact_in_use(&self, digest: &Digest) -> Result<bool> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM releases WHERE artifact = ?1)",
                [digest.as_str()],
                |r| r.get(0),
            )?)
        })
    }

    // ---- autoscale

    /// Sets (or replaces) a plan's autoscale setting; a replaced setting keeps its last action,
    /// so a cooldown in progress still holds.
    pub fn set_autoscale(
        &self,
        plan: &PlanName,
        json: &str,
        enabled: bool,
        now: Millis,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO autoscale (plan, setting, enabled, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (plan) DO UPDATE SET setting = ?2, enabled = ?3, updated_at = ?4",
                params![plan.as_str(), json, enabled, now.0],
            )?;
            Ok(())
        })
    }

    pub fn autoscale_settings(&self) -> Result<Vec<AutoscaleRecord>> {
        self.query_autoscale(None)
    }

    pub fn autoscale(&self, plan: &PlanName) -> Result<AutoscaleRecord> {
        self.query_autoscale(Some(plan.as_str()))?
            .pop()
            .ok_or_else(|| StoreError::NotFound {
                kind: "autoscale setting for plan",
                name: plan.to_string(),
            })
    }

    /// Every plan's autoscale setting, or only plan `only`'s.
    fn query_autoscale(&self, only: Option<&str>) -> Result<Vec<AutoscaleRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT plan, setting, enabled, last_action_at, last_cooldown, updated_at
                 FROM autoscale WHERE ?1 IS NULL OR plan = ?1 ORDER BY plan",
            )?;
            let rows = stmt.query_map([only], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<u64>>(3)?,
                    r.get::<_, Option<u64>>(4)?,
                    r.get::<_, u64>(5)?,
                ))
            })?;
            rows.map(|row| {
                let (plan, setting_json, enabled, at, cooldown, updated_at) = row?;
                Ok(AutoscaleRecord {
                    plan: PlanName::parse(&plan).map_err(corrupt)?,
                    setting_json,
                    enabled,
                    last_action_at: at.map(Millis),
                    last_cooldown: cooldown.map(Millis),
                    updated_at: Millis(updated_at),
                })
            })
            .collect()
        })
    }

    pub fn set_autoscale_enabled(&self, plan: &PlanName, enabled: bool, now: Millis) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE autoscale SET enabled = ?2, updated_at = ?3 WHERE plan = ?1",
                params![plan.as_str(), enabled, now.0],
            )?;
            found(n, "autoscale setting for plan", plan.to_string())
        })
    }

    pub fn delete_autoscale(&self, plan: &PlanName) -> Result<()> {
        self.with(|c| {
            let n = c.execute("DELETE FROM autoscale WHERE plan = ?1", [plan.as_str()])?;
            found(n, "autoscale setting for plan", plan.to_string())
        })
    }

    /// Records an autoscale run and, when it scaled, the plan's new worker count and the
    /// cooldown it started: one transaction, so a crash never leaves a scale without its
    /// cooldown. Keeps the newest `keep` runs of the plan.
    pub fn record_autoscale_run(
        &self,
        run: &AutoscaleRun,
        scaled_to: Option<(u32, Option<Millis>)>,
        keep: usize,
    ) -> Result<()> {
        self.tx(|tx| {
            let plan = run.plan.as_str();
            if let Some((workers, cooldown)) = scaled_to {
                tx.execute(
                    "UPDATE plans SET workers = ?2 WHERE name = ?1",
                    params![plan, workers],
                )?;
                if let Some(cooldown) = cooldown {
                    tx.execute(
                        "UPDATE autoscale SET last_action_at = ?2, last_cooldown = ?3 WHERE plan = ?1",
                        params![plan, run.at.0, cooldown.0],
                    )?;
                }
            }
            tx.execute(
                "INSERT INTO autoscale_runs (plan, at, scaled, summary, evaluation) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![plan, run.at.0, run.scaled, run.summary, run.evaluation_json],
            )?;
            tx.execute(
                "DELETE FROM autoscale_runs WHERE plan = ?1 AND id <= (
                     SELECT id FROM autoscale_runs WHERE plan = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![plan, keep as i64],
            )?;
            Ok(())
        })
    }

    /// The newest `limit` runs of a plan, newest first; with `scaled_only`, only those that
    /// changed the worker count.
    pub fn autoscale_runs(
        &self,
        plan: &PlanName,
        limit: usize,
        scaled_only: bool,
    ) -> Result<Vec<AutoscaleRun>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT at, scaled, summary, evaluation FROM autoscale_runs
                 WHERE plan = ?1 AND (?3 = 0 OR scaled = 1) ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![plan.as_str(), limit as i64, scaled_only], |r| {
                Ok(AutoscaleRun {
                    plan: plan.clone(),
                    at: Millis(r.get(0)?),
                    scaled: r.get(1)?,
                    summary: r.get(2)?,
                    evaluation_json: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    // ---- tokens

    /// Makes `sha256` the only token of `role` (a regenerated admin token revokes the old one).
    pub fn replace_tokens(&self, role: &str, sha256: &str, created_at: Millis) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "DELETE FROM tokens WHERE role = ?1 AND sha256 != ?2",
                params![role, sha256],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO tokens (sha256, role, created_at) VALUES (?1, ?2, ?3)",
                params![sha256, role, created_at.0],
            )?;
            Ok(())
        })
    }

    /// Records an API token by the hex sha256 of its secret.
    pub fn add_token(&self, sha256: &str, role: &str, created_at: Millis) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO tokens (sha256, role, created_at) VALUES (?1, ?2, ?3)",
                params![sha256, role, created_at.0],
            )?;
            Ok(())
        })
    }

    /// The role of the token with this hash, if it is known.
    pub fn token_role(&self, sha256: &str) -> Result<Option<String>> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT role FROM tokens WHERE sha256 = ?1", [sha256], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str) -> Plan {
        Plan {
            per_app_scaling: false,
            placement: Placement::default(),
            placed_on: 0,
            name: PlanName::parse(name).unwrap(),
            sku: "B1".into(),
            workers: 1,
            created_at: Millis(5),
        }
    }

    fn app(name: &str, plan: &str) -> App {
        App {
            name: AppName::parse(name).unwrap(),
            plan: PlanName::parse(plan).unwrap(),
            settings: Settings::default(),
            generation: 0,
            site: SiteConfig::default(),
            max_workers: None,
            formation: BTreeMap::new(),
            lane: 0,
            slot_settings: Default::default(),
            slots: Vec::new(),
            created_at: Millis(6),
        }
    }

    fn new_release(greeting: &str, deployed: bool) -> NewRelease {
        NewRelease {
            artifact: deployed.then(|| Digest::parse(&"b".repeat(64)).unwrap()),
            procfile: deployed.then(|| Procfile::parse("web: run").unwrap()),
            settings: Settings([("GREETING".into(), greeting.into())].into()),
            description: format!("set {greeting}"),
            actor: "admin".into(),
            created_at: Millis(7),
        }
    }

    #[test]
    fn everything_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stamp.db");
        let prod = SlotName::production();
        let hello = AppName::parse("hello").unwrap();
        {
            let s = Store::open(&path).unwrap();
            s.create_plan(&plan("p")).unwrap();
            s.set_plan_workers(&PlanName::parse("p").unwrap(), 3)
                .unwrap();
            s.create_app(&app("hello", "p")).unwrap();
            assert_eq!(
                s.create_release(&hello, &prod, new_release("a", true))
                    .unwrap()
                    .version,
                1
            );
            assert_eq!(
                s.create_release(&hello, &prod, new_release("b", true))
                    .unwrap()
                    .version,
                2
            );
            assert_eq!(s.bump_generation(&hello).unwrap(), 1);
            s.add_token("abc", "owner", Millis(1)).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.plan(&PlanName::parse("p").unwrap()).unwrap().workers, 3);
        let a = s.app(&hello).unwrap();
        assert_eq!(a.generation, 1);
        assert_eq!(a.settings.0["GREETING"], "b");
        let current = s.current_release(&hello, &prod).unwrap().unwrap();
        assert_eq!(
            (current.version, current.description.as_str()),
            (2, "set b")
        );
        assert_eq!(
            current
                .procfile
                .unwrap()
                .command(&stamp_model::ProcessType::web()),
            Some("run")
        );
        assert_eq!(s.current_releases().unwrap().len(), 1);
        assert_eq!(s.releases(&hello, &prod).unwrap().len(), 2);
        assert_eq!(s.token_role("abc").unwrap().as_deref(), Some("owner"));
        assert_eq!(s.token_role("nope").unwrap(), None);
        s.replace_tokens("owner", "def", Millis(2)).unwrap();
        assert_eq!(s.token_role("abc").unwrap(), None, "revoked");
        assert_eq!(s.token_role("def").unwrap().as_deref(), Some("owner"));
        let digest = Digest::parse(&"b".repeat(64)).unwrap();
        assert!(s.artifact_in_use(&digest).unwrap());
        assert!(
            !s.artifact_in_use(&Digest::parse(&"c".repeat(64)).unwrap())
                .unwrap()
        );
    }

    #[test]
    fn conflicts_and_missing() {
        let s = Store::in_memory().unwrap();
        s.create_plan(&plan("p")).unwrap();
        assert!(matches!(
            s.create_plan(&plan("p")),
            Err(StoreError::Conflict { .. })
        ));
        s.create_app(&app("a", "p")).unwrap();
        assert!(matches!(
            s.create_app(&app("a", "p")),
            Err(StoreError::Conflict { .. })
        ));
        // An app must name an existing plan.
        assert!(s.create_app(&app("b", "nope")).is_err());
        assert!(matches!(
            s.delete_plan(&PlanName::parse("p").unwrap()),
            Err(StoreError::Conflict { .. })
        ));
        let a = AppName::parse("a").unwrap();
        s.create_release(&a, &SlotName::production(), new_release("x", false))
            .unwrap();
        s.delete_app(&a).unwrap();
        assert!(matches!(s.app(&a), Err(StoreError::NotFound { .. })));
        assert!(s.current_releases().unwrap().is_empty());
        s.delete_plan(&PlanName::parse("p").unwrap()).unwrap();
        assert!(matches!(
            s.set_site(&a, &SiteConfig::default()),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.set_plan_workers(&PlanName::parse("p").unwrap(), 2),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn site_domains_and_certificates() {
        let s = Store::in_memory().unwrap();
        s.create_plan(&plan("p")).unwrap();
        s.create_app(&app("a", "p")).unwrap();
        s.create_app(&app("b", "p")).unwrap();
        let a = AppName::parse("a").unwrap();
        let b = AppName::parse("b").unwrap();
        let mut site = SiteConfig {
            https_only: true,
            ..SiteConfig::default()
        };
        site.domains.push("ignored.example.com".into());
        s.set_site(&a, &site).unwrap();
        s.add_domain(&a, &SlotName::production(), "www.example.com")
            .unwrap();
        assert!(matches!(
            s.add_domain(&b, &SlotName::production(), "www.example.com"),
            Err(StoreError::Conflict { .. })
        ));
        let got = s.app(&a).unwrap();
        assert!(got.site.https_only);
        assert_eq!(got.site.domains, ["www.example.com"]);
        assert!(
            s.app(&b).unwrap().site.domains.is_empty(),
            "only the app's own domains"
        );
        assert_eq!(s.apps().unwrap()[0].site.domains, ["www.example.com"]);
        s.remove_domain(&a, &SlotName::production(), "www.example.com")
            .unwrap();
        assert!(s.app(&a).unwrap().site.domains.is_empty());
        assert!(matches!(
            s.remove_domain(&a, &SlotName::production(), "www.example.com"),
            Err(StoreError::NotFound { .. })
        ));

        let cert = Certificate {
            app: a.clone(),
            thumbprint: "ff".into(),
            hostnames: vec!["www.example.com".into()],
            not_after: Millis(9),
            cert_pem: "C".into(),
            key_pem: "K".into(),
            created_at: Millis(1),
        };
        s.add_certificate(&cert).unwrap();
        assert!(matches!(
            s.add_certificate(&cert),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(s.certificates().unwrap(), vec![cert]);
        s.add_domain(&a, &SlotName::production(), "x.example.com")
            .unwrap();
        s.delete_app(&a).unwrap();
        assert!(s.certificates().unwrap().is_empty(), "deleted with the app");
        s.add_domain(&b, &SlotName::production(), "x.example.com")
            .unwrap();
    }

    #[test]
    fn autoscale_settings_and_history() {
        let s = Store::in_memory().unwrap();
        s.create_plan(&plan("p")).unwrap();
        let p = PlanName::parse("p").unwrap();
        let missing = s.autoscale(&p);
        assert!(
            matches!(missing, Err(StoreError::NotFound { .. })),
            "{missing:?}"
        );
        s.set_autoscale(&p, "{}", true, Millis(1)).unwrap();
        let run = |at: u64, scaled: bool| AutoscaleRun {
            plan: p.clone(),
            at: Millis(at),
            scaled,
            summary: format!("run {at}"),
            evaluation_json: "{}".into(),
        };
        s.record_autoscale_run(&run(10, true), Some((3, Some(Millis(300_000)))), 3)
            .unwrap();
        for at in 11..15 {
            s.record_autoscale_run(&run(at, false), None, 3).unwrap();
        }
        assert_eq!(s.plan(&p).unwrap().workers, 3);
        let a = s.autoscale(&p).unwrap();
        assert_eq!(
            (a.last_action_at, a.last_cooldown),
            (Some(Millis(10)), Some(Millis(300_000)))
        );
        let runs: Vec<u64> = s
            .autoscale_runs(&p, 10, false)
            .unwrap()
            .iter()
            .map(|r| r.at.0)
            .collect();
        assert_eq!(runs, [14, 13, 12], "newest first, bounded to 3");
        // A replaced setting keeps the cooldown; disabling and deleting work.
        s.set_autoscale(&p, "{\"x\":1}", true, Millis(20)).unwrap();
        assert_eq!(s.autoscale(&p).unwrap().last_action_at, Some(Millis(10)));
        s.set_autoscale_enabled(&p, false, Millis(21)).unwrap();
        assert!(!s.autoscale(&p).unwrap().enabled);
        s.delete_autoscale(&p).unwrap();
        assert!(s.autoscale_settings().unwrap().is_empty());
    }

    #[test]
    fn slots_and_a_swap_flip_exchange_lanes_and_keep_sticky_settings() {
        use stamp_model::{LaneConfig, Slot, Swap, SwapPhase};
        let s = Store::in_memory().unwrap();
        s.create_plan(&plan("p")).unwrap();
        s.create_app(&app("a", "p")).unwrap();
        let a = AppName::parse("a").unwrap();
        let prod = SlotName::production();
        let staging = SlotName::parse("staging").unwrap();
        let settings = |pairs: &[(&str, &str)]| {
            Settings(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let slot = Slot {
            name: staging.clone(),
            lane: 1,
            settings: settings(&[("DB", "staging-db")]),
            generation: 0,
            site: SiteConfig::default(),
            auto_swap_to: None,
            routing: None,
            created_at: Millis(1),
        };
        s.create_slot(&a, &slot, "admin").unwrap();
        assert!(matches!(
            s.create_slot(&a, &slot, "admin"),
            Err(StoreError::Conflict { .. })
        ));
        // Cloned settings make a settings-only first release.
        assert_eq!(s.releases(&a, &staging).unwrap().len(), 1);
        // A custom domain of a slot is that slot's.
        s.add_domain(&a, &staging, "staging.example.com").unwrap();
        let loaded = s.app(&a).unwrap();
        assert!(loaded.site.domains.is_empty());
        assert_eq!(loaded.slots[0].site.domains, ["staging.example.com"]);
        s.set_slot_settings(&a, &["DB".to_string()].into()).unwrap();

        let mut old = new_release("old", true);
        old.settings = settings(&[("GREETING", "old"), ("DB", "prod-db")]);
        s.create_release(&a, &prod, old).unwrap();
        let mut new = new_release("new", true);
        new.settings = settings(&[("GREETING", "new"), ("DB", "staging-db")]);
        new.artifact = Some(Digest::parse(&"c".repeat(64)).unwrap());
        s.create_release(&a, &staging, new).unwrap();
        let loaded = s.app(&a).unwrap();
        assert_eq!(loaded.slots.len(), 1);
        assert_eq!(loaded.slot(&staging).unwrap().settings.0["GREETING"], "new");

        let swap = Swap {
            app: a.clone(),
            source: staging.clone(),
            target: prod.clone(),
            preview: false,
            phase: SwapPhase::Applying,
            source_config: LaneConfig {
                slot: prod.clone(),
                release: 2,
                generation: 0,
                artifact: Digest::parse(&"c".repeat(64)).unwrap(),
                procfile: Procfile::parse("web: run").unwrap(),
                settings: settings(&[("GREETING", "new"), ("DB", "prod-db")]),
                health_check: None,
            },
            started_at: Millis(9),
            actor: "owner".into(),
        };
        // A swap prepared for another release number than the target's next one does not flip,
        // and ending a swap that is not the stored one changes nothing.
        let mut stale = swap.clone();
        stale.source_config.release = 7;
        s.start_swap(&stale).unwrap();
        assert!(matches!(
            s.complete_swap(&stale, "stamp", Millis(10)),
            Err(StoreError::Conflict { .. })
        ));
        assert!(!s.end_swap(&swap).unwrap());
        assert_eq!(s.app(&a).unwrap().lane, 0);
        assert!(s.end_swap(&stale).unwrap());

        // A record written before `actor` existed is still the swap it reads as.
        let mut old_json = serde_json::to_value(&swap).unwrap();
        old_json.as_object_mut().unwrap().remove("actor");
        s.with(|c| {
            c.execute(
                "INSERT INTO swaps (app, swap) VALUES ('a', ?1)",
                [old_json.to_string()],
            )?;
            Ok(())
        })
        .unwrap();
        let read = s.swap(&a).unwrap().unwrap();
        assert_eq!(read.actor, "");
        assert!(s.end_swap(&read).unwrap());

        s.start_swap(&swap).unwrap();
        assert!(matches!(
            s.start_swap(&swap),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(s.swaps().unwrap(), vec![swap.clone()]);

        let made = s.complete_swap(&swap, "stamp", Millis(10)).unwrap();
        assert_eq!(made.target.version, 2, "numbered as the swap said");
        assert_eq!(made.target.settings.0["GREETING"], "new");
        assert_eq!(made.target.settings.0["DB"], "prod-db");
        assert_eq!(made.source.settings.0["GREETING"], "old");
        assert_eq!(made.source.settings.0["DB"], "staging-db");
        assert_eq!(
            made.source.artifact,
            Some(Digest::parse(&"b".repeat(64)).unwrap())
        );
        let after = s.app(&a).unwrap();
        assert_eq!((after.lane, after.slot(&staging).unwrap().lane), (1, 0));
        assert_eq!(after.settings.0["GREETING"], "new");
        assert!(s.swap(&a).unwrap().is_none());
        assert_eq!(
            s.current_release(&a, &prod).unwrap().unwrap().actor,
            "stamp"
        );

        // A deploy with auto swap: the release and its swap commit together, or neither.
        let mut auto = swap.clone();
        auto.started_at = Millis(11);
        s.create_release_and_swap(&a, &staging, new_release("auto", true), &auto)
            .unwrap();
        assert_eq!(s.swap(&a).unwrap(), Some(auto.clone()));
        let count = s.releases(&a, &staging).unwrap().len();
        assert!(matches!(
            s.create_release_and_swap(&a, &staging, new_release("again", true), &auto),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(
            s.releases(&a, &staging).unwrap().len(),
            count,
            "rolled back"
        );
        assert!(s.end_swap(&auto).unwrap());

        s.delete_slot(&a, &staging).unwrap();
        assert!(s.releases(&a, &staging).unwrap().is_empty());
        // Its domain went with it.
        s.add_domain(&a, &prod, "staging.example.com").unwrap();
        assert!(s.app(&a).unwrap().slots.is_empty());
    }
}
