//! `seqgan` command-line entry: parse, pick the device, dispatch.

use anyhow::Result;
use clap::Parser;
use std::sync::atomic::{AtomicBool, Ordering};

use seqgan::cli::{BenchStage, Cli, Command};
use seqgan::config::{self, TokenizerRunConfig};
use seqgan::train::{bench, tokenizer};

static STOP: AtomicBool = AtomicBool::new(false);

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("Ctrl-C: finishing the current step and saving (press again to abort)");
    });
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::TrainTokenizer(a) => {
            let start = match &a.resume {
                Some(run) => tokenizer::Start::Resume { run, sets: &a.sets },
                None => {
                    let mut cfg: TokenizerRunConfig = config::resolve(Some(&a.config), &a.sets)?;
                    if let Some(d) = &a.data {
                        cfg.data.path = d.clone();
                    }
                    tokenizer::Start::New {
                        config: Box::new(cfg),
                        out: &a.out,
                    }
                }
            };
            // Fail on config/data problems before opening a device.
            let resolved = tokenizer::resolve_config(&start)?;
            let device = seqgan::device::open(a.device)?;
            install_ctrlc();
            tokenizer::train_resolved(resolved, &device, &STOP)?;
        }
        Command::Bench(a) => {
            let cfg: TokenizerRunConfig = config::resolve(Some(&a.config), &a.sets)?;
            let device = seqgan::device::open(a.device)?;
            match a.stage {
                BenchStage::Tokenizer => {
                    bench::bench_tokenizer(cfg, &device, a.steps, a.warmup)?;
                }
                BenchStage::Perceptual => {
                    bench::bench_perceptual(
                        &cfg.perceptual.weights,
                        &device,
                        a.res,
                        a.batch,
                        a.steps,
                    )?;
                }
            }
        }
    }
    Ok(())
}
