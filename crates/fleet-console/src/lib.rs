//! The fleet's web console, served by `lichen fleet serve` under `/console` on its API listener:
//! fleet overview, devices (components, status, shadows, logs, CPU/memory charts), thing groups,
//! certificates and provisioning templates, the audit log, users; deployments and components.
//!
//! How it is built, and why:
//! - **Server-rendered HTML with [`maud`].** Markup is Rust syntax checked at compile time and
//!   every interpolation is HTML-escaped, so a thing name or a shadow document can never inject
//!   markup; no template files to ship or to find at run time. (askama was the alternative:
//!   also compile-time checked, but with templates in separate files and a second syntax.)
//! - **No front-end build step.** The CSS and the one small script are files in this crate
//!   (`assets/`), embedded with `include_str!` and served with the pages. Pages work without
//!   JavaScript; the script only refreshes the parts of a page marked `data-live` by fetching
//!   their HTML fragment again (polling, not Server-Sent Events: device health also changes by
//!   the clock — a status going stale — which no event announces, and a fragment request is an
//!   ordinary authenticated GET that works through any proxy).
//! - **Charts are SVG drawn on the server with `plotters`** (its SVG backend only), inlined in
//!   the page: no charting JavaScript to vendor, and a chart is readable without scripts.
//! - **Sessions** are cookies (`HttpOnly; Secure; SameSite=Strict; Path=/console`) naming a
//!   server-side session; every form POST carries the session's CSRF token, checked before the
//!   handler runs ([`session::Posted`]); roles are checked on the server for every change,
//!   whatever the page showed (viewer: read only; operator: fleet operations; admin: users,
//!   certificates' CA side and provisioning templates).
//!
//! Architecture invariant: no page changes fleet state except through a POST that carried the
//! session's CSRF token and whose user's role allows it; every change goes through the
//! registry or a fleet service (which audit it), never around them.
//! Architecture invariant: pages only read; a page's HTML escapes every value it shows.

mod charts;
mod layout;
mod pages;
mod session;
pub mod telemetry;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use lichen_fleet_registry::Registry;
use std::sync::Arc;

pub use lichen_fleet_registry::{Role, Session, User};
pub use telemetry::Telemetry;

/// Where the console is mounted on the fleet's API listener.
pub const PREFIX: &str = "/console";

/// What the pages read and act on: the registry and handles to the fleet's services. Cheap to
/// clone (every field is a shared handle).
#[derive(Clone)]
pub struct ConsoleState {
    pub registry: Arc<Registry>,
    pub shadows: Option<lichen_fleet_shadow::ShadowService>,
    pub deployments: Option<Arc<lichen_fleet_api::greengrass::Deployments>>,
    pub jobs: Option<lichen_fleet_jobs::JobsService>,
    pub objects: Option<Arc<lichen_fleet_api::s3::ObjectStore>>,
    /// Recent device telemetry and fleet health, kept in memory for the charts.
    pub telemetry: Arc<Telemetry>,
    /// Whether session cookies carry `Secure` (on by default; browsers send them to
    /// `http://127.0.0.1` and `http://localhost` too, which count as secure origins).
    pub secure_cookies: bool,
}

impl ConsoleState {
    pub fn new(registry: Arc<Registry>) -> Self {
        ConsoleState {
            registry,
            shadows: None,
            deployments: None,
            jobs: None,
            objects: None,
            telemetry: Arc::new(Telemetry::default()),
            secure_cookies: true,
        }
    }
}

/// The console's routes, all under [`PREFIX`]; merge it with the API's router (it has no
/// fallback of its own outside the prefix).
pub fn router(state: ConsoleState) -> Router {
    let inner = pages::routes()
        .merge(layout::asset_routes())
        .fallback(layout::not_found)
        .layer(axum::middleware::map_response(security_headers));
    Router::new()
        .nest(PREFIX, inner)
        .route(
            "/console/",
            axum::routing::get(|| async { axum::response::Redirect::to(PREFIX) }),
        )
        .with_state(state)
}

/// Starts what keeps the console's in-memory history (fleet health samples): call once from
/// inside the runtime.
pub fn start_background(state: &ConsoleState) {
    telemetry::start_health_sampler(state.registry.clone(), state.telemetry.clone());
}

async fn security_headers(mut resp: axum::response::Response) -> axum::response::Response {
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::CACHE_CONTROL, "no-store");
    resp
}

#[cfg(test)]
mod tests;
