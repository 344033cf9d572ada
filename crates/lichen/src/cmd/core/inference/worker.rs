//! The core's side of the `lichen-inference` worker: spawning it from beside `lichen`, the
//! request loop that forwards local pub/sub requests to it and publishes its answers, and its
//! restart when it dies (requests in flight then get an error answer).

use super::frame::{self, FromWorker, LoadOutcome, ModelSpec, ToWorker};
use lichen_bus::{Bus, Delivery, Message, Payload, SubscribeOptions};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::NAME;

/// Requests handed to the worker and not answered yet, at most: past it a request is answered
/// `Busy` at once instead of queueing without bound.
const MAX_IN_FLIGHT: usize = 256;
/// The worker's restart delay doubles from this up to [`MAX_BACKOFF`] while it keeps dying soon
/// after starting.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that ran this long was healthy: its next restart is quick again.
const HEALTHY: Duration = Duration::from_secs(60);

/// The worker executable: `lichen-inference` beside the running `lichen` (as `lichen-fleet` is).
pub fn executable() -> Result<PathBuf, String> {
    let me =
        std::env::current_exe().map_err(|e| format!("cannot find the core's executable: {e}"))?;
    let worker = me.with_file_name("lichen-inference");
    if worker.is_file() {
        return Ok(worker);
    }
    // A core updated through a deployment whose Nucleus artifact carried no worker still finds
    // the one the package installed.
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("lichen-inference"))
            .find(|p| p.is_file())
    });
    if let Some(found) = on_path {
        Ok(found)
    } else {
        Err(format!(
            "the inference worker {} is missing: install lichen-inference beside lichen \
             (built with the `inference` feature, on by default)",
            worker.display()
        ))
    }
}

/// A running worker process and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    frames: mpsc::Receiver<FromWorker>,
}

/// The user and group the worker runs as when the core is root: it decodes images and runs
/// models that requests and deployments bring, and reads the files requests name, so it gets no
/// more privilege than a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerUser {
    pub uid: u32,
    pub gid: u32,
}

impl Worker {
    fn spawn(pool_size: usize, run_as: Option<WorkerUser>) -> Result<Worker, String> {
        let exe = executable()?;
        let mut command = Command::new(&exe);
        command
            .arg("--pool-size")
            .arg(pool_size.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(user) = run_as {
            // Dropping from root also drops the supplementary groups.
            command.uid(user.uid).gid(user.gid);
        }
        let mut child = command.spawn().map_err(|e| {
            let who = run_as.map_or(String::new(), |u| format!(" as uid {}", u.uid));
            format!(
                "cannot start {}{who}: {e} (it must be where the service's user may run it)",
                exe.display()
            )
        })?;
        let stdin = child.stdin.take().ok_or("no stdin pipe")?;
        let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
        if let Some(stderr) = child.stderr.take() {
            // What the engine says on stderr goes to the core's log.
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!(service = NAME, "worker: {line}");
                }
            });
        }
        let (tx, frames) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match frame::read_async::<FromWorker>(&mut stdout).await {
                    Ok(Some(f)) => {
                        if tx.send(f).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!(service = NAME, error = %e, "bad frame from the inference worker; restarting it");
                        return;
                    }
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            frames,
        })
    }

    async fn send(&mut self, msg: &ToWorker) -> Result<(), String> {
        let bytes = frame::encode(msg).map_err(|e| e.to_string())?;
        self.stdin
            .write_all(&bytes)
            .await
            .map_err(|e| format!("the inference worker stopped reading: {e}"))
    }

    /// Stops it (if it still runs) and says how it ended.
    async fn end(mut self) -> String {
        drop(self.stdin);
        // Closing stdin asks it to exit; one that does not is killed.
        let status = match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                let _ = self.child.kill().await;
                self.child.wait().await
            }
        };
        match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        }
    }
}

/// Loads `models` in a worker of its own and reports how each went; the deployment check. A model
/// that crashes the engine takes only this worker down.
pub async fn check(
    models: BTreeMap<String, ModelSpec>,
    run_as: Option<WorkerUser>,
    timeout: Duration,
) -> Result<BTreeMap<String, LoadOutcome>, String> {
    let mut worker = Worker::spawn(1, run_as)?;
    worker.send(&ToWorker::Load { seq: 1, models }).await?;
    let answer = tokio::time::timeout(timeout, worker.frames.recv()).await;
    let outcome = match answer {
        Ok(Some(FromWorker::Loaded { models, .. })) => Ok(models),
        Ok(Some(other)) => Err(format!(
            "unexpected answer from the inference worker: {other:?}"
        )),
        Ok(None) => Err(String::new()),
        Err(_) => Err(format!(
            "the inference worker did not load the models within {} s",
            timeout.as_secs()
        )),
    };
    let ended = worker.end().await;
    outcome.map_err(|e| {
        if e.is_empty() {
            format!("the inference engine died while loading the models ({ended})")
        } else {
            e
        }
    })
}

/// One model as the request loop serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// The file to load, or why there is none (requests are then answered with that).
    pub spec: Result<ModelSpec, String>,
    pub request_topic: String,
    pub response_topic: String,
}

/// What the request loop runs: the models and the worker's pool size.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub models: BTreeMap<String, Served>,
    pub pool_size: usize,
    pub run_as: Option<WorkerUser>,
}

/// An error answer.
fn error(id: &Value, model: &str, code: &str, message: impl Into<String>) -> Value {
    json!({"id": id, "model": model, "error": {"code": code, "message": message.into()}})
}

fn publish(bus: &Bus, topic: &str, answer: Value) {
    let msg = Message {
        payload: Payload::Json(answer),
        publisher: NAME.into(),
    };
    if let Err(e) = bus.publish(topic, msg) {
        tracing::warn!(service = NAME, topic, error = %e, "cannot publish an answer");
    }
}

/// The request as JSON, or the error answer to give.
fn parse_request(d: &Delivery) -> Result<Value, String> {
    let v = match &d.message.payload {
        Payload::Json(v) => v.clone(),
        Payload::Binary(b) => serde_json::from_slice(b).map_err(|e| {
            format!("the request on {} is not JSON ({e}): send {{\"id\", \"inputs\"}} or {{\"id\", \"image\"}}", d.topic)
        })?,
    };
    if v.is_object() {
        Ok(v)
    } else {
        Err(format!("the request on {} is not a JSON object", d.topic))
    }
}

/// Serves `plan` until aborted: subscribes to the request topics, runs a worker, restarts it when
/// it dies.
pub async fn serve(bus: Bus, plan: Plan) {
    let (tx, mut requests) = mpsc::channel::<(String, Arc<Delivery>)>(MAX_IN_FLIGHT);
    let mut forwarders = Forwarders(Vec::new());
    for (name, m) in &plan.models {
        let mut sub = match bus.subscribe(&m.request_topic, SubscribeOptions::for_subscriber(NAME))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(service = NAME, model = %name, error = %e, "cannot subscribe to the request topic");
                continue;
            }
        };
        let (tx, name) = (tx.clone(), name.clone());
        forwarders.0.push(tokio::spawn(async move {
            while let Some(d) = sub.recv().await {
                if tx.send((name.clone(), d)).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let load: BTreeMap<String, ModelSpec> = plan
        .models
        .iter()
        .filter_map(|(n, m)| Some((n.clone(), m.spec.clone().ok()?)))
        .collect();
    if load.is_empty() {
        // Nothing to load (no models, or none found): no worker; requests get the reason.
        while let Some((model, d)) = requests.recv().await {
            let served = &plan.models[&model];
            let id = parse_request(&d)
                .ok()
                .and_then(|r| r.get("id").cloned())
                .unwrap_or(Value::Null);
            let why = served.spec.as_ref().err().cloned().unwrap_or_default();
            publish(
                &bus,
                &served.response_topic,
                error(&id, &model, "ModelNotLoaded", why),
            );
        }
        return;
    }
    let mut backoff = FIRST_BACKOFF;
    let mut seq = 0u64;
    loop {
        let started = Instant::now();
        let mut worker = match Worker::spawn(plan.pool_size, plan.run_as) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(service = NAME, error = %e, "cannot start the inference worker");
                refuse_for(&bus, &plan, &mut requests, MAX_BACKOFF, &e).await;
                continue;
            }
        };
        seq += 1;
        let mut alive = worker
            .send(&ToWorker::Load {
                seq,
                models: load.clone(),
            })
            .await
            .is_ok();
        // seq → (model, request id)
        let mut in_flight: HashMap<u64, (String, Value)> = HashMap::new();
        while alive {
            tokio::select! {
                r = requests.recv() => {
                    let Some((model, d)) = r else { return };
                    let served = &plan.models[&model];
                    let request = match parse_request(&d) {
                        Ok(r) => r,
                        Err(e) => {
                            publish(&bus, &served.response_topic, error(&Value::Null, &model, "InvalidRequest", e));
                            continue;
                        }
                    };
                    let id = request.get("id").cloned().unwrap_or(Value::Null);
                    if let Err(why) = &served.spec {
                        publish(&bus, &served.response_topic, error(&id, &model, "ModelNotLoaded", why.clone()));
                        continue;
                    }
                    if in_flight.len() >= MAX_IN_FLIGHT {
                        publish(&bus, &served.response_topic, error(&id, &model, "Busy",
                            format!("{MAX_IN_FLIGHT} requests are already waiting; retry later")));
                        continue;
                    }
                    seq += 1;
                    in_flight.insert(seq, (model.clone(), id));
                    alive = worker.send(&ToWorker::Run { seq, model, request }).await.is_ok();
                }
                f = worker.frames.recv() => match f {
                    Some(FromWorker::Answer { seq, response }) => {
                        if let Some((model, _)) = in_flight.remove(&seq) {
                            publish(&bus, &plan.models[&model].response_topic, response);
                        }
                    }
                    Some(FromWorker::Loaded { models, .. }) => log_loaded(&models),
                    None => alive = false,
                }
            }
        }
        let ended = worker.end().await;
        tracing::error!(
            service = NAME,
            status = %ended,
            in_flight = in_flight.len(),
            "the inference worker exited; answering its requests with an error and restarting it"
        );
        for (_, (model, id)) in in_flight {
            let why = format!(
                "the inference worker exited ({ended}) before answering; it is restarting: retry"
            );
            publish(
                &bus,
                &plan.models[&model].response_topic,
                error(&id, &model, "WorkerExited", why),
            );
        }
        if started.elapsed() >= HEALTHY {
            backoff = FIRST_BACKOFF;
        }
        refuse_for(
            &bus,
            &plan,
            &mut requests,
            backoff,
            "the inference worker is restarting; retry",
        )
        .await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Answers every request with `why` for `wait` (while no worker runs).
async fn refuse_for(
    bus: &Bus,
    plan: &Plan,
    requests: &mut mpsc::Receiver<(String, Arc<Delivery>)>,
    wait: Duration,
    why: &str,
) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            r = requests.recv() => {
                let Some((model, d)) = r else { return };
                let id = parse_request(&d).ok().and_then(|r| r.get("id").cloned()).unwrap_or(Value::Null);
                publish(bus, &plan.models[&model].response_topic, error(&id, &model, "WorkerUnavailable", why));
            }
        }
    }
}

fn log_loaded(models: &BTreeMap<String, LoadOutcome>) {
    for (name, outcome) in models {
        match outcome {
            LoadOutcome::Ok { inputs, outputs } => {
                tracing::info!(service = NAME, model = %name, inputs = ?inputs, outputs = ?outputs, "model loaded")
            }
            LoadOutcome::Error(e) => {
                tracing::error!(service = NAME, model = %name, error = %e, "model not loaded; its requests are answered with this error")
            }
        }
    }
}

/// The subscription forwarding tasks, stopped with the loop.
struct Forwarders(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Forwarders {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
