//! Certificates (status; operators activate, deactivate and revoke) and provisioning
//! templates (administrators enable and disable them).

use super::groups::who;
use crate::ConsoleState;
use crate::layout::{self, badge, csrf};
use crate::session::{Authed, Posted, blocking, redirect_with_flash};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use lichen_fleet_registry::Role;
use lichen_fleet_registry::{
    Certificate, CertificateStatus, PageRequest, ProvisioningTemplate, Registry, RegistryError,
};
use maud::{Markup, html};

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/certificates", get(page))
        .route("/certificates/{id}/status", post(set_status))
        .route("/templates/{name}/enabled", post(set_enabled))
}

struct Data {
    certs: Vec<(Certificate, Vec<String>)>,
    templates: Vec<ProvisioningTemplate>,
}

fn load(r: &Registry) -> Result<Data, RegistryError> {
    let mut certs = Vec::new();
    let mut page = PageRequest {
        token: None,
        size: Some(250),
    };
    loop {
        let p = r.list_certificates(&page)?;
        for c in p.items {
            let things = r
                .list_principal_things(
                    &c.arn,
                    &PageRequest {
                        token: None,
                        size: Some(50),
                    },
                )
                .map(|p| p.items)
                .unwrap_or_default();
            certs.push((c, things));
        }
        match p.next_token {
            Some(t) if certs.len() < 5000 => page.token = Some(t),
            _ => break,
        }
    }
    let mut templates = Vec::new();
    let mut page = PageRequest {
        token: None,
        size: Some(100),
    };
    loop {
        let p = r.list_provisioning_templates(&page)?;
        templates.extend(p.items);
        match p.next_token {
            Some(t) => page.token = Some(t),
            None => break,
        }
    }
    Ok(Data { certs, templates })
}

fn date(s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(s)
        .map(|t| format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day()))
        .unwrap_or_default()
}

fn cert_actions(user: &Authed, c: &Certificate) -> Markup {
    let next: &[(&str, &str)] = match c.status {
        CertificateStatus::Active => &[("INACTIVE", "Deactivate"), ("REVOKED", "Revoke")],
        CertificateStatus::Inactive
        | CertificateStatus::PendingActivation
        | CertificateStatus::RegisterInactive => &[("ACTIVE", "Activate"), ("REVOKED", "Revoke")],
        _ => &[],
    };
    html! {
        @for (status, label) in next {
            form method="post" action={"/console/certificates/" (c.id) "/status"} {
                (csrf(user))
                input type="hidden" name="status" value=(status);
                button type="submit" class=(if *status == "REVOKED" { "danger" } else { "secondary" })
                    aria-label={(label) " certificate " (&c.id[..12.min(c.id.len())])} { (label) }
            }
        }
    }
}

async fn page(user: Authed, State(state): State<ConsoleState>) -> Response {
    let d = match blocking(&state, load).await {
        Ok(d) => d,
        Err(e) => return layout::registry_error(&user, e),
    };
    let operator = user.can(Role::Operator);
    let admin = user.can(Role::Admin);
    let body = html! {
        h2 { "Certificates" }
        @if d.certs.is_empty() { p.muted { "No certificate." } } @else {
            table data-testid="certificates-table" {
                thead { tr { th { "Certificate" } th { "Status" } th { "Things" } th { "Valid" } th { "Created" } @if operator { th { "Actions" } } } }
                tbody {
                    @for (c, things) in &d.certs {
                        tr data-certificate=(c.id) {
                            td data-label="Certificate" { code title=(c.id) { (&c.id[..12.min(c.id.len())]) "…" } }
                            td data-label="Status" { (badge(c.status.as_str())) }
                            td data-label="Things" {
                                @for t in things { a href={"/console/devices/" (t)} { (t) } " " }
                            }
                            td data-label="Valid" { (date(c.not_before)) " – " (date(c.not_after)) }
                            td data-label="Created" { (layout::when(c.created_ms)) }
                            @if operator { td data-label="Actions" { (cert_actions(&user, c)) } }
                        }
                    }
                }
            }
        }
        h2 { "Provisioning templates" }
        @if d.templates.is_empty() { p.muted { "No provisioning template." } } @else {
            table data-testid="templates-table" {
                thead { tr { th { "Template" } th { "Kind" } th { "Enabled" } th { "Role" } th { "Updated" } @if admin { th { "Actions" } } } }
                tbody {
                    @for t in &d.templates {
                        tr {
                            td data-label="Template" {
                                (t.name)
                                @if let Some(desc) = &t.description { br; span.muted { (desc) } }
                            }
                            td data-label="Kind" { (t.kind) }
                            td data-label="Enabled" { (badge(if t.enabled { "ENABLED" } else { "DISABLED" })) }
                            td data-label="Role" { code { (t.provisioning_role_arn) } }
                            td data-label="Updated" { (layout::when(t.updated_ms)) }
                            @if admin {
                                td data-label="Actions" {
                                    form method="post" action={"/console/templates/" (t.name) "/enabled"} {
                                        (csrf(&user))
                                        input type="hidden" name="enabled" value=(if t.enabled { "false" } else { "true" });
                                        button.secondary type="submit" { @if t.enabled { "Disable" } @else { "Enable" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(
        &user,
        "Certificates and provisioning",
        "/console/certificates",
        body,
    )
}

#[derive(serde::Deserialize)]
pub(crate) struct StatusForm {
    status: String,
}

async fn set_status(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    p: Posted<StatusForm>,
) -> Response {
    if let Err(r) = p.user.require(Role::Operator) {
        return r;
    }
    let status = match CertificateStatus::parse(&p.form.status) {
        Ok(
            s @ (CertificateStatus::Active
            | CertificateStatus::Inactive
            | CertificateStatus::Revoked),
        ) => s,
        _ => {
            return layout::error_page(
                Some(&p.user),
                StatusCode::BAD_REQUEST,
                "Certificate not changed",
                "Field \"status\" must be ACTIVE, INACTIVE or REVOKED.",
            );
        }
    };
    let who = who(&p.user);
    let i = id.clone();
    match blocking(&state, move |r| r.update_certificate(&who, &i, status)).await {
        Ok(()) => redirect_with_flash(
            &state,
            "/console/certificates",
            &format!(
                "Certificate {}… is now {}.",
                &id[..12.min(id.len())],
                status.as_str()
            ),
        ),
        Err(e) => layout::registry_error(&p.user, e),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct EnabledForm {
    enabled: String,
}

async fn set_enabled(
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
    p: Posted<EnabledForm>,
) -> Response {
    if let Err(r) = p.user.require(Role::Admin) {
        return r;
    }
    let enabled = p.form.enabled == "true";
    let who = who(&p.user);
    let n = name.clone();
    match blocking(&state, move |r| {
        r.update_provisioning_template(&who, &n, None, Some(enabled), None, None)
    })
    .await
    {
        Ok(()) => redirect_with_flash(
            &state,
            "/console/certificates",
            &format!(
                "Template {name} is {}.",
                if enabled { "enabled" } else { "disabled" }
            ),
        ),
        Err(e) => layout::registry_error(&p.user, e),
    }
}
