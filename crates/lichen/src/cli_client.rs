//! How CLI verbs reach a running core: the Greengrass CLI convention. The core writes
//! `<root>/cli_ipc_info/user-<uid>` with a token and the socket path; the CLI connects over IPC with
//! it and calls the ordinary Greengrass operations.

use anyhow::Context;
use lichen_ipc::{ClientError, IpcClient};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub struct CoreConnection {
    rt: tokio::runtime::Runtime,
    client: IpcClient,
}

fn credentials(root: &Path) -> anyhow::Result<(String, PathBuf)> {
    let dir = root.join("cli_ipc_info");
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    let mut candidates = vec![
        dir.join(format!("user-{uid}")),
        dir.join(format!("group-{gid}")),
    ];
    if let Ok(rd) = std::fs::read_dir(&dir) {
        candidates.extend(rd.flatten().map(|e| e.path()));
    }
    for path in candidates {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if let (Some(t), Some(s)) = (
            v.get("cli_auth_token").and_then(Value::as_str),
            v.get("domain_socket_path").and_then(Value::as_str),
        ) {
            return Ok((t.to_string(), PathBuf::from(s)));
        }
    }
    anyhow::bail!(
        "no running Lichen core found for root {} (no readable {}); start one with `lichen core run --root {}`",
        root.display(),
        dir.display(),
        root.display()
    )
}

impl CoreConnection {
    pub fn open(root: &Path) -> anyhow::Result<CoreConnection> {
        let (token, socket) = credentials(root)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt
            .block_on(IpcClient::connect(&socket, &token))
            .with_context(|| {
                format!(
                    "connecting to the core at {} (is `lichen core run --root {}` running?)",
                    socket.display(),
                    root.display()
                )
            })?;
        Ok(CoreConnection { rt, client })
    }

    /// Calls one operation; remote errors come back with their Greengrass error shape.
    pub fn call(&self, op: &str, request: Value) -> anyhow::Result<Value> {
        self.rt
            .block_on(self.client.call(op, request))
            .map_err(|e| match e {
                ClientError::Remote { shape, message, .. } => {
                    let shape = shape.trim_start_matches("aws.greengrass#");
                    anyhow::anyhow!("{op} failed: {shape}: {message}")
                }
                other => anyhow::anyhow!("{op} failed: {other}"),
            })
    }
}
