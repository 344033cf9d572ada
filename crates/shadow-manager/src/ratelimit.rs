//! Token buckets for the rate limits of §2.2: local requests (all things, and per thing) and
//! outbound sync requests. A bucket holds one second's worth of tokens, so a burst may reach the
//! rate and the average never exceeds it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        self.last = now;
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token, returning how long the caller must wait before using it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate.max(1.0)
    }
}

/// The local request limits: a request is allowed when both the total and its thing's bucket
/// have a token.
#[derive(Debug)]
pub struct LocalLimits {
    total: TokenBucket,
    per_thing_rate: f64,
    per_thing: HashMap<String, TokenBucket>,
}

/// Idle things' buckets are forgotten past this many, so memory stays bounded.
const MAX_TRACKED_THINGS: usize = 1024;

impl LocalLimits {
    pub fn new(total: f64, per_thing: f64, now: Instant) -> LocalLimits {
        LocalLimits {
            total: TokenBucket::new(total, now),
            per_thing_rate: per_thing,
            per_thing: HashMap::new(),
        }
    }

    pub fn allow(&mut self, thing: &str, now: Instant) -> bool {
        if self.per_thing.len() >= MAX_TRACKED_THINGS && !self.per_thing.contains_key(thing) {
            self.per_thing.retain(|_, b| !b.is_full(now));
        }
        let rate = self.per_thing_rate;
        let bucket = self
            .per_thing
            .entry(thing.to_string())
            .or_insert_with(|| TokenBucket::new(rate, now));
        // Check both before taking either, so a refused request costs nothing.
        bucket.refill(now);
        self.total.refill(now);
        if bucket.tokens >= 1.0 && self.total.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            self.total.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_thing_and_total_limits() {
        let t0 = Instant::now();
        let mut l = LocalLimits::new(5.0, 2.0, t0);
        assert!(l.allow("a", t0));
        assert!(l.allow("a", t0));
        assert!(
            !l.allow("a", t0),
            "third request of thing a within the second"
        );
        assert!(l.allow("b", t0));
        assert!(l.allow("b", t0));
        assert!(l.allow("c", t0));
        assert!(!l.allow("d", t0), "the total of 5 is spent");
        // Half a second refills one of a's two tokens and 2.5 of the total.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.allow("a", t1));
        assert!(!l.allow("a", t1));
        assert!(l.allow("d", t1));
        assert!(
            !l.allow("e", t1 + Duration::from_millis(1)),
            "total at 0.5 tokens"
        );
    }

    #[test]
    fn reserve_spaces_outbound_requests() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, t0);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        assert_eq!(b.reserve(t0), Duration::from_millis(500));
        assert_eq!(b.reserve(t0), Duration::from_millis(1000));
    }
}
