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
    salt: String,
}

#[derive(Default)]
struct Users {
    by_app: HashMap<AppName, AppUser>,
    taken: HashMap<u32, AppName>,
}

impl Sandbox {
    /// Per-app users when the agent runs as root; `salt` (the agent's directory) keeps two
    /// stamps' users apart.
    pub fn detect(salt: &str) -> Sandbox {
        let root = nix::unistd::geteuid().is_root();
        Sandbox {
            users: root.then(|| Mutex::new(Users::default())),
            salt: salt.to_string(),
        }
    }

    pub fn describe(&self) -> String {
        if self.users.is_some() {
            "on: each app runs as its own user (uid/gid from 1048576), its instance directories 0700".into()
        } else {
            "off: Stamp does not run as root, so every instance runs as Stamp's own user".into()
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

/// Gives `root` and everything under it to `user` (symlinks themselves, not their targets),
/// and makes `root` private to it (0700). Blocking.
pub(crate) fn hand_over(root: &Path, user: AppUser) -> io::Result<()> {
    fn walk(path: &Path, user: AppUser) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))?;
        let meta = std::fs::symlink_metadata(path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path(), user)?;
            }
        }
        Ok(())
    }
    walk(root, user)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
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
            salt: "/data/worker".into(),
        };
        assert_eq!(other.user(&a), Some(ua), "same agent directory, same user");
        let elsewhere = Sandbox {
            users: Some(Mutex::new(Users::default())),
            salt: "/other/worker".into(),
        };
        assert_ne!(elsewhere.user(&a), Some(ua));
        let off = Sandbox {
            users: None,
            salt: String::new(),
        };
        assert_eq!(off.user(&a), None);
        assert!(off.describe().starts_with("off"));
    }
}
