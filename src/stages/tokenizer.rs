//! `seqgan train-tokenizer` (phase 1: encoder, codebook, decoder, discriminator) and the run
//! set-up it shares with `seqgan finetune-decoder` (phase 2, see [`super::phase2`]): the kind
//! in the config decides the phase.

use anyhow::{Result, bail};
use burn::tensor::Device;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::gan::{GanPhase, GanStage, GanState, Preview, preview_batch};
use super::phase2;
use crate::config::{self, RunKind};
use crate::data::Dataset;
use crate::perceptual::{LogitMode, PerceptualLoss};
use crate::run::{Replicas, RunDir, RunLock, driver};
use crate::tokenizer::TokenizerRunConfig;

/// Where a tokenizer run comes from.
pub enum Start<'a> {
    /// A new run into this folder (phase 1 or 2 by `config.kind`).
    New {
        config: Box<TokenizerRunConfig>,
        out: &'a Path,
    },
    /// Continue the run of this kind in this folder, with `--set` overrides (e.g. more steps).
    Resume {
        run: &'a Path,
        sets: &'a [String],
        kind: RunKind,
    },
}

/// A start whose config is validated and whose data is opened (scanned once).
pub struct Resolved {
    pub cfg: TokenizerRunConfig,
    pub out: PathBuf,
    pub resume: bool,
    pub dataset: Dataset,
}

/// Resolves the config of a start (validates it, opens the data, fills in class names).
pub fn resolve_config(start: &Start) -> Result<Resolved> {
    let (mut cfg, out, resume) = match start {
        Start::New { config, out } => {
            RunDir::create_new(out)?;
            ((**config).clone(), out.to_path_buf(), false)
        }
        Start::Resume { run, sets, kind } => {
            let dir = RunDir::open(run, *kind)?;
            let cfg: TokenizerRunConfig = dir.read_config()?;
            let cfg = config::overridden(&cfg, sets, "config.json + --set")?;
            (cfg, run.to_path_buf(), true)
        }
    };
    cfg.validate()?;
    let dataset = cfg.data.open()?;
    let names = dataset.class_names();
    if resume && !cfg.class_names.is_empty() && cfg.class_names != names {
        bail!(
            "the data at {} has classes that differ from the run's config.json ({} vs {} classes)",
            cfg.data.path,
            names.len(),
            cfg.class_names.len()
        );
    }
    cfg.class_names = names;
    // Real images, not file counts: before the model is built.
    dataset.ensure_loadable(cfg.train.batch_size, cfg.model.resolution)?;
    Ok(Resolved {
        cfg,
        out,
        resume,
        dataset,
    })
}

/// Runs phase 1 or 2 on `device` (a plain device; autodiff is added here). Returns the final
/// state.
pub fn train_tokenizer(start: Start, device: &Device, stop: &AtomicBool) -> Result<GanState> {
    train_resolved(resolve_config(&start)?, std::slice::from_ref(device), stop)
}

/// Runs a phase from an already resolved start, data-parallel when several `devices` are given
/// (plain devices, the first is the main one; autodiff is added here).
pub fn train_resolved(
    resolved: Resolved,
    devices: &[Device],
    stop: &AtomicBool,
) -> Result<GanState> {
    let Resolved {
        cfg,
        out,
        resume,
        dataset,
    } = resolved;
    let replicas = Replicas::new(devices.iter().map(|d| d.clone().autodiff()).collect())?;
    let ad = replicas.main().clone();
    eprintln!("data: {}", dataset.describe());
    let perceptual = PerceptualLoss::new(&cfg.perceptual, &ad)?;
    eprintln!("perceptual: {}", perceptual.describe());
    if cfg.perceptual.alpha > 0.0 && cfg.perceptual.logits == LogitMode::Relu5Only {
        eprintln!(
            "WARNING: L_sem runs WITHOUT the class-logit term (perceptual.logits = relu5-only); \
             the paper's L_sem needs VGG-16 classifier weights (torchvision vgg16-397923af.pth)"
        );
    }
    let run = RunDir::create(&out)?;
    let _lock = RunLock::acquire(run.root())?;
    run.write_config(&cfg)?;
    // Phase 2 starts from (and shows next to its own) the phase-1 tokenizer.
    let phase1 = match cfg.kind {
        RunKind::Decoder => phase2::open_phase1(&cfg, &ad, resume)?,
        _ => None,
    };
    // Sample grids (and phase 1's reference row) only when the run writes them.
    let preview = if cfg.train.sample_every > 0 {
        let x = preview_batch(
            &cfg.data.path,
            cfg.data.builtin_len,
            cfg.model.resolution,
            8,
            &ad,
        )?;
        let reference = phase1
            .as_ref()
            .map(|p| phase2::reconstructions(&p.model, &x));
        Some(Preview { x, reference })
    } else {
        None
    };
    let phase = GanPhase::new(&cfg, ad, &perceptual).with_replicas(replicas)?;
    let mut stage = GanStage::new(phase, dataset, preview, phase1.as_ref());
    driver::run(&mut stage, &run, resume, stop)
}
