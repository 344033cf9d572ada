//! A small IPC client (for the CLI, tests and benchmarks).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::BytesMut;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::codec::{self, Decoder, Frame, RawFrame};
use crate::router::NAMESPACE;
use crate::rpc::*;
use crate::server::short_path;
use crate::writer::FrameWriter;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("IPC socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the IPC server rejected the connection (unknown token)")]
    Rejected,
    #[error("IPC protocol error: {0}")]
    Protocol(String),
    #[error("the IPC connection closed")]
    Closed,
    /// The operation failed: `shape` is e.g. `aws.greengrass#UnauthorizedError`.
    #[error("{shape}: {message}")]
    Remote {
        shape: String,
        message: String,
        payload: Value,
    },
}

/// Where the reader hands a stream's frames: a call wants its one response, a streaming
/// operation its response and then its events.
enum Route {
    Call(oneshot::Sender<RawFrame>),
    Stream(mpsc::UnboundedSender<RawFrame>),
}

type Routes = Arc<Mutex<HashMap<i32, Route>>>;

/// How the caller of [`IpcClient::open`] receives the stream's frames.
enum Receiver {
    Call(oneshot::Receiver<RawFrame>),
    Stream(mpsc::UnboundedReceiver<RawFrame>),
}

/// A connected, authenticated IPC client. Dropping it closes the connection.
pub struct IpcClient {
    out: FrameWriter,
    routes: Routes,
    /// The next stream id; locked while an id is allocated and its first frame queued, because
    /// servers require new stream ids to arrive in increasing order (a plain lock: nothing
    /// waits while holding it).
    next_stream: Mutex<i32>,
    /// Set once the connection is gone.
    closed: Arc<AtomicBool>,
    reader: JoinHandle<()>,
    _writer: JoinHandle<()>,
}

impl std::fmt::Debug for IpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcClient").finish_non_exhaustive()
    }
}

impl IpcClient {
    /// Connects to `socket` and authenticates with `token` (a component's `SVCUID`).
    pub async fn connect(socket: &Path, token: &str) -> Result<IpcClient, ClientError> {
        let io_err = |source| ClientError::Io {
            path: socket.display().to_string(),
            source,
        };
        let (path, _dir) = short_path(socket).map_err(io_err)?;
        let mut stream = UnixStream::connect(&path).await.map_err(io_err)?;
        let mut connect = Frame {
            headers: vec![string_header(VERSION, PROTOCOL_VERSION)],
            payload: serde_json::to_vec(&serde_json::json!({ "authToken": token }))
                .unwrap_or_default()
                .into(),
        };
        connect.headers.extend(rpc_headers(CONNECT, 0, 0));
        let bytes = codec::encode(&connect).map_err(|e| ClientError::Protocol(e.to_string()))?;
        stream.write_all(&bytes).await.map_err(io_err)?;
        let decoder = Decoder::new(codec::MAX_FRAME_LIMIT);
        let mut buf = BytesMut::new();
        let ack = loop {
            if let Some(f) = decoder
                .decode(&mut buf)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                break f;
            }
            if stream.read_buf(&mut buf).await.map_err(io_err)? == 0 {
                return Err(ClientError::Closed);
            }
        };
        if ack.header_i32(MESSAGE_TYPE) != Some(CONNECT_ACK) {
            return Err(ClientError::Protocol(format!(
                "expected CONNECT_ACK, got message type {:?}",
                ack.header_i32(MESSAGE_TYPE)
            )));
        }
        if ack.header_i32(MESSAGE_FLAGS).unwrap_or(0) & FLAG_CONNECTION_ACCEPTED == 0 {
            return Err(ClientError::Rejected);
        }
        let (mut read, write) = stream.into_split();
        let (out, writer) = FrameWriter::spawn(write);
        let routes: Routes = Arc::default();
        let reader_routes = routes.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let reader_closed = closed.clone();
        let reader = tokio::spawn(async move {
            let mut frames = Vec::new();
            loop {
                let mut failed = false;
                loop {
                    match decoder.decode_raw(&mut buf) {
                        Ok(Some(frame)) => frames.push(frame),
                        Ok(None) => break,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                // Every frame of one read is routed under one lock.
                if !frames.is_empty() {
                    let mut routes = reader_routes.lock().unwrap_or_else(|e| e.into_inner());
                    for frame in frames.drain(..) {
                        let stream = frame.header_i32(STREAM_ID).unwrap_or(0);
                        match routes.get(&stream) {
                            Some(Route::Stream(tx)) => {
                                let _ = tx.send(frame);
                            }
                            Some(Route::Call(_)) => {
                                if let Some(Route::Call(tx)) = routes.remove(&stream) {
                                    let _ = tx.send(frame);
                                }
                            }
                            None => {}
                        }
                    }
                }
                let ended = failed || !matches!(read.read_buf(&mut buf).await, Ok(n) if n > 0);
                if ended {
                    // Dropping the senders ends every waiting call with `Closed`; the flag
                    // stops calls opened after this from waiting forever.
                    reader_closed.store(true, Ordering::SeqCst);
                    reader_routes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    return;
                }
            }
        });
        Ok(IpcClient {
            out,
            routes,
            next_stream: Mutex::new(1),
            closed,
            reader,
            _writer: writer,
        })
    }

    /// Opens a stream with `request` and waits for its first answer. `streaming` keeps the
    /// stream's route for the events that follow.
    async fn open(
        &self,
        op: &str,
        body: Vec<u8>,
        streaming: bool,
    ) -> Result<(i32, Option<mpsc::UnboundedReceiver<RawFrame>>, Value), ClientError> {
        // One string holds both the operation id and its request shape (`<op>Request`).
        let shape = if op.contains('#') {
            format!("{op}Request")
        } else {
            format!("{NAMESPACE}{op}Request")
        };
        let op = &shape[..shape.len() - "Request".len()];
        // Queue space first (the bound is a soft one: the id's frame is queued without waiting).
        self.out.ready().await.map_err(|_| ClientError::Closed)?;
        let (stream, rx) = {
            let mut next = self.next_stream.lock().unwrap_or_else(|e| e.into_inner());
            let stream = *next;
            let bytes = encode_json_message(
                APPLICATION_MESSAGE,
                0,
                stream,
                Some(&shape),
                &[(OPERATION, op)],
                &body,
            )
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let (route, rx) = if streaming {
                let (tx, rx) = mpsc::unbounded_channel();
                (Route::Stream(tx), Receiver::Stream(rx))
            } else {
                let (tx, rx) = oneshot::channel();
                (Route::Call(tx), Receiver::Call(rx))
            };
            self.routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(stream, route);
            if self.closed.load(Ordering::SeqCst) || self.out.try_send(bytes).is_err() {
                self.forget(stream);
                return Err(ClientError::Closed);
            }
            *next += 1;
            (stream, rx)
        };
        let (first, rx) = match rx {
            Receiver::Call(rx) => (rx.await.ok(), None),
            Receiver::Stream(mut rx) => (rx.recv().await, Some(rx)),
        };
        let Some(first) = first else {
            self.forget(stream);
            return Err(ClientError::Closed);
        };
        match decode_message(&first) {
            Ok(Some(v)) => Ok((stream, rx, v)),
            Ok(None) => {
                self.forget(stream);
                Err(ClientError::Protocol(format!(
                    "{op}: stream closed without a response"
                )))
            }
            Err(e) => {
                self.forget(stream);
                Err(e)
            }
        }
    }

    fn forget(&self, stream: i32) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&stream);
    }

    /// Calls a request/response operation (`op` = `GetConfiguration` or the full id).
    pub async fn call(&self, op: &str, request: Value) -> Result<Value, ClientError> {
        // The reader removed the call's route when it delivered the response.
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let (_, _, response) = self.open(op, body, false).await?;
        Ok(response)
    }

    /// PublishToTopic with a binary message, encoded straight from `message` (no JSON value
    /// tree): the call a publishing component makes most.
    pub async fn publish_binary(&self, topic: &str, message: &[u8]) -> Result<(), ClientError> {
        let body = serde_json::to_vec(&PublishBinary {
            topic,
            publish_message: PublishMessageOut {
                binary_message: BinaryMessageOut {
                    message: B64.encode(message),
                },
            },
        })
        .unwrap_or_default();
        self.open("PublishToTopic", body, false).await?;
        Ok(())
    }

    /// Starts a streaming operation: its response and the stream of its events.
    pub async fn subscribe(
        &self,
        op: &str,
        request: Value,
    ) -> Result<(Value, EventStream), ClientError> {
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let (stream, rx, response) = self.open(op, body, true).await?;
        let Some(rx) = rx else {
            return Err(ClientError::Closed);
        };
        Ok((
            response,
            EventStream {
                stream,
                rx,
                out: self.out.clone(),
                routes: self.routes.clone(),
                closed: false,
            },
        ))
    }
}

impl Drop for IpcClient {
    fn drop(&mut self) {
        self.reader.abort();
        // The writer flushes what is queued, shuts the write side down and ends.
        self.out.close();
    }
}

/// `Ok(Some(json))` for an application message with payload, `Ok(None)` for a bare stream close.
fn decode_message(frame: &RawFrame) -> Result<Option<Value>, ClientError> {
    let kind = frame.header_i32(MESSAGE_TYPE);
    let flags = frame.header_i32(MESSAGE_FLAGS).unwrap_or(0);
    let payload: Option<Value> = if frame.payload.is_empty() {
        None
    } else {
        Some(
            serde_json::from_slice(&frame.payload)
                .map_err(|e| ClientError::Protocol(format!("payload is not JSON: {e}")))?,
        )
    };
    match kind {
        Some(APPLICATION_MESSAGE) => {
            if payload.is_none() && flags & FLAG_TERMINATE_STREAM != 0 {
                Ok(None)
            } else {
                Ok(Some(payload.unwrap_or(Value::Object(Default::default()))))
            }
        }
        Some(APPLICATION_ERROR) => {
            let payload = payload.unwrap_or(Value::Null);
            Err(ClientError::Remote {
                shape: frame.header_str(SERVICE_MODEL_TYPE).unwrap_or("").into(),
                message: payload
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
                payload,
            })
        }
        other => Err(ClientError::Protocol(format!(
            "unexpected message type {other:?} on a stream"
        ))),
    }
}

/// The events of one streaming operation. Dropping it closes the stream (the server releases
/// the subscription).
pub struct EventStream {
    stream: i32,
    rx: mpsc::UnboundedReceiver<RawFrame>,
    out: FrameWriter,
    routes: Routes,
    closed: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("stream", &self.stream)
            .finish()
    }
}

impl EventStream {
    /// The next event; `None` once the server closed the stream or the connection ended.
    pub async fn recv(&mut self) -> Option<Result<Value, ClientError>> {
        if self.closed {
            return None;
        }
        let frame = self.rx.recv().await?;
        self.decoded(&frame)
    }

    /// `decode_message`'s reading of `frame`; the stream counts as closed at its end or an error.
    fn decoded(&mut self, frame: &RawFrame) -> Option<Result<Value, ClientError>> {
        match decode_message(frame) {
            Ok(Some(v)) => Some(Ok(v)),
            Ok(None) => {
                self.closed = true;
                None
            }
            Err(e) => {
                self.closed = true;
                Some(Err(e))
            }
        }
    }
}

/// One message of a SubscribeToTopic stream, decoded without a JSON value tree for binary
/// messages.
#[derive(Debug, Clone, PartialEq)]
pub enum TopicMessage {
    Binary {
        topic: Option<String>,
        message: Vec<u8>,
    },
    Json {
        topic: Option<String>,
        message: Value,
    },
}

#[derive(serde::Serialize)]
struct PublishBinary<'a> {
    topic: &'a str,
    #[serde(rename = "publishMessage")]
    publish_message: PublishMessageOut,
}

#[derive(serde::Serialize)]
struct PublishMessageOut {
    #[serde(rename = "binaryMessage")]
    binary_message: BinaryMessageOut,
}

#[derive(serde::Serialize)]
struct BinaryMessageOut {
    message: String,
}

#[derive(serde::Deserialize)]
struct EventIn<'a> {
    #[serde(rename = "binaryMessage", borrow, default)]
    binary_message: Option<BinaryIn<'a>>,
    #[serde(rename = "jsonMessage", default)]
    json_message: Option<JsonIn>,
}

#[derive(serde::Deserialize)]
struct BinaryIn<'a> {
    #[serde(borrow, default)]
    message: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    context: Option<ContextIn>,
}

#[derive(serde::Deserialize)]
struct JsonIn {
    #[serde(default)]
    message: Value,
    #[serde(default)]
    context: Option<ContextIn>,
}

#[derive(serde::Deserialize)]
struct ContextIn {
    #[serde(default)]
    topic: Option<String>,
}

impl EventStream {
    /// The next message of a SubscribeToTopic stream; `None` once the stream ended.
    pub async fn recv_topic_message(&mut self) -> Option<Result<TopicMessage, ClientError>> {
        if self.closed {
            return None;
        }
        let frame = self.rx.recv().await?;
        if frame.header_i32(MESSAGE_TYPE) != Some(APPLICATION_MESSAGE) || frame.payload.is_empty() {
            // Errors and the stream's end: as `recv` reports them.
            return self.decoded(&frame).map(|decoded| {
                decoded.and_then(|_| {
                    Err(ClientError::Protocol(
                        "SubscribeToTopic event without a message".into(),
                    ))
                })
            });
        }
        let event: EventIn<'_> = match serde_json::from_slice(&frame.payload) {
            Ok(event) => event,
            Err(e) => {
                return Some(Err(ClientError::Protocol(format!(
                    "SubscribeToTopic event is not a subscription message: {e}"
                ))));
            }
        };
        Some(match (event.binary_message, event.json_message) {
            (Some(b), _) => B64
                .decode(b.message.as_deref().unwrap_or("").as_bytes())
                .map(|message| TopicMessage::Binary {
                    topic: b.context.and_then(|c| c.topic),
                    message,
                })
                .map_err(|e| ClientError::Protocol(format!("binaryMessage is not base64: {e}"))),
            (None, Some(j)) => Ok(TopicMessage::Json {
                topic: j.context.and_then(|c| c.topic),
                message: j.message,
            }),
            (None, None) => Err(ClientError::Protocol(
                "SubscribeToTopic event with neither binaryMessage nor jsonMessage".into(),
            )),
        })
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.stream);
        if !self.closed
            && let Ok(bytes) = codec::encode(&bare(
                APPLICATION_MESSAGE,
                FLAG_TERMINATE_STREAM,
                self.stream,
            ))
        {
            let _ = self.out.try_send(bytes);
        }
    }
}
