//! Errors in the AWS rest-json shape: status, `x-amzn-ErrorType: <Shape>` and
//! `{"message": …}` (plus modeled extras such as `resourceId`).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lichen_fleet_pki::PkiError;
use lichen_fleet_registry::RegistryError;
use lichen_sigv4::VerifyError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Vec<(&'static str, String)>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: vec![],
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequestException", message)
    }

    pub fn unknown_operation(method: &str, path: &str, service: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!("no {service} operation is served at {method} {path}"),
        )
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::NotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
            }
            RegistryError::AlreadyExists { name, arn, .. } => ApiError {
                status: StatusCode::CONFLICT,
                code: "ResourceAlreadyExistsException",
                message,
                extra: vec![("resourceId", name), ("resourceArn", arn)],
            },
            RegistryError::VersionConflict(_) => {
                Self::new(StatusCode::CONFLICT, "VersionConflictException", message)
            }
            RegistryError::DeleteConflict(_) => {
                Self::new(StatusCode::CONFLICT, "DeleteConflictException", message)
            }
            RegistryError::CertificateState(_) => Self::new(
                StatusCode::NOT_ACCEPTABLE,
                "CertificateStateException",
                message,
            ),
            RegistryError::MalformedPolicy(_) => {
                Self::new(StatusCode::BAD_REQUEST, "MalformedPolicyException", message)
            }
            RegistryError::Invalid(_) => Self::invalid(message),
            RegistryError::Db { .. } | RegistryError::Sql(_) => {
                tracing::error!(error = %message, "registry failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalFailureException",
                    "internal failure in the registry; the fleet log has the details",
                )
            }
        }
    }
}

impl From<PkiError> for ApiError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::Invalid(m) => Self::invalid(m),
            e => {
                tracing::error!(error = %e, "certificate authority failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalFailureException",
                    "internal failure in the certificate authority; the fleet log has the details",
                )
            }
        }
    }
}

/// Signature failures as AWS answers them: botocore reads the code from the header.
impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        let message = e.to_string();
        match e {
            VerifyError::Missing => Self::new(
                StatusCode::FORBIDDEN,
                "MissingAuthenticationTokenException",
                message,
            ),
            VerifyError::Malformed(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "IncompleteSignatureException",
                message,
            ),
            VerifyError::UnknownAccessKey(_) => Self::new(
                StatusCode::FORBIDDEN,
                "UnrecognizedClientException",
                format!("The security token included in the request is invalid: {message}"),
            ),
            VerifyError::SignatureMismatch => {
                Self::new(StatusCode::FORBIDDEN, "InvalidSignatureException", message)
            }
            VerifyError::Expired(_) => Self::new(StatusCode::FORBIDDEN, "AccessDenied", message),
            VerifyError::Skewed { .. } => Self::new(
                StatusCode::FORBIDDEN,
                "InvalidSignatureException",
                format!("Signature expired: {message}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("message".into(), self.message.into());
        for (k, v) in self.extra {
            body.insert(k.into(), v.into());
        }
        let mut resp = (
            self.status,
            [("content-type", "application/json")],
            serde_json::Value::Object(body).to_string(),
        )
            .into_response();
        resp.headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.code));
        resp
    }
}
