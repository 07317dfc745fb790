//! An instance's process: its directory (the unpacked artifact, `$HOME`, `$TMPDIR`), its
//! environment, its own process group that dies with the agent, and its output forwarded line by
//! line to the app's log.
//!
//! The process group, not the process, is the unit: the command runs under `/bin/sh -c` and may
//! fork, so every signal goes to the whole group, and whatever is left of the group when its
//! leader exits is killed so a restart finds its port free.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use stamp_artifact::{BlobStore, UnpackLimits};
use stamp_logs::LogBook;
use stamp_model::{AppName, Digest, ObservedInstance};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::cgroup::InstanceGroup;
use crate::netlimit::InstanceNetLimit;
use crate::sandbox::AppUser;

/// Longer output lines are split: one runaway line must not hold the agent's memory.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// How long the last output of an exited process may take to reach the log.
const OUTPUT_FLUSH: Duration = Duration::from_secs(1);

/// `instances/<id>/...`
#[derive(Debug, Clone)]
pub(crate) struct InstancePaths {
    pub root: PathBuf,
    /// The unpacked artifact; the process's working directory.
    pub app: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
    /// The process group id, for the next agent if this one dies without cleaning up.
    pub pgid: PathBuf,
}

impl InstancePaths {
    pub fn new(root: &std::path::Path) -> InstancePaths {
        InstancePaths {
            root: root.to_path_buf(),
            app: root.join("app"),
            home: root.join("home"),
            tmp: root.join("tmp"),
            pgid: root.join("pgid"),
        }
    }
}

/// Why an instance's process could not be started. Shown in the app's log, in a crash event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error(
        "artifact {0} is not in this worker's blob store; deploy the release again so it is uploaded"
    )]
    MissingArtifact(Digest),
    #[error("could not unpack artifact {digest}: {source}")]
    Unpack {
        digest: Digest,
        source: stamp_artifact::ArtifactError,
    },
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("could not run `/bin/sh -c {command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("internal error preparing the instance: {0}")]
    Internal(String),
}

/// What confines an instance's processes: its control group and the user it runs as.
pub(crate) struct Jail {
    pub group: InstanceGroup,
    /// None: the agent's own user (the agent is not root).
    pub user: Option<AppUser>,
    /// The instance's outbound connection limit (a no-op where not enforced).
    pub net: InstanceNetLimit,
}

/// Makes the instance's directories, unpacks the artifact into `app/`, and hands the whole
/// instance directory to the app's user (mode 0700). Blocking.
pub(crate) fn prepare(
    paths: &InstancePaths,
    artifacts: &BlobStore,
    digest: &Digest,
    user: Option<AppUser>,
) -> Result<(), StartError> {
    let io = |what, path: &PathBuf| {
        let path = path.clone();
        move |source| StartError::Io { what, path, source }
    };
    // A half-unpacked app from a failed attempt must not mix with the next one.
    match fs::remove_dir_all(&paths.app) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("clear", &paths.app)(e)),
    }
    for dir in [&paths.app, &paths.home, &paths.tmp] {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    if !artifacts.contains(digest) {
        return Err(StartError::MissingArtifact(digest.clone()));
    }
    stamp_artifact::unpack(
        &artifacts.path(digest),
        &paths.app,
        &UnpackLimits::default(),
    )
    .map_err(|source| StartError::Unpack {
        digest: digest.clone(),
        source,
    })?;
    if let Some(user) = user {
        // The instance directory itself stays root's (0711): the app cannot replace the
        // `pgid` file the agent writes there, only what it owns below.
        crate::sandbox::passage(&paths.root).map_err(io("set the permissions of", &paths.root))?;
        for dir in [&paths.app, &paths.home, &paths.tmp] {
            crate::sandbox::hand_over(dir, user).map_err(io("hand over", dir))?;
        }
    }
    Ok(())
}

/// The shell line that runs a Procfile command. A simple command (no lists, pipes, redirections
/// or subshells) is `exec`ed, so the app itself is the shell's process: it gets signals directly
/// and inherits PR_SET_PDEATHSIG, which is not passed on to a forked grandchild. Anything more
/// complex runs as written; its group is still signalled as a whole, and a `kill -9` of Stamp
/// leaves it to the leftover cleanup of the next start.
pub(crate) fn shell_command(command: &str) -> String {
    let compound = command
        .chars()
        .any(|c| matches!(c, ';' | '&' | '|' | '<' | '>' | '(' | ')' | '`' | '\n'))
        || command.trim_start().starts_with("exec ");
    if compound {
        command.to_string()
    } else {
        format!("exec {command}")
    }
}

/// The `PATH` of a sandboxed instance: the system's directories, which every user may search.
/// Stamp's own `PATH` may name directories only root can enter (a pyenv under `/root`, say).
pub(crate) const SANDBOX_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An instance's `PATH` unless its settings say otherwise: the agent's own when the instance runs
/// as the agent's user, [`SANDBOX_PATH`] when it runs as its app's.
fn instance_path(sandboxed: bool) -> std::ffi::OsString {
    if sandboxed {
        return SANDBOX_PATH.into();
    }
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())
}

/// A running (or exited, not yet waited for) instance process and its process group.
pub(crate) struct Process {
    child: Child,
    pid: u32,
    pgid: Pid,
    /// Set once the leader has been reaped; from then on the group id may be reused, so the
    /// group is never signalled again.
    exit: Option<String>,
    output: Vec<JoinHandle<()>>,
}

impl Process {
    /// Spawns `/bin/sh -c <command>` for the instance, in its own process group.
    ///
    /// Must be called from async code on a runtime worker thread, never inside
    /// `spawn_blocking`: PR_SET_PDEATHSIG fires when the *thread* that spawned the child exits,
    /// and blocking-pool threads exit when idle, which would kill a healthy instance. Runtime
    /// worker threads live as long as the runtime, that is as long as the agent.
    pub fn spawn(
        instance: &ObservedInstance,
        paths: &InstancePaths,
        domain: &str,
        logs: &LogBook,
        jail: &Jail,
    ) -> Result<Process, StartError> {
        let spec = &instance.spec;
        let app = &spec.key.app;
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(shell_command(&spec.command))
            .current_dir(&paths.app)
            .env_clear()
            .env("PATH", instance_path(jail.user.is_some()))
            .env("LANG", "C.UTF-8")
            // App settings (PATH and LANG may be overridden), then the platform's variables,
            // which win.
            .envs(&spec.env)
            .env("HOME", &paths.home)
            .env("TMPDIR", &paths.tmp)
            .env("PORT", instance.port.to_string())
            .env("STAMP_APP", app.as_str())
            .env("STAMP_SLOT", spec.slot.as_str())
            .env("STAMP_PROCESS_TYPE", spec.key.process_type.as_str())
            .env("STAMP_INSTANCE_ID", &instance.id.0)
            .env("STAMP_RELEASE", format!("v{}", spec.release))
            .env("WEBSITE_SITE_NAME", app.as_str())
            .env("WEBSITE_INSTANCE_ID", &instance.id.0)
            .env("WEBSITE_SLOT_NAME", spec.slot.as_str())
            .env("WEBSITE_HOSTNAME", hostname(app, &spec.slot, domain))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut join = jail.group.join_files();
        join.extend(jail.net.join_file());
        confine(&mut command, join, jail.user);
        let mut child = command.spawn().map_err(|source| StartError::Spawn {
            command: spec.command.clone(),
            source,
        })?;
        let Some(pid) = child.id() else {
            return Err(StartError::Internal(
                "the process exited before its id was read".into(),
            ));
        };
        let pgid = Pid::from_raw(pid.cast_signed());
        let mut output = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            output.push(tokio::spawn(forward(
                stdout,
                logs.clone(),
                (app.clone(), spec.slot.clone()),
                instance.id.0.clone(),
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            output.push(tokio::spawn(forward(
                stderr,
                logs.clone(),
                (app.clone(), spec.slot.clone()),
                instance.id.0.clone(),
            )));
        }
        Ok(Process {
            child,
            pid,
            pgid,
            exit: None,
            output,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Sends `signal` to the process group, unless its leader has already been reaped.
    pub fn signal(&self, signal: Signal) {
        if self.exit.is_none() {
            // ESRCH: the group is gone already, which is what we want.
            let _ = killpg(self.pgid, signal);
        }
    }

    /// Waits for the leader to exit and describes how it did ("exit status 1", "signal 9
    /// (SIGKILL)"). Kills what is left of the group, and lets the last output reach the log.
    /// Cancel-safe; once exited, returns the same description at once.
    pub async fn wait(&mut self) -> String {
        if let Some(exit) = &self.exit {
            return exit.clone();
        }
        let exit = match self.child.wait().await {
            Ok(status) => describe(status),
            Err(e) => {
                // Not knowing whether it runs, make sure it does not.
                let _ = killpg(self.pgid, Signal::SIGKILL);
                format!("could not wait for the process: {e}")
            }
        };
        // Members of the group may outlive the leader (a backgrounded child of the shell) and
        // hold the port or the output pipes. The leader was just reaped, so its id could in
        // principle be reused by now; the window is microseconds, and a reused id would have to
        // be a process group leader too.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        self.exit = Some(exit.clone());
        for forwarder in self.output.drain(..) {
            let _ = tokio::time::timeout(OUTPUT_FLUSH, forwarder).await;
        }
        exit
    }
}

impl Drop for Process {
    /// A supervisor dropped mid-run (the agent task aborted, the runtime shutting down) must not
    /// leave its instance running.
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(signal) = status.signal() {
        match Signal::try_from(signal) {
            Ok(name) => format!("signal {signal} ({name})"),
            Err(_) => format!("signal {signal}"),
        }
    } else {
        status.to_string()
    }
}

/// In the child, before exec: joins the instance's control groups (writing to the precomputed
/// `join` files), drops to the app's user, and arranges to be SIGKILLed when the thread that
/// spawned it exits, so a `kill -9` of Stamp takes its instances down with it. The death
/// signal is set last because changing credentials clears it.
#[cfg(target_os = "linux")]
#[expect(
    unsafe_code,
    reason = "pre_exec is the only way to join groups, change user and set PR_SET_PDEATHSIG in the child"
)]
fn confine(command: &mut Command, join: Vec<std::ffi::CString>, user: Option<AppUser>) {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    let agent = nix::unistd::getpid().as_raw();
    let nice = crate::priority::app_nice();
    // SAFETY: the closure runs in the forked child before exec. It only makes async-signal-safe
    // syscalls (open, write, close, setpriority, setgroups, setgid, setuid, prctl, getppid) on data prepared
    // before the fork, and builds errors without allocating.
    unsafe {
        command.pre_exec(move || {
            crate::cgroup::join(&join)?;
            // Apps run at Stamp's own starting priority, below its front end's.
            if let Some(nice) = nice {
                crate::priority::set_nice(0, nice)?;
            }
            if let Some(user) = user {
                let gid = Gid::from_raw(user.gid);
                setgroups(&[gid])?;
                setgid(gid)?;
                setuid(Uid::from_raw(user.uid))?;
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The agent died between fork and prctl: the signal will never come, so do not run.
            if libc::getppid() != agent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn confine(_command: &mut Command, _join: Vec<std::ffi::CString>, _user: Option<AppUser>) {}

/// Forwards one output stream to the app's log, a line at a time (lossy UTF-8, lines longer than
/// [`MAX_LINE`] split), until end of file.
/// Copies an instance's output, line by line, into its app's log under its slot.
async fn forward(
    stream: impl AsyncRead + Unpin,
    logs: LogBook,
    (app, slot): (AppName, stamp_model::SlotName),
    id: String,
) {
    let mut reader = BufReader::new(stream);
    let mut line: Vec<u8> = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        logs.instance(&app, &slot, &id, &String::from_utf8_lossy(line));
        line.clear();
    };
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) => buf,
            Err(e) => {
                tracing::debug!("stopped reading the output of {id}: {e}");
                break;
            }
        };
        if buf.is_empty() {
            break;
        }
        let room = MAX_LINE - line.len();
        let window = &buf[..buf.len().min(room)];
        match window.iter().position(|&b| b == b'\n') {
            Some(end) => {
                line.extend_from_slice(&window[..end]);
                reader.consume(end + 1);
                emit(&mut line);
            }
            None => {
                let n = window.len();
                line.extend_from_slice(window);
                reader.consume(n);
                if line.len() >= MAX_LINE {
                    emit(&mut line);
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

/// The instance's public hostname, that of the slot whose configuration it runs (what
/// `WEBSITE_HOSTNAME` is in Azure).
fn hostname(app: &stamp_model::AppName, slot: &stamp_model::SlotName, domain: &str) -> String {
    format!("{}.{domain}", stamp_model::slots::host_label(app, slot))
}

#[cfg(test)]
mod tests {
    #[test]
    fn simple_commands_are_execed() {
        use super::shell_command;
        assert_eq!(shell_command("python3 app.py"), "exec python3 app.py");
        assert_eq!(
            shell_command("bin/server --port $PORT"),
            "exec bin/server --port $PORT"
        );
        for compound in [
            "a && b",
            "a; b",
            "a | b",
            "a > log",
            "(cd x && run)",
            "echo $(date)",
            "exec run",
        ] {
            assert_eq!(shell_command(compound), compound);
        }
    }

    use std::sync::Arc;

    use stamp_model::SystemClock;

    use super::*;

    #[tokio::test]
    async fn output_is_forwarded_line_by_line_with_long_lines_split() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogBook::open(dir.path(), Arc::new(SystemClock)).unwrap();
        let app = AppName::parse("hello").unwrap();
        let mut output = b"one\r\ntwo\n\xffbad\n".to_vec();
        output.extend(std::iter::repeat_n(b'x', MAX_LINE * 2 + 10));
        output.extend(b"\nlast without newline");
        let slot = stamp_model::SlotName::production();
        forward(&output[..], logs.clone(), (app.clone(), slot), "i1".into()).await;
        let lines: Vec<String> = logs
            .last(&app, 100)
            .unwrap()
            .into_iter()
            .map(|l| {
                assert_eq!(l.source, "i1");
                l.text
            })
            .collect();
        let x = |n| "x".repeat(n);
        assert_eq!(
            lines,
            [
                "one".to_string(),
                "two".to_string(),
                "\u{fffd}bad".to_string(),
                x(MAX_LINE),
                x(MAX_LINE),
                x(10),
                "last without newline".to_string(),
            ]
        );
    }

    #[test]
    fn exits_are_described_by_code_or_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
    }
}
