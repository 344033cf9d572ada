//! The devices list: every core device with its health and last seen, and the registry's
//! other things.

use crate::ConsoleState;
use crate::layout::{self, badge};
use crate::session::{Authed, blocking};
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lichen_fleet_registry::{CoreDevice, PageRequest, Registry, Thing, ThingQuery};
use maud::{Markup, html};

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/devices", get(page))
        .route("/fragments/devices", get(fragment))
}

pub(crate) fn all_core_devices(r: &Registry) -> lichen_fleet_registry::Result<Vec<CoreDevice>> {
    let mut out = Vec::new();
    let mut page = PageRequest {
        token: None,
        size: Some(100),
    };
    loop {
        let p = r.list_core_devices(None, None, None, &page)?;
        out.extend(p.items);
        match p.next_token {
            Some(t) => page.token = Some(t),
            None => return Ok(out),
        }
    }
}

fn all_things(r: &Registry) -> lichen_fleet_registry::Result<Vec<Thing>> {
    let mut out = Vec::new();
    let mut page = PageRequest {
        token: None,
        size: Some(250),
    };
    loop {
        let p = r.list_things(&ThingQuery::default(), &page)?;
        out.extend(p.items);
        match p.next_token {
            Some(t) if out.len() < 5000 => page.token = Some(t),
            _ => return Ok(out),
        }
    }
}

/// Online/offline from the device endpoint's connection record.
pub(crate) fn presence_badge(d: &CoreDevice) -> Markup {
    match d.connected {
        Some(true) => badge("ONLINE"),
        Some(false) => badge("OFFLINE"),
        None => html! { span.muted { "never connected here" } },
    }
}

pub(crate) fn devices_table(devices: &[CoreDevice]) -> Markup {
    html! {
        @if devices.is_empty() {
            p.muted { "No core device has reported to this fleet yet." }
        } @else {
            table data-testid="devices-table" {
                thead { tr { th { "Device" } th { "Health" } th { "Connection" } th { "Last status" } th { "Last seen" } th { "Core" } } }
                tbody {
                    @for d in devices {
                        tr data-thing=(d.thing_name) data-status=(d.status) {
                            td data-label="Device" { a href={"/console/devices/" (d.thing_name)} { (d.thing_name) } }
                            td data-label="Health" {
                                (badge(&d.status))
                                @if let Some(r) = &d.status_reason { " " span.muted { (r) } }
                            }
                            td data-label="Connection" { (presence_badge(d)) }
                            td data-label="Last status" { (layout::when(d.last_status_update_ms)) }
                            td data-label="Last seen" {
                                @match (d.connected, d.last_disconnected_ms, d.last_connected_ms) {
                                    (Some(true), _, _) => "now",
                                    (_, Some(t), _) => (layout::when(t)),
                                    (_, None, Some(t)) => (layout::when(t)),
                                    _ => span.muted { "—" },
                                }
                            }
                            td data-label="Core" { (d.core_version.clone().unwrap_or_default()) " " span.muted { (d.platform.clone().unwrap_or_default()) } }
                        }
                    }
                }
            }
        }
    }
}

struct Data {
    devices: Vec<CoreDevice>,
    things: Vec<Thing>,
}

fn render(d: &Data) -> Markup {
    let others: Vec<&Thing> = d
        .things
        .iter()
        .filter(|t| !d.devices.iter().any(|c| c.thing_name == t.name))
        .collect();
    html! {
        h2 { "Core devices" }
        (devices_table(&d.devices))
        h2 { "Other things" }
        @if others.is_empty() {
            p.muted { "None." }
        } @else {
            table data-testid="things-table" {
                thead { tr { th { "Thing" } th { "Type" } th { "Attributes" } } }
                tbody {
                    @for t in others {
                        tr {
                            td data-label="Thing" { a href={"/console/devices/" (t.name)} { (t.name) } }
                            td data-label="Type" { (t.thing_type.clone().unwrap_or_default()) }
                            td data-label="Attributes" {
                                @for (k, v) in &t.attributes { code { (k) "=" (v) } " " }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn load(state: &ConsoleState) -> lichen_fleet_registry::Result<Data> {
    blocking(state, |r| {
        Ok(Data {
            devices: all_core_devices(r)?,
            things: all_things(r)?,
        })
    })
    .await
}

async fn page(user: Authed, State(state): State<ConsoleState>) -> Response {
    match load(&state).await {
        Ok(d) => layout::page(
            &user,
            "Devices",
            "/console/devices",
            html! { div data-live="/console/fragments/devices" { (render(&d)) } },
        ),
        Err(e) => layout::registry_error(&user, e),
    }
}

async fn fragment(user: Authed, State(state): State<ConsoleState>) -> Response {
    match load(&state).await {
        Ok(d) => render(&d).into_response(),
        Err(e) => layout::registry_error(&user, e),
    }
}
