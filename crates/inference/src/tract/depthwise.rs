//! Depth-wise 2-D convolution over channel-first f32 data, computed a row of outputs at a time
//! with explicit vector accumulators.
//!
//! tract runs a depth-wise `Conv` through its generic `DepthWiseConv`, which walks the
//! kernel's zones one output at a time; on MobileNet-style models with short, wide feature
//! maps (rapidocr's classifier: 2–6 rows of 96) it spent a fifth of the model's time there.
//! Here each input plane is copied once into a zero-bordered buffer, and every output row is
//! computed in chunks of one vector (16 lanes with AVX-512, 8 with AVX2+FMA, chosen at run
//! time; 4 portable lanes elsewhere), several chunks at once so that independent FMA chains
//! hide each other's latency. A per-channel scale, shift and ReLU that follow the convolution
//! (a batch norm exported unfolded) are folded into its kernel and bias.
//!
//! Taken: 2-D kernels in OIHW, group = input channels = output channels, horizontal stride 1,
//! no dilation, constant kernel and bias, f32, NCHW or CHW with concrete shapes. Anything
//! else stays with tract.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::ops::{eval_f32, replace};

/// A depth-wise convolution with its kernel and bias (and anything folded into them) inside.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DepthwiseRows {
    /// The batch size for NCHW data; `None` for CHW.
    batch: Option<usize>,
    channels: usize,
    in_hw: [usize; 2],
    out_hw: [usize; 2],
    kernel_hw: [usize; 2],
    stride_h: usize,
    /// Zero rows above and columns to the left (those below and to the right follow from
    /// the output size).
    pad: [usize; 2],
    /// `[C, KH, KW]`.
    kernel: Arc<Tensor>,
    /// `[C]`.
    bias: Arc<Tensor>,
    relu: bool,
}

impl DepthwiseRows {
    fn output_shape(&self) -> TVec<usize> {
        let mut shape: TVec<usize> = tvec!(self.channels, self.out_hw[0], self.out_hw[1]);
        if let Some(n) = self.batch {
            shape.insert(0, n);
        }
        shape
    }
}

impl Op for DepthwiseRows {
    fn name(&self) -> StaticName {
        "DepthwiseRows".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "channels {} in {:?} out {:?} kernel {:?} vertical stride {} padding {:?} relu {}",
            self.channels,
            self.in_hw,
            self.out_hw,
            self.kernel_hw,
            self.stride_h,
            self.pad,
            self.relu
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DepthwiseRows {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let kernel = self.kernel.try_as_plain_ram()?;
        let bias = self.bias.try_as_plain_ram()?;
        let (kernel, bias) = (kernel.as_slice::<f32>()?, bias.as_slice::<f32>()?);
        let planes = self.batch.unwrap_or(1) * self.channels;
        let what = "depth-wise convolution";
        eval_f32(&inputs[0], &self.output_shape(), what, |x, y| {
            ensure!(
                x.len() == planes * self.in_hw[0] * self.in_hw[1],
                "{what}: {} values",
                x.len()
            );
            run(&Shape::of(self, planes), kernel, bias, x, y);
            Ok(())
        })
    }
}

impl TypedOp for DepthwiseRows {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(self.output_shape())))
    }

    as_op!();
}

/// The sizes the kernel loops over.
struct Shape {
    planes: usize,
    channels: usize,
    in_hw: [usize; 2],
    out_hw: [usize; 2],
    kernel_hw: [usize; 2],
    stride_h: usize,
    pad: [usize; 2],
    relu: bool,
}

impl Shape {
    fn of(op: &DepthwiseRows, planes: usize) -> Shape {
        Shape {
            planes,
            channels: op.channels,
            in_hw: op.in_hw,
            out_hw: op.out_hw,
            kernel_hw: op.kernel_hw,
            stride_h: op.stride_h,
            pad: op.pad,
            relu: op.relu,
        }
    }
}

fn run(s: &Shape, kernel: &[f32], bias: &[f32], x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (and so AVX2 and FMA).
            return unsafe { run_avx512(s, kernel, bias, x, y) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { run_avx2(s, kernel, bias, x, y) };
        }
    }
    run_lanes::<Portable>(s, kernel, bias, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512(s: &Shape, kernel: &[f32], bias: &[f32], x: &[f32], y: &mut [f32]) {
    run_lanes::<x86::Avx512>(s, kernel, bias, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(s: &Shape, kernel: &[f32], bias: &[f32], x: &[f32], y: &mut [f32]) {
    run_lanes::<x86::Avx2>(s, kernel, bias, x, y)
}

/// The few vector operations the kernel needs, at one width.
trait Lanes {
    type V: Copy;
    const W: usize;
    fn splat(v: f32) -> Self::V;
    /// Reads `W` values from `s[at..]`.
    fn load(s: &[f32], at: usize) -> Self::V;
    /// `a * b + c`
    fn madd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn relu(a: Self::V) -> Self::V;
    /// Writes `W` values to `s[at..]`.
    fn store(s: &mut [f32], at: usize, v: Self::V);
}

/// Four lanes in an array, which compilers vectorise where they can.
struct Portable;
impl Lanes for Portable {
    type V = [f32; 4];
    const W: usize = 4;
    #[inline(always)]
    fn splat(v: f32) -> [f32; 4] {
        [v; 4]
    }
    #[inline(always)]
    fn load(s: &[f32], at: usize) -> [f32; 4] {
        s[at..at + 4].try_into().unwrap()
    }
    #[inline(always)]
    fn madd(a: [f32; 4], b: [f32; 4], c: [f32; 4]) -> [f32; 4] {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn relu(a: [f32; 4]) -> [f32; 4] {
        a.map(|v| v.max(0.0))
    }
    #[inline(always)]
    fn store(s: &mut [f32], at: usize, v: [f32; 4]) {
        s[at..at + 4].copy_from_slice(&v)
    }
}

/// The x86 widths. Their methods use the instructions of `run_avx512` / `run_avx2`, which
/// they are inlined into and which are called only once the CPU is known to have them.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    /// One x86 width: its vector type, lane count and the intrinsics for each operation.
    macro_rules! x86_lanes {
        ($name:ident, $v:ty, $w:literal, $set1:ident, $loadu:ident, $fmadd:ident, $max:ident, $zero:ident, $storeu:ident) => {
            pub struct $name;
            impl Lanes for $name {
                type V = $v;
                const W: usize = $w;
                #[inline(always)]
                fn splat(v: f32) -> $v {
                    unsafe { $set1(v) }
                }
                #[inline(always)]
                fn load(s: &[f32], at: usize) -> $v {
                    assert!(at + $w <= s.len());
                    unsafe { $loadu(s.as_ptr().add(at)) }
                }
                #[inline(always)]
                fn madd(a: $v, b: $v, c: $v) -> $v {
                    unsafe { $fmadd(a, b, c) }
                }
                #[inline(always)]
                fn relu(a: $v) -> $v {
                    unsafe { $max(a, $zero()) }
                }
                #[inline(always)]
                fn store(s: &mut [f32], at: usize, v: $v) {
                    assert!(at + $w <= s.len());
                    unsafe { $storeu(s.as_mut_ptr().add(at), v) }
                }
            }
        };
    }

    x86_lanes!(
        Avx512,
        __m512,
        16,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_max_ps,
        _mm512_setzero_ps,
        _mm512_storeu_ps
    );
    x86_lanes!(
        Avx2,
        __m256,
        8,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_max_ps,
        _mm256_setzero_ps,
        _mm256_storeu_ps
    );
}

#[inline(always)]
fn run_lanes<L: Lanes>(s: &Shape, kernel: &[f32], bias: &[f32], x: &[f32], y: &mut [f32]) {
    let [h, w] = s.in_hw;
    let [oh, ow] = s.out_hw;
    let [kh, kw] = s.kernel_hw;
    let [pt, pl] = s.pad;
    // Each input plane is copied into a zero-bordered one wide enough that every chunk of W
    // outputs reads whole vectors: no bounds checks or edge cases in the inner loop.
    let chunks = ow.div_ceil(L::W);
    let pw = chunks * L::W + kw - 1;
    let mut padded = vec![0f32; h * pw];
    let mut out_row = vec![0f32; chunks * L::W];
    let take = w.min(pw - pl);
    for plane in 0..s.planes {
        let c = plane % s.channels;
        let xc = &x[plane * h * w..][..h * w];
        let yc = &mut y[plane * oh * ow..][..oh * ow];
        for iy in 0..h {
            padded[iy * pw + pl..][..take].copy_from_slice(&xc[iy * w..][..take]);
        }
        for oy in 0..oh {
            let rows = Rows {
                padded: &padded,
                pw,
                h,
                top: (oy * s.stride_h) as isize - pt as isize,
                kh,
                kw,
                kernel: &kernel[c * kh * kw..][..kh * kw],
                bias: bias[c],
                relu: s.relu,
            };
            let mut chunk = 0;
            // Several chunks at once: their independent FMA chains hide each other's latency.
            while chunk < chunks {
                chunk += match chunks - chunk {
                    1 => rows.block::<L, 1>(chunk, &mut out_row),
                    2 | 3 => rows.block::<L, 2>(chunk, &mut out_row),
                    4 | 5 => rows.block::<L, 4>(chunk, &mut out_row),
                    6 | 7 => rows.block::<L, 6>(chunk, &mut out_row),
                    _ => rows.block::<L, 8>(chunk, &mut out_row),
                };
            }
            yc[oy * ow..][..ow].copy_from_slice(&out_row[..ow]);
        }
    }
}

/// One output row's inputs: the padded plane and the channel's kernel.
struct Rows<'a> {
    padded: &'a [f32],
    pw: usize,
    h: usize,
    /// The input row under the kernel's first row (negative in the top padding).
    top: isize,
    kh: usize,
    kw: usize,
    kernel: &'a [f32],
    bias: f32,
    relu: bool,
}

impl Rows<'_> {
    /// Computes chunks `first..first + B` of the output row into `out`; returns B.
    #[inline(always)]
    fn block<L: Lanes, const B: usize>(&self, first: usize, out: &mut [f32]) -> usize {
        let mut acc = [L::splat(self.bias); B];
        for ky in 0..self.kh {
            let iy = self.top + ky as isize;
            if iy < 0 || iy >= self.h as isize {
                continue; // a padding row adds nothing
            }
            let row =
                &self.padded[iy as usize * self.pw + first * L::W..][..B * L::W + self.kw - 1];
            for kx in 0..self.kw {
                let k = L::splat(self.kernel[ky * self.kw + kx]);
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = L::madd(k, L::load(row, b * L::W + kx), *a);
                }
            }
        }
        for (b, a) in acc.into_iter().enumerate() {
            L::store(
                out,
                (first + b) * L::W,
                if self.relu { L::relu(a) } else { a },
            );
        }
        B
    }
}

fn konst(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    model.outlet_fact(outlet).ok()?.konst.clone()
}

fn f32s(t: &Tensor) -> TractResult<Vec<f32>> {
    let t = t.cast_to::<f32>()?;
    Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
}

/// The operator a depth-wise `Conv` node becomes, if it is one this module takes.
fn from_conv(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
) -> TractResult<Option<DepthwiseRows>> {
    let spec = &conv.pool_spec;
    let batched = match spec.data_format {
        DataFormat::NCHW => true,
        DataFormat::CHW => false,
        _ => return Ok(None),
    };
    let fact = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = fact.shape.as_concrete() else {
        return Ok(None);
    };
    let c = spec.input_channels;
    let plain = conv.q_params.is_none()
        && fact.datum_type == f32::datum_type()
        && node.inputs.len() == 3
        && spec.kernel_shape.len() == 2
        && conv.kernel_fmt == KernelFormat::OIHW
        && conv.group == c
        && spec.output_channels == c
        && spec.dilations().iter().all(|d| *d == 1)
        && spec.strides()[1] == 1
        && shape.len() == if batched { 4 } else { 3 };
    if !plain {
        return Ok(None);
    }
    let (Some(kernel), Some(bias)) = (konst(model, node.inputs[1]), konst(model, node.inputs[2]))
    else {
        return Ok(None);
    };
    let [kh, kw] = [spec.kernel_shape[0], spec.kernel_shape[1]];
    if kernel.shape() != [c, 1, kh, kw] || !(bias.len() == c || bias.len() == 1) {
        return Ok(None);
    }
    let hw = &shape[shape.len() - 2..];
    let padding = spec.computed_padding(hw);
    let bias = if bias.len() == c {
        f32s(&bias)?
    } else {
        vec![bias.cast_to_scalar::<f32>()?; c]
    };
    Ok(Some(DepthwiseRows {
        batch: batched.then_some(shape[0]),
        channels: c,
        in_hw: [hw[0], hw[1]],
        out_hw: [padding[0].convoluted, padding[1].convoluted],
        kernel_hw: [kh, kw],
        stride_h: spec.strides()[0],
        pad: [padding[0].pad_before, padding[1].pad_before],
        kernel: Tensor::from_shape(&[c, kh, kw], &f32s(&kernel)?)?.into_arc_tensor(),
        bias: Tensor::from_shape(&[c], &bias)?.into_arc_tensor(),
        relu: false,
    }))
}

/// A constant that applies one value per channel (or one value to all), as `[C]` values.
fn per_channel(model: &TypedModel, outlet: OutletId, op: &DepthwiseRows) -> Option<Vec<f32>> {
    let k = konst(model, outlet)?;
    let values = f32s(&k).ok()?;
    if values.len() == 1 {
        return Some(vec![values[0]; op.channels]);
    }
    let rank = op.output_shape().len();
    let channel_axis = rank - 3;
    let per_channel = k.rank() == rank
        && k.shape()
            .iter()
            .enumerate()
            .all(|(axis, d)| *d == if axis == channel_axis { op.channels } else { 1 });
    per_channel.then_some(values)
}

/// Folds the node after `op`'s output, if it is a per-channel scale or shift or a ReLU that
/// keeps the output's shape; returns whether it did.
fn fold_next(
    model: &TypedModel,
    op: &mut DepthwiseRows,
    next: &TypedNode,
    other: OutletId,
) -> TractResult<bool> {
    if op.relu || next.inputs.len() != 2 || next.outputs.len() != 1 {
        return Ok(false);
    }
    if next.outputs[0].fact.shape.as_concrete() != Some(&*op.output_shape()) {
        return Ok(false);
    }
    let Some(values) = per_channel(model, other, op) else {
        return Ok(false);
    };
    let taps = op.kernel_hw[0] * op.kernel_hw[1];
    let mut kernel = f32s(&op.kernel)?;
    let mut bias = f32s(&op.bias)?;
    match next.op.name().as_ref() {
        "Mul" => {
            kernel
                .iter_mut()
                .enumerate()
                .for_each(|(i, k)| *k *= values[i / taps]);
            bias.iter_mut().zip(&values).for_each(|(b, s)| *b *= s);
        }
        "Add" => bias.iter_mut().zip(&values).for_each(|(b, t)| *b += t),
        "Max" if values.iter().all(|v| *v == 0.0) => op.relu = true,
        _ => return Ok(false),
    }
    op.kernel = Tensor::from_shape(op.kernel.shape(), &kernel)?.into_arc_tensor();
    op.bias = Tensor::from_shape(op.bias.shape(), &bias)?.into_arc_tensor();
    Ok(true)
}

/// Replaces the depth-wise convolutions this module takes in a decluttered model, with the
/// scales, shifts and ReLU that follow each; returns how many. The nodes replaced are left
/// for the next declutter to drop.
pub(crate) fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut count = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let Some(mut op) = from_conv(model, node, conv)? else {
            continue;
        };
        let mut last = OutletId::new(id, 0);
        loop {
            let successors = model.outlet_successors(last);
            if successors.len() != 1 || model.outputs.contains(&last) {
                break;
            }
            let next = model.node(successors[0].node);
            let Some(other) = next.inputs.get(1 - successors[0].slot.min(1)).copied() else {
                break;
            };
            if !fold_next(model, &mut op, next, other)? {
                break;
            }
            last = OutletId::new(next.id, 0);
        }
        let (input, name) = (
            model.node(id).inputs[0],
            format!("{}.rows", model.node(id).name),
        );
        replace(model, input, op, name, last)?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::math;

    struct Case {
        input: Vec<usize>,
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: PaddingSpec,
        dilations: [usize; 2],
        /// Adds a per-channel scale, shift and ReLU after the convolution.
        batch_norm: bool,
    }

    fn values(n: usize, salt: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.37 + salt).sin() * 1.7).round() * 0.25 + (i % 3) as f32 * 0.01)
            .collect()
    }

    fn model(case: &Case) -> TypedModel {
        let rank = case.input.len();
        let c = case.input[rank - 3];
        let [kh, kw] = case.kernel;
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(&case.input)).unwrap();
        let k = m
            .add_const(
                "k",
                Tensor::from_shape(&[c, 1, kh, kw], &values(c * kh * kw, 0.3)).unwrap(),
            )
            .unwrap();
        let b = m
            .add_const("b", Tensor::from_shape(&[c], &values(c, 1.1)).unwrap())
            .unwrap();
        let pool_spec = PoolSpec {
            data_format: if rank == 4 {
                DataFormat::NCHW
            } else {
                DataFormat::CHW
            },
            kernel_shape: tvec!(kh, kw),
            padding: case.padding.clone(),
            dilations: Some(tvec!(case.dilations[0], case.dilations[1])),
            strides: Some(tvec!(case.strides[0], case.strides[1])),
            input_channels: c,
            output_channels: c,
        };
        let conv = Conv {
            pool_spec,
            kernel_fmt: KernelFormat::OIHW,
            group: c,
            q_params: None,
        };
        let mut y = m.wire_node("dw", conv, &[x, k, b]).unwrap()[0];
        if case.batch_norm {
            let mut shape = vec![1; rank];
            shape[rank - 3] = c;
            let scale = m
                .add_const(
                    "scale",
                    Tensor::from_shape(&shape, &values(c, 2.0)).unwrap(),
                )
                .unwrap();
            let shift = m
                .add_const(
                    "shift",
                    Tensor::from_shape(&shape, &values(c, 3.0)).unwrap(),
                )
                .unwrap();
            let zero = m
                .add_const("zero", tensor0(0f32).broadcast_into_rank(rank).unwrap())
                .unwrap();
            y = m.wire_node("scale_by", math::mul(), &[scale, y]).unwrap()[0];
            y = m.wire_node("shift_by", math::add(), &[y, shift]).unwrap()[0];
            y = m.wire_node("relu", math::max(), &[y, zero]).unwrap()[0];
        }
        m.select_output_outlets(&[y]).unwrap();
        m
    }

    fn run_model(m: TypedModel, shape: &[usize]) -> Vec<f32> {
        let x = Tensor::from_shape(shape, &values(shape.iter().product(), 0.0)).unwrap();
        super::super::ops::run_f32(m, x)
    }

    /// Runs `case` through tract alone and through the rewrite; returns how many nodes were
    /// rewritten and the largest difference.
    fn compare(case: &Case) -> (usize, usize, f32) {
        let reference = run_model(model(case).into_optimized().unwrap(), &case.input);
        let mut m = model(case);
        m.declutter().unwrap();
        let rewritten = rewrite(&mut m).unwrap();
        m.declutter().unwrap();
        let left = m
            .nodes()
            .iter()
            .filter(|n| n.op.name() != "Source" && n.op.name() != "Const")
            .count();
        let ours = run_model(m.into_optimized().unwrap(), &case.input);
        assert_eq!(reference.len(), ours.len());
        let diff = reference
            .iter()
            .zip(&ours)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        (rewritten, left, diff)
    }

    #[test]
    fn matches_tract_with_padding_strides_batches_and_a_folded_batch_norm() {
        let cases = [
            // NCHW, two images, 5×5 'same', a width that leaves a partial vector.
            Case {
                input: vec![2, 6, 5, 37],
                kernel: [5, 5],
                strides: [1, 1],
                padding: PaddingSpec::SameUpper,
                dilations: [1, 1],
                batch_norm: true,
            },
            // CHW as tract's declutter leaves it, vertical stride 2, lopsided padding.
            Case {
                input: vec![7, 6, 96],
                kernel: [3, 3],
                strides: [2, 1],
                padding: PaddingSpec::Explicit(tvec!(1, 0), tvec!(0, 2)),
                dilations: [1, 1],
                batch_norm: false,
            },
            // Rows narrower than one vector, a kernel wider than the input, no padding.
            Case {
                input: vec![1, 3, 4, 5],
                kernel: [3, 5],
                strides: [1, 1],
                padding: PaddingSpec::Valid,
                dilations: [1, 1],
                batch_norm: true,
            },
            // Wide rows: more than eight vectors per row.
            Case {
                input: vec![4, 2, 200],
                kernel: [3, 3],
                strides: [1, 1],
                padding: PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
                dilations: [1, 1],
                batch_norm: false,
            },
        ];
        for case in &cases {
            let (rewritten, left, diff) = compare(case);
            assert_eq!(rewritten, 1, "input {:?}", case.input);
            assert!(diff <= 1e-4, "input {:?}: differs by {diff}", case.input);
            // The scale, shift and ReLU went into the one operator.
            assert_eq!(left, 1, "input {:?}", case.input);
        }
    }

    #[test]
    fn convolutions_it_does_not_take_stay_with_tract() {
        let cases = [
            Case {
                input: vec![1, 4, 9, 9],
                kernel: [3, 3],
                strides: [1, 2],
                padding: PaddingSpec::SameUpper,
                dilations: [1, 1],
                batch_norm: false,
            },
            Case {
                input: vec![1, 4, 9, 9],
                kernel: [3, 3],
                strides: [1, 1],
                padding: PaddingSpec::Valid,
                dilations: [2, 2],
                batch_norm: false,
            },
        ];
        for case in &cases {
            let (rewritten, _, diff) = compare(case);
            assert_eq!(rewritten, 0, "input {:?}", case.input);
            assert_eq!(diff, 0.0);
        }
    }

    #[test]
    fn every_vector_width_gives_the_same_values() {
        let shape = Shape {
            planes: 6,
            channels: 3,
            in_hw: [5, 41],
            out_hw: [3, 41],
            kernel_hw: [3, 5],
            stride_h: 2,
            pad: [1, 2],
            relu: true,
        };
        let kernel = values(3 * 15, 0.5);
        let bias = values(3, 0.9);
        let x = values(6 * 5 * 41, 0.1);
        let mut portable = vec![0f32; 6 * 3 * 41];
        run_lanes::<Portable>(&shape, &kernel, &bias, &x, &mut portable);
        // Computed directly from the definition.
        let mut direct = vec![0f32; 6 * 3 * 41];
        for plane in 0..6 {
            for oy in 0..3 {
                for ox in 0..41 {
                    let mut sum = bias[plane % 3];
                    for ky in 0..3 {
                        for kx in 0..5 {
                            let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox + kx) as isize - 2);
                            if (0..5).contains(&iy) && (0..41).contains(&ix) {
                                sum += kernel[(plane % 3) * 15 + ky * 5 + kx]
                                    * x[plane * 205 + iy as usize * 41 + ix as usize];
                            }
                        }
                    }
                    direct[plane * 123 + oy * 41 + ox] = sum.max(0.0);
                }
            }
        }
        let mut dispatched = vec![0f32; 6 * 3 * 41];
        run(&shape, &kernel, &bias, &x, &mut dispatched);
        for ((a, b), c) in direct.iter().zip(&portable).zip(&dispatched) {
            assert!(
                (a - b).abs() <= 1e-5 && (a - c).abs() <= 1e-5,
                "{a} {b} {c}"
            );
        }
        assert!(direct.iter().any(|v| *v > 0.5) && direct.contains(&0.0));
    }
}
