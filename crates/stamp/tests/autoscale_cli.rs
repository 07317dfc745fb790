//! `stamp autoscale simulate` and `stamp autoscale inflation`: the real binary on the sample files
//! in `examples/autoscale/`, with an empty data directory and no stamp running (the commands run
//! the engine locally). Figures are checked against the engine called here, and the example
//! week's timeline against the capacities the scenario should reach.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use stamp_autoscale::{
    PoolInflation, PoolMember, ProfileInflation, Reason, Setting, Timeline, Trace,
    ValidationOptions, inflation, pool_inflation, simulate,
};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stamp");

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/autoscale")
        .join(name)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad time {text}: {e}"))
        .with_timezone(&Utc)
}

/// Runs `stamp ARGS` on an empty data directory, with no API to reach; bounded by a timeout.
async fn stamp(args: &[&str]) -> Output {
    let data = tempfile::tempdir().expect("temp dir");
    let child = Command::new(BIN)
        .args(args)
        .env("STAMP_DATA_DIR", data.path())
        .env_remove("STAMP_API")
        .env_remove("STAMP_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start stamp");
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("stamp {args:?} did not finish in 120 s"))
        .expect("wait for stamp")
}

/// Runs a command that must succeed; returns its stdout.
async fn ok(args: &[&str]) -> String {
    let out = stamp(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stamp {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command that must fail; returns its stderr.
async fn fails(args: &[&str]) -> String {
    let out = stamp(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "stamp {args:?} should fail; printed {stdout}"
    );
    assert!(
        stdout.trim().is_empty(),
        "a failure prints nothing on stdout: {stdout}"
    );
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

fn load(path: &Path) -> Setting {
    let text = std::fs::read_to_string(path).expect("read setting");
    Setting::from_json(&text, &ValidationOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn simulate_the_example_week() {
    let setting = example("lob-setting.json");
    let trace = example("lob-week.csv");
    let args = [
        "autoscale",
        "simulate",
        "--setting",
        path_str(&setting),
        "--trace",
        path_str(&trace),
        "--interval",
        "1m",
    ];
    let json = ok(&[&args[..], &["--output", "json"]].concat()).await;
    let timeline: Timeline = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));

    // Monday 00:00 Pacific (UTC−08 in November) is 08:00Z; the trace's first row.
    let monday = t("2026-11-23T08:00:00Z");
    assert_eq!(timeline.start, monday);
    // Without --initial: the default of the profile active at the start (the evening companion
    // of the weekend profile, 2).
    assert_eq!(timeline.capacity[0].capacity, 2);
    let expected: &[(&str, u32)] = &[
        ("Mon 08:59", 2), // the companion's range 2–6: 100 over 2 = 50 %, no rule fires
        ("Mon 09:00", 5), // the weekday profile: minimum 5
        ("Mon 09:30", 9), // 450 → 90 % at 5, +2 → 64 % at 7, +2 → 50 % at 9
        ("Mon 12:30", 9), // lunch, 520 → 58 % at 9: not above 60
        ("Mon 17:59", 8), // 250 → 27.8 % at 9 < 30: −1 → 31 % at 8
        ("Mon 18:00", 6), // the weekday companion: maximum 6
        ("Mon 18:59", 3), // 100 → 16.7 % at 6: −1 every 10 min to 33 % at 3
        ("Tue 09:30", 9), // every weekday alike
        ("Fri 18:00", 6), //
        ("Sat 09:00", 3), // the weekend profile: 3–10
        ("Sat 10:30", 4), // 250 → 83 % at 3 > 80: +1 → 62.5 % at 4
        ("Sat 17:59", 4), // 100 → 25 % at 4: not below 20
        ("Sat 18:30", 3), // the weekend companion: 25 % < 30: −1 → 33 % at 3
        ("Sun 10:30", 4), //
        ("Sun 23:59", 3), //
    ];
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let mut failures = Vec::new();
    for (when, want) in expected {
        let (day, hm) = when.split_once(' ').expect("day and time");
        let (h, m) = hm.split_once(':').expect("hh:mm");
        let day = days.iter().position(|d| *d == day).expect("day") as i64;
        let at = monday
            + TimeDelta::days(day)
            + TimeDelta::hours(h.parse().expect("hour"))
            + TimeDelta::minutes(m.parse().expect("minute"));
        let got = timeline.capacity_at(at);
        if got != *want {
            failures.push(format!("{when}: expected {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}\n{json}", failures.join("\n"));

    // The weekday profile's rules move by +2 and −1; bounds corrections are the only other steps.
    let weekday_steps: Vec<i64> = timeline
        .actions()
        .filter(|e| {
            e.profile
                .as_ref()
                .is_some_and(|p| &*p.name == "Weekday profile")
        })
        .filter(|e| !matches!(e.decision.reason, Reason::Bounds { .. }))
        .map(|e| i64::from(e.decision.target) - i64::from(e.current))
        .collect();
    assert!(weekday_steps.contains(&2) && weekday_steps.contains(&-1));
    assert!(
        weekday_steps.iter().all(|s| *s == 2 || *s == -1),
        "{weekday_steps:?}"
    );

    // The CLI shows exactly what the engine computes.
    let engine = simulate(
        &load(&setting),
        &Trace::parse_csv(&std::fs::read_to_string(&trace).expect("read trace"))
            .unwrap_or_else(|e| panic!("{e}")),
        None,
        Duration::from_secs(60),
        2,
        stamp_autoscale::setting::MAX_CAPACITY,
    );
    assert_eq!(timeline, engine);

    // For people: the capacity path and every decision with its reason.
    let text = ok(&args).await;
    assert_eq!(text, engine.render());
    assert!(text.contains("capacity: 2 → 5 → 7 → 9"), "{text}");
    assert!(text.contains("[Scale]"), "{text}");
    assert!(text.contains("Weekend profile"), "{text}");
}

#[tokio::test]
async fn simulate_options() {
    // --start, --initial, --max-instances and --per-instance with a trace of offsets.
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = dir.path().join("offsets.csv");
    std::fs::write(&trace, "time,CpuPercentage\n0,100\n1h,100\n").expect("write trace");
    let setting = example("lob-setting.json");
    let json = ok(&[
        "autoscale",
        "simulate",
        "--setting",
        path_str(&setting),
        "--trace",
        path_str(&trace),
        "--start",
        "2026-11-24T17:00:00Z", // Tuesday 09:00 Pacific: the weekday profile starts
        "--interval",
        "5m",
        "--initial",
        "1",
        "--max-instances",
        "7",
        "--per-instance",
        "-o",
        "json",
    ])
    .await;
    let timeline: Timeline = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(timeline.start, t("2026-11-24T17:00:00Z"));
    assert_eq!(timeline.end, t("2026-11-24T18:00:00Z"));
    assert_eq!(timeline.interval, Duration::from_secs(300));
    assert_eq!(timeline.evaluations, 13);
    // 1 → 5 (weekday minimum), then 100 % of one instance over 5 = 20 % < 30 …
    // but the weekday minimum holds at 5; with --max-instances 7 nothing goes above 7.
    assert_eq!(timeline.capacity[0].capacity, 1);
    assert_eq!(timeline.capacity_at(t("2026-11-24T17:00:00Z")), 5);
    assert!(timeline.capacity.iter().all(|p| p.capacity <= 7));
    assert!(timeline.decisions.iter().all(|e| e.max_instances == 7));
}

#[tokio::test]
async fn an_invalid_setting_lists_every_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let setting = dir.path().join("bad.json");
    std::fs::write(
        &setting,
        r#"{
  "enabled": true,
  "profiles": [{
    "name": "Weekday",
    "capacity": {"minimum": "5", "maximum": "2", "default": "3"},
    "rules": [{
      "metricTrigger": {"metricName": "CpuPercentage", "timeGrain": "PT1M", "statistic": "Average",
                        "timeWindow": "PT10M", "timeAggregation": "Average",
                        "operator": "Above", "threshold": 70},
      "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "0", "cooldown": "PT10S"}
    }]
  }]
}"#,
    )
    .expect("write setting");
    let trace = example("lob-week.csv");
    let stderr = fails(&[
        "autoscale",
        "simulate",
        "--setting",
        path_str(&setting),
        "--trace",
        path_str(&trace),
    ])
    .await;
    for path in [
        "profiles[0].capacity",
        "profiles[0].rules[0].metricTrigger.operator",
        "profiles[0].rules[0].scaleAction.value",
        "profiles[0].rules[0].scaleAction.cooldown",
    ] {
        assert!(stderr.contains(path), "no problem at {path}:\n{stderr}");
    }
    assert!(stderr.contains("bad.json"), "{stderr}");
    assert!(stderr.contains("'Above'"), "{stderr}");
    // Not only the first problem: every one on its own line.
    assert!(stderr.matches("\n  - profiles[0]").count() >= 4, "{stderr}");

    // A setting refused only for Azure's floors says --relaxed would take it, and it does.
    let short = dir.path().join("short.json");
    std::fs::write(
        &short,
        r#"{"profiles": [{"name": "p", "capacity": {"minimum": "1", "maximum": "3", "default": "1"},
           "rules": [{"metricTrigger": {"metricName": "CpuPercentage", "timeGrain": "PT5S",
                      "statistic": "Average", "timeWindow": "PT10S", "timeAggregation": "Average",
                      "operator": "GreaterThan", "threshold": 70},
                      "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1",
                                      "cooldown": "PT20S"}}]}]}"#,
    )
    .expect("write setting");
    let trace = dir.path().join("burst.csv");
    std::fs::write(&trace, "time,CpuPercentage\n0,95\n1m,95\n").expect("write trace");
    let base = [
        "autoscale",
        "simulate",
        "--setting",
        path_str(&short),
        "--trace",
        path_str(&trace),
        "--interval",
        "5s",
    ];
    let stderr = fails(&base).await;
    assert!(stderr.contains("--relaxed"), "{stderr}");
    let json = ok(&[&base[..], &["--relaxed", "-o", "json"]].concat()).await;
    let timeline: Timeline = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(timeline.capacity.last().map(|p| p.capacity), Some(3));
}

#[tokio::test]
async fn a_bad_trace_line_is_reported_with_its_number() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = dir.path().join("load.csv");
    std::fs::write(
        &trace,
        "# comment lines count\ntime,CpuPercentage\n0,50\n5m,abc\n",
    )
    .expect("write trace");
    let setting = example("lob-setting.json");
    let stderr = fails(&[
        "autoscale",
        "simulate",
        "--setting",
        path_str(&setting),
        "--trace",
        path_str(&trace),
    ])
    .await;
    assert!(stderr.contains("load.csv"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("'abc' is not a number"), "{stderr}");

    // And a bad duration is refused before anything runs.
    let out = stamp(&[
        "autoscale",
        "simulate",
        "--setting",
        path_str(&setting),
        "--trace",
        path_str(&trace),
        "--interval",
        "soon",
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
}

#[tokio::test]
async fn inflation_of_the_example_setting() {
    let path = example("lob-setting.json");
    let engine = inflation(&load(&path));
    let args = ["autoscale", "inflation", "--setting", path_str(&path)];

    let json = ok(&[&args[..], &["-o", "json"]].concat()).await;
    let rates: Vec<ProfileInflation> =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(rates, engine);
    // The formula: instances × 60 / cooldown minutes, the fastest rule of each profile.
    let figures: Vec<(f64, f64)> = rates
        .iter()
        .map(|r| (r.add_per_hour, r.remove_per_hour))
        .collect();
    assert_eq!(
        figures,
        [(8.0, 3.0), (3.0, 6.0), (6.0, 6.0), (6.0, 6.0)],
        "+2/15 min and −1/20 min; +1/20 min and −1/10 min; companions ±1/10 min"
    );

    let text = ok(&args).await;
    assert_eq!(text, stamp_autoscale::inflation::render(&engine));
    assert!(text.contains("Weekday profile"), "{text}");

    // --help says where reading a stored setting will come from.
    let help = ok(&["autoscale", "inflation", "--help"]).await;
    assert!(help.contains("stamp autoscale inflation PLAN"), "{help}");
}

#[tokio::test]
async fn pool_inflation_of_two_settings_and_a_manual_plan() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A second plan without targetResourceUri: named after its file.
    let batch = dir.path().join("batch.json");
    std::fs::write(
        &batch,
        r#"{"profiles": [{"name": "Always", "capacity": {"minimum": "2", "maximum": "12", "default": "2"},
           "rules": [
             {"metricTrigger": {"metricName": "HttpQueueLength", "timeGrain": "PT1M", "statistic": "Average",
                                "timeWindow": "PT5M", "timeAggregation": "Average", "operator": "GreaterThan",
                                "threshold": 100},
              "scaleAction": {"direction": "Increase", "type": "PercentChangeCount", "value": "50", "cooldown": "PT30M"}},
             {"metricTrigger": {"metricName": "HttpQueueLength", "timeGrain": "PT1M", "statistic": "Average",
                                "timeWindow": "PT10M", "timeAggregation": "Average", "operator": "LessThan",
                                "threshold": 10},
              "scaleAction": {"direction": "Decrease", "type": "ChangeCount", "value": "1", "cooldown": "PT15M"}}]}]}"#,
    )
    .expect("write setting");
    let lob = example("lob-setting.json");
    // Tuesday 10:00 Pacific: the LOB plan is in its weekday profile.
    let at = "2026-11-24T18:00:00Z";
    let args = [
        "autoscale",
        "inflation",
        "--setting",
        path_str(&lob),
        "--setting",
        path_str(&batch),
        "--workers",
        "reports=4",
        "--at",
        at,
    ];

    let (lob_setting, batch_setting) = (load(&lob), load(&batch));
    let engine = pool_inflation(
        &[
            PoolMember::Autoscaled {
                plan: "lob-plan",
                setting: &lob_setting,
            },
            PoolMember::Autoscaled {
                plan: "batch",
                setting: &batch_setting,
            },
            PoolMember::Manual {
                plan: "reports",
                workers: 4,
            },
        ],
        t(at),
    );

    let json = ok(&[&args[..], &["-o", "json"]].concat()).await;
    let pool: PoolInflation = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(pool, engine);
    // lob-plan weekday: +8/h; batch: 50 % of 12 = 6 per 30 min = 12/h; reports: manual.
    assert_eq!(pool.total_add_per_hour, 20.0);
    assert_eq!(pool.buffer_minimum, 5 + 2 + 4 + 20);
    assert_eq!(pool.buffer_maximum, 20 + 12 + 4);
    assert_eq!(pool.increase_count, 20);
    assert_eq!(
        pool.plans
            .iter()
            .map(|p| p.plan.as_str())
            .collect::<Vec<_>>(),
        ["lob-plan", "batch", "reports"]
    );

    let text = ok(&args).await;
    assert_eq!(text, engine.render());
    assert!(text.contains("recommended pool range: 31–36"), "{text}");

    // One setting plus a manual plan is a pool too.
    let json = ok(&[
        "autoscale",
        "inflation",
        "--setting",
        path_str(&batch),
        "--workers",
        "reports=4",
        "--at",
        at,
        "-o",
        "json",
    ])
    .await;
    let pool: PoolInflation = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(pool.plans.len(), 2);
    assert_eq!(pool.increase_count, 12);
}
