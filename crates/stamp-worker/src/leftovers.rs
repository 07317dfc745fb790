//! Killing what a previous agent on the same directory left running when it died without
//! cleaning up (a `kill -9` on a system where PR_SET_PDEATHSIG did not apply, a power cut that
//! left pgid files behind).
//!
//! A pgid file can be stale: after a reboot the id may belong to an unrelated process group. So
//! a group is killed only if one of its members carries the instance's own
//! `STAMP_INSTANCE_ID=<id>` in its environment (read from `/proc`); without `/proc`, nothing is
//! killed.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long killed groups get to disappear before the new agent goes on.
const VANISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Kills the process groups recorded in `<instances>/<id>/pgid` that are still that instance's,
/// and waits (bounded) until they are gone.
pub(crate) async fn kill(instances: &Path) {
    let Ok(entries) = std::fs::read_dir(instances) else {
        return;
    };
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let Ok(text) = std::fs::read_to_string(entry.path().join("pgid")) else {
            continue;
        };
        let Ok(pgid) = text.trim().parse::<i32>() else {
            continue;
        };
        if pgid <= 1 {
            continue;
        }
        if !members(pgid).iter().any(|&pid| has_marker(pid, &id)) {
            continue;
        }
        tracing::warn!(
            "killing process group {pgid} of instance {id}, left over by a previous agent"
        );
        if killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok() {
            killed.push(pgid);
        }
    }
    let deadline = tokio::time::Instant::now() + VANISH_TIMEOUT;
    while killed.iter().any(|&pgid| !members(pgid).is_empty()) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("left-over process groups {killed:?} are still there after SIGKILL");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Live (not zombie) processes in process group `pgid`, from `/proc/<pid>/stat`.
fn members(pgid: i32) -> Vec<i32> {
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so parse
            // from the last ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
            pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
        })
        .collect()
}

fn has_marker(pid: i32, id: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let marker = format!("STAMP_INSTANCE_ID={id}");
    environ
        .split(|&b| b == 0)
        .any(|var| var == marker.as_bytes())
}
