//! Enforces each worker's SKU limits (CPU quota = the SKU's cores, memory = the SKU's memory)
//! with Linux cgroups, v2 or v1, whichever the host offers, and accounts each instance's CPU,
//! memory and OOM kills.
//!
//! The layout is `<mount>/stamp/<agent>/<worker>/<instance>` in every hierarchy used. The limits
//! are on the worker group, so the instances placed on one worker share its SKU as they would
//! share a VM; each instance has a child group of its own, so that its usage and its OOM kills
//! are its own and its processes can be listed and killed together. `<agent>` (unique per agent
//! data directory) keeps two agents on one host from cleaning up each other's groups.
//!
//! What the host allows is detected, never assumed: on a host without cgroups, or for an agent
//! that may not write them (not root, a read-only `/sys/fs/cgroup` in a container), every handle
//! is a no-op that enforces nothing, and [`Cgroups::describe`] says why, so the agent still runs
//! instances, unlimited, and the operator can see what to fix.
//!
//! A child joins its instance group itself, between fork and exec ([`join`]): the app's first
//! instruction already runs under the limits, and nothing it forks escapes them.
//!
//! Reads and writes of cgroup files are in-memory kernel operations that do not block, so they
//! are plain synchronous calls, fine on a runtime thread. The two calls that wait for the kernel
//! to empty a group, [`Cgroups::clean_leftovers`] and [`InstanceGroup::remove`], block (bounded)
//! and belong in `spawn_blocking`.

use std::collections::HashSet;
use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, open};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode as FileMode;
use nix::unistd::Pid;

pub(crate) const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The directory under each hierarchy's mount that holds every agent's groups.
pub(crate) const STAMP_DIR: &str = "stamp";

/// The CFS period; the quota is `millicores` per mille of it.
const CFS_PERIOD_US: u64 = 100_000;

/// The kernel refuses quotas under 1 ms per period.
const MIN_CFS_QUOTA_US: u64 = 1_000;

/// The controllers a cgroup v2 hierarchy must offer, and that each level hands to the next.
const V2_CONTROLLERS: [&str; 2] = ["cpu", "memory"];

/// How long [`Cgroups::clean_leftovers`] waits for killed processes to leave their groups.
/// SIGKILLed processes exit in milliseconds unless stuck in the kernel (uninterruptible IO).
pub(crate) const EMPTY_WAIT: Duration = Duration::from_secs(5);

/// How long a `remove` retries while the kernel finishes taking exited processes out.
pub(crate) const REMOVE_WAIT: Duration = Duration::from_secs(2);

pub(crate) const POLL: Duration = Duration::from_millis(10);

/// Rounds of "list, SIGKILL the new ones" in a v1 kill: a process may fork between the listing
/// and its kill, so listing again catches the children; a fork bomb gets this many rounds.
const KILL_PASSES: usize = 64;

/// A worker's SKU, as enforced on its group. Zero means no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// CPU time per wall-clock time, in thousandths of a core: 1000 is one core.
    pub millicores: u32,
    pub memory_mib: u32,
}

impl Limits {
    /// The CFS quota per [`CFS_PERIOD_US`], or `None` for no limit.
    fn cfs_quota_us(&self) -> Option<u64> {
        (self.millicores > 0)
            .then(|| (u64::from(self.millicores) * CFS_PERIOD_US / 1000).max(MIN_CFS_QUOTA_US))
    }

    fn memory_bytes(&self) -> Option<u64> {
        (self.memory_mib > 0).then(|| u64::from(self.memory_mib) << 20)
    }
}

/// What a group (and everything below it) has used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Usage {
    /// CPU time since the group was made, all cores together.
    pub cpu_ns: u64,
    /// The working set: memory charged to the group minus the inactive file cache, which the
    /// kernel reclaims before it would OOM-kill anything (what `docker stats` and the kubelet
    /// report, and what the limit effectively applies to).
    pub memory_bytes: u64,
}

/// The host's cgroups as this agent uses them; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Cgroups(Mode);

#[derive(Debug, Clone)]
enum Mode {
    On(Arc<Layout>),
    Off(Arc<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Where this agent's groups are, in every hierarchy used.
#[derive(Debug)]
struct Layout {
    version: Version,
    /// One per hierarchy (co-mounted v1 controllers share one; v2 has exactly one).
    hierarchies: Vec<Hierarchy>,
    /// Which of `hierarchies` has each controller.
    cpu: usize,
    cpuacct: usize,
    memory: usize,
    /// For [`Cgroups::describe`].
    summary: String,
}

#[derive(Debug)]
struct Hierarchy {
    /// `<mount>/stamp/<agent>`.
    dir: PathBuf,
    /// The controllers this agent uses in it, e.g. `cpu,cpuacct`.
    controllers: String,
}

impl Cgroups {
    /// Finds the cgroups this agent can use, from `/proc/self/mountinfo`, and creates
    /// `<mount>/stamp/<agent>` in each hierarchy.
    ///
    /// Prefers a cgroup v2 mount whose `cgroup.controllers` has `cpu` and `memory` (enabling
    /// them in `cgroup.subtree_control` on the way down); else the v1 mounts of `cpu`,
    /// `cpuacct` (possibly co-mounted as `cpu,cpuacct`) and `memory`, and of `pids` if there
    /// is one. When none can be used, or the groups cannot be created, the result enforces
    /// nothing and [`Cgroups::describe`] says why.
    pub fn detect(agent: &str) -> Cgroups {
        if let Err(e) = check_name("agent", agent) {
            return Cgroups::disabled(&e.to_string());
        }
        match fs::read_to_string(MOUNTINFO) {
            Ok(text) => Cgroups::detect_in(&parse_mountinfo(&text), agent),
            Err(e) => Cgroups::disabled(&format!("could not read {MOUNTINFO}: {e}")),
        }
    }

    fn detect_in(mounts: &[Mount], agent: &str) -> Cgroups {
        let mut why = Vec::new();
        for mount in preferred(mounts.iter().filter(|m| m.fstype == "cgroup2")) {
            let controllers = match fs::read_to_string(mount.point.join("cgroup.controllers")) {
                Ok(text) => text,
                Err(e) => {
                    why.push(format!(
                        "could not read the controllers of the cgroup v2 mount {}: {e}",
                        mount.point.display()
                    ));
                    continue;
                }
            };
            let missing: Vec<&str> = V2_CONTROLLERS
                .into_iter()
                .filter(|c| !controllers.split_whitespace().any(|have| have == *c))
                .collect();
            if !missing.is_empty() {
                why.push(format!(
                    "the cgroup v2 mount {} lacks the {} controller{} (bound to cgroup v1?)",
                    mount.point.display(),
                    missing.join(" and "),
                    if missing.len() > 1 { "s" } else { "" }
                ));
                continue;
            }
            match setup_v2(&mount.point, agent) {
                Ok(layout) => return Cgroups(Mode::On(Arc::new(layout))),
                Err(e) => why.push(format!(
                    "cannot use cgroup v2 at {}: {}",
                    mount.point.display(),
                    with_hint(&e)
                )),
            }
        }
        match find_v1(mounts) {
            Ok(v1) => match setup_v1(&v1, agent) {
                Ok(layout) => return Cgroups(Mode::On(Arc::new(layout))),
                Err(e) => why.push(format!("cannot use cgroup v1: {}", with_hint(&e))),
            },
            Err(missing) => {
                if mounts.iter().any(|m| m.fstype == "cgroup") {
                    why.push(format!("no cgroup v1 mount of {missing}"));
                }
            }
        }
        if why.is_empty() {
            why.push("no cgroup file system is mounted".into());
        }
        Cgroups::disabled(&why.join("; "))
    }

    /// Cgroups that enforce nothing, for tests and for an operator's explicit opt-out.
    pub fn disabled(reason: &str) -> Cgroups {
        Cgroups(Mode::Off(reason.into()))
    }

    /// For the agent's start-up log: `cgroup v1 (cpu, cpuacct, memory, pids)`,
    /// `cgroup v2 at /sys/fs/cgroup (cpu, memory)` or `off: <why>`.
    pub fn describe(&self) -> String {
        match &self.0 {
            Mode::On(layout) => layout.summary.clone(),
            Mode::Off(reason) => format!("off: {reason}"),
        }
    }

    #[cfg(test)]
    pub fn enabled(&self) -> bool {
        matches!(self.0, Mode::On(_))
    }

    /// Kills every process left in this agent's groups by a previous run that died without
    /// cleaning up (SIGKILL, then waits, bounded, until the groups are empty) and removes the
    /// groups. Called at agent start, before any instance runs.
    ///
    /// Blocks up to [`EMPTY_WAIT`] + [`REMOVE_WAIT`] for processes stuck in the kernel;
    /// milliseconds otherwise.
    pub fn clean_leftovers(&self) {
        let Mode::On(layout) = &self.0 else {
            return;
        };
        // Children before parents, so that they can be removed in this order.
        let groups: Vec<PathBuf> = layout
            .hierarchies
            .iter()
            .flat_map(|h| descendants(&h.dir))
            .collect();
        if groups.is_empty() {
            return;
        }
        let deadline = Instant::now() + EMPTY_WAIT;
        let mut reported = false;
        loop {
            let mut left = HashSet::new();
            for dir in &groups {
                let pids = read_pids(dir);
                if pids.is_empty() {
                    continue;
                }
                left.extend(pids);
                if !reported {
                    tracing::info!(
                        "killing processes a previous run left in the cgroup {}",
                        dir.display()
                    );
                }
                // Every round, for what was forked since the last one.
                kill_in(dir, layout.version);
            }
            reported = true;
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "{} processes left by a previous run are still in this agent's cgroups \
                     {:.1?} after SIGKILL (stuck in the kernel?); their groups stay",
                    left.len(),
                    EMPTY_WAIT
                );
                break;
            }
            pause(POLL);
        }
        remove_dirs(&groups);
    }

    /// Removes every group of this agent, its own `<mount>/stamp/<agent>` last; best effort,
    /// one try each, without killing or blocking. For a clean shutdown, once every instance has
    /// stopped: the groups are empty then, and an agent whose directory was temporary (tests)
    /// leaves nothing behind. A group that still has processes stays, with a warning.
    pub fn remove_all(&self) {
        let Mode::On(layout) = &self.0 else {
            return;
        };
        for hierarchy in &layout.hierarchies {
            remove_dirs_once(
                descendants(&hierarchy.dir)
                    .into_iter()
                    .chain([hierarchy.dir.clone()]),
            );
        }
    }

    /// Makes the group of worker `name` (e.g. `small-3`) and sets its limits. A group left from
    /// before is reused with the new limits. Disabled cgroups give a no-op group.
    pub fn create_worker(&self, name: &str, limits: &Limits) -> io::Result<WorkerGroup> {
        check_name("worker", name)?;
        let Mode::On(layout) = &self.0 else {
            return Ok(WorkerGroup { group: None });
        };
        let group = Group {
            layout: layout.clone(),
            rel: PathBuf::from(name),
        };
        let made = group.make().and_then(|()| match layout.version {
            Version::V1 => limit_v1(&group, limits),
            Version::V2 => limit_v2(&group, limits),
        });
        if let Err(e) = made {
            group.rmdir_once();
            return Err(e);
        }
        Ok(WorkerGroup { group: Some(group) })
    }
}

/// A worker's group, which holds its limits and one child group per instance.
#[derive(Debug, Clone)]
pub(crate) struct WorkerGroup {
    /// `None` when cgroups are disabled.
    group: Option<Group>,
}

impl WorkerGroup {
    /// Makes the group of instance `id` under the worker's (reused if left from before).
    pub fn create_instance(&self, id: &str) -> io::Result<InstanceGroup> {
        check_name("instance", id)?;
        let Some(worker) = &self.group else {
            return Ok(InstanceGroup {
                group: None,
                join: Vec::new(),
            });
        };
        let group = worker.child(id);
        let join = group
            .dirs()
            .iter()
            .map(|dir| path_cstring(&dir.join("cgroup.procs")))
            .collect::<io::Result<Vec<_>>>()?;
        if let Err(e) = group.make() {
            group.rmdir_once();
            return Err(e);
        }
        Ok(InstanceGroup {
            group: Some(group),
            join,
        })
    }

    /// What all of the worker's instances use together. `None` when disabled or unreadable.
    #[cfg(test)]
    pub fn usage(&self) -> Option<Usage> {
        self.group.as_ref()?.usage()
    }

    /// Removes the group, and any instance groups left in it empty; best effort, one try,
    /// without blocking (a warning in the log if it cannot). Call it once its instances'
    /// processes are gone: a group left behind is removed by the next agent's
    /// [`Cgroups::clean_leftovers`].
    pub fn remove(&self) {
        if let Some(group) = &self.group {
            for dir in group.dirs() {
                remove_dirs_once(descendants(&dir).into_iter().chain([dir]));
            }
        }
    }
}

/// An instance's group, under its worker's.
#[derive(Debug, Clone)]
pub(crate) struct InstanceGroup {
    /// `None` when cgroups are disabled.
    group: Option<Group>,
    /// `cgroup.procs` of the group in every hierarchy, for [`join`].
    join: Vec<CString>,
}

impl InstanceGroup {
    /// The files a child writes `0` into to join the group, one per hierarchy (v1) or one (v2);
    /// none when cgroups are disabled. Pass them to [`join`] in `pre_exec`.
    pub fn join_files(&self) -> Vec<CString> {
        self.join.clone()
    }

    /// What the instance's processes use. `None` when disabled or unreadable.
    pub fn usage(&self) -> Option<Usage> {
        self.group.as_ref()?.usage()
    }

    /// The processes in the group, sorted.
    pub fn pids(&self) -> Vec<u32> {
        self.group.as_ref().map(Group::pids).unwrap_or_default()
    }

    /// How many processes of this instance the kernel's OOM killer has killed; 0 when unknown.
    ///
    /// Found on this kernel (6.18, cgroup v1) with a process in `w/i` and the limit on `w`:
    /// the kill counts in `i`'s `memory.oom_control` (`oom_kill 1`) and not in `w`'s (`oom_kill
    /// 0`), although `w` is the group that ran out (the kernel log says `oom_memcg=/…/w,
    /// task_memcg=/…/w/i`). The kernel counts an OOM kill in the victim's memcg; cgroup v1 stops
    /// there, while v2's `memory.events` also adds it to every ancestor (`memory.events.local`
    /// does not). Either way the instance's own group is the one to read.
    pub fn oom_kills(&self) -> u64 {
        let Some(group) = &self.group else {
            return 0;
        };
        let memory = group.dir(group.layout.memory);
        let file = match group.layout.version {
            Version::V1 => memory.join("memory.oom_control"),
            Version::V2 => memory.join("memory.events"),
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|text| stat_value(&text, "oom_kill"))
            .unwrap_or(0)
    }

    /// SIGKILLs every process in the group (v2: through `cgroup.kill`, which no fork escapes).
    pub fn kill_all(&self) {
        let Some(group) = &self.group else {
            return;
        };
        if group.layout.version == Version::V2 && kill_by_cgroup_kill(&group.dir(0)) {
            return;
        }
        // Every hierarchy's listing, in case a process joined some and not others.
        kill_listed(&group.dir(0), || group.pids());
    }

    /// Removes the group, best effort, retrying (blocking, up to [`REMOVE_WAIT`]) while the
    /// kernel takes the last killed processes out. Call it after [`InstanceGroup::kill_all`] or
    /// once the processes exited.
    pub fn remove(&self) {
        if let Some(group) = &self.group {
            remove_dirs(&group.dirs());
        }
    }
}

/// Joins the calling process to the groups whose `cgroup.procs` are `files`
/// ([`InstanceGroup::join_files`]). Meant for `pre_exec`, so it is async-signal-safe: it only
/// opens, writes and closes the precomputed paths, and allocates nothing.
pub(crate) fn join(files: &[CString]) -> io::Result<()> {
    for file in files {
        let fd = open(
            file.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            FileMode::empty(),
        )?;
        // "0" is the writer itself.
        nix::unistd::write(&fd, b"0")?;
    }
    Ok(())
}

/// One group in every hierarchy of a layout: `<hierarchy dir>/<rel>`.
#[derive(Debug, Clone)]
struct Group {
    layout: Arc<Layout>,
    rel: PathBuf,
}

impl Group {
    fn dir(&self, hierarchy: usize) -> PathBuf {
        self.layout.hierarchies[hierarchy].dir.join(&self.rel)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        (0..self.layout.hierarchies.len())
            .map(|i| self.dir(i))
            .collect()
    }

    fn child(&self, name: &str) -> Group {
        Group {
            layout: self.layout.clone(),
            rel: self.rel.join(name),
        }
    }

    fn make(&self) -> io::Result<()> {
        self.dirs().iter().try_for_each(|dir| make_dir(dir))
    }

    /// Undoes a half-made group; it has no processes, so one try is enough.
    fn rmdir_once(&self) {
        for dir in self.dirs() {
            let _ = fs::remove_dir(dir);
        }
    }

    fn usage(&self) -> Option<Usage> {
        let layout = &self.layout;
        let memory = self.dir(layout.memory);
        let (cpu_ns, charged, stat_key) = match layout.version {
            Version::V1 => (
                read_u64(&self.dir(layout.cpuacct).join("cpuacct.usage"))?,
                read_u64(&memory.join("memory.usage_in_bytes"))?,
                // `total_` is the group with its descendants, as `usage_in_bytes` is.
                "total_inactive_file",
            ),
            Version::V2 => (
                stat_value(
                    &fs::read_to_string(self.dir(layout.cpu).join("cpu.stat")).ok()?,
                    "usage_usec",
                )?
                .saturating_mul(1000),
                read_u64(&memory.join("memory.current"))?,
                "inactive_file",
            ),
        };
        let inactive = fs::read_to_string(memory.join("memory.stat"))
            .ok()
            .and_then(|text| stat_value(&text, stat_key))
            .unwrap_or(0);
        Some(Usage {
            cpu_ns,
            memory_bytes: charged.saturating_sub(inactive),
        })
    }

    /// The processes in the group in any hierarchy (they should be the same in all).
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.dirs().iter().flat_map(|d| read_pids(d)).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// Most processes (and threads) a worker's instances may have together: plenty for any web
/// server, and a fork bomb in one app cannot take the host's pid space from the others.
pub(crate) const WORKER_PIDS_MAX: u32 = 4096;

/// `pids.max` on the worker, wherever the pids controller is (v1 hierarchy, or v2 when
/// enabled).
fn limit_pids(group: &Group) -> io::Result<()> {
    for i in 0..group.layout.hierarchies.len() {
        let file = group.dir(i).join("pids.max");
        if file.exists() {
            write(&file, &WORKER_PIDS_MAX.to_string())?;
        }
    }
    Ok(())
}

/// v1: CFS period and quota on `cpu`; the memory limit, and the same memory+swap limit when
/// swap is accounted, so that swap cannot stretch the limit.
fn limit_v1(group: &Group, limits: &Limits) -> io::Result<()> {
    let layout = &group.layout;
    let cpu = group.dir(layout.cpu);
    write(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
    write(
        &cpu.join("cpu.cfs_quota_us"),
        &limits
            .cfs_quota_us()
            .map_or_else(|| "-1".to_string(), |q| q.to_string()),
    )?;

    let memory = group.dir(layout.memory);
    let limit = memory.join("memory.limit_in_bytes");
    let memsw = memory.join("memory.memsw.limit_in_bytes");
    let bytes = limits.memory_bytes();
    let value = bytes.map_or_else(|| "-1".to_string(), |b| b.to_string());
    // The kernel keeps memsw >= memory, refusing any write that would break it: a lower limit
    // goes on memory first, a higher one on memsw first. A new group is unlimited in both.
    let raising = bytes.unwrap_or(u64::MAX) >= read_u64(&limit).unwrap_or(u64::MAX);
    let swap_accounted = memsw.exists();
    if swap_accounted && raising {
        write(&memsw, &value)?;
    }
    write(&limit, &value)?;
    if swap_accounted && !raising {
        write(&memsw, &value)?;
    }
    limit_pids(group)
}

/// v2: `cpu.max`, `memory.max`, no swap when memory is limited; and the controllers handed on
/// to the instance groups, for their own `memory.current` and `memory.events`.
fn limit_v2(group: &Group, limits: &Limits) -> io::Result<()> {
    let dir = group.dir(0);
    let quota = limits
        .cfs_quota_us()
        .map_or_else(|| "max".to_string(), |q| q.to_string());
    write(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
    let bytes = limits.memory_bytes();
    write(
        &dir.join("memory.max"),
        &bytes.map_or_else(|| "max".to_string(), |b| b.to_string()),
    )?;
    let swap = dir.join("memory.swap.max");
    if swap.exists() {
        write(&swap, if bytes.is_some() { "0" } else { "max" })?;
    }
    limit_pids(group)?;
    enable_v2_controllers(&dir)
}

fn setup_v2(mount: &Path, agent: &str) -> io::Result<Layout> {
    let stamp = mount.join(STAMP_DIR);
    let dir = stamp.join(agent);
    enable_v2_controllers(mount)?;
    make_dir(&stamp)?;
    enable_v2_controllers(&stamp)?;
    make_dir(&dir)?;
    enable_v2_controllers(&dir)?;
    let controllers = V2_CONTROLLERS.join(", ");
    Ok(Layout {
        version: Version::V2,
        summary: format!("cgroup v2 at {} ({controllers})", mount.display()),
        hierarchies: vec![Hierarchy { dir, controllers }],
        cpu: 0,
        cpuacct: 0,
        memory: 0,
    })
}

/// Hands `cpu` and `memory` to the child groups of `dir`, writing only what is missing (a
/// parent we do not own may have them on already and refuse our write).
fn enable_v2_controllers(dir: &Path) -> io::Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let current =
        fs::read_to_string(&path).map_err(|e| context(e, format!("read {}", path.display())))?;
    let missing: Vec<String> = V2_CONTROLLERS
        .into_iter()
        .filter(|c| !current.split_whitespace().any(|have| have == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&path, &missing.join(" "))
}

fn setup_v1(mounts: &V1Mounts<'_>, agent: &str) -> io::Result<Layout> {
    let mut hierarchies: Vec<(PathBuf, Vec<&str>)> = Vec::new();
    let mut place = |mount: &Mount, controller: &'static str| -> usize {
        if let Some(i) = hierarchies.iter().position(|(p, _)| *p == mount.point) {
            hierarchies[i].1.push(controller);
            i
        } else {
            hierarchies.push((mount.point.clone(), vec![controller]));
            hierarchies.len() - 1
        }
    };
    let cpu = place(mounts.cpu, "cpu");
    let cpuacct = place(mounts.cpuacct, "cpuacct");
    let memory = place(mounts.memory, "memory");
    if let Some(pids) = mounts.pids {
        place(pids, "pids");
    }
    let hierarchies: Vec<Hierarchy> = hierarchies
        .into_iter()
        .map(|(point, controllers)| Hierarchy {
            dir: point.join(STAMP_DIR).join(agent),
            controllers: controllers.join(","),
        })
        .collect();
    for hierarchy in &hierarchies {
        make_dir(&hierarchy.dir)?;
    }
    let summary = format!(
        "cgroup v1 ({})",
        hierarchies
            .iter()
            .map(|h| h.controllers.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Layout {
        version: Version::V1,
        hierarchies,
        cpu,
        cpuacct,
        memory,
        summary,
    })
}

/// One line of `/proc/self/mountinfo`, what detection needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    fstype: String,
    read_only: bool,
    /// For cgroup v1, these name the mount's controllers (`rw,cpu,cpuacct`).
    super_options: Vec<String>,
}

impl Mount {
    fn has(&self, option: &str) -> bool {
        self.super_options.iter().any(|o| o == option)
    }
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mount).collect()
}

/// `36 35 98:0 /root /mnt rw,noatime master:1 - ext3 /dev/root rw,errors=continue`: the mount
/// point is the 5th field, its options the 6th; after the optional fields and `-` come the
/// file system type, the source and the super block options.
fn parse_mount(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = 6 + fields.get(6..)?.iter().position(|f| *f == "-")?;
    Some(Mount {
        point: unescape(fields.get(4)?),
        read_only: fields.get(5)?.split(',').any(|o| o == "ro"),
        fstype: (*fields.get(separator + 1)?).to_string(),
        super_options: fields
            .get(separator + 3)
            .map(|o| o.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

/// The kernel writes a space, tab, newline or backslash in a path as `\ooo` (octal).
pub(crate) fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)) && d[0] <= b'3');
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The v1 mounts to use for each controller.
#[derive(Debug)]
struct V1Mounts<'a> {
    cpu: &'a Mount,
    cpuacct: &'a Mount,
    memory: &'a Mount,
    pids: Option<&'a Mount>,
}

/// The v1 mount of each controller (a read-write one if there is one), or the names of those
/// with none.
fn find_v1(mounts: &[Mount]) -> Result<V1Mounts<'_>, String> {
    let find = |controller: &str| {
        preferred(
            mounts
                .iter()
                .filter(|m| m.fstype == "cgroup" && m.has(controller)),
        )
        .into_iter()
        .next()
    };
    match (find("cpu"), find("cpuacct"), find("memory")) {
        (Some(cpu), Some(cpuacct), Some(memory)) => Ok(V1Mounts {
            cpu,
            cpuacct,
            memory,
            pids: find("pids"),
        }),
        (cpu, cpuacct, memory) => Err([
            ("cpu", cpu.is_none()),
            ("cpuacct", cpuacct.is_none()),
            ("memory", memory.is_none()),
        ]
        .into_iter()
        .filter(|(_, missing)| *missing)
        .map(|(name, _)| name)
        .collect::<Vec<_>>()
        .join(", ")),
    }
}

/// Read-write mounts first, in mountinfo order otherwise.
fn preferred<'a>(mounts: impl Iterator<Item = &'a Mount>) -> Vec<&'a Mount> {
    let mut mounts: Vec<&Mount> = mounts.collect();
    mounts.sort_by_key(|m| m.read_only);
    mounts
}

/// A name becomes one directory in cgroupfs: one non-empty path component.
fn check_name(what: &str, name: &str) -> io::Result<()> {
    let fine = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0', '\n']);
    if fine {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the {what} name {name:?} cannot name a cgroup: it must be a non-empty file name \
                 without '/'"
            ),
        ))
    }
}

/// Kills every process in one group (and, on v2, below it).
fn kill_in(dir: &Path, version: Version) {
    if version == Version::V2 && kill_by_cgroup_kill(dir) {
        return;
    }
    kill_listed(dir, || read_pids(dir));
}

/// v2's `cgroup.kill` (Linux 5.14+) kills the group and its descendants at once, forks
/// included. False if the kernel has none, or refused.
pub(crate) fn kill_by_cgroup_kill(dir: &Path) -> bool {
    let kill_file = dir.join("cgroup.kill");
    kill_file.exists() && write(&kill_file, "1").is_ok()
}

/// SIGKILLs each pid `list` gives, listing again for what they forked meanwhile, until a
/// listing has nothing new. `dir` is for the log.
pub(crate) fn kill_listed(dir: &Path, list: impl Fn() -> Vec<u32>) {
    let me = std::process::id();
    let mut killed = HashSet::new();
    for _ in 0..KILL_PASSES {
        let fresh: Vec<u32> = list()
            .into_iter()
            .filter(|pid| *pid != me && !killed.contains(pid))
            .collect();
        if fresh.is_empty() {
            return;
        }
        for pid in fresh {
            killed.insert(pid);
            if let Ok(raw) = i32::try_from(pid) {
                // ESRCH: it exited since the listing.
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
    }
    tracing::warn!(
        "processes in the cgroup {} keep forking through {KILL_PASSES} rounds of SIGKILL",
        dir.display()
    );
}

/// The pids in a group's `cgroup.procs`; none if it cannot be read.
pub(crate) fn read_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| parse_pids(&text))
        .unwrap_or_default()
}

/// A process outside the reader's pid namespace is listed as 0, and `kill(0, ..)` would signal
/// our own process group: 0 is never a pid here.
fn parse_pids(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|line| line.trim().parse().ok())
        .filter(|pid| *pid != 0)
        .collect()
}

/// Every directory below `dir` (not `dir` itself), children before their parents.
pub(crate) fn descendants(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = entry.path();
            out.extend(descendants(&path));
            out.push(path);
        }
    }
    out
}

/// Removes groups (children first), retrying for [`REMOVE_WAIT`] in all while one is busy.
pub(crate) fn remove_dirs(dirs: &[PathBuf]) {
    let deadline = Instant::now() + REMOVE_WAIT;
    for dir in dirs {
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    pause(POLL);
                }
                Err(e) => {
                    tracing::warn!("failed to remove the cgroup {}: {e}", dir.display());
                    break;
                }
            }
        }
    }
}

/// Waits for the kernel (a group to empty, a killed process to leave it). Not time-based logic
/// to test with paused time: the callers run on blocking threads, without a runtime to await.
#[expect(
    clippy::disallowed_methods,
    reason = "a bounded wait for the kernel on a blocking thread, not time-based logic"
)]
pub(crate) fn pause(duration: Duration) {
    std::thread::sleep(duration);
}

/// Removes groups in the order given (children first), one try each.
fn remove_dirs_once(dirs: impl IntoIterator<Item = PathBuf>) {
    for dir in dirs {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("failed to remove the cgroup {}: {e}", dir.display()),
        }
    }
}

fn make_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(|e| context(e, format!("create {}", dir.display())))
}

/// One write, as cgroup files expect, to a file that must exist (cgroupfs makes them).
fn write(path: &Path, value: &str) -> io::Result<()> {
    use io::Write as _;
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|e| context(e, format!("write {value:?} to {}", path.display())))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file (`memory.stat`, `cpu.stat`,
/// `memory.events`, `memory.oom_control`).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

pub(crate) fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the cgroup path {} contains a NUL byte", path.display()),
        )
    })
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("could not {what}: {e}"))
}

/// The error, and what to do about the usual ones.
fn with_hint(e: &io::Error) -> String {
    let hint = match e.kind() {
        io::ErrorKind::PermissionDenied => {
            " (the agent needs write access to the cgroup file system: run it as root, or in a \
             cgroup delegated to its user)"
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            " (the cgroup file system is mounted read-only, as in most containers: mount it \
             read-write, e.g. run the container with --cgroupns=private and a writable \
             /sys/fs/cgroup, to enforce the SKU limits)"
        }
        _ if e.raw_os_error() == Some(libc::EBUSY) => {
            " (cgroup v2 hands controllers down only from groups with no processes of their \
             own: start the agent in a cgroup of its own, e.g. a systemd service with \
             Delegate=yes, under a parent it does not share)"
        }
        _ => "",
    };
    format!("{e}{hint}")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
    use std::process::{Child, ExitStatus, Stdio};

    use super::*;

    /// A test's own agent, whose groups are killed and removed when it drops, even after a
    /// failed assertion.
    pub(crate) struct TestAgent {
        name: String,
        pub(crate) cgroups: Cgroups,
    }

    impl TestAgent {
        /// `None`, with the reason printed, where cgroups are not usable (not root, no cgroups).
        pub(crate) fn new(test: &str) -> Option<TestAgent> {
            let name = format!("test-{test}-{}", std::process::id());
            let cgroups = Cgroups::detect(&name);
            if !cgroups.enabled() {
                println!(
                    "skipped: cgroups are not usable here: {}",
                    cgroups.describe()
                );
                return None;
            }
            Some(TestAgent { name, cgroups })
        }

        fn layout(&self) -> &Layout {
            match &self.cgroups.0 {
                Mode::On(layout) => layout,
                Mode::Off(_) => unreachable!("TestAgent::new checked"),
            }
        }
    }

    impl Drop for TestAgent {
        fn drop(&mut self) {
            self.cgroups.clean_leftovers();
            self.cgroups.remove_all();
        }
    }

    /// `sh -c script` in the instance's group, joined in pre_exec as the agent will.
    #[expect(
        unsafe_code,
        reason = "pre_exec is how a child joins its cgroup before exec"
    )]
    pub(crate) fn spawn_in(instance: &InstanceGroup, script: &str) -> Child {
        let files = instance.join_files();
        let mut command = std::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: `join` only opens, writes and closes precomputed paths, and allocates nothing.
        unsafe {
            command.pre_exec(move || join(&files));
        }
        command.spawn().expect("spawn sh")
    }

    fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the child still runs after {within:?}"
            );
            pause(POLL);
        }
    }

    pub(crate) fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not after {within:?}");
            pause(POLL);
        }
    }

    fn effective_uid() -> Option<u32> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        line.split_whitespace().nth(2)?.parse().ok()
    }

    #[test]
    fn detect_finds_the_hosts_cgroups() {
        let mounts = parse_mountinfo(&fs::read_to_string(MOUNTINFO).expect("read mountinfo"));
        let v1_usable = find_v1(&mounts)
            .is_ok_and(|v1| !v1.cpu.read_only && !v1.cpuacct.read_only && !v1.memory.read_only);
        let Some(agent) = TestAgent::new("detect") else {
            // Root with writable v1 mounts (this machine) must not end up here.
            assert!(
                !(effective_uid() == Some(0) && v1_usable),
                "cgroups are off although we are root with writable v1 mounts: {}",
                Cgroups::detect("test-detect-again").describe()
            );
            return;
        };
        let layout = agent.layout();
        for h in &layout.hierarchies {
            assert!(h.dir.is_dir(), "{} was not made", h.dir.display());
            assert!(h.dir.ends_with(Path::new(STAMP_DIR).join(&agent.name)));
        }
        let v2_usable = mounts.iter().filter(|m| m.fstype == "cgroup2").any(|m| {
            fs::read_to_string(m.point.join("cgroup.controllers")).is_ok_and(|c| {
                V2_CONTROLLERS
                    .iter()
                    .all(|want| c.split_whitespace().any(|have| have == *want))
            })
        });
        let described = agent.cgroups.describe();
        if v2_usable {
            assert_eq!(layout.version, Version::V2, "{described}");
        } else {
            // This machine: v1 controllers and an empty cgroup2 at /sys/fs/cgroup/unified.
            assert_eq!(layout.version, Version::V1, "{described}");
            assert!(described.starts_with("cgroup v1 ("), "{described}");
            for controller in ["cpu", "cpuacct", "memory"] {
                assert!(described.contains(controller), "{described}");
            }
        }
    }

    #[test]
    fn a_one_core_worker_gets_one_core_of_a_two_core_burner() {
        let Some(agent) = TestAgent::new("cpu") else {
            return;
        };
        let limits = Limits {
            millicores: 1000,
            memory_mib: 256,
        };
        let worker = agent.cgroups.create_worker("small-1", &limits).unwrap();
        // Where the pids controller is, the worker's process count is bounded.
        let group = worker.group.as_ref().unwrap();
        let limited: Vec<String> = (0..group.layout.hierarchies.len())
            .map(|i| group.dir(i).join("pids.max"))
            .filter(|f| f.exists())
            .map(|f| std::fs::read_to_string(f).unwrap().trim().to_string())
            .collect();
        assert!(
            limited.iter().all(|v| *v == WORKER_PIDS_MAX.to_string()),
            "{limited:?}"
        );
        assert!(
            !limited.is_empty() || !Path::new("/sys/fs/cgroup/pids").exists(),
            "the host has the pids controller, but the worker has no pids.max"
        );
        let instance = worker.create_instance("burner").unwrap();
        let mut child = spawn_in(&instance, "while :; do :; done & while :; do :; done");
        wait_until("both loops in the group", Duration::from_secs(5), || {
            instance.pids().len() >= 2
        });

        let before = instance.usage().expect("usage");
        let start = Instant::now();
        pause(Duration::from_millis(1500));
        let after = instance.usage().expect("usage");
        let elapsed = start.elapsed().as_nanos() as f64;
        let used = (after.cpu_ns - before.cpu_ns) as f64;
        // Two busy loops would take ~2 cores unlimited; the quota holds them to 1.
        assert!(
            used <= 1.25 * elapsed,
            "used {used} ns of CPU in {elapsed} ns under a 1-core quota"
        );
        // Low bar: on a busy machine the whole `stamp` tree competes with everything else at
        // the top level; this only proves the group is accounted at all.
        assert!(
            used > 0.25 * elapsed,
            "used only {used} ns of CPU in {elapsed} ns: is the group accounted?"
        );
        let whole = worker.usage().expect("worker usage");
        assert!(
            whole.cpu_ns >= after.cpu_ns,
            "the worker counts its instances"
        );

        instance.kill_all();
        let status = wait_exit(&mut child, Duration::from_secs(5));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        wait_until("the group empty", Duration::from_secs(5), || {
            instance.pids().is_empty()
        });
        instance.remove();
        worker.remove();
        for dir in worker.group.as_ref().unwrap().dirs() {
            assert!(!dir.exists(), "{} was not removed", dir.display());
        }
    }

    #[test]
    fn a_memory_hog_is_oom_killed_and_counted_in_its_instance() {
        let Some(agent) = TestAgent::new("memory") else {
            return;
        };
        let limits = Limits {
            millicores: 2000,
            memory_mib: 128,
        };
        let worker = agent.cgroups.create_worker("small-2", &limits).unwrap();
        let instance = worker.create_instance("hog").unwrap();
        assert_eq!(instance.oom_kills(), 0);
        // The shell doubles a string until it holds more than 128 MiB.
        let mut child = spawn_in(&instance, "x=aaaaaaaa; while :; do x=$x$x; done");
        let status = wait_exit(&mut child, Duration::from_secs(30));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        assert!(instance.oom_kills() >= 1, "the OOM kill was not counted");
        if agent.layout().version == Version::V1 {
            let worker_dir = worker.group.as_ref().unwrap().dir(agent.layout().memory);
            let text = fs::read_to_string(worker_dir.join("memory.oom_control")).unwrap();
            println!(
                "v1: oom_kill of the worker group (which holds the limit): {:?}",
                stat_value(&text, "oom_kill")
            );
        }
        instance.remove();
        worker.remove();
    }

    #[test]
    fn clean_leftovers_kills_what_a_dead_agent_left_and_removes_its_groups() {
        let Some(agent) = TestAgent::new("leftovers") else {
            return;
        };
        let limits = Limits {
            millicores: 500,
            memory_mib: 64,
        };
        let worker = agent.cgroups.create_worker("small-3", &limits).unwrap();
        let instance = worker.create_instance("left").unwrap();
        let mut child = spawn_in(&instance, "sleep 600 & exec sleep 600");
        wait_until("both sleeps in the group", Duration::from_secs(5), || {
            instance.pids().len() >= 2
        });
        let pids = instance.pids();

        // A new agent on the same directory, as after a crash of the first.
        let again = Cgroups::detect(&agent.name);
        assert!(again.enabled(), "{}", again.describe());
        again.clean_leftovers();

        let status = wait_exit(&mut child, Duration::from_secs(5));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        for pid in pids {
            // Gone, or a zombie waiting for whoever adopted it.
            let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = state.rsplit(") ").next().unwrap_or("").chars().next();
            assert!(
                matches!(state, None | Some('Z') | Some('X')),
                "{pid} is {state:?}"
            );
        }
        for dir in worker.group.as_ref().unwrap().dirs() {
            assert!(!dir.exists(), "{} was not removed", dir.display());
        }
        for h in &agent.layout().hierarchies {
            assert!(
                h.dir.is_dir(),
                "the agent's own group {} stays",
                h.dir.display()
            );
        }

        // A clean shutdown takes the agent's own groups too.
        let worker = again.create_worker("small-4", &limits).unwrap();
        worker.create_instance("i").unwrap();
        again.remove_all();
        for h in &agent.layout().hierarchies {
            assert!(!h.dir.exists(), "{} was not removed", h.dir.display());
        }
    }

    #[test]
    fn disabled_cgroups_do_nothing_and_say_why() {
        let cgroups = Cgroups::disabled("opted out");
        assert!(!cgroups.enabled());
        assert_eq!(cgroups.describe(), "off: opted out");
        cgroups.clean_leftovers();
        let limits = Limits {
            millicores: 1000,
            memory_mib: 128,
        };
        let worker = cgroups.create_worker("small-1", &limits).unwrap();
        let instance = worker.create_instance("i").unwrap();
        assert!(instance.join_files().is_empty());
        join(&instance.join_files()).unwrap();
        assert_eq!(instance.usage(), None);
        assert_eq!(worker.usage(), None);
        assert!(instance.pids().is_empty());
        assert_eq!(instance.oom_kills(), 0);
        instance.kill_all();
        instance.remove();
        worker.remove();
        // Names are still checked, so a bad one shows up before a host with cgroups.
        assert!(cgroups.create_worker("../x", &limits).is_err());
        assert!(worker.create_instance("").is_err());
    }

    #[test]
    fn detection_without_usable_mounts_says_why() {
        let none = Cgroups::detect_in(&[], "a");
        assert_eq!(none.describe(), "off: no cgroup file system is mounted");

        let text = "25 1 0:22 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct\n";
        let partial = Cgroups::detect_in(&parse_mountinfo(text), "a");
        assert_eq!(partial.describe(), "off: no cgroup v1 mount of memory");

        assert!(
            Cgroups::detect("a/b")
                .describe()
                .starts_with("off: the agent name")
        );
    }

    #[test]
    fn mountinfo_is_parsed() {
        let text = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime shared:5 - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory ro,relatime - cgroup cgroup rw,memory
36 31 0:32 / /mnt/my\\040memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
garbage
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 5);
        assert_eq!(
            mounts[1],
            Mount {
                point: "/sys/fs/cgroup/cpuacct".into(),
                fstype: "cgroup".into(),
                read_only: false,
                super_options: vec!["rw".into(), "cpuacct".into()],
            }
        );
        assert!(mounts[2].read_only);
        assert_eq!(mounts[3].point, Path::new("/mnt/my memory"));
        assert_eq!(mounts[4].fstype, "cgroup2");

        let v1 = find_v1(&mounts).unwrap();
        assert_eq!(v1.cpu.point, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(v1.cpuacct.point, Path::new("/sys/fs/cgroup/cpuacct"));
        // The read-write mount of memory wins over the read-only one listed first.
        assert_eq!(v1.memory.point, Path::new("/mnt/my memory"));
        assert!(v1.pids.is_none());

        let comounted = parse_mountinfo(
            "1 0 0:1 / /c rw - cgroup cgroup rw,cpu,cpuacct\n2 0 0:2 / /m rw - cgroup cgroup rw,memory\n",
        );
        let v1 = find_v1(&comounted).unwrap();
        assert_eq!(v1.cpu.point, v1.cpuacct.point);
        assert_eq!(find_v1(&comounted[..1]).unwrap_err(), "memory");
    }

    #[test]
    fn pids_and_stat_files_are_read() {
        assert_eq!(parse_pids("12\n0\n7\n\n"), vec![12, 7]);
        let stat = "cache 1\ninactive_file 4096\ntotal_inactive_file 8192\n";
        assert_eq!(stat_value(stat, "inactive_file"), Some(4096));
        assert_eq!(stat_value(stat, "total_inactive_file"), Some(8192));
        assert_eq!(stat_value(stat, "active_file"), None);
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(stat_value(oom, "oom_kill"), Some(3));
        assert_eq!(
            Limits {
                millicores: 1500,
                memory_mib: 1
            }
            .cfs_quota_us(),
            Some(150_000)
        );
        assert_eq!(
            Limits {
                millicores: 1,
                memory_mib: 1
            }
            .cfs_quota_us(),
            Some(1_000)
        );
        assert_eq!(
            Limits {
                millicores: 0,
                memory_mib: 0
            }
            .cfs_quota_us(),
            None
        );
        assert_eq!(
            Limits {
                millicores: 0,
                memory_mib: 2
            }
            .memory_bytes(),
            Some(2 << 20)
        );
    }

    /// cgroup v2 cannot be mounted with controllers next to v1 on this machine, so its files
    /// are checked on a tree of plain files shaped like one.
    #[test]
    fn v2_limits_usage_and_oom_kills_use_the_v2_files() {
        let mount = tempfile::tempdir().unwrap();
        let m = mount.path();
        let agent = m.join("stamp/a");
        let worker = agent.join("small-1");
        let instance = worker.join("i1");
        fs::create_dir_all(&instance).unwrap();
        fs::write(m.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        for dir in [
            m.to_path_buf(),
            m.join("stamp"),
            agent.clone(),
            worker.clone(),
        ] {
            fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        }
        fs::write(agent.join("cgroup.subtree_control"), "cpu memory\n").unwrap();
        for file in ["cpu.max", "memory.max", "memory.swap.max"] {
            fs::write(worker.join(file), "").unwrap();
        }
        fs::write(instance.join("cgroup.procs"), "41\n42\n").unwrap();
        fs::write(
            instance.join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .unwrap();
        fs::write(instance.join("memory.current"), "10000\n").unwrap();
        fs::write(instance.join("memory.stat"), "anon 1\ninactive_file 4000\n").unwrap();
        fs::write(instance.join("memory.events"), "low 0\noom 2\noom_kill 1\n").unwrap();
        let mountinfo = format!(
            "41 31 0:38 / {} rw,relatime - cgroup2 cgroup2 rw\n",
            m.display()
        );

        let cgroups = Cgroups::detect_in(&parse_mountinfo(&mountinfo), "a");
        assert_eq!(
            cgroups.describe(),
            format!("cgroup v2 at {} (cpu, memory)", m.display())
        );
        let limits = Limits {
            millicores: 1500,
            memory_mib: 128,
        };
        let group = cgroups.create_worker("small-1", &limits).unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(m.join("cgroup.subtree_control")), "+cpu +memory");
        // Already on: not written again.
        assert_eq!(read(agent.join("cgroup.subtree_control")), "cpu memory\n");
        assert_eq!(read(worker.join("cpu.max")), "150000 100000");
        assert_eq!(read(worker.join("memory.max")), (128u64 << 20).to_string());
        assert_eq!(read(worker.join("memory.swap.max")), "0");
        assert_eq!(read(worker.join("cgroup.subtree_control")), "+cpu +memory");

        let i = group.create_instance("i1").unwrap();
        assert_eq!(
            i.join_files(),
            vec![path_cstring(&instance.join("cgroup.procs")).unwrap()]
        );
        assert_eq!(
            i.usage(),
            Some(Usage {
                cpu_ns: 1_500_000,
                memory_bytes: 6000
            })
        );
        assert_eq!(i.pids(), vec![41, 42]);
        assert_eq!(i.oom_kills(), 1);
    }
}
