//! Packing a directory into a `.tar.gz` for upload, as `stamp deploy <dir>` does. The archive
//! is reproducible (sorted entries, mtime 0, owner 0, modes reduced to 0o755/0o644) and holds
//! only what [`crate::unpack`] accepts, so a link that would be refused server-side is refused
//! here, before the upload.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::ArtifactError;
use crate::paths::check_symlink_target;

/// Directories never worth uploading: version control and Cargo build output.
fn skipped(name: &std::ffi::OsStr, is_dir: bool) -> bool {
    // `.git` is a file in worktrees and submodules, so it is skipped whatever it is.
    name == ".git" || (is_dir && name == "target")
}

/// Writes a `.tar.gz` of the contents of `dir` (paths relative to it) to `out`; returns how
/// many entries it holds. Sockets, fifos and devices are left out: they cannot be deployed.
pub fn pack_dir(dir: &Path, out: &mut dyn Write) -> Result<u64, ArtifactError> {
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    let mut count = 0;
    add_children(&mut tar, dir, Path::new(""), &mut count)?;
    tar.into_inner()?.finish()?.flush()?;
    Ok(count)
}

fn add_children<W: Write>(
    tar: &mut tar::Builder<W>,
    abs: &Path,
    rel: &Path,
    count: &mut u64,
) -> Result<(), ArtifactError> {
    let mut children = fs::read_dir(abs)?.collect::<io::Result<Vec<_>>>()?;
    children.sort_by_key(fs::DirEntry::file_name);
    for child in children {
        let name = child.file_name();
        let abs = child.path();
        let rel = rel.join(&name);
        // `symlink_metadata`: a symlink is packed as a symlink, never followed.
        let meta = fs::symlink_metadata(&abs)?;
        let kind = meta.file_type();
        if skipped(&name, kind.is_dir()) {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, &rel, io::empty())?;
            *count += 1;
            add_children(tar, &abs, &rel, count)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&abs)?;
            check_symlink_target(&rel, target.as_os_str().as_bytes()).map_err(|why| {
                ArtifactError::UnsafeEntry {
                    path: rel.display().to_string(),
                    why,
                }
            })?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, &rel, &target)?;
            *count += 1;
        } else if kind.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if exec { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            tar.append_data(&mut header, &rel, File::open(&abs)?)?;
            *count += 1;
        }
    }
    Ok(())
}
