//! Recipes end to end: real files, every field, platform and lifecycle selection, errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lichen_recipe::{
    Access, ComponentType, ComponentVars, DependencyType, Format, InterpolationContext, Platform,
    Recipe, RecipeError, SkipCheck, Unarchive, Version, parse_file, parse_str,
};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    // The runner's value first: a test binary reused from a build cache made in another
    // checkout still finds this checkout's fixtures.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
        .join("tests/fixtures")
        .join(name)
}

fn platform(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

fn yaml(text: &str) -> Result<Recipe, RecipeError> {
    parse_str(text, Format::Yaml, "test.yaml")
}

/// A minimal valid recipe with `extra` YAML appended at top level.
fn minimal(extra: &str) -> String {
    format!(
        "RecipeFormatVersion: '2020-01-25'\nComponentName: com.example.Min\nComponentVersion: 1.0.0\n{extra}"
    )
}

fn err(text: &str) -> RecipeError {
    match yaml(text) {
        Ok(r) => panic!("expected an error, parsed {r:?}"),
        Err(e) => e,
    }
}

fn assert_err(text: &str, field: &str, needle: &str) {
    let e = err(text);
    assert_eq!(e.origin, "test.yaml");
    assert_eq!(e.field, field, "{e}");
    assert!(
        e.message.contains(needle),
        "message {:?} should mention {needle:?}",
        e.message
    );
    // Display carries origin, field and message.
    assert!(e.to_string().starts_with("test.yaml: "), "{e}");
}

#[test]
fn full_yaml_recipe_reads_every_field() {
    let r = parse_file(&fixture("full.yaml")).unwrap();
    assert_eq!(r.name, "com.example.Full");
    assert_eq!(r.version, Version::new(1, 2, 3));
    assert_eq!(r.component_type, ComponentType::Generic);
    assert_eq!(
        r.description.as_deref(),
        Some("Exercises every recipe field.")
    );
    assert_eq!(r.publisher.as_deref(), Some("Example Corp"));
    assert!(r.source.as_deref().unwrap().starts_with("arn:aws:lambda"));
    assert_eq!(
        r.default_configuration,
        json!({"port": 8080, "message": "hello", "nested": {"list": [1, 2, 3]}})
    );
    assert!(r.origin.ends_with("full.yaml"));

    let tes = &r.dependencies["aws.greengrass.TokenExchangeService"];
    assert_eq!(tes.dependency_type, DependencyType::Hard);
    assert_eq!(tes.requirement.as_str(), ">=2.0.0 <3.0.0");
    assert!(tes.requirement.matches(&Version::new(2, 5, 0)));
    assert_eq!(
        r.dependencies["com.example.Soft"].dependency_type,
        DependencyType::Soft
    );
    let default = &r.dependencies["com.example.Default"];
    assert_eq!(default.dependency_type, DependencyType::Hard);
    assert_eq!(default.requirement.as_str(), "*");

    assert_eq!(r.manifests.len(), 3);
    let m0 = &r.manifests[0];
    assert_eq!(m0.name.as_deref(), Some("linux-arm"));
    assert_eq!(
        m0.platform["architecture"].as_deref(),
        Some("/arm|aarch64/")
    );
    let a = &m0.artifacts[0];
    assert_eq!(a.uri, "s3://bucket/arm/app-arm");
    assert_eq!(a.digest.as_deref(), Some("AAAA"));
    assert_eq!(a.algorithm.as_deref(), Some("SHA-256"));
    assert_eq!(a.permission.read, Access::All);
    assert_eq!(a.permission.execute, Access::Owner);
    assert_eq!(a.unarchive, Unarchive::None);

    let m1 = &r.manifests[1];
    assert_eq!(m1.selections, vec!["linux".to_string()]);
    assert_eq!(m1.lifecycle, None);
    assert_eq!(m1.artifacts[0].unarchive, Unarchive::Zip);
    assert_eq!(m1.artifacts[0].permission.read, Access::Owner);
    assert_eq!(m1.artifacts[0].permission.execute, Access::None);
    assert_eq!(m1.artifacts[1].permission.execute, Access::All);
    assert!(r.global_lifecycle.is_some());
}

#[test]
fn json_and_yaml_fixtures_agree() {
    let from_yaml = parse_file(&fixture("full.yaml")).unwrap();
    let mut from_json = parse_file(&fixture("full.json")).unwrap();
    from_json.origin = from_yaml.origin.clone();
    assert_eq!(from_yaml, from_json);
}

#[test]
fn selects_first_matching_manifest_and_its_lifecycle() {
    let r = parse_file(&fixture("full.yaml")).unwrap();

    let arm = r
        .select(&platform("os=linux,architecture=aarch64"))
        .unwrap();
    assert_eq!(arm.manifest_index, 0);
    assert_eq!(arm.lifecycle.setenv["MODE"], "arm");
    assert_eq!(
        arm.lifecycle.run.as_ref().unwrap().script,
        "{artifacts:path}/app-arm"
    );
    assert_eq!(arm.lifecycle.install, None, "manifest lifecycle wins whole");
    assert_eq!(arm.artifacts.len(), 1);

    let amd = r.select(&platform("os=linux,architecture=amd64")).unwrap();
    assert_eq!(amd.manifest_index, 1);
    assert_eq!(amd.name, "com.example.Full");
    assert_eq!(amd.component_type, ComponentType::Generic);
    assert_eq!(amd.default_configuration["port"], 8080);
    assert_eq!(amd.dependencies.len(), 3);
    let l = &amd.lifecycle;
    assert_eq!(l.setenv["GLOBAL"], "1");
    let install = l.install.as_ref().unwrap();
    assert_eq!(install.script, "chmod +x {artifacts:path}/run.sh");
    assert_eq!(install.timeout, Some(Duration::from_secs(300)));
    let run = l.run.as_ref().unwrap();
    assert_eq!(
        run.script,
        "{artifacts:path}/run.sh --port {configuration:/port}"
    );
    assert!(run.requires_privilege);
    let skip = run.skip_if.as_ref().unwrap();
    assert!(skip.negate);
    assert_eq!(skip.check, SkipCheck::OnPath("sh".into()));
    assert_eq!(l.shutdown.as_ref().unwrap().script, "kill it");

    let win = r
        .select(&platform("os=windows,architecture=amd64"))
        .unwrap();
    assert_eq!(win.manifest_index, 2);
    assert_eq!(
        win.lifecycle.install.as_ref().unwrap().script,
        "echo windows install"
    );
    assert_eq!(win.lifecycle.run.as_ref().unwrap().script, "run.cmd");
    assert!(win.artifacts.is_empty());

    let e = r
        .select(&platform("os=darwin,architecture=amd64"))
        .unwrap_err();
    assert_eq!(e.field, "Manifests");
    assert!(e.message.contains("os=darwin"), "{}", e.message);
    assert!(e.message.contains("os=windows"), "{}", e.message);
}

#[test]
fn selected_lifecycle_interpolates() {
    let r = parse_file(&fixture("full.yaml")).unwrap();
    let selected = r.select(&platform("os=linux,architecture=amd64")).unwrap();
    let ctx = InterpolationContext {
        root: PathBuf::from("/gg"),
        thing_name: "thing".into(),
        component: ComponentVars {
            name: selected.name.clone(),
            version: selected.version.to_string(),
            configuration: selected.default_configuration.clone(),
        },
        dependencies: BTreeMap::new(),
    };
    let l = selected.lifecycle.interpolate(&ctx);
    let run = l.run.unwrap();
    assert_eq!(
        run.script,
        "/gg/packages/artifacts/com.example.Full/1.2.3/run.sh --port 8080"
    );
    assert_eq!(run.setenv["PORT"], "8080");
    assert_eq!(
        l.install.unwrap().script,
        "chmod +x /gg/packages/artifacts/com.example.Full/1.2.3/run.sh"
    );
}

#[test]
fn to_json_round_trips() {
    for name in ["full.yaml", "full.json"] {
        let r = parse_file(&fixture(name)).unwrap();
        let canonical = r.to_json();
        assert_eq!(canonical["RecipeFormatVersion"], "2020-01-25");
        assert_eq!(canonical["ComponentType"], "aws.greengrass.generic");
        assert_eq!(
            canonical["ComponentDependencies"]["com.example.Soft"]["DependencyType"],
            "SOFT"
        );
        assert_eq!(
            canonical["Manifests"][0]["Artifacts"][0]["Permission"],
            json!({"Read": "ALL", "Execute": "OWNER"})
        );
        let again = parse_str(&canonical.to_string(), Format::Json, &r.origin).unwrap();
        assert_eq!(again, r);
        assert_eq!(again.to_json(), canonical);
    }
}

#[test]
fn keys_and_enum_values_are_case_insensitive() {
    let text = r#"
recipeformatversion: '2020-01-25'
COMPONENTNAME: com.example.Case
componentVersion: 2.0.0
componenttype: AWS.GREENGRASS.LAMBDA
componentconfiguration:
  defaultconfiguration: {Key: Value}
componentdependencies:
  dep.A:
    versionrequirement: ~2.1
    dependencytype: soft
manifests:
  - platform: {os: linux}
    lifecycle:
      SETENV: {A: b}
      run:
        SCRIPT: echo hi
        requiresprivilege: TRUE
        TIMEOUT: 9
    artifacts:
      - uri: s3://b/k.zip
        unarchive: zip
        permission: {read: all, EXECUTE: owner}
someUnknownField: ignored
"#;
    let r = yaml(text).unwrap();
    assert_eq!(r.component_type, ComponentType::Lambda);
    assert_eq!(r.default_configuration, json!({"Key": "Value"}));
    assert_eq!(
        r.dependencies["dep.A"].dependency_type,
        DependencyType::Soft
    );
    let a = &r.manifests[0].artifacts[0];
    assert_eq!(a.unarchive, Unarchive::Zip);
    assert_eq!(
        (a.permission.read, a.permission.execute),
        (Access::All, Access::Owner)
    );
    let s = r.select(&platform("os=linux")).unwrap();
    let run = s.lifecycle.run.unwrap();
    assert_eq!(run.script, "echo hi");
    assert!(run.requires_privilege);
    assert_eq!(run.timeout, Some(Duration::from_secs(9)));
    assert_eq!(s.lifecycle.setenv["A"], "b");
}

#[test]
fn defaults_when_optional_fields_are_absent() {
    let r = yaml(&minimal("Manifests:\n  - {}\n")).unwrap();
    assert_eq!(r.component_type, ComponentType::Generic);
    assert_eq!(r.default_configuration, json!({}));
    assert!(r.dependencies.is_empty());
    assert_eq!(r.description, None);
    assert_eq!(r.global_lifecycle, None);
    let s = r.select(&Platform::default()).unwrap();
    assert!(s.lifecycle.is_empty());
    assert!(s.artifacts.is_empty());

    let r = yaml(&minimal(
        "ComponentConfiguration:\n  DefaultConfiguration: null\nComponentDependencies:\n  x.Y: null\nManifests:\n  - Platform: null\n",
    ))
    .unwrap();
    assert_eq!(r.default_configuration, json!({}));
    assert_eq!(r.dependencies["x.Y"].dependency_type, DependencyType::Hard);
}

#[test]
fn manifest_lifecycle_wins_only_when_non_empty() {
    let text = minimal(
        r#"Manifests:
  - Platform: {os: linux}
    Lifecycle: {}
  - Lifecycle: {Run: manifest run}
Lifecycle:
  Run: global run
  Install: global install
"#,
    );
    let r = yaml(&text).unwrap();
    let linux = r.select(&platform("os=linux")).unwrap();
    assert_eq!(linux.manifest_index, 0);
    assert_eq!(linux.lifecycle.run.unwrap().script, "global run");
    let other = r.select(&platform("os=darwin")).unwrap();
    assert_eq!(other.manifest_index, 1);
    assert_eq!(other.lifecycle.run.unwrap().script, "manifest run");
    assert_eq!(other.lifecycle.install, None);
}

#[test]
fn selections_pick_first_present_then_all() {
    let text = minimal(
        r#"Manifests:
  - Platform: {os: linux}
    Selections: [special, linux]
  - Platform: {os: darwin}
    Selections: [darwin]
  - Platform: {os: "*"}
Lifecycle:
  linux:
    Run: linux run
  special:
    Install: special install
  all:
    Run: all run
"#,
    );
    let r = yaml(&text).unwrap();
    let linux = r.select(&platform("os=linux")).unwrap().lifecycle;
    assert_eq!(linux.install.unwrap().script, "special install");
    assert_eq!(linux.run, None, "only the first present selection is taken");
    let darwin = r.select(&platform("os=darwin")).unwrap().lifecycle;
    assert_eq!(darwin.run.unwrap().script, "all run");
    let any = r.select(&platform("os=windows")).unwrap();
    assert_eq!(any.manifest_index, 2);
    assert_eq!(any.lifecycle.run.unwrap().script, "all run");

    // Without an `all` entry, a manifest with no matching selection gets an empty lifecycle.
    let text = minimal(
        "Manifests:\n  - Platform: {os: linux}\n    Selections: [linux]\n  - {}\nLifecycle:\n  linux: {Run: x}\n",
    );
    let r = yaml(&text).unwrap();
    assert!(r.select(&platform("os=mac")).unwrap().lifecycle.is_empty());
}

#[test]
fn platform_rules_in_recipes() {
    let text = minimal(
        r#"Manifests:
  - Platform: {os: linux, architecture.detail: armv7l}
    Lifecycle: {Run: detail}
  - Platform: {os: linux, runtime: aws_nucleus_lite}
    Lifecycle: {Run: lite}
  - Platform: {os: all, architecture: "/x86|amd64/"}
    Lifecycle: {Run: regex}
  - Platform: {os: linux, custom: null}
    Lifecycle: {Run: nullcustom}
"#,
    );
    let r = yaml(&text).unwrap();
    let run = |p: &str| {
        r.select(&platform(p))
            .unwrap()
            .lifecycle
            .run
            .unwrap()
            .script
    };
    assert_eq!(
        run("os=linux,architecture=arm,architecture.detail=armv7l"),
        "detail"
    );
    assert_eq!(
        run("os=linux,runtime=aws_nucleus_lite,architecture=arm"),
        "lite"
    );
    assert_eq!(run("os=darwin,architecture=amd64"), "regex");
    assert_eq!(run("os=linux,architecture=arm"), "nullcustom");
    // Overrides change the outcome.
    let detected = platform("os=linux,architecture=aarch64");
    let over = detected.with_overrides(&BTreeMap::from([(
        "architecture.detail".to_string(),
        "armv7l".to_string(),
    )]));
    assert_eq!(r.select(&over).unwrap().manifest_index, 0);
}

#[test]
fn yaml_specifics_merge_keys_numeric_keys_and_plain_date() {
    let text = r#"
RecipeFormatVersion: 2020-01-25
ComponentName: com.example.Yaml
ComponentVersion: 1.0.0
ComponentConfiguration:
  DefaultConfiguration:
    base: &base {a: 1, b: 2}
    derived:
      <<: *base
      b: 3
    200: numeric key
Manifests:
  - Lifecycle:
      Run:
        Script: |
          echo one
          echo two
        Timeout: 1.5
"#;
    let r = yaml(text).unwrap();
    assert_eq!(r.default_configuration["derived"], json!({"a": 1, "b": 3}));
    assert_eq!(r.default_configuration["200"], "numeric key");
    let run = r
        .select(&Platform::default())
        .unwrap()
        .lifecycle
        .run
        .unwrap();
    assert_eq!(run.script, "echo one\necho two\n");
    assert_eq!(run.timeout, Some(Duration::from_secs(1)));
}

#[test]
fn parse_file_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let body = minimal("Manifests: [{}]\n");
    let yml = dir.path().join("r.yml");
    std::fs::write(&yml, &body).unwrap();
    assert_eq!(parse_file(&yml).unwrap().name, "com.example.Min");

    let json_path = dir.path().join("r.JSON");
    let r = parse_file(&yml).unwrap();
    std::fs::write(&json_path, r.to_json().to_string()).unwrap();
    assert_eq!(
        parse_file(&json_path).unwrap().version,
        Version::new(1, 0, 0)
    );

    // YAML text in a .json file is read as JSON and fails.
    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, &body).unwrap();
    let e = parse_file(&wrong).unwrap_err();
    assert!(e.message.contains("invalid JSON"), "{e}");
    assert_eq!(e.origin, wrong.display().to_string());

    let txt = dir.path().join("r.txt");
    std::fs::write(&txt, &body).unwrap();
    assert!(parse_file(&txt).unwrap_err().message.contains(".yaml"));

    let missing = dir.path().join("missing.yaml");
    assert!(
        parse_file(&missing)
            .unwrap_err()
            .message
            .contains("cannot read")
    );
}

#[test]
fn malformed_yaml_and_json_report_line_and_column() {
    let e = err("RecipeFormatVersion: '2020-01-25'\nComponentName: [unclosed\n");
    assert_eq!(e.field, "");
    assert!(e.message.contains("invalid YAML at line"), "{e}");

    let e = parse_str(
        "{\n  \"ComponentName\": \"x\",\n  oops\n}",
        Format::Json,
        "r.json",
    )
    .unwrap_err();
    assert!(e.message.contains("line 3, column 3"), "{e}");
    assert_eq!(e.origin, "r.json");

    let e = err("- just\n- a list\n");
    assert!(e.message.contains("recipe map"), "{e}");
    let e = err("");
    assert!(e.message.contains("recipe map"), "{e}");
}

#[test]
fn top_level_validation_errors() {
    let body = "Manifests: [{}]\n";
    assert_err(
        &format!("ComponentName: a.B\nComponentVersion: 1.0.0\n{body}"),
        "RecipeFormatVersion",
        "missing",
    );
    assert_err(
        &format!(
            "RecipeFormatVersion: '2021-01-01'\nComponentName: a.B\nComponentVersion: 1.0.0\n{body}"
        ),
        "RecipeFormatVersion",
        "2020-01-25",
    );
    assert_err(
        &format!("RecipeFormatVersion: '2020-01-25'\nComponentVersion: 1.0.0\n{body}"),
        "ComponentName",
        "missing",
    );
    assert_err(
        &format!(
            "RecipeFormatVersion: '2020-01-25'\ncomponentName: 'bad name!'\nComponentVersion: 1.0.0\n{body}"
        ),
        "componentName",
        "only letters",
    );
    assert_err(
        &format!(
            "RecipeFormatVersion: '2020-01-25'\nComponentName: a.B\nComponentVersion: '1.0'\n{body}"
        ),
        "ComponentVersion",
        "semantic version",
    );
    assert_err(
        &format!(
            "RecipeFormatVersion: '2020-01-25'\nComponentName: a.B\nComponentVersion: 1000000.0.0\n{body}"
        ),
        "ComponentVersion",
        "999999",
    );
    assert_err(
        &format!(
            "RecipeFormatVersion: '2020-01-25'\nComponentName: a.B\nComponentVersion: [1]\n{body}"
        ),
        "ComponentVersion",
        "expected a string",
    );
    assert_err(
        &minimal(&format!("ComponentType: aws.greengrass.docker\n{body}")),
        "ComponentType",
        "aws.greengrass.generic",
    );
    assert_err(
        &minimal(&format!(
            "ComponentConfiguration:\n  DefaultConfiguration: [1]\n{body}"
        )),
        "ComponentConfiguration.DefaultConfiguration",
        "map",
    );
    assert_err(
        &minimal(&format!("Lifecycle: run it\n{body}")),
        "Lifecycle",
        "map",
    );
}

#[test]
fn manifest_list_errors() {
    assert_err(&minimal(""), "Manifests", "no manifests");
    assert_err(&minimal("Manifests: null\n"), "Manifests", "no manifests");
    assert_err(&minimal("Manifests: []\n"), "Manifests", "no manifests");
    assert_err(&minimal("Manifests: {a: 1}\n"), "Manifests", "list");
    assert_err(
        &minimal("Manifests:\n  - {}\n  - null\n"),
        "Manifests[1]",
        "null",
    );
    assert_err(
        &minimal("Manifests:\n  - 5\n"),
        "Manifests[0]",
        "manifest map",
    );
    assert_err(
        &minimal("Manifests:\n  - Platform: [linux]\n"),
        "Manifests[0].Platform",
        "platform attributes",
    );
    assert_err(
        &minimal("Manifests:\n  - Platform: {os: [linux]}\n"),
        "Manifests[0].Platform.os",
        "string",
    );
    assert_err(
        &minimal("Manifests:\n  - Selections: linux\n"),
        "Manifests[0].Selections",
        "list",
    );
}

#[test]
fn dependency_errors() {
    assert_err(
        &minimal(
            "ComponentDependencies:\n  dep.A:\n    DependencyType: OPTIONAL\nManifests: [{}]\n",
        ),
        "ComponentDependencies.dep.A.DependencyType",
        "HARD, SOFT",
    );
    assert_err(
        &minimal(
            "ComponentDependencies:\n  dep.A:\n    VersionRequirement: '>=1.0.0 <two'\nManifests: [{}]\n",
        ),
        "ComponentDependencies.dep.A.VersionRequirement",
        "npm-style",
    );
    assert_err(
        &minimal(
            "ComponentDependencies:\n  'bad dep':\n    VersionRequirement: '1.0.0'\nManifests: [{}]\n",
        ),
        "ComponentDependencies.bad dep",
        "only letters",
    );
    assert_err(
        &minimal("ComponentDependencies: [a]\nManifests: [{}]\n"),
        "ComponentDependencies",
        "map",
    );
    // A numeric YAML requirement is read as text.
    let r = yaml(&minimal(
        "ComponentDependencies:\n  dep.A:\n    VersionRequirement: 2\nManifests: [{}]\n",
    ))
    .unwrap();
    assert!(
        r.dependencies["dep.A"]
            .requirement
            .matches(&Version::new(2, 3, 0))
    );
}

#[test]
fn step_errors_carry_manifest_paths() {
    assert_err(
        &minimal(
            "Manifests:\n  - Platform: {os: x}\n  - Lifecycle:\n      install:\n        Timeout: abc\n",
        ),
        "Manifests[1].Lifecycle.install.Timeout",
        "not a number",
    );
    assert_err(
        &minimal(
            "Manifests:\n  - Lifecycle:\n      Run:\n        Script: x\n        RequiresPrivilege: maybe\n",
        ),
        "Manifests[0].Lifecycle.Run.RequiresPrivilege",
        "true or false",
    );
    assert_err(
        &minimal(
            "Manifests:\n  - Lifecycle:\n      Run:\n        Script: x\n        Skipif: whenever\n",
        ),
        "Manifests[0].Lifecycle.Run.Skipif",
        "onpath",
    );
    assert_err(
        &minimal("Manifests:\n  - Lifecycle: [run]\n"),
        "Manifests[0].Lifecycle",
        "lifecycle steps",
    );
    // Errors in the global lifecycle are found at parse time and name the manifest.
    let e = err(&minimal(
        "Manifests:\n  - Selections: [linux]\nLifecycle:\n  linux:\n    Run:\n      Timeout: soon\n",
    ));
    assert_eq!(e.field, "Lifecycle.Run.Timeout");
    assert!(e.message.contains("Manifests[0]"), "{e}");
}

#[test]
fn artifact_fields_and_errors() {
    let r = yaml(&minimal(
        r#"Manifests:
  - Artifacts:
      - Uri: S3://bucket/dir/app.tar.gz
      - Uri: greengrass:model.zip
      - Uri: docker:public.ecr.aws/org/image:latest
      - Uri: https://example.com/files/tool.bin?sig=abc#frag
      - Uri: file:///opt/local/data.csv
"#,
    ))
    .unwrap();
    let a = &r.manifests[0].artifacts;
    let names: Vec<(String, &str)> = a.iter().map(|x| (x.scheme(), x.file_name())).collect();
    assert_eq!(
        names,
        vec![
            ("s3".to_string(), "app.tar.gz"),
            ("greengrass".to_string(), "model.zip"),
            ("docker".to_string(), "image:latest"),
            ("https".to_string(), "tool.bin"),
            ("file".to_string(), "data.csv"),
        ]
    );

    assert_err(
        &minimal("Manifests:\n  - Artifacts:\n      - Digest: x\n"),
        "Manifests[0].Artifacts[0].Uri",
        "missing",
    );
    assert_err(
        &minimal("Manifests:\n  - Artifacts:\n      - Uri: s3://b/k\n        Unarchive: TAR\n"),
        "Manifests[0].Artifacts[0].Unarchive",
        "NONE, ZIP",
    );
    assert_err(
        &minimal(
            "Manifests:\n  - Artifacts:\n      - Uri: s3://b/k\n        Permission: {Read: EVERYONE}\n",
        ),
        "Manifests[0].Artifacts[0].Permission.Read",
        "NONE, OWNER, ALL",
    );
    assert_err(
        &minimal(
            "Manifests:\n  - Artifacts:\n      - Uri: s3://b/a/x.sh\n      - Uri: s3://b/b/x.sh\n",
        ),
        "Manifests[0].Artifacts[1]",
        "used twice",
    );
    assert_err(
        &minimal("Manifests:\n  - Artifacts: s3://b/k\n"),
        "Manifests[0].Artifacts",
        "list",
    );
}

#[test]
fn component_type_and_dependency_type_strings() {
    for (recipe, config, t) in [
        ("aws.greengrass.generic", "GENERIC", ComponentType::Generic),
        ("aws.greengrass.lambda", "LAMBDA", ComponentType::Lambda),
        ("aws.greengrass.plugin", "PLUGIN", ComponentType::Plugin),
        ("aws.greengrass.nucleus", "NUCLEUS", ComponentType::Nucleus),
    ] {
        assert_eq!(t.as_config_str(), config);
        assert_eq!(ComponentType::from_config_str(config), Some(t));
        assert_eq!(
            ComponentType::from_config_str(&config.to_lowercase()),
            Some(t)
        );
        let r = yaml(&minimal(&format!(
            "ComponentType: {recipe}\nManifests: [{{}}]\n"
        )))
        .unwrap();
        assert_eq!(r.component_type, t);
        assert_eq!(r.to_json()["ComponentType"], recipe);
    }
    assert_eq!(ComponentType::from_config_str("DOCKER"), None);
    assert_eq!(DependencyType::Hard.as_str(), "HARD");
    assert_eq!(DependencyType::Soft.as_str(), "SOFT");
}

#[test]
fn byte_order_mark_is_ignored() {
    let body = minimal("Manifests: [{}]\n");
    let r = yaml(&format!("\u{feff}{body}")).unwrap();
    let json_text = format!("\u{feff}{}", r.to_json());
    let again = parse_str(&json_text, Format::Json, "test.yaml").unwrap();
    assert_eq!(again, r);
}

#[test]
fn error_display_names_origin_field_and_fix() {
    let e = err(&minimal(
        "Manifests:\n  - Lifecycle:\n      Install:\n        Timeout: abc\n",
    ));
    assert_eq!(
        e.to_string(),
        "test.yaml: Manifests[0].Lifecycle.Install.Timeout: timeout \"abc\" is not a number; expected a whole number of seconds such as 60"
    );
}

#[test]
fn path_hostile_component_names_are_refused() {
    let body = "Manifests: [{}]\n";
    let with_name = |name: &str| {
        format!(
            "RecipeFormatVersion: '2020-01-25'\nComponentName: {name}\nComponentVersion: 1.0.0\n{body}"
        )
    };
    // The work folder of `..` would be the core root; dot files hide from listings.
    for name in ["'.'", "'..'", "'.hidden'", "'..x'"] {
        assert_err(&with_name(name), "ComponentName", "must not start with '.'");
    }
    for name in ["'a/b'", "'a\\b'", "\"a\\0b\"", "'../etc'", "'a b'"] {
        assert_err(&with_name(name), "ComponentName", "only letters");
    }
    assert_err(
        &minimal("ComponentDependencies:\n  '..':\n    VersionRequirement: '*'\nManifests: [{}]\n"),
        "ComponentDependencies...",
        "must not start with '.'",
    );
    // The same rule whatever the format.
    let e = parse_str(
        r#"{"RecipeFormatVersion": "2020-01-25", "ComponentName": "..", "ComponentVersion": "1.0.0", "Manifests": [{}]}"#,
        Format::Json,
        "bad.json",
    )
    .unwrap_err();
    assert_eq!(
        (e.origin.as_str(), e.field.as_str()),
        ("bad.json", "ComponentName")
    );
    assert!(e.message.contains("must not start with '.'"), "{e}");
    // Versions are strict semver, so no separator or NUL can reach a path through them.
    for version in ["'1.0.0/..'", "'1.0.0+a/b'", "'1.0.0-a\\b'", "\"1.0.0\\0\""] {
        assert_err(
            &format!(
                "RecipeFormatVersion: '2020-01-25'\nComponentName: a.B\nComponentVersion: {version}\n{body}"
            ),
            "ComponentVersion",
            "semantic version",
        );
    }
    // Greengrass names keep working, dots inside included.
    for name in [
        "com.example.Hello",
        "aws.greengrass.Nucleus",
        "a..b",
        "x.",
        "_a-1",
    ] {
        assert_eq!(yaml(&with_name(&format!("'{name}'"))).unwrap().name, name);
    }
}

#[test]
fn artifact_file_names_must_be_plain_file_names() {
    // The last URI segment becomes a file under the component's artifact folder, and a ZIP's
    // stem a folder beside its siblings: `..` and friends would leave it.
    for uri in [
        "s3://b/..",
        "s3://b/.",
        "s3://b/",
        "greengrass:..",
        "https://h/x/..?q=1",
    ] {
        assert_err(
            &minimal(&format!(
                "Manifests:\n  - Artifacts:\n      - Uri: '{uri}'\n"
            )),
            "Manifests[0].Artifacts[0].Uri",
            "file name",
        );
    }
    for uri in ["s3://b/...zip", "s3://b/..zip"] {
        assert_err(
            &minimal(&format!(
                "Manifests:\n  - Artifacts:\n      - Uri: '{uri}'\n        Unarchive: ZIP\n"
            )),
            "Manifests[0].Artifacts[0].Uri",
            "file name",
        );
    }
    // Ordinary names stay valid, docker images are not files.
    let r = yaml(&minimal(
        "Manifests:\n  - Artifacts:\n      - Uri: s3://b/.env\n      - Uri: s3://b/app.zip\n        Unarchive: ZIP\n      - Uri: docker:repo/image:1\n",
    ))
    .unwrap();
    assert_eq!(r.manifests[0].artifacts.len(), 3);
}
