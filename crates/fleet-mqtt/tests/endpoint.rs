//! The device endpoint with real mutual TLS and a raw MQTT client: who may connect, publish,
//! subscribe and receive, and what happens when a certificate changes.

mod support;

use bytes::Bytes;
use lichen_broker::codec::{QoS, Version};
use lichen_fleet_mqtt::CertificateStatus::{Active, Inactive, Revoked};
use std::time::Duration;
use support::*;

const NOT_AUTHORIZED_V3: u8 = 0x05;
const NOT_AUTHORIZED: u8 = 0x87;

#[tokio::test]
async fn refused_without_a_client_certificate_or_with_a_foreign_one() {
    let fleet = Fleet::start().await;
    for version in [Version::V311, Version::V5] {
        let outcome = fleet.connect(None, "door-1", version).await;
        assert!(matches!(outcome, Outcome::Closed), "{outcome:?}");
    }
    // Signed by a CA the fleet does not trust, though registered under its id.
    let rogue = Ca::new("Rogue CA").device("door-1");
    fleet.dir.put(lichen_fleet_mqtt::DeviceCertificate {
        id: rogue.id.clone(),
        status: Active,
        things: vec![thing("door-1")],
        policies: vec![thing_policy()],
    });
    let outcome = fleet.connect(Some(&rogue), "door-1", Version::V5).await;
    assert!(matches!(outcome, Outcome::Closed), "{outcome:?}");
}

#[tokio::test]
async fn refused_with_an_unknown_inactive_or_revoked_certificate() {
    let fleet = Fleet::start().await;
    let unknown = fleet.ca.device("unregistered");
    let inactive = fleet.register("inactive", Inactive, &["door-1"], vec![thing_policy()]);
    let revoked = fleet.register("revoked", Revoked, &["door-1"], vec![thing_policy()]);
    for creds in [&unknown, &inactive, &revoked] {
        let v3 = fleet.connect(Some(creds), "door-1", Version::V311).await;
        assert!(matches!(v3, Outcome::Refused(NOT_AUTHORIZED_V3)), "{v3:?}");
        let v5 = fleet.connect(Some(creds), "door-1", Version::V5).await;
        assert!(matches!(v5, Outcome::Refused(NOT_AUTHORIZED)), "{v5:?}");
    }
    // The same thing with an active certificate connects.
    let active = fleet.register("active", Active, &["door-1"], vec![thing_policy()]);
    fleet
        .connect(Some(&active), "door-1", Version::V311)
        .await
        .accepted();
}

#[tokio::test]
async fn the_client_id_is_an_attached_thing_unless_the_policy_names_it() {
    let fleet = Fleet::start().await;
    let connect_any = || {
        policy(
            "connect-any",
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}}"#,
        )
    };
    let creds = fleet.register("door", Active, &["door-1"], vec![connect_any()]);
    fleet
        .connect(Some(&creds), "door-1", Version::V5)
        .await
        .accepted();
    let other = fleet
        .connect(Some(&creds), "someone-else", Version::V5)
        .await;
    assert!(
        matches!(other, Outcome::Refused(NOT_AUTHORIZED)),
        "{other:?}"
    );
    // The thing policy's variable resolves only for the thing's own name.
    let by_thing = fleet.register("door2", Active, &["door-2"], vec![thing_policy()]);
    let wrong = fleet
        .connect(Some(&by_thing), "door-1", Version::V311)
        .await;
    assert!(
        matches!(wrong, Outcome::Refused(NOT_AUTHORIZED_V3)),
        "{wrong:?}"
    );
    // A policy that names the client id says otherwise.
    let named = policy(
        "named",
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:eu-west-1:123456789012:client/door-3-monitor"}}"#,
    );
    let creds3 = fleet.register("door3", Active, &["door-3"], vec![named]);
    fleet
        .connect(Some(&creds3), "door-3-monitor", Version::V5)
        .await
        .accepted();
    // An explicit Deny wins over it.
    let deny = policy(
        "deny",
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/door-4"}}"#,
    );
    let creds4 = fleet.register("door4", Active, &["door-4"], vec![connect_any(), deny]);
    let denied = fleet.connect(Some(&creds4), "door-4", Version::V5).await;
    assert!(
        matches!(denied, Outcome::Refused(NOT_AUTHORIZED)),
        "{denied:?}"
    );
    // A claim certificate (no thing) is bound by its policy alone.
    let claim = fleet.register("claim", Active, &[], vec![connect_any()]);
    fleet
        .connect(Some(&claim), "provisioning-1234", Version::V311)
        .await
        .accepted();
    // No policy at all: denied by default.
    let bare = fleet.register("bare", Active, &["door-5"], vec![]);
    let refused = fleet.connect(Some(&bare), "door-5", Version::V5).await;
    assert!(
        matches!(refused, Outcome::Refused(NOT_AUTHORIZED)),
        "{refused:?}"
    );
    // The service's own client id is never a device's.
    let service = fleet
        .connect(Some(&claim), "$lichen/fleet-service", Version::V5)
        .await;
    assert!(
        matches!(service, Outcome::Refused(NOT_AUTHORIZED)),
        "{service:?}"
    );
}

#[tokio::test]
async fn a_message_round_trips_under_the_thing_policy_with_either_alpn() {
    let fleet = Fleet::start().await;
    let creds = fleet.register("door", Active, &["door-1"], vec![thing_policy()]);
    for (version, alpn) in [
        (Version::V311, &b"x-amzn-mqtt-ca"[..]),
        (Version::V5, &b"mqtt"[..]),
    ] {
        let mut c = fleet
            .connect_alpn(Some(&creds), "door-1", version, &[alpn])
            .await
            .accepted();
        assert_eq!(c.alpn().as_deref(), Some(alpn));
        assert_eq!(c.subscribe(&["dev/door-1/#"]).await, vec![1]);
        assert_eq!(c.publish("dev/door-1/temp", b"21.5").await, Some(0));
        let (topic, payload) = c.message(WAIT).await.expect("own message back");
        assert_eq!(
            (topic.as_str(), &payload[..]),
            ("dev/door-1/temp", &b"21.5"[..])
        );
    }
}

#[tokio::test]
async fn a_publish_outside_the_policy_is_refused() {
    let fleet = Fleet::start().await;
    let creds = fleet.register("door", Active, &["door-1"], vec![thing_policy()]);
    let mut watcher = {
        let all = policy(
            "all",
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:*","Resource":"*"}}"#,
        );
        let w = fleet.register("watcher", Active, &["watcher"], vec![all]);
        let mut c = fleet
            .connect(Some(&w), "watcher", Version::V5)
            .await
            .accepted();
        assert_eq!(c.subscribe(&["#"]).await, vec![1]);
        c
    };
    // MQTT 5: PUBACK "not authorized", and the connection goes on.
    let mut v5 = fleet
        .connect(Some(&creds), "door-1", Version::V5)
        .await
        .accepted();
    assert_eq!(
        v5.publish("dev/door-2/temp", b"x").await,
        Some(NOT_AUTHORIZED)
    );
    assert!(v5.alive().await);
    drop(v5);
    // MQTT 3.1.1 has no negative PUBACK: the connection is closed, as AWS IoT does.
    let mut v3 = fleet
        .connect(Some(&creds), "door-1", Version::V311)
        .await
        .accepted();
    assert_eq!(v3.publish("dev/door-2/temp", b"x").await, None);
    // Neither reached a subscriber.
    assert_eq!(watcher.message(QUIET).await, None);
}

#[tokio::test]
async fn a_retained_publish_needs_retain_publish() {
    let fleet = Fleet::start().await;
    let publish_only = policy(
        "publish-only",
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":["iot:Connect","iot:Publish","iot:Subscribe","iot:Receive"],"Resource":"*"},
            {"Effect":"Allow","Action":"iot:RetainPublish","Resource":"arn:aws:iot:*:*:topic/kept/*"}]}"#,
    );
    let creds = fleet.register("door", Active, &["door-1"], vec![publish_only]);
    let mut c = fleet
        .connect(Some(&creds), "door-1", Version::V5)
        .await
        .accepted();
    assert_eq!(
        c.publish_retained("state/door-1", b"open").await,
        Some(NOT_AUTHORIZED)
    );
    assert_eq!(c.publish_retained("kept/door-1", b"open").await, Some(0x10));
    // Only the allowed one was kept.
    assert_eq!(c.subscribe(&["state/#", "kept/#"]).await, vec![1, 1]);
    let (topic, payload) = c.message(WAIT).await.expect("the retained message");
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("kept/door-1", &b"open"[..])
    );
    assert_eq!(c.message(QUIET).await, None);
}

#[tokio::test]
async fn subscriptions_are_refused_per_filter() {
    let fleet = Fleet::start().await;
    let creds = fleet.register("door", Active, &["door-1"], vec![thing_policy()]);
    let mut v5 = fleet
        .connect(Some(&creds), "door-1", Version::V5)
        .await
        .accepted();
    // `+` and `#` in a policy are literal: `dev/door-1/*` covers the filter `dev/door-1/#`,
    // but nothing covers `dev/+/temp`.
    assert_eq!(
        v5.subscribe(&["dev/door-1/#", "dev/door-2/#", "dev/+/temp"])
            .await,
        vec![1, NOT_AUTHORIZED, NOT_AUTHORIZED]
    );
    drop(v5);
    let mut v3 = fleet
        .connect(Some(&creds), "door-1", Version::V311)
        .await
        .accepted();
    assert_eq!(
        v3.subscribe(&["dev/door-2/#", "dev/door-1/x"]).await,
        vec![0x80, 1]
    );
    assert!(v3.alive().await);
}

#[tokio::test]
async fn deliveries_need_receive() {
    let fleet = Fleet::start().await;
    let reader = policy(
        "reader",
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"iot:Connect","Resource":"*"},
            {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:*:*:topicfilter/news/#"},
            {"Effect":"Allow","Action":"iot:Receive","Resource":"arn:aws:iot:*:*:topic/news/*"},
            {"Effect":"Deny","Action":"iot:Receive","Resource":"arn:aws:iot:*:*:topic/news/secret"}]}"#,
    );
    let creds = fleet.register("reader", Active, &["reader"], vec![reader]);
    let mut c = fleet
        .connect(Some(&creds), "reader", Version::V311)
        .await
        .accepted();
    assert_eq!(c.subscribe(&["news/#"]).await, vec![1]);
    let ep = &fleet.endpoint;
    ep.publish(
        "news/secret",
        Bytes::from_static(b"s"),
        QoS::AtLeastOnce,
        false,
    )
    .await
    .unwrap();
    ep.publish(
        "news/open",
        Bytes::from_static(b"o"),
        QoS::AtLeastOnce,
        false,
    )
    .await
    .unwrap();
    let (topic, _) = c.message(WAIT).await.expect("the allowed message");
    assert_eq!(topic, "news/open");
    assert_eq!(c.message(QUIET).await, None);
    // The subscription survives the refused delivery.
    assert!(c.alive().await);
}

#[tokio::test]
async fn a_revoked_certificate_is_disconnected() {
    let fleet = Fleet::start().await;
    let creds = fleet.register("door", Active, &["door-1"], vec![thing_policy()]);
    let other = fleet.register("door2", Active, &["door-2"], vec![thing_policy()]);
    let mut v5 = fleet
        .connect(Some(&creds), "door-1", Version::V5)
        .await
        .accepted();
    let mut bystander = fleet
        .connect(Some(&other), "door-2", Version::V5)
        .await
        .accepted();
    fleet.dir.update(&creds.id, |c| c.status = Revoked);
    assert_eq!(
        fleet.endpoint.certificate_changed(&creds.id).await.unwrap(),
        1
    );
    assert_eq!(v5.closed().await, Some(NOT_AUTHORIZED));
    assert!(bystander.alive().await);
    let again = fleet.connect(Some(&creds), "door-1", Version::V5).await;
    assert!(
        matches!(again, Outcome::Refused(NOT_AUTHORIZED)),
        "{again:?}"
    );

    // MQTT 3.1.1: the connection closes. Detaching the policy has the same effect.
    let creds3 = fleet.register("door3", Active, &["door-3"], vec![thing_policy()]);
    let mut v3 = fleet
        .connect(Some(&creds3), "door-3", Version::V311)
        .await
        .accepted();
    fleet.dir.update(&creds3.id, |c| c.policies.clear());
    assert_eq!(
        fleet
            .endpoint
            .certificate_changed(&creds3.id)
            .await
            .unwrap(),
        1
    );
    assert_eq!(v3.closed().await, None);
}

#[tokio::test]
async fn a_changed_policy_applies_to_connected_devices() {
    let fleet = Fleet::start().await;
    let creds = fleet.register("door", Active, &["door-1"], vec![thing_policy()]);
    let mut c = fleet
        .connect(Some(&creds), "door-1", Version::V5)
        .await
        .accepted();
    // 0x10: accepted, no subscriber.
    assert_eq!(c.publish("dev/door-1/a", b"1").await, Some(0x10));
    let deny = policy(
        "deny-a",
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/dev/door-1/a"}}"#,
    );
    fleet.dir.update(&creds.id, |c| c.policies.push(deny));
    // Still allowed to connect: it stays, under the new policy.
    assert_eq!(
        fleet.endpoint.certificate_changed(&creds.id).await.unwrap(),
        0
    );
    assert!(c.alive().await);
    assert_eq!(c.publish("dev/door-1/a", b"2").await, Some(NOT_AUTHORIZED));
    assert_eq!(c.publish("dev/door-1/b", b"3").await, Some(0x10));
}

#[tokio::test]
async fn a_periodic_recheck_catches_changes_it_was_not_told_about() {
    let fleet = Fleet::start_with(Some(Duration::from_millis(200))).await;
    let creds = fleet.register("door", Active, &["door-1"], vec![thing_policy()]);
    let mut c = fleet
        .connect(Some(&creds), "door-1", Version::V311)
        .await
        .accepted();
    fleet.dir.update(&creds.id, |c| c.status = Inactive);
    assert_eq!(c.closed().await, None);
}

#[tokio::test]
async fn service_topics_take_device_publishes_and_nothing_else_under_aws() {
    let fleet = Fleet::start().await;
    let all = policy(
        "all",
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:*","Resource":"*"}}"#,
    );
    let creds = fleet.register("door", Active, &["door-1"], vec![all.clone()]);
    let w = fleet.register("watcher", Active, &["watcher"], vec![all]);
    let mut watcher = fleet
        .connect(Some(&w), "watcher", Version::V5)
        .await
        .accepted();
    assert_eq!(
        watcher.subscribe(&["$aws/things/+/shadow/#"]).await,
        vec![1]
    );
    let mut c = fleet
        .connect(Some(&creds), "door-1", Version::V5)
        .await
        .accepted();
    let update = "$aws/things/door-1/shadow/update";
    // No handler serves it yet: the service's topic is closed to devices, whatever the policy.
    assert_eq!(c.publish(update, b"{}").await, Some(NOT_AUTHORIZED));
    let mut served = fleet
        .endpoint
        .serve_topics("$aws/things/+/shadow/update")
        .unwrap();
    assert_eq!(c.publish(update, br#"{"state":{}}"#).await, Some(0));
    let got = tokio::time::timeout(WAIT, served.recv())
        .await
        .expect("the handler gets it")
        .unwrap();
    assert_eq!(got.topic, update);
    assert_eq!(&got.payload[..], br#"{"state":{}}"#);
    assert_eq!(got.client_id, "door-1");
    assert_eq!(got.thing_name.as_deref(), Some("door-1"));
    assert_eq!(got.certificate_id, creds.id);
    // A reply topic stays the service's: the device cannot fake one.
    assert_eq!(
        c.publish("$aws/things/door-1/shadow/update/accepted", b"{}")
            .await,
        Some(NOT_AUTHORIZED)
    );
    // Only the service's reply reaches subscribers.
    fleet
        .endpoint
        .publish(
            "$aws/things/door-1/shadow/update/accepted",
            Bytes::from_static(b"{}"),
            QoS::AtLeastOnce,
            false,
        )
        .await
        .unwrap();
    let (topic, _) = watcher.message(WAIT).await.expect("the service's reply");
    assert_eq!(topic, "$aws/things/door-1/shadow/update/accepted");
    assert_eq!(watcher.message(QUIET).await, None);
    // Once the handler is gone, the topic closes again.
    drop(served);
    assert_eq!(c.publish(update, b"{}").await, Some(NOT_AUTHORIZED));
}

#[tokio::test]
async fn a_reply_to_one_device_reaches_it_alone() {
    let fleet = Fleet::start().await;
    let claim = policy(
        "claim",
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"iot:Connect","Resource":"*"},
            {"Effect":"Allow","Action":["iot:Subscribe","iot:Receive"],"Resource":["arn:aws:iot:*:*:topicfilter/$aws/certificates/create/*","arn:aws:iot:*:*:topic/$aws/certificates/create/*"]}]}"#,
    );
    let creds = fleet.register("claim", Active, &[], vec![claim]);
    let accepted = "$aws/certificates/create/json/accepted";
    let mut a = fleet
        .connect(Some(&creds), "maker-a", Version::V311)
        .await
        .accepted();
    let mut b = fleet
        .connect(Some(&creds), "maker-b", Version::V5)
        .await
        .accepted();
    assert_eq!(a.subscribe(&[accepted]).await, vec![1]);
    assert_eq!(b.subscribe(&[accepted]).await, vec![1]);
    let ep = &fleet.endpoint;
    let reached = ep
        .publish_to(
            "maker-b",
            accepted,
            Bytes::from_static(b"{\"privateKey\":\"k\"}"),
            QoS::AtLeastOnce,
        )
        .unwrap();
    assert!(reached);
    let (topic, _) = b.message(WAIT).await.expect("the reply");
    assert_eq!(topic, accepted);
    assert_eq!(a.message(QUIET).await, None);
    // Not subscribed, or not connected: it reaches no one.
    assert!(
        !ep.publish_to(
            "maker-b",
            "$aws/certificates/create/json/rejected",
            Bytes::new(),
            QoS::AtMostOnce
        )
        .unwrap()
    );
    assert!(
        !ep.publish_to("maker-c", accepted, Bytes::new(), QoS::AtMostOnce)
            .unwrap()
    );
}

#[tokio::test]
async fn the_service_publishes_at_qos_0_or_1_only() {
    let fleet = Fleet::start().await;
    let err = fleet
        .endpoint
        .publish("a", Bytes::new(), QoS::ExactlyOnce, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("QoS 0 or 1"), "{err}");
    let err = fleet
        .endpoint
        .publish("a/#", Bytes::new(), QoS::AtMostOnce, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("a/#"), "{err}");
    fleet.endpoint.shutdown().await;
}
