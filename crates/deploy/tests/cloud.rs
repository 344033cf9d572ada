//! Cloud deployment documents through the real engine: parsing, group root replacement,
//! RESET/MERGE, runWith, stale skipping, capabilities, resolution with the cloud (LOCAL still
//! wins), signatures, groups the device left.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::{Core, SLEEP};
use lichen_deploy::{
    CloudResolver, CloudSource, DeployError, DeploymentStatus, DetailedStatus,
    FailureHandlingPolicy, ResolvedComponent, SigningPolicy, parse_document,
};
use ring::signature::KeyPair as _;
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// (name, version) → (recipe bytes, signature).
type Recipes = BTreeMap<(String, String), (Vec<u8>, Option<(String, String)>)>;
/// (component, local candidate, requirements) of each call.
type Calls = Vec<(String, Option<String>, BTreeMap<String, String>)>;

/// The fleet's side of resolveComponentCandidates, from a fixed catalog of recipes.
#[derive(Default)]
struct Catalog {
    recipes: Mutex<Recipes>,
    calls: Mutex<Calls>,
}

impl Catalog {
    fn add(&self, name: &str, version: &str, script: &str) -> Vec<u8> {
        let recipe = format!(
            "RecipeFormatVersion: '2020-01-25'\nComponentName: {name}\nComponentVersion: '{version}'\nComponentConfiguration:\n  DefaultConfiguration:\n    greeting: hello\n    keep: default\nManifests:\n  - Platform:\n      os: linux\n    Lifecycle:\n      Run: '{script}'\n"
        )
        .into_bytes();
        self.recipes
            .lock()
            .unwrap()
            .insert((name.into(), version.into()), (recipe.clone(), None));
        recipe
    }

    fn sign(&self, name: &str, version: &str, key_id: &str, signature: &[u8]) {
        let mut recipes = self.recipes.lock().unwrap();
        let entry = recipes.get_mut(&(name.into(), version.into())).unwrap();
        entry.1 = Some((key_id.to_string(), B64.encode(signature)));
    }

    fn asked(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }
}

impl CloudResolver for Catalog {
    fn resolve(
        &self,
        component: &str,
        local: Option<&semver::Version>,
        requirements: &BTreeMap<String, String>,
    ) -> Result<ResolvedComponent, DeployError> {
        self.calls.lock().unwrap().push((
            component.to_string(),
            local.map(|v| v.to_string()),
            requirements.clone(),
        ));
        let recipes = self.recipes.lock().unwrap();
        let best = recipes
            .iter()
            .filter(|((n, _), _)| n == component)
            .filter_map(|((_, v), r)| Some((semver::Version::parse(v).ok()?, r)))
            .filter(|(v, _)| {
                requirements.values().all(|r| {
                    lichen_recipe::VersionRequirement::parse(r)
                        .unwrap()
                        .matches(v)
                })
            })
            .max_by(|a, b| a.0.cmp(&b.0));
        let Some((version, (recipe, signature))) = best else {
            return Err(DeployError::Cloud(format!(
                "no usable version of {component}"
            )));
        };
        Ok(ResolvedComponent {
            arn: format!(
                "arn:aws:greengrass:us-east-1:1:components:{component}:versions:{version}"
            ),
            version,
            recipe: recipe.clone(),
            vendor_guidance: Some("ACTIVE".into()),
            signature: signature.clone(),
        })
    }
}

fn document(id: &str, group: &str, created: i64, components: Value) -> Value {
    json!({
        "deploymentId": id,
        "schemaDate": "2021-05-17",
        "configurationArn": format!("arn:aws:greengrass:us-east-1:1:configuration:{group}:1"),
        "creationTimestamp": created,
        "components": components,
        "failureHandlingPolicy": "DO_NOTHING",
        "componentUpdatePolicy": {"timeout": 5, "action": "SKIP_NOTIFY_COMPONENTS"},
    })
}

async fn deploy_cloud(core: &Core, doc: Value) -> lichen_deploy::DeploymentRecord {
    // As a job: the job id is the deployment id.
    let job_id = doc["deploymentId"].as_str().unwrap().to_string();
    let parsed = parse_document(&doc, CloudSource::Job, &job_id).unwrap();
    let id = core.engine.submit_cloud(parsed).unwrap();
    core.engine.wait_idle().await;
    core.engine.status(&id).unwrap()
}

#[test]
fn every_document_field_is_read_case_insensitively() {
    let doc = json!({
        "DeploymentId": "d-1",
        "deploymentName": "first",
        "SchemaDate": "2021-05-17",
        "ConfigurationArn": "arn:aws:greengrass:us-east-1:123:configuration:thinggroup/Fleet:7",
        "CreationTimestamp": 1700000000123_i64,
        "Components": {
            "com.example.A": {
                "Version": "^1.0.0",
                "ConfigurationUpdate": {"Merge": "{\"a\":{\"b\":1}}", "Reset": ["/x", ""]},
                "RunWith": {"PosixUser": "u:g", "SystemResourceLimits": {"memory": 1024, "cpus": 0.5}}
            },
            "com.example.B": {"version": "2.0.0"}
        },
        "FailureHandlingPolicy": "DO_NOTHING",
        "ComponentUpdatePolicy": {"Timeout": 30, "Action": "SKIP_NOTIFY_COMPONENTS"},
        "ConfigurationValidationPolicy": {"Timeout": 45},
        "RequiredCapabilities": ["LARGE_CONFIGURATION", "TELEPORTATION"]
    });
    let parsed = parse_document(&doc, CloudSource::Job, "job-1").unwrap();
    let info = parsed.info();
    assert_eq!(
        info.deployment_id, "job-1",
        "a job's deployment is known by its job id"
    );
    let by_shadow = parse_document(&doc, CloudSource::Shadow, "x").unwrap();
    assert_eq!(by_shadow.info().deployment_id, "d-1");
    assert_eq!(info.deployment_name.as_deref(), Some("first"));
    assert_eq!(info.group, "thinggroup/Fleet");
    assert_eq!(parsed.group(), "thinggroup/Fleet");
    assert_eq!(info.creation_timestamp, 1700000000123);
    assert_eq!(info.validation_timeout_s, Some(45));
    assert!(info.large_configuration);
    assert_eq!(parsed.unsupported_capabilities(), vec!["TELEPORTATION"]);
    let req = &parsed.request;
    assert_eq!(
        req.failure_handling_policy,
        FailureHandlingPolicy::DoNothing
    );
    let policy = req.component_update_policy.as_ref().unwrap();
    assert!(!policy.notify_components);
    assert_eq!(policy.timeout.as_secs(), 30);
    assert_eq!(req.root_components_to_add["com.example.A"], "^1.0.0");
    assert_eq!(req.root_components_to_add["com.example.B"], "2.0.0");
    let update = &req.configuration_updates["com.example.A"];
    assert_eq!(update.merge, Some(json!({"a": {"b": 1}})));
    assert_eq!(update.reset, vec!["/x".to_string(), String::new()]);
    let rw = &req.run_with["com.example.A"];
    assert_eq!(rw.posix_user.as_deref(), Some("u:g"));
    assert_eq!(
        rw.system_resource_limits,
        Some(json!({"memory": 1024, "cpus": 0.5}))
    );
    // An omitted runWith still yields an (empty) override for the root: it reverts to default.
    assert_eq!(req.run_with["com.example.B"], Default::default());

    // Defaults: ROLLBACK, NOTIFY_COMPONENTS 60 s; a thing ARN gives the thing's group.
    let minimal = json!({
        "configurationArn": "arn:aws:greengrass:us-east-1:1:configuration:thing/T1:2",
        "components": {}
    });
    let parsed = parse_document(&minimal, CloudSource::Shadow, "fallback").unwrap();
    assert_eq!(parsed.info().deployment_id, "fallback");
    assert_eq!(parsed.group(), "thing/T1");
    assert_eq!(
        parsed.request.failure_handling_policy,
        FailureHandlingPolicy::Rollback
    );
    assert!(
        parsed
            .request
            .component_update_policy
            .as_ref()
            .unwrap()
            .notify_components
    );

    // Bad input names the field.
    let err = parse_document(&json!({"components": {}}), CloudSource::Job, "j")
        .unwrap_err()
        .to_string();
    assert!(err.contains("configurationArn"), "{err}");
    let err = parse_document(
        &json!({"configurationArn": "arn:x:configuration:thinggroup/G:1",
                "components": {"A": {"version": "not a range!"}}}),
        CloudSource::Job,
        "j",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("components.A.version"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_document_replaces_group_roots_with_reset_merge_and_run_with() {
    let tmp = tempfile::tempdir().unwrap();
    let core = Core::start(&tmp.path().join("root")).await;
    let catalog = Arc::new(Catalog::default());
    catalog.add("com.example.A", "1.0.0", SLEEP);
    catalog.add("com.example.B", "1.0.0", SLEEP);
    core.engine
        .set_cloud_resolver(catalog.clone(), SigningPolicy::default());

    let mut first = document(
        "job-1",
        "thinggroup/G",
        1000,
        json!({"com.example.A": {"version": "1.0.0",
                 "configurationUpdate": {"merge": {"greeting": "hi", "extra": {"n": 1}}},
                 "runWith": {"systemResourceLimits": {"memory": 2048}}},
               "com.example.B": {"version": "^1.0.0"}}),
    );
    first["failureHandlingPolicy"] = json!("ROLLBACK");
    let record = deploy_cloud(&core, first).await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(record.group, "thinggroup/G");
    assert_eq!(
        core.config
            .get(&["services", "com.example.A", "configuration"]),
        Some(json!({"greeting": "hi", "keep": "default", "extra": {"n": 1}}))
    );
    assert_eq!(
        core.config.get(&["services", "com.example.A", "runWith"]),
        Some(json!({"systemResourceLimits": {"memory": 2048}}))
    );
    assert_eq!(
        core.config.get(&[
            "services",
            "DeploymentService",
            "GroupToLastDeployment",
            "thinggroup/G",
            "timestamp"
        ]),
        Some(json!(1000))
    );
    assert!(
        core.root
            .join("packages/recipes/com.example.A@1.0.0.metadata.json")
            .is_file()
    );

    // The next revision: RESET one key, drop B from the group, no runWith ⇒ override removed.
    let second = document(
        "job-2",
        "thinggroup/G",
        2000,
        json!({"com.example.A": {"version": "1.0.0",
                 "configurationUpdate": {"reset": ["/greeting"], "merge": {"extra": {"m": 2}}}}}),
    );
    let record = deploy_cloud(&core, second).await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(
        core.config
            .get(&["services", "com.example.A", "configuration"]),
        Some(json!({"greeting": "hello", "keep": "default", "extra": {"n": 1, "m": 2}}))
    );
    assert_eq!(
        core.config.get(&["services", "com.example.A", "runWith"]),
        None
    );
    assert_eq!(
        core.version("com.example.B"),
        None,
        "B left the group's roots"
    );
    // Clean-up after success: B's recipe is gone from the store, A's stays.
    assert!(
        !core
            .root
            .join("packages/recipes/com.example.B@1.0.0.recipe.json")
            .exists()
    );
    assert!(
        core.root
            .join("packages/recipes/com.example.A@1.0.0.recipe.json")
            .is_file()
    );

    // Stale: created before the group's last processed deployment ⇒ refused, nothing changes.
    let stale = document("job-0", "thinggroup/G", 1500, json!({}));
    let record = deploy_cloud(&core, stale).await;
    assert_eq!(record.status, DeploymentStatus::Failed);
    assert!(
        record.failure_cause.contains("stale"),
        "{}",
        record.failure_cause
    );
    assert_eq!(core.version("com.example.A").as_deref(), Some("1.0.0"));

    // Unsupported capability ⇒ FAILED_NO_STATE_CHANGE naming it.
    let mut odd = document("job-3", "thinggroup/G", 3000, json!({}));
    odd["requiredCapabilities"] = json!(["TIME_TRAVEL"]);
    let record = deploy_cloud(&core, odd).await;
    assert_eq!(
        record.detailed_status,
        Some(DetailedStatus::FailedNoStateChange)
    );
    assert!(
        record.failure_cause.contains("TIME_TRAVEL"),
        "{}",
        record.failure_cause
    );
    assert_eq!(core.version("com.example.A").as_deref(), Some("1.0.0"));
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_recipe_wins_for_the_local_group_and_left_groups_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let (core, _inputs) =
        Core::start_deployed(tmp.path(), "l", "com.example.Local", "", SLEEP).await;
    let catalog = Arc::new(Catalog::default());
    // The cloud has a newer version the LOCAL group's requirement would also allow.
    catalog.add("com.example.Local", "1.0.0", "exit 1");
    catalog.add("com.example.Other", "1.0.0", SLEEP);
    core.engine
        .set_cloud_resolver(catalog.clone(), SigningPolicy::default());
    let doc = document(
        "job-a",
        "thinggroup/A",
        10,
        json!({"com.example.Local": {"version": ">=1.0.0"}, "com.example.Other": {"version": "1.0.0"}}),
    );
    let record = deploy_cloud(&core, doc).await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(catalog.asked(), vec!["com.example.Other".to_string()]);
    let calls = catalog.calls.lock().unwrap().clone();
    assert_eq!(
        calls[0].2.get("thinggroup/A").map(String::as_str),
        Some("1.0.0")
    );

    // The device left group A: a deployment to group B removes A's components.
    let mut doc = document("job-b", "thinggroup/B", 20, json!({}));
    doc["components"] = json!({});
    let mut parsed = parse_document(&doc, CloudSource::Job, "job-b").unwrap();
    parsed.info_mut().member_groups = Some(BTreeSet::from(["thinggroup/B".to_string()]));
    let id = core.engine.submit_cloud(parsed).unwrap();
    core.engine.wait_idle().await;
    let record = core.engine.status(&id).unwrap();
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(core.version("com.example.Other"), None);
    assert_eq!(
        core.version("com.example.Local").as_deref(),
        Some("1.0.0"),
        "LOCAL stays"
    );
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_required_checked_and_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let core = Core::start(&tmp.path().join("root")).await;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public = key.public_key().as_ref().to_vec();
    let key_id = lichen_deploy::key_id(&public);
    let policy = SigningPolicy::new(true, &[B64.encode(&public)]).unwrap();
    let catalog = Arc::new(Catalog::default());
    catalog.add("com.example.Unsigned", "1.0.0", SLEEP);
    let forged = catalog.add("com.example.Forged", "1.0.0", SLEEP);
    let good = catalog.add("com.example.Signed", "1.0.0", SLEEP);
    let mut tampered = forged.clone();
    tampered.push(b'\n');
    catalog.sign(
        "com.example.Forged",
        "1.0.0",
        &key_id,
        key.sign(&tampered).as_ref(),
    );
    catalog.sign(
        "com.example.Signed",
        "1.0.0",
        &key_id,
        key.sign(&good).as_ref(),
    );
    core.engine.set_cloud_resolver(catalog.clone(), policy);

    let doc = |id: &str, ts: i64, name: &str| {
        document(
            id,
            "thinggroup/S",
            ts,
            json!({ name: {"version": "1.0.0"} }),
        )
    };
    let record = deploy_cloud(&core, doc("s1", 1, "com.example.Unsigned")).await;
    assert_eq!(
        record.detailed_status,
        Some(DetailedStatus::FailedNoStateChange)
    );
    assert!(
        record.failure_cause.contains("com.example.Unsigned@1.0.0"),
        "{}",
        record.failure_cause
    );
    let record = deploy_cloud(&core, doc("s2", 2, "com.example.Forged")).await;
    assert_eq!(
        record.detailed_status,
        Some(DetailedStatus::FailedNoStateChange)
    );
    assert!(
        record.failure_cause.contains(&key_id),
        "{}",
        record.failure_cause
    );
    assert!(
        !core
            .root
            .join("packages/recipes/com.example.Forged@1.0.0.recipe.json")
            .exists()
    );
    let record = deploy_cloud(&core, doc("s3", 3, "com.example.Signed")).await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(core.version("com.example.Signed").as_deref(), Some("1.0.0"));

    assert!(
        SigningPolicy::new(true, &["AAAA".into()])
            .unwrap_err()
            .contains("32 bytes")
    );
    core.stop().await;
}

/// Writes fixed bytes for every `s3://` artifact of a cloud deployment, counting calls.
struct BytesFetcher(Vec<u8>, Mutex<u32>);

impl lichen_deploy::ArtifactFetcher for BytesFetcher {
    fn fetch(
        &self,
        request: &lichen_deploy::FetchRequest<'_>,
        dest: &std::path::Path,
    ) -> Result<bool, DeployError> {
        if !request.cloud_deployment {
            return Ok(false);
        }
        assert!(
            request
                .component_arn
                .as_deref()
                .is_some_and(|a| a.contains(":versions:"))
        );
        *self.1.lock().unwrap() += 1;
        std::fs::write(dest, &self.0).unwrap();
        Ok(true)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloaded_artifact_with_the_wrong_digest_is_refused_and_fetched_again() {
    use sha2::Digest as _;
    let tmp = tempfile::tempdir().unwrap();
    let core = Core::start(&tmp.path().join("root")).await;
    let good = b"the real artifact".to_vec();
    let digest = B64.encode(sha2::Sha256::digest(&good));
    let catalog = Arc::new(Catalog::default());
    let recipe = format!(
        "RecipeFormatVersion: '2020-01-25'\nComponentName: com.example.Art\nComponentVersion: '1.0.0'\nManifests:\n  - Platform:\n      os: linux\n    Lifecycle:\n      Run: '{SLEEP}'\n    Artifacts:\n      - Uri: s3://bucket/art.bin\n        Digest: {digest}\n        Algorithm: SHA-256\n"
    );
    catalog.recipes.lock().unwrap().insert(
        ("com.example.Art".into(), "1.0.0".into()),
        (recipe.into_bytes(), None),
    );
    core.engine
        .set_cloud_resolver(catalog.clone(), SigningPolicy::default());
    let bad = Arc::new(BytesFetcher(b"tampered".to_vec(), Mutex::new(0)));
    core.engine.register_fetcher("s3", bad.clone());
    let doc = |id: &str, ts: i64| {
        document(
            id,
            "thinggroup/D",
            ts,
            json!({"com.example.Art": {"version": "1.0.0"}}),
        )
    };
    let record = deploy_cloud(&core, doc("a1", 1)).await;
    assert_eq!(
        record.detailed_status,
        Some(DetailedStatus::FailedNoStateChange)
    );
    assert!(
        record
            .error_stack
            .contains(&"ARTIFACT_CHECKSUM_MISMATCH".to_string()),
        "{:?}",
        record.error_stack
    );
    let stored = core
        .root
        .join("packages/artifacts/com.example.Art/1.0.0/art.bin");
    assert!(!stored.exists(), "the bad download is not kept");
    assert_eq!(core.version("com.example.Art"), None);

    // A good download on the next attempt goes through.
    let good_fetcher = Arc::new(BytesFetcher(good.clone(), Mutex::new(0)));
    core.engine.register_fetcher("s3", good_fetcher.clone());
    let record = deploy_cloud(&core, doc("a2", 2)).await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(*good_fetcher.1.lock().unwrap(), 1);
    assert_eq!(std::fs::read(&stored).unwrap(), good);

    // A local deployment never uses the cloud-only fetcher.
    assert_eq!(*bad.1.lock().unwrap(), 1);
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_are_resolved_with_the_cloud_with_every_requirement() {
    let tmp = tempfile::tempdir().unwrap();
    let core = Core::start(&tmp.path().join("root")).await;
    let catalog = Arc::new(Catalog::default());
    catalog.add("com.example.Lib", "1.0.0", SLEEP);
    catalog.add("com.example.Lib", "1.5.0", SLEEP);
    catalog.add("com.example.Lib", "2.0.0", SLEEP);
    let app = format!(
        "RecipeFormatVersion: '2020-01-25'\nComponentName: com.example.App\nComponentVersion: '1.0.0'\nComponentDependencies:\n  com.example.Lib:\n    VersionRequirement: '^1.0.0'\nManifests:\n  - Platform:\n      os: linux\n    Lifecycle:\n      Run: '{SLEEP}'\n"
    );
    catalog.recipes.lock().unwrap().insert(
        ("com.example.App".into(), "1.0.0".into()),
        (app.into_bytes(), None),
    );
    core.engine
        .set_cloud_resolver(catalog.clone(), SigningPolicy::default());
    let doc = document(
        "dep-1",
        "thinggroup/G",
        1,
        json!({"com.example.App": {"version": "1.0.0"}}),
    );
    let record = deploy_cloud(&core, doc).await;
    assert_eq!(
        record.status,
        DeploymentStatus::Succeeded,
        "{}",
        record.failure_cause
    );
    assert_eq!(core.version("com.example.Lib").as_deref(), Some("1.5.0"));
    let calls = catalog.calls.lock().unwrap().clone();
    let lib = calls
        .iter()
        .find(|c| c.0 == "com.example.Lib")
        .expect("the dependency was resolved with the cloud");
    assert_eq!(
        lib.2.get("com.example.App@1.0.0").map(String::as_str),
        Some("^1.0.0")
    );
    core.stop().await;
}
