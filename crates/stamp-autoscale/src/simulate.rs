//! The simulator: replays a metric trace through the same [`evaluate`] the service runs, so users
//! can try a setting before applying it.
//!
//! A trace is CSV: a header `time,<metric>,<metric>...` and one row per change. Values hold until
//! the next row (a step function); an empty cell means the metric is unavailable from then on.
//! A column named `<metric>:per_instance` holds *total* load that divides across the current
//! capacity (e.g. `CpuPercentage:per_instance` = 300 is three instances' worth of CPU: 60 % each at
//! 5 instances), so the simulated metric reacts to the simulator's own scaling. `time` is either an
//! RFC 3339 instant or an offset from the start (`0`, `90` seconds, `90s`, `5m`, `1h30m`, `2d`,
//! or ISO-8601 `PT5M`); all rows use one kind. Lines starting with `#` are comments.
//!
//! Each grain's value is the time-weighted average of the trace over the grain (divided by the
//! capacity at each moment for per-instance columns). Scale actions take effect at once: the
//! simulator models no provisioning delay. Holds are recorded only when their reason or profile
//! changes, so a week of 30-second runs reads as a short story rather than 20,000 lines.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::duration;
use crate::engine::{Evaluation, ScaleState, evaluate};
use crate::metrics::{Grain, MetricQuery, Metrics, Stats};
use crate::setting::Setting;

/// Offsets in a relative trace count from this instant unless a start is given: Monday
/// 2024-01-01 00:00 UTC, so weekly schedules line up with the first row.
pub fn default_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// A parsed trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub columns: Vec<TraceColumn>,
    pub rows: Vec<TraceRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceColumn {
    pub metric: String,
    /// Values are total load divided across the current capacity.
    pub per_instance: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRow {
    pub at: TraceTime,
    /// One per column; `None` = unavailable.
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceTime {
    At(DateTime<Utc>),
    #[serde(with = "duration::iso")]
    Offset(Duration),
}

/// A trace that could not be read, with the line to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trace line {line}: {message}")]
pub struct TraceError {
    pub line: usize,
    pub message: String,
}

impl Trace {
    /// Parses the CSV form described in the module docs.
    pub fn parse_csv(text: &str) -> Result<Trace, TraceError> {
        let err = |line: usize, message: String| TraceError { line, message };
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let Some((header_line, header)) = lines.next() else {
            return Err(err(
                1,
                "the trace is empty; start with a header such as time,CpuPercentage".into(),
            ));
        };
        let mut cells = header.split(',').map(str::trim);
        cells.next();
        let columns: Vec<TraceColumn> = cells
            .map(|c| match c.rsplit_once(':') {
                Some((metric, flag)) if flag.trim().eq_ignore_ascii_case("per_instance") => {
                    TraceColumn {
                        metric: metric.trim().to_string(),
                        per_instance: true,
                    }
                }
                _ => TraceColumn {
                    metric: c.to_string(),
                    per_instance: false,
                },
            })
            .collect();
        if columns.is_empty() || columns.iter().any(|c| c.metric.is_empty()) {
            return Err(err(
                header_line,
                "the header needs a time column and at least one named metric column, e.g. time,CpuPercentage".into(),
            ));
        }
        let mut rows: Vec<TraceRow> = Vec::new();
        for (n, line) in lines {
            let mut cells = line.split(',').map(str::trim);
            let time = cells.next().unwrap_or_default();
            let at = parse_time(time).map_err(|m| err(n, m))?;
            let values: Vec<Option<f64>> = cells
                .map(|c| {
                    if c.is_empty() {
                        Ok(None)
                    } else {
                        c.parse::<f64>()
                            .ok()
                            .filter(|v| v.is_finite())
                            .map(Some)
                            .ok_or_else(|| err(n, format!("'{c}' is not a number")))
                    }
                })
                .collect::<Result<_, _>>()?;
            if values.len() != columns.len() {
                return Err(err(
                    n,
                    format!(
                        "has {} values but the header names {} metrics",
                        values.len(),
                        columns.len()
                    ),
                ));
            }
            if let Some(prev) = rows.last() {
                match (prev.at, at) {
                    (TraceTime::At(a), TraceTime::At(b)) if b < a => {
                        return Err(err(n, "times must not go backwards".into()));
                    }
                    (TraceTime::Offset(a), TraceTime::Offset(b)) if b < a => {
                        return Err(err(n, "times must not go backwards".into()));
                    }
                    (TraceTime::At(_), TraceTime::Offset(_))
                    | (TraceTime::Offset(_), TraceTime::At(_)) => {
                        return Err(err(
                            n,
                            "mixes absolute times and offsets; use one kind".into(),
                        ));
                    }
                    _ => {}
                }
            }
            rows.push(TraceRow { at, values });
        }
        if rows.is_empty() {
            return Err(err(
                header_line,
                "the trace has a header but no rows".into(),
            ));
        }
        Ok(Trace { columns, rows })
    }

    /// Marks every column as per-instance (total load), e.g. for a CLI `--per-instance` flag.
    pub fn with_per_instance(mut self, per_instance: bool) -> Trace {
        for c in &mut self.columns {
            c.per_instance = per_instance;
        }
        self
    }
}

fn parse_time(text: &str) -> Result<TraceTime, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(TraceTime::At(t.with_timezone(&Utc)));
    }
    if let Ok(secs) = text.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Ok(TraceTime::Offset(Duration::from_secs_f64(secs)));
    }
    if text.starts_with(['P', 'p']) {
        return duration::parse(text)
            .map(TraceTime::Offset)
            .map_err(|e| e.to_string());
    }
    // 1h30m, 90s, 2d
    let mut total = 0.0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400.0,
            'h' => 3_600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => f64::NAN,
        };
        let n: f64 = number.parse().unwrap_or(f64::NAN);
        if !(unit * n).is_finite() {
            return Err(format!(
                "'{text}' is neither an RFC 3339 time (2024-01-01T09:00:00Z) nor an offset (90, 90s, 5m, 1h30m, PT5M)"
            ));
        }
        total += unit * n;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!(
            "'{text}' is neither an RFC 3339 time (2024-01-01T09:00:00Z) nor an offset (90, 90s, 5m, 1h30m, PT5M)"
        ));
    }
    Ok(TraceTime::Offset(Duration::from_secs_f64(total)))
}

/// A capacity change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityPoint {
    pub at: DateTime<Utc>,
    pub capacity: u32,
}

/// What a simulation did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(with = "duration::iso")]
    pub interval: Duration,
    /// Runs of the engine.
    pub evaluations: usize,
    /// The initial capacity, then every change.
    pub capacity: Vec<CapacityPoint>,
    /// Every run that scaled, raised an event, or whose reason or profile differed from the last
    /// recorded run.
    pub decisions: Vec<Evaluation>,
}

impl Timeline {
    /// The capacity in force at `at`.
    pub fn capacity_at(&self, at: DateTime<Utc>) -> u32 {
        let i = self.capacity.partition_point(|p| p.at <= at);
        self.capacity[i.saturating_sub(1)].capacity
    }

    /// The runs that changed the capacity.
    pub fn actions(&self) -> impl Iterator<Item = &Evaluation> {
        self.decisions.iter().filter(|e| e.scales())
    }

    /// Text for the CLI: a header, then one line per recorded decision.
    pub fn render(&self) -> String {
        let actions = self.actions().count();
        let mut out = format!(
            "simulated {} → {} every {}: {} evaluations, {} scale actions\n",
            self.start.format("%Y-%m-%d %H:%M:%S UTC"),
            self.end.format("%Y-%m-%d %H:%M:%S UTC"),
            duration::human(self.interval),
            self.evaluations,
            actions
        );
        let path: Vec<String> = self
            .capacity
            .iter()
            .map(|p| p.capacity.to_string())
            .collect();
        let _ = writeln!(out, "capacity: {}\n", path.join(" → "));
        for e in &self.decisions {
            let count = if e.scales() {
                format!("{}→{}", e.current, e.decision.target)
            } else {
                e.current.to_string()
            };
            let _ = write!(
                out,
                "{}  {:<7}  {}",
                e.at.format("%a %Y-%m-%d %H:%M:%SZ"),
                count,
                e.summary()
            );
            let events: Vec<&str> = e.events.iter().map(event_name).collect();
            if !events.is_empty() {
                let _ = write!(out, "  [{}]", events.join(", "));
            }
            out.push('\n');
        }
        out
    }
}

fn event_name(e: &crate::engine::Event) -> &'static str {
    use crate::engine::Event;
    match e {
        Event::Scale { .. } => "Scale",
        Event::ScaleFailed { .. } => "ScaleFailed",
        Event::MetricsUnavailable { .. } => "MetricsUnavailable",
        Event::MetricsRecovered => "MetricsRecovered",
        Event::Flapping { .. } => "Flapping",
        Event::FlappingOccurred { .. } => "FlappingOccurred",
    }
}

/// Replays `trace` through the engine from `start` (default: the first row for absolute traces,
/// [`default_start`] for offsets) to the last row, one run every `interval`.
pub fn simulate(
    setting: &Setting,
    trace: &Trace,
    start: Option<DateTime<Utc>>,
    interval: Duration,
    initial_capacity: u32,
    max_instances: u32,
) -> Timeline {
    let base = match trace.rows.first().map(|r| r.at) {
        Some(TraceTime::At(t)) => start.unwrap_or(t),
        _ => start.unwrap_or_else(default_start),
    };
    let times: Vec<DateTime<Utc>> = trace
        .rows
        .iter()
        .map(|r| match r.at {
            TraceTime::At(t) => t,
            TraceTime::Offset(d) => base + TimeDelta::from_std(d).unwrap_or(TimeDelta::zero()),
        })
        .collect();
    let end = times.last().copied().unwrap_or(base);
    let step = TimeDelta::from_std(interval.max(Duration::from_millis(1)))
        .unwrap_or(TimeDelta::seconds(30));
    let mut timeline = Timeline {
        start: base,
        end,
        interval,
        evaluations: 0,
        capacity: vec![CapacityPoint {
            at: base,
            capacity: initial_capacity,
        }],
        decisions: Vec::new(),
    };
    let mut state = ScaleState::new(initial_capacity);
    let mut last_recorded: Option<(
        std::mem::Discriminant<crate::engine::Reason>,
        Option<std::sync::Arc<str>>,
    )> = None;
    let mut now = base;
    while now <= end {
        let source = TraceMetrics {
            trace,
            times: &times,
            capacity: &timeline.capacity,
        };
        let eval = evaluate(setting, now, &state, max_instances, &source);
        timeline.evaluations += 1;
        state = state.after(&eval);
        if eval.scales() {
            timeline.capacity.push(CapacityPoint {
                at: now,
                capacity: eval.decision.target,
            });
        }
        let key = (
            std::mem::discriminant(&eval.decision.reason),
            eval.profile.as_ref().map(|p| p.name.clone()),
        );
        if eval.scales() || !eval.events.is_empty() || last_recorded.as_ref() != Some(&key) {
            last_recorded = Some(key);
            timeline.decisions.push(eval);
        }
        now += step;
    }
    timeline
}

/// The trace as a [`Metrics`] source, aware of the simulated capacity so far.
struct TraceMetrics<'a> {
    trace: &'a Trace,
    times: &'a [DateTime<Utc>],
    capacity: &'a [CapacityPoint],
}

impl TraceMetrics<'_> {
    fn capacity_at(&self, at: DateTime<Utc>) -> u32 {
        let i = self.capacity.partition_point(|p| p.at <= at);
        self.capacity[i.saturating_sub(1)].capacity.max(1)
    }

    /// The column's value at `at` (None before the first row or in an empty cell).
    fn value_at(&self, column: usize, at: DateTime<Utc>) -> Option<f64> {
        let i = self.times.partition_point(|t| *t <= at);
        if i == 0 {
            return None;
        }
        self.trace.rows[i - 1].values[column]
    }

    /// Time-weighted average of the column over `[from, to)`, over the parts that have data.
    fn average(
        &self,
        column: usize,
        per_instance: bool,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Option<f64> {
        let mut cuts: Vec<DateTime<Utc>> = vec![from, to];
        let lo = self.times.partition_point(|t| *t <= from);
        cuts.extend(self.times[lo..].iter().take_while(|t| **t < to).copied());
        let lo = self.capacity.partition_point(|p| p.at <= from);
        cuts.extend(
            self.capacity[lo..]
                .iter()
                .map(|p| p.at)
                .take_while(|t| *t < to),
        );
        cuts.sort_unstable();
        cuts.dedup();
        let mut weighted = 0.0;
        let mut covered = 0.0;
        for pair in cuts.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let Some(mut v) = self.value_at(column, a) else {
                continue;
            };
            if per_instance {
                v /= f64::from(self.capacity_at(a));
            }
            let w = (b - a).as_seconds_f64();
            weighted += v * w;
            covered += w;
        }
        (covered > 0.0).then(|| weighted / covered)
    }
}

impl Metrics for TraceMetrics<'_> {
    fn grains(&self, q: &MetricQuery<'_>, out: &mut Vec<Grain>) {
        let columns = &self.trace.columns;
        let Some(column) = columns
            .iter()
            .position(|c| c.metric == q.metric)
            .or_else(|| {
                columns
                    .iter()
                    .position(|c| c.metric.eq_ignore_ascii_case(q.metric))
            })
        else {
            return;
        };
        let per_instance = columns[column].per_instance;
        let Some(grain) = TimeDelta::from_std(q.grain)
            .ok()
            .filter(|g| *g > TimeDelta::zero())
        else {
            return;
        };
        let mut start = q.from;
        while start < q.to {
            let end = (start + grain).min(q.to);
            if let Some(v) = self.average(column, per_instance, start, end) {
                let stats = if per_instance {
                    Stats::uniform(v, self.capacity_at(end - TimeDelta::nanoseconds(1)))
                } else {
                    Stats::single(v)
                };
                out.push(Grain { start, stats });
            }
            start = end;
        }
    }
}
