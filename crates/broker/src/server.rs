//! Listeners, connection tasks with a bound on their number, and graceful shutdown.

use crate::auth::{Authorizer, ClientContext};
use crate::connection;
use crate::idle::IdlePool;
use crate::state::{BrokerConfig, Core};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}; pick a free port or another address")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {what}")]
    TlsFile { path: PathBuf, what: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// One address to listen on, with TLS settings for `tls://` listeners.
#[derive(Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: Option<Arc<ServerConfig>>,
}

/// Builds a TLS server configuration; with `client_ca`, clients must present a certificate
/// chaining to one of its CAs.
pub fn tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, BrokerError> {
    let file_err = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls::pki_types::pem::Error| BrokerError::TlsFile {
            path,
            what: e.to_string(),
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(file_err(cert))?
        .collect::<Result<_, _>>()
        .map_err(file_err(cert))?;
    if chain.is_empty() {
        return Err(BrokerError::TlsFile {
            path: cert.to_owned(),
            what: "no PEM certificate found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(file_err(key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(file_err(ca))? {
                roots
                    .add(c.map_err(file_err(ca))?)
                    .map_err(|e| BrokerError::TlsFile {
                        path: ca.to_owned(),
                        what: e.to_string(),
                    })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| BrokerError::Tls(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key_der).map_err(|e| {
        BrokerError::Tls(format!(
            "certificate {} with key {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Arc::new(config))
}

struct Bound {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    anonymous_allowed: bool,
}

/// A broker with its listeners bound, ready to [`Server::run`].
pub struct Server {
    core: Arc<Core>,
    authorizer: Arc<dyn Authorizer>,
    bound: Vec<Bound>,
}

impl Server {
    pub async fn bind(
        config: BrokerConfig,
        listeners: &[Listener],
        authorizer: Arc<dyn Authorizer>,
    ) -> Result<Server, BrokerError> {
        let mut bound = Vec::new();
        for l in listeners {
            let listener = TcpListener::bind(l.addr)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: l.addr,
                    source,
                })?;
            let anonymous_allowed = l.tls.is_none() && l.addr.ip().is_loopback();
            if l.tls.is_none() && !anonymous_allowed {
                tracing::warn!(addr = %l.addr, "plain TCP listener off loopback: every CONNECT will be refused (no client certificate)");
            }
            bound.push(Bound {
                listener,
                tls: l.tls.clone().map(TlsAcceptor::from),
                anonymous_allowed,
            });
        }
        Ok(Server {
            core: Core::new(config),
            authorizer,
            bound,
        })
    }

    /// A handle for in-process clients of this broker (see [`BrokerHandle::connect_in_process`]).
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle {
            core: self.core.clone(),
        }
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter_map(|b| b.listener.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` completes, then tells every client and waits (bounded) for them.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let max = self.core.config.max_connections.max(1);
        let permits = Arc::new(Semaphore::new(max));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        {
            let core = self.core.clone();
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(HOUSEKEEPING_PERIOD);
                loop {
                    tokio::select! {
                        _ = tick.tick() => core.tick(),
                        _ = stop.changed() => break,
                    }
                }
            }));
        }
        // Without a pool (not asked for, or no epoll set could be made), idle connections simply
        // keep their tasks.
        if self.core.config.park_idle_connections {
            match IdlePool::new() {
                Ok(pool) => {
                    self.core.set_idle_pool(&pool);
                    tasks.push(tokio::spawn(pool.run(stop_rx.clone())));
                }
                Err(e) => tracing::warn!("idle connections will not be parked: {e}"),
            }
        }
        for b in self.bound {
            let core = self.core.clone();
            let authorizer = self.authorizer.clone();
            let permits = permits.clone();
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(accept_loop(
                b, core, authorizer, permits, stop,
            )));
        }
        shutdown.await;
        // Connections hold no shutdown receiver (an idle one waits on as little as possible):
        // their sessions' outboxes tell them. Told before the idle pool stops, so that parked
        // connections wake and send their DISCONNECT 0x8B too.
        self.core.shut_down();
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        // Every connection task holds a permit; all permits back means all tasks ended.
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        if tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within {SHUTDOWN_GRACE:?}");
        }
    }
}

async fn accept_loop(
    b: Bound,
    core: Arc<Core>,
    authorizer: Arc<dyn Authorizer>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (socket, peer) = tokio::select! {
            r = b.listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = socket.set_nodelay(true);
        let ctx = ClientContext {
            client_id: String::new(),
            username: None,
            peer,
            certificate_chain: Vec::new(),
            anonymous_allowed: b.anonymous_allowed,
        };
        let (core, authorizer) = (core.clone(), authorizer.clone());
        match b.tls.clone() {
            // Spawned as built: the connection state is the task's only capture, so an idle
            // connection's task is little more than that state (see `connection::serve`).
            None => {
                tokio::spawn(connection::serve(
                    core,
                    authorizer,
                    socket,
                    ctx,
                    Some(permit),
                ));
            }
            // A task of its own size: the handshake and the TLS stream are several kilobytes
            // that plain-TCP connections' tasks must not be sized for.
            Some(acceptor) => {
                tokio::spawn(serve_tls(socket, acceptor, ctx, core, authorizer, permit));
            }
        }
    }
}

async fn serve_tls(
    socket: TcpStream,
    acceptor: TlsAcceptor,
    mut ctx: ClientContext,
    core: Arc<Core>,
    authorizer: Arc<dyn Authorizer>,
    permit: OwnedSemaphorePermit,
) {
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(peer = %ctx.peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(peer = %ctx.peer, "TLS handshake timed out");
            return;
        }
    };
    if let Some(chain) = stream.get_ref().1.peer_certificates() {
        ctx.certificate_chain = chain.iter().map(|c| c.clone().into_owned()).collect();
    }
    connection::serve(core, authorizer, stream, ctx, Some(permit)).await
}

/// Lets the process that embeds the broker join it as a client.
#[derive(Clone)]
pub struct BrokerHandle {
    core: Arc<Core>,
}

impl BrokerHandle {
    /// Opens an in-process connection: the returned stream speaks MQTT to the broker exactly as a
    /// socket would (send CONNECT first). Its client is allowed everything, so only code in the
    /// embedding process can use it. The connection ends when the stream is dropped.
    pub fn connect_in_process(&self) -> tokio::io::DuplexStream {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let ctx = ClientContext {
            client_id: String::new(),
            username: None,
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            certificate_chain: Vec::new(),
            anonymous_allowed: true,
        };
        let core = self.core.clone();
        // It ends when the embedding side drops its stream, or when the broker shuts down.
        tokio::spawn(connection::serve(
            core,
            Arc::new(crate::auth::AllowAll),
            theirs,
            ctx,
            None,
        ));
        ours
    }

    /// Serves a client whose TLS handshake the embedding process completed itself (to look its
    /// certificate up before any MQTT, say): the connection is the broker's from here, under
    /// `authorizer`, and the future ends when it does. A client without a certificate is refused
    /// at CONNECT, as on any listener that is not plain loopback TCP.
    pub fn serve_tls(
        &self,
        stream: tokio_rustls::server::TlsStream<TcpStream>,
        peer: SocketAddr,
        authorizer: Arc<dyn Authorizer>,
    ) -> impl Future<Output = ()> + Send + use<> {
        let certificate_chain = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let ctx = ClientContext {
            client_id: String::new(),
            username: None,
            peer,
            certificate_chain,
            anonymous_allowed: false,
        };
        connection::serve(self.core.clone(), authorizer, stream, ctx, None)
    }

    /// Publishes to one connected client, through its subscriptions that match `topic` (and
    /// as its authorizer lets it receive), to no one else; the message is never retained.
    /// Returns whether the client is connected with a matching subscription.
    pub fn publish_to(
        &self,
        client_id: &str,
        topic: &str,
        payload: bytes::Bytes,
        qos: crate::codec::QoS,
    ) -> bool {
        let message = Arc::new(crate::state::Message {
            topic: topic.to_owned(),
            payload,
            qos,
            retain: false,
            properties: crate::codec::Properties::default(),
            expires_at: None,
            publisher: String::new(),
        });
        self.core.publish_to(client_id, message)
    }

    /// Tells the connected client `client_id` to go: MQTT 5 clients get a DISCONNECT with
    /// `reason_code`, 3.1.1 clients see the connection close. Its will is published as for any
    /// abnormal end. Returns whether such a client was connected.
    pub fn disconnect(&self, client_id: &str, reason_code: u8) -> bool {
        self.core.kick_client(client_id, reason_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{self, Packet, Properties, QoS, Version};

    /// What an idle plain-TCP connection's task holds is its future: keep it within budget
    /// (the TLS states, the CONNECT, timers and rare waits are kept out of it).
    #[tokio::test]
    async fn plain_tcp_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ctx = ClientContext {
            client_id: String::new(),
            username: None,
            peer: addr,
            certificate_chain: Vec::new(),
            anonymous_allowed: true,
        };
        let core = Core::new(BrokerConfig::default());
        let socket = TcpStream::connect(addr).await.unwrap();
        let task = connection::serve(core, Arc::new(crate::AllowAll), socket, ctx, None);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task future: {size} bytes");
        assert!(size <= 1536, "connection task future is {size} bytes");
    }

    /// Reads the next packet; `None` once the broker closed the connection.
    async fn next_packet(stream: &mut TcpStream, buf: &mut bytes::BytesMut) -> Option<Packet> {
        use tokio::io::AsyncReadExt;
        let read = async {
            loop {
                if let Some((p, used)) =
                    codec::decode(buf, Some(Version::V311), usize::MAX).expect("valid packet")
                {
                    let _ = buf.split_to(used);
                    return Some(p);
                }
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a packet or a close in time")
    }

    async fn send(stream: &mut TcpStream, packet: Packet) {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        codec::encode(&packet, Version::V311, &mut out);
        stream.write_all(&out).await.expect("write");
    }

    async fn connect(addr: SocketAddr, client_id: &str) -> (TcpStream, bytes::BytesMut) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let connect = codec::Connect {
            version: Version::V311,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        };
        send(&mut stream, Packet::Connect(connect)).await;
        let mut buf = bytes::BytesMut::new();
        match next_packet(&mut stream, &mut buf).await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, 0),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        (stream, buf)
    }

    /// Waits (bounded) until `n` connections are parked.
    async fn until_parked(core: &Core, n: usize) {
        let parked = || core.idle_pool().map_or(0, |p| p.len());
        for _ in 0..200 {
            if parked() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} connections parked, expected {n}", parked());
    }

    /// A server on an ephemeral loopback port: its address, its core, the sender that stops it
    /// and its task.
    async fn start_loopback(
        config: BrokerConfig,
    ) -> (
        SocketAddr,
        Arc<Core>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listeners = [Listener {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: None,
        }];
        let server = Server::bind(config, &listeners, Arc::new(crate::AllowAll))
            .await
            .unwrap();
        let addr = server.local_addrs()[0];
        let core = server.core.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        (addr, core, stop, task)
    }

    /// Idle plain-TCP connections leave their tasks for the idle pool; a parked connection
    /// wakes for what its client sends and for deliveries, and shutdown reaches it.
    #[tokio::test]
    async fn idle_connections_park_and_wake() {
        // Parking is the default.
        let (addr, core, stop, task) = start_loopback(BrokerConfig::default()).await;

        let (mut sub, mut sub_buf) = connect(addr, "subscriber").await;
        until_parked(&core, 1).await;
        // Its SUBSCRIBE wakes it.
        let subscribe = codec::Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                "t/idle".into(),
                codec::SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                },
            )],
        };
        send(&mut sub, Packet::Subscribe(subscribe)).await;
        match next_packet(&mut sub, &mut sub_buf).await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, vec![1]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        let (mut publisher, _) = connect(addr, "publisher").await;
        // Both quiet: both parked.
        until_parked(&core, 2).await;
        // A delivery wakes the parked subscriber.
        let publish = codec::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t/idle".into(),
            packet_id: None,
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"to a parked subscriber"),
        };
        send(&mut publisher, Packet::Publish(publish)).await;
        match next_packet(&mut sub, &mut sub_buf).await {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.topic, "t/idle");
                assert_eq!(&p.payload[..], b"to a parked subscriber");
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
        until_parked(&core, 2).await;
        // Shutdown closes parked connections (MQTT 3.1.1 has no server DISCONNECT).
        let _ = stop.send(());
        assert!(next_packet(&mut sub, &mut sub_buf).await.is_none());
        let mut pub_buf = bytes::BytesMut::new();
        assert!(next_packet(&mut publisher, &mut pub_buf).await.is_none());
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server stops")
            .unwrap();
    }

    /// With parking off, idle connections keep their tasks and are served as before.
    #[tokio::test]
    async fn parking_can_be_turned_off() {
        let config = BrokerConfig {
            park_idle_connections: false,
            ..BrokerConfig::default()
        };
        let (addr, core, stop, task) = start_loopback(config).await;
        let (mut client, mut buf) = connect(addr, "unparked").await;
        // Two housekeeping ticks: a parked connection would be parked by now.
        tokio::time::sleep(2 * HOUSEKEEPING_PERIOD + Duration::from_millis(100)).await;
        assert!(
            core.idle_pool().is_none(),
            "no idle pool when parking is off"
        );
        send(&mut client, Packet::PingReq).await;
        assert!(matches!(
            next_packet(&mut client, &mut buf).await,
            Some(Packet::PingResp)
        ));
        let _ = stop.send(());
        assert!(next_packet(&mut client, &mut buf).await.is_none());
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server stops")
            .unwrap();
    }
}
