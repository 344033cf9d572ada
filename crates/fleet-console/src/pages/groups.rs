//! Thing groups: static (hierarchy, membership edited by operators) and dynamic (membership
//! follows a query, kept current by the registry).

use crate::ConsoleState;
use crate::layout::{self, csrf};
use crate::session::{Authed, Posted, blocking, redirect_with_flash};
use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use lichen_fleet_registry::Role;
use lichen_fleet_registry::{PageRequest, Registry, RegistryError, ThingGroup};
use maud::html;

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/groups", get(list))
        .route("/groups/{name}", get(one))
        .route("/groups/{name}/members", post(add_member))
        .route("/groups/{name}/members/remove", post(remove_member))
}

fn members(r: &Registry, group: &str, recursive: bool) -> Result<Vec<String>, RegistryError> {
    let mut out = Vec::new();
    let mut page = PageRequest {
        token: None,
        size: Some(250),
    };
    loop {
        let p = r.list_things_in_group(group, recursive, &page)?;
        out.extend(p.items);
        match p.next_token {
            Some(t) if out.len() < 10_000 => page.token = Some(t),
            _ => return Ok(out),
        }
    }
}

fn all_groups(r: &Registry) -> Result<Vec<(ThingGroup, usize)>, RegistryError> {
    let mut names = Vec::new();
    let mut page = PageRequest {
        token: None,
        size: Some(250),
    };
    loop {
        let p = r.list_thing_groups(None, None, true, &page)?;
        names.extend(p.items.into_iter().map(|(n, _)| n));
        match p.next_token {
            Some(t) => page.token = Some(t),
            None => break,
        }
    }
    names
        .iter()
        .map(|n| Ok((r.describe_thing_group(n)?, members(r, n, false)?.len())))
        .collect()
}

async fn list(user: Authed, State(state): State<ConsoleState>) -> Response {
    let groups = match blocking(&state, all_groups).await {
        Ok(g) => g,
        Err(e) => return layout::registry_error(&user, e),
    };
    let body = html! {
        @if groups.is_empty() {
            p.muted { "No thing group yet (create them with " code { "aws iot create-thing-group" } " or " code { "create-dynamic-thing-group" } ")." }
        } @else {
            table data-testid="groups-table" {
                thead { tr { th { "Group" } th { "Kind" } th { "Parent" } th { "Members" } th { "Query" } } }
                tbody {
                    @for (g, n) in &groups {
                        tr {
                            td data-label="Group" { a href={"/console/groups/" (g.name)} { (g.name) } }
                            td data-label="Kind" { @if g.query.is_some() { "dynamic" } @else { "static" } }
                            td data-label="Parent" { (g.parent.clone().unwrap_or_default()) }
                            td data-label="Members" .num { (n) }
                            td data-label="Query" { @if let Some(q) = &g.query { code { (q) } } }
                        }
                    }
                }
            }
        }
    };
    layout::page(&user, "Thing groups", "/console/groups", body)
}

async fn one(
    user: Authed,
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
) -> Response {
    let n = name.clone();
    let loaded = blocking(&state, move |r| {
        let g = r.describe_thing_group(&n)?;
        let direct = members(r, &n, false)?;
        let all = members(r, &n, true)?;
        Ok((g, direct, all))
    })
    .await;
    let (g, direct, all) = match loaded {
        Ok(v) => v,
        Err(e) => return layout::registry_error(&user, e),
    };
    let editable = g.query.is_none() && user.can(Role::Operator);
    let body = html! {
        dl.facts {
            dt { "Kind" } dd { @if g.query.is_some() { "dynamic" } @else { "static" } }
            @if let Some(q) = &g.query { dt { "Query" } dd { code { (q) } } }
            @if let Some(d) = &g.description { dt { "Description" } dd { (d) } }
            dt { "Path" } dd {
                @for (p, _) in &g.root_to_parent { a href={"/console/groups/" (p)} { (p) } " / " }
                (g.name)
            }
            dt { "ARN" } dd { code { (g.arn) } }
        }
        h2 { "Members" }
        @if direct.is_empty() {
            p.muted { "No thing is directly in this group." }
        } @else {
            table data-testid="members-table" {
                thead { tr { th { "Thing" } @if editable { th { span.visually-hidden { "Actions" } } } } }
                tbody {
                    @for t in &direct {
                        tr {
                            td data-label="Thing" { a href={"/console/devices/" (t)} { (t) } }
                            @if editable {
                                td data-label="Actions" {
                                    form method="post" action={"/console/groups/" (g.name) "/members/remove"} {
                                        (csrf(&user))
                                        input type="hidden" name="thing" value=(t);
                                        button.secondary type="submit" aria-label={"Remove " (t) " from " (g.name)} { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if all.len() > direct.len() {
            p { (all.len()) " things including child groups' members." }
        }
        @if editable {
            h2 { "Add a thing" }
            form.inline method="post" action={"/console/groups/" (g.name) "/members"} data-testid="add-member-form" {
                (csrf(&user))
                div {
                    label for="thing" { "Thing name" }
                    input #thing type="text" name="thing" required;
                }
                button type="submit" { "Add to group" }
            }
        }
    };
    layout::page(&user, &format!("Group {}", g.name), "/console/groups", body)
}

#[derive(serde::Deserialize)]
pub(crate) struct MemberForm {
    thing: String,
}

/// The audit log's `who` for a change made in the console.
pub(crate) fn who(user: &Authed) -> String {
    format!("console:{}", user.session.user.name)
}

async fn change_member(
    state: ConsoleState,
    group: String,
    p: Posted<MemberForm>,
    add: bool,
) -> Response {
    if let Err(r) = p.user.require(Role::Operator) {
        return r;
    }
    let who = who(&p.user);
    let (g, t) = (group.clone(), p.form.thing.trim().to_string());
    let t2 = t.clone();
    let done = blocking(&state, move |r| {
        if add {
            r.add_thing_to_group(&who, &g, &t2)
        } else {
            r.remove_thing_from_group(&who, &g, &t2)
        }
    })
    .await;
    match done {
        Ok(()) => redirect_with_flash(
            &state,
            &format!("/console/groups/{group}"),
            &if add {
                format!("{t} is now in {group}.")
            } else {
                format!("{t} is no longer in {group}.")
            },
        ),
        Err(e) => layout::registry_error(&p.user, e),
    }
}

async fn add_member(
    State(state): State<ConsoleState>,
    Path(group): Path<String>,
    p: Posted<MemberForm>,
) -> Response {
    change_member(state, group, p, true).await
}

async fn remove_member(
    State(state): State<ConsoleState>,
    Path(group): Path<String>,
    p: Posted<MemberForm>,
) -> Response {
    change_member(state, group, p, false).await
}
