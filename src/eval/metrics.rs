//! Reconstruction metrics on the device: PSNR and SSIM per image pair; codebook usage and
//! perplexity over a token stream.
//!
//! Conventions (images `[N, 3, H, W]` in [0, 1], i.e. data range 1; on 8-bit images this equals
//! the [0, 255] definitions):
//! - PSNR = `10 log10(1 / MSE)` per image over all pixels and channels; infinite for identical
//!   images. Set-level PSNR is the mean of the per-image values.
//! - SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, computed per
//!   RGB channel over the valid region (no padding), averaged over channels and positions per
//!   image (as `pytorch_msssim.ssim` / torchmetrics with a Gaussian kernel do; some papers use the
//!   luma channel instead).

use anyhow::{Result, ensure};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::image_io::quantize_8bit;

/// SSIM window side and Gaussian sigma.
pub const SSIM_WINDOW: usize = 11;
pub const SSIM_SIGMA: f64 = 1.5;
const K1: f64 = 0.01;
const K2: f64 = 0.03;

/// PSNR per image `[N]` (dB; `inf` where the images are identical).
pub fn psnr(a: Tensor<4>, b: Tensor<4>) -> Tensor<1> {
    let [n, c, h, w] = a.dims();
    let mse = (a - b)
        .powi_scalar(2)
        .reshape([n, c * h * w])
        .mean_dim(1)
        .reshape([n]);
    mse.log().neg() * (10.0 / std::f64::consts::LN_10)
}

/// An error when an image holds NaN or an infinity (a metric on it would mean nothing; 8-bit
/// quantisation would hide it).
pub fn ensure_finite(x: &Tensor<4>) -> Result<()> {
    let finite = x.clone().is_finite().all().into_scalar::<bool>();
    ensure!(
        finite,
        "an image is not finite (it holds NaN or inf): the model's weights or output diverged"
    );
    Ok(())
}

/// Largest PSNR [`psnr_8bit`] reports (identical images would give +inf).
pub const PSNR_CAP_DB: f64 = 100.0;

/// `[-1, 1]` images as 8-bit values scaled to [0, 1] (what the metrics compare).
pub fn to_8bit_01(x: Tensor<4>) -> Tensor<4> {
    quantize_8bit(x) / 255.0
}

/// PSNR in dB of each pair of `[-1, 1]` images `[B, 3, H, W]`, on their 8-bit values (both
/// rounded to 0..=255 as when saved as PNG), capped at [`PSNR_CAP_DB`]. An error when a value is
/// not a number (a non-finite image, e.g. from a diverged model): never a perfect score.
pub fn psnr_8bit(a: Tensor<4>, b: Tensor<4>) -> Result<Vec<f64>> {
    ensure_finite(&a)?;
    ensure_finite(&b)?;
    let values = super::host_f32(psnr(to_8bit_01(a), to_8bit_01(b)));
    Ok(values
        .into_iter()
        .map(|v| (v as f64).min(PSNR_CAP_DB))
        .collect())
}

/// The normalised 1-D Gaussian of the SSIM window.
fn gaussian_1d() -> Vec<f32> {
    let half = (SSIM_WINDOW / 2) as f64;
    let g: Vec<f64> = (0..SSIM_WINDOW)
        .map(|i| (-(i as f64 - half).powi(2) / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp())
        .collect();
    let s: f64 = g.iter().sum();
    g.iter().map(|v| (v / s) as f32).collect()
}

/// Separable Gaussian filtering of each channel, valid region only.
fn blur(x: Tensor<4>, rows: &Tensor<4>, cols: &Tensor<4>) -> Tensor<4> {
    let groups = x.dims()[1];
    let opts = ConvOptions::new([1, 1], [0, 0], [1, 1], groups);
    let x = conv2d(x, rows.clone(), None, opts.clone());
    conv2d(x, cols.clone(), None, opts)
}

/// SSIM per image `[N]` (1 for identical images).
pub fn ssim(a: Tensor<4>, b: Tensor<4>) -> Result<Tensor<1>> {
    let [n, c, h, w] = a.dims();
    ensure!(
        h >= SSIM_WINDOW && w >= SSIM_WINDOW,
        "SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {w}x{h}"
    );
    let device = a.device();
    let g = gaussian_1d();
    let kernel = |shape: [usize; 4], device: &Device| {
        let data: Vec<f32> = (0..c).flat_map(|_| g.iter().copied()).collect();
        Tensor::<4>::from_data(TensorData::new(data, shape), device)
    };
    let rows = kernel([c, 1, 1, SSIM_WINDOW], &device);
    let cols = kernel([c, 1, SSIM_WINDOW, 1], &device);
    let f = |x: Tensor<4>| blur(x, &rows, &cols);
    let (c1, c2) = (K1 * K1, K2 * K2);
    let mu_a = f(a.clone());
    let mu_b = f(b.clone());
    let mu_aa = mu_a.clone() * mu_a.clone();
    let mu_bb = mu_b.clone() * mu_b.clone();
    let mu_ab = mu_a * mu_b;
    let var_a = f(a.clone() * a.clone()) - mu_aa.clone();
    let var_b = f(b.clone() * b.clone()) - mu_bb.clone();
    let cov = f(a * b) - mu_ab.clone();
    let map =
        ((mu_ab * 2.0 + c1) * (cov * 2.0 + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2));
    let [_, _, hh, ww] = map.dims();
    Ok(map.reshape([n, c * hh * ww]).mean_dim(1).reshape([n]))
}

/// Code-index histogram over a set: usage (share of codes hit at least once) and perplexity
/// (`exp` of the entropy of the empirical code distribution).
#[derive(Clone, Debug)]
pub struct CodeUsage {
    counts: Vec<u64>,
}

impl CodeUsage {
    pub fn new(codebook_size: usize) -> Self {
        Self {
            counts: vec![0; codebook_size],
        }
    }

    /// From per-code counts (one per code of the codebook).
    pub fn from_counts(counts: impl IntoIterator<Item = u64>) -> Self {
        Self {
            counts: counts.into_iter().collect(),
        }
    }

    pub fn add(&mut self, indices: &[i64]) {
        for &i in indices {
            self.counts[i as usize] += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction of codes used at least once, in [0, 1].
    pub fn usage(&self) -> f64 {
        self.counts.iter().filter(|c| **c > 0).count() as f64 / self.counts.len() as f64
    }

    /// `exp(-sum p log p)`: 1 for a single code, K for uniform use of all K codes.
    pub fn perplexity(&self) -> f64 {
        let total = self.total() as f64;
        if total == 0.0 {
            return 0.0;
        }
        let h: f64 = self
            .counts
            .iter()
            .filter(|c| **c > 0)
            .map(|c| {
                let p = *c as f64 / total;
                -p * p.ln()
            })
            .sum();
        h.exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(v, shape), &Device::flex())
    }

    fn vals(x: Tensor<1>) -> Vec<f32> {
        x.into_data().convert::<f32>().try_to_vec().unwrap()
    }

    /// A smooth test image `[1, 3, s, s]` in [0.1, 0.9].
    fn image(s: usize) -> Vec<f32> {
        (0..3 * s * s)
            .map(|i| {
                let (c, y, x) = (i / (s * s), (i / s) % s, i % s);
                0.5 + 0.4 * ((x as f32 * 0.3 + c as f32).sin() * (y as f32 * 0.2).cos())
            })
            .collect()
    }

    #[test]
    fn psnr_closed_forms() {
        let s = 16;
        let a = image(s);
        assert!(
            vals(psnr(t(a.clone(), [1, 3, s, s]), t(a.clone(), [1, 3, s, s])))[0].is_infinite()
        );
        // A checkerboard of +-4/255: MSE = (4/255)^2, PSNR = 20 log10(255/4) = 36.0896 dB.
        let d = 4.0 / 255.0;
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, v)| if (i + i / s) % 2 == 0 { v + d } else { v - d })
            .collect();
        let got = vals(psnr(t(a, [1, 3, s, s]), t(b, [1, 3, s, s])))[0] as f64;
        let want = 20.0 * (255.0f64 / 4.0).log10();
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    }

    #[test]
    fn ssim_closed_forms() {
        let s = 24;
        let a = image(s);
        let same = vals(ssim(t(a.clone(), [1, 3, s, s]), t(a, [1, 3, s, s])).unwrap())[0];
        assert!((same - 1.0).abs() < 1e-6, "{same}");
        // Constant images p and q: SSIM = (2pq + C1) / (p^2 + q^2 + C1). The f32 variance
        // `E[x^2] - E[x]^2` is round-off (~1e-7 p^2) instead of 0, which moves the contrast term
        // by ~5e-5 against C2 = 9e-4.
        let (p, q) = (0.2f32, 0.7f32);
        let got = vals(
            ssim(
                t(vec![p; 3 * s * s], [1, 3, s, s]),
                t(vec![q; 3 * s * s], [1, 3, s, s]),
            )
            .unwrap(),
        )[0] as f64;
        let c1 = K1 * K1;
        let (p, q) = (p as f64, q as f64);
        let want = (2.0 * p * q + c1) / (p * p + q * q + c1);
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        // Too small for the window.
        assert!(
            ssim(
                t(vec![0.0; 3 * 64], [1, 3, 8, 8]),
                t(vec![0.0; 3 * 64], [1, 3, 8, 8])
            )
            .is_err()
        );
    }

    #[test]
    fn gaussian_window_is_normalised_and_symmetric() {
        let g = gaussian_1d();
        assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(g[0], g[10]);
        assert!(g[5] > g[4]);
    }

    #[test]
    fn code_usage_and_perplexity() {
        let mut u = CodeUsage::new(8);
        u.add(&[3, 3, 3]);
        assert_eq!(u.usage(), 1.0 / 8.0);
        assert!((u.perplexity() - 1.0).abs() < 1e-12);
        let mut u = CodeUsage::new(4);
        u.add(&[0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(u.usage(), 1.0);
        assert!((u.perplexity() - 4.0).abs() < 1e-12);
    }
}
