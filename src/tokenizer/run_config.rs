//! What a tokenizer run's `config.json` holds (phase 1, or phase 2 with `kind = decoder`):
//! model and discriminator sizes, loss weights, perceptual loss, optimisation, data.

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::config::{DiscConfig, TokenizerModelConfig};
use crate::config::{Preset, RunKind};
use crate::data::DataConfig;
use crate::perceptual::PerceptualConfig;

/// Adversarial loss form.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GanLossKind {
    /// Non-saturating logistic loss (StyleGAN2).
    NonSaturating,
    /// Hinge loss (taming-transformers).
    Hinge,
}

/// Loss weights.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Weight of the L1 reconstruction term.
    pub l1: f64,
    /// Weight of the codebook term `||sg[z_e] - z_q||^2`.
    pub codebook: f64,
    /// Commitment weight beta.
    pub beta: f64,
    /// Usage-entropy weight gamma (the loss adds `-gamma H(mean soft assignment)`).
    pub entropy_gamma: f64,
    /// Temperature of the soft assignment softmax(-D / T) used by the entropy term.
    pub entropy_temperature: f64,
    /// Weight of the perceptual term `L_alpha`.
    pub perceptual: f64,
    /// Fixed generator GAN weight.
    pub gan: f64,
    /// Adversarial loss form.
    pub gan_loss: GanLossKind,
    /// Generator step at which the GAN terms switch on.
    pub disc_start: usize,
    /// R1 penalty weight (0 disables).
    pub r1_gamma: f64,
    /// Lazy R1: apply every this many discriminator steps (weight scaled by the interval).
    pub r1_interval: usize,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            l1: 1.0,
            codebook: 1.0,
            beta: 0.25,
            entropy_gamma: 0.01,
            entropy_temperature: 1.0,
            perceptual: 1.0,
            gan: 0.1,
            gan_loss: GanLossKind::NonSaturating,
            disc_start: 50_000,
            r1_gamma: 10.0,
            r1_interval: 16,
        }
    }
}

/// Optimisation and bookkeeping.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Total optimiser steps.
    pub steps: usize,
    /// Images per micro-batch.
    pub batch_size: usize,
    /// Micro-batches accumulated per optimiser step.
    pub grad_accum: usize,
    /// Generator learning rate (Adam).
    pub lr: f64,
    /// Discriminator learning rate.
    pub disc_lr: f64,
    /// Adam beta1.
    pub beta1: f64,
    /// Adam beta2.
    pub beta2: f64,
    /// Adam epsilon (PyTorch's default, as in the taming/StyleGAN lineage; burn's is 1e-5).
    pub adam_eps: f64,
    /// Linear learning-rate warm-up steps.
    pub warmup_steps: usize,
    /// EMA decay of the generator weights (0 disables EMA).
    pub ema_decay: f64,
    /// Seed of every random choice (init, data order, augmentation).
    pub seed: u64,
    /// Log a metrics line every this many steps.
    pub log_every: usize,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Keep this many step checkpoints besides `latest`.
    pub keep_last: usize,
    /// Write a sample grid every this many steps (0 disables).
    pub sample_every: usize,
    /// Consecutive steps with a non-finite loss skipped (no update) before the run stops;
    /// 0 stops at the first. Nothing is saved after a divergence.
    pub nonfinite_patience: usize,
    /// Image-decoding worker threads.
    pub num_workers: usize,
    /// Batches decoded ahead per worker.
    pub prefetch: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 500_000,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-4,
            disc_lr: 1e-4,
            beta1: 0.5,
            beta2: 0.9,
            adam_eps: 1e-8,
            warmup_steps: 0,
            ema_decay: 0.0,
            seed: 0,
            log_every: 50,
            checkpoint_every: 5000,
            keep_last: 2,
            sample_every: 5000,
            nonfinite_patience: 0,
            num_workers: 4,
            prefetch: 2,
        }
    }
}

/// Where a phase-2 run comes from (empty in phase 1).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// The phase-1 run folder whose encoder and codebook are frozen and whose decoder is finetuned.
    pub tokenizer: Option<PathBuf>,
    /// Step of the phase-1 checkpoint used.
    pub tokenizer_step: usize,
    /// Which phase-1 weights file was used: `ema.bpk` or `model.bpk`.
    pub tokenizer_weights: String,
    /// Start the discriminator from scratch instead of from phase 1's.
    pub reinit_disc: bool,
}

/// Everything a tokenizer run (phase 1, or phase 2 with `kind = decoder`) needs; saved as the
/// run folder's `config.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerRunConfig {
    /// Kind of run folder.
    pub kind: RunKind,
    /// Tokenizer sizes.
    pub model: TokenizerModelConfig,
    /// Discriminator sizes.
    pub disc: DiscConfig,
    /// Loss weights.
    pub loss: LossConfig,
    /// Perceptual loss.
    pub perceptual: PerceptualConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// Data.
    pub data: DataConfig,
    /// Class names (folder names), filled in from the data at start-up.
    pub class_names: Vec<String>,
    /// Phase 2 only: the phase-1 run it starts from.
    pub finetune: FinetuneConfig,
}

impl Default for TokenizerRunConfig {
    fn default() -> Self {
        Self {
            kind: RunKind::Tokenizer,
            model: TokenizerModelConfig::default(),
            disc: DiscConfig::default(),
            loss: LossConfig::default(),
            perceptual: PerceptualConfig::default(),
            train: TrainConfig::default(),
            data: DataConfig::default(),
            class_names: Vec::new(),
            finetune: FinetuneConfig::default(),
        }
    }
}

/// Built-in presets, selectable by name with `--config NAME`.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../../configs/tiny.json")),
    ("small", include_str!("../../configs/small.json")),
    ("paper256", include_str!("../../configs/paper256.json")),
    ("fashion32", include_str!("../../configs/fashion32.json")),
];

/// Built-in phase-2 patches for `finetune-decoder --config NAME`: applied on top of the phase-1
/// run's config (only the keys they name change).
pub const PHASE2_PRESETS: &[(&str, &str)] = &[
    ("phase2", include_str!("../../configs/phase2.json")),
    (
        "phase2-tiny",
        include_str!("../../configs/phase2-tiny.json"),
    ),
];

impl Preset for TokenizerRunConfig {
    const PRESETS: &'static [(&'static str, &'static str)] = PRESETS;
}

impl TokenizerRunConfig {
    /// Range checks; every message names the key.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        ensure!(
            !m.channel_mult.is_empty(),
            "model.channel_mult must not be empty"
        );
        ensure!(
            m.channel_mult.iter().all(|&c| c > 0),
            "model.channel_mult entries must be > 0"
        );
        ensure!(m.base_channels > 0, "model.base_channels must be > 0");
        ensure!(m.code_dim > 0, "model.code_dim must be > 0");
        ensure!(
            (2..=65536).contains(&m.codebook_size),
            "model.codebook_size must be in 2..=65536 (token files store u16), got {}",
            m.codebook_size
        );
        ensure!(
            m.resolution >= m.downsample_factor()
                && m.resolution.is_multiple_of(m.downsample_factor()),
            "model.resolution {} must be a positive multiple of the downsampling factor {}",
            m.resolution,
            m.downsample_factor()
        );
        ensure!(m.norm_groups > 0, "model.norm_groups must be > 0");
        ensure!(m.norm_eps > 0.0, "model.norm_eps must be > 0");
        let a = &m.attention;
        ensure!(
            a.pairs_per_level > 0 && a.window > 0 && a.small_window > 0 && a.head_dim > 0,
            "model.attention.pairs_per_level, window, small_window and head_dim must be > 0"
        );
        let l = &self.loss;
        for (name, v) in [
            ("loss.l1", l.l1),
            ("loss.codebook", l.codebook),
            ("loss.beta", l.beta),
            ("loss.entropy_gamma", l.entropy_gamma),
            ("loss.perceptual", l.perceptual),
            ("loss.gan", l.gan),
            ("loss.r1_gamma", l.r1_gamma),
        ] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "{name} must be a finite number >= 0, got {v}"
            );
        }
        ensure!(
            l.entropy_temperature > 0.0,
            "loss.entropy_temperature must be > 0"
        );
        ensure!(l.r1_interval > 0, "loss.r1_interval must be > 0");
        let p = &self.perceptual;
        ensure!(
            (0.0..=1.0).contains(&p.alpha),
            "perceptual.alpha must be in [0, 1], got {}",
            p.alpha
        );
        let t = &self.train;
        ensure!(t.steps > 0, "train.steps must be > 0");
        ensure!(t.batch_size > 0, "train.batch_size must be > 0");
        ensure!(t.grad_accum > 0, "train.grad_accum must be > 0");
        ensure!(
            t.lr > 0.0 && t.disc_lr > 0.0,
            "train.lr and train.disc_lr must be > 0"
        );
        ensure!(
            (0.0..1.0).contains(&t.beta1) && (0.0..1.0).contains(&t.beta2),
            "train.beta1/beta2 must be in [0, 1)"
        );
        ensure!(
            t.adam_eps > 0.0 && t.adam_eps.is_finite(),
            "train.adam_eps must be a finite number > 0, got {}",
            t.adam_eps
        );
        ensure!(
            (0.0..1.0).contains(&t.ema_decay),
            "train.ema_decay must be in [0, 1)"
        );
        ensure!(t.log_every > 0, "train.log_every must be > 0");
        ensure!(t.checkpoint_every > 0, "train.checkpoint_every must be > 0");
        ensure!(t.num_workers > 0, "train.num_workers must be > 0");
        ensure!(t.prefetch > 0, "train.prefetch must be > 0");
        ensure!(
            self.disc.base_channels > 0,
            "disc.base_channels must be > 0"
        );
        ensure!(
            self.disc.min_resolution >= 1,
            "disc.min_resolution must be >= 1"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_preset;

    #[test]
    fn presets_parse_and_validate() {
        for (name, _) in PRESETS {
            let c: TokenizerRunConfig = from_preset(name, &[]).unwrap();
            c.validate().unwrap();
        }
    }

    #[test]
    fn out_of_range_is_an_error() {
        let c: TokenizerRunConfig = from_preset("tiny", &["perceptual.alpha=1.5".into()]).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("perceptual.alpha"), "{err}");
        let err = from_preset::<TokenizerRunConfig>("tiny", &["train.steps=\"many\"".into()])
            .unwrap_err();
        assert!(format!("{err:#}").contains("invalid"), "{err:#}");
    }
}
