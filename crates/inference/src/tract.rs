//! The tract backend.
//!
//! A model is parsed once and decluttered with its open dimensions kept as symbols (`base`);
//! from it come a generic optimised plan, built at load so that unsupported operators fail the
//! load, and, lazily, plans specialised to the concrete input shapes seen (tract optimises
//! better when it knows every shape: fixed-size im2col, packed matrix products, folded shape
//! arithmetic). Each plan keeps a pool of run states so that a run reuses the scratch state
//! a previous run left instead of building one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::SimplePlan;
use tract_onnx::tract_core::runtime::RunOptions;

use crate::tensor::{Tensor, TensorData, TensorSpec};
use crate::{InferenceError, ModelOptions};

type Plan = Arc<TypedSimplePlan>;
/// A specialised runner, built by the first run that needs it (`None`: tract could not).
type Slot = Arc<OnceLock<Option<Arc<Runner>>>>;

/// A plan and the idle run states made from it.
struct Runner {
    plan: Plan,
    idle: Mutex<Vec<TypedSimpleState>>,
}

impl Runner {
    fn new(plan: Plan) -> Runner {
        Runner {
            plan,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let popped = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut state = match popped {
            Some(s) => s,
            None => TypedSimpleState::new(&self.plan)?,
        };
        let out = state.run(inputs)?;
        // A state whose run failed is dropped (above, by `?`): it may be half-way through a turn.
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(state);
        Ok(out)
    }
}

pub(crate) struct TractModel {
    /// Decluttered, open dimensions still symbolic; the source of specialised plans.
    base: TypedModel,
    generic: Arc<Runner>,
    run_options: RunOptions,
    max_specialized: usize,
    /// Input shapes → plan specialised to them (built once, by the first run that needs it).
    specialized: Mutex<HashMap<Vec<Vec<usize>>, Slot>>,
}

fn cause(e: impl std::fmt::Display) -> String {
    // `{:#}` renders an anyhow chain as "outer: inner: root", the whole cause on one line.
    format!("{e:#}")
}

impl TractModel {
    pub(crate) fn load(
        path: &Path,
        opts: &ModelOptions,
    ) -> Result<(TractModel, Vec<TensorSpec>, Vec<TensorSpec>), String> {
        let parsed = tract_onnx::onnx().model_for_path(path).map_err(cause)?;
        let base = parsed
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(|e| format!("cannot prepare the model: {}", cause(e)))?;
        let inputs = specs(&base, base.input_outlets().map_err(cause)?, true)?;
        let outputs = specs(&base, base.output_outlets().map_err(cause)?, false)?;
        let threads = opts.resolved_threads();
        let run_options = RunOptions {
            executor: (threads > 1).then(|| {
                tract_linalg::multithread::Executor::multithread_with_name(threads, "lichen-tract")
            }),
            ..RunOptions::default()
        };
        let generic = plan(base.clone(), &run_options)
            .map_err(|e| format!("cannot prepare the model: {}", cause(e)))?;
        let model = TractModel {
            base,
            generic: Arc::new(Runner::new(generic)),
            run_options,
            max_specialized: opts.specialized_shapes,
            specialized: Mutex::new(HashMap::new()),
        };
        Ok((model, inputs, outputs))
    }

    /// The runner for these input shapes: a specialised one where possible, else the generic.
    fn runner(&self, shapes: Vec<Vec<usize>>) -> Arc<Runner> {
        if self.max_specialized == 0 {
            return self.generic.clone();
        }
        let cell = {
            let mut map = self.specialized.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = map.get(&shapes) {
                c.clone()
            } else if map.len() < self.max_specialized {
                let c: Slot = Arc::new(OnceLock::new());
                map.insert(shapes.clone(), c.clone());
                c
            } else {
                return self.generic.clone();
            }
        };
        // Outside the map's lock: a slow specialisation holds up only runs of the same shapes.
        let runner =
            cell.get_or_init(|| self.specialize(&shapes).map(|p| Arc::new(Runner::new(p))));
        runner.clone().unwrap_or_else(|| self.generic.clone())
    }

    /// A plan with every symbolic input dimension bound to the given shapes' values; `None`
    /// where the inputs' dimensions are not plain symbols or tract cannot specialise.
    fn specialize(&self, shapes: &[Vec<usize>]) -> Option<Plan> {
        let mut subs: HashMap<Symbol, TDim> = HashMap::new();
        let outlets = self.base.input_outlets().ok()?;
        for (outlet, shape) in outlets.iter().zip(shapes) {
            let fact = self.base.outlet_fact(*outlet).ok()?;
            for (dim, value) in fact.shape.iter().zip(shape) {
                match dim {
                    TDim::Val(_) => {}
                    TDim::Sym(s) => {
                        let value = TDim::Val(*value as i64);
                        if subs
                            .insert(s.clone(), value.clone())
                            .is_some_and(|v| v != value)
                        {
                            return None; // one symbol, two values: let the generic plan report it
                        }
                    }
                    _ => return None,
                }
            }
        }
        let model = self.base.set_symbols(&subs).ok()?;
        plan(model, &self.run_options).ok()
    }

    pub(crate) fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferenceError> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
        let values = inputs
            .into_iter()
            .map(to_tract)
            .collect::<Result<TVec<TValue>, _>>()?;
        let runner = self.runner(shapes);
        let outputs = runner
            .run(values)
            .map_err(|e| InferenceError::Backend(cause(e)))?;
        outputs
            .into_iter()
            .map(|v| from_tract(v.into_tensor()))
            .collect()
    }
}

fn plan(model: TypedModel, options: &RunOptions) -> TractResult<Plan> {
    let model = model.into_optimized()?;
    SimplePlan::new_with_options(model, options)
}

fn specs(
    model: &TypedModel,
    outlets: &[OutletId],
    inputs: bool,
) -> Result<Vec<TensorSpec>, String> {
    outlets
        .iter()
        .map(|o| {
            let fact = model.outlet_fact(*o).map_err(cause)?;
            let node = model.node(o.node);
            let name = if inputs { None } else { model.outlet_label(*o) };
            Ok(TensorSpec {
                name: name.unwrap_or(&node.name).to_string(),
                dtype: dtype_name(fact.datum_type),
                shape: fact
                    .shape
                    .iter()
                    .map(|d| d.as_i64().map(|v| v as usize))
                    .collect(),
            })
        })
        .collect()
}

fn dtype_name(dt: DatumType) -> &'static str {
    match dt {
        DatumType::F32 => "f32",
        DatumType::I64 => "i64",
        DatumType::I32 => "i32",
        DatumType::U8 => "u8",
        DatumType::F16 => "f16",
        DatumType::F64 => "f64",
        DatumType::I8 => "i8",
        DatumType::I16 => "i16",
        DatumType::U16 => "u16",
        DatumType::U32 => "u32",
        DatumType::U64 => "u64",
        DatumType::Bool => "bool",
        DatumType::String => "string",
        _ => "other",
    }
}

fn to_tract(t: Tensor) -> Result<TValue, InferenceError> {
    let made = match t.data {
        TensorData::F32(v) => {
            tract_ndarray::ArrayD::from_shape_vec(t.shape, v).map(|a| a.into_tensor())
        }
        TensorData::I64(v) => {
            tract_ndarray::ArrayD::from_shape_vec(t.shape, v).map(|a| a.into_tensor())
        }
        TensorData::I32(v) => {
            tract_ndarray::ArrayD::from_shape_vec(t.shape, v).map(|a| a.into_tensor())
        }
        TensorData::U8(v) => {
            tract_ndarray::ArrayD::from_shape_vec(t.shape, v).map(|a| a.into_tensor())
        }
    };
    made.map(|t| t.into_tvalue())
        .map_err(|e| InferenceError::Input(e.to_string()))
}

/// Outputs in the four wire dtypes; others are widened (bool → u8, f16/f64 → f32, small ints →
/// i32, u32/u64 → i64) so that every model's outputs can be answered.
fn from_tract(t: tract_onnx::prelude::Tensor) -> Result<Tensor, InferenceError> {
    let shape = t.shape().to_vec();
    let wire = match t.datum_type() {
        DatumType::F32 | DatumType::I64 | DatumType::I32 | DatumType::U8 => t.datum_type(),
        DatumType::Bool => DatumType::U8,
        DatumType::F16 | DatumType::F64 => DatumType::F32,
        DatumType::I8 | DatumType::I16 | DatumType::U16 => DatumType::I32,
        DatumType::U32 | DatumType::U64 => DatumType::I64,
        other => {
            return Err(InferenceError::Backend(format!(
                "the model produced a {other:?} output, which has no wire dtype"
            )));
        }
    };
    let t = t
        .cast_to_dt(wire)
        .map_err(|e| InferenceError::Backend(cause(e)))?;
    let data = match wire {
        DatumType::F32 => TensorData::F32(elements(&t)?),
        DatumType::I64 => TensorData::I64(elements(&t)?),
        DatumType::I32 => TensorData::I32(elements(&t)?),
        _ => TensorData::U8(elements(&t)?),
    };
    Ok(Tensor { shape, data })
}

fn elements<D: Datum + Copy>(t: &tract_onnx::prelude::Tensor) -> Result<Vec<D>, InferenceError> {
    t.try_as_plain_ram()
        .and_then(|v| v.as_slice::<D>().map(|s| s.to_vec()))
        .map_err(|e| InferenceError::Backend(cause(e)))
}
