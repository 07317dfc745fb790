//! Who an instance runs as. When the agent runs as root, each app gets its own unprivileged
//! user and group: a uid and gid from a range no distribution hands out (2^20 to 2^31), derived
//! from the agent's directory and the app's name, so the same app gets the same user across
//! restarts and two stamps on one machine do not share users. No `/etc/passwd` entry is made
//! (nothing to clean up, nothing to collide with); the kernel needs none, and instances get
//! `$HOME` and `$TMPDIR` from the environment.
//!
//! The instance's own directory (`instances/<id>`, with its unpacked app, home and tmp) belongs
//! to that user with mode 0700, so no other app can enter it; the agent's directories leading
//! there are 0711 (enter, not list). What is not isolated: the network (an app can connect to
//! another app's loopback port), process visibility (`/proc` lists every process; it cannot
//! signal or trace another user's), and world-readable files of the host.
//!
//! Without root the agent cannot change users: every instance runs as the agent's user, and
//! [`Sandbox::describe`] says so.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use stamp_model::AppName;

/// The first uid (and gid) given to apps: above any range `useradd` and the usual
/// subordinate-id ranges (100000 + 65536 per user) use on small hosts.
const FIRST_ID: u32 = 1 << 20;
/// How many ids apps are spread over.
const SPAN: u32 = (1 << 31) - FIRST_ID;

/// An app's user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AppUser {
    pub uid: u32,
    pub gid: u32,
}

pub(crate) struct Sandbox {
    /// None when the agent is not root.
    users: Option<Mutex<Users>>,
    /// Why apps run as Stamp's user, when they do.
    off: Option<String>,
    salt: String,
}

#[derive(Default)]
struct Users {
    by_app: HashMap<AppName, AppUser>,
    taken: HashMap<u32, AppName>,
}

impl Sandbox {
    /// Per-app users when the agent runs as root and the apps' users can reach `dir` (the
    /// agent's directory, also the salt that keeps two stamps' users apart).
    pub fn detect(dir: &Path) -> Sandbox {
        let salt = dir.to_string_lossy().into_owned();
        let off = if !nix::unistd::geteuid().is_root() {
            Some("Stamp does not run as root, so every instance runs as Stamp's own user".into())
        } else {
            unreachable(dir)
        };
        Sandbox {
            users: off.is_none().then(|| Mutex::new(Users::default())),
            off,
            salt,
        }
    }

    pub fn describe(&self) -> String {
        match &self.off {
            None => "on: each app runs as its own user (uid/gid from 1048576), its instance directories 0700".into(),
            Some(why) => format!("off: {why}"),
        }
    }

    /// The user `app`'s instances run as, or None (not root: run as the agent's user).
    pub fn user(&self, app: &AppName) -> Option<AppUser> {
        let mut users = self
            .users
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(user) = users.by_app.get(app) {
            return Some(*user);
        }
        // Hash, and on the rare collision with another app of this agent, rehash.
        let mut attempt = 0u32;
        let id = loop {
            let key = format!("{}\0{}\0{attempt}", self.salt, app);
            let id = FIRST_ID + (fnv1a(key.as_bytes()) % u64::from(SPAN)) as u32;
            if !users.taken.contains_key(&id) {
                break id;
            }
            attempt += 1;
        };
        let user = AppUser { uid: id, gid: id };
        users.by_app.insert(app.clone(), user);
        users.taken.insert(id, app.clone());
        Some(user)
    }
}

/// FNV-1a: stable across Rust versions (std's hasher is not), so an app keeps its user.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Gives `dir` and everything under it to `user` (symlinks themselves, not their targets),
/// and makes `dir` private to it (0700). Blocking.
///
/// Bottom-up: a directory is given away only after everything in it, so while the walk runs
/// every directory on its paths still belongs to root and no process of the app (another
/// instance of it may be running) can swap a part of a path for a symlink.
pub(crate) fn hand_over(dir: &Path, user: AppUser) -> io::Result<()> {
    fn walk(path: &Path, user: AppUser) -> io::Result<()> {
        if std::fs::symlink_metadata(path)?.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path(), user)?;
            }
        }
        std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    walk(dir, user)
}

/// Why the apps' users could not reach their instance directories under `dir`: the first
/// ancestor others may not enter (e.g. `/root`, 0700, when the data directory is the default
/// `~/.stamp` of root). None when every ancestor is enterable.
pub(crate) fn unreachable(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let mut ancestors: Vec<&Path> = dir.ancestors().skip(1).collect();
    ancestors.reverse();
    for a in ancestors {
        let mode = std::fs::metadata(a).ok()?.permissions().mode();
        if mode & 0o001 == 0 {
            return Some(format!(
                "{} (mode {:o}) is not enterable by other users, so apps' own users could not reach their directories; start Stamp with a data directory outside it (e.g. --data-dir /var/lib/stamp) to run each app as its own user",
                a.display(),
                mode & 0o7777
            ));
        }
    }
    None
}

/// Makes a directory enterable but not listable by others (0711): the agent's directories on
/// the way to the instances' own.
pub(crate) fn passage(dir: &Path) -> io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_get_stable_distinct_users() {
        let users = Sandbox {
            users: Some(Mutex::new(Users::default())),
            off: None,
            salt: "/data/worker".into(),
        };
        let a = AppName::parse("alpha").unwrap();
        let b = AppName::parse("beta").unwrap();
        let ua = users.user(&a).unwrap();
        let ub = users.user(&b).unwrap();
        assert_ne!(ua, ub);
        assert_eq!(users.user(&a), Some(ua));
        assert!(ua.uid >= FIRST_ID && ua.uid < FIRST_ID + SPAN);
        assert_eq!(ua.uid, ua.gid);
        let other = Sandbox {
            users: Some(Mutex::new(Users::default())),
            off: None,
            salt: "/data/worker".into(),
        };
        assert_eq!(other.user(&a), Some(ua), "same agent directory, same user");
        let elsewhere = Sandbox {
            users: Some(Mutex::new(Users::default())),
            off: None,
            salt: "/other/worker".into(),
        };
        assert_ne!(elsewhere.user(&a), Some(ua));
        let off = Sandbox {
            users: None,
            off: Some("not root".into()),
            salt: String::new(),
        };
        assert_eq!(off.user(&a), None);
        assert!(off.describe().starts_with("off"));
    }
}
