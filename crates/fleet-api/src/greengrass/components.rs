//! Component operations: CreateComponentVersion (inline recipes), DescribeComponent,
//! GetComponent, ListComponents, ListComponentVersions, DeleteComponent. A `lambdaFunction`
//! request is turned into a recipe by [`super::lambda`] and then published as an inline one.
//!
//! A recipe is validated with the recipe model; every `s3://` artifact must be in the object
//! store, and its `Digest` (base64 SHA-256) must match the stored object. A recipe without
//! digests gets them filled in (as Greengrass does), which re-serializes it; a signed recipe
//! must carry them, because the signature covers the exact bytes served to devices.

use super::{json_status, not_found, validation};
use crate::call::{Call, seconds, str_field};
use crate::error::{ApiError, ApiResult};
use crate::{ApiState, json};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use lichen_fleet_registry::{ComponentVersion, PageRequest};
use lichen_recipe::Format;
use serde_json::{Map, Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub(crate) fn route(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let segs = c.segs();
    match (&c.method, &segs[2..]) {
        (&Method::POST, ["createComponentVersion"]) => create(s, c),
        (&Method::GET, ["components"]) => list_components(s, c),
        (&Method::GET, ["components", arn, "metadata"]) => describe(s, arn),
        (&Method::GET, ["components", arn, "versions"]) => list_versions(s, c, arn),
        (&Method::GET, ["components", arn]) => get_component(s, c, arn),
        (&Method::DELETE, ["components", arn]) => {
            let (name, version) = version_arn(arn)?;
            s.registry
                .delete_component_version(&c.caller.access_key_id, &name, &version)
                .map_err(|e| missing(e, arn))?;
            Ok(json_status(StatusCode::NO_CONTENT, json!({})))
        }
        _ => Err(ApiError::unknown_operation(
            c.method.as_str(),
            &c.path,
            "greengrass",
        )),
    }
}

/// `arn:aws:greengrass:<r>:<acct>:components:<name>:versions:<version>` → (name, version).
pub(crate) fn version_arn(arn: &str) -> ApiResult<(String, String)> {
    let bad = || {
        validation(
            "FIELD_VALIDATION_FAILED",
            format!(
                "{arn:?} is not a component version ARN \
                 (arn:aws:greengrass:<region>:<account>:components:<name>:versions:<version>)"
            ),
        )
    };
    let rest = component_arn_rest(arn).ok_or_else(bad)?;
    let (name, version) = rest.split_once(":versions:").ok_or_else(bad)?;
    if name.is_empty() || version.is_empty() {
        return Err(bad());
    }
    Ok((name.into(), version.into()))
}

/// The part after `:components:`.
fn component_arn_rest(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:aws:greengrass:")?;
    let mut parts = rest.splitn(4, ':');
    let (_region, _account, kind, rest) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (kind == "components").then_some(rest)
}

fn missing(e: lichen_fleet_registry::RegistryError, arn: &str) -> ApiError {
    match e {
        lichen_fleet_registry::RegistryError::NotFound { .. } => not_found(
            "COMPONENT_VERSION",
            arn,
            format!("component version {arn} does not exist"),
        ),
        e => e.into(),
    }
}

/// `{` starts a JSON recipe; anything else is YAML.
pub fn detect_format(text: &str) -> Format {
    if text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .starts_with('{')
    {
        Format::Json
    } else {
        Format::Yaml
    }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Json => "JSON",
        Format::Yaml => "YAML",
    }
}

/// `s3://bucket/key` → (bucket, key).
pub fn s3_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("s3://"))
        .map(|_| &uri[5..])?;
    let (b, k) = rest.split_once('/')?;
    (!b.is_empty() && !k.is_empty()).then_some((b, k))
}

fn get_ci<'a>(m: &'a Map<String, Value>, key: &str) -> Option<(&'a String, &'a Value)> {
    m.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))
}

/// Sets `Digest`/`Algorithm` on every artifact whose URI has a computed digest in `digests`.
fn fill_digests(root: &mut Value, digests: &[(String, String)]) {
    let Some(manifests) = root.as_object_mut().and_then(|m| {
        let key = m
            .keys()
            .find(|k| k.eq_ignore_ascii_case("Manifests"))?
            .clone();
        m.get_mut(&key)?.as_array_mut()
    }) else {
        return;
    };
    for manifest in manifests.iter_mut().filter_map(Value::as_object_mut) {
        let Some(key) = manifest
            .keys()
            .find(|k| k.eq_ignore_ascii_case("Artifacts"))
            .cloned()
        else {
            continue;
        };
        let Some(artifacts) = manifest.get_mut(&key).and_then(Value::as_array_mut) else {
            continue;
        };
        for a in artifacts.iter_mut().filter_map(Value::as_object_mut) {
            let uri = get_ci(a, "Uri")
                .and_then(|(_, v)| v.as_str())
                .map(str::to_owned);
            let has = get_ci(a, "Digest").is_some_and(|(_, v)| !v.is_null());
            if let Some(uri) = uri
                && !has
                && let Some((_, d)) = digests.iter().find(|(u, _)| *u == uri)
            {
                a.insert("Digest".into(), Value::String(d.clone()));
                a.insert("Algorithm".into(), Value::String("SHA-256".into()));
            }
        }
    }
}

/// The recipe as a JSON value (YAML read through serde_yaml_ng).
pub fn recipe_value(text: &str, format: Format) -> Result<Value, String> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml_ng::from_str(text).map_err(|e| e.to_string()),
    }
}

pub fn render(v: &Value, format: Format) -> ApiResult<String> {
    match format {
        Format::Json => {
            serde_json::to_string_pretty(v).map_err(|e| ApiError::invalid(e.to_string()))
        }
        Format::Yaml => serde_yaml_ng::to_string(v).map_err(|e| ApiError::invalid(e.to_string())),
    }
}

fn check_signature(v: &Value) -> ApiResult<String> {
    let bad = |m: &str| validation("FIELD_VALIDATION_FAILED", format!("lichenSignature: {m}"));
    let key_id = v
        .get("keyId")
        .and_then(Value::as_str)
        .filter(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| bad("keyId must be the 64 hex digits of the public key's SHA-256"))?;
    let sig = v
        .get("signature")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("signature (base64 Ed25519 signature) is required"))?;
    if B64.decode(sig).map(|b| b.len()) != Ok(64) {
        return Err(bad(
            "signature must be the base64 of a 64-byte Ed25519 signature",
        ));
    }
    Ok(json!({"keyId": key_id.to_ascii_lowercase(), "signature": sig}).to_string())
}

/// The `inlineRecipe` field's text (base64 on the wire).
fn inline_recipe(body: &Map<String, Value>) -> ApiResult<String> {
    let inline = str_field(body, "inlineRecipe")?.ok_or_else(|| {
        validation(
            "FIELD_VALIDATION_FAILED",
            "inlineRecipe is required (the recipe, base64-encoded)",
        )
    })?;
    let bytes = B64.decode(inline.trim()).map_err(|e| {
        validation(
            "CANNOT_PARSE",
            format!("inlineRecipe is not base64 ({e}); boto3 and the CLI's fileb:// encode it"),
        )
    })?;
    String::from_utf8(bytes)
        .map_err(|_| validation("CANNOT_PARSE", "inlineRecipe is not UTF-8 text"))
}

fn create(s: &ApiState, c: &Call) -> ApiResult<Response> {
    let body = c.json()?;
    let text = match body.get("lambdaFunction") {
        Some(f) if !f.is_null() => super::lambda::recipe(s, f)?,
        _ => inline_recipe(&body)?,
    };
    let signature = match body.get("lichenSignature") {
        None | Some(Value::Null) => None,
        Some(v) => Some(check_signature(v)?),
    };
    let tags = match body.get("tags") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(m)) if m.values().all(Value::is_string) => Value::Object(m.clone()),
        Some(_) => {
            return Err(validation(
                "FIELD_VALIDATION_FAILED",
                "tags must be an object of string values",
            ));
        }
    };
    let client_token = str_field(&body, "clientToken")?.map(str::to_owned);
    let stored = publish(
        &s.registry,
        s.objects.as_deref(),
        &c.caller.access_key_id,
        Publish {
            text,
            signature,
            tags,
            client_token,
        },
    )?;
    Ok(json_status(StatusCode::CREATED, created_json(s, &stored)))
}

/// A component version to publish: the recipe's text (JSON or YAML), its checked signature
/// (JSON `{"keyId", "signature"}`), tags (an object of strings) and the client token.
pub struct Publish {
    pub text: String,
    pub signature: Option<String>,
    pub tags: Value,
    pub client_token: Option<String>,
}

/// CreateComponentVersion's rules, for the API and the console alike: validates the recipe,
/// checks (or fills in) each `s3://` artifact's digest against `objects`, and records the
/// version (FAILED, with the reasons, when an artifact is not in the object store). A client
/// token seen before answers what the first request created.
pub fn publish(
    registry: &lichen_fleet_registry::Registry,
    objects: Option<&crate::s3::ObjectStore>,
    who: &str,
    p: Publish,
) -> ApiResult<ComponentVersion> {
    let Publish {
        text,
        signature,
        tags,
        client_token,
    } = p;
    let format = detect_format(&text);
    let recipe = lichen_recipe::parse_str(&text, format, "inlineRecipe").map_err(|e| {
        let mut v = validation(
            "FIELD_VALIDATION_FAILED",
            format!("inlineRecipe: {}: {}", e.field, e.message),
        );
        v.extra.push(("field", e.field.clone()));
        v
    })?;
    let name = recipe.name.clone();
    let version = recipe.version.to_string();
    // Retried request: answer what the first one created.
    if let Some(token) = &client_token
        && let Ok(existing) = registry.component_version(&name, &version)
        && existing.client_token.as_deref() == Some(token)
    {
        return Ok(existing);
    }

    // Artifacts: each s3:// one must exist; its digest is checked or computed.
    let mut errors = Map::new();
    let mut computed: Vec<(String, String)> = vec![];
    for a in recipe.manifests.iter().flat_map(|m| &m.artifacts) {
        let Some((bucket, key)) = s3_uri(&a.uri) else {
            if a.scheme() == "s3" {
                return Err(validation(
                    "FIELD_VALIDATION_FAILED",
                    format!("artifact {}: an S3 URI is s3://<bucket>/<key>", a.uri),
                ));
            }
            continue;
        };
        let Some(objects) = objects else {
            errors.insert(a.uri.clone(), "this fleet has no object store".into());
            continue;
        };
        let found = objects.digest(bucket, key).map_err(|e| {
            tracing::error!(error = %e, "object store failure");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
                "internal failure in the object store; the fleet log has the details",
            )
        })?;
        let Some((_, sha)) = found else {
            errors.insert(
                a.uri.clone(),
                match &objects.remote {
                    Some(r) if !r.holds(bucket, key) => format!(
                        "the artifact {} is outside the fleet's object store ({}); upload it \
                         there and name it in the recipe",
                        a.uri,
                        r.describe()
                    ),
                    _ => format!(
                        "the artifact {} does not exist in the object store; upload it (aws s3 \
                         cp) and publish the version again",
                        a.uri
                    ),
                }
                .into(),
            );
            continue;
        };
        match (&a.digest, a.algorithm.as_deref()) {
            (None, _) => computed.push((a.uri.clone(), sha)),
            (Some(d), None | Some("SHA-256")) if *d == sha => {}
            (Some(d), None | Some("SHA-256")) => {
                return Err(validation(
                    "FIELD_VALIDATION_FAILED",
                    format!(
                        "artifact {}: the recipe's Digest {d} does not match the stored object \
                         (SHA-256 {sha}); upload the right file or fix the Digest",
                        a.uri
                    ),
                ));
            }
            (Some(_), Some(alg)) => {
                return Err(validation(
                    "FIELD_VALIDATION_FAILED",
                    format!(
                        "artifact {}: Algorithm {alg} is not supported; use SHA-256",
                        a.uri
                    ),
                ));
            }
        }
    }
    let mut stored_text = text.clone();
    if !computed.is_empty() {
        if signature.is_some() {
            return Err(validation(
                "FIELD_VALIDATION_FAILED",
                format!(
                    "a signed recipe must carry every artifact's Digest (missing for {}): the \
                     signature covers the exact recipe bytes",
                    computed
                        .iter()
                        .map(|(u, _)| u.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let mut v = recipe_value(&text, format).map_err(|e| validation("CANNOT_PARSE", e))?;
        fill_digests(&mut v, &computed);
        stored_text = render(&v, format)?;
    }
    let platforms: Vec<Value> = recipe
        .manifests
        .iter()
        .map(|m| {
            let attrs: Map<String, Value> = m
                .platform
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone().unwrap_or("*".into()))))
                .collect();
            let name = m
                .name
                .clone()
                .or_else(|| m.platform.get("os").cloned().flatten());
            match name {
                Some(n) => json!({"name": n, "attributes": attrs}),
                None => json!({"attributes": attrs}),
            }
        })
        .collect();
    let (status, message) = if errors.is_empty() {
        ("DEPLOYABLE", "NONE".to_string())
    } else {
        (
            "FAILED",
            serde_json::to_string(&Value::Object(errors.clone())).unwrap_or_default(),
        )
    };
    let stored = registry.create_component_version(
        who,
        &ComponentVersion {
            name,
            version,
            recipe: stored_text,
            recipe_format: format_name(format).into(),
            description: recipe.description.clone(),
            publisher: recipe.publisher.clone(),
            platforms: Value::Array(platforms).to_string(),
            status: status.into(),
            message,
            signature,
            tags: tags.to_string(),
            client_token,
            created_ms: 0,
        },
    );
    let stored = match stored {
        Err(lichen_fleet_registry::RegistryError::AlreadyExists { name, arn, .. }) => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "ConflictException",
                format!(
                    "component version {name} already exists; publish a new ComponentVersion \
                     (or DeleteComponent {arn} first)"
                ),
            );
            e.extra.push(("resourceId", arn));
            e.extra.push(("resourceType", "COMPONENT_VERSION".into()));
            return Err(e);
        }
        r => r?,
    };
    Ok(stored)
}

/// The `status` structure.
pub fn status_json(v: &ComponentVersion) -> Value {
    let errors: Value = if v.status == "FAILED" {
        serde_json::from_str(&v.message).unwrap_or(json!({}))
    } else {
        json!({})
    };
    let message = if v.status == "FAILED" {
        errors
            .as_object()
            .and_then(|m| m.values().next())
            .and_then(Value::as_str)
            .unwrap_or("the component version failed")
            .to_string()
    } else {
        v.message.clone()
    };
    json!({
        "componentState": v.status,
        "message": message,
        "errors": errors,
        "vendorGuidance": "ACTIVE",
        "vendorGuidanceMessage": "",
    })
}

fn created_json(s: &ApiState, v: &ComponentVersion) -> Value {
    json!({
        "arn": s.registry.component_version_arn(&v.name, &v.version),
        "componentName": v.name,
        "componentVersion": v.version,
        "creationTimestamp": seconds(v.created_ms),
        "status": status_json(v),
    })
}

fn lookup(s: &ApiState, arn: &str) -> ApiResult<ComponentVersion> {
    let (name, version) = version_arn(arn)?;
    s.registry
        .component_version(&name, &version)
        .map_err(|e| missing(e, arn))
}

fn describe(s: &ApiState, arn: &str) -> ApiResult<Response> {
    let v = lookup(s, arn)?;
    Ok(json(json!({
        "arn": s.registry.component_version_arn(&v.name, &v.version),
        "componentName": v.name,
        "componentVersion": v.version,
        "creationTimestamp": seconds(v.created_ms),
        "publisher": v.publisher.clone().unwrap_or_default(),
        "description": v.description.clone().unwrap_or_default(),
        "status": status_json(&v),
        "platforms": serde_json::from_str::<Value>(&v.platforms).unwrap_or(json!([])),
        "tags": serde_json::from_str::<Value>(&v.tags).unwrap_or(json!({})),
    })))
}

fn get_component(s: &ApiState, c: &Call, arn: &str) -> ApiResult<Response> {
    let v = lookup(s, arn)?;
    let stored = if v.recipe_format == "YAML" {
        Format::Yaml
    } else {
        Format::Json
    };
    let want = match c.q("recipeOutputFormat") {
        None => stored,
        Some(f) if f.eq_ignore_ascii_case("JSON") => Format::Json,
        Some(f) if f.eq_ignore_ascii_case("YAML") => Format::Yaml,
        Some(f) => {
            return Err(validation(
                "FIELD_VALIDATION_FAILED",
                format!("recipeOutputFormat {f:?} is not JSON or YAML"),
            ));
        }
    };
    let text = if want == stored {
        v.recipe.clone()
    } else {
        let value = recipe_value(&v.recipe, stored).map_err(|e| validation("OTHER", e))?;
        render(&value, want)?
    };
    Ok(json(json!({
        "recipeOutputFormat": format_name(want),
        "recipe": B64.encode(text.as_bytes()),
        "tags": serde_json::from_str::<Value>(&v.tags).unwrap_or(json!({})),
    })))
}

fn page(c: &Call) -> ApiResult<PageRequest> {
    let size = match c.q_int("maxResults")? {
        None => None,
        Some(n) if (1..=100).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(validation(
                "FIELD_VALIDATION_FAILED",
                format!("maxResults {n} is out of range; use 1 to 100"),
            ));
        }
    };
    Ok(PageRequest {
        token: c.q("nextToken").map(str::to_owned),
        size,
    })
}

/// Versions newest first (semver order; unparsable ones last).
pub fn sorted_versions(mut all: Vec<ComponentVersion>) -> Vec<ComponentVersion> {
    all.sort_by(|a, b| {
        let (va, vb) = (
            semver::Version::parse(&a.version).ok(),
            semver::Version::parse(&b.version).ok(),
        );
        vb.cmp(&va)
    });
    all
}

fn list_components(s: &ApiState, c: &Call) -> ApiResult<Response> {
    if c.q("scope") == Some("PUBLIC") {
        // AWS-provided public components are not hosted here.
        return Ok(json(json!({"components": []})));
    }
    let p = s.registry.list_component_names(&page(c)?)?;
    let mut out = vec![];
    for name in &p.items {
        let Some(latest) = sorted_versions(s.registry.component_versions(name)?)
            .into_iter()
            .next()
        else {
            continue;
        };
        out.push(json!({
            "arn": s.registry.component_arn(name),
            "componentName": name,
            "latestVersion": {
                "arn": s.registry.component_version_arn(name, &latest.version),
                "componentVersion": latest.version,
                "creationTimestamp": seconds(latest.created_ms),
                "description": latest.description.clone().unwrap_or_default(),
                "publisher": latest.publisher.clone().unwrap_or_default(),
                "platforms": serde_json::from_str::<Value>(&latest.platforms).unwrap_or(json!([])),
            },
        }));
    }
    let mut body = json!({"components": out});
    if let Some(t) = p.next_token {
        body["nextToken"] = t.into();
    }
    Ok(json(body))
}

fn list_versions(s: &ApiState, c: &Call, arn: &str) -> ApiResult<Response> {
    let name = component_arn_rest(arn)
        .filter(|r| !r.is_empty() && !r.contains(":versions:"))
        .ok_or_else(|| {
            validation(
                "FIELD_VALIDATION_FAILED",
                format!(
                    "{arn:?} is not a component ARN (arn:aws:greengrass:<region>:<account>:components:<name>)"
                ),
            )
        })?;
    let all = sorted_versions(s.registry.component_versions(name)?);
    if all.is_empty() {
        return Err(not_found(
            "COMPONENT",
            arn,
            format!("component {name} has no versions"),
        ));
    }
    let req = page(c)?;
    let start: usize = match &req.token {
        None => 0,
        Some(t) => t.parse().map_err(|_| {
            validation(
                "FIELD_VALIDATION_FAILED",
                format!("nextToken {t:?} is not one this service returned"),
            )
        })?,
    };
    let size = req.size.unwrap_or(50) as usize;
    let items: Vec<Value> = all
        .iter()
        .skip(start)
        .take(size)
        .map(|v| {
            json!({
                "componentName": v.name,
                "componentVersion": v.version,
                "arn": s.registry.component_version_arn(&v.name, &v.version),
            })
        })
        .collect();
    let mut body = json!({"componentVersions": items});
    if start + size < all.len() {
        body["nextToken"] = (start + size).to_string().into();
    }
    Ok(json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_split_into_name_and_version() {
        assert_eq!(
            version_arn("arn:aws:greengrass:us-east-1:123:components:com.a:versions:1.0.0")
                .unwrap(),
            ("com.a".to_string(), "1.0.0".to_string())
        );
        assert!(version_arn("arn:aws:greengrass:us-east-1:123:components:com.a").is_err());
        assert_eq!(s3_uri("s3://b/dir/k.zip"), Some(("b", "dir/k.zip")));
        assert_eq!(s3_uri("S3://b/k"), Some(("b", "k")));
        assert_eq!(s3_uri("s3://b"), None);
    }

    #[test]
    fn missing_digests_are_filled_in_any_key_case() {
        let mut v = json!({"manifests": [{"artifacts": [
            {"uri": "s3://b/a"}, {"URI": "s3://b/c", "Digest": "x"}]}]});
        fill_digests(
            &mut v,
            &[
                ("s3://b/a".into(), "AAA=".into()),
                ("s3://b/c".into(), "BBB=".into()),
            ],
        );
        assert_eq!(v["manifests"][0]["artifacts"][0]["Digest"], "AAA=");
        assert_eq!(v["manifests"][0]["artifacts"][0]["Algorithm"], "SHA-256");
        assert_eq!(v["manifests"][0]["artifacts"][1]["Digest"], "x");
    }
}
