//! What this crate's own tract operators and rewrites share.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Evaluates an f32 operator: `compute(x, y)` over the contiguous input and a new output of
/// `shape` (zeroed), which it returns as the operator's one output.
pub(super) fn eval_f32(
    input: &TValue,
    shape: &[usize],
    what: &str,
    compute: impl FnOnce(&[f32], &mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let view = input.to_plain_array_view::<f32>()?;
    let x = view
        .as_slice()
        .with_context(|| format!("{what}: the input is not contiguous"))?;
    let mut y = Tensor::zero::<f32>(shape)?;
    {
        let mut output = y.to_plain_array_view_mut::<f32>()?;
        let y = output
            .as_slice_mut()
            .context("a new tensor is contiguous")?;
        compute(x, y)?;
    }
    Ok(tvec!(y.into_tvalue()))
}

/// Puts `op`, fed from `input`, in the place of `replaced` (whose consumers now read `op`'s
/// output). The nodes it stood for are left for the next declutter to drop.
pub(super) fn replace(
    model: &mut TypedModel,
    input: OutletId,
    op: impl Into<Box<dyn TypedOp>>,
    name: String,
    replaced: OutletId,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, input)?;
    let y = patch.wire_node(name, op, &[x])?;
    patch.shunt_outside(model, replaced, y[0])?;
    patch.apply(model)
}

/// Runs a one-input f32 model; its first output's values.
#[cfg(test)]
pub(super) fn run_f32(model: TypedModel, x: Tensor) -> Vec<f32> {
    let out = SimplePlan::new(model)
        .unwrap()
        .run(tvec!(x.into_tvalue()))
        .unwrap();
    out[0]
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}
