//! The `greengrassv2` control plane (signing name `greengrass`): deployments and core devices
//! (fleet-api §1.1), routed on the path after `/greengrass/v2/`.

pub mod core_devices;
pub mod deployments;
pub mod document;
pub mod fleet_status;
pub mod preview;
pub mod service;

pub use service::{
    CreateRequest, DEPLOYMENT_SHADOW, DeploymentJob, DeploymentJobs, DeploymentShadow, Deployments,
    ExecutionUpdate, JOB_NAMESPACE,
};

use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lichen_fleet_registry::PageRequest;
use std::sync::Arc;

pub(crate) async fn dispatch(state: &Arc<ApiState>, call: Call) -> ApiResult<Response> {
    let segs = call.segs();
    match segs.as_slice() {
        ["greengrass", "v2", "deployments", ..] => deployments::dispatch(state, &call).await,
        ["greengrass", "v2", "coreDevices", ..] => core_devices::dispatch(state, &call).await,
        _ => Err(ApiError::unknown_operation(
            call.method.as_str(),
            &call.path,
            "greengrass",
        )),
    }
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

pub(crate) fn not_found(kind: &'static str, id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "ResourceNotFoundException",
        message: format!("{kind} {id:?} does not exist"),
        extra: vec![
            ("resourceId", id.to_string()),
            ("resourceType", kind.into()),
        ],
    }
}

/// A JSON answer with `status`.
pub(crate) fn json_status(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        Body::from(v.to_string()),
    )
        .into_response()
}
#[cfg(test)]
mod service_tests;
