//! `aws.greengrass.TokenExchangeService` in the core: while it is deployed, the credentials
//! cache and its loopback endpoint run (`lichen_cloud::tes`); nothing runs otherwise. Components
//! that depend on the service get `AWS_CONTAINER_CREDENTIALS_FULL_URI` (every component already
//! has `AWS_CONTAINER_AUTHORIZATION_TOKEN`, its IPC token, which the Stream Manager SDK also reads).
//!
//! Settings: the nucleus's `iotRoleAlias` and `iotCredEndpoint` (`host` or `host:port`, port 443
//! by default), the device certificate, key and root CA (`system.*`); the service's own `port`
//! (0 = any free port; the one chosen is also recorded as `activePort` in the log) and
//! `lichen.refreshMarginSec` (default 300: how long before expiry credentials are refetched).
//!
//! Authorization: a caller's token must be a live component's, and that component authorized for
//! `aws.greengrass.TokenExchangeService` operation `getCredentials`. As in Greengrass, a default
//! policy allows every component; `lichen.requireAccessControl: true` drops that default, so only
//! components whose `accessControl` lists the operation get credentials.

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use lichen_cloud::tes::{TesConfig, TesServer, TokenExchange};
use lichen_config::ConfigStore;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub const SERVICE_NAME: &str = "aws.greengrass.TokenExchangeService";

/// The operation components are authorized for (`accessControl` of the service).
pub const GET_CREDENTIALS: &str = "getCredentials";

/// `lichen.requireAccessControl`: whether the default allow-all policy is dropped.
fn require_access_control(own: &Value) -> bool {
    match own.pointer("/lichen/requireAccessControl") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The running endpoint's full URI, read by the supervisor's environment for each new process.
static FULL_URI: RwLock<Option<String>> = RwLock::new(None);

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    let service = Arc::new(TesService {
        config: ctx.config.clone(),
        tokens: ctx.tokens.clone(),
        router: ctx.router.clone(),
        running: tokio::sync::Mutex::new(None),
        applied: std::sync::Mutex::new(None),
    });
    restart_on_identity_change(&ctx.config, service.clone());
    vec![service]
}

/// A new role alias, credentials endpoint, thing name, certificate, key or CA empties the cache:
/// the running service starts again with its own configuration (and its port).
fn restart_on_identity_change(config: &ConfigStore, service: Arc<TesService>) {
    let changed = Arc::new(tokio::sync::Notify::new());
    for prefix in [
        &["services", super::NUCLEUS, "configuration"][..],
        &["system"][..],
    ] {
        let n = changed.clone();
        config.subscribe(
            prefix,
            Box::new(move |e: &lichen_config::ConfigEvent| {
                let key = e
                    .path
                    .last()
                    .map(|k| k.to_ascii_lowercase())
                    .unwrap_or_default();
                if matches!(
                    key.as_str(),
                    "iotrolealias"
                        | "iotcredendpoint"
                        | "thingname"
                        | "certificatefilepath"
                        | "privatekeypath"
                        | "rootcapath"
                ) {
                    n.notify_one();
                }
            }),
        );
    }
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            let own = service
                .applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if own.is_some() {
                tracing::info!(
                    service = SERVICE_NAME,
                    "the device identity or role alias changed; credentials are fetched anew"
                );
                service.apply(own).await;
            }
        }
    });
}

/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` for `component` when it depends on the service and the
/// service is running.
pub fn component_env(config: &ConfigStore, component: &str) -> BTreeMap<String, String> {
    let uri = FULL_URI.read().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(uri) = uri else {
        return BTreeMap::new();
    };
    let depends = match config.get(&["services", component, "dependencies"]) {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(|d| {
            d.split(':')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(SERVICE_NAME))
        }),
        _ => false,
    };
    if !depends {
        return BTreeMap::new();
    }
    BTreeMap::from([("AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string(), uri)])
}

struct TesService {
    config: ConfigStore,
    tokens: Arc<lichen_ipc::TokenRegistry>,
    router: Arc<lichen_ipc::Router>,
    running: tokio::sync::Mutex<Option<TesServer>>,
    /// The configuration last applied (`None`: not deployed).
    applied: std::sync::Mutex<Option<Value>>,
}

impl TesService {
    fn settings(&self, own: &Value) -> Result<(TesConfig, u16), String> {
        settings(&self.config, own)
    }
}

/// The exchange's settings from the nucleus (and the service's own configuration `own`), and
/// the loopback port to serve on.
pub fn settings(config: &ConfigStore, own: &Value) -> Result<(TesConfig, u16), String> {
    {
        let text = |path: &[&str]| match config.get(path) {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        };
        let nucleus = |k: &str| text(&["services", super::NUCLEUS, "configuration", k]);
        let role_alias = nucleus("iotRoleAlias").ok_or(
            "services.aws.greengrass.Nucleus.configuration.iotRoleAlias is not set; set it to the role alias whose role components act as (`lichen fleet enroll --role-alias`)",
        )?;
        let cred = nucleus("iotCredEndpoint").ok_or(
            "services.aws.greengrass.Nucleus.configuration.iotCredEndpoint is not set; set it to the credentials provider's host (or host:port)",
        )?;
        let (host, port) = match cred.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse().unwrap_or(443),
            ),
            _ => (cred.clone(), 443),
        };
        let file = |k: &str| -> Result<PathBuf, String> {
            text(&["system", k])
                .map(PathBuf::from)
                .ok_or_else(|| format!("system.{k} is not set; the token exchange needs the device certificate, key and root CA"))
        };
        let thing_name = text(&["system", "thingName"]).unwrap_or_default();
        let num = |v: &Value| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        };
        let margin = own
            .pointer("/lichen/refreshMarginSec")
            .and_then(num)
            .unwrap_or(300);
        let local_port = own.get("port").and_then(num).unwrap_or(0);
        let local_port = u16::try_from(local_port)
            .map_err(|_| format!("port {local_port} is not a TCP port; use 0..65535"))?;
        Ok((
            TesConfig {
                endpoint: lichen_cloud::Endpoint {
                    host,
                    port,
                    root_ca: file("rootCaPath")?,
                    certificate: file("certificateFilePath")?,
                    private_key: file("privateKeyPath")?,
                },
                role_alias,
                thing_name,
                refresh_margin: Duration::from_secs(margin),
            },
            local_port,
        ))
    }
}

impl BuiltinService for TesService {
    fn name(&self) -> &'static str {
        SERVICE_NAME
    }

    fn version(&self) -> &'static str {
        super::NUCLEUS_VERSION
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            // The URI stays published across a restart on the same port (components started
            // meanwhile get it; SDKs retry the moment the listener is down).
            // Reconfigured with `port` 0: keep the port components were already given.
            let previous_port = running.take().map(|s| s.port());
            *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = configuration.clone();
            let Some(own) = configuration else {
                *FULL_URI.write().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(service = SERVICE_NAME, "stopped");
                return;
            };
            let started = async {
                let (config, port) = self.settings(&own)?;
                let port = match (port, previous_port) {
                    (0, Some(p)) => p,
                    _ => port,
                };
                let tes = TokenExchange::new(config).map_err(|e| e.to_string())?;
                let tokens = self.tokens.clone();
                let authorizer = self.router.authorizer().clone();
                let open = !require_access_control(&own);
                // A live component token (CLI clients are not components) whose component may
                // getCredentials: under the default policy any, else by its accessControl.
                let authorize: lichen_cloud::tes::Authorize = Arc::new(move |token: &str| {
                    let Some(who) = tokens.identity(token) else {
                        return false;
                    };
                    if tokens.is_external(&who) {
                        return false;
                    }
                    open || authorizer
                        .check(
                            &who,
                            SERVICE_NAME,
                            GET_CREDENTIALS,
                            "*",
                            lichen_ipc::ResourceStyle::Standard,
                        )
                        .is_ok()
                });
                lichen_cloud::tes::serve(Arc::new(tes), port, authorize)
                    .await
                    .map_err(|e| format!("listening on 127.0.0.1:{port}: {e}; choose another port"))
            };
            match started.await {
                Ok(server) => {
                    tracing::info!(
                        service = SERVICE_NAME,
                        activePort = server.port(),
                        "serving credentials on loopback"
                    );
                    *FULL_URI.write().unwrap_or_else(|e| e.into_inner()) = Some(server.full_uri());
                    *running = Some(server);
                }
                Err(e) => {
                    *FULL_URI.write().unwrap_or_else(|e| e.into_inner()) = None;
                    tracing::error!(service = SERVICE_NAME, error = %e, "not started");
                }
            }
        })
    }
}
