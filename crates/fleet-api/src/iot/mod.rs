//! The `iot` (2015-05-28) operations: the route table here, the larger handlers in `things`
//! (things, groups, types) and `certs` (certificates, provisioning templates). Each runs on the
//! blocking pool: registry writes wait for fsync and key generation is CPU-bound.

use crate::call::{Call, required, seconds, str_field};
use crate::error::{ApiError, ApiResult};
use crate::{ApiState, json};
use axum::http::Method;
use axum::response::Response;
use lichen_fleet_registry::{CertificateStatus, NewCertificate, Page, PageRequest, ThingQuery};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

mod certs;
mod jobs;
mod things;

use certs::*;
use things::*;

pub(crate) async fn dispatch(state: &Arc<ApiState>, call: Call) -> ApiResult<Response> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || route(&state, &call))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "iot handler panicked");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailureException",
                "internal failure; the fleet log has the details",
            )
        })?
}

fn route(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let m = &c.method;
    if jobs::serves(&c.segs()) {
        return jobs::route(s, c);
    }
    match (m, c.segs().as_slice()) {
        (&Method::GET, ["things"]) => list_things(s, c),
        (&Method::POST, ["things", name]) => create_thing(s, c, name),
        (&Method::GET, ["things", name]) => describe_thing(s, name),
        (&Method::PATCH, ["things", name]) => update_thing(s, c, name),
        (&Method::DELETE, ["things", name]) => {
            s.registry
                .delete_thing(who(c), name, c.q_int("expectedVersion")?)?;
            Ok(json(json!({})))
        }
        (&Method::GET, ["things", name, "thing-groups"]) => {
            let p = s.registry.list_groups_for_thing(name, &token_page(c)?)?;
            Ok(paged_token(
                "thingGroups",
                p,
                |(n, a)| json!({"groupName": n, "groupArn": a}),
            ))
        }
        (&Method::PUT, ["things", name, "principals"]) => {
            let exclusive = match c.q("thingPrincipalType") {
                None | Some("NON_EXCLUSIVE_THING") => false,
                Some("EXCLUSIVE_THING") => true,
                Some(o) => {
                    return Err(ApiError::invalid(format!(
                        "thingPrincipalType {o:?} is not EXCLUSIVE_THING or NON_EXCLUSIVE_THING"
                    )));
                }
            };
            s.registry
                .attach_thing_principal(who(c), name, principal(c)?, exclusive)?;
            Ok(json(json!({})))
        }
        (&Method::DELETE, ["things", name, "principals"]) => {
            s.registry
                .detach_thing_principal(who(c), name, principal(c)?)?;
            Ok(json(json!({})))
        }
        (&Method::GET, ["things", name, "principals"]) => {
            let p = s.registry.list_thing_principals(name, &token_page(c)?)?;
            Ok(paged_token("principals", p, |a| json!(a)))
        }
        (&Method::GET, ["principals", "things"]) => {
            let p = s
                .registry
                .list_principal_things(principal(c)?, &token_page(c)?)?;
            Ok(paged_token("things", p, |t| json!(t)))
        }

        (&Method::POST, ["thing-types", name]) => {
            let body = c.json()?;
            let (description, searchable) = match body.get("thingTypeProperties") {
                Some(Value::Object(p)) => (
                    str_field(p, "thingTypeDescription")?,
                    p.get("searchableAttributes")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                _ => (None, vec![]),
            };
            let t = s
                .registry
                .create_thing_type(who(c), name, description, &searchable)?;
            Ok(json(json!({
                "thingTypeName": t.name,
                "thingTypeArn": t.arn,
                "thingTypeId": t.id,
            })))
        }
        (&Method::GET, ["thing-types", name]) => {
            let t = s.registry.describe_thing_type(name)?;
            let mut v = thing_type_json(&t);
            v["thingTypeId"] = json!(t.id);
            Ok(json(v))
        }
        (&Method::GET, ["thing-types"]) => {
            let p = s
                .registry
                .list_thing_types(c.q("thingTypeName"), &token_page(c)?)?;
            Ok(paged_token("thingTypes", p, thing_type_json))
        }
        (&Method::POST, ["thing-types", name, "deprecate"]) => {
            let undo = c
                .json()?
                .get("undoDeprecate")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            s.registry.deprecate_thing_type(who(c), name, undo)?;
            Ok(json(json!({})))
        }
        (&Method::DELETE, ["thing-types", name]) => {
            s.registry.delete_thing_type(who(c), name)?;
            Ok(json(json!({})))
        }

        (&Method::GET, ["thing-groups"]) => {
            let p = s.registry.list_thing_groups(
                c.q("parentGroup"),
                c.q("namePrefixFilter"),
                c.q_bool("recursive")?.unwrap_or(true),
                &token_page(c)?,
            )?;
            Ok(paged_token(
                "thingGroups",
                p,
                |(n, a)| json!({"groupName": n, "groupArn": a}),
            ))
        }
        (&Method::PUT, ["thing-groups", "addThingToThingGroup"]) => {
            let (g, t) = group_and_thing(s, c)?;
            s.registry.add_thing_to_group(who(c), &g, &t)?;
            Ok(json(json!({})))
        }
        (&Method::PUT, ["thing-groups", "removeThingFromThingGroup"]) => {
            let (g, t) = group_and_thing(s, c)?;
            s.registry.remove_thing_from_group(who(c), &g, &t)?;
            Ok(json(json!({})))
        }
        (&Method::POST, ["thing-groups", name]) => create_thing_group(s, c, name),
        (&Method::POST, ["dynamic-thing-groups", name]) => create_dynamic_thing_group(s, c, name),
        (&Method::PATCH, ["dynamic-thing-groups", name]) => {
            let body = c.json()?;
            let description = match body.get("thingGroupProperties") {
                Some(Value::Object(p)) => str_field(p, "thingGroupDescription")?,
                _ => None,
            };
            let expected = body.get("expectedVersion").and_then(Value::as_i64);
            let v = s.registry.update_dynamic_thing_group(
                who(c),
                name,
                str_field(&body, "queryString")?,
                description,
                expected,
            )?;
            Ok(json(json!({ "version": v })))
        }
        (&Method::DELETE, ["dynamic-thing-groups", name]) => {
            s.registry
                .delete_thing_group(who(c), name, c.q_int("expectedVersion")?)?;
            Ok(json(json!({})))
        }
        (&Method::GET, ["thing-groups", name]) => describe_thing_group(s, name),
        (&Method::PATCH, ["thing-groups", name]) => {
            let body = c.json()?;
            let (description, attrs) = match body.get("thingGroupProperties") {
                Some(Value::Object(p)) => (
                    str_field(p, "thingGroupDescription")?,
                    attribute_payload(p, "attributePayload")?,
                ),
                _ => return Err(ApiError::invalid("thingGroupProperties is required")),
            };
            let expected = body.get("expectedVersion").and_then(Value::as_i64);
            let v = s
                .registry
                .update_thing_group(who(c), name, description, attrs, expected)?;
            Ok(json(json!({ "version": v })))
        }
        (&Method::DELETE, ["thing-groups", name]) => {
            s.registry
                .delete_thing_group(who(c), name, c.q_int("expectedVersion")?)?;
            Ok(json(json!({})))
        }
        (&Method::GET, ["thing-groups", name, "things"]) => {
            let p = s.registry.list_things_in_group(
                name,
                c.q_bool("recursive")?.unwrap_or(false),
                &token_page(c)?,
            )?;
            Ok(paged_token("things", p, |t| json!(t)))
        }

        (&Method::POST, ["keys-and-certificate"]) => create_keys_and_certificate(s, c),
        (&Method::POST, ["certificates"]) => create_certificate_from_csr(s, c),
        (&Method::POST, ["certificate", "register"]) => register_certificate(s, c, false),
        (&Method::POST, ["certificate", "register-no-ca"]) => register_certificate(s, c, true),
        (&Method::GET, ["certificates"]) => {
            let p = s.registry.list_certificates(&marker_page(c)?)?;
            Ok(paged_marker("certificates", p, |cert| {
                json!({
                    "certificateArn": cert.arn,
                    "certificateId": cert.id,
                    "status": cert.status.as_str(),
                    "certificateMode": "DEFAULT",
                    "creationDate": seconds(cert.created_ms),
                })
            }))
        }
        (&Method::GET, ["certificates", id]) => describe_certificate(s, id),
        (&Method::PUT, ["certificates", id]) => {
            let status = CertificateStatus::parse(required(c.q("newStatus"), "newStatus")?)?;
            s.registry.update_certificate(who(c), id, status)?;
            Ok(json(json!({})))
        }
        (&Method::DELETE, ["certificates", id]) => {
            s.registry
                .delete_certificate(who(c), id, c.q_bool("forceDelete")?.unwrap_or(false))?;
            Ok(json(json!({})))
        }

        (&Method::GET, ["policies"]) => {
            let p = s.registry.list_policies(&marker_page(c)?)?;
            Ok(paged_marker(
                "policies",
                p,
                |(n, a)| json!({"policyName": n, "policyArn": a}),
            ))
        }
        (&Method::POST, ["policies", name]) => {
            let body = c.json()?;
            let doc = required(str_field(&body, "policyDocument")?, "policyDocument")?;
            let p = s.registry.create_policy(who(c), name, doc)?;
            Ok(json(json!({
                "policyName": p.name,
                "policyArn": p.arn,
                "policyDocument": p.document,
                "policyVersionId": p.default_version.to_string(),
            })))
        }
        (&Method::POST, ["policies", name, "version"]) => {
            let body = c.json()?;
            let doc = required(str_field(&body, "policyDocument")?, "policyDocument")?;
            let set = c.q_bool("setAsDefault")?.unwrap_or(false);
            let (v, is_default) = s.registry.create_policy_version(who(c), name, doc, set)?;
            Ok(json(json!({
                "policyArn": s.registry.arn(&format!("policy/{name}")),
                "policyDocument": doc,
                "policyVersionId": v.to_string(),
                "isDefaultVersion": is_default,
            })))
        }
        (&Method::GET, ["policies", name]) => {
            let p = s.registry.get_policy(name)?;
            Ok(json(json!({
                "policyName": p.name,
                "policyArn": p.arn,
                "policyDocument": p.document,
                "defaultVersionId": p.default_version.to_string(),
                "creationDate": seconds(p.created_ms),
                "lastModifiedDate": seconds(p.updated_ms),
                "generationId": p.generation.to_string(),
            })))
        }
        (&Method::DELETE, ["policies", name]) => {
            s.registry.delete_policy(who(c), name)?;
            Ok(json(json!({})))
        }
        (&Method::PUT, ["target-policies", name]) => {
            let body = c.json()?;
            let target = required(str_field(&body, "target")?, "target")?;
            s.registry.attach_policy(who(c), name, target)?;
            Ok(json(json!({})))
        }
        (&Method::POST, ["target-policies", name]) => {
            let body = c.json()?;
            let target = required(str_field(&body, "target")?, "target")?;
            s.registry.detach_policy(who(c), name, target)?;
            Ok(json(json!({})))
        }
        (&Method::POST, ["attached-policies", target]) => {
            let p = s.registry.list_attached_policies(
                target,
                c.q_bool("recursive")?.unwrap_or(false),
                &marker_page(c)?,
            )?;
            Ok(paged_marker(
                "policies",
                p,
                |(n, a)| json!({"policyName": n, "policyArn": a}),
            ))
        }
        (&Method::POST, ["policy-targets", name]) => {
            let p = s.registry.list_targets_for_policy(name, &marker_page(c)?)?;
            Ok(paged_marker("targets", p, |t| json!(t)))
        }

        (&Method::GET, ["endpoint"]) => {
            let host = match c.q("endpointType").unwrap_or("iot:Data") {
                "iot:Data" | "iot:Data-ATS" | "iot:Jobs" => &s.endpoints.data,
                "iot:CredentialProvider" => &s.endpoints.credentials,
                other => {
                    return Err(ApiError::invalid(format!(
                        "endpointType {other:?} is not iot:Data, iot:Data-ATS, \
                         iot:CredentialProvider or iot:Jobs"
                    )));
                }
            };
            Ok(json(json!({ "endpointAddress": host })))
        }

        (&Method::POST, ["provisioning-templates"]) => create_provisioning_template(s, c),
        (&Method::GET, ["provisioning-templates"]) => {
            let p = s.registry.list_provisioning_templates(&token_page(c)?)?;
            Ok(paged_token("templates", p, |t| {
                let mut v = json!({
                    "templateArn": t.arn,
                    "templateName": t.name,
                    "creationDate": seconds(t.created_ms),
                    "lastModifiedDate": seconds(t.updated_ms),
                    "enabled": t.enabled,
                    "type": t.kind,
                });
                if let Some(d) = &t.description {
                    v["description"] = json!(d);
                }
                v
            }))
        }
        (&Method::GET, ["provisioning-templates", name]) => {
            let t = s.registry.describe_provisioning_template(name)?;
            let mut v = json!({
                "templateArn": t.arn,
                "templateName": t.name,
                "creationDate": seconds(t.created_ms),
                "lastModifiedDate": seconds(t.updated_ms),
                "defaultVersionId": 1,
                "templateBody": t.body,
                "enabled": t.enabled,
                "provisioningRoleArn": t.provisioning_role_arn,
                "type": t.kind,
            });
            if let Some(d) = &t.description {
                v["description"] = json!(d);
            }
            if let Some(h) = t.pre_provisioning_hook.as_deref()
                && let Ok(h) = serde_json::from_str::<Value>(h)
            {
                v["preProvisioningHook"] = h;
            }
            Ok(json(v))
        }
        (&Method::PATCH, ["provisioning-templates", name]) => {
            let body = c.json()?;
            let hook = if body
                .get("removePreProvisioningHook")
                .and_then(Value::as_bool)
                == Some(true)
            {
                Some(None)
            } else {
                body.get("preProvisioningHook")
                    .filter(|h| h.is_object())
                    .map(|h| Some(h.to_string()))
            };
            s.registry.update_provisioning_template(
                who(c),
                name,
                str_field(&body, "description")?,
                body.get("enabled").and_then(Value::as_bool),
                str_field(&body, "provisioningRoleArn")?,
                hook.as_ref().map(|h| h.as_deref()),
            )?;
            Ok(json(json!({})))
        }
        (&Method::DELETE, ["provisioning-templates", name]) => {
            s.registry.delete_provisioning_template(who(c), name)?;
            Ok(json(json!({})))
        }

        (&Method::GET, ["role-aliases"]) => {
            let p = s.registry.list_role_aliases(&marker_page(c)?)?;
            Ok(paged_marker("roleAliases", p, |n| json!(n)))
        }
        (&Method::POST, ["role-aliases", name]) => {
            let body = c.json()?;
            let role_arn = required(str_field(&body, "roleArn")?, "roleArn")?;
            let duration = match body.get("credentialDurationSeconds") {
                None | Some(Value::Null) => 3600,
                Some(v) => v.as_i64().ok_or_else(|| {
                    ApiError::invalid("credentialDurationSeconds must be an integer")
                })?,
            };
            let a = s
                .registry
                .create_role_alias(who(c), name, role_arn, duration)?;
            Ok(json(json!({"roleAlias": a.name, "roleAliasArn": a.arn})))
        }
        (&Method::GET, ["role-aliases", name]) => {
            let a = s.registry.describe_role_alias(name)?;
            Ok(json(json!({"roleAliasDescription": {
                "roleAlias": a.name,
                "roleAliasArn": a.arn,
                "roleArn": a.role_arn,
                "owner": s.registry.account(),
                "credentialDurationSeconds": a.duration_seconds,
                "creationDate": seconds(a.created_ms),
                "lastModifiedDate": seconds(a.updated_ms),
            }})))
        }
        (&Method::DELETE, ["role-aliases", name]) => {
            s.registry.delete_role_alias(who(c), name)?;
            Ok(json(json!({})))
        }
        _ => Err(ApiError::unknown_operation(
            c.method.as_str(),
            &c.path,
            "iot",
        )),
    }
}

fn who(c: &Call) -> &str {
    &c.caller.access_key_id
}

fn principal(c: &Call) -> ApiResult<&str> {
    c.header("x-amzn-principal").ok_or_else(|| {
        ApiError::invalid("the x-amzn-principal header (a certificate ARN) is required")
    })
}

fn page_size(c: &Call, name: &str) -> ApiResult<Option<u32>> {
    c.q_int(name)?
        .map(|n| {
            u32::try_from(n).map_err(|_| ApiError::invalid(format!("{name} {n} is out of range")))
        })
        .transpose()
}

/// `nextToken` + `maxResults` (registry lists).
fn token_page(c: &Call) -> ApiResult<PageRequest> {
    Ok(PageRequest {
        token: c.q("nextToken").map(str::to_string),
        size: page_size(c, "maxResults")?,
    })
}

/// `marker` + `pageSize` (certificates, policies, role aliases, attached policies).
fn marker_page(c: &Call) -> ApiResult<PageRequest> {
    Ok(PageRequest {
        token: c.q("marker").map(str::to_string),
        size: page_size(c, "pageSize")?,
    })
}

fn paged_token<T>(key: &str, p: Page<T>, f: impl Fn(&T) -> Value) -> Response {
    let mut out = Map::new();
    out.insert(key.into(), Value::Array(p.items.iter().map(f).collect()));
    if let Some(t) = p.next_token {
        out.insert("nextToken".into(), t.into());
    }
    json(Value::Object(out))
}

fn paged_marker<T>(key: &str, p: Page<T>, f: impl Fn(&T) -> Value) -> Response {
    let mut out = Map::new();
    out.insert(key.into(), Value::Array(p.items.iter().map(f).collect()));
    if let Some(t) = p.next_token {
        out.insert("nextMarker".into(), t.into());
    }
    json(Value::Object(out))
}

/// `attributePayload.attributes` (strings) and `merge`.
fn attribute_payload(
    body: &Map<String, Value>,
    field: &str,
) -> ApiResult<Option<(BTreeMap<String, String>, bool)>> {
    let Some(p) = body.get(field).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let p = p
        .as_object()
        .ok_or_else(|| ApiError::invalid(format!("{field} must be an object")))?;
    let mut attrs = BTreeMap::new();
    if let Some(a) = p.get("attributes").filter(|v| !v.is_null()) {
        let a = a
            .as_object()
            .ok_or_else(|| ApiError::invalid(format!("{field}.attributes must be an object")))?;
        for (k, v) in a {
            let v = v.as_str().ok_or_else(|| {
                ApiError::invalid(format!("{field}.attributes.{k} must be a string"))
            })?;
            attrs.insert(k.clone(), v.to_string());
        }
    }
    let merge = p.get("merge").and_then(Value::as_bool).unwrap_or(false);
    Ok(Some((attrs, merge)))
}
