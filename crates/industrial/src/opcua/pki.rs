//! The source's PKI directory, in async-opcua's layout: `own/cert.der` and
//! `private/private.pem` (our application instance certificate, generated on first use
//! unless configured), `trusted/` (server certificates we accept) and `rejected/` (ones we
//! refused, for an operator to inspect). Trust comes from the configuration at every
//! connection attempt, so a certificate rejected before it was configured is trusted now.

use std::fs;
use std::path::{Path, PathBuf};

use ::opcua::crypto::{CertificateStore, X509};

use super::OpcUaError;
use super::config::{CertificateTrust, OpcUaSourceConfig};

/// Reads a PEM or DER certificate file.
fn read_cert_file(path: &Path) -> Result<X509, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_cert(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_cert(bytes: &[u8]) -> Result<X509, String> {
    if bytes.starts_with(b"-----BEGIN") {
        X509::from_pem(bytes).map_err(|e| format!("not a PEM X.509 certificate ({e})"))
    } else {
        X509::from_der(bytes).map_err(|e| format!("not a DER X.509 certificate ({e})"))
    }
}

/// Places `cert` in `trusted/` under the name the store looks it up by, and forgets an
/// earlier rejection of it.
fn trust(pki_dir: &Path, cert: &X509) -> Result<(), String> {
    let name = CertificateStore::cert_file_name(cert);
    let der = cert
        .to_der()
        .map_err(|e| format!("cannot encode certificate: {e}"))?;
    let path = pki_dir.join("trusted").join(&name);
    if fs::read(&path).ok().as_deref() != Some(der.as_slice()) {
        fs::write(&path, &der).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let _ = fs::remove_file(pki_dir.join("rejected").join(&name));
    Ok(())
}

/// Creates the directory layout and applies the configured server-certificate trust.
pub fn prepare(config: &OpcUaSourceConfig, pki_dir: &Path) -> Result<(), OpcUaError> {
    let err = |message: String| OpcUaError::Config {
        source_name: config.name.clone(),
        message,
    };
    for sub in ["own", "private", "trusted", "rejected"] {
        let dir = pki_dir.join(sub);
        fs::create_dir_all(&dir).map_err(|e| OpcUaError::Io {
            path: dir.clone(),
            message: e.to_string(),
        })?;
    }
    // async-opcua writes the generated private key with the default file mode: the
    // directory holding it is what keeps it ours.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = pki_dir.join("private");
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).map_err(|e| {
            OpcUaError::Io {
                path: private.clone(),
                message: e.to_string(),
            }
        })?;
    }
    match &config.endpoint.certificate_trust {
        None | Some(CertificateTrust::TrustAny) => {}
        Some(CertificateTrust::X509 {
            certificate_body: Some(pem),
            ..
        }) => {
            let cert = parse_cert(pem.as_bytes())
                .map_err(|e| err(format!("endpoint.certificateTrust.certificateBody: {e}")))?;
            trust(pki_dir, &cert).map_err(|e| err(format!("endpoint.certificateTrust: {e}")))?;
        }
        Some(CertificateTrust::X509 {
            certificate_path: Some(path),
            ..
        }) => {
            let cert = read_cert_file(path)
                .map_err(|e| err(format!("endpoint.certificateTrust.certificatePath: {e}")))?;
            trust(pki_dir, &cert).map_err(|e| err(format!("endpoint.certificateTrust: {e}")))?;
        }
        Some(CertificateTrust::X509 { .. }) => {
            return Err(err(
                "endpoint.certificateTrust: X509 needs certificateBody or certificatePath".into(),
            ));
        }
        Some(CertificateTrust::TrustDir { path }) => {
            let entries = fs::read_dir(path).map_err(|e| {
                err(format!(
                    "endpoint.certificateTrust.path: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            for entry in entries.flatten() {
                let p = entry.path();
                let ext = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if !matches!(ext.as_str(), "der" | "pem" | "crt" | "cer") {
                    continue;
                }
                // One unreadable file must not stop the others from being trusted.
                match read_cert_file(&p) {
                    Ok(cert) => trust(pki_dir, &cert)
                        .map_err(|e| err(format!("endpoint.certificateTrust: {e}")))?,
                    Err(e) => {
                        tracing::warn!(source = %config.name, "certificateTrust.path: skipping {e}")
                    }
                }
            }
        }
    }
    Ok(())
}

/// Paths of our own certificate and key as async-opcua takes them (relative to the PKI
/// directory, or absolute), and the application URI that must match the certificate.
pub fn own_identity(config: &OpcUaSourceConfig) -> Option<(PathBuf, PathBuf, String)> {
    config.endpoint.client_certificate.as_ref().map(|c| {
        (
            c.certificate_path.clone(),
            c.private_key_path.clone(),
            c.application_uri.clone(),
        )
    })
}

/// Whether a server certificate is checked beyond being trusted (hostname, URI, validity):
/// yes unless the configuration trusts any server.
pub fn verify_server(config: &OpcUaSourceConfig) -> bool {
    !matches!(
        config.endpoint.certificate_trust,
        None | Some(CertificateTrust::TrustAny)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::opcua::crypto::X509Data;
    use ::opcua::types::ApplicationDescription;

    fn cert(name: &str) -> X509 {
        let desc = ApplicationDescription {
            application_uri: format!("urn:{name}").into(),
            application_name: name.into(),
            ..Default::default()
        };
        X509::cert_and_pkey(&X509Data::from((desc, None)))
            .unwrap()
            .0
    }

    fn config(trust: serde_json::Value) -> OpcUaSourceConfig {
        OpcUaSourceConfig::from_json(&serde_json::json!({
            "name": "t",
            "endpoint": {"endpointUri": "opc.tcp://h:1", "securityPolicy": "BASIC256_SHA256",
                         "messageSecurityMode": "SIGN", "certificateTrust": trust}
        }))
        .unwrap()
    }

    #[test]
    fn a_pinned_certificate_is_trusted_and_its_rejection_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let server = cert("server");
        let file = dir.path().join("server.der");
        fs::write(&file, server.to_der().unwrap()).unwrap();
        let pki = dir.path().join("pki");
        let name = CertificateStore::cert_file_name(&server);
        fs::create_dir_all(pki.join("rejected")).unwrap();
        fs::write(pki.join("rejected").join(&name), b"x").unwrap();
        let c = config(serde_json::json!({"type": "X509", "certificatePath": file}));
        prepare(&c, &pki).unwrap();
        assert_eq!(
            fs::read(pki.join("trusted").join(&name)).unwrap(),
            server.to_der().unwrap()
        );
        assert!(!pki.join("rejected").join(&name).exists());
        assert!(verify_server(&c));
    }

    #[test]
    fn a_trust_dir_trusts_every_certificate_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let trust = dir.path().join("trust");
        fs::create_dir_all(&trust).unwrap();
        let (a, b) = (cert("a"), cert("b"));
        fs::write(trust.join("a.der"), a.to_der().unwrap()).unwrap();
        fs::write(trust.join("b.der"), b.to_der().unwrap()).unwrap();
        fs::write(trust.join("notes.txt"), b"not a certificate").unwrap();
        fs::write(trust.join("broken.der"), b"not a certificate").unwrap();
        let pki = dir.path().join("pki");
        prepare(
            &config(serde_json::json!({"type": "TrustDir", "path": trust})),
            &pki,
        )
        .unwrap();
        let mut names: Vec<String> = fs::read_dir(pki.join("trusted"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want = vec![
            CertificateStore::cert_file_name(&a),
            CertificateStore::cert_file_name(&b),
        ];
        want.sort();
        assert_eq!(names, want);
    }

    #[test]
    fn unreadable_trust_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let missing = dir.path().join("missing.der");
        let e = prepare(
            &config(serde_json::json!({"type": "X509", "certificatePath": missing})),
            &pki,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("endpoint.certificateTrust.certificatePath") && e.contains("missing.der"),
            "{e}"
        );
        let e = prepare(
            &config(serde_json::json!({"type": "X509", "certificateBody": "-----BEGIN junk"})),
            &pki,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("endpoint.certificateTrust.certificateBody"),
            "{e}"
        );
        assert!(!verify_server(&config(
            serde_json::json!({"type": "TrustAny"})
        )));
    }
}
