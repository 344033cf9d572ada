//! `lichen lambda launch`: the process a Lambda component's lifecycle runs (`"$LICHEN_EXE"
//! lambda launch`). It reads the component's configuration over IPC, starts the function's
//! instance pool (`lichen_lambda`), subscribes to the event sources (local pub/sub and IoT Core
//! topics) as the component, and invokes the function for each message.
//!
//! The function is named by the recipe's setenv: `AWS_GREENGRASS_LAMBDA_FUNCTION_HANDLER`,
//! `AWS_GREENGRASS_LAMBDA_ARTIFACT_PATH` (the unarchived package), `AWS_GREENGRASS_LAMBDA_ARN`,
//! and `AWS_GREENGRASS_LAMBDA_EXEC_ARGS` (JSON argv before the handler; default
//! `["python3", "-m", "awslambdaric"]`).

use anyhow::{Context, bail};
use base64::Engine;
use clap::Subcommand;
use lichen_lambda::{FunctionConfig, Pool, runtime_api::Outcome};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::Arc;

mod v1;

#[derive(Subcommand)]
pub enum LambdaCommand {
    /// Run a Lambda component's function (its lifecycle's Run step).
    Launch,
}

pub fn run(c: LambdaCommand) -> anyhow::Result<ExitCode> {
    match c {
        LambdaCommand::Launch => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(launch()),
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set: `lichen lambda launch` runs as a Lambda component's lifecycle step, with the recipe's setenv")
    })
}

async fn launch() -> anyhow::Result<ExitCode> {
    let socket = env("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")?;
    let token = env("SVCUID")?;
    let client = Arc::new(
        lichen_ipc::IpcClient::connect(std::path::Path::new(&socket), &token)
            .await
            .context("connecting to the core's IPC")?,
    );
    let got = client
        .call("GetConfiguration", json!({"keyPath": []}))
        .await
        .context("GetConfiguration")?;
    let configuration = got.get("value").cloned().unwrap_or(Value::Null);
    let exec_args: Vec<String> = match std::env::var("AWS_GREENGRASS_LAMBDA_EXEC_ARGS") {
        Ok(s) if !s.trim().is_empty() => serde_json::from_str(&s)
            .context("AWS_GREENGRASS_LAMBDA_EXEC_ARGS must be a JSON list of strings")?,
        _ => vec!["python3".into(), "-m".into(), "awslambdaric".into()],
    };
    let mut config = FunctionConfig::from_component_config(
        &configuration,
        std::env::var("AWS_GREENGRASS_LAMBDA_ARN")
            .unwrap_or_else(|_| "arn:aws:lambda:us-east-1:000000000000:function:local:1".into()),
        exec_args,
        env("AWS_GREENGRASS_LAMBDA_FUNCTION_HANDLER")?,
        env("AWS_GREENGRASS_LAMBDA_ARTIFACT_PATH")?.into(),
    )?;
    v1::serve(&mut config, client.clone(), &token).await?;
    if config.event_sources.is_empty() {
        eprintln!("no pubsubTopics configured: the function is started but nothing invokes it");
    }
    let binary = config.binary_payload;
    let max_queue = config.max_queue;
    let sources = config.event_sources.clone();
    let pool = Pool::start(config).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(max_queue);
    for (topic, kind) in sources {
        let tx = tx.clone();
        if kind == "IOT_CORE" {
            let (_, mut stream) = client
                .subscribe(
                    "SubscribeToIoTCore",
                    json!({"topicName": topic, "qos": "1"}),
                )
                .await
                .with_context(|| {
                    format!(
                        "SubscribeToIoTCore {topic:?} (the component's accessControl must allow it)"
                    )
                })?;
            tokio::spawn(async move {
                while let Some(Ok(event)) = stream.recv().await {
                    let m = &event["message"];
                    let t = m["topicName"].as_str().unwrap_or_default().to_string();
                    let payload = base64::engine::general_purpose::STANDARD
                        .decode(m["payload"].as_str().unwrap_or_default())
                        .unwrap_or_default();
                    enqueue(&tx, t, payload);
                }
            });
        } else {
            let (_, mut stream) = client
                .subscribe("SubscribeToTopic", json!({"topic": topic}))
                .await
                .with_context(|| {
                    format!(
                        "SubscribeToTopic {topic:?} (the component's accessControl must allow it)"
                    )
                })?;
            let filter = topic.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = stream.recv_topic_message().await {
                    let (t, payload) = match m {
                        lichen_ipc::TopicMessage::Binary { topic, message } => (topic, message),
                        lichen_ipc::TopicMessage::Json { topic, message } => {
                            (topic, message.to_string().into_bytes())
                        }
                    };
                    enqueue(&tx, t.unwrap_or_else(|| filter.clone()), payload);
                }
            });
        }
    }
    drop(tx);
    println!("function ready");
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some((topic, payload)) = item else { bail!("every event source ended") };
                let pool = pool.clone();
                tokio::spawn(async move {
                    let event = if binary || serde_json::from_slice::<Value>(&payload).is_ok() {
                        payload
                    } else {
                        // A json function gets text that is not JSON as a JSON string.
                        Value::String(String::from_utf8_lossy(&payload).into()).to_string().into_bytes()
                    };
                    match pool.invoke(event, Some(&topic)).await {
                        Ok(Outcome::Response(_)) => println!("invocation from {topic} succeeded"),
                        Ok(Outcome::Error(e)) => eprintln!("invocation from {topic} raised: {}", String::from_utf8_lossy(&e)),
                        Err(e) => eprintln!("invocation from {topic} failed: {e}"),
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm() => break,
        }
    }
    pool.stop();
    Ok(ExitCode::SUCCESS)
}

async fn sigterm() {
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        s.recv().await;
    }
}

fn enqueue(tx: &tokio::sync::mpsc::Sender<(String, Vec<u8>)>, topic: String, payload: Vec<u8>) {
    if tx.try_send((topic.clone(), payload)).is_err() {
        eprintln!("the work queue is full (maxQueueSize); dropped a message from {topic}");
    }
}
