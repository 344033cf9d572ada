//! Raw MQTT over real sockets with the crate's own codec, shared by the broker's integration tests.

#![allow(dead_code)] // each test binary uses its own subset

use bytes::BytesMut;
use lichen_broker::codec::{
    self, Packet, Properties, QoS, Subscribe, SubscriptionOptions, Version,
};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The next packet from `stream` (bytes already read wait in `buf`); `Ok(None)` once the broker
/// closed (or reset) the connection, `Err(())` if nothing came within `within`.
pub async fn read_packet<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    version: Version,
    within: Duration,
) -> Result<Option<Packet>, ()> {
    tokio::time::timeout(within, async {
        loop {
            if let Some((p, used)) =
                codec::decode(buf, Some(version), usize::MAX).expect("valid packet from the broker")
            {
                let _ = buf.split_to(used);
                return Some(p);
            }
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| ())
}

/// Writes `packets` in one write.
pub async fn write_packets<W: AsyncWrite + Unpin>(w: &mut W, version: Version, packets: &[Packet]) {
    let mut out = BytesMut::new();
    for p in packets {
        codec::encode(p, version, &mut out);
    }
    w.write_all(&out).await.expect("write");
}

/// SUBSCRIBE (packet id 1) to one filter at `qos`, with default options.
pub fn subscribe_packet(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            },
        )],
    })
}
