//! One instance's life, from start to stopped: prepare its directory, run its process, wait for
//! it to listen on `$PORT`, probe its health check while it is ready, restart it with backoff
//! when it crashes, and drain and stop it when the agent asks. Every state change is reported to
//! the agent task; every step is an event in the app's log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use stamp_model::{InstanceState, Millis, ObservedInstance, WallClock, backoff};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::health::{self, HealthProbe};
use crate::pool::Worker;
use crate::process::{InstancePaths, Jail, Process, StartError};

/// How often a starting instance's port is tried.
const READY_POLL: Duration = Duration::from_millis(25);
/// The least time a draining instance is given to leave the front end's routes and finish its
/// requests, whatever its grace period.
const MIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the front end is asked whether a draining instance is drained.
const DRAIN_POLL: Duration = Duration::from_millis(15);

/// What the agent shares with every supervisor.
pub(crate) struct Context {
    pub instances: PathBuf,
    pub artifacts: stamp_artifact::BlobStore,
    pub logs: stamp_logs::LogBook,
    pub domain: String,
    pub drained: Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>,
    pub clock: Arc<dyn WallClock>,
    /// Which user each app runs as.
    pub sandbox: crate::sandbox::Sandbox,
    /// Where the sampler finds each instance's control group.
    pub groups: crate::Groups,
    /// Enforces each instance's outbound connection limit, where the host allows.
    pub netlimits: crate::netlimit::NetLimits,
}

/// What the agent wants of a supervised instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopRequest {
    /// Keep it running.
    Run,
    /// Take it out of rotation, wait until it is drained, then stop it.
    Drain,
    /// Stop it without draining (the agent shuts down).
    Now,
}

enum Attempt {
    Crashed { reason: String, ran_for: Millis },
    Stopped,
}

pub(crate) struct Supervisor {
    context: Arc<Context>,
    observed: ObservedInstance,
    paths: InstancePaths,
    reports: mpsc::UnboundedSender<ObservedInstance>,
    stop: watch::Receiver<StopRequest>,
    /// The sandbox of the worker it runs on.
    worker: Arc<Worker>,
    /// The instance's own group under the worker's, and the user it runs as: made with the
    /// directory, once; restarts reuse them.
    jail: Option<Arc<Jail>>,
    /// The instance group's OOM kills already explained.
    ooms_seen: u64,
}

impl Supervisor {
    pub fn new(
        context: Arc<Context>,
        observed: ObservedInstance,
        worker: Arc<Worker>,
        reports: mpsc::UnboundedSender<ObservedInstance>,
        stop: watch::Receiver<StopRequest>,
    ) -> Supervisor {
        let paths = InstancePaths::new(&context.instances.join(&observed.id.0));
        Supervisor {
            context,
            observed,
            paths,
            reports,
            stop,
            worker,
            jail: None,
            ooms_seen: 0,
        }
    }

    pub async fn run(mut self) {
        let mut consecutive = 0;
        loop {
            let Attempt::Crashed { reason, ran_for } = self.attempt().await else {
                break;
            };
            // Whatever escaped the process group (a daemonised child) must not hold the port
            // or the memory into the next attempt.
            if let Some(jail) = self.jail.clone() {
                let _ = tokio::task::spawn_blocking(move || jail.group.kill_all()).await;
            }
            consecutive = backoff::next_consecutive(consecutive, ran_for);
            let delay = backoff::restart_delay(consecutive);
            self.observed.pid = None;
            // The next process is a fresh one, healthy until its own probes say otherwise.
            self.observed.healthy = true;
            self.set_state(InstanceState::Crashed);
            self.event(&format!(
                "{} crashed: {reason}; restarting in {}",
                self.observed.id,
                secs(delay)
            ));
            tokio::select! {
                () = tokio::time::sleep(delay.as_duration()) => {}
                // A crashed instance being stopped just cancels its restart.
                _ = stop_requested(&mut self.stop) => break,
            }
            self.observed.restarts += 1;
        }
        self.observed.pid = None;
        self.context
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.observed.id);
        if let Some(jail) = self.jail.take() {
            // Whatever the app left running in its group goes with it.
            let _ = tokio::task::spawn_blocking(move || {
                jail.group.kill_all();
                jail.group.remove();
                jail.net.remove();
            })
            .await;
        }
        match tokio::fs::remove_dir_all(&self.paths.root).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "failed to remove {} of stopped instance {}: {e}",
                self.paths.root.display(),
                self.observed.id
            ),
        }
        self.event(&format!("{} stopped", self.observed.id));
    }

    /// Runs the process once, until it crashes or is stopped.
    async fn attempt(&mut self) -> Attempt {
        if *self.stop.borrow() != StopRequest::Run {
            return Attempt::Stopped;
        }
        let o = &self.observed;
        let verb = if o.restarts == 0 {
            "starting"
        } else {
            "restarting"
        };
        self.event(&format!(
            "{} {verb} v{} on port {}: {}",
            o.id, o.spec.release, o.port, o.spec.command
        ));
        let mut process = match self.launch().await {
            Ok(process) => process,
            Err(e) => {
                return Attempt::Crashed {
                    reason: e.to_string(),
                    ran_for: Millis::ZERO,
                };
            }
        };
        let started = Instant::now();
        self.observed.pid = Some(process.pid());
        self.observed.started_at = self.context.clock.now();
        self.set_state(InstanceState::Starting);

        let port = self.observed.port;
        let timeout = self.observed.spec.start_timeout;
        let takes_traffic = self.observed.spec.takes_traffic();
        tokio::select! {
            exit = process.wait() => return self.crashed(exit, started),
            () = tokio::time::sleep(timeout.as_duration()) => {
                process.signal(Signal::SIGKILL);
                process.wait().await;
                return Attempt::Crashed {
                    reason: format!(
                        "did not accept connections on port {port} within {}",
                        secs(timeout)
                    ),
                    ran_for: Millis::from(started.elapsed()),
                };
            }
            request = stop_requested(&mut self.stop) => return self.stop(process, request).await,
            // Only web instances listen on $PORT; the others are up once they run (Heroku).
            () = listening(port), if takes_traffic => {}
            () = std::future::ready(()), if !takes_traffic => {}
        }
        self.set_state(InstanceState::Ready);
        if takes_traffic {
            self.event(&format!(
                "{} v{} ready on port {port}",
                self.observed.id, self.observed.spec.release
            ));
        } else {
            self.event(&format!(
                "{} v{} running ({} process, no HTTP traffic)",
                self.observed.id, self.observed.spec.release, self.observed.spec.key.process_type
            ));
        }
        // Probed only while ready: a timer in this loop, nothing at all without a health check.
        let host = format!("{}.{}", self.observed.spec.key.app, self.context.domain);
        let mut health = self
            .observed
            .spec
            .health_check
            .as_ref()
            .map(|check| HealthProbe::new(&self.observed.id.0, check, &host, port));
        loop {
            tokio::select! {
                exit = process.wait() => return self.crashed(exit, started),
                request = stop_requested(&mut self.stop) => {
                    return self.stop(process, request).await;
                }
                change = health::next_change(&mut health) => {
                    self.observed.healthy = change.healthy;
                    self.report();
                    self.event(&change.event);
                }
            }
        }
    }

    /// Prepares the instance's directory and sandbox (once) and spawns its process.
    async fn launch(&mut self) -> Result<Process, StartError> {
        let jail = match &self.jail {
            Some(jail) => jail.clone(),
            None => {
                let paths = self.paths.clone();
                let artifacts = self.context.artifacts.clone();
                let digest = self.observed.spec.artifact.clone();
                let user = self.context.sandbox.user(&self.observed.spec.key.app);
                let worker = self.worker.clone();
                let id = self.observed.id.0.clone();
                let netlimits = self.context.netlimits.clone();
                let outbound = self.observed.spec.limits.outbound_connections;
                let jail = tokio::task::spawn_blocking(move || {
                    crate::process::prepare(&paths, &artifacts, &digest, user)?;
                    let group =
                        worker
                            .group
                            .create_instance(&id)
                            .map_err(|source| StartError::Io {
                                what: "create the control group of",
                                path: paths.root.clone(),
                                source,
                            })?;
                    let net = netlimits.add(&id, outbound).map_err(|source| {
                        // Nothing runs in it yet; the next attempt makes it again.
                        group.remove();
                        StartError::Io {
                            what: "limit the outbound connections of",
                            path: paths.root.clone(),
                            source,
                        }
                    })?;
                    Ok::<_, StartError>(Jail { group, user, net })
                })
                .await
                .map_err(|e| StartError::Internal(e.to_string()))??;
                self.context
                    .groups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(self.observed.id.clone(), jail.group.clone());
                let jail = Arc::new(jail);
                self.jail = Some(jail.clone());
                jail
            }
        };
        // Spawned here, on a runtime worker thread, never inside spawn_blocking: see
        // `process::spawn` on PR_SET_PDEATHSIG.
        let process = Process::spawn(
            &self.observed,
            &self.paths,
            &self.context.domain,
            &self.context.logs,
            &jail,
        )?;
        if let Err(e) = tokio::fs::write(&self.paths.pgid, process.pgid().to_string()).await {
            tracing::warn!(
                "failed to record the process group of {} in {}: {e}",
                self.observed.id,
                self.paths.pgid.display()
            );
        }
        Ok(process)
    }

    /// Drains (unless asked to stop now) and stops a running process.
    async fn stop(&mut self, mut process: Process, request: StopRequest) -> Attempt {
        let id = self.observed.id.clone();
        let grace = self.observed.spec.grace_period;
        if request == StopRequest::Drain {
            self.set_state(InstanceState::Draining);
            self.event(&format!("{id} draining"));
            let addr = SocketAddr::from(([127, 0, 0, 1], self.observed.port));
            let drained = self.context.drained.clone();
            // Bounded by the grace period, but never shorter than MIN_DRAIN: even with a grace
            // period of 0 the front end must first take the instance out of its routes.
            let limit = grace.as_duration().max(MIN_DRAIN);
            tokio::select! {
                () = until_drained(&*drained, addr) => {}
                () = tokio::time::sleep(limit) => {}
                // Shutdown does not wait for drains in progress.
                _ = self.stop.wait_for(|r| *r == StopRequest::Now) => {}
                _ = process.wait() => return Attempt::Stopped,
            }
        }
        self.set_state(InstanceState::Stopping);
        self.event(&format!("{id} stopping (SIGTERM)"));
        process.signal(Signal::SIGTERM);
        if tokio::time::timeout(grace.as_duration(), process.wait())
            .await
            .is_err()
        {
            process.signal(Signal::SIGKILL);
            self.event(&format!(
                "{id} did not exit within {}; sent SIGKILL",
                secs(grace)
            ));
            process.wait().await;
        }
        Attempt::Stopped
    }

    fn set_state(&mut self, state: InstanceState) {
        self.observed.state = state;
        self.report();
    }

    fn report(&self) {
        // An error means the agent is gone, and with it anyone interested.
        let _ = self.reports.send(self.observed.clone());
    }

    /// An event about this instance, in the log of the slot whose configuration it runs.
    fn event(&self, text: &str) {
        let app = &self.observed.spec.key.app;
        tracing::info!(%app, "{text}");
        self.context
            .logs
            .slot_event(app, &[&self.observed.spec.slot], text);
    }
}

impl Supervisor {
    /// A crash, explained: when the kernel's OOM killer took a process of the instance since
    /// the last crash, the reason says it was the worker's memory limit.
    fn crashed(&mut self, exit: String, started: Instant) -> Attempt {
        let ooms = self.jail.as_ref().map_or(0, |j| j.group.oom_kills());
        // The sandbox's own limits: a shared worker's are those of all the plans it hosts.
        let limits = &self.worker.limits;
        let oom = ooms > self.ooms_seen;
        self.ooms_seen = ooms;
        let reason = if oom {
            format!(
                "{exit}: killed for exceeding the worker's memory limit of {} MiB ({} worker); use less memory or a larger SKU",
                limits.memory_mib, limits.size
            )
        } else {
            exit
        };
        Attempt::Crashed {
            reason,
            ran_for: Millis::from(started.elapsed()),
        }
    }
}

/// Resolves once the agent asks for a stop; a vanished agent counts as "stop now".
async fn stop_requested(stop: &mut watch::Receiver<StopRequest>) -> StopRequest {
    match stop.wait_for(|r| *r != StopRequest::Run).await {
        Ok(request) => *request,
        Err(_) => StopRequest::Now,
    }
}

/// Resolves once something accepts TCP connections on 127.0.0.1:`port`. Tried at once, then
/// after 1 ms, doubling to [`READY_POLL`]: a fast app (a few ms to listen) is seen ready within
/// a millisecond or two, and a slow one costs a connect attempt every 25 ms.
async fn listening(port: u16) {
    let mut pause = Duration::from_millis(1);
    loop {
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(READY_POLL);
    }
}

async fn until_drained(drained: &(dyn Fn(SocketAddr) -> bool + Send + Sync), addr: SocketAddr) {
    while !drained(addr) {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// `1 s`, `0.5 s`: durations in events.
pub(crate) fn secs(m: Millis) -> String {
    let (whole, rest) = (m.0 / 1000, m.0 % 1000);
    if rest == 0 {
        format!("{whole} s")
    } else {
        format!("{:.1} s", m.0 as f64 / 1000.0)
    }
}
