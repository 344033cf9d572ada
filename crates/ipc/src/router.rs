//! The operation registry: services register handlers; the server looks them up per stream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::authz::{Authorizer, ResourceStyle};

/// The Greengrass IPC service id used in `_service` of error payloads.
pub const SERVICE_ID: &str = "aws.greengrass#GreengrassCoreIPC";
const NAMESPACE: &str = "aws.greengrass#";

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
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
}

/// An event on its way to the wire: a JSON value, or one already serialized (a hot path such as
/// pub/sub builds its bytes once instead of a `Value` that is serialized again).
#[derive(Debug)]
pub(crate) enum Event {
    Json(Value),
    Serialized(bytes::Bytes),
}

impl Event {
    pub(crate) fn into_bytes(self) -> bytes::Bytes {
        match self {
            Event::Json(v) => serde_json::to_vec(&v).unwrap_or_default().into(),
            Event::Serialized(b) => b,
        }
    }
}

/// Events buffered per stream before `send` waits (slow clients slow down their own pump only).
pub(crate) const STREAM_EVENT_BUFFER: usize = 64;

impl EventSink {
    pub(crate) fn channel() -> (EventSink, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(STREAM_EVENT_BUFFER);
        (EventSink { tx }, rx)
    }

    /// Queues one event, waiting while the stream's buffer is full.
    pub async fn send(&self, event: Value) -> Result<(), StreamClosed> {
        self.tx
            .send(Event::Json(event))
            .await
            .map_err(|_| StreamClosed)
    }

    /// Queues one event given as its serialized JSON object (the caller vouches it is one).
    pub async fn send_serialized(&self, event: bytes::Bytes) -> Result<(), StreamClosed> {
        self.tx
            .send(Event::Serialized(event))
            .await
            .map_err(|_| StreamClosed)
    }

    /// Resolves once the client closed the stream or the connection ended.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
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

#[derive(Clone)]
pub(crate) struct Operation {
    pub(crate) name: String,
    pub(crate) authz: Authz,
    pub(crate) handler: Handler,
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
    ops: RwLock<HashMap<String, Operation>>,
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

    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    fn insert(&self, op: &str, authz: Authz, handler: Handler) {
        let name = full_name(op);
        self.ops.write().unwrap_or_else(|e| e.into_inner()).insert(
            name.clone(),
            Operation {
                name,
                authz,
                handler,
            },
        );
    }

    pub(crate) fn lookup(&self, op: &str) -> Option<Operation> {
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
