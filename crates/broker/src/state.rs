//! Shared broker state: sessions, the subscription tree, retained messages and delayed wills.
//!
//! Architecture invariant: every mutation happens under one lock and never awaits. Routing to a
//! connected session appends to its [`Outbox`] (a short second lock, never held while taking the
//! state lock) and never drops a delivery of any QoS: a session at or over its bound is reported
//! back to the publisher, whose connection then stops reading until the outbox drains or the
//! session is disconnected as a slow consumer. Only QoS 1/2 deliveries to an offline session's
//! full queue are dropped, counted and logged (QoS 0 is not kept for offline sessions at all).

use crate::codec::{Properties, QoS};
use crate::idle::IdlePool;
use crate::router::{Subscription, SubscriptionTree, filter_matches};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Reason code sent to a client whose outbound queue overflowed.
pub(crate) const SLOW_CONSUMER: u8 = 0x97;
/// Reason code for an action over one of the broker's bounds (retained messages, subscriptions,
/// sessions).
pub(crate) const QUOTA_EXCEEDED: u8 = 0x97;
/// Reason code sent to a client whose client identifier was taken over.
pub(crate) const SESSION_TAKEN_OVER: u8 = 0x8E;
/// Reason code sent to every client when the broker shuts down.
pub(crate) const SERVER_SHUTTING_DOWN: u8 = 0x8B;
/// Reason code sent to a client that let 1.5 times its keep-alive pass without a packet.
pub(crate) const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;

/// Tunables of a broker; defaults suit a device.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest packet accepted from or sent to a client, fixed header included.
    pub max_packet_size: u32,
    /// QoS 2 publications a client may have unreleased at once (announced as Receive Maximum).
    pub receive_maximum: u16,
    /// Inbound topic aliases a client may use.
    pub topic_alias_maximum: u16,
    /// Deliveries queued per session behind its in-flight window. Online, reaching it holds the
    /// publishers back (their sockets are not read), whatever the QoS; offline, further QoS 1/2
    /// messages are dropped, each counted and logged.
    pub max_queued_messages: usize,
    /// How long a connected session may stay at its queue bound without taking a single delivery
    /// before it is disconnected as a slow consumer (reason 0x97); this also bounds how long a
    /// publisher is held back by it.
    pub slow_consumer_timeout: Duration,
    /// In-flight window towards MQTT 3.1.1 clients, which cannot announce one.
    pub max_inflight_v311: u16,
    /// Concurrent connections over all listeners.
    pub max_connections: usize,
    /// Park idle plain-TCP connections in one epoll-driven pool instead of a task each (under
    /// 1 KB per idle connection instead of ~2 KB). On by default; off, every connection keeps
    /// its task (`lichen broker --no-park-idle-connections`).
    pub park_idle_connections: bool,
    /// Retained messages kept at once (one per topic). A retained publication for a new topic
    /// beyond it is refused: PUBACK/PUBREC 0x97 (MQTT 5, QoS 1/2), else DISCONNECT 0x97 / close.
    pub max_retained_messages: usize,
    /// Bytes (topic and payload) of all retained messages together; refused as above beyond it.
    pub max_retained_bytes: usize,
    /// Subscriptions one session may hold; a further filter gets SUBACK 0x97 (3.1.1: 0x80).
    pub max_subscriptions_per_client: usize,
    /// Sessions at once, connected or kept for a persistent client; a CONNECT that would start
    /// one more is refused with CONNACK 0x97 (3.1.1: 0x03, server unavailable).
    pub max_sessions: usize,
    /// Longest a session outlives its connection, in seconds: MQTT 3.1.1 persistent sessions
    /// (clean session 0) get exactly this, MQTT 5 clients asking for more get this (announced in
    /// CONNACK). `u32::MAX`: sessions may never expire.
    pub max_session_expiry_secs: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_size: 268_435_455,
            receive_maximum: 100,
            topic_alias_maximum: 10,
            max_queued_messages: 1000,
            slow_consumer_timeout: Duration::from_secs(10),
            max_inflight_v311: 20,
            max_connections: 10_000,
            park_idle_connections: true,
            max_retained_messages: 10_000,
            max_retained_bytes: 64 * 1024 * 1024,
            max_subscriptions_per_client: 100,
            max_sessions: 20_000,
            // AWS IoT Core's default persistent session expiry.
            max_session_expiry_secs: 3600,
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

/// Deliveries waiting for one connected session: filled by routing, emptied by its connection
/// task as its in-flight window allows.
pub(crate) struct Outbox {
    inner: Mutex<OutboxInner>,
    /// Wakes publishers held back by this outbox.
    drained: Notify,
    /// The queue length at which publishers are held back (`max_queued_messages`).
    bound: usize,
}

#[derive(Default)]
pub(crate) struct OutboxInner {
    pub queue: VecDeque<Delivery>,
    /// Set once the connection must end, with the reason code for its DISCONNECT.
    pub kick: Option<u8>,
    /// Publishers are (or may be) waiting for the queue to fall to half its bound.
    congested: bool,
    /// When the connection last took a delivery (or the queue last became non-empty).
    last_progress: Option<Instant>,
    /// Deliveries arrived or a kick came since the connection task last looked.
    signalled: bool,
    /// The connection task, woken on a signal. A waker rather than a `Notify` keeps what an idle
    /// connection's task must hold while waiting down to a few pointers.
    waker: Option<Waker>,
    /// When the client must next show life (keep-alive); `None` without keep-alive or while the
    /// client is held back (it is not read then, so it cannot be expected to).
    alive_until: Option<Instant>,
    /// The connection is in the idle pool (its waker is the pool's entry for it).
    pub parked: bool,
    /// The client sent something or a delivery arrived since the last housekeeping tick.
    active: bool,
    /// The connection should park at its next idle moment: set on attach (a new connection has
    /// nothing to do once it has its CONNACK) and by housekeeping after a quiet tick.
    park_request: bool,
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox::new(VecDeque::new(), 1)
    }
}

impl Outbox {
    fn new(queue: VecDeque<Delivery>, bound: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(OutboxInner {
                queue,
                park_request: true,
                ..OutboxInner::default()
            }),
            drained: Notify::new(),
            bound: bound.max(1),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, OutboxInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks that the connection task has something to look at and wakes it (outside the lock).
    pub fn signal(mut inner: MutexGuard<'_, OutboxInner>) {
        inner.signalled = true;
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ready once deliveries arrived or a kick came since the last ready; otherwise registers the
    /// task to be woken.
    pub fn poll_signal(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        if std::mem::take(&mut inner.signalled) {
            return Poll::Ready(());
        }
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Sets when the client must next show life; `None` stops the keep-alive check.
    /// Also marks the connection active: it is called whenever the client is read from.
    pub fn keep_alive_until(&self, deadline: Option<Instant>) {
        let mut inner = self.lock();
        inner.alive_until = deadline;
        inner.active = true;
    }

    /// Whether the connection should park now; the request is consumed.
    pub fn take_park_request(&self) -> bool {
        std::mem::take(&mut self.lock().park_request)
    }

    /// Housekeeping: asks a connection that was quiet for a whole tick to park.
    fn check_idle(&self) {
        let mut inner = self.lock();
        if inner.parked || inner.park_request || inner.kick.is_some() {
            return;
        }
        if std::mem::take(&mut inner.active) {
            return;
        }
        inner.park_request = true;
        Outbox::signal(inner);
    }

    /// Registers a parked connection's waker. Returns `false` (and registers nothing) if
    /// deliveries or a kick came since the connection task last looked: it must not sleep then.
    pub fn park_with(&self, waker: Waker) -> bool {
        let mut inner = self.lock();
        if inner.signalled {
            return false;
        }
        inner.parked = true;
        inner.waker = Some(waker);
        true
    }

    /// Kicks the connection if its client let the keep-alive expire.
    fn check_keep_alive(&self, now: Instant) -> bool {
        let expired = {
            let inner = self.lock();
            inner.kick.is_none() && inner.alive_until.is_some_and(|t| t <= now)
        };
        if expired {
            self.kick(KEEP_ALIVE_TIMEOUT);
        }
        expired
    }

    /// Whether the queue is at its bound and has been taken from for `timeout`.
    fn stalled(&self, timeout: Duration) -> bool {
        let inner = self.lock();
        inner.queue.len() >= self.bound
            && inner.kick.is_none()
            && inner.last_progress.is_some_and(|t| t.elapsed() >= timeout)
    }

    /// Whether publishers must still wait for this outbox.
    pub fn holds_back(&self) -> bool {
        let inner = self.lock();
        inner.congested && inner.kick.is_none()
    }

    /// Tells the connection to go with `reason` (first reason wins) and releases held publishers.
    pub fn kick(&self, reason: u8) {
        let mut inner = self.lock();
        if inner.kick.is_none() {
            inner.kick = Some(reason);
        }
        inner.congested = false;
        Outbox::signal(inner);
        self.drained.notify_waiters();
    }

    /// Called by the connection after taking deliveries: records progress and releases held
    /// publishers once the queue is down to half its bound.
    pub fn took(inner: &mut OutboxInner, outbox: &Outbox) {
        inner.last_progress = Some(Instant::now());
        if inner.congested && inner.queue.len() <= outbox.bound / 2 {
            inner.congested = false;
            outbox.drained.notify_waiters();
        }
    }

    /// Waits until this outbox no longer holds publishers back; if it makes no progress within
    /// `timeout`, disconnects its session as a slow consumer. Returns once the publisher may go on.
    /// `who` is the session's client id, for the log.
    pub async fn wait_drained(&self, timeout: Duration, who: &str) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let inner = self.lock();
                if !inner.congested || inner.kick.is_some() {
                    return;
                }
                inner.last_progress.unwrap_or_else(Instant::now) + timeout
            };
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                let stalled = {
                    let inner = self.lock();
                    inner.congested
                        && inner.kick.is_none()
                        && inner.last_progress.is_none_or(|t| t.elapsed() >= timeout)
                };
                if stalled {
                    tracing::warn!(
                        client_id = who,
                        ?timeout,
                        "session took no message while at its queue bound; disconnecting slow consumer"
                    );
                    self.kick(SLOW_CONSUMER);
                    return;
                }
            }
        }
    }
}

enum Slot {
    Online {
        conn_id: u64,
        outbox: Arc<Outbox>,
    },
    Offline {
        /// Boxed: the slot lives in the session map, where every connected session would
        /// otherwise pay for the offline state's size too.
        data: Box<SessionData>,
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

/// Where a connected session's queue reached its bound while routing: the publisher
/// waits on it before reading more.
pub(crate) struct Congested {
    pub client_id: String,
    pub outbox: Arc<Outbox>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    subscriptions: SubscriptionTree,
    retained: HashMap<String, Arc<Message>>,
    /// Topic and payload bytes of `retained`.
    retained_bytes: usize,
    delayed_wills: HashMap<String, DelayedWill>,
    next_conn_id: u64,
    /// Set at shutdown: connections attaching from then on are told to go at once.
    closing: bool,
}

/// Why a connection could not attach to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttachRefused {
    /// Another connection still holds the session; it has been told to go, retry shortly.
    Busy,
    /// A new session would exceed `max_sessions`.
    Quota,
}

/// A publication, subscription or session over one of the broker's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaExceeded;

/// A session handed to a connection task.
pub(crate) struct Attached {
    pub conn_id: u64,
    pub session_present: bool,
    pub data: SessionData,
    pub outbox: Arc<Outbox>,
}

/// The broker core shared by all connections.
pub(crate) struct Core {
    pub config: BrokerConfig,
    state: Mutex<State>,
    /// Deliveries dropped by policy since start (QoS 1/2 to a full offline queue); logged as
    /// they happen.
    dropped: AtomicU64,
    /// Where idle plain-TCP connections park; set once the server runs.
    idle_pool: OnceLock<Weak<IdlePool>>,
}

fn expiry_deadline(now: Instant, expiry_secs: u32) -> Option<Instant> {
    (expiry_secs != u32::MAX).then(|| now + Duration::from_secs(u64::from(expiry_secs)))
}

impl Core {
    pub fn new(config: BrokerConfig) -> Arc<Core> {
        Arc::new(Core {
            config,
            state: Mutex::new(State::default()),
            dropped: AtomicU64::new(0),
            idle_pool: OnceLock::new(),
        })
    }

    /// Lets idle connections park in `pool` (while it lives).
    pub fn set_idle_pool(&self, pool: &Arc<IdlePool>) {
        let _ = self.idle_pool.set(Arc::downgrade(pool));
    }

    pub fn idle_pool(&self) -> Option<Arc<IdlePool>> {
        self.idle_pool.get().and_then(Weak::upgrade)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a connection to the session `client_id`. Refused while another connection still
    /// holds it (that one has been told to go; retry shortly) and when a new session would
    /// exceed `max_sessions`.
    pub fn attach(&self, client_id: &str, clean_start: bool) -> Result<Attached, AttachRefused> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = Instant::now();
        if let Some(session) = st.sessions.get_mut(client_id)
            && let Slot::Online { outbox, .. } = &session.slot
        {
            outbox.kick(SESSION_TAKEN_OVER);
            return Err(AttachRefused::Busy);
        }
        if !st.sessions.contains_key(client_id) && st.sessions.len() >= self.config.max_sessions {
            tracing::warn!(
                client_id,
                max_sessions = self.config.max_sessions,
                "refused: the broker holds as many sessions as it may"
            );
            return Err(AttachRefused::Quota);
        }
        let expired = matches!(
            st.sessions.get(client_id),
            Some(Session { slot: Slot::Offline { expires_at: Some(t), .. }, .. }) if *t <= now
        );
        if let Some(will) = st.delayed_wills.remove(client_id)
            && (clean_start || expired)
        {
            // The old session ends here, and a session's end releases its will.
            route(
                st,
                will.message,
                &self.config,
                &self.dropped,
                &mut Vec::new(),
            );
        }
        let mut data = None;
        if clean_start || expired {
            end_session(st, client_id);
        } else if let Some(Session {
            slot: Slot::Offline { data: d, .. },
            ..
        }) = st.sessions.get_mut(client_id)
        {
            data = Some(std::mem::take(&mut **d));
        }
        let session_present = data.is_some();
        let mut data = data.unwrap_or_default();
        st.next_conn_id += 1;
        let conn_id = st.next_conn_id;
        // Queued deliveries wait in the outbox, where routing sees how many there are.
        let outbox = Arc::new(Outbox::new(
            std::mem::take(&mut data.pending),
            self.config.max_queued_messages,
        ));
        if st.closing {
            outbox.kick(SERVER_SHUTTING_DOWN);
        }
        let slot = Slot::Online {
            conn_id,
            outbox: outbox.clone(),
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
        Ok(Attached {
            conn_id,
            session_present,
            data,
            outbox,
        })
    }

    /// Detaches a connection: keeps the session (with everything still queued for it, even past
    /// the bound, since the queue was bounded while online) unless `expiry_secs` is 0, and
    /// publishes or schedules the will.
    pub fn detach(
        &self,
        client_id: &str,
        conn_id: u64,
        mut data: SessionData,
        outbox: &Outbox,
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
        data.pending.extend(outbox.lock().queue.drain(..));
        // Publishers held back by this session go on.
        outbox.kick(0);
        if expiry_secs == 0 {
            let lost = data
                .pending
                .iter()
                .chain(data.inflight.iter().map(|i| &i.delivery))
                .filter(|d| d.qos != QoS::AtMostOnce)
                .count();
            if lost > 0 {
                tracing::info!(
                    client_id,
                    lost,
                    "session ended with undelivered QoS 1/2 messages"
                );
            }
            end_session(st, client_id);
            if let Some((message, _)) = will {
                route(st, message, &self.config, &self.dropped, &mut Vec::new());
            }
            return;
        }
        // QoS 0 messages are not kept for offline sessions.
        data.pending.retain(|d| d.qos != QoS::AtMostOnce);
        if let Some(session) = st.sessions.get_mut(client_id) {
            session.slot = Slot::Offline {
                data: Box::new(data),
                expires_at: expiry_deadline(now, expiry_secs),
            };
        }
        if let Some((message, delay)) = will {
            if delay == 0 {
                route(st, message, &self.config, &self.dropped, &mut Vec::new());
            } else {
                let due = now + Duration::from_secs(u64::from(delay.min(expiry_secs)));
                st.delayed_wills
                    .insert(client_id.to_owned(), DelayedWill { due, message });
            }
        }
    }

    /// Routes a message to every matching session and stores or clears it as retained.
    /// Returns how many sessions it reached; sessions whose queue is at its bound after taking
    /// the delivery are added to `congested` (the publisher's connection waits on them).
    /// A retained message the retained store has no room for is refused whole (not routed).
    pub fn publish(
        &self,
        message: Arc<Message>,
        congested: &mut Vec<Congested>,
    ) -> Result<usize, QuotaExceeded> {
        let mut guard = self.lock();
        if !retain_fits(&guard, &self.config, &message) {
            return Err(QuotaExceeded);
        }
        Ok(route(
            &mut guard,
            message,
            &self.config,
            &self.dropped,
            congested,
        ))
    }

    /// Routes a message to the matching subscriptions of one connected client only (a reply
    /// meant for it alone); never retained. Returns whether it reached the client.
    pub fn publish_to(&self, client_id: &str, message: Arc<Message>) -> bool {
        let mut guard = self.lock();
        let reached = route_to(
            &mut guard,
            message,
            &self.config,
            &self.dropped,
            &mut Vec::new(),
            Some(client_id),
        );
        reached > 0
    }

    /// Records a subscription; returns whether it replaced one and the retained messages it
    /// matches. A new filter beyond `max_subscriptions_per_client` is refused.
    pub fn subscribe(
        &self,
        client_id: &str,
        filter: &str,
        sub: Subscription,
    ) -> Result<(bool, Vec<Arc<Message>>), QuotaExceeded> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(session) = st.sessions.get(client_id)
            && !session.subscriptions.contains_key(filter)
            && session.subscriptions.len() >= self.config.max_subscriptions_per_client
        {
            return Err(QuotaExceeded);
        }
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
        Ok((existed, retained))
    }

    pub fn unsubscribe(&self, client_id: &str, filter: &str) -> bool {
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(session) = st.sessions.get_mut(client_id) {
            session.subscriptions.remove(filter);
        }
        st.subscriptions.unsubscribe(client_id, filter)
    }

    /// Tells the connection of `client_id`, if one is attached, to go with `reason`; returns
    /// whether one was.
    pub fn kick_client(&self, client_id: &str, reason: u8) -> bool {
        let st = self.lock();
        match st.sessions.get(client_id).map(|s| &s.slot) {
            Some(Slot::Online { outbox, .. }) => {
                outbox.kick(reason);
                true
            }
            _ => false,
        }
    }

    /// Tells every connected client to go (DISCONNECT 0x8B), now and whenever one attaches later.
    pub fn shut_down(&self) {
        let mut st = self.lock();
        st.closing = true;
        for session in st.sessions.values() {
            if let Slot::Online { outbox, .. } = &session.slot {
                outbox.kick(SERVER_SHUTTING_DOWN);
            }
        }
    }

    /// Periodic work: publishes due wills, ends expired sessions, drops expired retained messages,
    /// disconnects clients whose keep-alive expired and slow consumers.
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
                route(
                    st,
                    will.message,
                    &self.config,
                    &self.dropped,
                    &mut Vec::new(),
                );
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
                route(
                    st,
                    will.message,
                    &self.config,
                    &self.dropped,
                    &mut Vec::new(),
                );
            }
        }
        let mut freed = 0;
        st.retained.retain(|_, m| {
            let keep = !m.expired(now);
            if !keep {
                freed += retained_size(m);
            }
            keep
        });
        st.retained_bytes -= freed;
        for (client_id, session) in &st.sessions {
            if let Slot::Online { outbox, .. } = &session.slot {
                if outbox.check_keep_alive(now) {
                    tracing::info!(client_id, "keep-alive expired");
                } else {
                    outbox.check_idle();
                }
            }
        }
        // A session sitting at its queue bound without taking anything goes, even when no
        // new message arrives to notice it.
        for (client_id, session) in &st.sessions {
            if let Slot::Online { outbox, .. } = &session.slot
                && outbox.stalled(self.config.slow_consumer_timeout)
            {
                tracing::warn!(
                    client_id,
                    "session took no message while at its queue bound; disconnecting slow consumer"
                );
                outbox.kick(SLOW_CONSUMER);
            }
        }
    }
}

fn end_session(st: &mut State, client_id: &str) {
    if let Some(session) = st.sessions.remove(client_id) {
        for filter in session.subscriptions.keys() {
            st.subscriptions.unsubscribe(client_id, filter);
        }
    }
}

/// What a retained message counts towards `max_retained_bytes`.
fn retained_size(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

/// Whether keeping `message` as retained (if it is to be kept) stays within the bounds.
fn retain_fits(st: &State, config: &BrokerConfig, message: &Message) -> bool {
    if !message.retain || message.payload.is_empty() {
        return true;
    }
    let old = st.retained.get(&message.topic);
    let count = st.retained.len() + usize::from(old.is_none());
    let bytes = st.retained_bytes - old.map_or(0, |m| retained_size(m)) + retained_size(message);
    count <= config.max_retained_messages && bytes <= config.max_retained_bytes
}

fn route(
    st: &mut State,
    message: Arc<Message>,
    config: &BrokerConfig,
    dropped: &AtomicU64,
    congested: &mut Vec<Congested>,
) -> usize {
    route_to(st, message, config, dropped, congested, None)
}

/// Routes `message` as [`route`] does; with `only`, to that client's matching subscriptions
/// alone, and never retained.
fn route_to(
    st: &mut State,
    message: Arc<Message>,
    config: &BrokerConfig,
    dropped: &AtomicU64,
    congested: &mut Vec<Congested>,
    only: Option<&str>,
) -> usize {
    if message.retain && only.is_none() {
        if message.payload.is_empty() {
            if let Some(old) = st.retained.remove(&message.topic) {
                st.retained_bytes -= retained_size(&old);
            }
        } else if retain_fits(st, config, &message) {
            st.retained_bytes += retained_size(&message);
            if let Some(old) = st.retained.insert(message.topic.clone(), message.clone()) {
                st.retained_bytes -= retained_size(&old);
            }
        } else {
            // Only a will gets here (publications are checked first): it goes out, unretained.
            tracing::warn!(
                topic = message.topic,
                "retained message not kept: the retained store is at its bound"
            );
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
    let mut matches = subscriptions.matches(&message.topic, &online);
    // Overlapping subscriptions of one client yield one delivery: highest QoS, all identifiers.
    matches.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
    let mut deliveries: Vec<(String, Delivery)> = Vec::with_capacity(matches.len());
    for m in matches {
        if only.is_some_and(|o| o != m.client_id) {
            continue;
        }
        let o = &m.subscription.options;
        if o.no_local && m.client_id == message.publisher {
            continue;
        }
        let qos = o.qos.min(message.qos);
        let retain = o.retain_as_published && message.retain;
        match deliveries.last_mut() {
            Some((c, d)) if *c == m.client_id => {
                d.qos = d.qos.max(qos);
                d.retain |= retain;
                d.subscription_ids.extend(m.subscription.identifier);
            }
            _ => deliveries.push((
                m.client_id,
                Delivery {
                    message: message.clone(),
                    qos,
                    retain,
                    subscription_ids: m.subscription.identifier.into_iter().collect(),
                },
            )),
        }
    }
    let reached = deliveries.len();
    let bound = config.max_queued_messages.max(1);
    for (client_id, delivery) in deliveries {
        let Some(session) = sessions.get_mut(&client_id) else {
            continue;
        };
        match &mut session.slot {
            Slot::Online { outbox, .. } => {
                // Every QoS is queued and holds its publisher back at the bound: a QoS 0
                // flood is paced by its slowest live subscriber, not thinned by drops.
                let mut inner = outbox.lock();
                inner.active = true;
                if inner.queue.is_empty() {
                    // The stall clock starts when work arrives, not at the last delivery long ago.
                    inner.last_progress = Some(Instant::now());
                }
                inner.queue.push_back(delivery);
                let full = inner.queue.len() >= bound && inner.kick.is_none();
                if full {
                    inner.congested = true;
                }
                Outbox::signal(inner);
                if full && client_id != message.publisher {
                    congested.push(Congested {
                        client_id,
                        outbox: outbox.clone(),
                    });
                }
            }
            Slot::Offline { data, .. } => {
                if delivery.qos == QoS::AtMostOnce {
                    continue;
                }
                if data.pending.len() >= bound {
                    let total = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        client_id,
                        topic = message.topic,
                        dropped_total = total,
                        "message dropped: the offline session's queue is at max_queued_messages"
                    );
                    continue;
                }
                data.pending.push_back(delivery);
            }
        }
    }
    reached
}
