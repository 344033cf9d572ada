//! An IPC server on a socket in a temp folder, with the kernel operations and an in-memory
//! configuration that lets the given components use every pub/sub operation.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use lichen_bus::Bus;
use lichen_config::ConfigStore;
use lichen_ipc::{
    Authorizer, ConfigSource, IpcServer, Router, ServerOptions, TokenRegistry,
    register_kernel_operations,
};
use serde_json::json;

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    _server: IpcServer,
    pub tokens: Arc<TokenRegistry>,
}

/// Starts the server with `options`; each of `components` may use any pub/sub operation on any
/// topic.
pub async fn start(components: &[&str], options: ServerOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc.socket");
    let store = ConfigStore::in_memory();
    for component in components {
        store
            .merge(
                &["services", component, "configuration", "accessControl"],
                json!({ "aws.greengrass.ipc.pubsub": { "p": { "operations": ["*"], "resources": ["*"] } } }),
                1,
            )
            .unwrap();
    }
    let config: Arc<dyn ConfigSource> = Arc::new(store);
    let tokens = Arc::new(TokenRegistry::new());
    let router = Arc::new(Router::new(Arc::new(Authorizer::new(
        config.clone(),
        tokens.clone(),
    ))));
    register_kernel_operations(&router, Bus::new(), config, tokens.clone());
    let server = IpcServer::bind(&socket, router, tokens.clone(), options).unwrap();
    Fixture {
        _dir: dir,
        socket,
        _server: server,
        tokens,
    }
}
