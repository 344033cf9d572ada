//! The little XML S3 needs: escaping, its timestamps, and reading CompleteMultipartUpload.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn unesc(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

pub fn xml_response(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/xml")], body).into_response()
}

fn at(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// `2026-01-02T03:04:05.678Z`.
pub fn iso8601(ms: i64) -> String {
    let t = at(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// RFC 7231 date (`Last-Modified`).
pub fn http_date(ms: i64) -> String {
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    at(ms).format(f).unwrap_or_default()
}

fn inner<'a>(s: &'a str, tag: &str) -> Option<&'a str> {
    let open = s.find(&format!("<{tag}>"))? + tag.len() + 2;
    let close = s[open..].find(&format!("</{tag}>"))? + open;
    Some(&s[open..close])
}

/// The `(PartNumber, ETag)` pairs of a CompleteMultipartUpload body, in document order.
pub fn parts(body: &str) -> Result<Vec<(u32, String)>, String> {
    let mut out = vec![];
    let mut rest = body;
    while let Some(i) = rest.find("<Part>") {
        let end = rest[i..].find("</Part>").ok_or("a <Part> is not closed")? + i;
        let part = &rest[i + 6..end];
        let n = inner(part, "PartNumber")
            .and_then(|n| n.trim().parse().ok())
            .ok_or("a <Part> has no numeric <PartNumber>")?;
        let etag = inner(part, "ETag").ok_or("a <Part> has no <ETag>")?;
        out.push((n, unesc(etag.trim())));
        rest = &rest[end + 7..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_multipart_bodies_are_read() {
        let b = r#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>&quot;aa&quot;</ETag><PartNumber>1</PartNumber></Part><Part><ChecksumCRC32>x</ChecksumCRC32><ETag>"bb"</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"#;
        assert_eq!(
            parts(b).unwrap(),
            vec![(1, "\"aa\"".to_string()), (2, "\"bb\"".to_string())]
        );
        assert!(parts("<Part><ETag>x</ETag></Part>").is_err());
        assert_eq!(iso8601(1_000), "1970-01-01T00:00:01.000Z");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
