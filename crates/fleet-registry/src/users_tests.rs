//! Users, roles, sessions and access keys' owners, on both stores.

use super::*;
use crate::pg_tests::pg_support;

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
    passwords_verify_only_when_right,
    users_are_validated_listed_and_unique,
    sessions_expire_and_end_with_their_user,
    a_role_change_applies_to_open_sessions_and_keys_at_once,
    the_last_admin_cannot_be_demoted_or_deleted,
    access_keys_belong_to_users_and_carry_their_role,
    the_first_admin_password_is_set_once,
    user_changes_are_audited,
);

fn passwords_verify_only_when_right(open: Open) {
    let (_g, r) = open();
    let u = r
        .create_user("lichen", "ops", "correct horse", Role::Operator)
        .unwrap();
    assert_eq!(u.role, Role::Operator);
    let ok = r.verify_password("ops", "correct horse").unwrap().unwrap();
    assert_eq!((ok.name.as_str(), ok.role), ("ops", Role::Operator));
    assert_eq!(r.verify_password("ops", "correct horsE").unwrap(), None);
    assert_eq!(r.verify_password("ops", "").unwrap(), None);
    assert_eq!(r.verify_password("nobody", "correct horse").unwrap(), None);
    r.set_user_password("lichen", "ops", "battery staple")
        .unwrap();
    assert_eq!(r.verify_password("ops", "correct horse").unwrap(), None);
    assert!(
        r.verify_password("ops", "battery staple")
            .unwrap()
            .is_some()
    );
    // Only a salted Argon2id string is stored.
    let stored = r
        .run(false, |tx| {
            Ok(tx.query_row(
                "SELECT password_hash FROM users WHERE name = 'ops'",
                [],
                |row| row.get::<_, String>(0),
            )?)
        })
        .unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("battery"));
}

fn users_are_validated_listed_and_unique(open: Open) {
    let (_g, r) = open();
    r.create_user("lichen", "b", "password-b", Role::Viewer)
        .unwrap();
    r.create_user("lichen", "a", "password-a", Role::Admin)
        .unwrap();
    let names: Vec<_> = r
        .list_users()
        .unwrap()
        .into_iter()
        .map(|u| (u.name, u.role))
        .collect();
    assert_eq!(
        names,
        [
            ("a".to_string(), Role::Admin),
            ("b".to_string(), Role::Viewer)
        ]
    );
    assert!(matches!(
        r.create_user("lichen", "a", "password-x", Role::Viewer),
        Err(RegistryError::AlreadyExists { kind: "user", .. })
    ));
    let short = r.create_user("lichen", "c", "short", Role::Viewer);
    assert!(
        matches!(&short, Err(RegistryError::Invalid(m)) if m.contains("password")),
        "{short:?}"
    );
    for bad in ["", "has space", "slash/", &"x".repeat(65)] {
        assert!(
            matches!(
                r.create_user("lichen", bad, "password-x", Role::Viewer),
                Err(RegistryError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
    assert!("root".parse::<Role>().is_err());
    assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    assert!(matches!(
        r.set_user_role("lichen", "nobody", Role::Admin),
        Err(RegistryError::NotFound { kind: "user", .. })
    ));
    assert!(matches!(
        r.delete_user("lichen", "nobody"),
        Err(RegistryError::NotFound { kind: "user", .. })
    ));
}

fn sessions_expire_and_end_with_their_user(open: Open) {
    let (_g, r) = open();
    r.create_user("lichen", "v", "viewer-pass", Role::Viewer)
        .unwrap();
    let (token, s) = r.create_session("v", 3600).unwrap();
    assert_eq!(token.len(), 43, "32 bytes, base64url without padding");
    assert!(!token.contains(['+', '/', '=']));
    assert_eq!(s.user.name, "v");
    assert_ne!(s.csrf_token, token);
    let again = r.session(&token).unwrap().unwrap();
    assert_eq!(again, s);
    assert!(constant_time_eq(&again.csrf_token, &s.csrf_token));
    assert!(!constant_time_eq(&again.csrf_token, &token));
    // The token itself is not stored, only its digest.
    let stored: i64 = r
        .run(false, |tx| {
            Ok(tx.query_row(
                "SELECT COUNT(*) FROM user_sessions WHERE token_sha256 = ?1",
                [&token],
                |row| row.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(stored, 0);
    assert_eq!(r.session("not-a-token").unwrap(), None);

    // Expiry: a session of no lifetime is refused at once.
    let (expired, _) = r.create_session("v", 0).unwrap();
    assert_eq!(r.session(&expired).unwrap(), None);

    // Logout ends only that session.
    let (other, _) = r.create_session("v", 3600).unwrap();
    r.delete_session(&other).unwrap();
    assert_eq!(r.session(&other).unwrap(), None);
    r.delete_session(&other).unwrap();
    assert!(r.session(&token).unwrap().is_some());

    assert!(matches!(
        r.create_session("nobody", 60),
        Err(RegistryError::NotFound { kind: "user", .. })
    ));
    // A deleted user's sessions are gone, and stay gone if the name is reused.
    r.delete_user("lichen", "v").unwrap();
    assert_eq!(r.session(&token).unwrap(), None);
    r.create_user("lichen", "v", "viewer-pass", Role::Admin)
        .unwrap();
    assert_eq!(r.session(&token).unwrap(), None);
}

fn a_role_change_applies_to_open_sessions_and_keys_at_once(open: Open) {
    let (_g, r) = open();
    r.create_user("lichen", "u", "user-pass", Role::Viewer)
        .unwrap();
    let (token, _) = r.create_session("u", 3600).unwrap();
    let (akid, _) = r
        .create_access_key("lichen", "u", || ("AKIAUSER".into(), "secret".into()))
        .unwrap();
    r.set_user_role("lichen", "u", Role::Operator).unwrap();
    assert_eq!(
        r.session(&token).unwrap().unwrap().user.role,
        Role::Operator
    );
    assert_eq!(r.access_key(&akid).unwrap().unwrap().0.role, Role::Operator);
    r.set_user_role("lichen", "u", Role::Viewer).unwrap();
    assert_eq!(r.session(&token).unwrap().unwrap().user.role, Role::Viewer);
    assert_eq!(r.access_key(&akid).unwrap().unwrap().0.role, Role::Viewer);
}

fn the_last_admin_cannot_be_demoted_or_deleted(open: Open) {
    let (_g, r) = open();
    r.create_user("lichen", "root", "admin-pass", Role::Admin)
        .unwrap();
    let e = r.set_user_role("lichen", "root", Role::Viewer).unwrap_err();
    assert!(e.to_string().contains("last admin"), "{e}");
    assert!(r.delete_user("lichen", "root").is_err());
    r.create_user("lichen", "second", "admin-pass", Role::Admin)
        .unwrap();
    r.set_user_role("lichen", "root", Role::Viewer).unwrap();
    assert!(r.delete_user("lichen", "second").is_err());
    r.delete_user("lichen", "root").unwrap();
}

fn access_keys_belong_to_users_and_carry_their_role(open: Open) {
    let (_g, r) = open();
    let (admin, secret) = r
        .ensure_access_key("admin", || ("AKIAADMIN".into(), "admin-secret".into()))
        .unwrap();
    let (key, s) = r.access_key(&admin).unwrap().unwrap();
    assert_eq!(s, secret);
    assert_eq!(
        (key.user.as_deref(), key.role),
        (Some("admin"), Role::Admin)
    );
    // The user `admin` exists for its key, without a password until one is set.
    assert_eq!(r.user("admin").unwrap().unwrap().role, Role::Admin);
    assert!(!r.user_has_password("admin").unwrap());
    assert_eq!(r.verify_password("admin", "").unwrap(), None);

    let (presign, _) = r
        .ensure_access_key("presign", || ("AKIAPRESIGN".into(), "p".into()))
        .unwrap();
    let (key, _) = r.access_key(&presign).unwrap().unwrap();
    assert_eq!((key.user, key.role), (None, Role::Viewer));

    r.create_user("lichen", "op", "operator-pass", Role::Operator)
        .unwrap();
    let (k1, s1) = r
        .create_access_key("admin", "op", || ("AKIAOP1".into(), "s1".into()))
        .unwrap();
    r.create_access_key("admin", "op", || ("AKIAOP2".into(), "s2".into()))
        .unwrap();
    let (key, s) = r.access_key(&k1).unwrap().unwrap();
    assert_eq!(s, s1);
    assert_eq!(
        (key.user.as_deref(), key.kind.as_str(), key.role),
        (Some("op"), "user", Role::Operator)
    );
    let ids = |u: Option<&str>| -> Vec<String> {
        r.list_access_keys(u)
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect()
    };
    assert_eq!(ids(Some("op")), ["AKIAOP1", "AKIAOP2"]);
    assert_eq!(ids(None).len(), 4);
    assert!(matches!(
        r.create_access_key("admin", "nobody", || ("AKIAX".into(), "x".into())),
        Err(RegistryError::NotFound { kind: "user", .. })
    ));
    r.delete_access_key("admin", "AKIAOP2").unwrap();
    assert_eq!(r.access_key("AKIAOP2").unwrap(), None);
    // The fleet's own keys are not deleted as a user's.
    assert!(r.delete_access_key("admin", &presign).is_err());
    // A deleted user's keys stop working.
    r.delete_user("admin", "op").unwrap();
    assert_eq!(r.access_key(&k1).unwrap(), None);
    assert_eq!(r.secret_for(&k1).unwrap(), None);
}

fn the_first_admin_password_is_set_once(open: Open) {
    let (_g, r) = open();
    r.ensure_access_key("admin", || ("AKIAADMIN".into(), "s".into()))
        .unwrap();
    assert!(
        r.init_user_password("lichen", "admin", Role::Admin, "first-password")
            .unwrap()
    );
    assert!(
        !r.init_user_password("lichen", "admin", Role::Admin, "second-password")
            .unwrap()
    );
    assert!(
        r.verify_password("admin", "first-password")
            .unwrap()
            .is_some()
    );
    assert!(
        r.verify_password("admin", "second-password")
            .unwrap()
            .is_none()
    );
    // On a registry without the user, it is created.
    assert!(
        r.init_user_password("lichen", "other", Role::Viewer, "other-password")
            .unwrap()
    );
    assert_eq!(r.user("other").unwrap().unwrap().role, Role::Viewer);
}

fn user_changes_are_audited(open: Open) {
    let (_g, r) = open();
    r.create_user("AKIAADMIN", "x", "password-x", Role::Viewer)
        .unwrap();
    r.set_user_role("AKIAADMIN", "x", Role::Operator).unwrap();
    let (t, _) = r.create_session("x", 60).unwrap();
    r.delete_session(&t).unwrap();
    // A refused change leaves no entry.
    assert!(r.set_user_role("AKIAADMIN", "nobody", Role::Admin).is_err());
    r.delete_user("AKIAADMIN", "x").unwrap();
    let log: Vec<_> = r
        .audit_log(0, 100, Some("x"))
        .unwrap()
        .into_iter()
        .map(|e| (e.who, e.operation))
        .collect();
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        log,
        [
            s("AKIAADMIN", "CreateUser"),
            s("AKIAADMIN", "SetUserRole"),
            s("x", "CreateSession"),
            s("x", "DeleteSession"),
            s("AKIAADMIN", "DeleteUser"),
        ]
    );
}

/// A registry created before users existed: its administrator key becomes the user `admin`'s.
#[test]
fn existing_admin_keys_migrate_to_the_admin_user() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .unwrap();
        let before = migrations::MIGRATIONS.len() - 1;
        for (i, sql) in migrations::MIGRATIONS[..before].iter().enumerate() {
            tx.execute_batch(sql).unwrap();
            tx.execute(
                "INSERT INTO schema_migrations VALUES (?1, 0)",
                [i as i64 + 1],
            )
            .unwrap();
        }
        tx.execute_batch(
            "INSERT INTO access_keys VALUES ('AKIAOLD', 'old-secret', 'admin', 1000);
             INSERT INTO access_keys VALUES ('AKIAPRE', 'p', 'presign', 2000);",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let r = Registry::open(&path, "us-east-1").unwrap();
    let (key, secret) = r.access_key("AKIAOLD").unwrap().unwrap();
    assert_eq!(secret, "old-secret");
    assert_eq!(
        (key.user.as_deref(), key.role),
        (Some("admin"), Role::Admin)
    );
    let admin = r.user("admin").unwrap().unwrap();
    assert_eq!((admin.role, admin.created_at), (Role::Admin, 1000));
    assert!(!r.user_has_password("admin").unwrap());
    assert_eq!(
        r.access_key("AKIAPRE").unwrap().unwrap().0.role,
        Role::Viewer
    );
    // ensure_access_key finds the migrated key.
    let (id, _) = r
        .ensure_access_key("admin", || ("AKIANEW".into(), "n".into()))
        .unwrap();
    assert_eq!(id, "AKIAOLD");
}

/// The same upgrade on PostgreSQL (where a server is given).
#[test]
fn existing_admin_keys_migrate_to_the_admin_user_on_postgres() {
    let Some(url) = pg_support::fresh_database() else {
        return;
    };
    {
        let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        tx.batch_execute(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .unwrap();
        let before = migrations::MIGRATIONS.len() - 1;
        for (i, sql) in migrations::MIGRATIONS[..before].iter().enumerate() {
            tx.batch_execute(sql).unwrap();
            tx.execute(
                "INSERT INTO schema_migrations VALUES ($1, 0)",
                &[&(i as i64 + 1)],
            )
            .unwrap();
        }
        tx.batch_execute(
            "INSERT INTO access_keys VALUES ('AKIAOLD', 'old-secret', 'admin', 1000);
             INSERT INTO access_keys VALUES ('AKIAPRE', 'p', 'presign', 2000);",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let r = Registry::open_postgres(&url, "us-east-1").unwrap();
    let (key, _) = r.access_key("AKIAOLD").unwrap().unwrap();
    assert_eq!(
        (key.user.as_deref(), key.role),
        (Some("admin"), Role::Admin)
    );
    assert_eq!(r.user("admin").unwrap().unwrap().created_at, 1000);
    assert_eq!(
        r.access_key("AKIAPRE").unwrap().unwrap().0.role,
        Role::Viewer
    );
}
