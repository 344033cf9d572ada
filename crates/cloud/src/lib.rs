//! The cloud link: one MQTT connection from the device to AWS IoT Core (or any MQTT broker that
//! speaks mutual TLS), and the spooler that keeps what components send while that connection is
//! down.
//!
//! * [`CloudLink::start`] opens (and recovers) the spool, then connects in the background:
//!   TCP + TLS with the device certificate and key, trusting the configured root CA; MQTT 5 by
//!   default or 3.1.1; client id = thing name; keep-alive pings; reconnects with jittered
//!   exponential backoff; restores every subscription after each reconnect. With no endpoint the
//!   link stays offline and still spools.
//! * [`CloudLink::publish`] spools the message and returns once it is durable (disk storage:
//!   fsynced, with group commit). The connection sends the spool in id order (one global FIFO, so
//!   order per topic holds), at most `maxInFlightPublishes` QoS 1 messages unacknowledged; a QoS 1
//!   message leaves the spool on PUBACK, a QoS 0 one once written to the socket. Delivery is at
//!   least once: after a reconnect every message without PUBACK is sent again (DUP set).
//! * [`CloudLink::subscribe`] counts local subscribers per filter: the first one sends SUBSCRIBE
//!   (or waits for the connection), the last one dropping sends UNSUBSCRIBE.
//!
//! * [`dataplane::DataPlane`] is the Greengrass data plane client (HTTPS with the same device
//!   certificate); its downloads resume a `<file>.partial` with `Range` and only ever rename a
//!   complete body into place.
//!
//! Architecture invariants: nothing accepted into the spool is dropped except by delivery, by
//! `maxPublishRetry` running out, or (QoS 0 without `keepQos0WhenOffline`) by going offline; a
//! full spool refuses new messages and keeps the old ones; this crate knows nothing of the
//! configuration store or the broker (the core maps its settings onto [`LinkConfig`]); its
//! [`ipc`] module is the only place that speaks Greengrass IPC shapes.

mod client;
pub mod dataplane;
pub mod ipc;
pub mod provision;
mod record;
mod spool;
pub mod tes;
mod tls;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
pub use lichen_mqtt::{QoS, Version};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use spool::Recovered;

/// Where the spool keeps messages (`mqtt.spooler.storageType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    /// Append-only segment files under [`SpoolerConfig::dir`]; survives restarts and power loss.
    Disk,
    /// In memory only (Greengrass classic's default).
    Memory,
}

/// `mqtt.spooler.*`.
#[derive(Debug, Clone)]
pub struct SpoolerConfig {
    pub storage: StorageType,
    /// Cap on the encoded size of undelivered messages (`maxSizeInBytes`).
    pub max_size_bytes: u64,
    /// Keep QoS 0 messages while offline (`keepQos0WhenOffline`); otherwise they are refused
    /// while offline and dropped from the spool when the connection goes.
    pub keep_qos0_when_offline: bool,
    /// Directory of the segment files (disk storage).
    pub dir: PathBuf,
}

/// Where to connect and with which credentials.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub root_ca: PathBuf,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// Everything the link needs; the core fills it from the nucleus `mqtt.*` settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `None`: stay offline (the spool still takes messages, subscriptions wait).
    pub endpoint: Option<Endpoint>,
    pub client_id: String,
    pub version: Version,
    /// `keepAliveTimeoutMs`; zero disables pings.
    pub keep_alive: Duration,
    /// `pingTimeoutMs`: no PINGRESP within this ends the connection.
    pub ping_timeout: Duration,
    /// `operationTimeoutMs`: CONNECT/CONNACK and SUBSCRIBE/SUBACK.
    pub operation_timeout: Duration,
    /// `maxInFlightPublishes` (1..=100).
    pub max_in_flight: u16,
    /// `maxMessageSizeInBytes`: largest payload accepted for publishing.
    pub max_message_size: usize,
    /// `maxPublishRetry`: attempts after the first before a message is given up; -1 = forever.
    pub max_publish_retry: i64,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub spooler: SpoolerConfig,
}

impl LinkConfig {
    /// The Greengrass defaults (§5.3) with Lichen's disk spool.
    pub fn new(client_id: &str, spool_dir: PathBuf) -> LinkConfig {
        LinkConfig {
            endpoint: None,
            client_id: client_id.to_string(),
            version: Version::V5,
            keep_alive: Duration::from_millis(60_000),
            ping_timeout: Duration::from_millis(30_000),
            operation_timeout: Duration::from_millis(30_000),
            max_in_flight: 5,
            max_message_size: 131_072,
            max_publish_retry: 100,
            reconnect_min: Duration::from_millis(1_000),
            reconnect_max: Duration::from_millis(30_000),
            spooler: SpoolerConfig {
                storage: StorageType::Disk,
                max_size_bytes: 2_621_440,
                keep_qos0_when_offline: false,
                dir: spool_dir,
            },
        }
    }
}

/// MQTT 5 publish properties a component may set (PublishToIoTCore) or receive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    pub user_properties: Vec<(String, String)>,
    pub message_expiry_interval: Option<u32>,
    pub correlation_data: Option<Bytes>,
    pub response_topic: Option<String>,
    /// 0 = bytes, 1 = UTF-8.
    pub payload_format: Option<u8>,
    pub content_type: Option<String>,
}

/// A message to or from the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: MessageProperties,
}

/// The state of the connection, as [`CloudLink::status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionStatus {
    Connected,
    Disconnected,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error(
        "spooler full: {used} of {max} bytes used; this message needs {needed} more; wait for the connection to deliver what is queued, or raise mqtt.spooler.maxSizeInBytes"
    )]
    SpoolFull { used: u64, max: u64, needed: u64 },
    #[error(
        "payload of {size} bytes on topic {topic:?} exceeds mqtt.maxMessageSizeInBytes ({max}); send smaller messages"
    )]
    TooLarge {
        topic: String,
        size: usize,
        max: usize,
    },
    #[error(
        "the device is offline and QoS 0 messages are not kept offline (topic {topic:?}); use QoS 1 or set mqtt.spooler.keepQos0WhenOffline"
    )]
    OfflineQos0 { topic: String },
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: String },
    #[error("only QoS 0 and 1 are supported toward the cloud (got {qos:?})")]
    UnsupportedQos { qos: QoS },
    #[error("spool storage {path}: {what}")]
    Storage { path: PathBuf, what: String },
    #[error("TLS setup: {what}")]
    Tls { what: String },
    #[error("the cloud refused the subscription to {filter:?} (reason code 0x{reason_code:02x})")]
    SubscribeRejected { filter: String, reason_code: u8 },
    #[error("no answer from the cloud within {ms} ms for {what}")]
    Timeout { what: String, ms: u128 },
    #[error("the cloud link is shut down")]
    Closed,
}

/// Local subscribers of one filter.
struct FilterSubs {
    qos: QoS,
    subscribers: Vec<(u64, mpsc::Sender<CloudMessage>)>,
}

pub(crate) enum Command {
    Subscribe {
        filter: String,
        qos: QoS,
        reply: oneshot::Sender<Result<(), CloudError>>,
    },
    Unsubscribe {
        filter: String,
    },
}

pub(crate) struct Shared {
    pub(crate) config: LinkConfig,
    pub(crate) spool: spool::Spool,
    subs: Mutex<std::collections::HashMap<String, FilterSubs>>,
    next_sub_id: std::sync::atomic::AtomicU64,
    pub(crate) status: watch::Sender<ConnectionStatus>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) incoming: broadcast::Sender<CloudMessage>,
    pub(crate) shutdown: tokio::sync::Notify,
}

impl Shared {
    /// Filters and their QoS, to restore after a reconnect.
    pub(crate) fn filters(&self) -> Vec<(String, QoS)> {
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(f, s)| (f.clone(), s.qos))
            .collect()
    }

    /// Hands a message from the cloud to every local subscriber whose filter matches.
    pub(crate) fn dispatch(&self, message: CloudMessage) {
        {
            let subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
            for (filter, s) in subs.iter() {
                if !lichen_bus::filter_matches(filter, &message.topic) {
                    continue;
                }
                for (_, tx) in &s.subscribers {
                    if tx.try_send(message.clone()).is_err() && !tx.is_closed() {
                        tracing::warn!(topic = %message.topic, filter = %filter, "cloud subscriber is not keeping up; message dropped for it");
                    }
                }
            }
        }
        let _ = self.incoming.send(message);
    }
}

/// Messages queued per local subscriber before further ones are dropped for it.
const SUBSCRIBER_QUEUE: usize = 1024;

/// The handle to the cloud link; cheap to clone.
#[derive(Clone)]
pub struct CloudLink {
    shared: Arc<Shared>,
}

/// Messages of one local subscription; dropping it unsubscribes (upstream when it was the last
/// subscriber of its filter).
pub struct Subscription {
    rx: mpsc::Receiver<CloudMessage>,
    filter: String,
    id: u64,
    shared: Arc<Shared>,
}

impl Subscription {
    /// The next message; `None` once the link shut down.
    pub async fn recv(&mut self) -> Option<CloudMessage> {
        self.rx.recv().await
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = self.shared.subs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = subs.get_mut(&self.filter) {
            s.subscribers.retain(|(id, _)| *id != self.id);
            if s.subscribers.is_empty() {
                subs.remove(&self.filter);
                let _ = self.shared.commands.send(Command::Unsubscribe {
                    filter: self.filter.clone(),
                });
            }
        }
    }
}

impl CloudLink {
    /// Opens the spool (recovering what a previous run left) and starts connecting in the
    /// background when an endpoint is configured.
    pub async fn start(config: LinkConfig) -> Result<(CloudLink, Recovered), CloudError> {
        let sc = config.spooler.clone();
        let (spool, recovered) = tokio::task::spawn_blocking(move || {
            spool::Spool::open(sc.storage, &sc.dir, sc.max_size_bytes)
        })
        .await
        .map_err(|_| CloudError::Closed)??;
        let tls = match &config.endpoint {
            Some(ep) => Some(tls::client_config(ep)?),
            None => None,
        };
        let (status, _) = watch::channel(ConnectionStatus::Disconnected);
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (incoming, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            config,
            spool,
            subs: Mutex::new(Default::default()),
            next_sub_id: Default::default(),
            status,
            commands,
            incoming,
            shutdown: tokio::sync::Notify::new(),
        });
        if let Some(tls) = tls {
            tokio::spawn(client::run(shared.clone(), tls, command_rx));
        } else {
            // Offline: keep the receiver alive so subscribe/unsubscribe commands are accepted.
            tokio::spawn(async move {
                let mut rx = command_rx;
                while let Some(c) = rx.recv().await {
                    if let Command::Subscribe { reply, .. } = c {
                        let _ = reply.send(Ok(()));
                    }
                }
            });
        }
        Ok((CloudLink { shared }, recovered))
    }

    /// Spools one message for the cloud; returns once it is durable. Errors: invalid topic, QoS 2,
    /// payload over `maxMessageSizeInBytes`, QoS 0 while offline (unless kept), spool full,
    /// storage failure.
    pub async fn publish(&self, message: CloudMessage) -> Result<(), CloudError> {
        self.enqueue(message)?.await
    }

    /// Spools one message and returns at once with a future that resolves when it is durable.
    /// Messages enqueued one after another are sent in that order.
    pub fn enqueue(
        &self,
        message: CloudMessage,
    ) -> Result<
        impl std::future::Future<Output = Result<(), CloudError>> + Send + 'static,
        CloudError,
    > {
        let c = &self.shared.config;
        lichen_mqtt::validate_topic_name(&message.topic).map_err(|r| CloudError::InvalidTopic {
            topic: message.topic.clone(),
            reason: r.to_string(),
        })?;
        if message.qos == QoS::ExactlyOnce {
            return Err(CloudError::UnsupportedQos { qos: message.qos });
        }
        if message.payload.len() > c.max_message_size {
            return Err(CloudError::TooLarge {
                topic: message.topic.clone(),
                size: message.payload.len(),
                max: c.max_message_size,
            });
        }
        if message.qos == QoS::AtMostOnce
            && !c.spooler.keep_qos0_when_offline
            && self.status() != ConnectionStatus::Connected
        {
            return Err(CloudError::OfflineQos0 {
                topic: message.topic.clone(),
            });
        }
        let pending = self.shared.spool.enqueue(message)?;
        Ok(pending.durable())
    }

    /// Subscribes to `filter` (QoS 0 or 1). When connected, returns after the SUBACK; offline, at
    /// once (the subscription is made when the connection comes up, and after every reconnect).
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<Subscription, CloudError> {
        lichen_mqtt::validate_topic_filter(filter).map_err(|r| CloudError::InvalidTopic {
            topic: filter.to_string(),
            reason: r.to_string(),
        })?;
        if qos == QoS::ExactlyOnce {
            return Err(CloudError::UnsupportedQos { qos });
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let id = self
            .shared
            .next_sub_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let upstream = {
            let mut subs = self.shared.subs.lock().unwrap_or_else(|e| e.into_inner());
            match subs.get_mut(filter) {
                Some(s) => {
                    s.subscribers.push((id, tx));
                    if qos > s.qos {
                        s.qos = qos;
                        true
                    } else {
                        false
                    }
                }
                None => {
                    subs.insert(
                        filter.to_string(),
                        FilterSubs {
                            qos,
                            subscribers: vec![(id, tx)],
                        },
                    );
                    true
                }
            }
        };
        let sub = Subscription {
            rx,
            filter: filter.to_string(),
            id,
            shared: self.shared.clone(),
        };
        if upstream && self.status() == ConnectionStatus::Connected {
            let (reply, answer) = oneshot::channel();
            self.shared
                .commands
                .send(Command::Subscribe {
                    filter: filter.to_string(),
                    qos,
                    reply,
                })
                .map_err(|_| CloudError::Closed)?;
            let timeout = self.shared.config.operation_timeout;
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(Err(e))) => return Err(e),
                Ok(_) => {}
                Err(_) => {
                    return Err(CloudError::Timeout {
                        what: format!("SUBSCRIBE {filter}"),
                        ms: timeout.as_millis(),
                    });
                }
            }
        }
        Ok(sub)
    }

    /// The connection status now and its changes.
    pub fn status_watch(&self) -> watch::Receiver<ConnectionStatus> {
        self.shared.status.subscribe()
    }

    pub fn status(&self) -> ConnectionStatus {
        *self.shared.status.borrow()
    }

    /// Every message that arrives from any cloud subscription.
    pub fn incoming(&self) -> broadcast::Receiver<CloudMessage> {
        self.shared.incoming.subscribe()
    }

    /// (messages waiting, bytes used, cap) of the spool.
    pub fn spool_usage(&self) -> (usize, u64, u64) {
        self.shared.spool.usage()
    }

    /// Disconnects cleanly and stops reconnecting. What is spooled stays for the next start.
    pub async fn shutdown(&self) {
        self.shared.shutdown.notify_one();
        let mut status = self.status_watch();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while *status.borrow_and_update() == ConnectionStatus::Connected {
                if status.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        self.shared
            .status
            .send_replace(ConnectionStatus::Disconnected);
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
