//! StyleGAN2-style residual discriminator [ours; method.md "Adversarial part"]:
//! 1x1 from-RGB, downsampling residual blocks with LeakyReLU(0.2) down to `min_resolution`,
//! optional minibatch standard deviation, conv3x3, then two linear layers to one logit.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Tensor};

use super::blocks::{conv, downsample};
use crate::config::DiscConfig;

const SLOPE: f64 = 0.2;

#[derive(Module, Debug)]
pub struct DiscBlock {
    conv1: Conv2d,
    conv2: Conv2d,
    skip: Conv2d,
}

impl DiscBlock {
    fn new(cin: usize, cout: usize, device: &Device) -> Self {
        Self {
            conv1: conv(cin, cin, 3, true, device),
            conv2: conv(cin, cout, 3, true, device),
            skip: conv(cin, cout, 1, false, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let skip = self.skip.forward(downsample(x.clone()));
        let h = leaky_relu(self.conv1.forward(x), SLOPE);
        let h = downsample(leaky_relu(self.conv2.forward(h), SLOPE));
        (h + skip) * std::f64::consts::FRAC_1_SQRT_2
    }
}

#[derive(Module, Debug)]
pub struct Discriminator {
    from_rgb: Conv2d,
    blocks: Vec<DiscBlock>,
    conv_out: Conv2d,
    fc: Linear,
    head: Linear,
    minibatch_std: bool,
}

impl Discriminator {
    pub fn new(c: &DiscConfig, resolution: usize, device: &Device) -> Self {
        let mut ch = c.base_channels.min(c.max_channels);
        let mut res = resolution;
        let mut blocks = Vec::new();
        while res > c.min_resolution && res.is_multiple_of(2) {
            let cout = (ch * 2).min(c.max_channels);
            blocks.push(DiscBlock::new(ch, cout, device));
            ch = cout;
            res /= 2;
        }
        let extra = usize::from(c.minibatch_std);
        Self {
            from_rgb: conv(3, c.base_channels.min(c.max_channels), 1, true, device),
            blocks,
            conv_out: conv(ch + extra, ch, 3, true, device),
            fc: LinearConfig::new(ch * res * res, ch).init(device),
            head: LinearConfig::new(ch, 1).init(device),
            minibatch_std: c.minibatch_std,
        }
    }

    /// Images `[B, 3, H, W]` -> logits `[B, 1]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h = leaky_relu(self.from_rgb.forward(x), SLOPE);
        for b in &self.blocks {
            h = b.forward(h);
        }
        if self.minibatch_std {
            let [b, _, hh, ww] = h.dims();
            let centred = h.clone() - h.clone().mean_dim(0);
            let std = (centred.powi_scalar(2).mean_dim(0) + 1e-8).sqrt().mean(); // scalar
            let feat = std.reshape([1, 1, 1, 1]).expand([b, 1, hh, ww]);
            h = Tensor::cat(vec![h, feat], 1);
        }
        let h = leaky_relu(self.conv_out.forward(h), SLOPE);
        let [b, c, hh, ww] = h.dims();
        let h = leaky_relu(self.fc.forward(h.reshape([b, c * hh * ww])), SLOPE);
        self.head.forward(h)
    }
}
