//! Tokenizer and discriminator sizes (method.md, "Tokenizer", "Phase 2", "Adversarial part").

use serde::{Deserialize, Serialize};

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
