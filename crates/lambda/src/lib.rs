//! Lambda functions as Greengrass components. A Lambda component's process (`lichen lambda
//! launch`) reads the component's configuration (the keys Greengrass generates: `pinned`,
//! `maxInstancesCount`, `maxIdleTimeInSeconds`, `timeoutInSeconds`, `maxQueueSize`,
//! `inputPayloadEncodingType`, `pubsubTopics`, `lambdaExecutionParameters.EnvironmentVariables`)
//! and runs function instances behind the AWS Lambda Runtime API ([`runtime_api`]), so an
//! unmodified runtime client (`python -m awslambdaric handler`) runs the function.
//!
//! * [`Pool::invoke`] hands an event to an idle instance, starts one when all are busy and the
//!   count is under `maxInstancesCount` (pinned: exactly one, started at once, kept), or waits.
//! * An invocation past `timeoutInSeconds` ends its instance (process group killed) and
//!   answers a timeout; the next invocation gets a fresh instance.
//! * On-demand instances idle for `maxIdleTimeInSeconds` are stopped.
//! * [`v1_api`] serves the Greengrass V1 functions protocol that the V1 `greengrasssdk` uses.
//!
//! Architecture invariant: an instance serves one invocation at a time, and a stuck one never
//! holds the pool: its deadline always ends it.

pub mod runtime_api;
pub mod v1_api;
pub mod v1_sdk;

use runtime_api::{Invocation, Outcome};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    #[error("lambda configuration: {0}")]
    Config(String),
    #[error("the invocation timed out after {0:?}; its instance was stopped")]
    Timeout(Duration),
    #[error("the function failed to start: {0}")]
    Init(String),
    #[error("starting the function: {0}")]
    Spawn(String),
}

/// How to run the function and how many of it.
#[derive(Debug, Clone)]
pub struct FunctionConfig {
    pub function_arn: String,
    /// argv before the handler, e.g. `["python3", "-m", "awslambdaric"]`.
    pub exec_args: Vec<String>,
    pub handler: String,
    /// The unarchived deployment package (the instance's working directory).
    pub code_dir: PathBuf,
    pub pinned: bool,
    pub max_instances: usize,
    pub max_idle: Duration,
    pub timeout: Duration,
    pub max_queue: usize,
    /// `json` (event as the message, application/json) or `binary` (raw bytes).
    pub binary_payload: bool,
    pub memory_kb: u64,
    pub environment: BTreeMap<String, String>,
    /// `(topic filter, "PUB_SUB" | "IOT_CORE")`.
    pub event_sources: Vec<(String, String)>,
}

impl FunctionConfig {
    /// From the component configuration and the launcher's settings.
    pub fn from_component_config(
        v: &Value,
        function_arn: String,
        exec_args: Vec<String>,
        handler: String,
        code_dir: PathBuf,
    ) -> Result<FunctionConfig, LambdaError> {
        let num = |k: &str, d: f64| -> Result<f64, LambdaError> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(d),
                Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(d)),
                Some(Value::String(s)) => s
                    .parse()
                    .map_err(|_| LambdaError::Config(format!("{k} {s:?} is not a number"))),
                Some(o) => Err(LambdaError::Config(format!("{k} {o} is not a number"))),
            }
        };
        let pinned = match v.get("pinned") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(o) => {
                return Err(LambdaError::Config(format!(
                    "pinned {o} is not true or false"
                )));
            }
        };
        let mut event_sources = vec![];
        if let Some(Value::Object(m)) = v.get("pubsubTopics") {
            for (k, t) in m {
                let topic = t["topic"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        LambdaError::Config(format!("pubsubTopics.{k}.topic is required"))
                    })?;
                let kind = t["type"].as_str().unwrap_or("PUB_SUB").to_ascii_uppercase();
                if kind != "PUB_SUB" && kind != "IOT_CORE" {
                    return Err(LambdaError::Config(format!(
                        "pubsubTopics.{k}.type {kind:?} is not PUB_SUB or IOT_CORE"
                    )));
                }
                event_sources.push((topic.to_string(), kind));
            }
        }
        let mut environment = BTreeMap::new();
        if let Some(Value::Object(m)) = v.pointer("/lambdaExecutionParameters/EnvironmentVariables")
        {
            for (k, val) in m {
                let s = match val {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                environment.insert(k.clone(), s);
            }
        }
        let timeout = num("timeoutInSeconds", 3.0)?;
        if timeout <= 0.0 {
            return Err(LambdaError::Config(
                "timeoutInSeconds must be above 0".into(),
            ));
        }
        Ok(FunctionConfig {
            function_arn,
            exec_args,
            handler,
            code_dir,
            pinned,
            max_instances: if pinned {
                1
            } else {
                num("maxInstancesCount", 100.0)?.max(1.0) as usize
            },
            max_idle: Duration::from_secs_f64(num("maxIdleTimeInSeconds", 60.0)?.max(0.0)),
            timeout: Duration::from_secs_f64(timeout),
            max_queue: num("maxQueueSize", 1000.0)?.max(1.0) as usize,
            binary_payload: v["inputPayloadEncodingType"].as_str() == Some("binary"),
            memory_kb: v
                .pointer("/containerParams/memorySize")
                .and_then(Value::as_u64)
                .unwrap_or(16384),
            environment,
            event_sources,
        })
    }
}

/// One running function process and its Runtime API.
struct Instance {
    id: u64,
    tx: mpsc::Sender<Invocation>,
    api: Arc<runtime_api::Api>,
    server: tokio::task::JoinHandle<()>,
    child: tokio::process::Child,
    last_used: Instant,
}

impl Instance {
    fn stop(mut self) {
        // Instances stay in the launcher's process group, so the supervisor's stop of the
        // component ends them too; a single instance is ended by its pid.
        let _ = self.child.start_kill();
        self.server.abort();
        tokio::spawn(async move {
            let _ = self.child.wait().await;
        });
    }
}

struct PoolState {
    idle: Vec<Instance>,
    running: usize,
    next_id: u64,
}

/// The instances of one function.
#[derive(Clone)]
pub struct Pool {
    config: Arc<FunctionConfig>,
    state: Arc<Mutex<PoolState>>,
    freed: Arc<Notify>,
}

impl Pool {
    /// A pinned function's instance starts now; on-demand ones start with their first event.
    pub async fn start(config: FunctionConfig) -> Result<Pool, LambdaError> {
        let pool = Pool {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(PoolState {
                idle: vec![],
                running: 0,
                next_id: 1,
            })),
            freed: Arc::new(Notify::new()),
        };
        if pool.config.pinned {
            let i = pool.spawn().await?;
            let mut st = pool.lock();
            st.running += 1;
            st.idle.push(i);
        }
        if !pool.config.pinned && !pool.config.max_idle.is_zero() {
            let p = pool.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(p.config.max_idle.min(Duration::from_secs(1))).await;
                    let stale: Vec<Instance> = {
                        let mut st = p.lock();
                        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.idle)
                            .into_iter()
                            .partition(|i| i.last_used.elapsed() >= p.config.max_idle);
                        st.idle = keep;
                        st.running -= old.len();
                        old
                    };
                    for i in stale {
                        tracing::info!(instance = i.id, "stopping an idle on-demand instance");
                        i.stop();
                    }
                }
            });
        }
        Ok(pool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Instances running now (idle or busy).
    pub fn instances(&self) -> usize {
        self.lock().running
    }

    async fn spawn(&self) -> Result<Instance, LambdaError> {
        let c = &self.config;
        let id = {
            let mut st = self.lock();
            st.next_id += 1;
            st.next_id - 1
        };
        let (port, tx, api, server) = runtime_api::serve()
            .await
            .map_err(|e| LambdaError::Spawn(format!("runtime API listener: {e}")))?;
        let (program, args) = c
            .exec_args
            .split_first()
            .ok_or_else(|| LambdaError::Config("the runtime's argv is empty".into()))?;
        let name = c
            .function_arn
            .rsplit(':')
            .find(|p| !p.chars().all(|c| c.is_ascii_digit()))
            .unwrap_or("function");
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .arg(&c.handler)
            .current_dir(&c.code_dir)
            .envs(&c.environment)
            .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
            .env("_HANDLER", &c.handler)
            .env("LAMBDA_TASK_ROOT", &c.code_dir)
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env(
                "AWS_LAMBDA_FUNCTION_VERSION",
                c.function_arn.rsplit(':').next().unwrap_or("1"),
            )
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                (c.memory_kb / 1024).max(1).to_string(),
            )
            .env("MY_FUNCTION_ARN", &c.function_arn)
            // The package first, then what the configuration adds (e.g. the V1 SDK's runtime
            // modules the launcher provides).
            .env(
                "PYTHONPATH",
                match c.environment.get("PYTHONPATH") {
                    Some(extra) if !extra.is_empty() => {
                        format!("{}:{extra}", c.code_dir.display())
                    }
                    _ => c.code_dir.display().to_string(),
                },
            )
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| LambdaError::Spawn(format!("{program}: {e}")))?;
        tracing::info!(instance = id, port, function = %c.function_arn, "started a function instance");
        Ok(Instance {
            id,
            tx,
            api,
            server,
            child,
            last_used: Instant::now(),
        })
    }

    /// Takes an idle instance, or starts one under the limit, or waits for one.
    async fn acquire(&self) -> Result<Instance, LambdaError> {
        loop {
            let freed = self.freed.notified();
            let start_new = {
                let mut st = self.lock();
                if let Some(i) = st.idle.pop() {
                    return Ok(i);
                }
                if st.running < self.config.max_instances {
                    st.running += 1;
                    true
                } else {
                    false
                }
            };
            if start_new {
                return self.spawn().await.inspect_err(|_| {
                    self.lock().running -= 1;
                });
            }
            freed.await;
        }
    }

    fn release(&self, mut i: Instance) {
        i.last_used = Instant::now();
        self.lock().idle.push(i);
        self.freed.notify_one();
    }

    fn discard(&self, i: Instance) {
        i.stop();
        self.lock().running -= 1;
        self.freed.notify_one();
    }

    /// Runs one invocation: the function's response, its error document, or a timeout.
    pub async fn invoke(
        &self,
        payload: Vec<u8>,
        topic: Option<&str>,
    ) -> Result<Outcome, LambdaError> {
        let mut inst = self.acquire().await?;
        let (done, result) = oneshot::channel();
        let deadline = std::time::SystemTime::now() + self.config.timeout;
        let deadline_ms = deadline
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let inv = Invocation {
            request_id: uuid::Uuid::new_v4().to_string(),
            payload,
            content_type: if self.config.binary_payload {
                "application/octet-stream"
            } else {
                "application/json"
            },
            deadline_ms,
            function_arn: self.config.function_arn.clone(),
            client_context: topic
                .map(|t| serde_json::json!({"custom": {"subject": t}}).to_string()),
            done,
        };
        if inst.tx.send(inv).await.is_err() {
            self.discard(inst);
            return Err(LambdaError::Spawn(
                "the instance's runtime API is gone".into(),
            ));
        }
        let timeout = self.config.timeout;
        let outcome = tokio::select! {
            r = tokio::time::timeout(timeout, result) => r,
            status = inst.child.wait() => {
                let init = inst.api.init_error.lock().unwrap_or_else(|e| e.into_inner()).take();
                let why = init.map(|b| String::from_utf8_lossy(&b).to_string())
                    .unwrap_or_else(|| format!("the function process exited ({status:?})"));
                self.discard(inst);
                return Err(LambdaError::Init(why));
            }
        };
        match outcome {
            Ok(Ok(o)) => {
                self.release(inst);
                Ok(o)
            }
            Ok(Err(_)) => {
                self.discard(inst);
                Err(LambdaError::Spawn(
                    "the instance dropped the invocation".into(),
                ))
            }
            Err(_) => {
                tracing::warn!(
                    instance = inst.id,
                    ?timeout,
                    "invocation timed out; stopping its instance"
                );
                self.discard(inst);
                Err(LambdaError::Timeout(timeout))
            }
        }
    }

    /// Stops every idle instance (busy ones end with their invocation's deadline).
    pub fn stop(&self) {
        let idle = std::mem::take(&mut self.lock().idle);
        for i in idle {
            i.stop();
        }
    }
}
