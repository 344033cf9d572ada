//! Greengrass IPC `PublishToIoTCore` and `SubscribeToIoTCore` on the link, and the forwarding
//! between the core's `iot_core` bus and the link.
//!
//! Shapes follow spec §3.1: payloads and correlation data are base64; QoS and payload format are
//! the strings `"0"`/`"1"`; events are `IoTCoreMessage{message: MQTTMessage{…}}`. Authorization is
//! `aws.greengrass.ipc.mqttproxy` on the topic or filter, matched MQTT-style.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use lichen_ipc::{Authz, EventSink, IpcError, ResourceStyle, Router};
use serde_json::{Map, Value, json};

use crate::{CloudError, CloudLink, CloudMessage, MessageProperties, QoS};

/// The accessControl service id of the MQTT proxy operations.
pub const MQTT_PROXY_SERVICE: &str = "aws.greengrass.ipc.mqttproxy";
/// The publisher identity of messages the link puts on the `iot_core` bus.
pub const CLOUD_PUBLISHER: &str = "aws.greengrass.Nucleus#cloud";
/// Deliveries queued from the `iot_core` bus toward the spool.
const BUS_QUEUE: usize = 65_536;

fn topic_name(request: &Value) -> String {
    request
        .get("topicName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn mqtt_proxy() -> Authz {
    Authz::Service {
        service_id: MQTT_PROXY_SERVICE.to_string(),
        resource: topic_name,
        style: ResourceStyle::MqttStyle,
    }
}

/// Registers PublishToIoTCore and SubscribeToIoTCore on `router`.
pub fn register(router: &Router, link: CloudLink) {
    let l = link.clone();
    router.register_unary("PublishToIoTCore", mqtt_proxy(), move |_caller, req| {
        let link = l.clone();
        async move { publish_to_iot_core(&link, &req).await }
    });
    router.register_streaming(
        "SubscribeToIoTCore",
        "IoTCoreMessage",
        mqtt_proxy(),
        move |_caller, req, sink| {
            let link = link.clone();
            async move { subscribe_to_iot_core(&link, &req, sink).await }
        },
    );
}

/// The IPC error for a link error: the caller's mistakes are InvalidArguments, the rest
/// ServiceError.
fn ipc_error(op: &str, e: CloudError) -> IpcError {
    match e {
        CloudError::InvalidTopic { .. }
        | CloudError::TooLarge { .. }
        | CloudError::UnsupportedQos { .. } => IpcError::invalid_arguments(format!("{op}: {e}")),
        other => IpcError::service(format!("{op}: {other}")),
    }
}

fn qos_of(req: &Value, op: &str) -> Result<QoS, IpcError> {
    match req.get("qos") {
        Some(Value::String(s)) if s == "0" => Ok(QoS::AtMostOnce),
        Some(Value::String(s)) if s == "1" => Ok(QoS::AtLeastOnce),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(QoS::AtMostOnce),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(QoS::AtLeastOnce),
        None | Some(Value::Null) => Err(IpcError::invalid_arguments(format!(
            "{op}: `qos` is required (\"0\" or \"1\")"
        ))),
        Some(other) => Err(IpcError::invalid_arguments(format!(
            "{op}: qos {other} is not \"0\" or \"1\""
        ))),
    }
}

fn b64_field(req: &Value, field: &str, op: &str) -> Result<Option<Bytes>, IpcError> {
    match req.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => B64.decode(s).map(|b| Some(b.into())).map_err(|e| {
            IpcError::invalid_arguments(format!("{op}: `{field}` is not base64: {e}"))
        }),
        Some(_) => Err(IpcError::invalid_arguments(format!(
            "{op}: `{field}` must be a base64 string"
        ))),
    }
}

fn str_field(req: &Value, field: &str) -> Option<String> {
    req.get(field).and_then(Value::as_str).map(str::to_string)
}

fn properties_of(req: &Value, op: &str) -> Result<MessageProperties, IpcError> {
    let mut user_properties = Vec::new();
    if let Some(Value::Array(items)) = req.get("userProperties") {
        for i in items {
            match (
                i.get("key").and_then(Value::as_str),
                i.get("value").and_then(Value::as_str),
            ) {
                (Some(k), Some(v)) => user_properties.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(IpcError::invalid_arguments(format!(
                        "{op}: each of userProperties needs a string `key` and `value`"
                    )));
                }
            }
        }
    }
    let payload_format = match req.get("payloadFormat") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "0" || s == "BYTES" => Some(0),
        Some(Value::String(s)) if s == "1" || s == "UTF8" => Some(1),
        Some(other) => {
            return Err(IpcError::invalid_arguments(format!(
                "{op}: payloadFormat {other} is not \"0\" (bytes) or \"1\" (UTF-8)"
            )));
        }
    };
    let message_expiry_interval = match req.get("messageExpiryIntervalSeconds") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    IpcError::invalid_arguments(format!(
                        "{op}: messageExpiryIntervalSeconds must be a whole number of seconds below 2^32"
                    ))
                })?,
        ),
    };
    Ok(MessageProperties {
        user_properties,
        message_expiry_interval,
        correlation_data: b64_field(req, "correlationData", op)?,
        response_topic: str_field(req, "responseTopic"),
        payload_format,
        content_type: str_field(req, "contentType"),
    })
}

async fn publish_to_iot_core(link: &CloudLink, req: &Value) -> Result<Value, IpcError> {
    const OP: &str = "PublishToIoTCore";
    let topic = topic_name(req);
    if topic.is_empty() {
        return Err(IpcError::invalid_arguments(format!(
            "{OP}: `topicName` is required"
        )));
    }
    let qos = qos_of(req, OP)?;
    let payload = b64_field(req, "payload", OP)?.unwrap_or_default();
    let message = CloudMessage {
        topic,
        payload,
        qos,
        retain: req.get("retain").and_then(Value::as_bool).unwrap_or(false),
        properties: properties_of(req, OP)?,
    };
    link.publish(message).await.map_err(|e| ipc_error(OP, e))?;
    Ok(json!({}))
}

/// The `IoTCoreMessage` event for a message from the cloud.
pub fn event_of(m: &CloudMessage) -> Value {
    let mut msg = Map::new();
    msg.insert("topicName".into(), json!(m.topic));
    msg.insert("payload".into(), json!(B64.encode(&m.payload)));
    msg.insert("retain".into(), json!(m.retain));
    let p = &m.properties;
    if !p.user_properties.is_empty() {
        msg.insert(
            "userProperties".into(),
            Value::Array(
                p.user_properties
                    .iter()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect(),
            ),
        );
    }
    if let Some(e) = p.message_expiry_interval {
        msg.insert("messageExpiryIntervalSeconds".into(), json!(e));
    }
    if let Some(c) = &p.correlation_data {
        msg.insert("correlationData".into(), json!(B64.encode(c)));
    }
    if let Some(r) = &p.response_topic {
        msg.insert("responseTopic".into(), json!(r));
    }
    if let Some(f) = p.payload_format {
        msg.insert("payloadFormat".into(), json!(f.to_string()));
    }
    if let Some(c) = &p.content_type {
        msg.insert("contentType".into(), json!(c));
    }
    json!({ "message": Value::Object(msg) })
}

async fn subscribe_to_iot_core(
    link: &CloudLink,
    req: &Value,
    sink: EventSink,
) -> Result<Value, IpcError> {
    const OP: &str = "SubscribeToIoTCore";
    let filter = topic_name(req);
    if filter.is_empty() {
        return Err(IpcError::invalid_arguments(format!(
            "{OP}: `topicName` is required"
        )));
    }
    let qos = qos_of(req, OP)?;
    let mut sub = link
        .subscribe(&filter, qos)
        .await
        .map_err(|e| ipc_error(OP, e))?;
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                m = sub.recv() => match m { Some(m) => m, None => break },
                _ = sink.closed() => break,
            };
            if sink.send(event_of(&m)).await.is_err() {
                break;
            }
        }
        // `sub` drops here: the last local subscriber of a filter unsubscribes upstream.
    });
    Ok(json!({}))
}

/// Forwards between the core's `iot_core` bus and the link: what other services publish there
/// goes to the cloud (QoS 1, spooled); what arrives from any cloud subscription is published
/// there. The filters other services subscribe to on the bus are subscribed upstream (QoS 1)
/// while at least one of them is held, so they receive the cloud's messages without knowing
/// the link. Runs until the link shuts down.
pub fn forward_bus(
    link: CloudLink,
    bus: lichen_bus::Bus,
) -> Result<Vec<tokio::task::JoinHandle<()>>, lichen_bus::BusError> {
    let mut to_cloud = bus.subscribe(
        "#",
        lichen_bus::SubscribeOptions {
            receive_mode: Some(lichen_bus::ReceiveMode::ReceiveMessagesFromOthers),
            subscriber_id: CLOUD_PUBLISHER.to_string(),
            queue_capacity: BUS_QUEUE,
        },
    )?;
    let interest = bus.interest(CLOUD_PUBLISHER);
    let l = link.clone();
    let up = tokio::spawn(async move {
        while let Some(d) = to_cloud.recv().await {
            let payload = match &d.message.payload {
                lichen_bus::Payload::Binary(b) => b.clone(),
                lichen_bus::Payload::Json(v) => {
                    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
                }
            };
            let message = CloudMessage {
                topic: d.topic.clone(),
                payload,
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: MessageProperties::default(),
            };
            match l.enqueue(message) {
                Ok(durable) => {
                    let topic = d.topic.clone();
                    tokio::spawn(async move {
                        if let Err(e) = durable.await {
                            tracing::error!(topic = %topic, error = %e, "message from the iot_core bus not spooled");
                        }
                    });
                }
                Err(e) => {
                    tracing::error!(topic = %d.topic, publisher = %d.message.publisher, error = %e, "message from the iot_core bus not spooled")
                }
            }
        }
    });
    let mut from_cloud = link.incoming();
    let down = tokio::spawn(async move {
        loop {
            match from_cloud.recv().await {
                Ok(m) => {
                    let _ = bus.publish(
                        &m.topic,
                        lichen_bus::Message {
                            payload: lichen_bus::Payload::Binary(m.payload),
                            publisher: CLOUD_PUBLISHER.to_string(),
                        },
                    );
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        messages = n,
                        "iot_core bus forwarding fell behind; messages from the cloud skipped"
                    );
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let follow = tokio::spawn(follow_interest(link, interest));
    Ok(vec![up, down, follow])
}

/// Holds one upstream subscription per filter that others hold on the `iot_core` bus. Messages
/// reach the bus through [`CloudLink::incoming`]; a subscription's own queue is only drained.
/// Aborting this task drops every subscription, which unsubscribes upstream.
async fn follow_interest(link: CloudLink, mut interest: lichen_bus::Interest) {
    struct Held {
        drain: tokio::task::JoinHandle<()>,
    }
    impl Drop for Held {
        fn drop(&mut self) {
            // The drain task owns the subscription; ending it unsubscribes upstream.
            self.drain.abort();
        }
    }
    let mut held: std::collections::HashMap<String, Held> = std::collections::HashMap::new();
    // Filters the link refuses for good (not a valid MQTT filter); not retried until re-held.
    let mut refused = std::collections::HashSet::new();
    loop {
        let wanted: Vec<String> = interest.borrow_and_update().keys().cloned().collect();
        held.retain(|filter, _| wanted.contains(filter));
        refused.retain(|filter| wanted.contains(filter));
        let mut retry = false;
        for filter in wanted {
            if held.contains_key(&filter) || refused.contains(&filter) {
                continue;
            }
            match link.subscribe(&filter, QoS::AtLeastOnce).await {
                Ok(mut sub) => {
                    let drain = tokio::spawn(async move { while sub.recv().await.is_some() {} });
                    held.insert(filter, Held { drain });
                }
                Err(e) => {
                    tracing::error!(filter = %filter, error = %e, "cannot subscribe upstream for a subscriber of the iot_core bus");
                    match e {
                        CloudError::InvalidTopic { .. } | CloudError::UnsupportedQos { .. } => {
                            refused.insert(filter);
                        }
                        CloudError::Closed => return,
                        _ => retry = true,
                    }
                }
            }
        }
        tokio::select! {
            changed = interest.changed() => if changed.is_err() { break },
            // A timeout or a dropped connection: try again (the link re-subscribes what it holds
            // after a reconnect, but only what it holds).
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)), if retry => {}
        }
    }
}
