//! The `iot` (2015-05-28) operations. Each runs on the blocking pool: registry writes wait for
//! fsync and key generation is CPU-bound.

use crate::call::{Call, required, seconds, str_field};
use crate::error::{ApiError, ApiResult};
use crate::{ApiState, json};
use axum::http::Method;
use axum::response::Response;
use lichen_fleet_registry::{CertificateStatus, NewCertificate, Page, PageRequest, ThingQuery};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

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

fn thing_type_json(t: &lichen_fleet_registry::ThingType) -> Value {
    let mut props = json!({ "searchableAttributes": t.searchable_attributes });
    if let Some(d) = &t.description {
        props["thingTypeDescription"] = json!(d);
    }
    let mut meta = json!({ "deprecated": t.deprecated, "creationDate": seconds(t.created_ms) });
    if let Some(ms) = t.deprecated_ms {
        meta["deprecationDate"] = seconds(ms);
    }
    json!({
        "thingTypeName": t.name,
        "thingTypeArn": t.arn,
        "thingTypeProperties": props,
        "thingTypeMetadata": meta,
    })
}

fn list_things(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let q = ThingQuery {
        attribute_name: c.q("attributeName").map(str::to_string),
        attribute_value: c.q("attributeValue").map(str::to_string),
        use_prefix_attribute_value: c.q_bool("usePrefixAttributeValue")?.unwrap_or(false),
        thing_type: c.q("thingTypeName").map(str::to_string),
    };
    let p = s.registry.list_things(&q, &token_page(c)?)?;
    Ok(paged_token("things", p, |t| {
        let mut v = json!({
            "thingName": t.name,
            "thingArn": t.arn,
            "attributes": t.attributes,
            "version": t.version,
        });
        if let Some(tt) = &t.thing_type {
            v["thingTypeName"] = json!(tt);
        }
        v
    }))
}

fn create_thing(s: &ApiState, c: &Call, name: &str) -> ApiResult<Response> {
    let body = c.json()?;
    let thing_type = str_field(&body, "thingTypeName")?;
    let attrs = attribute_payload(&body, "attributePayload")?
        .map(|(a, _)| a)
        .unwrap_or_default();
    let t = s.registry.create_thing(who(c), name, thing_type, attrs)?;
    Ok(json(json!({
        "thingName": t.name,
        "thingArn": t.arn,
        "thingId": t.id,
    })))
}

fn describe_thing(s: &ApiState, name: &str) -> ApiResult<Response> {
    let t = s.registry.describe_thing(name)?;
    let mut v = json!({
        "defaultClientId": t.name,
        "thingName": t.name,
        "thingId": t.id,
        "thingArn": t.arn,
        "attributes": t.attributes,
        "version": t.version,
    });
    if let Some(tt) = &t.thing_type {
        v["thingTypeName"] = json!(tt);
    }
    Ok(json(v))
}

fn update_thing(s: &ApiState, c: &Call, name: &str) -> ApiResult<Response> {
    let body = c.json()?;
    let expected = match body.get("expectedVersion") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| ApiError::invalid("expectedVersion must be an integer"))?,
        ),
    };
    s.registry.update_thing(
        who(c),
        name,
        str_field(&body, "thingTypeName")?,
        body.get("removeThingType")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        attribute_payload(&body, "attributePayload")?,
        expected,
    )?;
    Ok(json(json!({})))
}

fn create_thing_group(s: &ApiState, c: &Call, name: &str) -> ApiResult<Response> {
    let body = c.json()?;
    let parent = str_field(&body, "parentGroupName")?;
    let (description, attrs) = match body.get("thingGroupProperties").filter(|v| !v.is_null()) {
        None => (None, BTreeMap::new()),
        Some(Value::Object(p)) => (
            str_field(p, "thingGroupDescription")?,
            attribute_payload(p, "attributePayload")?
                .map(|(a, _)| a)
                .unwrap_or_default(),
        ),
        Some(_) => return Err(ApiError::invalid("thingGroupProperties must be an object")),
    };
    let g = s
        .registry
        .create_thing_group(who(c), name, parent, description, attrs)?;
    Ok(json(json!({
        "thingGroupName": g.name,
        "thingGroupArn": g.arn,
        "thingGroupId": g.id,
    })))
}

fn create_dynamic_thing_group(s: &ApiState, c: &Call, name: &str) -> ApiResult<Response> {
    let body = c.json()?;
    let query = required(str_field(&body, "queryString")?, "queryString")?;
    if let Some(index) = str_field(&body, "indexName")?
        && index != "AWS_Things"
    {
        return Err(ApiError::invalid(format!(
            "indexName {index:?}: only AWS_Things is indexed"
        )));
    }
    let (description, attrs) = match body.get("thingGroupProperties").filter(|v| !v.is_null()) {
        None => (None, BTreeMap::new()),
        Some(Value::Object(p)) => (
            str_field(p, "thingGroupDescription")?,
            attribute_payload(p, "attributePayload")?
                .map(|(a, _)| a)
                .unwrap_or_default(),
        ),
        Some(_) => return Err(ApiError::invalid("thingGroupProperties must be an object")),
    };
    let g = s
        .registry
        .create_dynamic_thing_group(who(c), name, description, attrs, query)?;
    Ok(json(json!({
        "thingGroupName": g.name,
        "thingGroupArn": g.arn,
        "thingGroupId": g.id,
        "indexName": "AWS_Things",
        "queryString": query,
        "queryVersion": "2017-09-30",
    })))
}

fn describe_thing_group(s: &ApiState, name: &str) -> ApiResult<Response> {
    let g = s.registry.describe_thing_group(name)?;
    let mut props = json!({ "attributePayload": { "attributes": g.attributes } });
    if let Some(d) = &g.description {
        props["thingGroupDescription"] = json!(d);
    }
    let mut meta = json!({
        "creationDate": seconds(g.created_ms),
        "rootToParentThingGroups": g.root_to_parent.iter()
            .map(|(n, a)| json!({"groupName": n, "groupArn": a}))
            .collect::<Vec<_>>(),
    });
    if let Some(p) = &g.parent {
        meta["parentGroupName"] = json!(p);
    }
    let mut out = json!({
        "thingGroupName": g.name,
        "thingGroupId": g.id,
        "thingGroupArn": g.arn,
        "version": g.version,
        "thingGroupProperties": props,
        "thingGroupMetadata": meta,
    });
    if let Some(q) = &g.query {
        out["indexName"] = json!("AWS_Things");
        out["queryString"] = json!(q);
        out["queryVersion"] = json!("2017-09-30");
        out["status"] = json!("ACTIVE");
    }
    Ok(json(out))
}

/// The group and thing of Add/RemoveThingToThingGroup, by name or by ARN.
fn group_and_thing(s: &ApiState, c: &Call) -> ApiResult<(String, String)> {
    let body = c.json()?;
    let by = |name_field: &str, arn_field: &str, prefix: &str| -> ApiResult<String> {
        if let Some(n) = str_field(&body, name_field)? {
            return Ok(n.to_string());
        }
        let arn = str_field(&body, arn_field)?
            .ok_or_else(|| ApiError::invalid(format!("{name_field} or {arn_field} is required")))?;
        arn.strip_prefix(&s.registry.arn(prefix))
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::invalid(format!("{arn_field} {arn:?} is not an ARN of this fleet"))
            })
    };
    Ok((
        by("thingGroupName", "thingGroupArn", "thinggroup/")?,
        by("thingName", "thingArn", "thing/")?,
    ))
}

fn initial_status(c: &Call, body_status: Option<&str>) -> ApiResult<CertificateStatus> {
    if let Some(st) = body_status {
        return Ok(CertificateStatus::parse(st)?);
    }
    Ok(if c.q_bool("setAsActive")?.unwrap_or(false) {
        CertificateStatus::Active
    } else {
        CertificateStatus::Inactive
    })
}

fn record(
    s: &ApiState,
    c: &Call,
    op: &str,
    issued: &lichen_fleet_pki::IssuedCertificate,
    status: CertificateStatus,
) -> ApiResult<lichen_fleet_registry::Certificate> {
    Ok(s.registry.insert_certificate(
        who(c),
        op,
        &NewCertificate {
            id: issued.id.clone(),
            pem: issued.pem.clone(),
            status,
            ca_id: issued.ca_id.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
        },
    )?)
}

fn create_keys_and_certificate(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let status = initial_status(c, None)?;
    let k = s.ca.create_keys_and_certificate()?;
    let cert = record(s, c, "CreateKeysAndCertificate", &k.certificate, status)?;
    Ok(json(json!({
        "certificateArn": cert.arn,
        "certificateId": cert.id,
        "certificatePem": cert.pem,
        "keyPair": { "PublicKey": k.public_key_pem, "PrivateKey": k.private_key_pem },
    })))
}

fn create_certificate_from_csr(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let body = c.json()?;
    let csr = required(
        str_field(&body, "certificateSigningRequest")?,
        "certificateSigningRequest",
    )?;
    let status = initial_status(c, None)?;
    let issued = s.ca.sign_csr(csr)?;
    let cert = record(s, c, "CreateCertificateFromCsr", &issued, status)?;
    Ok(json(json!({
        "certificateArn": cert.arn,
        "certificateId": cert.id,
        "certificatePem": cert.pem,
    })))
}

fn register_certificate(s: &ApiState, c: &Call, without_ca: bool) -> ApiResult<Response> {
    let body = c.json()?;
    let pem = required(str_field(&body, "certificatePem")?, "certificatePem")?;
    if let Some(ca) = str_field(&body, "caCertificatePem")?
        && lichen_fleet_pki::certificate_id_of_pem(ca)? != s.ca.ca_id()
    {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "CertificateValidationException",
            "caCertificatePem is not a CA registered with this fleet (only the fleet's own CA \
             is registered)",
        ));
    }
    let status = initial_status(c, str_field(&body, "status")?)?;
    let issued = s.ca.register(pem, without_ca).map_err(|e| match e {
        lichen_fleet_pki::PkiError::Invalid(m) => ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "CertificateValidationException",
            m,
        ),
        e => e.into(),
    })?;
    let op = if without_ca {
        "RegisterCertificateWithoutCA"
    } else {
        "RegisterCertificate"
    };
    let cert = record(s, c, op, &issued, status)?;
    Ok(json(json!({
        "certificateArn": cert.arn,
        "certificateId": cert.id,
    })))
}

fn create_provisioning_template(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let body = c.json()?;
    let hook = match body.get("preProvisioningHook") {
        None | Some(Value::Null) => None,
        Some(h @ Value::Object(o)) if o.get("targetArn").is_some_and(Value::is_string) => {
            Some(h.to_string())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "preProvisioningHook must be an object with a targetArn",
            ));
        }
    };
    let t = s.registry.create_provisioning_template(
        who(c),
        &lichen_fleet_registry::ProvisioningTemplate {
            name: required(str_field(&body, "templateName")?, "templateName")?.into(),
            arn: String::new(),
            description: str_field(&body, "description")?.map(str::to_string),
            body: required(str_field(&body, "templateBody")?, "templateBody")?.into(),
            enabled: body
                .get("enabled")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            provisioning_role_arn: required(
                str_field(&body, "provisioningRoleArn")?,
                "provisioningRoleArn",
            )?
            .into(),
            pre_provisioning_hook: hook,
            kind: str_field(&body, "type")?
                .unwrap_or("FLEET_PROVISIONING")
                .into(),
            created_ms: 0,
            updated_ms: 0,
        },
    )?;
    Ok(json(json!({
        "templateArn": t.arn,
        "templateName": t.name,
        "defaultVersionId": 1,
    })))
}

fn describe_certificate(s: &ApiState, id: &str) -> ApiResult<Response> {
    let cert = s.registry.describe_certificate(id)?;
    let mut d = json!({
        "certificateArn": cert.arn,
        "certificateId": cert.id,
        "status": cert.status.as_str(),
        "certificatePem": cert.pem,
        "ownedBy": s.registry.account(),
        "creationDate": seconds(cert.created_ms),
        "lastModifiedDate": seconds(cert.updated_ms),
        "customerVersion": 1,
        "generationId": cert.updated_ms.to_string(),
        "validity": {
            "notBefore": cert.not_before,
            "notAfter": cert.not_after,
        },
        "certificateMode": "DEFAULT",
    });
    if let Some(ca) = &cert.ca_id {
        d["caCertificateId"] = json!(ca);
    }
    Ok(json(json!({ "certificateDescription": d })))
}
