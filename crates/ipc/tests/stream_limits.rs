//! One authenticated connection cannot hold more than `max_streams` streams at once, nor one
//! component more than `max_connections_per_component` connections: beyond either bound the new
//! stream (or connection) alone is refused, and what is already open keeps working.

mod common;

use std::time::Duration;

use common::start;
use lichen_ipc::{ClientError, IpcClient, ServerOptions, TopicMessage};
use serde_json::json;

async fn publish(client: &IpcClient, topic: &str, n: i64) {
    client
        .call(
            "PublishToTopic",
            json!({ "topic": topic, "publishMessage": { "jsonMessage": { "message": n } } }),
        )
        .await
        .unwrap();
}

async fn next_json(stream: &mut lichen_ipc::EventStream) -> serde_json::Value {
    match tokio::time::timeout(Duration::from_secs(10), stream.recv_topic_message())
        .await
        .expect("no event within 10 s")
    {
        Some(Ok(TopicMessage::Json { message, .. })) => message,
        other => panic!("expected a JSON message, got {other:?}"),
    }
}

#[tokio::test]
async fn streams_beyond_the_bound_are_refused_alone_and_a_closed_one_frees_its_slot() {
    const BOUND: usize = 4;
    let fx = start(
        &["pub", "other"],
        ServerOptions {
            max_streams: BOUND,
            ..ServerOptions::default()
        },
    )
    .await;
    let client = IpcClient::connect(&fx.socket, &fx.tokens.mint("pub"))
        .await
        .unwrap();
    let mut open = Vec::new();
    for i in 0..BOUND {
        let (_, stream) = client
            .subscribe("SubscribeToTopic", json!({ "topic": format!("t/{i}") }))
            .await
            .unwrap();
        open.push(stream);
    }

    // One more: refused with a message naming the bound and what to do.
    let refused = client
        .subscribe("SubscribeToTopic", json!({ "topic": "t/extra" }))
        .await;
    match &refused {
        Err(ClientError::Remote { shape, message, .. }) => {
            assert_eq!(shape, "aws.greengrass#ServiceError", "{message}");
            assert!(
                message.contains(&format!("{BOUND} streams")) && message.contains("close"),
                "{message}"
            );
        }
        other => panic!("a stream beyond the bound of {BOUND} was opened: {other:?}"),
    }

    // The connection and its open streams still work: publishing reaches every subscription.
    for (i, stream) in open.iter_mut().enumerate() {
        publish(&client, &format!("t/{i}"), i as i64).await;
        assert_eq!(next_json(stream).await, json!(i));
    }

    // Closing one frees its slot for a new stream, which works; the bound holds again after.
    drop(open.remove(0));
    let (_, mut again) = client
        .subscribe("SubscribeToTopic", json!({ "topic": "t/again" }))
        .await
        .expect("a closed stream did not free its slot");
    publish(&client, "t/again", 7).await;
    assert_eq!(next_json(&mut again).await, json!(7));
    assert!(matches!(
        client
            .subscribe("SubscribeToTopic", json!({ "topic": "t/extra" }))
            .await,
        Err(ClientError::Remote { .. })
    ));

    // The bound is per connection: another connection of the same component has its own.
    let second = IpcClient::connect(&fx.socket, &fx.tokens.mint("pub"))
        .await
        .unwrap();
    let (_, mut other) = second
        .subscribe("SubscribeToTopic", json!({ "topic": "t/second" }))
        .await
        .unwrap();
    publish(&client, "t/second", 8).await;
    assert_eq!(next_json(&mut other).await, json!(8));
}

#[tokio::test]
async fn connections_beyond_a_components_bound_are_rejected_and_a_closed_one_frees_its_slot() {
    let fx = start(
        &["pub", "other"],
        ServerOptions {
            max_connections_per_component: 2,
            ..ServerOptions::default()
        },
    )
    .await;
    let token = fx.tokens.mint("pub");
    let first = IpcClient::connect(&fx.socket, &token).await.unwrap();
    let second = IpcClient::connect(&fx.socket, &token).await.unwrap();
    assert!(
        matches!(
            IpcClient::connect(&fx.socket, &token).await,
            Err(ClientError::Rejected)
        ),
        "a third connection of one component was accepted over a bound of 2"
    );
    // Another component is not affected.
    let other = IpcClient::connect(&fx.socket, &fx.tokens.mint("other"))
        .await
        .unwrap();
    publish(&other, "o", 1).await;
    // The accepted connections keep working; closing one frees its slot (the server notices
    // the close asynchronously, so a new connection is retried for a while).
    publish(&first, "p", 1).await;
    drop(second);
    let mut third = None;
    for _ in 0..200 {
        match IpcClient::connect(&fx.socket, &token).await {
            Ok(c) => {
                third = Some(c);
                break;
            }
            Err(ClientError::Rejected) => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let third = third.expect("a closed connection did not free its component's slot");
    publish(&third, "p", 2).await;
}

#[test]
fn the_default_bounds() {
    let options = ServerOptions::default();
    assert_eq!(options.max_streams, 1024);
    assert_eq!(options.max_connections_per_component, 1024);
    // Below the server's own bound, so one component cannot take every connection.
    assert!(options.max_connections_per_component < options.max_connections);
}
