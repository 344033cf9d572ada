//! A standalone IPC server for compatibility tests with third-party clients.
//!
//! Usage: `ipc_test_server <socket path> <config.json> <component>...`
//! Loads the JSON file as the whole config tree (in memory, timestamp 1), mints a token for each
//! component, registers the kernel operations, and prints one JSON line on stdout:
//! `{"socket": "<path>", "tokens": {"<component>": "<token>", ...}}`.
//! `LICHEN_IPC_MAX_STREAMS` and `LICHEN_IPC_MAX_CONNECTIONS_PER_COMPONENT`, when set, replace
//! the server's default bounds (so a test can reach them with a few streams).
//! Runs until stdin reaches end of file or SIGTERM/SIGINT arrives; logs go to stderr
//! (`RUST_LOG` filters them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use lichen_bus::Bus;
use lichen_config::ConfigStore;
use lichen_ipc::{
    Authorizer, ConfigSource, IpcServer, Router, ServerOptions, TokenRegistry,
    register_kernel_operations,
};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: ipc_test_server <socket path> <config.json> <component>...".into());
    }
    let socket = PathBuf::from(&args[0]);
    let text = std::fs::read_to_string(&args[1])
        .map_err(|e| format!("cannot read config file {}: {e}", args[1]))?;
    let tree: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("config file {} is not JSON: {e}", args[1]))?;
    let store = ConfigStore::in_memory();
    store.merge(&[], tree, 1)?;
    let config: Arc<dyn ConfigSource> = Arc::new(store);
    let tokens = Arc::new(TokenRegistry::new());
    let printed: BTreeMap<&str, String> = args[2..]
        .iter()
        .map(|c| (c.as_str(), tokens.mint(c)))
        .collect();
    let router = Arc::new(Router::new(Arc::new(Authorizer::new(
        config.clone(),
        tokens.clone(),
    ))));
    register_kernel_operations(&router, Bus::new(), config, tokens.clone());
    let mut options = ServerOptions::default();
    if let Some(n) = bound_from_env("LICHEN_IPC_MAX_STREAMS")? {
        options.max_streams = n;
    }
    if let Some(n) = bound_from_env("LICHEN_IPC_MAX_CONNECTIONS_PER_COMPONENT")? {
        options.max_connections_per_component = n;
    }
    let server = IpcServer::bind(&socket, router, tokens, options)?;
    println!(
        "{}",
        serde_json::json!({ "socket": socket, "tokens": printed })
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 256];
    loop {
        tokio::select! {
            r = stdin.read(&mut sink) => if !matches!(r, Ok(n) if n > 0) { break },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    server.shutdown().await;
    Ok(())
}

/// A positive count from environment variable `name`, if set.
fn bound_from_env(name: &str) -> Result<Option<usize>, String> {
    let Ok(text) = std::env::var(name) else {
        return Ok(None);
    };
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(format!(
            "{name}={text:?} is not a positive whole number; set it to one such as 4"
        )),
    }
}
