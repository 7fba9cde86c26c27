//! `seqgan reconstruct`: encode and decode images with a phase-1 or phase-2 tokenizer, write
//! input | reconstruction side by side, and report PSNR per image and overall.

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::Path;

use crate::cli::ReconstructArgs;
use crate::data::{Dataset, for_each_batch, image_io};
use crate::eval::metrics::psnr_8bit;
use crate::run::checkpoint::write_atomic;
use crate::tokenizer::TrainedTokenizer;
use burn::tensor::Device;

/// What [`reconstruct`] measured.
pub struct ReconstructReport {
    /// `(item name, PSNR dB)` per image, in data order.
    pub per_image: Vec<(String, f64)>,
}

impl ReconstructReport {
    /// Mean PSNR over images.
    pub fn mean_psnr(&self) -> f64 {
        self.per_image.iter().map(|(_, p)| p).sum::<f64>() / self.per_image.len().max(1) as f64
    }
}

/// Reconstructs up to `limit` images of `data` (centre-cropped to the tokenizer's resolution)
/// in batches of `batch`, writing `out/NNNNN-name.png` (input | reconstruction) and
/// `out/psnr.csv`. PSNR is on 8-bit values (see [`psnr_8bit`]).
pub fn reconstruct(
    tok: &TrainedTokenizer,
    data: &str,
    out: &Path,
    batch: usize,
    limit: Option<usize>,
    device: &Device,
) -> Result<ReconstructReport> {
    let dataset = Dataset::open_images(data, limit.unwrap_or(64))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let res = tok.cfg.model.resolution;
    let model = &tok.model;
    let mut per_image = Vec::new();
    for_each_batch(&dataset, res, batch, limit, 2, |b| {
        let x = b.to_tensor(device);
        let x_hat = model.decode_indices(model.encode(x.clone()));
        let psnr = psnr_8bit(x.clone(), x_hat.clone())?;
        let (inputs, outputs) = (image_io::to_images(x), image_io::to_images(x_hat));
        for (i, &index) in b.indices.iter().enumerate() {
            let name = dataset.item_name(index);
            let pair = image_io::grid(&[vec![inputs[i].clone(), outputs[i].clone()]]);
            image_io::save_png(
                &pair,
                &out.join(format!("{:05}-{name}.png", per_image.len())),
            )?;
            println!("{name}\t{:.2} dB", psnr[i]);
            per_image.push((name, psnr[i]));
        }
        Ok(())
    })?;
    let report = ReconstructReport { per_image };
    let mut csv = String::from("image,psnr_db\n");
    for (name, p) in &report.per_image {
        writeln!(csv, "{name},{p:.4}")?;
    }
    write_atomic(&out.join("psnr.csv"), csv.as_bytes())?;
    Ok(report)
}

/// `seqgan reconstruct`.
pub fn run(a: &ReconstructArgs) -> Result<()> {
    let device = crate::device::open(a.device.choice())?;
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
    let report = reconstruct(&tok, &data, &a.out, a.batch, a.limit, &device)?;
    println!(
        "mean PSNR {:.2} dB over {} images ({} -> {})",
        report.mean_psnr(),
        report.per_image.len(),
        data,
        a.out.display()
    );
    Ok(())
}
