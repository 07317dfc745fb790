//! Inflation rate: how many instances per hour a setting can add or remove, and what that means
//! for a worker pool hosting several plans (the App Service Environment guidance, seed 004).
//!
//! Rate of a rule = instances it moves × 60 / its cooldown in minutes (computed in seconds, so
//! relaxed cooldowns work). The instances a rule moves: `ChangeCount` → its value;
//! `PercentChangeCount` → the step it makes at the profile's maximum (the largest step it can
//! make); `ExactCount` → the largest jump it can make (from the minimum up to the value, or from
//! the maximum down to it). A profile's rate is its fastest rule's: one cooldown per setting means
//! rules do not add up. The rate is the formula's upper bound; it is not capped by the profile's
//! range.
//!
//! The seed's own worked figures are not all consistent with its formula: for the weekend scale
//! up (+1, cooldown 20) it states 4 instances/hour where the formula gives 3, and for the weekday
//! scale down (−1, cooldown 20) 4 where the formula gives 3. Stamp follows the formula; the seed's
//! worker-pool example (weekend range 6 = 3 + 3, increase count 3) agrees with the formula too.
//!
//! Worker pool: total rate = sum of the plans' rates; recommended pool minimum = sum of the plans'
//! minimums + the total rate (rounded up); maximum = sum of the plans' maximums; each pool
//! scale-out should add at least the total rate; each scale-in should remove between ½× and 1× the
//! total removal rate. Plans are taken in the profile active at a given instant, since a plan's
//! weekday and weekend profiles differ. A disabled setting counts as if enabled (it can be
//! enabled at any time).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::num;
use crate::profile::active_profile;
use crate::setting::{ActionKind, Direction, Profile, Rule, Setting};

/// One profile's rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileInflation {
    pub profile: String,
    pub minimum: u32,
    pub maximum: u32,
    /// Instances per hour the profile can add.
    pub add_per_hour: f64,
    /// The scale-out rule giving that rate.
    pub add_rule: Option<usize>,
    /// Instances per hour the profile can remove.
    pub remove_per_hour: f64,
    pub remove_rule: Option<usize>,
}

/// Rates of every profile of a setting, in order.
pub fn inflation(setting: &Setting) -> Vec<ProfileInflation> {
    setting.profiles.iter().map(profile_inflation).collect()
}

/// Rates of one profile.
pub fn profile_inflation(profile: &Profile) -> ProfileInflation {
    let fastest = |direction: Direction| {
        profile
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.action.direction == direction)
            .map(|(i, r)| (i, rule_rate(profile, r)))
            .fold(None, |best: Option<(usize, f64)>, (i, rate)| match best {
                Some((_, b)) if b >= rate => best,
                _ => Some((i, rate)),
            })
    };
    let add = fastest(Direction::Increase);
    let remove = fastest(Direction::Decrease);
    ProfileInflation {
        profile: profile.display_name().to_string(),
        minimum: profile.capacity.minimum,
        maximum: profile.capacity.maximum,
        add_per_hour: add.map_or(0.0, |(_, r)| r),
        add_rule: add.map(|(i, _)| i),
        remove_per_hour: remove.map_or(0.0, |(_, r)| r),
        remove_rule: remove.map(|(i, _)| i),
    }
}

/// Instances per hour one rule can move.
pub fn rule_rate(profile: &Profile, rule: &Rule) -> f64 {
    let secs = rule.action.cooldown.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    f64::from(rule_step(profile, rule)) * 3600.0 / secs
}

/// Instances one action of the rule moves at most.
pub fn rule_step(profile: &Profile, rule: &Rule) -> u32 {
    let a = &rule.action;
    let cap = profile.capacity;
    match (a.kind, a.direction) {
        (_, Direction::None) => 0,
        (ActionKind::ChangeCount, _) => a.value,
        (ActionKind::PercentChangeCount, Direction::Increase) => {
            a.target(cap.maximum).saturating_sub(cap.maximum)
        }
        (ActionKind::PercentChangeCount, Direction::Decrease) => {
            cap.maximum.saturating_sub(a.target(cap.maximum))
        }
        (ActionKind::ExactCount, Direction::Increase) => a.value.saturating_sub(cap.minimum),
        (ActionKind::ExactCount, Direction::Decrease) => cap.maximum.saturating_sub(a.value),
    }
}

/// A plan in a worker pool.
#[derive(Debug, Clone, Copy)]
pub enum PoolMember<'a> {
    Autoscaled {
        plan: &'a str,
        setting: &'a Setting,
    },
    /// A manually scaled plan: fixed size, no inflation.
    Manual {
        plan: &'a str,
        workers: u32,
    },
}

/// One plan's share of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanShare {
    pub plan: String,
    /// The profile active at the instant asked about (`None` for manual plans).
    pub profile: Option<String>,
    pub minimum: u32,
    pub maximum: u32,
    pub add_per_hour: f64,
    pub remove_per_hour: f64,
}

/// Recommendations for a worker pool's own autoscale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolInflation {
    pub at: DateTime<Utc>,
    pub plans: Vec<PlanShare>,
    pub total_add_per_hour: f64,
    pub total_remove_per_hour: f64,
    /// Sum of plan minimums + total inflation rate.
    pub buffer_minimum: u32,
    /// Sum of plan maximums.
    pub buffer_maximum: u32,
    /// Instances each pool scale-out should add (at least the total inflation rate).
    pub increase_count: u32,
    /// Instances each pool scale-in should remove: between these two (½× and 1× the removal rate).
    pub decrease_count: (u32, u32),
}

/// Pool recommendations with each plan in the profile active at `at`.
pub fn pool_inflation(members: &[PoolMember<'_>], at: DateTime<Utc>) -> PoolInflation {
    let plans: Vec<PlanShare> = members
        .iter()
        .map(|m| match *m {
            PoolMember::Manual { plan, workers } => PlanShare {
                plan: plan.to_string(),
                profile: None,
                minimum: workers,
                maximum: workers,
                add_per_hour: 0.0,
                remove_per_hour: 0.0,
            },
            PoolMember::Autoscaled { plan, setting } => {
                match active_profile(setting, at).map(|(i, _)| &setting.profiles[i]) {
                    Some(p) => {
                        let r = profile_inflation(p);
                        PlanShare {
                            plan: plan.to_string(),
                            profile: Some(r.profile),
                            minimum: r.minimum,
                            maximum: r.maximum,
                            add_per_hour: r.add_per_hour,
                            remove_per_hour: r.remove_per_hour,
                        }
                    }
                    None => PlanShare {
                        plan: plan.to_string(),
                        profile: None,
                        minimum: 0,
                        maximum: 0,
                        add_per_hour: 0.0,
                        remove_per_hour: 0.0,
                    },
                }
            }
        })
        .collect();
    let total_add: f64 = plans.iter().map(|p| p.add_per_hour).sum();
    let total_remove: f64 = plans.iter().map(|p| p.remove_per_hour).sum();
    let add = ceil_u32(total_add);
    let remove = ceil_u32(total_remove);
    PoolInflation {
        at,
        buffer_minimum: plans
            .iter()
            .map(|p| p.minimum)
            .sum::<u32>()
            .saturating_add(add),
        buffer_maximum: plans.iter().map(|p| p.maximum).sum(),
        increase_count: add.max(1),
        decrease_count: (ceil_u32(total_remove / 2.0).max(1), remove.max(1)),
        total_add_per_hour: total_add,
        total_remove_per_hour: total_remove,
        plans,
    }
}

fn ceil_u32(x: f64) -> u32 {
    // Cast: rates are non-negative and far below u32::MAX; `as` saturates anyway.
    // Rounding first keeps 7.999999 from floating-point noise at 8.
    let rounded = (x * 1e6).round() / 1e6;
    rounded.ceil().max(0.0) as u32
}

/// A table of profile rates for the CLI.
pub fn render(rates: &[ProfileInflation]) -> String {
    let mut out =
        String::from("profile                                   range     add/h  remove/h\n");
    for r in rates {
        let _ = writeln!(
            out,
            "{:<40}  {:>3}–{:<4}  {:>5}  {:>8}",
            r.profile,
            r.minimum,
            r.maximum,
            num(r.add_per_hour),
            num(r.remove_per_hour)
        );
    }
    out
}

impl PoolInflation {
    /// A report for the CLI.
    pub fn render(&self) -> String {
        let mut out = format!("worker pool at {}\n", self.at.format("%Y-%m-%d %H:%M UTC"));
        for p in &self.plans {
            let _ = writeln!(
                out,
                "  {:<24} {:<32} {:>3}–{:<4} add {}/h, remove {}/h",
                p.plan,
                p.profile.as_deref().unwrap_or("(manual)"),
                p.minimum,
                p.maximum,
                num(p.add_per_hour),
                num(p.remove_per_hour)
            );
        }
        let _ = writeln!(
            out,
            "total inflation: add {}/h, remove {}/h",
            num(self.total_add_per_hour),
            num(self.total_remove_per_hour)
        );
        let _ = writeln!(
            out,
            "recommended pool range: {}–{} instances; add {} per scale-out; remove {}–{} per scale-in",
            self.buffer_minimum,
            self.buffer_maximum,
            self.increase_count,
            self.decrease_count.0,
            self.decrease_count.1
        );
        out
    }
}
