//! The echo guard: remembers what the bridge forwarded, so that the same message coming back
//! the opposite way (the cloud echoes a publish to its own subscriptions) is dropped once.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::Endpoint;

/// (bus the bridge published on, topic it published on, payload hash, bus the message came from)
type Key = (Endpoint, String, u64, Endpoint);

/// Most forwards remembered at once; beyond it the oldest are forgotten early (memory bound).
const MAX_REMEMBERED: usize = 1 << 17;

pub(crate) struct EchoGuard {
    window: Duration,
    /// Per key, the times of its forwards not yet expired or consumed, oldest first.
    pending: HashMap<Key, VecDeque<Instant>>,
    /// Every remembered forward in time order, to expire them.
    order: VecDeque<(Instant, Key)>,
}

impl EchoGuard {
    pub(crate) fn new(window: Duration) -> EchoGuard {
        EchoGuard {
            window,
            pending: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            let expired = now.saturating_duration_since(*at) > self.window;
            if !expired && self.order.len() <= MAX_REMEMBERED {
                break;
            }
            let Some((at, key)) = self.order.pop_front() else {
                break;
            };
            if let Some(times) = self.pending.get_mut(&key) {
                // Already consumed when its oldest time is newer than this entry.
                if times.front().is_some_and(|t| *t <= at) {
                    times.pop_front();
                }
                if times.is_empty() {
                    self.pending.remove(&key);
                }
            }
        }
    }

    /// The bridge published `hash` on `topic` of `onto`, taken from `from`.
    pub(crate) fn forwarded(
        &mut self,
        onto: Endpoint,
        topic: &str,
        hash: u64,
        from: Endpoint,
        now: Instant,
    ) {
        self.expire(now);
        let key = (onto, topic.to_string(), hash, from);
        self.pending.entry(key.clone()).or_default().push_back(now);
        self.order.push_back((now, key));
    }

    /// Whether a message received on `topic` of `on`, about to go to `to`, is the echo of a
    /// forward from `to` onto `on` within the window; if so that forward is consumed, so one
    /// forward suppresses one echo.
    pub(crate) fn is_echo(
        &mut self,
        on: Endpoint,
        topic: &str,
        hash: u64,
        to: Endpoint,
        now: Instant,
    ) -> bool {
        self.expire(now);
        let key = (on, topic.to_string(), hash, to);
        let Some(times) = self.pending.get_mut(&key) else {
            return false;
        };
        times.pop_front();
        if times.is_empty() {
            self.pending.remove(&key);
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.pending.values().map(VecDeque::len).sum()
    }
}
