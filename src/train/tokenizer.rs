//! `seqgan train-tokenizer` (phase 1: encoder, codebook, decoder, discriminator) and the run
//! set-up it shares with `seqgan finetune-decoder` (phase 2, see [`super::decoder`]): the kind
//! in the config decides the phase.

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::checkpoint::RunDir;
use super::decoder;
use super::gan::{GanLoop, GanState, Preview, preview_batch};
use crate::config::{self, LogitMode, RunKind, TokenizerRunConfig};
use crate::data::Dataset;
use crate::perceptual::PerceptualLoss;

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
            let defaults = serde_json::to_value(TokenizerRunConfig::default())?;
            let value = config::apply_overrides(serde_json::to_value(&cfg)?, sets, &defaults)?;
            (serde_json::from_value(value)?, run.to_path_buf(), true)
        }
    };
    cfg.validate()?;
    let dataset = Dataset::open(&cfg.data.path, cfg.data.builtin_len)?;
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
    train_resolved(resolve_config(&start)?, device, stop)
}

/// Runs a phase from an already resolved start.
pub fn train_resolved(resolved: Resolved, device: &Device, stop: &AtomicBool) -> Result<GanState> {
    let Resolved {
        cfg,
        out,
        resume,
        dataset,
    } = resolved;
    eprintln!("data: {}", dataset.describe());
    let ad = device.clone().autodiff();
    let perceptual = PerceptualLoss::new(&cfg.perceptual, &ad)?;
    eprintln!("perceptual: {}", perceptual.describe());
    if cfg.perceptual.alpha > 0.0 && cfg.perceptual.logits == LogitMode::Relu5Only {
        eprintln!(
            "WARNING: L_sem runs WITHOUT the class-logit term (perceptual.logits = relu5-only); \
             the paper's L_sem needs VGG-16 classifier weights (torchvision vgg16-397923af.pth)"
        );
    }
    let run = RunDir::create(&out)?;
    run.write_config(&cfg)?;
    let lp = GanLoop {
        cfg: &cfg,
        device: ad.clone(),
        perceptual: &perceptual,
    };
    // Phase 2 starts from (and shows next to its own) the phase-1 tokenizer.
    let phase1 = match cfg.kind {
        RunKind::Decoder => decoder::open_phase1(&cfg, &ad, resume)?,
        _ => None,
    };
    let st = match (resume, run.latest()?) {
        (true, Some((dir, state))) => {
            eprintln!("resuming {} at step {}", out.display(), state.step);
            lp.load_state(&dir, state)?
        }
        (true, None) => bail!("{} has no checkpoint to resume", out.display()),
        (false, _) => match &phase1 {
            Some(p) => lp.init_from_phase1(p.model.clone(), p.load_discriminator(&ad)?),
            None => lp.init_state(),
        },
    };
    print_param_counts(&st);
    st.state.ensure_steps_left(cfg.train.steps, &out)?;
    // Sample grids (and phase 1's reference row) only when the run writes them.
    let preview = if cfg.train.sample_every > 0 {
        let x = preview_batch(
            &cfg.data.path,
            cfg.data.builtin_len,
            cfg.model.resolution,
            8,
            &ad,
        )?;
        let reference = phase1.map(|p| decoder::reconstructions(&p.model, &x));
        Some(Preview { x, reference })
    } else {
        None
    };
    let st = lp.train(&run, st, dataset, preview.as_ref(), stop)?;
    eprintln!("done: {} at step {}", out.display(), st.state.step);
    Ok(st)
}

/// Prints the parameter count of every part.
pub fn print_param_counts(st: &GanState) {
    let mut total = 0;
    for (name, n) in st.model.param_counts() {
        eprintln!("params {name:>13}: {:>11} ({:.2}M)", n, n as f64 / 1e6);
        total += n;
    }
    eprintln!(
        "params {:>13}: {:>11} ({:.2}M)",
        "tokenizer",
        total,
        total as f64 / 1e6
    );
    let d = st.disc.num_params();
    eprintln!(
        "params {:>13}: {:>11} ({:.2}M)",
        "discriminator",
        d,
        d as f64 / 1e6
    );
}
