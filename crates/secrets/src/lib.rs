//! The secret manager (`aws.greengrass.SecretManager`): the secrets a deployment names
//! (`cloudSecrets: [{arn, labels}]`) are fetched from Secrets Manager (AWS or the fleet) with
//! SigV4 and the token exchange's credentials, kept encrypted at rest ([`store`]) and served
//! to components over IPC `GetSecretValue`, from the store while the cloud is unreachable.
//!
//! * [`SecretManager::configure`] takes a deployment's configuration: it drops what is no
//!   longer configured, syncs at once, then every `periodicRefreshIntervalMin`.
//! * A fetch that fails keeps the stored copy (offline first).
//! * IPC: the caller must be allowed `aws.greengrass#GetSecretValue` of service
//!   `aws.greengrass.SecretManager` on the secret's ARN.
//!
//! Architecture invariant: a secret's value is plain only in memory; on disk it is sealed with a
//! key derived from the device's private key, bound to its ARN and version.

mod http;
pub mod store;

use base64::Engine;
use lichen_ipc::{Authz, Caller, IpcError, ResourceStyle, Router};
use serde_json::{Value, json};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Entry, Store};

pub const SERVICE_NAME: &str = "aws.greengrass.SecretManager";
const OPERATION: &str = "aws.greengrass#GetSecretValue";
const CURRENT: &str = "AWSCURRENT";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secret manager configuration: {0}")]
    Config(String),
    #[error("secret store: {0}")]
    Store(String),
}

/// Credentials for the signed calls (the token exchange's, fetched on demand).
pub type CredentialsFn = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<lichen_sigv4::Credentials, String>> + Send>>
        + Send
        + Sync,
>;

/// The component configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// ARN → extra labels (AWSCURRENT is always fetched).
    pub secrets: Vec<(String, Vec<String>)>,
    pub refresh: Option<Duration>,
    /// `https://secretsmanager.<region>.amazonaws.com`, or `lichen.endpoint` (e.g. the fleet).
    pub endpoint: String,
    pub region: String,
}

impl Settings {
    pub fn from_component_config(v: &Value, region: &str) -> Result<Settings, SecretsError> {
        let bad = |m: String| SecretsError::Config(m);
        let mut secrets = vec![];
        match v.get("cloudSecrets") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, s) in list.iter().enumerate() {
                    let arn = s["arn"].as_str().filter(|a| a.starts_with("arn:")).ok_or_else(|| {
                        bad(format!("cloudSecrets[{i}].arn must be a secret ARN (arn:aws:secretsmanager:…)"))
                    })?;
                    let labels = match &s["labels"] {
                        Value::Null => vec![],
                        Value::Array(l) => l
                            .iter()
                            .map(|x| x.as_str().map(str::to_string))
                            .collect::<Option<_>>()
                            .ok_or_else(|| {
                                bad(format!("cloudSecrets[{i}].labels must be strings"))
                            })?,
                        _ => return Err(bad(format!("cloudSecrets[{i}].labels must be a list"))),
                    };
                    secrets.push((arn.to_string(), labels));
                }
            }
            Some(_) => return Err(bad("cloudSecrets must be a list of {arn, labels}".into())),
        }
        let minutes = match v.get("periodicRefreshIntervalMin") {
            None | Some(Value::Null) => 0.0,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(Value::String(s)) => s.parse().map_err(|_| {
                bad(format!(
                    "periodicRefreshIntervalMin {s:?} is not a number of minutes"
                ))
            })?,
            Some(other) => {
                return Err(bad(format!(
                    "periodicRefreshIntervalMin {other} is not a number of minutes"
                )));
            }
        };
        let endpoint = v
            .pointer("/lichen/endpoint")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com"));
        http::Url::parse(&endpoint).map_err(|e| bad(format!("lichen.endpoint {e}")))?;
        Ok(Settings {
            secrets,
            refresh: (minutes > 0.0).then(|| Duration::from_secs_f64(minutes * 60.0)),
            endpoint,
            region: region.to_string(),
        })
    }
}

struct Inner {
    store: Store,
    root_ca: Option<PathBuf>,
    credentials: CredentialsFn,
    settings: Mutex<Option<Settings>>,
    cache: Mutex<Vec<Entry>>,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// One sync at a time.
    syncing: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub struct SecretManager {
    inner: Arc<Inner>,
}

impl SecretManager {
    /// Opens the store under `dir` with the key derived from `private_key`.
    pub fn new(
        dir: &Path,
        private_key: &Path,
        root_ca: Option<PathBuf>,
        credentials: CredentialsFn,
    ) -> Result<SecretManager, SecretsError> {
        let store = Store::open(dir, private_key)?;
        let cache = store.load();
        Ok(SecretManager {
            inner: Arc::new(Inner {
                store,
                root_ca,
                credentials,
                settings: Mutex::new(None),
                cache: Mutex::new(cache),
                refresher: Mutex::new(None),
                syncing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Applies a configuration: keeps only configured secrets, syncs now and periodically.
    pub async fn configure(&self, settings: Settings) {
        let configured: Vec<String> = settings.secrets.iter().map(|(a, _)| a.clone()).collect();
        {
            let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.retain(|e| configured.contains(&e.arn));
        }
        let refresh = settings.refresh;
        *self
            .inner
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(settings);
        self.save();
        self.sync().await;
        let me = self.clone();
        let task = refresh.map(|every| {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    me.sync().await;
                }
            })
        });
        if let Some(old) = std::mem::replace(
            &mut *self
                .inner
                .refresher
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            task,
        ) {
            old.abort();
        }
    }

    pub fn stop(&self) {
        if let Some(t) = self
            .inner
            .refresher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
    }

    fn save(&self) {
        let cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Err(e) = self.inner.store.save(&cache) {
            tracing::error!(error = %e, "cannot write the secret store");
        }
    }

    /// Fetches every configured ARN × label; a failure keeps what is stored.
    pub async fn sync(&self) {
        let _one = self.inner.syncing.lock().await;
        let settings = self
            .inner
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(settings) = settings else { return };
        for (arn, labels) in &settings.secrets {
            let mut wanted = vec![CURRENT.to_string()];
            wanted.extend(labels.iter().filter(|l| l.as_str() != CURRENT).cloned());
            for label in wanted {
                match self.fetch(&settings, arn, None, Some(&label)).await {
                    Ok(e) => self.remember(e),
                    Err(m) => {
                        tracing::warn!(arn = %arn, label = %label, error = %m, "cannot fetch the secret; the stored copy stays in use")
                    }
                }
            }
        }
        self.save();
    }

    /// Puts a fetched version in the cache; a label it carries leaves any other version.
    fn remember(&self, e: Entry) {
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        for other in cache.iter_mut().filter(|o| o.arn == e.arn) {
            other.stages.retain(|s| !e.stages.contains(s));
        }
        cache
            .retain(|o| !(o.arn == e.arn && (o.version_id == e.version_id || o.stages.is_empty())));
        cache.push(e);
    }

    async fn fetch(
        &self,
        settings: &Settings,
        arn: &str,
        version_id: Option<&str>,
        stage: Option<&str>,
    ) -> Result<Entry, String> {
        let creds = (self.inner.credentials)().await?;
        let url = http::Url::parse(&settings.endpoint)?;
        let mut req = json!({"SecretId": arn});
        if let Some(v) = version_id {
            req["VersionId"] = json!(v);
        }
        if let Some(s) = stage {
            req["VersionStage"] = json!(s);
        }
        let body = req.to_string().into_bytes();
        let headers = vec![
            (
                "content-type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            (
                "x-amz-target".to_string(),
                "secretsmanager.GetSecretValue".to_string(),
            ),
        ];
        let amz_date = lichen_sigv4::amz_date_now();
        let payload = lichen_sigv4::hex_sha256(&body);
        let host = url.host_header();
        let (_, added) = lichen_sigv4::sign(
            &lichen_sigv4::SignInput {
                method: "POST",
                host: &host,
                path: "/",
                query: &[],
                headers: &headers,
                payload_sha256: &payload,
                region: &settings.region,
                service: "secretsmanager",
                amz_date: &amz_date,
                content_sha256_header: false,
            },
            &creds,
        );
        let all: Vec<(String, String)> = headers.into_iter().chain(added).collect();
        let (status, answer) = http::post(&url, self.inner.root_ca.as_deref(), &all, &body).await?;
        let v: Value = serde_json::from_slice(&answer).map_err(|_| {
            format!("secretsmanager answered {status} with a body that is not JSON")
        })?;
        if status != 200 {
            return Err(format!(
                "secretsmanager answered {status}: {} {}",
                v["__type"].as_str().unwrap_or_default(),
                v["Message"]
                    .as_str()
                    .or(v["message"].as_str())
                    .unwrap_or_default()
            ));
        }
        let (binary, value) = match (v["SecretString"].as_str(), v["SecretBinary"].as_str()) {
            (Some(s), _) => (false, s.as_bytes().to_vec()),
            (None, Some(b)) => (
                true,
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| "SecretBinary is not base64".to_string())?,
            ),
            _ => return Err("the answer has neither SecretString nor SecretBinary".into()),
        };
        Ok(Entry {
            arn: v["ARN"].as_str().unwrap_or(arn).to_string(),
            name: v["Name"].as_str().unwrap_or_default().to_string(),
            version_id: v["VersionId"].as_str().unwrap_or_default().to_string(),
            stages: v["VersionStages"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            created: v["CreatedDate"].as_f64().unwrap_or_default(),
            binary,
            value,
        })
    }

    /// The configured ARN `id` names (an ARN, or the name of a stored secret).
    fn resolve(&self, id: &str) -> Option<String> {
        let settings = self
            .inner
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        if settings.secrets.iter().any(|(a, _)| a == id) {
            return Some(id.to_string());
        }
        let cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.iter().find(|e| e.name == id).map(|e| e.arn.clone())
    }

    fn lookup(&self, arn: &str, version_id: Option<&str>, stage: &str) -> Option<Entry> {
        let cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .iter()
            .find(|e| {
                e.arn == arn
                    && match version_id {
                        Some(v) => e.version_id == v,
                        None => e.stages.iter().any(|s| s == stage),
                    }
            })
            .cloned()
    }

    /// The stored version of `arn` (by id, else by stage); one cloud fetch when it is not stored
    /// yet or `refresh` asks for it, the stored copy answering when the fetch fails.
    async fn find(
        &self,
        arn: &str,
        version_id: Option<&str>,
        stage: &str,
        refresh: bool,
    ) -> Option<Entry> {
        if !refresh && let Some(e) = self.lookup(arn, version_id, stage) {
            return Some(e);
        }
        let settings = self
            .inner
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(settings) = settings {
            match self
                .fetch(
                    &settings,
                    arn,
                    version_id,
                    version_id.is_none().then_some(stage),
                )
                .await
            {
                Ok(e) => {
                    self.remember(e);
                    self.save();
                }
                Err(m) => {
                    tracing::warn!(arn = %arn, error = %m, "cannot fetch the secret; answering from the store")
                }
            }
        }
        self.lookup(arn, version_id, stage)
    }

    /// The current (`AWSCURRENT`) string value of secret `id` (a configured ARN, or a stored
    /// secret's name), for services inside the core, which are not IPC callers: no
    /// authorization policy applies; the deployment that configures such a service names the
    /// secret in its configuration.
    pub async fn current_string(&self, id: &str) -> Result<String, String> {
        let arn = self.resolve(id).ok_or_else(|| {
            format!("secret {id:?} is not among the cloudSecrets of {SERVICE_NAME}; add it there")
        })?;
        let e = self.find(&arn, None, CURRENT, false).await.ok_or_else(|| {
            format!("secret {arn} is not stored yet and the cloud could not provide it")
        })?;
        if e.binary {
            return Err(format!("secret {arn} holds binary data, not a string"));
        }
        String::from_utf8(e.value).map_err(|_| format!("secret {arn} is not UTF-8 text"))
    }

    /// IPC `GetSecretValue` (after authorization on the resolved ARN).
    pub async fn get_secret_value(
        &self,
        router: &Router,
        caller: &Caller,
        req: &Value,
    ) -> Result<Value, IpcError> {
        let id = req["secretId"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                IpcError::invalid_arguments("secretId is required (the secret's ARN or name)")
            })?;
        let version_id = req["versionId"].as_str().filter(|s| !s.is_empty());
        let stage = req["versionStage"].as_str().filter(|s| !s.is_empty());
        if version_id.is_some() && stage.is_some() {
            return Err(IpcError::invalid_arguments(
                "give versionId or versionStage, not both",
            ));
        }
        let not_found = || IpcError::ResourceNotFound {
            message: format!("secret {id:?} is not among this device's cloudSecrets"),
            resource_type: Some("secret".into()),
            resource_name: Some(id.to_string()),
        };
        let arn = self.resolve(id).ok_or_else(not_found)?;
        router.authorizer().check(
            &caller.component,
            SERVICE_NAME,
            OPERATION,
            &arn,
            ResourceStyle::Standard,
        )?;
        let stage = stage.unwrap_or(CURRENT);
        let refresh = req["refresh"].as_bool().unwrap_or(false);
        let found = self.find(&arn, version_id, stage, refresh).await;
        let e = found.ok_or_else(|| IpcError::ResourceNotFound {
            message: format!(
                "secret {arn} has no version {} stored and the cloud could not provide it",
                version_id.map_or(format!("labelled {stage}"), |v| format!("{v:?}"))
            ),
            resource_type: Some("secret".into()),
            resource_name: Some(arn.clone()),
        })?;
        let value = if e.binary {
            json!({"secretBinary": base64::engine::general_purpose::STANDARD.encode(&e.value)})
        } else {
            json!({"secretString": String::from_utf8_lossy(&e.value)})
        };
        Ok(json!({
            "secretId": e.arn,
            "versionId": e.version_id,
            "versionStage": e.stages,
            "secretValue": value,
        }))
    }

    /// Serves `GetSecretValue` on `router` until [`SecretManager::unregister_ipc`].
    pub fn register_ipc(&self, router: &Arc<Router>) {
        let me = self.clone();
        let r = router.clone();
        router.register_unary("GetSecretValue", Authz::None, move |caller, req| {
            let (me, r) = (me.clone(), r.clone());
            async move { me.get_secret_value(&r, &caller, &req).await }
        });
    }

    pub fn unregister_ipc(router: &Router) {
        router.unregister("GetSecretValue");
    }
}
