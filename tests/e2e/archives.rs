//! Hostile artifacts and path-hostile names through the real binary: a deployment carrying a
//! crafted ZIP fails, writes nothing outside its extraction folder and leaves the running set
//! alone; `lichen recipe validate` refuses a component named `..`.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::support::*;

enum Entry<'a> {
    File(&'a str),
    Link(&'a str, &'a str),
}

fn zip_bytes(entries: &[Entry<'_>]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for entry in entries {
        match entry {
            Entry::File(name) => {
                zip.start_file(*name, SimpleFileOptions::default()).unwrap();
                zip.write_all(b"written by the archive").unwrap();
            }
            Entry::Link(name, target) => zip
                .add_symlink(*name, *target, SimpleFileOptions::default())
                .unwrap(),
        }
    }
    zip.finish().unwrap().into_inner()
}

/// Every path under `dir` whose file name is `name`, links not followed.
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
            if entry.file_name() == name {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn crafted_zip_artifacts_fail_the_deployment_and_write_nothing_outside() {
    let ws = Workspace::new();
    let keep = ws.recipe_dir(
        "keep",
        &[(
            "k.yaml",
            &recipe("test.Keep", "1.0.0", "", "Run: exec sleep 1000"),
        )],
    );
    let core = Core::start(&ws.root());
    let (ok, d) = core.deploy(&["--recipe-dir", &keep, "--merge", "test.Keep=1.0.0"]);
    assert!(ok, "{d}");
    core.wait_state("test.Keep", "RUNNING");
    let before = core.components();

    let evil = ws.recipe_dir(
        "evil",
        &[(
            "e.yaml",
            "RecipeFormatVersion: '2020-01-25'\nComponentName: test.Evil\nComponentVersion: '1.0.0'\nManifests:\n  - Artifacts:\n      - Uri: greengrass:pack.zip\n        Unarchive: ZIP\n    Lifecycle:\n      Run: 'true'\n",
        )],
    );
    // `x -> .` and `y -> x/..` each stay inside; chained they climb out of the store.
    let chain = zip_bytes(&[
        Entry::Link("x", "."),
        Entry::Link("y", "x/.."),
        Entry::Link("z", "y/.."),
        Entry::Link("w", "z/.."),
        Entry::File("w/escaped.txt"),
    ]);
    let traversal = zip_bytes(&[Entry::File("ok.txt"), Entry::File("../escaped.txt")]);
    for (label, bytes, needle) in [
        ("chain", chain, "symbolic link"),
        ("traversal", traversal, "leaves the extraction folder"),
    ] {
        ws.artifact("test.Evil", "1.0.0", "pack.zip", &bytes);
        let (ok, d) = core.deploy(&[
            "--recipe-dir",
            &evil,
            "--artifact-dir",
            &ws.artifacts(),
            "--merge",
            "test.Evil=1.0.0",
        ]);
        assert_eq!(
            find_named(ws.dir.path(), "escaped.txt"),
            Vec::<PathBuf>::new(),
            "{label}: {d}"
        );
        assert!(!ok, "{label}: deployment must fail: {d}");
        let text = d.to_string();
        assert!(
            text.contains(needle) && text.contains("pack.zip"),
            "{label}: {text}"
        );
        assert_eq!(core.components(), before, "{label}: running set changed");
    }
    core.wait_state("test.Keep", "RUNNING");
}

#[test]
fn recipe_validate_refuses_dot_names() {
    let ws = Workspace::new();
    let file = ws.path("dots.yaml");
    std::fs::write(
        &file,
        "RecipeFormatVersion: '2020-01-25'\nComponentName: '..'\nComponentVersion: '1.0.0'\nManifests:\n  - Lifecycle:\n      Run: 'true'\n",
    )
    .unwrap();
    let out = cli(
        &ws.root(),
        &["recipe", "validate", &file.display().to_string()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(
        err.contains("dots.yaml: ComponentName: component name '..' must not start with '.'"),
        "{err}"
    );
}
