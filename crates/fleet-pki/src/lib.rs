//! The fleet's certificate authority.
//!
//! On first start [`FleetCa::open_or_create`] generates an ECDSA P-256 CA (BasicConstraints
//! CA, path length 0) under `<root>/ca/` and keeps it; later starts load it. It issues the
//! server certificate the device listeners present, device certificates with fresh RSA-2048
//! keys (CreateKeysAndCertificate, what AWS issues), device certificates for a CSR's own key
//! (CreateCertificateFromCsr), and inspects certificates brought from outside
//! (RegisterCertificate).
//!
//! Architecture invariant: the CA's private key is written once, mode 0600, in a directory of
//! mode 0700, and fsynced (file and directory) before the CA is used; it never leaves this crate.
//! Architecture invariant: a certificate's id is the lower-case hex SHA-256 of its DER, as AWS
//! IoT computes it.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}; check the fleet root's permissions and free space")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

pub type Result<T> = std::result::Result<T, PkiError>;

/// A certificate issued or inspected here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// Lower-case hex SHA-256 of the DER.
    pub id: String,
    pub pem: String,
    /// Validity, seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The id of the issuing CA when it is this fleet's CA.
    pub ca_id: Option<String>,
}

/// A certificate with its freshly generated key pair (CreateKeysAndCertificate).
#[derive(Debug, Clone)]
pub struct IssuedKeys {
    pub certificate: IssuedCertificate,
    /// `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo).
    pub public_key_pem: String,
    /// `-----BEGIN RSA PRIVATE KEY-----` (PKCS#1), as AWS returns it.
    pub private_key_pem: String,
}

/// Paths of the server certificate and key the device listeners present.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

pub struct FleetCa {
    dir: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
    id: String,
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";

impl FleetCa {
    /// Loads the CA under `dir` (e.g. `<root>/ca`), generating it on first use.
    pub fn open_or_create(dir: &Path) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PkiError::Io { path, source }
        };
        create_private_dir(dir)?;
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if key_path.exists() && cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| {
                PkiError::Invalid(format!("{}: not a usable key ({e})", key_path.display()))
            })?;
            let params = CertificateParams::from_ca_cert_pem(&pem).map_err(|e| {
                PkiError::Invalid(format!("{}: not a usable CA ({e})", cert_path.display()))
            })?;
            // Re-signing the same subject and key gives an issuer handle for rcgen; the PEM
            // on disk stays the one devices trust.
            let cert = params.self_signed(&key)?;
            let id = certificate_id_of_pem(&pem)?;
            return Ok(FleetCa {
                dir: dir.to_path_buf(),
                cert,
                key,
                pem,
                id,
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Lichen fleet");
        dn.push(DnType::CommonName, "Lichen fleet root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&cert_path, pem.as_bytes())?;
        sync_dir(dir)?;
        let id = certificate_id_of_pem(&pem)?;
        Ok(FleetCa {
            dir: dir.to_path_buf(),
            cert,
            key,
            pem,
            id,
        })
    }

    /// The CA certificate (PEM) devices trust.
    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// Where the CA certificate lies (`rootCa` in endpoints.json).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// The CA certificate's id (hex SHA-256 of its DER).
    pub fn ca_id(&self) -> &str {
        &self.id
    }

    /// Issues (each start: names may change) the server certificate for `localhost`,
    /// `127.0.0.1`, `::1` and `hostnames`, and writes it with its key under the CA directory.
    pub fn write_server_certificate(&self, hostnames: &[String]) -> Result<ServerFiles> {
        let mut names = vec!["localhost".to_string()];
        names.extend(hostnames.iter().filter(|h| *h != "localhost").cloned());
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut sans = Vec::new();
        for n in ["127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .chain(names)
        {
            match n.parse::<std::net::IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => {
                    let bad = || {
                        PkiError::Invalid(format!(
                            "--hostname {n:?} is not a DNS name or an IP address"
                        ))
                    };
                    let dns_ok = !n.is_empty()
                        && n.len() <= 253
                        && n.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        });
                    if !dns_ok {
                        return Err(bad());
                    }
                    sans.push(SanType::DnsName(n.as_str().try_into().map_err(|_| bad())?));
                }
            }
        }
        sans.dedup();
        params.subject_alt_names = sans;
        params
            .distinguished_name
            .push(DnType::CommonName, "Lichen fleet server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(825);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let files = ServerFiles {
            cert_path: self.dir.join("server.pem"),
            key_path: self.dir.join("server.key"),
        };
        write_private(&files.key_path, key.serialize_pem().as_bytes())?;
        write_private(&files.cert_path, cert.pem().as_bytes())?;
        sync_dir(&self.dir)?;
        Ok(files)
    }

    fn device_params() -> Result<CertificateParams> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Lichen fleet device certificate");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(5);
        // AWS IoT's issued certificates are valid until the end of 2049.
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        Ok(params)
    }

    fn issued(&self, pem: String) -> Result<IssuedCertificate> {
        let mut c = inspect(&pem)?;
        c.ca_id = Some(self.id.clone());
        Ok(c)
    }

    /// CreateKeysAndCertificate: a new RSA-2048 key pair and a certificate for it.
    pub fn create_keys_and_certificate(&self) -> Result<IssuedKeys> {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let rsa_key = rsa::RsaPrivateKey::new(&mut rand_core_06::OsRng, 2048)
            .map_err(|e| PkiError::Invalid(format!("RSA key generation failed: {e}")))?;
        let pkcs8 = rsa_key
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| PkiError::Invalid(format!("RSA key encoding failed: {e}")))?;
        let private_key_pem = rsa_key
            .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .map_err(|e| PkiError::Invalid(format!("RSA key encoding failed: {e}")))?
            .to_string();
        let public_key_pem = rsa_key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| PkiError::Invalid(format!("RSA key encoding failed: {e}")))?;
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)?;
        let cert = Self::device_params()?.signed_by(&key, &self.cert, &self.key)?;
        Ok(IssuedKeys {
            certificate: self.issued(cert.pem())?,
            public_key_pem,
            private_key_pem,
        })
    }

    /// CreateCertificateFromCsr: a certificate for the CSR's public key (its signature is
    /// checked; its subject and extensions are not copied: the fleet decides those).
    pub fn sign_csr(&self, csr_pem: &str) -> Result<IssuedCertificate> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::Invalid(format!(
                "certificateSigningRequest is not a valid PEM CSR with a verifiable \
                 signature ({e})"
            ))
        })?;
        let cert = Self::device_params()?.signed_by(&csr.public_key, &self.cert, &self.key)?;
        self.issued(cert.pem())
    }

    /// RegisterCertificate: the certificate must be signed by this fleet's CA (or, with
    /// `allow_without_ca`, may come from anywhere: RegisterCertificateWithoutCA).
    pub fn register(&self, pem: &str, allow_without_ca: bool) -> Result<IssuedCertificate> {
        let mut c = inspect(pem)?;
        let der = first_der(pem)?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::Invalid(format!("certificatePem: {e}")))?;
        let ca_der = first_der(&self.pem)?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| PkiError::Invalid(format!("fleet CA: {e}")))?;
        let by_us =
            x509.issuer() == ca.subject() && x509.verify_signature(Some(ca.public_key())).is_ok();
        if by_us {
            c.ca_id = Some(self.id.clone());
        } else if !allow_without_ca {
            return Err(PkiError::Invalid(
                "certificatePem is not signed by this fleet's CA; register it without a CA \
                 (RegisterCertificateWithoutCA) or issue one here"
                    .into(),
            ));
        }
        Ok(c)
    }
}

/// Parses a PEM certificate: id and validity.
pub fn inspect(pem: &str) -> Result<IssuedCertificate> {
    let der = first_der(pem)?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Invalid(format!("certificate is not valid X.509 ({e})")))?;
    let v = x509.validity();
    Ok(IssuedCertificate {
        id: hex_sha256(&der),
        pem: pem.to_string(),
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
        ca_id: None,
    })
}

/// The certificate id of a PEM certificate (hex SHA-256 of its DER).
pub fn certificate_id_of_pem(pem: &str) -> Result<String> {
    Ok(hex_sha256(&first_der(pem)?))
}

/// The certificate id of a DER certificate (what a TLS handshake presents).
pub fn certificate_id_of_der(der: &[u8]) -> String {
    hex_sha256(der)
}

fn hex_sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn first_der(pem: &str) -> Result<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| {
        PkiError::Invalid(format!(
            "not a PEM certificate ({e}); give -----BEGIN CERTIFICATE-----"
        ))
    })?;
    if p.label != "CERTIFICATE" {
        return Err(PkiError::Invalid(format!(
            "PEM block is {:?}, not CERTIFICATE",
            p.label
        )));
    }
    Ok(p.contents)
}

/// Creates `dir` (and parents) and sets it to 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `bytes` to `path` with mode 0600 through a temporary file, fsynced, then renamed.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// fsyncs a directory so renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests;
