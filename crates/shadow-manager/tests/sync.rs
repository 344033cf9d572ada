//! Sync against an in-process cloud: a responder on the `iot_core` bus that applies the same
//! document rules (`lichen_shadow`) as the fleet's shadow service and answers on the shadow
//! topics, as the cloud link would deliver them. The connection is a `watch` the test flips.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use lichen_bus::{Bus, Message, Payload, ReceiveMode, SubscribeOptions};
use lichen_shadow::{Limits, Stored, UpdateRequest};
use lichen_shadow_manager::{Origin, ShadowManager, Shadows};
use serde_json::{Value, json};
use tokio::sync::watch;

type Docs = Arc<Mutex<HashMap<(String, String), Stored>>>;

#[derive(Clone)]
struct Cloud {
    bus: Bus,
    docs: Docs,
}

fn publish(bus: &Bus, topic: &str, v: &Value) {
    bus.publish(
        topic,
        Message {
            payload: Payload::Binary(Bytes::from(v.to_string())),
            publisher: "cloud".into(),
        },
    )
    .unwrap();
}

fn prefix(thing: &str, shadow: &str) -> String {
    if shadow.is_empty() {
        format!("$aws/things/{thing}/shadow")
    } else {
        format!("$aws/things/{thing}/shadow/name/{shadow}")
    }
}

impl Cloud {
    fn start(bus: Bus) -> Cloud {
        let cloud = Cloud {
            bus: bus.clone(),
            docs: Arc::default(),
        };
        let mut sub = bus
            .subscribe(
                "$aws/things/#",
                SubscribeOptions {
                    receive_mode: Some(ReceiveMode::ReceiveMessagesFromOthers),
                    subscriber_id: "cloud".into(),
                    queue_capacity: 0,
                },
            )
            .unwrap();
        let c = cloud.clone();
        tokio::spawn(async move {
            while let Some(d) = sub.recv().await {
                let Payload::Binary(body) = &d.message.payload else {
                    continue;
                };
                let levels: Vec<&str> = d.topic.split('/').collect();
                let thing = levels[2].to_string();
                let (shadow, op) = match &levels[3..] {
                    ["shadow", op] => (String::new(), *op),
                    ["shadow", "name", n, op] => (n.to_string(), *op),
                    _ => continue,
                };
                c.serve(&thing, &shadow, op, body);
            }
        });
        cloud
    }

    fn serve(&self, thing: &str, shadow: &str, op: &str, body: &[u8]) {
        let p = prefix(thing, shadow);
        let token = lichen_shadow::peek_client_token(body);
        let mut docs = self.docs.lock().unwrap();
        let key = (thing.to_string(), shadow.to_string());
        let stored = docs.get(&key).cloned().unwrap_or_default();
        let sh = (!shadow.is_empty()).then_some(shadow);
        let result = match op {
            "get" => lichen_shadow::get(&stored, thing, sh, token.as_deref(), 1),
            "delete" => {
                lichen_shadow::delete(&stored, thing, sh, token.as_deref(), 1).map(|(s, v)| {
                    docs.insert(key.clone(), s);
                    v
                })
            }
            "update" => UpdateRequest::parse(body, &Limits::default())
                .and_then(|r| lichen_shadow::apply_update(&stored, &r, &Limits::default(), 1))
                .map(|o| {
                    docs.insert(key.clone(), Stored::Present(o.document));
                    o.accepted
                }),
            _ => return,
        };
        drop(docs);
        match result {
            Ok(v) => publish(&self.bus, &format!("{p}/{op}/accepted"), &v),
            Err(e) => publish(
                &self.bus,
                &format!("{p}/{op}/rejected"),
                &e.rejected_payload(token.as_deref(), 1),
            ),
        }
    }

    /// A change made in the cloud by someone else (an operator, the device's app in the cloud).
    fn update(&self, thing: &str, shadow: &str, body: Value) {
        self.serve(thing, shadow, "update", body.to_string().as_bytes());
    }

    fn state(&self, thing: &str, shadow: &str) -> Option<Value> {
        let docs = self.docs.lock().unwrap();
        let d = docs
            .get(&(thing.to_string(), shadow.to_string()))?
            .document()?
            .to_value();
        Some(d["state"].clone())
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    manager: ShadowManager,
    shadows: Shadows,
    cloud: Cloud,
    online: watch::Sender<bool>,
}

async fn rig(config: Value) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let iot_core = Bus::new();
    let cloud = Cloud::start(iot_core.clone());
    let (online, connected) = watch::channel(true);
    let config_store = lichen_config::ConfigStore::open(&dir.path().join("config")).unwrap();
    let authz = Arc::new(lichen_ipc::Authorizer::new(
        Arc::new(config_store),
        Arc::new(lichen_ipc::TokenRegistry::new()),
    ));
    let router = Arc::new(lichen_ipc::Router::new(authz));
    let manager = ShadowManager::new(dir.path().into(), router, Bus::new(), iot_core, connected);
    manager.apply(Some(&config), "core").await.unwrap();
    let shadows = manager.shadows().await.unwrap();
    Rig {
        _dir: dir,
        manager,
        shadows,
        cloud,
        online,
    }
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn local_state(s: &Shadows, shadow: &str) -> Option<Value> {
    s.get("core", shadow).await.ok().map(|d| d["state"].clone())
}

async fn local_update(s: &Shadows, shadow: &str, body: Value) {
    s.update("core", shadow, body.to_string().into_bytes(), Origin::Local)
        .await
        .unwrap();
}

fn sync_all() -> Value {
    json!({"synchronize": {"coreThing": {"classic": true, "namedShadows": ["n", lichen_shadow_manager::DEPLOYMENT_SHADOW]}}})
}

#[tokio::test]
async fn a_change_on_either_side_reaches_the_other() {
    let r = rig(sync_all()).await;
    local_update(&r.shadows, "", json!({"state": {"reported": {"temp": 20}}})).await;
    eventually("the local report in the cloud", async || {
        (r.cloud.state("core", "") == Some(json!({"reported": {"temp": 20}}))).then_some(())
    })
    .await;
    r.cloud
        .update("core", "", json!({"state": {"desired": {"temp": 25}}}));
    eventually("the cloud's desired locally", async || {
        (local_state(&r.shadows, "").await
            == Some(json!({"desired": {"temp": 25}, "reported": {"temp": 20}})))
        .then_some(())
    })
    .await;
    // A named shadow created in the cloud appears locally.
    r.cloud
        .update("core", "n", json!({"state": {"desired": {"x": 1}}}));
    eventually("the named shadow locally", async || {
        local_state(&r.shadows, "n").await
    })
    .await;
    // Deletes sync as deletes.
    r.shadows.delete("core", "n", Origin::Local).await.unwrap();
    eventually("the delete in the cloud", async || {
        r.cloud.state("core", "n").is_none().then_some(())
    })
    .await;
    eventually("the queue to drain", async || {
        r.shadows.queued().await.unwrap().is_empty().then_some(())
    })
    .await;
    drop(r.manager);
}

#[tokio::test]
async fn offline_changes_on_both_sides_merge_on_reconnect() {
    let r = rig(sync_all()).await;
    local_update(
        &r.shadows,
        "",
        json!({"state": {"reported": {"a": 0, "b": 0, "same": 0}, "desired": {"d": 0}}}),
    )
    .await;
    eventually("the first sync", async || {
        r.cloud.state("core", "").map(|_| ())
    })
    .await;
    eventually("the queue to drain", async || {
        r.shadows.queued().await.unwrap().is_empty().then_some(())
    })
    .await;

    r.online.send_replace(false);
    // Different fields on each side, and the same reported and desired fields on both.
    local_update(
        &r.shadows,
        "",
        json!({"state": {"reported": {"a": "local", "same": "local"}, "desired": {"d": "local"}}}),
    )
    .await;
    r.cloud.update(
        "core",
        "",
        json!({"state": {"reported": {"b": "cloud", "same": "cloud"}, "desired": {"d": "cloud"}}}),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        r.shadows.queued().await.unwrap(),
        vec![("core".to_string(), String::new())]
    );
    assert_eq!(
        r.cloud.state("core", "").unwrap()["reported"]["a"],
        json!(0),
        "nothing is sent while offline"
    );

    r.online.send_replace(true);
    let want = json!({
        "desired": {"d": "cloud"},
        "reported": {"a": "local", "b": "cloud", "same": "local"},
    });
    eventually("the merge in the cloud", async || {
        (r.cloud.state("core", "") == Some(want.clone())).then_some(())
    })
    .await;
    eventually("the merge locally", async || {
        (local_state(&r.shadows, "").await == Some(want.clone())).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_deployment_shadow_is_never_synced() {
    let r = rig(sync_all()).await;
    let dep = lichen_shadow_manager::DEPLOYMENT_SHADOW;
    local_update(&r.shadows, dep, json!({"state": {"reported": {"s": 1}}})).await;
    local_update(&r.shadows, "n", json!({"state": {"reported": {"s": 1}}})).await;
    eventually("the named shadow in the cloud", async || {
        r.cloud.state("core", "n").map(|_| ())
    })
    .await;
    assert!(r.cloud.state("core", dep).is_none());
    assert!(r.shadows.queued().await.unwrap().is_empty());
}

#[tokio::test]
async fn one_way_directions() {
    let r =
        rig(json!({"synchronize": {"coreThing": {"classic": true}, "direction": "cloudToDevice"}}))
            .await;
    local_update(&r.shadows, "", json!({"state": {"reported": {"local": 1}}})).await;
    r.cloud
        .update("core", "", json!({"state": {"desired": {"cloud": 1}}}));
    eventually("the cloud's document locally", async || {
        (local_state(&r.shadows, "").await == Some(json!({"desired": {"cloud": 1}}))).then_some(())
    })
    .await;
    assert_eq!(
        r.cloud.state("core", ""),
        Some(json!({"desired": {"cloud": 1}}))
    );

    let r =
        rig(json!({"synchronize": {"coreThing": {"classic": true}, "direction": "deviceToCloud"}}))
            .await;
    r.cloud
        .update("core", "", json!({"state": {"desired": {"cloud": 1}}}));
    local_update(&r.shadows, "", json!({"state": {"reported": {"local": 1}}})).await;
    eventually("the device's document in the cloud", async || {
        (r.cloud.state("core", "") == Some(json!({"reported": {"local": 1}}))).then_some(())
    })
    .await;
    assert_eq!(
        local_state(&r.shadows, "").await,
        Some(json!({"reported": {"local": 1}}))
    );
}

#[tokio::test]
async fn periodic_strategy_syncs_on_its_tick() {
    let r = rig(json!({
        "synchronize": {"coreThing": {"classic": true}},
        "strategy": {"type": "periodic", "delay": 1}
    }))
    .await;
    local_update(&r.shadows, "", json!({"state": {"reported": {"p": 1}}})).await;
    eventually("the periodic sync", async || {
        (r.cloud.state("core", "") == Some(json!({"reported": {"p": 1}}))).then_some(())
    })
    .await;
    r.cloud
        .update("core", "", json!({"state": {"desired": {"p": 2}}}));
    eventually("the cloud's change locally on a later tick", async || {
        (local_state(&r.shadows, "").await
            == Some(json!({"desired": {"p": 2}, "reported": {"p": 1}})))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_reconfiguration_stops_syncing_what_it_drops() {
    let r = rig(sync_all()).await;
    r.manager
        .apply(
            Some(&json!({"synchronize": {"coreThing": {"classic": false, "namedShadows": ["n"]}}})),
            "core",
        )
        .await
        .unwrap();
    local_update(&r.shadows, "", json!({"state": {"reported": {"x": 1}}})).await;
    local_update(&r.shadows, "n", json!({"state": {"reported": {"x": 1}}})).await;
    eventually("the named shadow in the cloud", async || {
        r.cloud.state("core", "n").map(|_| ())
    })
    .await;
    assert!(
        r.cloud.state("core", "").is_none(),
        "the classic shadow is no longer synced"
    );
}
