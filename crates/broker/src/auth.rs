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
