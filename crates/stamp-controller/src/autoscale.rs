//! The autoscale service around the pure engine (`stamp-autoscale`): collects plan metrics every
//! second into one-second grains, evaluates every enabled setting on an interval, scales plans
//! through the same checks as `stamp plan scale`, keeps every evaluation as the plan's run
//! history, logs actions to the apps' log streams and posts webhooks.
//!
//! Metrics (Azure's names) per plan, each a one-second sample:
//! - `CpuPercentage`, `MemoryPercentage`: per worker, the instances' CPU (cores) and resident
//!   memory over the worker's SKU size, one sample per worker (so `statistic` combines workers);
//! - `HttpQueueLength`: requests in flight at the front end, summed over the plan's apps;
//! - `Requests`, `Http5xx`, `BytesReceived`, `BytesSent`: counts in the second;
//! - `AverageResponseTime`: seconds, mean over the second's requests (no sample without one);
//! - custom metrics posted through the API, under their own names.
//!
//! Grains are cut back from the end of the rule's window, so a window that is a multiple of its
//! grain is partitioned exactly. Samples are kept for [`RETENTION_SECS`]; longer windows see
//! only what is kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use stamp_autoscale::{Evaluation, Grain, MetricQuery, Metrics, ScaleState, Setting, Stats};
use stamp_model::sku::{self, Sku};
use stamp_model::{App, AppName, AutoscaleRun, Millis, Plan, PlanName};

use crate::Controller;

/// How long one-second samples are kept: Azure's longest window is 12 h; a day's worth per
/// metric per plan is ~1.4 MB, so keep 2 h and say so.
pub const RETENTION_SECS: i64 = 2 * 3600;
/// The metrics Stamp measures itself; a custom metric may not take these names.
pub const BUILT_IN_METRICS: &[&str] = &[
    "CpuPercentage",
    "MemoryPercentage",
    "HttpQueueLength",
    "Requests",
    "Http5xx",
    "BytesReceived",
    "BytesSent",
    "AverageResponseTime",
];
/// Distinct metrics kept per plan (built-in ones included), so posting many names cannot grow
/// memory without bound.
pub const MAX_METRICS_PER_PLAN: usize = 64;
/// Evaluations kept per plan as its run history.
pub const HISTORY_KEEP: usize = 1000;

/// One front-end counter set for an app: cumulative since the front end started.
#[derive(Debug, Clone, Default)]
pub struct AppCounters {
    pub app: String,
    pub requests: u64,
    pub errors_5xx: u64,
    pub in_flight: u64,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    pub latency_sum: Duration,
    pub latency_count: u64,
}

/// What one instance uses now, and on which worker of which plan.
#[derive(Debug, Clone)]
pub struct WorkerUsage {
    pub plan: PlanName,
    pub worker: u32,
    pub app: AppName,
    pub instance: String,
    pub cpu_cores: f64,
    pub memory_bytes: u64,
    pub outbound_connections: u32,
    /// When the node took the sample (Unix ms): `cpu_cores` is the average since its previous
    /// sample of the instance.
    pub at_ms: u64,
}

/// One metric's samples: (Unix second, the values recorded in it), oldest first.
type Series = VecDeque<(i64, Stats)>;

/// One-second samples per (plan, metric).
#[derive(Default)]
pub struct MetricStore {
    series: Mutex<HashMap<(PlanName, String), Series>>,
}

impl MetricStore {
    /// Adds a value to the second `second` of a plan's metric.
    pub fn record(&self, plan: &PlanName, metric: &str, second: i64, value: f64) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = series
            .entry((plan.clone(), metric.to_string()))
            .or_default();
        match s.back_mut() {
            Some((sec, stats)) if *sec == second => stats.push(value),
            _ => s.push_back((second, Stats::single(value))),
        }
        while s
            .front()
            .is_some_and(|(sec, _)| *sec < second - RETENTION_SECS)
        {
            s.pop_front();
        }
    }

    /// Drops samples older than the retention from every series, and series left empty.
    pub fn trim(&self, second: i64) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for s in series.values_mut() {
            while s
                .front()
                .is_some_and(|(sec, _)| *sec < second - RETENTION_SECS)
            {
                s.pop_front();
            }
        }
        series.retain(|_, s| !s.is_empty());
    }

    /// How many metrics a plan has samples of.
    pub fn metric_count(&self, plan: &PlanName) -> usize {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|(p, _)| p == plan)
            .count()
    }

    /// Whether the plan has samples of `metric`.
    pub fn has(&self, plan: &PlanName, metric: &str) -> bool {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&(plan.clone(), metric.to_string()))
    }

    /// Forgets a deleted plan.
    pub fn forget(&self, plan: &PlanName) {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, _), _| p != plan);
    }

    /// The metrics of one plan, as the engine reads them.
    pub fn for_plan<'a>(&'a self, plan: &'a PlanName) -> PlanMetrics<'a> {
        PlanMetrics { store: self, plan }
    }
}

pub struct PlanMetrics<'a> {
    store: &'a MetricStore,
    plan: &'a PlanName,
}

impl Metrics for PlanMetrics<'_> {
    fn grains(&self, q: &MetricQuery<'_>, out: &mut Vec<Grain>) {
        let series = self.store.series.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = series.get(&(self.plan.clone(), q.metric.to_string())) else {
            return;
        };
        let grain = i64::try_from(q.grain.as_secs()).unwrap_or(i64::MAX).max(1);
        let (from, to) = (q.from.timestamp(), q.to.timestamp());
        // Grains are cut back from the window's end, so they partition the window exactly and
        // none is cut short (a partial grain would hold a fraction of a count metric's total).
        let mut grains: BTreeMap<i64, Stats> = BTreeMap::new();
        for (sec, stats) in s.iter().filter(|(sec, _)| *sec >= from && *sec < to) {
            let start = to - ((to - 1 - sec) / grain + 1) * grain;
            if start >= from {
                grains.entry(start).or_insert(Stats::EMPTY).merge(stats);
            }
        }
        out.extend(grains.into_iter().filter_map(|(start, stats)| {
            Some(Grain {
                start: DateTime::from_timestamp(start, 0)?,
                stats,
            })
        }));
    }
}

fn utc(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(ms.0).unwrap_or(i64::MAX)).unwrap_or_default()
}

/// Per-run memory the store does not keep: whether metrics were missing, the last profile.
#[derive(Default)]
pub(crate) struct RunMemory {
    by_plan: Mutex<HashMap<PlanName, (bool, Option<String>)>>,
    /// The last scale failure logged per plan.
    failures: Mutex<HashMap<PlanName, String>>,
}

impl RunMemory {
    /// Forgets a plan (deleted, or its setting deleted).
    pub(crate) fn forget(&self, plan: &PlanName) {
        self.by_plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(plan);
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(plan);
    }
}

impl Controller {
    /// Samples plan metrics once a second, forever.
    pub async fn run_metrics(&self) {
        let mut previous: HashMap<String, AppCounters> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            // One read of the store and of the node's usage serves both.
            let (apps, plans) = match (self.inner.store.apps(), self.inner.store.plans()) {
                (Ok(apps), Ok(plans)) => (apps, plans),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("failed to read the plans for their metrics: {e:#}");
                    continue;
                }
            };
            let usage = self.inner.node.usage();
            if let Err(e) = self.sample_metrics(&mut previous, &apps, &plans, &usage) {
                tracing::warn!("failed to sample plan metrics: {e:#}");
            }
            if let Err(e) = self.account_quotas(&apps, &plans, usage) {
                tracing::warn!("failed to account the daily CPU quotas: {e:#}");
            }
        }
    }

    fn sample_metrics(
        &self,
        previous: &mut HashMap<String, AppCounters>,
        apps: &[App],
        plans: &[Plan],
        usage: &[WorkerUsage],
    ) -> anyhow::Result<()> {
        let second = i64::try_from(self.inner.clock.now().0 / 1000).unwrap_or(i64::MAX);
        let metrics = &self.inner.metrics;
        let counters = self.inner.frontend.request_counters();
        // Sum the front end's per-app counters over each plan's apps.
        let mut per_plan: HashMap<&PlanName, [f64; 6]> = HashMap::new();
        let mut latency: HashMap<&PlanName, (f64, u64)> = HashMap::new();
        for c in &counters {
            let Some(app) = apps.iter().find(|a| a.name.as_str() == c.app) else {
                continue;
            };
            let before = previous.get(&c.app).cloned().unwrap_or_default();
            let d = |now: u64, then: u64| now.saturating_sub(then) as f64;
            let v = per_plan.entry(&app.plan).or_default();
            v[0] += d(c.requests, before.requests);
            v[1] += d(c.errors_5xx, before.errors_5xx);
            v[2] += c.in_flight as f64;
            v[3] += d(c.received_bytes, before.received_bytes);
            v[4] += d(c.sent_bytes, before.sent_bytes);
            let l = latency.entry(&app.plan).or_default();
            l.0 += c
                .latency_sum
                .saturating_sub(before.latency_sum)
                .as_secs_f64();
            l.1 += c.latency_count.saturating_sub(before.latency_count);
        }
        for plan in plans {
            let v = per_plan.get(&plan.name).copied().unwrap_or_default();
            for (metric, value) in [
                ("Requests", v[0]),
                ("Http5xx", v[1]),
                ("HttpQueueLength", v[2]),
                ("BytesReceived", v[3]),
                ("BytesSent", v[4]),
            ] {
                metrics.record(&plan.name, metric, second, value);
            }
            if let Some((sum, n)) = latency.get(&plan.name).filter(|(_, n)| *n > 0) {
                metrics.record(&plan.name, "AverageResponseTime", second, sum / *n as f64);
            }
        }
        // CPU and memory per worker, as a share of the worker's SKU size.
        for plan in plans {
            let Ok(sku) = Sku::find(&plan.sku) else {
                continue;
            };
            for worker in 0..plan.workers {
                let mine: Vec<&WorkerUsage> = usage
                    .iter()
                    .filter(|u| u.plan == plan.name && u.worker == worker)
                    .collect();
                // A worker whose instances are not measured yet (just added, restarting) has no
                // sample rather than a 0 % one, which would drag the plan's average down.
                if mine.is_empty() {
                    continue;
                }
                let (cpu, mem) = mine.iter().fold((0.0, 0u64), |(c, m), u| {
                    (c + u.cpu_cores, m + u.memory_bytes)
                });
                let cpu_pct = cpu * 100_000.0 / f64::from(sku.millicores.max(1));
                let mem_pct = mem as f64 * 100.0 / (f64::from(sku.memory_mib) * 1024.0 * 1024.0);
                metrics.record(&plan.name, "CpuPercentage", second, cpu_pct);
                metrics.record(&plan.name, "MemoryPercentage", second, mem_pct);
            }
        }
        // Azure's worker-pool metric: warm workers of the plan's size ready to be taken.
        let pools = self.inner.node.pools();
        for plan in plans {
            let Ok(sku) = Sku::find(&plan.sku) else {
                continue;
            };
            let available = pools
                .iter()
                .find(|p| p.size == sku.size)
                .map_or(0, |p| p.available);
            metrics.record(&plan.name, "WorkersAvailable", second, f64::from(available));
        }
        *previous = counters.into_iter().map(|c| (c.app.clone(), c)).collect();
        metrics.trim(second);
        Ok(())
    }

    /// Evaluates every enabled autoscale setting every `interval`, forever.
    pub async fn run_autoscale(&self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.autoscale_once().await {
                tracing::warn!("failed to evaluate autoscale settings: {e:#}");
            }
        }
    }

    /// One evaluation of every enabled setting.
    pub async fn autoscale_once(&self) -> anyhow::Result<()> {
        for record in self.inner.store.autoscale_settings()? {
            if !record.enabled {
                continue;
            }
            if let Err(e) = self.autoscale_plan(&record).await {
                tracing::warn!(
                    "failed to evaluate the autoscale setting of plan {}: {e:#}",
                    record.plan
                );
            }
        }
        Ok(())
    }

    async fn autoscale_plan(&self, listed: &stamp_model::AutoscaleRecord) -> anyhow::Result<()> {
        let _w = self.inner.writer.lock().await;
        // Read again under the lock: a change committed since the listing wins.
        let record = match self.inner.store.autoscale(&listed.plan) {
            Ok(r) if r.enabled => r,
            _ => return Ok(()),
        };
        let plan = self.inner.store.plan(&record.plan)?;
        let sku = Sku::find(&plan.sku).map_err(anyhow::Error::msg)?;
        let setting = parse_setting(&record.setting_json, sku.max_instances)?;
        let now = self.inner.clock.now();
        let (missing, profile) = self
            .inner
            .autoscale_memory
            .by_plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&plan.name)
            .cloned()
            .unwrap_or_default();
        let state = ScaleState {
            capacity: plan.workers,
            last_action: match (record.last_action_at, record.last_cooldown) {
                (Some(at), Some(cooldown)) => Some(stamp_autoscale::LastAction {
                    at: utc(at),
                    cooldown: cooldown.as_duration(),
                }),
                _ => None,
            },
            metrics_missing: missing,
            profile,
        };
        let metrics = self.inner.metrics.for_plan(&plan.name);
        let mut eval =
            stamp_autoscale::evaluate(&setting, utc(now), &state, sku.max_instances, &metrics);
        self.inner
            .autoscale_memory
            .by_plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                plan.name.clone(),
                (
                    eval.metrics_missing,
                    eval.profile.as_ref().map(|p| p.name.to_string()),
                ),
            );

        let target = eval.decision.target;
        let mut scaled_to = None;
        if target != plan.workers {
            let used = self
                .used_capacity(Some(plan.name.as_str()))
                .map_err(|e| anyhow::anyhow!(e.message))?;
            match sku::check_scale(sku, target, self.inner.config.capacity, used) {
                Ok(()) => {
                    let cooldown = eval.decision.cooldown.map(Millis::from);
                    scaled_to = Some((target, cooldown));
                }
                Err(e) => {
                    eval.events.push(stamp_autoscale::Event::ScaleFailed {
                        from: plan.workers,
                        to: target,
                        error: e.to_string(),
                    });
                    // Retried every run; said in the log only when the failure changes.
                    let text = format!(
                        "autoscale: scale of plan {} from {} to {target} failed: {e}",
                        plan.name, plan.workers
                    );
                    let mut failures = self
                        .inner
                        .autoscale_memory
                        .failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if failures.get(&plan.name) != Some(&text) {
                        self.event_for_plan_apps(&plan.name, &text);
                        failures.insert(plan.name.clone(), text);
                    }
                }
            }
        }
        let run = AutoscaleRun {
            plan: plan.name.clone(),
            at: now,
            scaled: scaled_to.is_some(),
            summary: eval.summary(),
            evaluation_json: serde_json::to_string(&eval)?,
        };
        self.inner
            .store
            .record_autoscale_run(&run, scaled_to, HISTORY_KEEP)?;
        if scaled_to.is_some() {
            self.inner
                .autoscale_memory
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&plan.name);
            self.event_for_plan_apps(
                &plan.name,
                &format!(
                    "autoscale: plan {} from {} to {target} workers: {}",
                    plan.name, plan.workers, run.summary
                ),
            );
            self.sync_after_commit();
            self.post_webhooks(&setting, &plan.name, &eval);
        }
        Ok(())
    }

    /// Posts Azure's webhook payload to every webhook of the setting; failures are logged and
    /// never hold up scaling.
    fn post_webhooks(&self, setting: &Setting, plan: &PlanName, eval: &Evaluation) {
        let resource_id = format!("/stamp/plans/{plan}");
        let setting_id = format!("{resource_id}/autoscale");
        let context = stamp_autoscale::WebhookContext {
            setting_id: &setting_id,
            setting_name: setting.name.as_deref().unwrap_or("autoscale"),
            subscription_id: "stamp",
            resource_group_name: "stamp",
            resource_name: plan.as_str(),
            resource_type: "microsoft.web/serverfarms",
            resource_id: &resource_id,
            portal_link: "",
        };
        for hook in &setting.webhooks {
            let Some(body) = stamp_autoscale::webhook_body(&context, hook, eval) else {
                continue;
            };
            let (http, uri) = (self.inner.http.clone(), hook.service_uri.clone());
            tokio::spawn(async move {
                let sent = http
                    .post(&uri)
                    .timeout(Duration::from_secs(10))
                    .json(&body)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status());
                if let Err(e) = sent {
                    tracing::warn!("failed to post an autoscale webhook to {uri}: {e}");
                }
            });
        }
    }
}

/// Validates a stored or submitted setting. Grains, windows and cooldowns down to one second are
/// allowed (self-hosted use and tests); one minute and more is Azure's range.
pub fn parse_setting(
    json: &str,
    max_instances: u32,
) -> Result<Setting, stamp_autoscale::SettingError> {
    Setting::from_json(
        json,
        &stamp_autoscale::ValidationOptions {
            relaxed: true,
            max_instances: Some(max_instances),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(metric: &str, from: i64, to: i64, grain: u64) -> Vec<(i64, u64, f64)> {
        let store = MetricStore::default();
        let plan = PlanName::parse("p").unwrap();
        for sec in 100..220 {
            store.record(&plan, "Requests", sec, 1.0);
            store.record(&plan, "Requests", sec, 2.0);
        }
        let q = MetricQuery {
            metric,
            namespace: None,
            resource: None,
            dimensions: &[],
            from: DateTime::from_timestamp(from, 0).unwrap(),
            to: DateTime::from_timestamp(to, 0).unwrap(),
            grain: Duration::from_secs(grain),
        };
        let mut out = Vec::new();
        store.for_plan(&plan).grains(&q, &mut out);
        out.iter()
            .map(|g| (g.start.timestamp(), g.stats.count, g.stats.sum))
            .collect()
    }

    #[test]
    fn grains_partition_the_window_from_its_end() {
        // Two samples a second (two workers), 3 s grains over a 9 s window ending at 215.
        assert_eq!(
            query("Requests", 206, 215, 3),
            [(206, 6, 9.0), (209, 6, 9.0), (212, 6, 9.0)]
        );
        // A window of one grain, not aligned to anything, is one whole grain.
        assert_eq!(query("Requests", 150, 210, 60), [(150, 120, 180.0)]);
        // Before the first sample: only what exists; another metric: nothing.
        assert_eq!(query("Requests", 90, 102, 6), [(96, 4, 6.0)]);
        assert!(query("Http5xx", 100, 200, 10).is_empty());
    }

    #[test]
    fn old_samples_and_empty_series_are_trimmed() {
        let store = MetricStore::default();
        let plan = PlanName::parse("p").unwrap();
        store.record(&plan, "Custom", 0, 1.0);
        assert!(store.has(&plan, "Custom"));
        store.trim(RETENTION_SECS + 10);
        assert!(!store.has(&plan, "Custom"));
        assert_eq!(store.metric_count(&plan), 0);
    }
}
