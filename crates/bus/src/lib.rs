//! In-process publish/subscribe with Greengrass local-topic semantics.
//!
//! Components (through IPC) and built-in services (bridge, cloud link, shadows…) meet here.
//! Subscriptions use MQTT topic filters (`+` one level, `#` the rest, only as the last level) kept
//! in a trie, so a publish costs one walk down the topic's levels, not one test per subscription.
//!
//! Delivery rules:
//! * Every subscriber gets its own queue, bounded by count (`queue_capacity`, default
//!   [`DEFAULT_QUEUE_CAPACITY`]) and by bytes (the sum of the queued topics and payloads; per bus,
//!   [`Bus::with_queue_bytes`], default [`DEFAULT_QUEUE_BYTES`]). **Overflow policy: when a
//!   subscriber's queue is full by either bound, its oldest queued messages are dropped and counted**
//!   ([`Subscription::dropped`]) until the new one fits; a single message larger than the byte
//!   bound is queued alone. Publishers never wait for subscribers and memory never grows without bound.
//! * Messages reach each subscriber in the order they were published (per publisher).
//! * [`ReceiveMode::ReceiveMessagesFromOthers`] skips messages whose `publisher` equals the
//!   subscriber's `subscriber_id`. The Greengrass default is from-others when the filter has a
//!   wildcard and all messages otherwise ([`ReceiveMode::default_for`]).
//! * Topics starting with `$` are not special: wildcards match them like any other topic.
//!
//! Interest: [`Bus::interest`] lets a service that relays a bus to somewhere else (the cloud link
//! for the `iot_core` bus) learn which filters the *other* subscribers hold, with how many
//! subscriptions each, so it can subscribe upstream to exactly those and unsubscribe when the
//! last one goes.
//!
//! Architecture invariant: this crate is a leaf (no other lichen crate) and does no I/O; dropping
//! a [`Subscription`] is the only way to unsubscribe, so no subscription outlives its receiver.
//!
//! ```
//! # tokio_test_block_on(async {
//! use lichen_bus::{Bus, Message, Payload, SubscribeOptions};
//! let bus = Bus::new();
//! let mut sub = bus.subscribe("sensors/+/temp", SubscribeOptions::for_subscriber("app")).unwrap();
//! let n = bus
//!     .publish("sensors/a/temp", Message { payload: Payload::Json(serde_json::json!(21)), publisher: "dev".into() })
//!     .unwrap();
//! assert_eq!(n, 1);
//! let got = sub.recv().await.unwrap();
//! assert_eq!(got.topic, "sensors/a/temp");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::Bytes;
use tokio::sync::{Notify, watch};

/// Queue length per subscriber when [`SubscribeOptions::queue_capacity`] is 0.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Bytes (topics and payloads) queued per subscriber on a [`Bus::new`] bus: 8 MiB, so a thousand
/// stalled subscribers of large messages still cannot take the device's memory.
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;

/// A message body: JSON or raw bytes; the bus keeps the kind so a JSON publish arrives as JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(serde_json::Value),
    Binary(Bytes),
}

/// What a publisher hands to [`Bus::publish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub payload: Payload,
    /// Identity of the publisher (component name or service name); used by receive modes.
    pub publisher: String,
}

/// What a subscriber receives: the message and the concrete topic it was published on
/// (Greengrass `context.topic`). Shared between all subscribers of one publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub topic: String,
    pub message: Message,
}

/// Greengrass `ReceiveMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveMode {
    ReceiveAllMessages,
    ReceiveMessagesFromOthers,
}

impl ReceiveMode {
    /// The Greengrass default: from-others for wildcard filters, all messages for exact topics.
    pub fn default_for(filter: &str) -> ReceiveMode {
        if filter.contains('+') || filter.contains('#') {
            ReceiveMode::ReceiveMessagesFromOthers
        } else {
            ReceiveMode::ReceiveAllMessages
        }
    }
}

/// Options of one subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// `None` = the Greengrass default for the filter ([`ReceiveMode::default_for`]).
    pub receive_mode: Option<ReceiveMode>,
    /// Identity compared with [`Message::publisher`] for from-others delivery.
    pub subscriber_id: String,
    /// Bound of this subscriber's queue; 0 = [`DEFAULT_QUEUE_CAPACITY`].
    pub queue_capacity: usize,
}

impl SubscribeOptions {
    /// Default receive mode and queue size for the given subscriber identity.
    pub fn for_subscriber(subscriber_id: &str) -> SubscribeOptions {
        SubscribeOptions {
            subscriber_id: subscriber_id.to_string(),
            ..SubscribeOptions::default()
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error(
        "invalid publish topic {topic:?}: {reason}; publish to a concrete topic without `+`, `#` or empty"
    )]
    InvalidTopic { topic: String, reason: &'static str },
    #[error(
        "invalid topic filter {filter:?}: {reason}; use `+` for a whole level and `#` only as the last level"
    )]
    InvalidFilter {
        filter: String,
        reason: &'static str,
    },
}

/// Maximum topic length in bytes (the MQTT limit).
const MAX_TOPIC_BYTES: usize = 65535;

/// Checks a topic that a message is published to.
pub fn validate_topic(topic: &str) -> Result<(), BusError> {
    let bad = |reason| {
        Err(BusError::InvalidTopic {
            topic: topic.to_string(),
            reason,
        })
    };
    if topic.is_empty() {
        return bad("the topic is empty");
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return bad("the topic is longer than 65535 bytes");
    }
    if topic.contains(['+', '#']) {
        return bad("wildcards are not allowed in a publish topic");
    }
    if topic.contains('\0') {
        return bad("NUL is not allowed in a topic");
    }
    Ok(())
}

/// Checks a subscription filter (MQTT rules).
pub fn validate_filter(filter: &str) -> Result<(), BusError> {
    let bad = |reason| {
        Err(BusError::InvalidFilter {
            filter: filter.to_string(),
            reason,
        })
    };
    if filter.is_empty() {
        return bad("the filter is empty");
    }
    if filter.len() > MAX_TOPIC_BYTES {
        return bad("the filter is longer than 65535 bytes");
    }
    if filter.contains('\0') {
        return bad("NUL is not allowed in a filter");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return bad("`#` must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return bad("`+` must be a whole level");
        }
    }
    Ok(())
}

/// Reference semantics of MQTT filter matching (used by tests and by callers without a trie).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

struct SubscriberQueue {
    id: u64,
    subscriber_id: String,
    mode: ReceiveMode,
    capacity: usize,
    /// Bound of the sum of the queued messages' sizes.
    max_bytes: usize,
    queue: Mutex<Queued>,
    notify: Notify,
    dropped: AtomicU64,
    closed: AtomicBool,
}

/// A subscriber's queued messages, each with its size, and the sum of those sizes.
#[derive(Default)]
struct Queued {
    messages: VecDeque<(Arc<Delivery>, usize)>,
    bytes: usize,
}

impl Queued {
    fn pop(&mut self) -> Option<Arc<Delivery>> {
        let (d, size) = self.messages.pop_front()?;
        self.bytes -= size;
        Some(d)
    }
}

/// What a queued message counts against the byte bound: its topic and payload.
fn delivery_size(d: &Delivery) -> usize {
    let payload = match &d.message.payload {
        Payload::Binary(b) => b.len(),
        Payload::Json(v) => {
            /// Counts serialized bytes without keeping them.
            struct Count(usize);
            impl std::io::Write for Count {
                fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                    self.0 += buf.len();
                    Ok(buf.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    Ok(())
                }
            }
            let mut n = Count(0);
            let _ = serde_json::to_writer(&mut n, v);
            n.0
        }
    };
    d.topic.len() + payload
}

impl SubscriberQueue {
    fn push(&self, delivery: Arc<Delivery>, size: usize) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            while !queue.messages.is_empty()
                && (queue.messages.len() >= self.capacity || queue.bytes + size > self.max_bytes)
            {
                queue.pop();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.messages.push_back((delivery, size));
            queue.bytes += size;
        }
        self.notify.notify_one();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

#[derive(Default)]
struct Node {
    children: HashMap<String, Node>,
    subscribers: Vec<Arc<SubscriberQueue>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
    }

    /// Calls `visit` with every subscriber whose filter matches the remaining `levels` of a
    /// topic (an iterator, so a publish allocates no list of levels or of subscribers).
    fn for_each_match(
        &self,
        mut levels: std::str::Split<'_, char>,
        visit: &mut impl FnMut(&SubscriberQueue),
    ) {
        // `#` also matches the parent level itself (MQTT: `a/#` matches `a`).
        if let Some(hash) = self.children.get("#") {
            hash.subscribers.iter().for_each(|s| visit(s));
        }
        let Some(first) = levels.next() else {
            self.subscribers.iter().for_each(|s| visit(s));
            return;
        };
        if let Some(child) = self.children.get(first) {
            child.for_each_match(levels.clone(), visit);
        }
        if let Some(plus) = self.children.get("+") {
            plus.for_each_match(levels, visit);
        }
    }

    /// Removes subscriber `id` along `levels`; prunes nodes left empty.
    fn remove(&mut self, levels: &[&str], id: u64) {
        match levels.split_first() {
            None => self.subscribers.retain(|s| s.id != id),
            Some((first, rest)) => {
                if let Some(child) = self.children.get_mut(*first) {
                    child.remove(rest, id);
                    if child.is_empty() {
                        self.children.remove(*first);
                    }
                }
            }
        }
    }

    fn close_all(&self) {
        for s in &self.subscribers {
            s.close();
        }
        for child in self.children.values() {
            child.close_all();
        }
    }
}

/// The filters subscribed on a bus and how many subscriptions hold each; see [`Bus::interest`].
pub type Interest = watch::Receiver<BTreeMap<String, usize>>;

/// Who holds which filter, and who watches.
#[derive(Default)]
struct InterestState {
    /// filter -> subscriber id -> live subscriptions.
    held: HashMap<String, HashMap<String, usize>>,
    watchers: Vec<InterestWatcher>,
}

struct InterestWatcher {
    /// Subscriptions by this subscriber id are not reported to this watcher.
    exclude: String,
    tx: watch::Sender<BTreeMap<String, usize>>,
}

impl InterestState {
    /// Counts one subscription of `subscriber_id` on `filter` in (`added`) or out.
    fn change(&mut self, filter: &str, subscriber_id: &str, added: bool) {
        let by_id = self.held.entry(filter.to_string()).or_default();
        let n = by_id.entry(subscriber_id.to_string()).or_default();
        if added {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_id.remove(subscriber_id);
            }
            if by_id.is_empty() {
                self.held.remove(filter);
            }
        }
        self.watchers.retain(|w| !w.tx.is_closed());
        for w in self.watchers.iter().filter(|w| w.exclude != subscriber_id) {
            w.tx.send_modify(|m| {
                if added {
                    *m.entry(filter.to_string()).or_default() += 1;
                } else if let Some(c) = m.get_mut(filter) {
                    *c -= 1;
                    if *c == 0 {
                        m.remove(filter);
                    }
                }
            });
        }
    }
}

struct Inner {
    /// Read-locked by publishes (which run in parallel), write-locked by (un)subscribes.
    root: RwLock<Node>,
    next_id: AtomicU64,
    interest: Mutex<InterestState>,
    /// Byte bound of each subscriber's queue.
    queue_bytes: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.root
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .close_all();
    }
}

/// The bus. Cheap to clone; all clones are the same bus.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new()
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

impl Bus {
    /// A bus whose subscribers each queue at most [`DEFAULT_QUEUE_BYTES`].
    pub fn new() -> Bus {
        Bus::with_queue_bytes(DEFAULT_QUEUE_BYTES)
    }

    /// A bus whose subscribers each queue at most `max_bytes` of topics and payloads (0 =
    /// [`DEFAULT_QUEUE_BYTES`]); see the overflow policy in the crate documentation.
    pub fn with_queue_bytes(max_bytes: usize) -> Bus {
        Bus {
            inner: Arc::new(Inner {
                root: RwLock::new(Node::default()),
                next_id: AtomicU64::new(1),
                interest: Mutex::new(InterestState::default()),
                queue_bytes: if max_bytes == 0 {
                    DEFAULT_QUEUE_BYTES
                } else {
                    max_bytes
                },
            }),
        }
    }

    /// Subscribes to `filter`; messages arrive through the returned [`Subscription`] until it is
    /// dropped.
    pub fn subscribe(
        &self,
        filter: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, BusError> {
        validate_filter(filter)?;
        let queue = Arc::new(SubscriberQueue {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            subscriber_id: options.subscriber_id,
            mode: options
                .receive_mode
                .unwrap_or_else(|| ReceiveMode::default_for(filter)),
            capacity: if options.queue_capacity == 0 {
                DEFAULT_QUEUE_CAPACITY
            } else {
                options.queue_capacity
            },
            max_bytes: self.inner.queue_bytes,
            queue: Mutex::new(Queued::default()),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        {
            let mut node = self.inner.root.write().unwrap_or_else(|e| e.into_inner());
            let mut node = &mut *node;
            for level in filter.split('/') {
                node = node.children.entry(level.to_string()).or_default();
            }
            node.subscribers.push(queue.clone());
        }
        self.inner
            .interest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .change(filter, &queue.subscriber_id, true);
        Ok(Subscription {
            bus: Arc::downgrade(&self.inner),
            filter: filter.to_string(),
            queue,
        })
    }

    /// Publishes `message` on `topic`; returns how many subscribers it was queued for.
    /// Publishing with no subscriber succeeds and returns 0.
    pub fn publish(&self, topic: &str, message: Message) -> Result<usize, BusError> {
        validate_topic(topic)?;
        let delivery = Arc::new(Delivery {
            topic: topic.to_string(),
            message,
        });
        // Measured once, and only when someone subscribes (JSON is measured by serializing it).
        let mut size = None;
        let mut delivered = 0;
        // Queued during the walk, under the trie's read lock: a queue push only takes that
        // subscriber's own lock, never the trie's.
        self.inner
            .root
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .for_each_match(topic.split('/'), &mut |sub| {
                if sub.mode == ReceiveMode::ReceiveMessagesFromOthers
                    && sub.subscriber_id == delivery.message.publisher
                {
                    return;
                }
                let size = *size.get_or_insert_with(|| delivery_size(&delivery));
                sub.push(delivery.clone(), size);
                delivered += 1;
            });
        Ok(delivered)
    }

    /// The filters held now by subscribers other than `exclude_subscriber_id`, with how many
    /// subscriptions hold each, and every later change. A filter leaves the map when its last
    /// subscription (by others) is dropped. Watching costs nothing once the receiver is dropped.
    pub fn interest(&self, exclude_subscriber_id: &str) -> Interest {
        let mut state = self
            .inner
            .interest
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now: BTreeMap<String, usize> = state
            .held
            .iter()
            .filter_map(|(filter, by_id)| {
                let n: usize = by_id
                    .iter()
                    .filter(|(id, _)| id.as_str() != exclude_subscriber_id)
                    .map(|(_, n)| *n)
                    .sum();
                (n > 0).then(|| (filter.clone(), n))
            })
            .collect();
        let (tx, rx) = watch::channel(now);
        state.watchers.push(InterestWatcher {
            exclude: exclude_subscriber_id.to_string(),
            tx,
        });
        rx
    }

    /// Number of live subscriptions (for diagnostics and tests).
    pub fn subscription_count(&self) -> usize {
        fn count(node: &Node) -> usize {
            node.subscribers.len() + node.children.values().map(count).sum::<usize>()
        }
        count(&self.inner.root.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The receiving end of one subscription. Dropping it unsubscribes.
pub struct Subscription {
    bus: Weak<Inner>,
    filter: String,
    queue: Arc<SubscriberQueue>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("filter", &self.filter)
            .field("mode", &self.queue.mode)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Waits for the next message; `None` once the bus is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<Arc<Delivery>> {
        loop {
            if let Some(d) = self.try_recv() {
                return Some(d);
            }
            if self.queue.closed.load(Ordering::Acquire) {
                return self.try_recv();
            }
            self.queue.notify.notified().await;
        }
    }

    /// The next queued message, if any, without waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Delivery>> {
        self.queue
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
    }

    /// How many messages were dropped because this subscriber's queue was full (by count or bytes).
    pub fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }

    pub fn receive_mode(&self) -> ReceiveMode {
        self.queue.mode
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(inner) = self.bus.upgrade() {
            let levels: Vec<&str> = self.filter.split('/').collect();
            inner
                .root
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&levels, self.queue.id);
            inner
                .interest
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .change(&self.filter, &self.queue.subscriber_id, false);
        }
    }
}

#[cfg(test)]
mod tests;
