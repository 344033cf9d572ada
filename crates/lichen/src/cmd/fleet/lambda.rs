//! `lichen fleet lambda publish`: stores a Lambda deployment package in the fleet, which has no
//! Lambda service, so that `greengrassv2 CreateComponentVersion` with `lambdaFunction` can turn
//! it into a component version. The package and its settings go to the fleet's object store
//! under the convention of `lichen_fleet_api::greengrass::lambda` (bucket `lichen-lambda`,
//! `functions/<name>/<version>/lambda-artifact.zip` and `function.json`); the function version
//! ARN that names them is printed.

use super::component::Api;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use lichen_fleet_api::client;
use lichen_fleet_api::greengrass::lambda::{LAMBDA_BUCKET, function_keys};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum LambdaCommand {
    /// Publish a function version: upload its deployment package (zip) and record its handler
    /// and runtime; prints `arn:aws:lambda:<region>:<account>:function:<name>:<version>`, the
    /// `lambdaArn` for CreateComponentVersion.
    Publish(PublishArgs),
}

#[derive(Args)]
pub struct PublishArgs {
    /// Fleet root directory (its endpoints.json and admin credentials).
    #[arg(long, env = "LICHEN_FLEET_ROOT", default_value = "./lichen-fleet")]
    pub root: PathBuf,
    /// The PostgreSQL registry the fleet serves with `--database` (to learn its account id).
    #[arg(long, env = "LICHEN_FLEET_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    /// The function's name.
    #[arg(long)]
    pub name: String,
    /// The deployment package (a zip with the handler's module at its top).
    #[arg(long)]
    pub zip: PathBuf,
    /// The handler, `module.function`.
    #[arg(long)]
    pub handler: String,
    /// The Lambda runtime (python3.x, nodejs*, provided*).
    #[arg(long, default_value = "python3.11")]
    pub runtime: String,
    /// The version number to publish (default: one above the highest published).
    #[arg(long)]
    pub version: Option<u32>,
}

pub fn run(c: LambdaCommand) -> anyhow::Result<ExitCode> {
    let LambdaCommand::Publish(a) = c;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !valid(&a.name) {
        bail!(
            "--name {:?}: a function name is 1-64 letters, digits, '-' or '_'",
            a.name
        );
    }
    if !a.handler.contains('.') {
        bail!("--handler {:?} must be module.function", a.handler);
    }
    let zip = std::fs::read(&a.zip).with_context(|| format!("reading {}", a.zip.display()))?;
    if !zip.starts_with(b"PK") {
        bail!("{} is not a zip file", a.zip.display());
    }
    let account = super::open_registry(&a.root, a.database.as_deref(), "us-east-1", false)?
        .account()
        .to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let api = Api::open(&a.root)?;
        let (status, body) = api
            .call("PUT", "s3", &format!("/{LAMBDA_BUCKET}"), &[], vec![])
            .await?;
        if status != 200 {
            bail!(
                "creating bucket {LAMBDA_BUCKET}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let version = match a.version {
            Some(v) => v,
            None => {
                let mut v = 1;
                loop {
                    let (_, settings) = function_keys(&a.name, &v.to_string());
                    let path = format!("/{LAMBDA_BUCKET}/{settings}");
                    let (status, _) = api.call("HEAD", "s3", &path, &[], vec![]).await?;
                    if status == 404 {
                        break v;
                    }
                    v += 1;
                }
            }
        };
        let (zip_key, settings_key) = function_keys(&a.name, &version.to_string());
        client::put_file(
            &api.endpoint,
            LAMBDA_BUCKET,
            &zip_key,
            &a.zip,
            &api.creds,
            &api.region,
        )
        .await
        .with_context(|| format!("uploading {}", a.zip.display()))?;
        // The settings go last: a version whose settings exist is complete.
        let settings = json!({"handler": a.handler, "runtime": a.runtime}).to_string();
        let path = format!("/{LAMBDA_BUCKET}/{settings_key}");
        let (status, body) = api
            .call("PUT", "s3", &path, &[], settings.into_bytes())
            .await?;
        if status != 200 {
            bail!(
                "uploading the function's settings: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        println!(
            "arn:aws:lambda:{}:{account}:function:{}:{version}",
            api.region, a.name
        );
        Ok(ExitCode::SUCCESS)
    })
}
