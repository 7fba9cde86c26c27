//! Tensor <-> image conversion and PNG grids.

use anyhow::{Context, Result};
use burn::tensor::Tensor;
use image::RgbImage;
use std::path::Path;

/// `[-1, 1]` images as their 8-bit values (0..=255, as floats): what a PNG of them holds.
pub fn quantize_8bit<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
}

/// `[B, 3, H, W]` in [-1, 1] -> RGB8 images (one device read for the whole batch).
pub fn to_images(x: Tensor<4>) -> Vec<RgbImage> {
    let [b, c, h, w] = x.dims();
    assert_eq!(c, 3, "expected RGB tensors");
    let u8s = quantize_8bit(x)
        .permute([0, 2, 3, 1])
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data");
    u8s.chunks_exact(h * w * 3)
        .take(b)
        .map(|px| {
            RgbImage::from_raw(w as u32, h as u32, px.iter().map(|v| *v as u8).collect())
                .expect("buffer size matches")
        })
        .collect()
}

/// Tiles rows of images (each row a slice of same-sized images) into one picture with a
/// 2-pixel gap.
pub fn grid(rows: &[Vec<RgbImage>]) -> RgbImage {
    let gap = 2u32;
    let (w, h) = rows
        .iter()
        .flatten()
        .next()
        .map(|i| i.dimensions())
        .unwrap_or((1, 1));
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(1) as u32;
    let n_rows = rows.len() as u32;
    let mut out = RgbImage::from_pixel(
        cols * (w + gap) + gap,
        n_rows * (h + gap) + gap,
        image::Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let x = gap + c as u32 * (w + gap);
            let y = gap + r as u32 * (h + gap);
            image::imageops::overlay(&mut out, img, x as i64, y as i64);
        }
    }
    out
}

/// Writes a PNG atomically (temp file + rename), creating parent folders.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
