//! `lichen fleet deployment …`: Greengrass deployments through a running fleet's API, signed
//! with the administrator credentials `lichen fleet serve` wrote to `<root>/admin`, at the
//! address in `<root>/endpoints.json`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Subcommand)]
pub enum DeploymentCommand {
    /// Deploy components to a thing or thing group (a new revision for that target).
    Create(CreateArgs),
    /// What each device would run, and conflicts between its groups, without deploying.
    Preview(CreateArgs),
    /// A deployment's progress per device (live on a terminal until every device finished).
    Status(StatusArgs),
    /// Cancel a deployment.
    Cancel(IdArgs),
    /// List deployments (each target's latest; --all for every revision).
    List(ListArgs),
}

#[derive(Args)]
pub struct Fleet {
    /// Fleet root directory (where `lichen fleet serve` writes endpoints.json and admin/).
    #[arg(long, env = "LICHEN_FLEET_ROOT", default_value = "./lichen-fleet")]
    pub root: PathBuf,
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    fleet: Fleet,
    /// `thing:NAME` or `group:NAME`.
    #[arg(long)]
    target: String,
    /// `NAME=VERSION` (repeatable).
    #[arg(long = "component", required = true)]
    components: Vec<String>,
    /// A name for the deployment.
    #[arg(long)]
    name: Option<String>,
    /// Notify at most this many devices a minute.
    #[arg(long = "rollout")]
    rollout_per_minute: Option<u32>,
    /// Abort (and roll back the devices that took it) once this percentage of devices failed.
    #[arg(long)]
    abort_failed_percent: Option<f64>,
    /// Devices that must have finished before the abort threshold is judged.
    #[arg(long, default_value_t = 1)]
    abort_min_executed: u32,
    /// A device counts as succeeded only after the components stayed RUNNING this long.
    #[arg(long)]
    bake_seconds: Option<u64>,
    /// Only show what each device would run (same as `deployment preview`).
    #[arg(long)]
    preview: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    fleet: Fleet,
    /// The deployment id.
    id: String,
    /// Print the current state once and exit.
    #[arg(long)]
    once: bool,
    /// Stop following after this long (exit status 3).
    #[arg(long, default_value_t = 600)]
    wait_seconds: u64,
}

#[derive(Args)]
pub struct IdArgs {
    #[command(flatten)]
    fleet: Fleet,
    id: String,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    fleet: Fleet,
    /// Every revision, not only each target's latest.
    #[arg(long)]
    all: bool,
}

pub fn run(c: DeploymentCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match c {
            DeploymentCommand::Create(a) if a.preview => preview(a).await,
            DeploymentCommand::Create(a) => create(a).await,
            DeploymentCommand::Preview(a) => preview(a).await,
            DeploymentCommand::Status(a) => status(a).await,
            DeploymentCommand::Cancel(a) => {
                let api = Api::open(&a.fleet.root)?;
                let path = format!("/greengrass/v2/deployments/{}/cancel", a.id);
                api.call("POST", &path, "", None).await?;
                println!("deployment {} cancelled", a.id);
                Ok(ExitCode::SUCCESS)
            }
            DeploymentCommand::List(a) => {
                let api = Api::open(&a.fleet.root)?;
                let filter = if a.all { "ALL" } else { "LATEST_ONLY" };
                let out = api
                    .call(
                        "GET",
                        "/greengrass/v2/deployments",
                        &format!("historyFilter={filter}"),
                        None,
                    )
                    .await?;
                for d in out["deployments"].as_array().into_iter().flatten() {
                    println!(
                        "{}  rev {:>3}  {:<9}  {}  {}",
                        d["deploymentId"].as_str().unwrap_or_default(),
                        d["revisionId"].as_str().unwrap_or_default(),
                        d["deploymentStatus"].as_str().unwrap_or_default(),
                        d["targetArn"].as_str().unwrap_or_default(),
                        d["deploymentName"].as_str().unwrap_or_default(),
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// The request body for create and preview.
async fn request(a: &CreateArgs, api: &Api) -> anyhow::Result<Value> {
    // The target's ARN, from the iot API (which also says whether it exists).
    let target = match a.target.split_once(':') {
        Some(("thing", n)) if !n.is_empty() => {
            api.call("GET", &format!("/things/{n}"), "", None).await?["thingArn"].clone()
        }
        Some(("group", n)) if !n.is_empty() => api
            .call("GET", &format!("/thing-groups/{n}"), "", None)
            .await?["thingGroupArn"]
            .clone(),
        _ => bail!("--target {:?}: give thing:NAME or group:NAME", a.target),
    };
    let mut components = serde_json::Map::new();
    for c in &a.components {
        let Some((n, v)) = c.split_once('=') else {
            bail!("--component {c:?}: give NAME=VERSION, e.g. com.example.Hello=1.0.0");
        };
        components.insert(n.into(), json!({"componentVersion": v}));
    }
    let mut body = json!({
        "targetArn": target,
        "components": components,
    });
    if let Some(n) = &a.name {
        body["deploymentName"] = json!(n);
    }
    let mut job = serde_json::Map::new();
    if let Some(r) = a.rollout_per_minute {
        job.insert(
            "jobExecutionsRolloutConfig".into(),
            json!({"maximumPerMinute": r}),
        );
    }
    if let Some(p) = a.abort_failed_percent {
        job.insert(
            "abortConfig".into(),
            json!({"criteriaList": [{"failureType": "FAILED", "action": "CANCEL",
                "thresholdPercentage": p, "minNumberOfExecutedThings": a.abort_min_executed}]}),
        );
    }
    if !job.is_empty() {
        body["iotJobConfiguration"] = Value::Object(job);
    }
    if let Some(b) = a.bake_seconds {
        body["tags"] = json!({"lichen:bakeTimeSeconds": b.to_string()});
    }
    Ok(body)
}

async fn create(a: CreateArgs) -> anyhow::Result<ExitCode> {
    let api = Api::open(&a.fleet.root)?;
    let body = request(&a, &api).await?;
    let out = api
        .call("POST", "/greengrass/v2/deployments", "", Some(&body))
        .await?;
    let id = out["deploymentId"].as_str().unwrap_or_default();
    println!("{id}");
    eprintln!("follow it with: lichen fleet deployment status {id}");
    Ok(ExitCode::SUCCESS)
}

async fn preview(a: CreateArgs) -> anyhow::Result<ExitCode> {
    let api = Api::open(&a.fleet.root)?;
    let body = request(&a, &api).await?;
    let out = api
        .call(
            "POST",
            "/greengrass/v2/deployments/preview",
            "",
            Some(&body),
        )
        .await?;
    let mut conflicts = 0;
    for d in out["devices"].as_array().into_iter().flatten() {
        println!("{}", d["thingName"].as_str().unwrap_or_default());
        for c in d["components"].as_array().into_iter().flatten() {
            println!(
                "  {} {}",
                c["componentName"].as_str().unwrap_or_default(),
                c["componentVersion"].as_str().unwrap_or_default()
            );
        }
        for c in d["conflicts"].as_array().into_iter().flatten() {
            conflicts += 1;
            println!("  CONFLICT {}", c["message"].as_str().unwrap_or_default());
        }
    }
    Ok(if conflicts > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

const TERMINAL: &[&str] = &["SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED", "REJECTED"];

async fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let api = Api::open(&a.fleet.root)?;
    let path = format!("/greengrass/v2/deployments/{}/devices", a.id);
    let live = !a.once && std::io::stdout().is_terminal();
    let bar = live.then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {pos}/{len} devices finished  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    });
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.wait_seconds);
    loop {
        let out = api.call("GET", &path, "", None).await?;
        let state = out["deploymentStatus"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let targets = out["targets"].as_u64().unwrap_or(0);
        let devices = out["devices"].as_array().cloned().unwrap_or_default();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for d in &devices {
            let thing = d["thingName"].as_str().unwrap_or_default().to_string();
            let s = d["coreDeviceExecutionStatus"].as_str().unwrap_or_default();
            *counts.entry(s.to_string()).or_default() += 1;
            let line = match d["reason"].as_str() {
                Some(r) => format!("{s} ({r})"),
                None => s.to_string(),
            };
            if seen.get(&thing) != Some(&line) {
                match &bar {
                    Some(b) => b.println(format!("{thing}: {line}")),
                    None => println!("{thing}: {line}"),
                }
                seen.insert(thing, line);
            }
        }
        let finished: u64 = TERMINAL
            .iter()
            .map(|s| counts.get(*s).copied().unwrap_or(0))
            .sum();
        let summary = counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(b) = &bar {
            b.set_length(targets.max(devices.len() as u64));
            b.set_position(finished);
            b.set_message(format!("{state}  {summary}"));
            b.tick();
        }
        let done = state != "ACTIVE" || (targets > 0 && finished >= targets);
        if a.once || done {
            if let Some(b) = &bar {
                b.finish();
            }
            println!(
                "deployment {}: {state}; {finished}/{targets} devices finished{}",
                a.id,
                if summary.is_empty() {
                    String::new()
                } else {
                    format!(" ({summary})")
                }
            );
            let failed = counts.get("FAILED").copied().unwrap_or(0)
                + counts.get("TIMED_OUT").copied().unwrap_or(0);
            return Ok(if failed > 0 || state == "FAILED" {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        if tokio::time::Instant::now() >= deadline {
            if let Some(b) = &bar {
                b.abandon();
            }
            println!(
                "deployment {}: {state}; {finished}/{targets} devices finished after {} s; \
                 stopped following (--wait-seconds)",
                a.id, a.wait_seconds
            );
            return Ok(ExitCode::from(3));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The fleet's API as its administrator: address, keys, and SigV4 signing.
struct Api {
    host: String,
    region: String,
    creds: lichen_sigv4::Credentials,
}

impl Api {
    fn open(root: &Path) -> anyhow::Result<Api> {
        let endpoints = root.join("endpoints.json");
        let e: Value = serde_json::from_slice(&std::fs::read(&endpoints).with_context(|| {
            format!(
                "reading {} (is `lichen fleet serve --root {}` running?)",
                endpoints.display(),
                root.display()
            )
        })?)
        .with_context(|| format!("{} is not JSON", endpoints.display()))?;
        let api = e["api"].as_str().unwrap_or_default();
        let Some(host) = api.strip_prefix("http://") else {
            bail!(
                "{}: api {api:?} is not an http:// address",
                endpoints.display()
            );
        };
        let ini = |file: &str, key: &str| -> anyhow::Result<String> {
            let p = root.join("admin").join(file);
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
                .with_context(|| format!("{} has no {key}", p.display()))
        };
        Ok(Api {
            host: host.trim_end_matches('/').to_string(),
            region: ini("config", "region").unwrap_or_else(|_| "us-east-1".into()),
            creds: lichen_sigv4::Credentials {
                access_key_id: ini("credentials", "aws_access_key_id")?,
                secret_access_key: ini("credentials", "aws_secret_access_key")?,
                session_token: None,
            },
        })
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let service = if path.starts_with("/greengrass/") {
            "greengrass"
        } else {
            "iot"
        };
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        let mut headers = vec![];
        if body.is_some() {
            headers.push(("content-type".to_string(), "application/json".to_string()));
        }
        let amz_date = lichen_sigv4::amz_date_now();
        let sha = lichen_sigv4::hex_sha256(payload.as_bytes());
        let (canonical_query, added) = lichen_sigv4::sign(
            &lichen_sigv4::SignInput {
                method,
                host: &self.host,
                path,
                query: &pairs,
                headers: &headers,
                payload_sha256: &sha,
                region: &self.region,
                service,
                amz_date: &amz_date,
                content_sha256_header: false,
            },
            &self.creds,
        );
        let target = if canonical_query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{canonical_query}")
        };
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\
             connection: close\r\n",
            self.host,
            payload.len()
        );
        for (k, v) in headers.iter().chain(added.iter()) {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        let mut s = tokio::net::TcpStream::connect(&self.host)
            .await
            .with_context(|| format!("connecting to the fleet's API at {}", self.host))?;
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw))
            .await
            .context("the fleet's API did not answer within 60 s")??;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let v: Value = serde_json::from_str(body).unwrap_or(json!({}));
        if !(200..300).contains(&code) {
            bail!(
                "{method} {path}: HTTP {code}: {}",
                v["message"].as_str().unwrap_or(body)
            );
        }
        Ok(v)
    }
}
