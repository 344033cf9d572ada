//! Two reductions tract runs through general code that costs more than the arithmetic, taken
//! over for the layouts convolutional models give them:
//!
//! - `PlaneMaxPool`: max pooling over channel-first f32 planes without padding or dilation,
//!   as a vertical pass over whole rows (contiguous, vectorised) and then a horizontal one.
//!   tract's generic pooling spent 0.1 ms on rapidocr's one 2×2 pool of 200×2×96 values.
//! - `TrailingSum`: a sum over trailing axes (a global average pool's sum over each plane),
//!   with several partial sums per block so that the compiler vectorises it.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer};

use super::ops::{eval_f32, replace};

/// Max pooling over `planes` planes of `in_hw`, no padding, no dilation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PlaneMaxPool {
    out_shape: TVec<usize>,
    in_hw: [usize; 2],
    out_hw: [usize; 2],
    kernel_hw: [usize; 2],
    strides: [usize; 2],
}

impl Op for PlaneMaxPool {
    fn name(&self) -> StaticName {
        "PlaneMaxPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "in {:?} out {:?} kernel {:?} strides {:?}",
            self.in_hw, self.out_hw, self.kernel_hw, self.strides
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for PlaneMaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [h, w] = self.in_hw;
        let [oh, ow] = self.out_hw;
        let [kh, kw] = self.kernel_hw;
        let [sh, sw] = self.strides;
        eval_f32(&inputs[0], &self.out_shape, "max pool", |x, y| {
            ensure!(x.len() % (h * w) == 0, "max pool: {} values", x.len());
            let mut rows = vec![0f32; w];
            for (xp, yp) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow)) {
                for oy in 0..oh {
                    // Vertical: the max of the kernel's rows, over the whole width.
                    rows.copy_from_slice(&xp[oy * sh * w..][..w]);
                    for ky in 1..kh {
                        let row = &xp[(oy * sh + ky) * w..][..w];
                        rows.iter_mut().zip(row).for_each(|(m, v)| *m = m.max(*v));
                    }
                    // Horizontal: the max of each window of that.
                    let out = &mut yp[oy * ow..][..ow];
                    if kw == 2 && sw == 2 {
                        // The usual 2×2 pool, in a form the compiler vectorises.
                        for (o, pair) in out.iter_mut().zip(rows.chunks_exact(2)) {
                            *o = pair[0].max(pair[1]);
                        }
                    } else {
                        for (ox, o) in out.iter_mut().enumerate() {
                            let window = &rows[ox * sw..][..kw];
                            *o = window.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        }
                    }
                }
            }
            Ok(())
        })
    }
}

impl TypedOp for PlaneMaxPool {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }

    as_op!();
}

fn plane_max_pool(
    model: &TypedModel,
    node: &TypedNode,
    pool: &MaxPool,
) -> TractResult<Option<PlaneMaxPool>> {
    let spec = &pool.pool_spec;
    let fact = model.outlet_fact(node.inputs[0])?;
    let (Some(shape), Some(out)) = (
        fact.shape.as_concrete(),
        node.outputs[0].fact.shape.as_concrete(),
    ) else {
        return Ok(None);
    };
    let channel_first = matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW);
    let unpadded = match &spec.padding {
        PaddingSpec::Valid => true,
        PaddingSpec::Explicit(before, after) => before.iter().chain(after).all(|p| *p == 0),
        _ => false,
    };
    let taken = channel_first
        && unpadded
        && pool.with_index_outputs.is_none()
        && node.outputs.len() == 1
        && fact.datum_type == f32::datum_type()
        && spec.kernel_shape.len() == 2
        && spec.dilations().iter().all(|d| *d == 1)
        && shape.len() >= 3;
    if !taken {
        return Ok(None);
    }
    let in_hw = [shape[shape.len() - 2], shape[shape.len() - 1]];
    let out_hw = [out[out.len() - 2], out[out.len() - 1]];
    let kernel_hw = [spec.kernel_shape[0], spec.kernel_shape[1]];
    let strides = [spec.strides()[0], spec.strides()[1]];
    // Every window must lie inside the plane (it does without padding; checked all the same).
    let fits =
        (0..2).all(|a| out_hw[a] == 0 || (out_hw[a] - 1) * strides[a] + kernel_hw[a] <= in_hw[a]);
    if !fits || out_hw.contains(&0) {
        return Ok(None);
    }
    Ok(Some(PlaneMaxPool {
        out_shape: out.into(),
        in_hw,
        out_hw,
        kernel_hw,
        strides,
    }))
}

/// The sum of each contiguous block of `block` values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TrailingSum {
    out_shape: TVec<usize>,
    block: usize,
}

impl Op for TrailingSum {
    fn name(&self) -> StaticName {
        "TrailingSum".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("blocks of {}", self.block)])
    }

    op_as_typed_op!();
}

/// Partial sums kept side by side: independent additions the compiler turns into one vector.
const PARTIALS: usize = 16;

fn block_sum(values: &[f32]) -> f32 {
    let mut partial = [0f32; PARTIALS];
    let mut chunks = values.chunks_exact(PARTIALS);
    for chunk in &mut chunks {
        partial.iter_mut().zip(chunk).for_each(|(p, v)| *p += v);
    }
    partial.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

impl EvalOp for TrailingSum {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        eval_f32(&inputs[0], &self.out_shape, "sum", |x, y| {
            ensure!(x.len() == y.len() * self.block, "sum: {} values", x.len());
            y.iter_mut()
                .zip(x.chunks_exact(self.block))
                .for_each(|(s, b)| *s = block_sum(b));
            Ok(())
        })
    }
}

impl TypedOp for TrailingSum {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }

    as_op!();
}

fn trailing_sum(
    model: &TypedModel,
    node: &TypedNode,
    reduce: &Reduce,
) -> TractResult<Option<TrailingSum>> {
    let fact = model.outlet_fact(node.inputs[0])?;
    let (Some(shape), Some(out)) = (
        fact.shape.as_concrete(),
        node.outputs[0].fact.shape.as_concrete(),
    ) else {
        return Ok(None);
    };
    let rank = shape.len();
    let mut axes: Vec<usize> = reduce.axes.to_vec();
    axes.sort_unstable();
    let trailing = !axes.is_empty()
        && axes
            .iter()
            .enumerate()
            .all(|(i, a)| *a == rank - axes.len() + i);
    if !matches!(reduce.reducer, Reducer::Sum) || fact.datum_type != f32::datum_type() || !trailing
    {
        return Ok(None);
    }
    let block: usize = shape[rank - axes.len()..].iter().product();
    if block == 0 {
        return Ok(None);
    }
    Ok(Some(TrailingSum {
        out_shape: out.into(),
        block,
    }))
}

/// Replaces the max pools and trailing sums this module takes in a decluttered model; returns
/// how many.
pub(crate) fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut count = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let op: Box<dyn TypedOp> = if let Some(pool) = node.op_as::<MaxPool>() {
            match plane_max_pool(model, node, pool)? {
                Some(op) => Box::new(op),
                None => continue,
            }
        } else if let Some(reduce) = node.op_as::<Reduce>() {
            match trailing_sum(model, node, reduce)? {
                Some(op) => Box::new(op),
                None => continue,
            }
        } else {
            continue;
        };
        let (input, name) = (node.inputs[0], format!("{}.planes", node.name));
        replace(model, input, op, name, OutletId::new(id, 0))?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::PoolSpec;

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.61).sin() * 3.0 * 8.0).round() / 8.0 - (i % 5) as f32 * 0.001)
            .collect()
    }

    fn run(m: TypedModel, shape: &[usize]) -> Vec<f32> {
        let x = Tensor::from_shape(shape, &values(shape.iter().product())).unwrap();
        super::super::ops::run_f32(m, x)
    }

    /// tract's answer and ours for a one-operator model; returns how many nodes were rewritten.
    fn compare(shape: &[usize], op: Box<dyn TypedOp>) -> usize {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let y = m.wire_node("op", op, &[x]).unwrap();
        m.select_output_outlets(&y).unwrap();
        let reference = run(m.clone().into_optimized().unwrap(), shape);
        let mut ours = m;
        ours.declutter().unwrap();
        let rewritten = rewrite(&mut ours).unwrap();
        ours.declutter().unwrap();
        let got = run(ours.into_optimized().unwrap(), shape);
        assert_eq!(reference.len(), got.len(), "{shape:?}");
        for (a, b) in reference.iter().zip(&got) {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "{shape:?}: {a} vs {b}"
            );
        }
        rewritten
    }

    fn max_pool(
        rank: usize,
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: PaddingSpec,
    ) -> Box<dyn TypedOp> {
        Box::new(MaxPool {
            pool_spec: PoolSpec {
                data_format: if rank == 4 {
                    DataFormat::NCHW
                } else {
                    DataFormat::CHW
                },
                kernel_shape: tvec!(kernel[0], kernel[1]),
                padding,
                dilations: None,
                strides: Some(tvec!(strides[0], strides[1])),
                input_channels: 3,
                output_channels: 3,
            },
            with_index_outputs: None,
        })
    }

    #[test]
    fn max_pools_match_tract() {
        assert_eq!(
            compare(
                &[2, 3, 6, 9],
                max_pool(4, [2, 2], [2, 2], PaddingSpec::Valid)
            ),
            1
        );
        assert_eq!(
            compare(&[3, 7, 11], max_pool(3, [3, 2], [1, 3], PaddingSpec::Valid)),
            1
        );
        assert_eq!(
            compare(
                &[1, 3, 2, 96],
                max_pool(4, [2, 2], [2, 2], PaddingSpec::Valid)
            ),
            1
        );
        // Padding (-inf borders) stays with tract.
        assert_eq!(
            compare(
                &[1, 3, 6, 9],
                max_pool(4, [3, 3], [1, 1], PaddingSpec::SameUpper)
            ),
            0
        );
    }

    #[test]
    fn trailing_sums_match_tract() {
        let sum = |axes: &[usize]| -> Box<dyn TypedOp> {
            Box::new(Reduce {
                axes: axes.into(),
                reducer: Reducer::Sum,
            })
        };
        assert_eq!(compare(&[88, 3, 96], sum(&[1, 2])), 1);
        assert_eq!(compare(&[2, 5, 7, 3], sum(&[2, 3])), 1);
        assert_eq!(compare(&[4, 37], sum(&[1])), 1);
        // A sum over a leading or middle axis stays with tract.
        assert_eq!(compare(&[4, 5, 6], sum(&[1])), 0);
        let max: Box<dyn TypedOp> = Box::new(Reduce {
            axes: tvec!(1),
            reducer: Reducer::Max,
        });
        assert_eq!(compare(&[4, 6], max), 0);
    }
}
