//! End-to-end tests: a real broker on 127.0.0.1 with an ephemeral port, spoken to over real
//! sockets with the crate's own codec.

use bytes::{Bytes, BytesMut};
use lichen_broker::codec::{
    self, Ack, Connect, Packet, Properties, Publish, QoS, Subscribe, SubscriptionOptions, Version,
};
use lichen_broker::{AllowAll, Authorizer, BrokerConfig, ClientContext, Listener, Server};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

mod support;
use support::{read_packet, subscribe_packet, write_packets};

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

async fn start_with(
    config: BrokerConfig,
    listener: Listener,
    authorizer: Arc<dyn Authorizer>,
) -> Running {
    let server = Server::bind(config, &[listener], authorizer)
        .await
        .expect("bind");
    let addr = server.local_addrs()[0];
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

async fn start(config: BrokerConfig) -> Running {
    let listener = Listener {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
    };
    start_with(config, listener, Arc::new(AllowAll)).await
}

struct TestClient<S> {
    stream: S,
    buf: BytesMut,
    version: Version,
}

fn connect_packet(client_id: &str, clean_start: bool, properties: Properties) -> Packet {
    Packet::Connect(Connect {
        version: Version::V5,
        clean_start,
        keep_alive: 60,
        properties,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    })
}

fn expiry(secs: u32) -> Properties {
    Properties {
        session_expiry_interval: Some(secs),
        ..Properties::default()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TestClient<S> {
    async fn handshake(stream: S, connect: Packet) -> (Self, codec::ConnAck) {
        let mut c = TestClient {
            stream,
            buf: BytesMut::new(),
            version: Version::V5,
        };
        c.send(&connect).await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => (c, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: &Packet) {
        write_packets(&mut self.stream, self.version, std::slice::from_ref(p)).await;
    }

    /// The next packet, or `None` when the broker closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .await
            .expect("a packet or a close in time")
    }

    /// `Err(())` if nothing arrived within `d`.
    async fn recv_within(&mut self, d: Duration) -> Result<Option<Packet>, ()> {
        read_packet(&mut self.stream, &mut self.buf, self.version, d).await
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&subscribe_packet(filter, qos)).await;
        match self.recv().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, vec![qos as u8]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, packet_id: u16) {
        let p = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload),
        };
        self.send(&Packet::Publish(p)).await;
    }

    async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

async fn tcp(addr: SocketAddr, connect: Packet) -> (TestClient<TcpStream>, codec::ConnAck) {
    TestClient::handshake(TcpStream::connect(addr).await.expect("connect"), connect).await
}

fn ack(packet_id: u16) -> Ack {
    Ack {
        packet_id,
        reason_code: 0,
        properties: Properties::default(),
    }
}

#[tokio::test]
async fn unacknowledged_qos1_is_redelivered_with_dup_on_resume() {
    let broker = start(BrokerConfig::default()).await;
    let (mut sub, _) = tcp(broker.addr, connect_packet("redeliver", true, expiry(60))).await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = tcp(
        broker.addr,
        connect_packet("pub", true, Properties::default()),
    )
    .await;
    publisher.publish("r/1", b"once", QoS::AtLeastOnce, 1).await;
    let first = sub.expect_publish().await;
    assert!(!first.dup);
    drop(sub); // no PUBACK
    let (mut sub, connack) = tcp(broker.addr, connect_packet("redeliver", false, expiry(60))).await;
    assert!(connack.session_present);
    let again = sub.expect_publish().await;
    assert!(again.dup);
    assert_eq!(
        (again.packet_id, again.payload),
        (first.packet_id, Bytes::from_static(b"once"))
    );
    sub.send(&Packet::PubAck(ack(again.packet_id.unwrap())))
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn qos2_release_is_resent_after_reconnect() {
    let broker = start(BrokerConfig::default()).await;
    let (mut sub, _) = tcp(broker.addr, connect_packet("q2", true, expiry(60))).await;
    sub.subscribe("q2/#", QoS::ExactlyOnce).await;
    let (mut publisher, _) = tcp(
        broker.addr,
        connect_packet("q2pub", true, Properties::default()),
    )
    .await;
    publisher
        .publish("q2/t", b"exactly", QoS::ExactlyOnce, 7)
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 7));
    // A retransmitted PUBLISH with the same id before PUBREL is not routed twice.
    publisher
        .publish("q2/t", b"exactly", QoS::ExactlyOnce, 7)
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 7));
    publisher.send(&Packet::PubRel(ack(7))).await;
    assert!(
        matches!(publisher.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 7 && a.reason_code == 0)
    );

    let p = sub.expect_publish().await;
    let id = p.packet_id.unwrap();
    sub.send(&Packet::PubRec(ack(id))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.packet_id == id));
    drop(sub); // no PUBCOMP
    let (mut sub, _) = tcp(broker.addr, connect_packet("q2", false, expiry(60))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.packet_id == id));
    sub.send(&Packet::PubComp(ack(id))).await;
    // Exactly one copy was routed.
    assert!(sub.recv_within(Duration::from_millis(500)).await.is_err());
    broker.stop().await;
}

#[tokio::test]
async fn receive_maximum_limits_messages_in_flight() {
    let broker = start(BrokerConfig::default()).await;
    let props = Properties {
        receive_maximum: Some(2),
        ..Properties::default()
    };
    let (mut sub, _) = tcp(broker.addr, connect_packet("window", true, props)).await;
    sub.subscribe("w", QoS::AtLeastOnce).await;
    let (mut publisher, _) = tcp(
        broker.addr,
        connect_packet("wpub", true, Properties::default()),
    )
    .await;
    for i in 1..=4u16 {
        publisher
            .publish("w", &[i as u8], QoS::AtLeastOnce, i)
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    }
    let a = sub.expect_publish().await;
    let b = sub.expect_publish().await;
    assert_eq!((a.payload[0], b.payload[0]), (1, 2));
    assert!(
        sub.recv_within(Duration::from_millis(500)).await.is_err(),
        "a third message exceeded the window"
    );
    sub.send(&Packet::PubAck(ack(a.packet_id.unwrap()))).await;
    assert_eq!(sub.expect_publish().await.payload[0], 3);
    broker.stop().await;
}

#[tokio::test]
async fn same_client_id_takes_the_session_over() {
    let broker = start(BrokerConfig::default()).await;
    let (mut first, _) = tcp(broker.addr, connect_packet("twin", true, expiry(60))).await;
    first.subscribe("twin/#", QoS::AtLeastOnce).await;
    let (mut second, connack) = tcp(broker.addr, connect_packet("twin", false, expiry(60))).await;
    assert!(connack.session_present);
    match first.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, 0x8E),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    assert!(first.recv().await.is_none());
    // The subscription moved with the session.
    let (mut publisher, _) = tcp(
        broker.addr,
        connect_packet("twinpub", true, Properties::default()),
    )
    .await;
    publisher.publish("twin/x", b"hi", QoS::AtMostOnce, 0).await;
    assert_eq!(
        second.expect_publish().await.payload,
        Bytes::from_static(b"hi")
    );
    broker.stop().await;
}

#[tokio::test]
async fn slow_consumer_is_disconnected_and_others_carry_on() {
    let config = BrokerConfig {
        max_queued_messages: 8,
        slow_consumer_timeout: Duration::from_millis(300),
        ..BrokerConfig::default()
    };
    let broker = start(config).await;
    let (mut slow, _) = tcp(
        broker.addr,
        connect_packet("slow", true, Properties::default()),
    )
    .await;
    slow.subscribe("flood", QoS::AtMostOnce).await;
    let (mut healthy, _) = tcp(
        broker.addr,
        connect_packet("healthy", true, Properties::default()),
    )
    .await;
    healthy.subscribe("ok", QoS::AtMostOnce).await;
    let (mut publisher, _) = tcp(
        broker.addr,
        connect_packet("flooder", true, Properties::default()),
    )
    .await;
    // `slow` never reads; once its socket buffers fill, its queue reaches its bound: QoS 0
    // deliveries to it are dropped, and once it has taken nothing for the slow-consumer timeout
    // it is disconnected. The publisher is paced to outlast that timeout.
    let payload = vec![0u8; 64 * 1024];
    for i in 0..2000u16 {
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        publisher
            .publish("flood", &payload, QoS::AtLeastOnce, i % 60000 + 1)
            .await;
        assert!(
            matches!(publisher.recv().await, Some(Packet::PubAck(_))),
            "publisher is never held back"
        );
    }
    publisher
        .publish("ok", b"still here", QoS::AtMostOnce, 0)
        .await;
    assert_eq!(
        healthy.expect_publish().await.payload,
        Bytes::from_static(b"still here")
    );
    // Draining the slow client's socket ends in a close (`recv` panics if it stays open), after
    // DISCONNECT 0x97 when there was room to write it.
    while let Some(p) = slow.recv().await {
        if let Packet::Disconnect(d) = p {
            assert_eq!(d.reason_code, 0x97);
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn messages_over_the_clients_maximum_packet_size_are_not_sent() {
    let broker = start(BrokerConfig::default()).await;
    let props = Properties {
        maximum_packet_size: Some(100),
        ..Properties::default()
    };
    let (mut sub, _) = tcp(broker.addr, connect_packet("tiny", true, props)).await;
    sub.subscribe("mps", QoS::AtLeastOnce).await;
    let (mut publisher, _) = tcp(
        broker.addr,
        connect_packet("mpspub", true, Properties::default()),
    )
    .await;
    publisher
        .publish("mps", &[7u8; 200], QoS::AtLeastOnce, 1)
        .await;
    publisher.publish("mps", b"fits", QoS::AtLeastOnce, 2).await;
    let p = sub.expect_publish().await;
    assert_eq!(p.payload, Bytes::from_static(b"fits"));
    broker.stop().await;
}

#[tokio::test]
async fn topic_alias_errors_close_the_connection() {
    let broker = start(BrokerConfig::default()).await;
    let (mut c, connack) = tcp(
        broker.addr,
        connect_packet("alias", true, Properties::default()),
    )
    .await;
    let max = connack.properties.topic_alias_maximum.expect("announced");
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a".into(),
        packet_id: None,
        properties: Properties {
            topic_alias: Some(max + 1),
            ..Properties::default()
        },
        payload: Bytes::new(),
    };
    c.send(&Packet::Publish(p)).await;
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, 0x94),
        other => panic!("expected DISCONNECT 0x94, got {other:?}"),
    }
    assert!(c.recv().await.is_none());
    // An alias that was never set is a protocol error.
    let (mut c, _) = tcp(
        broker.addr,
        connect_packet("alias2", true, Properties::default()),
    )
    .await;
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: String::new(),
        packet_id: None,
        properties: Properties {
            topic_alias: Some(1),
            ..Properties::default()
        },
        payload: Bytes::new(),
    };
    c.send(&Packet::Publish(p)).await;
    assert!(matches!(c.recv().await, Some(Packet::Disconnect(d)) if d.reason_code == 0x82));
    broker.stop().await;
}

#[tokio::test]
async fn shutdown_tells_clients() {
    let broker = start(BrokerConfig::default()).await;
    let (mut c, _) = tcp(
        broker.addr,
        connect_packet("bye", true, Properties::default()),
    )
    .await;
    let stopping = tokio::spawn(broker.stop());
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, 0x8B),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    stopping.await.unwrap();
}

#[tokio::test]
async fn plain_tcp_off_loopback_refuses_anonymous_clients() {
    let listener = Listener {
        addr: "0.0.0.0:0".parse().unwrap(),
        tls: None,
    };
    let broker = start_with(BrokerConfig::default(), listener, Arc::new(AllowAll)).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], broker.addr.port()));
    let (_c, connack) = tcp(addr, connect_packet("anon", true, Properties::default())).await;
    assert_eq!(connack.reason_code, 0x87);
    broker.stop().await;
}

mod tls {
    use super::*;
    use lichen_broker::rustls::{self, ClientConfig, RootCertStore};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Mutex;
    use tokio_rustls::TlsConnector;

    struct Pki {
        dir: tempfile::TempDir,
        ca_pem: String,
        client_cert_pem: String,
        client_key_pem: String,
    }

    fn pki() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "Test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "device-1");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        Pki {
            dir,
            ca_pem: ca_cert.pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    /// Denies publishing under `deny/` and subscribing to it; records who connected.
    #[derive(Default)]
    struct Recording {
        certificates_seen: Mutex<Vec<usize>>,
    }

    impl Authorizer for Recording {
        fn connect(&self, ctx: &ClientContext) -> bool {
            self.certificates_seen
                .lock()
                .unwrap()
                .push(ctx.certificate_chain.len());
            true
        }
        fn publish(&self, _ctx: &ClientContext, topic: &str) -> bool {
            !topic.starts_with("deny/")
        }
        fn subscribe(&self, _ctx: &ClientContext, filter: &str) -> bool {
            !filter.starts_with("deny/")
        }
    }

    fn connector(pki: &Pki, with_client_cert: bool) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let config = if with_client_cert {
            let chain =
                vec![CertificateDer::from_pem_slice(pki.client_cert_pem.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        TlsConnector::from(Arc::new(config))
    }

    #[tokio::test]
    async fn client_certificates_are_required_and_reach_the_authorizer() {
        let pki = pki();
        let d = pki.dir.path();
        let tls = lichen_broker::tls_config(
            &d.join("server.pem"),
            &d.join("server.key"),
            Some(&d.join("ca.pem")),
        )
        .unwrap();
        let listener = Listener {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: Some(tls),
        };
        let auth = Arc::new(Recording::default());
        let broker = start_with(BrokerConfig::default(), listener, auth.clone()).await;
        let name = ServerName::try_from("localhost").unwrap();

        let socket = TcpStream::connect(broker.addr).await.unwrap();
        let stream = connector(&pki, true)
            .connect(name.clone(), socket)
            .await
            .expect("mutual TLS handshake");
        let (mut c, connack) = TestClient::handshake(
            stream,
            connect_packet("device-1", true, Properties::default()),
        )
        .await;
        assert_eq!(connack.reason_code, 0);
        assert_eq!(*auth.certificates_seen.lock().unwrap(), vec![1]);

        let s = Subscribe {
            packet_id: 3,
            properties: Properties::default(),
            filters: vec![
                (
                    "deny/x".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                    },
                ),
                (
                    "ok/x".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                    },
                ),
            ],
        };
        c.send(&Packet::Subscribe(s)).await;
        assert!(
            matches!(c.recv().await, Some(Packet::SubAck(a)) if a.reason_codes == vec![0x87, 0x01])
        );
        c.publish("deny/x", b"no", QoS::AtLeastOnce, 4).await;
        assert!(matches!(c.recv().await, Some(Packet::PubAck(a)) if a.reason_code == 0x87));
        c.publish("ok/x", b"yes", QoS::AtLeastOnce, 5).await;
        let mut got_ack = false;
        let mut got_msg = false;
        while !(got_ack && got_msg) {
            match c.recv().await {
                Some(Packet::PubAck(a)) if a.packet_id == 5 => got_ack = true,
                Some(Packet::Publish(p)) if p.topic == "ok/x" => got_msg = true,
                other => panic!("unexpected {other:?}"),
            }
        }

        // Without a client certificate the handshake (or the first read) fails.
        let socket = TcpStream::connect(broker.addr).await.unwrap();
        let refused = match connector(&pki, false).connect(name, socket).await {
            Err(_) => true,
            Ok(stream) => {
                let mut c = TestClient {
                    stream,
                    buf: BytesMut::new(),
                    version: Version::V5,
                };
                c.send(&connect_packet("anon", true, Properties::default()))
                    .await;
                c.recv().await.is_none()
            }
        };
        assert!(refused, "a client without a certificate got in");
        broker.stop().await;
    }
}

/// CONNECT, SUBSCRIBE and a PUBLISH to the subscribed topic in one write: all three are handled
/// without the client sending anything more.
#[tokio::test]
async fn packets_pipelined_behind_connect_in_one_write_are_all_handled() {
    let broker = start(BrokerConfig::default()).await;
    let mut c = TestClient {
        stream: TcpStream::connect(broker.addr).await.expect("connect"),
        buf: BytesMut::new(),
        version: Version::V5,
    };
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 7,
        properties: Properties::default(),
        filters: vec![(
            "pipelined/#".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            },
        )],
    });
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "pipelined/x".into(),
        packet_id: Some(9),
        properties: Properties::default(),
        payload: Bytes::from_static(b"in one segment"),
    });
    let mut out = BytesMut::new();
    for p in [
        connect_packet("pipeliner", true, Properties::default()),
        subscribe,
        publish,
    ] {
        codec::encode(&p, Version::V5, &mut out);
    }
    c.stream.write_all(&out).await.expect("write");

    let mut connack = false;
    let mut suback = None;
    let mut puback = None;
    let mut delivered = None;
    while !(connack && suback.is_some() && puback.is_some() && delivered.is_some()) {
        match c.recv().await {
            Some(Packet::ConnAck(a)) => {
                assert_eq!(a.reason_code, 0);
                connack = true;
            }
            Some(Packet::SubAck(a)) => suback = Some(a),
            Some(Packet::PubAck(a)) => puback = Some(a),
            Some(Packet::Publish(p)) => delivered = Some(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    let suback = suback.unwrap();
    assert_eq!(suback.packet_id, 7);
    assert_eq!(suback.reason_codes, vec![1]);
    assert_eq!(puback.unwrap().packet_id, 9);
    let delivered = delivered.unwrap();
    assert_eq!(delivered.topic, "pipelined/x");
    assert_eq!(&delivered.payload[..], b"in one segment");
    assert_eq!(delivered.qos, QoS::AtLeastOnce);
    broker.stop().await;
}

/// A client silent for 1.5 times its keep-alive is told (v5 reason 0x8D) and disconnected; a
/// client that keeps sending is not.
#[tokio::test]
async fn keep_alive_expiry_disconnects_the_silent_client_only() {
    let broker = start(BrokerConfig::default()).await;
    let short_keep_alive = |id: &str| {
        Packet::Connect(Connect {
            version: Version::V5,
            clean_start: true,
            keep_alive: 1,
            properties: Properties::default(),
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })
    };
    let (mut silent, _) = tcp(broker.addr, short_keep_alive("silent")).await;
    let (mut pinging, _) = tcp(broker.addr, short_keep_alive("pinging")).await;
    let silent_end = tokio::spawn(async move {
        let first = silent.recv().await;
        let then = silent.recv().await;
        (first, then)
    });
    // Ping until the silent one is gone: the pinging client must outlive it.
    while !silent_end.is_finished() {
        pinging.send(&Packet::PingReq).await;
        assert!(matches!(pinging.recv().await, Some(Packet::PingResp)));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (first, then) = silent_end.await.unwrap();
    assert!(
        matches!(first, Some(Packet::Disconnect(ref d)) if d.reason_code == 0x8D),
        "expected DISCONNECT 0x8D, got {first:?}"
    );
    assert!(then.is_none(), "connection closed after the DISCONNECT");
    pinging.send(&Packet::PingReq).await;
    assert!(matches!(pinging.recv().await, Some(Packet::PingResp)));
    broker.stop().await;
}
