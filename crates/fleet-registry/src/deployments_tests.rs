//! Deployments and core devices, on both stores (PostgreSQL where a server is given).

use super::*;
use crate::pg_tests::pg_support;

fn open_sqlite() -> (Box<dyn std::any::Any>, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::open(&dir.path().join("fleet.db"), "us-east-1").unwrap();
    (Box::new(dir), r)
}

fn open_postgres() -> (Box<dyn std::any::Any>, Registry) {
    let url = pg_support::fresh_database().expect("checked by the caller");
    (
        Box::new(()),
        Registry::open_postgres(&url, "us-east-1").unwrap(),
    )
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(super::open_sqlite)
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                if super::pg_support::admin_url().is_some() {
                    super::$name(super::open_postgres)
                }
            })*
        }
    };
}

on_both_stores!(
    a_new_deployment_supersedes_the_latest_with_the_next_revision,
    client_tokens_replay_and_active_deployments_refuse_deletion,
    device_reports_are_held_until_finished,
    fleet_status_drops_older_messages_and_tracks_running_since,
    a_disconnected_or_stale_core_is_not_healthy,
);

type Open = fn() -> (Box<dyn std::any::Any>, Registry);

fn new(id: &str, target: &str) -> NewDeployment {
    NewDeployment {
        id: id.into(),
        target_arn: target.into(),
        name: Some(format!("name-{id}")),
        spec: "{}".into(),
        with_job: true,
        ..Default::default()
    }
}

fn a_new_deployment_supersedes_the_latest_with_the_next_revision(open: Open) {
    let (_keep, r) = open();
    let g = "arn:aws:iot:us-east-1:1:thinggroup/G";
    let first = r.create_deployment("admin", &new("d1", g)).unwrap();
    assert_eq!(first.deployment.revision, 1);
    assert!(first.superseded.is_none());
    assert_eq!(first.deployment.job_id.as_deref(), Some("d1"));
    let second = r.create_deployment("admin", &new("d2", g)).unwrap();
    assert_eq!(second.deployment.revision, 2);
    assert_eq!(second.superseded.as_ref().unwrap().id, "d1");
    let old = r.get_deployment("d1").unwrap();
    assert_eq!(old.status, deployments::INACTIVE);
    assert!(!old.is_latest);
    // Another target has its own revisions.
    let other = r
        .create_deployment("admin", &new("d3", "arn:aws:iot:us-east-1:1:thing/T"))
        .unwrap();
    assert_eq!(other.deployment.revision, 1);
    let latest = r
        .list_deployments(None, None, true, &PageRequest::default())
        .unwrap();
    let ids: Vec<_> = latest.items.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["d2", "d3"]);
    let all = r
        .list_deployments(Some(g), None, false, &PageRequest::default())
        .unwrap();
    assert_eq!(all.items.len(), 2);
    // A cancelled latest is not superseded (nothing left to stop), and rollback finds the
    // newest revision that did not fail.
    r.set_deployment_status("admin", "d2", deployments::FAILED)
        .unwrap();
    let third = r.create_deployment("admin", &new("d4", g)).unwrap();
    assert!(third.superseded.is_none());
    assert_eq!(r.previous_good_deployment(g, 3).unwrap().unwrap().id, "d1");
    assert_eq!(r.latest_deployment(g).unwrap().unwrap().id, "d4");
}

fn client_tokens_replay_and_active_deployments_refuse_deletion(open: Open) {
    let (_keep, r) = open();
    let mut d = new("d1", "arn:aws:iot:us-east-1:1:thing/T");
    d.client_token = Some("tok".into());
    assert!(!r.create_deployment("admin", &d).unwrap().replayed);
    d.id = "d2".into();
    let again = r.create_deployment("admin", &d).unwrap();
    assert!(again.replayed);
    assert_eq!(again.deployment.id, "d1");
    assert!(matches!(
        r.delete_deployment("admin", "d1"),
        Err(RegistryError::DeleteConflict(_))
    ));
    r.set_deployment_status("admin", "d1", deployments::CANCELED)
        .unwrap();
    r.delete_deployment("admin", "d1").unwrap();
    assert!(matches!(
        r.get_deployment("d1"),
        Err(RegistryError::NotFound { .. })
    ));
}

fn device_reports_are_held_until_finished(open: Open) {
    let (_keep, r) = open();
    r.create_deployment("admin", &new("d1", "arn:aws:iot:us-east-1:1:thinggroup/G"))
        .unwrap();
    assert!(
        !r.record_device_report("T", "unknown", "SUCCEEDED", None, "{}", false)
            .unwrap()
    );
    r.record_device_report("T", "d1", "IN_PROGRESS", None, "{}", true)
        .unwrap();
    r.record_device_report("T", "d1", "SUCCEEDED", None, "{}", true)
        .unwrap();
    let e = &r
        .list_effective_deployments("T", &PageRequest::default())
        .unwrap()
        .items[0];
    assert_eq!(e.execution_status, "IN_PROGRESS");
    assert_eq!(e.device_status, "SUCCEEDED");
    assert!(e.device_succeeded_ms.is_some());
    assert_eq!(r.held_successes().unwrap().len(), 1);
    r.finish_effective_deployment("T", "d1", "SUCCEEDED", None)
        .unwrap();
    assert!(r.held_successes().unwrap().is_empty());
    let e = &r.effective_deployments_of("d1").unwrap()[0];
    assert_eq!(e.execution_status, "SUCCEEDED");
    assert_eq!(e.deployment_name.as_deref(), Some("name-d1"));
}

fn comp(name: &str, version: &str, status: &str) -> ReportedComponent {
    ReportedComponent {
        name: name.into(),
        version: version.into(),
        status: status.into(),
        is_root: name != "dep",
        ..Default::default()
    }
}

fn fleet_status_drops_older_messages_and_tracks_running_since(open: Open) {
    let (_keep, r) = open();
    let report = |seq, complete, chunk, comps| FleetStatusReport {
        sequence_number: seq,
        complete,
        chunk_id: chunk,
        overall_status: "HEALTHY".into(),
        platform: Some("linux".into()),
        architecture: Some("amd64".into()),
        core_version: Some("2.14.0".into()),
        components: comps,
        ..Default::default()
    };
    assert!(
        r.record_fleet_status(
            "T",
            &report(
                5,
                true,
                1,
                vec![
                    comp("a", "1.0.0", "RUNNING"),
                    comp("dep", "1.0.0", "RUNNING")
                ]
            )
        )
        .unwrap()
    );
    let since = r.installed_components("T").unwrap()[0].running_since_ms;
    assert!(since.is_some());
    // Older: dropped.
    assert!(
        !r.record_fleet_status("T", &report(4, true, 1, vec![]))
            .unwrap()
    );
    assert_eq!(r.installed_components("T").unwrap().len(), 2);
    // A second chunk of the same message adds; a partial update keeps running_since while
    // the component stays RUNNING at its version.
    r.record_fleet_status(
        "T",
        &report(5, true, 2, vec![comp("b", "2.0.0", "ERRORED")]),
    )
    .unwrap();
    r.record_fleet_status(
        "T",
        &report(6, false, 1, vec![comp("a", "1.0.0", "RUNNING")]),
    )
    .unwrap();
    let comps = r.installed_components("T").unwrap();
    assert_eq!(comps.len(), 3);
    assert_eq!(comps[0].running_since_ms, since);
    assert_eq!(comps[1].running_since_ms, None);
    let roots = r
        .list_installed_components("T", true, &PageRequest::default())
        .unwrap();
    assert_eq!(roots.items.len(), 2);
    // A COMPLETE message replaces the set; UNINSTALLED removes.
    r.record_fleet_status(
        "T",
        &report(7, true, 1, vec![comp("a", "1.1.0", "RUNNING")]),
    )
    .unwrap();
    r.record_fleet_status(
        "T",
        &report(8, false, 1, vec![comp("a", "1.1.0", "UNINSTALLED")]),
    )
    .unwrap();
    assert!(r.installed_components("T").unwrap().is_empty());
    let d = r.get_core_device("T").unwrap();
    assert_eq!(d.core_version.as_deref(), Some("2.14.0"));
    let page = r
        .list_core_devices(None, Some("HEALTHY"), None, &PageRequest::default())
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let none = r
        .list_core_devices(None, Some("UNHEALTHY"), None, &PageRequest::default())
        .unwrap();
    assert!(none.items.is_empty());
}

fn a_disconnected_or_stale_core_is_not_healthy(open: Open) {
    let (_keep, r) = open();
    let healthy = |seq| FleetStatusReport {
        sequence_number: seq,
        complete: true,
        chunk_id: 1,
        overall_status: "HEALTHY".into(),
        ..Default::default()
    };
    let status = |r: &Registry, want: &str| {
        r.list_core_devices(None, Some(want), None, &PageRequest::default())
            .unwrap()
            .items
            .len()
    };
    let now = crate::now_ms();
    r.record_connected("T", Some("T"), "cert", "s1", now)
        .unwrap();
    r.record_fleet_status("T", &healthy(1)).unwrap();
    let d = r.get_core_device("T").unwrap();
    assert_eq!((d.status.as_str(), d.connected), ("HEALTHY", Some(true)));
    assert_eq!(d.status_reason, None);
    // A newer session took the client id over: the old one ending changes nothing.
    r.record_connected("T", Some("T"), "cert", "s2", now)
        .unwrap();
    assert!(
        !r.record_disconnected("T", "s1", "DUPLICATE_CLIENTID", now)
            .unwrap()
    );
    assert_eq!(r.get_core_device("T").unwrap().status, "HEALTHY");
    assert!(
        r.record_disconnected("T", "s2", "CONNECTION_LOST", now + 1)
            .unwrap()
    );
    let d = r.get_core_device("T").unwrap();
    assert_eq!(d.status, "UNHEALTHY");
    assert_eq!(d.reported_status, "HEALTHY");
    assert_eq!(d.status_reason.as_deref(), Some("DISCONNECTED"));
    assert_eq!(d.disconnect_reason.as_deref(), Some("CONNECTION_LOST"));
    assert_eq!((status(&r, "UNHEALTHY"), status(&r, "HEALTHY")), (1, 0));
    // Back, then its status ages past the bound.
    r.record_connected("T", Some("T"), "cert", "s3", now + 2)
        .unwrap();
    assert_eq!(r.get_core_device("T").unwrap().status, "HEALTHY");
    r.set_device_stale_after(std::time::Duration::from_millis(1));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let d = r.get_core_device("T").unwrap();
    assert_eq!(d.status_reason.as_deref(), Some("STATUS_STALE"));
    assert_eq!((status(&r, "UNHEALTHY"), status(&r, "HEALTHY")), (1, 0));
    r.set_device_stale_after(std::time::Duration::ZERO);
    // A restart of the fleet: no connection outlives it.
    assert_eq!(
        r.reset_presence(&[], "SERVER_INITIATED_DISCONNECT")
            .unwrap(),
        1
    );
    assert_eq!(r.presence("T").unwrap().map(|p| p.connected), Some(false));
    assert_eq!(r.get_core_device("T").unwrap().status, "UNHEALTHY");
}
