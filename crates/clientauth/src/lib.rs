//! Client device auth (`aws.greengrass.clientdevices.Auth`) and the core's client-device broker.
//!
//! [`ClientDeviceAuth`] owns the local CA (generated on first start under the service's work
//! folder, owner-only, reused across restarts), the broker's server certificate (SANs: localhost,
//! 127.0.0.1, ::1, the host name and `connectivity.hostAddresses`; renewed ahead of expiry, with
//! subscribers notified), the trusted device certificates, the `deviceGroups` policies, session
//! tokens, and the four client-device IPC operations. [`DeviceBroker`] runs `lichen-broker` on a
//! TLS listener whose certificates and checks come from it, and joins the broker to the core's
//! `local_mqtt` bus.
//!
//! Configuration (the component's `configuration`): Greengrass keys `deviceGroups`,
//! `certificates.{serverCertificateValiditySeconds, clientCertificateValiditySeconds,
//! disableCertificateRotation}`, `certificateAuthority.caType`, `performance.maxActiveAuthTokens`;
//! and two of ours, since there is no cloud registry to ask:
//! `trustedClientCertificates.caCertificates` (PEM texts; devices whose chain leads to one are
//! trusted), `trustedClientCertificates.fingerprints` (`sha256:<hex>` of a device certificate's
//! DER) and `trustedClientCertificates.thingCertificates` (thing name → its certificates, as
//! fingerprints or PEM texts: each is trusted, and bound to exactly the things it is listed for),
//! plus `connectivity.hostAddresses` (extra server certificate names/addresses).
//!
//! Identity: a client device's MQTT client id is its thing name, and it must be a valid one
//! (`[a-zA-Z0-9:_-]`, 1 to 128) bound to the certificate it presents: the certificate's subject
//! CN names the thing, or `thingCertificates` lists the certificate for it (a thing listed there
//! takes only its listed certificates; a listed certificate binds only to its listed things).
//!
//! Architecture invariant: deny by default — a client is refused unless its certificate is from
//! the own CA (a component: allowed everything) or trusted by configuration, and then each action
//! needs a statement of a device group whose selection rule matches its client id, which must
//! be a thing name bound to its certificate.
//! Architecture invariant: the CA private key never leaves the work folder and is never logged;
//! it is written with mode 0600 in a 0700 folder.

mod broker;
mod ca;
mod identity;
mod policy;
mod rule;
mod settings;
mod trust;

pub use broker::{DeviceBroker, LOCAL_MQTT_PUBLISHER, authorization_failures};
pub use ca::{CaError, CaType, CertificateAuthority, IssuedCertificate};
pub use identity::{
    CertificateIdentity, MAX_THING_NAME, ThingCertificates, subject_common_name, valid_thing_name,
};
pub use policy::{DeviceGroups, PolicyError};
pub use rule::{RuleError, SelectionRule};
pub use settings::BrokerSettings;
pub use trust::{Trust, TrustStore, fingerprint};

use lichen_ipc::{Authz, EventSink, IpcError, ResourceStyle, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The component name and IPC service id.
pub const SERVICE_NAME: &str = "aws.greengrass.clientdevices.Auth";
/// The common name of the broker's server certificate.
pub const SERVER_COMMON_NAME: &str = "aws.greengrass.clientdevices.mqtt.EMQX";
/// How often rotation checks the server certificate.
const ROTATION_CHECK: Duration = Duration::from_secs(30);
const RENEW_AHEAD_MAX: Duration = Duration::from_secs(24 * 3600);

/// The four client-device operations, all authorized under [`SERVICE_NAME`] on resource `*`.
pub const IPC_OPERATIONS: [&str; 4] = [
    "VerifyClientDeviceIdentity",
    "GetClientDeviceAuthToken",
    "AuthorizeClientDeviceAction",
    "SubscribeToCertificateUpdates",
];

/// A component configuration value that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{SERVICE_NAME} configuration {key}: {what}")]
    Value { key: &'static str, what: String },
    #[error("{SERVICE_NAME} configuration deviceGroups: {0}")]
    Groups(#[from] PolicyError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// The server certificate handed to the broker and to `SubscribeToCertificateUpdates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub public_key_pem: String,
    pub ca_certificates: Vec<String>,
    pub not_after: SystemTime,
}

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    server_validity: Duration,
    client_validity: Duration,
    rotation_disabled: bool,
    ca_type: CaType,
    max_tokens: usize,
    trusted_cas: Vec<String>,
    fingerprints: Vec<String>,
    things: ThingCertificates,
    hosts: Vec<String>,
}

fn num(v: Option<&Value>, key: &'static str, default: u64) -> Result<u64, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| ConfigError::Value {
                key,
                what: format!("{n} is not a non-negative number"),
            }),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| ConfigError::Value {
            key,
            what: format!("{s:?} is not a number"),
        }),
        Some(other) => Err(ConfigError::Value {
            key,
            what: format!("{other} is not a number"),
        }),
    }
}

fn string_list(v: Option<&Value>, key: &'static str) -> Result<Vec<String>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ConfigError::Value {
                        key,
                        what: "every entry must be a string".into(),
                    })
            })
            .collect(),
        Some(_) => Err(ConfigError::Value {
            key,
            what: "expected a list of strings".into(),
        }),
    }
}

fn host_name() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}

impl Settings {
    fn from_config(c: &Value) -> Result<Settings, ConfigError> {
        let clamp = |s: u64| Duration::from_secs(s.clamp(60, 864_000));
        let ca_type = match c.pointer("/certificateAuthority/caType") {
            None | Some(Value::Null) => CaType::Rsa2048,
            Some(Value::String(s)) => CaType::parse(s).ok_or_else(|| ConfigError::Value {
                key: "certificateAuthority.caType",
                what: format!("{s:?}; use RSA_2048 or ECDSA_P256"),
            })?,
            Some(other) => {
                return Err(ConfigError::Value {
                    key: "certificateAuthority.caType",
                    what: format!("{other}; use RSA_2048 or ECDSA_P256"),
                });
            }
        };
        let rotation_disabled = match c.pointer("/certificates/disableCertificateRotation") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        let trusted_cas = string_list(
            c.pointer("/trustedClientCertificates/caCertificates"),
            "trustedClientCertificates.caCertificates",
        )?;
        for pem in &trusted_cas {
            trust::pem_certificates(pem).map_err(|what| ConfigError::Value {
                key: "trustedClientCertificates.caCertificates",
                what,
            })?;
        }
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        hosts.extend(host_name());
        for h in string_list(
            c.pointer("/connectivity/hostAddresses"),
            "connectivity.hostAddresses",
        )? {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        hosts.dedup();
        Ok(Settings {
            server_validity: clamp(num(
                c.pointer("/certificates/serverCertificateValiditySeconds"),
                "certificates.serverCertificateValiditySeconds",
                604_800,
            )?),
            client_validity: clamp(num(
                c.pointer("/certificates/clientCertificateValiditySeconds"),
                "certificates.clientCertificateValiditySeconds",
                604_800,
            )?),
            rotation_disabled,
            ca_type,
            max_tokens: num(
                c.pointer("/performance/maxActiveAuthTokens"),
                "performance.maxActiveAuthTokens",
                2500,
            )?
            .max(1) as usize,
            trusted_cas,
            fingerprints: string_list(
                c.pointer("/trustedClientCertificates/fingerprints"),
                "trustedClientCertificates.fingerprints",
            )?,
            things: ThingCertificates::from_config(
                c.pointer("/trustedClientCertificates/thingCertificates"),
            )
            .map_err(|what| ConfigError::Value {
                key: ThingCertificates::KEY,
                what,
            })?,
            hosts,
        })
    }
}

/// Whether a certificate valid for `lifetime` and ending at `not_after` should be renewed at
/// `now`: within a day of expiry, or within half its lifetime for short-lived ones.
pub fn renewal_due(not_after: SystemTime, lifetime: Duration, now: SystemTime) -> bool {
    let ahead = RENEW_AHEAD_MAX.min(lifetime / 2);
    not_after
        .duration_since(now)
        .map(|left| left <= ahead)
        .unwrap_or(true)
}

struct Active {
    ca: Arc<CertificateAuthority>,
    settings: Settings,
    groups: Arc<DeviceGroups>,
}

#[derive(Debug, Clone)]
struct Session {
    thing_name: String,
    trust: Trust,
    last_used: u64,
}

#[derive(Default)]
struct Sessions {
    by_token: HashMap<String, Session>,
    clock: u64,
}

/// How a leaf certificate is trusted, and what it says of its holder.
type Classified = (Trust, Arc<CertificateIdentity>);

struct Inner {
    work_dir: PathBuf,
    active: RwLock<Option<Active>>,
    trust: Arc<RwLock<Arc<TrustStore>>>,
    /// Leaf fingerprint → trust and identity, so per-message checks skip chain verification.
    trust_cache: Mutex<HashMap<String, Option<Classified>>>,
    resolver: Arc<trust::ServerCertResolver>,
    identity: watch::Sender<Option<Arc<ServerIdentity>>>,
    sessions: Mutex<Sessions>,
    rotation: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Serialises `apply` and rotation.
    update: tokio::sync::Mutex<()>,
}

/// Client device auth: CA, certificates, trust, device groups and sessions. Cheap to clone.
#[derive(Clone)]
pub struct ClientDeviceAuth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClientDeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDeviceAuth")
            .field("work_dir", &self.inner.work_dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClientDeviceAuth {
    /// Inactive until [`ClientDeviceAuth::apply`] is given a configuration; the CA lives in
    /// `work_dir` (`<root>/work/aws.greengrass.clientdevices.Auth`).
    pub fn new(work_dir: PathBuf) -> ClientDeviceAuth {
        ClientDeviceAuth {
            inner: Arc::new(Inner {
                work_dir,
                active: RwLock::new(None),
                trust: Arc::new(RwLock::new(Arc::new(TrustStore::default()))),
                trust_cache: Mutex::new(HashMap::new()),
                resolver: Arc::new(trust::ServerCertResolver::default()),
                identity: watch::channel(None).0,
                sessions: Mutex::new(Sessions::default()),
                rotation: Mutex::new(None),
                update: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Starts, reconfigures (`Some`) or stops (`None`) the service. An invalid configuration is
    /// refused and the previous one stays in force.
    pub async fn apply(&self, configuration: Option<&Value>) -> Result<(), ConfigError> {
        let _guard = self.inner.update.lock().await;
        let Some(c) = configuration else {
            if let Some(t) = lock(&self.inner.rotation).take() {
                t.abort();
            }
            *self.inner.active.write().unwrap_or_else(|e| e.into_inner()) = None;
            *self.inner.trust.write().unwrap_or_else(|e| e.into_inner()) =
                Arc::new(TrustStore::default());
            lock(&self.inner.trust_cache).clear();
            lock(&self.inner.sessions).by_token.clear();
            self.inner.resolver.clear();
            self.inner.identity.send_replace(None);
            return Ok(());
        };
        let settings = Settings::from_config(c)?;
        let groups = Arc::new(DeviceGroups::from_config(c.get("deviceGroups"))?);
        let previous = self
            .inner
            .active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| (a.ca.clone(), a.settings.clone()));
        let ca = match &previous {
            Some((ca, _)) if ca.ca_type() == settings.ca_type => ca.clone(),
            _ => {
                let dir = self.inner.work_dir.clone();
                let ca_type = settings.ca_type;
                Arc::new(
                    tokio::task::spawn_blocking(move || {
                        CertificateAuthority::load_or_create(&dir, ca_type)
                    })
                    .await
                    .map_err(|e| ConfigError::Value {
                        key: "certificateAuthority",
                        what: format!("CA generation stopped: {e}"),
                    })??,
                )
            }
        };
        let ca_changed = previous
            .as_ref()
            .is_none_or(|(old, _)| !Arc::ptr_eq(old, &ca));
        let reissue = ca_changed
            || previous.as_ref().is_none_or(|(_, old)| {
                old.hosts != settings.hosts || old.server_validity != settings.server_validity
            });
        let own = trust::pem_certificates(ca.certificate_pem()).unwrap_or_default();
        let mut device_cas = Vec::new();
        for pem in &settings.trusted_cas {
            device_cas.extend(trust::pem_certificates(pem).unwrap_or_default());
        }
        let pinned = settings
            .fingerprints
            .iter()
            .chain(settings.things.fingerprints())
            .cloned();
        let store = TrustStore::new(&own, &device_cas, pinned);
        *self.inner.trust.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(store);
        lock(&self.inner.trust_cache).clear();
        if ca_changed {
            lock(&self.inner.sessions).by_token.clear();
        }
        let rotation_disabled = settings.rotation_disabled;
        *self.inner.active.write().unwrap_or_else(|e| e.into_inner()) = Some(Active {
            ca,
            settings,
            groups,
        });
        if reissue {
            self.issue_server_certificate()?;
        }
        let mut rotation = lock(&self.inner.rotation);
        if rotation_disabled {
            if let Some(t) = rotation.take() {
                t.abort();
            }
        } else if rotation.is_none() {
            let me = self.clone();
            *rotation = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(ROTATION_CHECK);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let _guard = me.inner.update.lock().await;
                    if let Err(e) = me.rotate_if_due(SystemTime::now()) {
                        tracing::error!(error = %e, "server certificate rotation failed");
                    }
                }
            }));
        }
        Ok(())
    }

    fn issue_server_certificate(&self) -> Result<(), ConfigError> {
        let active = self.inner.active.read().unwrap_or_else(|e| e.into_inner());
        let Some(a) = active.as_ref() else {
            return Ok(());
        };
        let issued = a.ca.issue_server(
            SERVER_COMMON_NAME,
            &a.settings.hosts,
            a.settings.server_validity,
        )?;
        self.inner
            .resolver
            .set(&issued.certificate_pem, &issued.private_key_pem)
            .map_err(|what| ConfigError::Value {
                key: "certificates",
                what,
            })?;
        let identity = ServerIdentity {
            certificate_pem: issued.certificate_pem,
            private_key_pem: issued.private_key_pem,
            public_key_pem: issued.public_key_pem,
            ca_certificates: vec![a.ca.certificate_pem().to_string()],
            not_after: issued.not_after,
        };
        drop(active);
        self.inner.identity.send_replace(Some(Arc::new(identity)));
        tracing::info!("issued the client device broker's server certificate");
        Ok(())
    }

    /// Renews the server certificate when [`renewal_due`] at `now`; returns whether it did.
    pub fn rotate_if_due(&self, now: SystemTime) -> Result<bool, ConfigError> {
        let due = {
            let active = self.inner.active.read().unwrap_or_else(|e| e.into_inner());
            let identity = self.inner.identity.borrow().clone();
            match (active.as_ref(), identity) {
                (Some(a), Some(id)) => renewal_due(id.not_after, a.settings.server_validity, now),
                _ => false,
            }
        };
        if due {
            self.issue_server_certificate()?;
        }
        Ok(due)
    }

    /// The current server certificate (`None` while inactive); changes on every rotation.
    pub fn server_identity(&self) -> watch::Receiver<Option<Arc<ServerIdentity>>> {
        self.inner.identity.subscribe()
    }

    /// The CA certificates clients should trust (empty while inactive).
    pub fn ca_certificates(&self) -> Vec<String> {
        self.inner
            .active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| vec![a.ca.certificate_pem().to_string()])
            .unwrap_or_default()
    }

    /// A client certificate from the own CA, for components such as the MQTT bridge: the broker
    /// lets its holder do everything.
    pub fn issue_client_certificate(
        &self,
        common_name: &str,
    ) -> Result<IssuedCertificate, ConfigError> {
        let active = self.inner.active.read().unwrap_or_else(|e| e.into_inner());
        let a = active.as_ref().ok_or(ConfigError::Value {
            key: "(service)",
            what: "not deployed; deploy aws.greengrass.clientdevices.Auth first".into(),
        })?;
        Ok(a.ca.issue_client(common_name, a.settings.client_validity)?)
    }

    /// How a certificate chain (DER, leaf first) is trusted, with what its leaf says of its
    /// holder; cached by the leaf's fingerprint.
    fn classify_leaf(
        &self,
        chain: &[lichen_broker::rustls::pki_types::CertificateDer<'_>],
    ) -> Option<Classified> {
        let leaf = chain.first()?;
        let key = fingerprint(leaf);
        if let Some(t) = lock(&self.inner.trust_cache).get(&key) {
            return t.clone();
        }
        let store = self
            .inner
            .trust
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let t = store.classify(chain).map(|t| {
            let id = CertificateIdentity {
                fingerprint: key.clone(),
                common_name: subject_common_name(leaf),
            };
            (t, Arc::new(id))
        });
        let mut cache = lock(&self.inner.trust_cache);
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, t.clone());
        t
    }

    /// How a certificate chain (DER, leaf first) is trusted.
    pub fn classify(
        &self,
        chain: &[lichen_broker::rustls::pki_types::CertificateDer<'_>],
    ) -> Option<Trust> {
        self.classify_leaf(chain).map(|(t, _)| t)
    }

    /// How a client presenting `chain` under `client_id` is trusted: a component (own CA) under
    /// any id; a device only under a thing name bound to its certificate. `None`: refused.
    pub fn client_trust(
        &self,
        chain: &[lichen_broker::rustls::pki_types::CertificateDer<'_>],
        client_id: &str,
    ) -> Option<Trust> {
        let (trust, id) = self.classify_leaf(chain)?;
        match trust {
            Trust::Component => Some(trust),
            Trust::Device => self.binds(&id, client_id).then_some(trust),
        }
    }

    fn binds(&self, id: &CertificateIdentity, thing: &str) -> bool {
        self.inner
            .active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|a| a.settings.things.binds(id, thing))
    }

    fn classify_pem(&self, pem: &str) -> Option<Trust> {
        let chain = trust::pem_certificates(pem).ok()?;
        self.classify(&chain)
    }

    /// IPC `VerifyClientDeviceIdentity`: whether the PEM certificate (chain) is trusted.
    pub fn verify_identity(&self, certificate_pem: &str) -> bool {
        self.classify_pem(certificate_pem).is_some()
    }

    /// IPC `GetClientDeviceAuthToken` for an MQTT credential: a session token for a trusted
    /// certificate; the thing name is the client id.
    pub fn auth_token(&self, client_id: &str, certificate_pem: &str) -> Result<String, IpcError> {
        let invalid = |message: String| IpcError::Other {
            shape: "InvalidCredentialError".into(),
            message,
        };
        let chain = trust::pem_certificates(certificate_pem).unwrap_or_default();
        let Some(trust) = self.classify(&chain) else {
            return Err(invalid(format!(
                "the certificate of client {client_id:?} is not trusted; add its CA to trustedClientCertificates.caCertificates or its fingerprint to trustedClientCertificates.fingerprints"
            )));
        };
        if trust == Trust::Device && !valid_thing_name(client_id) {
            return Err(invalid(format!(
                "client id {client_id:?} is not a thing name (1 to {MAX_THING_NAME} of A-Z a-z 0-9 : _ -)"
            )));
        }
        if self.client_trust(&chain, client_id).is_none() {
            return Err(invalid(format!(
                "the certificate is not bound to thing {client_id:?}: its subject CN must be the thing name, or trustedClientCertificates.thingCertificates must list it for that thing"
            )));
        }
        let max = self
            .inner
            .active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(2500, |a| a.settings.max_tokens);
        let bytes: [u8; 32] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut s = lock(&self.inner.sessions);
        s.clock += 1;
        let last_used = s.clock;
        while s.by_token.len() >= max {
            let oldest = s
                .by_token
                .iter()
                .min_by_key(|(_, v)| v.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => s.by_token.remove(&k),
                None => break,
            };
        }
        s.by_token.insert(
            token.clone(),
            Session {
                thing_name: client_id.to_string(),
                trust,
                last_used,
            },
        );
        Ok(token)
    }

    /// IPC `AuthorizeClientDeviceAction`.
    pub fn authorize_token(
        &self,
        token: &str,
        operation: &str,
        resource: &str,
    ) -> Result<bool, IpcError> {
        let session = {
            let mut s = lock(&self.inner.sessions);
            s.clock += 1;
            let now = s.clock;
            let session = s.by_token.get_mut(token).ok_or_else(|| IpcError::Other {
                shape: "InvalidClientDeviceAuthTokenError".into(),
                message: "unknown or expired client device auth token; call GetClientDeviceAuthToken again".into(),
            })?;
            session.last_used = now;
            session.clone()
        };
        Ok(self.allowed(session.trust, &session.thing_name, operation, resource))
    }

    /// Whether a client with this trust and thing name may perform `operation` on `resource`.
    pub fn allowed(&self, trust: Trust, thing_name: &str, operation: &str, resource: &str) -> bool {
        match trust {
            Trust::Component => true,
            Trust::Device => self
                .inner
                .active
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|a| a.groups.authorize(thing_name, operation, resource)),
        }
    }

    pub(crate) fn tls_parts(
        &self,
    ) -> (Arc<RwLock<Arc<TrustStore>>>, Arc<trust::ServerCertResolver>) {
        (self.inner.trust.clone(), self.inner.resolver.clone())
    }

    /// Registers the four client-device IPC operations on `router`.
    pub fn register_ipc(&self, router: &Router) {
        let authz = || Authz::Service {
            service_id: SERVICE_NAME.to_string(),
            resource: |_| "*".to_string(),
            style: ResourceStyle::Standard,
        };
        let me = self.clone();
        router.register_unary("VerifyClientDeviceIdentity", authz(), move |_c, req| {
            let me = me.clone();
            async move {
                let pem = req
                    .pointer("/credential/clientDeviceCertificate")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        IpcError::invalid_arguments(
                            "credential.clientDeviceCertificate is required (a PEM certificate)",
                        )
                    })?;
                Ok(json!({ "isValidClientDevice": me.verify_identity(pem) }))
            }
        });
        let me = self.clone();
        router.register_unary("GetClientDeviceAuthToken", authz(), move |_c, req| {
            let me = me.clone();
            async move {
                let cred = req.pointer("/credential/mqttCredential").ok_or_else(|| {
                    IpcError::invalid_arguments(
                        "credential.mqttCredential is required (clientId and certificatePem)",
                    )
                })?;
                let client_id = cred.get("clientId").and_then(Value::as_str).unwrap_or("");
                let pem = cred
                    .get("certificatePem")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        IpcError::invalid_arguments(
                            "credential.mqttCredential.certificatePem is required",
                        )
                    })?;
                let token = me.auth_token(client_id, pem)?;
                Ok(json!({ "clientDeviceAuthToken": token }))
            }
        });
        let me = self.clone();
        router.register_unary("AuthorizeClientDeviceAction", authz(), move |_c, req| {
            let me = me.clone();
            async move {
                let field = |name: &str| {
                    req.get(name)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .ok_or_else(|| IpcError::invalid_arguments(format!("{name} is required")))
                };
                let token = field("clientDeviceAuthToken")?;
                let operation = field("operation")?;
                let resource = field("resource")?;
                let ok = me.authorize_token(&token, &operation, &resource)?;
                Ok(json!({ "isAuthorized": ok }))
            }
        });
        let me = self.clone();
        router.register_streaming(
            "SubscribeToCertificateUpdates",
            "CertificateUpdateEvent",
            authz(),
            move |_c, req, sink: EventSink| {
                let me = me.clone();
                async move {
                    let kind = req
                        .pointer("/certificateOptions/certificateType")
                        .and_then(Value::as_str);
                    if kind != Some("SERVER") {
                        return Err(IpcError::invalid_arguments(
                            "certificateOptions.certificateType must be SERVER",
                        ));
                    }
                    let mut rx = me.server_identity();
                    tokio::spawn(async move {
                        loop {
                            let current = rx.borrow_and_update().clone();
                            if let Some(id) = current {
                                let event = json!({ "certificateUpdate": {
                                    "certificate": id.certificate_pem,
                                    "privateKey": id.private_key_pem,
                                    "publicKey": id.public_key_pem,
                                    "caCertificates": id.ca_certificates,
                                }});
                                if sink.send(event).await.is_err() {
                                    return;
                                }
                            }
                            tokio::select! {
                                r = rx.changed() => if r.is_err() { return },
                                _ = sink.closed() => return,
                            }
                        }
                    });
                    Ok(json!({}))
                }
            },
        );
    }

    /// Removes the operations (the service was removed); later calls answer "not supported".
    pub fn unregister_ipc(router: &Router) {
        for op in IPC_OPERATIONS {
            router.unregister(op);
        }
    }
}

#[cfg(test)]
mod broker_tests;
#[cfg(test)]
mod tests;
