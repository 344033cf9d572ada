//! Local pub/sub through an in-process IPC server between two Rust clients (no core; for the
//! figures between two components of a real core see `ipc_bench_pair` and bench/ipc.sh).
//!
//! `cargo run --release -p lichen-ipc --example ipc_bench [messages]`. For 64 B and 8 KiB binary
//! payloads it prints: throughput with 16, 64 and 256 publishes in flight from one connection
//! (one subscriber; msgs/s counted at the subscriber) and publish→event latency p50/p99 with one
//! message in flight. The clients publish with `IpcClient::publish_binary` and read with
//! `EventStream::recv_topic_message` (typed, no JSON value tree).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lichen_bus::Bus;
use lichen_config::ConfigStore;
use lichen_ipc::{
    Authorizer, ConfigSource, IpcClient, IpcServer, Router, ServerOptions, TokenRegistry,
    TopicMessage, register_kernel_operations,
};
use serde_json::json;

/// Publish windows measured; the first is the headline figure (`msgs_per_s`).
const IN_FLIGHT: [usize; 3] = [16, 64, 256];

fn payload(size: usize, stamp_ns: u64) -> Vec<u8> {
    let mut body = vec![0x5a_u8; size.max(8)];
    body[..8].copy_from_slice(&stamp_ns.to_be_bytes());
    body
}

fn stamp_of(message: &TopicMessage) -> u64 {
    match message {
        TopicMessage::Binary { message, .. } => message
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
            .unwrap_or(0),
        TopicMessage::Json { .. } => 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

type Served = (IpcServer, Arc<TokenRegistry>);

fn in_process_server(socket: &std::path::Path) -> Result<Served, Box<dyn std::error::Error>> {
    let store = ConfigStore::in_memory();
    let acl = json!({ "aws.greengrass.ipc.pubsub": { "bench:1": { "operations": ["*"], "resources": ["*"] } } });
    store.merge(
        &[],
        json!({ "services": {
            "bench.Pub": { "configuration": { "accessControl": acl.clone() } },
            "bench.Sub": { "configuration": { "accessControl": acl } }
        } }),
        1,
    )?;
    let config: Arc<dyn ConfigSource> = Arc::new(store);
    let tokens = Arc::new(TokenRegistry::new());
    let router = Arc::new(Router::new(Arc::new(Authorizer::new(
        config.clone(),
        tokens.clone(),
    ))));
    register_kernel_operations(&router, Bus::new(), config, tokens.clone());
    let server = IpcServer::bind(socket, router, tokens.clone(), ServerOptions::default())?;
    Ok((server, tokens))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let messages: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("ipc.socket");
    let (server, tokens) = in_process_server(&socket)?;
    let publisher = Arc::new(IpcClient::connect(&socket, &tokens.mint("bench.Pub")).await?);
    let subscriber = IpcClient::connect(&socket, &tokens.mint("bench.Sub")).await?;
    let origin = Instant::now();

    // LICHEN_IPC_BENCH_SIZES=64 measures one payload size only (e.g. to profile it).
    let sizes: Vec<usize> = std::env::var("LICHEN_IPC_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 8192]);
    for size in sizes {
        let (_, mut events) = subscriber
            .subscribe(
                "SubscribeToTopic",
                json!({ "topic": "bench/t", "receiveMode": "RECEIVE_ALL_MESSAGES" }),
            )
            .await?;

        // Throughput, for each publish window.
        let mut rates = Vec::new();
        for in_flight in IN_FLIGHT {
            let start = Instant::now();
            let mut senders = Vec::new();
            for worker in 0..in_flight {
                let publisher = publisher.clone();
                let count = messages / in_flight + usize::from(worker < messages % in_flight);
                senders.push(tokio::spawn(async move {
                    for _ in 0..count {
                        let stamp = origin.elapsed().as_nanos() as u64;
                        publisher
                            .publish_binary("bench/t", &payload(size, stamp))
                            .await
                            .expect("publish");
                    }
                }));
            }
            let mut received = 0usize;
            let mut elapsed = Duration::ZERO;
            while received < messages {
                match tokio::time::timeout(Duration::from_secs(2), events.recv_topic_message())
                    .await
                {
                    Ok(Some(Ok(_))) => {
                        received += 1;
                        elapsed = start.elapsed();
                    }
                    _ => break,
                }
            }
            for s in senders {
                s.await?;
            }
            // Events still queued from a short count must not reach the next round.
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(50), events.recv()).await
            {}
            let rate = received as f64 / elapsed.as_secs_f64();
            println!(
                "payload {size:>5} B, {in_flight:>3} in flight: {rate:>8.0} msgs/s ({received}/{messages} received, {} dropped by the bounded queue, {:.2?})",
                messages - received,
                elapsed
            );
            rates.push((in_flight, received, rate));
        }

        // Latency, one message in flight.
        let rounds = (messages / 10).clamp(100, 5000);
        let mut latencies = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let stamp = origin.elapsed().as_nanos() as u64;
            publisher
                .publish_binary("bench/t", &payload(size, stamp))
                .await?;
            let event = events.recv_topic_message().await.ok_or("stream ended")??;
            let sent = Duration::from_nanos(stamp_of(&event));
            latencies.push(origin.elapsed().saturating_sub(sent));
        }
        latencies.sort();
        let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
        println!(
            "payload {size:>5} B: publish→event latency p50 {p50:.1?} p99 {p99:.1?} ({rounds} messages)"
        );
        drop(events);
    }
    server.shutdown().await;
    Ok(())
}
