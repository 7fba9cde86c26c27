//! `L_low`, `L_sem`, `L_alpha` and LPIPS on the frozen VGG-16 (method.md).
//!
//! Per tap: mean over (N, C, H, W) of the squared feature difference (= the per-image mean
//! over (C, H, W), averaged over the batch); taps are summed with equal weight.
//! `L_low` = relu1_2 + relu2_2 + relu3_3 + relu4_3 + relu5_3; `L_sem` = relu5_3 + logits;
//! `L_alpha = alpha L_sem + (1 - alpha) L_low`.

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};

use super::config::{LogitMode, PerceptualConfig};
use crate::pretrained::vgg16::{Vgg16, VggOut, load_lpips_heads};
use crate::pretrained::weights::{FETCH_SCRIPT, WeightFile};

/// LPIPS v0.1 input scaling, applied to `[-1, 1]` images.
const LPIPS_SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const LPIPS_SCALE: [f32; 3] = [0.458, 0.448, 0.450];

/// The loss terms of one evaluation (scalars, shape `[1]`).
pub struct PerceptualTerms {
    /// `L_low` (absent when alpha = 1).
    pub low: Option<Tensor<1>>,
    /// `L_sem` (absent when alpha = 0).
    pub sem: Option<Tensor<1>>,
    /// `L_alpha`.
    pub total: Tensor<1>,
}

/// Frozen-VGG perceptual loss.
pub struct PerceptualLoss {
    vgg: Vgg16,
    /// Where the weights came from (one file, or the VGG file + the LPIPS heads file).
    source: String,
    alpha: f64,
    use_logits: bool,
    lpips_low: bool,
    lpips_shift: Tensor<4>,
    lpips_scale: Tensor<4>,
}

/// Mean squared difference of two feature maps.
fn mse<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<1> {
    (a - b).powi_scalar(2).mean()
}

impl PerceptualLoss {
    /// Loads the weights named by `cfg` and decides what `L_sem` means; refuses to silently
    /// drop the logit term.
    pub fn new(cfg: &PerceptualConfig, device: &Device) -> Result<Self> {
        let file = WeightFile::open(&cfg.weights)?;
        let mut vgg = Vgg16::load(&file, device)?;
        let mut source = file.path().display().to_string();
        drop(file);
        if Self::needs_lpips(cfg) && vgg.lpips_heads.is_none() {
            let heads = WeightFile::open_lpips(&cfg.lpips_weights)?;
            vgg.lpips_heads = load_lpips_heads(&heads, device)?;
            source = format!("{source} + {}", heads.path().display());
        }
        Self::from_vgg(vgg, cfg, &source, device)
    }

    /// Whether `cfg` uses the LPIPS heads (the LPIPS form of `L_low` with alpha < 1).
    fn needs_lpips(cfg: &PerceptualConfig) -> bool {
        cfg.lpips_low && cfg.alpha < 1.0
    }

    /// Builds the loss around already-loaded weights (`source` names them in messages).
    pub fn from_vgg(
        vgg: Vgg16,
        cfg: &PerceptualConfig,
        source: &str,
        device: &Device,
    ) -> Result<Self> {
        let needs_sem = cfg.alpha > 0.0;
        let use_logits = needs_sem && cfg.logits == LogitMode::Require;
        if use_logits && !vgg.has_classifier() {
            bail!(
                "{source} has no VGG-16 classifier weights, so L_sem cannot include the class \
                 logits. Use torchvision's vgg16-397923af.pth (it has `classifier.*`) as \
                 perceptual.weights, or run L_sem as relu5_3 only with \
                 `--set perceptual.logits=relu5-only` (recorded in config.json). \
                 ({FETCH_SCRIPT} makes the conv-only file.)"
            );
        }
        if Self::needs_lpips(cfg) && vgg.lpips_heads.is_none() {
            bail!(
                "{source} has no LPIPS heads (lpips.lin0..4.weight) but perceptual.lpips_low is \
                 set; point perceptual.lpips_weights at the file made by {FETCH_SCRIPT}"
            );
        }
        let t = |v: [f32; 3]| Tensor::<1>::from_floats(v, device).reshape([1, 3, 1, 1]);
        Ok(Self {
            vgg,
            source: source.to_string(),
            alpha: cfg.alpha,
            use_logits,
            lpips_low: cfg.lpips_low,
            lpips_shift: t(LPIPS_SHIFT),
            lpips_scale: t(LPIPS_SCALE),
        })
    }

    /// The same loss with its network on `device` (for a data-parallel replica).
    pub fn to_device(&self, device: &Device) -> Self {
        Self {
            vgg: self.vgg.to_device(device),
            source: self.source.clone(),
            alpha: self.alpha,
            use_logits: self.use_logits,
            lpips_low: self.lpips_low,
            lpips_shift: self.lpips_shift.clone().to_device(device),
            lpips_scale: self.lpips_scale.clone().to_device(device),
        }
    }

    /// A one-line description for start-up logs.
    pub fn describe(&self) -> String {
        let sem = if self.use_logits {
            "relu5_3 + logits"
        } else {
            "relu5_3 only (no logits)"
        };
        let low = if self.lpips_low { "LPIPS" } else { "5 taps" };
        let terms = match self.alpha {
            a if a >= 1.0 => format!("L_sem = {sem}"),
            a if a <= 0.0 => format!("L_low = {low}"),
            _ => format!("L_sem = {sem}; L_low = {low}"),
        };
        format!(
            "L_alpha, alpha = {}: {terms} (weights {})",
            self.alpha, self.source
        )
    }

    pub fn uses_logits(&self) -> bool {
        self.use_logits
    }

    fn features(&self, x: Tensor<4>, lpips_input: bool, logits: bool) -> VggOut {
        let x = if lpips_input {
            (x - self.lpips_shift.clone()) / self.lpips_scale.clone()
        } else {
            self.vgg.normalize(x)
        };
        self.vgg.forward_normalized(x, 4, logits)
    }

    /// `L_low` from feature sets (plain per-tap MSE sum).
    fn low_from(a: &VggOut, b: &VggOut) -> Tensor<1> {
        a.taps
            .iter()
            .zip(&b.taps)
            .map(|(x, y)| mse(x.clone(), y.clone()))
            .reduce(|s, t| s + t)
            .expect("5 taps")
    }

    /// LPIPS per image `[N]` from feature sets taken with LPIPS input scaling.
    fn lpips_from(&self, a: &VggOut, b: &VggOut) -> Tensor<1> {
        let heads = self
            .vgg
            .lpips_heads
            .as_ref()
            .expect("checked at construction");
        let mut total: Option<Tensor<1>> = None;
        for ((fa, fb), head) in a.taps.iter().zip(&b.taps).zip(heads) {
            let unit = |f: Tensor<4>| {
                let norm = f.clone().powi_scalar(2).sum_dim(1).sqrt() + 1e-10;
                f / norm
            };
            let d = (unit(fa.clone()) - unit(fb.clone())).powi_scalar(2); // [N, C, H, W]
            let [n, _, h, w] = d.dims();
            let weighted = (d * head.clone()).sum_dim(1).reshape([n, h * w]); // 1x1 conv, no bias
            let per_image = weighted.mean_dim(1).reshape([n]);
            total = Some(match total {
                Some(t) => t + per_image,
                None => per_image,
            });
        }
        total.expect("5 taps")
    }

    /// `L_alpha(x_hat, x)` with its parts; `x`'s features are computed without gradient.
    pub fn forward(&self, x_hat: Tensor<4>, x: Tensor<4>) -> PerceptualTerms {
        let x = x.detach();
        let need_low = self.alpha < 1.0;
        let need_sem = self.alpha > 0.0;
        // Features with ImageNet normalisation: all taps for L_low (unless LPIPS), relu5_3 (+logits) for L_sem.
        let plain_needed = need_sem || (need_low && !self.lpips_low);
        let (mut low, mut sem) = (None, None);
        if plain_needed {
            let fa = self.features(x_hat.clone(), false, need_sem && self.use_logits);
            let fb = self.features(x.clone(), false, need_sem && self.use_logits);
            if need_low && !self.lpips_low {
                low = Some(Self::low_from(&fa, &fb));
            }
            if need_sem {
                let mut s = mse(fa.taps[4].clone(), fb.taps[4].clone());
                if let (Some(la), Some(lb)) = (fa.logits, fb.logits) {
                    s = s + mse(la, lb);
                }
                sem = Some(s);
            }
        }
        if need_low && self.lpips_low {
            let fa = self.features(x_hat, true, false);
            let fb = self.features(x, true, false);
            low = Some(self.lpips_from(&fa, &fb).mean());
        }
        let total = match (&low, &sem) {
            (Some(l), Some(s)) => s.clone() * self.alpha + l.clone() * (1.0 - self.alpha),
            (Some(l), None) => l.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => unreachable!("alpha is in [0, 1]"),
        };
        PerceptualTerms { low, sem, total }
    }

    /// LPIPS distance per image pair `[N]` (the evaluation metric). Needs the LPIPS heads.
    pub fn lpips(&self, a: Tensor<4>, b: Tensor<4>) -> Result<Tensor<1>> {
        if self.vgg.lpips_heads.is_none() {
            bail!(
                "the VGG weights have no LPIPS heads (lpips.lin0..4.weight); use the file made by {FETCH_SCRIPT}"
            );
        }
        let fa = self.features(a, true, false);
        let fb = self.features(b, true, false);
        Ok(self.lpips_from(&fa, &fb))
    }

    /// Per-tap MSEs of the five taps (ImageNet normalisation), for tests and diagnostics.
    pub fn tap_mses(&self, a: Tensor<4>, b: Tensor<4>) -> Vec<Tensor<1>> {
        let fa = self.features(a, false, false);
        let fb = self.features(b, false, false);
        fa.taps
            .into_iter()
            .zip(fb.taps)
            .map(|(x, y)| mse(x, y))
            .collect()
    }

    pub fn vgg(&self) -> &Vgg16 {
        &self.vgg
    }
}
