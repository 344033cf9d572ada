//! Inference engine: load an ONNX model once, run it from many threads.
//!
//! Duty: turn a model file into a [`Model`] that describes its inputs and outputs
//! ([`TensorSpec`]) and runs [`Tensor`]s through it, checking every input's dtype and shape
//! against the model first so that a bad request fails with a message naming the input. The
//! default backend is tract (pure Rust, `tract` module); the `onnxruntime` cargo feature adds
//! onnxruntime, loaded at run time from the shared library the Python wheel ships
//! (`ORT_DYLIB_PATH`). [`image`] turns encoded JPEG/PNG bytes into a model's input tensor;
//! [`top_k`] ranks scores. Between tract's declutter and optimisation, the tract backend
//! replaces operators tract runs slowly (written-out hard-swish, depth-wise convolutions, max
//! pools, per-plane sums) with its own; [`profile_operators`] shows where a model's time goes
//! with and without them.
//!
//! Architecture invariant: a [`Model`] is immutable after [`Model::load`]; `run` takes `&self`
//! and is safe to call from any number of threads at once (per-thread scratch state is pooled
//! inside, never shared between two runs in flight).
//! Architecture invariant: this crate does no I/O besides reading the model file it is given
//! (and, with the `onnxruntime` feature, loading that library); it knows nothing of components,
//! topics or IPC.
//!
//! ```no_run
//! use lichen_inference::{Model, ModelOptions, Tensor, TensorData};
//! let model = Model::load("model.onnx".as_ref(), &ModelOptions::default())?;
//! let input = Tensor { shape: vec![1, 3, 48, 192], data: TensorData::F32(vec![0.5; 3 * 48 * 192]) };
//! let outputs = model.run(vec![input])?;
//! let TensorData::F32(scores) = &outputs[0].data else { unreachable!() };
//! println!("{:?}", lichen_inference::top_k(scores, 1));
//! # Ok::<(), lichen_inference::InferenceError>(())
//! ```

mod error;
pub mod image;
#[cfg(feature = "onnxruntime")]
mod onnxruntime;
mod tensor;
mod tract;

pub use error::InferenceError;
pub use tensor::{Tensor, TensorData, TensorSpec};
pub use tract::{OperatorTime, profile_operators};

use std::path::Path;

/// Which engine runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// tract: pure Rust, always built in.
    #[default]
    Tract,
    /// onnxruntime through its shared library (cargo feature `onnxruntime`).
    #[serde(alias = "onnx-runtime", alias = "ort")]
    OnnxRuntime,
}

/// How a model is loaded and run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModelOptions {
    pub backend: Backend,
    /// Threads one run may use inside the engine; 0 = the device's cores.
    pub threads: usize,
    /// Distinct input shapes for which tract keeps a plan specialised to that shape (faster than
    /// the generic one); further shapes run on the generic plan (or, for models tract can only
    /// run with concrete shapes, replace the oldest). 0 disables specialisation.
    pub specialized_shapes: usize,
    /// Input shapes to prepare at load (one shape per input, in input order), so that the
    /// first run of each is as fast as the rest and a model that cannot run them fails the load.
    pub input_shapes: Vec<Vec<Vec<usize>>>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            backend: Backend::Tract,
            threads: 0,
            specialized_shapes: 8,
            input_shapes: Vec::new(),
        }
    }
}

impl ModelOptions {
    /// The thread count with 0 resolved to the device's cores.
    pub fn resolved_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// A loaded model. `Send + Sync`: share it with an `Arc` and call [`Model::run`] from any thread.
pub struct Model {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    engine: Engine,
}

enum Engine {
    Tract(Box<tract::TractModel>),
    #[cfg(feature = "onnxruntime")]
    Ort(onnxruntime::OrtModel),
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("backend", &self.backend())
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Model {
    /// Loads and prepares the model at `path`. Every failure (missing file, corrupt or truncated
    /// protobuf, operator the engine lacks) is [`InferenceError::Load`] naming the file.
    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Model, InferenceError> {
        let load_err = |cause: String| InferenceError::Load {
            path: path.to_path_buf(),
            cause,
        };
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(load_err("not a regular file".into())),
            Err(e) => return Err(load_err(e.to_string())),
        }
        match opts.backend {
            Backend::Tract => {
                let (engine, inputs, outputs) =
                    tract::TractModel::load(path, opts).map_err(load_err)?;
                Ok(Model {
                    inputs,
                    outputs,
                    engine: Engine::Tract(Box::new(engine)),
                })
            }
            #[cfg(feature = "onnxruntime")]
            Backend::OnnxRuntime => {
                let (engine, inputs, outputs) =
                    onnxruntime::OrtModel::load(path, opts).map_err(load_err)?;
                Ok(Model {
                    inputs,
                    outputs,
                    engine: Engine::Ort(engine),
                })
            }
            #[cfg(not(feature = "onnxruntime"))]
            Backend::OnnxRuntime => Err(load_err(
                "the onnxruntime backend is not built in (cargo feature `onnxruntime` is off); \
                 use the tract backend"
                    .into(),
            )),
        }
    }

    /// The engine running this model.
    pub fn backend(&self) -> Backend {
        match self.engine {
            Engine::Tract(_) => Backend::Tract,
            #[cfg(feature = "onnxruntime")]
            Engine::Ort(_) => Backend::OnnxRuntime,
        }
    }

    /// The model's inputs, in the order [`Model::run`] takes them.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The model's outputs, in the order [`Model::run`] returns them.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Runs the model on `inputs` (one per [`Model::inputs`], in that order). Each input's dtype
    /// and shape is checked first: a mismatch is [`InferenceError::Shape`] or
    /// [`InferenceError::Input`] naming it. A one-element tensor of shape `[1]` is accepted
    /// for a rank-0 (scalar) input.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferenceError> {
        let inputs = tensor::check_inputs(&self.inputs, inputs)?;
        match &self.engine {
            Engine::Tract(m) => m.run(inputs),
            #[cfg(feature = "onnxruntime")]
            Engine::Ort(m) => m.run(inputs),
        }
    }
}

/// The `k` highest scores with their indices, highest first (ties: lower index first; NaN
/// never ranks above a number).
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    let order = |a: &(usize, f32), b: &(usize, f32)| {
        let (x, y) = (a.1, b.1);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.0.cmp(&b.0),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => y.partial_cmp(&x).unwrap().then(a.0.cmp(&b.0)),
        }
    };
    let k = k.min(ranked.len());
    if k == 0 {
        return Vec::new();
    }
    if k < ranked.len() {
        ranked.select_nth_unstable_by(k - 1, order);
        ranked.truncate(k);
    }
    ranked.sort_by(order);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_ranks_highest_first() {
        let s = [0.1, 0.7, f32::NAN, 0.7, 0.05, 0.9];
        assert_eq!(top_k(&s, 3), vec![(5, 0.9), (1, 0.7), (3, 0.7)]);
        assert_eq!(top_k(&s, 0), vec![]);
        assert_eq!(top_k(&s, 100).len(), 6);
        assert!(top_k(&s, 100)[5].1.is_nan());
        assert_eq!(top_k(&[], 2), vec![]);
    }

    #[test]
    fn model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Model>();
    }

    #[test]
    fn options_deserialize_from_camel_case() {
        let o: ModelOptions =
            serde_json::from_str(r#"{"backend":"onnxruntime","threads":2}"#).unwrap();
        assert_eq!(o.backend, Backend::OnnxRuntime);
        assert_eq!(o.threads, 2);
        assert_eq!(o.specialized_shapes, 8);
    }
}
