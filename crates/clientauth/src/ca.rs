//! The core's local certificate authority: generated on first start, stored owner-only in the
//! service's work folder and reused across restarts; it issues the broker's server certificates
//! and client certificates for components.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, SerialNumber,
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
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params, now, CA_VALIDITY);
    params
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
    std::fs::rename(&tmp, path).map_err(io)
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
            if !certificate_pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(CaError::Stored {
                    path: cert_path,
                    what: "no PEM certificate".into(),
                });
            }
            let ca = CertificateAuthority::from_parts(certificate_pem, key)?;
            if ca.ca_type() == ca_type {
                return Ok(ca);
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
