use super::*;
use serde_json::json;

fn service() -> (tempfile::TempDir, ShadowService) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::open(&dir.path().join("fleet.db"), "us-east-1").unwrap());
    (dir, ShadowService::new(registry, None, Limits::default()))
}

#[tokio::test]
async fn the_handle_updates_gets_deletes_and_announces() {
    let (_dir, svc) = service();
    let mut events = svc.subscribe();
    let accepted = svc
        .update(
            "core-1",
            Some("AWSManagedGreengrassV2Deployment"),
            json!({"state":{"desired":{"desiredStatus":"ACTIVE"}}}),
            Some("tok".into()),
        )
        .await
        .unwrap();
    assert_eq!(accepted["version"], 1);
    assert_eq!(accepted["clientToken"], "tok");
    let ev = events.recv().await.unwrap();
    assert_eq!(
        ev.shadow.as_deref(),
        Some("AWSManagedGreengrassV2Deployment")
    );
    let ShadowChange::Updated { documents } = ev.change else {
        panic!("not an update: {ev:?}")
    };
    assert_eq!(
        documents["current"]["state"]["desired"]["desiredStatus"],
        "ACTIVE"
    );

    let doc = svc
        .get("core-1", Some("AWSManagedGreengrassV2Deployment"))
        .await
        .unwrap();
    assert_eq!(doc["state"]["delta"], json!({"desiredStatus":"ACTIVE"}));
    // The classic shadow is another shadow.
    let missing = svc.get("core-1", None).await.unwrap_err();
    assert_eq!(missing.message, "No shadow exists with name: 'core-1'");

    let conflict = svc
        .update(
            "core-1",
            Some("AWSManagedGreengrassV2Deployment"),
            json!({"state":{},"version":7}),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(conflict.code.status(), 409);

    let deleted = svc
        .delete("core-1", Some("AWSManagedGreengrassV2Deployment"))
        .await
        .unwrap();
    assert_eq!(deleted["version"], 1);
    assert!(matches!(
        events.recv().await.unwrap().change,
        ShadowChange::Deleted { version: 1 }
    ));
    let again = svc
        .update(
            "core-1",
            Some("AWSManagedGreengrassV2Deployment"),
            json!({"state":{"reported":{"a":1}}}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(again["version"], 2, "the version survives a delete");
}

#[tokio::test]
async fn named_shadows_list_in_pages_and_names_are_checked() {
    let (_dir, svc) = service();
    for n in ["c", "a", "b"] {
        svc.update("t", Some(n), json!({"state":{"reported":{}}}), None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    svc.update("t", None, json!({"state":{"reported":{"x":1}}}), None)
        .await
        .unwrap();
    let page = svc.list_named("t", None, Some(2)).await.unwrap();
    assert_eq!(page.names, vec!["a", "b"]);
    let rest = svc.list_named("t", page.next_token, Some(2)).await.unwrap();
    assert_eq!((rest.names, rest.next_token), (vec!["c".to_string()], None));
    assert_eq!(
        svc.list_named("t", None, Some(0))
            .await
            .unwrap_err()
            .code
            .status(),
        400
    );
    assert_eq!(
        svc.get("bad/thing", None).await.unwrap_err().code.status(),
        400
    );
    assert_eq!(
        svc.get("t", Some("$x")).await.unwrap_err().code.status(),
        400
    );
}

#[tokio::test]
async fn oversize_updates_are_refused_and_nothing_is_stored() {
    let (_dir, svc) = service();
    let big = "x".repeat(9000);
    let e = svc
        .update("t", None, json!({"state":{"reported":{"big":big}}}), None)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code.status(), e.message.as_str()),
        (413, "The payload exceeds the maximum size allowed")
    );
    assert_eq!(svc.get("t", None).await.unwrap_err().code.status(), 404);
}
