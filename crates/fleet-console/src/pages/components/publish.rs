//! Publishing a component version from the console: a recipe pasted into the form or read from
//! a file (by the small script below, into the same text area; without scripts, paste it),
//! published with CreateComponentVersion's own rules ([`lichen_fleet_api::greengrass::
//! components::publish`]): the recipe is validated, each `s3://` artifact must be an object in
//! the fleet's store and its digest is checked or filled in.

use crate::ConsoleState;
use crate::layout;
use crate::pages::deployments::who;
use crate::session::{Authed, Posted, redirect_with_flash};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use lichen_fleet_api::greengrass::components::{Publish, publish};
use lichen_fleet_registry::Role;
use maud::{Markup, html};
use serde_json::json;

/// Reads the chosen recipe file into the text area (the page works without it).
pub(crate) const UPLOAD_JS: &str = include_str!("upload.js");

/// Recipes larger than this are refused (a recipe is a few KiB; the API's body limit is 1 MiB).
const MAX_RECIPE: usize = 512 * 1024;

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new().route("/components/publish", get(form_page).post(submit))
}

fn form(user: &Authed, recipe: &str) -> Markup {
    html! {
        (crate::pages::deployments::style_link())
        form.stack #publish-form method="post" action="/console/components/publish" {
            (layout::csrf(user))
            p.muted {
                "A Greengrass recipe in JSON or YAML. Artifacts must be objects in the fleet's S3 store "
                "(upload them with " code { "aws s3 cp" } " to the fleet's endpoint) and are named "
                code { "s3://bucket/key" } "; their digests are checked, or filled in when the recipe has none."
            }
            div {
                label for="recipe-file" { "Recipe file" }
                input type="file" #recipe-file accept=".json,.yaml,.yml,application/json,text/yaml";
            }
            div {
                label for="recipe" { "Recipe" }
                textarea #recipe name="recipe" required spellcheck="false" rows="18" { (recipe) }
            }
            div { button #publish type="submit" { "Publish" } }
        }
        script src="/console/components/upload.js" defer {}
    }
}

async fn form_page(user: Authed) -> Response {
    if let Err(r) = user.require(Role::Operator) {
        return r;
    }
    layout::page(
        &user,
        "Publish a component version",
        "/console/components",
        form(&user, ""),
    )
}

/// Defaults to empty, so that a refused role is answered (403) before a malformed form is.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Submitted {
    recipe: String,
}

async fn submit(State(state): State<ConsoleState>, posted: Posted<Submitted>) -> Response {
    let user = posted.user;
    if let Err(r) = user.require(Role::Operator) {
        return r;
    }
    let text = posted.form.recipe;
    let again = |status: StatusCode, message: &str| {
        let mut r = layout::page(
            &user,
            "Publish a component version",
            "/console/components",
            html! {
                p.flash.error role="alert" data-testid="form-error" { (message) }
                (form(&user, &text))
            },
        );
        *r.status_mut() = status;
        r
    };
    if text.trim().is_empty() {
        return again(
            StatusCode::BAD_REQUEST,
            "Recipe: paste a recipe or choose its file.",
        );
    }
    if text.len() > MAX_RECIPE {
        return again(
            StatusCode::BAD_REQUEST,
            &format!(
                "Recipe: {} bytes is over the {MAX_RECIPE}-byte limit.",
                text.len()
            ),
        );
    }
    let registry = state.registry.clone();
    let objects = state.objects.clone();
    let who = who(&user);
    let t = text.clone();
    let published = tokio::task::spawn_blocking(move || {
        publish(
            &registry,
            objects.as_deref(),
            &who,
            Publish {
                text: t,
                signature: None,
                tags: json!({}),
                client_token: None,
            },
        )
    })
    .await;
    match published {
        Ok(Ok(cv)) => {
            let message = if cv.status == "DEPLOYABLE" {
                format!("Published {} {}: deployable.", cv.name, cv.version)
            } else {
                format!(
                    "Published {} {}, but it is {}: see why below, fix it and publish a new version.",
                    cv.name, cv.version, cv.status
                )
            };
            redirect_with_flash(
                &state,
                &format!("/console/components/{}/versions/{}", cv.name, cv.version),
                &message,
            )
        }
        Ok(Err(e)) => again(e.status, &e.message),
        Err(e) => again(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("publishing failed inside the fleet: {e}"),
        ),
    }
}
