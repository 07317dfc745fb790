//! Per-app log streams: every line an instance prints and every platform event (deploy, start,
//! ready, crash, stop, scale), interleaved in arrival order, like Heroku's log drain.
//!
//! An app's slots share its stream: each line names the slots it concerns (an instance's line,
//! the slot whose configuration the instance runs; a swap's events, both slots), and a line that
//! names none concerns the whole app, so `stamp logs APP --slot S` shows it too.
//!
//! Each app has one JSON-lines file `<dir>/<app>.log` (rotated to `<app>.log.1` past
//! [`ROTATE_BYTES`]) and a broadcast channel for followers (`stamp logs --tail`). Log lines are
//! not fsynced: they are diagnostics, not acknowledged state.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use stamp_model::{AppName, Millis, SlotName, WallClock};
use tokio::sync::broadcast;

/// A log file is rotated once it grows past this size.
pub const ROTATE_BYTES: u64 = 8 * 1024 * 1024;
/// The source name of platform events.
pub const PLATFORM: &str = "stamp";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Unix milliseconds.
    pub ts: Millis,
    /// `stamp` for platform events, otherwise the instance id that printed the line.
    pub source: String,
    pub text: String,
    /// The slots the line concerns; empty: the whole app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<String>,
}

impl LogLine {
    /// Whether the line belongs in slot `slot`'s view of the stream.
    pub fn concerns(&self, slot: &str) -> bool {
        self.slots.is_empty() || self.slots.iter().any(|s| s == slot)
    }
}

struct AppLog {
    file: Option<File>,
    size: u64,
    tx: broadcast::Sender<LogLine>,
}

/// Handle to every app's log; cheap to clone.
#[derive(Clone)]
pub struct LogBook {
    dir: PathBuf,
    clock: Arc<dyn WallClock>,
    apps: Arc<Mutex<HashMap<AppName, AppLog>>>,
}

impl LogBook {
    pub fn open(dir: &Path, clock: Arc<dyn WallClock>) -> io::Result<LogBook> {
        std::fs::create_dir_all(dir)?;
        Ok(LogBook {
            dir: dir.to_path_buf(),
            clock,
            apps: Arc::default(),
        })
    }

    fn path(&self, app: &AppName) -> PathBuf {
        self.dir.join(format!("{app}.log"))
    }

    /// Appends a line an instance printed; `slot` is the slot whose configuration it runs.
    pub fn instance(&self, app: &AppName, slot: &SlotName, instance: &str, text: &str) {
        self.append(app, instance, text, vec![slot.to_string()]);
    }

    /// Appends a platform event about the whole app.
    pub fn event(&self, app: &AppName, text: &str) {
        self.append(app, PLATFORM, text, Vec::new());
    }

    /// Appends a platform event about some of the app's slots (a swap's: both).
    pub fn slot_event(&self, app: &AppName, slots: &[&SlotName], text: &str) {
        let slots = slots.iter().map(|s| s.to_string()).collect();
        self.append(app, PLATFORM, text, slots);
    }

    fn append(&self, app: &AppName, source: &str, text: &str, slots: Vec<String>) {
        let line = LogLine {
            ts: self.clock.now(),
            source: source.to_string(),
            text: text.to_string(),
            slots,
        };
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        let log = apps.entry(app.clone()).or_insert_with(|| AppLog {
            file: None,
            size: 0,
            tx: broadcast::channel(1024).0,
        });
        if let Err(e) = self.write(app, log, &line) {
            tracing::warn!("failed to write the log of {app}: {e:#}");
            log.file = None;
        }
        let _ = log.tx.send(line);
    }

    fn write(&self, app: &AppName, log: &mut AppLog, line: &LogLine) -> io::Result<()> {
        if log.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(app))?;
            log.size = f.metadata()?.len();
            log.file = Some(f);
        }
        if log.size > ROTATE_BYTES {
            log.file = None;
            std::fs::rename(self.path(app), self.dir.join(format!("{app}.log.1")))?;
            return self.write(app, log, line);
        }
        let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        if let Some(f) = log.file.as_mut() {
            f.write_all(&bytes)?;
        }
        log.size += bytes.len() as u64;
        Ok(())
    }

    /// The last `n` lines of the app's log, oldest first.
    pub fn last(&self, app: &AppName, n: usize) -> io::Result<Vec<LogLine>> {
        self.last_matching(app, n, |_| true)
    }

    /// The last `n` lines of the app's log that `keep` accepts, oldest first.
    pub fn last_matching(
        &self,
        app: &AppName,
        n: usize,
        keep: impl Fn(&LogLine) -> bool,
    ) -> io::Result<Vec<LogLine>> {
        let mut lines = std::collections::VecDeque::with_capacity(n.min(10_000));
        if n == 0 {
            return Ok(Vec::new());
        }
        for path in [self.dir.join(format!("{app}.log.1")), self.path(app)] {
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for raw in BufReader::new(f).lines() {
                let Ok(line) = serde_json::from_str::<LogLine>(&raw?) else {
                    continue;
                };
                if !keep(&line) {
                    continue;
                }
                if lines.len() == n {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        }
        Ok(lines.into())
    }

    /// Lines appended from now on.
    pub fn subscribe(&self, app: &AppName) -> broadcast::Receiver<LogLine> {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        apps.entry(app.clone())
            .or_insert_with(|| AppLog {
                file: None,
                size: 0,
                tx: broadcast::channel(1024).0,
            })
            .tx
            .subscribe()
    }

    /// Forgets an app's log (the app was deleted).
    pub fn remove(&self, app: &AppName) {
        self.apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(app);
        let _ = std::fs::remove_file(self.path(app));
        let _ = std::fs::remove_file(self.dir.join(format!("{app}.log.1")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Fixed(AtomicU64);
    impl WallClock for Fixed {
        fn now(&self) -> Millis {
            Millis(self.0.fetch_add(1, Ordering::SeqCst))
        }
    }

    #[test]
    fn appends_reads_back_and_broadcasts() {
        let dir = tempfile::tempdir().unwrap();
        let book = LogBook::open(dir.path(), Arc::new(Fixed(AtomicU64::new(100)))).unwrap();
        let app = AppName::parse("hello").unwrap();
        let mut rx = book.subscribe(&app);
        book.event(&app, "deploy v1");
        book.instance(
            &app,
            &SlotName::production(),
            "hello-web-0-abc",
            "listening",
        );
        book.event(&app, "ready");
        let got: Vec<String> = book
            .last(&app, 2)
            .unwrap()
            .into_iter()
            .map(|l| format!("{} {}: {}", l.ts.0, l.source, l.text))
            .collect();
        assert_eq!(got, ["101 hello-web-0-abc: listening", "102 stamp: ready"]);
        assert_eq!(rx.try_recv().unwrap().text, "deploy v1");
        // A new book on the same directory (a restart) still has the history.
        let again = LogBook::open(dir.path(), Arc::new(Fixed(AtomicU64::new(0)))).unwrap();
        assert_eq!(again.last(&app, 10).unwrap().len(), 3);
        again.remove(&app);
        assert!(again.last(&app, 10).unwrap().is_empty());
    }

    #[test]
    fn a_slot_sees_its_lines_and_the_apps() {
        let dir = tempfile::tempdir().unwrap();
        let book = LogBook::open(dir.path(), Arc::new(Fixed(AtomicU64::new(0)))).unwrap();
        let app = AppName::parse("hello").unwrap();
        let (prod, staging) = (SlotName::production(), SlotName::parse("staging").unwrap());
        book.event(&app, "app created");
        book.slot_event(&app, &[&staging], "deploy to staging");
        book.instance(&app, &prod, "hello-web-0", "serving production");
        book.slot_event(&app, &[&staging, &prod], "swap");
        let view = |slot: &str| -> Vec<String> {
            book.last_matching(&app, 10, |l| l.concerns(slot))
                .unwrap()
                .into_iter()
                .map(|l| l.text)
                .collect()
        };
        assert_eq!(
            view("staging"),
            ["app created", "deploy to staging", "swap"]
        );
        assert_eq!(
            view("production"),
            ["app created", "serving production", "swap"]
        );
        // The last n of the slot's lines, not of the whole stream.
        let one = book
            .last_matching(&app, 1, |l| l.concerns("staging"))
            .unwrap();
        assert_eq!(one[0].text, "swap");
    }
}
