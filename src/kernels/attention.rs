//! Multi-head self-attention as one differentiable op on the CPU device.
//!
//! burn's autodiff backend has no attention op of its own: it runs burn-backend's
//! `attention_fallback`, about fifteen tensor ops (matmul, scale, causal mask, the NaN-safe
//! softmax's max/clamp/sub/exp/sum/clamp/div, matmul), each a node of the graph with its own
//! saved tensors and its own backward, and the model around it splits the packed `q, k, v`
//! projection into heads and merges the heads again (a layout copy each way, forward and
//! backward). Here attention is one node reading each head in place from the packed
//! projection `[B, L, 3, heads, dh]` and writing its output in place into `[B, L, heads, dh]`,
//! computed per (batch, head) in a per-thread scratch: the forward is two small GEMMs around a
//! vectorised softmax, and the backward recomputes the probabilities from `q` and `k` (as
//! flash attention does, so nothing of size `L x L` is kept between forward and backward) and
//! runs the four GEMMs of the gradient:
//!
//! `P = softmax(s q k^T)`, `dV = P^T dO`, `dP = dO V^T`, `dS = P (dP - rowsum(P dP))`,
//! `dQ = s dS K`, `dK = s dS^T Q` (s = 1/sqrt(dh); causal: key j > query i is masked).
//!
//! Other devices (wgpu, CUDA) take burn's `attention` between the split and the merge:
//! [`self_attention`] dispatches on the device.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::simd::softmax_rows;
use super::{contiguous_f32, f32_slice, gemm_strided, on_cpu, wrap};

/// Attention ops the CPU device gets from us (see the module doc).
#[backend_extension(Autodiff, Flex)]
pub trait AttentionKernels: Backend {
    /// Self-attention of `heads` heads from `qkv` `[B, L, 3D]` (per position `[3, heads, dh]`:
    /// queries, keys, values), `[B, L, D]` out (per position `[heads, dh]`); `causal` masks
    /// key `j > i` for query `i`.
    fn self_attention(qkv: FloatTensor<Self>, heads: usize, causal: bool) -> FloatTensor<Self>;

    /// The gradient `[B, L, 3D]` of [`AttentionKernels::self_attention`] with respect to `qkv`
    /// given the output's gradient `[B, L, D]`.
    fn self_attention_backward(
        qkv: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
        causal: bool,
    ) -> FloatTensor<Self>;
}

/// Backward passes computed by our kernel (so a test can tell that the op was routed to it).
static FUSED_BACKWARDS: AtomicUsize = AtomicUsize::new(0);

fn options(causal: bool) -> AttentionModuleOptions {
    AttentionModuleOptions {
        is_causal: causal,
        ..Default::default()
    }
}

impl AttentionKernels for Flex {
    fn self_attention(qkv: FlexTensor, heads: usize, causal: bool) -> FlexTensor {
        let dtype = qkv.dtype();
        let qkv = contiguous_f32(qkv);
        let s = Sizes::of(&qkv, heads, causal);
        let out = forward_f32(f32_slice(&qkv), &s);
        wrap(out, [s.batch, s.len, s.dim()], dtype)
    }

    fn self_attention_backward(
        qkv: FlexTensor,
        grad: FlexTensor,
        heads: usize,
        causal: bool,
    ) -> FlexTensor {
        let dtype = qkv.dtype();
        let (qkv, grad) = (contiguous_f32(qkv), contiguous_f32(grad));
        let s = Sizes::of(&qkv, heads, causal);
        let dqkv = backward_f32(f32_slice(&qkv), f32_slice(&grad), &s);
        FUSED_BACKWARDS.fetch_add(1, Ordering::Relaxed);
        wrap(dqkv, qkv.shape(), dtype)
    }
}

impl<B: AttentionKernels, C: CheckpointStrategy> AttentionKernels for Autodiff<B, C> {
    fn self_attention(qkv: FloatTensor<Self>, heads: usize, causal: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SelfAttentionBackward;

        impl<B: AttentionKernels> Backward<B, 1> for SelfAttentionBackward {
            type State = (NodeId, usize, bool);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (qkv_state, heads, causal) = ops.state;
                let qkv: FloatTensor<B> = checkpointer.retrieve_node_output(qkv_state);
                let [parent] = ops.parents;
                if let Some(node) = parent {
                    let dqkv = B::self_attention_backward(qkv, grad, heads, causal);
                    grads.register::<B>(node.id, dqkv);
                }
            }
        }

        match SelfAttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let qkv_state = prep.checkpoint(&qkv);
                let out = B::self_attention(qkv.into_primitive(), heads, causal);
                prep.finish((qkv_state, heads, causal), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::self_attention(qkv.into_primitive(), heads, causal))
            }
        }
    }

    fn self_attention_backward(
        _qkv: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _heads: usize,
        _causal: bool,
    ) -> FloatTensor<Self> {
        unreachable!("the backward runs on the inner backend")
    }
}

/// Multi-head self-attention from a packed projection: `qkv` `[B, L, 3D]` holds per position
/// the queries, keys and values of `heads` heads (`[3, heads, D / heads]`, one linear layer's
/// output), the result is `[B, L, D]` with the heads side by side (ready for the output
/// projection); `causal` masks key `j > i` for query `i`. One differentiable op on the CPU
/// device (see the module doc); elsewhere burn's `attention` between [`split_heads`] and the
/// merge. Same values as burn's attention to float rounding.
pub fn self_attention(qkv: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    let [_, _, d3] = qkv.dims();
    assert!(
        heads > 0 && d3 % (3 * heads) == 0,
        "self_attention: {d3} projected features do not split into q, k, v of {heads} heads"
    );
    if !on_cpu(&qkv.device()) {
        return composed(qkv, heads, causal);
    }
    Tensor::from_dispatch(<Dispatch as AttentionKernels>::self_attention(
        qkv.into_dispatch(),
        heads,
        causal,
    ))
}

/// Queries, keys and values `[B, heads, L, dh]` of a packed projection `[B, L, 3D]` (per
/// position `[3, heads, dh]`).
pub fn split_heads(qkv: Tensor<3>, heads: usize) -> [Tensor<4>; 3] {
    let [b, l, d3] = qkv.dims();
    let dh = d3 / (3 * heads);
    let qkv = qkv.reshape([b, l, 3, heads, dh]);
    [0, 1, 2].map(|i| {
        qkv.clone()
            .narrow(2, i, 1)
            .reshape([b, l, heads, dh])
            .swap_dims(1, 2)
    })
}

/// Heads `[B, heads, L, dh]` side by side: `[B, L, heads * dh]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, heads, l, dh] = x.dims();
    x.swap_dims(1, 2).reshape([b, l, heads * dh])
}

/// [`self_attention`] through burn's tensor ops.
fn composed(qkv: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    let [q, k, v] = split_heads(qkv, heads);
    merge_heads(burn_attention(q, k, v, None, None, options(causal)))
}

/// Each head's GEMMs are serial: the heads run in parallel.
const SERIAL: gemm::Parallelism = gemm::Parallelism::None;

/// Sizes of one self-attention: `batch x heads` independent (batch, head) pairs over `len`
/// positions of packed `[3, heads, dh]` projections.
struct Sizes {
    batch: usize,
    heads: usize,
    len: usize,
    dh: usize,
    causal: bool,
}

impl Sizes {
    fn of(qkv: &FlexTensor, heads: usize, causal: bool) -> Self {
        let [batch, len, d3] = qkv.shape().dims::<3>();
        Self {
            batch,
            heads,
            len,
            dh: d3 / (3 * heads),
            causal,
        }
    }

    /// Features of the output: `heads * dh`.
    fn dim(&self) -> usize {
        self.heads * self.dh
    }

    fn pairs(&self) -> usize {
        self.batch * self.heads
    }

    /// Offset of the first query of `pair` in the packed projection (its key and value follow
    /// at `+ dim` and `+ 2 dim`; rows `3 dim` apart), and of its first output row (rows `dim`
    /// apart), which is also where its output gradient starts.
    fn offsets(&self, pair: usize) -> (usize, usize) {
        let (b, h) = (pair / self.heads, pair % self.heads);
        let d = self.dim();
        (
            b * self.len * 3 * d + h * self.dh,
            b * self.len * d + h * self.dh,
        )
    }
}

/// A buffer the parallel tasks write through, each task to its own (batch, head) columns.
#[derive(Clone, Copy)]
struct Shared(*mut f32);

// SAFETY: the tasks write disjoint elements (see `Sizes::offsets`), and the buffer outlives
// the parallel loop.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `P = softmax(q k^T / sqrt(dh))` (`[L, L]`, causal as `s` says) into `p`, for one pair's
/// `q` and `k` given as (first element, row stride).
///
/// # Safety
/// `q` and `k` must each address `L` rows of `dh` floats at their row strides.
unsafe fn probabilities(p: &mut [f32], q: (*const f32, usize), k: (*const f32, usize), s: &Sizes) {
    let (l, dh) = (s.len, s.dh);
    assert_eq!(p.len(), l * l);
    let scale = 1.0 / (dh as f32).sqrt();
    // SAFETY: `p` holds the [l, l] result; q and k as the caller guarantees.
    unsafe {
        gemm_strided(
            [l, l, dh],
            (p.as_mut_ptr(), l),
            false,
            q,
            false,
            k,
            true,
            scale,
            SERIAL,
        );
    }
    softmax_rows(p, l, s.causal);
}

/// `softmax(s q k^T) v` per (batch, head) for a contiguous packed `qkv` `[B, L, 3D]`: the
/// scores in a per-thread scratch, one GEMM each side of a vectorised softmax.
fn forward_f32(qkv: &[f32], s: &Sizes) -> Vec<f32> {
    let (l, dh, d) = (s.len, s.dh, s.dim());
    assert_eq!(qkv.len(), s.batch * l * 3 * d);
    let mut out = vec![0.0f32; s.batch * l * d];
    let dst = Shared(out.as_mut_ptr());
    (0..s.pairs()).into_par_iter().for_each_init(
        || vec![0.0f32; l * l],
        |p, pair| {
            let (i, o) = s.offsets(pair);
            let [q, k, v] = [0, d, 2 * d].map(|c| (qkv[i + c..].as_ptr(), 3 * d));
            // SAFETY: q, k, v are `l` rows of `dh` at row stride 3d inside `qkv` (length
            // checked above); the output rows of this pair are written by this task only.
            unsafe {
                probabilities(p, q, k, s);
                gemm_strided(
                    [l, dh, l],
                    (dst.at(o), d),
                    false,
                    (p.as_ptr(), l),
                    false,
                    v,
                    false,
                    1.0,
                    SERIAL,
                );
            }
        },
    );
    out
}

/// The gradient `[B, L, 3D]` with respect to a contiguous packed `qkv` given the output
/// gradient `g` `[B, L, D]`.
fn backward_f32(qkv: &[f32], g: &[f32], s: &Sizes) -> Vec<f32> {
    let (l, dh, d) = (s.len, s.dh, s.dim());
    assert_eq!(qkv.len(), s.batch * l * 3 * d);
    assert_eq!(g.len(), s.batch * l * d);
    let scale = 1.0 / (dh as f32).sqrt();
    // Every element is written: each pair writes its dq, dk and dv columns.
    let mut dqkv = vec![0.0f32; qkv.len()];
    let dst = Shared(dqkv.as_mut_ptr());
    (0..s.pairs()).into_par_iter().for_each_init(
        || (vec![0.0f32; l * l], vec![0.0f32; l * l]),
        |(p, dp), pair| {
            let (i, o) = s.offsets(pair);
            let [q, k, v] = [0, d, 2 * d].map(|c| (qkv[i + c..].as_ptr(), 3 * d));
            let [dq, dk, dv] = [0, d, 2 * d].map(|c| (dst.at(i + c), 3 * d));
            let go = (g[o..].as_ptr(), d);
            // SAFETY: q, k, v (and dq, dk, dv) are `l` rows of `dh` at row stride 3d inside
            // buffers of `qkv`'s length, the output gradient `l` rows of `dh` at stride d inside
            // `g` (lengths checked above); this pair's gradient columns are written by this
            // task only.
            unsafe {
                probabilities(p, q, k, s);
                gemm_strided(
                    [l, dh, l],
                    dv,
                    false,
                    (p.as_ptr(), l),
                    true,
                    go,
                    false,
                    1.0,
                    SERIAL,
                );
                gemm_strided(
                    [l, l, dh],
                    (dp.as_mut_ptr(), l),
                    false,
                    go,
                    false,
                    v,
                    true,
                    1.0,
                    SERIAL,
                );
            }
            for (prow, dprow) in p.chunks(l).zip(dp.chunks_mut(l)) {
                let delta: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
                for (x, &pv) in dprow.iter_mut().zip(prow) {
                    *x = pv * (*x - delta);
                }
            }
            // SAFETY: as above.
            unsafe {
                gemm_strided(
                    [l, dh, l],
                    dq,
                    false,
                    (dp.as_ptr(), l),
                    false,
                    k,
                    false,
                    scale,
                    SERIAL,
                );
                gemm_strided(
                    [l, dh, l],
                    dk,
                    false,
                    (dp.as_ptr(), l),
                    true,
                    q,
                    false,
                    scale,
                    SERIAL,
                );
            }
        },
    );
    dqkv
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Output and `qkv` gradient of our attention against burn's (its autodiff composition of
    /// tensor ops between the split and the merge), causal and not, single- and multi-head,
    /// with a strided (non-contiguous) input.
    #[test]
    fn gradients_match_burn_attention() {
        let device = Device::flex().autodiff();
        let before = FUSED_BACKWARDS.load(Ordering::Relaxed);
        // (batch, len, heads, dh, causal)
        let cases = [
            (2, 7, 3, 8, false),
            (2, 9, 3, 4, true),
            (1, 5, 1, 8, false),
            (3, 17, 2, 5, true),
        ];
        for (b, l, heads, dh, causal) in cases {
            let d3 = 3 * heads * dh;
            // Stored [B, 3D, L] and transposed: the kernel must not assume a contiguous input.
            let x0 = Tensor::<3>::random([b, d3, l], Distribution::Normal(0.0, 1.0), &device)
                .swap_dims(1, 2);
            let run = |ours: bool| {
                let x = x0.clone().require_grad();
                let y = if ours {
                    self_attention(x.clone(), heads, causal)
                } else {
                    composed(x.clone(), heads, causal)
                };
                assert_eq!(y.dims(), [b, l, heads * dh]);
                // A non-uniform output gradient, cos(y) - y sin(y).
                let grads = (y.clone() * y.clone().cos()).sum().backward();
                let flat = |t: Tensor<3>| {
                    t.flatten::<1>(0, 2)
                        .into_data()
                        .try_to_vec::<f32>()
                        .expect("f32 data")
                };
                [flat(y.detach()), flat(x.grad(&grads).unwrap())]
            };
            let (ours, theirs) = (run(true), run(false));
            for (what, (u, w)) in ["output", "dqkv"]
                .iter()
                .zip(ours.iter().zip(theirs.iter()))
            {
                assert_eq!(u.len(), w.len());
                for (u, w) in u.iter().zip(w) {
                    assert!(
                        (u - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{what} b {b} l {l} heads {heads} dh {dh} causal {causal}: {u} vs {w}"
                    );
                }
            }
        }
        assert!(
            FUSED_BACKWARDS.load(Ordering::Relaxed) - before >= cases.len(),
            "the gradients did not come from our kernel"
        );
    }
}
