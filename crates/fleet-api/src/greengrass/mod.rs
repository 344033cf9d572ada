//! The `greengrassv2` (2020-11-30) control plane, signing name `greengrass`: routed on the path
//! after `/greengrass/v2/`. Component operations are in [`components`]. Handlers run on the
//! blocking pool (registry writes wait for fsync; artifact digests read the object store).

use crate::ApiState;
use crate::call::Call;
use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub(crate) mod components;

pub(crate) async fn dispatch(state: &Arc<ApiState>, call: Call) -> ApiResult<Response> {
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

/// A JSON answer with a status (GGv2 answers 201 for Create*).
pub(crate) fn json_status(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}
