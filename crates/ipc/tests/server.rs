//! The IPC server over a real Unix socket: handshake, operations, errors, malformed input.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{BufMut, Bytes, BytesMut};
use lichen_bus::Bus;
use lichen_config::ConfigStore;
use lichen_ipc::codec::{self, Decoder, Frame, Header, HeaderValue};
use lichen_ipc::{
    Authorizer, Authz, ClientError, ConfigSource, IpcClient, IpcError, IpcServer, ResourceStyle,
    Router, ServerOptions, TokenRegistry, TopicMessage, component_socket_path,
    register_kernel_operations,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

struct Fixture {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    server: Option<IpcServer>,
    tokens: Arc<TokenRegistry>,
    router: Arc<Router>,
    bus: Bus,
    store: ConfigStore,
}

fn policy(ops: &[&str], resources: &[&str]) -> Value {
    json!({ "aws.greengrass.ipc.pubsub": { "p:1": { "operations": ops, "resources": resources } } })
}

async fn start_in(dir: tempfile::TempDir, socket: PathBuf) -> Fixture {
    let store = ConfigStore::in_memory();
    store
        .merge(
            &[],
            json!({ "services": {
                "pub": { "configuration": { "accessControl": policy(&["*"], &["*"]) } },
                "limited": { "configuration": {
                    "accessControl": policy(&["aws.greengrass#PublishToTopic"], &["allowed/*"]),
                    "color": "blue",
                    "box": { "w": 1, "h": 2 }
                } },
                "nopolicy": { "configuration": {} },
                "aws.greengrass.StreamManager": { "configuration": {} }
            } }),
            1,
        )
        .unwrap();
    let config: Arc<dyn ConfigSource> = Arc::new(store.clone());
    let tokens = Arc::new(TokenRegistry::new());
    let router = Arc::new(Router::new(Arc::new(Authorizer::new(
        config.clone(),
        tokens.clone(),
    ))));
    let bus = Bus::new();
    register_kernel_operations(&router, bus.clone(), config, tokens.clone());
    let server = IpcServer::bind(
        &socket,
        router.clone(),
        tokens.clone(),
        ServerOptions::default(),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        socket,
        server: Some(server),
        tokens,
        router,
        bus,
        store,
    }
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc.socket");
    start_in(dir, socket).await
}

impl Fixture {
    async fn client(&self, component: &str) -> IpcClient {
        IpcClient::connect(&self.socket, &self.tokens.mint(component))
            .await
            .unwrap()
    }
}

fn remote_shape(result: Result<Value, ClientError>) -> String {
    match result {
        Err(ClientError::Remote { shape, .. }) => shape,
        other => panic!("expected an operation error, got {other:?}"),
    }
}

fn int(name: &str, v: i32) -> Header {
    Header {
        name: name.into(),
        value: HeaderValue::Int32(v),
    }
}

fn string(name: &str, v: &str) -> Header {
    Header {
        name: name.into(),
        value: HeaderValue::String(v.into()),
    }
}

fn connect_frame(token: &str) -> Bytes {
    codec::encode(&Frame {
        headers: vec![
            string(":version", "0.1.0"),
            int(":message-type", 4),
            int(":message-flags", 0),
            int(":stream-id", 0),
        ],
        payload: Bytes::from(format!("{{\"authToken\": \"{token}\"}}")),
    })
    .unwrap()
}

/// Reads frames until the server closes the connection.
async fn read_until_closed(stream: &mut UnixStream) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let decoder = Decoder::new(codec::MAX_FRAME_LIMIT);
    let mut frames = Vec::new();
    loop {
        while let Ok(Some(f)) = decoder.decode(&mut buf) {
            frames.push(f);
        }
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read_buf(&mut buf))
            .await
            .expect("the server did not close the connection");
        match read {
            Ok(0) | Err(_) => return frames,
            Ok(_) => {}
        }
    }
}

async fn raw(socket: &Path) -> UnixStream {
    UnixStream::connect(socket).await.unwrap()
}

async fn raw_connected(fx: &Fixture, component: &str) -> (UnixStream, BytesMut) {
    let mut s = raw(&fx.socket).await;
    s.write_all(&connect_frame(&fx.tokens.mint(component)))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let ack = read_frame(&mut s, &mut buf).await;
    assert_eq!(ack.header_i32(":message-type"), Some(5));
    assert_eq!(ack.header_i32(":message-flags"), Some(1));
    (s, buf)
}

async fn read_frame(s: &mut UnixStream, buf: &mut BytesMut) -> Frame {
    let decoder = Decoder::default();
    loop {
        if let Some(f) = decoder.decode(buf).unwrap() {
            return f;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read_buf(buf))
            .await
            .expect("no frame from the server")
            .unwrap();
        assert!(n > 0, "connection closed while waiting for a frame");
    }
}

fn is_protocol_error(frames: &[Frame]) -> bool {
    frames
        .iter()
        .any(|f| f.header_i32(":message-type") == Some(6))
}

async fn still_works(client: &IpcClient) {
    let v = client
        .call("GetConfiguration", json!({ "keyPath": ["color"] }))
        .await
        .unwrap();
    assert_eq!(v["value"], json!({ "color": "blue" }));
}

#[tokio::test]
async fn handshake_publish_subscribe_and_close_release() {
    let fx = start().await;
    let sub = fx.client("pub").await;
    let publisher = fx.client("limited").await;
    let (resp, mut events) = sub
        .subscribe("SubscribeToTopic", json!({ "topic": "allowed/+" }))
        .await
        .unwrap();
    assert_eq!(resp, json!({}));
    assert_eq!(fx.bus.subscription_count(), 1);
    publisher
        .call(
            "PublishToTopic",
            json!({ "topic": "allowed/x", "publishMessage": { "jsonMessage": { "message": { "n": 1 } } } }),
        )
        .await
        .unwrap();
    publisher
        .call(
            "aws.greengrass#PublishToTopic",
            json!({ "topic": "allowed/y", "publishMessage": { "binaryMessage": { "message": "aGVsbG8=" } } }),
        )
        .await
        .unwrap();
    let first = events.recv().await.unwrap().unwrap();
    assert_eq!(
        first,
        json!({ "jsonMessage": { "message": { "n": 1 }, "context": { "topic": "allowed/x" } } })
    );
    let second = events.recv().await.unwrap().unwrap();
    assert_eq!(
        second,
        json!({ "binaryMessage": { "message": "aGVsbG8=", "context": { "topic": "allowed/y" } } })
    );
    drop(events);
    // The server releases the bus subscription once it reads the client's close.
    for _ in 0..200 {
        if fx.bus.subscription_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fx.bus.subscription_count(), 0);
    still_works(&publisher).await;
}

#[tokio::test]
async fn typed_binary_publish_and_topic_messages_round_trip_and_keep_errors() {
    let fx = start().await;
    let sub = fx.client("pub").await;
    let publisher = fx.client("limited").await;
    let (_, mut events) = sub
        .subscribe("SubscribeToTopic", json!({ "topic": "allowed/+" }))
        .await
        .unwrap();
    let every_byte: Vec<u8> = (0..=255u8).collect();
    publisher
        .publish_binary("allowed/bytes", &every_byte)
        .await
        .unwrap();
    publisher
        .call(
            "PublishToTopic",
            json!({ "topic": "allowed/json", "publishMessage": { "jsonMessage": { "message": { "n": [1, 2] } } } }),
        )
        .await
        .unwrap();
    assert_eq!(
        events.recv_topic_message().await.unwrap().unwrap(),
        TopicMessage::Binary {
            topic: Some("allowed/bytes".into()),
            message: every_byte,
        }
    );
    assert_eq!(
        events.recv_topic_message().await.unwrap().unwrap(),
        TopicMessage::Json {
            topic: Some("allowed/json".into()),
            message: json!({ "n": [1, 2] }),
        }
    );
    // The policy allows allowed/* only: the typed call reports the operation's error.
    match publisher.publish_binary("secret/x", b"no").await {
        Err(ClientError::Remote { shape, .. }) => {
            assert_eq!(shape, "aws.greengrass#UnauthorizedError")
        }
        other => panic!("expected UnauthorizedError, got {other:?}"),
    }
    still_works(&publisher).await;
}

#[tokio::test]
async fn connection_end_releases_subscriptions() {
    let fx = start().await;
    let sub = fx.client("pub").await;
    let (_, _events) = sub
        .subscribe("SubscribeToTopic", json!({ "topic": "a/#" }))
        .await
        .unwrap();
    assert_eq!(fx.bus.subscription_count(), 1);
    drop(sub);
    for _ in 0..200 {
        if fx.bus.subscription_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fx.bus.subscription_count(), 0);
}

#[tokio::test]
async fn wrong_token_is_rejected_with_connect_ack_flags_zero() {
    let fx = start().await;
    let good = fx.client("limited").await;
    assert!(matches!(
        IpcClient::connect(&fx.socket, "NOTATOKEN").await,
        Err(ClientError::Rejected)
    ));
    let mut s = raw(&fx.socket).await;
    s.write_all(&connect_frame("WRONG")).await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].header_i32(":message-type"), Some(5));
    assert_eq!(frames[0].header_i32(":message-flags"), Some(0));
    assert!(frames[0].payload.is_empty());
    still_works(&good).await;
}

#[tokio::test]
async fn malformed_input_closes_only_that_connection() {
    let fx = start().await;
    let good = fx.client("limited").await;
    let valid = connect_frame(&fx.tokens.mint("pub"));

    let mut bad_crc = valid.to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;

    let mut past = BytesMut::new();
    past.put_u32(16);
    past.put_u32(200);
    let crc = crc32fast::hash(&past);
    past.put_u32(crc);
    past.put_u32(0);

    let mut huge = BytesMut::new();
    huge.put_u32(24 * 1024 * 1024);
    huge.put_u32(0);
    let crc = crc32fast::hash(&huge);
    huge.put_u32(crc);

    let ping = codec::encode(&Frame {
        headers: vec![
            int(":message-type", 2),
            int(":message-flags", 0),
            int(":stream-id", 0),
        ],
        payload: Bytes::new(),
    })
    .unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad CRC", bad_crc),
        ("header length past the frame", past.to_vec()),
        ("length of 24 MiB", huge.to_vec()),
        (
            "garbage before CONNECT",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("message before CONNECT", ping.to_vec()),
        ("second CONNECT", [valid.to_vec(), valid.to_vec()].concat()),
    ];
    for (what, bytes) in cases {
        let mut s = raw(&fx.socket).await;
        s.write_all(&bytes).await.unwrap();
        let frames = read_until_closed(&mut s).await;
        assert!(
            is_protocol_error(&frames),
            "{what}: expected PROTOCOL_ERROR, got {frames:?}"
        );
        still_works(&good).await;
    }

    // A truncated prelude followed by end of input: the server closes without a reply.
    let mut s = raw(&fx.socket).await;
    s.write_all(&valid[..7]).await.unwrap();
    s.shutdown().await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert!(frames.is_empty());
    still_works(&good).await;
}

#[tokio::test]
async fn ping_is_echoed() {
    let fx = start().await;
    let (mut s, mut buf) = raw_connected(&fx, "pub").await;
    let ping = codec::encode(&Frame {
        headers: vec![
            string("x-note", "hi"),
            int(":message-type", 2),
            int(":message-flags", 0),
            int(":stream-id", 0),
        ],
        payload: Bytes::from_static(b"ping-payload"),
    })
    .unwrap();
    s.write_all(&ping).await.unwrap();
    let pong = read_frame(&mut s, &mut buf).await;
    assert_eq!(pong.header_i32(":message-type"), Some(3));
    assert_eq!(pong.header_str("x-note"), Some("hi"));
    assert_eq!(&pong.payload[..], b"ping-payload");
}

#[tokio::test]
async fn response_headers_match_the_wire_contract() {
    let fx = start().await;
    let (mut s, mut buf) = raw_connected(&fx, "limited").await;
    let request = codec::encode(&Frame {
        headers: vec![
            string(":content-type", "application/json"),
            string(
                "service-model-type",
                "aws.greengrass#GetConfigurationRequest",
            ),
            int(":message-type", 0),
            int(":message-flags", 0),
            int(":stream-id", 1),
            string("operation", "aws.greengrass#GetConfiguration"),
        ],
        payload: Bytes::from_static(br#"{"keyPath": ["box"]}"#),
    })
    .unwrap();
    s.write_all(&request).await.unwrap();
    let resp = read_frame(&mut s, &mut buf).await;
    assert_eq!(resp.header_i32(":message-type"), Some(0));
    assert_eq!(resp.header_i32(":message-flags"), Some(2));
    assert_eq!(resp.header_i32(":stream-id"), Some(1));
    assert_eq!(
        resp.header_str("service-model-type"),
        Some("aws.greengrass#GetConfigurationResponse")
    );
    assert_eq!(resp.header_str(":content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&resp.payload).unwrap();
    assert_eq!(
        body,
        json!({ "componentName": "limited", "value": { "w": 1, "h": 2 } })
    );
}

#[tokio::test]
async fn operation_errors_have_greengrass_shapes() {
    let fx = start().await;
    let limited = fx.client("limited").await;
    let nopolicy = fx.client("nopolicy").await;

    // Not registered by anyone.
    let err = limited.call("ListComponents", json!({})).await.unwrap_err();
    match err {
        ClientError::Remote {
            shape,
            message,
            payload,
        } => {
            assert_eq!(shape, "aws.greengrass#ServiceError");
            assert!(message.contains("aws.greengrass#ListComponents"));
            assert_eq!(payload["_errorCode"], "ServiceError");
            assert_eq!(payload["_message"], payload["message"]);
            assert_eq!(payload["_service"], "aws.greengrass#GreengrassCoreIPC");
        }
        other => panic!("{other:?}"),
    }

    let publish = |topic: &str| json!({ "topic": topic, "publishMessage": { "jsonMessage": { "message": 1 } } });
    assert_eq!(
        remote_shape(nopolicy.call("PublishToTopic", publish("a/b")).await),
        "aws.greengrass#UnauthorizedError"
    );
    assert_eq!(
        remote_shape(limited.call("PublishToTopic", publish("denied/x")).await),
        "aws.greengrass#UnauthorizedError"
    );
    // The policy lists PublishToTopic only.
    assert_eq!(
        remote_shape(
            limited
                .subscribe("SubscribeToTopic", json!({ "topic": "allowed/x" }))
                .await
                .map(|(v, _)| v)
        ),
        "aws.greengrass#UnauthorizedError"
    );
    assert!(
        limited
            .call("PublishToTopic", publish("allowed/x"))
            .await
            .is_ok()
    );

    let pubc = fx.client("pub").await;
    for bad in [
        publish("a/+"),
        publish("a/#"),
        publish("a/*"),
        publish(""),
        json!({ "topic": "a" }),
        json!({ "topic": "a", "publishMessage": { "binaryMessage": { "message": "!!notbase64" } } }),
    ] {
        assert_eq!(
            remote_shape(pubc.call("PublishToTopic", bad).await),
            "aws.greengrass#InvalidArgumentsError"
        );
    }
    assert_eq!(
        remote_shape(
            pubc.subscribe(
                "SubscribeToTopic",
                json!({ "topic": "a", "receiveMode": "SOMETIMES" })
            )
            .await
            .map(|(v, _)| v)
        ),
        "aws.greengrass#InvalidArgumentsError"
    );

    let missing = limited
        .call("GetConfiguration", json!({ "keyPath": ["nope"] }))
        .await
        .unwrap_err();
    match missing {
        ClientError::Remote { shape, payload, .. } => {
            assert_eq!(shape, "aws.greengrass#ResourceNotFoundError");
            assert_eq!(payload["resourceType"], "Configuration");
        }
        other => panic!("{other:?}"),
    }
    still_works(&limited).await;
}

#[tokio::test]
async fn configuration_update_guard_events_and_acl_protection() {
    let fx = start().await;
    let client = fx.client("limited").await;
    let (_, mut events) = client
        .subscribe(
            "SubscribeToConfigurationUpdate",
            json!({ "keyPath": ["box"] }),
        )
        .await
        .unwrap();
    // Whole milliseconds, so the recorded timestamp is exact.
    let now_ms = lichen_config::now_ms();
    let now = now_ms as f64 / 1000.0;
    client
        .call(
            "UpdateConfiguration",
            json!({ "keyPath": ["box"], "timestamp": now, "valueToMerge": { "w": 5, "d": { "e": 1 } } }),
        )
        .await
        .unwrap();
    let mut paths = Vec::new();
    for _ in 0..2 {
        let ev = events.recv().await.unwrap().unwrap();
        assert_eq!(ev["configurationUpdateEvent"]["componentName"], "limited");
        paths.push(ev["configurationUpdateEvent"]["keyPath"].clone());
    }
    paths.sort_by_key(|p| p.to_string());
    assert_eq!(paths, vec![json!(["box", "d", "e"]), json!(["box", "w"])]);
    assert_eq!(
        fx.store
            .get(&["services", "limited", "configuration", "box", "w"]),
        Some(json!(5))
    );
    assert_eq!(
        fx.store
            .timestamp(&["services", "limited", "configuration", "box", "w"]),
        Some(now_ms)
    );
    // Older than the node: refused, value kept.
    assert_eq!(
        remote_shape(
            client
                .call(
                    "UpdateConfiguration",
                    json!({ "keyPath": ["box"], "timestamp": now - 10.0, "valueToMerge": { "w": 6 } }),
                )
                .await
        ),
        "aws.greengrass#FailedUpdateConditionCheckError"
    );
    assert_eq!(
        fx.store
            .get(&["services", "limited", "configuration", "box", "w"]),
        Some(json!(5))
    );
    for bad in [
        json!({ "keyPath": ["accessControl"], "timestamp": now + 1.0, "valueToMerge": { "x": 1 } }),
        json!({ "timestamp": now + 1.0, "valueToMerge": { "accessControl": {} } }),
        json!({ "keyPath": ["box"], "valueToMerge": { "w": 1 } }),
        json!({ "keyPath": ["box"], "timestamp": now + 1.0 }),
    ] {
        assert_eq!(
            remote_shape(client.call("UpdateConfiguration", bad).await),
            "aws.greengrass#InvalidArgumentsError"
        );
    }
    // Other components' configuration is readable; a missing component is not found.
    let other = client
        .call("GetConfiguration", json!({ "componentName": "pub" }))
        .await
        .unwrap();
    assert_eq!(other["componentName"], "pub");
    assert_eq!(
        remote_shape(
            client
                .subscribe(
                    "SubscribeToConfigurationUpdate",
                    json!({ "componentName": "ghost" })
                )
                .await
                .map(|(v, _)| v)
        ),
        "aws.greengrass#ResourceNotFoundError"
    );
}

#[tokio::test]
async fn policies_reload_when_access_control_changes() {
    let fx = start().await;
    let client = fx.client("nopolicy").await;
    let publish = json!({ "topic": "t", "publishMessage": { "jsonMessage": { "message": 1 } } });
    assert_eq!(
        remote_shape(client.call("PublishToTopic", publish.clone()).await),
        "aws.greengrass#UnauthorizedError"
    );
    fx.store
        .merge(
            &["services", "nopolicy", "configuration", "accessControl"],
            policy(&["aws.greengrass#PublishToTopic"], &["t"]),
            10,
        )
        .unwrap();
    client
        .call("PublishToTopic", publish.clone())
        .await
        .unwrap();
    fx.store
        .set(
            &["services", "nopolicy", "configuration", "accessControl"],
            json!({}),
            20,
        )
        .unwrap();
    assert_eq!(
        remote_shape(client.call("PublishToTopic", publish).await),
        "aws.greengrass#UnauthorizedError"
    );
}

#[tokio::test]
async fn validate_authorization_token_only_for_stream_manager() {
    let fx = start().await;
    let other = fx.client("pub").await;
    let sm = fx.client("aws.greengrass.StreamManager").await;
    let token = fx.tokens.mint("limited");
    assert_eq!(
        remote_shape(
            other
                .call("ValidateAuthorizationToken", json!({ "token": token }))
                .await
        ),
        "aws.greengrass#UnauthorizedError"
    );
    assert_eq!(
        sm.call("ValidateAuthorizationToken", json!({ "token": token }))
            .await
            .unwrap(),
        json!({ "isValid": true })
    );
    assert_eq!(
        remote_shape(
            sm.call("ValidateAuthorizationToken", json!({ "token": "BOGUS" }))
                .await
        ),
        "aws.greengrass#InvalidTokenError"
    );
}

#[tokio::test]
async fn registered_services_events_follow_the_response_and_server_close() {
    let fx = start().await;
    // Sends an event before returning its response, then closes the stream.
    fx.router.register_streaming(
        "SubscribeToComponentUpdates",
        "ComponentUpdatePolicyEvents",
        Authz::None,
        |caller, _req, sink| async move {
            sink.send(json!({ "postUpdateEvent": { "deploymentId": caller.component } }))
                .await
                .unwrap();
            Ok(json!({}))
        },
    );
    fx.router
        .register_unary("RestartComponent", Authz::None, |_c, _r| async move {
            panic!("handler bug")
        });
    fx.router.register_unary(
        "GetComponentDetails",
        Authz::Service {
            service_id: "aws.greengrass.Cli".into(),
            resource: |r| r["componentName"].as_str().unwrap_or("").to_string(),
            style: ResourceStyle::Standard,
        },
        |_c, r| async move {
            Err(IpcError::ResourceNotFound {
                message: "no such component".into(),
                resource_type: Some("Component".into()),
                resource_name: r["componentName"].as_str().map(str::to_string),
            })
        },
    );
    let client = fx.client("pub").await;
    let (resp, mut events) = client
        .subscribe("SubscribeToComponentUpdates", json!({}))
        .await
        .unwrap();
    assert_eq!(resp, json!({}));
    assert_eq!(
        events.recv().await.unwrap().unwrap(),
        json!({ "postUpdateEvent": { "deploymentId": "pub" } })
    );
    assert!(events.recv().await.is_none(), "server closes the stream");

    assert_eq!(
        remote_shape(client.call("RestartComponent", json!({})).await),
        "aws.greengrass#ServiceError"
    );
    // Cli service: components need a policy, external CLI identities do not.
    assert_eq!(
        remote_shape(
            client
                .call("GetComponentDetails", json!({ "componentName": "x" }))
                .await
        ),
        "aws.greengrass#UnauthorizedError"
    );
    fx.tokens.register_external("greengrass-cli#1", "CLITOKEN");
    let cli = IpcClient::connect(&fx.socket, "CLITOKEN").await.unwrap();
    assert_eq!(
        remote_shape(
            cli.call("GetComponentDetails", json!({ "componentName": "x" }))
                .await
        ),
        "aws.greengrass#ResourceNotFoundError"
    );
    assert!(fx.router.unregister("GetComponentDetails"));
    assert_eq!(
        remote_shape(
            cli.call("GetComponentDetails", json!({ "componentName": "x" }))
                .await
        ),
        "aws.greengrass#ServiceError"
    );
    client.call("GetConfiguration", json!({})).await.unwrap();
}

#[tokio::test]
async fn long_socket_paths_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("x".repeat(60)).join("y".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    let (abs, for_component) = component_socket_path(&deep);
    assert!(abs.as_os_str().len() >= 108);
    assert_eq!(for_component, PathBuf::from("../../ipc.socket"));
    let short = component_socket_path(dir.path());
    assert_eq!(short.0, short.1);

    let mut fx = start_in(dir, abs.clone()).await;
    let client = fx.client("limited").await;
    still_works(&client).await;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&abs).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o666);

    fx.server.take().unwrap().shutdown().await;
    assert!(!abs.exists());
    assert!(client.call("GetConfiguration", json!({})).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_on_one_connection() {
    let fx = start().await;
    let client = Arc::new(fx.client("pub").await);
    let (_, mut events) = client
        .subscribe("SubscribeToTopic", json!({ "topic": "load" }))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                client
                    .call(
                        "PublishToTopic",
                        json!({ "topic": "load", "publishMessage": { "jsonMessage": { "message": { "w": worker, "i": i } } } }),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last_seen = [-1i64; 16];
    for _ in 0..400 {
        let ev = events.recv().await.unwrap().unwrap();
        let m = &ev["jsonMessage"]["message"];
        let (w, i) = (m["w"].as_u64().unwrap() as usize, m["i"].as_i64().unwrap());
        // Per-publisher order is kept.
        assert_eq!(i, last_seen[w] + 1);
        last_seen[w] = i;
    }
    assert_eq!(last_seen, [24; 16]);
}

#[tokio::test]
async fn decreasing_stream_id_is_a_protocol_error() {
    let fx = start().await;
    let good = fx.client("limited").await;
    let (mut s, _) = raw_connected(&fx, "limited").await;
    let request = |stream: i32| {
        codec::encode(&Frame {
            headers: vec![
                string(":content-type", "application/json"),
                int(":message-type", 0),
                int(":message-flags", 0),
                int(":stream-id", stream),
                string("operation", "aws.greengrass#GetConfiguration"),
            ],
            payload: Bytes::from_static(b"{}"),
        })
        .unwrap()
    };
    s.write_all(&request(2)).await.unwrap();
    s.write_all(&request(1)).await.unwrap();
    let frames = read_until_closed(&mut s).await;
    assert!(is_protocol_error(&frames), "{frames:?}");
    still_works(&good).await;
}

/// Publishes pipelined from two connections reach a subscriber on a third connection complete
/// and in each publisher's order (the path where answers and events share writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_from_two_connections_all_arrive_in_order() {
    let fx = start().await;
    let subscriber = fx.client("pub").await;
    let (_, mut events) = subscriber
        .subscribe(
            "SubscribeToTopic",
            json!({ "topic": "pipe/#", "receiveMode": "RECEIVE_ALL_MESSAGES" }),
        )
        .await
        .unwrap();
    const TASKS: usize = 8;
    const EACH: u32 = 60;
    let mut tasks = Vec::new();
    for connection in 0..2u8 {
        let publisher = Arc::new(fx.client("pub").await);
        for task in 0..TASKS as u8 {
            let publisher = publisher.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    // Binary body: connection, task, sequence number.
                    let mut body = vec![connection, task];
                    body.extend(i.to_be_bytes());
                    publisher
                        .call(
                            "PublishToTopic",
                            json!({ "topic": format!("pipe/{connection}"), "publishMessage": {
                                "binaryMessage": { "message": B64.encode(&body) } } }),
                        )
                        .await
                        .unwrap();
                }
            }));
        }
    }
    let mut next = [[0u32; TASKS]; 2];
    for _ in 0..2 * TASKS * EACH as usize {
        let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("every published event arrives")
            .unwrap()
            .unwrap();
        let text = event["binaryMessage"]["message"].as_str().unwrap();
        let body = B64.decode(text).unwrap();
        let (c, t) = (body[0] as usize, body[1] as usize);
        let i = u32::from_be_bytes(body[2..6].try_into().unwrap());
        assert_eq!(
            event["binaryMessage"]["context"]["topic"],
            json!(format!("pipe/{c}"))
        );
        assert_eq!(i, next[c][t], "connection {c} task {t} out of order");
        next[c][t] += 1;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(next, [[EACH; TASKS]; 2]);
}
