//! The client-device broker with a real TLS client: the link between `local_mqtt` and the
//! broker survives a bus message larger than the broker's packet bound.

use super::*;
use bytes::BytesMut;
use lichen_broker::codec::{self, Connect, Packet, Properties, QoS, Subscribe, Version};
use lichen_broker::rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{PrivateKeyDer, ServerName, pem::PemObject},
};
use lichen_bus::{Bus, Message, Payload};
use std::io::{Read, Write};
use std::net::TcpStream;

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A blocking MQTT 5 client over TLS with a component certificate from the own CA.
fn connect(auth: &ClientDeviceAuth, port: u16) -> Tls {
    let mut roots = RootCertStore::empty();
    for pem in auth.ca_certificates() {
        for c in trust::pem_certificates(&pem).unwrap() {
            roots.add(c).unwrap();
        }
    }
    let issued = auth.issue_client_certificate("tester").unwrap();
    let chain = trust::pem_certificates(&issued.certificate_pem).unwrap();
    let key = PrivateKeyDer::from_pem_slice(issued.private_key_pem.as_bytes()).unwrap();
    let config = ClientConfig::builder_with_provider(trust::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let conn = ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("localhost".to_string()).unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    StreamOwned::new(conn, tcp)
}

fn send(tls: &mut Tls, p: &Packet) {
    let mut out = BytesMut::new();
    codec::encode(p, Version::V5, &mut out);
    tls.write_all(&out).unwrap();
    tls.flush().unwrap();
}

/// The next packet within `within`, or `None`.
fn next(tls: &mut Tls, buf: &mut BytesMut, within: Duration) -> Option<Packet> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some((p, used)) = codec::decode(buf, Some(Version::V5), usize::MAX).unwrap() {
            let _ = buf.split_to(used);
            return Some(p);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match tls.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn message(payload: Vec<u8>) -> Message {
    Message {
        payload: Payload::Binary(payload.into()),
        publisher: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_message_over_the_packet_bound_is_skipped_and_the_link_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let auth = ClientDeviceAuth::new(dir.path().to_path_buf());
    auth.apply(Some(
        &json!({"certificateAuthority": {"caType": "ECDSA_P256"}}),
    ))
    .await
    .unwrap();
    let settings = BrokerSettings::from_component_config(
        "aws.greengrass.clientdevices.mqtt.EMQX",
        &json!({"emqx": {"listener.ssl.external": "127.0.0.1:0", "mqtt.max_packet_size": 1024}}),
    )
    .unwrap();
    let bus = Bus::new();
    let broker = DeviceBroker::start(&auth, &settings, bus.clone())
        .await
        .unwrap();
    let port = broker.local_addr().port();
    let auth2 = auth.clone();
    let bus2 = bus.clone();
    let got = tokio::task::spawn_blocking(move || {
        let mut tls = connect(&auth2, port);
        let mut buf = BytesMut::new();
        send(
            &mut tls,
            &Packet::Connect(Connect {
                version: Version::V5,
                clean_start: true,
                keep_alive: 0,
                properties: Properties::default(),
                client_id: "tester".into(),
                will: None,
                username: None,
                password: None,
            }),
        );
        assert!(matches!(
            next(&mut tls, &mut buf, Duration::from_secs(10)),
            Some(Packet::ConnAck(a)) if a.reason_code == 0
        ));
        send(
            &mut tls,
            &Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                filters: vec![(
                    "t/#".into(),
                    codec::SubscriptionOptions {
                        qos: QoS::AtMostOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                    },
                )],
            }),
        );
        assert!(matches!(
            next(&mut tls, &mut buf, Duration::from_secs(10)),
            Some(Packet::SubAck(_))
        ));
        // The link is up once a bus message comes through.
        let mut up = false;
        for _ in 0..50 {
            let _ = bus2.publish("t/warm", message(b"warm".to_vec()));
            if let Some(Packet::Publish(p)) = next(&mut tls, &mut buf, Duration::from_millis(200)) {
                assert_eq!(p.topic, "t/warm");
                up = true;
                break;
            }
        }
        assert!(up, "the bus link never delivered");
        while next(&mut tls, &mut buf, Duration::from_millis(300)).is_some() {}
        bus2.publish("t/big", message(vec![b'x'; 2000])).unwrap();
        bus2.publish("t/small", message(b"small".to_vec())).unwrap();
        let mut topics = Vec::new();
        while let Some(p) = next(&mut tls, &mut buf, Duration::from_secs(3)) {
            if let Packet::Publish(p) = p {
                topics.push(p.topic);
                break;
            }
        }
        topics
    })
    .await
    .unwrap();
    assert_eq!(got, vec!["t/small".to_string()]);
    broker.stop().await;
}
