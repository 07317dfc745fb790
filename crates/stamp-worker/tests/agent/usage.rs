//! CPU and memory sampling of real instances: a busy one, one whose forked child is busy, an idle
//! one and one holding 100 MiB, each a small Python web server.

use std::time::Duration;

use stamp_model::{InstanceId, InstanceState, WallClock as _};
use stamp_worker::{InstanceUsage, WorkerAgent, WorkerConfig};
use tokio::sync::watch;

use super::{Rig, all_ready, until};

/// Serves HTTP on `$PORT`, and by its argument: `idle` does nothing else; `busy` burns a core
/// in its main thread (serving from another); `hog` holds 100 MiB (written, so resident) from
/// before it listens; `burn` does not serve, it only burns.
pub(crate) const APP: &str = r#"
import http.server, os, sys, threading
mode = sys.argv[1]
if mode == "burn":
    while True:
        pass
if mode == "hog":
    held = b"\x01" * (100 * 1024 * 1024)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
if mode == "busy":
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:
        pass
server.serve_forever()
"#;

const SAMPLE: Duration = Duration::from_millis(200);
/// Bounds each wait for a sample to show something; normally it takes a second or two.
const USAGE_WAIT: Duration = Duration::from_secs(15);
const MIB: u64 = 1024 * 1024;

async fn agent(rig: &Rig) -> WorkerAgent {
    WorkerAgent::start(WorkerConfig {
        sample_interval: SAMPLE,
        ..rig.config()
    })
    .await
    .unwrap()
}

/// Waits until `ok` holds of a published sample, and returns that sample.
async fn until_usage(
    rx: &mut watch::Receiver<Vec<InstanceUsage>>,
    what: &str,
    mut ok: impl FnMut(&[InstanceUsage]) -> bool,
) -> Vec<InstanceUsage> {
    let found = match tokio::time::timeout(USAGE_WAIT, rx.wait_for(|u| ok(u))).await {
        Ok(Ok(usage)) => Some(usage.clone()),
        Ok(Err(_)) => panic!("the agent ended while waiting for {what}"),
        Err(_) => None,
    };
    found.unwrap_or_else(|| {
        panic!(
            "timed out waiting for {what}; last sample: {:#?}",
            *rx.borrow()
        )
    })
}

fn of<'a>(usage: &'a [InstanceUsage], id: &InstanceId) -> Option<&'a InstanceUsage> {
    usage.iter().find(|u| u.id == *id)
}

/// Waits until a sample shows instance `id` using more than half a core. Any one sample will
/// do: on a loaded machine an interval may fall short.
async fn until_busy(rx: &mut watch::Receiver<Vec<InstanceUsage>>, id: &InstanceId, what: &str) {
    let what = format!("{what} at more than half a core");
    until_usage(rx, &what, |u| of(u, id).is_some_and(|u| u.cpu_cores > 0.5)).await;
}

#[tokio::test]
async fn cpu_is_sampled_for_the_whole_process_group() {
    let rig = Rig::new();
    let agent = agent(&rig).await;
    let mut observed = agent.observed();
    let mut usage = agent.usage();
    let idle_spec = rig.spec(2, 1, "python3 usage.py idle");
    // One burner at a time, so that on a machine of two cores each gets a whole one.
    agent.set_desired(vec![
        rig.spec(0, 1, "python3 usage.py busy"),
        idle_spec.clone(),
    ]);
    let ready = until(&mut observed, "two ready instances", all_ready(2)).await;
    let [busy, idle] = [0, 1].map(|i| ready[i].id.clone());
    until_busy(&mut usage, &busy, "the busy instance").await;

    // The idle one, a few samples on: the first may still hold its interpreter's start-up.
    for _ in 0..3 {
        tokio::time::timeout(USAGE_WAIT, usage.changed())
            .await
            .expect("a new sample")
            .expect("the agent runs");
    }
    let latest = usage.borrow_and_update().clone();
    let sample = of(&latest, &idle).unwrap();
    assert!(sample.cpu_cores < 0.2, "idle instance: {sample:?}");
    assert_eq!(sample.key, idle_spec.key);
    let keys: Vec<_> = latest.iter().map(|u| u.key.worker.index).collect();
    assert_eq!(keys, [0, 2], "sorted by key");

    // The shell forks the burner into the background, then becomes the (idle) server: the
    // group's CPU is the child's.
    agent.set_desired(vec![
        rig.spec(1, 1, "python3 usage.py burn & exec python3 usage.py idle"),
        idle_spec,
    ]);
    let ready = until(
        &mut observed,
        "the forking instance ready, the busy one gone",
        |o| {
            o.len() == 2
                && o.iter()
                    .all(|i| i.state == InstanceState::Ready && i.id != busy)
        },
    )
    .await;
    let forked = ready[0].id.clone();
    until_busy(&mut usage, &forked, "the forked child").await;

    agent.shutdown().await;
}

#[tokio::test]
async fn memory_is_sampled_while_the_instance_runs() {
    let rig = Rig::new();
    let agent = agent(&rig).await;
    agent.set_desired(vec![rig.spec(0, 1, "python3 usage.py hog")]);
    let observed = until(&mut agent.observed(), "a ready instance", all_ready(1)).await;
    let hog = &observed[0];

    let mut usage = agent.usage();
    let before = stamp_model::SystemClock.now().0;
    let latest = until_usage(&mut usage, "the instance's 100 MiB", |u| {
        of(u, &hog.id).is_some_and(|u| u.memory_bytes > 80 * MIB)
    })
    .await;
    let sample = of(&latest, &hog.id).unwrap();
    assert_eq!(sample.key, hog.spec.key);
    assert!(sample.memory_bytes < 1024 * MIB, "{sample:?}");
    assert!(
        sample.at_ms + 60_000 > before,
        "wall-clock time: {sample:?}"
    );

    // Stopped instances leave the samples.
    agent.set_desired(Vec::new());
    until(&mut agent.observed(), "the instance gone", |o| {
        o.iter().all(|i| i.state != InstanceState::Ready)
    })
    .await;
    until_usage(&mut usage, "no samples", |u| u.is_empty()).await;
    agent.shutdown().await;
}
