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
//! Other devices take burn's `LayerNorm` unchanged: [`layer_norm`] dispatches on the device.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::LayerNorm;
use burn::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::simd::simd_dispatch;
use super::{contiguous_f32, f32_slice, on_cpu, par_output, wrap};

/// The LayerNorm epsilon of our models (burn's default), given to both `LayerNormConfig` and
/// [`layer_norm`].
pub const EPSILON: f64 = 1e-5;

/// LayerNorm ops the CPU device gets from us (see the module doc). Shapes: `x` `[rows, d]`,
/// `gamma` and `beta` `[d]`.
#[backend_extension(Autodiff, Flex)]
pub trait NormKernels: Backend {
    /// `(x - mu) / sqrt(var + epsilon) * gamma + beta` per row.
    fn layer_norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// The gradients `(dx, dgamma, dbeta)` of [`NormKernels::layer_norm_rows`] given the
    /// output's gradient `grad`.
    fn layer_norm_rows_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Rows per parallel task.
const ROWS: usize = 64;

impl NormKernels for Flex {
    fn layer_norm_rows(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let dtype = x.dtype();
        let [rows, d] = x.shape().dims::<2>();
        let (x, gamma, beta) = (
            contiguous_f32(x),
            contiguous_f32(gamma),
            contiguous_f32(beta),
        );
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

    fn layer_norm_rows_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        grad: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dtype = x.dtype();
        let [rows, d] = x.shape().dims::<2>();
        let (x, gamma, grad) = (
            contiguous_f32(x),
            contiguous_f32(gamma),
            contiguous_f32(grad),
        );
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
}

/// The row's mean and `1 / sqrt(var + eps)` (two passes: the variance of the centred values).
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lanes_sum(x.iter().copied()) / n;
    let var = lanes_sum(x.iter().map(|v| (v - mean) * (v - mean))) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// A sum in 16 independent partial sums (so that it vectorises), folded pairwise.
#[inline(always)]
fn lanes_sum(values: impl Iterator<Item = f32>) -> f32 {
    let mut acc = [0.0f32; 16];
    for (i, v) in values.enumerate() {
        acc[i % 16] += v;
    }
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
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
    fn layer_norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: NormKernels> Backward<B, 3> for LayerNormBackward {
            type State = (NodeId, NodeId, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_g, node_b] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, g_state, epsilon) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
                let gamma: FloatTensor<B> = checkpointer.retrieve_node_output(g_state);
                let (dx, dg, db) = B::layer_norm_rows_backward(x, gamma, grad, epsilon);
                for (node, g) in [(node_x, dx), (node_g, dg), (node_b, db)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let g_state = prep.checkpoint(&gamma);
                let out = B::layer_norm_rows(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                prep.finish((x_state, g_state, epsilon), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::layer_norm_rows(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    }

    /// The inner device's gradients, as untracked tensors (the op has no second derivative).
    fn layer_norm_rows_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dg, db) = B::layer_norm_rows_backward(
            x.into_primitive(),
            gamma.into_primitive(),
            grad.into_primitive(),
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
    if !on_cpu(&x.device()) || x.dtype() != burn::tensor::DType::F32 {
        return norm.forward(x);
    }
    let dims = x.dims();
    let d = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = Tensor::<2>::from_dispatch(<Dispatch as NormKernels>::layer_norm_rows(
        x.reshape([rows, d]).into_dispatch(),
        norm.gamma.val().into_dispatch(),
        beta.val().into_dispatch(),
        epsilon,
    ));
    y.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LayerNormConfig;
    use burn::tensor::{Device, Distribution};

    /// Output and the gradients of input, scale and shift against burn's `LayerNorm`, with
    /// non-trivial scale and shift, rows of a mean far from 0 (cancellation in the variance),
    /// widths below and above a vector and a row count across several tasks.
    #[test]
    fn matches_burn_layer_norm() {
        let device = Device::flex().autodiff();
        for (rows, d) in [(3, 5), (130, 64), (7, 33)] {
            let mut norm = LayerNormConfig::new(d).with_epsilon(1e-5).init(&device);
            let random =
                |t: Tensor<1>| t.random_like(Distribution::Normal(1.0, 0.5)).require_grad();
            norm.gamma = norm.gamma.map(random);
            norm.beta = norm.beta.map(|b| b.map(random));
            let x0 = Tensor::<3>::random([2, rows, d], Distribution::Normal(3.0, 2.0), &device);
            let w = Tensor::<3>::random([2, rows, d], Distribution::Uniform(-1.0, 1.0), &device);
            let run = |ours: bool| {
                let x = x0.clone().require_grad();
                let y = if ours {
                    layer_norm(&norm, x.clone(), 1e-5)
                } else {
                    norm.forward(x.clone())
                };
                let grads = (y.clone() * w.clone()).sum().backward();
                let v = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
                (
                    v(y.flatten(0, 2)),
                    v(x.grad(&grads).unwrap().flatten(0, 2)),
                    v(norm.gamma.grad(&grads).unwrap()),
                    v(norm.beta.as_ref().unwrap().grad(&grads).unwrap()),
                )
            };
            let (ours, theirs) = (run(true), run(false));
            for (what, a, b) in [
                ("y", &ours.0, &theirs.0),
                ("dx", &ours.1, &theirs.1),
                ("dgamma", &ours.2, &theirs.2),
                ("dbeta", &ours.3, &theirs.3),
            ] {
                assert_eq!(a.len(), b.len());
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (i, (p, q)) in a.iter().zip(b.iter()).enumerate() {
                    assert!(
                        (p - q).abs() <= 2e-5 * scale,
                        "{what}[{i}] ({rows}x{d}): {p} vs {q}"
                    );
                }
            }
        }
    }
}
