//! Where rule values come from: the [`Metrics`] source the service implements over its stored
//! per-grain aggregates, and the reduction of a window of grains to the one number a rule compares.
//!
//! The pipeline (reference §1.3): per grain, the instances' values are combined with the rule's
//! `statistic`; over the window, the grains are combined with `timeAggregation`; with
//! `dividePerInstance` the result is divided by the current instance count. A grain is handed over
//! already summarized as [`Stats`] (count, sum, min, max of the instances' values in that grain),
//! which is all any statistic needs, so the service stores one small record per grain and the engine
//! never sees raw samples.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::setting::{Dimension, MetricTrigger, Statistic, TimeAggregation};

/// Summary of the values of one metric in one grain, across instances.
///
/// For a per-instance metric (CPU, memory) the service puts one value per instance (that
/// instance's value for the grain), so `Average` is the average across instances, `Sum` the total
/// and `Count` the number of instances that reported. For a plan-level metric there is one value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// No values.
    pub const EMPTY: Stats = Stats {
        count: 0,
        sum: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    /// One value.
    pub fn single(value: f64) -> Stats {
        Stats {
            count: 1,
            sum: value,
            min: value,
            max: value,
        }
    }

    /// `count` instances that all report `value` (handy for synthetic metrics).
    pub fn uniform(value: f64, count: u32) -> Stats {
        Stats {
            count: u64::from(count),
            sum: value * f64::from(count),
            min: value,
            max: value,
        }
    }

    /// Summary of the given values.
    pub fn of(values: &[f64]) -> Stats {
        let mut s = Stats::EMPTY;
        for v in values {
            s.push(*v);
        }
        s
    }

    /// Adds one value.
    pub fn push(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds another summary (e.g. two instances' partial grains).
    pub fn merge(&mut self, other: &Stats) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The grain's value under `statistic`; `None` when the grain holds no values.
    pub fn statistic(&self, statistic: Statistic) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        // Cast: counts of samples are far below 2^52.
        let count = self.count as f64;
        Some(match statistic {
            Statistic::Average => self.sum / count,
            Statistic::Min => self.min,
            Statistic::Max => self.max,
            Statistic::Sum => self.sum,
            Statistic::Count => count,
        })
    }
}

/// One grain of a metric: `[start, start + grain)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Grain {
    pub start: DateTime<Utc>,
    pub stats: Stats,
}

/// What a rule asks of the metrics source: the grains of `metric` in `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricQuery<'a> {
    pub metric: &'a str,
    pub namespace: Option<&'a str>,
    /// `metricResourceUri`; `None` = the scaled plan itself.
    pub resource: Option<&'a str>,
    pub dimensions: &'a [Dimension],
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub grain: std::time::Duration,
}

/// The metrics the engine reads: [`Metrics::grains`] appends a window's grains to a buffer the
/// engine reuses across rules (no allocation per rule). Nothing appended means the metric is
/// unavailable; a window with at least one grain holding values counts as available (the rule is
/// computed over the grains that have data).
///
/// Closures `Fn(&MetricQuery) -> Option<Vec<Grain>>` are sources too (`None` = unavailable),
/// which is handy in tests.
///
/// Grains may come in any order; grains whose [`Stats`] are empty are ignored. The source decides
/// how to align grains to the window (the service keeps grains aligned to multiples of their
/// length and returns those starting in `[from, to)`).
pub trait Metrics {
    /// Appends the grains of `query.metric` in `[query.from, query.to)` to `out` (empty on entry).
    fn grains(&self, query: &MetricQuery<'_>, out: &mut Vec<Grain>);
}

impl<F> Metrics for F
where
    F: Fn(&MetricQuery<'_>) -> Option<Vec<Grain>>,
{
    fn grains(&self, query: &MetricQuery<'_>, out: &mut Vec<Grain>) {
        if let Some(grains) = self(query) {
            out.extend(grains);
        }
    }
}

/// A rule's value over its window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The value compared with the threshold (after `dividePerInstance`).
    pub value: f64,
    /// Grains that held values.
    pub grains: usize,
}

/// Reduces a window of grains to the rule's value; `None` when no grain holds a value.
pub fn observe(trigger: &MetricTrigger, grains: &[Grain], capacity: u32) -> Option<Observation> {
    let mut n = 0usize;
    let mut sum = 0.0;
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    let mut last: Option<(DateTime<Utc>, f64)> = None;
    for g in grains {
        let Some(v) = g.stats.statistic(trigger.statistic) else {
            continue;
        };
        n += 1;
        sum += v;
        min = min.min(v);
        max = max.max(v);
        if last.is_none_or(|(t, _)| g.start >= t) {
            last = Some((g.start, v));
        }
    }
    if n == 0 {
        return None;
    }
    // Cast: grain counts are small (at most 12 h of 1 s grains).
    let count = n as f64;
    let raw = match trigger.aggregation {
        TimeAggregation::Average => sum / count,
        TimeAggregation::Minimum => min,
        TimeAggregation::Maximum => max,
        TimeAggregation::Total => sum,
        TimeAggregation::Count => count,
        TimeAggregation::Last => last.map_or(sum / count, |(_, v)| v),
    };
    let value = if trigger.divide_per_instance {
        raw / f64::from(capacity.max(1))
    } else {
        raw
    };
    Some(Observation { value, grains: n })
}

/// Whether a rule's value spreads over the instances, so that it changes as `current / new`
/// when the count changes: per-instance statistics (`Average`, `Min`, `Max`) and divided values
/// do; totals (`Sum`, `Count` without division) and a `Count` of grains do not.
pub fn scales_with_capacity(trigger: &MetricTrigger) -> bool {
    if trigger.aggregation == TimeAggregation::Count {
        return false;
    }
    trigger.divide_per_instance
        || matches!(
            trigger.statistic,
            Statistic::Average | Statistic::Min | Statistic::Max
        )
}

/// The value a rule would observe at `new` instances, given `value` observed at `current`
/// (reference §1.4: `projected = observed × current / new`).
pub fn project(trigger: &MetricTrigger, value: f64, current: u32, new: u32) -> f64 {
    if scales_with_capacity(trigger) && new > 0 {
        value * f64::from(current) / f64::from(new)
    } else {
        value
    }
}
