//! Checks on the names inside an archive: which entry paths and link targets stay inside the
//! unpack root. Pure functions over bytes, except [`resolve_in_tree`], which follows the symlinks
//! already on disk under the root.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// How many symlinks one resolution may follow before it is called a loop (Linux's own limit).
const MAX_HOPS: u32 = 40;

/// The relative path an entry name stands for, made of normal components only (`.` and empty
/// components dropped). An empty result names the root itself (`./`), which callers accept only
/// for directories.
pub(crate) fn entry_path(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.contains(&0) {
        return Err("its name contains a NUL byte");
    }
    if raw.first() == Some(&b'/') {
        return Err("it is an absolute path");
    }
    let mut path = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("its path has a `..` component"),
            name => path.push(OsStr::from_bytes(name)),
        }
    }
    Ok(path)
}

/// Checks that a symlink at `link` (relative to the root) whose target is `target` points inside
/// the root when the target is resolved lexically from the link's directory.
pub(crate) fn check_symlink_target(link: &Path, target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("it is a symlink with an empty target");
    }
    if target.contains(&0) {
        return Err("its symlink target contains a NUL byte");
    }
    if target.first() == Some(&b'/') {
        return Err("it is a symlink to an absolute path, outside the archive");
    }
    let mut depth = link.parent().map_or(0, |p| p.components().count());
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("it is a symlink whose target leaves the archive root")?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Resolves the symlink at `link` (relative to `root`) through every symlink it meets under the
/// root, checking at each step that the walk stays inside. The lexical check alone can be fooled
/// by a chain (`up -> .` is fine, `d/up -> ..` is fine, but `x -> d/up/..` climbs out), so this
/// runs once everything is on disk. A dangling tail is fine: nothing can be written through it.
pub(crate) fn resolve_in_tree(root: &Path, link: &Path) -> Result<(), &'static str> {
    const ESCAPES: &str = "it is a symlink that leads outside the archive through other symlinks";
    // `at` is always a chain of real directories under the root (symlinks are replaced by
    // their targets as they are met), so `root/at/name` can be inspected with lstat.
    let mut at: Vec<PathBuf> = Vec::new();
    let mut pending: Vec<PathBuf> = vec![link.to_path_buf()];
    let mut hops = 0;
    let mut dangling = false;
    while let Some(next) = pending.pop() {
        let mut components: Vec<Component<'_>> = next.components().collect();
        components.reverse();
        while let Some(c) = components.pop() {
            match c {
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return Err(ESCAPES),
                Component::ParentDir => {
                    at.pop().ok_or(ESCAPES)?;
                }
                Component::Normal(name) => {
                    at.push(PathBuf::from(name));
                    if dangling {
                        continue;
                    }
                    let here: PathBuf = at.iter().collect();
                    match std::fs::symlink_metadata(root.join(&here)) {
                        Ok(meta) if meta.file_type().is_symlink() => {
                            hops += 1;
                            if hops > MAX_HOPS {
                                return Err("it is part of a symlink loop");
                            }
                            let target = std::fs::read_link(root.join(&here))
                                .map_err(|_| "its symlink target could not be read back")?;
                            at.pop();
                            // Resolve the target first, then what is left of this path.
                            let left: PathBuf = components.iter().rev().collect();
                            pending.push(left);
                            pending.push(target);
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => dangling = true,
                        Err(_) => return Err("its symlink target could not be inspected"),
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: Result<&str, &str>) {
        let got = entry_path(raw.as_bytes());
        let got = got.as_ref().map(|p| p.to_str().unwrap_or("<non-utf8>"));
        assert_eq!(got, expected.as_ref().map(|s| *s), "entry name {raw:?}");
    }

    #[test]
    fn entry_paths_stay_relative_and_inside() {
        check("Procfile", Ok("Procfile"));
        check("./app/main.py", Ok("app/main.py"));
        check("a//b/./c/", Ok("a/b/c"));
        check("./", Ok(""));
        check("../evil", Err("its path has a `..` component"));
        check("a/../../evil", Err("its path has a `..` component"));
        check("a/../b", Err("its path has a `..` component"));
        check("/etc/evil", Err("it is an absolute path"));
        check("a\0b", Err("its name contains a NUL byte"));
    }

    #[test]
    fn symlink_targets_resolve_from_the_link_directory() {
        let ok =
            |link: &str, target: &str| check_symlink_target(Path::new(link), target.as_bytes());
        assert!(ok("a/b/link", "../../x").is_ok());
        assert!(ok("a/b/link", "../c/./d").is_ok());
        assert!(ok("link", ".").is_ok());
        assert!(ok("a/b/link", "../../../x").is_err());
        assert!(ok("link", "../../outside").is_err());
        assert!(ok("link", "/etc").is_err());
        assert!(ok("link", "").is_err());
    }

    #[test]
    fn chains_of_inside_symlinks_that_climb_out_are_caught() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let r = root.path();
        std::fs::create_dir(r.join("d"))?;
        std::os::unix::fs::symlink("..", r.join("d/up"))?;
        std::os::unix::fs::symlink("d/up/..", r.join("x"))?;
        std::os::unix::fs::symlink("d/up/d", r.join("fine"))?;
        std::os::unix::fs::symlink("loop2", r.join("loop1"))?;
        std::os::unix::fs::symlink("loop1", r.join("loop2"))?;
        std::os::unix::fs::symlink("missing/../../..", r.join("dangling"))?;
        assert!(resolve_in_tree(r, Path::new("d/up")).is_ok());
        assert!(resolve_in_tree(r, Path::new("fine")).is_ok());
        assert!(resolve_in_tree(r, Path::new("x")).is_err());
        assert!(resolve_in_tree(r, Path::new("loop1")).is_err());
        assert!(resolve_in_tree(r, Path::new("dangling")).is_err());
        Ok(())
    }
}
