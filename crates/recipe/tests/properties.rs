//! Property tests: lifecycle round trips, version ranges against a plain reference.

use std::collections::BTreeMap;
use std::time::Duration;

use lichen_recipe::{
    InterpolationContext, Lifecycle, Platform, SkipCheck, SkipIf, Step, Version,
    VersionRequirement, interpolate,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,8}", "\\PC{0,12}", 0..4)
}

fn skip_if() -> impl Strategy<Value = SkipIf> {
    (
        any::<bool>(),
        any::<bool>(),
        "[a-zA-Z0-9/._~-]{1,12}( [a-zA-Z0-9/._~-]{1,8})?",
    )
        .prop_map(|(negate, on_path, arg)| SkipIf {
            negate,
            check: if on_path {
                SkipCheck::OnPath(arg)
            } else {
                SkipCheck::Exists(arg)
            },
        })
}

fn step() -> impl Strategy<Value = Step> {
    (
        "\\PC{0,40}",
        any::<bool>(),
        prop::option::of(skip_if()),
        prop::option::of(0u64..1_000_000_000),
        env(),
    )
        .prop_map(
            |(script, requires_privilege, skip_if, timeout, setenv)| Step {
                script,
                requires_privilege,
                skip_if,
                timeout: timeout.map(Duration::from_secs),
                setenv,
            },
        )
}

fn lifecycle() -> impl Strategy<Value = Lifecycle> {
    let s = || prop::option::of(step());
    (env(), s(), s(), s(), s(), s(), s(), s()).prop_map(
        |(setenv, bootstrap, install, startup, run, shutdown, recover, uninstall)| Lifecycle {
            setenv,
            bootstrap,
            install,
            startup,
            run,
            shutdown,
            recover,
            uninstall,
        },
    )
}

/// Recases the lifecycle's own keys (steps and step fields), leaving variable names alone.
fn recase(v: &Value, upper: bool) -> Value {
    let case = |k: &str| {
        if upper {
            k.to_ascii_uppercase()
        } else {
            k.to_ascii_lowercase()
        }
    };
    let mut out = Map::new();
    for (k, step) in v.as_object().unwrap() {
        let step = match step {
            Value::Object(fields) if !k.eq_ignore_ascii_case("setenv") => {
                Value::Object(fields.iter().map(|(f, x)| (case(f), x.clone())).collect())
            }
            other => other.clone(),
        };
        out.insert(case(k), step);
    }
    Value::Object(out)
}

proptest! {
    #[test]
    fn lifecycle_round_trips(l in lifecycle()) {
        let v = l.to_value();
        prop_assert_eq!(&Lifecycle::from_value(&v, "p", "Lifecycle").unwrap(), &l);
        // Through JSON text too, as the config tree and component store keep it.
        let text: Value = serde_json::from_str(&v.to_string()).unwrap();
        prop_assert_eq!(&Lifecycle::from_value(&text, "p", "").unwrap(), &l);
        // Step and field names are case-insensitive.
        prop_assert_eq!(&Lifecycle::from_value(&recase(&v, true), "p", "").unwrap(), &l);
        prop_assert_eq!(&Lifecycle::from_value(&recase(&v, false), "p", "").unwrap(), &l);
    }

    #[test]
    fn skipif_round_trips(s in skip_if()) {
        prop_assert_eq!(SkipIf::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn text_without_braces_is_not_interpolated(text in "[^{}]{0,60}") {
        let ctx = InterpolationContext { thing_name: "t".into(), ..Default::default() };
        prop_assert_eq!(interpolate(&text, &ctx), text);
    }

    #[test]
    fn platform_display_parses_back(attrs in prop::collection::btree_map("[a-z][a-z.]{0,10}", "[a-zA-Z0-9_/*-]{0,10}", 0..5)) {
        let p = Platform { attributes: attrs };
        prop_assert_eq!(Platform::parse(&p.to_string()).unwrap(), p);
    }
}

fn version() -> impl Strategy<Value = Version> {
    (0u64..4, 0u64..4, 0u64..4).prop_map(|(a, b, c)| Version::new(a, b, c))
}

fn triple(v: &Version) -> (u64, u64, u64) {
    (v.major, v.minor, v.patch)
}

/// One simple requirement form with its operands.
#[derive(Debug, Clone)]
struct Simple {
    kind: usize,
    a: Version,
    b: Version,
}

impl Simple {
    fn text(&self) -> String {
        let (a, b) = (&self.a, &self.b);
        match self.kind {
            0 => format!("{a}"),
            1 => format!("={a}"),
            2 => format!(">{a}"),
            3 => format!(">={a}"),
            4 => format!("<{a}"),
            5 => format!("<={a}"),
            6 => format!("^{a}"),
            7 => format!("~{a}"),
            8 => format!("{}.x", a.major),
            9 => format!("{}.{}.*", a.major, a.minor),
            _ => format!("{a} - {b}"),
        }
    }

    /// An independent statement of what the text means, for release versions.
    fn reference(&self, w: &Version) -> bool {
        let (ta, tb, t) = (triple(&self.a), triple(&self.b), triple(w));
        match self.kind {
            0 | 1 => t == ta,
            2 => t > ta,
            3 => t >= ta,
            4 => t < ta,
            5 => t <= ta,
            6 => {
                t >= ta
                    && match ta {
                        (0, 0, _) => t == ta,
                        (0, m, _) => t.0 == 0 && t.1 == m,
                        (major, _, _) => t.0 == major,
                    }
            }
            7 => t >= ta && (t.0, t.1) == (ta.0, ta.1),
            8 => t.0 == ta.0,
            9 => (t.0, t.1) == (ta.0, ta.1),
            _ => ta <= t && t <= tb,
        }
    }
}

fn simple_requirement() -> impl Strategy<Value = Simple> {
    (0usize..11, version(), version()).prop_map(|(kind, a, b)| Simple { kind, a, b })
}

proptest! {
    #[test]
    fn requirement_matches_reference(
        r1 in simple_requirement(),
        r2 in simple_requirement(),
        candidate in version(),
        combine in 0usize..3,
    ) {
        let (t1, t2) = (r1.text(), r2.text());
        let (e1, e2) = (r1.reference(&candidate), r2.reference(&candidate));
        let (text, expected) = match combine {
            0 => (t1, e1),
            1 => (format!("{t1} {t2}"), e1 && e2),
            _ => (format!("{t1} || {t2}"), e1 || e2),
        };
        let requirement = VersionRequirement::parse(&text).unwrap();
        prop_assert_eq!(
            requirement.matches(&candidate),
            expected,
            "{} vs {}", text, candidate
        );
        prop_assert_eq!(requirement.as_str(), text.as_str());
    }

    #[test]
    fn build_metadata_never_matters(
        simple in simple_requirement(),
        candidate in version(),
        build in "[a-z0-9]{1,6}",
    ) {
        let requirement = VersionRequirement::parse(&simple.text()).unwrap();
        let mut with_build = candidate.clone();
        with_build.build = semver::BuildMetadata::new(&build).unwrap();
        prop_assert_eq!(requirement.matches(&candidate), requirement.matches(&with_build));
    }
}
