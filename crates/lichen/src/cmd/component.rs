//! `lichen component …`: component state and control through the core's IPC (ListComponents,
//! GetComponentDetails, RestartComponent, StopComponent).

use super::RootArgs;
use crate::cli_client::CoreConnection;
use crate::output;
use clap::Subcommand;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ComponentCommand {
    /// List components with their version and state.
    List {
        #[command(flatten)]
        root: RootArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show one component: version, state, configuration.
    Details {
        #[command(flatten)]
        root: RootArgs,
        #[arg(short = 'n', long = "name")]
        name_flag: Option<String>,
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restart components (they reinstall only if their recipe asks for it).
    Restart {
        #[command(flatten)]
        root: RootArgs,
        #[arg(short = 'n', long = "names", value_delimiter = ',')]
        names_flag: Vec<String>,
        names: Vec<String>,
    },
    /// Stop components (they stay stopped until restarted or redeployed).
    Stop {
        #[command(flatten)]
        root: RootArgs,
        #[arg(short = 'n', long = "names", value_delimiter = ',')]
        names_flag: Vec<String>,
        names: Vec<String>,
    },
}

pub fn run(c: ComponentCommand) -> anyhow::Result<ExitCode> {
    match c {
        ComponentCommand::List { root, json } => {
            let core = CoreConnection::open(&root.root)?;
            let v = core.call("ListComponents", json!({}))?;
            let list = v["components"].as_array().cloned().unwrap_or_default();
            if json {
                output::json(&Value::Array(list));
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        vec![
                            c["componentName"].as_str().unwrap_or("").into(),
                            c["version"].as_str().unwrap_or("").into(),
                            c["state"].as_str().unwrap_or("").into(),
                        ]
                    })
                    .collect();
                output::table(&["COMPONENT", "VERSION", "STATE"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        ComponentCommand::Details {
            root,
            name_flag,
            name,
            json,
        } => {
            let name = name_flag
                .or(name)
                .ok_or_else(|| anyhow::anyhow!("give the component name"))?;
            let core = CoreConnection::open(&root.root)?;
            let d = core.call("GetComponentDetails", json!({ "componentName": name }))?["componentDetails"].clone();
            if json {
                output::json(&d);
            } else {
                println!(
                    "Component Name: {}",
                    d["componentName"].as_str().unwrap_or("")
                );
                println!("Version: {}", d["version"].as_str().unwrap_or(""));
                println!("State: {}", d["state"].as_str().unwrap_or(""));
                println!("Configuration: {}", d["configuration"]);
                if let Some(u) = d.get("resourceUsage") {
                    let mib = |v: &Value| v.as_u64().map(|b| b as f64 / 1048576.0);
                    println!(
                        "Memory: {:.1} MiB (peak {})",
                        mib(&u["memoryBytes"]).unwrap_or(0.0),
                        mib(&u["memoryPeakBytes"])
                            .map_or("unknown".into(), |m| format!("{m:.1} MiB"))
                    );
                    println!(
                        "CPU: {:.3} s used, throttled in {} periods ({:.3} s)",
                        u["cpuUsageMicros"].as_u64().unwrap_or(0) as f64 / 1e6,
                        u["cpuThrottledPeriods"].as_u64().unwrap_or(0),
                        u["cpuThrottledMicros"].as_u64().unwrap_or(0) as f64 / 1e6
                    );
                    println!(
                        "Processes: {}  OOM kills: {}",
                        u["processes"].as_u64().unwrap_or(0),
                        u["oomKills"].as_u64().unwrap_or(0)
                    );
                }
                if let Some(why) = d.get("resourceLimitsNotEnforced").and_then(Value::as_str) {
                    println!("Warning: {why}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ComponentCommand::Restart {
            root,
            names_flag,
            names,
        } => control(
            &root,
            "RestartComponent",
            "restartStatus",
            names_flag,
            names,
        ),
        ComponentCommand::Stop {
            root,
            names_flag,
            names,
        } => control(&root, "StopComponent", "stopStatus", names_flag, names),
    }
}

fn control(
    root: &RootArgs,
    op: &str,
    key: &str,
    mut names: Vec<String>,
    more: Vec<String>,
) -> anyhow::Result<ExitCode> {
    names.extend(more);
    if names.is_empty() {
        anyhow::bail!("give at least one component name");
    }
    let core = CoreConnection::open(&root.root)?;
    let mut ok = true;
    for n in &names {
        let v = core.call(op, json!({ "componentName": n }))?;
        let status = v[key].as_str().unwrap_or("");
        let msg = v["message"].as_str().unwrap_or("");
        if status == "SUCCEEDED" {
            println!("{n}: {status}");
        } else {
            ok = false;
            eprintln!("{n}: {status} {msg}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
