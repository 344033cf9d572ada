//! One authenticated request, decoded: path segments and query pairs percent-decoded, the JSON
//! body parsed on demand.

use crate::error::{ApiError, ApiResult};
use axum::http::{HeaderMap, Method};
use bytes::Bytes;
use lichen_sigv4::Verified;
use serde_json::Value;

pub struct Call {
    pub method: Method,
    /// The path as received (for messages).
    pub path: String,
    /// Path segments, each percent-decoded after splitting on `/` (so `%2F` stays inside).
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Who signed the request, and for which service.
    pub caller: Verified,
}

impl Call {
    pub fn segs(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }

    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn q_bool(&self, name: &str) -> ApiResult<Option<bool>> {
        match self.q(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(format!(
                "query parameter {name}={v:?} must be true or false"
            ))),
        }
    }

    pub fn q_int(&self, name: &str) -> ApiResult<Option<i64>> {
        self.q(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::invalid(format!("query parameter {name}={v:?} must be an integer"))
                })
            })
            .transpose()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The JSON body as an object (`{}` when there is none).
    pub fn json(&self) -> ApiResult<serde_json::Map<String, Value>> {
        if self.body.is_empty() {
            return Ok(Default::default());
        }
        match serde_json::from_slice(&self.body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ApiError::invalid("the request body must be a JSON object")),
            Err(e) => Err(ApiError::invalid(format!(
                "the request body is not valid JSON: {e}"
            ))),
        }
    }
}

/// Splits on `/`, then percent-decodes each segment (a segment that is not valid UTF-8 after
/// decoding is refused).
pub fn split_path(path: &str) -> ApiResult<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "path segment {s:?} is not valid percent-encoded UTF-8"
                ))
            })
        })
        .collect()
}

pub fn split_query(query: &str) -> ApiResult<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match (percent_decode(k), percent_decode(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(ApiError::invalid(format!(
                    "query parameter {p:?} is not valid percent-encoded UTF-8"
                ))),
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Epoch milliseconds as the epoch seconds botocore expects in bodies.
pub fn seconds(ms: i64) -> Value {
    serde_json::json!(ms as f64 / 1000.0)
}

/// A string member of a JSON body.
pub fn str_field<'a>(
    body: &'a serde_json::Map<String, Value>,
    name: &str,
) -> ApiResult<Option<&'a str>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(format!("{name} must be a string"))),
    }
}

pub fn required<'a>(v: Option<&'a str>, name: &str) -> ApiResult<&'a str> {
    v.ok_or_else(|| ApiError::invalid(format!("{name} is required")))
}
