//! PUBLISH and SUBSCRIBE from a client: authorization, the broker's bounds (retained store,
//! subscriptions per session) and the acknowledgements that say how each went.

use super::{Conn, Transport, ack, forwarded};
use crate::auth::Intercept;
use crate::codec::{self, Packet, Properties, Publish, QoS, SubAck};
use crate::router::{Subscription, parse_shared};
use crate::state::{Delivery, Message, QUOTA_EXCEEDED, QuotaExceeded};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl<S: Transport> Conn<S> {
    pub(super) fn on_publish(&mut self, mut p: Publish) -> Result<(), Option<u8>> {
        if let Some(alias) = p.properties.topic_alias {
            if alias > self.core.config.topic_alias_maximum {
                return Err(Some(0x94));
            }
            if p.topic.is_empty() {
                match self.aliases.as_ref().and_then(|a| a.get(&alias)) {
                    Some(t) => p.topic = t.clone(),
                    None => return Err(Some(0x82)),
                }
            } else {
                self.aliases
                    .get_or_insert_default()
                    .insert(alias, p.topic.clone());
            }
        } else if p.topic.is_empty() {
            return Err(Some(0x82));
        }
        if p.qos == QoS::ExactlyOnce
            && let Some(id) = p.packet_id
            && self.data.incoming_qos2.contains(&id)
        {
            // A retransmission of a message already taken: acknowledge, do not route again.
            self.queue(&Packet::PubRec(ack(id, 0)));
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce
            && self.data.incoming_qos2.len() >= usize::from(self.core.config.receive_maximum)
        {
            return Err(Some(0x93));
        }
        let allowed = self.authorizer.publish(&self.ctx, &p.topic)
            && (!p.retain || self.authorizer.retain(&self.ctx, &p.topic));
        let mut reason = 0x87;
        let intercepted = if allowed {
            self.authorizer.intercept(&self.ctx, &p.topic, &p.payload)
        } else {
            Intercept::NotServed
        };
        if intercepted == Intercept::Taken {
            reason = 0x00;
        } else if intercepted == Intercept::Busy {
            tracing::info!(
                client_id = self.ctx.client_id,
                topic = p.topic,
                "publish refused: the service handling its topic is behind"
            );
            // QoS 0 may be lost by definition; a 3.1.1 client has no negative acknowledgement,
            // so it learns by the connection closing and sends again.
            if !self.v5() && p.qos != QoS::AtMostOnce {
                return Err(Some(QUOTA_EXCEEDED));
            }
            reason = QUOTA_EXCEEDED;
        } else if allowed {
            let topic = p.topic.clone();
            let now = Instant::now();
            let message = Arc::new(Message {
                expires_at: p
                    .properties
                    .message_expiry_interval
                    .map(|s| now + Duration::from_secs(u64::from(s))),
                properties: forwarded(&p.properties),
                topic: p.topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                publisher: self.ctx.client_id.clone(),
            });
            reason = match self.core.publish(message, &mut self.held_back) {
                Ok(0) => 0x10,
                Ok(_) => 0x00,
                Err(QuotaExceeded) => {
                    tracing::info!(
                        client_id = self.ctx.client_id,
                        topic,
                        "retained publication refused: the retained store is at its bound"
                    );
                    // Only an MQTT 5 acknowledgement can say so; otherwise the connection goes.
                    if !self.v5() || p.qos == QoS::AtMostOnce {
                        return Err(Some(QUOTA_EXCEEDED));
                    }
                    QUOTA_EXCEEDED
                }
            };
        } else {
            tracing::info!(client_id = self.ctx.client_id, "publish not authorized");
            if !self.v5() && self.authorizer.disconnect_on_refused_publish(&self.ctx) {
                return Err(None);
            }
        }
        let reason = if self.v5() { reason } else { 0 };
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.queue(&Packet::PubAck(ack(id, reason))),
            (QoS::ExactlyOnce, Some(id)) => {
                if reason < 0x80 {
                    self.data.incoming_qos2.insert(id);
                }
                self.queue(&Packet::PubRec(ack(id, reason)));
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn on_subscribe(&mut self, s: codec::Subscribe) -> Result<(), Option<u8>> {
        let v5 = self.v5();
        let identifier = s.properties.subscription_identifiers.first().copied();
        let mut reason_codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in &s.filters {
            let (shared, inner) = match parse_shared(filter) {
                Some((group, inner)) => {
                    if group.is_empty() || group.contains(['+', '#']) {
                        reason_codes.push(if v5 { 0x8F } else { 0x80 });
                        continue;
                    }
                    if options.no_local {
                        return Err(Some(0x82));
                    }
                    (true, inner)
                }
                None if filter.starts_with("$share/") || filter == "$share" => {
                    reason_codes.push(if v5 { 0x8F } else { 0x80 });
                    continue;
                }
                None => (false, filter.as_str()),
            };
            if codec::validate_topic_filter(inner).is_err() {
                reason_codes.push(if v5 { 0x8F } else { 0x80 });
                continue;
            }
            if !self.authorizer.subscribe(&self.ctx, filter) {
                reason_codes.push(if v5 { 0x87 } else { 0x80 });
                continue;
            }
            let sub = Subscription {
                options: *options,
                identifier,
            };
            let Ok((existed, matching)) = self.core.subscribe(&self.ctx.client_id, filter, sub)
            else {
                tracing::info!(
                    client_id = self.ctx.client_id,
                    filter,
                    "subscription refused: the session holds as many as it may"
                );
                reason_codes.push(if v5 { QUOTA_EXCEEDED } else { 0x80 });
                continue;
            };
            reason_codes.push(options.qos as u8);
            let send_retained = !shared
                && (options.retain_handling == 0 || (options.retain_handling == 1 && !existed));
            if send_retained {
                for message in matching {
                    retained.push(Delivery {
                        qos: message.qos.min(options.qos),
                        message,
                        retain: true,
                        subscription_ids: identifier.into_iter().collect(),
                    });
                }
            }
        }
        let ack = SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            reason_codes,
        };
        self.queue(&Packet::SubAck(ack));
        for d in retained {
            self.deliver(d);
        }
        Ok(())
    }
}
