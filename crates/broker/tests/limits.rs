//! The broker's bounds on retained messages, subscriptions, sessions and session expiry, each
//! refused the MQTT way for the client's version: 0x97 (quota exceeded) where MQTT 5 can say
//! so; SUBACK 0x80, CONNACK 0x03 or a closed connection for MQTT 3.1.1.

use bytes::{Bytes, BytesMut};
use lichen_broker::codec::{Connect, Packet, Properties, Publish, QoS, Version};
use lichen_broker::{AllowAll, BrokerConfig, Listener, Server};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

mod support;
use support::{read_packet, subscribe_packet, write_packets};

const WAIT: Duration = Duration::from_secs(10);
const QUOTA_EXCEEDED: u8 = 0x97;

async fn start(config: BrokerConfig) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = Listener {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
    };
    let server = Server::bind(config, &[listener], std::sync::Arc::new(AllowAll))
        .await
        .expect("bind");
    let addr = server.local_addrs()[0];
    let (tx, rx) = oneshot::channel();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addr, tx)
}

struct Client {
    stream: TcpStream,
    buf: BytesMut,
    version: Version,
}

impl Client {
    /// Connects; returns the client and its CONNACK.
    async fn connect(
        addr: SocketAddr,
        version: Version,
        id: &str,
        clean: bool,
        expiry: Option<u32>,
    ) -> (Client, lichen_broker::codec::ConnAck) {
        let mut c = Client {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
            version,
        };
        c.send(Packet::Connect(Connect {
            version,
            clean_start: clean,
            keep_alive: 0,
            properties: Properties {
                session_expiry_interval: expiry,
                ..Properties::default()
            },
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        }))
        .await;
        match c.next().await {
            Some(Packet::ConnAck(a)) => (c, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: Packet) {
        write_packets(&mut self.stream, self.version, &[p]).await;
    }

    /// The next packet; `None` once the broker closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        read_packet(&mut self.stream, &mut self.buf, self.version, WAIT)
            .await
            .expect("a packet or a close in time")
    }

    async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        self.send(Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(7),
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload),
        }))
        .await;
    }

    /// The PUBACK reason code of a QoS 1 publication.
    async fn puback(&mut self, topic: &str, payload: &[u8], retain: bool) -> u8 {
        self.publish(topic, payload, QoS::AtLeastOnce, retain).await;
        match self.next().await {
            Some(Packet::PubAck(a)) => a.reason_code,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    async fn suback(&mut self, filter: &str) -> u8 {
        self.send(subscribe_packet(filter, QoS::AtLeastOnce)).await;
        match self.next().await {
            Some(Packet::SubAck(a)) => a.reason_codes[0],
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

fn bounded() -> BrokerConfig {
    BrokerConfig {
        max_retained_messages: 2,
        max_retained_bytes: 100,
        max_subscriptions_per_client: 2,
        max_sessions: 3,
        max_session_expiry_secs: 1,
        ..BrokerConfig::default()
    }
}

#[test]
fn the_default_bounds_are_finite() {
    let d = BrokerConfig::default();
    assert!(d.max_retained_messages < usize::MAX);
    assert!(d.max_retained_bytes < usize::MAX);
    assert!(d.max_subscriptions_per_client < usize::MAX);
    assert!(d.max_sessions < usize::MAX);
    assert_eq!(d.max_session_expiry_secs, 3600);
}

#[tokio::test]
async fn retained_messages_are_bounded_by_count_and_bytes() {
    let (addr, _stop) = start(bounded()).await;
    let (mut c, _) = Client::connect(addr, Version::V5, "pub", true, None).await;
    assert_eq!(c.puback("r/a", b"one", true).await, 0x10);
    assert_eq!(c.puback("r/b", b"two", true).await, 0x10);
    assert_eq!(c.puback("r/c", b"three", true).await, QUOTA_EXCEEDED);
    // Replacing a retained topic is within the count; clearing one frees room.
    assert_eq!(c.puback("r/a", b"uno", true).await, 0x10);
    assert_eq!(c.puback("r/b", &[b'x'; 120], true).await, QUOTA_EXCEEDED);
    assert_eq!(c.puback("r/b", b"", true).await, 0x10);
    assert_eq!(c.puback("r/c", b"three", true).await, 0x10);
    // A publication that is not retained is never refused for it.
    assert_eq!(c.puback("r/d", b"live", false).await, 0x10);

    let (mut s, _) = Client::connect(addr, Version::V5, "sub", true, None).await;
    assert_eq!(s.suback("r/#").await, 1);
    let mut got = Vec::new();
    for _ in 0..2 {
        match s.next().await {
            Some(Packet::Publish(p)) => got.push((p.topic, p.payload)),
            other => panic!("expected a retained PUBLISH, got {other:?}"),
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("r/a".to_string(), Bytes::from_static(b"uno")),
            ("r/c".to_string(), Bytes::from_static(b"three"))
        ]
    );

    // QoS 0 cannot be acknowledged: the MQTT 5 client is disconnected with 0x97.
    c.publish("r/e", b"five", QoS::AtMostOnce, true).await;
    match c.next().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, QUOTA_EXCEEDED),
        other => panic!("expected DISCONNECT 0x97, got {other:?}"),
    }
    // MQTT 3.1.1 has no way to say it: the connection closes without a PUBACK.
    let (mut old, _) = Client::connect(addr, Version::V311, "old", true, None).await;
    old.publish("r/f", b"six", QoS::AtLeastOnce, true).await;
    assert!(old.next().await.is_none());
}

#[tokio::test]
async fn subscriptions_per_client_are_bounded() {
    let (addr, _stop) = start(bounded()).await;
    let (mut c, _) = Client::connect(addr, Version::V5, "many", true, None).await;
    assert_eq!(c.suback("a").await, 1);
    assert_eq!(c.suback("b").await, 1);
    assert_eq!(c.suback("c").await, QUOTA_EXCEEDED);
    assert_eq!(c.suback("a").await, 1, "a filter held already is replaced");
    let (mut old, _) = Client::connect(addr, Version::V311, "many-old", true, None).await;
    assert_eq!(old.suback("a").await, 1);
    assert_eq!(old.suback("b").await, 1);
    assert_eq!(old.suback("c").await, 0x80);
}

#[tokio::test]
async fn sessions_are_bounded() {
    let (addr, _stop) = start(BrokerConfig {
        max_session_expiry_secs: 600,
        ..bounded()
    })
    .await;
    // Three persistent sessions, kept after their clients go.
    for id in ["s1", "s2", "s3"] {
        let (c, a) = Client::connect(addr, Version::V5, id, true, Some(600)).await;
        assert_eq!(a.reason_code, 0);
        drop(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, a) = Client::connect(addr, Version::V5, "s4", true, None).await;
    assert_eq!(a.reason_code, QUOTA_EXCEEDED);
    let (_, a) = Client::connect(addr, Version::V311, "s4", true, None).await;
    assert_eq!(a.reason_code, 0x03);
    // An existing session's client still connects.
    let (_, a) = Client::connect(addr, Version::V5, "s2", false, Some(600)).await;
    assert_eq!(a.reason_code, 0);
    assert!(a.session_present);
}

#[tokio::test]
async fn session_expiry_is_bounded_for_both_versions() {
    let (addr, _stop) = start(bounded()).await;
    // MQTT 5: asking for more than the bound gets the bound, announced in CONNACK.
    let (_, a) = Client::connect(addr, Version::V5, "five", true, Some(u32::MAX)).await;
    assert_eq!(a.properties.session_expiry_interval, Some(1));
    let (_, a) = Client::connect(addr, Version::V5, "five-short", true, Some(1)).await;
    assert_eq!(a.properties.session_expiry_interval, None);
    // MQTT 3.1.1 persistent sessions end once the bound passed after their client went.
    let (mut c, _) = Client::connect(addr, Version::V311, "three", false, None).await;
    assert_eq!(c.suback("x").await, 1);
    drop(c);
    let (c, a) = Client::connect(addr, Version::V311, "three", false, None).await;
    assert!(a.session_present, "the session outlives its connection");
    drop(c);
    // Past the bound (1 s) the session is gone, whether or not housekeeping ran yet.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, a) = Client::connect(addr, Version::V311, "three", false, None).await;
    let present = a.session_present;
    assert!(!present, "a 3.1.1 persistent session expires");
}
