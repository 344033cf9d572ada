//! `/greengrass/v2/coreDevices…`: ListCoreDevices, GetCoreDevice, ListInstalledComponents,
//! ListEffectiveDeployments — views of what devices reported (fleet status, job updates).

use super::document::validation;
use super::service::blocking;
use super::{json_status, missing as not_found, page};
use crate::ApiState;
use crate::call::{Call, seconds};
use crate::error::{ApiError, ApiResult};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;

pub(crate) async fn dispatch(state: &Arc<ApiState>, call: &Call) -> ApiResult<Response> {
    let segs = call.segs();
    match (&call.method, &segs[2..]) {
        (&Method::GET, ["coreDevices"]) => list(state, call).await,
        (&Method::GET, ["coreDevices", thing]) => get(state, thing).await,
        (&Method::GET, ["coreDevices", thing, "installedComponents"]) => {
            installed(state, call, thing).await
        }
        (&Method::GET, ["coreDevices", thing, "effectiveDeployments"]) => {
            effective(state, call, thing).await
        }
        _ => Err(ApiError::unknown_operation(
            call.method.as_str(),
            &call.path,
            "greengrass",
        )),
    }
}

fn found(e: ApiError, thing: &str) -> ApiError {
    match e.code {
        "ResourceNotFoundException" => not_found("coreDevice", thing),
        "InvalidRequestException" => validation(e.message),
        _ => e,
    }
}

fn with_token(mut out: Value, token: Option<String>) -> Value {
    if let Some(t) = token {
        out["nextToken"] = json!(t);
    }
    out
}

fn device_json(d: &lichen_fleet_registry::CoreDevice) -> Value {
    let mut v = json!({
        "coreDeviceThingName": d.thing_name,
        "status": d.status,
        "lastStatusUpdateTimestamp": seconds(d.last_status_update_ms),
    });
    for (k, x) in [
        ("platform", &d.platform),
        ("architecture", &d.architecture),
        ("runtime", &d.runtime),
        ("coreVersion", &d.core_version),
    ] {
        if let Some(x) = x {
            v[k] = json!(x);
        }
    }
    // Lichen's additions (clients ignore unknown members): why the status is what it is, and
    // the connection state in the shape of AWS IoT fleet indexing's `connectivity`.
    if let Some(r) = &d.status_reason {
        v["statusReason"] = json!(r);
    }
    if let Some(connected) = d.connected {
        let mut c = json!({ "connected": connected });
        let at = if connected {
            d.last_connected_ms
        } else {
            d.last_disconnected_ms
        };
        if let Some(at) = at {
            c["timestamp"] = json!(at);
        }
        if !connected && let Some(r) = &d.disconnect_reason {
            c["disconnectReason"] = json!(r);
        }
        v["connectivity"] = c;
    }
    v
}

async fn list(state: &Arc<ApiState>, call: &Call) -> ApiResult<Response> {
    let status = call.q("status").map(str::to_owned);
    if let Some(s) = &status
        && s != "HEALTHY"
        && s != "UNHEALTHY"
    {
        return Err(validation(format!(
            "status {s:?} is not HEALTHY or UNHEALTHY"
        )));
    }
    let group = match call.q("thingGroupArn") {
        None => None,
        Some(arn) => match super::document::parse_target(arn)? {
            ("thinggroup", g) => Some(g),
            _ => {
                return Err(validation(format!(
                    "thingGroupArn {arn:?} is not a thing group ARN"
                )));
            }
        },
    };
    let runtime = call.q("runtime").map(str::to_owned);
    let page = page(call)?;
    let registry = state.registry.clone();
    let p = blocking(move || {
        registry.list_core_devices(
            group.as_deref(),
            status.as_deref(),
            runtime.as_deref(),
            &page,
        )
    })
    .await
    .map_err(|e| found(e, ""))?;
    let mut items: Vec<Value> = p.items.iter().map(device_json).collect();
    for v in &mut items {
        // ListCoreDevices has no coreVersion.
        v.as_object_mut().map(|m| m.remove("coreVersion"));
    }
    Ok(json_status(
        StatusCode::OK,
        with_token(json!({"coreDevices": items}), p.next_token),
    ))
}

async fn get(state: &Arc<ApiState>, thing: &str) -> ApiResult<Response> {
    let registry = state.registry.clone();
    let t = thing.to_string();
    let d = blocking(move || registry.get_core_device(&t))
        .await
        .map_err(|e| found(e, thing))?;
    let mut v = device_json(&d);
    v["tags"] = json!({});
    Ok(json_status(StatusCode::OK, v))
}

async fn installed(state: &Arc<ApiState>, call: &Call, thing: &str) -> ApiResult<Response> {
    let root_only = match call.q("topologyFilter") {
        None | Some("ROOT") => true,
        Some("ALL") => false,
        Some(o) => {
            return Err(validation(format!(
                "topologyFilter {o:?} is not ALL or ROOT"
            )));
        }
    };
    let page = page(call)?;
    let registry = state.registry.clone();
    let t = thing.to_string();
    let p = blocking(move || registry.list_installed_components(&t, root_only, &page))
        .await
        .map_err(|e| found(e, thing))?;
    let items: Vec<Value> = p
        .items
        .iter()
        .map(|c| {
            let mut v = json!({
                "componentName": c.name,
                "componentVersion": c.version,
                "lifecycleState": c.lifecycle_state,
                "isRoot": c.is_root,
                "lastStatusChangeTimestamp": seconds(c.last_status_change_ms),
                "lastReportedTimestamp": seconds(c.last_reported_ms),
                "lifecycleStatusCodes": c.status_codes,
            });
            if let Some(d) = &c.state_details {
                v["lifecycleStateDetails"] = json!(d);
            }
            v
        })
        .collect();
    Ok(json_status(
        StatusCode::OK,
        with_token(json!({"installedComponents": items}), p.next_token),
    ))
}

async fn effective(state: &Arc<ApiState>, call: &Call, thing: &str) -> ApiResult<Response> {
    let page = page(call)?;
    let registry = state.registry.clone();
    let t = thing.to_string();
    let p = blocking(move || registry.list_effective_deployments(&t, &page))
        .await
        .map_err(|e| found(e, thing))?;
    let items: Vec<Value> = p
        .items
        .iter()
        .map(|e| {
            let details: Value = serde_json::from_str(&e.status_details).unwrap_or(json!({}));
            let mut v = json!({
                "deploymentId": e.deployment_id,
                "deploymentName": e.deployment_name.clone().unwrap_or_default(),
                "targetArn": e.target_arn,
                "coreDeviceExecutionStatus": e.execution_status,
                "creationTimestamp": seconds(e.created_ms),
                "modifiedTimestamp": seconds(e.modified_ms),
                "statusDetails": details,
            });
            if let Some(j) = &e.job_id {
                v["iotJobId"] = json!(j);
                v["iotJobArn"] = json!(state.registry.arn(&format!("job/{j}")));
            }
            if let Some(r) = &e.reason {
                v["reason"] = json!(r);
            }
            v
        })
        .collect();
    Ok(json_status(
        StatusCode::OK,
        with_token(json!({"effectiveDeployments": items}), p.next_token),
    ))
}
