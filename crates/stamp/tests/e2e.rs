//! End-to-end tests: the real `stamp` binary (`stamp up` plus CLI commands), the real sample
//! app `examples/apps/hello`, real HTTP through the front end. Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_scale_roll_crash_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Stamp::start(&data, &[]).await;
    let hello = hello_dir();
    s.ok(&["plan", "create", "web-plan", "--sku", "B1"]).await;
    s.ok(&["app", "create", "hello", "--plan", "web-plan"])
        .await;
    s.ok(&["deploy", hello.to_str().unwrap(), "--app", "hello"])
        .await;
    let (status, body) = s.get("hello").await;
    assert_eq!(status, 200);
    assert!(body.contains("(release v1): hello"), "{body}");

    // Scale the plan to 3: one web instance per worker.
    s.ok(&["plan", "scale", "web-plan", "--workers", "3"]).await;
    let ps = s.json(&["ps", "hello"]).await;
    let workers: std::collections::BTreeSet<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers.len(), 3, "{ps:#}");
    assert!(
        ps.as_array().unwrap().iter().all(|i| i["state"] == "ready"),
        "{ps:#}"
    );

    // 30 requests reach 3 distinct instances in round-robin order.
    let mut seen = Vec::new();
    for _ in 0..30 {
        let (status, body) = s.get("hello").await;
        assert_eq!(status, 200);
        seen.push(instance_of(&body));
    }
    let first: std::collections::BTreeSet<&String> = seen[..3].iter().collect();
    assert_eq!(first.len(), 3, "{seen:?}");
    for (i, id) in seen.iter().enumerate() {
        assert_eq!(id, &seen[i % 3], "not round robin: {seen:?}");
    }

    // Redeploy (changed code) while a client loop runs: no request fails.
    let v2 = tmp.path().join("hello-v2");
    copy_dir(&hello, &v2);
    std::fs::write(v2.join("VERSION"), "2").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn({
        let (client, url) = (s.client(), s.url("hello"));
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        async move {
            let mut last = String::new();
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => last = r.text().await.unwrap_or_default(),
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        eprintln!(
                            "failed: {} {:?}",
                            r.status(),
                            r.headers().get("x-stamp-error")
                        );
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        eprintln!("failed: {e}");
                    }
                }
            }
            last
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.ok(&["deploy", v2.to_str().unwrap(), "--app", "hello"])
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let last = load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "of {} requests",
        sent.load(Ordering::SeqCst)
    );
    assert!(sent.load(Ordering::SeqCst) > 20);
    assert!(last.contains("(release v2)"), "{last}");

    // A setting change is a new release, rolled out.
    s.ok(&["config", "set", "hello", "GREETING=hi"]).await;
    let (_, body) = s.get("hello").await;
    assert!(body.contains("(release v3): hi"), "{body}");

    // Kill an instance's process: it is restarted and serves again.
    let ps = s.json(&["ps", "hello"]).await;
    let victim = ps[0]["id"].as_str().unwrap().to_string();
    let pid = ps[0]["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    s.wait_instances("hello", "the killed instance to restart", |list| {
        list.iter()
            .any(|i| i["id"] == victim.as_str() && i["restarts"] == 1 && i["state"] == "ready")
    })
    .await;
    let mut served_by_victim = false;
    for _ in 0..6 {
        let (status, body) = s.get("hello").await;
        assert_eq!(status, 200);
        served_by_victim |= instance_of(&body) == victim;
    }
    assert!(served_by_victim, "the restarted instance does not serve");
    let logs = s.ok(&["logs", "hello", "--lines", "500"]).await;
    assert!(logs.contains(&format!("{victim} crashed")), "{logs}");

    // Stop: instances get SIGTERM and are gone.
    let pids: Vec<i64> = s
        .json(&["ps", "hello"])
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_i64().unwrap())
        .collect();
    s.stop().await;
    for pid in &pids {
        assert!(!alive(*pid), "instance process {pid} outlived stamp up");
    }

    // Restart on the same data directory: same plan, release, settings and instance count.
    let s = Stamp::start(&data, &[]).await;
    s.wait_instances("hello", "3 ready instances after restart", |list| {
        list.len() == 3
            && list
                .iter()
                .all(|i| i["state"] == "ready" && i["release"] == 3)
    })
    .await;
    let (status, body) = s.get("hello").await;
    assert_eq!(status, 200);
    assert!(body.contains("(release v3): hi"), "{body}");
    let plan = s.json(&["plan", "show", "web-plan"]).await;
    assert_eq!(plan["workers"], 3);
    s.stop().await;
}

/// An archive with one entry whose raw tar name is `name` (bypassing the tar crate's checks).
fn evil_tar_gz(name: &str, link: Option<&str>) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut procfile = tar::Header::new_gnu();
    procfile.set_path("Procfile").unwrap();
    procfile.set_size(12);
    procfile.set_mode(0o644);
    procfile.set_cksum();
    b.append(&procfile, &b"web: true ok\n"[..12]).unwrap();
    let mut h = tar::Header::new_old();
    let bytes = name.as_bytes();
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_mode(0o644);
    match link {
        Some(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            h.set_size(0);
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        }
        None => {
            h.set_size(4);
            h.set_cksum();
            b.append(&h, &b"evil"[..]).unwrap();
        }
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn zip_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut w, data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Stamp::start(&data, &["--max-upload-mib", "1", "--node-cpus", "2"]).await;
    s.ok(&["plan", "create", "p", "--sku", "B1"]).await;
    s.ok(&["app", "create", "hello", "--plan", "p"]).await;
    s.ok(&["deploy", hello_dir().to_str().unwrap(), "--app", "hello"])
        .await;

    let f = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let no_procfile = tmp.path().join("no-procfile");
    std::fs::create_dir_all(&no_procfile).unwrap();
    std::fs::write(no_procfile.join("app.py"), "print()").unwrap();
    let no_web = tmp.path().join("no-web");
    std::fs::create_dir_all(&no_web).unwrap();
    std::fs::write(no_web.join("Procfile"), "worker: python3 jobs.py\n").unwrap();
    let big: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "app".into(),
                "create".into(),
                "Bad_Name".into(),
                "--plan".into(),
                "p".into(),
            ],
            "invalid app name",
        ),
        (
            vec![
                "app".into(),
                "create".into(),
                "other".into(),
                "--plan".into(),
                "nope".into(),
            ],
            "no plan named nope",
        ),
        (
            vec![
                "plan".into(),
                "create".into(),
                "q".into(),
                "--sku".into(),
                "Z9".into(),
            ],
            "unknown SKU",
        ),
        (
            vec![
                "deploy".into(),
                hello_dir().to_str().unwrap().into(),
                "--app".into(),
                "nope".into(),
            ],
            "no app named nope",
        ),
        (
            vec![
                "deploy".into(),
                no_procfile.to_str().unwrap().into(),
                "--app".into(),
                "hello".into(),
            ],
            "no Procfile",
        ),
        (
            vec![
                "deploy".into(),
                no_web.to_str().unwrap().into(),
                "--app".into(),
                "hello".into(),
            ],
            "no `web` process type",
        ),
        (
            vec![
                "deploy".into(),
                f("notes.txt", b"just text"),
                "--app".into(),
                "hello".into(),
            ],
            "neither a zip nor a tar.gz",
        ),
        (
            vec![
                "deploy".into(),
                f(
                    "slip.zip",
                    &zip_with(&[("Procfile", b"web: x"), ("../evil", b"x")]),
                ),
                "--app".into(),
                "hello".into(),
            ],
            "../evil",
        ),
        (
            vec![
                "deploy".into(),
                f("abs.tar.gz", &evil_tar_gz("/tmp/evil", None)),
                "--app".into(),
                "hello".into(),
            ],
            "/tmp/evil",
        ),
        (
            vec![
                "deploy".into(),
                f("dots.tar.gz", &evil_tar_gz("a/../../evil", None)),
                "--app".into(),
                "hello".into(),
            ],
            "evil",
        ),
        (
            vec![
                "deploy".into(),
                f("link.tar.gz", &evil_tar_gz("link", Some("../../outside"))),
                "--app".into(),
                "hello".into(),
            ],
            "link",
        ),
        (
            vec![
                "deploy".into(),
                f("big.bin", &big),
                "--app".into(),
                "hello".into(),
            ],
            "1 MiB",
        ),
        (
            vec![
                "plan".into(),
                "scale".into(),
                "p".into(),
                "--workers".into(),
                "0".into(),
            ],
            "at least 1 worker",
        ),
        (
            vec![
                "plan".into(),
                "scale".into(),
                "p".into(),
                "--workers".into(),
                "4".into(),
            ],
            "at most 3 workers",
        ),
        (
            vec![
                "plan".into(),
                "scale".into(),
                "p".into(),
                "--workers".into(),
                "3".into(),
            ],
            "not enough node capacity",
        ),
        (
            vec![
                "config".into(),
                "set".into(),
                "hello".into(),
                "PORT=1".into(),
            ],
            "PORT",
        ),
        (
            vec![
                "config".into(),
                "set".into(),
                "hello".into(),
                "1BAD=x".into(),
            ],
            "invalid setting name",
        ),
        (
            vec!["plan".into(), "delete".into(), "p".into()],
            "still has apps",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = s.fails(&args).await;
        assert!(
            err.contains(needle),
            "stamp {args:?}: expected {needle:?} in: {err}"
        );
        // Nothing changed: still one release, still serving it, same plan.
        let releases = s.json(&["releases", "hello"]).await;
        assert_eq!(
            releases.as_array().unwrap().len(),
            1,
            "after {args:?}: {releases:#}"
        );
        let (status, body) = s.get("hello").await;
        assert_eq!(status, 200, "after {args:?}");
        assert!(body.contains("(release v1)"), "after {args:?}: {body}");
    }
    assert_eq!(s.json(&["plan", "show", "p"]).await["workers"], 1);
    assert_eq!(s.json(&["app", "list"]).await.as_array().unwrap().len(), 1);

    // A client still sending an upload after the refusal is ready gets to finish and read it,
    // rather than a reset connection (which the CLI reports as a broken pipe): over the limit,
    // to an app that does not exist, with a wrong token.
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let token = token.trim();
    for (app, token, status, needle) in [
        ("hello", token, "413", "1 MiB"),
        ("nope", token, "404", "nope"),
        ("hello", "wrong", "401", "token"),
    ] {
        let refusal = upload_in_two_halves(&s.api, app, token, 4 * 1024 * 1024).await;
        assert!(
            refusal.starts_with(&format!("HTTP/1.1 {status}")),
            "{refusal}"
        );
        assert!(refusal.contains(needle), "{refusal}");
    }
    // Rejected uploads, from the CLI above and raw here, leave no artifact behind: only v1's.
    let blobs = std::fs::read_dir(data.join("artifacts/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1, "a refused upload left an artifact behind");
    assert_eq!(
        s.json(&["releases", "hello"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The API wants a token; the CLI says what to do without one.
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/api/v1/apps", s.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = http
        .get(format!("{}/api/v1/apps", s.api))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let out = Command::new(BIN)
        .args(["app", "list"])
        .env("STAMP_DATA_DIR", &data)
        .env("STAMP_TOKEN", "wrong")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin-token"));

    // Unknown host and an app without instances get the front end's pages.
    let r = s.client().get(s.url("nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-stamp-error"], "no-such-app");
    s.stop().await;
}

/// Posts a deploy of `len` bytes to `app` over a raw connection: half, a pause long enough for
/// the API to have refused it, then the rest. Returns what the API answered, or panics naming
/// the write or read that failed.
async fn upload_in_two_halves(api: &str, app: &str, token: &str, len: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/apps/{app}/deploy HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let half = vec![b'x'; len / 2];
    async fn send(conn: &mut tokio::net::TcpStream, bytes: &[u8], what: &str) {
        tokio::time::timeout(Duration::from_secs(20), conn.write_all(bytes))
            .await
            .unwrap_or_else(|_| panic!("{what}: timed out"))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }
    send(&mut conn, head.as_bytes(), "the head").await;
    send(&mut conn, &half, "the first half").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&mut conn, &half, "the second half").await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut answer))
        .await
        .expect("the answer: timed out")
        .expect("the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill_9_and_logs_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Stamp::start(&data, &[]).await;
    s.ok(&["plan", "create", "p", "--sku", "S1", "--workers", "2"])
        .await;
    s.ok(&["app", "create", "hello", "--plan", "p"]).await;
    s.ok(&["config", "set", "hello", "A=1", "B=two words"])
        .await;

    // `logs --tail` shows past lines, then follows new ones.
    let mut tail = Command::new(BIN)
        .args(["logs", "hello", "--tail"])
        .env("STAMP_DATA_DIR", &data)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tail.stdout.take().unwrap()));
    s.ok(&["config", "unset", "hello", "A"]).await;
    let mut seen = Vec::new();
    let followed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.contains("release v2 created: Unset A") {
                return;
            }
        }
    })
    .await;
    assert!(
        followed.is_ok(),
        "logs --tail did not show the new event: {seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("app hello created")),
        "{seen:#?}"
    );
    tail.kill().await.unwrap();

    // kill -9 right after acknowledged changes: they are all there after a restart.
    s.ok(&["plan", "scale", "p", "--workers", "3"]).await;
    s.child.kill().await.unwrap();
    let s = Stamp::start(&data, &[]).await;
    assert_eq!(s.json(&["plan", "show", "p"]).await["workers"], 3);
    let settings = s.json(&["config", "list", "hello"]).await;
    assert_eq!(settings, serde_json::json!({"B": "two words"}));
    let releases = s.json(&["releases", "hello"]).await;
    assert_eq!(releases.as_array().unwrap().len(), 2, "{releases:#}");
    s.stop().await;
}

/// Issue 3 through the real binary: front-end settings from the CLI reach the front end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_end_settings_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Stamp::start(&data, &[]).await;
    let hello = hello_dir();
    s.ok(&["plan", "create", "p", "--sku", "S1", "--workers", "2"])
        .await;
    s.ok(&["app", "create", "hello", "--plan", "p"]).await;
    s.ok(&["app", "create", "other", "--plan", "p"]).await;
    s.ok(&["deploy", hello.to_str().unwrap(), "--app", "hello"])
        .await;
    let client = reqwest::Client::builder()
        .resolve("hello.localhost", s.http)
        .resolve("www.example.com", s.http)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let port = s.http.port();
    let root = format!("http://hello.localhost:{port}/");

    // Custom domain: requests for it reach the app; it belongs to one app at most.
    s.ok(&["domain", "add", "hello", "www.example.com"]).await;
    let r = client
        .get(format!("http://www.example.com:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("hello from hello-web"));
    let err = s
        .fails(&["domain", "add", "other", "www.example.com"])
        .await;
    assert!(err.contains("already belongs to another app"), "{err}");
    let err = s.fails(&["domain", "add", "other", "Not A Domain"]).await;
    assert!(err.contains("not a custom domain"), "{err}");
    assert_eq!(
        s.json(&["domain", "list", "hello"]).await,
        serde_json::json!(["www.example.com"])
    );

    // Headers the instance sees.
    let r = client
        .get(format!("http://hello.localhost:{port}/headers?x=1"))
        .header("X-Forwarded-For", "6.6.6.6")
        .send()
        .await
        .unwrap();
    let seen = r.text().await.unwrap().to_ascii_lowercase();
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(seen.contains("x-forwarded-host: hello.localhost"), "{seen}");
    assert!(seen.contains("x-original-url: /headers?x=1"), "{seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1"), "{seen}");
    assert!(
        !seen.contains("6.6.6.6"),
        "spoofed X-Forwarded-For reached the app: {seen}"
    );

    // Affinity on by default: the cookie pins the client to one instance.
    let r = client.get(&root).send().await.unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("ARRAffinity="))
        .expect("affinity cookie");
    let pinned = instance_of(&r.text().await.unwrap());
    let pair = cookie.split(';').next().unwrap().to_string();
    for _ in 0..6 {
        let r = client
            .get(format!("http://hello.localhost:{port}/"))
            .header("Cookie", &pair)
            .send()
            .await
            .unwrap();
        assert_eq!(instance_of(&r.text().await.unwrap()), pinned);
    }
    s.ok(&["app", "update", "hello", "--client-affinity", "false"])
        .await;
    let r = client.get(&root).send().await.unwrap();
    assert!(r.headers().get("set-cookie").is_none());

    // Access restrictions: deny loopback → 403; a higher-priority allow wins; removing restores.
    s.ok(&[
        "access",
        "add",
        "hello",
        "--priority",
        "200",
        "--deny",
        "127.0.0.0/8",
        "--name",
        "block",
    ])
    .await;
    let r = client.get(&root).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-stamp-error"], "access-denied");
    s.ok(&[
        "access",
        "add",
        "hello",
        "--priority",
        "100",
        "--allow",
        "127.0.0.1",
        "--name",
        "me",
    ])
    .await;
    let r = client.get(&root).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let rules = s.json(&["access", "list", "hello"]).await;
    assert_eq!(rules[0]["name"], "me", "{rules:#}");
    let err = s
        .fails(&[
            "access",
            "add",
            "hello",
            "--priority",
            "5",
            "--allow",
            "not-an-ip",
        ])
        .await;
    assert!(err.contains("not an IP network"), "{err}");
    s.ok(&["access", "remove", "hello", "me"]).await;
    s.ok(&["access", "remove", "hello", "block"]).await;
    let r = client.get(&root).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // HTTPS only: plain HTTP is redirected with 301.
    s.ok(&["app", "update", "hello", "--https-only", "true"])
        .await;
    let r = client
        .get(format!("http://hello.localhost:{port}/a?b=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("https://hello.localhost"),
        "{location}"
    );
    assert!(location.ends_with("/a?b=1"), "{location}");
    s.ok(&["app", "update", "hello", "--https-only", "false"])
        .await;

    // Bad values are refused and change nothing.
    let err = s
        .fails(&[
            "app",
            "update",
            "hello",
            "--health-path",
            "/h",
            "--health-threshold",
            "11",
        ])
        .await;
    assert!(err.contains("2 to 10"), "{err}");
    let err = s
        .fails(&["app", "update", "hello", "--balancing", "random"])
        .await;
    assert!(err.contains("round-robin or least-requests"), "{err}");
    let site = &s.json(&["app", "show", "hello"]).await["site"];
    assert_eq!(site["health_check"], Value::Null, "{site:#}");
    assert_eq!(site["balancing"], "round-robin");

    // Health check: every instance failing → none removed (Azure), and the events say so.
    s.ok(&[
        "app",
        "update",
        "hello",
        "--health-path",
        "/status/500",
        "--health-interval",
        "1",
        "--health-threshold",
        "2",
    ])
    .await;
    s.wait_instances("hello", "both instances unhealthy", |list| {
        list.len() == 2
            && list
                .iter()
                .all(|i| i["healthy"] == false && i["state"] == "ready")
    })
    .await;
    let (status, _) = s.get("hello").await;
    assert_eq!(status, 200, "all unhealthy: none may leave rotation");
    let logs = s.ok(&["logs", "hello", "--lines", "200"]).await;
    assert!(logs.contains("unhealthy"), "{logs}");

    // Metrics: the controller exports the front end's request counters.
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("stamp_http_requests_total{app=\"hello\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("stamp_frontend_errors_total{app=\"hello\",code=\"access-denied\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stamp_plan_workers{plan=\"p\",sku=\"S1\"} 2"),
        "{metrics}"
    );
    s.stop().await;
}

/// Issue 3: a certificate uploaded with the CLI is served by SNI on the HTTPS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_certificate_is_served_by_sni() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Stamp::start(&data, &[]).await;
    s.ok(&["plan", "create", "p", "--sku", "B1"]).await;
    s.ok(&["app", "create", "hello", "--plan", "p"]).await;
    s.ok(&["deploy", hello_dir().to_str().unwrap(), "--app", "hello"])
        .await;
    s.ok(&["domain", "add", "hello", "www.example.com"]).await;

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["www.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    // A key that is not the certificate's is refused with a clear message.
    let other_key = tmp.path().join("other.pem");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = s
        .fails(&[
            "cert",
            "upload",
            "hello",
            "--cert",
            cert_path.to_str().unwrap(),
            "--key",
            other_key.to_str().unwrap(),
        ])
        .await;
    assert!(err.contains("does not match"), "{err}");
    let uploaded = s
        .json(&[
            "cert",
            "upload",
            "hello",
            "--cert",
            cert_path.to_str().unwrap(),
            "--key",
            key_path.to_str().unwrap(),
        ])
        .await;
    assert_eq!(
        uploaded[0]["hostnames"],
        serde_json::json!(["www.example.com"])
    );

    // A client that trusts only that certificate connects with SNI www.example.com.
    let https: SocketAddr = std::fs::read_to_string(data.join("https-url"))
        .unwrap()
        .trim()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    // A fresh client config each time: no session to resume, so the server shows its certificate.
    let connector = move || {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("www.example.com").unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connector().connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("the uploaded certificate verifies for www.example.com");
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(served.as_ref(), cert.der().as_ref());
    tls.write_all(b"GET /headers HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("x-forwarded-proto: https"), "{response}");

    // Removing it leaves the default certificate, which this client does not trust.
    let thumbprint = uploaded[0]["thumbprint"].as_str().unwrap();
    s.ok(&["cert", "remove", "hello", thumbprint]).await;
    assert!(
        s.json(&["cert", "list", "hello"])
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("www.example.com").unwrap();
    assert!(connector().connect(name, tcp).await.is_err());
    s.stop().await;
}

/// Issue 4 end to end, in real time with short windows: CPU load scales the plan out, and the
/// plan scales back in when the load stops; every decision is in the history and the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_load_scales_the_plan_out_and_back_in() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Stamp::start(&data, &["--autoscale-interval", "1s"]).await;
    s.ok(&["plan", "create", "p", "--sku", "S1"]).await;
    s.ok(&["app", "create", "hello", "--plan", "p"]).await;
    s.ok(&["deploy", hello_dir().to_str().unwrap(), "--app", "hello"])
        .await;

    let rule = |op: &str, threshold: f64, direction: &str| {
        serde_json::json!({
            "metricTrigger": {
                "metricName": "CpuPercentage", "metricResourceUri": "",
                "timeGrain": "PT1S", "statistic": "Average", "timeWindow": "PT3S",
                "timeAggregation": "Average", "operator": op, "threshold": threshold
            },
            "scaleAction": {"direction": direction, "type": "ChangeCount", "value": "1", "cooldown": "PT2S"}
        })
    };
    // A webhook receiver: every POST body goes to `hooks`.
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook_listener.local_addr().unwrap();
    let (hooks_tx, mut hooks) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = hook_listener.accept().await {
            let tx = hooks_tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = tx.send(body.to_string());
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let setting = serde_json::json!({
        "enabled": true,
        "profiles": [{
            "name": "default",
            "capacity": {"minimum": "1", "maximum": "2", "default": "1"},
            "rules": [rule("GreaterThan", 50.0, "Increase"), rule("LessThan", 10.0, "Decrease")]
        }],
        "notifications": [{
            "operation": "Scale",
            "webhooks": [{"serviceUri": format!("http://{hook_addr}/hook"), "properties": {"team": "web"}}]
        }]
    });
    // An invalid setting is refused with its problems listed, and nothing is set.
    let bad = serde_json::json!({"profiles": [{"name": "x", "capacity": {"minimum": "3", "maximum": "1", "default": "9"}, "rules": []}]});
    let (bad_file, good_file) = (tmp.path().join("bad.json"), tmp.path().join("good.json"));
    std::fs::write(&bad_file, bad.to_string()).unwrap();
    std::fs::write(&good_file, setting.to_string()).unwrap();
    let err = s
        .fails(&[
            "autoscale",
            "set",
            "p",
            "--file",
            bad_file.to_str().unwrap(),
        ])
        .await;
    assert!(err.contains("profiles[0].capacity"), "{err}");
    let err = s.fails(&["autoscale", "show", "p"]).await;
    assert!(err.contains("plan p has no autoscale setting"), "{err}");
    let shown = s
        .json(&[
            "autoscale",
            "set",
            "p",
            "--file",
            good_file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(shown["enabled"], true);
    assert_eq!(shown["profiles"], serde_json::json!(["default"]));
    // A bad setting over a good one changes nothing.
    s.fails(&[
        "autoscale",
        "set",
        "p",
        "--file",
        bad_file.to_str().unwrap(),
    ])
    .await;
    let kept = s.json(&["autoscale", "show", "p"]).await;
    assert_eq!(kept["setting"], setting, "{kept:#}");

    // Load: two clients keep the instance's CPU busy.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (client, url, stop) = (
            s.client(),
            format!("{}burn?ms=300", s.url("hello")),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            for _ in 0..2_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let _ = client.get(&url).send().await;
            }
        }));
    }
    let workers = |v: Value| v["workers"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while workers(s.json(&["plan", "show", "p"]).await) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the plan did not scale out under CPU load"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    // The webhook got Azure's payload for the scale-out.
    let hook = tokio::time::timeout(Duration::from_secs(20), hooks.recv())
        .await
        .expect("a webhook within 20 s")
        .unwrap();
    let hook: Value = serde_json::from_str(&hook).unwrap();
    assert_eq!(hook["operation"], "Scale Out", "{hook:#}");
    assert_eq!(hook["context"]["oldCapacity"], "1", "{hook:#}");
    assert_eq!(hook["context"]["newCapacity"], "2", "{hook:#}");
    assert_eq!(hook["properties"]["team"], "web", "{hook:#}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while workers(s.json(&["plan", "show", "p"]).await) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the plan did not scale back in when the load stopped"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let history = s.json(&["autoscale", "history", "p", "--scaled"]).await;
    let scaled: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["summary"].as_str().unwrap())
        .collect();
    assert!(scaled.len() >= 2, "{history:#}");
    let logs = s.ok(&["logs", "hello", "--lines", "500"]).await;
    assert!(
        logs.contains("autoscale: plan p from 1 to 2 workers"),
        "{logs}"
    );
    assert!(
        logs.contains("autoscale: plan p from 2 to 1 workers"),
        "{logs}"
    );
    // Inflation of the stored setting: +1 per 2 s cooldown = 1800 instances an hour.
    let rates = s.json(&["autoscale", "inflation", "p"]).await;
    assert!(rates.to_string().contains("1800"), "{rates:#}");

    // The rule shortcut adds to the stored setting; a bad action is refused.
    s.ok(&[
        "autoscale",
        "rule",
        "add",
        "p",
        "--metric",
        "Requests",
        "--op",
        "GreaterThan",
        "--threshold",
        "1000",
        "--window",
        "5m",
        "--action",
        "increase-count:2",
        "--cooldown",
        "10m",
    ])
    .await;
    let shown = s.json(&["autoscale", "show", "p"]).await;
    let rules = shown["setting"]["profiles"][0]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3, "{shown:#}");
    assert_eq!(rules[2]["scaleAction"]["cooldown"], "PT10M");
    let err = s
        .fails(&[
            "autoscale",
            "rule",
            "add",
            "p",
            "--metric",
            "Requests",
            "--op",
            "GreaterThan",
            "--threshold",
            "1",
            "--window",
            "5m",
            "--action",
            "grow:2",
        ])
        .await;
    assert!(err.contains("increase-count"), "{err}");
    s.stop().await;
}
