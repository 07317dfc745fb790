//! Stamp's deploy artifacts: the content-addressed blob store that plays the "file server" role
//! (uploads kept by sha256 in the data directory), safe unpacking of uploaded `.zip` and
//! `.tar.gz` archives into an app's directory, and packing a directory into a `.tar.gz` for the
//! CLI.
//!
//! Everything here is synchronous file IO; async callers wrap calls in `spawn_blocking`.
//! Uploads are untrusted: unpacking checks every entry before writing it, bounds the bytes and
//! entries it writes, and removes what it wrote when anything is refused.

mod pack;
mod paths;
mod store;
mod unpack;

pub use pack::pack_dir;
pub use store::{BlobStore, BlobWriter};
pub use unpack::{UnpackLimits, unpack};

const MIB: u64 = 1024 * 1024;

/// Why an artifact could not be stored or unpacked. The messages are shown to users as they are.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "the upload is neither a zip nor a tar.gz archive; send a .zip, a .tar.gz, or a directory \
         (the CLI packs it)"
    )]
    NotAnArchive,
    #[error("the archive entry `{path}` is refused: {why}; fix the archive and deploy again")]
    UnsafeEntry { path: String, why: &'static str },
    #[error(
        "the upload is larger than the limit of {} MiB; send a smaller artifact or raise the limit \
         with `stamp up --max-upload-mib <MiB>`",
        mib(*limit)
    )]
    TooLarge { limit: u64 },
    #[error(
        "the archive unpacks to more than {} MiB, the limit for an app's files; leave build \
         output, caches and dependencies that the app does not need out of the upload",
        mib(*limit)
    )]
    UnpackedTooLarge { limit: u64 },
    #[error(
        "the archive holds more than {limit} entries, the limit for an app's files; leave build \
         output, caches and dependencies that the app does not need out of the upload"
    )]
    TooManyEntries { limit: u64 },
    #[error("the archive could not be read ({0}); check that it is a complete .zip or .tar.gz")]
    Corrupt(String),
    #[error("artifact store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A byte count in MiB for messages: whole when it is whole, else with two decimals.
fn mib(bytes: u64) -> String {
    // (Not `is_multiple_of`: the workspace's rust-version, 1.85, predates it.)
    let whole = bytes / MIB;
    if whole * MIB == bytes {
        whole.to_string()
    } else {
        format!("{:.2}", bytes as f64 / MIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_shown_in_mib() {
        let e = ArtifactError::TooLarge { limit: 512 * MIB };
        let msg = e.to_string();
        assert!(msg.contains("512 MiB"), "{msg}");
        assert!(msg.contains("stamp up --max-upload-mib"), "{msg}");
        assert_eq!(mib(MIB / 2), "0.50");
    }
}
