//! Sign in and sign out. The sign-in form is protected by a double-submit token (a cookie and a
//! hidden field that must match), since there is no session yet to hold one.

use crate::ConsoleState;
use crate::layout::{self, bare_page};
use crate::session::{self, COOKIE, Posted, SESSION_TTL_SECS, blocking, cookie, set_cookie};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use lichen_fleet_registry::random_token;
use maud::html;

const LOGIN_COOKIE: &str = "lichen_console_login";

pub(crate) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/login", get(form).post(sign_in))
        .route("/logout", post(sign_out))
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct LoginQuery {
    next: Option<String>,
    signed_out: Option<String>,
}

/// Only console paths are followed after sign-in (no open redirect).
pub(crate) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if (n == "/console" || n.starts_with("/console/") || n.starts_with("/console?"))
                && !n.starts_with("//")
                && !n.contains('\\') =>
        {
            n.to_string()
        }
        _ => "/console".into(),
    }
}

fn login_page(
    state: &ConsoleState,
    status: StatusCode,
    next: &str,
    message: Option<(&str, bool)>,
) -> Response {
    let token = random_token();
    let body = html! {
        @if let Some((m, error)) = message {
            p class={"flash" @if error {" error"}} role=(if error {"alert"} else {"status"}) { (m) }
        }
        // Shown by the script where the browser will not keep a Secure cookie (plain HTTP to a
        // host other than localhost).
        p #insecure-context .flash.error role="alert" hidden {
            "This page is not served over HTTPS, so your browser will not keep the sign-in cookie. "
            "Reach the console through HTTPS (a TLS-terminating proxy in front of the fleet's API "
            "listener) or on localhost."
        }
        form.stack method="post" action="/console/login" {
            input type="hidden" name="csrf" value=(token);
            input type="hidden" name="next" value=(next);
            div {
                label for="username" { "User name" }
                input #username type="text" name="username" autocomplete="username" required autofocus;
            }
            div {
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
            }
            button #login type="submit" { "Sign in" }
        }
        p.muted { "The administrator's password is in " code { "<fleet root>/admin/console-password" } "." }
    };
    let mut r = (status, bare_page("Sign in", body)).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, &token, Some(3600)),
    );
    r
}

async fn form(State(state): State<ConsoleState>, Query(q): Query<LoginQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    let msg = q
        .signed_out
        .is_some()
        .then_some(("You are signed out.", false));
    login_page(&state, StatusCode::OK, &next, msg)
}

#[derive(serde::Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

async fn sign_in(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !session::constant_time_eq(expected.as_bytes(), f.csrf.as_bytes()) {
        return login_page(
            &state,
            StatusCode::FORBIDDEN,
            &next,
            Some((
                "The sign-in form expired: enter your name and password again.",
                true,
            )),
        );
    }
    if let Some(wait) = throttle::blocked(&f.username) {
        tracing::info!(user = %f.username, "console sign-in throttled");
        return login_page(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some((
                &format!(
                    "Too many failed sign-ins for this user name: try again in {} s.",
                    wait.as_secs().max(1)
                ),
                true,
            )),
        );
    }
    let (name, password) = (f.username.clone(), f.password);
    let verified = blocking(&state, move |r| {
        let Some(user) = r.verify_password(&name, &password)? else {
            return Ok(None);
        };
        r.create_session(&user.name, SESSION_TTL_SECS).map(Some)
    })
    .await;
    match verified {
        Ok(Some((token, s))) => {
            throttle::succeeded(&f.username);
            tracing::info!(user = %s.user.name, role = s.user.role.as_str(), "console sign-in");
            let mut r = Redirect::to(&next).into_response();
            let h = r.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(&state, COOKIE, &token, Some(SESSION_TTL_SECS)),
            );
            h.append(
                header::SET_COOKIE,
                set_cookie(&state, LOGIN_COOKIE, "", Some(0)),
            );
            r
        }
        Ok(None) => {
            throttle::failed(&f.username);
            tracing::info!(user = %f.username, "console sign-in refused");
            login_page(
                &state,
                StatusCode::UNAUTHORIZED,
                &next,
                Some(("Wrong user name or password.", true)),
            )
        }
        Err(e) => layout::error_page(
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            &e.to_string(),
        ),
    }
}

async fn sign_out(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    p: Posted<super::CsrfOnly>,
) -> Response {
    if let Some(token) = cookie(&headers, COOKIE) {
        let _ = blocking(&state, move |r| r.delete_session(&token)).await;
    }
    tracing::info!(user = %p.user.session.user.name, "console sign-out");
    let mut r = Redirect::to("/console/login?signed_out=1").into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&state, COOKIE, "", Some(0)));
    r
}

/// Failed sign-ins per user name: after [`throttle::LIMIT`] failures within
/// [`throttle::WINDOW`], further attempts for that name are refused (429) until the window
/// has passed, which slows password guessing without locking the user out for good.
pub(crate) mod throttle {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    pub const LIMIT: u32 = 10;
    pub const WINDOW: Duration = Duration::from_secs(300);
    /// Names tracked at most (the oldest windows go first).
    const MAX_NAMES: usize = 10_000;

    fn table() -> &'static Mutex<HashMap<String, (u32, Instant)>> {
        static T: OnceLock<Mutex<HashMap<String, (u32, Instant)>>> = OnceLock::new();
        T.get_or_init(Default::default)
    }

    /// How long `name` must wait, if it is blocked now.
    pub fn blocked(name: &str) -> Option<Duration> {
        let t = table().lock().unwrap_or_else(|e| e.into_inner());
        let (n, since) = t.get(name)?;
        let left = WINDOW.checked_sub(since.elapsed())?;
        (*n >= LIMIT).then_some(left)
    }

    pub fn failed(name: &str) {
        let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= MAX_NAMES && !t.contains_key(name) {
            t.retain(|_, (_, since)| since.elapsed() < WINDOW);
            if t.len() >= MAX_NAMES {
                return;
            }
        }
        let e = t.entry(name.to_string()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    pub fn succeeded(name: &str) {
        table()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}
