//! The shadow service's errors: an HTTP-style code and the exact message AWS IoT sends.

use serde_json::{Map, Value, json};

/// The error classes of the Device Shadow service, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: the request is malformed (JSON, names, version, client token, nesting).
    BadRequest,
    /// 401: the caller is not authenticated.
    Unauthorized,
    /// 403: the caller may not act on this shadow.
    Forbidden,
    /// 404: the thing's shadow does not exist (never created, or deleted).
    NotFound,
    /// 409: the request's `version` is not the shadow's current version.
    Conflict,
    /// 413: the resulting state is over the size limit.
    PayloadTooLarge,
    /// 415: the payload is not UTF-8.
    UnsupportedEncoding,
    /// 429: too many requests.
    TooManyRequests,
    /// 500: the service failed (storage, internal error).
    Internal,
}

impl ErrorCode {
    /// The HTTP status, which is also the integer `code` of a `/rejected` payload.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedEncoding => 415,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
        }
    }

    /// The `iot-data` error shape for the `x-amzn-ErrorType` header of the REST API.
    pub fn aws_error_type(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "InvalidRequestException",
            ErrorCode::Unauthorized => "UnauthorizedException",
            // iot-data has no 403 shape; botocore maps an unknown type by name, so keep AWS's.
            ErrorCode::Forbidden => "ForbiddenException",
            ErrorCode::NotFound => "ResourceNotFoundException",
            ErrorCode::Conflict => "ConflictException",
            ErrorCode::PayloadTooLarge => "RequestEntityTooLargeException",
            ErrorCode::UnsupportedEncoding => "UnsupportedDocumentEncodingException",
            ErrorCode::TooManyRequests => "ThrottlingException",
            ErrorCode::Internal => "InternalFailureException",
        }
    }
}

/// A rejected shadow request: the code and the message AWS IoT sends for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {message}", code.status())]
pub struct ShadowError {
    pub code: ErrorCode,
    pub message: String,
}

impl ShadowError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ShadowError {
            code,
            message: message.into(),
        }
    }

    fn bad(message: &str) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 400 `Invalid JSON` (not JSON, not an object, not UTF-8 text).
    pub fn invalid_json() -> Self {
        Self::bad("Invalid JSON")
    }
    /// 400 `Missing required node: state`.
    pub fn missing_state() -> Self {
        Self::bad("Missing required node: state")
    }
    /// 400 `State node must be an object`.
    pub fn state_not_object() -> Self {
        Self::bad("State node must be an object")
    }
    /// 400 `Desired node must be an object`.
    pub fn desired_not_object() -> Self {
        Self::bad("Desired node must be an object")
    }
    /// 400 `Reported node must be an object`.
    pub fn reported_not_object() -> Self {
        Self::bad("Reported node must be an object")
    }
    /// 400 `Invalid version` (not a non-negative integer).
    pub fn invalid_version() -> Self {
        Self::bad("Invalid version")
    }
    /// 400 `Invalid clientToken` (not a string, or over 64 bytes).
    pub fn invalid_client_token() -> Self {
        Self::bad("Invalid clientToken")
    }
    /// 400 `JSON contains too many levels of nesting; maximum is 6`.
    pub fn too_deep(max_depth: usize) -> Self {
        Self::bad(&format!(
            "JSON contains too many levels of nesting; maximum is {max_depth}"
        ))
    }
    /// 400 `State contains an invalid node` (a key other than desired/reported/delta, or a
    /// `null` inside an array).
    pub fn invalid_node() -> Self {
        Self::bad("State contains an invalid node")
    }
    /// 400 for a thing or shadow name that breaks the naming rules; the message names the field.
    pub fn invalid_name(field: &str, name: &str, rule: &str) -> Self {
        Self::bad(&format!("Invalid {field} {name:?}: {rule}"))
    }
    /// 401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "Unauthorized")
    }
    /// 403 `Forbidden`.
    pub fn forbidden() -> Self {
        Self::new(ErrorCode::Forbidden, "Forbidden")
    }
    /// 404 `Thing not found`.
    pub fn thing_not_found() -> Self {
        Self::new(ErrorCode::NotFound, "Thing not found")
    }
    /// 404 `No shadow exists with name: '<name>'`; `name` is the thing's name for its classic
    /// shadow and the shadow's name for a named one.
    pub fn no_shadow(thing: &str, shadow: Option<&str>) -> Self {
        let name = shadow.unwrap_or(thing);
        Self::new(
            ErrorCode::NotFound,
            format!("No shadow exists with name: '{name}'"),
        )
    }
    /// 409 `Version conflict`.
    pub fn version_conflict() -> Self {
        Self::new(ErrorCode::Conflict, "Version conflict")
    }
    /// 413 `The payload exceeds the maximum size allowed`.
    pub fn too_large() -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            "The payload exceeds the maximum size allowed",
        )
    }
    /// 415 `Unsupported documented encoding; supported encoding is UTF-8` (AWS's wording).
    pub fn unsupported_encoding() -> Self {
        Self::new(
            ErrorCode::UnsupportedEncoding,
            "Unsupported documented encoding; supported encoding is UTF-8",
        )
    }
    /// 429 `Too Many Requests`.
    pub fn throttled() -> Self {
        Self::new(ErrorCode::TooManyRequests, "Too Many Requests")
    }
    /// 500 `Internal service failure`.
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "Internal service failure")
    }

    /// The `/rejected` payload: `{code, message, timestamp, clientToken?}`.
    pub fn rejected_payload(&self, client_token: Option<&str>, now: u64) -> Value {
        let mut out = Map::new();
        out.insert("code".into(), json!(self.code.status()));
        out.insert("message".into(), json!(self.message));
        out.insert("timestamp".into(), json!(now));
        if let Some(token) = client_token {
            out.insert("clientToken".into(), json!(token));
        }
        Value::Object(out)
    }
}
