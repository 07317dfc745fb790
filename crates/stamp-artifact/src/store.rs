//! The content-addressed blob store: deploy archives kept as `<root>/sha256/<hex>`, written
//! through a temp file in `<root>/tmp` (same filesystem, so the final rename is atomic) and
//! fsynced before they are acknowledged, so a blob that `finish` returned survives a crash.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use stamp_model::Digest;
use tempfile::NamedTempFile;

use crate::ArtifactError;

/// Handle to the blob store under one root directory; cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> io::Result<BlobStore> {
        fs::create_dir_all(root.join("sha256"))?;
        fs::create_dir_all(root.join("tmp"))?;
        Ok(BlobStore {
            root: root.to_path_buf(),
        })
    }

    /// Starts a new blob that may grow to at most `limit` bytes.
    pub fn writer(&self, limit: u64) -> Result<BlobWriter, ArtifactError> {
        Ok(BlobWriter {
            tmp: Some(NamedTempFile::new_in(self.root.join("tmp"))?),
            hasher: Sha256::new(),
            len: 0,
            limit,
            blobs: self.root.join("sha256"),
        })
    }

    /// Where the blob with this digest lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.as_str())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Stores a copy of the file at `path`; returns its digest and length.
    pub fn put_file(&self, path: &Path, limit: u64) -> Result<(Digest, u64), ArtifactError> {
        let mut file = File::open(path)?;
        let mut writer = self.writer(limit)?;
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            writer.write(&buf[..n])?;
        }
        writer.finish()
    }

    /// Removes temp files left by a crash. Call it at startup, before any writer exists: it
    /// would also remove the temp files of writers in progress.
    pub fn clean_tmp(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join("tmp"))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

/// A blob being written: hashes as it goes, so the digest is known without reading it back.
/// Dropping it before [`BlobWriter::finish`] removes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    /// `None` once the limit was passed: the temp file is already gone.
    tmp: Option<NamedTempFile>,
    hasher: Sha256,
    len: u64,
    limit: u64,
    blobs: PathBuf,
}

impl BlobWriter {
    /// Appends a chunk. Past the limit the temp file is removed at once (an oversized upload
    /// must not fill the disk while the client keeps sending) and every later call fails too.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        let too_large = ArtifactError::TooLarge { limit: self.limit };
        let Some(tmp) = self.tmp.as_mut() else {
            return Err(too_large);
        };
        let len = self.len.saturating_add(chunk.len() as u64);
        if len > self.limit {
            self.tmp = None;
            return Err(too_large);
        }
        tmp.write_all(chunk)?;
        self.hasher.update(chunk);
        self.len = len;
        Ok(())
    }

    /// Makes the blob durable under its digest and returns the digest and length. If the store
    /// already holds these bytes the existing blob is kept and the new copy dropped.
    pub fn finish(mut self) -> Result<(Digest, u64), ArtifactError> {
        let Some(tmp) = self.tmp.take() else {
            return Err(ArtifactError::TooLarge { limit: self.limit });
        };
        tmp.as_file().sync_all()?;
        let hex = hex::encode(self.hasher.finalize_reset());
        let digest = Digest::parse(&hex)
            .map_err(|e| io::Error::other(format!("sha256 gave an invalid digest: {e}")))?;
        match tmp.persist_noclobber(self.blobs.join(&hex)) {
            Ok(_) => {}
            // Same name means same bytes: the blob is already stored. Dropping the error drops
            // the temp file with it.
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.error.into()),
        }
        // The rename is durable only once the directory entry is on disk.
        File::open(&self.blobs)?.sync_all()?;
        Ok((digest, self.len))
    }
}
