//! Perceptual-loss settings (method.md, "Semantic-enhanced perceptual loss").

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What to do when the VGG weights have no classifier, so `L_sem` cannot include the logits.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogitMode {
    /// `L_sem` = relu5_3 + logits; an error if the weights lack the classifier.
    Require,
    /// `L_sem` = relu5_3 only (explicit choice; printed and recorded).
    Relu5Only,
}

/// Perceptual-loss settings (method.md, "Semantic-enhanced perceptual loss").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PerceptualConfig {
    /// VGG-16 weights: torchvision `.pth` or our `.safetensors` (see scripts/fetch-vgg16.sh).
    pub weights: PathBuf,
    /// Where the LPIPS v0.1 heads (`lpips.lin0..4.weight`) come from when `weights` has none
    /// (torchvision's `.pth` has none): the file made by scripts/fetch-vgg16.sh holds them.
    pub lpips_weights: PathBuf,
    /// Semantic ratio: `L_alpha = alpha L_sem + (1 - alpha) L_low`.
    pub alpha: f64,
    /// Whether `L_sem` must include the class logits.
    pub logits: LogitMode,
    /// Use LPIPS (unit-normalised channels, learned linear heads) for `L_low`.
    pub lpips_low: bool,
}

impl Default for PerceptualConfig {
    fn default() -> Self {
        Self {
            weights: PathBuf::from("weights/vgg16.safetensors"),
            lpips_weights: PathBuf::from("weights/vgg16.safetensors"),
            alpha: 1.0,
            logits: LogitMode::Require,
            lpips_low: false,
        }
    }
}
