//! Placement. PURE: from plans, apps and their current releases, the desired instances.
//!
//! Azure semantics (§2.2 of the reference): every app of a plan runs its `web` process on every
//! worker of the plan, so scaling a plan scales all its apps together. Per-app caps and other
//! process types come with the workers issue; they extend [`desired_instances`].

use stamp_model::{
    App, InstanceKey, InstanceSpec, Millis, Plan, ProcessType, Release, SlotName, WorkerId,
};

/// How long an instance may take to accept connections on `$PORT` (Azure's default start limit).
pub const DEFAULT_START_TIMEOUT: Millis = Millis::from_secs(230);

/// One app with the release its production slot runs.
pub struct AppState<'a> {
    pub app: &'a App,
    pub release: Option<&'a Release>,
}

/// The desired instances of every app in `plans`, sorted by key.
pub fn desired_instances(plans: &[Plan], apps: &[AppState<'_>]) -> Vec<InstanceSpec> {
    let mut out = Vec::new();
    for state in apps {
        let Some(plan) = plans.iter().find(|p| p.name == state.app.plan) else {
            continue;
        };
        let Some(release) = state.release else {
            continue;
        };
        let (Some(artifact), Some(procfile)) = (&release.artifact, &release.procfile) else {
            continue;
        };
        let web = ProcessType::web();
        let Some(command) = procfile.command(&web) else {
            continue;
        };
        for index in 0..plan.workers {
            out.push(InstanceSpec {
                key: InstanceKey {
                    app: state.app.name.clone(),
                    slot: SlotName::production(),
                    process_type: web.clone(),
                    worker: WorkerId {
                        plan: plan.name.clone(),
                        index,
                    },
                },
                release: release.version,
                generation: state.app.generation,
                artifact: artifact.clone(),
                command: command.to_string(),
                env: release.settings.0.clone(),
                grace_period: release.settings.grace_period(),
                start_timeout: DEFAULT_START_TIMEOUT,
                health_check: state.app.site.health_check.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stamp_model::{AppName, Digest, PlanName, Procfile, Settings};

    fn plan(name: &str, workers: u32) -> Plan {
        Plan {
            name: PlanName::parse(name).unwrap(),
            sku: "B1".into(),
            workers,
            created_at: Millis::ZERO,
        }
    }

    fn app(name: &str, plan: &str) -> App {
        App {
            name: AppName::parse(name).unwrap(),
            plan: PlanName::parse(plan).unwrap(),
            settings: Settings::default(),
            generation: 7,
            site: Default::default(),
            created_at: Millis::ZERO,
        }
    }

    fn release(app: &str, version: u32, deployed: bool) -> Release {
        Release {
            app: AppName::parse(app).unwrap(),
            slot: SlotName::production(),
            version,
            artifact: deployed.then(|| Digest::parse(&"a".repeat(64)).unwrap()),
            procfile: deployed
                .then(|| Procfile::parse("web: python3 app.py\nworker: jobs").unwrap()),
            settings: Settings([("GREETING".to_string(), "hi".to_string())].into()),
            description: String::new(),
            created_at: Millis::ZERO,
        }
    }

    #[track_caller]
    fn check(plans: &[Plan], apps: &[AppState<'_>], expect: &[&str]) {
        let got: Vec<String> = desired_instances(plans, apps)
            .iter()
            .map(|s| {
                format!(
                    "{} {} on {} v{} g{}",
                    s.key.app, s.key.process_type, s.key.worker, s.release, s.generation
                )
            })
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn web_runs_on_every_worker_of_the_plan() {
        let plans = [plan("p", 3), plan("q", 1)];
        let (a, b, c) = (app("a", "p"), app("b", "p"), app("c", "q"));
        let (ra, rb, rc) = (
            release("a", 2, true),
            release("b", 1, true),
            release("c", 4, true),
        );
        check(
            &plans,
            &[
                AppState {
                    app: &a,
                    release: Some(&ra),
                },
                AppState {
                    app: &b,
                    release: Some(&rb),
                },
                AppState {
                    app: &c,
                    release: Some(&rc),
                },
            ],
            &[
                "a web on p/0 v2 g7",
                "a web on p/1 v2 g7",
                "a web on p/2 v2 g7",
                "b web on p/0 v1 g7",
                "b web on p/1 v1 g7",
                "b web on p/2 v1 g7",
                "c web on q/0 v4 g7",
            ],
        );
    }

    #[test]
    fn nothing_runs_without_code() {
        let plans = [plan("p", 2)];
        let a = app("a", "p");
        let settings_only = release("a", 1, false);
        check(
            &plans,
            &[AppState {
                app: &a,
                release: None,
            }],
            &[],
        );
        check(
            &plans,
            &[AppState {
                app: &a,
                release: Some(&settings_only),
            }],
            &[],
        );
    }

    #[test]
    fn specs_carry_settings_and_grace_period() {
        let plans = [plan("p", 1)];
        let a = app("a", "p");
        let r = release("a", 1, true);
        let specs = desired_instances(
            &plans,
            &[AppState {
                app: &a,
                release: Some(&r),
            }],
        );
        assert_eq!(specs[0].command, "python3 app.py");
        assert_eq!(specs[0].env.get("GREETING").map(String::as_str), Some("hi"));
        assert_eq!(specs[0].grace_period, Millis::from_secs(30));
    }
}
