//! The fleet's device MQTT endpoint: the broker (`lichen-broker`) behind mutual TLS, with every
//! CONNECT, PUBLISH, SUBSCRIBE and delivery authorized by the AWS IoT policies attached to the
//! device's certificate, as AWS IoT Core's message broker does.
//!
//! - **TLS.** One listener; a client must present a certificate that chains to one of the fleet's
//!   CAs, or the handshake fails. ALPN `x-amzn-mqtt-ca` (what the AWS device SDK offers) and
//!   `mqtt` are accepted, as is no ALPN at all.
//! - **Certificate.** Its id is the lower-case hex SHA-256 of its DER. The endpoint asks the
//!   [`DeviceDirectory`] for it once the handshake is done; a certificate the directory does not
//!   know, or one that is not `ACTIVE`, gets CONNACK "not authorized".
//! - **CONNECT** needs `iot:Connect` on `client/<clientId>`. Besides, a certificate attached to
//!   things connects as one of them (the client id is the thing's name) unless an `Allow` names the
//!   client id without wildcards (`client/sensor-7`, or `client/${iot:ClientId}`): the policy then
//!   says otherwise. A certificate attached to no thing (a provisioning claim) is bound by its
//!   policy alone. `${iot:Connection.Thing.*}` refer to the attached thing named as the client id.
//! - **PUBLISH** needs `iot:Publish` on `topic/<topic>`. Refused: MQTT 5 gets PUBACK 0x87, MQTT
//!   3.1.1 is disconnected (3.1.1 has no negative acknowledgement; AWS IoT closes the connection).
//!   A retained PUBLISH (or will) needs `iot:RetainPublish` on the same resource as well.
//!   Topics under `$aws/` are the service's: a device may publish there only to topics a service
//!   handler serves ([`DeviceEndpoint::serve_topics`]), and only as its policy allows.
//! - **SUBSCRIBE** needs `iot:Subscribe` on `topicfilter/<filter>` for each filter; a refused one
//!   gets 0x87 (MQTT 5) or 0x80 (3.1.1) in the SUBACK, the others are granted.
//! - **Delivery** needs `iot:Receive` on `topic/<topic>`, checked per message; a refused one is not
//!   delivered, silently.
//! - **Changes.** [`DeviceEndpoint::certificate_changed`] reloads a certificate for the devices
//!   connected with it and disconnects those whose certificate is no longer `ACTIVE` or whose
//!   CONNECT is no longer allowed; the rest go on under the new policies. A periodic recheck
//!   ([`EndpointConfig::recheck_interval`]) catches changes made by another fleet process.
//! - **Presence.** [`DeviceEndpoint::presence`] reports each allowed CONNECT and each end of a
//!   connection that had one ([`PresenceEvent`], with AWS IoT's lifecycle event topic and
//!   payload); a connection that lost its client id to a newer one ends as `DUPLICATE_CLIENTID`.
//!
//! Architecture invariant: a device connection never acts on more than its certificate's current
//! record allows: each check reads the record the endpoint last loaded, and an unknown, inactive or
//! revoked certificate is refused everything.
//! Architecture invariant: this crate knows the registry only through [`DeviceDirectory`].

mod authz;
mod endpoint;
mod presence;
mod service;

pub use endpoint::{DeviceEndpoint, EndpointConfig, EndpointError, certificate_id};
pub use lichen_broker::codec::QoS;
pub use presence::PresenceEvent;
pub use service::{DevicePublish, ServiceTopics};

use std::collections::BTreeMap;
use std::future::Future;

/// A certificate's status, as the registry keeps it (`UpdateCertificate`'s `newStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStatus {
    Active,
    Inactive,
    Revoked,
    PendingTransfer,
    RegisterInactive,
    PendingActivation,
}

/// A thing attached to a certificate, with what policy variables may refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceThing {
    pub name: String,
    pub thing_type: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// What the endpoint needs to know about a registered certificate.
#[derive(Debug, Clone)]
pub struct DeviceCertificate {
    /// Lower-case hex SHA-256 of the certificate's DER ([`certificate_id`]).
    pub id: String,
    pub status: CertificateStatus,
    /// The things attached to it (AttachThingPrincipal).
    pub things: Vec<DeviceThing>,
    /// The policies attached to it (AttachPolicy), and to thing groups its things are in
    /// where the registry supports that: all are evaluated together.
    pub policies: Vec<lichen_fleet_policy::Policy>,
}

/// The registry could not answer; the device is turned away (and may retry).
#[derive(Debug, Clone, thiserror::Error)]
#[error("device directory: {0}")]
pub struct DirectoryError(pub String);

/// The registry as the endpoint sees it.
pub trait DeviceDirectory: Send + Sync + 'static {
    /// The registered certificate with this id (lower-case hex SHA-256 of its DER), if any.
    fn certificate(
        &self,
        certificate_id: &str,
    ) -> impl Future<Output = Result<Option<DeviceCertificate>, DirectoryError>> + Send;
}
