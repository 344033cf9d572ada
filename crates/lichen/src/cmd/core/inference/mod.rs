//! `lichen.Inference`: machine-learning inference as a built-in service. Models are component
//! artifacts named in its configuration ([`config`]); a separate `lichen-inference` process
//! loads them once and runs requests on a pool of threads ([`worker`], frames in [`frame`]);
//! requests and answers travel on local pub/sub, so components use ordinary IPC
//! PublishToTopic/SubscribeToTopic with a correlation id.
//!
//! Architecture invariant: the engine never runs in the core's process. A model that crashes it,
//! or a deployment's check of a new model, takes down only a worker; the core answers the
//! requests in flight with an error and starts a new one.
//!
//! A deployment that brings a model checks it before its commit (`check`): each model whose file
//! or settings changed is loaded in a worker of its own, and one that does not load fails the
//! deployment with the model's name, file and the engine's message, nothing changed.
//!
//! Also reported as built-ins, so that recipes written for Greengrass's runtime and model-store
//! components resolve: `variant.DLR`, `variant.TensorFlowLite` and their image-classification
//! and object-detection model stores (they run nothing: the models a Lichen deployment uses are
//! the components named in `lichen.Inference`'s configuration).

pub mod config;
#[allow(dead_code)] // its blocking reader and writer are the worker's (and the tests')
pub mod frame;
mod worker;

use super::builtins::{BoxFuture, BuiltinService, ServiceContext};
use config::ServiceConfig;
use frame::{LoadOutcome, ModelSpec};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

pub const NAME: &str = "lichen.Inference";

/// Greengrass's runtime and model-store component names (their 2021–2023 series) that public
/// recipes depend on.
const ALIASES: &[(&str, &str)] = &[
    ("variant.DLR", "1.6.16"),
    ("variant.TensorFlowLite", "2.5.6"),
    ("variant.DLR.ImageClassification.ModelStore", "2.1.9"),
    ("variant.DLR.ObjectDetection.ModelStore", "2.1.9"),
    (
        "variant.TensorFlowLite.ImageClassification.ModelStore",
        "2.1.6",
    ),
    ("variant.TensorFlowLite.ObjectDetection.ModelStore", "2.1.6"),
];

/// Bound on loading the models of one deployment's check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(300);

pub fn services(ctx: &ServiceContext) -> Vec<Arc<dyn BuiltinService>> {
    let mut v: Vec<Arc<dyn BuiltinService>> = vec![Arc::new(Inference {
        ctx: ctx.clone(),
        state: Arc::new(tokio::sync::Mutex::new(State::default())),
        watched: Arc::new(Mutex::new(BTreeSet::new())),
        reload: Arc::new(Notify::new()),
        watching: std::sync::Once::new(),
    })];
    for (name, version) in ALIASES {
        v.push(Arc::new(Alias { name, version }));
    }
    v
}

/// A Greengrass name kept resolvable; nothing runs for it.
struct Alias {
    name: &'static str,
    version: &'static str,
}

impl BuiltinService for Alias {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> &'static str {
        self.version
    }
    fn apply(&self, _configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A model's file as it was when it last loaded, to skip checking it again.
type Fingerprint = (ModelSpec, u64, Option<SystemTime>);

#[derive(Default)]
struct State {
    /// The configuration last applied (None: not deployed).
    configuration: Option<Value>,
    running: Option<(worker::Plan, tokio::task::JoinHandle<()>)>,
    /// Models that loaded in a check, by name.
    checked: BTreeMap<String, Fingerprint>,
}

struct Inference {
    ctx: ServiceContext,
    state: Arc<tokio::sync::Mutex<State>>,
    /// Components that hold the configured models: a new version of one reloads.
    watched: Arc<Mutex<BTreeSet<String>>>,
    reload: Arc<Notify>,
    watching: std::sync::Once,
}

fn fingerprint(spec: &ModelSpec) -> Fingerprint {
    let meta = std::fs::metadata(&spec.path).ok();
    (
        spec.clone(),
        meta.as_ref().map_or(0, |m| m.len()),
        meta.and_then(|m| m.modified().ok()),
    )
}

/// The user the worker runs as: the service's component user (`runWith.posixUser`, else
/// `runWithDefault.posixUser`) when the core is root and one is configured.
fn worker_user(ctx: &ServiceContext) -> Result<Option<worker::WorkerUser>, String> {
    Ok(
        super::builtins::component_user(&ctx.config, Some(NAME))?.map(|u| worker::WorkerUser {
            uid: u.uid,
            gid: u.gid,
        }),
    )
}

/// Lets the worker's user read a model file of `component`. A recipe's `Permission` OWNER means
/// the component's own user, and the supervisor hands a component its artifacts when it runs a
/// step; a model component usually runs none, so its files are handed here, when it runs as the
/// worker's user. A file of another user's component must be readable as it is (its recipe's
/// `Permission: {Read: ALL}`), else the worker's load fails naming the file.
fn let_worker_read(
    ctx: &ServiceContext,
    path: &std::path::Path,
    component: Option<&str>,
    user: Option<worker::WorkerUser>,
) {
    use std::os::unix::fs::MetadataExt;
    let (Some(user), Some(component)) = (user, component) else {
        return;
    };
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.mode();
    let readable = (meta.uid() == user.uid && mode & 0o400 != 0)
        || (meta.gid() == user.gid && mode & 0o040 != 0)
        || mode & 0o004 != 0;
    if readable || !meta.is_file() || !path.starts_with(ctx.root.join("packages")) {
        return;
    }
    let owner = super::builtins::component_user(&ctx.config, Some(component));
    if !matches!(&owner, Ok(Some(o)) if o.uid == user.uid) {
        return;
    }
    if let Err(e) = std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)) {
        tracing::warn!(service = NAME, file = %path.display(), error = %e, "cannot hand a model file to its component's user");
    }
}

fn spec(m: &config::ModelConfig, path: std::path::PathBuf) -> ModelSpec {
    ModelSpec {
        path,
        threads: m.threads,
        backend: m.backend.clone(),
        preprocess: m.preprocess.clone(),
    }
}

impl Inference {
    /// Starts following the versions of the model components (once, inside the runtime).
    fn watch_model_components(&self) {
        self.watching.call_once(|| {
            let (watched, reload) = (self.watched.clone(), self.reload.clone());
            self.ctx.config.subscribe(
                &["services"],
                Box::new(move |e: &lichen_config::ConfigEvent| {
                    let version = e.path.len() >= 3 && e.path[2].eq_ignore_ascii_case("version");
                    if version
                        && watched
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains(&e.path[1])
                    {
                        reload.notify_one();
                    }
                }),
            );
            let (state, reload, ctx, watched) = (
                self.state.clone(),
                self.reload.clone(),
                self.ctx.clone(),
                self.watched.clone(),
            );
            tokio::spawn(async move {
                loop {
                    reload.notified().await;
                    let mut state = state.lock().await;
                    converge(&ctx, &watched, &mut state);
                }
            });
        });
    }
}

/// Runs what the configuration asks for now (the model components' deployed versions included);
/// a running worker whose plan is unchanged keeps running.
fn converge(ctx: &ServiceContext, watched: &Mutex<BTreeSet<String>>, state: &mut State) {
    let Some(conf) = &state.configuration else {
        if let Some((_, task)) = state.running.take() {
            task.abort();
            tracing::info!(service = NAME, "stopped");
        }
        watched.lock().unwrap_or_else(|p| p.into_inner()).clear();
        return;
    };
    let parsed = match ServiceConfig::parse(conf) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(service = NAME, error = %e, "configuration refused; the previous one stays in force");
            return;
        }
    };
    *watched.lock().unwrap_or_else(|p| p.into_inner()) =
        parsed.model_components().map(str::to_string).collect();
    let version_of = |c: &str| match ctx.config.get(&["services", c, "version"]) {
        Some(Value::String(v)) => Some(v),
        _ => None,
    };
    let run_as = match worker_user(ctx) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(service = NAME, error = %e, "configuration refused; the previous one stays in force");
            return;
        }
    };
    let models = parsed
        .models
        .iter()
        .map(|(name, m)| {
            let spec = config::resolve(name, &m.artifact, &ctx.root, version_of).map(|path| {
                let_worker_read(ctx, &path, m.artifact.component(), run_as);
                spec(m, path)
            });
            if let Err(e) = &spec {
                tracing::error!(service = NAME, model = %name, error = %e, "model not served");
            }
            let served = worker::Served {
                spec,
                request_topic: m.request_topic.clone(),
                response_topic: m.response_topic.clone(),
            };
            (name.clone(), served)
        })
        .collect();
    let plan = worker::Plan {
        models,
        pool_size: parsed.pool_size,
        run_as,
    };
    if state.running.as_ref().is_some_and(|(p, _)| *p == plan) {
        return;
    }
    if let Some((_, task)) = state.running.take() {
        task.abort();
    }
    let files: Vec<String> = plan
        .models
        .iter()
        .map(|(n, m)| match &m.spec {
            Ok(s) => format!("{n}: {}", s.path.display()),
            Err(_) => format!("{n}: none"),
        })
        .collect();
    tracing::info!(service = NAME, models = ?files, "serving");
    let task = tokio::spawn(worker::serve(ctx.bus.clone(), plan.clone()));
    state.running = Some((plan, task));
}

impl BuiltinService for Inference {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> &'static str {
        "1.0.0"
    }

    fn apply(&self, configuration: Option<Value>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.watch_model_components();
            let mut state = self.state.lock().await;
            state.configuration = configuration;
            converge(&self.ctx, &self.watched, &mut state);
        })
    }

    fn check<'a>(
        &'a self,
        configuration: &'a Value,
        versions: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let parsed = ServiceConfig::parse(configuration).map_err(|e| e.to_string())?;
            let run_as = worker_user(&self.ctx)?;
            let mut to_load = BTreeMap::new();
            let mut state = self.state.lock().await;
            for (name, m) in &parsed.models {
                let path = config::resolve(name, &m.artifact, &self.ctx.root, |c| {
                    versions.get(c).cloned()
                })?;
                let_worker_read(&self.ctx, &path, m.artifact.component(), run_as);
                let spec = spec(m, path);
                if state.checked.get(name) != Some(&fingerprint(&spec)) {
                    to_load.insert(name.clone(), spec);
                }
            }
            if to_load.is_empty() {
                return Ok(());
            }
            let outcome = worker::check(to_load.clone(), run_as, CHECK_TIMEOUT).await?;
            let mut failures = vec![];
            for (name, spec) in to_load {
                match outcome.get(&name) {
                    Some(LoadOutcome::Ok { .. }) => {
                        state.checked.insert(name, fingerprint(&spec));
                    }
                    Some(LoadOutcome::Error(e)) => {
                        let file = spec.path.display().to_string();
                        // The engine's message names the file where it can; else we do.
                        failures.push(if e.contains(&file) {
                            format!("model {name} does not load: {e}")
                        } else {
                            format!("model {name} does not load ({file}): {e}")
                        });
                    }
                    None => failures.push(format!("model {name}: the worker did not report it")),
                }
            }
            if failures.is_empty() {
                Ok(())
            } else {
                Err(failures.join("; "))
            }
        })
    }
}
