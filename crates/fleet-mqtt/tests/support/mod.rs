//! A test fleet: a CA and device certificates made at run time, an in-memory directory, the
//! endpoint on an ephemeral loopback port, and a raw MQTT client over mutual TLS.

#![allow(dead_code)] // each test binary uses its own subset

use bytes::{Bytes, BytesMut};
use lichen_broker::BrokerConfig;
use lichen_broker::codec::{
    self, Connect, Packet, Properties, Publish, QoS, Subscribe, SubscriptionOptions, Version,
};
use lichen_broker::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use lichen_broker::rustls::{self, ClientConfig, RootCertStore};
use lichen_fleet_mqtt::{
    CertificateStatus, DeviceCertificate, DeviceDirectory, DeviceEndpoint, DeviceThing,
    DirectoryError, EndpointConfig, certificate_id,
};
use lichen_fleet_policy::Policy;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(400);

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose) -> Credentials {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Credentials {
            id: certificate_id(cert.der()),
            der: cert.der().clone(),
            key: key.serialize_der(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A device certificate (client authentication).
    pub fn device(&self, cn: &str) -> Credentials {
        self.issue(Vec::new(), cn, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A certificate and its key.
pub struct Credentials {
    pub id: String,
    pub der: CertificateDer<'static>,
    key: Vec<u8>,
    pub pem: String,
    pub key_pem: String,
}

impl Credentials {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// The registry, in memory.
#[derive(Default)]
pub struct MemDirectory {
    certs: Mutex<HashMap<String, DeviceCertificate>>,
}

impl MemDirectory {
    pub fn put(&self, cert: DeviceCertificate) {
        self.certs.lock().unwrap().insert(cert.id.clone(), cert);
    }

    pub fn update(&self, id: &str, f: impl FnOnce(&mut DeviceCertificate)) {
        f(self.certs.lock().unwrap().get_mut(id).expect("registered"));
    }
}

impl DeviceDirectory for MemDirectory {
    async fn certificate(&self, id: &str) -> Result<Option<DeviceCertificate>, DirectoryError> {
        Ok(self.certs.lock().unwrap().get(id).cloned())
    }
}

pub fn policy(name: &str, document: &str) -> Policy {
    Policy::parse(name, document).unwrap()
}

pub fn thing(name: &str) -> DeviceThing {
    DeviceThing {
        name: name.into(),
        thing_type: None,
        attributes: BTreeMap::new(),
    }
}

/// The policy AWS documents for a device acting under its own thing name.
pub fn thing_policy() -> Policy {
    policy(
        "thing-policy",
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
            {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"arn:aws:iot:*:*:topic/dev/${iot:Connection.Thing.ThingName}/*"},
            {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:*:*:topicfilter/dev/${iot:Connection.Thing.ThingName}/*"}]}"#,
    )
}

pub struct Fleet {
    pub ca: Ca,
    pub endpoint: DeviceEndpoint,
    pub dir: Arc<MemDirectory>,
    pub addr: SocketAddr,
}

impl Fleet {
    pub async fn start() -> Fleet {
        Fleet::start_with(None).await
    }

    pub async fn start_with(recheck_interval: Option<Duration>) -> Fleet {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info")
            .try_init();
        let ca = Ca::new("Fleet CA");
        let server = ca.issue(
            vec!["localhost".into(), "127.0.0.1".into()],
            "fleet endpoint",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let dir = Arc::new(MemDirectory::default());
        let config = EndpointConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            server_chain: vec![server.der.clone()],
            server_key: server.key(),
            client_cas: vec![ca.der()],
            region: "eu-west-1".into(),
            account: "123456789012".into(),
            broker: BrokerConfig::default(),
            recheck_interval,
        };
        let endpoint = DeviceEndpoint::start(config, dir.clone()).await.unwrap();
        let addr = endpoint.local_addr();
        Fleet {
            ca,
            endpoint,
            dir,
            addr,
        }
    }

    /// A new device certificate, registered with `status`, these things and policies.
    pub fn register(
        &self,
        cn: &str,
        status: CertificateStatus,
        things: &[&str],
        policies: Vec<Policy>,
    ) -> Credentials {
        let creds = self.ca.device(cn);
        self.dir.put(DeviceCertificate {
            id: creds.id.clone(),
            status,
            things: things.iter().map(|t| thing(t)).collect(),
            policies,
        });
        creds
    }

    /// Opens mutual TLS (or TLS without a client certificate) offering `alpn`.
    pub async fn tls(
        &self,
        creds: Option<&Credentials>,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let mut config = match creds {
            Some(c) => builder
                .with_client_auth_cert(vec![c.der.clone()], c.key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let socket = TcpStream::connect(self.addr).await?;
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), socket)
            .await
    }

    /// Connects as `client_id` with `creds` over MQTT `version`.
    pub async fn connect(
        &self,
        creds: Option<&Credentials>,
        client_id: &str,
        version: Version,
    ) -> Outcome {
        self.connect_alpn(creds, client_id, version, &[]).await
    }

    pub async fn connect_alpn(
        &self,
        creds: Option<&Credentials>,
        client_id: &str,
        version: Version,
        alpn: &[&[u8]],
    ) -> Outcome {
        let Ok(stream) = self.tls(creds, alpn).await else {
            return Outcome::Closed;
        };
        let mut client = Client {
            stream,
            buf: BytesMut::new(),
            version,
            next_id: 0,
        };
        let connect = Connect {
            version,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: client_id.into(),
            will: None,
            username: Some("?SDK=Python&Version=1.31.0".into()),
            password: None,
        };
        if client.send(Packet::Connect(connect)).await.is_err() {
            return Outcome::Closed;
        }
        match client.next(WAIT).await {
            Ok(Some(Packet::ConnAck(a))) if a.reason_code == 0 => {
                Outcome::Accepted(Box::new(client))
            }
            Ok(Some(Packet::ConnAck(a))) => Outcome::Refused(a.reason_code),
            Ok(None) => Outcome::Closed,
            other => panic!("expected CONNACK or a close, got {other:?}"),
        }
    }
}

pub enum Outcome {
    Accepted(Box<Client>),
    /// CONNACK with this code.
    Refused(u8),
    /// The TLS handshake failed or the connection closed before any CONNACK.
    Closed,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Accepted(_) => write!(f, "Accepted"),
            Outcome::Refused(c) => write!(f, "Refused({c:#04x})"),
            Outcome::Closed => write!(f, "Closed"),
        }
    }
}

impl Outcome {
    pub fn accepted(self) -> Client {
        match self {
            Outcome::Accepted(c) => *c,
            other => panic!("expected the connection to be accepted, got {other:?}"),
        }
    }
}

pub struct Client {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    version: Version,
    next_id: u16,
}

impl Client {
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.get_ref().1.alpn_protocol().map(|p| p.to_vec())
    }

    pub async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        codec::encode(&packet, self.version, &mut out);
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// The next packet; `Ok(None)` once the endpoint closed the connection, `Err(())` if
    /// nothing came within `within`.
    pub async fn next(&mut self, within: Duration) -> Result<Option<Packet>, ()> {
        tokio::time::timeout(within, async {
            loop {
                if let Some((p, used)) = codec::decode(&self.buf, Some(self.version), usize::MAX)
                    .expect("valid packet from the endpoint")
                {
                    let _ = self.buf.split_to(used);
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .map_err(|_| ())
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Publishes at QoS 1 and returns the PUBACK's reason code; `None` if the connection closed.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> Option<u8> {
        self.publish_with(topic, payload, false).await
    }

    /// As [`Client::publish`], retained.
    pub async fn publish_retained(&mut self, topic: &str, payload: &[u8]) -> Option<u8> {
        self.publish_with(topic, payload, true).await
    }

    async fn publish_with(&mut self, topic: &str, payload: &[u8], retain: bool) -> Option<u8> {
        let id = self.id();
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain,
            topic: topic.into(),
            packet_id: Some(id),
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload),
        };
        self.send(Packet::Publish(p)).await.ok()?;
        loop {
            match self.next(WAIT).await.expect("an answer to PUBLISH") {
                Some(Packet::PubAck(a)) if a.packet_id == id => return Some(a.reason_code),
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// Subscribes to `filters` at QoS 1; the SUBACK's reason codes.
    pub async fn subscribe(&mut self, filters: &[&str]) -> Vec<u8> {
        let id = self.id();
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        };
        let s = Subscribe {
            packet_id: id,
            properties: Properties::default(),
            filters: filters.iter().map(|f| (f.to_string(), options)).collect(),
        };
        self.send(Packet::Subscribe(s))
            .await
            .expect("SUBSCRIBE sent");
        loop {
            match self.next(WAIT).await.expect("a SUBACK") {
                Some(Packet::SubAck(a)) if a.packet_id == id => return a.reason_codes,
                Some(_) => continue,
                None => panic!("connection closed instead of SUBACK"),
            }
        }
    }

    /// The next message delivered (acknowledged at QoS 1), if one comes within `within`.
    pub async fn message(&mut self, within: Duration) -> Option<(String, Bytes)> {
        loop {
            match self.next(within).await {
                Ok(Some(Packet::Publish(p))) => {
                    if let Some(id) = p.packet_id {
                        let ack = codec::Ack {
                            packet_id: id,
                            reason_code: 0,
                            properties: Properties::default(),
                        };
                        let _ = self.send(Packet::PubAck(ack)).await;
                    }
                    return Some((p.topic, p.payload));
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(()) => return None,
            }
        }
    }

    /// Whether the connection is still served: a PINGREQ gets its PINGRESP.
    pub async fn alive(&mut self) -> bool {
        if self.send(Packet::PingReq).await.is_err() {
            return false;
        }
        loop {
            match self.next(WAIT).await {
                Ok(Some(Packet::PingResp)) => return true,
                Ok(Some(_)) => continue,
                Ok(None) | Err(()) => return false,
            }
        }
    }

    /// Waits for the endpoint to end the connection; the DISCONNECT reason code if it sent one.
    pub async fn closed(&mut self) -> Option<u8> {
        let mut reason = None;
        loop {
            match self.next(WAIT).await {
                Ok(Some(Packet::Disconnect(d))) => reason = Some(d.reason_code),
                Ok(Some(_)) => continue,
                Ok(None) => return reason,
                Err(()) => panic!("the connection was not closed within {WAIT:?}"),
            }
        }
    }
}
