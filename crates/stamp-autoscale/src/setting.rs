//! The validated setting the engine runs on, and the validation that builds it from a
//! [`SettingSpec`], listing *every* problem with its JSON path.
//!
//! Limits are Azure's (REST spec 2022-10-01) unless marked "Stamp": 1–20 profiles, ≤ 10 rules per
//! profile, `timeGrain` 1 min–12 h, `timeWindow` 5 min–12 h, `cooldown` 1 min–7 days,
//! `scaleAction.value` ≥ 1, `minimum ≤ default ≤ maximum`, `frequency` = `Week`, notifications'
//! `operation` = `Scale`. Stamp adds: `minimum ≥ 1` (a plan always runs a worker),
//! `maximum ≤ 1000`, `timeWindow ≥ timeGrain`, at most one profile without a schedule, unique
//! profile names, `fixedDate.start < end`, webhooks must be `http(s)` URLs, and (when the caller
//! passes the tier's cap) `minimum ≤` the tier's maximum instances. `ServiceAllowedNextValue` is
//! refused: App Service plans have no service-defined steps.
//!
//! [`ValidationOptions::relaxed`] lowers the floor of grains, windows and cooldowns to one second,
//! for self-hosted use where metrics are local and fresh, and for tests; Azure itself would refuse
//! such a setting.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::duration;
use crate::spec::{
    CapacitySpec, FixedDateSpec, MetricTriggerSpec, NotificationSpec, ProfileSpec, RecurrenceSpec,
    RuleSpec, Scalar, ScaleActionSpec, SettingSpec, SpecError,
};
use crate::zones::Zone;

/// Azure: profiles per setting.
pub const MAX_PROFILES: usize = 20;
/// Azure: rules per profile.
pub const MAX_RULES: usize = 10;
/// Stamp: the largest `maximum` accepted.
pub const MAX_CAPACITY: u32 = 1000;
/// Azure: `timeGrain` range.
pub const GRAIN_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(12 * 3600));
/// Azure: `timeWindow` range.
pub const WINDOW_RANGE: (Duration, Duration) =
    (Duration::from_secs(5 * 60), Duration::from_secs(12 * 3600));
/// Azure: `cooldown` range.
pub const COOLDOWN_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(7 * 86_400));
/// Stamp, relaxed mode: the floor of grains, windows and cooldowns.
pub const RELAXED_FLOOR: Duration = Duration::from_secs(1);

/// How strictly to validate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationOptions {
    /// Allow grains, windows and cooldowns down to one second (self-hosted use and tests).
    pub relaxed: bool,
    /// The plan tier's maximum instances, when known: a `minimum` above it is refused.
    pub max_instances: Option<u32>,
}

/// One thing wrong with a setting, at a JSON path such as `profiles[0].rules[2].scaleAction.cooldown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("the autoscale setting was refused; fix these {} problem(s):\n{}", .0.len(), list(.0))]
    Invalid(Vec<Problem>),
}

impl SettingError {
    /// The problems found (empty for a JSON error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            SettingError::Invalid(p) => p,
            SettingError::Spec(_) => &[],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A validated autoscale setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub name: Option<String>,
    pub enabled: bool,
    pub profiles: Vec<Profile>,
    pub webhooks: Vec<Webhook>,
    /// The setting as written, for showing and storing it unchanged.
    pub spec: SettingSpec,
}

impl Setting {
    /// Reads and validates Azure JSON (the resource or its `properties`).
    pub fn from_json(text: &str, options: &ValidationOptions) -> Result<Setting, SettingError> {
        validate(&SettingSpec::from_json(text)?, options)
    }
}

/// A profile ("scale condition").
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The name as written (for portal companions, the JSON string).
    pub name: Arc<str>,
    /// The name to show: companions as `Auto created default scale condition (ends 'Weekday')`.
    pub display: Arc<str>,
    /// For a portal companion profile (`{"name":"...","for":"Weekday"}`): the profile it ends.
    pub ends: Option<String>,
    pub capacity: Capacity,
    pub rules: Vec<Rule>,
    pub schedule: Schedule,
}

impl Profile {
    /// The name to show: companions as `Auto created default scale condition (ends 'Weekday')`.
    pub fn display_name(&self) -> &str {
        &self.display
    }
}

/// How a profile name reads: a companion's JSON name decoded to
/// `Auto created default scale condition (ends 'Weekday')`, any other name as it is.
pub fn display_name(name: &str) -> String {
    match companion_name(name) {
        Some((inner, Some(of))) => format!("{inner} (ends '{of}')"),
        Some((inner, None)) => inner,
        None => name.to_string(),
    }
}

/// The portal writes the companion ("end time") profiles' names as JSON:
/// `{"name":"Auto created default scale condition","for":"Weekday"}`. Returns (name, for).
pub fn companion_name(name: &str) -> Option<(String, Option<String>)> {
    let trimmed = name.trim();
    if !trimmed.starts_with('{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(trimmed).ok()?;
    let inner = value.get("name")?.as_str()?.to_string();
    let of = value
        .get("for")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Some((inner, of))
}

/// `capacity`, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub minimum: u32,
    pub maximum: u32,
    pub default: u32,
}

/// When a profile applies.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// The default profile: no `fixedDate`, no `recurrence`.
    Always,
    /// `fixedDate`: active in `[start, end)`.
    Fixed {
        zone: Zone,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// `recurrence` with `frequency: Week`: starts at every listed day × hour × minute, runs until
    /// another profile starts.
    Weekly {
        zone: Zone,
        /// Indexed by days from Sunday (Azure's enum starts at Sunday).
        days: [bool; 7],
        /// Start times of day, sorted, as (hour, minute).
        times: Vec<(u32, u32)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub trigger: MetricTrigger,
    pub action: ScaleAction,
}

/// `metricTrigger`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricTrigger {
    pub metric_name: Arc<str>,
    pub metric_namespace: Option<String>,
    /// `metricResourceUri`: the resource emitting the metric; `None` = the scaled plan itself.
    pub resource: Option<String>,
    pub grain: Duration,
    pub statistic: Statistic,
    pub window: Duration,
    pub aggregation: TimeAggregation,
    pub operator: Operator,
    pub threshold: f64,
    pub divide_per_instance: bool,
    pub dimensions: Vec<Dimension>,
}

/// A dimension filter passed through to the metrics source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dimension {
    pub name: String,
    /// `true` for `Equals` (any of `values`), `false` for `NotEquals` (none of them).
    pub equals: bool,
    pub values: Vec<String>,
}

/// `scaleAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleAction {
    pub direction: Direction,
    pub kind: ActionKind,
    pub value: u32,
    #[serde(with = "duration::iso")]
    pub cooldown: Duration,
}

/// A webhook to notify of scale actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub service_uri: String,
    pub properties: BTreeMap<String, String>,
}

macro_rules! names {
    ($(#[$m:meta])* $ty:ident { $($variant:ident = $($name:literal)|+),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $ty { $($variant),+ }

        impl $ty {
            /// Every accepted spelling (case-insensitive), first = Azure's.
            pub const NAMES: &'static [&'static str] = &[$($($name),+),+];

            /// Parses Azure's name, ignoring case.
            pub fn parse(text: &str) -> Option<$ty> {
                let t = text.trim();
                $( if [$($name),+].iter().any(|n| n.eq_ignore_ascii_case(t)) { return Some($ty::$variant); } )+
                None
            }

            /// Azure's name.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => [$($name),+][0]),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(
    /// `statistic`: how the instances' values in one grain are combined.
    Statistic { Average = "Average", Min = "Min", Max = "Max", Sum = "Sum", Count = "Count" }
);
names!(
    /// `timeAggregation`: how the grains in the window are combined.
    TimeAggregation {
        Average = "Average",
        Minimum = "Minimum",
        Maximum = "Maximum",
        Total = "Total",
        Count = "Count",
        Last = "Last",
    }
);
names!(
    /// `operator`. Symbols are Stamp's shorthand for the CLI.
    Operator {
        Equals = "Equals" | "==",
        NotEquals = "NotEquals" | "!=",
        GreaterThan = "GreaterThan" | ">",
        GreaterThanOrEqual = "GreaterThanOrEqual" | ">=",
        LessThan = "LessThan" | "<",
        LessThanOrEqual = "LessThanOrEqual" | "<=",
    }
);
names!(
    /// `scaleAction.direction`.
    Direction { None = "None", Increase = "Increase", Decrease = "Decrease" }
);
names!(
    /// `scaleAction.type`.
    ActionKind {
        ChangeCount = "ChangeCount",
        PercentChangeCount = "PercentChangeCount",
        ExactCount = "ExactCount",
    }
);

impl Operator {
    /// `observed <op> threshold`.
    pub fn holds(self, observed: f64, threshold: f64) -> bool {
        match self {
            Operator::Equals => observed == threshold,
            Operator::NotEquals => observed != threshold,
            Operator::GreaterThan => observed > threshold,
            Operator::GreaterThanOrEqual => observed >= threshold,
            Operator::LessThan => observed < threshold,
            Operator::LessThanOrEqual => observed <= threshold,
        }
    }

    /// The mathematical symbol, for summaries.
    pub fn symbol(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::NotEquals => "≠",
            Operator::GreaterThan => ">",
            Operator::GreaterThanOrEqual => "≥",
            Operator::LessThan => "<",
            Operator::LessThanOrEqual => "≤",
        }
    }
}

impl ScaleAction {
    /// The count this action moves `current` to, before the profile's bounds are applied.
    ///
    /// Percent changes round toward more instances (`ceil`) in both directions and always move
    /// by at least one (the reference's recommendation; Azure does not document its rounding).
    /// `ExactCount` never moves against the rule's direction: "increase count to 5" at 7 stays 7.
    pub fn target(&self, current: u32) -> u32 {
        let value = self.value;
        match (self.direction, self.kind) {
            (Direction::None, _) => current,
            (Direction::Increase, ActionKind::ChangeCount) => current.saturating_add(value),
            (Direction::Decrease, ActionKind::ChangeCount) => current.saturating_sub(value),
            (Direction::Increase, ActionKind::ExactCount) => current.max(value),
            (Direction::Decrease, ActionKind::ExactCount) => current.min(value),
            (direction, ActionKind::PercentChangeCount) => {
                let c = u64::from(current);
                let p = u64::from(value);
                let t = if direction == Direction::Increase {
                    // ceil(c * (100 + p) / 100)
                    (c * (100 + p)).div_ceil(100)
                } else {
                    (c * 100u64.saturating_sub(p)).div_ceil(100)
                };
                let t = u32::try_from(t).unwrap_or(u32::MAX);
                match direction {
                    Direction::Increase if t <= current => current.saturating_add(1),
                    Direction::Decrease if t >= current => current.saturating_sub(1),
                    _ => t,
                }
            }
        }
    }

    /// "+2", "−10%", "→5": how the action reads in summaries.
    pub fn describe(&self) -> String {
        let sign = match self.direction {
            Direction::Increase => "+",
            Direction::Decrease => "-",
            Direction::None => "±",
        };
        match self.kind {
            ActionKind::ChangeCount => format!("{sign}{}", self.value),
            ActionKind::PercentChangeCount => format!("{sign}{}%", self.value),
            ActionKind::ExactCount => format!("={}", self.value),
        }
    }
}

/// Validates a spec into a [`Setting`], listing every problem.
pub fn validate(spec: &SettingSpec, options: &ValidationOptions) -> Result<Setting, SettingError> {
    let mut v = Validator {
        problems: Vec::new(),
        options: *options,
    };
    let setting = v.setting(spec);
    if v.problems.is_empty() {
        Ok(setting)
    } else {
        Err(SettingError::Invalid(v.problems))
    }
}

struct Validator {
    problems: Vec<Problem>,
    options: ValidationOptions,
}

impl Validator {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn setting(&mut self, spec: &SettingSpec) -> Setting {
        let enabled = match &spec.enabled {
            None => true,
            Some(s) => self.boolean("enabled", s).unwrap_or(true),
        };
        let mut profiles = Vec::new();
        match &spec.profiles {
            None => self.problem("profiles", "is required: give at least one profile"),
            Some(list) if list.is_empty() => {
                self.problem("profiles", "is empty: give at least one profile")
            }
            Some(list) => {
                if list.len() > MAX_PROFILES {
                    self.problem(
                        "profiles",
                        format!(
                            "has {} profiles; Azure allows at most {MAX_PROFILES}",
                            list.len()
                        ),
                    );
                }
                for (i, p) in list.iter().enumerate() {
                    if let Some(p) = self.profile(&format!("profiles[{i}]"), p) {
                        profiles.push(p);
                    }
                }
            }
        }
        self.profile_set(spec, &profiles);
        let webhooks = spec
            .notifications
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .flat_map(|(i, n)| self.notification(&format!("notifications[{i}]"), n))
            .collect();
        Setting {
            name: spec.name.as_ref().map(|n| n.text().into_owned()),
            enabled,
            profiles,
            webhooks,
            spec: spec.clone(),
        }
    }

    /// Checks that need all profiles: one default at most, unique names.
    fn profile_set(&mut self, spec: &SettingSpec, profiles: &[Profile]) {
        let Some(list) = &spec.profiles else { return };
        let defaults: Vec<usize> = list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.fixed_date.is_none() && p.recurrence.is_none())
            .map(|(i, _)| i)
            .collect();
        if defaults.len() > 1 {
            let at: Vec<String> = defaults.iter().map(|i| format!("profiles[{i}]")).collect();
            self.problem(
                "profiles",
                format!(
                    "{} profiles have neither fixedDate nor recurrence ({}); only one default \
                     profile can exist, give the others a schedule",
                    defaults.len(),
                    at.join(", ")
                ),
            );
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, p) in profiles.iter().enumerate() {
            if let Some(first) = seen.insert(&p.name, i) {
                self.problem(
                    &format!("profiles[{i}].name"),
                    format!(
                        "'{}' is also the name of profiles[{first}]; names must be unique",
                        p.name
                    ),
                );
            }
        }
    }

    fn profile(&mut self, path: &str, spec: &ProfileSpec) -> Option<Profile> {
        let before = self.problems.len();
        let name = match &spec.name {
            Some(n) if !n.text().trim().is_empty() => n.text().into_owned(),
            _ => {
                self.problem(&format!("{path}.name"), "is required");
                String::new()
            }
        };
        let ends = companion_name(&name).and_then(|(_, of)| of);
        let capacity = match &spec.capacity {
            None => {
                self.problem(
                    &format!("{path}.capacity"),
                    "is required: give minimum, maximum and default",
                );
                None
            }
            Some(c) => self.capacity(&format!("{path}.capacity"), c),
        };
        let rules_spec = spec.rules.as_deref().unwrap_or_default();
        if rules_spec.len() > MAX_RULES {
            self.problem(
                &format!("{path}.rules"),
                format!(
                    "has {} rules; Azure allows at most {MAX_RULES} per profile",
                    rules_spec.len()
                ),
            );
        }
        let rules: Vec<Rule> = rules_spec
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.rule(&format!("{path}.rules[{i}]"), r))
            .collect();
        let schedule = match (&spec.fixed_date, &spec.recurrence) {
            (Some(_), Some(_)) => {
                self.problem(path, "has both fixedDate and recurrence; keep one of them");
                None
            }
            (Some(f), None) => self.fixed_date(&format!("{path}.fixedDate"), f),
            (None, Some(r)) => self.recurrence(&format!("{path}.recurrence"), r),
            (None, None) => Some(Schedule::Always),
        };
        if self.problems.len() > before {
            return None;
        }
        Some(Profile {
            display: display_name(&name).into(),
            name: name.into(),
            ends,
            capacity: capacity?,
            rules,
            schedule: schedule?,
        })
    }

    fn capacity(&mut self, path: &str, spec: &CapacitySpec) -> Option<Capacity> {
        let minimum = self.count_field(path, "minimum", spec.minimum.as_ref());
        let maximum = self.count_field(path, "maximum", spec.maximum.as_ref());
        let default = self.count_field(path, "default", spec.default.as_ref());
        let (minimum, maximum, default) = (minimum?, maximum?, default?);
        let mut ok = true;
        if minimum < 1 {
            self.problem(
                &format!("{path}.minimum"),
                "is 0; a plan always runs at least 1 instance (Stamp)",
            );
            ok = false;
        }
        if maximum > MAX_CAPACITY {
            self.problem(
                &format!("{path}.maximum"),
                format!("is {maximum}; Stamp allows at most {MAX_CAPACITY}"),
            );
            ok = false;
        }
        if minimum > maximum {
            self.problem(
                path,
                format!(
                    "minimum {minimum} is above maximum {maximum}; minimum ≤ default ≤ maximum"
                ),
            );
            ok = false;
        } else if default < minimum || default > maximum {
            self.problem(
                &format!("{path}.default"),
                format!("{default} is outside [{minimum}, {maximum}]; minimum ≤ default ≤ maximum"),
            );
            ok = false;
        }
        if let Some(cap) = self.options.max_instances
            && minimum > cap
        {
            self.problem(
                &format!("{path}.minimum"),
                format!("is {minimum} but the plan's tier allows at most {cap} instances"),
            );
            ok = false;
        }
        ok.then_some(Capacity {
            minimum,
            maximum,
            default,
        })
    }

    fn count_field(&mut self, path: &str, field: &str, value: Option<&Scalar>) -> Option<u32> {
        let path = format!("{path}.{field}");
        match value {
            None => {
                self.problem(&path, "is required");
                None
            }
            Some(v) => self.count(&path, v),
        }
    }

    fn count(&mut self, path: &str, value: &Scalar) -> Option<u32> {
        let text = value.text();
        match text.trim().parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(path, format!("'{text}' is not a whole number of instances"));
                None
            }
        }
    }

    fn boolean(&mut self, path: &str, value: &Scalar) -> Option<bool> {
        match value.text().trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                self.problem(path, format!("'{other}' is not true or false"));
                None
            }
        }
    }

    fn required_text(&mut self, path: &str, value: Option<&Scalar>) -> Option<String> {
        match value {
            Some(v) if !v.text().trim().is_empty() => Some(v.text().trim().to_string()),
            _ => {
                self.problem(path, "is required");
                None
            }
        }
    }

    fn enum_field<T>(
        &mut self,
        path: &str,
        value: Option<&Scalar>,
        default: Option<T>,
        parse: fn(&str) -> Option<T>,
        names: &[&str],
    ) -> Option<T> {
        match value {
            None => {
                if default.is_none() {
                    self.problem(path, format!("is required: one of {}", names.join(", ")));
                }
                default
            }
            Some(v) => {
                let text = v.text();
                let parsed = parse(&text);
                if parsed.is_none() {
                    self.problem(path, format!("'{text}' is not one of {}", names.join(", ")));
                }
                parsed
            }
        }
    }

    fn duration(
        &mut self,
        path: &str,
        value: Option<&Scalar>,
        (floor, ceiling): (Duration, Duration),
        what: &str,
    ) -> Option<Duration> {
        let Some(value) = value else {
            self.problem(
                path,
                format!("is required: an ISO-8601 {what} such as PT5M"),
            );
            return None;
        };
        let d = match duration::parse(&value.text()) {
            Ok(d) => d,
            Err(e) => {
                self.problem(path, e.to_string());
                return None;
            }
        };
        let low = if self.options.relaxed {
            RELAXED_FLOOR
        } else {
            floor
        };
        if d < low || d > ceiling {
            let hint = if !self.options.relaxed && d >= RELAXED_FLOOR && d < floor {
                " (shorter values are accepted in relaxed mode for self-hosted use)"
            } else {
                ""
            };
            self.problem(
                path,
                format!(
                    "{} is outside the allowed range {}–{} for a {what}{hint}",
                    duration::format(d),
                    duration::format(low),
                    duration::format(ceiling)
                ),
            );
            return None;
        }
        Some(d)
    }

    fn rule(&mut self, path: &str, spec: &RuleSpec) -> Option<Rule> {
        let trigger = match &spec.metric_trigger {
            Some(t) => self.trigger(&format!("{path}.metricTrigger"), t),
            None => {
                self.problem(&format!("{path}.metricTrigger"), "is required");
                None
            }
        };
        let action = match &spec.scale_action {
            Some(a) => self.action(&format!("{path}.scaleAction"), a),
            None => {
                self.problem(&format!("{path}.scaleAction"), "is required");
                None
            }
        };
        Some(Rule {
            trigger: trigger?,
            action: action?,
        })
    }

    fn trigger(&mut self, path: &str, spec: &MetricTriggerSpec) -> Option<MetricTrigger> {
        let metric_name =
            self.required_text(&format!("{path}.metricName"), spec.metric_name.as_ref());
        let grain = self.duration(
            &format!("{path}.timeGrain"),
            spec.time_grain.as_ref(),
            GRAIN_RANGE,
            "time grain",
        );
        let window = self.duration(
            &format!("{path}.timeWindow"),
            spec.time_window.as_ref(),
            WINDOW_RANGE,
            "time window",
        );
        if let (Some(g), Some(w)) = (grain, window)
            && w < g
        {
            self.problem(
                &format!("{path}.timeWindow"),
                format!(
                    "{} is shorter than the time grain {}; the window must hold at least one grain",
                    duration::format(w),
                    duration::format(g)
                ),
            );
        }
        let statistic = self.enum_field(
            &format!("{path}.statistic"),
            spec.statistic.as_ref(),
            None,
            Statistic::parse,
            Statistic::NAMES,
        );
        let aggregation = self.enum_field(
            &format!("{path}.timeAggregation"),
            spec.time_aggregation.as_ref(),
            None,
            TimeAggregation::parse,
            TimeAggregation::NAMES,
        );
        let operator = self.enum_field(
            &format!("{path}.operator"),
            spec.operator.as_ref(),
            None,
            Operator::parse,
            Operator::NAMES,
        );
        let threshold = match &spec.threshold {
            None => {
                self.problem(&format!("{path}.threshold"), "is required: a number");
                None
            }
            Some(t) => match t.text().trim().parse::<f64>() {
                Ok(x) if x.is_finite() => Some(x),
                _ => {
                    self.problem(
                        &format!("{path}.threshold"),
                        format!("'{}' is not a number", t.text()),
                    );
                    None
                }
            },
        };
        let divide_per_instance = match &spec.divide_per_instance {
            None => false,
            Some(s) => self
                .boolean(&format!("{path}.dividePerInstance"), s)
                .unwrap_or(false),
        };
        let mut dimensions = Vec::new();
        for (i, d) in spec
            .dimensions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let dpath = format!("{path}.dimensions[{i}]");
            let name =
                self.required_text(&format!("{dpath}.DimensionName"), d.dimension_name.as_ref());
            let equals = match d
                .operator
                .as_ref()
                .map(|o| o.text().trim().to_ascii_lowercase())
            {
                Some(o) if o == "equals" => Some(true),
                Some(o) if o == "notequals" => Some(false),
                _ => {
                    self.problem(&format!("{dpath}.Operator"), "must be Equals or NotEquals");
                    None
                }
            };
            let values: Vec<String> = d
                .values
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|v| v.text().into_owned())
                .collect();
            if let (Some(name), Some(equals)) = (name, equals) {
                dimensions.push(Dimension {
                    name,
                    equals,
                    values,
                });
            }
        }
        let text = |v: &Option<Scalar>| {
            v.as_ref()
                .map(|s| s.text().trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Some(MetricTrigger {
            metric_name: metric_name?.into(),
            metric_namespace: text(&spec.metric_namespace),
            resource: text(&spec.metric_resource_uri),
            grain: grain?,
            statistic: statistic?,
            window: window?,
            aggregation: aggregation?,
            operator: operator?,
            threshold: threshold?,
            divide_per_instance,
            dimensions,
        })
    }

    fn action(&mut self, path: &str, spec: &ScaleActionSpec) -> Option<ScaleAction> {
        let direction = self.enum_field(
            &format!("{path}.direction"),
            spec.direction.as_ref(),
            None,
            Direction::parse,
            Direction::NAMES,
        );
        let kind = match &spec.kind {
            Some(k)
                if k.text()
                    .trim()
                    .eq_ignore_ascii_case("ServiceAllowedNextValue") =>
            {
                self.problem(
                    &format!("{path}.type"),
                    "ServiceAllowedNextValue is for services with fixed steps; App Service plans \
                     scale by ChangeCount, PercentChangeCount or ExactCount",
                );
                None
            }
            k => self.enum_field(
                &format!("{path}.type"),
                k.as_ref(),
                None,
                ActionKind::parse,
                ActionKind::NAMES,
            ),
        };
        let value = match &spec.value {
            None => Some(1),
            Some(v) => match self.count(&format!("{path}.value"), v) {
                Some(0) => {
                    self.problem(&format!("{path}.value"), "is 0; it must be at least 1");
                    None
                }
                Some(n) if n > MAX_CAPACITY && kind != Some(ActionKind::PercentChangeCount) => {
                    self.problem(
                        &format!("{path}.value"),
                        format!("is {n}; Stamp allows at most {MAX_CAPACITY} instances"),
                    );
                    None
                }
                other => other,
            },
        };
        let cooldown = self.duration(
            &format!("{path}.cooldown"),
            spec.cooldown.as_ref(),
            COOLDOWN_RANGE,
            "cooldown",
        );
        Some(ScaleAction {
            direction: direction?,
            kind: kind?,
            value: value?,
            cooldown: cooldown?,
        })
    }

    fn zone(&mut self, path: &str, value: Option<&Scalar>, required: bool) -> Option<Zone> {
        match value {
            None if !required => Some(Zone::UTC),
            None => {
                self.problem(path, "is required: a Windows time-zone id such as 'Pacific Standard Time', or an IANA name");
                None
            }
            Some(v) => match Zone::resolve(&v.text()) {
                Ok(z) => Some(z),
                Err(e) => {
                    self.problem(path, e.to_string());
                    None
                }
            },
        }
    }

    fn fixed_date(&mut self, path: &str, spec: &FixedDateSpec) -> Option<Schedule> {
        let zone_given = spec.time_zone.is_some();
        let zone = self.zone(&format!("{path}.timeZone"), spec.time_zone.as_ref(), false);
        let start = self.date_time(
            &format!("{path}.start"),
            spec.start.as_ref(),
            zone,
            zone_given,
        );
        let end = self.date_time(&format!("{path}.end"), spec.end.as_ref(), zone, zone_given);
        let (zone, start, end) = (zone?, start?, end?);
        if start >= end {
            self.problem(path, format!("start {start} is not before end {end}"));
            return None;
        }
        Some(Schedule::Fixed { zone, start, end })
    }

    /// A fixed-date bound. With a `timeZone`, the wall-clock digits are read in that zone and a
    /// trailing `Z` or offset is ignored (the portal writes local times with a `Z`); without one,
    /// an offset is honoured and a bare time is UTC.
    fn date_time(
        &mut self,
        path: &str,
        value: Option<&Scalar>,
        zone: Option<Zone>,
        zone_given: bool,
    ) -> Option<DateTime<Utc>> {
        let Some(value) = value else {
            self.problem(
                path,
                "is required: a date and time such as 2024-11-29T00:00:00",
            );
            return None;
        };
        let text = value.text();
        let text = text.trim();
        let parsed = if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
            Some((dt.naive_local(), Some(dt.with_timezone(&Utc))))
        } else {
            [
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%dT%H:%M",
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%d %H:%M",
            ]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
            .or_else(|| {
                chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
            })
            .map(|n| (n, None))
        };
        let Some((naive, instant)) = parsed else {
            self.problem(
                path,
                format!("'{text}' is not a date and time such as 2024-11-29T00:00:00"),
            );
            return None;
        };
        let zone = zone?;
        match (zone_given, instant) {
            (false, Some(instant)) => Some(instant),
            _ => Some(local_to_utc(zone, naive)),
        }
    }

    fn recurrence(&mut self, path: &str, spec: &RecurrenceSpec) -> Option<Schedule> {
        match &spec.frequency {
            Some(f) if f.text().trim().eq_ignore_ascii_case("Week") => {}
            Some(f) => self.problem(
                &format!("{path}.frequency"),
                format!("'{}' is not supported; Azure requires Week (list all seven days for a daily schedule)", f.text()),
            ),
            None => self.problem(&format!("{path}.frequency"), "is required: Week"),
        }
        let Some(schedule) = &spec.schedule else {
            self.problem(
                &format!("{path}.schedule"),
                "is required: timeZone, days, hours and minutes",
            );
            return None;
        };
        let spath = format!("{path}.schedule");
        let zone = self.zone(
            &format!("{spath}.timeZone"),
            schedule.time_zone.as_ref(),
            true,
        );
        let mut days = [false; 7];
        let day_list = schedule.days.as_deref().unwrap_or_default();
        if day_list.is_empty() {
            self.problem(
                &format!("{spath}.days"),
                "is empty: list the days the profile starts on",
            );
        }
        for (i, d) in day_list.iter().enumerate() {
            match parse_day(&d.text()) {
                Some(n) => days[n] = true,
                None => self.problem(
                    &format!("{spath}.days[{i}]"),
                    format!("'{}' is not a day (Sunday … Saturday)", d.text()),
                ),
            }
        }
        let hours = self.clock_list(
            &format!("{spath}.hours"),
            schedule.hours.as_deref(),
            23,
            "hours",
        );
        let minutes = self.clock_list(
            &format!("{spath}.minutes"),
            schedule.minutes.as_deref(),
            59,
            "minutes",
        );
        let (zone, hours, minutes) = (zone?, hours?, minutes?);
        let mut times: Vec<(u32, u32)> = hours
            .iter()
            .flat_map(|h| minutes.iter().map(move |m| (*h, *m)))
            .collect();
        times.sort_unstable();
        times.dedup();
        Some(Schedule::Weekly { zone, days, times })
    }

    fn clock_list(
        &mut self,
        path: &str,
        list: Option<&[Scalar]>,
        max: u32,
        what: &str,
    ) -> Option<Vec<u32>> {
        let list = list.unwrap_or_default();
        if list.is_empty() {
            self.problem(path, format!("is empty: list at least one value (0–{max})"));
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, v) in list.iter().enumerate() {
            match v.text().trim().parse::<u32>() {
                Ok(n) if n <= max => out.push(n),
                _ => {
                    self.problem(
                        &format!("{path}[{i}]"),
                        format!("'{}' is not valid {what} (0–{max})", v.text()),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn notification(&mut self, path: &str, spec: &NotificationSpec) -> Vec<Webhook> {
        match &spec.operation {
            Some(op) if op.text().trim().eq_ignore_ascii_case("Scale") => {}
            Some(op) => self.problem(
                &format!("{path}.operation"),
                format!("'{}' is not supported; it must be Scale", op.text()),
            ),
            None => self.problem(&format!("{path}.operation"), "is required: Scale"),
        }
        let mut out = Vec::new();
        for (i, w) in spec
            .webhooks
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let wpath = format!("{path}.webhooks[{i}].serviceUri");
            let Some(uri) = self.required_text(&wpath, w.service_uri.as_ref()) else {
                continue;
            };
            let lower = uri.to_ascii_lowercase();
            let has_host = lower
                .strip_prefix("https://")
                .or_else(|| lower.strip_prefix("http://"))
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !has_host {
                self.problem(&wpath, format!("'{uri}' is not an http:// or https:// URL"));
                continue;
            }
            out.push(Webhook {
                service_uri: uri,
                properties: w
                    .properties
                    .as_ref()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.text().into_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        out
    }
}

/// Days from Sunday, as in Azure's `days` enum. Accepts three-letter abbreviations too.
fn parse_day(text: &str) -> Option<usize> {
    const DAYS: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    let t = text.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| *d == t || (t.len() == 3 && d.starts_with(t.as_str())))
}

/// A wall-clock time in `zone` as an instant. An ambiguous time (the repeated hour when clocks
/// go back) is its first occurrence; a time that does not exist (skipped when clocks go forward)
/// is the moment the gap ends, e.g. 02:30 on a spring-forward night in Los Angeles is 03:00 PDT.
pub fn local_to_utc(zone: Zone, naive: NaiveDateTime) -> DateTime<Utc> {
    use chrono::LocalResult;
    match zone.tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
        LocalResult::None => {
            // Walk forward to the end of the gap (gaps are at most a few hours).
            let mut probe = naive;
            for _ in 0..(4 * 60) {
                probe += chrono::TimeDelta::minutes(1);
                let floor = probe
                    .date()
                    .and_hms_opt(
                        chrono::Timelike::hour(&probe),
                        chrono::Timelike::minute(&probe),
                        0,
                    )
                    .unwrap_or(probe);
                if let Some(t) = zone.tz.from_local_datetime(&floor).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&naive)
        }
    }
}
