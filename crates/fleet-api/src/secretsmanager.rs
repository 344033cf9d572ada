//! `secretsmanager` (json 1.1: `POST /` with `X-Amz-Target: secretsmanager.<Operation>`):
//! CreateSecret, PutSecretValue, GetSecretValue, DescribeSecret, ListSecrets, DeleteSecret over
//! the registry's secrets. Errors are `{"__type": <Shape>, "Message": …}` with status 400, as
//! botocore's json parser reads them.

use crate::call::{Call, str_field};
use crate::{ApiState, json};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use lichen_fleet_registry::{PageRequest, RegistryError, Secret, SecretValue};
use serde_json::{Map, Value, json};

/// The operation an `X-Amz-Target` names (`secretsmanager.GetSecretValue` → `GetSecretValue`).
pub(crate) fn operation(call: &Call) -> Option<&str> {
    call.header("x-amz-target")?.strip_prefix("secretsmanager.")
}

/// The SecretId a request names, for authorization.
pub(crate) fn secret_id(call: &Call) -> Option<String> {
    let body: Map<String, Value> = serde_json::from_slice(&call.body).ok()?;
    body.get("SecretId")
        .or_else(|| body.get("Name"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub(crate) fn error(code: &str, message: impl Into<String>) -> Response {
    let status = if code == "InternalServiceError" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if code == "AccessDeniedException" {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"__type": code, "Message": message.into()}).to_string(),
    )
        .into_response()
}

/// A refused request: its error shape and message.
struct Fail {
    code: &'static str,
    message: String,
}

fn fail(code: &'static str, message: impl Into<String>) -> Fail {
    Fail {
        code,
        message: message.into(),
    }
}

fn registry_error(e: RegistryError) -> Fail {
    let message = e.to_string();
    match e {
        RegistryError::NotFound { .. } => fail(
            "ResourceNotFoundException",
            format!("Secrets Manager can't find the specified secret: {message}"),
        ),
        RegistryError::AlreadyExists { .. } => fail("ResourceExistsException", message),
        RegistryError::Invalid(m) if m.contains("marked for deletion") => {
            fail("InvalidRequestException", m)
        }
        RegistryError::Invalid(m) => fail("InvalidParameterException", m),
        other => {
            tracing::error!(error = %other, "secretsmanager: registry failure");
            fail(
                "InternalServiceError",
                "internal failure in the registry; the fleet log has the details",
            )
        }
    }
}

fn answer(v: Value) -> Response {
    let mut r = json(v);
    r.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}

fn seconds(ms: i64) -> Value {
    json!(ms as f64 / 1000.0)
}

/// `SecretString` or `SecretBinary` (base64) of a request body; neither is `None`.
fn value_of(body: &Map<String, Value>) -> Result<Option<SecretValue>, Fail> {
    let s = str_field(body, "SecretString")
        .map_err(|e| fail("InvalidParameterException", e.message))?;
    let b = str_field(body, "SecretBinary")
        .map_err(|e| fail("InvalidParameterException", e.message))?;
    match (s, b) {
        (Some(_), Some(_)) => Err(fail(
            "InvalidParameterException",
            "give SecretString or SecretBinary, not both",
        )),
        (Some(s), None) => Ok(Some(SecretValue::String(s.to_string()))),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(|b| Some(SecretValue::Binary(b)))
            .map_err(|_| fail("InvalidParameterException", "SecretBinary must be base64")),
        (None, None) => Ok(None),
    }
}

fn version_id(body: &Map<String, Value>) -> Result<String, Fail> {
    Ok(str_field(body, "ClientRequestToken")
        .map_err(|e| fail("InvalidParameterException", e.message))?
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()))
}

fn describe(s: &Secret) -> Value {
    let mut stages = Map::new();
    for (v, labels) in &s.versions {
        stages.insert(v.clone(), json!(labels));
    }
    let mut out = json!({
        "ARN": s.arn,
        "Name": s.name,
        "CreatedDate": seconds(s.created_ms),
        "LastChangedDate": seconds(s.updated_ms),
        "VersionIdsToStages": stages,
    });
    if let Some(d) = &s.description {
        out["Description"] = json!(d);
    }
    if let Some(d) = s.deleted_ms {
        out["DeletedDate"] = seconds(d);
    }
    out
}

pub(crate) async fn dispatch(state: &ApiState, call: Call) -> Response {
    if call.method != Method::POST || call.path != "/" {
        return error(
            "InvalidRequestException",
            "secretsmanager is served as POST / with an X-Amz-Target header",
        );
    }
    let Some(op) = operation(&call) else {
        return error(
            "UnknownOperationException",
            "X-Amz-Target must be secretsmanager.<Operation>",
        );
    };
    let body: Map<String, Value> = match call.json() {
        Ok(b) => b,
        Err(e) => return error("InvalidRequestException", e.message),
    };
    match run(state, &call, op, &body) {
        Ok(r) => r,
        Err(f) => error(f.code, f.message),
    }
}

fn run(
    state: &ApiState,
    call: &Call,
    op: &str,
    body: &Map<String, Value>,
) -> Result<Response, Fail> {
    let reg = &state.registry;
    let who = &call.caller.access_key_id;
    let field = |name: &str| {
        str_field(body, name).map_err(|e| fail("InvalidParameterException", e.message))
    };
    let required = |name: &str| {
        field(name)?.ok_or_else(|| fail("InvalidParameterException", format!("{name} is required")))
    };
    Ok(match op {
        "CreateSecret" => {
            let name = required("Name")?;
            let value = value_of(body)?;
            let vid = version_id(body)?;
            let s = reg
                .create_secret(who, name, field("Description")?, value.as_ref(), &vid)
                .map_err(registry_error)?;
            let mut out = json!({"ARN": s.arn, "Name": s.name});
            if value.is_some() {
                out["VersionId"] = json!(vid);
            }
            answer(out)
        }
        "PutSecretValue" => {
            let id = required("SecretId")?;
            let Some(value) = value_of(body)? else {
                return Err(fail(
                    "InvalidRequestException",
                    "give SecretString or SecretBinary",
                ));
            };
            let vid = version_id(body)?;
            let stages: Option<Vec<String>> = match body.get("VersionStages") {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) => Some(
                    a.iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or_else(|| {
                            fail("InvalidParameterException", "VersionStages must be strings")
                        })?,
                ),
                Some(_) => {
                    return Err(fail(
                        "InvalidParameterException",
                        "VersionStages must be a list of strings",
                    ));
                }
            };
            let (s, labels) = reg
                .put_secret_value(who, id, &value, &vid, stages.as_deref())
                .map_err(registry_error)?;
            answer(json!({"ARN": s.arn, "Name": s.name, "VersionId": vid, "VersionStages": labels}))
        }
        "GetSecretValue" => {
            let id = required("SecretId")?;
            let (s, v) = reg
                .get_secret_value(id, field("VersionId")?, field("VersionStage")?)
                .map_err(registry_error)?;
            let mut out = json!({
                "ARN": s.arn,
                "Name": s.name,
                "VersionId": v.version_id,
                "VersionStages": v.stages,
                "CreatedDate": seconds(v.created_ms),
            });
            match v.value {
                SecretValue::String(t) => out["SecretString"] = json!(t),
                SecretValue::Binary(b) => {
                    out["SecretBinary"] = json!(base64::engine::general_purpose::STANDARD.encode(b))
                }
            }
            answer(out)
        }
        "DescribeSecret" => {
            let s = reg
                .describe_secret(required("SecretId")?)
                .map_err(registry_error)?;
            answer(describe(&s))
        }
        "ListSecrets" => {
            let size = body
                .get("MaxResults")
                .and_then(Value::as_u64)
                .map(|n| n as u32);
            let page = reg
                .list_secrets(&PageRequest {
                    token: field("NextToken")?.map(str::to_string),
                    size,
                })
                .map_err(registry_error)?;
            let mut out =
                json!({"SecretList": page.items.iter().map(describe).collect::<Vec<_>>()});
            if let Some(t) = page.next_token {
                out["NextToken"] = json!(t);
            }
            answer(out)
        }
        "DeleteSecret" => {
            let id = required("SecretId")?;
            let force = body
                .get("ForceDeleteWithoutRecovery")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let s = reg.delete_secret(who, id, force).map_err(registry_error)?;
            let when = s
                .deleted_ms
                .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp() * 1000);
            answer(json!({"ARN": s.arn, "Name": s.name, "DeletionDate": seconds(when)}))
        }
        other => {
            return Err(fail(
                "UnknownOperationException",
                format!(
                    "secretsmanager.{other} is not served; this fleet serves CreateSecret, PutSecretValue, GetSecretValue, DescribeSecret, ListSecrets and DeleteSecret"
                ),
            ));
        }
    })
}
