//! Deliveries out to a client: the in-flight window, packet identifiers, PUBLISH encoding and resends.

use super::{Conn, Transport, ack};
use crate::codec::{self, Packet, Properties, Publish, QoS};
use crate::state::{Delivery, Inflight};
use std::time::Instant;

impl<S: Transport> Conn<S> {
    /// Sends a delivery now, or queues it behind a full in-flight window.
    pub(super) fn deliver(&mut self, d: Delivery) {
        if !self.authorizer.receive(&self.ctx, &d.message.topic) {
            return;
        }
        if d.qos == QoS::AtMostOnce {
            self.send_publish(&d, None, false);
            return;
        }
        if self.data.inflight.len() >= self.client_receive_max || !self.data.pending.is_empty() {
            // Only retained messages on subscribe come here with a full window; their number
            // is bounded by the retained store, so this backlog needs no bound of its own.
            self.data.pending.push_back(d);
            self.fill_window();
            return;
        }
        self.start_inflight(d);
    }

    pub(super) fn start_inflight(&mut self, d: Delivery) {
        let Some(packet_id) = self.next_packet_id() else {
            self.data.pending.push_front(d);
            return;
        };
        if self.send_publish(&d, Some(packet_id), false) {
            self.data.inflight.push_back(Inflight {
                packet_id,
                delivery: d,
                released: false,
            });
        }
    }

    pub(super) fn fill_window(&mut self) {
        while self.data.inflight.len() < self.client_receive_max {
            let Some(d) = self.data.pending.pop_front() else {
                break;
            };
            self.start_inflight(d);
        }
    }

    pub(super) fn resend_inflight(&mut self) {
        let inflight: Vec<(u16, bool, Delivery)> = self
            .data
            .inflight
            .iter()
            .map(|i| (i.packet_id, i.released, i.delivery.clone()))
            .collect();
        for (packet_id, released, delivery) in inflight {
            if released {
                self.queue(&Packet::PubRel(ack(packet_id, 0)));
            } else {
                // Retransmissions are sent even if the message expired meanwhile: the exchange is under way.
                self.encode_publish(&delivery, Some(packet_id), true);
            }
        }
    }

    pub(super) fn next_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.data.next_packet_id = self.data.next_packet_id.wrapping_add(1).max(1);
            let id = self.data.next_packet_id;
            if !self.data.inflight.iter().any(|i| i.packet_id == id) {
                return Some(id);
            }
        }
        None
    }

    /// Encodes a PUBLISH unless the message expired or exceeds the client's maximum packet size.
    /// Returns whether it was sent.
    pub(super) fn send_publish(&mut self, d: &Delivery, packet_id: Option<u16>, dup: bool) -> bool {
        if d.message.expired(Instant::now()) {
            return false;
        }
        self.encode_publish(d, packet_id, dup)
    }

    pub(super) fn encode_publish(
        &mut self,
        d: &Delivery,
        packet_id: Option<u16>,
        dup: bool,
    ) -> bool {
        let m = &d.message;
        let mut properties = Properties::default();
        if self.v5() {
            properties = m.properties.clone();
            properties.subscription_identifiers = d.subscription_ids.clone();
            if let Some(t) = m.expires_at {
                let left = t.saturating_duration_since(Instant::now());
                properties.message_expiry_interval =
                    Some(left.as_secs().max(1).min(u64::from(u32::MAX)) as u32);
            }
        }
        let publish = Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: m.topic.clone(),
            packet_id,
            properties,
            payload: m.payload.clone(),
        };
        let start = self.wbuf.len();
        codec::encode(&Packet::Publish(publish), self.version, &mut self.wbuf);
        if self.wbuf.len() - start > self.client_max_packet {
            self.wbuf.truncate(start);
            tracing::debug!(
                client_id = self.ctx.client_id,
                topic = m.topic,
                "message exceeds the client's maximum packet size; dropped"
            );
            return false;
        }
        true
    }
}
