//! Scheduling priority: `stamp up` (front end, agent, controller) runs at a higher priority than
//! the app instances it serves, and the instances at the priority Stamp was started with.
//!
//! On a machine where the front end shares cores with apps, every request wakes an instance,
//! and a woken instance at the same priority preempts the front end mid-batch: the two then take
//! turns request by request, a context switch each time. With the front end ahead, it finishes
//! the requests at hand, the instance then answers them together, and both spend less CPU per
//! request (`bench/README.md` has the numbers). The front end also serves every app, so one
//! busy app must not slow the routing of the others. This is what `nginx`'s `worker_priority`
//! is for; Stamp sets it by default (`stamp up --nice`).
//!
//! Nice orders threads that compete in one CPU control group. Instances run in Stamp's own
//! groups; when Stamp itself runs in a group of its own (a systemd service), the kernel weighs
//! the two groups first, and the service's `CPUWeight=` is the setting that counts.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

/// No value set: instances keep what they inherit.
const UNSET: i32 = i32::MIN;

static APP_NICE: AtomicI32 = AtomicI32::new(UNSET);

/// The nice value instances started from now on run at.
pub fn set_app_nice(nice: i32) {
    APP_NICE.store(nice, Ordering::Relaxed);
}

/// What [`set_app_nice`] set, if anything.
pub(crate) fn app_nice() -> Option<i32> {
    let nice = APP_NICE.load(Ordering::Relaxed);
    (nice != UNSET).then_some(nice)
}

/// This process's nice value (that of its main thread).
pub fn own_nice() -> io::Result<i32> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which may hold spaces: nice is the 19th field overall.
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.split(' ').nth(16))
        .and_then(|nice| nice.parse().ok())
        .ok_or_else(|| io::Error::other("cannot read the nice value from /proc/self/stat"))
}

/// Sets the nice value of every thread of this process (threads started later inherit it from
/// the thread that starts them). Lowering the value needs root or `CAP_SYS_NICE`. On an error
/// the threads already changed are put back at `previous`, as far as that is allowed.
pub fn set_own_nice(nice: i32, previous: i32) -> io::Result<()> {
    let mut changed = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Ok(tid) = entry?.file_name().to_string_lossy().parse::<libc::id_t>() else {
            continue;
        };
        match set_nice(tid, nice) {
            Ok(()) => changed.push(tid),
            // A thread that ended since the listing.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                for tid in changed {
                    let _ = set_nice(tid, previous);
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// `setpriority(PRIO_PROCESS, id, nice)`: on Linux, `id` is a thread (0: the calling one).
#[expect(unsafe_code, reason = "setpriority has no safe wrapper in nix")]
pub(crate) fn set_nice(id: libc::id_t, nice: i32) -> io::Result<()> {
    // SAFETY: a plain syscall on integers; async-signal-safe, so also fit for pre_exec.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, id, nice) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_nice_is_read_and_set_for_every_thread() {
        let before = own_nice().expect("nice of this process");
        // Raising the value (lower priority) needs no privilege.
        let lower = (before + 1).min(19);
        let spawned = std::thread::spawn(move || {
            set_own_nice(lower, before).expect("set nice");
            // The main thread's value, changed by this other thread.
            own_nice().expect("nice")
        });
        assert_eq!(spawned.join().expect("thread"), lower);
        // Back down needs privilege; the tests run as root here, elsewhere this may fail.
        let _ = set_own_nice(before, lower);
    }
}
