//! Query-string ("presigned URL") SigV4: [`presign`] makes a URL's query for a GET that needs
//! no headers, [`verify_presigned`] checks one as received. The payload is `UNSIGNED-PAYLOAD`
//! and only `host` is signed, as S3 presigns.

use crate::verify::{
    canonical_query, canonical_uri, collapse_spaces, format_amz_date, header_values,
    parse_amz_date, percent_decode, s3_canonical_uri,
};
use crate::{Credentials, Request, Verified, VerifyError, hex, hex_sha256, hmac_sha256};
use crate::{signing_key, uri_encode};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

/// The longest validity a presigned URL may ask for (S3's limit: 7 days).
pub const MAX_PRESIGN_EXPIRY_SECONDS: i64 = 7 * 24 * 3600;

/// What to presign. `path` is URI-encoded as it will be sent.
pub struct PresignInput<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    /// `YYYYMMDD'T'HHMMSS'Z'`.
    pub amz_date: &'a str,
    pub expires_seconds: i64,
}

fn canonical_path(service: &str, path: &str) -> String {
    if service == "s3" {
        s3_canonical_uri(path)
    } else {
        canonical_uri(path)
    }
}

/// The query string (already encoded, without `?`) that makes `input` a presigned request.
pub fn presign(input: &PresignInput<'_>, creds: &Credentials) -> String {
    let date = &input.amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", input.region, input.service);
    let mut pairs: Vec<(String, String)> = vec![
        ("X-Amz-Algorithm".into(), "AWS4-HMAC-SHA256".into()),
        (
            "X-Amz-Credential".into(),
            format!("{}/{scope}", creds.access_key_id),
        ),
        ("X-Amz-Date".into(), input.amz_date.into()),
        ("X-Amz-Expires".into(), input.expires_seconds.to_string()),
        ("X-Amz-SignedHeaders".into(), "host".into()),
    ];
    if let Some(t) = &creds.session_token {
        pairs.push(("X-Amz-Security-Token".into(), t.clone()));
    }
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_request = format!(
        "{}\n{}\n{}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
        input.method,
        canonical_path(input.service, input.path),
        canonical_query(&query),
        input.host,
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        input.amz_date,
        hex_sha256(canonical_request.as_bytes())
    );
    let key = signing_key(&creds.secret_access_key, date, input.region, input.service);
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    format!("{query}&X-Amz-Signature={signature}")
}

/// Whether a query string carries a presigned signature.
pub fn is_presigned(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p.starts_with("X-Amz-Signature=") || p.starts_with("X-Amz-Algorithm="))
}

/// Checks a presigned request: the signature over the query (without `X-Amz-Signature`), the
/// signed headers and `UNSIGNED-PAYLOAD`; the URL must be issued no later than 15 minutes from
/// now and not expired.
pub fn verify_presigned(
    req: &Request<'_>,
    now: OffsetDateTime,
    secret_for: impl FnOnce(&str) -> Option<String>,
) -> Result<Verified, VerifyError> {
    let malformed = |m: &str| VerifyError::Malformed(m.to_string());
    let mut params: Vec<(String, String)> = Vec::new();
    let mut kept: Vec<&str> = Vec::new();
    for p in req.query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let k = percent_decode(k);
        if k != "X-Amz-Signature" {
            kept.push(p);
        }
        params.push((k, percent_decode(v)));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if get("X-Amz-Algorithm") != Some("AWS4-HMAC-SHA256") {
        return Err(malformed("X-Amz-Algorithm must be AWS4-HMAC-SHA256"));
    }
    let credential = get("X-Amz-Credential").ok_or_else(|| malformed("no X-Amz-Credential"))?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, "aws4_request"] = parts.as_slice() else {
        return Err(malformed(
            "X-Amz-Credential must be <access key id>/<yyyymmdd>/<region>/<service>/aws4_request",
        ));
    };
    let amz_date = get("X-Amz-Date").ok_or_else(|| malformed("no X-Amz-Date"))?;
    let when = parse_amz_date(amz_date)?;
    if amz_date.get(..8) != Some(*date) {
        return Err(malformed(
            "X-Amz-Credential's date is not the day of X-Amz-Date",
        ));
    }
    let expires: i64 = get("X-Amz-Expires")
        .and_then(|e| e.parse().ok())
        .filter(|e| (1..=MAX_PRESIGN_EXPIRY_SECONDS).contains(e))
        .ok_or_else(|| malformed("X-Amz-Expires must be 1 to 604800 seconds"))?;
    let signed: Vec<&str> = get("X-Amz-SignedHeaders")
        .ok_or_else(|| malformed("no X-Amz-SignedHeaders"))?
        .split(';')
        .collect();
    if !signed.contains(&"host") {
        return Err(malformed("X-Amz-SignedHeaders must include host"));
    }
    let signature = get("X-Amz-Signature")
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| malformed("X-Amz-Signature must be 64 hex digits"))?
        .to_ascii_lowercase();
    if when - now > crate::MAX_CLOCK_SKEW {
        return Err(VerifyError::Skewed {
            request: amz_date.to_string(),
            now: format_amz_date(now),
        });
    }
    if now > when + Duration::seconds(expires) {
        return Err(VerifyError::Expired(format_amz_date(
            when + Duration::seconds(expires),
        )));
    }
    let mut canonical_headers = String::new();
    for name in &signed {
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
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\nUNSIGNED-PAYLOAD",
        req.method.to_ascii_uppercase(),
        canonical_path(service, req.path),
        canonical_query(&kept.join("&")),
        canonical_headers,
        signed.join(";"),
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical_request.as_bytes())
    );
    let Some(secret) = secret_for(akid) else {
        return Err(VerifyError::UnknownAccessKey(akid.to_string()));
    };
    let key = signing_key(&secret, date, region, service);
    let expected = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    if !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        return Err(VerifyError::SignatureMismatch);
    }
    Ok(Verified {
        access_key_id: akid.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        session_token: get("X-Amz-Security-Token").map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    fn input<'a>(path: &'a str) -> PresignInput<'a> {
        PresignInput {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path,
            region: "us-east-1",
            service: "s3",
            amz_date: "20130524T000000Z",
            expires_seconds: 86400,
        }
    }

    /// The presigned-URL example of the S3 SigV4 documentation ("Authenticating Requests:
    /// Using Query Parameters").
    #[test]
    fn matches_the_documented_s3_example() {
        let doc = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let q = presign(&input("/test.txt"), &doc);
        assert!(
            q.ends_with(
                "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{q}"
        );
    }

    fn check(path: &str, query: &str, now: &str) -> Result<Verified, VerifyError> {
        let headers = vec![(
            "Host".to_string(),
            "examplebucket.s3.amazonaws.com".to_string(),
        )];
        verify_presigned(
            &Request {
                method: "GET",
                path,
                query,
                headers: &headers,
                payload_sha256: "",
            },
            parse_amz_date(now).unwrap(),
            |_| Some(creds().secret_access_key),
        )
    }

    #[test]
    fn a_presigned_url_verifies_until_it_expires() {
        let q = presign(&input("/dir/a%20b.txt"), &creds());
        let v = check("/dir/a%20b.txt", &q, "20130524T120000Z").unwrap();
        assert_eq!(v.service, "s3");
        assert_eq!(
            check("/dir/a%20b.txt", &q, "20130525T000001Z").unwrap_err(),
            VerifyError::Expired("20130525T000000Z".into())
        );
        assert_eq!(
            check("/dir/other.txt", &q, "20130524T120000Z").unwrap_err(),
            VerifyError::SignatureMismatch
        );
        let longer = q.replace("X-Amz-Expires=86400", "X-Amz-Expires=86401");
        assert_eq!(
            check("/dir/a%20b.txt", &longer, "20130524T120000Z").unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert!(matches!(
            check("/dir/a%20b.txt", &q, "20130523T000000Z").unwrap_err(),
            VerifyError::Skewed { .. }
        ));
    }
}
