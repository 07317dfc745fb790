//! Shared helpers: a one-line rule notation, settings from JSON, constant metric sources, and a
//! compact rendering of an evaluation.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use stamp_autoscale::{Evaluation, Event, Grain, MetricQuery, Setting, Stats, ValidationOptions};

/// An instant from RFC 3339.
#[track_caller]
pub fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad time {text}: {e}"))
        .with_timezone(&Utc)
}

/// A rule in one line: `METRIC[:STAT][/inst] OP THRESHOLD ACTION [cd=ISO] [window=ISO]`.
///
/// ACTION: `+2`, `-1`, `+15%`, `-50%`, `+=5` (increase count to), `-=1` (decrease count to).
/// Options: `cd=`, `window=`, `grain=` (ISO-8601). Defaults: statistic and aggregation Average,
/// grain PT1M, window PT10M, cooldown PT5M.
#[track_caller]
pub fn rule(line: &str) -> Value {
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert!(
        parts.len() >= 4,
        "rule '{line}' needs METRIC OP THRESHOLD ACTION"
    );
    let mut metric = parts[0];
    let mut divide = false;
    if let Some(m) = metric.strip_suffix("/inst") {
        metric = m;
        divide = true;
    }
    let (metric, statistic) = metric.split_once(':').unwrap_or((metric, "Average"));
    let operator = match parts[1] {
        ">" => "GreaterThan",
        ">=" => "GreaterThanOrEqual",
        "<" => "LessThan",
        "<=" => "LessThanOrEqual",
        "==" => "Equals",
        "!=" => "NotEquals",
        other => panic!("unknown operator {other}"),
    };
    let threshold: f64 = parts[2].parse().expect("threshold");
    let action = parts[3];
    let (direction, rest) = match action.as_bytes()[0] {
        b'+' => ("Increase", &action[1..]),
        b'-' => ("Decrease", &action[1..]),
        _ => panic!("action {action} must start with + or -"),
    };
    let (kind, value) = if let Some(v) = rest.strip_prefix('=') {
        ("ExactCount", v)
    } else if let Some(v) = rest.strip_suffix('%') {
        ("PercentChangeCount", v)
    } else {
        ("ChangeCount", rest)
    };
    let mut cooldown = "PT5M";
    let mut window = "PT10M";
    let mut grain = "PT1M";
    for extra in &parts[4..] {
        if let Some(v) = extra.strip_prefix("cd=") {
            cooldown = v;
        } else if let Some(v) = extra.strip_prefix("window=") {
            window = v;
        } else if let Some(v) = extra.strip_prefix("grain=") {
            grain = v;
        } else {
            panic!("unknown rule option {extra}");
        }
    }
    json!({
        "metricTrigger": {
            "metricName": metric,
            "metricResourceUri": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Web/serverfarms/plan",
            "timeGrain": grain,
            "statistic": statistic,
            "timeWindow": window,
            "timeAggregation": "Average",
            "operator": operator,
            "threshold": threshold,
            "dividePerInstance": divide,
        },
        "scaleAction": {
            "direction": direction,
            "type": kind,
            "value": value,
            "cooldown": cooldown,
        }
    })
}

/// A setting with one default profile.
#[track_caller]
pub fn one_profile(min: u32, max: u32, default: u32, rules: &[&str]) -> Setting {
    let rules: Vec<Value> = rules.iter().map(|r| rule(r)).collect();
    setting(json!({
        "enabled": true,
        "profiles": [{
            "name": "Auto created scale condition",
            "capacity": {"minimum": min.to_string(), "maximum": max.to_string(), "default": default.to_string()},
            "rules": rules,
        }]
    }))
}

/// Parses and validates (relaxed), panicking with every problem.
#[track_caller]
pub fn setting(value: Value) -> Setting {
    let text = value.to_string();
    Setting::from_json(
        &text,
        &ValidationOptions {
            relaxed: true,
            max_instances: None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A metric source where each named metric has a constant value (one value per grain); a
/// metric not listed, or listed as `None`, is unavailable.
pub fn constant(
    values: &[(&str, Option<f64>)],
) -> impl Fn(&MetricQuery<'_>) -> Option<Vec<Grain>> + use<> {
    let values: Vec<(String, Option<f64>)> =
        values.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    move |q: &MetricQuery<'_>| {
        let v = values.iter().find(|(k, _)| k == q.metric)?.1?;
        let grain = TimeDelta::from_std(q.grain).expect("grain");
        let mut out = Vec::new();
        let mut start = q.from;
        while start < q.to {
            out.push(Grain {
                start,
                stats: Stats::single(v),
            });
            start += grain;
        }
        Some(out)
    }
}

/// `"3→2 scaleIn"`, `"3 flappingSkipped [Flapping]"`: the count, the reason's kind and every
/// event other than `Scale`.
pub fn brief(e: &Evaluation) -> String {
    let kind = serde_json::to_value(&e.decision.reason)
        .ok()
        .and_then(|v| v.get("kind").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let mut out = if e.scales() {
        format!("{}→{} {kind}", e.current, e.decision.target)
    } else {
        format!("{} {kind}", e.current)
    };
    let events: Vec<String> = e
        .events
        .iter()
        .filter(|ev| !matches!(ev, Event::Scale { .. }))
        .map(|ev| {
            serde_json::to_value(ev)
                .ok()
                .and_then(|v| v.get("event").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    if !events.is_empty() {
        out.push_str(&format!(" [{}]", events.join(", ")));
    }
    out
}
