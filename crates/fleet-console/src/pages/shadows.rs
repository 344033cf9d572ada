//! A device's shadows: their documents, and the operator's form that replaces a shadow's
//! desired state. The edit is version-checked twice: the form carries the version it was
//! rendered from (a shadow changed since is refused with 409, not overwritten), and the update
//! sent to the shadow service names that version too.

use crate::ConsoleState;
use crate::layout::{self, csrf};
use crate::session::{Authed, Posted, redirect_with_flash};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use lichen_fleet_registry::Role;
use lichen_fleet_shadow::{ErrorCode, ShadowError};
use maud::{Markup, html};
use serde_json::{Map, Value, json};

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/devices/{thing}/shadow", post(edit_classic))
        .route("/devices/{thing}/shadows/{name}", post(edit_named))
}

/// One shadow as the page shows it; `document` is None for a classic shadow that does not
/// exist yet.
pub(crate) struct ShadowView {
    pub name: Option<String>,
    pub document: Option<Value>,
}

impl ShadowView {
    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("classic")
    }
    fn version(&self) -> Option<u64> {
        self.document.as_ref()?.get("version")?.as_u64()
    }
    fn desired(&self) -> Value {
        self.document
            .as_ref()
            .and_then(|d| d.pointer("/state/desired"))
            .cloned()
            .unwrap_or_else(|| json!({}))
    }
    fn action(&self, thing: &str) -> String {
        match &self.name {
            None => format!("/console/devices/{thing}/shadow"),
            Some(n) => format!("/console/devices/{thing}/shadows/{n}"),
        }
    }
}

/// The classic shadow and every named one.
pub(crate) async fn load(state: &ConsoleState, thing: &str) -> Vec<ShadowView> {
    let Some(svc) = &state.shadows else {
        return Vec::new();
    };
    let mut out = vec![ShadowView {
        name: None,
        document: svc.get(thing, None).await.ok(),
    }];
    let mut token = None;
    loop {
        let Ok(page) = svc.list_named(thing, token, Some(100)).await else {
            break;
        };
        for n in page.names {
            let document = svc.get(thing, Some(&n)).await.ok();
            out.push(ShadowView {
                name: Some(n),
                document,
            });
        }
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    out
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The documents (read only; refreshed live).
pub(crate) fn documents(shadows: &[ShadowView]) -> Markup {
    html! {
        @if shadows.iter().all(|s| s.document.is_none()) {
            p.muted { "This device has no shadow yet." }
        }
        @for s in shadows {
            @if let Some(doc) = &s.document {
                details open[s.name.is_none()] data-testid={"shadow-" (s.label())} {
                    summary { (s.label()) " shadow, version " (s.version().unwrap_or(0)) }
                    @let state = doc.get("state").cloned().unwrap_or(Value::Null);
                    dl.facts {
                        dt { "Desired" }
                        dd { pre data-testid={"shadow-desired-" (s.label())} { (pretty(state.get("desired").unwrap_or(&Value::Null))) } }
                        dt { "Reported" }
                        dd { pre data-testid={"shadow-reported-" (s.label())} { (pretty(state.get("reported").unwrap_or(&Value::Null))) } }
                        @if let Some(delta) = state.get("delta") {
                            dt { "Delta" }
                            dd { pre { (pretty(delta)) } }
                        }
                    }
                }
            }
        }
    }
}

/// The edit forms, for operators only (viewers see none; the server refuses them anyway).
pub(crate) fn edit_forms(user: &Authed, thing: &str, shadows: &[ShadowView]) -> Markup {
    if !user.can(Role::Operator) {
        return html! {};
    }
    html! {
        section aria-labelledby="shadow-edit-h" {
            h2 #shadow-edit-h { "Edit desired state" }
            p.muted { "The JSON object below becomes the shadow's whole desired state: keys you remove are deleted. The device receives the delta." }
            @for s in shadows {
                form.stack method="post" action=(s.action(thing)) data-testid={"shadow-form-" (s.label())} {
                    (csrf(user))
                    @if let Some(v) = s.version() { input type="hidden" name="version" value=(v); }
                    label for={"desired-" (s.label())} { "Desired state of the " (s.label()) " shadow" }
                    textarea id={"desired-" (s.label())} name="desired" spellcheck="false" { (pretty(&s.desired())) }
                    div { button type="submit" { "Update " (s.label()) " shadow" } }
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct EditForm {
    desired: String,
    /// The version the form was rendered from; absent for a shadow that did not exist.
    version: Option<String>,
}

/// The update that makes `old` into `new` under the shadow's merge rules: keys of `old`
/// missing from `new` are set to null (deleted), nested objects recursively.
pub(crate) fn replace_patch(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = Map::new();
            for (k, ov) in o {
                match n.get(k) {
                    None => {
                        out.insert(k.clone(), Value::Null);
                    }
                    Some(nv) => {
                        out.insert(k.clone(), replace_patch(ov, nv));
                    }
                }
            }
            for (k, nv) in n {
                if !o.contains_key(k) {
                    out.insert(k.clone(), nv.clone());
                }
            }
            Value::Object(out)
        }
        _ => new.clone(),
    }
}

async fn edit_classic(
    State(state): State<ConsoleState>,
    Path(thing): Path<String>,
    p: Posted<EditForm>,
) -> Response {
    edit(state, thing, None, p).await
}

async fn edit_named(
    State(state): State<ConsoleState>,
    Path((thing, name)): Path<(String, String)>,
    p: Posted<EditForm>,
) -> Response {
    edit(state, thing, Some(name), p).await
}

fn shadow_error(user: &Authed, e: ShadowError) -> Response {
    let status = match e.code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let message = if e.code == ErrorCode::Conflict {
        format!(
            "The shadow changed since this page was loaded ({}); reload the page to see the new version and edit again.",
            e.message
        )
    } else {
        e.message
    };
    layout::error_page(Some(user), status, "Shadow not updated", &message)
}

async fn edit(
    state: ConsoleState,
    thing: String,
    name: Option<String>,
    p: Posted<EditForm>,
) -> Response {
    let user = p.user;
    if let Err(r) = user.require(Role::Operator) {
        return r;
    }
    let Some(svc) = &state.shadows else {
        return layout::error_page(
            Some(&user),
            StatusCode::SERVICE_UNAVAILABLE,
            "Shadow not updated",
            "This fleet runs no shadow service.",
        );
    };
    let label = name.clone().unwrap_or_else(|| "classic".into());
    let desired: Value = match serde_json::from_str(&p.form.desired) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return layout::error_page(
                Some(&user),
                StatusCode::BAD_REQUEST,
                "Shadow not updated",
                "Field \"desired\" must be a JSON object, e.g. {\"color\": \"red\"}.",
            );
        }
        Err(e) => {
            return layout::error_page(
                Some(&user),
                StatusCode::BAD_REQUEST,
                "Shadow not updated",
                &format!("Field \"desired\" is not valid JSON: {e}."),
            );
        }
    };
    let version: Option<u64> = match p.form.version.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(v) => match v.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                return layout::error_page(
                    Some(&user),
                    StatusCode::BAD_REQUEST,
                    "Shadow not updated",
                    &format!("Field \"version\" must be a whole number, not {v:?}."),
                );
            }
        },
    };
    // The current document: its desired state is what the patch replaces.
    let current = match svc.get(&thing, name.as_deref()).await {
        Ok(d) => Some(d),
        Err(e) if e.code == ErrorCode::NotFound => None,
        Err(e) => return shadow_error(&user, e),
    };
    let current_version = current
        .as_ref()
        .and_then(|d| d.get("version"))
        .and_then(Value::as_u64);
    if current_version != version {
        return shadow_error(
            &user,
            ShadowError::new(
                ErrorCode::Conflict,
                format!(
                    "version {} now, the form had {}",
                    current_version.map_or("none".into(), |v| v.to_string()),
                    version.map_or("none".into(), |v| v.to_string())
                ),
            ),
        );
    }
    let old = current
        .as_ref()
        .and_then(|d| d.pointer("/state/desired"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut update = json!({ "state": { "desired": replace_patch(&old, &desired) } });
    if let Some(v) = version {
        update["version"] = json!(v);
    }
    match svc.update(&thing, name.as_deref(), update, None).await {
        Ok(accepted) => {
            let v = accepted.get("version").and_then(Value::as_u64).unwrap_or(0);
            tracing::info!(user = %user.session.user.name, thing, shadow = label, version = v, "console: shadow desired state updated");
            redirect_with_flash(
                &state,
                &format!("/console/devices/{thing}"),
                &format!("The {label} shadow's desired state is updated (version {v})."),
            )
        }
        Err(e) => shadow_error(&user, e),
    }
}
