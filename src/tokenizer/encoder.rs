//! Conv encoder (method.md): conv3x3 -> per level ResBlocks (+ 2x2 avg-pool except last)
//! -> 2 ResBlocks -> GN -> SiLU -> conv1x1 to the code dimension.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use super::blocks::{ResBlock, conv, downsample, group_norm};
use super::config::TokenizerModelConfig;
use crate::kernels::{self, conv2d, silu};

#[derive(Module, Debug)]
pub struct EncoderLevel {
    blocks: Vec<ResBlock>,
}

#[derive(Module, Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    levels: Vec<EncoderLevel>,
    mid: Vec<ResBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn new(c: &TokenizerModelConfig, device: &Device) -> Self {
        let (g, eps) = (c.norm_groups, c.norm_eps);
        let mut cin = c.base_channels;
        let mut levels = Vec::new();
        for &m in &c.channel_mult {
            let cout = c.base_channels * m;
            let mut blocks = Vec::new();
            for _ in 0..c.num_res_blocks {
                blocks.push(ResBlock::new(cin, cout, g, eps, device));
                cin = cout;
            }
            levels.push(EncoderLevel { blocks });
        }
        Self {
            conv_in: conv(3, c.base_channels, 3, false, device),
            levels,
            mid: (0..2)
                .map(|_| ResBlock::new(cin, cin, g, eps, device))
                .collect(),
            norm_out: group_norm(cin, g, eps, device),
            conv_out: conv(cin, c.code_dim, 1, true, device),
        }
    }

    /// `[B, 3, H, W]` in [-1, 1] -> `[B, code_dim, H/f, W/f]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = conv2d(&self.conv_in, x);
        let last = self.levels.len() - 1;
        for (i, level) in self.levels.iter().enumerate() {
            for b in &level.blocks {
                h = b.forward(h);
            }
            if i < last {
                h = downsample(h);
            }
        }
        for b in &self.mid {
            h = b.forward(h);
        }
        conv2d(&self.conv_out, silu(kernels::group_norm(&self.norm_out, h)))
    }
}
