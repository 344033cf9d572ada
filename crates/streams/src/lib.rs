//! Stream manager: durable local streams and the Stream Manager SDK protocol.
//!
//! Duty: keep append-only, size- and TTL-bounded message streams ([`store`]), and serve them to
//! the unmodified Stream Manager SDKs over their TCP protocol (`codec`: frames and CBOR
//! messages; `server`: connections and operations). Export definitions are parsed and stored
//! with per-export checkpoints ([`export`]); the exporters that upload data come later.
//! [`StreamManager`] is the embeddable service (`start` / `stop`); [`run_standalone`] backs
//! `lichen stream-manager`.
//!
//! Architecture invariant: nothing is acknowledged to a client before the store has accepted
//! it, and with `flushOnWrite` not before it is on disk.
//! Architecture invariant: an export checkpoint moves only after its destination acknowledged
//! every record up to it (at-least-once, in sequence order per export).
//! Architecture invariant: `codec` does no I/O; `store` knows nothing of the protocol; a
//! malformed frame closes only its own connection.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use lichen_streams::{StreamManager, StreamManagerConfig};
//! use std::sync::Arc;
//! let sm = StreamManager::start(StreamManagerConfig {
//!     store_root: "/var/lib/lichen/streams".into(),
//!     port: 0,
//!     authenticate_client: true,
//!     token_validator: Some(Arc::new(|token: &str| token == "secret")),
//!     exporters: Default::default(),
//!     log_level: tracing::level_filters::LevelFilter::INFO,
//!     flush_wait_yield: true,
//!     task_file_access: None,
//! })
//! .await?;
//! println!("listening on {}", sm.local_addr());
//! sm.stop().await;
//! # Ok(()) }
//! ```

mod codec;
pub mod export;
mod exporter;
pub mod file_access;
pub mod model;
mod server;
mod service;
pub mod store;

pub use exporter::ExporterSettings;
pub use file_access::{FileAccess, FileAccessResolver};
pub use model::{Persistence, StrategyOnFull, StreamDefinition};
pub use server::TokenValidator;
pub use service::{ConfigError, StreamManager, StreamManagerConfig, parse_log_level};
pub use store::{Message, Store, StoreError, Stream, StreamInfo};

use std::sync::Arc;

/// Options for a standalone stream manager server (`lichen stream-manager`).
#[derive(Debug, Clone, Default)]
pub struct StandaloneOptions {
    pub store_root: std::path::PathBuf,
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// When not empty, clients must connect with one of these tokens
    /// (`STREAM_MANAGER_AUTHENTICATE_CLIENT`); when empty, any client is accepted.
    pub auth_tokens: Vec<String>,
}

/// Runs a standalone stream manager until SIGINT or SIGTERM. Prints
/// `stream manager listening on 127.0.0.1:<port>` on stdout once it accepts connections.
/// Exporter settings come from `STREAM_MANAGER_EXPORTER_*` environment variables (the keys of
/// the component configuration), and `LOG_LEVEL` is checked the same way (the caller installs
/// the logger). Without a core there is no component identity: S3 export tasks read their
/// input files with this process's own privileges.
pub async fn run_standalone(opts: StandaloneOptions) -> anyhow::Result<()> {
    let tokens = opts.auth_tokens;
    let env: serde_json::Map<String, serde_json::Value> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("STREAM_MANAGER_EXPORTER_")
                || k == "STREAM_MANAGER_THREAD_POOL_SIZE"
                || k == "LOG_LEVEL"
                || k == "STREAM_MANAGER_FLUSH_WAIT_YIELD"
        })
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    let from_env =
        StreamManagerConfig::from_component_config(&serde_json::Value::Object(env), "".into())?;
    let sm = StreamManager::start(StreamManagerConfig {
        store_root: opts.store_root,
        port: opts.port,
        authenticate_client: !tokens.is_empty(),
        token_validator: Some(Arc::new(move |t: &str| tokens.iter().any(|k| k == t))),
        exporters: from_env.exporters,
        log_level: from_env.log_level,
        flush_wait_yield: from_env.flush_wait_yield,
        // No core to say which component appended a task: files are read with this
        // process's own privileges, so run it as the user whose files it may upload.
        task_file_access: None,
    })
    .await?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        tracing::warn!(
            "running as root without a core: S3 export tasks read their input files as root; \
             run `lichen stream-manager` as the user whose files it may upload"
        );
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "stream manager listening on {}", sm.local_addr())?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sm.stop().await;
    Ok(())
}

/// Feeds raw bytes through the frame and request decoders (the fuzz target's entry point; not
/// an API). Must never panic, whatever the input.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(frame)) = codec::decode_frame(&mut buf) {
        let _ = codec::decode_request(frame.op, &frame.payload);
    }
    if let Some((&op, rest)) = data.split_first() {
        let _ = codec::decode_request(op, rest);
    }
}
