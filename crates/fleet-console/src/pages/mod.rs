//! The console's pages: one module per area, each exposing
//! `pub(crate) fn routes() -> Router<ConsoleState>` with paths relative to `/console`.
//! Handlers take [`crate::session::Authed`] (GET) or [`crate::session::Posted`] (form POST,
//! CSRF already checked) and call `require(Role::…)` before any change.

use crate::ConsoleState;
use axum::Router;

mod audit;
mod certs;
mod components;
mod deployments;
mod device;
mod devices;
mod groups;
mod login;
mod overview;
mod shadows;
mod users;

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .merge(login::routes())
        .merge(overview::routes())
        .merge(devices::routes())
        .merge(device::routes())
        .merge(groups::routes())
        .merge(certs::routes())
        .merge(audit::routes())
        .merge(users::routes())
        .merge(deployments::routes())
        .merge(components::routes())
}

/// The `csrf` field alone, for forms that carry nothing else.
#[derive(serde::Deserialize)]
pub(crate) struct CsrfOnly {}

#[cfg(test)]
pub(crate) use login::safe_next as safe_next_for_tests;
#[cfg(test)]
pub(crate) use login::throttle as throttle_for_tests;
#[cfg(test)]
pub(crate) use overview::deployments_in_flight as in_flight_for_tests;
#[cfg(test)]
pub(crate) use shadows::replace_patch as replace_patch_for_tests;
