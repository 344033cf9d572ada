//! Shared broker state: sessions, the subscription tree, retained messages and delayed wills.
//!
//! Architecture invariant: every mutation happens under one lock and never awaits; routing a
//! message to a connected session is a non-blocking `try_send`, and a session whose queue is full
//! is told to go (slow consumer) instead of slowing the publisher down.

use crate::codec::{Properties, QoS};
use crate::router::{Subscription, SubscriptionTree, filter_matches};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Reason code sent to a client whose outbound queue overflowed.
pub(crate) const SLOW_CONSUMER: u8 = 0x97;
/// Reason code sent to a client whose client identifier was taken over.
pub(crate) const SESSION_TAKEN_OVER: u8 = 0x8E;

/// Tunables of a broker; defaults suit a device.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest packet accepted from or sent to a client, fixed header included.
    pub max_packet_size: u32,
    /// QoS 2 publications a client may have unreleased at once (announced as Receive Maximum).
    pub receive_maximum: u16,
    /// Inbound topic aliases a client may use.
    pub topic_alias_maximum: u16,
    /// Messages kept per session while it is offline or its in-flight window is full; more are dropped.
    pub max_queued_messages: usize,
    /// Deliveries waiting for a connection task; a client that lets more pile up is disconnected.
    pub outbound_queue: usize,
    /// In-flight window towards MQTT 3.1.1 clients, which cannot announce one.
    pub max_inflight_v311: u16,
    /// Concurrent connections over all listeners.
    pub max_connections: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_size: 268_435_455,
            receive_maximum: 100,
            topic_alias_maximum: 10,
            max_queued_messages: 1000,
            outbound_queue: 65_536,
            max_inflight_v311: 20,
            max_connections: 10_000,
        }
    }
}

/// An application message as published, shared between all its deliveries.
#[derive(Debug)]
pub(crate) struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Properties forwarded to subscribers (no alias, expiry or subscription identifiers).
    pub properties: Properties,
    pub expires_at: Option<Instant>,
    pub publisher: String,
}

impl Message {
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

#[derive(Debug)]
pub(crate) struct Inflight {
    pub packet_id: u16,
    pub delivery: Delivery,
    /// PUBREC received; PUBREL sent, PUBCOMP awaited.
    pub released: bool,
}

/// What survives a disconnect of a persistent session.
#[derive(Debug, Default)]
pub(crate) struct SessionData {
    pub inflight: VecDeque<Inflight>,
    pub pending: VecDeque<Delivery>,
    pub incoming_qos2: HashSet<u16>,
    pub next_packet_id: u16,
}

enum Slot {
    Online {
        conn_id: u64,
        tx: mpsc::Sender<Delivery>,
        kick: Option<oneshot::Sender<u8>>,
    },
    Offline {
        data: SessionData,
        expires_at: Option<Instant>,
    },
}

struct Session {
    subscriptions: HashMap<String, Subscription>,
    slot: Slot,
}

struct DelayedWill {
    due: Instant,
    message: Arc<Message>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    subscriptions: SubscriptionTree,
    retained: HashMap<String, Arc<Message>>,
    delayed_wills: HashMap<String, DelayedWill>,
    next_conn_id: u64,
}

/// A session handed to a connection task.
pub(crate) struct Attached {
    pub conn_id: u64,
    pub session_present: bool,
    pub data: SessionData,
    pub rx: mpsc::Receiver<Delivery>,
    pub kick: oneshot::Receiver<u8>,
}

/// The broker core shared by all connections.
pub(crate) struct Core {
    pub config: BrokerConfig,
    state: Mutex<State>,
}

fn expiry_deadline(now: Instant, expiry_secs: u32) -> Option<Instant> {
    (expiry_secs != u32::MAX).then(|| now + Duration::from_secs(u64::from(expiry_secs)))
}

impl Core {
    pub fn new(config: BrokerConfig) -> Arc<Core> {
        Arc::new(Core {
            config,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a connection to the session `client_id`. Returns `None` while another connection
    /// still holds it (that one has been told to go; retry shortly).
    pub fn attach(&self, client_id: &str, clean_start: bool) -> Option<Attached> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = Instant::now();
        if let Some(session) = st.sessions.get_mut(client_id)
            && let Slot::Online { kick, .. } = &mut session.slot
        {
            if let Some(kick) = kick.take() {
                let _ = kick.send(SESSION_TAKEN_OVER);
            }
            return None;
        }
        let expired = matches!(
            st.sessions.get(client_id),
            Some(Session { slot: Slot::Offline { expires_at: Some(t), .. }, .. }) if *t <= now
        );
        if let Some(will) = st.delayed_wills.remove(client_id)
            && (clean_start || expired)
        {
            // The old session ends here, and a session's end releases its will.
            route(st, will.message, &self.config);
        }
        let mut data = None;
        if clean_start || expired {
            end_session(st, client_id);
        } else if let Some(Session {
            slot: Slot::Offline { data: d, .. },
            ..
        }) = st.sessions.get_mut(client_id)
        {
            data = Some(std::mem::take(d));
        }
        let session_present = data.is_some();
        st.next_conn_id += 1;
        let conn_id = st.next_conn_id;
        let (tx, rx) = mpsc::channel(self.config.outbound_queue);
        let (kick_tx, kick) = oneshot::channel();
        let slot = Slot::Online {
            conn_id,
            tx,
            kick: Some(kick_tx),
        };
        match st.sessions.get_mut(client_id) {
            Some(session) => session.slot = slot,
            None => {
                let session = Session {
                    subscriptions: HashMap::new(),
                    slot,
                };
                st.sessions.insert(client_id.to_owned(), session);
            }
        }
        Some(Attached {
            conn_id,
            session_present,
            data: data.unwrap_or_default(),
            rx,
            kick,
        })
    }

    /// Detaches a connection: keeps the session (with whatever was still queued for it) unless
    /// `expiry_secs` is 0, and publishes or schedules the will.
    pub fn detach(
        &self,
        client_id: &str,
        conn_id: u64,
        mut data: SessionData,
        rx: &mut mpsc::Receiver<Delivery>,
        will: Option<(Arc<Message>, u32)>,
        expiry_secs: u32,
    ) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = Instant::now();
        let ours = matches!(st.sessions.get(client_id), Some(Session { slot: Slot::Online { conn_id: c, .. }, .. }) if *c == conn_id);
        if !ours {
            return;
        }
        while let Ok(d) = rx.try_recv() {
            if d.qos != QoS::AtMostOnce && data.pending.len() < self.config.max_queued_messages {
                data.pending.push_back(d);
            }
        }
        if expiry_secs == 0 {
            end_session(st, client_id);
            if let Some((message, _)) = will {
                route(st, message, &self.config);
            }
            return;
        }
        // QoS 0 messages are not kept for offline sessions.
        data.pending.retain(|d| d.qos != QoS::AtMostOnce);
        if let Some(session) = st.sessions.get_mut(client_id) {
            session.slot = Slot::Offline {
                data,
                expires_at: expiry_deadline(now, expiry_secs),
            };
        }
        if let Some((message, delay)) = will {
            if delay == 0 {
                route(st, message, &self.config);
            } else {
                let due = now + Duration::from_secs(u64::from(delay.min(expiry_secs)));
                st.delayed_wills
                    .insert(client_id.to_owned(), DelayedWill { due, message });
            }
        }
    }

    /// Routes a message to every matching session and stores or clears it as retained.
    /// Returns how many sessions it reached.
    pub fn publish(&self, message: Arc<Message>) -> usize {
        let mut guard = self.lock();
        route(&mut guard, message, &self.config)
    }

    /// Records a subscription; returns whether it replaced one and the retained messages it matches.
    pub fn subscribe(
        &self,
        client_id: &str,
        filter: &str,
        sub: Subscription,
    ) -> (bool, Vec<Arc<Message>>) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let existed = st.subscriptions.subscribe(client_id, filter, sub.clone());
        if let Some(session) = st.sessions.get_mut(client_id) {
            session.subscriptions.insert(filter.to_owned(), sub);
        }
        let now = Instant::now();
        let retained = if crate::router::parse_shared(filter).is_some() {
            Vec::new()
        } else {
            st.retained
                .values()
                .filter(|m| !m.expired(now) && filter_matches(filter, &m.topic))
                .cloned()
                .collect()
        };
        (existed, retained)
    }

    pub fn unsubscribe(&self, client_id: &str, filter: &str) -> bool {
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(session) = st.sessions.get_mut(client_id) {
            session.subscriptions.remove(filter);
        }
        st.subscriptions.unsubscribe(client_id, filter)
    }

    /// Periodic work: publishes due wills, ends expired sessions, drops expired retained messages.
    pub fn tick(&self) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = Instant::now();
        let due: Vec<String> = st
            .delayed_wills
            .iter()
            .filter(|(_, w)| w.due <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for client_id in due {
            if let Some(will) = st.delayed_wills.remove(&client_id) {
                route(st, will.message, &self.config);
            }
        }
        let expired: Vec<String> = st
            .sessions
            .iter()
            .filter(
                |(_, s)| matches!(s.slot, Slot::Offline { expires_at: Some(t), .. } if t <= now),
            )
            .map(|(c, _)| c.clone())
            .collect();
        for client_id in expired {
            end_session(st, &client_id);
            if let Some(will) = st.delayed_wills.remove(&client_id) {
                route(st, will.message, &self.config);
            }
        }
        st.retained.retain(|_, m| !m.expired(now));
    }
}

fn end_session(st: &mut State, client_id: &str) {
    if let Some(session) = st.sessions.remove(client_id) {
        for filter in session.subscriptions.keys() {
            st.subscriptions.unsubscribe(client_id, filter);
        }
    }
}

fn route(st: &mut State, message: Arc<Message>, config: &BrokerConfig) -> usize {
    if message.retain {
        if message.payload.is_empty() {
            st.retained.remove(&message.topic);
        } else {
            st.retained.insert(message.topic.clone(), message.clone());
        }
    }
    let State {
        sessions,
        subscriptions,
        ..
    } = st;
    let online = |c: &str| {
        matches!(
            sessions.get(c),
            Some(Session {
                slot: Slot::Online { .. },
                ..
            })
        )
    };
    let matches = subscriptions.matches(&message.topic, &online);
    // Overlapping subscriptions of one client yield one delivery: highest QoS, all identifiers.
    let mut per_client: HashMap<String, Delivery> = HashMap::new();
    for m in matches {
        let o = &m.subscription.options;
        if o.no_local && m.client_id == message.publisher {
            continue;
        }
        let d = per_client.entry(m.client_id).or_insert_with(|| Delivery {
            message: message.clone(),
            qos: QoS::AtMostOnce,
            retain: false,
            subscription_ids: Vec::new(),
        });
        d.qos = d.qos.max(o.qos.min(message.qos));
        d.retain |= o.retain_as_published && message.retain;
        d.subscription_ids.extend(m.subscription.identifier);
    }
    let reached = per_client.len();
    for (client_id, delivery) in per_client {
        let Some(session) = sessions.get_mut(&client_id) else {
            continue;
        };
        match &mut session.slot {
            Slot::Online { tx, kick, .. } => {
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(delivery) {
                    tracing::warn!(
                        client_id,
                        "outbound queue full; disconnecting slow consumer"
                    );
                    if let Some(kick) = kick.take() {
                        let _ = kick.send(SLOW_CONSUMER);
                    }
                }
            }
            Slot::Offline { data, .. } => {
                if delivery.qos != QoS::AtMostOnce
                    && data.pending.len() < config.max_queued_messages
                {
                    data.pending.push_back(delivery);
                }
            }
        }
    }
    reached
}
