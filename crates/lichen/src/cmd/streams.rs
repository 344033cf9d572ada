//! `lichen stream-manager`: a standalone stream manager server.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct StreamManagerArgs {
    /// Directory that holds the stream store.
    #[arg(long = "store-root", default_value = "./lichen-streams")]
    pub store_root: PathBuf,
    /// TCP port on 127.0.0.1 (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8088)]
    pub port: u16,
    /// Require clients to connect with this token (repeatable); without any, clients are not
    /// authenticated (STREAM_MANAGER_AUTHENTICATE_CLIENT=false).
    #[arg(
        long = "auth-token",
        env = "LICHEN_STREAM_MANAGER_AUTH_TOKENS",
        value_delimiter = ','
    )]
    pub auth_tokens: Vec<String>,
}

pub fn run(a: StreamManagerArgs) -> anyhow::Result<ExitCode> {
    // The stream manager's `LOG_LEVEL` key, as an environment variable here; logs go to stderr.
    let level = match std::env::var("LOG_LEVEL") {
        Ok(v) => lichen_streams::parse_log_level(&v).map_err(|e| anyhow::anyhow!("{e}"))?,
        Err(_) => tracing_subscriber::filter::LevelFilter::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false)
        .try_init()
        .ok();
    let opts = lichen_streams::StandaloneOptions {
        store_root: a.store_root,
        port: a.port,
        auth_tokens: a.auth_tokens,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(lichen_streams::run_standalone(opts))?;
    Ok(ExitCode::SUCCESS)
}
