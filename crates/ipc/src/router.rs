//! The operation registry: services register handlers; the server looks them up per stream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use bytes::{BufMut, Bytes, BytesMut};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::authz::{Authorizer, ResourceStyle};
use crate::rpc::{APPLICATION_MESSAGE, encode_json_message_with};
use crate::writer::FrameWriter;

/// The Greengrass IPC service id used in `_service` of error payloads.
pub const SERVICE_ID: &str = "aws.greengrass#GreengrassCoreIPC";
pub(crate) const NAMESPACE: &str = "aws.greengrass#";

/// An operation's error, mapped to a Greengrass error shape (spec §3.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpcError {
    #[error("ServiceError: {message}")]
    Service { message: String },
    #[error("UnauthorizedError: {message}")]
    Unauthorized { message: String },
    #[error("InvalidArgumentsError: {message}")]
    InvalidArguments { message: String },
    #[error("ResourceNotFoundError: {message}")]
    ResourceNotFound {
        message: String,
        resource_type: Option<String>,
        resource_name: Option<String>,
    },
    #[error("ComponentNotFoundError: {message}")]
    ComponentNotFound { message: String },
    #[error("ConflictError: {message}")]
    Conflict { message: String },
    #[error("FailedUpdateConditionCheckError: {message}")]
    FailedUpdateConditionCheck { message: String },
    #[error("InvalidTokenError: {message}")]
    InvalidToken { message: String },
    #[error("InvalidArtifactsDirectoryPathError: {message}")]
    InvalidArtifactsDirectoryPath { message: String },
    #[error("InvalidRecipeDirectoryPathError: {message}")]
    InvalidRecipeDirectoryPath { message: String },
    /// Any other shape a service defines (e.g. `InvalidCredentialError`), without namespace.
    #[error("{shape}: {message}")]
    Other { shape: String, message: String },
}

impl IpcError {
    pub fn service(message: impl Into<String>) -> IpcError {
        IpcError::Service {
            message: message.into(),
        }
    }

    pub fn invalid_arguments(message: impl Into<String>) -> IpcError {
        IpcError::InvalidArguments {
            message: message.into(),
        }
    }

    /// The shape name without namespace, e.g. `UnauthorizedError`.
    pub fn shape(&self) -> &str {
        match self {
            IpcError::Service { .. } => "ServiceError",
            IpcError::Unauthorized { .. } => "UnauthorizedError",
            IpcError::InvalidArguments { .. } => "InvalidArgumentsError",
            IpcError::ResourceNotFound { .. } => "ResourceNotFoundError",
            IpcError::ComponentNotFound { .. } => "ComponentNotFoundError",
            IpcError::Conflict { .. } => "ConflictError",
            IpcError::FailedUpdateConditionCheck { .. } => "FailedUpdateConditionCheckError",
            IpcError::InvalidToken { .. } => "InvalidTokenError",
            IpcError::InvalidArtifactsDirectoryPath { .. } => "InvalidArtifactsDirectoryPathError",
            IpcError::InvalidRecipeDirectoryPath { .. } => "InvalidRecipeDirectoryPathError",
            IpcError::Other { shape, .. } => shape,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            IpcError::Service { message }
            | IpcError::Unauthorized { message }
            | IpcError::InvalidArguments { message }
            | IpcError::ResourceNotFound { message, .. }
            | IpcError::ComponentNotFound { message }
            | IpcError::Conflict { message }
            | IpcError::FailedUpdateConditionCheck { message }
            | IpcError::InvalidToken { message }
            | IpcError::InvalidArtifactsDirectoryPath { message }
            | IpcError::InvalidRecipeDirectoryPath { message }
            | IpcError::Other { message, .. } => message,
        }
    }

    /// The JSON payload: the shape's own members (read by Python) plus the `_message`,
    /// `_errorCode`, `_service` members Java clients read.
    pub fn to_payload(&self) -> Value {
        let mut v = json!({
            "message": self.message(),
            "_message": self.message(),
            "_errorCode": self.shape(),
            "_service": SERVICE_ID,
        });
        if let IpcError::ResourceNotFound {
            resource_type,
            resource_name,
            ..
        } = self
        {
            if let Some(t) = resource_type {
                v["resourceType"] = json!(t);
            }
            if let Some(n) = resource_name {
                v["resourceName"] = json!(n);
            }
        }
        v
    }
}

/// Who is calling: the identity the connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub component: String,
}

/// What authorization an operation needs before its handler runs.
#[derive(Clone)]
pub enum Authz {
    /// No policy needed (the handler may still check the caller itself).
    None,
    /// A policy of `service_id` must allow the operation on `resource(request)`.
    Service {
        service_id: String,
        resource: fn(&Value) -> String,
        style: ResourceStyle,
    },
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, IpcError>> + Send>>;
type UnaryFn = dyn Fn(Caller, Value) -> HandlerFuture + Send + Sync;
type StreamingFn = dyn Fn(Caller, Value, EventSink) -> HandlerFuture + Send + Sync;

/// The stream closed (client closed it, or the connection ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the IPC stream is closed")]
pub struct StreamClosed;

/// Sends events on a streaming operation. Events given before the handler returned its response
/// wait until the response is on the wire (never before it). Dropping every clone of the sink
/// closes the stream from the server side; [`EventSink::closed`] resolves when the client closed
/// the stream or the connection ended.
///
/// Events go straight onto the connection's write queue (no task in between), so an event costs
/// one hop from the sender to the connection's writer.
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<SinkInner>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("stream", &self.inner.stream)
            .finish()
    }
}

struct SinkInner {
    out: FrameWriter,
    stream: i32,
    /// Full event shape, e.g. `aws.greengrass#SubscriptionResponseMessage`.
    shape: String,
    /// Events sent before the response; `None` once the response is out and they were flushed.
    early: Mutex<Option<Vec<Bytes>>>,
    /// `true` once the response is out. The sender lives with the stream: it drops when the
    /// client closes the stream, the call failed, or the connection ends.
    open: watch::Receiver<bool>,
    /// Dropped with the last sink: tells the stream to send its closing frame.
    _alive: mpsc::Sender<()>,
}

/// The stream's end of its sinks: see [`EventSink::channel`].
pub(crate) struct SinkControl {
    open: watch::Sender<bool>,
    alive: mpsc::Receiver<()>,
    early: Arc<SinkInner>,
}

/// Events buffered per stream before the response is out; further early events wait.
pub(crate) const STREAM_EVENT_BUFFER: usize = 64;

impl SinkControl {
    /// The response is queued: flush the early events (in order) and let later ones through.
    pub(crate) async fn opened(&self) -> bool {
        loop {
            let batch = {
                let mut early = self.early.early.lock().unwrap_or_else(|e| e.into_inner());
                let batch = early.as_mut().map(std::mem::take).unwrap_or_default();
                if batch.is_empty() {
                    *early = None;
                    self.open.send_replace(true);
                    return true;
                }
                batch
            };
            for frame in batch {
                if self.early.out.send(frame).await.is_err() {
                    return false;
                }
            }
        }
    }

    /// Resolves when every sink is gone (the service closed the stream).
    pub(crate) async fn sinks_dropped(mut self) {
        drop(self.early);
        while self.alive.recv().await.is_some() {}
    }
}

impl EventSink {
    /// A sink writing frames of `shape` on `stream` to `out`, and its control.
    pub(crate) fn channel(out: FrameWriter, stream: i32, shape: &str) -> (EventSink, SinkControl) {
        let (open_tx, open_rx) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let inner = Arc::new(SinkInner {
            out,
            stream,
            shape: shape.to_string(),
            early: Mutex::new(Some(Vec::new())),
            open: open_rx,
            _alive: alive_tx,
        });
        let control = SinkControl {
            open: open_tx,
            alive: alive_rx,
            early: inner.clone(),
        };
        (EventSink { inner }, control)
    }

    /// Queues one event, waiting while the connection's write queue is full.
    pub async fn send(&self, event: Value) -> Result<(), StreamClosed> {
        self.send_serialized(serde_json::to_vec(&event).unwrap_or_default().into())
            .await
    }

    /// Queues one event given as its serialized JSON object (the caller vouches it is one).
    pub async fn send_serialized(&self, event: Bytes) -> Result<(), StreamClosed> {
        self.send_written(event.len(), |out| out.put_slice(&event))
            .await
    }

    /// Queues one event whose serialized JSON object `write_event` writes straight into the
    /// frame (no buffer of its own); `size_hint` is its expected length.
    pub(crate) async fn send_written(
        &self,
        size_hint: usize,
        write_event: impl FnOnce(&mut BytesMut),
    ) -> Result<(), StreamClosed> {
        let inner = &self.inner;
        if inner.open.has_changed().is_err() {
            return Err(StreamClosed);
        }
        let bytes = encode_json_message_with(
            APPLICATION_MESSAGE,
            0,
            inner.stream,
            Some(&inner.shape),
            &[],
            size_hint,
            write_event,
        )
        .map_err(|_| StreamClosed)?;
        {
            let mut early = inner.early.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(early) = early.as_mut()
                && early.len() < STREAM_EVENT_BUFFER
            {
                early.push(bytes);
                return Ok(());
            }
        }
        if !*inner.open.borrow() {
            // More early events than the buffer holds: wait for the response.
            let mut open = inner.open.clone();
            open.wait_for(|o| *o).await.map_err(|_| StreamClosed)?;
        }
        inner.out.send(bytes).await.map_err(|_| StreamClosed)
    }

    /// Resolves once the client closed the stream or the connection ended.
    pub async fn closed(&self) {
        let mut open = self.inner.open.clone();
        while open.changed().await.is_ok() {}
    }

    pub fn is_closed(&self) -> bool {
        self.inner.open.has_changed().is_err()
    }

    /// Holds the connection's writes back until the cork drops, so a burst of events leaves in
    /// one write (see [`FrameWriter::cork`]).
    pub(crate) fn cork(&self) -> crate::writer::Cork {
        self.inner.out.cork()
    }
}

#[derive(Clone)]
pub(crate) enum Handler {
    Unary(Arc<UnaryFn>),
    Streaming {
        event_shape: String,
        handler: Arc<StreamingFn>,
    },
}

/// A unary operation's allocation-light path: given the caller, the raw request payload and
/// the operation's authorization check for a resource, it either handles the call
/// (`Some(Ok(()))` answers `{}`, `Some(Err(_))` the error) or declines with `None`, and the
/// call takes the general path (parsed `Value`, declared authorization, handler) instead. It
/// must decline whenever the general path could answer differently.
pub(crate) type FastUnaryFn = dyn Fn(&Caller, &[u8], &dyn Fn(&str) -> Result<(), IpcError>) -> Option<Result<(), IpcError>>
    + Send
    + Sync;

#[derive(Clone)]
pub(crate) struct Operation {
    pub(crate) name: String,
    /// `<name>Response`, made once at registration rather than per call.
    pub(crate) response_shape: String,
    pub(crate) authz: Authz,
    pub(crate) handler: Handler,
    pub(crate) fast: Option<Arc<FastUnaryFn>>,
}

/// Full operation id: `PublishToTopic` → `aws.greengrass#PublishToTopic`.
pub(crate) fn full_name(op: &str) -> String {
    if op.contains('#') {
        op.to_string()
    } else {
        format!("{NAMESPACE}{op}")
    }
}

/// The registry of operations. Registering an operation twice replaces the first handler.
pub struct Router {
    ops: RwLock<HashMap<String, Arc<Operation>>>,
    authorizer: Arc<Authorizer>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ops = self.ops.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Router")
            .field("operations", &ops.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Router {
    pub fn new(authorizer: Arc<Authorizer>) -> Router {
        Router {
            ops: RwLock::new(HashMap::new()),
            authorizer,
        }
    }

    /// Registers a request/response operation (`op` = `PublishToTopic` or the full id).
    pub fn register_unary<F, Fut>(&self, op: &str, authz: Authz, handler: F)
    where
        F: Fn(Caller, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, IpcError>> + Send + 'static,
    {
        let handler: Arc<UnaryFn> = Arc::new(move |c, v| Box::pin(handler(c, v)));
        self.insert(op, authz, Handler::Unary(handler));
    }

    /// Registers a streaming operation whose events have shape `event_shape`
    /// (e.g. `SubscriptionResponseMessage`). The handler returns the response; it keeps the
    /// [`EventSink`] (usually in a spawned task) for as long as it sends events.
    pub fn register_streaming<F, Fut>(&self, op: &str, event_shape: &str, authz: Authz, handler: F)
    where
        F: Fn(Caller, Value, EventSink) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, IpcError>> + Send + 'static,
    {
        let handler: Arc<StreamingFn> = Arc::new(move |c, v, s| Box::pin(handler(c, v, s)));
        self.insert(
            op,
            authz,
            Handler::Streaming {
                event_shape: full_name(event_shape),
                handler,
            },
        );
    }

    /// Removes an operation (its service stopped); later calls answer "not supported".
    pub fn unregister(&self, op: &str) -> bool {
        self.ops
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&full_name(op))
            .is_some()
    }

    /// Every registered operation: its full name, the `accessControl` service id whose policy
    /// it requires (`None`: no policy, the handler decides) and whether it is streaming. For
    /// audits and tests that must cover every operation.
    pub fn operations(&self) -> Vec<(String, Option<String>, bool)> {
        let ops = self.ops.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = ops
            .values()
            .map(|op| {
                let service = match &op.authz {
                    Authz::None => None,
                    Authz::Service { service_id, .. } => Some(service_id.clone()),
                };
                let streaming = matches!(op.handler, Handler::Streaming { .. });
                (op.name.clone(), service, streaming)
            })
            .collect();
        list.sort();
        list
    }

    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    fn insert(&self, op: &str, authz: Authz, handler: Handler) {
        let name = full_name(op);
        self.ops.write().unwrap_or_else(|e| e.into_inner()).insert(
            name.clone(),
            Arc::new(Operation {
                response_shape: format!("{name}Response"),
                name,
                authz,
                handler,
                fast: None,
            }),
        );
    }

    /// Gives the registered operation `op` a fast path (see [`FastUnaryFn`]); registering the
    /// operation again removes it.
    pub(crate) fn add_fast_path(&self, op: &str, fast: Arc<FastUnaryFn>) {
        let mut ops = self.ops.write().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = ops.get_mut(&full_name(op)) {
            let mut with_fast = Operation::clone(current);
            with_fast.fast = Some(fast);
            *current = Arc::new(with_fast);
        }
    }

    /// The authorization `op` declared, for an already extracted resource.
    pub(crate) fn authorize_resource(
        &self,
        op: &Operation,
        caller: &Caller,
        resource: &str,
    ) -> Result<(), IpcError> {
        match &op.authz {
            Authz::None => Ok(()),
            Authz::Service {
                service_id, style, ..
            } => self
                .authorizer
                .check(&caller.component, service_id, &op.name, resource, *style),
        }
    }

    pub(crate) fn lookup(&self, op: &str) -> Option<Arc<Operation>> {
        self.ops
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(op)
            .cloned()
    }

    /// Runs the authorization an operation declared.
    pub(crate) fn authorize(
        &self,
        op: &Operation,
        caller: &Caller,
        request: &Value,
    ) -> Result<(), IpcError> {
        match &op.authz {
            Authz::None => Ok(()),
            Authz::Service {
                service_id,
                resource,
                style,
            } => self.authorizer.check(
                &caller.component,
                service_id,
                &op.name,
                &resource(request),
                *style,
            ),
        }
    }
}
