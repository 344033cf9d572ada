//! AWS Signature Version 4: [`sign`] for outgoing requests and [`verify`] for incoming ones
//! (header form; S3's canonical form for the `s3` signing name), [`presign`] and
//! [`verify_presigned`] for query-string (presigned URL) requests.
//!
//! Pure: no I/O, no clock of its own (the verifier takes `now`), so the same code serves the
//! core's exporters and the fleet's control plane.

mod presign;
mod sign;
mod verify;

pub use presign::{
    MAX_PRESIGN_EXPIRY_SECONDS, PresignInput, is_presigned, presign, verify_presigned,
};
pub use sign::{Credentials, SignInput, amz_date_now, sign, uri_encode};
pub use verify::{MAX_CLOCK_SKEW, Request, Verified, VerifyError, verify};

use ring::hmac;
use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of `data` (the payload hash SigV4 signs).
pub fn hex_sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// The derived key `kSigning` for one day, region and service.
pub(crate) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}
