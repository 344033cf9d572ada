//! A minimal MQTT 3.1.1 client for load: connect, subscribe, publish, read packets.

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use lichen_mqtt::{
    self as codec, Ack, Connect, Packet, Properties, Publish, QoS, Subscribe, SubscriptionOptions,
    Version,
};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const VERSION: Version = Version::V311;

/// The reading half: decodes packets from the broker.
pub struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
}

impl Reader {
    /// The next packet, or `None` once the broker closed the connection.
    pub async fn next(&mut self) -> anyhow::Result<Option<Packet>> {
        loop {
            if let Some((packet, used)) = codec::decode(&self.buf, Some(VERSION), usize::MAX)
                .context("invalid packet from the broker")?
            {
                self.buf.advance(used);
                return Ok(Some(packet));
            }
            self.buf.reserve(64 * 1024);
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// A packet already read, without waiting for the socket.
    pub fn buffered(&mut self) -> anyhow::Result<Option<Packet>> {
        match codec::decode(&self.buf, Some(VERSION), usize::MAX)
            .context("invalid packet from the broker")?
        {
            Some((packet, used)) => {
                self.buf.advance(used);
                Ok(Some(packet))
            }
            None => Ok(None),
        }
    }
}

/// The writing half: encodes packets into a buffer and writes it out in one go.
pub struct Writer {
    half: OwnedWriteHalf,
    pub buf: BytesMut,
}

impl Writer {
    pub fn queue(&mut self, packet: &Packet) {
        codec::encode(packet, VERSION, &mut self.buf);
    }

    pub fn queue_publish(&mut self, topic: &str, qos: QoS, packet_id: u16, payload: Bytes) {
        self.queue(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned(),
            packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
            properties: Properties::default(),
            payload,
        }));
    }

    pub fn queue_puback(&mut self, packet_id: u16) {
        self.queue(&Packet::PubAck(Ack {
            packet_id,
            reason_code: 0,
            properties: Properties::default(),
        }));
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Connects with a clean session and waits for a successful CONNACK.
pub async fn connect(addr: SocketAddr, client_id: &str) -> anyhow::Result<(Reader, Writer)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = Reader {
        half: r,
        buf: BytesMut::new(),
    };
    let mut writer = Writer {
        half: w,
        buf: BytesMut::new(),
    };
    writer.queue(&Packet::Connect(Connect {
        version: VERSION,
        clean_start: true,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
    }));
    writer.flush().await?;
    match reader.next().await? {
        Some(Packet::ConnAck(a)) if a.reason_code == 0 => Ok((reader, writer)),
        Some(Packet::ConnAck(a)) => bail!("{client_id}: CONNACK refused with {}", a.reason_code),
        other => bail!("{client_id}: expected CONNACK, got {other:?}"),
    }
}

/// Subscribes to one filter and waits for the SUBACK.
pub async fn subscribe(
    reader: &mut Reader,
    writer: &mut Writer,
    filter: &str,
    qos: QoS,
) -> anyhow::Result<()> {
    writer.queue(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            filter.to_owned(),
            SubscriptionOptions {
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            },
        )],
    }));
    writer.flush().await?;
    match reader.next().await? {
        Some(Packet::SubAck(a)) if a.reason_codes.first() == Some(&(qos as u8)) => Ok(()),
        other => bail!("subscribe {filter}: expected SUBACK granting {qos:?}, got {other:?}"),
    }
}
