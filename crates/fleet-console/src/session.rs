//! Who is asking: the session cookie, the signed-in user's role, and the CSRF check every form
//! POST passes before its handler runs.

use crate::ConsoleState;
use crate::layout;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use lichen_fleet_registry::{Registry, RegistryError};
use lichen_fleet_registry::{Role, Session};
use serde::de::DeserializeOwned;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "lichen_console";
/// A message for the next page (after a redirect), then cleared.
pub(crate) const FLASH_COOKIE: &str = "lichen_console_flash";
/// Sessions last a working day.
pub(crate) const SESSION_TTL_SECS: u64 = 12 * 3600;
/// Forms are small; the largest is a shadow document (8 KiB by AWS's limit) or a recipe.
const MAX_FORM: usize = 1 << 20;

/// A cookie's value from the request's `Cookie` headers.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value scoped to the console.
pub(crate) fn set_cookie(
    state: &ConsoleState,
    name: &str,
    value: &str,
    max_age: Option<u64>,
) -> HeaderValue {
    let mut s = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/console");
    if state.secure_cookies {
        s.push_str("; Secure");
    }
    if let Some(a) = max_age {
        s.push_str(&format!("; Max-Age={a}"));
    }
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A redirect that leaves `message` for the next page.
pub(crate) fn redirect_with_flash(state: &ConsoleState, to: &str, message: &str) -> Response {
    let v = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(message.as_bytes());
    let mut r = Redirect::to(to).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, FLASH_COOKIE, &v, Some(60)),
    );
    r
}

/// Runs a registry call off the async threads (the registry blocks on its database).
pub(crate) async fn blocking<T: Send + 'static>(
    state: &ConsoleState,
    f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    let r = state.registry.clone();
    tokio::task::spawn_blocking(move || f(&r))
        .await
        .unwrap_or_else(|e| Err(RegistryError::Invalid(format!("registry task failed: {e}"))))
}

/// A signed-in user: their session, the session's token, and a message left for this page.
#[derive(Clone)]
pub(crate) struct Authed {
    pub session: Session,
    pub flash: Option<String>,
}

impl Authed {
    pub fn role(&self) -> Role {
        self.session.user.role
    }
    /// Whether the user may do what `role` may (to show a form or not).
    pub fn can(&self, role: Role) -> bool {
        self.role() >= role
    }
    /// Refuses (403) a user whose role is below `role`: the server's check, whatever the page
    /// showed.
    #[allow(clippy::result_large_err)]
    pub fn require(&self, role: Role) -> Result<(), Response> {
        if self.can(role) {
            Ok(())
        } else {
            Err(layout::error_page(
                Some(self),
                StatusCode::FORBIDDEN,
                "Not allowed",
                &format!(
                    "This needs the {} role; you are signed in as {} ({}). Ask an administrator.",
                    role.as_str(),
                    self.session.user.name,
                    self.role().as_str()
                ),
            ))
        }
    }
}

fn wants_fragment(parts: &Parts) -> bool {
    parts.headers.contains_key("x-console-fragment")
}

impl FromRequestParts<ConsoleState> for Authed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let session = match cookie(&parts.headers, COOKIE) {
            Some(token) => blocking(state, move |r| r.session(&token)).await,
            None => Ok(None),
        };
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                return Err(layout::error_page(
                    None,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Registry unavailable",
                    &e.to_string(),
                ));
            }
        };
        let Some(session) = session else {
            if wants_fragment(parts) || parts.method != axum::http::Method::GET {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "Your session has ended: sign in again.",
                )
                    .into_response());
            }
            // Inside the nested router the URI lost its /console prefix; the original has it.
            let uri = parts
                .extensions
                .get::<axum::extract::OriginalUri>()
                .map(|o| o.0.clone())
                .unwrap_or_else(|| parts.uri.clone());
            let next = uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/console");
            let q = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
            return Err(Redirect::to(&format!("/console/login?{q}")).into_response());
        };
        let flash = cookie(&parts.headers, FLASH_COOKIE)
            .and_then(|v| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v)
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        Ok(Authed { session, flash })
    }
}

/// A form POST from a signed-in user whose CSRF token matched: `form` is the decoded body.
pub(crate) struct Posted<T> {
    pub user: Authed,
    pub form: T,
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<T: DeserializeOwned + Send> FromRequest<ConsoleState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let user = Authed::from_request_parts(&mut parts, state).await?;
        // Viewers are read-only: signing out is the only form they may post. Refusing here,
        // before any form is read, keeps a handler's own check from being the only one.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map(|o| o.0.path().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        if user.role() < Role::Operator && path != "/console/logout" {
            user.require(Role::Operator)?;
        }
        let bytes = axum::body::to_bytes(body, MAX_FORM).await.map_err(|_| {
            layout::error_page(
                Some(&user),
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                &format!("A form may hold at most {MAX_FORM} bytes."),
            )
        })?;
        let fields: Vec<(String, String)> =
            serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        let sent = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        if !constant_time_eq(sent.as_bytes(), user.session.csrf_token.as_bytes()) {
            return Err(layout::error_page(
                Some(&user),
                StatusCode::FORBIDDEN,
                "Form expired",
                "The form's security token is missing or belongs to another session: \
                 reload the page and submit it again.",
            ));
        }
        let form = serde_urlencoded::from_bytes::<T>(&bytes).map_err(|e| {
            layout::error_page(
                Some(&user),
                StatusCode::BAD_REQUEST,
                "Bad form",
                &format!("The form could not be read: {e}."),
            )
        })?;
        Ok(Posted { user, form })
    }
}
