//! A transformer run as a stage of the training driver: one AdamW step over `grad_accum`
//! micro-batches, validation with fixed masks, typed metrics records.

use anyhow::Result;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::optim::{adamw, clip_global_norm, lr_at};
use crate::data::loader::keyed_rng;
use crate::data::tokens::TokenFile;
use crate::run::checkpoint::{
    all_finite, load_module, load_optimizer, module_bytes, optimizer_bytes, with_ema,
};
use crate::run::driver::devices_note;
use crate::run::{Checkpointed, Replicas, Schedule, Stage, TrainState};
use crate::stages::ema;
use crate::stages::in_place;
use crate::transformer::batch::{self, Order, Split};
use crate::transformer::{Transformer, TransformerRunConfig, build, vocab};

/// Everything a transformer run trains.
pub struct TransformerState {
    pub model: Transformer,
    pub ema: Option<Transformer>,
    pub optim: ModuleOptimizer,
    pub state: TrainState,
}

impl Checkpointed for TransformerState {
    crate::position_in_state_field!();

    fn finite(&self) -> bool {
        all_finite(&self.model) && self.ema.as_ref().is_none_or(all_finite)
    }

    fn files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let files = vec![
            ("model.bpk", module_bytes(&self.model)?),
            ("optim.bpk", optimizer_bytes(&self.optim)?),
        ];
        with_ema(files, self.ema.as_ref())
    }
}

/// Metrics of one optimiser step (device scalars).
pub struct StepOut {
    pub loss: Tensor<1>,
    pub accuracy: Tensor<1>,
    pub grad_norm: f64,
    /// Whether the loss (or the gradient norm) was not finite, so the update was skipped.
    pub skipped: bool,
}

/// One line of a transformer run's `metrics.jsonl`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TransformerRecord {
    pub step: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub entries_seen: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
}

/// A transformer training run.
pub struct TransformerStage<'a> {
    pub cfg: &'a TransformerRunConfig,
    /// An autodiff device (the main one of the replicas).
    pub device: Device,
    pub tokens: &'a TokenFile,
    pub split: Split,
    order: Order,
    replicas: Replicas,
}

impl<'a> TransformerStage<'a> {
    pub fn new(cfg: &'a TransformerRunConfig, device: Device, tokens: &'a TokenFile) -> Self {
        let split = batch::split(tokens, cfg.train.val_fraction, cfg.train.seed);
        let order = Order::new(split.train.clone(), cfg.train.batch_size, cfg.train.seed);
        Self {
            cfg,
            replicas: Replicas::single(device.clone()),
            device,
            tokens,
            split,
            order,
        }
    }

    /// The same run data-parallel over `replicas` (whose first device is this stage's): each
    /// micro-batch is split into equal shards, each replica's loss is its share of the global
    /// batch's weighted mean, and the gradients are gathered onto the first device.
    pub fn with_replicas(self, replicas: Replicas) -> Result<Self> {
        anyhow::ensure!(
            replicas.main() == &self.device,
            "the first replica must be the stage's device"
        );
        replicas.shard_size(self.cfg.train.batch_size)?;
        Ok(Self { replicas, ..self })
    }

    /// Loss and accuracy of one micro-batch with its gradients gathered into `acc`.
    fn micro_batch(
        &self,
        model: &Transformer,
        forks: &[Transformer],
        hb: &batch::HostBatch,
        acc: &mut GradientsAccumulator<Transformer>,
    ) -> batch::LossOut {
        let accum = self.cfg.train.grad_accum as f64;
        let (arch, smoothing) = (self.cfg.arch, self.cfg.label_smoothing());
        let n = self.replicas.count();
        if n == 1 {
            let (inputs, targets, weights) = hb.to_device(&self.device);
            let out = batch::loss(model.forward(inputs), targets, weights, arch, smoothing);
            let grads = (out.loss.clone() / accum).backward();
            acc.accumulate(model, GradientsParams::from_grads(grads, model));
            return out;
        }
        let total = hb.weight_total().max(1.0) as f32;
        let main = self.replicas.main();
        let mut sum: Option<batch::LossOut> = None;
        for (r, shard) in hb.split(n).iter().enumerate() {
            let device = self.replicas.device(r);
            let (inputs, targets, weights) = shard.to_device(device);
            let total = Tensor::<1>::from_floats([total], device);
            let out = batch::loss_over(
                forks[r].forward(inputs),
                targets,
                weights,
                arch,
                smoothing,
                total,
            );
            let grads = (out.loss.clone() / accum).backward();
            self.replicas
                .gather(acc, model, GradientsParams::from_grads(grads, &forks[r]));
            let on = |t: Tensor<1>| t.detach().to_device(main);
            let out = batch::LossOut {
                loss: on(out.loss),
                ce: on(out.ce),
                accuracy: on(out.accuracy),
            };
            sum = Some(match sum {
                None => out,
                Some(s) => batch::LossOut {
                    loss: s.loss + out.loss,
                    ce: s.ce + out.ce,
                    accuracy: s.accuracy + out.accuracy,
                },
            });
        }
        sum.expect("replicas")
    }

    fn eval_due(&self, step: usize) -> bool {
        step.is_multiple_of(self.cfg.train.eval_every) || step == self.cfg.train.steps
    }

    /// Validation cross-entropy and accuracy with fixed masks and no class dropout (so values
    /// are comparable across steps); EMA weights when kept.
    pub fn validate(&self, st: &TransformerState) -> Option<(f64, f64)> {
        if self.split.val.is_empty() {
            return None;
        }
        let model = st.ema.as_ref().unwrap_or(&st.model).valid();
        let inner = self.device.clone().inner();
        let t = &self.cfg.train;
        let v = vocab(self.cfg);
        let (mut ce, mut acc, mut n) = (0.0, 0.0, 0.0);
        for (j, entries) in self
            .split
            .val
            .chunks(t.batch_size)
            .take(t.val_batches)
            .enumerate()
        {
            let mut rng = keyed_rng(t.seed ^ 0x0076_616c, j as u64);
            let hb = batch::make_batch(self.tokens, entries, v, &mut rng, 0.0);
            let (inputs, targets, weights) = hb.to_device(&inner);
            let out = batch::loss(model.forward(inputs), targets, weights, self.cfg.arch, 0.0);
            let w = entries.len() as f64;
            ce += out.ce.into_scalar::<f32>() as f64 * w;
            acc += out.accuracy.into_scalar::<f32>() as f64 * w;
            n += w;
        }
        Some((ce / n, acc / n))
    }
}

impl Stage for TransformerStage<'_> {
    type State = TransformerState;
    type Out = StepOut;
    type Record = TransformerRecord;

    fn command(&self) -> &'static str {
        "train-transformer"
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn schedule(&self) -> Schedule {
        let t = &self.cfg.train;
        Schedule {
            steps: t.steps,
            log_every: t.log_every,
            checkpoint_every: t.checkpoint_every,
            keep_last: t.keep_last,
            patience: t.nonfinite_patience,
        }
    }

    fn init(&mut self) -> Result<TransformerState> {
        let model = build(self.cfg, &self.device);
        let ema = (self.cfg.train.ema_decay > 0.0).then(|| ema::init(&model));
        Ok(TransformerState {
            model,
            ema,
            optim: adamw(self.cfg),
            state: TrainState {
                seed: self.cfg.train.seed,
                ..Default::default()
            },
        })
    }

    fn restore(&mut self, dir: &Path, state: TrainState) -> Result<TransformerState> {
        let fresh = self.init()?;
        let ema = fresh
            .ema
            .map(|e| load_module(e, dir, "ema.bpk"))
            .transpose()?;
        let optim = load_optimizer(fresh.optim, dir, "optim.bpk")?;
        Ok(TransformerState {
            model: load_module(fresh.model, dir, "model.bpk")?,
            ema,
            optim,
            state,
        })
    }

    fn announce(&self, st: &TransformerState) {
        let params = st.model.num_params();
        eprintln!(
            "params {:?} transformer: {params} ({:.2}M)",
            self.cfg.arch,
            params as f64 / 1e6
        );
    }

    /// One optimiser step over `grad_accum` micro-batches.
    fn step(&mut self, st: &mut TransformerState) -> Result<StepOut> {
        let t = &self.cfg.train;
        let step = st.state.step;
        // Dropout draws from the device generator: reseeding per step makes a resumed run
        // draw exactly what the uninterrupted one drew.
        self.device
            .seed(t.seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let v = vocab(self.cfg);
        // The broadcast: this step's weights on every replica.
        let forks: Vec<Transformer> = (0..self.replicas.count())
            .map(|r| self.replicas.place(&st.model, r))
            .collect();
        let mut acc = GradientsAccumulator::new();
        let mut last = None;
        for _ in 0..t.grad_accum {
            let k = st.state.batches_drawn;
            let entries = self.order.batch(k);
            let mut rng = keyed_rng(t.seed ^ 0x6d61_736b, k as u64);
            let hb = batch::make_batch(self.tokens, &entries, v, &mut rng, t.class_dropout);
            let out = self.micro_batch(&st.model, &forks, &hb, &mut acc);
            st.state.batches_drawn += 1;
            st.state.images_seen += entries.len() as u64;
            last = Some(out);
        }
        // The replicas share the parameters: dropped, so that the optimiser owns them alone.
        drop(forks);
        let mut grads = acc.grads();
        // The gradient norm is read every step (for clipping); a non-finite loss makes it
        // non-finite too, and then nothing is updated.
        let grad_norm = clip_global_norm(&st.model, &mut grads, t.grad_clip);
        let skipped = !grad_norm.is_finite();
        if !skipped {
            let optim = &mut st.optim;
            in_place::update(&mut st.model, |m| {
                optim.step(lr_at(self.cfg, step), m, grads)
            });
            if let Some(e) = st.ema.take() {
                st.ema = Some(ema::update(e, &st.model, t.ema_decay));
            }
        }
        st.state.step += 1;
        let out = last.expect("grad_accum >= 1");
        Ok(StepOut {
            loss: out.loss,
            accuracy: out.accuracy,
            grad_norm,
            skipped,
        })
    }

    fn non_finite(&self, out: &StepOut) -> Option<String> {
        out.skipped
            .then(|| format!("the gradient norm is {} (loss not finite)", out.grad_norm))
    }

    fn log_due(&self, step: usize) -> bool {
        step.is_multiple_of(self.cfg.train.log_every)
            || self.eval_due(step)
            || step == self.cfg.train.steps
    }

    fn record(
        &mut self,
        st: &TransformerState,
        out: StepOut,
        secs: f64,
        steps: usize,
    ) -> Result<TransformerRecord> {
        let t = &self.cfg.train;
        let step = st.state.step;
        let tokens = steps * t.batch_size * t.grad_accum * self.tokens.header.tokens_per_entry();
        let val = if self.eval_due(step) {
            self.validate(st)
        } else {
            None
        };
        Ok(TransformerRecord {
            step,
            loss: out.loss.into_scalar::<f32>() as f64,
            accuracy: out.accuracy.into_scalar::<f32>() as f64,
            grad_norm: out.grad_norm,
            lr: lr_at(self.cfg, step - 1),
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            entries_seen: st.state.images_seen,
            val_loss: val.map(|v| v.0),
            val_accuracy: val.map(|v| v.1),
        })
    }

    fn summary(&self, r: &TransformerRecord) -> String {
        let val = r
            .val_loss
            .map(|v| format!(" val {v:.3}"))
            .unwrap_or_default();
        format!(
            "loss {:.3}{val} acc {:.3} {:.0} tok/s{}",
            r.loss,
            r.accuracy,
            r.tokens_per_s,
            devices_note(self.replicas.count())
        )
    }
}
