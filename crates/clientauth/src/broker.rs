//! The client-device broker (`aws.greengrass.clientdevices.mqtt.EMQX` / `…mqtt.Moquette`):
//! `lichen-broker` on one TLS listener with client certificates required, its certificates and
//! checks from [`ClientDeviceAuth`], joined both ways to the core's `local_mqtt` bus.

use crate::settings::BrokerSettings;
use crate::{ClientDeviceAuth, Trust, trust, valid_thing_name};
use bytes::BytesMut;
use lichen_broker::codec::{self, Packet, QoS, SubscriptionOptions, Version};
use lichen_broker::rustls::ServerConfig;
use lichen_broker::{Authorizer, BrokerConfig, BrokerError, ClientContext, Listener, Server};
use lichen_bus::{Bus, Message, Payload, ReceiveMode, SubscribeOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The publisher id of messages client devices publish, as they appear on the `local_mqtt` bus.
pub const LOCAL_MQTT_PUBLISHER: &str = "aws.greengrass.clientdevices.broker";

/// Connect, publish and subscribe decisions from client device auth (spec: `mqtt:connect` on
/// `mqtt:clientId:<id>`, `mqtt:publish` on `mqtt:topic:<topic>`, `mqtt:subscribe` on
/// `mqtt:topicfilter:<filter>`).
struct DeviceAuthorizer {
    auth: ClientDeviceAuth,
}

impl DeviceAuthorizer {
    /// A device acts only as the thing its certificate is bound to (checked on every action, so
    /// a changed mapping applies at once); a component (own CA) is allowed everything.
    fn check(&self, ctx: &ClientContext, operation: &str, resource: &str) -> bool {
        let allowed = match self
            .auth
            .client_trust(&ctx.certificate_chain, &ctx.client_id)
        {
            None => false,
            Some(t) => self.auth.allowed(t, &ctx.client_id, operation, resource),
        };
        if !allowed {
            AUTHORIZATION_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(client_id = %ctx.client_id, peer = %ctx.peer, operation, resource, "client device action denied");
        }
        allowed
    }
}

impl Authorizer for DeviceAuthorizer {
    fn client_id_acceptable(&self, ctx: &ClientContext) -> bool {
        match self.auth.classify(&ctx.certificate_chain) {
            Some(Trust::Component) => true,
            // A device's client id is its thing name.
            _ => valid_thing_name(&ctx.client_id),
        }
    }
    fn connect(&self, ctx: &ClientContext) -> bool {
        if self.auth.classify(&ctx.certificate_chain) == Some(Trust::Device)
            && self
                .auth
                .client_trust(&ctx.certificate_chain, &ctx.client_id)
                .is_none()
        {
            tracing::info!(client_id = %ctx.client_id, peer = %ctx.peer, "refused: the certificate is not bound to this thing name (its CN, or trustedClientCertificates.thingCertificates)");
        }
        self.check(
            ctx,
            "mqtt:connect",
            &format!("mqtt:clientId:{}", ctx.client_id),
        )
    }
    fn publish(&self, ctx: &ClientContext, topic: &str) -> bool {
        self.check(ctx, "mqtt:publish", &format!("mqtt:topic:{topic}"))
    }
    fn subscribe(&self, ctx: &ClientContext, filter: &str) -> bool {
        self.check(ctx, "mqtt:subscribe", &format!("mqtt:topicfilter:{filter}"))
    }
}

/// TLS for the listener: client certificate required and checked against the current trust,
/// server certificate as last issued (rotation applies to new handshakes).
fn tls_config(auth: &ClientDeviceAuth) -> Result<Arc<ServerConfig>, BrokerError> {
    let (trust_store, resolver) = auth.tls_parts();
    let provider = trust::provider();
    let verifier = Arc::new(trust::DeviceCertVerifier {
        trust: trust_store,
        provider: provider.clone(),
    });
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    Ok(Arc::new(config))
}

/// A running client-device broker.
pub struct DeviceBroker {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    bridges: Vec<tokio::task::JoinHandle<()>>,
}

impl DeviceBroker {
    /// Binds the listener and starts serving; what client devices publish goes onto `local_mqtt`
    /// (publisher [`LOCAL_MQTT_PUBLISHER`]) and what others publish there reaches client devices.
    pub async fn start(
        auth: &ClientDeviceAuth,
        settings: &BrokerSettings,
        local_mqtt: Bus,
    ) -> Result<DeviceBroker, BrokerError> {
        let config = BrokerConfig {
            max_packet_size: settings.max_packet_size,
            max_retained_messages: settings.max_retained_messages,
            max_retained_bytes: settings.max_retained_bytes,
            max_subscriptions_per_client: settings.max_subscriptions_per_client,
            max_sessions: settings.max_sessions,
            max_session_expiry_secs: settings.max_session_expiry_secs,
            ..BrokerConfig::default()
        };
        let listener = Listener {
            addr: settings.addr,
            tls: Some(tls_config(auth)?),
        };
        let authorizer = Arc::new(DeviceAuthorizer { auth: auth.clone() });
        let server = Server::bind(config, &[listener], authorizer).await?;
        let addr = server
            .local_addrs()
            .first()
            .copied()
            .unwrap_or(settings.addr);
        let link = tokio::spawn(bus_link(
            server.handle().connect_in_process(),
            local_mqtt,
            settings.max_packet_size as usize,
        ));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        tracing::info!(%addr, "client device broker listening (TLS, client certificates required)");
        Ok(DeviceBroker {
            addr,
            stop: Some(stop_tx),
            server,
            bridges: vec![link],
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Disconnects every client and closes the listener.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for b in &self.bridges {
            b.abort();
        }
        let _ = (&mut self.server).await;
    }
}

impl Drop for DeviceBroker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for b in &self.bridges {
            b.abort();
        }
    }
}

fn send(packet: &Packet, out: &mut BytesMut) {
    codec::encode(packet, Version::V5, out);
}

/// Joins the broker and the `local_mqtt` bus through an in-process MQTT 5 connection: it
/// subscribes to everything with no-local (so what it publishes never comes back), mirrors what
/// it receives onto the bus, and publishes what others put on the bus.
/// A bus message whose PUBLISH would exceed `max_packet` is skipped (logged): the broker would
/// otherwise end the link for it.
async fn bus_link(stream: tokio::io::DuplexStream, local_mqtt: Bus, max_packet: usize) {
    let client_id = format!("{LOCAL_MQTT_PUBLISHER}-{}", uuid_like());
    let (mut rd, mut wr) = tokio::io::split(stream);
    let options = SubscribeOptions {
        receive_mode: Some(ReceiveMode::ReceiveMessagesFromOthers),
        subscriber_id: LOCAL_MQTT_PUBLISHER.to_string(),
        queue_capacity: 0,
    };
    let mut from_bus = match local_mqtt.subscribe("#", options) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to local_mqtt");
            return;
        }
    };
    let mut out = BytesMut::new();
    send(
        &Packet::Connect(codec::Connect {
            version: Version::V5,
            clean_start: true,
            keep_alive: 0,
            properties: codec::Properties {
                receive_maximum: Some(u16::MAX),
                ..Default::default()
            },
            client_id: client_id.clone(),
            will: None,
            username: None,
            password: None,
        }),
        &mut out,
    );
    let sub = |filter: &str| {
        (
            filter.to_string(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
        )
    };
    send(
        &Packet::Subscribe(codec::Subscribe {
            packet_id: 1,
            properties: Default::default(),
            // `#` does not match `$` topics; `$aws/…` carries shadows and other AWS topics.
            filters: vec![sub("#"), sub("$aws/#")],
        }),
        &mut out,
    );
    if wr.write_all(&out).await.is_err() {
        return;
    }
    out.clear();
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    let mut next_id: u16 = 1;
    loop {
        tokio::select! {
            read = rd.read_buf(&mut inbuf) => {
                match read {
                    Ok(0) | Err(_) => {
                        tracing::info!("client device broker link closed");
                        return;
                    }
                    Ok(_) => {}
                }
                loop {
                    let (packet, used) = match codec::decode(&inbuf, Some(Version::V5), usize::MAX) {
                        Ok(Some(x)) => x,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "client device broker link: bad packet");
                            return;
                        }
                    };
                    let _ = inbuf.split_to(used);
                    match packet {
                        Packet::Publish(p) => {
                            match (p.qos, p.packet_id) {
                                (QoS::AtLeastOnce, Some(id)) => send(&Packet::PubAck(ack(id)), &mut out),
                                (QoS::ExactlyOnce, Some(id)) => send(&Packet::PubRec(ack(id)), &mut out),
                                _ => {}
                            }
                            let message = Message {
                                payload: Payload::Binary(p.payload),
                                publisher: LOCAL_MQTT_PUBLISHER.to_string(),
                            };
                            if let Err(e) = local_mqtt.publish(&p.topic, message) {
                                tracing::debug!(topic = %p.topic, error = %e, "not mirrored onto local_mqtt");
                            }
                        }
                        Packet::PubRel(a) => send(&Packet::PubComp(ack(a.packet_id)), &mut out),
                        Packet::ConnAck(c) if c.reason_code != 0 => {
                            tracing::error!(reason = c.reason_code, "client device broker refused the bus link");
                            return;
                        }
                        Packet::SubAck(s) if s.reason_codes.iter().any(|c| *c >= 0x80) => {
                            tracing::error!(codes = ?s.reason_codes, "client device broker refused the bus link's subscriptions");
                        }
                        Packet::Disconnect(d) => {
                            tracing::warn!(reason = d.reason_code, "client device broker closed the bus link");
                            return;
                        }
                        _ => {}
                    }
                }
            }
            delivery = from_bus.recv() => {
                let Some(d) = delivery else { return };
                let payload = match &d.message.payload {
                    Payload::Binary(b) => b.clone(),
                    Payload::Json(v) => bytes::Bytes::from(v.to_string()),
                };
                let packet_id = next_id;
                next_id = next_id.checked_add(1).unwrap_or(1);
                let start = out.len();
                send(
                    &Packet::Publish(codec::Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: d.topic.clone(),
                        packet_id: Some(packet_id),
                        properties: Default::default(),
                        payload,
                    }),
                    &mut out,
                );
                if out.len() - start > max_packet {
                    out.truncate(start);
                    tracing::warn!(topic = %d.topic, max_packet, "local_mqtt message not passed to client devices: larger than the broker's maximum packet size");
                }
            }
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn ack(packet_id: u16) -> codec::Ack {
    codec::Ack {
        packet_id,
        reason_code: 0,
        properties: Default::default(),
    }
}

/// A random suffix so no client device can guess (and take over) the link's session.
fn uuid_like() -> String {
    let bytes: [u8; 12] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Client-device actions (connect, publish, subscribe) refused since the process started.
static AUTHORIZATION_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many client-device actions the broker refused since the process started (security
/// metrics).
pub fn authorization_failures() -> u64 {
    AUTHORIZATION_FAILURES.load(std::sync::atomic::Ordering::Relaxed)
}
