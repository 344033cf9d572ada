//! One client connection: CONNECT handshake, then packets in, deliveries out, until it ends.
//!
//! Architecture invariant: the task owns its socket and its session's in-flight state while
//! connected, and hands the session back to the core (with anything still queued) when it ends.
//! Architecture invariant: a publisher whose message filled a subscriber's queue is not read
//! from until that queue drains or its owner is disconnected as a slow consumer; meanwhile its
//! own deliveries keep flowing. An idle connection holds no read or write buffer and waits on
//! its socket and its outbox's waker only.
//! Architecture invariant: every complete packet read is handled before the socket is read again
//! (packets pipelined behind CONNECT included), and bytes read together with the end of stream
//! are handled before the connection ends.

use crate::auth::{Authorizer, ClientContext};
use crate::codec::{
    self, Ack, CodecError, ConnAck, Connect, Disconnect, Packet, Properties, QoS, UnsubAck,
    Version, Will,
};
use crate::state::{
    AttachRefused, Attached, Congested, Core, Message, Outbox, QUOTA_EXCEEDED,
    SERVER_SHUTTING_DOWN, SessionData,
};
use bytes::{Buf, BytesMut};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

mod inbound;
mod outbound;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read while waiting for a client: idle connections keep only this, inline.
const PEEK: usize = 64;
/// Room reserved for reads once a client is sending.
const READ_CHUNK: usize = 16 * 1024;
/// Deliveries taken from the outbox per turn, so one busy session cannot keep its task from
/// reading its socket or grow its write buffer without bound.
const PULL_BATCH: usize = 256;
const PULL_BYTES: usize = 256 * 1024;

/// How a connection ended, which decides the will.
enum End {
    /// DISCONNECT 0x00 (or v5 0x04 = with will).
    Normal { send_will: bool },
    /// Network error, keep-alive timeout, protocol violation, takeover, slow consumer.
    Abnormal,
    /// Broker shutting down.
    Shutdown,
}

impl End {
    /// How a connection told to go with `reason` ends.
    fn kicked(reason: u8) -> End {
        if reason == SERVER_SHUTTING_DOWN {
            End::Shutdown
        } else {
            End::Abnormal
        }
    }
}

/// What woke an idle connection.
enum Wake {
    Read(std::io::Result<usize>),
    Drained,
    Signal,
}

pub(crate) struct Conn<S> {
    core: Arc<Core>,
    authorizer: Arc<dyn Authorizer>,
    ctx: ClientContext,
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: Version,
    data: SessionData,
    /// The client's Receive Maximum (outbound in-flight window).
    client_receive_max: usize,
    /// The client's Maximum Packet Size.
    client_max_packet: usize,
    /// Inbound topic aliases; allocated on first use (most clients use none).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes instead of 48 in every connection's task; most clients use no aliases"
    )]
    aliases: Option<Box<HashMap<u16, String>>>,
    session_expiry: u32,
    connect_expiry_was_zero: bool,
    /// Deliveries routed to this session; set once the session is attached.
    outbox: Arc<Outbox>,
    /// Subscribers' queues this client's publications filled; its socket is not read meanwhile.
    held_back: Vec<Congested>,
    /// Set by the handshake: the session's attachment, for `Core::detach`.
    conn_id: u64,
    /// The will, the only part of the CONNECT kept past the handshake.
    will: Option<Box<Will>>,
    /// Seconds; 0 without keep-alive.
    keep_alive: u16,
    /// The connection's share of the listener's bound on connections.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Serves one client until it goes. Built eagerly, to be spawned as is: the connection state is
/// the future's only capture, so it is stored once (an `async fn` keeps its arguments apart from
/// the locals they are moved into, which would store the socket and the context twice in every
/// connection's task). `permit` is held for as long as the connection lasts.
pub(crate) fn serve<S>(
    core: Arc<Core>,
    authorizer: Arc<dyn Authorizer>,
    stream: S,
    ctx: ClientContext,
    permit: Option<OwnedSemaphorePermit>,
) -> impl Future<Output = ()>
where
    S: Transport,
{
    let mut conn = Conn {
        core,
        authorizer,
        ctx,
        stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        version: Version::V311,
        data: SessionData::default(),
        client_receive_max: 0,
        client_max_packet: 0,
        aliases: None,
        session_expiry: 0,
        connect_expiry_was_zero: false,
        outbox: Arc::new(Outbox::default()),
        held_back: Vec::new(),
        conn_id: 0,
        will: None,
        keep_alive: 0,
        _permit: permit,
    };
    async move {
        if conn.serve().await == Next::Park {
            S::park(conn);
        }
    }
}

/// Goes on serving a connection taken out of the idle pool.
pub(crate) fn resume(conn: Conn<TcpStream>) -> impl Future<Output = ()> + Send {
    let mut conn = conn;
    async move {
        conn.outbox.lock().parked = false;
        if conn.session().await == Next::Park {
            TcpStream::park(conn);
        }
    }
}

/// What a connection's task does once its loop returns.
#[derive(PartialEq, Eq)]
enum Next {
    /// The connection ended and its session was handed back.
    Done,
    /// Nothing to do: hand the connection to the idle pool and end the task.
    Park,
}

/// A stream a connection runs on; says whether the connection may be parked in the idle pool.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Only plain TCP is parked: a TLS session's state lives in its stream, and in-process
    /// connections are few.
    const PARKABLE: bool = false;

    /// Hands an idle connection to the idle pool. Called only where `PARKABLE`.
    fn park(conn: Conn<Self>) {
        drop(conn);
        unreachable!("only parkable transports are parked");
    }

    /// Called after each read from the client.
    fn read_done(&self) {}
}

/// Acknowledges what the client sent at once instead of after the kernel's delayed-ACK timer
/// (40 ms on Linux). A client that keeps Nagle's algorithm on (the AWS CRT's sockets do) holds
/// its next small packet until its last one is acknowledged; when the broker has nothing to send
/// back (the client's PUBACK for a delivery), only this ACK lets the next PUBLISH go. Linux
/// clears the flag by itself, so it is set again after every read.
fn quick_ack(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::net::sockopt::set_tcp_quickack(tcp, true);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = tcp;
}

impl Transport for TcpStream {
    const PARKABLE: bool = true;

    fn park(conn: Conn<Self>) {
        crate::idle::park(conn);
    }

    fn read_done(&self) {
        quick_ack(self);
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn read_done(&self) {
        quick_ack(self.get_ref().0);
    }
}
impl Transport for tokio::io::DuplexStream {}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Closed,
}

async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Box<Connect>, ConnectError> {
    loop {
        if let Some((packet, used)) = codec::decode(rbuf, None, max)? {
            let _ = rbuf.split_to(used);
            match packet {
                Packet::Connect(c) => return Ok(Box::new(c)),
                _ => unreachable!("decode accepts only CONNECT before the version is known"),
            }
        }
        if stream.read_buf(rbuf).await? == 0 {
            return Err(ConnectError::Closed);
        }
    }
}

impl<S> Conn<S> {
    /// The same connection on another stream, and the stream it had.
    pub(crate) fn with_stream<T>(self, stream: T) -> (S, Conn<T>) {
        let Conn {
            core,
            authorizer,
            ctx,
            stream: old,
            rbuf,
            wbuf,
            version,
            data,
            client_receive_max,
            client_max_packet,
            aliases,
            session_expiry,
            connect_expiry_was_zero,
            outbox,
            held_back,
            conn_id,
            will,
            keep_alive,
            _permit,
        } = self;
        let conn = Conn {
            core,
            authorizer,
            ctx,
            stream,
            rbuf,
            wbuf,
            version,
            data,
            client_receive_max,
            client_max_packet,
            aliases,
            session_expiry,
            connect_expiry_was_zero,
            outbox,
            held_back,
            conn_id,
            will,
            keep_alive,
            _permit,
        };
        (old, conn)
    }

    pub(crate) fn stream(&self) -> &S {
        &self.stream
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub(crate) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.ctx.client_id
    }

    /// Hands the session back to the core: publishes or schedules the will as `end` says and
    /// keeps or ends the session. The socket is left to the caller.
    fn finish(&mut self, end: End) {
        let will = self.will.take();
        let will = will.as_deref().and_then(|w| {
            let send = match end {
                End::Normal { send_will } => send_will,
                End::Abnormal => true,
                End::Shutdown => false,
            };
            send.then(|| {
                let now = Instant::now();
                let message = Arc::new(Message {
                    topic: w.topic.clone(),
                    payload: w.payload.clone(),
                    qos: w.qos,
                    retain: w.retain,
                    properties: forwarded(&w.properties),
                    expires_at: w
                        .properties
                        .message_expiry_interval
                        .map(|s| now + Duration::from_secs(u64::from(s))),
                    publisher: self.ctx.client_id.clone(),
                });
                (message, w.properties.will_delay_interval.unwrap_or(0))
            })
        });
        let will = will.filter(|(m, _)| {
            self.authorizer.publish(&self.ctx, &m.topic)
                && (!m.retain || self.authorizer.retain(&self.ctx, &m.topic))
        });
        let data = std::mem::take(&mut self.data);
        self.held_back.clear();
        self.core.detach(
            &self.ctx.client_id,
            self.conn_id,
            data,
            &self.outbox,
            will,
            self.session_expiry,
        );
        tracing::debug!(client_id = self.ctx.client_id, "disconnected");
    }

    /// Ends a parked connection that cannot be taken back into service (its socket could not be
    /// registered again): abnormally, so its will goes out.
    pub(crate) fn abandon(mut self) {
        self.finish(End::Abnormal);
    }

    /// Ends a parked connection at shutdown without waking it.
    pub(crate) fn shut_down(mut self) {
        self.finish(End::Shutdown);
    }
}

impl<S: Transport> Conn<S> {
    fn v5(&self) -> bool {
        self.version == Version::V5
    }

    async fn serve(&mut self) -> Next {
        let max_packet = self.core.config.max_packet_size as usize;
        self.rbuf.reserve(4096);
        // Boxed, like every rarely taken wait below: a task is as large as its largest state,
        // and an idle connection's task should hold little more than its connection state.
        let connect = match Box::pin(tokio::time::timeout(
            CONNECT_TIMEOUT,
            read_connect(&mut self.stream, &mut self.rbuf, max_packet),
        ))
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(ConnectError::Codec(CodecError::UnsupportedVersion { name, level }))) => {
                tracing::debug!(peer = %self.ctx.peer, name, level, "unsupported protocol version");
                let ack = ConnAck {
                    session_present: false,
                    reason_code: 0x01,
                    properties: Properties::default(),
                };
                codec::encode(&Packet::ConnAck(ack), Version::V311, &mut self.wbuf);
                let _ = self.stream.write_all(&self.wbuf).await;
                return Next::Done;
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.ctx.peer, "connection closed before CONNECT: {e}");
                return Next::Done;
            }
            Err(_) => {
                tracing::debug!(peer = %self.ctx.peer, "no CONNECT within {CONNECT_TIMEOUT:?}");
                return Next::Done;
            }
        };
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        self.version = connect.version;
        // The CONNECT (two property sets) comes boxed: every idle connection would otherwise
        // carry it inline in its task.
        if !self.handshake(connect).await {
            return Next::Done;
        }
        self.session().await
    }

    fn queue(&mut self, packet: &Packet) {
        codec::encode(packet, self.version, &mut self.wbuf);
    }

    /// Writes the whole write buffer, unless the connection is told to go meanwhile.
    async fn flush(&mut self) -> Result<(), Option<u8>> {
        while !self.wbuf.is_empty() {
            let (stream, outbox, wbuf) = (&mut self.stream, &self.outbox, &self.wbuf);
            let written = std::future::poll_fn(|cx| {
                // The main loop pulls deliveries on every turn, so a signal here is only a kick check.
                if outbox.poll_signal(cx).is_ready()
                    && let Some(k) = outbox.lock().kick
                {
                    return Poll::Ready(Err(Some(k)));
                }
                Pin::new(&mut *stream)
                    .poll_write(cx, wbuf)
                    .map_err(|_| None)
            })
            .await?;
            if written == 0 {
                return Err(None);
            }
            self.wbuf.advance(written);
        }
        self.wbuf = BytesMut::new();
        Ok(())
    }

    /// Reads what the client sent: first into the inline peek buffer (an idle connection holds
    /// no other), then, without waiting, as much more as is already there.
    /// Returns `false` at end of stream or on a socket error; what was read before stays in the
    /// read buffer to be handled (a client may send its last packets and close at once).
    fn take_read(&mut self, peek: &[u8]) -> bool {
        if peek.is_empty() {
            return false;
        }
        self.stream.read_done();
        self.rbuf.reserve(READ_CHUNK);
        self.rbuf.extend_from_slice(peek);
        if peek.len() < PEEK {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        while self.rbuf.len() < 4 * READ_CHUNK {
            self.rbuf.reserve(READ_CHUNK);
            let read = std::pin::pin!(self.stream.read_buf(&mut self.rbuf)).poll(&mut cx);
            match read {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return false,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        true
    }

    /// Stops holding this client back from queues that drained or whose owners were told to go.
    fn release_held_back(&mut self) {
        self.held_back.retain(|c| c.outbox.holds_back());
    }

    /// Moves deliveries into the write buffer as far as the in-flight window allows: first the
    /// local backlog (retained messages on subscribe), then the outbox. Returns whether the
    /// outbox may have more right away.
    fn pull(&mut self) -> bool {
        self.fill_window();
        if !self.data.pending.is_empty() {
            return false;
        }
        let mut room = self
            .client_receive_max
            .saturating_sub(self.data.inflight.len());
        let (batch, more) = {
            let mut inner = self.outbox.lock();
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut more = false;
            while let Some(front) = inner.queue.front() {
                if front.qos != QoS::AtMostOnce {
                    if room == 0 {
                        break;
                    }
                    room -= 1;
                }
                if batch.len() == PULL_BATCH || bytes >= PULL_BYTES {
                    more = true;
                    break;
                }
                bytes += front.message.payload.len() + front.message.topic.len();
                batch.extend(inner.queue.pop_front());
            }
            if !batch.is_empty() {
                Outbox::took(&mut inner, &self.outbox);
            }
            (batch, more)
        };
        for d in batch {
            self.deliver(d);
        }
        more
    }

    /// Queues the CONNACK accepting this client. Not inlined into `run`: its property set would
    /// otherwise take room in every connection's task.
    #[inline(never)]
    fn send_connack(
        &mut self,
        session_present: bool,
        assigned: Option<String>,
        session_expiry: Option<u32>,
    ) {
        let mut properties = Properties::default();
        if self.v5() {
            let cfg = &self.core.config;
            properties.receive_maximum = Some(cfg.receive_maximum);
            properties.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            // Some clients (paho) reject values above the largest remaining length.
            properties.maximum_packet_size =
                Some(cfg.max_packet_size.min(codec::MAX_REMAINING_LENGTH as u32));
            properties.retain_available = Some(1);
            properties.wildcard_subscription_available = Some(1);
            properties.subscription_identifier_available = Some(1);
            properties.shared_subscription_available = Some(1);
            properties.assigned_client_identifier = assigned;
            // Set when the broker shortened the expiry the client asked for.
            properties.session_expiry_interval = session_expiry;
        }
        let ack = ConnAck {
            session_present,
            reason_code: 0,
            properties,
        };
        self.queue(&Packet::ConnAck(ack));
    }

    async fn refuse(&mut self, v3_code: u8, v5_code: u8) {
        let reason_code = if self.v5() { v5_code } else { v3_code };
        let ack = ConnAck {
            session_present: false,
            reason_code,
            properties: Properties::default(),
        };
        self.queue(&Packet::ConnAck(ack));
        let buf = self.wbuf.split();
        let _ = self.stream.write_all(&buf).await;
    }

    /// Answers the CONNECT; returns whether the client was accepted (its session attached).
    async fn handshake(&mut self, mut connect: Box<Connect>) -> bool {
        let v5 = self.v5();
        let mut assigned = None;
        let client_id = if connect.client_id.is_empty() {
            if !v5 && !connect.clean_start {
                self.refuse(0x02, 0x85).await;
                return false;
            }
            let id = format!("lichen-{}", uuid::Uuid::new_v4().simple());
            assigned = Some(id.clone());
            id
        } else {
            connect.client_id.clone()
        };
        self.ctx.client_id = client_id.clone();
        self.ctx.username = connect.username.clone();
        if connect.properties.authentication_method.is_some() {
            // No enhanced authentication methods are offered.
            self.refuse(0x05, 0x8C).await;
            return false;
        }
        if !self.ctx.anonymous_allowed && self.ctx.certificate_chain.is_empty() {
            tracing::info!(client_id, peer = %self.ctx.peer, "refused: no client certificate on a non-loopback listener");
            self.refuse(0x05, 0x87).await;
            return false;
        }
        if !self.authorizer.client_id_acceptable(&self.ctx) {
            tracing::info!(client_id, peer = %self.ctx.peer, "refused: client identifier not acceptable");
            self.refuse(0x02, 0x85).await;
            return false;
        }
        if !self.authorizer.connect(&self.ctx) {
            self.refuse(0x05, 0x87).await;
            return false;
        }
        let max_expiry = self.core.config.max_session_expiry_secs;
        let asked = connect.properties.session_expiry_interval.unwrap_or(0);
        self.session_expiry = if v5 {
            asked.min(max_expiry)
        } else if connect.clean_start {
            0
        } else {
            // MQTT 3.1.1 has no expiry of its own: persistent sessions get the broker's bound.
            max_expiry
        };
        let shortened = (v5 && asked > max_expiry).then_some(max_expiry);
        self.connect_expiry_was_zero = self.session_expiry == 0;
        self.client_receive_max = if v5 {
            usize::from(connect.properties.receive_maximum.unwrap_or(u16::MAX))
        } else {
            usize::from(self.core.config.max_inflight_v311)
        };
        self.client_max_packet = connect
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize);

        // Take the session over from an earlier connection with the same identifier.
        let mut attached = None;
        for _ in 0..500 {
            match self.core.attach(&client_id, connect.clean_start) {
                Ok(a) => {
                    attached = Some(a);
                    break;
                }
                Err(AttachRefused::Quota) => {
                    self.refuse(0x03, QUOTA_EXCEEDED).await;
                    return false;
                }
                Err(AttachRefused::Busy) => {}
            }
            Box::pin(tokio::time::sleep(Duration::from_millis(10))).await;
        }
        let Some(Attached {
            conn_id,
            session_present,
            data,
            outbox,
        }) = attached
        else {
            tracing::warn!(client_id, "previous connection did not release the session");
            self.refuse(0x03, 0x88).await;
            return false;
        };
        self.outbox = outbox;
        self.data = data;
        self.conn_id = conn_id;

        self.send_connack(session_present, assigned, shortened);
        tracing::debug!(client_id, version = ?self.version, session_present, "connected");
        self.resend_inflight();
        self.fill_window();

        self.keep_alive = connect.keep_alive;
        // Only the will outlives the handshake; the rest of the CONNECT is freed here, and a
        // connection without a will holds nothing for it.
        self.will = connect.will.take().map(Box::new);
        // Freed now, not when the session ends.
        drop(connect);
        // The keep-alive is checked by the broker's housekeeping, so an idle connection's task
        // holds no timer.
        self.outbox.keep_alive_until(self.alive_until());
        true
    }

    /// When the client must next show life: 1.5 times its keep-alive from now.
    fn alive_until(&self) -> Option<Instant> {
        (self.keep_alive > 0)
            .then(|| Instant::now() + Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// Serves the attached session: packets in, deliveries out, until the connection ends
    /// (`Next::Done`, session handed back) or, on a parkable transport, until it is asked to
    /// park while it has nothing to do (`Next::Park`).
    async fn session(&mut self) -> Next {
        let client_id = self.ctx.client_id.clone();
        // Bytes read while waiting for the client: an idle connection's task keeps only these.
        let mut peek = [0u8; PEEK];
        // Clients may send packets right behind their CONNECT in one segment; those bytes are
        // already in the read buffer and are handled before anything more is read.
        let mut unhandled_input = !self.rbuf.is_empty();
        // End of stream seen; packets read before it may still wait behind a hold.
        let mut input_closed = false;
        let end = loop {
            if unhandled_input && self.held_back.is_empty() {
                unhandled_input = false;
                if let Some(end) = self.handle_input_or_end().await {
                    break end;
                }
            }
            let kicked = self.outbox.lock().kick;
            if let Some(r) = kicked {
                tracing::info!(client_id, reason = r, "disconnecting client");
                self.disconnect_with(r).await;
                break End::kicked(r);
            }
            if let Err(reason) = self.flush().await {
                if let Some(r) = reason {
                    tracing::info!(client_id, reason = r, "disconnecting client");
                    self.disconnect_with(r).await;
                    break End::kicked(r);
                }
                break End::Abnormal;
            }
            let more = self.pull();
            if !self.wbuf.is_empty() {
                continue;
            }
            if S::PARKABLE
                && !more
                && !unhandled_input
                && !input_closed
                && self.held_back.is_empty()
                && self.rbuf.is_empty()
                && self.data.pending.is_empty()
                && self.outbox.take_park_request()
                && self.core.idle_pool().is_some()
            {
                return Next::Park;
            }
            let timeout = self.core.config.slow_consumer_timeout;
            // Allocated only while held back: idle connections do not carry this future.
            let mut drained = self.held_back.first().map(|c| {
                let (outbox, subscriber) = (c.outbox.clone(), c.client_id.clone());
                Box::pin(async move { outbox.wait_drained(timeout, &subscriber).await })
            });
            let held = drained.is_some();
            if held {
                // A client held back is not read, so it cannot be expected to show life.
                self.outbox.keep_alive_until(None);
            }
            let (stream, peek, outbox) = (&mut self.stream, &mut peek, &self.outbox);
            let wake = std::future::poll_fn(|cx| {
                if !held {
                    let mut buf = ReadBuf::new(&mut peek[..]);
                    if let Poll::Ready(r) = Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                        return Poll::Ready(Wake::Read(r.map(|()| buf.filled().len())));
                    }
                }
                if let Some(d) = drained.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Wake::Drained);
                }
                if outbox.poll_signal(cx).is_ready() || more {
                    // Deliveries arrived or a kick: both are handled at the top of the loop.
                    return Poll::Ready(Wake::Signal);
                }
                Poll::Pending
            })
            .await;
            drop(drained);
            match wake {
                Wake::Read(read) => {
                    input_closed = !matches!(read, Ok(n) if self.take_read(&peek[..n]));
                    self.outbox.keep_alive_until(self.alive_until());
                    if let Some(end) = self.handle_input_or_end().await {
                        break end;
                    }
                }
                Wake::Drained => {
                    self.release_held_back();
                    if self.held_back.is_empty() {
                        self.outbox.keep_alive_until(self.alive_until());
                        // Packets read before the hold are handled before reading more.
                        if let Some(end) = self.handle_input_or_end().await {
                            break end;
                        }
                    }
                }
                Wake::Signal => {}
            }
            if input_closed && self.held_back.is_empty() {
                // Everything the client sent before closing has been handled; no DISCONNECT
                // came, so the end is abnormal (the will goes out).
                break End::Abnormal;
            }
        };
        self.finish(end);
        let _ = self.stream.shutdown().await;
        // Boxed: the drain's buffer exists only while a connection is closing.
        Box::pin(drain_until_closed(&mut self.stream)).await;
        Next::Done
    }

    async fn disconnect_with(&mut self, reason_code: u8) {
        if self.v5() {
            let d = Disconnect {
                reason_code,
                properties: Properties::default(),
            };
            self.queue(&Packet::Disconnect(d));
        }
        let buf = self.wbuf.split();
        let write = tokio::time::timeout(Duration::from_secs(1), self.stream.write_all(&buf));
        let _ = Box::pin(write).await;
    }

    /// Handles every complete packet in the read buffer; returns how the connection ends if one
    /// of them (or a protocol error, after its DISCONNECT is sent) ends it.
    async fn handle_input_or_end(&mut self) -> Option<End> {
        match self.handle_input() {
            Ok(None) => None,
            Ok(Some(end)) => Some(end),
            Err(reason) => {
                if let Some(r) = reason {
                    self.disconnect_with(r).await;
                }
                Some(End::Abnormal)
            }
        }
    }

    /// Decodes and handles every complete packet in the read buffer.
    /// `Err(Some(code))`: close after sending DISCONNECT with `code` (v5); `Err(None)`: just close.
    /// Stops early while this client is held back by a full subscriber queue.
    fn handle_input(&mut self) -> Result<Option<End>, Option<u8>> {
        let end = self.decode_and_handle();
        if self.rbuf.is_empty() {
            // Give the read buffer back between bursts; idle connections keep none.
            self.rbuf = BytesMut::new();
        }
        end
    }

    fn decode_and_handle(&mut self) -> Result<Option<End>, Option<u8>> {
        while self.held_back.is_empty() {
            let decoded = codec::decode(
                &self.rbuf,
                Some(self.version),
                self.core.config.max_packet_size as usize,
            );
            let (packet, used) = match decoded {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::info!(client_id = self.ctx.client_id, "closing connection: {e}");
                    return Err(Some(e.reason_code()));
                }
            };
            self.rbuf.advance(used);
            if let Some(end) = self.handle(packet)? {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    fn handle(&mut self, packet: Packet) -> Result<Option<End>, Option<u8>> {
        match packet {
            Packet::Publish(p) => self.on_publish(p)?,
            Packet::PubAck(a) => {
                if let Some(pos) =
                    self.data.inflight.iter().position(|i| {
                        i.packet_id == a.packet_id && i.delivery.qos == QoS::AtLeastOnce
                    })
                {
                    self.data.inflight.remove(pos);
                    self.fill_window();
                }
            }
            Packet::PubRec(a) => {
                let pos =
                    self.data.inflight.iter().position(|i| {
                        i.packet_id == a.packet_id && i.delivery.qos == QoS::ExactlyOnce
                    });
                match pos {
                    Some(pos) if a.reason_code >= 0x80 => {
                        // The receiver refused it: the exchange ends here.
                        self.data.inflight.remove(pos);
                        self.fill_window();
                    }
                    Some(pos) => {
                        self.data.inflight[pos].released = true;
                        self.queue(&Packet::PubRel(ack(a.packet_id, 0)));
                    }
                    None => self.queue(&Packet::PubRel(ack(a.packet_id, 0x92))),
                }
            }
            Packet::PubComp(a) => {
                if let Some(pos) = self
                    .data
                    .inflight
                    .iter()
                    .position(|i| i.packet_id == a.packet_id && i.released)
                {
                    self.data.inflight.remove(pos);
                    self.fill_window();
                }
            }
            Packet::PubRel(a) => {
                let code = if self.data.incoming_qos2.remove(&a.packet_id) {
                    0
                } else {
                    0x92
                };
                self.queue(&Packet::PubComp(ack(a.packet_id, code)));
            }
            Packet::Subscribe(s) => self.on_subscribe(s)?,
            Packet::Unsubscribe(u) => {
                let reason_codes = u
                    .filters
                    .iter()
                    .map(|f| {
                        if self.core.unsubscribe(&self.ctx.client_id, f) {
                            0x00
                        } else {
                            0x11
                        }
                    })
                    .collect();
                let ack = UnsubAck {
                    packet_id: u.packet_id,
                    properties: Properties::default(),
                    reason_codes,
                };
                self.queue(&Packet::UnsubAck(ack));
            }
            Packet::PingReq => self.queue(&Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.properties.session_expiry_interval {
                    if self.connect_expiry_was_zero && expiry != 0 {
                        return Err(Some(0x82));
                    }
                    self.session_expiry = expiry.min(self.core.config.max_session_expiry_secs);
                }
                return Ok(Some(End::Normal {
                    send_will: d.reason_code == 0x04,
                }));
            }
            Packet::Auth(_) => return Err(Some(0x82)),
            Packet::Connect(_) => {
                tracing::info!(
                    client_id = self.ctx.client_id,
                    "second CONNECT on one connection"
                );
                return Err(Some(0x82));
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                tracing::info!(
                    client_id = self.ctx.client_id,
                    packet = packet.name(),
                    "server-to-client packet from a client"
                );
                return Err(Some(0x82));
            }
        }
        Ok(None)
    }
}

fn ack(packet_id: u16, reason_code: u8) -> Ack {
    Ack {
        packet_id,
        reason_code,
        properties: Properties::default(),
    }
}

/// The publication properties that travel with a message to its subscribers.
fn forwarded(p: &Properties) -> Properties {
    Properties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        ..Properties::default()
    }
}

/// Reads and drops what the peer still sends after our side shut down, until it closes too (at
/// most 1 s and 64 KiB). Closing a socket with unread input resets the connection, and a reset
/// can destroy the DISCONNECT just sent before the client has read it (a client still sending,
/// e.g. PUBRELs after we refused its flood with 0x93, would see only a broken pipe).
async fn drain_until_closed<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut scratch = vec![0u8; 4096];
    let mut left = 64 * 1024usize;
    let drain = async {
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
