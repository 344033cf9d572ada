//! Property tests of the document rules over generated documents and patches.

use lichen_shadow::{
    Document, Limits, Object, Stored, UpdateRequest, apply_update, delta, json_eq,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "d", "timestamp"]).prop_map(String::from)
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(|n| json!(n)),
        (-3i64..3).prop_map(|n| json!(n as f64)),
        "[xy]{0,2}".prop_map(Value::String),
    ]
}

/// Values for a patch: nulls allowed as object members, never inside arrays.
fn patch_value(nulls: bool) -> impl Strategy<Value = Value> {
    let leaf = if nulls {
        prop_oneof![4 => scalar(), 1 => Just(Value::Null)].boxed()
    } else {
        scalar().boxed()
    };
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn section(nulls: bool) -> impl Strategy<Value = Object> {
    prop::collection::btree_map(key(), patch_value(nulls), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

fn state_patch() -> impl Strategy<Value = Value> {
    (
        prop::option::of(
            prop_oneof![4 => section(true).prop_map(Value::Object), 1 => Just(Value::Null)],
        ),
        prop::option::of(
            prop_oneof![4 => section(true).prop_map(Value::Object), 1 => Just(Value::Null)],
        ),
    )
        .prop_map(|(d, r)| {
            let mut s = Object::new();
            if let Some(d) = d {
                s.insert("desired".into(), d);
            }
            if let Some(r) = r {
                s.insert("reported".into(), r);
            }
            json!({ "state": s })
        })
}

fn apply(stored: &Stored, payload: &Value, now: u64) -> Document {
    let limits = Limits {
        max_state_bytes: usize::MAX,
        ..Limits::default()
    };
    let req = UpdateRequest::parse(payload.to_string().as_bytes(), &limits).unwrap();
    apply_update(stored, &req, &limits, now).unwrap().document
}

fn no_nulls(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Object(o) => o.values().all(no_nulls),
        Value::Array(a) => a.iter().all(no_nulls),
        _ => true,
    }
}

/// Metadata mirrors the state: same keys, same array lengths, a timestamp at each leaf.
fn mirrors(state: &Value, meta: &Value) -> bool {
    match (state, meta) {
        (Value::Object(s), Value::Object(m)) => {
            s.len() == m.len()
                && s.iter()
                    .all(|(k, v)| m.get(k).is_some_and(|mv| mirrors(v, mv)))
        }
        (Value::Array(s), Value::Array(m)) => {
            s.len() == m.len() && s.iter().zip(m).all(|(a, b)| mirrors(a, b))
        }
        (Value::Object(_) | Value::Array(_), _) => false,
        (_, Value::Object(m)) => m.len() == 1 && m.get("timestamp").is_some_and(Value::is_u64),
        _ => false,
    }
}

/// A reference merge written as plainly as possible, to check the crate's.
fn model_merge(base: Option<&Value>, patch: &Value) -> Option<Value> {
    match patch {
        Value::Null => None,
        Value::Object(p) => {
            let mut out = match base {
                Some(Value::Object(b)) => b.clone(),
                _ => Object::new(),
            };
            let fresh = !matches!(base, Some(Value::Object(_)));
            for (k, v) in p {
                match model_merge(out.get(k), v) {
                    Some(m) => {
                        out.insert(k.clone(), m);
                    }
                    None => {
                        out.remove(k);
                    }
                }
            }
            // A new object made only of nulls adds nothing.
            if fresh && out.is_empty() && !p.is_empty() && base.is_none() {
                return None;
            }
            Some(Value::Object(out))
        }
        other => Some(other.clone()),
    }
}

fn section_value(s: &Option<Object>) -> Option<Value> {
    s.clone().map(Value::Object)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn updates_follow_the_reference_merge(patches in prop::collection::vec(state_patch(), 1..6)) {
        let mut stored = Stored::Missing;
        let mut model_d: Option<Value> = None;
        let mut model_r: Option<Value> = None;
        for (i, p) in patches.iter().enumerate() {
            let doc = apply(&stored, p, 100 + i as u64);
            prop_assert_eq!(doc.version, i as u64 + 1);
            for (key, model) in [("desired", &mut model_d), ("reported", &mut model_r)] {
                if let Some(patch) = p["state"].get(key) {
                    *model = match patch {
                        Value::Null => None,
                        _ => model_merge(model.as_ref(), patch)
                            .filter(|v| v.as_object().is_some_and(|o| !o.is_empty())),
                    };
                }
            }
            prop_assert_eq!(&section_value(&doc.desired), &model_d);
            prop_assert_eq!(&section_value(&doc.reported), &model_r);
            for (s, m) in [(&doc.desired, &doc.metadata_desired), (&doc.reported, &doc.metadata_reported)] {
                prop_assert_eq!(s.is_some(), m.is_some());
                if let (Some(s), Some(m)) = (s, m) {
                    prop_assert!(no_nulls(&Value::Object(s.clone())));
                    prop_assert!(mirrors(&Value::Object(s.clone()), &Value::Object(m.clone())));
                }
            }
            prop_assert_eq!(Document::from_value(&doc.to_value()).unwrap(), doc.clone());
            stored = Stored::Present(doc);
        }
    }

    #[test]
    fn delta_is_exactly_the_differing_desired_leaves(d in section(false), r in section(false)) {
        let dl = delta(&d, Some(&r));
        // Reporting the desired state clears the delta.
        prop_assert!(delta(&d, Some(&d)).is_empty());
        let mut merged = r.clone();
        for (k, v) in &dl {
            let m = model_merge(merged.get(k), v).unwrap();
            merged.insert(k.clone(), m);
        }
        // Applying the delta to reported leaves nothing to do.
        prop_assert!(delta(&d, Some(&merged)).is_empty());
        for (k, v) in &dl {
            prop_assert!(d.contains_key(k));
            if let Some(rv) = r.get(k) {
                prop_assert!(!json_eq(v, rv));
            }
        }
    }

    #[test]
    fn a_stale_version_is_a_conflict(n in 1usize..5, stale in 0u64..10) {
        let limits = Limits::default();
        let mut stored = Stored::Missing;
        for _ in 0..n {
            stored = Stored::Present(apply(&stored, &json!({"state":{"reported":{"a":1}}}), 1));
        }
        let req = UpdateRequest::parse(json!({"state":{"reported":{"a":2}},"version":stale}).to_string().as_bytes(), &limits).unwrap();
        let out = apply_update(&stored, &req, &limits, 2);
        if stale == n as u64 {
            prop_assert_eq!(out.unwrap().document.version, n as u64 + 1);
        } else {
            prop_assert_eq!(out.unwrap_err().code.status(), 409);
        }
    }
}
