//! Prometheus text exposition (format 0.0.4) of the latest figures, served on a loopback port
//! at `GET /metrics`.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Escapes a label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends one metric family: `# HELP`, `# TYPE` and its samples (`labels` already formatted,
/// without braces; empty for none).
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Serves `text` (whatever it holds at each request) on `addr` until aborted.
pub async fn serve(
    addr: std::net::SocketAddr,
    text: Arc<Mutex<String>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let text = text.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                // Read the request head (bounded); only GET /metrics is served.
                while got < buf.len() {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        sock.read(&mut buf[got..]),
                    )
                    .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => got += n,
                    }
                    if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..got]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body, ctype) =
                    if head.starts_with("GET ") && path.split('?').next() == Some("/metrics") {
                        let body = text.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        ("200 OK", body, "text/plain; version=0.0.4; charset=utf-8")
                    } else {
                        (
                            "404 Not Found",
                            "only GET /metrics is served here\n".to_string(),
                            "text/plain",
                        )
                    };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    }))
}
