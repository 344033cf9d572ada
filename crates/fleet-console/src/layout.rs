//! The page frame (skip link, header, navigation, main landmark, flash message), error pages,
//! the embedded assets, and small formatting helpers shared by the pages.

use crate::ConsoleState;
use crate::session::{Authed, FLASH_COOKIE};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lichen_fleet_registry::Role;
use maud::{DOCTYPE, Markup, html};

const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");

pub(crate) fn asset_routes() -> Router<ConsoleState> {
    Router::new()
        .route(
            "/assets/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
        .route(
            "/assets/console.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    JS,
                )
            }),
        )
}

/// The navigation: (path, label, role needed to see it).
const NAV: &[(&str, &str, Role)] = &[
    ("/console", "Overview", Role::Viewer),
    ("/console/devices", "Devices", Role::Viewer),
    ("/console/groups", "Groups", Role::Viewer),
    ("/console/deployments", "Deployments", Role::Viewer),
    ("/console/components", "Components", Role::Viewer),
    ("/console/certificates", "Certificates", Role::Viewer),
    ("/console/audit", "Audit log", Role::Viewer),
    ("/console/users", "Users", Role::Admin),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Lichen fleet" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

/// A full page for a signed-in user; `active` is the nav entry's path.
pub(crate) fn page(user: &Authed, title: &str, active: &str, body: Markup) -> Response {
    let html = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console" { "Lichen fleet" }
                    nav aria-label="Main" {
                        ul {
                            @for (href, label, role) in NAV {
                                @if user.can(*role) {
                                    li { a href=(href) aria-current=[(*href == active).then_some("page")] { (label) } }
                                }
                            }
                        }
                    }
                    div.who {
                        span { (user.session.user.name) " " span.role { (user.role().as_str()) } }
                        form method="post" action="/console/logout" {
                            (csrf(user))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    @if let Some(f) = &user.flash {
                        p.flash role="status" { (f) }
                    }
                    (body)
                }
            }
        }
    };
    let mut r = html.into_response();
    if user.flash.is_some() {
        r.headers_mut()
            .append(header::SET_COOKIE, set_cookie_clear(FLASH_COOKIE));
    }
    r
}

fn set_cookie_clear(name: &str) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&format!(
        "{name}=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0"
    ))
    .unwrap_or_else(|_| axum::http::HeaderValue::from_static(""))
}

/// A page without the signed-in frame (sign-in, errors before sign-in).
pub(crate) fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                a.skip href="#main" { "Skip to content" }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub(crate) fn error_page(
    user: Option<&Authed>,
    status: StatusCode,
    title: &str,
    message: &str,
) -> Response {
    let body = html! { p.flash.error role="alert" { (message) } p { a href="/console" { "Back to the overview" } } };
    let mut r = match user {
        Some(u) => page(u, title, "", body),
        None => bare_page(title, body).into_response(),
    };
    *r.status_mut() = status;
    r
}

pub(crate) async fn not_found(_: State<ConsoleState>) -> Response {
    (
        StatusCode::NOT_FOUND,
        bare_page(
            "Not found",
            html! { p { "No console page is here. " a href="/console" { "Go to the overview" } "." } },
        ),
    )
        .into_response()
}

/// A registry failure as a page (404 for what does not exist).
pub(crate) fn registry_error(user: &Authed, e: lichen_fleet_registry::RegistryError) -> Response {
    use lichen_fleet_registry::RegistryError as E;
    let status = match &e {
        E::NotFound { .. } => StatusCode::NOT_FOUND,
        E::Invalid(_) | E::MalformedPolicy(_) => StatusCode::BAD_REQUEST,
        E::AlreadyExists { .. }
        | E::VersionConflict(_)
        | E::DeleteConflict(_)
        | E::CertificateState(_) => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error_page(
        Some(user),
        status,
        "Could not load this page",
        &e.to_string(),
    )
}

/// The hidden CSRF field every form carries.
pub(crate) fn csrf(user: &Authed) -> Markup {
    html! { input type="hidden" name="csrf" value=(user.session.csrf_token); }
}

pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// "42 s ago", "5 min ago", "3 h ago", "2 d ago".
pub(crate) fn age(at_ms: i64) -> String {
    let s = ((now_ms() - at_ms) / 1000).max(0);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// UTC time, to the second, in a `<time>` element with the age as its text.
pub(crate) fn when(at_ms: i64) -> Markup {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(at_ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let iso = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    html! { time datetime=(iso) title=(iso) { (age(at_ms)) } }
}

/// A status word as a badge whose colour class follows its meaning (the word is always shown:
/// colour is never the only signal).
pub(crate) fn badge(status: &str) -> Markup {
    let class = match status {
        "HEALTHY" | "RUNNING" | "FINISHED" | "SUCCEEDED" | "COMPLETED" | "ACTIVE" | "ONLINE"
        | "IN_SYNC" => "ok",
        "UNHEALTHY" | "BROKEN" | "ERRORED" | "FAILED" | "REVOKED" | "OFFLINE" | "REJECTED"
        | "TIMED_OUT" | "ABORTED" => "bad",
        "IN_PROGRESS" | "QUEUED" | "INSTALLED" | "STARTING" | "STOPPING" | "NEW"
        | "PENDING_ACTIVATION" | "INACTIVE" | "CANCELED" => "warn",
        _ => "neutral",
    };
    html! { span class={"badge " (class)} { (status) } }
}
