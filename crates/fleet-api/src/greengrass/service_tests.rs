//! The deployments service with in-memory jobs and shadow fakes: what it records and what it
//! asks them to deliver.

use super::service::*;
use lichen_fleet_registry::{FleetStatusReport, Registry, ReportedComponent};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Fake {
    jobs: Mutex<Vec<DeploymentJob>>,
    cancelled: Mutex<Vec<String>>,
    shadow: Mutex<Vec<(String, Value)>>,
}

struct FakeJobs(Arc<Fake>);
struct FakeShadow(Arc<Fake>);

impl DeploymentJobs for FakeJobs {
    fn create_job(&self, job: DeploymentJob) -> BoxFuture<'_, Result<(), String>> {
        self.0.jobs.lock().unwrap().push(job);
        Box::pin(async { Ok(()) })
    }
    fn cancel_job(&self, job_id: &str, _reason: &str) -> BoxFuture<'_, Result<(), String>> {
        self.0.cancelled.lock().unwrap().push(job_id.into());
        Box::pin(async { Ok(()) })
    }
}

impl DeploymentShadow for FakeShadow {
    fn write_desired(&self, thing: &str, desired: Value) -> BoxFuture<'_, Result<(), String>> {
        self.0.shadow.lock().unwrap().push((thing.into(), desired));
        Box::pin(async { Ok(()) })
    }
}

fn setup() -> (
    tempfile::TempDir,
    Arc<Registry>,
    Arc<Fake>,
    Arc<Deployments>,
) {
    let dir = tempfile::tempdir().unwrap();
    let r = Arc::new(Registry::open(&dir.path().join("fleet.db"), "us-east-1").unwrap());
    r.create_thing("admin", "T", None, Default::default())
        .unwrap();
    r.create_thing_group("admin", "G", None, None, Default::default())
        .unwrap();
    r.add_thing_to_group("admin", "G", "T").unwrap();
    let fake = Arc::new(Fake::default());
    let d = Deployments::new(
        r.clone(),
        Arc::new(FakeJobs(fake.clone())),
        Arc::new(FakeShadow(fake.clone())),
    );
    (dir, r, fake, d)
}

fn req(target: String, version: &str, tags: Value) -> CreateRequest {
    CreateRequest {
        target_arn: target,
        name: None,
        spec: json!({"components": {"A": {"componentVersion": version}}, "tags": tags,
                     "iotJobConfiguration": {}, "deploymentPolicies": {}}),
        parent_target_arn: None,
        rollback_of: None,
        client_token: None,
    }
}

#[tokio::test]
async fn groups_get_jobs_things_get_the_shadow_and_a_new_revision_stops_the_old_job() {
    let (_dir, r, fake, d) = setup();
    let g = r.arn("thinggroup/G");
    let first = d
        .create("admin", req(g.clone(), "1.0.0", json!({})))
        .await
        .unwrap();
    let second = d
        .create("admin", req(g.clone(), "1.1.0", json!({})))
        .await
        .unwrap();
    {
        let jobs = fake.jobs.lock().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].document["components"]["A"]["version"], "1.1.0");
        assert!(
            jobs[1].document["configurationArn"]
                .as_str()
                .unwrap()
                .ends_with("thinggroup/G:2")
        );
    }
    assert_eq!(
        *fake.cancelled.lock().unwrap(),
        std::slice::from_ref(&first.id)
    );
    d.cancel("admin", &second.id).await.unwrap();
    assert_eq!(fake.cancelled.lock().unwrap().len(), 2);

    let thing = d
        .create("admin", req(r.arn("thing/T"), "1.0.0", json!({})))
        .await
        .unwrap();
    assert!(thing.job_id.is_none());
    d.cancel("admin", &thing.id).await.unwrap();
    let shadow = fake.shadow.lock().unwrap();
    assert_eq!(shadow[0].1["desiredStatus"], "ACTIVE");
    assert_eq!(shadow[1].1["desiredStatus"], "CANCELED");
    let doc: Value = serde_json::from_str(shadow[0].1["fleetConfig"].as_str().unwrap()).unwrap();
    assert_eq!(doc["deploymentId"], thing.id);
}

#[tokio::test]
async fn a_bake_time_holds_success_until_fleet_status_shows_running() {
    let (_dir, r, _fake, d) = setup();
    let dep = d
        .create(
            "admin",
            req(
                r.arn("thinggroup/G"),
                "1.0.0",
                json!({"lichen:bakeTimeSeconds": "0"}),
            ),
        )
        .await
        .unwrap();
    // A zero bake time holds nothing.
    d.on_execution(ExecutionUpdate {
        job_id: dep.id.clone(),
        thing: "T".into(),
        status: "SUCCEEDED".into(),
        status_details: Default::default(),
    })
    .await;
    assert_eq!(
        r.effective_deployments_of(&dep.id).unwrap()[0].execution_status,
        "SUCCEEDED"
    );

    let baked = d
        .create(
            "admin",
            req(
                r.arn("thinggroup/G"),
                "2.0.0",
                json!({"lichen:bakeTimeSeconds": "1"}),
            ),
        )
        .await
        .unwrap();
    d.on_execution(ExecutionUpdate {
        job_id: baked.id.clone(),
        thing: "T".into(),
        status: "SUCCEEDED".into(),
        status_details: Default::default(),
    })
    .await;
    let shown = || r.effective_deployments_of(&baked.id).unwrap()[0].clone();
    assert_eq!(shown().execution_status, "IN_PROGRESS");
    assert_eq!(d.check_bake().await, 0);
    let report = |status: &str, seq| FleetStatusReport {
        sequence_number: seq,
        complete: true,
        chunk_id: 1,
        overall_status: "HEALTHY".into(),
        components: vec![ReportedComponent {
            name: "A".into(),
            version: "2.0.0".into(),
            status: status.into(),
            is_root: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    r.record_fleet_status("T", &report("RUNNING", 1)).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(d.check_bake().await, 1);
    assert_eq!(shown().execution_status, "SUCCEEDED");

    // A component that breaks during the bake fails the device.
    let broken = d
        .create(
            "admin",
            req(
                r.arn("thinggroup/G"),
                "2.0.0",
                json!({"lichen:bakeTimeSeconds": "60"}),
            ),
        )
        .await
        .unwrap();
    d.on_execution(ExecutionUpdate {
        job_id: broken.id.clone(),
        thing: "T".into(),
        status: "SUCCEEDED".into(),
        status_details: Default::default(),
    })
    .await;
    r.record_fleet_status("T", &report("BROKEN", 2)).unwrap();
    assert_eq!(d.check_bake().await, 1);
    let e = r.effective_deployments_of(&broken.id).unwrap()[0].clone();
    assert_eq!(e.execution_status, "FAILED");
    assert!(e.reason.unwrap().contains("A@2.0.0 became BROKEN"));
}

#[tokio::test]
async fn an_aborted_rollout_fails_and_the_target_goes_back_to_the_previous_revision() {
    let (_dir, r, fake, d) = setup();
    let g = r.arn("thinggroup/G");
    let good = d
        .create("admin", req(g.clone(), "1.0.0", json!({})))
        .await
        .unwrap();
    let bad = d
        .create("admin", req(g.clone(), "2.0.0", json!({})))
        .await
        .unwrap();
    let rollback = d.on_job_aborted(&bad.id).await.unwrap().unwrap();
    assert_eq!(r.get_deployment(&bad.id).unwrap().status, "FAILED");
    assert_eq!(rollback.revision, 3);
    assert_eq!(rollback.rollback_of.as_deref(), Some(bad.id.as_str()));
    let last = fake.jobs.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.job_id, rollback.id);
    assert_eq!(last.document["components"]["A"]["version"], "1.0.0");
    assert!(last.abort.is_none() && last.rollout.is_none());
    assert_ne!(good.id, rollback.id);
    // A job that is not a deployment's is ignored.
    assert!(d.on_job_aborted("other-job").await.unwrap().is_none());
}

#[tokio::test]
async fn failed_bakes_past_the_abort_criteria_stop_the_rollout_and_roll_back() {
    let (_dir, r, fake, d) = setup();
    let g = r.arn("thinggroup/G");
    d.create("admin", req(g.clone(), "1.0.0", json!({})))
        .await
        .unwrap();
    let mut bad = req(g.clone(), "2.0.0", json!({"lichen:bakeTimeSeconds": "60"}));
    bad.spec["iotJobConfiguration"] = json!({"abortConfig": {"criteriaList": [
        {"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 50,
         "minNumberOfExecutedThings": 1}]}});
    let bad = d.create("admin", bad).await.unwrap();
    d.on_execution(ExecutionUpdate {
        job_id: bad.id.clone(),
        thing: "T".into(),
        status: "SUCCEEDED".into(),
        status_details: Default::default(),
    })
    .await;
    let broken = FleetStatusReport {
        sequence_number: 1,
        complete: true,
        chunk_id: 1,
        overall_status: "UNHEALTHY".into(),
        components: vec![ReportedComponent {
            name: "A".into(),
            version: "2.0.0".into(),
            status: "BROKEN".into(),
            is_root: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    r.record_fleet_status("T", &broken).unwrap();
    assert_eq!(d.check_bake().await, 1);
    assert_eq!(r.get_deployment(&bad.id).unwrap().status, "FAILED");
    assert!(fake.cancelled.lock().unwrap().contains(&bad.id));
    let latest = r.latest_deployment(&g).unwrap().unwrap();
    assert_eq!(latest.rollback_of.as_deref(), Some(bad.id.as_str()));
    let last = fake.jobs.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.document["components"]["A"]["version"], "1.0.0");
}
