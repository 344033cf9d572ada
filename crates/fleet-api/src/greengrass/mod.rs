//! The `greengrassv2` (2020-11-30) control plane, signing name `greengrass`: routed on the path
//! after `/greengrass/v2/`. Component operations are in [`components`] (run on the blocking
//! pool: registry writes wait for fsync; artifact digests read the object store); deployments
//! and core devices (fleet-api §1.1) in [`deployments`] and [`core_devices`], on the
//! deployments service ([`service`]).

use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lichen_fleet_registry::PageRequest;
use std::sync::Arc;

pub mod components;
pub mod core_devices;
pub mod deployments;
pub mod document;
pub mod fleet_status;
pub mod lambda;
pub mod preview;
pub mod service;

pub use service::{
    CreateRequest, DEPLOYMENT_SHADOW, DeploymentJob, DeploymentJobs, DeploymentShadow, Deployments,
    ExecutionUpdate, JOB_NAMESPACE,
};

pub(crate) async fn dispatch(state: &Arc<ApiState>, call: Call) -> ApiResult<Response> {
    let segs = call.segs();
    match segs.as_slice() {
        ["greengrass", "v2", "deployments", ..] => {
            return deployments::dispatch(state, &call).await;
        }
        ["greengrass", "v2", "coreDevices", ..] => {
            return core_devices::dispatch(state, &call).await;
        }
        _ => {}
    }
    let state = state.clone();
    tokio::task::spawn_blocking(move || route(&state, &call))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "greengrass handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
                "internal failure; the fleet log has the details",
            )
        })?
}

fn route(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let segs = c.segs();
    match segs.as_slice() {
        ["greengrass", "v2", "createComponentVersion", ..]
        | ["greengrass", "v2", "components", ..] => components::route(s, c),
        _ => Err(ApiError::unknown_operation(
            c.method.as_str(),
            &c.path,
            "greengrass",
        )),
    }
}

/// `ValidationException` (400) with its `reason`.
pub(crate) fn validation(reason: &'static str, message: impl Into<String>) -> ApiError {
    let mut e = ApiError::new(StatusCode::BAD_REQUEST, "ValidationException", message);
    e.extra.push(("reason", reason.into()));
    e
}

/// `ResourceNotFoundException` (404) naming the resource.
pub(crate) fn not_found(kind: &'static str, id: &str, message: impl Into<String>) -> ApiError {
    let mut e = ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message);
    e.extra.push(("resourceId", id.into()));
    e.extra.push(("resourceType", kind.into()));
    e
}

/// [`not_found`] with the standard message.
pub(crate) fn missing(kind: &'static str, id: &str) -> ApiError {
    not_found(kind, id, format!("{kind} {id:?} does not exist"))
}

/// A JSON answer with a status (GGv2 answers 201 for Create*).
pub(crate) fn json_status(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The deployments service, or a clear error where this fleet runs none.
pub(crate) fn service(state: &ApiState) -> ApiResult<&Arc<Deployments>> {
    state.deployments.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "InternalServerException",
            "this fleet does not run the deployments service",
        )
    })
}

pub(crate) fn page(call: &Call) -> ApiResult<PageRequest> {
    Ok(PageRequest {
        token: call.q("nextToken").map(str::to_owned),
        size: call
            .q_int("maxResults")?
            .map(|n| u32::try_from(n).unwrap_or(0)),
    })
}

#[cfg(test)]
mod service_tests;
