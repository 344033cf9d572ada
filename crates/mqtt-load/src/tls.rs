//! Devices over mutual TLS: cheap device certificates from a CA's key (ECDSA P-256, what a
//! fleet of thousands can be given in seconds), and N devices connecting with their own
//! certificate and client id, idling with keepalive pings, then disconnecting.

use crate::ProcStats;
use anyhow::{Context, bail};
use bytes::{Buf, BytesMut};
use lichen_mqtt::{self as codec, Connect, Packet, Properties, Version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

const VERSION: Version = Version::V311;

/// The name of device `i`: its thing name and MQTT client id.
pub fn device_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:05}")
}

/// Writes `<out>/<name>.pem` and `<out>/<name>.key` for `n` devices: a fresh P-256 key each and
/// a certificate (CN = the device's name) signed by the CA in `ca_cert` / `ca_key` (PEM).
pub fn generate_device_certs(
    ca_cert: &Path,
    ca_key: &Path,
    out: &Path,
    prefix: &str,
    n: usize,
) -> anyhow::Result<()> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
    let key_pem =
        std::fs::read_to_string(ca_key).with_context(|| format!("read {}", ca_key.display()))?;
    let cert_pem =
        std::fs::read_to_string(ca_cert).with_context(|| format!("read {}", ca_cert.display()))?;
    let ca_key = KeyPair::from_pem(&key_pem).context("the CA key")?;
    // Re-signing the CA's own parameters with its key gives rcgen an issuer whose subject and
    // key match the CA certificate devices chain to.
    let ca = CertificateParams::from_ca_cert_pem(&cert_pem)
        .context("the CA certificate")?
        .self_signed(&ca_key)?;
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    for i in 0..n {
        let name = device_name(prefix, i);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        params.distinguished_name = dn;
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        std::fs::write(out.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(out.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

/// What one run of [`connect_devices`] does.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    pub addr: SocketAddr,
    /// The broker's process, whose RSS is read before, during and after.
    pub pid: u32,
    /// The CA the broker's certificate chains to.
    pub ca: std::path::PathBuf,
    /// Where `<name>.pem` / `<name>.key` are (see [`generate_device_certs`]).
    pub certs: std::path::PathBuf,
    pub prefix: String,
    pub devices: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Source addresses 127.0.0.2 .. 127.0.0.(1 + sources), round robin, so that the ephemeral
    /// port range is never the limit.
    pub sources: u8,
    /// Keepalive the devices ask for; each sends PINGREQ at 3/4 of it and expects PINGRESP.
    pub keep_alive: u16,
    /// How long the devices stay connected after the last one is in.
    pub idle: Duration,
    /// Devices among the N (the last ones) that ask for `silent_keep_alive` and never ping:
    /// the broker must close them after 1.5 × that.
    pub silent: usize,
    pub silent_keep_alive: u16,
}

/// What [`connect_devices`] measured.
#[derive(Debug, Clone)]
pub struct DeviceReport {
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub connect_seconds: f64,
    pub rss_before: u64,
    pub rss_connected: u64,
    pub rss_idle_end: u64,
    pub cpu_seconds_connecting: f64,
    pub pings_answered: u64,
    /// Pinging devices the broker closed or that missed a PINGRESP (should be 0).
    pub pinging_dropped: u64,
    /// Silent devices closed by the broker within 1.5 × keepalive + 2 s (should be all).
    pub silent_closed: u64,
}

impl DeviceReport {
    pub fn connects_per_second(&self) -> f64 {
        self.connected as f64 / self.connect_seconds.max(1e-9)
    }

    /// RSS growth per connected device while idle, in bytes.
    pub fn bytes_per_device(&self) -> f64 {
        self.rss_connected.saturating_sub(self.rss_before) as f64 / self.connected.max(1) as f64
    }

    pub fn bytes_per_device_idle_end(&self) -> f64 {
        self.rss_idle_end.saturating_sub(self.rss_before) as f64 / self.connected.max(1) as f64
    }

    /// One line of JSON for scripts.
    pub fn json(&self, name: &str) -> String {
        format!(
            "{{\"name\":\"{name}\",\"connected\":{},\"failed\":{},\"connect_seconds\":{:.3},\
             \"connects_per_second\":{:.1},\"rss_before\":{},\"rss_connected\":{},\
             \"rss_idle_end\":{},\"bytes_per_device\":{:.0},\"bytes_per_device_idle_end\":{:.0},\
             \"cpu_seconds_connecting\":{:.2},\"pings_answered\":{},\"pinging_dropped\":{},\
             \"silent_closed\":{}}}",
            self.connected,
            self.failed,
            self.connect_seconds,
            self.connects_per_second(),
            self.rss_before,
            self.rss_connected,
            self.rss_idle_end,
            self.bytes_per_device(),
            self.bytes_per_device_idle_end(),
            self.cpu_seconds_connecting,
            self.pings_answered,
            self.pinging_dropped,
            self.silent_closed,
        )
    }
}

fn client_config(
    roots: &Arc<RootCertStore>,
    certs: &Path,
    name: &str,
) -> anyhow::Result<Arc<ClientConfig>> {
    let cert_path = certs.join(format!("{name}.pem"));
    let key_path = certs.join(format!("{name}.key"));
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("read {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("read {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok(Arc::new(config))
}

async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> anyhow::Result<Option<Packet>> {
    loop {
        if let Some((packet, used)) =
            codec::decode(buf, Some(VERSION), usize::MAX).context("invalid packet")?
        {
            buf.advance(used);
            return Ok(Some(packet));
        }
        buf.reserve(256);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

struct Shared {
    plan: DevicePlan,
    roots: Arc<RootCertStore>,
    gate: Semaphore,
    connected: tokio::sync::mpsc::UnboundedSender<anyhow::Result<()>>,
    stop: watch::Receiver<bool>,
    pings: AtomicU64,
    dropped: AtomicU64,
    silent_closed: AtomicU64,
}

async fn device(shared: Arc<Shared>, i: usize) {
    let plan = &shared.plan;
    let name = device_name(&plan.prefix, i);
    let silent = i >= plan.devices - plan.silent.min(plan.devices);
    let keep_alive = if silent {
        plan.silent_keep_alive
    } else {
        plan.keep_alive
    };
    let opened = async {
        let _permit = shared.gate.acquire().await?;
        let config = client_config(&shared.roots, &plan.certs, &name)?;
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % plan.sources.max(1) as usize) as u8,
        ));
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket
            .connect(plan.addr)
            .await
            .with_context(|| format!("{name}: connect to {}", plan.addr))?;
        tcp.set_nodelay(true)?;
        let server_name = ServerName::IpAddress(plan.addr.ip().into());
        let mut tls = TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .with_context(|| format!("{name}: TLS handshake"))?;
        let mut out = BytesMut::new();
        codec::encode(
            &Packet::Connect(Connect {
                version: VERSION,
                clean_start: true,
                keep_alive,
                properties: Properties::default(),
                client_id: name.clone(),
                will: None,
                username: None,
                password: None,
            }),
            VERSION,
            &mut out,
        );
        tls.write_all(&out).await?;
        let mut buf = BytesMut::new();
        match read_packet(&mut tls, &mut buf).await? {
            Some(Packet::ConnAck(a)) if a.reason_code == 0 => Ok((tls, buf)),
            Some(Packet::ConnAck(a)) => bail!("{name}: CONNACK refused with {}", a.reason_code),
            other => bail!("{name}: expected CONNACK, got {other:?}"),
        }
    }
    .await;
    let (mut tls, mut buf) = match opened {
        Ok(x) => {
            let _ = shared.connected.send(Ok(()));
            x
        }
        Err(e) => {
            let _ = shared.connected.send(Err(e));
            return;
        }
    };
    let mut stop = shared.stop.clone();
    if silent {
        // Never ping: the broker must close the connection after 1.5 × keepalive.
        let limit = Duration::from_millis(keep_alive as u64 * 1500 + 2000);
        let closed = tokio::select! {
            r = tokio::time::timeout(limit, read_packet(&mut tls, &mut buf)) => matches!(r, Ok(Ok(None) | Err(_))),
            _ = stop.wait_for(|s| *s) => false,
        };
        if closed {
            shared.silent_closed.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let period = Duration::from_millis(keep_alive as u64 * 750);
    // Spread the pings over the period so they do not all arrive at once.
    let mut next = tokio::time::Instant::now() + period.mul_f64((i % 1000) as f64 / 1000.0 + 0.01);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        next += period;
        let mut out = BytesMut::new();
        codec::encode(&Packet::PingReq, VERSION, &mut out);
        let ok = async {
            tls.write_all(&out).await?;
            match tokio::time::timeout(Duration::from_secs(10), read_packet(&mut tls, &mut buf))
                .await
            {
                Ok(Ok(Some(Packet::PingResp))) => anyhow::Ok(true),
                _ => Ok(false),
            }
        }
        .await;
        if matches!(ok, Ok(true)) {
            shared.pings.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::Disconnect(codec::Disconnect {
            reason_code: 0,
            properties: Properties::default(),
        }),
        VERSION,
        &mut out,
    );
    let _ = tls.write_all(&out).await;
    let _ = tls.shutdown().await;
}

/// Connects the plan's devices (bounded concurrency), keeps them idle, then disconnects them.
pub async fn connect_devices(plan: DevicePlan) -> anyhow::Result<DeviceReport> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&plan.ca)
        .with_context(|| format!("read {}", plan.ca.display()))?
    {
        roots.add(c.with_context(|| format!("parse {}", plan.ca.display()))?)?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let shared = Arc::new(Shared {
        gate: Semaphore::new(plan.concurrency.max(1)),
        plan: plan.clone(),
        roots: Arc::new(roots),
        connected: tx,
        stop,
        pings: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        silent_closed: AtomicU64::new(0),
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ProcStats::read(plan.pid)?;
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(plan.devices);
    for i in 0..plan.devices {
        tasks.push(tokio::spawn(device(shared.clone(), i)));
    }
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    for _ in 0..plan.devices {
        match rx.recv().await {
            Some(Ok(())) => connected += 1,
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            None => break,
        }
    }
    let connect_seconds = t0.elapsed().as_secs_f64();
    let after_connect = ProcStats::read(plan.pid)?;
    // Let the broker finish what the last CONNECTs started before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected_stats = ProcStats::read(plan.pid)?;
    tokio::time::sleep(plan.idle).await;
    let idle_end = ProcStats::read(plan.pid)?;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(DeviceReport {
        connected,
        failed,
        first_error,
        connect_seconds,
        rss_before: before.rss_bytes,
        rss_connected: connected_stats.rss_bytes,
        rss_idle_end: idle_end.rss_bytes,
        cpu_seconds_connecting: after_connect.cpu_seconds - before.cpu_seconds,
        pings_answered: shared.pings.load(Ordering::Relaxed),
        pinging_dropped: shared.dropped.load(Ordering::Relaxed),
        silent_closed: shared.silent_closed.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::UnixTime;

    #[test]
    fn device_certificates_chain_to_the_ca_that_signed_them() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("ca.key"), ca_key.serialize_pem()).unwrap();
        let out = dir.path().join("certs");
        generate_device_certs(
            &dir.path().join("ca.pem"),
            &dir.path().join("ca.key"),
            &out,
            "dev-",
            3,
        )
        .unwrap();

        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        for i in 0..3 {
            let name = device_name("dev-", i);
            let leaf = CertificateDer::from_pem_file(out.join(format!("{name}.pem"))).unwrap();
            verifier
                .verify_client_cert(&leaf, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            // The key file parses and belongs with the certificate (rustls checks the pair).
            let key = PrivateKeyDer::from_pem_file(out.join(format!("{name}.key"))).unwrap();
            let config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_client_auth_cert(vec![leaf], key);
            assert!(config.is_ok(), "{name}: {:?}", config.err());
        }
        assert!(!out.join(format!("{}.pem", device_name("dev-", 3))).exists());
    }
}
