//! One evaluation run (reference §1.3–1.5): choose the profile, enforce its bounds, read every
//! rule's metric, then missing-metrics fallback, cooldown, scale-out, scale-in with the flapping
//! check; and explain all of it in an [`Evaluation`] the service keeps as run history.
//!
//! The run is a pure function of the setting, `now`, the [`ScaleState`] the service remembers
//! between runs, the tier's instance cap and a [`Metrics`] source. The service carries the
//! decision out (or records `ScaleFailed`) and folds it into the next state with
//! [`ScaleState::after`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::duration;
use crate::metrics::{MetricQuery, Metrics, observe, project};
use crate::profile::{ProfileWhy, active_profile};
use crate::setting::{
    Capacity, Direction, Operator, ScaleAction, Setting, Statistic, TimeAggregation,
};

/// What the service remembers between runs of one setting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleState {
    /// The plan's current worker count (after any manual change).
    pub capacity: u32,
    /// The last scale action a rule caused, which may still be cooling down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<LastAction>,
    /// Whether the previous run found a metric missing (for `MetricsUnavailable` /
    /// `MetricsRecovered` events, written on transitions only).
    #[serde(default)]
    pub metrics_missing: bool,
    /// The previous run's profile name, to report profile changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// A scale action and the cooldown it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAction {
    pub at: DateTime<Utc>,
    #[serde(with = "duration::iso")]
    pub cooldown: Duration,
}

impl LastAction {
    pub fn until(&self) -> DateTime<Utc> {
        self.at + TimeDelta::from_std(self.cooldown).unwrap_or(TimeDelta::MAX)
    }
}

impl ScaleState {
    /// A state with nothing remembered.
    pub fn new(capacity: u32) -> ScaleState {
        ScaleState {
            capacity,
            ..ScaleState::default()
        }
    }

    /// The state after `evaluation`'s decision was carried out successfully.
    pub fn after(&self, evaluation: &Evaluation) -> ScaleState {
        let decision = &evaluation.decision;
        let last_action = match decision.cooldown {
            Some(cooldown) if decision.target != evaluation.current => Some(LastAction {
                at: evaluation.at,
                cooldown,
            }),
            _ => self.last_action,
        };
        ScaleState {
            capacity: decision.target,
            last_action,
            metrics_missing: evaluation.metrics_missing,
            profile: evaluation.profile.as_ref().map(|p| p.name.to_string()),
        }
    }
}

/// The full account of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    pub at: DateTime<Utc>,
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ActiveProfile>,
    /// Worker count before the run.
    pub current: u32,
    /// The tier's cap passed in.
    pub max_instances: u32,
    /// Every rule of the active profile, in order.
    pub rules: Vec<RuleOutcome>,
    /// Some rule's metric could not be read.
    pub metrics_missing: bool,
    /// Set when a cooldown was running at `at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_until: Option<DateTime<Utc>>,
    /// Set when a scale-in was checked for flapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flapping: Option<FlappingCheck>,
    pub decision: Decision,
    /// Azure's activity-log vocabulary for this run.
    pub events: Vec<Event>,
}

/// The profile used and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveProfile {
    pub index: usize,
    /// As written in the setting.
    pub name: Arc<str>,
    /// For humans (portal companions decoded).
    pub display: Arc<str>,
    pub why: ProfileWhy,
    pub capacity: Capacity,
    /// The previous run's profile, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_from: Option<String>,
}

/// One rule's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleOutcome {
    /// Index in the profile's `rules`.
    pub rule: usize,
    pub metric: Arc<str>,
    pub statistic: Statistic,
    pub aggregation: TimeAggregation,
    pub direction: Direction,
    pub operator: Operator,
    pub threshold: f64,
    /// `None` = metric unavailable.
    pub observed: Option<f64>,
    /// Grains with data in the window.
    pub grains: usize,
    /// `observed <operator> threshold`.
    pub fired: bool,
    /// The rule's `scaleAction` (`describe()` reads it as "+2", "-10%", "=5").
    pub action: ScaleAction,
    /// The count the action leads to from the current count, when it fired (before bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u32>,
}

/// The flapping check of a scale-in (reference §1.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlappingCheck {
    pub current: u32,
    pub intended: u32,
    /// The count chosen; `None` = the scale-in was skipped.
    pub actual: Option<u32>,
    /// Each count tried, from `intended` upward, with every scale-out rule's projected value.
    pub tried: Vec<Projection>,
}

/// A scale-out rule's value projected to a candidate count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Projection {
    pub count: u32,
    pub rule: usize,
    pub metric: Arc<str>,
    pub projected: f64,
    pub operator: Operator,
    pub threshold: f64,
    /// The scale-out rule would fire at this count.
    pub fires: bool,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The worker count to set; equal to the evaluation's `current` when holding.
    pub target: u32,
    pub reason: Reason,
    /// The cooldown this action starts (the acting rule's); `None` for corrections that no rule
    /// caused (bounds, missing metrics) and for holds.
    #[serde(
        default,
        with = "duration::iso_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub cooldown: Option<Duration>,
}

/// Which limit a count was held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Bound {
    Minimum,
    Maximum,
    /// The plan tier's maximum instances, below the profile's maximum.
    TierMaximum,
}

/// Why the decision is what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Reason {
    /// The setting is disabled; nothing is read or done.
    Disabled,
    /// No profile applies now.
    NoActiveProfile,
    /// The count was outside the active profile's bounds and is brought back (before any rule).
    Bounds { bound: Bound, limit: u32 },
    /// A metric is unavailable: raise to `default` if below it, never scale in.
    MetricsUnavailable { default: u32, metrics: Vec<String> },
    /// The last action's cooldown is still running.
    Cooldown { until: DateTime<Utc> },
    /// A scale-out rule fired; `rule` gave the largest count.
    ScaleOut { rule: usize, bound: Option<Bound> },
    /// All scale-in rules fired; `rule` removed the fewest instances.
    ScaleIn { rule: usize, bound: Option<Bound> },
    /// All scale-in rules fired but the intended count would flap; a count closer to the current
    /// one was safe.
    FlappingAdjusted { rule: usize, intended: u32 },
    /// All scale-in rules fired but every count down to the intended one would flap.
    FlappingSkipped { rule: usize, intended: u32 },
    /// A rule fired but the count is already at the limit.
    AtLimit {
        direction: Direction,
        bound: Bound,
        limit: u32,
    },
    /// Some scale-in rules fired, not all (scale-in needs all).
    NotAllScaleInRulesFired { not_fired: Vec<usize> },
    /// Rules were evaluated and none fired.
    NoRuleFired,
    /// The profile has no rules.
    NoRules,
}

/// Azure's activity-log vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum Event {
    /// A scale action is issued.
    Scale {
        from: u32,
        to: u32,
        direction: Direction,
    },
    /// Carrying out a scale action failed (recorded by the service, never by the engine).
    ScaleFailed { from: u32, to: u32, error: String },
    /// Metrics could not be read (written when they go missing).
    MetricsUnavailable { metrics: Vec<String> },
    /// Metrics can be read again.
    MetricsRecovered,
    /// A scale-in was skipped to avoid flapping.
    Flapping { current: u32, intended: u32 },
    /// A scale-in went to a count closer to the current one to avoid flapping.
    FlappingOccurred {
        current: u32,
        intended: u32,
        actual: u32,
    },
}

impl Evaluation {
    /// Whether the decision changes the worker count.
    pub fn scales(&self) -> bool {
        self.decision.target != self.current
    }

    /// One line for humans: profile, decision and why.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if let Some(p) = &self.profile {
            let _ = write!(out, "profile '{}'", p.display);
            if let Some(prev) = &p.changed_from {
                let _ = write!(out, " (was '{}')", crate::setting::display_name(prev));
            }
            out.push_str(": ");
        }
        let (cur, target) = (self.current, self.decision.target);
        let action = if target > cur {
            format!("scale out {cur} → {target}")
        } else if target < cur {
            format!("scale in {cur} → {target}")
        } else {
            format!("hold at {cur}")
        };
        let rule = |i: usize| -> String {
            self.rules
                .iter()
                .find(|r| r.rule == i)
                .map_or_else(|| format!("rules[{i}]"), describe_rule)
        };
        let bound_name = |b: Bound, limit: u32| match b {
            Bound::Minimum => format!("the profile's minimum {limit}"),
            Bound::Maximum => format!("the profile's maximum {limit}"),
            Bound::TierMaximum => format!("the tier's maximum of {limit} instances"),
        };
        let why = match &self.decision.reason {
            Reason::Disabled => return "autoscale is disabled; nothing done".into(),
            Reason::NoActiveProfile => return "no profile applies now; nothing done".into(),
            Reason::Bounds { bound, limit } => {
                let side = if *bound == Bound::Minimum {
                    "below"
                } else {
                    "above"
                };
                format!("{side} {}", bound_name(*bound, *limit))
            }
            Reason::MetricsUnavailable { default, metrics } => {
                let which = metrics.join(", ");
                if target > cur {
                    format!("metrics unavailable ({which}); raised to the default {default}")
                } else {
                    format!(
                        "metrics unavailable ({which}); at or above the default {default}, and \
                         never scaling in without metrics"
                    )
                }
            }
            Reason::Cooldown { until } => format!(
                "cooling down after the last scale action until {}",
                until.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Reason::ScaleOut { rule: i, bound } => {
                let mut s = rule(*i);
                if let Some(b) = bound {
                    let _ = write!(s, ", capped at {}", bound_name(*b, target));
                }
                s
            }
            Reason::ScaleIn { rule: i, bound } => {
                let mut s = format!("all scale-in rules fired; {}", rule(*i));
                if let Some(b) = bound {
                    let _ = write!(s, ", stopped at {}", bound_name(*b, target));
                }
                s
            }
            Reason::FlappingAdjusted { rule: i, intended } => {
                let blocker = self.flapping_blocker(target.saturating_sub(1));
                format!(
                    "all scale-in rules fired ({}) but {intended} would flap{blocker}; {target} \
                     is the lowest safe count (FlappingOccurred)",
                    rule(*i)
                )
            }
            Reason::FlappingSkipped { rule: i, intended } => {
                let blocker = self.flapping_blocker(cur.saturating_sub(1));
                format!(
                    "all scale-in rules fired ({}) but scaling in to {intended} would flap{blocker}; \
                     skipped (Flapping)",
                    rule(*i)
                )
            }
            Reason::AtLimit {
                direction,
                bound,
                limit,
            } => {
                let fired: Vec<String> = self
                    .rules
                    .iter()
                    .filter(|r| r.fired && r.direction == *direction)
                    .map(describe_rule)
                    .collect();
                format!(
                    "{} but already at {}",
                    fired.join("; "),
                    bound_name(*bound, *limit)
                )
            }
            Reason::NotAllScaleInRulesFired { not_fired } => {
                let list: Vec<String> = not_fired.iter().map(|i| rule(*i)).collect();
                format!("not every scale-in rule fired: {}", list.join("; "))
            }
            Reason::NoRuleFired => {
                let list: Vec<String> = self.rules.iter().map(describe_rule).collect();
                format!("no rule fired: {}", list.join("; "))
            }
            Reason::NoRules => "the profile has no rules".into(),
        };
        let _ = write!(out, "{action}: {why}");
        out
    }

    /// " (at 27 CpuPercentage would be 72.2 > 70)" for the projections at `count`.
    fn flapping_blocker(&self, count: u32) -> String {
        let Some(check) = &self.flapping else {
            return String::new();
        };
        let firing: Vec<String> = check
            .tried
            .iter()
            .filter(|p| p.count == count && p.fires)
            .map(|p| {
                let (value, threshold) = num_pair(p.projected, p.threshold);
                format!(
                    "{} would be {value} {} {threshold}",
                    p.metric,
                    p.operator.symbol()
                )
            })
            .collect();
        if firing.is_empty() {
            String::new()
        } else {
            format!(" (at {count} {})", firing.join(", "))
        }
    }
}

impl std::fmt::Display for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

fn describe_rule(r: &RuleOutcome) -> String {
    match r.observed {
        None => format!("rules[{}] {} unavailable", r.rule, r.metric),
        Some(v) => {
            let op = if r.fired {
                r.operator.symbol().to_string()
            } else {
                format!("not {}", r.operator.symbol())
            };
            let (value, threshold) = num_pair(v, r.threshold);
            let mut s = format!("rules[{}] {} {value} {op} {threshold}", r.rule, r.metric);
            if r.fired && r.direction != Direction::None {
                let _ = write!(s, " ({})", r.action.describe());
            }
            s
        }
    }
}

/// Two numbers for "value op threshold": more decimals when two would make different numbers
/// look equal (29.9999 vs 30).
fn num_pair(value: f64, threshold: f64) -> (String, String) {
    let (v, t) = (num(value), num(threshold));
    if v == t && value != threshold {
        let fine = |x: f64| {
            let s = format!("{x:.6}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        };
        (fine(value), fine(threshold))
    } else {
        (v, t)
    }
}

/// A number with at most two decimals and no trailing zeros.
pub(crate) fn num(x: f64) -> String {
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// Runs one evaluation.
///
/// `max_instances` is the plan tier's cap; the profile's maximum is lowered to it and, if the
/// profile's minimum is above it, the cap wins.
pub fn evaluate<M: Metrics + ?Sized>(
    setting: &Setting,
    now: DateTime<Utc>,
    state: &ScaleState,
    max_instances: u32,
    metrics: &M,
) -> Evaluation {
    let current = state.capacity;
    let mut eval = Evaluation {
        at: now,
        enabled: setting.enabled,
        profile: None,
        current,
        max_instances,
        rules: Vec::with_capacity(crate::setting::MAX_RULES),
        metrics_missing: false,
        cooldown_until: None,
        flapping: None,
        decision: Decision {
            target: current,
            reason: Reason::Disabled,
            cooldown: None,
        },
        events: Vec::new(),
    };
    if !setting.enabled {
        return eval;
    }
    let Some((index, why)) = active_profile(setting, now) else {
        eval.decision.reason = Reason::NoActiveProfile;
        return eval;
    };
    let profile = &setting.profiles[index];
    eval.profile = Some(ActiveProfile {
        index,
        name: profile.name.clone(),
        display: profile.display.clone(),
        why,
        capacity: profile.capacity,
        changed_from: state
            .profile
            .as_ref()
            .filter(|prev| prev.as_str() != &*profile.name)
            .cloned(),
    });

    // Effective bounds: the tier's cap lowers the maximum (and the minimum, if need be).
    let cap = profile.capacity;
    let tier_limited = max_instances < cap.maximum;
    let max = cap.maximum.min(max_instances).max(1);
    let min = cap.minimum.min(max);
    let default = cap.default.clamp(min, max);
    let max_bound = if tier_limited {
        Bound::TierMaximum
    } else {
        Bound::Maximum
    };

    // Read every rule, even when the result cannot act, so the run history shows the values.
    let mut missing: Vec<String> = Vec::new();
    let mut grains = Vec::new();
    for (i, rule) in profile.rules.iter().enumerate() {
        let t = &rule.trigger;
        let to = now;
        let from = now - TimeDelta::from_std(t.window).unwrap_or(TimeDelta::zero());
        let query = MetricQuery {
            metric: &t.metric_name,
            namespace: t.metric_namespace.as_deref(),
            resource: t.resource.as_deref(),
            dimensions: &t.dimensions,
            from,
            to,
            grain: t.grain,
        };
        grains.clear();
        metrics.grains(&query, &mut grains);
        let observation = observe(t, &grains, current);
        let fired = observation.is_some_and(|o| t.operator.holds(o.value, t.threshold));
        if observation.is_none() && !missing.iter().any(|m| **m == *t.metric_name) {
            missing.push(t.metric_name.to_string());
        }
        eval.rules.push(RuleOutcome {
            rule: i,
            metric: t.metric_name.clone(),
            statistic: t.statistic,
            aggregation: t.aggregation,
            direction: rule.action.direction,
            operator: t.operator,
            threshold: t.threshold,
            observed: observation.map(|o| o.value),
            grains: observation.map_or(0, |o| o.grains),
            fired,
            action: rule.action,
            target: (fired && rule.action.direction != Direction::None)
                .then(|| rule.action.target(current)),
        });
    }
    eval.metrics_missing = !missing.is_empty();
    match (eval.metrics_missing, state.metrics_missing) {
        (true, false) => eval.events.push(Event::MetricsUnavailable {
            metrics: missing.clone(),
        }),
        (false, true) => eval.events.push(Event::MetricsRecovered),
        _ => {}
    }
    let cooling = state.last_action.filter(|a| now < a.until());
    eval.cooldown_until = cooling.map(|a| a.until());

    let decision = if current < min {
        Decision {
            target: min,
            reason: Reason::Bounds {
                bound: Bound::Minimum,
                limit: min,
            },
            cooldown: None,
        }
    } else if current > max {
        Decision {
            target: max,
            reason: Reason::Bounds {
                bound: max_bound,
                limit: max,
            },
            cooldown: None,
        }
    } else {
        decide(
            &mut eval,
            profile,
            cooling,
            missing,
            (min, max, default),
            max_bound,
        )
    };
    if decision.target != current {
        eval.events.push(Event::Scale {
            from: current,
            to: decision.target,
            direction: if decision.target > current {
                Direction::Increase
            } else {
                Direction::Decrease
            },
        });
    }
    eval.decision = decision;
    eval
}

/// Steps 3–7 of the run, with `current` already inside `[min, max]`.
fn decide(
    eval: &mut Evaluation,
    profile: &crate::setting::Profile,
    cooling: Option<LastAction>,
    missing: Vec<String>,
    (min, max, default): (u32, u32, u32),
    max_bound: Bound,
) -> Decision {
    let current = eval.current;
    let hold = |reason| Decision {
        target: current,
        reason,
        cooldown: None,
    };
    let outs: Vec<&RuleOutcome> = eval
        .rules
        .iter()
        .filter(|r| r.direction == Direction::Increase)
        .collect();
    let ins: Vec<&RuleOutcome> = eval
        .rules
        .iter()
        .filter(|r| r.direction == Direction::Decrease)
        .collect();

    // Scale out: any out-rule; the largest count wins (first rule on ties). Out-rules whose metric
    // is available act even when another rule's metric is missing: availability first.
    let best_out = outs
        .iter()
        .filter_map(|r| r.target.map(|t| (r.rule, t)))
        .fold(None, |best: Option<(usize, u32)>, (i, t)| match best {
            Some((_, b)) if b >= t => best,
            _ => Some((i, t)),
        });
    if cooling.is_none()
        && let Some((rule, wanted)) = best_out
    {
        let target = wanted.min(max);
        let floor = if missing.is_empty() {
            current
        } else {
            default.max(current)
        };
        if target > floor {
            return Decision {
                target,
                reason: Reason::ScaleOut {
                    rule,
                    bound: (wanted > max).then_some(max_bound),
                },
                cooldown: Some(profile.rules[rule].action.cooldown),
            };
        }
        if missing.is_empty() {
            // A scale-out rule fired, so no scale-in this run, whatever the in-rules say.
            return hold(if wanted > current {
                Reason::AtLimit {
                    direction: Direction::Increase,
                    bound: max_bound,
                    limit: max,
                }
            } else {
                // `ExactCount` at or below the current count: nothing to add.
                Reason::ScaleOut { rule, bound: None }
            });
        }
    }

    // Missing metrics: up to `default` if below it (even while cooling down: the fallback is a
    // safety net, and Azure checks it before the cooldown), never scale in.
    if !missing.is_empty() {
        let target = default.max(current);
        return Decision {
            target,
            reason: Reason::MetricsUnavailable {
                default,
                metrics: missing,
            },
            cooldown: None,
        };
    }
    if let Some(last) = cooling {
        return hold(Reason::Cooldown {
            until: last.until(),
        });
    }
    if outs.is_empty() && ins.is_empty() {
        return hold(Reason::NoRules);
    }
    let not_fired: Vec<usize> = ins.iter().filter(|r| !r.fired).map(|r| r.rule).collect();
    if ins.is_empty() {
        return hold(Reason::NoRuleFired);
    }
    if !not_fired.is_empty() {
        return hold(if not_fired.len() == ins.len() {
            Reason::NoRuleFired
        } else {
            Reason::NotAllScaleInRulesFired { not_fired }
        });
    }

    // Scale in: all in-rules fired; the one removing the fewest instances wins (first on ties).
    let (rule, wanted) = ins
        .iter()
        .filter_map(|r| r.target.map(|t| (r.rule, t)))
        .fold(None, |best: Option<(usize, u32)>, (i, t)| match best {
            Some((_, b)) if b >= t => best,
            _ => Some((i, t)),
        })
        .unwrap_or((ins[0].rule, current));
    let intended = wanted.max(min);
    if intended >= current {
        return hold(Reason::AtLimit {
            direction: Direction::Decrease,
            bound: Bound::Minimum,
            limit: min,
        });
    }
    let bound = (wanted < min).then_some(Bound::Minimum);

    // Flapping: from the intended count up toward the current one, the first count at which no
    // scale-out rule's projected value fires.
    let mut check = FlappingCheck {
        current,
        intended,
        actual: None,
        tried: Vec::new(),
    };
    for n in intended..current {
        let mut safe = true;
        for r in &outs {
            let (Some(value), Some(trigger)) =
                (r.observed, profile.rules.get(r.rule).map(|x| &x.trigger))
            else {
                continue;
            };
            let projected = project(trigger, value, current, n);
            let fires = trigger.operator.holds(projected, trigger.threshold);
            safe &= !fires;
            check.tried.push(Projection {
                count: n,
                rule: r.rule,
                metric: r.metric.clone(),
                projected,
                operator: trigger.operator,
                threshold: trigger.threshold,
                fires,
            });
        }
        if safe {
            check.actual = Some(n);
            break;
        }
    }
    let actual = check.actual;
    eval.flapping = Some(check);
    let cooldown = Some(profile.rules[rule].action.cooldown);
    match actual {
        Some(n) if n == intended => Decision {
            target: n,
            reason: Reason::ScaleIn { rule, bound },
            cooldown,
        },
        Some(n) => {
            eval.events.push(Event::FlappingOccurred {
                current,
                intended,
                actual: n,
            });
            Decision {
                target: n,
                reason: Reason::FlappingAdjusted { rule, intended },
                cooldown,
            }
        }
        None => {
            eval.events.push(Event::Flapping { current, intended });
            hold(Reason::FlappingSkipped { rule, intended })
        }
    }
}
