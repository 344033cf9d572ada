//! Console users (administrators only): create, change role, delete.

use super::groups::who;
use crate::ConsoleState;
use crate::layout::{self, csrf};
use crate::session::{Authed, Posted, blocking, redirect_with_flash};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use lichen_fleet_registry::Role;
use maud::html;

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/users", get(page).post(create))
        .route("/users/{name}/role", post(set_role))
        .route("/users/{name}/delete", post(delete))
}

const ROLES: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

async fn page(user: Authed, State(state): State<ConsoleState>) -> Response {
    if let Err(r) = user.require(Role::Admin) {
        return r;
    }
    let users = match blocking(&state, |r| r.list_users()).await {
        Ok(u) => u,
        Err(e) => return layout::registry_error(&user, e),
    };
    let body = html! {
        table data-testid="users-table" {
            thead { tr { th { "User" } th { "Role" } th { "Created" } th { "Actions" } } }
            tbody {
                @for u in &users {
                    tr {
                        td data-label="User" { (u.name) }
                        td data-label="Role" {
                            form.inline method="post" action={"/console/users/" (u.name) "/role"} {
                                (csrf(&user))
                                label.visually-hidden for={"role-" (u.name)} { "Role of " (u.name) }
                                select id={"role-" (u.name)} name="role" {
                                    @for r in ROLES { option value=(r.as_str()) selected[r == u.role] { (r.as_str()) } }
                                }
                                button.secondary type="submit" { "Set role" }
                            }
                        }
                        td data-label="Created" { (layout::when(u.created_at)) }
                        td data-label="Actions" {
                            @if u.name != user.session.user.name {
                                form method="post" action={"/console/users/" (u.name) "/delete"} data-confirm={"Delete user " (u.name) "?"} {
                                    (csrf(&user))
                                    button.danger type="submit" aria-label={"Delete user " (u.name)} { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Add a user" }
        form.stack method="post" action="/console/users" data-testid="create-user-form" {
            (csrf(&user))
            div { label for="new-name" { "User name" } input #new-name type="text" name="name" required autocomplete="off"; }
            div { label for="new-password" { "Password (8 characters or more)" } input #new-password type="password" name="password" required minlength="8" autocomplete="new-password"; }
            div {
                label for="new-role" { "Role" }
                select #new-role name="role" { @for r in ROLES { option value=(r.as_str()) { (r.as_str()) } } }
            }
            div { button #create-user type="submit" { "Add user" } }
        }
    };
    layout::page(&user, "Users", "/console/users", body)
}

#[derive(serde::Deserialize)]
pub(crate) struct NewUser {
    name: String,
    password: String,
    role: String,
}

fn bad_role(user: &Authed, role: &str) -> Response {
    layout::error_page(
        Some(user),
        StatusCode::BAD_REQUEST,
        "User not changed",
        &format!("Field \"role\" is {role:?}: use viewer, operator or admin."),
    )
}

async fn create(State(state): State<ConsoleState>, p: Posted<NewUser>) -> Response {
    if let Err(r) = p.user.require(Role::Admin) {
        return r;
    }
    let Ok(role) = p.form.role.parse::<Role>() else {
        return bad_role(&p.user, &p.form.role);
    };
    let who = who(&p.user);
    let (name, password) = (p.form.name.trim().to_string(), p.form.password);
    let n = name.clone();
    match blocking(&state, move |r| r.create_user(&who, &n, &password, role)).await {
        Ok(_) => redirect_with_flash(
            &state,
            "/console/users",
            &format!("User {name} ({}) added.", role.as_str()),
        ),
        Err(e) => layout::registry_error(&p.user, e),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct RoleForm {
    role: String,
}

async fn set_role(
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
    p: Posted<RoleForm>,
) -> Response {
    if let Err(r) = p.user.require(Role::Admin) {
        return r;
    }
    let Ok(role) = p.form.role.parse::<Role>() else {
        return bad_role(&p.user, &p.form.role);
    };
    let who = who(&p.user);
    let n = name.clone();
    match blocking(&state, move |r| r.set_user_role(&who, &n, role)).await {
        Ok(()) => redirect_with_flash(
            &state,
            "/console/users",
            &format!("{name} is now {}.", role.as_str()),
        ),
        Err(e) => layout::registry_error(&p.user, e),
    }
}

async fn delete(
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
    p: Posted<super::CsrfOnly>,
) -> Response {
    if let Err(r) = p.user.require(Role::Admin) {
        return r;
    }
    if name == p.user.session.user.name {
        return layout::error_page(
            Some(&p.user),
            StatusCode::BAD_REQUEST,
            "User not deleted",
            "You cannot delete yourself.",
        );
    }
    let who = who(&p.user);
    let n = name.clone();
    match blocking(&state, move |r| r.delete_user(&who, &n)).await {
        Ok(()) => redirect_with_flash(&state, "/console/users", &format!("User {name} deleted.")),
        Err(e) => layout::registry_error(&p.user, e),
    }
}
