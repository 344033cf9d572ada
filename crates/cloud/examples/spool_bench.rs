//! Durable publishes per second through the cloud link's disk spool (offline link, so nothing
//! drains it). `cargo run --release -p lichen-cloud --example spool_bench -- [messages] [publishers] [payload bytes]`

use std::time::Instant;

use lichen_cloud::{CloudLink, CloudMessage, LinkConfig, MessageProperties, QoS};

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("numbers: messages publishers payload-bytes")
        })
        .collect();
    let messages = args.first().copied().unwrap_or(20_000);
    let publishers = args.get(1).copied().unwrap_or(1).max(1);
    let payload = vec![b'x'; args.get(2).copied().unwrap_or(100) as usize];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = LinkConfig::new("bench", dir.path().join("spool"));
    config.spooler.max_size_bytes = 1 << 30;
    let (link, _) = CloudLink::start(config).await.expect("link");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let link = link.clone();
        let payload = bytes::Bytes::from(payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..messages / publishers {
                link.publish(CloudMessage {
                    topic: format!("bench/{p}"),
                    payload: payload.clone(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: MessageProperties::default(),
                })
                .await
                .expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let secs = started.elapsed().as_secs_f64();
    let done = messages / publishers * publishers;
    println!(
        "{done} durable publishes of {} bytes by {publishers} concurrent publishers in {secs:.2} s: {:.0}/s",
        payload.len(),
        done as f64 / secs
    );
}
