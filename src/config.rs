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
    /// Regional/dilated attention in the decoder (phase 2; off in phase 1).
    pub attention: DecoderAttentionConfig,
}

/// HiT-style attention blocks of the phase-2 decoder (method.md, "Phase 2").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecoderAttentionConfig {
    /// Add the blocks (phase 2 turns this on; phase 1 is convolution-only).
    pub enabled: bool,
    /// (regional, dilated) block pairs after each decoder level's ResBlocks.
    pub pairs_per_level: usize,
    /// Window side b on maps larger than `small_map`.
    pub window: usize,
    /// Window side on maps of side <= `small_map`.
    pub small_window: usize,
    /// See `small_window`.
    pub small_map: usize,
    /// Channels per attention head (heads = channels / head_dim, at least 1).
    pub head_dim: usize,
}

impl Default for DecoderAttentionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            pairs_per_level: 1,
            window: 8,
            small_window: 4,
            small_map: 16,
            head_dim: 64,
        }
    }
}

impl DecoderAttentionConfig {
    /// Configured window side for a level whose map side is `map`.
    pub fn window_for(&self, map: usize) -> usize {
        if map <= self.small_map {
            self.small_window
        } else {
            self.window
        }
    }
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
            attention: DecoderAttentionConfig::default(),
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
    /// Adam epsilon (PyTorch's default, as in the taming/StyleGAN lineage; burn's is 1e-5).
    pub adam_eps: f64,
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
            adam_eps: 1e-8,
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

/// Where a phase-2 run comes from (empty in phase 1).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// The phase-1 run folder whose encoder and codebook are frozen and whose decoder is finetuned.
    pub tokenizer: Option<PathBuf>,
    /// Step of the phase-1 checkpoint used.
    pub tokenizer_step: usize,
    /// Which phase-1 weights file was used: `ema.bpk` or `model.bpk`.
    pub tokenizer_weights: String,
    /// Start the discriminator from scratch instead of from phase 1's.
    pub reinit_disc: bool,
}

/// Everything a tokenizer run (phase 1, or phase 2 with `kind = decoder`) needs; saved as the
/// run folder's `config.json`.
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
    /// Phase 2 only: the phase-1 run it starts from.
    pub finetune: FinetuneConfig,
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
            finetune: FinetuneConfig::default(),
        }
    }
}

/// Built-in presets, selectable by name with `--config NAME`.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../configs/tiny.json")),
    ("small", include_str!("../configs/small.json")),
    ("paper256", include_str!("../configs/paper256.json")),
    ("fashion32", include_str!("../configs/fashion32.json")),
];

/// Built-in phase-2 patches for `finetune-decoder --config NAME`: applied on top of the phase-1
/// run's config (only the keys they name change).
pub const PHASE2_PRESETS: &[(&str, &str)] = &[
    ("phase2", include_str!("../configs/phase2.json")),
    ("phase2-tiny", include_str!("../configs/phase2-tiny.json")),
];

/// Reads a preset name or a JSON file into a JSON value.
pub fn load_json(spec: &str) -> Result<Value> {
    load_json_from(spec, PRESETS)
}

/// Reads a preset name from `presets` or a JSON file into a JSON value.
pub fn load_json_from(spec: &str, presets: &[(&str, &str)]) -> Result<Value> {
    if let Some((_, text)) = presets.iter().find(|(name, _)| *name == spec) {
        return serde_json::from_str(text).with_context(|| format!("built-in preset `{spec}`"));
    }
    let path = Path::new(spec);
    if !path.exists() {
        let names: Vec<_> = presets.iter().map(|(n, _)| *n).collect();
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

/// The leaves of a JSON object as `key.path=value` overrides (so a patch file gets the same
/// unknown-key checks as `--set`).
pub fn patch_to_sets(patch: &Value) -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v.as_object() {
            Some(obj) if !obj.is_empty() => {
                for (k, child) in obj {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(child, &key, out);
                }
            }
            _ => out.push(format!("{prefix}={v}")),
        }
    }
    let mut out = Vec::new();
    walk(patch, "", &mut out);
    out
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
        let a = &m.attention;
        ensure!(
            a.pairs_per_level > 0 && a.window > 0 && a.small_window > 0 && a.head_dim > 0,
            "model.attention.pairs_per_level, window, small_window and head_dim must be > 0"
        );
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
            t.adam_eps > 0.0 && t.adam_eps.is_finite(),
            "train.adam_eps must be a finite number > 0, got {}",
            t.adam_eps
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
