//! An external S3-compatible store (MinIO, Ceph, AWS S3 over plain HTTP) that keeps the
//! artifacts instead of the fleet's folder: recipes name its objects (`s3://<bucket>/<key>`,
//! under the configured prefix); the fleet reads them to check digests and hands devices URLs
//! presigned with the store's credentials.

use crate::client::{self, ClientError, Signing};
use axum::body::Body;
use base64::Engine;
use http_body_util::BodyExt;
use lichen_sigv4::Credentials;
use sha2::Digest;

#[derive(Debug)]
pub struct RemoteStore {
    /// `http://host:port`.
    pub endpoint: String,
    pub bucket: String,
    /// Keys must start with this (empty: the whole bucket).
    pub prefix: String,
    pub region: String,
    pub creds: Credentials,
}

impl RemoteStore {
    /// Parses `s3://bucket[/prefix]?endpoint=http://host:port[&region=r]`.
    pub fn parse(url: &str, creds: Credentials) -> Result<Self, String> {
        let shape = "give s3://BUCKET[/PREFIX]?endpoint=http://HOST:PORT[&region=REGION]";
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("--object-store {url:?} does not start with s3://; {shape}"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        super::store::check_bucket_name(bucket).map_err(|e| format!("--object-store: {e}"))?;
        let mut endpoint = None;
        let mut region = "us-east-1".to_string();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", v)) => endpoint = Some(v.trim_end_matches('/').to_string()),
                Some(("region", v)) => region = v.to_string(),
                _ => {
                    return Err(format!(
                        "--object-store: unknown parameter {pair:?}; {shape}"
                    ));
                }
            }
        }
        let endpoint = endpoint
            .filter(|e| e.starts_with("http://"))
            .ok_or_else(|| format!("--object-store needs endpoint=http://HOST:PORT; {shape}"))?;
        Ok(RemoteStore {
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region,
            creds,
        })
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{} at {}", self.bucket, self.endpoint)
        } else {
            format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
        }
    }

    /// Whether `bucket/key` is inside this store.
    pub fn holds(&self, bucket: &str, key: &str) -> bool {
        bucket == self.bucket
            && (self.prefix.is_empty()
                || key
                    .strip_prefix(&self.prefix)
                    .is_some_and(|r| r.starts_with('/')))
    }

    fn path(bucket: &str, key: &str) -> String {
        format!(
            "/{}/{}",
            lichen_sigv4::uri_encode(bucket, false),
            lichen_sigv4::uri_encode(key, true)
        )
    }

    /// Size and base64 SHA-256 of the object, read through; None when it does not exist.
    pub async fn digest(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(u64, String)>, ClientError> {
        let answer = client::send(
            "GET",
            &self.endpoint,
            &Self::path(bucket, key),
            &[],
            &[],
            Body::empty(),
            Some(Signing {
                creds: &self.creds,
                region: &self.region,
                service: "s3",
                payload_sha256: &lichen_sigv4::hex_sha256(b""),
            }),
        )
        .await?;
        match answer.status {
            200 => {}
            404 => return Ok(None),
            s => {
                let body = answer.bytes().await.unwrap_or_default();
                return Err(ClientError::Http {
                    addr: self.endpoint.clone(),
                    message: format!(
                        "GET {bucket}/{key} answered {s}: {}",
                        String::from_utf8_lossy(&body)
                    ),
                });
            }
        }
        let mut sha = sha2::Sha256::new();
        let mut size = 0u64;
        let mut body = answer.body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http {
                addr: self.endpoint.clone(),
                message: e.to_string(),
            })?;
            if let Some(data) = frame.data_ref() {
                sha.update(data);
                size += data.len() as u64;
            }
        }
        Ok(Some((
            size,
            base64::engine::general_purpose::STANDARD.encode(sha.finalize()),
        )))
    }

    /// A GET URL presigned with the store's credentials.
    pub fn presigned_get(&self, bucket: &str, key: &str, expires_seconds: i64) -> String {
        let path = Self::path(bucket, key);
        let host = self.endpoint.trim_start_matches("http://");
        let query = lichen_sigv4::presign(
            &lichen_sigv4::PresignInput {
                method: "GET",
                host,
                path: &path,
                region: &self.region,
                service: "s3",
                amz_date: &lichen_sigv4::amz_date_now(),
                expires_seconds,
            },
            &self.creds,
        );
        format!("{}{path}?{query}", self.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            session_token: None,
        }
    }

    #[test]
    fn object_store_urls_parse_with_their_errors_named() {
        let r =
            RemoteStore::parse("s3://arts/gg/?endpoint=http://127.0.0.1:9000/", creds()).unwrap();
        assert_eq!(
            (r.bucket.as_str(), r.prefix.as_str(), r.endpoint.as_str()),
            ("arts", "gg", "http://127.0.0.1:9000")
        );
        assert!(r.holds("arts", "gg/x.bin"));
        assert!(!r.holds("arts", "ggx.bin"));
        assert!(!r.holds("other", "gg/x.bin"));
        assert!(
            RemoteStore::parse("s3://arts", creds())
                .unwrap_err()
                .contains("endpoint")
        );
        assert!(
            RemoteStore::parse("http://x", creds())
                .unwrap_err()
                .contains("s3://")
        );
    }
}
