//! The AWS Lambda Runtime API for one instance, on its own loopback port:
//! `GET /2018-06-01/runtime/invocation/next` (long poll), `POST …/invocation/{id}/response`,
//! `POST …/invocation/{id}/error`, `POST …/runtime/init/error`. One invocation is outstanding at
//! a time; answers to an unknown or finished request id get 400/403 as the service does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const PREFIX: &str = "/2018-06-01/runtime/";
const MAX_BODY: usize = 6 * 1024 * 1024 + 100;

/// One invocation handed to the runtime.
pub struct Invocation {
    pub request_id: String,
    pub payload: Vec<u8>,
    pub content_type: &'static str,
    pub deadline_ms: u64,
    pub function_arn: String,
    pub client_context: Option<String>,
    pub done: oneshot::Sender<Outcome>,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Response(Vec<u8>),
    /// The handler raised: the runtime's error document.
    Error(Vec<u8>),
}

pub(crate) struct Api {
    next: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    /// Set by `init/error`: the error document.
    pub(crate) init_error: Mutex<Option<Vec<u8>>>,
}

/// Serves until the task is aborted; returns the port and the sender of invocations.
pub(crate) async fn serve() -> std::io::Result<(
    u16,
    mpsc::Sender<Invocation>,
    Arc<Api>,
    tokio::task::JoinHandle<()>,
)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::channel(1);
    let api = Arc::new(Api {
        next: tokio::sync::Mutex::new(rx),
        pending: Mutex::new(HashMap::new()),
        init_error: Mutex::new(None),
    });
    let a = api.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let a = a.clone();
            tokio::spawn(async move {
                let _ = connection(s, &a).await;
            });
        }
    });
    Ok((port, tx, api, task))
}

pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    /// `(lower-case name, value)`.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) async fn read_request(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Request>> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let mut first = lines.next().unwrap_or_default().split(' ');
            let method = first.next().unwrap_or_default().to_string();
            let path = first.next().unwrap_or_default().to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            if len > MAX_BODY {
                return Err(std::io::Error::other("body too large"));
            }
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Ok(Some(Request {
                method,
                path,
                headers,
                body,
            }));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub(crate) async fn respond(
    s: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // One write: a head and body sent apart meet Nagle and delayed ACKs (tens of ms each).
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out).await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        504 => "Gateway Timeout",
        404 => "Not Found",
        _ => "Error",
    }
}

fn error_body(kind: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"errorType": kind, "errorMessage": message})
        .to_string()
        .into_bytes()
}

async fn connection(mut s: TcpStream, api: &Api) -> std::io::Result<()> {
    let mut buf = Vec::new();
    // Keep-alive: the runtime's HTTP client reuses its connection.
    while let Some(req) = read_request(&mut s, &mut buf).await? {
        let Some(rest) = req.path.strip_prefix(PREFIX) else {
            respond(
                &mut s,
                404,
                &[],
                &error_body("InvalidRequest", "unknown path"),
            )
            .await?;
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match (req.method.as_str(), parts.as_slice()) {
            ("GET", ["invocation", "next"]) => {
                let inv = { api.next.lock().await.recv().await };
                let Some(inv) = inv else {
                    // The instance is being stopped.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return Ok(());
                };
                api.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(inv.request_id.clone(), inv.done);
                let mut headers = vec![
                    ("Lambda-Runtime-Aws-Request-Id", inv.request_id.clone()),
                    ("Lambda-Runtime-Deadline-Ms", inv.deadline_ms.to_string()),
                    (
                        "Lambda-Runtime-Invoked-Function-Arn",
                        inv.function_arn.clone(),
                    ),
                    (
                        "Lambda-Runtime-Trace-Id",
                        format!("Root=1-{}", &inv.request_id[..8]),
                    ),
                    ("Content-Type", inv.content_type.to_string()),
                ];
                if let Some(c) = &inv.client_context {
                    headers.push(("Lambda-Runtime-Client-Context", c.clone()));
                }
                respond(&mut s, 200, &headers, &inv.payload).await?;
            }
            ("POST", ["invocation", id, kind @ ("response" | "error")]) => {
                let waiter = api
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(*id);
                match waiter {
                    Some(w) => {
                        let outcome = if *kind == "response" {
                            Outcome::Response(req.body)
                        } else {
                            Outcome::Error(req.body)
                        };
                        let _ = w.send(outcome);
                        respond(
                            &mut s,
                            202,
                            &[("Content-Type", "application/json".into())],
                            br#"{"status":"OK"}"#,
                        )
                        .await?;
                    }
                    None => {
                        let body = error_body(
                            "InvalidStateTransition",
                            "no invocation in progress with this request id",
                        );
                        respond(&mut s, 403, &[], &body).await?;
                    }
                }
            }
            ("POST", ["init", "error"]) => {
                *api.init_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(req.body);
                respond(&mut s, 202, &[], br#"{"status":"OK"}"#).await?;
            }
            _ => {
                respond(
                    &mut s,
                    404,
                    &[],
                    &error_body("InvalidRequest", "unknown runtime API call"),
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn call(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return (status, head, buf[end + 4..end + 4 + len].to_vec());
                }
            }
            assert!(n > 0, "connection closed");
        }
    }

    #[tokio::test]
    async fn next_response_and_refused_transitions() {
        let (port, tx, _api, task) = serve().await.unwrap();
        let (done, result) = oneshot::channel();
        tx.send(Invocation {
            request_id: "req-12345678".into(),
            payload: br#"{"a":1}"#.to_vec(),
            content_type: "application/json",
            deadline_ms: 42,
            function_arn: "arn:aws:lambda:r:1:function:f:1".into(),
            client_context: Some(r#"{"custom":{"subject":"t"}}"#.into()),
            done,
        })
        .await
        .unwrap();
        let (status, head, body) =
            call(port, "GET", "/2018-06-01/runtime/invocation/next", b"").await;
        assert_eq!(status, 200);
        assert!(head.contains("Lambda-Runtime-Aws-Request-Id: req-12345678"));
        assert!(head.contains("Lambda-Runtime-Deadline-Ms: 42"));
        assert!(head.contains(r#"Lambda-Runtime-Client-Context: {"custom":{"subject":"t"}}"#));
        assert_eq!(body, br#"{"a":1}"#);
        let path = "/2018-06-01/runtime/invocation/req-12345678/response";
        assert_eq!(call(port, "POST", path, b"\"ok\"").await.0, 202);
        assert_eq!(result.await.unwrap(), Outcome::Response(b"\"ok\"".to_vec()));
        // A second answer for the same request, or one for an unknown id, is refused.
        assert_eq!(call(port, "POST", path, b"again").await.0, 403);
        let err = "/2018-06-01/runtime/invocation/nope/error";
        assert_eq!(call(port, "POST", err, b"{}").await.0, 403);
        assert_eq!(call(port, "GET", "/other", b"").await.0, 404);
        task.abort();
    }
}
