//! UpdateConfiguration over a real socket: a component can neither widen its own policy (any
//! spelling the configuration tree resolves to `accessControl`) nor pin its configuration with a
//! timestamp from the future.

use std::path::PathBuf;
use std::sync::Arc;

use lichen_bus::Bus;
use lichen_config::ConfigStore;
use lichen_ipc::{
    Authorizer, ClientError, ConfigSource, IpcClient, IpcServer, Router, ServerOptions,
    TokenRegistry, register_kernel_operations,
};
use serde_json::{Value, json};

struct Fixture {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    _server: IpcServer,
    tokens: Arc<TokenRegistry>,
    store: ConfigStore,
}

fn pubsub_policy(resource: &str) -> Value {
    json!({ "aws.greengrass.ipc.pubsub": { "p:1": {
        "operations": ["aws.greengrass#PublishToTopic"], "resources": [resource]
    } } })
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ipc.socket");
    let store = ConfigStore::in_memory();
    store
        .merge(
            &[],
            json!({ "services": { "limited": { "configuration": {
                "accessControl": pubsub_policy("allowed/*"),
                "color": "blue"
            } } } }),
            1,
        )
        .unwrap();
    let config: Arc<dyn ConfigSource> = Arc::new(store.clone());
    let tokens = Arc::new(TokenRegistry::new());
    let router = Arc::new(Router::new(Arc::new(Authorizer::new(
        config.clone(),
        tokens.clone(),
    ))));
    register_kernel_operations(&router, Bus::new(), config, tokens.clone());
    let server =
        IpcServer::bind(&socket, router, tokens.clone(), ServerOptions::default()).unwrap();
    Fixture {
        _dir: dir,
        socket,
        _server: server,
        tokens,
        store,
    }
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

fn now_s() -> f64 {
    lichen_config::now_ms() as f64 / 1000.0
}

#[tokio::test]
async fn access_control_cannot_be_reached_through_any_spelling() {
    let fx = start().await;
    let client = fx.client("limited").await;
    let everything = json!({ "operations": ["*"], "resources": ["*"] });
    let mut attempts = Vec::new();
    for spelling in [
        "accessControl",
        "AccessControl",
        "ACCESSCONTROL",
        "accesscontrol",
    ] {
        attempts.push(json!({
            "keyPath": [spelling, "aws.greengrass.ipc.pubsub", "p:1"],
            "valueToMerge": everything,
        }));
        attempts.push(json!({
            "keyPath": [spelling],
            "valueToMerge": { "aws.greengrass.ipc.pubsub": { "p:2": everything } },
        }));
        attempts.push(json!({
            "keyPath": [spelling, "aws.greengrass.ipc.pubsub", "p:1", "resources"],
            "valueToMerge": ["*"],
        }));
        attempts.push(json!({
            "keyPath": [],
            "valueToMerge": { spelling: { "aws.greengrass.ipc.pubsub": { "p:2": everything } } },
        }));
    }
    for mut attempt in attempts {
        attempt["timestamp"] = json!(now_s());
        assert_eq!(
            remote_shape(client.call("UpdateConfiguration", attempt.clone()).await),
            "aws.greengrass#InvalidArgumentsError",
            "{attempt}"
        );
    }
    assert_eq!(
        fx.store
            .get(&["services", "limited", "configuration", "accessControl"]),
        Some(pubsub_policy("allowed/*"))
    );
    let publish =
        json!({ "topic": "forbidden", "publishMessage": { "jsonMessage": { "message": 1 } } });
    assert_eq!(
        remote_shape(client.call("PublishToTopic", publish).await),
        "aws.greengrass#UnauthorizedError"
    );
    // Other keys are still the component's to change.
    client
        .call(
            "UpdateConfiguration",
            json!({ "keyPath": [], "timestamp": now_s(), "valueToMerge": { "color": "red", "access": 1 } }),
        )
        .await
        .unwrap();
    assert_eq!(
        fx.store
            .get(&["services", "limited", "configuration", "color"]),
        Some(json!("red"))
    );
}

#[tokio::test]
async fn a_timestamp_from_the_future_is_clamped_to_the_core_clock() {
    let fx = start().await;
    let client = fx.client("limited").await;
    let before_ms = lichen_config::now_ms();
    let year_3000 = 32_503_680_000.0;
    client
        .call(
            "UpdateConfiguration",
            json!({ "keyPath": ["color"], "timestamp": year_3000, "valueToMerge": "green" }),
        )
        .await
        .unwrap();
    let after_ms = lichen_config::now_ms();
    let ts = fx
        .store
        .timestamp(&["services", "limited", "configuration", "color"])
        .unwrap();
    assert_eq!(
        fx.store
            .get(&["services", "limited", "configuration", "color"]),
        Some(json!("green"))
    );
    assert!(
        ts >= before_ms && ts <= after_ms + lichen_ipc::MAX_TIMESTAMP_SKEW_MS,
        "a year-3000 timestamp was recorded as {ts} ms (core clock {before_ms}..{after_ms})"
    );
    // Within the allowed skew a timestamp is kept as given (ordering of quick updates).
    let soon_ms = lichen_config::now_ms() + 1_000;
    client
        .call(
            "UpdateConfiguration",
            json!({ "keyPath": ["shade"], "timestamp": soon_ms as f64 / 1000.0, "valueToMerge": "teal" }),
        )
        .await
        .unwrap();
    let shade_ts = fx
        .store
        .timestamp(&["services", "limited", "configuration", "shade"])
        .unwrap();
    assert!((shade_ts - soon_ms).abs() <= 1, "{shade_ts} != {soon_ms}");
    // A later write at the core's clock (as a deployment makes) is not locked out for long.
    let later = lichen_config::now_ms() + lichen_ipc::MAX_TIMESTAMP_SKEW_MS + 1;
    assert!(
        fx.store
            .set(
                &["services", "limited", "configuration", "color"],
                json!("deployed"),
                later
            )
            .unwrap()
    );
}
