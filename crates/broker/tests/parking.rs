//! Idle-connection parking under stress, with a real broker on 127.0.0.1 and real sockets.
//!
//! Clients with wills go (close, reset, half-close) right while their connection is being
//! parked (just after the CONNACK), while it is parked, while it is being taken back into
//! service by their own traffic or by a delivery; every will must be published exactly once and
//! every connection must end (the broker's connection bound is barely above one batch, so a
//! connection that is never noticed as gone starves the next batches). Keep-alive expiry and
//! shutdown must reach parked connections.

use bytes::{Bytes, BytesMut};
use lichen_broker::codec::{self, Ack, Connect, Packet, Properties, Publish, QoS, Version, Will};
use lichen_broker::{AllowAll, BrokerConfig, Listener, Server};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

mod support;
use support::{read_packet, subscribe_packet, write_packets};

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .expect("server task");
    }
}

async fn start(max_connections: usize) -> Running {
    let config = BrokerConfig {
        park_idle_connections: true,
        max_connections,
        ..BrokerConfig::default()
    };
    let listener = Listener {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
    };
    let server = Server::bind(config, &[listener], Arc::new(AllowAll))
        .await
        .expect("bind");
    let addr = server.local_addrs()[0];
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running { addr, stop, task }
}

struct Client {
    stream: TcpStream,
    buf: BytesMut,
    version: Version,
}

impl Client {
    async fn connect(addr: SocketAddr, connect: Connect) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut c = Client {
            stream,
            buf: BytesMut::new(),
            version: connect.version,
        };
        let id = connect.client_id.clone();
        c.send(&Packet::Connect(connect)).await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, 0, "{id} refused"),
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
        c
    }

    async fn send(&mut self, p: &Packet) {
        write_packets(&mut self.stream, self.version, std::slice::from_ref(p)).await;
    }

    /// The next packet, or `None` once the broker closed (or reset) the connection.
    async fn recv(&mut self) -> Option<Packet> {
        read_packet(&mut self.stream, &mut self.buf, self.version, WAIT + WAIT)
            .await
            .expect("a packet or a close in time")
    }

    async fn subscribe(&mut self, filter: &str) {
        self.send(&subscribe_packet(filter, QoS::AtLeastOnce)).await;
        match self.recv().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, vec![1]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Reads until the broker closes the connection; returns the DISCONNECT reason it sent
    /// before closing, if any.
    async fn until_closed(&mut self) -> Option<u8> {
        let mut reason = None;
        while let Some(p) = self.recv().await {
            if let Packet::Disconnect(d) = p {
                reason = Some(d.reason_code);
            }
        }
        reason
    }
}

/// Collects the topics of everything published to `filter`, acknowledging QoS 1.
async fn collector(addr: SocketAddr, filter: &str) -> mpsc::UnboundedReceiver<String> {
    let mut sub = Client::connect(addr, connect("collector", Version::V5, 0, 0, None)).await;
    sub.subscribe(filter).await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let read = async {
                loop {
                    if let Some((p, used)) =
                        codec::decode(&sub.buf, Some(sub.version), usize::MAX).expect("valid")
                    {
                        let _ = sub.buf.split_to(used);
                        return Some(p);
                    }
                    match sub.stream.read_buf(&mut sub.buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            };
            let Some(p) = read.await else { return };
            if let Packet::Publish(p) = p {
                if let Some(id) = p.packet_id {
                    let ack = Ack {
                        packet_id: id,
                        reason_code: 0,
                        properties: Properties::default(),
                    };
                    sub.send(&Packet::PubAck(ack)).await;
                }
                if tx.send(p.topic).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// A CONNECT with keep-alive `keep_alive`, session expiry `expiry` (v5; 0 = ends with the
/// connection) and a QoS 1 will on `will_topic` delayed by `will_delay` seconds (v5).
fn connect(
    client_id: &str,
    version: Version,
    keep_alive: u16,
    expiry: u32,
    will: Option<(&str, u32)>,
) -> Connect {
    let will = will.map(|(topic, delay)| Will {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(client_id.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: (delay > 0).then_some(delay),
            ..Properties::default()
        },
    });
    Connect {
        version,
        clean_start: true,
        keep_alive,
        properties: Properties {
            session_expiry_interval: (expiry > 0).then_some(expiry),
            ..Properties::default()
        },
        client_id: client_id.into(),
        will,
        username: None,
        password: None,
    }
}

/// How a client goes.
#[derive(Clone, Copy, Debug)]
enum Go {
    /// close(): FIN.
    Close,
    /// SO_LINGER 0, then close(): RST.
    Reset,
    /// shutdown(SHUT_WR), then wait for the broker to close its side.
    HalfClose,
}

/// When a client goes, relative to its connection's parking.
#[derive(Clone, Copy, Debug)]
enum When {
    /// Right after the CONNACK: the connection is being parked for the first time.
    RightAfterConnack,
    /// A little later: the connection is parked.
    WhileParked,
    /// Together with a PINGREQ: the connection is being taken back into service for it.
    WithPing,
    /// Together with a delivery to it: the connection is being woken through its outbox.
    WithDelivery,
}

const GOES: [Go; 3] = [Go::Close, Go::Reset, Go::HalfClose];
const WHENS: [When; 4] = [
    When::RightAfterConnack,
    When::WhileParked,
    When::WithPing,
    When::WithDelivery,
];

/// A client that connects with a will and goes as told.
async fn client_that_goes(
    addr: SocketAddr,
    connect: Connect,
    go: Go,
    when: When,
    pause: Duration,
    poke: mpsc::UnboundedSender<String>,
) {
    let id = connect.client_id.clone();
    let mut c = tokio::time::timeout(WAIT, Client::connect(addr, connect))
        .await
        .unwrap_or_else(|_| {
            panic!("{id}: no CONNACK in time (the broker's connection bound is taken)")
        });
    let poke_topic = format!("poke/{id}");
    if matches!(when, When::WithDelivery) {
        c.subscribe(&poke_topic).await;
    }
    if !matches!(when, When::RightAfterConnack) {
        tokio::time::sleep(pause).await;
    }
    match when {
        When::WithPing => c.send(&Packet::PingReq).await,
        When::WithDelivery => poke.send(poke_topic).expect("poker runs"),
        When::RightAfterConnack | When::WhileParked => {}
    }
    match go {
        Go::Close => drop(c),
        Go::Reset => {
            c.stream.set_zero_linger().expect("SO_LINGER");
            drop(c);
        }
        Go::HalfClose => {
            c.stream.shutdown().await.expect("shutdown");
            // The broker ends the connection: anything it still sends comes before its close.
            let closed = tokio::time::timeout(WAIT, c.until_closed()).await;
            assert!(
                closed.is_ok(),
                "{id} ({when:?}): the broker never closed after a half-close"
            );
        }
    }
}

/// Publishes a QoS 0 message on every topic it is given.
async fn poker(addr: SocketAddr) -> mpsc::UnboundedSender<String> {
    let mut c = Client::connect(addr, connect("poker", Version::V5, 0, 0, None)).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(topic) = rx.recv().await {
            let p = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic,
                packet_id: None,
                properties: Properties::default(),
                payload: Bytes::from_static(b"poke"),
            };
            c.send(&Packet::Publish(p)).await;
        }
    });
    tx
}

/// Waits until every expected topic came (or `WAIT` passed since the last one), then a little
/// longer for duplicates; returns how often each topic came.
async fn gather(
    wills: &mut mpsc::UnboundedReceiver<String>,
    expected: &HashMap<String, String>,
    linger: Duration,
) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut last = Instant::now();
    while expected.keys().any(|t| !seen.contains_key(t)) && last.elapsed() < WAIT {
        if let Ok(Some(t)) = tokio::time::timeout(Duration::from_millis(200), wills.recv()).await {
            *seen.entry(t).or_default() += 1;
            last = Instant::now();
        }
    }
    let until = Instant::now() + linger;
    while let Ok(Some(t)) = tokio::time::timeout_at(until.into(), wills.recv()).await {
        *seen.entry(t).or_default() += 1;
    }
    seen
}

/// Asserts that every expected will came exactly once and nothing else came.
fn assert_exactly_once(expected: &HashMap<String, String>, seen: &HashMap<String, usize>) {
    let mut missing: Vec<&String> = expected
        .iter()
        .filter(|(t, _)| !seen.contains_key(*t))
        .map(|(_, how)| how)
        .collect();
    missing.sort();
    let mut twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    twice.sort();
    let unexpected: Vec<&String> = seen.keys().filter(|t| !expected.contains_key(*t)).collect();
    assert!(
        missing.is_empty() && twice.is_empty() && unexpected.is_empty(),
        "{} of {} wills missing: {missing:?}; more than once: {twice:?}; unexpected: {unexpected:?}",
        missing.len(),
        expected.len()
    );
}

/// A small deterministic generator for pauses (so a failure can be rerun the same way).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wills_of_clients_gone_around_parking_are_published_exactly_once() {
    const BATCH: usize = 48;
    const MAX_ROUNDS: usize = 120;
    const ROUNDS_FOR: Duration = Duration::from_secs(7);
    // The collector, the poker and one spare above a batch: a connection that is never noticed
    // as gone keeps its place, and later batches then cannot connect.
    let broker = start(BATCH + 3).await;
    let mut wills = collector(broker.addr, "will/#").await;
    let poke = poker(broker.addr).await;
    let mut rng = Lcg(0x5eed);
    let mut expected = HashMap::new();
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < MAX_ROUNDS && started.elapsed() < ROUNDS_FOR {
        let mut clients = Vec::with_capacity(BATCH);
        for i in 0..BATCH {
            let id = format!("c{rounds}-{i}");
            let topic = format!("will/{id}");
            let version = if (i / 12) % 2 == 0 {
                Version::V5
            } else {
                Version::V311
            };
            // Every fifth v5 client's will is delayed by a second; its session outlives the
            // connection (by one or by five seconds) so the delay applies.
            let delayed = version == Version::V5 && i % 5 == 0;
            let (expiry, delay) = if delayed {
                (if i % 2 == 0 { 1 } else { 5 }, 1)
            } else {
                (0, 0)
            };
            let go = GOES[i % GOES.len()];
            let when = WHENS[(i / GOES.len()) % WHENS.len()];
            let pause = Duration::from_micros(rng.next() % 30_000);
            expected.insert(
                topic.clone(),
                format!("{id} {version:?} {go:?} {when:?} delay {delay}"),
            );
            let connect = connect(&id, version, 60, expiry, Some((&topic, delay)));
            clients.push(tokio::spawn(client_that_goes(
                broker.addr,
                connect,
                go,
                when,
                pause,
                poke.clone(),
            )));
        }
        for c in clients {
            tokio::time::timeout(WAIT + WAIT, c)
                .await
                .expect("client done in time (a connection never ended holds its place)")
                .expect("client task");
        }
        rounds += 1;
    }
    let seen = gather(&mut wills, &expected, Duration::from_millis(1500)).await;
    eprintln!(
        "{rounds} rounds of {BATCH} clients, {} wills",
        expected.len()
    );
    assert_exactly_once(&expected, &seen);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parked_clients_whose_keep_alive_expires_are_disconnected_and_their_wills_published() {
    let broker = start(1000).await;
    let mut wills = collector(broker.addr, "will/#").await;
    let mut expected = HashMap::new();
    let mut silent = Vec::new();
    for i in 0..40 {
        let id = format!("ka-{i}");
        let topic = format!("will/{id}");
        let version = if i % 2 == 0 {
            Version::V5
        } else {
            Version::V311
        };
        let (expiry, delay) = if i % 4 == 0 { (5, 1) } else { (0, 0) };
        expected.insert(topic.clone(), format!("{id} {version:?} delay {delay}"));
        let c = Client::connect(
            broker.addr,
            connect(&id, version, 1, expiry, Some((&topic, delay))),
        )
        .await;
        silent.push(tokio::spawn(async move {
            let mut c = c;
            (c.version, c.until_closed().await)
        }));
    }
    // Clients without keep-alive stay, parked, however long they are quiet.
    let mut quiet = Vec::new();
    for i in 0..10 {
        let id = format!("quiet-{i}");
        quiet.push(Client::connect(broker.addr, connect(&id, Version::V5, 0, 0, None)).await);
    }
    for s in silent {
        let (version, reason) = s.await.unwrap();
        if version == Version::V5 {
            assert_eq!(reason, Some(0x8D), "DISCONNECT with keep-alive timeout");
        }
    }
    let seen = gather(&mut wills, &expected, Duration::from_millis(500)).await;
    assert_exactly_once(&expected, &seen);
    for q in &mut quiet {
        q.send(&Packet::PingReq).await;
        assert!(matches!(q.recv().await, Some(Packet::PingResp)));
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_reaches_parked_clients() {
    let broker = start(1000).await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let id = format!("sd-{i}");
        let version = if i % 2 == 0 {
            Version::V5
        } else {
            Version::V311
        };
        let topic = format!("will/{id}");
        clients.push(
            Client::connect(broker.addr, connect(&id, version, 60, 0, Some((&topic, 0)))).await,
        );
    }
    // Parked by now (they park right after their CONNACK); a few wake for a PINGREQ just as
    // the broker stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in clients.iter_mut().step_by(7) {
        c.send(&Packet::PingReq).await;
    }
    let stopping = tokio::spawn(broker.stop());
    for mut c in clients {
        let version = c.version;
        let mut reason = None;
        while let Some(p) = c.recv().await {
            match p {
                Packet::Disconnect(d) => reason = Some(d.reason_code),
                Packet::PingResp => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        if version == Version::V5 {
            assert_eq!(reason, Some(0x8B), "DISCONNECT with server shutting down");
        }
    }
    stopping.await.unwrap();
}
