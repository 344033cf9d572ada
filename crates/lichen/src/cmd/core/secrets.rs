//! `aws.greengrass.SecretManager` in the core: while deployed, `lichen_secrets` keeps the
//! configured cloud secrets (store under `<root>/secrets/`, key derived from the device's
//! private key) and serves IPC `GetSecretValue`. Its signed calls use credentials from the
//! token exchange's settings (`iotRoleAlias`, `iotCredEndpoint`), fetched in-process as
//! Greengrass does.

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use lichen_cloud::tes::TokenExchange;
use lichen_config::ConfigStore;
use lichen_secrets::{CredentialsFn, SERVICE_NAME, SecretManager, Settings};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    let running = ctx.secrets.clone();
    sync_after_deployments(&ctx.config, running.clone());
    vec![Arc::new(SecretsService {
        config: ctx.config.clone(),
        root: ctx.root.clone(),
        router: ctx.router.clone(),
        running,
    })]
}

/// A deployment that (re)installs any component syncs the secrets again (Greengrass refreshes
/// on deployment), once per burst of changes.
fn sync_after_deployments(
    config: &ConfigStore,
    running: Arc<tokio::sync::Mutex<Option<SecretManager>>>,
) {
    let deployed = Arc::new(tokio::sync::Notify::new());
    let n = deployed.clone();
    config.subscribe(
        &["services"],
        Box::new(move |e: &lichen_config::ConfigEvent| {
            if e.path.len() == 3 && e.path[2].eq_ignore_ascii_case("version") {
                n.notify_one();
            }
        }),
    );
    tokio::spawn(async move {
        loop {
            deployed.notified().await;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let manager = running.lock().await.clone();
            if let Some(m) = manager {
                m.sync().await;
            }
        }
    });
}

struct SecretsService {
    config: ConfigStore,
    root: PathBuf,
    router: Arc<lichen_ipc::Router>,
    running: Arc<tokio::sync::Mutex<Option<SecretManager>>>,
}

impl SecretsService {
    fn text(&self, path: &[&str]) -> Option<String> {
        match self.config.get(path) {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    fn start(&self) -> Result<SecretManager, String> {
        let key = self.text(&["system", "privateKeyPath"]).ok_or(
            "system.privateKeyPath is not set: the secret store's key is derived from the device's private key",
        )?;
        let root_ca = self.text(&["system", "rootCaPath"]).map(PathBuf::from);
        // Built on first use, so a device without a role alias still serves its stored secrets.
        let config = self.config.clone();
        let exchange: Arc<tokio::sync::OnceCell<Arc<TokenExchange>>> = Arc::default();
        let credentials: CredentialsFn = Arc::new(move || {
            let (config, exchange) = (config.clone(), exchange.clone());
            Box::pin(async move {
                let tes = exchange
                    .get_or_try_init(|| async {
                        let (c, _) = super::tes::settings(&config, &Value::Null)?;
                        TokenExchange::new(c)
                            .map(Arc::new)
                            .map_err(|e| e.to_string())
                    })
                    .await?;
                let c = tes.credentials().await.map_err(|e| e.to_string())?;
                Ok(lichen_sigv4::Credentials {
                    access_key_id: c.access_key_id,
                    secret_access_key: c.secret_access_key,
                    session_token: Some(c.session_token),
                })
            })
        });
        SecretManager::new(
            &self.root.join("secrets"),
            std::path::Path::new(&key),
            root_ca,
            credentials,
        )
        .map_err(|e| e.to_string())
    }
}

impl BuiltinService for SecretsService {
    fn name(&self) -> &'static str {
        SERVICE_NAME
    }

    fn version(&self) -> &'static str {
        "2.2.2"
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            let Some(c) = configuration else {
                if let Some(m) = running.take() {
                    m.stop();
                    SecretManager::unregister_ipc(&self.router);
                    tracing::info!(service = SERVICE_NAME, "stopped");
                }
                return;
            };
            let region = self
                .text(&["services", super::NUCLEUS, "configuration", "awsRegion"])
                .unwrap_or_else(|| "us-east-1".into());
            let settings = match Settings::from_component_config(&c, &region) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(service = SERVICE_NAME, error = %e, "configuration refused; the previous one stays in force");
                    return;
                }
            };
            if running.is_none() {
                match self.start() {
                    Ok(m) => {
                        m.register_ipc(&self.router);
                        *running = Some(m);
                    }
                    Err(e) => {
                        tracing::error!(service = SERVICE_NAME, error = %e, "not started");
                        return;
                    }
                }
            }
            if let Some(m) = running.as_ref() {
                let n = settings.secrets.len();
                m.configure(settings).await;
                tracing::info!(service = SERVICE_NAME, secrets = n, "configured");
            }
        })
    }
}
