//! Conv decoder (method.md): conv3x3 -> 2 ResBlocks -> per level (top to bottom) ResBlocks
//! (+ nearest 2x upsample and conv3x3 except the last) -> GN -> SiLU -> conv3x3 to RGB.

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::blocks::{ResBlock, conv, group_norm, upsample};
use crate::config::TokenizerModelConfig;

#[derive(Module, Debug)]
pub struct DecoderLevel {
    blocks: Vec<ResBlock>,
    upsample: Option<Conv2d>,
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
        for (i, &m) in c.channel_mult.iter().enumerate().rev() {
            let cout = c.base_channels * m;
            let mut blocks = Vec::new();
            for _ in 0..c.num_res_blocks {
                blocks.push(ResBlock::new(cin, cout, g, eps, device));
                cin = cout;
            }
            let upsample = (i > 0).then(|| conv(cin, cin, 3, true, device));
            levels.push(DecoderLevel { blocks, upsample });
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

    /// `[B, code_dim, h, w]` -> `[B, 3, h*f, w*f]` (unbounded; ~[-1, 1]).
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut h = self.conv_in.forward(z);
        for b in &self.mid {
            h = b.forward(h);
        }
        for level in &self.levels {
            for b in &level.blocks {
                h = b.forward(h);
            }
            if let Some(c) = &level.upsample {
                h = c.forward(upsample(h));
            }
        }
        self.conv_out.forward(silu(self.norm_out.forward(h)))
    }
}
