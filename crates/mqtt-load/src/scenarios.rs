//! The measurements: throughput with loss and duplicate counts, latency, idle-connection memory.

use crate::client::{self, Reader, Writer};
use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use lichen_mqtt::{Packet, QoS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// Bytes at the start of every payload: publisher index, sequence number, send time.
pub const HEADER: usize = 16;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// A payload of `size` bytes (at least [`HEADER`]) stamped with who sent it, which one and when.
pub fn payload(publisher: u32, seq: u32, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(HEADER));
    b.put_u32(publisher);
    b.put_u32(seq);
    b.put_u64(now_ns());
    b.resize(size.max(HEADER), 0xA5);
    b.freeze()
}

/// Reads back what [`payload`] stamped: (publisher, seq, nanoseconds since sent).
pub fn parse(payload: &[u8]) -> Option<(u32, u32, u64)> {
    let h = payload.get(..HEADER)?;
    let publisher = u32::from_be_bytes(h[0..4].try_into().ok()?);
    let seq = u32::from_be_bytes(h[4..8].try_into().ok()?);
    let sent = u64::from_be_bytes(h[8..16].try_into().ok()?);
    Some((publisher, seq, now_ns().saturating_sub(sent)))
}

/// Which messages one subscriber saw, to count losses and duplicates.
#[derive(Debug, Clone)]
pub struct Tracker {
    seen: Vec<Vec<bool>>,
    pub unique: u64,
    pub duplicates: u64,
    /// Messages whose header names no known publisher or sequence number.
    pub foreign: u64,
}

impl Tracker {
    pub fn new(publishers: usize, per_publisher: usize) -> Tracker {
        Tracker {
            seen: vec![vec![false; per_publisher]; publishers],
            unique: 0,
            duplicates: 0,
            foreign: 0,
        }
    }

    pub fn record(&mut self, publisher: u32, seq: u32) {
        match self
            .seen
            .get_mut(publisher as usize)
            .and_then(|s| s.get_mut(seq as usize))
        {
            Some(seen) if *seen => self.duplicates += 1,
            Some(seen) => {
                *seen = true;
                self.unique += 1;
            }
            None => self.foreign += 1,
        }
    }

    pub fn expected(&self) -> u64 {
        self.seen.iter().map(|s| s.len() as u64).sum()
    }

    pub fn lost(&self) -> u64 {
        self.expected() - self.unique
    }
}

/// The value at quantile `q` (0..=1) of sorted samples.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One throughput or latency run.
#[derive(Debug, Clone)]
pub struct Flow {
    pub publishers: usize,
    pub subscribers: usize,
    pub qos: QoS,
    /// Messages per publisher.
    pub messages: usize,
    pub payload: usize,
    /// Messages per second per publisher; `None` sends as fast as flow control allows.
    pub rate: Option<f64>,
    pub time_limit: Duration,
}

#[derive(Debug, Clone)]
pub struct FlowResult {
    pub delivered: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub elapsed: Duration,
    /// Sorted end-to-end latencies in nanoseconds.
    pub latencies: Vec<u64>,
    pub timed_out: bool,
}

impl FlowResult {
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// QoS 1 messages a publisher may have unacknowledged.
const PUB_WINDOW: usize = 100;
/// QoS 0 messages (times subscribers) that may be on their way end to end: QoS 0 has no
/// acknowledgement, so publishers pace themselves on what subscribers in this process received.
const QOS0_WINDOW: u64 = 500;

struct Shared {
    received: AtomicU64,
    sent: AtomicU64,
    last_receive_ns: AtomicU64,
}

/// Runs `flow` against the broker at `addr` on topics under `prefix`.
pub async fn run_flow(addr: SocketAddr, prefix: &str, flow: &Flow) -> anyhow::Result<FlowResult> {
    let shared = Arc::new(Shared {
        received: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        last_receive_ns: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let record_latency = flow.rate.is_some();
    let mut subs = Vec::new();
    for i in 0..flow.subscribers {
        let (mut r, mut w) = client::connect(addr, &format!("{prefix}-sub-{i}")).await?;
        client::subscribe(&mut r, &mut w, &format!("{prefix}/#"), flow.qos).await?;
        let tracker = Tracker::new(flow.publishers, flow.messages);
        subs.push(tokio::spawn(subscriber(
            r,
            w,
            tracker,
            shared.clone(),
            stop_rx.clone(),
            record_latency,
        )));
    }
    let mut pubs = Vec::new();
    for i in 0..flow.publishers {
        let (r, w) = client::connect(addr, &format!("{prefix}-pub-{i}")).await?;
        pubs.push((r, w));
    }
    let expected_each = (flow.publishers * flow.messages) as u64;
    let expected = expected_each * flow.subscribers as u64;
    let start_ns = now_ns();
    let start = Instant::now();
    let mut pub_tasks = Vec::new();
    for (i, (r, w)) in pubs.into_iter().enumerate() {
        let topic = format!("{prefix}/{i}");
        pub_tasks.push(tokio::spawn(publisher(
            r,
            w,
            i as u32,
            topic,
            flow.clone(),
            shared.clone(),
        )));
    }
    // Done when everything arrived, at the time limit, or when nothing more arrives for a while
    // after the publishers finished.
    let deadline = start + flow.time_limit;
    let mut last = (0, Instant::now());
    let mut timed_out = false;
    loop {
        let got = shared.received.load(Ordering::Relaxed);
        if got >= expected {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        let publishers_done = pub_tasks.iter().all(|t| t.is_finished());
        if got != last.0 {
            last = (got, Instant::now());
        } else if publishers_done && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in &pub_tasks {
        t.abort();
    }
    for t in pub_tasks {
        if let Ok(Err(e)) = t.await {
            eprintln!("  publisher: {e:#}");
        }
    }
    let _ = stop_tx.send(true);
    let mut result = FlowResult {
        delivered: 0,
        expected,
        lost: 0,
        duplicates: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        timed_out,
    };
    for s in subs {
        let (tracker, mut lat) = s.await.context("subscriber task")??;
        result.delivered += tracker.unique;
        result.lost += tracker.lost();
        result.duplicates += tracker.duplicates;
        result.latencies.append(&mut lat);
    }
    let end_ns = shared.last_receive_ns.load(Ordering::Relaxed).max(start_ns);
    result.elapsed = Duration::from_nanos(end_ns - start_ns);
    result.latencies.sort_unstable();
    Ok(result)
}

async fn subscriber(
    mut r: Reader,
    mut w: Writer,
    mut tracker: Tracker,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    record_latency: bool,
) -> anyhow::Result<(Tracker, Vec<u64>)> {
    let mut latencies = Vec::new();
    loop {
        let packet = tokio::select! {
            p = r.next() => p,
            _ = stop.changed() => break,
        };
        let mut packet = match packet {
            Ok(Some(p)) => p,
            Ok(None) | Err(_) => break,
        };
        let mut n = 0;
        loop {
            if let Packet::Publish(p) = &packet {
                if let Some((publisher, seq, age)) = parse(&p.payload) {
                    tracker.record(publisher, seq);
                    if record_latency {
                        latencies.push(age);
                    }
                }
                if let Some(id) = p.packet_id {
                    w.queue_puback(id);
                }
                n += 1;
            }
            match r.buffered()? {
                Some(p) => packet = p,
                None => break,
            }
        }
        if n > 0 {
            shared.received.fetch_add(n, Ordering::Relaxed);
            shared
                .last_receive_ns
                .fetch_max(now_ns(), Ordering::Relaxed);
        }
        if w.flush().await.is_err() {
            break;
        }
    }
    Ok((tracker, latencies))
}

async fn publisher(
    mut r: Reader,
    mut w: Writer,
    index: u32,
    topic: String,
    flow: Flow,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let window = Arc::new(Semaphore::new(PUB_WINDOW));
    let acks = {
        let window = window.clone();
        tokio::spawn(async move {
            while let Ok(Some(p)) = r.next().await {
                if let Packet::PubAck(_) = p {
                    window.add_permits(1);
                }
            }
        })
    };
    let mut ticker = flow.rate.map(|rate| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let fanout = flow.subscribers.max(1) as u64;
    let mut packet_id: u16 = 0;
    let result = async {
        for seq in 0..flow.messages {
            if let Some(t) = &mut ticker {
                w.flush().await?;
                t.tick().await;
            }
            match flow.qos {
                QoS::AtMostOnce if ticker.is_none() => {
                    // End-to-end pacing: wait while too much is on its way (bounded, as lost
                    // messages never arrive).
                    let waited = Instant::now();
                    while shared.sent.load(Ordering::Relaxed) * fanout
                        > shared.received.load(Ordering::Relaxed) + QOS0_WINDOW * fanout
                        && waited.elapsed() < Duration::from_millis(200)
                    {
                        w.flush().await?;
                        tokio::task::yield_now().await;
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
                QoS::AtMostOnce => {}
                _ => {
                    let permit = match window.try_acquire() {
                        Ok(p) => p,
                        Err(_) => {
                            w.flush().await?;
                            window.acquire().await?
                        }
                    };
                    permit.forget();
                }
            }
            packet_id = packet_id.wrapping_add(1).max(1);
            w.queue_publish(
                &topic,
                flow.qos,
                packet_id,
                payload(index, seq as u32, flow.payload),
            );
            shared.sent.fetch_add(1, Ordering::Relaxed);
            if w.buf.len() >= 16 * 1024 {
                w.flush().await?;
            }
        }
        w.flush().await?;
        if flow.qos != QoS::AtMostOnce {
            // Stay connected until every PUBACK is in, so nothing is cut off by a close.
            let _ = window.acquire_many(PUB_WINDOW as u32).await?;
        }
        anyhow::Ok(())
    }
    .await;
    acks.abort();
    result
}

/// Opens `n` idle connections (`concurrency` handshakes at a time) and returns them.
pub async fn open_idle(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(Reader, Writer)>> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            client::connect(addr, &format!("idle-{i}")).await
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await??);
    }
    Ok(conns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_losses_and_duplicates() {
        let mut t = Tracker::new(2, 3);
        t.record(0, 0);
        t.record(0, 0);
        t.record(1, 2);
        t.record(5, 0);
        assert_eq!((t.unique, t.duplicates, t.foreign, t.lost()), (2, 1, 1, 4));
    }

    #[test]
    fn payload_round_trips_its_header() {
        let p = payload(7, 42, 64);
        assert_eq!(p.len(), 64);
        let (publisher, seq, _) = parse(&p).unwrap();
        assert_eq!((publisher, seq), (7, 42));
        assert!(parse(&p[..10]).is_none());
    }

    #[test]
    fn quantiles_pick_from_sorted_samples() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 51);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
