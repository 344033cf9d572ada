use super::*;
use proptest::prelude::*;

const MAX: usize = MAX_REMAINING_LENGTH + 5;

fn roundtrip(p: &Packet, v: Version) -> Packet {
    let mut out = BytesMut::new();
    encode(p, v, &mut out);
    let (decoded, used) = decode(&out, Some(v), MAX)
        .expect("decodes")
        .expect("complete");
    assert_eq!(used, out.len());
    decoded
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9é/_ -]{0,12}"
}
fn topic() -> impl Strategy<Value = String> {
    "[a-z0-9é$]{1,5}(/[a-z0-9]{0,4}){0,3}"
}
fn filter() -> impl Strategy<Value = String> {
    prop_oneof![
        topic(),
        Just("#".to_string()),
        Just("a/+/c".to_string()),
        Just("$share/g/x/#".to_string())
    ]
}
fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}
fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}
fn user_props() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((text(), text()), 0..3)
}

fn publish_props() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(topic()),
        proptest::option::of(bytes()),
        proptest::collection::vec(1u32..268_435_455, 0..3),
        proptest::option::of(1u16..),
        user_props(),
    )
        .prop_map(|(exp, ct, rt, cd, ids, alias, up)| Properties {
            message_expiry_interval: exp,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: ids,
            topic_alias: alias,
            user_properties: up,
            ..Properties::default()
        })
}

fn ack_props() -> impl Strategy<Value = Properties> {
    (proptest::option::of(text()), user_props()).prop_map(|(rs, up)| Properties {
        reason_string: rs,
        user_properties: up,
        ..Properties::default()
    })
}

fn connect_props() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(1u16..),
        proptest::option::of(1u32..),
        proptest::option::of(any::<u16>()),
        proptest::option::of(0u8..2),
        proptest::option::of(text()),
        user_props(),
    )
        .prop_map(|(sei, rm, mps, tam, rri, am, up)| Properties {
            session_expiry_interval: sei,
            receive_maximum: rm,
            maximum_packet_size: mps,
            topic_alias_maximum: tam,
            request_response_information: rri,
            authentication_method: am,
            user_properties: up,
            ..Properties::default()
        })
}

fn connack_props() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(0u8..2),
        proptest::option::of(0u8..2),
        proptest::option::of(0u8..2),
        proptest::option::of(0u8..2),
        proptest::option::of(1u32..),
    )
        .prop_map(|(sei, aci, ska, mq, ra, wsa, sia, mps)| Properties {
            session_expiry_interval: sei,
            assigned_client_identifier: aci,
            server_keep_alive: ska,
            maximum_qos: mq,
            retain_available: ra,
            wildcard_subscription_available: wsa,
            subscription_identifier_available: sia,
            shared_subscription_available: Some(1),
            maximum_packet_size: mps,
            ..Properties::default()
        })
}

fn packet_v5() -> impl Strategy<Value = Packet> {
    let publish = (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic(),
        1u16..,
        publish_props(),
        bytes(),
    )
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            Packet::Publish(Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id: (qos != QoS::AtMostOnce).then_some(id),
                properties,
                payload,
            })
        });
    let ack = (0u8..4, 1u16.., any::<u8>(), ack_props()).prop_map(
        |(kind, packet_id, reason_code, properties)| {
            let a = Ack {
                packet_id,
                reason_code,
                properties,
            };
            match kind {
                0 => Packet::PubAck(a),
                1 => Packet::PubRec(a),
                2 => Packet::PubRel(a),
                _ => Packet::PubComp(a),
            }
        },
    );
    let will = proptest::option::of(
        (
            topic(),
            bytes(),
            qos(),
            any::<bool>(),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(|(topic, payload, qos, retain, delay)| Will {
                topic,
                payload,
                qos,
                retain,
                properties: Properties {
                    will_delay_interval: delay,
                    ..Properties::default()
                },
            }),
    );
    let connect = (
        any::<bool>(),
        any::<u16>(),
        connect_props(),
        text(),
        will,
        proptest::option::of(text()),
        proptest::option::of(bytes()),
    )
        .prop_map(
            |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                Packet::Connect(Connect {
                    version: Version::V5,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                })
            },
        );
    let connack = (any::<bool>(), any::<u8>(), connack_props()).prop_map(
        |(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code,
                properties,
            })
        },
    );
    let options = (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(
        |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
            qos,
            no_local,
            retain_as_published,
            retain_handling,
        },
    );
    let subscribe = (
        1u16..,
        proptest::option::of(1u32..268_435_455),
        proptest::collection::vec((filter(), options), 1..4),
    )
        .prop_map(|(packet_id, id, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties: Properties {
                    subscription_identifiers: id.into_iter().collect(),
                    ..Properties::default()
                },
                filters,
            })
        });
    let suback = (
        any::<u16>(),
        ack_props(),
        proptest::collection::vec(any::<u8>(), 1..4),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        });
    let unsubscribe =
        (1u16.., proptest::collection::vec(filter(), 1..4)).prop_map(|(packet_id, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: Properties::default(),
                filters,
            })
        });
    let unsuback = (
        any::<u16>(),
        ack_props(),
        proptest::collection::vec(any::<u8>(), 1..4),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes,
            })
        });
    let disconnect = (
        any::<u8>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
    )
        .prop_map(|(reason_code, sei, rs)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties: Properties {
                    session_expiry_interval: sei,
                    reason_string: rs,
                    ..Properties::default()
                },
            })
        });
    let auth = (
        any::<u8>(),
        proptest::option::of(text()),
        proptest::option::of(bytes()),
    )
        .prop_map(|(reason_code, m, d)| {
            Packet::Auth(Auth {
                reason_code,
                properties: Properties {
                    authentication_method: m,
                    authentication_data: d,
                    ..Properties::default()
                },
            })
        });
    prop_oneof![
        publish,
        ack,
        connect,
        connack,
        subscribe,
        suback,
        unsubscribe,
        unsuback,
        disconnect,
        auth,
        Just(Packet::PingReq),
        Just(Packet::PingResp)
    ]
}

/// Drops what MQTT 3.1.1 cannot carry, so a v5 packet becomes its 3.1.1 counterpart.
fn to_v311(p: Packet) -> Option<Packet> {
    let none = Properties::default;
    Some(match p {
        Packet::Connect(mut c) => {
            c.version = Version::V311;
            c.properties = none();
            if let Some(w) = &mut c.will {
                w.properties = none();
            }
            if c.username.is_none() {
                c.password = None;
            }
            Packet::Connect(c)
        }
        Packet::ConnAck(mut c) => {
            c.properties = none();
            Packet::ConnAck(c)
        }
        Packet::Publish(mut p) => {
            p.properties = none();
            Packet::Publish(p)
        }
        Packet::PubAck(a) => Packet::PubAck(Ack {
            reason_code: 0,
            properties: none(),
            ..a
        }),
        Packet::PubRec(a) => Packet::PubRec(Ack {
            reason_code: 0,
            properties: none(),
            ..a
        }),
        Packet::PubRel(a) => Packet::PubRel(Ack {
            reason_code: 0,
            properties: none(),
            ..a
        }),
        Packet::PubComp(a) => Packet::PubComp(Ack {
            reason_code: 0,
            properties: none(),
            ..a
        }),
        Packet::Subscribe(mut s) => {
            s.properties = none();
            for (_, o) in &mut s.filters {
                *o = SubscriptionOptions {
                    qos: o.qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                };
            }
            Packet::Subscribe(s)
        }
        Packet::SubAck(mut s) => {
            s.properties = none();
            Packet::SubAck(s)
        }
        Packet::Unsubscribe(u) => Packet::Unsubscribe(u),
        Packet::UnsubAck(mut u) => {
            u.properties = none();
            u.reason_codes.clear();
            Packet::UnsubAck(u)
        }
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect {
            reason_code: 0,
            properties: none(),
        }),
        Packet::Auth(_) => return None,
        other => other,
    })
}

proptest! {
    #[test]
    fn v5_packets_roundtrip(p in packet_v5()) {
        prop_assert_eq!(roundtrip(&p, Version::V5), p);
    }

    #[test]
    fn v311_packets_roundtrip(p in packet_v5()) {
        if let Some(p) = to_v311(p) {
            prop_assert_eq!(roundtrip(&p, Version::V311), p);
        }
    }

    #[test]
    fn split_input_needs_more_bytes(p in packet_v5(), cut in any::<prop::sample::Index>()) {
        let mut out = BytesMut::new();
        encode(&p, Version::V5, &mut out);
        let at = cut.index(out.len());
        prop_assert_eq!(decode(&out[..at], Some(Version::V5), MAX), Ok(None));
    }

    #[test]
    fn mutated_packets_never_panic(p in packet_v5(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), v5 in any::<bool>()) {
        let version = if v5 { Version::V5 } else { Version::V311 };
        let mut out = BytesMut::new();
        encode(&p, version, &mut out);
        let mut raw = out.to_vec();
        for (i, b) in edits {
            let at = i.index(raw.len());
            raw[at] = b;
        }
        let _ = decode(&raw, Some(version), MAX);
        let _ = decode(&raw, None, 1024);
    }

    #[test]
    fn whatever_decodes_reencodes_to_the_same_packet(p in packet_v5(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4), v5 in any::<bool>()) {
        let version = if v5 { Version::V5 } else { Version::V311 };
        let mut out = BytesMut::new();
        encode(&p, version, &mut out);
        let mut raw = out.to_vec();
        for (i, b) in edits {
            let at = i.index(raw.len());
            raw[at] = b;
        }
        if let Ok(Some((decoded, _))) = decode(&raw, Some(version), MAX) {
            let wire = match &decoded {
                Packet::Connect(c) => c.version,
                _ => version,
            };
            prop_assert_eq!(roundtrip(&decoded, wire), decoded);
        }
    }

    #[test]
    fn random_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&raw, Some(Version::V5), MAX);
        let _ = decode(&raw, Some(Version::V311), MAX);
        let _ = decode(&raw, None, MAX);
    }
}

fn err(raw: &[u8], v: Option<Version>) -> CodecError {
    decode(raw, v, MAX).expect_err("must be rejected")
}

#[test]
fn connect_is_required_first() {
    let e = err(&[0xc0, 0x00], None);
    assert!(
        matches!(
            e,
            CodecError::Protocol {
                packet: "PINGREQ",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn reserved_flags_are_rejected() {
    // SUBSCRIBE with flags 0000 instead of 0010.
    let e = err(
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        Some(Version::V311),
    );
    assert_eq!(e.reason_code(), 0x81);
    assert!(e.to_string().contains("reserved fixed-header flags"), "{e}");
    // PUBREL must carry 0010.
    assert!(decode(&[0x60, 0x02, 0x00, 0x01], Some(Version::V311), MAX).is_err());
    // PINGREQ with a flag bit.
    assert!(decode(&[0xc1, 0x00], Some(Version::V311), MAX).is_err());
}

#[test]
fn publish_qos3_and_dup_on_qos0_are_malformed() {
    assert!(
        err(
            &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            Some(Version::V311)
        )
        .to_string()
        .contains("QoS 3")
    );
    assert!(
        err(&[0x38, 0x03, 0x00, 0x01, b'a'], Some(Version::V311))
            .to_string()
            .contains("DUP")
    );
}

#[test]
fn malformed_utf8_is_rejected() {
    let e = err(&[0x30, 0x04, 0x00, 0x02, 0xc3, 0x28], Some(Version::V311));
    assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    let e = err(&[0x30, 0x04, 0x00, 0x02, b'a', 0x00], Some(Version::V311));
    assert!(e.to_string().contains("U+0000"), "{e}");
    // An encoded surrogate half (U+D800).
    assert!(
        decode(
            &[0x30, 0x05, 0x00, 0x03, 0xed, 0xa0, 0x80],
            Some(Version::V311),
            MAX
        )
        .is_err()
    );
}

#[test]
fn wildcards_in_topic_names_are_rejected() {
    let e = err(&[0x30, 0x03, 0x00, 0x01, b'#'], Some(Version::V311));
    assert!(
        e.to_string().contains("wildcard") || e.to_string().contains("+ or #"),
        "{e}"
    );
}

#[test]
fn remaining_length_limits() {
    // Five length bytes.
    let e = err(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f], Some(Version::V311));
    assert!(e.to_string().contains("longer than 4 bytes"), "{e}");
    // Declared size over the limit is refused before the body arrives.
    let e = decode(&[0x30, 0xff, 0x7f], Some(Version::V311), 1000).unwrap_err();
    assert_eq!(
        e,
        CodecError::TooLarge {
            size: 16386,
            max: 1000
        }
    );
    assert_eq!(e.reason_code(), 0x95);
}

#[test]
fn connect_validation() {
    let mut out = BytesMut::new();
    let c = Connect {
        version: Version::V311,
        clean_start: true,
        keep_alive: 10,
        properties: Properties::default(),
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
    };
    encode(&Packet::Connect(c), Version::V311, &mut out);
    let mut raw = out.to_vec();
    // Connect flags are at offset 2 (fixed header) + 6 (name) + 1 (level).
    raw[9] |= 0x01;
    assert!(
        err(&raw, None)
            .to_string()
            .contains("reserved connect flag")
    );
    raw[9] = 0x02 | 0x08; // will QoS without will flag
    assert!(
        err(&raw, None)
            .to_string()
            .contains("without the will flag")
    );
    raw[9] = 0x02;
    raw[8] = 3; // protocol level 3 with name MQTT
    assert!(matches!(
        err(&raw, None),
        CodecError::UnsupportedVersion { level: 3, .. }
    ));
}

#[test]
fn duplicate_and_misplaced_properties_are_protocol_errors() {
    // PUBACK id 1, reason 0, properties: reason string twice.
    let raw = [
        0x40, 0x0a, 0x00, 0x01, 0x00, 0x06, 0x1f, 0x00, 0x00, 0x1f, 0x00, 0x00,
    ];
    let e = err(&raw, Some(Version::V5));
    assert!(e.to_string().contains("more than once"), "{e}");
    // PUBACK carrying a topic alias.
    let raw = [0x40, 0x07, 0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01];
    assert_eq!(err(&raw, Some(Version::V5)).reason_code(), 0x82);
    // Unknown property id.
    let raw = [0x40, 0x06, 0x00, 0x01, 0x00, 0x02, 0x7e, 0x00];
    assert_eq!(err(&raw, Some(Version::V5)).reason_code(), 0x81);
}

#[test]
fn trailing_bytes_are_malformed() {
    let e = err(&[0xc0, 0x01, 0x00], Some(Version::V311));
    assert!(e.to_string().contains("trailing"), "{e}");
}

#[test]
fn subscribe_options_validation() {
    // v3.1.1 with the no-local bit set (reserved there).
    let raw = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04];
    assert!(
        err(&raw, Some(Version::V311))
            .to_string()
            .contains("reserved subscription option")
    );
    // v5 retain handling 3.
    let raw = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30];
    assert!(
        err(&raw, Some(Version::V5))
            .to_string()
            .contains("retain handling 3")
    );
}

#[test]
fn topic_filter_validation() {
    assert!(validate_topic_filter("a/#").is_ok());
    assert!(validate_topic_filter("+/b/+").is_ok());
    assert!(validate_topic_filter("a/#/b").is_err());
    assert!(validate_topic_filter("a/b#").is_err());
    assert!(validate_topic_filter("a+/b").is_err());
    assert!(validate_topic_filter("").is_err());
}
