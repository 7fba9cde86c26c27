//! AdamW as one pass over each parameter on the CPU device.
//!
//! burn's `AdamW` updates a parameter with about a dozen tensor ops (moments scaled and added,
//! the gradient squared, both bias corrections, square root, epsilon, division, decay, the
//! step), each a pass over the parameter's size with a freshly allocated result: at the `base`
//! MaskGIT's 172.7M parameters, ~13% of a training step went to burn-flex's scalar and binary
//! ops. [`FusedAdamW`] computes the same update with the same f32 operations in the same order
//! in one parallel pass that reads the parameter, gradient and both moments and writes the
//! parameter and moments in place. Its state is burn's [`AdamWState`], so optimizer files are
//! interchangeable with burn's `AdamW`; other devices (wgpu, CUDA) run burn's `AdamW`
//! unchanged.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, on_cpu};

/// The scalars of one AdamW update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// `1 - beta_1^t` and `1 - beta_2^t` at this step `t` (from 1).
    pub bias_1: f32,
    pub bias_2: f32,
    pub lr: f32,
    /// `1 - lr * weight_decay`, the decoupled decay's factor.
    pub keep: f32,
}

/// The AdamW op the CPU device gets from us (see the module doc).
#[backend_extension(Autodiff, Flex)]
pub trait AdamWKernels: Backend {
    /// `(param, moment_1, moment_2)` after one AdamW update with gradient `grad` (the moments
    /// are zeros before the first).
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// `t` as a contiguous f32 tensor that owns exactly its elements, so that it can be updated in
/// place (burn-flex copies shared data on write).
fn owned_f32(t: FlexTensor) -> FlexTensor {
    let t = contiguous_f32(t);
    match t.layout().contiguous_offsets() {
        Some((0, end)) if end * 4 == t.bytes().len() => t,
        _ => FlexTensor::new(
            burn::backend::Bytes::from_elems(t.as_slice::<f32>().expect("contiguous").to_vec()),
            burn::backend::flex::Layout::contiguous(t.shape()),
            DType::F32,
        ),
    }
}

impl AdamWKernels for Flex {
    fn adamw_update(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        s: AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dtype = param.dtype();
        assert!(
            [&grad, &moment_1, &moment_2]
                .iter()
                .all(|t| t.shape() == param.shape()),
            "adamw_update: parameter, gradient and moments of different shapes"
        );
        let (mut p, mut m, mut v) = (owned_f32(param), owned_f32(moment_1), owned_f32(moment_2));
        let g = contiguous_f32(grad);
        let gs = g.as_slice::<f32>().expect("contiguous f32");
        p.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(m.storage_mut::<f32>().par_chunks_mut(CHUNK))
            .zip(v.storage_mut::<f32>().par_chunks_mut(CHUNK))
            .zip(gs.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| update_slice(p, m, v, g, &s));
        let back = |t: FlexTensor| {
            if dtype == DType::F32 {
                t
            } else {
                <Flex as burn::backend::ops::FloatTensorOps<Flex>>::float_cast(t, dtype.into())
            }
        };
        (back(p), back(m), back(v))
    }
}

impl<B: AdamWKernels, C: CheckpointStrategy> AdamWKernels for Autodiff<B, C> {
    fn adamw_update(
        _param: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _moment_1: FloatTensor<Self>,
        _moment_2: FloatTensor<Self>,
        _step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("optimizers update the inner (non-autodiff) tensors")
    }
}

/// burn's AdamW arithmetic, element by element: the same f32 operations in the same order
/// (`m b1 + g (1 - b1)`, `v b2 + g^2 (1 - b2)`, `(m / c1) / (sqrt(v / c2) + eps)`,
/// `p keep - update lr`).
#[inline(always)]
fn update_generic(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &AdamWStep) {
    let (f1, f2) = (1.0 - s.beta_1, 1.0 - s.beta_2);
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        *m = *m * s.beta_1 + g * f1;
        *v = *v * s.beta_2 + (g * g) * f2;
        let update = (*m / s.bias_1) / ((*v / s.bias_2).sqrt() + s.epsilon);
        *p = *p * s.keep - update * s.lr;
    }
}

super::simd::simd_dispatch! {
    fn update_slice(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &AdamWStep) => update_generic
}

/// AdamW (decoupled weight decay, no AMSGrad) computed in one pass per parameter on the CPU
/// device (see the module doc); burn's [`AdamW`] with the same settings elsewhere.
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    burn: AdamW,
}

impl FusedAdamW {
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let burn = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            burn,
        }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        if !on_cpu(&tensor.device()) {
            return self.burn.step(lr, tensor, grad, state);
        }
        let c = self;
        let (time, m, v) = match state {
            Some(s) => (
                s.momentum.time + 1,
                s.momentum.moment_1,
                s.momentum.moment_2,
            ),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let step = AdamWStep {
            beta_1: c.beta_1,
            beta_2: c.beta_2,
            epsilon: c.epsilon,
            bias_1: 1.0 - c.beta_1.powi(time as i32),
            bias_2: 1.0 - c.beta_2.powi(time as i32),
            lr: lr as f32,
            keep: (1.0 - lr * c.weight_decay as f64) as f32,
        };
        let (p, m, v) = <Dispatch as AdamWKernels>::adamw_update(
            tensor.into_dispatch(),
            grad.into_dispatch(),
            m.into_dispatch(),
            v.into_dispatch(),
            step,
        );
        let momentum =
            AdaptiveMomentumState::new(time, Tensor::from_dispatch(m), Tensor::from_dispatch(v));
        (Tensor::from_dispatch(p), Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <AdamW as Optimizer>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkpoint::optimizer_bytes;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{GradientsParams, ModuleOptimizer};
    use burn::tensor::{Bytes, Distribution};

    fn values(m: &Linear) -> Vec<f32> {
        let mut out: Vec<f32> = m.weight.val().into_data().try_to_vec().unwrap();
        let bias = m.bias.as_ref().unwrap().val().into_data();
        out.extend(bias.try_to_vec::<f32>().unwrap());
        out
    }

    fn close(a: &Linear, b: &Linear, what: &str) {
        for (u, w) in values(a).iter().zip(&values(b)) {
            assert!(
                (u - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "{what}: {u} vs {w}"
            );
        }
    }

    /// Parameters after 4 steps (the first with no state, a weight decay, a changing learning
    /// rate) against burn's AdamW, and the state it saves read back by burn's.
    #[test]
    fn matches_burn_adamw_and_shares_its_state() {
        let device = Device::flex().autodiff();
        let config = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .with_weight_decay(0.05);
        let fused = FusedAdamW::new(0.9, 0.95, 1e-8, 0.05);
        let model: Linear = LinearConfig::new(37, 29).init(&device);
        let x = Tensor::<2>::random([5, 37], Distribution::Normal(0.0, 1.0), &device);
        let train = |mut optim: ModuleOptimizer, mut m: Linear, steps: std::ops::Range<usize>| {
            for step in steps {
                let y = m.forward(x.clone());
                let loss = (y.clone() * y.cos()).sum();
                let grads = GradientsParams::from_grads(loss.backward(), &m);
                m = optim.step(1e-2 / (step + 1) as f64, m, grads);
            }
            (optim, m)
        };
        let (ours, a) = train(fused.into(), model.clone(), 0..4);
        let (theirs, b) = train(config.init(), model.clone(), 0..4);
        let moved: f32 = values(&a)
            .iter()
            .zip(values(&model))
            .map(|(u, w)| (u - w).abs())
            .sum();
        assert!(moved > 0.01, "the parameters did not move");
        close(&a, &b, "4 steps");
        // Our state, saved and loaded into burn's AdamW, continues as burn's own state does.
        let bytes = optimizer_bytes(&ours).unwrap();
        let resumed = config
            .init()
            .from_bytes(Bytes::from_bytes_vec(bytes))
            .unwrap();
        let (_, c) = train(resumed, b.clone(), 4..6);
        let (_, d) = train(theirs, b, 4..6);
        close(&c, &d, "resumed");
    }
}
