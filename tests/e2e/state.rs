//! What a real core keeps private, what it hands to component processes, and what it reports.

use crate::support::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Every path under `root` (the root included), symlinks not followed.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Paths that other users may read, and why: components run as their own users and must reach the
/// IPC socket, their work folder and their artifacts.
fn may_be_shared(rel: &Path) -> bool {
    let s = rel.to_string_lossy();
    s.is_empty() // the root: traversed on the way to the socket, work/ and packages/
        || s == "ipc.socket" // connectable by every component user (authenticated by SVCUID)
        || s == "work" // traversed to reach work/<component>, which is private to its user
        || s == "packages" // traversed to reach the artifacts
        || s == "packages/artifacts"
        || s.starts_with("packages/artifacts/")
        || s == "packages/artifacts-unarchived"
        || s.starts_with("packages/artifacts-unarchived/")
        // What a component writes in its own work folder is its business: the folder is 0700 and
        // its user's (checked separately); steps run with umask 0022 as under Greengrass.
        || s.starts_with("work/test.")
}

/// Asserts no core state is readable by group or others; returns the offenders it found.
fn shared_state(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for p in walk(root) {
        let rel = p.strip_prefix(root).unwrap();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 && !may_be_shared(rel) {
            bad.push(format!("{:o} {}", mode, rel.display()));
        }
    }
    bad
}

/// Reads an artifact every user may read, and one with the default `Permission` (read by its
/// owner, which Greengrass makes the component's user).
fn private_recipe() -> String {
    "RecipeFormatVersion: '2020-01-25'\nComponentName: test.Private\nComponentVersion: '1.0.0'\n\
     Manifests:\n  - Platform:\n      os: '*'\n    Artifacts:\n      - Uri: s3://b/test.Private/data.txt\n\
     \x20       Permission:\n          Read: ALL\n      - Uri: s3://b/test.Private/own.txt\n\
     \x20   Lifecycle:\n\
     \x20     Run: cat {artifacts:path}/data.txt {artifacts:path}/own.txt > out.txt && touch made-by-me && id -u >> out.txt\n"
        .to_string()
}

#[test]
fn core_state_is_private_and_work_folders_belong_to_the_component_user() {
    let ws = Workspace::new();
    ws.recipe("p.yaml", &private_recipe());
    ws.artifact("test.Private", "1.0.0", "data.txt", b"artifact-text\n");
    ws.artifact("test.Private", "1.0.0", "own.txt", b"owner-only\n");
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&[
        "--recipe-dir",
        &ws.recipes(),
        "--artifact-dir",
        &ws.artifacts(),
        "--merge",
        "test.Private=1.0.0",
        "--run-with",
        "test.Private:posixUser=nobody",
    ]);
    assert!(ok, "deployment failed: {d}");
    core.wait_state("test.Private", "FINISHED");
    let root = ws.root().canonicalize().unwrap();
    let work = root.join("work/test.Private");
    let out = std::fs::read_to_string(work.join("out.txt")).unwrap();
    assert_eq!(
        out, "artifact-text\nowner-only\n65534\n",
        "the component read its artifacts as nobody"
    );
    let own =
        std::fs::metadata(root.join("packages/artifacts/test.Private/1.0.0/own.txt")).unwrap();
    assert_eq!(
        own.uid(),
        65534,
        "an artifact belongs to the component's user"
    );
    assert_eq!(
        own.permissions().mode() & 0o777,
        0o400,
        "and is not writable"
    );
    let meta = std::fs::metadata(&work).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (65534, 65534),
        "work folder owner"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "work folder mode");
    // The core's umask (0077) does not reach the component: its steps run with 0022.
    let made = std::fs::metadata(work.join("made-by-me")).unwrap();
    assert_eq!(
        made.permissions().mode() & 0o777,
        0o644,
        "a file the step made"
    );
    assert_eq!(made.uid(), 65534);
    let _ = std::fs::read_to_string(root.join("config/effectiveConfig.yaml")).unwrap();
    let bad = shared_state(&root);
    assert!(bad.is_empty(), "state readable by others: {bad:#?}");
    core.terminate();

    // State left by an earlier version under a permissive umask is tightened at the next start.
    for p in walk(&root) {
        let rel = p
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let core_state = [
            "config",
            "deployments",
            "logs",
            "work/aws.greengrass.Nucleus",
        ]
        .iter()
        .any(|d| rel == *d || rel.starts_with(&format!("{d}/")));
        if core_state {
            let dir = std::fs::symlink_metadata(&p).unwrap().is_dir();
            let mode = if dir { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    assert!(!shared_state(&root).is_empty(), "the loosening took effect");
    let core = Core::start(&ws.root());
    core.wait_state("test.Private", "FINISHED");
    let bad = shared_state(&root);
    assert!(bad.is_empty(), "earlier state left readable: {bad:#?}");
}

/// `KEY=VALUE` lines of `env` output (values without newlines).
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn component_processes_get_only_the_documented_environment() {
    let ws = Workspace::new();
    ws.recipe(
        "e.yaml",
        "RecipeFormatVersion: '2020-01-25'\nComponentName: test.Env\nComponentVersion: '1.0.0'\n\
         Manifests:\n  - Platform:\n      os: '*'\n    Lifecycle:\n      Setenv:\n        FROM_MANIFEST: m\n\
         \x20     Run:\n        Script: env > env.txt\n        Setenv:\n          FROM_STEP: s\n",
    );
    let config = ws.path("nucleus.yaml");
    std::fs::write(
        &config,
        "services:\n  aws.greengrass.Nucleus:\n    configuration:\n      lichen:\n        passEnvironment: [PASSED_ON]\n",
    )
    .unwrap();
    let core = start_core_with(
        &ws.root(),
        &[("SECRET_CANARY", "x"), ("PASSED_ON", "yes"), ("TZ", "UTC")],
        &["--config", config.to_str().unwrap()],
    );
    let (ok, d) = core.deploy(&["--recipe-dir", &ws.recipes(), "--merge", "test.Env=1.0.0"]);
    assert!(ok, "deployment failed: {d}");
    core.wait_state("test.Env", "FINISHED");
    let env_file = ws.root().join("work/test.Env/env.txt");
    let env = parse_env(&std::fs::read_to_string(env_file).unwrap());
    for secret in ["SECRET_CANARY", "LICHEN_LOG", "CARGO_MANIFEST_DIR"] {
        assert!(
            !env.contains_key(secret),
            "{secret} of the core's environment reached the component: {env:#?}"
        );
    }
    for documented in [
        "AWS_IOT_THING_NAME",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "GGC_VERSION",
        "GG_ROOT_CA_PATH",
        "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH",
        "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
        "SVCUID",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "PATH",
        "HOME",
    ] {
        assert!(
            env.contains_key(documented),
            "{documented} missing: {env:#?}"
        );
    }
    assert_eq!(env["FROM_MANIFEST"], "m");
    assert_eq!(env["FROM_STEP"], "s");
    assert_eq!(env["TZ"], "UTC");
    assert_eq!(env["PASSED_ON"], "yes", "lichen.passEnvironment");
    assert_eq!(env["GGC_VERSION"], "2.14.0");
}

fn listed(core: &Core) -> BTreeMap<String, String> {
    core.components()
        .into_iter()
        .map(|c| {
            (
                c["componentName"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn component_list_shows_only_what_is_deployed() {
    let ws = Workspace::new();
    let core = Core::start(&ws.root());
    let fresh = listed(&core);
    let expected: BTreeMap<String, String> = [
        ("aws.greengrass.Cli", "RUNNING"),
        ("aws.greengrass.Nucleus", "RUNNING"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(
        fresh, expected,
        "a fresh core lists only the nucleus and the CLI"
    );

    let (ok, d) = core.deploy(&["--merge", "aws.greengrass.StreamManager=2.2.1"]);
    assert!(ok, "deployment failed: {d}");
    core.wait_state("aws.greengrass.StreamManager", "RUNNING");
    assert_eq!(listed(&core).len(), 3);

    let (ok, d) = core.deploy(&["--remove", "aws.greengrass.StreamManager"]);
    assert!(ok, "removal failed: {d}");
    eventually(30, "StreamManager leaves the list", || {
        !listed(&core).contains_key("aws.greengrass.StreamManager")
    });
    assert_eq!(listed(&core), expected);
}
