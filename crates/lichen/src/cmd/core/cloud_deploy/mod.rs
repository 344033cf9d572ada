//! The cloud deployment source: deployments arrive through AWS IoT Jobs (thing groups,
//! namespace `aws-gg-deployment`) and the named shadow `AWSManagedGreengrassV2Deployment`
//! (single thing), are queued in the deployment engine, resolved and downloaded through the
//! Greengrass data plane, and their status goes back the way they came. The fleet status
//! publisher reports the device's components on `…/greengrassv2/health/json`.
//!
//! Nothing here runs unless the core has a cloud endpoint (`iotDataEndpoint`) and device
//! credentials: an offline core pays nothing for it.
//!
//! Invariant: a terminal status is marked reported only once the link has taken it into its
//! durable spool; at start every unreported one is sent again, so a restart loses none.

mod dataplane;
mod fleet_status;
mod listener;
mod reported;
mod s3_direct;

use std::path::PathBuf;
use std::sync::Arc;

use lichen_cloud::Endpoint;
use lichen_config::ConfigStore;
use lichen_deploy::{DeploymentEngine, SigningPolicy};
use serde_json::Value;

pub use dataplane::Cloud;

const NUCLEUS: &str = "aws.greengrass.Nucleus";

/// What the cloud deployment source needs from the core.
pub struct Context {
    pub config: ConfigStore,
    pub root: PathBuf,
    pub thing: String,
    pub platform: lichen_recipe::Platform,
    pub engine: DeploymentEngine,
    pub supervisor: lichen_supervisor::Supervisor,
    pub link: lichen_cloud::CloudLink,
    pub ggc_version: String,
}

/// The running tasks; dropped (aborted) when the core stops.
pub struct CloudDeployments {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CloudDeployments {
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

fn text(v: Option<Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The data plane endpoint (spec §6.5 and the `greengrassDataPlane*` settings).
fn data_plane_endpoint(config: &ConfigStore) -> Option<Endpoint> {
    let nucleus = |key: &str| text(config.get(&["services", NUCLEUS, "configuration", key]));
    let iot = nucleus("iotDataEndpoint")?;
    let host = match nucleus("greengrassDataPlaneEndpoint") {
        Some(h) if h.eq_ignore_ascii_case("iotdata") => iot,
        Some(h) => h,
        None => {
            let region = nucleus("awsRegion").unwrap_or_else(|| "us-east-1".into());
            format!("greengrass-ats.iot.{region}.amazonaws.com")
        }
    };
    let port = nucleus("greengrassDataPlanePort")
        .and_then(|p| p.parse().ok())
        .unwrap_or(8443);
    let path = |key: &str| text(config.get(&["system", key])).map(PathBuf::from);
    Some(Endpoint {
        host,
        port,
        root_ca: path("rootCaPath")?,
        certificate: path("certificateFilePath")?,
        private_key: path("privateKeyPath")?,
    })
}

/// `lichen.requireSignedComponents` / `lichen.componentSigningKeys`.
fn signing_policy(config: &ConfigStore) -> anyhow::Result<SigningPolicy> {
    let lichen = |key: &str| config.get(&["services", NUCLEUS, "configuration", "lichen", key]);
    let required = match lichen("requireSignedComponents") {
        Some(Value::Bool(b)) => b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    let keys: Vec<String> = match lichen("componentSigningKeys") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![s],
        _ => Vec::new(),
    };
    SigningPolicy::new(required, &keys).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Starts the source when the cloud is configured; `None` (and nothing running) otherwise.
pub async fn start(ctx: Context) -> anyhow::Result<Option<CloudDeployments>> {
    let Some(endpoint) = data_plane_endpoint(&ctx.config) else {
        return Ok(None);
    };
    let plane = match lichen_cloud::dataplane::DataPlane::new(&endpoint) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot load the device credentials for the data plane; cloud deployments are off");
            return Ok(None);
        }
    };
    let signing = signing_policy(&ctx.config)?;
    let cloud = Cloud {
        plane,
        runtime: tokio::runtime::Handle::current(),
        platform: ctx.platform.clone(),
    };
    ctx.engine
        .set_cloud_resolver(Arc::new(cloud.clone()), signing);
    ctx.engine.register_fetcher(
        "s3",
        Arc::new(dataplane::S3Fetcher(cloud.clone(), ctx.config.clone())),
    );
    tracing::info!(data_plane = %format!("{}:{}", endpoint.host, endpoint.port), "cloud deployments enabled");
    let ctx = Arc::new(ctx);
    let mut tasks = listener::start(ctx.clone(), cloud).await?;
    tasks.push(fleet_status::start(ctx.clone()));
    Ok(Some(CloudDeployments { tasks }))
}
