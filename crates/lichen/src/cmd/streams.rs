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
}

pub fn run(a: StreamManagerArgs) -> anyhow::Result<ExitCode> {
    let opts = lichen_streams::StandaloneOptions {
        store_root: a.store_root,
        port: a.port,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(lichen_streams::run_standalone(opts))?;
    Ok(ExitCode::SUCCESS)
}
