//! What an instance uses of its machine (CPU cores, resident memory), as a worker agent samples it
//! for the autoscale metrics `CpuPercentage` and `MemoryPercentage`, and the arithmetic that turns
//! two snapshots of a process group's cumulative CPU counters into the CPU it used in between.
//!
//! The unit is the instance's process group, not its process: a command may fork (`sh -c`
//! lists, pre-fork servers), and the children's CPU is the instance's CPU. The snapshots are
//! read by the agent (from `/proc/<pid>/stat` on Linux); this module only counts.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::names::InstanceId;
use crate::spec::InstanceKey;

/// One sample of one running instance's resource use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceUsage {
    pub id: InstanceId,
    pub key: InstanceKey,
    /// CPU used over the last sampling interval, in cores: 0.5 is half a core, 2.0 two cores
    /// fully busy. Summed over every process of the instance's process group.
    pub cpu_cores: f64,
    /// Resident memory of the instance's process group, in bytes. Pages shared between the
    /// group's processes (a forked server's copy-on-write pages, shared libraries) count once
    /// per process, so a pre-fork server reads higher than it really uses.
    pub memory_bytes: u64,
    /// Open outbound TCP connections (loopback included), against the SKU's per-instance limit.
    #[serde(default)]
    pub outbound_connections: u32,
    /// Wall-clock time of the sample (Unix ms).
    pub at_ms: u64,
}

/// One process's cumulative CPU counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessCpu {
    pub pid: u32,
    /// The parent at that moment: tells whether the process, once gone, was reaped inside the
    /// group (see [`group_ticks`]).
    pub ppid: u32,
    /// When the process started (any monotonic unit, e.g. clock ticks since boot): with the pid,
    /// tells a reused pid from the process that had it before.
    pub start: u64,
    /// CPU time of the process and of the children it has reaped (`utime + stime + cutime +
    /// cstime`), in clock ticks. Never decreases for one process.
    pub ticks: u64,
}

impl ProcessCpu {
    fn key(&self) -> (u32, u64) {
        (self.pid, self.start)
    }
}

/// Clock ticks a process group used between two snapshots of its processes.
///
/// Every process present in both counts its increase; a process born since `before` counts all
/// its ticks (it ran only since then). A process that ended since `before` was either reaped
/// by another member, and then its whole total reappears in that member's children's time,
/// where it is counted, so what was already counted of it comes off; or it was reaped outside
/// the group (by the agent, by init after its parent died), and then what it used since
/// `before` is lost. Counting children's time is what catches short-lived children (the steps of
/// a shell script) that live and die between two snapshots.
pub fn group_ticks(before: &[ProcessCpu], now: &[ProcessCpu]) -> u64 {
    let previous: HashMap<(u32, u64), &ProcessCpu> = before.iter().map(|p| (p.key(), p)).collect();
    let current: HashSet<(u32, u64)> = now.iter().map(ProcessCpu::key).collect();
    let alive: HashSet<u32> = now.iter().map(|p| p.pid).collect();
    let gone: HashMap<u32, &ProcessCpu> = before
        .iter()
        .filter(|p| !current.contains(&p.key()))
        .map(|p| (p.pid, p))
        .collect();

    let mut total: i128 = 0;
    for p in now {
        let counted = previous.get(&p.key()).map_or(0, |b| b.ticks);
        total += i128::from(p.ticks.saturating_sub(counted));
    }
    for p in gone.values() {
        if reaped_inside(p, &gone, &alive) {
            total -= i128::from(p.ticks);
        }
    }
    // Negative only when a member reaped a child without collecting its time (SIGCHLD
    // ignored): that interval reads low rather than below zero.
    u64::try_from(total.max(0)).unwrap_or(u64::MAX)
}

/// Whether a process gone since the last snapshot was reaped by a live member of the group,
/// directly or through parents that are gone too (whose totals, holding its own, went to a live
/// member in turn).
fn reaped_inside(p: &ProcessCpu, gone: &HashMap<u32, &ProcessCpu>, alive: &HashSet<u32>) -> bool {
    let mut parent = p.ppid;
    // Bounded by the number of gone processes, so a cycle of reused pids cannot loop.
    for _ in 0..=gone.len() {
        if alive.contains(&parent) {
            return true;
        }
        match gone.get(&parent) {
            Some(grandparent) => parent = grandparent.ppid,
            None => return false,
        }
    }
    false
}

/// Cores used: `ticks` of CPU (at `ticks_per_second`) over `elapsed` of wall time. Zero when
/// nothing elapsed or the tick rate is unknown.
pub fn cores(ticks: u64, ticks_per_second: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if ticks_per_second == 0 || seconds <= 0.0 {
        return 0.0;
    }
    ticks as f64 / ticks_per_second as f64 / seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, ticks: u64) -> ProcessCpu {
        ProcessCpu {
            pid,
            ppid,
            start: u64::from(pid) * 10,
            ticks,
        }
    }

    #[track_caller]
    fn check(before: &[ProcessCpu], now: &[ProcessCpu], expected: u64) {
        assert_eq!(group_ticks(before, now), expected);
    }

    #[test]
    fn members_count_their_increase() {
        check(&[p(10, 1, 100)], &[p(10, 1, 150)], 50);
        check(
            &[p(10, 1, 100), p(11, 10, 7)],
            &[p(10, 1, 100), p(11, 10, 27)],
            20,
        );
        check(&[], &[], 0);
    }

    #[test]
    fn a_child_born_since_counts_all_its_ticks() {
        check(&[p(10, 1, 100)], &[p(10, 1, 100), p(11, 10, 30)], 30);
    }

    #[test]
    fn a_child_reaped_by_a_member_is_counted_once() {
        // 11 had used 40 ticks, used 20 more, ended; 10 reaped it: its 60 are in 10's cutime.
        check(&[p(10, 1, 100), p(11, 10, 40)], &[p(10, 1, 160)], 20);
        // A child and grandchild both born and reaped between snapshots show up via cutime.
        check(&[p(10, 1, 100)], &[p(10, 1, 125)], 25);
        // Grandchild 12 reaped by 11, which 10 reaped: 10's cutime holds both totals.
        check(
            &[p(10, 1, 100), p(11, 10, 40), p(12, 11, 5)],
            &[p(10, 1, 100 + 50 + 8)],
            (50 - 40) + (8 - 5),
        );
    }

    #[test]
    fn a_member_reaped_outside_the_group_loses_only_its_last_interval() {
        // The leader 10 is gone (the agent reaped it); its child 11, reparented, still burns.
        check(&[p(10, 1, 100), p(11, 10, 40)], &[p(11, 1, 90)], 50);
    }

    #[test]
    fn a_reused_pid_is_a_new_process() {
        let old = p(11, 10, 500);
        let new = ProcessCpu {
            start: 999,
            ..p(11, 10, 30)
        };
        // 10 reaped the old 11 (500 in its cutime, all counted already), a new 11 used 30.
        check(&[p(10, 1, 100), old], &[p(10, 1, 600), new], 30);
    }

    #[test]
    fn a_child_reaped_without_its_time_reads_zero_not_negative() {
        check(&[p(10, 1, 100), p(11, 10, 400)], &[p(10, 1, 110)], 0);
    }

    #[test]
    fn cores_are_ticks_per_second_of_wall_time() {
        assert_eq!(cores(50, 100, Duration::from_secs(1)), 0.5);
        assert_eq!(cores(400, 100, Duration::from_secs(2)), 2.0);
        assert_eq!(cores(25, 100, Duration::from_millis(500)), 0.5);
        assert_eq!(cores(10, 100, Duration::ZERO), 0.0);
        assert_eq!(cores(10, 0, Duration::from_secs(1)), 0.0);
    }
}
