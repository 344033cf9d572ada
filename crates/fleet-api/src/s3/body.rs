//! Receiving an object's body: streamed to a temporary file, `aws-chunked` decoded, the
//! declared payload hash and CRC32 checksum checked before anything is committed.

use super::{
    MAX_OBJECT, ObjectStore, S3Error, S3Result, blocking, chunked, err, header, invalid, store,
};
use axum::extract::Request;
use axum::http::StatusCode;
use futures_util::StreamExt;
use std::sync::Arc;

/// Receives a request body into a temporary file, decoding `aws-chunked` and checking the
/// declared payload hash and any CRC32 checksum.
pub(super) async fn receive(s: &Arc<ObjectStore>, req: Request) -> S3Result<store::Incoming> {
    let h = req.headers().clone();
    let declared = header(&h, "x-amz-content-sha256").unwrap_or_default();
    let chunked = match declared.as_str() {
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => true,
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
        | "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
        | "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"
        | "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER" => {
            return Err(err(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                format!(
                    "x-amz-content-sha256 {declared} (signed chunks) is not served; send the \
                     payload's SHA-256, UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER"
                ),
            ));
        }
        _ => header(&h, "content-encoding").is_some_and(|e| e.contains("aws-chunked")),
    };
    let s2 = s.clone();
    let mut incoming = blocking(move || s2.local.incoming()).await?;
    let mut decoder = chunked::Decoder::default();
    let mut stream = req.into_body().into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let flush = async |incoming: store::Incoming, data: Vec<u8>| {
        tokio::task::spawn_blocking(move || {
            let mut incoming = incoming;
            incoming.write(&data).map(|_| incoming)
        })
        .await
        .map_err(|_| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "object store task failed",
            )
        })?
        .map_err(S3Error::from)
    };
    let mut received: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| invalid(format!("reading the request body: {e}")))?;
        received += chunk.len() as u64;
        if received > MAX_OBJECT + (1 << 20) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "EntityTooLarge",
                format!("the body is over {MAX_OBJECT} bytes; use a multipart upload"),
            ));
        }
        if chunked {
            decoder
                .feed(&chunk, &mut |b| {
                    pending.extend_from_slice(b);
                    Ok(())
                })
                .map_err(|m| invalid(format!("the aws-chunked body is malformed: {m}")))?;
        } else {
            pending.extend_from_slice(&chunk);
        }
        if pending.len() >= 1 << 18 {
            incoming = flush(incoming, std::mem::take(&mut pending)).await?;
        }
    }
    incoming = flush(incoming, pending).await?;
    if chunked && !decoder.finished() {
        return Err(invalid("the aws-chunked body ended before its final chunk"));
    }
    if incoming.size > MAX_OBJECT {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "EntityTooLarge",
            format!("the object is over {MAX_OBJECT} bytes; use a multipart upload"),
        ));
    }
    if declared.len() == 64
        && declared.bytes().all(|b| b.is_ascii_hexdigit())
        && !declared.eq_ignore_ascii_case(&incoming.sha256_hex())
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "XAmzContentSHA256Mismatch",
            "the body's SHA-256 is not the x-amz-content-sha256 the request was signed with",
        ));
    }
    let crc = decoder
        .trailers
        .iter()
        .find(|(k, _)| k == "x-amz-checksum-crc32")
        .map(|(_, v)| v.clone())
        .or_else(|| header(&h, "x-amz-checksum-crc32"));
    if let Some(want) = crc
        && want != incoming.crc32_b64()
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "BadDigest",
            "the body's CRC32 is not the x-amz-checksum-crc32 the request declared",
        ));
    }
    Ok(incoming)
}
