//! The onnxruntime backend (cargo feature `onnxruntime`).
//!
//! onnxruntime is loaded at run time (`ort`'s `load-dynamic`) from the shared library named by
//! `ORT_DYLIB_PATH`, such as the one the `onnxruntime` Python wheel ships in
//! `onnxruntime/capi/`, so that nothing is downloaded or linked at build time. The CUDA
//! execution provider is asked for first and onnxruntime falls back to the CPU where the library
//! or the machine has none.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, TensorElementType, ValueType};

use crate::tensor::{Tensor, TensorData, TensorSpec};
use crate::{InferenceError, ModelOptions};

pub(crate) struct OrtModel {
    /// `ort` runs a session through `&mut`; runs of one model take turns (each may use
    /// `ModelOptions::threads` threads inside onnxruntime).
    session: Mutex<Session>,
    input_names: Vec<String>,
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process's onnxruntime environment, loading the library on first use.
fn environment() -> Result<&'static Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            let lib = std::env::var_os("ORT_DYLIB_PATH").ok_or(
                "set ORT_DYLIB_PATH to onnxruntime's shared library (the onnxruntime Python wheel \
                 ships it as onnxruntime/capi/libonnxruntime.so.*)",
            )?;
            let builder = ort::init_from(&lib).map_err(|e| {
                format!(
                    "cannot load onnxruntime from {}: {e}",
                    Path::new(&lib).display()
                )
            })?;
            builder
                .with_name("lichen")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("cannot start onnxruntime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl OrtModel {
    pub(crate) fn load(
        path: &Path,
        opts: &ModelOptions,
    ) -> Result<(OrtModel, Vec<TensorSpec>, Vec<TensorSpec>), String> {
        let env = environment()?;
        let threads = opts.resolved_threads();
        let text = |e: ort::Error<_>| e.to_string();
        let builder = Session::builder(env).map_err(|e| e.to_string())?;
        let builder = builder
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(text)?;
        let builder = builder.with_intra_threads(threads).map_err(text)?;
        let builder = builder.with_inter_threads(1).map_err(text)?;
        let mut builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().fail_silently()])
            .map_err(text)?;
        let session = builder.commit_from_file(path).map_err(|e| e.to_string())?;
        let spec = |o: &ort::value::Outlet| TensorSpec {
            name: o.name().to_string(),
            dtype: match o.dtype() {
                ValueType::Tensor { ty, .. } => dtype_name(*ty),
                _ => "other",
            },
            shape: o.dtype().tensor_shape().map_or_else(Vec::new, |s| {
                s.iter().map(|d| usize::try_from(*d).ok()).collect()
            }),
        };
        let inputs: Vec<TensorSpec> = session.inputs().iter().map(spec).collect();
        let outputs: Vec<TensorSpec> = session.outputs().iter().map(spec).collect();
        let input_names = inputs.iter().map(|s| s.name.clone()).collect();
        Ok((
            OrtModel {
                session: Mutex::new(session),
                input_names,
            },
            inputs,
            outputs,
        ))
    }

    pub(crate) fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferenceError> {
        let backend = |e: ort::Error| InferenceError::Backend(e.to_string());
        let mut feed: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (name, t) in self.input_names.iter().zip(inputs) {
            let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
            let value = match t.data {
                TensorData::F32(v) => {
                    ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
                }
                TensorData::I64(v) => {
                    ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
                }
                TensorData::I32(v) => {
                    ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
                }
                TensorData::U8(v) => {
                    ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
                }
            }
            .map_err(backend)?;
            feed.push((name.clone(), value));
        }
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(feed).map_err(backend)?;
        outputs.iter().map(|(_, v)| from_ort(&v)).collect()
    }
}

fn from_ort(v: &ort::value::DynValueRef<'_>) -> Result<Tensor, InferenceError> {
    let backend = |e: ort::Error| InferenceError::Backend(e.to_string());
    let Some(ty) = v.dtype().tensor_type() else {
        return Err(InferenceError::Backend(
            "the model produced a non-tensor output".into(),
        ));
    };
    let (shape, data) = match ty {
        TensorElementType::Float32 => {
            let (s, d) = v.try_extract_tensor::<f32>().map_err(backend)?;
            (s.to_vec(), TensorData::F32(d.to_vec()))
        }
        TensorElementType::Int64 => {
            let (s, d) = v.try_extract_tensor::<i64>().map_err(backend)?;
            (s.to_vec(), TensorData::I64(d.to_vec()))
        }
        TensorElementType::Int32 => {
            let (s, d) = v.try_extract_tensor::<i32>().map_err(backend)?;
            (s.to_vec(), TensorData::I32(d.to_vec()))
        }
        TensorElementType::Uint8 => {
            let (s, d) = v.try_extract_tensor::<u8>().map_err(backend)?;
            (s.to_vec(), TensorData::U8(d.to_vec()))
        }
        TensorElementType::Bool => {
            let (s, d) = v.try_extract_tensor::<bool>().map_err(backend)?;
            (
                s.to_vec(),
                TensorData::U8(d.iter().map(|b| u8::from(*b)).collect()),
            )
        }
        TensorElementType::Float64 => {
            let (s, d) = v.try_extract_tensor::<f64>().map_err(backend)?;
            (
                s.to_vec(),
                TensorData::F32(d.iter().map(|x| *x as f32).collect()),
            )
        }
        other => {
            return Err(InferenceError::Backend(format!(
                "the model produced a {other:?} output, which has no wire dtype"
            )));
        }
    };
    Ok(Tensor {
        shape: shape.iter().map(|d| *d as usize).collect(),
        data,
    })
}

fn dtype_name(ty: TensorElementType) -> &'static str {
    match ty {
        TensorElementType::Float32 => "f32",
        TensorElementType::Int64 => "i64",
        TensorElementType::Int32 => "i32",
        TensorElementType::Uint8 => "u8",
        TensorElementType::Float16 => "f16",
        TensorElementType::Float64 => "f64",
        TensorElementType::Int8 => "i8",
        TensorElementType::Int16 => "i16",
        TensorElementType::Uint16 => "u16",
        TensorElementType::Uint32 => "u32",
        TensorElementType::Uint64 => "u64",
        TensorElementType::Bool => "bool",
        TensorElementType::String => "string",
        _ => "other",
    }
}
