//! `seqgan train-transformer`: MaskGIT or GPT on a token file. AdamW with warm-up and a
//! constant or cosine schedule, global gradient-norm clipping, gradient accumulation, optional
//! EMA, a held-out validation split ([`stage`], [`optim`]), under the one training driver.

pub mod optim;
pub mod stage;

use anyhow::{Result, ensure};
use burn::tensor::Device;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::config::{self, RunKind};
use crate::data::tokens::TokenFile;
use crate::run::{Replicas, RunDir, RunLock, driver};
use crate::transformer::TransformerRunConfig;
use crate::transformer::config::TokensConfig;
pub use stage::{TransformerRecord, TransformerStage, TransformerState};

/// Where a transformer run comes from.
pub enum Start<'a> {
    /// A new run on a token file.
    New {
        config: Box<TransformerRunConfig>,
        tokens: &'a Path,
        out: &'a Path,
    },
    /// Continue the run in this folder, with `--set` overrides (e.g. more steps).
    Resume { run: &'a Path, sets: &'a [String] },
}

/// The config of a new run: preset or JSON file, then `--set` overrides.
pub fn new_config(spec: &str, sets: &[String]) -> Result<TransformerRunConfig> {
    config::from_preset(spec, sets)
}

/// A start with its config validated and its tokens read.
pub struct Resolved {
    pub cfg: TransformerRunConfig,
    pub out: PathBuf,
    pub resume: bool,
    pub tokens: TokenFile,
}

/// Validates a start and reads its token file (checking it still matches a resumed run).
pub fn resolve(start: &Start) -> Result<Resolved> {
    let (mut cfg, out, resume, tokens) = match start {
        Start::New {
            config,
            tokens,
            out,
        } => {
            RunDir::create_new(out)?;
            let file = TokenFile::read(tokens)?;
            let mut cfg = (**config).clone();
            cfg.tokens = TokensConfig {
                path: tokens.to_path_buf(),
                header: file.header.clone(),
            };
            (cfg, out.to_path_buf(), false, file)
        }
        Start::Resume { run, sets } => {
            let dir = RunDir::open(run, RunKind::Transformer)?;
            let cfg: TransformerRunConfig = dir.read_config()?;
            let cfg = config::overridden(&cfg, sets, "config.json + --set")?;
            let file = TokenFile::read(&cfg.tokens.path)?;
            ensure!(
                file.header == cfg.tokens.header,
                "{} changed since this run started (its header differs from config.json)",
                cfg.tokens.path.display()
            );
            (cfg, run.to_path_buf(), true, file)
        }
    };
    cfg.kind = RunKind::Transformer;
    // Record the label smoothing in effect, so config.json says what the run trains with.
    cfg.train.label_smoothing = Some(cfg.label_smoothing());
    cfg.validate()?;
    ensure!(
        tokens.len() >= 2,
        "{}: {} entries; a transformer needs more",
        cfg.tokens.path.display(),
        tokens.len()
    );
    let train = crate::transformer::batch::split(&tokens, cfg.train.val_fraction, cfg.train.seed)
        .train
        .len();
    ensure!(
        cfg.train.batch_size <= train,
        "train.batch_size {} is larger than the {train} training entries of {} (after the \
         validation split); lower it",
        cfg.train.batch_size,
        cfg.tokens.path.display()
    );
    Ok(Resolved {
        cfg,
        out,
        resume,
        tokens,
    })
}

/// Runs a transformer start on `device` (a plain device; autodiff is added here).
pub fn train_transformer(
    start: Start,
    device: &Device,
    stop: &AtomicBool,
) -> Result<TransformerState> {
    train_resolved(resolve(&start)?, std::slice::from_ref(device), stop)
}

/// Runs an already resolved start, data-parallel when several `devices` are given (plain
/// devices, the first is the main one; autodiff is added here).
pub fn train_resolved(
    resolved: Resolved,
    devices: &[Device],
    stop: &AtomicBool,
) -> Result<TransformerState> {
    let Resolved {
        cfg,
        out,
        resume,
        tokens,
    } = resolved;
    let h = &cfg.tokens.header;
    eprintln!(
        "tokens: {} ({} entries, {}x{} tokens, {} codes, {} classes, tokenizer {})",
        cfg.tokens.path.display(),
        tokens.len(),
        h.h,
        h.w,
        h.codebook_size,
        h.class_names.len(),
        h.tokenizer_hash
    );
    let run = RunDir::create(&out)?;
    let _lock = RunLock::acquire(run.root())?;
    run.write_config(&cfg)?;
    let replicas = Replicas::new(devices.iter().map(|d| d.clone().autodiff()).collect())?;
    let mut stage =
        TransformerStage::new(&cfg, replicas.main().clone(), &tokens).with_replicas(replicas)?;
    eprintln!(
        "split: {} train / {} validation entries",
        stage.split.train.len(),
        stage.split.val.len()
    );
    driver::run(&mut stage, &run, resume, stop)
}
