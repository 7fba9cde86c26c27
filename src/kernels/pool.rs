//! Max and average 2D pooling on the CPU device, forward and backward.
//!
//! burn-flex pools one output element at a time: for each it recomputes the window's bounds,
//! divides, and (max) tests every value for NaN and writes an i64 index next to it, none of it
//! vectorised (measured: ~30% of the FID Inception forward, whose blocks average- and
//! max-pool 3x3 maps of up to 2048 channels; ~6% of a `tiny` phase-1 step). Here a pooling
//! window is separable: each plane is reduced along its rows into a scratch (`[h, ow]`), then
//! the scratch's rows are reduced into the output rows, whole rows at a time (vectorised), and
//! an average divides by the window's count, itself a product of one count per axis.
//!
//! Semantics are PyTorch's (and burn's): max propagates NaN and its gradient goes to the first
//! maximum of the window in row-major order (the last NaN); average divides by the number of
//! valid inputs or, with `count_include_pad`, by the window's extent clipped to the padded map.
//! An average sums rows first, so its rounding differs from a row-major sum by an ulp or so.
//!
//! The backward of max pooling finds the argmax again from the input instead of storing i64
//! indices (half the memory of burn's autodiff, which keeps them). Other devices, dilation,
//! `ceil_mode` and asymmetric padding take burn's ops: [`max_pool2d`] and [`avg_pool2d`]
//! dispatch.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::module::{avg_pool2d as burn_avg_pool2d, max_pool2d as burn_max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};
use rayon::prelude::*;

use super::simd::simd_dispatch;
use super::{on_cpu, wrap};

/// One pooling problem's options, symmetric padding, no dilation, floor mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolSpec {
    /// Max (else average) pooling.
    max: bool,
    /// Average: divide by the window clipped to the padded map (else by its valid inputs).
    count_include_pad: bool,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
}

/// Pooling ops the CPU device gets from us (see the module doc).
#[backend_extension(Autodiff, Flex)]
pub trait PoolKernels: Backend {
    /// Max or average pooling of an NCHW map.
    fn pool2d(x: FloatTensor<Self>, spec: PoolSpec) -> FloatTensor<Self>;

    /// The input gradient of max pooling, given the input and the output's gradient.
    fn max_pool2d_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: PoolSpec,
    ) -> FloatTensor<Self>;

    /// The input gradient of average pooling (input shape `x_shape`), given the output's
    /// gradient.
    fn avg_pool2d_grad(
        grad: FloatTensor<Self>,
        x_shape: [usize; 4],
        spec: PoolSpec,
    ) -> FloatTensor<Self>;
}

/// Which inputs one output index reads along one axis, and the average's count for it.
struct Axis {
    /// Valid inputs `lo[o]..hi[o]`.
    lo: Vec<usize>,
    hi: Vec<usize>,
    /// The divisor's factor for this axis.
    count: Vec<usize>,
}

impl Axis {
    fn new(size: usize, d: usize, spec: &PoolSpec) -> Self {
        let (k, s, p) = (spec.kernel[d], spec.stride[d], spec.padding[d]);
        let out = (size + 2 * p - k) / s + 1;
        let (mut lo, mut hi, mut count) = (vec![0; out], vec![0; out], vec![0; out]);
        for o in 0..out {
            // The window in padded coordinates is [o s, o s + k); shifted by -p onto the map.
            let start = o * s;
            lo[o] = start.saturating_sub(p).min(size);
            hi[o] = (start + k).saturating_sub(p).min(size);
            count[o] = if spec.count_include_pad {
                (start + k).min(size + 2 * p) - start
            } else {
                hi[o] - lo[o]
            };
        }
        Self { lo, hi, count }
    }

    fn len(&self) -> usize {
        self.lo.len()
    }
}

/// Output size along one axis, `None` where the window does not fit.
fn out_size(size: usize, k: usize, s: usize, p: usize) -> Option<usize> {
    (size + 2 * p).checked_sub(k).map(|v| v / s + 1)
}

/// Output elements per parallel task (whole planes).
const TASK_FLOATS: usize = 1 << 14;

/// Runs `f(first_plane, out_planes)` over `out` in tasks of whole `plane`-sized planes.
fn per_planes(out: &mut [f32], plane: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let planes_per_task = (TASK_FLOATS / plane.max(1)).max(1);
    out.par_chunks_mut(planes_per_task * plane)
        .enumerate()
        .for_each(|(t, o)| f(t * planes_per_task, o));
}

impl PoolKernels for Flex {
    fn pool2d(x: FlexTensor, spec: PoolSpec) -> FlexTensor {
        let [n, c, h, w] = x.shape().dims::<4>();
        let x = x.to_contiguous();
        let xs = x
            .as_slice::<f32>()
            .expect("f32 input (checked by the caller)");
        let (ah, aw) = (Axis::new(h, 0, &spec), Axis::new(w, 1, &spec));
        let (oh, ow) = (ah.len(), aw.len());
        let mut out = vec![0.0f32; n * c * oh * ow];
        per_planes(&mut out, oh * ow, |first, o| {
            let mut rows = vec![0.0f32; h * ow];
            let mut full = vec![0.0f32; (ow - 1) * spec.stride[1] + 1];
            for (i, op) in o.chunks_mut(oh * ow).enumerate() {
                let plane = first + i;
                let xp = &xs[plane * h * w..(plane + 1) * h * w];
                pool_plane(xp, op, &mut rows, &mut full, [w, ow], &ah, &aw, &spec);
            }
        });
        wrap(out, [n, c, oh, ow], DType::F32)
    }

    fn max_pool2d_grad(x: FlexTensor, grad: FlexTensor, spec: PoolSpec) -> FlexTensor {
        let [n, c, h, w] = x.shape().dims::<4>();
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let xs = x
            .as_slice::<f32>()
            .expect("f32 input (checked by the caller)");
        let gs = grad.as_slice::<f32>().expect("f32 gradient");
        let (ah, aw) = (Axis::new(h, 0, &spec), Axis::new(w, 1, &spec));
        let (oh, ow) = (ah.len(), aw.len());
        let mut dx = vec![0.0f32; n * c * h * w];
        per_planes(&mut dx, h * w, |first, d| {
            for (i, dp) in d.chunks_mut(h * w).enumerate() {
                let plane = first + i;
                let xp = &xs[plane * h * w..(plane + 1) * h * w];
                let gp = &gs[plane * oh * ow..(plane + 1) * oh * ow];
                for (r, gr) in gp.chunks(ow).enumerate() {
                    for (col, &g) in gr.iter().enumerate() {
                        let at = argmax(xp, w, (ah.lo[r], ah.hi[r]), (aw.lo[col], aw.hi[col]));
                        dp[at] += g;
                    }
                }
            }
        });
        wrap(dx, [n, c, h, w], DType::F32)
    }

    fn avg_pool2d_grad(grad: FlexTensor, [n, c, h, w]: [usize; 4], spec: PoolSpec) -> FlexTensor {
        let grad = grad.to_contiguous();
        let gs = grad.as_slice::<f32>().expect("f32 gradient");
        let (ah, aw) = (Axis::new(h, 0, &spec), Axis::new(w, 1, &spec));
        let (oh, ow) = (ah.len(), aw.len());
        let mut dx = vec![0.0f32; n * c * h * w];
        per_planes(&mut dx, h * w, |first, d| {
            for (i, dp) in d.chunks_mut(h * w).enumerate() {
                let plane = first + i;
                let gp = &gs[plane * oh * ow..(plane + 1) * oh * ow];
                for (r, gr) in gp.chunks(ow).enumerate() {
                    for (col, &g) in gr.iter().enumerate() {
                        let v = g / (ah.count[r] * aw.count[col]) as f32;
                        for row in ah.lo[r]..ah.hi[r] {
                            for t in &mut dp[row * w + aw.lo[col]..row * w + aw.hi[col]] {
                                *t += v;
                            }
                        }
                    }
                }
            }
        });
        wrap(dx, [n, c, h, w], DType::F32)
    }
}

/// Index (within the plane) of the window's first maximum in row-major order, or its last NaN
/// (PyTorch's rule).
fn argmax(xp: &[f32], w: usize, (r0, r1): (usize, usize), (c0, c1): (usize, usize)) -> usize {
    let (mut best, mut at) = (f32::NEG_INFINITY, r0 * w + c0);
    for row in r0..r1 {
        let start = row * w + c0;
        for (i, &v) in xp[start..row * w + c1].iter().enumerate() {
            let i = start + i;
            if v > best || v.is_nan() {
                best = v;
                at = i;
            }
        }
    }
    at
}

/// The max that propagates NaN.
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
}

/// Pools one `[h, w]` plane into `out` (`[oh, ow]`, `dims` = `[w, ow]`) through `rows`
/// (`[h, ow]` scratch) and `full` (`(ow - 1) * stride + 1` floats of scratch).
///
/// Along each row the window is reduced at every position, one contiguous (vectorised) pass per
/// tap, and a strided pooling keeps every `stride`-th: the taps read at the stride ran one
/// scalar element at a time (measured: max pooling ~10% of the FID Inception forward).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pool_plane_generic(
    xp: &[f32],
    out: &mut [f32],
    rows: &mut [f32],
    full: &mut [f32],
    dims: [usize; 2],
    ah: &Axis,
    aw: &Axis,
    spec: &PoolSpec,
) {
    let [w, ow] = dims;
    let init = if spec.max { f32::NEG_INFINITY } else { 0.0 };
    let (k, s, p) = (spec.kernel[1], spec.stride[1], spec.padding[1]);
    let n1 = (ow - 1) * s + 1;
    // Along each row: rows[r, o] = reduce over kw of x[r, o s + kw - p] where that is inside.
    for (xr, rr) in xp.chunks(w).zip(rows.chunks_mut(ow)) {
        let dense: &mut [f32] = if s == 1 { rr } else { &mut full[..n1] };
        dense.fill(init);
        for kw in 0..k {
            // Positions whose tap kw lands inside the row: p <= o + kw < w + p.
            let first = p.saturating_sub(kw);
            let end = (w + p).saturating_sub(kw).min(n1);
            if first < end {
                let x0 = first + kw - p;
                reduce_rows(
                    &mut dense[first..end],
                    &xr[x0..x0 + (end - first)],
                    spec.max,
                );
            }
        }
        if s > 1 {
            for (o, d) in rr.iter_mut().enumerate() {
                *d = full[o * s];
            }
        }
    }
    // Down the columns: out[o, :] = reduce over the window's rows of rows[r, :].
    for (o, orow) in out.chunks_mut(ow).enumerate() {
        let (lo, hi) = (ah.lo[o], ah.hi[o]);
        orow.copy_from_slice(&rows[lo * ow..(lo + 1) * ow]);
        for r in lo + 1..hi {
            reduce_rows(orow, &rows[r * ow..(r + 1) * ow], spec.max);
        }
        if !spec.max {
            divide_row(orow, ah.count[o], &aw.count);
        }
    }
}

simd_dispatch! {
    #[allow(clippy::too_many_arguments)]
    fn pool_plane(
        xp: &[f32],
        out: &mut [f32],
        rows: &mut [f32],
        full: &mut [f32],
        dims: [usize; 2],
        ah: &Axis,
        aw: &Axis,
        spec: &PoolSpec,
    ) => pool_plane_generic
}

/// `dst = max(dst, src)` (NaN wins) or `dst += src`, elementwise.
#[inline(always)]
fn reduce_rows(dst: &mut [f32], src: &[f32], max: bool) {
    if max {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = max_nan(*d, v);
        }
    } else {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d += v;
        }
    }
}

/// `row[j] /= count_row * counts[j]`.
#[inline(always)]
fn divide_row(row: &mut [f32], count_row: usize, counts: &[usize]) {
    for (d, &c) in row.iter_mut().zip(counts) {
        *d /= (count_row * c) as f32;
    }
}

impl<B: PoolKernels, C: CheckpointStrategy> PoolKernels for Autodiff<B, C> {
    fn pool2d(x: FloatTensor<Self>, spec: PoolSpec) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MaxPoolBackward;

        impl<B: PoolKernels> Backward<B, 1> for MaxPoolBackward {
            type State = (NodeId, PoolSpec);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, spec) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::max_pool2d_grad(x, grad, spec));
                }
            }
        }

        #[derive(Debug)]
        struct AvgPoolBackward;

        impl<B: PoolKernels> Backward<B, 1> for AvgPoolBackward {
            type State = ([usize; 4], PoolSpec);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (shape, spec) = ops.state;
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::avg_pool2d_grad(grad, shape, spec));
                }
            }
        }

        if spec.max {
            match MaxPoolBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = prep.checkpoint(&x);
                    prep.finish((state, spec), B::pool2d(x.into_primitive(), spec))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::pool2d(x.into_primitive(), spec)),
            }
        } else {
            let shape = x.shape().dims::<4>();
            match AvgPoolBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    prep.finish((shape, spec), B::pool2d(x.into_primitive(), spec))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::pool2d(x.into_primitive(), spec)),
            }
        }
    }

    fn max_pool2d_grad(
        _x: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _spec: PoolSpec,
    ) -> FloatTensor<Self> {
        unreachable!("the backward runs on the inner backend")
    }

    fn avg_pool2d_grad(
        _grad: FloatTensor<Self>,
        _x_shape: [usize; 4],
        _spec: PoolSpec,
    ) -> FloatTensor<Self> {
        unreachable!("the backward runs on the inner backend")
    }
}

/// The spec for `x` when our kernels apply (CPU device, f32, symmetric padding, the window
/// fits): else `None`.
fn spec_for(
    x: &Tensor<4>,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [(usize, usize); 2],
    max: bool,
    count_include_pad: bool,
) -> Option<PoolSpec> {
    let [_, _, h, w] = x.dims();
    let symmetric = padding.iter().all(|(a, b)| a == b);
    let fits = out_size(h, kernel[0], stride[0], padding[0].0).is_some()
        && out_size(w, kernel[1], stride[1], padding[1].0).is_some();
    // A window entirely inside the padding has no valid input (PyTorch refuses padding > k/2).
    let pad_ok = (0..2).all(|d| 2 * padding[d].0 <= kernel[d]);
    (on_cpu(&x.device()) && x.dtype() == DType::F32 && symmetric && fits && pad_ok).then_some(
        PoolSpec {
            max,
            count_include_pad,
            kernel,
            stride,
            padding: padding.map(|(a, _)| a),
        },
    )
}

fn pool(x: Tensor<4>, spec: PoolSpec) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as PoolKernels>::pool2d(x.into_dispatch(), spec))
}

/// `burn::tensor::module::max_pool2d`, through [`PoolKernels`] on the CPU device (no dilation,
/// floor mode, symmetric padding; otherwise burn's).
pub fn max_pool2d(x: Tensor<4>, options: MaxPoolOptions<2>) -> Tensor<4> {
    let ours = options.dilation == [1, 1] && !options.ceil_mode;
    match spec_for(
        &x,
        options.kernel_size,
        options.stride,
        options.padding,
        true,
        false,
    ) {
        Some(spec) if ours => pool(x, spec),
        _ => burn_max_pool2d(x, options),
    }
}

/// `burn::tensor::module::avg_pool2d`, through [`PoolKernels`] on the CPU device (floor mode,
/// symmetric padding; otherwise burn's).
pub fn avg_pool2d(x: Tensor<4>, options: AvgPoolOptions<2>) -> Tensor<4> {
    let spec = spec_for(
        &x,
        options.kernel_size,
        options.stride,
        options.padding,
        false,
        options.count_include_pad,
    );
    match spec {
        Some(spec) if !options.ceil_mode => pool(x, spec),
        _ => burn_avg_pool2d(x, options),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData};

    fn flat(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// The pooling shapes the project uses (VGG's 2x2/2, the tokenizer's 2x2 average,
    /// Inception's 3x3/1 padded average and max and 3x3/2 max) and odd ones (stride 2 with
    /// padding and a remainder, a 3x2 window, 1x1 maps): values and input gradients against
    /// burn's ops on the autodiff CPU device.
    #[test]
    fn pooling_matches_burn() {
        let device = Device::flex().autodiff();
        // (h, w, kernel, stride, padding)
        type Case = (usize, usize, [usize; 2], [usize; 2], [usize; 2]);
        let cases: [Case; 7] = [
            (8, 8, [2, 2], [2, 2], [0, 0]),
            (7, 9, [2, 2], [2, 2], [0, 0]),
            (9, 9, [3, 3], [1, 1], [1, 1]),
            (11, 10, [3, 3], [2, 2], [0, 0]),
            (10, 7, [3, 3], [2, 2], [1, 1]),
            (6, 5, [3, 2], [1, 2], [1, 1]),
            (1, 1, [1, 1], [1, 1], [0, 0]),
        ];
        for (h, w, kernel, stride, padding) in cases {
            let x0 = Tensor::<4>::random([2, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
            // Ties: a rounded copy has equal values inside windows (max must pick the first).
            let x0 = if h == 8 { (x0 * 2.0).round() } else { x0 };
            for kind in 0..3 {
                let max_options = MaxPoolOptions::new(kernel)
                    .with_stride(stride)
                    .with_padding(padding);
                let avg_options = AvgPoolOptions::new(kernel)
                    .with_stride(stride)
                    .with_padding(padding)
                    .with_count_include_pad(kind == 2);
                let pooled = |x: Tensor<4>, ours: bool| match (kind, ours) {
                    (0, true) => max_pool2d(x, max_options.clone()),
                    (0, false) => burn_max_pool2d(x, max_options.clone()),
                    (_, true) => avg_pool2d(x, avg_options.clone()),
                    (_, false) => burn_avg_pool2d(x, avg_options.clone()),
                };
                // A non-uniform output gradient, the same for both.
                let out_dims = pooled(x0.clone(), false).dims();
                let wts = Tensor::<4>::random(out_dims, Distribution::Default, &device);
                let run = |ours: bool| {
                    let x = x0.clone().require_grad();
                    let y = pooled(x.clone(), ours);
                    let grads = (y.clone() * wts.clone()).sum().backward();
                    (y.dims(), flat(y.detach()), flat(x.grad(&grads).unwrap()))
                };
                let (ours, theirs) = (run(true), run(false));
                assert_eq!(
                    ours.0, theirs.0,
                    "output shape, case {h}x{w} {kernel:?} kind {kind}"
                );
                for (a, b) in ours
                    .1
                    .iter()
                    .zip(&theirs.1)
                    .chain(ours.2.iter().zip(&theirs.2))
                {
                    assert!(
                        (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                        "{a} vs {b}: {h}x{w} {kernel:?}/{stride:?} pad {padding:?} kind {kind}"
                    );
                }
            }
        }
    }

    /// NaN propagates through max pooling as in PyTorch.
    #[test]
    fn max_pool_propagates_nan() {
        let device = Device::flex();
        let mut v = vec![0.0f32; 16];
        v[5] = f32::NAN;
        let x = Tensor::<4>::from_data(TensorData::new(v, [1, 1, 4, 4]), &device);
        let y = flat(max_pool2d(x, MaxPoolOptions::new([2, 2])));
        assert!(y[0].is_nan() && y[1..].iter().all(|v| *v == 0.0), "{y:?}");
    }
}
