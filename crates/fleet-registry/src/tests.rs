use super::*;
use crate::pg_tests::pg_support;
use std::collections::BTreeMap;

/// Opens an empty registry; the first value keeps its storage alive.
type Open = fn() -> (Box<dyn std::any::Any>, Registry);

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

/// Every test below runs on both stores; on PostgreSQL only where a server is given.
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
    create_thing_is_idempotent_for_the_same_config_only,
    update_thing_merges_or_replaces_and_checks_versions,
    pages_cover_every_item_once,
    every_mutation_is_audited_and_a_refused_one_is_not,
    groups_nest_and_list_recursively,
    principal_authorization_answers_status_things_and_policies,
    changes_are_announced_after_commit,
    deletes_refuse_while_in_use,
    malformed_policies_and_foreign_principals_are_refused,
    access_keys_are_created_once,
    dynamic_groups_follow_their_query_as_things_change,
    each_change_names_the_certificates_to_re_read,
    provisioning_templates_are_stored_validated_and_updated,
    thing_types_gate_things_until_deprecated_and_deleted,
);

fn attrs(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn cert(r: &Registry, n: u8, status: CertificateStatus) -> Certificate {
    let id = format!("{:064x}", n);
    r.insert_certificate(
        "AKIDADMIN",
        "CreateKeysAndCertificate",
        &NewCertificate {
            id,
            pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
            status,
            ca_id: None,
            not_before: 0,
            not_after: 1,
        },
    )
    .unwrap()
}

const DOC: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;

#[test]
fn state_survives_reopening_and_the_account_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let account = {
        let r = Registry::open(&path, "us-east-1").unwrap();
        r.create_thing("AKID", "t1", None, attrs(&[("a", "1")]))
            .unwrap();
        r.account().to_string()
    };
    let r = Registry::open(&path, "us-east-1").unwrap();
    assert_eq!(r.account(), account);
    assert_eq!(account.len(), 12);
    let t = r.describe_thing("t1").unwrap();
    assert_eq!(t.attributes, attrs(&[("a", "1")]));
    assert_eq!(t.arn, format!("arn:aws:iot:us-east-1:{account}:thing/t1"));
}

fn create_thing_is_idempotent_for_the_same_config_only(open: Open) {
    let (_d, r) = open();
    assert!(matches!(
        r.create_thing("k", "t", Some("sensor"), attrs(&[])),
        Err(RegistryError::Invalid(_))
    ));
    r.create_thing_type("k", "sensor", Some("sensors"), &["x".into()])
        .unwrap();
    let a = r
        .create_thing("k", "t", Some("sensor"), attrs(&[("x", "1")]))
        .unwrap();
    let b = r
        .create_thing("k", "t", Some("sensor"), attrs(&[("x", "1")]))
        .unwrap();
    assert_eq!(a.id, b.id);
    let err = r.create_thing("k", "t", None, attrs(&[])).unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyExists { .. }), "{err}");
    assert!(matches!(
        r.create_thing("k", "bad name", None, attrs(&[])),
        Err(RegistryError::Invalid(_))
    ));
}

fn update_thing_merges_or_replaces_and_checks_versions(open: Open) {
    let (_d, r) = open();
    r.create_thing("k", "t", None, attrs(&[("a", "1"), ("b", "2")]))
        .unwrap();
    r.update_thing(
        "k",
        "t",
        None,
        false,
        Some((attrs(&[("b", ""), ("c", "3")]), true)),
        Some(1),
    )
    .unwrap();
    let t = r.describe_thing("t").unwrap();
    assert_eq!(t.attributes, attrs(&[("a", "1"), ("c", "3")]));
    assert_eq!(t.version, 2);
    assert!(matches!(
        r.update_thing("k", "t", None, false, None, Some(1)),
        Err(RegistryError::VersionConflict(_))
    ));
    r.update_thing(
        "k",
        "t",
        None,
        false,
        Some((attrs(&[("z", "9")]), false)),
        None,
    )
    .unwrap();
    assert_eq!(
        r.describe_thing("t").unwrap().attributes,
        attrs(&[("z", "9")])
    );
}

fn pages_cover_every_item_once(open: Open) {
    let (_d, r) = open();
    for i in 0..7 {
        r.create_thing(
            "k",
            &format!("t{i}"),
            None,
            attrs(&[("even", if i % 2 == 0 { "y" } else { "n" })]),
        )
        .unwrap();
    }
    let mut seen = vec![];
    let mut token = None;
    loop {
        let p = r
            .list_things(
                &ThingQuery::default(),
                &PageRequest {
                    token,
                    size: Some(3),
                },
            )
            .unwrap();
        assert!(p.items.len() <= 3);
        seen.extend(p.items.into_iter().map(|t| t.name));
        token = p.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("t{i}")).collect::<Vec<_>>());
    let q = ThingQuery {
        attribute_name: Some("even".into()),
        attribute_value: Some("y".into()),
        ..Default::default()
    };
    let p = r
        .list_things(
            &q,
            &PageRequest {
                token: None,
                size: Some(3),
            },
        )
        .unwrap();
    assert_eq!(
        p.items.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["t0", "t2", "t4"]
    );
    assert!(p.next_token.is_some());
    let p = r
        .list_things(
            &q,
            &PageRequest {
                token: p.next_token,
                size: Some(3),
            },
        )
        .unwrap();
    assert_eq!(
        p.items.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["t6"]
    );
    assert_eq!(p.next_token, None);
    assert!(matches!(
        r.list_things(
            &ThingQuery::default(),
            &PageRequest {
                token: Some("%%".into()),
                size: None
            }
        ),
        Err(RegistryError::Invalid(_))
    ));
}

fn every_mutation_is_audited_and_a_refused_one_is_not(open: Open) {
    let (_d, r) = open();
    r.create_thing("AKID1", "t", None, attrs(&[])).unwrap();
    r.create_thing_group("AKID2", "g", None, None, attrs(&[]))
        .unwrap();
    r.add_thing_to_group("AKID2", "g", "t").unwrap();
    let _ = r
        .create_thing("AKID3", "t", Some("other"), attrs(&[]))
        .unwrap_err();
    r.delete_thing("AKID1", "t", None).unwrap();
    let log = r.audit_log(0, 100, None).unwrap();
    let got: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|e| (e.who.as_str(), e.operation.as_str(), e.resource.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("AKID1", "CreateThing", "t"),
            ("AKID2", "CreateThingGroup", "g"),
            ("AKID2", "AddThingToThingGroup", "g/t"),
            ("AKID1", "DeleteThing", "t"),
        ]
    );
    assert_eq!(r.audit_log(log[1].seq, 100, None).unwrap().len(), 2);
    assert_eq!(r.audit_log(0, 100, Some("g")).unwrap().len(), 1);
}

fn groups_nest_and_list_recursively(open: Open) {
    let (_d, r) = open();
    r.create_thing_group("k", "root", None, Some("top"), attrs(&[]))
        .unwrap();
    r.create_thing_group("k", "child", Some("root"), None, attrs(&[]))
        .unwrap();
    r.create_thing("k", "a", None, attrs(&[])).unwrap();
    r.create_thing("k", "b", None, attrs(&[])).unwrap();
    r.add_thing_to_group("k", "root", "a").unwrap();
    r.add_thing_to_group("k", "child", "b").unwrap();
    let g = r.describe_thing_group("child").unwrap();
    assert_eq!(
        g.root_to_parent
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["root"]
    );
    let flat = r
        .list_things_in_group("root", false, &PageRequest::default())
        .unwrap();
    assert_eq!(flat.items, ["a"]);
    let deep = r
        .list_things_in_group("root", true, &PageRequest::default())
        .unwrap();
    assert_eq!(deep.items, ["a", "b"]);
    assert!(matches!(
        r.delete_thing_group("k", "root", None),
        Err(RegistryError::Invalid(_))
    ));
    r.remove_thing_from_group("k", "child", "b").unwrap();
    assert!(
        r.list_things_in_group("child", false, &PageRequest::default())
            .unwrap()
            .items
            .is_empty()
    );
    r.delete_thing_group("k", "child", None).unwrap();
    r.delete_thing_group("k", "root", None).unwrap();
    r.delete_thing_group("k", "root", None).unwrap();
}

fn principal_authorization_answers_status_things_and_policies(open: Open) {
    let (_d, r) = open();
    let c = cert(&r, 1, CertificateStatus::Active);
    r.create_thing("k", "dev1", None, attrs(&[])).unwrap();
    r.create_thing_group("k", "parent", None, None, attrs(&[]))
        .unwrap();
    r.create_thing_group("k", "fleet", Some("parent"), None, attrs(&[]))
        .unwrap();
    r.add_thing_to_group("k", "fleet", "dev1").unwrap();
    r.create_policy("k", "direct", DOC).unwrap();
    r.create_policy("k", "inherited", DOC).unwrap();
    r.attach_policy("k", "direct", &c.arn).unwrap();
    r.attach_policy("k", "inherited", &r.arn("thinggroup/parent"))
        .unwrap();
    r.attach_thing_principal("k", "dev1", &c.arn, false)
        .unwrap();
    let a = r.principal_authorization(&c.id).unwrap().unwrap();
    assert_eq!(a.status, CertificateStatus::Active);
    assert_eq!(
        a.things.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["dev1"]
    );
    assert_eq!(
        a.policies,
        [
            ("direct".to_string(), DOC.to_string()),
            ("inherited".to_string(), DOC.to_string())
        ]
    );
    assert_eq!(
        r.principal_authorization(&format!("{:064x}", 9)).unwrap(),
        None
    );
}

fn changes_are_announced_after_commit(open: Open) {
    let (_d, r) = open();
    let mut rx = r.subscribe();
    let c = cert(&r, 2, CertificateStatus::Active);
    r.create_policy("k", "p", DOC).unwrap();
    r.attach_policy("k", "p", &c.arn).unwrap();
    r.update_certificate("k", &c.id, CertificateStatus::Revoked)
        .unwrap();
    assert_eq!(
        rx.try_recv().unwrap(),
        Change::PolicyAttachment {
            policy_name: "p".into(),
            target: c.arn.clone(),
            attached: true
        }
    );
    assert_eq!(
        rx.try_recv().unwrap(),
        Change::CertificateStatus {
            certificate_id: c.id.clone(),
            status: Some(CertificateStatus::Revoked)
        }
    );
    // A refused change announces nothing.
    assert!(
        r.update_certificate("k", &c.id, CertificateStatus::Active)
            .is_err()
    );
    assert!(rx.try_recv().is_err());
    assert_eq!(
        r.describe_certificate(&c.id).unwrap().status,
        CertificateStatus::Revoked
    );
}

fn deletes_refuse_while_in_use(open: Open) {
    let (_d, r) = open();
    let c = cert(&r, 3, CertificateStatus::Active);
    r.create_thing("k", "t", None, attrs(&[])).unwrap();
    r.create_policy("k", "p", DOC).unwrap();
    r.attach_policy("k", "p", &c.arn).unwrap();
    r.attach_thing_principal("k", "t", &c.arn, false).unwrap();
    assert!(matches!(
        r.delete_certificate("k", &c.id, true),
        Err(RegistryError::CertificateState(_))
    ));
    r.update_certificate("k", &c.id, CertificateStatus::Inactive)
        .unwrap();
    assert!(matches!(
        r.delete_certificate("k", &c.id, true),
        Err(RegistryError::DeleteConflict(_))
    ));
    assert!(matches!(
        r.delete_thing("k", "t", None),
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        r.delete_policy("k", "p"),
        Err(RegistryError::DeleteConflict(_))
    ));
    r.detach_thing_principal("k", "t", &c.arn).unwrap();
    assert!(matches!(
        r.delete_certificate("k", &c.id, false),
        Err(RegistryError::DeleteConflict(_))
    ));
    r.delete_certificate("k", &c.id, true).unwrap();
    r.delete_policy("k", "p").unwrap();
    r.delete_thing("k", "t", None).unwrap();
    assert!(matches!(
        r.describe_certificate(&c.id),
        Err(RegistryError::NotFound { .. })
    ));
}

fn malformed_policies_and_foreign_principals_are_refused(open: Open) {
    let (_d, r) = open();
    for doc in [
        "{",
        r#"{"Statement":[]}"#,
        r#"{"Statement":{"Effect":"Maybe","Action":"x","Resource":"*"}}"#,
    ] {
        assert!(
            matches!(
                r.create_policy("k", "p", doc),
                Err(RegistryError::MalformedPolicy(_))
            ),
            "{doc}"
        );
    }
    r.create_thing("k", "t", None, attrs(&[])).unwrap();
    let err = r
        .attach_thing_principal(
            "k",
            "t",
            "arn:aws:iot:us-east-1:123456789012:cert/abc",
            false,
        )
        .unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
}

fn access_keys_are_created_once(open: Open) {
    let (_d, r) = open();
    let a = r
        .ensure_access_key("admin", || ("AKIA1".into(), "s1".into()))
        .unwrap();
    let b = r
        .ensure_access_key("admin", || ("AKIA2".into(), "s2".into()))
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(r.secret_for("AKIA1").unwrap().as_deref(), Some("s1"));
    assert_eq!(r.secret_for("AKIA2").unwrap(), None);
}

fn dynamic_groups_follow_their_query_as_things_change(open: Open) {
    let (_d, r) = open();
    let members = |g: &str| {
        r.list_things_in_group(g, false, &PageRequest::default())
            .unwrap()
            .items
    };
    r.create_thing("k", "a", None, attrs(&[("color", "red")]))
        .unwrap();
    r.create_thing("k", "b", None, attrs(&[("color", "blue")]))
        .unwrap();
    let g = r
        .create_dynamic_thing_group("k", "reds", None, attrs(&[]), "attributes.color:red")
        .unwrap();
    assert_eq!(g.query.as_deref(), Some("attributes.color:red"));
    assert_eq!(members("reds"), ["a"]);
    // New and changed things join and leave in the same transaction as the change.
    r.create_thing("k", "c", None, attrs(&[("color", "red")]))
        .unwrap();
    r.update_thing(
        "k",
        "a",
        None,
        false,
        Some((attrs(&[("color", "green")]), true)),
        None,
    )
    .unwrap();
    assert_eq!(members("reds"), ["c"]);
    r.update_thing(
        "k",
        "b",
        None,
        false,
        Some((attrs(&[("color", "red")]), true)),
        None,
    )
    .unwrap();
    assert_eq!(members("reds"), ["b", "c"]);
    r.delete_thing("k", "c", None).unwrap();
    assert_eq!(members("reds"), ["b"]);
    assert!(matches!(
        r.add_thing_to_group("k", "reds", "a"),
        Err(RegistryError::Invalid(_))
    ));
    // A query over static membership follows that membership.
    r.create_thing_group("k", "plant", None, None, attrs(&[]))
        .unwrap();
    r.create_dynamic_thing_group(
        "k",
        "plant-reds",
        None,
        attrs(&[]),
        "thingGroupNames:plant AND attributes.color:red",
    )
    .unwrap();
    assert!(members("plant-reds").is_empty());
    r.add_thing_to_group("k", "plant", "b").unwrap();
    assert_eq!(members("plant-reds"), ["b"]);
    // A new query re-evaluates every thing.
    assert_eq!(
        r.update_dynamic_thing_group("k", "reds", Some("attributes.color:green"), None, Some(1))
            .unwrap(),
        2
    );
    assert_eq!(members("reds"), ["a"]);
    assert!(matches!(
        r.create_dynamic_thing_group("k", "bad", None, attrs(&[]), "color:red"),
        Err(RegistryError::Invalid(_))
    ));
    // Policies attached to a dynamic group reach its members' certificates.
    let c = cert(&r, 5, CertificateStatus::Active);
    r.attach_thing_principal("k", "a", &c.arn, false).unwrap();
    r.create_policy("k", "greens", DOC).unwrap();
    r.attach_policy("k", "greens", &r.arn("thinggroup/reds"))
        .unwrap();
    let auth = r.principal_authorization(&c.id).unwrap().unwrap();
    assert_eq!(
        auth.policies
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["greens"]
    );
}

fn each_change_names_the_certificates_to_re_read(open: Open) {
    let (_d, r) = open();
    let c1 = cert(&r, 11, CertificateStatus::Active);
    let c2 = cert(&r, 12, CertificateStatus::Active);
    let _c3 = cert(&r, 13, CertificateStatus::Active);
    r.create_thing("k", "t1", None, attrs(&[])).unwrap();
    r.create_thing("k", "t2", None, attrs(&[])).unwrap();
    r.create_thing_group("k", "top", None, None, attrs(&[]))
        .unwrap();
    r.create_thing_group("k", "sub", Some("top"), None, attrs(&[]))
        .unwrap();
    r.add_thing_to_group("k", "sub", "t2").unwrap();
    r.attach_thing_principal("k", "t1", &c1.arn, false).unwrap();
    r.attach_thing_principal("k", "t2", &c2.arn, false).unwrap();
    r.create_policy("k", "p", DOC).unwrap();
    r.attach_policy("k", "p", &c1.arn).unwrap();
    let mut rx = r.subscribe();
    r.attach_policy("k", "p", &r.arn("thinggroup/top")).unwrap();
    let change = rx.try_recv().unwrap();
    // Attached to the parent group: the certificate of the thing in the child group.
    assert_eq!(
        r.certificates_affected_by(&change).unwrap(),
        vec![c2.id.clone()]
    );
    r.create_policy_version("k", "p", DOC, true).unwrap();
    let change = rx.try_recv().unwrap();
    assert_eq!(
        change,
        Change::Policy {
            policy_name: "p".into()
        }
    );
    assert_eq!(
        r.certificates_affected_by(&change).unwrap(),
        [c1.id.clone(), c2.id.clone()]
    );
    r.update_thing(
        "k",
        "t1",
        None,
        false,
        Some((attrs(&[("x", "1")]), true)),
        None,
    )
    .unwrap();
    let change = rx.try_recv().unwrap();
    assert_eq!(
        r.certificates_affected_by(&change).unwrap(),
        vec![c1.id.clone()]
    );
}

fn provisioning_templates_are_stored_validated_and_updated(open: Open) {
    let (_d, r) = open();
    let body = r#"{"Parameters":{"SerialNumber":{"Type":"String"}},"Resources":{"thing":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Ref":"SerialNumber"}}}}}"#;
    let t = ProvisioningTemplate {
        name: "fleet-tpl".into(),
        arn: String::new(),
        description: Some("d".into()),
        body: body.into(),
        enabled: true,
        provisioning_role_arn: "arn:aws:iam::123456789012:role/prov".into(),
        pre_provisioning_hook: None,
        kind: "FLEET_PROVISIONING".into(),
        created_ms: 0,
        updated_ms: 0,
    };
    let created = r.create_provisioning_template("k", &t).unwrap();
    assert!(created.arn.ends_with(":provisioningtemplate/fleet-tpl"));
    assert!(matches!(
        r.create_provisioning_template("k", &t),
        Err(RegistryError::AlreadyExists { .. })
    ));
    for (name, body) in [("bad name", body), ("ok", "{}"), ("ok", "not json")] {
        let bad = ProvisioningTemplate {
            name: name.into(),
            body: body.into(),
            ..t.clone()
        };
        assert!(
            matches!(
                r.create_provisioning_template("k", &bad),
                Err(RegistryError::Invalid(_))
            ),
            "{name} {body}"
        );
    }
    r.update_provisioning_template("k", "fleet-tpl", None, Some(false), None, None)
        .unwrap();
    let d = r.describe_provisioning_template("fleet-tpl").unwrap();
    assert!(!d.enabled);
    assert_eq!(d.body, body);
    assert_eq!(
        r.list_provisioning_templates(&PageRequest::default())
            .unwrap()
            .items
            .len(),
        1
    );
    r.delete_provisioning_template("k", "fleet-tpl").unwrap();
    assert!(matches!(
        r.describe_provisioning_template("fleet-tpl"),
        Err(RegistryError::NotFound { .. })
    ));
}

fn thing_types_gate_things_until_deprecated_and_deleted(open: Open) {
    let (_d, r) = open();
    let t = r.create_thing_type("k", "pump", None, &[]).unwrap();
    assert!(t.arn.ends_with(":thingtype/pump"));
    r.create_thing("k", "p1", Some("pump"), attrs(&[])).unwrap();
    assert!(matches!(
        r.delete_thing_type("k", "pump"),
        Err(RegistryError::Invalid(_))
    ));
    r.deprecate_thing_type("k", "pump", false).unwrap();
    assert!(r.describe_thing_type("pump").unwrap().deprecated);
    assert!(matches!(
        r.create_thing("k", "p2", Some("pump"), attrs(&[])),
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        r.delete_thing_type("k", "pump"),
        Err(RegistryError::Invalid(_))
    ));
    r.update_thing("k", "p1", None, true, None, None).unwrap();
    r.delete_thing_type("k", "pump").unwrap();
    assert!(
        r.list_thing_types(None, &PageRequest::default())
            .unwrap()
            .items
            .is_empty()
    );
}
