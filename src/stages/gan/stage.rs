//! A tokenizer phase as a stage of the training driver: what it logs (typed records with
//! codebook usage over the log window), its sample grids, and how its state starts.

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::{Device, IndexingUpdateOp, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::{GanPhase, GanState, StepOut};
use crate::config::RunKind;
use crate::data::{Dataset, Loader, LoaderSpec, image_io};
use crate::eval::metrics::CodeUsage;
use crate::run::driver::devices_note;
use crate::run::{RunDir, Schedule, Stage, TrainState};
use crate::tokenizer::TrainedTokenizer;

/// One line of a tokenizer run's `metrics.jsonl`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GanRecord {
    pub step: usize,
    pub loss: f64,
    pub l1: f64,
    pub perceptual: f64,
    pub codebook: f64,
    pub commit: f64,
    /// Entropy of the mean soft code assignment (the term the loss maximises).
    pub usage_entropy_soft: f64,
    /// Share of codes hit in the log window.
    pub codebook_usage: f64,
    /// `exp` of the entropy of the codes hit in the log window.
    pub perplexity: f64,
    pub lr: f64,
    pub img_per_s: f64,
    pub images_seen: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l_low: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l_sem: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub g_adv: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r1: Option<f64>,
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
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
    let ds = Dataset::open_images(spec, builtin_len.max(n))?;
    let mut loader = Loader::new(ds, LoaderSpec::sequential(res, n).workers(1, 1))?;
    let batch = loader.next_batch().context("no readable preview images")?;
    Ok(batch.to_tensor(device))
}

/// Phase 1 or 2 (by `cfg.kind`) under the training driver.
pub struct GanStage<'a> {
    pub phase: GanPhase<'a>,
    dataset: Dataset,
    loader: Option<Loader>,
    preview: Option<Preview>,
    /// Phase 2: the phase-1 tokenizer a new run starts from.
    phase1: Option<&'a TrainedTokenizer>,
    /// Code histogram of the current log window (plain device).
    counts: Tensor<1>,
}

impl<'a> GanStage<'a> {
    pub fn new(
        phase: GanPhase<'a>,
        dataset: Dataset,
        preview: Option<Preview>,
        phase1: Option<&'a TrainedTokenizer>,
    ) -> Self {
        let counts = Tensor::zeros(
            [phase.cfg.model.codebook_size],
            &phase.device.clone().inner(),
        );
        Self {
            phase,
            dataset,
            loader: None,
            preview,
            phase1,
            counts,
        }
    }

    /// Writes `samples/step-N.png`: inputs, then the reference row (phase 2: phase 1's
    /// reconstructions) if any, then this run's reconstructions (EMA weights when kept).
    fn write_samples(
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

impl Stage for GanStage<'_> {
    type State = GanState;
    type Out = StepOut;
    type Record = GanRecord;

    fn command(&self) -> &'static str {
        match self.phase.cfg.kind {
            RunKind::Decoder => "finetune-decoder",
            _ => "train-tokenizer",
        }
    }

    fn device(&self) -> &Device {
        &self.phase.device
    }

    fn schedule(&self) -> Schedule {
        let t = &self.phase.cfg.train;
        Schedule {
            steps: t.steps,
            log_every: t.log_every,
            checkpoint_every: t.checkpoint_every,
            keep_last: t.keep_last,
            patience: t.nonfinite_patience,
        }
    }

    fn init(&mut self) -> Result<GanState> {
        Ok(match self.phase1 {
            Some(p) => self
                .phase
                .init_from_phase1(p.model.clone(), p.load_discriminator(&self.phase.device)?),
            None => self.phase.init_state(),
        })
    }

    fn restore(&mut self, dir: &Path, position: TrainState) -> Result<GanState> {
        self.phase.load_state(dir, position)
    }

    fn announce(&self, st: &GanState) {
        let mut total = 0;
        for (name, n) in st.model.param_counts() {
            eprintln!("params {name:>13}: {:>11} ({:.2}M)", n, n as f64 / 1e6);
            total += n;
        }
        let d = st.disc.num_params();
        for (name, n) in [("tokenizer", total), ("discriminator", d)] {
            eprintln!("params {name:>13}: {n:>11} ({:.2}M)", n as f64 / 1e6);
        }
    }

    fn step(&mut self, st: &mut GanState) -> Result<Self::Out> {
        if self.loader.is_none() {
            let t = &self.phase.cfg.train;
            let spec = LoaderSpec::train(
                self.phase.cfg.model.resolution,
                t.batch_size,
                t.seed,
                self.phase.cfg.data.hflip,
            )
            .start_at(st.state.batches_drawn)
            .workers(t.num_workers, t.prefetch);
            self.loader = Some(Loader::new(self.dataset.clone(), spec)?);
        }
        let loader = self.loader.as_mut().expect("created above");
        let mut out = self.phase.step(st, loader)?;
        let inner = self.phase.device.clone().inner();
        for idx in std::mem::take(&mut out.indices) {
            let n = idx.dims()[0];
            self.counts = self.counts.clone().scatter(
                0,
                idx.inner(),
                Tensor::ones([n], &inner),
                IndexingUpdateOp::Add,
            );
        }
        Ok(out)
    }

    fn non_finite(&self, out: &StepOut) -> Option<String> {
        out.non_finite.clone()
    }

    fn record(
        &mut self,
        st: &GanState,
        StepOut {
            terms, disc: d_out, ..
        }: StepOut,
        secs: f64,
        steps: usize,
    ) -> Result<GanRecord> {
        let t = &self.phase.cfg.train;
        let k = self.phase.cfg.model.codebook_size;
        let hist: Vec<f32> = self
            .counts
            .clone()
            .into_data()
            .try_to_vec()
            .expect("f32 counts");
        self.counts = Tensor::zeros([k], &self.phase.device.clone().inner());
        let usage = CodeUsage::from_counts(hist.iter().map(|c| *c as u64));
        let step = st.state.step;
        let images = steps * t.batch_size * t.grad_accum;
        Ok(GanRecord {
            step,
            loss: scalar(&terms.loss),
            l1: scalar(&terms.l1),
            perceptual: scalar(&terms.perceptual),
            codebook: scalar(&terms.codebook),
            commit: scalar(&terms.commit),
            usage_entropy_soft: scalar(&terms.entropy),
            codebook_usage: usage.usage(),
            perplexity: usage.perplexity(),
            lr: self.phase.lr(step - 1, t.lr),
            img_per_s: images as f64 / secs.max(1e-9),
            images_seen: st.state.images_seen,
            l_low: terms.l_low.as_ref().map(scalar),
            l_sem: terms.l_sem.as_ref().map(scalar),
            g_adv: terms.g_adv.as_ref().map(scalar),
            d_loss: d_out.as_ref().map(|d| scalar(&d.loss)),
            r1: d_out.as_ref().and_then(|d| d.r1.as_ref().map(scalar)),
        })
    }

    fn summary(&self, r: &GanRecord) -> String {
        format!(
            "loss {:.4} l1 {:.4} usage {:.0}% {:.1} img/s{}",
            r.loss,
            r.l1,
            100.0 * r.codebook_usage,
            r.img_per_s,
            devices_note(self.phase.replicas().count())
        )
    }

    fn samples(&mut self, st: &GanState, run: &RunDir, step: usize) -> Result<()> {
        let every = self.phase.cfg.train.sample_every;
        match &self.preview {
            Some(p) if step.is_multiple_of(every) || step == self.phase.cfg.train.steps => {
                self.write_samples(run, st, p, step)
            }
            _ => Ok(()),
        }
    }

    fn finish(&mut self) {
        self.dataset.report_skipped();
    }
}
