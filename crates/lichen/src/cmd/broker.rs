//! `lichen broker`: a standalone MQTT broker.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct BrokerArgs {
    /// Listener, e.g. `tcp://127.0.0.1:1883` or `tls://0.0.0.0:8883` (repeatable).
    #[arg(long = "listen", default_value = "tcp://127.0.0.1:1883")]
    pub listen: Vec<String>,
    /// Server certificate (PEM) for TLS listeners.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM) for TLS listeners.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    #[arg(long = "client-ca")]
    pub client_ca: Option<PathBuf>,
    /// Largest MQTT packet accepted from or sent to a client, in bytes.
    #[arg(long = "max-packet-size")]
    pub max_packet_size: Option<u32>,
    /// Deliveries queued per session (any QoS) before its publishers are held back (default 1000).
    #[arg(long = "max-queued-messages")]
    pub max_queued_messages: Option<usize>,
    /// Retained messages kept at once (default 10000); beyond it a retained publication for a
    /// new topic is refused (MQTT 5: reason 0x97).
    #[arg(long = "max-retained-messages")]
    pub max_retained_messages: Option<usize>,
    /// Bytes (topic and payload) of all retained messages together (default 67108864).
    #[arg(long = "max-retained-bytes")]
    pub max_retained_bytes: Option<usize>,
    /// Subscriptions one session may hold (default 100); more get SUBACK 0x97 (3.1.1: 0x80).
    #[arg(long = "max-subscriptions-per-client")]
    pub max_subscriptions_per_client: Option<usize>,
    /// Sessions at once, connected or persistent (default 20000); more get CONNACK 0x97 / 0x03.
    #[arg(long = "max-sessions")]
    pub max_sessions: Option<usize>,
    /// Longest a session outlives its connection, in seconds (default 3600, as AWS IoT Core);
    /// MQTT 3.1.1 persistent sessions expire after it. 4294967295: never.
    #[arg(long = "max-session-expiry")]
    pub max_session_expiry: Option<u32>,
    /// Keep a task for every idle plain-TCP connection instead of parking it in the one
    /// epoll-driven idle pool (parked: < 1 KB each; with a task: ~2 KB).
    #[arg(
        long = "no-park-idle-connections",
        overrides_with = "park_idle_connections"
    )]
    pub no_park_idle_connections: bool,
    /// Park idle plain-TCP connections: the default, accepted so existing command lines work.
    #[arg(
        long = "park-idle-connections",
        hide = true,
        overrides_with = "no_park_idle_connections"
    )]
    pub park_idle_connections: bool,
}

pub fn run(a: BrokerArgs) -> anyhow::Result<ExitCode> {
    let opts = lichen_broker::StandaloneOptions {
        listen: a.listen,
        cert: a.cert,
        key: a.key,
        client_ca: a.client_ca,
        max_packet_size: a.max_packet_size,
        max_queued_messages: a.max_queued_messages,
        park_idle_connections: !a.no_park_idle_connections,
        max_retained_messages: a.max_retained_messages,
        max_retained_bytes: a.max_retained_bytes,
        max_subscriptions_per_client: a.max_subscriptions_per_client,
        max_sessions: a.max_sessions,
        max_session_expiry_secs: a.max_session_expiry,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(lichen_broker::run_standalone(opts))?;
    Ok(ExitCode::SUCCESS)
}
