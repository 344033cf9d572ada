//! The fleet's control-plane HTTP API: AWS IoT operations over rest-json, authenticated with
//! SigV4, so the unmodified `aws` CLI and boto3 (`--endpoint-url`) are its clients.
//!
//! Every request is verified first ([`lichen_sigv4::verify`] against the registry's access
//! keys, 15 minutes of clock skew at most), then routed on the signing name of its credential
//! scope (`iot`, `iotdata`, `greengrass`, …) and its path: paths that two services share are told
//! apart by that name. `iot` is served here ([`iot`]), `greengrass` (components, deployments
//! and core devices, on the deployments service [`greengrass::Deployments`]) in [`greengrass`],
//! and `s3` ([`s3`]: the object store for artifacts, whose bodies stream past the
//! 1 MiB buffer the other services use); other services plug in as [`ServiceHandler`]s
//! (CloudWatch Logs, [`logs`], JSON 1.1 on `POST /`). The
//! mutual-TLS data plane ([`dataplane`]) serves the credentials provider and the Greengrass
//! device routes (resolveComponentCandidates, artifact URLs, a core's thing groups,
//! GetDeploymentConfiguration).
//!
//! A request signed with a user's access key runs only if the user's current role allows its
//! operation ([`roles::required_role`]); one signed with temporary credentials only if the
//! role alias's permissions policy does ([`credentials`]).
//!
//! Architecture invariant: no handler runs for a request whose signature did not verify, nor
//! for one above its caller's role or policy.
//! Architecture invariant: every mutation goes through the registry, which audits it in the
//! same transaction and announces it on [`Registry::subscribe`] after commit.
//! Architecture invariant: an object exists only once its data is fsynced and its metadata
//! file atomically replaced; a body whose declared SHA-256 or CRC32 does not match is never
//! committed; a component version's `s3://` artifacts match its recipe's digests.
//! Architecture invariant: a deployment is committed to the registry before any device is sent
//! it, and a device is sent a deployment's configuration only if the deployment targets it.

mod authz;
mod call;
pub mod client;
pub mod credentials;
pub mod dataplane;
mod dataplane_deployments;
mod dataplane_greengrass;
mod error;
pub mod greengrass;
mod iot;
pub mod logs;
pub mod roles;
pub mod s3;
mod secretsmanager;
pub mod signing;

pub use call::Call;
pub use error::{ApiError, ApiResult};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use lichen_fleet_pki::FleetCa;
use lichen_fleet_registry::Registry;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Requests larger than this are refused (the largest iot inputs are a few tens of KiB).
const MAX_BODY: usize = 1 << 20;

/// Hosts DescribeEndpoint answers (host only, as AWS does; clients add their ports).
#[derive(Debug, Clone)]
pub struct EndpointHosts {
    /// `iot:Data-ATS` (and `iot:Data`, `iot:Jobs`).
    pub data: String,
    /// `iot:CredentialProvider`.
    pub credentials: String,
}

/// Another service (by SigV4 signing name) served on the same listener.
pub trait ServiceHandler: Send + Sync {
    fn handle(&self, call: Call) -> Pin<Box<dyn Future<Output = Response> + Send + '_>>;

    /// A device's request on the data plane, where the verified client certificate
    /// (`certificate_id`) is the credential and nothing is signed: `None` when the service does
    /// not serve `call`'s path there. The handler authorizes it against the certificate's IoT
    /// policies itself.
    fn handle_device(
        &self,
        _certificate_id: &str,
        _call: Call,
    ) -> Option<Pin<Box<dyn Future<Output = Response> + Send + '_>>> {
        None
    }
}

/// What the handlers share.
pub struct ApiState {
    pub registry: Arc<Registry>,
    pub ca: Arc<FleetCa>,
    pub endpoints: EndpointHosts,
    /// Further services by signing name (`iotdata`, `greengrass`, …).
    pub services: HashMap<String, Arc<dyn ServiceHandler>>,
    /// Greengrass deployments and core devices (None: the fleet runs no deployments service).
    pub deployments: Option<Arc<greengrass::Deployments>>,
    /// The jobs service behind the iot jobs operations (none: they answer unknown operation).
    pub jobs: Option<lichen_fleet_jobs::JobsService>,
    /// The object store served as S3 (signing name `s3`) and holding component artifacts.
    pub objects: Option<Arc<s3::ObjectStore>>,
}

/// The router: one fallback that authenticates and dispatches.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Serves until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn handle(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    // S3 bodies stream to the object store; they never pass through the 1 MiB buffer below.
    if s3::is_s3(&req) {
        return s3::handle(&state, req).await;
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    // json 1.1 clients (X-Amz-Target) read the error code from the body's `__type`.
    let json11 = req.headers().contains_key("x-amz-target");
    let mut resp = match authenticate_and_dispatch(&state, req).await {
        Ok(r) => r,
        Err(e) if json11 => secretsmanager::error(e.code, e.message),
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-RequestId", v);
    }
    resp
}

async fn authenticate_and_dispatch(state: &Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            format!("the request body is over {MAX_BODY} bytes"),
        )
    })?;
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let payload = lichen_sigv4::hex_sha256(&body);
    let registry = state.registry.clone();
    // A user's access key, else temporary credentials from the credentials provider.
    let mut temporary = None;
    let mut key = None;
    let secret = |akid: &str| {
        if let Some((k, s)) = registry.access_key(akid).ok().flatten() {
            key = Some(k);
            return Some(s);
        }
        let t = registry.temporary_credentials(akid).ok().flatten()?;
        let s = t.secret_access_key.clone();
        temporary = Some(t);
        Some(s)
    };
    let caller = lichen_sigv4::verify(
        &lichen_sigv4::Request {
            method: parts.method.as_str(),
            path: &path,
            query: &query,
            headers: &headers,
            payload_sha256: &payload,
        },
        time::OffsetDateTime::now_utc(),
        secret,
    )?;
    let temporary = credentials::check_session(
        temporary,
        &caller,
        time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
    )?;
    let call = Call {
        method: parts.method,
        segments: call::split_path(&path)?,
        query: call::split_query(&query)?,
        path,
        headers: parts.headers,
        body,
        caller,
    };
    if let Some(t) = &temporary {
        credentials::authorize(state, &call, t)?;
    } else if let Some(k) = &key {
        let op = roles::operation_of(&state.registry, &call);
        roles::check(
            k,
            &call.caller.service,
            op.as_deref(),
            &call.method,
            &call.path,
        )?;
    }
    tracing::debug!(service = %call.caller.service, method = %call.method, path = %call.path, who = %call.caller.access_key_id, "request");
    match call.caller.service.as_str() {
        "iot" => iot::dispatch(state, call).await,
        "greengrass" => greengrass::dispatch(state, call).await,
        "secretsmanager" => Ok(secretsmanager::dispatch(state, call).await),
        other => match state.services.get(other) {
            Some(h) => Ok(h.handle(call).await),
            None => Err(ApiError::unknown_operation(
                call.method.as_str(),
                &call.path,
                other,
            )),
        },
    }
}

/// A JSON 200 answer.
pub fn json(v: serde_json::Value) -> Response {
    (
        [("content-type", "application/json")],
        Body::from(v.to_string()),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
