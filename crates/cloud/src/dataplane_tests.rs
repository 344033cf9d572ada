//! The data plane client against in-test servers: a plain HTTP object server that honours
//! `Range` and can drop the connection mid-body, and an HTTPS server that demands the device
//! certificate.

use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

use super::*;

/// CA, server (127.0.0.1) and device certificates written to files.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    let device_key = KeyPair::generate().unwrap();
    let mut device = CertificateParams::new(Vec::<String>::new()).unwrap();
    device.distinguished_name.push(DnType::CommonName, "thing");
    let device_cert = device.signed_by(&device_key, &ca_cert, &ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("device.pem"), device_cert.pem()).unwrap();
    std::fs::write(dir.path().join("device.key"), device_key.serialize_pem()).unwrap();
    Pki {
        ca: ca_cert.der().clone(),
        server_chain: vec![server_cert.der().clone()],
        server_key: PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
        dir,
    }
}

fn endpoint(pki: &Pki, port: u16) -> Endpoint {
    Endpoint {
        host: "127.0.0.1".into(),
        port,
        root_ca: pki.dir.path().join("ca.pem"),
        certificate: pki.dir.path().join("device.pem"),
        private_key: pki.dir.path().join("device.key"),
    }
}

/// Reads one request head; returns (request line, headers lowercased).
async fn read_head<S: AsyncReadExt + Unpin>(s: &mut S) -> (String, Vec<(String, String)>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (first, headers)
}

#[tokio::test]
async fn download_resumes_with_range_after_the_connection_drops() {
    let content: Arc<Vec<u8>> = Arc::new((0..300_000u32).map(|i| (i % 251) as u8).collect());
    let ranges: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let served: Arc<Mutex<u64>> = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (c, r, s) = (content.clone(), ranges.clone(), served.clone());
    let server = tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (_, headers) = read_head(&mut sock).await;
            let range = headers
                .iter()
                .find(|(k, _)| k == "range")
                .map(|(_, v)| v.clone());
            r.lock().unwrap().push(range.clone());
            let start: usize = range
                .as_deref()
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.strip_suffix('-'))
                .map(|v| v.parse().unwrap())
                .unwrap_or(0);
            let rest = &c[start..];
            let head = if range.is_some() {
                format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{}/{}\r\n\r\n",
                    rest.len(),
                    c.len() - 1,
                    c.len()
                )
            } else {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", rest.len())
            };
            sock.write_all(head.as_bytes()).await.unwrap();
            // The first answer stops a third of the way through and drops the connection.
            let send = if n == 0 { &rest[..100_000] } else { rest };
            sock.write_all(send).await.unwrap();
            *s.lock().unwrap() += send.len() as u64;
            sock.shutdown().await.ok();
            drop(sock);
            n += 1;
        }
    });
    let pki = pki();
    let plane = DataPlane::new(&endpoint(&pki, 1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("artifact.bin");
    let url = format!("http://127.0.0.1:{port}/bucket/key?X-Amz-Signature=secret");
    let err = plane.download(&url, &dest).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(!dest.exists(), "a cut-off body is never taken for the file");
    let have = std::fs::metadata(partial_path(&dest)).unwrap().len();
    assert_eq!(have, 100_000);

    let size = plane.download(&url, &dest).await.unwrap();
    assert_eq!(size, 300_000);
    assert_eq!(std::fs::read(&dest).unwrap(), *content);
    assert!(!partial_path(&dest).exists());
    assert_eq!(
        *ranges.lock().unwrap(),
        vec![None, Some("bytes=100000-".to_string())]
    );
    assert_eq!(
        *served.lock().unwrap(),
        300_000,
        "nothing was fetched twice"
    );
    server.abort();
}

#[tokio::test]
async fn json_calls_use_the_device_certificate() {
    let pki = pki();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let server = tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(sock).await else {
                continue;
            };
            let peer = tls.get_ref().1.peer_certificates().map_or(0, |c| c.len());
            let (line, headers) = read_head(&mut tls).await;
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0u8; len];
            tls.read_exact(&mut body).await.unwrap();
            s.lock().unwrap().push(format!("{line} peer={peer}"));
            let answer = if line.contains("thingGroups") {
                r#"{"thingGroups":[{"thingGroupName":"A"},{"thingGroupName":"B"}]}"#.to_string()
            } else if line.contains("/artifacts/") {
                r#"{"preSignedUrl":"http://127.0.0.1:1/b/k"}"#.to_string()
            } else {
                format!("{{\"echo\":{}}}", String::from_utf8_lossy(&body))
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                answer.len()
            );
            tls.write_all(head.as_bytes()).await.unwrap();
            tls.write_all(answer.as_bytes()).await.unwrap();
            tls.shutdown().await.ok();
        }
    });
    let plane = DataPlane::new(&endpoint(&pki, port)).unwrap();
    let answer = plane
        .resolve_component_candidates(&serde_json::json!({"componentCandidates": []}))
        .await
        .unwrap();
    assert_eq!(answer["echo"]["componentCandidates"], serde_json::json!([]));
    assert_eq!(plane.thing_groups("thing").await.unwrap(), vec!["A", "B"]);
    let url = plane
        .artifact_url(
            "arn:aws:greengrass:us-east-1:1:components:com.example.A:versions:1.0.0",
            "bucket/dir/file.zip",
        )
        .await
        .unwrap();
    assert_eq!(url, "http://127.0.0.1:1/b/k");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|l| l.ends_with("peer=1")), "{seen:?}");
    assert!(
        seen[2].starts_with("GET /greengrass/v2/components/arn%3Aaws%3Agreengrass%3Aus-east-1%3A1%3Acomponents%3Acom.example.A%3Aversions%3A1.0.0/artifacts/bucket/dir/file.zip "),
        "{seen:?}"
    );
    server.abort();
}
