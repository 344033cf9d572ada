//! Verification of SigV4 header-signed requests (`Authorization: AWS4-HMAC-SHA256 …`).
//!
//! The canonical request is rebuilt the way botocore and the published test suite build it: the
//! path as received has its dot segments and empty segments removed and is URI-encoded once more
//! (every service but S3 double-encodes); query pairs are decoded, re-encoded and sorted; only
//! the headers named in `SignedHeaders` take part, values trimmed with inner runs of spaces
//! collapsed and repeated headers joined with `,`.

use crate::{hex, hex_sha256, hmac_sha256, signing_key, uri_encode};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime, PrimitiveDateTime, macros::format_description};

/// How far the request's `X-Amz-Date` may be from the verifier's clock, either way (AWS: 15 min).
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(15);

/// An incoming request as received on the wire.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent, still percent-encoded (e.g. `/topics/a%2Fb`).
    pub path: &'a str,
    /// The raw query string without `?` (empty when none).
    pub query: &'a str,
    /// Every header, names in any case; repeated names appear repeatedly.
    pub headers: &'a [(String, String)],
    /// Lower-case hex SHA-256 of the body as received.
    pub payload_sha256: &'a str,
}

/// Who signed, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    pub region: String,
    /// The signing name of the credential scope (`iot`, `iotdata`, `greengrass`, …): the
    /// service the client meant, which routes colliding paths.
    pub service: String,
    /// `x-amz-security-token`, for temporary credentials; the caller checks it belongs to the key.
    pub session_token: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the request is not signed: it has no Authorization header; sign it with SigV4")]
    Missing,
    #[error("the request's SigV4 signature is malformed: {0}")]
    Malformed(String),
    #[error("access key id {0:?} is not known here; use credentials issued by this service")]
    UnknownAccessKey(String),
    #[error(
        "the request signature we calculated does not match the signature you provided; check \
         the secret access key and signing method"
    )]
    SignatureMismatch,
    #[error(
        "signature expired or not yet valid: {request} is more than 15 minutes from the server's \
         time {now}; correct the client's clock"
    )]
    Skewed { request: String, now: String },
    #[error("the presigned URL expired at {0}; ask for a new one")]
    Expired(String),
}

/// Checks `req`'s SigV4 header signature. `secret_for` maps an access key id to its secret
/// (None: unknown key). On success returns the signer and the credential scope.
pub fn verify(
    req: &Request<'_>,
    now: OffsetDateTime,
    secret_for: impl FnOnce(&str) -> Option<String>,
) -> Result<Verified, VerifyError> {
    let auth = header_values(req.headers, "authorization");
    let auth = match auth.as_slice() {
        [] => return Err(VerifyError::Missing),
        [one] => *one,
        _ => return Err(malformed("more than one Authorization header")),
    };
    let parsed = parse_authorization(auth)?;
    let amz_date = match header_values(req.headers, "x-amz-date").as_slice() {
        [one] => one.trim().to_string(),
        [] => return Err(malformed("no X-Amz-Date header")),
        _ => return Err(malformed("more than one X-Amz-Date header")),
    };
    let when = parse_amz_date(&amz_date)?;
    if parsed.date != amz_date[..8] {
        return Err(malformed(&format!(
            "credential scope date {} is not the day of X-Amz-Date {amz_date}",
            parsed.date
        )));
    }
    if !parsed.signed_headers.iter().any(|h| h == "host")
        || !parsed.signed_headers.iter().any(|h| h == "x-amz-date")
    {
        return Err(malformed("SignedHeaders must include host and x-amz-date"));
    }
    if (when - now).abs() > MAX_CLOCK_SKEW {
        return Err(VerifyError::Skewed {
            request: amz_date,
            now: format_amz_date(now),
        });
    }

    let mut canonical_headers = String::new();
    for name in &parsed.signed_headers {
        let values = header_values(req.headers, name);
        if values.is_empty() {
            return Err(malformed(&format!(
                "signed header {name:?} is not in the request"
            )));
        }
        let joined = values
            .iter()
            .map(|v| collapse_spaces(v))
            .collect::<Vec<_>>()
            .join(",");
        canonical_headers.push_str(&format!("{name}:{joined}\n"));
    }
    // S3 signs the path as sent (no normalization, no second encoding) and the payload hash
    // the client declared in x-amz-content-sha256 (which may be UNSIGNED-PAYLOAD or a streaming
    // marker; the caller checks a hex one against the body it receives).
    let s3 = parsed.service == "s3";
    let declared;
    let payload_sha256 = if s3 {
        declared = header_values(req.headers, "x-amz-content-sha256")
            .first()
            .map(|v| v.trim().to_string())
            .ok_or_else(|| malformed("an s3 request needs an x-amz-content-sha256 header"))?;
        declared.as_str()
    } else {
        req.payload_sha256
    };
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method.to_ascii_uppercase(),
        if s3 {
            s3_canonical_uri(req.path)
        } else {
            canonical_uri(req.path)
        },
        canonical_query(req.query),
        canonical_headers,
        parsed.signed_headers.join(";"),
        payload_sha256,
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        parsed.date, parsed.region, parsed.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical_request.as_bytes())
    );
    let Some(secret) = secret_for(&parsed.access_key_id) else {
        return Err(VerifyError::UnknownAccessKey(parsed.access_key_id));
    };
    let key = signing_key(&secret, &parsed.date, &parsed.region, &parsed.service);
    let expected = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    let given = parsed.signature.to_ascii_lowercase();
    if expected.len() != given.len() || !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        return Err(VerifyError::SignatureMismatch);
    }
    let session_token = header_values(req.headers, "x-amz-security-token")
        .first()
        .map(|t| t.trim().to_string());
    Ok(Verified {
        access_key_id: parsed.access_key_id,
        region: parsed.region,
        service: parsed.service,
        session_token,
    })
}

struct Authorization {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
}

fn malformed(what: &str) -> VerifyError {
    VerifyError::Malformed(what.to_string())
}

fn parse_authorization(value: &str) -> Result<Authorization, VerifyError> {
    let rest = value
        .trim()
        .strip_prefix("AWS4-HMAC-SHA256")
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| malformed("the Authorization algorithm is not AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(malformed(
            "Authorization needs Credential=, SignedHeaders= and Signature=",
        ));
    };
    let parts: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, "aws4_request"] = parts.as_slice() else {
        return Err(malformed(
            "Credential must be <access key id>/<yyyymmdd>/<region>/<service>/aws4_request",
        ));
    };
    if akid.is_empty() || region.is_empty() || service.is_empty() || date.len() != 8 {
        return Err(malformed("Credential has an empty or ill-formed part"));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(malformed(
            "SignedHeaders must be lower-case names separated by ;",
        ));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("Signature must be 64 hex digits"));
    }
    Ok(Authorization {
        access_key_id: akid.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_string(),
    })
}

pub(crate) fn parse_amz_date(s: &str) -> Result<OffsetDateTime, VerifyError> {
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    PrimitiveDateTime::parse(s, format)
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|_| malformed(&format!("X-Amz-Date {s:?} is not YYYYMMDDTHHMMSSZ")))
}

pub(crate) fn format_amz_date(t: OffsetDateTime) -> String {
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    t.format(format).unwrap_or_default()
}

pub(crate) fn header_values<'h>(headers: &'h [(String, String)], name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

pub(crate) fn collapse_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// S3's canonical URI: the path exactly as sent (`/` when empty).
pub(crate) fn s3_canonical_uri(path: &str) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        path.into()
    }
}

/// The path with dot and empty segments removed, URI-encoded again (botocore's
/// `normalize_url_path` then `quote(safe='/~')`).
pub(crate) fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut normalized = String::from("/");
    normalized.push_str(&out.join("/"));
    if path.ends_with('/') && !out.is_empty() {
        normalized.push('/');
    }
    uri_encode(&normalized, true)
}

pub(crate) fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Decodes `%XX`; anything else (including a stray `%`) is kept as it is.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests;
