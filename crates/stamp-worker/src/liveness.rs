//! Which agents on this host are alive, so that one starting can remove what dead ones left:
//! control groups and nftables tables named after an agent whose directory is gone (a test's
//! temporary directory, a stamp that was deleted) would otherwise stay until reboot.
//!
//! Each agent holds an exclusive `flock` on `/run/stamp/agents/<agent>.lock` for as long as its
//! task runs; the kernel releases it when the process dies, however it dies. An agent's groups
//! whose lock nobody holds belong to a dead agent. The lock is taken before the agent creates
//! any group, so a starting agent is never mistaken for a dead one.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

const LOCKS: &str = "/run/stamp/agents";

/// Where agents' groups live, per hierarchy (v1 controllers, v2, v2 beside v1).
const GROUP_ROOTS: &[&str] = &[
    "/sys/fs/cgroup/memory/stamp",
    "/sys/fs/cgroup/cpu/stamp",
    "/sys/fs/cgroup/cpu,cpuacct/stamp",
    "/sys/fs/cgroup/pids/stamp",
    "/sys/fs/cgroup/unified/stamp",
    "/sys/fs/cgroup/stamp",
];

/// Held while the agent runs.
pub(crate) struct AgentLock {
    _lock: Flock<File>,
}

fn lock_path(agent: &str) -> PathBuf {
    Path::new(LOCKS).join(format!("{agent}.lock"))
}

/// Takes `agent`'s lock. None when the host has no writable `/run` (then nothing is cleaned
/// for others either) or another live process holds it.
pub(crate) fn claim(agent: &str) -> Option<AgentLock> {
    std::fs::create_dir_all(LOCKS).ok()?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(agent))
        .ok()?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
    Some(AgentLock { _lock: lock })
}

/// Agents other than `me` that left groups behind and hold no lock: dead. Each is returned
/// with its lock taken, so no agent of that name can start while its leftovers are removed.
pub(crate) fn dead_agents(me: &str) -> Vec<(String, AgentLock)> {
    let mut names: Vec<String> = GROUP_ROOTS
        .iter()
        .filter_map(|root| std::fs::read_dir(root).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("agent-") && name != me)
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let lock = claim(&name)?;
            Some((name, lock))
        })
        .collect()
}

/// Releases a dead agent's lock once its leftovers are gone. The file stays: unlinking it
/// would let an agent that opened it just before lock a file nobody else can see, and then be
/// taken for dead itself.
pub(crate) fn bury(lock: AgentLock) {
    drop(lock);
}

/// Takes `agent`'s lock, waiting (up to `patience`) while another agent holds it, e.g. one
/// removing what a dead agent of this name left. Err when `/run` is writable but the lock stays
/// taken: running without it would let later agents take this one for dead. Ok(None) when the
/// host has no writable `/run`.
pub(crate) fn claim_patiently(
    agent: &str,
    patience: std::time::Duration,
) -> std::io::Result<Option<AgentLock>> {
    if std::fs::create_dir_all(LOCKS).is_err() {
        return Ok(None);
    }
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(lock) = claim(agent) {
            return Ok(Some(lock));
        }
        if std::time::Instant::now() >= deadline {
            return Err(std::io::Error::other(format!(
                "another process holds {}: is another stamp running on the same data directory?",
                lock_path(agent).display()
            )));
        }
        crate::cgroup::pause(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_marks_an_agent_alive() {
        if std::fs::create_dir_all(LOCKS).is_err() {
            eprintln!("no writable {LOCKS}; skipping");
            return;
        }
        let name = format!("agent-livenesstest{}", std::process::id());
        let held = claim(&name).expect("first claim");
        assert!(claim(&name).is_none(), "a second claim while held");
        drop(held);
        let again = claim(&name).expect("claim after release");
        bury(again);
    }
}
