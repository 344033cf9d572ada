//! Runs one OPC UA source and prints its samples as JSON lines on stdout:
//!
//!     opcua_probe SOURCE.json PKI_DIR
//!
//! Each line: {"alias", "quality", "value", "timestampNs"}. Stops on SIGINT/SIGTERM.

use lichen_industrial::Sample;
use lichen_industrial::opcua::{OpcUaSourceConfig, run_opcua_source};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let [_, config, pki] = args.as_slice() else {
        return Err("usage: opcua_probe SOURCE.json PKI_DIR".into());
    };
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(config)?)?;
    let config = OpcUaSourceConfig::from_json(&json)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Sample>(1024);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        stop.cancel();
    });
    let source = tokio::spawn(run_opcua_source(config, pki.into(), tx, shutdown));
    while let Some(s) = rx.recv().await {
        let line = serde_json::json!({
            "alias": s.alias, "quality": s.quality, "value": s.value, "timestampNs": s.timestamp_ns,
        });
        println!("{line}");
    }
    source.await??;
    Ok(())
}
