//! Request signing (header auth, signed payload hash), as the exporters send it.

use crate::{hex, hex_sha256, hmac_sha256, signing_key};

/// Static or fetched AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// URI-encodes per SigV4: unreserved characters stay, everything else is %XX; `/` stays when
/// `keep_slash` (paths).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What to sign: `path` is already URI-encoded as sent; `query` pairs are raw (encoded here).
pub struct SignInput<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    /// Headers besides host/x-amz-date/x-amz-security-token/x-amz-content-sha256, lower-case names.
    pub headers: &'a [(String, String)],
    pub payload_sha256: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    /// `YYYYMMDD'T'HHMMSS'Z'`.
    pub amz_date: &'a str,
    /// Whether to send `x-amz-content-sha256` (S3 requires it).
    pub content_sha256_header: bool,
}

/// Returns the canonical query string and the headers to add (x-amz-date, token, content hash,
/// Authorization).
pub fn sign(input: &SignInput<'_>, creds: &Credentials) -> (String, Vec<(String, String)>) {
    let mut query: Vec<(String, String)> = input
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut added = vec![("x-amz-date".to_string(), input.amz_date.to_string())];
    if input.content_sha256_header {
        added.push((
            "x-amz-content-sha256".into(),
            input.payload_sha256.to_string(),
        ));
    }
    if let Some(t) = &creds.session_token {
        added.push(("x-amz-security-token".into(), t.clone()));
    }
    let mut signed: Vec<(String, String)> = input
        .headers
        .iter()
        .chain(added.iter())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .chain(std::iter::once((
            "host".to_string(),
            input.host.to_string(),
        )))
        .collect();
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = signed
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        input.method,
        input.path,
        canonical_query,
        canonical_headers,
        signed_headers,
        input.payload_sha256
    );
    let date = &input.amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", input.region, input.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        input.amz_date,
        hex_sha256(canonical_request.as_bytes())
    );
    let k_signing = signing_key(&creds.secret_access_key, date, input.region, input.service);
    let signature = hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    added.push((
        "Authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    (canonical_query, added)
}

/// The current time as SigV4's `x-amz-date`.
pub fn amz_date_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `get-vanilla` case of the AWS SigV4 test suite.
    #[test]
    fn matches_the_published_get_vanilla_vector() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let (_, headers) = sign(
            &SignInput {
                method: "GET",
                host: "example.amazonaws.com",
                path: "/",
                query: &[],
                headers: &[],
                payload_sha256: &hex_sha256(b""),
                region: "us-east-1",
                service: "service",
                amz_date: "20150830T123600Z",
                content_sha256_header: false,
            },
            &creds,
        );
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "Authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn encoding_keeps_unreserved_only() {
        assert_eq!(uri_encode("a b/c~d*", false), "a%20b%2Fc~d%2A");
        assert_eq!(uri_encode("dir/file name", true), "dir/file%20name");
    }
}
