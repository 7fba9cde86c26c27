//! Frozen VGG-16 in torchvision's layout: `features` (13 conv3x3 + ReLU, 5 max-pools),
//! `AdaptiveAvgPool2d(7x7)`, `classifier` (3 linear layers; eval mode, no dropout).
//!
//! The weights are plain tensors, not module parameters: they take no gradients, are never
//! updated and are not saved with our checkpoints, while gradients flow to the input.

use anyhow::Result;
use burn::tensor::activation::relu;
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};
use std::collections::BTreeMap;

use super::weights::WeightFile;
use crate::kernels::{FrozenConv2d, max_pool2d};

/// Output channels of the 13 convs; `None` marks a max-pool.
const LAYOUT: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

/// torchvision `features` index of each conv (ReLU follows at +1, pools sit at 4, 9, 16, 23, 30).
pub const CONV_INDICES: [usize; 13] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];

/// The taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision indices 3, 8, 15, 22, 29).
pub const TAP_NAMES: [&str; 5] = ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"];
/// Index into the 13 convs after which each tap is taken.
const TAP_AFTER_CONV: [usize; 5] = [1, 3, 6, 9, 12];
/// Channels of each tap.
pub const TAP_CHANNELS: [usize; 5] = [64, 128, 256, 512, 512];

/// ImageNet statistics.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Clone)]
struct Linear {
    weight: Tensor<2>, // [out, in]
    bias: Tensor<1>,
}

impl Linear {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let out = self.bias.dims()[0];
        x.matmul(self.weight.clone().transpose()) + self.bias.clone().reshape([1, out])
    }
}

/// What one forward returns.
pub struct VggOut {
    /// Taps up to the deepest one requested (index = position in [`TAP_NAMES`]).
    pub taps: Vec<Tensor<4>>,
    /// 1000-class logits, when requested.
    pub logits: Option<Tensor<2>>,
}

/// VGG-16's convolutions: 3x3, stride 1, padding 1.
fn same_3x3() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], 1)
}

/// Frozen VGG-16.
#[derive(Clone)]
pub struct Vgg16 {
    /// The 13 convolutions (3x3, padding 1), frozen: their input gradients use their
    /// transposed and flipped weights (see `FrozenConv2d`).
    convs: Vec<FrozenConv2d>,
    classifier: Option<[Linear; 3]>,
    /// LPIPS v0.1 linear heads `(1, C, 1, 1)`, when the file has them.
    pub lpips_heads: Option<Vec<Tensor<4>>>,
    mean: Tensor<4>,
    std: Tensor<4>,
}

/// The LPIPS v0.1 heads `lpips.lin0..4.weight` of a weights file, when it has them.
pub fn load_lpips_heads(file: &WeightFile, device: &Device) -> Result<Option<Vec<Tensor<4>>>> {
    if !file.contains("lpips.lin0.weight") {
        return Ok(None);
    }
    let heads = TAP_CHANNELS
        .iter()
        .enumerate()
        .map(|(i, c)| file.get(&format!("lpips.lin{i}.weight"), [1, *c, 1, 1], device))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(heads))
}

/// Random VGG-16 weights in torchvision's layout (with the classifier when `classifier`) and
/// LPIPS heads, for timing without weight files.
pub fn random_weights(classifier: bool) -> WeightFile {
    let mut tensors = BTreeMap::new();
    if classifier {
        let dims = [(0, 512 * 7 * 7, 4096), (3, 4096, 4096), (6, 4096, 1000)];
        for (i, din, dout) in dims {
            let key = format!("classifier.{i}.weight");
            tensors.insert(key.clone(), WeightFile::random(&key, &[dout, din]));
            tensors.insert(
                format!("classifier.{i}.bias"),
                TensorData::new(vec![0f32; dout], [dout]),
            );
        }
    }
    for (i, c) in TAP_CHANNELS.iter().enumerate() {
        tensors.insert(
            format!("lpips.lin{i}.weight"),
            TensorData::new(vec![0.1f32; *c], [1, *c, 1, 1]),
        );
    }
    WeightFile::synthetic("random VGG-16 weights (timing only)", tensors)
}

impl Vgg16 {
    /// Loads `features.*`, and `classifier.*` / `lpips.lin*` when present (LPIPS heads from a
    /// separate file: [`load_lpips_heads`] into [`Vgg16::lpips_heads`]).
    pub fn load(file: &WeightFile, device: &Device) -> Result<Self> {
        let mut convs = Vec::new();
        let mut cin = 3;
        for (k, cout) in LAYOUT.iter().flatten().enumerate() {
            let i = CONV_INDICES[k];
            let w = file.get(&format!("features.{i}.weight"), [*cout, cin, 3, 3], device)?;
            let b = file.get(&format!("features.{i}.bias"), [*cout], device)?;
            convs.push(FrozenConv2d::new(w, Some(b), same_3x3()));
            cin = *cout;
        }
        // Classifier sizes are read from the file (torchvision: 25088 -> 4096 -> 4096 -> 1000).
        let classifier = if file.contains("classifier.0.weight") {
            let hidden1 = file.dim("classifier.0.weight", 0)?;
            let hidden2 = file.dim("classifier.3.weight", 0)?;
            let classes = file.dim("classifier.6.weight", 0)?;
            let layer = |idx: usize, d_in: usize, d_out: usize| -> Result<Linear> {
                Ok(Linear {
                    weight: file.get(&format!("classifier.{idx}.weight"), [d_out, d_in], device)?,
                    bias: file.get(&format!("classifier.{idx}.bias"), [d_out], device)?,
                })
            };
            Some([
                layer(0, 512 * 7 * 7, hidden1)?,
                layer(3, hidden1, hidden2)?,
                layer(6, hidden2, classes)?,
            ])
        } else {
            None
        };
        Ok(Self {
            convs,
            classifier,
            lpips_heads: load_lpips_heads(file, device)?,
            mean: Tensor::<1>::from_floats(MEAN, device).reshape([1, 3, 1, 1]),
            std: Tensor::<1>::from_floats(STD, device).reshape([1, 3, 1, 1]),
        })
    }

    /// The same network with its weights on `device` (for a data-parallel replica).
    pub fn to_device(&self, device: &Device) -> Self {
        let linear = |l: &Linear| Linear {
            weight: l.weight.clone().to_device(device),
            bias: l.bias.clone().to_device(device),
        };
        Self {
            convs: self.convs.iter().map(|c| c.to_device(device)).collect(),
            classifier: self
                .classifier
                .as_ref()
                .map(|[a, b, c]| [linear(a), linear(b), linear(c)]),
            lpips_heads: self
                .lpips_heads
                .as_ref()
                .map(|heads| heads.iter().map(|h| h.clone().to_device(device)).collect()),
            mean: self.mean.clone().to_device(device),
            std: self.std.clone().to_device(device),
        }
    }

    pub fn has_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    /// `[-1, 1]` images -> ImageNet-normalised input.
    pub fn normalize(&self, x: Tensor<4>) -> Tensor<4> {
        ((x + 1.0) * 0.5 - self.mean.clone()) / self.std.clone()
    }

    /// Runs `features` on already-normalised input up to tap `deepest` (or to the end when
    /// `logits` is set) and the classifier when `logits` is set.
    pub fn forward_normalized(&self, x: Tensor<4>, deepest: usize, logits: bool) -> VggOut {
        assert!(
            !logits || self.classifier.is_some(),
            "logits requested from weights without a classifier"
        );
        let last_conv = if logits { 12 } else { TAP_AFTER_CONV[deepest] };
        let mut taps = Vec::new();
        let mut h = x;
        let mut conv_k = 0;
        for layer in LAYOUT {
            match layer {
                Some(_) => {
                    h = relu(self.convs[conv_k].forward(h));
                    if TAP_AFTER_CONV.contains(&conv_k) && taps.len() <= deepest {
                        taps.push(h.clone());
                    }
                    if conv_k == last_conv && !logits {
                        break;
                    }
                    conv_k += 1;
                }
                None => h = max_pool2d(h, MaxPoolOptions::new([2, 2])),
            }
        }
        let logits = logits.then(|| {
            let [a, b, c] = self.classifier.as_ref().expect("checked above");
            let pooled = adaptive_avg_pool2d(h, [7, 7]);
            let n = pooled.dims()[0];
            let flat = pooled.reshape([n, 512 * 49]);
            c.forward(relu(b.forward(relu(a.forward(flat)))))
        });
        VggOut { taps, logits }
    }

    /// Forward from `[-1, 1]` images.
    pub fn forward(&self, x: Tensor<4>, deepest: usize, logits: bool) -> VggOut {
        self.forward_normalized(self.normalize(x), deepest, logits)
    }
}
