//! `s3://` artifacts fetched from S3 itself with the token exchange's credentials, as the
//! Greengrass nucleus's S3 downloader does (the token exchange role then needs `s3:GetObject`
//! on the artifact buckets). On when the nucleus sets `lichen.s3Endpoint`: `aws` (the AWS S3
//! endpoint of `awsRegion`, virtual-hosted) or a URL (`http://host:port`, path-style: the
//! fleet's S3 API or any S3-compatible store). Otherwise artifacts come through
//! GetComponentVersionArtifact's presigned URLs ([`super::dataplane::S3Fetcher`]).
//!
//! The request is a SigV4 query-signed GET (with the session token), downloaded by the data
//! plane's resumable downloader.

use lichen_cloud::dataplane::DataPlaneError;
use lichen_config::ConfigStore;
use serde_json::Value;

/// Where to fetch `s3://` artifacts from directly, if the nucleus says so.
pub fn endpoint(config: &ConfigStore) -> Option<String> {
    match config.get(&[
        "services",
        super::NUCLEUS,
        "configuration",
        "lichen",
        "s3Endpoint",
    ]) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// A presigned GET URL for `bucket/key` at `endpoint` (see the module doc), signed with the
/// token exchange's current credentials.
pub async fn signed_url(
    config: &ConfigStore,
    endpoint: &str,
    bucket: &str,
    key: &str,
) -> Result<String, DataPlaneError> {
    // Settings errors do not heal by retrying; the credentials provider's 5xx may.
    let bad = |message: String| DataPlaneError::BadResponse {
        url: format!("lichen.s3Endpoint {endpoint}"),
        message,
    };
    let (tes, _) = crate::cmd::core::tes::settings(config, &Value::Null).map_err(|e| {
        bad(format!(
            "s3:// artifacts are fetched with the token exchange's credentials: {e}"
        ))
    })?;
    let exchange = lichen_cloud::tes::TokenExchange::new(tes).map_err(|e| bad(e.to_string()))?;
    let creds = exchange
        .credentials()
        .await
        .map_err(|e| DataPlaneError::Status {
            url: "the token exchange (credentials for s3:// artifacts)".into(),
            status: e.status,
            body: e.message,
        })?;
    let region = match config.get(&["services", super::NUCLEUS, "configuration", "awsRegion"]) {
        Some(Value::String(r)) if !r.is_empty() => r,
        _ => "us-east-1".to_string(),
    };
    let key_path = lichen_sigv4::uri_encode(key, true);
    let (base, host, path) = if endpoint.eq_ignore_ascii_case("aws") {
        let host = format!("{bucket}.s3.{region}.amazonaws.com");
        (format!("https://{host}"), host, format!("/{key_path}"))
    } else {
        let base = endpoint.trim_end_matches('/').to_string();
        let host = base
            .split_once("://")
            .map(|(_, h)| h)
            .ok_or_else(|| bad("is neither `aws` nor an http(s):// URL".into()))?
            .to_string();
        let path = format!("/{}/{key_path}", lichen_sigv4::uri_encode(bucket, false));
        (base, host, path)
    };
    let query = lichen_sigv4::presign(
        &lichen_sigv4::PresignInput {
            method: "GET",
            host: &host,
            path: &path,
            region: &region,
            service: "s3",
            amz_date: &lichen_sigv4::amz_date_now(),
            expires_seconds: 900,
        },
        &lichen_sigv4::Credentials {
            access_key_id: creds.access_key_id.clone(),
            secret_access_key: creds.secret_access_key.clone(),
            session_token: Some(creds.session_token.clone()),
        },
    );
    Ok(format!("{base}{path}?{query}"))
}
