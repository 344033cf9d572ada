//! Fleet provisioning over MQTT, as AWS IoT serves it to `awsiot.iotidentity` (and to the
//! Greengrass fleet-provisioning plugin): a device connected with a claim certificate, whose
//! policy allows these topics only, asks for a certificate, then has a provisioning template
//! make its thing and attach its policies.
//!
//! - `$aws/certificates/create/json`: a new key pair and certificate (`PENDING_ACTIVATION`).
//! - `$aws/certificates/create-from-csr/json`: a certificate for the device's CSR, likewise.
//! - `$aws/provisioning-templates/<name>/provision/json`: RegisterThing with the ownership token
//!   of such a certificate and the template's parameters.
//!
//! Replies go to `<topic>/accepted` or `<topic>/rejected`, to the asking device alone (one holds a
//! private key). Ownership tokens live in this process for an hour; a fleet restart forgets them
//! and the device asks again.

use super::template::{self, PolicySpec};
use lichen_fleet_mqtt::{DeviceEndpoint, DevicePublish, QoS};
use lichen_fleet_pki::FleetCa;
use lichen_fleet_registry::{CertificateStatus, NewCertificate, Registry, RegistryError};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CREATE: &str = "$aws/certificates/create/json";
const CREATE_FROM_CSR: &str = "$aws/certificates/create-from-csr/json";
const REGISTER: &str = "$aws/provisioning-templates/+/provision/json";
/// How long a certificate ownership token may be used, as AWS IoT documents.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Certificates issued and not yet registered, at most: claims asking beyond it are throttled
/// rather than filling the registry.
const MAX_PENDING: usize = 10_000;
/// Requests answered at once (key generation is CPU work); the rest wait in the route's queue.
const CONCURRENCY: usize = 2;

struct Rejection {
    status: u16,
    code: &'static str,
    message: String,
}

fn reject(status: u16, code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        status,
        code,
        message: message.into(),
    }
}

impl From<RegistryError> for Rejection {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound { .. } => reject(404, "ResourceNotFound", e.to_string()),
            RegistryError::Db { .. } | RegistryError::Sql(_) => {
                tracing::error!("fleet provisioning: {e}");
                reject(500, "InternalFailure", "the registry failed; try again")
            }
            e => reject(400, "InvalidRequest", e.to_string()),
        }
    }
}

impl From<lichen_fleet_pki::PkiError> for Rejection {
    fn from(e: lichen_fleet_pki::PkiError) -> Self {
        reject(400, "InvalidRequest", e.to_string())
    }
}

struct Provisioning {
    registry: Arc<Registry>,
    ca: Arc<FleetCa>,
    /// Ownership token → (certificate id, when issued).
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    busy: tokio::sync::Semaphore,
}

/// Serves the provisioning topics on `endpoint` until it stops.
pub fn start(
    endpoint: &DeviceEndpoint,
    registry: Arc<Registry>,
    ca: Arc<FleetCa>,
) -> anyhow::Result<()> {
    let svc = Arc::new(Provisioning {
        registry,
        ca,
        tokens: Mutex::new(HashMap::new()),
        busy: tokio::sync::Semaphore::new(CONCURRENCY),
    });
    for filter in [CREATE, CREATE_FROM_CSR, REGISTER] {
        let mut topics = endpoint.serve_topics(filter)?;
        let (svc, endpoint) = (svc.clone(), endpoint.clone());
        tokio::spawn(async move {
            while let Some(p) = topics.recv().await {
                let (svc, endpoint) = (svc.clone(), endpoint.clone());
                tokio::spawn(async move { svc.handle(&endpoint, p).await });
            }
        });
    }
    Ok(())
}

impl Provisioning {
    async fn handle(self: Arc<Self>, endpoint: &DeviceEndpoint, p: DevicePublish) {
        let (client_id, topic) = (p.client_id.clone(), p.topic.clone());
        let svc = self.clone();
        let Ok(_permit) = self.busy.acquire().await else {
            return;
        };
        // Key generation and the registry are blocking work.
        let answer = match tokio::task::spawn_blocking(move || svc.answer(&p)).await {
            Ok(a) => a,
            Err(e) => Err(reject(500, "InternalFailure", format!("{e}"))),
        };
        let (suffix, body) = match answer {
            Ok(v) => ("accepted", v),
            Err(r) => {
                tracing::info!(
                    client_id,
                    topic,
                    code = r.code,
                    "fleet provisioning refused: {}",
                    r.message
                );
                (
                    "rejected",
                    json!({"statusCode": r.status, "errorCode": r.code, "errorMessage": r.message}),
                )
            }
        };
        let reply = format!("{topic}/{suffix}");
        match endpoint.publish_to(
            &client_id,
            &reply,
            body.to_string().into(),
            QoS::AtLeastOnce,
        ) {
            Ok(true) => {}
            Ok(false) => tracing::info!(
                client_id,
                reply,
                "fleet provisioning reply not delivered: the device does not subscribe to it (or may not receive it)"
            ),
            Err(e) => tracing::warn!(client_id, reply, "fleet provisioning reply: {e}"),
        }
    }

    fn answer(&self, p: &DevicePublish) -> Result<Value, Rejection> {
        let who = format!("provisioning claim {}", p.certificate_id);
        let payload: serde_json::Map<String, Value> =
            if p.payload.iter().all(u8::is_ascii_whitespace) {
                Default::default()
            } else {
                serde_json::from_slice(&p.payload).map_err(|e| {
                    reject(
                        400,
                        "InvalidPayload",
                        format!("the payload is not a JSON object: {e}"),
                    )
                })?
            };
        let issues = matches!(p.topic.as_str(), CREATE | CREATE_FROM_CSR);
        if issues {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.retain(|_, (_, at)| at.elapsed() < TOKEN_LIFETIME);
            if tokens.len() >= MAX_PENDING {
                return Err(reject(
                    429,
                    "Throttling",
                    format!("{MAX_PENDING} certificates await RegisterThing; try again later"),
                ));
            }
        }
        match p.topic.as_str() {
            CREATE => {
                let keys = self.ca.create_keys_and_certificate()?;
                let token = self.record(&who, "CreateKeysAndCertificate", &keys.certificate)?;
                Ok(json!({
                    "certificateId": keys.certificate.id,
                    "certificatePem": keys.certificate.pem,
                    "privateKey": keys.private_key_pem,
                    "certificateOwnershipToken": token,
                }))
            }
            CREATE_FROM_CSR => {
                let Some(Value::String(csr)) = payload.get("certificateSigningRequest") else {
                    return Err(reject(
                        400,
                        "InvalidPayload",
                        "certificateSigningRequest (a PEM CSR) is required",
                    ));
                };
                let issued = self.ca.sign_csr(csr)?;
                let token = self.record(&who, "CreateCertificateFromCsr", &issued)?;
                Ok(json!({
                    "certificateId": issued.id,
                    "certificatePem": issued.pem,
                    "certificateOwnershipToken": token,
                }))
            }
            topic => {
                let template = topic
                    .strip_prefix("$aws/provisioning-templates/")
                    .and_then(|t| t.strip_suffix("/provision/json"))
                    .ok_or_else(|| {
                        reject(404, "ResourceNotFound", format!("no service on {topic}"))
                    })?;
                self.register_thing(&who, template, &payload)
            }
        }
    }

    /// Stores a just-issued certificate as PENDING_ACTIVATION and returns its ownership token.
    fn record(
        &self,
        who: &str,
        op: &str,
        issued: &lichen_fleet_pki::IssuedCertificate,
    ) -> Result<String, Rejection> {
        self.registry.insert_certificate(
            who,
            op,
            &NewCertificate {
                id: issued.id.clone(),
                pem: issued.pem.clone(),
                status: CertificateStatus::PendingActivation,
                ca_id: issued.ca_id.clone(),
                not_before: issued.not_before,
                not_after: issued.not_after,
            },
        )?;
        let token: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), (issued.id.clone(), Instant::now()));
        Ok(token)
    }

    fn register_thing(
        &self,
        who: &str,
        template_name: &str,
        payload: &serde_json::Map<String, Value>,
    ) -> Result<Value, Rejection> {
        let Some(Value::String(token)) = payload.get("certificateOwnershipToken") else {
            return Err(reject(
                400,
                "InvalidPayload",
                "certificateOwnershipToken is required",
            ));
        };
        let cert_id = {
            let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            match tokens.get(token) {
                Some((id, at)) if at.elapsed() < TOKEN_LIFETIME => id.clone(),
                _ => {
                    return Err(reject(
                        400,
                        "InvalidCertificateOwnershipToken",
                        "the certificate ownership token is unknown or expired; create a certificate again",
                    ));
                }
            }
        };
        let template = self
            .registry
            .describe_provisioning_template(template_name)?;
        if !template.enabled {
            return Err(reject(
                403,
                "TemplateDisabled",
                format!("provisioning template {template_name:?} is disabled"),
            ));
        }
        if template.pre_provisioning_hook.is_some() {
            // The hook is the operator's gate on who may provision; without a way to call it,
            // refuse rather than provision ungated.
            return Err(reject(
                403,
                "AccessDenied",
                format!(
                    "provisioning template {template_name:?} has a pre-provisioning hook, which \
                     this fleet cannot call yet; remove the hook to provision with it"
                ),
            ));
        }
        if template.kind != "FLEET_PROVISIONING" {
            return Err(reject(
                400,
                "InvalidRequest",
                format!(
                    "provisioning template {template_name:?} is for {}, not fleet provisioning",
                    template.kind
                ),
            ));
        }
        let empty = serde_json::Map::new();
        let parameters = match payload.get("parameters") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(reject(
                    400,
                    "InvalidPayload",
                    "parameters must be an object of strings",
                ));
            }
        };
        let plan = template::plan(&template.body, parameters, &cert_id)
            .map_err(|e| reject(400, "InvalidParameters", e.0))?;
        let cert_arn = self.registry.certificate_arn(&cert_id);
        let thing_name = match &plan.thing {
            Some(t) => {
                match self.registry.create_thing(
                    who,
                    &t.name,
                    t.thing_type.as_deref(),
                    t.attributes.clone(),
                ) {
                    // The thing exists (re-provisioning): it is kept as it is.
                    Ok(_) | Err(RegistryError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                for g in &t.groups {
                    self.registry.add_thing_to_group(who, g, &t.name)?;
                }
                self.registry
                    .attach_thing_principal(who, &t.name, &cert_arn, false)?;
                Some(t.name.clone())
            }
            None => None,
        };
        for p in &plan.policies {
            let name = match p {
                PolicySpec::Existing(n) => n.clone(),
                PolicySpec::Document(d) => {
                    let n = format!("{template_name}_{}", &cert_id[..16]);
                    self.registry.create_policy(who, &n, d)?;
                    n
                }
            };
            self.registry.attach_policy(who, &name, &cert_arn)?;
        }
        if plan.activate {
            self.registry
                .update_certificate(who, &cert_id, CertificateStatus::Active)?;
        }
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
        let mut out = json!({ "deviceConfiguration": plan.device_configuration });
        if let Some(t) = thing_name {
            out["thingName"] = Value::String(t);
        }
        Ok(out)
    }
}
