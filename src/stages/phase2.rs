//! `seqgan finetune-decoder`: phase 2. The phase-1 encoder and codebook are frozen (token maps
//! never change) and the decoder, enhanced with regional/dilated attention, is finetuned with
//! L1 + `L_low` (alpha = 0) + GAN. The loop is phase 1's ([`super::gan`]) with the phase as a
//! parameter; this module builds the phase-2 config and opens the phase-1 run.

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use image::RgbImage;
use std::path::Path;

use crate::config::{self, RunKind};
use crate::data::image_io;
use crate::run::RunDir;
use crate::run::checkpoint::inference_weights;
use crate::tokenizer::run_config::PHASE2_PRESETS;
use crate::tokenizer::{TokenizerModelConfig, TokenizerRunConfig, TrainedTokenizer, VqModel};

/// The phase-2 config: the phase-1 run's `config.json`, then the phase-2 patch (`preset`, a
/// name from [`PHASE2_PRESETS`] or a JSON file), then `--set` overrides. The model may only
/// change in `model.attention`.
pub fn phase2_config(
    tokenizer: &Path,
    preset: &str,
    sets: &[String],
    data: Option<&str>,
) -> Result<TokenizerRunConfig> {
    let dir = RunDir::open(tokenizer, RunKind::Tokenizer).map_err(|e| {
        anyhow::anyhow!("--tokenizer: {e:#} (finetune-decoder starts from a train-tokenizer run)")
    })?;
    let base: TokenizerRunConfig = dir.read_config()?;
    let (checkpoint, state) = dir.require_latest()?;
    let mut cfg = as_phase2(&base, preset, sets)?;
    let unchanged = TokenizerModelConfig {
        attention: base.model.attention.clone(),
        ..cfg.model.clone()
    };
    if unchanged != base.model {
        bail!(
            "phase 2 keeps the phase-1 encoder, codebook and decoder shape: only model.attention.* \
             may change (phase 1's model: {})",
            serde_json::to_string(&base.model)?
        );
    }
    if cfg.disc != base.disc && !cfg.finetune.reinit_disc {
        bail!(
            "disc.* differs from phase 1's discriminator; add --set finetune.reinit_disc=true to \
             train a new one"
        );
    }
    cfg.finetune.tokenizer = Some(tokenizer.to_path_buf());
    cfg.finetune.tokenizer_step = state.step;
    cfg.finetune.tokenizer_weights = inference_weights(&checkpoint).into();
    if let Some(d) = data {
        cfg.data.path = d.to_string();
    }
    Ok(cfg)
}

/// `base` with the phase-2 patch `preset` (a name from [`PHASE2_PRESETS`] or a JSON file) and
/// `--set` overrides applied, as a decoder-kind config.
pub fn as_phase2(
    base: &TokenizerRunConfig,
    preset: &str,
    sets: &[String],
) -> Result<TokenizerRunConfig> {
    let mut all = config::patch_to_sets(&config::load_json_from(preset, PHASE2_PRESETS)?);
    all.extend_from_slice(sets);
    let mut cfg = config::overridden(base, &all, &format!("phase-2 config: {preset} + --set"))?;
    cfg.kind = RunKind::Decoder;
    Ok(cfg)
}

/// The phase-1 tokenizer of a phase-2 config, on `device`. A new run needs it (an error when
/// it cannot be read); a resumed run only uses it for the sample grids' reference row, so
/// there a missing or changed phase-1 folder is a warning.
pub fn open_phase1(
    cfg: &TokenizerRunConfig,
    device: &Device,
    resume: bool,
) -> Result<Option<TrainedTokenizer>> {
    let Some(path) = &cfg.finetune.tokenizer else {
        bail!("a decoder run's config.json must name its phase-1 run in finetune.tokenizer");
    };
    let loaded = TrainedTokenizer::load(path, device).and_then(|t| {
        if t.step != cfg.finetune.tokenizer_step {
            bail!(
                "{} is now at step {}, but this phase-2 run started from step {}",
                path.display(),
                t.step,
                cfg.finetune.tokenizer_step
            );
        }
        Ok(t)
    });
    match (loaded, resume) {
        (Ok(t), _) => {
            eprintln!("phase 1: {}", t.describe());
            Ok(Some(t))
        }
        (Err(e), false) => Err(e),
        (Err(e), true) => {
            eprintln!("WARNING: sample grids will lack the phase-1 row: {e:#}");
            Ok(None)
        }
    }
}

/// Reconstructions of `x` by a model, as images (for sample grids).
pub fn reconstructions(model: &VqModel, x: &Tensor<4>) -> Vec<RgbImage> {
    let x = x.clone().inner();
    let (x_hat, _) = model.valid().forward(x, 1.0);
    image_io::to_images(x_hat)
}
