//! Handlers for things, thing groups (static and dynamic) and thing types.

use super::*;

pub(super) fn thing_type_json(t: &lichen_fleet_registry::ThingType) -> Value {
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

pub(super) fn list_things(s: &ApiState, c: &Call) -> ApiResult<Response> {
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

pub(super) fn create_thing(s: &ApiState, c: &Call, name: &str) -> ApiResult<Response> {
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

pub(super) fn describe_thing(s: &ApiState, name: &str) -> ApiResult<Response> {
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

pub(super) fn update_thing(s: &ApiState, c: &Call, name: &str) -> ApiResult<Response> {
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

pub(super) fn create_thing_group(s: &ApiState, c: &Call, name: &str) -> ApiResult<Response> {
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

pub(super) fn create_dynamic_thing_group(
    s: &ApiState,
    c: &Call,
    name: &str,
) -> ApiResult<Response> {
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

pub(super) fn describe_thing_group(s: &ApiState, name: &str) -> ApiResult<Response> {
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
pub(super) fn group_and_thing(s: &ApiState, c: &Call) -> ApiResult<(String, String)> {
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
