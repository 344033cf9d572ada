//! The IPC operations of service `aws.greengrass.ShadowManager` (§2.4): GetThingShadow,
//! UpdateThingShadow, DeleteThingShadow, ListNamedShadowsForThing, authorized on
//! `$aws/things/<thing>/shadow[/name/<name>]` (List: the thing name), payloads as blobs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use lichen_ipc::{Authz, Caller, IpcError, ResourceStyle, Router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::SERVICE_NAME;
use crate::manager::{Origin, Shadows, now_secs};
use crate::rules::{self, ShadowError};

pub const OPERATIONS: [&str; 4] = [
    "GetThingShadow",
    "UpdateThingShadow",
    "DeleteThingShadow",
    "ListNamedShadowsForThing",
];

fn text<'a>(req: &'a Value, key: &str) -> &'a str {
    req.get(key).and_then(Value::as_str).unwrap_or("")
}

fn shadow_resource(req: &Value) -> String {
    let (thing, shadow) = (text(req, "thingName"), text(req, "shadowName"));
    crate::topics::prefix(thing, shadow)
}

fn thing_resource(req: &Value) -> String {
    text(req, "thingName").to_string()
}

/// The shadow service's codes as IPC errors.
fn to_ipc(e: ShadowError) -> IpcError {
    match e.code {
        400 | 413 => IpcError::invalid_arguments(e.message),
        401 | 403 => IpcError::Unauthorized { message: e.message },
        404 => IpcError::ResourceNotFound {
            message: e.message,
            resource_type: Some("Shadow".into()),
            resource_name: None,
        },
        409 => IpcError::Conflict { message: e.message },
        _ => IpcError::service(e.message),
    }
}

fn names(req: &Value) -> Result<(String, String), IpcError> {
    let thing = text(req, "thingName");
    if thing.is_empty() {
        return Err(IpcError::invalid_arguments("thingName is required"));
    }
    let shadow = text(req, "shadowName");
    crate::manager::check_names(thing, shadow).map_err(to_ipc)?;
    Ok((thing.to_string(), shadow.to_string()))
}

fn payload_of(doc: &Value) -> Value {
    json!({ "payload": B64.encode(serde_json::to_vec(doc).unwrap_or_default()) })
}

/// An opaque page token bound to the caller and the thing: `<offset>.<mac>`, the mac over a
/// per-process secret, so a token cannot be forged or moved to another caller or thing.
fn page_token(secret: &[u8; 32], caller: &str, thing: &str, offset: usize) -> String {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(caller.as_bytes());
    h.update([0]);
    h.update(thing.as_bytes());
    h.update([0]);
    h.update(offset.to_le_bytes());
    let mac = h.finalize();
    format!("{offset}.{}", hex(&mac[..16]))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_token(secret: &[u8; 32], caller: &str, thing: &str, token: &str) -> Option<usize> {
    let (offset, _) = token.split_once('.')?;
    let offset: usize = offset.parse().ok()?;
    (page_token(secret, caller, thing, offset) == token).then_some(offset)
}

/// Registers the four operations (replacing earlier registrations).
pub fn register(router: &Router, shadows: Shadows) {
    let authz = |resource: fn(&Value) -> String| Authz::Service {
        service_id: SERVICE_NAME.to_string(),
        resource,
        style: ResourceStyle::Standard,
    };
    let s = shadows.clone();
    router.register_unary("GetThingShadow", authz(shadow_resource), move |_c, req| {
        let s = s.clone();
        async move {
            let (thing, shadow) = names(&req)?;
            s.admit(&thing)
                .map_err(|_| IpcError::service("Too Many Requests"))?;
            let doc = s.get(&thing, &shadow).await.map_err(to_ipc)?;
            Ok(payload_of(&rules::get_response(&doc, None)))
        }
    });
    let s = shadows.clone();
    router.register_unary(
        "UpdateThingShadow",
        authz(shadow_resource),
        move |_c, req| {
            let s = s.clone();
            async move {
                let (thing, shadow) = names(&req)?;
                let body = match req.get("payload") {
                    Some(Value::String(b)) => B64.decode(b).map_err(|e| {
                        IpcError::invalid_arguments(format!("payload is not base64: {e}"))
                    })?,
                    _ => {
                        return Err(IpcError::invalid_arguments(
                            "payload is required (the update document)",
                        ));
                    }
                };
                s.admit(&thing)
                    .map_err(|_| IpcError::service("Too Many Requests"))?;
                let u = s
                    .update(&thing, &shadow, body, Origin::Local)
                    .await
                    .map_err(to_ipc)?;
                Ok(payload_of(&u.accepted))
            }
        },
    );
    let s = shadows.clone();
    router.register_unary(
        "DeleteThingShadow",
        authz(shadow_resource),
        move |_c, req| {
            let s = s.clone();
            async move {
                let (thing, shadow) = names(&req)?;
                s.admit(&thing)
                    .map_err(|_| IpcError::service("Too Many Requests"))?;
                let v = s
                    .delete(&thing, &shadow, Origin::Local)
                    .await
                    .map_err(to_ipc)?;
                Ok(payload_of(&v))
            }
        },
    );
    let mut secret = [0u8; 32];
    secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let s = shadows;
    router.register_unary(
        "ListNamedShadowsForThing",
        authz(thing_resource),
        move |c: Caller, req| {
            let s = s.clone();
            async move {
                let thing = text(&req, "thingName").to_string();
                if thing.is_empty() {
                    return Err(IpcError::invalid_arguments("thingName is required"));
                }
                crate::manager::check_names(&thing, "").map_err(to_ipc)?;
                let page = match req.get("pageSize") {
                    None | Some(Value::Null) => 25,
                    Some(v) => match v.as_u64() {
                        Some(n @ 1..=100) => n as usize,
                        _ => {
                            return Err(IpcError::invalid_arguments(format!(
                                "pageSize is {v}; use 1 to 100"
                            )));
                        }
                    },
                };
                let offset = match req.get("nextToken").and_then(Value::as_str) {
                    None | Some("") => 0,
                    Some(t) => read_token(&secret, &c.component, &thing, t).ok_or_else(|| {
                        IpcError::invalid_arguments(
                            "nextToken is not one this core issued for this caller and thing; start again without it",
                        )
                    })?,
                };
                s.admit(&thing).map_err(|_| IpcError::service("Too Many Requests"))?;
                // One more than the page tells whether there is a next page.
                let mut names = s.list_named(&thing, offset, page + 1).await.map_err(to_ipc)?;
                let more = names.len() > page;
                names.truncate(page);
                let mut out = json!({"results": names, "timestamp": now_secs()});
                if more {
                    out["nextToken"] = json!(page_token(&secret, &c.component, &thing, offset + page));
                }
                Ok(out)
            }
        },
    );
}

pub fn unregister(router: &Router) {
    for op in OPERATIONS {
        router.unregister(op);
    }
}
