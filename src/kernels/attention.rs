//! Scaled dot-product attention as one differentiable op on the CPU device.
//!
//! burn's autodiff backend has no attention op of its own: it runs burn-backend's
//! `attention_fallback`, about fifteen tensor ops (matmul, scale, causal mask, the NaN-safe
//! softmax's max/clamp/sub/exp/sum/clamp/div, matmul), each a node of the graph with its own
//! saved tensors and its own backward. Here attention is one node, computed per (batch, head)
//! in a per-thread scratch: the forward is two small GEMMs around a vectorised softmax, and the
//! backward recomputes the probabilities from `q` and `k` (as flash attention does, so nothing
//! of size `L x L` is kept between forward and backward) and runs the four GEMMs of the
//! gradient:
//!
//! `P = softmax(s q k^T)`, `dV = P^T dO`, `dP = dO V^T`, `dS = P (dP - rowsum(P dP))`,
//! `dQ = s dS K`, `dK = s dS^T Q` (s = 1/sqrt(dh); causal: key j > query i is masked).
//!
//! Other devices (wgpu, CUDA) take burn's `attention` unchanged: [`attention`] dispatches on
//! the device.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::{FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Bytes, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{FloatDType, Tensor};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::simd::softmax_rows;
use super::{gemm_rm, on_cpu};

/// Attention ops the CPU device gets from us (see the module doc).
#[backend_extension(Autodiff, Flex)]
pub trait AttentionKernels: Backend {
    /// `softmax(q k^T / sqrt(dh)) v` for `q` `[B, H, Lq, dh]`, `k`, `v` `[B, H, Lk, dh]`;
    /// `causal` masks key `j > i` for query `i`.
    fn sdpa(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self>;

    /// The gradients `(dq, dk, dv)` of [`AttentionKernels::sdpa`] given the output's gradient.
    fn sdpa_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
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
    fn sdpa(q: FlexTensor, k: FlexTensor, v: FlexTensor, causal: bool) -> FlexTensor {
        if [&q, &k, &v].iter().any(|t| t.dtype() != DType::F32) {
            return Flex::attention(q, k, v, None, None, options(causal));
        }
        let (q, k, v) = (q.to_contiguous(), k.to_contiguous(), v.to_contiguous());
        let s = Sizes::of(&q, &k, causal);
        let out = forward_f32(slice(&q), slice(&k), slice(&v), &s);
        FlexTensor::new(
            Bytes::from_elems(out),
            Layout::contiguous(q.shape()),
            DType::F32,
        )
    }

    fn sdpa_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        grad: FlexTensor,
        causal: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dtype = q.dtype();
        let f32s = |t: FlexTensor| {
            let t = if t.dtype() == DType::F32 {
                t
            } else {
                Flex::float_cast(t, FloatDType::F32)
            };
            t.to_contiguous()
        };
        let (q, k, v, grad) = (f32s(q), f32s(k), f32s(v), f32s(grad));
        let s = Sizes::of(&q, &k, causal);
        let (dq, dk, dv) = backward_f32(slice(&q), slice(&k), slice(&v), slice(&grad), &s);
        FUSED_BACKWARDS.fetch_add(1, Ordering::Relaxed);
        let wrap = |data: Vec<f32>, like: &FlexTensor| {
            let t = FlexTensor::new(
                Bytes::from_elems(data),
                Layout::contiguous(like.shape()),
                DType::F32,
            );
            if dtype == DType::F32 {
                t
            } else {
                Flex::float_cast(t, dtype.into())
            }
        };
        (wrap(dq, &q), wrap(dk, &k), wrap(dv, &v))
    }
}

impl<B: AttentionKernels, C: CheckpointStrategy> AttentionKernels for Autodiff<B, C> {
    fn sdpa(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SdpaBackward;

        impl<B: AttentionKernels> Backward<B, 3> for SdpaBackward {
            type State = (NodeId, NodeId, NodeId, bool);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (q_state, k_state, v_state, causal) = ops.state;
                let q: FloatTensor<B> = checkpointer.retrieve_node_output(q_state);
                let k: FloatTensor<B> = checkpointer.retrieve_node_output(k_state);
                let v: FloatTensor<B> = checkpointer.retrieve_node_output(v_state);
                let (dq, dk, dv) = B::sdpa_backward(q, k, v, grad, causal);
                for (node, g) in ops.parents.into_iter().zip([dq, dk, dv]) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        match SdpaBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let q_state = prep.checkpoint(&q);
                let k_state = prep.checkpoint(&k);
                let v_state = prep.checkpoint(&v);
                let out = B::sdpa(
                    q.into_primitive(),
                    k.into_primitive(),
                    v.into_primitive(),
                    causal,
                );
                prep.finish((q_state, k_state, v_state, causal), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::sdpa(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                causal,
            )),
        }
    }

    fn sdpa_backward(
        _q: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("the backward runs on the inner backend")
    }
}

/// `softmax(q k^T / sqrt(dh)) v` over `[B, H, L, dh]`, `causal` or not, differentiable as one
/// op on the CPU device (see the module doc); burn's `attention` elsewhere. Same values as
/// burn's attention to float rounding.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    if !on_cpu(&q.device()) {
        return burn_attention(q, k, v, None, None, options(causal));
    }
    Tensor::from_dispatch(<Dispatch as AttentionKernels>::sdpa(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        causal,
    ))
}

/// Each head's GEMMs are serial: the heads run in parallel.
const SERIAL: gemm::Parallelism = gemm::Parallelism::None;

/// Sizes of one attention problem: `pairs` = batch x heads independent attentions.
struct Sizes {
    pairs: usize,
    lq: usize,
    lk: usize,
    dh: usize,
    causal: bool,
}

impl Sizes {
    fn of(q: &FlexTensor, k: &FlexTensor, causal: bool) -> Self {
        let [b, h, lq, dh] = q.shape().dims::<4>();
        Self {
            pairs: b * h,
            lq,
            lk: k.shape().dims::<4>()[2],
            dh,
            causal,
        }
    }
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// `softmax(s q k^T) v` for contiguous `[pairs, L, dh]` `q`, `k`, `v`: per pair, the scores
/// in a per-thread scratch, one GEMM each side of a vectorised softmax.
fn forward_f32(q: &[f32], k: &[f32], v: &[f32], s: &Sizes) -> Vec<f32> {
    let (lq, lk, dh) = (s.lq, s.lk, s.dh);
    let scale = 1.0 / (dh as f32).sqrt();
    let mut out = vec![0.0f32; s.pairs * lq * dh];
    out.par_chunks_mut(lq * dh).enumerate().for_each_init(
        || vec![0.0f32; lq * lk],
        |p, (i, o)| {
            let qi = &q[i * lq * dh..][..lq * dh];
            let (ki, vi) = (&k[i * lk * dh..][..lk * dh], &v[i * lk * dh..][..lk * dh]);
            gemm_rm([lq, lk, dh], p, false, qi, false, ki, true, scale, SERIAL);
            softmax_rows(p, lk, s.causal);
            gemm_rm([lq, dh, lk], o, false, p, false, vi, false, 1.0, SERIAL);
        },
    );
    out
}

/// `(dq, dk, dv)` for contiguous `[pairs, L, dh]` `q`, `k`, `v` and output gradient `g`.
fn backward_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    s: &Sizes,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (lq, lk, dh) = (s.lq, s.lk, s.dh);
    let scale = 1.0 / (dh as f32).sqrt();
    let mut dq = vec![0.0f32; s.pairs * lq * dh];
    let mut dk = vec![0.0f32; s.pairs * lk * dh];
    let mut dv = vec![0.0f32; s.pairs * lk * dh];
    dq.par_chunks_mut(lq * dh)
        .zip(dk.par_chunks_mut(lk * dh))
        .zip(dv.par_chunks_mut(lk * dh))
        .enumerate()
        .for_each_init(
            || (vec![0.0f32; lq * lk], vec![0.0f32; lq * lk]),
            |(p, dp), (i, ((dq, dk), dv))| {
                let (qi, gi) = (&q[i * lq * dh..][..lq * dh], &g[i * lq * dh..][..lq * dh]);
                let (ki, vi) = (&k[i * lk * dh..][..lk * dh], &v[i * lk * dh..][..lk * dh]);
                gemm_rm([lq, lk, dh], p, false, qi, false, ki, true, scale, SERIAL);
                softmax_rows(p, lk, s.causal);
                gemm_rm([lk, dh, lq], dv, false, p, true, gi, false, 1.0, SERIAL);
                gemm_rm([lq, lk, dh], dp, false, gi, false, vi, true, 1.0, SERIAL);
                for (prow, dprow) in p.chunks(lk).zip(dp.chunks_mut(lk)) {
                    let delta: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
                    for (d, &pv) in dprow.iter_mut().zip(prow) {
                        *d = pv * (*d - delta);
                    }
                }
                gemm_rm([lq, dh, lk], dq, false, dp, false, ki, false, scale, SERIAL);
                gemm_rm([lk, dh, lq], dk, false, dp, true, qi, false, scale, SERIAL);
            },
        );
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Output and `q`, `k`, `v` gradients of our attention against burn's (its autodiff
    /// composition of tensor ops), causal and not, for a square and a rectangular case.
    #[test]
    fn gradients_match_burn_attention() {
        let device = Device::flex().autodiff();
        let before = FUSED_BACKWARDS.load(Ordering::Relaxed);
        let cases = [
            ([2, 3, 7, 8], 7, false),
            ([2, 3, 9, 4], 9, true),
            ([1, 2, 5, 8], 11, false),
        ];
        for (qs, lk, causal) in cases {
            let ks = [qs[0], qs[1], lk, qs[3]];
            let q0 = Tensor::<4>::random(qs, Distribution::Normal(0.0, 1.0), &device);
            let k0 = Tensor::<4>::random(ks, Distribution::Normal(0.0, 1.0), &device);
            let v0 = Tensor::<4>::random(ks, Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                let (q, k, v) = (
                    q0.clone().require_grad(),
                    k0.clone().require_grad(),
                    v0.clone().require_grad(),
                );
                let y = if ours {
                    attention(q.clone(), k.clone(), v.clone(), causal)
                } else {
                    burn_attention(q.clone(), k.clone(), v.clone(), None, None, options(causal))
                };
                // A non-uniform output gradient, cos(y) - y sin(y).
                let grads = (y.clone() * y.clone().cos()).sum().backward();
                let flat = |t: Tensor<4>| {
                    t.flatten::<1>(0, 3)
                        .into_data()
                        .try_to_vec::<f32>()
                        .expect("f32 data")
                };
                [
                    flat(y.detach()),
                    flat(q.grad(&grads).unwrap()),
                    flat(k.grad(&grads).unwrap()),
                    flat(v.grad(&grads).unwrap()),
                ]
            };
            let (ours, theirs) = (run(true), run(false));
            for (what, (a, b)) in ["output", "dq", "dk", "dv"]
                .iter()
                .zip(ours.iter().zip(theirs.iter()))
            {
                assert_eq!(a.len(), b.len());
                for (u, w) in a.iter().zip(b) {
                    assert!(
                        (u - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{what} {qs:?} lk {lk} causal {causal}: {u} vs {w}"
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
