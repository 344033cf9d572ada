//! The MQTT bridge (`aws.greengrass.clientdevices.mqtt.Bridge`): forwards messages between the
//! client-device broker (`LocalMqtt`), local publish/subscribe (`Pubsub`) and the cloud
//! (`IotCore`) according to `mqttTopicMapping`.
//!
//! Each place is a [`lichen_bus::Bus`] of the core ([`Buses`]): the client-device broker mirrors
//! what devices publish onto `local_mqtt` and delivers what others publish there; the cloud link
//! relays `iot_core` to the cloud (QoS 1, spooled) and subscribes upstream to the filters held
//! there. So the bridge knows neither the broker nor the cloud link.
//!
//! Routing: a mapping `{topic, source, target, targetTopicPrefix}` subscribes `topic` (a filter)
//! on the source bus and republishes each message on the target bus at
//! `targetTopicPrefix + <received topic>`, payload unchanged. A message matching several mappings
//! is delivered once per mapping (mappings with the same source and filter share one
//! subscription and fan out). A new configuration subscribes and unsubscribes only the
//! difference; subscriptions kept keep their queues.
//!
//! Loop avoidance, in two layers:
//! 1. The bridge subscribes on each bus as its own subscriber id ([`PUBLISHER`]) with receive
//!    mode from-others and publishes as that id, so it never receives its own publishes, whether
//!    the filter is exact or a wildcard. (Greengrass' bridge does see its own exact-topic Pubsub
//!    publishes and, on MQTT 3.1.1, its own LocalMqtt ones; that is where its loops come from.)
//! 2. What comes back through someone else — the cloud echoes a publish to the publisher's own
//!    matching subscriptions — is caught by an echo guard: before forwarding a message received
//!    on bus X topic T toward bus Y, the bridge drops it if within the echo window it itself
//!    published the same payload (by hash) on X at T, taken from Y. One forward cancels at most
//!    one echo, so a genuine identical message after the echo still goes through; a genuine
//!    identical message from the other side *before* the echo (or when no echo comes) within the
//!    window is dropped once — the price of being loop-free without message ids.
//!
//! Architecture invariant: the bridge only subscribes and publishes on buses; it opens no socket
//! and knows no other service. It never blocks a bus: publishing is non-blocking and each
//! subscription has its own bounded queue.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use lichen_bridge::{Bridge, BridgeConfig, Buses};
//! use lichen_bus::{Bus, Message, Payload, SubscribeOptions};
//! let buses = Buses { local_mqtt: Bus::new(), pubsub: Bus::new(), iot_core: Bus::new() };
//! let bridge = Bridge::new(buses.clone());
//! let config = serde_json::json!({"mqttTopicMapping": {
//!     "up": {"topic": "sensors/#", "source": "LocalMqtt", "target": "Pubsub", "targetTopicPrefix": "dev/"}}});
//! bridge.apply(&BridgeConfig::from_component_config(&config).unwrap()).await;
//! let mut app = buses.pubsub.subscribe("dev/#", SubscribeOptions::for_subscriber("app")).unwrap();
//! let m = Message { payload: Payload::Binary(b"21".to_vec().into()), publisher: "device".into() };
//! buses.local_mqtt.publish("sensors/t1", m).unwrap();
//! assert_eq!(app.recv().await.unwrap().topic, "dev/sensors/t1");
//! # });
//! ```

mod config;
mod echo;

pub use config::{BridgeConfig, ConfigError, Endpoint, Mapping, RouteOptions};

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use lichen_bus::{Bus, Delivery, Message, Payload, ReceiveMode, SubscribeOptions};

/// The Greengrass component name the bridge answers to.
pub const SERVICE_NAME: &str = "aws.greengrass.clientdevices.mqtt.Bridge";
/// The bridge's subscriber and publisher identity on every bus.
pub const PUBLISHER: &str = SERVICE_NAME;
/// How long a forward is remembered to recognise its echo.
pub const DEFAULT_ECHO_WINDOW: Duration = Duration::from_secs(5);
/// Queue bound of each of the bridge's subscriptions (the bus drops the oldest beyond it).
const QUEUE: usize = 65_536;

/// The core's three buses, by the name mappings use for them.
#[derive(Debug, Clone)]
pub struct Buses {
    pub local_mqtt: Bus,
    pub pubsub: Bus,
    pub iot_core: Bus,
}

impl Buses {
    fn get(&self, e: Endpoint) -> &Bus {
        match e {
            Endpoint::LocalMqtt => &self.local_mqtt,
            Endpoint::Pubsub => &self.pubsub,
            Endpoint::IotCore => &self.iot_core,
        }
    }
}

/// Counters since the bridge was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Messages published on a target bus (one per mapping).
    pub forwarded: u64,
    /// Messages dropped as the echo of the bridge's own forward.
    pub echoes_dropped: u64,
    /// Messages a target bus refused (e.g. a target topic too long).
    pub failed: u64,
}

#[derive(Debug, Clone)]
struct Route {
    mapping: String,
    target: Endpoint,
    prefix: String,
}

/// A subscription the bridge holds: source bus and filter.
type SubKey = (Endpoint, String);

struct Shared {
    buses: Buses,
    routes: RwLock<HashMap<SubKey, Arc<[Route]>>>,
    echoes: Mutex<echo::EchoGuard>,
    forwarded: AtomicU64,
    echoes_dropped: AtomicU64,
    failed: AtomicU64,
}

/// The running bridge. Dropping it ends its subscriptions.
pub struct Bridge {
    shared: Arc<Shared>,
    tasks: tokio::sync::Mutex<HashMap<SubKey, tokio::task::JoinHandle<()>>>,
}

fn payload_hash(p: &Payload) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    match p {
        Payload::Binary(b) => b.as_ref().hash(&mut h),
        // The same bytes the broker and the cloud link put on the wire, so an echo matches.
        Payload::Json(v) => serde_json::to_vec(v).unwrap_or_default().hash(&mut h),
    }
    h.finish()
}

impl Shared {
    fn forward(&self, source: Endpoint, filter: &str, d: &Delivery) {
        let routes = {
            let map = self.routes.read().unwrap_or_else(|e| e.into_inner());
            match map.get(&(source, filter.to_string())) {
                Some(r) => r.clone(),
                None => return,
            }
        };
        let hash = payload_hash(&d.message.payload);
        for route in routes.iter() {
            let now = Instant::now();
            let target_topic = format!("{}{}", route.prefix, d.topic);
            {
                let mut echoes = self.echoes.lock().unwrap_or_else(|e| e.into_inner());
                if echoes.is_echo(source, &d.topic, hash, route.target, now) {
                    self.echoes_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(mapping = %route.mapping, topic = %d.topic, "echo of the bridge's own forward dropped");
                    continue;
                }
                echoes.forwarded(route.target, &target_topic, hash, source, now);
            }
            let message = Message {
                payload: d.message.payload.clone(),
                publisher: PUBLISHER.to_string(),
            };
            match self.buses.get(route.target).publish(&target_topic, message) {
                Ok(_) => {
                    self.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(mapping = %route.mapping, source = %source, target = %route.target, topic = %target_topic, error = %e, "message not forwarded");
                }
            }
        }
    }
}

impl Bridge {
    /// A bridge with no mappings, remembering forwards for [`DEFAULT_ECHO_WINDOW`].
    pub fn new(buses: Buses) -> Bridge {
        Bridge::with_echo_window(buses, DEFAULT_ECHO_WINDOW)
    }

    pub fn with_echo_window(buses: Buses, window: Duration) -> Bridge {
        Bridge {
            shared: Arc::new(Shared {
                buses,
                routes: RwLock::new(HashMap::new()),
                echoes: Mutex::new(echo::EchoGuard::new(window)),
                forwarded: AtomicU64::new(0),
                echoes_dropped: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
            tasks: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Brings the bridge's subscriptions in line with `config`: subscriptions no mapping needs
    /// any more are ended (done when this returns), new ones made, kept ones left alone.
    /// Must run inside a tokio runtime.
    pub async fn apply(&self, config: &BridgeConfig) {
        let mut wanted: HashMap<SubKey, Vec<Route>> = HashMap::new();
        for (name, m) in &config.mappings {
            wanted
                .entry((m.source, m.topic.clone()))
                .or_default()
                .push(Route {
                    mapping: name.clone(),
                    target: m.target,
                    prefix: m.target_topic_prefix.clone(),
                });
        }
        let mut tasks = self.tasks.lock().await;
        let gone: Vec<SubKey> = tasks
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(t) = tasks.remove(&key) {
                t.abort();
                // The task owns the subscription: once it is reaped, the bus has forgotten it.
                let _ = t.await;
                tracing::info!(source = %key.0, topic = %key.1, "bridge unsubscribed");
            }
        }
        *self
            .shared
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = wanted
            .iter()
            .map(|(k, r)| (k.clone(), Arc::from(r.clone())))
            .collect();
        for key in wanted.into_keys() {
            if tasks.contains_key(&key) {
                continue;
            }
            let (source, filter) = key.clone();
            let options = SubscribeOptions {
                receive_mode: Some(ReceiveMode::ReceiveMessagesFromOthers),
                subscriber_id: PUBLISHER.to_string(),
                queue_capacity: QUEUE,
            };
            // The filter was checked with the bus's own rules when the configuration was read.
            let mut sub = match self.shared.buses.get(source).subscribe(&filter, options) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(source = %source, topic = %filter, error = %e, "bridge cannot subscribe");
                    continue;
                }
            };
            let shared = self.shared.clone();
            tracing::info!(source = %source, topic = %filter, "bridge subscribed");
            tasks.insert(
                key,
                tokio::spawn(async move {
                    while let Some(d) = sub.recv().await {
                        shared.forward(source, &filter, &d);
                    }
                }),
            );
        }
    }

    /// Ends every subscription.
    pub async fn stop(&self) {
        self.apply(&BridgeConfig::default()).await;
    }

    pub fn stats(&self) -> BridgeStats {
        BridgeStats {
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            echoes_dropped: self.shared.echoes_dropped.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().values() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests;
