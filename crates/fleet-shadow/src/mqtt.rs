//! The MQTT API: device publishes on `$aws/things/+/shadow/#` (already allowed by the device
//! endpoint's `iot:Publish` check on the exact topic) become shadow requests; answers go to
//! the request's `accepted`/`rejected` topic.

use crate::{Done, Request, RequestOp, ShadowService, now};
use futures::FutureExt;
use lichen_fleet_mqtt::{DevicePublish, EndpointError};
use lichen_shadow::{
    Operation, ShadowError, ShadowTopic, TopicKind, UpdateRequest, parse_token_request,
    peek_client_token,
};

/// The topics the service takes from devices.
pub const SHADOW_TOPICS: &str = "$aws/things/+/shadow/#";
/// Requests committed together at most: what arrived while the previous batch committed.
const MAX_BATCH: usize = 256;
/// Requests waiting at most; more are answered 429.
const MAX_PENDING: usize = 16_384;

impl ShadowService {
    /// Serves the shadow topics on the endpoint given to [`ShadowService::new`] until it stops.
    /// Requests are handled in arrival order, in batches of those waiting (one transaction per
    /// batch), so a device's updates apply in the order it sent them and a burst shares fsyncs.
    pub fn serve_mqtt(&self) -> Result<tokio::task::JoinHandle<()>, EndpointError> {
        let Some(endpoint) = &self.inner.endpoint else {
            return Err(EndpointError::Stopped);
        };
        let mut topics = endpoint.serve_topics(SHADOW_TOPICS)?;
        // The endpoint's own queue is short and drops silently when full: move requests into
        // ours at once, and answer those beyond it 429 Too Many Requests, as AWS throttles.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<DevicePublish>(MAX_PENDING);
        let reader = self.clone();
        tokio::spawn(async move {
            while let Some(p) = topics.recv().await {
                if let Err(tokio::sync::mpsc::error::TrySendError::Full(p)) = tx.try_send(p)
                    && let Some(topic) = ShadowTopic::parse(&p.topic)
                    && topic.kind == TopicKind::Request
                {
                    reader.reject(&topic, &p, &ShadowError::throttled()).await;
                }
            }
        });
        let service = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.recv().now_or_never() {
                        Some(Some(p)) => batch.push(p),
                        _ => break,
                    }
                }
                service.on_publishes(batch).await;
            }
        }))
    }

    async fn on_publishes(&self, publishes: Vec<DevicePublish>) {
        let mut requests = Vec::with_capacity(publishes.len());
        let mut sources = Vec::with_capacity(publishes.len());
        for p in publishes {
            let Some(topic) = ShadowTopic::parse(&p.topic) else {
                tracing::debug!(
                    topic = p.topic,
                    client_id = p.client_id,
                    "not a shadow request topic; ignored"
                );
                continue;
            };
            if topic.kind != TopicKind::Request {
                // Only the service answers on response topics: a device's publish there reaches
                // no one, so no device can forge another's responses.
                tracing::debug!(
                    topic = p.topic,
                    client_id = p.client_id,
                    "publish to a shadow response topic dropped"
                );
                continue;
            }
            let op = match topic.operation {
                Operation::Update => {
                    UpdateRequest::parse(&p.payload, self.limits()).map(RequestOp::Update)
                }
                Operation::Get => parse_token_request(&p.payload).map(RequestOp::Get),
                // AWS ignores a delete's body beyond its clientToken.
                Operation::Delete => Ok(RequestOp::Delete(
                    parse_token_request(&p.payload).ok().flatten(),
                )),
            };
            match op {
                Ok(op) => {
                    requests.push(Request {
                        who: format!("certificate/{}", p.certificate_id),
                        thing: topic.thing.clone(),
                        shadow: topic.shadow.clone(),
                        op,
                    });
                    sources.push((topic, p));
                }
                Err(e) => self.reject(&topic, &p, &e).await,
            }
        }
        if requests.is_empty() {
            return;
        }
        let results = self.run_batch(requests).await;
        for ((topic, p), result) in sources.iter().zip(results) {
            match result {
                // Updates and deletes were published by `run_batch` for every door.
                Ok(Done::Got(doc)) => {
                    self.publish(
                        &topic.thing,
                        topic.shadow.as_deref(),
                        Operation::Get,
                        TopicKind::Accepted,
                        &doc,
                    )
                    .await
                }
                Ok(_) => {}
                Err(e) => self.reject(topic, p, &e).await,
            }
        }
    }

    async fn reject(&self, topic: &ShadowTopic, p: &DevicePublish, e: &ShadowError) {
        tracing::debug!(
            topic = p.topic,
            client_id = p.client_id,
            "shadow request rejected: {e}"
        );
        let token = peek_client_token(&p.payload);
        let payload = e.rejected_payload(token.as_deref(), now());
        self.publish(
            &topic.thing,
            topic.shadow.as_deref(),
            topic.operation,
            TopicKind::Rejected,
            &payload,
        )
        .await;
    }
}
