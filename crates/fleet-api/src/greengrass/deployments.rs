//! `/greengrass/v2/deployments…`: CreateDeployment (with our `dryRun` flag and the
//! `/deployments/preview` route), GetDeployment, ListDeployments, CancelDeployment,
//! DeleteDeployment.

use super::document::{self, validation};
use super::service::{CreateRequest, blocking};
use super::{json_status, missing as not_found, page, service};
use crate::ApiState;
use crate::call::{Call, seconds, str_field};
use crate::error::{ApiError, ApiResult};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use lichen_fleet_registry::Deployment;
use serde_json::{Value, json};
use std::sync::Arc;

pub(crate) async fn dispatch(state: &Arc<ApiState>, call: &Call) -> ApiResult<Response> {
    let segs = call.segs();
    match (&call.method, &segs[2..]) {
        (&Method::POST, ["deployments"]) => create(state, call).await,
        (&Method::POST, ["deployments", "preview"]) => preview(state, call).await,
        (&Method::GET, ["deployments"]) => list(state, call).await,
        (&Method::GET, ["deployments", id]) => get(state, id).await,
        (&Method::GET, ["deployments", id, "devices"]) => devices(state, id).await,
        (&Method::POST, ["deployments", id, "cancel"]) => {
            let svc = service(state)?;
            svc.cancel(&call.caller.access_key_id, id)
                .await
                .map_err(|e| found(e, id))?;
            Ok(json_status(
                StatusCode::OK,
                json!({"message": format!("deployment {id} is cancelled")}),
            ))
        }
        (&Method::DELETE, ["deployments", id]) => {
            let registry = state.registry.clone();
            let (who, i) = (call.caller.access_key_id.clone(), id.to_string());
            blocking(move || registry.delete_deployment(&who, &i))
                .await
                .map_err(|e| found(e, id))
                .map_err(|e| match e.code {
                    "DeleteConflictException" => ApiError {
                        code: "ConflictException",
                        extra: vec![
                            ("resourceId", id.to_string()),
                            ("resourceType", "deployment".into()),
                        ],
                        ..e
                    },
                    _ => e,
                })?;
            Ok(json_status(StatusCode::NO_CONTENT, json!({})))
        }
        _ => Err(ApiError::unknown_operation(
            call.method.as_str(),
            &call.path,
            "greengrass",
        )),
    }
}

/// A registry NotFound as the modeled ResourceNotFoundException (with its required extras).
fn found(e: ApiError, id: &str) -> ApiError {
    if e.code == "ResourceNotFoundException" {
        not_found("deployment", id)
    } else {
        e
    }
}

fn job_arn(state: &ApiState, job: &str) -> String {
    state.registry.arn(&format!("job/{job}"))
}

async fn create(state: &Arc<ApiState>, call: &Call) -> ApiResult<Response> {
    let body = call.json()?;
    let target = str_field(&body, "targetArn")?
        .ok_or_else(|| validation("targetArn is required"))?
        .to_string();
    document::parse_target(&target)?;
    let spec = document::validate_request(&body)?;
    let dry_run = call.q_bool("dryRun")?.unwrap_or(false)
        || body.get("dryRun").and_then(Value::as_bool).unwrap_or(false);
    if dry_run {
        let p = super::preview::preview(state, &target, Some(&spec)).await?;
        return Ok(json_status(StatusCode::OK, p));
    }
    check_published(state, &spec).await?;
    let svc = service(state)?;
    let d = svc
        .create(
            &call.caller.access_key_id,
            CreateRequest {
                target_arn: target.clone(),
                name: str_field(&body, "deploymentName")?.map(str::to_owned),
                spec,
                parent_target_arn: str_field(&body, "parentTargetArn")?.map(str::to_owned),
                rollback_of: None,
                client_token: str_field(&body, "clientToken")?.map(str::to_owned),
            },
        )
        .await
        .map_err(|e| {
            if e.code == "ResourceNotFoundException" {
                not_found("target", &target)
            } else {
                e
            }
        })?;
    let mut out = json!({"deploymentId": d.id});
    if let Some(job) = &d.job_id {
        out["iotJobId"] = json!(job);
        out["iotJobArn"] = json!(job_arn(state, job));
    }
    Ok(json_status(StatusCode::CREATED, out))
}

async fn preview(state: &Arc<ApiState>, call: &Call) -> ApiResult<Response> {
    let body = call.json()?;
    let target = str_field(&body, "targetArn")?
        .ok_or_else(|| validation("targetArn is required"))?
        .to_string();
    document::parse_target(&target)?;
    let spec = match body.get("components") {
        Some(_) => Some(document::validate_request(&body)?),
        None => None,
    };
    let p = super::preview::preview(state, &target, spec.as_ref()).await?;
    Ok(json_status(StatusCode::OK, p))
}

/// GetDeployment's shape (the request fields plus state).
pub fn describe(state: &ApiState, d: &Deployment) -> Value {
    let spec: Value = serde_json::from_str(&d.spec).unwrap_or_else(|_| json!({}));
    let mut out = json!({
        "targetArn": d.target_arn,
        "revisionId": d.revision.to_string(),
        "deploymentId": d.id,
        "deploymentStatus": d.status,
        "creationTimestamp": seconds(d.created_ms),
        "isLatestForTarget": d.is_latest,
        "components": spec.get("components").cloned().unwrap_or(json!({})),
        "deploymentPolicies": policies(&spec),
        "tags": spec.get("tags").cloned().unwrap_or(json!({})),
    });
    if let Some(n) = &d.name {
        out["deploymentName"] = json!(n);
    }
    if let Some(j) = &d.job_id {
        out["iotJobId"] = json!(j);
        out["iotJobArn"] = json!(job_arn(state, j));
        out["iotJobConfiguration"] = spec
            .get("iotJobConfiguration")
            .cloned()
            .unwrap_or(json!({}));
    }
    if let Some(p) = &d.parent_target_arn {
        out["parentTargetArn"] = json!(p);
    }
    out
}

/// The policies with AWS's defaults filled in (GetDeployment shows them).
fn policies(spec: &Value) -> Value {
    let p = spec.get("deploymentPolicies").cloned().unwrap_or(json!({}));
    let u = p.get("componentUpdatePolicy");
    json!({
        "failureHandlingPolicy": p.get("failureHandlingPolicy").and_then(Value::as_str).unwrap_or("ROLLBACK"),
        "componentUpdatePolicy": {
            "timeoutInSeconds": u.and_then(|u| u.get("timeoutInSeconds")).and_then(Value::as_i64).unwrap_or(60),
            "action": u.and_then(|u| u.get("action")).and_then(Value::as_str).unwrap_or("NOTIFY_COMPONENTS"),
        },
        "configurationValidationPolicy": {
            "timeoutInSeconds": p.pointer("/configurationValidationPolicy/timeoutInSeconds").and_then(Value::as_i64).unwrap_or(30),
        },
    })
}

async fn get(state: &Arc<ApiState>, id: &str) -> ApiResult<Response> {
    let registry = state.registry.clone();
    let i = id.to_string();
    let d = blocking(move || registry.get_deployment(&i))
        .await
        .map_err(|e| found(e, id))?;
    Ok(json_status(StatusCode::OK, describe(state, &d)))
}

async fn list(state: &Arc<ApiState>, call: &Call) -> ApiResult<Response> {
    let latest_only = match call.q("historyFilter") {
        None | Some("LATEST_ONLY") => true,
        Some("ALL") => false,
        Some(o) => {
            return Err(validation(format!(
                "historyFilter {o:?} is not ALL or LATEST_ONLY"
            )));
        }
    };
    let target = call.q("targetArn").map(str::to_owned);
    let parent = call.q("parentTargetArn").map(str::to_owned);
    let page = page(call)?;
    let registry = state.registry.clone();
    let p = blocking(move || {
        registry.list_deployments(target.as_deref(), parent.as_deref(), latest_only, &page)
    })
    .await
    .map_err(|e| match e.code {
        "InvalidRequestException" => validation(e.message),
        _ => e,
    })?;
    let items: Vec<Value> = p
        .items
        .iter()
        .map(|d| {
            let mut v = json!({
                "targetArn": d.target_arn,
                "revisionId": d.revision.to_string(),
                "deploymentId": d.id,
                "creationTimestamp": seconds(d.created_ms),
                "deploymentStatus": d.status,
                "isLatestForTarget": d.is_latest,
            });
            if let Some(n) = &d.name {
                v["deploymentName"] = json!(n);
            }
            if let Some(p) = &d.parent_target_arn {
                v["parentTargetArn"] = json!(p);
            }
            v
        })
        .collect();
    let mut out = json!({"deployments": items});
    if let Some(t) = p.next_token {
        out["nextToken"] = json!(t);
    }
    Ok(json_status(StatusCode::OK, out))
}

/// Our extension, `GET /greengrass/v2/deployments/<id>/devices`: the deployment's state and
/// each device's (what `lichen fleet deployment status` follows), with how many things the
/// target holds now.
async fn devices(state: &Arc<ApiState>, id: &str) -> ApiResult<Response> {
    let registry = state.registry.clone();
    let i = id.to_string();
    let (d, rows, targets) = blocking(move || {
        let d = registry.get_deployment(&i)?;
        let rows = registry.effective_deployments_of(&i)?;
        let targets = match document::parse_target(&d.target_arn) {
            Ok(("thinggroup", g)) => {
                let mut n = 0;
                let mut page = lichen_fleet_registry::PageRequest::default();
                loop {
                    let p = registry.list_things_in_group(&g, true, &page)?;
                    n += p.items.len();
                    match p.next_token {
                        Some(t) => page.token = Some(t),
                        None => break,
                    }
                }
                n
            }
            _ => 1,
        };
        Ok((d, rows, targets))
    })
    .await
    .map_err(|e| found(e, id))?;
    let devices: Vec<Value> = rows
        .iter()
        .map(|e| {
            json!({
                "thingName": e.thing_name,
                "coreDeviceExecutionStatus": e.execution_status,
                "deviceStatus": e.device_status,
                "reason": e.reason,
                "modifiedTimestamp": seconds(e.modified_ms),
            })
        })
        .collect();
    Ok(json_status(
        StatusCode::OK,
        json!({
            "deploymentId": d.id,
            "deploymentName": d.name,
            "targetArn": d.target_arn,
            "revisionId": d.revision.to_string(),
            "deploymentStatus": d.status,
            "targets": targets,
            "devices": devices,
        }),
    ))
}

/// Every deployed component version must be in the fleet's component registry, except AWS's
/// public components (`aws.greengrass.*`), which cores resolve from their own sources.
async fn check_published(state: &Arc<ApiState>, spec: &Value) -> ApiResult<()> {
    let wanted: Vec<(String, String)> = spec["components"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| !name.starts_with("aws.greengrass."))
        .map(|(n, c)| {
            let v = c["componentVersion"].as_str().unwrap_or_default();
            (n.clone(), v.to_string())
        })
        .collect();
    let registry = state.registry.clone();
    let missing = blocking(move || {
        let mut missing = Vec::new();
        for (n, v) in wanted {
            match registry.component_version(&n, &v) {
                Ok(_) => {}
                Err(lichen_fleet_registry::RegistryError::NotFound { .. }) => {
                    missing.push(format!("{n}@{v}"))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(missing)
    })
    .await?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(super::validation(
        "FIELD_VALIDATION_FAILED",
        format!(
            "components: {} not in the component registry; publish each version first \
             (CreateComponentVersion, or lichen fleet component publish)",
            missing.join(", ")
        ),
    ))
}
