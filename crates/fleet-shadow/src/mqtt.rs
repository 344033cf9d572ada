//! The MQTT API: device publishes on `$aws/things/+/shadow/#` (already allowed by the device
//! endpoint's `iot:Publish` check on the exact topic) become shadow requests; answers go to
//! the request's `accepted`/`rejected` topic.

use crate::{ShadowService, now};
use lichen_fleet_mqtt::{DevicePublish, EndpointError};
use lichen_shadow::{
    Operation, ShadowError, ShadowTopic, TopicKind, UpdateRequest, parse_token_request,
    peek_client_token,
};

/// The topics the service takes from devices.
pub const SHADOW_TOPICS: &str = "$aws/things/+/shadow/#";

impl ShadowService {
    /// Serves the shadow topics on the endpoint given to [`ShadowService::new`] until it stops.
    /// Requests are handled one at a time, in arrival order: each is one transaction, and a
    /// device's updates apply in the order it sent them.
    pub fn serve_mqtt(&self) -> Result<tokio::task::JoinHandle<()>, EndpointError> {
        let Some(endpoint) = &self.inner.endpoint else {
            return Err(EndpointError::Stopped);
        };
        let mut topics = endpoint.serve_topics(SHADOW_TOPICS)?;
        let service = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(publish) = topics.recv().await {
                service.on_publish(publish).await;
            }
        }))
    }

    async fn on_publish(&self, p: DevicePublish) {
        let Some(topic) = ShadowTopic::parse(&p.topic) else {
            tracing::debug!(
                topic = p.topic,
                client_id = p.client_id,
                "not a shadow request topic; ignored"
            );
            return;
        };
        if topic.kind != TopicKind::Request {
            // Only the service answers on response topics: a device's publish there reaches
            // no one, so no device can forge another's responses.
            tracing::debug!(
                topic = p.topic,
                client_id = p.client_id,
                "publish to a shadow response topic dropped"
            );
            return;
        }
        let who = format!("certificate/{}", p.certificate_id);
        let thing = topic.thing.as_str();
        let shadow = topic.shadow.as_deref();
        let result: Result<(), ShadowError> = match topic.operation {
            Operation::Update => {
                match UpdateRequest::parse(&p.payload, self.limits()) {
                    // The accepted message is published by `apply` for every door.
                    Ok(req) => self.apply(&who, thing, shadow, req).await.map(|_| ()),
                    Err(e) => Err(e),
                }
            }
            Operation::Get => match parse_token_request(&p.payload) {
                Ok(token) => match self.get_with_token(thing, shadow, token.as_deref()).await {
                    Ok(doc) => {
                        self.publish(thing, shadow, Operation::Get, TopicKind::Accepted, &doc)
                            .await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Operation::Delete => {
                // AWS ignores a delete's body beyond its clientToken; a malformed body still
                // deletes, as there is nothing in it to honour.
                let token = parse_token_request(&p.payload).ok().flatten();
                self.delete_as(&who, thing, shadow, token.as_deref())
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = result {
            tracing::debug!(
                topic = p.topic,
                client_id = p.client_id,
                "shadow request rejected: {e}"
            );
            let token = peek_client_token(&p.payload);
            let payload = e.rejected_payload(token.as_deref(), now());
            self.publish(
                thing,
                shadow,
                topic.operation,
                TopicKind::Rejected,
                &payload,
            )
            .await;
        }
    }
}
