//! The service over a real registry: SQLite always, PostgreSQL too where
//! `LICHEN_TEST_POSTGRES_URL` names a server (`./scripts/test` starts one).

use super::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

struct Store {
    registry: Arc<Registry>,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("fleet.db"), "us-east-1").unwrap();
    Store {
        registry: Arc::new(registry),
        _dir: Some(dir),
    }
}

/// A fresh database on the test PostgreSQL server, if there is one.
fn postgres() -> Option<Store> {
    let admin = match std::env::var("LICHEN_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "LICHEN_TEST_POSTGRES_URL is not set: under CI the PostgreSQL tests must run"
            );
            eprintln!("PostgreSQL part skipped: LICHEN_TEST_POSTGRES_URL is not set");
            return None;
        }
    };
    let name = format!("lichen_jobs_{}", uuid::Uuid::new_v4().simple());
    let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'"
    ))
    .unwrap();
    let base = &admin[..admin.rfind('/').unwrap()];
    let registry = Registry::open_postgres(&format!("{base}/{name}"), "us-east-1").unwrap();
    Some(Store {
        registry: Arc::new(registry),
        _dir: None,
    })
}

/// Runs `scenario` on every store available.
fn on_each_store(scenario: impl Fn(&Registry, JobsService)) {
    let mut stores = vec![sqlite()];
    stores.extend(postgres());
    for s in stores {
        scenario(&s.registry, JobsService::new(s.registry.clone()));
    }
}

fn things(r: &Registry, group: &str, names: &[&str]) -> String {
    r.create_thing_group("t", group, None, None, BTreeMap::new())
        .unwrap();
    for n in names {
        r.create_thing("t", n, None, BTreeMap::new()).unwrap();
        r.add_thing_to_group("t", group, n).unwrap();
    }
    r.arn(&format!("thinggroup/{group}"))
}

fn job(id: &str, targets: Vec<String>) -> CreateJob {
    CreateJob {
        job_id: id.into(),
        targets,
        document: r#"{"op":"install"}"#.into(),
        ..Default::default()
    }
}

fn payload(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn status(svc: &JobsService, job: &str, thing: &str) -> ExecutionStatus {
    svc.describe_execution_blocking(job, thing).unwrap().status
}

fn drain(rx: &mut broadcast::Receiver<JobEvent>) -> Vec<JobEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

#[test]
fn a_device_takes_a_job_to_success_and_the_job_completes() {
    on_each_store(|r, svc| {
        let g = things(r, "g", &["a"]);
        let mut events = svc.subscribe();
        svc.create_job_blocking("t", &job("j1", vec![g])).unwrap();
        let started = mqtt::start_next(&svc, "a", None, &payload(json!({}))).unwrap();
        assert_eq!(started["execution"]["status"], "IN_PROGRESS");
        assert_eq!(
            started["execution"]["jobDocument"],
            json!({"op": "install"})
        );
        let v = started["execution"]["versionNumber"].as_i64().unwrap();

        let stale = mqtt::update(
            &svc,
            "a",
            "j1",
            None,
            &payload(json!({"status": "SUCCEEDED", "expectedVersion": v - 1})),
        )
        .err()
        .unwrap();
        assert_eq!(stale.code, "VersionMismatch");
        assert_eq!(stale.state.unwrap().version, v);
        let bad = mqtt::update(
            &svc,
            "a",
            "j1",
            None,
            &payload(json!({"status": "CANCELED"})),
        );
        assert_eq!(bad.err().unwrap().code, "InvalidStateTransition");

        mqtt::update(
            &svc,
            "a",
            "j1",
            None,
            &payload(
                json!({"status": "SUCCEEDED", "statusDetails": {"k": "v"}, "expectedVersion": v}),
            ),
        )
        .unwrap();
        let again = mqtt::update(&svc, "a", "j1", None, &payload(json!({"status": "FAILED"})));
        assert_eq!(again.err().unwrap().code, "TerminalStateReached");

        let job = svc.describe_job_blocking("j1").unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.process.succeeded, 1);
        let e = svc.describe_execution_blocking("j1", "a").unwrap();
        assert_eq!(e.status_details, BTreeMap::from([("k".into(), "v".into())]));
        let seen = drain(&mut events);
        assert!(seen.contains(&JobEvent::JobCompleted {
            job_id: "j1".into(),
            status: JobStatus::Completed
        }));
        assert!(seen.iter().any(|e| matches!(e, JobEvent::ExecutionChanged { status: ExecutionStatus::Succeeded, thing, .. } if thing == "a")));
    });
}

#[test]
fn abort_cancels_the_rest_and_names_the_things_that_succeeded() {
    on_each_store(|r, svc| {
        let g = things(r, "g", &["a", "b", "c"]);
        let mut req = job("j", vec![g]);
        req.abort = Some(AbortConfig {
            criteria_list: vec![AbortCriteria {
                failure_type: "ALL".into(),
                action: "CANCEL".into(),
                threshold_percentage: 50.0,
                min_number_of_executed_things: 2,
            }],
        });
        svc.create_job_blocking("t", &req).unwrap();
        let mut events = svc.subscribe();
        let done = |t: &str, s: &str| {
            mqtt::update(&svc, t, "j", None, &payload(json!({"status": s}))).unwrap();
        };
        done("a", "SUCCEEDED");
        assert_eq!(
            svc.describe_job_blocking("j").unwrap().status,
            JobStatus::InProgress
        );
        done("b", "REJECTED");
        let job = svc.describe_job_blocking("j").unwrap();
        assert_eq!(job.status, JobStatus::Canceled);
        assert_eq!(job.reason_code.as_deref(), Some("ALL_THRESHOLD_EXCEEDED"));
        assert_eq!(status(&svc, "j", "c"), ExecutionStatus::Canceled);
        assert!(drain(&mut events).contains(&JobEvent::JobAborted {
            job_id: "j".into(),
            reason_code: "ALL_THRESHOLD_EXCEEDED".into(),
            succeeded_things: vec!["a".into()],
        }));
    });
}

#[test]
fn in_progress_executions_time_out() {
    on_each_store(|r, svc| {
        let g = things(r, "g", &["a"]);
        let mut req = job("j", vec![g]);
        req.timeout = Some(TimeoutConfig {
            in_progress_timeout_in_minutes: Some(1),
        });
        svc.create_job_blocking("t", &req).unwrap();
        mqtt::start_next(&svc, "a", None, &payload(json!({}))).unwrap();
        svc.tick_blocking(now_ms() + 30_000).unwrap();
        assert_eq!(status(&svc, "j", "a"), ExecutionStatus::InProgress);
        svc.tick_blocking(now_ms() + 61_000).unwrap();
        assert_eq!(status(&svc, "j", "a"), ExecutionStatus::TimedOut);
        assert_eq!(
            svc.describe_job_blocking("j").unwrap().status,
            JobStatus::Completed
        );
    });
}

#[test]
fn a_rollout_releases_at_most_its_rate_per_minute() {
    on_each_store(|r, svc| {
        let g = things(r, "g", &["a", "b", "c", "d", "e"]);
        let mut req = job("j", vec![g]);
        req.rollout = Some(RolloutConfig {
            maximum_per_minute: Some(2),
            exponential_rate: None,
        });
        svc.create_job_blocking("t", &req).unwrap();
        let released = |svc: &JobsService| svc.list_executions_for_job_blocking("j").unwrap().len();
        assert_eq!(released(&svc), 2);
        svc.tick_blocking(now_ms() + 1_000).unwrap();
        assert_eq!(released(&svc), 2);
        assert!(
            !svc.describe_job_blocking("j")
                .unwrap()
                .process
                .processing_targets
                .is_empty()
        );
        svc.tick_blocking(now_ms() + 61_000).unwrap();
        assert_eq!(released(&svc), 4);
        // Unreleased things see nothing.
        let (running, queued) = svc.read(|tx| store::pending(tx, "e", None)).unwrap();
        assert!(running.is_empty() && queued.is_empty());
    });
}

#[test]
fn continuous_jobs_reach_things_that_join_later_and_namespaces_stay_apart() {
    on_each_store(|r, svc| {
        let g = things(r, "g", &["a"]);
        let mut req = job("j", vec![g]);
        req.target_selection = TargetSelection::Continuous;
        req.namespace_id = Some("aws-gg-deployment".into());
        svc.create_job_blocking("t", &req).unwrap();
        r.create_thing("t", "late", None, BTreeMap::new()).unwrap();
        svc.thing_changed("late");
        assert!(svc.describe_execution_blocking("j", "late").is_err());
        r.add_thing_to_group("t", "g", "late").unwrap();
        svc.thing_changed("late");
        assert_eq!(status(&svc, "j", "late"), ExecutionStatus::Queued);
        // Plain topics do not see the namespaced job; the namespaced ones do.
        assert!(
            mqtt::start_next(&svc, "late", None, &payload(json!({})))
                .unwrap()
                .get("execution")
                .is_none()
        );
        let ns = Some("aws-gg-deployment");
        let got = mqtt::describe(&svc, "late", "$next", ns, &payload(json!({}))).unwrap();
        assert_eq!(got["execution"]["jobId"], "j");
        assert!(
            mqtt::update(
                &svc,
                "late",
                "j",
                None,
                &payload(json!({"status": "SUCCEEDED"}))
            )
            .is_err()
        );
        mqtt::update(
            &svc,
            "late",
            "j",
            ns,
            &payload(json!({"status": "SUCCEEDED"})),
        )
        .unwrap();
        assert_eq!(
            svc.describe_job_blocking("j").unwrap().status,
            JobStatus::InProgress
        );
        let for_thing = svc
            .list_executions_for_thing_blocking("late", Some("aws-gg-deployment"))
            .unwrap();
        assert_eq!(for_thing.len(), 1);
    });
}

#[test]
fn cancel_and_delete() {
    on_each_store(|r, svc| {
        let g = things(r, "g", &["a", "b"]);
        svc.create_job_blocking("t", &job("j", vec![g.clone()]))
            .unwrap();
        mqtt::start_next(&svc, "a", None, &payload(json!({}))).unwrap();
        assert!(matches!(
            svc.delete_job_blocking("t", "j", false),
            Err(JobsError::InvalidStateTransition { .. })
        ));
        svc.cancel_job_blocking("t", "j", false, None, None)
            .unwrap();
        assert_eq!(status(&svc, "j", "a"), ExecutionStatus::InProgress);
        assert_eq!(status(&svc, "j", "b"), ExecutionStatus::Canceled);
        svc.cancel_job_blocking("t", "j", true, Some("STOP".into()), None)
            .unwrap();
        let a = svc.describe_execution_blocking("j", "a").unwrap();
        assert!(a.force_canceled && a.status == ExecutionStatus::Canceled);
        assert!(svc.describe_job_blocking("j").unwrap().force_canceled);
        svc.delete_job_blocking("t", "j", false).unwrap();
        assert!(matches!(
            svc.describe_job_blocking("j"),
            Err(JobsError::NotFound(_))
        ));
        assert!(matches!(
            svc.create_job_blocking("t", &job("bad id!", vec![g.clone()])),
            Err(JobsError::Invalid(_))
        ));
        assert!(matches!(
            svc.create_job_blocking("t", &job("j2", vec![r.arn("thinggroup/none")])),
            Err(JobsError::NotFound(_))
        ));
    });
}

#[test]
fn acknowledged_statuses_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    {
        let r = Arc::new(Registry::open(&path, "us-east-1").unwrap());
        let svc = JobsService::new(r.clone());
        let g = things(&r, "g", &["a"]);
        svc.create_job_blocking("t", &job("j", vec![g])).unwrap();
        mqtt::update(
            &svc,
            "a",
            "j",
            None,
            &payload(json!({"status": "IN_PROGRESS", "statusDetails": {"p": "1"}})),
        )
        .unwrap();
    }
    let svc = JobsService::new(Arc::new(Registry::open(&path, "us-east-1").unwrap()));
    let e = svc.describe_execution_blocking("j", "a").unwrap();
    assert_eq!(e.status, ExecutionStatus::InProgress);
    assert_eq!(e.version_number, 2);
    assert_eq!(e.status_details["p"], "1");
}
