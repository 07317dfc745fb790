//! Validation lists every problem with its JSON path, enforces Azure's limits (or the relaxed
//! floors), and reads Azure's JSON shapes as they are.

use serde_json::{Value, json};
use stamp_autoscale::{Setting, SettingError, ValidationOptions};

use crate::support::rule;

/// Every (path, fragment of the message) expected, in order.
#[track_caller]
fn check(setting: Value, options: ValidationOptions, expected: &[(&str, &str)]) {
    let result = Setting::from_json(&setting.to_string(), &options);
    let problems = match result {
        Ok(_) => Vec::new(),
        Err(SettingError::Invalid(p)) => p,
        Err(e) => panic!("not a validation error: {e}"),
    };
    let got: Vec<(String, String)> = problems
        .iter()
        .map(|p| (p.path.clone(), p.message.clone()))
        .collect();
    let matches = got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|((path, msg), (want_path, fragment))| {
                path == want_path && msg.contains(fragment)
            });
    assert!(
        matches,
        "expected:\n{}\ngot:\n{}",
        expected
            .iter()
            .map(|(p, m)| format!("  {p}: …{m}…"))
            .collect::<Vec<_>>()
            .join("\n"),
        got.iter()
            .map(|(p, m)| format!("  {p}: {m}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

const STRICT: ValidationOptions = ValidationOptions {
    relaxed: false,
    max_instances: None,
};
const RELAXED: ValidationOptions = ValidationOptions {
    relaxed: true,
    max_instances: None,
};

#[test]
fn every_problem_is_listed_with_its_path() {
    let setting = json!({
        "enabled": "maybe",
        "profiles": [
            {"name": "Default",
             "capacity": {"minimum": "two", "maximum": "5", "default": "9"},
             "rules": [
                {"metricTrigger": {"metricName": "CpuPercentage", "timeGrain": "PT30S", "statistic": "Median",
                    "timeWindow": "PT1M", "timeAggregation": "Average", "operator": "Above", "threshold": "high"},
                 "scaleAction": {"type": "ChangeCount", "value": "0", "cooldown": "P8D"}},
                {"metricTrigger": {"timeGrain": "5 minutes", "statistic": "Average", "timeWindow": "PT10M",
                    "timeAggregation": "Average", "operator": "GreaterThan", "threshold": 70},
                 "scaleAction": {"direction": "Increase", "type": "ServiceAllowedNextValue", "cooldown": "PT5M"}}
             ]},
            {"name": "Weekly",
             "capacity": {"minimum": "4", "maximum": "2", "default": "3"},
             "rules": [],
             "recurrence": {"frequency": "Day", "schedule": {"timeZone": "Mars Standard Time",
                 "days": ["Funday", "Monday"], "hours": [24], "minutes": [0]}}},
            {"name": "Both", "capacity": {"minimum": "1", "maximum": "2", "default": "1"}, "rules": [],
             "recurrence": {"frequency": "Week", "schedule": {"timeZone": "UTC", "days": ["Monday"], "hours": [1], "minutes": [0]}},
             "fixedDate": {"start": "2024-01-01T00:00:00", "end": "2024-01-02T00:00:00"}},
            {"name": "Event", "capacity": {"minimum": "1", "maximum": "2", "default": "1"}, "rules": [],
             "fixedDate": {"timeZone": "UTC", "start": "2024-02-01T00:00:00", "end": "2024-01-01"}},
            {"name": "Second default", "capacity": {"minimum": "1", "maximum": "2", "default": "1"}, "rules": []}
        ],
        "notifications": [
            {"operation": "Email", "webhooks": [{"serviceUri": "ftp://hooks.example.test"}, {"serviceUri": "https://ok.example.test/x"}]}
        ]
    });
    check(
        setting,
        STRICT,
        &[
            ("enabled", "not true or false"),
            ("profiles[0].capacity.minimum", "not a whole number"),
            (
                "profiles[0].rules[0].metricTrigger.timeGrain",
                "PT30S is outside the allowed range PT1M–PT12H",
            ),
            (
                "profiles[0].rules[0].metricTrigger.timeWindow",
                "PT1M is outside the allowed range PT5M–PT12H",
            ),
            (
                "profiles[0].rules[0].metricTrigger.statistic",
                "'Median' is not one of Average, Min, Max, Sum, Count",
            ),
            (
                "profiles[0].rules[0].metricTrigger.operator",
                "'Above' is not one of",
            ),
            (
                "profiles[0].rules[0].metricTrigger.threshold",
                "'high' is not a number",
            ),
            ("profiles[0].rules[0].scaleAction.direction", "is required"),
            (
                "profiles[0].rules[0].scaleAction.value",
                "is 0; it must be at least 1",
            ),
            (
                "profiles[0].rules[0].scaleAction.cooldown",
                "P8D is outside the allowed range PT1M–P7D",
            ),
            (
                "profiles[0].rules[1].metricTrigger.metricName",
                "is required",
            ),
            (
                "profiles[0].rules[1].metricTrigger.timeGrain",
                "is not an ISO-8601 duration",
            ),
            (
                "profiles[0].rules[1].scaleAction.type",
                "ServiceAllowedNextValue",
            ),
            ("profiles[1].capacity", "minimum 4 is above maximum 2"),
            ("profiles[1].recurrence.frequency", "'Day' is not supported"),
            (
                "profiles[1].recurrence.schedule.timeZone",
                "unknown time zone 'Mars Standard Time'",
            ),
            (
                "profiles[1].recurrence.schedule.days[0]",
                "'Funday' is not a day",
            ),
            (
                "profiles[1].recurrence.schedule.hours[0]",
                "'24' is not valid hours (0–23)",
            ),
            ("profiles[2]", "has both fixedDate and recurrence"),
            ("profiles[3].fixedDate", "is not before end"),
            (
                "profiles",
                "2 profiles have neither fixedDate nor recurrence (profiles[0], profiles[4])",
            ),
            (
                "notifications[0].operation",
                "'Email' is not supported; it must be Scale",
            ),
            (
                "notifications[0].webhooks[0].serviceUri",
                "is not an http:// or https:// URL",
            ),
        ],
    );
}

#[test]
fn the_error_message_lists_every_problem() {
    let err = Setting::from_json(
        r#"{"profiles": [{"name": "p", "capacity": {"minimum": "0", "maximum": "2000", "default": "1"}}]}"#,
        &STRICT,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert_eq!(
        err,
        "the autoscale setting was refused; fix these 2 problem(s):\n  \
         - profiles[0].capacity.minimum: is 0; a plan always runs at least 1 instance (Stamp)\n  \
         - profiles[0].capacity.maximum: is 2000; Stamp allows at most 1000"
    );
    let not_json = Setting::from_json("{\"profiles\": [", &STRICT)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        not_json.starts_with("the autoscale setting is not valid JSON"),
        "{not_json}"
    );
}

#[test]
fn azure_limits_on_counts() {
    let profile = |i: usize, rules: usize| {
        json!({"name": format!("p{i}"), "capacity": {"minimum": "1", "maximum": "5", "default": "1"},
               "rules": (0..rules).map(|_| rule("CpuPercentage > 70 +1")).collect::<Vec<_>>(),
               "fixedDate": {"timeZone": "UTC", "start": format!("2024-01-{:02}T00:00:00", i + 1),
                             "end": format!("2024-01-{:02}T12:00:00", i + 1)}})
    };
    let mut profiles: Vec<Value> = (0..21).map(|i| profile(i, 0)).collect();
    profiles[3] = profile(3, 11);
    check(
        json!({"profiles": profiles}),
        STRICT,
        &[
            ("profiles", "has 21 profiles; Azure allows at most 20"),
            (
                "profiles[3].rules",
                "has 11 rules; Azure allows at most 10 per profile",
            ),
        ],
    );
    let twenty: Vec<Value> = (0..20).map(|i| profile(i, 10)).collect();
    check(json!({"profiles": twenty}), STRICT, &[]);
    check(json!({"profiles": []}), STRICT, &[("profiles", "is empty")]);
    check(json!({}), STRICT, &[("profiles", "is required")]);
}

#[test]
fn durations_strict_and_relaxed() {
    let with = |grain: &str, window: &str, cooldown: &str| {
        json!({"profiles": [{"name": "p", "capacity": {"minimum": "1", "maximum": "5", "default": "1"},
            "rules": [{"metricTrigger": {"metricName": "CpuPercentage", "timeGrain": grain, "statistic": "Average",
                "timeWindow": window, "timeAggregation": "Average", "operator": "GreaterThan", "threshold": 70},
              "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": cooldown}}]}]})
    };
    // Azure's edges are accepted.
    check(with("PT1M", "PT5M", "PT1M"), STRICT, &[]);
    check(with("PT12H", "PT12H", "P7D"), STRICT, &[]);
    check(with("PT1H30M", "PT1H30M", "PT1H30M"), STRICT, &[]);
    // Below Azure's floors: refused with a hint, accepted when relaxed.
    check(
        with("PT1S", "PT10S", "PT5S"),
        STRICT,
        &[
            (
                "profiles[0].rules[0].metricTrigger.timeGrain",
                "relaxed mode",
            ),
            (
                "profiles[0].rules[0].metricTrigger.timeWindow",
                "relaxed mode",
            ),
            ("profiles[0].rules[0].scaleAction.cooldown", "relaxed mode"),
        ],
    );
    check(with("PT1S", "PT10S", "PT5S"), RELAXED, &[]);
    // Relaxed still has a floor and a ceiling, and the window must hold a grain.
    check(
        with("PT0.5S", "PT13H", "P8D"),
        RELAXED,
        &[
            (
                "profiles[0].rules[0].metricTrigger.timeGrain",
                "outside the allowed range PT1S–PT12H",
            ),
            (
                "profiles[0].rules[0].metricTrigger.timeWindow",
                "outside the allowed range PT1S–PT12H",
            ),
            (
                "profiles[0].rules[0].scaleAction.cooldown",
                "outside the allowed range PT1S–P7D",
            ),
        ],
    );
    check(
        with("PT10M", "PT5M", "PT5M"),
        STRICT,
        &[(
            "profiles[0].rules[0].metricTrigger.timeWindow",
            "shorter than the time grain PT10M",
        )],
    );
    check(
        with("P1M", "PT5M", "PT5M"),
        STRICT,
        &[(
            "profiles[0].rules[0].metricTrigger.timeGrain",
            "years and months",
        )],
    );
}

#[test]
fn tier_cap_and_defaults() {
    let s = json!({"profiles": [{"name": "p", "capacity": {"minimum": 12, "maximum": 20, "default": 12}, "rules": []}]});
    check(
        s.clone(),
        ValidationOptions {
            relaxed: false,
            max_instances: Some(10),
        },
        &[(
            "profiles[0].capacity.minimum",
            "the plan's tier allows at most 10 instances",
        )],
    );
    // Numbers instead of strings are accepted; maximum above the tier's cap is fine (it is capped).
    check(
        s,
        ValidationOptions {
            relaxed: false,
            max_instances: Some(12),
        },
        &[],
    );
    // `enabled` and `value` default to true and 1; enum names ignore case.
    let s = Setting::from_json(
        &json!({"profiles": [{"name": "p", "capacity": {"minimum": "1", "maximum": "5", "default": "1"},
            "rules": [{"metricTrigger": {"metricName": "CpuPercentage", "timeGrain": "PT1M", "statistic": "average",
                "timeWindow": "PT5M", "timeAggregation": "AVERAGE", "operator": "greaterthan", "threshold": "70"},
              "scaleAction": {"direction": "increase", "type": "changecount", "cooldown": "PT5M"}}]}]})
        .to_string(),
        &STRICT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(s.enabled);
    assert_eq!(s.profiles[0].rules[0].action.value, 1);
    assert_eq!(s.profiles[0].rules[0].trigger.threshold, 70.0);
}
