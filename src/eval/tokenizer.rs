//! `seqgan eval-tokenizer`: reconstruction quality of a trained tokenizer (a phase-1 or phase-2
//! run; its latest checkpoint, EMA weights when kept) over a validation set.
//!
//! Each image goes through the data pipeline's evaluation transform (shorter side resized to
//! the tokenizer's resolution, centre crop), is encoded to tokens and decoded. Metrics compare the
//! input and the reconstruction as 8-bit images (the reconstruction clamped and rounded to the
//! 256 levels a saved PNG has): PSNR, SSIM (see [`super::metrics`]), LPIPS (VGG, v0.1), rFID
//! (Fréchet distance between Inception features of inputs and reconstructions), plus codebook
//! usage and perplexity of the tokens.

use anyhow::{Context, Result, ensure};
use burn::tensor::Device;
use serde_json::{Value, json};
use std::path::Path;

use super::features::FeatureSink;
use super::fid::frechet_distance;
use super::host_f32;
use super::metrics::{CodeUsage, ensure_finite, psnr, ssim, to_8bit_01};
use crate::config::RunKind;
use crate::data::{Dataset, for_each_batch};
use crate::perceptual::{LogitMode, PerceptualConfig, PerceptualLoss};
use crate::pretrained::inception::{FidInception, InputRange};
use crate::tokenizer::TrainedTokenizer;

/// What `eval-tokenizer` needs besides the run.
pub struct EvalOptions<'a> {
    /// Validation images: an ImageFolder or `builtin:shapes:val`.
    pub data: &'a str,
    /// Evaluate at most this many images (all when `None`).
    pub limit: Option<usize>,
    pub batch: usize,
    pub workers: usize,
    /// FID Inception weights.
    pub inception: &'a Path,
    pub range: InputRange,
    /// VGG-16 weights with LPIPS heads.
    pub vgg: &'a Path,
}

/// Runs the evaluation; returns the metrics record (also what `--out` gets).
pub fn eval_tokenizer(run: &Path, opts: &EvalOptions, device: &Device) -> Result<Value> {
    let tok = TrainedTokenizer::load(run, device)?;
    let res = tok.cfg.model.resolution;
    let k = tok.cfg.model.codebook_size;
    let dataset = Dataset::open_images(opts.data, opts.limit.unwrap_or(tok.cfg.data.builtin_len))?;
    let total = opts.limit.map_or(dataset.len(), |l| l.min(dataset.len()));
    ensure!(
        total >= 2,
        "rFID needs at least 2 images, the data has {total}"
    );
    eprintln!("tokenizer: {}, {res}x{res}, {k} codes", tok.describe());
    eprintln!(
        "data: {} = {} (evaluating {total})",
        opts.data,
        dataset.describe()
    );
    let net = FidInception::open(opts.inception, device)?.with_range(opts.range);
    let perceptual = PerceptualLoss::new(
        &PerceptualConfig {
            weights: opts.vgg.to_path_buf(),
            lpips_weights: opts.vgg.to_path_buf(),
            alpha: 0.0,
            logits: LogitMode::Relu5Only,
            lpips_low: true,
        },
        device,
    )
    .context("LPIPS needs VGG-16 weights with the LPIPS heads")?;

    let mut real = FeatureSink::new(&net, total, false);
    let mut recon = FeatureSink::new(&net, total, false);
    let mut usage = CodeUsage::new(k);
    let (mut psnr_sum, mut ssim_sum, mut lpips_sum) = (0.0f64, 0.0f64, 0.0f64);
    let mut identical = 0usize;
    let n = for_each_batch(
        &dataset,
        res,
        opts.batch,
        Some(total),
        opts.workers,
        |batch| {
            let x = batch.to_tensor(device);
            let indices = tok.model.encode(x.clone());
            let x_hat = tok.model.decode_indices(indices.clone());
            ensure_finite(&x_hat)?;
            let codes: Vec<i64> = indices
                .into_data()
                .convert::<i64>()
                .try_to_vec()
                .expect("ints");
            usage.add(&codes);
            let a = to_8bit_01(x);
            let b = to_8bit_01(x_hat);
            for v in host_f32(psnr(a.clone(), b.clone())) {
                if v.is_finite() {
                    psnr_sum += v as f64;
                } else {
                    identical += 1;
                }
            }
            ssim_sum += host_f32(ssim(a.clone(), b.clone())?)
                .iter()
                .map(|v| *v as f64)
                .sum::<f64>();
            let lp = perceptual.lpips(a.clone() * 2.0 - 1.0, b.clone() * 2.0 - 1.0)?;
            lpips_sum += host_f32(lp).iter().map(|v| *v as f64).sum::<f64>();
            real.add(&net, a, false);
            recon.add(&net, b, false);
            Ok(())
        },
    )?;
    ensure!(n >= 2, "only {n} readable images: rFID needs at least 2");
    let fid = frechet_distance(&real.moments.stats()?, &recon.moments.stats()?)?;
    // Per-image PSNR averaged; any identical pair makes the mean infinite.
    let psnr_mean = if identical > 0 {
        f64::INFINITY
    } else {
        psnr_sum / n as f64
    };
    let finite = |v: f64| {
        if v.is_finite() {
            json!(v)
        } else {
            json!("inf")
        }
    };
    Ok(json!({
        "run": run.display().to_string(),
        "checkpoint": tok.checkpoint.display().to_string(),
        "phase": if tok.kind == RunKind::Decoder { 2 } else { 1 },
        "step": tok.step,
        "weights": tok.weights_file,
        "data": opts.data,
        "images": n,
        "resolution": res,
        "psnr": finite(psnr_mean),
        "ssim": ssim_sum / n as f64,
        "lpips": lpips_sum / n as f64,
        "rfid": fid.fid,
        "codebook_usage": usage.usage(),
        "codebook_size": k,
        "codes_used": (usage.usage() * k as f64).round() as usize,
        "perplexity": usage.perplexity(),
        "inception_weights": opts.inception.display().to_string(),
        "inception_input_range": opts.range.name(),
        "lpips_weights": opts.vgg.display().to_string(),
        "conventions": "8-bit images; PSNR per image (data range 1) averaged; SSIM 11x11 Gaussian \
                        sigma 1.5 per RGB channel, valid region; LPIPS v0.1 VGG; rFID: Fréchet \
                        distance of FID Inception pool3 features, inputs vs reconstructions",
    }))
}

/// The metrics as a table for the terminal.
pub fn table(m: &Value) -> String {
    let num = |k: &str| {
        m[k].as_f64()
            .map_or_else(|| m[k].to_string(), |v| format!("{v:.4}"))
    };
    let rows = [
        ("PSNR (dB)", num("psnr")),
        ("SSIM", num("ssim")),
        ("LPIPS (VGG)", num("lpips")),
        ("rFID", num("rfid")),
        (
            "codebook usage",
            format!(
                "{:.1}% ({} of {} codes)",
                100.0 * m["codebook_usage"].as_f64().unwrap_or(0.0),
                m["codes_used"],
                m["codebook_size"]
            ),
        ),
        ("perplexity", num("perplexity")),
    ];
    let mut out = format!(
        "{} images at {}x{} (phase {}, {} at step {})\n",
        m["images"],
        m["resolution"],
        m["resolution"],
        m["phase"],
        m["weights"].as_str().unwrap_or("?"),
        m["step"]
    );
    for (name, value) in rows {
        out.push_str(&format!("  {name:<16} {value}\n"));
    }
    out
}
