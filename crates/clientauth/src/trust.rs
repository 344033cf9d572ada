//! Which client certificates are trusted, and the TLS hooks the broker's listener uses: a client
//! certificate verifier and a server certificate resolver that follow configuration changes and
//! certificate rotation without a restart.

use lichen_broker::rustls::{
    self, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use sha2::Digest;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// How a verified client certificate is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Issued by the core's own CA: a Greengrass component (the bridge…), allowed everything.
    Component,
    /// A client device (configured CA or fingerprint): its thing name is its MQTT client id and
    /// the device groups decide what it may do.
    Device,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<hex>` of a DER certificate, the form `trustedClientCertificates.fingerprints` uses.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = sha2::Sha256::digest(der);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Normalises a configured fingerprint (`sha256:` prefix optional, `:` separators and case ignored).
pub(crate) fn normalise_fingerprint(s: &str) -> String {
    let hex: String = s
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    format!("sha256:{hex}")
}

/// Parses every certificate of a PEM text, in order.
pub fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

fn verifier_for(cas: &[CertificateDer<'static>]) -> Option<Arc<dyn ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        if let Err(e) = roots.add(ca.clone()) {
            tracing::warn!(error = %e, "ignoring a CA certificate that cannot be a trust anchor");
        }
    }
    if roots.is_empty() {
        return None;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| tracing::warn!(error = %e, "cannot build a client certificate verifier"))
        .ok()
}

/// The certificates trusted right now.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    own: Option<Arc<dyn ClientCertVerifier>>,
    devices: Option<Arc<dyn ClientCertVerifier>>,
    fingerprints: HashSet<String>,
}

impl TrustStore {
    pub fn new(
        own_ca: &[CertificateDer<'static>],
        device_cas: &[CertificateDer<'static>],
        fingerprints: impl IntoIterator<Item = String>,
    ) -> TrustStore {
        TrustStore {
            own: verifier_for(own_ca),
            devices: verifier_for(device_cas),
            fingerprints: fingerprints
                .into_iter()
                .map(|f| normalise_fingerprint(&f))
                .collect(),
        }
    }

    /// How `chain` (leaf first) is trusted, or `None` when it is not.
    pub fn classify(&self, chain: &[CertificateDer<'_>]) -> Option<Trust> {
        let (leaf, intermediates) = chain.split_first()?;
        let now = UnixTime::now();
        let passes = |v: &Option<Arc<dyn ClientCertVerifier>>, intermediates| {
            v.as_ref()
                .is_some_and(|v| v.verify_client_cert(leaf, intermediates, now).is_ok())
        };
        // The own CA (path length 0) signs leaves only: webpki does not apply a trust anchor's
        // path length, so its leaves are verified without intermediates.
        if passes(&self.own, &[]) {
            Some(Trust::Component)
        } else if self.fingerprints.contains(&fingerprint(leaf))
            || passes(&self.devices, intermediates)
        {
            Some(Trust::Device)
        } else {
            None
        }
    }
}

/// The client certificate verifier of the broker's TLS listener: asks the current [`TrustStore`].
#[derive(Debug)]
pub(crate) struct DeviceCertVerifier {
    pub(crate) trust: Arc<RwLock<Arc<TrustStore>>>,
    pub(crate) provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: device certificates may come from CAs we only know by fingerprint.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.trust.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        match trust.classify(&chain) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Serves the current server certificate; rotation swaps it for new handshakes.
#[derive(Debug, Default)]
pub(crate) struct ServerCertResolver {
    pub(crate) current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServerCertResolver {
    pub(crate) fn set(&self, certificate_pem: &str, private_key_pem: &str) -> Result<(), String> {
        let chain = pem_certificates(certificate_pem)?;
        let key = PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes())
            .map_err(|e| format!("server private key: {e}"))?;
        let certified =
            CertifiedKey::from_der(chain, key, &provider()).map_err(|e| e.to_string())?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(certified));
        Ok(())
    }

    pub(crate) fn clear(&self) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
