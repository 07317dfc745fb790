//! Inflation rate (App Service Environment guidance, seed 004): per profile, instances per hour
//! added and removed; for a worker pool, the total and the recommended buffer and steps.

use serde_json::json;
use stamp_autoscale::{PoolMember, Setting, inflation, pool_inflation};

use crate::support::{rule, setting, t};

/// The seed's production plan: weekday 5–20 (+2 above 60 %, cooldown 15; −1 below 30 %, cooldown
/// 20), weekend 3–10 (+1 above 80 %, cooldown 20; −1 below 20 %, cooldown 10), time zone UTC−08.
pub fn lob_plan() -> Setting {
    setting(json!({
        "profiles": [
            {"name": "Weekday profile", "capacity": {"minimum": "5", "maximum": "20", "default": "5"},
             "rules": [rule("CpuPercentage > 60 +2 cd=PT15M window=PT5M"),
                       rule("CpuPercentage < 30 -1 cd=PT20M window=PT10M")],
             "recurrence": {"frequency": "Week", "schedule": {"timeZone": "UTC-08",
                "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"], "hours": [9], "minutes": [0]}}},
            {"name": "Weekend profile", "capacity": {"minimum": "3", "maximum": "10", "default": "3"},
             "rules": [rule("CpuPercentage > 80 +1 cd=PT20M window=PT10M"),
                       rule("CpuPercentage < 20 -1 cd=PT10M window=PT15M")],
             "recurrence": {"frequency": "Week", "schedule": {"timeZone": "UTC-08",
                "days": ["Saturday", "Sunday"], "hours": [9], "minutes": [0]}}}
        ]
    }))
}

/// Each (profile, add/h, remove/h).
#[track_caller]
fn check(setting: &Setting, expected: &[(&str, f64, f64)]) {
    let got: Vec<(String, f64, f64)> = inflation(setting)
        .into_iter()
        .map(|r| (r.profile, r.add_per_hour, r.remove_per_hour))
        .collect();
    let want: Vec<(String, f64, f64)> = expected
        .iter()
        .map(|(p, a, r)| (p.to_string(), *a, *r))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn seed_lob_plan_follows_the_formula() {
    // Weekday: 2 × 60 / 15 = 8 up (the seed agrees), 1 × 60 / 20 = 3 down (the seed says 4).
    // Weekend: 1 × 60 / 20 = 3 up (the seed says 4), 1 × 60 / 10 = 6 down (the seed agrees).
    check(
        &lob_plan(),
        &[("Weekday profile", 8.0, 3.0), ("Weekend profile", 3.0, 6.0)],
    );
}

#[test]
fn percent_and_exact_actions_and_the_fastest_rule() {
    let s = setting(json!({"profiles": [
        {"name": "percent", "capacity": {"minimum": "2", "maximum": "20", "default": "2"},
         // +10 % at the maximum 20 adds ceil(22) − 20 = 2 per 30 min → 4/h; −50 % at 20 removes 10 per hour.
         "rules": [rule("CpuPercentage > 70 +10% cd=PT30M"), rule("CpuPercentage < 20 -50% cd=PT1H")]},
        {"name": "exact", "capacity": {"minimum": "2", "maximum": "20", "default": "2"},
         "fixedDate": {"start": "2024-01-01T00:00:00", "end": "2024-01-02T00:00:00"},
         // Increase count to 10 from the minimum 2: 8 per hour; decrease count to 4 from 20: 16 per 2 h.
         "rules": [rule("CpuPercentage > 70 +=10 cd=PT1H"), rule("CpuPercentage < 20 -=4 cd=PT2H")]},
        {"name": "two out-rules", "capacity": {"minimum": "1", "maximum": "10", "default": "1"},
         "fixedDate": {"start": "2024-02-01T00:00:00", "end": "2024-02-02T00:00:00"},
         // One cooldown per setting: the fastest rule sets the rate (3 per 10 min = 18/h), they do not add.
         "rules": [rule("CpuPercentage > 70 +1 cd=PT5M"), rule("MemoryPercentage > 70 +3 cd=PT10M")]},
        {"name": "relaxed seconds", "capacity": {"minimum": "1", "maximum": "10", "default": "1"},
         "fixedDate": {"start": "2024-03-01T00:00:00", "end": "2024-03-02T00:00:00"},
         "rules": [rule("CpuPercentage > 70 +1 cd=PT30S")]},
    ]}));
    check(
        &s,
        &[
            ("percent", 4.0, 10.0),
            ("exact", 8.0, 8.0),
            ("two out-rules", 18.0, 0.0),
            ("relaxed seconds", 120.0, 0.0),
        ],
    );
}

#[test]
fn worker_pool_recommendations() {
    let plan = lob_plan();
    let members = [PoolMember::Autoscaled {
        plan: "production",
        setting: &plan,
    }];
    // Monday 10:00 UTC−08: weekday profile. Pool: 5 + 8 = 13 minimum (the seed's 13), increase by 8.
    let weekday = pool_inflation(&members, t("2024-01-08T18:00:00Z"));
    assert_eq!(
        (
            weekday.buffer_minimum,
            weekday.buffer_maximum,
            weekday.increase_count,
            weekday.decrease_count
        ),
        (13, 20, 8, (2, 3))
    );
    // Saturday 10:00: weekend profile. 3 + 3 = 6 (the seed's 6), increase by 3 (the seed's 3).
    let weekend = pool_inflation(&members, t("2024-01-13T18:00:00Z"));
    assert_eq!(
        (
            weekend.buffer_minimum,
            weekend.buffer_maximum,
            weekend.increase_count,
            weekend.decrease_count
        ),
        (6, 10, 3, (3, 6))
    );
    // Several plans: rates add up; a manual plan adds its fixed size and no inflation.
    let other = setting(
        json!({"profiles": [{"name": "api", "capacity": {"minimum": "2", "maximum": "8", "default": "2"},
        "rules": [rule("CpuPercentage > 70 +1 cd=PT10M"), rule("CpuPercentage < 30 -1 cd=PT20M")]}]}),
    );
    let members = [
        PoolMember::Autoscaled {
            plan: "production",
            setting: &plan,
        },
        PoolMember::Autoscaled {
            plan: "api",
            setting: &other,
        },
        PoolMember::Manual {
            plan: "qa",
            workers: 5,
        },
    ];
    let pool = pool_inflation(&members, t("2024-01-08T18:00:00Z"));
    assert_eq!(pool.total_add_per_hour, 14.0);
    assert_eq!(pool.total_remove_per_hour, 6.0);
    assert_eq!(
        (
            pool.buffer_minimum,
            pool.buffer_maximum,
            pool.increase_count,
            pool.decrease_count
        ),
        (5 + 2 + 5 + 14, 20 + 8 + 5, 14, (3, 6))
    );
    let text = pool.render();
    assert!(
        text.contains(
            "recommended pool range: 26–33 instances; add 14 per scale-out; remove 3–6 per scale-in"
        ),
        "{text}"
    );
    let table = stamp_autoscale::inflation::render(&inflation(&plan));
    assert!(table.contains("Weekday profile"), "{table}");
}
