//! Greengrass IPC: eventstream RPC over a Unix socket, tokens, authorization, operations.
//!
//! Components written against the AWS IoT Device SDK talk to the core through this crate,
//! unmodified. Layers, each testable alone:
//! * [`codec`] — `vnd.amazon.eventstream` frames (pure, no I/O);
//! * the RPC layer (module `server`) — CONNECT/CONNECT_ACK with a per-component token
//!   ([`TokenRegistry`]), streams, responses, events, errors, PING;
//! * [`Router`] — the operation registry. The kernel knows no service: each service registers its
//!   operations ([`Router::register_unary`], [`Router::register_streaming`]) with the
//!   authorization they need ([`Authz`]), checked by the [`Authorizer`] against the components'
//!   `accessControl` policies (deny by default);
//! * [`register_kernel_operations`] — local pub/sub on the [`lichen_bus::Bus`], component
//!   configuration, token validation;
//! * [`IpcClient`] — a client for the CLI, tests, benchmarks and Rust components: generic
//!   `call`/`subscribe` with JSON values, and typed `publish_binary` / `recv_topic_message` for
//!   the pub/sub hot path.
//!
//! Architecture invariant: a malformed or hostile client can only close its own connection —
//! every length is checked before use and every frame is bounded.
//! Architecture invariant: until its CONNECT is accepted a client gets one small frame
//! (`ServerOptions::max_connect_frame`) and a deadline (`ServerOptions::connect_timeout`).
//! Architecture invariant: one connection holds at most `ServerOptions::max_streams` open
//! streams and one component at most `ServerOptions::max_connections_per_component`
//! connections; beyond them only the new stream (or CONNECT) is refused.
//! Architecture invariant: no IPC operation writes a component's `accessControl` (keys are
//! compared as the configuration tree compares them), and an authorization check refuses a
//! resource over [`MAX_RESOURCE_BYTES`] before matching, which allocates nothing.
//! Architecture invariant: no event is sent on a stream before its response.
//! Architecture invariant: frames leave a connection in the order they were handed to its
//! writer, and a frame held back to share a write (a cork) is always written by the uncork or
//! by the writer task — never left queued without a wake-up.
//! Architecture invariant: an operation nobody registered answers `ServiceError`, never a dropped
//! connection; this crate knows `bus` and `config` but no service.
//! Architecture invariant: tokens live only in memory; a restarted core mints new ones.

pub mod codec;

mod authz;
mod client;
mod config_source;
mod kernel;
mod router;
mod rpc;
mod server;
mod tokens;
mod writer;

pub use authz::{
    Authorizer, CLI_SERVICE, MAX_RESOURCE_BYTES, ResourcePattern, ResourceStyle,
    authorization_failures,
};
pub use client::{ClientError, EventStream, IpcClient, TopicMessage};
pub use config_source::{ChangeCallback, ConfigSource};
pub use kernel::{
    MAX_TIMESTAMP_SKEW_MS, PUBSUB_SERVICE, STREAM_MANAGER, register_kernel_operations,
};
pub use router::{
    Authz, Caller, EventSink, HandlerFuture, IpcError, Router, SERVICE_ID, StreamClosed,
};
pub use server::{IpcServer, ServerError, ServerOptions, component_socket_path};
pub use tokens::TokenRegistry;
