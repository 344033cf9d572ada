//! GetDeploymentConfiguration on the data plane (mutual TLS; the path is ours, AWS's is not
//! public): `GET /greengrass/v2/deployments/<id>/coreDevices/<thing>/configuration` answers
//! `{"preSignedUrl", "integrityCheck": {"algorithm": "SHA-256", "digest": <base64>}}`, and the
//! URL is `…/configuration/document` on the same listener, served under the same checks: the
//! certificate is ACTIVE, attached to `<thing>`, its policies allow
//! `greengrass:GetDeploymentConfiguration`, and the deployment targets that thing or a group
//! it is in.

use crate::ApiState;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use lichen_fleet_policy::{Context, Policy, ThingContext, evaluate};
use lichen_fleet_registry::CertificateStatus;
use std::sync::Arc;

const ACTION: &str = "greengrass:GetDeploymentConfiguration";

fn message(status: StatusCode, code: &'static str, message: &str) -> Response {
    (
        status,
        [
            ("content-type", "application/json"),
            ("x-amzn-ErrorType", code),
        ],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

/// `segments` after `greengrass/v2/deployments`: `[<id>, "coreDevices", <thing>,
/// "configuration"]`, optionally followed by `"document"`.
pub(crate) async fn handle(
    state: &Arc<ApiState>,
    certificate_id: &str,
    host: Option<&str>,
    id: &str,
    thing: &str,
    document: bool,
) -> Response {
    let registry = state.registry.clone();
    let (cert, i, t) = (
        certificate_id.to_string(),
        id.to_string(),
        thing.to_string(),
    );
    let checked = tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
        let denied = || Ok(None);
        let Some(auth) = registry
            .principal_authorization(&cert)
            .map_err(|e| e.to_string())?
        else {
            return denied();
        };
        if auth.status != CertificateStatus::Active {
            return denied();
        }
        let Some(thing_row) = auth.things.iter().find(|x| x.name == t) else {
            return denied();
        };
        let policies: Vec<Policy> = auth
            .policies
            .iter()
            .filter_map(|(name, doc)| Policy::parse(name, doc).ok())
            .collect();
        let ctx = Context {
            client_id: None,
            thing: Some(ThingContext {
                name: &thing_row.name,
                type_name: thing_row.thing_type.as_deref(),
                attributes: &thing_row.attributes,
            }),
        };
        let resource = format!(
            "arn:aws:greengrass:{}:{}:deployments:{i}",
            registry.region(),
            registry.account()
        );
        if !evaluate(&policies, ACTION, &resource, &ctx).is_allowed() {
            return denied();
        }
        let d = match registry.get_deployment(&i) {
            Ok(d) => d,
            Err(_) => return denied(),
        };
        let groups = registry
            .deployment_groups_for_thing(&t)
            .map_err(|e| e.to_string())?;
        let reaches = d.target_arn == registry.arn(&format!("thing/{t}"))
            || groups
                .iter()
                .any(|g| d.target_arn == registry.arn(&format!("thinggroup/{g}")));
        if !reaches {
            return denied();
        }
        Ok(Some(d.id))
    })
    .await;
    let svc = match (checked, crate::greengrass::service(state)) {
        (Ok(Ok(Some(_))), Ok(svc)) => svc,
        (Ok(Ok(None)), _) => {
            return message(
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                &format!(
                    "this certificate may not read deployment {id}'s configuration for {thing}: \
                     it must be attached to the thing, its policy must allow {ACTION}, and the \
                     deployment must target the thing or one of its groups"
                ),
            );
        }
        (Ok(Err(e)), _) => {
            tracing::error!("GetDeploymentConfiguration: {e}");
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
                "internal failure; the fleet log has the details",
            );
        }
        _ => {
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
                "the deployments service is not running",
            );
        }
    };
    let registry = state.registry.clone();
    let i = id.to_string();
    let Ok(Ok(d)) = tokio::task::spawn_blocking(move || registry.get_deployment(&i)).await else {
        return message(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("deployment {id} does not exist"),
        );
    };
    let bytes = svc.document(&d).to_string().into_bytes();
    if document {
        return ([("content-type", "application/json")], Body::from(bytes)).into_response();
    }
    let hex = lichen_sigv4::hex_sha256(&bytes);
    let raw: Vec<u8> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    let host = host.unwrap_or("localhost");
    let url = format!(
        "https://{host}/greengrass/v2/deployments/{id}/coreDevices/{thing}/configuration/document"
    );
    (
        [("content-type", "application/json")],
        Body::from(
            serde_json::json!({
                "preSignedUrl": url,
                "integrityCheck": {
                    "algorithm": "SHA-256",
                    "digest": base64::engine::general_purpose::STANDARD.encode(raw),
                },
            })
            .to_string(),
        ),
    )
        .into_response()
}
