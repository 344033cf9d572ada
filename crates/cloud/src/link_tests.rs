use super::*;

fn message(topic: &str, qos: QoS, payload: &[u8]) -> CloudMessage {
    CloudMessage {
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain: false,
        properties: MessageProperties::default(),
    }
}

async fn offline_link(dir: &std::path::Path) -> CloudLink {
    let mut c = LinkConfig::new("thing", dir.join("spool"));
    c.max_message_size = 16;
    CloudLink::start(c).await.unwrap().0
}

#[tokio::test]
async fn offline_link_spools_qos1_and_refuses_what_it_cannot_keep() {
    let dir = tempfile::tempdir().unwrap();
    let link = offline_link(dir.path()).await;
    assert_eq!(link.status(), ConnectionStatus::Disconnected);
    link.publish(message("a/b", QoS::AtLeastOnce, b"kept"))
        .await
        .unwrap();
    assert_eq!(link.spool_usage().0, 1);
    let e = link
        .publish(message("a/b", QoS::AtMostOnce, b"gone"))
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::OfflineQos0 { .. }), "{e}");
    let e = link
        .publish(message("a/b", QoS::AtLeastOnce, &[0; 17]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("maxMessageSizeInBytes (16)"), "{e}");
    let e = link
        .publish(message("a/+", QoS::AtLeastOnce, b"x"))
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::InvalidTopic { .. }), "{e}");
    assert_eq!(link.spool_usage().0, 1, "refused messages are not spooled");
    link.shutdown().await;
    drop(link);
    // The spooled message is there for the next start.
    let link = offline_link(dir.path()).await;
    assert_eq!(link.spool_usage().0, 1);
}

#[tokio::test]
async fn subscriptions_are_counted_and_delivered_per_filter() {
    let dir = tempfile::tempdir().unwrap();
    let link = offline_link(dir.path()).await;
    let mut a = link.subscribe("s/+", QoS::AtLeastOnce).await.unwrap();
    let mut b = link.subscribe("s/+", QoS::AtMostOnce).await.unwrap();
    let mut c = link.subscribe("other/#", QoS::AtMostOnce).await.unwrap();
    assert_eq!(link.shared.filters().len(), 2);
    link.shared
        .dispatch(message("s/1", QoS::AtLeastOnce, b"one"));
    assert_eq!(a.recv().await.unwrap().payload, Bytes::from_static(b"one"));
    assert_eq!(b.recv().await.unwrap().payload, Bytes::from_static(b"one"));
    assert!(c.rx.try_recv().is_err(), "other/# does not match s/1");
    drop(a);
    assert_eq!(link.shared.filters().len(), 2, "b still holds s/+");
    drop(b);
    let filters = link.shared.filters();
    assert_eq!(filters, vec![("other/#".to_string(), QoS::AtMostOnce)]);
    assert!(link.subscribe("bad/#/x", QoS::AtMostOnce).await.is_err());
}

#[test]
fn ipc_events_carry_the_mqtt_message_shape() {
    let mut m = message("t/1", QoS::AtLeastOnce, b"\x00hi");
    m.properties.user_properties = vec![("k".into(), "v".into())];
    m.properties.payload_format = Some(1);
    m.properties.correlation_data = Some(Bytes::from_static(b"c"));
    let e = ipc::event_of(&m);
    assert_eq!(
        e,
        serde_json::json!({"message": {
            "topicName": "t/1",
            "payload": "AGhp",
            "retain": false,
            "userProperties": [{"key": "k", "value": "v"}],
            "correlationData": "Yw==",
            "payloadFormat": "1",
        }})
    );
}
