//! Who a client is, and the hook that decides what it may do.

use std::net::SocketAddr;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// What the broker knows about a client when it asks the [`Authorizer`].
#[derive(Debug, Clone)]
pub struct ClientContext {
    /// The MQTT client identifier (assigned by the broker if the client sent none).
    pub client_id: String,
    pub username: Option<String>,
    pub peer: SocketAddr,
    /// The verified TLS client certificate chain, leaf first; empty without one.
    pub certificate_chain: Vec<CertificateDer<'static>>,
    /// Whether a client without a certificate may connect (plain TCP on a loopback address only).
    pub anonymous_allowed: bool,
}

/// Decides connects, publishes and subscribes. Called on the connection's task: keep it quick.
pub trait Authorizer: Send + Sync + 'static {
    /// Whether the client identifier is one this client may present at all; checked before
    /// [`Authorizer::connect`], a refusal answers CONNACK 0x85 (3.1.1: 0x02, identifier rejected).
    fn client_id_acceptable(&self, _ctx: &ClientContext) -> bool {
        true
    }
    fn connect(&self, ctx: &ClientContext) -> bool;
    fn publish(&self, ctx: &ClientContext, topic: &str) -> bool;
    /// `filter` is the literal filter string, `$share/<group>/` prefix included.
    fn subscribe(&self, ctx: &ClientContext, filter: &str) -> bool;

    /// Whether this client may have a message on `topic` retained; asked besides
    /// [`Authorizer::publish`] for each retained PUBLISH and will.
    fn retain(&self, _ctx: &ClientContext, _topic: &str) -> bool {
        true
    }

    /// Whether a message on `topic` may be delivered to this client; checked at each delivery,
    /// a refused one is dropped without a word (the subscription stays).
    fn receive(&self, _ctx: &ClientContext, _topic: &str) -> bool {
        true
    }

    /// Whether an MQTT 3.1.1 client whose PUBLISH was refused is disconnected. 3.1.1 has no
    /// negative acknowledgement, so by default the message is acknowledged and dropped; a broker
    /// that must behave like AWS IoT Core closes the connection instead. MQTT 5 clients get
    /// reason code 0x87 either way.
    fn disconnect_on_refused_publish(&self, _ctx: &ClientContext) -> bool {
        false
    }

    /// Offers an authorized publish to the embedding service before it is routed. A taken one
    /// reaches no subscriber; a refused one (the service is behind) is answered as a quota
    /// refusal — PUBACK 0x97 on MQTT 5, the connection closed otherwise — never dropped silently.
    fn intercept(&self, _ctx: &ClientContext, _topic: &str, _payload: &bytes::Bytes) -> Intercept {
        Intercept::NotServed
    }
}

/// What the embedding service did with a publish offered to [`Authorizer::intercept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intercept {
    /// Not a topic the service serves: route it normally.
    NotServed,
    /// The service took it.
    Taken,
    /// The service serves the topic but cannot take more now.
    Busy,
}

/// Allows everything a connected client asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn connect(&self, _ctx: &ClientContext) -> bool {
        true
    }
    fn publish(&self, _ctx: &ClientContext, _topic: &str) -> bool {
        true
    }
    fn subscribe(&self, _ctx: &ClientContext, _filter: &str) -> bool {
        true
    }
}
