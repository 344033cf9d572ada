//! Crafted archives against [`unarchive_zip`]: each hostile one fails clearly and leaves nothing
//! anywhere but the archive itself.

use super::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use zip::write::SimpleFileOptions;

enum Entry<'a> {
    File(&'a str),
    Exec(&'a str),
    Dir(&'a str),
    Link(&'a str, &'a str),
}
use Entry::{Dir, Exec, File as F, Link};

fn build_zip(path: &Path, entries: &[Entry<'_>]) {
    let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
    for entry in entries {
        match entry {
            F(name) => {
                zip.start_file(*name, SimpleFileOptions::default()).unwrap();
                zip.write_all(b"content").unwrap();
            }
            Exec(name) => {
                let options = SimpleFileOptions::default().unix_permissions(0o755);
                zip.start_file(*name, options).unwrap();
                zip.write_all(b"#!/bin/sh\n").unwrap();
            }
            Dir(name) => zip
                .add_directory(*name, SimpleFileOptions::default())
                .unwrap(),
            Link(name, target) => zip
                .add_symlink(*name, *target, SimpleFileOptions::default())
                .unwrap(),
        }
    }
    zip.finish().unwrap();
}

/// Every path under `dir`, symlinks listed but not followed.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.insert(path.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out
}

/// Asserts that extracting the archive built by `build` into `<tmp>/out/a` fails with an error
/// containing `needle`, and that nothing exists anywhere but the archive and the empty `out`.
fn assert_refused(build: impl FnOnce(&Path), limits: &ArchiveLimits, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.zip");
    build(&archive);
    let result = unarchive_zip(&archive, &tmp.path().join("out/a"), 0o444, limits);
    let left: Vec<_> = tree(tmp.path()).into_iter().collect();
    let err = result.expect_err(&format!("archive accepted; now on disk: {left:?}"));
    let text = err.to_string();
    assert!(text.contains(needle), "{text} does not contain {needle:?}");
    assert!(text.contains("a.zip"), "{text} names the archive");
    assert_eq!(
        left,
        vec![PathBuf::from("a.zip"), PathBuf::from("out")],
        "{err}"
    );
}

fn refused(entries: &[Entry<'_>], needle: &str) {
    assert_refused(|p| build_zip(p, entries), &ArchiveLimits::DEFAULT, needle);
}

#[test]
fn symlink_chain_is_refused_and_writes_nothing_outside() {
    // `x -> .` and `y -> x/..` each look harmless on their own; together `y` is the parent of
    // the extraction folder and `y/evil` would land beside it.
    refused(
        &[Link("x", "."), Link("y", "x/.."), F("y/evil")],
        "entry \"x\" rejected: it is a symbolic link",
    );
    refused(
        &[
            Link("x", "."),
            Link("y", "x/.."),
            Link("z", "y/.."),
            F("z/evil"),
        ],
        "symbolic link",
    );
}

#[test]
fn every_symlink_is_refused() {
    for (name, target) in [
        ("abs", "/etc/passwd"),
        ("up", "../../etc"),
        ("inner", "file.txt"),
    ] {
        refused(
            &[F("file.txt"), Link(name, target)],
            &format!("entry {name:?} rejected: it is a symbolic link"),
        );
    }
}

#[test]
fn escaping_and_ambiguous_names_are_refused() {
    for (bad, reason) in [
        ("../evil", "leaves the extraction folder"),
        ("ok/../../evil", "leaves the extraction folder"),
        ("/abs/evil", "absolute"),
        ("a\\..\\..\\evil", "backslash"),
        ("\\evil", "backslash"),
    ] {
        refused(
            &[F("fine.txt"), F(bad)],
            &format!("entry {bad:?} rejected: its "),
        );
        refused(&[F("fine.txt"), F(bad)], reason);
    }
}

#[test]
fn clashing_entries_are_refused() {
    let clash = "clashes with an entry extracted before";
    // The same path twice under two spellings: the second would replace the first.
    refused(&[F("dir/a.txt"), F("dir/x/../a.txt")], clash);
    // A file where a later entry needs a folder, and the other way round.
    refused(&[F("a"), F("a/b")], clash);
    refused(&[Dir("d/"), F("d/inner"), F("d/inner/x")], clash);
}

#[test]
fn zip_bomb_with_lying_header_is_refused() {
    // 8 MiB of zeros deflate to a few KiB; the headers then claim 100 bytes.
    let build = |p: &Path| {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(false);
        zip.start_file("small.txt", options).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..8 {
            zip.write_all(&chunk).unwrap();
        }
        let mut bytes = zip.finish().unwrap().into_inner();
        lie_about_sizes(&mut bytes, 100);
        assert!(bytes.len() < 100_000, "{} bytes", bytes.len());
        fs::write(p, bytes).unwrap();
    };
    let limits = ArchiveLimits {
        max_total_bytes: 1 << 20,
        max_entries: 10,
    };
    assert_refused(build, &limits, "more than 1048576 bytes");
}

#[test]
fn too_many_or_too_large_entries_are_refused() {
    let limits = ArchiveLimits {
        max_total_bytes: 1000,
        max_entries: 3,
    };
    assert_refused(
        |p| build_zip(p, &[F("a"), F("b"), F("c"), F("d")]),
        &limits,
        "more than 3 entries",
    );
    // Honest headers that add up past the cap are refused before anything is written.
    assert_refused(
        |p| {
            let mut zip = zip::ZipWriter::new(File::create(p).unwrap());
            zip.start_file("big", SimpleFileOptions::default()).unwrap();
            zip.write_all(&[7u8; 2000]).unwrap();
            zip.finish().unwrap();
        },
        &limits,
        "more than 1000 bytes",
    );
    // Up to the caps is fine.
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.zip");
    build_zip(&archive, &[F("a"), F("b"), F("c")]);
    let limits = ArchiveLimits {
        max_total_bytes: 21,
        max_entries: 3,
    };
    unarchive_zip(&archive, &tmp.path().join("out"), 0o444, &limits).unwrap();
}

#[test]
fn devices_pipes_and_sockets_are_refused() {
    for (kind, mode) in [
        ("fifo", 0o010_644),
        ("char", 0o020_644),
        ("socket", 0o140_644),
    ] {
        assert_refused(
            |p| {
                let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
                let options = SimpleFileOptions::default().unix_permissions(0o644);
                zip.start_file(kind, options).unwrap();
                zip.write_all(b"x").unwrap();
                let mut bytes = zip.finish().unwrap().into_inner();
                set_central_mode(&mut bytes, mode);
                fs::write(p, bytes).unwrap();
            },
            &ArchiveLimits::DEFAULT,
            "device, pipe or socket",
        );
    }
}

/// Rewrites the Unix mode (high half of the external attributes) of every central header.
fn set_central_mode(bytes: &mut [u8], mode: u32) {
    for i in 0..bytes.len().saturating_sub(46) {
        if bytes[i..i + 4] == 0x0201_4b50u32.to_le_bytes() {
            bytes[i + 38..i + 42].copy_from_slice(&(mode << 16).to_le_bytes());
        }
    }
}

/// Rewrites the uncompressed size in every local and central header to `claimed`.
fn lie_about_sizes(bytes: &mut [u8], claimed: u32) {
    let mut i = 0;
    while i + 4 <= bytes.len() {
        let sig = u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let at = match sig {
            0x0403_4b50 => Some(i + 22),
            0x0201_4b50 => Some(i + 24),
            _ => None,
        };
        if let Some(at) = at {
            bytes[at..at + 4].copy_from_slice(&claimed.to_le_bytes());
            i = at + 4;
        } else {
            i += 1;
        }
    }
}

#[test]
fn plain_archives_extract_with_modes_and_replace_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.zip");
    build_zip(
        &archive,
        &[
            Dir("dir/"),
            F("dir/file.txt"),
            Exec("dir/run.sh"),
            F("./top.txt"),
            F("deep/er/x.txt"),
            F("dir/../again.txt"),
        ],
    );
    let target = tmp.path().join("out/a");
    fs::create_dir_all(target.join("stale")).unwrap();
    unarchive_zip(&archive, &target, 0o444, &ArchiveLimits::DEFAULT).unwrap();
    let found: Vec<_> = tree(&target).into_iter().collect();
    let expected: Vec<PathBuf> = [
        "again.txt",
        "deep",
        "deep/er",
        "deep/er/x.txt",
        "dir",
        "dir/file.txt",
        "dir/run.sh",
        "top.txt",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(found, expected);
    let mode = |p: &str| fs::metadata(target.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("dir/file.txt"), 0o444);
    assert_eq!(mode("dir/run.sh"), 0o555, "archive's execute bits kept");
    for dir in ["", "dir", "deep", "deep/er"] {
        assert_eq!(mode(dir), 0o755, "{dir:?}");
    }
    assert_eq!(
        fs::read_to_string(target.join("dir/file.txt")).unwrap(),
        "content"
    );
    // Only the target itself was touched beside the archive.
    let outside: Vec<_> = tree(tmp.path())
        .into_iter()
        .filter(|p| !p.starts_with("out/a"))
        .collect();
    assert_eq!(outside, vec![PathBuf::from("a.zip"), PathBuf::from("out")]);
}
