//! `seqgan reconstruct`: encode and decode images with a phase-1 or phase-2 tokenizer, write
//! input | reconstruction side by side, and report PSNR per image and overall.

use anyhow::{Context, Result, ensure};
use burn::tensor::{Device, Tensor};
use std::fmt::Write as _;
use std::path::Path;

use crate::data::{Dataset, Loader, Order};
use crate::image_io;
use crate::tokenizer::TrainedTokenizer;
use crate::train::checkpoint::write_atomic;
use crate::train::gan::batch_tensor;
use crate::train::progress::Progress;

/// Largest PSNR reported (identical images would give +inf).
pub const PSNR_CAP_DB: f64 = 100.0;

/// PSNR in dB of each image pair `[B, 3, H, W]` in [-1, 1], computed on 8-bit values (both
/// images rounded to 0..=255 as when saved as PNG), capped at [`PSNR_CAP_DB`].
pub fn psnr_u8(a: Tensor<4>, b: Tensor<4>) -> Vec<f64> {
    let n = a.dims()[0];
    let to_u8 = |x: Tensor<4>| ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round();
    let mse: Vec<f32> = (to_u8(a) - to_u8(b))
        .powi_scalar(2)
        .reshape([n as i32, -1])
        .mean_dim(1)
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32 data");
    mse.iter()
        .map(|&m| {
            if m <= 0.0 {
                PSNR_CAP_DB
            } else {
                (10.0 * (255.0f64 * 255.0 / m as f64).log10()).min(PSNR_CAP_DB)
            }
        })
        .collect()
}

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
/// `out/psnr.csv`.
pub fn reconstruct(
    tok: &TrainedTokenizer,
    data: &str,
    out: &Path,
    batch: usize,
    limit: Option<usize>,
    device: &Device,
) -> Result<ReconstructReport> {
    ensure!(batch > 0, "--batch must be > 0");
    let builtin_len = limit.unwrap_or(64);
    let dataset = Dataset::open(data, builtin_len)?;
    let total = limit.unwrap_or(usize::MAX).min(dataset.len());
    ensure!(total > 0, "--data {data}: no images");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let res = tok.cfg.model.resolution;
    let loader = Loader::new(dataset.clone(), res, batch, Order::Sequential, 0, 2, 2)?;
    let model = &tok.model;
    let progress = Progress::new(0, total);
    let mut per_image = Vec::with_capacity(total.min(1 << 20));
    for b in loader {
        if per_image.len() >= total {
            break;
        }
        let x = batch_tensor(&b, device);
        let x_hat = model.decode_indices(model.encode(x.clone()));
        let psnr = psnr_u8(x.clone(), x_hat.clone());
        let (inputs, outputs) = (image_io::to_images(x), image_io::to_images(x_hat));
        for (i, &index) in b.indices.iter().enumerate() {
            if per_image.len() >= total {
                break;
            }
            let name = dataset.item_name(index);
            let pair = image_io::grid(&[vec![inputs[i].clone(), outputs[i].clone()]]);
            image_io::save_png(
                &pair,
                &out.join(format!("{:05}-{name}.png", per_image.len())),
            )?;
            println!("{name}\t{:.2} dB", psnr[i]);
            per_image.push((name, psnr[i]));
        }
        progress.set(per_image.len());
    }
    progress.finish();
    dataset.report_skipped();
    let report = ReconstructReport { per_image };
    let mut csv = String::from("image,psnr_db\n");
    for (name, p) in &report.per_image {
        writeln!(csv, "{name},{p:.4}")?;
    }
    write_atomic(&out.join("psnr.csv"), csv.as_bytes())?;
    Ok(report)
}
