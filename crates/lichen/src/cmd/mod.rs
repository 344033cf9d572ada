//! One module per top-level command.

pub mod broker;
pub mod component;
pub mod core;
pub mod deployment;
pub mod lambda;
pub mod logs;
pub mod recipe;
pub mod streams;

use clap::Args;
use std::path::PathBuf;

/// Where the core's root directory is; shared by every verb that talks to a core.
#[derive(Args, Debug, Clone)]
pub struct RootArgs {
    /// Core root directory.
    #[arg(long, env = "LICHEN_ROOT", default_value = "./lichen-root")]
    pub root: PathBuf,
}
