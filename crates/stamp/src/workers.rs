//! Worker commands: `stamp scale` (Heroku's formation), `stamp pool` (warm worker pools), and
//! the pieces of `plan show` and `app update` about per-app scaling.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use stamp_api_types as wire;
use stamp_client::Client;

use crate::Output;
use crate::output::{self, cores, mib, table};

#[derive(clap::Args)]
pub struct ScaleArgs {
    app: String,
    /// `TYPE=N` (absolute) or `TYPE+N` / `TYPE-N` (relative), e.g. `web=2 worker=1`.
    #[arg(required = true, value_name = "TYPE=N")]
    counts: Vec<String>,
    /// Return without waiting for the instances to be ready.
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Subcommand)]
pub enum PoolCmd {
    /// List the worker sizes with their warm targets and what is available now.
    List,
    /// Set how many warm workers of a size the node keeps ready.
    Set {
        /// A worker size: shared, small, medium, large, or a Premium size like p1v3.
        size: String,
        #[arg(long, allow_negative_numbers = true)]
        warm: i64,
    },
}

/// `--max-workers N|all` for the API: a number, or the word as given (the API explains what
/// it accepts).
pub fn parse_cap(s: &str) -> wire::WorkerCap {
    match s.trim().parse::<i64>() {
        Ok(n) => wire::WorkerCap::Count(n),
        Err(_) => wire::WorkerCap::All(s.trim().to_string()),
    }
}

/// One `TYPE=N`, `TYPE+N` or `TYPE-N`: the type, and the new count given the current one.
fn parse_count(arg: &str, current: &BTreeMap<String, u32>) -> anyhow::Result<(String, i64)> {
    // Types may contain `-`: `=` first, else the last `+` or `-`.
    let Some(at) = arg.find('=').or_else(|| arg.rfind(['+', '-'])) else {
        bail!("{arg:?}: write TYPE=N, TYPE+N or TYPE-N, e.g. web=2");
    };
    let (kind, rest) = arg.split_at(at);
    let (op, number) = rest.split_at(1);
    let Ok(n) = number.parse::<i64>() else {
        bail!("{arg:?}: {number:?} is not a whole number");
    };
    if kind.is_empty() {
        bail!("{arg:?}: name a process type before {op:?}");
    }
    let now = i64::from(current.get(kind).copied().unwrap_or(0));
    let count = match op {
        "=" => n,
        "+" => now + n,
        _ => now - n,
    };
    Ok((kind.to_string(), count))
}

pub async fn scale(c: &Client, out: Output, args: ScaleArgs) -> anyhow::Result<()> {
    let current: BTreeMap<String, u32> = c
        .formation(&args.app)
        .await?
        .types
        .into_iter()
        .map(|t| (t.process_type, t.count))
        .collect();
    let mut counts = BTreeMap::new();
    for arg in &args.counts {
        let (kind, n) = parse_count(arg, &current)?;
        counts.insert(kind, n);
    }
    let f = c.scale_formation(&args.app, counts).await?;
    if !args.no_wait && out == Output::Table {
        crate::cli::wait_rollout(c, &args.app, None, Duration::from_secs(300)).await?;
    }
    output::show(out, &f, formation_rows)
}

fn formation_rows(f: &wire::FormationView) {
    let rows: Vec<Vec<String>> = f
        .types
        .iter()
        .map(|t| {
            vec![
                t.process_type.clone(),
                if t.default {
                    format!("{} (default)", t.count)
                } else {
                    t.count.to_string()
                },
                t.command.clone(),
            ]
        })
        .collect();
    table(&["TYPE", "COUNT", "COMMAND"], &rows);
}

/// `plan show`: which app's process types each worker runs.
pub fn placement_rows(p: &wire::PlanView) {
    println!(
        "per-app scaling: {}",
        if p.per_app_scaling { "on" } else { "off" }
    );
    let rows: Vec<Vec<String>> = p
        .placement
        .iter()
        .map(|w| {
            vec![
                format!("{}/{}", p.name, w.index),
                if w.runs.is_empty() {
                    "-".to_string()
                } else {
                    w.runs.join(" ")
                },
            ]
        })
        .collect();
    table(&["WORKER", "RUNS"], &rows);
}

pub async fn pool(c: &Client, out: Output, cmd: PoolCmd) -> anyhow::Result<()> {
    let pools = match cmd {
        PoolCmd::List => c.pools().await?,
        PoolCmd::Set { size, warm } => vec![c.set_pool(&size, warm).await?],
    };
    output::show(out, &pools, |pools| {
        let rows: Vec<Vec<String>> = pools
            .iter()
            .map(|p| {
                vec![
                    p.size.clone(),
                    p.skus.join(","),
                    cores(p.millicores),
                    mib(p.memory_mib),
                    p.warm_target.to_string(),
                    p.available.to_string(),
                    p.in_use.to_string(),
                ]
            })
            .collect();
        table(
            &[
                "SIZE",
                "SKUS",
                "CORES",
                "MEMORY",
                "WARM TARGET",
                "AVAILABLE",
                "IN USE",
            ],
            &rows,
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_absolute_or_relative() {
        let now = BTreeMap::from([("web".to_string(), 2), ("worker".to_string(), 1)]);
        assert_eq!(parse_count("web=3", &now).unwrap(), ("web".into(), 3));
        assert_eq!(parse_count("worker+2", &now).unwrap(), ("worker".into(), 3));
        assert_eq!(parse_count("web-1", &now).unwrap(), ("web".into(), 1));
        assert_eq!(parse_count("clock+1", &now).unwrap(), ("clock".into(), 1));
        assert_eq!(
            parse_count("worker-high=2", &now).unwrap(),
            ("worker-high".into(), 2)
        );
        for bad in ["web", "=2", "web=x", "web=-"] {
            assert!(parse_count(bad, &now).is_err(), "{bad}");
        }
        assert_eq!(parse_cap("3"), wire::WorkerCap::Count(3));
        assert_eq!(parse_cap("all"), wire::WorkerCap::All("all".into()));
    }
}
