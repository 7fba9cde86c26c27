//! The transformer's optimiser: AdamW, the learning-rate schedule, global-norm clipping.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use crate::kernels::{self, FusedAdamW};
use crate::transformer::TransformerRunConfig;
use crate::transformer::config::LrSchedule;

/// AdamW as configured: one fused pass per parameter on the CPU device (src/kernels/adam.rs,
/// burn's `AdamW` elsewhere; the state files are the same).
pub fn adamw(cfg: &TransformerRunConfig) -> ModuleOptimizer {
    let t = &cfg.train;
    FusedAdamW::new(
        t.beta1 as f32,
        t.beta2 as f32,
        t.adam_eps as f32,
        t.weight_decay as f32,
    )
    .into()
}

/// Learning rate at `step`: linear warm-up, then constant or cosine to `min_lr_ratio * lr`.
pub fn lr_at(cfg: &TransformerRunConfig, step: usize) -> f64 {
    let t = &cfg.train;
    if step < t.warmup_steps {
        return t.lr * (step + 1) as f64 / t.warmup_steps as f64;
    }
    match t.schedule {
        LrSchedule::Constant => t.lr,
        LrSchedule::Cosine => {
            let span = (t.steps - t.warmup_steps).max(1) as f64;
            let p = ((step - t.warmup_steps) as f64 / span).min(1.0);
            let floor = t.min_lr_ratio * t.lr;
            floor + (t.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}

/// Sum of squared gradients over all parameters (a device scalar).
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = kernels::sum_squares(g);
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

/// Multiplies every gradient by a factor.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// Clips the global L2 norm of `grads` to `max_norm` (0 disables); returns the norm before.
pub fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut sq = SquaredNorm { grads, total: None };
    module.visit(&mut sq);
    let norm = sq
        .total
        .map(|t| (t.into_scalar::<f32>() as f64).sqrt())
        .unwrap_or(0.0);
    if max_norm > 0.0 && norm > max_norm {
        module.visit(&mut Scale {
            grads,
            factor: max_norm / norm,
        });
    }
    norm
}
