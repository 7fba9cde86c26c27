//! Transformer run configuration (method.md, "Generative transformers"): architecture, sizes,
//! optimisation, and what the token file said about the tokens.

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::config::{Preset, RunKind};
use crate::data::tokens::TokenHeader;

/// Which generative transformer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// Bidirectional masked-token transformer (non-autoregressive, iterative decoding).
    Maskgit,
    /// Causal transformer in raster order (autoregressive).
    Gpt,
}

/// Learning-rate schedule after warm-up.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    Constant,
    /// Cosine decay to `min_lr_ratio * lr` at the last step.
    Cosine,
}

/// Transformer sizes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerModelConfig {
    /// Number of transformer blocks.
    pub layers: usize,
    /// Embedding width.
    pub dim: usize,
    /// Attention heads (must divide `dim`).
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp: usize,
    /// Dropout on attention output, MLP output and embeddings.
    pub dropout: f64,
}

impl Default for TransformerModelConfig {
    fn default() -> Self {
        Self {
            layers: 24,
            dim: 768,
            heads: 16,
            mlp: 3072,
            dropout: 0.1,
        }
    }
}

/// Optimisation and bookkeeping of a transformer run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerTrainConfig {
    /// Total optimiser steps.
    pub steps: usize,
    /// Token maps per micro-batch.
    pub batch_size: usize,
    /// Micro-batches accumulated per optimiser step (effective batch = batch_size x grad_accum).
    pub grad_accum: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// AdamW epsilon (PyTorch's default).
    pub adam_eps: f64,
    /// Decoupled weight decay (applied to every weight).
    pub weight_decay: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Schedule after warm-up.
    pub schedule: LrSchedule,
    /// Final lr as a fraction of `lr` for the cosine schedule.
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0 disables).
    pub grad_clip: f64,
    /// Label smoothing of the cross-entropy; unset = the architecture's default (MaskGIT 0.1,
    /// GPT 0, as taming and LlamaGen train), filled in when a run starts.
    pub label_smoothing: Option<f64>,
    /// Probability of replacing the class by the null class (for classifier-free guidance).
    pub class_dropout: f64,
    /// EMA decay of the weights (0 disables).
    pub ema_decay: f64,
    /// Seed of init, data order, masks and dropout.
    pub seed: u64,
    /// Fraction of source images held out for validation.
    pub val_fraction: f64,
    /// Validation batches per evaluation (fixed masks, so values are comparable over time).
    pub val_batches: usize,
    /// Log training metrics every this many steps.
    pub log_every: usize,
    /// Evaluate on the validation split every this many steps (and at the end).
    pub eval_every: usize,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Keep this many step checkpoints besides `latest`.
    pub keep_last: usize,
    /// Consecutive steps with a non-finite loss skipped (no update) before the run stops;
    /// 0 stops at the first. Nothing is saved after a divergence.
    pub nonfinite_patience: usize,
}

impl Default for TransformerTrainConfig {
    fn default() -> Self {
        Self {
            steps: 1_500_000,
            batch_size: 256,
            grad_accum: 1,
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.96,
            adam_eps: 1e-8,
            weight_decay: 0.045,
            warmup_steps: 5000,
            schedule: LrSchedule::Cosine,
            min_lr_ratio: 0.0,
            grad_clip: 1.0,
            label_smoothing: None,
            class_dropout: 0.1,
            ema_decay: 0.0,
            seed: 0,
            val_fraction: 0.01,
            val_batches: 8,
            log_every: 100,
            eval_every: 5000,
            checkpoint_every: 5000,
            keep_last: 2,
            nonfinite_patience: 0,
        }
    }
}

/// The tokens a run was trained on (copied from the token file's header).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// The token file.
    pub path: PathBuf,
    /// Its header.
    pub header: TokenHeader,
}

/// Everything a transformer run needs; saved as its `config.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerRunConfig {
    pub kind: RunKind,
    pub arch: Arch,
    pub model: TransformerModelConfig,
    pub train: TransformerTrainConfig,
    pub tokens: TokensConfig,
}

impl Default for TransformerRunConfig {
    fn default() -> Self {
        Self {
            kind: RunKind::Transformer,
            arch: Arch::Maskgit,
            model: TransformerModelConfig::default(),
            train: TransformerTrainConfig::default(),
            tokens: TokensConfig::default(),
        }
    }
}

/// Built-in presets for `train-transformer --config NAME`.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../../configs/transformer-tiny.json")),
    ("base", include_str!("../../configs/transformer-base.json")),
    (
        "base-cfg",
        include_str!("../../configs/transformer-base-cfg.json"),
    ),
    (
        "large",
        include_str!("../../configs/transformer-large.json"),
    ),
    (
        "large-cfg",
        include_str!("../../configs/transformer-large-cfg.json"),
    ),
];

impl Preset for TransformerRunConfig {
    const PRESETS: &'static [(&'static str, &'static str)] = PRESETS;
}

impl Arch {
    /// Label smoothing when the config does not set it: MaskGIT's 0.1; none for GPT.
    pub fn default_label_smoothing(self) -> f64 {
        match self {
            Self::Maskgit => 0.1,
            Self::Gpt => 0.0,
        }
    }
}

impl TransformerRunConfig {
    /// The label smoothing in effect (the config's, else the architecture's default).
    pub fn label_smoothing(&self) -> f64 {
        self.train
            .label_smoothing
            .unwrap_or_else(|| self.arch.default_label_smoothing())
    }

    /// Range checks; every message names the key.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        ensure!(
            m.layers > 0 && m.dim > 0 && m.heads > 0 && m.mlp > 0,
            "model.layers, dim, heads and mlp must be > 0"
        );
        ensure!(
            m.dim.is_multiple_of(m.heads),
            "model.heads ({}) must divide model.dim ({})",
            m.heads,
            m.dim
        );
        ensure!(
            (0.0..1.0).contains(&m.dropout),
            "model.dropout must be in [0, 1)"
        );
        let t = &self.train;
        ensure!(t.steps > 0, "train.steps must be > 0");
        ensure!(
            t.batch_size > 0 && t.grad_accum > 0,
            "train.batch_size and train.grad_accum must be > 0"
        );
        ensure!(t.lr > 0.0, "train.lr must be > 0");
        ensure!(
            (0.0..1.0).contains(&t.beta1) && (0.0..1.0).contains(&t.beta2),
            "train.beta1/beta2 must be in [0, 1)"
        );
        ensure!(t.weight_decay >= 0.0, "train.weight_decay must be >= 0");
        ensure!(
            (0.0..=1.0).contains(&t.min_lr_ratio),
            "train.min_lr_ratio must be in [0, 1]"
        );
        ensure!(t.grad_clip >= 0.0, "train.grad_clip must be >= 0");
        ensure!(
            (0.0..1.0).contains(&self.label_smoothing()),
            "train.label_smoothing must be in [0, 1)"
        );
        ensure!(
            t.adam_eps > 0.0 && t.adam_eps.is_finite(),
            "train.adam_eps must be a finite number > 0"
        );
        ensure!(
            (0.0..1.0).contains(&t.class_dropout),
            "train.class_dropout must be in [0, 1)"
        );
        ensure!(
            (0.0..1.0).contains(&t.ema_decay),
            "train.ema_decay must be in [0, 1)"
        );
        ensure!(
            (0.0..0.5).contains(&t.val_fraction),
            "train.val_fraction must be in [0, 0.5)"
        );
        ensure!(
            t.log_every > 0 && t.eval_every > 0 && t.checkpoint_every > 0,
            "train.log_every, eval_every and checkpoint_every must be > 0"
        );
        Ok(())
    }
}
