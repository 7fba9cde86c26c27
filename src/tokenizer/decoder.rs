//! Conv decoder (method.md): conv3x3 -> 2 ResBlocks -> per level (top to bottom) ResBlocks
//! (+ nearest 2x upsample and conv3x3 except the last) -> GN -> SiLU -> conv3x3 to RGB.
//!
//! Phase 2 enhances it with (regional, dilated) attention pairs after each level's ResBlocks
//! ([`Decoder::enhance`]); phase 1 has none.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use super::attention::WindowAttention;
use super::blocks::{ResBlock, conv, group_norm, upsample};
use super::config::TokenizerModelConfig;
use crate::kernels::{self, conv2d, silu};

#[derive(Module, Debug)]
pub struct DecoderLevel {
    blocks: Vec<ResBlock>,
    /// Phase-2 attention blocks (regional, dilated, regional, ...); empty in phase 1.
    attn: Vec<WindowAttention>,
    upsample: Option<Conv2d>,
}

/// The attention blocks of one decoder level: `pairs_per_level` (regional, dilated) pairs.
fn attention_blocks(
    c: &TokenizerModelConfig,
    channels: usize,
    map: usize,
    device: &Device,
) -> Vec<WindowAttention> {
    let a = &c.attention;
    let window = a.window_for(map);
    (0..2 * a.pairs_per_level)
        .map(|i| WindowAttention::new(channels, a.head_dim, window, i % 2 == 1, device))
        .collect()
}

/// Channels and map side of each decoder level, top (coarsest) first.
fn level_shapes(c: &TokenizerModelConfig) -> Vec<(usize, usize)> {
    c.channel_mult
        .iter()
        .rev()
        .enumerate()
        .map(|(i, m)| (c.base_channels * m, c.latent_size() << i))
        .collect()
}

#[derive(Module, Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid: Vec<ResBlock>,
    levels: Vec<DecoderLevel>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub fn new(c: &TokenizerModelConfig, device: &Device) -> Self {
        let (g, eps) = (c.norm_groups, c.norm_eps);
        let top = c.base_channels * c.channel_mult.last().expect("validated non-empty");
        let mut cin = top;
        let mut levels = Vec::new();
        let shapes = level_shapes(c);
        for (i, &(cout, map)) in shapes.iter().enumerate() {
            let mut blocks = Vec::new();
            for _ in 0..c.num_res_blocks {
                blocks.push(ResBlock::new(cin, cout, g, eps, device));
                cin = cout;
            }
            let attn = if c.attention.enabled {
                attention_blocks(c, cout, map, device)
            } else {
                Vec::new()
            };
            let upsample = (i + 1 < shapes.len()).then(|| conv(cin, cin, 3, true, device));
            levels.push(DecoderLevel {
                blocks,
                attn,
                upsample,
            });
        }
        Self {
            conv_in: conv(c.code_dim, top, 3, true, device),
            mid: (0..2)
                .map(|_| ResBlock::new(top, top, g, eps, device))
                .collect(),
            levels,
            norm_out: group_norm(cin, g, eps, device),
            conv_out: conv(cin, 3, 3, true, device),
        }
    }

    /// Adds phase-2 attention blocks (identity at start) to a decoder without them; every
    /// other weight is kept. `c.attention` gives their layout (`enabled` is not consulted).
    pub fn enhance(mut self, c: &TokenizerModelConfig, device: &Device) -> Self {
        for (level, (channels, map)) in self.levels.iter_mut().zip(level_shapes(c)) {
            assert!(
                level.attn.is_empty(),
                "decoder already has attention blocks"
            );
            level.attn = attention_blocks(c, channels, map, device);
        }
        self
    }

    /// Parameters of the attention blocks (0 in phase 1).
    pub fn attention_params(&self) -> usize {
        self.levels
            .iter()
            .flat_map(|l| &l.attn)
            .map(|a| a.num_params())
            .sum()
    }

    /// `[B, code_dim, h, w]` -> `[B, 3, h*f, w*f]` (unbounded; ~[-1, 1]).
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut h = conv2d(&self.conv_in, z);
        for b in &self.mid {
            h = b.forward(h);
        }
        for level in &self.levels {
            for b in &level.blocks {
                h = b.forward(h);
            }
            for a in &level.attn {
                h = a.forward(h);
            }
            if let Some(c) = &level.upsample {
                h = conv2d(c, upsample(h));
            }
        }
        conv2d(&self.conv_out, silu(kernels::group_norm(&self.norm_out, h)))
    }
}
