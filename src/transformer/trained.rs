//! A trained transformer loaded from its run folder, for sampling and visualisation.

use anyhow::Result;
use burn::tensor::Device;
use std::path::{Path, PathBuf};

use super::{Transformer, TransformerRunConfig, Vocab, build, vocab};
use crate::config::RunKind;
use crate::run::RunDir;
use crate::run::checkpoint::{all_finite, inference_weights, load_module, refuse_non_finite};
use crate::tokenizer::TrainedTokenizer;

/// Weights and config of a transformer run's latest checkpoint.
pub struct TrainedTransformer {
    pub cfg: TransformerRunConfig,
    /// EMA weights when the run kept them, else the raw ones.
    pub model: Transformer,
    pub step: usize,
    pub weights_file: &'static str,
    pub root: PathBuf,
}

impl TrainedTransformer {
    /// Loads the latest checkpoint of a `train-transformer` run folder onto `device`.
    pub fn load(root: &Path, device: &Device) -> Result<Self> {
        let dir = RunDir::open(root, RunKind::Transformer)?;
        let cfg: TransformerRunConfig = dir.read_config()?;
        cfg.validate()?;
        let (checkpoint, state) = dir.require_latest()?;
        let weights_file = inference_weights(&checkpoint);
        let model = load_module(build(&cfg, device), &checkpoint, weights_file)?;
        refuse_non_finite(all_finite(&model), &checkpoint, weights_file)?;
        Ok(Self {
            cfg,
            model,
            step: state.step,
            weights_file,
            root: root.to_path_buf(),
        })
    }

    pub fn vocab(&self) -> Vocab {
        vocab(&self.cfg)
    }

    /// Class names of the token file it was trained on.
    pub fn class_names(&self) -> &[String] {
        &self.cfg.tokens.header.class_names
    }

    /// Refuses a tokenizer whose encoder/codebook differ from the one that made the tokens.
    pub fn check_tokenizer(&self, tok: &TrainedTokenizer) -> Result<()> {
        let h = &self.cfg.tokens.header;
        let hash = tok.model.token_space_hash();
        anyhow::ensure!(
            hash == h.tokenizer_hash,
            "{} does not share the encoder/codebook this transformer was trained on (hash {hash}, \
             expected {} from {}); use that run or a finetune-decoder run made from it",
            tok.root.display(),
            h.tokenizer_hash,
            h.tokenizer.display()
        );
        anyhow::ensure!(
            tok.cfg.model.latent_size() == h.h && h.h == h.w,
            "{}: token map {}x{} does not match the transformer's {}x{}",
            tok.root.display(),
            tok.cfg.model.latent_size(),
            tok.cfg.model.latent_size(),
            h.h,
            h.w
        );
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, step {}, {})",
            self.root.display(),
            self.cfg.arch,
            self.step,
            self.weights_file
        )
    }
}
