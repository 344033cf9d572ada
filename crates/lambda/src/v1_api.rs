//! The Greengrass V1 "functions" protocol over HTTP that the V1 `greengrasssdk` speaks through
//! its runtime's IPC client (served by the launcher on one loopback port, `GG_DAEMON_PORT` in
//! the instances' environment), for the SDK's pseudo-functions (GGRouter for `iot-data`
//! publish, the secrets manager function, …):
//!
//! * `POST /2016-11-01/functions/<arn>`: body = payload, `X-Amz-Client-Context` (base64 JSON),
//!   `X-Amz-Invocation-Type` `RequestResponse|Event` → 202 with `X-Amz-InvocationId`.
//! * `GET /2016-11-01/functions/<arn>` with `X-Amz-InvocationId` → the result body and
//!   `X-Amz-Function-Error` (empty, `Handled` or `Unhandled`).
//!
//! Every call carries `Authorization: <AWS_CONTAINER_AUTHORIZATION_TOKEN>`; others get 403.
//! What a call does is the [`Handler`]'s business (the launcher's IPC client).

use crate::runtime_api::{read_request, respond};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PREFIX: &str = "/2016-11-01/functions/";
/// How long a GET waits for its result (LambdaManager's `getResultTimeoutInSecond`).
const RESULT_WAIT: Duration = Duration::from_secs(60);
/// Results nobody fetched are dropped beyond this many (Event calls keep none).
const MAX_PENDING: usize = 1024;

/// One call of a pseudo-function.
#[derive(Debug, Clone)]
pub struct V1Call {
    pub function_arn: String,
    pub payload: Vec<u8>,
    /// The `X-Amz-Client-Context` header as sent (base64 JSON), if any.
    pub client_context: Option<String>,
}

/// A call's result: `Ok(payload)`, or `Err((function error, payload))`.
pub type V1Result = Result<Vec<u8>, (String, Vec<u8>)>;

pub type Handler =
    Arc<dyn Fn(V1Call) -> Pin<Box<dyn Future<Output = V1Result> + Send>> + Send + Sync>;

type Pending = Mutex<HashMap<String, watch::Receiver<Option<V1Result>>>>;

type Work = Pin<Box<dyn Future<Output = V1Result> + Send>>;

/// Event calls (publishes) run one after another in the order they were posted, as V1's
/// router queue kept them; request/response calls run at once.
type Events = tokio::sync::mpsc::UnboundedSender<Work>;

/// Serves until the task is aborted; returns the port.
pub async fn serve(
    token: String,
    handler: Handler,
) -> std::io::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let pending: Arc<Pending> = Arc::new(Mutex::new(HashMap::new()));
    let token = Arc::new(token);
    let (events, mut queue) = tokio::sync::mpsc::unbounded_channel::<Work>();
    let task = tokio::spawn(async move {
        let worker = tokio::spawn(async move {
            while let Some(work) = queue.recv().await {
                let _ = work.await;
            }
        });
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let (token, handler, pending, events) = (
                token.clone(),
                handler.clone(),
                pending.clone(),
                events.clone(),
            );
            tokio::spawn(async move {
                let _ = connection(s, &token, &handler, &pending, &events).await;
            });
        }
        worker.abort();
    });
    Ok((port, task))
}

fn text(message: &str) -> Vec<u8> {
    serde_json::json!({"errorMessage": message})
        .to_string()
        .into_bytes()
}

async fn connection(
    mut s: TcpStream,
    token: &str,
    handler: &Handler,
    pending: &Pending,
    events: &Events,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut s, &mut buf).await? {
        if req.header("authorization") != Some(token) || token.is_empty() {
            respond(
                &mut s,
                403,
                &[],
                &text("the Authorization token is not this function's"),
            )
            .await?;
            continue;
        }
        let Some(arn) = req.path.strip_prefix(PREFIX).map(str::to_string) else {
            respond(&mut s, 404, &[], &text("unknown path")).await?;
            continue;
        };
        match req.method.as_str() {
            "POST" => {
                let id = uuid::Uuid::new_v4().to_string();
                let event = req.header("x-amz-invocation-type") == Some("Event");
                let client_context = req.header("x-amz-client-context").map(str::to_string);
                let call = V1Call {
                    function_arn: arn,
                    payload: req.body,
                    client_context,
                };
                let (tx, rx) = watch::channel(None);
                let full = !event && {
                    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                    let full = p.len() >= MAX_PENDING;
                    if !full {
                        p.insert(id.clone(), rx);
                    }
                    full
                };
                if full {
                    respond(
                        &mut s,
                        429,
                        &[],
                        &text("too many results waiting to be fetched"),
                    )
                    .await?;
                    continue;
                }
                let work = handler(call);
                if event {
                    let _ = events.send(work);
                } else {
                    tokio::spawn(async move {
                        let _ = tx.send(Some(work.await));
                    });
                }
                respond(&mut s, 202, &[("X-Amz-InvocationId", id)], b"").await?;
            }
            "GET" => {
                let id = req.header("x-amz-invocationid").unwrap_or_default();
                let rx = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
                let Some(mut rx) = rx else {
                    respond(&mut s, 404, &[], &text("no such invocation id")).await?;
                    continue;
                };
                let result: Option<V1Result> =
                    match tokio::time::timeout(RESULT_WAIT, rx.wait_for(Option::is_some)).await {
                        Ok(Ok(r)) => Option::clone(&r),
                        _ => None,
                    };
                match result {
                    Some(Ok(body)) => {
                        respond(
                            &mut s,
                            200,
                            &[("X-Amz-Function-Error", String::new())],
                            &body,
                        )
                        .await?
                    }
                    Some(Err((kind, body))) => {
                        respond(&mut s, 200, &[("X-Amz-Function-Error", kind)], &body).await?
                    }
                    None => {
                        respond(&mut s, 504, &[], &text("the call did not finish in time")).await?
                    }
                }
            }
            _ => respond(&mut s, 405, &[], &text("use POST or GET")).await?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn http(port: u16, request: String) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0; 4096];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn work_is_posted_then_its_result_fetched_with_the_token_only() {
        let handler: Handler = Arc::new(|call: V1Call| {
            Box::pin(async move {
                if call.payload == b"fail" {
                    Err(("Handled".into(), b"boom".to_vec()))
                } else {
                    let mut out = call.client_context.unwrap_or_default().into_bytes();
                    out.extend_from_slice(&call.payload);
                    Ok(out)
                }
            })
        });
        let (port, task) = serve("tok".into(), handler).await.unwrap();
        let post = |token: &str, body: &str| {
            format!(
                "POST /2016-11-01/functions/arn:aws:lambda:::function:GGRouter HTTP/1.1\r\n\
                 Authorization: {token}\r\nX-Amz-Client-Context: ctx-\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        assert!(
            http(port, post("wrong", "x"))
                .await
                .starts_with("HTTP/1.1 403")
        );
        for (body, expect_error, expect_body) in
            [("hello", "", "ctx-hello"), ("fail", "Handled", "boom")]
        {
            let answer = http(port, post("tok", body)).await;
            assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
            let id = answer
                .lines()
                .find_map(|l| l.strip_prefix("X-Amz-InvocationId: "))
                .unwrap()
                .to_string();
            let get = format!(
                "GET /2016-11-01/functions/arn:aws:lambda:::function:GGRouter HTTP/1.1\r\n\
                 Authorization: tok\r\nX-Amz-InvocationId: {id}\r\n\r\n"
            );
            let result = http(port, get.clone()).await;
            assert!(result.starts_with("HTTP/1.1 200"), "{result}");
            assert!(result.contains(&format!("X-Amz-Function-Error: {expect_error}\r\n")));
            assert!(result.ends_with(expect_body), "{result}");
            // A result is fetched once.
            assert!(http(port, get).await.starts_with("HTTP/1.1 404"));
        }
        task.abort();
    }
}
