//! `lichen-opcua`: one OPC UA source of `lichen.IndustrialCollector`, run in its own process so
//! that the OPC UA stack never weighs on the core (see `lichen_industrial::opcua_worker`).
//!
//!     lichen-opcua PKI_DIR     (the source's JSON on the first stdin line)
//!
//! Writes one JSON line per sample on stdout; stops when stdin closes or on SIGTERM.

use lichen_industrial::opcua::{OpcUaSourceConfig, run_opcua_source};
use lichen_industrial::opcua_worker::encode_line;
use lichen_industrial::{CancellationToken, Sample};
use std::io::Write;
use std::process::ExitCode;
use tokio::io::AsyncBufReadExt;

fn main() -> ExitCode {
    // Plain lines, no clock: the core re-logs each one into the collector's log with its own
    // timestamp and the source's name (`lichen_industrial::opcua_worker`). Events only: the OPC
    // UA stack's spans would prefix every line with the session's whole context.
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    use tracing_subscriber::prelude::*;
    let level =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .without_time()
                .with_filter(level.and(filter_fn(|m| m.is_event()))),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let [_, pki] = args.as_slice() else {
        eprintln!("usage: lichen-opcua PKI_DIR  (the source's JSON on the first stdin line)");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lichen-opcua: cannot start its runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(pki.into()))
}

async fn run(pki: std::path::PathBuf) -> ExitCode {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let source = match stdin.next_line().await {
        Ok(Some(line)) => line,
        _ => {
            eprintln!("lichen-opcua: no source on stdin");
            return ExitCode::from(2);
        }
    };
    let config = match serde_json::from_str::<serde_json::Value>(&source)
        .map_err(|e| e.to_string())
        .and_then(|v| OpcUaSourceConfig::from_json(&v).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lichen-opcua: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            // The core closed our stdin: it wants us gone, or it is gone itself.
            _ = async { while let Ok(Some(_)) = stdin.next_line().await {} } => {}
        }
        stop.cancel();
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Sample>(1024);
    let source = tokio::spawn(run_opcua_source(config, pki, tx, shutdown));
    let mut out = std::io::stdout().lock();
    while let Some(s) = rx.recv().await {
        if writeln!(out, "{}", encode_line(&s))
            .and_then(|()| out.flush())
            .is_err()
        {
            // Nobody reads our samples any more.
            return ExitCode::FAILURE;
        }
    }
    match source.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("lichen-opcua: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("lichen-opcua: {e}");
            ExitCode::FAILURE
        }
    }
}
