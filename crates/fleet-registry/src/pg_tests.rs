//! The registry on PostgreSQL: what only a shared database can show (several registries, as
//! several fleet processes would hold, on one database). The store-independent behaviour is in
//! `tests.rs`, which runs on both stores.

use super::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

pub(crate) mod pg_support {
    /// The server the tests may use (`./scripts/test` starts one), or None with the reason
    /// printed; under CI a missing server fails instead.
    pub fn admin_url() -> Option<String> {
        match std::env::var("LICHEN_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => Some(u),
            _ => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "LICHEN_TEST_POSTGRES_URL is not set: under CI the PostgreSQL tests must \
                     run; ./scripts/test starts a private server and sets it"
                );
                eprintln!(
                    "skipped: LICHEN_TEST_POSTGRES_URL is not set (./scripts/test starts a \
                     private PostgreSQL and sets it)"
                );
                None
            }
        }
    }

    /// A new, empty database on that server; its URL.
    pub fn fresh_database() -> Option<String> {
        fresh_database_with("TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'")
    }

    /// A new database created `WITH` these options; its URL.
    pub fn fresh_database_with(options: &str) -> Option<String> {
        let admin = admin_url()?;
        let name = format!("lichen_test_{}", uuid::Uuid::new_v4().simple());
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name} {options}"))
            .unwrap();
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin.as_str(), String::new()),
        };
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[scheme_end..].find('/') {
            Some(i) => &base[..scheme_end + i],
            None => base,
        };
        Some(format!("{base}/{name}{query}"))
    }
}

fn attrs(k: &str, v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(k.to_string(), v.to_string())])
}

#[test]
fn state_survives_reopening_and_the_account_is_shared() {
    let Some(url) = pg_support::fresh_database() else {
        return;
    };
    let a = Registry::open_postgres(&url, "us-east-1").unwrap();
    let b = Registry::open_postgres(&url, "us-east-1").unwrap();
    assert_eq!(a.account(), b.account(), "one database, one account");
    a.create_thing("AKID", "seen-by-both", None, attrs("k", "v"))
        .unwrap();
    assert_eq!(
        b.describe_thing("seen-by-both").unwrap().attributes,
        attrs("k", "v")
    );
    drop(a);
    let c = Registry::open_postgres(&url, "us-east-1").unwrap();
    assert_eq!(c.account(), b.account());
    assert!(c.describe_thing("seen-by-both").is_ok());
}

#[test]
fn concurrent_creates_of_one_name_from_two_registries_have_one_winner() {
    let Some(url) = pg_support::fresh_database() else {
        return;
    };
    let regs = [
        Arc::new(Registry::open_postgres(&url, "us-east-1").unwrap()),
        Arc::new(Registry::open_postgres(&url, "us-east-1").unwrap()),
    ];
    for round in 0..20 {
        let name = format!("contested-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = regs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (r, barrier, name) = (r.clone(), barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    r.create_thing("AKID", &name, None, attrs("by", &i.to_string()))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        let lost = results.iter().find(|r| r.is_err()).unwrap();
        assert!(
            matches!(lost, Err(RegistryError::AlreadyExists { .. })),
            "round {round}: the loser must see AlreadyExists, got {lost:?}"
        );
        let winner = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
        assert_eq!(regs[1].describe_thing(&name).unwrap(), *winner);
    }
}

#[test]
fn racing_writes_from_two_registries_all_commit_and_are_audited_once() {
    let Some(url) = pg_support::fresh_database() else {
        return;
    };
    let regs = [
        Arc::new(Registry::open_postgres(&url, "us-east-1").unwrap()),
        Arc::new(Registry::open_postgres(&url, "us-east-1").unwrap()),
    ];
    let handles: Vec<_> = regs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let r = r.clone();
            std::thread::spawn(move || {
                for n in 0..40 {
                    r.create_thing("AKID", &format!("t-{i}-{n}"), None, BTreeMap::new())
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let log = regs[0].audit_log(0, 1000, None).unwrap();
    let creates: Vec<_> = log
        .iter()
        .filter(|e| e.operation == "CreateThing")
        .collect();
    assert_eq!(creates.len(), 80);
    let seqs: Vec<i64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=log.len() as i64).collect::<Vec<_>>(),
        "one gapless sequence across both processes"
    );
    let page = regs[1]
        .list_things(
            &ThingQuery::default(),
            &PageRequest {
                token: None,
                size: Some(250),
            },
        )
        .unwrap();
    assert_eq!(page.items.len(), 80);
}

#[test]
fn a_bad_url_or_unreachable_server_says_where() {
    let e = match Registry::open_postgres("postgres://nobody:secret@127.0.0.1:1/x", "us-east-1") {
        Err(e) => e.to_string(),
        Ok(_) => panic!("port 1 has no PostgreSQL"),
    };
    assert!(e.contains("postgres://nobody@127.0.0.1:1/x"), "{e}");
    assert!(!e.contains("secret"), "the password is not shown: {e}");
}

#[test]
fn a_database_that_does_not_sort_bytewise_is_refused() {
    let Some(url) = pg_support::fresh_database_with(
        "TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'",
    ) else {
        return;
    };
    let e = match Registry::open_postgres(&url, "us-east-1") {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an ICU-collated database sorts names out of byte order"),
    };
    assert!(
        e.contains("needs byte order") && e.contains("LOCALE 'C'"),
        "{e}"
    );
}

#[test]
fn calls_from_an_async_task_and_the_drop_there_do_not_block_its_runtime() {
    let Some(url) = pg_support::fresh_database() else {
        return;
    };
    let registry = Registry::open_postgres(&url, "us-east-1").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // As the device endpoint's tasks call it: directly on a thread that runs async tasks.
        registry
            .create_thing("AKID", "from-async", None, BTreeMap::new())
            .unwrap();
        assert_eq!(
            registry.describe_thing("from-async").unwrap().name,
            "from-async"
        );
        drop(registry);
    });
}
