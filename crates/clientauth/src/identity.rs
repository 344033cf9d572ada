//! Which thing a client device is. Greengrass learns the certificate ↔ thing association from
//! the cloud (`VerifyClientDeviceIoTCertificateAssociation`); locally a certificate is bound to
//! the thing its subject CN names, or, where `trustedClientCertificates.thingCertificates` lists
//! a thing's certificates, to exactly those. A device's MQTT client id must be a thing name bound
//! to the certificate it presented, so it cannot take another thing's device groups or policy
//! variables.

use crate::trust::{fingerprint, normalise_fingerprint, pem_certificates};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// The longest thing name AWS IoT accepts.
pub const MAX_THING_NAME: usize = 128;

/// Whether `name` is a valid AWS IoT thing name: 1 to 128 of `[a-zA-Z0-9:_-]`.
pub fn valid_thing_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_THING_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// What a presented leaf certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// `sha256:<hex>` of the DER.
    pub fingerprint: String,
    /// The subject's single common name, if it has exactly one.
    pub common_name: Option<String>,
}

impl CertificateIdentity {
    pub fn of(der: &[u8]) -> CertificateIdentity {
        CertificateIdentity {
            fingerprint: fingerprint(der),
            common_name: subject_common_name(der),
        }
    }
}

/// One DER element: tag, contents, what follows. `None` when malformed or truncated.
pub(crate) fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        // High tag numbers do not occur in the parts of a certificate read here.
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, r) = rest.split_at_checked(n)?;
        rest = r;
        bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b))
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const CN_OID: [u8; 3] = [0x55, 0x04, 0x03];

/// The subject common name of a DER certificate: `None` without one, with more than one, or when
/// it is not text.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    // Serial, signature algorithm, issuer, validity, then the subject.
    let mut rest = tbs_fields(der)?;
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, mut rdns, _) = element(rest)? else {
        return None;
    };
    let mut found = None;
    while !rdns.is_empty() {
        let (SET, mut attributes, next) = element(rdns)? else {
            return None;
        };
        rdns = next;
        while !attributes.is_empty() {
            let (SEQUENCE, attribute, next) = element(attributes)? else {
                return None;
            };
            attributes = next;
            let (OID, oid, value) = element(attribute)? else {
                return None;
            };
            if oid != CN_OID {
                continue;
            }
            let (tag, text, _) = element(value)?;
            let text = match tag {
                // UTF8String, PrintableString, IA5String, TeletexString (as ASCII).
                0x0c | 0x13 | 0x16 => std::str::from_utf8(text).ok()?.to_string(),
                0x14 if text.is_ascii() => std::str::from_utf8(text).ok()?.to_string(),
                // BMPString: UTF-16BE.
                0x1e if text.len() % 2 == 0 => {
                    let units = text.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    char::decode_utf16(units)
                        .collect::<Result<String, _>>()
                        .ok()?
                }
                _ => return None,
            };
            if found.replace(text).is_some() {
                return None;
            }
        }
    }
    found
}

/// The elements of a certificate's TBSCertificate after its optional version: serial,
/// signature algorithm, issuer, validity, subject, subject public key info, then the optional
/// unique ids and extensions.
fn tbs_fields(der: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let (tag, _, rest) = element(tbs)?;
    Some(if tag == 0xa0 { rest } else { tbs })
}

/// The subject public key of a DER certificate (the BIT STRING's bits).
pub(crate) fn subject_public_key(der: &[u8]) -> Option<&[u8]> {
    let mut rest = tbs_fields(der)?;
    for _ in 0..5 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, spki, _) = element(rest)? else {
        return None;
    };
    let (SEQUENCE, _, bits) = element(spki)? else {
        return None;
    };
    let (0x03, bits, _) = element(bits)? else {
        return None;
    };
    match bits.split_first() {
        Some((0, key)) => Some(key),
        _ => None,
    }
}

/// The basicConstraints path length of a DER certificate: `None` without one (or without the
/// extension).
pub(crate) fn path_len_constraint(der: &[u8]) -> Option<u64> {
    let mut rest = tbs_fields(der)?;
    for _ in 0..6 {
        rest = element(rest)?.2;
    }
    while !rest.is_empty() {
        let (tag, contents, next) = element(rest)?;
        rest = next;
        if tag != 0xa3 {
            continue;
        }
        let (SEQUENCE, mut extensions, _) = element(contents)? else {
            return None;
        };
        while !extensions.is_empty() {
            let (SEQUENCE, extension, next) = element(extensions)? else {
                return None;
            };
            extensions = next;
            let (OID, oid, mut value) = element(extension)? else {
                return None;
            };
            if oid != [0x55, 0x1d, 0x13] {
                continue;
            }
            let (tag, _, after) = element(value)?;
            if tag == 0x01 {
                // The critical flag.
                value = after;
            }
            let (0x04, octets, _) = element(value)? else {
                return None;
            };
            let (SEQUENCE, mut fields, _) = element(octets)? else {
                return None;
            };
            while !fields.is_empty() {
                let (tag, v, next) = element(fields)?;
                fields = next;
                if tag == 0x02 && v.len() <= 8 {
                    return Some(v.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)));
                }
            }
            return None;
        }
    }
    None
}

/// `trustedClientCertificates.thingCertificates`: thing name → its certificates (fingerprints
/// or PEM texts). A Lichen extension, standing in for the cloud's thing ↔ certificate
/// associations until the fleet registry supplies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThingCertificates {
    by_thing: HashMap<String, HashSet<String>>,
    mapped: HashSet<String>,
}

impl ThingCertificates {
    pub const KEY: &'static str = "trustedClientCertificates.thingCertificates";

    /// Parses the map; says which entry is wrong and how to write it.
    pub fn from_config(v: Option<&Value>) -> Result<ThingCertificates, String> {
        let mut out = ThingCertificates::default();
        let map = match v {
            None | Some(Value::Null) => return Ok(out),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(
                    "expected a map of thing name to a list of certificates (`sha256:<hex>` fingerprints or PEM texts)"
                        .into(),
                );
            }
        };
        for (thing, certs) in map {
            if !valid_thing_name(thing) {
                return Err(format!(
                    "{thing:?} is not a thing name (1 to {MAX_THING_NAME} of A-Z a-z 0-9 : _ -)"
                ));
            }
            let entries: Vec<&Value> = match certs {
                Value::Null => continue,
                Value::String(_) => vec![certs],
                Value::Array(a) => a.iter().collect(),
                _ => return Err(format!("{thing}: expected a list of certificates")),
            };
            let mut fps = HashSet::new();
            for e in entries {
                let text = e.as_str().ok_or_else(|| {
                    format!("{thing}: every certificate must be a string (fingerprint or PEM)")
                })?;
                if text.contains("-----BEGIN") {
                    let chain = pem_certificates(text).map_err(|e| format!("{thing}: {e}"))?;
                    fps.insert(fingerprint(&chain[0]));
                } else {
                    let fp = normalise_fingerprint(text);
                    let hex = &fp["sha256:".len()..];
                    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(format!(
                            "{thing}: {text:?} is neither a PEM certificate nor a sha256 fingerprint (64 hex digits)"
                        ));
                    }
                    fps.insert(fp);
                }
            }
            out.mapped.extend(fps.iter().cloned());
            out.by_thing.insert(thing.clone(), fps);
        }
        Ok(out)
    }

    /// Every listed certificate's fingerprint: each is trusted as the things it is listed for.
    pub fn fingerprints(&self) -> impl Iterator<Item = &String> {
        self.mapped.iter()
    }

    /// Whether the certificate `id` is bound to `thing`: listed for it where the thing's
    /// certificates are listed, else (when the certificate is listed for no thing) named by its CN.
    pub fn binds(&self, id: &CertificateIdentity, thing: &str) -> bool {
        if !valid_thing_name(thing) {
            return false;
        }
        if let Some(fps) = self.by_thing.get(thing) {
            return fps.contains(&id.fingerprint);
        }
        !self.mapped.contains(&id.fingerprint) && id.common_name.as_deref() == Some(thing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};
    use serde_json::json;

    fn der_with(subject: &[(DnType, DnValue)]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            p.distinguished_name.push(t.clone(), v.clone());
        }
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn thing_names_follow_the_aws_rule() {
        for ok in ["a", "sensor-1", "Sensor_1", "arn:x", &"x".repeat(128)] {
            assert!(valid_thing_name(ok), "{ok}");
        }
        for bad in [
            "",
            "*",
            "Thing*",
            "a/b",
            "a+b",
            "a#",
            "a?",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(!valid_thing_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_subject_common_name_is_read_in_every_string_form() {
        let utf8 = der_with(&[
            (DnType::OrganizationName, DnValue::Utf8String("Org".into())),
            (DnType::CommonName, DnValue::Utf8String("sensor1".into())),
        ]);
        assert_eq!(subject_common_name(&utf8).as_deref(), Some("sensor1"));
        let printable = der_with(&[(
            DnType::CommonName,
            DnValue::PrintableString("sensor2".try_into().unwrap()),
        )]);
        assert_eq!(subject_common_name(&printable).as_deref(), Some("sensor2"));
        let bmp = der_with(&[(
            DnType::CommonName,
            DnValue::BmpString("sensor3".try_into().unwrap()),
        )]);
        assert_eq!(subject_common_name(&bmp).as_deref(), Some("sensor3"));
        let two = der_with(&[
            (DnType::CommonName, DnValue::Utf8String("sensor1".into())),
            (
                DnType::CustomDnType(vec![2, 5, 4, 3]),
                DnValue::Utf8String("sensor2".into()),
            ),
        ]);
        assert_eq!(subject_common_name(&two), None, "two CNs name no one thing");
        let none = der_with(&[(DnType::OrganizationName, DnValue::Utf8String("Org".into()))]);
        assert_eq!(subject_common_name(&none), None);
    }

    #[test]
    fn the_issuer_common_name_is_not_the_subject_one() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(vec![]).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "victim");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![]).unwrap();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name
            .push(DnType::OrganizationName, "no common name");
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        assert_eq!(subject_common_name(leaf.der()), None);
    }

    #[test]
    fn malformed_certificates_have_no_common_name() {
        let good = der_with(&[(DnType::CommonName, DnValue::Utf8String("sensor1".into()))]);
        for cut in [0, 1, 2, 10, good.len() / 2, good.len() - 1] {
            // Truncated outer lengths fail; nothing panics.
            let _ = subject_common_name(&good[..cut]);
        }
        assert_eq!(subject_common_name(b""), None);
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(subject_common_name(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
    }

    #[test]
    fn an_explicit_mapping_overrides_the_common_name() {
        let a = CertificateIdentity {
            fingerprint: format!("sha256:{}", "a".repeat(64)),
            common_name: Some("sensor-cn".into()),
        };
        let b = CertificateIdentity {
            fingerprint: format!("sha256:{}", "b".repeat(64)),
            common_name: Some("sensor-mapped".into()),
        };
        let c = CertificateIdentity {
            fingerprint: format!("sha256:{}", "c".repeat(64)),
            common_name: Some("plain".into()),
        };
        let m = ThingCertificates::from_config(Some(&json!({
            "sensor-mapped": [format!("SHA256:{}", "A".repeat(64))],
            "gone": null
        })))
        .unwrap();
        assert!(m.binds(&a, "sensor-mapped"));
        assert!(
            !m.binds(&a, "sensor-cn"),
            "a listed certificate is only its things'"
        );
        assert!(
            !m.binds(&b, "sensor-mapped"),
            "a listed thing takes only its certificates"
        );
        assert!(m.binds(&c, "plain"));
        assert!(!m.binds(&c, "Plain"));
        let odd = CertificateIdentity {
            common_name: Some("pl*n".into()),
            ..c
        };
        assert!(!m.binds(&odd, "pl*n"));
    }

    #[test]
    fn a_bad_mapping_says_what_is_wrong() {
        for (bad, says) in [
            (json!({"a/b": []}), "not a thing name"),
            (json!({"t": ["nope"]}), "neither a PEM"),
            (json!({"t": [1]}), "must be a string"),
            (json!(["t"]), "expected a map"),
            (json!({"t": ["-----BEGIN CERTIFICATE-----\nxx\n"]}), "t:"),
        ] {
            let e = ThingCertificates::from_config(Some(&bad)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
