//! The service side of the endpoint: topics served by in-process handlers, and the in-process
//! client that publishes for the service.

use bytes::{Bytes, BytesMut};
use lichen_broker::Intercept;
use lichen_broker::codec::{self, Connect, Packet, Properties, Publish, QoS, Version};
use std::sync::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// The client id of the service's own connection; no device may use it.
pub(crate) const SERVICE_CLIENT_ID: &str = "$lichen/fleet-service";
/// Device publishes queued for one handler before more are dropped.
const ROUTE_QUEUE: usize = 1024;

/// A device's publish on a topic a service handler serves, with who sent it.
#[derive(Debug, Clone)]
pub struct DevicePublish {
    pub topic: String,
    pub payload: Bytes,
    pub client_id: String,
    pub certificate_id: String,
    /// The attached thing the device connected as, if any.
    pub thing_name: Option<String>,
}

/// Device publishes on the topics a handler serves ([`crate::DeviceEndpoint::serve_topics`]).
/// Dropping it stops serving them.
pub struct ServiceTopics {
    rx: mpsc::Receiver<DevicePublish>,
}

impl ServiceTopics {
    /// The next device publish; `None` once the endpoint is gone.
    pub async fn recv(&mut self) -> Option<DevicePublish> {
        self.rx.recv().await
    }

    /// The next device publish if one is already waiting (a handler batching its work).
    pub fn try_recv(&mut self) -> Option<DevicePublish> {
        self.rx.try_recv().ok()
    }
}

struct Route {
    filter: String,
    tx: mpsc::Sender<DevicePublish>,
}

/// The filters handlers serve.
#[derive(Default)]
pub(crate) struct Routes {
    routes: RwLock<Vec<Route>>,
}

impl Routes {
    pub(crate) fn add(&self, filter: &str) -> ServiceTopics {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.retain(|r| !r.tx.is_closed());
        routes.push(Route {
            filter: filter.to_owned(),
            tx,
        });
        ServiceTopics { rx }
    }

    /// Whether a live handler serves `topic`.
    pub(crate) fn serves(&self, topic: &str) -> bool {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes
            .iter()
            .any(|r| !r.tx.is_closed() && filter_matches(&r.filter, topic))
    }

    /// Hands `publish` to every live handler serving its topic. `Busy` when a handler's queue
    /// is full: the device is refused (PUBACK 0x97, or its 3.1.1 connection closed) rather than
    /// the message being dropped unseen.
    pub(crate) fn dispatch(&self, publish: DevicePublish) -> Intercept {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let live: Vec<&Route> = routes
            .iter()
            .filter(|r| !r.tx.is_closed() && filter_matches(&r.filter, &publish.topic))
            .collect();
        if live.is_empty() {
            return Intercept::NotServed;
        }
        // All or none: reserve a slot in every queue first, so no handler sees a message
        // that another one refused.
        let mut permits = Vec::with_capacity(live.len());
        for r in &live {
            match r.tx.try_reserve() {
                Ok(p) => permits.push(p),
                Err(_) => {
                    tracing::warn!(
                        topic = publish.topic,
                        client_id = publish.client_id,
                        "service handler for {:?} is behind; device publish refused",
                        r.filter
                    );
                    return Intercept::Busy;
                }
            }
        }
        for p in permits {
            p.send(publish.clone());
        }
        Intercept::Taken
    }
}

/// MQTT topic filter matching (`+` one level, `#` the rest); `$` topics only by filters that
/// name their first level.
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The service's publishes, written by one task to its in-process broker connection.
#[derive(Clone)]
pub(crate) struct ServiceClient {
    tx: mpsc::Sender<Publish>,
}

impl ServiceClient {
    /// Connects to the broker over `stream` (an in-process connection) and serves publishes
    /// until the endpoint or the broker goes.
    pub(crate) fn start(stream: DuplexStream) -> ServiceClient {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run(stream, rx));
        ServiceClient { tx }
    }

    pub(crate) async fn publish(&self, publish: Publish) -> bool {
        self.tx.send(publish).await.is_ok()
    }
}

async fn run(mut stream: DuplexStream, mut rx: mpsc::Receiver<Publish>) {
    let mut out = BytesMut::new();
    let connect = Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: SERVICE_CLIENT_ID.into(),
        will: None,
        username: None,
        password: None,
    };
    codec::encode(&Packet::Connect(connect), Version::V5, &mut out);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let mut inbuf = BytesMut::new();
    let mut next_id: u16 = 0;
    loop {
        tokio::select! {
            p = rx.recv() => {
                let Some(mut p) = p else { return };
                if p.qos != QoS::AtMostOnce {
                    next_id = next_id.wrapping_add(1).max(1);
                    p.packet_id = Some(next_id);
                }
                out.clear();
                codec::encode(&Packet::Publish(p), Version::V5, &mut out);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
            r = stream.read_buf(&mut inbuf) => {
                if matches!(r, Ok(0) | Err(_)) {
                    return;
                }
                // Acknowledgements are all that comes back; nothing waits on them.
                loop {
                    match codec::decode(&inbuf, Some(Version::V5), usize::MAX) {
                        Ok(Some((packet, used))) => {
                            let _ = inbuf.split_to(used);
                            if let Packet::ConnAck(a) = &packet
                                && a.reason_code != 0
                            {
                                tracing::error!(reason = a.reason_code, "the broker refused the fleet service's connection");
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!("fleet service connection: {e}");
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DevicePublish, Intercept, ROUTE_QUEUE, Routes, filter_matches};

    fn publish(topic: &str) -> DevicePublish {
        DevicePublish {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"{}"),
            client_id: "d".into(),
            certificate_id: "c".into(),
            thing_name: Some("d".into()),
        }
    }

    #[tokio::test]
    async fn a_full_handler_refuses_instead_of_dropping() {
        let routes = Routes::default();
        let mut a = routes.add("$aws/things/+/jobs/#");
        let _b = routes.add("$aws/things/+/#");
        let topic = "$aws/things/d/jobs/get";
        for _ in 0..ROUTE_QUEUE {
            assert_eq!(routes.dispatch(publish(topic)), Intercept::Taken);
        }
        assert_eq!(routes.dispatch(publish(topic)), Intercept::Busy);
        assert_eq!(
            routes.dispatch(publish("other/topic")),
            Intercept::NotServed
        );
        // Room in one handler only is not room: the second is still full.
        a.recv().await.expect("queued publish");
        assert_eq!(routes.dispatch(publish(topic)), Intercept::Busy);
        // Every publish a handler holds is one the device was told was taken.
        let mut held = 1;
        while a.try_recv().is_some() {
            held += 1;
        }
        assert_eq!(held, ROUTE_QUEUE);
    }

    #[test]
    fn filters() {
        assert!(filter_matches(
            "$aws/things/+/shadow/update",
            "$aws/things/t/shadow/update"
        ));
        assert!(filter_matches(
            "$aws/certificates/create/json",
            "$aws/certificates/create/json"
        ));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(!filter_matches("#", "$aws/x"));
        assert!(!filter_matches("a/b", "a/b/c"));
    }
}
