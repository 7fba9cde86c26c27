//! Building blocks shared by encoder and decoder: GroupNorm choice, ResBlock, resampling.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{AvgPoolOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use crate::kernels::{self, avg_pool2d, conv2d, silu};

/// GroupNorm with the largest group count `<= max_groups` that divides `channels`.
pub fn group_norm(channels: usize, max_groups: usize, eps: f64, device: &Device) -> GroupNorm {
    let groups = (1..=max_groups.min(channels))
        .rev()
        .find(|g| channels.is_multiple_of(*g))
        .unwrap_or(1);
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// `k x k` convolution with "same" padding.
pub fn conv(cin: usize, cout: usize, k: usize, bias: bool, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .with_bias(bias)
        .init(device)
}

/// GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus a 1x1 shortcut when channels change.
#[derive(Module, Debug)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResBlock {
    pub fn new(cin: usize, cout: usize, groups: usize, eps: f64, device: &Device) -> Self {
        Self {
            norm1: group_norm(cin, groups, eps, device),
            conv1: conv(cin, cout, 3, false, device),
            norm2: group_norm(cout, groups, eps, device),
            conv2: conv(cout, cout, 3, false, device),
            shortcut: (cin != cout).then(|| conv(cin, cout, 1, false, device)),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = conv2d(
            &self.conv1,
            silu(kernels::group_norm(&self.norm1, x.clone())),
        );
        let h = conv2d(&self.conv2, silu(kernels::group_norm(&self.norm2, h)));
        let skip = match &self.shortcut {
            Some(c) => conv2d(c, x),
            None => x,
        };
        h + skip
    }
}

/// 2x2 average-pool downsampling.
pub fn downsample(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(x, AvgPoolOptions::new([2, 2]))
}

/// Nearest-neighbour 2x upsampling.
pub fn upsample(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([2 * h, 2 * w]),
    )
}
