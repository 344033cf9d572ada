//! The broker's [`Authorizer`] for device connections: each check reads the record of the
//! connection's certificate and evaluates its policies.

use crate::presence::{PresenceEvent, now_ms};
use crate::service::{DevicePublish, Routes, SERVICE_CLIENT_ID};
use crate::{CertificateStatus, DeviceCertificate};
use bytes::Bytes;
use lichen_broker::{Authorizer, ClientContext, Intercept};
use lichen_fleet_policy::{Arns, Context, Decision, ThingContext, evaluate};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};

/// One device connection: its certificate and what the endpoint last loaded for it.
pub(crate) struct DeviceConn {
    pub certificate_id: String,
    /// `None`: the certificate is not registered (everything is refused).
    pub record: RwLock<Option<Arc<DeviceCertificate>>>,
    /// Set once its CONNECT was allowed.
    pub client_id: Mutex<Option<String>>,
    /// Its lifecycle events' `sessionIdentifier`.
    pub session_id: String,
    /// Told to go because its certificate or policy no longer lets it connect.
    pub kicked: std::sync::atomic::AtomicBool,
}

impl DeviceConn {
    pub(crate) fn record(&self) -> Option<Arc<DeviceCertificate>> {
        self.record
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub(crate) struct FleetAuthorizer {
    pub arns: Arns,
    /// Live device connections by peer address (unique among live TCP connections).
    pub conns: RwLock<HashMap<SocketAddr, Arc<DeviceConn>>>,
    /// Which connection holds each client id, so that a change to one certificate never
    /// disconnects a newer connection that took the client id over.
    pub owners: Mutex<HashMap<String, Weak<DeviceConn>>>,
    pub routes: Arc<Routes>,
    /// Lifecycle events, for whoever listens ([`crate::DeviceEndpoint::presence`]).
    pub presence: tokio::sync::broadcast::Sender<PresenceEvent>,
}

/// An active certificate's record and the policy context of a request by `client_id`.
fn context<'a>(record: &'a DeviceCertificate, client_id: &'a str) -> Context<'a> {
    let thing = record
        .things
        .iter()
        .find(|t| t.name == client_id)
        .map(|t| ThingContext {
            name: &t.name,
            type_name: t.thing_type.as_deref(),
            attributes: &t.attributes,
        });
    Context {
        client_id: Some(client_id),
        thing,
    }
}

/// Whether `record` lets `client_id` connect (see the crate doc for the rule).
pub(crate) fn may_connect(arns: &Arns, record: &DeviceCertificate, client_id: &str) -> bool {
    if record.status != CertificateStatus::Active || client_id == SERVICE_CLIENT_ID {
        return false;
    }
    let ctx = context(record, client_id);
    match evaluate(
        &record.policies,
        "iot:Connect",
        &arns.client(client_id),
        &ctx,
    ) {
        Decision::Allow { literal } => record.things.is_empty() || ctx.thing.is_some() || literal,
        Decision::ExplicitDeny | Decision::ImplicitDeny => false,
    }
}

impl FleetAuthorizer {
    fn conn(&self, ctx: &ClientContext) -> Option<Arc<DeviceConn>> {
        self.conns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ctx.peer)
            .cloned()
    }

    /// The active record of the connection `ctx` describes.
    fn active(&self, ctx: &ClientContext) -> Option<(Arc<DeviceConn>, Arc<DeviceCertificate>)> {
        let conn = self.conn(ctx)?;
        let record = conn.record()?;
        (record.status == CertificateStatus::Active).then_some((conn, record))
    }

    fn allowed(&self, ctx: &ClientContext, action: &str, resource: &str) -> bool {
        let Some((_, record)) = self.active(ctx) else {
            return false;
        };
        let pctx = context(&record, &ctx.client_id);
        evaluate(&record.policies, action, resource, &pctx).is_allowed()
    }

    /// Forgets a connection that ended.
    pub(crate) fn remove(&self, peer: SocketAddr, conn: &Arc<DeviceConn>) {
        let mut conns = self.conns.write().unwrap_or_else(|e| e.into_inner());
        if conns.get(&peer).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            conns.remove(&peer);
        }
        drop(conns);
        if let Some(id) = conn
            .client_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            if owners
                .get(id)
                .is_some_and(|w| w.as_ptr() == Arc::as_ptr(conn))
            {
                owners.remove(id);
            }
        }
    }

    /// Whether `conn` still holds the client id it connected with.
    pub(crate) fn owns(&self, conn: &Arc<DeviceConn>) -> bool {
        let Some(id) = conn
            .client_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return false;
        };
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners
            .get(&id)
            .and_then(Weak::upgrade)
            .is_some_and(|o| Arc::ptr_eq(&o, conn))
    }
}

impl Authorizer for FleetAuthorizer {
    fn connect(&self, ctx: &ClientContext) -> bool {
        let Some(conn) = self.conn(ctx) else {
            return false;
        };
        let Some(record) = conn.record() else {
            tracing::info!(peer = %ctx.peer, certificate = conn.certificate_id, "refused: certificate not registered");
            return false;
        };
        if !may_connect(&self.arns, &record, &ctx.client_id) {
            tracing::info!(peer = %ctx.peer, client_id = ctx.client_id, certificate = conn.certificate_id, status = ?record.status, "refused: not authorized to connect");
            return false;
        }
        *conn.client_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.client_id.clone());
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ctx.client_id.clone(), Arc::downgrade(&conn));
        // No listener is fine: nobody asked for lifecycle events.
        let _ = self.presence.send(PresenceEvent::Connected {
            client_id: ctx.client_id.clone(),
            thing_name: record
                .things
                .iter()
                .find(|t| t.name == ctx.client_id)
                .map(|t| t.name.clone()),
            certificate_id: conn.certificate_id.clone(),
            session_id: conn.session_id.clone(),
            peer: ctx.peer,
            timestamp_ms: now_ms(),
        });
        true
    }

    fn publish(&self, ctx: &ClientContext, topic: &str) -> bool {
        // The service's topics: only those a handler serves take device publishes.
        if topic.starts_with("$aws/") && !self.routes.serves(topic) {
            return false;
        }
        self.allowed(ctx, "iot:Publish", &self.arns.topic(topic))
    }

    fn retain(&self, ctx: &ClientContext, topic: &str) -> bool {
        self.allowed(ctx, "iot:RetainPublish", &self.arns.topic(topic))
    }

    fn subscribe(&self, ctx: &ClientContext, filter: &str) -> bool {
        self.allowed(ctx, "iot:Subscribe", &self.arns.topic_filter(filter))
    }

    fn receive(&self, ctx: &ClientContext, topic: &str) -> bool {
        self.allowed(ctx, "iot:Receive", &self.arns.topic(topic))
    }

    fn disconnect_on_refused_publish(&self, _ctx: &ClientContext) -> bool {
        true
    }

    fn intercept(&self, ctx: &ClientContext, topic: &str, payload: &Bytes) -> Intercept {
        if !self.routes.serves(topic) {
            return Intercept::NotServed;
        }
        let Some((conn, record)) = self.active(ctx) else {
            return Intercept::NotServed;
        };
        let thing_name = record
            .things
            .iter()
            .find(|t| t.name == ctx.client_id)
            .map(|t| t.name.clone());
        self.routes.dispatch(DevicePublish {
            topic: topic.to_owned(),
            payload: payload.clone(),
            client_id: ctx.client_id.clone(),
            certificate_id: conn.certificate_id.clone(),
            thing_name,
        })
    }
}
