//! Signed component versions (our extension): an Ed25519 signature over the exact recipe bytes
//! a version is published with, carried as `lichenSignature: {"keyId", "signature"}` on
//! CreateComponentVersion and returned on resolution. `keyId` is the hex SHA-256 of the raw
//! 32-byte public key; cores list trusted keys as base64 raw public keys.

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Reads a PKCS#8 Ed25519 private key in PEM (`openssl genpkey -algorithm ed25519`, or
/// `lichen fleet component keygen`).
pub fn load_key(pem: &str) -> Result<Ed25519KeyPair, String> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err(
            "no \"-----BEGIN PRIVATE KEY-----\" block (a PKCS#8 Ed25519 key in PEM)".into(),
        );
    }
    let der = B64
        .decode(body.trim())
        .map_err(|e| format!("the PEM body is not base64: {e}"))?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| format!("not a PKCS#8 Ed25519 private key: {e}"))
}

/// A new key: (PKCS#8 PEM, base64 raw public key).
pub fn generate() -> Result<(String, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let b64 = B64.encode(pkcs8.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    Ok((pem, B64.encode(pair.public_key().as_ref())))
}

/// Standard padded base64.
pub fn base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// `keyId`: hex SHA-256 of the raw public key.
pub fn key_id(public_key: &[u8]) -> String {
    lichen_sigv4::hex_sha256(public_key)
}

/// The `lichenSignature` value for `recipe` bytes.
pub fn sign_recipe(key: &Ed25519KeyPair, recipe: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "keyId": key_id(key.public_key().as_ref()),
        "signature": B64.encode(key.sign(recipe).as_ref()),
    })
}

/// Whether `signature` (base64) is `public_key`'s (base64 raw) signature over `recipe`.
pub fn verify_recipe(public_key_b64: &str, signature_b64: &str, recipe: &[u8]) -> bool {
    let (Ok(public), Ok(sig)) = (B64.decode(public_key_b64), B64.decode(signature_b64)) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(recipe, &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_recipes_that_verify_only_unchanged() {
        let (pem, public) = generate().unwrap();
        let key = load_key(&pem).unwrap();
        let sig = sign_recipe(&key, b"{\"ComponentName\":\"a\"}");
        let s = sig["signature"].as_str().unwrap();
        assert!(verify_recipe(&public, s, b"{\"ComponentName\":\"a\"}"));
        assert!(!verify_recipe(&public, s, b"{\"ComponentName\":\"b\"}"));
        assert_eq!(
            sig["keyId"],
            key_id(
                &base64::engine::general_purpose::STANDARD
                    .decode(&public)
                    .unwrap()
            )
        );
        assert!(load_key("not pem").is_err());
    }
}
