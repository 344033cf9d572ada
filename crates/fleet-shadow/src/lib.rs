//! The fleet's Device Shadow service, as AWS IoT Core serves it: classic and named shadows of
//! any thing, kept in the registry's database, reached over MQTT (`$aws/things/<thing>/shadow
//! [/name/<shadow>]/{update,get,delete}` with `accepted`/`rejected`, `update/delta` and
//! `update/documents`), over the `iot-data` REST API (GetThingShadow, UpdateThingShadow,
//! DeleteThingShadow, ListNamedShadowsForThing; SigV4 for operators, mutual TLS for devices on
//! the data plane), and from inside the fleet through [`ShadowService`].
//!
//! The document rules are `lichen-shadow`'s; this crate stores, authorizes and delivers.
//! Devices' MQTT requests are authorized by the device endpoint (`iot:Publish` on the request
//! topic, `iot:Receive` on each response); data-plane REST requests by the certificate's IoT
//! policies for `iot:<Operation>` on the thing's ARN.
//!
//! Every accepted update, from any of the three doors, is published on `update/accepted`,
//! `update/delta` (when desired and reported differ) and `update/documents`; every delete on
//! `delete/accepted`. `get/accepted` and the `rejected` topics answer MQTT requests only.
//!
//! Architecture invariant: a shadow change is one registry transaction that reads the stored
//! document, checks the version and writes the result, so concurrent requests (from any fleet
//! process sharing the database) never both pass one version; messages about a change are
//! published only after it committed.

mod mqtt;
mod rest;

pub use lichen_shadow::{ErrorCode, Limits, ShadowError};

use bytes::Bytes;
use lichen_fleet_mqtt::{DeviceEndpoint, QoS};
use lichen_fleet_registry::{PageRequest, Registry, ShadowRecord, ShadowWrite};
use lichen_shadow::{
    Document, Operation, Stored, TopicKind, UpdateOutcome, UpdateRequest, shadow_topic,
    validate_shadow_name, validate_thing_name,
};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Who the Rust handle's changes are audited as.
const SERVICE_WHO: &str = "lichen";

/// A committed change to a shadow, for fleet services that follow shadows (the deployment
/// service reads a core's reported status this way).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowEvent {
    pub thing: String,
    /// `None` for the classic shadow.
    pub shadow: Option<String>,
    pub change: ShadowChange,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ShadowChange {
    /// An accepted update: the `/update/documents` payload (`previous?`, `current`).
    Updated { documents: Value },
    /// A delete; the version the shadow keeps.
    Deleted { version: u64 },
}

/// One page of ListNamedShadowsForThing.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedShadows {
    pub names: Vec<String>,
    pub next_token: Option<String>,
}

/// The shadow service: a cheap, clone-able handle.
#[derive(Clone)]
pub struct ShadowService {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    endpoint: Option<DeviceEndpoint>,
    limits: Limits,
    events: broadcast::Sender<ShadowEvent>,
}

/// Seconds since the epoch, the unit of every shadow timestamp.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check_names(thing: &str, shadow: Option<&str>) -> Result<(), ShadowError> {
    validate_thing_name(thing)?;
    if let Some(s) = shadow {
        validate_shadow_name(s)?;
    }
    Ok(())
}

fn stored(record: Option<ShadowRecord>) -> Result<Stored, ShadowError> {
    let Some(r) = record else {
        return Ok(Stored::Missing);
    };
    match r.document {
        None => Ok(Stored::Deleted {
            version: r.version.max(0) as u64,
        }),
        Some(text) => {
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                tracing::error!("stored shadow document is not JSON: {e}");
                ShadowError::internal()
            })?;
            Ok(Stored::Present(Document::from_value(&value)?))
        }
    }
}

fn registry_failure(e: lichen_fleet_registry::RegistryError) -> ShadowError {
    tracing::error!("shadow store: {e}");
    ShadowError::internal()
}

impl ShadowService {
    /// A service over `registry`; with an `endpoint`, changes are published to devices and
    /// [`ShadowService::serve_mqtt`] can serve the MQTT API.
    pub fn new(registry: Arc<Registry>, endpoint: Option<DeviceEndpoint>, limits: Limits) -> Self {
        let (events, _) = broadcast::channel(1024);
        ShadowService {
            inner: Arc::new(Inner {
                registry,
                endpoint,
                limits,
                events,
            }),
        }
    }

    /// Committed changes from now on. A receiver that lags gets `Lagged` and should re-read
    /// the shadows it follows with [`ShadowService::get`].
    pub fn subscribe(&self) -> broadcast::Receiver<ShadowEvent> {
        self.inner.events.subscribe()
    }

    /// UpdateThingShadow from inside the fleet: `update` is the request document
    /// (`{"state": {...}, "version"?}`); `client_token`, when given, is its `clientToken`.
    /// Returns the `/update/accepted` payload, after publishing it (and delta, documents) to
    /// devices as a device's own update would be.
    pub async fn update(
        &self,
        thing: &str,
        shadow_name: Option<&str>,
        mut update: Value,
        client_token: Option<String>,
    ) -> Result<Value, ShadowError> {
        if let (Some(token), Some(obj)) = (client_token, update.as_object_mut()) {
            obj.insert("clientToken".into(), Value::String(token));
        }
        let request = UpdateRequest::from_value(update, &self.inner.limits)?;
        let out = self.apply(SERVICE_WHO, thing, shadow_name, request).await?;
        Ok(out.accepted)
    }

    /// GetThingShadow: the `/get/accepted` payload, or 404.
    pub async fn get(&self, thing: &str, shadow_name: Option<&str>) -> Result<Value, ShadowError> {
        self.get_with_token(thing, shadow_name, None).await
    }

    /// DeleteThingShadow: the `/delete/accepted` payload (`{"version","timestamp"}`), or 404.
    pub async fn delete(
        &self,
        thing: &str,
        shadow_name: Option<&str>,
    ) -> Result<Value, ShadowError> {
        self.delete_as(SERVICE_WHO, thing, shadow_name, None).await
    }

    /// ListNamedShadowsForThing: names in order, `page_size` 1–100 (25 by default).
    pub async fn list_named(
        &self,
        thing: &str,
        next_token: Option<String>,
        page_size: Option<u32>,
    ) -> Result<NamedShadows, ShadowError> {
        validate_thing_name(thing)?;
        let registry = self.inner.registry.clone();
        let thing = thing.to_string();
        let page = blocking(move || {
            registry.list_named_shadows(
                &thing,
                &PageRequest {
                    token: next_token,
                    size: page_size,
                },
            )
        })
        .await?
        .map_err(|e| match e {
            lichen_fleet_registry::RegistryError::Invalid(m) => {
                ShadowError::new(ErrorCode::BadRequest, m)
            }
            e => registry_failure(e),
        })?;
        Ok(NamedShadows {
            names: page.items,
            next_token: page.next_token,
        })
    }

    pub(crate) async fn get_with_token(
        &self,
        thing: &str,
        shadow: Option<&str>,
        client_token: Option<&str>,
    ) -> Result<Value, ShadowError> {
        check_names(thing, shadow)?;
        let registry = self.inner.registry.clone();
        let (t, s) = (thing.to_string(), shadow.unwrap_or("").to_string());
        let record = blocking(move || registry.shadow(&t, &s))
            .await?
            .map_err(registry_failure)?;
        lichen_shadow::get(&stored(record)?, thing, shadow, client_token, now())
    }

    /// Applies an update as `who` (audited), then publishes and announces it.
    pub(crate) async fn apply(
        &self,
        who: &str,
        thing: &str,
        shadow: Option<&str>,
        request: UpdateRequest,
    ) -> Result<UpdateOutcome, ShadowError> {
        check_names(thing, shadow)?;
        let now = now();
        let limits = self.inner.limits;
        let registry = self.inner.registry.clone();
        let (who_s, t, s) = (
            who.to_string(),
            thing.to_string(),
            shadow.unwrap_or("").to_string(),
        );
        let out = blocking(move || {
            registry.change_shadow(&who_s, "UpdateThingShadow", &t, &s, |record| {
                let current = stored(record)?;
                let out = lichen_shadow::apply_update(&current, &request, &limits, now)?;
                let write = ShadowWrite::Document {
                    document: out.document.to_value().to_string(),
                    version: out.document.version as i64,
                };
                Ok((write, out))
            })
        })
        .await?
        .map_err(registry_failure)??;
        self.publish(
            thing,
            shadow,
            Operation::Update,
            TopicKind::Accepted,
            &out.accepted,
        )
        .await;
        if let Some(delta) = &out.delta {
            self.publish(thing, shadow, Operation::Update, TopicKind::Delta, delta)
                .await;
        }
        self.publish(
            thing,
            shadow,
            Operation::Update,
            TopicKind::Documents,
            &out.documents,
        )
        .await;
        let _ = self.inner.events.send(ShadowEvent {
            thing: thing.to_string(),
            shadow: shadow.map(str::to_string),
            change: ShadowChange::Updated {
                documents: out.documents.clone(),
            },
        });
        Ok(out)
    }

    pub(crate) async fn delete_as(
        &self,
        who: &str,
        thing: &str,
        shadow: Option<&str>,
        client_token: Option<&str>,
    ) -> Result<Value, ShadowError> {
        check_names(thing, shadow)?;
        let now = now();
        let registry = self.inner.registry.clone();
        let (who_s, t, s) = (
            who.to_string(),
            thing.to_string(),
            shadow.unwrap_or("").to_string(),
        );
        let (thing_s, shadow_s, token) = (
            thing.to_string(),
            shadow.map(str::to_string),
            client_token.map(str::to_string),
        );
        let (version, accepted) = blocking(move || {
            registry.change_shadow(&who_s, "DeleteThingShadow", &t, &s, |record| {
                let current = stored(record)?;
                let (next, accepted) = lichen_shadow::delete(
                    &current,
                    &thing_s,
                    shadow_s.as_deref(),
                    token.as_deref(),
                    now,
                )?;
                let version = next.version();
                Ok((
                    ShadowWrite::Deleted {
                        version: version as i64,
                    },
                    (version, accepted),
                ))
            })
        })
        .await?
        .map_err(registry_failure)??;
        self.publish(
            thing,
            shadow,
            Operation::Delete,
            TopicKind::Accepted,
            &accepted,
        )
        .await;
        let _ = self.inner.events.send(ShadowEvent {
            thing: thing.to_string(),
            shadow: shadow.map(str::to_string),
            change: ShadowChange::Deleted { version },
        });
        Ok(accepted)
    }

    /// Publishes a response or event to the devices subscribed to its topic (QoS 1, as AWS IoT
    /// delivers shadow messages to QoS 1 subscriptions).
    pub(crate) async fn publish(
        &self,
        thing: &str,
        shadow: Option<&str>,
        op: Operation,
        kind: TopicKind,
        payload: &Value,
    ) {
        let Some(endpoint) = &self.inner.endpoint else {
            return;
        };
        let topic = shadow_topic(thing, shadow, op, kind);
        let bytes = Bytes::from(payload.to_string());
        if let Err(e) = endpoint
            .publish(&topic, bytes, QoS::AtLeastOnce, false)
            .await
        {
            tracing::warn!(topic, "shadow message not published: {e}");
        }
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.limits
    }
}

/// Runs a registry call off the async threads (SQLite fsyncs; the PostgreSQL client blocks).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ShadowError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!("shadow store task failed: {e}");
        ShadowError::internal()
    })
}

#[cfg(test)]
mod tests;
