//! Issue 6 end to end: deployment slots, swaps (plain, failing, with preview, automatic, across
//! a controller crash), traffic routing and rollback, through the real binary and front end.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// Plan `p` (S1, 2 workers), app `hello` with production on GREETING=old, DB=prod-db and a
/// `staging` slot on GREETING=new, DB=staging-db; DB is a slot setting. Both slots deployed.
async fn staged(s: &Stamp) {
    s.ok(&["plan", "create", "p", "--sku", "S1", "--workers", "2"])
        .await;
    s.ok(&["app", "create", "hello", "--plan", "p"]).await;
    s.ok(&["config", "set", "hello", "GREETING=old", "--no-wait"])
        .await;
    s.ok(&[
        "config",
        "set",
        "hello",
        "DB=prod-db",
        "--slot-setting",
        "--no-wait",
    ])
    .await;
    let dir = hello_dir();
    let dir = dir.to_str().unwrap();
    s.ok(&["deploy", dir, "--app", "hello"]).await;
    s.ok(&["slot", "create", "hello", "staging"]).await;
    s.ok(&[
        "config",
        "set",
        "hello",
        "GREETING=new",
        "DB=staging-db",
        "--slot",
        "staging",
        "--no-wait",
    ])
    .await;
    s.ok(&["deploy", dir, "--app", "hello", "--slot", "staging"])
        .await;
    assert_greeting(s, "hello", "old").await;
    assert_greeting(s, "hello-staging", "new").await;
}

/// The GREETING every one of 10 requests to `host` (`<label>.localhost`) sees.
async fn assert_greeting(s: &Stamp, label: &str, want: &str) {
    for _ in 0..10 {
        let (status, body) = s.get_path(label, "/").await;
        assert_eq!(status, 200, "{label}: {body}");
        assert!(
            body.trim_end().ends_with(&format!(": {want}")),
            "{label} should greet with {want:?}: {body}"
        );
    }
}

/// The body of `GET /` with Host `host` through the front end.
async fn greeting_at(s: &Stamp, host: &str) -> String {
    let (status, body) = s.get_host(host, "/").await;
    assert_eq!(status, 200, "{host}: {body}");
    body.trim_end().to_string()
}

async fn env(s: &Stamp, label: &str, name: &str) -> String {
    let (status, body) = s.get_path(label, &format!("/env/{name}")).await;
    assert_eq!(status, 200, "{body}");
    body.trim().to_string()
}

/// Waits (60 s) until 5 requests in a row to `label` see `want` for setting `name`: after a
/// rolling restart, an old instance may answer until its replacement is ready.
async fn wait_env(s: &Stamp, label: &str, name: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut streak = 0;
    while streak < 5 {
        let got = env(s, label, name).await;
        streak = if got == want { streak + 1 } else { 0 };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: {name} stayed {got:?}, not {want:?}"
        );
        if streak == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits (60 s) until every one of 5 requests to `label` sees `want`.
async fn wait_greeting(s: &Stamp, label: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = true;
        for _ in 0..5 {
            let (status, body) = s.get_path(label, "/").await;
            all &= status == 200 && body.trim_end().ends_with(&format!(": {want}"));
        }
        if all {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label} never greeted with {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client loop through the front end: every response, in order, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    /// Requests started so far: a mark to tell requests before and after an event apart.
    started: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<(usize, Result<String, String>)>>,
}

fn load(s: &Stamp) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let client = s.client();
    let url = s.url("hello");
    let (stop2, started2) = (stop.clone(), started.clone());
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while !stop2.load(Ordering::SeqCst)
            && seen.len() < 100_000
            && tokio::time::Instant::now() < deadline
        {
            let n = started2.fetch_add(1, Ordering::SeqCst);
            let r = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(r.text().await.unwrap_or_default()),
                Ok(r) => Err(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            };
            seen.push((n, r));
        }
        seen
    });
    Load {
        stop,
        started,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_load_loses_nothing_and_sticky_settings_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stamp::start(&tmp.path().join("data"), &[]).await;
    staged(&s).await;

    // Front-end settings belong to their slot: production's access rule and health check, and
    // staging's request timeout, stay with them.
    s.ok(&["app", "update", "hello", "--health-path", "/"])
        .await;
    s.ok(&[
        "app",
        "update",
        "hello",
        "--slot",
        "staging",
        "--request-timeout",
        "77",
    ])
    .await;
    wait_greeting(&s, "hello", "old").await;
    s.ok(&[
        "access",
        "add",
        "hello",
        "--priority",
        "100",
        "--allow",
        "127.0.0.1",
        "--name",
        "local",
    ])
    .await;
    // And a custom domain of staging stays staging's.
    s.ok(&[
        "domain",
        "add",
        "hello",
        "staging.example.com",
        "--slot",
        "staging",
    ])
    .await;
    assert!(
        greeting_at(&s, "staging.example.com")
            .await
            .ends_with(": new")
    );

    let l = load(&s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = s
        .ok(&["slot", "swap", "hello", "--source", "staging"])
        .await;
    let flipped = l.started.load(Ordering::SeqCst);
    assert!(out.contains("routing switched"), "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    l.stop.store(true, Ordering::SeqCst);
    let seen = l.task.await.unwrap();

    let failed: Vec<_> = seen.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "failed requests during the swap: {failed:#?}"
    );
    let after: Vec<_> = seen.iter().filter(|(n, _)| *n > flipped).collect();
    assert!(!after.is_empty(), "no request after the flip");
    for (n, r) in &after {
        let body = r.as_ref().unwrap();
        assert!(
            body.trim_end().ends_with(": new"),
            "request {n} after the flip: {body}"
        );
    }
    assert!(
        seen.iter()
            .any(|(_, r)| r.as_ref().unwrap().trim_end().ends_with(": old")),
        "the loop never saw the old production"
    );

    // The flip restarted nothing: production is served by the instances that were warmed up.
    let steps = s.json(&["slot", "status", "hello"]).await;
    let mut warmed: Vec<String> = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|step| {
            let rest = step.as_str()?.strip_prefix("warm-up of instance ")?;
            Some(rest.split(':').next()?.to_string())
        })
        .collect();
    let mut serving: Vec<String> = s
        .json(&["ps", "hello", "--slot", "production"])
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    warmed.sort();
    serving.sort();
    assert_eq!(warmed.len(), 2, "{steps:#}");
    assert_eq!(serving, warmed, "production's instances after the flip");
    let rules = s.json(&["access", "list", "hello"]).await;
    assert_eq!(rules[0]["name"], "local", "{rules:#}");
    let domains = s
        .json(&["domain", "list", "hello", "--slot", "staging"])
        .await;
    assert_eq!(domains, serde_json::json!(["staging.example.com"]));
    assert_eq!(
        s.json(&["domain", "list", "hello"]).await,
        serde_json::json!([])
    );
    let slots = s.json(&["slot", "list", "hello"]).await;
    assert_eq!(slots[0]["site"]["health_check"]["path"], "/", "{slots:#}");
    assert_eq!(slots[0]["site"]["request_timeout_secs"], 230, "{slots:#}");
    assert!(slots[1]["site"]["health_check"].is_null(), "{slots:#}");
    assert_eq!(slots[1]["site"]["request_timeout_secs"], 77, "{slots:#}");
    let rules = s
        .json(&["access", "list", "hello", "--slot", "staging"])
        .await;
    assert_eq!(rules, serde_json::json!([]));

    // The swapped setting moved; the slot setting stayed with each slot.
    assert_eq!(env(&s, "hello", "DB").await, "prod-db");
    assert_eq!(env(&s, "hello", "WEBSITE_SLOT_NAME").await, "production");
    wait_greeting(&s, "hello-staging", "old").await;
    wait_env(&s, "hello-staging", "DB", "staging-db").await;
    assert!(
        greeting_at(&s, "staging.example.com")
            .await
            .ends_with(": old")
    );
    assert_eq!(
        env(&s, "hello-staging", "WEBSITE_SLOT_NAME").await,
        "staging"
    );

    let releases = s.json(&["releases", "hello"]).await;
    let top = &releases[0];
    assert!(
        top["description"]
            .as_str()
            .unwrap()
            .starts_with("Swap from staging"),
        "{releases:#}"
    );
    assert_eq!(top["actor"], "owner", "the caller who swapped");
    // The steps are events in both slots' views of the app's log (among thousands of request
    // lines of the loop); each slot's view leaves out the other slot's own events.
    for (slot, other) in [("staging", "production"), ("production", "staging")] {
        let logs = s
            .ok(&["logs", "hello", "--slot", slot, "-n", "100000"])
            .await;
        assert!(
            logs.contains("swap staging → production: routing switched")
                && logs.contains("swap staging → production: warm-up of instance")
                && logs.contains(&format!("of slot {slot} created from artifact"))
                && !logs.contains(&format!("of slot {other} created from artifact")),
            "{slot}: {logs}"
        );
    }
    s.fails_with(&["logs", "hello", "--slot", "nope"], "no slot named nope")
        .await;

    // Swapping back is the rollback: production greets with `old` again.
    s.ok(&["slot", "swap", "hello", "--source", "staging"])
        .await;
    assert_greeting(&s, "hello", "old").await;
    assert_eq!(env(&s, "hello", "DB").await, "prod-db");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_warm_up_reverts_and_bad_input_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stamp::start(&tmp.path().join("data"), &[]).await;
    staged(&s).await;

    // A status outside the accepted list stops the swap; production keeps its release.
    s.ok(&[
        "config",
        "set",
        "hello",
        "WEBSITE_SWAP_WARMUP_PING_PATH=/status/500",
        "WEBSITE_SWAP_WARMUP_PING_STATUSES=200,202",
        "--slot",
        "staging",
    ])
    .await;
    let err = s
        .fails(&["slot", "swap", "hello", "--source", "staging"])
        .await;
    assert!(
        err.contains("reverted") && err.contains("status 500"),
        "{err}"
    );
    assert_greeting(&s, "hello", "old").await;
    wait_greeting(&s, "hello-staging", "new").await;
    wait_env(&s, "hello-staging", "DB", "staging-db").await;
    let logs = s.ok(&["logs", "hello", "-n", "100000"]).await;
    assert!(logs.contains("/status/500 answered 500"), "{logs}");

    // Bad input: clear errors, nothing changed.
    s.fails_with(
        &[
            "config",
            "set",
            "hello",
            "WEBSITE_SWAP_WARMUP_PING_PATH=nope",
        ],
        "starting with '/'",
    )
    .await;
    s.fails_with(&["slot", "create", "hello", "production"], "already")
        .await;
    s.fails_with(
        &["slot", "create", "hello", "Not_A_Label"],
        "invalid slot name",
    )
    .await;
    s.fails_with(
        &[
            "slot",
            "swap",
            "hello",
            "--source",
            "staging",
            "--target",
            "other-app",
        ],
        "no slot named other-app",
    )
    .await;
    s.fails_with(
        &["slot", "swap", "hello", "--source", "production"],
        "never its source",
    )
    .await;
    s.fails_with(
        &["slot", "create", "hello", "self"],
        "`self` names production",
    )
    .await;
    s.fails_with(&["rollback", "hello", "v1"], "has no code")
        .await;
    s.ok(&["slot", "create", "hello", "qa"]).await;
    s.fails_with(
        &["slot", "route", "hello", "staging=60", "qa=50"],
        "over 100",
    )
    .await;
    let slots = s.json(&["slot", "list", "hello"]).await;
    assert!(
        slots
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["routing"].is_null()),
        "{slots:#}"
    );
    // The hostname of a slot cannot be taken by an app, nor the reverse.
    s.fails_with(
        &["app", "create", "hello-qa", "--plan", "p"],
        "hostname of slot qa",
    )
    .await;

    // Nor a slot the hostname of an app; `<app>-production` is no slot's.
    s.ok(&["app", "create", "hello-beta", "--plan", "p"]).await;
    s.fails_with(
        &["slot", "create", "hello", "beta"],
        "hostname of app hello-beta",
    )
    .await;
    s.ok(&["app", "create", "hello-production", "--plan", "p"])
        .await;
    // Routing clients to a slot without code would only give them errors.
    s.fails_with(&["slot", "route", "hello", "qa=10"], "no deployed code")
        .await;
    s.ok(&["slot", "route", "hello", "qa=0"]).await;

    // Tier limits: Basic has no slots; Standard five per app.
    s.ok(&["plan", "create", "b", "--sku", "B1"]).await;
    s.ok(&["app", "create", "basic", "--plan", "b"]).await;
    s.fails_with(
        &["slot", "create", "basic", "staging"],
        "allows no deployment slots",
    )
    .await;
    for name in ["s3", "s4", "s5"] {
        s.ok(&["slot", "create", "hello", name]).await;
    }
    s.fails_with(&["slot", "create", "hello", "s6"], "the most plan p")
        .await;

    // One swap at a time: a swap waiting in preview blocks another, and deploys to its slots.
    s.ok(&[
        "config",
        "unset",
        "hello",
        "WEBSITE_SWAP_WARMUP_PING_PATH",
        "--slot",
        "staging",
    ])
    .await;
    s.ok(&["slot", "swap", "hello", "--source", "staging", "--preview"])
        .await;
    s.fails_with(
        &["slot", "swap", "hello", "--source", "staging"],
        "already running",
    )
    .await;
    s.fails_with(
        &["config", "set", "hello", "X=1", "--slot", "staging"],
        "is in a swap",
    )
    .await;
    s.fails_with(
        &[
            "config",
            "set",
            "hello",
            "X=1",
            "--slot",
            "qa",
            "--slot-setting",
        ],
        "after it ends",
    )
    .await;
    s.fails_with(
        &["app", "update", "hello", "--health-path", "/healthz"],
        "is in a swap",
    )
    .await;
    s.ok(&["slot", "swap", "hello", "--cancel"]).await;

    // A slot setting can be made to swap again.
    let listed = s.ok(&["config", "list", "hello"]).await;
    assert!(listed.contains("DB=prod-db  (slot setting)"), "{listed}");
    s.ok(&["config", "set", "hello", "DB=prod-db", "--no-slot-setting"])
        .await;
    let listed = s.ok(&["config", "list", "hello"]).await;
    assert!(!listed.contains("(slot setting)"), "{listed}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_then_cancel_then_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stamp::start(&tmp.path().join("data"), &[]).await;
    staged(&s).await;

    let out = s
        .ok(&["slot", "swap", "hello", "--source", "staging", "--preview"])
        .await;
    assert!(out.contains("preview:"), "{out}");
    // Phase 1: staging runs its code with production's slot settings; production is untouched.
    wait_env(&s, "hello-staging", "DB", "prod-db").await;
    assert_greeting(&s, "hello-staging", "new").await;
    assert_greeting(&s, "hello", "old").await;
    let out = s.ok(&["slot", "swap", "hello", "--cancel"]).await;
    assert!(out.contains("cancelled"), "{out}");
    wait_env(&s, "hello-staging", "DB", "staging-db").await;
    assert_greeting(&s, "hello", "old").await;

    s.ok(&["slot", "swap", "hello", "--source", "staging", "--preview"])
        .await;
    let out = s.ok(&["slot", "swap", "hello", "--complete"]).await;
    assert!(out.contains("routing switched"), "{out}");
    assert_greeting(&s, "hello", "new").await;
    assert_eq!(env(&s, "hello", "DB").await, "prod-db");

    // Two slots other than production swap the same way: staging (now `old`) into qa.
    s.ok(&["slot", "create", "hello", "qa"]).await;
    s.ok(&[
        "config",
        "set",
        "hello",
        "GREETING=qa",
        "DB=qa-db",
        "--slot",
        "qa",
        "--no-wait",
    ])
    .await;
    let dir = hello_dir();
    s.ok(&[
        "deploy",
        dir.to_str().unwrap(),
        "--app",
        "hello",
        "--slot",
        "qa",
    ])
    .await;
    wait_greeting(&s, "hello-qa", "qa").await;
    wait_greeting(&s, "hello-staging", "old").await;
    s.ok(&[
        "slot", "swap", "hello", "--source", "staging", "--target", "qa",
    ])
    .await;
    assert_greeting(&s, "hello-qa", "old").await;
    assert_eq!(env(&s, "hello-qa", "DB").await, "qa-db");
    assert_eq!(env(&s, "hello-qa", "WEBSITE_SLOT_NAME").await, "qa");
    wait_greeting(&s, "hello-staging", "qa").await;
    wait_env(&s, "hello-staging", "DB", "staging-db").await;
    assert_greeting(&s, "hello", "new").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_swap_after_deploy_and_rollback_restores_code_and_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stamp::start(&tmp.path().join("data"), &[]).await;
    staged(&s).await;

    // Auto swap: a deploy to staging ends in production.
    s.ok(&[
        "slot",
        "update",
        "hello",
        "staging",
        "--auto-swap-to",
        "production",
    ])
    .await;
    let marked = tmp.path().join("marked");
    copy_dir(&hello_dir(), &marked);
    std::fs::write(marked.join("MARK"), "two").unwrap();
    // The deploy follows its auto swap to the end.
    let out = s
        .ok(&[
            "deploy",
            marked.to_str().unwrap(),
            "--app",
            "hello",
            "--slot",
            "staging",
        ])
        .await;
    assert!(
        out.contains("Auto swap into production:") && out.contains("routing switched"),
        "{out}"
    );
    assert_greeting(&s, "hello", "new").await;
    let (_, mark) = s.get_path("hello", "/read?path=MARK").await;
    assert_eq!(mark, "two");
    let logs = s
        .wait_log("hello", "the auto swap", |l| l.contains("routing switched"))
        .await;
    assert!(
        logs.contains("swap staging → production: started"),
        "{logs}"
    );

    // Rollback re-activates an earlier release of production, code and settings together:
    // v3 is the first deploy (MARK absent) with GREETING=old.
    s.ok(&["slot", "update", "hello", "staging", "--auto-swap-to", ""])
        .await;
    let releases = s.json(&["releases", "hello"]).await;
    assert_eq!(
        releases[0]["actor"], "stamp",
        "auto swap is the platform's: {releases:#}"
    );
    let v3 = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == 3)
        .expect("v3");
    assert!(
        v3["description"].as_str().unwrap().starts_with("Deploy"),
        "{releases:#}"
    );
    assert_eq!(v3["actor"], "owner");
    let out = s.ok(&["rollback", "hello", "v3"]).await;
    assert!(out.contains("Rollback to v3"), "{out}");
    assert_greeting(&s, "hello", "old").await;
    let (status, _) = s.get_path("hello", "/read?path=MARK").await;
    assert_eq!(status, 404, "the rolled-back code has no MARK file");
    s.fails_with(&["rollback", "hello", "v99"], "no release v99")
        .await;
    s.stop().await;
}

/// The body of `GET url` sent with `cookie`.
async fn with_cookie(client: &reqwest::Client, url: &str, cookie: &str) -> String {
    let r = client.get(url).header("cookie", cookie).send().await;
    r.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_routing_by_percentage_with_pinning_and_opt_in() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Stamp::start(&tmp.path().join("data"), &[]).await;
    staged(&s).await;
    s.ok(&["slot", "route", "hello", "staging=30"]).await;
    let slots = s.json(&["slot", "list", "hello"]).await;
    assert_eq!(slots[1]["routing"], 30, "{slots:#}");
    let table = s.ok(&["slot", "list", "hello"]).await;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("production") && l.contains("70%")),
        "{table}"
    );
    let logs = s.ok(&["logs", "hello", "-n", "200"]).await;
    assert!(logs.contains("traffic routing: staging=30 %"), "{logs}");

    // 1,000 fresh clients (no cookie): about 30 % reach staging (binomial sd 1.45 %).
    let client = reqwest::Client::builder()
        .resolve("hello.localhost", s.http)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = s.url("hello");
    let mut staging = 0;
    // The cookie each side handed out, as a client sends it back (`name=value`).
    let mut issued: std::collections::BTreeMap<bool, String> = Default::default();
    for _ in 0..1000 {
        let r = client.get(&url).send().await.unwrap();
        let cookie = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("x-ms-routing-name="))
            .expect("a routing cookie")
            .to_string();
        let body = r.text().await.unwrap();
        let to_staging = body.trim_end().ends_with(": new");
        if to_staging {
            staging += 1;
            assert!(cookie.starts_with("x-ms-routing-name=staging;"), "{cookie}");
        } else {
            assert!(cookie.starts_with("x-ms-routing-name=self;"), "{cookie}");
        }
        assert!(
            cookie.contains("Max-Age=3600"),
            "pinned for an hour: {cookie}"
        );
        issued
            .entry(to_staging)
            .or_insert_with(|| cookie.split(';').next().unwrap().to_string());
    }
    assert!(
        (240..=360).contains(&staging),
        "{staging} of 1000 reached staging"
    );

    // A client sending back the cookie it was given stays on its slot.
    for (to_staging, cookie) in &issued {
        let want = if *to_staging { ": new" } else { ": old" };
        for _ in 0..30 {
            let body = with_cookie(&client, &url, cookie).await;
            assert!(body.trim_end().ends_with(want), "{cookie}: {body}");
        }
    }
    // Query opt-in and opt-out, also with an explicit 0 %.
    s.ok(&["slot", "route", "hello", "staging=0"]).await;
    for _ in 0..20 {
        let (_, body) = s.get_path("hello", "/").await;
        assert!(body.trim_end().ends_with(": old"), "0 %: {body}");
    }
    let (_, body) = s.get_path("hello", "/?x-ms-routing-name=staging").await;
    assert!(body.trim_end().ends_with(": new"), "{body}");
    // Opting out wins over a cookie pinning the client to staging.
    let opt_out = format!("{url}?x-ms-routing-name=self");
    let body = with_cookie(&client, &opt_out, "x-ms-routing-name=staging").await;
    assert!(body.trim_end().ends_with(": old"), "{body}");
    // No rule: no opt-in.
    s.ok(&["slot", "route", "hello"]).await;
    let (_, body) = s.get_path("hello", "/?x-ms-routing-name=staging").await;
    assert!(body.trim_end().ends_with(": old"), "{body}");
    s.stop().await;
}

/// Starts a swap of staging into production whose warm-up takes a second per instance, kills
/// `stamp up` as soon as the swap started, starts it again on the same data, and waits for the
/// resumed swap to end; returns the new stamp and the swap's final status.
async fn kill_mid_swap(mut s: Stamp, data: &std::path::Path) -> (Stamp, serde_json::Value) {
    s.ok(&["slot", "swap", "hello", "--source", "staging", "--no-wait"])
        .await;
    s.wait_log("hello", "the swap to start", |l| {
        l.contains("swap staging → production: started")
    })
    .await;
    s.child.kill().await.unwrap();

    let s = Stamp::start(data, &[]).await;
    s.wait_json(
        &["slot", "status", "hello"],
        "the resumed swap to end",
        |v| v["done"] == true,
    )
    .await;
    let state = s.json(&["slot", "status", "hello"]).await;
    let steps = state["steps"].to_string();
    assert!(
        steps.contains("resumed after a controller restart"),
        "the swap ended before the kill: {state:#}"
    );
    (s, state)
}

/// Each slot serves one whole side: `production` greets with `greeting` and has its own DB,
/// staging the other greeting and its own DB.
async fn assert_sides(s: &Stamp, production: &str) {
    let staging = if production == "new" { "old" } else { "new" };
    wait_greeting(s, "hello", production).await;
    wait_greeting(s, "hello-staging", staging).await;
    assert_eq!(env(s, "hello", "DB").await, "prod-db");
    wait_env(s, "hello-staging", "DB", "staging-db").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_swap_completes_or_reverts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Stamp::start(&data, &[]).await;
    staged(&s).await;

    // A slow warm-up (each instance takes a second to answer) leaves time to kill mid-swap; the
    // resumed swap completes.
    s.ok(&[
        "config",
        "set",
        "hello",
        "WEBSITE_SWAP_WARMUP_PING_PATH=/burn?ms=1000",
        "--slot",
        "staging",
    ])
    .await;
    let (s, state) = kill_mid_swap(s, &data).await;
    assert_eq!(state["state"], "completed", "{state:#}");
    let releases = s.json(&["releases", "hello"]).await;
    assert!(
        releases[0]["description"]
            .as_str()
            .unwrap()
            .starts_with("Swap from staging"),
        "{releases:#}"
    );
    assert_sides(&s, "new").await;

    // The same with a warm-up that will fail: the resumed swap reverts, and nothing moved.
    s.ok(&[
        "config",
        "set",
        "hello",
        "WEBSITE_SWAP_WARMUP_PING_PATH=/burn?ms=1000",
        "WEBSITE_SWAP_WARMUP_PING_STATUSES=201",
        "--slot",
        "staging",
    ])
    .await;
    let (s, state) = kill_mid_swap(s, &data).await;
    assert_eq!(state["state"], "reverted", "{state:#}");
    assert!(
        state["steps"].to_string().contains("status 200"),
        "{state:#}"
    );
    assert_sides(&s, "new").await;
    s.stop().await;
}
