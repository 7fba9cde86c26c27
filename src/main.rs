//! `seqgan` command-line entry: parse, pick the device, dispatch.

use anyhow::{Result, bail};
use clap::Parser;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use seqgan::cli::{BenchStage, Cli, Command, DeviceArgs};
use seqgan::config::{self, RunKind, TokenizerRunConfig};
use seqgan::data::idx::{self, FASHION_MNIST};
use seqgan::encode;
use seqgan::eval::commands;
use seqgan::eval::npz::NpzImageWriter;
use seqgan::reconstruct;
use seqgan::sample;
use seqgan::tokenizer::TrainedTokenizer;
use seqgan::train::checkpoint::recorded_device;
use seqgan::train::{bench, decoder, tokenizer, transformer};
use seqgan::transformer::TrainedTransformer;
use seqgan::transformer::sampling::{GptOptions, MaskgitOptions};

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

/// The device of a training command: `--device`, else (on `--resume`) the kind the run was
/// trained on, else auto.
fn open_for_run(flag: DeviceArgs, resume: Option<&std::path::Path>) -> Result<Device> {
    let recorded = resume.and_then(recorded_device);
    seqgan::device::open(seqgan::device::for_run(flag.choice, recorded))
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::TrainTokenizer(a) => {
            let start = match &a.resume {
                Some(run) => tokenizer::Start::Resume {
                    run,
                    sets: &a.sets,
                    kind: RunKind::Tokenizer,
                },
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
            let device = open_for_run(a.device, a.resume.as_deref())?;
            install_ctrlc();
            tokenizer::train_resolved(resolved, &device, &STOP)?;
        }
        Command::FinetuneDecoder(a) => {
            let start = match (&a.resume, &a.tokenizer) {
                (Some(run), _) => tokenizer::Start::Resume {
                    run,
                    sets: &a.sets,
                    kind: RunKind::Decoder,
                },
                (None, Some(phase1)) => tokenizer::Start::New {
                    config: Box::new(decoder::phase2_config(
                        phase1,
                        &a.config,
                        &a.sets,
                        a.data.as_deref(),
                    )?),
                    out: &a.out,
                },
                (None, None) => bail!("--tokenizer RUN (a phase-1 run folder) is required"),
            };
            let resolved = tokenizer::resolve_config(&start)?;
            let device = open_for_run(a.device, a.resume.as_deref())?;
            install_ctrlc();
            tokenizer::train_resolved(resolved, &device, &STOP)?;
        }
        Command::Reconstruct(a) => {
            let device = seqgan::device::open(a.device.choice())?;
            let tok = TrainedTokenizer::load(&a.tokenizer, &device)?;
            eprintln!("tokenizer: {}", tok.describe());
            let data = match &a.data {
                Some(d) => d.clone(),
                None if tok.cfg.data.path == "builtin:shapes" => "builtin:shapes:val".into(),
                None => bail!(
                    "--data DIR is required (the run was trained on {}; pass held-out images)",
                    tok.cfg.data.path
                ),
            };
            let report = reconstruct::reconstruct(&tok, &data, &a.out, a.batch, a.limit, &device)?;
            println!(
                "mean PSNR {:.2} dB over {} images ({} -> {})",
                report.mean_psnr(),
                report.per_image.len(),
                data,
                a.out.display()
            );
        }
        Command::Encode(a) => {
            let device = seqgan::device::open(a.device.choice())?;
            let tok = TrainedTokenizer::load(&a.tokenizer, &device)?;
            eprintln!("tokenizer: {}", tok.describe());
            let data = a.data.clone().unwrap_or_else(|| tok.cfg.data.path.clone());
            encode::encode(&tok, &data, &a.out, a.flip, a.batch, a.limit, &device)?;
        }
        Command::TrainTransformer(a) => {
            let start = match (&a.resume, &a.tokens) {
                (Some(run), _) => {
                    if a.arch.is_some() {
                        bail!("--arch cannot change on --resume (it is in the run's config.json)");
                    }
                    transformer::Start::Resume { run, sets: &a.sets }
                }
                (None, Some(tokens)) => {
                    let mut cfg = transformer::new_config(&a.config, &a.sets)?;
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
            let device = open_for_run(a.device, a.resume.as_deref())?;
            install_ctrlc();
            transformer::train_resolved(resolved, &device, &STOP)?;
        }
        Command::Sample(a) => {
            let device = seqgan::device::open(a.device.choice())?;
            let tr = TrainedTransformer::load(&a.transformer, &device)?;
            let dec = TrainedTokenizer::load(&a.decoder, &device)?;
            eprintln!(
                "transformer: {}\ndecoder: {}",
                tr.describe(),
                dec.describe()
            );
            let opts = sample::SampleOptions {
                classes: sample::parse_classes(&a.class, tr.class_names())?,
                num: a.num,
                batch: a.batch,
                seed: a.seed,
                cfg_scale: a.cfg_scale,
                maskgit: MaskgitOptions {
                    steps: a.steps,
                    temperature: a.temperature,
                    choice_temperature: a.choice_temperature,
                    schedule: a.schedule,
                },
                gpt: GptOptions {
                    temperature: a.temperature,
                    top_k: a.top_k,
                    top_p: a.top_p,
                    use_cache: true,
                },
            };
            match &a.npz {
                None => {
                    sample::sample(&tr, &dec, &opts, &a.out, None, &device)?;
                }
                Some(path) => {
                    let side = dec.cfg.model.resolution;
                    let total = opts.classes.len() * opts.num;
                    let mut npz = NpzImageWriter::create(path, total, side, side)?;
                    let mut push = |images: &[image::RgbImage]| -> Result<()> {
                        for img in images {
                            npz.push(img.as_raw())?;
                        }
                        Ok(())
                    };
                    sample::sample(&tr, &dec, &opts, &a.out, Some(&mut push), &device)?;
                    npz.finish()?;
                    eprintln!(
                        "wrote {total} images to {} (uint8 NHWC arr_0)",
                        path.display()
                    );
                }
            }
        }
        Command::Visualize(a) => {
            let device = seqgan::device::open(a.device.choice())?;
            let tr = TrainedTransformer::load(&a.transformer, &device)?;
            let tok = TrainedTokenizer::load(&a.tokenizer, &device)?;
            let acc =
                sample::visualize(&tr, &tok, &a.data, &a.out, Some(a.limit), a.batch, &device)?;
            let mean = acc.iter().map(|(_, a)| a).sum::<f64>() / acc.len().max(1) as f64;
            println!(
                "token accuracy {mean:.3} over {} images ({} -> {})",
                acc.len(),
                a.data,
                a.out.display()
            );
        }
        Command::ImportIdx(a) => {
            let names: Vec<String> = match a.classes.as_str() {
                "fashion-mnist" => FASHION_MNIST.iter().map(|s| s.to_string()).collect(),
                "digits" => Vec::new(),
                list => list.split(',').map(|s| s.trim().to_string()).collect(),
            };
            let n = idx::import(&a.images, &a.labels, &names, &a.out, a.limit)?;
            println!("wrote {n} images to {}", a.out.display());
        }
        Command::Plot(a) => {
            let out = a.out.clone().unwrap_or_else(|| a.run.join("curves.png"));
            let n = seqgan::plot::plot_run(&a.run, &out)?;
            println!("{n} curves -> {}", out.display());
        }
        Command::Bench(a) if a.stage == BenchStage::Inception => {
            let device = seqgan::device::open(a.device.choice())?;
            commands::bench_inception(&a.inception_weights, &device, a.batch, a.steps, a.warmup)?;
        }
        Command::Bench(a) => {
            let cfg: TokenizerRunConfig = config::resolve(Some(&a.config), &a.sets)?;
            let device = seqgan::device::open(a.device.choice())?;
            match a.stage {
                BenchStage::Tokenizer => {
                    bench::bench_tokenizer(cfg, &device, a.steps, a.warmup)?;
                }
                BenchStage::Transformer | BenchStage::Sample => {
                    let mut tcfg = transformer::new_config(&a.transformer, &[])?;
                    tcfg.arch = a.arch;
                    let [side, codes, classes] = a.tokens[..] else {
                        bail!("--tokens takes SIDE CODES CLASSES");
                    };
                    let run = if a.stage == BenchStage::Sample {
                        bench::bench_sampling
                    } else {
                        bench::bench_transformer
                    };
                    run(
                        tcfg,
                        [side, codes, classes],
                        a.batch,
                        &device,
                        a.steps,
                        a.warmup,
                    )?;
                }
                BenchStage::Decoder => {
                    let cfg = decoder::as_phase2(&cfg, "phase2", &[])?;
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
                BenchStage::Inception => unreachable!("handled above"),
            }
        }
        Command::FidStats(a) => commands::fid_stats(&a)?,
        Command::Fid(a) => commands::fid(&a)?,
        Command::EvalTokenizer(a) => commands::eval_tokenizer_cmd(&a)?,
    }
    Ok(())
}
