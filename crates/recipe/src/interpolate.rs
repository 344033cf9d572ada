//! Recipe variables: `{namespace:key}` and `{dependency:namespace:key}` (spec §1.8).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::{Captures, Regex};
use serde_json::Value;

use crate::value::sorted_keys;

/// Values for `{…}` variables. Paths follow the Greengrass root layout:
/// `artifacts:path` = `<root>/packages/artifacts/<name>/<version>`,
/// `artifacts:decompressedPath` = `<root>/packages/artifacts-unarchived/<name>/<version>`,
/// `work:path` = `<root>/work/<name>`, `kernel:rootPath` = `<root>`, `iot:thingName`.
#[derive(Debug, Clone, Default)]
pub struct InterpolationContext {
    pub root: PathBuf,
    pub thing_name: String,
    pub component: ComponentVars,
    /// Direct dependencies only, by component name.
    pub dependencies: BTreeMap<String, ComponentVars>,
}

/// What a component contributes to interpolation: its name, version and resolved configuration.
#[derive(Debug, Clone, Default)]
pub struct ComponentVars {
    pub name: String,
    pub version: String,
    pub configuration: Value,
}

fn same_component_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // Java's `\w` is ASCII-only, hence the explicit class.
    RE.get_or_init(|| Regex::new(r"\{([.A-Za-z0-9_-]+):([^:}]*)\}").expect("static regex"))
}

fn cross_component_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\{([.A-Za-z0-9_-]+):([.A-Za-z0-9_-]+):([^:}]*)\}").expect("static regex")
    })
}

fn path_text(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

/// A variable common to this component and its dependencies; `None` leaves the placeholder.
fn component_value(
    root: &Path,
    vars: &ComponentVars,
    namespace: &str,
    key: &str,
) -> Option<String> {
    match (namespace, key) {
        ("artifacts", "path") => Some(path_text(
            root.join("packages/artifacts")
                .join(&vars.name)
                .join(&vars.version),
        )),
        ("artifacts", "decompressedPath") => Some(path_text(
            root.join("packages/artifacts-unarchived")
                .join(&vars.name)
                .join(&vars.version),
        )),
        ("work", "path") => Some(path_text(root.join("work").join(&vars.name))),
        ("configuration", pointer) => vars.configuration.pointer(pointer).map(config_text),
        _ => None,
    }
}

/// Scalars become their text (`null` → `"null"`), maps and lists compact JSON with sorted keys.
fn config_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => sorted_keys(other).to_string(),
    }
}

/// Replaces recipe variables in `text`: first `{namespace:key}` for this component, then
/// `{dependency:namespace:key}` for direct dependencies. Unknown namespaces, unknown
/// dependencies and missing configuration keys are left untouched.
pub fn interpolate(text: &str, ctx: &InterpolationContext) -> String {
    let root = ctx.root.as_path();
    let same = same_component_regex().replace_all(text, |c: &Captures| {
        let (namespace, key) = (&c[1], &c[2]);
        let value = match (namespace, key) {
            ("kernel", "rootPath") => Some(path_text(root.to_path_buf())),
            ("iot", "thingName") => Some(ctx.thing_name.clone()),
            _ => component_value(root, &ctx.component, namespace, key),
        };
        value.unwrap_or_else(|| c[0].to_string())
    });
    cross_component_regex()
        .replace_all(&same, |c: &Captures| {
            ctx.dependencies
                .get(&c[1])
                .and_then(|dep| component_value(root, dep, &c[2], &c[3]))
                .unwrap_or_else(|| c[0].to_string())
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> InterpolationContext {
        InterpolationContext {
            root: PathBuf::from("/greengrass/v2"),
            thing_name: "MyThing".into(),
            component: ComponentVars {
                name: "com.example.App".into(),
                version: "1.2.3".into(),
                configuration: json!({
                    "port": 8080,
                    "ratio": 0.5,
                    "name": "svc",
                    "on": true,
                    "nothing": null,
                    "obj": {"b": 2, "a": [1, {"z": 0, "y": 1}]},
                    "a/b": "slash",
                    "m~n": "tilde",
                    "template": "{dep.One:work:path}"
                }),
            },
            dependencies: BTreeMap::from([(
                "dep.One".to_string(),
                ComponentVars {
                    name: "dep.One".into(),
                    version: "2.0.0".into(),
                    configuration: json!({"url": "http://x", "list": [3, 2]}),
                },
            )]),
        }
    }

    #[test]
    fn system_variables() {
        let c = ctx();
        assert_eq!(
            interpolate("{artifacts:path}/run.sh", &c),
            "/greengrass/v2/packages/artifacts/com.example.App/1.2.3/run.sh"
        );
        assert_eq!(
            interpolate("{artifacts:decompressedPath}/app", &c),
            "/greengrass/v2/packages/artifacts-unarchived/com.example.App/1.2.3/app"
        );
        assert_eq!(
            interpolate("{work:path}", &c),
            "/greengrass/v2/work/com.example.App"
        );
        assert_eq!(interpolate("{kernel:rootPath}", &c), "/greengrass/v2");
        assert_eq!(interpolate("thing={iot:thingName}", &c), "thing=MyThing");
    }

    #[test]
    fn configuration_pointers() {
        let c = ctx();
        assert_eq!(interpolate("{configuration:/port}", &c), "8080");
        assert_eq!(interpolate("{configuration:/ratio}", &c), "0.5");
        assert_eq!(interpolate("{configuration:/name}", &c), "svc");
        assert_eq!(interpolate("{configuration:/on}", &c), "true");
        assert_eq!(interpolate("{configuration:/nothing}", &c), "null");
        assert_eq!(
            interpolate("{configuration:/obj}", &c),
            r#"{"a":[1,{"y":1,"z":0}],"b":2}"#
        );
        assert_eq!(interpolate("{configuration:/obj/a/0}", &c), "1");
        assert_eq!(interpolate("{configuration:/a~1b}", &c), "slash");
        assert_eq!(interpolate("{configuration:/m~0n}", &c), "tilde");
        assert_eq!(
            interpolate("{configuration:/missing}", &c),
            "{configuration:/missing}"
        );
        assert_eq!(
            interpolate("{configuration:nopointer}", &c),
            "{configuration:nopointer}"
        );
    }

    #[test]
    fn cross_component_and_untouched() {
        let c = ctx();
        assert_eq!(interpolate("{dep.One:configuration:/url}", &c), "http://x");
        assert_eq!(interpolate("{dep.One:configuration:/list}", &c), "[3,2]");
        assert_eq!(
            interpolate("{dep.One:artifacts:path}", &c),
            "/greengrass/v2/packages/artifacts/dep.One/2.0.0"
        );
        assert_eq!(
            interpolate("{dep.One:artifacts:decompressedPath}", &c),
            "/greengrass/v2/packages/artifacts-unarchived/dep.One/2.0.0"
        );
        assert_eq!(
            interpolate("{dep.One:work:path}", &c),
            "/greengrass/v2/work/dep.One"
        );
        // Not a direct dependency, unknown namespaces, shell syntax: all left as written.
        for untouched in [
            "{other.Dep:work:path}",
            "{platform:os}",
            "{dep.One:kernel:rootPath}",
            "${HOME}",
            "{}",
            "awk '{print $1}'",
            "{iot:thing}",
        ] {
            assert_eq!(interpolate(untouched, &c), untouched);
        }
        // The same-component pass runs first; its output is seen by the cross-component pass.
        assert_eq!(
            interpolate("{configuration:/template}", &c),
            "/greengrass/v2/work/dep.One"
        );
        assert_eq!(
            interpolate(
                "cd {work:path} && {artifacts:path}/x --port {configuration:/port}",
                &c
            ),
            "cd /greengrass/v2/work/com.example.App && /greengrass/v2/packages/artifacts/com.example.App/1.2.3/x --port 8080"
        );
    }
}
