//! Regional and dilated window attention (HiT, Zhao et al. 2021) for the phase-2 decoder
//! (method.md, "Phase 2").
//!
//! A feature map `[B, C, H, W]` is cut into a grid of `bh x bw` windows. *Regional* attention
//! lets the tokens inside each window attend to each other; *dilated* attention lets the tokens
//! at the same in-window offset attend to each other across all windows (a stride-`b` grid).
//! Both groupings are a reshape to `[B, C, nh, bh, nw, bw]` and a permute on the device.
//! A block is `x + proj(MHSA(LayerNorm(x)))` with no MLP; `proj` starts at zero, so a new block
//! is exactly the identity.

use burn::module::Module;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::kernels;

/// Largest divisor of `map` that is `<= b`: the window side along one axis. A map smaller
/// than the window is one whole window; a side that `b` does not divide uses a smaller window.
pub fn window_side(map: usize, b: usize) -> usize {
    (1..=b.min(map).max(1))
        .rev()
        .find(|d| map.is_multiple_of(*d))
        .unwrap_or(1)
}

/// Axis order of the 6-d view `[B, C, nh, bh, nw, bw]` that puts one attention group's
/// tokens together: regional `[B, nh, nw, bh, bw, C]`, dilated `[B, bh, bw, nh, nw, C]`.
fn group_axes(dilated: bool) -> [isize; 6] {
    if dilated {
        [0, 3, 5, 2, 4, 1]
    } else {
        [0, 2, 4, 3, 5, 1]
    }
}

fn inverse(p: [isize; 6]) -> [isize; 6] {
    let mut q = [0isize; 6];
    for (i, &a) in p.iter().enumerate() {
        q[a as usize] = i as isize;
    }
    q
}

/// `[B, C, H, W]` -> `[groups, tokens, C]` for windows `win = [bh, bw]` (which must divide H, W).
pub fn partition(x: Tensor<4>, win: [usize; 2], dilated: bool) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    let [bh, bw] = win;
    let (nh, nw) = (h / bh, w / bw);
    let (groups, tokens) = if dilated {
        (b * bh * bw, nh * nw)
    } else {
        (b * nh * nw, bh * bw)
    };
    x.reshape([b, c, nh, bh, nw, bw])
        .permute(group_axes(dilated))
        .reshape([groups, tokens, c])
}

/// Inverse of [`partition`]: `[groups, tokens, C]` -> `[B, C, H, W]`.
pub fn merge(t: Tensor<3>, dims: [usize; 4], win: [usize; 2], dilated: bool) -> Tensor<4> {
    let [b, c, h, w] = dims;
    let [bh, bw] = win;
    let (nh, nw) = (h / bh, w / bw);
    let grouped = if dilated {
        [b, bh, bw, nh, nw, c]
    } else {
        [b, nh, nw, bh, bw, c]
    };
    t.reshape(grouped)
        .permute(inverse(group_axes(dilated)))
        .reshape([b, c, h, w])
}

/// One regional or dilated multi-head self-attention block with a residual connection.
#[derive(Module, Debug)]
pub struct WindowAttention {
    norm: LayerNorm,
    qkv: Linear,
    proj: Linear,
    heads: usize,
    window: usize,
    dilated: bool,
}

impl WindowAttention {
    /// A block on `channels` channels with configured window side `window`; `proj` is zero.
    pub fn new(
        channels: usize,
        head_dim: usize,
        window: usize,
        dilated: bool,
        device: &Device,
    ) -> Self {
        let max_heads = (channels / head_dim).max(1);
        let heads = (1..=max_heads)
            .rev()
            .find(|h| channels.is_multiple_of(*h))
            .unwrap_or(1);
        Self {
            norm: LayerNormConfig::new(channels)
                .with_epsilon(kernels::norm::EPSILON)
                .init(device),
            qkv: LinearConfig::new(channels, 3 * channels).init(device),
            proj: LinearConfig::new(channels, channels)
                .with_initializer(Initializer::Zeros)
                .init(device),
            heads,
            window,
            dilated,
        }
    }

    /// Attention heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// `[B, C, H, W]` -> same shape.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let dims = x.dims();
        let [_, _, h, w] = dims;
        let win = [window_side(h, self.window), window_side(w, self.window)];
        let t = kernels::layer_norm(
            &self.norm,
            partition(x.clone(), win, self.dilated),
            kernels::norm::EPSILON,
        );
        // [G, N, 3C] (per token [3, heads, dh]) -> [G, N, C]; one differentiable op on the
        // CPU device (src/kernels/attention.rs).
        let out = kernels::self_attention(kernels::linear(&self.qkv, t), self.heads, false);
        let out = kernels::linear(&self.proj, out);
        x + merge(out, dims, win, self.dilated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn values(x: Tensor<3>) -> Vec<f32> {
        x.into_data().try_to_vec().unwrap()
    }

    /// Direct definition: group index and token index of pixel (y, x), per kind.
    fn reference(
        data: &[f32],
        [b, c, h, w]: [usize; 4],
        [bh, bw]: [usize; 2],
        dilated: bool,
    ) -> Vec<f32> {
        let (nh, nw) = (h / bh, w / bw);
        let (groups, tokens) = if dilated {
            (b * bh * bw, nh * nw)
        } else {
            (b * nh * nw, bh * bw)
        };
        let mut out = vec![f32::NAN; groups * tokens * c];
        for bi in 0..b {
            for y in 0..h {
                for xx in 0..w {
                    let (wy, oy, wx, ox) = (y / bh, y % bh, xx / bw, xx % bw);
                    let (g, t) = if dilated {
                        (bi * bh * bw + oy * bw + ox, wy * nw + wx)
                    } else {
                        (bi * nh * nw + wy * nw + wx, oy * bw + ox)
                    };
                    for ci in 0..c {
                        out[(g * tokens + t) * c + ci] = data[((bi * c + ci) * h + y) * w + xx];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn window_sides() {
        assert_eq!(window_side(16, 8), 8);
        assert_eq!(window_side(4, 8), 4); // smaller map: the whole map
        assert_eq!(window_side(12, 8), 6); // 8 does not divide 12
        assert_eq!(window_side(7, 4), 1);
        assert_eq!(window_side(1, 8), 1);
    }

    #[test]
    fn partition_matches_direct_reference_and_merge_inverts() {
        let device = Device::flex();
        // Square, non-square, map smaller than the window on one axis, odd sides.
        for (dims, b) in [
            ([2, 3, 8, 8], 4),
            ([1, 2, 4, 12], 4),
            ([2, 5, 6, 4], 8),
            ([1, 3, 2, 2], 8),
            ([1, 4, 12, 9], 4),
        ] {
            let n: usize = dims.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let x = Tensor::<4>::from_data(TensorData::new(data.clone(), dims), &device);
            let win = [window_side(dims[2], b), window_side(dims[3], b)];
            for dilated in [false, true] {
                let p = partition(x.clone(), win, dilated);
                assert_eq!(
                    values(p.clone()),
                    reference(&data, dims, win, dilated),
                    "{dims:?} b={b} dilated={dilated}"
                );
                let back: Vec<f32> = merge(p, dims, win, dilated)
                    .into_data()
                    .try_to_vec()
                    .unwrap();
                assert_eq!(back, data);
            }
        }
    }

    #[test]
    fn new_block_is_identity_and_attention_stays_in_its_group() {
        let device = Device::flex();
        let x = Tensor::<4>::random(
            [2, 8, 8, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        for dilated in [false, true] {
            let block = WindowAttention::new(8, 4, 4, dilated, &device);
            assert_eq!(block.heads(), 2);
            let y = block.forward(x.clone());
            assert_eq!(
                y.into_data().try_to_vec::<f32>().unwrap(),
                x.clone().into_data().try_to_vec::<f32>().unwrap(),
                "zero-initialised projection must give the identity"
            );
            // With a non-zero projection, changing one pixel changes exactly the pixels of its
            // group: its 4x4 window (regional) or its stride-4 lattice (dilated).
            let block = WindowAttention {
                proj: LinearConfig::new(8, 8).init(&device),
                ..block
            };
            let base = block.forward(x.clone());
            let poked = x.clone().slice_assign(
                [0..1, 0..8, 1..2, 2..3],
                Tensor::ones([1, 8, 1, 1], &device) * 5.0,
            );
            let diff: Vec<f32> = (block.forward(poked) - base)
                .abs()
                .sum_dim(1)
                .narrow(0, 0, 1)
                .into_data()
                .try_to_vec()
                .unwrap();
            for y in 0..8 {
                for xx in 0..8 {
                    let same_group = if dilated {
                        y % 4 == 1 && xx % 4 == 2
                    } else {
                        y / 4 == 0 && xx / 4 == 0
                    };
                    assert_eq!(
                        diff[y * 8 + xx] > 0.0,
                        same_group,
                        "pixel ({y},{xx}) dilated={dilated}"
                    );
                }
            }
        }
    }
}
