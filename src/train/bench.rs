//! `seqgan bench`: times training steps of a stage on a device and prints figures.

use anyhow::Result;
use burn::tensor::{Device, Distribution, Tensor};
use std::time::Instant;

use super::gan::GanLoop;
use crate::config::{LogitMode, PerceptualConfig, RunKind, TokenizerRunConfig};
use crate::data::{Dataset, Loader, Order};
use crate::perceptual::{PerceptualLoss, Vgg16, WeightFile};
use crate::transformer::TransformerRunConfig;
use burn::module::Module;

/// Peak resident memory of this process in MiB (Linux), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn report(what: &str, images: usize, secs: f64, device: &Device) {
    let mem = device
        .memory_pool_usage()
        .map(|u| format!("{u:?}"))
        .unwrap_or_else(|| "n/a".into());
    println!(
        "{what}: {:.2} img/s ({:.1} ms/img); peak host RSS {:.0} MiB; device pool {mem}",
        images as f64 / secs,
        1000.0 * secs / images as f64,
        peak_rss_mib().unwrap_or(f64::NAN),
    );
}

/// Training steps of phase 1 or 2 (by `cfg.kind`) with the GAN on (disc_start = 0): the
/// steady-state cost of a step.
pub fn bench_tokenizer(
    mut cfg: TokenizerRunConfig,
    device: &Device,
    steps: usize,
    warmup: usize,
) -> Result<f64> {
    cfg.loss.disc_start = 0;
    cfg.validate()?;
    let ad = device.clone().autodiff();
    let perceptual = PerceptualLoss::new(&cfg.perceptual, &ad)?;
    let lp = GanLoop {
        cfg: &cfg,
        device: ad.clone(),
        perceptual: &perceptual,
    };
    let mut st = lp.init_state();
    let dataset = Dataset::open(&cfg.data.path, cfg.data.builtin_len)?;
    let t = &cfg.train;
    let mut loader = Loader::new(
        dataset,
        cfg.model.resolution,
        t.batch_size,
        Order::Train {
            seed: t.seed,
            hflip: true,
        },
        0,
        t.num_workers,
        t.prefetch,
    )?;
    for _ in 0..warmup {
        let (terms, _, _) = lp.step(&mut st, &mut loader)?;
        let _ = terms.loss.into_scalar::<f32>();
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        let (terms, _, _) = lp.step(&mut st, &mut loader)?;
        let _ = terms.loss.into_scalar::<f32>(); // sync, so the time is real
    }
    let secs = t0.elapsed().as_secs_f64();
    let images = steps * t.batch_size * t.grad_accum;
    let phase = match cfg.kind {
        RunKind::Decoder => "phase 2 (frozen encoder/codebook, attention decoder)",
        _ => "phase 1",
    };
    println!(
        "tokenizer {phase} @ {}x{}, batch {} x accum {}, {} steps (+{} warm-up), GAN + R1 on:",
        cfg.model.resolution, cfg.model.resolution, t.batch_size, t.grad_accum, steps, warmup
    );
    report("  train step", images, secs, &ad);
    Ok(images as f64 / secs)
}

/// Forward + backward of `L_sem` and `L_low` alone at `res x res`, batch `batch`.
pub fn bench_perceptual(
    weights: &std::path::Path,
    device: &Device,
    res: usize,
    batch: usize,
    steps: usize,
) -> Result<()> {
    let ad = device.clone().autodiff();
    // Read the file once; L_sem includes the logits when the weights have a classifier.
    let file = WeightFile::open(weights)?;
    let source = weights.display().to_string();
    for (name, alpha) in [("L_sem", 1.0), ("L_low", 0.0)] {
        let vgg = Vgg16::load(&file, &ad)?;
        let logits = if vgg.has_classifier() {
            LogitMode::Require
        } else {
            LogitMode::Relu5Only
        };
        let cfg = PerceptualConfig {
            weights: weights.to_path_buf(),
            alpha,
            logits,
            ..Default::default()
        };
        let loss = PerceptualLoss::from_vgg(vgg, &cfg, &source, &ad)?;
        let x = Tensor::<4>::random([batch, 3, res, res], Distribution::Uniform(-1.0, 1.0), &ad);
        let run = |n: usize| {
            for _ in 0..n {
                let x_hat = Tensor::<4>::random(
                    [batch, 3, res, res],
                    Distribution::Uniform(-1.0, 1.0),
                    &ad,
                )
                .require_grad();
                let terms = loss.forward(x_hat.clone(), x.clone());
                let grads = terms.total.backward();
                let g = x_hat.grad(&grads).expect("input gradient");
                let _ = g.sum().into_scalar::<f32>();
            }
        };
        run(1);
        let t0 = Instant::now();
        run(steps);
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "perceptual {name} ({}) @ {res}x{res}, batch {batch}, fwd+bwd:",
            loss.describe()
        );
        report("  ", steps * batch, secs, &ad);
    }
    Ok(())
}

/// Transformer training steps on random tokens (`[side, codes, classes]`): tokens/s.
pub fn bench_transformer(
    mut cfg: TransformerRunConfig,
    [side, codes, classes]: [usize; 3],
    batch: usize,
    device: &Device,
    steps: usize,
    warmup: usize,
) -> Result<f64> {
    use crate::data::tokens::{TokenFile, TokenHeader};
    use crate::train::transformer::TransformerLoop;
    use rand::{Rng, SeedableRng};
    let n = side * side;
    let entries = (batch * 4).max(8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let tokens = TokenFile {
        header: TokenHeader {
            codebook_size: codes,
            h: side,
            w: side,
            class_names: (0..classes).map(|c| c.to_string()).collect(),
            ..Default::default()
        },
        labels: (0..entries)
            .map(|_| rng.random_range(0..classes as u32))
            .collect(),
        codes: (0..entries * n)
            .map(|_| rng.random_range(0..codes as u16))
            .collect(),
    };
    cfg.tokens.header = tokens.header.clone();
    cfg.train.batch_size = batch;
    cfg.train.val_fraction = 0.0;
    cfg.validate()?;
    let ad = device.clone().autodiff();
    let lp = TransformerLoop::new(&cfg, ad.clone(), &tokens);
    let mut st = lp.init_state();
    let mut order = crate::transformer::batch::Order::new(lp.split.train.clone(), batch, 0);
    for _ in 0..warmup {
        let _ = lp.step(&mut st, &mut order).loss.into_scalar::<f32>();
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        let _ = lp.step(&mut st, &mut order).loss.into_scalar::<f32>();
    }
    let secs = t0.elapsed().as_secs_f64();
    let tok = (steps * batch * cfg.train.grad_accum * n) as f64;
    println!(
        "transformer {:?} {} params ({:.1}M), {}x{} tokens, {} codes, {} classes, batch {} x accum {}, {} steps (+{} warm-up):",
        cfg.arch,
        st.model.num_params(),
        st.model.num_params() as f64 / 1e6,
        side,
        side,
        codes,
        classes,
        batch,
        cfg.train.grad_accum,
        steps,
        warmup
    );
    report(
        "  train step",
        steps * batch * cfg.train.grad_accum,
        secs,
        &ad,
    );
    println!("  {:.0} tokens/s", tok / secs);
    Ok(tok / secs)
}

/// Token sampling with an untrained transformer of a preset: MaskGIT (12 steps) or GPT (KV
/// cache), `batch` maps per call, `[side, codes, classes]` token layout. Prints maps/s.
pub fn bench_sampling(
    mut cfg: TransformerRunConfig,
    [side, codes, classes]: [usize; 3],
    batch: usize,
    device: &Device,
    calls: usize,
    warmup: usize,
) -> Result<f64> {
    use crate::transformer::masking::MaskSchedule;
    use crate::transformer::sampling::{GptOptions, MaskgitOptions, Sampler};
    cfg.tokens.header.codebook_size = codes;
    cfg.tokens.header.h = side;
    cfg.tokens.header.w = side;
    cfg.tokens.header.class_names = (0..classes).map(|c| c.to_string()).collect();
    cfg.validate()?;
    let model = crate::train::transformer::build(&cfg, device);
    let sampler = Sampler {
        model: &model,
        vocab: crate::train::transformer::vocab(&cfg),
        n: side * side,
        cfg_scale: 0.0,
        device: device.clone(),
    };
    let mg = MaskgitOptions {
        steps: 12,
        temperature: 1.0,
        choice_temperature: 4.5,
        schedule: MaskSchedule::Cosine,
    };
    let gpt = GptOptions {
        temperature: 1.0,
        top_k: None,
        top_p: None,
        use_cache: true,
    };
    let classes_of: Vec<usize> = (0..batch).map(|i| i % classes.max(1)).collect();
    let run = |seed: u64| {
        let t = match cfg.arch {
            crate::transformer::Arch::Maskgit => sampler.maskgit(&classes_of, &mg, seed, false).0,
            crate::transformer::Arch::Gpt => sampler.gpt(&classes_of, &gpt, seed),
        };
        let _ = t.into_data();
    };
    for s in 0..warmup {
        run(s as u64);
    }
    let t0 = Instant::now();
    for s in 0..calls {
        run(1000 + s as u64);
    }
    let secs = t0.elapsed().as_secs_f64();
    let maps = (calls * batch) as f64;
    println!(
        "sampling {:?} ({:.1}M params), {side}x{side} tokens, {codes} codes, batch {batch}, {calls} calls (+{warmup} warm-up): {:.2} token maps/s ({:.0} ms per batch)",
        cfg.arch,
        model.num_params() as f64 / 1e6,
        maps / secs,
        1000.0 * secs / calls as f64
    );
    Ok(maps / secs)
}
