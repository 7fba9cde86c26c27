//! LayerNorm over the last dimension on the CPU device as one op: one pass per row forward,
//! one per row backward (with the parameters' gradients summed per block of rows).
//!
//! Through the dispatch device, burn's `LayerNorm` is its composed form, nine ops (two means,
//! subtraction, square, square root, division, the broadcast scale and shift), each a graph node
//! with its own backward and full-size intermediate tensors (measured on a `tiny` GPT training
//! step: ~12% of the time in those ops and their backward steps). Here, per row of `x` `[rows,
//! d]`, with `mu`, `var` the row's mean and (biased) variance, `r = 1 / sqrt(var + eps)`:
//! - forward: `y = (x - mu) r gamma + beta`;
//! - backward, with `xh = (x - mu) r` and `gh = dy gamma`: `dx = r (gh - mean(gh) - xh
//!   mean(gh xh))`, `dgamma = sum over rows of dy xh`, `dbeta = sum over rows of dy`. The
//!   backward recomputes `mu` and `r` from `x` instead of keeping them.
//!
//! GroupNorm is the same computation with a row per (image, group), `[C/G, H W]` contiguous in
//! NCHW, and the scale and shift per channel (a run of `H W` elements): burn composes it from
//! about ten ops too (the tokenizer's ResBlocks have two each, on maps up to 256x256).
//!
//! Other devices take burn's `LayerNorm` and `GroupNorm` unchanged: [`layer_norm`] and
//! [`group_norm`] dispatch on the device.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::{GroupNorm, LayerNorm};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::simd::{blocks_sum, lanes_sum, simd_dispatch};
use super::{contiguous_f32, f32_slice, on_cpu, par_output, wrap};

/// The LayerNorm epsilon of our models (burn's default), given to both `LayerNormConfig` and
/// [`layer_norm`].
pub const EPSILON: f64 = 1e-5;

/// LayerNorm ops the CPU device gets from us (see the module doc). Shapes: `x` `[rows, d]`,
/// `gamma` and `beta` `[d]`.
/// Which normalisation: LayerNorm over the last dimension of `[rows, d]` (scale and shift per
/// element of a row), or GroupNorm of `[B, C, S]` in this many groups (scale and shift per
/// channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Layer,
    Group(usize),
}

#[backend_extension(Autodiff, Flex)]
pub trait NormKernels: Backend {
    /// The normalisation `kind` of `x` with scale `gamma` and shift `beta`.
    fn norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        kind: Norm,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// The gradients `(dx, dgamma, dbeta)` of [`NormKernels::norm_rows`] given the output's
    /// gradient `grad`.
    fn norm_rows_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kind: Norm,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Rows per parallel task.
const ROWS: usize = 64;

impl NormKernels for Flex {
    fn norm_rows(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        kind: Norm,
        epsilon: f64,
    ) -> FlexTensor {
        match kind {
            Norm::Layer => layer_forward(x, gamma, beta, epsilon),
            Norm::Group(groups) => group_forward(x, gamma, beta, groups, epsilon),
        }
    }

    fn norm_rows_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        grad: FlexTensor,
        kind: Norm,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        match kind {
            Norm::Layer => layer_backward(x, gamma, grad, epsilon),
            Norm::Group(groups) => group_backward(x, gamma, grad, groups, epsilon),
        }
    }
}

/// LayerNorm forward on the CPU device.
fn layer_forward(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64) -> FlexTensor {
    let dtype = x.dtype();
    let [rows, d] = x.shape().dims::<2>();
    let [x, gamma, beta] = [x, gamma, beta].map(contiguous_f32);
    let (xs, g, b) = (f32_slice(&x), f32_slice(&gamma), f32_slice(&beta));
    let eps = epsilon as f32;
    let y = par_output(rows * d, ROWS * d, |c, out| {
        let xs = &xs[c * ROWS * d..][..out.len()];
        for (xr, yr) in xs.chunks(d).zip(out.chunks_mut(d)) {
            forward_row(xr, g, b, eps, yr);
        }
    });
    wrap(y, [rows, d], dtype)
}

/// LayerNorm backward on the CPU device.
fn layer_backward(
    x: FlexTensor,
    gamma: FlexTensor,
    grad: FlexTensor,
    epsilon: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let dtype = x.dtype();
    let [rows, d] = x.shape().dims::<2>();
    let [x, gamma, grad] = [x, gamma, grad].map(contiguous_f32);
    let (xs, g, gs) = (f32_slice(&x), f32_slice(&gamma), f32_slice(&grad));
    let eps = epsilon as f32;
    let mut dx = vec![0.0f32; rows * d];
    // Per task: its rows' dx, and its rows' partial sums of dgamma and dbeta.
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(ROWS * d)
        .enumerate()
        .map(|(c, dxc)| {
            let at = c * ROWS * d;
            let (mut dg, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
            for ((xr, gr), dxr) in xs[at..][..dxc.len()]
                .chunks(d)
                .zip(gs[at..][..dxc.len()].chunks(d))
                .zip(dxc.chunks_mut(d))
            {
                backward_row(xr, gr, g, eps, dxr, &mut dg, &mut db);
            }
            (dg, db)
        })
        .collect();
    let (mut dg, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
    for (pg, pb) in &partial {
        for i in 0..d {
            dg[i] += pg[i];
            db[i] += pb[i];
        }
    }
    (
        wrap(dx, [rows, d], dtype),
        wrap(dg, [d], dtype),
        wrap(db, [d], dtype),
    )
}

/// GroupNorm forward on the CPU device.
fn group_forward(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    groups: usize,
    epsilon: f64,
) -> FlexTensor {
    let dtype = x.dtype();
    let shape = x.shape();
    let [_, c, sp] = shape.dims::<3>();
    let [x, gamma, beta] = [x, gamma, beta].map(contiguous_f32);
    let (xs, g, b) = (f32_slice(&x), f32_slice(&gamma), f32_slice(&beta));
    let (per, eps) = (c / groups, epsilon as f32);
    let len = per * sp;
    let y = par_output(xs.len(), len, |row, out| {
        let x = &xs[row * len..][..len];
        let c0 = (row % groups) * per;
        let (mean, r) = moments(x, eps);
        for (ch, (xc, yc)) in x.chunks(sp).zip(out.chunks_mut(sp)).enumerate() {
            let a = r * g[c0 + ch];
            affine_row(xc, a, b[c0 + ch] - mean * a, yc);
        }
    });
    wrap(y, shape, dtype)
}

/// GroupNorm backward on the CPU device.
fn group_backward(
    x: FlexTensor,
    gamma: FlexTensor,
    grad: FlexTensor,
    groups: usize,
    epsilon: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let dtype = x.dtype();
    let shape = x.shape();
    let [_, c, sp] = shape.dims::<3>();
    let [x, gamma, grad] = [x, gamma, grad].map(contiguous_f32);
    let (xs, g, gs) = (f32_slice(&x), f32_slice(&gamma), f32_slice(&grad));
    let (per, eps) = (c / groups, epsilon as f32);
    let len = per * sp;
    let mut dx = vec![0.0f32; xs.len()];
    // Per row: its dx, and its channels' sums of dy xh and dy (dgamma, dbeta terms).
    let sums: Vec<Vec<(f64, f64)>> = dx
        .par_chunks_mut(len)
        .enumerate()
        .map(|(row, dxr)| {
            let (x, dy) = (&xs[row * len..][..len], &gs[row * len..][..len]);
            let c0 = (row % groups) * per;
            let (mean, r) = moments(x, eps);
            let mut per_channel = Vec::with_capacity(per);
            let (mut sum_gh, mut sum_ghxh) = (0.0f64, 0.0f64);
            for (ch, (xc, dyc)) in x.chunks(sp).zip(dy.chunks(sp)).enumerate() {
                let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
                dot_sums(xc, dyc, mean, &mut sdy, &mut sdyx);
                // sum dy xh = r sum dy (x - mean); not r (sum dy x - mean sum dy), which
                // cancels where the mean is large against the spread.
                let sdyxh = (r as f64) * sdyx;
                let gc = g[c0 + ch] as f64;
                sum_gh += gc * sdy;
                sum_ghxh += gc * sdyxh;
                per_channel.push((sdyxh, sdy));
            }
            let n = len as f64;
            let (mean_gh, mean_ghxh) = ((sum_gh / n) as f32, (sum_ghxh / n) as f32);
            for (ch, ((xc, dyc), dxc)) in x
                .chunks(sp)
                .zip(dy.chunks(sp))
                .zip(dxr.chunks_mut(sp))
                .enumerate()
            {
                // dx = r (dy g - mean_gh - xh mean_ghxh), xh = (x - mean) r
                let gc = g[c0 + ch];
                group_grad_row(xc, dyc, r * gc, r * mean_gh, r * r * mean_ghxh, mean, dxc);
            }
            per_channel
        })
        .collect();
    // Summed over the images in f64: each term is a sum over a map, and they can cancel.
    let (mut dg, mut db) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (row, channels) in sums.iter().enumerate() {
        let c0 = (row % groups) * per;
        for (ch, &(sdyxh, sdy)) in channels.iter().enumerate() {
            dg[c0 + ch] += sdyxh;
            db[c0 + ch] += sdy;
        }
    }
    let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    (
        wrap(dx, shape, dtype),
        wrap(f32s(dg), [c], dtype),
        wrap(f32s(db), [c], dtype),
    )
}

#[inline(always)]
fn affine_row_generic(x: &[f32], a: f32, b: f32, y: &mut [MaybeUninit<f32>]) {
    for (o, &v) in y.iter_mut().zip(x) {
        o.write(v * a + b);
    }
}

simd_dispatch! {
    /// `y = a x + b`.
    fn affine_row(x: &[f32], a: f32, b: f32, y: &mut [MaybeUninit<f32>]) => affine_row_generic
}

#[inline(always)]
fn dot_sums_generic(x: &[f32], dy: &[f32], mean: f32, sum_dy: &mut f64, sum_dy_x: &mut f64) {
    for (xb, db) in x.chunks(1024).zip(dy.chunks(1024)) {
        let (mut a, mut b) = ([0.0f32; 16], [0.0f32; 16]);
        for (i, (&v, &d)) in xb.iter().zip(db).enumerate() {
            a[i % 16] += d;
            b[i % 16] += d * (v - mean);
        }
        *sum_dy += a.iter().map(|&v| f64::from(v)).sum::<f64>();
        *sum_dy_x += b.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
}

simd_dispatch! {
    /// `sum_dy += sum(dy)`, `sum_dy_x += sum(dy (x - mean))`.
    fn dot_sums(x: &[f32], dy: &[f32], mean: f32, sum_dy: &mut f64, sum_dy_x: &mut f64)
        => dot_sums_generic
}

#[inline(always)]
fn group_grad_row_generic(
    x: &[f32],
    dy: &[f32],
    rg: f32,
    r_mean_gh: f32,
    rr_mean_ghxh: f32,
    mean: f32,
    dx: &mut [f32],
) {
    for ((o, &v), &d) in dx.iter_mut().zip(x).zip(dy) {
        *o = d * rg - r_mean_gh - (v - mean) * rr_mean_ghxh;
    }
}

simd_dispatch! {
    /// One channel's `dx = r g dy - r mean(gh) - (x - mean) r^2 mean(gh xh)`.
    fn group_grad_row(
        x: &[f32],
        dy: &[f32],
        rg: f32,
        r_mean_gh: f32,
        rr_mean_ghxh: f32,
        mean: f32,
        dx: &mut [f32],
    ) => group_grad_row_generic
}

/// The row's mean and `1 / sqrt(var + eps)` (two passes: the variance of the centred values;
/// sums in 16 f32 lanes per block of 1024, the blocks added in f64, so that GroupNorm's rows
/// of up to millions of elements keep their precision).
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = (blocks_sum(x, |b| lanes_sum(b.iter().copied())) / n) as f32;
    let sq = blocks_sum(x, |b| lanes_sum(b.iter().map(|v| (v - mean) * (v - mean))));
    (mean, 1.0 / ((sq / n) as f32 + eps).sqrt())
}

#[inline(always)]
fn forward_row_generic(x: &[f32], g: &[f32], b: &[f32], eps: f32, y: &mut [MaybeUninit<f32>]) {
    let (mean, r) = moments(x, eps);
    for (((o, &v), &gv), &bv) in y.iter_mut().zip(x).zip(g).zip(b) {
        o.write((v - mean) * r * gv + bv);
    }
}

simd_dispatch! {
    /// One row of the forward (see the module doc).
    fn forward_row(x: &[f32], g: &[f32], b: &[f32], eps: f32, y: &mut [MaybeUninit<f32>])
        => forward_row_generic
}

#[inline(always)]
fn backward_row_generic(
    x: &[f32],
    dy: &[f32],
    g: &[f32],
    eps: f32,
    dx: &mut [f32],
    dg: &mut [f32],
    db: &mut [f32],
) {
    let n = x.len() as f32;
    let (mean, r) = moments(x, eps);
    let mean_gh = lanes_sum(dy.iter().zip(g).map(|(a, b)| a * b)) / n;
    let mean_ghxh = lanes_sum(
        dy.iter()
            .zip(g)
            .zip(x)
            .map(|((a, b), v)| a * b * (v - mean) * r),
    ) / n;
    for i in 0..x.len() {
        let xh = (x[i] - mean) * r;
        dx[i] = r * (dy[i] * g[i] - mean_gh - xh * mean_ghxh);
        dg[i] += dy[i] * xh;
        db[i] += dy[i];
    }
}

simd_dispatch! {
    /// One row of the backward (see the module doc), adding its terms to `dg` and `db`.
    fn backward_row(
        x: &[f32],
        dy: &[f32],
        g: &[f32],
        eps: f32,
        dx: &mut [f32],
        dg: &mut [f32],
        db: &mut [f32],
    ) => backward_row_generic
}

impl<B: NormKernels, C: CheckpointStrategy> NormKernels for Autodiff<B, C> {
    fn norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        kind: Norm,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct NormBackward;

        impl<B: NormKernels> Backward<B, 3> for NormBackward {
            type State = (NodeId, NodeId, Norm, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_g, node_b] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, g_state, kind, epsilon) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
                let gamma: FloatTensor<B> = checkpointer.retrieve_node_output(g_state);
                let (dx, dg, db) = B::norm_rows_backward(x, gamma, grad, kind, epsilon);
                for (node, g) in [(node_x, dx), (node_g, dg), (node_b, db)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        match NormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let g_state = prep.checkpoint(&gamma);
                let out = B::norm_rows(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    kind,
                    epsilon,
                );
                prep.finish((x_state, g_state, kind, epsilon), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::norm_rows(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                kind,
                epsilon,
            )),
        }
    }

    /// The inner device's gradients, as untracked tensors (the op has no second derivative).
    fn norm_rows_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kind: Norm,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dg, db) = B::norm_rows_backward(
            x.into_primitive(),
            gamma.into_primitive(),
            grad.into_primitive(),
            kind,
            epsilon,
        );
        (
            Self::from_inner(dx),
            Self::from_inner(dg),
            Self::from_inner(db),
        )
    }
}

/// `norm.forward(x)` for a `norm` made with `epsilon` (burn's `LayerNorm` does not expose
/// it; our models use [`EPSILON`]): on the CPU device (with a shift, float32 input) one op over the rows of `x`'s leading
/// dimensions (see the module doc); burn's `LayerNorm` otherwise.
pub fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    let Some(beta) = norm.beta.as_ref() else {
        return norm.forward(x);
    };
    if !on_cpu(&x.device()) || x.dtype() != DType::F32 {
        return norm.forward(x);
    }
    let dims = x.dims();
    let d = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = Tensor::<2>::from_dispatch(<Dispatch as NormKernels>::norm_rows(
        x.reshape([rows, d]).into_dispatch(),
        norm.gamma.val().into_dispatch(),
        beta.val().into_dispatch(),
        Norm::Layer,
        epsilon,
    ));
    y.reshape(dims)
}

/// `norm.forward(x)` for an affine GroupNorm: on the CPU device (float32) one op (see the
/// module doc); burn's `GroupNorm` otherwise.
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    let (Some(gamma), Some(beta)) = (norm.gamma.as_ref(), norm.beta.as_ref()) else {
        return norm.forward(x);
    };
    if !on_cpu(&x.device()) || x.dtype() != DType::F32 {
        return norm.forward(x);
    }
    let dims = x.dims();
    assert_eq!(
        dims[1], norm.num_channels,
        "GroupNorm of {} channels",
        norm.num_channels
    );
    let y = Tensor::<3>::from_dispatch(<Dispatch as NormKernels>::norm_rows(
        x.reshape([dims[0], dims[1], dims[2] * dims[3]])
            .into_dispatch(),
        gamma.val().into_dispatch(),
        beta.val().into_dispatch(),
        Norm::Group(norm.num_groups),
        norm.epsilon,
    ));
    y.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{GroupNormConfig, LayerNormConfig};
    use burn::tensor::{Device, Distribution};

    /// A scale or shift parameter drawn around 1 (so that a missing one shows), tracked.
    fn random_param(t: Tensor<1>) -> Tensor<1> {
        t.random_like(Distribution::Normal(1.0, 0.5)).require_grad()
    }

    /// Runs `norm(x)` (ours or burn's, by `ours`) on `x0` with the loss `sum(y w)`, and checks
    /// ours against burn's: the output and the gradients of input, scale and shift, within
    /// 2e-5 of each one's largest magnitude (at least 1).
    fn compare<const D: usize>(
        x0: &Tensor<D>,
        params: [&Tensor<1>; 2],
        norm: impl Fn(Tensor<D>, bool) -> Tensor<D>,
        case: &str,
    ) {
        let w = x0.random_like(Distribution::Uniform(-1.0, 1.0));
        let run = |ours: bool| {
            let x = x0.clone().require_grad();
            let y = norm(x.clone(), ours);
            let grads = (y.clone() * w.clone()).sum().backward();
            let v = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
            [
                v(y.flatten(0, D - 1)),
                v(x.grad(&grads).unwrap().flatten(0, D - 1)),
                v(params[0].grad(&grads).unwrap()),
                v(params[1].grad(&grads).unwrap()),
            ]
        };
        let (ours, theirs) = (run(true), run(false));
        for ((what, a), b) in ["y", "dx", "dgamma", "dbeta"]
            .iter()
            .zip(&ours)
            .zip(&theirs)
        {
            assert_eq!(a.len(), b.len());
            let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (i, (p, q)) in a.iter().zip(b).enumerate() {
                assert!(
                    (p - q).abs() <= 2e-5 * scale,
                    "{what}[{i}] ({case}): {p} vs {q}"
                );
            }
        }
    }

    /// Against burn's `GroupNorm`, with non-trivial scale and shift, an offset mean, one and
    /// several channels per group, maps wider than a block of the sums.
    #[test]
    fn matches_burn_group_norm() {
        let device = Device::flex().autodiff();
        for (n, c, groups, h, w) in [(2, 6, 3, 5, 4), (3, 8, 8, 3, 3), (1, 4, 2, 40, 33)] {
            let mut norm = GroupNormConfig::new(groups, c)
                .with_epsilon(1e-6)
                .init(&device);
            norm.gamma = norm.gamma.map(|p| p.map(random_param));
            norm.beta = norm.beta.map(|p| p.map(random_param));
            let x0 = Tensor::<4>::random([n, c, h, w], Distribution::Normal(3.0, 2.0), &device);
            let (gamma, beta) = (norm.gamma.clone().unwrap(), norm.beta.clone().unwrap());
            compare(
                &x0,
                [&gamma.val(), &beta.val()],
                |x, ours| {
                    if ours {
                        group_norm(&norm, x)
                    } else {
                        norm.forward(x)
                    }
                },
                &format!("{n}x{c}x{h}x{w}, {groups} groups"),
            );
        }
    }

    /// Against burn's `LayerNorm`, with non-trivial scale and shift, rows of a mean far from 0
    /// (cancellation in the variance), widths below and above a vector and a row count across
    /// several tasks.
    #[test]
    fn matches_burn_layer_norm() {
        let device = Device::flex().autodiff();
        for (rows, d) in [(3, 5), (130, 64), (7, 33)] {
            let mut norm = LayerNormConfig::new(d).with_epsilon(1e-5).init(&device);
            norm.gamma = norm.gamma.map(random_param);
            norm.beta = norm.beta.map(|b| b.map(random_param));
            let x0 = Tensor::<3>::random([2, rows, d], Distribution::Normal(3.0, 2.0), &device);
            let (gamma, beta) = (norm.gamma.clone(), norm.beta.clone().unwrap());
            compare(
                &x0,
                [&gamma.val(), &beta.val()],
                |x, ours| {
                    if ours {
                        layer_norm(&norm, x, 1e-5)
                    } else {
                        norm.forward(x)
                    }
                },
                &format!("{rows}x{d}"),
            );
        }
    }
}
