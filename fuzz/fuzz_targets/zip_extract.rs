//! Writes the input as a ZIP artifact and extracts it with the deployment's real extractor.
//! Properties: no panic; whatever happens, nothing exists outside the extraction folder but the
//! archive and the folder's parent; a refused archive leaves nothing at all; an extracted tree
//! holds only plain files and folders (no links), within the byte cap.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lichen_deploy::{ArchiveLimits, unarchive_zip};

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());

const LIMITS: ArchiveLimits = ArchiveLimits {
    max_total_bytes: 1 << 20,
    max_entries: 1000,
};

/// Every path under `dir` as (relative path, is a plain file or folder), links not followed.
fn tree(dir: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_dir() {
                stack.push(path.clone());
            }
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            out.push((rel, kind.is_dir() || kind.is_file()));
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let case = DIR.path().join("case");
    let _ = std::fs::remove_dir_all(&case);
    std::fs::create_dir_all(&case).unwrap();
    let archive = case.join("in.zip");
    std::fs::write(&archive, data).unwrap();
    let target = case.join("out/x");
    let result = unarchive_zip(&archive, &target, 0o444, &LIMITS);
    let found = tree(&case);
    let outside: Vec<_> = found
        .iter()
        .filter(|(p, _)| !p.starts_with("out/x"))
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(
        outside,
        vec![PathBuf::from("in.zip"), PathBuf::from("out")],
        "{result:?}"
    );
    // Extracted means the folder is there; refused means nothing of it is.
    assert_eq!(target.is_dir(), result.is_ok(), "{result:?}");
    let mut bytes = 0;
    for (path, plain) in &found {
        assert!(plain, "{} is not a plain file or folder", path.display());
        let meta = std::fs::symlink_metadata(case.join(path)).unwrap();
        if path.starts_with("out/x") && meta.is_file() {
            bytes += meta.len();
        }
    }
    assert!(bytes <= LIMITS.max_total_bytes, "{bytes} bytes extracted");
});
