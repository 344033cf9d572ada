use super::*;
use lichen_broker::rustls::{
    RootCertStore,
    client::WebPkiServerVerifier,
    client::danger::ServerCertVerifier,
    pki_types::{ServerName, UnixTime},
};
use rcgen::{CertificateParams, KeyPair};

fn config(extra: Value) -> Value {
    let mut c = json!({
        "certificateAuthority": {"caType": "ECDSA_P256"},
        "deviceGroups": {
            "formatVersion": "2021-03-05",
            "definitions": {"sensors": {"selectionRule": "thingName: sensor*", "policyName": "p"}},
            "policies": {"p": {"s": {"operations": ["mqtt:connect"], "resources": ["mqtt:clientId:*"]}}}
        }
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut c, extra) {
        m.extend(e);
    }
    c
}

/// A self-signed device certificate (an unknown CA unless trusted by configuration).
fn foreign_cert(name: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.self_signed(&key).unwrap().pem()
}

fn server_ok(identity: &ServerIdentity, host: &str) -> bool {
    let mut roots = RootCertStore::empty();
    for ca in &identity.ca_certificates {
        for c in trust::pem_certificates(ca).unwrap() {
            roots.add(c).unwrap();
        }
    }
    let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), trust::provider())
        .build()
        .unwrap();
    let leaf = trust::pem_certificates(&identity.certificate_pem).unwrap();
    v.verify_server_cert(
        &leaf[0],
        &[],
        &ServerName::try_from(host.to_string()).unwrap(),
        &[],
        UnixTime::now(),
    )
    .is_ok()
}

#[tokio::test]
async fn ca_is_generated_owner_only_and_reused_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work").join(SERVICE_NAME);
    let auth = ClientDeviceAuth::new(work.clone());
    auth.apply(Some(&config(json!({})))).await.unwrap();
    let first = auth.ca_certificates();
    assert_eq!(first.len(), 1);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&work), 0o700);
    assert_eq!(mode(&work.join("ca.key")), 0o600);
    assert_eq!(mode(&work.join("ca.pem")), 0o600);
    assert_eq!(
        std::fs::read_to_string(work.join("ca.pem")).unwrap(),
        first[0]
    );

    let again = ClientDeviceAuth::new(work.clone());
    again.apply(Some(&config(json!({})))).await.unwrap();
    assert_eq!(
        again.ca_certificates(),
        first,
        "a restart reuses the stored CA"
    );
    // A client certificate from the first instance is still a component's for the second.
    let client = auth.issue_client_certificate("bridge").unwrap();
    assert!(again.verify_identity(&client.certificate_pem));
}

#[tokio::test]
async fn rsa_ca_type_makes_an_rsa_ca_and_switching_type_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let auth = ClientDeviceAuth::new(dir.path().to_path_buf());
    auth.apply(Some(&config(
        json!({"certificateAuthority": {"caType": "RSA_2048"}}),
    )))
    .await
    .unwrap();
    let rsa_ca = auth.ca_certificates();
    let ca = CertificateAuthority::load_or_create(dir.path(), CaType::Rsa2048).unwrap();
    assert_eq!(ca.ca_type(), CaType::Rsa2048);
    let id = auth.server_identity().borrow().clone().unwrap();
    assert!(server_ok(&id, "localhost"));
    auth.apply(Some(&config(json!({})))).await.unwrap();
    assert_ne!(auth.ca_certificates(), rsa_ca);
    let ca = CertificateAuthority::load_or_create(dir.path(), CaType::EcdsaP256).unwrap();
    assert_eq!(ca.ca_type(), CaType::EcdsaP256);
}

#[tokio::test]
async fn server_certificate_names_the_core_and_configured_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let auth = ClientDeviceAuth::new(dir.path().to_path_buf());
    auth.apply(Some(&config(
        json!({"connectivity": {"hostAddresses": ["10.1.2.3", "gw.example"]}}),
    )))
    .await
    .unwrap();
    let id = auth.server_identity().borrow().clone().unwrap();
    for host in ["localhost", "127.0.0.1", "::1", "10.1.2.3", "gw.example"] {
        assert!(server_ok(&id, host), "{host}");
    }
    assert!(!server_ok(&id, "other.example"));
    assert!(!server_ok(&id, "10.9.9.9"));
}

#[tokio::test]
async fn rotation_renews_ahead_of_expiry_and_notifies() {
    let dir = tempfile::tempdir().unwrap();
    let auth = ClientDeviceAuth::new(dir.path().to_path_buf());
    auth.apply(Some(&config(
        json!({"certificates": {"serverCertificateValiditySeconds": 3600}}),
    )))
    .await
    .unwrap();
    let mut rx = auth.server_identity();
    let first = rx.borrow_and_update().clone().unwrap();
    let now = SystemTime::now();
    assert!(!auth.rotate_if_due(now).unwrap());
    assert!(!rx.has_changed().unwrap());
    // Half the lifetime left of a one-hour certificate: renew.
    assert!(
        auth.rotate_if_due(now + Duration::from_secs(1800 + 5))
            .unwrap()
    );
    assert!(rx.has_changed().unwrap());
    let second = rx.borrow_and_update().clone().unwrap();
    assert_ne!(first.certificate_pem, second.certificate_pem);
    assert_ne!(first.private_key_pem, second.private_key_pem);
    assert_eq!(first.ca_certificates, second.ca_certificates);
    assert!(server_ok(&second, "localhost"));
}

#[test]
fn renewal_is_due_a_day_ahead_or_at_half_life() {
    let now = SystemTime::now();
    let week = Duration::from_secs(604_800);
    assert!(!renewal_due(now + week, week, now));
    assert!(!renewal_due(now + Duration::from_secs(86_401), week, now));
    assert!(renewal_due(now + Duration::from_secs(86_399), week, now));
    assert!(renewal_due(now - Duration::from_secs(1), week, now));
    let minute = Duration::from_secs(60);
    assert!(!renewal_due(now + Duration::from_secs(31), minute, now));
    assert!(renewal_due(now + Duration::from_secs(29), minute, now));
}

#[tokio::test]
async fn trust_own_ca_configured_ca_fingerprint_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let auth = ClientDeviceAuth::new(dir.path().to_path_buf());
    // A device CA and a device certificate it issued.
    let dev_ca_dir = tempfile::tempdir().unwrap();
    let dev_ca =
        CertificateAuthority::load_or_create(dev_ca_dir.path(), CaType::EcdsaP256).unwrap();
    let device = dev_ca
        .issue_client("sensor1", Duration::from_secs(3600))
        .unwrap();
    let pinned = foreign_cert("pinned");
    let pinned_fp = fingerprint(&trust::pem_certificates(&pinned).unwrap()[0]);
    let stranger = foreign_cert("stranger");

    auth.apply(Some(&config(json!({})))).await.unwrap();
    assert!(!auth.verify_identity(&device.certificate_pem));
    assert!(!auth.verify_identity(&pinned));

    auth.apply(Some(&config(json!({"trustedClientCertificates": {
        "caCertificates": [dev_ca.certificate_pem()],
        "fingerprints": [pinned_fp.to_uppercase().replace("SHA256:", "")],
    }}))))
    .await
    .unwrap();
    assert!(auth.verify_identity(&device.certificate_pem));
    assert!(auth.verify_identity(&pinned));
    assert!(!auth.verify_identity(&stranger));
    assert!(!auth.verify_identity("not a certificate"));
    let own = auth.issue_client_certificate("bridge").unwrap();
    assert_eq!(
        auth.classify(&trust::pem_certificates(&own.certificate_pem).unwrap()),
        Some(Trust::Component)
    );
    // The server certificate is not a client certificate (serverAuth only).
    let server = auth.server_identity().borrow().clone().unwrap();
    assert!(!auth.verify_identity(&server.certificate_pem));
}

#[tokio::test]
async fn tokens_carry_the_thing_name_and_follow_device_groups() {
    let dir = tempfile::tempdir().unwrap();
    let auth = ClientDeviceAuth::new(dir.path().to_path_buf());
    let pinned = foreign_cert("d");
    let fp = fingerprint(&trust::pem_certificates(&pinned).unwrap()[0]);
    auth.apply(Some(&config(
        // One certificate listed for three things may act as each of them.
        json!({"trustedClientCertificates": {"thingCertificates": {
            "sensor1": [&fp], "other": [&fp], "sensor2": [&fp]
        }}, "performance": {"maxActiveAuthTokens": 2}}),
    )))
    .await
    .unwrap();
    let sensor = auth.auth_token("sensor1", &pinned).unwrap();
    let other = auth.auth_token("other", &pinned).unwrap();
    assert!(
        auth.authorize_token(&sensor, "mqtt:connect", "mqtt:clientId:sensor1")
            .unwrap()
    );
    assert!(
        !auth
            .authorize_token(&other, "mqtt:connect", "mqtt:clientId:other")
            .unwrap()
    );
    assert!(
        !auth
            .authorize_token(&sensor, "mqtt:publish", "mqtt:topic:x")
            .unwrap()
    );
    let e = auth
        .authorize_token("nope", "mqtt:connect", "x")
        .unwrap_err();
    assert_eq!(e.shape(), "InvalidClientDeviceAuthTokenError");
    let e = auth.auth_token("sensor1", &foreign_cert("x")).unwrap_err();
    assert_eq!(e.shape(), "InvalidCredentialError");
    // At most two tokens: the least recently used one goes.
    let third = auth.auth_token("sensor2", &pinned).unwrap();
    assert!(
        auth.authorize_token(&third, "mqtt:connect", "mqtt:clientId:sensor2")
            .unwrap()
    );
    let gone = [&sensor, &other]
        .iter()
        .filter(|t| auth.authorize_token(t, "mqtt:connect", "x").is_err())
        .count();
    assert_eq!(gone, 1);
    // Removal ends everything.
    auth.apply(None).await.unwrap();
    assert!(auth.authorize_token(&third, "mqtt:connect", "x").is_err());
    assert!(auth.server_identity().borrow().is_none());
}

#[tokio::test]
async fn invalid_configuration_is_refused_and_the_previous_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let auth = ClientDeviceAuth::new(dir.path().to_path_buf());
    auth.apply(Some(&config(json!({})))).await.unwrap();
    let bad = json!({"certificateAuthority": {"caType": "DSA"}});
    assert!(auth.apply(Some(&bad)).await.is_err());
    let bad = config(
        json!({"deviceGroups": {"definitions": {"g": {"selectionRule": "name: x", "policyName": "p"}}, "policies": {"p": {}}}}),
    );
    let e = auth.apply(Some(&bad)).await.unwrap_err();
    assert!(e.to_string().contains("selectionRule"), "{e}");
    assert!(auth.allowed(
        Trust::Device,
        "sensor9",
        "mqtt:connect",
        "mqtt:clientId:sensor9"
    ));
}

#[test]
fn broker_settings_follow_the_component_keys() {
    let m = BrokerSettings::from_component_config(
        "aws.greengrass.clientdevices.mqtt.Moquette",
        &json!({"moquette": {"ssl_port": "18883", "host": "127.0.0.1"}}),
    )
    .unwrap();
    assert_eq!(m.addr, "127.0.0.1:18883".parse().unwrap());
    assert_eq!(m.max_packet_size, 131_072);
    let e = BrokerSettings::from_component_config(
        "aws.greengrass.clientdevices.mqtt.EMQX",
        &json!({"emqx": {"listener.ssl.external": "127.0.0.1:9999", "mqtt.max_packet_size": 1024}}),
    )
    .unwrap();
    assert_eq!(e.addr, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(e.max_packet_size, 1024);
    let d =
        BrokerSettings::from_component_config("aws.greengrass.clientdevices.mqtt.EMQX", &json!({}))
            .unwrap();
    assert_eq!(d.addr, "0.0.0.0:8883".parse().unwrap());
    assert!(
        BrokerSettings::from_component_config(
            "aws.greengrass.clientdevices.mqtt.EMQX",
            &json!({"emqx": {"listener.ssl.external": "http"}})
        )
        .is_err()
    );
}

/// A certificate with subject CN `name` from `ca`, as PEM.
fn device_cert(ca: &CertificateAuthority, name: &str) -> String {
    ca.issue_client(name, Duration::from_secs(3600))
        .unwrap()
        .certificate_pem
}

#[tokio::test]
async fn a_token_is_only_for_the_thing_the_certificate_names() {
    let dir = tempfile::tempdir().unwrap();
    let auth = ClientDeviceAuth::new(dir.path().to_path_buf());
    let dev_ca_dir = tempfile::tempdir().unwrap();
    let dev_ca =
        CertificateAuthority::load_or_create(dev_ca_dir.path(), CaType::EcdsaP256).unwrap();
    auth.apply(Some(&config(json!({"trustedClientCertificates": {
        "caCertificates": [dev_ca.certificate_pem()],
    }}))))
    .await
    .unwrap();
    let sensor1 = device_cert(&dev_ca, "sensor1");
    assert!(auth.auth_token("sensor1", &sensor1).is_ok());
    for other in ["sensor2", "sensor*", "*", "sensor1/x", "Sensor1", ""] {
        let e = auth.auth_token(other, &sensor1).unwrap_err();
        assert_eq!(e.shape(), "InvalidCredentialError", "{other}");
    }
    // A CN that is no thing name binds to nothing.
    let odd = device_cert(&dev_ca, "sensor*");
    assert!(auth.auth_token("sensor*", &odd).is_err());
}

#[tokio::test]
async fn thing_certificates_take_pem_texts_as_well_as_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let auth = ClientDeviceAuth::new(dir.path().to_path_buf());
    let gateway = foreign_cert("gateway-cert");
    auth.apply(Some(&config(json!({"trustedClientCertificates": {
        "thingCertificates": {"sensor-gw": [&gateway]}
    }}))))
    .await
    .unwrap();
    // Listed, so trusted, and bound to its thing only.
    assert!(auth.verify_identity(&gateway));
    assert!(auth.auth_token("sensor-gw", &gateway).is_ok());
    assert!(auth.auth_token("gateway-cert", &gateway).is_err());
    let e = auth
        .apply(Some(&config(json!({"trustedClientCertificates": {
            "thingCertificates": {"a/b": [&gateway]}
        }}))))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("trustedClientCertificates.thingCertificates"),
        "{e}"
    );
}
