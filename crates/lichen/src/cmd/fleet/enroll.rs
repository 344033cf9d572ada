//! `lichen fleet enroll`: a device's identity made on the fleet host in one step — the thing, a
//! certificate and key from the fleet CA, a policy scoped to the thing, the thing's groups — and
//! a Greengrass-style `config.yaml` with which `lichen core run` connects to the fleet.
//!
//! It writes to the fleet root's registry directly (the same transactional, audited calls the
//! control plane makes; SQLite serializes it with a running fleet), so it needs no credentials
//! and works whether or not the fleet is running. A running fleet reads the new certificate
//! when the device connects.

use anyhow::{Context, bail};
use clap::Args;
use lichen_fleet_pki::{FleetCa, create_private_dir, write_private};
use lichen_fleet_registry::{CertificateStatus, NewCertificate, RegistryError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct EnrollArgs {
    /// The thing (and MQTT client id) the device connects as.
    #[arg(long)]
    pub thing: String,
    /// A static thing group to put the thing in, created if absent (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Where config.yaml and the certificate files are written (created 0700).
    #[arg(long)]
    pub out: PathBuf,
    /// Fleet root directory (the one `lichen fleet serve` uses).
    #[arg(long, env = "LICHEN_FLEET_ROOT", default_value = "./lichen-fleet")]
    pub root: PathBuf,
    /// The PostgreSQL registry the fleet serves with `--database` (instead of `<root>/fleet.db`).
    #[arg(long, env = "LICHEN_FLEET_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    /// The device endpoint as devices reach it (HOST:PORT); default: the `mqtt` of the running
    /// fleet's endpoints.json.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The role alias the core's token exchange service exchanges its certificate through
    /// (`iotRoleAlias`); the device gets a policy allowing `iot:AssumeRoleWithCertificate` on it.
    /// Create the alias with `aws iot create-role-alias` and give its role a permissions policy
    /// with `lichen fleet role put`.
    #[arg(long)]
    pub role_alias: Option<String>,
}

/// The policy an enrolled device gets. Scoped to the thing: it connects as itself only, and
/// publishes, subscribes and receives under `devices/<thing>/` (where its components publish
/// through PublishToIoTCore) and under `$aws/things/<thing>/` (the service's topics for it:
/// shadows, jobs), calls the Greengrass data plane, and calls the shadow operations on its own
/// thing over HTTPS. Anything wider is granted by attaching further policies.
pub fn device_policy() -> serde_json::Value {
    let t = "${iot:Connection.Thing.ThingName}";
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": format!("arn:aws:iot:*:*:client/{t}"),
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [
                    format!("arn:aws:iot:*:*:topic/devices/{t}/*"),
                    format!("arn:aws:iot:*:*:topic/$aws/things/{t}/*"),
                ],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [
                    format!("arn:aws:iot:*:*:topicfilter/devices/{t}/*"),
                    format!("arn:aws:iot:*:*:topicfilter/$aws/things/{t}/*"),
                ],
            },
            {
                // The Greengrass data plane a core deploys through (spec §6.4).
                "Effect": "Allow",
                "Action": [
                    "greengrass:ResolveComponentCandidates",
                    "greengrass:GetComponentVersionArtifact",
                    "greengrass:GetDeploymentConfiguration",
                    "greengrass:ListThingGroupsForCoreDevice",
                ],
                "Resource": "*",
            },
            {
                // Its own shadows over HTTPS (what the core's shadow sync calls).
                "Effect": "Allow",
                "Action": [
                    "iot:GetThingShadow",
                    "iot:UpdateThingShadow",
                    "iot:DeleteThingShadow",
                    "iot:ListNamedShadowsForThing",
                ],
                "Resource": format!("arn:aws:iot:*:*:thing/{t}"),
            },
        ],
    })
}

const WHO: &str = "lichen fleet enroll";

pub fn run(a: EnrollArgs) -> anyhow::Result<ExitCode> {
    let db = a.root.join("fleet.db");
    let ca_dir = a.root.join("ca");
    if (a.database.is_none() && !db.exists()) || !ca_dir.join("ca.pem").exists() {
        bail!(
            "no fleet at {}: start `lichen fleet serve --root {}` once, or give the --root it uses",
            a.root.display(),
            a.root.display()
        );
    }
    let endpoints: serde_json::Value = std::fs::read(a.root.join("endpoints.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let endpoint = match a
        .endpoint
        .clone()
        .or_else(|| endpoints["mqtt"].as_str().map(String::from))
    {
        Some(e) => e,
        None => bail!(
            "the fleet at {} is not running, so its device endpoint is unknown: give --endpoint HOST:PORT",
            a.root.display()
        ),
    };
    let (host, port) = endpoint
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_matches(['[', ']']).to_string(),
                p.parse::<u16>().ok()?,
            ))
        })
        .with_context(|| format!("--endpoint {endpoint:?}: expected HOST:PORT"))?;
    let cred_host = endpoints["credentials"]
        .as_str()
        .and_then(|u| u.strip_prefix("https://"))
        .map(|hp| hp.rsplit_once(':').map_or(hp, |(h, _)| h).to_string())
        .unwrap_or_else(|| host.clone());
    let region = admin_region(&a.root).unwrap_or_else(|| "us-east-1".into());

    let registry = super::open_registry(&a.root, a.database.as_deref(), &region, false)?;
    let ca = FleetCa::open_or_create(&ca_dir).context("opening the fleet CA")?;

    registry
        .create_thing(WHO, &a.thing, None, Default::default())
        .with_context(|| format!("creating thing {:?}", a.thing))?;
    for g in &a.groups {
        match registry.create_thing_group(WHO, g, None, None, Default::default()) {
            Ok(_) | Err(RegistryError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("creating thing group {g:?}")),
        }
        registry
            .add_thing_to_group(WHO, g, &a.thing)
            .with_context(|| format!("adding {:?} to thing group {g:?}", a.thing))?;
    }
    let keys = ca
        .create_keys_and_certificate()
        .context("issuing the device certificate")?;
    let cert = registry.insert_certificate(
        WHO,
        "CreateKeysAndCertificate",
        &NewCertificate {
            id: keys.certificate.id.clone(),
            pem: keys.certificate.pem.clone(),
            status: CertificateStatus::Active,
            ca_id: keys.certificate.ca_id.clone(),
            not_before: keys.certificate.not_before,
            not_after: keys.certificate.not_after,
        },
    )?;
    let policy = format!("{}-device-policy", a.thing);
    match registry.create_policy(WHO, &policy, &device_policy().to_string()) {
        // Enrolled before: the policy is the operator's to keep (they may have changed it).
        Ok(_) | Err(RegistryError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e).with_context(|| format!("creating policy {policy:?}")),
    }
    registry
        .attach_policy(WHO, &policy, &cert.arn)
        .with_context(|| format!("attaching policy {policy:?}"))?;
    let role_policy = match &a.role_alias {
        Some(alias) => Some(attach_role_alias_policy(
            &registry, &a.thing, alias, &cert.arn,
        )?),
        None => None,
    };
    registry
        .attach_thing_principal(WHO, &a.thing, &cert.arn, false)
        .context("attaching the certificate to the thing")?;

    create_private_dir(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = std::path::absolute(&a.out)?;
    let cert_path = out.join("device.pem.crt");
    let key_path = out.join("private.pem.key");
    let ca_path = out.join("AmazonRootCA1.pem");
    std::fs::write(&cert_path, &cert.pem)
        .with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, keys.private_key_pem.as_bytes())?;
    std::fs::write(&ca_path, ca.ca_pem())
        .with_context(|| format!("writing {}", ca_path.display()))?;
    let config = core_config(
        &a.thing, &cert_path, &key_path, &ca_path, &host, port, &cred_host, &region,
    );
    let mut config = with_data_plane(config, &endpoints);
    let nucleus = &mut config["services"]["aws.greengrass.Nucleus"]["configuration"];
    if let Some(cred_port) = endpoints["credentials"]
        .as_str()
        .and_then(|u| u.rsplit_once(':'))
        .and_then(|(_, p)| p.trim_end_matches('/').parse::<u16>().ok())
        .filter(|p| *p != 443)
    {
        // The token exchange reaches the fleet's credentials provider off port 443.
        nucleus["iotCredEndpoint"] = serde_json::json!(format!("{cred_host}:{cred_port}"));
    }
    if let Some(alias) = &a.role_alias {
        nucleus["iotRoleAlias"] = serde_json::json!(alias);
    }
    let config_path = out.join("config.yaml");
    std::fs::write(&config_path, serde_yaml_ng::to_string(&config)?)
        .with_context(|| format!("writing {}", config_path.display()))?;
    println!(
        "{}",
        serde_json::json!({
            "thingName": a.thing,
            "certificateId": cert.id,
            "certificateArn": cert.arn,
            "policyName": policy,
            "roleAliasPolicyName": role_policy,
            "config": config_path,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Creates (if absent) and attaches `<thing>-role-alias-policy`, allowing
/// `iot:AssumeRoleWithCertificate` on `alias`; warns when the alias does not exist yet.
fn attach_role_alias_policy(
    registry: &lichen_fleet_registry::Registry,
    thing: &str,
    alias: &str,
    cert_arn: &str,
) -> anyhow::Result<String> {
    if alias.is_empty() || alias.len() > 128 || alias.contains(['/', ' ']) {
        bail!(
            "--role-alias {alias:?}: expected a role alias name (1-128 characters, no '/' or spaces)"
        );
    }
    match registry.describe_role_alias(alias) {
        Ok(_) => {}
        Err(RegistryError::NotFound { .. }) => eprintln!(
            "warning: role alias {alias:?} does not exist yet: create it (aws iot create-role-alias) and give its role a policy (lichen fleet role put) before the core asks for credentials"
        ),
        Err(e) => return Err(e).with_context(|| format!("reading role alias {alias:?}")),
    }
    let name = format!("{thing}-role-alias-policy");
    let doc = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": "iot:AssumeRoleWithCertificate",
            "Resource": registry.arn(&format!("rolealias/{alias}")),
        }],
    });
    match registry.create_policy(WHO, &name, &doc.to_string()) {
        Ok(_) => {}
        Err(RegistryError::AlreadyExists { .. }) => {
            // Enrolled again with another alias: the policy follows the alias given now.
            registry
                .create_policy_version(WHO, &name, &doc.to_string(), true)
                .with_context(|| format!("updating policy {name:?}"))?;
        }
        Err(e) => return Err(e).with_context(|| format!("creating policy {name:?}")),
    }
    registry
        .attach_policy(WHO, &name, cert_arn)
        .with_context(|| format!("attaching policy {name:?}"))?;
    Ok(name)
}

/// The Greengrass nucleus keys the core's cloud link reads (`system.*`, and the Nucleus's
/// `iotDataEndpoint`, `mqtt.port`, `iotCredEndpoint`, `awsRegion`).
#[allow(clippy::too_many_arguments)]
fn core_config(
    thing: &str,
    cert: &Path,
    key: &Path,
    ca: &Path,
    host: &str,
    port: u16,
    cred_host: &str,
    region: &str,
) -> serde_json::Value {
    serde_json::json!({
        "system": {
            "certificateFilePath": cert,
            "privateKeyPath": key,
            "rootCaPath": ca,
            "thingName": thing,
        },
        "services": {
            "aws.greengrass.Nucleus": {
                "configuration": {
                    "awsRegion": region,
                    "iotDataEndpoint": host,
                    "iotCredEndpoint": cred_host,
                    "mqtt": { "port": port },
                }
            }
        }
    })
}

/// Adds `greengrassDataPlaneEndpoint` / `greengrassDataPlanePort` from endpoints.json's
/// `dataPlane` (`https://host:port`), where the core resolves and downloads components.
fn with_data_plane(
    mut config: serde_json::Value,
    endpoints: &serde_json::Value,
) -> serde_json::Value {
    let Some((host, port)) = endpoints["dataPlane"]
        .as_str()
        .and_then(|u| u.strip_prefix("https://"))
        .and_then(|hp| hp.rsplit_once(':'))
        .and_then(|(h, p)| {
            Some((
                h.trim_matches(['[', ']']).to_string(),
                p.parse::<u16>().ok()?,
            ))
        })
    else {
        return config;
    };
    let nucleus = &mut config["services"]["aws.greengrass.Nucleus"]["configuration"];
    nucleus["greengrassDataPlaneEndpoint"] = serde_json::json!(host);
    nucleus["greengrassDataPlanePort"] = serde_json::json!(port);
    config
}

/// The region in `<root>/admin/config` (what `lichen fleet serve --region` wrote).
fn admin_region(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("admin").join("config")).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == "region")
        .map(|(_, v)| v.trim().to_string())
}
