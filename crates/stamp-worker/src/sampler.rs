//! Samples the CPU and resident memory of every running instance, for the autoscale metrics
//! `CpuPercentage` and `MemoryPercentage`: one task for all instances, on a timer, publishing
//! one [`InstanceUsage`] per starting or ready instance.
//!
//! An instance is its process group (the agent starts each in its own, with the group id equal
//! to the leader's pid, which [`ObservedInstance::pid`] holds), so every process of the group
//! counts, including the children a `sh -c` command forks. CPU is the increase of the group's
//! cumulative CPU counters between two samples over the time between them
//! ([`stamp_model::usage::group_ticks`]); an instance therefore appears from its second sample
//! on. Memory is the group's resident set. Processes that vanish between the listing of the
//! instances and the reading of `/proc` are simply not there: an instance whose group is gone
//! (crashed, stopping) is left out of that sample, with no error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use stamp_model::usage::{InstanceUsage, ProcessCpu, cores, group_ticks};
use stamp_model::{InstanceId, InstanceKey, InstanceState, ObservedInstance, WallClock};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// A floor under the configured interval: zero would make tokio panic, and a tiny one would
/// re-read all of `/proc` in a loop and measure mostly the tick rounding.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

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
}

struct Baseline {
    pgid: i32,
    at: Instant,
    processes: Vec<ProcessCpu>,
}

/// An instance to sample this tick.
struct Target {
    id: InstanceId,
    key: InstanceKey,
    pgid: i32,
}

impl SamplerTask {
    pub fn new(
        observed: watch::Receiver<Vec<ObservedInstance>>,
        usage: watch::Sender<Vec<InstanceUsage>>,
        clock: Arc<dyn WallClock>,
        interval: Duration,
    ) -> SamplerTask {
        SamplerTask {
            observed,
            usage,
            clock,
            interval: interval.max(MIN_INTERVAL),
            system: System::read(),
            baselines: HashMap::new(),
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
        let targets: Vec<Target> = self
            .observed
            .borrow()
            .iter()
            .filter(|o| matches!(o.state, InstanceState::Ready | InstanceState::Starting))
            .filter_map(|o| {
                Some(Target {
                    id: o.id.clone(),
                    key: o.spec.key.clone(),
                    pgid: i32::try_from(o.pid?).ok()?,
                })
            })
            .collect();
        self.baselines
            .retain(|id, b| targets.iter().any(|t| t.id == *id && t.pgid == b.pgid));
        if targets.is_empty() {
            self.usage.send_if_modified(|usage| {
                let modified = !usage.is_empty();
                usage.clear();
                modified
            });
            return;
        }

        let groups: HashSet<i32> = targets.iter().map(|t| t.pgid).collect();
        let scan = tokio::task::spawn_blocking(move || (Instant::now(), scan(&groups))).await;
        let (at, mut found) = match scan {
            Ok(scan) => scan,
            Err(e) => {
                tracing::warn!("failed to sample the instances' CPU and memory: {e}");
                return;
            }
        };
        let at_ms = self.clock.now().0;

        let mut usage = Vec::with_capacity(targets.len());
        for target in targets {
            let Some(group) = found.remove(&target.pgid).filter(|g| g.live) else {
                // Gone between the listing and the reading; it will be reported crashed or
                // stopped, and a restart is a new group with a new baseline.
                self.baselines.remove(&target.id);
                continue;
            };
            let now = Baseline {
                pgid: target.pgid,
                at,
                processes: group.processes,
            };
            let ticks = self
                .baselines
                .get(&target.id)
                .map(|before| (group_ticks(&before.processes, &now.processes), before.at));
            self.baselines.insert(target.id.clone(), now);
            // Seen for the first time: this sample is the start of its first interval.
            let Some((ticks, since)) = ticks else {
                continue;
            };
            usage.push(InstanceUsage {
                id: target.id,
                key: target.key,
                cpu_cores: cores(
                    ticks,
                    self.system.ticks_per_second,
                    at.saturating_duration_since(since),
                ),
                memory_bytes: group.rss_pages.saturating_mul(self.system.page_size),
                at_ms,
            });
        }
        usage.sort_by(|a, b| (&a.key, &a.id).cmp(&(&b.key, &b.id)));
        self.usage.send_replace(usage);
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

/// The processes of one process group at one moment.
#[derive(Debug, Default)]
struct Group {
    processes: Vec<ProcessCpu>,
    rss_pages: u64,
    /// Whether any member is still running (not a zombie waiting to be reaped).
    live: bool,
}

/// Every process of the given process groups, from `/proc/<pid>/stat`. Blocking.
///
/// Cost: a group's members are known only by their pgid (children are not tracked as they fork,
/// and may be reparented), so all of `/proc` is listed and every process's `stat` read once per
/// tick: one open and one small read per process on the machine, about 25 µs each on a small
/// VM, so some 25 ms of one core per tick on a machine running a thousand processes, spent on a
/// blocking thread. Nothing is read while no instance runs.
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
        // A process that exits meanwhile has no stat any more: it is just not counted.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(stat) = Stat::parse(&text) else {
            continue;
        };
        if !groups.contains(&stat.pgrp) {
            continue;
        }
        let group = found.entry(stat.pgrp).or_default();
        group.processes.push(ProcessCpu {
            pid,
            ppid: stat.ppid,
            start: stat.start,
            ticks: stat.ticks,
        });
        group.rss_pages = group.rss_pages.saturating_add(stat.rss_pages);
        group.live |= !stat.zombie;
    }
    found
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
}
