//! The worker agent: makes the instances the controller desires run on this machine, and reports
//! what runs.
//!
//! The agent is an IO shell around the pure [`stamp_model::reconcile::reconcile`]: on every change
//! of the desired set or of an instance's state it reconciles and carries out the resulting
//! starts and stops. [`WorkerAgent`] is the handle; [`AgentTask`] owns the loop and the observed
//! state; each instance has its own supervisor task ([`supervisor`]) that runs its process,
//! probes its health check ([`health`]), restarts it after crashes and drains and stops it,
//! reporting every state change back. One more task ([`sampler`]) samples the CPU and memory of
//! every running instance and publishes them ([`WorkerAgent::usage`]).
//!
//! On disk, the agent owns `<dir>/instances/<id>/{app,home,tmp,pgid}`: the unpacked artifact, the
//! instance's `$HOME` and `$TMPDIR`, and its process group id, so the next agent on the same
//! directory can kill what a crashed one left behind ([`leftovers`]).

mod cgroup;
mod conns;
mod health;
mod leftovers;
mod liveness;
mod netlimit;
mod pool;
pub mod priority;
mod process;
mod sampler;
mod sandbox;
mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use stamp_model::reconcile::{Action, reconcile};
use stamp_model::{
    InstanceId, InstanceSpec, InstanceState, ObservedInstance, PoolStatus, PoolTarget, WallClock,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

pub use stamp_model::usage::InstanceUsage;

use crate::supervisor::{StopRequest, Supervisor};

/// Each running instance's control group, shared by the supervisors (which add and remove
/// them) and the sampler (which reads their accounting).
pub(crate) type Groups = Arc<std::sync::Mutex<HashMap<InstanceId, cgroup::InstanceGroup>>>;

/// What a worker agent needs to run instances.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The agent's scratch directory: `instances/<id>/{app,home,tmp}`. Everything in
    /// `instances/` is deleted when the agent starts.
    pub dir: PathBuf,
    /// Where the artifacts named by [`InstanceSpec::artifact`] are.
    pub artifacts: stamp_artifact::BlobStore,
    /// Instance output and platform events go to each app's log.
    pub logs: stamp_logs::LogBook,
    /// The stamp's domain, for `WEBSITE_HOSTNAME = <app>.<domain>`.
    pub domain: String,
    /// Polled (every ~15 ms) before SIGTERM of a draining instance: true once the front end
    /// routes nothing to that address and has nothing in flight to it. Wired to
    /// `Frontend::is_drained`.
    pub drained: Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>,
    /// For [`ObservedInstance::started_at`] and [`InstanceUsage::at_ms`].
    pub clock: Arc<dyn WallClock>,
    /// How often the CPU and memory of running instances are sampled ([`WorkerAgent::usage`]);
    /// [`WorkerConfig::DEFAULT_SAMPLE_INTERVAL`] unless a test wants it faster. Intervals under
    /// 100 ms are taken as 100 ms.
    pub sample_interval: Duration,
}

impl WorkerConfig {
    /// Once a second: the CPU figure is the average over the interval, and a second is fine
    /// enough for autoscale rules that look at minutes.
    pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
}

/// Handle to a running worker agent; cheap to clone. When the last handle is dropped the agent
/// stops every instance (as [`WorkerAgent::shutdown`] does) and ends.
#[derive(Clone)]
pub struct WorkerAgent {
    commands: mpsc::UnboundedSender<Command>,
    observed: watch::Receiver<Vec<ObservedInstance>>,
    usage: watch::Receiver<Vec<InstanceUsage>>,
    pools: watch::Receiver<Vec<PoolStatus>>,
}

enum Command {
    SetDesired(Vec<InstanceSpec>),
    SetPools(Vec<PoolTarget>),
    Shutdown(oneshot::Sender<()>),
}

impl WorkerAgent {
    /// Starts the agent task. First kills leftovers of a previous run that died without cleanup
    /// (process groups recorded in `instances/<id>/pgid` files) and clears `instances/`.
    pub async fn start(config: WorkerConfig) -> anyhow::Result<WorkerAgent> {
        let instances = config.dir.join("instances");
        leftovers::kill(&instances).await;
        // Named after the directory, so the next agent on it finds this one's groups.
        let dir_key = std::fs::canonicalize(&config.dir)
            .unwrap_or_else(|_| config.dir.clone())
            .to_string_lossy()
            .into_owned();
        let agent_name = format!("agent-{:016x}", sandbox::fnv1a(dir_key.as_bytes()));
        let (cgroups, netlimits, lock) = tokio::task::spawn_blocking(move || {
            // Before any group exists, so no other agent takes this one for dead.
            let lock = liveness::claim_patiently(&agent_name, Duration::from_secs(10))?;
            if lock.is_some() {
                for (dead, dead_lock) in liveness::dead_agents(&agent_name) {
                    tracing::info!("removing the groups and rules of dead agent {dead}");
                    let groups = cgroup::Cgroups::detect(&dead);
                    groups.clean_leftovers();
                    groups.remove_all();
                    let rules = netlimit::NetLimits::detect(&dead);
                    rules.clean_leftovers();
                    rules.remove_all();
                    liveness::bury(dead_lock);
                }
            }
            let cgroups = cgroup::Cgroups::detect(&agent_name);
            cgroups.clean_leftovers();
            // On a pure cgroup v2 host a process has one group, the one `cgroup.rs` limits;
            // limiting connections there needs the rule on that group (not done yet).
            let netlimits = if cgroups.describe().starts_with("cgroup v2") {
                netlimit::NetLimits::off(
                    "outbound connection limits are not enforced on pure cgroup v2 hosts yet",
                )
            } else {
                netlimit::NetLimits::detect(&agent_name)
            };
            netlimits.clean_leftovers();
            Ok::<_, std::io::Error>((cgroups, netlimits, lock))
        })
        .await
        .context("detect cgroups")?
        .context("mark this agent alive")?;
        let sandbox = sandbox::Sandbox::detect(std::path::Path::new(&dir_key));
        tracing::info!(
            "worker limits: {}; outbound connection limits: {}; users: {}",
            cgroups.describe(),
            netlimits.describe(),
            sandbox.describe()
        );
        match tokio::fs::remove_dir_all(&instances).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "clear the agent's instances directory {}",
                        instances.display()
                    )
                });
            }
        }
        tokio::fs::create_dir_all(&instances)
            .await
            .with_context(|| format!("create the agent's directory {}", instances.display()))?;
        // Apps' users must be able to reach their own instance directory, and nothing else.
        for dir in [&config.dir, &instances] {
            sandbox::passage(dir)
                .with_context(|| format!("set the permissions of {}", dir.display()))?;
        }

        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (observed_tx, observed) = watch::channel(Vec::new());
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (usage_tx, usage) = watch::channel(Vec::new());
        let (pools_tx, pools) = watch::channel(Vec::new());
        let groups = Groups::default();
        tokio::spawn(
            sampler::SamplerTask::new(
                observed.clone(),
                usage_tx,
                config.clock.clone(),
                config.sample_interval,
                groups.clone(),
                config.logs.clone(),
            )
            .run(),
        );
        let task = AgentTask {
            context: Arc::new(supervisor::Context {
                instances,
                artifacts: config.artifacts,
                logs: config.logs,
                domain: config.domain,
                drained: config.drained,
                clock: config.clock,
                sandbox,
                groups,
                netlimits: netlimits.clone(),
            }),
            pools: pool::Pools::new(cgroups, netlimits),
            _lock: lock,
            pools_tx,
            desired: Vec::new(),
            instances: BTreeMap::new(),
            tasks: HashMap::new(),
            supervisors: JoinSet::new(),
            commands: commands_rx,
            commands_open: true,
            reports_tx,
            reports,
            observed: observed_tx,
            shutdown: None,
        };
        tokio::spawn(task.run());
        Ok(WorkerAgent {
            commands,
            observed,
            usage,
            pools,
        })
    }

    /// Replaces the whole desired set.
    pub fn set_desired(&self, specs: Vec<InstanceSpec>) {
        // A closed channel means the agent was shut down, after which desire is ignored.
        let _ = self.commands.send(Command::SetDesired(specs));
    }

    /// What runs. Every state change is published, sorted by key then id.
    pub fn observed(&self) -> watch::Receiver<Vec<ObservedInstance>> {
        self.observed.clone()
    }

    /// The CPU and memory of every starting or ready instance, one sample per
    /// [`WorkerConfig::sample_interval`], sorted by key then id. An instance appears from its
    /// second sample on (CPU is measured between two), and leaves as soon as its process does.
    pub fn usage(&self) -> watch::Receiver<Vec<InstanceUsage>> {
        self.usage.clone()
    }

    /// How many warm workers of each size to keep ready, replacing the previous targets.
    pub fn set_pools(&self, targets: Vec<PoolTarget>) {
        let _ = self.commands.send(Command::SetPools(targets));
    }

    /// Warm and busy workers per size, updated whenever they change.
    pub fn pools(&self) -> watch::Receiver<Vec<PoolStatus>> {
        self.pools.clone()
    }

    /// Stops every instance (SIGTERM to its process group, SIGKILL after its spec's grace
    /// period), all in parallel, and returns when all have exited. Desired state is ignored
    /// afterwards.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).is_ok() {
            // An error means the agent already finished shutting down.
            let _ = rx.await;
        }
    }
}

/// One instance as the agent sees it.
struct Entry {
    observed: ObservedInstance,
    stop: watch::Sender<StopRequest>,
    /// The sandbox it runs in; released once no instance uses it.
    binding: pool::Binding,
}

/// Owns the agent loop: the desired set, the observed instances and their supervisor tasks.
struct AgentTask {
    context: Arc<supervisor::Context>,
    /// Marks this agent alive for the others (see [`liveness`]) until the task ends.
    _lock: Option<liveness::AgentLock>,
    /// Warm workers and the sandboxes bound to plan workers.
    pools: pool::Pools,
    pools_tx: watch::Sender<Vec<PoolStatus>>,
    desired: Vec<InstanceSpec>,
    instances: BTreeMap<InstanceId, Entry>,
    /// Which instance each supervisor task supervises, to forget it when the task ends.
    tasks: HashMap<tokio::task::Id, InstanceId>,
    /// Owning the tasks means they (and, through their process guards, the processes) end
    /// with the agent task even if it is dropped without a shutdown.
    supervisors: JoinSet<()>,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    reports_tx: mpsc::UnboundedSender<ObservedInstance>,
    reports: mpsc::UnboundedReceiver<ObservedInstance>,
    observed: watch::Sender<Vec<ObservedInstance>>,
    /// Set once shutting down, with whoever waits for it to finish.
    shutdown: Option<Vec<oneshot::Sender<()>>>,
}

impl AgentTask {
    async fn run(mut self) {
        loop {
            tokio::select! {
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(Command::SetDesired(specs)) => self.desired = specs,
                    Some(Command::SetPools(targets)) => self.pools.set_targets(targets),
                    Some(Command::Shutdown(done)) => self.begin_shutdown(Some(done)),
                    None => {
                        self.commands_open = false;
                        self.begin_shutdown(None);
                    }
                },
                Some(report) = self.reports.recv() => self.apply(report),
                Some(joined) = self.supervisors.join_next_with_id() => {
                    let task = match joined {
                        Ok((task, ())) => task,
                        Err(e) => {
                            tracing::error!("an instance supervisor failed: {e}");
                            e.id()
                        }
                    };
                    if let Some(id) = self.tasks.remove(&task) {
                        self.instances.remove(&id);
                    }
                }
            }
            if self.shutdown.is_some() && self.instances.is_empty() {
                self.pools.destroy_all();
            }
            if let Some(waiters) = &mut self.shutdown {
                if self.instances.is_empty() {
                    for done in waiters.drain(..) {
                        let _ = done.send(());
                    }
                    self.publish();
                    if !self.commands_open {
                        return;
                    }
                    // Keep answering shutdown calls (at once) until every handle is gone.
                    self.drain_commands_after_shutdown().await;
                    return;
                }
            } else {
                self.reconcile();
                self.tend_pools();
            }
            self.publish();
        }
    }

    async fn drain_commands_after_shutdown(&mut self) {
        while let Some(command) = self.commands.recv().await {
            if let Command::Shutdown(done) = command {
                let _ = done.send(());
            }
        }
    }

    fn begin_shutdown(&mut self, done: Option<oneshot::Sender<()>>) {
        self.desired.clear();
        for entry in self.instances.values() {
            entry.stop.send_replace(StopRequest::Now);
        }
        self.shutdown.get_or_insert_with(Vec::new).extend(done);
    }

    fn apply(&mut self, report: ObservedInstance) {
        // Reports of instances already gone are stale; the entry is made only by a start.
        let Some(entry) = self.instances.get_mut(&report.id) else {
            return;
        };
        let stop_requested = *entry.stop.borrow() != StopRequest::Run;
        entry.observed = report;
        if stop_requested && !entry.observed.state.is_leaving() {
            // A report sent before the supervisor saw the stop: keep it out of rotation.
            entry.observed.state = InstanceState::Draining;
        }
    }

    fn observed_now(&self) -> Vec<ObservedInstance> {
        let mut all: Vec<ObservedInstance> = self
            .instances
            .values()
            .map(|e| e.observed.clone())
            .collect();
        all.sort_by(|a, b| (&a.spec.key, &a.id).cmp(&(&b.spec.key, &b.id)));
        all
    }

    fn publish(&self) {
        let now = self.observed_now();
        self.observed.send_if_modified(|current| {
            if *current == now {
                false
            } else {
                *current = now;
                true
            }
        });
    }

    fn reconcile(&mut self) {
        for action in reconcile(&self.desired, &self.observed_now()) {
            match action {
                Action::Start(spec) => self.start(*spec),
                Action::Stop(id) => {
                    if let Some(entry) = self.instances.get_mut(&id) {
                        entry.stop.send_replace(StopRequest::Drain);
                        // Published at once so the controller takes it out of the routes.
                        if !entry.observed.state.is_leaving() {
                            entry.observed.state = InstanceState::Draining;
                        }
                    }
                }
            }
        }
    }

    /// Releases sandboxes nothing runs in any more and tops the warm pools up: after the
    /// starts, so a scale-out never waits for a refill.
    fn tend_pools(&mut self) {
        let in_use: std::collections::BTreeSet<pool::Binding> =
            self.instances.values().map(|e| e.binding.clone()).collect();
        self.pools.release_unused(&in_use);
        self.pools.refill();
        let status = self.pools.status();
        self.pools_tx.send_if_modified(|current| {
            let changed = *current != status;
            if changed {
                *current = status;
            }
            changed
        });
    }

    fn start(&mut self, spec: InstanceSpec) {
        let id = loop {
            let id = InstanceId(format!(
                "{}-{}-{}-{:06x}",
                spec.key.app,
                spec.key.process_type,
                spec.key.worker.index,
                rand::random::<u32>() & 0x00ff_ffff
            ));
            if !self.instances.contains_key(&id) {
                break id;
            }
        };
        let taken: std::collections::HashSet<u16> =
            self.instances.values().map(|e| e.observed.port).collect();
        let port = match free_port(&taken) {
            Ok(port) => port,
            Err(e) => {
                // Retried on the next change; a machine out of ports has bigger problems.
                tracing::error!("failed to find a free port for {id}: {e}");
                return;
            }
        };
        let (worker, warm) = match self.pools.acquire(&spec.key.worker, &spec.limits) {
            Ok(w) => w,
            Err(e) => {
                // Retried on the next change.
                tracing::error!(
                    "failed to prepare a {} worker for {id}: {e}",
                    spec.limits.size
                );
                return;
            }
        };
        if warm {
            self.context.logs.slot_event(
                &spec.key.app,
                &[&spec.slot],
                &format!(
                    "worker {} takes warm {} worker {}",
                    spec.key.worker, spec.limits.size, worker.name
                ),
            );
        }
        let binding = (spec.key.worker.clone(), spec.limits.size.clone());
        let observed = ObservedInstance {
            id: id.clone(),
            spec,
            state: InstanceState::Starting,
            pid: None,
            port,
            started_at: self.context.clock.now(),
            restarts: 0,
            healthy: true,
        };
        let (stop, stop_rx) = watch::channel(StopRequest::Run);
        let supervisor = Supervisor::new(
            self.context.clone(),
            observed.clone(),
            worker,
            self.reports_tx.clone(),
            stop_rx,
        );
        // The supervisor spawns the process from a runtime worker thread (never a blocking
        // thread), which PR_SET_PDEATHSIG relies on: see `process::spawn`.
        let handle = self.supervisors.spawn(supervisor.run());
        self.tasks.insert(handle.id(), id.clone());
        self.instances.insert(
            id,
            Entry {
                observed,
                stop,
                binding,
            },
        );
    }
}

/// A port nobody listens on now: bind port 0 on loopback, read it, close.
/// Instance ports come from this range, below Linux's default ephemeral range (32768-60999):
/// outgoing connections (the front end's, the apps') take ephemeral ports, so they never grab
/// the port of an instance that crashed and is about to restart on it.
const INSTANCE_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A port in [`INSTANCE_PORTS`] that no instance of this agent holds (even while crashed and
/// waiting to restart) and that nothing else is bound to now.
fn free_port(taken: &std::collections::HashSet<u16>) -> std::io::Result<u16> {
    let span = INSTANCE_PORTS.end - INSTANCE_PORTS.start;
    let first = rand::random::<u16>() % span;
    for i in 0..span {
        let port = INSTANCE_PORTS.start + (first + i) % span;
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port left in 20000-32767 for a new instance",
    ))
}
