//! Hostile artifacts on a real core: crafted ZIPs and undigested cloud artifacts fail the
//! deployment, write nothing outside the extraction folder and leave the running set alone.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Core, Inputs, SLEEP, eventually};
use lichen_deploy::{ArtifactFetcher, DeployError, DeploymentStatus, DetailedStatus, FetchRequest};
use lichen_supervisor::State;
use zip::write::SimpleFileOptions;

enum Entry<'a> {
    File(&'a str),
    Link(&'a str, &'a str),
}

fn zip_bytes(entries: &[Entry<'_>]) -> Vec<u8> {
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

/// Every file under `dir` named `name`, symlinks not followed.
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path.clone());
            }
            if entry.file_name() == name {
                found.push(path);
            }
        }
    }
    found
}

fn assert_failed_unchanged(record: &lichen_deploy::DeploymentRecord, needles: &[&str]) {
    assert_eq!(
        record.status,
        DeploymentStatus::Failed,
        "{}",
        record.failure_cause
    );
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_fail_the_deployment_and_write_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let (core, _) = Core::start_deployed(tmp.path(), "base", "com.example.Keep", "", SLEEP).await;
    let root = core.root.clone();
    let services_before = core.config.get(&["services"]).unwrap();

    // Each link alone stays inside; the chain climbs out of the store, and the last entry is
    // written through it.
    let chain = zip_bytes(&[
        Entry::Link("x", "."),
        Entry::Link("y", "x/.."),
        Entry::Link("z", "y/.."),
        Entry::Link("w", "z/.."),
        Entry::File("w/escaped.txt"),
    ]);
    let traversal = zip_bytes(&[Entry::File("ok.txt"), Entry::File("../escaped.txt")]);
    let absolute = zip_bytes(&[Entry::Link("etc", "/etc"), Entry::File("ok.txt")]);
    let cases: [(&str, &[u8], &str); 3] = [
        ("chain", &chain, "\"x\""),
        ("traversal", &traversal, "../escaped.txt"),
        ("absolute", &absolute, "\"etc\""),
    ];
    for (label, bytes, entry) in cases {
        let inputs = Inputs::new(tmp.path(), label);
        inputs.recipe(
            "com.example.Evil",
            "1.0.0",
            "",
            "    Lifecycle:\n      Run: 'true'\n    Artifacts:\n      - Uri: greengrass:pack.zip\n        Unarchive: ZIP",
        );
        inputs.artifact("com.example.Evil", "1.0.0", "pack.zip", bytes);
        let mut req = inputs.request(&[("com.example.Evil", "1.0.0")]);
        req.root_components_to_add
            .insert("com.example.Keep".into(), "1.0.0".into());
        let record = core.deploy(req).await;
        assert_eq!(
            find_named(tmp.path(), "escaped.txt"),
            Vec::<PathBuf>::new(),
            "{label}"
        );
        assert_failed_unchanged(&record, &["pack.zip", entry, "com.example.Evil"]);
        assert!(
            !root
                .join("packages/artifacts-unarchived/com.example.Evil/1.0.0/pack")
                .exists(),
            "{label}: nothing extracted"
        );
    }

    assert_eq!(core.config.get(&["services"]).unwrap(), services_before);
    assert_eq!(core.state("com.example.Keep"), Some(State::Running));
    assert!(core.state("com.example.Evil").is_none());
    core.stop().await;
}

/// Serves any artifact from memory, as a cloud download would, and counts the downloads.
struct MemoryFetcher {
    content: Vec<u8>,
    fetched: AtomicUsize,
}

impl ArtifactFetcher for MemoryFetcher {
    fn fetch(&self, _request: &FetchRequest<'_>, dest: &Path) -> Result<bool, DeployError> {
        std::fs::write(dest, &self.content).unwrap();
        self.fetched.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaded_artifacts_need_a_digest_local_ones_do_not() {
    use base64::Engine as _;
    use sha2::Digest as _;

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let core = Core::start(&root).await;
    let fetcher = Arc::new(MemoryFetcher {
        content: b"echo downloaded".to_vec(),
        fetched: AtomicUsize::new(0),
    });
    core.engine.register_fetcher("s3", fetcher.clone());

    // No Digest and nothing in the artifacts directory: the download is refused up front.
    let inputs = Inputs::new(tmp.path(), "nodigest");
    inputs.recipe(
        "com.example.Cloud",
        "1.0.0",
        "",
        "    Lifecycle:\n      Run: 'true'\n    Artifacts:\n      - Uri: s3://bucket/tool.sh",
    );
    let record = core
        .deploy(inputs.request(&[("com.example.Cloud", "1.0.0")]))
        .await;
    assert_failed_unchanged(
        &record,
        &["s3://bucket/tool.sh", "com.example.Cloud@1.0.0", "Digest"],
    );
    assert_eq!(fetcher.fetched.load(Ordering::SeqCst), 0, "not downloaded");
    assert!(
        !root
            .join("packages/artifacts/com.example.Cloud/1.0.0/tool.sh")
            .exists()
    );

    // With its Digest the same download is accepted and verified.
    let digest =
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b"echo downloaded"));
    let inputs = Inputs::new(tmp.path(), "digest");
    inputs.recipe(
        "com.example.Cloud",
        "1.0.0",
        "",
        &format!(
            "    Lifecycle:\n      Run: 'true'\n    Artifacts:\n      - Uri: s3://bucket/tool.sh\n        Digest: '{digest}'"
        ),
    );
    let record = core
        .deploy(inputs.request(&[("com.example.Cloud", "1.0.0")]))
        .await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(fetcher.fetched.load(Ordering::SeqCst), 1);

    // A local deployment's own files need no Digest, whatever the URI scheme.
    let inputs = Inputs::new(tmp.path(), "local");
    inputs.recipe(
        "com.example.Local",
        "1.0.0",
        "",
        "    Lifecycle:\n      Run: 'true'\n    Artifacts:\n      - Uri: s3://bucket/local.sh",
    );
    inputs.artifact("com.example.Local", "1.0.0", "local.sh", b"echo local");
    let record = core
        .deploy(inputs.request(&[("com.example.Local", "1.0.0")]))
        .await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(fetcher.fetched.load(Ordering::SeqCst), 1);
    // RUNNING once spawned settles the deployment; FINISHED follows on exit 0.
    eventually("local finished", || {
        core.state("com.example.Local") == Some(State::Finished)
    })
    .await;
    core.stop().await;
}
