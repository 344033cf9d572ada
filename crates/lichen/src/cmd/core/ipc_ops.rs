//! The IPC operations the kernel's lifecycle and the CLI service answer: component state and control,
//! local deployments, component-update notifications and configuration validation. Each handler turns
//! a request into a call on the supervisor or the deployment engine.

use lichen_deploy::{
    ConfigurationUpdate, DeploymentEngine, DeploymentHooks, DeploymentRecord,
    FailureHandlingPolicy, LocalDeploymentRequest, RunWithInfo,
};
use lichen_ipc::{Authz, Caller, EventSink, IpcError, ResourceStyle, Router};
use lichen_supervisor::{State, Supervisor};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

const CLI: &str = "aws.greengrass.Cli";
const LIFECYCLE: &str = "aws.greengrass.ipc.lifecycle";
const METRIC: &str = "aws.greengrass.ipc.componentmetric";
/// How many times the components may defer one deployment (DeferComponentUpdate); the next
/// deferral is not honoured and the update proceeds, so no component can hold updates off for
/// ever.
pub const MAX_DEFERRALS: u32 = 10;
/// How long the components may defer one deployment in all; a longer recheck is cut to it.
pub const MAX_DEFERRAL_TOTAL: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct Kernel {
    pub supervisor: Supervisor,
    pub engine: DeploymentEngine,
    pub config: lichen_config::ConfigStore,
    pub hooks: Arc<ComponentUpdateHooks>,
}

fn cli(resource: fn(&Value) -> String) -> Authz {
    Authz::Service {
        service_id: CLI.into(),
        resource,
        style: ResourceStyle::Standard,
    }
}

fn all(_: &Value) -> String {
    "*".into()
}

fn component_name(v: &Value) -> String {
    v.get("componentName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn deployment_id(v: &Value) -> String {
    v.get("deploymentId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn required_str<'a>(v: &'a Value, key: &str) -> Result<&'a str, IpcError> {
    match v.get(key).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(IpcError::invalid_arguments(format!("{key} is required"))),
    }
}

fn not_found(kind: &str, name: &str) -> IpcError {
    IpcError::ResourceNotFound {
        message: format!("{kind} {name} not found"),
        resource_type: Some(kind.to_string()),
        resource_name: Some(name.to_string()),
    }
}

impl Kernel {
    /// Details of a component as ListComponents / GetComponentDetails give them.
    fn details(&self, name: &str) -> Option<Value> {
        let deployed = self.engine.deployed_components();
        let configuration = self
            .config
            .get(&["services", name, "configuration"])
            .unwrap_or_else(|| json!({}));
        if let Some(s) = self.supervisor.status(name) {
            let d = json!({
                "componentName": name,
                "version": s.version,
                "state": s.state.as_str(),
                "configuration": configuration,
            });
            return Some(d);
        }
        // Built-ins run inside the core: listed only while deployed, in the state they really have.
        let state = self.hooks.builtins.get()?.listed_state(name)?;
        deployed.get(name).map(|(version, _)| {
            json!({
                "componentName": name,
                "version": version,
                "state": state,
                "configuration": configuration,
            })
        })
    }

    fn list(&self) -> Vec<Value> {
        let mut names: Vec<String> = self.engine.deployed_components().into_keys().collect();
        for s in self.supervisor.list() {
            if !names.contains(&s.name) {
                names.push(s.name);
            }
        }
        names.sort();
        names
            .iter()
            .filter(|n| n.as_str() != "main")
            .filter_map(|n| self.details(n))
            .collect()
    }
}

fn record_json(r: &DeploymentRecord) -> Value {
    let mut details = json!({
        "deploymentErrorStack": r.error_stack,
        "deploymentErrorTypes": r.error_types,
        "deploymentFailureCause": r.failure_cause,
    });
    if let Some(d) = r.detailed_status {
        details["detailedDeploymentStatus"] = json!(d.as_str());
    }
    if !r.warnings.is_empty() {
        // Ours: clients ignore fields they do not know.
        details["warnings"] = json!(r.warnings);
    }
    if let Some(progress) = &r.progress {
        // Ours as well: the download under way, or the last one.
        details["progress"] = json!(progress);
    }
    json!({
        "deploymentId": r.id,
        "status": r.status.as_str(),
        "createdOn": format_created_on(r.created_on_ms),
        "deploymentStatusDetails": details,
    })
}

/// Greengrass renders `createdOn` as `dd-MM-uuuu HH:mm:ss z` in UTC.
fn format_created_on(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!("[day]-[month]-[year] [hour]:[minute]:[second] UTC");
    t.format(&f).unwrap_or_default()
}

/// Parses a CreateLocalDeployment request (spec §3.1; camelCase members, unknown members ignored).
pub fn parse_local_deployment(v: &Value) -> Result<LocalDeploymentRequest, IpcError> {
    let mut req = LocalDeploymentRequest::default();
    if let Some(g) = v.get("groupName").and_then(Value::as_str)
        && !g.is_empty()
    {
        if g.contains(':') {
            return Err(IpcError::invalid_arguments(format!(
                "groupName {g:?} must not contain ':'"
            )));
        }
        req.group_name = Some(g.to_string());
    }
    if let Some(m) = v
        .get("rootComponentVersionsToAdd")
        .and_then(Value::as_object)
    {
        for (name, ver) in m {
            let ver = ver.as_str().ok_or_else(|| {
                IpcError::invalid_arguments(format!(
                    "rootComponentVersionsToAdd.{name} must be a version string"
                ))
            })?;
            req.root_components_to_add
                .insert(name.clone(), ver.to_string());
        }
    }
    if let Some(a) = v.get("rootComponentsToRemove").and_then(Value::as_array) {
        req.root_components_to_remove = a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
    }
    if let Some(m) = v.get("componentToConfiguration").and_then(Value::as_object) {
        for (name, upd) in m {
            let merge = upd
                .get("MERGE")
                .or_else(|| upd.get("merge"))
                .cloned()
                .filter(|m| !m.is_null());
            let reset = upd
                .get("RESET")
                .or_else(|| upd.get("reset"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            req.configuration_updates
                .insert(name.clone(), ConfigurationUpdate { merge, reset });
        }
    }
    if let Some(m) = v.get("componentToRunWithInfo").and_then(Value::as_object) {
        for (name, rw) in m {
            req.run_with.insert(
                name.clone(),
                RunWithInfo {
                    posix_user: rw
                        .get("posixUser")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    system_resource_limits: rw.get("systemResourceLimits").cloned(),
                },
            );
        }
    }
    if let Some(p) = v.get("recipeDirectoryPath").and_then(Value::as_str) {
        req.recipe_directory_path = Some(PathBuf::from(p));
    }
    if let Some(p) = v.get("artifactsDirectoryPath").and_then(Value::as_str) {
        req.artifacts_directory_path = Some(PathBuf::from(p));
    }
    req.failure_handling_policy = match v.get("failureHandlingPolicy").and_then(Value::as_str) {
        None => FailureHandlingPolicy::DoNothing,
        Some(s) if s.eq_ignore_ascii_case("ROLLBACK") => FailureHandlingPolicy::Rollback,
        Some(s) if s.eq_ignore_ascii_case("DO_NOTHING") => FailureHandlingPolicy::DoNothing,
        Some(s) => {
            return Err(IpcError::invalid_arguments(format!(
                "failureHandlingPolicy {s:?} is not ROLLBACK or DO_NOTHING"
            )));
        }
    };
    Ok(req)
}

fn deploy_error(e: lichen_deploy::DeployError) -> IpcError {
    let msg = e.to_string();
    match &e {
        lichen_deploy::DeployError::InvalidRecipeDirectory { .. } => {
            IpcError::InvalidRecipeDirectoryPath { message: msg }
        }
        lichen_deploy::DeployError::InvalidArtifactsDirectory { .. } => {
            IpcError::InvalidArtifactsDirectoryPath { message: msg }
        }
        _ => IpcError::invalid_arguments(msg),
    }
}

pub fn register(router: &Router, k: Kernel) {
    let kk = k.clone();
    router.register_unary(
        "UpdateState",
        Authz::None,
        move |caller: Caller, req: Value| {
            let k = kk.clone();
            async move {
                let state = required_str(&req, "state")?;
                let state = match state {
                    "RUNNING" => State::Running,
                    "ERRORED" => State::Errored,
                    other => {
                        return Err(IpcError::invalid_arguments(format!(
                            "state {other:?} is not RUNNING or ERRORED"
                        )));
                    }
                };
                k.supervisor
                    .report_state(&caller.component, state)
                    .map_err(|e| not_found_or_service(&caller.component, e))?;
                Ok(json!({}))
            }
        },
    );

    let kk = k.clone();
    router.register_unary(
        "ListComponents",
        cli(all),
        move |_c: Caller, _req: Value| {
            let k = kk.clone();
            async move { Ok(json!({ "components": k.list() })) }
        },
    );

    let kk = k.clone();
    router.register_unary(
        "GetComponentDetails",
        cli(component_name),
        move |_c: Caller, req: Value| {
            let k = kk.clone();
            async move {
                let name = required_str(&req, "componentName")?;
                let mut d = k
                    .details(name)
                    .ok_or_else(|| not_found("Component", name))?;
                // Ours, beside the Greengrass fields (clients ignore fields they do not know).
                if let Some(u) = k.supervisor.resource_usage(name) {
                    d["resourceUsage"] = json!({
                        "memoryBytes": u.memory_bytes,
                        "memoryPeakBytes": u.memory_peak_bytes,
                        "cpuUsageMicros": u.cpu_usage_usec,
                        "cpuThrottledPeriods": u.nr_throttled,
                        "cpuThrottledMicros": u.throttled_usec,
                        "oomKills": u.oom_kills,
                        "processes": u.pids,
                    });
                }
                if let Some(why) = k.supervisor.limits_not_enforced(name) {
                    d["resourceLimitsNotEnforced"] = json!(why);
                }

                Ok(json!({ "componentDetails": d }))
            }
        },
    );

    for (op, stop) in [("RestartComponent", false), ("StopComponent", true)] {
        let kk = k.clone();
        router.register_unary(op, cli(component_name), move |_c: Caller, req: Value| {
            let k = kk.clone();
            async move {
                let name = required_str(&req, "componentName")?.to_string();
                if k.supervisor.status(&name).is_none() {
                    return Err(not_found("Component", &name));
                }
                let result = if stop {
                    k.supervisor.stop(&name).await
                } else {
                    k.supervisor.restart(&name).await
                };
                let key = if stop { "stopStatus" } else { "restartStatus" };
                Ok(match result {
                    Ok(()) => json!({ key: "SUCCEEDED", "message": "" }),
                    Err(e) => json!({ key: "FAILED", "message": e.to_string() }),
                })
            }
        });
    }

    for (op, pause) in [("PauseComponent", true), ("ResumeComponent", false)] {
        let kk = k.clone();
        let authz = Authz::Service {
            service_id: LIFECYCLE.into(),
            resource: component_name,
            style: ResourceStyle::Standard,
        };
        router.register_unary(op, authz, move |_c: Caller, req: Value| {
            let k = kk.clone();
            async move {
                let name = required_str(&req, "componentName")?.to_string();
                let Some(status) = k.supervisor.status(&name) else {
                    return Err(not_found("Component", &name));
                };
                if pause && status.state != State::Running {
                    return Err(IpcError::invalid_arguments(format!(
                        "component {name} is {} and can only be paused while RUNNING",
                        status.state
                    )));
                }
                let r = if pause {
                    k.supervisor.pause(&name).await
                } else {
                    k.supervisor.resume(&name).await
                };
                r.map_err(|e| IpcError::invalid_arguments(e.to_string()))?;
                Ok(json!({}))
            }
        });
    }

    let kk = k.clone();
    router.register_unary(
        "CreateLocalDeployment",
        cli(all),
        move |_c: Caller, req: Value| {
            let k = kk.clone();
            async move {
                let mut parsed = parse_local_deployment(&req)?;
                if let Some(p) = req.get("componentUpdatePolicy") {
                    parsed.component_update_policy = parse_update_policy(p)?;
                }
                let id = k.engine.submit_local(parsed).map_err(deploy_error)?;
                Ok(json!({ "deploymentId": id }))
            }
        },
    );

    let kk = k.clone();
    router.register_unary(
        "GetLocalDeploymentStatus",
        cli(deployment_id),
        move |_c: Caller, req: Value| {
            let k = kk.clone();
            async move {
                let id = required_str(&req, "deploymentId")?;
                let r = k
                    .engine
                    .status(id)
                    .ok_or_else(|| not_found("LocalDeployment", id))?;
                Ok(json!({ "deployment": record_json(&r) }))
            }
        },
    );

    let kk = k.clone();
    router.register_unary(
        "ListLocalDeployments",
        cli(all),
        move |_c: Caller, _req: Value| {
            let k = kk.clone();
            async move {
                let list: Vec<Value> = k.engine.list().iter().map(record_json).collect();
                Ok(json!({ "localDeployments": list }))
            }
        },
    );

    let kk = k.clone();
    router.register_unary(
        "CancelLocalDeployment",
        cli(all),
        move |_c: Caller, req: Value| {
            let k = kk.clone();
            async move {
                let id = required_str(&req, "deploymentId")?;
                if k.engine.status(id).is_none() {
                    return Err(not_found("LocalDeployment", id));
                }
                k.engine
                    .cancel(id)
                    .map_err(|e| IpcError::invalid_arguments(e.to_string()))?;
                Ok(json!({ "message": format!("deployment {id} canceled") }))
            }
        },
    );

    router.register_unary(
        "CreateDebugPassword",
        cli(all),
        move |_c: Caller, _req: Value| async move {
            use rand::Rng;
            let password: String = rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(32)
                .map(char::from)
                .collect();
            let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(8);
            Ok(json!({
                "username": "debug",
                "password": password,
                "passwordExpiration": expires.unix_timestamp() as f64,
            }))
        },
    );

    let authorizer = router.authorizer().clone();
    router.register_unary("PutComponentMetric", Authz::None, move |caller: Caller, req: Value| {
        let authorizer = authorizer.clone();
        async move {
            // Only components named aws.* may publish metrics, then under a componentmetric policy.
            if !caller.component.starts_with("aws.") {
                return Err(IpcError::Unauthorized {
                    message: format!(
                        "component {} may not put metrics: only aws.* components can",
                        caller.component
                    ),
                });
            }
            let metrics = req
                .get("metrics")
                .and_then(Value::as_array)
                .ok_or_else(|| IpcError::invalid_arguments("metrics is required"))?;
            for m in metrics {
                let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.is_empty() || name.len() > 32 {
                    return Err(IpcError::invalid_arguments(format!(
                        "metric name {name:?} must be 1 to 32 bytes"
                    )));
                }
                let value = m.get("value").and_then(Value::as_f64).unwrap_or(-1.0);
                if value < 0.0 {
                    return Err(IpcError::invalid_arguments(format!(
                        "metric {name} value must be a number >= 0"
                    )));
                }
                authorizer.check(
                    &caller.component,
                    METRIC,
                    "aws.greengrass#PutComponentMetric",
                    name,
                    ResourceStyle::Standard,
                )?;
                tracing::info!(component = %caller.component, metric = name, value, unit = ?m.get("unit"), "component metric");
            }
            Ok(json!({}))
        }
    });

    let kk = k.clone();
    router.register_streaming(
        "SubscribeToComponentUpdates",
        "ComponentUpdatePolicyEvents",
        Authz::None,
        move |caller: Caller, _req: Value, sink: EventSink| {
            let k = kk.clone();
            async move {
                k.hooks.add_update_subscriber(&caller.component, sink);
                Ok(json!({}))
            }
        },
    );

    let kk = k.clone();
    router.register_unary(
        "DeferComponentUpdate",
        Authz::None,
        move |caller: Caller, req: Value| {
            let k = kk.clone();
            async move {
                let id = required_str(&req, "deploymentId")?;
                let recheck = req
                    .get("recheckAfterMs")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let message = req
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                k.hooks.defer(&caller.component, id, recheck, message)?;
                Ok(json!({}))
            }
        },
    );

    let kk = k.clone();
    router.register_streaming(
        "SubscribeToValidateConfigurationUpdates",
        "ValidateConfigurationUpdateEvents",
        Authz::None,
        move |caller: Caller, _req: Value, sink: EventSink| {
            let k = kk.clone();
            async move {
                k.hooks.add_validator(&caller.component, sink);
                Ok(json!({}))
            }
        },
    );

    let kk = k.clone();
    router.register_unary(
        "SendConfigurationValidityReport",
        Authz::None,
        move |caller: Caller, req: Value| {
            let k = kk.clone();
            async move {
                let report = req.get("configurationValidityReport").ok_or_else(|| {
                    IpcError::invalid_arguments("configurationValidityReport is required")
                })?;
                let id = required_str(report, "deploymentId")?;
                let accepted = report.get("status").and_then(Value::as_str) != Some("REJECTED");
                let message = report
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                k.hooks
                    .report_validity(&caller.component, id, accepted, message)?;
                Ok(json!({}))
            }
        },
    );
}

fn parse_update_policy(
    v: &Value,
) -> Result<Option<lichen_deploy::ComponentUpdatePolicy>, IpcError> {
    let action = v
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("SKIP_NOTIFY_COMPONENTS");
    let timeout = v.get("timeout").and_then(Value::as_u64).unwrap_or(60);
    match action {
        "NOTIFY_COMPONENTS" => Ok(Some(lichen_deploy::ComponentUpdatePolicy {
            notify_components: true,
            timeout: Duration::from_secs(timeout),
        })),
        "SKIP_NOTIFY_COMPONENTS" => Ok(None),
        other => Err(IpcError::invalid_arguments(format!(
            "componentUpdatePolicy.action {other:?} is not NOTIFY_COMPONENTS or SKIP_NOTIFY_COMPONENTS"
        ))),
    }
}

fn not_found_or_service(name: &str, e: lichen_supervisor::SupervisorError) -> IpcError {
    match e {
        lichen_supervisor::SupervisorError::NotFound(_) => not_found("Component", name),
        other => IpcError::service(other.to_string()),
    }
}

/// Deferral replies and validity reports waiting for a deployment.
#[derive(Default)]
struct Waits {
    /// deployment id → (component → recheckAfterMs) of the components that answered.
    deferrals: HashMap<String, BTreeMap<String, u64>>,
    /// (deployment id, component) → where the validity report goes.
    validations: HashMap<(String, String), oneshot::Sender<Result<(), String>>>,
}

/// NOTIFY_COMPONENTS and configuration validation, over the components' IPC subscriptions.
pub struct ComponentUpdateHooks {
    update_subscribers: Mutex<Vec<(String, EventSink)>>,
    validators: Mutex<Vec<(String, EventSink)>>,
    waits: Mutex<Waits>,
    /// Built-in services, brought in line with each commit before components start.
    builtins: std::sync::OnceLock<Arc<super::builtins::Builtins>>,
    /// Set when a bootstrap step asked for a restart (`Some(true)`: a reboot).
    restart: tokio::sync::watch::Sender<Option<bool>>,
    /// Set with a restart when the core must go back to its previous binary.
    core_rollback: std::sync::atomic::AtomicBool,
}

impl Default for ComponentUpdateHooks {
    fn default() -> Self {
        ComponentUpdateHooks {
            update_subscribers: Mutex::default(),
            validators: Mutex::default(),
            waits: Mutex::default(),
            builtins: std::sync::OnceLock::new(),
            restart: tokio::sync::watch::channel(None).0,
            core_rollback: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl ComponentUpdateHooks {
    /// Resolves once a bootstrap step asked for a restart; true when it asked for a reboot.
    pub async fn restart_wanted(&self) -> bool {
        let mut rx = self.restart.subscribe();
        loop {
            if let Some(reboot) = *rx.borrow_and_update() {
                return reboot;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The restart asked for is a return to the previous core binary (loader exit 102).
    pub fn core_rollback_asked(&self) -> bool {
        self.core_rollback.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn reboot_asked(&self) -> Option<bool> {
        *self.restart.borrow()
    }

    pub fn set_builtins(&self, b: Arc<super::builtins::Builtins>) {
        let _ = self.builtins.set(b);
    }

    fn add_update_subscriber(&self, component: &str, sink: EventSink) {
        let mut subs = self.update_subscribers.lock().unwrap();
        subs.retain(|(_, s)| !s.is_closed());
        subs.push((component.to_string(), sink));
    }

    fn add_validator(&self, component: &str, sink: EventSink) {
        let mut subs = self.validators.lock().unwrap();
        subs.retain(|(_, s)| !s.is_closed());
        subs.push((component.to_string(), sink));
    }

    fn defer(
        &self,
        component: &str,
        id: &str,
        recheck_ms: u64,
        message: &str,
    ) -> Result<(), IpcError> {
        let mut w = self.waits.lock().unwrap();
        let Some(d) = w.deferrals.get_mut(id) else {
            return Err(IpcError::invalid_arguments(format!(
                "deployment {id} is not waiting for component updates (it finished or was never notified)"
            )));
        };
        tracing::info!(
            component,
            deployment = id,
            recheck_ms,
            message,
            "component update deferred"
        );
        d.insert(component.to_string(), recheck_ms);
        Ok(())
    }

    fn report_validity(
        &self,
        component: &str,
        id: &str,
        accepted: bool,
        message: &str,
    ) -> Result<(), IpcError> {
        let tx = self
            .waits
            .lock()
            .unwrap()
            .validations
            .remove(&(id.to_string(), component.to_string()))
            .ok_or_else(|| {
                IpcError::invalid_arguments(format!(
                    "validation request for deployment {id} timed out or was never made"
                ))
            })?;
        let _ = tx.send(if accepted {
            Ok(())
        } else {
            Err(message.to_string())
        });
        Ok(())
    }

    fn live(list: &Mutex<Vec<(String, EventSink)>>) -> Vec<(String, EventSink)> {
        let mut l = list.lock().unwrap();
        l.retain(|(_, s)| !s.is_closed());
        l.clone()
    }
}

impl DeploymentHooks for ComponentUpdateHooks {
    fn stage_core_update(&self, version: &str, artifacts: &std::path::Path) -> Result<(), String> {
        super::core_update::stage(version, artifacts)
    }

    fn core_update_outcome(&self, version: &str) -> Result<(), String> {
        super::core_update::outcome(version)
    }

    fn core_update_rolled_back(&self, version: &str, cause: &str) -> Option<String> {
        match super::core_update::prepare_binary_rollback(version, cause) {
            Ok(note) => {
                if note.is_some() {
                    self.core_rollback
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                note
            }
            Err(e) => {
                tracing::error!(
                    error = %format!("{e:#}"),
                    "cannot go back to the previous core after the failed update"
                );
                None
            }
        }
    }

    fn restart_requested(&self, reboot: bool) -> bool {
        self.restart.send_replace(Some(reboot));
        true
    }

    fn services_committed(&self) -> lichen_deploy::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(b) = self.builtins.get() {
                b.reconcile().await;
            }
        })
    }

    fn pre_update(
        &self,
        deployment_id: &str,
        timeout: Duration,
    ) -> lichen_deploy::BoxFuture<'_, ()> {
        let id = deployment_id.to_string();
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let mut deferrals = 0u32;
            loop {
                let subs = Self::live(&self.update_subscribers);
                if subs.is_empty() {
                    return;
                }
                self.waits
                    .lock()
                    .unwrap()
                    .deferrals
                    .insert(id.clone(), BTreeMap::new());
                let event =
                    json!({ "preUpdateEvent": { "deploymentId": id, "isGgcRestarting": false } });
                for (_, s) in &subs {
                    let _ = s.send(event.clone()).await;
                }
                // Collect answers until every subscriber answered or the timeout passed.
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let answered = self
                        .waits
                        .lock()
                        .unwrap()
                        .deferrals
                        .get(&id)
                        .map(|d| d.len())
                        .unwrap_or(0);
                    if answered >= subs.len() || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let replies = self
                    .waits
                    .lock()
                    .unwrap()
                    .deferrals
                    .remove(&id)
                    .unwrap_or_default();
                let delay = replies.values().copied().max().unwrap_or(0);
                if delay == 0 {
                    return;
                }
                deferrals += 1;
                let left = MAX_DEFERRAL_TOTAL.saturating_sub(started.elapsed());
                if deferrals > MAX_DEFERRALS || left.is_zero() {
                    tracing::warn!(
                        deployment = %id,
                        deferred_by = ?replies
                            .iter()
                            .filter(|(_, ms)| **ms > 0)
                            .map(|(c, _)| c)
                            .collect::<Vec<_>>(),
                        "the update was deferred {MAX_DEFERRALS} times or for {} s in all; it proceeds now",
                        MAX_DEFERRAL_TOTAL.as_secs()
                    );
                    return;
                }
                tracing::info!(deployment = %id, delay_ms = delay, deferrals, "a component deferred the update; asking again later");
                tokio::time::sleep(Duration::from_millis(delay).min(left)).await;
            }
        })
    }

    fn post_update(&self, deployment_id: &str) {
        let event = json!({ "postUpdateEvent": { "deploymentId": deployment_id } });
        for (_, s) in Self::live(&self.update_subscribers) {
            let event = event.clone();
            tokio::spawn(async move {
                let _ = s.send(event).await;
            });
        }
    }

    fn check_builtin(
        &self,
        component: &str,
        configuration: &Value,
        versions: &BTreeMap<String, String>,
    ) -> lichen_deploy::BoxFuture<'_, Result<(), String>> {
        let (component, configuration, versions) = (
            component.to_string(),
            configuration.clone(),
            versions.clone(),
        );
        Box::pin(async move {
            match self.builtins.get() {
                Some(b) => b.check(&component, &configuration, &versions).await,
                None => Ok(()),
            }
        })
    }

    fn validate_configuration(
        &self,
        deployment_id: &str,
        component: &str,
        config: &Value,
        timeout: Duration,
    ) -> lichen_deploy::BoxFuture<'_, Result<(), String>> {
        let id = deployment_id.to_string();
        let component = component.to_string();
        let config = config.clone();
        Box::pin(async move {
            let sinks: Vec<EventSink> = Self::live(&self.validators)
                .into_iter()
                .filter(|(c, _)| *c == component)
                .map(|(_, s)| s)
                .collect();
            if sinks.is_empty() {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            self.waits
                .lock()
                .unwrap()
                .validations
                .insert((id.clone(), component.clone()), tx);
            let event = json!({ "validateConfigurationUpdateEvent": { "configuration": config, "deploymentId": id } });
            for s in &sinks {
                let _ = s.send(event.clone()).await;
            }
            let result = tokio::time::timeout(timeout, rx).await;
            self.waits
                .lock()
                .unwrap()
                .validations
                .remove(&(id.clone(), component.clone()));
            match result {
                Ok(Ok(r)) => {
                    r.map_err(|m| format!("component {component} rejected the configuration: {m}"))
                }
                Ok(Err(_)) | Err(_) => Err(format!(
                    "component {component} did not report whether the configuration is valid within {}s",
                    timeout.as_secs()
                )),
            }
        })
    }
}
