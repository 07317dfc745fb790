//! Enforces each instance's limit of open outbound TCP connections (the figure Azure App Service
//! limits per instance, counted by [`crate::conns`]) with nftables, where the host allows.
//!
//! How (verified on this kernel; the research is in the comment at the top of `conns.rs`): each
//! instance's processes are in a cgroup v2 group of their own, which gives their sockets an
//! identity (no controller is needed, so a cgroup2 mounted next to cgroup v1 does). One nftables
//! table per agent, `inet stamp_<agent>`, has one rule in the output hook that sends every new
//! outbound TCP connection through a verdict map keyed by the socket's group, and one chain per
//! instance holding its limit:
//!
//! ```text
//! table inet stamp_0123456789abcdef {
//!   map instances { typeof socket cgroupv2 level 3 : verdict; elements = { "unified/stamp/agent-0123456789abcdef/<instance>" : jump i_0 } }
//!   chain out { type filter hook output priority 0; policy accept;
//!               meta l4proto tcp ct state new socket cgroupv2 level 3 vmap @instances; }
//!   chain i_0 { ct count over 1920 reject with tcp reset; }
//! }
//! ```
//!
//! The connection over the limit fails at once with ECONNREFUSED; IPv4 and IPv6 (an `inet`
//! table) and loopback connections share one count, as on Azure; connections accepted from
//! clients are not counted. Each change is one `nft -f -` batch, which the kernel applies
//! atomically.
//!
//! Order matters, because nft turns a group's path into the group's id when the element is
//! added: the group is made before its element ([`NetLimits::add`]), the element deleted before
//! the group ([`InstanceNetLimit::remove`]), and a process must join its group before it makes
//! sockets, i.e. between fork and exec, with [`crate::cgroup::join`] and
//! [`InstanceNetLimit::join_file`] (before dropping to the app's user: the groups are root's).
//!
//! The groups are `<cgroup2 mount>/stamp/<agent>/<instance>`. On a pure cgroup v2 host where
//! `cgroup.rs` keeps its groups in the same hierarchy, a process can be in one group only, so
//! there the instance's own `cgroup.rs` group must be limited instead, with
//! [`NetLimits::add_existing`].
//!
//! What the host allows is detected, never assumed: without a cgroup2 mount, without `nft`, or
//! without the right to change nftables, every handle is a no-op and [`NetLimits::describe`]
//! says why. All calls block (they run `nft`, and removing a group waits for the kernel to empty
//! it): call them from `spawn_blocking`.
//!
//! Known limits: `ct count` counts what conntrack considers open, a little more than `conns.rs`
//! reports (see there); the map's `level` is the group's depth from the hierarchy's root, read
//! from `/proc/self/mountinfo`, so an agent inside a cgroup namespace whose root is not the
//! hierarchy's root would match nothing; rules live in the agent's network namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::cgroup::{
    self, EMPTY_WAIT, MOUNTINFO, POLL, STAMP_DIR, descendants, path_cstring, pause, read_pids,
    remove_dirs, unescape,
};

/// nft reads the path of `socket cgroupv2` relative to this directory (hard-wired in nft).
const NFT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The map that dispatches to the instances' chains, for groups at the usual level.
const MAP: &str = "instances";

/// The longest table name every kernel takes: 32 bytes with the NUL on older kernels (255 on
/// this one).
const TABLE_NAME_MAX: usize = 31;

/// Where to look for `nft` when it is not on `PATH` (an agent started with a user's `PATH`).
const NFT_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"];

/// Enforces per-instance outbound TCP connection limits with nftables, where the host allows.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct NetLimits(Mode);

#[derive(Debug, Clone)]
enum Mode {
    On(Arc<Shared>),
    Off(Arc<str>),
}

#[derive(Debug)]
struct Shared {
    /// The `nft` binary.
    nft: PathBuf,
    /// `stamp_<agent>`, in family `inet`.
    table: String,
    /// The cgroup2 mount point.
    mount: PathBuf,
    /// The depth of the mount's root in the hierarchy (0 unless a subtree is mounted).
    root_level: usize,
    /// The mount as nft names it: relative to [`NFT_CGROUP_ROOT`] (`unified`, or empty).
    nft_base: PathBuf,
    /// `<mount>/stamp/<agent>`.
    dir: PathBuf,
    /// The level of `<dir>/<instance>`, the one [`MAP`] is for.
    level: usize,
    /// For [`NetLimits::describe`].
    summary: String,
    /// Taken around every change of the table, so that the state and the kernel agree.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// For the next chain's name, `i_<n>`.
    next_chain: u64,
    /// The levels that have a map and a dispatch rule.
    levels: BTreeSet<usize>,
    /// The limited groups, by chain.
    live: BTreeMap<String, Element>,
    /// Set by [`NetLimits::remove_all`]: the table is gone.
    closed: bool,
}

/// One element of a map: a group, as nft names it, at its level.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Element {
    path: String,
    level: usize,
}

impl NetLimits {
    /// Finds a cgroup2 mount (from `/proc/self/mountinfo`: `/sys/fs/cgroup` itself on a pure v2
    /// host, or one beside cgroup v1 such as `/sys/fs/cgroup/unified`), checks that `nft` is
    /// there and may change nftables by creating the agent's table (replacing one a previous
    /// run left), and creates `<cgroup2>/stamp/<agent>`. When something is missing the result
    /// enforces nothing and [`NetLimits::describe`] says why; it never fails the caller.
    ///
    /// `agent` is unique per agent (e.g. `agent-0123456789abcdef`) and names the table and the
    /// groups, so that the next agent of the same name finds what this one left.
    pub fn detect(agent: &str) -> NetLimits {
        if let Err(e) = check_name("agent", agent) {
            return NetLimits::off(&e.to_string());
        }
        let mounts = match fs::read_to_string(MOUNTINFO) {
            Ok(text) => cgroup2_mounts(&text),
            Err(e) => return NetLimits::off(&format!("could not read {MOUNTINFO}: {e}")),
        };
        if mounts.is_empty() {
            return NetLimits::off(
                "no cgroup v2 file system is mounted (nftables tells instances apart by their \
                 cgroup v2 group; mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`)",
            );
        }
        let Some(nft) = find_nft() else {
            return NetLimits::off("nft is not installed (apt-get install nftables)");
        };
        let table = table_name(agent);
        let mut why = Vec::new();
        for mount in &mounts {
            match setup(&nft, &table, mount, agent) {
                Ok(shared) => return NetLimits(Mode::On(Arc::new(shared))),
                Err(e) => why.push(format!(
                    "cannot use the cgroup v2 mount {}: {e}",
                    mount.point.display()
                )),
            }
        }
        NetLimits::off(&why.join("; "))
    }

    pub fn off(reason: &str) -> NetLimits {
        NetLimits(Mode::Off(reason.into()))
    }

    /// For the agent's start-up log: `nftables table inet stamp_…, cgroup v2 at …` or
    /// `off: <why>`.
    pub fn describe(&self) -> String {
        match &self.0 {
            Mode::On(shared) => shared.summary.clone(),
            Mode::Off(reason) => format!("off: {reason}"),
        }
    }

    #[cfg(test)]
    fn enabled(&self) -> bool {
        matches!(self.0, Mode::On(_))
    }

    /// Removes the groups a previous run of this agent left in `<cgroup2>/stamp/<agent>` (its
    /// table was already replaced by [`NetLimits::detect`]). Their processes are `cgroup.rs`'s
    /// to kill; any still in a group are SIGKILLed as well, and waited for (bounded), so that
    /// the groups can go. Call it at agent start, before any instance runs.
    ///
    /// Blocks up to [`EMPTY_WAIT`] + [`REMOVE_WAIT`] for processes stuck in the kernel;
    /// milliseconds otherwise.
    pub fn clean_leftovers(&self) {
        let Mode::On(shared) = &self.0 else {
            return;
        };
        let groups = descendants(&shared.dir);
        if groups.is_empty() {
            return;
        }
        let deadline = Instant::now() + EMPTY_WAIT;
        let mut reported = false;
        loop {
            let mut left = 0;
            for dir in &groups {
                let pids = read_pids(dir);
                if pids.is_empty() {
                    continue;
                }
                left += pids.len();
                if !reported {
                    tracing::info!(
                        "killing processes a previous run left in the cgroup {}",
                        dir.display()
                    );
                }
                if !cgroup::kill_by_cgroup_kill(dir) {
                    cgroup::kill_listed(dir, || pids.clone());
                }
            }
            reported = true;
            if left == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "{left} processes left by a previous run are still in this agent's cgroup v2 \
                     groups {EMPTY_WAIT:.1?} after SIGKILL (stuck in the kernel?); their groups \
                     stay"
                );
                break;
            }
            pause(POLL);
        }
        remove_dirs(&groups);
    }

    /// Creates the group `<cgroup2>/stamp/<agent>/<instance>` (reused if left from before) and
    /// limits it to `limit` open outbound TCP connections, in that order. Start the instance's
    /// process in it ([`InstanceNetLimit::join_file`]). Off: a handle that does nothing.
    pub fn add(&self, instance: &str, limit: u32) -> io::Result<InstanceNetLimit> {
        check_name("instance", instance)?;
        let Mode::On(shared) = &self.0 else {
            return Ok(InstanceNetLimit(None));
        };
        let dir = shared.dir.join(instance);
        let join = path_cstring(&dir.join("cgroup.procs"))?;
        let made = !dir.exists();
        make_dir(&dir)?;
        match shared.limit(&dir, limit) {
            Ok(chain) => Ok(InstanceNetLimit(Some(Instance {
                shared: shared.clone(),
                chain,
                group: Some(dir),
                join: Some(join),
            }))),
            Err(e) => {
                // Only a group made just now, and so empty (one try is enough): one that was
                // there may be an instance's that is limited already.
                if made {
                    let _ = fs::remove_dir(&dir);
                }
                Err(e)
            }
        }
    }

    /// Limits an existing cgroup v2 group this module does not own to `limit` open outbound TCP
    /// connections: for a pure cgroup v2 host, where the instance's processes are in the group
    /// `cgroup.rs` made for its CPU and memory limits and cannot be in a second one. The group
    /// must be below this agent's cgroup2 mount; the handle's [`InstanceNetLimit::join_file`] is
    /// `None` (the process joins the group through `cgroup.rs`), and its
    /// [`InstanceNetLimit::remove`] leaves the group. Off: a handle that does nothing.
    /// For pure cgroup v2 hosts, where the instance's one group is `cgroup.rs`'s (not wired
    /// yet: the agent turns limits off there).
    #[cfg(test)]
    pub fn add_existing(&self, group: &Path, limit: u32) -> io::Result<InstanceNetLimit> {
        let Mode::On(shared) = &self.0 else {
            return Ok(InstanceNetLimit(None));
        };
        if !group.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "cannot limit the connections of the cgroup {}: it does not exist",
                    group.display()
                ),
            ));
        }
        let chain = shared.limit(group, limit)?;
        Ok(InstanceNetLimit(Some(Instance {
            shared: shared.clone(),
            chain,
            group: None,
            join: None,
        })))
    }

    /// Deletes the agent's table and removes its groups, `<cgroup2>/stamp/<agent>` last; best
    /// effort, one try each (a group that still has processes stays, with a warning). For a
    /// clean shutdown, once every instance has stopped. Later [`NetLimits::add`]s fail.
    pub fn remove_all(&self) {
        let Mode::On(shared) = &self.0 else {
            return;
        };
        {
            let mut state = shared.lock();
            if !state.closed {
                state.closed = true;
                state.live.clear();
                let batch = format!("delete table inet {}\n", shared.table);
                if let Err(e) = run_nft(&shared.nft, &batch, "delete the nftables table") {
                    tracing::warn!("failed to {e}");
                }
            }
        }
        for dir in descendants(&shared.dir)
            .into_iter()
            .chain([shared.dir.clone()])
        {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("failed to remove the cgroup {}: {e}", dir.display()),
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is updated after each nft change succeeds: never half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn map_name(&self, level: usize) -> String {
        if level == self.level {
            MAP.to_string()
        } else {
            format!("{MAP}_l{level}")
        }
    }

    /// Adds the chain holding the limit and the map element sending `dir`'s new connections to
    /// it (and, the first time a level is used, that level's map and dispatch rule), in one
    /// batch. Returns the chain's name.
    fn limit(&self, dir: &Path, limit: u32) -> io::Result<String> {
        let rel = dir.strip_prefix(&self.mount).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot limit the connections of the cgroup {}: it is not below the cgroup v2 \
                     mount {} the limits use",
                    dir.display(),
                    self.mount.display()
                ),
            )
        })?;
        let element = Element {
            path: nft_string(&self.nft_base.join(rel))?,
            level: self.root_level + depth(rel),
        };
        let mut state = self.lock();
        if state.closed {
            return Err(io::Error::other(
                "cannot limit connections any more: the agent's nftables table was removed",
            ));
        }
        if state.live.values().any(|e| *e == element) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "the connections of the cgroup {} are limited already",
                    dir.display()
                ),
            ));
        }
        let table = &self.table;
        let chain = format!("i_{}", state.next_chain);
        let map = self.map_name(element.level);
        let level = element.level;
        let new_level = !state.levels.contains(&level);
        let mut batch = Vec::new();
        if new_level {
            batch.push(format!(
                "add map inet {table} {map} {{ typeof socket cgroupv2 level {level} : verdict; }}"
            ));
            batch.push(dispatch_rule(table, level, &map));
        }
        batch.extend([
            format!("add chain inet {table} {chain}"),
            format!("add rule inet {table} {chain} ct count over {limit} reject with tcp reset"),
            format!(
                "add element inet {table} {map} {{ \"{}\" : jump {chain} }}",
                element.path
            ),
        ]);
        run_nft(
            &self.nft,
            &lines(&batch),
            &format!("limit the connections of the cgroup {}", dir.display()),
        )?;
        state.next_chain += 1;
        if new_level {
            state.levels.insert(level);
        }
        state.live.insert(chain.clone(), element);
        Ok(chain)
    }

    /// Deletes `chain` and the element that jumps to it. Best effort: failures are logged.
    fn unlimit(&self, chain: &str) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        // Not there: removed already.
        let Some(element) = state.live.remove(chain) else {
            return;
        };
        let table = &self.table;
        let map = self.map_name(element.level);
        let delete_chain = format!("delete chain inet {table} {chain}");
        let batch = [
            format!(
                "delete element inet {table} {map} {{ \"{}\" }}",
                element.path
            ),
            delete_chain.clone(),
        ];
        let what = format!("remove the connection limit of the cgroup {}", element.path);
        let Err(e) = run_nft(&self.nft, &lines(&batch), &what) else {
            return;
        };
        // nft deletes an element by its group's path, which fails once the group is gone or
        // replaced behind our back. Rebuild the map from the groups still limited instead (the
        // batch is atomic: they are never unlimited), then the chain can go.
        let mut rebuild = vec![format!("flush map inet {table} {map}")];
        rebuild.extend(
            state
                .live
                .iter()
                .filter(|(_, e)| {
                    e.level == element.level && Path::new(NFT_CGROUP_ROOT).join(&e.path).is_dir()
                })
                .map(|(chain, e)| {
                    format!(
                        "add element inet {table} {map} {{ \"{}\" : jump {chain} }}",
                        e.path
                    )
                }),
        );
        rebuild.push(delete_chain);
        if let Err(again) = run_nft(&self.nft, &lines(&rebuild), &what) {
            tracing::warn!("failed to {e}; and rebuilding the map failed too: {again}");
        }
    }
}

/// An instance's connection limit; does nothing when limits are off.
#[derive(Debug)]
pub(crate) struct InstanceNetLimit(Option<Instance>);

#[derive(Debug)]
struct Instance {
    shared: Arc<Shared>,
    /// `i_<n>`.
    chain: String,
    /// The group, when this module made it (and removes it).
    group: Option<PathBuf>,
    /// Its `cgroup.procs`, when this module made it.
    join: Option<CString>,
}

impl InstanceNetLimit {
    /// The cgroup v2 `cgroup.procs` the child writes `0` into to join the group, with
    /// [`crate::cgroup::join`] in `pre_exec`, before it drops to the app's user; `None` when
    /// limits are off or the group is not this module's ([`NetLimits::add_existing`]).
    pub fn join_file(&self) -> Option<CString> {
        self.0.as_ref()?.join.clone()
    }

    /// Deletes the map element and the chain, then the group (retrying briefly while the
    /// kernel takes exited processes out). Best effort: failures are logged. Call it once the
    /// instance's processes are gone; calling it again does nothing.
    pub fn remove(&self) {
        let Some(instance) = &self.0 else {
            return;
        };
        instance.shared.unlimit(&instance.chain);
        if let Some(dir) = &instance.group {
            remove_dirs(std::slice::from_ref(dir));
        }
    }
}

/// Makes `<mount>/stamp/<agent>`, checks that nft finds it, and creates the agent's table,
/// replacing one left from before.
fn setup(nft: &Path, table: &str, mount: &Mount, agent: &str) -> io::Result<Shared> {
    let nft_base = nft_base(&mount.point);
    let rel = Path::new(STAMP_DIR).join(agent);
    let dir = mount.point.join(&rel);
    // The paths nft will read, checked for characters it cannot take, before anything is made.
    nft_string(&nft_base.join(&rel))?;
    make_dir(&dir)?;
    // nft finds groups below /sys/fs/cgroup only: a mount elsewhere must be reachable from it.
    let seen_by_nft = Path::new(NFT_CGROUP_ROOT).join(&nft_base).join(&rel);
    let same = match (fs::metadata(&dir), fs::metadata(&seen_by_nft)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if !same {
        let _ = fs::remove_dir(&dir);
        return Err(io::Error::other(format!(
            "nft looks for cgroups below {NFT_CGROUP_ROOT} and would not find {} as {}",
            dir.display(),
            seen_by_nft.display()
        )));
    }
    let level = mount.root_level + depth(&rel) + 1;
    let create = [
        // `add` then `delete` removes a table left from before, or none, without failing.
        format!("add table inet {table}"),
        format!("delete table inet {table}"),
        format!("add table inet {table}"),
        format!("add map inet {table} {MAP} {{ typeof socket cgroupv2 level {level} : verdict; }}"),
        format!(
            "add chain inet {table} out {{ type filter hook output priority 0; policy accept; }}"
        ),
        dispatch_rule(table, level, MAP),
    ];
    if let Err(e) = run_nft(nft, &lines(&create), "create the nftables table") {
        let _ = fs::remove_dir(&dir);
        return Err(with_hint(e));
    }
    Ok(Shared {
        nft: nft.to_path_buf(),
        table: table.to_string(),
        mount: mount.point.clone(),
        root_level: mount.root_level,
        nft_base,
        summary: format!(
            "nftables table inet {table}, cgroup v2 at {}",
            mount.point.display()
        ),
        dir,
        level,
        state: Mutex::new(State {
            next_chain: 0,
            levels: BTreeSet::from([level]),
            live: BTreeMap::new(),
            closed: false,
        }),
    })
}

/// The rule that sends new outbound TCP connections of groups at `level` through `map`.
fn dispatch_rule(table: &str, level: usize, map: &str) -> String {
    format!(
        "add rule inet {table} out meta l4proto tcp ct state new socket cgroupv2 level {level} \
         vmap @{map}"
    )
}

fn lines(batch: &[String]) -> String {
    let mut text = batch.join("\n");
    text.push('\n');
    text
}

/// Runs one `nft -f -` batch (applied atomically by the kernel). The error says what could not
/// be done (`what`), with nft's own message.
fn run_nft(nft: &Path, batch: &str, what: &str) -> io::Result<()> {
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{what}: could not run {}: {e}", nft.display()),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A failed write (nft gave up early) shows in its exit status and message.
        let _ = stdin.write_all(batch.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: could not wait for nft: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what}: nft failed ({}): {}",
        output.status,
        nft_message(&String::from_utf8_lossy(&output.stderr))
    )))
}

/// nft's error output on one line, without the lines of carets under the failing command.
fn nft_message(stderr: &str) -> String {
    let message: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.chars().all(|c| c == '^' || c == '~'))
        .collect();
    if message.is_empty() {
        "no message".to_string()
    } else {
        message.join(" | ")
    }
}

/// The error, and what to do about the usual ones when creating the table.
fn with_hint(e: io::Error) -> io::Error {
    let text = e.to_string();
    let hint = if text.contains("Operation not permitted") {
        " (changing nftables needs CAP_NET_ADMIN: run the agent as root)"
    } else if text.contains("Could not process rule") {
        " (the kernel may lack nftables or one of its modules nft_socket, nft_ct, nft_connlimit, \
         nft_reject_inet)"
    } else {
        ""
    };
    io::Error::new(e.kind(), format!("{text}{hint}"))
}

/// `nft` on `PATH`, or in the usual directories.
fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(NFT_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("nft"))
        .find(|nft| nft.is_file())
}

/// `stamp_<agent without its "agent-" prefix>`, or a hash of the agent's name when that would
/// be too long for older kernels.
fn table_name(agent: &str) -> String {
    let name = format!("stamp_{}", agent.strip_prefix("agent-").unwrap_or(agent));
    if name.len() <= TABLE_NAME_MAX {
        name
    } else {
        format!("stamp_{:016x}", crate::sandbox::fnv1a(agent.as_bytes()))
    }
}

/// The mount as nft names it: relative to [`NFT_CGROUP_ROOT`], through `..` when elsewhere.
fn nft_base(mount: &Path) -> PathBuf {
    match mount.strip_prefix(NFT_CGROUP_ROOT) {
        Ok(rel) => rel.to_path_buf(),
        Err(_) => Path::new("../../..").join(mount.strip_prefix("/").unwrap_or(mount)),
    }
}

/// A path for a quoted nft string, which cannot hold `"` or control characters.
fn nft_string(path: &Path) -> io::Result<String> {
    match path.to_str() {
        Some(s) if !s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) => Ok(s.to_string()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the cgroup path {} cannot be given to nft (it is not UTF-8, or has quotes, \
                 backslashes or control characters)",
                path.display()
            ),
        )),
    }
}

/// How many directories deep `rel` is.
fn depth(rel: &Path) -> usize {
    rel.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

/// Agents and instances name groups and appear in nft strings: letters, digits, `.`, `_`, `-`.
fn check_name(what: &str, name: &str) -> io::Result<()> {
    let fine = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if fine {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the {what} name {name:?} cannot name a cgroup for connection limits: it must be \
                 1 to 200 letters, digits, '.', '_' or '-'"
            ),
        ))
    }
}

/// A cgroup2 mount, what detection needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    /// The depth in the hierarchy of the directory mounted (mountinfo's 4th field).
    root_level: usize,
}

/// The read-write cgroup2 mounts, in mountinfo order. A line is `36 35 98:0 /root /mnt rw,noatime
/// master:1 - cgroup2 cgroup2 rw`: root 4th, mount point 5th, its options 6th, and after the
/// optional fields and `-`, the file system type.
fn cgroup2_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = 6 + fields.get(6..)?.iter().position(|f| *f == "-")?;
            let cgroup2 = *fields.get(separator + 1)? == "cgroup2";
            let writable = !fields.get(5)?.split(',').any(|o| o == "ro");
            let mount = Mount {
                point: unescape(fields.get(4)?),
                root_level: depth(&unescape(fields.get(3)?)),
            };
            (cgroup2 && writable).then_some(mount)
        })
        .collect()
}

fn make_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("could not create {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
    use std::process::{Child, ExitStatus};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Set for the child process: `<address> <count>`, see [`connect_child`].
    const CHILD_ENV: &str = "STAMP_NETLIMIT_CHILD";
    /// Its results line starts with this.
    const MARK: &str = "netlimit-child:";
    /// Bound of every wait for a child.
    const WAIT: Duration = Duration::from_secs(30);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A test's own agent, whose table and groups are removed when it drops, even after a
    /// failed assertion.
    struct TestNet {
        name: String,
        limits: NetLimits,
    }

    impl TestNet {
        /// `None`, with the reason printed, where limits cannot be enforced (not root, no nft,
        /// no cgroup2). Root with nft and a cgroup2 mount (this machine) must not end up there.
        fn new(test: &str) -> Option<TestNet> {
            let name = format!("t-{test}-{}", std::process::id());
            let limits = NetLimits::detect(&name);
            if limits.enabled() {
                return Some(TestNet { name, limits });
            }
            let has_cgroup2 =
                fs::read_to_string(MOUNTINFO).is_ok_and(|text| !cgroup2_mounts(&text).is_empty());
            assert!(
                !(nix::unistd::geteuid().is_root() && find_nft().is_some() && has_cgroup2),
                "connection limits are off although we are root with nft and a cgroup2 mount: {}",
                limits.describe()
            );
            println!(
                "skipped: connection limits cannot be enforced here: {}",
                limits.describe()
            );
            None
        }

        fn shared(&self) -> &Shared {
            match &self.limits.0 {
                Mode::On(shared) => shared,
                Mode::Off(_) => unreachable!("TestNet::new checked"),
            }
        }

        /// `nft list table` of the agent's table; empty when there is none.
        fn listing(&self) -> String {
            nft_stdout(&["list", "table", "inet", &self.shared().table])
        }

        fn table_exists(&self) -> bool {
            let want = format!("table inet {}", self.shared().table);
            nft_stdout(&["list", "tables"])
                .lines()
                .any(|line| line.trim() == want)
        }

        /// How nft names the group `<agent dir>/<rel>` in the map.
        fn element(&self, rel: &str) -> String {
            let shared = self.shared();
            let dir = shared.dir.join(rel);
            let below = dir.strip_prefix(&shared.mount).expect("below the mount");
            nft_string(&shared.nft_base.join(below)).expect("a path nft takes")
        }
    }

    impl Drop for TestNet {
        fn drop(&mut self) {
            self.limits.clean_leftovers();
            self.limits.remove_all();
        }
    }

    fn nft_stdout(args: &[&str]) -> String {
        let nft = find_nft().expect("nft");
        let output = Command::new(nft).args(args).output().expect("run nft");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A child killed and reaped when the test ends, however it ends.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl ChildGuard {
        /// The results line of [`connect_child`]: `ok` or `err:<errno>` per connect.
        fn results(&mut self) -> Vec<String> {
            let stdout = self.0.stdout.take().expect("piped stdout");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                // Read to the end: a closed pipe would fail libtest's last lines in the child.
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    // libtest writes the test's name before it, on the same line.
                    if let Some((_, results)) = line.split_once(MARK) {
                        let _ = tx.send(results.split_whitespace().map(String::from).collect());
                    }
                }
            });
            rx.recv_timeout(WAIT)
                .expect("the child's results (did it start?)")
        }

        /// Closes its stdin, which lets [`connect_child`] close its connections and exit.
        fn finish(&mut self) -> ExitStatus {
            drop(self.0.stdin.take());
            self.wait()
        }

        fn wait(&mut self) -> ExitStatus {
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = self.0.try_wait().expect("wait for the child") {
                    return status;
                }
                assert!(
                    Instant::now() < deadline,
                    "the child still runs after {WAIT:?}"
                );
                pause(POLL);
            }
        }
    }

    /// `command`, joined in pre_exec to the groups whose `cgroup.procs` are `files`, as the
    /// agent will start instances.
    #[expect(
        unsafe_code,
        reason = "pre_exec is how a child joins its cgroup before exec"
    )]
    fn spawn_in(files: Vec<CString>, mut command: Command) -> ChildGuard {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: `join` only opens, writes and closes precomputed paths, and allocates nothing.
        unsafe {
            command.pre_exec(move || crate::cgroup::join(&files));
        }
        ChildGuard(command.spawn().expect("spawn the child"))
    }

    /// This test binary, running only [`connect_child`], which connects `count` times to
    /// `addr` and holds the connections until its stdin closes.
    fn connector(addr: SocketAddr, count: usize) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command
            .args([
                "netlimit::tests::connect_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{addr} {count}"));
        command
    }

    /// Not a test of its own: the body of the child process that [`connector`] starts (and a
    /// no-op otherwise). Prints `netlimit-child: ok ok err:111` (one word per connect), then
    /// holds the connections until stdin closes.
    #[test]
    fn connect_child() {
        let Ok(spec) = std::env::var(CHILD_ENV) else {
            return;
        };
        let (addr, count) = spec.split_once(' ').expect("<address> <count>");
        let addr: SocketAddr = addr.parse().expect("an address");
        let count: usize = count.parse().expect("a count");
        let mut held = Vec::new();
        let mut results = Vec::new();
        for _ in 0..count {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    held.push(stream);
                    results.push("ok".to_string());
                }
                Err(e) => results.push(format!("err:{}", e.raw_os_error().unwrap_or(-1))),
            }
        }
        println!("{MARK} {}", results.join(" "));
        io::stdout().flush().expect("flush");
        let _ = io::stdin().read_to_end(&mut Vec::new());
        drop(held);
    }

    fn expected(ok: usize) -> Vec<String> {
        let mut results = vec!["ok".to_string(); ok];
        results.push(format!("err:{}", libc::ECONNREFUSED));
        results
    }

    #[test]
    fn an_instance_gets_its_limit_and_no_more() {
        let Some(net) = TestNet::new("limit") else {
            return;
        };
        let shared = net.shared();
        assert!(
            net.limits
                .describe()
                .starts_with("nftables table inet stamp_t-limit-"),
            "{}",
            net.limits.describe()
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");

        let limit = net.limits.add("inst-1", 5).expect("add the limit");
        let dir = shared.dir.join("inst-1");
        assert!(dir.is_dir(), "{} was not made", dir.display());
        let listing = net.listing();
        let element = net.element("inst-1");
        assert!(
            listing.contains(&format!("\"{element}\" : jump i_0")),
            "{listing}"
        );
        assert!(
            listing.contains("ct count over 5 reject with tcp reset"),
            "{listing}"
        );
        assert_eq!(
            net.limits.add("inst-1", 5).expect_err("twice").kind(),
            io::ErrorKind::AlreadyExists
        );

        let join = limit.join_file().expect("a group to join when enforcing");
        let mut child = spawn_in(vec![join], connector(addr, 6));
        assert_eq!(child.results(), expected(5));
        assert!(read_pids(&dir).contains(&child.0.id()));
        // The agent (this process) is in no instance's group: not limited.
        let mine: Vec<TcpStream> = (0..6)
            .map(|_| TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("connect"))
            .collect();
        drop(mine);
        assert!(child.finish().success());

        limit.remove();
        let listing = net.listing();
        assert!(!listing.contains(&element), "{listing}");
        assert!(!listing.contains("i_0"), "{listing}");
        assert!(!dir.exists(), "{} is still there", dir.display());
        // Again: nothing to do.
        limit.remove();

        net.limits.remove_all();
        assert!(!net.table_exists(), "the table is still there");
        assert!(
            !shared.dir.exists(),
            "{} is still there",
            shared.dir.display()
        );
        assert!(net.limits.add("inst-2", 5).is_err());
    }

    #[test]
    fn an_existing_group_at_another_level_is_limited_and_left() {
        let Some(net) = TestNet::new("existing") else {
            return;
        };
        let shared = net.shared();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        // Shaped like cgroup.rs's `<agent>/<worker>/<instance>`.
        let dir = shared.dir.join("small-1").join("inst-1");
        make_dir(&dir).expect("make the group");

        let limit = net.limits.add_existing(&dir, 2).expect("add the limit");
        assert_eq!(limit.join_file(), None);
        let listing = net.listing();
        let map = format!("{MAP}_l{}", shared.level + 1);
        assert!(listing.contains(&format!("vmap @{map}")), "{listing}");

        let join = path_cstring(&dir.join("cgroup.procs")).expect("path");
        let mut child = spawn_in(vec![join], connector(addr, 3));
        assert_eq!(child.results(), expected(2));
        assert!(child.finish().success());

        limit.remove();
        let listing = net.listing();
        assert!(
            !listing.contains(&net.element("small-1/inst-1")),
            "{listing}"
        );
        assert!(dir.is_dir(), "a group this module did not make was removed");

        let elsewhere = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            net.limits
                .add_existing(elsewhere.path(), 1)
                .expect_err("not a cgroup")
                .kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn the_next_agent_replaces_the_table_and_removes_the_groups() {
        let Some(first) = TestNet::new("leftovers") else {
            return;
        };
        let dir = first.shared().dir.join("old");
        let _old = first.limits.add("old", 3).expect("add the limit");
        let mut sleep = Command::new("sleep");
        sleep.arg("60");
        let join = path_cstring(&dir.join("cgroup.procs")).expect("path");
        let mut left = spawn_in(vec![join], sleep);

        // The agent died; the next one of the same name starts.
        let next = NetLimits::detect(&first.name);
        assert!(next.enabled(), "{}", next.describe());
        let listing = first.listing();
        assert!(!listing.contains("i_0"), "not replaced: {listing}");
        next.clean_leftovers();
        assert_eq!(left.wait().signal(), Some(libc::SIGKILL));
        assert!(!dir.exists(), "{} is still there", dir.display());

        let again = next.add("old", 3).expect("limit the same name again");
        assert!(first.listing().contains("i_0"));
        again.remove();
        next.remove_all();
        assert!(!first.table_exists());
    }

    /// Prints the cost of a change (for the report; not asserted) and checks that many
    /// instances come and go without leaving anything.
    #[test]
    fn many_limits_come_and_go() {
        let Some(net) = TestNet::new("many") else {
            return;
        };
        const N: usize = 20;
        let started = Instant::now();
        let limits: Vec<InstanceNetLimit> = (0..N)
            .map(|i| net.limits.add(&format!("inst-{i}"), 1920).expect("add"))
            .collect();
        let added = started.elapsed();
        let listing = net.listing();
        assert_eq!(listing.matches(": jump i_").count(), N, "{listing}");
        let started = Instant::now();
        for limit in &limits {
            limit.remove();
        }
        let removed = started.elapsed();
        println!(
            "per instance: add {:.1} ms, remove {:.1} ms",
            added.as_secs_f64() * 1000.0 / N as f64,
            removed.as_secs_f64() * 1000.0 / N as f64
        );
        let listing = net.listing();
        assert!(!listing.contains("i_"), "{listing}");
        assert!(descendants(&net.shared().dir).is_empty());
    }

    #[test]
    fn a_group_removed_behind_our_back_does_not_block_the_others() {
        let Some(net) = TestNet::new("gone") else {
            return;
        };
        let a = net.limits.add("a", 5).expect("add a");
        let b = net.limits.add("b", 5).expect("add b");
        fs::remove_dir(net.shared().dir.join("a")).expect("rmdir a");
        a.remove();
        let listing = net.listing();
        assert!(!listing.contains("i_0"), "{listing}");
        assert!(
            listing.contains(&format!("\"{}\" : jump i_1", net.element("b"))),
            "{listing}"
        );
        b.remove();
        assert!(!net.listing().contains("i_1"));
    }

    #[test]
    fn names_paths_and_mounts() {
        assert_eq!(
            table_name("agent-0123456789abcdef"),
            "stamp_0123456789abcdef"
        );
        assert_eq!(table_name("t-x-1"), "stamp_t-x-1");
        let long = table_name(&"a".repeat(60));
        assert_eq!(long.len(), "stamp_".len() + 16);
        assert!(long.starts_with("stamp_"));

        assert_eq!(
            nft_base(Path::new("/sys/fs/cgroup/unified")),
            Path::new("unified")
        );
        assert_eq!(nft_base(Path::new("/sys/fs/cgroup")), Path::new(""));
        assert_eq!(
            nft_base(Path::new("/mnt/cg2")),
            Path::new("../../../mnt/cg2")
        );
        assert!(nft_string(Path::new("unified/stamp/a\"b")).is_err());
        assert!(nft_string(Path::new("unified/stamp/a b")).is_ok());

        for bad in ["", ".", "..", "a/b", "a\"b", "a b"] {
            assert!(check_name("instance", bad).is_err(), "{bad:?}");
        }
        check_name("instance", "app-web-0-0a1b2c").expect("a usual instance id");
        assert!(
            NetLimits::detect("a/b")
                .describe()
                .starts_with("off: the agent name")
        );

        let mounts = cgroup2_mounts(
            "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:38 /sub/tree /mnt/my\\040cg rw,relatime shared:5 - cgroup2 cgroup2 rw
43 31 0:38 / /mnt/ro ro,relatime - cgroup2 cgroup2 rw
garbage
",
        );
        assert_eq!(
            mounts,
            vec![
                Mount {
                    point: "/sys/fs/cgroup/unified".into(),
                    root_level: 0
                },
                Mount {
                    point: "/mnt/my cg".into(),
                    root_level: 2
                },
            ]
        );

        assert_eq!(
            nft_message(
                "/dev/stdin:1:46-74: Error: cgroupv2 path fails: No such file or directory\n\
                 delete element inet t m { \"x\" }\n                ^^^^^\n"
            ),
            "/dev/stdin:1:46-74: Error: cgroupv2 path fails: No such file or directory | \
             delete element inet t m { \"x\" }"
        );
    }
}
