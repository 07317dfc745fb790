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

#[tokio::test]
async fn cpu_is_sampled_for_the_whole_process_group() {
    let rig = Rig::new();
    let agent = agent(&rig).await;
    agent.set_desired(vec![
        rig.spec(0, 1, "python3 usage.py busy"),
        // The shell forks the burner into the background, then becomes the (idle) server.
        rig.spec(1, 1, "python3 usage.py burn & exec python3 usage.py idle"),
        rig.spec(2, 1, "python3 usage.py idle"),
    ]);
    let observed = until(&mut agent.observed(), "three ready instances", all_ready(3)).await;
    let [busy, forked, idle] = [0, 1, 2].map(|i| observed[i].id.clone());

    // The peak over the samples seen: on a loaded machine one interval may fall short.
    let mut usage = agent.usage();
    let (mut busy_peak, mut forked_peak) = (0.0_f64, 0.0_f64);
    until_usage(
        &mut usage,
        "both busy instances at more than half a core",
        |u| {
            if let Some(u) = of(u, &busy) {
                busy_peak = busy_peak.max(u.cpu_cores);
            }
            if let Some(u) = of(u, &forked) {
                forked_peak = forked_peak.max(u.cpu_cores);
            }
            busy_peak > 0.5 && forked_peak > 0.5
        },
    )
    .await;

    // The idle one, a few samples on: the first may still hold its interpreter's start-up.
    let mut latest = Vec::new();
    for _ in 0..3 {
        usage.mark_unchanged();
        latest = until_usage(&mut usage, "a sample of the idle instance", |u| {
            of(u, &idle).is_some()
        })
        .await;
    }
    let sample = of(&latest, &idle).unwrap();
    assert!(sample.cpu_cores < 0.2, "idle instance: {sample:?}");
    assert_eq!(sample.key, observed[2].spec.key);
    let keys: Vec<_> = latest.iter().map(|u| u.key.worker.index).collect();
    assert!(keys.is_sorted(), "sorted by key: {keys:?}");

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
