//! The `fid-stats`, `fid` and `eval-tokenizer` commands.

use anyhow::{Context, Result, ensure};
use burn::tensor::Device;
use std::time::Instant;

use crate::cli::{EvalTokenizerArgs, FidArgs, FidStatsArgs, InceptionArgs};
use crate::device;
use crate::eval::features::{FidInput, ImageSource, extract};
use crate::eval::fid::{Stats, frechet_distance};
use crate::eval::npz;
use crate::eval::tokenizer::{EvalOptions, eval_tokenizer, table};
use crate::pretrained::inception::{FidInception, check_weights};
use crate::run::checkpoint::write_atomic;

fn open_net(args: &InceptionArgs, device: &Device) -> Result<FidInception> {
    let net = FidInception::open(&args.weights, device)?.with_range(args.range);
    eprintln!(
        "inception: {} ({}; input range {})",
        args.weights.display(),
        if net.has_logits() {
            "with the fc layer"
        } else {
            "no fc layer: no Inception Score"
        },
        args.range.name()
    );
    Ok(net)
}

/// Statistics of an image set (and its Inception Score when the network has the fc layer).
fn image_stats(
    source: &ImageSource,
    net: &FidInception,
    args: &InceptionArgs,
    device: &Device,
) -> Result<(Stats, Option<(f64, f64)>)> {
    ensure!(
        source.len() >= 2,
        "{} has {} images; statistics need at least 2",
        source.describe(),
        source.len()
    );
    eprintln!("images: {}", source.describe());
    let t0 = Instant::now();
    let out = extract(source, net, args.batch, args.workers, device, true)?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "  {} images in {secs:.1} s ({:.1} img/s)",
        out.0.n,
        out.0.n as f64 / secs.max(1e-9)
    );
    Ok(out)
}

/// `seqgan fid-stats`. Inputs are checked before the device is opened.
pub fn fid_stats(a: &FidStatsArgs) -> Result<()> {
    let source = ImageSource::open(&a.source, a.images.res, a.images.builtin_len)?;
    check_weights(&a.inception.weights)?;
    let device = &device::open(a.inception.device.choice())?;
    let net = open_net(&a.inception, device)?;
    let (stats, score) = image_stats(&source, &net, &a.inception, device)?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    npz::write_stats(&a.out, &stats)?;
    println!(
        "wrote {}: mu {}, sigma {}x{} (float64) over {} images",
        a.out.display(),
        stats.mu.len(),
        stats.sigma.rows,
        stats.sigma.cols,
        stats.n
    );
    if let Some((m, s)) = score {
        println!("Inception Score: {m:.4} ± {s:.4} (10 splits)");
    }
    Ok(())
}

/// `seqgan fid`. Inputs are checked before the device is opened (none is opened when both
/// inputs are statistics files).
pub fn fid(a: &FidArgs) -> Result<()> {
    let inputs = [
        FidInput::open(&a.a, a.images.res, a.images.builtin_len)?,
        FidInput::open(&a.b, a.images.res, a.images.builtin_len)?,
    ];
    let needs_net = inputs.iter().any(|i| matches!(i, FidInput::Images(_)));
    let (device, net) = if needs_net {
        check_weights(&a.inception.weights)?;
        let device = device::open(a.inception.device.choice())?;
        let net = open_net(&a.inception, &device)?;
        (Some(device), Some(net))
    } else {
        (None, None)
    };
    let mut stats = Vec::new();
    let mut scores = Vec::new();
    for (name, input) in [&a.a, &a.b].into_iter().zip(inputs) {
        match input {
            FidInput::Stats(s) => {
                let n = if s.n > 0 {
                    format!("{} samples", s.n)
                } else {
                    "sample count not recorded".into()
                };
                eprintln!("statistics: {name} ({}-d, {n})", s.mu.len());
                stats.push(s);
            }
            FidInput::Images(source) => {
                let net = net.as_ref().expect("opened above");
                let device = device.as_ref().expect("opened above");
                let (s, score) = image_stats(&source, net, &a.inception, device)?;
                stats.push(s);
                if let Some(score) = score {
                    scores.push((name.clone(), score));
                }
            }
        }
    }
    let t0 = Instant::now();
    let f = frechet_distance(&stats[0], &stats[1])?;
    eprintln!(
        "Fréchet distance in {:.1} s: {:.10} = |mu1-mu2|^2 {:.4} + tr S1 {:.4} + tr S2 {:.4} - 2 \
         tr sqrt(S1 S2) {:.4} (rank of S1: {})",
        t0.elapsed().as_secs_f64(),
        f.fid,
        f.mean_term,
        f.trace1,
        f.trace2,
        f.trace_sqrt,
        f.rank1
    );
    // d^2 >= 0; a round-off-sized negative value prints as 0.
    println!("FID: {:.4}", f.fid.max(0.0));
    for (name, (m, s)) in scores {
        println!("Inception Score of {name}: {m:.4} ± {s:.4} (10 splits)");
    }
    if needs_net && !net.as_ref().is_some_and(|n| n.has_logits()) {
        println!(
            "Inception Score: not available (these weights have no fc layer; pass --weights \
             pt_inception-2015-12-05-6726825d.pth from pytorch-fid)"
        );
    }
    Ok(())
}

/// `seqgan eval-tokenizer`.
pub fn eval_tokenizer_cmd(a: &EvalTokenizerArgs) -> Result<()> {
    check_weights(&a.inception.weights)?;
    let device = &device::open(a.inception.device.choice())?;
    let opts = EvalOptions {
        data: &a.data,
        limit: a.limit,
        batch: a.inception.batch,
        workers: a.inception.workers,
        inception: &a.inception.weights,
        range: a.inception.range,
        vgg: &a.vgg_weights,
    };
    let metrics = eval_tokenizer(&a.tokenizer, &opts, device)?;
    print!("{}", table(&metrics));
    let out = match &a.out {
        Some(p) => p.clone(),
        None => a.tokenizer.join(format!(
            "eval-step-{:07}.json",
            metrics["step"].as_u64().unwrap_or(0)
        )),
    };
    write_atomic(&out, serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    println!("wrote {}", out.display());
    Ok(())
}
