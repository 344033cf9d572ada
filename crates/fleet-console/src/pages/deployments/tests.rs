//! Handler tests for the deployments and components pages, on a real registry, the real
//! deployments service and the real jobs service (jobs create executions for the group's
//! things; nothing reaches a device): roles refused on the server, CSRF, publish, preview then
//! deploy (and only what was previewed), conflicts, the live rollout fragment, cancel and the
//! fleet-wide rollback.

use crate::{ConsoleState, router};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use lichen_fleet_api::greengrass::service::BoxFuture;
use lichen_fleet_api::greengrass::{
    DeploymentJob, DeploymentJobs, DeploymentShadow, Deployments, JOB_NAMESPACE,
};
use lichen_fleet_jobs::{CreateJob, JobsService, TargetSelection};
use lichen_fleet_registry::Registry;
use lichen_fleet_registry::Role;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// The deployments service's jobs, on the real jobs service (as `lichen fleet serve` wires it).
struct Jobs(JobsService);

fn config<T: serde::de::DeserializeOwned>(v: Option<Value>) -> Result<Option<T>, String> {
    v.map(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
        .transpose()
}

impl DeploymentJobs for Jobs {
    fn create_job(&self, job: DeploymentJob) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let req = CreateJob {
                job_id: job.job_id,
                targets: vec![job.target_arn],
                document: job.document.to_string(),
                description: job.description,
                target_selection: TargetSelection::Continuous,
                rollout: config(job.rollout)?,
                abort: config(job.abort)?,
                timeout: config(job.timeout)?,
                namespace_id: Some(JOB_NAMESPACE.into()),
            };
            self.0
                .create_job(req)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
    fn cancel_job(&self, job_id: &str, reason: &str) -> BoxFuture<'_, Result<(), String>> {
        let (id, reason) = (job_id.to_string(), reason.to_string());
        Box::pin(async move {
            self.0
                .cancel_job(&id, false, Some(reason))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// Thing deployments' shadow writes, recorded.
#[derive(Default)]
struct Shadow(Mutex<Vec<(String, Value)>>);

impl DeploymentShadow for Shadow {
    fn write_desired(&self, thing: &str, desired: Value) -> BoxFuture<'_, Result<(), String>> {
        self.0.lock().unwrap().push((thing.into(), desired));
        Box::pin(async { Ok(()) })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: ConsoleState,
    jobs: JobsService,
}

const APP: &str = "com.example.Hello";

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let r = Arc::new(Registry::open(&dir.path().join("fleet.db"), "us-east-1").unwrap());
    r.create_thing_group("test", "line", None, None, Default::default())
        .unwrap();
    for t in ["core1", "core2"] {
        r.create_thing("test", t, None, Default::default()).unwrap();
        r.add_thing_to_group("test", "line", t).unwrap();
    }
    let jobs = JobsService::new(r.clone());
    let deployments = Deployments::new(
        r.clone(),
        Arc::new(Jobs(jobs.clone())),
        Arc::new(Shadow::default()),
    );
    let state = ConsoleState {
        deployments: Some(deployments),
        jobs: Some(jobs.clone()),
        ..ConsoleState::new(r)
    };
    Fixture {
        _dir: dir,
        state,
        jobs,
    }
}

fn recipe(version: &str) -> String {
    json!({
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": APP,
        "ComponentVersion": version,
        "ComponentDescription": "says hello",
        "ComponentPublisher": "tests",
        "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "echo hello"}}],
    })
    .to_string()
}

/// A user of `role` signed in: (cookie, CSRF token).
fn sign_in(f: &Fixture, name: &str, role: Role) -> (String, String) {
    let r = &f.state.registry;
    r.create_user("test", name, "password-123", role).unwrap();
    let (token, s) = r.create_session(name, 600).unwrap();
    (format!("lichen_console={token}"), s.csrf_token)
}

async fn send(f: &Fixture, req: Request<Body>) -> (StatusCode, String, String) {
    let resp = router(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get(f: &Fixture, path: &str, cookie: &str) -> (StatusCode, String) {
    let (s, _, b) = send(
        f,
        Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    (s, b)
}

async fn post(
    f: &Fixture,
    path: &str,
    cookie: &str,
    form: &[(&str, &str)],
) -> (StatusCode, String, String) {
    send(
        f,
        Request::post(path)
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(serde_urlencoded::to_string(form).unwrap()))
            .unwrap(),
    )
    .await
}

/// A hidden input's value in `html` (maud escapes `"` and `&`).
fn hidden(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in {html}"));
    let rest = &html[at + name.len() + 15..];
    let v = &rest[..rest.find('"').unwrap()];
    v.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

async fn publish(f: &Fixture, cookie: &str, csrf: &str, version: &str) {
    let (s, loc, body) = post(
        f,
        "/console/components/publish",
        cookie,
        &[("csrf", csrf), ("recipe", &recipe(version))],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(loc, format!("/console/components/{APP}/versions/{version}"));
}

/// Previews then deploys `version` to the group; the new deployment's id.
async fn deploy(f: &Fixture, cookie: &str, csrf: &str, version: &str) -> String {
    let (s, _, page) = post(
        f,
        "/console/deployments/preview",
        cookie,
        &[
            ("csrf", csrf),
            ("target_kind", "group"),
            ("target_name", "line"),
            ("component.0", APP),
            ("version.0", version),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let request = hidden(&page, "request");
    let digest = hidden(&page, "digest");
    let (s, loc, body) = post(
        f,
        "/console/deployments",
        cookie,
        &[("csrf", csrf), ("request", &request), ("digest", &digest)],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
    loc.trim_start_matches("/console/deployments/").to_string()
}

#[tokio::test]
async fn a_viewer_sees_no_forms_and_every_change_is_refused_with_403() {
    let f = fixture();
    let (op, op_csrf) = sign_in(&f, "olive", Role::Operator);
    publish(&f, &op, &op_csrf, "1.0.0").await;
    let id = deploy(&f, &op, &op_csrf, "1.0.0").await;
    let (viewer, csrf) = sign_in(&f, "vic", Role::Viewer);
    let (s, list) = get(&f, "/console/deployments", &viewer).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        list.contains(&id) && !list.contains("New deployment"),
        "{list}"
    );
    let (_, page) = get(&f, &format!("/console/deployments/{id}"), &viewer).await;
    assert!(page.contains("rollout-table"), "{page}");
    assert!(!page.contains("Roll back the fleet") && !page.contains("Cancel deployment"));
    let (_, comps) = get(&f, "/console/components", &viewer).await;
    assert!(comps.contains(APP) && !comps.contains("Publish a component version"));
    let (_, version) = get(
        &f,
        &format!("/console/components/{APP}/versions/1.0.0"),
        &viewer,
    )
    .await;
    assert!(!version.contains("Deploy this version"));
    assert_eq!(
        get(&f, "/console/deployments/new", &viewer).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&f, "/console/components/publish", &viewer).await.0,
        StatusCode::FORBIDDEN
    );
    let form = [
        ("csrf", csrf.as_str()),
        ("target_name", "line"),
        ("component.0", APP),
        ("version.0", "1.0.0"),
    ];
    assert_eq!(
        post(&f, "/console/deployments/preview", &viewer, &form)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let request = json!({"targetArn": f.state.registry.arn("thinggroup/line"),
        "components": {APP: {"componentVersion": "1.0.0"}}})
    .to_string();
    let digest = super::create::digest(&request);
    let (s, _, body) = post(
        &f,
        "/console/deployments",
        &viewer,
        &[("csrf", &csrf), ("request", &request), ("digest", &digest)],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("operator role"), "{body}");
    // A form with none of the fields is refused for the role too, not for its shape.
    for path in ["/console/deployments", "/console/components/publish"] {
        let (s, _, body) = post(&f, path, &viewer, &[("csrf", &csrf), ("targetArn", "x")]).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    for action in ["cancel", "rollback"] {
        let path = format!("/console/deployments/{id}/{action}");
        assert_eq!(
            post(&f, &path, &viewer, &[("csrf", &csrf)]).await.0,
            StatusCode::FORBIDDEN
        );
    }
    let (s, _, _) = post(
        &f,
        "/console/components/publish",
        &viewer,
        &[("csrf", &csrf), ("recipe", &recipe("2.0.0"))],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Nothing changed: one deployment, still ACTIVE; no 2.0.0.
    let d = f.state.registry.get_deployment(&id).unwrap();
    assert_eq!(d.status, "ACTIVE");
    assert!(f.state.registry.component_version(APP, "2.0.0").is_err());
}

#[tokio::test]
async fn a_post_without_the_sessions_csrf_token_changes_nothing() {
    let f = fixture();
    let (op, _) = sign_in(&f, "olive", Role::Operator);
    let (s, _, _) = post(
        &f,
        "/console/components/publish",
        &op,
        &[("csrf", "wrong"), ("recipe", &recipe("1.0.0"))],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(f.state.registry.component_version(APP, "1.0.0").is_err());
}

#[tokio::test]
async fn an_operator_publishes_previews_and_deploys_only_what_was_previewed() {
    let f = fixture();
    let (op, csrf) = sign_in(&f, "olive", Role::Operator);
    publish(&f, &op, &csrf, "1.0.0").await;
    let (_, version) = get(
        &f,
        &format!("/console/components/{APP}/versions/1.0.0"),
        &op,
    )
    .await;
    assert!(
        version.contains("DEPLOYABLE") && version.contains("echo hello"),
        "{version}"
    );
    // The YAML view converts the stored JSON.
    let (_, yaml) = get(
        &f,
        &format!("/console/components/{APP}/versions/1.0.0?format=yaml"),
        &op,
    )
    .await;
    assert!(yaml.contains("ComponentName: com.example.Hello"), "{yaml}");
    // A bad recipe comes back with the fleet's reason, naming the field.
    let (s, _, body) = post(
        &f,
        "/console/components/publish",
        &op,
        &[("csrf", &csrf), ("recipe", "{\"ComponentName\": \"x\"}")],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains("inlineRecipe"), "{body}");

    // The version page's "Deploy this version" opens the form filled in.
    let (s, form) = get(
        &f,
        &format!("/console/deployments/new?component={APP}&version=1.0.0&group=line"),
        &op,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{form}");
    assert!(form.contains(&format!("id=\"component-0\" name=\"component.0\" list=\"component-names\" aria-label=\"Component 1\" value=\"{APP}\"")), "{form}");
    assert!(form.contains("<option value=\"line\">"), "{form}");
    let (s, _, page) = post(
        &f,
        "/console/deployments/preview",
        &op,
        &[
            ("csrf", &csrf),
            ("target_kind", "group"),
            ("target_name", "line"),
            ("component.0", APP),
            ("version.0", "1.0.0"),
            ("merge.0", "{\"greeting\": \"hi\"}"),
            ("rollout_max_per_minute", "5"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    for t in ["core1", "core2"] {
        assert!(
            page.contains(&format!("data-thing=\"{t}\"")),
            "{t} missing from the preview: {page}"
        );
    }
    assert!(
        page.contains("data-version=\"1.0.0\"") && page.contains("Deploy to 2 device(s)"),
        "{page}"
    );
    let request = hidden(&page, "request");
    let digest = hidden(&page, "digest");
    // A request changed after the preview is refused.
    let changed = request.replace("1.0.0", "9.9.9");
    let (s, _, _) = post(
        &f,
        "/console/deployments",
        &op,
        &[("csrf", &csrf), ("request", &changed), ("digest", &digest)],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        f.state
            .registry
            .list_deployments(None, None, false, &Default::default())
            .unwrap()
            .items
            .is_empty()
    );

    let (s, loc, _) = post(
        &f,
        "/console/deployments",
        &op,
        &[("csrf", &csrf), ("request", &request), ("digest", &digest)],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let id = loc.trim_start_matches("/console/deployments/");
    let d = f.state.registry.get_deployment(id).unwrap();
    let spec: Value = serde_json::from_str(&d.spec).unwrap();
    assert_eq!(
        spec["components"][APP]["configurationUpdate"]["merge"],
        "{\"greeting\": \"hi\"}"
    );
    assert_eq!(
        spec["iotJobConfiguration"]["jobExecutionsRolloutConfig"]["maximumPerMinute"],
        5
    );
    // The job exists with an execution per device, which the live fragment lists.
    let execs = f.jobs.list_executions_for_job(id).await.unwrap();
    assert_eq!(execs.len(), 2);
    let (s, fragment) = get(&f, &format!("/console/deployments/{id}/progress"), &op).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        fragment.contains("data-thing=\"core1\" data-status=\"QUEUED\""),
        "{fragment}"
    );
    assert!(
        fragment.contains("<svg") && fragment.contains("rollout-chart"),
        "{fragment}"
    );
    // A device reports: the fragment follows.
    f.state
        .registry
        .record_device_report("core1", id, "SUCCEEDED", None, "{}", false)
        .unwrap();
    let (_, fragment) = get(&f, &format!("/console/deployments/{id}/progress"), &op).await;
    assert!(
        fragment.contains("data-thing=\"core1\" data-status=\"SUCCEEDED\""),
        "{fragment}"
    );
    assert!(fragment.contains("1 / 2"), "{fragment}");
    // A failure shows with the device's reason and error stack, and counts as failed.
    f.state
        .registry
        .record_device_report(
            "core2",
            id,
            "FAILED",
            Some("com.example.Hello errored during install"),
            r#"{"errorStack":["DEPLOYMENT_FAILURE","COMPONENT_BROKEN"],"errorTypes":["COMPONENT_ERROR"]}"#,
            false,
        )
        .unwrap();
    let (_, fragment) = get(&f, &format!("/console/deployments/{id}/progress"), &op).await;
    assert!(
        fragment.contains("data-thing=\"core2\" data-status=\"FAILED\""),
        "{fragment}"
    );
    assert!(fragment.contains("com.example.Hello errored during install"));
    assert!(
        fragment.contains("<code>COMPONENT_BROKEN</code>"),
        "{fragment}"
    );
    assert!(
        fragment.contains("1 succeeded, 1 failed, 0 in progress, 0 queued of 2 devices"),
        "{fragment}"
    );
}

#[tokio::test]
async fn unknown_targets_bad_fields_and_unpublished_versions_are_named() {
    let f = fixture();
    let (op, csrf) = sign_in(&f, "olive", Role::Operator);
    let (s, _, body) = post(
        &f,
        "/console/deployments/preview",
        &op,
        &[
            ("csrf", &csrf),
            ("target_name", "nope"),
            ("component.0", APP),
            ("version.0", "1.0.0"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains("no thing group named"), "{body}");
    let (s, _, body) = post(
        &f,
        "/console/deployments/preview",
        &op,
        &[
            ("csrf", &csrf),
            ("target_name", "line"),
            ("component.0", APP),
            ("version.0", "1.0.0"),
            ("abort_threshold", "150"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains("Abort: failure percentage"), "{body}");
    // Not published: the preview says so and offers no deploy; a deploy sent anyway is refused.
    let (s, _, page) = post(
        &f,
        "/console/deployments/preview",
        &op,
        &[
            ("csrf", &csrf),
            ("target_name", "line"),
            ("component.0", APP),
            ("version.0", "3.0.0"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("preview-unpublished") && page.contains("com.example.Hello 3.0.0"),
        "{page}"
    );
    assert!(!page.contains("name=\"digest\""), "{page}");
    let request = json!({"targetArn": f.state.registry.arn("thinggroup/line"),
        "components": {APP: {"componentVersion": "3.0.0"}}})
    .to_string();
    let digest = super::create::digest(&request);
    let (s, _, body) = post(
        &f,
        "/console/deployments",
        &op,
        &[("csrf", &csrf), ("request", &request), ("digest", &digest)],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains("com.example.Hello 3.0.0"), "{body}");
    assert!(
        f.state
            .registry
            .list_deployments(None, None, false, &Default::default())
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn conflicting_group_deployments_show_in_the_preview_and_block_the_deploy() {
    let f = fixture();
    let (op, csrf) = sign_in(&f, "olive", Role::Operator);
    publish(&f, &op, &csrf, "1.0.0").await;
    publish(&f, &op, &csrf, "2.0.0").await;
    let r = &f.state.registry;
    r.create_thing_group("test", "canary", None, None, Default::default())
        .unwrap();
    r.add_thing_to_group("test", "canary", "core1").unwrap();
    deploy(&f, &op, &csrf, "1.0.0").await;
    let (s, _, page) = post(
        &f,
        "/console/deployments/preview",
        &op,
        &[
            ("csrf", &csrf),
            ("target_name", "canary"),
            ("component.0", APP),
            ("version.0", "2.0.0"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("preview-conflicts")
            && page.contains("no version of com.example.Hello satisfies"),
        "{page}"
    );
    assert!(
        !page.contains("name=\"digest\""),
        "a conflicting preview offers no deploy button"
    );
}

#[tokio::test]
async fn cancel_and_the_fleet_wide_rollback_to_the_previous_revision() {
    let f = fixture();
    let (op, csrf) = sign_in(&f, "olive", Role::Operator);
    publish(&f, &op, &csrf, "1.0.0").await;
    publish(&f, &op, &csrf, "2.0.0").await;
    let first = deploy(&f, &op, &csrf, "1.0.0").await;
    let second = deploy(&f, &op, &csrf, "2.0.0").await;
    let (_, page) = get(&f, &format!("/console/deployments/{second}"), &op).await;
    assert!(
        page.contains("Roll back the fleet")
            && page.contains("revision 1 (com.example.Hello 1.0.0)"),
        "{page}"
    );
    // Only the target's latest revision rolls back.
    let (s, _, body) = post(
        &f,
        &format!("/console/deployments/{first}/rollback"),
        &op,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, loc, _) = post(
        &f,
        &format!("/console/deployments/{second}/rollback"),
        &op,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let third = loc.trim_start_matches("/console/deployments/");
    let r = &f.state.registry;
    let rb = r.get_deployment(third).unwrap();
    assert_eq!(
        (rb.revision, rb.rollback_of.as_deref()),
        (3, Some(second.as_str()))
    );
    let spec: Value = serde_json::from_str(&rb.spec).unwrap();
    assert_eq!(spec["components"][APP]["componentVersion"], "1.0.0");
    assert_eq!(spec["tags"]["lichen:rollbackOf"], second.as_str());
    assert_eq!(r.get_deployment(&second).unwrap().status, "FAILED");
    // The rolled-back revision's job stopped.
    let job = f.jobs.describe_job(&second).await.unwrap();
    assert_eq!(job.status.as_str(), "CANCELED");
    // Cancel the rollback itself.
    let (s, _, _) = post(
        &f,
        &format!("/console/deployments/{third}/cancel"),
        &op,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(r.get_deployment(third).unwrap().status, "CANCELED");
    let (s, _, _) = post(
        &f,
        &format!("/console/deployments/{third}/cancel"),
        &op,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, list) = get(&f, "/console/deployments?all=1", &op).await;
    for id in [&first, &second, &third.to_string()] {
        assert!(list.contains(id.as_str()), "{id} missing from {list}");
    }
}
