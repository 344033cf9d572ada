//! An MQTT 3.1.1 and 5 broker.
//!
//! Shaped like a protocol server: [`codec`] turns bytes into packets and back (pure, no I/O),
//! the router keeps subscriptions, retained messages and sessions, and the server owns listeners,
//! connection tasks and shutdown.
//!
//! Architecture invariant: the codec never touches a socket; only `server` does I/O.

pub mod codec;

/// Options for a standalone broker (`lichen broker`).
#[derive(Debug, Clone, Default)]
pub struct StandaloneOptions {
    /// Listener URLs such as `tcp://127.0.0.1:1883` or `tls://0.0.0.0:8883`.
    pub listen: Vec<String>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub client_ca: Option<std::path::PathBuf>,
}

/// Runs a standalone broker until the process is asked to stop.
pub async fn run_standalone(_opts: StandaloneOptions) -> anyhow::Result<()> {
    anyhow::bail!("the broker is not built yet")
}
