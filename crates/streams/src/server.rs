//! The TCP server: accept loop with bounded connections, the connect handshake, and one task per
//! connection that decodes frames and applies operations to the store. Long-polling reads run in
//! their own tasks so they never block other requests on the same connection.

use crate::codec::{self, DecodeError, ReadOptions, Request, Response, Status, op};
use crate::file_access::{FileAccess, FileAccessResolver};
use crate::store::{Store, StoreError, Stream};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

/// Decides whether a Connect `authToken` is valid (the core wires this to its IPC tokens).
pub type TokenValidator = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// At most this many bytes of payload in one ReadMessages response: well under the 2^30 frame
/// limit, and a bound on the memory one read may take.
const READ_RESPONSE_BYTE_CAP: u64 = 256 * 1024 * 1024;
const MAX_CONNECTIONS: usize = 1024;
/// Responses queued per connection before the connection stops reading requests.
const OUTBOUND_QUEUE: usize = 64;
/// A client has this long from its TCP connect to a complete Connect request; until then it
/// holds one of the [`MAX_CONNECTIONS`] slots without having proven anything.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// The largest frame read before authentication: a Connect request is a few hundred bytes
/// (request id, version, token), so the 2^30 limit of later frames need not be offered to
/// anyone who can reach the port.
const MAX_CONNECT_FRAME: usize = 64 * 1024;
/// Long-polling reads one connection may have waiting at once; one more is refused at once
/// with InvalidRequest rather than parked (each holds a task and a subscription).
const MAX_PENDING_READS: usize = 128;
/// Durable appends one connection may have waiting for their fsync; past it the connection
/// stops reading requests until the disk catches up.
const MAX_PENDING_DURABLE: usize = 4096;

pub(crate) struct Context {
    pub store: Arc<Store>,
    pub validator: Option<TokenValidator>,
    /// Whose privileges the S3 export tasks a connection appends are read with.
    pub file_access: Option<FileAccessResolver>,
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.changed() => break,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let ctx = ctx.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = serve_connection(sock, ctx) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "stream manager connection closed");
                    }
                }
                _ = shutdown.changed() => {}
            }
            drop(permit);
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
}

async fn read_frame(
    sock: &mut (impl AsyncReadExt + Unpin),
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<codec::Frame>, ConnError> {
    loop {
        if buf.len() >= 4 {
            let len = i32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
            if len > 0 && len as usize > max_len {
                return Err(ConnError::Protocol(format!(
                    "frame of {len} bytes exceeds the {max_len} bytes allowed here"
                )));
            }
        }
        if let Some(f) = codec::decode_frame(buf).map_err(|e| ConnError::Protocol(e.to_string()))? {
            return Ok(Some(f));
        }
        if sock.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ConnError::Protocol("connection closed mid-frame".into()))
            };
        }
    }
}

async fn serve_connection(mut sock: TcpStream, ctx: Arc<Context>) -> Result<(), ConnError> {
    sock.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let hello = async {
        let version = sock.read_u8().await?;
        let frame = read_frame(&mut sock, &mut buf, MAX_CONNECT_FRAME).await?;
        Ok::<_, ConnError>((version, frame))
    };
    let (version, frame) = match tokio::time::timeout(CONNECT_DEADLINE, hello).await {
        Ok(r) => r?,
        Err(_) => {
            tracing::warn!(
                deadline_s = CONNECT_DEADLINE.as_secs(),
                "connection closed: no complete Connect request in time"
            );
            return Err(ConnError::Protocol("no Connect request in time".into()));
        }
    };
    let Some(frame) = frame else {
        return Ok(());
    };
    if frame.op != op::CONNECT {
        return Err(ConnError::Protocol(format!(
            "expected Connect, got operation {}",
            frame.op
        )));
    }
    let request = codec::decode_request(frame.op, &frame.payload)
        .map_err(|e| ConnError::Protocol(e.message))?;
    let Request::Connect {
        request_id,
        protocol_version,
        auth_token,
    } = request
    else {
        return Err(ConnError::Protocol("expected Connect".into()));
    };
    let refusal = if version != codec::CONNECT_VERSION {
        Some((
            Status::UnsupportedConnectVersion,
            format!("connect version {version} is not supported; use 1"),
        ))
    } else if let Some(reason) = check_protocol_version(protocol_version.as_deref()) {
        Some(reason)
    } else if let Some(validate) = &ctx.validator {
        match auth_token.as_deref() {
            Some(t) if validate(t) => None,
            Some(_) => Some((
                Status::Unauthorized,
                "the authToken is not valid".to_string(),
            )),
            None => Some((
                Status::Unauthorized,
                "an authToken is required (AWS_CONTAINER_AUTHORIZATION_TOKEN)".to_string(),
            )),
        }
    } else {
        None
    };
    let (status, error) = match &refusal {
        Some((s, e)) => (*s, Some(e.clone())),
        None => (Status::Success, None),
    };
    let mut hello = vec![codec::CONNECT_VERSION];
    hello.extend(
        codec::connect_response_fields(Response::new(&request_id, status, error))
            .field(
                "clientIdentifier",
                ciborium::value::Value::Text(request_id.clone()),
            )
            .encode(op::CONNECT_RESPONSE),
    );
    sock.write_all(&hello).await?;
    if let Some((status, e)) = refusal {
        tracing::warn!(client = %request_id, ?status, reason = %e, "connection refused");
        let _ = sock.shutdown().await;
        return Err(ConnError::Protocol(format!("connect refused: {e}")));
    }
    tracing::debug!(client = %request_id, "client connected");
    // Only a token the validator checked names a component: without authentication any local
    // process could present another component's token.
    let proven_token = auth_token.as_deref().filter(|_| ctx.validator.is_some());
    let appender: Option<Arc<FileAccess>> =
        ctx.file_access.as_ref().map(|r| Arc::new(r(proven_token)));

    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(OUTBOUND_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut conn = Connection {
        pending: JoinSet::new(),
        durable: DurableAnswers::default(),
        reads: Arc::new(Semaphore::new(MAX_PENDING_READS)),
        appender,
    };
    let result = async {
        while let Some(frame) = read_frame(&mut rd, &mut buf, codec::MAX_FRAME_LEN).await? {
            while conn.pending.try_join_next().is_some() {}
            dispatch(frame, &ctx, &tx, &mut conn).await?;
        }
        Ok(())
    }
    .await;
    // The client is gone or broke the protocol: nobody is left to answer.
    conn.pending.abort_all();
    drop(tx);
    let _ = writer.await;
    tracing::debug!(client = %request_id, "client disconnected");
    result
}

fn check_protocol_version(v: Option<&str>) -> Option<(Status, String)> {
    let Some(v) = v else {
        return Some((
            Status::InvalidProtocolVersion,
            "protocolVersion is required".into(),
        ));
    };
    let parts: Vec<_> = v.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
        return Some((
            Status::InvalidProtocolVersion,
            format!("protocolVersion {v:?} is not MAJOR.MINOR.PATCH"),
        ));
    }
    if parts[0] != "1" {
        return Some((
            Status::UnsupportedProtocolVersion,
            format!("protocolVersion {v} is not supported; this server speaks 1.1.0 and 1.0.0"),
        ));
    }
    None
}

fn response_op(request_op: u8) -> u8 {
    match request_op {
        op::CREATE => op::CREATE_RESPONSE,
        op::DELETE => op::DELETE_RESPONSE,
        op::APPEND => op::APPEND_RESPONSE,
        op::READ => op::READ_RESPONSE,
        op::LIST => op::LIST_RESPONSE,
        op::DESCRIBE => op::DESCRIBE_RESPONSE,
        op::UPDATE => op::UPDATE_RESPONSE,
        _ => op::UNKNOWN_OPERATION_ERROR,
    }
}

fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::NotFound(_) => Status::ResourceNotFound,
        StoreError::AlreadyExists(_)
        | StoreError::InvalidDefinition(_)
        | StoreError::InvalidRequest(_)
        | StoreError::StreamFull { .. } => Status::InvalidRequest,
        StoreError::RecordTooLarge { .. } => Status::RequestPayloadTooLarge,
        StoreError::UpdateNotAllowed { .. } => Status::UpdateNotAllowed,
        StoreError::Corrupt { .. } => Status::MessageStoreReadError,
        StoreError::Io { .. } | StoreError::Internal(_) => Status::UnknownFailure,
    }
}

fn failure(request_op: u8, request_id: &str, status: Status, message: String) -> Vec<u8> {
    Response::new(request_id, status, Some(message)).encode(response_op(request_op))
}

async fn send(tx: &mpsc::Sender<Vec<u8>>, frame: Vec<u8>) -> Result<(), ConnError> {
    tx.send(frame)
        .await
        .map_err(|_| ConnError::Protocol("connection writer stopped".into()))
}

/// What one authenticated connection has in flight.
struct Connection {
    /// Requests answered off the connection's task (long polls, durable appends).
    pending: JoinSet<()>,
    durable: DurableAnswers,
    /// Slots for long-polling reads ([`MAX_PENDING_READS`]).
    reads: Arc<Semaphore>,
    /// Whose privileges the S3 export tasks it appends are read with.
    appender: Option<Arc<FileAccess>>,
}

async fn dispatch(
    frame: codec::Frame,
    ctx: &Arc<Context>,
    tx: &mpsc::Sender<Vec<u8>>,
    conn: &mut Connection,
) -> Result<(), ConnError> {
    let fop = frame.op;
    let known = matches!(
        fop,
        op::CREATE | op::DELETE | op::APPEND | op::READ | op::LIST | op::DESCRIBE | op::UPDATE
    );
    if !known {
        // Unsupported operation: answer with UnknownOperationError when we can tell whom to answer.
        let Some(id) = codec::peek_request_id(&frame.payload) else {
            return Err(ConnError::Protocol(format!(
                "operation {fop} without a requestId"
            )));
        };
        let msg = format!("operation {fop} is not supported by this server");
        return send(
            tx,
            Response::new(&id, Status::UnknownOperation, Some(msg))
                .encode(op::UNKNOWN_OPERATION_ERROR),
        )
        .await;
    }
    let request = match codec::decode_request(fop, &frame.payload) {
        Ok(r) => r,
        Err(DecodeError {
            request_id: Some(id),
            message,
        }) => return send(tx, failure(fop, &id, Status::InvalidRequest, message)).await,
        Err(DecodeError {
            request_id: None,
            message,
        }) => return Err(ConnError::Protocol(message)),
    };
    let store = &ctx.store;
    let reply = match request {
        Request::Connect { .. } => unreachable!("Connect is not in the known set"),
        Request::Create {
            request_id,
            definition,
        } => match blocking(store, move |s| s.create(definition).map(|s| s.info())).await {
            Ok(info) => {
                let d = &info.definition;
                tracing::info!(
                    stream = %d.name,
                    max_size = d.max_size,
                    persistence = ?d.persistence,
                    flush_on_write = d.flush_on_write,
                    exports = d.exports.len(),
                    "stream created"
                );
                Response::new(&request_id, Status::Success, None).encode(op::CREATE_RESPONSE)
            }
            Err(e) => failure(fop, &request_id, store_status(&e), e.to_string()),
        },
        Request::Update {
            request_id,
            definition,
        } => match blocking(store, move |s| {
            let name = definition.name.clone();
            s.update(definition).map(|()| name)
        })
        .await
        {
            Ok(name) => {
                tracing::info!(stream = %name, "stream updated");
                Response::new(&request_id, Status::Success, None).encode(op::UPDATE_RESPONSE)
            }
            Err(e) => {
                let status = match &e {
                    StoreError::Io { .. } => Status::UpdateFailed,
                    other => store_status(other),
                };
                failure(fop, &request_id, status, e.to_string())
            }
        },
        Request::Delete { request_id, name } => {
            match blocking(store, move |s| s.delete(&name).map(|()| name)).await {
                Ok(name) => {
                    tracing::info!(stream = %name, "stream deleted");
                    Response::new(&request_id, Status::Success, None).encode(op::DELETE_RESPONSE)
                }
                Err(e) => failure(fop, &request_id, store_status(&e), e.to_string()),
            }
        }
        Request::Describe { request_id, name } => match store.get(&name) {
            Ok(s) => Response::new(&request_id, Status::Success, None)
                .field("messageStreamInfo", codec::stream_info_value(&s.info()))
                .encode(op::DESCRIBE_RESPONSE),
            Err(e) => failure(fop, &request_id, store_status(&e), e.to_string()),
        },
        Request::List { request_id } => Response::new(&request_id, Status::Success, None)
            .field("streams", codec::string_list(store.list()))
            .encode(op::LIST_RESPONSE),
        Request::Append {
            request_id,
            name,
            payload,
        } => {
            let appended = store.get(&name).and_then(|s| {
                s.append_as(&payload, conn.appender.as_ref())
                    .map(|a| (s, a))
            });
            match appended {
                Ok((stream, a)) if a.needs_sync => {
                    // The record has its place in the log (so appends keep their order); the
                    // answer waits for a group commit off the connection's task.
                    conn.durable
                        .queue(
                            DurableAppend {
                                stream,
                                seq: a.sequence_number,
                                request_id,
                            },
                            &mut conn.pending,
                            tx,
                        )
                        .await;
                    return Ok(());
                }
                Ok((_, a)) => append_ok(&request_id, a.sequence_number),
                Err(e) => failure(fop, &request_id, store_status(&e), e.to_string()),
            }
        }
        Request::Read {
            request_id,
            stream_name,
            options,
        } => {
            if options.timeout_millis == 0 {
                read_messages(store, &request_id, &stream_name, &options).await
            } else if let Ok(slot) = conn.reads.clone().try_acquire_owned() {
                let tx = tx.clone();
                let store = store.clone();
                conn.pending.spawn(async move {
                    let frame = read_messages(&store, &request_id, &stream_name, &options).await;
                    drop(slot);
                    let _ = tx.send(frame).await;
                });
                return Ok(());
            } else {
                failure(
                    fop,
                    &request_id,
                    Status::InvalidRequest,
                    format!(
                        "this connection already has {MAX_PENDING_READS} reads waiting for \
                         messages; wait for one to be answered, or read with \
                         readTimeoutMillis 0"
                    ),
                )
            }
        }
    };
    send(tx, reply).await
}

/// Runs a store operation that creates, renames or fsyncs files off the async workers.
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::InvalidRequest(format!(
                "store task failed: {e}"
            )))
        })
}

/// A flushOnWrite append whose answer waits until its record is on disk.
struct DurableAppend {
    stream: Arc<Stream>,
    seq: u64,
    request_id: String,
}

/// The durable appends of one connection, answered in order by one blocking thread at a time,
/// not one thread per append: a pipelining client has dozens pending, and each thread woken
/// for a single record costs more than the record.
#[derive(Default)]
struct DurableAnswers(Option<mpsc::Sender<DurableAppend>>);

impl DurableAnswers {
    /// Waits while [`MAX_PENDING_DURABLE`] appends are already waiting.
    async fn queue(
        &mut self,
        a: DurableAppend,
        pending: &mut JoinSet<()>,
        tx: &mpsc::Sender<Vec<u8>>,
    ) {
        let queue = self.0.get_or_insert_with(|| {
            let (queue, waiting) = mpsc::channel(MAX_PENDING_DURABLE);
            pending.spawn(answer_durable(waiting, tx.clone()));
            queue
        });
        // Fails only once the answering task is gone, which ends the connection anyway.
        let _ = queue.send(a).await;
    }
}

/// Takes whatever durable appends are queued, waits for each record's own verdict in order
/// on one blocking thread (after the first wait the others are usually covered by the same
/// fsync and return at once), then sends the answers from this task, so a client that stops
/// reading holds a task, not a thread; then the next batch.
async fn answer_durable(mut waiting: mpsc::Receiver<DurableAppend>, tx: mpsc::Sender<Vec<u8>>) {
    let mut batch = Vec::new();
    while waiting.recv_many(&mut batch, 4096).await > 0 {
        let appends = std::mem::take(&mut batch);
        let answered = tokio::task::spawn_blocking(move || {
            appends
                .into_iter()
                .map(|a| {
                    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        a.stream.wait_durable(a.seq)
                    }));
                    match verdict {
                        Ok(Ok(())) => append_ok(&a.request_id, a.seq),
                        Ok(Err(e)) => failure(
                            op::APPEND,
                            &a.request_id,
                            Status::UnknownFailure,
                            e.to_string(),
                        ),
                        Err(_) => failure(
                            op::APPEND,
                            &a.request_id,
                            Status::UnknownFailure,
                            "waiting for the record to reach the disk failed".into(),
                        ),
                    }
                })
                .collect::<Vec<_>>()
        })
        .await;
        // The closure catches every panic, so it always returns its answers.
        let Ok(frames) = answered else { return };
        for frame in frames {
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    }
}

fn append_ok(request_id: &str, seq: u64) -> Vec<u8> {
    Response::new(request_id, Status::Success, None)
        .field(
            "sequenceNumber",
            ciborium::value::Value::Integer(seq.into()),
        )
        .encode(op::APPEND_RESPONSE)
}

/// ReadMessages: at least `min` messages from `max(desired, oldest)`, waiting for appends up to
/// the read timeout; answered exactly once, no later than the timeout.
async fn read_messages(
    store: &Store,
    request_id: &str,
    stream_name: &str,
    o: &ReadOptions,
) -> Vec<u8> {
    let fail = |status, msg: String| failure(op::READ, request_id, status, msg);
    if o.min_count < 1
        || o.max_count < 1
        || o.min_count > i32::MAX as u64
        || o.max_count > i32::MAX as u64
    {
        return fail(
            Status::InvalidRequest,
            "readMessagesOptions: minMessageCount and maxMessageCount must be between 1 and 2147483647".into(),
        );
    }
    if o.min_count > o.max_count {
        return fail(
            Status::InvalidRequest,
            "readMessagesOptions.minMessageCount must be less than or equal to maxMessageCount"
                .into(),
        );
    }
    let stream = match store.get(stream_name) {
        Ok(s) => s,
        Err(e) => return fail(store_status(&e), e.to_string()),
    };
    // Timeouts up to 2^63 ms are valid on the wire; past a year they mean "wait" anyway.
    let wait = Duration::from_millis(o.timeout_millis.min(365 * 24 * 3600 * 1000));
    let deadline = tokio::time::Instant::now() + wait;
    let mut appended = stream.subscribe();
    loop {
        appended.borrow_and_update();
        let got = match stream.read(
            o.desired_start,
            o.max_count as usize,
            READ_RESPONSE_BYTE_CAP,
        ) {
            Ok(m) => m,
            Err(StoreError::Io { op, path, source }) => {
                return fail(
                    Status::MessageStoreReadError,
                    format!("{op} {}: {source}", path.display()),
                );
            }
            Err(e) => return fail(store_status(&e), e.to_string()),
        };
        let enough = got.len() as u64 >= o.min_count;
        let capped =
            got.iter().map(|m| m.payload.len() as u64).sum::<u64>() >= READ_RESPONSE_BYTE_CAP / 2;
        if enough || (capped && !got.is_empty()) {
            if got.len() == 1 && got[0].payload.len() as u64 >= READ_RESPONSE_BYTE_CAP {
                return fail(
                    Status::ResponsePayloadTooLarge,
                    format!(
                        "message {} is too large for one response",
                        got[0].sequence_number
                    ),
                );
            }
            return Response::new(request_id, Status::Success, None)
                .field("messages", codec::messages_value(stream_name, got))
                .encode(op::READ_RESPONSE);
        }
        let not_enough = || {
            fail(
                Status::NotEnoughMessages,
                format!(
                    "stream {stream_name:?} has {} of the {} messages asked for from sequence number {}",
                    got.len(),
                    o.min_count,
                    o.desired_start
                ),
            )
        };
        if o.timeout_millis == 0 {
            return not_enough();
        }
        match tokio::time::timeout_at(deadline, appended.changed()).await {
            Ok(Ok(())) => {
                if store.get(stream_name).is_err() {
                    return fail(
                        Status::ResourceNotFound,
                        format!("stream {stream_name:?} was deleted"),
                    );
                }
            }
            Ok(Err(_)) => {
                return fail(
                    Status::ResourceNotFound,
                    format!("stream {stream_name:?} was deleted"),
                );
            }
            Err(_) => return not_enough(),
        }
    }
}

/// Binds 127.0.0.1:port and returns the listener and its actual address.
pub(crate) async fn bind(port: u16) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
