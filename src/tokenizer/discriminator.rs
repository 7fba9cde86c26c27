//! StyleGAN2-style residual discriminator [ours; method.md "Adversarial part"]:
//! 1x1 from-RGB, downsampling residual blocks with LeakyReLU(0.2) down to `min_resolution`,
//! optional minibatch standard deviation, conv3x3, then two linear layers to one logit.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Tensor};

use super::blocks::{conv, downsample};
use super::config::DiscConfig;
use crate::kernels::{conv_options, conv2d, conv2d_with};

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
        let skip = conv2d(&self.skip, downsample(x.clone()));
        let h = leaky_relu(conv2d(&self.conv1, x), SLOPE);
        let h = downsample(leaky_relu(conv2d(&self.conv2, h), SLOPE));
        (h + skip) * std::f64::consts::FRAC_1_SQRT_2
    }

    fn forward_jvp(&self, x: Dual) -> Dual {
        let skip = x.clone().map(downsample).conv(&self.skip);
        let h = x.conv(&self.conv1).leaky();
        let h = h.conv(&self.conv2).leaky().map(downsample);
        h.add(skip).map(|v| v * std::f64::consts::FRAC_1_SQRT_2)
    }
}

/// A value and a tangent (a directional derivative) carried through the network together:
/// forward-mode differentiation, for [`Discriminator::forward_jvp`].
#[derive(Clone)]
struct Dual {
    v: Tensor<4>,
    t: Tensor<4>,
}

impl Dual {
    /// A linear map applied to both parts.
    fn map(self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Self {
        Self {
            v: f(self.v),
            t: f(self.t),
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            v: self.v + other.v,
            t: self.t + other.t,
        }
    }

    /// The convolution on the value; its linear part (no bias) on the tangent.
    fn conv(self, c: &Conv2d) -> Self {
        let options = conv_options(c).expect("the discriminator's convs pad explicitly");
        let t = conv2d_with(self.t, c.weight.val(), None, options);
        Self {
            v: conv2d(c, self.v),
            t,
        }
    }

    /// LeakyReLU on the value; its slope there times the tangent.
    fn leaky(self) -> Self {
        Self {
            t: self.t * leaky_slope(&self.v),
            v: leaky_relu(self.v, SLOPE),
        }
    }
}

/// The LeakyReLU slope at each pre-activation: 1 where it is > 0, else 0.2 (as autograd takes it).
fn leaky_slope<const D: usize>(pre: &Tensor<D>) -> Tensor<D> {
    pre.ones_like()
        .mask_fill(pre.clone().lower_equal_elem(0.0), SLOPE)
        .detach()
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

    /// `D(x)` and the directional derivative `J_x D(x) . t` (both `[B, 1]`), exactly, by
    /// forward-mode differentiation: every layer maps the tangent by its derivative at `x`
    /// (convs and linears without bias, LeakyReLU by its slope, average pools as they are,
    /// minibatch stddev by its derivative). Both outputs are differentiable in the weights.
    pub fn forward_jvp(&self, x: Tensor<4>, t: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let mut h = Dual { v: x, t }.conv(&self.from_rgb).leaky();
        for b in &self.blocks {
            h = b.forward_jvp(h);
        }
        if self.minibatch_std {
            let [b, _, hh, ww] = h.v.dims();
            let centred = h.v.clone() - h.v.clone().mean_dim(0);
            let centred_t = h.t.clone() - h.t.clone().mean_dim(0);
            let std = (centred.clone().powi_scalar(2).mean_dim(0) + 1e-8).sqrt();
            // d std = mean_b(centred * d centred) / std.
            let std_t = (centred * centred_t).mean_dim(0) / std.clone();
            let feat = |s: Tensor<4>| s.mean().reshape([1, 1, 1, 1]).expand([b, 1, hh, ww]);
            h = Dual {
                v: Tensor::cat(vec![h.v, feat(std)], 1),
                t: Tensor::cat(vec![h.t, feat(std_t)], 1),
            };
        }
        let h = h.conv(&self.conv_out).leaky();
        let [b, c, hh, ww] = h.v.dims();
        let flat = |x: Tensor<4>| x.reshape([b, c * hh * ww]);
        let (v, t) = (flat(h.v), flat(h.t));
        let linear = |l: &Linear, t: Tensor<2>| t.matmul(l.weight.val());
        let pre = self.fc.forward(v);
        let t = linear(&self.fc, t) * leaky_slope(&pre);
        let v = leaky_relu(pre, SLOPE);
        (self.head.forward(v), linear(&self.head, t))
    }

    /// Images `[B, 3, H, W]` -> logits `[B, 1]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h = leaky_relu(conv2d(&self.from_rgb, x), SLOPE);
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
        let h = leaky_relu(conv2d(&self.conv_out, h), SLOPE);
        let [b, c, hh, ww] = h.dims();
        let h = leaky_relu(self.fc.forward(h.reshape([b, c * hh * ww])), SLOPE);
        self.head.forward(h)
    }
}
