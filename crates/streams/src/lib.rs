//! Stream manager: durable local streams and the Stream Manager SDK protocol.

/// Options for a standalone stream manager server (`lichen stream-manager`).
#[derive(Debug, Clone, Default)]
pub struct StandaloneOptions {
    pub store_root: std::path::PathBuf,
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

/// Runs a standalone stream manager until the process is asked to stop.
pub async fn run_standalone(_opts: StandaloneOptions) -> anyhow::Result<()> {
    anyhow::bail!("the stream manager is not built yet")
}
