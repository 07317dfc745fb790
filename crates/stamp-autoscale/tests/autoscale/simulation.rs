//! The simulator over a synthetic week of a line-of-business app (seed 004): weekday and weekend
//! profiles with different ranges, +2 above 60 % CPU, −1 below 30 %; the portal's companion
//! profiles end the working day at 18:00.

use std::time::Duration;

use serde_json::{Value, json};
use stamp_autoscale::{Setting, Trace, simulate};

use crate::support::{rule, setting, t};

fn weekly(days: &[&str], hour: u32) -> Value {
    json!({"frequency": "Week", "schedule": {"timeZone": "UTC-08", "days": days, "hours": [hour], "minutes": [0]}})
}

const WEEKDAYS: &[&str] = &["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"];
const WEEKEND: &[&str] = &["Saturday", "Sunday"];

fn lob_setting() -> Setting {
    let evening = |of: &str, days: &[&str]| {
        json!({"name": format!("{{\"name\":\"Auto created default scale condition\",\"for\":\"{of}\"}}"),
               "capacity": {"minimum": "2", "maximum": "6", "default": "2"},
               "rules": [rule("CpuPercentage > 60 +1 cd=PT10M window=PT5M"),
                         rule("CpuPercentage < 30 -1 cd=PT10M window=PT10M")],
               "recurrence": weekly(days, 18)})
    };
    setting(json!({
        "enabled": true,
        "profiles": [
            {"name": "Weekday profile", "capacity": {"minimum": "5", "maximum": "20", "default": "5"},
             "rules": [rule("CpuPercentage > 60 +2 cd=PT15M window=PT5M"),
                       rule("CpuPercentage < 30 -1 cd=PT20M window=PT10M")],
             "recurrence": weekly(WEEKDAYS, 9)},
            {"name": "Weekend profile", "capacity": {"minimum": "3", "maximum": "10", "default": "3"},
             "rules": [rule("CpuPercentage > 80 +1 cd=PT20M window=PT10M"),
                       rule("CpuPercentage < 20 -1 cd=PT10M window=PT15M")],
             "recurrence": weekly(WEEKEND, 9)},
            evening("Weekday profile", WEEKDAYS),
            evening("Weekend profile", WEEKEND),
        ]
    }))
}

/// Total CPU load in instance-percent (300 = three busy instances' worth), local time (UTC−08).
/// Weekdays: 100 at night, 450 from 09:00, 520 over lunch, 250 from 17:00, 100 from 18:00.
/// Weekend: 100, 250 from 10:00 to 16:00.
fn week_trace() -> String {
    let mut csv = String::from(
        "# a synthetic week, Monday 2024-01-01 00:00 UTC-08 onward\ntime,CpuPercentage:per_instance\n",
    );
    let weekday = [
        (0, 100),
        (9, 450),
        (12, 520),
        (13, 450),
        (17, 250),
        (18, 100),
    ];
    let weekend = [(0, 100), (10, 250), (16, 100)];
    for day in 0..7 {
        let hours: &[(u32, u32)] = if day < 5 { &weekday } else { &weekend };
        for (hour, load) in hours {
            csv.push_str(&format!("{}h,{load}\n", day * 24 + hour));
        }
    }
    csv.push_str("168h,100\n");
    csv
}

#[test]
fn line_of_business_week() {
    let trace = Trace::parse_csv(&week_trace()).unwrap_or_else(|e| panic!("{e}"));
    // Monday 00:00 in UTC−08 is 08:00Z.
    let start = t("2024-01-01T08:00:00Z");
    let timeline = simulate(
        &lob_setting(),
        &trace,
        Some(start),
        Duration::from_secs(60),
        2,
        30,
    );
    let render = timeline.render();

    // (local time as day HH:MM, expected capacity)
    let expected: &[(&str, u32)] = &[
        ("Mon 00:30", 2), // companion of the weekend: 100 over 2 = 50 %, between 30 and 60
        ("Mon 08:59", 2),
        ("Mon 09:00", 5), // weekday minimum 5
        ("Mon 09:30", 9), // 450 → 90 % at 5, +2 → 64 % at 7, +2 → 50 % at 9
        ("Mon 12:30", 9), // lunch 520 → 58 % at 9: below 60
        ("Mon 17:59", 8), // 250 → 27.8 % at 9: −1 → 31 % at 8
        ("Mon 18:00", 6), // companion maximum 6
        ("Mon 18:59", 3), // 100 → 16.7 % at 6, −1 every 10 min down to 33 % at 3
        ("Tue 08:59", 3),
        ("Tue 09:00", 5),
        ("Tue 09:30", 9),
        ("Fri 18:00", 6),
        ("Sat 08:59", 3),
        ("Sat 09:00", 3), // weekend range 3–10
        ("Sat 10:30", 4), // 250 → 83 % at 3 > 80 → +1 → 62.5 % at 4
        ("Sat 17:59", 4), // 100 → 25 % at 4: not below 20
        ("Sat 18:30", 3), // companion: 25 % < 30 → −1 → 33 %
        ("Sun 10:30", 4),
        ("Sun 23:59", 3),
    ];
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let mut failures = Vec::new();
    for (when, want) in expected {
        let (day, hm) = when.split_once(' ').unwrap_or_default();
        let (h, m) = hm.split_once(':').unwrap_or_default();
        let d = days.iter().position(|x| *x == day).unwrap_or_default() as i64;
        let at = start
            + chrono::TimeDelta::days(d)
            + chrono::TimeDelta::hours(h.parse().unwrap_or_default())
            + chrono::TimeDelta::minutes(m.parse().unwrap_or_default());
        let got = timeline.capacity_at(at);
        if got != *want {
            failures.push(format!("{when}: expected {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}\n\n{render}", failures.join("\n"));

    // Every action stays inside the active profile's range and scale-outs in the weekday profile
    // are by 2 (or up to the maximum), scale-ins by 1.
    for e in timeline.actions() {
        let p = e.profile.as_ref().expect("a profile is always active");
        assert!(
            (p.capacity.minimum..=p.capacity.maximum).contains(&e.decision.target),
            "{}",
            e.summary()
        );
        if &*p.name == "Weekday profile" {
            let step = i64::from(e.decision.target) - i64::from(e.current);
            let bounds = matches!(e.decision.reason, stamp_autoscale::Reason::Bounds { .. });
            assert!(bounds || step == 2 || step == -1, "{}", e.summary());
        }
    }
    assert_eq!(timeline.evaluations, 7 * 24 * 60 + 1);
    assert!(render.contains("[Scale]"), "{render}");
}

#[test]
fn trace_parsing() {
    let trace = Trace::parse_csv(
        "time,CpuPercentage,Requests:per_instance\n2024-01-01T00:00:00Z,50,\n2024-01-01T00:05:00Z,60,300\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(trace.columns.len(), 2);
    assert!(!trace.columns[0].per_instance && trace.columns[1].per_instance);
    assert_eq!(trace.rows[0].values, vec![Some(50.0), None]);

    for (text, line, fragment) in [
        ("", 1, "the trace is empty"),
        ("time\n0,1\n", 1, "at least one named metric column"),
        ("time,Cpu\n0,abc\n", 2, "'abc' is not a number"),
        (
            "time,Cpu\n0,1,2\n",
            2,
            "has 2 values but the header names 1 metrics",
        ),
        ("time,Cpu\n5m,1\n1m,2\n", 3, "times must not go backwards"),
        (
            "time,Cpu\n0,1\n2024-01-01T00:00:00Z,2\n",
            3,
            "mixes absolute times and offsets",
        ),
        ("time,Cpu\nyesterday,1\n", 2, "neither an RFC 3339 time"),
        ("time,Cpu\n", 1, "no rows"),
    ] {
        let err = Trace::parse_csv(text)
            .err()
            .unwrap_or_else(|| panic!("{text:?} should fail"));
        assert_eq!(err.line, line, "{text:?}: {err}");
        assert!(err.message.contains(fragment), "{text:?}: {err}");
    }
    for offset in ["90", "90s", "1m30s", "PT1M30S"] {
        let trace =
            Trace::parse_csv(&format!("time,Cpu\n{offset},1\n")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            trace.rows[0].at,
            stamp_autoscale::simulate::TraceTime::Offset(Duration::from_secs(90))
        );
    }
}

#[test]
fn short_windows_and_missing_metrics_in_a_simulation() {
    // Relaxed (self-hosted) windows of 10 s: missing data raises to the default, a burst scales
    // out, a gap never scales in, and the return of data is reported.
    let s = crate::support::one_profile(
        1,
        5,
        2,
        &[
            "CpuPercentage > 70 +1 cd=PT20S window=PT10S grain=PT5S",
            "CpuPercentage < 20 -1 cd=PT20S window=PT10S grain=PT5S",
        ],
    );
    let trace = Trace::parse_csv("time,CpuPercentage\n0,10\n30s,95\n60s,\n90s,50\n120s,50\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let timeline = simulate(&s, &trace, None, Duration::from_secs(5), 1, 10);
    let lines: Vec<String> = timeline
        .decisions
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                (e.at - timeline.start).num_seconds(),
                crate::support::brief(e)
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            // No data yet: raised to the default 2 …
            "0 1→2 metricsUnavailable [MetricsUnavailable]",
            // … and the first grain shows 10 % < 20: back to 1, starting a 20 s cooldown.
            "5 2→1 scaleIn [MetricsRecovered]",
            "10 1 cooldown",
            "25 1 atLimit",
            "35 1 noRuleFired",
            // The burst: 95 % over the whole 10 s window.
            "40 1→2 scaleOut",
            "45 2 cooldown",
            "60 2→3 scaleOut",
            "65 3 cooldown",
            // The gap: never scale in without metrics (3 ≥ default 2), even during the cooldown.
            "70 3 metricsUnavailable [MetricsUnavailable]",
            "95 3 noRuleFired [MetricsRecovered]",
        ],
        "{}",
        timeline.render()
    );
}
