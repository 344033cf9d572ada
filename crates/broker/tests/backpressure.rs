//! Messages to a connected subscriber are never dropped, whatever their QoS: a burst to a slower
//! subscriber holds the publisher back and arrives whole; a subscriber that stops reading is
//! disconnected as a slow consumer (0x97) and its persistent session keeps the queue.

use bytes::{Bytes, BytesMut};
use lichen_broker::codec::{Ack, Connect, Packet, Properties, Publish, QoS, Version};
use lichen_broker::{AllowAll, BrokerConfig, Listener, Server};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

mod support;
use support::{read_packet, subscribe_packet, write_packets};

const WAIT: Duration = Duration::from_secs(30);

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

struct Rd(OwnedReadHalf, BytesMut);

impl Rd {
    /// The next packet; `None` when the broker closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        read_packet(&mut self.0, &mut self.1, Version::V5, WAIT)
            .await
            .expect("a packet or a close in time")
    }
}

async fn send(w: &mut OwnedWriteHalf, packets: &[Packet]) {
    write_packets(w, Version::V5, packets).await;
}

async fn client(addr: SocketAddr, id: &str, clean: bool, expiry: u32) -> (Rd, OwnedWriteHalf) {
    let (r, mut w) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    let mut rd = Rd(r, BytesMut::new());
    let connect = Packet::Connect(Connect {
        version: Version::V5,
        clean_start: clean,
        keep_alive: 0,
        properties: Properties {
            session_expiry_interval: Some(expiry),
            receive_maximum: Some(20),
            ..Properties::default()
        },
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    });
    send(&mut w, &[connect]).await;
    assert!(matches!(rd.next().await, Some(Packet::ConnAck(a)) if a.reason_code == 0));
    (rd, w)
}

async fn subscribe(rd: &mut Rd, w: &mut OwnedWriteHalf, filter: &str) {
    subscribe_at(rd, w, filter, QoS::AtLeastOnce).await;
}

async fn subscribe_at(rd: &mut Rd, w: &mut OwnedWriteHalf, filter: &str, qos: QoS) {
    send(w, &[subscribe_packet(filter, qos)]).await;
    assert!(matches!(rd.next().await, Some(Packet::SubAck(_))));
}

fn publish(i: u32) -> Packet {
    publish_at(i, QoS::AtLeastOnce)
}

fn publish_at(i: u32, qos: QoS) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: "burst".into(),
        packet_id: (qos != QoS::AtMostOnce).then_some((i % 65_000 + 1) as u16),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(&i.to_be_bytes()),
    })
}

fn puback(packet_id: u16) -> Packet {
    Packet::PubAck(Ack {
        packet_id,
        reason_code: 0,
        properties: Properties::default(),
    })
}

/// Publishes `n` QoS 1 messages as fast as the socket takes them and counts the PUBACKs.
fn spawn_burst(addr: SocketAddr, n: u32) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let (mut rd, mut w) = client(addr, "burster", true, 0).await;
        let writer = tokio::spawn(async move {
            for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
                let packets: Vec<Packet> = chunk.iter().map(|&i| publish(i)).collect();
                send(&mut w, &packets).await;
            }
            w
        });
        let mut acks = 0;
        while acks < n {
            match rd.next().await {
                Some(Packet::PubAck(a)) => {
                    assert_eq!(a.reason_code, 0, "every message reached the subscriber");
                    acks += 1;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            }
        }
        drop(writer.await.expect("writer"));
        acks
    })
}

#[tokio::test]
async fn qos1_burst_to_a_slower_subscriber_arrives_whole() {
    const N: u32 = 20_000;
    let config = BrokerConfig {
        max_queued_messages: 1000,
        ..BrokerConfig::default()
    };
    let (addr, stop) = start(config).await;
    let (mut sub, mut sw) = client(addr, "slower", true, 0).await;
    subscribe(&mut sub, &mut sw, "burst").await;
    let burst = spawn_burst(addr, N);
    let mut next = 0u32;
    while next < N {
        match sub.next().await {
            Some(Packet::Publish(p)) => {
                let i = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                assert_eq!(i, next, "in order, none missing, none twice");
                next += 1;
                send(&mut sw, &[puback(p.packet_id.unwrap())]).await;
                if next.is_multiple_of(100) {
                    // Slower than the publisher: the broker's queue for us fills up.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            other => panic!("expected PUBLISH {next}, got {other:?}"),
        }
    }
    assert_eq!(burst.await.expect("publisher"), N);
    let _ = stop.send(());
}

/// QoS 0 overflow policy: a QoS 0 flood to a live but slower subscriber holds the publisher
/// back instead of dropping; every message arrives, in order.
#[tokio::test]
async fn qos0_burst_to_a_slower_subscriber_arrives_whole() {
    const N: u32 = 5_000;
    let config = BrokerConfig {
        max_queued_messages: 50,
        ..BrokerConfig::default()
    };
    let (addr, stop) = start(config).await;
    let (mut sub, mut sw) = client(addr, "slower0", true, 0).await;
    subscribe_at(&mut sub, &mut sw, "burst", QoS::AtMostOnce).await;
    let publisher = tokio::spawn(async move {
        let (rd, mut w) = client(addr, "burster0", true, 0).await;
        for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
            let packets: Vec<Packet> = chunk
                .iter()
                .map(|&i| publish_at(i, QoS::AtMostOnce))
                .collect();
            send(&mut w, &packets).await;
        }
        (rd, w)
    });
    let mut next = 0u32;
    while next < N {
        match sub.next().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.qos, QoS::AtMostOnce);
                let i = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                assert_eq!(i, next, "in order, none missing, none twice");
                next += 1;
                if next.is_multiple_of(50) {
                    // Slower than the publisher: the broker's queue for us fills up.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            other => panic!("expected PUBLISH {next}, got {other:?}"),
        }
    }
    drop(publisher.await.expect("publisher"));
    let _ = stop.send(());
}

#[tokio::test]
async fn a_stalled_subscriber_is_disconnected_and_its_session_keeps_the_queue() {
    const N: u32 = 3_000;
    let config = BrokerConfig {
        max_queued_messages: 100,
        slow_consumer_timeout: Duration::from_millis(300),
        ..BrokerConfig::default()
    };
    let (addr, stop) = start(config).await;
    let (mut sub, mut sw) = client(addr, "stalled", true, 600).await;
    subscribe(&mut sub, &mut sw, "burst").await;
    let burst = spawn_burst(addr, N);
    // Take a few without acknowledging, then stop reading: the window fills, then the queue.
    let mut got = std::collections::BTreeSet::new();
    for _ in 0..5 {
        match sub.next().await {
            Some(Packet::Publish(p)) => {
                got.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    // The publisher goes on once the stalled subscriber is told to go.
    assert_eq!(burst.await.expect("publisher"), N);
    // What the stalled subscriber still has on its socket ends with DISCONNECT 0x97.
    let mut reason = None;
    while let Some(p) = sub.next().await {
        match p {
            Packet::Publish(p) => {
                got.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
            }
            Packet::Disconnect(d) => reason = Some(d.reason_code),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reason, Some(0x97), "told it was a slow consumer");
    // Resuming the session delivers everything else (unacknowledged ones again, with DUP).
    let (mut sub, mut sw) = client(addr, "stalled", false, 600).await;
    while (got.len() as u32) < N {
        match sub.next().await {
            Some(Packet::Publish(p)) => {
                got.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
                send(&mut sw, &[puback(p.packet_id.unwrap())]).await;
            }
            other => panic!(
                "expected PUBLISH with {} of {N} seen, got {other:?}",
                got.len()
            ),
        }
    }
    assert_eq!(got.len() as u32, N);
    let _ = stop.send(());
}

/// A publisher that sends its last messages and closes at once (no DISCONNECT) has every
/// message it sent routed: bytes read together with the end of stream are handled first.
#[tokio::test]
async fn messages_sent_right_before_a_close_are_all_routed() {
    const N: u32 = 3_000;
    let (addr, stop) = start(BrokerConfig::default()).await;
    let (mut sub, mut sw) = client(addr, "listener", true, 0).await;
    subscribe_at(&mut sub, &mut sw, "burst", QoS::AtMostOnce).await;
    let (_rd, mut w) = client(addr, "closer", true, 0).await;
    let packets: Vec<Packet> = (0..N).map(|i| publish_at(i, QoS::AtMostOnce)).collect();
    send(&mut w, &packets).await;
    w.shutdown().await.expect("close the writing side");
    drop(w);
    for next in 0..N {
        match sub.next().await {
            Some(Packet::Publish(p)) => {
                let i = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                assert_eq!(i, next, "in order, none missing, none twice");
            }
            other => panic!("expected PUBLISH {next}, got {other:?}"),
        }
    }
    let _ = stop.send(());
}
