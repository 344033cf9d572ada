//! Behaviour of the tree operations, timestamps, runtime keys, subscriptions and file I/O.

use std::sync::{Arc, Mutex};

use lichen_config::{Change, ChangeKind, ConfigError, ConfigEvent, ConfigStore, now_ms};
use serde_json::json;

fn recorder(store: &ConfigStore, prefix: &[&str]) -> Arc<Mutex<Vec<ConfigEvent>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    store.subscribe(
        prefix,
        Box::new(move |e: &ConfigEvent| sink.lock().unwrap().push(e.clone())),
    );
    events
}

fn ev(path: &[&str], kind: ChangeKind) -> ConfigEvent {
    ConfigEvent {
        path: path.iter().map(|s| s.to_string()).collect(),
        kind,
    }
}

#[test]
fn set_get_and_case_insensitive_lookup_keep_stored_spelling() {
    let store = ConfigStore::in_memory();
    assert!(
        store
            .set(
                &["services", "Hello", "lifecycle", "run"],
                json!("echo hi"),
                10
            )
            .unwrap()
    );
    assert_eq!(
        store.get(&["SERVICES", "hello", "Lifecycle", "RUN"]),
        Some(json!("echo hi"))
    );
    store
        .set(&["Services", "HELLO", "version"], json!("1.0.0"), 10)
        .unwrap();
    assert_eq!(
        store.snapshot(),
        json!({"services": {"Hello": {"lifecycle": {"run": "echo hi"}, "version": "1.0.0"}}})
    );
    assert_eq!(store.get(&["services", "nope"]), None);
    assert_eq!(store.get(&["services", "Hello", "version", "deeper"]), None);
    assert_eq!(store.get(&[]), Some(store.snapshot()));
}

#[test]
fn leaf_timestamp_guard_equal_or_newer_applies() {
    let store = ConfigStore::in_memory();
    store.set(&["a"], json!(1), 100).unwrap();
    assert!(!store.set(&["a"], json!(2), 99).unwrap());
    assert_eq!(store.get(&["a"]), Some(json!(1)));
    assert!(store.set(&["a"], json!(3), 100).unwrap());
    assert_eq!(store.get(&["a"]), Some(json!(3)));
    assert!(store.set(&["a"], json!(4), 101).unwrap());
    assert_eq!(store.timestamp(&["A"]), Some(101));
    assert!(!store.merge(&["a"], json!(5), 50).unwrap());
    assert!(!store.remove(&["a"], 100).unwrap());
    assert!(store.remove(&["a"], 101).unwrap());
    assert_eq!(store.get(&["a"]), None);
    assert!(
        !store.remove(&["a"], 500).unwrap(),
        "nothing left to remove"
    );
}

#[test]
fn container_replace_and_remove_are_guarded_by_newest_leaf() {
    let store = ConfigStore::in_memory();
    store.set(&["c"], json!({"x": 1, "y": 2}), 100).unwrap();
    store.set(&["c", "y"], json!(3), 200).unwrap();
    assert_eq!(store.timestamp(&["c"]), Some(100));
    // Something inside is newer than 150: neither replace nor remove may clobber it.
    assert!(!store.set(&["c"], json!({"z": 1}), 150).unwrap());
    assert!(!store.remove(&["c"], 150).unwrap());
    assert!(!store.set(&["c"], json!("leaf"), 150).unwrap());
    assert_eq!(store.get(&["c"]), Some(json!({"x": 1, "y": 3})));
    assert!(store.set(&["c"], json!({"z": 1}), 200).unwrap());
    assert_eq!(store.get(&["c"]), Some(json!({"z": 1})));
    assert_eq!(store.timestamp(&["c"]), Some(200));
}

#[test]
fn writes_through_a_leaf_replace_it_only_when_newer() {
    let store = ConfigStore::in_memory();
    store.set(&["a"], json!("leaf"), 100).unwrap();
    assert!(!store.set(&["a", "b"], json!(1), 99).unwrap());
    assert!(!store.merge(&["a"], json!({"b": 1}), 99).unwrap());
    assert_eq!(store.get(&["a"]), Some(json!("leaf")));
    assert!(store.merge(&["a", "b", "c"], json!(1), 100).unwrap());
    assert_eq!(store.get(&["a"]), Some(json!({"b": {"c": 1}})));
    assert_eq!(store.timestamp(&["a", "b"]), Some(100));
}

#[test]
fn merge_is_recursive_with_per_leaf_guards() {
    let store = ConfigStore::in_memory();
    store
        .merge(
            &["services", "c", "configuration"],
            json!({"old": 1, "keep": {"a": 1, "b": 2}, "list": [1, 2]}),
            100,
        )
        .unwrap();
    store
        .set(
            &["services", "c", "configuration", "keep", "a"],
            json!(10),
            300,
        )
        .unwrap();
    let changed = store
        .merge(
            &["Services", "C", "Configuration"],
            json!({"keep": {"a": 20, "b": 30, "n": null}, "list": [3], "new": {}}),
            200,
        )
        .unwrap();
    assert!(changed);
    assert_eq!(
        store.get(&["services", "c", "configuration"]),
        Some(json!({"old": 1, "keep": {"a": 10, "b": 30, "n": null}, "list": [3], "new": {}}))
    );
    // Recipe defaults (ts 1) never clobber; they only fill gaps.
    let changed = store
        .merge(
            &["services", "c", "configuration"],
            json!({"old": 0, "default": true}),
            1,
        )
        .unwrap();
    assert!(changed);
    assert_eq!(
        store.get(&["services", "c", "configuration", "old"]),
        Some(json!(1))
    );
    assert_eq!(
        store.get(&["services", "c", "configuration", "default"]),
        Some(json!(true))
    );
    // The same merge again changes nothing.
    assert!(
        !store
            .merge(
                &["services", "c", "configuration"],
                json!({"default": true}),
                1
            )
            .unwrap()
    );
}

#[test]
fn merge_replaces_on_type_change() {
    let store = ConfigStore::in_memory();
    store
        .merge(&[], json!({"a": {"x": 1}, "b": 5}), 10)
        .unwrap();
    store
        .merge(&[], json!({"a": 7, "b": {"y": 2}}), 20)
        .unwrap();
    assert_eq!(store.snapshot(), json!({"a": 7, "b": {"y": 2}}));
}

#[test]
fn root_rules() {
    let store = ConfigStore::in_memory();
    store.set(&["a"], json!(1), 5).unwrap();
    assert!(matches!(
        store.set(&[], json!(1), 10),
        Err(ConfigError::InvalidChange { .. })
    ));
    assert!(matches!(
        store.remove(&[], 10),
        Err(ConfigError::InvalidChange { .. })
    ));
    assert!(store.set(&[], json!({"b": 2}), 10).unwrap());
    assert_eq!(store.snapshot(), json!({"b": 2}));
}

#[test]
fn apply_runs_changes_in_order_and_validates_first() {
    let store = ConfigStore::in_memory();
    store
        .apply(vec![
            Change::Set {
                path: vec!["a".into()],
                value: json!({"x": 1}),
                ts: 10,
            },
            Change::Merge {
                path: vec!["A".into()],
                value: json!({"y": 2}),
                ts: 10,
            },
            Change::Remove {
                path: vec!["a".into(), "X".into()],
                ts: 10,
            },
            Change::Set {
                path: vec!["a".into(), "y".into()],
                value: json!(0),
                ts: 5,
            },
        ])
        .unwrap();
    assert_eq!(store.snapshot(), json!({"a": {"y": 2}}));
    let bad = store.apply(vec![
        Change::Set {
            path: vec!["b".into()],
            value: json!(1),
            ts: 10,
        },
        Change::Remove {
            path: vec![],
            ts: 10,
        },
    ]);
    assert!(bad.is_err());
    assert_eq!(store.snapshot(), json!({"a": {"y": 2}}), "nothing applied");
}

#[test]
fn runtime_keys_live_in_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = ConfigStore::open(dir.path()).unwrap();
        store
            .merge(
                &["services", "c"],
                json!({"version": "1.0.0", "_State": "RUNNING", "configuration": {"_secret": 1, "k": 2}}),
                10,
            )
            .unwrap();
        store
            .set(&["services", "_AUTHENTICATION_TOKENS", "t"], json!("c"), 10)
            .unwrap();
        store.set(&["_private", "_UID"], json!("uid"), 10).unwrap();
        assert_eq!(
            store.get(&["services", "c", "_state"]),
            Some(json!("RUNNING"))
        );
        let yaml = store.to_yaml();
        assert!(!yaml.contains('_'), "{yaml}");
        assert!(yaml.contains("version: 1.0.0"), "{yaml}");
    }
    let text = std::fs::read_to_string(dir.path().join("config.tlog")).unwrap();
    assert!(!text.contains("_State") && !text.contains("_UID") && !text.contains("_secret"));
    let store = ConfigStore::open(dir.path()).unwrap();
    assert_eq!(
        store.snapshot(),
        json!({"services": {"c": {"version": "1.0.0", "configuration": {"k": 2}}}})
    );
}

#[test]
fn runtime_keys_do_not_block_configuration_writes() {
    let store = ConfigStore::in_memory();
    store
        .set(&["services", "c", "version"], json!("1"), 100)
        .unwrap();
    store
        .set(&["services", "c", "_State"], json!("RUNNING"), now_ms())
        .unwrap();
    assert!(
        store
            .set(&["services", "c"], json!({"version": "2"}), 200)
            .unwrap()
    );
    assert_eq!(store.get(&["services", "c"]), Some(json!({"version": "2"})));
}

#[test]
fn subscriptions_match_prefix_case_insensitively_and_report_each_leaf() {
    let store = ConfigStore::in_memory();
    let config = recorder(&store, &["SERVICES", "c", "configuration"]);
    let all = recorder(&store, &[]);
    store
        .merge(
            &["services", "c", "configuration"],
            json!({"a": 1, "b": {"c": 2}}),
            10,
        )
        .unwrap();
    store
        .merge(&["services", "other"], json!({"x": 1}), 10)
        .unwrap();
    // Same value again: no event; guarded-out write: no event.
    store
        .merge(&["services", "c", "configuration", "a"], json!(1), 20)
        .unwrap();
    store
        .set(&["services", "c", "configuration", "a"], json!(9), 5)
        .unwrap();
    assert_eq!(
        *config.lock().unwrap(),
        vec![
            ev(
                &["services", "c", "configuration", "a"],
                ChangeKind::Changed
            ),
            ev(
                &["services", "c", "configuration", "b", "c"],
                ChangeKind::Changed
            ),
        ]
    );
    assert_eq!(all.lock().unwrap().len(), 3);
}

#[test]
fn removing_a_container_emits_removed_for_it_and_reaches_subscribers_below() {
    let store = ConfigStore::in_memory();
    store
        .merge(&["services", "c", "configuration"], json!({"a": 1}), 10)
        .unwrap();
    let below = recorder(&store, &["services", "c", "configuration", "a"]);
    let sibling = recorder(&store, &["services", "d"]);
    assert!(store.remove(&["Services", "C"], 20).unwrap());
    assert_eq!(
        *below.lock().unwrap(),
        vec![ev(&["services", "c"], ChangeKind::Removed)]
    );
    assert!(sibling.lock().unwrap().is_empty());
}

#[test]
fn set_of_a_container_reports_removed_and_changed_children() {
    let store = ConfigStore::in_memory();
    store.set(&["c"], json!({"x": 1, "y": 2}), 10).unwrap();
    let events = recorder(&store, &["c"]);
    store.set(&["c"], json!({"y": 2, "z": 3}), 20).unwrap();
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            ev(&["c", "x"], ChangeKind::Removed),
            ev(&["c", "z"], ChangeKind::Changed),
        ]
    );
}

#[test]
fn unsubscribe_stops_events_and_callbacks_may_write_to_the_store() {
    let store = ConfigStore::in_memory();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (writer, sink) = (store.clone(), seen.clone());
    // A callback that mirrors `in.*` to `out.*`: it re-enters the store.
    store.subscribe(
        &["in"],
        Box::new(move |e: &ConfigEvent| {
            let key = e.path.last().unwrap().clone();
            let value = writer.get(&["in", &key]);
            if let Some(v) = value {
                writer.set(&["out", &key], v, 1).unwrap();
            }
        }),
    );
    let id = store.subscribe(
        &["out"],
        Box::new(move |e: &ConfigEvent| sink.lock().unwrap().push(e.clone())),
    );
    store.set(&["in", "k"], json!(1), 10).unwrap();
    assert_eq!(store.get(&["out", "k"]), Some(json!(1)));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![ev(&["out", "k"], ChangeKind::Changed)]
    );
    store.unsubscribe(id);
    store.set(&["in", "j"], json!(2), 10).unwrap();
    assert_eq!(store.get(&["out", "j"]), Some(json!(2)));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn a_panicking_subscriber_does_not_stop_delivery() {
    let store = ConfigStore::in_memory();
    store.subscribe(&[], Box::new(|_: &ConfigEvent| panic!("subscriber bug")));
    let events = recorder(&store, &[]);
    store.set(&["a"], json!(1), 1).unwrap();
    store.set(&["b"], json!(1), 1).unwrap();
    assert_eq!(events.lock().unwrap().len(), 2);
}

#[test]
fn concurrent_writers_all_land_and_events_follow_commit_order() {
    let store = ConfigStore::in_memory();
    let events = recorder(&store, &["counter"]);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    store
                        .set(&["counter", &format!("t{t}")], json!(i), i)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..4 {
        assert_eq!(store.get(&["counter", &format!("t{t}")]), Some(json!(199)));
    }
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 800);
    // Per writer, events arrive in the order of its writes: count them per key.
    let mut per_key = std::collections::HashMap::new();
    for e in events.iter() {
        *per_key.entry(e.path[1].clone()).or_insert(0) += 1;
    }
    assert!(per_key.values().all(|n| *n == 200));
}

#[test]
fn effective_config_is_written_atomically_as_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let store = ConfigStore::in_memory();
    store
        .merge(
            &[],
            json!({"system": {"thingName": "t1"}, "services": {"_x": 1, "c": {"list": [1, "a"]}}}),
            10,
        )
        .unwrap();
    let path = dir.path().join("config").join("effectiveConfig.yaml");
    store.write_effective_config(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let back: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(
        back,
        json!({"system": {"thingName": "t1"}, "services": {"c": {"list": [1, "a"]}}})
    );
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("effectiveConfig.yaml")]
    );
}

#[test]
fn merge_file_reads_greengrass_config_yaml_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("config.yaml");
    std::fs::write(
        &yaml,
        r#"---
system:
  certificateFilePath: "/greengrass/v2/device.pem.crt"
  rootpath: "/greengrass/v2"
  thingName: "MyThing"
services:
  aws.greengrass.Nucleus:
    componentType: "NUCLEUS"
    version: "2.12.0"
    configuration:
      awsRegion: "us-west-2"
      mqtt:
        port: 443
      defaults: &d
        a: 1
      merged:
        <<: *d
        b: 2
      8883: numeric key
"#,
    )
    .unwrap();
    let store = ConfigStore::in_memory();
    store.merge_file(&yaml, 5).unwrap();
    let nucleus = ["services", "aws.greengrass.Nucleus", "configuration"];
    assert_eq!(
        store.get(&[nucleus.as_slice(), &["mqtt", "port"]].concat()),
        Some(json!(443))
    );
    assert_eq!(
        store.get(&[nucleus.as_slice(), &["merged"]].concat()),
        Some(json!({"a": 1, "b": 2}))
    );
    assert_eq!(
        store.get(&[nucleus.as_slice(), &["8883"]].concat()),
        Some(json!("numeric key"))
    );
    assert_eq!(store.timestamp(&["system", "thingName"]), Some(5));

    let json_file = dir.path().join("over.JSON");
    std::fs::write(&json_file, r#"{"system": {"thingName": "Other"}}"#).unwrap();
    store.merge_file(&json_file, 6).unwrap();
    assert_eq!(store.get(&["system", "thingname"]), Some(json!("Other")));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "- just\n- a list\n").unwrap();
    let err = store.merge_file(&bad, 7).unwrap_err();
    assert!(err.to_string().contains("bad.yaml"), "{err}");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "system: [unclosed\n").unwrap();
    assert!(matches!(
        store.merge_file(&broken, 7),
        Err(ConfigError::FileFormat { .. })
    ));
    let missing = store
        .merge_file(&dir.path().join("none.yaml"), 7)
        .unwrap_err();
    assert!(missing.to_string().contains("none.yaml"), "{missing}");
}

#[test]
fn apply_overriding_takes_effect_over_nodes_stamped_in_the_future() {
    let dir = tempfile::tempdir().unwrap();
    let store = ConfigStore::open(dir.path()).unwrap();
    let now = now_ms();
    let future = now + 86_400_000;
    store
        .merge(
            &["services", "c", "configuration"],
            json!({"m": "pinned", "keep": 1}),
            future,
        )
        .unwrap();
    store
        .set(
            &["services", "gone", "configuration", "x"],
            json!(1),
            future,
        )
        .unwrap();
    // The guarded batch skips every change silently.
    store
        .apply(vec![Change::Set {
            path: vec!["services".into(), "c".into()],
            value: json!({"configuration": {"m": "deployed"}}),
            ts: now,
        }])
        .unwrap();
    assert_eq!(
        store.get(&["services", "c", "configuration", "m"]),
        Some(json!("pinned"))
    );
    let read_back = store
        .apply_overriding(vec![
            Change::Set {
                path: vec!["services".into(), "c".into()],
                value: json!({"configuration": {"m": "deployed"}}),
                ts: now,
            },
            Change::Remove {
                path: vec!["services".into(), "gone".into()],
                ts: now,
            },
            Change::Merge {
                path: vec!["services".into(), "c".into(), "configuration".into()],
                value: json!({"n": 2}),
                ts: now,
            },
        ])
        .unwrap();
    // Each change's path as the whole batch left it.
    assert_eq!(
        read_back,
        vec![
            Some(json!({"configuration": {"m": "deployed", "n": 2}})),
            None,
            Some(json!({"m": "deployed", "n": 2})),
        ]
    );
    let expected = json!({"c": {"configuration": {"m": "deployed", "n": 2}}});
    assert_eq!(store.get(&["services"]), Some(expected.clone()));
    assert_eq!(
        store.timestamp(&["services", "c", "configuration", "m"]),
        Some(now)
    );
    drop(store);
    // The log replays to the same tree.
    let store = ConfigStore::open(dir.path()).unwrap();
    assert_eq!(store.get(&["services"]), Some(expected));
}
