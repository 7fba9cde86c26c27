//! `seqgan bench`: times the steps of a stage on a device and prints figures: a line for
//! people and a `BENCH {json}` line for scripts (`scripts/bench-vs-pytorch.sh`,
//! `scripts/gpu-check.sh`). Missing weight files are replaced by random weights in the same
//! layout (timing only; said so), so a GPU check needs nothing but the binary.

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::module::{attention, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

use super::flops;
use crate::cli::{BenchArgs, BenchStage};
use crate::config::{self, RunKind};
use crate::data::tokens::{TokenFile, TokenHeader};
use crate::data::{Loader, LoaderSpec};
use crate::kernels;
use crate::perceptual::{LogitMode, PerceptualConfig, PerceptualLoss};
use crate::pretrained::inception::{FidInception, INPUT_SIZE};
use crate::pretrained::vgg16::random_weights;
use crate::pretrained::{Vgg16, WeightFile};
use crate::run::progress::peak_rss_mib;
use crate::run::{Replicas, Stage};
use crate::stages::gan::GanPhase;
use crate::stages::phase2;
use crate::stages::transformer::{self, TransformerStage};
use crate::tokenizer::TokenizerRunConfig;
use crate::transformer::masking::MaskSchedule;
use crate::transformer::sampling::{GptOptions, MaskgitOptions, Sampler};
use crate::transformer::{Arch, TransformerRunConfig, build, vocab};

/// One benchmark's figures.
#[derive(Serialize, Debug)]
pub struct Figures {
    pub stage: &'static str,
    /// What was timed, in words.
    pub what: String,
    pub params: usize,
    pub batch: usize,
    pub devices: usize,
    pub steps: usize,
    pub throughput: f64,
    pub unit: &'static str,
    pub seconds_per_step: f64,
    /// Counted arithmetic per second (see `flops`).
    pub gflop_per_s: f64,
    pub peak_host_mib: Option<f64>,
    /// Bytes the device's memory pools reserve at the end (GPU backends).
    pub device_reserved_mib: Option<f64>,
}

impl Figures {
    fn print(&self) {
        let memory = match self.device_reserved_mib {
            Some(d) => format!("device pools {d:.0} MiB"),
            None => "device pools n/a".into(),
        };
        println!(
            "{}: {:.2} {} ({:.3} s/step), {:.1} GFLOP/s; {} params; peak host RSS {:.0} MiB; {memory}",
            self.what,
            self.throughput,
            self.unit,
            self.seconds_per_step,
            self.gflop_per_s,
            self.params,
            self.peak_host_mib.unwrap_or(f64::NAN),
        );
        println!(
            "BENCH {}",
            serde_json::to_string(self).expect("figures serialise")
        );
    }
}

fn device_reserved_mib(device: &Device) -> Option<f64> {
    device
        .memory_pool_usage()
        .map(|u| u.bytes_reserved as f64 / (1024.0 * 1024.0))
}

/// Times `steps` calls of `f` after `warmup` untimed ones; `f` must sync (read a value).
fn time(warmup: usize, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        f()?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// The perceptual loss of `cfg`, on random VGG-16 weights (timing only, said so) when its
/// weight files are missing.
fn perceptual_loss(cfg: &PerceptualConfig, device: &Device) -> Result<PerceptualLoss> {
    if cfg.weights.exists() && (!cfg.lpips_low || cfg.lpips_weights.exists()) {
        return PerceptualLoss::new(cfg, device);
    }
    println!(
        "note: {} not found: random VGG-16 weights in its layout (timing only)",
        cfg.weights.display()
    );
    let file = random_weights(cfg.logits == LogitMode::Require);
    let vgg = Vgg16::load(&file, device)?;
    PerceptualLoss::from_vgg(vgg, cfg, "random weights", device)
}

/// Autodiff replicas of `devices` (the first is the main one).
fn replicas(devices: &[Device]) -> Result<Replicas> {
    Replicas::new(devices.iter().map(|d| d.clone().autodiff()).collect())
}

/// Training steps of phase 1 or 2 (by `cfg.kind`) with the GAN on (disc_start = 0): the
/// steady-state cost of a step, data-parallel over `devices`.
pub fn bench_tokenizer(
    mut cfg: TokenizerRunConfig,
    devices: &[Device],
    steps: usize,
    warmup: usize,
) -> Result<Figures> {
    cfg.loss.disc_start = 0;
    cfg.validate()?;
    let reps = replicas(devices)?;
    let ad = reps.main().clone();
    let perceptual = perceptual_loss(&cfg.perceptual, &ad)?;
    let lp = GanPhase::new(&cfg, ad.clone(), &perceptual).with_replicas(reps)?;
    let mut st = lp.init_state();
    let t = &cfg.train;
    let spec = LoaderSpec::train(cfg.model.resolution, t.batch_size, t.seed, true)
        .workers(t.num_workers, t.prefetch);
    let mut loader = Loader::new(cfg.data.open()?, spec)?;
    let secs = time(warmup, steps, || {
        // Reading the loss syncs, so the time is real.
        let _ = lp
            .step(&mut st, &mut loader)?
            .terms
            .loss
            .into_scalar::<f32>();
        Ok(())
    })?;
    let images = steps * t.batch_size * t.grad_accum;
    let (stage, phase) = match cfg.kind {
        RunKind::Decoder => (
            "decoder",
            "phase 2 (frozen encoder/codebook, attention decoder)",
        ),
        _ => ("tokenizer", "phase 1"),
    };
    Ok(Figures {
        stage,
        what: format!(
            "tokenizer {phase} @ {r}x{r}, batch {} x accum {}, GAN + R1 every {} steps",
            t.batch_size,
            t.grad_accum,
            cfg.loss.r1_interval,
            r = cfg.model.resolution
        ),
        params: st.model.num_params() + st.disc.num_params(),
        batch: t.batch_size * t.grad_accum,
        devices: devices.len(),
        steps,
        throughput: images as f64 / secs,
        unit: "img/s",
        seconds_per_step: secs / steps as f64,
        gflop_per_s: flops::gan_step(&cfg) * images as f64 / secs / 1e9,
        peak_host_mib: peak_rss_mib(),
        device_reserved_mib: device_reserved_mib(&ad),
    })
}

/// Forward + backward of `L_sem` and `L_low` alone at `res x res`, batch `batch`.
pub fn bench_perceptual(
    weights: &Path,
    device: &Device,
    res: usize,
    batch: usize,
    steps: usize,
) -> Result<Vec<Figures>> {
    let ad = device.clone().autodiff();
    // Read the file once; L_sem includes the logits when the weights have a classifier.
    let file = if weights.exists() {
        WeightFile::open(weights)?
    } else {
        println!(
            "note: {} not found: random VGG-16 weights with the classifier (timing only)",
            weights.display()
        );
        random_weights(true)
    };
    let source = weights.display().to_string();
    let mut out = Vec::new();
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
        let secs = time(1, steps, || {
            let x_hat =
                Tensor::<4>::random([batch, 3, res, res], Distribution::Uniform(-1.0, 1.0), &ad)
                    .require_grad();
            let grads = loss.forward(x_hat.clone(), x.clone()).total.backward();
            let g = x_hat.grad(&grads).expect("input gradient");
            let _ = g.sum().into_scalar::<f32>();
            Ok(())
        })?;
        let images = steps * batch;
        let with_logits = alpha > 0.0 && logits == LogitMode::Require;
        out.push(Figures {
            stage: "perceptual",
            what: format!(
                "perceptual {name} ({}) @ {res}x{res}, batch {batch}, fwd+bwd",
                loss.describe()
            ),
            params: 0,
            batch,
            devices: 1,
            steps,
            throughput: images as f64 / secs,
            unit: "img/s",
            seconds_per_step: secs / steps as f64,
            gflop_per_s: 3.0 * flops::vgg_forward(res, with_logits) * images as f64 / secs / 1e9,
            peak_host_mib: peak_rss_mib(),
            device_reserved_mib: device_reserved_mib(&ad),
        });
    }
    Ok(out)
}

/// A token file of random entries with the `[side, codes, classes]` layout.
fn random_tokens([side, codes, classes]: [usize; 3], entries: usize) -> TokenFile {
    use rand::{Rng, SeedableRng};
    let n = side * side;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    TokenFile {
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
    }
}

/// Transformer training steps on random tokens (`[side, codes, classes]`): tokens/s,
/// data-parallel over `devices`.
pub fn bench_transformer(
    mut cfg: TransformerRunConfig,
    layout: [usize; 3],
    batch: usize,
    devices: &[Device],
    steps: usize,
    warmup: usize,
) -> Result<Figures> {
    let tokens = random_tokens(layout, (batch * 4).max(8));
    cfg.tokens.header = tokens.header.clone();
    cfg.train.batch_size = batch;
    cfg.train.val_fraction = 0.0;
    cfg.validate()?;
    let reps = replicas(devices)?;
    let ad = reps.main().clone();
    let mut stage = TransformerStage::new(&cfg, ad.clone(), &tokens).with_replicas(reps)?;
    let mut st = stage.init()?;
    let secs = time(warmup, steps, || {
        let _ = stage.step(&mut st)?.loss.into_scalar::<f32>();
        Ok(())
    })?;
    let n = layout[0] * layout[0];
    let seqs = steps * batch * cfg.train.grad_accum;
    let v = vocab(&cfg);
    let [side, codes, classes] = layout;
    Ok(Figures {
        stage: "transformer",
        what: format!(
            "transformer {:?} training, {side}x{side} tokens, {codes} codes, {classes} classes, batch {batch} x accum {}",
            cfg.arch, cfg.train.grad_accum
        ),
        params: st.model.num_params(),
        batch: batch * cfg.train.grad_accum,
        devices: devices.len(),
        steps,
        throughput: (seqs * n) as f64 / secs,
        unit: "tokens/s",
        seconds_per_step: secs / steps as f64,
        gflop_per_s: flops::transformer_step(&cfg.model, v.seq_len(n), v.codes) * seqs as f64
            / secs
            / 1e9,
        peak_host_mib: peak_rss_mib(),
        device_reserved_mib: device_reserved_mib(&ad),
    })
}

/// Token sampling with an untrained transformer of a preset: MaskGIT (12 steps) or GPT (KV
/// cache), `batch` maps per call, `[side, codes, classes]` token layout: token maps/s.
pub fn bench_sampling(
    mut cfg: TransformerRunConfig,
    [side, codes, classes]: [usize; 3],
    batch: usize,
    device: &Device,
    calls: usize,
    warmup: usize,
) -> Result<Figures> {
    cfg.tokens.header.codebook_size = codes;
    cfg.tokens.header.h = side;
    cfg.tokens.header.w = side;
    cfg.tokens.header.class_names = (0..classes).map(|c| c.to_string()).collect();
    cfg.validate()?;
    let model = build(&cfg, device);
    let v = vocab(&cfg);
    let n = side * side;
    let sampler = Sampler {
        model: &model,
        vocab: v,
        n,
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
    let mut seed = 0;
    let secs = time(warmup, calls, || {
        seed += 1;
        let t = match cfg.arch {
            Arch::Maskgit => sampler.maskgit(&classes_of, &mg, seed, false).0,
            Arch::Gpt => sampler.gpt(&classes_of, &gpt, seed),
        };
        let _ = t.into_data();
        Ok(())
    })?;
    let maps = calls * batch;
    let per_map = match cfg.arch {
        Arch::Maskgit => 12.0 * flops::transformer_forward(&cfg.model, v.seq_len(n), v.codes),
        Arch::Gpt => flops::gpt_generate(&cfg.model, n, v.codes),
    };
    Ok(Figures {
        stage: "sample",
        what: format!(
            "sampling {:?} ({}), {side}x{side} tokens, {codes} codes, batch {batch}",
            cfg.arch,
            match cfg.arch {
                Arch::Maskgit => "12 steps",
                Arch::Gpt => "KV cache",
            }
        ),
        params: model.num_params(),
        batch,
        devices: 1,
        steps: calls,
        throughput: maps as f64 / secs,
        unit: "maps/s",
        seconds_per_step: secs / calls as f64,
        gflop_per_s: per_map * maps as f64 / secs / 1e9,
        peak_host_mib: peak_rss_mib(),
        device_reserved_mib: device_reserved_mib(device),
    })
}

/// 3x3 "same" convolutions of the kernel benchmark by default: (channels in = out, map side),
/// as in `bench/pytorch_reference.py`.
const CONV_SHAPES: [(usize, usize); 10] = [
    (128, 32),
    (64, 32),
    (32, 32),
    (64, 16),
    (64, 8),
    (16, 32),
    (256, 8),
    (512, 4),
    (512, 16),
    (512, 32),
];

/// GEMM and convolution kernels alone, in GFLOP/s (multiply-add = 2 FLOPs).
pub fn bench_kernels(
    device: &Device,
    n: usize,
    batch: usize,
    conv_shapes: &[(usize, usize)],
    steps: usize,
    warmup: usize,
) -> Result<Vec<Figures>> {
    let figure = |what: String, flop: f64, secs: f64| Figures {
        stage: "kernels",
        what,
        params: 0,
        batch,
        devices: 1,
        steps,
        throughput: flop * steps as f64 / secs / 1e9,
        unit: "GFLOP/s",
        seconds_per_step: secs / steps as f64,
        gflop_per_s: flop * steps as f64 / secs / 1e9,
        peak_host_mib: peak_rss_mib(),
        device_reserved_mib: device_reserved_mib(device),
    };
    let uniform = Distribution::Uniform(-1.0, 1.0);
    let a = Tensor::<2>::random([n, n], uniform, device);
    let b = Tensor::<2>::random([n, n], uniform, device);
    let secs = time(warmup, steps, || {
        let _ = a.clone().matmul(b.clone()).sum().into_scalar::<f32>();
        Ok(())
    })?;
    let mut out = vec![figure(
        format!("matmul {n}x{n}x{n}"),
        2.0 * (n as f64).powi(3),
        secs,
    )];
    let ad = device.clone().autodiff();
    let options = || ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    // 3x3 "same" convolutions at the channel counts and map sizes of the models (tokenizer and
    // discriminator 16-64 channels at 8x8-32x32, VGG-16 64-512 at 32x32-4x4); burn-flex's
    // kernel beside ours at 128 channels.
    for &(c, side) in conv_shapes {
        let conv_flop = 2.0 * (batch * c * c * 9 * side * side) as f64;
        let what = format!("conv2d 3x3 {c}->{c}, {batch}x{side}x{side}");
        let x = Tensor::<4>::random([batch, c, side, side], uniform, device);
        let w = Tensor::<4>::random([c, c, 3, 3], uniform, device) * 0.03;
        let xa = Tensor::<4>::random([batch, c, side, side], uniform, &ad).require_grad();
        let wa = (Tensor::<4>::random([c, c, 3, 3], uniform, &ad) * 0.03)
            .detach()
            .require_grad();
        // Forward + backward of `conv`, reading both gradients.
        let fwd_bwd = |conv: &dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<4>| {
            time(warmup, steps, || {
                let grads = conv(xa.clone(), wa.clone()).sum().backward();
                let gx = xa.grad(&grads).expect("input gradient");
                let gw = wa.grad(&grads).expect("weight gradient");
                let _ = (gx.sum() + gw.sum()).into_scalar::<f32>();
                Ok(())
            })
        };
        if (c, side) == (128, 32) {
            let secs = time(warmup, steps, || {
                let y = conv2d(x.clone(), w.clone(), None, options());
                let _ = y.sum().into_scalar::<f32>();
                Ok(())
            })?;
            out.push(figure(
                format!("{what}, forward, burn-flex's"),
                conv_flop,
                secs,
            ));
            let secs = fwd_bwd(&|x, w| conv2d(x, w, None, options()))?;
            out.push(figure(
                format!("{what}, forward + backward, burn-flex's"),
                3.0 * conv_flop,
                secs,
            ));
        }
        let secs = time(warmup, steps, || {
            let y = kernels::conv2d_with(x.clone(), w.clone(), None, options());
            let _ = y.sum().into_scalar::<f32>();
            Ok(())
        })?;
        out.push(figure(format!("{what}, forward"), conv_flop, secs));
        let secs = fwd_bwd(&|x, w| kernels::conv2d_with(x, w, None, options()))?;
        out.push(figure(
            format!("{what}, forward + backward"),
            3.0 * conv_flop,
            secs,
        ));
    }
    out.extend(bench_attention(&ad, steps, warmup, &figure)?);
    Ok(out)
}

/// Self-attention forward + backward at the tiny and base MaskGIT shapes (`heads` heads of
/// `dh` over `L` positions) from the packed projection `[B, L, 3 heads dh]`: burn's attention
/// between the head split and merge (on autodiff, a composition of tensor ops) and ours
/// (src/kernels, reading the heads in place).
fn bench_attention(
    ad: &Device,
    steps: usize,
    warmup: usize,
    figure: &dyn Fn(String, f64, f64) -> Figures,
) -> Result<Vec<Figures>> {
    let mut out = Vec::new();
    for (name, [b, h, l, dh]) in [("tiny", [32, 4, 65, 16]), ("base", [2, 16, 257, 48])] {
        let normal = Distribution::Normal(0.0, 1.0);
        let qkv = Tensor::<3>::random([b, l, 3 * h * dh], normal, ad).require_grad();
        // QK^T and PV forward, four products of the same size backward.
        let flop = 3.0 * 4.0 * (b * h * l * l * dh) as f64;
        for (who, ours) in [("burn", false), ("seqgan", true)] {
            let secs = time(warmup, steps, || {
                let y = if ours {
                    kernels::self_attention(qkv.clone(), h, false)
                } else {
                    let [q, k, v] = kernels::split_heads(qkv.clone(), h);
                    kernels::merge_heads(attention(q, k, v, None, None, Default::default()))
                };
                let grads = (y.clone() * y.detach().cos()).sum().backward();
                let g = qkv.grad(&grads).expect("gradient").sum();
                let _ = g.into_scalar::<f32>();
                Ok(())
            })?;
            out.push(figure(
                format!("attention {name} {b}x{h}x{l}x{dh}, forward + backward, {who}"),
                flop,
                secs,
            ));
        }
    }
    Ok(out)
}

/// `seqgan bench --stage inception`: forward passes at 299x299.
pub fn bench_inception(
    weights: &Path,
    device: &Device,
    batch: usize,
    steps: usize,
    warmup: usize,
) -> Result<Figures> {
    let net = if weights.exists() {
        FidInception::open(weights, device)?
    } else {
        println!(
            "note: {} not found: random FID Inception weights in its layout (timing only)",
            weights.display()
        );
        FidInception::load(&WeightFile::synthetic("random", Default::default()), device)?
    };
    let x = Tensor::<4>::random(
        [batch, 3, INPUT_SIZE, INPUT_SIZE],
        Distribution::Uniform(-1.0, 1.0),
        device,
    );
    let secs = time(warmup, steps, || {
        let out = net.forward_prepared(x.clone(), false);
        let _ = out.pool3.sum().into_scalar::<f32>(); // sync, so the time is real
        Ok(())
    })?;
    let images = steps * batch;
    Ok(Figures {
        stage: "inception",
        what: format!("FID Inception forward @ 299x299, batch {batch}"),
        params: net.param_count(),
        batch,
        devices: 1,
        steps,
        throughput: images as f64 / secs,
        unit: "img/s",
        seconds_per_step: secs / steps as f64,
        gflop_per_s: flops::INCEPTION_FORWARD * images as f64 / secs / 1e9,
        peak_host_mib: peak_rss_mib(),
        device_reserved_mib: device_reserved_mib(device),
    })
}

/// The device's float32 arithmetic peak in operations per second, measured by burn's
/// throughput probe (`None` for backends without one, such as the CPU device).
pub fn peak_ops_per_s(device: &Device) -> Option<f64> {
    use burn::tensor::{ThroughputKey, ThroughputMode};
    use cubecl_ir::{ElemType, FloatKind};
    let key = ThroughputKey {
        mode: ThroughputMode::ComputeDirect {
            dtype: ElemType::Float(FloatKind::F32),
        },
    };
    let stats = device.performance_stats(&[key]);
    stats.first()?.value.as_ref().ok().map(|v| v.ops_per_s())
}

/// `seqgan bench`.
pub fn run(a: &BenchArgs) -> Result<()> {
    let devices = crate::device::open_replicas(a.device.choice(), &a.devices)?;
    let device = &devices[0];
    if a.stage == BenchStage::Peak {
        match peak_ops_per_s(device) {
            Some(p) => {
                println!(
                    "float32 peak (burn throughput probe): {:.1} Tops/s",
                    p / 1e12
                );
                println!(
                    "BENCH {}",
                    serde_json::json!({"stage": "peak", "ops_per_s": p})
                );
            }
            None => println!("float32 peak: not measurable on this device"),
        }
        return Ok(());
    }
    let figures = match a.stage {
        BenchStage::Inception => {
            vec![bench_inception(
                &a.inception_weights,
                device,
                a.batch,
                a.steps,
                a.warmup,
            )?]
        }
        BenchStage::Tokenizer | BenchStage::Decoder | BenchStage::Perceptual => {
            let cfg: TokenizerRunConfig = config::from_preset(&a.config, &a.sets)?;
            match a.stage {
                BenchStage::Tokenizer => vec![bench_tokenizer(cfg, &devices, a.steps, a.warmup)?],
                BenchStage::Decoder => {
                    let cfg = phase2::as_phase2(&cfg, "phase2", &[])?;
                    vec![bench_tokenizer(cfg, &devices, a.steps, a.warmup)?]
                }
                _ => bench_perceptual(&cfg.perceptual.weights, device, a.res, a.batch, a.steps)?,
            }
        }
        BenchStage::Peak => unreachable!("handled above"),
        BenchStage::Kernels => {
            let shapes = match a.conv_shapes.as_slice() {
                [] => &CONV_SHAPES[..],
                chosen => chosen,
            };
            bench_kernels(device, a.res, a.batch, shapes, a.steps, a.warmup)?
        }
        BenchStage::Transformer | BenchStage::Sample => {
            let mut tcfg = transformer::new_config(&a.transformer, &a.sets)?;
            tcfg.arch = a.arch;
            let [side, codes, classes] = a.tokens[..] else {
                bail!("--tokens takes SIDE CODES CLASSES");
            };
            let layout = [side, codes, classes];
            if a.stage == BenchStage::Sample {
                vec![bench_sampling(
                    tcfg, layout, a.batch, device, a.steps, a.warmup,
                )?]
            } else {
                vec![bench_transformer(
                    tcfg, layout, a.batch, &devices, a.steps, a.warmup,
                )?]
            }
        }
    };
    for f in figures {
        f.print();
    }
    Ok(())
}
