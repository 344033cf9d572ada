//! The shadow operations over the store: what IPC, the local topics and the sync share.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::config::ShadowConfig;
use crate::ratelimit::LocalLimits;
use crate::rules::{self, ShadowError, Updated};
use crate::store::{self, Store};
use crate::topics;

/// Who asks for a change: a local client (IPC or local topic), whose change is queued for the
/// cloud, or the sync itself, whose change is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Local,
    Sync,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Inner {
    store: Store,
    bus: lichen_bus::Bus,
    config: RwLock<ShadowConfig>,
    limits: Mutex<LocalLimits>,
    /// Wakes the sync worker: a local change was queued.
    queued: Notify,
}

/// The shadow manager's state. Cheap to clone.
#[derive(Clone)]
pub struct Shadows {
    inner: Arc<Inner>,
}

fn internal(e: impl std::fmt::Display) -> ShadowError {
    tracing::error!(service = crate::SERVICE_NAME, error = %e, "shadow store failure");
    ShadowError::new(500, "Internal service failure")
}

/// Checks the names of a request.
pub fn check_names(thing: &str, shadow: &str) -> Result<(), ShadowError> {
    if !rules::valid_thing_name(thing) {
        return Err(ShadowError::new(400, "Invalid thing name"));
    }
    if !shadow.is_empty() && !rules::valid_shadow_name(shadow) {
        return Err(ShadowError::new(400, "Invalid shadow name"));
    }
    Ok(())
}

impl Shadows {
    /// Opens the store under `dir`; events go out on `bus` (local pub/sub).
    pub fn open(dir: &std::path::Path, bus: lichen_bus::Bus) -> Result<Shadows, store::StoreError> {
        let store = Store::open(dir)?;
        let c = ShadowConfig::default();
        let limits = LocalLimits::new(
            c.rate_limits.max_total_local_requests_rate,
            c.rate_limits.max_local_requests_per_second_per_thing,
            Instant::now(),
        );
        Ok(Shadows {
            inner: Arc::new(Inner {
                store,
                bus,
                config: RwLock::new(c),
                limits: Mutex::new(limits),
                queued: Notify::new(),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn bus(&self) -> &lichen_bus::Bus {
        &self.inner.bus
    }

    pub fn config(&self) -> ShadowConfig {
        self.inner
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_config(&self, c: ShadowConfig) {
        let mut l = self.inner.limits.lock().unwrap_or_else(|p| p.into_inner());
        *l = LocalLimits::new(
            c.rate_limits.max_total_local_requests_rate,
            c.rate_limits.max_local_requests_per_second_per_thing,
            Instant::now(),
        );
        *self.inner.config.write().unwrap_or_else(|p| p.into_inner()) = c;
    }

    pub(crate) fn queued_notify(&self) -> &Notify {
        &self.inner.queued
    }

    /// A local request's rate check (429 "Too Many Requests" when over).
    pub fn admit(&self, thing: &str) -> Result<(), ShadowError> {
        let ok = self
            .inner
            .limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(thing, Instant::now());
        if ok {
            Ok(())
        } else {
            Err(ShadowError::new(429, "Too Many Requests"))
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ShadowError> + Send + 'static,
    ) -> Result<T, ShadowError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(internal)?
    }

    /// The stored document, or 404.
    pub async fn get(&self, thing: &str, shadow: &str) -> Result<Value, ShadowError> {
        check_names(thing, shadow)?;
        let (t, s) = (thing.to_string(), shadow.to_string());
        self.blocking(move |st| {
            st.with(|c| store::read_row(c, &t, &s))
                .map_err(internal)?
                .and_then(|r| r.document)
                .ok_or_else(|| rules::not_found(&t, &s))
        })
        .await
    }

    /// Applies an update request body; publishes accepted/delta/documents on local pub/sub.
    /// `expected`: for the sync, the local version its merge read (a different one is a conflict).
    pub async fn update(
        &self,
        thing: &str,
        shadow: &str,
        body: Vec<u8>,
        origin: Origin,
    ) -> Result<Updated, ShadowError> {
        check_names(thing, shadow)?;
        let config = self.config();
        let size_limit = config.size_limit;
        let enqueue = origin == Origin::Local && config.syncs_to_cloud(thing, shadow);
        let (t, s) = (thing.to_string(), shadow.to_string());
        let updated = self
            .blocking(move |st| {
                st.with(|c| {
                    let tx = c.transaction()?;
                    let row = store::read_row(&tx, &t, &s)?;
                    let now = now_secs();
                    let (doc, last) = match &row {
                        Some(r) => (r.document.as_ref(), r.version),
                        None => (None, 0),
                    };
                    let updated = match rules::apply_update(doc, last, &body, now, size_limit) {
                        Ok(u) => u,
                        Err(e) => return Ok(Err(e)),
                    };
                    store::write_document(&tx, &t, &s, &updated.document, now)?;
                    if enqueue {
                        store::enqueue(&tx, &t, &s, now)?;
                    }
                    tx.commit()?;
                    Ok(Ok(updated))
                })
                .map_err(internal)?
            })
            .await?;
        if enqueue {
            self.inner.queued.notify_one();
        }
        topics::publish_update_events(&self.inner.bus, thing, shadow, &updated);
        Ok(updated)
    }

    /// Deletes a shadow (its version stays); `{version, timestamp}` or 404.
    pub async fn delete(
        &self,
        thing: &str,
        shadow: &str,
        origin: Origin,
    ) -> Result<Value, ShadowError> {
        check_names(thing, shadow)?;
        let enqueue = origin == Origin::Local && self.config().syncs_to_cloud(thing, shadow);
        let (t, s) = (thing.to_string(), shadow.to_string());
        let out = self
            .blocking(move |st| {
                st.with(|c| {
                    let tx = c.transaction()?;
                    let Some(row) = store::read_row(&tx, &t, &s)?.filter(|r| r.document.is_some())
                    else {
                        return Ok(Err(rules::not_found(&t, &s)));
                    };
                    let now = now_secs();
                    store::mark_deleted(&tx, &t, &s, now)?;
                    if enqueue {
                        store::enqueue(&tx, &t, &s, now)?;
                    }
                    tx.commit()?;
                    Ok(Ok(json!({"version": row.version, "timestamp": now})))
                })
                .map_err(internal)?
            })
            .await?;
        if enqueue {
            self.inner.queued.notify_one();
        }
        Ok(out)
    }

    /// Named shadows of `thing` from `offset` (at most `limit`).
    pub async fn list_named(
        &self,
        thing: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, ShadowError> {
        check_names(thing, "")?;
        let t = thing.to_string();
        self.blocking(move |st| {
            st.with(|c| store::list_named(c, &t, offset, limit))
                .map_err(internal)
        })
        .await
    }

    /// The shadows queued for the cloud, oldest first.
    pub async fn queued(&self) -> Result<Vec<(String, String)>, ShadowError> {
        self.blocking(|st| st.with(|c| store::queued(c)).map_err(internal))
            .await
    }
}
