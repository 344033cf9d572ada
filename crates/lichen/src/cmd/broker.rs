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
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(lichen_broker::run_standalone(opts))?;
    Ok(ExitCode::SUCCESS)
}
