//! An MQTT 3.1.1 and 5 broker.

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
