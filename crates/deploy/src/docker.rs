//! `docker:` artifacts (spec greengrass-services §7.4): images pulled through the local Docker
//! engine during the download phase, kept while a deployed component version names them.
//!
//! The engine is reached over its Unix socket (`DOCKER_HOST=unix://…`, else
//! `/var/run/docker.sock`) with hyper's HTTP/1.1 client: four calls of the Engine API (inspect,
//! create = pull, delete, version) do not justify a full Docker SDK. An image already present —
//! looked up by reference, or by digest for `@sha256:` references — is never pulled again, so a
//! cached image deploys with the registry down. What the store keeps for a `docker:` artifact
//! is a small marker file (`<file name>`) holding the reference and the image ID, which garbage
//! collection reads to remove images that no component version needs any more.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::artifacts::{ArtifactFetcher, FetchRequest};
use crate::error::DeployError;

/// First line of a marker file: what garbage collection looks for.
pub(crate) const MARKER: &str = "lichen-docker-image v1";

/// Receives each line of a streamed answer.
type LineSink<'a> = dyn FnMut(&[u8]) + 'a;
/// `(component, registry)` → `(user, password)`.
type Credentials = dyn Fn(&str, &str) -> Option<(String, String)> + Send + Sync;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    /// `docker.io` for Docker Hub short names.
    pub registry: String,
    /// `library/busybox` for a Hub short name; `team/app` otherwise.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:…`
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses what follows `docker:` (`registry/repo:tag`, `repo@sha256:…`, `name`).
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
                    format!("image digest {digest:?} must be sha256:<64 hex digits>")
                })?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "image digest {digest:?} must be sha256:<64 hex digits>"
                    ));
                }
                (rest, Some(digest.to_ascii_lowercase()))
            }
            None => (text, None),
        };
        let (first, remainder) = match rest.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first), remainder)
            }
            _ => (None, rest),
        };
        // A tag is after the last ':' of the last path segment.
        let (repository, tag) = match remainder.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (remainder, None),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.split('/').all(|part| {
                    !part.is_empty()
                        && part.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                        })
                })
        };
        if !valid(repository) {
            return Err(format!(
                "image repository {repository:?} is not valid: lowercase letters, digits, '.', '_', '-' and '/'"
            ));
        }
        let registry = first.unwrap_or("docker.io").to_string();
        let repository = if first.is_none() && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The name the engine knows it by (`busybox:1`, `127.0.0.1:5000/app@sha256:…`).
    pub fn name(&self) -> String {
        let repo = if self.registry == "docker.io" {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{repo}@{d}"),
            (None, Some(t)) => format!("{repo}:{t}"),
            (None, None) => format!("{repo}:latest"),
        }
    }

    fn repo_name(&self) -> String {
        let name = self.name();
        name.split('@')
            .next()
            .map(|n| match n.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => r.to_string(),
                _ => n.to_string(),
            })
            .unwrap_or(name)
    }
}

/// The local Docker engine's API over its Unix socket.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    socket: PathBuf,
}

/// What the engine answered.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl DockerEngine {
    /// `DOCKER_HOST` when it is `unix://PATH`, else `/var/run/docker.sock`.
    pub fn from_env() -> DockerEngine {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        DockerEngine { socket }
    }

    pub fn at(socket: impl Into<PathBuf>) -> DockerEngine {
        DockerEngine {
            socket: socket.into(),
        }
    }

    /// One request; the body streams through `each_line` when given (pull progress).
    fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, String)],
        mut each_line: Option<&mut LineSink<'_>>,
    ) -> Result<Reply, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start an I/O runtime: {e}"))?;
        runtime.block_on(async {
            let stream = within(tokio::net::UnixStream::connect(&self.socket))
                .await?
                .map_err(|e| {
                    format!(
                        "cannot reach the Docker engine at {}: {e}; start dockerd or set DOCKER_HOST=unix://PATH",
                        self.socket.display()
                    )
                })?;
            let (mut sender, connection) =
                within(hyper::client::conn::http1::handshake(
                    hyper_util::rt::TokioIo::new(stream),
                ))
                .await?
                .map_err(|e| format!("Docker engine handshake failed: {e}"))?;
            tokio::spawn(connection);
            let mut builder = hyper::Request::builder()
                .method(method)
                .uri(path_and_query)
                .header("Host", "docker");
            for (name, value) in headers {
                builder = builder.header(*name, value);
            }
            let request = builder
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let mut response = within(sender.send_request(request))
                .await?
                .map_err(|e| format!("Docker engine request {method} {path_and_query} failed: {e}"))?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            let mut pending = Vec::new();
            while let Some(frame) = within(response.body_mut().frame()).await? {
                let frame = frame.map_err(|e| format!("reading the Docker engine's answer: {e}"))?;
                let Ok(data) = frame.into_data() else { continue };
                match each_line.as_mut() {
                    Some(f) => {
                        pending.extend_from_slice(&data);
                        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=i).collect();
                            f(&line);
                        }
                    }
                    None => body.extend_from_slice(&data),
                }
            }
            if let Some(f) = each_line.as_mut()
                && !pending.is_empty()
            {
                f(&pending);
            }
            Ok(Reply { status, body })
        })
    }

    /// The local image's ID, or `None` when the engine does not have it.
    pub fn image_id(&self, image: &ImageRef) -> Result<Option<String>, String> {
        let reply = self.request("GET", &format!("/images/{}/json", image.name()), &[], None)?;
        match reply.status {
            200 => {
                let v: serde_json::Value = serde_json::from_slice(&reply.body)
                    .map_err(|e| format!("Docker engine sent bad JSON: {e}"))?;
                Ok(v["Id"].as_str().map(str::to_string))
            }
            404 => Ok(None),
            s => Err(format!(
                "Docker engine answered {s} to inspecting {}: {}",
                image.name(),
                String::from_utf8_lossy(&reply.body).trim()
            )),
        }
    }

    /// Pulls the image; each progress message goes to `progress`.
    pub fn pull(
        &self,
        image: &ImageRef,
        credentials: Option<(&str, &str)>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        let reference = image
            .digest
            .clone()
            .or_else(|| image.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let query = format!(
            "/images/create?fromImage={}&tag={}",
            percent(&image.repo_name()),
            percent(&reference)
        );
        let mut headers = Vec::new();
        if let Some((user, password)) = credentials {
            let auth = serde_json::json!({
                "username": user, "password": password, "serveraddress": image.registry,
            });
            headers.push((
                "X-Registry-Auth",
                base64::engine::general_purpose::URL_SAFE.encode(auth.to_string()),
            ));
        }
        let mut failure = None;
        let mut each = |line: &[u8]| {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                return;
            };
            if let Some(error) = v["error"].as_str() {
                failure = Some(error.to_string());
            } else if let Some(status) = v["status"].as_str() {
                let id = v["id"]
                    .as_str()
                    .map(|i| format!("{i}: "))
                    .unwrap_or_default();
                progress(&format!("{id}{status}"));
            }
        };
        let reply = self.request("POST", &query, &headers, Some(&mut each))?;
        if let Some(error) = failure {
            return Err(error);
        }
        if reply.status != 200 {
            return Err(format!(
                "Docker engine answered {} to the pull",
                reply.status
            ));
        }
        Ok(())
    }

    /// Removes the image; one that is gone already is not an error.
    pub fn remove(&self, name: &str) -> Result<(), String> {
        let reply = self.request("DELETE", &format!("/images/{name}"), &[], None)?;
        match reply.status {
            200 | 404 => Ok(()),
            s => Err(format!(
                "Docker engine answered {s} to removing {name}: {}",
                String::from_utf8_lossy(&reply.body).trim()
            )),
        }
    }
}

/// Longest the engine may stay silent (a pull reports progress all along): every wait has a bound.
const ENGINE_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

async fn within<T>(work: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(ENGINE_IDLE, work).await.map_err(|_| {
        format!(
            "the Docker engine said nothing for {} s",
            ENGINE_IDLE.as_secs()
        )
    })
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `docker` scheme's fetcher: present images are kept, missing ones pulled.
pub struct DockerFetcher {
    engine: DockerEngine,
    /// Registry host → (user, password), from the component configuration or the token service.
    credentials: Box<Credentials>,
}

impl DockerFetcher {
    /// `credentials(component, registry)` gives the login for a private registry.
    pub fn new(
        engine: DockerEngine,
        credentials: impl Fn(&str, &str) -> Option<(String, String)> + Send + Sync + 'static,
    ) -> DockerFetcher {
        DockerFetcher {
            engine,
            credentials: Box::new(credentials),
        }
    }
}

impl ArtifactFetcher for DockerFetcher {
    fn fetch(&self, request: &FetchRequest<'_>, dest: &Path) -> Result<bool, DeployError> {
        let uri = &request.artifact.uri;
        let component = format!("{}@{}", request.component, request.version);
        let failed = |message: String| DeployError::ImagePull {
            component: component.clone(),
            uri: uri.clone(),
            message,
        };
        let text = uri.split_once(':').map(|(_, r)| r).unwrap_or(uri);
        let image = ImageRef::parse(text).map_err(failed)?;
        let id = match self.engine.image_id(&image).map_err(failed)? {
            Some(id) => {
                tracing::info!(component = %component, image = %image.name(), %id, "image present: not pulled");
                id
            }
            None => {
                tracing::info!(component = %component, image = %image.name(), "pulling image");
                let login = configured_login(request.configuration, &image.registry)
                    .or_else(|| (self.credentials)(request.component, &image.registry));
                let mut last = String::new();
                self.engine
                    .pull(
                        &image,
                        login.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
                        &mut |line| {
                            if line != last {
                                tracing::info!(component = %component, image = %image.name(), "pull: {line}");
                                last = line.to_string();
                            }
                        },
                    )
                    .map_err(failed)?;
                self.engine
                    .image_id(&image)
                    .map_err(failed)?
                    .ok_or_else(|| {
                        failed("the engine does not list the image after pulling it".into())
                    })?
            }
        };
        let marker = format!("{MARKER}\n{}\n{id}\n", image.name());
        crate::fsutil::write_atomic(dest, marker.as_bytes())
            .map_err(|e| DeployError::io("cannot record image", dest, e))?;
        Ok(true)
    }

    fn release(&self, image: &str) {
        // Garbage collection may run on a runtime thread, where a runtime of our own cannot
        // block: the call gets a thread of its own.
        let engine = self.engine.clone();
        let name = image.to_string();
        let removed = std::thread::spawn(move || engine.remove(&name))
            .join()
            .unwrap_or_else(|_| Err("the removal thread panicked".into()));
        match removed {
            Ok(()) => tracing::info!(%image, "image removed: no component version uses it"),
            Err(e) => tracing::warn!(%image, error = %e, "cannot remove an unused image"),
        }
    }
}

/// `dockerRegistryCredentials.<registry>.{username, password}` of the component's configuration.
fn configured_login(
    configuration: Option<&serde_json::Value>,
    registry: &str,
) -> Option<(String, String)> {
    let login = configuration?
        .get("dockerRegistryCredentials")?
        .get(registry)?;
    Some((
        login.get("username")?.as_str()?.to_string(),
        login.get("password")?.as_str()?.to_string(),
    ))
}

/// Images recorded in the store's artifact folders: image → the `name/version` folders naming it.
pub(crate) fn recorded_images(
    artifacts_root: &Path,
) -> std::collections::BTreeMap<String, Vec<PathBuf>> {
    let mut out: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    let list = |dir: &Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    for name_dir in list(artifacts_root) {
        for version_dir in list(&name_dir) {
            for file in list(&version_dir) {
                // Markers are tiny; anything bigger is a real artifact and is not read.
                if std::fs::metadata(&file).is_ok_and(|m| m.is_file() && m.len() < 4096)
                    && let Some(image) = marker_image(&file)
                {
                    out.entry(image).or_default().push(version_dir.clone());
                }
            }
        }
    }
    out
}

/// The image named by a marker file, if `path` is one.
pub(crate) fn marker_image(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    (lines.next()? == MARKER).then(|| lines.next().map(str::to_string))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_the_engine_names_them() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(r.name(), "busybox:latest");
        let r = ImageRef::parse("127.0.0.1:5000/team/app:1.2").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.name(), "127.0.0.1:5000/team/app:1.2");
        assert_eq!(r.repo_name(), "127.0.0.1:5000/team/app");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("public.ecr.aws/x/y@{d}")).unwrap();
        assert_eq!(r.name(), format!("public.ecr.aws/x/y@{d}"));
        assert_eq!(r.repo_name(), "public.ecr.aws/x/y");
        assert!(
            ImageRef::parse("Bad/Name")
                .unwrap_err()
                .contains("not valid")
        );
        assert!(
            ImageRef::parse("x@sha256:12")
                .unwrap_err()
                .contains("64 hex")
        );
    }
}
