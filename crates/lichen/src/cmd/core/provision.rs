//! Provisioning by claim on first start, with the Greengrass installer's configuration
//! (`services.aws.greengrass.FleetProvisioningByClaim.configuration`): when the core has no device
//! certificate yet it connects with the claim certificate, obtains its own identity
//! ([`lichen_cloud::provision`]), stores it and records it in the configuration, before anything
//! else reads the thing name or the endpoint.
//!
//! Crash safety: the certificate and key are written owner-only (0600) by write-fsync-rename,
//! then a record of the identity (`<root>/work/<plugin>/identity.json`) the same way, then the
//! configuration in one durable commit. A restart that finds the record but not the commit
//! commits it without asking the fleet again, so a stored identity is never replaced. A crash
//! before the record is written provisions again: the fleet then holds a second certificate for
//! the same thing (the first one was never stored on the device).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use lichen_cloud::provision::{ClaimRequest, ProvisionError, Provisioned};
use lichen_config::{Change, ConfigStore};
use serde_json::{Value, json};

pub const PLUGIN: &str = "aws.greengrass.FleetProvisioningByClaim";
const NUCLEUS: &str = "aws.greengrass.Nucleus";

/// The identity as stored on the device: what the configuration commit needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Identity {
    thing_name: String,
    certificate_id: String,
    certificate_path: PathBuf,
    private_key_path: PathBuf,
}

/// The plugin's configuration, resolved.
struct Plan {
    request: ClaimRequest,
    certificate_path: PathBuf,
    private_key_path: PathBuf,
    /// With a CSR the key is the device's own and stays where it is.
    csr_private_key: Option<PathBuf>,
    cred_endpoint: Option<String>,
    region: Option<String>,
    role_alias: Option<String>,
    record: PathBuf,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn plan(conf: &Value, root: &Path) -> anyhow::Result<Plan> {
    let get = |k: &str| text(conf.get(k));
    let need = |k: &str| {
        get(k).with_context(|| {
            format!("services.{PLUGIN}.configuration.{k} is missing; the core cannot provision itself by claim without it")
        })
    };
    let root_path = get("rootPath").map_or_else(|| root.to_path_buf(), PathBuf::from);
    let port = match conf.get("mqttPort") {
        None => 8883,
        Some(v) => text(Some(v))
            .and_then(|p| p.parse::<u16>().ok())
            .with_context(|| {
                format!("services.{PLUGIN}.configuration.mqttPort is {v}, not a port number")
            })?,
    };
    let mut parameters = BTreeMap::new();
    match conf.get("templateParameters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                // The plugin stringifies every value; the template's parameters are strings.
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                parameters.insert(k.clone(), s);
            }
        }
        Some(other) => bail!(
            "services.{PLUGIN}.configuration.templateParameters is {other}; it must be a map of parameter names to values"
        ),
    }
    let csr = match get("csrPath") {
        None => None,
        Some(p) => Some(std::fs::read_to_string(&p).with_context(|| {
            format!("reading the CSR {p} (services.{PLUGIN}.configuration.csrPath)")
        })?),
    };
    let csr_private_key = match (&csr, get("csrPrivateKeyPath")) {
        (None, _) => None,
        (Some(_), Some(k)) => Some(PathBuf::from(k)),
        (Some(_), None) => bail!(
            "services.{PLUGIN}.configuration.csrPath is set but csrPrivateKeyPath is not; give the path of the CSR's private key"
        ),
    };
    let client_id = get("deviceId").unwrap_or_else(|| {
        let n: u128 = rand::random();
        format!("lichen-claim-{n:032x}")
    });
    Ok(Plan {
        request: ClaimRequest {
            host: need("iotDataEndpoint")?,
            port,
            root_ca: PathBuf::from(need("rootCaPath")?),
            claim_certificate: PathBuf::from(need("claimCertificatePath")?),
            claim_private_key: PathBuf::from(need("claimCertificatePrivateKeyPath")?),
            client_id,
            template: need("provisioningTemplate")?,
            parameters,
            csr,
            step_timeout: Duration::from_secs(30),
        },
        certificate_path: get("certificatePath")
            .map_or_else(|| root_path.join("thingCert.crt"), PathBuf::from),
        private_key_path: get("privateKeyPath")
            .map_or_else(|| root_path.join("privKey.key"), PathBuf::from),
        csr_private_key,
        cred_endpoint: get("iotCredentialEndpoint"),
        region: get("awsRegion"),
        role_alias: get("iotRoleAlias"),
        record: record_path(root),
    })
}

/// True when the configuration names a device certificate and key that exist.
fn has_identity(config: &ConfigStore) -> bool {
    let file = |k: &str| {
        text(config.get(&["system", k]).as_ref()).is_some_and(|p| Path::new(&p).is_file())
    };
    file("certificateFilePath") && file("privateKeyPath")
}

/// Checks that `config` holds a complete provisioning-by-claim configuration (what
/// `lichen core install --provision` merges); the error names the missing or wrong key.
pub fn check(config: &ConfigStore, root: &Path) -> anyhow::Result<()> {
    let conf = config
        .get(&["services", PLUGIN, "configuration"])
        .with_context(|| format!("services.{PLUGIN}.configuration is missing"))?;
    plan(&conf, root).map(|_| ())
}

/// Where the core records the identity it provisioned (see the module's crash-safety note).
pub fn record_path(root: &Path) -> PathBuf {
    root.join("work").join(PLUGIN).join("identity.json")
}

/// Waits up to `timeout` for the core under `root` to record a provisioned identity; returns
/// its thing name. On timeout the error carries the last provisioning failure the core logged
/// (from `<root>/logs/lichen.log`), so that the reason is on the installer's terminal.
pub fn wait_for_identity(root: &Path, timeout: Duration) -> anyhow::Result<String> {
    let record = record_path(root);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(identity) = read_record(&record)? {
            return Ok(identity.thing_name);
        }
        if std::time::Instant::now() >= deadline {
            let log = root.join("logs").join("lichen.log");
            let last = std::fs::read_to_string(&log).ok().and_then(|text| {
                text.lines()
                    .rev()
                    .find(|l| l.contains("provisioning by claim failed"))
                    .map(str::to_string)
            });
            match last {
                Some(line) => bail!(
                    "the core did not provision itself within {} s; its last attempt: {line}",
                    timeout.as_secs()
                ),
                None => bail!(
                    "the core did not provision itself within {} s (nothing about it in {} yet)",
                    timeout.as_secs(),
                    log.display()
                ),
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Provisions the core by claim if the plugin is configured and the core has no identity yet;
/// retries with backoff until it succeeds. Returns whether it provisioned (or recovered) now.
pub async fn ensure(config: &ConfigStore, root: &Path) -> anyhow::Result<bool> {
    let Some(conf) = config.get(&["services", PLUGIN, "configuration"]) else {
        return Ok(false);
    };
    if has_identity(config) {
        return Ok(false);
    }
    let plan = plan(&conf, root)?;
    if let Some(identity) = read_record(&plan.record)? {
        tracing::info!(
            thing = %identity.thing_name,
            certificate_id = %identity.certificate_id,
            "provisioning by claim: the identity stored before a restart is recorded in the configuration"
        );
        commit(config, &plan, &identity)?;
        return Ok(true);
    }
    let mut failures: u32 = 0;
    loop {
        tracing::info!(
            endpoint = %plan.request.host,
            port = plan.request.port,
            template = %plan.request.template,
            attempt = failures + 1,
            "provisioning by claim"
        );
        match lichen_cloud::provision::provision(&plan.request).await {
            Ok(p) => {
                let identity = store(&plan, &p)?;
                commit(config, &plan, &identity)?;
                tracing::info!(
                    thing = %identity.thing_name,
                    certificate_id = %identity.certificate_id,
                    certificate = %identity.certificate_path.display(),
                    "provisioned by claim"
                );
                return Ok(true);
            }
            Err(e) => {
                let delay = lichen_cloud::provision::retry_delay(failures);
                failures = failures.saturating_add(1);
                log_failure(&e, failures, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn log_failure(e: &ProvisionError, attempt: u32, delay: Duration) {
    tracing::warn!(
        reason = %e,
        attempt,
        retry_in_s = delay.as_secs(),
        "provisioning by claim failed; the core retries, and starts once it has its own certificate"
    );
}

fn read_record(path: &Path) -> anyhow::Result<Option<Identity>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let identity: Identity = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a provisioned identity record; remove it to provision again",
            path.display()
        )
    })?;
    // The record is written after both files; missing files mean they were removed since.
    if identity.certificate_path.is_file() && identity.private_key_path.is_file() {
        Ok(Some(identity))
    } else {
        Ok(None)
    }
}

/// Writes the certificate, the key (unless it is the device's CSR key) and the record.
fn store(plan: &Plan, p: &Provisioned) -> anyhow::Result<Identity> {
    let private_key_path = match (&p.private_key, &plan.csr_private_key) {
        (Some(key), _) => {
            write_private(&plan.private_key_path, key.as_bytes())?;
            plan.private_key_path.clone()
        }
        (None, Some(own)) => own.clone(),
        (None, None) => bail!("the fleet answered no private key and no CSR was sent"),
    };
    write_private(&plan.certificate_path, p.certificate_pem.as_bytes())?;
    let identity = Identity {
        thing_name: p.thing_name.clone(),
        certificate_id: p.certificate_id.clone(),
        certificate_path: plan.certificate_path.clone(),
        private_key_path,
    };
    write_private(&plan.record, &serde_json::to_vec_pretty(&identity)?)?;
    Ok(identity)
}

/// Owner-only, durable, atomic: a reader sees the old file or the whole new one.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let name = path.file_name().context("a file path")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Records the identity and the endpoints in the configuration: one durable commit.
fn commit(config: &ConfigStore, plan: &Plan, id: &Identity) -> anyhow::Result<()> {
    let ts = lichen_config::now_ms();
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let set = |p: &[&str], value: Value| Change::Set {
        path: path(p),
        value,
        ts,
    };
    let shown = |p: &Path| json!(p.display().to_string());
    let mut changes = vec![
        set(&["system", "thingName"], json!(id.thing_name)),
        set(
            &["system", "certificateFilePath"],
            shown(&id.certificate_path),
        ),
        set(&["system", "privateKeyPath"], shown(&id.private_key_path)),
        set(&["system", "rootCaPath"], shown(&plan.request.root_ca)),
        set(
            &["services", NUCLEUS, "configuration", "iotDataEndpoint"],
            json!(plan.request.host),
        ),
        set(
            &["services", NUCLEUS, "configuration", "mqtt", "port"],
            json!(plan.request.port),
        ),
    ];
    let optional = [
        ("iotCredEndpoint", &plan.cred_endpoint),
        ("awsRegion", &plan.region),
        ("iotRoleAlias", &plan.role_alias),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            changes.push(set(&["services", NUCLEUS, "configuration", key], json!(v)));
        }
    }
    config
        .apply_overriding(changes)
        .map(drop)
        .context("recording the provisioned identity in the configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_follows_the_plugin_defaults_and_stringifies_parameters() {
        let conf = json!({
            "iotDataEndpoint": "fleet.example", "provisioningTemplate": "t",
            "claimCertificatePath": "/c.crt", "claimCertificatePrivateKeyPath": "/c.key",
            "rootCaPath": "/ca.pem", "rootPath": "/gg", "mqttPort": "8884",
            "templateParameters": {"SerialNumber": 42, "Site": "north"}
        });
        let p = plan(&conf, Path::new("/lichen")).unwrap();
        assert_eq!(p.request.port, 8884);
        assert_eq!(p.certificate_path, Path::new("/gg/thingCert.crt"));
        assert_eq!(p.private_key_path, Path::new("/gg/privKey.key"));
        assert_eq!(p.request.parameters["SerialNumber"], "42");
        assert_eq!(
            p.record,
            Path::new("/lichen/work/aws.greengrass.FleetProvisioningByClaim/identity.json")
        );
    }

    #[test]
    fn a_missing_key_names_itself() {
        let conf = json!({"iotDataEndpoint": "h"});
        let e = plan(&conf, Path::new("/r")).err().unwrap().to_string();
        assert!(e.contains("rootCaPath is missing"), "{e}");
    }

    #[test]
    fn private_files_are_owner_only_and_replaced_whole() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("keys/privKey.key");
        write_private(&f, b"one").unwrap();
        write_private(&f, b"two").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        let dir = f.parent().unwrap().metadata().unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(f.parent().unwrap()).unwrap().count(), 1);
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A configuration whose endpoint refuses connections: any network attempt would retry
    /// forever, so finishing proves none was made.
    #[test]
    fn install_checks_the_whole_configuration_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let config = claim_config(dir.path());
        check(&config, dir.path()).unwrap();
        config
            .remove(
                &["services", PLUGIN, "configuration", "claimCertificatePath"],
                2,
            )
            .unwrap();
        let e = format!("{:#}", check(&config, dir.path()).unwrap_err());
        assert!(e.contains("claimCertificatePath is missing"), "{e}");
        let e = format!(
            "{:#}",
            check(&ConfigStore::in_memory(), dir.path()).unwrap_err()
        );
        assert!(
            e.contains(&format!("services.{PLUGIN}.configuration is missing")),
            "{e}"
        );
    }

    #[test]
    fn install_waits_for_the_recorded_identity_or_says_why_it_is_missing() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().to_path_buf();
        std::fs::create_dir_all(r.join("logs")).unwrap();
        std::fs::write(
            r.join("logs/lichen.log"),
            "2026 WARN provisioning by claim failed reason=\"connection refused\" attempt=3\n",
        )
        .unwrap();
        let e = wait_for_identity(&r, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("connection refused"), "{e}");

        let writer = {
            let r = r.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                let (cert, key) = (r.join("thingCert.crt"), r.join("privKey.key"));
                std::fs::write(&cert, "c").unwrap();
                std::fs::write(&key, "k").unwrap();
                let id = Identity {
                    thing_name: "gateway-7".into(),
                    certificate_id: "abc".into(),
                    certificate_path: cert,
                    private_key_path: key,
                };
                std::fs::create_dir_all(record_path(&r).parent().unwrap()).unwrap();
                // As the core does: whole, by rename.
                let tmp = record_path(&r).with_extension("tmp");
                std::fs::write(&tmp, serde_json::to_vec(&id).unwrap()).unwrap();
                std::fs::rename(&tmp, record_path(&r)).unwrap();
            })
        };
        let thing = wait_for_identity(&r, Duration::from_secs(30)).unwrap();
        writer.join().unwrap();
        assert_eq!(thing, "gateway-7");
    }

    fn claim_config(dir: &Path) -> ConfigStore {
        let config = ConfigStore::in_memory();
        let conf = json!({
            "iotDataEndpoint": "127.0.0.1", "mqttPort": 1, "provisioningTemplate": "t",
            "claimCertificatePath": "/c.crt", "claimCertificatePrivateKeyPath": "/c.key",
            "rootCaPath": dir.join("ca.pem").display().to_string(),
            "rootPath": dir.display().to_string(),
            "iotCredentialEndpoint": "creds.example", "awsRegion": "eu-west-1"
        });
        config
            .set(&["services", PLUGIN, "configuration"], conf, 1)
            .unwrap();
        config
    }

    #[test]
    fn a_crash_after_storing_the_identity_commits_it_without_provisioning_again() {
        let d = tempfile::tempdir().unwrap();
        let config = claim_config(d.path());
        let p = plan(
            &config.get(&["services", PLUGIN, "configuration"]).unwrap(),
            d.path(),
        )
        .unwrap();
        let stored = store(
            &p,
            &Provisioned {
                thing_name: "sensor-1".into(),
                certificate_id: "abc".into(),
                certificate_pem: "CERT".into(),
                private_key: Some("KEY".into()),
                device_configuration: Value::Null,
            },
        )
        .unwrap();
        // The configuration commit never happened; the restart finds the record.
        let done = block_on(async {
            tokio::time::timeout(Duration::from_secs(10), ensure(&config, d.path())).await
        })
        .expect("no network attempt")
        .unwrap();
        assert!(done);
        let sys = |k: &str| config.get(&["system", k]).unwrap();
        assert_eq!(sys("thingName"), json!("sensor-1"));
        assert_eq!(
            sys("certificateFilePath"),
            json!(stored.certificate_path.display().to_string())
        );
        assert_eq!(std::fs::read(&stored.private_key_path).unwrap(), b"KEY");
        let nucleus = |k: &str| config.get(&["services", NUCLEUS, "configuration", k]);
        assert_eq!(nucleus("iotCredEndpoint"), Some(json!("creds.example")));
        assert_eq!(nucleus("awsRegion"), Some(json!("eu-west-1")));
        assert_eq!(
            config.get(&["services", NUCLEUS, "configuration", "mqtt", "port"]),
            Some(json!(1))
        );
        // Once committed, later starts do nothing.
        assert!(!block_on(ensure(&config, d.path())).unwrap());
    }

    #[test]
    fn a_core_without_the_plugin_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let config = ConfigStore::in_memory();
        assert!(!block_on(ensure(&config, d.path())).unwrap());
        assert_eq!(config.get(&["system", "thingName"]), None);
    }
}
