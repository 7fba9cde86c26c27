//! `train-tokenizer`, `finetune-decoder` and `train-transformer`: resolve the start (new run or
//! `--resume`), check config and data before opening a device, then run the stage.

use anyhow::{Result, bail};
use burn::tensor::Device;

use crate::cli::{FinetuneDecoderArgs, RunArgs, TrainTokenizerArgs, TrainTransformerArgs};
use crate::config::{self, RunKind};
use crate::run::dir::recorded_device;
use crate::run::signals;
use crate::stages::{phase2, tokenizer, transformer};
use crate::tokenizer::TokenizerRunConfig;

/// The devices of a training command: `--device` (else, on `--resume`, the kind the run was
/// trained on, else auto), one per `--devices` index (one device without it).
fn open_devices(run: &RunArgs) -> Result<Vec<Device>> {
    let recorded = run.resume.as_deref().and_then(recorded_device);
    let choice = crate::device::for_run(run.device.choice, recorded);
    crate::device::open_replicas(choice, &run.devices)
}

/// Runs phase 1 or 2: config and data are checked before the device is opened.
fn run_tokenizer(start: &tokenizer::Start, run: &RunArgs) -> Result<()> {
    let resolved = tokenizer::resolve_config(start)?;
    let devices = open_devices(run)?;
    signals::install();
    tokenizer::train_resolved(resolved, &devices, signals::stop_flag())?;
    Ok(())
}

/// `seqgan train-tokenizer`.
pub fn train_tokenizer(a: &TrainTokenizerArgs) -> Result<()> {
    let start = match &a.run.resume {
        Some(run) => tokenizer::Start::Resume {
            run,
            sets: &a.run.sets,
            kind: RunKind::Tokenizer,
        },
        None => {
            let mut cfg: TokenizerRunConfig = config::from_preset(&a.config, &a.run.sets)?;
            if let Some(d) = &a.data {
                cfg.data.path = d.clone();
            }
            tokenizer::Start::New {
                config: Box::new(cfg),
                out: &a.out,
            }
        }
    };
    run_tokenizer(&start, &a.run)
}

/// `seqgan finetune-decoder`.
pub fn finetune_decoder(a: &FinetuneDecoderArgs) -> Result<()> {
    let start = match (&a.run.resume, &a.tokenizer) {
        (Some(run), _) => tokenizer::Start::Resume {
            run,
            sets: &a.run.sets,
            kind: RunKind::Decoder,
        },
        (None, Some(phase1)) => tokenizer::Start::New {
            config: Box::new(phase2::phase2_config(
                phase1,
                &a.config,
                &a.run.sets,
                a.data.as_deref(),
            )?),
            out: &a.out,
        },
        (None, None) => bail!("--tokenizer RUN (a phase-1 run folder) is required"),
    };
    run_tokenizer(&start, &a.run)
}

/// `seqgan train-transformer`.
pub fn train_transformer(a: &TrainTransformerArgs) -> Result<()> {
    let start = match (&a.run.resume, &a.tokens) {
        (Some(run), _) => {
            if a.arch.is_some() {
                bail!("--arch cannot change on --resume (it is in the run's config.json)");
            }
            transformer::Start::Resume {
                run,
                sets: &a.run.sets,
            }
        }
        (None, Some(tokens)) => {
            let mut cfg = transformer::new_config(&a.config, &a.run.sets)?;
            if let Some(arch) = a.arch {
                cfg.arch = arch;
            }
            transformer::Start::New {
                config: Box::new(cfg),
                tokens,
                out: &a.out,
            }
        }
        (None, None) => bail!("--tokens FILE (from `seqgan encode`) is required"),
    };
    let resolved = transformer::resolve(&start)?;
    let devices = open_devices(&a.run)?;
    signals::install();
    transformer::train_resolved(resolved, &devices, signals::stop_flag())?;
    Ok(())
}
