//! Sync with the cloud's shadow service over the core's cloud link (§2.6).
//!
//! The link is the `iot_core` bus: requests are published on `$aws/things/<t>/shadow[/name/<n>]/
//! (get|update|delete)` with a `clientToken` of ours; answers and the cloud's own changes arrive
//! on `…/+/accepted` and `…/+/rejected`, which this worker subscribes to per synced shadow (the
//! cloud link subscribes upstream to what the bus holds). An answer carrying one of our tokens
//! completes that request; any other `update`/`delete` accepted is a change made in the cloud
//! and schedules that shadow.
//!
//! Every sync of a shadow is a full sync: read the cloud document, read the local one and the
//! last synced state (the common ancestor), merge three ways ([`crate::merge`]) and write the
//! side(s) that differ from the result, each with its version as an optimistic lock (a conflict
//! retries the whole sync). Deletes: a shadow absent on one side that the last sync saw is a
//! delete when the other side has not changed since; otherwise the surviving side recreates it.
//!
//! Triggers: (re)connection and configuration (every synced shadow), a local change (the
//! durable `sync_queue`, written in the change's own transaction), a cloud change. `realTime`
//! syncs at once; `periodic` every `delay`. Offline nothing is sent: local changes wait in the
//! queue (also across restarts and kill -9) and the cloud's are read on reconnect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lichen_bus::{Bus, Message, Payload, ReceiveMode, SubscribeOptions};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::SERVICE_NAME;
use crate::config::{Direction, ShadowConfig, ShadowId, Strategy};
use crate::manager::{Origin, Shadows, now_secs};
use crate::merge::{merge_states, patch, state_of};
use crate::ratelimit::TokenBucket;
use crate::store::{self, SyncRow};
use crate::topics::prefix;

/// How long a cloud request may take before it is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const TOKEN_PREFIX: &str = "lichen-sync-";
/// Wait after a (re)connection before the first request.
const SETTLE: Duration = Duration::from_millis(500);
/// While changes wait in the queue, the queue is looked at again at least this often.
const QUEUE_RECHECK: Duration = Duration::from_secs(5);

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Value, (u16, String)>>>>>;

#[derive(Debug)]
enum SyncError {
    /// Offline, timed out, throttled, a 5xx or a conflict: try again later.
    Retry(String),
    /// Refused for good (a 4xx other than 409): drop this change.
    Skip(String),
}

/// The running sync; dropping it (or [`SyncHandle::stop`]) stops the worker and its
/// subscriptions.
pub struct SyncHandle {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    config_tx: watch::Sender<ShadowConfig>,
}

impl SyncHandle {
    /// A new configuration: resubscribes and syncs every configured shadow.
    pub fn reconfigure(&self, c: ShadowConfig) {
        let _ = self.config_tx.send(c);
    }

    pub fn stop(self) {}
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Worker {
    shadows: Shadows,
    iot_core: Bus,
    pending: Pending,
    outbound: Mutex<TokenBucket>,
}

/// Starts syncing `shadows` over `iot_core` while `connected` is true.
pub fn spawn(
    shadows: Shadows,
    iot_core: Bus,
    connected: watch::Receiver<bool>,
    config: ShadowConfig,
) -> SyncHandle {
    let (config_tx, config_rx) = watch::channel(config.clone());
    let worker = Arc::new(Worker {
        shadows,
        iot_core,
        pending: Arc::new(Mutex::new(HashMap::new())),
        outbound: Mutex::new(TokenBucket::new(
            config.rate_limits.max_outbound_sync_updates_per_second,
            Instant::now(),
        )),
    });
    let task = tokio::spawn(run(worker, connected, config_rx));
    SyncHandle {
        tasks: vec![task],
        config_tx,
    }
}

/// Subscribes to the answers and changes of every synced shadow; what is not an answer to one
/// of our requests is reported on `changed`.
fn listen(
    w: &Arc<Worker>,
    shadows: &BTreeSet<ShadowId>,
    changed: mpsc::UnboundedSender<ShadowId>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![];
    for (thing, shadow) in shadows {
        for kind in ["accepted", "rejected"] {
            let filter = format!("{}/+/{kind}", prefix(thing, shadow));
            let mut sub = match w.iot_core.subscribe(
                &filter,
                SubscribeOptions {
                    receive_mode: Some(ReceiveMode::ReceiveMessagesFromOthers),
                    subscriber_id: SERVICE_NAME.to_string(),
                    queue_capacity: 0,
                },
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(service = SERVICE_NAME, filter, error = %e, "cannot subscribe for shadow sync");
                    continue;
                }
            };
            let pending = w.pending.clone();
            let changed = changed.clone();
            let id = (thing.clone(), shadow.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(d) = sub.recv().await {
                    let body: Value = match &d.message.payload {
                        Payload::Binary(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
                        Payload::Json(v) => v.clone(),
                    };
                    let op = d.topic.rsplit('/').nth(1).unwrap_or("");
                    let token = body
                        .get("clientToken")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if token.starts_with(TOKEN_PREFIX) {
                        let waiter = pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(token);
                        if let Some(tx) = waiter {
                            let answer = if d.topic.ends_with("/accepted") {
                                Ok(body)
                            } else {
                                let code = body.get("code").and_then(Value::as_u64).unwrap_or(500);
                                let msg = body.get("message").and_then(Value::as_str).unwrap_or("");
                                Err((code as u16, msg.to_string()))
                            };
                            let _ = tx.send(answer);
                        }
                        continue;
                    }
                    if d.topic.ends_with("/accepted") && (op == "update" || op == "delete") {
                        let _ = changed.send(id.clone());
                    }
                }
            }));
        }
    }
    tasks
}

fn backoff(attempts: u32) -> Duration {
    Duration::from_secs((3u64 << attempts.min(5)).min(60))
}

async fn run(
    w: Arc<Worker>,
    mut connected: watch::Receiver<bool>,
    mut config_rx: watch::Receiver<ShadowConfig>,
) {
    let (changed_tx, mut changed_rx) = mpsc::unbounded_channel::<ShadowId>();
    let mut config = config_rx.borrow_and_update().clone();
    let mut listeners = listen(&w, &synced(&config), changed_tx.clone());
    // Shadow → (attempts, not before).
    let mut todo: BTreeMap<ShadowId, (u32, Instant)> = BTreeMap::new();
    let mut full = true;
    let mut next_tick = Instant::now();
    loop {
        // A change seen here (not in the select below) is a flap during a sync: the link went
        // down and up again, and either side may have moved meanwhile.
        if connected.has_changed().unwrap_or(false) {
            full = true;
        }
        let online = *connected.borrow_and_update();
        if full && online {
            // The cloud link restores its upstream subscriptions after it reports the
            // connection; a request sent before that would wait for an answer that never comes.
            tokio::time::sleep(SETTLE).await;
            let now = Instant::now();
            for id in synced(&config) {
                todo.entry(id).or_insert((0, now));
            }
            full = false;
        }
        if online {
            // Local changes queued durably (also those left by a previous run).
            if let Ok(q) = w.shadows.queued().await {
                let now = Instant::now();
                for id in q {
                    if synced(&config).contains(&id) {
                        todo.entry(id).or_insert((0, now));
                    }
                }
            }
        }
        let now = Instant::now();
        let due = match config.strategy {
            Strategy::RealTime => true,
            Strategy::Periodic(_) => now >= next_tick,
        };
        if online && due {
            if let Strategy::Periodic(d) = config.strategy {
                next_tick = now + d;
            }
            let ready: Vec<ShadowId> = todo
                .iter()
                .filter(|(_, (_, at))| *at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in ready {
                if !*connected.borrow() {
                    break;
                }
                match w.full_sync(&id.0, &id.1, &config).await {
                    Ok(()) => {
                        todo.remove(&id);
                    }
                    Err(SyncError::Skip(why)) => {
                        tracing::error!(service = SERVICE_NAME, thing = %id.0, shadow = %id.1, reason = %why, "shadow not synced; the cloud refused it");
                        let (t, s) = id.clone();
                        let _ = w.shadows.store().with(|c| store::dequeue(c, &t, &s));
                        todo.remove(&id);
                    }
                    Err(SyncError::Retry(why)) => {
                        let e = todo.entry(id.clone()).or_insert((0, now));
                        e.0 += 1;
                        e.1 = Instant::now() + backoff(e.0 - 1);
                        tracing::warn!(service = SERVICE_NAME, thing = %id.0, shadow = %id.1, reason = %why, retry_in_s = backoff(e.0 - 1).as_secs(), "shadow sync will be retried");
                    }
                }
            }
        }
        // Sleep until something happens: a change on either side, the connection, the
        // configuration, a retry or the next period.
        let mut wake = todo.values().map(|(_, at)| *at).min();
        if !todo.is_empty() {
            let recheck = Instant::now() + QUEUE_RECHECK;
            wake = Some(wake.map_or(recheck, |w| w.min(recheck)));
        }
        if let Strategy::Periodic(_) = config.strategy
            && !todo.is_empty()
        {
            wake = Some(wake.map_or(next_tick, |w| w.max(next_tick)));
        }
        let sleep = async {
            match wake {
                Some(at) if online => tokio::time::sleep_until(at.into()).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            r = connected.changed() => {
                if r.is_err() { return; }
                // A new connection: both sides may have moved; sync everything.
                full = true;
            }
            r = config_rx.changed() => {
                if r.is_err() { return; }
                config = config_rx.borrow_and_update().clone();
                for l in listeners.drain(..) { l.abort(); }
                listeners = listen(&w, &synced(&config), changed_tx.clone());
                *w.outbound.lock().unwrap_or_else(|p| p.into_inner()) = TokenBucket::new(config.rate_limits.max_outbound_sync_updates_per_second, Instant::now());
                todo.retain(|id, _| synced(&config).contains(id));
                full = true;
            }
            Some(id) = changed_rx.recv() => {
                let direction = config.sync.as_ref().map(|s| s.direction);
                // deviceToCloud ignores the cloud's changes (the next local change overwrites them).
                if direction != Some(Direction::DeviceToCloud) {
                    todo.entry(id).or_insert((0, Instant::now()));
                }
            }
            () = w.shadows.queued_notify().notified() => {}
            () = sleep => {}
        }
    }
}

fn synced(c: &ShadowConfig) -> BTreeSet<ShadowId> {
    c.sync
        .as_ref()
        .map(|s| s.shadows.clone())
        .unwrap_or_default()
}

impl Worker {
    /// One request to the cloud: `Ok(Ok(accepted))`, `Ok(Err((code, message)))` when rejected.
    async fn request(
        &self,
        thing: &str,
        shadow: &str,
        op: &str,
        mut body: Value,
    ) -> Result<Result<Value, (u16, String)>, SyncError> {
        let wait = self
            .outbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let token = format!("{TOKEN_PREFIX}{}", uuid::Uuid::new_v4().simple());
        body["clientToken"] = json!(token);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), tx);
        let topic = format!("{}/{op}", prefix(thing, shadow));
        let sent = self.iot_core.publish(
            &topic,
            Message {
                payload: Payload::Binary(Bytes::from(
                    serde_json::to_vec(&body).unwrap_or_default(),
                )),
                publisher: SERVICE_NAME.to_string(),
            },
        );
        let answer = match sent {
            Ok(_) => tokio::time::timeout(REQUEST_TIMEOUT, rx).await,
            Err(e) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&token);
                return Err(SyncError::Retry(format!("cannot publish on {topic}: {e}")));
            }
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
        match answer {
            Ok(Ok(Ok(v))) => Ok(Ok(v)),
            Ok(Ok(Err((code, msg)))) if code == 409 || code == 429 || code >= 500 => {
                Err(SyncError::Retry(format!("{op} on {topic}: {code} {msg}")))
            }
            Ok(Ok(Err(e))) => Ok(Err(e)),
            _ => Err(SyncError::Retry(format!(
                "no answer to {op} on {topic} within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn cloud_get(&self, thing: &str, shadow: &str) -> Result<Option<Value>, SyncError> {
        match self.request(thing, shadow, "get", json!({})).await? {
            Ok(doc) => Ok(Some(doc)),
            Err((404, _)) => Ok(None),
            Err((code, msg)) => Err(SyncError::Skip(format!("get: {code} {msg}"))),
        }
    }

    /// Writes `to` over the cloud's `from` state (`version`: the cloud's, as a lock); returns
    /// the cloud's new version.
    async fn cloud_write(
        &self,
        thing: &str,
        shadow: &str,
        from: &Value,
        to: &Value,
        version: Option<u64>,
    ) -> Result<Option<u64>, SyncError> {
        let p = patch(from, to);
        if p.as_object().is_some_and(|m| m.is_empty()) && version.is_some() {
            return Ok(None);
        }
        let mut body = json!({"state": p});
        if let Some(v) = version {
            body["version"] = json!(v);
        }
        match self.request(thing, shadow, "update", body).await? {
            Ok(a) => Ok(a.get("version").and_then(Value::as_u64)),
            Err((code, msg)) => Err(SyncError::Skip(format!("update: {code} {msg}"))),
        }
    }

    async fn full_sync(
        &self,
        thing: &str,
        shadow: &str,
        config: &ShadowConfig,
    ) -> Result<(), SyncError> {
        let direction = config
            .sync
            .as_ref()
            .map_or(Direction::BetweenDeviceAndCloud, |s| s.direction);
        // deviceToCloud reads it too: its version is the lock for the overwrite.
        let cloud = self.cloud_get(thing, shadow).await?;
        let (t, s) = (thing.to_string(), shadow.to_string());
        let (row, sync) = self
            .shadows
            .store()
            .with(|c| Ok((store::read_row(c, &t, &s)?, store::read_sync(c, &t, &s)?)))
            .map_err(|e| SyncError::Retry(e.to_string()))?;
        let sync = sync.unwrap_or_default();
        let local = row.as_ref().and_then(|r| r.document.clone());
        let local_version = row.as_ref().map_or(0, |r| r.version);
        let cloud_version = cloud
            .as_ref()
            .and_then(|d| d.get("version"))
            .and_then(Value::as_u64);
        let local_state = local.as_ref().map(state_of);
        let cloud_state = cloud.as_ref().map(state_of);
        let empty = json!({});

        // What each side should hold afterwards (None = no shadow).
        let target: Option<Value> = match direction {
            Direction::DeviceToCloud => local_state.clone(),
            Direction::CloudToDevice => cloud_state.clone(),
            Direction::BetweenDeviceAndCloud => match (&local_state, &cloud_state) {
                (None, None) => None,
                (Some(l), None) => {
                    let cloud_deleted_since =
                        sync.last_synced.is_some() && local_version == sync.local_version;
                    (!cloud_deleted_since).then(|| l.clone())
                }
                (None, Some(c)) => {
                    let local_deleted_since =
                        sync.last_synced.is_some() && cloud_version == Some(sync.cloud_version);
                    (!local_deleted_since).then(|| c.clone())
                }
                (Some(l), Some(c)) => Some(merge_states(sync.last_synced.as_ref(), l, c)),
            },
        };

        // The cloud side.
        let mut new_cloud_version = cloud_version.unwrap_or(sync.cloud_version);
        if direction != Direction::CloudToDevice {
            match (&target, &cloud_state) {
                (None, Some(_)) => match self.request(thing, shadow, "delete", json!({})).await? {
                    Ok(a) => {
                        new_cloud_version = a
                            .get("version")
                            .and_then(Value::as_u64)
                            .unwrap_or(new_cloud_version)
                    }
                    Err((404, _)) => {}
                    Err((code, msg)) => {
                        return Err(SyncError::Skip(format!("delete: {code} {msg}")));
                    }
                },
                (Some(t), c) if c.as_ref() != Some(t) => {
                    if let Some(v) = self
                        .cloud_write(
                            thing,
                            shadow,
                            c.as_ref().unwrap_or(&empty),
                            t,
                            cloud_version,
                        )
                        .await?
                    {
                        new_cloud_version = v;
                    }
                }
                _ => {}
            }
        }

        // The local side.
        let mut new_local_version = local_version;
        if direction != Direction::DeviceToCloud {
            match (&target, &local_state) {
                (None, Some(_)) => match self.shadows.delete(thing, shadow, Origin::Sync).await {
                    Ok(_) | Err(crate::rules::ShadowError { code: 404, .. }) => {}
                    Err(e) => return Err(SyncError::Retry(format!("local delete: {e}"))),
                },
                (Some(t), l) if l.as_ref() != Some(t) => {
                    let mut body = json!({"state": patch(l.as_ref().unwrap_or(&empty), t)});
                    if l.is_some() {
                        body["version"] = json!(local_version);
                    }
                    match self
                        .shadows
                        .update(
                            thing,
                            shadow,
                            serde_json::to_vec(&body).unwrap_or_default(),
                            Origin::Sync,
                        )
                        .await
                    {
                        Ok(u) => {
                            new_local_version =
                                u.document["version"].as_u64().unwrap_or(local_version + 1)
                        }
                        Err(e) if e.code == 409 => {
                            return Err(SyncError::Retry(
                                "a local change arrived during the sync".into(),
                            ));
                        }
                        Err(e) => return Err(SyncError::Skip(format!("local update: {e}"))),
                    }
                }
                _ => {}
            }
        }

        // Record the common ancestor; the queue entry goes only if no local change came since.
        let record = SyncRow {
            last_synced: target.clone(),
            local_version: new_local_version,
            cloud_version: new_cloud_version,
            cloud_deleted: target.is_none(),
            last_sync_time: now_secs(),
        };
        let still_current = self
            .shadows
            .store()
            .with(|c| {
                let tx = c.transaction()?;
                let now = store::read_row(&tx, &t, &s)?;
                let current = now.as_ref().map_or(0, |r| r.version) == new_local_version
                    && now.as_ref().and_then(|r| r.document.as_ref()).is_some() == target.is_some();
                store::write_sync(&tx, &t, &s, &record)?;
                if current {
                    store::dequeue(&tx, &t, &s)?;
                }
                tx.commit()?;
                Ok(current)
            })
            .map_err(|e| SyncError::Retry(e.to_string()))?;
        if !still_current {
            return Err(SyncError::Retry(
                "a local change arrived during the sync".into(),
            ));
        }
        tracing::debug!(
            service = SERVICE_NAME,
            thing,
            shadow,
            local_version = new_local_version,
            cloud_version = new_cloud_version,
            "shadow synced"
        );
        Ok(())
    }
}
