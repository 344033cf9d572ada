//! Device connection lifecycle: what the endpoint tells the service when a device's CONNECT is
//! allowed and when its connection ends, from which AWS IoT's lifecycle events
//! (`$aws/events/presence/connected|disconnected/<clientId>`) and the fleet's connection state
//! are built.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One change of a device connection's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    Connected {
        client_id: String,
        /// The attached thing named as the client id, if any.
        thing_name: Option<String>,
        certificate_id: String,
        /// Unique per connection; a disconnect names the connection it ends.
        session_id: String,
        peer: SocketAddr,
        timestamp_ms: i64,
    },
    Disconnected {
        client_id: String,
        thing_name: Option<String>,
        certificate_id: String,
        session_id: String,
        /// AWS IoT's `disconnectReason`: `CONNECTION_LOST`, `DUPLICATE_CLIENTID`,
        /// `AUTHORIZATION_FAILURE` or `SERVER_INITIATED_DISCONNECT`.
        reason: &'static str,
        timestamp_ms: i64,
    },
}

impl PresenceEvent {
    pub fn client_id(&self) -> &str {
        match self {
            PresenceEvent::Connected { client_id, .. }
            | PresenceEvent::Disconnected { client_id, .. } => client_id,
        }
    }

    /// The lifecycle event's topic: `$aws/events/presence/<connected|disconnected>/<clientId>`.
    pub fn topic(&self) -> String {
        match self {
            PresenceEvent::Connected { client_id, .. } => {
                format!("$aws/events/presence/connected/{client_id}")
            }
            PresenceEvent::Disconnected { client_id, .. } => {
                format!("$aws/events/presence/disconnected/{client_id}")
            }
        }
    }

    /// The lifecycle event's JSON payload, in AWS IoT's shape. `principalIdentifier` is the
    /// certificate id (AWS IoT's for certificate-authenticated clients).
    pub fn payload(&self) -> String {
        fn esc(s: &str) -> String {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        match self {
            PresenceEvent::Connected {
                client_id,
                certificate_id,
                session_id,
                peer,
                timestamp_ms,
                ..
            } => format!(
                "{{\"clientId\":{},\"timestamp\":{timestamp_ms},\"eventType\":\"connected\",\
                 \"sessionIdentifier\":{},\"principalIdentifier\":{},\"ipAddress\":{},\
                 \"versionNumber\":0}}",
                esc(client_id),
                esc(session_id),
                esc(certificate_id),
                esc(&peer.ip().to_string()),
            ),
            PresenceEvent::Disconnected {
                client_id,
                certificate_id,
                session_id,
                reason,
                timestamp_ms,
                ..
            } => format!(
                "{{\"clientId\":{},\"timestamp\":{timestamp_ms},\"eventType\":\"disconnected\",\
                 \"clientInitiatedDisconnect\":false,\"sessionIdentifier\":{},\
                 \"principalIdentifier\":{},\"disconnectReason\":{},\"versionNumber\":0}}",
                esc(client_id),
                esc(session_id),
                esc(certificate_id),
                esc(reason),
            ),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A connection's session identifier: 32 hex digits, unique within this process and unlikely
/// to repeat across processes (start time mixed in).
pub(crate) fn session_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{t:016x}{:016x}", n ^ u64::from(std::process::id()) << 40)
}
