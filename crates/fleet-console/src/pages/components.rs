//! Components and their versions: the list, a component's versions with the devices running
//! each, a version's page (status, platforms, the recipe as stored or converted to the other
//! format, its artifacts with URI, digest and size in the fleet's object store, the devices
//! running it), and publishing a version from a pasted or uploaded recipe ([`publish`]).
//!
//! Which device runs what comes from the core devices' last fleet status reports (installed
//! components), as ListInstalledComponents shows.

mod publish;

use crate::ConsoleState;
use crate::layout::{self, badge};
use crate::session::{Authed, blocking};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use lichen_fleet_api::greengrass::components::{
    detect_format, recipe_value, render, s3_uri, sorted_versions,
};
use lichen_fleet_registry::Role;
use lichen_fleet_registry::{ComponentVersion, InstalledComponent, PageRequest, Registry};
use maud::{Markup, html};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/components", get(list))
        .route("/components/{name}", get(component))
        .route("/components/{name}/versions/{version}", get(version))
        .route(
            "/components/upload.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    publish::UPLOAD_JS,
                )
            }),
        )
        .merge(publish::routes())
}

/// Each core device's installed components, by (component, version).
type Running = BTreeMap<(String, String), Vec<(String, InstalledComponent)>>;

fn running(r: &Registry) -> lichen_fleet_registry::Result<Running> {
    let mut out: Running = BTreeMap::new();
    for d in crate::pages::devices::all_core_devices(r)? {
        for c in r.installed_components(&d.thing_name)? {
            out.entry((c.name.clone(), c.version.clone()))
                .or_default()
                .push((d.thing_name.clone(), c));
        }
    }
    Ok(out)
}

fn all_names(r: &Registry) -> lichen_fleet_registry::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut page = PageRequest {
        token: None,
        size: Some(100),
    };
    loop {
        let p = r.list_component_names(&page)?;
        out.extend(p.items);
        match p.next_token {
            Some(t) if out.len() < 5000 => page.token = Some(t),
            _ => return Ok(out),
        }
    }
}

async fn list(user: Authed, State(state): State<ConsoleState>) -> Response {
    let loaded = blocking(&state, |r| {
        let mut rows = Vec::new();
        for name in all_names(r)? {
            let versions = sorted_versions(r.component_versions(&name)?);
            rows.push((name, versions));
        }
        Ok((rows, running(r)?))
    })
    .await;
    let (rows, running) = match loaded {
        Ok(x) => x,
        Err(e) => return layout::registry_error(&user, e),
    };
    let devices_on = |name: &str| {
        running
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, d)| d.len())
            .sum::<usize>()
    };
    let body = html! {
        (crate::pages::deployments::style_link())
        @if user.can(Role::Operator) {
            p { a.button #publish-component href="/console/components/publish" { "Publish a component version" } }
        }
        @if rows.is_empty() {
            p.muted { "No component is published in this fleet yet." }
        } @else {
            table data-testid="components-table" {
                thead { tr { th { "Component" } th { "Latest version" } th { "Versions" } th { "Description" } th { "Devices running it" } } }
                tbody {
                    @for (name, versions) in &rows {
                        @let latest = versions.first();
                        tr data-component=(name) {
                            td data-label="Component" { a href={"/console/components/" (name)} { (name) } }
                            td data-label="Latest version" {
                                @if let Some(v) = latest {
                                    a href={"/console/components/" (name) "/versions/" (v.version)} { (v.version) }
                                    " " (version_badge(&v.status))
                                }
                            }
                            td data-label="Versions" .num { (versions.len()) }
                            td data-label="Description" { (latest.and_then(|v| v.description.clone()).unwrap_or_default()) }
                            td data-label="Devices running it" .num { (devices_on(name)) }
                        }
                    }
                }
            }
        }
    };
    layout::page(&user, "Components", "/console/components", body)
}

fn devices_table(devices: &[(String, InstalledComponent)], testid: &str) -> Markup {
    html! {
        @if devices.is_empty() {
            p.muted { "No device reports running it." }
        } @else {
            table data-testid=(testid) {
                thead { tr { th { "Device" } th { "State" } th { "Root" } th { "Reported" } } }
                tbody {
                    @for (thing, c) in devices {
                        tr data-thing=(thing) {
                            td data-label="Device" { a href={"/console/devices/" (thing)} { (thing) } }
                            td data-label="State" { (badge(&c.lifecycle_state)) }
                            td data-label="Root" { @if c.is_root { "yes" } @else { "dependency" } }
                            td data-label="Reported" { (layout::when(c.last_reported_ms)) }
                        }
                    }
                }
            }
        }
    }
}

async fn component(
    user: Authed,
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
) -> Response {
    let n = name.clone();
    let loaded = blocking(&state, move |r| {
        Ok((sorted_versions(r.component_versions(&n)?), running(r)?))
    })
    .await;
    let (versions, running) = match loaded {
        Ok(x) => x,
        Err(e) => return layout::registry_error(&user, e),
    };
    if versions.is_empty() {
        return layout::error_page(
            Some(&user),
            StatusCode::NOT_FOUND,
            "No such component",
            &format!("No version of component {name} is published in this fleet."),
        );
    }
    let body = html! {
        (crate::pages::deployments::style_link())
        table data-testid="versions-table" {
            thead { tr { th { "Version" } th { "Status" } th { "Published" } th { "Publisher" } th { "Devices running it" } } }
            tbody {
                @for v in &versions {
                    @let on = running.get(&(name.clone(), v.version.clone())).map_or(0, Vec::len);
                    tr data-version=(v.version) {
                        td data-label="Version" { a href={"/console/components/" (name) "/versions/" (v.version)} { (v.version) } }
                        td data-label="Status" { (version_badge(&v.status)) }
                        td data-label="Published" { (layout::when(v.created_ms)) }
                        td data-label="Publisher" { (v.publisher.clone().unwrap_or_default()) }
                        td data-label="Devices running it" .num { (on) }
                    }
                }
            }
        }
        h2 { "Devices by version" }
        @for v in &versions {
            @if let Some(d) = running.get(&(name.clone(), v.version.clone())) {
                h3 { (v.version) }
                (devices_table(d, &format!("devices-{}", v.version)))
            }
        }
        @if versions.iter().all(|v| !running.contains_key(&(name.clone(), v.version.clone()))) {
            p.muted { "No device reports running any version of it." }
        }
    };
    layout::page(
        &user,
        &format!("Component {name}"),
        "/console/components",
        body,
    )
}

/// One artifact of a recipe, as listed on the version page.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Artifact {
    pub uri: String,
    pub digest: Option<String>,
    pub algorithm: Option<String>,
    pub unarchive: Option<String>,
    /// The platform of the manifest that lists it.
    pub platform: String,
}

fn get_ci<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Every manifest's artifacts (keys in any case, as recipes write them).
pub(crate) fn artifacts(recipe: &Value) -> Vec<Artifact> {
    let Some(root) = recipe.as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in get_ci(root, "Manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
    {
        let platform = get_ci(m, "Platform")
            .and_then(Value::as_object)
            .map(|p| {
                p.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("*")))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "any".into());
        for a in get_ci(m, "Artifacts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
        {
            let s = |k: &str| get_ci(a, k).and_then(Value::as_str).map(str::to_owned);
            out.push(Artifact {
                uri: s("Uri").unwrap_or_default(),
                digest: s("Digest"),
                algorithm: s("Algorithm"),
                unarchive: s("Unarchive"),
                platform: platform.clone(),
            });
        }
    }
    out
}

/// What the object store holds at an artifact's `s3://` URI: (size, SHA-256) or nothing.
type Found = Result<Option<(u64, String)>, String>;

#[derive(serde::Deserialize, Default)]
struct VersionQuery {
    format: Option<String>,
}

async fn version(
    user: Authed,
    State(state): State<ConsoleState>,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
) -> Response {
    let (n, v) = (name.clone(), version.clone());
    let objects = state.objects.clone();
    let loaded = blocking(&state, move |r| {
        let cv = r.component_version(&n, &v)?;
        let on = running(r)?
            .remove(&(n.clone(), v.clone()))
            .unwrap_or_default();
        // Sizes and digests of the stored objects (the object store reads files or asks the
        // external store: off the async threads, like the registry).
        let recipe = recipe_value(&cv.recipe, detect_format(&cv.recipe)).unwrap_or(Value::Null);
        let stored: Vec<(Artifact, Option<Found>)> = artifacts(&recipe)
            .into_iter()
            .map(|a| {
                let found = match (&objects, s3_uri(&a.uri)) {
                    (Some(o), Some((b, k))) => Some(o.digest(b, k).map_err(|e| e.to_string())),
                    _ => None,
                };
                (a, found)
            })
            .collect();
        Ok((cv, on, stored))
    })
    .await;
    let (cv, on, stored) = match loaded {
        Ok(x) => x,
        Err(e) => return layout::registry_error(&user, e),
    };
    let stored_format = detect_format(&cv.recipe);
    let want = q.format.as_deref().map(str::to_ascii_uppercase);
    let (shown_format, text) = match want.as_deref() {
        Some("JSON") if cv.recipe_format != "JSON" => (
            "JSON",
            recipe_value(&cv.recipe, stored_format)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| cv.recipe.clone()),
        ),
        Some("YAML") if cv.recipe_format != "YAML" => (
            "YAML",
            recipe_value(&cv.recipe, stored_format)
                .ok()
                .and_then(|v| render(&v, lichen_recipe::Format::Yaml).ok())
                .unwrap_or_else(|| cv.recipe.clone()),
        ),
        _ => (cv.recipe_format.as_str(), cv.recipe.clone()),
    };
    let other = if shown_format == "JSON" {
        "yaml"
    } else {
        "json"
    };
    let base = format!("/console/components/{name}/versions/{version}");
    let body = html! {
        (crate::pages::deployments::style_link())
        dl.facts data-testid="version-facts" {
            dt { "ARN" } dd { code { (state.registry.component_version_arn(&cv.name, &cv.version)) } }
            dt { "Status" } dd data-testid="version-status" { (version_badge(&cv.status)) }
            @if cv.status == "FAILED" {
                dt { "Why" } dd { (failure(&cv)) }
            }
            dt { "Published" } dd { (layout::when(cv.created_ms)) }
            dt { "Publisher" } dd { (cv.publisher.clone().unwrap_or_default()) }
            dt { "Description" } dd { (cv.description.clone().unwrap_or_default()) }
            dt { "Platforms" } dd { (platforms(&cv)) }
            dt { "Signed" } dd { @if cv.signature.is_some() { "yes (Ed25519)" } @else { "no" } }
        }
        @if user.can(Role::Operator) && cv.status == "DEPLOYABLE" {
            p {
                a.button #deploy-version href={"/console/deployments/new?component=" (urlencode(&cv.name)) "&version=" (urlencode(&cv.version))} {
                    "Deploy this version"
                }
            }
        }
        h2 { "Recipe" }
        p {
            "As stored (" (cv.recipe_format) "). "
            @if shown_format != cv.recipe_format { "Shown converted to " (shown_format) ". " a href=(base) { "Show as stored" } }
            @else { a href={(base) "?format=" (other)} { "Show as " (other.to_ascii_uppercase()) } }
        }
        pre data-testid="recipe" { code { (text) } }
        h2 { "Artifacts" }
        @if stored.is_empty() {
            p.muted { "The recipe lists no artifacts." }
        } @else {
            table data-testid="artifacts-table" {
                thead { tr { th { "URI" } th { "Digest" } th { "Size" } th { "Platform" } th { "Unarchive" } } }
                tbody {
                    @for (a, found) in &stored {
                        tr {
                            td data-label="URI" { code { (a.uri) } }
                            td data-label="Digest" {
                                @if let Some(d) = &a.digest { code.digest { (d) } " " span.muted { (a.algorithm.clone().unwrap_or_else(|| "SHA-256".into())) } }
                                @else { span.muted { "none" } }
                                @if let (Some(Ok(Some((_, sha)))), Some(d)) = (found, &a.digest) {
                                    @if sha == d { " " span class="badge ok" { "matches the stored object" } } @else { " " span class="badge bad" { "differs from the stored object" } }
                                }
                            }
                            td data-label="Size" {
                                @match found {
                                    Some(Ok(Some((size, _)))) => { (human_size(*size)) },
                                    Some(Ok(None)) => { span.badge.bad { "not in the object store" } },
                                    Some(Err(e)) => { span.muted { "object store: " (e) } },
                                    None => { span.muted { "not in this fleet's store" } },
                                }
                            }
                            td data-label="Platform" { (a.platform) }
                            td data-label="Unarchive" { (a.unarchive.clone().unwrap_or_else(|| "NONE".into())) }
                        }
                    }
                }
            }
        }
        h2 { "Devices running this version" }
        (devices_table(&on, "version-devices"))
    };
    layout::page(
        &user,
        &format!("{} {}", cv.name, cv.version),
        "/console/components",
        body,
    )
}

/// A component version's status (DEPLOYABLE reads as good, FAILED as bad).
fn version_badge(status: &str) -> Markup {
    match status {
        "DEPLOYABLE" => html! { span class="badge ok" { (status) } },
        other => badge(other),
    }
}

/// The reasons a FAILED version gives (one per artifact).
fn failure(cv: &ComponentVersion) -> Markup {
    let errors: Map<String, Value> = serde_json::from_str(&cv.message).unwrap_or_default();
    html! {
        @if errors.is_empty() { (cv.message) }
        ul { @for (uri, why) in &errors { li { code { (uri) } ": " (why.as_str().unwrap_or_default()) } } }
    }
}

fn platforms(cv: &ComponentVersion) -> String {
    let p: Vec<Value> = serde_json::from_str(&cv.platforms).unwrap_or_default();
    let names: Vec<String> = p
        .iter()
        .map(|p| {
            let attrs = p["attributes"]
                .as_object()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("*")))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            match p["name"].as_str() {
                Some(n) if !attrs.is_empty() => format!("{n} ({attrs})"),
                Some(n) => n.to_string(),
                None => attrs,
            }
        })
        .collect();
    if names.is_empty() {
        "any".into()
    } else {
        names.join("; ")
    }
}

pub(crate) fn human_size(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|v| v.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn artifacts_are_read_in_any_key_case_with_their_platform() {
        let r = json!({"Manifests": [
            {"Platform": {"os": "linux"}, "Artifacts": [
                {"URI": "s3://b/app.sh", "Digest": "abc=", "Algorithm": "SHA-256"},
                {"uri": "docker:alpine", "unarchive": "NONE"}]},
            {"Artifacts": [{"Uri": "s3://b/x.zip", "Unarchive": "ZIP"}]}]});
        let a = artifacts(&r);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].uri, "s3://b/app.sh");
        assert_eq!(a[0].digest.as_deref(), Some("abc="));
        assert_eq!(a[0].platform, "os=linux");
        assert_eq!(a[1].uri, "docker:alpine");
        assert_eq!(a[2].unarchive.as_deref(), Some("ZIP"));
        assert_eq!(a[2].platform, "any");
        assert!(artifacts(&json!("not a recipe")).is_empty());
    }

    #[test]
    fn sizes_and_query_values_read_well() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(2048), "2.0 KiB");
        assert_eq!(urlencode("com.example.A b&c"), "com.example.A+b%26c");
    }
}
