//! `lichen logs [NAME] [--follow]`: print a component's log (or the core's) from the root's logs folder.
//! Reads files directly, as `greengrass-cli logs` does, so it works whether or not the core is running.

use super::RootArgs;
use anyhow::Context;
use clap::Args;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub root: RootArgs,
    /// Component name; without it, the core's own log (`lichen.log`).
    pub name: Option<String>,
    /// Keep printing lines as they are written (follows rotation).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print only the last N lines first.
    #[arg(long)]
    pub tail: Option<usize>,
}

pub fn run(a: LogsArgs) -> anyhow::Result<ExitCode> {
    let file = format!("{}.log", a.name.as_deref().unwrap_or("lichen"));
    let path = a.root.root.join("logs").join(&file);
    if !path.exists() && !a.follow {
        anyhow::bail!(
            "no log at {}: is the component name right and has it run on this root? (`lichen component list`)",
            path.display()
        );
    }
    let mut out = std::io::stdout().lock();
    let mut offset = 0u64;
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        offset = text.len() as u64;
        let lines: Vec<&str> = text.lines().collect();
        let start = a.tail.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
        for l in &lines[start..] {
            writeln!(out, "{l}")?;
        }
    }
    if !a.follow {
        return Ok(ExitCode::SUCCESS);
    }
    out.flush()?;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        let len = f.metadata()?.len();
        if len < offset {
            // Rotated: the new file starts from its beginning.
            offset = 0;
        }
        if len > offset {
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            offset += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        }
    }
}
