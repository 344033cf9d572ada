//! The V1 `greengrasssdk` for functions run by `lichen lambda launch`: the launcher serves the
//! V1 functions protocol (`lichen_lambda::v1_api`) and writes the runtime modules the SDK
//! imports (`lichen_lambda::v1_sdk`) onto the instances' `PYTHONPATH`. The SDK's calls become
//! IPC calls made as the component, so its `accessControl` decides them:
//!
//! * `client('iot-data').publish(topic, payload)` (GGRouter) → `PublishToTopic` on local
//!   publish/subscribe (there is no legacy subscription router to send it elsewhere).
//! * `client('secretsmanager').get_secret_value(SecretId, VersionStage)` → `GetSecretValue`;
//!   refusals come back as the SDK's `{"Status", "Message"}` error payload.
//!
//! Other pseudo-functions (the shadow service, invoking other functions) answer an Unhandled
//! function error that names what is missing.

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use lichen_ipc::{ClientError, IpcClient};
use lichen_lambda::FunctionConfig;
use lichen_lambda::v1_api::{self, V1Call, V1Result};
use serde_json::{Value, json};
use std::sync::Arc;

const ROUTER: &str = "GGRouter";
const SECRETS: &str = "GGSecretsManager";

/// Starts the V1 endpoint and sets the instances' environment for the SDK.
pub async fn serve(
    config: &mut FunctionConfig,
    client: Arc<IpcClient>,
    svcuid: &str,
) -> anyhow::Result<()> {
    let token = std::env::var("AWS_CONTAINER_AUTHORIZATION_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| svcuid.to_string());
    let dir = std::env::current_dir()
        .context("the launcher's working directory")?
        .join("greengrass-v1-runtime");
    lichen_lambda::v1_sdk::install(&dir)
        .with_context(|| format!("writing the V1 SDK's runtime modules to {}", dir.display()))?;
    let handler: v1_api::Handler = Arc::new(move |call| {
        let client = client.clone();
        Box::pin(async move { answer(&client, call).await })
    });
    let (port, _task) = v1_api::serve(token.clone(), handler)
        .await
        .context("listening for the V1 SDK on loopback")?;
    let env = &mut config.environment;
    let path = match env.get("PYTHONPATH") {
        Some(p) if !p.is_empty() => format!("{p}:{}", dir.display()),
        _ => dir.display().to_string(),
    };
    env.insert("PYTHONPATH".into(), path);
    env.insert("GG_DAEMON_PORT".into(), port.to_string());
    env.insert("AWS_CONTAINER_AUTHORIZATION_TOKEN".into(), token);
    for (k, name) in [
        ("ROUTER_FUNCTION_ARN", ROUTER),
        ("SHADOW_FUNCTION_ARN", "GGShadowService"),
        ("SECRETS_MANAGER_FUNCTION_ARN", SECRETS),
    ] {
        env.entry(k.into())
            .or_insert_with(|| format!("arn:aws:lambda:::function:{name}"));
    }
    Ok(())
}

fn unhandled(message: impl std::fmt::Display) -> V1Result {
    Err((
        "Unhandled".into(),
        json!({"errorMessage": message.to_string()})
            .to_string()
            .into_bytes(),
    ))
}

async fn answer(client: &IpcClient, call: V1Call) -> V1Result {
    let name = call.function_arn.split(':').nth(6).unwrap_or_default();
    match name {
        ROUTER => publish(client, &call).await,
        SECRETS => secret(client, &call.payload).await,
        other => unhandled(format!(
            "the function {other:?} ({}) is not served to the V1 SDK by this core; \
             iot-data publish and secretsmanager get_secret_value are",
            call.function_arn
        )),
    }
}

async fn publish(client: &IpcClient, call: &V1Call) -> V1Result {
    let context: Value = call
        .client_context
        .as_deref()
        .and_then(|c| B64.decode(c).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let Some(topic) = context
        .pointer("/custom/subject")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return unhandled("publish: the client context names no topic (custom.subject)");
    };
    let request = json!({
        "topic": topic,
        "publishMessage": {"binaryMessage": {"message": B64.encode(&call.payload)}},
    });
    match client.call("PublishToTopic", request).await {
        Ok(_) => Ok(vec![]),
        Err(e) => {
            eprintln!("V1 SDK publish to {topic} failed: {e}");
            unhandled(format!("publish to {topic}: {e}"))
        }
    }
}

async fn secret(client: &IpcClient, payload: &[u8]) -> V1Result {
    let status = |code: u16, message: String| {
        Ok(json!({"Status": code, "Message": message})
            .to_string()
            .into_bytes())
    };
    let Ok(req) = serde_json::from_slice::<Value>(payload) else {
        return status(400, "the request is not JSON".into());
    };
    let Some(id) = req["SecretId"].as_str().filter(|s| !s.is_empty()) else {
        return status(400, "SecretId is required".into());
    };
    let mut ipc = json!({"secretId": id});
    if let Some(stage) = req["VersionStage"].as_str().filter(|s| !s.is_empty()) {
        ipc["versionStage"] = stage.into();
    }
    match client.call("GetSecretValue", ipc).await {
        Ok(v) => {
            let arn = v["secretId"].as_str().unwrap_or(id);
            // `arn:aws:secretsmanager:<r>:<acct>:secret:<name>-<6 random>`.
            let name = arn
                .rsplit_once(":secret:")
                .map(|(_, n)| n.rsplit_once('-').map_or(n, |(n, _)| n))
                .unwrap_or(id);
            let mut out = json!({
                "ARN": arn,
                "Name": name,
                "VersionId": v["versionId"],
                "VersionStages": v["versionStage"],
                // The device store keeps no creation date; the SDK requires the field.
                "CreatedDate": 0,
            });
            if let Some(s) = v.pointer("/secretValue/secretString") {
                out["SecretString"] = s.clone();
            }
            if let Some(b) = v.pointer("/secretValue/secretBinary") {
                out["SecretBinary"] = b.clone();
            }
            Ok(out.to_string().into_bytes())
        }
        Err(ClientError::Remote { shape, message, .. }) => {
            let code = if shape.ends_with("UnauthorizedError") {
                403
            } else if shape.ends_with("ResourceNotFoundError") {
                404
            } else if shape.ends_with("InvalidArgumentsError") {
                400
            } else {
                500
            };
            status(code, message)
        }
        Err(e) => status(500, e.to_string()),
    }
}
