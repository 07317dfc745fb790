//! The Free and Shared tiers' daily CPU quotas, kept by the controller: every second it books the
//! CPU each quota-bound app's instances used (from the node's usage samples) into the pure
//! [`CpuQuota`], writes the counts to the store every [`FLUSH_EVERY`] seconds (so a restart
//! resumes the day, losing at most that much), and, when an app runs out or a new UTC day
//! begins, logs the event and publishes: a stopped app's instances stop and the front end
//! answers 403 `app-stopped` for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use stamp_model::quota::{CpuQuota, QuotaEvent, day_of};
use stamp_model::{App, AppName, Plan, Sku};

use crate::Controller;
use crate::autoscale::WorkerUsage;

/// Seconds between writes of the CPU counts to the store.
const FLUSH_EVERY: u32 = 10;

#[derive(Default)]
pub(crate) struct QuotaBook {
    /// None until the first tick has read the day's counts back from the store.
    quota: Option<CpuQuota>,
    /// CPU booked since the last write, and the day it belongs to.
    pending: BTreeMap<AppName, u64>,
    pending_day: u64,
    ticks: u32,
    /// The last sample booked per instance: each sample is booked once, for the time it covers.
    booked_at: HashMap<String, u64>,
}

/// Each quota-bound app's daily quota, in ms of CPU.
fn quotas_of(apps: &[App], plans: &[Plan], minute_ms: u64) -> BTreeMap<AppName, u64> {
    apps.iter()
        .filter_map(|a| {
            let plan = plans.iter().find(|p| p.name == a.plan)?;
            let minutes = Sku::find(&plan.sku).ok()?.cpu_minutes_per_day?;
            Some((a.name.clone(), u64::from(minutes) * minute_ms))
        })
        .collect()
}

impl Controller {
    /// Apps stopped for their day's CPU quota now. The first call (the startup sync) reads the
    /// day's counts back from the store, so an app stopped before a restart stays stopped.
    pub(crate) fn quota_stopped(
        &self,
        apps: &[App],
        plans: &[Plan],
    ) -> anyhow::Result<BTreeSet<AppName>> {
        let mut book = self.inner.quota.lock().unwrap_or_else(|p| p.into_inner());
        if book.quota.is_none() {
            let now = self.inner.clock.now();
            let quotas = quotas_of(apps, plans, self.inner.config.cpu_minute_ms);
            let today = self.inner.store.cpu_used(day_of(now))?;
            book.quota = Some(CpuQuota::resume(now, today, &quotas));
            book.pending_day = day_of(now);
        }
        // Against today's quotas: an app moved to a bigger tier (or to one without a quota)
        // runs again at once, and a deleted app's name is nobody's.
        let quotas = quotas_of(apps, plans, self.inner.config.cpu_minute_ms);
        Ok(book
            .quota
            .as_ref()
            .map(|q| {
                q.stopped()
                    .iter()
                    .filter(|app| {
                        quotas
                            .get(*app)
                            .is_some_and(|quota| q.used_ms(app) >= *quota)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One second of quota accounting (called by the metrics loop).
    pub(crate) fn account_quotas(
        &self,
        apps: &[App],
        plans: &[Plan],
        samples: Vec<WorkerUsage>,
    ) -> anyhow::Result<()> {
        let now = self.inner.clock.now();
        let store = &self.inner.store;
        let minute = self.inner.config.cpu_minute_ms;
        let quotas = quotas_of(apps, plans, minute);
        // Read back the day's counts first (normally done by the startup sync).
        self.quota_stopped(apps, plans)?;
        // Each sample's cores are the average since the instance's previous sample: booked
        // once, for the time it covers (a second, unless a tick came late).
        let mut used: BTreeMap<AppName, f64> = BTreeMap::new();
        {
            let mut book = self.inner.quota.lock().unwrap_or_else(|p| p.into_inner());
            let mut seen = HashMap::new();
            for u in samples {
                let last = book.booked_at.get(&u.instance).copied();
                seen.insert(u.instance.clone(), u.at_ms);
                if !quotas.contains_key(&u.app) || last == Some(u.at_ms) {
                    continue;
                }
                let covers = last.map_or(1000, |l| u.at_ms.saturating_sub(l).clamp(1, 5000));
                *used.entry(u.app).or_default() += u.cpu_cores * covers as f64;
            }
            book.booked_at = seen;
        }
        let booked: Vec<(AppName, u64, u64)> = used
            .into_iter()
            .map(|(app, ms)| {
                let quota = quotas[&app];
                (app, ms.round() as u64, quota)
            })
            .collect();

        let (events, flush) = {
            let mut book = self.inner.quota.lock().unwrap_or_else(|p| p.into_inner());
            let mut flush = Vec::new();
            if day_of(now) != book.pending_day && !book.pending.is_empty() {
                flush.push((book.pending_day, std::mem::take(&mut book.pending)));
            }
            book.pending_day = day_of(now);
            let events = match book.quota.as_mut() {
                Some(q) => q.book(now, &booked),
                None => Vec::new(),
            };
            for (app, ms, _) in &booked {
                *book.pending.entry(app.clone()).or_default() += ms;
            }
            book.ticks += 1;
            if !events.is_empty() || book.ticks >= FLUSH_EVERY {
                book.ticks = 0;
                let day = book.pending_day;
                flush.push((day, std::mem::take(&mut book.pending)));
            }
            (events, flush)
        };
        for (day, counts) in flush {
            let list: Vec<(AppName, u64)> = counts.iter().map(|(a, ms)| (a.clone(), *ms)).collect();
            if list.is_empty() {
                continue;
            }
            if let Err(e) = store.add_cpu_used(day, &list) {
                // Kept for the next write (of today's counts; an old day's are dropped).
                let mut book = self.inner.quota.lock().unwrap_or_else(|p| p.into_inner());
                if day == book.pending_day {
                    for (app, ms) in counts {
                        *book.pending.entry(app).or_default() += ms;
                    }
                }
                tracing::warn!("failed to store the day's CPU counts (kept for the next try): {e}");
            }
        }
        if events.is_empty() {
            return Ok(());
        }
        for event in &events {
            match event {
                QuotaEvent::Stopped {
                    app,
                    used_ms,
                    quota_ms,
                    ..
                } => self.inner.logs.event(
                    app,
                    &format!(
                        "quota: {app} used {:.1} of its {} CPU minutes for today; stopped until the quota resets at 00:00 UTC (requests get 403)",
                        *used_ms as f64 / minute as f64,
                        quota_ms / minute
                    ),
                ),
                QuotaEvent::Reset { restarted, .. } => {
                    for app in restarted {
                        self.inner.logs.event(
                            app,
                            &format!("quota: a new day's CPU quota; {app} starts again"),
                        );
                    }
                }
            }
        }
        self.sync_after_commit();
        Ok(())
    }
}
