//! The OPC UA source's configuration, in the shape of SiteWise Edge's OPC UA collector
//! (`iotsitewise:opcuacollector:2` sources), plus a few Lichen fields (marked below).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::OpcUaError;
use super::filter::PathPattern;

/// One OPC UA source.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpcUaSourceConfig {
    /// Unique, friendly name of the source (logs and errors name it).
    pub name: String,
    pub endpoint: OpcUaEndpoint,
    /// Prepended to every node's browse path to make its property alias.
    #[serde(default)]
    pub measurement_data_stream_prefix: String,
    /// Per-node collection settings; a node takes the first group whose filters match it.
    #[serde(default)]
    pub property_groups: Vec<PropertyGroup>,
    /// Lichen: reconnect backoff after the server is lost or refuses us.
    #[serde(default)]
    pub reconnect: ReconnectSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpcUaEndpoint {
    /// `opc.tcp://host:port/path`.
    pub endpoint_uri: String,
    #[serde(default)]
    pub security_policy: SecurityPolicyName,
    #[serde(default)]
    pub message_security_mode: MessageSecurityModeName,
    #[serde(default)]
    pub identity_provider: IdentityProvider,
    /// How the server's certificate is trusted; required unless the policy is `NONE`.
    #[serde(default)]
    pub certificate_trust: Option<CertificateTrust>,
    /// Lichen: our own application instance certificate. Without it one is generated on
    /// first use under the source's PKI directory and reused afterwards.
    #[serde(default)]
    pub client_certificate: Option<ClientCertificate>,
    /// Which nodes to collect; none means every variable under the Objects folder.
    #[serde(default)]
    pub node_filter_rules: Vec<NodeFilterRule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SecurityPolicyName {
    #[default]
    #[serde(rename = "NONE", alias = "None")]
    None,
    #[serde(rename = "BASIC256_SHA256", alias = "Basic256Sha256")]
    Basic256Sha256,
    #[serde(rename = "AES128_SHA256_RSAOAEP", alias = "Aes128Sha256RsaOaep")]
    Aes128Sha256RsaOaep,
    #[serde(rename = "AES256_SHA256_RSAPSS", alias = "Aes256Sha256RsaPss")]
    Aes256Sha256RsaPss,
}

impl SecurityPolicyName {
    /// The policy URI the endpoint advertises.
    pub fn uri(self) -> &'static str {
        match self {
            Self::None => "http://opcfoundation.org/UA/SecurityPolicy#None",
            Self::Basic256Sha256 => "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
            Self::Aes128Sha256RsaOaep => {
                "http://opcfoundation.org/UA/SecurityPolicy#Aes128_Sha256_RsaOaep"
            }
            Self::Aes256Sha256RsaPss => {
                "http://opcfoundation.org/UA/SecurityPolicy#Aes256_Sha256_RsaPss"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum MessageSecurityModeName {
    #[default]
    #[serde(rename = "NONE", alias = "None")]
    None,
    #[serde(rename = "SIGN", alias = "Sign")]
    Sign,
    #[serde(rename = "SIGN_AND_ENCRYPT", alias = "SignAndEncrypt")]
    SignAndEncrypt,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type")]
pub enum IdentityProvider {
    #[default]
    Anonymous,
    /// SiteWise names a secret (`usernameSecretArn`); the collector resolves it into
    /// `username`/`password` before starting the source, or they are given directly.
    #[serde(rename_all = "camelCase")]
    Username {
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        username_secret_arn: Option<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum CertificateTrust {
    /// Any server certificate is accepted (and stored as trusted on first sight).
    TrustAny,
    /// Exactly this certificate (PEM in `certificateBody`, or Lichen: a PEM/DER file).
    #[serde(rename_all = "camelCase")]
    X509 {
        #[serde(default)]
        certificate_body: Option<String>,
        #[serde(default)]
        certificate_path: Option<PathBuf>,
        /// Accepted for SiteWise compatibility; issuers are not needed when the server's own
        /// certificate is pinned.
        #[serde(default)]
        certificate_chain: Option<String>,
    },
    /// Lichen: every certificate (PEM or DER) in this directory, read at each connection.
    #[serde(rename_all = "camelCase")]
    TrustDir { path: PathBuf },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificate {
    pub certificate_path: PathBuf,
    pub private_key_path: PathBuf,
    /// Must equal the URI in the certificate's subjectAltName.
    pub application_uri: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFilterRule {
    #[serde(default)]
    pub action: FilterAction,
    pub definition: NodeFilterDefinition,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FilterAction {
    #[default]
    Include,
    /// Lichen: drop matching nodes even when an INCLUDE rule takes them.
    Exclude,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum NodeFilterDefinition {
    /// A browse path from the Objects folder, `/`-separated browse names; `*` inside a
    /// segment matches any characters of one level, a `**` segment any number of levels.
    #[serde(rename_all = "camelCase")]
    OpcUaRootPath { root_path: String },
}

impl NodeFilterDefinition {
    pub fn root_path(&self) -> &str {
        match self {
            Self::OpcUaRootPath { root_path } => root_path,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyGroup {
    pub name: String,
    #[serde(default)]
    pub node_filter_rule_definitions: Vec<NodeFilterDefinition>,
    #[serde(default)]
    pub deadband: Option<Deadband>,
    #[serde(default)]
    pub scan_mode: ScanMode,
    #[serde(default)]
    pub data_quality: DataQuality,
    #[serde(default)]
    pub subscription: SubscriptionSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DeadbandType {
    Absolute,
    Percent,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deadband {
    #[serde(rename = "type")]
    pub kind: DeadbandType,
    pub value: f64,
    /// The engineering-unit range a PERCENT deadband is a share of.
    #[serde(default)]
    pub egu_min: Option<f64>,
    #[serde(default)]
    pub egu_max: Option<f64>,
    /// A value inside the deadband is still reported once this long has passed.
    #[serde(default)]
    pub timeout_milliseconds: Option<u64>,
}

impl Deadband {
    /// The absolute change a value must exceed to be reported.
    pub fn threshold(&self) -> f64 {
        match self.kind {
            DeadbandType::Absolute => self.value,
            DeadbandType::Percent => {
                let span = self.egu_max.unwrap_or(0.0) - self.egu_min.unwrap_or(0.0);
                self.value / 100.0 * span.abs()
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ScanModeType {
    /// Subscription: the server reports changes, sampled every `rate` ms.
    Exception,
    /// We read the nodes every `rate` ms.
    Poll,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanMode {
    #[serde(rename = "type")]
    pub kind: ScanModeType,
    /// Milliseconds: sampling interval (EXCEPTION) or polling period (POLL).
    #[serde(default = "default_rate")]
    pub rate: u64,
}

fn default_rate() -> u64 {
    1000
}

impl Default for ScanMode {
    fn default() -> Self {
        Self {
            kind: ScanModeType::Exception,
            rate: default_rate(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataQuality {
    #[serde(default = "yes")]
    pub allow_good_quality: bool,
    #[serde(default = "yes")]
    pub allow_bad_quality: bool,
    #[serde(default = "yes")]
    pub allow_uncertain_quality: bool,
}

fn yes() -> bool {
    true
}

impl Default for DataQuality {
    fn default() -> Self {
        Self {
            allow_good_quality: true,
            allow_bad_quality: true,
            allow_uncertain_quality: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DataChangeTrigger {
    Status,
    #[default]
    StatusValue,
    StatusValueTimestamp,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSettings {
    #[serde(default)]
    pub data_change_trigger: DataChangeTrigger,
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    #[serde(default = "default_rate")]
    pub publishing_interval_milliseconds: u64,
}

fn default_queue_size() -> u32 {
    1
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        Self {
            data_change_trigger: DataChangeTrigger::default(),
            queue_size: default_queue_size(),
            publishing_interval_milliseconds: default_rate(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconnectSettings {
    #[serde(default = "default_reconnect_initial")]
    pub initial_milliseconds: u64,
    #[serde(default = "default_reconnect_max")]
    pub max_milliseconds: u64,
}

fn default_reconnect_initial() -> u64 {
    1000
}
fn default_reconnect_max() -> u64 {
    30_000
}

impl Default for ReconnectSettings {
    fn default() -> Self {
        Self {
            initial_milliseconds: default_reconnect_initial(),
            max_milliseconds: default_reconnect_max(),
        }
    }
}

impl ReconnectSettings {
    pub fn initial(&self) -> Duration {
        Duration::from_millis(self.initial_milliseconds)
    }
    pub fn max(&self) -> Duration {
        Duration::from_millis(self.max_milliseconds.max(self.initial_milliseconds))
    }
}

impl OpcUaSourceConfig {
    /// Parses one source from its JSON configuration; errors name the field at fault.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, OpcUaError> {
        let name = value
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        let config: Self =
            serde_json::from_value(value.clone()).map_err(|e| OpcUaError::Config {
                source_name: name,
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: field combinations and values.
    pub fn validate(&self) -> Result<(), OpcUaError> {
        let err = |message: String| OpcUaError::Config {
            source_name: self.name.clone(),
            message,
        };
        if self.name.trim().is_empty() {
            return Err(err("name: must not be empty".into()));
        }
        let ep = &self.endpoint;
        if !ep.endpoint_uri.starts_with("opc.tcp://") || ep.endpoint_uri.len() <= "opc.tcp://".len()
        {
            return Err(err(format!(
                "endpoint.endpointUri: {:?} is not an opc.tcp://host:port URL",
                ep.endpoint_uri
            )));
        }
        let secure = ep.security_policy != SecurityPolicyName::None;
        let signs = ep.message_security_mode != MessageSecurityModeName::None;
        if secure != signs {
            return Err(err(format!(
                "endpoint.messageSecurityMode: {:?} does not go with securityPolicy {:?} \
                 (NONE goes only with NONE)",
                ep.message_security_mode, ep.security_policy
            )));
        }
        if secure && ep.certificate_trust.is_none() {
            return Err(err(
                "endpoint.certificateTrust: required when securityPolicy is not NONE \
                 (TrustAny, X509 with certificateBody or certificatePath, or TrustDir)"
                    .into(),
            ));
        }
        if let Some(CertificateTrust::X509 {
            certificate_body,
            certificate_path,
            ..
        }) = &ep.certificate_trust
            && certificate_body.is_none() == certificate_path.is_none()
        {
            return Err(err(
                "endpoint.certificateTrust: X509 needs exactly one of certificateBody (PEM) or certificatePath"
                    .into(),
            ));
        }
        if let IdentityProvider::Username {
            username,
            password,
            username_secret_arn,
        } = &ep.identity_provider
            && (username.is_none() || password.is_none())
        {
            let why = if username_secret_arn.is_some() {
                "the secret named by usernameSecretArn was not resolved into username and password"
            } else {
                "Username needs username and password"
            };
            return Err(err(format!("endpoint.identityProvider: {why}")));
        }
        for (i, rule) in ep.node_filter_rules.iter().enumerate() {
            PathPattern::parse(rule.definition.root_path()).map_err(|e| {
                err(format!(
                    "endpoint.nodeFilterRules[{i}].definition.rootPath: {e}"
                ))
            })?;
        }
        for (g, group) in self.property_groups.iter().enumerate() {
            let at = |field: &str| format!("propertyGroups[{g}] ({}).{field}", group.name);
            for (i, def) in group.node_filter_rule_definitions.iter().enumerate() {
                PathPattern::parse(def.root_path()).map_err(|e| {
                    err(format!(
                        "{}: {e}",
                        at(&format!("nodeFilterRuleDefinitions[{i}].rootPath"))
                    ))
                })?;
            }
            if group.scan_mode.rate == 0 {
                return Err(err(format!(
                    "{}: must be at least 1 (milliseconds)",
                    at("scanMode.rate")
                )));
            }
            if group.subscription.publishing_interval_milliseconds == 0 {
                return Err(err(format!(
                    "{}: must be at least 1 (milliseconds)",
                    at("subscription.publishingIntervalMilliseconds")
                )));
            }
            if let Some(d) = &group.deadband {
                if !(d.value.is_finite() && d.value >= 0.0) {
                    return Err(err(format!(
                        "{}: must be a number >= 0",
                        at("deadband.value")
                    )));
                }
                if d.kind == DeadbandType::Percent {
                    match (d.egu_min, d.egu_max) {
                        (Some(lo), Some(hi)) if lo < hi => {}
                        _ => {
                            return Err(err(format!(
                                "{}: a PERCENT deadband needs eguMin < eguMax",
                                at("deadband")
                            )));
                        }
                    }
                    if d.value > 100.0 {
                        return Err(err(format!(
                            "{}: a percentage is at most 100",
                            at("deadband.value")
                        )));
                    }
                }
            }
        }
        if self.reconnect.initial_milliseconds == 0 {
            return Err(err(
                "reconnect.initialMilliseconds: must be at least 1".into()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "name": "plant",
            "endpoint": {
                "endpointUri": "opc.tcp://127.0.0.1:4840/",
                "securityPolicy": "BASIC256_SHA256",
                "messageSecurityMode": "SIGN_AND_ENCRYPT",
                "certificateTrust": {"type": "X509", "certificatePath": "/etc/server.der"},
                "identityProvider": {"type": "Anonymous"},
                "nodeFilterRules": [
                    {"action": "INCLUDE", "definition": {"type": "OpcUaRootPath", "rootPath": "/Plant/**"}}
                ]
            },
            "measurementDataStreamPrefix": "/site",
            "propertyGroups": [{
                "name": "fast",
                "nodeFilterRuleDefinitions": [{"type": "OpcUaRootPath", "rootPath": "/Plant/Line1/*"}],
                "deadband": {"type": "PERCENT", "value": 2.5, "eguMin": 0, "eguMax": 100, "timeoutMilliseconds": 60000},
                "scanMode": {"type": "POLL", "rate": 250},
                "dataQuality": {"allowGoodQuality": true, "allowBadQuality": false, "allowUncertainQuality": true},
                "subscription": {"dataChangeTrigger": "STATUS_VALUE_TIMESTAMP", "queueSize": 5, "publishingIntervalMilliseconds": 500}
            }]
        })
    }

    fn error_of(v: serde_json::Value) -> String {
        OpcUaSourceConfig::from_json(&v).unwrap_err().to_string()
    }

    #[test]
    fn sitewise_shape_parses() {
        let c = OpcUaSourceConfig::from_json(&base()).unwrap();
        assert_eq!(
            c.endpoint.security_policy,
            SecurityPolicyName::Basic256Sha256
        );
        assert_eq!(
            c.endpoint.message_security_mode,
            MessageSecurityModeName::SignAndEncrypt
        );
        assert_eq!(
            c.endpoint.node_filter_rules[0].definition.root_path(),
            "/Plant/**"
        );
        let g = &c.property_groups[0];
        assert_eq!(g.scan_mode.kind, ScanModeType::Poll);
        assert_eq!(g.scan_mode.rate, 250);
        assert!(!g.data_quality.allow_bad_quality);
        assert_eq!(
            g.subscription.data_change_trigger,
            DataChangeTrigger::StatusValueTimestamp
        );
        assert_eq!(g.deadband.as_ref().unwrap().threshold(), 2.5);
        assert_eq!(c.reconnect.initial(), Duration::from_secs(1));
    }

    #[test]
    fn minimal_config_takes_defaults_and_lichen_spellings() {
        let c = OpcUaSourceConfig::from_json(&json!({
            "name": "m",
            "endpoint": {"endpointUri": "opc.tcp://h:4840", "securityPolicy": "Aes256Sha256RsaPss",
                         "messageSecurityMode": "Sign", "certificateTrust": {"type": "TrustAny"}}
        }))
        .unwrap();
        assert_eq!(
            c.endpoint.security_policy,
            SecurityPolicyName::Aes256Sha256RsaPss
        );
        assert!(c.endpoint.node_filter_rules.is_empty());
        assert!(c.measurement_data_stream_prefix.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = base();
        v["endpoint"]["endpointUri"] = json!("http://h/");
        assert!(error_of(v).contains("endpoint.endpointUri"));

        let mut v = base();
        v["endpoint"]["securityPolicy"] = json!("BASIC999");
        let e = error_of(v);
        assert!(
            e.contains("BASIC999") && e.contains("BASIC256_SHA256"),
            "{e}"
        );

        let mut v = base();
        v["endpoint"]["messageSecurityMode"] = json!("NONE");
        assert!(error_of(v).contains("endpoint.messageSecurityMode"));

        let mut v = base();
        v["endpoint"]
            .as_object_mut()
            .unwrap()
            .remove("certificateTrust");
        assert!(error_of(v).contains("endpoint.certificateTrust: required"));

        let mut v = base();
        v["endpoint"]["nodeFilterRules"][0]["definition"]["rootPath"] = json!("Plant");
        assert!(error_of(v).contains("endpoint.nodeFilterRules[0].definition.rootPath"));

        let mut v = base();
        v["propertyGroups"][0]["deadband"]["eguMax"] = json!(-1);
        assert!(error_of(v).contains("propertyGroups[0] (fast).deadband"));

        let mut v = base();
        v["propertyGroups"][0]["scanMode"]["rate"] = json!(0);
        assert!(error_of(v).contains("propertyGroups[0] (fast).scanMode.rate"));

        let mut v = base();
        v["endpoint"]["identityProvider"] =
            json!({"type": "Username", "usernameSecretArn": "arn:x"});
        assert!(error_of(v).contains("endpoint.identityProvider"));

        let mut v = base();
        v["endpoint"]["certificateTrust"] = json!({"type": "X509"});
        assert!(error_of(v).contains("certificateBody"));

        let e = error_of(json!({"name": "n"}));
        assert!(e.contains("\"n\"") && e.contains("endpoint"), "{e}");
    }
}
