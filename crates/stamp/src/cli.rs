//! The CLI: `az webapp`-style noun-verb commands with Heroku's formation syntax where it reads
//! better. Every command talks to the REST API through `stamp-client` and prints a table or,
//! with `--output json`, JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use stamp_api_types as wire;
use stamp_client::Client;

use crate::output::{self, age, cores, mib, table, timestamp};
use crate::up::{API_URL_FILE, TOKEN_FILE};
use crate::{Command, Global, Output};

#[derive(clap::Subcommand)]
pub enum PlanCmd {
    /// Create a plan.
    Create {
        name: String,
        /// SKU, e.g. F1, B1, S1, P1v3 (`stamp plan skus` lists them).
        #[arg(long)]
        sku: String,
        /// Number of workers.
        #[arg(long, default_value_t = 1)]
        workers: u32,
    },
    /// List plans.
    List,
    /// Show a plan.
    Show { name: String },
    /// Set a plan's number of workers; every app of the plan runs on every worker.
    Scale {
        name: String,
        #[arg(long)]
        workers: u32,
        /// Return without waiting for the instances to be ready.
        #[arg(long)]
        no_wait: bool,
    },
    /// Change a plan's settings.
    Update {
        name: String,
        /// Per-app scaling (Standard and up): each app's --max-workers caps how many of the
        /// plan's workers run it.
        #[arg(long)]
        per_app_scaling: Option<bool>,
    },
    /// Delete a plan (it must have no apps).
    Delete { name: String },
    /// List the SKUs and their limits.
    Skus,
}

#[derive(clap::Subcommand)]
pub enum AppCmd {
    /// Create an app in a plan; it is served at <name>.<domain>.
    Create {
        name: String,
        #[arg(long)]
        plan: String,
    },
    /// List apps.
    List,
    /// Show an app.
    Show { name: String },
    /// Delete an app and stop its instances.
    Delete { name: String },
    /// Change an app's front-end configuration.
    Update(UpdateAppArgs),
    /// Restart every instance of an app, rolling.
    Restart {
        name: String,
        /// The slot to restart (default production).
        #[arg(long)]
        slot: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(clap::Args)]
pub struct UpdateAppArgs {
    name: String,
    /// The slot whose front-end configuration changes (default production).
    #[arg(long)]
    slot: Option<String>,
    /// Redirect HTTP to HTTPS (301).
    #[arg(long)]
    https_only: Option<bool>,
    /// Pin each client to an instance with the ARRAffinity cookie (default on).
    #[arg(long)]
    client_affinity: Option<bool>,
    /// round-robin (default) or least-requests (power of two choices).
    #[arg(long)]
    balancing: Option<String>,
    /// Seconds the instance has to start its response (default 230, as Azure).
    #[arg(long)]
    request_timeout: Option<u64>,
    /// Health check path, e.g. /healthz; "" turns the health check off. Changing it restarts
    /// the app's instances (rolling), as in Azure.
    #[arg(long)]
    health_path: Option<String>,
    /// Seconds between health checks of each instance (default 60).
    #[arg(long)]
    health_interval: Option<u64>,
    /// Consecutive failures before an instance leaves rotation (2-10, default 10).
    #[arg(long)]
    health_threshold: Option<u32>,
    /// Most instances (percent) the health check may take out of rotation (default 50).
    #[arg(long)]
    health_max_unhealthy_percent: Option<u32>,
    /// Per-app scaling: run the app on at most N of the plan's workers, or "all".
    #[arg(long, value_name = "N|all")]
    max_workers: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum DomainCmd {
    /// Route a custom domain (e.g. www.example.com or *.example.com) to the app, or to one of
    /// its slots with --slot (domains stay with their slot in a swap).
    Add {
        app: String,
        domain: String,
        #[arg(long)]
        slot: Option<String>,
    },
    /// Stop routing a custom domain to the app (or its slot).
    Remove {
        app: String,
        domain: String,
        #[arg(long)]
        slot: Option<String>,
    },
    /// List the custom domains of the app (or of its slot).
    List {
        app: String,
        #[arg(long)]
        slot: Option<String>,
    },
}

#[derive(clap::Subcommand)]
pub enum CertCmd {
    /// Upload a certificate chain and its private key (PEM); served for the names it covers.
    Upload {
        app: String,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// List the app's certificates.
    List { app: String },
    /// Remove a certificate by thumbprint.
    Remove { app: String, thumbprint: String },
}

#[derive(clap::Subcommand)]
pub enum AccessCmd {
    /// Add a rule; lower priorities are checked first and the first match decides. Once any
    /// rule exists, requests matching none are denied (403).
    Add {
        app: String,
        #[arg(long)]
        priority: u32,
        /// Allow this network (CIDR or address).
        #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
        allow: Option<String>,
        /// Deny this network (CIDR or address).
        #[arg(long)]
        deny: Option<String>,
        /// The rule's name (default: <action>-<priority>).
        #[arg(long)]
        name: Option<String>,
        /// The slot whose rules change (default production; rules never swap).
        #[arg(long)]
        slot: Option<String>,
    },
    /// Remove a rule by name.
    Remove {
        app: String,
        name: String,
        #[arg(long)]
        slot: Option<String>,
    },
    /// List the rules in evaluation order.
    List {
        app: String,
        #[arg(long)]
        slot: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct AppArg {
    /// The app.
    app: String,
    /// A deployment slot (default production; `stamp ps` without it shows every slot).
    #[arg(long)]
    slot: Option<String>,
}

#[derive(clap::Args)]
pub struct DeployArgs {
    /// A directory (packed as .tar.gz), a .zip or a .tar.gz with a Procfile at its root.
    path: PathBuf,
    #[arg(long)]
    app: String,
    /// Deploy to this slot (default production).
    #[arg(long)]
    slot: Option<String>,
    /// Return once the release is created, without waiting for the rollout.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the new release's instances to be ready, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(clap::Subcommand)]
pub enum ConfigCmd {
    /// Set settings: `stamp config set APP KEY=VALUE ...`. Makes a new release, rolling.
    Set {
        app: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// The slot (default production).
        #[arg(long)]
        slot: Option<String>,
        /// Mark these settings as slot settings: they stay with their slot in a swap.
        #[arg(long, conflicts_with = "no_slot_setting")]
        slot_setting: bool,
        /// Make these settings swap with the content again.
        #[arg(long)]
        no_slot_setting: bool,
        #[arg(long)]
        no_wait: bool,
    },
    /// Remove settings: `stamp config unset APP KEY ...`.
    Unset {
        app: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        /// The slot (default production).
        #[arg(long)]
        slot: Option<String>,
        /// Also stop treating these names as slot settings.
        #[arg(long)]
        no_slot_setting: bool,
        #[arg(long)]
        no_wait: bool,
    },
    /// List an app's settings; slot settings are marked.
    List {
        app: String,
        /// The slot (default production).
        #[arg(long)]
        slot: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct LogsArgs {
    app: String,
    /// Only what concerns this slot: its instances' output, its events (a swap's are in both
    /// slots') and the app's.
    #[arg(long)]
    slot: Option<String>,
    /// Keep following new lines.
    #[arg(long, short)]
    tail: bool,
    /// How many past lines to show first.
    #[arg(long, short = 'n', default_value_t = 100)]
    lines: usize,
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The API URL and token: flags or environment first, then what `stamp up` wrote to the data
/// directory, then the default address.
pub(crate) fn client(global: &Global) -> anyhow::Result<Client> {
    let data = global.data_dir();
    let api = global
        .api_url
        .clone()
        .or_else(|| read_trimmed(&data.join(API_URL_FILE)))
        .unwrap_or_else(|| "http://127.0.0.1:7070".to_string());
    let token = match global.token.clone() {
        Some(t) => t,
        None => read_trimmed(&data.join(TOKEN_FILE)).with_context(|| {
            format!(
                "no API token: set STAMP_TOKEN or --token, or run this on the machine of `stamp up` (it writes {})",
                data.join(TOKEN_FILE).display()
            )
        })?,
    };
    Ok(Client::new(&api, &token))
}

pub async fn run(global: &Global, command: Command) -> anyhow::Result<()> {
    let c = client(global)?;
    let out = global.output;
    match command {
        Command::Up(_) => unreachable!("handled in main"),
        Command::Status => {
            let s = c.status().await?;
            output::show(out, &s, |s| {
                println!("Stamp {}", s.version);
                println!("  API    {}", c.base());
                println!("  apps   {}", s.app_url_template);
                println!(
                    "  node   {}/{} cores, {}/{} used by plans",
                    cores(s.node.used_millicores),
                    cores(s.node.millicores),
                    mib(s.node.used_memory_mib),
                    mib(s.node.memory_mib)
                );
            })
        }
        Command::Plan(cmd) => plan(&c, out, cmd).await,
        Command::App(cmd) => app(&c, out, cmd).await,
        Command::Deploy(args) => deploy(&c, out, args).await,
        Command::Domain(cmd) => {
            let (app, list) = match cmd {
                DomainCmd::Add { app, domain, slot } => {
                    let l = c.add_domain(&app, slot.as_deref(), &domain).await?;
                    (app, l)
                }
                DomainCmd::Remove { app, domain, slot } => {
                    let l = c.remove_domain(&app, slot.as_deref(), &domain).await?;
                    (app, l)
                }
                DomainCmd::List { app, slot } => {
                    let l = c.domains(&app, slot.as_deref()).await?;
                    (app, l)
                }
            };
            output::show(out, &list, |list| {
                if list.is_empty() {
                    println!("{app} has no custom domains");
                }
                for d in list {
                    println!("{d}");
                }
            })
        }
        Command::Access(cmd) => access(&c, out, cmd).await,
        Command::Cert(cmd) => cert(&c, out, cmd).await,
        Command::Scale(args) => crate::workers::scale(&c, out, args).await,
        Command::Pool(cmd) => crate::workers::pool(&c, out, cmd).await,
        Command::Ps(a) => {
            let mut list = c.instances(&a.app, a.slot.as_deref()).await?;
            // Grouped by process type, web first, as `heroku ps` shows them.
            list.sort_by(|a, b| {
                (
                    a.slot != "production",
                    &a.slot,
                    a.process_type != "web",
                    &a.process_type,
                    &a.worker,
                    &a.id,
                )
                    .cmp(&(
                        b.slot != "production",
                        &b.slot,
                        b.process_type != "web",
                        &b.process_type,
                        &b.worker,
                        &b.id,
                    ))
            });
            output::show(out, &list, |list| {
                // A SLOT column only when some instance belongs to another slot.
                let slots = list.iter().any(|i| i.slot != "production");
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|i| {
                        let mut row = vec![
                            i.process_type.clone(),
                            i.id.clone(),
                            i.worker.clone(),
                            format!("v{}", i.release),
                            if i.healthy {
                                i.state.clone()
                            } else {
                                format!("{} (unhealthy)", i.state)
                            },
                            i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                            i.port.to_string(),
                            age(i.started_at),
                            i.restarts.to_string(),
                        ];
                        if slots {
                            row.insert(0, i.slot.clone());
                        }
                        row
                    })
                    .collect();
                let mut header = vec![
                    "TYPE", "ID", "WORKER", "RELEASE", "STATE", "PID", "PORT", "UPTIME", "RESTARTS",
                ];
                if slots {
                    header.insert(0, "SLOT");
                }
                table(&header, &rows);
            })
        }
        Command::Config(cmd) => config(&c, out, cmd).await,
        Command::Slot(cmd) => crate::slots::slot(&c, out, cmd).await,
        Command::Rollback(args) => crate::slots::rollback(&c, out, args).await,
        Command::Releases(a) => {
            let list = c.releases(&a.app, a.slot.as_deref()).await?;
            output::show(out, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        vec![
                            format!("v{}", r.version),
                            timestamp(r.created_at),
                            r.description.clone(),
                            r.actor.clone(),
                        ]
                    })
                    .collect();
                table(&["RELEASE", "CREATED", "DESCRIPTION", "BY"], &rows);
            })
        }
        Command::Logs(args) => {
            let mut lines = Box::pin(
                c.logs(&args.app, args.slot.as_deref(), args.lines, args.tail)
                    .await?,
            );
            while let Some(line) = lines.next().await {
                let line = line?;
                match out {
                    Output::Json => println!("{}", serde_json::to_string(&line)?),
                    Output::Table => {
                        println!("{} {}: {}", timestamp(line.ts), line.source, line.text)
                    }
                }
            }
            Ok(())
        }
    }
}

fn plan_rows(plans: &[wire::PlanView]) {
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.sku.name.clone(),
                p.sku.tier.clone(),
                p.workers.to_string(),
                p.sku.max_workers.to_string(),
                p.apps.join(","),
            ]
        })
        .collect();
    table(&["NAME", "SKU", "TIER", "WORKERS", "MAX", "APPS"], &rows);
}

async fn plan(c: &Client, out: Output, cmd: PlanCmd) -> anyhow::Result<()> {
    match cmd {
        PlanCmd::Create { name, sku, workers } => {
            let p = c
                .create_plan(&wire::CreatePlan {
                    name,
                    sku,
                    workers: Some(workers),
                })
                .await?;
            output::show(out, &p, |p| {
                println!(
                    "Created plan {} ({} {}, {} worker(s) of {} cores / {})",
                    p.name,
                    p.sku.tier,
                    p.sku.name,
                    p.workers,
                    cores(p.sku.millicores),
                    mib(p.sku.memory_mib)
                )
            })
        }
        PlanCmd::List => {
            let plans = c.plans().await?;
            output::show(out, &plans, |p| plan_rows(p))
        }
        PlanCmd::Show { name } => {
            let p = c.plan(&name).await?;
            output::show(out, &p, |p| {
                plan_rows(std::slice::from_ref(p));
                println!();
                crate::workers::placement_rows(p);
            })
        }
        PlanCmd::Update {
            name,
            per_app_scaling,
        } => {
            let p = c
                .update_plan(&name, &wire::UpdatePlan { per_app_scaling })
                .await?;
            output::show(out, &p, |p| {
                println!(
                    "Plan {}: per-app scaling {}",
                    p.name,
                    if p.per_app_scaling { "on" } else { "off" }
                )
            })
        }
        PlanCmd::Scale {
            name,
            workers,
            no_wait,
        } => {
            let p = c.scale_plan(&name, workers).await?;
            if !no_wait && out == Output::Table {
                for app in &p.apps {
                    wait_rollout(c, app, None, Duration::from_secs(300)).await?;
                }
            }
            output::show(out, &p, |p| {
                println!("Plan {} now has {} worker(s)", p.name, p.workers)
            })
        }
        PlanCmd::Delete { name } => {
            c.delete_plan(&name).await?;
            if out == Output::Table {
                println!("Deleted plan {name}");
            }
            Ok(())
        }
        PlanCmd::Skus => {
            let skus = c.skus().await?;
            output::show(out, &skus, |skus| {
                let rows: Vec<Vec<String>> = skus
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.tier.clone(),
                            cores(s.millicores),
                            mib(s.memory_mib),
                            s.max_workers.to_string(),
                            s.slots_per_app.to_string(),
                            s.outbound_connections.to_string(),
                            if s.autoscale { "yes" } else { "no" }.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "SKU",
                        "TIER",
                        "CORES",
                        "MEMORY",
                        "MAX",
                        "SLOTS",
                        "OUTBOUND",
                        "AUTOSCALE",
                    ],
                    &rows,
                );
            })
        }
    }
}

fn app_rows(apps: &[wire::AppView]) {
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.plan.clone(),
                a.release
                    .map(|v| format!("v{v}"))
                    .unwrap_or_else(|| "-".into()),
                format!("{}/{}", a.instances.ready, a.instances.desired),
                a.url.clone(),
            ]
        })
        .collect();
    table(&["NAME", "PLAN", "RELEASE", "READY", "URL"], &rows);
}

async fn app(c: &Client, out: Output, cmd: AppCmd) -> anyhow::Result<()> {
    match cmd {
        AppCmd::Create { name, plan } => {
            let a = c.create_app(&wire::CreateApp { name, plan }).await?;
            output::show(out, &a, |a| {
                println!("Created app {} in plan {}: {}", a.name, a.plan, a.url);
                println!("Deploy it with: stamp deploy <dir> --app {}", a.name);
            })
        }
        AppCmd::List => {
            let apps = c.apps().await?;
            output::show(out, &apps, |a| app_rows(a))
        }
        AppCmd::Show { name } => {
            let a = c.app(&name).await?;
            output::show(out, &a, |a| {
                app_rows(std::slice::from_ref(a));
                println!();
                site_rows(a);
            })
        }
        AppCmd::Delete { name } => {
            c.delete_app(&name).await?;
            if out == Output::Table {
                println!("Deleted app {name}");
            }
            Ok(())
        }
        AppCmd::Update(u) => {
            let req = wire::UpdateApp {
                https_only: u.https_only,
                client_affinity: u.client_affinity,
                balancing: u.balancing,
                request_timeout_secs: u.request_timeout,
                health_check_path: u.health_path,
                health_check_interval_secs: u.health_interval,
                health_check_unhealthy_after: u.health_threshold,
                health_check_max_unhealthy_percent: u.health_max_unhealthy_percent,
                max_workers: u.max_workers.as_deref().map(crate::workers::parse_cap),
            };
            let a = c.update_app(&u.name, u.slot.as_deref(), &req).await?;
            output::show(out, &a, site_rows)
        }
        AppCmd::Restart {
            name,
            slot,
            no_wait,
        } => {
            let a = c.restart_app(&name, slot.as_deref()).await?;
            if !no_wait && out == Output::Table {
                wait_slot_rollout(c, &name, slot.as_deref(), None, Duration::from_secs(300))
                    .await?;
            }
            output::show(out, &a, |a| println!("Restarted {}", a.name))
        }
    }
}

fn site_rows(a: &wire::AppView) {
    let s = &a.site;
    let on = |b: bool| if b { "on" } else { "off" }.to_string();
    let mut rows = vec![
        vec!["https only".to_string(), on(s.https_only)],
        vec!["client affinity".to_string(), on(s.client_affinity)],
        vec!["balancing".to_string(), s.balancing.clone()],
        vec![
            "request timeout".to_string(),
            format!("{} s", s.request_timeout_secs),
        ],
        vec![
            "health check".to_string(),
            s.health_check.as_ref().map_or("off".to_string(), |h| {
                format!(
                    "{} every {} s, unhealthy after {} failures, at most {}% removed",
                    h.path, h.interval_secs, h.unhealthy_after, h.max_unhealthy_percent
                )
            }),
        ],
    ];
    rows.push(vec![
        "custom domains".to_string(),
        if s.domains.is_empty() {
            "-".to_string()
        } else {
            s.domains.join(", ")
        },
    ]);
    rows.push(vec![
        "access rules".to_string(),
        s.access_rules.len().to_string(),
    ]);
    table(&["SETTING", "VALUE"], &rows);
}

async fn cert(c: &Client, out: Output, cmd: CertCmd) -> anyhow::Result<()> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
    let list = match cmd {
        CertCmd::Upload { app, cert, key } => {
            let req = wire::UploadCertificate {
                cert_pem: read(&cert)?,
                key_pem: read(&key)?,
            };
            vec![c.upload_certificate(&app, &req).await?]
        }
        CertCmd::List { app } => c.certificates(&app).await?,
        CertCmd::Remove { app, thumbprint } => {
            c.remove_certificate(&app, &thumbprint).await?;
            if out == Output::Table {
                println!("Removed certificate {thumbprint}");
            }
            return Ok(());
        }
    };
    output::show(out, &list, |list| {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|c| {
                vec![
                    c.thumbprint.clone(),
                    c.hostnames.join(","),
                    timestamp(c.not_after),
                ]
            })
            .collect();
        table(&["THUMBPRINT", "HOSTNAMES", "EXPIRES"], &rows);
    })
}

async fn access(c: &Client, out: Output, cmd: AccessCmd) -> anyhow::Result<()> {
    let rules = match cmd {
        AccessCmd::Add {
            app,
            priority,
            allow,
            deny,
            name,
            slot,
        } => {
            let (action, network) = match (allow, deny) {
                (Some(n), None) => ("allow", n),
                (None, Some(n)) => ("deny", n),
                _ => bail!("give exactly one of --allow CIDR or --deny CIDR"),
            };
            let rule = wire::AccessRuleView {
                name: name.unwrap_or_else(|| format!("{action}-{priority}")),
                priority,
                action: action.to_string(),
                network,
            };
            c.add_access_rule(&app, slot.as_deref(), &rule).await?
        }
        AccessCmd::Remove { app, name, slot } => {
            c.remove_access_rule(&app, slot.as_deref(), &name).await?
        }
        AccessCmd::List { app, slot } => c.access_rules(&app, slot.as_deref()).await?,
    };
    output::show(out, &rules, |rules| {
        let rows: Vec<Vec<String>> = rules
            .iter()
            .map(|r| {
                vec![
                    r.priority.to_string(),
                    r.name.clone(),
                    r.action.clone(),
                    r.network.clone(),
                ]
            })
            .collect();
        table(&["PRIORITY", "NAME", "ACTION", "NETWORK"], &rows);
        if !rules.is_empty() {
            println!("(requests matching no rule are denied)");
        }
    })
}

async fn config(c: &Client, out: Output, cmd: ConfigCmd) -> anyhow::Result<()> {
    let (app, slot, req, no_wait) = match cmd {
        ConfigCmd::List { app, slot } => {
            let s = c.settings(&app, slot.as_deref()).await?;
            let sticky_names = s.slot_settings;
            return output::show(out, &s.settings, |settings| {
                for (k, v) in settings {
                    let sticky = if sticky_names.contains(k) {
                        "  (slot setting)"
                    } else {
                        ""
                    };
                    println!("{k}={v}{sticky}");
                }
            });
        }
        ConfigCmd::Set {
            app,
            pairs,
            slot,
            slot_setting,
            no_slot_setting,
            no_wait,
        } => {
            let mut set = BTreeMap::new();
            for p in &pairs {
                let (k, v) = stamp_model::settings::parse_assignment(p)?;
                set.insert(k, v);
            }
            let req = wire::UpdateSettings {
                set,
                unset: vec![],
                slot_setting: sticky_flag(slot_setting, no_slot_setting),
            };
            (app, slot, req, no_wait)
        }
        ConfigCmd::Unset {
            app,
            keys,
            slot,
            no_slot_setting,
            no_wait,
        } => (
            app,
            slot,
            wire::UpdateSettings {
                set: BTreeMap::new(),
                unset: keys,
                slot_setting: sticky_flag(false, no_slot_setting),
            },
            no_wait,
        ),
    };
    let s = c.update_settings(&app, slot.as_deref(), &req).await?;
    if let (Some(r), false, Output::Table) = (&s.release, no_wait, out) {
        println!("Release v{} created: {}", r.version, r.description);
        wait_slot_rollout(
            c,
            &app,
            slot.as_deref(),
            Some(r.version),
            Duration::from_secs(300),
        )
        .await?;
    }
    output::show(out, &s, |s| {
        if s.release.is_none() {
            println!("No change.");
        }
    })
}

/// `--slot-setting` / `--no-slot-setting` as the API takes them.
fn sticky_flag(mark: bool, unmark: bool) -> Option<bool> {
    match (mark, unmark) {
        (true, _) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    }
}

/// Packs a directory into a temporary .tar.gz, or uses an archive file as it is.
fn artifact_file(path: &Path) -> anyhow::Result<(PathBuf, Option<tempfile::NamedTempFile>)> {
    let meta = std::fs::metadata(path).with_context(|| format!("read {}", path.display()))?;
    if !meta.is_dir() {
        return Ok((path.to_path_buf(), None));
    }
    let mut tmp = tempfile::Builder::new()
        .prefix("stamp-deploy-")
        .suffix(".tar.gz")
        .tempfile()
        .context("create a temporary archive")?;
    stamp_artifact::pack_dir(path, tmp.as_file_mut())
        .with_context(|| format!("pack {}", path.display()))?;
    Ok((tmp.path().to_path_buf(), Some(tmp)))
}

async fn deploy(c: &Client, out: Output, args: DeployArgs) -> anyhow::Result<()> {
    let path = args.path.clone();
    let (file, _tmp) = tokio::task::spawn_blocking(move || artifact_file(&path)).await??;
    let len = std::fs::metadata(&file)?.len();
    let bar = if out == Output::Table {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "Uploading {bytes:>10}/{total_bytes:10} [{bar:30}] {bytes_per_sec}",
        )?
        .progress_chars("=> "),
    );
    let f = tokio::fs::File::open(&file)
        .await
        .with_context(|| format!("open {}", file.display()))?;
    let progress = bar.clone();
    let body = tokio_util::io::ReaderStream::with_capacity(f, 64 * 1024).inspect(move |chunk| {
        if let Ok(b) = chunk {
            progress.inc(b.len() as u64);
        }
    });
    let release = c.deploy(&args.app, args.slot.as_deref(), len, body).await;
    bar.finish_and_clear();
    let release = release?;
    if out == Output::Table {
        println!(
            "Release v{} created ({})",
            release.version, release.description
        );
    }
    if !args.no_wait && out == Output::Table {
        // A slot with auto swap goes straight into a swap (the answer says whether one
        // started): follow that instead of the rollout.
        let configured = match args.slot.as_deref() {
            Some(slot) if slot != "production" && release.auto_swap_to.is_none() => c
                .slots(&args.app)
                .await?
                .into_iter()
                .find(|s| s.name == slot)
                .and_then(|s| s.auto_swap_to),
            _ => None,
        };
        if let Some(target) = configured {
            bail!(
                "release v{} is deployed, but its auto swap into {target} did not start; see `stamp logs {}`",
                release.version,
                args.app
            );
        }
        match release.auto_swap_to.clone() {
            Some(target) => {
                println!("Auto swap into {target}:");
                let view = crate::slots::follow_swap(
                    c,
                    &args.app,
                    out,
                    0,
                    Duration::from_secs(args.timeout),
                )
                .await?;
                if view.state == "reverted" {
                    bail!(
                        "release v{} is deployed, but its auto swap into {target} was reverted",
                        release.version
                    );
                }
            }
            None => {
                wait_slot_rollout(
                    c,
                    &args.app,
                    args.slot.as_deref(),
                    Some(release.version),
                    Duration::from_secs(args.timeout),
                )
                .await?
            }
        }
    }
    output::show(out, &release, |_| {})
}

/// Waits until every instance the app should have is ready and no older one remains, showing a
/// spinner. Fails with advice if that does not happen within `timeout`.
pub(crate) async fn wait_rollout(
    c: &Client,
    app: &str,
    version: Option<u32>,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_slot_rollout(c, app, None, version, timeout).await
}

/// [`wait_rollout`] of one slot (`None`: production).
pub(crate) async fn wait_slot_rollout(
    c: &Client,
    app: &str,
    slot: Option<&str>,
    version: Option<u32>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    let name = match slot {
        Some(s) if s != "production" => format!("{app} ({s})"),
        _ => app.to_string(),
    };
    let what = version.map_or_else(|| name.clone(), |v| format!("{name} v{v}"));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (counts, url) = match slot {
            Some(s) if s != "production" => {
                let slots = c.slots(app).await?;
                let view = slots
                    .into_iter()
                    .find(|v| v.name == s)
                    .with_context(|| format!("app {app} has no slot {s}"))?;
                (view.instances, view.url)
            }
            _ => {
                let a = c.app(app).await?;
                (a.instances, a.url)
            }
        };
        let i = &counts;
        spinner.set_message(format!(
            "Rolling out {what}: {}/{} instances ready{}",
            i.ready,
            i.desired,
            if i.stale > 0 {
                format!(", {} old still running", i.stale)
            } else {
                String::new()
            }
        ));
        if i.ready == i.desired && i.stale == 0 {
            spinner.finish_and_clear();
            println!("{what} is running on {} instance(s): {url}", i.desired);
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            spinner.finish_and_clear();
            bail!(
                "{what} did not become ready within {} s ({}/{} instances ready); the previous release keeps serving. See `stamp logs {app}` and `stamp ps {app}`",
                timeout.as_secs(),
                i.ready,
                i.desired
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
