use super::*;
use proptest::prelude::*;
use serde_json::json;

fn msg(publisher: &str, n: i64) -> Message {
    Message {
        payload: Payload::Json(json!({ "n": n })),
        publisher: publisher.to_string(),
    }
}

fn n_of(d: &Delivery) -> i64 {
    match &d.message.payload {
        Payload::Json(v) => v["n"].as_i64().unwrap(),
        Payload::Binary(_) => panic!("expected JSON"),
    }
}

#[tokio::test]
async fn exact_and_wildcard_subscribers_receive_with_context_topic() {
    let bus = Bus::new();
    let mut exact = bus
        .subscribe("a/b/c", SubscribeOptions::for_subscriber("x"))
        .unwrap();
    let mut plus = bus
        .subscribe("a/+/c", SubscribeOptions::for_subscriber("y"))
        .unwrap();
    let mut hash = bus
        .subscribe("a/#", SubscribeOptions::for_subscriber("z"))
        .unwrap();
    let mut other = bus
        .subscribe("b/#", SubscribeOptions::for_subscriber("w"))
        .unwrap();
    assert_eq!(bus.publish("a/b/c", msg("p", 1)).unwrap(), 3);
    for sub in [&mut exact, &mut plus, &mut hash] {
        let d = sub.recv().await.unwrap();
        assert_eq!(d.topic, "a/b/c");
        assert_eq!(d.message.publisher, "p");
        assert_eq!(n_of(&d), 1);
    }
    assert!(other.try_recv().is_none());
    // `#` matches the parent level too.
    assert_eq!(bus.publish("a", msg("p", 2)).unwrap(), 1);
    assert_eq!(n_of(&hash.recv().await.unwrap()), 2);
}

#[tokio::test]
async fn binary_payload_is_preserved() {
    let bus = Bus::new();
    let mut sub = bus
        .subscribe("t", SubscribeOptions::for_subscriber("s"))
        .unwrap();
    let body = Bytes::from_static(b"\x00\x01hello");
    bus.publish(
        "t",
        Message {
            payload: Payload::Binary(body.clone()),
            publisher: "p".into(),
        },
    )
    .unwrap();
    assert_eq!(
        sub.recv().await.unwrap().message.payload,
        Payload::Binary(body)
    );
}

#[tokio::test]
async fn receive_modes_and_defaults() {
    let bus = Bus::new();
    // Exact filter: default is all messages, including our own.
    let mut own_exact = bus
        .subscribe("t/1", SubscribeOptions::for_subscriber("me"))
        .unwrap();
    assert_eq!(own_exact.receive_mode(), ReceiveMode::ReceiveAllMessages);
    // Wildcard: default is from others.
    let mut own_wild = bus
        .subscribe("t/+", SubscribeOptions::for_subscriber("me"))
        .unwrap();
    assert_eq!(
        own_wild.receive_mode(),
        ReceiveMode::ReceiveMessagesFromOthers
    );
    let mut forced_all = bus
        .subscribe(
            "t/#",
            SubscribeOptions {
                receive_mode: Some(ReceiveMode::ReceiveAllMessages),
                subscriber_id: "me".into(),
                queue_capacity: 0,
            },
        )
        .unwrap();
    let mut forced_others = bus
        .subscribe(
            "t/1",
            SubscribeOptions {
                receive_mode: Some(ReceiveMode::ReceiveMessagesFromOthers),
                subscriber_id: "me".into(),
                queue_capacity: 0,
            },
        )
        .unwrap();
    assert_eq!(bus.publish("t/1", msg("me", 1)).unwrap(), 2);
    assert_eq!(n_of(&own_exact.recv().await.unwrap()), 1);
    assert_eq!(n_of(&forced_all.recv().await.unwrap()), 1);
    assert!(own_wild.try_recv().is_none());
    assert!(forced_others.try_recv().is_none());
    assert_eq!(bus.publish("t/1", msg("you", 2)).unwrap(), 4);
    assert_eq!(n_of(&own_wild.recv().await.unwrap()), 2);
    assert_eq!(n_of(&forced_others.recv().await.unwrap()), 2);
}

#[tokio::test]
async fn full_queue_drops_oldest_and_counts() {
    let bus = Bus::new();
    let mut sub = bus
        .subscribe(
            "q",
            SubscribeOptions {
                queue_capacity: 3,
                ..SubscribeOptions::for_subscriber("s")
            },
        )
        .unwrap();
    for n in 0..10 {
        bus.publish("q", msg("p", n)).unwrap();
    }
    assert_eq!(sub.dropped(), 7);
    let got: Vec<i64> = std::iter::from_fn(|| sub.try_recv().map(|d| n_of(&d))).collect();
    assert_eq!(got, vec![7, 8, 9]);
}

#[tokio::test]
async fn order_is_kept_per_subscriber() {
    let bus = Bus::new();
    let mut sub = bus
        .subscribe("o/#", SubscribeOptions::for_subscriber("s"))
        .unwrap();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for n in 0..500 {
                bus.publish("o/x", msg("p", n)).unwrap();
                if n % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    for expected in 0..500 {
        assert_eq!(n_of(&sub.recv().await.unwrap()), expected);
    }
    publisher.await.unwrap();
}

#[test]
fn dropping_a_subscription_unsubscribes_and_prunes() {
    let bus = Bus::new();
    let a = bus
        .subscribe("x/+/z", SubscribeOptions::for_subscriber("a"))
        .unwrap();
    let b = bus
        .subscribe("x/+/z", SubscribeOptions::for_subscriber("b"))
        .unwrap();
    assert_eq!(bus.subscription_count(), 2);
    drop(a);
    assert_eq!(bus.publish("x/y/z", msg("p", 1)).unwrap(), 1);
    drop(b);
    assert_eq!(bus.subscription_count(), 0);
    assert_eq!(bus.publish("x/y/z", msg("p", 1)).unwrap(), 0);
    assert!(bus.inner.root.read().unwrap().is_empty());
}

#[tokio::test]
async fn recv_ends_when_the_bus_is_gone() {
    let bus = Bus::new();
    let mut sub = bus
        .subscribe("t", SubscribeOptions::for_subscriber("s"))
        .unwrap();
    bus.publish("t", msg("p", 1)).unwrap();
    drop(bus);
    assert_eq!(n_of(&sub.recv().await.unwrap()), 1);
    assert!(sub.recv().await.is_none());
}

#[test]
fn invalid_topics_and_filters_are_rejected() {
    let bus = Bus::new();
    for topic in ["", "a/+", "a/#", "#", "a\0b"] {
        assert!(
            matches!(
                bus.publish(topic, msg("p", 0)),
                Err(BusError::InvalidTopic { .. })
            ),
            "{topic:?}"
        );
    }
    for filter in ["", "a/#/b", "a#", "a/b+", "+a", "a\0"] {
        assert!(
            matches!(
                bus.subscribe(filter, SubscribeOptions::default()),
                Err(BusError::InvalidFilter { .. })
            ),
            "{filter:?}"
        );
    }
    for filter in [
        "#",
        "+",
        "+/+",
        "a//b",
        "/",
        "a/+/#",
        "$aws/things/+/shadow",
    ] {
        assert!(
            bus.subscribe(filter, SubscribeOptions::default()).is_ok(),
            "{filter:?}"
        );
    }
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("".to_string()),
        Just("$x".to_string()),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("a publish topic is never empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 1..5),
        any::<bool>(),
    )
        .prop_map(|(mut l, hash)| {
            if hash {
                l.push("#".to_string());
            }
            l.join("/")
        })
        .prop_filter("a filter is never empty", |f| !f.is_empty())
}

/// Matching defined level by level, independently of the trie and of `filter_matches`.
fn reference_match(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if f.last() == Some(&"#") {
        let prefix = &f[..f.len() - 1];
        t.len() >= prefix.len() && prefix.iter().zip(&t).all(|(f, t)| *f == "+" || f == t)
    } else {
        f.len() == t.len() && f.iter().zip(&t).all(|(f, t)| *f == "+" || f == t)
    }
}

proptest! {
    #[test]
    fn trie_agrees_with_reference(filters in prop::collection::vec(filter(), 1..8), topic in topic()) {
        let bus = Bus::new();
        let subs: Vec<Subscription> = filters
            .iter()
            .map(|f| bus.subscribe(f, SubscribeOptions {
                receive_mode: Some(ReceiveMode::ReceiveAllMessages),
                ..SubscribeOptions::for_subscriber("s")
            }).unwrap())
            .collect();
        let expected = filters.iter().filter(|f| reference_match(f, &topic)).count();
        prop_assert_eq!(bus.publish(&topic, msg("p", 0)).unwrap(), expected);
        for (f, mut s) in filters.iter().zip(subs) {
            prop_assert_eq!(s.try_recv().is_some(), reference_match(f, &topic));
            prop_assert_eq!(filter_matches(f, &topic), reference_match(f, &topic));
        }
        prop_assert_eq!(bus.subscription_count(), 0);
    }
}

#[tokio::test]
async fn interest_reports_filters_held_by_others_until_the_last_goes() {
    let bus = Bus::new();
    let mine = bus
        .subscribe("#", SubscribeOptions::for_subscriber("relay"))
        .unwrap();
    let before = bus
        .subscribe("a/+", SubscribeOptions::for_subscriber("x"))
        .unwrap();
    let mut interest = bus.interest("relay");
    // What was held before watching is reported at once; the watcher's own filter is not.
    assert_eq!(
        interest.borrow_and_update().clone(),
        BTreeMap::from([("a/+".to_string(), 1)])
    );
    let second = bus
        .subscribe("a/+", SubscribeOptions::for_subscriber("y"))
        .unwrap();
    let other = bus
        .subscribe("b/c", SubscribeOptions::for_subscriber("x"))
        .unwrap();
    interest.changed().await.unwrap();
    assert_eq!(
        interest.borrow_and_update().clone(),
        BTreeMap::from([("a/+".to_string(), 2), ("b/c".to_string(), 1)])
    );
    // The watcher's own further subscriptions stay invisible to it.
    let mine_too = bus
        .subscribe("b/c", SubscribeOptions::for_subscriber("relay"))
        .unwrap();
    assert_eq!(interest.borrow()["b/c"], 1);
    drop(before);
    drop(other);
    interest.changed().await.unwrap();
    assert_eq!(
        interest.borrow_and_update().clone(),
        BTreeMap::from([("a/+".to_string(), 1)])
    );
    drop(second);
    interest.changed().await.unwrap();
    assert!(interest.borrow_and_update().is_empty());
    // Another watcher excluding nobody sees the relay's subscriptions.
    let all = bus.interest("");
    assert_eq!(
        all.borrow().clone(),
        BTreeMap::from([("#".to_string(), 1), ("b/c".to_string(), 1)])
    );
    drop((mine, mine_too));
    assert!(interest.borrow().is_empty());
}

#[test]
fn a_dropped_interest_watcher_is_forgotten() {
    let bus = Bus::new();
    drop(bus.interest("relay"));
    let _s = bus
        .subscribe("a", SubscribeOptions::for_subscriber("x"))
        .unwrap();
    assert!(bus.inner.interest.lock().unwrap().watchers.is_empty());
}

fn binary(publisher: &str, n: u8, len: usize) -> Message {
    Message {
        payload: Payload::Binary(Bytes::from(vec![n; len])),
        publisher: publisher.to_string(),
    }
}

/// Sum of queued payload sizes, drained.
fn drain_bytes(sub: &mut Subscription) -> (usize, Vec<u8>) {
    let mut total = 0;
    let mut firsts = Vec::new();
    while let Some(d) = sub.try_recv() {
        if let Payload::Binary(b) = &d.message.payload {
            total += b.len();
            firsts.push(b[0]);
        }
    }
    (total, firsts)
}

#[tokio::test]
async fn stalled_subscriber_of_large_payloads_stops_growing_at_the_byte_bound() {
    let bus = Bus::new();
    let mut stalled = bus
        .subscribe("big", SubscribeOptions::for_subscriber("slow"))
        .unwrap();
    // 1000 messages of 64 KiB: far under the count bound, 64 MiB in all.
    for n in 0..1000u32 {
        bus.publish("big", binary("p", (n % 251) as u8, 64 << 10))
            .unwrap();
    }
    assert!(stalled.dropped() > 0, "nothing was dropped");
    let (queued, firsts) = drain_bytes(&mut stalled);
    assert!(
        queued <= 8 << 20,
        "a stalled subscriber holds {queued} bytes, over the 8 MiB default"
    );
    // The oldest went first: what is left is the newest, in order.
    assert_eq!(*firsts.last().unwrap(), (999 % 251) as u8);
    assert_eq!(stalled.dropped() as usize + firsts.len(), 1000);
}
#[tokio::test]
async fn the_byte_bound_is_configurable_and_one_oversized_message_still_arrives() {
    let bus = Bus::with_queue_bytes(100 << 10);
    let mut sub = bus
        .subscribe("t", SubscribeOptions::for_subscriber("s"))
        .unwrap();
    for n in 0..10u8 {
        bus.publish("t", binary("p", n, 30 << 10)).unwrap();
    }
    let (queued, firsts) = drain_bytes(&mut sub);
    assert_eq!(firsts, vec![7, 8, 9], "{queued} bytes queued");
    assert_eq!(sub.dropped(), 7);
    // A message larger than the bound replaces the queue rather than being lost.
    bus.publish("t", binary("p", 1, 10)).unwrap();
    bus.publish("t", binary("p", 2, 200 << 10)).unwrap();
    let (_, firsts) = drain_bytes(&mut sub);
    assert_eq!(firsts, vec![2]);
}
