//! The shadow topics on local pub/sub (§2.5): requests on `$aws/things/<t>/shadow[/name/<n>]/
//! (update|get|delete)`, answers on `…/accepted|rejected`, events on `…/update/delta` and
//! `…/update/documents`. Client devices reach them through a bridge mapping of
//! `$aws/things/+/shadow/#` between the client-device broker and pub/sub.

use bytes::Bytes;
use lichen_bus::{Bus, Message, Payload, ReceiveMode, SubscribeOptions};
use serde_json::Value;

use crate::SERVICE_NAME;
use crate::manager::{Origin, Shadows, now_secs};
use crate::rules::{self, ShadowError, Updated};

/// `$aws/things/<thing>/shadow` or `…/shadow/name/<shadow>`.
pub fn prefix(thing: &str, shadow: &str) -> String {
    if shadow.is_empty() {
        format!("$aws/things/{thing}/shadow")
    } else {
        format!("$aws/things/{thing}/shadow/name/{shadow}")
    }
}

/// A request topic's (thing, shadow, operation); `None` for anything else (responses included).
pub fn parse_request(topic: &str) -> Option<(&str, &str, &str)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("shadow/")?;
    let (shadow, op) = match rest.strip_prefix("name/") {
        Some(named) => named.split_once('/')?,
        None => ("", rest),
    };
    matches!(op, "update" | "get" | "delete").then_some((thing, shadow, op))
}

fn publish(bus: &Bus, topic: &str, v: &Value) {
    let payload = Payload::Binary(Bytes::from(serde_json::to_vec(v).unwrap_or_default()));
    if let Err(e) = bus.publish(
        topic,
        Message {
            payload,
            publisher: SERVICE_NAME.to_string(),
        },
    ) {
        tracing::warn!(service = SERVICE_NAME, topic, error = %e, "cannot publish a shadow event");
    }
}

/// `/update/accepted`, `/update/delta` (when there is one) and `/update/documents`.
pub fn publish_update_events(bus: &Bus, thing: &str, shadow: &str, u: &Updated) {
    let p = prefix(thing, shadow);
    publish(bus, &format!("{p}/update/accepted"), &u.accepted);
    if let Some(d) = &u.delta {
        publish(bus, &format!("{p}/update/delta"), d);
    }
    publish(bus, &format!("{p}/update/documents"), &u.documents);
}

fn body_of(p: &Payload) -> Vec<u8> {
    match p {
        Payload::Binary(b) => b.to_vec(),
        Payload::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
    }
}

/// Serves one request; the answer goes to `<topic>/accepted` or `<topic>/rejected`.
async fn serve(shadows: &Shadows, topic: &str, body: Vec<u8>) {
    let Some((thing, shadow, op)) = parse_request(topic) else {
        return;
    };
    let token = rules::token_of(&body);
    let rejected = |e: ShadowError| {
        let e = if e.client_token.is_none() {
            e.with_token(token.as_deref())
        } else {
            e
        };
        publish(
            shadows.bus(),
            &format!("{topic}/rejected"),
            &e.to_payload(now_secs()),
        );
    };
    if let Err(e) = shadows.admit(thing) {
        return rejected(e);
    }
    match op {
        // accepted/delta/documents are published by the update itself.
        "update" => {
            if let Err(e) = shadows.update(thing, shadow, body, Origin::Local).await {
                rejected(e);
            }
        }
        "get" => match shadows.get(thing, shadow).await {
            Ok(doc) => publish(
                shadows.bus(),
                &format!("{topic}/accepted"),
                &rules::get_response(&doc, token.as_deref()),
            ),
            Err(e) => rejected(e),
        },
        _ => match shadows.delete(thing, shadow, Origin::Local).await {
            Ok(mut v) => {
                if let Some(t) = &token {
                    v["clientToken"] = Value::String(t.clone());
                }
                publish(shadows.bus(), &format!("{topic}/accepted"), &v);
            }
            Err(e) => rejected(e),
        },
    }
}

/// Serves the request topics until the bus goes away (or the task is aborted). Requests are
/// served in arrival order, so a client's update then get sees its own update.
pub fn spawn(shadows: Shadows) -> Result<tokio::task::JoinHandle<()>, lichen_bus::BusError> {
    let mut sub = shadows.bus().subscribe(
        "$aws/things/+/shadow/#",
        SubscribeOptions {
            // Its own answers are on the same filter; never read them back.
            receive_mode: Some(ReceiveMode::ReceiveMessagesFromOthers),
            subscriber_id: SERVICE_NAME.to_string(),
            queue_capacity: 0,
        },
    )?;
    Ok(tokio::spawn(async move {
        while let Some(d) = sub.recv().await {
            serve(&shadows, &d.topic, body_of(&d.message.payload)).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics() {
        assert_eq!(
            parse_request("$aws/things/t1/shadow/update"),
            Some(("t1", "", "update"))
        );
        assert_eq!(
            parse_request("$aws/things/t1/shadow/name/n1/get"),
            Some(("t1", "n1", "get"))
        );
        assert_eq!(parse_request("$aws/things/t1/shadow/update/accepted"), None);
        assert_eq!(
            parse_request("$aws/things/t1/shadow/name/n1/delete/accepted"),
            None
        );
        assert_eq!(parse_request("$aws/things/t1/jobs/get"), None);
    }
}
