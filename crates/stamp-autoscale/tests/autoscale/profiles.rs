//! Profile selection: time zones (Windows ids and IANA) with daylight saving, fixed-date over
//! recurring precedence, recurrences running until the next start, the portal's companion
//! profiles, and bounds enforced when the profile changes.

use serde_json::{Value, json};
use stamp_autoscale::{
    ProfileWhy, ScaleState, Setting, SettingSpec, ValidationOptions, active_profile, evaluate,
};

use crate::support::{brief, constant, rule, setting, t};

fn recurring(name: &str, zone: &str, days: &[&str], hour: u32, minute: u32) -> Value {
    json!({
        "name": name,
        "capacity": {"minimum": "1", "maximum": "10", "default": "1"},
        "rules": [],
        "recurrence": {"frequency": "Week", "schedule": {
            "timeZone": zone, "days": days, "hours": [hour], "minutes": [minute]
        }}
    })
}

fn default_profile() -> Value {
    json!({"name": "Auto created scale condition",
           "capacity": {"minimum": "1", "maximum": "10", "default": "1"}, "rules": []})
}

/// Each (instant, expected display name of the active profile; "-" = none).
#[track_caller]
fn check(setting: &Setting, cases: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for (at, expect) in cases {
        let got = active_profile(setting, t(at)).map_or("-".to_string(), |(i, _)| {
            setting.profiles[i].display_name().to_string()
        });
        if got != *expect {
            failures.push(format!("{at}: expected '{expect}', got '{got}'"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

const WEEKDAYS: &[&str] = &["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"];

#[test]
fn pacific_time_follows_daylight_saving() {
    let s = setting(json!({"profiles": [
        default_profile(),
        recurring("Weekday", "Pacific Standard Time", WEEKDAYS, 9, 0),
        recurring("{\"name\":\"Auto created default scale condition\",\"for\":\"Weekday\"}",
                  "Pacific Standard Time", WEEKDAYS, 18, 0),
    ]}));
    check(
        &s,
        &[
            // January: PST = UTC−8, 09:00 local = 17:00Z.
            (
                "2024-01-08T16:59:00Z",
                "Auto created default scale condition (ends 'Weekday')",
            ),
            ("2024-01-08T17:00:00Z", "Weekday"),
            ("2024-01-09T01:59:00Z", "Weekday"),
            (
                "2024-01-09T02:00:00Z",
                "Auto created default scale condition (ends 'Weekday')",
            ),
            // July: PDT = UTC−7, 09:00 local = 16:00Z.
            (
                "2024-07-08T15:59:00Z",
                "Auto created default scale condition (ends 'Weekday')",
            ),
            ("2024-07-08T16:00:00Z", "Weekday"),
            ("2024-07-09T00:59:00Z", "Weekday"),
            (
                "2024-07-09T01:00:00Z",
                "Auto created default scale condition (ends 'Weekday')",
            ),
            // Friday 18:00 → the companion runs through the weekend until Monday 09:00.
            (
                "2024-01-13T12:00:00Z",
                "Auto created default scale condition (ends 'Weekday')",
            ),
        ],
    );
}

#[test]
fn daylight_saving_change_days() {
    // 2024-03-10: 02:00 PST jumps to 03:00 PDT; 2024-11-03: 02:00 PDT falls back to 01:00 PST.
    let s = setting(json!({"profiles": [
        default_profile(),
        recurring("Gap", "Pacific Standard Time", &["Sunday"], 2, 30),
        recurring("After", "Pacific Standard Time", &["Sunday"], 5, 0),
        recurring("Overlap", "Pacific Standard Time", &["Sunday"], 1, 30),
    ]}));
    check(
        &s,
        &[
            // 02:30 does not exist on 10 March: the profile starts when the gap ends, 03:00 PDT.
            ("2024-03-10T09:59:00Z", "Overlap"),
            ("2024-03-10T10:00:00Z", "Gap"),
            // 05:00 PDT = 12:00Z.
            ("2024-03-10T11:59:00Z", "Gap"),
            ("2024-03-10T12:00:00Z", "After"),
            // 01:30 happens twice on 3 November: the first (PDT, 08:30Z) counts.
            ("2024-11-03T08:29:00Z", "After"),
            ("2024-11-03T08:30:00Z", "Overlap"),
            ("2024-11-03T09:30:00Z", "Overlap"),
            // 02:30 PST = 10:30Z, 05:00 PST = 13:00Z.
            ("2024-11-03T10:30:00Z", "Gap"),
            ("2024-11-03T13:00:00Z", "After"),
        ],
    );
}

#[test]
fn zones_around_the_world() {
    let s = setting(json!({"profiles": [
        default_profile(),
        recurring("Berlin", "W. Europe Standard Time", &["Monday"], 8, 0),
        recurring("India", "India Standard Time", &["Tuesday"], 9, 0),
        recurring("London", "Europe/London", &["Wednesday"], 9, 0),
        recurring("Sydney", "AUS Eastern Standard Time", &["Thursday"], 9, 0),
        recurring("Utc", "UTC", &["Friday"], 9, 0),
    ]}));
    check(
        &s,
        &[
            // CET = UTC+1 in January, CEST = UTC+2 in July.
            ("2024-01-08T06:59:00Z", "Utc"),
            ("2024-01-08T07:00:00Z", "Berlin"),
            ("2024-07-08T05:59:00Z", "Utc"),
            ("2024-07-08T06:00:00Z", "Berlin"),
            // IST = UTC+5:30, no DST.
            ("2024-01-09T03:29:00Z", "Berlin"),
            ("2024-01-09T03:30:00Z", "India"),
            ("2024-07-09T03:30:00Z", "India"),
            // GMT in January, BST in July.
            ("2024-01-10T09:00:00Z", "London"),
            ("2024-07-10T07:59:00Z", "India"),
            ("2024-07-10T08:00:00Z", "London"),
            // AEDT = UTC+11 in January (southern summer): Thursday 09:00 = Wednesday 22:00Z.
            ("2024-01-10T22:00:00Z", "Sydney"),
            ("2024-07-10T23:00:00Z", "Sydney"),
            ("2024-01-12T09:00:00Z", "Utc"),
        ],
    );
}

#[test]
fn recurrence_runs_until_the_next_start() {
    // Docs: Weekend starts Saturday 00:01, Weekday starts Monday 04:00.
    let s = setting(json!({"profiles": [
        recurring("Weekend", "UTC", &["Saturday"], 0, 1),
        recurring("Weekday", "UTC", &["Monday"], 4, 0),
    ]}));
    check(
        &s,
        &[
            ("2024-01-06T00:00:00Z", "Weekday"),
            ("2024-01-06T00:01:00Z", "Weekend"),
            ("2024-01-08T03:59:00Z", "Weekend"),
            ("2024-01-08T04:00:00Z", "Weekday"),
            ("2024-01-12T23:59:00Z", "Weekday"),
        ],
    );
}

#[test]
fn fixed_date_wins_over_recurring_then_default() {
    let s = setting(json!({"profiles": [
        default_profile(),
        recurring("Weekday", "Pacific Standard Time", WEEKDAYS, 9, 0),
        {"name": "Black Friday", "capacity": {"minimum": "10", "maximum": "30", "default": "10"},
         "rules": [],
         // The portal writes local times with a Z; the digits are read in timeZone.
         "fixedDate": {"timeZone": "Pacific Standard Time",
                       "start": "2024-11-29T00:00:00.000Z", "end": "2024-11-30T00:00:00.000Z"}},
        {"name": "Overlapping", "capacity": {"minimum": "1", "maximum": "2", "default": "1"},
         "rules": [],
         "fixedDate": {"timeZone": "UTC", "start": "2024-11-29T00:00:00", "end": "2024-12-01T00:00:00"}},
    ]}));
    check(
        &s,
        &[
            // Thursday 28 Nov, 10:00 PST: recurring.
            ("2024-11-28T18:00:00Z", "Weekday"),
            // Friday 29 Nov, 00:00 UTC is still Thursday in Pacific: "Overlapping" (UTC) applies.
            ("2024-11-29T00:00:00Z", "Overlapping"),
            // 00:00 PST = 08:00Z: both fixed-date windows hold; the first listed wins.
            ("2024-11-29T08:00:00Z", "Black Friday"),
            ("2024-11-30T07:59:00Z", "Black Friday"),
            ("2024-11-30T08:00:00Z", "Overlapping"),
            ("2024-12-01T00:00:00Z", "Weekday"),
        ],
    );
    let why = active_profile(&s, t("2024-11-29T12:00:00Z")).map(|(_, w)| w);
    assert_eq!(
        why,
        Some(ProfileWhy::FixedDate {
            start: t("2024-11-29T08:00:00Z"),
            end: t("2024-11-30T08:00:00Z")
        })
    );
    // Without recurrences the default applies outside fixed windows; with neither, nothing.
    let only_fixed = setting(json!({"profiles": [
        {"name": "Event", "capacity": {"minimum": "2", "maximum": "4", "default": "2"}, "rules": [],
         "fixedDate": {"start": "2024-11-29T00:00:00+01:00", "end": "2024-11-29T12:00:00+01:00"}}
    ]}));
    check(
        &only_fixed,
        &[
            ("2024-11-28T22:59:00Z", "-"),
            ("2024-11-28T23:00:00Z", "Event"),
            ("2024-11-29T11:00:00Z", "-"),
        ],
    );
    let eval = evaluate(
        &only_fixed,
        t("2024-11-29T12:00:00Z"),
        &ScaleState::new(3),
        10,
        &constant(&[]),
    );
    assert_eq!(brief(&eval), "3 noActiveProfile");
}

/// The multiple-profiles article's template, as Azure shows it (ARM resource wrapper,
/// `Dimensions` capitalised, companion profiles named with JSON strings).
const MULTIPROFILE_DOC: &str = r#"{
  "type": "Microsoft.Insights/autoscaleSettings",
  "apiVersion": "2015-04-01",
  "name": "VMSS1-Autoscale-607",
  "location": "eastus",
  "properties": {
    "name": "VMSS1-Autoscale-607",
    "enabled": true,
    "targetResourceUri": "/subscriptions/abc/resourceGroups/rg-vmss1/providers/Microsoft.Compute/virtualMachineScaleSets/VMSS1",
    "profiles": [
      {"name": "Monday profile",
       "capacity": {"minimum": "3", "maximum": "20", "default": "3"},
       "rules": [
         {"scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"},
          "metricTrigger": {"metricName": "Inbound Flows", "metricNamespace": "microsoft.compute/virtualmachinescalesets",
            "metricResourceUri": "/subscriptions/abc/resourceGroups/rg-vmss1/providers/Microsoft.Compute/virtualMachineScaleSets/VMSS1",
            "operator": "GreaterThan", "statistic": "Average", "threshold": 100, "timeAggregation": "Average",
            "timeGrain": "PT1M", "timeWindow": "PT10M", "Dimensions": [], "dividePerInstance": true}},
         {"scaleAction": {"direction": "Decrease", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"},
          "metricTrigger": {"metricName": "Inbound Flows", "metricNamespace": "microsoft.compute/virtualmachinescalesets",
            "metricResourceUri": "/subscriptions/abc/resourceGroups/rg-vmss1/providers/Microsoft.Compute/virtualMachineScaleSets/VMSS1",
            "operator": "LessThan", "statistic": "Average", "threshold": 60, "timeAggregation": "Average",
            "timeGrain": "PT1M", "timeWindow": "PT10M", "Dimensions": [], "dividePerInstance": true}}
       ],
       "recurrence": {"frequency": "Week", "schedule": {"timeZone": "E. Europe Standard Time",
         "days": ["Monday"], "hours": [4], "minutes": [0]}}},
      {"name": "Weekend profile",
       "capacity": {"minimum": "1", "maximum": "3", "default": "1"},
       "rules": [],
       "recurrence": {"frequency": "Week", "schedule": {"timeZone": "E. Europe Standard Time",
         "days": ["Saturday", "Sunday"], "hours": [6], "minutes": [0]}}},
      {"name": "{\"name\":\"Auto created default scale condition\",\"for\":\"Weekend profile\"}",
       "capacity": {"minimum": "2", "maximum": "10", "default": "2"},
       "recurrence": {"frequency": "Week", "schedule": {"timeZone": "E. Europe Standard Time",
         "days": ["Saturday", "Sunday"], "hours": [19], "minutes": [0]}},
       "rules": [
         {"scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT3M"},
          "metricTrigger": {"metricName": "Percentage CPU", "operator": "GreaterThan", "statistic": "Average",
            "threshold": 50, "timeAggregation": "Average", "timeGrain": "PT1M", "timeWindow": "PT1M",
            "Dimensions": [], "dividePerInstance": false}}
       ]},
      {"name": "{\"name\":\"Auto created default scale condition\",\"for\":\"Monday profile\"}",
       "capacity": {"minimum": "2", "maximum": "10", "default": "2"},
       "recurrence": {"frequency": "Week", "schedule": {"timeZone": "E. Europe Standard Time",
         "days": ["Monday"], "hours": [15], "minutes": [0]}},
       "rules": []}
    ],
    "notifications": [
      {"operation": "Scale",
       "email": {"sendToSubscriptionAdministrator": false, "sendToSubscriptionCoAdministrators": false, "customEmails": []},
       "webhooks": [{"serviceUri": "https://hooks.example.test/scale?token=abc", "properties": {"Team": "ops"}}]}
    ]
  }
}"#;

#[test]
fn portal_companion_profiles_from_the_docs() {
    // The doc's own example uses 1-minute windows, which Azure's REST limits refuse: relaxed.
    let relaxed = ValidationOptions {
        relaxed: true,
        max_instances: None,
    };
    let s = Setting::from_json(MULTIPROFILE_DOC, &relaxed).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.name.as_deref(), Some("VMSS1-Autoscale-607"));
    assert_eq!(s.webhooks.len(), 1);
    assert_eq!(
        s.webhooks[0].properties.get("Team").map(String::as_str),
        Some("ops")
    );
    assert_eq!(s.profiles[2].ends.as_deref(), Some("Weekend profile"));
    // E. Europe Standard Time (Chisinau): EET = UTC+2 in January.
    check(
        &s,
        &[
            // Monday 04:00 local = 02:00Z → Monday profile until 15:00 local = 13:00Z.
            (
                "2024-01-08T01:59:00Z",
                "Auto created default scale condition (ends 'Weekend profile')",
            ),
            ("2024-01-08T02:00:00Z", "Monday profile"),
            ("2024-01-08T12:59:00Z", "Monday profile"),
            (
                "2024-01-08T13:00:00Z",
                "Auto created default scale condition (ends 'Monday profile')",
            ),
            // Through the week until Saturday 06:00 local.
            (
                "2024-01-12T12:00:00Z",
                "Auto created default scale condition (ends 'Monday profile')",
            ),
            ("2024-01-13T04:00:00Z", "Weekend profile"),
            (
                "2024-01-13T17:00:00Z",
                "Auto created default scale condition (ends 'Weekend profile')",
            ),
            ("2024-01-14T04:00:00Z", "Weekend profile"),
        ],
    );
    // Strict validation names the short windows.
    let strict = Setting::from_json(MULTIPROFILE_DOC, &ValidationOptions::default());
    let paths: Vec<String> = strict
        .err()
        .map(|e| e.problems().iter().map(|p| p.path.clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        paths,
        vec!["profiles[2].rules[0].metricTrigger.timeWindow".to_string()]
    );
    // Round trip: what we store reads back to the same setting.
    let again = Setting::from_json(&s.spec.to_json(), &relaxed).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.profiles, s.profiles);
    // The bare properties object works the same.
    let props =
        serde_json::from_str::<Value>(MULTIPROFILE_DOC).expect("json")["properties"].clone();
    let bare = SettingSpec::from_value(props).expect("spec");
    assert_eq!(
        stamp_autoscale::validate(&bare, &relaxed).map(|b| b.profiles),
        Ok(s.profiles)
    );
}

#[test]
fn bounds_enforced_when_the_profile_changes() {
    // Docs: Monday 06:00–18:00 profile 3–…; default 1–10. Count 2 at Monday 06:00 → 3;
    // count 12 when the default returns at 18:00 → 10.
    let cpu = rule("CpuPercentage > 70 +1");
    let s = setting(json!({"profiles": [
        {"name": "Auto created scale condition",
         "capacity": {"minimum": "1", "maximum": "10", "default": "1"}, "rules": [cpu]},
        {"name": "Monday", "capacity": {"minimum": "3", "maximum": "15", "default": "3"}, "rules": [cpu],
         "recurrence": {"frequency": "Week", "schedule": {"timeZone": "UTC", "days": ["Monday"], "hours": [6], "minutes": [0]}}},
        {"name": "{\"name\":\"Auto created scale condition\",\"for\":\"Monday\"}",
         "capacity": {"minimum": "1", "maximum": "10", "default": "1"}, "rules": [cpu],
         "recurrence": {"frequency": "Week", "schedule": {"timeZone": "UTC", "days": ["Monday"], "hours": [18], "minutes": [0]}}},
    ]}));
    let calm = constant(&[("CpuPercentage", Some(50.0))]);
    let mut state = ScaleState::new(2);
    state.profile = Some("{\"name\":\"Auto created scale condition\",\"for\":\"Monday\"}".into());
    let morning = evaluate(&s, t("2024-01-08T06:00:30Z"), &state, 30, &calm);
    assert_eq!(brief(&morning), "2→3 bounds");
    assert_eq!(
        morning.summary(),
        "profile 'Monday' (was 'Auto created scale condition (ends 'Monday')'): scale out 2 → 3: \
         below the profile's minimum 3"
    );
    let mut state = state.after(&morning);
    state.capacity = 12; // scaled by hand during the day
    let noon = evaluate(&s, t("2024-01-08T12:00:00Z"), &state, 30, &calm);
    assert_eq!(brief(&noon), "12 noRuleFired");
    let evening = evaluate(
        &s,
        t("2024-01-08T18:00:30Z"),
        &state.after(&noon),
        30,
        &calm,
    );
    assert_eq!(brief(&evening), "12→10 bounds");
    assert_eq!(
        evening
            .profile
            .as_ref()
            .and_then(|p| p.changed_from.clone()),
        Some("Monday".into())
    );
}

#[test]
fn webhook_body_has_azures_shape() {
    let relaxed = ValidationOptions {
        relaxed: true,
        max_instances: None,
    };
    let s = Setting::from_json(MULTIPROFILE_DOC, &relaxed).unwrap_or_else(|e| panic!("{e}"));
    // Monday 04:00 in Chisinau: the Monday profile's minimum 3 raises the count from 1.
    let eval = evaluate(
        &s,
        t("2024-01-08T02:00:30Z"),
        &ScaleState::new(1),
        20,
        &constant(&[]),
    );
    assert_eq!(brief(&eval), "1→3 bounds [MetricsUnavailable]");
    let context = stamp_autoscale::WebhookContext {
        setting_id: "autoscale/web",
        setting_name: "VMSS1-Autoscale-607",
        resource_name: "web",
        resource_type: "microsoft.web/serverfarms",
        resource_id: "plans/web",
        ..Default::default()
    };
    let body =
        stamp_autoscale::webhook_body(&context, &s.webhooks[0], &eval).expect("a scale action");
    assert_eq!(
        body,
        json!({
            "version": "1.0", "status": "Activated", "operation": "Scale Out",
            "context": {
                "timestamp": "2024-01-08T02:00:30.000Z", "id": "autoscale/web", "name": "VMSS1-Autoscale-607",
                "details": "Autoscale successfully started scale operation for resource 'web' from capacity '1' to capacity '3'",
                "subscriptionId": "", "resourceGroupName": "", "resourceName": "web",
                "resourceType": "microsoft.web/serverfarms", "resourceId": "plans/web", "portalLink": "",
                "oldCapacity": "1", "newCapacity": "3"
            },
            "properties": {"Team": "ops"}
        })
    );
    let hold = evaluate(
        &s,
        t("2024-01-08T02:00:30Z"),
        &ScaleState::new(3),
        20,
        &constant(&[]),
    );
    assert_eq!(
        stamp_autoscale::webhook_body(&context, &s.webhooks[0], &hold),
        None
    );
}
