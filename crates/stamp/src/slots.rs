//! `stamp slot ...` and `stamp rollback`: deployment slots, swaps, traffic routing, rollback.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use stamp_api_types as wire;
use stamp_client::Client;

use crate::Output;
use crate::cli::wait_slot_rollout;
use crate::output::{self, table};

#[derive(clap::Subcommand)]
pub enum SlotCmd {
    /// Create a slot, served at <app>-<slot>.<domain> on the app's workers (Standard: 5 per
    /// app, Premium: 20). It starts without code; deploy to it with `--slot`.
    Create {
        app: String,
        name: String,
        /// Copy this slot's settings (e.g. production); content is never copied.
        #[arg(long)]
        clone_settings_from: Option<String>,
    },
    /// List an app's slots, production first.
    List { app: String },
    /// Delete a slot with its releases and instances.
    Delete { app: String, name: String },
    /// Change a slot: auto swap after every deploy.
    Update {
        app: String,
        name: String,
        /// Swap into this slot (e.g. production) after every successful deploy; "" turns
        /// auto swap off.
        #[arg(long)]
        auto_swap_to: Option<String>,
    },
    /// Route a share of production's clients to slots: `stamp slot route APP staging=10`.
    /// Slots left out get no rule; with no shares at all, every rule is removed. 0 allows
    /// opt-in with ?x-ms-routing-name=<slot> only.
    Route {
        app: String,
        #[arg(value_name = "SLOT=PERCENT")]
        shares: Vec<String>,
    },
    /// The app's current or last swap and its steps.
    Status { app: String },
    /// Swap two slots: warm the source up with the target's slot settings, then switch
    /// routing. `--complete` / `--cancel` finish a swap started with `--preview`.
    Swap {
        app: String,
        #[arg(long, required_unless_present_any = ["complete", "cancel"])]
        source: Option<String>,
        /// Default production.
        #[arg(long)]
        target: Option<String>,
        /// Stop once the source runs with the target's settings, for checking it first.
        #[arg(long, conflicts_with_all = ["complete", "cancel"])]
        preview: bool,
        #[arg(long, conflicts_with_all = ["cancel", "source", "target"])]
        complete: bool,
        #[arg(long, conflicts_with_all = ["source", "target"])]
        cancel: bool,
        /// Return once the swap started, without following it.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    app: String,
    /// The release to re-activate, e.g. v3: its code and settings, as a new release.
    #[arg(value_name = "vN")]
    version: String,
    /// The slot (default production).
    #[arg(long)]
    slot: Option<String>,
    #[arg(long)]
    no_wait: bool,
}

fn slot_rows(list: &[wire::SlotView]) {
    // Production gets what the routing rules leave, once there is any rule.
    let rules: Vec<u32> = list
        .iter()
        .filter_map(|s| s.routing)
        .map(u32::from)
        .collect();
    let rest = (!rules.is_empty()).then(|| 100u32.saturating_sub(rules.iter().sum()));
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let traffic = match (s.name.as_str(), s.routing, rest) {
                ("production", _, Some(rest)) => format!("{rest}%"),
                (_, Some(p), _) => format!("{p}%"),
                _ => "-".into(),
            };
            vec![
                s.name.clone(),
                s.release.map_or("-".into(), |v| format!("v{v}")),
                format!("{}/{}", s.instances.ready, s.instances.desired),
                traffic,
                s.auto_swap_to.clone().unwrap_or_else(|| "-".into()),
                s.url.clone(),
                if s.site.domains.is_empty() {
                    "-".into()
                } else {
                    s.site.domains.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "SLOT",
            "RELEASE",
            "READY",
            "TRAFFIC",
            "AUTO SWAP",
            "URL",
            "DOMAINS",
        ],
        &rows,
    );
}

pub async fn slot(c: &Client, out: Output, cmd: SlotCmd) -> anyhow::Result<()> {
    match cmd {
        SlotCmd::Create {
            app,
            name,
            clone_settings_from,
        } => {
            let s = c
                .create_slot(
                    &app,
                    &wire::CreateSlot {
                        name,
                        clone_settings_from,
                    },
                )
                .await?;
            output::show(out, &s, |s| {
                println!("Created slot {} of {app}: {}", s.name, s.url)
            })
        }
        SlotCmd::List { app } => {
            let list = c.slots(&app).await?;
            output::show(out, &list, |l| slot_rows(l))
        }
        SlotCmd::Delete { app, name } => {
            c.delete_slot(&app, &name).await?;
            if out == Output::Table {
                println!("Deleted slot {name} of {app}");
            }
            Ok(())
        }
        SlotCmd::Update {
            app,
            name,
            auto_swap_to,
        } => {
            let s = c
                .update_slot(&app, &name, &wire::UpdateSlot { auto_swap_to })
                .await?;
            output::show(out, &s, |s| slot_rows(std::slice::from_ref(s)))
        }
        SlotCmd::Status { app } => {
            let view = c.swap_status(&app).await?;
            output::show(out, &view, |v| {
                if v.state == "none" {
                    println!("{app} has no swap in progress or on record since the last start");
                    return;
                }
                println!("Swap {} → {}: {}", v.source, v.target, v.state);
                for step in &v.steps {
                    println!("  {step}");
                }
            })
        }
        SlotCmd::Route { app, shares } => {
            let mut rules = BTreeMap::new();
            for share in &shares {
                let (slot, percent) = share
                    .split_once('=')
                    .with_context(|| format!("expected SLOT=PERCENT, got {share:?}"))?;
                let percent: u8 = percent
                    .trim_end_matches('%')
                    .parse()
                    .ok()
                    .filter(|p| *p <= 100)
                    .with_context(|| {
                        format!("{share:?}: the share must be a whole percentage from 0 to 100")
                    })?;
                rules.insert(slot.to_string(), percent);
            }
            let list = c.set_routing(&app, &wire::SetRouting { rules }).await?;
            output::show(out, &list, |l| slot_rows(l))
        }
        SlotCmd::Swap {
            app,
            source,
            target,
            preview,
            complete,
            cancel,
            no_wait,
        } => {
            let action = if complete {
                Some("complete".to_string())
            } else if cancel {
                Some("cancel".to_string())
            } else {
                None
            };
            let started = c
                .swap(
                    &app,
                    &wire::SwapRequest {
                        source,
                        target,
                        preview,
                        action,
                    },
                )
                .await?;
            if no_wait {
                return output::show(out, &started, |s| {
                    println!("Swap {} → {}: {}", s.source, s.target, s.state)
                });
            }
            // Steps of an earlier phase (a preview) were shown when it ran.
            let skip = started.steps.len().saturating_sub(1);
            let view = follow_swap(c, &app, out, skip, Duration::from_secs(600)).await?;
            if out == Output::Json {
                output::show(out, &view, |_| {})?;
            }
            if view.state == "reverted" && !cancel {
                bail!(
                    "the swap {} → {} was reverted: {}",
                    view.source,
                    view.target,
                    view.steps.last().map(String::as_str).unwrap_or("")
                );
            }
            Ok(())
        }
    }
}

/// Prints each new step of the app's swap until it ends or waits in preview.
pub(crate) async fn follow_swap(
    c: &Client,
    app: &str,
    out: Output,
    skip: usize,
    timeout: Duration,
) -> anyhow::Result<wire::SwapView> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut shown = skip;
    loop {
        let view = c.swap_status(app).await?;
        if out == Output::Table {
            for step in view.steps.iter().skip(shown) {
                println!("{} → {}: {step}", view.source, view.target);
            }
        }
        shown = shown.max(view.steps.len());
        if view.done || view.state == "preview" {
            return Ok(view);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the swap is still {} after {} s; `stamp slot swap {app} --no-wait` returns at once, and `stamp logs {app}` shows its steps",
                view.state,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn rollback(c: &Client, out: Output, args: RollbackArgs) -> anyhow::Result<()> {
    let version: u32 = args
        .version
        .trim_start_matches('v')
        .parse()
        .with_context(|| format!("expected a release like v3, got {:?}", args.version))?;
    let release = c.rollback(&args.app, args.slot.as_deref(), version).await?;
    if out == Output::Table {
        println!(
            "Release v{} created: {}",
            release.version, release.description
        );
        if !args.no_wait {
            wait_slot_rollout(
                c,
                &args.app,
                args.slot.as_deref(),
                Some(release.version),
                Duration::from_secs(300),
            )
            .await?;
        }
    }
    output::show(out, &release, |_| {})
}
