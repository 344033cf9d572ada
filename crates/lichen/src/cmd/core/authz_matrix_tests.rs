//! The authorization matrix of every IPC operation the core registers, over a real socket with
//! the real router, authorizer and client: a component without a policy is refused, one with a
//! policy for another resource is refused, one with the right policy gets past authorization.
//!
//! The table must name every registered operation (and only those): a new operation without a
//! row fails [`every_ipc_operation_is_authorized_as_its_row_says`].

use std::path::Path;
use std::sync::Arc;

use lichen_config::ConfigStore;
use lichen_ipc::{
    Authorizer, ClientError, ConfigSource, IpcClient, IpcServer, Router, ServerOptions,
    TokenRegistry,
};
use serde_json::{Value, json};

use super::ipc_ops;

const PUBSUB: &str = "aws.greengrass.ipc.pubsub";
const MQTT_PROXY: &str = "aws.greengrass.ipc.mqttproxy";
const CLI: &str = "aws.greengrass.Cli";
const LIFECYCLE: &str = "aws.greengrass.ipc.lifecycle";
const CLIENT_DEVICES: &str = "aws.greengrass.clientdevices.Auth";
const METRIC: &str = "aws.greengrass.ipc.componentmetric";
const SHADOW: &str = "aws.greengrass.ShadowManager";
const SECRETS: &str = lichen_secrets::SERVICE_NAME;
const SECRET_RIGHT: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:m/right-AbCdEf";
const SECRET_OTHER: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:m/other-GhIjKl";

/// How an operation is authorized.
#[derive(Clone, Copy)]
enum Rule {
    /// A policy of `service` must allow the operation on the request's resource; the request
    /// names `right`, and `other` is a resource of the same service that does not cover it.
    Policy {
        service: &'static str,
        right: &'static str,
        other: &'static str,
    },
    /// No policy (Greengrass defines these as open: a component's own configuration, its own
    /// state and update notices); a component without any policy is not refused.
    Open,
    /// As [`Rule::Policy`], but checked by the operation itself once it has resolved the
    /// resource (a secret's name to its ARN), so it is registered without a policy service.
    InHandler {
        service: &'static str,
        right: &'static str,
        other: &'static str,
    },
    /// Only the Stream Manager may call it.
    StreamManagerOnly,
    /// Only `aws.*` components, each under a componentmetric policy on the metric name.
    Metric {
        right: &'static str,
        other: &'static str,
    },
}

/// (operation, rule, request): the request carries the `right` resource where there is one.
fn table() -> Vec<(&'static str, Rule, Value)> {
    let pubsub = Rule::Policy {
        service: PUBSUB,
        right: "m/right",
        other: "m/other",
    };
    let mqtt = Rule::Policy {
        service: MQTT_PROXY,
        right: "m/right/#",
        other: "m/other/#",
    };
    let cli_any = Rule::Policy {
        service: CLI,
        right: "*",
        other: "not-this",
    };
    let cli_component = Rule::Policy {
        service: CLI,
        right: "m.Target",
        other: "m.Elsewhere",
    };
    let lifecycle = Rule::Policy {
        service: LIFECYCLE,
        right: "m.Target",
        other: "m.Elsewhere",
    };
    let devices = Rule::Policy {
        service: CLIENT_DEVICES,
        right: "*",
        other: "not-this",
    };
    let target = json!({ "componentName": "m.Target" });
    let mut rows = vec![
        (
            "PublishToTopic",
            pubsub,
            json!({ "topic": "m/right", "publishMessage": { "jsonMessage": { "message": 1 } } }),
        ),
        ("SubscribeToTopic", pubsub, json!({ "topic": "m/right" })),
        (
            "PublishToIoTCore",
            mqtt,
            json!({ "topicName": "m/right/x", "qos": "0", "payload": "" }),
        ),
        (
            "SubscribeToIoTCore",
            mqtt,
            json!({ "topicName": "m/right/x", "qos": "0" }),
        ),
        ("ListComponents", cli_any, json!({})),
        ("GetComponentDetails", cli_component, target.clone()),
        ("RestartComponent", cli_component, target.clone()),
        ("StopComponent", cli_component, target.clone()),
        ("PauseComponent", lifecycle, target.clone()),
        ("ResumeComponent", lifecycle, target),
        ("CreateLocalDeployment", cli_any, json!({})),
        (
            "GetLocalDeploymentStatus",
            Rule::Policy {
                service: CLI,
                right: "dep-1",
                other: "dep-2",
            },
            json!({ "deploymentId": "dep-1" }),
        ),
        ("ListLocalDeployments", cli_any, json!({})),
        (
            "CancelLocalDeployment",
            cli_any,
            json!({ "deploymentId": "dep-1" }),
        ),
        ("CreateDebugPassword", cli_any, json!({})),
        ("VerifyClientDeviceIdentity", devices, json!({})),
        ("GetClientDeviceAuthToken", devices, json!({})),
        ("AuthorizeClientDeviceAction", devices, json!({})),
        (
            "SubscribeToCertificateUpdates",
            devices,
            json!({ "certificateOptions": { "certificateType": "SERVER" } }),
        ),
        (
            "PutComponentMetric",
            Rule::Metric {
                right: "m1",
                other: "m2",
            },
            json!({ "metrics": [{ "name": "m1", "unit": "COUNT", "value": 1 }] }),
        ),
        (
            "ValidateAuthorizationToken",
            Rule::StreamManagerOnly,
            json!({}),
        ),
        ("GetConfiguration", Rule::Open, json!({})),
        (
            "UpdateConfiguration",
            Rule::Open,
            json!({ "keyPath": ["x"], "timestamp": 1.0, "valueToMerge": 1 }),
        ),
        ("SubscribeToConfigurationUpdate", Rule::Open, json!({})),
        ("UpdateState", Rule::Open, json!({ "state": "RUNNING" })),
        ("SubscribeToComponentUpdates", Rule::Open, json!({})),
        (
            "DeferComponentUpdate",
            Rule::Open,
            json!({ "deploymentId": "dep-1" }),
        ),
        (
            "SubscribeToValidateConfigurationUpdates",
            Rule::Open,
            json!({}),
        ),
        (
            "SendConfigurationValidityReport",
            Rule::Open,
            json!({ "configurationValidityReport": { "deploymentId": "dep-1" } }),
        ),
    ];
    let shadow = Rule::Policy {
        service: SHADOW,
        right: "$aws/things/m-right/shadow/name/s1",
        other: "$aws/things/m-other/shadow/name/s1",
    };
    let named = json!({ "thingName": "m-right", "shadowName": "s1", "payload": "e30=" });
    rows.extend([
        ("GetThingShadow", shadow, named.clone()),
        ("UpdateThingShadow", shadow, named.clone()),
        ("DeleteThingShadow", shadow, named),
        (
            "ListNamedShadowsForThing",
            Rule::Policy {
                service: SHADOW,
                right: "m-right",
                other: "m-other",
            },
            json!({ "thingName": "m-right" }),
        ),
        (
            "GetSecretValue",
            Rule::InHandler {
                service: SECRETS,
                right: SECRET_RIGHT,
                other: SECRET_OTHER,
            },
            json!({ "secretId": SECRET_RIGHT }),
        ),
    ]);
    rows
}

fn principal(kind: &str, op: &str, rule: Rule) -> String {
    match rule {
        Rule::Metric { .. } => format!("aws.m.{kind}.{op}"),
        _ => format!("m.{kind}.{op}"),
    }
}

/// `services.<principal>.configuration.accessControl` for the right and other principals.
fn policies(table: &[(&'static str, Rule, Value)]) -> Value {
    let mut services = serde_json::Map::new();
    let policy = |service: &str, op: &str, resource: &str| {
        json!({ "configuration": { "accessControl": { service: { "p:1": {
            "operations": [format!("aws.greengrass#{op}")], "resources": [resource]
        } } } } })
    };
    for (op, rule, _) in table {
        let (service, right, other) = match *rule {
            Rule::Policy {
                service,
                right,
                other,
            }
            | Rule::InHandler {
                service,
                right,
                other,
            } => (service, right, other),
            Rule::Metric { right, other } => (METRIC, right, other),
            Rule::Open | Rule::StreamManagerOnly => continue,
        };
        services.insert(principal("right", op, *rule), policy(service, op, right));
        services.insert(principal("other", op, *rule), policy(service, op, other));
    }
    json!({ "services": services })
}

struct NoEnv;

impl lichen_supervisor::EnvProvider for NoEnv {
    fn component_env(&self, _: &str) -> std::collections::BTreeMap<String, String> {
        Default::default()
    }
}

/// A router with every operation the core registers at start (and the client-device service
/// registers when deployed), served on a socket under `root`.
async fn serve(root: &Path, store: &ConfigStore) -> (IpcServer, Arc<Router>, Arc<TokenRegistry>) {
    let config: Arc<dyn ConfigSource> = Arc::new(store.clone());
    let tokens = Arc::new(TokenRegistry::new());
    let router = Arc::new(Router::new(Arc::new(Authorizer::new(
        config.clone(),
        tokens.clone(),
    ))));
    lichen_ipc::register_kernel_operations(&router, lichen_bus::Bus::new(), config, tokens.clone());
    let (link, _) =
        lichen_cloud::CloudLink::start(lichen_cloud::LinkConfig::new("thing", root.join("spool")))
            .await
            .unwrap();
    lichen_cloud::ipc::register(&router, link);
    let supervisor = lichen_supervisor::Supervisor::new(
        lichen_supervisor::SupervisorConfig::new(root),
        Arc::new(NoEnv),
    );
    let hooks = Arc::new(ipc_ops::ComponentUpdateHooks::default());
    let engine = lichen_deploy::DeploymentEngine::new(
        lichen_deploy::EngineConfig::new(
            root.to_path_buf(),
            lichen_recipe::Platform::parse("os=linux,architecture=amd64").unwrap(),
        ),
        store.clone(),
        supervisor.clone(),
        hooks.clone(),
    )
    .unwrap();
    ipc_ops::register(
        &router,
        ipc_ops::Kernel {
            supervisor,
            engine,
            config: store.clone(),
            hooks,
        },
    );
    lichen_clientauth::ClientDeviceAuth::new(root.join("cda")).register_ipc(&router);
    lichen_shadow_manager::ipc::register(
        &router,
        lichen_shadow_manager::Shadows::open(&root.join("shadows"), lichen_bus::Bus::new())
            .unwrap(),
    );
    // Both secrets configured (never fetched: the cloud is unreachable), so a refusal can only
    // come from the policy; past it, the call fails for want of a stored value.
    std::fs::write(root.join("device.key"), b"a device key").unwrap();
    let secrets = lichen_secrets::SecretManager::new(
        &root.join("secrets"),
        &root.join("device.key"),
        None,
        Arc::new(|| Box::pin(async { Err("no credentials in this test".to_string()) })),
    )
    .unwrap();
    secrets
        .configure(lichen_secrets::Settings {
            secrets: vec![(SECRET_RIGHT.into(), vec![]), (SECRET_OTHER.into(), vec![])],
            refresh: None,
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
        })
        .await;
    secrets.register_ipc(&router);
    let server = IpcServer::bind(
        &root.join("ipc.socket"),
        router.clone(),
        tokens.clone(),
        ServerOptions::default(),
    )
    .unwrap();
    (server, router, tokens)
}

/// Calls `op` as `component`: `Err(message)` when it was refused for lack of authorization.
async fn invoke(
    socket: &Path,
    tokens: &TokenRegistry,
    component: &str,
    op: &str,
    streaming: bool,
    request: &Value,
) -> Result<(), String> {
    let client = IpcClient::connect(socket, &tokens.mint(component))
        .await
        .unwrap();
    let result = if streaming {
        client
            .subscribe(op, request.clone())
            .await
            .map(|(response, _events)| response)
    } else {
        client.call(op, request.clone()).await
    };
    match result {
        Err(ClientError::Remote { shape, message, .. })
            if shape == "aws.greengrass#UnauthorizedError" =>
        {
            Err(message)
        }
        Ok(_) | Err(ClientError::Remote { .. }) => Ok(()),
        Err(other) => panic!("{op} as {component}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ipc_operation_is_authorized_as_its_row_says() {
    let tmp = tempfile::tempdir().unwrap();
    let table = table();
    let store = ConfigStore::in_memory();
    store.merge(&[], policies(&table), 1).unwrap();
    let (server, router, tokens) = serve(tmp.path(), &store).await;
    let socket = tmp.path().join("ipc.socket");

    // The table and the registry name the same operations, with the same policy service.
    let registered = router.operations();
    for (name, service, _) in &registered {
        let short = name.trim_start_matches("aws.greengrass#");
        let row = table.iter().find(|(op, ..)| *op == short);
        let Some((_, rule, _)) = row else {
            panic!("{name} is registered but has no row in the authorization matrix; add one");
        };
        let expected = match rule {
            Rule::Policy { service, .. } => Some(*service),
            Rule::Open | Rule::StreamManagerOnly | Rule::Metric { .. } | Rule::InHandler { .. } => {
                None
            }
        };
        assert_eq!(service.as_deref(), expected, "{name}: policy service");
    }
    for (op, ..) in &table {
        assert!(
            registered
                .iter()
                .any(|(name, ..)| name == &format!("aws.greengrass#{op}")),
            "{op} has a row but is not registered"
        );
    }

    for (op, rule, request) in &table {
        let streaming = registered
            .iter()
            .any(|(name, _, s)| *s && name == &format!("aws.greengrass#{op}"));
        let call = |who: String| {
            let (socket, tokens) = (&socket, &tokens);
            async move { invoke(socket, tokens, &who, op, streaming, request).await }
        };
        match *rule {
            Rule::Policy { .. } | Rule::Metric { .. } | Rule::InHandler { .. } => {
                for kind in ["none", "other"] {
                    let who = principal(kind, op, *rule);
                    assert!(
                        call(who.clone()).await.is_err(),
                        "{op}: {who} was not refused"
                    );
                }
                let who = principal("right", op, *rule);
                if let Err(message) = call(who.clone()).await {
                    panic!("{op}: {who}, with the right policy, was refused: {message}");
                }
                if let Rule::Metric { .. } = rule {
                    // The policy alone is not enough: only aws.* components put metrics.
                    let plain = "m.right.PutComponentMetric";
                    store
                        .merge(
                            &["services", plain],
                            policies(&table)["services"][&who].clone(),
                            2,
                        )
                        .unwrap();
                    assert!(
                        call(plain.into()).await.is_err(),
                        "{op}: {plain} was not refused"
                    );
                }
            }
            Rule::Open => {
                if let Err(message) = call(principal("none", op, *rule)).await {
                    panic!("{op} needs no policy, yet was refused: {message}");
                }
            }
            Rule::StreamManagerOnly => {
                let request = json!({ "token": tokens.mint("m.someone") });
                let check = |who: &'static str| {
                    let (socket, tokens, request) = (&socket, &tokens, &request);
                    async move { invoke(socket, tokens, who, op, false, request).await }
                };
                assert!(check("m.none.any").await.is_err(), "{op}: not refused");
                assert_eq!(check("aws.greengrass.StreamManager").await, Ok(()));
            }
        }
    }
    server.shutdown().await;
}
