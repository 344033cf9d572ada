//! Stream manager: durable local streams and the Stream Manager SDK protocol.
//!
//! Duty: keep append-only, size- and TTL-bounded message streams (`store`), and serve them to
//! the unmodified Stream Manager SDKs over their TCP protocol (`codec` frames and CBOR messages,
//! `server` connections and operations). Export definitions are parsed and stored with
//! per-export checkpoints (`export`); the exporters that upload data come later.
//!
//! Architecture invariant: nothing is acknowledged to a client before the store has accepted
//! it, and with `flushOnWrite` before it is on disk.
//! Architecture invariant: `codec` does no I/O; `store` knows nothing of the protocol; a
//! malformed frame closes only its own connection.

pub mod export;
pub mod model;
pub mod store;

pub use model::{Persistence, StrategyOnFull, StreamDefinition};
pub use store::{Message, Store, StoreError, Stream, StreamInfo};

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
