//! The core's local certificate authority: generated on first start, stored owner-only in the
//! service's work folder and reused across restarts; it issues the broker's server certificates
//! and client certificates for components.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData, SerialNumber,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Certificates start a little in the past so peers with a slightly slow clock accept them.
const BACKDATE: Duration = Duration::from_secs(60);
const CA_COMMON_NAME: &str = "Greengrass Core CA";

/// `certificateAuthority.caType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaType {
    Rsa2048,
    EcdsaP256,
}

impl CaType {
    pub fn parse(s: &str) -> Option<CaType> {
        match s {
            "RSA_2048" => Some(CaType::Rsa2048),
            "ECDSA_P256" => Some(CaType::EcdsaP256),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}; check the folder's owner and permissions")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: not a usable CA key or certificate ({what}); remove {path} to have a new CA generated"
    )]
    Stored { path: PathBuf, what: String },
    #[error(
        "{key} is not the private key of {certificate}: the CA's key and certificate do not belong together (a partial restore or a replaced file?); put back the matching pair, or remove both to have a new CA generated (every client device must then trust the new CA)"
    )]
    Mismatch { key: PathBuf, certificate: PathBuf },
    #[error("certificate generation for {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("RSA key generation: {0}")]
    Rsa(String),
}

/// A certificate with its key, as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub public_key_pem: String,
    pub not_after: SystemTime,
}

/// The CA: its certificate as stored, and what signs with its key.
pub struct CertificateAuthority {
    certificate_pem: String,
    key: KeyPair,
    /// The CA certificate re-derived from the key and the fixed subject: signing only needs the
    /// issuer name and key, which are the same as the stored certificate's.
    issuer: rcgen::Certificate,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("ca_type", &self.ca_type())
            .finish_non_exhaustive()
    }
}

fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "Amazon.com Inc.");
    dn.push(DnType::OrganizationalUnitName, "Amazon Web Services");
    dn.push(DnType::StateOrProvinceName, "Washington");
    dn.push(DnType::LocalityName, "Seattle");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, now: SystemTime, lifetime: Duration) -> SystemTime {
    let not_after = now + lifetime;
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    not_after
}

fn ca_params(now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(CA_COMMON_NAME);
    // Path length 0: the CA issues leaves only, so no certificate made from it can vouch for others.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params, now, CA_VALIDITY);
    params
}

fn ca_algorithm(ca_type: CaType) -> &'static rcgen::SignatureAlgorithm {
    match ca_type {
        CaType::Rsa2048 => &PKCS_RSA_SHA256,
        CaType::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
    }
}

fn generate_key(ca_type: CaType) -> Result<KeyPair, CaError> {
    match ca_type {
        CaType::EcdsaP256 => {
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Generate {
                what: "the CA key".into(),
                source,
            })
        }
        CaType::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rand_core_06::OsRng, 2048)
                .map_err(|e| CaError::Rsa(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| CaError::Rsa(e.to_string()))?;
            KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &PKCS_RSA_SHA256).map_err(|source| {
                CaError::Generate {
                    what: "the RSA CA key".into(),
                    source,
                }
            })
        }
    }
}

fn write_private(path: &Path, text: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename is durable only once the folder's entry is on disk too.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| CaError::Io {
                path: dir.to_owned(),
                source,
            })?;
    }
    Ok(())
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, or generates one there (owner-only folder and files) when none is
    /// stored or the stored key is not of `ca_type`.
    pub fn load_or_create(dir: &Path, ca_type: CaType) -> Result<CertificateAuthority, CaError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Stored {
                path: key_path.clone(),
                what: e.to_string(),
            })?;
            let certificate_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let der = crate::trust::pem_certificates(&certificate_pem)
                .map_err(|what| CaError::Stored {
                    path: cert_path.clone(),
                    what,
                })?
                .remove(0);
            // Refused rather than replaced: a new CA would silently cut off every device that
            // trusts the old one, and a mismatched pair needs the operator's eyes.
            if crate::identity::subject_public_key(&der) != Some(key.der_bytes()) {
                return Err(CaError::Mismatch {
                    key: key_path,
                    certificate: cert_path,
                });
            }
            if key.algorithm() == ca_algorithm(ca_type) {
                if crate::identity::path_len_constraint(&der) == Some(0) {
                    return CertificateAuthority::from_parts(certificate_pem, key);
                }
                // A CA stored before path lengths were set: the same key and name, re-signed
                // with path length 0, so everything issued so far still chains to it.
                let cert = ca_params(SystemTime::now())
                    .self_signed(&key)
                    .map_err(|source| CaError::Generate {
                        what: "the CA certificate".into(),
                        source,
                    })?;
                write_private(&cert_path, &cert.pem(), 0o600)?;
                tracing::info!(dir = %dir.display(), "re-signed the client device CA certificate with path length 0");
                return CertificateAuthority::from_parts(cert.pem(), key);
            }
            tracing::info!(dir = %dir.display(), wanted = ?ca_type, "certificateAuthority.caType changed; generating a new CA");
        }
        let key = generate_key(ca_type)?;
        let cert = ca_params(SystemTime::now())
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: "the CA certificate".into(),
                source,
            })?;
        write_private(&key_path, &key.serialize_pem(), 0o600)?;
        write_private(&cert_path, &cert.pem(), 0o600)?;
        tracing::info!(dir = %dir.display(), ca_type = ?ca_type, "generated the client device CA");
        CertificateAuthority::from_parts(cert.pem(), key)
    }

    fn from_parts(certificate_pem: String, key: KeyPair) -> Result<CertificateAuthority, CaError> {
        let issuer = ca_params(SystemTime::now())
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: "the CA issuer".into(),
                source,
            })?;
        Ok(CertificateAuthority {
            certificate_pem,
            key,
            issuer,
        })
    }

    pub fn ca_type(&self) -> CaType {
        if self.key.algorithm() == &PKCS_RSA_SHA256 {
            CaType::Rsa2048
        } else {
            CaType::EcdsaP256
        }
    }

    /// The CA certificate as stored (what clients trust).
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    fn issue(
        &self,
        common_name: &str,
        hosts: &[String],
        purpose: ExtendedKeyUsagePurpose,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let generate = |source| CaError::Generate {
            what: format!("the certificate of {common_name}"),
            source,
        };
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(generate)?;
        params.distinguished_name = subject(common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![purpose];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let not_after = validity(&mut params, SystemTime::now(), lifetime);
        // Leaf keys are always P-256: quick to make and accepted by every TLS stack we serve.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(generate)?;
        Ok(IssuedCertificate {
            certificate_pem: cert.pem(),
            private_key_pem: key.serialize_pem(),
            public_key_pem: key.public_key_pem(),
            not_after,
        })
    }

    /// A TLS server certificate for `hosts` (IP addresses become iPAddress SANs, names dNSName).
    pub fn issue_server(
        &self,
        common_name: &str,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        self.issue(
            common_name,
            hosts,
            ExtendedKeyUsagePurpose::ServerAuth,
            lifetime,
        )
    }

    /// A TLS client certificate; a client presenting it is treated as a component (allowed
    /// everything), like Greengrass does for certificates of its own CA.
    pub fn issue_client(
        &self,
        common_name: &str,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        self.issue(
            common_name,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            lifetime,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{TrustStore, pem_certificates};

    /// The DER of basicConstraints `cA: TRUE, pathLenConstraint: 0`.
    const PATH_LEN_ZERO: [u8; 8] = [0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00];

    fn der(pem: &str) -> Vec<u8> {
        pem_certificates(pem).unwrap()[0].to_vec()
    }

    fn has_path_len_zero(pem: &str) -> bool {
        der(pem)
            .windows(PATH_LEN_ZERO.len())
            .any(|w| w == PATH_LEN_ZERO)
    }

    #[test]
    fn the_ca_may_not_sign_an_intermediate_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), CaType::EcdsaP256).unwrap();
        assert!(has_path_len_zero(ca.certificate_pem()));
        // An intermediate made with the CA's key vouches for nothing: path length 0.
        let mut params = CertificateParams::default();
        params.distinguished_name = subject("intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let intermediate = params.signed_by(&key, &ca.issuer, &ca.key).unwrap();
        let mut leaf = CertificateParams::default();
        leaf.distinguished_name = subject("component");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = leaf.signed_by(&leaf_key, &intermediate, &key).unwrap();
        let store = TrustStore::new(&pem_certificates(ca.certificate_pem()).unwrap(), &[], []);
        let chain = [leaf.der().clone(), intermediate.der().clone()];
        assert_eq!(store.classify(&chain), None);
        // While a leaf it issues itself is trusted.
        let own = ca.issue_client("bridge", Duration::from_secs(60)).unwrap();
        assert!(
            store
                .classify(&pem_certificates(&own.certificate_pem).unwrap())
                .is_some()
        );
    }

    #[test]
    fn a_stored_ca_without_a_path_length_is_reissued_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = ca_params(SystemTime::now());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let old = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join(CA_KEY_FILE), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join(CA_CERT_FILE), old.pem()).unwrap();
        assert!(!has_path_len_zero(&old.pem()));
        let ca = CertificateAuthority::load_or_create(dir.path(), CaType::EcdsaP256).unwrap();
        assert!(has_path_len_zero(ca.certificate_pem()));
        let stored = std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        assert_eq!(stored, ca.certificate_pem());
        // Same key and name: what the old certificate's holders trust still verifies.
        let issued = ca.issue_client("bridge", Duration::from_secs(60)).unwrap();
        let old_store = TrustStore::new(&pem_certificates(&old.pem()).unwrap(), &[], []);
        assert!(
            old_store
                .classify(&pem_certificates(&issued.certificate_pem).unwrap())
                .is_some()
        );
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(a.path(), CaType::EcdsaP256).unwrap();
        CertificateAuthority::load_or_create(b.path(), CaType::EcdsaP256).unwrap();
        std::fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).unwrap();
        let before = std::fs::read(a.path().join(CA_CERT_FILE)).unwrap();
        let e = CertificateAuthority::load_or_create(a.path(), CaType::EcdsaP256).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(CA_KEY_FILE) && text.contains(CA_CERT_FILE),
            "{text}"
        );
        assert!(text.contains("remove both"), "{text}");
        // Nothing was replaced: the operator decides.
        assert_eq!(std::fs::read(a.path().join(CA_CERT_FILE)).unwrap(), before);
    }
}
