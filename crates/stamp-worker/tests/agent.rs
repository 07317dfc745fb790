//! The worker agent with real processes: a small Python web app packed into a real artifact,
//! started, checked over HTTP on loopback, crashed, rolled, drained and stopped; and a second one
//! whose health check fails on demand. CPU and memory sampling is in [`usage`].

#[path = "agent/usage.rs"]
mod usage;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use stamp_artifact::BlobStore;
use stamp_logs::{LogBook, PLATFORM};
use stamp_model::spec::{InstanceKey, WorkerId};
use stamp_model::{
    AppName, Digest, HealthCheck, InstanceId, InstanceSpec, InstanceState, Millis,
    ObservedInstance, PlanName, ProcessType, SlotName, SystemClock,
};
use stamp_worker::{WorkerAgent, WorkerConfig};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Answers every GET with its environment as JSON.
const SERVER: &str = r#"
import http.server, json, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(dict(os.environ)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
print("listening on", os.environ["PORT"], flush=True)
server.serve_forever()
"#;

/// Serves a health check on `/healthz`: 200, or 500 while a file `unhealthy` exists in its
/// working directory, or 302 when `$HEALTH` is `redirect`. Appends each probe's request line
/// and headers to `probes.log`, so a test sees what was asked and how often.
const HEALTH_SERVER: &str = r#"
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            with open("probes.log", "a") as log:
                h = self.headers
                log.write("%s|%s|%s|%s\n" % (self.requestline, h["Host"], h["User-Agent"], h["Connection"]))
            if os.environ.get("HEALTH") == "redirect":
                self.send_response(302)
                self.send_header("Location", "/login")
            elif os.path.exists("unhealthy"):
                self.send_response(500)
            else:
                self.send_response(200)
        else:
            self.send_response(404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
server.serve_forever()
"#;

const SERVE: &str = "exec python3 server.py";
const SERVE_HEALTH: &str = "exec python3 health.py";
const WAIT: Duration = Duration::from_secs(30);

struct Rig {
    tmp: TempDir,
    store: BlobStore,
    logs: LogBook,
    digest: Digest,
    app: AppName,
    /// What the `drained` callback answers.
    drained: Arc<AtomicBool>,
    /// Every address the `drained` callback was asked about.
    asked: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Rig {
    fn new() -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("server.py"), SERVER).unwrap();
        std::fs::write(src.join("health.py"), HEALTH_SERVER).unwrap();
        std::fs::write(src.join("usage.py"), usage::APP).unwrap();
        let archive = tmp.path().join("app.tar.gz");
        let mut file = std::fs::File::create(&archive).unwrap();
        stamp_artifact::pack_dir(&src, &mut file).unwrap();
        drop(file);
        let store = BlobStore::open(&tmp.path().join("blobs")).unwrap();
        let (digest, _) = store.put_file(&archive, 1 << 30).unwrap();
        let logs = LogBook::open(&tmp.path().join("logs"), Arc::new(SystemClock)).unwrap();
        Rig {
            tmp,
            store,
            logs,
            digest,
            app: AppName::parse("hello").unwrap(),
            drained: Arc::new(AtomicBool::new(true)),
            asked: Arc::default(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("worker")
    }

    fn config(&self) -> WorkerConfig {
        let drained = self.drained.clone();
        let asked = self.asked.clone();
        WorkerConfig {
            dir: self.dir(),
            artifacts: self.store.clone(),
            logs: self.logs.clone(),
            domain: "stamp.test".into(),
            drained: Arc::new(move |addr| {
                asked.lock().unwrap().push(addr);
                drained.load(Ordering::SeqCst)
            }),
            clock: Arc::new(SystemClock),
            sample_interval: WorkerConfig::DEFAULT_SAMPLE_INTERVAL,
        }
    }

    async fn agent(&self) -> WorkerAgent {
        WorkerAgent::start(self.config()).await.unwrap()
    }

    fn spec(&self, worker: u32, release: u32, command: &str) -> InstanceSpec {
        InstanceSpec {
            key: InstanceKey {
                app: self.app.clone(),
                lane: 0,
                process_type: ProcessType::web(),
                worker: WorkerId {
                    plan: PlanName::parse("basic").unwrap(),
                    index: worker,
                },
            },
            slot: SlotName::production(),
            release,
            generation: 0,
            artifact: self.digest.clone(),
            command: command.into(),
            env: BTreeMap::from([
                ("GREETING".to_string(), "hello".to_string()),
                // Settings may not shadow platform variables; if one slips through, it loses.
                ("PORT".to_string(), "1".to_string()),
            ]),
            grace_period: Millis::from_secs(30),
            start_timeout: Millis::from_secs(30),
            health_check: None,
            limits: stamp_model::WorkerLimits::of(&stamp_model::Sku::find("B1").unwrap()),
        }
    }

    /// The running instance's working directory (its unpacked app).
    fn app_dir(&self, id: &InstanceId) -> PathBuf {
        self.dir().join("instances").join(&id.0).join("app")
    }

    /// The health check requests the instance received, one line each.
    fn probes(&self, id: &InstanceId) -> Vec<String> {
        match std::fs::read_to_string(self.app_dir(id).join("probes.log")) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read probes.log: {e}"),
        }
    }

    /// Platform events of the app's log.
    fn events(&self) -> Vec<String> {
        self.logs
            .last(&self.app, 10_000)
            .unwrap()
            .into_iter()
            .filter(|l| l.source == PLATFORM)
            .map(|l| l.text)
            .collect()
    }

    fn has_event(&self, text: &str) -> bool {
        self.events().iter().any(|e| e.contains(text))
    }

    /// Lines the instance printed.
    fn output(&self, id: &str) -> Vec<String> {
        self.logs
            .last(&self.app, 10_000)
            .unwrap()
            .into_iter()
            .filter(|l| l.source == id)
            .map(|l| l.text)
            .collect()
    }
}

/// Waits until the observed set satisfies `ok`, and returns it.
async fn until(
    rx: &mut watch::Receiver<Vec<ObservedInstance>>,
    what: &str,
    ok: impl Fn(&[ObservedInstance]) -> bool,
) -> Vec<ObservedInstance> {
    let found = match tokio::time::timeout(WAIT, rx.wait_for(|o| ok(o))).await {
        Ok(Ok(observed)) => Some(observed.clone()),
        Ok(Err(_)) => panic!("the agent ended while waiting for {what}"),
        Err(_) => None,
    };
    found.unwrap_or_else(|| {
        panic!(
            "timed out waiting for {what}; observed: {:#?}",
            *rx.borrow()
        )
    })
}

fn all_ready(n: usize) -> impl Fn(&[ObservedInstance]) -> bool {
    move |o| o.len() == n && o.iter().all(|i| i.state == InstanceState::Ready)
}

/// Waits until `ok` holds, polling.
async fn eventually(what: &str, ok: impl Fn() -> bool) {
    let wait = async {
        while !ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(WAIT, wait).await.is_err() {
        panic!("timed out waiting for {what}");
    }
}

/// Whether the process runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(state, Some(s) if s.starts_with('Z') || s.starts_with('X'))
        }
        Err(_) => false,
    }
}

/// GETs `/` from the instance on `port` and parses the JSON environment it answers.
async fn environment(port: u16) -> BTreeMap<String, String> {
    let get = async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        conn.write_all(b"GET / HTTP/1.0\r\nHost: hello.stamp.test\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(WAIT, get)
        .await
        .expect("GET timed out");
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    let env: BTreeMap<String, Value> = serde_json::from_str(body).unwrap();
    env.into_iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
        .collect()
}

fn pid(o: &ObservedInstance) -> u32 {
    o.pid.expect("a running instance has a pid")
}

#[tokio::test]
async fn desired_instances_become_ready_with_their_environment() {
    let rig = Rig::new();
    let agent = rig.agent().await;
    let mut rx = agent.observed();
    agent.set_desired(vec![rig.spec(0, 1, SERVE), rig.spec(1, 1, SERVE)]);
    let observed = until(&mut rx, "two ready instances", all_ready(2)).await;

    for (worker, o) in observed.iter().enumerate() {
        assert_eq!(o.spec.key.worker.index, worker as u32, "sorted by key");
        let (prefix, hex) = o.id.0.rsplit_once('-').unwrap();
        assert_eq!(prefix, format!("hello-web-{worker}"));
        assert!(
            hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}",
            o.id
        );
        assert!(o.started_at > Millis::ZERO);
        assert_eq!(o.restarts, 0);

        let env = environment(o.port).await;
        let home = rig.dir().join("instances").join(&o.id.0).join("home");
        let expect = [
            ("GREETING", "hello".to_string()),
            ("PORT", o.port.to_string()),
            ("HOME", home.display().to_string()),
            ("LANG", "C.UTF-8".to_string()),
            ("STAMP_APP", "hello".to_string()),
            ("STAMP_SLOT", "production".to_string()),
            ("STAMP_PROCESS_TYPE", "web".to_string()),
            ("STAMP_INSTANCE_ID", o.id.0.clone()),
            ("STAMP_RELEASE", "v1".to_string()),
            ("WEBSITE_SITE_NAME", "hello".to_string()),
            ("WEBSITE_INSTANCE_ID", o.id.0.clone()),
            ("WEBSITE_SLOT_NAME", "production".to_string()),
            ("WEBSITE_HOSTNAME", "hello.stamp.test".to_string()),
        ];
        for (name, value) in expect {
            assert_eq!(env.get(name), Some(&value), "{name} of {}", o.id);
        }
        assert!(env["TMPDIR"].ends_with("/tmp"));
        assert!(env.contains_key("PATH"));
        assert!(
            !env.contains_key("CARGO"),
            "the agent's own environment leaked"
        );

        let id = o.id.0.clone();
        eventually("the instance's output in its log", || {
            rig.output(&id)
                .contains(&format!("listening on {}", o.port))
        })
        .await;
        assert!(rig.has_event(&format!("{id} starting v1 on port {}", o.port)));
        assert!(rig.has_event(&format!("{id} v1 ready on port {}", o.port)));
    }

    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_new_release_replaces_the_old_one_after_it_is_drained() {
    let rig = Rig::new();
    rig.drained.store(false, Ordering::SeqCst);
    let agent = rig.agent().await;
    let mut rx = agent.observed();
    agent.set_desired(vec![rig.spec(0, 1, SERVE)]);
    let old = until(&mut rx, "v1 ready", all_ready(1)).await.remove(0);

    agent.set_desired(vec![rig.spec(0, 2, SERVE)]);
    let both = until(&mut rx, "v2 ready and v1 draining", |o| {
        o.iter()
            .any(|i| i.spec.release == 2 && i.state == InstanceState::Ready)
            && o.iter()
                .any(|i| i.id == old.id && i.state == InstanceState::Draining)
    })
    .await;
    let new = both.iter().find(|i| i.spec.release == 2).unwrap().clone();
    assert_eq!(environment(new.port).await["STAMP_RELEASE"], "v2");

    // Not drained yet: the old instance keeps running and serving.
    let old_addr = SocketAddr::from(([127, 0, 0, 1], old.port));
    eventually("the agent asking whether v1 is drained", || {
        rig.asked.lock().unwrap().contains(&old_addr)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(pid(&old)));
    assert_eq!(environment(old.port).await["STAMP_RELEASE"], "v1");
    assert!(
        rx.borrow()
            .iter()
            .any(|i| i.id == old.id && i.state == InstanceState::Draining)
    );
    assert!(!rig.has_event(&format!("{} stopping", old.id)));

    rig.drained.store(true, Ordering::SeqCst);
    let after = until(&mut rx, "v1 gone", |o| o.len() == 1).await;
    assert_eq!(after[0].id, new.id);
    assert!(!alive(pid(&old)));
    assert!(!rig.dir().join("instances").join(&old.id.0).exists());
    let events = rig.events();
    let at = |text: String| {
        events
            .iter()
            .position(|e| *e == text)
            .unwrap_or_else(|| panic!("no event {text:?} in {events:#?}"))
    };
    let draining = at(format!("{} draining", old.id));
    let stopping = at(format!("{} stopping (SIGTERM)", old.id));
    let stopped = at(format!("{} stopped", old.id));
    assert!(draining < stopping && stopping < stopped, "{events:#?}");
    assert!(
        !rig.has_event("SIGKILL"),
        "v1 exits on SIGTERM: {events:#?}"
    );

    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_killed_process_is_restarted_as_the_same_instance() {
    let rig = Rig::new();
    let agent = rig.agent().await;
    let mut rx = agent.observed();
    agent.set_desired(vec![rig.spec(0, 1, SERVE)]);
    let before = until(&mut rx, "ready", all_ready(1)).await.remove(0);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid(&before) as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let after = until(&mut rx, "ready again after a restart", |o| {
        o.len() == 1 && o[0].restarts == 1 && o[0].state == InstanceState::Ready
    })
    .await
    .remove(0);
    assert_eq!(after.id, before.id);
    assert_eq!(after.port, before.port);
    assert_ne!(after.pid, before.pid);
    assert!(after.started_at >= before.started_at);
    assert_eq!(
        environment(after.port).await["STAMP_INSTANCE_ID"],
        before.id.0
    );
    let crash = format!(
        "{} crashed: signal 9 (SIGKILL); restarting in 0 s",
        before.id
    );
    assert!(rig.has_event(&crash), "{:#?}", rig.events());
    assert!(rig.has_event(&format!("{} restarting v1", before.id)));

    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_command_that_exits_is_retried_with_growing_delays() {
    let rig = Rig::new();
    let agent = rig.agent().await;
    let mut rx = agent.observed();
    agent.set_desired(vec![rig.spec(0, 1, "echo bye; exit 3")]);
    let crashed = until(&mut rx, "crashed after a restart", |o| {
        o.len() == 1 && o[0].restarts >= 1 && o[0].state == InstanceState::Crashed
    })
    .await
    .remove(0);
    assert_eq!(crashed.pid, None);
    // Restarts at once, then after 1 s, then after 2 s.
    until(&mut rx, "three restarts", |o| o[0].restarts >= 3).await;
    let id = &crashed.id;
    for delay in [0, 1, 2] {
        let text = format!("{id} crashed: exit status 3; restarting in {delay} s");
        assert!(rig.has_event(&text), "no {text:?} in {:#?}", rig.events());
    }
    assert!(rig.output(&id.0).iter().any(|l| l == "bye"));

    // Stopping a crashed instance cancels its restart.
    agent.set_desired(Vec::new());
    until(&mut rx, "no instances", |o| o.is_empty()).await;
    assert!(rig.has_event(&format!("{id} stopped")));

    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_missing_artifact_is_a_crash_that_says_what_to_do() {
    let rig = Rig::new();
    let agent = rig.agent().await;
    let mut rx = agent.observed();
    let mut spec = rig.spec(0, 1, SERVE);
    spec.artifact = Digest::parse(&"0".repeat(64)).unwrap();
    agent.set_desired(vec![spec]);
    let crashed = until(&mut rx, "crashed", |o| {
        o.len() == 1 && o[0].state == InstanceState::Crashed
    })
    .await
    .remove(0);
    eventually("the crash event", || {
        rig.has_event(&format!(
            "{} crashed: artifact {} is not in this worker's blob store; deploy the release again",
            crashed.id,
            "0".repeat(64)
        ))
    })
    .await;
    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_process_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let rig = Rig::new();
    let agent = rig.agent().await;
    let mut rx = agent.observed();
    let mut spec = rig.spec(0, 1, "trap '' TERM; exec python3 server.py");
    spec.grace_period = Millis(500);
    agent.set_desired(vec![spec]);
    let running = until(&mut rx, "ready", all_ready(1)).await.remove(0);

    agent.set_desired(Vec::new());
    until(&mut rx, "no instances", |o| o.is_empty()).await;
    assert!(!alive(pid(&running)));
    let id = &running.id;
    let events = rig.events();
    for text in [
        format!("{id} stopping (SIGTERM)"),
        format!("{id} did not exit within 0.5 s; sent SIGKILL"),
        format!("{id} stopped"),
    ] {
        assert!(events.contains(&text), "no {text:?} in {events:#?}");
    }

    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn emptying_the_desired_set_and_shutdown_stop_everything() {
    let rig = Rig::new();
    let agent = rig.agent().await;
    let mut rx = agent.observed();
    agent.set_desired(vec![rig.spec(0, 1, SERVE), rig.spec(1, 1, SERVE)]);
    let running = until(&mut rx, "two ready", all_ready(2)).await;

    agent.set_desired(Vec::new());
    until(&mut rx, "no instances", |o| o.is_empty()).await;
    for o in &running {
        assert!(!alive(pid(o)), "{} still runs", o.id);
    }
    let instances = rig.dir().join("instances");
    assert_eq!(std::fs::read_dir(&instances).unwrap().count(), 0);

    // Shutdown does not wait for drains: the front end is going away too.
    rig.drained.store(false, Ordering::SeqCst);
    agent.set_desired(vec![rig.spec(0, 1, SERVE)]);
    let last = until(&mut rx, "ready", all_ready(1)).await.remove(0);
    tokio::time::timeout(WAIT, agent.shutdown())
        .await
        .expect("shutdown returns");
    assert!(rx.borrow().is_empty());
    assert!(!alive(pid(&last)));
    assert_eq!(std::fs::read_dir(&instances).unwrap().count(), 0);

    // Desire is ignored afterwards; shutting down again returns at once.
    agent.set_desired(vec![rig.spec(0, 1, SERVE)]);
    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(agent.observed().borrow().is_empty());
}

/// A process of the test's own, killed when dropped so a failing test leaves nothing behind.
struct Leftover(std::process::Child);

impl Drop for Leftover {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `sleep 1000` in its own process group, as an instance would run, and records it in a
/// pgid file as a dead agent would have left it.
fn leftover(instances: &Path, id: &str, marked: bool) -> Leftover {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut command = std::process::Command::new("sleep");
    command
        .arg("1000")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if marked {
        command.env("STAMP_INSTANCE_ID", id);
    }
    let child = command.spawn().unwrap();
    let dir = instances.join(id);
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(dir.join("pgid"), child.id().to_string()).unwrap();
    Leftover(child)
}

async fn exit_of(child: &mut Leftover) -> std::process::ExitStatus {
    let wait = async {
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("the process exits")
}

#[tokio::test]
async fn a_new_agent_kills_what_a_dead_one_left_behind() {
    use std::os::unix::process::ExitStatusExt;
    let rig = Rig::new();
    let instances = rig.dir().join("instances");
    let mut left = leftover(&instances, "hello-web-0-abcdef", true);
    // A pgid file whose id now belongs to someone else (after a reboot): not ours to kill.
    let mut stranger = leftover(&instances, "hello-web-1-123456", false);

    let agent = rig.agent().await;
    assert_eq!(exit_of(&mut left).await.signal(), Some(9));
    assert!(
        stranger.0.try_wait().unwrap().is_none(),
        "an unrelated process was killed"
    );
    assert_eq!(std::fs::read_dir(&instances).unwrap().count(), 0);
    drop(stranger);

    // The agent works on the cleared directory.
    let mut rx = agent.observed();
    agent.set_desired(vec![rig.spec(0, 1, SERVE)]);
    until(&mut rx, "ready", all_ready(1)).await;
    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn instances_die_with_the_thread_that_spawned_them() {
    let rig = Rig::new();
    let config = rig.config();
    let spec = rig.spec(0, 1, SERVE);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (agent, pid) = runtime.block_on(async {
            let agent = WorkerAgent::start(config).await.unwrap();
            let mut observed = agent.observed();
            agent.set_desired(vec![spec]);
            let ready = until(&mut observed, "ready", all_ready(1)).await;
            (agent, pid(&ready[0]))
        });
        // As if the agent were killed with SIGKILL: no cleanup code runs, no destructor; only
        // the exit of the thread that spawned the instance is left to take it down.
        std::mem::forget(agent);
        std::mem::forget(runtime);
        tx.send(pid).unwrap();
    });
    let pid = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
        .await
        .unwrap()
        .expect("the instance became ready");
    eventually("the instance to die with its agent's thread", || {
        !alive(pid)
    })
    .await;
}

/// A spec of the health app, probed every second (the shortest interval validation allows),
/// unhealthy after two failures.
fn health_checked(rig: &Rig) -> InstanceSpec {
    let mut spec = rig.spec(0, 1, SERVE_HEALTH);
    spec.health_check = Some(HealthCheck {
        path: "/healthz".into(),
        interval: Millis(1000),
        unhealthy_after: 2,
        max_unhealthy_percent: 50,
    });
    spec
}

fn health_of(id: &InstanceId, healthy: bool) -> impl Fn(&[ObservedInstance]) -> bool {
    move |o| {
        o.iter()
            .any(|i| i.id == *id && i.state == InstanceState::Ready && i.healthy == healthy)
    }
}

#[tokio::test]
async fn failing_health_checks_mark_an_instance_unhealthy_until_one_passes() {
    let rig = Rig::new();
    let agent = rig.agent().await;
    let mut rx = agent.observed();
    agent.set_desired(vec![health_checked(&rig)]);
    let ready = until(&mut rx, "ready", all_ready(1)).await.remove(0);
    let id = ready.id.clone();
    assert!(ready.healthy);
    let unhealthy_file = rig.app_dir(&id).join("unhealthy");

    std::fs::write(&unhealthy_file, "").unwrap();
    until(&mut rx, "unhealthy", health_of(&id, false)).await;
    let unhealthy =
        format!("{id} unhealthy: 2 consecutive health check failures on /healthz (last: HTTP 500)");
    eventually("the unhealthy event", || rig.has_event(&unhealthy)).await;
    let probes = rig.probes(&id);
    assert!(probes.len() >= 2, "{probes:#?}");
    for probe in &probes {
        assert_eq!(
            probe,
            "GET /healthz HTTP/1.1|hello.stamp.test|Stamp-HealthCheck|close"
        );
    }

    std::fs::remove_file(&unhealthy_file).unwrap();
    until(&mut rx, "healthy again", health_of(&id, true)).await;
    let healthy = format!("{id} healthy again (/healthz answered 200)");
    eventually("the healthy event", || rig.has_event(&healthy)).await;

    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_redirect_fails_the_health_check_and_a_restart_starts_healthy() {
    let rig = Rig::new();
    let agent = rig.agent().await;
    let mut rx = agent.observed();
    let mut spec = health_checked(&rig);
    spec.env.insert("HEALTH".into(), "redirect".into());
    agent.set_desired(vec![spec]);
    let ready = until(&mut rx, "ready", all_ready(1)).await.remove(0);
    let id = ready.id.clone();
    until(&mut rx, "unhealthy", health_of(&id, false)).await;
    let event = format!(
        "{id} unhealthy: 2 consecutive health check failures on /healthz (last: HTTP 302, a redirect, which health checks do not follow)"
    );
    eventually("the unhealthy event", || rig.has_event(&event)).await;

    // A crash restarts the process healthy, whatever the last one's verdict was.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid(&ready) as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    until(&mut rx, "restarted healthy", |o| {
        o.len() == 1 && o[0].restarts == 1 && o[0].state == InstanceState::Ready && o[0].healthy
    })
    .await;
    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
}

#[tokio::test]
async fn an_instance_without_a_health_check_is_never_probed() {
    let rig = Rig::new();
    let agent = rig.agent().await;
    let mut rx = agent.observed();
    agent.set_desired(vec![rig.spec(0, 1, SERVE_HEALTH)]);
    let ready = until(&mut rx, "ready", all_ready(1)).await.remove(0);
    // Two and a half intervals of the health-checked tests.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rig.probes(&ready.id), Vec::<String>::new());
    assert!(rx.borrow().iter().all(|i| i.healthy));
    tokio::time::timeout(WAIT, agent.shutdown()).await.unwrap();
}
