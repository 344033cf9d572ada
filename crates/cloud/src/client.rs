//! The connection: connect, run one MQTT session until it ends, back off, connect again.
//!
//! A session resends every spooled message from the start of the queue (DUP set on those written
//! before), keeps at most the window of QoS 1 messages unacknowledged, restores the local
//! subscriptions, answers the server's publishes and keeps the connection alive with pings.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use lichen_mqtt::{self as mqtt, Packet, QoS, Version};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;

use crate::{CloudError, CloudMessage, Command, ConnectionStatus, MessageProperties, Shared};

pub(crate) type Stream = TlsStream<TcpStream>;
type SubscribeReply = oneshot::Sender<Result<(), CloudError>>;

/// Largest packet accepted from the server.
pub(crate) const MAX_INCOMING_PACKET: usize = 64 << 20;
/// Bytes of outgoing packets gathered before they are written.
const WRITE_CHUNK: usize = 256 << 10;
/// AWS IoT Core accepts at most 8 filters per SUBSCRIBE.
const FILTERS_PER_SUBSCRIBE: usize = 8;
/// How long a message the server refused (a PUBACK reason code of 0x80 or more, e.g. 0x97 when
/// the service is busy) waits before it is sent again: `maxPublishRetry` then spans minutes, not
/// the milliseconds of an immediate resend.
const REFUSED_RETRY_DELAY: Duration = Duration::from_secs(1);

enum End {
    Shutdown,
    Lost(String),
}

pub(crate) fn jittered_backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let exp = min
        .saturating_mul(1u32 << failures.min(20))
        .min(max.max(min));
    let half = exp / 2;
    half + exp.mul_f64(rand::random::<f64>() * 0.5)
}

/// Runs the connection until [`crate::CloudLink::shutdown`].
pub(crate) async fn run(
    shared: Arc<Shared>,
    tls: Arc<ClientConfig>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut failures: u32 = 0;
    let ep = shared
        .config
        .endpoint
        .clone()
        .expect("run is started only with an endpoint");
    loop {
        let attempt = tokio::select! {
            r = connect(&shared.config, &tls) => r,
            _ = shared.shutdown.notified() => return,
        };
        match attempt {
            Ok((stream, connack, leftover)) => {
                tracing::info!(host = %ep.host, port = ep.port, client_id = %shared.config.client_id, "connected to the cloud");
                let started = Instant::now();
                shared.status.send_replace(ConnectionStatus::Connected);
                let end = Session::new(&shared, &connack)
                    .run(stream, leftover, &mut commands)
                    .await;
                shared.status.send_replace(ConnectionStatus::Disconnected);
                if !shared.config.spooler.keep_qos0_when_offline {
                    let n = shared.spool.drop_qos0();
                    if n > 0 {
                        tracing::warn!(
                            messages = n,
                            "offline: dropped QoS 0 messages not yet sent (mqtt.spooler.keepQos0WhenOffline is false)"
                        );
                    }
                }
                match end {
                    End::Shutdown => return,
                    End::Lost(why) => {
                        tracing::warn!(reason = %why, "cloud connection lost; reconnecting")
                    }
                }
                // A connection that dies at once counts as a failure, so it backs off too.
                if started.elapsed() < Duration::from_secs(10) {
                    failures = failures.saturating_add(1);
                } else {
                    failures = 0;
                }
            }
            Err(why) => {
                failures = failures.saturating_add(1);
                tracing::warn!(host = %ep.host, port = ep.port, reason = %why, attempt = failures, "cannot connect to the cloud");
            }
        }
        let delay = jittered_backoff(
            shared.config.reconnect_min,
            shared.config.reconnect_max,
            failures.saturating_sub(1),
        );
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = shared.shutdown.notified() => return,
                c = commands.recv() => match c {
                    None => return,
                    // Offline: the subscription stays registered and is made on connect.
                    Some(Command::Subscribe { reply, .. }) => { let _ = reply.send(Ok(())); }
                    Some(Command::Unsubscribe { .. }) => {}
                },
            }
        }
    }
}

pub(crate) async fn connect(
    c: &crate::LinkConfig,
    tls: &Arc<ClientConfig>,
) -> Result<(Stream, mqtt::ConnAck, BytesMut), String> {
    let ep = c.endpoint.as_ref().expect("endpoint");
    let op = c.operation_timeout;
    let tcp = tokio::time::timeout(op, TcpStream::connect((ep.host.as_str(), ep.port)))
        .await
        .map_err(|_| format!("TCP connect timed out after {} ms", op.as_millis()))?
        .map_err(|e| format!("TCP connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(ep.host.clone())
        .map_err(|e| format!("endpoint {:?} is not a host name: {e}", ep.host))?;
    let mut stream = tokio::time::timeout(op, TlsConnector::from(tls.clone()).connect(name, tcp))
        .await
        .map_err(|_| format!("TLS handshake timed out after {} ms", op.as_millis()))?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let connect = Packet::Connect(mqtt::Connect {
        version: c.version,
        clean_start: true,
        keep_alive: c.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16,
        properties: mqtt::Properties::default(),
        client_id: c.client_id.clone(),
        will: None,
        username: None,
        password: None,
    });
    let mut out = BytesMut::new();
    mqtt::encode(&connect, c.version, &mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let mut buf = BytesMut::with_capacity(4096);
    let deadline = Instant::now() + op;
    loop {
        match mqtt::decode(&buf, Some(c.version), MAX_INCOMING_PACKET) {
            Ok(Some((Packet::ConnAck(ack), used))) => {
                buf.advance(used);
                if ack.reason_code != 0 {
                    return Err(format!(
                        "the server refused the connection (CONNACK code 0x{:02x}); check the certificate, its policy and the client id {:?}",
                        ack.reason_code, c.client_id
                    ));
                }
                return Ok((stream, ack, buf));
            }
            Ok(Some((other, _))) => {
                return Err(format!("expected CONNACK, got {}", other.name()));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("reading CONNACK: {e}")),
        }
        let n = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf))
            .await
            .map_err(|_| format!("no CONNACK within {} ms", op.as_millis()))?
            .map_err(|e| format!("reading CONNACK: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection before CONNACK".into());
        }
    }
}

fn to_properties(p: &MessageProperties) -> mqtt::Properties {
    mqtt::Properties {
        payload_format_indicator: p.payload_format,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        ..mqtt::Properties::default()
    }
}

fn from_publish(p: mqtt::Publish) -> CloudMessage {
    let pr = p.properties;
    CloudMessage {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: MessageProperties {
            user_properties: pr.user_properties,
            message_expiry_interval: pr.message_expiry_interval,
            correlation_data: pr.correlation_data,
            response_topic: pr.response_topic,
            payload_format: pr.payload_format_indicator,
            content_type: pr.content_type,
        },
    }
}

struct Session<'a> {
    shared: &'a Shared,
    version: Version,
    out: BytesMut,
    /// QoS 1 packet id → spool id.
    inflight: HashMap<u16, u64>,
    window: usize,
    /// Highest spool id sent in this session from the queue's order.
    cursor: u64,
    /// Messages to send again (a failed PUBACK), with when they are due.
    retry: VecDeque<(Instant, u64)>,
    /// QoS 0 messages in `out`, removed from the spool once written.
    written_qos0: Vec<u64>,
    next_pid: u16,
    subacks: HashMap<u16, (Vec<String>, Option<SubscribeReply>)>,
    unsubacks: HashMap<u16, ()>,
    keep_alive: Duration,
    last_sent: Instant,
    ping_deadline: Option<Instant>,
    max_outgoing: usize,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, connack: &mqtt::ConnAck) -> Session<'a> {
        let c = &shared.config;
        let server_max = connack
            .properties
            .receive_maximum
            .map_or(usize::MAX, usize::from);
        let keep_alive = connack
            .properties
            .server_keep_alive
            .map_or(c.keep_alive, |s| Duration::from_secs(u64::from(s)));
        Session {
            shared,
            version: c.version,
            out: BytesMut::new(),
            inflight: HashMap::new(),
            window: usize::from(c.max_in_flight.clamp(1, 100)).min(server_max.max(1)),
            cursor: 0,
            retry: VecDeque::new(),
            written_qos0: Vec::new(),
            next_pid: 0,
            subacks: HashMap::new(),
            unsubacks: HashMap::new(),
            keep_alive,
            last_sent: Instant::now(),
            ping_deadline: None,
            max_outgoing: connack
                .properties
                .maximum_packet_size
                .map_or(mqtt::MAX_REMAINING_LENGTH, |m| m as usize),
        }
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            let p = self.next_pid;
            if !self.inflight.contains_key(&p)
                && !self.subacks.contains_key(&p)
                && !self.unsubacks.contains_key(&p)
            {
                return p;
            }
        }
    }

    fn send(&mut self, p: &Packet) {
        mqtt::encode(p, self.version, &mut self.out);
    }

    async fn run(
        mut self,
        stream: Stream,
        mut input: BytesMut,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> End {
        let (mut reader, mut writer) = tokio::io::split(stream);
        self.restore_subscriptions();
        if let Err(e) = self.handle_input(&mut input) {
            return End::Lost(e);
        }
        loop {
            let more = self.pump();
            if let Err(e) = self.flush(&mut writer).await {
                return End::Lost(e);
            }
            let timer = self.next_timer();
            tokio::select! {
                r = reader.read_buf(&mut input) => {
                    match r {
                        Ok(0) => return End::Lost("the server closed the connection".into()),
                        Ok(_) => {
                            if let Err(e) = self.handle_input(&mut input) {
                                return End::Lost(e);
                            }
                        }
                        Err(e) => return End::Lost(format!("read: {e}")),
                    }
                }
                _ = self.shared.spool.wait_ready(), if !more && self.inflight.len() < self.window => {}
                _ = std::future::ready(()), if more => {}
                c = commands.recv() => match c {
                    None => return self.disconnect(&mut writer).await,
                    Some(c) => self.command(c),
                },
                _ = tokio::time::sleep_until(timer) => {
                    if let Err(e) = self.on_timer() {
                        return End::Lost(e);
                    }
                }
                _ = self.shared.shutdown.notified() => return self.disconnect(&mut writer).await,
            }
        }
    }

    async fn disconnect(&mut self, writer: &mut WriteHalf<Stream>) -> End {
        self.send(&Packet::Disconnect(mqtt::Disconnect {
            reason_code: 0,
            properties: mqtt::Properties::default(),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.flush(writer).await;
            let _ = writer.shutdown().await;
        })
        .await;
        End::Shutdown
    }

    async fn flush(&mut self, writer: &mut WriteHalf<Stream>) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        writer
            .write_all(&self.out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        writer.flush().await.map_err(|e| format!("write: {e}"))?;
        self.out.clear();
        self.last_sent = Instant::now();
        for id in self.written_qos0.drain(..) {
            self.shared.spool.ack(id);
        }
        Ok(())
    }

    fn restore_subscriptions(&mut self) {
        let filters = self.shared.filters();
        for chunk in filters.chunks(FILTERS_PER_SUBSCRIBE) {
            let names = chunk.iter().map(|(f, _)| f.clone()).collect();
            self.subscribe(names, chunk, None);
        }
    }

    fn subscribe(
        &mut self,
        names: Vec<String>,
        filters: &[(String, QoS)],
        reply: Option<SubscribeReply>,
    ) {
        let packet_id = self.packet_id();
        let p = Packet::Subscribe(mqtt::Subscribe {
            packet_id,
            properties: mqtt::Properties::default(),
            filters: filters
                .iter()
                .map(|(f, q)| {
                    (
                        f.clone(),
                        mqtt::SubscriptionOptions {
                            qos: *q,
                            no_local: false,
                            retain_as_published: false,
                            retain_handling: 0,
                        },
                    )
                })
                .collect(),
        });
        self.send(&p);
        self.subacks.insert(packet_id, (names, reply));
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Subscribe { filter, qos, reply } => {
                self.subscribe(vec![filter.clone()], &[(filter, qos)], Some(reply));
            }
            Command::Unsubscribe { filter } => {
                // Someone may have subscribed again since; then the filter stays.
                if self.shared.filters().iter().any(|(f, _)| *f == filter) {
                    return;
                }
                let packet_id = self.packet_id();
                self.send(&Packet::Unsubscribe(mqtt::Unsubscribe {
                    packet_id,
                    properties: mqtt::Properties::default(),
                    filters: vec![filter],
                }));
                self.unsubacks.insert(packet_id, ());
            }
        }
    }

    /// Fills the window from the spool; returns true when it stopped with more to send.
    fn pump(&mut self) -> bool {
        let c = &self.shared.config;
        while self.inflight.len() < self.window {
            if self.out.len() >= WRITE_CHUNK {
                return true;
            }
            let due = self
                .retry
                .front()
                .is_some_and(|(at, _)| *at <= Instant::now());
            let msg = if let Some((_, id)) = due.then(|| self.retry.pop_front()).flatten() {
                match self.shared.spool.get(id) {
                    Some(m) => m,
                    None => continue,
                }
            } else {
                match self.shared.spool.next_after(self.cursor) {
                    Some(m) => {
                        self.cursor = m.id;
                        m
                    }
                    None => return false,
                }
            };
            let attempts = msg
                .attempts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if c.max_publish_retry >= 0 && i64::from(attempts) > c.max_publish_retry {
                tracing::error!(topic = %msg.message.topic, attempts, "giving up on a cloud message after mqtt.maxPublishRetry attempts");
                self.shared.spool.ack(msg.id);
                continue;
            }
            let m = &msg.message;
            let packet_id = (m.qos == QoS::AtLeastOnce).then(|| self.packet_id());
            let publish = Packet::Publish(mqtt::Publish {
                dup: attempts > 0 && m.qos == QoS::AtLeastOnce,
                qos: m.qos,
                retain: m.retain,
                topic: m.topic.clone(),
                packet_id,
                properties: to_properties(&m.properties),
                payload: m.payload.clone(),
            });
            let before = self.out.len();
            self.send(&publish);
            if self.out.len() - before > self.max_outgoing {
                self.out.truncate(before);
                tracing::error!(topic = %m.topic, max = self.max_outgoing, "dropping a cloud message larger than the server's maximum packet size");
                self.shared.spool.ack(msg.id);
                continue;
            }
            match packet_id {
                Some(pid) => {
                    self.inflight.insert(pid, msg.id);
                }
                None => self.written_qos0.push(msg.id),
            }
        }
        false
    }

    fn handle_input(&mut self, input: &mut BytesMut) -> Result<(), String> {
        loop {
            match mqtt::decode(input, Some(self.version), MAX_INCOMING_PACKET) {
                Ok(Some((packet, used))) => {
                    input.advance(used);
                    self.on_packet(packet)?;
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad packet from the server: {e}")),
            }
        }
    }

    fn on_packet(&mut self, packet: Packet) -> Result<(), String> {
        match packet {
            Packet::PubAck(ack) => {
                if let Some(id) = self.inflight.remove(&ack.packet_id) {
                    if ack.reason_code < 0x80 {
                        self.shared.spool.ack(id);
                    } else {
                        let topic = self.shared.spool.get(id).map(|m| m.message.topic.clone());
                        tracing::warn!(
                            reason_code = ack.reason_code,
                            topic = topic.as_deref().unwrap_or_default(),
                            "the cloud refused a message; it will be sent again"
                        );
                        self.retry
                            .push_back((Instant::now() + REFUSED_RETRY_DELAY, id));
                    }
                }
            }
            Packet::Publish(p) => {
                let packet_id = p.packet_id;
                let qos = p.qos;
                self.shared.dispatch(from_publish(p));
                let ack = |packet_id| mqtt::Ack {
                    packet_id,
                    reason_code: 0,
                    properties: mqtt::Properties::default(),
                };
                match (qos, packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(ack(id))),
                    (QoS::ExactlyOnce, Some(id)) => self.send(&Packet::PubRec(ack(id))),
                    _ => {}
                }
            }
            Packet::PubRel(a) => self.send(&Packet::PubComp(mqtt::Ack {
                packet_id: a.packet_id,
                reason_code: 0,
                properties: mqtt::Properties::default(),
            })),
            Packet::SubAck(s) => {
                if let Some((names, reply)) = self.subacks.remove(&s.packet_id) {
                    let mut result = Ok(());
                    for (filter, code) in names.iter().zip(&s.reason_codes) {
                        if *code >= 0x80 {
                            tracing::error!(filter = %filter, reason_code = code, "the cloud refused a subscription");
                            result = Err(CloudError::SubscribeRejected {
                                filter: filter.clone(),
                                reason_code: *code,
                            });
                        }
                    }
                    if let Some(r) = reply {
                        let _ = r.send(result);
                    }
                }
            }
            Packet::UnsubAck(u) => {
                self.unsubacks.remove(&u.packet_id);
            }
            Packet::PingResp => self.ping_deadline = None,
            Packet::Disconnect(d) => {
                return Err(format!(
                    "the server disconnected (reason code 0x{:02x}{})",
                    d.reason_code,
                    d.properties
                        .reason_string
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ));
            }
            other => tracing::debug!(packet = other.name(), "ignored packet from the cloud"),
        }
        Ok(())
    }

    fn next_timer(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let ping = if self.keep_alive.is_zero() {
            far
        } else {
            self.last_sent + self.keep_alive
        };
        // While a ping is outstanding only its deadline matters.
        let keep_alive = self.ping_deadline.unwrap_or(ping);
        match self.retry.front() {
            Some((at, _)) => keep_alive.min(*at),
            None => keep_alive,
        }
    }

    fn on_timer(&mut self) -> Result<(), String> {
        let now = Instant::now();
        if self.ping_deadline.is_some_and(|d| now >= d) {
            return Err(format!(
                "no PINGRESP within {} ms (mqtt.pingTimeoutMs)",
                self.shared.config.ping_timeout.as_millis()
            ));
        }
        if !self.keep_alive.is_zero()
            && now >= self.last_sent + self.keep_alive
            && self.ping_deadline.is_none()
        {
            self.send(&Packet::PingReq);
            self.ping_deadline = Some(now + self.shared.config.ping_timeout);
        }
        Ok(())
    }
}
