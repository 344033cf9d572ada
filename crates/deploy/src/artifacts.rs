//! Getting artifacts into the store: fetch (by URI scheme), verify digest, unarchive, permissions.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use lichen_recipe::{Access, Artifact, Unarchive};
use semver::Version;
use sha2::{Digest as _, Sha256};

use crate::error::DeployError;
use crate::fsutil;
use crate::store::Store;

/// What a fetcher is asked for.
pub struct FetchRequest<'a> {
    pub component: &'a str,
    pub version: &'a Version,
    pub artifact: &'a Artifact,
    /// The local deployment's artifacts directory, if it gave one.
    pub local_dir: Option<&'a Path>,
}

/// Brings one artifact to `dest`. Implementations are keyed by URI scheme (`s3`, `https`,
/// `greengrass`, `docker`, …); the local fetcher serves every scheme from a local directory.
pub trait ArtifactFetcher: Send + Sync + 'static {
    /// `Ok(true)`: written to `dest`; `Ok(false)`: this fetcher does not have it.
    fn fetch(&self, request: &FetchRequest<'_>, dest: &Path) -> Result<bool, DeployError>;
}

/// Finds `<local_dir>/<name>/<version>/<file name>` whatever the URI scheme, so local
/// deployments can use recipes written for the cloud.
pub(crate) struct LocalFetcher;

impl ArtifactFetcher for LocalFetcher {
    fn fetch(&self, request: &FetchRequest<'_>, dest: &Path) -> Result<bool, DeployError> {
        let Some(dir) = request.local_dir else {
            return Ok(false);
        };
        let src = dir
            .join(request.component)
            .join(request.version.to_string())
            .join(request.artifact.file_name());
        if !src.is_file() {
            return Ok(false);
        }
        fsutil::copy_atomic(&src, dest)
            .map_err(|e| DeployError::io("cannot copy artifact", &src, e))?;
        Ok(true)
    }
}

#[derive(Clone)]
pub(crate) struct Fetchers {
    by_scheme: BTreeMap<String, Arc<dyn ArtifactFetcher>>,
    local: Arc<dyn ArtifactFetcher>,
}

impl Fetchers {
    pub(crate) fn new() -> Self {
        Fetchers {
            by_scheme: BTreeMap::new(),
            local: Arc::new(LocalFetcher),
        }
    }

    pub(crate) fn register(&mut self, scheme: &str, fetcher: Arc<dyn ArtifactFetcher>) {
        self.by_scheme.insert(scheme.to_ascii_lowercase(), fetcher);
    }
}

/// Makes every artifact of `name@version` present, verified, unpacked and protected.
/// Files under `<local_dir>/<name>/<version>/` are copied first (also undeclared ones, as the
/// classic nucleus copies the whole directory).
pub(crate) fn prepare(
    store: &Store,
    fetchers: &Fetchers,
    name: &str,
    version: &Version,
    artifacts: &[Artifact],
    local_dir: Option<&Path>,
) -> Result<(), DeployError> {
    let dir = store.artifacts_dir(name, version);
    fsutil::create_shared_dir_all(&dir)
        .map_err(|e| DeployError::io("cannot create artifact directory", &dir, e))?;
    let mut refreshed = std::collections::BTreeSet::new();
    if let Some(local) = local_dir {
        let src_dir = local.join(name).join(version.to_string());
        if src_dir.is_dir() {
            let files = fsutil::walk_files(&src_dir)
                .map_err(|e| DeployError::io("cannot read artifact directory", &src_dir, e))?;
            for rel in files {
                let src = src_dir.join(&rel);
                let dest = dir.join(&rel);
                fsutil::copy_atomic(&src, &dest)
                    .map_err(|e| DeployError::io("cannot copy artifact", &src, e))?;
                // Not writable by components until a declared Permission says more.
                let mode = fs::metadata(&src)
                    .map(|m| m.permissions().mode())
                    .unwrap_or(0o644);
                set_mode(&dest, (mode & 0o555) | 0o400)?;
                refreshed.insert(rel);
            }
        }
    }
    for artifact in artifacts {
        let file_name = artifact.file_name().to_string();
        let dest = dir.join(&file_name);
        if !dest.is_file() {
            let request = FetchRequest {
                component: name,
                version,
                artifact,
                local_dir,
            };
            let scheme = artifact.scheme().to_ascii_lowercase();
            let mut found = fetchers.local.fetch(&request, &dest)?;
            if !found && let Some(fetcher) = fetchers.by_scheme.get(&scheme) {
                found = fetcher.fetch(&request, &dest)?;
            }
            if !found {
                let searched = match local_dir {
                    Some(d) => d.join(name).join(version.to_string()).display().to_string(),
                    None => format!("the component store ({})", dir.display()),
                };
                return Err(DeployError::MissingArtifact {
                    component: format!("{name}@{version}"),
                    uri: artifact.uri.clone(),
                    file_name,
                    searched,
                });
            }
            refreshed.insert(PathBuf::from(&file_name));
        }
        verify_digest(name, version, artifact, &dest)?;
        set_mode(&dest, artifact_mode(artifact))?;
        if matches!(artifact.unarchive, Unarchive::Zip) {
            let stem = Path::new(&file_name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| file_name.clone());
            let target = store.unarchived_dir(name, version).join(stem);
            if refreshed.contains(Path::new(&file_name)) || !target.exists() {
                unzip(&dest, &target, artifact_mode(artifact))?;
            }
        }
    }
    Ok(())
}

fn verify_digest(
    name: &str,
    version: &Version,
    artifact: &Artifact,
    path: &Path,
) -> Result<(), DeployError> {
    let Some(expected) = artifact.digest.as_deref().filter(|d| !d.is_empty()) else {
        return Ok(());
    };
    let algorithm = artifact.algorithm.as_deref().unwrap_or("SHA-256");
    if !algorithm.eq_ignore_ascii_case("SHA-256") {
        return Err(DeployError::UnsupportedArtifact {
            component: format!("{name}@{version}"),
            uri: artifact.uri.clone(),
            message: format!("digest algorithm {algorithm:?} is not supported"),
        });
    }
    // The file may already be read-protected by an earlier deployment; we own it.
    set_mode(path, 0o600)?;
    let mut file =
        File::open(path).map_err(|e| DeployError::io("cannot open artifact", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| DeployError::io("cannot read artifact", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = base64::engine::general_purpose::STANDARD.encode(hasher.finalize());
    if actual != expected {
        return Err(DeployError::DigestMismatch {
            component: format!("{name}@{version}"),
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Unix mode from a recipe `Permission`: read OWNER ⇒ u+r, ALL ⇒ a+r; execute likewise (and
/// implies read). Never writable.
fn artifact_mode(artifact: &Artifact) -> u32 {
    let mut mode = 0;
    match artifact.permission.read {
        Access::None => {}
        Access::Owner => mode |= 0o400,
        Access::All => mode |= 0o444,
    }
    match artifact.permission.execute {
        Access::None => {}
        Access::Owner => mode |= 0o500,
        Access::All => mode |= 0o555,
    }
    mode
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DeployError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| DeployError::io("cannot set permissions of", path, e))
}

/// Extracts `archive` into `target` (replacing it). Rejects entries that would land outside
/// the target: `..`, absolute paths, and symlinks pointing outside. Extraction goes to a
/// sibling temp directory first so a rejected archive leaves nothing behind.
pub(crate) fn unzip(archive: &Path, target: &Path, file_mode: u32) -> Result<(), DeployError> {
    let parent = target.parent().unwrap_or(Path::new("."));
    fsutil::create_shared_dir_all(parent)
        .map_err(|e| DeployError::io("cannot create directory", parent, e))?;
    let tmp = parent.join(format!(
        ".{}.unzip-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fsutil::remove_tree(&tmp);
    let result = extract_into(archive, &tmp, file_mode);
    if let Err(e) = result {
        let _ = fsutil::remove_tree(&tmp);
        return Err(e);
    }
    fsutil::remove_tree(target).map_err(|e| DeployError::io("cannot replace", target, e))?;
    fs::rename(&tmp, target)
        .map_err(|e| DeployError::io("cannot move unarchived files to", target, e))?;
    Ok(())
}

fn extract_into(archive: &Path, dest: &Path, file_mode: u32) -> Result<(), DeployError> {
    let bad = |message: String| DeployError::BadArchive {
        archive: archive.to_path_buf(),
        message,
    };
    set_mode(archive, 0o600)?;
    let file =
        File::open(archive).map_err(|e| DeployError::io("cannot open archive", archive, e))?;
    let result = (|| {
        let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
        fs::create_dir_all(dest)
            .map_err(|e| DeployError::io("cannot create directory", dest, e))?;
        let mut dirs = vec![dest.to_path_buf()];
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
            let raw_name = entry.name().to_string();
            let rel = safe_relative(&raw_name).ok_or_else(|| DeployError::UnsafeArchive {
                archive: archive.to_path_buf(),
                entry: raw_name.clone(),
                reason: "path is absolute or leaves the extraction directory".to_string(),
            })?;
            let out = dest.join(&rel);
            if entry.is_dir() {
                fs::create_dir_all(&out)
                    .map_err(|e| DeployError::io("cannot create directory", &out, e))?;
                dirs.push(out);
                continue;
            }
            if let Some(parent) = out.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| DeployError::io("cannot create directory", parent, e))?;
                dirs.push(parent.to_path_buf());
            }
            if entry.is_symlink() {
                let mut link = String::new();
                entry
                    .read_to_string(&mut link)
                    .map_err(|e| bad(e.to_string()))?;
                let link_parent = rel.parent().unwrap_or(Path::new(""));
                if Path::new(&link).is_absolute()
                    || safe_relative_path(&link_parent.join(&link)).is_none()
                {
                    return Err(DeployError::UnsafeArchive {
                        archive: archive.to_path_buf(),
                        entry: raw_name,
                        reason: format!(
                            "symlink to {link:?} points outside the extraction directory"
                        ),
                    });
                }
                std::os::unix::fs::symlink(&link, &out)
                    .map_err(|e| DeployError::io("cannot create symlink", &out, e))?;
                continue;
            }
            let mut writer =
                File::create(&out).map_err(|e| DeployError::io("cannot create file", &out, e))?;
            io::copy(&mut entry, &mut writer)
                .map_err(|e| DeployError::io("cannot extract to", &out, e))?;
            // Keep executable bits the archive carries, on top of the recipe's permission.
            let exec = entry.unix_mode().map(|m| m & 0o111).unwrap_or(0);
            let mode = if exec != 0 {
                file_mode | ((file_mode & 0o444) >> 2)
            } else {
                file_mode
            };
            set_mode(&out, if mode == 0 { 0o400 } else { mode })?;
        }
        // Unarchived directories are readable and searchable by all (spec §1.7).
        for dir in dirs {
            set_mode(&dir, 0o755)?;
        }
        Ok(())
    })();
    set_mode(archive, file_mode)?;
    result
}

/// A relative path with no `..` escaping, no root, no prefix; `None` when unsafe.
fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') || name.starts_with('\\') || name.contains('\\') {
        return None;
    }
    safe_relative_path(Path::new(name))
}

fn safe_relative_path(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn build_zip(path: &Path, entries: &[(&str, Option<&str>)]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, link) in entries {
            match link {
                Some(target) => zip
                    .add_symlink(*name, *target, SimpleFileOptions::default())
                    .unwrap(),
                None => {
                    zip.start_file(*name, SimpleFileOptions::default()).unwrap();
                    zip.write_all(b"content").unwrap();
                }
            }
        }
        zip.finish().unwrap();
    }

    fn try_unzip(entries: &[(&str, Option<&str>)]) -> (tempfile::TempDir, Result<(), DeployError>) {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.zip");
        build_zip(&archive, entries);
        let target = tmp.path().join("out/a");
        let result = unzip(&archive, &target, 0o444);
        (tmp, result)
    }

    #[test]
    fn traversal_is_rejected_and_leaves_nothing() {
        for bad in ["../evil.txt", "ok/../../evil.txt", "/abs/evil.txt"] {
            let (tmp, result) = try_unzip(&[("fine.txt", None), (bad, None)]);
            let err = result.expect_err(bad);
            assert!(
                matches!(err, DeployError::UnsafeArchive { .. }),
                "{bad}: {err}"
            );
            assert!(
                err.to_string().contains(bad.trim_start_matches('/')),
                "{err}"
            );
            assert!(!tmp.path().join("evil.txt").exists());
            assert!(
                !tmp.path().join("out/a").exists(),
                "nothing extracted for {bad}"
            );
            let leftovers: Vec<_> = fs::read_dir(tmp.path().join("out")).unwrap().collect();
            assert!(leftovers.is_empty(), "temp dir cleaned for {bad}");
        }
    }

    #[test]
    fn escaping_symlinks_are_rejected_inner_ones_kept() {
        let (_tmp, result) = try_unzip(&[("link", Some("../../etc"))]);
        assert!(matches!(result, Err(DeployError::UnsafeArchive { .. })));
        let (_tmp, result) = try_unzip(&[("link", Some("/etc/passwd"))]);
        assert!(matches!(result, Err(DeployError::UnsafeArchive { .. })));
        let (tmp, result) = try_unzip(&[("dir/file.txt", None), ("dir/link", Some("file.txt"))]);
        result.unwrap();
        let out = tmp.path().join("out/a/dir");
        assert_eq!(fs::read_to_string(out.join("link")).unwrap(), "content");
        let mode = fs::metadata(out.join("file.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o444);
        let dir_mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o755);
    }

    #[test]
    fn permission_maps_to_modes() {
        let mut artifact = Artifact {
            uri: "s3://b/x".into(),
            digest: None,
            algorithm: None,
            unarchive: Unarchive::None,
            permission: Default::default(),
        };
        assert_eq!(artifact_mode(&artifact), 0o400);
        artifact.permission.read = Access::All;
        assert_eq!(artifact_mode(&artifact), 0o444);
        artifact.permission.execute = Access::All;
        assert_eq!(artifact_mode(&artifact), 0o555);
        artifact.permission.read = Access::None;
        artifact.permission.execute = Access::Owner;
        assert_eq!(artifact_mode(&artifact), 0o500);
    }
}
