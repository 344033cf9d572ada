//! Creating a deployment: the form (target thing or thing group; components with versions,
//! configuration merge and reset; deployment policies; rollout rate, abort criteria, timeout
//! and bake time), then the fleet's preview — for each device the target reaches, what it would
//! run (next to what it runs now) and the conflicts between its groups' deployments — and only
//! then the deployment itself.
//!
//! The confirm form carries the exact request that was previewed and its SHA-256; the server
//! deploys only that request (a changed one is sent back to preview), and refuses one whose
//! preview, run again at submit time, shows conflicts.

use super::form::DeployForm;
use super::{api_error, no_service, who};
use crate::ConsoleState;
use crate::layout;
use crate::session::{Authed, Posted, blocking, redirect_with_flash};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use lichen_fleet_api::greengrass::document::validate_request;
use lichen_fleet_api::greengrass::{CreateRequest, preview::preview_in};
use lichen_fleet_registry::Role;
use lichen_fleet_registry::{PageRequest, Registry, RegistryError};
use maud::{Markup, html};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/deployments/new", get(new_form))
        .route("/deployments/preview", post(preview))
        .route("/deployments", post(create))
}

/// Names offered in the form's lists: thing groups, core devices, components.
#[derive(Default)]
struct Choices {
    groups: Vec<String>,
    things: Vec<String>,
    components: Vec<String>,
}

fn choices(r: &Registry) -> lichen_fleet_registry::Result<Choices> {
    let groups = r
        .list_thing_groups(
            None,
            None,
            true,
            &PageRequest {
                token: None,
                size: Some(250),
            },
        )?
        .items
        .into_iter()
        .map(|(name, _arn)| name)
        .collect();
    let things = crate::pages::devices::all_core_devices(r)?
        .into_iter()
        .map(|d| d.thing_name)
        .collect();
    let components = r
        .list_component_names(&PageRequest {
            token: None,
            size: Some(100),
        })?
        .items;
    Ok(Choices {
        groups,
        things,
        components,
    })
}

fn opt(value: &str, label: &str, current: &str) -> Markup {
    html! { option value=(value) selected[current == value] { (label) } }
}

fn num(f: &DeployForm, name: &str, label: &str, hint: &str) -> Markup {
    html! {
        div {
            label for=(name) { (label) }
            input type="text" inputmode="decimal" id=(name) name=(name) value=(f.get(name)) aria-describedby={(name) "-hint"};
            small.muted id={(name) "-hint"} { (hint) }
        }
    }
}

/// The create form, filled with `f`.
fn form(user: &Authed, f: &DeployForm, c: &Choices) -> Markup {
    let rows = f.rows();
    html! {
        (super::style_link())
        form.deploy #deploy-form method="post" action="/console/deployments/preview" {
            (layout::csrf(user))
            fieldset {
                legend { "Target" }
                label for="target_kind" { "Deploy to a" }
                select #target_kind name="target_kind" {
                    (opt("group", "thing group", f.get("target_kind")))
                    (opt("thing", "single core device", f.get("target_kind")))
                }
                label for="target_name" { "Thing group or device name" }
                input type="text" #target_name name="target_name" list="target-names" required value=(f.get("target_name"));
                datalist #target-names {
                    @for g in &c.groups { option value=(g) { "group" } }
                    @for t in &c.things { option value=(t) { "device" } }
                }
                label for="name" { "Deployment name (optional)" }
                input type="text" #name name="name" value=(f.get("name"));
            }
            fieldset {
                legend { "Components" }
                p.muted { "One row per component: its version, and optionally a configuration merge (a JSON object) and reset paths (JSON pointers, comma-separated). Empty rows are ignored." }
                datalist #component-names { @for n in &c.components { option value=(n) {} } }
                table data-testid="deploy-components" {
                    thead { tr { th { "Component" } th { "Version" } th { "Configuration merge" } th { "Reset" } } }
                    tbody {
                        @for (i, r) in rows.iter().enumerate() {
                            tr {
                                td data-label="Component" {
                                    input type="text" id={"component-" (i)} name={"component." (i)} list="component-names"
                                        aria-label={"Component " (i + 1)} value=(r.name);
                                }
                                td data-label="Version" {
                                    input type="text" id={"version-" (i)} name={"version." (i)} aria-label={"Version " (i + 1)} value=(r.version);
                                }
                                td data-label="Configuration merge" {
                                    input type="text" id={"merge-" (i)} name={"merge." (i)} aria-label={"Configuration merge " (i + 1)}
                                        placeholder="{\"key\": \"value\"}" value=(r.merge);
                                }
                                td data-label="Reset" {
                                    input type="text" id={"reset-" (i)} name={"reset." (i)} aria-label={"Reset paths " (i + 1)}
                                        placeholder="/key" value=(r.reset);
                                }
                            }
                        }
                    }
                }
            }
            details {
                summary { "Deployment policies" }
                label for="failure_handling" { "When a device's deployment fails" }
                select #failure_handling name="failure_handling" {
                    (opt("", "roll the device back (default)", f.get("failure_handling")))
                    (opt("ROLLBACK", "roll the device back", f.get("failure_handling")))
                    (opt("DO_NOTHING", "leave it as it is", f.get("failure_handling")))
                }
                label for="update_action" { "Component update" }
                select #update_action name="update_action" {
                    (opt("", "notify components, which may defer (default)", f.get("update_action")))
                    (opt("NOTIFY_COMPONENTS", "notify components, which may defer", f.get("update_action")))
                    (opt("SKIP_NOTIFY_COMPONENTS", "do not notify components", f.get("update_action")))
                }
                (num(f, "update_timeout", "Update notification timeout (s)", "default 60"))
                (num(f, "validation_timeout", "Configuration validation timeout (s)", "default 30"))
            }
            details {
                summary { "Rollout, abort and timeout" }
                (num(f, "rollout_max_per_minute", "Devices notified per minute at most", "1 to 1000; empty: all at once"))
                (num(f, "rollout_base_rate", "Exponential rollout: base rate per minute", "1 to 1000; empty: no exponential rate"))
                (num(f, "rollout_increment", "Exponential rollout: increment factor", "1 to 5"))
                label for="rollout_criteria" { "The rate increases after this many devices were" }
                select #rollout_criteria name="rollout_criteria" {
                    (opt("notified", "notified", f.get("rollout_criteria")))
                    (opt("succeeded", "succeeded", f.get("rollout_criteria")))
                }
                (num(f, "rollout_criteria_count", "Number of devices", "for the exponential rate"))
                label for="abort_failure_type" { "Abort on" }
                select #abort_failure_type name="abort_failure_type" {
                    (opt("FAILED", "failed devices", f.get("abort_failure_type")))
                    (opt("TIMED_OUT", "timed-out devices", f.get("abort_failure_type")))
                    (opt("REJECTED", "rejected deployments", f.get("abort_failure_type")))
                    (opt("ALL", "any of these", f.get("abort_failure_type")))
                }
                (num(f, "abort_threshold", "Abort (and roll the fleet back) at this failure percentage", "0 to 100; empty: never abort"))
                (num(f, "abort_min_executed", "…once this many devices finished", "default 1"))
                (num(f, "timeout_minutes", "A device still in progress after (minutes) times out", "1 to 10080"))
                (num(f, "bake_seconds", "Bake time (s): a device succeeds only after its components stayed running this long", "0 to 604800"))
            }
            div { button #preview type="submit" { "Preview" } }
        }
    }
}

#[derive(serde::Deserialize, Default)]
struct NewQuery {
    component: Option<String>,
    version: Option<String>,
    group: Option<String>,
}

async fn new_form(
    user: Authed,
    State(state): State<ConsoleState>,
    Query(q): Query<NewQuery>,
) -> Response {
    if let Err(r) = user.require(Role::Operator) {
        return r;
    }
    let c = match blocking(&state, choices).await {
        Ok(c) => c,
        Err(e) => return layout::registry_error(&user, e),
    };
    let mut f = DeployForm::default();
    if let Some(n) = q.component {
        f.set("component.0", n);
    }
    if let Some(v) = q.version {
        f.set("version.0", v);
    }
    if let Some(g) = q.group {
        f.set("target_name", g);
    }
    layout::page(
        &user,
        "New deployment",
        "/console/deployments",
        form(&user, &f, &c),
    )
}

/// The SHA-256 (hex) the confirm form carries for `request`.
pub(crate) fn digest(request: &str) -> String {
    Sha256::digest(request.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One device in the preview: what it would run and runs now, and its conflicts.
struct PreviewDevice {
    thing: String,
    /// (component, version it would run, version it runs now, root, required by)
    components: Vec<(String, String, Option<String>, bool, String)>,
    conflicts: Vec<String>,
}

/// The fleet's preview of `body` with each device's installed versions beside it.
async fn run_preview(
    state: &ConsoleState,
    target_arn: &str,
    spec: &Value,
) -> Result<Vec<PreviewDevice>, lichen_fleet_api::ApiError> {
    let p = preview_in(state.registry.clone(), target_arn, Some(spec)).await?;
    let devices = p["devices"].as_array().cloned().unwrap_or_default();
    let things: Vec<String> = devices
        .iter()
        .filter_map(|d| d["thingName"].as_str().map(str::to_owned))
        .collect();
    let installed: BTreeMap<String, BTreeMap<String, String>> = blocking(state, move |r| {
        let mut out = BTreeMap::new();
        for t in things {
            let now = r
                .installed_components(&t)?
                .into_iter()
                .map(|c| (c.name, c.version))
                .collect();
            out.insert(t, now);
        }
        Ok(out)
    })
    .await
    .map_err(lichen_fleet_api::ApiError::from)?;
    Ok(devices
        .iter()
        .map(|d| {
            let thing = d["thingName"].as_str().unwrap_or_default().to_string();
            let now = installed.get(&thing);
            PreviewDevice {
                components: d["components"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let name = c["componentName"].as_str().unwrap_or_default().to_string();
                        let by = c["requiredBy"]
                            .as_object()
                            .map(|m| {
                                m.keys()
                                    .map(|k| super::target_parts(k))
                                    .map(|(kind, n)| format!("{kind} {n}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            })
                            .unwrap_or_default();
                        (
                            name.clone(),
                            c["componentVersion"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            now.and_then(|m| m.get(&name).cloned()),
                            c["isRoot"].as_bool().unwrap_or(false),
                            by,
                        )
                    })
                    .collect(),
                conflicts: d["conflicts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["message"].as_str().map(str::to_owned))
                    .collect(),
                thing,
            }
        })
        .collect())
}

/// `missing`: component versions the request names that are not published here.
fn preview_markup(
    user: &Authed,
    devices: &[PreviewDevice],
    missing: &[String],
    request: &str,
) -> Markup {
    let conflicts: usize = devices.iter().map(|d| d.conflicts.len()).sum();
    html! {
        section.preview #preview-section aria-labelledby="preview-h" {
            h2 #preview-h { "Preview" }
            @if devices.is_empty() {
                p.muted data-testid="preview-empty" { "The target has no device now; devices that join it later receive this deployment." }
            } @else {
                p { "What each of the " (devices.len()) " devices would run after this deployment (with what its last status report said it runs now):" }
                table data-testid="preview-table" {
                    thead { tr { th { "Device" } th { "Would run" } th { "Conflicts" } } }
                    tbody {
                        @for d in devices {
                            tr data-thing=(d.thing) data-conflicts=(d.conflicts.len()) {
                                td data-label="Device" { a href={"/console/devices/" (d.thing)} { (d.thing) } }
                                td data-label="Would run" {
                                    ul {
                                        @for (name, version, now, root, by) in &d.components {
                                            li data-component=(name) data-version=(version) {
                                                strong { (name) } " " (version)
                                                @match now {
                                                    Some(n) if n == version => { " " span.muted { "(unchanged)" } },
                                                    Some(n) => { " " span.muted { "(now " (n) ")" } },
                                                    None => { " " span.badge.warn { "new" } },
                                                }
                                                @if !root { " " span.muted { "dependency" } }
                                                @if !by.is_empty() { br; small.muted { "from " (by) } }
                                            }
                                        }
                                    }
                                }
                                td data-label="Conflicts" {
                                    @if d.conflicts.is_empty() { span.muted { "none" } }
                                    @for c in &d.conflicts { p.flash.error { (c) } }
                                }
                            }
                        }
                    }
                }
            }
            @if !missing.is_empty() {
                p.flash.error role="alert" data-testid="preview-unpublished" {
                    "Not in the component registry: " (missing.join(", ")) ". Devices could not install it: publish each version first (Components → Publish a component version)."
                }
            } @else if conflicts > 0 {
                p.flash.error role="alert" data-testid="preview-conflicts" {
                    (conflicts) " conflict(s): the deployment would fail on those devices. Change the versions (or the other groups' deployments) and preview again."
                }
            } @else {
                form #confirm-form method="post" action="/console/deployments" {
                    (layout::csrf(user))
                    input type="hidden" name="request" value=(request);
                    input type="hidden" name="digest" value=(digest(request));
                    button #deploy type="submit" { "Deploy to " (devices.len()) " device(s)" }
                }
            }
        }
    }
}

/// Builds and validates the request the form describes: (target ARN, body, spec).
async fn request_of(
    state: &ConsoleState,
    f: &DeployForm,
) -> Result<(String, Map<String, Value>, Value), String> {
    let (kind, name) = f.target()?;
    let n = name.clone();
    let exists = blocking(state, move |r| match kind {
        "thing" => r.describe_thing(&n).map(|_| ()),
        _ => r.describe_thing_group(&n).map(|_| ()),
    })
    .await;
    match exists {
        Ok(()) => {}
        Err(RegistryError::NotFound { .. }) => {
            return Err(format!(
                "Target: there is no {} named {name:?}",
                if kind == "thing" {
                    "thing"
                } else {
                    "thing group"
                }
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    let arn = state.registry.arn(&format!("{kind}/{name}"));
    let body = f.request(&arn)?;
    let spec = validate_request(&body).map_err(|e| e.message)?;
    Ok((arn, body, spec))
}

/// The form again, with an error above it (400).
fn form_error(user: &Authed, f: &DeployForm, c: &Choices, message: &str) -> Response {
    let mut r = layout::page(
        user,
        "New deployment",
        "/console/deployments",
        html! {
            p.flash.error role="alert" data-testid="form-error" { (message) }
            (form(user, f, c))
        },
    );
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

async fn preview(
    State(state): State<ConsoleState>,
    posted: Posted<Vec<(String, String)>>,
) -> Response {
    let user = posted.user;
    if let Err(r) = user.require(Role::Operator) {
        return r;
    }
    let f = DeployForm::from_pairs(posted.form);
    let c = blocking(&state, choices).await.unwrap_or_default();
    let (arn, body, spec) = match request_of(&state, &f).await {
        Ok(x) => x,
        Err(m) => return form_error(&user, &f, &c, &m),
    };
    let devices = match run_preview(&state, &arn, &spec).await {
        Ok(d) => d,
        Err(e) => return form_error(&user, &f, &c, &e.message),
    };
    let s = spec.clone();
    let missing = match blocking(&state, move |r| unpublished(r, &s)).await {
        Ok(m) => m,
        Err(e) => return layout::registry_error(&user, e),
    };
    let request = Value::Object(body).to_string();
    layout::page(
        &user,
        "New deployment",
        "/console/deployments",
        html! {
            (preview_markup(&user, &devices, &missing, &request))
            h2 { "Change and preview again" }
            (form(&user, &f, &c))
        },
    )
}

/// The confirm form. Fields default to empty so that a refused role is answered (403) before
/// a malformed form is.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Confirm {
    request: String,
    digest: String,
}

/// Every deployed version must be published here (AWS's public components excepted, which
/// cores resolve from their own sources), as CreateDeployment requires.
fn unpublished(r: &Registry, spec: &Value) -> lichen_fleet_registry::Result<Vec<String>> {
    let mut missing = Vec::new();
    for (name, c) in spec["components"].as_object().into_iter().flatten() {
        if name.starts_with("aws.greengrass.") {
            continue;
        }
        let v = c["componentVersion"].as_str().unwrap_or_default();
        match r.component_version(name, v) {
            Ok(_) => {}
            Err(RegistryError::NotFound { .. }) => missing.push(format!("{name} {v}")),
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

async fn create(State(state): State<ConsoleState>, posted: Posted<Confirm>) -> Response {
    let user = posted.user;
    if let Err(r) = user.require(Role::Operator) {
        return r;
    }
    let Confirm {
        request,
        digest: sent,
    } = posted.form;
    let refuse =
        |status: StatusCode, m: &str| layout::error_page(Some(&user), status, "Not deployed", m);
    if digest(&request) != sent {
        return refuse(
            StatusCode::BAD_REQUEST,
            "This is not the request that was previewed: preview the deployment again, then deploy.",
        );
    }
    let body = match serde_json::from_str::<Value>(&request) {
        Ok(Value::Object(m)) => m,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "The previewed request is not a JSON object; preview again.",
            );
        }
    };
    let spec = match validate_request(&body) {
        Ok(s) => s,
        Err(e) => return api_error(&user, "Not deployed", e),
    };
    let Some(arn) = body
        .get("targetArn")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "The request names no target; preview again.",
        );
    };
    // The fleet may have changed since the preview: conflicts now still refuse it.
    match run_preview(&state, &arn, &spec).await {
        Ok(devices) => {
            let n: usize = devices.iter().map(|d| d.conflicts.len()).sum();
            if n > 0 {
                return refuse(
                    StatusCode::CONFLICT,
                    &format!(
                        "{n} conflict(s) appeared since the preview: preview the deployment again."
                    ),
                );
            }
        }
        Err(e) => return api_error(&user, "Not deployed", e),
    }
    let s = spec.clone();
    match blocking(&state, move |r| unpublished(r, &s)).await {
        Ok(m) if m.is_empty() => {}
        Ok(m) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Not in the component registry: {}. Publish each version first (Components → Publish).",
                    m.join(", ")
                ),
            );
        }
        Err(e) => return layout::registry_error(&user, e),
    }
    let Some(svc) = state.deployments.clone() else {
        return no_service(&user);
    };
    let name = body
        .get("deploymentName")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match svc
        .create(
            &who(&user),
            CreateRequest {
                target_arn: arn,
                name,
                spec,
                parent_target_arn: None,
                rollback_of: None,
                client_token: None,
            },
        )
        .await
    {
        Ok(d) => redirect_with_flash(
            &state,
            &format!("/console/deployments/{}", d.id),
            &format!("Deployment created: revision {} of its target.", d.revision),
        ),
        Err(e) => api_error(&user, "Not deployed", e),
    }
}
