//! Table tests: demands from formations and caps, placement rules (spread, no duplicates,
//! stability), and the specs built from a placement.

use std::collections::{BTreeMap, BTreeSet};

use stamp_model::{
    App, AppName, Digest, Millis, Placement, Plan, PlanName, ProcessType, Procfile, Release,
    Settings, SlotName,
};

use super::*;

fn plan(name: &str, workers: u32) -> Plan {
    Plan {
        name: PlanName::parse(name).unwrap(),
        sku: "B1".into(),
        workers,
        per_app_scaling: false,
        placement: Default::default(),
        placed_on: 0,
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
        max_workers: None,
        formation: Default::default(),
        lane: 0,
        slot_settings: Default::default(),
        slots: Vec::new(),
        created_at: Millis::ZERO,
    }
}

fn capped(name: &str, plan: &str, max_workers: u32) -> App {
    App {
        max_workers: Some(max_workers),
        ..app(name, plan)
    }
}

fn with_formation(mut app: App, formation: &[(&str, u32)]) -> App {
    app.formation = formation
        .iter()
        .map(|(t, n)| (ProcessType::parse(t).unwrap(), *n))
        .collect();
    app
}

const PROCFILE: &str = "web: python3 app.py\nworker: jobs";

fn release_with(app: &str, version: u32, procfile: Option<&str>) -> Release {
    Release {
        app: AppName::parse(app).unwrap(),
        slot: SlotName::production(),
        version,
        artifact: procfile.map(|_| Digest::parse(&"a".repeat(64)).unwrap()),
        procfile: procfile.map(|p| Procfile::parse(p).unwrap()),
        settings: Settings([("GREETING".to_string(), "hi".to_string())].into()),
        description: String::new(),
        actor: String::new(),
        created_at: Millis::ZERO,
    }
}

fn release(app: &str, version: u32, deployed: bool) -> Release {
    release_with(app, version, deployed.then_some(PROCFILE))
}

fn states<'a>(pairs: &'a [(App, Release)]) -> Vec<AppState<'a>> {
    pairs
        .iter()
        .map(|(app, release)| AppState::new(app, Some(release)))
        .collect()
}

/// Each plan's placement made from scratch, as the controller stores it.
fn placed(mut plans: Vec<Plan>, apps: &[AppState<'_>]) -> Vec<Plan> {
    for plan in &mut plans {
        plan.placement = next_placement(plan, apps);
        plan.placed_on = plan.workers;
    }
    plans
}

// ---- text forms: "a web 0 1; b worker 2" -------------------------------------------------

fn parse_demands(text: &str) -> Vec<Demand> {
    text.split(';')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let parts: Vec<&str> = s.split_whitespace().collect();
            Demand {
                app: AppName::parse(parts[0]).unwrap(),
                process_type: ProcessType::parse(parts[1]).unwrap(),
                count: parts[2].parse().unwrap(),
            }
        })
        .collect()
}

fn parse_placement(text: &str) -> Placement {
    let mut out = Placement::default();
    for s in text.split(';').filter(|s| !s.trim().is_empty()) {
        let parts: Vec<&str> = s.split_whitespace().collect();
        out.0
            .entry(AppName::parse(parts[0]).unwrap())
            .or_default()
            .insert(
                ProcessType::parse(parts[1]).unwrap(),
                parts[2..].iter().map(|i| i.parse().unwrap()).collect(),
            );
    }
    out
}

fn show(placement: &Placement) -> String {
    let mut parts = Vec::new();
    for (app, types) in &placement.0 {
        for (process_type, workers) in types {
            let indexes: Vec<String> = workers.iter().map(u32::to_string).collect();
            parts.push(format!("{app} {process_type} {}", indexes.join(" ")));
        }
    }
    parts.join("; ")
}

fn loads(placement: &Placement, workers: u32) -> Vec<u32> {
    let mut load = vec![0; workers as usize];
    for types in placement.0.values() {
        for set in types.values() {
            for &w in set {
                load[w as usize] += 1;
            }
        }
    }
    load
}

fn spread(placement: &Placement, workers: u32) -> u32 {
    let load = loads(placement, workers);
    load.iter().max().unwrap_or(&0) - load.iter().min().unwrap_or(&0)
}

/// Every (app, type, worker) of a placement.
fn instances(placement: &Placement) -> BTreeSet<(AppName, ProcessType, u32)> {
    let mut out = BTreeSet::new();
    for (app, types) in &placement.0 {
        for (process_type, set) in types {
            for &w in set {
                out.insert((app.clone(), process_type.clone(), w));
            }
        }
    }
    out
}

/// Instances in `new` that `old` did not run there: the ones a change starts.
fn started(old: &Placement, new: &Placement) -> Vec<(AppName, ProcessType, u32)> {
    instances(new)
        .difference(&instances(old))
        .cloned()
        .collect()
}

/// Each demanded pair runs on exactly its count of distinct, existing workers; nothing else runs.
#[track_caller]
fn assert_satisfies(placement: &Placement, workers: u32, demands: &[Demand]) {
    let mut want: BTreeMap<(AppName, ProcessType), u32> = BTreeMap::new();
    for d in demands {
        want.insert(
            (d.app.clone(), d.process_type.clone()),
            d.count.min(workers),
        );
    }
    for (app, types) in &placement.0 {
        for (process_type, set) in types {
            assert!(
                set.iter().all(|&w| w < workers),
                "{app} {process_type} {set:?}"
            );
            let count = want.get(&(app.clone(), process_type.clone())).copied();
            assert_eq!(Some(set.len() as u32), count, "{app} {process_type}");
        }
    }
    for ((app, process_type), count) in want {
        assert_eq!(
            placement.workers(&app, &process_type).len() as u32,
            count,
            "{app} {process_type}"
        );
    }
}

#[track_caller]
fn check_place(previous_workers: u32, workers: u32, demands: &str, previous: &str, expect: &str) {
    let demands = parse_demands(demands);
    let got = place(
        previous_workers,
        workers,
        &demands,
        &parse_placement(previous),
    );
    assert_eq!(show(&got), expect);
    assert_satisfies(&got, workers, &demands);
}

// ---- demands -----------------------------------------------------------------------------

#[track_caller]
fn check_demands(plan: &Plan, apps: &[AppState<'_>], expect: &str) {
    let got: Vec<String> = demands(plan, apps)
        .iter()
        .map(|d| format!("{} {} {}", d.app, d.process_type, d.count))
        .collect();
    assert_eq!(got.join("; "), expect);
}

#[test]
fn formation_defaults_web_to_the_cap_and_others_to_zero() {
    let procfile = "web: serve\nworker: jobs\nclock: tick\nrelease: migrate";
    let p = Plan {
        per_app_scaling: true,
        ..plan("p", 5)
    };
    let pairs = [
        (capped("a", "p", 3), release_with("a", 1, Some(procfile))),
        (
            with_formation(capped("b", "p", 3), &[("worker", 2), ("ghost", 4)]),
            release_with("b", 1, Some(procfile)),
        ),
        (
            with_formation(
                capped("c", "p", 3),
                &[("web", 1), ("worker", 9), ("release", 2)],
            ),
            release_with("c", 1, Some(procfile)),
        ),
        (
            with_formation(app("d", "p"), &[("web", 0)]),
            release_with("d", 1, Some("web: serve")),
        ),
    ];
    check_demands(
        &p,
        &states(&pairs),
        "a clock 0; a web 3; a worker 0; \
         b clock 0; b web 3; b worker 2; \
         c clock 0; c web 1; c worker 3; \
         d web 0",
    );
}

#[test]
fn caps_apply_only_with_per_app_scaling() {
    let pairs = [
        (capped("a", "p", 2), release("a", 1, true)),
        (capped("b", "p", 9), release("b", 1, true)),
        (app("c", "p"), release("c", 1, true)),
        (
            with_formation(app("d", "p"), &[("worker", 9)]),
            release("d", 1, true),
        ),
    ];
    let shared = plan("p", 4);
    check_demands(
        &shared,
        &states(&pairs),
        "a web 4; a worker 0; b web 4; b worker 0; c web 4; c worker 0; d web 4; d worker 4",
    );
    let per_app = Plan {
        per_app_scaling: true,
        ..plan("p", 4)
    };
    check_demands(
        &per_app,
        &states(&pairs),
        "a web 2; a worker 0; b web 4; b worker 0; c web 4; c worker 0; d web 4; d worker 4",
    );
}

#[test]
fn only_deployed_apps_of_the_plan_demand() {
    let (a, b, c) = (app("a", "p"), app("b", "p"), app("c", "q"));
    let (settings_only, rc) = (release("b", 1, false), release("c", 1, true));
    let apps = [
        AppState::new(&a, None),
        AppState::new(&b, Some(&settings_only)),
        AppState::new(&c, Some(&rc)),
    ];
    check_demands(&plan("p", 2), &apps, "");
    check_demands(&plan("q", 2), &apps, "c web 2; c worker 0");
}

// ---- place: spread, no duplicates --------------------------------------------------------

#[test]
fn spreads_evenly_from_scratch() {
    check_place(
        0,
        3,
        "a web 1; b web 1; c web 1; d web 2",
        "",
        "a web 0; b web 1; c web 2; d web 0 1",
    );
    // An app on every worker adds one everywhere; a worker type spreads like any other.
    check_place(
        0,
        3,
        "a web 3; a worker 2; b web 1; c web 2",
        "",
        "a web 0 1 2; a worker 0 1; b web 2; c web 0 1",
    );
    check_place(0, 0, "a web 1", "", "");
    // Counts above the worker count are clipped; a pair listed twice takes its last count.
    check_place(0, 2, "a web 5; b web 2; b web 1", "", "a web 0 1; b web 0");
    check_place(0, 2, "a web 0; a worker 1", "", "a worker 0");
}

// ---- place: stability while the worker count stays ------------------------------------------

const BASE: &str = "a web 0; b web 1; c web 2; d web 0 1";
const BASE_DEMANDS: &str = "a web 1; b web 1; c web 1; d web 2";

#[test]
fn same_demands_same_placement() {
    check_place(3, 3, BASE_DEMANDS, BASE, BASE);
    // Even a placement a fresh start would not choose stays as it is.
    check_place(
        3,
        3,
        BASE_DEMANDS,
        "a web 2; b web 2; c web 2; d web 1 2",
        "a web 2; b web 2; c web 2; d web 1 2",
    );
}

#[test]
fn adding_an_app_moves_nobody() {
    check_place(
        3,
        3,
        "a web 1; b web 1; c web 1; d web 2; e web 2",
        BASE,
        "a web 0; b web 1; c web 2; d web 0 1; e web 0 2",
    );
}

#[test]
fn removing_an_app_moves_nobody() {
    // Worker 0 ends with one instance, worker 1 and 2 with one and two: the spread drifts
    // rather than moving b or c.
    check_place(
        3,
        3,
        "b web 1; c web 1; d web 2",
        BASE,
        "b web 1; c web 2; d web 0 1",
    );
    check_place(
        3,
        3,
        "a web 1; b web 1; d web 2",
        "a web 0; b web 1; c web 2; d web 1 2",
        "a web 0; b web 1; d web 1 2",
    );
}

#[test]
fn changing_a_cap_moves_nobody_else() {
    // Up: the new instances go where a does not run yet, others stay.
    check_place(
        3,
        3,
        "a web 3; b web 1; c web 1; d web 2",
        BASE,
        "a web 0 1 2; b web 1; c web 2; d web 0 1",
    );
    // Down: d leaves the most loaded of its workers (0 and 1 tie at two: the higher index goes).
    check_place(
        3,
        3,
        "a web 1; b web 1; c web 1; d web 1",
        BASE,
        "a web 0; b web 1; c web 2; d web 0",
    );
    // Down to zero, or the type gone from the Procfile: it just stops.
    check_place(
        3,
        3,
        "a web 1; b web 1; c web 1; d web 0",
        BASE,
        "a web 0; b web 1; c web 2",
    );
    check_place(
        3,
        3,
        "a web 1; b web 1; c web 1; d web 2",
        "a web 0; a worker 1 2; b web 1; c web 2; d web 0 1",
        BASE,
    );
}

// ---- place: rebalancing when workers are added or removed ------------------------------------

#[test]
fn adding_a_worker_rebalances_with_few_moves() {
    // Loads 2 2 1 0: one instance moves from worker 0 (the busiest, lowest index) to worker 3.
    check_place(
        3,
        4,
        BASE_DEMANDS,
        BASE,
        "a web 3; b web 1; c web 2; d web 0 1",
    );
    // An app that runs everywhere grows onto the new worker; nothing else has to move.
    check_place(
        2,
        3,
        "a web 3; b web 1; c web 1",
        "a web 0 1; b web 0; c web 1",
        "a web 0 1 2; b web 0; c web 1",
    );
}

#[test]
fn removing_a_worker_replaces_only_its_instances() {
    // c lived on worker 2; it restarts on the least loaded remaining worker.
    check_place(
        3,
        2,
        BASE_DEMANDS,
        BASE,
        "a web 0; b web 1; c web 0; d web 0 1",
    );
    // A pair clipped by the smaller count keeps the workers that survive.
    check_place(3, 2, "a web 3", "a web 0 1 2", "a web 0 1");
}

#[test]
fn rebalancing_never_stacks_an_app_on_one_worker() {
    // Worker 2 is new and a grows onto it; worker 0 is then the busiest. a already runs on
    // worker 2, so the move takes the next pair, b.
    check_place(
        2,
        3,
        "a web 3; b web 2; c web 1",
        "a web 0 1; b web 0 1; c web 0",
        "a web 0 1 2; b web 1 2; c web 0",
    );
}

// ---- the seed's example: 10 workers, 50 apps --------------------------------------------------

fn seed_apps() -> Vec<(App, Release)> {
    let mut out = Vec::new();
    for i in 0..40 {
        let name = format!("one{i:02}");
        out.push((capped(&name, "p", 1), release(&name, 1, true)));
    }
    for i in 0..5 {
        let name = format!("two{i}");
        out.push((capped(&name, "p", 2), release(&name, 1, true)));
    }
    for i in 0..5 {
        let name = format!("ten{i}");
        out.push((capped(&name, "p", 10), release(&name, 1, true)));
    }
    out
}

fn scaled(plan: &Plan, workers: u32, apps: &[AppState<'_>]) -> (Plan, Vec<Demand>) {
    let mut next = Plan {
        workers,
        ..plan.clone()
    };
    let demands = demands(&next, apps);
    next.placement = next_placement(&next, apps);
    next.placed_on = workers;
    (next, demands)
}

#[test]
fn ten_workers_fifty_apps() {
    let pairs = seed_apps();
    let apps = states(&pairs);
    let empty = Plan {
        per_app_scaling: true,
        ..plan("p", 0)
    };

    let (ten, demands10) = scaled(&empty, 10, &apps);
    assert_satisfies(&ten.placement, 10, &demands10);
    // 40 + 5 * 2 + 5 * 10 = 100 instances: exactly 10 per worker.
    assert_eq!(loads(&ten.placement, 10), vec![10; 10]);
    for (app, _) in &pairs {
        let want = app.max_workers.unwrap() as usize;
        assert_eq!(
            ten.placement.workers(&app.name, &ProcessType::web()).len(),
            want
        );
    }
    // Placing again changes nothing.
    assert_eq!(scaled(&ten, 10, &apps).0.placement, ten.placement);

    // 10 -> 12: the 100 instances spread 8 or 9 per worker; the new workers get 8 each, all of
    // them moved from old workers, and nothing moves between old workers.
    let (twelve, demands12) = scaled(&ten, 12, &apps);
    assert_satisfies(&twelve.placement, 12, &demands12);
    assert!(
        spread(&twelve.placement, 12) <= 1,
        "{:?}",
        loads(&twelve.placement, 12)
    );
    let moved = started(&ten.placement, &twelve.placement);
    assert_eq!(moved.len(), 16, "{moved:?}");
    assert!(moved.iter().all(|(_, _, w)| *w >= 10), "{moved:?}");
    assert_eq!(started(&twelve.placement, &ten.placement).len(), 16);

    // 10 -> 8: the ten-worker apps shrink to 8 (their instances on workers 8 and 9 just stop);
    // the one- and two-worker apps that lived there restart elsewhere, and nobody else moves.
    let (eight, demands8) = scaled(&ten, 8, &apps);
    assert_satisfies(&eight.placement, 8, &demands8);
    assert!(
        spread(&eight.placement, 8) <= 1,
        "{:?}",
        loads(&eight.placement, 8)
    );
    let displaced = instances(&ten.placement)
        .iter()
        .filter(|(app, _, w)| *w >= 8 && !app.as_str().starts_with("ten"))
        .count();
    assert_eq!(displaced, 10);
    assert_eq!(started(&ten.placement, &eight.placement).len(), displaced);

    // 12 -> 8 and back to 10: still every cap, no duplicates (sets), an even spread.
    let (eight, demands8) = scaled(&twelve, 8, &apps);
    assert_satisfies(&eight.placement, 8, &demands8);
    assert!(spread(&eight.placement, 8) <= 1);
    let (ten, demands10) = scaled(&eight, 10, &apps);
    assert_satisfies(&ten.placement, 10, &demands10);
    assert_eq!(loads(&ten.placement, 10), vec![10; 10]);
    // Going out again only fills the new workers: 10 per worker needs 2 * 10 moves in.
    assert_eq!(started(&eight.placement, &ten.placement).len(), 20);
}

// ---- many random changes (a fixed, seeded sequence) ------------------------------------------

/// A tiny deterministic generator (PCG-style LCG), so the test needs no dependency and always
/// runs the same sequence.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(n)) as u32
    }
}

#[test]
fn random_changes_keep_every_rule() {
    let mut rng = Lcg(42);
    let mut workers = 6;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut placement = Placement::default();
    let mut previous_workers = 0;
    for step in 0..2000 {
        let before = counts.clone();
        match rng.below(10) {
            0 => workers = 1 + rng.below(15),
            1..=3 if !counts.is_empty() => {
                let name = counts
                    .keys()
                    .nth(rng.below(counts.len() as u32) as usize)
                    .cloned();
                counts.remove(&name.unwrap());
            }
            _ => {
                let name = format!("app{}", rng.below(40));
                counts.insert(name, 1 + rng.below(16));
            }
        }
        let demands: Vec<Demand> = counts
            .iter()
            .map(|(name, &count)| Demand {
                app: AppName::parse(name).unwrap(),
                process_type: ProcessType::web(),
                count: count.min(workers),
            })
            .collect();
        let next = place(previous_workers, workers, &demands, &placement);
        assert_satisfies(&next, workers, &demands);
        if previous_workers == workers {
            // Only the app whose count changed may differ; everyone else stays put.
            for (app, types) in &next.0 {
                let name = app.as_str();
                if before.get(name) == counts.get(name) {
                    assert_eq!(
                        Some(types),
                        placement.0.get(app),
                        "step {step}: {name} moved"
                    );
                }
            }
        } else {
            assert!(
                spread(&next, workers) <= 1,
                "step {step}: {:?}",
                loads(&next, workers)
            );
        }
        // Placing again with nothing changed is a fixpoint.
        assert_eq!(
            place(workers, workers, &demands, &next),
            next,
            "step {step}"
        );
        placement = next;
        previous_workers = workers;
    }
}

// ---- desired instances ---------------------------------------------------------------------

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
    let pairs = [
        (app("a", "p"), release("a", 2, true)),
        (app("b", "p"), release("b", 1, true)),
        (app("c", "q"), release("c", 4, true)),
    ];
    let apps = states(&pairs);
    let plans = placed(vec![plan("p", 3), plan("q", 1)], &apps);
    check(
        &plans,
        &apps,
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
fn instances_follow_the_placement_and_the_procfile() {
    let p = Plan {
        per_app_scaling: true,
        ..plan("p", 3)
    };
    let pairs = [
        (
            with_formation(capped("a", "p", 2), &[("worker", 1)]),
            release("a", 2, true),
        ),
        (capped("b", "p", 1), release("b", 1, true)),
    ];
    let apps = states(&pairs);
    let plans = placed(vec![p], &apps);
    check(
        &plans,
        &apps,
        &[
            "a web on p/0 v2 g7",
            "a web on p/1 v2 g7",
            "a worker on p/2 v2 g7",
            "b web on p/0 v1 g7",
        ],
    );
    let specs = desired_instances(&plans, &apps);
    assert_eq!(specs[2].command, "jobs");
    assert!(!specs[2].takes_traffic());

    // A stale placement: a type the new release dropped, a removed worker, a release-phase
    // entry. None of them runs.
    let mut stale = plans[0].clone();
    stale.workers = 2;
    stale.placement = parse_placement("a web 0 2; a release 0; b web 1; b worker 0");
    let web_only = [(
        capped("b", "p", 1),
        release_with("b", 3, Some("web: serve\nrelease: m")),
    )];
    let a_only = [pairs[0].clone()];
    let mut all = states(&a_only);
    all.extend(states(&web_only));
    check(
        &[stale],
        &all,
        &["a web on p/0 v2 g7", "b web on p/1 v3 g7"],
    );
}

#[test]
fn nothing_runs_without_code() {
    let a = app("a", "p");
    let settings_only = release("a", 1, false);
    // Even with a placement (say the code was deployed once and the record says so), no code
    // means no instance.
    let mut p = plan("p", 2);
    p.placement = parse_placement("a web 0 1");
    let plans = [p];
    check(&plans, &[AppState::new(&a, None)], &[]);
    check(&plans, &[AppState::new(&a, Some(&settings_only))], &[]);
}

#[test]
fn specs_carry_settings_grace_period_and_limits() {
    let pairs = [(app("a", "p"), release("a", 1, true))];
    let apps = states(&pairs);
    let mut p = plan("p", 1);
    p.sku = "P1v3".into();
    let plans = placed(vec![p], &apps);
    let specs = desired_instances(&plans, &apps);
    assert_eq!(specs[0].command, "python3 app.py");
    assert_eq!(specs[0].env.get("GREETING").map(String::as_str), Some("hi"));
    assert_eq!(specs[0].grace_period, Millis::from_secs(30));
    assert_eq!(
        specs[0].limits,
        WorkerLimits::of(&Sku::find("P1v3").unwrap())
    );
}

#[test]
fn slots_run_on_the_apps_workers_and_a_swap_source_runs_its_swap_config() {
    let mut a = app("a", "p");
    a.slots.push(stamp_model::Slot {
        name: SlotName::parse("staging").unwrap(),
        lane: 1,
        settings: Settings::default(),
        generation: 3,
        site: Default::default(),
        auto_swap_to: None,
        routing: None,
        created_at: Millis::ZERO,
    });
    // Only staging has code: the app still demands its web type.
    let mut staged = release_with("a", 4, Some("web: new"));
    staged.slot = SlotName::parse("staging").unwrap();
    let state = AppState {
        app: &a,
        release: None,
        slot_releases: vec![&staged],
        swap: None,
    };
    let plans = placed(vec![plan("p", 2)], std::slice::from_ref(&state));
    let specs = desired_instances(&plans, std::slice::from_ref(&state));
    let shown: Vec<(u32, u32, String, u32, u64)> = specs
        .iter()
        .map(|s| {
            (
                s.key.lane,
                s.key.worker.index,
                s.slot.to_string(),
                s.release,
                s.generation,
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (1, 0, "staging".to_string(), 4, 3),
            (1, 1, "staging".to_string(), 4, 3)
        ]
    );

    // With production deployed and staging the source of a swap, staging's lane runs the swap's
    // configuration (production's identity and next release number); production is untouched.
    let prod = release_with("a", 9, Some("web: old"));
    let mut config = state.lanes()[0].1.clone();
    config.slot = SlotName::production();
    config.release = 10;
    let swap = stamp_model::Swap {
        app: a.name.clone(),
        source: SlotName::parse("staging").unwrap(),
        target: SlotName::production(),
        preview: false,
        phase: stamp_model::SwapPhase::Applying,
        source_config: config,
        started_at: Millis::ZERO,
        actor: String::new(),
    };
    let state = AppState {
        app: &a,
        release: Some(&prod),
        slot_releases: vec![&staged],
        swap: Some(&swap),
    };
    let specs = desired_instances(&plans, std::slice::from_ref(&state));
    let shown: Vec<(u32, String, u32, &str)> = specs
        .iter()
        .filter(|s| s.key.worker.index == 0)
        .map(|s| {
            (
                s.key.lane,
                s.slot.to_string(),
                s.release,
                s.command.as_str(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (0, "production".to_string(), 9, "old"),
            (1, "production".to_string(), 10, "new")
        ]
    );
}
