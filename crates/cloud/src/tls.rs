//! TLS client configuration: trust the configured root CA, authenticate with the device
//! certificate and key.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::{CloudError, Endpoint};

/// The configuration keys that name the three files, for error messages.
pub(crate) struct Keys {
    pub root_ca: &'static str,
    pub certificate: &'static str,
    pub private_key: &'static str,
}

/// The device identity's keys (`system.*`).
pub(crate) const SYSTEM_KEYS: Keys = Keys {
    root_ca: "system.rootCaPath",
    certificate: "system.certificateFilePath",
    private_key: "system.privateKeyPath",
};

pub(crate) fn client_config(ep: &Endpoint) -> Result<Arc<ClientConfig>, CloudError> {
    client_config_named(ep, &SYSTEM_KEYS)
}

pub(crate) fn client_config_named(
    ep: &Endpoint,
    keys: &Keys,
) -> Result<Arc<ClientConfig>, CloudError> {
    let file_err = |what: &str, path: &Path, e: &dyn std::fmt::Display| CloudError::Tls {
        what: format!(
            "{what} {}: {e}; check {}",
            path.display(),
            match what {
                "root CA" => keys.root_ca,
                "device certificate" => keys.certificate,
                _ => keys.private_key,
            }
        ),
    };
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&ep.root_ca)
        .map_err(|e| file_err("root CA", &ep.root_ca, &e))?;
    for c in cas {
        let c = c.map_err(|e| file_err("root CA", &ep.root_ca, &e))?;
        roots
            .add(c)
            .map_err(|e| file_err("root CA", &ep.root_ca, &e))?;
    }
    if roots.is_empty() {
        return Err(file_err(
            "root CA",
            &ep.root_ca,
            &"no PEM certificate found",
        ));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ep.certificate)
        .map_err(|e| file_err("device certificate", &ep.certificate, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("device certificate", &ep.certificate, &e))?;
    if chain.is_empty() {
        return Err(file_err(
            "device certificate",
            &ep.certificate,
            &"no PEM certificate found",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&ep.private_key)
        .map_err(|e| file_err("private key", &ep.private_key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CloudError::Tls {
            what: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| CloudError::Tls {
            what: format!(
                "certificate {} with key {}: {e}",
                ep.certificate.display(),
                ep.private_key.display()
            ),
        })?;
    if ep.port == 443 {
        // AWS IoT Core serves MQTT on 443 only to clients that ask for this protocol.
        config.alpn_protocols = vec![b"x-amzn-mqtt-ca".to_vec()];
    }
    Ok(Arc::new(config))
}
