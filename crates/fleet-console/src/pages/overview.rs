//! The fleet overview: core devices by health and last seen, deployments in flight with their
//! progress, and the fleet's health over time. Refreshed live (`/fragments/overview`).

use super::devices::{all_core_devices, devices_table};
use crate::ConsoleState;
use crate::charts::{self, Series};
use crate::layout::{self, now_ms};
use crate::session::{Authed, blocking};
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lichen_fleet_registry::{CoreDevice, Deployment, PageRequest, Registry};
use maud::{Markup, html};

/// Devices listed on the overview at most.
const OVERVIEW_DEVICES: usize = 100;

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/", get(page))
        .route("/fragments/overview", get(fragment))
}

/// A deployment in flight and its devices' progress.
pub(crate) struct InFlight {
    pub deployment: Deployment,
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
}

/// How many devices a deployment targets now: a thing, or a group's members (with its child
/// groups').
fn target_size(r: &Registry, target_arn: &str) -> lichen_fleet_registry::Result<usize> {
    let Some((kind, name)) = target_arn
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_once('/'))
    else {
        return Ok(0);
    };
    if kind != "thinggroup" {
        return Ok(1);
    }
    let mut n = 0;
    let mut page = PageRequest {
        token: None,
        size: Some(250),
    };
    loop {
        let p = match r.list_things_in_group(name, true, &page) {
            Ok(p) => p,
            // A deleted group targets no one.
            Err(lichen_fleet_registry::RegistryError::NotFound { .. }) => return Ok(n),
            Err(e) => return Err(e),
        };
        n += p.items.len();
        match p.next_token {
            Some(t) => page.token = Some(t),
            None => return Ok(n),
        }
    }
}

/// Every target's latest deployment that is ACTIVE and not yet finished on every device it
/// targets (a group's deployment stays ACTIVE for devices that join later: once each member
/// has an outcome it is no longer in flight).
pub(crate) fn deployments_in_flight(r: &Registry) -> lichen_fleet_registry::Result<Vec<InFlight>> {
    let mut out = Vec::new();
    let mut page = PageRequest {
        token: None,
        size: Some(100),
    };
    loop {
        let p = r.list_deployments(None, None, true, &page)?;
        for d in p.items {
            if d.status != "ACTIVE" {
                continue;
            }
            let rows = r.effective_deployments_of(&d.id)?;
            let succeeded = rows
                .iter()
                .filter(|e| e.execution_status == "SUCCEEDED" || e.execution_status == "COMPLETED")
                .count();
            let failed = rows
                .iter()
                .filter(|e| {
                    matches!(
                        e.execution_status.as_str(),
                        "FAILED" | "REJECTED" | "TIMED_OUT" | "CANCELED" | "ABORTED"
                    )
                })
                .count();
            let total = rows.len().max(target_size(r, &d.target_arn)?);
            if total > 0 && succeeded + failed >= total {
                continue;
            }
            out.push(InFlight {
                total,
                succeeded,
                failed,
                deployment: d,
            });
        }
        match p.next_token {
            Some(t) => page.token = Some(t),
            None => return Ok(out),
        }
    }
}

struct Data {
    devices: Vec<CoreDevice>,
    in_flight: Vec<InFlight>,
}

async fn load(state: &ConsoleState) -> lichen_fleet_registry::Result<Data> {
    blocking(state, |r| {
        Ok(Data {
            devices: all_core_devices(r)?,
            in_flight: deployments_in_flight(r)?,
        })
    })
    .await
}

fn render(state: &ConsoleState, d: &Data) -> Markup {
    let healthy = d.devices.iter().filter(|x| x.status == "HEALTHY").count();
    let online = d
        .devices
        .iter()
        .filter(|x| x.connected == Some(true))
        .count();
    // Unhealthy first; a large fleet's overview stays a page, the Devices page lists them all.
    let mut shown: Vec<CoreDevice> = d.devices.clone();
    shown.sort_by(|a, b| {
        (a.status == "HEALTHY", &a.thing_name).cmp(&(b.status == "HEALTHY", &b.thing_name))
    });
    shown.truncate(OVERVIEW_DEVICES);
    let now = now_ms();
    let history = state.telemetry.health();
    let series = [
        Series {
            name: "healthy",
            color: charts::GREEN,
            points: history
                .iter()
                .map(|s| (s.at_ms, s.healthy as f64))
                .collect(),
        },
        Series {
            name: "unhealthy",
            color: charts::RED,
            points: history
                .iter()
                .map(|s| (s.at_ms, s.unhealthy as f64))
                .collect(),
        },
    ];
    html! {
        section aria-labelledby="summary-h" {
            h2 #summary-h .visually-hidden { "Summary" }
            div.cards data-testid="summary" {
                div.card { span.n data-testid="count-devices" { (d.devices.len()) } span.l { "core devices" } }
                div.card { span.n data-testid="count-healthy" { (healthy) } span.l { "healthy" } }
                div.card { span.n data-testid="count-unhealthy" { (d.devices.len() - healthy) } span.l { "unhealthy" } }
                div.card { span.n data-testid="count-online" { (online) } span.l { "online" } }
                div.card { span.n data-testid="count-deploying" { (d.in_flight.len()) } span.l { "deployments in flight" } }
            }
        }
        section aria-labelledby="devices-h" {
            h2 #devices-h { "Devices" }
            (devices_table(&shown))
            @if shown.len() < d.devices.len() {
                p { "Showing the unhealthy first, " (shown.len()) " of " (d.devices.len()) ": "
                    a href="/console/devices" { "all devices" } "." }
            }
        }
        section aria-labelledby="inflight-h" {
            h2 #inflight-h { "Deployments in flight" }
            @if d.in_flight.is_empty() {
                p.muted { "No deployment is in progress." }
            } @else {
                table data-testid="inflight-table" {
                    thead { tr { th { "Deployment" } th { "Target" } th { "Progress" } th { "Failed" } th { "Created" } } }
                    tbody {
                        @for f in &d.in_flight {
                            tr {
                                td data-label="Deployment" {
                                    a href={"/console/deployments/" (f.deployment.id)} {
                                        (f.deployment.name.clone().unwrap_or_else(|| f.deployment.id.clone()))
                                    }
                                }
                                td data-label="Target" { (target_name(&f.deployment.target_arn)) }
                                td data-label="Progress" {
                                    progress value=(f.succeeded) max=(f.total.max(1))
                                        aria-label={"succeeded on " (f.succeeded) " of " (f.total) " devices"} {}
                                    " " (f.succeeded) " / " (f.total)
                                }
                                td data-label="Failed" .num { (f.failed) }
                                td data-label="Created" { (layout::when(f.deployment.created_ms)) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="health-h" {
            h2 #health-h { "Health over time" }
            (charts::time_chart("health-chart", "Core devices by health", "devices", &series, now))
        }
    }
}

/// `arn:…:thing/NAME` or `arn:…:thinggroup/NAME` → NAME (kind).
pub(crate) fn target_name(arn: &str) -> String {
    match arn.rsplit_once(':').map(|(_, r)| r) {
        Some(r) => match r.split_once('/') {
            Some(("thinggroup", n)) => format!("group {n}"),
            Some(("thing", n)) => format!("thing {n}"),
            _ => r.to_string(),
        },
        None => arn.to_string(),
    }
}

async fn page(user: Authed, State(state): State<ConsoleState>) -> Response {
    match load(&state).await {
        Ok(d) => layout::page(
            &user,
            "Fleet overview",
            "/console",
            html! { div #overview data-live="/console/fragments/overview" { (render(&state, &d)) } },
        ),
        Err(e) => layout::registry_error(&user, e),
    }
}

async fn fragment(user: Authed, State(state): State<ConsoleState>) -> Response {
    match load(&state).await {
        Ok(d) => render(&state, &d).into_response(),
        Err(e) => layout::registry_error(&user, e),
    }
}
