//! ListBuckets and ListObjects (v1 and v2, prefixes, delimiters, URL encoding, pages).

use super::xml::{esc, iso8601, xml_response};
use super::{ObjectStore, S3Result, blocking, decode, invalid};
use axum::http::StatusCode;
use axum::response::Response;
use std::sync::Arc;

pub(super) async fn list_buckets(s: Arc<ObjectStore>) -> S3Result<Response> {
    let buckets = blocking(move || s.local.list_buckets()).await?;
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>lichen</ID><DisplayName>lichen</DisplayName></Owner><Buckets>",
    );
    for (name, created) in buckets {
        x.push_str(&format!(
            "<Bucket><Name>{}</Name><CreationDate>{}</CreationDate></Bucket>",
            esc(&name),
            iso8601(created)
        ));
    }
    x.push_str("</Buckets></ListAllMyBucketsResult>");
    Ok(xml_response(StatusCode::OK, x))
}

pub(super) async fn list_objects(
    s: Arc<ObjectStore>,
    bucket: String,
    q: &[(String, String)],
) -> S3Result<Response> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let prefix = get("prefix").unwrap_or_default();
    let delimiter = get("delimiter").filter(|d| !d.is_empty());
    let v2 = get("list-type").as_deref() == Some("2");
    let url = get("encoding-type").as_deref() == Some("url");
    let max: usize = match get("max-keys") {
        None => 1000,
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| invalid(format!("max-keys {m:?} is not a number")))?
            .min(1000),
    };
    let after = if v2 {
        get("continuation-token")
            .map(|t| decode(&t))
            .or_else(|| get("start-after"))
    } else {
        get("marker")
    }
    .unwrap_or_default();
    let (b, p) = (bucket.clone(), prefix.clone());
    let all = blocking(move || s.local.list(&b, &p)).await?;
    let enc = |k: &str| {
        if url {
            lichen_sigv4::uri_encode(k, true)
        } else {
            k.to_string()
        }
    };
    let mut contents = String::new();
    let mut prefixes: Vec<String> = vec![];
    let mut count = 0;
    let mut last = String::new();
    let mut truncated = false;
    for m in all.iter().filter(|m| m.key.as_str() > after.as_str()) {
        let common = delimiter.as_ref().and_then(|d| {
            m.key[prefix.len()..]
                .find(d.as_str())
                .map(|i| m.key[..prefix.len() + i + d.len()].to_string())
        });
        if let Some(c) = &common
            && prefixes.last() == Some(c)
        {
            continue;
        }
        if common
            .as_ref()
            .is_some_and(|c| c.as_str() <= after.as_str())
        {
            continue;
        }
        if count == max {
            truncated = true;
            break;
        }
        count += 1;
        match common {
            Some(c) => {
                last = c.clone();
                prefixes.push(c);
            }
            None => {
                last = m.key.clone();
                contents.push_str(&format!(
                    "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                    esc(&enc(&m.key)),
                    iso8601(m.last_modified_ms),
                    esc(&m.etag),
                    m.size
                ));
            }
        }
    }
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{}</Name><Prefix>{}</Prefix><MaxKeys>{max}</MaxKeys><IsTruncated>{truncated}</IsTruncated>",
        esc(&bucket),
        esc(&enc(&prefix))
    );
    if url {
        x.push_str("<EncodingType>url</EncodingType>");
    }
    if let Some(d) = &delimiter {
        x.push_str(&format!("<Delimiter>{}</Delimiter>", esc(&enc(d))));
    }
    if v2 {
        x.push_str(&format!("<KeyCount>{count}</KeyCount>"));
        if let Some(t) = get("continuation-token") {
            x.push_str(&format!(
                "<ContinuationToken>{}</ContinuationToken>",
                esc(&t)
            ));
        }
        if truncated {
            x.push_str(&format!(
                "<NextContinuationToken>{}</NextContinuationToken>",
                esc(&lichen_sigv4::uri_encode(&last, false))
            ));
        }
    } else if truncated {
        x.push_str(&format!("<NextMarker>{}</NextMarker>", esc(&enc(&last))));
    }
    x.push_str(&contents);
    for p in prefixes {
        x.push_str(&format!(
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            esc(&enc(&p))
        ));
    }
    x.push_str("</ListBucketResult>");
    Ok(xml_response(StatusCode::OK, x))
}
