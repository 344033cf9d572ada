//! The `lichen-inference` executable: the worker process of `lichen.Inference`. The core starts
//! it and speaks length-prefixed JSON frames (`cmd/core/inference/frame.rs`) over its stdin and
//! stdout: `load` replaces the loaded models, `run` answers one request. Models are loaded once
//! and shared by a pool of threads (`--pool-size`, 0 = the device's cores); the worker exits when
//! its stdin closes (the core stopped or let it go). Kept apart from `lichen` so the core carries
//! none of the engine.

#[allow(dead_code)] // the core's async reader is not used here
#[path = "cmd/core/inference/frame.rs"]
mod frame;

use base64::Engine as _;
use frame::{FromWorker, LoadOutcome, ModelSpec, ToWorker};
use lichen_inference::image::{Preprocess, preprocess};
use lichen_inference::{Backend, InferenceError, Model, ModelOptions, Tensor, TensorSpec};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::Instant;

/// Largest image file a request may name.
const MAX_IMAGE: u64 = 32 << 20;

struct Loaded {
    model: Model,
    preprocess: Option<Preprocess>,
}

/// The loaded models, or why each is not.
type Models = BTreeMap<String, Result<Arc<Loaded>, String>>;

struct Job {
    seq: u64,
    model: String,
    request: Value,
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let mut pool_size = 0usize;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().map(|v| v.parse::<usize>())) {
            ("--pool-size", Some(Ok(n))) => pool_size = n,
            _ => {
                eprintln!(
                    "usage: lichen-inference [--pool-size N]  (started by `lichen core`; speaks \
                     length-prefixed JSON frames on stdin/stdout)"
                );
                return std::process::ExitCode::from(2);
            }
        }
    }
    if pool_size == 0 {
        pool_size = std::thread::available_parallelism().map_or(1, |n| n.get());
    }
    let models: Arc<RwLock<Arc<Models>>> = Arc::default();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..pool_size {
        let (rx, models, out) = (rx.clone(), models.clone(), out.clone());
        std::thread::spawn(move || {
            loop {
                let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                let models = models.read().unwrap_or_else(|p| p.into_inner()).clone();
                let response = answer(&models, &job.model, &job.request);
                send(
                    &out,
                    &FromWorker::Answer {
                        seq: job.seq,
                        response,
                    },
                );
            }
        });
    }
    let mut stdin = std::io::stdin().lock();
    loop {
        match frame::read::<ToWorker>(&mut stdin) {
            Ok(Some(ToWorker::Load { seq, models: specs })) => {
                let (loaded, report) = load(specs);
                *models.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                send(
                    &out,
                    &FromWorker::Loaded {
                        seq,
                        models: report,
                    },
                );
            }
            Ok(Some(ToWorker::Run {
                seq,
                model,
                request,
            })) => {
                let _ = tx.send(Job {
                    seq,
                    model,
                    request,
                });
            }
            // The core closed the pipe: it stopped, or let this worker go.
            Ok(None) => return std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lichen-inference: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
}

fn send(out: &Mutex<std::io::Stdout>, msg: &FromWorker) {
    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = frame::write(&mut *out, msg) {
        // The core is gone (or the frame cannot be written): nothing left to answer to.
        eprintln!("lichen-inference: cannot answer: {e}");
        let _ = std::io::stderr().flush();
        std::process::exit(1);
    }
}

fn describe(specs: &[TensorSpec]) -> Vec<String> {
    specs
        .iter()
        .map(|s| {
            let dims: Vec<String> = s
                .shape
                .iter()
                .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
                .collect();
            format!("{} {} [{}]", s.name, s.dtype, dims.join(", "))
        })
        .collect()
}

fn load_one(spec: &ModelSpec) -> Result<Loaded, String> {
    let backend = match spec.backend.as_deref() {
        None | Some("tract") => Backend::Tract,
        Some("onnxruntime") => Backend::OnnxRuntime,
        Some(other) => {
            return Err(format!(
                "unknown backend {other:?}: use tract or onnxruntime"
            ));
        }
    };
    let preprocess = match &spec.preprocess {
        None => None,
        Some(p) => Some(
            serde_json::from_value::<Preprocess>(p.clone())
                .map_err(|e| format!("preprocess: {e}"))?,
        ),
    };
    let opts = ModelOptions {
        backend,
        threads: spec.threads,
        ..ModelOptions::default()
    };
    let model = Model::load(&spec.path, &opts).map_err(|e| e.to_string())?;
    Ok(Loaded { model, preprocess })
}

fn load(specs: BTreeMap<String, ModelSpec>) -> (Models, BTreeMap<String, LoadOutcome>) {
    let mut models = Models::new();
    let mut report = BTreeMap::new();
    for (name, spec) in specs {
        match load_one(&spec) {
            Ok(l) => {
                report.insert(
                    name.clone(),
                    LoadOutcome::Ok {
                        inputs: describe(l.model.inputs()),
                        outputs: describe(l.model.outputs()),
                    },
                );
                models.insert(name, Ok(Arc::new(l)));
            }
            Err(e) => {
                report.insert(name.clone(), LoadOutcome::Error(e.clone()));
                models.insert(name, Err(e));
            }
        }
    }
    (models, report)
}

/// The answer to publish for one request.
fn answer(models: &Models, name: &str, request: &Value) -> Value {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let started = Instant::now();
    match infer(models, name, request) {
        Ok(outputs) => json!({
            "id": id,
            "model": name,
            "outputs": outputs,
            "durationMs": started.elapsed().as_secs_f64() * 1000.0,
        }),
        Err((code, message)) => {
            json!({"id": id, "model": name, "error": {"code": code, "message": message}})
        }
    }
}

type Failure = (&'static str, String);

fn infer(models: &Models, name: &str, request: &Value) -> Result<Vec<Tensor>, Failure> {
    let m = match models.get(name) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(("ModelNotLoaded", format!("model {name} is not loaded: {e}"))),
        None => return Err(("ModelNotLoaded", format!("model {name} is not loaded"))),
    };
    let invalid = |m: String| ("InvalidRequest", m);
    let inputs = if let Some(image) = request.get("image") {
        let Some(p) = &m.preprocess else {
            return Err(invalid(format!(
                "model {name} takes no images: configure models.{name}.preprocess in \
                 lichen.Inference, or send \"inputs\" tensors"
            )));
        };
        let bytes = image_bytes(image)?;
        vec![preprocess(&bytes, p).map_err(|e| ("InvalidImage", e.to_string()))?]
    } else if let Some(inputs) = request.get("inputs") {
        serde_json::from_value::<Vec<Tensor>>(inputs.clone()).map_err(|e| {
            invalid(format!(
                "inputs: {e}; each input is {{\"shape\": [..], \"dtype\": \"f32\", \"data\": [..]}}"
            ))
        })?
    } else {
        return Err(invalid(
            "the request has neither \"inputs\" (tensors) nor \"image\" ({\"path\"} or {\"base64\"})"
                .into(),
        ));
    };
    m.model.run(inputs).map_err(|e| match e {
        InferenceError::Shape { .. } | InferenceError::Input(_) => ("InvalidInput", e.to_string()),
        _ => ("InferenceFailed", e.to_string()),
    })
}

/// The encoded image a request names: `{"path": "/abs/file.jpg"}` or `{"base64": "…"}`.
fn image_bytes(image: &Value) -> Result<Vec<u8>, Failure> {
    let invalid = |m: String| ("InvalidImage", m);
    if let Some(path) = image.get("path").and_then(Value::as_str) {
        let p = std::path::Path::new(path);
        if !p.is_absolute() {
            return Err(invalid(format!("image path {path:?} is not absolute")));
        }
        let meta = std::fs::metadata(p).map_err(|e| invalid(format!("image {path}: {e}")))?;
        if !meta.is_file() || meta.len() > MAX_IMAGE {
            return Err(invalid(format!(
                "image {path} is not a regular file of at most {MAX_IMAGE} bytes"
            )));
        }
        return std::fs::read(p).map_err(|e| invalid(format!("image {path}: {e}")));
    }
    if let Some(b64) = image.get("base64").and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| invalid(format!("image base64: {e}")));
    }
    Err(invalid(
        "\"image\" needs \"path\" (an absolute file name) or \"base64\" (the encoded file)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(v: &Value) -> &str {
        v["error"]["code"].as_str().unwrap_or("")
    }

    #[test]
    fn bad_requests_get_error_answers_that_echo_the_id() {
        let mut models = Models::new();
        models.insert(
            "broken".into(),
            Err("cannot load model /m.onnx: truncated".into()),
        );
        let a = answer(&models, "absent", &json!({"id": "r1", "inputs": []}));
        assert_eq!((a["id"].as_str(), code(&a)), (Some("r1"), "ModelNotLoaded"));
        let a = answer(&models, "broken", &json!({"id": 7, "inputs": []}));
        assert_eq!(a["id"], json!(7));
        assert!(
            a["error"]["message"]
                .as_str()
                .unwrap()
                .contains("truncated"),
            "{a}"
        );
    }

    #[test]
    fn image_references_are_checked_before_reading() {
        let failure = |v: Value| image_bytes(&v).unwrap_err();
        assert!(
            failure(json!({"path": "relative.jpg"}))
                .1
                .contains("not absolute")
        );
        assert!(
            failure(json!({"path": "/"}))
                .1
                .contains("not a regular file")
        );
        assert!(
            failure(json!({"path": "/no/such/image.png"}))
                .1
                .contains("/no/such/image.png")
        );
        assert!(failure(json!({"base64": "%%%"})).1.contains("base64"));
        assert_eq!(failure(json!({"url": "http://x"})).0, "InvalidImage");
        assert_eq!(image_bytes(&json!({"base64": "aGk="})).unwrap(), b"hi");
    }
}
