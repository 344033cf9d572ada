//! Fleet provisioning by claim, the device side (AWS IoT's MQTT API, as the Greengrass
//! `FleetProvisioningByClaim` plugin speaks it): connect with the claim certificate, obtain a
//! certificate (CreateKeysAndCertificate, or CreateCertificateFromCsr when the device brings a
//! CSR), then RegisterThing with the provisioning template and its parameters.
//!
//! Each step subscribes to `<topic>/accepted` and `<topic>/rejected` before it publishes (QoS 1),
//! so no answer can be missed; each waits at most [`ClaimRequest::step_timeout`]. Nothing is
//! written here: the caller stores the identity (this crate knows nothing of files or config).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use lichen_mqtt::{self as mqtt, Packet, QoS, Version};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;

use crate::client::{MAX_INCOMING_PACKET, Stream};
use crate::{Endpoint, LinkConfig, tls};

/// One provisioning attempt's inputs (the plugin's configuration, resolved).
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// `iotDataEndpoint` and `mqttPort`.
    pub host: String,
    pub port: u16,
    /// `rootCaPath`, `claimCertificatePath`, `claimCertificatePrivateKeyPath`.
    pub root_ca: PathBuf,
    pub claim_certificate: PathBuf,
    pub claim_private_key: PathBuf,
    /// `deviceId`: the MQTT client id of the claim connection.
    pub client_id: String,
    /// `provisioningTemplate`.
    pub template: String,
    /// `templateParameters`, values as strings.
    pub parameters: BTreeMap<String, String>,
    /// The PEM of `csrPath`: ask for a certificate for this CSR instead of a new key pair.
    pub csr: Option<String>,
    /// How long each step (connect, subscribe, answer) may take; the plugin uses 30 s.
    pub step_timeout: Duration,
}

/// What the fleet gave the device.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub thing_name: String,
    pub certificate_id: String,
    pub certificate_pem: String,
    /// The new private key (PEM); `None` when the device sent its own CSR.
    pub private_key: Option<String>,
    /// The template's `DeviceConfiguration`, evaluated.
    pub device_configuration: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("claim credentials: {0}")]
    Credentials(String),
    #[error("cannot connect to {host}:{port} with the claim certificate: {reason}")]
    Connect {
        host: String,
        port: u16,
        reason: String,
    },
    #[error(
        "{operation} rejected by the fleet ({status_code} {error_code}): {message}; check the claim certificate's policy and the provisioning template {template:?}"
    )]
    Rejected {
        operation: &'static str,
        template: String,
        status_code: i64,
        error_code: String,
        message: String,
    },
    #[error("{operation}: no answer within {} s", .timeout.as_secs())]
    Timeout {
        operation: &'static str,
        timeout: Duration,
    },
    #[error("{operation}: {reason}")]
    Protocol {
        operation: &'static str,
        reason: String,
    },
}

const CREATE: &str = "$aws/certificates/create/json";
const CREATE_FROM_CSR: &str = "$aws/certificates/create-from-csr/json";

/// Runs one provisioning attempt from connect to RegisterThing's answer.
pub async fn provision(req: &ClaimRequest) -> Result<Provisioned, ProvisionError> {
    let endpoint = Endpoint {
        host: req.host.clone(),
        port: req.port,
        root_ca: req.root_ca.clone(),
        certificate: req.claim_certificate.clone(),
        private_key: req.claim_private_key.clone(),
    };
    let keys = tls::Keys {
        root_ca: "services.aws.greengrass.FleetProvisioningByClaim.configuration.rootCaPath",
        certificate: "services.aws.greengrass.FleetProvisioningByClaim.configuration.claimCertificatePath",
        private_key: "services.aws.greengrass.FleetProvisioningByClaim.configuration.claimCertificatePrivateKeyPath",
    };
    let tls: Arc<ClientConfig> = tls::client_config_named(&endpoint, &keys).map_err(|e| {
        ProvisionError::Credentials(match e {
            crate::CloudError::Tls { what } => what,
            other => other.to_string(),
        })
    })?;
    let mut link = LinkConfig::new(&req.client_id, PathBuf::new());
    link.endpoint = Some(endpoint);
    link.version = Version::V311;
    link.operation_timeout = req.step_timeout;
    let (stream, _, leftover) = crate::client::connect(&link, &tls)
        .await
        .map_err(|reason| ProvisionError::Connect {
            host: req.host.clone(),
            port: req.port,
            reason,
        })?;
    let mut s = Session {
        stream,
        buf: leftover,
        next_id: 0,
        timeout: req.step_timeout,
        template: req.template.clone(),
    };

    let (operation, topic, request) = match &req.csr {
        Some(csr) => (
            "CreateCertificateFromCsr",
            CREATE_FROM_CSR,
            json!({ "certificateSigningRequest": csr }),
        ),
        None => ("CreateKeysAndCertificate", CREATE, json!({})),
    };
    let keys = s.call(operation, topic, &request).await?;
    let field = |v: &Value, name: &str, operation: &'static str| {
        v.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ProvisionError::Protocol {
                operation,
                reason: format!("the answer has no {name:?}"),
            })
    };
    let certificate_id = field(&keys, "certificateId", operation)?;
    let certificate_pem = field(&keys, "certificatePem", operation)?;
    let token = field(&keys, "certificateOwnershipToken", operation)?;
    let private_key = match req.csr {
        Some(_) => None,
        None => Some(field(&keys, "privateKey", operation)?),
    };

    let register = format!(
        "$aws/provisioning-templates/{}/provision/json",
        req.template
    );
    let reply = s
        .call(
            "RegisterThing",
            &register,
            &json!({ "certificateOwnershipToken": token, "parameters": req.parameters }),
        )
        .await?;
    let thing_name = field(&reply, "thingName", "RegisterThing")?;
    s.disconnect().await;
    Ok(Provisioned {
        thing_name,
        certificate_id,
        certificate_pem,
        private_key,
        device_configuration: reply
            .get("deviceConfiguration")
            .cloned()
            .unwrap_or(Value::Null),
    })
}

/// The delay before attempt `failures + 1`: 5 s doubling to 5 min, jittered, as a fleet of
/// devices powered on together must not retry in step.
pub fn retry_delay(failures: u32) -> Duration {
    crate::client::jittered_backoff(Duration::from_secs(5), Duration::from_secs(300), failures)
}

struct Session {
    stream: Stream,
    buf: BytesMut,
    next_id: u16,
    timeout: Duration,
    template: String,
}

impl Session {
    fn packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    async fn send(&mut self, p: &Packet, operation: &'static str) -> Result<(), ProvisionError> {
        let mut out = BytesMut::new();
        mqtt::encode(p, Version::V311, &mut out);
        let write = async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| ProvisionError::Timeout {
                operation,
                timeout: self.timeout,
            })?
            .map_err(|e| ProvisionError::Protocol {
                operation,
                reason: format!("sending {}: {e}", p.name()),
            })
    }

    async fn next(
        &mut self,
        deadline: Instant,
        operation: &'static str,
    ) -> Result<Packet, ProvisionError> {
        loop {
            match mqtt::decode(&self.buf, Some(Version::V311), MAX_INCOMING_PACKET) {
                Ok(Some((p, used))) => {
                    self.buf.advance(used);
                    return Ok(p);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(ProvisionError::Protocol {
                        operation,
                        reason: format!("reading from the fleet: {e}"),
                    });
                }
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| ProvisionError::Timeout {
                    operation,
                    timeout: self.timeout,
                })?
                .map_err(|e| ProvisionError::Protocol {
                    operation,
                    reason: format!("reading from the fleet: {e}"),
                })?;
            if n == 0 {
                return Err(ProvisionError::Protocol {
                    operation,
                    reason: "the fleet closed the connection (is the claim certificate ACTIVE and its policy allowing this topic?)".into(),
                });
            }
        }
    }

    /// Subscribes to the answers, publishes the request, returns the accepted payload.
    async fn call(
        &mut self,
        operation: &'static str,
        topic: &str,
        request: &Value,
    ) -> Result<Value, ProvisionError> {
        let accepted = format!("{topic}/accepted");
        let rejected = format!("{topic}/rejected");
        let sub_id = self.packet_id();
        let options = mqtt::SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        };
        self.send(
            &Packet::Subscribe(mqtt::Subscribe {
                packet_id: sub_id,
                properties: mqtt::Properties::default(),
                filters: vec![(accepted.clone(), options), (rejected.clone(), options)],
            }),
            operation,
        )
        .await?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.next(deadline, operation).await? {
                Packet::SubAck(a) if a.packet_id == sub_id => {
                    if a.reason_codes.iter().any(|c| *c >= 0x80) {
                        return Err(ProvisionError::Protocol {
                            operation,
                            reason: format!(
                                "subscribing to {accepted} and {rejected} was refused; the claim certificate's policy must allow them"
                            ),
                        });
                    }
                    break;
                }
                Packet::PingResp => {}
                other => {
                    return Err(ProvisionError::Protocol {
                        operation,
                        reason: format!("expected SUBACK, got {}", other.name()),
                    });
                }
            }
        }
        let pub_id = self.packet_id();
        self.send(
            &Packet::Publish(mqtt::Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: topic.to_string(),
                packet_id: Some(pub_id),
                properties: mqtt::Properties::default(),
                payload: Bytes::from(request.to_string()),
            }),
            operation,
        )
        .await?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.next(deadline, operation).await? {
                Packet::Publish(p) => {
                    if let Some(id) = p.packet_id {
                        self.send(
                            &Packet::PubAck(mqtt::Ack {
                                packet_id: id,
                                reason_code: 0,
                                properties: mqtt::Properties::default(),
                            }),
                            operation,
                        )
                        .await?;
                    }
                    let body: Value = serde_json::from_slice(&p.payload).map_err(|e| {
                        ProvisionError::Protocol {
                            operation,
                            reason: format!("the answer on {} is not JSON: {e}", p.topic),
                        }
                    })?;
                    if p.topic == accepted {
                        return Ok(body);
                    }
                    if p.topic == rejected {
                        let text = |k: &str| {
                            body.get(k)
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string()
                        };
                        return Err(ProvisionError::Rejected {
                            operation,
                            template: self.template.clone(),
                            status_code: body
                                .get("statusCode")
                                .and_then(Value::as_i64)
                                .unwrap_or(0),
                            error_code: text("errorCode"),
                            message: text("errorMessage"),
                        });
                    }
                }
                Packet::PubAck(a) if a.packet_id == pub_id => {}
                Packet::PubAck(_) | Packet::PingResp => {}
                other => {
                    return Err(ProvisionError::Protocol {
                        operation,
                        reason: format!("unexpected {} while waiting for the answer", other.name()),
                    });
                }
            }
        }
    }

    async fn disconnect(&mut self) {
        let _ = self
            .send(
                &Packet::Disconnect(mqtt::Disconnect {
                    reason_code: 0,
                    properties: mqtt::Properties::default(),
                }),
                "RegisterThing",
            )
            .await;
        let _ = self.stream.shutdown().await;
    }
}
