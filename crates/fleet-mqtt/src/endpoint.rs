//! The listener: TLS handshake, certificate lookup, then the broker's connection under the
//! fleet authorizer; and the service's handle on all of it.

use crate::authz::{DeviceConn, FleetAuthorizer, may_connect};
use crate::presence::{PresenceEvent, now_ms, session_id};
use crate::service::{Routes, ServiceClient, ServiceTopics};
use crate::{DeviceCertificate, DeviceDirectory, DirectoryError};
use bytes::Bytes;
use lichen_broker::codec::{self, Properties, Publish, QoS};
use lichen_broker::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use lichen_broker::rustls::server::WebPkiClientVerifier;
use lichen_broker::rustls::{self, RootCertStore, ServerConfig};
use lichen_broker::{AllowAll, BrokerConfig, BrokerError, BrokerHandle, Server};
use lichen_fleet_policy::Arns;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(10);
/// MQTT 5 DISCONNECT reason for a device whose certificate or policy no longer lets it connect.
const NOT_AUTHORIZED: u8 = 0x87;
/// ALPN protocols accepted: the AWS device SDK's, and plain MQTT.
const ALPN: [&[u8]; 2] = [b"x-amzn-mqtt-ca", b"mqtt"];
/// Lifecycle events a slow listener may fall behind by before it must resynchronize
/// ([`DeviceEndpoint::connected_clients`]).
const PRESENCE_BACKLOG: usize = 4096;

/// How the endpoint listens and whom it trusts.
pub struct EndpointConfig {
    /// Where devices connect (port 0 picks a free port; see [`DeviceEndpoint::local_addr`]).
    pub listen: SocketAddr,
    /// The endpoint's certificate chain (leaf first) and key, which devices verify.
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
    /// The CAs device certificates must chain to.
    pub client_cas: Vec<CertificateDer<'static>>,
    /// Region and account in the ARNs policies are matched against.
    pub region: String,
    pub account: String,
    pub broker: BrokerConfig,
    /// How often every connected device's certificate is reloaded from the directory, to catch
    /// changes that [`DeviceEndpoint::certificate_changed`] was not told about; `None`: never.
    pub recheck_interval: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "device endpoint: cannot listen on {addr}: {source}; pick a free port or another address"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("device endpoint TLS configuration: {0}")]
    Tls(String),
    #[error("device endpoint: {0}")]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("the service publishes at QoS 0 or 1 (AWS IoT has no QoS 2)")]
    Qos2,
    #[error("topic {topic:?}: {what}")]
    Topic { topic: String, what: &'static str },
    #[error("the device endpoint has stopped")]
    Stopped,
}

/// The id of a certificate: the lower-case hex SHA-256 of its DER, as AWS IoT names them.
pub fn certificate_id(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// [`DeviceDirectory`] behind a pointer (its `impl Future` method is not object safe).
trait DynDirectory: Send + Sync {
    fn certificate<'a>(
        &'a self,
        id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<DeviceCertificate>, DirectoryError>> + Send + 'a>>;
}

impl<D: DeviceDirectory> DynDirectory for D {
    fn certificate<'a>(
        &'a self,
        id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<DeviceCertificate>, DirectoryError>> + Send + 'a>>
    {
        Box::pin(DeviceDirectory::certificate(self, id))
    }
}

struct Shared {
    directory: Arc<dyn DynDirectory>,
    authz: Arc<FleetAuthorizer>,
    broker: BrokerHandle,
    service: ServiceClient,
    routes: Arc<Routes>,
    stopping: AtomicBool,
}

/// The running device endpoint; clones share it.
#[derive(Clone)]
pub struct DeviceEndpoint {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn server_tls(config: &EndpointConfig) -> Result<Arc<ServerConfig>, EndpointError> {
    let tls = |e: String| EndpointError::Tls(e);
    if config.client_cas.is_empty() {
        return Err(tls(
            "no client CA: devices' certificates must chain to at least one".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in &config.client_cas {
        roots
            .add(ca.clone())
            .map_err(|e| tls(format!("client CA: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(format!("client CA: {e}")))?;
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(config.server_chain.clone(), config.server_key.clone_key())
        .map_err(|e| tls(format!("server certificate and key: {e}")))?;
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}

impl DeviceEndpoint {
    /// Binds the listener and starts serving devices.
    pub async fn start<D: DeviceDirectory>(
        config: EndpointConfig,
        directory: Arc<D>,
    ) -> Result<DeviceEndpoint, EndpointError> {
        let acceptor = TlsAcceptor::from(server_tls(&config)?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| EndpointError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| EndpointError::Bind {
                addr: config.listen,
                source,
            })?;
        let max_connections = config.broker.max_connections.max(1);
        // No listeners of its own: the broker runs its housekeeping and takes the connections
        // this endpoint accepted.
        let server = Server::bind(config.broker, &[], Arc::new(AllowAll)).await?;
        let broker = server.handle();
        let routes = Arc::new(Routes::default());
        let authz = Arc::new(FleetAuthorizer {
            arns: Arns::new(&config.region, &config.account),
            conns: RwLock::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            routes: routes.clone(),
            presence: tokio::sync::broadcast::channel(PRESENCE_BACKLOG).0,
        });
        let shared = Arc::new(Shared {
            directory,
            authz,
            service: ServiceClient::start(broker.connect_in_process()),
            broker,
            routes,
            stopping: AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut until_stop = stop_rx.clone();
        tasks.push(tokio::spawn(server.run(async move {
            stopped(&mut until_stop).await;
        })));
        tasks.push(tokio::spawn(accept_loop(
            listener,
            acceptor,
            shared.clone(),
            Arc::new(Semaphore::new(max_connections)),
            stop_rx.clone(),
        )));
        let endpoint = DeviceEndpoint {
            shared,
            local_addr,
            stop: Arc::new(stop),
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        if let Some(period) = config.recheck_interval {
            tasks.push(tokio::spawn(recheck_loop(
                endpoint.clone(),
                period,
                stop_rx,
            )));
        }
        *endpoint.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(endpoint)
    }

    /// The address devices connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reloads certificate `certificate_id` for the devices connected with it (its status,
    /// things or policies changed) and disconnects those it no longer lets connect. Returns how
    /// many were told to go.
    pub async fn certificate_changed(&self, certificate_id: &str) -> Result<usize, DirectoryError> {
        let authz = &self.shared.authz;
        let conns: Vec<Arc<DeviceConn>> = authz
            .conns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|c| c.certificate_id == certificate_id)
            .cloned()
            .collect();
        if conns.is_empty() {
            return Ok(0);
        }
        let record = self
            .shared
            .directory
            .certificate(certificate_id)
            .await?
            .map(Arc::new);
        let mut told = 0;
        for conn in conns {
            *conn.record.write().unwrap_or_else(|e| e.into_inner()) = record.clone();
            // Not connected yet: its CONNECT will read the new record.
            let Some(client_id) = conn
                .client_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            else {
                continue;
            };
            let keep = record
                .as_deref()
                .is_some_and(|r| may_connect(&authz.arns, r, &client_id));
            if !keep && authz.owns(&conn) {
                tracing::info!(
                    client_id,
                    certificate = certificate_id,
                    "disconnecting: no longer authorized to connect"
                );
                told += 1;
                conn.kicked.store(true, Ordering::SeqCst);
                tokio::spawn(disconnect(self.shared.clone(), conn, client_id));
            }
        }
        Ok(told)
    }

    /// Publishes for the service (iot-data Publish, service handlers' replies) to every device
    /// whose subscriptions and policy let it receive the message.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<(), EndpointError> {
        if qos == QoS::ExactlyOnce {
            return Err(EndpointError::Qos2);
        }
        codec::validate_topic_name(topic).map_err(|what| EndpointError::Topic {
            topic: topic.to_owned(),
            what,
        })?;
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.to_owned(),
            packet_id: None,
            properties: Properties::default(),
            payload,
        };
        if self.shared.service.publish(publish).await {
            Ok(())
        } else {
            Err(EndpointError::Stopped)
        }
    }

    /// Publishes to the device connected as `client_id` alone, through its subscriptions that
    /// match `topic` and as its policy lets it receive: a reply meant for one device (fleet
    /// provisioning answers with a private key). Returns whether it reached a subscription.
    pub fn publish_to(
        &self,
        client_id: &str,
        topic: &str,
        payload: Bytes,
        qos: QoS,
    ) -> Result<bool, EndpointError> {
        if qos == QoS::ExactlyOnce {
            return Err(EndpointError::Qos2);
        }
        codec::validate_topic_name(topic).map_err(|what| EndpointError::Topic {
            topic: topic.to_owned(),
            what,
        })?;
        Ok(self
            .shared
            .broker
            .publish_to(client_id, topic, payload, qos))
    }

    /// Serves the topics `filter` matches: devices' publishes there (as their policies allow)
    /// go to the returned handler instead of to subscribers. Under `$aws/` these are the only
    /// topics devices may publish to.
    pub fn serve_topics(&self, filter: &str) -> Result<ServiceTopics, EndpointError> {
        codec::validate_topic_filter(filter).map_err(|what| EndpointError::Topic {
            topic: filter.to_owned(),
            what,
        })?;
        Ok(self.shared.routes.add(filter))
    }

    /// Lifecycle events from now on: a device's CONNECT allowed, its connection ended. A
    /// receiver that lags loses events: it should then read [`DeviceEndpoint::connected_clients`].
    pub fn presence(&self) -> tokio::sync::broadcast::Receiver<PresenceEvent> {
        self.shared.authz.presence.subscribe()
    }

    /// The devices connected now: (client id, session id) of each connection that holds its
    /// client id.
    pub fn connected_clients(&self) -> Vec<(String, String)> {
        let authz = &self.shared.authz;
        let conns: Vec<Arc<DeviceConn>> = authz
            .conns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        conns
            .into_iter()
            .filter(|c| authz.owns(c))
            .filter_map(|c| {
                let id = c
                    .client_id
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()?;
                Some((id, c.session_id.clone()))
            })
            .collect()
    }

    /// Disconnects every device and stops listening.
    pub async fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Tells `conn`'s client to go. A CONNECT allowed just before the change may not have its
/// session yet: try again briefly while the connection lasts.
async fn disconnect(shared: Arc<Shared>, conn: Arc<DeviceConn>, client_id: String) {
    for _ in 0..50 {
        if !shared.authz.owns(&conn) || shared.broker.disconnect(&client_id, NOT_AUTHORIZED) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Completes once the endpoint is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn recheck_loop(endpoint: DeviceEndpoint, period: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        let ids: BTreeSet<String> = endpoint
            .shared
            .authz
            .conns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|c| c.certificate_id.clone())
            .collect();
        for id in ids {
            if let Err(e) = endpoint.certificate_changed(&id).await {
                tracing::warn!(certificate = id, "periodic certificate check: {e}");
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut stop) => return,
        };
        let (socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("device endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = socket.set_nodelay(true);
        let (shared, acceptor) = (shared.clone(), acceptor.clone());
        tokio::spawn(async move {
            serve_device(shared, acceptor, socket, peer).await;
            drop(permit);
        });
    }
}

async fn serve_device(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    socket: TcpStream,
    peer: SocketAddr,
) {
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, "device TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "device TLS handshake timed out");
            return;
        }
    };
    // The verifier demands a certificate, so there is one.
    let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        return;
    };
    let id = certificate_id(leaf);
    let record = match tokio::time::timeout(DIRECTORY_TIMEOUT, shared.directory.certificate(&id))
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(%peer, certificate = id, "device turned away: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, certificate = id, "device turned away: the directory did not answer within {DIRECTORY_TIMEOUT:?}");
            return;
        }
    };
    let conn = Arc::new(DeviceConn {
        certificate_id: id,
        record: RwLock::new(record.map(Arc::new)),
        client_id: Mutex::new(None),
        session_id: session_id(),
        kicked: AtomicBool::new(false),
    });
    shared
        .authz
        .conns
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(peer, conn.clone());
    shared
        .broker
        .serve_tls(stream, peer, shared.authz.clone())
        .await;
    let client_id = conn
        .client_id
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(client_id) = client_id {
        // Checked before `remove`, which gives the client id up.
        let reason = if !shared.authz.owns(&conn) {
            "DUPLICATE_CLIENTID"
        } else if conn.kicked.load(Ordering::SeqCst) {
            "AUTHORIZATION_FAILURE"
        } else if shared.stopping.load(Ordering::SeqCst) {
            "SERVER_INITIATED_DISCONNECT"
        } else {
            "CONNECTION_LOST"
        };
        let thing_name = conn.record().and_then(|r| {
            r.things
                .iter()
                .find(|t| t.name == client_id)
                .map(|t| t.name.clone())
        });
        let _ = shared.authz.presence.send(PresenceEvent::Disconnected {
            client_id,
            thing_name,
            certificate_id: conn.certificate_id.clone(),
            session_id: conn.session_id.clone(),
            reason,
            timestamp_ms: now_ms(),
        });
    }
    shared.authz.remove(peer, &conn);
}
