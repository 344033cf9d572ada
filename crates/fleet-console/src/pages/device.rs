//! One device: its health, connection and last status with their age, its components with
//! versions and states, its groups and deployments, its shadows (desired state editable by
//! operators, see [`super::shadows`]), its recent log lines and CPU/memory charts. The status,
//! components, shadows and logs refresh live (`/fragments/devices/{thing}`).

use super::devices::presence_badge;
use super::shadows::{self, ShadowView};
use crate::ConsoleState;
use crate::charts::{self, Series};
use crate::layout::{self, badge, now_ms};
use crate::session::{Authed, blocking};
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lichen_fleet_registry::{
    CoreDevice, EffectiveDeployment, InstalledComponent, LogEvent, PageRequest, Registry,
    RegistryError, Thing,
};
use maud::{Markup, html};

/// Log lines shown on a device's page.
const LOG_LINES: usize = 60;

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/devices/{thing}", get(page))
        .route("/fragments/devices/{thing}", get(fragment))
        .merge(shadows::routes())
}

pub(crate) struct Data {
    thing: Option<Thing>,
    core: Option<CoreDevice>,
    components: Vec<InstalledComponent>,
    groups: Vec<String>,
    deployments: Vec<EffectiveDeployment>,
    logs: Vec<(String, LogEvent)>,
    shadows: Vec<ShadowView>,
}

fn optional<T>(r: Result<T, RegistryError>) -> Result<Option<T>, RegistryError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(RegistryError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The thing's recent log lines over every Greengrass log group (the core's log manager
/// writes stream `/<yyyy/MM/dd>/thing/<thing>` in each component's group: today's and
/// yesterday's streams are read, by name), oldest first.
pub(crate) fn recent_logs(
    r: &Registry,
    thing: &str,
    limit: usize,
) -> Result<Vec<(String, LogEvent)>, RegistryError> {
    let thing = thing.replace(':', "+");
    let now = time::OffsetDateTime::now_utc();
    let streams: Vec<String> = [now - time::Duration::days(1), now]
        .iter()
        .map(|d| {
            format!(
                "/{:04}/{:02}/{:02}/thing/{thing}",
                d.year(),
                d.month() as u8,
                d.day()
            )
        })
        .collect();
    let mut out: Vec<(String, LogEvent)> = Vec::new();
    let mut after = String::new();
    loop {
        let groups = r.list_log_groups("/aws/greengrass/", &after, 100)?;
        for g in &groups {
            let component = g.name.rsplit('/').next().unwrap_or(&g.name).to_string();
            for s in &streams {
                let events =
                    match r.get_log_events(&g.name, s, None, None, None, Some(i64::MAX), limit) {
                        Ok(e) => e,
                        Err(RegistryError::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    };
                out.extend(events.into_iter().map(|e| (component.clone(), e)));
            }
        }
        match groups.last() {
            Some(g) if groups.len() == 100 => after = g.name.clone(),
            _ => break,
        }
    }
    out.sort_by_key(|(_, e)| (e.timestamp_ms, e.seq));
    let skip = out.len().saturating_sub(limit);
    Ok(out.split_off(skip))
}

async fn load(state: &ConsoleState, thing: &str) -> Result<Data, RegistryError> {
    let t = thing.to_string();
    let mut d = blocking(state, move |r| {
        let thing = optional(r.describe_thing(&t))?;
        let core = optional(r.get_core_device(&t))?;
        let components = if core.is_some() {
            r.installed_components(&t)?
        } else {
            Vec::new()
        };
        let groups = r
            .list_groups_for_thing(
                &t,
                &PageRequest {
                    token: None,
                    size: Some(100),
                },
            )
            .map(|p| p.items.into_iter().map(|(n, _)| n).collect())
            .unwrap_or_default();
        let deployments = r
            .list_effective_deployments(
                &t,
                &PageRequest {
                    token: None,
                    size: Some(50),
                },
            )
            .map(|p| p.items)
            .unwrap_or_default();
        let logs = recent_logs(r, &t, LOG_LINES)?;
        Ok(Data {
            thing,
            core,
            components,
            groups,
            deployments,
            logs,
            shadows: Vec::new(),
        })
    })
    .await?;
    if d.thing.is_none() && d.core.is_none() {
        return Err(RegistryError::NotFound {
            kind: "device",
            name: thing.to_string(),
        });
    }
    d.shadows = shadows::load(state, thing).await;
    Ok(d)
}

fn status(d: &Data) -> Markup {
    html! {
        @if let Some(c) = &d.core {
            dl.facts data-testid="device-status" {
                dt { "Health" }
                dd data-testid="device-health" {
                    (badge(&c.status))
                    @if let Some(r) = &c.status_reason { " " span.muted { (r) } }
                }
                dt { "Connection" }
                dd data-testid="device-connection" {
                    (presence_badge(c))
                    @if let (Some(false), Some(t)) = (c.connected, c.last_disconnected_ms) {
                        " since " (layout::when(t))
                        @if let Some(r) = &c.disconnect_reason { " " span.muted { "(" (r) ")" } }
                    }
                }
                dt { "Last status" }
                dd { (badge(&c.reported_status)) " reported " (layout::when(c.last_status_update_ms)) }
                dt { "Core" }
                dd {
                    (c.core_version.clone().unwrap_or_default()) " on "
                    (c.platform.clone().unwrap_or_default()) "/" (c.architecture.clone().unwrap_or_default())
                    @if let Some(rt) = &c.runtime { " (" (rt) ")" }
                }
                dt { "Groups" }
                dd {
                    @if d.groups.is_empty() { span.muted { "none" } }
                    @for g in &d.groups { a href={"/console/groups/" (g)} { (g) } " " }
                }
            }
        } @else {
            p.muted { "This thing is not a Greengrass core device (it never sent a fleet status)." }
        }
    }
}

fn components(d: &Data) -> Markup {
    html! {
        @if d.components.is_empty() {
            p.muted { "No component reported." }
        } @else {
            table data-testid="components-table" {
                thead { tr { th { "Component" } th { "Version" } th { "State" } th { "Since" } th { "Root" } } }
                tbody {
                    @for c in &d.components {
                        tr data-component=(c.name) {
                            td data-label="Component" { a href={"/console/components/" (c.name)} { (c.name) } }
                            td data-label="Version" { (c.version) }
                            td data-label="State" {
                                (badge(&c.lifecycle_state))
                                @if let Some(s) = &c.state_details { " " span.muted { (s) } }
                                @for code in &c.status_codes { " " code { (code) } }
                            }
                            td data-label="Since" { (layout::when(c.last_status_change_ms)) }
                            td data-label="Root" { @if c.is_root { "yes" } @else { "no" } }
                        }
                    }
                }
            }
        }
    }
}

fn deployments(d: &Data) -> Markup {
    html! {
        @if d.deployments.is_empty() {
            p.muted { "No deployment has targeted this device." }
        } @else {
            table data-testid="device-deployments-table" {
                thead { tr { th { "Deployment" } th { "Target" } th { "Status" } th { "Updated" } } }
                tbody {
                    @for e in &d.deployments {
                        tr {
                            td data-label="Deployment" {
                                a href={"/console/deployments/" (e.deployment_id)} {
                                    (e.deployment_name.clone().unwrap_or_else(|| e.deployment_id.clone()))
                                }
                            }
                            td data-label="Target" { (super::overview::target_name(&e.target_arn)) }
                            td data-label="Status" {
                                (badge(&e.execution_status))
                                @if let Some(r) = &e.reason { " " span.muted { (r) } }
                            }
                            td data-label="Updated" { (layout::when(e.created_ms)) }
                        }
                    }
                }
            }
        }
    }
}

fn logs(d: &Data) -> Markup {
    html! {
        @if d.logs.is_empty() {
            p.muted { "No log lines from this device (deploy aws.greengrass.LogManager to upload them)." }
        } @else {
            pre.logs data-testid="device-logs" tabindex="0" aria-label="Recent log lines" {
                @for (component, e) in &d.logs {
                    (fmt_time(e.timestamp_ms)) " [" (component) "] " (e.message.trim_end()) "\n"
                }
            }
        }
    }
}

fn fmt_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn live(state: &ConsoleState, thing: &str, d: &Data) -> Markup {
    let samples = state.telemetry.device(thing);
    let now = now_ms();
    let cpu = [Series {
        name: "CPU %",
        color: charts::BLUE,
        points: samples
            .iter()
            .filter_map(|s| Some((s.at_ms, s.cpu?)))
            .collect(),
    }];
    let mem = [Series {
        name: "memory MiB",
        color: charts::GREEN,
        points: samples
            .iter()
            .filter_map(|s| Some((s.at_ms, s.mem_mib?)))
            .collect(),
    }];
    html! {
        section aria-labelledby="status-h" {
            h2 #status-h { "Status" }
            (status(d))
        }
        section aria-labelledby="components-h" {
            h2 #components-h { "Components" }
            (components(d))
        }
        section aria-labelledby="metrics-h" {
            h2 #metrics-h { "CPU and memory" }
            div.charts {
                (charts::time_chart("cpu-chart", "CPU use", "percent", &cpu, now))
                (charts::time_chart("mem-chart", "Memory in use", "MiB", &mem, now))
            }
            @if samples.is_empty() {
                p.muted { "Charts fill in as the device sends telemetry (aws.greengrass.telemetry.NucleusEmitter with mqttTopic "
                    code { "$aws/things/" (thing) "/lichen/telemetry" } ")." }
            }
        }
        section aria-labelledby="shadow-docs-h" {
            h2 #shadow-docs-h { "Shadows" }
            (shadows::documents(&d.shadows))
        }
        section aria-labelledby="logs-h" {
            h2 #logs-h { "Recent logs" }
            (logs(d))
        }
    }
}

async fn page(
    user: Authed,
    State(state): State<ConsoleState>,
    Path(thing): Path<String>,
) -> Response {
    match load(&state, &thing).await {
        Ok(d) => {
            let body = html! {
                div data-live={"/console/fragments/devices/" (thing)} data-interval="3000" {
                    (live(&state, &thing, &d))
                }
                section aria-labelledby="deployments-h" {
                    h2 #deployments-h { "Deployments" }
                    (deployments(&d))
                }
                (shadows::edit_forms(&user, &thing, &d.shadows))
                @if let Some(t) = &d.thing {
                    section aria-labelledby="thing-h" {
                        h2 #thing-h { "Registry" }
                        dl.facts {
                            dt { "ARN" } dd { code { (t.arn) } }
                            dt { "Type" } dd { (t.thing_type.clone().unwrap_or_else(|| "—".into())) }
                            @for (k, v) in &t.attributes { dt { (k) } dd { (v) } }
                        }
                    }
                }
            };
            layout::page(&user, &thing, "/console/devices", body)
        }
        Err(e) => layout::registry_error(&user, e),
    }
}

async fn fragment(
    user: Authed,
    State(state): State<ConsoleState>,
    Path(thing): Path<String>,
) -> Response {
    match load(&state, &thing).await {
        Ok(d) => live(&state, &thing, &d).into_response(),
        Err(e) => layout::registry_error(&user, e),
    }
}
