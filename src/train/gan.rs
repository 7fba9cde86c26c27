//! The GAN training loop shared by the tokenizer phases: L1 + VQ + usage entropy + perceptual
//! `L_alpha` + adversarial loss, Adam for generator and discriminator, gradient accumulation,
//! optional EMA, atomic checkpoints, exact resume, Ctrl-C handling, metrics and sample grids.
//!
//! What is trained is decided by the model itself: parts marked `no_grad()` (phase 2 freezes
//! encoder and codebook) get no gradients and so are never touched by the optimiser.

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::{relu, softplus};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::checkpoint::{
    RunDir, TrainState, load_module, load_optimizer, module_bytes, optimizer_bytes, resume_command,
};
use super::ema;
use super::metrics::MetricsLog;
use super::progress::Progress;
use super::r1;
use crate::config::{GanLossKind, RunKind, TokenizerRunConfig};
use crate::data::{Batch, Dataset, Loader, Order};
use crate::image_io;
use crate::perceptual::PerceptualLoss;
use crate::tokenizer::{Discriminator, VqModel};
use image::RgbImage;

/// Everything one GAN phase trains and evaluates.
pub struct GanState {
    pub model: VqModel,
    pub disc: Discriminator,
    pub ema: Option<VqModel>,
    pub optim_g: ModuleOptimizer,
    pub optim_d: ModuleOptimizer,
    pub state: TrainState,
}

/// Loss terms of one generator step (device scalars; read only when logging).
pub(crate) struct Terms {
    pub(crate) loss: Tensor<1>,
    l1: Tensor<1>,
    pub(crate) perceptual: Tensor<1>,
    pub(crate) l_low: Option<Tensor<1>>,
    pub(crate) l_sem: Option<Tensor<1>>,
    pub(crate) codebook: Tensor<1>,
    pub(crate) commit: Tensor<1>,
    pub(crate) entropy: Tensor<1>,
    pub(crate) g_adv: Option<Tensor<1>>,
}

/// Discriminator loss and R1 value of a step's last micro-batch.
type DiscTerms = (Tensor<1>, Option<Tensor<1>>);
/// Generator terms, discriminator terms (when the GAN is on), code indices per micro-batch.
pub(crate) type StepOut = (Terms, Option<DiscTerms>, Vec<Tensor<1, Int>>);

/// The fixed pieces of a phase.
pub struct GanLoop<'a> {
    pub cfg: &'a TokenizerRunConfig,
    pub device: Device,
    pub perceptual: &'a PerceptualLoss,
}

fn adam(cfg: &TokenizerRunConfig) -> ModuleOptimizer {
    AdamConfig::new()
        .with_beta_1(cfg.train.beta1 as f32)
        .with_beta_2(cfg.train.beta2 as f32)
        .with_epsilon(cfg.train.adam_eps as f32)
        .init()
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

/// Uploads a host batch to the device as `[B, 3, H, W]`.
pub fn batch_tensor(batch: &Batch, device: &Device) -> Tensor<4> {
    let n = batch.len();
    Tensor::from_data(
        TensorData::new(batch.images.clone(), [n, 3, batch.res, batch.res]),
        device,
    )
}

impl<'a> GanLoop<'a> {
    /// Fresh models and optimisers, seeded by `train.seed`.
    pub fn init_state(&self) -> GanState {
        self.device.seed(self.cfg.train.seed);
        let model = self.prepare(VqModel::new(&self.cfg.model, &self.device));
        let disc = Discriminator::new(&self.cfg.disc, self.cfg.model.resolution, &self.device);
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

    /// Serialises a state into checkpoint files.
    pub fn state_files(st: &GanState) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let mut files = vec![
            ("model.bpk", module_bytes(&st.model)?),
            ("disc.bpk", module_bytes(&st.disc)?),
            ("optim_g.bpk", optimizer_bytes(&st.optim_g)?),
            ("optim_d.bpk", optimizer_bytes(&st.optim_d)?),
        ];
        if let Some(e) = &st.ema {
            files.push(("ema.bpk", module_bytes(e)?));
        }
        Ok(files)
    }

    fn lr(&self, step: usize, base: f64) -> f64 {
        let w = self.cfg.train.warmup_steps;
        if w == 0 {
            base
        } else {
            base * ((step + 1) as f64 / w as f64).min(1.0)
        }
    }

    fn gan_on(&self, step: usize) -> bool {
        self.cfg.loss.gan > 0.0 && step >= self.cfg.loss.disc_start
    }

    fn generator_terms(
        &self,
        model: &VqModel,
        disc: Option<&Discriminator>,
        x: Tensor<4>,
    ) -> (Terms, Tensor<4>, Tensor<1, Int>) {
        let l = &self.cfg.loss;
        let (x_hat, q) = model.forward(x.clone(), l.entropy_temperature);
        let l1 = (x_hat.clone() - x.clone()).abs().mean();
        let p = self.perceptual.forward(x_hat.clone(), x);
        let mut loss = l1.clone() * l.l1
            + p.total.clone() * l.perceptual
            + q.codebook_loss.clone() * l.codebook
            + q.commit_loss.clone() * (l.codebook * l.beta)
            - q.usage_entropy.clone() * l.entropy_gamma;
        let g_adv = disc.map(|d| {
            let logits = d.forward(x_hat.clone());
            let g = match l.gan_loss {
                GanLossKind::NonSaturating => softplus(logits.neg(), 1.0).mean(),
                GanLossKind::Hinge => logits.neg().mean(),
            };
            loss = loss.clone() + g.clone() * l.gan;
            g
        });
        let terms = Terms {
            loss,
            l1,
            perceptual: p.total,
            l_low: p.low,
            l_sem: p.sem,
            codebook: q.codebook_loss,
            commit: q.commit_loss,
            entropy: q.usage_entropy,
            g_adv,
        };
        (terms, x_hat.detach(), q.indices)
    }

    fn disc_loss(
        &self,
        disc: &Discriminator,
        x: Tensor<4>,
        x_hat: Tensor<4>,
        with_r1: bool,
    ) -> (Tensor<1>, Option<Tensor<1>>) {
        let l = &self.cfg.loss;
        // Lazy R1 = E ||grad_x D(x)||^2 without double backward (see `r1`), weighted
        // gamma/2 x interval as in StyleGAN2; its forward also gives the real logits.
        let (real, r1) = if with_r1 && l.r1_gamma > 0.0 {
            let (real, r1) = r1::logits_and_r1(disc, x);
            (real, Some(r1.mean()))
        } else {
            (disc.forward(x), None)
        };
        let fake = disc.forward(x_hat);
        let mut loss = match l.gan_loss {
            GanLossKind::NonSaturating => {
                softplus(real.neg(), 1.0).mean() + softplus(fake, 1.0).mean()
            }
            GanLossKind::Hinge => relu(real.neg() + 1.0).mean() + relu(fake + 1.0).mean(),
        };
        if let Some(r1) = &r1 {
            loss = loss + r1.clone() * (0.5 * l.r1_gamma * l.r1_interval as f64);
        }
        (loss, r1)
    }

    /// One optimiser step over `grad_accum` micro-batches. Returns the last micro-batch's
    /// terms and the code indices seen.
    pub(crate) fn step(&self, st: &mut GanState, loader: &mut Loader) -> Result<StepOut> {
        let t = &self.cfg.train;
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
        for _ in 0..accum {
            let batch = loader.next_batch().context("the data loader stopped")?;
            st.state.batches_drawn += 1;
            st.state.images_seen += batch.len() as u64;
            let x = batch_tensor(&batch, &self.device);
            let (terms, x_hat, idx) = self.generator_terms(&st.model, disc_for_g, x.clone());
            let grads = (terms.loss.clone() / accum as f64).backward();
            acc_g.accumulate(&st.model, GradientsParams::from_grads(grads, &st.model));
            pairs.push((x, x_hat));
            indices.push(idx);
            last = Some(terms);
        }
        let lr = self.lr(step, t.lr);
        st.model = st.optim_g.step(lr, st.model.clone(), acc_g.grads());
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
        let mut d_out = None;
        if gan {
            let d_step = step - self.cfg.loss.disc_start;
            let r1_now = d_step.is_multiple_of(self.cfg.loss.r1_interval);
            let mut acc_d = GradientsAccumulator::new();
            for (x, x_hat) in pairs {
                let (loss, r1) = self.disc_loss(&st.disc, x, x_hat, r1_now);
                let grads = (loss.clone() / accum as f64).backward();
                acc_d.accumulate(&st.disc, GradientsParams::from_grads(grads, &st.disc));
                d_out = Some((loss, r1));
            }
            let lr_d = self.lr(step, t.disc_lr);
            st.disc = st.optim_d.step(lr_d, st.disc.clone(), acc_d.grads());
        }
        st.state.step += 1;
        Ok((last.expect("grad_accum >= 1"), d_out, indices))
    }

    /// Trains until `train.steps` (or Ctrl-C via `stop`), saving into `run`. Returns the final state.
    pub fn train(
        &self,
        run: &RunDir,
        mut st: GanState,
        dataset: Dataset,
        preview: Option<&Preview>,
        stop: &AtomicBool,
    ) -> Result<GanState> {
        let t = &self.cfg.train;
        let end = t.steps;
        let start = st.state.step;
        let mut loader = Loader::new(
            dataset.clone(),
            self.cfg.model.resolution,
            t.batch_size,
            Order::Train {
                seed: t.seed,
                hflip: self.cfg.data.hflip,
            },
            st.state.batches_drawn,
            t.num_workers,
            t.prefetch,
        )?;
        let mut metrics = MetricsLog::open(&run.path("metrics.jsonl"), Some(start))?;
        let progress = Progress::new(start, end);
        let k = self.cfg.model.codebook_size;
        let inner = self.device.clone().inner();
        let mut counts = Tensor::<1>::zeros([k], &inner);
        let mut window_start = Instant::now();
        let mut window_images = 0u64;
        let mut interrupted = false;
        st.state.device = Some(crate::device::kind_of(&self.device));
        while st.state.step < end {
            let (terms, d_out, indices) = self.step(&mut st, &mut loader)?;
            for idx in indices {
                let n = idx.dims()[0];
                let idx = idx.inner();
                counts = counts.scatter(0, idx, Tensor::ones([n], &inner), IndexingUpdateOp::Add);
            }
            window_images += (t.batch_size * t.grad_accum) as u64;
            let step = st.state.step;
            progress.set(step);
            if step.is_multiple_of(t.log_every) || step == end {
                let hist: Vec<f32> = counts.clone().into_data().try_to_vec().expect("f32 counts");
                counts = Tensor::zeros([k], &inner);
                let total: f32 = hist.iter().sum();
                let used = hist.iter().filter(|c| **c > 0.0).count();
                let entropy: f64 = hist
                    .iter()
                    .filter(|c| **c > 0.0)
                    .map(|c| {
                        let p = (*c / total) as f64;
                        -p * p.ln()
                    })
                    .sum();
                let secs = window_start.elapsed().as_secs_f64();
                st.state.train_seconds += secs;
                let mut rec = json!({
                    "step": step,
                    "loss": scalar(&terms.loss),
                    "l1": scalar(&terms.l1),
                    "perceptual": scalar(&terms.perceptual),
                    "codebook": scalar(&terms.codebook),
                    "commit": scalar(&terms.commit),
                    "usage_entropy_soft": scalar(&terms.entropy),
                    "codebook_usage": used as f64 / k as f64,
                    "perplexity": entropy.exp(),
                    "lr": self.lr(step - 1, t.lr),
                    "img_per_s": window_images as f64 / secs.max(1e-9),
                    "images_seen": st.state.images_seen,
                });
                let obj = rec.as_object_mut().expect("object");
                if let Some(v) = &terms.l_low {
                    obj.insert("l_low".into(), json!(scalar(v)));
                }
                if let Some(v) = &terms.l_sem {
                    obj.insert("l_sem".into(), json!(scalar(v)));
                }
                if let Some(v) = &terms.g_adv {
                    obj.insert("g_adv".into(), json!(scalar(v)));
                }
                if let Some((d, r1)) = &d_out {
                    obj.insert("d_loss".into(), json!(scalar(d)));
                    if let Some(r1) = r1 {
                        obj.insert("r1".into(), json!(scalar(r1)));
                    }
                }
                metrics.write(&rec)?;
                progress.message(
                    step,
                    end,
                    &format!(
                        "loss {:.4} l1 {:.4} usage {:.0}% {:.1} img/s",
                        rec["loss"].as_f64().unwrap_or(f64::NAN),
                        rec["l1"].as_f64().unwrap_or(f64::NAN),
                        100.0 * used as f64 / k as f64,
                        rec["img_per_s"].as_f64().unwrap_or(0.0)
                    ),
                );
                st.state.last_metrics = rec;
                window_start = Instant::now();
                window_images = 0;
            }
            if let Some(preview) = preview
                && (step.is_multiple_of(t.sample_every) || step == end)
            {
                self.write_samples(run, &st, preview, step)?;
            }
            interrupted = stop.load(Ordering::SeqCst);
            if step.is_multiple_of(t.checkpoint_every) || step == end || interrupted {
                run.save(step, &Self::state_files(&st)?, &st.state, t.keep_last)?;
                if let Err(e) = crate::plot::plot_run(run.root(), &run.path("curves.png")) {
                    progress.println(&format!("WARNING: curves.png not written: {e:#}"));
                }
            }
            if interrupted {
                break;
            }
        }
        progress.finish();
        dataset.report_skipped();
        if interrupted {
            let command = match self.cfg.kind {
                RunKind::Decoder => "finetune-decoder",
                _ => "train-tokenizer",
            };
            eprintln!(
                "interrupted: saved step {} to {}. Resume with: {}",
                st.state.step,
                run.root().display(),
                resume_command(command, run.root(), st.state.device)
            );
        }
        Ok(st)
    }

    /// Writes `samples/step-N.png`: inputs, then the reference row (phase 2: phase 1's
    /// reconstructions) if any, then this run's reconstructions (EMA weights when kept).
    pub fn write_samples(
        &self,
        run: &RunDir,
        st: &GanState,
        preview: &Preview,
        step: usize,
    ) -> Result<()> {
        let model = st.ema.as_ref().unwrap_or(&st.model).valid();
        let x = preview.x.clone().inner();
        let (x_hat, _) = model.forward(x.clone(), 1.0);
        let mut rows = vec![image_io::to_images(x)];
        rows.extend(preview.reference.clone());
        rows.push(image_io::to_images(x_hat));
        image_io::save_png(
            &image_io::grid(&rows),
            &run.path(&format!("samples/step-{step:07}.png")),
        )
    }
}

/// The fixed held-out images of a run's sample grids.
pub struct Preview {
    /// Inputs `[N, 3, H, W]`.
    pub x: Tensor<4>,
    /// A row shown between inputs and reconstructions (phase 2: phase 1's reconstructions).
    pub reference: Option<Vec<RgbImage>>,
}

/// A small fixed held-out batch for sample grids (`builtin:shapes:val` or the first images).
pub fn preview_batch(
    data: &str,
    builtin_len: usize,
    res: usize,
    n: usize,
    device: &Device,
) -> Result<Tensor<4>> {
    let spec = if data == "builtin:shapes" {
        "builtin:shapes:val"
    } else {
        data
    };
    let ds = Dataset::open(spec, builtin_len.max(n))?;
    let mut loader = Loader::new(ds, res, n, Order::Sequential, 0, 1, 1)?;
    let batch = loader.next_batch().context("no readable preview images")?;
    Ok(batch_tensor(&batch, device))
}

/// Summary values for callers and tests.
pub fn last_metric(st: &GanState, key: &str) -> Option<f64> {
    st.state.last_metrics.get(key).and_then(Value::as_f64)
}
