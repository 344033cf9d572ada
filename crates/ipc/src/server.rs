//! The IPC server: Unix socket, accept loop with a connection bound, one task per connection.
//!
//! A connection is a reader (frames → streams) and a [`FrameWriter`] shared by everything that
//! answers on it, so per-stream order is the order frames were handed over. A call that completes
//! without waiting runs inside the reader (no task); event sinks hand their frames straight to
//! the writer (no task between a service and the socket). Any protocol violation closes that one
//! connection with a logged reason; nothing a client sends can stop the server or other clients.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::codec::{self, Decoder, Frame, RawFrame};
use crate::router::{Caller, EventSink, Handler, IpcError, Router};
use crate::rpc::*;
use crate::tokens::TokenRegistry;
use crate::writer::FrameWriter;

/// `sun_path` holds 108 bytes including the NUL.
const SUN_PATH_MAX: usize = 108;

/// Socket path of a core rooted at `root`: `(absolute path, path to give components)`. When the
/// absolute path is too long for `sun_path`, components get `../../ipc.socket`, valid from their
/// working directory `<root>/work/<component>/` (classic behaviour).
pub fn component_socket_path(root: &Path) -> (PathBuf, PathBuf) {
    let abs = root.join("ipc.socket");
    if abs.as_os_str().len() >= SUN_PATH_MAX {
        (abs, PathBuf::from("../../ipc.socket"))
    } else {
        (abs.clone(), abs)
    }
}

/// A path `bind`/`connect` accept: long paths go through `/proc/self/fd/<dir>/<name>`, which
/// the kernel resolves via the open directory. The returned `File` must outlive the call.
pub(crate) fn short_path(path: &Path) -> io::Result<(PathBuf, Option<std::fs::File>)> {
    if path.as_os_str().len() < SUN_PATH_MAX {
        return Ok((path.to_path_buf(), None));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {} has no file name", path.display()),
        )
    })?;
    let dir = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    Ok((short, Some(dir)))
}

/// Binds a listening socket at `path` with mode 0666 (whatever the umask), replacing a stale
/// socket there atomically.
///
/// The mode cannot be set on the socket's descriptor once it is bound (on Linux `fchmod` of a
/// socket changes the socket's own inode, not the file `bind` made), and `chmod` by path follows
/// whatever the path is when it runs. So the socket is bound in a fresh directory of mode 0700
/// beside `path`, where nobody else can swap the file, its mode is set there, and it is renamed
/// into place.
fn bind_0666(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {} has no file name", path.display()),
        )
    })?;
    let private = parent.join(format!(
        ".{}.{:016x}",
        name.to_string_lossy(),
        rand::random::<u64>()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join(name);
    let bound = (|| {
        let (bind_path, _dir) = short_path(&staged)?;
        let listener = UnixListener::bind(&bind_path)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o666))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Default bound on the streams open at once on one connection. Greengrass documents no figure;
/// a component's subscriptions fit many times over, and each stream holds a task and a bus
/// queue, so the bound is what keeps one connection from exhausting the core's memory.
pub const DEFAULT_MAX_STREAMS: usize = 1024;

/// Default bound on one component's connections at once. The SDK opens one connection per IPC
/// client and a component usually makes one client; the bound leaves room for components that
/// make many (hundreds, under load) while keeping one component from taking every connection
/// the server serves (`max_connections`) away from the others.
pub const DEFAULT_MAX_CONNECTIONS_PER_COMPONENT: usize = 1024;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest frame accepted (clamped to 24 MiB); default 16 MiB.
    pub max_frame: usize,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that has not authenticated (CONNECT accepted) by then is closed; default 10 s.
    pub connect_timeout: std::time::Duration,
    /// Largest frame accepted before authentication (the CONNECT); default 64 KiB.
    pub max_connect_frame: usize,
    /// Streams open at once on one connection (subscriptions, calls awaiting their answer);
    /// a new one beyond it is refused alone with a ServiceError. Default 1024.
    pub max_streams: usize,
    /// Connections one component holds at once; a further CONNECT is rejected. Default 1024.
    pub max_connections_per_component: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_frame: codec::DEFAULT_MAX_FRAME,
            max_connections: 4096,
            connect_timeout: std::time::Duration::from_secs(10),
            max_connect_frame: 64 * 1024,
            max_streams: DEFAULT_MAX_STREAMS,
            max_connections_per_component: DEFAULT_MAX_CONNECTIONS_PER_COMPONENT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind IPC socket {path}: {source}; check the directory exists and is writable")]
    Bind { path: PathBuf, source: io::Error },
}

struct Shared {
    router: Arc<Router>,
    tokens: Arc<TokenRegistry>,
    decoder: Decoder,
    /// Frames before authentication: only a small CONNECT is read from an unknown client.
    connect_decoder: Decoder,
    connect_timeout: std::time::Duration,
    max_streams: usize,
    max_connections_per_component: usize,
    /// Authenticated connections held by each component.
    connections_by_component: Mutex<HashMap<String, usize>>,
}

/// One component's hold on one of its connection slots, given back when dropped.
struct ComponentSlot {
    shared: Arc<Shared>,
    component: String,
}

impl ComponentSlot {
    /// A slot for `component`, or `None` when it already holds every one it may.
    fn take(shared: &Arc<Shared>, component: &str) -> Option<ComponentSlot> {
        let mut held = shared
            .connections_by_component
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = held.entry(component.to_string()).or_insert(0);
        if *count >= shared.max_connections_per_component {
            return None;
        }
        *count += 1;
        Some(ComponentSlot {
            shared: shared.clone(),
            component: component.to_string(),
        })
    }
}

impl Drop for ComponentSlot {
    fn drop(&mut self) {
        let mut held = self
            .shared
            .connections_by_component
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.component) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.component);
            }
        }
    }
}

/// A running IPC server. Dropping it without [`IpcServer::shutdown`] also stops it.
pub struct IpcServer {
    path: PathBuf,
    shutdown: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for IpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcServer")
            .field("path", &self.path)
            .finish()
    }
}

impl IpcServer {
    /// Binds `path` (mode 0666 whatever the umask, a stale socket file is replaced atomically;
    /// any other file there is an error) and starts serving.
    /// Must be called inside a tokio runtime.
    pub fn bind(
        path: &Path,
        router: Arc<Router>,
        tokens: Arc<TokenRegistry>,
        options: ServerOptions,
    ) -> Result<IpcServer, ServerError> {
        let err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && !meta.file_type().is_socket()
        {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; move it away",
            )));
        }
        let listener = bind_0666(path).map_err(err)?;
        let shared = Arc::new(Shared {
            router,
            tokens,
            decoder: Decoder::new(options.max_frame),
            connect_decoder: Decoder::new(options.max_connect_frame.min(options.max_frame)),
            connect_timeout: options.connect_timeout,
            max_streams: options.max_streams.max(1),
            max_connections_per_component: options.max_connections_per_component.max(1),
            connections_by_component: Mutex::default(),
        });
        let (shutdown, rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, shared, rx, options.max_connections));
        tracing::info!(socket = %path.display(), "IPC server listening");
        Ok(IpcServer {
            path: path.to_path_buf(),
            shutdown,
            accept: Some(accept),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every connection and removes the socket file.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for IpcServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    max_connections: usize,
) {
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "IPC accept failed");
                    // Typically EMFILE: give other connections a moment to finish.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, shared, shutdown).await;
            drop(permit);
        });
    }
    connections.shutdown().await;
}

/// Why a connection ended.
enum Close {
    /// Peer closed or the server is shutting down.
    Quiet,
    /// Protocol violation: send PROTOCOL_ERROR with this reason, then close.
    Protocol(String),
    /// Already answered (e.g. rejected CONNECT_ACK); just close.
    Answered(String),
}

type Streams = Arc<Mutex<HashMap<i32, AbortHandle>>>;

async fn serve_connection(
    stream: UnixStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut reader, writer) = stream.into_split();
    let (out, writer_task) = FrameWriter::spawn(writer);
    let streams: Streams = Arc::default();
    let mut tasks = JoinSet::new();
    let mut conn = Connection {
        shared: &shared,
        out: out.clone(),
        streams: streams.clone(),
        tasks: &mut tasks,
        caller: None,
        _slot: None,
        told_stream_bound: false,
        last_stream: 0,
    };
    let mut buf = BytesMut::with_capacity(8192);
    // Unauthenticated clients get a deadline: any local user can open the socket.
    let connect_deadline = tokio::time::Instant::now() + shared.connect_timeout;
    let close = 'read: loop {
        {
            // The answers to every frame of this read leave in one write when the cork goes.
            let _cork = out.cork();
            loop {
                // Re-chosen per frame: the CONNECT is read with the small limit, what follows
                // it (even in the same read) with the full one.
                let decoder = match conn.caller {
                    Some(_) => &shared.decoder,
                    None => &shared.connect_decoder,
                };
                match decoder.decode_raw(&mut buf) {
                    Ok(Some(frame)) => {
                        if let Err(close) = conn.handle(frame).await {
                            break 'read close;
                        }
                    }
                    Ok(None) => break,
                    Err(e) if conn.caller.is_none() => {
                        break 'read Close::Protocol(format!(
                            "bad frame before CONNECT was accepted: {e}"
                        ));
                    }
                    Err(e) => break 'read Close::Protocol(format!("bad frame: {e}")),
                }
            }
        }
        while conn.tasks.try_join_next().is_some() {}
        tokio::select! {
            r = reader.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break Close::Quiet,
                Ok(_) => {}
            },
            _ = shutdown.changed() => break Close::Quiet,
            _ = tokio::time::sleep_until(connect_deadline), if conn.caller.is_none() => {
                break Close::Protocol(format!(
                    "no accepted CONNECT within {} ms of connecting",
                    shared.connect_timeout.as_millis()
                ));
            }
        }
    };
    let who = conn
        .caller
        .as_ref()
        .map_or("unauthenticated client", |c| c.component.as_str())
        .to_string();
    drop(conn);
    match close {
        Close::Quiet => tracing::debug!(client = %who, "IPC connection closed"),
        Close::Answered(reason) => {
            tracing::warn!(client = %who, %reason, "IPC connection closed");
            // Let the client read the answer and close first: a client whose socket closes
            // under it reports "socket closed" rather than the refusal it was sent.
            let mut sink = [0u8; 1024];
            let drained = async { while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {} };
            tokio::select! {
                _ = tokio::time::timeout(std::time::Duration::from_secs(2), drained) => {}
                _ = shutdown.changed() => {}
            }
        }
        Close::Protocol(reason) => {
            tracing::warn!(client = %who, %reason, "IPC connection closed: protocol error");
            if let Ok(bytes) = codec::encode(&connection_error(PROTOCOL_ERROR, &reason)) {
                let _ = out.send(bytes).await;
            }
        }
    }
    // Stop every stream (drops their sinks, so subscriptions are released), then flush.
    tasks.shutdown().await;
    streams.lock().unwrap_or_else(|e| e.into_inner()).clear();
    // Sinks that services still hold cannot keep the connection open: close flushes and ends.
    out.close();
    let _ = writer_task.await;
}

struct Connection<'a> {
    shared: &'a Arc<Shared>,
    out: FrameWriter,
    streams: Streams,
    tasks: &'a mut JoinSet<()>,
    caller: Option<Caller>,
    /// Held from the accepted CONNECT until the connection ends.
    _slot: Option<ComponentSlot>,
    /// Whether a stream refused for the bound was logged.
    told_stream_bound: bool,
    last_stream: i32,
}

impl Connection<'_> {
    async fn send(&self, frame: &Frame) -> Result<(), Close> {
        let bytes = codec::encode(frame).map_err(|e| Close::Protocol(format!("encode: {e}")))?;
        self.out.send(bytes).await.map_err(|_| Close::Quiet)
    }

    async fn handle(&mut self, frame: RawFrame) -> Result<(), Close> {
        let (Some(kind), Some(flags), Some(stream)) = (
            frame.header_i32(MESSAGE_TYPE),
            frame.header_i32(MESSAGE_FLAGS),
            frame.header_i32(STREAM_ID),
        ) else {
            return Err(Close::Protocol(
                "message without the int32 :message-type, :message-flags and :stream-id headers"
                    .into(),
            ));
        };
        if self.caller.is_none() {
            return self.connect(kind, &frame).await;
        }
        match kind {
            APPLICATION_MESSAGE | APPLICATION_ERROR if stream > 0 => {
                if let Some(answer) = self.stream_message(kind, flags, stream, frame)? {
                    self.out.send(answer).await.map_err(|_| Close::Quiet)?;
                }
                Ok(())
            }
            PING => {
                let frame = frame.to_frame();
                let mut headers: Vec<_> = frame
                    .headers
                    .into_iter()
                    .filter(|h| !h.name.starts_with(':'))
                    .collect();
                headers.extend(rpc_headers(PING_RESPONSE, 0, 0));
                self.send(&Frame {
                    headers,
                    payload: frame.payload,
                })
                .await
            }
            PING_RESPONSE => Ok(()),
            CONNECT => Err(Close::Protocol("second CONNECT on one connection".into())),
            _ => Err(Close::Protocol(format!(
                "unexpected message type {kind} on stream {stream}"
            ))),
        }
    }

    async fn connect(&mut self, kind: i32, frame: &RawFrame) -> Result<(), Close> {
        if kind != CONNECT {
            return Err(Close::Protocol(format!(
                "message type {kind} before CONNECT"
            )));
        }
        if frame.header_str(VERSION) != Some(PROTOCOL_VERSION) {
            return Err(Close::Protocol(format!(
                "CONNECT with :version {:?}, expected {PROTOCOL_VERSION}",
                frame.header_str(VERSION)
            )));
        }
        let token = serde_json::from_slice::<Value>(&frame.payload)
            .ok()
            .and_then(|v| v.get("authToken")?.as_str().map(str::to_string));
        let identity = token
            .as_deref()
            .and_then(|t| self.shared.tokens.identity(t));
        match identity {
            Some(component) => {
                let Some(slot) = ComponentSlot::take(self.shared, &component) else {
                    self.send(&bare(CONNECT_ACK, 0, 0)).await?;
                    return Err(Close::Answered(format!(
                        "CONNECT rejected: {component} already holds {} IPC connections, the most one component may; \
                         close connections it no longer uses (one IPC client per component is enough)",
                        self.shared.max_connections_per_component
                    )));
                };
                self._slot = Some(slot);
                self.send(&bare(CONNECT_ACK, FLAG_CONNECTION_ACCEPTED, 0))
                    .await?;
                tracing::debug!(client = %component, "IPC client connected");
                self.caller = Some(Caller { component });
                Ok(())
            }
            None => {
                self.send(&bare(CONNECT_ACK, 0, 0)).await?;
                Err(Close::Answered(
                    "CONNECT rejected: missing or unknown authToken".into(),
                ))
            }
        }
    }

    /// Opens, continues or closes a stream; `Some(bytes)` is an answer to send now (a call the
    /// reader completed itself).
    fn stream_message(
        &mut self,
        kind: i32,
        flags: i32,
        stream: i32,
        frame: RawFrame,
    ) -> Result<Option<Bytes>, Close> {
        if stream <= self.last_stream {
            let active = self
                .streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&stream);
            if !active
                && frame.header_str(OPERATION).is_some()
                && flags & FLAG_TERMINATE_STREAM == 0
            {
                return Err(Close::Protocol(format!(
                    "new stream id {stream} is not greater than the last one ({}); stream ids must increase",
                    self.last_stream
                )));
            }
            // A message on an open stream: the client closing it (or an error from the client).
            if kind == APPLICATION_ERROR || flags & FLAG_TERMINATE_STREAM != 0 {
                let handle = self
                    .streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&stream);
                if let Some(handle) = handle {
                    handle.abort();
                }
            }
            // Anything else on an old stream (e.g. late close of a finished call) is ignored.
            return Ok(None);
        }
        self.last_stream = stream;
        if kind != APPLICATION_MESSAGE || flags & FLAG_TERMINATE_STREAM != 0 {
            return Ok(None);
        }
        let op = frame.header_str(OPERATION).unwrap_or_default();
        if let Some(answer) = self.fast_call(op, stream, &frame.payload) {
            return Ok(Some(answer));
        }
        // A stream that has to wait holds a task and, for a subscription, a bus queue until it
        // closes: one connection holds only so many at once. The new one alone is refused.
        let open = self.streams.lock().unwrap_or_else(|e| e.into_inner()).len();
        if open >= self.shared.max_streams {
            let component = self.caller.as_ref().map_or("", |c| c.component.as_str());
            // Once per connection: a client retrying in a loop must not flood the log.
            if !self.told_stream_bound {
                self.told_stream_bound = true;
                tracing::warn!(client = %component, operation = %op, streams = open, "IPC stream refused: too many streams open on one connection (further refusals on it are not logged)");
            }
            let error = IpcError::service(format!(
                "{op} refused: this IPC connection already has {} streams open (subscriptions and calls awaiting their answer), the most one connection may hold; close streams that are no longer needed before opening more",
                self.shared.max_streams
            ));
            return Ok(error_bytes(stream, &error));
        }
        let op = op.to_string();
        let caller = self.caller.clone().unwrap_or(Caller {
            component: String::new(),
        });
        let out = self.out.clone();
        let shared = self.shared.clone();
        let mut call = Box::pin(async move {
            run_stream(&shared.router, caller, &op, stream, frame.payload, &out).await;
        });
        // Most calls (a publish, a config read) finish without waiting: run them here, saving a
        // task spawn and a hop between threads. A call that has to wait continues as its own
        // task; tokio polls it again with a real waker, so the no-op waker of this first poll
        // is never relied on.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if call.as_mut().poll(&mut cx).is_ready() {
            return Ok(None);
        }
        let streams = self.streams.clone();
        let mut guard = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let handle = self.tasks.spawn(async move {
            call.await;
            streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&stream);
        });
        guard.insert(stream, handle);
        Ok(None)
    }

    /// The answer of an operation with a fast path that handled the call (no task, no parsed
    /// request, no copy of the caller); `None` when the call takes the general path.
    fn fast_call(&self, op_name: &str, stream: i32, payload: &[u8]) -> Option<Bytes> {
        let router = &self.shared.router;
        let op = router.lookup(op_name)?;
        let fast = op.fast.as_ref()?;
        let caller = self.caller.as_ref()?;
        let authorize = |resource: &str| router.authorize_resource(&op, caller, resource);
        match fast(caller, payload, &authorize)? {
            Ok(()) => encode_json_message(
                APPLICATION_MESSAGE,
                FLAG_TERMINATE_STREAM,
                stream,
                Some(&op.response_shape),
                &[],
                b"{}",
            )
            .map_err(|e| tracing::error!(error = %e, "IPC response could not be encoded"))
            .ok(),
            Err(error) => error_bytes(stream, &error),
        }
    }
}

async fn send(out: &FrameWriter, frame: &Frame) -> bool {
    match codec::encode(frame) {
        Ok(bytes) => out.send(bytes).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "IPC frame could not be encoded");
            false
        }
    }
}

/// The APPLICATION_ERROR frame that ends `stream` with `error`.
fn error_bytes(stream: i32, error: &IpcError) -> Option<Bytes> {
    let shape = format!("aws.greengrass#{}", error.shape());
    let payload = serde_json::to_vec(&error.to_payload()).unwrap_or_default();
    encode_json_message(
        APPLICATION_ERROR,
        FLAG_TERMINATE_STREAM,
        stream,
        Some(&shape),
        &[],
        &payload,
    )
    .map_err(|e| tracing::error!(error = %e, "IPC error frame could not be encoded"))
    .ok()
}

async fn send_error(out: &FrameWriter, stream: i32, error: &IpcError) {
    if let Some(bytes) = error_bytes(stream, error) {
        let _ = out.send(bytes).await;
    }
}

/// The Greengrass component whose plugin registers `op` (spec §3.1), for the error that names
/// what to deploy when it is missing.
fn providing_service(op: &str) -> Option<&'static str> {
    let name = op.strip_prefix("aws.greengrass#").unwrap_or(op);
    Some(match name {
        "GetThingShadow"
        | "UpdateThingShadow"
        | "DeleteThingShadow"
        | "ListNamedShadowsForThing" => "aws.greengrass.ShadowManager",
        "GetSecretValue" => "aws.greengrass.SecretManager",
        "VerifyClientDeviceIdentity"
        | "GetClientDeviceAuthToken"
        | "AuthorizeClientDeviceAction"
        | "SubscribeToCertificateUpdates" => "aws.greengrass.clientdevices.Auth",
        "PublishToIoTCore" | "SubscribeToIoTCore" | "SubscribeToIoTCoreConnectionStatus" => {
            "aws.greengrass.Nucleus (cloud connection)"
        }
        "GetComponentDetails"
        | "ListComponents"
        | "RestartComponent"
        | "StopComponent"
        | "CreateLocalDeployment"
        | "CancelLocalDeployment"
        | "GetLocalDeploymentStatus"
        | "ListLocalDeployments"
        | "CreateDebugPassword" => "aws.greengrass.Cli",
        _ => return None,
    })
}

/// One operation invocation: authorize, run the handler, answer, then pump events.
async fn run_stream(
    router: &Router,
    caller: Caller,
    op_name: &str,
    stream: i32,
    payload: Bytes,
    out: &FrameWriter,
) {
    let Some(op) = router.lookup(op_name) else {
        let error = IpcError::service(match providing_service(op_name) {
            Some(service) => format!(
                "Operation {op_name} is not supported by this core: {service}, the service that provides it, is not running; deploy {service} to use it"
            ),
            None => {
                format!("Operation {op_name} is not supported by this core: no service provides it")
            }
        });
        send_error(out, stream, &error).await;
        return;
    };
    let request = if payload.is_empty() {
        Ok(Value::Object(Default::default()))
    } else {
        serde_json::from_slice::<Value>(&payload)
    };
    let request = match request {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let error = IpcError::invalid_arguments(format!(
                "the {op_name} request payload is not a JSON object"
            ));
            send_error(out, stream, &error).await;
            return;
        }
    };
    if let Err(error) = router.authorize(&op, &caller, &request) {
        send_error(out, stream, &error).await;
        return;
    }
    let (result, control) = match &op.handler {
        Handler::Unary(handler) => (guarded(handler(caller, request)).await, None),
        Handler::Streaming {
            event_shape,
            handler,
        } => {
            let (sink, control) = EventSink::channel(out.clone(), stream, event_shape);
            (guarded(handler(caller, request, sink)).await, Some(control))
        }
    };
    let response = match result {
        Ok(v) => v,
        Err(error) => {
            send_error(out, stream, &error).await;
            return;
        }
    };
    let flags = if control.is_some() {
        0
    } else {
        FLAG_TERMINATE_STREAM
    };
    let body = serde_json::to_vec(&response).unwrap_or_default();
    let frame = encode_json_message(
        APPLICATION_MESSAGE,
        flags,
        stream,
        Some(&op.response_shape),
        &[],
        &body,
    );
    let sent = match frame {
        Ok(bytes) => out.send(bytes).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "IPC response could not be encoded");
            false
        }
    };
    if !sent {
        return;
    }
    // Events only after the response: the sinks write to the connection from here on.
    if let Some(control) = control {
        if !control.opened().await {
            return;
        }
        // This task stays while the stream is open: aborting it (client close, connection end)
        // drops the control, which is how the sinks learn the stream closed.
        let open = control.sinks_dropped();
        open.await;
        // Every sink dropped: the service closed the stream.
        send(
            out,
            &bare(APPLICATION_MESSAGE, FLAG_TERMINATE_STREAM, stream),
        )
        .await;
    }
}

/// A panicking handler answers ServiceError instead of leaving the client waiting.
async fn guarded(fut: crate::router::HandlerFuture) -> Result<Value, IpcError> {
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(_) => Err(IpcError::service(
            "the operation's handler failed unexpectedly; see the core log",
        )),
    }
}
