//! End-to-end tests: the real `lichen` binary on temporary roots, driven through its CLI.

mod archives;
mod cloud_deploy;
mod limits;
mod state;
mod support;

use support::*;

fn marker() -> String {
    format!("lichen-e2e-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

#[test]
fn hello_world_finishes_and_logs_its_line() {
    let ws = Workspace::new();
    ws.recipe(
        "hello.yaml",
        &recipe(
            "test.Hello",
            "1.0.0",
            "",
            "Run: echo 'Hello from {iot:thingName} in {work:path}'",
        ),
    );
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&["--recipe-dir", &ws.recipes(), "--merge", "test.Hello=1.0.0"]);
    assert!(ok, "deployment failed: {d}");
    assert_eq!(d["status"], "SUCCEEDED");
    core.wait_state("test.Hello", "FINISHED");
    let log = core.log("test.Hello");
    let work = ws.root().canonicalize().unwrap().join("work/test.Hello");
    assert!(
        log.contains(&format!("in {}", work.display())),
        "log lacks the line: {log}"
    );
    assert!(
        log.contains("Hello from lichen-"),
        "thing name not interpolated: {log}"
    );
}

#[test]
fn hard_dependency_is_running_before_dependent_starts() {
    let ws = Workspace::new();
    let order = ws.path("order.txt");
    let o = order.display();
    ws.recipe(
        "b.yaml",
        &recipe(
            "test.B",
            "1.0.0",
            "",
            &format!("Startup: sleep 0.3; echo B-running >> {o}\nShutdown: echo B-stopping >> {o}"),
        ),
    );
    ws.recipe(
        "a.yaml",
        &recipe(
            "test.A",
            "1.0.0",
            "ComponentDependencies:\n  test.B:\n    VersionRequirement: '^1.0.0'\n    DependencyType: HARD",
            &format!("Startup: echo A-starting >> {o}"),
        ),
    );
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&["--recipe-dir", &ws.recipes(), "--merge", "test.A=1.0.0"]);
    assert!(ok, "{d}");
    core.wait_state("test.A", "RUNNING");
    core.wait_state("test.B", "RUNNING");
    let text = std::fs::read_to_string(&order).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec!["B-running", "A-starting"],
        "start order wrong: {text}"
    );
    // Stop in reverse order: A has no shutdown step, but B's shutdown must come after A stopped.
    assert_eq!(core.terminate(), Some(0));
    let text = std::fs::read_to_string(&order).unwrap();
    assert!(text.ends_with("B-stopping\n"), "{text}");
}

#[test]
fn configuration_merge_and_reset_reach_the_lifecycle_after_redeploy() {
    let ws = Workspace::new();
    let out = ws.path("out.txt");
    ws.recipe(
        "c.yaml",
        &recipe(
            "test.Conf",
            "1.0.0",
            "ComponentConfiguration:\n  DefaultConfiguration:\n    Greeting: hello\n    Nested:\n      Count: 1",
            &format!("Run: echo '{{configuration:/Greeting}} {{configuration:/Nested/Count}} {{configuration:/Nested}}' >> {}", out.display()),
        ),
    );
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&["--recipe-dir", &ws.recipes(), "--merge", "test.Conf=1.0.0"]);
    assert!(ok, "{d}");
    eventually(30, "first run output", || {
        std::fs::read_to_string(&out)
            .map(|t| t.lines().count() >= 1)
            .unwrap_or(false)
    });
    let merge = r#"{"test.Conf":{"MERGE":{"Greeting":"bonjour","Nested":{"Count":7}}}}"#;
    let (ok, d) = core.deploy(&["--update-config", merge, "--merge", "test.Conf=1.0.0"]);
    assert!(ok, "{d}");
    eventually(30, "second run output", || {
        std::fs::read_to_string(&out)
            .map(|t| t.lines().count() >= 2)
            .unwrap_or(false)
    });
    let reset = r#"{"test.Conf":{"RESET":["/Greeting"]}}"#;
    let (ok, d) = core.deploy(&["--update-config", reset, "--merge", "test.Conf=1.0.0"]);
    assert!(ok, "{d}");
    eventually(30, "third run output", || {
        std::fs::read_to_string(&out)
            .map(|t| t.lines().count() >= 3)
            .unwrap_or(false)
    });
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], r#"hello 1 {"Count":1}"#);
    assert_eq!(lines[1], r#"bonjour 7 {"Count":7}"#);
    assert_eq!(
        lines[2], r#"hello 7 {"Count":7}"#,
        "RESET of /Greeting restores the default only"
    );
    let details = core.ok(&["component", "details", "test.Conf", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&details).unwrap();
    assert_eq!(v["configuration"]["Greeting"], "hello");
    assert_eq!(v["configuration"]["Nested"]["Count"], 7);
}

#[test]
fn failed_install_under_rollback_keeps_the_previous_version_running() {
    let ws = Workspace::new();
    let m = marker();
    let v1 = ws.recipe_dir(
        "v1",
        &[(
            "s.yaml",
            &recipe(
                "test.Svc",
                "1.0.0",
                "",
                &format!("Run: export LICHEN_E2E_MARK={m}; exec sleep 1000"),
            ),
        )],
    );
    let v2 = ws.recipe_dir(
        "v2",
        &[(
            "s.yaml",
            &recipe("test.Svc", "2.0.0", "", "Install: exit 3\nRun: sleep 1000"),
        )],
    );
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&["--recipe-dir", &v1, "--merge", "test.Svc=1.0.0"]);
    assert!(ok, "{d}");
    core.wait_state("test.Svc", "RUNNING");
    let (ok, d) = core.deploy(&[
        "--recipe-dir",
        &v2,
        "--merge",
        "test.Svc=2.0.0",
        "--failure-handling-policy",
        "ROLLBACK",
    ]);
    assert!(!ok, "a failing install must fail the deployment: {d}");
    assert_eq!(d["status"], "FAILED");
    assert_eq!(
        d["deploymentStatusDetails"]["detailedDeploymentStatus"],
        "FAILED_ROLLBACK_COMPLETE"
    );
    core.wait_state("test.Svc", "RUNNING");
    assert_eq!(core.state("test.Svc").unwrap().0, "1.0.0");
    assert_eq!(
        processes_with(&m).len(),
        1,
        "exactly one v1 process runs after rollback"
    );
}

#[test]
fn three_errors_make_a_component_broken_and_a_redeploy_revives_it() {
    let ws = Workspace::new();
    let flag = ws.path("healthy");
    let count = ws.path("runs");
    ws.recipe(
        "f.yaml",
        &recipe(
            "test.Flaky",
            "1.0.0",
            "",
            &format!(
                "Run: echo run >> {c}; if [ -e {f} ]; then exec sleep 1000; else exit 1; fi",
                c = count.display(),
                f = flag.display()
            ),
        ),
    );
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&["--recipe-dir", &ws.recipes(), "--merge", "test.Flaky=1.0.0"]);
    // As in Greengrass, a `Run` component counts as RUNNING once spawned, so the deployment may
    // report success before the component fails; the component still ends BROKEN.
    let _ = (ok, d);
    core.wait_state("test.Flaky", "BROKEN");
    let runs = std::fs::read_to_string(&count).unwrap().lines().count();
    assert_eq!(runs, 3, "BROKEN after the third error");
    // A restart request does not revive a BROKEN component; a redeploy does.
    std::fs::write(&flag, "").unwrap();
    let (ok, d) = core.deploy(&["--recipe-dir", &ws.recipes(), "--merge", "test.Flaky=1.0.0"]);
    assert!(ok, "{d}");
    core.wait_state("test.Flaky", "RUNNING");
}

#[test]
fn kill_9_of_the_core_then_restart_restores_components_and_configuration() {
    let ws = Workspace::new();
    let m = marker();
    ws.recipe(
        "p.yaml",
        &recipe(
            "test.Persist",
            "1.0.0",
            "ComponentConfiguration:\n  DefaultConfiguration:\n    Word: default",
            &format!("Run: echo 'word={{configuration:/Word}}'; export LICHEN_E2E_MARK={m}; exec sleep 1000"),
        ),
    );
    let root = ws.root();
    {
        let core = Core::start(&root);
        let (ok, d) = core.deploy(&[
            "--recipe-dir",
            &ws.recipes(),
            "--merge",
            "test.Persist=1.0.0",
            "--update-config",
            r#"{"test.Persist":{"MERGE":{"Word":"kept"}}}"#,
        ]);
        assert!(ok, "{d}");
        core.wait_state("test.Persist", "RUNNING");
        core.kill9();
    }
    // The killed core's component processes outlive it; the next core on this root must stop
    // them before starting its own, so exactly one instance runs.
    let core = Core::start(&root);
    core.wait_state("test.Persist", "RUNNING");
    let d: serde_json::Value =
        serde_json::from_str(&core.ok(&["component", "details", "test.Persist", "--json"]))
            .unwrap();
    assert_eq!(d["configuration"]["Word"], "kept");
    eventually(30, "restarted component logs its configuration", || {
        core.log("test.Persist").matches("word=kept").count() >= 2
    });
    eventually(10, "one running instance", || processes_with(&m).len() == 1);
}

#[test]
fn kill_9_during_a_deployment_ends_in_the_old_or_the_new_state() {
    let ws = Workspace::new();
    let root = ws.root();
    let m = marker();
    let run = format!("Run: export LICHEN_E2E_MARK={m}; exec sleep 1000");
    let a1 = recipe("test.A", "1.0.0", "", &run);
    let b1 = recipe("test.B", "1.0.0", "", &run);
    let v1 = ws.recipe_dir("v1", &[("a.yaml", &a1), ("b.yaml", &b1)]);
    // Version 2 of both installs slowly, so the kill lands mid-deployment.
    let slow = format!("Install: sleep 2\n{run}");
    let a2 = recipe("test.A", "2.0.0", "", &slow);
    let b2 = recipe("test.B", "2.0.0", "", &slow);
    let v2 = ws.recipe_dir("v2", &[("a.yaml", &a2), ("b.yaml", &b2)]);
    {
        let core = Core::start(&root);
        let (ok, d) = core.deploy(&[
            "--recipe-dir",
            &v1,
            "--merge",
            "test.A=1.0.0",
            "--merge",
            "test.B=1.0.0",
        ]);
        assert!(ok, "{d}");
        core.wait_state("test.A", "RUNNING");
        core.wait_state("test.B", "RUNNING");
        let out = core.ok(&[
            "deployment",
            "create",
            "--recipe-dir",
            &v2,
            "--merge",
            "test.A=2.0.0",
            "--merge",
            "test.B=2.0.0",
        ]);
        assert!(out.contains("Deployment Id"), "{out}");
        std::thread::sleep(std::time::Duration::from_millis(1500));
        core.kill9();
    }
    let core = Core::start(&root);
    eventually(120, "deployment reaches an end state", || {
        let list: serde_json::Value =
            serde_json::from_str(&core.ok(&["deployment", "list", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] != "IN_PROGRESS" && d["status"] != "QUEUED")
    });
    let a = core.state("test.A").unwrap();
    let b = core.state("test.B").unwrap();
    assert_eq!(
        a.0, b.0,
        "components from two different deployments are running: A {a:?}, B {b:?}"
    );
    core.wait_state("test.A", "RUNNING");
    core.wait_state("test.B", "RUNNING");
    drop(core);
    eventually(30, "no component process left", || {
        processes_with(&m).is_empty()
    });
}

#[test]
fn sigterm_stops_every_component_process() {
    let ws = Workspace::new();
    let m = marker();
    ws.recipe(
        "t.yaml",
        &recipe(
            "test.Tree",
            "1.0.0",
            "",
            &format!("Run: export LICHEN_E2E_MARK={m}; sleep 1000 & sleep 1000 & wait"),
        ),
    );
    ws.recipe(
        "u.yaml",
        &recipe(
            "test.Ignores",
            "1.0.0",
            "",
            &format!("Run: export LICHEN_E2E_MARK={m}; trap '' TERM; sleep 1000"),
        ),
    );
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&[
        "--recipe-dir",
        &ws.recipes(),
        "--merge",
        "test.Tree=1.0.0",
        "--merge",
        "test.Ignores=1.0.0",
    ]);
    assert!(ok, "{d}");
    eventually(30, "component processes running", || {
        processes_with(&m).len() >= 3
    });
    assert_eq!(core.terminate(), Some(0));
    let left = processes_with(&m);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// test.Hello (a run step that ends) and test.Long (a run step that sleeps, marked with the
/// returned marker in its environment).
fn hello_and_long_recipes(ws: &Workspace) -> String {
    let m = marker();
    ws.recipe(
        "h.yaml",
        &recipe("test.Hello", "1.0.0", "", "Run: echo hello-finished"),
    );
    ws.recipe(
        "l.yaml",
        &recipe(
            "test.Long",
            "1.0.0",
            "",
            &format!("Install: exit 0\nRun: export LICHEN_E2E_MARK={m}; sleep 1000"),
        ),
    );
    m
}

fn deploy_hello_and_long(core: &Core, ws: &Workspace) {
    let (ok, d) = core.deploy(&[
        "--recipe-dir",
        &ws.recipes(),
        "--merge",
        "test.Hello=1.0.0",
        "--merge",
        "test.Long=1.0.0",
    ]);
    assert!(ok, "{d}");
}

#[test]
fn inherited_ignored_sigchld_and_blocked_sigterm_do_not_stop_supervision() {
    let ws = Workspace::new();
    let m = hello_and_long_recipes(&ws);
    let core = Core::start_with_hostile_signals(&ws.root());
    deploy_hello_and_long(&core, &ws);
    // FINISHED needs the exit status of the run step: lost if SIGCHLD stayed ignored.
    core.wait_state("test.Hello", "FINISHED");
    core.wait_state("test.Long", "RUNNING");
    eventually(30, "component process running", || {
        !processes_with(&m).is_empty()
    });
    // Heard only if the core unblocked SIGTERM; the component must not inherit the block either.
    assert_eq!(core.terminate(), Some(0));
    let left = processes_with(&m);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn supervision_works_where_every_session_reads_as_zero() {
    let ws = Workspace::new();
    let m = hello_and_long_recipes(&ws);
    let Some(core) = Core::start_in_pid_namespace(&ws.root()) else {
        eprintln!("skipped: this machine does not allow a new PID namespace (unshare --pid)");
        return;
    };
    deploy_hello_and_long(&core, &ws);
    core.wait_state("test.Hello", "FINISHED");
    core.wait_state("test.Long", "RUNNING");
    let mut first = Vec::new();
    eventually(30, "component process running", || {
        first = processes_with(&m);
        !first.is_empty()
    });
    // A restart must find the old process group (by its session) and end it before starting anew.
    core.ok(&["component", "restart", "--names", "test.Long"]);
    eventually(30, "the first run process ended and a new one runs", || {
        let now = processes_with(&m);
        !now.is_empty() && now.iter().all(|p| !first.contains(p))
    });
    core.wait_state("test.Long", "RUNNING");
    core.ok(&["component", "stop", "--names", "test.Long"]);
    eventually(30, "the run process ended after stop", || {
        processes_with(&m).is_empty()
    });
    assert_eq!(core.terminate(), Some(0));
}

#[test]
fn a_second_core_on_the_same_root_refuses_to_start() {
    let ws = Workspace::new();
    let _core = Core::start(&ws.root());
    let err = Core::try_start(&ws.root())
        .err()
        .expect("second core must not start");
    assert!(err.contains("already running"), "{err}");
}

#[test]
fn bad_deployments_fail_clearly_and_leave_the_running_set_unchanged() {
    let ws = Workspace::new();
    let good = ws.recipe_dir(
        "good",
        &[(
            "g.yaml",
            &recipe("test.Good", "1.0.0", "", "Run: exec sleep 1000"),
        )],
    );
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&["--recipe-dir", &good, "--merge", "test.Good=1.0.0"]);
    assert!(ok, "{d}");
    core.wait_state("test.Good", "RUNNING");
    let before = core.components();

    let with_art = |name: &str, digest: &str| {
        format!(
            "RecipeFormatVersion: '2020-01-25'\nComponentName: {name}\nComponentVersion: '1.0.0'\nManifests:\n  - Artifacts:\n      - Uri: s3://b/{name}/tool.sh\n{digest}    Lifecycle:\n      Run: sh {{artifacts:path}}/tool.sh\n"
        )
    };
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed-yaml", vec![("x.yaml", "ComponentName: [unclosed\n".to_string())], "test.X=1.0.0", "x.yaml"),
        (
            "unknown-type",
            vec![("x.yaml", "RecipeFormatVersion: '2020-01-25'\nComponentName: test.X\nComponentVersion: '1.0.0'\nComponentType: aws.greengrass.teapot\nManifests:\n  - Lifecycle:\n      Run: 'true'\n".to_string())],
            "test.X=1.0.0",
            "ComponentType",
        ),
        ("missing-artifact", vec![("x.yaml", with_art("test.NoArt", ""))], "test.NoArt=1.0.0", "tool.sh"),
        (
            "digest-mismatch",
            vec![("x.yaml", with_art("test.BadDigest", "        Digest: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='\n        Algorithm: SHA-256\n"))],
            "test.BadDigest=1.0.0",
            "igest",
        ),
        (
            "cycle",
            vec![
                ("c1.yaml", recipe("test.C1", "1.0.0", "ComponentDependencies:\n  test.C2:\n    VersionRequirement: '*'", "Run: 'true'")),
                ("c2.yaml", recipe("test.C2", "1.0.0", "ComponentDependencies:\n  test.C1:\n    VersionRequirement: '*'", "Run: 'true'")),
            ],
            "test.C1=1.0.0",
            "cycle",
        ),
        (
            "unsatisfiable",
            vec![
                ("u1.yaml", recipe("test.U1", "1.0.0", "ComponentDependencies:\n  test.U2:\n    VersionRequirement: '>=2.0.0'", "Run: 'true'")),
                ("u2.yaml", recipe("test.U2", "1.0.0", "", "Run: 'true'")),
            ],
            "test.U1=1.0.0",
            "test.U2",
        ),
        (
            "duplicate-version",
            vec![
                ("d1.yaml", recipe("test.Dup", "1.0.0", "", "Run: echo one")),
                ("d2.yaml", recipe("test.Dup", "1.0.0", "", "Run: echo two")),
            ],
            "test.Dup=1.0.0",
            "d2.yaml",
        ),
    ];
    for (label, files, merge, needle) in cases {
        let files: Vec<(&str, &str)> = files.iter().map(|(f, t)| (*f, t.as_str())).collect();
        let dir = ws.recipe_dir(label, &files);
        std::fs::create_dir_all(ws.path(&format!("{label}-art"))).unwrap();
        if label == "digest-mismatch" {
            ws.artifact("test.BadDigest", "1.0.0", "tool.sh", b"echo tampered\n");
        }
        let (ok, d) = core.deploy(&[
            "--recipe-dir",
            &dir,
            "--artifact-dir",
            &ws.artifacts(),
            "--merge",
            merge,
        ]);
        assert!(!ok, "{label}: deployment must fail: {d}");
        let text = d.to_string();
        assert!(
            text.contains(needle),
            "{label}: error should mention {needle:?}: {text}"
        );
        assert_eq!(core.components(), before, "{label}: running set changed");
    }
}

#[test]
fn recipe_validate_names_file_and_field_and_show_resolves_variables() {
    let ws = Workspace::new();
    let good = ws.path("good.yaml");
    std::fs::write(
        &good,
        "RecipeFormatVersion: '2020-01-25'\nComponentName: test.Show\nComponentVersion: '1.2.3'\nComponentConfiguration:\n  DefaultConfiguration:\n    Port: 9000\nManifests:\n  - Platform:\n      os: windows\n    Lifecycle:\n      Run: never\n  - Platform:\n      os: linux\n      architecture: /amd64|aarch64|x86/\n    Lifecycle:\n      Run:\n        Script: serve --port {configuration:/Port} --dir {work:path}\n        Timeout: 30\n",
    )
    .unwrap();
    let bad = ws.path("bad.yaml");
    std::fs::write(
        &bad,
        "RecipeFormatVersion: '2020-01-25'\nComponentName: test.Bad\nComponentVersion: '1.0.0'\nManifests:\n  - Lifecycle:\n      Install:\n        Script: x\n        Timeout: soon\n",
    )
    .unwrap();
    let root = ws.root();
    let out = cli(
        &root,
        &[
            "recipe",
            "validate",
            good.to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(
        err.contains("Manifests[0].Lifecycle.Install.Timeout"),
        "{err}"
    );
    let ok = String::from_utf8_lossy(&out.stdout);
    assert!(ok.contains("good.yaml: ok (test.Show 1.2.3)"), "{ok}");

    let out = cli(
        &root,
        &[
            "recipe",
            "show",
            good.to_str().unwrap(),
            "--platform",
            "os=linux,architecture=amd64",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SelectedManifest: 1"), "{text}");
    assert!(text.contains("serve --port 9000 --dir "), "{text}");
    assert!(text.contains("work/test.Show"), "{text}");
    let out = cli(
        &root,
        &[
            "recipe",
            "show",
            good.to_str().unwrap(),
            "--platform",
            "os=darwin",
        ],
    );
    assert!(!out.status.success(), "no manifest matches darwin");
}

#[test]
fn effective_config_logs_and_component_control_through_the_cli() {
    let ws = Workspace::new();
    ws.recipe(
        "s.yaml",
        &recipe(
            "test.Ctl",
            "1.0.0",
            "ComponentConfiguration:\n  DefaultConfiguration:\n    Colour: teal",
            "Run: echo started-{configuration:/Colour}; exec sleep 1000",
        ),
    );
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&["--recipe-dir", &ws.recipes(), "--merge", "test.Ctl=1.0.0"]);
    assert!(ok, "{d}");
    core.wait_state("test.Ctl", "RUNNING");
    // The running core rewrites effectiveConfig.yaml shortly after each change.
    eventually(30, "effective configuration shows the component", || {
        let cfg = core.ok(&["core", "effective-config"]);
        cfg.contains("test.Ctl") && cfg.contains("Colour: teal")
    });

    core.ok(&["component", "stop", "test.Ctl"]);
    core.wait_state("test.Ctl", "FINISHED");
    core.ok(&["component", "restart", "test.Ctl"]);
    core.wait_state("test.Ctl", "RUNNING");
    eventually(30, "two starts in the log", || {
        core.log("test.Ctl").matches("started-teal").count() == 2
    });
    let logs = core.ok(&["logs", "test.Ctl", "--tail", "50"]);
    assert!(logs.contains("started-teal"), "{logs}");
    let missing = core.cli(&["component", "details", "test.Nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("ResourceNotFoundError"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let status = core.ok(&["deployment", "list"]);
    assert!(status.contains("SUCCEEDED"), "{status}");
}

#[test]
fn bootstrap_exit_100_restarts_the_core_and_the_deployment_resumes() {
    let ws = Workspace::new();
    let boots = ws.path("boots.txt");
    let runs = ws.path("runs.txt");
    ws.recipe(
        "b.yaml",
        &recipe(
            "test.Boot",
            "1.0.0",
            "",
            &format!(
                "Bootstrap: echo boot >> {b}; exit 100\nRun: echo run >> {r}; exec sleep 1000",
                b = boots.display(),
                r = runs.display()
            ),
        ),
    );
    let core = Core::start(&ws.root());
    let pid_file = ws.root().join("lichen.lock");
    let pid_before = std::fs::read_to_string(&pid_file).unwrap();
    let (ok, d) = core.deploy(&["--recipe-dir", &ws.recipes(), "--merge", "test.Boot=1.0.0"]);
    assert!(ok, "{d}");
    core.wait_state("test.Boot", "RUNNING");
    // The bootstrap step ran once; the core restarted (same process, re-executed) and the
    // deployment resumed past it.
    assert_eq!(std::fs::read_to_string(&boots).unwrap(), "boot\n");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid_before);
    let log = std::fs::read_to_string(ws.root().join("logs/lichen.log")).unwrap();
    assert_eq!(
        log.matches("core ready").count(),
        2,
        "the core started twice: {log}"
    );
}
