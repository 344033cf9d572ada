//! Cloud deployment documents ("fleet configuration", schema `2021-05-17`): parsing into a
//! deployment request, and what the engine needs from the cloud to resolve components.
//!
//! Keys are matched case-insensitively, as the classic nucleus reads them. Every listed
//! component is a root component of the document's group (the resource part of
//! `configurationArn`: `thinggroup/<G>` or `thing/<T>`); the document replaces that group's
//! whole root set.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DeployError;
use crate::{
    ComponentUpdatePolicy, ConfigurationUpdate, FailureHandlingPolicy, LocalDeploymentRequest,
    RunWithInfo,
};

/// Capabilities this core implements (`requiredCapabilities` naming anything else fails).
pub const SUPPORTED_CAPABILITIES: [&str; 3] = [
    "LARGE_CONFIGURATION",
    "LINUX_RESOURCE_LIMITS",
    "SUB_DEPLOYMENTS",
];

/// How a cloud deployment reached the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloudSource {
    /// AWS IoT Jobs, namespace `aws-gg-deployment` (thing groups); the id is the job id.
    Job,
    /// The named shadow `AWSManagedGreengrassV2Deployment` (single thing).
    Shadow,
}

/// What the engine keeps of a cloud document besides the request itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudInfo {
    pub source: CloudSource,
    /// `thinggroup/<G>` or `thing/<T>`.
    pub group: String,
    pub deployment_id: String,
    pub deployment_name: Option<String>,
    pub configuration_arn: String,
    /// Milliseconds since the epoch; orders deployments of one group (stale ones are skipped).
    pub creation_timestamp: i64,
    /// Thing groups the device belongs to now (ListThingGroupsForCoreDevice), as
    /// `thinggroup/<name>`; `None` when unknown (no group is then removed).
    #[serde(default)]
    pub member_groups: Option<BTreeSet<String>>,
    /// The document asks for a `configurationValidationPolicy.timeout`.
    #[serde(default)]
    pub validation_timeout_s: Option<u64>,
    /// LARGE_CONFIGURATION: the components section is fetched with GetDeploymentConfiguration.
    #[serde(default)]
    pub large_configuration: bool,
}

/// A parsed cloud deployment document.
#[derive(Debug, Clone)]
pub struct CloudDocument {
    /// The request, with `cloud` set.
    pub request: LocalDeploymentRequest,
    pub required_capabilities: Vec<String>,
}

/// Case-insensitive key lookup in a JSON object.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match field(obj, key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(obj: &Map<String, Value>, key: &str) -> Option<f64> {
    match field(obj, key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn bad(field_path: &str, message: &str) -> DeployError {
    DeployError::BadRequest(format!(
        "deployment document field {field_path}: {message}; fix the deployment and create it again"
    ))
}

/// The group of a `configurationArn` (`arn:aws:greengrass:r:a:configuration:thinggroup/G:3`
/// ⇒ `thinggroup/G`). A thing-group ARN (`…:thinggroup/G`) gives the same.
pub fn group_of_arn(arn: &str) -> Option<String> {
    for kind in ["thinggroup/", "thing/"] {
        if let Some(pos) = arn.find(kind) {
            let rest = &arn[pos + kind.len()..];
            let name = rest.split(':').next().unwrap_or_default();
            if !name.is_empty() {
                return Some(format!("{kind}{name}"));
            }
        }
    }
    None
}

/// Parses a deployment document. The deployment id is the job id (`fallback_id`) for jobs, and
/// the document's own `deploymentId` (else `fallback_id`) for the shadow.
pub fn parse_document(
    document: &Value,
    source: CloudSource,
    fallback_id: &str,
) -> Result<CloudDocument, DeployError> {
    let Value::Object(doc) = document else {
        return Err(bad("(document)", "must be a JSON object"));
    };
    // Job status goes to `…/jobs/<jobId>/…`, so a job's deployment is known by its job id.
    let deployment_id = match text(doc, "deploymentId").filter(|s| !s.is_empty()) {
        Some(id) if source == CloudSource::Shadow || fallback_id.is_empty() => id,
        _ => fallback_id.to_string(),
    };
    if deployment_id.is_empty() {
        return Err(bad("deploymentId", "missing"));
    }
    let configuration_arn = text(doc, "configurationArn")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("configurationArn", "missing"))?;
    // Sub-deployments name the group they act for.
    let group = field(doc, "onBehalfOf")
        .or_else(|| field(doc, "parentTargetArn"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .and_then(group_of_arn)
        .or_else(|| group_of_arn(&configuration_arn))
        .ok_or_else(|| {
            bad(
                "configurationArn",
                &format!("{configuration_arn:?} names neither thinggroup/<name> nor thing/<name>"),
            )
        })?;
    let creation_timestamp = number(doc, "creationTimestamp")
        .map(|n| n as i64)
        .unwrap_or(0);
    let required_capabilities: Vec<String> = match field(doc, "requiredCapabilities") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("requiredCapabilities", "must be a list of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("requiredCapabilities", "must be a list")),
    };
    let failure_handling_policy = match text(doc, "failureHandlingPolicy").as_deref() {
        None => FailureHandlingPolicy::Rollback,
        Some(s) if s.eq_ignore_ascii_case("ROLLBACK") => FailureHandlingPolicy::Rollback,
        Some(s) if s.eq_ignore_ascii_case("DO_NOTHING") => FailureHandlingPolicy::DoNothing,
        Some(other) => {
            return Err(bad(
                "failureHandlingPolicy",
                &format!("{other:?} is not ROLLBACK or DO_NOTHING"),
            ));
        }
    };
    // Cloud default: NOTIFY_COMPONENTS with a 60 s timeout.
    let component_update_policy = match field(doc, "componentUpdatePolicy") {
        Some(Value::Object(p)) => {
            let notify = match text(p, "action").as_deref() {
                None => true,
                Some(a) if a.eq_ignore_ascii_case("NOTIFY_COMPONENTS") => true,
                Some(a) if a.eq_ignore_ascii_case("SKIP_NOTIFY_COMPONENTS") => false,
                Some(other) => {
                    return Err(bad(
                        "componentUpdatePolicy.action",
                        &format!("{other:?} is not NOTIFY_COMPONENTS or SKIP_NOTIFY_COMPONENTS"),
                    ));
                }
            };
            let timeout = number(p, "timeout").unwrap_or(60.0).max(0.0) as u64;
            ComponentUpdatePolicy {
                notify_components: notify,
                timeout: Duration::from_secs(timeout),
            }
        }
        _ => ComponentUpdatePolicy {
            notify_components: true,
            timeout: Duration::from_secs(60),
        },
    };
    let validation_timeout_s = match field(doc, "configurationValidationPolicy") {
        Some(Value::Object(p)) => number(p, "timeout").map(|t| t.max(0.0) as u64),
        _ => None,
    };
    let mut request = LocalDeploymentRequest {
        failure_handling_policy,
        component_update_policy: Some(component_update_policy),
        ..Default::default()
    };
    let large_configuration = required_capabilities
        .iter()
        .any(|c| c.eq_ignore_ascii_case("LARGE_CONFIGURATION"));
    match field(doc, "components") {
        None | Some(Value::Null) => {}
        Some(Value::Object(components)) => {
            for (name, spec) in components {
                parse_component(name, spec, &mut request)?;
            }
        }
        Some(_) => {
            return Err(bad(
                "components",
                "must be an object keyed by component name",
            ));
        }
    }
    request.cloud = Some(CloudInfo {
        source,
        group,
        deployment_id,
        deployment_name: text(doc, "deploymentName"),
        configuration_arn,
        creation_timestamp,
        member_groups: None,
        validation_timeout_s,
        large_configuration,
    });
    Ok(CloudDocument {
        request,
        required_capabilities,
    })
}

impl CloudDocument {
    pub fn info(&self) -> &CloudInfo {
        self.request
            .cloud
            .as_ref()
            .expect("a parsed document carries its cloud info")
    }

    pub fn info_mut(&mut self) -> &mut CloudInfo {
        self.request
            .cloud
            .as_mut()
            .expect("a parsed document carries its cloud info")
    }

    /// The deployment group (`thinggroup/<G>` or `thing/<T>`).
    pub fn group(&self) -> String {
        self.request.group()
    }

    /// Capabilities the document requires that this core lacks.
    pub fn unsupported_capabilities(&self) -> Vec<String> {
        self.required_capabilities
            .iter()
            .filter(|c| {
                !SUPPORTED_CAPABILITIES
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(c))
            })
            .cloned()
            .collect()
    }

    /// Replaces the components section (LARGE_CONFIGURATION: the document fetched with
    /// GetDeploymentConfiguration carries it).
    pub fn set_components(&mut self, full_document: &Value) -> Result<(), DeployError> {
        let Value::Object(doc) = full_document else {
            return Err(bad("(configuration)", "must be a JSON object"));
        };
        self.request.root_components_to_add.clear();
        self.request.configuration_updates.clear();
        self.request.run_with.clear();
        if let Some(Value::Object(components)) = field(doc, "components") {
            for (name, spec) in components {
                parse_component(name, spec, &mut self.request)?;
            }
        }
        Ok(())
    }
}

fn parse_component(
    name: &str,
    spec: &Value,
    request: &mut LocalDeploymentRequest,
) -> Result<(), DeployError> {
    let at = |f: &str| format!("components.{name}.{f}");
    lichen_recipe::validate_component_name(name).map_err(|e| bad(&at("(name)"), &e))?;
    let Value::Object(spec) = spec else {
        return Err(bad(&format!("components.{name}"), "must be an object"));
    };
    let version = text(spec, "version")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad(&at("version"), "missing"))?;
    lichen_recipe::VersionRequirement::parse(&version)
        .map_err(|e| bad(&at("version"), &format!("{version:?}: {e}")))?;
    request
        .root_components_to_add
        .insert(name.to_string(), version);
    if let Some(Value::Object(update)) = field(spec, "configurationUpdate") {
        let merge = match field(update, "merge") {
            None | Some(Value::Null) => None,
            // The API carries MERGE as a JSON string; older documents as an object.
            Some(Value::String(s)) => Some(
                serde_json::from_str(s)
                    .map_err(|e| bad(&at("configurationUpdate.merge"), &e.to_string()))?,
            ),
            Some(v) => Some(v.clone()),
        };
        let reset = match field(update, "reset") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| {
                    p.as_str().map(str::to_string).ok_or_else(|| {
                        bad(
                            &at("configurationUpdate.reset"),
                            "must be a list of JSON pointers",
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad(&at("configurationUpdate.reset"), "must be a list")),
        };
        request
            .configuration_updates
            .insert(name.to_string(), ConfigurationUpdate { merge, reset });
    }
    // Every root gets a RunWith built from the document: an omitted field removes the
    // component-level override (spec §6.3).
    let mut run_with = RunWithInfo::default();
    if let Some(Value::Object(rw)) = field(spec, "runWith") {
        run_with.posix_user = text(rw, "posixUser").filter(|s| !s.is_empty());
        run_with.system_resource_limits = match field(rw, "systemResourceLimits") {
            Some(Value::Object(limits)) if !limits.is_empty() => {
                Some(Value::Object(limits.clone()))
            }
            _ => None,
        };
    }
    request.run_with.insert(name.to_string(), run_with);
    Ok(())
}

/// One component version the cloud resolved (resolveComponentCandidates).
#[derive(Debug, Clone)]
pub struct ResolvedComponent {
    pub version: semver::Version,
    /// The exact recipe bytes (the base64-decoded `recipe` field).
    pub recipe: Vec<u8>,
    pub arn: String,
    pub vendor_guidance: Option<String>,
    /// `lichenSignature` (keyId, base64 signature), when the fleet signed the version.
    pub signature: Option<(String, String)>,
}

/// What the engine asks the cloud while it plans a cloud deployment. Called from a blocking
/// thread; implementations may block on network I/O.
pub trait CloudResolver: Send + Sync + 'static {
    /// resolveComponentCandidates for one component: `local` is the best stored version
    /// satisfying every requirement; `requirements` maps each requiring group or dependent to
    /// its npm range.
    fn resolve(
        &self,
        component: &str,
        local: Option<&semver::Version>,
        requirements: &BTreeMap<String, String>,
    ) -> Result<ResolvedComponent, DeployError>;
}

/// `lichen.requireSignedComponents` / `lichen.componentSigningKeys`: Ed25519 keys whose
/// signature over a cloud-resolved recipe is trusted.
#[derive(Debug, Clone, Default)]
pub struct SigningPolicy {
    pub required: bool,
    /// (key id = hex SHA-256 of the raw key, raw 32-byte key).
    keys: Vec<(String, Vec<u8>)>,
}

impl SigningPolicy {
    /// From base64 raw Ed25519 public keys; names the bad entry.
    pub fn new(required: bool, keys_base64: &[String]) -> Result<Self, String> {
        use base64::Engine as _;
        let mut keys = Vec::new();
        for (i, text) in keys_base64.iter().enumerate() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| format!("lichen.componentSigningKeys[{i}]: not base64: {e}"))?;
            if raw.len() != 32 {
                return Err(format!(
                    "lichen.componentSigningKeys[{i}]: an Ed25519 public key is 32 bytes, this one is {}",
                    raw.len()
                ));
            }
            keys.push((key_id(&raw), raw));
        }
        Ok(SigningPolicy { required, keys })
    }

    /// Accepts or refuses the recipe bytes of `component` (`name@version`).
    pub fn check(
        &self,
        component: &str,
        recipe: &[u8],
        signature: Option<&(String, String)>,
    ) -> Result<(), DeployError> {
        use base64::Engine as _;
        let refuse = |message: String| DeployError::Signature {
            component: component.to_string(),
            message,
        };
        let Some((key_id, signature)) = signature else {
            if self.required {
                return Err(refuse(
                    "the cloud sent no signature and lichen.requireSignedComponents is true".into(),
                ));
            }
            return Ok(());
        };
        let Some((_, key)) = self
            .keys
            .iter()
            .find(|(id, _)| id.eq_ignore_ascii_case(key_id))
        else {
            if self.required {
                return Err(refuse(format!(
                    "signed with key {key_id}, which is not in lichen.componentSigningKeys"
                )));
            }
            return Ok(());
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|e| refuse(format!("signature by key {key_id} is not base64: {e}")))?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
            .verify(recipe, &raw)
            .map_err(|_| {
                refuse(format!(
                    "the signature by key {key_id} does not match the recipe"
                ))
            })
    }
}

/// Hex SHA-256 of a raw public key: the `keyId` of `lichenSignature`.
pub fn key_id(raw_key: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(raw_key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
