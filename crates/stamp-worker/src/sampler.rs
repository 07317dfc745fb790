//! Samples the CPU and resident memory of every running instance, for the autoscale metrics
//! `CpuPercentage` and `MemoryPercentage`: one task for all instances, on a timer, publishing
//! one [`InstanceUsage`] per starting or ready instance.
//!
//! An instance is its process group (the agent starts each in its own, with the group id equal
//! to the leader's pid, which [`ObservedInstance::pid`] holds), so every process of the group
//! counts, including the children a `sh -c` command forks; where the host has control groups,
//! an instance is its control group's members instead (every descendant, whatever its process
//! group), and CPU and memory come from the group's accounting. CPU is the increase of the
//! group's cumulative CPU counters between two samples over the time between them
//! ([`stamp_model::usage::group_ticks`]); an instance therefore appears from its second sample
//! on. Memory is the group's resident set. Processes that vanish between the listing of the
//! instances and the reading of `/proc` are simply not there: an instance whose group is gone
//! (crashed, stopping) is left out of that sample, with no error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use stamp_logs::LogBook;
use stamp_model::usage::{InstanceUsage, ProcessCpu, cores, group_ticks};
use stamp_model::{InstanceId, InstanceKey, InstanceState, ObservedInstance, WallClock};

use crate::Groups;
use crate::cgroup::InstanceGroup;
use crate::conns::{self, SocketTable};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// A floor under the configured interval: zero would make tokio panic, and a tiny one would
/// re-read all of `/proc` in a loop and measure mostly the tick rounding.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How often the host's TCP socket table is read for the outbound-connection counts (in
/// between, each instance keeps its last count). Reading `/proc/net/tcp` and `tcp6` walks the
/// kernel's whole connection hash, several milliseconds of CPU each time on a machine with
/// much memory, whatever the sampling interval; Azure reports the figure per minute.
const SOCKETS_EVERY: Duration = Duration::from_secs(5);

/// Owns the sampling loop. Ends when the agent task does (its observed state closes).
pub(crate) struct SamplerTask {
    observed: watch::Receiver<Vec<ObservedInstance>>,
    usage: watch::Sender<Vec<InstanceUsage>>,
    clock: Arc<dyn WallClock>,
    interval: Duration,
    system: System,
    /// The last sample of each instance's group, the start of its next interval. Keyed by
    /// instance; the pgid tells a restarted process (a new group) from the one sampled.
    baselines: HashMap<InstanceId, Baseline>,
    /// Each instance's control group, when the host has them: CPU and memory then come from
    /// its accounting, which sees every descendant, not only the process group.
    groups: Groups,
    /// Outbound-connection warnings already given, per instance.
    warned: HashMap<InstanceId, Warned>,
    /// Each instance's outbound connections when the socket table was last read (with the
    /// process group counted, so a restart is counted afresh), and when that was.
    outbound: HashMap<InstanceId, (i32, u32)>,
    sockets_read: Option<Instant>,
    logs: LogBook,
}

struct Baseline {
    pgid: i32,
    at: Instant,
    processes: Vec<ProcessCpu>,
    /// The control group's CPU counter at `at`.
    cgroup_cpu_ns: Option<u64>,
}

/// An instance to sample this tick.
struct Target {
    id: InstanceId,
    key: InstanceKey,
    /// The slot whose configuration the instance runs, for its events.
    slot: stamp_model::SlotName,
    pgid: i32,
    port: u16,
    outbound_limit: u32,
    group: Option<InstanceGroup>,
}

/// How close to its outbound-connection limit an instance was last said to be: an event is
/// given when it climbs a level, and the level drops again (re-arming the event) only once the
/// count falls clearly below it, so a count hovering at 80 % does not flood the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Warned {
    Below,
    /// At 80 % of the limit.
    Near,
    /// At the limit.
    At,
}

impl Warned {
    fn next(self, count: u32, limit: u32) -> Warned {
        let percent = u64::from(count) * 100 / u64::from(limit.max(1));
        if percent >= 100 || (self == Warned::At && percent >= 90) {
            Warned::At
        } else if percent >= 80 || (self >= Warned::Near && percent >= 70) {
            Warned::Near
        } else {
            Warned::Below
        }
    }
}

impl SamplerTask {
    pub fn new(
        observed: watch::Receiver<Vec<ObservedInstance>>,
        usage: watch::Sender<Vec<InstanceUsage>>,
        clock: Arc<dyn WallClock>,
        interval: Duration,
        groups: Groups,
        logs: LogBook,
    ) -> SamplerTask {
        SamplerTask {
            observed,
            usage,
            clock,
            interval: interval.max(MIN_INTERVAL),
            system: System::read(),
            baselines: HashMap::new(),
            groups,
            warned: HashMap::new(),
            outbound: HashMap::new(),
            sockets_read: None,
            logs,
        }
    }

    pub async fn run(mut self) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                changed = self.observed.changed() => {
                    if changed.is_err() {
                        // The agent task has ended; nothing runs any more.
                        return;
                    }
                    continue;
                }
            }
            self.sample().await;
        }
    }

    async fn sample(&mut self) {
        let targets: Vec<Target> = {
            let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            self.observed
                .borrow()
                .iter()
                .filter(|o| matches!(o.state, InstanceState::Ready | InstanceState::Starting))
                .filter_map(|o| {
                    Some(Target {
                        id: o.id.clone(),
                        key: o.spec.key.clone(),
                        slot: o.spec.slot.clone(),
                        pgid: i32::try_from(o.pid?).ok()?,
                        port: o.port,
                        outbound_limit: o.spec.limits.outbound_connections,
                        group: groups.get(&o.id).cloned(),
                    })
                })
                .collect()
        };
        self.baselines
            .retain(|id, b| targets.iter().any(|t| t.id == *id && t.pgid == b.pgid));
        self.warned
            .retain(|id, _| targets.iter().any(|t| t.id == *id));
        self.outbound
            .retain(|id, (pgid, _)| targets.iter().any(|t| t.id == *id && t.pgid == *pgid));
        if targets.is_empty() {
            self.usage.send_if_modified(|usage| {
                let modified = !usage.is_empty();
                usage.clear();
                modified
            });
            return;
        }

        let groups: Vec<(i32, Option<InstanceGroup>)> =
            targets.iter().map(|t| (t.pgid, t.group.clone())).collect();
        let ports: Vec<(i32, u16)> = targets.iter().map(|t| (t.pgid, t.port)).collect();
        // Also when an instance (or a restart) has no count yet.
        let read_sockets = self
            .sockets_read
            .is_none_or(|at| at.elapsed() >= SOCKETS_EVERY)
            || targets.iter().any(|t| !self.outbound.contains_key(&t.id));
        let scan = tokio::task::spawn_blocking(move || {
            let at = Instant::now();
            let mut found = read_groups(groups);
            // Connections and accounting of the same moment as the process scan.
            // A table that cannot be read is tried again next round; counts stay as they were.
            let sockets = read_sockets
                .then(|| {
                    SocketTable::read()
                        .inspect_err(|e| tracing::debug!("cannot read the TCP socket table: {e}"))
                        .ok()
                })
                .flatten();
            // Each process's descriptors are listed here too: blocking reads of /proc.
            if let Some(sockets) = &sockets {
                for (pgid, port) in ports {
                    if let Some(g) = found.get_mut(&pgid) {
                        let pids: Vec<u32> = g.processes.iter().map(|p| p.pid).collect();
                        g.outbound = Some(conns::count_outbound(sockets, &pids, &[port]));
                    }
                }
            }
            (at, found, sockets.is_some())
        })
        .await;
        let (at, mut found, sockets_read) = match scan {
            Ok(scan) => scan,
            Err(e) => {
                tracing::warn!("failed to sample the instances' CPU and memory: {e}");
                return;
            }
        };
        let at_ms = self.clock.now().0;
        if sockets_read {
            self.sockets_read = Some(at);
        }

        let mut usage = Vec::with_capacity(targets.len());
        for target in targets {
            let Some(group) = found.remove(&target.pgid).filter(|g| g.live) else {
                // Gone between the listing and the reading; it will be reported crashed or
                // stopped, and a restart is a new group with a new baseline.
                self.baselines.remove(&target.id);
                continue;
            };
            let outbound = match group.outbound {
                Some(count) => {
                    self.outbound
                        .insert(target.id.clone(), (target.pgid, count));
                    self.warn_outbound(&target, count);
                    count
                }
                None => self.outbound.get(&target.id).map_or(0, |&(_, count)| count),
            };
            let now = Baseline {
                pgid: target.pgid,
                at,
                processes: group.processes,
                cgroup_cpu_ns: group.cgroup.map(|u| u.cpu_ns),
            };
            let before = self.baselines.insert(target.id.clone(), now);
            // Seen for the first time: this sample is the start of its first interval.
            let Some(before) = before else {
                continue;
            };
            let now = &self.baselines[&target.id];
            let elapsed = at.saturating_duration_since(before.at);
            let cpu_cores = match (before.cgroup_cpu_ns, now.cgroup_cpu_ns) {
                (Some(b), Some(n)) if !elapsed.is_zero() => {
                    n.saturating_sub(b) as f64 / elapsed.as_nanos() as f64
                }
                _ => cores(
                    group_ticks(&before.processes, &now.processes),
                    self.system.ticks_per_second,
                    elapsed,
                ),
            };
            usage.push(InstanceUsage {
                id: target.id,
                key: target.key,
                cpu_cores,
                memory_bytes: group.cgroup.map_or_else(
                    || group.rss_pages.saturating_mul(self.system.page_size),
                    |u| u.memory_bytes,
                ),
                outbound_connections: outbound,
                at_ms,
            });
        }
        usage.sort_by(|a, b| (&a.key, &a.id).cmp(&(&b.key, &b.id)));
        self.usage.send_replace(usage);
    }

    /// An event in the app's log when an instance reaches 80 % of its outbound-connection
    /// limit, and again at the limit.
    fn warn_outbound(&mut self, target: &Target, count: u32) {
        let limit = target.outbound_limit;
        let before = self
            .warned
            .get(&target.id)
            .copied()
            .unwrap_or(Warned::Below);
        let now = before.next(count, limit);
        self.warned.insert(target.id.clone(), now);
        if now <= before {
            return;
        }
        let text = match now {
            Warned::At => format!(
                "{} has {count} open outbound connections, its limit of {limit}: new connections are refused where the host enforces it; close idle connections or reuse them (a connection pool)",
                target.id
            ),
            _ => format!(
                "{} has {count} open outbound connections, over 80 % of its limit of {limit}",
                target.id
            ),
        };
        tracing::warn!(app = %target.key.app, "{text}");
        self.logs
            .slot_event(&target.key.app, &[&target.slot], &text);
    }
}

/// The units of `/proc/<pid>/stat`.
struct System {
    /// `sysconf(_SC_CLK_TCK)`: the unit of the CPU times.
    ticks_per_second: u64,
    /// The unit of the resident set size.
    page_size: u64,
}

impl System {
    fn read() -> System {
        use nix::unistd::{SysconfVar, sysconf};
        let read = |var, fallback: u64| match sysconf(var) {
            Ok(Some(n)) if n > 0 => n.unsigned_abs(),
            // Linux always answers; these are its usual values.
            _ => fallback,
        };
        System {
            ticks_per_second: read(SysconfVar::CLK_TCK, 100),
            page_size: read(SysconfVar::PAGE_SIZE, 4096),
        }
    }
}

/// The processes of one instance at one moment: its process group, or its control group.
#[derive(Debug, Default)]
struct Group {
    processes: Vec<ProcessCpu>,
    rss_pages: u64,
    /// Whether any member is still running (not a zombie waiting to be reaped).
    live: bool,
    /// The instance's control group accounting, when it has one.
    cgroup: Option<crate::cgroup::Usage>,
    /// Its outbound connections, counted when the socket table was read this round.
    outbound: Option<u32>,
}

/// The processes of each instance (keyed by its process group id), with its control group's
/// accounting when it has one. Blocking.
///
/// An instance with a control group is its members (`cgroup.procs`, which sees every
/// descendant, whatever its process group): only their `stat` files are read. The others are
/// found by [`scan`], which reads every process on the machine, and only when there is any.
fn read_groups(groups: Vec<(i32, Option<InstanceGroup>)>) -> HashMap<i32, Group> {
    let mut found = HashMap::new();
    let mut unknown = HashSet::new();
    for (pgid, cgroup) in groups {
        // No pids: no control group, cgroup.procs unreadable, or every process gone; the scan
        // tells which.
        let pids = cgroup.as_ref().map(InstanceGroup::pids).unwrap_or_default();
        if pids.is_empty() {
            unknown.insert(pgid);
            continue;
        }
        let mut group = Group::default();
        for &pid in &pids {
            if let Some(stat) = Stat::read(pid) {
                group.add(pid, &stat);
            }
        }
        group.cgroup = cgroup.and_then(|c| c.usage());
        found.insert(pgid, group);
    }
    if !unknown.is_empty() {
        found.extend(scan(&unknown));
    }
    found
}

/// Every process of the given process groups, from `/proc/<pid>/stat`. Blocking.
///
/// Cost: a group's members are known only by their pgid (children are not tracked as they fork,
/// and may be reparented), so all of `/proc` is listed and every process's `stat` read once per
/// tick: one open and one small read per process on the machine, about 25 µs each on a small
/// VM, so some 25 ms of one core per tick on a machine running a thousand processes, spent on a
/// blocking thread. Used only for instances without a control group.
fn scan(groups: &HashSet<i32>) -> HashMap<i32, Group> {
    let mut found: HashMap<i32, Group> = HashMap::new();
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in proc.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(stat) = Stat::read(pid) else {
            continue;
        };
        if groups.contains(&stat.pgrp) {
            found.entry(stat.pgrp).or_default().add(pid, &stat);
        }
    }
    found
}

impl Group {
    fn add(&mut self, pid: u32, stat: &Stat) {
        self.processes.push(ProcessCpu {
            pid,
            ppid: stat.ppid,
            start: stat.start,
            ticks: stat.ticks,
        });
        self.rss_pages = self.rss_pages.saturating_add(stat.rss_pages);
        self.live |= !stat.zombie;
    }
}

/// The fields of `/proc/<pid>/stat` the sampler needs.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    zombie: bool,
    ppid: u32,
    pgrp: i32,
    /// utime + stime + cutime + cstime. A zombie still shows its times until it is reaped.
    ticks: u64,
    /// starttime, in clock ticks after boot.
    start: u64,
    rss_pages: u64,
}

impl Stat {
    /// `None` for a process that has exited meanwhile (it is just not counted).
    fn read(pid: u32) -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses `pid (comm) state ppid pgrp ...` (see proc(5)). The command name may hold spaces
    /// and parentheses, so the fields are counted from the last `)`.
    fn parse(text: &str) -> Option<Stat> {
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field n of proc(5) (1-based, pid being 1) is fields[n - 3].
        let field = |n: usize| fields.get(n - 3).copied();
        let number = |n: usize| field(n)?.parse::<u64>().ok();
        // cutime and cstime are signed in the kernel's format, though never negative.
        let signed = |n: usize| Some(field(n)?.parse::<i64>().ok()?.max(0).unsigned_abs());
        let state = field(3)?;
        Some(Stat {
            zombie: matches!(state, "Z" | "X" | "x"),
            ppid: field(4)?.parse().ok()?,
            pgrp: field(5)?.parse().ok()?,
            ticks: number(14)?
                .saturating_add(number(15)?)
                .saturating_add(signed(16)?)
                .saturating_add(signed(17)?),
            start: number(22)?,
            rss_pages: signed(24)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn outbound_warnings_climb_once_and_rearm_below_the_level() {
        use super::Warned::{self, At, Below, Near};
        let walk = |counts: &[u32]| {
            let mut level = Below;
            counts
                .iter()
                .map(|&c| {
                    level = level.next(c, 100);
                    level
                })
                .collect::<Vec<Warned>>()
        };
        assert_eq!(
            walk(&[10, 79, 80, 85, 75, 69, 80, 100, 95, 89, 100]),
            [
                Below, Below, Near, Near, Near, Below, Near, At, At, Near, At
            ]
        );
    }

    use super::*;

    #[test]
    fn stat_lines_are_parsed_from_the_last_parenthesis() {
        let line = "4242 (my (odd) app) S 4200 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 30 7 3 20 0 3 0 987654 123456789 2560 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                zombie: false,
                ppid: 4200,
                pgrp: 4242,
                ticks: 150 + 30 + 7 + 3,
                start: 987654,
                rss_pages: 2560,
            })
        );
        let zombie = "77 (sh) Z 76 70 70 0 -1 4227148 237 0 0 0 46 0 0 0 20 0 1 0 637629 0 0";
        let parsed = Stat::parse(zombie).unwrap();
        assert!(parsed.zombie);
        assert_eq!((parsed.pgrp, parsed.ticks, parsed.rss_pages), (70, 46, 0));
        assert_eq!(Stat::parse("12 (cut short) S 1 12"), None);
        assert_eq!(Stat::parse("garbage"), None);
    }

    #[test]
    fn this_process_is_found_in_its_own_group() {
        let pgid = nix::unistd::getpgrp().as_raw();
        let found = scan(&HashSet::from([pgid]));
        let group = found.get(&pgid).expect("the test's own process group");
        assert!(group.live);
        assert!(group.processes.iter().any(|p| p.pid == std::process::id()));
        // A test binary holds at least a few pages.
        assert!(group.rss_pages > 0);
    }

    #[test]
    fn a_group_without_a_control_group_is_found_by_the_scan() {
        let pgid = nix::unistd::getpgrp().as_raw();
        let found = read_groups(vec![(pgid, None), (i32::MAX, None)]);
        let group = found.get(&pgid).expect("the test's own process group");
        assert!(group.live && group.cgroup.is_none());
        assert!(group.processes.iter().any(|p| p.pid == std::process::id()));
        assert!(!found.contains_key(&i32::MAX), "no such group");
    }

    #[test]
    fn a_control_group_is_its_members_whatever_their_process_group() {
        use crate::cgroup::Limits;
        use crate::cgroup::tests::{TestAgent, spawn_in, wait_until};
        let Some(agent) = TestAgent::new("sampler") else {
            return;
        };
        let limits = Limits {
            millicores: 1000,
            memory_mib: 256,
        };
        let worker = agent.cgroups.create_worker("small-1", &limits).unwrap();
        let instance = worker.create_instance("web").unwrap();
        // A child that leaves for a session (and process group) of its own, and the shell.
        let mut child = spawn_in(&instance, "setsid sleep 30 & exec sleep 30");
        wait_until(
            "both processes in the group",
            Duration::from_secs(5),
            || instance.pids().len() >= 2,
        );
        // The shell is not a group leader: no process has its pid as process group, so only
        // the control group can find them.
        let key = i32::try_from(child.id()).unwrap();
        let found = read_groups(vec![(key, Some(instance.clone()))]);
        let group = found.get(&key).expect("found through its control group");
        let mut pids: Vec<u32> = group.processes.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        assert_eq!(pids, instance.pids());
        assert!(group.live && group.cgroup.is_some() && group.rss_pages > 0);
        let _ = child.kill();
        let _ = child.wait();
    }
}
