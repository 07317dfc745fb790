//! The harness shared by the end-to-end tests: a real `stamp up` and its CLI.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_stamp");

pub fn hello_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/apps/hello")
}

/// A running `stamp up` on its own data directory and ports.
pub struct Stamp {
    pub child: Child,
    pub data: PathBuf,
    pub http: SocketAddr,
    pub api: String,
}

impl Stamp {
    pub async fn start(data: &Path, extra: &[&str]) -> Stamp {
        for f in ["api-url", "http-url", "https-url"] {
            let _ = std::fs::remove_file(data.join(f));
        }
        let mut cmd = Command::new(BIN);
        cmd.args([
            "up",
            "--api",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
        ]);
        if !extra.contains(&"--node-cpus") {
            // This machine may have fewer cores than three B1 workers need.
            cmd.args(["--node-cpus", "8"]);
        }
        let mut child = cmd
            .args(["--node-memory-mib", "16384"])
            .args(extra)
            .env("STAMP_DATA_DIR", data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start stamp up");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (api, http) = loop {
            let api = std::fs::read_to_string(data.join("api-url"));
            let http = std::fs::read_to_string(data.join("http-url"));
            if let (Ok(a), Ok(h)) = (api, http) {
                break (a, h);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("stamp up exited at start with {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stamp up did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let http = http.trim().trim_start_matches("http://").parse().unwrap();
        Stamp {
            child,
            data: data.to_path_buf(),
            http,
            api: api.trim().to_string(),
        }
    }

    /// Runs a CLI command; returns (success, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            Command::new(BIN)
                .args(args)
                .env("STAMP_DATA_DIR", &self.data)
                .env_remove("STAMP_API")
                .env_remove("STAMP_TOKEN")
                .output(),
        )
        .await
        .expect("CLI command timed out")
        .expect("run the CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args).await;
        assert!(ok, "stamp {args:?} failed: {err}{out}");
        out
    }

    pub async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&all).await).expect("JSON output")
    }

    /// Runs a CLI command that must fail; returns its error output.
    pub async fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args).await;
        assert!(!ok, "stamp {args:?} should have failed: {out}");
        err
    }

    /// Runs a CLI command that must fail with an error that mentions `needle`.
    pub async fn fails_with(&self, args: &[&str], needle: &str) {
        let err = self.fails(args).await;
        assert!(
            err.contains(needle),
            "stamp {args:?}: {needle:?} not in {err}"
        );
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .resolve("hello.localhost", self.http)
            .resolve("nope.localhost", self.http)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    pub fn url(&self, app: &str) -> String {
        format!("http://{app}.localhost:{}/", self.http.port())
    }

    /// GET `path` of `app` through the front end.
    pub async fn get_path(&self, app: &str, path: &str) -> (u16, String) {
        self.get_host(&format!("{app}.localhost"), path).await
    }

    /// GET `path` with Host `host` (resolved to the front end).
    pub async fn get_host(&self, host: &str, path: &str) -> (u16, String) {
        let r = reqwest::Client::builder()
            .resolve(host, self.http)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .get(format!("http://{host}:{}{path}", self.http.port()))
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn get(&self, app: &str) -> (u16, String) {
        let r = self
            .client()
            .get(self.url(app))
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Waits until `check` holds for the app's instances (`stamp ps --output json`).
    pub async fn wait_instances(&self, app: &str, what: &str, check: impl Fn(&[Value]) -> bool) {
        self.wait_json(&["ps", app], what, |v| check(v.as_array().unwrap()))
            .await;
    }

    /// Waits (up to 60 s) until `check` holds for the output of `stamp <args> --output json`.
    pub async fn wait_json(&self, args: &[&str], what: &str, check: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.json(args).await;
            if check(&v) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The controller's Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.api))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Waits (up to 60 s) until the app's last 200 log lines satisfy `check`; returns them.
    pub async fn wait_log(&self, app: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let logs = self.ok(&["logs", app, "-n", "200"]).await;
            if check(&logs) {
                return logs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what} in the log of {app}: {logs}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("stamp up did not stop within 60 s")
            .unwrap();
        assert!(status.success(), "stamp up exited with {status}");
    }
}

pub fn alive(pid: i64) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

pub fn instance_of(body: &str) -> String {
    body.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
