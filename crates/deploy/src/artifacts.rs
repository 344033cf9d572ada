//! Getting artifacts into the store: fetch (by URI scheme), verify digest, unarchive, permissions.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use lichen_recipe::{Access, Artifact, Unarchive};
use semver::Version;
use sha2::{Digest as _, Sha256};

use crate::error::DeployError;
use crate::fsutil;
use crate::store::Store;
use crate::unzip::{self, ArchiveLimits};

/// What a fetcher is asked for.
pub struct FetchRequest<'a> {
    pub component: &'a str,
    pub version: &'a Version,
    pub artifact: &'a Artifact,
    /// The local deployment's artifacts directory, if it gave one.
    pub local_dir: Option<&'a Path>,
    /// The deployment came from the cloud (cloud-only fetchers serve nothing else).
    pub cloud_deployment: bool,
    /// The component version ARN the cloud resolved this version to, if it did.
    pub component_arn: Option<String>,
    /// The component's configuration as this deployment will commit it.
    pub configuration: Option<&'a serde_json::Value>,
}

/// Brings one artifact to `dest`. Implementations are keyed by URI scheme (`s3`, `https`,
/// `greengrass`, `docker`, …); the local fetcher serves every scheme from a local directory.
pub trait ArtifactFetcher: Send + Sync + 'static {
    /// `Ok(true)`: written to `dest`; `Ok(false)`: this fetcher does not have it.
    fn fetch(&self, request: &FetchRequest<'_>, dest: &Path) -> Result<bool, DeployError>;

    /// Called when no stored component version records `resource` any more (an image that
    /// lives outside the store); nothing by default.
    fn release(&self, _resource: &str) {}
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

    pub(crate) fn get(&self, scheme: &str) -> Option<Arc<dyn ArtifactFetcher>> {
        self.by_scheme.get(scheme).cloned()
    }
}

/// What a deployment tells the fetchers about where its artifacts come from.
pub(crate) struct PrepareSource<'a> {
    /// A local deployment's artifact folder.
    pub local_dir: Option<&'a Path>,
    /// The deployment came from the cloud.
    pub cloud_deployment: bool,
    /// The component's configuration as this deployment will commit it.
    pub configuration: Option<&'a serde_json::Value>,
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
    source: PrepareSource<'_>,
) -> Result<(), DeployError> {
    let PrepareSource {
        local_dir,
        cloud_deployment,
        configuration,
    } = source;
    let dir = store.artifacts_dir(name, version)?;
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
        plain_segment(name, version, artifact, &file_name)?;
        let dest = dir.join(&file_name);
        let scheme = artifact.scheme().to_ascii_lowercase();
        if scheme == "docker" {
            // Images live in the engine: its fetcher checks them there each time (pulling only a
            // missing one) and records which image this version uses. Greengrass verifies no
            // digest of its own: a `@sha256:` reference is checked by the engine.
            let fetcher = fetchers.by_scheme.get("docker").ok_or_else(|| {
                DeployError::UnsupportedArtifact {
                    component: format!("{name}@{version}"),
                    uri: artifact.uri.clone(),
                    message: "docker: artifacts need aws.greengrass.DockerApplicationManager's image support, which this core was built without".into(),
                }
            })?;
            let request = FetchRequest {
                component: name,
                version,
                artifact,
                local_dir,
                cloud_deployment,
                component_arn: store.arn(name, version),
                configuration,
            };
            fetcher.fetch(&request, &dest)?;
            continue;
        }
        if !dest.is_file() {
            let request = FetchRequest {
                component: name,
                version,
                artifact,
                local_dir,
                cloud_deployment,
                component_arn: store.arn(name, version),
                configuration,
            };
            let mut found = fetchers.local.fetch(&request, &dest)?;
            if !found && let Some(fetcher) = fetchers.by_scheme.get(&scheme) {
                // Only a local deployment's own files may come without a digest.
                require_digest(name, version, artifact)?;
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
        if let Err(e) = verify_digest(name, version, artifact, &dest) {
            // A downloaded file that fails its digest goes, so the next attempt fetches it
            // again instead of failing on it forever.
            if cloud_deployment && matches!(e, DeployError::DigestMismatch { .. }) {
                let _ = fs::remove_file(&dest);
            }
            return Err(e);
        }
        set_mode(&dest, artifact_mode(artifact))?;
        if matches!(artifact.unarchive, Unarchive::Zip) {
            let stem = artifact.unarchive_dir_name();
            plain_segment(name, version, artifact, stem)?;
            let target = store.unarchived_dir(name, version)?.join(stem);
            if refreshed.contains(Path::new(&file_name)) || !target.exists() {
                // The archive may be unreadable under its recipe permission; we own it.
                set_mode(&dest, 0o600)?;
                let result = unzip::unarchive_zip(
                    &dest,
                    &target,
                    artifact_mode(artifact),
                    &ArchiveLimits::DEFAULT,
                );
                set_mode(&dest, artifact_mode(artifact))?;
                result?;
            }
        }
    }
    Ok(())
}

/// Refuses an artifact that is about to be downloaded without a `Digest` to check it against.
fn require_digest(name: &str, version: &Version, artifact: &Artifact) -> Result<(), DeployError> {
    if artifact.digest.as_deref().is_some_and(|d| !d.is_empty()) {
        return Ok(());
    }
    Err(DeployError::MissingDigest {
        component: format!("{name}@{version}"),
        uri: artifact.uri.clone(),
    })
}

/// Defence in depth behind recipe validation: a name joined into a store path must stay one
/// plain path segment.
fn plain_segment(
    name: &str,
    version: &Version,
    artifact: &Artifact,
    segment: &str,
) -> Result<(), DeployError> {
    match lichen_recipe::check_file_name(segment) {
        Ok(()) => Ok(()),
        Err(message) => Err(DeployError::UnsupportedArtifact {
            component: format!("{name}@{version}"),
            uri: artifact.uri.clone(),
            message,
        }),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
