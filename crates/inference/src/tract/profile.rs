//! Time per operator kind, for finding what to make faster (`examples/profile.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::SimplePlan;
use tract_onnx::tract_core::plan::eval;

use super::{cause, optimise};

/// One operator kind's share of a run.
#[derive(Debug, Clone)]
pub struct OperatorTime {
    /// tract's name for the operator (`OptMatMul`, `DepthwiseRows`, …).
    pub operator: String,
    /// How many nodes of the plan run it.
    pub nodes: usize,
    /// Mean milliseconds per run, all those nodes together.
    pub ms: f64,
}

/// Runs the ONNX model at `path` on f32 inputs of `shapes` (deterministic values) `iterations`
/// times, single-threaded, with or without this crate's rewrites, and returns the time spent
/// in each operator kind, largest first, and the median run in milliseconds.
pub fn profile_operators(
    path: &Path,
    shapes: &[Vec<usize>],
    rewrites: bool,
    iterations: usize,
) -> Result<(Vec<OperatorTime>, f64), String> {
    let mut model = tract_onnx::onnx().model_for_path(path).map_err(cause)?;
    for (ix, shape) in shapes.iter().enumerate() {
        model = model
            .with_input_fact(ix, f32::fact(shape).into())
            .map_err(cause)?;
    }
    let typed = if rewrites {
        optimise(model)
    } else {
        model.into_optimized()
    }
    .map_err(cause)?;
    let plan = SimplePlan::new(typed).map_err(cause)?;
    let mut state = TypedSimpleState::new(&plan).map_err(cause)?;
    let inputs: TVec<TValue> = shapes
        .iter()
        .map(|shape| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.013).sin()).collect();
            Tensor::from_shape(shape, &values).map(|t| t.into_tvalue())
        })
        .collect::<TractResult<_>>()
        .map_err(cause)?;
    let mut runs = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let t = Instant::now();
        state.run(inputs.clone()).map_err(cause)?;
        runs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    runs.sort_by(f64::total_cmp);
    let median = runs[runs.len() / 2];
    let mut per_kind: HashMap<String, (std::collections::HashSet<usize>, f64)> = HashMap::new();
    for _ in 0..iterations.max(1) {
        state
            .run_plan_with_eval(inputs.clone(), |ctx, op_state, node, node_inputs| {
                let t = Instant::now();
                let out = eval(ctx, op_state, node, node_inputs);
                let entry = per_kind.entry(node.op.name().to_string()).or_default();
                entry.0.insert(node.id);
                entry.1 += t.elapsed().as_secs_f64() * 1e3;
                out
            })
            .map_err(cause)?;
    }
    let mut times: Vec<OperatorTime> = per_kind
        .into_iter()
        .map(|(operator, (nodes, total))| OperatorTime {
            operator,
            nodes: nodes.len(),
            ms: total / iterations.max(1) as f64,
        })
        .collect();
    times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok((times, median))
}
