//! The Greengrass data plane a core calls with its certificate: ResolveComponentCandidates,
//! GetComponentVersionArtifact (a presigned URL into the object store) and
//! ListThingGroupsForCoreDevice. Each request is authorized against the certificate's IoT
//! policies for `greengrass:<Operation>`, as AWS does.
//!
//! Resolution picks, per candidate, the newest DEPLOYABLE version that satisfies every
//! requirer's npm-style range and has a manifest for the device's platform; the 404 messages
//! carry the phrases the nucleus looks for ("no usable version", "claim platform").

use crate::ApiState;
use crate::error::{ApiError, ApiResult};
use crate::greengrass::components::{self, s3_uri, sorted_versions, version_arn};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use lichen_fleet_policy::{Context, Policy, ThingContext, evaluate};
use lichen_fleet_registry::{CertificateStatus, PageRequest, PrincipalAuthorization};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Whether a data-plane path is one of these routes.
pub(crate) fn is_greengrass(path: &str) -> bool {
    path.starts_with("/greengrass/v2/")
}

fn denied(action: &str, resource: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "AccessDeniedException",
        format!("the certificate's policies do not allow {action} on {resource}"),
    )
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "greengrass data plane failure");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerException",
        "internal failure; the fleet log has the details",
    )
}

/// Allows `greengrass:<op>` on `resource` only if the certificate is ACTIVE and one of its
/// policies allows it (policy variables refer to its first attached thing).
fn authorize(auth: &PrincipalAuthorization, op: &str, resource: &str) -> ApiResult<()> {
    let action = format!("greengrass:{op}");
    if auth.status != CertificateStatus::Active {
        return Err(denied(&action, resource));
    }
    let policies: Vec<Policy> = auth
        .policies
        .iter()
        .filter_map(|(name, doc)| Policy::parse(name, doc).ok())
        .collect();
    let ctx = Context {
        client_id: None,
        thing: auth.things.first().map(|t| ThingContext {
            name: &t.name,
            type_name: t.thing_type.as_deref(),
            attributes: &t.attributes,
        }),
    };
    if evaluate(&policies, &action, resource, &ctx).is_allowed() {
        Ok(())
    } else {
        Err(denied(&action, resource))
    }
}

fn not_found(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
}

fn validation(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "ValidationException", message)
}

/// Serves one data-plane Greengrass request for the certificate `certificate_id`.
pub(crate) async fn handle(
    state: &Arc<ApiState>,
    certificate_id: String,
    method: Method,
    path: String,
    query: String,
    body: bytes::Bytes,
) -> Response {
    let state = state.clone();
    let r = tokio::task::spawn_blocking(move || {
        route(&state, &certificate_id, &method, &path, &query, &body)
    })
    .await
    .unwrap_or_else(|e| Err(internal(e)));
    match r {
        Ok(v) => crate::json(v),
        Err(e) => e.into_response(),
    }
}

fn route(
    s: &ApiState,
    certificate_id: &str,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let segs = crate::call::split_path(path)?;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let auth = s
        .registry
        .principal_authorization(certificate_id)?
        .ok_or_else(|| denied("greengrass:*", "*"))?;
    let region = s.registry.region();
    let account = s.registry.account();
    match (method, &segs[2..]) {
        (&Method::POST, ["resolveComponentCandidates"]) => {
            authorize(&auth, "ResolveComponentCandidates", "*")?;
            resolve(s, body)
        }
        (&Method::GET, ["components", arn, "artifacts", name @ ..]) if !name.is_empty() => {
            authorize(&auth, "GetComponentVersionArtifact", arn)?;
            artifact(s, arn, &name.join("/"))
        }
        (&Method::GET, ["coreDevices", thing, "thingGroups"]) => {
            let resource = format!("arn:aws:greengrass:{region}:{account}:coreDevices:{thing}");
            authorize(&auth, "ListThingGroupsForCoreDevice", &resource)?;
            // A core lists its own groups only.
            if !auth.things.iter().any(|t| t.name == *thing) {
                return Err(denied("greengrass:ListThingGroupsForCoreDevice", &resource));
            }
            thing_groups(s, thing, query)
        }
        _ => Err(ApiError::unknown_operation(
            method.as_str(),
            path,
            "greengrass data plane",
        )),
    }
}

fn resolve(s: &ApiState, body: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| validation(format!("the request body is not JSON: {e}")))?;
    let attributes: BTreeMap<String, String> = v
        .pointer("/platform/attributes")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let platform = lichen_recipe::Platform { attributes };
    let platform_text = platform
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let candidates = v
        .get("componentCandidates")
        .and_then(Value::as_array)
        .ok_or_else(|| validation("componentCandidates is required (a list)".into()))?;
    let mut out = vec![];
    for c in candidates {
        let name = c
            .get("componentName")
            .and_then(Value::as_str)
            .ok_or_else(|| validation("componentCandidates[].componentName is required".into()))?;
        let mut requirements = vec![];
        if let Some(m) = c.get("versionRequirements").and_then(Value::as_object) {
            for (requirer, range) in m {
                let text = range.as_str().ok_or_else(|| {
                    validation(format!(
                        "versionRequirements.{requirer} of {name} must be a string"
                    ))
                })?;
                let req = lichen_recipe::VersionRequirement::parse(text).map_err(|e| {
                    validation(format!(
                        "versionRequirements.{requirer} of {name} ({text:?}) is not an npm-style \
                         range: {e}"
                    ))
                })?;
                requirements.push((requirer.clone(), text.to_owned(), req));
            }
        }
        let wanted = requirements
            .iter()
            .map(|(r, t, _)| format!("{r}: {t}"))
            .collect::<Vec<_>>()
            .join(", ");
        let versions = sorted_versions(s.registry.component_versions(name)?);
        let satisfying: Vec<_> = versions
            .into_iter()
            .filter(|cv| cv.status == "DEPLOYABLE")
            .filter(|cv| {
                semver::Version::parse(&cv.version)
                    .is_ok_and(|ver| requirements.iter().all(|(_, _, r)| r.matches(&ver)))
            })
            .collect();
        if satisfying.is_empty() {
            return Err(not_found(format!(
                "Component {name} has no usable version satisfying the requirements {{{wanted}}}"
            )));
        }
        let chosen = satisfying.iter().find(|cv| {
            let format = crate::greengrass::components::detect_format(&cv.recipe);
            lichen_recipe::parse_str(&cv.recipe, format, &cv.name)
                .is_ok_and(|r| r.manifests.iter().any(|m| m.matches(&platform)))
        });
        let Some(cv) = chosen else {
            return Err(not_found(format!(
                "Component {name}: the versions satisfying {{{wanted}}} ({}) do not claim platform \
                 {platform_text}",
                satisfying
                    .iter()
                    .map(|cv| cv.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        // The cloud hands cores JSON recipes (the Java nucleus parses them as JSON); a signed
        // recipe is served as the exact bytes its signature covers.
        let recipe = if cv.recipe_format == "YAML" && cv.signature.is_none() {
            components::recipe_value(&cv.recipe, lichen_recipe::Format::Yaml)
                .map_err(internal)
                .and_then(|v| components::render(&v, lichen_recipe::Format::Json))?
        } else {
            cv.recipe.clone()
        };
        let mut entry = json!({
            "arn": s.registry.component_version_arn(&cv.name, &cv.version),
            "componentName": cv.name,
            "componentVersion": cv.version,
            "recipe": base64::engine::general_purpose::STANDARD.encode(recipe.as_bytes()),
            "vendorGuidance": "ACTIVE",
            "message": "",
        });
        if let Some(sig) = cv
            .signature
            .as_deref()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
        {
            entry["lichenSignature"] = sig;
        }
        out.push(entry);
    }
    Ok(json!({ "resolvedComponentVersions": out }))
}

fn artifact(s: &ApiState, arn: &str, name: &str) -> ApiResult<Value> {
    let (component, version) = version_arn(arn)?;
    let cv = s
        .registry
        .component_version(&component, &version)
        .map_err(|_| not_found(format!("component version {arn} does not exist")))?;
    let format = crate::greengrass::components::detect_format(&cv.recipe);
    let recipe = lichen_recipe::parse_str(&cv.recipe, format, &cv.name).map_err(internal)?;
    // AWS names the artifact by the URI without its scheme; `s3://b/k` is `b/k` here.
    let named = recipe
        .manifests
        .iter()
        .flat_map(|m| &m.artifacts)
        .filter_map(|a| s3_uri(&a.uri))
        .find(|(b, k)| format!("{b}/{k}") == name);
    let Some((bucket, key)) = named else {
        return Err(not_found(format!(
            "component version {arn} has no artifact {name:?} (name it as the recipe's URI \
             without s3://)"
        )));
    };
    let objects = s
        .objects
        .as_ref()
        .ok_or_else(|| not_found("this fleet has no object store".into()))?;
    Ok(json!({ "preSignedUrl": objects.presigned_get(bucket, key) }))
}

fn thing_groups(s: &ApiState, thing: &str, query: &str) -> ApiResult<Value> {
    let q = crate::call::split_query(query)?;
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let page = s.registry.list_groups_for_thing(
        thing,
        &PageRequest {
            token: get("nextToken"),
            size: get("maxResults").and_then(|m| m.parse().ok()),
        },
    )?;
    let mut groups = vec![];
    for (name, arn) in page.items {
        let g = s.registry.describe_thing_group(&name)?;
        groups.push(json!({
            "thingGroupName": name,
            "thingGroupArn": arn,
            "rootToParentThingGroups": g.root_to_parent.iter().map(|(n, a)| json!({
                "thingGroupName": n, "thingGroupArn": a})).collect::<Vec<_>>(),
        }));
    }
    Ok(json!({ "thingGroups": groups, "nextToken": page.next_token }))
}
