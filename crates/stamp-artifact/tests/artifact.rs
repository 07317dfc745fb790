//! The artifact crate through its public API, with real files in temp dirs: the blob store,
//! packing and unpacking, and the archives an attacker (or a careless tool) would upload.

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};
use stamp_artifact::{ArtifactError, BlobStore, UnpackLimits, pack_dir, unpack};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MIB: u64 = 1024 * 1024;

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).map_or(0, |m| m.permissions().mode() & 0o7777)
}

fn is_empty_or_absent(dir: &Path) -> bool {
    match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// A scratch area: `archive` to write uploads to, `dest` to unpack into, and `outside`, a
/// sibling directory an escaping entry would land in.
struct Scratch {
    _tmp: TempDir,
    archive: PathBuf,
    dest: PathBuf,
    outside: PathBuf,
}

fn scratch() -> Scratch {
    let tmp = tempfile::tempdir().expect("create temp dir");
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).expect("create outside dir");
    Scratch {
        archive: tmp.path().join("upload"),
        dest: tmp.path().join("work").join("dest"),
        outside,
        _tmp: tmp,
    }
}

impl Scratch {
    fn unpack_bytes(&self, bytes: &[u8]) -> Result<(), ArtifactError> {
        self.unpack_with(bytes, &UnpackLimits::default())
    }

    fn unpack_with(&self, bytes: &[u8], limits: &UnpackLimits) -> Result<(), ArtifactError> {
        fs::write(&self.archive, bytes)?;
        unpack(&self.archive, &self.dest, limits)
    }

    /// Unpacking `bytes` must fail with `UnsafeEntry`, leave `dest` empty and write nothing
    /// next to it.
    fn assert_refused(&self, bytes: &[u8], what: &str) {
        match self.unpack_bytes(bytes) {
            Err(ArtifactError::UnsafeEntry { path, why }) => {
                eprintln!("{what}: refused `{path}`: {why}");
            }
            other => panic!("{what}: expected UnsafeEntry, got {other:?}"),
        }
        assert!(is_empty_or_absent(&self.dest), "{what}: dest not cleaned");
        assert!(is_empty_or_absent(&self.outside), "{what}: wrote outside");
        let work = self.dest.parent().expect("dest has a parent");
        for entry in fs::read_dir(work).expect("read work dir") {
            let name = entry.expect("read entry").file_name();
            assert_eq!(name, "dest", "{what}: wrote {name:?} next to dest");
        }
    }
}

// ---- archive builders ----------------------------------------------------------------------

/// One raw tar entry. Names are written straight into the header bytes, since the tar
/// builder's `set_path` refuses the malicious ones these tests need.
struct RawEntry<'a> {
    name: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    mode: u32,
    data: &'a [u8],
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> RawEntry<'a> {
    RawEntry {
        name,
        kind: tar::EntryType::Regular,
        link: "",
        mode: 0o644,
        data,
    }
}

fn dir(name: &str) -> RawEntry<'_> {
    RawEntry {
        name,
        kind: tar::EntryType::Directory,
        link: "",
        mode: 0o755,
        data: b"",
    }
}

fn link<'a>(name: &'a str, kind: tar::EntryType, target: &'a str) -> RawEntry<'a> {
    RawEntry {
        name,
        kind,
        link: target,
        mode: 0o777,
        data: b"",
    }
}

fn tar_gz(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for e in entries {
        let mut header = tar::Header::new_gnu();
        let old = header.as_old_mut();
        old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        header.set_entry_type(e.kind);
        header.set_mode(e.mode);
        header.set_size(e.data.len() as u64);
        header.set_mtime(0);
        header.set_cksum();
        builder.append(&header, e.data).expect("append tar entry");
    }
    let gz = builder.into_inner().expect("finish tar");
    gz.finish().expect("finish gzip")
}

enum ZipEntry<'a> {
    File(&'a str, u32, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

fn zip_bytes(entries: &[ZipEntry<'_>]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default();
    for e in entries {
        match *e {
            ZipEntry::File(name, mode, data) => {
                zip.start_file(name, opts.unix_permissions(mode))
                    .expect("start zip file");
                zip.write_all(data).expect("write zip file");
            }
            ZipEntry::Dir(name) => zip.add_directory(name, opts).expect("add zip dir"),
            ZipEntry::Symlink(name, target) => {
                zip.add_symlink(name, target, opts)
                    .expect("add zip symlink");
            }
        }
    }
    zip.finish().expect("finish zip").into_inner()
}

// ---- pack and unpack -----------------------------------------------------------------------

#[test]
fn a_packed_directory_unpacks_to_the_same_tree() -> TestResult {
    let src = tempfile::tempdir()?;
    let s = src.path();
    fs::write(s.join("Procfile"), "web: ./run.sh\n")?;
    fs::write(s.join("run.sh"), "#!/bin/sh\nexec python3 app/main.py\n")?;
    fs::set_permissions(s.join("run.sh"), fs::Permissions::from_mode(0o700))?;
    fs::create_dir_all(s.join("app/static"))?;
    fs::write(s.join("app/main.py"), "print('hi')\n")?;
    fs::write(s.join("app/static/style.css"), "body {}\n")?;
    fs::create_dir(s.join("empty"))?;
    symlink("app/main.py", s.join("main.py"))?;
    symlink("../static", s.join("app/assets-link"))?; // dangling but inside: kept as is
    fs::create_dir_all(s.join(".git/objects"))?;
    fs::write(s.join(".git/HEAD"), "ref: refs/heads/main\n")?;
    fs::create_dir_all(s.join("app/target/debug"))?;
    fs::write(s.join("app/target/debug/big"), "build output")?;
    fs::write(s.join("app/.git"), "gitdir: ../.git/modules/app\n")?;

    let mut packed = Vec::new();
    let entries = pack_dir(s, &mut packed)?;
    // Procfile, run.sh, app, app/static, app/main.py, app/static/style.css, empty, main.py,
    // app/assets-link.
    assert_eq!(entries, 9);
    let mut again = Vec::new();
    pack_dir(s, &mut again)?;
    assert_eq!(packed, again, "packing is reproducible");

    let sc = scratch();
    sc.unpack_bytes(&packed)?;
    let d = &sc.dest;
    assert_eq!(fs::read_to_string(d.join("Procfile"))?, "web: ./run.sh\n");
    assert_eq!(fs::read_to_string(d.join("app/main.py"))?, "print('hi')\n");
    assert_eq!(
        fs::read_to_string(d.join("app/static/style.css"))?,
        "body {}\n"
    );
    assert!(d.join("empty").is_dir());
    assert_eq!(
        mode(&d.join("run.sh")),
        0o755,
        "exec bit kept, mode normalised"
    );
    assert_eq!(mode(&d.join("Procfile")), 0o644);
    assert_eq!(mode(&d.join("app")), 0o755);
    assert_eq!(fs::read_link(d.join("main.py"))?, Path::new("app/main.py"));
    assert_eq!(fs::read_to_string(d.join("main.py"))?, "print('hi')\n");
    assert_eq!(
        fs::read_link(d.join("app/assets-link"))?,
        Path::new("../static")
    );
    assert!(!d.join(".git").exists());
    assert!(!d.join("app/target").exists());
    assert!(fs::symlink_metadata(d.join("app/.git")).is_err());
    Ok(())
}

#[test]
fn packing_refuses_a_symlink_the_server_would_refuse() -> TestResult {
    let src = tempfile::tempdir()?;
    symlink("/usr/bin/python3", src.path().join("python"))?;
    let err = pack_dir(src.path(), &mut Vec::new()).expect_err("absolute link packed");
    assert!(
        matches!(&err, ArtifactError::UnsafeEntry { path, .. } if path == "python"),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn a_tar_gz_with_dot_prefixes_hardlinks_and_duplicates_unpacks() -> TestResult {
    let sc = scratch();
    sc.unpack_bytes(&tar_gz(&[
        dir("./"),
        file("./a/b/data.txt", b"one"),
        link("./copy.txt", tar::EntryType::Link, "a/b/data.txt"),
        file("./a/b/data.txt", b"two"), // appended again: the later one wins
        RawEntry {
            mode: 0o4755, // setuid is dropped
            ..file("./bin", b"#!/bin/sh\n")
        },
    ]))?;
    assert_eq!(fs::read_to_string(sc.dest.join("a/b/data.txt"))?, "two");
    assert_eq!(fs::read_to_string(sc.dest.join("copy.txt"))?, "one");
    assert_eq!(mode(&sc.dest.join("bin")), 0o755);
    Ok(())
}

#[test]
fn zips_unpack_with_exec_bits_and_inside_symlinks() -> TestResult {
    let sc = scratch();
    sc.unpack_bytes(&zip_bytes(&[
        ZipEntry::File("Procfile", 0o644, b"web: ./bin/start\n"),
        ZipEntry::Dir("bin/"),
        ZipEntry::File("bin/start", 0o775, b"#!/bin/sh\n"),
        ZipEntry::File("lib/deep/nested.txt", 0o600, b"nested"),
        ZipEntry::Symlink("start", "bin/start"),
        ZipEntry::File("win\\style.txt", 0o644, b"backslashes"),
    ]))?;
    let d = &sc.dest;
    assert_eq!(
        fs::read_to_string(d.join("Procfile"))?,
        "web: ./bin/start\n"
    );
    assert_eq!(fs::read_to_string(d.join("lib/deep/nested.txt"))?, "nested");
    assert_eq!(mode(&d.join("bin/start")), 0o755);
    assert_eq!(mode(&d.join("lib/deep/nested.txt")), 0o644);
    assert_eq!(fs::read_link(d.join("start"))?, Path::new("bin/start"));
    assert_eq!(fs::read_to_string(d.join("win/style.txt"))?, "backslashes");
    Ok(())
}

#[test]
fn an_empty_zip_unpacks_to_nothing() -> TestResult {
    let sc = scratch();
    sc.unpack_bytes(&zip_bytes(&[]))?;
    assert!(is_empty_or_absent(&sc.dest));
    Ok(())
}

#[test]
fn unpacking_needs_an_empty_destination() -> TestResult {
    let sc = scratch();
    fs::create_dir_all(&sc.dest)?;
    fs::write(sc.dest.join("already"), "here")?;
    let err = sc
        .unpack_bytes(&tar_gz(&[file("a", b"a")]))
        .expect_err("unpacked over existing files");
    assert!(matches!(err, ArtifactError::Io(_)), "{err:?}");
    assert_eq!(fs::read_to_string(sc.dest.join("already"))?, "here");
    Ok(())
}

// ---- malicious archives --------------------------------------------------------------------

#[test]
fn tar_entries_that_leave_the_root_are_refused() {
    let sc = scratch();
    let outside_evil = format!("{}/evil", sc.outside.display());
    let outside = sc.outside.display().to_string();
    let cases: Vec<(&str, Vec<RawEntry<'_>>)> = vec![
        ("parent dir", vec![file("ok", b"ok"), file("../evil", b"x")]),
        (
            "absolute",
            vec![file("ok", b"ok"), file(&outside_evil, b"x")],
        ),
        (
            "nested parent",
            vec![file("a/ok", b"ok"), file("a/../../evil", b"x")],
        ),
        (
            "symlink out",
            vec![link("link", tar::EntryType::Symlink, "../../outside")],
        ),
        (
            "absolute symlink, then a file through it",
            vec![
                link("link", tar::EntryType::Symlink, &outside),
                file("link/passwd", b"x"),
            ],
        ),
        (
            "file through an inside symlink",
            vec![
                dir("sub"),
                link("link", tar::EntryType::Symlink, "sub"),
                file("link/passwd", b"x"),
            ],
        ),
        (
            "symlink chain that climbs out",
            vec![
                dir("d"),
                link("d/up", tar::EntryType::Symlink, ".."),
                link("x", tar::EntryType::Symlink, "d/up/.."),
            ],
        ),
        (
            "hardlink out",
            vec![
                file("ok", b"ok"),
                link("hard", tar::EntryType::Link, "../x"),
            ],
        ),
        (
            "hardlink to a symlink",
            vec![
                link("soft", tar::EntryType::Symlink, "ok"),
                link("hard", tar::EntryType::Link, "soft"),
            ],
        ),
        (
            "char device",
            vec![file("ok", b"ok"), link("null", tar::EntryType::Char, "")],
        ),
        (
            "fifo",
            vec![file("ok", b"ok"), link("pipe", tar::EntryType::Fifo, "")],
        ),
        ("block device", vec![link("sda", tar::EntryType::Block, "")]),
    ];
    for (what, entries) in cases {
        sc.assert_refused(&tar_gz(&entries), what);
    }
}

#[test]
fn zip_entries_that_leave_the_root_are_refused() {
    let sc = scratch();
    let outside_evil = format!("{}/evil", sc.outside.display());
    let cases: Vec<(&str, Vec<ZipEntry<'_>>)> = vec![
        (
            "parent dir",
            vec![
                ZipEntry::File("ok", 0o644, b"ok"),
                ZipEntry::File("../evil", 0o644, b"x"),
            ],
        ),
        ("absolute", vec![ZipEntry::File(&outside_evil, 0o644, b"x")]),
        (
            "backslash parent dir",
            vec![ZipEntry::File("a\\..\\..\\evil", 0o644, b"x")],
        ),
        ("symlink out", vec![ZipEntry::Symlink("link", "../outside")]),
        (
            "file through a symlink",
            vec![
                ZipEntry::Dir("sub/"),
                ZipEntry::Symlink("link", "sub"),
                ZipEntry::File("link/passwd", 0o644, b"x"),
            ],
        ),
    ];
    for (what, entries) in cases {
        sc.assert_refused(&zip_bytes(&entries), what);
    }
}

// ---- not archives, broken archives ---------------------------------------------------------

#[test]
fn uploads_that_are_not_archives_are_named_as_such() {
    let sc = scratch();
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    let plain_tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_cksum();
        b.append_data(&mut h, "a", &b"hi"[..]).expect("append");
        b.into_inner().expect("finish tar")
    };
    let cases: [(&str, &[u8]); 4] = [
        ("text", b"web: python app.py\n"),
        ("png", png),
        ("empty", b""),
        ("uncompressed tar", &plain_tar),
    ];
    for (what, bytes) in cases {
        let err = sc.unpack_bytes(bytes).expect_err(what);
        assert!(
            matches!(err, ArtifactError::NotAnArchive),
            "{what}: {err:?}"
        );
        assert!(!sc.dest.exists(), "{what}: dest created for a non-archive");
    }
}

#[test]
fn broken_archives_are_corrupt_with_the_reader_message() -> TestResult {
    let sc = scratch();
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let whole = tar_gz(&[file("a", &big), file("b", b"b")]);
    let truncated = &whole[..whole.len() / 2];
    let cut_trailer = &whole[..whole.len() - 4];

    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(b"this is a gzip of some text, not of a tar archive\n")?;
    let gzip_text = gz.finish()?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&[b'x'; 2000])?;
    let gzip_long_text = gz.finish()?;

    let mut zip = zip_bytes(&[ZipEntry::File("a", 0o644, &big)]);
    zip.truncate(zip.len() / 2);

    let cases: [(&str, &[u8]); 5] = [
        ("truncated tar.gz", truncated),
        ("tar.gz without its gzip trailer", cut_trailer),
        ("gzip of short text", &gzip_text),
        ("gzip of long text", &gzip_long_text),
        ("truncated zip", &zip),
    ];
    for (what, bytes) in cases {
        match sc.unpack_bytes(bytes) {
            Err(ArtifactError::Corrupt(msg)) => {
                assert!(!msg.is_empty(), "{what}");
                eprintln!("{what}: {msg}");
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
        assert!(is_empty_or_absent(&sc.dest), "{what}: dest not cleaned");
    }
    Ok(())
}

// ---- limits --------------------------------------------------------------------------------

#[test]
fn archives_that_unpack_too_large_are_stopped() {
    let sc = scratch();
    let zeros = vec![0u8; 10 * MIB as usize];
    let limits = UnpackLimits {
        max_bytes: MIB,
        ..UnpackLimits::default()
    };
    let tar = tar_gz(&[file("small", b"fine"), file("bomb", &zeros)]);
    let zip = zip_bytes(&[
        ZipEntry::File("small", 0o644, b"fine"),
        ZipEntry::File("bomb", 0o644, &zeros),
    ]);
    assert!(
        tar.len() < 100 * 1024 && zip.len() < 100 * 1024,
        "compressible"
    );
    for (what, bytes) in [("tar.gz", tar), ("zip", zip)] {
        let err = sc.unpack_with(&bytes, &limits).expect_err(what);
        assert!(
            matches!(err, ArtifactError::UnpackedTooLarge { limit } if limit == MIB),
            "{what}: {err:?}"
        );
        assert!(is_empty_or_absent(&sc.dest), "{what}: dest not cleaned");
    }
}

#[test]
fn archives_with_too_many_entries_are_stopped() {
    let sc = scratch();
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let limits = UnpackLimits {
        max_entries: 10,
        ..UnpackLimits::default()
    };
    let tar = tar_gz(&names.iter().map(|n| file(n, b"x")).collect::<Vec<_>>());
    let zip = zip_bytes(
        &names
            .iter()
            .map(|n| ZipEntry::File(n, 0o644, b"x"))
            .collect::<Vec<_>>(),
    );
    for (what, bytes) in [("tar.gz", tar), ("zip", zip)] {
        let err = sc.unpack_with(&bytes, &limits).expect_err(what);
        assert!(
            matches!(err, ArtifactError::TooManyEntries { limit: 10 }),
            "{what}: {err:?}"
        );
        assert!(is_empty_or_absent(&sc.dest), "{what}: dest not cleaned");
    }
    sc.unpack_with(&tar_gz(&[file("a", b"x")]), &limits)
        .expect("under the limit");
}

// ---- blob store ----------------------------------------------------------------------------

fn dir_len(path: &Path) -> usize {
    fs::read_dir(path).map_or(0, Iterator::count)
}

#[test]
fn blobs_are_named_by_the_sha256_of_their_bytes() -> TestResult {
    let root = tempfile::tempdir()?;
    let store = BlobStore::open(root.path())?;
    let bytes = b"the same deploy archive".repeat(10_000);

    let mut w = store.writer(MIB)?;
    for chunk in bytes.chunks(7_000) {
        w.write(chunk)?;
    }
    let (digest, len) = w.finish()?;
    assert_eq!(len, bytes.len() as u64);
    assert_eq!(digest.as_str(), hex::encode(Sha256::digest(&bytes)));
    assert!(store.contains(&digest));
    assert_eq!(
        store.path(&digest),
        root.path().join("sha256").join(digest.as_str())
    );
    assert_eq!(fs::read(store.path(&digest))?, bytes);

    // The same bytes again, through a file: same digest, still one blob, no temp left.
    let upload = root.path().join("upload.bin");
    fs::write(&upload, &bytes)?;
    let (again, _) = store.clone().put_file(&upload, MIB)?;
    assert_eq!(again, digest);
    assert_eq!(dir_len(&root.path().join("sha256")), 1);
    assert_eq!(dir_len(&root.path().join("tmp")), 0);

    let other = stamp_model::Digest::parse(&hex::encode(Sha256::digest(b"other")))?;
    assert!(!store.contains(&other));
    assert_eq!(store.path(&other).exists(), store.contains(&other));
    Ok(())
}

#[test]
fn blobs_over_the_limit_leave_nothing_behind() -> TestResult {
    let root = tempfile::tempdir()?;
    let store = BlobStore::open(root.path())?;
    let tmp = root.path().join("tmp");

    let mut w = store.writer(10)?;
    w.write(b"12345")?;
    assert_eq!(dir_len(&tmp), 1, "a temp file while writing");
    let err = w.write(b"678901").expect_err("over the limit");
    assert!(
        matches!(err, ArtifactError::TooLarge { limit: 10 }),
        "{err:?}"
    );
    assert_eq!(dir_len(&tmp), 0, "temp file removed at once");
    assert!(matches!(w.finish(), Err(ArtifactError::TooLarge { .. })));

    let mut w = store.writer(10)?;
    w.write(b"abc")?;
    drop(w);
    assert_eq!(dir_len(&tmp), 0, "temp file removed on drop");

    let big = root.path().join("big");
    fs::write(&big, [0u8; 11])?;
    assert!(matches!(
        store.put_file(&big, 10),
        Err(ArtifactError::TooLarge { limit: 10 })
    ));
    assert_eq!(dir_len(&tmp), 0);
    assert_eq!(dir_len(&root.path().join("sha256")), 0);
    Ok(())
}
