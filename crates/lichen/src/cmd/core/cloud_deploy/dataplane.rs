//! The deployment engine's view of the Greengrass data plane: resolveComponentCandidates as
//! the engine's [`CloudResolver`], `s3://` artifacts through GetComponentVersionArtifact and a
//! resumable download as its `s3` fetcher, and large deployment documents.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use lichen_cloud::dataplane::{DataPlane, DataPlaneError};
use lichen_deploy::{ArtifactFetcher, CloudResolver, DeployError, FetchRequest, ResolvedComponent};
use serde_json::{Value, json};
use sha2::Digest as _;

/// Tries of one data-plane call or download before the deployment fails (the partial file
/// stays, so the next deployment resumes it).
const ATTEMPTS: u32 = 8;
/// Largest deployment document fetched for LARGE_CONFIGURATION (spec: 10 MB).
const MAX_CONFIGURATION: usize = 10 * 1024 * 1024;

#[derive(Clone)]
pub struct Cloud {
    pub plane: DataPlane,
    pub runtime: tokio::runtime::Handle,
    pub platform: lichen_recipe::Platform,
}

fn cloud_error(e: DataPlaneError) -> DeployError {
    DeployError::Cloud(e.to_string())
}

/// Runs `call` until it succeeds, fails for good, or runs out of tries (backing off 1 s, 2 s, …
/// up to 30 s between them).
pub async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<T, DataPlaneError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DataPlaneError>>,
{
    let mut delay = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                tracing::warn!(what, attempt, error = %e, "data plane call failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Cloud {
    fn platform_json(&self) -> Value {
        let attrs: serde_json::Map<String, Value> = self
            .platform
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let os = self
            .platform
            .attributes
            .get("os")
            .cloned()
            .unwrap_or_else(|| "linux".into());
        json!({ "name": os, "attributes": attrs })
    }

    /// GetDeploymentConfiguration: the full document of a LARGE_CONFIGURATION deployment,
    /// checked against its SHA-256 digest.
    pub async fn deployment_configuration(
        &self,
        deployment_id: &str,
        thing: &str,
    ) -> Result<Value, DeployError> {
        let (url, digest) = retrying("GetDeploymentConfiguration", || {
            self.plane.deployment_configuration(deployment_id, thing)
        })
        .await
        .map_err(cloud_error)?;
        let bytes = retrying("deployment configuration download", || {
            self.plane.get_bytes(&url, MAX_CONFIGURATION)
        })
        .await
        .map_err(cloud_error)?;
        if let Some(expected) = digest {
            let actual =
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&bytes));
            if actual != expected {
                return Err(DeployError::Cloud(format!(
                    "deployment configuration of {deployment_id}: digest mismatch (expected {expected}, got {actual})"
                )));
            }
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            DeployError::Cloud(format!(
                "deployment configuration of {deployment_id} is not JSON: {e}"
            ))
        })
    }
}

impl CloudResolver for Cloud {
    fn resolve(
        &self,
        component: &str,
        local: Option<&semver::Version>,
        requirements: &BTreeMap<String, String>,
    ) -> Result<ResolvedComponent, DeployError> {
        let mut candidate = json!({
            "componentName": component,
            "versionRequirements": requirements,
        });
        if let Some(v) = local {
            candidate["componentVersion"] = json!(v.to_string());
        }
        let body = json!({
            "platform": self.platform_json(),
            "componentCandidates": [candidate],
        });
        let answer = self
            .runtime
            .block_on(retrying("resolveComponentCandidates", || {
                self.plane.resolve_component_candidates(&body)
            }))
            .map_err(|e| match e {
                DataPlaneError::Status { status: 404, body, .. } => {
                    DeployError::Unsatisfiable(format!(
                        "the cloud has no version of {component} for this device satisfying {requirements:?}: {body}"
                    ))
                }
                other => cloud_error(other),
            })?;
        let resolved = answer
            .get("resolvedComponentVersions")
            .and_then(Value::as_array)
            .and_then(|list| {
                list.iter()
                    .find(|r| r.get("componentName").and_then(Value::as_str) == Some(component))
            })
            .ok_or_else(|| {
                DeployError::Cloud(format!(
                    "resolveComponentCandidates did not answer for {component}"
                ))
            })?;
        let field = |k: &str| resolved.get(k).and_then(Value::as_str).unwrap_or_default();
        let version = semver::Version::parse(field("componentVersion")).map_err(|e| {
            DeployError::Cloud(format!(
                "resolveComponentCandidates answered {component} with a bad version: {e}"
            ))
        })?;
        let recipe = base64::engine::general_purpose::STANDARD
            .decode(field("recipe"))
            .map_err(|e| {
                DeployError::Cloud(format!(
                    "recipe of {component}@{version} is not base64: {e}"
                ))
            })?;
        let signature = resolved.get("lichenSignature").and_then(|s| {
            Some((
                s.get("keyId")?.as_str()?.to_string(),
                s.get("signature")?.as_str()?.to_string(),
            ))
        });
        Ok(ResolvedComponent {
            version,
            recipe,
            arn: field("arn").to_string(),
            vendor_guidance: resolved
                .get("vendorGuidance")
                .and_then(Value::as_str)
                .map(str::to_string),
            signature,
        })
    }
}

/// `s3://bucket/key` artifacts of cloud deployments: presigned URL (from
/// GetComponentVersionArtifact, or signed here with the token exchange's credentials when
/// `lichen.s3Endpoint` is set: [`super::s3_direct`]), then a download that resumes a partial
/// file.
pub struct S3Fetcher(pub Cloud, pub lichen_config::ConfigStore);

impl ArtifactFetcher for S3Fetcher {
    fn fetch(&self, request: &FetchRequest<'_>, dest: &Path) -> Result<bool, DeployError> {
        if !request.cloud_deployment {
            return Ok(false);
        }
        let component = format!("{}@{}", request.component, request.version);
        let Some(arn) = &request.component_arn else {
            return Err(DeployError::Cloud(format!(
                "artifact {} of {component}: the recipe was not resolved with the cloud, so it has no ARN to download with",
                request.artifact.uri
            )));
        };
        let uri = &request.artifact.uri;
        let name = uri
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(uri.as_str());
        let plane = &self.0.plane;
        let direct = super::s3_direct::endpoint(&self.1);
        if let Some(endpoint) = &direct {
            let (bucket, key) = name.split_once('/').ok_or_else(|| {
                DeployError::Cloud(format!(
                    "artifact {uri} of {component}: an S3 URI is s3://<bucket>/<key>"
                ))
            })?;
            let config = &self.1;
            self.0
                .runtime
                .block_on(retrying("artifact download from S3", || async move {
                    let url = super::s3_direct::signed_url(config, endpoint, bucket, key).await?;
                    plane.download(&url, dest).await
                }))
                .map_err(|e| DeployError::Cloud(format!("artifact {uri} of {component}: {e}")))?;
            tracing::info!(component = %component, uri = %uri, endpoint = %endpoint, "artifact downloaded from S3 with the token exchange's credentials");
            return Ok(true);
        }
        self.0
            .runtime
            .block_on(retrying("artifact download", || async move {
                let url = plane.artifact_url(arn, name).await?;
                plane.download(&url, dest).await
            }))
            .map_err(|e| DeployError::Cloud(format!("artifact {uri} of {component}: {e}")))?;
        tracing::info!(component = %component, uri = %uri, "artifact downloaded");
        Ok(true)
    }
}
