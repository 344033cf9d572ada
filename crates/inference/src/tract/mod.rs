//! The tract backend.
//!
//! A model is parsed once (`source`, open dimensions named as symbols). At load, tract tries
//! to type and optimise it with those dimensions open (the generic plan); models whose shape
//! arithmetic tract can only fold with concrete sizes (a `Reshape` fed by `Shape`, a `Squeeze`
//! of a computed axis) get no generic plan and run on specialised ones only. A specialised plan
//! is built from `source` for the concrete input shapes of a run, by the first run with those
//! shapes, and kept (up to `ModelOptions::specialized_shapes`); tract optimises better when it
//! knows every shape (fixed-size im2col, packed matrix products, folded shape arithmetic).
//! Each plan keeps a pool of run states, so that a run reuses the scratch state an earlier
//! run left instead of building one.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::SimplePlan;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::unimpl::UnimplementedOp;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_hir::infer::Factoid;

use crate::tensor::{Tensor, TensorData, TensorSpec};

mod branches;
mod depthwise;
mod hardswish;
mod ops;
mod pool;
mod profile;
use crate::{InferenceError, ModelOptions};
pub use profile::{OperatorTime, profile_operators};

type Plan = Arc<TypedSimplePlan>;
/// A specialised runner, built by the first run that needs it (`Err`: why tract could not).
type Slot = Arc<OnceLock<Result<Arc<Runner>, String>>>;
/// What a specialised plan is specialised to: each input's shape, and for rank-0 integer
/// inputs their value too (folded into the plan as a constant, so that tract can resolve the
/// `If`s that such inputs select, as silero-vad's sample rate does).
type Key = Vec<(Vec<usize>, Option<i64>)>;

/// Bound on nested `If` levels inlined for one specialised plan.
const MAX_INLINE_ROUNDS: usize = 16;

/// A plan and the idle run states made from it.
struct Runner {
    plan: Plan,
    /// Inputs folded into the plan as constants: not passed to it.
    folded: Vec<bool>,
    idle: Mutex<Vec<TypedSimpleState>>,
}

impl Runner {
    fn new(plan: Plan, folded: Vec<bool>) -> Runner {
        Runner {
            plan,
            folded,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let inputs: TVec<TValue> = if self.folded.iter().any(|f| *f) {
            inputs
                .into_iter()
                .zip(&self.folded)
                .filter(|(_, f)| !**f)
                .map(|(v, _)| v)
                .collect()
        } else {
            inputs
        };
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

/// Specialised runners by input shapes, with their insertion order for eviction.
#[derive(Default)]
struct Specialized {
    slots: HashMap<Key, Slot>,
    order: VecDeque<Key>,
}

/// The ONNX graph of a model with top-level `If`s, kept to re-parse it with decided branches
/// inlined (see `branches`).
struct Branching {
    proto: tract_onnx::pb::ModelProto,
    outlets: HashMap<String, OutletId>,
    dir: Option<String>,
}

pub(crate) struct TractModel {
    /// As parsed, open input dimensions named; the source of every specialised plan.
    source: InferenceModel,
    branching: Option<Branching>,
    /// The plan with open dimensions kept open, where tract could build one.
    generic: Option<Arc<Runner>>,
    run_options: RunOptions,
    max_specialized: usize,
    specialized: Mutex<Specialized>,
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
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_path(path).map_err(cause)?;
        let dir = path.parent().and_then(|d| d.to_str()).map(str::to_string);
        let (mut source, outlets) = parse(&proto, dir.as_deref())?;
        let missing: Vec<String> = source
            .nodes()
            .iter()
            .filter(|n| n.op.as_op().downcast_ref::<UnimplementedOp>().is_some())
            .map(|n| format!("{} ({})", n.name, n.op.name()))
            .collect();
        if !missing.is_empty() {
            return Err(format!("tract does not implement: {}", missing.join(", ")));
        }
        let has_open_dims = name_open_dims(&mut source)?;
        let has_ifs = proto
            .graph
            .as_ref()
            .is_some_and(|g| g.node.iter().any(|n| n.op_type == "If"));
        let inputs = inference_specs(&source, true)?;
        let threads = opts.resolved_threads();
        let run_options = RunOptions {
            executor: (threads > 1).then(|| {
                tract_linalg::multithread::Executor::multithread_with_name(threads, "lichen-tract")
            }),
            ..RunOptions::default()
        };
        let generic = optimise(source.clone()).and_then(|m| {
            let outputs = typed_specs(&m)?;
            Ok((plan_for(m, &run_options)?, outputs))
        });
        let (generic, outputs) = match generic {
            Ok((plan, outputs)) => {
                let folded = vec![false; inputs.len()];
                (Some(Arc::new(Runner::new(plan, folded))), outputs)
            }
            // Only concrete shapes will do; the first run of each shape builds its plan.
            Err(_) if has_open_dims && opts.specialized_shapes > 0 => {
                let declared = proto
                    .graph
                    .as_ref()
                    .map(|g| g.output.as_slice())
                    .unwrap_or(&[]);
                (None, declared.iter().map(declared_spec).collect())
            }
            Err(e) => return Err(format!("cannot prepare the model: {}", cause(e))),
        };
        let branching = has_ifs.then_some(Branching {
            proto,
            outlets,
            dir,
        });
        let model = TractModel {
            source,
            branching,
            generic,
            run_options,
            max_specialized: opts.specialized_shapes,
            specialized: Mutex::new(Specialized::default()),
        };
        for shapes in &opts.input_shapes {
            let key = shapes.iter().map(|s| (s.clone(), None)).collect();
            model.runner(key).map_err(|e| {
                format!("cannot prepare the model for input shapes {shapes:?}: {e}")
            })?;
        }
        Ok((model, inputs, outputs))
    }

    /// The runner for these inputs: a specialised one where possible, else the generic.
    fn runner(&self, key: Key) -> Result<Arc<Runner>, String> {
        if self.max_specialized == 0 {
            return self.generic.clone().ok_or_else(|| "no plan".to_string());
        }
        let slot = {
            let mut sp = self.specialized.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = sp.slots.get(&key) {
                c.clone()
            } else {
                if sp.slots.len() >= self.max_specialized {
                    if let Some(g) = &self.generic {
                        return Ok(g.clone());
                    }
                    // No generic plan to fall back on: the oldest shapes make room.
                    if let Some(old) = sp.order.pop_front() {
                        sp.slots.remove(&old);
                    }
                }
                let c: Slot = Arc::new(OnceLock::new());
                sp.slots.insert(key.clone(), c.clone());
                sp.order.push_back(key.clone());
                c
            }
        };
        // Outside the map's lock: a slow specialisation holds up only runs of the same shapes.
        let built = slot.get_or_init(|| {
            let folded = key.iter().map(|(_, v)| v.is_some()).collect();
            self.specialize(&key)
                .map(|p| Arc::new(Runner::new(p, folded)))
        });
        match (built, &self.generic) {
            (Ok(r), _) => Ok(r.clone()),
            (Err(_), Some(g)) => Ok(g.clone()),
            (Err(e), None) => Err(e.clone()),
        }
    }

    /// A plan for exactly these input shapes (and scalar values).
    fn specialize(&self, key: &Key) -> Result<Plan, String> {
        let mut model = bind(self.source.clone(), key)?;
        if let Some(b) = &self.branching {
            // Each round inlines the `If`s the bound inputs decide; a taken branch may hold
            // `If`s of its own (decided by shapes computed inside it), hence the rounds.
            let mut current: Option<(tract_onnx::pb::ModelProto, HashMap<String, OutletId>)> = None;
            for _ in 0..MAX_INLINE_ROUNDS {
                let (proto, outlets) = current
                    .as_ref()
                    .map_or((&b.proto, &b.outlets), |(p, o)| (p, o));
                let mut probe = model.clone();
                // Errors are expected here (branches not taken); only the conditions matter.
                let _ = probe.analyse(true);
                let graph = proto.graph.as_ref().ok_or("the model has no graph")?;
                let decided = branches::decided(&probe, graph, outlets);
                if decided.is_empty() {
                    break;
                }
                let Some(inlined) = branches::inline(proto, &decided) else {
                    break;
                };
                let (mut source, outlets) = parse(&inlined, b.dir.as_deref())?;
                name_open_dims(&mut source)?;
                model = bind(source, key)?;
                current = Some((inlined, outlets));
            }
        }
        let model = optimise(model).map_err(cause)?;
        plan_for(model, &self.run_options).map_err(cause)
    }

    pub(crate) fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferenceError> {
        let key: Key = inputs
            .iter()
            .map(|t| {
                let value = match (&t.data, t.shape.is_empty()) {
                    (TensorData::I64(v), true) => Some(v[0]),
                    (TensorData::I32(v), true) => Some(i64::from(v[0])),
                    _ => None,
                };
                (t.shape.clone(), value)
            })
            .collect();
        let values = inputs
            .into_iter()
            .map(to_tract)
            .collect::<Result<TVec<TValue>, _>>()?;
        let runner = self.runner(key.clone()).map_err(|e| {
            let shapes: Vec<&Vec<usize>> = key.iter().map(|(s, _)| s).collect();
            InferenceError::Backend(format!(
                "cannot prepare the model for input shapes {shapes:?}: {e}"
            ))
        })?;
        let outputs = runner
            .run(values)
            .map_err(|e| InferenceError::Backend(cause(e)))?;
        outputs
            .into_iter()
            .map(|v| from_tract(v.into_tensor()))
            .collect()
    }
}

fn parse(
    proto: &tract_onnx::pb::ModelProto,
    dir: Option<&str>,
) -> Result<(InferenceModel, HashMap<String, OutletId>), String> {
    let parsed = tract_onnx::onnx().parse(proto, dir).map_err(cause)?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(format!(
            "unresolved graph inputs: {:?}",
            parsed.unresolved_inputs
        ));
    }
    Ok((parsed.model, parsed.outlets_by_name))
}

/// `model` with its inputs bound to `key`: each input gets its concrete shape, and inputs
/// with a value become constants and leave the model's inputs.
fn bind(mut model: InferenceModel, key: &Key) -> Result<InferenceModel, String> {
    for (ix, (shape, value)) in key.iter().enumerate() {
        let dt = model
            .input_fact(ix)
            .ok()
            .and_then(|f| f.datum_type.concretize())
            .ok_or_else(|| format!("input {ix} has no element type"))?;
        let fact = match value {
            Some(v) => {
                let t = tensor0(*v).cast_to_dt(dt).map_err(cause)?.into_owned();
                let node = model.inputs[ix].node;
                let konst = Const::new(t.clone().into_arc_tensor()).map_err(cause)?;
                model.node_mut(node).op = Box::new(konst);
                InferenceFact::from(t)
            }
            None => InferenceFact::dt_shape(dt, shape.iter().copied()),
        };
        model
            .set_outlet_fact(model.inputs[ix], fact)
            .map_err(cause)?;
    }
    // Constants are inputs no more (highest index first, so the others keep theirs).
    for ix in (0..key.len()).rev() {
        if key[ix].1.is_some() {
            model.inputs.remove(ix);
        }
    }
    Ok(model)
}

/// Gives every input dimension the model leaves unnamed (ONNX `?`, no `dim_param`) a symbol
/// of its own, so that tract can type the graph with it open; named ones are symbols already.
/// Types, declutters and optimises a model as tract's `into_optimized` does, with this crate's
/// own rewrites of what tract runs slowly (written-out hard-swish, depth-wise convolutions,
/// max pools and per-plane sums)
/// between the declutter and the optimisation.
fn optimise(model: InferenceModel) -> TractResult<TypedModel> {
    let mut model = model.into_typed()?;
    model.declutter()?;
    let rewritten =
        hardswish::fuse(&mut model)? + depthwise::rewrite(&mut model)? + pool::rewrite(&mut model)?;
    if rewritten > 0 {
        model.declutter()?;
    }
    model.optimize()?;
    Ok(model)
}

/// A model whose first timed run takes longer than this keeps the multi-threaded plan
/// without comparing: large models gain from the threads, and timing them would slow the load.
const CALIBRATION_CEILING_MS: f64 = 25.0;
/// Timed runs per plan when comparing.
const CALIBRATION_RUNS: usize = 5;

/// A plan for `model`. With more than one thread allowed, tract splits matrix products across
/// them; for small models on small devices the hand-offs cost more than they save (rapidocr's
/// classifier on two shared cores: 1.8 ms on two threads, 0.9 ms on one). So a plan whose input
/// shapes are all known is timed both ways on zero inputs and keeps the threads only if they
/// make it faster; the thread count is a ceiling, not a demand.
fn plan_for(model: TypedModel, options: &RunOptions) -> TractResult<Plan> {
    if options.executor.is_none() {
        return SimplePlan::new_with_options(model, options);
    }
    let model = Arc::new(model);
    let threaded = SimplePlan::new_with_options(model.clone(), options)?;
    let Some(inputs) = zero_inputs(&model) else {
        return Ok(threaded);
    };
    let single_options = RunOptions {
        executor: None,
        ..options.clone()
    };
    let single = SimplePlan::new_with_options(model, &single_options)?;
    match faster_of(&threaded, &single, &inputs) {
        Ok(true) => Ok(single),
        // A model that cannot run on zeros is left as configured (its real inputs decide).
        Ok(false) | Err(_) => Ok(threaded),
    }
}

/// Zero tensors of the model's input facts, if every input's shape is concrete.
fn zero_inputs(model: &TypedModel) -> Option<TVec<TValue>> {
    model
        .input_outlets()
        .ok()?
        .iter()
        .map(|outlet| {
            let fact = model.outlet_fact(*outlet).ok()?;
            let shape = fact.shape.as_concrete()?;
            tract_onnx::prelude::Tensor::zero_dt(fact.datum_type, shape)
                .ok()
                .map(|t| t.into_tvalue())
        })
        .collect()
}

/// Whether `single` runs `inputs` faster than `threaded` (medians of alternated runs).
fn faster_of(threaded: &Plan, single: &Plan, inputs: &TVec<TValue>) -> TractResult<bool> {
    let mut states = [
        TypedSimpleState::new(threaded)?,
        TypedSimpleState::new(single)?,
    ];
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..=CALIBRATION_RUNS {
        for (state, times) in states.iter_mut().zip(times.iter_mut()) {
            let started = std::time::Instant::now();
            state.run(inputs.clone())?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if round == 0 {
                // The first run of each warms caches and allocates scratch space.
                if ms > CALIBRATION_CEILING_MS {
                    return Ok(false);
                }
                continue;
            }
            times.push(ms);
        }
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let [threaded_ms, single_ms] = &mut times;
    Ok(median(single_ms) < median(threaded_ms))
}

/// Returns whether some input can vary between runs in a way a specialised plan binds: an
/// open dimension, or a rank-0 integer (whose value specialised plans fold).
fn name_open_dims(model: &mut InferenceModel) -> Result<bool, String> {
    let mut any = false;
    for ix in 0..model.inputs.len() {
        let mut fact = model.input_fact(ix).map_err(cause)?.clone();
        let name = model.node(model.inputs[ix].node).name.clone();
        if fact.shape.is_open() {
            return Err(format!(
                "input '{name}' has no declared rank; tract needs each input's rank"
            ));
        }
        if fact.datum_type.concretize().is_none() {
            return Err(format!("input '{name}' has no declared element type"));
        }
        let dims: Vec<Option<TDim>> = fact.shape.dims().map(|d| d.concretize()).collect();
        let scalar_int = dims.is_empty()
            && matches!(
                fact.datum_type.concretize(),
                Some(DatumType::I64 | DatumType::I32)
            );
        any |= scalar_int
            || dims
                .iter()
                .any(|d| d.as_ref().and_then(|d| d.as_i64()).is_none());
        let open: Vec<usize> = dims
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_none())
            .map(|(axis, _)| axis)
            .collect();
        if open.is_empty() {
            continue;
        }
        for axis in open {
            let sym = model.symbols.sym(&format!("{name}_{axis}"));
            fact.shape.set_dim(axis, TDim::Sym(sym));
        }
        model.set_input_fact(ix, fact).map_err(cause)?;
    }
    Ok(any)
}

/// An output as the ONNX file declares it.
fn declared_spec(info: &tract_onnx::pb::ValueInfoProto) -> TensorSpec {
    use tract_onnx::pb::tensor_proto::DataType;
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    let tensor = info
        .r#type
        .as_ref()
        .and_then(|t| t.value.as_ref())
        .map(|tract_onnx::pb::type_proto::Value::TensorType(t)| t);
    let dtype = match tensor.and_then(|t| DataType::try_from(t.elem_type).ok()) {
        Some(DataType::Float) => "f32",
        Some(DataType::Int64) => "i64",
        Some(DataType::Int32) => "i32",
        Some(DataType::Uint8) => "u8",
        Some(DataType::Float16) => "f16",
        Some(DataType::Double) => "f64",
        Some(DataType::Int8) => "i8",
        Some(DataType::Bool) => "bool",
        _ => "other",
    };
    let shape = tensor
        .and_then(|t| t.shape.as_ref())
        .map_or_else(Vec::new, |s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(v)) if v > 0 => Some(v as usize),
                    _ => None,
                })
                .collect()
        });
    TensorSpec {
        name: info.name.clone(),
        dtype,
        shape,
    }
}

/// Inputs or outputs as the parsed model declares them (symbols and unknowns → `None`).
fn inference_specs(model: &InferenceModel, inputs: bool) -> Result<Vec<TensorSpec>, String> {
    let outlets = if inputs {
        &model.inputs
    } else {
        &model.outputs
    };
    outlets
        .iter()
        .map(|o| {
            let fact = model.outlet_fact(*o).map_err(cause)?;
            Ok(TensorSpec {
                name: outlet_name(model, *o, inputs),
                dtype: fact.datum_type.concretize().map_or("other", dtype_name),
                shape: fact
                    .shape
                    .dims()
                    .map(|d| d.concretize().and_then(|d| d.as_i64()).map(|v| v as usize))
                    .collect(),
            })
        })
        .collect()
}

/// Outputs of a typed model (better informed than the declared ones: tract inferred them).
fn typed_specs(model: &TypedModel) -> TractResult<Vec<TensorSpec>> {
    model
        .outputs
        .iter()
        .map(|o| {
            let fact = model.outlet_fact(*o)?;
            Ok(TensorSpec {
                name: outlet_name(model, *o, false),
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

fn outlet_name<F: Fact + Clone + 'static, O>(
    model: &Graph<F, O>,
    o: OutletId,
    input: bool,
) -> String
where
    O: std::fmt::Debug + std::fmt::Display + AsRef<dyn Op> + AsMut<dyn Op> + Clone + 'static,
{
    let label = if input { None } else { model.outlet_label(o) };
    label.unwrap_or(&model.node(o.node).name).to_string()
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

#[cfg(test)]
mod plan_tests {
    use super::*;
    use tract_onnx::tract_core::ops::math;

    /// `x * x + x` on `shape`.
    fn model(shape: ShapeFact) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let sq = m.wire_node("sq", math::mul(), &[x, x]).unwrap()[0];
        let y = m.wire_node("y", math::add(), &[sq, x]).unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        m
    }

    #[test]
    fn a_plan_timed_both_ways_computes_the_same_values() {
        let options = RunOptions {
            executor: Some(tract_linalg::multithread::Executor::multithread(2)),
            ..RunOptions::default()
        };
        let concrete = model(ShapeFact::from_dims([2, 3]));
        assert_eq!(zero_inputs(&concrete).map(|i| i.len()), Some(1));
        let plan = plan_for(concrete.into_optimized().unwrap(), &options).unwrap();
        let x = tract_onnx::prelude::Tensor::from_shape(&[2, 3], &[1f32, 2., 3., -1., -2., 0.5])
            .unwrap();
        let out = plan.run(tvec!(x.into_tvalue())).unwrap();
        let got = out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        assert_eq!(got, [2., 6., 12., 0., 2., 0.75]);
    }

    #[test]
    fn open_shapes_are_not_timed() {
        let n = TDim::Sym(SymbolScope::default().sym("N"));
        let open = model(ShapeFact::from_dims([n, 3.into()]));
        assert!(zero_inputs(&open).is_none());
    }
}
