//! `lichen.Inference`'s configuration and where each model's file is.
//!
//! ```json
//! {"models": {"<name>": {"modelComponent": "com.example.Model", "artifact": "model.onnx",
//!                        "threads": 0, "backend": "tract", "preprocess": {…},
//!                        "requestTopic": "…", "responseTopic": "…"}},
//!  "poolSize": 0}
//! ```
//!
//! A model is an ordinary component artifact, as in Greengrass's model-store components
//! (`variant.DLR.ImageClassification.ModelStore`): the consumer names the component that holds
//! the model and a file among its artifacts. `artifact` takes the recipe-variable spelling
//! Greengrass's samples use (`{com.example.Model:artifacts:decompressedPath}/model/m.onnx`),
//! or a file name with `modelComponent` (looked up in the component's artifacts, then in its
//! unarchived artifacts), or an absolute path. The service resolves it itself because built-in
//! configuration is not interpolated, and against the versions of the deployment being checked,
//! so a new model version is checked before it is committed.

use lichen_bus::validate_topic;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Where requests and answers go unless the model's configuration says otherwise.
pub fn default_request_topic(model: &str) -> String {
    format!("lichen/inference/{model}/request")
}

pub fn default_response_topic(model: &str) -> String {
    format!("lichen/inference/{model}/response")
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub models: BTreeMap<String, ModelConfig>,
    /// Requests run at once in the worker; 0 = the device's cores.
    pub pool_size: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub artifact: ArtifactRef,
    pub threads: usize,
    pub backend: Option<String>,
    pub preprocess: Option<Value>,
    pub request_topic: String,
    pub response_topic: String,
}

/// Which of a component's artifact folders holds the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    /// `{C:artifacts:path}`
    Artifacts,
    /// `{C:artifacts:decompressedPath}`
    Decompressed,
    /// `modelComponent` with a file name: artifacts first, then unarchived.
    Either,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ArtifactRef {
    Path(PathBuf),
    Component {
        component: String,
        folder: Folder,
        file: String,
    },
}

impl ArtifactRef {
    /// The component whose artifacts hold the model, if any.
    pub fn component(&self) -> Option<&str> {
        match self {
            ArtifactRef::Component { component, .. } => Some(component),
            ArtifactRef::Path(_) => None,
        }
    }
}

/// A configuration error: the key path and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("configuration {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn err(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A count given as a number or a numeric string (Greengrass configuration often holds strings).
fn count(v: Option<&Value>, key: &str) -> Result<usize, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str()?.trim().parse().ok())
            .map(|n| n as usize)
            .ok_or_else(|| {
                err(
                    key,
                    format!("{v} is not a count: use a whole number, 0 for the device's cores"),
                )
            }),
    }
}

fn text<'a>(v: Option<&'a Value>, key: &str) -> Result<Option<&'a str>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(err(key, format!("{v} is not a string"))),
    }
}

impl ServiceConfig {
    pub fn parse(conf: &Value) -> Result<ServiceConfig, ConfigError> {
        let pool_size = count(conf.get("poolSize"), "poolSize")?;
        let mut models = BTreeMap::new();
        match conf.get("models") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (name, model) in m {
                    models.insert(name.clone(), ModelConfig::parse(name, model)?);
                }
            }
            Some(v) => {
                return Err(err(
                    "models",
                    format!("{v} is not an object: map each model's name to its settings"),
                ));
            }
        }
        let mut topics: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, m) in &models {
            if let Some(other) = topics.insert(&m.request_topic, name) {
                return Err(err(
                    format!("models.{name}.requestTopic"),
                    format!(
                        "{:?} is already model {other}'s request topic",
                        m.request_topic
                    ),
                ));
            }
        }
        Ok(ServiceConfig { models, pool_size })
    }

    /// Components whose artifacts hold a model.
    pub fn model_components(&self) -> impl Iterator<Item = &str> {
        self.models.values().filter_map(|m| m.artifact.component())
    }
}

impl ModelConfig {
    fn parse(name: &str, v: &Value) -> Result<ModelConfig, ConfigError> {
        let key = |k: &str| format!("models.{name}.{k}");
        if name.is_empty() || name.contains(['/', '+', '#']) {
            return Err(err(
                format!("models.{name}"),
                "a model name is one topic level: no '/', '+' or '#', not empty",
            ));
        }
        if !v.is_object() {
            return Err(err(
                format!("models.{name}"),
                format!("{v} is not an object"),
            ));
        }
        let Some(artifact) = text(v.get("artifact"), &key("artifact"))? else {
            return Err(err(
                key("artifact"),
                "missing: name the model file, e.g. \"{com.example.Model:artifacts:path}/model.onnx\"",
            ));
        };
        let component = text(v.get("modelComponent"), &key("modelComponent"))?;
        let artifact = parse_artifact(artifact, component, &key("artifact"))?;
        let backend = text(v.get("backend"), &key("backend"))?.map(str::to_string);
        if let Some(b) = &backend
            && b != "tract"
            && b != "onnxruntime"
        {
            return Err(err(
                key("backend"),
                format!("{b:?}: use \"tract\" or \"onnxruntime\""),
            ));
        }
        let preprocess = match v.get("preprocess") {
            None | Some(Value::Null) => None,
            Some(p @ Value::Object(_)) => Some(p.clone()),
            Some(p) => return Err(err(key("preprocess"), format!("{p} is not an object"))),
        };
        let topic = |k: &str, default: String| -> Result<String, ConfigError> {
            let t = text(v.get(k), &key(k))?.map_or(default, str::to_string);
            validate_topic(&t).map_err(|e| err(key(k), e.to_string()))?;
            Ok(t)
        };
        let request_topic = topic("requestTopic", default_request_topic(name))?;
        let response_topic = topic("responseTopic", default_response_topic(name))?;
        if request_topic == response_topic {
            return Err(err(
                key("responseTopic"),
                "is the request topic too: answers would arrive as requests",
            ));
        }
        Ok(ModelConfig {
            artifact,
            threads: count(v.get("threads"), &key("threads"))?,
            backend,
            preprocess,
            request_topic,
            response_topic,
        })
    }
}

fn parse_artifact(
    artifact: &str,
    component: Option<&str>,
    key: &str,
) -> Result<ArtifactRef, ConfigError> {
    let relative = |file: &str| -> Result<String, ConfigError> {
        let file = file.trim_start_matches('/');
        let p = Path::new(file);
        if file.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(err(
                key,
                format!("{artifact:?}: name a file inside the component's artifacts (no '..')"),
            ));
        }
        Ok(file.to_string())
    };
    if let Some(rest) = artifact.strip_prefix('{') {
        let Some((var, file)) = rest.split_once('}') else {
            return Err(err(key, format!("{artifact:?}: unclosed '{{'")));
        };
        let (component, folder) = match var.rsplit_once(':') {
            Some((c, "path")) => (c.strip_suffix(":artifacts"), Folder::Artifacts),
            Some((c, "decompressedPath")) => (c.strip_suffix(":artifacts"), Folder::Decompressed),
            _ => (None, Folder::Artifacts),
        };
        let Some(component) = component.filter(|c| !c.is_empty()) else {
            return Err(err(
                key,
                format!(
                    "{artifact:?}: use {{<component>:artifacts:path}} or \
                     {{<component>:artifacts:decompressedPath}} followed by the file"
                ),
            ));
        };
        return Ok(ArtifactRef::Component {
            component: component.to_string(),
            folder,
            file: relative(file)?,
        });
    }
    if let Some(component) = component {
        return Ok(ArtifactRef::Component {
            component: component.to_string(),
            folder: Folder::Either,
            file: relative(artifact)?,
        });
    }
    if Path::new(artifact).is_absolute() {
        return Ok(ArtifactRef::Path(artifact.into()));
    }
    Err(err(
        key,
        format!(
            "{artifact:?} is relative: name the component that holds it in modelComponent, \
             write {{<component>:artifacts:path}}/{artifact}, or give an absolute path"
        ),
    ))
}

/// The model file `artifact` names on a core rooted at `root`, where `version_of` gives the
/// version of each component of the (new) deployment.
pub fn resolve(
    model: &str,
    artifact: &ArtifactRef,
    root: &Path,
    version_of: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, String> {
    let (component, folder, file) = match artifact {
        ArtifactRef::Path(p) => {
            return if p.is_file() {
                Ok(p.clone())
            } else {
                Err(format!("model {model}: file {} not found", p.display()))
            };
        }
        ArtifactRef::Component {
            component,
            folder,
            file,
        } => (component, *folder, file),
    };
    let Some(version) = version_of(component) else {
        return Err(format!(
            "model {model}: component {component}, which holds its file, is not deployed: \
             deploy it with the model (as a root or as a dependency)"
        ));
    };
    let packages = root.join("packages");
    let at = |dir: &str| packages.join(dir).join(component).join(&version).join(file);
    let candidates = match folder {
        Folder::Artifacts => vec![at("artifacts")],
        Folder::Decompressed => vec![at("artifacts-unarchived")],
        Folder::Either => vec![at("artifacts"), at("artifacts-unarchived")],
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!(
                "model {model}: {component} {version} has no artifact {file} (looked at {})",
                tried.join(" and ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_model_names_its_component_and_gets_default_topics() {
        let c = ServiceConfig::parse(&json!({
            "models": {"cls": {"modelComponent": "com.example.Model", "artifact": "m/model.onnx",
                               "threads": "2", "preprocess": {"width": 192}}},
            "poolSize": 3
        }))
        .unwrap();
        assert_eq!(c.pool_size, 3);
        let m = &c.models["cls"];
        assert_eq!(
            m.artifact,
            ArtifactRef::Component {
                component: "com.example.Model".into(),
                folder: Folder::Either,
                file: "m/model.onnx".into()
            }
        );
        assert_eq!(m.threads, 2);
        assert_eq!(m.request_topic, "lichen/inference/cls/request");
        assert_eq!(m.response_topic, "lichen/inference/cls/response");
        assert_eq!(m.preprocess, Some(json!({"width": 192})));
        assert_eq!(
            c.model_components().collect::<Vec<_>>(),
            ["com.example.Model"]
        );
        // Nothing configured: no models, a pool sized to the device.
        assert_eq!(
            ServiceConfig::parse(&json!({})).unwrap(),
            ServiceConfig {
                models: BTreeMap::new(),
                pool_size: 0
            }
        );
    }

    #[test]
    fn recipe_variable_spellings_and_absolute_paths() {
        let parse = |a: &str| parse_artifact(a, None, "models.m.artifact");
        assert_eq!(
            parse("{variant.Model:artifacts:decompressedPath}/resnet/model.onnx").unwrap(),
            ArtifactRef::Component {
                component: "variant.Model".into(),
                folder: Folder::Decompressed,
                file: "resnet/model.onnx".into()
            }
        );
        assert_eq!(
            parse("{a.B:artifacts:path}/x.onnx").unwrap(),
            ArtifactRef::Component {
                component: "a.B".into(),
                folder: Folder::Artifacts,
                file: "x.onnx".into()
            }
        );
        assert_eq!(
            parse("/opt/m.onnx").unwrap(),
            ArtifactRef::Path("/opt/m.onnx".into())
        );
        for bad in [
            "m.onnx",
            "{a.B:artifacts:path}/../../etc/passwd",
            "{a.B:configuration:/x}/m",
            "{a.B:artifacts:path",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.key, "models.m.artifact", "{bad}");
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        let key = |v: Value| ServiceConfig::parse(&v).unwrap_err().key;
        assert_eq!(key(json!({"models": []})), "models");
        assert_eq!(key(json!({"poolSize": "many"})), "poolSize");
        assert_eq!(
            key(json!({"models": {"a/b": {"artifact": "/m"}}})),
            "models.a/b"
        );
        assert_eq!(key(json!({"models": {"m": {}}})), "models.m.artifact");
        assert_eq!(
            key(json!({"models": {"m": {"artifact": "/m", "threads": -1}}})),
            "models.m.threads"
        );
        assert_eq!(
            key(json!({"models": {"m": {"artifact": "/m", "backend": "dlr"}}})),
            "models.m.backend"
        );
        assert_eq!(
            key(json!({"models": {"m": {"artifact": "/m", "requestTopic": "a/#"}}})),
            "models.m.requestTopic"
        );
        assert_eq!(
            key(
                json!({"models": {"m": {"artifact": "/m", "responseTopic": "lichen/inference/m/request"}}})
            ),
            "models.m.responseTopic"
        );
        assert_eq!(
            key(
                json!({"models": {"a": {"artifact": "/m", "requestTopic": "t"},
                                  "b": {"artifact": "/m", "requestTopic": "t"}}})
            ),
            "models.b.requestTopic"
        );
    }

    #[test]
    fn files_are_found_in_the_deployed_version_of_the_component() {
        let root = tempfile::tempdir().unwrap();
        let art = root
            .path()
            .join("packages/artifacts/com.example.Model/1.2.0");
        let unz = root
            .path()
            .join("packages/artifacts-unarchived/com.example.Model/1.2.0/pkg");
        std::fs::create_dir_all(&art).unwrap();
        std::fs::create_dir_all(&unz).unwrap();
        std::fs::write(art.join("a.onnx"), b"x").unwrap();
        std::fs::write(unz.join("b.onnx"), b"y").unwrap();
        let version = |c: &str| (c == "com.example.Model").then(|| "1.2.0".to_string());
        let r = |a: &str, comp: Option<&str>| {
            resolve(
                "m",
                &parse_artifact(a, comp, "k").unwrap(),
                root.path(),
                version,
            )
        };
        assert_eq!(
            r("a.onnx", Some("com.example.Model")).unwrap(),
            art.join("a.onnx")
        );
        assert_eq!(
            r("pkg/b.onnx", Some("com.example.Model")).unwrap(),
            unz.join("b.onnx")
        );
        assert_eq!(
            r(
                "{com.example.Model:artifacts:decompressedPath}/pkg/b.onnx",
                None
            )
            .unwrap(),
            unz.join("b.onnx")
        );
        let missing = r("{com.example.Model:artifacts:path}/pkg/b.onnx", None).unwrap_err();
        assert!(missing.contains("has no artifact pkg/b.onnx"), "{missing}");
        let undeployed = r("a.onnx", Some("com.example.Other")).unwrap_err();
        assert!(
            undeployed.contains("com.example.Other") && undeployed.contains("not deployed"),
            "{undeployed}"
        );
    }
}
