//! A table of the spec's examples, run through parse + apply.

use super::*;
use serde_json::{Value, json};

const T0: u64 = 1_000;

fn update(stored: &Stored, payload: Value) -> Result<UpdateOutcome, ShadowError> {
    let limits = Limits::default();
    let req = UpdateRequest::parse(payload.to_string().as_bytes(), &limits)?;
    apply_update(stored, &req, &limits, T0)
}

fn chain(steps: &[Value]) -> Stored {
    let mut stored = Stored::Missing;
    for s in steps {
        stored = Stored::Present(update(&stored, s.clone()).unwrap().document);
    }
    stored
}

fn state(stored: &Stored) -> Value {
    get(stored, "t", None, None, T0).unwrap()["state"].clone()
}

#[test]
fn merge_examples() {
    // (steps, expected state incl. delta)
    let table: Vec<(Vec<Value>, Value)> = vec![
        (
            vec![json!({"state":{"desired":{"a":1,"b":{"c":2}}}})],
            json!({"desired":{"a":1,"b":{"c":2}},"delta":{"a":1,"b":{"c":2}}}),
        ),
        // A null leaf deletes; nested nulls delete nested keys; an emptied inner object stays.
        (
            vec![
                json!({"state":{"desired":{"a":1,"b":{"c":2,"d":3}}}}),
                json!({"state":{"desired":{"a":null,"b":{"c":null,"d":null}}}}),
            ],
            json!({"desired":{"b":{}},"delta":{"b":{}}}),
        ),
        // desired == reported clears the delta; numbers compare by value.
        (
            vec![
                json!({"state":{"desired":{"x":1,"l":[1,2]}}}),
                json!({"state":{"reported":{"x":1.0,"l":[1,2],"extra":true}}}),
            ],
            json!({"desired":{"x":1,"l":[1,2]},"reported":{"x":1.0,"l":[1,2],"extra":true}}),
        ),
        // Arrays replace whole, and a differing array is in the delta whole.
        (
            vec![
                json!({"state":{"desired":{"l":[1,2,3]},"reported":{"l":[1,2,3]}}}),
                json!({"state":{"desired":{"l":[4]}}}),
            ],
            json!({"desired":{"l":[4]},"reported":{"l":[1,2,3]},"delta":{"l":[4]}}),
        ),
        // Only differing nested leaves are in the delta.
        (
            vec![
                json!({"state":{"desired":{"o":{"p":1,"q":2}},"reported":{"o":{"p":1,"q":3,"r":4}}}}),
            ],
            json!({"desired":{"o":{"p":1,"q":2}},"reported":{"o":{"p":1,"q":3,"r":4}},"delta":{"o":{"q":2}}}),
        ),
        // desired: null clears the section; the last key deleted removes it.
        (
            vec![
                json!({"state":{"desired":{"a":1},"reported":{"b":2}}}),
                json!({"state":{"desired":null,"reported":{"b":null}}}),
            ],
            json!({}),
        ),
        // An all-null object does not create a key; a client-sent delta is ignored.
        (
            vec![json!({"state":{"reported":{"n":{"x":null},"k":1},"delta":{"zz":1}}})],
            json!({"reported":{"k":1}}),
        ),
        // state: null clears everything.
        (
            vec![json!({"state":{"desired":{"a":1}}}), json!({"state":null})],
            json!({}),
        ),
    ];
    for (steps, want) in table {
        assert_eq!(state(&chain(&steps)), want, "steps {steps:?}");
    }
}

#[test]
fn errors_have_the_service_messages() {
    let limits = Limits::default();
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"not json", 400, "Invalid JSON"),
        (b"[1]", 400, "Invalid JSON"),
        (b"", 400, "Invalid JSON"),
        (
            b"\xff\xfe",
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        ),
        (b"{}", 400, "Missing required node: state"),
        (br#"{"state":1}"#, 400, "State node must be an object"),
        (
            br#"{"state":{"desired":1}}"#,
            400,
            "Desired node must be an object",
        ),
        (
            br#"{"state":{"reported":[1]}}"#,
            400,
            "Reported node must be an object",
        ),
        (
            br#"{"state":{"foo":{}}}"#,
            400,
            "State contains an invalid node",
        ),
        (
            br#"{"state":{"desired":{"a":[1,null]}}}"#,
            400,
            "State contains an invalid node",
        ),
        (br#"{"state":{},"version":-1}"#, 400, "Invalid version"),
        (br#"{"state":{},"version":"1"}"#, 400, "Invalid version"),
        (
            br#"{"state":{},"clientToken":5}"#,
            400,
            "Invalid clientToken",
        ),
        (
            br#"{"state":{"desired":{"1":{"2":{"3":{"4":{"5":{"6":{}}}}}}}}}"#,
            400,
            "JSON contains too many levels of nesting; maximum is 6",
        ),
    ];
    for (payload, code, message) in cases {
        let err = UpdateRequest::parse(payload, &limits).unwrap_err();
        assert_eq!(
            (err.code.status(), err.message.as_str()),
            (code, message),
            "{payload:?}"
        );
    }
    let long = format!(r#"{{"state":{{}},"clientToken":"{}"}}"#, "x".repeat(65));
    assert_eq!(
        UpdateRequest::parse(long.as_bytes(), &limits).unwrap_err(),
        ShadowError::invalid_client_token()
    );
    // Exactly 6 levels is allowed.
    let ok = br#"{"state":{"desired":{"1":{"2":{"3":{"4":{"5":{}}}}}}}}"#;
    assert!(UpdateRequest::parse(ok, &limits).is_ok());
}

#[test]
fn versions_conflict_and_survive_delete() {
    let doc = chain(&[
        json!({"state":{"reported":{"a":1}}}),
        json!({"state":{"reported":{"a":2}}}),
    ]);
    assert_eq!(doc.version(), 2);
    let err = update(&doc, json!({"state":{"reported":{"a":3}},"version":1})).unwrap_err();
    assert_eq!(err, ShadowError::version_conflict());
    assert_eq!(err.code.status(), 409);
    let ok = update(&doc, json!({"state":{"reported":{"a":3}},"version":2})).unwrap();
    assert_eq!(ok.document.version, 3);

    let (deleted, accepted) = delete(&doc, "t", None, Some("tok"), T0).unwrap();
    assert_eq!(
        accepted,
        json!({"version":2,"timestamp":T0,"clientToken":"tok"})
    );
    assert_eq!(deleted, Stored::Deleted { version: 2 });
    assert_eq!(
        get(&deleted, "t", None, None, T0).unwrap_err().message,
        "No shadow exists with name: 't'"
    );
    assert_eq!(
        delete(&deleted, "t", Some("s"), None, T0)
            .unwrap_err()
            .message,
        "No shadow exists with name: 's'"
    );
    let again = update(&deleted, json!({"state":{"reported":{"b":1}}})).unwrap();
    assert_eq!(again.document.version, 3);
    assert_eq!(
        again.document.reported,
        Some(json!({"b":1}).as_object().unwrap().clone())
    );
    assert!(again.documents.get("previous").is_none());
    // A new shadow's version is 0 for the lock.
    assert!(update(&Stored::Missing, json!({"state":{},"version":0})).is_ok());
    assert!(update(&Stored::Missing, json!({"state":{},"version":1})).is_err());
}

#[test]
fn size_limit_counts_desired_and_reported() {
    let limits = Limits::with_state_bytes(40).unwrap();
    let req = |v: Value| UpdateRequest::parse(v.to_string().as_bytes(), &limits).unwrap();
    // {"a":"xxxxxxxxxx"} is 18 bytes; twice is 36.
    let one = apply_update(
        &Stored::Missing,
        &req(json!({"state":{"desired":{"a":"xxxxxxxxxx"},"reported":{"a":"xxxxxxxxxx"}}})),
        &limits,
        T0,
    )
    .unwrap();
    let stored = Stored::Present(one.document);
    let err = apply_update(
        &stored,
        &req(json!({"state":{"reported":{"bb":1}}})),
        &limits,
        T0,
    )
    .unwrap_err();
    assert_eq!(err.code.status(), 413);
    assert_eq!(err.message, "The payload exceeds the maximum size allowed");
    assert!(Limits::with_state_bytes(30721).is_err());
    assert!(Limits::with_state_bytes(0).is_err());
}

#[test]
fn messages_have_the_documented_shapes() {
    let first = update(
        &Stored::Missing,
        json!({"state":{"desired":{"c":"red","l":[1,{"x":2}]}},"clientToken":"ct"}),
    )
    .unwrap();
    assert_eq!(
        first.accepted,
        json!({"state":{"desired":{"c":"red","l":[1,{"x":2}]}},
               "metadata":{"desired":{"c":{"timestamp":T0},"l":[{"timestamp":T0},{"x":{"timestamp":T0}}]}},
               "version":1,"timestamp":T0,"clientToken":"ct"})
    );
    assert_eq!(
        first.delta.clone().unwrap(),
        json!({"metadata":{"c":{"timestamp":T0},"l":[{"timestamp":T0},{"x":{"timestamp":T0}}]},
               "state":{"c":"red","l":[1,{"x":2}]},"version":1,"timestamp":T0,"clientToken":"ct"})
    );
    assert!(first.documents.get("previous").is_none());
    let stored = Stored::Present(first.document.clone());
    let limits = Limits::default();
    let req = UpdateRequest::parse(
        br#"{"state":{"reported":{"c":"red"},"desired":{"c":null}}}"#,
        &limits,
    )
    .unwrap();
    let second = apply_update(&stored, &req, &limits, T0 + 5).unwrap();
    // Untouched leaves keep their timestamps; written ones get the new time.
    assert_eq!(
        second.document.to_value(),
        json!({"state":{"desired":{"l":[1,{"x":2}]},"reported":{"c":"red"}},
               "metadata":{"desired":{"l":[{"timestamp":T0},{"x":{"timestamp":T0}}]},"reported":{"c":{"timestamp":T0+5}}},
               "version":2})
    );
    assert_eq!(second.documents["previous"], first.document.to_value());
    assert_eq!(second.documents["current"]["version"], 2);
    assert_eq!(
        ShadowError::version_conflict().rejected_payload(Some("ct"), 7),
        json!({"code":409,"message":"Version conflict","timestamp":7,"clientToken":"ct"})
    );
}

#[test]
fn names_and_topics() {
    assert!(validate_thing_name("a:b_c-1").is_ok());
    assert!(validate_thing_name("").is_err());
    assert!(validate_thing_name(&"a".repeat(129)).is_err());
    assert!(validate_thing_name("a/b").is_err());
    assert!(validate_shadow_name(&"a".repeat(64)).is_ok());
    assert!(validate_shadow_name(&"a".repeat(65)).is_err());
    assert!(validate_shadow_name("$x").is_err());
    let t = ShadowTopic::parse("$aws/things/dev1/shadow/name/cfg/update/delta").unwrap();
    assert_eq!(
        (t.thing.as_str(), t.shadow.as_deref(), t.operation, t.kind),
        ("dev1", Some("cfg"), Operation::Update, TopicKind::Delta)
    );
    assert_eq!(
        t.to_topic(),
        "$aws/things/dev1/shadow/name/cfg/update/delta"
    );
    let c = ShadowTopic::parse("$aws/things/dev1/shadow/get").unwrap();
    assert_eq!((c.shadow, c.kind), (None, TopicKind::Request));
    assert!(ShadowTopic::parse("$aws/things/dev1/shadow/get/delta").is_none());
    assert!(ShadowTopic::parse("$aws/things/dev1/shadow/name/$x/get").is_none());
    assert!(ShadowTopic::parse("$aws/things/dev1/jobs/get").is_none());
    assert_eq!(parse_token_request(b"").unwrap(), None);
    assert_eq!(
        parse_token_request(br#"{"clientToken":"a"}"#)
            .unwrap()
            .as_deref(),
        Some("a")
    );
    assert!(parse_token_request(b"x").is_err());
    assert_eq!(
        peek_client_token(br#"{"state":5,"clientToken":"z"}"#).as_deref(),
        Some("z")
    );
}
