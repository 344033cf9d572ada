//! The credentials provider: `GET /role-aliases/<alias>/credentials` on the data plane mints
//! temporary credentials for a device's certificate, and the control API accepts them, scoped
//! to the permissions policy of the alias's role.
//!
//! The fleet has no IAM. A role is the ARN a role alias names; its permissions are one
//! IAM-style policy document the operator stores for that ARN (`lichen fleet role put`),
//! evaluated with the same engine as IoT policies. A role without a policy grants nothing.
//!
//! Architecture invariant: credentials are minted only for an ACTIVE registered certificate
//! whose policies allow `iot:AssumeRoleWithCertificate` on the alias's ARN, and (when the
//! device names its thing) whose thing is attached to it.
//! Architecture invariant: a request signed with temporary credentials runs only if its token
//! matches, they have not expired, and the role's policy allows the request's action.

use crate::ApiState;
use crate::authz::action_of;
use crate::call::Call;
use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use lichen_fleet_policy::{Context, Policy, ThingContext, evaluate};
use lichen_fleet_registry::{CertificateStatus, Registry, RegistryError, TemporaryCredentials};
use lichen_sigv4::Verified;
use rand::Rng;

/// The IoT policy action that lets a certificate use a role alias.
pub const ASSUME_ROLE: &str = "iot:AssumeRoleWithCertificate";

/// Checks a verified request's key against what was looked up: administrator keys carry no
/// token; temporary ones must carry theirs and be unexpired at `now_ms`.
pub(crate) fn check_session(
    temporary: Option<TemporaryCredentials>,
    caller: &Verified,
    now_ms: i64,
) -> ApiResult<Option<TemporaryCredentials>> {
    let invalid = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid",
        )
    };
    match (temporary, caller.session_token.as_deref()) {
        (None, None) => Ok(None),
        // A token with a permanent key belongs to nothing here.
        (None, Some(_)) => Err(invalid()),
        (Some(_), None) => Err(invalid()),
        (Some(t), Some(token)) => {
            if lichen_sigv4::hex_sha256(token.as_bytes()) != t.token_sha256 {
                return Err(invalid());
            }
            if now_ms >= t.expires_ms {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "ExpiredTokenException",
                    "The security token included in the request is expired",
                ));
            }
            Ok(Some(t))
        }
    }
}

/// Allows the call only if the role's permissions policy allows its action on its resource.
pub(crate) fn authorize(state: &ApiState, call: &Call, t: &TemporaryCredentials) -> ApiResult<()> {
    let who = format!(
        "{}:assumed-role/{}/{}",
        state.registry.arn("").trim_end_matches(':'),
        role_name(&t.role_arn),
        t.thing_name
    );
    let denied = |action: &str, resource: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            format!("User: {who} is not authorized to perform: {action} on resource: {resource}"),
        )
    };
    let Some((action, resource)) = action_of(&state.registry, call) else {
        return Err(denied(
            &format!("{} {}", call.method, call.path),
            "* (not an operation temporary credentials may call)",
        ));
    };
    let Some(document) = state.registry.role_policy(&t.role_arn)? else {
        return Err(denied(&action, &resource));
    };
    let policy = match Policy::parse(&t.role_arn, &document) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(role = %t.role_arn, "role policy unusable, nothing allowed: {e}");
            return Err(denied(&action, &resource));
        }
    };
    if evaluate([&policy], &action, &resource, &Context::default()).is_allowed() {
        Ok(())
    } else {
        Err(denied(&action, &resource))
    }
}

/// Allows `action` on `resource` (for requests [`action_of`] does not name, such as S3's) only
/// if the role's permissions policy allows it.
pub(crate) fn authorize_action(
    state: &ApiState,
    action: &str,
    resource: &str,
    t: &TemporaryCredentials,
) -> ApiResult<()> {
    let denied = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            format!(
                "the role {} is not authorized to perform: {action} on resource: {resource}",
                t.role_arn
            ),
        )
    };
    let Some(document) = state.registry.role_policy(&t.role_arn)? else {
        return Err(denied());
    };
    match Policy::parse(&t.role_arn, &document) {
        Ok(p) if evaluate([&p], action, resource, &Context::default()).is_allowed() => Ok(()),
        _ => Err(denied()),
    }
}

/// `arn:aws:iam::<account>:role/<path>/<name>` → `<name>`.
fn role_name(role_arn: &str) -> &str {
    role_arn.rsplit('/').next().unwrap_or(role_arn)
}

/// A refusal as the credentials provider answers it: a status and `{"message": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// Minted credentials, as answered (`expiration` is ISO-8601 UTC with `Z`).
#[derive(Debug, Clone)]
pub struct Minted {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: String,
}

impl Minted {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"credentials": {
            "accessKeyId": self.access_key_id,
            "secretAccessKey": self.secret_access_key,
            "sessionToken": self.session_token,
            "expiration": self.expiration,
        }})
    }
}

/// Mints credentials for the certificate `certificate_id` (from the verified TLS handshake)
/// acting as `thing` (the `x-amzn-iot-thingname` header) through role alias `alias`.
pub fn mint(
    registry: &Registry,
    certificate_id: &str,
    thing: Option<&str>,
    alias: &str,
    now: time::OffsetDateTime,
) -> Result<Minted, Refusal> {
    let internal = |e: RegistryError| {
        tracing::error!("credentials provider: {e}");
        refuse(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
    };
    let denied = || refuse(StatusCode::FORBIDDEN, "Access Denied");
    let auth = registry
        .principal_authorization(certificate_id)
        .map_err(internal)?
        .ok_or_else(denied)?;
    if auth.status != CertificateStatus::Active {
        return Err(denied());
    }
    let thing_row = match thing {
        None => None,
        Some(name) => Some(
            auth.things
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| refuse(StatusCode::FORBIDDEN, "Invalid thing name passed"))?,
        ),
    };
    let policies: Vec<Policy> = auth
        .policies
        .iter()
        .filter_map(|(name, doc)| Policy::parse(name, doc).ok())
        .collect();
    let ctx = Context {
        client_id: None,
        thing: thing_row.map(|t| ThingContext {
            name: &t.name,
            type_name: t.thing_type.as_deref(),
            attributes: &t.attributes,
        }),
    };
    let alias_arn = registry.arn(&format!("rolealias/{alias}"));
    if !evaluate(&policies, ASSUME_ROLE, &alias_arn, &ctx).is_allowed() {
        return Err(denied());
    }
    let role_alias = match registry.describe_role_alias(alias) {
        Ok(a) => a,
        Err(RegistryError::NotFound { .. }) => {
            return Err(refuse(StatusCode::NOT_FOUND, "Role alias does not exist"));
        }
        Err(e) => return Err(internal(e)),
    };
    let expires = now + time::Duration::seconds(role_alias.duration_seconds);
    let (access_key_id, secret_access_key, session_token) = generate();
    registry
        .insert_temporary_credentials(&TemporaryCredentials {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.clone(),
            token_sha256: lichen_sigv4::hex_sha256(session_token.as_bytes()),
            role_arn: role_alias.role_arn.clone(),
            role_alias: role_alias.name.clone(),
            thing_name: thing.unwrap_or_default().to_owned(),
            certificate_id: certificate_id.to_owned(),
            expires_ms: expires.unix_timestamp() * 1000,
        })
        .map_err(internal)?;
    Ok(Minted {
        access_key_id,
        secret_access_key,
        session_token,
        expiration: iso8601(expires),
    })
}

/// `2018-01-18T09:18:06Z` (what Java's `Instant.parse` and botocore read).
fn iso8601(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `ASIA` + 16 upper-case letters/digits (as STS spells temporary keys), a 40-character
/// secret, and a 344-bit session token.
fn generate() -> (String, String, String) {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    let mut pick = |set: &[u8], n: usize| -> String {
        (0..n)
            .map(|_| set[rng.random_range(0..set.len())] as char)
            .collect()
    };
    let id = pick(UPPER, 16);
    let secret = pick(SECRET, 40);
    let token = pick(SECRET, 58);
    (format!("ASIA{id}"), secret, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(token: Option<&str>) -> Verified {
        Verified {
            access_key_id: "ASIAEXAMPLE".into(),
            region: "us-east-1".into(),
            service: "iot".into(),
            session_token: token.map(str::to_owned),
        }
    }

    fn temp(expires_ms: i64) -> TemporaryCredentials {
        TemporaryCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "s".into(),
            token_sha256: lichen_sigv4::hex_sha256(b"tok"),
            role_arn: "arn:aws:iam::1:role/r".into(),
            role_alias: "a".into(),
            thing_name: "t".into(),
            certificate_id: "c".into(),
            expires_ms,
        }
    }

    #[test]
    fn temporary_credentials_live_until_their_expiry_and_not_a_millisecond_more() {
        let now = 1_000_000;
        assert!(check_session(Some(temp(now + 1)), &caller(Some("tok")), now).is_ok());
        for late in [now, now + 3_600_000] {
            let e = check_session(Some(temp(now)), &caller(Some("tok")), late).unwrap_err();
            assert_eq!(e.code, "ExpiredTokenException");
            assert_eq!(e.status, StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn a_session_token_must_be_the_one_minted_with_the_key() {
        let now = 0;
        let wrong = check_session(Some(temp(1)), &caller(Some("other")), now).unwrap_err();
        assert_eq!(wrong.code, "UnrecognizedClientException");
        let missing = check_session(Some(temp(1)), &caller(None), now).unwrap_err();
        assert_eq!(missing.code, "UnrecognizedClientException");
        let on_admin_key = check_session(None, &caller(Some("tok")), now).unwrap_err();
        assert_eq!(on_admin_key.code, "UnrecognizedClientException");
        assert!(check_session(None, &caller(None), now).unwrap().is_none());
    }

    #[test]
    fn expiration_is_iso8601_utc_with_z() {
        let t = time::OffsetDateTime::from_unix_timestamp(1_516_267_086).unwrap();
        assert_eq!(iso8601(t), "2018-01-18T09:18:06Z");
    }
}
