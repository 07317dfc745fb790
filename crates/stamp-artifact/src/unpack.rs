//! Unpacking an uploaded archive (`.zip` or `.tar.gz`, told apart by magic bytes) into an empty
//! directory. The archive is untrusted: every entry is checked before anything is written for it
//! (no absolute paths, no `..`, nothing written through a symlink, links only to places inside,
//! regular files, directories and links only), the bytes written and the entries are bounded,
//! and on any error what was written is removed again.
//!
//! Only the executable bit of a mode survives: files become 0o755 or 0o644, directories 0o755,
//! whatever the archive says (no setuid, setgid or sticky bits, nothing unreadable).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::ArtifactError;
use crate::paths::{check_symlink_target, entry_path, resolve_in_tree};

/// Bounds on what one archive may unpack to, against zip bombs and inode exhaustion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total bytes of file contents actually written.
    pub max_bytes: u64,
    /// Entries of any kind (files, directories, links).
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 2 * 1024 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

/// The longest symlink target accepted from a zip (where the target is the entry's content).
const MAX_LINK_TARGET: u64 = 4096;
/// Bytes allowed in a tar stream after its end marker (the usual padding to a 10 KiB record,
/// with room to spare); more than this is not something `tar` wrote.
const MAX_TAR_TRAILER: u64 = 1024 * 1024;
/// Tar stream bytes allowed per entry on top of the file contents: headers, GNU long names and
/// PAX records. Bounding the whole decompressed stream also bounds the long names the tar
/// reader keeps in memory.
const TAR_OVERHEAD_PER_ENTRY: u64 = 8 * 1024;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

enum Format {
    Zip,
    TarGz,
}

/// Unpacks the archive at `archive` into `dest`, which is created if missing and must be empty.
/// On error `dest` is left empty (or absent, if this call created it).
pub fn unpack(archive: &Path, dest: &Path, limits: &UnpackLimits) -> Result<(), ArtifactError> {
    let mut file = File::open(archive)?;
    let format = sniff(&mut file)?;
    let created = prepare_dest(dest)?;
    let mut ex = Extractor {
        root: dest.to_path_buf(),
        limits: *limits,
        bytes: 0,
        entries: 0,
        dirs: HashSet::new(),
        links: Vec::new(),
    };
    let (kind, result) = match format {
        Format::Zip => ("zip", unpack_zip(file, &mut ex)),
        Format::TarGz => ("tar.gz", unpack_tar_gz(file, &mut ex)),
    };
    let result = match result.and_then(|()| ex.check_links()) {
        Err(ArtifactError::Corrupt(msg)) => Err(ArtifactError::Corrupt(format!("{kind}: {msg}"))),
        other => other,
    };
    if result.is_err() {
        // The original error is what the user needs; a failed cleanup leaves at worst a
        // directory the caller was going to discard.
        let _ = clear(dest, created);
    }
    result
}

fn sniff(file: &mut File) -> Result<Format, ArtifactError> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match file.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    file.rewind()?;
    match &magic[..n] {
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => Ok(Format::Zip),
        [0x1f, 0x8b, ..] => Ok(Format::TarGz),
        _ => Err(ArtifactError::NotAnArchive),
    }
}

/// Makes sure `dest` is an empty directory; returns whether it had to be created.
fn prepare_dest(dest: &Path) -> Result<bool, ArtifactError> {
    match fs::metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest)?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
        Ok(meta) if !meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("unpack destination {} is not a directory", dest.display()),
        )
        .into()),
        Ok(_) => {
            if fs::read_dir(dest)?.next().is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("unpack destination {} is not empty", dest.display()),
                )
                .into());
            }
            Ok(false)
        }
    }
}

/// Removes what an unpack wrote: `dest` itself if it was created for it, else its contents.
fn clear(dest: &Path, created: bool) -> io::Result<()> {
    if created {
        return fs::remove_dir_all(dest);
    }
    for entry in fs::read_dir(dest)? {
        let entry = entry?;
        // `file_type` does not follow symlinks, so a link to a directory is unlinked, never
        // emptied.
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn unsafe_entry(path: &[u8], why: &'static str) -> ArtifactError {
    ArtifactError::UnsafeEntry {
        path: String::from_utf8_lossy(path).into_owned(),
        why,
    }
}

/// The reader's message with its causes, for [`ArtifactError::Corrupt`].
fn corrupt(e: &dyn std::error::Error) -> ArtifactError {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    ArtifactError::Corrupt(msg)
}

/// Writes entries under the root, keeping the invariants the checks rely on: every directory
/// in `dirs` is a real directory (never a symlink), and nothing is written through a symlink.
struct Extractor {
    root: PathBuf,
    limits: UnpackLimits,
    bytes: u64,
    entries: u64,
    /// Directories (relative to the root) known to be real directories.
    dirs: HashSet<PathBuf>,
    /// Symlinks written, checked again once the whole tree is on disk.
    links: Vec<PathBuf>,
}

impl Extractor {
    fn count_entry(&mut self) -> Result<(), ArtifactError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArtifactError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Creates the parent directories of `rel`, refusing to go through a symlink or a file.
    fn prepare_parent(&mut self, rel: &Path, raw: &[u8]) -> Result<(), ArtifactError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for component in parent.components() {
            prefix.push(component);
            if self.dirs.contains(&prefix) {
                continue;
            }
            let abs = self.root.join(&prefix);
            match fs::symlink_metadata(&abs) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&abs)?;
                    fs::set_permissions(&abs, Permissions::from_mode(0o755))?;
                }
                Err(e) => return Err(e.into()),
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(unsafe_entry(raw, "it would be written through a symlink"));
                }
                Ok(meta) if !meta.is_dir() => {
                    return Err(unsafe_entry(raw, "one of its parent directories is a file"));
                }
                Ok(_) => {}
            }
            self.dirs.insert(prefix.clone());
        }
        Ok(())
    }

    /// Makes room for a file or link at `rel`: an earlier file or link of the same name is
    /// unlinked (later entries win, as with `tar`); a directory is never replaced.
    fn clear_slot(&self, rel: &Path, raw: &[u8]) -> Result<(), ArtifactError> {
        let abs = self.root.join(rel);
        match fs::symlink_metadata(&abs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
            Ok(meta) if meta.is_dir() => Err(unsafe_entry(raw, "it would replace a directory")),
            Ok(_) => Ok(fs::remove_file(&abs)?),
        }
    }

    fn dir(&mut self, rel: &Path, raw: &[u8]) -> Result<(), ArtifactError> {
        if rel.as_os_str().is_empty() {
            return Ok(()); // `./`: the root itself.
        }
        self.prepare_parent(rel, raw)?;
        let abs = self.root.join(rel);
        match fs::symlink_metadata(&abs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&abs)?,
            Err(e) => return Err(e.into()),
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(unsafe_entry(raw, "it would be written through a symlink"));
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(unsafe_entry(
                    raw,
                    "it would replace a file with a directory",
                ));
            }
            Ok(_) => {}
        }
        fs::set_permissions(&abs, Permissions::from_mode(0o755))?;
        self.dirs.insert(rel.to_path_buf());
        Ok(())
    }

    fn file(
        &mut self,
        rel: &Path,
        raw: &[u8],
        mode: u32,
        data: &mut dyn Read,
    ) -> Result<(), ArtifactError> {
        if rel.as_os_str().is_empty() {
            return Err(unsafe_entry(raw, "it names the archive root"));
        }
        self.prepare_parent(rel, raw)?;
        self.clear_slot(rel, raw)?;
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        let abs = self.root.join(rel);
        // `create_new` (O_EXCL) never follows a symlink at the final component.
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&abs)?;
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError(e).into_artifact()),
            };
            self.bytes += n as u64;
            if self.bytes > self.limits.max_bytes {
                return Err(ArtifactError::UnpackedTooLarge {
                    limit: self.limits.max_bytes,
                });
            }
            out.write_all(&buf[..n])?;
        }
        // The creation mode went through the umask; the final one should not.
        out.set_permissions(Permissions::from_mode(mode))?;
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, raw: &[u8], target: &[u8]) -> Result<(), ArtifactError> {
        if rel.as_os_str().is_empty() {
            return Err(unsafe_entry(raw, "it names the archive root"));
        }
        check_symlink_target(rel, target).map_err(|why| unsafe_entry(raw, why))?;
        self.prepare_parent(rel, raw)?;
        self.clear_slot(rel, raw)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), self.root.join(rel))?;
        self.links.push(rel.to_path_buf());
        Ok(())
    }

    /// A hard link to a regular file unpacked earlier (tar link names are relative to the
    /// archive root, not to the link).
    fn hardlink(&mut self, rel: &Path, raw: &[u8], target: &[u8]) -> Result<(), ArtifactError> {
        if rel.as_os_str().is_empty() {
            return Err(unsafe_entry(raw, "it names the archive root"));
        }
        let source = entry_path(target)
            .map_err(|_| unsafe_entry(raw, "it is a hard link whose target leaves the archive"))?;
        if source == rel {
            return Err(unsafe_entry(raw, "it is a hard link to itself"));
        }
        // The source must be reached through real directories and be a regular file: a link
        // to a symlink or through one could reach outside.
        let mut prefix = PathBuf::new();
        for component in source.parent().into_iter().flat_map(Path::components) {
            prefix.push(component);
            if !self.dirs.contains(&prefix) {
                return Err(unsafe_entry(
                    raw,
                    "it is a hard link that is not to a file unpacked before it",
                ));
            }
        }
        match fs::symlink_metadata(self.root.join(&source)) {
            Ok(meta) if meta.file_type().is_file() => {}
            _ => {
                return Err(unsafe_entry(
                    raw,
                    "it is a hard link that is not to a file unpacked before it",
                ));
            }
        }
        self.prepare_parent(rel, raw)?;
        self.clear_slot(rel, raw)?;
        fs::hard_link(self.root.join(&source), self.root.join(rel))?;
        Ok(())
    }

    fn check_links(&self) -> Result<(), ArtifactError> {
        for link in &self.links {
            resolve_in_tree(&self.root, link)
                .map_err(|why| unsafe_entry(link.as_os_str().as_bytes(), why))?;
        }
        Ok(())
    }
}

/// An error while reading the archive (as opposed to writing the tree): the archive is corrupt,
/// unless the tar stream cap tripped.
struct ReadError(io::Error);

impl ReadError {
    fn into_artifact(self) -> ArtifactError {
        match find_capped(&self.0) {
            Some(limit) => ArtifactError::UnpackedTooLarge { limit },
            None => corrupt(&self.0),
        }
    }
}

/// Looks for [`StreamCapped`] anywhere in an error chain (the tar reader wraps the errors of
/// the stream it reads).
fn find_capped(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    if let Some(capped) = e.downcast_ref::<StreamCapped>() {
        return Some(capped.0);
    }
    if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
        return find_capped(inner);
    }
    e.source().and_then(find_capped)
}

fn unpack_zip(file: File, ex: &mut Extractor) -> Result<(), ArtifactError> {
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| corrupt(&e))?;
    // The central directory says how many entries there are: refuse before writing anything.
    if zip.len() as u64 > ex.limits.max_entries {
        return Err(ArtifactError::TooManyEntries {
            limit: ex.limits.max_entries,
        });
    }
    for i in 0..zip.len() {
        ex.count_entry()?;
        let mut entry = zip.by_index(i).map_err(|e| corrupt(&e))?;
        // Zip names use `/`, but some Windows tools write `\`; on Unix that would be part of a
        // file name, so read it as the separator it was meant to be.
        let name = entry.name().replace('\\', "/");
        let raw = name.as_bytes();
        let rel = entry_path(raw).map_err(|why| unsafe_entry(raw, why))?;
        // Belt and braces: the zip crate's own containment check must agree.
        if entry.enclosed_name().is_none() {
            return Err(unsafe_entry(raw, "its path leaves the archive root"));
        }
        let mode = entry.unix_mode();
        match mode.map(|m| m & S_IFMT) {
            Some(S_IFLNK) => {
                let mut target = Vec::new();
                (&mut entry)
                    .take(MAX_LINK_TARGET + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| ReadError(e).into_artifact())?;
                if target.len() as u64 > MAX_LINK_TARGET {
                    return Err(unsafe_entry(raw, "its symlink target is too long"));
                }
                ex.symlink(&rel, raw, &target)?;
            }
            Some(S_IFDIR) => ex.dir(&rel, raw)?,
            None | Some(0 | S_IFREG) if name.ends_with('/') => ex.dir(&rel, raw)?,
            None | Some(0 | S_IFREG) => ex.file(&rel, raw, mode.unwrap_or(0), &mut entry)?,
            Some(_) => {
                return Err(unsafe_entry(
                    raw,
                    "it is a device, fifo or other special file; only files, directories and \
                     symlinks can be deployed",
                ));
            }
        }
    }
    Ok(())
}

fn unpack_tar_gz(file: File, ex: &mut Extractor) -> Result<(), ArtifactError> {
    let cap = ex.limits.max_bytes.saturating_add(
        ex.limits
            .max_entries
            .saturating_mul(TAR_OVERHEAD_PER_ENTRY)
            .saturating_add(MAX_TAR_TRAILER),
    );
    let stream = CappedReader {
        inner: MultiGzDecoder::new(BufReader::new(file)),
        left: cap,
        limit: ex.limits.max_bytes,
    };
    let mut archive = tar::Archive::new(stream);
    let entries = archive
        .entries()
        .map_err(|e| ReadError(e).into_artifact())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ReadError(e).into_artifact())?;
        ex.count_entry()?;
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue; // Archive-wide metadata, nothing to write.
        }
        let rel = entry_path(&raw).map_err(|why| unsafe_entry(&raw, why))?;
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .ok_or_else(|| {
                    ArtifactError::Corrupt(format!(
                        "the link `{}` has no target",
                        String::from_utf8_lossy(&raw)
                    ))
                })
        };
        match kind {
            tar::EntryType::Directory => ex.dir(&rel, &raw)?,
            tar::EntryType::Symlink => {
                let target = link()?;
                ex.symlink(&rel, &raw, &target)?;
            }
            tar::EntryType::Link => {
                let target = link()?;
                ex.hardlink(&rel, &raw, &target)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mode = entry
                    .header()
                    .mode()
                    .map_err(|e| ReadError(e).into_artifact())?;
                ex.file(&rel, &raw, mode, &mut entry)?;
            }
            _ => {
                return Err(unsafe_entry(
                    &raw,
                    "it is a device, fifo or other special file; only files, directories and \
                     symlinks can be deployed",
                ));
            }
        }
    }
    // Read to the end of the gzip stream: a tar.gz cut short after the tar end marker is only
    // noticed by the missing gzip trailer.
    let mut rest = archive.into_inner();
    let trailer = io::copy(&mut (&mut rest).take(MAX_TAR_TRAILER + 1), &mut io::sink())
        .map_err(|e| ReadError(e).into_artifact())?;
    if trailer > MAX_TAR_TRAILER {
        return Err(ArtifactError::Corrupt(
            "unexpected data after the end of the tar archive".into(),
        ));
    }
    Ok(())
}

/// Marks the error a [`CappedReader`] returns; carries the unpack byte limit for the message.
#[derive(Debug)]
struct StreamCapped(u64);

impl std::fmt::Display for StreamCapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the archive unpacks to more than {} bytes", self.0)
    }
}

impl std::error::Error for StreamCapped {}

/// Bounds the decompressed tar stream as a whole (contents, headers, long names), failing with
/// [`StreamCapped`] past the cap.
struct CappedReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Only an error if there is more to read.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            return Err(io::Error::other(StreamCapped(self.limit)));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}
