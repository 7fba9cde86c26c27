//! A trained tokenizer loaded from a run folder (phase 1 `train-tokenizer` or phase 2
//! `finetune-decoder`), for commands that use it: reconstruct, phase 2, encode, sample.

use anyhow::Result;
use burn::tensor::Device;
use std::path::{Path, PathBuf};

use super::{Discriminator, TokenizerRunConfig, VqModel};
use crate::config::RunKind;
use crate::run::RunDir;
use crate::run::checkpoint::{all_finite, inference_weights, load_module, refuse_non_finite};

/// Weights and config of a tokenizer run's latest checkpoint.
pub struct TrainedTokenizer {
    /// The run's resolved config (`config.json`).
    pub cfg: TokenizerRunConfig,
    /// Encoder, codebook and decoder: the EMA weights when the run kept them, else the raw ones.
    pub model: VqModel,
    /// Phase 1 (`Tokenizer`) or phase 2 (`Decoder`).
    pub kind: RunKind,
    /// Step of the checkpoint.
    pub step: usize,
    /// `ema.bpk` or `model.bpk`.
    pub weights_file: &'static str,
    /// The checkpoint folder.
    pub checkpoint: PathBuf,
    /// The run folder.
    pub root: PathBuf,
}

impl TrainedTokenizer {
    /// Loads the latest checkpoint of a phase-1 or phase-2 run folder onto `device`. Missing,
    /// foreign (e.g. transformer) and corrupt folders are errors naming the path.
    pub fn load(root: &Path, device: &Device) -> Result<Self> {
        let (dir, kind) = RunDir::open_any(root, &[RunKind::Tokenizer, RunKind::Decoder])?;
        let cfg: TokenizerRunConfig = dir.read_config()?;
        cfg.validate()?;
        let (checkpoint, state) = dir.require_latest()?;
        let weights_file = inference_weights(&checkpoint);
        let model = load_module(VqModel::new(&cfg.model, device), &checkpoint, weights_file)?;
        refuse_non_finite(all_finite(&model), &checkpoint, weights_file)?;
        Ok(Self {
            cfg,
            model,
            kind,
            step: state.step,
            weights_file,
            checkpoint,
            root: root.to_path_buf(),
        })
    }

    /// The run's discriminator at the same checkpoint.
    pub fn load_discriminator(&self, device: &Device) -> Result<Discriminator> {
        load_module(
            Discriminator::new(&self.cfg.disc, self.cfg.model.resolution, device),
            &self.checkpoint,
            "disc.bpk",
        )
    }

    /// One line for logs: path, phase, step, weights.
    pub fn describe(&self) -> String {
        let phase = match self.kind {
            RunKind::Decoder => "phase 2",
            _ => "phase 1",
        };
        format!(
            "{} ({phase}, step {}, {})",
            self.root.display(),
            self.step,
            self.weights_file
        )
    }
}
