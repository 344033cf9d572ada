use super::*;
use std::os::unix::fs::PermissionsExt;
use x509_parser::prelude::*;

fn parse(pem: &str) -> Vec<u8> {
    first_der(pem).unwrap()
}

#[test]
fn the_ca_is_created_private_once_and_reloaded() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ca");
    let ca = FleetCa::open_or_create(&dir).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    let der = parse(ca.ca_pem());
    let (_, x) = parse_x509_certificate(&der).unwrap();
    let bc = x.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let again = FleetCa::open_or_create(&dir).unwrap();
    assert_eq!(again.ca_pem(), ca.ca_pem());
    assert_eq!(again.ca_id(), ca.ca_id());
    // A certificate issued after reloading still chains to the PEM on disk.
    let issued = again.sign_csr(&csr().1).unwrap();
    let d = parse(&issued.pem);
    let (_, leaf) = parse_x509_certificate(&d).unwrap();
    leaf.verify_signature(Some(x.public_key())).unwrap();
    assert_eq!(leaf.issuer(), x.subject());
}

fn csr() -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["ignored.example".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "device-7");
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

#[test]
fn keys_and_certificate_match_and_chain_to_the_ca() {
    let root = tempfile::tempdir().unwrap();
    let ca = FleetCa::open_or_create(&root.path().join("ca")).unwrap();
    let k = ca.create_keys_and_certificate().unwrap();
    assert!(
        k.private_key_pem
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    assert!(k.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let der = parse(&k.certificate.pem);
    assert_eq!(k.certificate.id, certificate_id_of_der(&der));
    assert_eq!(k.certificate.id.len(), 64);
    assert_eq!(k.certificate.ca_id.as_deref(), Some(ca.ca_id()));
    let (_, leaf) = parse_x509_certificate(&der).unwrap();
    let ca_der = parse(ca.ca_pem());
    let (_, cax) = parse_x509_certificate(&ca_der).unwrap();
    leaf.verify_signature(Some(cax.public_key())).unwrap();
    use rsa::pkcs8::DecodePublicKey;
    let public = rsa::RsaPublicKey::from_public_key_pem(&k.public_key_pem).unwrap();
    let in_cert = rsa::RsaPublicKey::from_public_key_der(leaf.public_key().raw).unwrap();
    assert_eq!(public, in_cert);
    assert!(k.certificate.not_after > k.certificate.not_before);
}

#[test]
fn a_csr_keeps_its_own_key_and_a_bad_one_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let ca = FleetCa::open_or_create(&root.path().join("ca")).unwrap();
    let (key, pem) = csr();
    let c = ca.sign_csr(&pem).unwrap();
    let der = parse(&c.pem);
    let (_, leaf) = parse_x509_certificate(&der).unwrap();
    assert_eq!(leaf.public_key().raw, key.public_key_der().as_slice());
    assert!(matches!(
        ca.sign_csr("not a csr"),
        Err(PkiError::Invalid(_))
    ));
    let tampered = pem.replacen("MI", "MJ", 1);
    assert!(ca.sign_csr(&tampered).is_err());
}

#[test]
fn registration_accepts_our_certificates_and_foreign_ones_only_without_ca() {
    let root = tempfile::tempdir().unwrap();
    let ca = FleetCa::open_or_create(&root.path().join("ca")).unwrap();
    let other = FleetCa::open_or_create(&root.path().join("other")).unwrap();
    let ours = ca.sign_csr(&csr().1).unwrap();
    let r = ca.register(&ours.pem, false).unwrap();
    assert_eq!(r.id, ours.id);
    assert_eq!(r.ca_id.as_deref(), Some(ca.ca_id()));
    let foreign = other.sign_csr(&csr().1).unwrap();
    assert!(matches!(
        ca.register(&foreign.pem, false),
        Err(PkiError::Invalid(_))
    ));
    let r = ca.register(&foreign.pem, true).unwrap();
    assert_eq!(r.ca_id, None);
    assert!(
        ca.register(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            true
        )
        .is_err()
    );
}

#[test]
fn the_server_certificate_names_localhost_and_the_given_hostnames() {
    let root = tempfile::tempdir().unwrap();
    let ca = FleetCa::open_or_create(&root.path().join("ca")).unwrap();
    let files = ca
        .write_server_certificate(&["fleet.example".into(), "10.0.0.5".into()])
        .unwrap();
    let pem = std::fs::read_to_string(&files.cert_path).unwrap();
    let der = parse(&pem);
    let (_, x) = parse_x509_certificate(&der).unwrap();
    let san = x.subject_alternative_name().unwrap().unwrap().value;
    let names: Vec<String> = san.general_names.iter().map(|n| format!("{n}")).collect();
    for want in [
        "DNSName(localhost)",
        "DNSName(fleet.example)",
        "IPAddress(7f:00:00:01)",
        "IPAddress(0a:00:00:05)",
    ] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "{want} not in {names:?}"
        );
    }
    assert_eq!(
        std::fs::metadata(&files.key_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(matches!(
        ca.write_server_certificate(&["bad name!".into()]),
        Err(PkiError::Invalid(_))
    ));
}
