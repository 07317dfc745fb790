//! Stamp's autoscale engine with Azure Monitor semantics. PURE: no IO, no clock, no async runtime;
//! `now` is an argument everywhere.
//!
//! - [`spec`]: the `autoscaleSettings` JSON as Azure writes it (resource or bare `properties`),
//!   kept for round trips.
//! - [`setting`]: validation into a [`Setting`] the engine runs on, listing every problem with its
//!   JSON path.
//! - [`profile`]: which profile is active; [`zones`]: Windows time-zone ids → IANA.
//! - [`metrics`]: the [`Metrics`] source the service implements and the grain/window reduction.
//! - [`engine`]: [`evaluate`], one run, returning an explained [`Evaluation`].
//! - [`simulate()`]: replay a CSV trace through the same engine; [`inflation`]: instances per hour
//!   and worker-pool recommendations; [`notify`]: Azure's webhook body for a scale action.
//!
//! The service (metric storage, the loop, API, CLI, webhooks) lives in `stamp-controller` and
//! `stamp`; it keeps a [`ScaleState`] per setting, calls [`evaluate`] every 30 s, carries the
//! decision out, and stores the [`Evaluation`] as run history.
//!
//! # Choices where Azure is undocumented or inconsistent
//!
//! Each is tested (`tests/autoscale`).
//!
//! - **Percent rounding**: `PercentChangeCount` targets round toward more instances:
//!   out = `ceil(n × (1 + p/100))`, in = `ceil(n × (1 − p/100))`; a result equal to `n` moves by
//!   one; then bounds apply (2 +20 % → 3; 3 −10 % → 2; 10 −50 % → 5).
//! - **`ExactCount`** never moves against its direction: "increase count to 5" at 7 does nothing.
//! - **Cooldown** is per setting, starts when the action is issued, and lasts the cooldown of the
//!   rule that acted (the largest scale-out or the smallest scale-in). Corrections no rule caused
//!   (bounds, missing-metrics default) neither wait for nor start a cooldown.
//! - **Bounds first, alone**: a count outside the active profile's `[minimum, maximum]` (a profile
//!   change or a manual scale) is corrected, and that correction is the run's only action; the
//!   rules are still read and reported, and act from the next run. This avoids compounding a
//!   bounds jump with a rule step computed on metrics measured at the old count.
//! - **Tier cap**: the `max_instances` passed in lowers the profile's maximum; when it is below
//!   the profile's minimum, the cap wins.
//! - **`default`** is only the missing-metrics fallback (the REST semantics), not a count applied
//!   when a profile becomes active (the portal walkthrough's wording).
//! - **Missing metrics**: when any rule's metric is unavailable, scale-in is off for the run and the
//!   count is raised to `default` if below it — also during a cooldown (Azure checks metrics before
//!   cooldown). Scale-out rules whose own metric *is* available still act (availability first),
//!   to at least `default`. `MetricsUnavailable` / `MetricsRecovered` events are written on
//!   transitions only.
//! - **Scale-in needs every in-rule**: a profile's in-rules must all fire; with no scale-out rule
//!   firing. Ties between rules with equal counts go to the first rule in list order.
//! - **Flapping projection**: a scale-out rule's value at `n` instances is
//!   `observed × current / n` when the value spreads over instances (statistic `Average`, `Min`,
//!   `Max`, or `dividePerInstance`), and unchanged for totals (`Sum`, `Count`) and for a
//!   `timeAggregation` of `Count`. Candidates are tried **from the intended count up toward the
//!   current one**; the first at which no scale-out rule would fire is taken (`FlappingOccurred`),
//!   none → skip (`Flapping`). This order matches the documented "6 → intended 1 → actual 4"; for
//!   the documented "30 → 20, CPU 65 % > 70" example a linear projection gives 28, not the doc's
//!   illustrative 27 (65 × 30 / 27 ≈ 72.2 > 70).
//! - **Profile selection**: overlapping fixed-date profiles → the first in list order; recurrences
//!   starting at the same instant → the first in list order; with no default profile and nothing
//!   active → no action. A fixed date's wall-clock digits are read in its `timeZone` (a trailing
//!   `Z` is ignored, the portal writes one); without a `timeZone` an offset is honoured, else UTC.
//!   A start time in a spring-forward gap happens when the gap ends; an ambiguous one (fall back)
//!   at its first occurrence.
//! - **Statistic and aggregation**: `statistic` combines the instances' values in a grain,
//!   `timeAggregation` the grains in the window; a `Count` aggregation counts grains with data;
//!   `Last` is the latest grain.
//! - **Partial data**: a window with at least one grain holding values is available; the rule is
//!   computed over those grains. A metric is missing only when its whole window is empty.
//! - **`direction: None`** rules are read and shown in the explanation but never act.
//! - **Relaxed validation** ([`ValidationOptions::relaxed`]) lets grains, windows and cooldowns go
//!   down to 1 s for self-hosted use and tests; Azure's floors are 1 min, 5 min and 1 min.
//! - **Inflation rate**: see [`inflation`]; the seed's worked figures that disagree with its own
//!   formula are noted there, and the formula is followed.

pub mod duration;
pub mod engine;
pub mod inflation;
pub mod metrics;
pub mod notify;
pub mod profile;
pub mod setting;
pub mod simulate;
pub mod spec;
pub mod zones;

pub use engine::{
    ActiveProfile, Bound, Decision, Evaluation, Event, FlappingCheck, LastAction, Projection,
    Reason, RuleOutcome, ScaleState, evaluate,
};
pub use inflation::{
    PlanShare, PoolInflation, PoolMember, ProfileInflation, inflation, pool_inflation,
};
pub use metrics::{Grain, MetricQuery, Metrics, Stats};
pub use notify::{WebhookContext, webhook_body};
pub use profile::{ProfileWhy, active_profile};
pub use setting::{
    ActionKind, Capacity, Direction, MetricTrigger, Operator, Problem, Profile, Rule, ScaleAction,
    Schedule, Setting, SettingError, Statistic, TimeAggregation, ValidationOptions, Webhook,
    validate,
};
pub use simulate::{CapacityPoint, Timeline, Trace, TraceError, simulate};
pub use spec::SettingSpec;
pub use zones::{Zone, ZoneError};
