//! The GAN stage shared by the tokenizer phases: L1 + VQ + usage entropy + perceptual
//! `L_alpha` + adversarial loss ([`loss`]), Adam for generator and discriminator with gradient
//! accumulation and optional EMA (here), run under the one training driver ([`stage`]).
//!
//! What is trained is decided by the model itself: parts marked `no_grad()` (phase 2 freezes
//! encoder and codebook) get no gradients and so are never touched by the optimiser.

pub mod loss;
pub mod r1;
pub mod replicated;
pub mod stage;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor};
use std::path::Path;

use super::{ema, in_place};
use crate::config::RunKind;
use crate::data::Loader;
use crate::kernels::FusedAdam;
use crate::perceptual::PerceptualLoss;
use crate::run::checkpoint::{
    all_finite, load_module, load_optimizer, module_bytes, optimizer_bytes, with_ema,
};
use crate::run::{Checkpointed, Replicas, TrainState};
use crate::tokenizer::{Discriminator, TokenizerRunConfig, VqModel};
use loss::{DiscTerms, Terms, disc_terms, generator_terms};
pub use stage::{GanRecord, GanStage, Preview, preview_batch};

/// Everything one GAN phase trains and evaluates.
pub struct GanState {
    pub model: VqModel,
    pub disc: Discriminator,
    pub ema: Option<VqModel>,
    pub optim_g: ModuleOptimizer,
    pub optim_d: ModuleOptimizer,
    pub state: TrainState,
}

impl Checkpointed for GanState {
    crate::position_in_state_field!();

    fn finite(&self) -> bool {
        all_finite(&self.model)
            && all_finite(&self.disc)
            && self.ema.as_ref().is_none_or(all_finite)
    }

    fn files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let files = vec![
            ("model.bpk", module_bytes(&self.model)?),
            ("disc.bpk", module_bytes(&self.disc)?),
            ("optim_g.bpk", optimizer_bytes(&self.optim_g)?),
            ("optim_d.bpk", optimizer_bytes(&self.optim_d)?),
        ];
        with_ema(files, self.ema.as_ref())
    }
}

/// What one GAN step did.
pub struct StepOut {
    /// The last micro-batch's generator terms.
    pub terms: Terms,
    /// The last micro-batch's discriminator terms (when the GAN is on).
    pub disc: Option<DiscTerms>,
    /// Code indices per micro-batch.
    pub indices: Vec<Tensor<1, Int>>,
    /// What was not finite (that update was skipped), if anything.
    pub non_finite: Option<String>,
}

/// Sum of a step's micro-batch losses.
pub(crate) fn add(total: Option<Tensor<1>>, loss: &Tensor<1>) -> Option<Tensor<1>> {
    let loss = loss.clone().detach();
    Some(match total {
        Some(t) => t + loss,
        None => loss,
    })
}

/// Whether a summed loss is finite (one device read, before the optimiser step it guards).
pub(crate) fn finite(total: Option<Tensor<1>>) -> bool {
    total.is_none_or(|t| t.into_scalar::<f32>().is_finite())
}

/// The fixed pieces of a phase: its config, the (autodiff) device and the perceptual loss,
/// and for data-parallel runs the replicas with a copy of the loss network each.
pub struct GanPhase<'a> {
    pub cfg: &'a TokenizerRunConfig,
    pub device: Device,
    pub perceptual: &'a PerceptualLoss,
    replicas: Replicas,
    /// The perceptual loss on replicas 1.. (replica 0 uses `perceptual`).
    replica_losses: Vec<PerceptualLoss>,
}

/// Adam as configured: one fused pass per parameter on the CPU device (src/kernels/adam.rs,
/// burn's `Adam` elsewhere; the state files are the same).
fn adam(cfg: &TokenizerRunConfig) -> ModuleOptimizer {
    let t = &cfg.train;
    FusedAdam::new(t.beta1 as f32, t.beta2 as f32, t.adam_eps as f32).into()
}

impl<'a> GanPhase<'a> {
    /// A phase on one (autodiff) device.
    pub fn new(
        cfg: &'a TokenizerRunConfig,
        device: Device,
        perceptual: &'a PerceptualLoss,
    ) -> Self {
        Self {
            cfg,
            replicas: Replicas::single(device.clone()),
            device,
            perceptual,
            replica_losses: Vec::new(),
        }
    }

    /// The same phase data-parallel over `replicas` (whose first device is this phase's).
    pub fn with_replicas(self, replicas: Replicas) -> Result<Self> {
        anyhow::ensure!(
            replicas.main() == &self.device,
            "the first replica must be the phase's device"
        );
        replicas.shard_size(self.cfg.train.batch_size)?;
        let replica_losses = (1..replicas.count())
            .map(|r| self.perceptual.to_device(replicas.device(r)))
            .collect();
        Ok(Self {
            replicas,
            replica_losses,
            ..self
        })
    }

    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// The perceptual loss replica `r` computes with.
    fn perceptual_of(&self, r: usize) -> &PerceptualLoss {
        if r == 0 {
            self.perceptual
        } else {
            &self.replica_losses[r - 1]
        }
    }

    /// Fresh models and optimisers, seeded by `train.seed`. Every weight is drawn here (in
    /// module order), so the initial weights depend on the seed alone.
    pub fn init_state(&self) -> GanState {
        self.device.seed(self.cfg.train.seed);
        let model = self.prepare(materialise(VqModel::new(&self.cfg.model, &self.device)));
        let disc = materialise(Discriminator::new(
            &self.cfg.disc,
            self.cfg.model.resolution,
            &self.device,
        ));
        let ema = (self.cfg.train.ema_decay > 0.0).then(|| ema::init(&model));
        GanState {
            model,
            disc,
            ema,
            optim_g: adam(self.cfg),
            optim_d: adam(self.cfg),
            state: TrainState {
                seed: self.cfg.train.seed,
                ..Default::default()
            },
        }
    }

    /// Loads the state saved in checkpoint folder `dir` into freshly built modules.
    pub fn load_state(&self, dir: &Path, state: TrainState) -> Result<GanState> {
        let fresh = self.init_state();
        let ema = fresh
            .ema
            .map(|e| load_module(e, dir, "ema.bpk"))
            .transpose()?;
        Ok(GanState {
            model: self.prepare(load_module(fresh.model, dir, "model.bpk")?),
            disc: load_module(fresh.disc, dir, "disc.bpk")?,
            ema,
            optim_g: load_optimizer(fresh.optim_g, dir, "optim_g.bpk")?,
            optim_d: load_optimizer(fresh.optim_d, dir, "optim_d.bpk")?,
            state,
        })
    }

    /// Phase 2: a fresh state whose encoder, codebook and decoder come from the phase-1 model
    /// (its decoder gains identity-initialised attention blocks) and whose discriminator is
    /// phase 1's unless `finetune.reinit_disc`. Optimisers start fresh.
    pub fn init_from_phase1(&self, phase1: VqModel, phase1_disc: Discriminator) -> GanState {
        let mut st = self.init_state();
        let VqModel {
            encoder,
            quantizer,
            decoder,
        } = phase1;
        let model = VqModel {
            encoder,
            quantizer,
            decoder: decoder.enhance(&self.cfg.model, &self.device),
        };
        st.model = self.prepare(model);
        if !self.cfg.finetune.reinit_disc {
            st.disc = phase1_disc;
        }
        st.ema = (self.cfg.train.ema_decay > 0.0).then(|| ema::init(&st.model));
        st
    }

    /// Applies the phase's freezing: in phase 2 encoder and codebook take no gradients.
    fn prepare(&self, model: VqModel) -> VqModel {
        match self.cfg.kind {
            RunKind::Decoder => model.freeze_token_space(),
            _ => model,
        }
    }

    /// The learning rate at `step` (linear warm-up to `base`).
    pub fn lr(&self, step: usize, base: f64) -> f64 {
        let w = self.cfg.train.warmup_steps;
        if w == 0 {
            base
        } else {
            base * ((step + 1) as f64 / w as f64).min(1.0)
        }
    }

    /// The generator's Adam step (and EMA) when its summed loss `total` is finite; otherwise
    /// nothing changes and the reason is returned.
    fn update_generator(
        &self,
        st: &mut GanState,
        step: usize,
        grads: GradientsParams,
        total: Option<Tensor<1>>,
    ) -> Option<String> {
        if !finite(total) {
            return Some("the generator loss is not finite".into());
        }
        let t = &self.cfg.train;
        let optim = &mut st.optim_g;
        in_place::update(&mut st.model, |m| optim.step(self.lr(step, t.lr), m, grads));
        if let Some(e) = st.ema.take() {
            st.ema = Some(match self.cfg.kind {
                // Frozen parts are copied as they are (a blend of equal values need not be
                // bit-identical to them).
                RunKind::Decoder => VqModel {
                    decoder: ema::update(e.decoder, &st.model.decoder, t.ema_decay),
                    ..e
                },
                _ => ema::update(e, &st.model, t.ema_decay),
            });
        }
        None
    }

    /// The discriminator's Adam step when its summed loss `total` is finite; otherwise nothing
    /// changes and the reason is returned.
    fn update_discriminator(
        &self,
        st: &mut GanState,
        step: usize,
        grads: GradientsParams,
        total: Option<Tensor<1>>,
    ) -> Option<String> {
        if !finite(total) {
            return Some("the discriminator loss is not finite".into());
        }
        let lr_d = self.lr(step, self.cfg.train.disc_lr);
        let optim = &mut st.optim_d;
        in_place::update(&mut st.disc, |d| optim.step(lr_d, d, grads));
        None
    }

    fn gan_on(&self, step: usize) -> bool {
        self.cfg.loss.gan > 0.0 && step >= self.cfg.loss.disc_start
    }

    /// One optimiser step over `grad_accum` micro-batches. Returns the last micro-batch's
    /// terms and the code indices seen.
    pub fn step(&self, st: &mut GanState, loader: &mut Loader) -> Result<StepOut> {
        if self.replicas.count() > 1 {
            return self.step_replicated(st, loader);
        }
        let t = &self.cfg.train;
        let l = &self.cfg.loss;
        let step = st.state.step;
        let gan = self.gan_on(step);
        let accum = t.grad_accum;
        // The discriminator is used as is: its weight gradients from this pass are simply not
        // applied (a `no_grad()` copy would share lazily-initialised parameter state with it).
        let disc_for_g = gan.then_some(&st.disc);
        let mut acc_g = GradientsAccumulator::new();
        let mut pairs = Vec::with_capacity(accum);
        let mut indices = Vec::with_capacity(accum);
        let mut last = None;
        let (mut g_total, mut d_total) = (None, None);
        for _ in 0..accum {
            let batch = loader.next_batch().context(
                "the data loader found no readable image to fill a batch (see the skip report)",
            )?;
            st.state.batches_drawn += 1;
            st.state.images_seen += batch.len() as u64;
            let x = batch.to_tensor(&self.device);
            let (terms, x_hat, idx) =
                generator_terms(l, self.perceptual, &st.model, disc_for_g, x.clone());
            g_total = add(g_total, &terms.loss);
            let grads = (terms.loss.clone() / accum as f64).backward();
            acc_g.accumulate(&st.model, GradientsParams::from_grads(grads, &st.model));
            pairs.push((x, x_hat));
            indices.push(idx);
            last = Some(terms);
        }
        // A non-finite loss updates nothing (the driver stops or skips the step).
        let mut non_finite = self.update_generator(st, step, acc_g.grads(), g_total);
        let mut d_out = None;
        if gan {
            let d_step = step - l.disc_start;
            let r1_now = d_step.is_multiple_of(l.r1_interval);
            let mut acc_d = GradientsAccumulator::new();
            for (x, x_hat) in pairs {
                let terms = disc_terms(l, &st.disc, x, x_hat, r1_now);
                d_total = add(d_total, &terms.loss);
                let grads = (terms.loss.clone() / accum as f64).backward();
                acc_d.accumulate(&st.disc, GradientsParams::from_grads(grads, &st.disc));
                d_out = Some(terms);
            }
            let d_bad = self.update_discriminator(st, step, acc_d.grads(), d_total);
            non_finite = join(non_finite, d_bad);
        }
        st.state.step += 1;
        Ok(StepOut {
            terms: last.expect("grad_accum >= 1"),
            disc: d_out,
            indices,
            non_finite,
        })
    }
}

/// Both reasons, when both parts of a step were not finite.
pub(crate) fn join(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

/// Forces every lazily initialised weight of `module` to be drawn now.
fn materialise<M: Module>(module: M) -> M {
    struct Draw;
    impl burn::module::ModuleVisitor for Draw {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Draw);
    module
}
