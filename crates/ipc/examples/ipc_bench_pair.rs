//! Local pub/sub between two components of a real core: a publisher and a subscriber, each its
//! own process with its own token, each on a single-threaded runtime (bench/ipc.sh deploys both).
//!
//! `ipc_bench_pair --subscriber DIR [messages]` subscribes to `bench/t`, writes `DIR/sub.ready`,
//! and measures what arrives; `ipc_bench_pair --publisher DIR [messages]` waits for that file and
//! publishes. Both compute the same schedule from `messages`: for 64 B and 8 KiB binary payloads,
//! one throughput round per publish window (16, 64, 256 publishes in flight; msgs/s counted at the
//! subscriber from the first message's send time to the last arrival), then a latency round with
//! one message in flight (publish → event, from the send time the publisher wrote into the
//! payload to the subscriber's receipt; the publisher sends the next message once the subscriber
//! has acknowledged the last on `bench/ack`). The subscriber acknowledges every round on
//! `bench/ack` and writes its figures as JSON to `DIR/rust.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lichen_ipc::{EventStream, IpcClient, TopicMessage};
use serde_json::json;

const IN_FLIGHT: [usize; 3] = [16, 64, 256];
const SIZES: [usize; 2] = [64, 8192];
/// A throughput round ends when every message arrived or none came for this long (the
/// subscriber's bounded queue may drop some).
const ROUND_IDLE: Duration = Duration::from_secs(2);

/// Wall-clock nanoseconds: the one clock both processes share.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Payload: send time (8 bytes), round (4), sequence (4), filler.
fn payload(size: usize, round: u32, seq: u32) -> Vec<u8> {
    let mut body = vec![0x5a_u8; size.max(16)];
    body[..8].copy_from_slice(&now_ns().to_be_bytes());
    body[8..12].copy_from_slice(&round.to_be_bytes());
    body[12..16].copy_from_slice(&seq.to_be_bytes());
    body
}

fn fields(message: &[u8]) -> Option<(u64, u32, u32)> {
    Some((
        u64::from_be_bytes(message.get(..8)?.try_into().ok()?),
        u32::from_be_bytes(message.get(8..12)?.try_into().ok()?),
        u32::from_be_bytes(message.get(12..16)?.try_into().ok()?),
    ))
}

fn ack(round: u32, seq: u32) -> [u8; 8] {
    let mut a = [0u8; 8];
    a[..4].copy_from_slice(&round.to_be_bytes());
    a[4..].copy_from_slice(&seq.to_be_bytes());
    a
}

fn throughput_round(size_index: usize, window_index: usize) -> u32 {
    (size_index * 10 + window_index) as u32
}

fn latency_round(size_index: usize) -> u32 {
    (size_index * 10 + 9) as u32
}

fn latency_messages(messages: usize) -> usize {
    (messages / 10).clamp(100, 5000)
}

async fn wait_ack(
    acks: &mut EventStream,
    round: u32,
    seq: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let want = ack(round, seq);
    while binary(acks).await? != want {}
    Ok(())
}

async fn binary(events: &mut EventStream) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    loop {
        match events.recv_topic_message().await.ok_or("stream ended")?? {
            TopicMessage::Binary { message, .. } => return Ok(message),
            TopicMessage::Json { .. } => continue,
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (role, dir) = match (args.first(), args.get(1)) {
        (Some(role), Some(dir)) => (role.clone(), PathBuf::from(dir)),
        _ => return Err("usage: ipc_bench_pair --publisher|--subscriber DIR [messages]".into()),
    };
    let messages: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let socket = std::env::var("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")?;
        let token = std::env::var("SVCUID")?;
        let client = Arc::new(IpcClient::connect(Path::new(&socket), &token).await?);
        match role.as_str() {
            "--publisher" => publisher(client, &dir, messages).await,
            "--subscriber" => subscriber(client, &dir, messages).await,
            other => Err(format!("unknown role {other}").into()),
        }
    })
}

async fn publisher(
    client: Arc<IpcClient>,
    dir: &Path,
    messages: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let (_, mut acks) = client
        .subscribe("SubscribeToTopic", json!({ "topic": "bench/ack" }))
        .await?;
    while !dir.join("sub.ready").exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (si, size) in SIZES.into_iter().enumerate() {
        for (wi, in_flight) in IN_FLIGHT.into_iter().enumerate() {
            let round = throughput_round(si, wi);
            let mut senders = Vec::new();
            for worker in 0..in_flight {
                let client = client.clone();
                let count = messages / in_flight + usize::from(worker < messages % in_flight);
                senders.push(tokio::spawn(async move {
                    for i in 0..count {
                        let seq = (i * in_flight + worker) as u32;
                        client
                            .publish_binary("bench/t", &payload(size, round, seq))
                            .await
                            .expect("publish");
                    }
                }));
            }
            for s in senders {
                s.await?;
            }
            wait_ack(&mut acks, round, 0).await?;
        }
        let round = latency_round(si);
        for seq in 0..latency_messages(messages) as u32 {
            client
                .publish_binary("bench/t", &payload(size, round, seq))
                .await?;
            wait_ack(&mut acks, round, seq).await?;
        }
    }
    Ok(())
}

async fn subscriber(
    client: Arc<IpcClient>,
    dir: &Path,
    messages: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let (_, mut events) = client
        .subscribe(
            "SubscribeToTopic",
            json!({ "topic": "bench/t", "receiveMode": "RECEIVE_ALL_MESSAGES" }),
        )
        .await?;
    std::fs::write(dir.join("sub.ready"), b"")?;
    let mut results = Vec::new();
    for (si, size) in SIZES.into_iter().enumerate() {
        let mut rates = Vec::new();
        for (wi, in_flight) in IN_FLIGHT.into_iter().enumerate() {
            let round = throughput_round(si, wi);
            let (mut received, mut first_sent, mut last_at) = (0usize, u64::MAX, 0u64);
            while received < messages {
                let message = match tokio::time::timeout(ROUND_IDLE, binary(&mut events)).await {
                    Ok(m) => m?,
                    Err(_) => break,
                };
                match fields(&message) {
                    Some((sent, r, _)) if r == round => {
                        received += 1;
                        first_sent = first_sent.min(sent);
                        last_at = now_ns();
                    }
                    _ => {}
                }
            }
            let secs = last_at.saturating_sub(first_sent) as f64 / 1e9;
            let rate = if secs > 0.0 {
                received as f64 / secs
            } else {
                0.0
            };
            println!(
                "payload {size:>5} B, {in_flight:>3} in flight: {rate:>8.0} msgs/s ({received}/{messages} received)"
            );
            rates.push((in_flight, received, rate));
            client.publish_binary("bench/ack", &ack(round, 0)).await?;
        }
        let round = latency_round(si);
        let rounds = latency_messages(messages);
        let mut latencies = Vec::with_capacity(rounds);
        while latencies.len() < rounds {
            let message = binary(&mut events).await?;
            let arrived = now_ns();
            if let Some((sent, r, seq)) = fields(&message)
                && r == round
            {
                latencies.push(Duration::from_nanos(arrived.saturating_sub(sent)));
                client.publish_binary("bench/ack", &ack(round, seq)).await?;
            }
        }
        latencies.sort();
        let pick = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        let (p50, p99) = (pick(0.50), pick(0.99));
        println!(
            "payload {size:>5} B: publish→event latency p50 {p50:.1?} p99 {p99:.1?} ({rounds} messages)"
        );
        let (_, received, rate) = rates[0];
        results.push(json!({
            "client": "rust", "payload": size, "messages": messages, "received": received,
            "msgs_per_s": rate.round(),
            "msgs_per_s_by_in_flight": rates.iter().map(|(w, _, r)| (w.to_string(), json!(r.round()))).collect::<serde_json::Map<_, _>>(),
            "p50_us": p50.as_secs_f64() * 1e6, "p99_us": p99.as_secs_f64() * 1e6,
        }));
    }
    let path = dir.join("rust.json");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&results)?)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}
