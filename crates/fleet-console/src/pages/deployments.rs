//! Deployments: the list, a deployment's page (its request, and its rollout per device with
//! live updates and the progress chart), cancel, and the fleet-wide rollback. Creating one,
//! with its preview, is in [`create`]; the per-device rollout in [`progress`], its chart in
//! [`chart`].
//!
//! A rollback is what the fleet does on its own when a rollout aborts: the target's next
//! revision carries the components of the newest earlier revision that did not fail (tag
//! `lichen:rollbackOf`), with no rollout limits, so every device that took the bad revision
//! returns to the previous one; the rolled-back deployment is then FAILED, so no later rollback
//! returns to it.

mod chart;
mod create;
mod form;
mod progress;
#[cfg(test)]
mod tests;

use crate::ConsoleState;
use crate::layout::{self, badge};
use crate::session::{Authed, Posted, blocking, redirect_with_flash};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lichen_fleet_api::ApiError;
use lichen_fleet_api::greengrass::CreateRequest;
use lichen_fleet_api::greengrass::document::{BAKE_TAG, ROLLBACK_TAG};
use lichen_fleet_registry::Role;
use lichen_fleet_registry::deployments::FAILED;
use lichen_fleet_registry::{Deployment, PageRequest};
use maud::{Markup, html};
use serde_json::{Value, json};

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/deployments", get(list))
        .route("/deployments/{id}", get(page))
        .route("/deployments/{id}/progress", get(progress))
        .route("/deployments/{id}/cancel", post(cancel))
        .route("/deployments/{id}/rollback", post(rollback))
        .route(
            "/deployments/rollouts.css",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    STYLE,
                )
            }),
        )
        .merge(create::routes())
}

/// The few rules these pages add to the console's style sheet.
const STYLE: &str = include_str!("deployments/rollouts.css");

/// The link to [`STYLE`] (a style sheet linked from the body is allowed and keeps the console's
/// CSP: no inline styles).
pub(crate) fn style_link() -> Markup {
    html! { link rel="stylesheet" href="/console/deployments/rollouts.css"; }
}

/// Who the audit log names for a console action.
pub(crate) fn who(user: &Authed) -> String {
    format!("console:{}", user.session.user.name)
}

/// A fleet API error as a page with its status.
pub(crate) fn api_error(user: &Authed, title: &str, e: ApiError) -> Response {
    layout::error_page(Some(user), e.status, title, &e.message)
}

/// The page a missing deployments service gives.
pub(crate) fn no_service(user: &Authed) -> Response {
    layout::error_page(
        Some(user),
        StatusCode::SERVICE_UNAVAILABLE,
        "Deployments unavailable",
        "This fleet runs no deployments service.",
    )
}

/// `arn:…:thinggroup/NAME` → ("group", NAME); `…:thing/NAME` → ("thing", NAME).
pub(crate) fn target_parts(arn: &str) -> (&'static str, String) {
    match lichen_fleet_api::greengrass::document::parse_target(arn) {
        Ok(("thinggroup", n)) => ("group", n),
        Ok((_, n)) => ("thing", n),
        Err(_) => ("target", arn.to_string()),
    }
}

/// A link to the target's page (a group's or a device's).
pub(crate) fn target_link(arn: &str) -> Markup {
    let (kind, name) = target_parts(arn);
    let href = match kind {
        "group" => format!("/console/groups/{name}"),
        _ => format!("/console/devices/{name}"),
    };
    html! { (kind) " " a href=(href) { (name) } }
}

#[derive(serde::Deserialize, Default)]
struct ListQuery {
    /// Every revision, not only each target's latest.
    #[serde(default)]
    all: Option<String>,
}

async fn list(
    user: Authed,
    State(state): State<ConsoleState>,
    Query(q): Query<ListQuery>,
) -> Response {
    let all = q.all.as_deref().is_some_and(|v| !v.is_empty() && v != "0");
    let rows = blocking(&state, move |r| {
        let mut out = Vec::new();
        let mut page = PageRequest {
            token: None,
            size: Some(100),
        };
        loop {
            let p = r.list_deployments(None, None, !all, &page)?;
            out.extend(p.items);
            match p.next_token {
                Some(t) if out.len() < 5000 => page.token = Some(t),
                _ => break,
            }
        }
        // Newest first.
        out.sort_by_key(|d: &Deployment| std::cmp::Reverse(d.created_ms));
        Ok(out)
    })
    .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return layout::registry_error(&user, e),
    };
    let body = html! {
        (style_link())
        @if user.can(Role::Operator) {
            p { a.button #new-deployment href="/console/deployments/new" { "New deployment" } }
        }
        p {
            @if all {
                "Showing every revision. " a href="/console/deployments" { "Show each target's latest only" }
            } @else {
                "Showing each target's latest revision. " a href="/console/deployments?all=1" { "Show every revision" }
            }
        }
        @if rows.is_empty() {
            p.muted { "No deployment yet." }
        } @else {
            table data-testid="deployments-table" {
                thead { tr { th { "Deployment" } th { "Target" } th { "Status" } th { "Revision" } th { "Created" } } }
                tbody {
                    @for d in &rows {
                        tr data-deployment=(d.id) data-status=(d.status) {
                            td data-label="Deployment" {
                                a href={"/console/deployments/" (d.id)} { (d.name.clone().unwrap_or_else(|| d.id.clone())) }
                                @if d.rollback_of.is_some() { " " span.badge.warn { "rollback" } }
                            }
                            td data-label="Target" { (target_link(&d.target_arn)) }
                            td data-label="Status" { (badge(&d.status)) }
                            td data-label="Revision" .num { (d.revision) @if d.is_latest { " " span.muted { "(latest)" } } }
                            td data-label="Created" { (layout::when(d.created_ms)) }
                        }
                    }
                }
            }
        }
    };
    layout::page(&user, "Deployments", "/console/deployments", body)
}

/// What a rollback of `d` would return its target to.
#[derive(Debug, Clone)]
pub(crate) enum RollbackTo {
    Revision(Box<Deployment>),
    /// No earlier revision that did not fail: the rollback removes the components.
    Nothing,
}

async fn page(user: Authed, State(state): State<ConsoleState>, Path(id): Path<String>) -> Response {
    let i = id.clone();
    let loaded = blocking(&state, move |r| {
        let p = progress::load(r, &i)?;
        let back = r
            .previous_good_deployment(&p.deployment.target_arn, p.deployment.revision)?
            .map_or(RollbackTo::Nothing, |d| RollbackTo::Revision(Box::new(d)));
        Ok((p, back))
    })
    .await;
    let (p, back) = match loaded {
        Ok(x) => x,
        Err(e) => return layout::registry_error(&user, e),
    };
    let d = &p.deployment;
    let spec: Value = serde_json::from_str(&d.spec).unwrap_or_else(|_| json!({}));
    let title = format!(
        "Deployment {}",
        d.name.clone().unwrap_or_else(|| d.id.clone())
    );
    let body = html! {
        (style_link())
        dl.facts data-testid="deployment-facts" {
            dt { "Id" } dd { code { (d.id) } }
            dt { "Target" } dd { (target_link(&d.target_arn)) }
            dt { "Status" } dd data-testid="deployment-status" { (badge(&d.status)) }
            dt { "Revision" } dd { (d.revision) @if d.is_latest { " (the target's latest)" } @else { " (superseded)" } }
            dt { "Created" } dd { (layout::when(d.created_ms)) }
            @if let Some(of) = &d.rollback_of {
                dt { "Rolls back" } dd { a href={"/console/deployments/" (of)} { (of) } }
            }
            @if let Some(b) = spec.pointer(&format!("/tags/{}", BAKE_TAG.replace('/', "~1"))).and_then(Value::as_str) {
                dt { "Bake time" } dd { (b) " s" }
            }
        }
        h2 { "Components" }
        (components_table(&spec))
        details {
            summary { "Policies, rollout and tags (as requested)" }
            pre data-testid="deployment-spec" {
                (serde_json::to_string_pretty(&json!({
                    "deploymentPolicies": spec.get("deploymentPolicies").cloned().unwrap_or(json!({})),
                    "iotJobConfiguration": spec.get("iotJobConfiguration").cloned().unwrap_or(json!({})),
                    "tags": spec.get("tags").cloned().unwrap_or(json!({})),
                })).unwrap_or_default())
            }
        }
        @if user.can(Role::Operator) {
            (actions(&user, d, &back))
        }
        h2 { "Rollout" }
        div #rollout data-live={"/console/deployments/" (d.id) "/progress"} data-interval="2000" {
            (progress::render(&p))
        }
    };
    layout::page(&user, &title, "/console/deployments", body)
}

fn components_table(spec: &Value) -> Markup {
    let components = spec["components"].as_object().cloned().unwrap_or_default();
    html! {
        @if components.is_empty() {
            p.muted { "No components: devices remove what this target deployed before." }
        } @else {
            table data-testid="deployment-components" {
                thead { tr { th { "Component" } th { "Version" } th { "Configuration update" } } }
                tbody {
                    @for (name, c) in &components {
                        @let version = c["componentVersion"].as_str().unwrap_or_default();
                        tr {
                            td data-label="Component" { a href={"/console/components/" (name)} { (name) } }
                            td data-label="Version" { a href={"/console/components/" (name) "/versions/" (version)} { (version) } }
                            td data-label="Configuration update" {
                                @if let Some(u) = c.get("configurationUpdate") {
                                    @if let Some(m) = u.get("merge").and_then(Value::as_str) {
                                        div { "merge " code { (m) } }
                                    }
                                    @if let Some(r) = u.get("reset").and_then(Value::as_array) {
                                        div { "reset " @for p in r { code { (p.as_str().unwrap_or_default()) } " " } }
                                    }
                                } @else { span.muted { "none" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Cancel and rollback, for operators.
fn actions(user: &Authed, d: &Deployment, back: &RollbackTo) -> Markup {
    let back_text = match back {
        RollbackTo::Revision(p) => {
            let comps: Vec<String> = serde_json::from_str::<Value>(&p.spec)
                .ok()
                .and_then(|s| s["components"].as_object().cloned())
                .unwrap_or_default()
                .iter()
                .map(|(n, c)| format!("{n} {}", c["componentVersion"].as_str().unwrap_or("?")))
                .collect();
            format!(
                "revision {} ({})",
                p.revision,
                if comps.is_empty() {
                    "no components".to_string()
                } else {
                    comps.join(", ")
                }
            )
        }
        RollbackTo::Nothing => {
            "no components (there is no earlier revision that did not fail)".into()
        }
    };
    html! {
        section aria-labelledby="actions-h" data-testid="deployment-actions" {
            h2 #actions-h { "Actions" }
            @if d.status == "ACTIVE" {
                form.inline method="post" action={"/console/deployments/" (d.id) "/cancel"}
                    data-confirm="Cancel this deployment? Devices that have not taken it yet will not." {
                    (layout::csrf(user))
                    button.secondary #cancel type="submit" { "Cancel deployment" }
                }
            }
            @if d.is_latest && d.rollback_of.is_none() {
                form.inline method="post" action={"/console/deployments/" (d.id) "/rollback"}
                    data-confirm={"Roll every device of this target back to " (back_text) "?"} {
                    (layout::csrf(user))
                    button.danger #rollback type="submit" { "Roll back the fleet" }
                    span.muted { "Returns every device of the target to " (back_text) "." }
                }
            }
        }
    }
}

async fn progress(
    user: Authed,
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
) -> Response {
    match blocking(&state, move |r| progress::load(r, &id)).await {
        Ok(p) => progress::render(&p).into_response(),
        Err(e) => layout::registry_error(&user, e),
    }
}

async fn cancel(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    posted: Posted<super::CsrfOnly>,
) -> Response {
    let user = posted.user;
    if let Err(r) = user.require(Role::Operator) {
        return r;
    }
    let Some(svc) = state.deployments.clone() else {
        return no_service(&user);
    };
    match svc.cancel(&who(&user), &id).await {
        Ok(_) => redirect_with_flash(
            &state,
            &format!("/console/deployments/{id}"),
            "Deployment cancelled: devices that had not taken it will not.",
        ),
        Err(e) => api_error(&user, "Could not cancel", e),
    }
}

/// The fleet-wide rollback (see the module doc). Returns the new deployment.
pub(crate) async fn roll_back(
    state: &ConsoleState,
    who: &str,
    id: &str,
) -> Result<Deployment, ApiError> {
    let svc = state.deployments.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "InternalServerException",
            "this fleet runs no deployments service",
        )
    })?;
    let i = id.to_string();
    let (d, previous) = blocking(state, move |r| {
        let d = r.get_deployment(&i)?;
        let p = r.previous_good_deployment(&d.target_arn, d.revision)?;
        Ok((d, p))
    })
    .await
    .map_err(ApiError::from)?;
    let conflict = |m: String| ApiError::new(StatusCode::CONFLICT, "ConflictException", m);
    if !d.is_latest {
        return Err(conflict(format!(
            "deployment {id} is not its target's latest revision: a newer one replaced it \
             already; roll back from the latest"
        )));
    }
    if d.rollback_of.is_some() {
        return Err(conflict(format!(
            "deployment {id} is itself a rollback; deploy the versions you want instead"
        )));
    }
    let mut spec: Value = match &previous {
        Some(p) => serde_json::from_str(&p.spec).unwrap_or_else(|_| json!({})),
        None => json!({"components": {}}),
    };
    // The rollback reaches every device at once: no rollout limits, no abort.
    spec["iotJobConfiguration"] = json!({});
    if !spec["tags"].is_object() {
        spec["tags"] = json!({});
    }
    spec["tags"][ROLLBACK_TAG] = json!(d.id);
    let created = svc
        .create(
            who,
            CreateRequest {
                target_arn: d.target_arn.clone(),
                name: Some(format!(
                    "rollback of {}",
                    d.name.clone().unwrap_or_else(|| d.id.clone())
                )),
                spec,
                parent_target_arn: d.parent_target_arn.clone(),
                rollback_of: Some(d.id.clone()),
                client_token: None,
            },
        )
        .await?;
    // After the rollback exists (creating it stopped the old job): the rolled-back revision is
    // FAILED, so no later rollback returns to it.
    let (w, i) = (who.to_string(), d.id.clone());
    blocking(state, move |r| r.set_deployment_status(&w, &i, FAILED))
        .await
        .map_err(ApiError::from)?;
    Ok(created)
}

async fn rollback(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    posted: Posted<super::CsrfOnly>,
) -> Response {
    let user = posted.user;
    if let Err(r) = user.require(Role::Operator) {
        return r;
    }
    match roll_back(&state, &who(&user), &id).await {
        Ok(d) => redirect_with_flash(
            &state,
            &format!("/console/deployments/{}", d.id),
            &format!(
                "Rolling back: revision {} returns every device of the target to the previous \
                 components; deployment {id} is marked FAILED.",
                d.revision
            ),
        ),
        Err(e) => api_error(&user, "Could not roll back", e),
    }
}
