//! `lichen deployment …`: local deployments through the core's IPC (CreateLocalDeployment,
//! GetLocalDeploymentStatus, ListLocalDeployments, CancelLocalDeployment). Flags follow
//! greengrass-cli; its camelCase spellings are accepted as aliases.

use super::RootArgs;
use crate::cli_client::CoreConnection;
use crate::output;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum DeploymentCommand {
    /// Create a local deployment (prints its id).
    Create(CreateArgs),
    /// List local deployments, newest first.
    List {
        #[command(flatten)]
        root: RootArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show one deployment's status.
    Status {
        #[command(flatten)]
        root: RootArgs,
        #[arg(short = 'i', long = "deployment-id", visible_alias = "deploymentId")]
        id_flag: Option<String>,
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a deployment that has not started applying.
    Cancel {
        #[command(flatten)]
        root: RootArgs,
        #[arg(short = 'i', long = "deployment-id", visible_alias = "deploymentId")]
        id_flag: Option<String>,
        id: Option<String>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    root: RootArgs,
    /// Folder of recipes (.yaml/.yml/.json) to add to the component store.
    #[arg(short = 'r', long = "recipe-dir", visible_alias = "recipeDir")]
    recipe_dir: Option<PathBuf>,
    /// Folder of artifacts laid out as <name>/<version>/<file>.
    #[arg(short = 'a', long = "artifact-dir", visible_alias = "artifactDir")]
    artifact_dir: Option<PathBuf>,
    /// Root component to add or update, NAME=VERSION (repeatable, or comma-separated).
    #[arg(short = 'm', long = "merge", value_delimiter = ',')]
    merge: Vec<String>,
    /// Root component to remove (repeatable, or comma-separated).
    #[arg(long = "remove", value_delimiter = ',')]
    remove: Vec<String>,
    /// Configuration updates as JSON or a file: {"Name":{"MERGE":{…},"RESET":["/ptr"]}}.
    #[arg(short = 'c', long = "update-config", visible_alias = "updateConfig")]
    update_config: Option<String>,
    /// Thing group for the deployment (default: the local group).
    #[arg(short = 'g', long = "group", visible_alias = "groupId")]
    group: Option<String>,
    /// ROLLBACK or DO_NOTHING (default DO_NOTHING, as for Greengrass local deployments).
    #[arg(long = "failure-handling-policy", visible_alias = "fp")]
    failure_handling_policy: Option<String>,
    /// Per component (repeatable): NAME:posixUser=USER[:GROUP], or
    /// NAME:systemResourceLimits={"memory":KiB,"cpus":N,"pids":N,"ioWeight":N}; a component
    /// named without limits runs with runWithDefault's.
    #[arg(long = "run-with", visible_alias = "runWith")]
    run_with: Vec<String>,
    /// NOTIFY_COMPONENTS asks subscribed components before applying (they may defer).
    #[arg(long = "component-update-policy")]
    component_update_policy: Option<String>,
    /// Seconds to wait for components' answers with NOTIFY_COMPONENTS.
    #[arg(long = "update-timeout", default_value_t = 60)]
    update_timeout: u64,
    /// Wait until the deployment ends; exit non-zero unless it succeeded.
    #[arg(long)]
    wait: bool,
    /// Bound on --wait, in seconds.
    #[arg(long = "wait-timeout", default_value_t = 600)]
    wait_timeout: u64,
    #[arg(long)]
    json: bool,
}

pub fn run(c: DeploymentCommand) -> anyhow::Result<ExitCode> {
    match c {
        DeploymentCommand::Create(a) => create(a),
        DeploymentCommand::List { root, json } => {
            let core = CoreConnection::open(&root.root)?;
            let v = core.call("ListLocalDeployments", json!({}))?;
            let list = v["localDeployments"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if json {
                output::json(&Value::Array(list));
            } else {
                let rows: Vec<Vec<String>> = list.iter().map(row).collect();
                output::table(&["DEPLOYMENT ID", "STATUS", "DETAIL", "CREATED"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        DeploymentCommand::Status {
            root,
            id_flag,
            id,
            json,
        } => {
            let id = id_flag.or(id).context("give the deployment id")?;
            let core = CoreConnection::open(&root.root)?;
            let d =
                core.call("GetLocalDeploymentStatus", json!({ "deploymentId": id }))?["deployment"]
                    .clone();
            print_deployment(&d, json);
            Ok(ExitCode::SUCCESS)
        }
        DeploymentCommand::Cancel { root, id_flag, id } => {
            let id = id_flag.or(id).context("give the deployment id")?;
            let core = CoreConnection::open(&root.root)?;
            let v = core.call("CancelLocalDeployment", json!({ "deploymentId": id }))?;
            println!("{}", v["message"].as_str().unwrap_or("canceled"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn row(d: &Value) -> Vec<String> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    vec![
        s(&d["deploymentId"]),
        s(&d["status"]),
        s(&d["deploymentStatusDetails"]["detailedDeploymentStatus"]),
        s(&d["createdOn"]),
    ]
}

fn print_deployment(d: &Value, json: bool) {
    if json {
        output::json(d);
        return;
    }
    let r = row(d);
    println!("{}: {}", r[0], r[1]);
    if !r[2].is_empty() {
        println!("  detail:  {}", r[2]);
    }
    println!("  created: {}", r[3]);
    let cause = d["deploymentStatusDetails"]["deploymentFailureCause"]
        .as_str()
        .unwrap_or("");
    if !cause.is_empty() {
        println!("  cause:   {cause}");
    }
    if let Some(warnings) = d["deploymentStatusDetails"]["warnings"].as_array() {
        for w in warnings.iter().filter_map(Value::as_str) {
            println!("  warning: {w}");
        }
    }
}

/// A JSON text or the path of a file that holds it.
fn json_or_file(s: &str, what: &str) -> anyhow::Result<Value> {
    let text = if Path::new(s).is_file() {
        std::fs::read_to_string(s).with_context(|| format!("reading {what} file {s}"))?
    } else {
        s.to_string()
    };
    serde_json::from_str(&text)
        .with_context(|| format!("{what} is neither valid JSON nor a readable file: {s}"))
}

fn absolute(p: &Path) -> anyhow::Result<String> {
    Ok(std::path::absolute(p)?.display().to_string())
}

fn create(a: CreateArgs) -> anyhow::Result<ExitCode> {
    let mut req = Map::new();
    if let Some(g) = &a.group {
        req.insert("groupName".into(), json!(g));
    }
    let mut add = Map::new();
    for m in &a.merge {
        let (name, ver) = m
            .split_once('=')
            .with_context(|| format!("--merge {m:?}: expected NAME=VERSION"))?;
        add.insert(name.trim().into(), json!(ver.trim()));
    }
    if !add.is_empty() {
        req.insert("rootComponentVersionsToAdd".into(), Value::Object(add));
    }
    if !a.remove.is_empty() {
        req.insert("rootComponentsToRemove".into(), json!(a.remove));
    }
    if let Some(c) = &a.update_config {
        let v = json_or_file(c, "--update-config")?;
        if !v.is_object() {
            anyhow::bail!(
                "--update-config must be an object {{\"Name\":{{\"MERGE\":{{…}},\"RESET\":[…]}}}}"
            );
        }
        req.insert("componentToConfiguration".into(), v);
    }
    if !a.run_with.is_empty() {
        let mut rw = Map::new();
        for r in &a.run_with {
            let expected = || {
                format!(
                    "--run-with {r:?}: expected NAME:posixUser=USER[:GROUP] or \
                     NAME:systemResourceLimits={{\"memory\":KiB,\"cpus\":N}}"
                )
            };
            let (name, rest) = r.split_once(':').with_context(expected)?;
            let entry = rw.entry(name.to_string()).or_insert_with(|| json!({}));
            if let Some(user) = rest.strip_prefix("posixUser=") {
                entry["posixUser"] = json!(user);
            } else if let Some(limits) = rest.strip_prefix("systemResourceLimits=") {
                let limits: Value = serde_json::from_str(limits)
                    .with_context(|| format!("{}: not JSON", expected()))?;
                entry["systemResourceLimits"] = limits;
            } else {
                anyhow::bail!(expected());
            }
        }
        req.insert("componentToRunWithInfo".into(), Value::Object(rw));
    }
    if let Some(d) = &a.recipe_dir {
        req.insert("recipeDirectoryPath".into(), json!(absolute(d)?));
    }
    if let Some(d) = &a.artifact_dir {
        req.insert("artifactsDirectoryPath".into(), json!(absolute(d)?));
    }
    if let Some(p) = &a.failure_handling_policy {
        req.insert("failureHandlingPolicy".into(), json!(p.to_uppercase()));
    }
    if let Some(p) = &a.component_update_policy {
        req.insert(
            "componentUpdatePolicy".into(),
            json!({ "action": p.to_uppercase(), "timeout": a.update_timeout }),
        );
    }
    let core = CoreConnection::open(&a.root.root)?;
    let v = core.call("CreateLocalDeployment", Value::Object(req))?;
    let id = v["deploymentId"].as_str().unwrap_or_default().to_string();
    if !a.wait {
        if a.json {
            output::json(&json!({ "deploymentId": id }));
        } else {
            println!("Local deployment submitted! Deployment Id: {id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + Duration::from_secs(a.wait_timeout);
    let mut core = Some(core);
    loop {
        // The core may restart during a deployment (a bootstrap step can ask for it): reconnect.
        let answer = match &core {
            Some(c) => c.call("GetLocalDeploymentStatus", json!({ "deploymentId": id })),
            None => CoreConnection::open(&a.root.root).and_then(|c| {
                let r = c.call("GetLocalDeploymentStatus", json!({ "deploymentId": id }));
                core = Some(c);
                r
            }),
        };
        let d = match answer {
            Ok(v) => v["deployment"].clone(),
            Err(e) => {
                if Instant::now() > deadline {
                    return Err(e);
                }
                core = None;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let status = d["status"].as_str().unwrap_or("");
        if matches!(status, "SUCCEEDED" | "FAILED" | "CANCELED") {
            print_deployment(&d, a.json);
            return Ok(if status == "SUCCEEDED" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if Instant::now() > deadline {
            anyhow::bail!("deployment {id} still {status} after {}s", a.wait_timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
