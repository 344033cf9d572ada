//! CreateComponentVersion with `lambdaFunction`: a Lambda deployment package becomes a component
//! version whose recipe has the form Greengrass generates for Lambda functions (ComponentType
//! `aws.greengrass.lambda`, the `lambda-artifact.zip` artifact, `ComponentConfiguration` from
//! `componentLambdaParameters`), run on the core by `lichen lambda launch`.
//!
//! There is no Lambda service here, so the function's code and settings live in the fleet's
//! object store under a fixed convention (what `lichen fleet lambda publish` writes):
//! `s3://lichen-lambda/functions/<function>/<version>/lambda-artifact.zip` (the package) and
//! `.../function.json` (`{"handler", "runtime"}`). `lambdaArn`
//! `arn:aws:lambda:<region>:<account>:function:<function>:<version>` names them; a version
//! (not `$LATEST` or an alias) is required, as Greengrass requires it.

use super::validation;
use crate::ApiState;
use crate::error::{ApiError, ApiResult};
use serde_json::{Map, Value, json};

/// The bucket that holds published functions.
pub const LAMBDA_BUCKET: &str = "lichen-lambda";

/// The object keys of a published function version: (package, settings).
pub fn function_keys(function: &str, version: &str) -> (String, String) {
    let base = format!("functions/{function}/{version}");
    (
        format!("{base}/lambda-artifact.zip"),
        format!("{base}/function.json"),
    )
}

fn bad(field: &str, message: impl std::fmt::Display) -> ApiError {
    validation(
        "FIELD_VALIDATION_FAILED",
        format!("lambdaFunction.{field}: {message}"),
    )
}

/// `arn:aws:lambda:<r>:<acct>:function:<name>:<version>` → (name, version).
fn function_arn(arn: &str) -> ApiResult<(String, String)> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "lambda", _, _, "function", name, version]
            if !name.is_empty()
                && !version.is_empty()
                && version.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok((name.to_string(), version.to_string()))
        }
        _ => Err(bad(
            "lambdaArn",
            format!(
                "{arn:?} is not a Lambda function version ARN \
                 (arn:aws:lambda:<region>:<account>:function:<name>:<version>, a numbered version)"
            ),
        )),
    }
}

/// The argv before the handler for a Lambda runtime name.
fn runtime_exec_args(runtime: &str) -> ApiResult<Vec<String>> {
    let argv: &[&str] = if runtime.starts_with("python") {
        &["python3", "-m", "awslambdaric"]
    } else if runtime.starts_with("nodejs") {
        &["npx", "aws-lambda-ric"]
    } else if runtime.starts_with("provided") {
        &["./bootstrap"]
    } else {
        return Err(bad(
            "lambdaArn",
            format!(
                "the function's runtime {runtime:?} is not supported (python*, nodejs*, \
                 provided*); give componentLambdaParameters.execArgs to name the command"
            ),
        ));
    };
    Ok(argv.iter().map(|s| s.to_string()).collect())
}

/// Reads the published function's settings from the object store.
fn function_settings(s: &ApiState, name: &str, version: &str, arn: &str) -> ApiResult<Value> {
    let objects = s
        .objects
        .as_ref()
        .filter(|o| o.remote.is_none())
        .ok_or_else(|| {
            bad(
                "lambdaArn",
                "this fleet has no local object store to hold Lambda function code",
            )
        })?;
    let (zip_key, settings_key) = function_keys(name, version);
    let not_published = || {
        super::not_found(
            "LAMBDA_FUNCTION",
            arn,
            format!(
                "the Lambda function {arn} is not published to this fleet: upload it with \
                 `lichen fleet lambda publish --name {name} --zip <file> --handler <module.fn> \
                 --runtime <runtime>` (s3://{LAMBDA_BUCKET}/{zip_key})"
            ),
        )
    };
    let (_, path) = objects
        .local
        .head(LAMBDA_BUCKET, &settings_key)
        .map_err(|_| not_published())?;
    if objects.local.head(LAMBDA_BUCKET, &zip_key).is_err() {
        return Err(not_published());
    }
    let bytes = std::fs::read(&path).map_err(|e| {
        tracing::error!(error = %e, "reading a function's settings");
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "internal failure reading the function's settings; the fleet log has the details",
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        bad(
            "lambdaArn",
            format!(
                "s3://{LAMBDA_BUCKET}/{settings_key} is not JSON ({e}); publish the function again"
            ),
        )
    })
}

fn num(p: &Map<String, Value>, key: &str, default: i64) -> ApiResult<i64> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n >= 0) => {
            Ok(n.as_i64().unwrap_or(default))
        }
        Some(v) => Err(bad(
            &format!("componentLambdaParameters.{key}"),
            format!("{v} is not a non-negative integer"),
        )),
    }
}

/// The recipe (JSON text) for a `lambdaFunction` request.
pub(crate) fn recipe(s: &ApiState, f: &Value) -> ApiResult<String> {
    let f = f
        .as_object()
        .ok_or_else(|| bad("", "lambdaFunction must be an object"))?;
    let arn = f
        .get("lambdaArn")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("lambdaArn", "is required"))?;
    let (function, version) = function_arn(arn)?;
    let settings = function_settings(s, &function, &version, arn)?;
    let handler = settings["handler"]
        .as_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            bad(
                "lambdaArn",
                "the published function has no handler; publish it again",
            )
        })?;
    let runtime = settings["runtime"].as_str().unwrap_or("python3.11");
    let name = match f.get("componentName") {
        None | Some(Value::Null) => function.clone(),
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        Some(v) => return Err(bad("componentName", format!("{v} is not a name"))),
    };
    let component_version = match f.get("componentVersion") {
        None | Some(Value::Null) => format!("{version}.0.0"),
        Some(Value::String(v)) if !v.is_empty() => v.clone(),
        Some(v) => return Err(bad("componentVersion", format!("{v} is not a version"))),
    };
    let empty = Map::new();
    let p = match f.get("componentLambdaParameters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(bad(
                "componentLambdaParameters",
                format!("{v} is not an object"),
            ));
        }
    };

    // Event sources become pubsubTopics, and the launcher (which subscribes as the component)
    // gets exactly the subscriptions they need.
    let mut topics = Map::new();
    let (mut local, mut cloud) = (vec![], vec![]);
    if let Some(sources) = p.get("eventSources").filter(|v| !v.is_null()) {
        let sources = sources
            .as_array()
            .ok_or_else(|| bad("componentLambdaParameters.eventSources", "must be a list"))?;
        for (i, e) in sources.iter().enumerate() {
            let field = format!("componentLambdaParameters.eventSources[{i}]");
            let topic = e["topic"]
                .as_str()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| bad(&field, "topic is required"))?;
            let kind = e["type"].as_str().unwrap_or("PUB_SUB");
            match kind {
                "PUB_SUB" => local.push(topic.to_string()),
                "IOT_CORE" => cloud.push(topic.to_string()),
                other => {
                    return Err(bad(
                        &field,
                        format!("type {other:?} is not PUB_SUB or IOT_CORE"),
                    ));
                }
            }
            topics.insert(i.to_string(), json!({"topic": topic, "type": kind}));
        }
    }
    let mut access = Map::new();
    if !local.is_empty() {
        access.insert(
            "aws.greengrass.ipc.pubsub".into(),
            json!({format!("{name}:pubsub:1"): {
                "policyDescription": "Allows the function's event sources on local publish/subscribe.",
                "operations": ["aws.greengrass#SubscribeToTopic"],
                "resources": local,
            }}),
        );
    }
    if !cloud.is_empty() {
        access.insert(
            "aws.greengrass.ipc.mqttproxy".into(),
            json!({format!("{name}:mqttproxy:1"): {
                "policyDescription": "Allows the function's event sources on AWS IoT Core.",
                "operations": ["aws.greengrass#SubscribeToIoTCore"],
                "resources": cloud,
            }}),
        );
    }

    let mut environment = Map::new();
    if let Some(v) = p.get("environmentVariables").filter(|v| !v.is_null()) {
        let m = v.as_object().ok_or_else(|| {
            bad(
                "componentLambdaParameters.environmentVariables",
                "must be an object of strings",
            )
        })?;
        for (k, v) in m {
            let v = v.as_str().ok_or_else(|| {
                bad(
                    &format!("componentLambdaParameters.environmentVariables.{k}"),
                    "must be a string",
                )
            })?;
            environment.insert(k.clone(), Value::String(v.into()));
        }
    }
    let exec_args: Vec<String> = match p.get("execArgs") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                bad(
                    "componentLambdaParameters.execArgs",
                    "must be a list of strings",
                )
            })?,
        None | Some(Value::Null) | Some(Value::Array(_)) => runtime_exec_args(runtime)?,
        Some(v) => {
            return Err(bad(
                "componentLambdaParameters.execArgs",
                format!("{v} is not a list"),
            ));
        }
    };
    let pinned = match p.get("pinned") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(bad(
                "componentLambdaParameters.pinned",
                format!("{v} is not true or false"),
            ));
        }
    };
    let encoding = match p.get("inputPayloadEncodingType").and_then(Value::as_str) {
        None => "json",
        Some(e @ ("json" | "binary")) => e,
        Some(e) => {
            return Err(bad(
                "componentLambdaParameters.inputPayloadEncodingType",
                format!("{e:?} is not json or binary"),
            ));
        }
    };
    let linux = p.get("linuxProcessParams").cloned().unwrap_or(Value::Null);
    let container = &linux["containerParams"];
    let memory = container["memorySizeInKB"].as_i64().unwrap_or(16384);
    let container_mode = linux["isolationMode"]
        .as_str()
        .unwrap_or("GreengrassContainer");
    let mut config = json!({
        "lambdaExecutionParameters": {"EnvironmentVariables": environment},
        "containerParams": {
            "memorySize": memory,
            "mountROSysfs": container["mountROSysfs"].as_bool().unwrap_or(false),
            "volumes": {},
            "devices": {},
        },
        "containerMode": container_mode,
        "timeoutInSeconds": num(p, "timeoutInSeconds", 3)?.max(1),
        "maxInstancesCount": num(p, "maxInstancesCount", 100)?.max(1),
        "inputPayloadEncodingType": encoding,
        "maxQueueSize": num(p, "maxQueueSize", 1000)?.max(1),
        "pinned": pinned,
        "maxIdleTimeInSeconds": num(p, "maxIdleTimeInSeconds", 60)?,
        "statusTimeoutInSeconds": num(p, "statusTimeoutInSeconds", 60)?,
        "execArgs": exec_args,
        "pubsubTopics": topics,
    });
    if !access.is_empty() {
        config["accessControl"] = Value::Object(access);
    }

    let mut dependencies = json!({
        "aws.greengrass.LambdaLauncher": {"VersionRequirement": ">=2.0.0 <3.0.0", "DependencyType": "HARD"},
        "aws.greengrass.TokenExchangeService": {"VersionRequirement": ">=2.0.0 <3.0.0", "DependencyType": "HARD"},
        "aws.greengrass.LambdaRuntimes": {"VersionRequirement": ">=2.0.0 <3.0.0", "DependencyType": "SOFT"},
    });
    if let Some(deps) = f.get("componentDependencies").filter(|v| !v.is_null()) {
        let deps = deps
            .as_object()
            .ok_or_else(|| bad("componentDependencies", "must be an object"))?;
        for (k, d) in deps {
            let mut out = Map::new();
            if let Some(v) = d["versionRequirement"].as_str() {
                out.insert("VersionRequirement".into(), v.into());
            }
            if let Some(v) = d["dependencyType"].as_str() {
                out.insert("DependencyType".into(), v.into());
            }
            dependencies[k] = Value::Object(out);
        }
    }

    let (zip_key, _) = function_keys(&function, &version);
    let lifecycle = json!({
        "setenv": {
            "AWS_GREENGRASS_LAMBDA_FUNCTION_HANDLER": handler,
            "AWS_GREENGRASS_LAMBDA_ARTIFACT_PATH": "{artifacts:decompressedPath}/lambda-artifact",
            "AWS_GREENGRASS_LAMBDA_ARN": arn,
            "AWS_GREENGRASS_LAMBDA_RUNTIME": runtime,
            "AWS_GREENGRASS_LAMBDA_EXEC_ARGS": Value::Array(
                config["execArgs"].as_array().cloned().unwrap_or_default()).to_string(),
        },
        "Run": "\"$LICHEN_EXE\" lambda launch",
    });
    let artifacts = json!([{
        "URI": format!("s3://{LAMBDA_BUCKET}/{zip_key}"),
        "Unarchive": "ZIP",
        "Permission": {"Read": "OWNER", "Execute": "NONE"},
    }]);
    let platforms: Vec<Value> = match f.get("componentPlatforms") {
        None | Some(Value::Null) => vec![json!({"os": "linux"})],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|p| {
                let mut attrs = p["attributes"].as_object().cloned().unwrap_or_default();
                attrs.entry("os").or_insert_with(|| "linux".into());
                Value::Object(attrs)
            })
            .collect(),
        Some(v) => {
            return Err(bad(
                "componentPlatforms",
                format!("{v} is not a list of platforms"),
            ));
        }
    };
    let manifests: Vec<Value> = platforms
        .into_iter()
        .map(|p| json!({"Platform": p, "Lifecycle": lifecycle, "Artifacts": artifacts}))
        .collect();
    let recipe = json!({
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": component_version,
        "ComponentType": "aws.greengrass.lambda",
        "ComponentDescription": format!("The Lambda function {arn}."),
        "ComponentPublisher": "AWS Lambda",
        "ComponentSource": arn,
        "ComponentDependencies": dependencies,
        "ComponentConfiguration": {"DefaultConfiguration": config},
        "Manifests": manifests,
        "Lifecycle": {},
    });
    serde_json::to_string_pretty(&recipe).map_err(|e| ApiError::invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_arns_need_a_numbered_version() {
        assert_eq!(
            function_arn("arn:aws:lambda:us-east-1:123456789012:function:F:3").unwrap(),
            ("F".into(), "3".into())
        );
        for bad in [
            "arn:aws:lambda:us-east-1:123456789012:function:F",
            "arn:aws:lambda:us-east-1:123456789012:function:F:$LATEST",
            "arn:aws:greengrass:us-east-1:1:components:F:versions:1.0.0",
        ] {
            let e = function_arn(bad).unwrap_err();
            assert!(e.message.contains("lambdaArn"), "{}", e.message);
        }
    }
}
