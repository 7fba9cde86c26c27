//! Run configuration: serde structs, built-in presets, JSON files and `--set key=value` overrides.
//!
//! Every field has a default, unknown keys are rejected, and [`TokenizerRunConfig::validate`]
//! checks ranges, so a bad config is a clear error before any work starts. The fully resolved
//! config is written as `config.json` into every run folder, which makes the folder
//! self-describing.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What a run folder holds; stored in `config.json` so a stage can refuse the wrong kind of folder.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    /// Phase 1: encoder, codebook, decoder (+ discriminator).
    Tokenizer,
    /// Phase 2: frozen encoder/codebook with an attention-enhanced decoder.
    Decoder,
    /// A generative transformer on token maps.
    Transformer,
}

/// Conv VQ tokenizer sizes (method.md, "Tokenizer").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerModelConfig {
    /// Square input resolution in pixels.
    pub resolution: usize,
    /// Base channel count C.
    pub base_channels: usize,
    /// Channel multiplier per level; the downsampling factor is 2^(levels-1).
    pub channel_mult: Vec<usize>,
    /// ResBlocks per level.
    pub num_res_blocks: usize,
    /// Code (latent) dimension.
    pub code_dim: usize,
    /// Number of codebook entries K.
    pub codebook_size: usize,
    /// GroupNorm groups (fewer are used when a layer has fewer channels).
    pub norm_groups: usize,
    /// GroupNorm epsilon.
    pub norm_eps: f64,
}

impl Default for TokenizerModelConfig {
    fn default() -> Self {
        Self {
            resolution: 256,
            base_channels: 128,
            channel_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            code_dim: 256,
            codebook_size: 1024,
            norm_groups: 32,
            norm_eps: 1e-6,
        }
    }
}

impl TokenizerModelConfig {
    /// Spatial downsampling factor f.
    pub fn downsample_factor(&self) -> usize {
        1 << (self.channel_mult.len() - 1)
    }
    /// Side of the token map.
    pub fn latent_size(&self) -> usize {
        self.resolution / self.downsample_factor()
    }
}

/// StyleGAN2-style residual discriminator [ours].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscConfig {
    /// Channels of the first layer.
    pub base_channels: usize,
    /// Upper bound on channels.
    pub max_channels: usize,
    /// Downsampling residual blocks stop when the map reaches this side.
    pub min_resolution: usize,
    /// Append the minibatch standard-deviation feature before the head.
    pub minibatch_std: bool,
}

impl Default for DiscConfig {
    fn default() -> Self {
        Self {
            base_channels: 64,
            max_channels: 512,
            min_resolution: 4,
            minibatch_std: true,
        }
    }
}

/// Adversarial loss form.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GanLossKind {
    /// Non-saturating logistic loss (StyleGAN2).
    NonSaturating,
    /// Hinge loss (taming-transformers).
    Hinge,
}

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
            alpha: 1.0,
            logits: LogitMode::Require,
            lpips_low: false,
        }
    }
}

/// Loss weights.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Weight of the L1 reconstruction term.
    pub l1: f64,
    /// Weight of the codebook term `||sg[z_e] - z_q||^2`.
    pub codebook: f64,
    /// Commitment weight beta.
    pub beta: f64,
    /// Usage-entropy weight gamma (the loss adds `-gamma H(mean soft assignment)`).
    pub entropy_gamma: f64,
    /// Temperature of the soft assignment softmax(-D / T) used by the entropy term.
    pub entropy_temperature: f64,
    /// Weight of the perceptual term `L_alpha`.
    pub perceptual: f64,
    /// Fixed generator GAN weight.
    pub gan: f64,
    /// Adversarial loss form.
    pub gan_loss: GanLossKind,
    /// Generator step at which the GAN terms switch on.
    pub disc_start: usize,
    /// R1 penalty weight (0 disables).
    pub r1_gamma: f64,
    /// Lazy R1: apply every this many discriminator steps (weight scaled by the interval).
    pub r1_interval: usize,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            l1: 1.0,
            codebook: 1.0,
            beta: 0.25,
            entropy_gamma: 0.01,
            entropy_temperature: 1.0,
            perceptual: 1.0,
            gan: 0.1,
            gan_loss: GanLossKind::NonSaturating,
            disc_start: 50_000,
            r1_gamma: 10.0,
            r1_interval: 16,
        }
    }
}

/// Optimisation and bookkeeping.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Total optimiser steps.
    pub steps: usize,
    /// Images per micro-batch.
    pub batch_size: usize,
    /// Micro-batches accumulated per optimiser step.
    pub grad_accum: usize,
    /// Generator learning rate (Adam).
    pub lr: f64,
    /// Discriminator learning rate.
    pub disc_lr: f64,
    /// Adam beta1.
    pub beta1: f64,
    /// Adam beta2.
    pub beta2: f64,
    /// Linear learning-rate warm-up steps.
    pub warmup_steps: usize,
    /// EMA decay of the generator weights (0 disables EMA).
    pub ema_decay: f64,
    /// Seed of every random choice (init, data order, augmentation).
    pub seed: u64,
    /// Log a metrics line every this many steps.
    pub log_every: usize,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Keep this many step checkpoints besides `latest`.
    pub keep_last: usize,
    /// Write a sample grid every this many steps (0 disables).
    pub sample_every: usize,
    /// Image-decoding worker threads.
    pub num_workers: usize,
    /// Batches decoded ahead per worker.
    pub prefetch: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 500_000,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-4,
            disc_lr: 1e-4,
            beta1: 0.5,
            beta2: 0.9,
            warmup_steps: 0,
            ema_decay: 0.0,
            seed: 0,
            log_every: 50,
            checkpoint_every: 5000,
            keep_last: 2,
            sample_every: 5000,
            num_workers: 4,
            prefetch: 2,
        }
    }
}

/// Data source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// An ImageFolder path (`root/<class>/<image>`) or `builtin:shapes`.
    pub path: String,
    /// Number of images of the built-in dataset.
    pub builtin_len: usize,
    /// Random horizontal flips in training.
    pub hflip: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: "builtin:shapes".into(),
            builtin_len: 10_000,
            hflip: true,
        }
    }
}

/// Everything a tokenizer (phase 1) run needs; saved as the run folder's `config.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerRunConfig {
    /// Kind of run folder.
    pub kind: RunKind,
    /// Tokenizer sizes.
    pub model: TokenizerModelConfig,
    /// Discriminator sizes.
    pub disc: DiscConfig,
    /// Loss weights.
    pub loss: LossConfig,
    /// Perceptual loss.
    pub perceptual: PerceptualConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// Data.
    pub data: DataConfig,
    /// Class names (folder names), filled in from the data at start-up.
    pub class_names: Vec<String>,
}

impl Default for TokenizerRunConfig {
    fn default() -> Self {
        Self {
            kind: RunKind::Tokenizer,
            model: TokenizerModelConfig::default(),
            disc: DiscConfig::default(),
            loss: LossConfig::default(),
            perceptual: PerceptualConfig::default(),
            train: TrainConfig::default(),
            data: DataConfig::default(),
            class_names: Vec::new(),
        }
    }
}

/// Built-in presets, selectable by name with `--config NAME`.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../configs/tiny.json")),
    ("small", include_str!("../configs/small.json")),
    ("paper256", include_str!("../configs/paper256.json")),
];

/// Reads a preset name or a JSON file into a JSON value.
pub fn load_json(spec: &str) -> Result<Value> {
    if let Some((_, text)) = PRESETS.iter().find(|(name, _)| *name == spec) {
        return serde_json::from_str(text).with_context(|| format!("built-in preset `{spec}`"));
    }
    let path = Path::new(spec);
    if !path.exists() {
        let names: Vec<_> = PRESETS.iter().map(|(n, _)| *n).collect();
        bail!(
            "--config {spec}: no such file, and not a preset (presets: {})",
            names.join(", ")
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Applies `key.path=value` overrides. The value is parsed as JSON when it parses, else taken
/// as a string. Unknown keys are errors naming the valid keys at that level.
pub fn apply_overrides(mut root: Value, sets: &[String], defaults: &Value) -> Result<Value> {
    for set in sets {
        let (key, raw) = set
            .split_once('=')
            .with_context(|| format!("--set {set}: expected key=value"))?;
        let value: Value =
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        let parts: Vec<&str> = key.split('.').collect();
        let mut node = &mut root;
        let mut schema = defaults;
        for (i, part) in parts.iter().enumerate() {
            let Some(schema_obj) = schema.as_object() else {
                bail!("--set {key}: `{}` is not a section", parts[..i].join("."));
            };
            let Some(next_schema) = schema_obj.get(*part) else {
                let valid: Vec<_> = schema_obj.keys().cloned().collect();
                bail!(
                    "--set {key}: unknown key `{part}` (valid here: {})",
                    valid.join(", ")
                );
            };
            schema = next_schema;
            if !node.is_object() {
                *node = Value::Object(Default::default());
            }
            let obj = node.as_object_mut().expect("object ensured above");
            if i + 1 == parts.len() {
                obj.insert(part.to_string(), value.clone());
                break;
            }
            node = obj
                .entry(part.to_string())
                .or_insert_with(|| next_schema.clone());
        }
    }
    Ok(root)
}

/// Parses a config value and checks it, naming the source in errors.
pub fn resolve<T>(base: Option<&str>, sets: &[String]) -> Result<T>
where
    T: Serialize + for<'de> Deserialize<'de> + Default,
{
    let defaults = serde_json::to_value(T::default())?;
    let root = match base {
        Some(spec) => load_json(spec)?,
        None => defaults.clone(),
    };
    let root = apply_overrides(root, sets, &defaults)?;
    let source = base.unwrap_or("defaults");
    serde_json::from_value(root).with_context(|| format!("invalid config ({source} + --set)"))
}

impl TokenizerRunConfig {
    /// Range checks; every message names the key.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        ensure!(
            !m.channel_mult.is_empty(),
            "model.channel_mult must not be empty"
        );
        ensure!(
            m.channel_mult.iter().all(|&c| c > 0),
            "model.channel_mult entries must be > 0"
        );
        ensure!(m.base_channels > 0, "model.base_channels must be > 0");
        ensure!(m.code_dim > 0, "model.code_dim must be > 0");
        ensure!(
            (2..=65536).contains(&m.codebook_size),
            "model.codebook_size must be in 2..=65536 (token files store u16), got {}",
            m.codebook_size
        );
        ensure!(
            m.resolution >= m.downsample_factor()
                && m.resolution.is_multiple_of(m.downsample_factor()),
            "model.resolution {} must be a positive multiple of the downsampling factor {}",
            m.resolution,
            m.downsample_factor()
        );
        ensure!(m.norm_groups > 0, "model.norm_groups must be > 0");
        ensure!(m.norm_eps > 0.0, "model.norm_eps must be > 0");
        let l = &self.loss;
        for (name, v) in [
            ("loss.l1", l.l1),
            ("loss.codebook", l.codebook),
            ("loss.beta", l.beta),
            ("loss.entropy_gamma", l.entropy_gamma),
            ("loss.perceptual", l.perceptual),
            ("loss.gan", l.gan),
            ("loss.r1_gamma", l.r1_gamma),
        ] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "{name} must be a finite number >= 0, got {v}"
            );
        }
        ensure!(
            l.entropy_temperature > 0.0,
            "loss.entropy_temperature must be > 0"
        );
        ensure!(l.r1_interval > 0, "loss.r1_interval must be > 0");
        let p = &self.perceptual;
        ensure!(
            (0.0..=1.0).contains(&p.alpha),
            "perceptual.alpha must be in [0, 1], got {}",
            p.alpha
        );
        let t = &self.train;
        ensure!(t.steps > 0, "train.steps must be > 0");
        ensure!(t.batch_size > 0, "train.batch_size must be > 0");
        ensure!(t.grad_accum > 0, "train.grad_accum must be > 0");
        ensure!(
            t.lr > 0.0 && t.disc_lr > 0.0,
            "train.lr and train.disc_lr must be > 0"
        );
        ensure!(
            (0.0..1.0).contains(&t.beta1) && (0.0..1.0).contains(&t.beta2),
            "train.beta1/beta2 must be in [0, 1)"
        );
        ensure!(
            (0.0..1.0).contains(&t.ema_decay),
            "train.ema_decay must be in [0, 1)"
        );
        ensure!(t.log_every > 0, "train.log_every must be > 0");
        ensure!(t.checkpoint_every > 0, "train.checkpoint_every must be > 0");
        ensure!(t.num_workers > 0, "train.num_workers must be > 0");
        ensure!(t.prefetch > 0, "train.prefetch must be > 0");
        ensure!(
            self.disc.base_channels > 0,
            "disc.base_channels must be > 0"
        );
        ensure!(
            self.disc.min_resolution >= 1,
            "disc.min_resolution must be >= 1"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_validate() {
        for (name, _) in PRESETS {
            let c: TokenizerRunConfig = resolve(Some(name), &[]).unwrap();
            c.validate().unwrap();
        }
    }

    #[test]
    fn overrides_apply_and_unknown_keys_fail() {
        let c: TokenizerRunConfig = resolve(
            Some("tiny"),
            &["train.lr=0.5".into(), "data.path=foo".into()],
        )
        .unwrap();
        assert_eq!(c.train.lr, 0.5);
        assert_eq!(c.data.path, "foo");
        let err = resolve::<TokenizerRunConfig>(Some("tiny"), &["train.lrr=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lrr") && err.contains("valid here"), "{err}");
        let err = resolve::<TokenizerRunConfig>(Some("tiny"), &["train.lr".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("key=value"), "{err}");
    }

    #[test]
    fn out_of_range_is_an_error() {
        let c: TokenizerRunConfig =
            resolve(Some("tiny"), &["perceptual.alpha=1.5".into()]).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("perceptual.alpha"), "{err}");
        let err = resolve::<TokenizerRunConfig>(Some("tiny"), &["train.steps=\"many\"".into()])
            .unwrap_err();
        assert!(format!("{err:#}").contains("invalid"), "{err:#}");
    }

    #[test]
    fn unknown_key_in_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"train": {"stepz": 3}}"#).unwrap();
        let err = resolve::<TokenizerRunConfig>(Some(path.to_str().unwrap()), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("stepz"), "{err:#}");
    }
}
