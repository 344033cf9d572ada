//! The kernel's own IPC operations: local pub/sub, component configuration, token validation.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{BufMut, BytesMut};
use lichen_bus::{Bus, Delivery, Message, Payload, ReceiveMode, SubscribeOptions};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::authz::ResourceStyle;
use crate::config_source::ConfigSource;
use crate::router::{Authz, Caller, EventSink, IpcError, Router};
use crate::tokens::TokenRegistry;

/// The accessControl service id of local pub/sub.
pub const PUBSUB_SERVICE: &str = "aws.greengrass.ipc.pubsub";
/// How far ahead of the core's clock an UpdateConfiguration timestamp may be; a later one is
/// clamped to the core's clock plus this, so a component cannot make its configuration immune
/// to deployments by writing it "in the future".
pub const MAX_TIMESTAMP_SKEW_MS: i64 = 5_000;
/// The only component allowed to call ValidateAuthorizationToken.
pub const STREAM_MANAGER: &str = "aws.greengrass.StreamManager";
/// Config change events buffered per subscription before further ones are dropped (and logged).
const CONFIG_EVENT_BUFFER: usize = 1024;
/// Queued deliveries a subscription writes in one go at most (then the write goes out and the
/// next batch starts), bounding the delay of a batch's first event.
const EVENTS_PER_WRITE: usize = 128;

fn topic_of(request: &Value) -> String {
    request
        .get("topic")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn pubsub() -> Authz {
    Authz::Service {
        service_id: PUBSUB_SERVICE.to_string(),
        resource: topic_of,
        style: ResourceStyle::Standard,
    }
}

/// Registers PublishToTopic, SubscribeToTopic, GetConfiguration, UpdateConfiguration,
/// SubscribeToConfigurationUpdate and ValidateAuthorizationToken.
pub fn register_kernel_operations(
    router: &Router,
    bus: Bus,
    config: Arc<dyn ConfigSource>,
    tokens: Arc<TokenRegistry>,
) {
    let b = bus.clone();
    router.register_unary("PublishToTopic", pubsub(), move |caller, req| {
        let bus = b.clone();
        async move { publish_to_topic(&bus, caller, req) }
    });
    let b = bus.clone();
    router.add_fast_path(
        "PublishToTopic",
        Arc::new(move |caller, payload, authorize| {
            fast_publish_to_topic(&b, caller, payload, authorize)
        }),
    );
    router.register_streaming(
        "SubscribeToTopic",
        "SubscriptionResponseMessage",
        pubsub(),
        move |caller, req, sink| {
            let bus = bus.clone();
            async move { subscribe_to_topic(&bus, caller, req, sink) }
        },
    );
    let c = config.clone();
    router.register_unary("GetConfiguration", Authz::None, move |caller, req| {
        let config = c.clone();
        async move { get_configuration(config.as_ref(), caller, req) }
    });
    let c = config.clone();
    router.register_unary("UpdateConfiguration", Authz::None, move |caller, req| {
        let config = c.clone();
        async move { update_configuration(config.as_ref(), caller, req) }
    });
    router.register_streaming(
        "SubscribeToConfigurationUpdate",
        "ConfigurationUpdateEvents",
        Authz::None,
        move |caller, req, sink| {
            let config = config.clone();
            async move { subscribe_to_configuration_update(config, caller, req, sink) }
        },
    );
    router.register_unary(
        "ValidateAuthorizationToken",
        Authz::None,
        move |caller, req| {
            let tokens = tokens.clone();
            async move { validate_authorization_token(&tokens, caller, req) }
        },
    );
}

fn required_str<'a>(req: &'a Value, field: &str, op: &str) -> Result<&'a str, IpcError> {
    match req.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(IpcError::invalid_arguments(
            format!("{op}: `{field}` is required and must not be empty"),
        )),
        Some(_) => Err(IpcError::invalid_arguments(format!(
            "{op}: `{field}` must be a string"
        ))),
    }
}

fn publish_to_topic(bus: &Bus, caller: Caller, req: Value) -> Result<Value, IpcError> {
    let topic = required_str(&req, "topic", "PublishToTopic")?;
    if topic.contains(['+', '#', '*']) {
        return Err(IpcError::invalid_arguments(format!(
            "PublishToTopic: topic {topic:?} contains a wildcard (`+`, `#` or `*`); publish to a concrete topic"
        )));
    }
    // Borrowed: a binary message is only decoded from it, never copied as text.
    let message = req.get("publishMessage").unwrap_or(&Value::Null);
    let payload = match (message.get("jsonMessage"), message.get("binaryMessage")) {
        (Some(j), None) => Payload::Json(j.get("message").cloned().unwrap_or(Value::Null)),
        (None, Some(b)) => {
            let text = b.get("message").and_then(Value::as_str).unwrap_or_default();
            binary_payload(text)?
        }
        _ => {
            return Err(IpcError::invalid_arguments(
                "PublishToTopic: publishMessage must set exactly one of jsonMessage or binaryMessage",
            ));
        }
    };
    bus.publish(
        topic,
        Message {
            payload,
            publisher: caller.component,
        },
    )
    .map_err(|e| IpcError::invalid_arguments(format!("PublishToTopic: {e}")))?;
    Ok(json!({}))
}

fn binary_payload(base64_text: &str) -> Result<Payload, IpcError> {
    let bytes = B64.decode(base64_text).map_err(|e| {
        IpcError::invalid_arguments(format!(
            "PublishToTopic: publishMessage.binaryMessage.message is not base64: {e}"
        ))
    })?;
    Ok(Payload::Binary(bytes.into()))
}

/// A member that may be absent, `null` or set (the general path tells the three apart).
#[derive(Default)]
enum Member<T> {
    #[default]
    Absent,
    Null,
    Set(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Member<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            None => Member::Null,
            Some(v) => Member::Set(v),
        })
    }
}

/// The common shape of a PublishToTopic request, borrowed from the payload (strings without
/// escapes only; anything else fails to parse and takes the general path).
#[derive(Deserialize)]
struct FastPublish<'a> {
    topic: &'a str,
    #[serde(rename = "publishMessage", borrow)]
    publish_message: FastPublishMessage<'a>,
}

#[derive(Deserialize)]
struct FastPublishMessage<'a> {
    #[serde(rename = "jsonMessage", default)]
    json_message: Member<FastJsonMessage>,
    #[serde(rename = "binaryMessage", default, borrow)]
    binary_message: Member<FastBinaryMessage<'a>>,
}

#[derive(Deserialize)]
struct FastJsonMessage {
    #[serde(default)]
    message: Option<Value>,
}

#[derive(Deserialize)]
struct FastBinaryMessage<'a> {
    #[serde(default)]
    message: Option<&'a str>,
}

/// PublishToTopic without building a `Value` of the request: handles the well-formed request
/// exactly as [`publish_to_topic`] does and declines (`None`) everything else — not an object,
/// escaped strings, an empty or wildcard topic, not exactly one message kind — so every error
/// keeps the general path's wording and order (authorization first).
fn fast_publish_to_topic(
    bus: &Bus,
    caller: &Caller,
    payload: &[u8],
    authorize: &dyn Fn(&str) -> Result<(), IpcError>,
) -> Option<Result<(), IpcError>> {
    // A struct also deserializes from a JSON array; the general path refuses one.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let request: FastPublish<'_> = serde_json::from_slice(payload).ok()?;
    let topic = request.topic;
    if topic.is_empty() || topic.contains(['+', '#', '*']) {
        return None;
    }
    let message = request.publish_message;
    let kind = match (message.json_message, message.binary_message) {
        (Member::Set(json), Member::Absent) => Ok(json),
        (Member::Absent, Member::Set(binary)) => Err(binary),
        _ => return None,
    };
    Some((|| {
        authorize(topic)?;
        let payload = match kind {
            Ok(json) => Payload::Json(json.message.unwrap_or(Value::Null)),
            Err(binary) => binary_payload(binary.message.unwrap_or_default())?,
        };
        bus.publish(
            topic,
            Message {
                payload,
                publisher: caller.component.clone(),
            },
        )
        .map_err(|e| IpcError::invalid_arguments(format!("PublishToTopic: {e}")))?;
        Ok(())
    })())
}

fn subscribe_to_topic(
    bus: &Bus,
    caller: Caller,
    req: Value,
    sink: EventSink,
) -> Result<Value, IpcError> {
    let topic = required_str(&req, "topic", "SubscribeToTopic")?;
    let receive_mode = match req.get("receiveMode").and_then(Value::as_str) {
        None => None,
        Some("RECEIVE_ALL_MESSAGES") => Some(ReceiveMode::ReceiveAllMessages),
        Some("RECEIVE_MESSAGES_FROM_OTHERS") => Some(ReceiveMode::ReceiveMessagesFromOthers),
        Some(other) => {
            return Err(IpcError::invalid_arguments(format!(
                "SubscribeToTopic: receiveMode {other:?} is not RECEIVE_ALL_MESSAGES or RECEIVE_MESSAGES_FROM_OTHERS"
            )));
        }
    };
    let mut sub = bus
        .subscribe(
            topic,
            SubscribeOptions {
                receive_mode,
                subscriber_id: caller.component,
                queue_capacity: 0,
            },
        )
        .map_err(|e| IpcError::invalid_arguments(format!("SubscribeToTopic: {e}")))?;
    tokio::spawn(async move {
        'deliver: loop {
            let delivery = tokio::select! {
                d = sub.recv() => match d { Some(d) => d, None => break },
                _ = sink.closed() => break,
            };
            // Everything queued meanwhile leaves with it in one write.
            let _cork = sink.cork();
            let mut next = Some(delivery);
            let mut sent = 0;
            while let Some(delivery) = next {
                let written = sink.send_written(subscription_event_len(&delivery), |out| {
                    write_subscription_event(&delivery, out)
                });
                if written.await.is_err() {
                    break 'deliver;
                }
                sent += 1;
                next = if sent < EVENTS_PER_WRITE {
                    sub.try_recv()
                } else {
                    None
                };
            }
        }
        // `sub` drops here: unsubscribed.
    });
    Ok(json!({}))
}

/// About how long [`write_subscription_event`] makes the event of `delivery`.
fn subscription_event_len(delivery: &Delivery) -> usize {
    match &delivery.message.payload {
        Payload::Binary(b) => b.len() * 4 / 3 + delivery.topic.len() + 96,
        Payload::Json(_) => delivery.topic.len() + 128,
    }
}

/// Writes the `SubscriptionResponseMessage` of a delivery in one pass (no `Value` built and
/// serialized again; base64 written straight into the buffer).
fn write_subscription_event(delivery: &Delivery, out: &mut BytesMut) {
    match &delivery.message.payload {
        Payload::Json(v) => {
            out.extend_from_slice(br#"{"jsonMessage":{"message":"#);
            // Serializing a Value into a buffer cannot fail.
            let _ = serde_json::to_writer(out.writer(), v);
        }
        Payload::Binary(b) => {
            out.extend_from_slice(br#"{"binaryMessage":{"message":""#);
            let start = out.len();
            out.resize(start + base64::encoded_len(b.len(), true).unwrap_or(0), 0);
            let written = B64.encode_slice(b, &mut out[start..]).unwrap_or(0);
            out.truncate(start + written);
            out.put_u8(b'"');
        }
    }
    out.extend_from_slice(br#","context":{"topic":"#);
    let _ = serde_json::to_writer(out.writer(), &delivery.topic);
    out.extend_from_slice(b"}}}");
}

fn key_path(req: &Value, op: &str) -> Result<Vec<String>, IpcError> {
    match req.get("keyPath") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    IpcError::invalid_arguments(format!("{op}: keyPath must be a list of strings"))
                })
            })
            .collect(),
        Some(_) => Err(IpcError::invalid_arguments(format!(
            "{op}: keyPath must be a list of strings"
        ))),
    }
}

fn component_of(req: &Value, caller: &Caller) -> String {
    match req.get("componentName").and_then(Value::as_str) {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => caller.component.clone(),
    }
}

fn config_path<'a>(component: &'a str, key_path: &'a [String]) -> Vec<&'a str> {
    let mut path = vec!["services", component, "configuration"];
    path.extend(key_path.iter().map(String::as_str));
    path
}

fn not_found(component: &str, key_path: &[String]) -> IpcError {
    IpcError::ResourceNotFound {
        message: format!(
            "Key not found: {component} has no configuration at {:?}",
            key_path
        ),
        resource_type: Some("Configuration".into()),
        resource_name: Some(key_path.join(".")),
    }
}

fn get_configuration(
    config: &dyn ConfigSource,
    caller: Caller,
    req: Value,
) -> Result<Value, IpcError> {
    let component = component_of(&req, &caller);
    let key_path = key_path(&req, "GetConfiguration")?;
    let path = config_path(&component, &key_path);
    let value = match config.get(&path) {
        Some(v) => v,
        // A component that exists but has no configuration reads as an empty map.
        None if key_path.is_empty() && config.get(&["services", &component]).is_some() => {
            json!({})
        }
        None => return Err(not_found(&component, &key_path)),
    };
    let value = match (value, key_path.last()) {
        (v @ Value::Object(_), _) | (v, None) => v,
        (leaf, Some(name)) => json!({ name: leaf }),
    };
    Ok(json!({ "componentName": component, "value": value }))
}

/// Paths (relative to `base`) of every leaf in `value`.
fn leaves(value: &Value, base: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                base.push(k.clone());
                leaves(v, base, out);
                base.pop();
            }
        }
        _ => out.push(base.clone()),
    }
}

/// The key of a component's IPC policy, under its `configuration`.
const ACCESS_CONTROL: &str = "accessControl";

/// Whether a merge of `value` at `key_path` (relative to the caller's `configuration`) would
/// write into its `accessControl` node. Keys are compared as the configuration tree resolves
/// them ([`lichen_config::same_key`]), so every spelling that reaches the node is caught.
fn reaches_access_control(key_path: &[String], value: &Value) -> bool {
    match key_path.first() {
        Some(first) => lichen_config::same_key(first, ACCESS_CONTROL),
        None => value.as_object().is_some_and(|map| {
            map.keys()
                .any(|k| lichen_config::same_key(k, ACCESS_CONTROL))
        }),
    }
}

/// Clamps a proposed timestamp to the core's clock plus [`MAX_TIMESTAMP_SKEW_MS`]: the tree is
/// last-writer-wins, so a timestamp from the future would make the node immune to deployments.
fn clamp_timestamp(component: &str, proposed_ms: i64) -> i64 {
    let limit = lichen_config::now_ms().saturating_add(MAX_TIMESTAMP_SKEW_MS);
    if proposed_ms > limit {
        tracing::warn!(
            component,
            proposed_ms,
            recorded_ms = limit,
            "UpdateConfiguration timestamp is ahead of the core's clock; recorded at the clock's limit"
        );
        limit
    } else {
        proposed_ms
    }
}

fn update_configuration(
    config: &dyn ConfigSource,
    caller: Caller,
    req: Value,
) -> Result<Value, IpcError> {
    const OP: &str = "UpdateConfiguration";
    let key_path = key_path(&req, OP)?;
    let timestamp_s = req
        .get("timestamp")
        .and_then(Value::as_f64)
        .ok_or_else(|| {
            IpcError::invalid_arguments(format!(
                "{OP}: timestamp (seconds since epoch) is required"
            ))
        })?;
    let value = match req.get("valueToMerge") {
        Some(v @ Value::Object(_)) => v.clone(),
        Some(Value::Null) | None => {
            return Err(IpcError::invalid_arguments(format!(
                "{OP}: valueToMerge is required"
            )));
        }
        // A leaf value merges into the node named by the last keyPath element.
        Some(leaf) => match key_path.last() {
            Some(_) => leaf.clone(),
            None => {
                return Err(IpcError::invalid_arguments(format!(
                    "{OP}: valueToMerge must be an object when keyPath is empty"
                )));
            }
        },
    };
    if reaches_access_control(&key_path, &value) {
        return Err(IpcError::invalid_arguments(format!(
            "{OP}: accessControl (in any letter case) cannot be changed through IPC; change it with a deployment"
        )));
    }
    let timestamp_ms = clamp_timestamp(&caller.component, (timestamp_s * 1000.0) as i64);
    let mut changed = Vec::new();
    leaves(&value, &mut key_path.clone(), &mut changed);
    for leaf in &changed {
        let path = config_path(&caller.component, leaf);
        if let Some(current) = config.timestamp(&path)
            && current > timestamp_ms
        {
            return Err(IpcError::FailedUpdateConditionCheck {
                message: format!(
                    "{OP}: proposed timestamp {timestamp_ms} ms is older than the last change {current} ms of {}; read the configuration again and retry with a newer timestamp",
                    leaf.join(".")
                ),
            });
        }
    }
    let path = config_path(&caller.component, &key_path);
    config
        .merge(&path, value, timestamp_ms)
        .map_err(|e| IpcError::service(format!("{OP}: {e}")))?;
    Ok(json!({}))
}

fn subscribe_to_configuration_update(
    config: Arc<dyn ConfigSource>,
    caller: Caller,
    req: Value,
    sink: EventSink,
) -> Result<Value, IpcError> {
    let component = component_of(&req, &caller);
    let key_path = key_path(&req, "SubscribeToConfigurationUpdate")?;
    if config.get(&["services", &component]).is_none() {
        return Err(IpcError::ResourceNotFound {
            message: format!("SubscribeToConfigurationUpdate: no component named {component}"),
            resource_type: Some("Component".into()),
            resource_name: Some(component),
        });
    }
    let (tx, mut rx) = mpsc::channel::<Vec<String>>(CONFIG_EVENT_BUFFER);
    let path = config_path(&component, &key_path);
    let handle = config.subscribe(
        &path,
        Box::new(move |changed: &[String]| {
            // Relative to the component's `configuration` node.
            let relative = changed.get(3..).unwrap_or_default().to_vec();
            if tx.try_send(relative).is_err() {
                tracing::warn!("configuration update event dropped: subscriber too slow");
            }
        }),
    );
    tokio::spawn(async move {
        loop {
            let relative = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => break },
                _ = sink.closed() => break,
            };
            let event = json!({
                "configurationUpdateEvent": { "componentName": component, "keyPath": relative }
            });
            if sink.send(event).await.is_err() {
                break;
            }
        }
        config.unsubscribe(handle);
    });
    Ok(json!({}))
}

fn validate_authorization_token(
    tokens: &TokenRegistry,
    caller: Caller,
    req: Value,
) -> Result<Value, IpcError> {
    if caller.component != STREAM_MANAGER {
        return Err(IpcError::Unauthorized {
            message: format!(
                "Principal {} is not authorized to perform ValidateAuthorizationToken; only {STREAM_MANAGER} may",
                caller.component
            ),
        });
    }
    let token = required_str(&req, "token", "ValidateAuthorizationToken")?;
    match tokens.identity(token) {
        Some(_) => Ok(json!({ "isValid": true })),
        None => Err(IpcError::InvalidToken {
            message: "ValidateAuthorizationToken: the token is not valid for this core".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(topic: &str, payload: Payload) -> Delivery {
        Delivery {
            topic: topic.to_string(),
            message: Message {
                payload,
                publisher: "p".into(),
            },
        }
    }

    fn subscription_event(delivery: &Delivery) -> BytesMut {
        let mut out = BytesMut::new();
        write_subscription_event(delivery, &mut out);
        out
    }

    /// What a publish did: its result and what a subscriber of `#` received.
    fn publish_outcome(
        publish: impl FnOnce(&Bus) -> Result<(), IpcError>,
    ) -> (Result<(), IpcError>, Option<Delivery>) {
        let bus = Bus::new();
        let mut sub = bus
            .subscribe(
                "#",
                SubscribeOptions {
                    receive_mode: Some(ReceiveMode::ReceiveAllMessages),
                    ..SubscribeOptions::for_subscriber("s")
                },
            )
            .unwrap();
        let result = publish(&bus);
        (result, sub.try_recv().map(|d| Delivery::clone(&d)))
    }

    #[test]
    fn the_fast_publish_path_answers_exactly_as_the_general_path_or_declines() {
        let caller = Caller {
            component: "pub".into(),
        };
        let deny = |topic: &str| {
            if topic.starts_with("deny") {
                Err(IpcError::Unauthorized {
                    message: format!("no access to {topic}"),
                })
            } else {
                Ok(())
            }
        };
        let requests = [
            (
                r#"{"topic":"a/b","publishMessage":{"binaryMessage":{"message":"aGVsbG8="}}}"#,
                true,
            ),
            (
                r#" {"publishMessage":{"jsonMessage":{"message":{"n":[1,2]}}},"topic":"a"}"#,
                true,
            ),
            (r#"{"topic":"a","publishMessage":{"jsonMessage":{}}}"#, true),
            (
                r#"{"topic":"a","publishMessage":{"jsonMessage":{"message":null}}}"#,
                true,
            ),
            (
                r#"{"topic":"a","publishMessage":{"binaryMessage":{}}}"#,
                true,
            ),
            (
                r#"{"topic":"a","publishMessage":{"binaryMessage":{"message":7}}}"#,
                false,
            ),
            (
                r#"{"topic":"a","publishMessage":{"binaryMessage":{"message":"not base64!"}}}"#,
                true,
            ),
            (
                r#"{"topic":"deny/x","publishMessage":{"binaryMessage":{"message":"!!"}}}"#,
                true,
            ),
            (
                r#"{"topic":"a","publishMessage":{"binaryMessage":null,"jsonMessage":{"message":1}}}"#,
                false,
            ),
            (
                r#"{"topic":"a","publishMessage":{"binaryMessage":{"message":""},"jsonMessage":{}}}"#,
                false,
            ),
            (r#"{"topic":"a","publishMessage":{}}"#, false),
            (r#"{"topic":"a","publishMessage":null}"#, false),
            (
                r#"{"topic":"a/+","publishMessage":{"jsonMessage":{}}}"#,
                false,
            ),
            (r#"{"topic":"","publishMessage":{"jsonMessage":{}}}"#, false),
            (r#"{"topic":7,"publishMessage":{"jsonMessage":{}}}"#, false),
            (
                r#"{"topic":"a\/bé","publishMessage":{"jsonMessage":{"message":"x"}}}"#,
                false,
            ),
            (
                r#"{"topic":"a","topic":"b","publishMessage":{"jsonMessage":{}}}"#,
                false,
            ),
            (r#"["a",{"jsonMessage":{}}]"#, false),
        ];
        // (request, whether the fast path handles it)
        for (request, takes_fast_path) in requests {
            let value: Value = serde_json::from_str(request).unwrap();
            let general = publish_outcome(|bus| {
                deny(value["topic"].as_str().unwrap_or_default())?;
                publish_to_topic(bus, caller.clone(), value.clone()).map(|_| ())
            });
            let mut answered = None;
            let fast = publish_outcome(|bus| {
                answered = fast_publish_to_topic(bus, &caller, request.as_bytes(), &deny);
                answered.clone().unwrap_or(Ok(()))
            });
            assert_eq!(answered.is_some(), takes_fast_path, "request {request}");
            if answered.is_some() {
                assert_eq!(fast, general, "request {request}");
            } else {
                assert_eq!(fast.1, None, "declined, yet published: {request}");
            }
        }
    }

    #[test]
    fn subscription_event_bytes_are_the_json_event() {
        let topic = "a/\"quoted\"\\/é";
        let json = json!({ "n": [1, "two", { "x": null }], "s": "line\nbreak" });
        let got: Value = serde_json::from_slice(&subscription_event(&delivery(
            topic,
            Payload::Json(json.clone()),
        )))
        .unwrap();
        assert_eq!(
            got,
            json!({ "jsonMessage": { "message": json, "context": { "topic": topic } } })
        );
        for len in [0usize, 1, 2, 3, 64, 8191] {
            let body: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let got: Value = serde_json::from_slice(&subscription_event(&delivery(
                topic,
                Payload::Binary(body.clone().into()),
            )))
            .unwrap();
            assert_eq!(
                got,
                json!({ "binaryMessage": { "message": B64.encode(&body), "context": { "topic": topic } } }),
                "payload of {len} bytes"
            );
        }
    }
}
