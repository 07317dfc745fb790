//! `stamp autoscale`: the commands that run the autoscale engine (`stamp-autoscale`) locally, on
//! files, with no stamp running: `simulate` replays a metric trace through a setting, and
//! `inflation` shows how fast a setting can add and remove instances and what that means for a
//! worker pool shared by several plans. Parsing and printing only; the answers are the engine's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use stamp_autoscale::setting::MAX_CAPACITY;
use stamp_autoscale::simulate::{TraceTime, default_start};
use stamp_autoscale::{
    PoolMember, Setting, SettingError, Trace, ValidationOptions, active_profile, inflation,
    pool_inflation, simulate,
};
use stamp_model::{SystemClock, WallClock};

use crate::{Global, Output, output};

#[derive(clap::Subcommand)]
pub enum AutoscaleCmd {
    /// Replay a metric trace through an autoscale setting and print the capacity timeline and
    /// every decision with its reason. Runs locally: try a setting before applying it.
    Simulate(SimulateArgs),
    /// The most instances per hour a setting can add and remove, per profile; with several
    /// settings (plans sharing a worker pool) and manual plans, the pool's recommended range and
    /// scale-out step. Reads setting files; reading a plan's stored setting
    /// (`stamp autoscale inflation PLAN`) will come with the autoscale API.
    Inflation(InflationArgs),
    /// Set a plan's autoscale setting from Azure JSON (the resource or its `properties`, as the
    /// portal or `az monitor autoscale show` writes it). An invalid setting is refused with every
    /// problem listed, and the previous setting stays in force.
    Set {
        plan: String,
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Show a plan's autoscale setting.
    Show { plan: String },
    /// Resume evaluating a plan's setting.
    Enable { plan: String },
    /// Stop evaluating a plan's setting (it is kept).
    Disable { plan: String },
    /// Delete a plan's setting; the plan keeps its current worker count.
    Delete { plan: String },
    /// Rule shortcuts: add a rule to a plan's setting without writing JSON.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// The plan's evaluations, newest first, each with its reason.
    History {
        plan: String,
        /// How many evaluations.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Only those that scaled the plan.
        #[arg(long)]
        scaled: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum RuleCmd {
    /// Add a rule, e.g. `stamp autoscale rule add P --metric CpuPercentage --op GreaterThan
    /// --threshold 70 --window 10m --grain 1m --action increase-count:1 --cooldown 5m`. A plan
    /// without a setting gets one: a default profile from 1 to the tier's maximum workers.
    Add(RuleAddArgs),
}

#[derive(clap::Args)]
pub struct RuleAddArgs {
    plan: String,
    /// The metric: CpuPercentage, MemoryPercentage, HttpQueueLength, Requests,
    /// AverageResponseTime, Http5xx, BytesReceived, BytesSent, or a custom one.
    #[arg(long)]
    metric: String,
    /// GreaterThan, GreaterThanOrEqual, LessThan, LessThanOrEqual, Equals, NotEquals.
    #[arg(long)]
    op: String,
    #[arg(long)]
    threshold: f64,
    /// How far back the rule looks, e.g. 10m.
    #[arg(long, value_parser = parse_interval)]
    window: Duration,
    /// The grain the window is cut into, e.g. 1m.
    #[arg(long, default_value = "1m", value_parser = parse_interval)]
    grain: Duration,
    /// How workers' samples combine within a grain: Average, Min, Max, Sum, Count.
    #[arg(long, default_value = "Average")]
    statistic: String,
    /// How grains combine over the window: Average, Minimum, Maximum, Total, Count, Last.
    #[arg(long, default_value = "Average")]
    aggregation: String,
    /// increase-count:N, decrease-count:N, increase-percent:N, decrease-percent:N or
    /// set-count:N.
    #[arg(long)]
    action: String,
    /// No further scaling for this long after the rule acts, e.g. 5m.
    #[arg(long, default_value = "5m", value_parser = parse_interval)]
    cooldown: Duration,
    /// The profile to add to (default: the default profile, else the first).
    #[arg(long)]
    profile: Option<String>,
}

/// ISO 8601 duration in whole seconds, as Azure writes them (`PT300S` is `PT5M`).
fn iso(d: Duration) -> String {
    stamp_autoscale::duration::format(d)
}

/// `increase-count:2` → (direction, type, value).
fn parse_action(text: &str) -> anyhow::Result<(&'static str, &'static str, u32)> {
    let (kind, value) = text
        .split_once(':')
        .ok_or_else(|| anyhow!("--action {text:?}: use e.g. increase-count:1"))?;
    let value: u32 = value.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
        anyhow!("--action {text:?}: the count must be a whole number of at least 1")
    })?;
    let (direction, kind) = match kind {
        "increase-count" => ("Increase", "ChangeCount"),
        "decrease-count" => ("Decrease", "ChangeCount"),
        "increase-percent" => ("Increase", "PercentChangeCount"),
        "decrease-percent" => ("Decrease", "PercentChangeCount"),
        "set-count" => ("Increase", "ExactCount"),
        _ => anyhow::bail!(
            "--action {text:?}: use increase-count, decrease-count, increase-percent, decrease-percent or set-count, then :N"
        ),
    };
    Ok((direction, kind, value))
}

async fn add_rule(
    c: &stamp_client::Client,
    args: RuleAddArgs,
) -> anyhow::Result<stamp_api_types::AutoscaleView> {
    let (direction, kind, value) = parse_action(&args.action)?;
    let rule = serde_json::json!({
        "metricTrigger": {
            "metricName": args.metric,
            "metricResourceUri": "",
            "timeGrain": iso(args.grain),
            "statistic": args.statistic,
            "timeWindow": iso(args.window),
            "timeAggregation": args.aggregation,
            "operator": args.op,
            "threshold": args.threshold
        },
        "scaleAction": {
            "direction": direction,
            "type": kind,
            "value": value.to_string(),
            "cooldown": iso(args.cooldown)
        }
    });
    let mut setting = match c.autoscale(&args.plan).await {
        Ok(view) => view.setting,
        Err(stamp_client::ClientError::Api { status: 404, .. }) => {
            let plan = c.plan(&args.plan).await?;
            serde_json::json!({
                "enabled": true,
                "profiles": [{
                    "name": "default",
                    "capacity": {
                        "minimum": "1",
                        "maximum": plan.sku.max_workers.to_string(),
                        "default": "1"
                    },
                    "rules": []
                }]
            })
        }
        Err(e) => return Err(e.into()),
    };
    let properties = if setting.get("properties").is_some() {
        &mut setting["properties"]
    } else {
        &mut setting
    };
    let profiles = properties["profiles"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("the stored setting has no profiles"))?;
    let index = match &args.profile {
        Some(name) => profiles
            .iter()
            .position(|p| p["name"] == name.as_str())
            .ok_or_else(|| anyhow!("the setting has no profile named {name:?}"))?,
        None => profiles
            .iter()
            .position(|p| p.get("fixedDate").is_none() && p.get("recurrence").is_none())
            .unwrap_or(0),
    };
    let rules = profiles[index]["rules"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("profile {index} has no rules list"))?;
    rules.push(rule);
    Ok(c.set_autoscale(&args.plan, setting.to_string()).await?)
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// The autoscale setting: Azure JSON, the resource or its `properties`, as the portal or
    /// `az monitor autoscale show` writes it.
    #[arg(long, value_name = "FILE")]
    setting: PathBuf,
    /// The metric trace, CSV: a header `time,<metric>,...`, then one row per change (values hold
    /// until the next row; an empty cell = no data). `time` is RFC 3339 or an offset from --start
    /// (`90s`, `5m`, `1h30m`, `PT5M`). A `<metric>:per_instance` column is total load divided
    /// across the simulated instances, so it reacts to the simulation's own scaling.
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// Where the simulation starts (RFC 3339). Default: the first row of a trace with times,
    /// Monday 2024-01-01 00:00 UTC for a trace of offsets.
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    start: Option<DateTime<Utc>>,
    /// Time between runs of the engine: `30s`, `1m`, `1h` (the service runs every 30 s).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_interval)]
    interval: Duration,
    /// Instances at the start. Default: the `default` of the profile active then.
    #[arg(long, value_name = "N")]
    initial: Option<u32>,
    /// The plan tier's maximum instances, which lowers larger profile maximums.
    /// Default: no cap beyond the profiles' own.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_instances: Option<u32>,
    /// Treat every trace column as total load divided across the instances (as if each were
    /// named `<metric>:per_instance`).
    #[arg(long)]
    per_instance: bool,
    /// Allow grains, windows and cooldowns down to 1 s (self-hosted use). Azure's floors are
    /// 1 min, 5 min and 1 min.
    #[arg(long)]
    relaxed: bool,
}

#[derive(clap::Args)]
pub struct InflationArgs {
    /// Plans whose stored setting to read from the stamp's API (needs a running stamp).
    #[arg(value_name = "PLAN", required_unless_present = "settings")]
    plans: Vec<String>,
    /// An autoscale setting (Azure JSON). Repeat for plans sharing a worker pool; each plan is
    /// named after the `serverfarms/<plan>` of the setting's `targetResourceUri`, else the file.
    #[arg(long = "setting", value_name = "FILE")]
    settings: Vec<PathBuf>,
    /// A manually scaled plan in the same worker pool, with its number of workers. Repeatable.
    #[arg(long = "workers", value_name = "PLAN=N", value_parser = parse_workers)]
    workers: Vec<(String, u32)>,
    /// For the pool view, the instant whose active profiles count (RFC 3339; default: now).
    /// A weekday profile and a weekend profile can need different pools.
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    at: Option<DateTime<Utc>>,
    /// Allow grains, windows and cooldowns down to 1 s, as `simulate --relaxed`.
    #[arg(long)]
    relaxed: bool,
}

/// Runs an autoscale command. Needs no API: everything is computed here.
pub fn run(global: &Global, cmd: AutoscaleCmd) -> anyhow::Result<()> {
    match cmd {
        AutoscaleCmd::Simulate(args) => run_simulate(global, args),
        AutoscaleCmd::Inflation(args) => run_inflation(global, args),
        api => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?
            .block_on(run_api(global, api)),
    }
}

/// The commands that talk to a stamp's API.
async fn run_api(global: &Global, cmd: AutoscaleCmd) -> anyhow::Result<()> {
    let c = crate::cli::client(global)?;
    let out = global.output;
    let view = match cmd {
        AutoscaleCmd::Set { plan, file } => {
            let json = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            c.set_autoscale(&plan, json).await?
        }
        AutoscaleCmd::Show { plan } => c.autoscale(&plan).await?,
        AutoscaleCmd::Enable { plan } => c.set_autoscale_enabled(&plan, true).await?,
        AutoscaleCmd::Disable { plan } => c.set_autoscale_enabled(&plan, false).await?,
        AutoscaleCmd::Delete { plan } => {
            c.delete_autoscale(&plan).await?;
            if out == Output::Table {
                println!("Deleted the autoscale setting of plan {plan}");
            }
            return Ok(());
        }
        AutoscaleCmd::History {
            plan,
            limit,
            scaled,
        } => {
            let runs = c.autoscale_history(&plan, limit, scaled).await?;
            return output::show(out, &runs, |runs| {
                for r in runs {
                    println!(
                        "{} {}{}",
                        output::timestamp(r.at),
                        if r.scaled { "SCALED " } else { "" },
                        r.summary
                    );
                }
            });
        }
        AutoscaleCmd::Rule(RuleCmd::Add(args)) => add_rule(&c, args).await?,
        AutoscaleCmd::Simulate(_) | AutoscaleCmd::Inflation(_) => unreachable!("run locally"),
    };
    output::show(out, &view, |v| {
        println!(
            "plan {}: autoscale {}; profiles: {}; webhooks: {}",
            v.plan,
            if v.enabled { "enabled" } else { "disabled" },
            v.profiles.join(", "),
            v.webhooks
        );
        if let Some(at) = v.last_action_at {
            println!(
                "last action {} (cooldown {} s)",
                output::timestamp(at),
                v.cooldown_secs.unwrap_or(0)
            );
        }
    })
}

fn run_simulate(global: &Global, args: SimulateArgs) -> anyhow::Result<()> {
    let options = ValidationOptions {
        relaxed: args.relaxed,
        max_instances: args.max_instances,
    };
    let setting = load_setting(&args.setting, options)?;
    let text = std::fs::read_to_string(&args.trace)
        .with_context(|| format!("read the trace {}", args.trace.display()))?;
    let trace = Trace::parse_csv(&text)
        .with_context(|| format!("read the trace {}", args.trace.display()))?;
    let trace = if args.per_instance {
        trace.with_per_instance(true)
    } else {
        trace
    };
    warn_missing_columns(&setting, &trace);
    if !setting.enabled {
        eprintln!(
            "note: the setting is disabled (\"enabled\": false), so the engine takes no action; \
             set it to true to see what it would do"
        );
    }

    // The start as `simulate` will choose it, to pick the initial count from its profile.
    let start = match (args.start, trace.rows.first().map(|r| r.at)) {
        (Some(start), _) => start,
        (None, Some(TraceTime::At(first))) => first,
        (None, _) => default_start(),
    };
    let initial = args.initial.unwrap_or_else(|| {
        active_profile(&setting, start).map_or(1, |(i, _)| setting.profiles[i].capacity.default)
    });
    let timeline = simulate(
        &setting,
        &trace,
        Some(start),
        args.interval,
        initial,
        args.max_instances.unwrap_or(MAX_CAPACITY),
    );
    output::show(global.output, &timeline, |t| print!("{}", t.render()))
}

fn run_inflation(global: &Global, args: InflationArgs) -> anyhow::Result<()> {
    let options = ValidationOptions {
        relaxed: args.relaxed,
        max_instances: None,
    };
    let mut settings = args
        .settings
        .iter()
        .map(|path| {
            let setting = load_setting(path, options)?;
            Ok((plan_name(path, &setting), setting))
        })
        .collect::<anyhow::Result<Vec<(String, Setting)>>>()?;
    if !args.plans.is_empty() {
        let stored = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?
            .block_on(stored_settings(global, &args.plans))?;
        settings.extend(stored);
    }

    if let [(_, setting)] = settings.as_slice()
        && args.workers.is_empty()
    {
        let rates = inflation(setting);
        return output::show(global.output, &rates, |r| {
            print!("{}", stamp_autoscale::inflation::render(r));
        });
    }

    let at = args.at.unwrap_or_else(wall_clock_now);
    let members: Vec<PoolMember<'_>> = settings
        .iter()
        .map(|(plan, setting)| PoolMember::Autoscaled { plan, setting })
        .chain(
            args.workers
                .iter()
                .map(|(plan, workers)| PoolMember::Manual {
                    plan,
                    workers: *workers,
                }),
        )
        .collect();
    let pool = pool_inflation(&members, at);
    output::show(global.output, &pool, |p| print!("{}", p.render()))
}

/// The stored settings of `plans`, read through the API and validated as the service does.
async fn stored_settings(
    global: &Global,
    plans: &[String],
) -> anyhow::Result<Vec<(String, Setting)>> {
    let c = crate::cli::client(global)?;
    let mut out = Vec::new();
    for plan in plans {
        let view = c.autoscale(plan).await?;
        let options = ValidationOptions {
            relaxed: true,
            max_instances: None,
        };
        let setting = Setting::from_json(&view.setting.to_string(), &options)
            .with_context(|| format!("read the stored setting of plan {plan}"))?;
        out.push((plan.clone(), setting));
    }
    Ok(out)
}

/// Reads and validates a setting file. On refusal the error lists every problem with its JSON
/// path (the engine's message), and says when `--relaxed` would accept the setting.
fn load_setting(path: &Path, options: ValidationOptions) -> anyhow::Result<Setting> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the setting {}", path.display()))?;
    match Setting::from_json(&text, &options) {
        Ok(setting) => Ok(setting),
        Err(e) => {
            let relaxed = ValidationOptions {
                relaxed: true,
                ..options
            };
            let hint = if !options.relaxed
                && matches!(e, SettingError::Invalid(_))
                && Setting::from_json(&text, &relaxed).is_ok()
            {
                "\nThese floors are Azure's; --relaxed allows grains, windows and cooldowns down \
                 to 1 s for self-hosted use."
            } else {
                ""
            };
            Err(anyhow!("{e}{hint}"))
                .with_context(|| format!("read the setting {}", path.display()))
        }
    }
}

/// The plan a setting scales: `.../serverfarms/<plan>` in its `targetResourceUri`, else the
/// file name without its extension.
fn plan_name(path: &Path, setting: &Setting) -> String {
    let from_uri = setting.spec.target_resource_uri.as_ref().and_then(|uri| {
        let uri = uri.text();
        let mut parts = uri.split('/');
        parts.find(|p| p.eq_ignore_ascii_case("serverfarms"))?;
        parts.next().filter(|p| !p.is_empty()).map(str::to_string)
    });
    from_uri.unwrap_or_else(|| {
        path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        )
    })
}

/// A rule whose metric the trace lacks sees "no data" on every run (scale to `default`, never
/// in), which looks like an engine quirk when it is a typo; say so up front, on stderr so JSON
/// output stays clean.
fn warn_missing_columns(setting: &Setting, trace: &Trace) {
    let mut missing: Vec<&str> = Vec::new();
    for rule in setting.profiles.iter().flat_map(|p| &p.rules) {
        let metric: &str = &rule.trigger.metric_name;
        let known = trace
            .columns
            .iter()
            .any(|c| c.metric.eq_ignore_ascii_case(metric));
        if !known && !missing.contains(&metric) {
            missing.push(metric);
        }
    }
    for metric in missing {
        eprintln!(
            "note: the trace has no column {metric}; rules on it see no data (no scale-in, \
             raise to the profile's default). Add a {metric} column to the trace to simulate them."
        );
    }
}

fn wall_clock_now() -> DateTime<Utc> {
    let ms = SystemClock.now().0;
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(DateTime::UNIX_EPOCH)
}

fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}; give an RFC 3339 time such as 2026-11-23T08:00:00Z"))
}

/// `PLAN=N`.
fn parse_workers(text: &str) -> Result<(String, u32), String> {
    let (plan, n) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not PLAN=N, e.g. reports=3"))?;
    let plan = plan.trim();
    if plan.is_empty() {
        return Err(format!(
            "'{text}' has no plan name; give PLAN=N, e.g. reports=3"
        ));
    }
    let n = n
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("'{n}' is not a number of workers; give PLAN=N, e.g. reports=3"))?;
    Ok((plan.to_string(), n))
}

/// A positive duration: `30s`, `5m`, `1h`, `1h30m`, `2d`, `500ms`, bare seconds (`90`), or
/// ISO-8601 as Azure writes it (`PT30S`).
fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text.trim())?;
    if d.is_zero() {
        return Err("the interval must be longer than zero, e.g. 30s".into());
    }
    Ok(d)
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}' is not a duration; write e.g. 30s, 5m, 1h, 1h30m or PT30S");
    if text.starts_with(['P', 'p']) {
        return stamp_autoscale::duration::parse(text).map_err(|e| e.to_string());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let step = match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(step).ok_or_else(bad)?;
        rest = &rest[unit..];
    }
    if total.is_zero() && text.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, secs) in [
            ("30s", 30),
            ("5m", 300),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2d", 172_800),
            ("90", 90),
            ("PT1M", 60),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "s", "5x", "m5", "1.5m", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_interval("0s").is_err());
    }

    #[test]
    fn workers() {
        assert_eq!(parse_workers("reports=3"), Ok(("reports".into(), 3)));
        assert!(parse_workers("reports").is_err());
        assert!(parse_workers("=3").is_err());
        assert!(parse_workers("reports=x").is_err());
    }
}
