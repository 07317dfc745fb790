//! Every worked example of reference §1 (Azure Monitor autoscale docs), as data: rule
//! combination, largest scale-out / smallest scale-in, per-instance thresholds, flapping
//! projections with intermediate counts, bounds, missing metrics and `default`, cooldown,
//! percent rounding, statistic vs time aggregation.

use std::time::Duration;

use chrono::TimeDelta;
use stamp_autoscale::{Event, Grain, LastAction, Reason, ScaleState, Stats, evaluate};

use crate::support::{brief, constant, one_profile, t};

struct Case {
    /// What the docs say, for the failure message.
    doc: &'static str,
    bounds: (u32, u32, u32),
    rules: &'static [&'static str],
    current: u32,
    metrics: &'static [(&'static str, Option<f64>)],
    expect: &'static str,
}

#[track_caller]
fn check(cases: &[Case]) {
    let now = t("2024-01-01T12:00:00Z");
    let mut failures = Vec::new();
    for c in cases {
        let (min, max, default) = c.bounds;
        let setting = one_profile(min, max, default, c.rules);
        let eval = evaluate(
            &setting,
            now,
            &ScaleState::new(c.current),
            100,
            &constant(c.metrics),
        );
        let got = brief(&eval);
        if got != c.expect {
            failures.push(format!(
                "{}\n    expected: {}\n    got:      {}\n    summary:  {}",
                c.doc,
                c.expect,
                got,
                eval.summary()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

const COMBINATION: &[&str] = &[
    "CpuPercentage < 30 -1",
    "MemoryPercentage < 50 -1",
    "CpuPercentage > 75 +1",
    "MemoryPercentage > 75 +1",
];

#[test]
fn rule_combination_best_practices() {
    check(&[
        Case {
            doc: "CPU 76 / Mem 50 → scale out",
            bounds: (1, 10, 1),
            rules: COMBINATION,
            current: 5,
            metrics: &[
                ("CpuPercentage", Some(76.0)),
                ("MemoryPercentage", Some(50.0)),
            ],
            expect: "5→6 scaleOut",
        },
        Case {
            doc: "CPU 50 / Mem 76 → scale out",
            bounds: (1, 10, 1),
            rules: COMBINATION,
            current: 5,
            metrics: &[
                ("CpuPercentage", Some(50.0)),
                ("MemoryPercentage", Some(76.0)),
            ],
            expect: "5→6 scaleOut",
        },
        Case {
            doc: "CPU 25 / Mem 51 → no scale in (memory rule not met)",
            bounds: (1, 10, 1),
            rules: COMBINATION,
            current: 5,
            metrics: &[
                ("CpuPercentage", Some(25.0)),
                ("MemoryPercentage", Some(51.0)),
            ],
            expect: "5 notAllScaleInRulesFired",
        },
        Case {
            doc: "CPU 29 / Mem 49 → scale in",
            bounds: (1, 10, 1),
            rules: COMBINATION,
            current: 5,
            metrics: &[
                ("CpuPercentage", Some(29.0)),
                ("MemoryPercentage", Some(49.0)),
            ],
            expect: "5→4 scaleIn",
        },
    ]);
}

#[test]
fn largest_scale_out_and_smallest_scale_in() {
    check(&[
        Case {
            doc: "+3 and +5 both fire → +5",
            bounds: (1, 50, 1),
            rules: &["CpuPercentage > 70 +3", "MemoryPercentage > 70 +5"],
            current: 5,
            metrics: &[
                ("CpuPercentage", Some(80.0)),
                ("MemoryPercentage", Some(80.0)),
            ],
            expect: "5→10 scaleOut",
        },
        Case {
            doc: "+3 and +15% at 10 → 13 beats ceil(11.5) = 12",
            bounds: (1, 50, 1),
            rules: &["CpuPercentage > 70 +3", "MemoryPercentage > 70 +15%"],
            current: 10,
            metrics: &[
                ("CpuPercentage", Some(80.0)),
                ("MemoryPercentage", Some(80.0)),
            ],
            expect: "10→13 scaleOut",
        },
        Case {
            doc: "+3 and +15% at 30 → ceil(34.5) = 35 beats 33",
            bounds: (1, 50, 1),
            rules: &["CpuPercentage > 70 +3", "MemoryPercentage > 70 +15%"],
            current: 30,
            metrics: &[
                ("CpuPercentage", Some(80.0)),
                ("MemoryPercentage", Some(80.0)),
            ],
            expect: "30→35 scaleOut",
        },
        Case {
            doc: "−50% → 5 and −3 → 7 at 10 ⇒ 7 (fewest removed)",
            bounds: (1, 50, 1),
            rules: &["CpuPercentage < 30 -50%", "MemoryPercentage < 30 -3"],
            current: 10,
            metrics: &[
                ("CpuPercentage", Some(10.0)),
                ("MemoryPercentage", Some(10.0)),
            ],
            expect: "10→7 scaleIn",
        },
        Case {
            doc: "scale-out is clamped to the maximum",
            bounds: (1, 8, 1),
            rules: &["CpuPercentage > 70 +5"],
            current: 5,
            metrics: &[("CpuPercentage", Some(80.0))],
            expect: "5→8 scaleOut",
        },
        Case {
            doc: "scale-in is clamped to the minimum",
            bounds: (4, 10, 4),
            rules: &["CpuPercentage < 30 -5"],
            current: 6,
            metrics: &[("CpuPercentage", Some(10.0))],
            expect: "6→4 scaleIn",
        },
        Case {
            doc: "minimum == maximum: no scale actions",
            bounds: (4, 4, 4),
            rules: &["CpuPercentage > 70 +1", "CpuPercentage < 30 -1"],
            current: 4,
            metrics: &[("CpuPercentage", Some(95.0))],
            expect: "4 atLimit",
        },
    ]);
}

#[test]
fn thresholds_are_per_instance() {
    const QUEUE: &[&str] = &[
        "ApproximateMessageCount:Sum/inst >= 50 +1",
        "ApproximateMessageCount:Sum/inst <= 10 -1",
    ];
    check(&[
        Case {
            doc: "queue: 2 instances, 99 messages → 49.5 per instance, nothing",
            bounds: (1, 10, 1),
            rules: QUEUE,
            current: 2,
            metrics: &[("ApproximateMessageCount", Some(99.0))],
            expect: "2 noRuleFired",
        },
        Case {
            doc: "queue: first scale-out needs 100 messages with 2 instances",
            bounds: (1, 10, 1),
            rules: QUEUE,
            current: 2,
            metrics: &[("ApproximateMessageCount", Some(100.0))],
            expect: "2→3 scaleOut",
        },
        Case {
            doc: "queue: with 3 instances 149 is not enough",
            bounds: (1, 10, 1),
            rules: QUEUE,
            current: 3,
            metrics: &[("ApproximateMessageCount", Some(149.0))],
            expect: "3 noRuleFired",
        },
        Case {
            doc: "queue: with 3 instances the next scale-out needs 150",
            bounds: (1, 10, 1),
            rules: QUEUE,
            current: 3,
            metrics: &[("ApproximateMessageCount", Some(150.0))],
            expect: "3→4 scaleOut",
        },
        Case {
            doc: "queue: with 3 instances scale-in happens at 30 total",
            bounds: (1, 10, 1),
            rules: QUEUE,
            current: 3,
            metrics: &[("ApproximateMessageCount", Some(30.0))],
            expect: "3→2 scaleIn",
        },
        Case {
            doc: "queue: 31 total is not a scale-in",
            bounds: (1, 10, 1),
            rules: QUEUE,
            current: 3,
            metrics: &[("ApproximateMessageCount", Some(31.0))],
            expect: "3 noRuleFired",
        },
        Case {
            doc: "troubleshooting: Outbound Flows 6, 2 instances, divided → 3 < 10, no action",
            bounds: (1, 10, 1),
            rules: &["OutboundFlows:Sum/inst > 10 +1"],
            current: 2,
            metrics: &[("OutboundFlows", Some(6.0))],
            expect: "2 noRuleFired",
        },
    ]);
}

#[test]
fn flapping_projections() {
    check(&[
        Case {
            doc: "threads ≥ 600 out / ≤ 600 in, 3 at 575: 575 × 3 / 2 = 862.5 ≥ 600 → skip",
            bounds: (1, 10, 1),
            rules: &["Threads >= 600 +1", "Threads <= 600 -1"],
            current: 3,
            metrics: &[("Threads", Some(575.0))],
            expect: "3 flappingSkipped [Flapping]",
        },
        Case {
            doc: "CPU ≥ 80 out / ≤ 60 in, 3 at 60: 90 ≥ 80 → skip",
            bounds: (1, 10, 1),
            rules: &["CpuPercentage >= 80 +1", "CpuPercentage <= 60 -1"],
            current: 3,
            metrics: &[("CpuPercentage", Some(60.0))],
            expect: "3 flappingSkipped [Flapping]",
        },
        Case {
            doc: "CPU ≥ 80 out / ≤ 60 in, 3 at 50: 75 < 80 → scale in to 2",
            bounds: (1, 10, 1),
            rules: &["CpuPercentage >= 80 +1", "CpuPercentage <= 60 -1"],
            current: 3,
            metrics: &[("CpuPercentage", Some(50.0))],
            expect: "3→2 scaleIn",
        },
        Case {
            doc: "threads ≥ 600 / < 400, 1,250 threads on 2 → 625 → scale out to 3",
            bounds: (1, 10, 1),
            rules: &["Threads >= 600 +1", "Threads < 400 -1"],
            current: 2,
            metrics: &[("Threads", Some(625.0))],
            expect: "2→3 scaleOut",
        },
        Case {
            doc: "… 3 instances at 417 → no event",
            bounds: (1, 10, 1),
            rules: &["Threads >= 600 +1", "Threads < 400 -1"],
            current: 3,
            metrics: &[("Threads", Some(417.0))],
            expect: "3 noRuleFired",
        },
        Case {
            doc: "… total 1,180 → 393.3 < 400, projected 590 < 600 → scale in to 2",
            bounds: (1, 10, 1),
            rules: &["Threads >= 600 +1", "Threads < 400 -1"],
            current: 3,
            metrics: &[("Threads", Some(1180.0 / 3.0))],
            expect: "3→2 scaleIn",
        },
        Case {
            doc: "CPU > 50 out / < 30 in, 1 at 56 → scale out to 2",
            bounds: (1, 10, 1),
            rules: &["CpuPercentage > 50 +1", "CpuPercentage < 30 -1"],
            current: 1,
            metrics: &[("CpuPercentage", Some(56.0))],
            expect: "1→2 scaleOut",
        },
        Case {
            doc: "… 2 at 28 %: projection to 1 = 56 > 50 → scale-in deferred",
            bounds: (1, 10, 1),
            rules: &["CpuPercentage > 50 +1", "CpuPercentage < 30 -1"],
            current: 2,
            metrics: &[("CpuPercentage", Some(28.0))],
            expect: "2 flappingSkipped [Flapping]",
        },
        Case {
            doc: "requests ≤ 50/inst −10 at 30 with CPU 65 % (> 70 out): 20 → 97.5 %; first \
                  safe count from 20 upward is 28 (the doc's illustrative 27 gives 72.2 %)",
            bounds: (1, 50, 1),
            rules: &[
                "Requests:Sum/inst >= 200 +1",
                "CpuPercentage > 70 +1",
                "Requests:Sum/inst <= 50 -10",
            ],
            current: 30,
            metrics: &[("Requests", Some(1500.0)), ("CpuPercentage", Some(65.0))],
            expect: "30→28 flappingAdjusted [FlappingOccurred]",
        },
        Case {
            doc: "activity log: 6 → intended 1 → actual 4 (CPU 45 %, out > 70: 270/n)",
            bounds: (1, 10, 1),
            rules: &["CpuPercentage > 70 +1", "CpuPercentage < 50 -=1"],
            current: 6,
            metrics: &[("CpuPercentage", Some(45.0))],
            expect: "6→4 flappingAdjusted [FlappingOccurred]",
        },
        Case {
            doc: "totals (Sum without division) do not change with the count: no flapping",
            bounds: (1, 10, 1),
            rules: &["Requests:Sum > 1000 +1", "CpuPercentage < 30 -1"],
            current: 4,
            metrics: &[("Requests", Some(900.0)), ("CpuPercentage", Some(20.0))],
            expect: "4→3 scaleIn",
        },
    ]);
}

#[test]
fn flapping_explanation_shows_projections() {
    let setting = one_profile(
        1,
        10,
        1,
        &["CpuPercentage > 70 +1", "CpuPercentage < 50 -=1"],
    );
    let eval = evaluate(
        &setting,
        t("2024-01-01T12:00:00Z"),
        &ScaleState::new(6),
        100,
        &constant(&[("CpuPercentage", Some(45.0))]),
    );
    let check = eval.flapping.as_ref().expect("flapping was checked");
    let tried: Vec<(u32, String, bool)> = check
        .tried
        .iter()
        .map(|p| (p.count, format!("{:.1}", p.projected), p.fires))
        .collect();
    assert_eq!(
        tried,
        vec![
            (1, "270.0".into(), true),
            (2, "135.0".into(), true),
            (3, "90.0".into(), true),
            (4, "67.5".into(), false),
        ]
    );
    assert_eq!(
        eval.events,
        vec![
            Event::FlappingOccurred {
                current: 6,
                intended: 1,
                actual: 4
            },
            Event::Scale {
                from: 6,
                to: 4,
                direction: stamp_autoscale::Direction::Decrease
            },
        ]
    );
    assert_eq!(
        eval.summary(),
        "profile 'Auto created scale condition': scale in 6 → 4: all scale-in rules fired \
         (rules[1] CpuPercentage 45 < 50 (=1)) but 1 would flap (at 3 CpuPercentage would be \
         90 > 70); 4 is the lowest safe count (FlappingOccurred)"
    );
    // The explanation is kept as run history: it must survive JSON.
    let json = serde_json::to_string(&eval).expect("serialize");
    let back: stamp_autoscale::Evaluation = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, eval);
}

#[test]
fn bounds_and_missing_metrics() {
    check(&[
        Case {
            doc: "range 3–6, manual 1 → 3",
            bounds: (3, 6, 3),
            rules: &["CpuPercentage > 70 +1"],
            current: 1,
            metrics: &[("CpuPercentage", Some(50.0))],
            expect: "1→3 bounds",
        },
        Case {
            doc: "range 3–6, manual 8 → 6",
            bounds: (3, 6, 3),
            rules: &["CpuPercentage > 70 +1"],
            current: 8,
            metrics: &[("CpuPercentage", Some(50.0))],
            expect: "8→6 bounds",
        },
        Case {
            doc: "a bounds correction is the run's only action, even when a rule fires",
            bounds: (3, 6, 3),
            rules: &["CpuPercentage > 70 +2"],
            current: 1,
            metrics: &[("CpuPercentage", Some(90.0))],
            expect: "1→3 bounds",
        },
        Case {
            doc: "metrics missing, current 1 < default 3 → scale to 3",
            bounds: (1, 10, 3),
            rules: &["CpuPercentage > 70 +1", "CpuPercentage < 30 -1"],
            current: 1,
            metrics: &[],
            expect: "1→3 metricsUnavailable [MetricsUnavailable]",
        },
        Case {
            doc: "metrics missing, current 5 ≥ default 3 → nothing, never scale in",
            bounds: (1, 10, 3),
            rules: &["CpuPercentage > 70 +1", "CpuPercentage < 30 -1"],
            current: 5,
            metrics: &[],
            expect: "5 metricsUnavailable [MetricsUnavailable]",
        },
        Case {
            doc: "one metric missing blocks scale-in even when the others say so",
            bounds: (1, 10, 3),
            rules: &["CpuPercentage < 30 -1", "MemoryPercentage < 30 -1"],
            current: 5,
            metrics: &[("CpuPercentage", Some(5.0))],
            expect: "5 metricsUnavailable [MetricsUnavailable]",
        },
        Case {
            doc: "an available scale-out metric still acts when another is missing",
            bounds: (1, 10, 3),
            rules: &["CpuPercentage > 70 +2", "MemoryPercentage > 70 +1"],
            current: 4,
            metrics: &[("CpuPercentage", Some(90.0))],
            expect: "4→6 scaleOut [MetricsUnavailable]",
        },
        Case {
            doc: "… and never below default",
            bounds: (1, 10, 6),
            rules: &["CpuPercentage > 70 +1", "MemoryPercentage > 70 +1"],
            current: 2,
            metrics: &[("CpuPercentage", Some(90.0))],
            expect: "2→6 metricsUnavailable [MetricsUnavailable]",
        },
        Case {
            doc: "percent rounding: 2 +20 % → ceil(2.4) = 3",
            bounds: (1, 10, 1),
            rules: &["CpuPercentage > 70 +20%"],
            current: 2,
            metrics: &[("CpuPercentage", Some(90.0))],
            expect: "2→3 scaleOut",
        },
        Case {
            doc: "percent rounding: 3 −10 % → ceil(2.7) = 3 = current → moves by one",
            bounds: (1, 10, 1),
            rules: &["CpuPercentage < 30 -10%"],
            current: 3,
            metrics: &[("CpuPercentage", Some(10.0))],
            expect: "3→2 scaleIn",
        },
        Case {
            doc: "ExactCount never moves against its direction",
            bounds: (1, 10, 1),
            rules: &["CpuPercentage > 70 +=5"],
            current: 7,
            metrics: &[("CpuPercentage", Some(90.0))],
            expect: "7 scaleOut",
        },
    ]);
}

#[test]
fn tier_cap_lowers_the_maximum() {
    let setting = one_profile(2, 20, 2, &["CpuPercentage > 70 +5"]);
    let hot = constant(&[("CpuPercentage", Some(90.0))]);
    let now = t("2024-01-01T12:00:00Z");
    let cases = [
        (12, "12→10 bounds"),
        (8, "8→10 scaleOut"),
        (10, "10 atLimit"),
    ];
    for (current, expect) in cases {
        let eval = evaluate(&setting, now, &ScaleState::new(current), 10, &hot);
        assert_eq!(brief(&eval), expect, "{}", eval.summary());
    }
    let eval = evaluate(&setting, now, &ScaleState::new(12), 10, &hot);
    assert!(matches!(
        eval.decision.reason,
        Reason::Bounds {
            bound: stamp_autoscale::Bound::TierMaximum,
            limit: 10
        }
    ));
    assert!(
        eval.summary()
            .contains("above the tier's maximum of 10 instances"),
        "{}",
        eval.summary()
    );
}

#[test]
fn cooldown_after_the_acting_rule() {
    let setting = one_profile(
        1,
        10,
        1,
        &[
            "CpuPercentage > 70 +1 cd=PT5M",
            "CpuPercentage < 30 -1 cd=PT10M",
        ],
    );
    let hot = constant(&[("CpuPercentage", Some(90.0))]);
    let cold = constant(&[("CpuPercentage", Some(10.0))]);
    let start = t("2024-01-01T12:00:00Z");

    // Scale out at 12:00 starts the out-rule's 5-minute cooldown.
    let first = evaluate(&setting, start, &ScaleState::new(3), 100, &hot);
    assert_eq!(brief(&first), "3→4 scaleOut");
    assert_eq!(first.decision.cooldown, Some(Duration::from_secs(300)));
    let state = ScaleState::new(3).after(&first);
    assert_eq!(
        state.last_action,
        Some(LastAction {
            at: start,
            cooldown: Duration::from_secs(300)
        })
    );

    let at = |mins: i64| start + TimeDelta::minutes(mins);
    let cases = [
        (1, &hot, "4 cooldown"),
        (4, &cold, "4 cooldown"),
        (5, &hot, "4→5 scaleOut"),
        (5, &cold, "4→3 scaleIn"),
    ];
    for (mins, metrics, expect) in cases {
        let eval = evaluate(&setting, at(mins), &state, 100, metrics);
        assert_eq!(brief(&eval), expect, "at +{mins} min: {}", eval.summary());
    }
    // Scale-in starts the in-rule's 10-minute cooldown.
    let down = evaluate(&setting, at(5), &state, 100, &cold);
    let state = state.after(&down);
    assert_eq!(
        brief(&evaluate(&setting, at(14), &state, 100, &hot)),
        "3 cooldown"
    );
    assert_eq!(
        brief(&evaluate(&setting, at(15), &state, 100, &hot)),
        "3→4 scaleOut"
    );
    // Bounds are corrected during a cooldown and start none.
    let mut manual = state.clone();
    manual.capacity = 20;
    let eval = evaluate(&setting, at(6), &manual, 100, &hot);
    assert_eq!(brief(&eval), "20→10 bounds");
    assert_eq!(eval.decision.cooldown, None);
    assert_eq!(manual.after(&eval).last_action, state.last_action);
}

#[test]
fn metrics_events_on_transitions_only() {
    let setting = one_profile(1, 10, 3, &["CpuPercentage > 70 +1"]);
    let now = t("2024-01-01T12:00:00Z");
    let none = constant(&[]);
    let some = constant(&[("CpuPercentage", Some(50.0))]);
    let first = evaluate(&setting, now, &ScaleState::new(4), 100, &none);
    assert_eq!(brief(&first), "4 metricsUnavailable [MetricsUnavailable]");
    let state = ScaleState::new(4).after(&first);
    assert_eq!(
        brief(&evaluate(&setting, now, &state, 100, &none)),
        "4 metricsUnavailable"
    );
    let back = evaluate(&setting, now, &state, 100, &some);
    assert_eq!(brief(&back), "4 noRuleFired [MetricsRecovered]");
}

#[test]
fn statistic_then_time_aggregation() {
    // Three instances per grain: 10, 20, 30 (+ the grain's index). Grains arrive out of order.
    let grains: Vec<Grain> = [3.0, 0.0, 9.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        .iter()
        .map(|i| Grain {
            start: t("2024-01-01T11:50:00Z") + TimeDelta::minutes(*i as i64),
            stats: Stats::of(&[10.0 + i, 20.0 + i, 30.0 + i]),
        })
        .collect();
    let cases = [
        // statistic, aggregation, expected value
        ("Average", "Average", 24.5), // average of ten 1-minute averages (20..29)
        ("Max", "Maximum", 39.0),
        ("Min", "Minimum", 10.0),
        ("Sum", "Total", 600.0 + 3.0 * 45.0),
        ("Count", "Average", 3.0),
        ("Average", "Count", 10.0),
        ("Average", "Last", 29.0),
        ("Sum", "Last", 60.0 + 27.0),
    ];
    for (statistic, aggregation, expected) in cases {
        let json = serde_json::json!({"profiles": [{
            "name": "p",
            "capacity": {"minimum": "1", "maximum": "10", "default": "1"},
            "rules": [{
                "metricTrigger": {"metricName": "M", "timeGrain": "PT1M", "statistic": statistic,
                    "timeWindow": "PT10M", "timeAggregation": aggregation,
                    "operator": "GreaterThan", "threshold": 1e9},
                "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}
            }]
        }]});
        let setting = crate::support::setting(json);
        let source = |_: &stamp_autoscale::MetricQuery<'_>| Some(grains.clone());
        let eval = evaluate(
            &setting,
            t("2024-01-01T12:00:00Z"),
            &ScaleState::new(1),
            10,
            &source,
        );
        assert_eq!(
            eval.rules[0].observed,
            Some(expected),
            "{statistic}/{aggregation}"
        );
        assert_eq!(eval.rules[0].grains, 10);
    }
}

#[test]
fn disabled_and_no_profile() {
    let mut setting = one_profile(3, 6, 3, &["CpuPercentage > 70 +1"]);
    setting.enabled = false;
    let eval = evaluate(
        &setting,
        t("2024-01-01T12:00:00Z"),
        &ScaleState::new(1),
        10,
        &constant(&[]),
    );
    assert_eq!(brief(&eval), "1 disabled");
    assert_eq!(eval.summary(), "autoscale is disabled; nothing done");
    assert!(eval.rules.is_empty());
}
