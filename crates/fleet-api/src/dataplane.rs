//! The device data plane: HTTPS with mutual TLS on its own listener. The TLS handshake admits
//! only certificates issued by the fleet CA; each request then looks the certificate up in the
//! registry (it must be ACTIVE: revocation applies to the very next request). Unsigned, as AWS
//! serves it: the certificate is the credential.
//!
//! Served: the credentials provider, `GET /role-aliases/<alias>/credentials`
//! ([`crate::credentials::mint`]), the Greengrass routes under `/greengrass/v2/`
//! (`crate::dataplane_greengrass`), and the `iot-data` shadow operations under `/things/` and
//! `/api/things/` ([`crate::ServiceHandler::handle_device`] of the `iotdata` service).

use crate::ApiState;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// A TLS handshake that takes longer is dropped (a stalled client holds no slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS server configuration: the fleet's server certificate, client certificates required
/// and verified against the fleet CA.
pub fn tls_config(
    server_chain_pem: &[u8],
    server_key_pem: &[u8],
    ca_pem: &str,
) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(server_chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading the server certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(server_key_pem)
        .map_err(|e| format!("reading the server key: {e}"))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| format!("reading the fleet CA certificate: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("the fleet CA certificate is unusable: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("building the client certificate verifier: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("the server certificate and key do not match: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Who is on the other end of a data-plane connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// SHA-256 (hex) of the verified client certificate's DER: its fleet certificate id.
    pub certificate_id: String,
}

/// Accepts TCP connections and completes their TLS handshakes in their own tasks, handing
/// axum only finished ones.
struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, Peer)>,
}

impl Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop ended (its listener failed); serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            certificate_id: String::new(),
        })
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
) -> mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, Peer)> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("data plane accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let sender = tx.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, "data plane TLS handshake refused: {e}");
                        return;
                    }
                    Err(_) => return,
                };
                // The verifier demands a certificate, so there is one.
                let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
                    return;
                };
                let peer = Peer {
                    addr,
                    certificate_id: lichen_fleet_pki::certificate_id_of_der(cert),
                };
                let _ = sender.send((tls, peer)).await;
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// Serves the data plane on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let listener = TlsListener {
        local,
        ready: accept_loop(listener, tls),
    };
    let app = Router::new().fallback(handle).with_state(state);
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(shutdown)
        .await
}

fn message(status: StatusCode, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

async fn handle(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
) -> Response {
    let segments: Vec<&str> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if let (
        &Method::GET,
        [
            "greengrass",
            "v2",
            "deployments",
            id,
            "coreDevices",
            thing,
            "configuration",
            rest @ ..,
        ],
    ) = (req.method(), segments.as_slice())
        && (rest.is_empty() || rest == ["document"])
    {
        let host = req.headers().get("host").and_then(|h| h.to_str().ok());
        return crate::dataplane_deployments::handle(
            &state,
            &peer.certificate_id,
            host,
            id,
            thing,
            !rest.is_empty(),
        )
        .await;
    }
    if crate::dataplane_greengrass::is_greengrass(req.uri().path()) {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let Ok(body) = axum::body::to_bytes(req.into_body(), 1 << 20).await else {
            return message(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is over 1 MiB",
            );
        };
        return crate::dataplane_greengrass::handle(
            &state,
            peer.certificate_id,
            method,
            path,
            query,
            body,
        )
        .await;
    }
    // iot-data over mutual TLS (the shadow REST API a core's shadow sync calls).
    if matches!(segments.as_slice(), ["things", ..] | ["api", "things", ..])
        && let Some(service) = state.services.get("iotdata").cloned()
    {
        return device_call(&state, service, peer, req).await;
    }
    let alias = match (req.method(), segments.as_slice()) {
        (&Method::GET, ["role-aliases", alias, "credentials"]) => {
            match crate::call::split_path(alias) {
                Ok(mut a) if a.len() == 1 => a.remove(0),
                _ => return message(StatusCode::BAD_REQUEST, "Invalid role alias"),
            }
        }
        _ => return message(StatusCode::NOT_FOUND, "Not Found"),
    };
    let thing = req
        .headers()
        .get("x-amzn-iot-thingname")
        .map(|v| v.to_str().map(str::to_owned));
    let thing = match thing {
        None => None,
        Some(Ok(t)) if !t.is_empty() => Some(t),
        Some(_) => return message(StatusCode::FORBIDDEN, "Invalid thing name passed"),
    };
    let registry = state.registry.clone();
    let minted = tokio::task::spawn_blocking(move || {
        crate::credentials::mint(
            &registry,
            &peer.certificate_id,
            thing.as_deref(),
            &alias,
            time::OffsetDateTime::now_utc(),
        )
    })
    .await;
    match minted {
        Ok(Ok(m)) => (
            [("content-type", "application/json")],
            Body::from(m.to_json().to_string()),
        )
            .into_response(),
        Ok(Err(r)) => message(r.status, &r.message),
        Err(_) => message(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
    }
}

/// Hands a data-plane request to the service that serves its path for devices.
async fn device_call(
    state: &ApiState,
    service: Arc<dyn crate::ServiceHandler>,
    peer: Peer,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, crate::MAX_BODY).await else {
        return message(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The request body is too large",
        );
    };
    let path = parts.uri.path().to_string();
    let (segments, query) = match (
        crate::call::split_path(&path),
        crate::call::split_query(parts.uri.query().unwrap_or("")),
    ) {
        (Ok(s), Ok(q)) => (s, q),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let call = crate::Call {
        method: parts.method,
        path,
        segments,
        query,
        headers: parts.headers,
        body,
        caller: lichen_sigv4::Verified {
            access_key_id: format!("certificate/{}", peer.certificate_id),
            region: state.registry.region().to_string(),
            service: "iotdata".into(),
            session_token: None,
        },
    };
    match service.handle_device(&peer.certificate_id, call) {
        Some(f) => f.await,
        None => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}
