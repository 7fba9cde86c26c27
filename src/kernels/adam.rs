//! Adam and AdamW as one pass over each parameter on the CPU device.
//!
//! burn's `Adam` and `AdamW` update a parameter with about a dozen tensor ops (moments scaled
//! and added, the gradient squared, the bias corrections, square root, epsilon, division,
//! decay, the step), each a pass over the parameter's size with a freshly allocated result: at
//! the `base` MaskGIT's 172.7M parameters, ~13% of a training step went to burn-flex's scalar
//! and binary ops. [`FusedAdam`] and [`FusedAdamW`] compute the same updates with the same f32
//! operations in the same order in one parallel pass that reads the parameter, gradient and
//! both moments and writes the parameter and moments in place. Their states are burn's
//! [`AdamState`] and [`AdamWState`], so optimizer files are interchangeable with burn's; other
//! devices (wgpu, CUDA) run burn's optimizers unchanged. Neither implements burn's AMSGrad,
//! cautious or (for Adam) L2 weight decay options, which seqgan does not use.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::optim::{
    Adam, AdamConfig, AdamState, AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState,
    LearningRate, Optimizer,
};
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use super::simd::simd_dispatch;
use super::{cast_back, contiguous_f32, f32_slice, on_cpu, wrap};

/// The scalars of one update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub beta_1: f32,
    pub beta_2: f32,
    pub lr: f32,
    pub rule: Rule,
}

/// How the moments make the step, as burn computes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// burn's `Adam`: `p - lr (m c) / (sqrt(v) + eps_c)` with `c = sqrt(1 - beta_2^t) /
    /// (1 - beta_1^t)` and `eps_c = eps sqrt(1 - beta_2^t)`.
    Adam { c: f32, eps_c: f32 },
    /// burn's `AdamW`: `p keep - lr (m / bias_1) / (sqrt(v / bias_2) + eps)` with
    /// `bias_i = 1 - beta_i^t` and `keep = 1 - lr weight_decay`.
    AdamW {
        bias_1: f32,
        bias_2: f32,
        epsilon: f32,
        keep: f32,
    },
}

/// The update op the CPU device gets from us (see the module doc).
#[backend_extension(Autodiff, Flex)]
pub trait AdamKernels: Backend {
    /// `(param, moment_1, moment_2)` after one update with gradient `grad` (the moments are
    /// zeros before the first).
    fn adam_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamStep,
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
        _ => wrap(
            t.as_slice::<f32>().expect("contiguous").to_vec(),
            t.shape(),
            DType::F32,
        ),
    }
}

impl AdamKernels for Flex {
    fn adam_update(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        s: AdamStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dtype = param.dtype();
        assert!(
            [&grad, &moment_1, &moment_2]
                .iter()
                .all(|t| t.shape() == param.shape()),
            "adam_update: parameter, gradient and moments of different shapes"
        );
        let (mut p, mut m, mut v) = (owned_f32(param), owned_f32(moment_1), owned_f32(moment_2));
        let g = contiguous_f32(grad);
        let gs = f32_slice(&g);
        p.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(m.storage_mut::<f32>().par_chunks_mut(CHUNK))
            .zip(v.storage_mut::<f32>().par_chunks_mut(CHUNK))
            .zip(gs.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| update_slice(p, m, v, g, &s));
        (
            cast_back(p, dtype),
            cast_back(m, dtype),
            cast_back(v, dtype),
        )
    }
}

impl<B: AdamKernels, C: CheckpointStrategy> AdamKernels for Autodiff<B, C> {
    fn adam_update(
        _param: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _moment_1: FloatTensor<Self>,
        _moment_2: FloatTensor<Self>,
        _step: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("optimizers update the inner (non-autodiff) tensors")
    }
}

/// burn's arithmetic, element by element: the same f32 operations in the same order (moments
/// `m b1 + g (1 - b1)`, `v b2 + g^2 (1 - b2)`, then the [`Rule`]'s step).
#[inline(always)]
fn update_generic(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &AdamStep) {
    let (b1, b2, lr) = (s.beta_1, s.beta_2, s.lr);
    let (f1, f2) = (1.0 - b1, 1.0 - b2);
    let all = p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g);
    match s.rule {
        Rule::Adam { c, eps_c } => {
            for (((p, m), v), &g) in all {
                *m = *m * b1 + g * f1;
                *v = *v * b2 + (g * g) * f2;
                let update = (*m * c) / (v.sqrt() + eps_c);
                *p -= update * lr;
            }
        }
        Rule::AdamW {
            bias_1,
            bias_2,
            epsilon,
            keep,
        } => {
            for (((p, m), v), &g) in all {
                *m = *m * b1 + g * f1;
                *v = *v * b2 + (g * g) * f2;
                let update = (*m / bias_1) / ((*v / bias_2).sqrt() + epsilon);
                *p = *p * keep - update * lr;
            }
        }
    }
}

simd_dispatch! {
    fn update_slice(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &AdamStep) => update_generic
}

/// One fused update of `tensor` from `moments` (none before the first step); `rule(t)` gives
/// the step's rule at step `t` (from 1). The parameter and the new moments.
fn fused_step<const D: usize>(
    tensor: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<AdaptiveMomentumState<D>>,
    [beta_1, beta_2]: [f32; 2],
    lr: LearningRate,
    rule: impl Fn(i32) -> Rule,
) -> (Tensor<D>, AdaptiveMomentumState<D>) {
    let (time, m, v) = match moments {
        Some(s) => (s.time + 1, s.moment_1, s.moment_2),
        None => (1, grad.zeros_like(), grad.zeros_like()),
    };
    let step = AdamStep {
        beta_1,
        beta_2,
        lr: lr as f32,
        rule: rule(time as i32),
    };
    let (p, m, v) = <Dispatch as AdamKernels>::adam_update(
        tensor.into_dispatch(),
        grad.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        step,
    );
    let moments =
        AdaptiveMomentumState::new(time, Tensor::from_dispatch(m), Tensor::from_dispatch(v));
    (Tensor::from_dispatch(p), moments)
}

/// Adam (no weight decay) in one pass per parameter on the CPU device (see the module doc);
/// burn's [`Adam`] with the same settings elsewhere.
#[derive(Clone)]
pub struct FusedAdam {
    betas: [f32; 2],
    epsilon: f32,
    burn: Adam,
}

impl FusedAdam {
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32) -> Self {
        let burn = AdamConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .build();
        Self {
            betas: [beta_1, beta_2],
            epsilon,
            burn,
        }
    }
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

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
        let [b1, b2] = self.betas;
        let (p, moments) = fused_step(
            tensor,
            grad,
            state.map(|s| s.momentum),
            self.betas,
            lr,
            |t| {
                let bias_2_sqrt = (1.0 - b2.powi(t)).sqrt();
                Rule::Adam {
                    c: bias_2_sqrt / (1.0 - b1.powi(t)),
                    eps_c: self.epsilon * bias_2_sqrt,
                }
            },
        );
        (p, Some(AdamState::new(moments)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}

/// AdamW (decoupled weight decay) in one pass per parameter on the CPU device (see the module
/// doc); burn's [`AdamW`] with the same settings elsewhere.
#[derive(Clone)]
pub struct FusedAdamW {
    betas: [f32; 2],
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
            betas: [beta_1, beta_2],
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
        let [b1, b2] = self.betas;
        let keep = (1.0 - lr * self.weight_decay as f64) as f32;
        let (p, moments) = fused_step(
            tensor,
            grad,
            state.map(|s| s.momentum),
            self.betas,
            lr,
            |t| Rule::AdamW {
                bias_1: 1.0 - b1.powi(t),
                bias_2: 1.0 - b2.powi(t),
                epsilon: self.epsilon,
                keep,
            },
        );
        (p, Some(AdamWState::new(moments)))
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

    /// Parameters after 4 steps (the first with no state, a changing learning rate) against
    /// burn's optimizer, and the state ours saves read back by burn's.
    fn matches_burn(fused: ModuleOptimizer, burn: impl Fn() -> ModuleOptimizer) {
        let device = Device::flex().autodiff();
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
        let (ours, a) = train(fused, model.clone(), 0..4);
        let (theirs, b) = train(burn(), model.clone(), 0..4);
        let moved: f32 = values(&a)
            .iter()
            .zip(values(&model))
            .map(|(u, w)| (u - w).abs())
            .sum();
        assert!(moved > 0.01, "the parameters did not move");
        close(&a, &b, "4 steps");
        // Our state, saved and loaded into burn's optimizer, continues as burn's own does.
        let bytes = optimizer_bytes(&ours).unwrap();
        let resumed = burn().from_bytes(Bytes::from_bytes_vec(bytes)).unwrap();
        let (_, c) = train(resumed, b.clone(), 4..6);
        let (_, d) = train(theirs, b, 4..6);
        close(&c, &d, "resumed");
    }

    #[test]
    fn adamw_matches_burn_and_shares_its_state() {
        let config = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .with_weight_decay(0.05);
        matches_burn(FusedAdamW::new(0.9, 0.95, 1e-8, 0.05).into(), || {
            config.init()
        });
    }

    #[test]
    fn adam_matches_burn_and_shares_its_state() {
        let config = AdamConfig::new()
            .with_beta_1(0.5)
            .with_beta_2(0.9)
            .with_epsilon(1e-8);
        matches_burn(FusedAdam::new(0.5, 0.9, 1e-8).into(), || config.init());
    }
}
