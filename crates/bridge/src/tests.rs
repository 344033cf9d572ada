use super::*;
use crate::echo::EchoGuard;
use lichen_bus::Subscription;
use serde_json::json;

fn buses() -> Buses {
    Buses {
        local_mqtt: Bus::new(),
        pubsub: Bus::new(),
        iot_core: Bus::new(),
    }
}

fn config(v: serde_json::Value) -> BridgeConfig {
    BridgeConfig::from_component_config(&v).unwrap()
}

fn bin(s: &str) -> Payload {
    Payload::Binary(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

fn publish(bus: &Bus, topic: &str, payload: Payload, publisher: &str) {
    bus.publish(
        topic,
        Message {
            payload,
            publisher: publisher.into(),
        },
    )
    .unwrap();
}

fn watch(bus: &Bus, filter: &str, who: &str) -> Subscription {
    bus.subscribe(filter, SubscribeOptions::for_subscriber(who))
        .unwrap()
}

/// Everything queued for `sub` once the bridge is idle: each bridge subscription task drains
/// its queue, and a yield lets them run on the test's single thread.
async fn drain(sub: &mut Subscription) -> Vec<(String, Payload, String)> {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    let mut out = Vec::new();
    while let Some(d) = sub.try_recv() {
        out.push((
            d.topic.clone(),
            d.message.payload.clone(),
            d.message.publisher.clone(),
        ));
    }
    out
}

// --- configuration ---------------------------------------------------------------------------

#[test]
fn mappings_parse_with_any_case_and_optional_prefix() {
    let c = config(json!({
        "mqttTopicMapping": {
            "a": {"topic": "sensors/+/t", "source": "localmqtt", "target": "IOTCORE"},
            "b": {"topic": "cmd/#", "source": "IotCore", "target": "Pubsub", "targetTopicPrefix": "cloud/"},
        },
        "mqtt5RouteOptions": {"a": {"noLocal": true, "retainAsPublished": "true"}},
        "mqtt": {"version": "mqtt5"},
        "brokerUri": "ssl://localhost:8883",
    }));
    assert_eq!(
        c.mappings["a"],
        Mapping {
            topic: "sensors/+/t".into(),
            source: Endpoint::LocalMqtt,
            target: Endpoint::IotCore,
            target_topic_prefix: String::new(),
        }
    );
    assert_eq!(c.mappings["b"].source, Endpoint::IotCore);
    assert_eq!(c.mappings["b"].target, Endpoint::Pubsub);
    assert_eq!(c.mappings["b"].target_topic_prefix, "cloud/");
    assert_eq!(
        c.route_options["a"],
        RouteOptions {
            no_local: true,
            retain_as_published: true
        }
    );
    assert_eq!(config(json!({})), BridgeConfig::default());
}

#[test]
fn bad_configurations_name_the_field() {
    let cases = [
        (
            json!({"mqttTopicMapping": {"m": {"topic": "a", "source": "Pubsub", "target": "pubsub"}}}),
            "mqttTopicMapping.m.target",
            "same as the source",
        ),
        (
            json!({"mqttTopicMapping": {"m": {"topic": "a", "source": "Cloud", "target": "Pubsub"}}}),
            "mqttTopicMapping.m.source",
            "LocalMqtt, Pubsub or IotCore",
        ),
        (
            json!({"mqttTopicMapping": {"m": {"source": "IotCore", "target": "Pubsub"}}}),
            "mqttTopicMapping.m.topic",
            "required",
        ),
        (
            json!({"mqttTopicMapping": {"m": {"topic": "a/#/b", "source": "IotCore", "target": "Pubsub"}}}),
            "mqttTopicMapping.m.topic",
            "`#`",
        ),
        (
            json!({"mqttTopicMapping": {"m": {"topic": "a", "source": "IotCore", "target": "Pubsub", "targetTopicPrefix": "x/+/"}}}),
            "mqttTopicMapping.m.targetTopicPrefix",
            "may not hold",
        ),
        (
            json!({"mqttTopicMapping": {"m": {"topic": 7, "source": "IotCore", "target": "Pubsub"}}}),
            "mqttTopicMapping.m.topic",
            "must be a string",
        ),
        (
            json!({"mqttTopicMapping": ["a"]}),
            "mqttTopicMapping",
            "must be an object",
        ),
        (
            json!({"mqtt5RouteOptions": {"m": {"noLocal": "maybe"}}}),
            "mqtt5RouteOptions.m.noLocal",
            "true or false",
        ),
        (
            json!({"mqtt": {"version": "mqtt4"}}),
            "mqtt.version",
            "mqtt3 or mqtt5",
        ),
    ];
    for (value, path, reason) in cases {
        let e = BridgeConfig::from_component_config(&value).unwrap_err();
        assert_eq!(e.path, path, "{value}");
        assert!(e.reason.contains(reason), "{value}: {e}");
        assert!(e.to_string().contains(path));
    }
}

// --- echo guard ------------------------------------------------------------------------------

#[test]
fn echo_guard_drops_one_echo_per_forward_within_the_window() {
    let mut g = EchoGuard::new(Duration::from_secs(5));
    let t0 = Instant::now();
    use Endpoint::*;
    g.forwarded(IotCore, "t", 1, LocalMqtt, t0);
    g.forwarded(IotCore, "t", 1, LocalMqtt, t0 + Duration::from_secs(1));
    // Other direction, topic, payload or target: not an echo.
    assert!(!g.is_echo(IotCore, "t", 1, Pubsub, t0));
    assert!(!g.is_echo(IotCore, "u", 1, LocalMqtt, t0));
    assert!(!g.is_echo(IotCore, "t", 2, LocalMqtt, t0));
    assert!(!g.is_echo(LocalMqtt, "t", 1, IotCore, t0));
    // Two forwards cancel two echoes, not a third.
    assert!(g.is_echo(IotCore, "t", 1, LocalMqtt, t0 + Duration::from_secs(2)));
    assert!(g.is_echo(IotCore, "t", 1, LocalMqtt, t0 + Duration::from_secs(2)));
    assert!(!g.is_echo(IotCore, "t", 1, LocalMqtt, t0 + Duration::from_secs(2)));
    // After the window a forward is forgotten.
    g.forwarded(IotCore, "t", 1, LocalMqtt, t0 + Duration::from_secs(3));
    assert!(!g.is_echo(IotCore, "t", 1, LocalMqtt, t0 + Duration::from_secs(9)));
    assert_eq!(g.remembered(), 0);
}

#[test]
fn echo_guard_expiry_skips_consumed_forwards() {
    let mut g = EchoGuard::new(Duration::from_secs(5));
    let t0 = Instant::now();
    use Endpoint::*;
    g.forwarded(Pubsub, "t", 1, IotCore, t0);
    g.forwarded(Pubsub, "t", 1, IotCore, t0 + Duration::from_secs(4));
    assert!(g.is_echo(Pubsub, "t", 1, IotCore, t0 + Duration::from_secs(4)));
    // The first forward's expiry must not take the second one with it.
    assert!(g.is_echo(Pubsub, "t", 1, IotCore, t0 + Duration::from_secs(6)));
    assert_eq!(g.remembered(), 0);
}

// --- routing over in-memory buses ------------------------------------------------------------

#[tokio::test]
async fn routes_with_prefix_once_per_mapping_and_only_matching_topics() {
    let b = buses();
    let bridge = Bridge::new(b.clone());
    bridge
        .apply(&config(json!({"mqttTopicMapping": {
            "all": {"topic": "sensors/#", "source": "LocalMqtt", "target": "Pubsub"},
            "temp": {"topic": "sensors/+/temp", "source": "LocalMqtt", "target": "Pubsub"},
            "temp2": {"topic": "sensors/+/temp", "source": "LocalMqtt", "target": "Pubsub", "targetTopicPrefix": "p/"},
            "cloud": {"topic": "sensors/+/temp", "source": "LocalMqtt", "target": "IotCore", "targetTopicPrefix": "dev1/"},
        }})))
        .await;
    let mut app = watch(&b.pubsub, "#", "app");
    let mut cloud = watch(&b.iot_core, "#", "cloud");
    publish(&b.local_mqtt, "sensors/a/temp", bin("21"), "broker");
    publish(&b.local_mqtt, "sensors/a/hum", bin("40"), "broker");
    publish(&b.local_mqtt, "other", bin("x"), "broker");
    let mut got = drain(&mut app).await;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let topics: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    // `all` twice (temp and hum), `temp` once, `temp2` once with its prefix.
    assert_eq!(
        topics,
        [
            "p/sensors/a/temp",
            "sensors/a/hum",
            "sensors/a/temp",
            "sensors/a/temp"
        ]
    );
    assert!(got.iter().all(|g| g.2 == PUBLISHER));
    let up = drain(&mut cloud).await;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].0, "dev1/sensors/a/temp");
    assert_eq!(up[0].1, bin("21"));
    assert_eq!(bridge.stats().forwarded, 5);
}

#[tokio::test]
async fn json_payloads_pass_unchanged_and_bad_target_topics_are_counted() {
    let b = buses();
    let bridge = Bridge::new(b.clone());
    bridge
        .apply(&config(json!({"mqttTopicMapping": {
            "m": {"topic": "in/#", "source": "Pubsub", "target": "LocalMqtt", "targetTopicPrefix": "x"},
        }})))
        .await;
    let mut dev = watch(&b.local_mqtt, "#", "broker");
    publish(&b.pubsub, "in/a", Payload::Json(json!({"v": 1})), "comp");
    let long = format!("in/{}", "z".repeat(65_532));
    publish(&b.pubsub, &long, bin("y"), "comp");
    let got = drain(&mut dev).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "xin/a");
    assert_eq!(got[0].1, Payload::Json(json!({"v": 1})));
    assert_eq!(bridge.stats().failed, 1);
}

#[tokio::test]
async fn reconfiguration_changes_only_the_difference() {
    let b = buses();
    let bridge = Bridge::new(b.clone());
    let mut interest = b.local_mqtt.interest("broker");
    bridge
        .apply(&config(json!({"mqttTopicMapping": {
            "keep": {"topic": "keep/#", "source": "LocalMqtt", "target": "Pubsub"},
            "drop": {"topic": "drop/#", "source": "LocalMqtt", "target": "Pubsub"},
        }})))
        .await;
    assert_eq!(
        interest.borrow_and_update().keys().collect::<Vec<_>>(),
        ["drop/#", "keep/#"]
    );
    let mut app = watch(&b.pubsub, "#", "app");
    let subscriptions_before = b.local_mqtt.subscription_count();
    bridge
        .apply(&config(json!({"mqttTopicMapping": {
            "keep": {"topic": "keep/#", "source": "LocalMqtt", "target": "Pubsub", "targetTopicPrefix": "v2/"},
            "new": {"topic": "new/+", "source": "LocalMqtt", "target": "Pubsub"},
        }})))
        .await;
    assert_eq!(
        interest.borrow_and_update().keys().collect::<Vec<_>>(),
        ["keep/#", "new/+"]
    );
    // One ended, one made, the kept one untouched (and routed by the new mapping).
    assert_eq!(b.local_mqtt.subscription_count(), subscriptions_before);
    publish(&b.local_mqtt, "keep/1", bin("k"), "broker");
    publish(&b.local_mqtt, "drop/1", bin("d"), "broker");
    publish(&b.local_mqtt, "new/1", bin("n"), "broker");
    let mut topics: Vec<String> = drain(&mut app).await.into_iter().map(|g| g.0).collect();
    topics.sort();
    assert_eq!(topics, ["new/1", "v2/keep/1"]);
    bridge.stop().await;
    assert!(interest.borrow_and_update().is_empty());
}

/// Stands in for the cloud: relays `iot_core` to a "cloud" and echoes every publish back to
/// `iot_core`, as IoT Core (and mosquitto) do for a client subscribed to what it publishes.
fn echoing_cloud(iot_core: &Bus) -> tokio::task::JoinHandle<()> {
    let mut up = iot_core
        .subscribe(
            "#",
            SubscribeOptions {
                receive_mode: Some(ReceiveMode::ReceiveMessagesFromOthers),
                subscriber_id: "cloud".into(),
                queue_capacity: 0,
            },
        )
        .unwrap();
    let bus = iot_core.clone();
    tokio::spawn(async move {
        while let Some(d) = up.recv().await {
            publish(&bus, &d.topic, d.message.payload.clone(), "cloud");
        }
    })
}

#[tokio::test]
async fn bidirectional_iot_core_and_local_mqtt_on_one_topic_deliver_once_each_way() {
    let b = buses();
    let bridge = Bridge::new(b.clone());
    bridge
        .apply(&config(json!({"mqttTopicMapping": {
            "up": {"topic": "both/#", "source": "LocalMqtt", "target": "IotCore"},
            "down": {"topic": "both/#", "source": "IotCore", "target": "LocalMqtt"},
        }})))
        .await;
    let cloud = echoing_cloud(&b.iot_core);
    let mut devices = watch(&b.local_mqtt, "#", "broker-out");
    let mut cloud_side = watch(&b.iot_core, "#", "observer");

    // A device publishes: the cloud gets it once; the cloud's echo does not come back down.
    publish(&b.local_mqtt, "both/dev", bin("from-device"), "broker");
    let mut seen_cloud = Vec::new();
    let mut seen_devices = Vec::new();
    for _ in 0..20 {
        seen_cloud.extend(drain(&mut cloud_side).await);
        seen_devices.extend(drain(&mut devices).await);
    }
    let from_bridge: Vec<_> = seen_cloud.iter().filter(|g| g.2 == PUBLISHER).collect();
    assert_eq!(from_bridge.len(), 1, "{seen_cloud:?}");
    assert_eq!(from_bridge[0].1, bin("from-device"));
    // The device's own publish on local_mqtt, seen by the observer there, and nothing more.
    assert_eq!(seen_devices.len(), 1, "{seen_devices:?}");
    assert_eq!(seen_devices[0].2, "broker");

    // The cloud publishes: devices get it once; nothing goes back up.
    publish(&b.iot_core, "both/cloud", bin("from-cloud"), "cloud");
    let mut seen_cloud = Vec::new();
    let mut seen_devices = Vec::new();
    for _ in 0..20 {
        seen_cloud.extend(drain(&mut cloud_side).await);
        seen_devices.extend(drain(&mut devices).await);
    }
    assert_eq!(seen_devices.len(), 1, "{seen_devices:?}");
    assert_eq!(seen_devices[0].0, "both/cloud");
    assert_eq!(seen_devices[0].1, bin("from-cloud"));
    assert_eq!(
        seen_cloud.len(),
        1,
        "only the cloud's own publish: {seen_cloud:?}"
    );
    let s = bridge.stats();
    assert_eq!((s.forwarded, s.echoes_dropped), (2, 1));
    cloud.abort();
}

#[tokio::test]
async fn bidirectional_pubsub_and_local_mqtt_on_one_exact_topic_do_not_loop() {
    let b = buses();
    let bridge = Bridge::new(b.clone());
    bridge
        .apply(&config(json!({"mqttTopicMapping": {
            "toPubsub": {"topic": "shadow/x", "source": "LocalMqtt", "target": "Pubsub"},
            "toLocal": {"topic": "shadow/x", "source": "Pubsub", "target": "LocalMqtt"},
        }})))
        .await;
    let mut app = watch(&b.pubsub, "shadow/x", "app");
    let mut dev = watch(&b.local_mqtt, "shadow/x", "device");
    publish(&b.local_mqtt, "shadow/x", bin("d"), "broker");
    publish(&b.pubsub, "shadow/x", bin("c"), "component");
    let mut at_app = Vec::new();
    let mut at_dev = Vec::new();
    for _ in 0..20 {
        at_app.extend(drain(&mut app).await);
        at_dev.extend(drain(&mut dev).await);
    }
    // Each side sees its own publish plus the other side's, exactly once.
    let payloads = |v: &[(String, Payload, String)]| {
        let mut p: Vec<(Payload, String)> = v.iter().map(|g| (g.1.clone(), g.2.clone())).collect();
        p.sort_by(|a, b| a.1.cmp(&b.1));
        p
    };
    assert_eq!(
        payloads(&at_app),
        [
            (bin("d"), PUBLISHER.to_string()),
            (bin("c"), "component".to_string())
        ]
    );
    assert_eq!(
        payloads(&at_dev),
        [
            (bin("c"), PUBLISHER.to_string()),
            (bin("d"), "broker".to_string())
        ]
    );
    assert_eq!(bridge.stats().forwarded, 2);
}
