//! `lichen fleet component publish|list|describe|delete|keygen`: the component registry through
//! the fleet's own API (greengrassv2 and S3), signed with the administrator credentials that
//! `lichen fleet serve` writes under `<root>/admin/`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use lichen_fleet_api::client::{self, Signing};
use lichen_fleet_api::s3::Credentials;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ComponentCommand {
    /// Publish a component version from a folder: `recipe.yaml` (or .yml/.json) and
    /// `artifacts/<name>/<version>/<file>` as for a local deployment. The artifacts are uploaded
    /// to the fleet's object store, the recipe's URIs become `s3://` with their digests, and
    /// the version is created (signed with --sign-key).
    Publish(PublishArgs),
    /// List components with their latest versions.
    List(Common),
    /// Describe a component version (`NAME@VERSION` or its ARN).
    Describe(OneArgs),
    /// Delete a component version (`NAME@VERSION` or its ARN).
    Delete(OneArgs),
    /// Write a new Ed25519 signing key (PKCS#8 PEM, 0600) and print its public key, the value
    /// cores list in `lichen.componentSigningKeys`.
    Keygen(KeygenArgs),
}

#[derive(Args)]
pub struct Common {
    /// Fleet root directory (its endpoints.json and admin credentials).
    #[arg(long, env = "LICHEN_FLEET_ROOT", default_value = "./lichen-fleet")]
    pub root: PathBuf,
}

#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub common: Common,
    /// The component folder.
    pub dir: PathBuf,
    /// Bucket the artifacts are uploaded to (created if absent).
    #[arg(long, default_value = "lichen-components")]
    pub bucket: String,
    /// Sign the published recipe with this Ed25519 private key (PKCS#8 PEM).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
}

#[derive(Args)]
pub struct OneArgs {
    #[command(flatten)]
    pub common: Common,
    /// `NAME@VERSION` or a component version ARN.
    pub component: String,
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the private key.
    #[arg(long)]
    pub out: PathBuf,
}

/// The fleet's API address and its administrator key, from the root.
pub(crate) struct Api {
    pub(crate) endpoint: String,
    pub(crate) creds: Credentials,
    pub(crate) region: String,
}

fn ini_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}

impl Api {
    pub(crate) fn open(root: &Path) -> anyhow::Result<Api> {
        let endpoints = root.join("endpoints.json");
        let e: Value = serde_json::from_slice(&std::fs::read(&endpoints).with_context(|| {
            format!(
                "reading {} (is `lichen fleet serve --root {}` running?)",
                endpoints.display(),
                root.display()
            )
        })?)
        .with_context(|| format!("{} is not JSON", endpoints.display()))?;
        let endpoint = e["api"]
            .as_str()
            .context("endpoints.json has no api")?
            .to_string();
        let creds_path = root.join("admin/credentials");
        let text = std::fs::read_to_string(&creds_path)
            .with_context(|| format!("reading {}", creds_path.display()))?;
        let config = std::fs::read_to_string(root.join("admin/config")).unwrap_or_default();
        Ok(Api {
            endpoint,
            creds: Credentials {
                access_key_id: ini_value(&text, "aws_access_key_id")
                    .context("no aws_access_key_id in the admin credentials")?,
                secret_access_key: ini_value(&text, "aws_secret_access_key")
                    .context("no aws_secret_access_key in the admin credentials")?,
                session_token: None,
            },
            region: ini_value(&config, "region").unwrap_or_else(|| "us-east-1".into()),
        })
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        service: &str,
        path: &str,
        query: &[(String, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let headers = if body.is_empty() {
            vec![]
        } else {
            vec![("content-type".to_string(), "application/json".to_string())]
        };
        let payload = lichen_fleet_api::s3::hex_sha256(&body);
        let answer = client::send(
            method,
            &self.endpoint,
            path,
            query,
            &headers,
            body.into(),
            Some(Signing {
                creds: &self.creds,
                region: &self.region,
                service,
                payload_sha256: &payload,
            }),
        )
        .await?;
        let status = answer.status;
        Ok((status, answer.bytes().await?))
    }

    /// A greengrass call whose answer must be 2xx JSON.
    async fn greengrass(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (status, answer) = self.call(method, "greengrass", path, query, body).await?;
        let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            bail!(
                "{method} {path}: {status}: {}",
                v.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("(no message)")
            );
        }
        Ok(v)
    }
}

fn version_arn(api_region: &str, spec: &str, account: Option<&str>) -> anyhow::Result<String> {
    if spec.starts_with("arn:") {
        return Ok(spec.to_string());
    }
    let (name, version) = spec
        .split_once('@')
        .with_context(|| format!("{spec:?} is neither NAME@VERSION nor a component version ARN"))?;
    let account = account.context("the fleet's account id is unknown")?;
    Ok(format!(
        "arn:aws:greengrass:{api_region}:{account}:components:{name}:versions:{version}"
    ))
}

fn encode_arn(arn: &str) -> String {
    lichen_fleet_api::s3::uri_encode(arn, false)
}

pub fn run(c: ComponentCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match c {
            ComponentCommand::Publish(a) => publish(a).await,
            ComponentCommand::List(a) => {
                let api = Api::open(&a.root)?;
                let mut token: Option<String> = None;
                loop {
                    let query: Vec<(String, String)> = token
                        .iter()
                        .map(|t| ("nextToken".to_string(), t.clone()))
                        .collect();
                    let v = api
                        .greengrass("GET", "/greengrass/v2/components", &query, None)
                        .await?;
                    for c in v["components"].as_array().into_iter().flatten() {
                        println!(
                            "{}\t{}\t{}",
                            c["componentName"].as_str().unwrap_or_default(),
                            c["latestVersion"]["componentVersion"]
                                .as_str()
                                .unwrap_or_default(),
                            c["latestVersion"]["arn"].as_str().unwrap_or_default()
                        );
                    }
                    match v["nextToken"].as_str() {
                        Some(t) => token = Some(t.to_string()),
                        None => break,
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ComponentCommand::Describe(a) => {
                let api = Api::open(&a.common.root)?;
                let arn = resolve_arn(&api, &a.component).await?;
                let v = api
                    .greengrass(
                        "GET",
                        &format!("/greengrass/v2/components/{}/metadata", encode_arn(&arn)),
                        &[],
                        None,
                    )
                    .await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(ExitCode::SUCCESS)
            }
            ComponentCommand::Delete(a) => {
                let api = Api::open(&a.common.root)?;
                let arn = resolve_arn(&api, &a.component).await?;
                api.greengrass(
                    "DELETE",
                    &format!("/greengrass/v2/components/{}", encode_arn(&arn)),
                    &[],
                    None,
                )
                .await?;
                println!("deleted {arn}");
                Ok(ExitCode::SUCCESS)
            }
            ComponentCommand::Keygen(a) => {
                let (pem, public) =
                    lichen_fleet_api::signing::generate().map_err(anyhow::Error::msg)?;
                lichen_fleet_pki::write_private(&a.out, pem.as_bytes())
                    .with_context(|| format!("writing {}", a.out.display()))?;
                println!("{public}");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// NAME@VERSION → ARN, learning the account from the fleet (ListComponents answers ARNs).
async fn resolve_arn(api: &Api, spec: &str) -> anyhow::Result<String> {
    if spec.starts_with("arn:") {
        return Ok(spec.to_string());
    }
    // The account id is in any ARN the fleet issues; a component list is the cheapest source.
    let list = api
        .greengrass(
            "GET",
            "/greengrass/v2/components",
            &[("maxResults".into(), "1".into())],
            None,
        )
        .await?;
    let account = list["components"][0]["arn"]
        .as_str()
        .and_then(|a| a.split(':').nth(4))
        .map(str::to_owned);
    version_arn(&api.region, spec, account.as_deref())
}

fn find_recipe(dir: &Path) -> anyhow::Result<PathBuf> {
    for name in ["recipe.yaml", "recipe.yml", "recipe.json"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{} has no recipe.yaml, recipe.yml or recipe.json",
        dir.display()
    )
}

async fn publish(a: PublishArgs) -> anyhow::Result<ExitCode> {
    let api = Api::open(&a.common.root)?;
    let recipe_path = find_recipe(&a.dir)?;
    let recipe = lichen_recipe::parse_file(&recipe_path)?;
    let text = std::fs::read_to_string(&recipe_path)?;
    let mut value: Value = if recipe_path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)?
    } else {
        serde_yaml_ng::from_str(&text)?
    };
    let version = recipe.version.to_string();
    let artifacts_dir = a.dir.join("artifacts").join(&recipe.name).join(&version);
    let key = |k: &serde_json::Map<String, Value>, want: &str| {
        k.keys().find(|n| n.eq_ignore_ascii_case(want)).cloned()
    };
    let mut bucket_made = false;
    let manifests_key = value
        .as_object()
        .and_then(|m| key(m, "Manifests"))
        .context("the recipe has no Manifests")?;
    let mut uploads = vec![];
    for manifest in value[&manifests_key]
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        let Some(ak) = key(manifest, "Artifacts") else {
            continue;
        };
        for art in manifest[&ak]
            .as_array_mut()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            let Some(uk) = key(art, "Uri") else { continue };
            let uri = art[&uk].as_str().unwrap_or_default().to_string();
            let file_name = uri
                .rsplit(['/', ':'])
                .next()
                .unwrap_or_default()
                .to_string();
            let local = artifacts_dir.join(&file_name);
            if file_name.is_empty() || !local.is_file() {
                if uri.to_ascii_lowercase().starts_with("s3://") {
                    continue; // already in the store; the fleet checks it
                }
                bail!("artifact {uri}: no file {} to upload", local.display());
            }
            if !bucket_made {
                let (status, body) = api
                    .call("PUT", "s3", &format!("/{}", a.bucket), &[], vec![])
                    .await?;
                if status != 200 {
                    bail!(
                        "creating bucket {}: {status}: {}",
                        a.bucket,
                        String::from_utf8_lossy(&body)
                    );
                }
                bucket_made = true;
            }
            let object_key = format!("{}/{}/{}", recipe.name, version, file_name);
            client::put_file(
                &api.endpoint,
                &a.bucket,
                &object_key,
                &local,
                &api.creds,
                &api.region,
            )
            .await
            .with_context(|| format!("uploading {}", local.display()))?;
            let digest = client::file_sha256_b64(&local)
                .with_context(|| format!("reading {}", local.display()))?;
            let new_uri = format!("s3://{}/{object_key}", a.bucket);
            art.insert(uk, Value::String(new_uri.clone()));
            for stale in ["Digest", "Algorithm"] {
                if let Some(k) = key(art, stale) {
                    art.remove(&k);
                }
            }
            art.insert("Digest".into(), Value::String(digest));
            art.insert("Algorithm".into(), Value::String("SHA-256".into()));
            uploads.push(new_uri);
        }
    }
    // Published as JSON: the bytes signed are exactly the bytes devices receive.
    let bytes = serde_json::to_vec_pretty(&value)?;
    let mut body = json!({
        "inlineRecipe": lichen_fleet_api::signing::base64(&bytes),
        "clientToken": uuid_v4(),
    });
    if let Some(k) = &a.sign_key {
        let pem = std::fs::read_to_string(k).with_context(|| format!("reading {}", k.display()))?;
        let key = lichen_fleet_api::signing::load_key(&pem)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{} is not a usable signing key", k.display()))?;
        body["lichenSignature"] = lichen_fleet_api::signing::sign_recipe(&key, &bytes);
    }
    let v = api
        .greengrass(
            "POST",
            "/greengrass/v2/createComponentVersion",
            &[],
            Some(body),
        )
        .await?;
    for u in &uploads {
        eprintln!("uploaded {u}");
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    if v["status"]["componentState"] == "DEPLOYABLE" {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

fn uuid_v4() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}
