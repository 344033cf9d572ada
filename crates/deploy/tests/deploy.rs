//! End-to-end deployments on a real ConfigStore + Supervisor with shell-script components.

mod common;

use common::{Core, Inputs, NUCLEUS, SLEEP, eventually, read};
use lichen_deploy::{
    ConfigurationUpdate, DeployError, DeploymentStatus, DetailedStatus, FailureHandlingPolicy,
};
use lichen_supervisor::State;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_finishes_and_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let core = Core::start(&root).await;
    let inputs = Inputs::new(tmp.path(), "a");
    inputs.run_recipe(
        "com.example.Hello",
        "1.0.0",
        "",
        "echo Hello world from {iot:thingName} > {work:path}/out.txt",
    );
    let record = core
        .deploy(inputs.request(&[("com.example.Hello", "1.0.0")]))
        .await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(record.detailed_status, Some(DetailedStatus::Successful));
    assert_eq!(record.group, "LOCAL_DEPLOYMENT");
    // A Run step is RUNNING once spawned (which settles the deployment), FINISHED on exit 0.
    eventually("hello finished", || {
        core.state("com.example.Hello") == Some(State::Finished)
    })
    .await;
    assert_eq!(
        read(&root.join("work/com.example.Hello/out.txt")).trim(),
        "Hello world from test-thing"
    );
    assert!(
        root.join("packages/recipes/com.example.Hello@1.0.0.recipe.json")
            .is_file()
    );
    assert!(
        root.join("deployments")
            .join(&record.id)
            .join("deployment.json")
            .is_file()
    );
    let deployed = core.engine.deployed_components();
    assert_eq!(deployed["com.example.Hello"], ("1.0.0".to_string(), true));
    assert_eq!(deployed[NUCLEUS], ("2.14.0".to_string(), false));
    assert_eq!(
        core.config
            .get(&["services", "com.example.Hello", "componentType"]),
        Some(json!("GENERIC"))
    );
    assert_eq!(
        core.config.get(&["services", "main", "dependencies"]),
        Some(json!(["com.example.Hello"]))
    );
    assert_eq!(
        core.config.get(&[
            "services",
            "DeploymentService",
            "GroupToRootComponents",
            "LOCAL_DEPLOYMENT",
            "com.example.Hello",
            "version"
        ]),
        Some(json!("1.0.0"))
    );
    assert_eq!(core.engine.list()[0].id, record.id);
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_picks_highest_in_range_and_interpolates_dependencies() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let core = Core::start(&root).await;
    let inputs = Inputs::new(tmp.path(), "a");
    for v in ["1.0.0", "1.5.0", "2.0.0"] {
        inputs.run_recipe(
            "com.example.B",
            v,
            &format!("ComponentConfiguration:\n  DefaultConfiguration:\n    name: bee-{v}"),
            "true",
        );
    }
    inputs.run_recipe(
        "com.example.A",
        "1.0.0",
        "ComponentDependencies:\n  com.example.B:\n    VersionRequirement: '>=1.0.0 <2.0.0'\n  aws.greengrass.Nucleus:\n    VersionRequirement: '^2.0.0'\n    DependencyType: SOFT",
        "echo {com.example.B:configuration:/name} > {work:path}/dep.txt",
    );
    let record = core
        .deploy(inputs.request(&[("com.example.A", "1.0.0")]))
        .await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(core.version("com.example.B").as_deref(), Some("1.5.0"));
    // The deployment settles once A's run step is spawned; its output comes a moment later.
    let dep = root.join("work/com.example.A/dep.txt");
    eventually("A wrote its dependency's name", || !read(&dep).is_empty()).await;
    assert_eq!(read(&dep).trim(), "bee-1.5.0");
    assert_eq!(
        core.config
            .get(&["services", "com.example.A", "dependencies"]),
        Some(json!(["aws.greengrass.Nucleus:SOFT", "com.example.B:HARD"]))
    );
    let deployed = core.engine.deployed_components();
    assert_eq!(deployed["com.example.B"], ("1.5.0".to_string(), false));
    // A second group asking for B 1.0.0 exactly narrows the AND of requirements.
    let mut req = inputs.request(&[("com.example.B", "1.0.0")]);
    req.group_name = Some("pinned".into());
    let record = core.deploy(req).await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(core.version("com.example.B").as_deref(), Some("1.0.0"));
    assert_eq!(
        core.config
            .get(&["services", "com.example.B", "previousVersion"]),
        Some(json!("1.5.0"))
    );
    assert!(core.engine.deployed_components()["com.example.B"].1);
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_commit_leave_the_running_set_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (core, base) =
        Core::start_deployed(tmp.path(), "base", "com.example.Keep", "", SLEEP).await;
    let services_before = core.config.get(&["services"]).unwrap();

    let check = |record: lichen_deploy::DeploymentRecord, needles: &[&str]| {
        assert_eq!(record.status, DeploymentStatus::Failed);
        assert_eq!(
            record.detailed_status,
            Some(DetailedStatus::FailedNoStateChange)
        );
        for needle in needles {
            assert!(
                record.failure_cause.contains(needle),
                "{:?} does not contain {needle:?}",
                record.failure_cause
            );
        }
    };

    // Digest mismatch.
    let inputs = Inputs::new(tmp.path(), "digest");
    inputs.recipe(
        "com.example.Digest",
        "1.0.0",
        "",
        "    Lifecycle:\n      Run: cat {artifacts:path}/app.txt\n    Artifacts:\n      - Uri: s3://bucket/app.txt\n        Digest: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='\n        Algorithm: SHA-256",
    );
    inputs.artifact("com.example.Digest", "1.0.0", "app.txt", b"hello");
    let mut req = inputs.request(&[("com.example.Digest", "1.0.0")]);
    req.root_components_to_add
        .insert("com.example.Keep".into(), "1.0.0".into());
    check(
        core.deploy(req).await,
        &["digest mismatch", "com.example.Digest@1.0.0"],
    );

    // Missing artifact.
    let inputs = Inputs::new(tmp.path(), "missing");
    inputs.recipe(
        "com.example.Missing",
        "1.0.0",
        "",
        "    Lifecycle:\n      Run: 'true'\n    Artifacts:\n      - Uri: s3://bucket/dir/absent.bin",
    );
    check(
        core.deploy(inputs.request(&[("com.example.Missing", "1.0.0")]))
            .await,
        &["absent.bin", "not found", "com.example.Missing@1.0.0"],
    );

    // Unsatisfiable requirements, with the chain of constraints.
    let inputs = Inputs::new(tmp.path(), "conflict");
    inputs.run_recipe("com.example.Lib", "1.0.0", "", "true");
    inputs.run_recipe("com.example.Lib", "2.0.0", "", "true");
    inputs.run_recipe(
        "com.example.App",
        "1.0.0",
        "ComponentDependencies:\n  com.example.Lib:\n    VersionRequirement: '>=2.0.0'",
        "true",
    );
    check(
        core.deploy(inputs.request(&[("com.example.App", "1.0.0"), ("com.example.Lib", "1.0.0")]))
            .await,
        &[
            "com.example.App@1.0.0 requires com.example.Lib >=2.0.0",
            "LOCAL_DEPLOYMENT requires com.example.Lib 1.0.0",
        ],
    );

    // Dependency cycle.
    let inputs = Inputs::new(tmp.path(), "cycle");
    inputs.run_recipe(
        "com.example.C",
        "1.0.0",
        "ComponentDependencies:\n  com.example.D:\n    VersionRequirement: '*'",
        "true",
    );
    inputs.run_recipe(
        "com.example.D",
        "1.0.0",
        "ComponentDependencies:\n  com.example.C:\n    VersionRequirement: '*'",
        "true",
    );
    check(
        core.deploy(inputs.request(&[("com.example.C", "1.0.0")]))
            .await,
        &["dependency cycle: com.example.C → com.example.D → com.example.C"],
    );

    // Unknown component.
    let inputs = Inputs::new(tmp.path(), "unknown");
    check(
        core.deploy(inputs.request(&[("com.example.Nowhere", "1.0.0")]))
            .await,
        &["com.example.Nowhere", "no recipe"],
    );

    // Bad recipe: rejected at submit, naming the file and field; nothing staged.
    let inputs = Inputs::new(tmp.path(), "bad");
    let bad = inputs.recipes.join("bad.yaml");
    std::fs::write(
        &bad,
        "RecipeFormatVersion: '2020-01-25'\nComponentName: com.example.Bad\nComponentVersion: not-a-version\nManifests:\n  - Lifecycle:\n      Run: 'true'\n",
    )
    .unwrap();
    let err = core
        .engine
        .submit_local(inputs.request(&[("com.example.Bad", "1.0.0")]))
        .unwrap_err();
    assert!(matches!(err, DeployError::BadRecipe { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("bad.yaml") && text.contains("ComponentVersion"),
        "{text}"
    );

    // Duplicate name@version with different content: both files named.
    let inputs = Inputs::new(tmp.path(), "dup");
    let first = inputs.run_recipe("com.example.Dup", "1.0.0", "", "echo one");
    let second = inputs.recipes.join("sub/other.yaml");
    std::fs::create_dir_all(second.parent().unwrap()).unwrap();
    std::fs::write(&second, read(&first).replace("echo one", "echo two")).unwrap();
    let err = core
        .engine
        .submit_local(inputs.request(&[("com.example.Dup", "1.0.0")]))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("com.example.Dup@1.0.0")
            && text.contains("Dup-1.0.0.yaml")
            && text.contains("other.yaml"),
        "{text}"
    );

    // Bad group name and missing directories.
    let mut req = base.request(&[("com.example.Keep", "1.0.0")]);
    req.group_name = Some("a:b".into());
    assert!(matches!(
        core.engine.submit_local(req),
        Err(DeployError::BadRequest(_))
    ));
    let mut req = base.request(&[("com.example.Keep", "1.0.0")]);
    req.recipe_directory_path = Some(tmp.path().join("does-not-exist"));
    assert!(matches!(
        core.engine.submit_local(req),
        Err(DeployError::InvalidRecipeDirectory { .. })
    ));

    assert_eq!(core.config.get(&["services"]).unwrap(), services_before);
    assert_eq!(core.state("com.example.Keep"), Some(State::Running));
    assert!(core.state("com.example.Digest").is_none());
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_merge_and_reset_reach_the_script() {
    let tmp = tempfile::tempdir().unwrap();
    let (core, inputs) = Core::start_deployed(
        tmp.path(),
        "a",
        "com.example.Cfg",
        "ComponentConfiguration:\n  DefaultConfiguration:\n    message: default\n    other: x",
        "echo {configuration:/message} {configuration:/other} > {work:path}/msg.txt",
    )
    .await;
    let out = core.root.join("work/com.example.Cfg/msg.txt");
    eventually("default message", || read(&out).trim() == "default x").await;

    let mut req = inputs.request(&[("com.example.Cfg", "1.0.0")]);
    req.configuration_updates.insert(
        "com.example.Cfg".into(),
        ConfigurationUpdate {
            merge: Some(json!({"message": "merged", "extra": {"n": 1}})),
            reset: vec![],
        },
    );
    let record = core.deploy(req).await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    eventually("merged message", || read(&out).trim() == "merged x").await;
    assert_eq!(
        core.engine.component_configuration("com.example.Cfg"),
        Some(json!({"message": "merged", "other": "x", "extra": {"n": 1}}))
    );

    let mut req = inputs.request(&[("com.example.Cfg", "1.0.0")]);
    req.configuration_updates.insert(
        "com.example.Cfg".into(),
        ConfigurationUpdate {
            merge: None,
            reset: vec!["/message".into(), "/extra".into()],
        },
    );
    let record = core.deploy(req).await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    eventually("reset message", || read(&out).trim() == "default x").await;
    assert_eq!(
        core.engine.component_configuration("com.example.Cfg"),
        Some(json!({"message": "default", "other": "x"}))
    );
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_failure_rolls_back_or_not_per_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let core = Core::start(&root).await;
    let inputs = Inputs::new(tmp.path(), "a");
    for name in ["com.example.Rb", "com.example.Dn"] {
        inputs.run_recipe(name, "1.0.0", "", SLEEP);
        inputs.recipe(
            name,
            "2.0.0",
            "",
            "    Lifecycle:\n      Install: exit 1\n      Run: exec sleep 1000",
        );
    }
    let record = core
        .deploy(inputs.request(&[("com.example.Rb", "1.0.0"), ("com.example.Dn", "1.0.0")]))
        .await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(core.state("com.example.Rb"), Some(State::Running));

    let mut req = inputs.request(&[("com.example.Rb", "2.0.0")]);
    req.failure_handling_policy = FailureHandlingPolicy::Rollback;
    let record = core.deploy(req).await;
    assert_eq!(record.status, DeploymentStatus::Failed);
    assert_eq!(
        record.detailed_status,
        Some(DetailedStatus::FailedRollbackComplete),
        "{}",
        record.failure_cause
    );
    assert!(
        record.failure_cause.contains("com.example.Rb"),
        "{}",
        record.failure_cause
    );
    assert_eq!(core.version("com.example.Rb").as_deref(), Some("1.0.0"));
    assert_eq!(core.state("com.example.Rb"), Some(State::Running));
    assert_eq!(
        core.supervisor.status("com.example.Rb").unwrap().version,
        "1.0.0"
    );
    assert_eq!(
        core.config.get(&[
            "services",
            "DeploymentService",
            "GroupToRootComponents",
            "LOCAL_DEPLOYMENT",
            "com.example.Rb",
            "version"
        ]),
        Some(json!("1.0.0"))
    );

    let record = core
        .deploy(inputs.request(&[("com.example.Dn", "2.0.0")]))
        .await;
    assert_eq!(record.status, DeploymentStatus::Failed);
    assert_eq!(
        record.detailed_status,
        Some(DetailedStatus::FailedRollbackNotRequested)
    );
    assert_eq!(core.version("com.example.Dn").as_deref(), Some("2.0.0"));
    assert_eq!(core.state("com.example.Dn"), Some(State::Broken));
    // The other component was not touched.
    assert_eq!(core.state("com.example.Rb"), Some(State::Running));
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_component_is_revived_by_redeploy() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let core = Core::start(&root).await;
    let inputs = Inputs::new(tmp.path(), "a");
    let flag = tmp.path().join("flag");
    inputs.run_recipe(
        "com.example.Flaky",
        "1.0.0",
        "",
        &format!("test -f {} || exit 1; exec sleep 1000", flag.display()),
    );
    // Run is RUNNING once spawned, so the deployment may settle before the errors pile up;
    // either way the component ends BROKEN after its third error.
    let record = core
        .deploy(inputs.request(&[("com.example.Flaky", "1.0.0")]))
        .await;
    assert_ne!(
        record.detailed_status,
        Some(DetailedStatus::FailedRollbackComplete)
    );
    eventually("flaky broken", || {
        core.state("com.example.Flaky") == Some(State::Broken)
    })
    .await;
    std::fs::write(&flag, "ok").unwrap();
    let record = core
        .deploy(inputs.request(&[("com.example.Flaky", "1.0.0")]))
        .await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(core.state("com.example.Flaky"), Some(State::Running));
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_components_with_their_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let inputs = Inputs::new(tmp.path(), "a");
    inputs.run_recipe(
        "com.example.Svc",
        "1.0.0",
        "ComponentConfiguration:\n  DefaultConfiguration:\n    port: 1",
        "echo {configuration:/port} > {work:path}/port.txt; exec sleep 1000",
    );
    let id = {
        let core = Core::start(&root).await;
        let mut req = inputs.request(&[("com.example.Svc", "1.0.0")]);
        req.configuration_updates.insert(
            "com.example.Svc".into(),
            ConfigurationUpdate {
                merge: Some(json!({"port": 8080})),
                reset: vec![],
            },
        );
        let record = core.deploy(req).await;
        assert_eq!(
            record.status,
            DeploymentStatus::Succeeded,
            "{}",
            record.failure_cause
        );
        core.stop().await;
        record.id
    };
    std::fs::remove_file(root.join("work/com.example.Svc/port.txt")).unwrap();
    let core = Core::start(&root).await;
    eventually("component running again", || {
        core.state("com.example.Svc") == Some(State::Running)
    })
    .await;
    eventually("script saw the merged port", || {
        read(&root.join("work/com.example.Svc/port.txt")).trim() == "8080"
    })
    .await;
    assert_eq!(
        core.engine.component_configuration("com.example.Svc"),
        Some(json!({"port": 8080}))
    );
    assert_eq!(
        core.engine.status(&id).unwrap().status,
        DeploymentStatus::Succeeded
    );
    core.stop().await;
}

/// Rewrites the persisted record of `id` as IN_PROGRESS in `phase`.
fn mark_in_progress(root: &std::path::Path, id: &str, phase: &str) {
    let path = root.join("deployments").join(id).join("deployment.json");
    let mut value: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    value["record"]["status"] = json!("InProgress");
    value["phase"] = json!(phase);
    std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

fn phase_of(root: &std::path::Path, id: &str) -> String {
    let path = root.join("deployments").join(id).join("deployment.json");
    serde_json::from_str::<serde_json::Value>(&read(&path))
        .ok()
        .and_then(|v| v["phase"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_before_commit_is_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let inputs = Inputs::new(tmp.path(), "a");
    inputs.run_recipe("com.example.Late", "1.0.0", "", SLEEP);
    for phase in ["Preparing", "Committing"] {
        let label = format!("r-{phase}");
        let root = tmp.path().join(&label);
        let id = {
            let core = Core::open(&root);
            core.engine
                .submit_local(inputs.request(&[("com.example.Late", "1.0.0")]))
                .unwrap()
        };
        mark_in_progress(&root, &id, phase);
        let core = Core::start(&root).await;
        core.engine.wait_idle().await;
        let record = core.engine.status(&id).unwrap();
        assert_eq!(
            record.status,
            DeploymentStatus::Succeeded,
            "{phase}: {}",
            record.failure_cause
        );
        assert_eq!(core.state("com.example.Late"), Some(State::Running));
        core.stop().await;
    }
    drop(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_after_commit_finishes_waiting_or_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = Inputs::new(tmp.path(), "a");
    let gate = tmp.path().join("gate");
    inputs.run_recipe("com.example.Base", "1.0.0", "", SLEEP);
    inputs.recipe(
        "com.example.Gated",
        "1.0.0",
        "",
        &format!(
            "    Lifecycle:\n      Startup: 'while [ ! -f {} ]; do sleep 0.1; done'",
            gate.display()
        ),
    );
    inputs.recipe(
        "com.example.Base",
        "2.0.0",
        "",
        &format!(
            "    Lifecycle:\n      Startup: 'while [ ! -f {} ]; do sleep 0.1; done; exit 1'",
            gate.display()
        ),
    );

    // Committed, then the core dies while waiting: on restart it finishes waiting → success.
    let root = tmp.path().join("ok");
    let core = Core::start(&root).await;
    let id = core
        .engine
        .submit_local(inputs.request(&[("com.example.Gated", "1.0.0")]))
        .unwrap();
    eventually("commit", || phase_of(&root, &id) == "Committed").await;
    core.stop().await;
    std::fs::write(&gate, "open").unwrap();
    let core = Core::start(&root).await;
    core.engine.wait_idle().await;
    let record = core.engine.status(&id).unwrap();
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(core.state("com.example.Gated"), Some(State::Running));
    core.stop().await;
    std::fs::remove_file(&gate).unwrap();

    // Committed under ROLLBACK, the new version fails after restart: the old state comes back.
    let root = tmp.path().join("rb");
    let core = Core::start(&root).await;
    let record = core
        .deploy(inputs.request(&[("com.example.Base", "1.0.0")]))
        .await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    let mut req = inputs.request(&[("com.example.Base", "2.0.0")]);
    req.failure_handling_policy = FailureHandlingPolicy::Rollback;
    let id = core.engine.submit_local(req).unwrap();
    eventually("commit", || phase_of(&root, &id) == "Committed").await;
    core.stop().await;
    std::fs::write(&gate, "open").unwrap();
    let core = Core::start(&root).await;
    core.engine.wait_idle().await;
    let record = core.engine.status(&id).unwrap();
    assert_eq!(
        record.detailed_status,
        Some(DetailedStatus::FailedRollbackComplete),
        "{}",
        record.failure_cause
    );
    assert_eq!(core.version("com.example.Base").as_deref(), Some("1.0.0"));
    assert_eq!(core.state("com.example.Base"), Some(State::Running));
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_verified_unzipped_protected_and_garbage_collected() {
    use base64::Engine as _;
    use sha2::Digest as _;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let core = Core::start(&root).await;
    let inputs = Inputs::new(tmp.path(), "a");
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        let script_body = format!("echo tool {v}\n");
        let digest = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(script_body.as_bytes()));
        inputs.artifact("com.example.Art", v, "tool.sh", script_body.as_bytes());
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("bundle/data.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(format!("data {v}").as_bytes()).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        inputs.artifact("com.example.Art", v, "pack.zip", &bytes);
        inputs.recipe(
            "com.example.Art",
            v,
            "",
            &format!(
                "    Lifecycle:\n      Run: 'sh {{artifacts:path}}/tool.sh > {{work:path}}/out.txt; cat {{artifacts:decompressedPath}}/pack/bundle/data.txt >> {{work:path}}/out.txt'\n    Artifacts:\n      - Uri: s3://bucket/tool.sh\n        Digest: '{digest}'\n        Algorithm: SHA-256\n        Permission:\n          Read: ALL\n          Execute: OWNER\n      - Uri: greengrass:pack.zip\n        Unarchive: ZIP"
            ),
        );
    }
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        let record = core.deploy(inputs.request(&[("com.example.Art", v)])).await;
        assert_eq!(
            record.status,
            DeploymentStatus::Succeeded,
            "{v}: {}",
            record.failure_cause
        );
        let out = root.join("work/com.example.Art/out.txt");
        eventually("artifact output", || {
            read(&out) == format!("tool {v}\ndata {v}")
        })
        .await;
    }
    let artifact = root.join("packages/artifacts/com.example.Art/3.0.0/tool.sh");
    let mode = std::fs::metadata(&artifact).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o544, "Read ALL + Execute OWNER, never writable");
    // Current (3.0.0) and previous (2.0.0) are kept; 1.0.0 is gone everywhere.
    let packages = root.join("packages");
    assert!(
        !packages
            .join("recipes/com.example.Art@1.0.0.recipe.json")
            .exists()
    );
    assert!(!packages.join("artifacts/com.example.Art/1.0.0").exists());
    assert!(
        !packages
            .join("artifacts-unarchived/com.example.Art/1.0.0")
            .exists()
    );
    for v in ["2.0.0", "3.0.0"] {
        assert!(
            packages
                .join(format!("recipes/com.example.Art@{v}.recipe.json"))
                .is_file()
        );
        assert!(
            packages
                .join(format!("artifacts/com.example.Art/{v}/tool.sh"))
                .is_file()
        );
        assert!(
            packages
                .join(format!(
                    "artifacts-unarchived/com.example.Art/{v}/pack/bundle/data.txt"
                ))
                .is_file()
        );
    }
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_cancel_removal_and_history_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let inputs = Inputs::new(tmp.path(), "a");
    inputs.run_recipe("com.example.One", "1.0.0", "", "true");
    inputs.run_recipe("com.example.Two", "1.0.0", "", "true");
    let mut cfg = common::engine_config(&root);
    cfg.history_limit = 2;
    let core = Core::open_with(cfg.clone());
    let cancelled = core
        .engine
        .submit_local(inputs.request(&[("com.example.Two", "1.0.0")]))
        .unwrap();
    let first = core
        .engine
        .submit_local(inputs.request(&[("com.example.One", "1.0.0")]))
        .unwrap();
    core.engine.cancel(&cancelled).unwrap();
    assert_eq!(
        core.engine.status(&cancelled).unwrap().status,
        DeploymentStatus::Canceled
    );
    assert!(matches!(
        core.engine.cancel("nope"),
        Err(DeployError::NotFound(_))
    ));
    drop(core);
    // The queue is durable: a new engine on the same root picks the queued deployment up.
    let core = Core::open_with(cfg);
    core.engine.start().await.unwrap();
    core.engine.wait_idle().await;
    assert_eq!(
        core.engine.status(&first).unwrap().status,
        DeploymentStatus::Succeeded
    );
    assert!(core.state("com.example.Two").is_none());
    assert!(matches!(
        core.engine.cancel(&first),
        Err(DeployError::NotCancelable { .. })
    ));

    let mut req = inputs.request(&[]);
    req.root_components_to_remove = vec!["com.example.One".into()];
    let removal = core.deploy(req).await;
    assert_eq!(
        removal.status,
        DeploymentStatus::Succeeded,
        "{}",
        removal.failure_cause
    );
    assert!(core.state("com.example.One").is_none());
    assert!(core.config.get(&["services", "com.example.One"]).is_none());
    assert!(
        !core
            .engine
            .deployed_components()
            .contains_key("com.example.One")
    );

    let list = core.engine.list();
    assert_eq!(list.len(), 2, "history keeps {} records", 2);
    assert_eq!(list[0].id, removal.id);
    assert_eq!(list[1].id, first);
    assert!(!root.join("deployments").join(&cancelled).exists());
    core.stop().await;
}
