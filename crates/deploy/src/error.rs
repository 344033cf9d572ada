//! Errors of the deployment engine. Every message says what failed, where (file, field path,
//! component@version or deployment id) and what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{what} {path}: {source}; check that the path exists and is accessible to the core")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid deployment request: {0}")]
    BadRequest(String),
    #[error("recipe directory {} does not exist or is not a directory", path.display())]
    InvalidRecipeDirectory { path: PathBuf },
    #[error("artifacts directory {} does not exist or is not a directory", path.display())]
    InvalidArtifactsDirectory { path: PathBuf },
    #[error("bad recipe {file}: {message}; fix the recipe and submit the deployment again")]
    BadRecipe { file: PathBuf, message: String },
    #[error(
        "recipe {component} is defined twice with different content: {first} and {second}; keep one of them or bump the version of one"
    )]
    DuplicateRecipe {
        component: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("cannot resolve component versions: {0}")]
    Unsatisfiable(String),
    #[error("dependency cycle: {0}; remove one of these dependencies")]
    Cycle(String),
    #[error(
        "component {component}: no recipe in the component store or in the deployment; provide its recipe in the recipe directory"
    )]
    UnknownComponent { component: String },
    #[error("component {component}: {message}")]
    Platform { component: String, message: String },
    #[error(
        "artifact {uri} of {component}: file {file_name} not found in {searched}; put it at <artifacts dir>/<name>/<version>/{file_name}"
    )]
    MissingArtifact {
        component: String,
        uri: String,
        file_name: String,
        searched: String,
    },
    #[error(
        "artifact {path} of {component}: digest mismatch (recipe says {expected}, file has {actual}); replace the file or fix the recipe's Digest"
    )]
    DigestMismatch {
        component: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "artifact {uri} of {component}: {message}; supported: local files (any scheme) with Algorithm SHA-256"
    )]
    UnsupportedArtifact {
        component: String,
        uri: String,
        message: String,
    },
    #[error(
        "archive {archive}: entry {entry:?} rejected: {reason}; rebuild the archive without it"
    )]
    UnsafeArchive {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
    #[error(
        "archive {archive}: {message}; split it into several artifacts or ship large files unarchived"
    )]
    ArchiveTooLarge { archive: PathBuf, message: String },
    #[error(
        "artifact {uri} of {component}: the recipe gives no Digest, and downloaded artifacts must be verified; add Digest (base64 SHA-256) and Algorithm: SHA-256 to the artifact, or deploy the file locally from an artifacts directory"
    )]
    MissingDigest { component: String, uri: String },
    #[error(
        "image {uri} of {component}: {message}; check the reference and digest, that the registry is reachable, and its credentials in the component's configuration"
    )]
    ImagePull {
        component: String,
        uri: String,
        message: String,
    },
    #[error("archive {archive}: {message}; check that it is a valid ZIP file")]
    BadArchive { archive: PathBuf, message: String },
    #[error("configuration store: {0}")]
    Config(String),
    #[error("bootstrap of {component} failed with exit code {code}; see logs/{name}.log", name = component.split('@').next().unwrap_or(component))]
    Bootstrap { component: String, code: i32 },
    #[error("bootstrap of {component} could not run: {message}")]
    BootstrapRun { component: String, message: String },
    #[error("component {component} rejected its new configuration: {message}")]
    ConfigurationRejected { component: String, message: String },
    #[error("components did not settle after the deployment: {0}")]
    Settle(String),
    #[error("deployment {0} not found; list deployments to see the known ids")]
    NotFound(String),
    #[error("deployment {id} is {status} and can no longer be cancelled (only QUEUED ones can)")]
    NotCancelable { id: String, status: &'static str },
    #[error("deployment {0} was cancelled before its configuration was merged")]
    Canceled(String),
    #[error("deployment record {path}: {message}; delete the file if it is corrupt")]
    BadRecord { path: PathBuf, message: String },
    #[error("cloud: {0}")]
    Cloud(String),
    #[error(
        "component {component}: {message}; sign the version with a key listed in lichen.componentSigningKeys, or set lichen.requireSignedComponents to false"
    )]
    Signature { component: String, message: String },
    #[error(
        "the deployment requires capabilities this core lacks: {0}; supported: LARGE_CONFIGURATION, LINUX_RESOURCE_LIMITS, SUB_DEPLOYMENTS"
    )]
    Capabilities(String),
    #[error(
        "deployment {id} is stale: created at {created} ms, before {group}'s last processed deployment ({last} ms); it was skipped"
    )]
    Stale {
        id: String,
        group: String,
        created: i64,
        last: i64,
    },
}

impl DeployError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DeployError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// The Greengrass-style error type reported in deployment status (`deployment-error-types`).
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            DeployError::Io { .. } => "DEVICE_ERROR",
            DeployError::BadRequest(_)
            | DeployError::InvalidRecipeDirectory { .. }
            | DeployError::InvalidArtifactsDirectory { .. }
            | DeployError::BadRecipe { .. }
            | DeployError::DuplicateRecipe { .. } => "REQUEST_ERROR",
            DeployError::Unsatisfiable(_)
            | DeployError::Cycle(_)
            | DeployError::UnknownComponent { .. }
            | DeployError::Platform { .. } => "DEPENDENCY_ERROR",
            DeployError::MissingArtifact { .. }
            | DeployError::DigestMismatch { .. }
            | DeployError::UnsupportedArtifact { .. }
            | DeployError::UnsafeArchive { .. }
            | DeployError::ArchiveTooLarge { .. }
            | DeployError::MissingDigest { .. }
            | DeployError::ImagePull { .. }
            | DeployError::BadArchive { .. } => "ARTIFACT_ERROR",
            DeployError::Config(_) | DeployError::BadRecord { .. } => "NUCLEUS_ERROR",
            DeployError::Bootstrap { .. } | DeployError::BootstrapRun { .. } => "COMPONENT_ERROR",
            DeployError::ConfigurationRejected { .. } => "COMPONENT_ERROR",
            DeployError::Settle(_) => "COMPONENT_ERROR",
            DeployError::NotFound(_) | DeployError::NotCancelable { .. } => "REQUEST_ERROR",
            DeployError::Canceled(_) => "REQUEST_ERROR",
            DeployError::Cloud(_) => "NETWORK_ERROR",
            DeployError::Signature { .. } => "DEPENDENCY_ERROR",
            DeployError::Capabilities(_) | DeployError::Stale { .. } => "REQUEST_ERROR",
        }
    }

    /// Greengrass-style error stack codes (`deployment-error-stack`).
    pub(crate) fn error_stack(&self) -> Vec<String> {
        let code = match self {
            DeployError::BadRecipe { .. } => "RECIPE_PARSE_ERROR",
            DeployError::DuplicateRecipe { .. } => "RECIPE_PARSE_ERROR",
            DeployError::Unsatisfiable(_) => "NO_AVAILABLE_COMPONENT_VERSION",
            DeployError::Cycle(_) => "CIRCULAR_DEPENDENCY",
            DeployError::UnknownComponent { .. } => "COMPONENT_NOT_FOUND",
            DeployError::Platform { .. } => "COMPONENT_RECIPE_NOT_APPLICABLE",
            DeployError::MissingArtifact { .. } => "LOCAL_ARTIFACT_NOT_FOUND",
            DeployError::DigestMismatch { .. } => "ARTIFACT_CHECKSUM_MISMATCH",
            DeployError::UnsafeArchive { .. }
            | DeployError::ArchiveTooLarge { .. }
            | DeployError::BadArchive { .. } => "ARTIFACT_UNARCHIVE_ERROR",
            DeployError::MissingDigest { .. } => "RECIPE_MISSING_ARTIFACT_HASH_ALGORITHM",
            DeployError::ImagePull { .. } => "DOCKER_ERROR",
            DeployError::Bootstrap { .. } | DeployError::BootstrapRun { .. } => "BOOTSTRAP_ERROR",
            DeployError::ConfigurationRejected { .. } => "COMPONENT_CONFIGURATION_NOT_VALID",
            DeployError::Settle(_) => "COMPONENT_BROKEN",
            DeployError::Cloud(_) => "CLOUD_SERVICE_ERROR",
            DeployError::Signature { .. } => "COMPONENT_SIGNATURE_NOT_VALID",
            DeployError::Capabilities(_) => "UNSUPPORTED_REQUIRED_CAPABILITIES",
            DeployError::Stale { .. } => "STALE_DEPLOYMENT",
            _ => "DEPLOYMENT_FAILURE",
        };
        vec!["DEPLOYMENT_FAILURE".to_string(), code.to_string()]
    }
}
