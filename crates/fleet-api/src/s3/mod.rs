//! The S3 subset that `aws s3 cp`, boto3 uploads and device downloads use, path-style, on the
//! control-plane listener under signing name `s3`: buckets (Create/Head/List/Delete), objects
//! (Put/Get with Range/Head/Delete, ListObjectsV2), multipart uploads, presigned GET URLs.
//!
//! Bodies stream to disk (never whole in memory) up to [`MAX_OBJECT`]; a declared hex payload
//! hash, `UNSIGNED-PAYLOAD`, or `aws-chunked` with `STREAMING-UNSIGNED-PAYLOAD-TRAILER` (what
//! recent botocore sends over TLS) are accepted, and a hex hash or a CRC32 checksum (header or
//! trailer) is checked before the object is committed. Errors are S3's XML.

mod body;
mod chunked;
mod list;
pub mod remote;
pub mod store;
mod xml;

use crate::ApiState;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
pub use lichen_sigv4::{Credentials, hex_sha256, uri_encode};
use lichen_sigv4::{Verified, VerifyError};
use std::path::Path;
use std::sync::Arc;
pub use store::{LocalStore, ObjectMeta, StoreError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use xml::{esc, xml_response};

/// The largest object or part accepted in one request (S3's single-PUT limit).
pub const MAX_OBJECT: u64 = 5 << 30;

/// How long a presigned artifact URL handed to a device stays valid.
pub const PRESIGN_SECONDS: i64 = 3600;

/// The fleet's object store, with what presigned URLs need.
pub struct ObjectStore {
    pub local: LocalStore,
    /// When set, artifacts live in this external store instead (the S3 API here is off).
    pub remote: Option<remote::RemoteStore>,
    /// `http://host:port` of the API listener (what presigned URLs point at).
    pub endpoint: String,
    pub region: String,
    /// The key presigned URLs are signed with (an access key the registry knows).
    pub presign: Credentials,
}

impl ObjectStore {
    /// Size and base64 SHA-256 of `bucket/key`, None when absent. Blocks (file I/O).
    pub fn digest(&self, bucket: &str, key: &str) -> Result<Option<(u64, String)>, StoreError> {
        if let Some(r) = &self.remote {
            if !r.holds(bucket, key) {
                return Ok(None);
            }
            let io = |e: crate::client::ClientError| StoreError::Io {
                path: r.describe().into(),
                source: std::io::Error::other(e),
            };
            return tokio::runtime::Handle::current()
                .block_on(r.digest(bucket, key))
                .map_err(io);
        }
        match self.local.head(bucket, key) {
            Ok((m, _)) => Ok(Some((m.size, m.sha256))),
            Err(StoreError::NoSuchKey(_) | StoreError::NoSuchBucket(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A presigned GET URL for `bucket/key`, valid for [`PRESIGN_SECONDS`].
    pub fn presigned_get(&self, bucket: &str, key: &str) -> String {
        if let Some(r) = &self.remote {
            return r.presigned_get(bucket, key, PRESIGN_SECONDS);
        }
        let path = format!(
            "/{}/{}",
            lichen_sigv4::uri_encode(bucket, false),
            lichen_sigv4::uri_encode(key, true)
        );
        let host = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, h)| h);
        let query = lichen_sigv4::presign(
            &lichen_sigv4::PresignInput {
                method: "GET",
                host,
                path: &path,
                region: &self.region,
                service: "s3",
                amz_date: &lichen_sigv4::amz_date_now(),
                expires_seconds: PRESIGN_SECONDS,
            },
            &self.presign,
        );
        format!("{}{path}?{query}", self.endpoint)
    }
}

/// Whether a request is for S3: signed (header or query) with the `s3` signing name.
pub(crate) fn is_s3(req: &Request) -> bool {
    let by_header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("/s3/aws4_request"));
    let by_query = req.uri().query().is_some_and(|q| {
        q.split('&').any(|p| {
            p.starts_with("X-Amz-Credential=")
                && (p.contains("%2Fs3%2Faws4_request") || p.contains("/s3/aws4_request"))
        })
    });
    by_header || by_query
}

/// An S3 error: status, code, message (and the resource it names).
#[derive(Debug)]
pub(crate) struct S3Error {
    status: StatusCode,
    code: &'static str,
    message: String,
    resource: String,
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> S3Error {
    S3Error {
        status,
        code,
        message: message.into(),
        resource: String::new(),
    }
}

fn invalid(message: impl Into<String>) -> S3Error {
    err(StatusCode::BAD_REQUEST, "InvalidArgument", message)
}

impl From<StoreError> for S3Error {
    fn from(e: StoreError) -> Self {
        let m = e.to_string();
        match e {
            StoreError::NoSuchBucket(b) => S3Error {
                resource: b,
                ..err(StatusCode::NOT_FOUND, "NoSuchBucket", m)
            },
            StoreError::NoSuchKey(k) => S3Error {
                resource: k,
                ..err(StatusCode::NOT_FOUND, "NoSuchKey", m)
            },
            StoreError::NoSuchUpload(u) => S3Error {
                resource: u,
                ..err(StatusCode::NOT_FOUND, "NoSuchUpload", m)
            },
            StoreError::BucketNotEmpty(b) => S3Error {
                resource: b,
                ..err(StatusCode::CONFLICT, "BucketNotEmpty", m)
            },
            StoreError::Invalid(_) => invalid(m),
            StoreError::Io { .. } => {
                tracing::error!(error = %m, "object store failure");
                err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "internal failure in the object store; the fleet log has the details",
                )
            }
        }
    }
}

impl From<VerifyError> for S3Error {
    fn from(e: VerifyError) -> Self {
        let m = e.to_string();
        match e {
            VerifyError::UnknownAccessKey(_) => err(StatusCode::FORBIDDEN, "InvalidAccessKeyId", m),
            VerifyError::SignatureMismatch => {
                err(StatusCode::FORBIDDEN, "SignatureDoesNotMatch", m)
            }
            VerifyError::Skewed { .. } => err(StatusCode::FORBIDDEN, "RequestTimeTooSkewed", m),
            VerifyError::Expired(_) => err(StatusCode::FORBIDDEN, "AccessDenied", m),
            VerifyError::Missing | VerifyError::Malformed(_) => {
                err(StatusCode::BAD_REQUEST, "AuthorizationHeaderMalformed", m)
            }
        }
    }
}

impl From<crate::ApiError> for S3Error {
    fn from(e: crate::ApiError) -> Self {
        let code = match e.status {
            StatusCode::FORBIDDEN => "AccessDenied",
            StatusCode::BAD_REQUEST => "InvalidRequest",
            _ => "InternalError",
        };
        err(e.status, code, e.message)
    }
}

impl S3Error {
    fn into_response(self, head: bool, request_id: &str) -> Response {
        if head {
            // HEAD answers carry no body: botocore reads the status alone.
            return (self.status, [("x-amz-request-id", request_id)]).into_response();
        }
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>{}</RequestId></Error>",
            self.code,
            esc(&self.message),
            esc(&self.resource),
            request_id
        );
        let mut r = xml_response(self.status, body);
        if let Ok(v) = request_id.parse() {
            r.headers_mut().insert("x-amz-request-id", v);
        }
        r
    }
}

type S3Result<T> = Result<T, S3Error>;

/// Serves one S3 request.
pub(crate) async fn handle(state: &Arc<ApiState>, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let head = req.method() == Method::HEAD;
    match serve(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(head, &request_id),
    }
}

fn authenticate(state: &ApiState, req: &Request) -> S3Result<Verified> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let registry = state.registry.clone();
    let mut temporary = None;
    let mut key = None;
    let secret = |akid: &str| {
        if let Some((k, s)) = registry.access_key(akid).ok().flatten() {
            key = Some(k);
            return Some(s);
        }
        let t = registry.temporary_credentials(akid).ok().flatten()?;
        let s = t.secret_access_key.clone();
        temporary = Some(t);
        Some(s)
    };
    let r = lichen_sigv4::Request {
        method: req.method().as_str(),
        path,
        query,
        headers: &headers,
        payload_sha256: "",
    };
    let now = time::OffsetDateTime::now_utc();
    let caller = if lichen_sigv4::is_presigned(query) {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(err(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "presigned URLs are served for GET and HEAD only",
            ));
        }
        lichen_sigv4::verify_presigned(&r, now, secret)?
    } else {
        lichen_sigv4::verify(&r, now, secret)?
    };
    let temporary =
        crate::credentials::check_session(temporary, &caller, now.unix_timestamp() * 1000)?;
    let action = s3_action(req.method(), path, query);
    if let Some(t) = temporary {
        crate::credentials::authorize_action(state, &action, &s3_resource(path), &t)?;
    } else if let Some(k) = &key {
        let op = action.strip_prefix("s3:").filter(|op| *op != "Unknown");
        crate::roles::check(k, "s3", op, req.method(), path).map_err(|e| S3Error {
            resource: path.to_string(),
            ..err(e.status, "AccessDenied", e.message)
        })?;
    }
    Ok(caller)
}

/// The IAM action of an S3 request (for temporary credentials' role policies).
fn s3_action(method: &Method, path: &str, query: &str) -> String {
    let object = path.trim_start_matches('/').contains('/');
    let op = match (method, object) {
        (&Method::GET | &Method::HEAD, true) => "GetObject",
        (&Method::PUT | &Method::POST, true) => "PutObject",
        (&Method::DELETE, true) if query.contains("uploadId") => "AbortMultipartUpload",
        (&Method::DELETE, true) => "DeleteObject",
        (&Method::GET, false) if path.trim_matches('/').is_empty() => "ListAllMyBuckets",
        (&Method::GET | &Method::HEAD, false) => "ListBucket",
        (&Method::PUT, false) => "CreateBucket",
        (&Method::DELETE, false) => "DeleteBucket",
        _ => "Unknown",
    };
    format!("s3:{op}")
}

/// `arn:aws:s3:::bucket[/key]` (S3 ARNs name no region or account).
fn s3_resource(path: &str) -> String {
    format!("arn:aws:s3:::{}", decode(path.trim_start_matches('/')))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(&v.replace('+', "%20")))
        })
        .collect()
}

async fn serve(state: &Arc<ApiState>, req: Request) -> S3Result<Response> {
    let Some(objects) = state.objects.clone() else {
        return Err(err(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "this fleet serves no object store",
        ));
    };
    authenticate(state, &req)?;
    if let Some(r) = &objects.remote {
        return Err(err(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!(
                "this fleet keeps artifacts in {}: upload them there and name them \
                 s3://{}/… in recipes",
                r.describe(),
                r.bucket
            ),
        ));
    }
    let path = req.uri().path().to_string();
    let q = query_pairs(req.uri().query().unwrap_or(""));
    let has = |k: &str| q.iter().any(|(n, _)| n == k);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let rest = path.trim_start_matches('/');
    let (bucket, key) = match rest.split_once('/') {
        Some((b, k)) => (decode(b), decode(k)),
        None => (decode(rest), String::new()),
    };
    let method = req.method().clone();
    let store = move || objects.clone();
    if bucket.is_empty() {
        return match method {
            Method::GET => list::list_buckets(store()).await,
            _ => Err(method_not_allowed()),
        };
    }
    if key.is_empty() {
        return match method {
            Method::PUT => {
                let s = store();
                let b = bucket.clone();
                blocking(move || s.local.create_bucket(&b)).await?;
                Ok((StatusCode::OK, [("location", format!("/{bucket}"))]).into_response())
            }
            Method::HEAD => {
                let s = store();
                let exists = blocking(move || Ok(s.local.bucket_exists(&bucket))).await?;
                Ok(if exists {
                    StatusCode::OK.into_response()
                } else {
                    StatusCode::NOT_FOUND.into_response()
                })
            }
            Method::DELETE => {
                let s = store();
                blocking(move || s.local.delete_bucket(&bucket)).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            Method::GET if has("location") => {
                let s = store();
                let b = bucket.clone();
                if !blocking(move || Ok(s.local.bucket_exists(&b))).await? {
                    return Err(StoreError::NoSuchBucket(bucket).into());
                }
                // S3 answers an empty constraint for us-east-1.
                let s = store();
                let constraint = if s.region == "us-east-1" {
                    ""
                } else {
                    s.region.as_str()
                };
                Ok(xml_response(
                    StatusCode::OK,
                    format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{}</LocationConstraint>",
                        esc(constraint)
                    ),
                ))
            }
            Method::GET if has("uploads") || has("versioning") => Err(not_implemented()),
            Method::GET => list::list_objects(store(), bucket, &q).await,
            _ => Err(method_not_allowed()),
        };
    }
    match method {
        Method::PUT if has("uploadId") => {
            let part: u32 = get("partNumber")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| invalid("UploadPart needs a numeric partNumber"))?;
            let upload = get("uploadId").unwrap_or_default();
            if req.headers().contains_key("x-amz-copy-source") {
                return Err(not_implemented());
            }
            let s = store();
            let body = body::receive(&s, req).await?;
            let etag =
                blocking(move || s.local.put_part(&bucket, &key, &upload, part, body)).await?;
            Ok((StatusCode::OK, [("etag", etag)]).into_response())
        }
        Method::PUT => {
            if req.headers().contains_key("x-amz-copy-source") {
                return Err(not_implemented());
            }
            let ct = header(req.headers(), "content-type");
            let s = store();
            let body = body::receive(&s, req).await?;
            let m = blocking(move || s.local.put(&bucket, &key, ct, body)).await?;
            Ok((StatusCode::OK, [("etag", m.etag)]).into_response())
        }
        Method::POST if has("uploads") => {
            let ct = header(req.headers(), "content-type");
            let s = store();
            let (b, k) = (bucket.clone(), key.clone());
            let id = blocking(move || s.local.create_upload(&b, &k, ct)).await?;
            Ok(xml_response(
                StatusCode::OK,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
                    esc(&bucket),
                    esc(&key)
                ),
            ))
        }
        Method::POST if has("uploadId") => {
            let upload = get("uploadId").unwrap_or_default();
            let declared = header(req.headers(), "x-amz-content-sha256").unwrap_or_default();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .map_err(|_| invalid("the CompleteMultipartUpload body is over 1 MiB"))?;
            if declared.len() == 64
                && !declared.eq_ignore_ascii_case(&lichen_sigv4::hex_sha256(&body))
            {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "XAmzContentSHA256Mismatch",
                    "the body's SHA-256 is not the x-amz-content-sha256 the request was signed with",
                ));
            }
            let parts = xml::parts(&String::from_utf8_lossy(&body))
                .map_err(|m| err(StatusCode::BAD_REQUEST, "MalformedXML", m))?;
            let s = store();
            let (b, k) = (bucket.clone(), key.clone());
            let m = blocking(move || s.local.complete_upload(&b, &k, &upload, &parts)).await?;
            Ok(xml_response(
                StatusCode::OK,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Location>/{0}/{1}</Location><Bucket>{0}</Bucket><Key>{1}</Key><ETag>{2}</ETag></CompleteMultipartUploadResult>",
                    esc(&bucket),
                    esc(&key),
                    esc(&m.etag)
                ),
            ))
        }
        Method::DELETE if has("uploadId") => {
            let upload = get("uploadId").unwrap_or_default();
            let s = store();
            blocking(move || s.local.abort_upload(&bucket, &key, &upload)).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::DELETE => {
            let s = store();
            blocking(move || s.local.delete(&bucket, &key)).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::GET | Method::HEAD => {
            let range = header(req.headers(), "range");
            let s = store();
            let (m, data) = blocking(move || s.local.head(&bucket, &key)).await?;
            get_object(m, &data, range.as_deref(), method == Method::HEAD).await
        }
        _ => Err(method_not_allowed()),
    }
}

fn method_not_allowed() -> S3Error {
    err(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "the method is not allowed against this resource",
    )
}

fn not_implemented() -> S3Error {
    err(
        StatusCode::NOT_IMPLEMENTED,
        "NotImplemented",
        "this S3 operation is not served by the fleet's object store",
    )
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> S3Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "object store task failed",
            )
        })?
        .map_err(S3Error::from)
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: the inclusive range, None for the whole
/// object, Err when unsatisfiable.
fn parse_range(range: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multiple ranges: S3 answers the whole object.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 || size == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().map_err(|_| ())?, size.saturating_sub(1)),
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().map_err(|_| ())?, b.parse().map_err(|_| ())?);
            if b < a {
                return Ok(None);
            }
            (a, b.min(size.saturating_sub(1)))
        }
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn get_object(
    m: ObjectMeta,
    data: &Path,
    range: Option<&str>,
    head: bool,
) -> S3Result<Response> {
    let range = match range.map(|r| parse_range(r, m.size)) {
        None => None,
        Some(Ok(r)) => r,
        Some(Err(())) => {
            return Err(S3Error {
                resource: m.key.clone(),
                ..err(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    format!(
                        "the requested range is not satisfiable (object size {})",
                        m.size
                    ),
                )
            });
        }
    };
    let (status, start, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, m.size),
    };
    let mut r = Response::builder()
        .status(status)
        .header("etag", &m.etag)
        .header("content-length", len.to_string())
        .header("accept-ranges", "bytes")
        .header("last-modified", xml::http_date(m.last_modified_ms))
        .header(
            "content-type",
            m.content_type.as_deref().unwrap_or("binary/octet-stream"),
        );
    if range.is_some() {
        r = r.header(
            "content-range",
            format!("bytes {start}-{}/{}", start + len - 1, m.size),
        );
    }
    let body = if head {
        Body::empty()
    } else {
        let mut f = tokio::fs::File::open(data).await.map_err(|e| {
            S3Error::from(StoreError::Io {
                path: data.to_owned(),
                source: e,
            })
        })?;
        f.seek(std::io::SeekFrom::Start(start)).await.map_err(|e| {
            S3Error::from(StoreError::Io {
                path: data.to_owned(),
                source: e,
            })
        })?;
        Body::from_stream(tokio_util::io::ReaderStream::new(f.take(len)))
    };
    r.body(body).map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_http_semantics() {
        assert_eq!(parse_range("bytes=0-4", 10), Ok(Some((0, 4))));
        assert_eq!(parse_range("bytes=5-", 10), Ok(Some((5, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(parse_range("bytes=8-100", 10), Ok(Some((8, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Err(()));
        assert_eq!(parse_range("items=1-2", 10), Ok(None));
    }

    #[test]
    fn actions_name_the_s3_operation() {
        assert_eq!(s3_action(&Method::GET, "/b/k", ""), "s3:GetObject");
        assert_eq!(s3_action(&Method::PUT, "/b", ""), "s3:CreateBucket");
        assert_eq!(s3_resource("/b/a%20b"), "arn:aws:s3:::b/a b");
    }
}
