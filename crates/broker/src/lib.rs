//! An MQTT 3.1.1 and 5 broker: the messaging foundation for client devices on the core and for
//! the fleet service.
//!
//! Shaped like a protocol server: [`codec`] turns bytes into packets and back (pure, no I/O);
//! `router` holds the subscription trie; `state` holds sessions, retained messages and delayed
//! wills under one lock; `connection` runs one client; `idle` keeps idle clients without a task;
//! [`Server`] owns listeners, bounds the
//! number of connections and shuts down gracefully. Authorization goes through [`Authorizer`].
//!
//! Architecture invariant: the codec never touches a socket; only `server` and `connection` do I/O.
//! Architecture invariant: messages for a connected subscriber are never dropped, whatever
//! their QoS. Routing appends to the subscriber's queue without waiting; when that queue reaches
//! `max_queued_messages` (`lichen broker --max-queued-messages`, default 1000), the publishing
//! connection stops reading its socket (backpressure through TCP) until the queue is back to half
//! its bound. A subscriber that takes nothing for `slow_consumer_timeout` while at its bound is
//! disconnected with reason 0x97 (slow consumer), which releases its publishers; a persistent
//! session keeps its whole QoS 1/2 queue for the next connection.
//!
//! QoS 0 overflow policy: QoS 0 deliveries count towards the same bound and hold publishers back
//! like QoS 1/2. "At most once" permits a drop, but a live subscriber that is merely slower than
//! its publishers should get the messages; pacing the publishers keeps memory bounded without
//! losses, and only a subscriber stalled past `slow_consumer_timeout` costs anyone anything (it
//! is disconnected). A publisher is never held back by its own subscriptions. QoS 0 messages are
//! not kept for offline sessions. The only drops by policy, each counted and logged, are QoS 1/2
//! messages for an offline session whose queue is full.
//! Bounds: packets (`max_packet_size`, DISCONNECT 0x95), retained messages by count and bytes,
//! subscriptions per session, sessions, and how long a session outlives its connection (MQTT
//! 3.1.1 persistent sessions included) are all bounded by [`BrokerConfig`]; an action beyond a
//! bound is refused with 0x97 (quota exceeded) where MQTT 5 can say so, and the MQTT 3.1.1 way
//! otherwise (SUBACK 0x80, CONNACK 0x03, or the connection closed).
//! Architecture invariant: a client without a certificate is accepted only on a plain-TCP listener
//! bound to a loopback address.
//! Architecture invariant: an idle plain-TCP connection has no task and no reactor entry: it is
//! parked in the idle pool (`idle`) as its connection state (no read or write buffer), its socket
//! (in the pool's own epoll set) and its session entry (unless `park_idle_connections` is off).
//! A client that goes while its connection is parked, being parked or being taken back into
//! service is noticed like any other (its will is published or scheduled exactly once). It parks at its first idle moment after
//! the CONNACK, and again once a housekeeping tick (200 ms) passed without input or deliveries;
//! readability, a delivery, keep-alive expiry or shutdown puts it back on a task. Keep-alive
//! expiry (DISCONNECT 0x8D) and shutdown (0x8B) reach every connection, parked or not, through its
//! session's outbox, set by the housekeeping tick and by [`Server::run`]. TLS and in-process
//! connections are not parked (a TLS session's state lives in its stream); their idle cost is
//! their task, kept small: rare or large waits (CONNECT timeout, TLS handshake, held-back
//! publisher) are boxed so they do not size every task.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lichen_broker::BrokerError> {
//! use lichen_broker::{AllowAll, BrokerConfig, Listener, Server};
//! let listeners = [Listener { addr: "127.0.0.1:1883".parse().unwrap(), tls: None }];
//! let server = Server::bind(BrokerConfig::default(), &listeners, std::sync::Arc::new(AllowAll)).await?;
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

mod auth;
pub use lichen_mqtt as codec;
mod connection;
mod idle;
mod router;
mod server;
mod state;

pub use auth::{AllowAll, Authorizer, ClientContext, Intercept};
pub use server::{BrokerError, BrokerHandle, Listener, Server, tls_config};
pub use state::BrokerConfig;
pub use tokio_rustls::rustls;

use anyhow::Context;
use std::sync::Arc;

/// Options for a standalone broker (`lichen broker`).
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// Listener URLs such as `tcp://127.0.0.1:1883` or `tls://0.0.0.0:8883`.
    pub listen: Vec<String>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub client_ca: Option<std::path::PathBuf>,
    /// Maximum packet size in bytes (both directions); `None` keeps the default.
    pub max_packet_size: Option<u32>,
    /// Deliveries queued per session before its publishers are held back; `None` keeps the
    /// default (see the overflow policy above).
    pub max_queued_messages: Option<usize>,
    /// Park idle plain-TCP connections in one pool (see `BrokerConfig::park_idle_connections`);
    /// on by default.
    pub park_idle_connections: bool,
    /// Bounds on retained messages (count, bytes), subscriptions per session, sessions and
    /// session expiry (seconds); `None` keeps `BrokerConfig`'s default.
    pub max_retained_messages: Option<usize>,
    pub max_retained_bytes: Option<usize>,
    pub max_subscriptions_per_client: Option<usize>,
    pub max_sessions: Option<usize>,
    pub max_session_expiry_secs: Option<u32>,
}

impl Default for StandaloneOptions {
    fn default() -> Self {
        StandaloneOptions {
            listen: Vec::new(),
            cert: None,
            key: None,
            client_ca: None,
            max_packet_size: None,
            max_queued_messages: None,
            park_idle_connections: BrokerConfig::default().park_idle_connections,
            max_retained_messages: None,
            max_retained_bytes: None,
            max_subscriptions_per_client: None,
            max_sessions: None,
            max_session_expiry_secs: None,
        }
    }
}

/// Runs a standalone broker until SIGINT or SIGTERM.
pub async fn run_standalone(opts: StandaloneOptions) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    let mut tls = None;
    for url in &opts.listen {
        let (scheme, hostport) = url.split_once("://").with_context(|| {
            format!("listener {url:?}: expected tcp://HOST:PORT or tls://HOST:PORT")
        })?;
        let addr = tokio::net::lookup_host(hostport)
            .await
            .with_context(|| format!("listener {url:?}: cannot resolve {hostport:?}"))?
            .next()
            .with_context(|| format!("listener {url:?}: {hostport:?} resolves to no address"))?;
        let tls_for_listener = match scheme {
            "tcp" | "mqtt" => None,
            "tls" | "ssl" | "mqtts" => {
                if tls.is_none() {
                    let (Some(cert), Some(key)) = (&opts.cert, &opts.key) else {
                        anyhow::bail!("listener {url:?} needs --cert and --key");
                    };
                    tls = Some(tls_config(cert, key, opts.client_ca.as_deref())?);
                }
                tls.clone()
            }
            other => anyhow::bail!("listener {url:?}: unknown scheme {other:?}; use tcp or tls"),
        };
        listeners.push(Listener {
            addr,
            tls: tls_for_listener,
        });
    }
    let mut config = BrokerConfig::default();
    if let Some(max) = opts.max_packet_size {
        config.max_packet_size = max;
    }
    config.park_idle_connections = opts.park_idle_connections;
    if let Some(max) = opts.max_queued_messages {
        anyhow::ensure!(
            max > 0,
            "--max-queued-messages must be at least 1 (it bounds each session's queue)"
        );
        config.max_queued_messages = max;
    }
    let at_least_one = |v: Option<usize>, flag: &str| -> anyhow::Result<Option<usize>> {
        anyhow::ensure!(v != Some(0), "{flag} must be at least 1");
        Ok(v)
    };
    if let Some(v) = at_least_one(opts.max_retained_messages, "--max-retained-messages")? {
        config.max_retained_messages = v;
    }
    if let Some(v) = at_least_one(opts.max_retained_bytes, "--max-retained-bytes")? {
        config.max_retained_bytes = v;
    }
    if let Some(v) = at_least_one(
        opts.max_subscriptions_per_client,
        "--max-subscriptions-per-client",
    )? {
        config.max_subscriptions_per_client = v;
    }
    if let Some(v) = at_least_one(opts.max_sessions, "--max-sessions")? {
        config.max_sessions = v;
    }
    if let Some(v) = opts.max_session_expiry_secs {
        config.max_session_expiry_secs = v;
    }
    let server = Server::bind(config, &listeners, Arc::new(AllowAll)).await?;
    for addr in server.local_addrs() {
        tracing::info!(%addr, "MQTT broker listening");
        println!("listening on {addr}");
    }
    server.run(shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
