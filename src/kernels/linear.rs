//! Linear layers with bias (`y = x W + b` over the last dimension) on the CPU device as one
//! op: one GEMM over all rows forward, and in the backward one GEMM for each of `dx` and `dW`
//! and a column sum for `db`.
//!
//! Through the dispatch device, burn's `Linear` is its composed form: a broadcast (batched)
//! matmul of `[B, L, D]` by the weight, then a broadcast bias add. Under autodiff the weight's
//! gradient is then a batch of `B` products `x_b^T dy_b`, one `[D_in, D_out]` tensor each,
//! summed over the batch afterwards, and the bias's gradient a reduction over the broadcast
//! dimensions (measured on a `tiny` GPT training step: matmul backward 9.4%, `sum_dim` 6.7%,
//! tensor allocation 10% of the time). Here the leading dimensions are rows of one matrix:
//! - forward: `Y[rows, out] = X[rows, in] . W` into rows pre-filled with `b`;
//! - backward: `dX = dY . W^T`, `dW = X^T . dY` (the sum over rows is the GEMM's inner
//!   dimension), `db` = column sums of `dY`.
//!
//! Other devices take burn's `Linear` unchanged: [`linear`] dispatches on the device.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::Linear;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::simd::simd_dispatch;
use super::{f32_slice, gemm_new, gemm_rm, on_cpu, wrap};

/// Linear-layer ops the CPU device gets from us (see the module doc). Shapes: `x` `[rows,
/// in]`, `weight` `[in, out]` (burn's layout), `bias` `[out]`.
#[backend_extension(Autodiff, Flex)]
pub trait LinearKernels: Backend {
    /// `x . weight + bias`.
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `grad . weight^T`, the gradient with respect to `x`.
    fn linear_rows_x_grad(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_x_backward(weight, grad)
    }

    /// `x^T . grad`, the gradient with respect to `weight`.
    fn linear_rows_weight_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_weight_backward(x, grad)
    }

    /// Column sums of `grad`, the gradient with respect to `bias`.
    fn linear_rows_bias_grad(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_bias_backward(grad)
    }
}

/// GEMM parallelism for `mnk` multiply-adds (small products run on one thread).
fn parallelism(mnk: usize) -> gemm::Parallelism {
    if mnk >= 1 << 20 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// Whether all of `ts` are f32 (the kernels' type; others take burn's ops).
fn all_f32(ts: &[&FlexTensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32)
}

impl LinearKernels for Flex {
    fn linear_rows(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x, &weight, &bias]) {
            return Flex::linear(x, weight, Some(bias));
        }
        let [rows, din] = x.shape().dims::<2>();
        let dout = weight.shape()[1];
        let (x, weight, bias) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            bias.to_contiguous(),
        );
        let b = f32_slice(&bias);
        // Rows pre-filled with the bias, then y += x W.
        let mut y: Vec<f32> = Vec::with_capacity(rows * dout);
        y.spare_capacity_mut()[..rows * dout]
            .par_chunks_mut(dout * 64)
            .for_each(|chunk| {
                for row in chunk.chunks_mut(dout) {
                    for (v, &bv) in row.iter_mut().zip(b) {
                        v.write(bv);
                    }
                }
            });
        // SAFETY: every element was written above (`rows` rows of `dout`).
        unsafe { y.set_len(rows * dout) };
        gemm_rm(
            [rows, dout, din],
            &mut y,
            true,
            f32_slice(&x),
            false,
            f32_slice(&weight),
            false,
            1.0,
            parallelism(rows * dout * din),
        );
        wrap(y, [rows, dout], DType::F32)
    }

    fn linear_rows_x_grad(weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if !all_f32(&[&weight, &grad]) {
            return Flex::linear_x_backward(weight, grad);
        }
        let [din, dout] = weight.shape().dims::<2>();
        let rows = grad.shape()[0];
        let (weight, grad) = (weight.to_contiguous(), grad.to_contiguous());
        let dx = gemm_new(
            [rows, din, dout],
            (f32_slice(&grad), false),
            (f32_slice(&weight), true),
            1.0,
            parallelism(rows * din * dout),
        );
        wrap(dx, [rows, din], DType::F32)
    }

    fn linear_rows_weight_grad(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x, &grad]) {
            return Flex::linear_weight_backward(x, grad);
        }
        let [rows, din] = x.shape().dims::<2>();
        let dout = grad.shape()[1];
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let dw = gemm_new(
            [din, dout, rows],
            (f32_slice(&x), true),
            (f32_slice(&grad), false),
            1.0,
            parallelism(rows * din * dout),
        );
        wrap(dw, [din, dout], DType::F32)
    }

    fn linear_rows_bias_grad(grad: FlexTensor) -> FlexTensor {
        if !all_f32(&[&grad]) {
            return Flex::linear_bias_backward(grad);
        }
        let dout = grad.shape()[1];
        let grad = grad.to_contiguous();
        let g = f32_slice(&grad);
        // Per task, the sum of a block of rows; then the blocks' sums in order.
        let block = (g.len() / dout)
            .div_ceil(rayon::current_num_threads() * 4)
            .max(16)
            * dout;
        let partial: Vec<Vec<f32>> = g
            .par_chunks(block)
            .map(|rows| {
                let mut acc = vec![0.0f32; dout];
                for row in rows.chunks(dout) {
                    add_row(&mut acc, row);
                }
                acc
            })
            .collect();
        let mut db = vec![0.0f32; dout];
        for p in &partial {
            add_row(&mut db, p);
        }
        wrap(db, [dout], DType::F32)
    }
}

#[inline(always)]
fn add_row_generic(acc: &mut [f32], row: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(row) {
        *a += v;
    }
}

simd_dispatch! {
    /// `acc += row`, elementwise.
    fn add_row(acc: &mut [f32], row: &[f32]) => add_row_generic
}

impl<B: LinearKernels, C: CheckpointStrategy> LinearKernels for Autodiff<B, C> {
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LinearBackward;

        impl<B: LinearKernels> Backward<B, 3> for LinearBackward {
            type State = (Option<NodeId>, Option<NodeId>);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_w, node_b] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, w_state) = ops.state;
                if let (Some(node), Some(w)) = (node_x, w_state) {
                    let w: FloatTensor<B> = checkpointer.retrieve_node_output(w);
                    grads.register::<B>(node.id, B::linear_rows_x_grad(w, grad.clone()));
                }
                if let (Some(node), Some(x)) = (node_w, x_state) {
                    let x: FloatTensor<B> = checkpointer.retrieve_node_output(x);
                    grads.register::<B>(node.id, B::linear_rows_weight_grad(x, grad.clone()));
                }
                if let Some(node) = node_b {
                    grads.register::<B>(node.id, B::linear_rows_bias_grad(grad));
                }
            }
        }

        let (x_tracked, w_tracked) = (x.is_tracked(), weight.is_tracked());
        match LinearBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                // x is needed for the weight's gradient only, the weight for x's.
                let x_state = w_tracked.then(|| prep.checkpoint(&x));
                let w_state = x_tracked.then(|| prep.checkpoint(&weight));
                let out = B::linear_rows(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                );
                prep.finish((x_state, w_state), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_rows(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
            )),
        }
    }
}

/// `layer.forward(x)`: on the CPU device (with a bias) the leading dimensions of `x` become
/// rows of one matrix for [`LinearKernels::linear_rows`]; burn's `Linear` otherwise.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let Some(bias) = layer.bias.as_ref() else {
        return layer.forward(x);
    };
    if !on_cpu(&x.device()) {
        return layer.forward(x);
    }
    let dims = x.dims();
    let din = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let weight = layer.weight.val();
    let dout = weight.dims()[1];
    let y = Tensor::<2>::from_dispatch(<Dispatch as LinearKernels>::linear_rows(
        x.reshape([rows, din]).into_dispatch(),
        weight.into_dispatch(),
        bias.val().into_dispatch(),
    ));
    let mut out = dims;
    out[D - 1] = dout;
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, Distribution};

    /// Output and the gradients of input, weight and bias against burn's `Linear`, for a 3-d
    /// input (rows from two leading dimensions), a 2-d one, and sizes on both sides of the
    /// GEMM's parallel threshold; and with the weight frozen (no weight gradient asked).
    #[test]
    fn matches_burn_linear() {
        let device = Device::flex().autodiff();
        for (lead, din, dout) in [
            (vec![3, 5], 7, 9),
            (vec![32, 65], 64, 192),
            (vec![1, 4], 3, 1),
        ] {
            let layer = LinearConfig::new(din, dout).init(&device);
            // A non-zero bias, so that a missing bias shows.
            let layer = Linear {
                bias: layer.bias.map(|b| {
                    b.map(|t| t.random_like(Distribution::Normal(0.0, 1.0)).require_grad())
                }),
                ..layer
            };
            let x0 = Tensor::<3>::random(
                [lead[0], lead[1], din],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let run = |ours: bool| {
                let x = x0.clone().require_grad();
                let y = if ours {
                    linear(&layer, x.clone())
                } else {
                    layer.forward(x.clone())
                };
                let grads = (y.clone() * y.clone().cos()).sum().backward();
                let v = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
                (
                    v(y.flatten(0, 2)),
                    v(x.grad(&grads).unwrap().flatten(0, 2)),
                    v(layer.weight.grad(&grads).unwrap().flatten(0, 1)),
                    v(layer.bias.as_ref().unwrap().grad(&grads).unwrap()),
                )
            };
            let (ours, theirs) = (run(true), run(false));
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len(), "{what}");
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * scale,
                        "{what}[{i}]: {x} vs {y} ({lead:?})"
                    );
                }
            };
            close(&ours.0, &theirs.0, "output");
            close(&ours.1, &theirs.1, "dx");
            close(&ours.2, &theirs.2, "dW");
            close(&ours.3, &theirs.3, "db");
            // 2-d input, frozen layer: the input's gradient alone.
            let frozen = layer.clone().no_grad();
            let x2 = x0.clone().flatten::<2>(0, 1).require_grad();
            let g_ours = linear(&frozen, x2.clone()).sum().backward();
            let g_burn = frozen.forward(x2.clone()).sum().backward();
            let v = |t: Tensor<2>| {
                t.flatten::<1>(0, 1)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            };
            close(
                &v(x2.grad(&g_ours).unwrap()),
                &v(x2.grad(&g_burn).unwrap()),
                "frozen dx",
            );
        }
    }
}
