//! Engine speed: evaluates 10,000 settings × 10 rules (5 scale-out, 5 scale-in, each over a
//! 10-minute window of 1-minute grains) against synthetic metrics, and prints the time of one
//! full pass (best and median of several). Target: ≤ 50 ms in release mode.
//!
//! `cargo run --release -p stamp-autoscale --example bench`

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::json;
use stamp_autoscale::{
    Grain, MetricQuery, Metrics, ScaleState, Setting, Stats, ValidationOptions, evaluate,
};

const SETTINGS: usize = 10_000;
const PASSES: usize = 9;
const METRICS: [&str; 5] = [
    "CpuPercentage",
    "MemoryPercentage",
    "HttpQueueLength",
    "Requests",
    "AverageResponseTime",
];

/// Per-setting metrics as the service keeps them: per metric, the last ten 1-minute grains
/// (values from a cheap deterministic hash), copied into the engine's buffer.
struct Synthetic {
    grains: Vec<Vec<Grain>>,
}

impl Synthetic {
    fn new(seed: u64, now: DateTime<Utc>) -> Synthetic {
        let grains = (0..METRICS.len() as u64)
            .map(|m| {
                let mut h = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ m;
                (0..10)
                    .map(|g| {
                        h = h
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let v = (h >> 33) as f64 / f64::from(1u32 << 31) * 100.0;
                        Grain {
                            start: now - TimeDelta::minutes(10 - g),
                            stats: Stats::uniform(v, 4),
                        }
                    })
                    .collect()
            })
            .collect();
        Synthetic { grains }
    }
}

impl Metrics for Synthetic {
    fn grains(&self, q: &MetricQuery<'_>, out: &mut Vec<Grain>) {
        if let Some(i) = METRICS.iter().position(|m| *m == q.metric) {
            out.extend_from_slice(&self.grains[i]);
        }
    }
}

fn setting(i: usize) -> Setting {
    let mut rules = Vec::new();
    for (k, metric) in METRICS.iter().enumerate() {
        let shift = ((i + k) % 20) as f64;
        rules.push(json!({
            "metricTrigger": {"metricName": metric, "timeGrain": "PT1M", "statistic": "Average",
                "timeWindow": "PT10M", "timeAggregation": "Average", "operator": "GreaterThan",
                "threshold": 60.0 + shift},
            "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}
        }));
        rules.push(json!({
            "metricTrigger": {"metricName": metric, "timeGrain": "PT1M", "statistic": "Average",
                "timeWindow": "PT10M", "timeAggregation": "Average", "operator": "LessThan",
                "threshold": 30.0 + shift},
            "scaleAction": {"direction": "Decrease", "type": "PercentChangeCount", "value": "20", "cooldown": "PT10M"}
        }));
    }
    let text = json!({"profiles": [{
        "name": "Auto created scale condition",
        "capacity": {"minimum": "1", "maximum": "20", "default": "2"},
        "rules": rules,
    }]})
    .to_string();
    Setting::from_json(&text, &ValidationOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn main() {
    let settings: Vec<Setting> = (0..SETTINGS).map(setting).collect();
    let states: Vec<ScaleState> = (0..SETTINGS)
        .map(|i| ScaleState::new(1 + (i % 20) as u32))
        .collect();
    let now: DateTime<Utc> = Utc
        .with_ymd_and_hms(2024, 1, 8, 12, 0, 0)
        .single()
        .unwrap_or_default();
    let sources: Vec<Synthetic> = (0..SETTINGS)
        .map(|i| Synthetic::new(i as u64 + 1, now))
        .collect();

    let mut times: Vec<Duration> = Vec::new();
    let mut scaled = 0usize;
    for _ in 0..PASSES {
        let started = Instant::now();
        scaled = 0;
        for ((setting, state), source) in settings.iter().zip(&states).zip(&sources) {
            let eval = evaluate(setting, now, state, 30, source);
            scaled += usize::from(eval.scales());
        }
        times.push(started.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "stamp-autoscale: {SETTINGS} settings x 10 rules: best {:.1} ms, median {:.1} ms per pass \
         ({:.2} µs per setting; {scaled} would scale); target <= 50 ms",
        ms(times[0]),
        ms(times[PASSES / 2]),
        ms(times[PASSES / 2]) * 1000.0 / SETTINGS as f64,
    );
}
