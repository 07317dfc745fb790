//! Deployment slots, swaps and the release bookkeeping they share with deploys. Production's
//! settings, generation and site live on the `apps` row; other slots have a `slots` row each.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use stamp_model::slots::swapped_settings;
use stamp_model::{AppName, Millis, Release, Settings, SiteConfig, Slot, SlotName, Swap};

use crate::{
    NewRelease, Result, Store, StoreError, conflict, corrupt, found, releases_where, site_json,
};

/// Rows of `slots` (of every app, or of `only`), as `(app, slot)`.
pub(crate) fn query_slots(c: &Connection, only: Option<&str>) -> Result<Vec<(String, Slot)>> {
    let mut stmt = c.prepare(
        "SELECT app, name, lane, settings, generation, site, auto_swap_to, routing, created_at
         FROM slots WHERE ?1 IS NULL OR app = ?1 ORDER BY app, name",
    )?;
    let rows = stmt.query_map([only], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u32>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, u64>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Option<String>>(6)?,
            r.get::<_, Option<u8>>(7)?,
            r.get::<_, u64>(8)?,
        ))
    })?;
    rows.map(|row| {
        let (app, name, lane, settings, generation, site, auto_swap_to, routing, created_at) = row?;
        Ok((
            app,
            Slot {
                name: SlotName::parse(&name).map_err(corrupt)?,
                lane,
                settings: serde_json::from_str(&settings).map_err(corrupt)?,
                generation,
                site: serde_json::from_str(&site).map_err(corrupt)?,
                auto_swap_to: auto_swap_to
                    .map(|s| SlotName::parse(&s))
                    .transpose()
                    .map_err(corrupt)?,
                routing,
                created_at: Millis(created_at),
            },
        ))
    })
    .collect()
}

/// Makes `settings` the slot's settings (production's are the app's).
fn put_settings(
    tx: &Transaction<'_>,
    app: &AppName,
    slot: &SlotName,
    settings: &Settings,
) -> Result<()> {
    let json = serde_json::to_string(settings).map_err(corrupt)?;
    let n = if slot.is_production() {
        tx.execute(
            "UPDATE apps SET settings = ?2 WHERE name = ?1",
            params![app.as_str(), json],
        )?
    } else {
        tx.execute(
            "UPDATE slots SET settings = ?3 WHERE app = ?1 AND name = ?2",
            params![app.as_str(), slot.as_str(), json],
        )?
    };
    found(n, "slot", format!("{slot} of app {app}"))
}

fn put_lane(tx: &Transaction<'_>, app: &AppName, slot: &SlotName, lane: u32) -> Result<()> {
    let n = if slot.is_production() {
        tx.execute(
            "UPDATE apps SET lane = ?2 WHERE name = ?1",
            params![app.as_str(), lane],
        )?
    } else {
        tx.execute(
            "UPDATE slots SET lane = ?3 WHERE app = ?1 AND name = ?2",
            params![app.as_str(), slot.as_str(), lane],
        )?
    };
    found(n, "slot", format!("{slot} of app {app}"))
}

/// The slot's settings and lane.
fn settings_and_lane(
    tx: &Transaction<'_>,
    app: &AppName,
    slot: &SlotName,
) -> Result<(Settings, u32)> {
    let row: Option<(String, u32)> = if slot.is_production() {
        tx.query_row(
            "SELECT settings, lane FROM apps WHERE name = ?1",
            [app.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
    } else {
        tx.query_row(
            "SELECT settings, lane FROM slots WHERE app = ?1 AND name = ?2",
            params![app.as_str(), slot.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
    };
    let (settings, lane) = row.ok_or_else(|| StoreError::NotFound {
        kind: "slot",
        name: format!("{slot} of app {app}"),
    })?;
    Ok((serde_json::from_str(&settings).map_err(corrupt)?, lane))
}

/// Inserts the slot's next release and makes its settings the slot's settings.
pub(crate) fn insert_release(
    tx: &Transaction<'_>,
    app: &AppName,
    slot: &SlotName,
    new: NewRelease,
) -> Result<Release> {
    put_settings(tx, app, slot, &new.settings)?;
    let version: u32 = tx.query_row(
        "SELECT coalesce(max(version), 0) + 1 FROM releases WHERE app = ?1 AND slot = ?2",
        params![app.as_str(), slot.as_str()],
        |r| r.get(0),
    )?;
    let procfile = new
        .procfile
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(corrupt)?;
    tx.execute(
        "INSERT INTO releases (app, slot, version, artifact, procfile, settings, description, created_at, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            app.as_str(),
            slot.as_str(),
            version,
            new.artifact.as_ref().map(|d| d.as_str()),
            procfile,
            serde_json::to_string(&new.settings).map_err(corrupt)?,
            new.description,
            new.created_at.0,
            new.actor,
        ],
    )?;
    Ok(Release {
        app: app.clone(),
        slot: slot.clone(),
        version,
        artifact: new.artifact,
        procfile: new.procfile,
        settings: new.settings,
        description: new.description,
        actor: new.actor,
        created_at: new.created_at,
    })
}

/// The two releases a completed swap made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapReleases {
    /// The target's new release: the source's code with the target's slot settings.
    pub target: Release,
    /// The source's new release: the target's former code with the source's slot settings.
    pub source: Release,
}

impl Store {
    /// Creates a non-production slot (the caller picks its lane with `App::free_lane`), with
    /// its first release when `settings` is not empty (a settings-only release, as in Azure a
    /// cloned slot has settings but no content).
    pub fn create_slot(&self, app: &AppName, slot: &Slot, actor: &str) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO slots (app, name, lane, settings, generation, site, auto_swap_to, routing, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    app.as_str(),
                    slot.name.as_str(),
                    slot.lane,
                    serde_json::to_string(&slot.settings).map_err(corrupt)?,
                    slot.generation,
                    site_json(&slot.site)?,
                    slot.auto_swap_to.as_ref().map(|s| s.as_str()),
                    slot.routing,
                    slot.created_at.0,
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
                {
                    StoreError::NotFound {
                        kind: "app",
                        name: app.to_string(),
                    }
                }
                e => conflict("slot", format!("{} of app {app}", slot.name))(e),
            })?;
            if !slot.settings.0.is_empty() {
                insert_release(
                    tx,
                    app,
                    &slot.name,
                    NewRelease {
                        artifact: None,
                        procfile: None,
                        settings: slot.settings.clone(),
                        description: "Clone settings".to_string(),
                        actor: actor.to_string(),
                        created_at: slot.created_at,
                    },
                )?;
            }
            Ok(())
        })
    }

    /// Deletes a non-production slot and its releases.
    pub fn delete_slot(&self, app: &AppName, slot: &SlotName) -> Result<()> {
        self.tx(|tx| {
            let n = tx.execute(
                "DELETE FROM slots WHERE app = ?1 AND name = ?2",
                params![app.as_str(), slot.as_str()],
            )?;
            found(n, "slot", format!("{slot} of app {app}"))?;
            for table in ["releases", "domains"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE app = ?1 AND slot = ?2"),
                    params![app.as_str(), slot.as_str()],
                )?;
            }
            tx.execute(
                "UPDATE slots SET auto_swap_to = NULL WHERE app = ?1 AND auto_swap_to = ?2",
                params![app.as_str(), slot.as_str()],
            )?;
            Ok(())
        })
    }

    /// Replaces a slot's front-end configuration (production's is the app's).
    pub fn set_slot_site(&self, app: &AppName, slot: &SlotName, site: &SiteConfig) -> Result<()> {
        if slot.is_production() {
            return self.set_site(app, site);
        }
        self.with(|c| {
            let n = c.execute(
                "UPDATE slots SET site = ?3 WHERE app = ?1 AND name = ?2",
                params![app.as_str(), slot.as_str(), site_json(site)?],
            )?;
            found(n, "slot", format!("{slot} of app {app}"))
        })
    }

    /// Sets (or with `None` clears) a slot's auto swap target.
    pub fn set_auto_swap(
        &self,
        app: &AppName,
        slot: &SlotName,
        target: Option<&SlotName>,
    ) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE slots SET auto_swap_to = ?3 WHERE app = ?1 AND name = ?2",
                params![app.as_str(), slot.as_str(), target.map(|t| t.as_str())],
            )?;
            found(n, "slot", format!("{slot} of app {app}"))
        })
    }

    /// Sets the routing percentage of each listed slot (`None`: no rule), in one transaction.
    pub fn set_routing(&self, app: &AppName, rules: &[(SlotName, Option<u8>)]) -> Result<()> {
        self.tx(|tx| {
            for (slot, percent) in rules {
                let n = tx.execute(
                    "UPDATE slots SET routing = ?3 WHERE app = ?1 AND name = ?2",
                    params![app.as_str(), slot.as_str(), percent],
                )?;
                found(n, "slot", format!("{slot} of app {app}"))?;
            }
            Ok(())
        })
    }

    /// Bumps a slot's restart generation (production's is the app's); returns the new one.
    pub fn bump_slot_generation(&self, app: &AppName, slot: &SlotName) -> Result<u64> {
        if slot.is_production() {
            return self.bump_generation(app);
        }
        self.with(|c| {
            c.query_row(
                "UPDATE slots SET generation = generation + 1 WHERE app = ?1 AND name = ?2
                 RETURNING generation",
                params![app.as_str(), slot.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "slot",
                name: format!("{slot} of app {app}"),
            })
        })
    }

    /// Replaces the app's sticky setting names (Azure's `slotConfigNames`).
    pub fn set_slot_settings(&self, app: &AppName, names: &BTreeSet<String>) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE apps SET slot_settings = ?2 WHERE name = ?1",
                params![app.as_str(), serde_json::to_string(names).map_err(corrupt)?],
            )?;
            found(n, "app", app.to_string())
        })
    }

    /// Creates the slot's next release (as [`Store::create_release`]) and records `swap` of it,
    /// in one transaction (a deploy with auto swap).
    pub fn create_release_and_swap(
        &self,
        app: &AppName,
        slot: &SlotName,
        new: NewRelease,
        swap: &Swap,
    ) -> Result<Release> {
        self.tx(|tx| {
            let release = insert_release(tx, app, slot, new)?;
            insert_swap(tx, swap)?;
            Ok(release)
        })
    }

    /// Records a new swap; a swap of the same app already in progress is a conflict.
    pub fn start_swap(&self, swap: &Swap) -> Result<()> {
        self.with(|c| insert_swap(c, swap))
    }

    /// Replaces the app's swap in progress (a phase change), only if it is still `current`:
    /// `false` when another record (or none) is stored.
    pub fn update_swap(&self, current: &Swap, next: &Swap) -> Result<bool> {
        self.tx(|tx| {
            if !stored_swap_is(tx, current)? {
                return Ok(false);
            }
            tx.execute(
                "UPDATE swaps SET swap = ?2 WHERE app = ?1",
                params![
                    current.app.as_str(),
                    serde_json::to_string(next).map_err(corrupt)?
                ],
            )?;
            Ok(true)
        })
    }

    /// Every swap in progress.
    pub fn swaps(&self) -> Result<Vec<Swap>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT swap FROM swaps ORDER BY app")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|r| serde_json::from_str(&r?).map_err(corrupt))
                .collect()
        })
    }

    /// The app's swap in progress, if any.
    pub fn swap(&self, app: &AppName) -> Result<Option<Swap>> {
        self.with(|c| {
            let json: Option<String> = c
                .query_row(
                    "SELECT swap FROM swaps WHERE app = ?1",
                    [app.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            json.map(|j| serde_json::from_str(&j).map_err(corrupt))
                .transpose()
        })
    }

    /// Forgets a swap (cancelled or reverted): the source's lane runs its own release again.
    /// `false` when that swap is no longer the one stored (the app was deleted, say).
    pub fn end_swap(&self, swap: &Swap) -> Result<bool> {
        self.tx(|tx| {
            if !stored_swap_is(tx, swap)? {
                return Ok(false);
            }
            tx.execute("DELETE FROM swaps WHERE app = ?1", [swap.app.as_str()])?;
            Ok(true)
        })
    }

    /// The routing flip, in one transaction: the target gets a release of what the source's
    /// lane runs (`swap.source_config`), the source a release of the target's former code with
    /// its own slot settings, the two slots exchange lanes, and the swap ends. Nothing restarts
    /// on the target's side: its new lane already runs exactly its new release.
    pub fn complete_swap(&self, swap: &Swap, actor: &str, now: Millis) -> Result<SwapReleases> {
        self.tx(|tx| {
            let sticky: BTreeSet<String> = {
                let json: String = tx.query_row(
                    "SELECT slot_settings FROM apps WHERE name = ?1",
                    [swap.app.as_str()],
                    |r| r.get(0),
                )?;
                serde_json::from_str(&json).map_err(corrupt)?
            };
            let (source_settings, source_lane) = settings_and_lane(tx, &swap.app, &swap.source)?;
            let (_, target_lane) = settings_and_lane(tx, &swap.app, &swap.target)?;
            let before: Option<Release> = current_release_in(tx, &swap.app, &swap.target)?;
            let source_version =
                current_release_in(tx, &swap.app, &swap.source)?.map_or(0, |r| r.version);
            let config = &swap.source_config;
            if !stored_swap_is(tx, swap)? {
                return Err(StoreError::NotFound {
                    kind: "swap",
                    name: format!("{} → {} of app {}", swap.source, swap.target, swap.app),
                });
            }
            let next_target = before.as_ref().map_or(1, |r| r.version + 1);
            if next_target != config.release {
                // Someone made a release of the target since the swap started: flipping now
                // would restart the prepared instances. Callers revert.
                return Err(StoreError::Conflict {
                    kind: "release",
                    name: format!(
                        "v{next_target} of slot {} (the swap prepared v{})",
                        swap.target, config.release
                    ),
                });
            }
            let target = insert_release(
                tx,
                &swap.app,
                &swap.target,
                NewRelease {
                    artifact: Some(config.artifact.clone()),
                    procfile: Some(config.procfile.clone()),
                    settings: config.settings.clone(),
                    description: format!("Swap from {} v{source_version}", swap.source),
                    actor: actor.to_string(),
                    created_at: now,
                },
            )?;
            let (artifact, procfile, settings, from) = match &before {
                Some(r) => (
                    r.artifact.clone(),
                    r.procfile.clone(),
                    swapped_settings(&r.settings, &source_settings, &sticky),
                    format!("v{}", r.version),
                ),
                None => (
                    None,
                    None,
                    swapped_settings(&Settings::default(), &source_settings, &sticky),
                    "(empty)".to_string(),
                ),
            };
            let source = insert_release(
                tx,
                &swap.app,
                &swap.source,
                NewRelease {
                    artifact,
                    procfile,
                    settings,
                    description: format!("Swap from {} {from}", swap.target),
                    actor: actor.to_string(),
                    created_at: now,
                },
            )?;
            put_lane(tx, &swap.app, &swap.target, source_lane)?;
            put_lane(tx, &swap.app, &swap.source, target_lane)?;
            tx.execute("DELETE FROM swaps WHERE app = ?1", [swap.app.as_str()])?;
            Ok(SwapReleases { target, source })
        })
    }
}

fn insert_swap(c: &Connection, swap: &Swap) -> Result<()> {
    c.execute(
        "INSERT INTO swaps (app, swap) VALUES (?1, ?2)",
        params![
            swap.app.as_str(),
            serde_json::to_string(swap).map_err(corrupt)?
        ],
    )
    .map_err(conflict("swap of app", swap.app.to_string()))?;
    Ok(())
}

/// Whether the app's stored swap is `swap`: compared as values, so a record written by an
/// older version (without a field added since, read with its default) still matches.
fn stored_swap_is(tx: &Transaction<'_>, swap: &Swap) -> Result<bool> {
    let stored: Option<String> = tx
        .query_row(
            "SELECT swap FROM swaps WHERE app = ?1",
            [swap.app.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    match stored {
        Some(json) => Ok(serde_json::from_str::<Swap>(&json).map_err(corrupt)? == *swap),
        None => Ok(false),
    }
}

/// The slot's newest release.
pub(crate) fn current_release_in(
    c: &Connection,
    app: &AppName,
    slot: &SlotName,
) -> Result<Option<Release>> {
    Ok(releases_where(
        c,
        "WHERE app = ?1 AND slot = ?2 ORDER BY version DESC LIMIT 1",
        params![app.as_str(), slot.as_str()],
    )?
    .pop())
}
