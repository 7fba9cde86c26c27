//! 2D convolution on the CPU device, forward and both gradients: 3x3 stride-1 convolutions
//! (most of the models') on direct kernels without a patch matrix (`conv/direct.rs` on maps at
//! least 16 wide, `conv/channels_last.rs` on smaller maps of layers up to 128 channels), the
//! others as GEMMs over im2col patches of the NCHW input, described here.
//!
//! burn-flex's forward converts the input to NHWC and the weight to `[co, kh, kw, ci]` on one
//! thread at every call, builds patches per tile of 512 output pixels and scatters the GEMM's
//! result back to NCHW; its input gradient is a transposed convolution and its weight gradient
//! the generic one (burn-backend's `conv2d_weight_backward`: a convolution with the *output*
//! map as kernel, a GEMM whose inner size is the kernel's area, 9 for 3x3). Here, per batch
//! element and tile of output rows, with `patches[(ci, kh, kw), p]` built straight from NCHW:
//! - forward: `Y_b[co, p] = W[co, (ci, kh, kw)] . patches` (W's own layout, Y's own layout);
//! - input gradient: `dpatches = W^T . G_b`, each entry added back onto the pixel it was read
//!   from (col2im, one input channel per task);
//! - weight gradient: `dW += G_b . patches^T`, accumulated in place over the batch.
//!
//! Batch elements run in parallel when there are at least as many as threads (serial GEMMs),
//! otherwise in turn with parallel patches and GEMMs.
//!
//! A frozen network's convolutions ([`FrozenConv2d`], VGG-16's) keep their weights transposed
//! and flipped as well: their input gradient on small maps is then the forward convolution of
//! the output gradient with them (no col2im), and no weight gradient is computed.
//!
//! The op enters through burn's backend-extension point: [`ConvKernels`] is implemented for
//! the Flex backend (our kernel) and for `Autodiff<B>` (the backward step that calls it). Other
//! devices (wgpu, CUDA) take burn's `conv2d` unchanged: [`conv2d`] dispatches on the device.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Shape, Slice, Tensor};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::scratch::Scratch;
use super::simd::simd_dispatch;

mod channels_last;
mod direct;
mod winograd;
use super::{f32_slice, gemm_rm, gemm_strided, on_cpu, wrap};
use direct::Isa;

/// Convolution ops the CPU device gets from us (see the module doc).
#[backend_extension(Autodiff, Flex)]
pub trait ConvKernels: Backend {
    /// `conv2d(x, weight)` without bias; its backward runs [`ConvKernels::conv2d_input_grad`]
    /// and [`ConvKernels::conv2d_weight_grad`].
    fn conv2d_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// `conv2d(x, weight) + bias` with ReLU on its first `relu_channels` channels: the layer
    /// of an inference network (batch norm folded into `weight` and `bias`) as one op. The
    /// default composes burn's ops; the CPU device applies bias and ReLU to each tile of the
    /// output as the GEMM leaves it.
    fn conv2d_bias_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu_channels: usize,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let y = Self::conv2d_no_bias(x, weight, options);
        add_bias_relu::<Self>(y, bias, relu_channels)
    }

    /// The gradient of `conv2d(x, weight)` with respect to `x`, given the output's gradient
    /// `grad`. Defaults to burn's generic computation.
    fn conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, grad, options)
    }

    /// `conv2d(x, weight)` for a `weight` that takes no gradient (a frozen network's), with
    /// `flipped` the same weights transposed and flipped (`[c_in, c_out, kh, kw]`, see
    /// [`FrozenConv2d`]); its backward runs [`ConvKernels::conv2d_frozen_input_grad`] only.
    fn conv2d_frozen(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        flipped: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let _ = flipped;
        Self::conv2d_no_bias(x, weight, options)
    }

    /// The input gradient of [`ConvKernels::conv2d_frozen`]. Defaults to
    /// [`ConvKernels::conv2d_input_grad`]; the CPU device computes small maps' as a forward
    /// convolution with `flipped`.
    fn conv2d_frozen_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        flipped: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let _ = flipped;
        Self::conv2d_input_grad(x, weight, grad, options)
    }

    /// The gradient of `conv2d(x, weight)` with respect to `weight`, given the output's
    /// gradient `grad`. Defaults to burn's generic computation.
    fn conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, grad, options)
    }
}

/// `y + bias` (one per channel of `[N, C, H, W]` `y`) with ReLU on the first `relu_channels`
/// channels, in burn's ops.
fn add_bias_relu<B: Backend>(
    y: FloatTensor<B>,
    bias: FloatTensor<B>,
    relu_channels: usize,
) -> FloatTensor<B> {
    let c = bias.shape()[0];
    let y = B::float_add(y, B::float_reshape(bias, Shape::new([1, c, 1, 1])));
    let [n, _, h, w] = y.shape().dims::<4>();
    match relu_channels.min(c) {
        0 => y,
        r if r == c => B::relu(y),
        r => {
            let part = |from: usize, to: usize| {
                let range = [0..n, from..to, 0..h, 0..w].map(Slice::from);
                B::float_slice(y.clone(), &range)
            };
            B::float_cat(vec![B::relu(part(0, r)), part(r, c)], 1)
        }
    }
}

/// Convolution passes computed by our kernels (so a test can tell that the ops were routed to
/// them): forward, input gradient, weight gradient.
static GEMM_FORWARDS: AtomicUsize = AtomicUsize::new(0);
static GEMM_INPUT_GRADS: AtomicUsize = AtomicUsize::new(0);
static GEMM_WEIGHT_GRADS: AtomicUsize = AtomicUsize::new(0);

/// `(x, weight)` as contiguous f32 tensors with the problem's sizes, or `None` where our
/// kernels do not apply (grouped convolutions, other float types): burn's then.
fn problem(
    x: &FlexTensor,
    weight: &FlexTensor,
    out: [usize; 2],
    options: &ConvOptions<2>,
) -> Option<(FlexTensor, FlexTensor, Shape2d)> {
    if options.groups != 1 || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return None;
    }
    let shape = Shape2d::new(x.shape().dims::<4>(), weight.shape().dims::<4>(), out);
    Some((x.to_contiguous(), weight.to_contiguous(), shape))
}

/// [`problem`] for a gradient, given the output's gradient `grad`: `(x, weight, grad)`
/// contiguous with the sizes, or `None` where our kernels do not apply.
fn grad_problem(
    x: &FlexTensor,
    weight: &FlexTensor,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<(FlexTensor, FlexTensor, FlexTensor, Shape2d)> {
    let g = grad.shape().dims::<4>();
    let (x, weight, s) =
        problem(x, weight, [g[2], g[3]], options).filter(|_| grad.dtype() == DType::F32)?;
    Some((x, weight, grad.to_contiguous(), s))
}

/// The output size of a forward convolution, `None` where the kernel does not fit.
fn output_size(
    x: &FlexTensor,
    weight: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<[usize; 2]> {
    let [h, w] = [x.shape()[2], x.shape()[3]];
    let [kh, kw] = [weight.shape()[2], weight.shape()[3]];
    let [oh, ow] = [0, 1].map(|d| {
        let (size, k) = ([h, w][d], [kh, kw][d]);
        let padded = size + options.padding[d].0 + options.padding[d].1;
        let span = options.dilation[d] * (k - 1) + 1;
        padded.checked_sub(span).map(|v| v / options.stride[d] + 1)
    });
    Some([oh?, ow?])
}

/// [`ConvKernels::conv2d_input_grad`] on the CPU device, with the weights transposed and
/// flipped when the caller has them ([`ConvKernels::conv2d_frozen_input_grad`]).
fn input_grad_flex(
    x: FlexTensor,
    weight: FlexTensor,
    flipped: Option<FlexTensor>,
    grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let Some((_, weight, grad, s)) = grad_problem(&x, &weight, &grad, &options) else {
        return Flex::conv2d_x_backward(x, weight, grad, options);
    };
    let flipped = flipped
        .filter(|f| {
            f.dtype() == DType::F32 && f.shape().dims::<4>() == [s.c_in, s.c_out, s.kh, s.kw]
        })
        .map(|f| f.to_contiguous());
    let flipped = flipped.as_ref().map(f32_slice);
    let dx = input_grad_f32(f32_slice(&grad), f32_slice(&weight), flipped, &s, &options);
    GEMM_INPUT_GRADS.fetch_add(1, Ordering::Relaxed);
    wrap(dx, [s.batch, s.c_in, s.h, s.w], DType::F32)
}

impl ConvKernels for Flex {
    fn conv2d_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let (Some([oh, ow]), Some((x, weight, s))) = (
            output_size(&x, &weight, &options),
            problem(&x, &weight, [1, 1], &options),
        ) else {
            return Flex::conv2d(x, weight, None, options);
        };
        let s = Shape2d { oh, ow, ..s };
        let y = forward_f32(
            f32_slice(&x),
            f32_slice(&weight),
            &s,
            &options,
            &Epilogue::NONE,
        );
        GEMM_FORWARDS.fetch_add(1, Ordering::Relaxed);
        wrap(y, [s.batch, s.c_out, oh, ow], DType::F32)
    }

    fn conv2d_bias_relu(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        relu_channels: usize,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let (Some([oh, ow]), Some((x, weight, s)), DType::F32) = (
            output_size(&x, &weight, &options),
            problem(&x, &weight, [1, 1], &options),
            bias.dtype(),
        ) else {
            let y = Flex::conv2d(x, weight, None, options);
            return add_bias_relu::<Flex>(y, bias, relu_channels);
        };
        let s = Shape2d { oh, ow, ..s };
        let bias = bias.to_contiguous();
        assert_eq!(
            bias.shape().num_elements(),
            s.c_out,
            "one bias per output channel"
        );
        let epilogue = Epilogue {
            bias: Some(f32_slice(&bias)),
            relu_channels: relu_channels.min(s.c_out),
        };
        let y = forward_f32(f32_slice(&x), f32_slice(&weight), &s, &options, &epilogue);
        GEMM_FORWARDS.fetch_add(1, Ordering::Relaxed);
        wrap(y, [s.batch, s.c_out, oh, ow], DType::F32)
    }

    fn conv2d_input_grad(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        input_grad_flex(x, weight, None, grad, options)
    }

    fn conv2d_frozen_input_grad(
        x: FlexTensor,
        weight: FlexTensor,
        flipped: FlexTensor,
        grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        input_grad_flex(x, weight, Some(flipped), grad, options)
    }

    fn conv2d_weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let Some((x, _, grad, s)) = grad_problem(&x, &weight, &grad, &options) else {
            return Flex::conv2d_weight_backward(x, weight, grad, options);
        };
        let dw = weight_grad_f32(f32_slice(&x), f32_slice(&grad), &s, &options);
        GEMM_WEIGHT_GRADS.fetch_add(1, Ordering::Relaxed);
        wrap(dw, weight.shape().dims::<4>(), DType::F32)
    }
}

impl<B: ConvKernels, C: CheckpointStrategy> ConvKernels for Autodiff<B, C> {
    fn conv2d_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv2dBackward;

        impl<B: ConvKernels> Backward<B, 2> for Conv2dBackward {
            type State = (NodeId, NodeId, ConvOptions<2>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_w] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, w_state, options) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
                let w: FloatTensor<B> = checkpointer.retrieve_node_output(w_state);
                if let Some(node) = node_x {
                    let gx =
                        B::conv2d_input_grad(x.clone(), w.clone(), grad.clone(), options.clone());
                    grads.register::<B>(node.id, gx);
                }
                if let Some(node) = node_w {
                    grads.register::<B>(node.id, B::conv2d_weight_grad(x, w, grad, options));
                }
            }
        }

        match Conv2dBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let w_state = prep.checkpoint(&weight);
                let out =
                    B::conv2d_no_bias(x.into_primitive(), weight.into_primitive(), options.clone());
                prep.finish((x_state, w_state, options), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_no_bias(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }

    fn conv2d_frozen(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        flipped: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FrozenBackward;

        impl<B: ConvKernels> Backward<B, 1> for FrozenBackward {
            type State = (NodeId, FloatTensor<B>, FloatTensor<B>, ConvOptions<2>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, w, flipped, options) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
                if let Some(node) = node_x {
                    let gx = B::conv2d_frozen_input_grad(x, w, flipped, grad, options);
                    grads.register::<B>(node.id, gx);
                }
            }
        }

        assert!(
            !weight.is_tracked() && !flipped.is_tracked(),
            "conv2d_frozen: the weights must take no gradient"
        );
        let (w, flipped) = (weight.into_primitive(), flipped.into_primitive());
        match FrozenBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let out = B::conv2d_no_bias(x.into_primitive(), w.clone(), options.clone());
                prep.finish((x_state, w, flipped, options), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::conv2d_no_bias(x.into_primitive(), w, options))
            }
        }
    }
}

/// A convolution whose weights take no gradient (a frozen network's, VGG-16 in the perceptual
/// losses): it keeps its weights also transposed and flipped, so that on the CPU device the
/// input gradient of small maps is a forward convolution with them, without laying the
/// weights out again at every call (see `input_grad_f32`). Other devices run burn's conv2d
/// and keep no flipped copy.
#[derive(Clone, Debug)]
pub struct FrozenConv2d {
    weight: Tensor<4>,
    /// `weight` as `[c_in, c_out, kh, kw]`, taps reversed, contiguous; on the CPU device only.
    flipped: Option<Tensor<4>>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
}

impl FrozenConv2d {
    pub fn new(weight: Tensor<4>, bias: Option<Tensor<1>>, options: ConvOptions<2>) -> Self {
        let flipped = Self::flip(&weight);
        Self {
            weight,
            flipped,
            bias,
            options,
        }
    }

    /// `weight` transposed and flipped on the CPU device, materialised (into data and back):
    /// the kernels want it contiguous, and a strided view would be copied at every call.
    fn flip(weight: &Tensor<4>) -> Option<Tensor<4>> {
        let device = weight.device();
        on_cpu(&device).then(|| {
            let view = weight.clone().swap_dims(0, 1).flip([2, 3]);
            Tensor::from_data(view.into_data(), &device)
        })
    }

    /// `conv2d(x, weight) + bias`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let Some(flipped) = self.flipped.clone().filter(|_| on_cpu(&x.device())) else {
            return burn_conv2d(
                x,
                self.weight.clone(),
                self.bias.clone(),
                self.options.clone(),
            );
        };
        let y = Tensor::from_dispatch(<Dispatch as ConvKernels>::conv2d_frozen(
            x.into_dispatch(),
            self.weight.clone().into_dispatch(),
            flipped.into_dispatch(),
            self.options.clone(),
        ));
        match &self.bias {
            Some(b) => {
                let c = b.dims()[0];
                y + b.clone().reshape([1, c, 1, 1])
            }
            None => y,
        }
    }

    /// The same convolution with its tensors on `device`.
    pub fn to_device(&self, device: &Device) -> Self {
        let weight = self.weight.clone().to_device(device);
        Self {
            flipped: Self::flip(&weight),
            weight,
            bias: self.bias.clone().map(|b| b.to_device(device)),
            options: self.options.clone(),
        }
    }
}

/// The options of `conv`'s convolution; `None` for `Same` padding (left to burn's module).
pub fn conv_options(conv: &Conv2d) -> Option<ConvOptions<2>> {
    let (rows, cols) = match conv.padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
        PaddingConfig2d::Same => return None,
    };
    Some(ConvOptions::new_with_padding(
        conv.stride,
        [rows, cols],
        conv.dilation,
        conv.groups,
    ))
}

/// `conv.forward(x)`, through [`ConvKernels`] on the CPU device: the same values to float
/// rounding (the sums run in another order).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let Some(options) = conv_options(conv) else {
        return conv.forward(x);
    };
    let bias = conv.bias.as_ref().map(|b| b.val());
    conv2d_with(x, conv.weight.val(), bias, options)
}

/// `burn::tensor::module::conv2d`, through [`ConvKernels`] on the CPU device.
pub fn conv2d_with(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    if !on_cpu(&x.device()) {
        return burn_conv2d(x, weight, bias, options);
    }
    let y = Tensor::from_dispatch(<Dispatch as ConvKernels>::conv2d_no_bias(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ));
    match bias {
        Some(b) => {
            let c = b.dims()[0];
            y + b.reshape([1, c, 1, 1])
        }
        None => y,
    }
}

/// `conv2d(x, weight) + bias` with ReLU on the output's first `relu_channels` channels (all
/// of them: `usize::MAX`), for inference: one op on the CPU device (bias and ReLU applied to
/// each tile of the output as the GEMM leaves it, see [`ConvKernels::conv2d_bias_relu`]),
/// burn's ops elsewhere.
pub fn conv2d_bias_relu(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    relu_channels: usize,
    options: ConvOptions<2>,
) -> Tensor<4> {
    if on_cpu(&x.device()) {
        return Tensor::from_dispatch(<Dispatch as ConvKernels>::conv2d_bias_relu(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            relu_channels,
            options,
        ));
    }
    let y = burn_conv2d(x, weight, Some(bias), options);
    let c = y.dims()[1];
    match relu_channels.min(c) {
        0 => y,
        r if r == c => relu(y),
        r => Tensor::cat(
            vec![relu(y.clone().narrow(1, 0, r)), y.narrow(1, r, c - r)],
            1,
        ),
    }
}

/// What the forward does to its output besides the convolution: add a bias per output
/// channel, then ReLU on the first `relu_channels` channels.
struct Epilogue<'a> {
    bias: Option<&'a [f32]>,
    relu_channels: usize,
}

impl Epilogue<'_> {
    const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        relu_channels: 0,
    };

    fn is_none(&self) -> bool {
        self.bias.is_none() && self.relu_channels == 0
    }

    /// Applies to `row`, values of output channel `co`.
    #[inline]
    fn apply(&self, co: usize, row: &mut [f32]) {
        if self.is_none() {
            return;
        }
        let b = self.bias.map_or(0.0, |b| b[co]);
        finish_row(row, b, co < self.relu_channels);
    }
}

simd_dispatch! {
    /// `v = v + b`, then `v = max(v, 0)` with `relu` (NaN stays NaN, as in burn's ReLU).
    fn finish_row(row: &mut [f32], b: f32, relu: bool) => finish_row_generic
}

#[inline(always)]
fn finish_row_generic(row: &mut [f32], b: f32, relu: bool) {
    if relu {
        for v in row {
            let t = *v + b;
            *v = if t < 0.0 { 0.0 } else { t };
        }
    } else {
        for v in row {
            *v += b;
        }
    }
}

/// Sizes of one convolution problem.
struct Shape2d {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
}

impl Shape2d {
    fn new(x: [usize; 4], weight: [usize; 4], [oh, ow]: [usize; 2]) -> Self {
        Self {
            batch: x[0],
            c_in: x[1],
            h: x[2],
            w: x[3],
            c_out: weight[0],
            kh: weight[2],
            kw: weight[3],
            oh,
            ow,
        }
    }
}

/// Floats of one tile of patches (16 MiB).
const TILE_FLOATS: usize = 4 << 20;

/// Output rows per patch tile: the tile of patches stays under [`TILE_FLOATS`] however large
/// the map.
fn rows_per_tile(s: &Shape2d) -> usize {
    let k = s.c_in * s.kh * s.kw;
    (TILE_FLOATS / (k * s.ow).max(1)).clamp(1, s.oh)
}

/// Whether to run batch elements in parallel (each with a serial GEMM): when there are at
/// least as many as threads. Otherwise elements run in turn with parallel patches and GEMMs.
fn batch_parallel(s: &Shape2d) -> bool {
    s.batch >= rayon::current_num_threads()
}

/// GEMM parallelism for a problem of `mnk` multiply-adds inside one serial batch element.
fn gemm_parallelism(mnk: usize, batch_parallel: bool) -> gemm::Parallelism {
    if !batch_parallel && mnk >= 1 << 21 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// Runs `f(b, out_b)` for each batch element's `chunk`-sized slice of `out`, in parallel
/// across elements or in turn (see [`batch_parallel`]).
fn per_batch(out: &mut [f32], chunk: usize, parallel: bool, f: impl Fn(usize, &mut [f32]) + Sync) {
    if parallel {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(b, o)| f(b, o));
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(b, o)| f(b, o));
    }
}

/// Whether the convolution is pointwise (1x1, stride 1, no padding): its patches are the
/// input itself (`[c_in, h w]` per image), so no patch matrix is built.
fn pointwise(s: &Shape2d, o: &ConvOptions<2>) -> bool {
    s.kh == 1 && s.kw == 1 && o.stride == [1, 1] && o.padding == [(0, 0), (0, 0)]
}

/// `y = conv(x, w)` (no bias) for contiguous NCHW `x` and `w` (groups = 1): per batch element
/// and tile of output rows, `Y_b[co, tile] = W[co, (ci, kh, kw)] . patches[(ci, kh, kw), tile]`,
/// written straight into the NCHW output.
fn forward_f32(
    x: &[f32],
    w: &[f32],
    s: &Shape2d,
    o: &ConvOptions<2>,
    epilogue: &Epilogue,
) -> Vec<f32> {
    if winograd::applies(s, o) {
        return direct::forward(winograd::convolve, Isa::detect(), x, w, s, o, epilogue);
    }
    if direct::applies(s, o) {
        return direct::forward(direct::convolve, Isa::detect(), x, w, s, o, epilogue);
    }
    if channels_last::forward_applies(s, o) {
        let kernel = channels_last::convolve;
        return direct::forward(kernel, Isa::detect(), x, w, s, o, epilogue);
    }
    if images_per_group(s) > 1 && s.oh * s.ow > 1 && s.c_out > 1 {
        return forward_grouped(x, w, s, o, epilogue);
    }
    let k = s.c_in * s.kh * s.kw;
    let p = s.oh * s.ow;
    let mut y = vec![0.0f32; s.batch * s.c_out * p];
    let rows = rows_per_tile(s);
    let parallel = batch_parallel(s);
    let direct = pointwise(s, o);
    per_batch(&mut y, s.c_out * p, parallel, |b, yb| {
        let xb = &x[b * s.c_in * s.h * s.w..(b + 1) * s.c_in * s.h * s.w];
        let mut scratch = Scratch::take(if direct { 0 } else { k * rows * s.ow });
        for r0 in (0..s.oh).step_by(rows) {
            let nr = rows.min(s.oh - r0);
            let tile = nr * s.ow;
            // The patches [k, tile] of these rows (row stride `ld`).
            let (patches, ld) = if direct {
                (&xb[r0 * s.ow..], p)
            } else {
                let patches = &mut scratch[..k * tile];
                fill_patches(patches, tile, xb, 1, s, o, r0, nr, !parallel);
                (&*patches, tile)
            };
            // SAFETY: dst is the [c_out, tile] window of Y_b at column r0 * ow (row stride p),
            // lhs is W [c_out, k] row-major, rhs the [k, tile] patches at row stride `ld`
            // (x_b's columns r0 * ow.. when pointwise); `yb` is borrowed mutably.
            unsafe {
                gemm_strided(
                    [s.c_out, tile, k],
                    (yb.as_mut_ptr().add(r0 * s.ow), p),
                    false,
                    (w.as_ptr(), k),
                    false,
                    (patches.as_ptr(), ld),
                    false,
                    1.0,
                    gemm_parallelism(s.c_out * k * tile, parallel),
                );
            }
            if !epilogue.is_none() {
                let finish = |(co, row): (usize, &mut [f32])| {
                    epilogue.apply(co, &mut row[r0 * s.ow..][..tile])
                };
                if parallel {
                    yb.chunks_mut(p).enumerate().for_each(finish);
                } else {
                    yb.par_chunks_mut(p).enumerate().for_each(finish);
                }
            }
        }
    });
    y
}

/// `dx` of `y = conv(x, w)` from `g = dL/dy`: per batch element and tile of output rows,
/// `dpatches = W^T . G_b[:, tile]`, then each patch entry is added back onto the input pixel
/// it was read from (col2im), one input channel per task.
///
/// `flipped`: the weights transposed and flipped, when the caller keeps them (a frozen
/// network's): on small maps the gradient is then the forward convolution of `g` with them
/// (measured on VGG-16's 256-512-channel 8x8-2x2 layers, whose col2im path ran at 90-200
/// GFLOP/s; flipping the weights at every call instead cost as much as it saved).
fn input_grad_f32(
    g: &[f32],
    w: &[f32],
    flipped: Option<&[f32]>,
    s: &Shape2d,
    o: &ConvOptions<2>,
) -> Vec<f32> {
    if winograd::applies(s, o) {
        return direct::input_grad(winograd::convolve, Isa::detect(), g, w, s, o);
    }
    if direct::applies(s, o) {
        return direct::input_grad(direct::convolve, Isa::detect(), g, w, s, o);
    }
    if channels_last::input_grad_applies(s, o) {
        return direct::input_grad(channels_last::convolve, Isa::detect(), g, w, s, o);
    }
    if images_per_group(s) > 1 {
        if let Some(flipped) = flipped.filter(|_| direct::stride_one_3x3(s, o)) {
            return input_grad_as_forward(g, flipped, s, o);
        }
        return input_grad_grouped(g, w, s, o);
    }
    let k = s.c_in * s.kh * s.kw;
    let p = s.oh * s.ow;
    let mut dx = vec![0.0f32; s.batch * s.c_in * s.h * s.w];
    let rows = rows_per_tile(s);
    let parallel = batch_parallel(s);
    let direct = pointwise(s, o);
    per_batch(&mut dx, s.c_in * s.h * s.w, parallel, |b, dxb| {
        let gb = &g[b * s.c_out * p..(b + 1) * s.c_out * p];
        let mut scratch = Scratch::take(if direct { 0 } else { k * rows * s.ow });
        for r0 in (0..s.oh).step_by(rows) {
            let nr = rows.min(s.oh - r0);
            let tile = nr * s.ow;
            // Pointwise, the patch gradient is the input gradient: written in place.
            let (dpatches, ld) = if direct {
                (dxb[r0 * s.ow..].as_mut_ptr(), p)
            } else {
                (scratch.as_mut_ptr(), tile)
            };
            // SAFETY: dst is the [k, tile] patch gradient at row stride `ld` (in `scratch`, or
            // dx_b's columns r0 * ow.. when pointwise; neither is borrowed meanwhile), lhs is
            // W^T (W is [c_out, k] row-major), rhs the [c_out, tile] window of G_b at column
            // r0 * ow (row stride p).
            unsafe {
                gemm_strided(
                    [k, tile, s.c_out],
                    (dpatches, ld),
                    false,
                    (w.as_ptr(), k),
                    true,
                    (gb.as_ptr().add(r0 * s.ow), p),
                    false,
                    1.0,
                    gemm_parallelism(s.c_out * k * tile, parallel),
                );
            }
            if !direct {
                add_patches(dxb, &scratch[..k * tile], tile, s, o, r0, nr, !parallel);
            }
        }
    });
    dx
}

/// The adjoint of [`fill_patches`]: adds each patch entry onto the input pixel it was read
/// from (padding entries are dropped). Input channels are independent, so they run in parallel.
#[allow(clippy::too_many_arguments)]
fn add_patches(
    dxb: &mut [f32],
    dpatches: &[f32],
    ld: usize,
    s: &Shape2d,
    o: &ConvOptions<2>,
    r0: usize,
    nr: usize,
    parallel: bool,
) {
    let tile = nr * s.ow;
    let taps = s.kh * s.kw;
    let (sh, sw) = (o.stride[0], o.stride[1]);
    let (dh, dw) = (o.dilation[0], o.dilation[1]);
    let (ph, pw) = (o.padding[0].0 as isize, o.padding[1].0 as isize);
    let channel = |(ci, plane): (usize, &mut [f32])| {
        for tap in 0..taps {
            let (i, j) = (tap / s.kw, tap % s.kw);
            let src_rows = &dpatches[(ci * taps + tap) * ld..][..tile];
            for (r, src) in src_rows.chunks(s.ow).enumerate() {
                let ih = ((r0 + r) * sh + i * dh) as isize - ph;
                if ih < 0 || ih >= s.h as isize {
                    continue;
                }
                let dst = &mut plane[ih as usize * s.w..(ih as usize + 1) * s.w];
                let off = (j * dw) as isize - pw;
                if sw == 1 {
                    let lo = (-off).clamp(0, s.ow as isize) as usize;
                    let hi = (s.w as isize - off).clamp(lo as isize, s.ow as isize) as usize;
                    if hi > lo {
                        let start = (lo as isize + off) as usize;
                        let dst = &mut dst[start..start + (hi - lo)];
                        for (d, v) in dst.iter_mut().zip(&src[lo..hi]) {
                            *d += v;
                        }
                    }
                } else {
                    for (c, v) in src.iter().enumerate() {
                        let iw = (c * sw) as isize + off;
                        if iw >= 0 && iw < s.w as isize {
                            dst[iw as usize] += v;
                        }
                    }
                }
            }
        }
    };
    if parallel {
        dxb.par_chunks_mut(s.h * s.w).enumerate().for_each(channel);
    } else {
        dxb.chunks_mut(s.h * s.w).enumerate().for_each(channel);
    }
}

/// Columns a GEMM needs to run near its peak: the output pixels of one image, or of several
/// when the map is small (a 4x4 map would leave most of each 16-lane vector idle).
///
/// Grouping must not change an image's forward: the tokenizer's nearest-code assignment would
/// turn a batch-dependent rounding into other codes, and a batch split across data-parallel
/// replicas must compute the same forward bits as one device (`tests/data_parallel.rs`). The
/// `gemm` crate sums each output over `k` one fused multiply-add after another in blocks of
/// `kc` terms, but picks `kc` from the whole problem's shape (512 when both output sides are
/// at most 64, its cache model otherwise), and has special paths for one output row or
/// column and for tiny contiguous problems. The grouped forward ([`forward_grouped`]) hands
/// it blocks of at most [`K_BLOCK`] terms, which every `kc` choice sums in one go, and avoids
/// the special paths (more than one output channel and pixel, patches strided along `k`):
/// `forward_is_the_same_bits_whatever_the_batch` checks it. A gradient's rounding varies with
/// the split as any sum over the batch does.
const MIN_COLUMNS: usize = 256;

/// Images per GEMM: 1 for maps of at least [`MIN_COLUMNS`] pixels; otherwise enough images to
/// reach it, within the batch and the patch budget of [`rows_per_tile`].
fn images_per_group(s: &Shape2d) -> usize {
    let p = s.oh * s.ow;
    let k = s.c_in * s.kh * s.kw;
    if p >= MIN_COLUMNS {
        return 1;
    }
    MIN_COLUMNS
        .div_ceil(p.max(1))
        .min(s.batch)
        .min(TILE_FLOATS / (k * p).max(1))
        .max(1)
}

/// Patches `[k, n * p]` of the `n` images of `x` (their whole maps), image `i` in columns
/// `i * p..(i + 1) * p`.
fn group_patches(x: &[f32], n: usize, s: &Shape2d, o: &ConvOptions<2>, parallel: bool) -> Scratch {
    let (k, p) = (s.c_in * s.kh * s.kw, s.oh * s.ow);
    let mut patches = Scratch::take(k * n * p);
    fill_patches(&mut patches, n * p, x, n, s, o, 0, s.oh, parallel);
    patches
}

/// `[rows, n * p]` from `n` consecutive images `[rows, p]`: image `i` in columns
/// `i * p..(i + 1) * p`.
fn side_by_side(images: &[f32], n: usize, rows: usize, p: usize) -> Scratch {
    let mut grouped = Scratch::take(rows * n * p);
    for (i, image) in images.chunks(rows * p).take(n).enumerate() {
        for (r, row) in image.chunks(p).enumerate() {
            grouped[r * n * p + i * p..][..p].copy_from_slice(row);
        }
    }
    grouped
}

/// Groups of [`images_per_group`] consecutive images: `(first image, count)`, and whether the
/// groups run in parallel (at least as many groups as threads) or in turn.
fn groups(s: &Shape2d) -> (Vec<(usize, usize)>, bool) {
    let per = images_per_group(s);
    let list: Vec<_> = (0..s.batch)
        .step_by(per)
        .map(|b| (b, per.min(s.batch - b)))
        .collect();
    let parallel = list.len() >= rayon::current_num_threads();
    (list, parallel)
}

/// Terms of the partial sums the grouped forward hands the `gemm` crate (see [`MIN_COLUMNS`]):
/// the `kc` it picks for small problems.
const K_BLOCK: usize = 512;

/// Runs `f(group, out_g, parallel)` for each group of images (see [`groups`]) with its slice of
/// `out` (`per_image` floats per image), the groups in parallel or in turn.
fn for_groups(
    out: &mut [f32],
    per_image: usize,
    s: &Shape2d,
    f: impl Fn((usize, usize), &mut [f32], bool) + Sync,
) {
    let (list, parallel) = groups(s);
    let chunk = list[0].1 * per_image;
    if parallel {
        out.par_chunks_mut(chunk)
            .zip(list.into_par_iter())
            .for_each(|(o, grp)| f(grp, o, true));
    } else {
        out.chunks_mut(chunk)
            .zip(list)
            .for_each(|(o, grp)| f(grp, o, false));
    }
}

/// [`forward_f32`] for maps under [`MIN_COLUMNS`] pixels: one GEMM per group of images,
/// `Y_g[c_out, n p] = W . patches_g` (in blocks of [`K_BLOCK`] terms, see [`MIN_COLUMNS`]),
/// then each image's `[c_out, p]` copied out. Per image, a 4x4 map's 16 pixels filled one
/// vector of the `gemm` crate's microkernel, its narrowest (measured: 13.6% of a tiny phase-1
/// step, from VGG-16's and the tokenizer's 4x4 and 2x2 maps).
fn forward_grouped(
    x: &[f32],
    w: &[f32],
    s: &Shape2d,
    o: &ConvOptions<2>,
    epilogue: &Epilogue,
) -> Vec<f32> {
    let (k, p, plane) = (s.c_in * s.kh * s.kw, s.oh * s.ow, s.c_in * s.h * s.w);
    let mut y = vec![0.0f32; s.batch * s.c_out * p];
    for_groups(&mut y, s.c_out * p, s, |(b0, n), yg, parallel| {
        let patches = group_patches(&x[b0 * plane..], n, s, o, !parallel);
        let cols = n * p;
        let mut grouped = Scratch::take(s.c_out * cols);
        let parallelism = gemm_parallelism(s.c_out * cols * k, parallel);
        for k0 in (0..k).step_by(K_BLOCK) {
            let kb = K_BLOCK.min(k - k0);
            // Y_g (+)= W[:, k0..k0 + kb] . patches[k0..k0 + kb, :]
            // SAFETY: W's columns k0..k0 + kb of each of its `c_out` rows (stride k) lie inside
            // `w`, the patch rows k0.. are `kb` rows of `cols` inside `patches`; `grouped` is
            // owned and holds `c_out` rows of `cols`.
            unsafe {
                gemm_strided(
                    [s.c_out, cols, kb],
                    (grouped.as_mut_ptr(), cols),
                    k0 > 0,
                    (w[k0..].as_ptr(), k),
                    false,
                    (patches[k0 * cols..].as_ptr(), cols),
                    false,
                    1.0,
                    parallelism,
                );
            }
        }
        for (i, yi) in yg.chunks_mut(s.c_out * p).enumerate() {
            for (co, row) in yi.chunks_mut(p).enumerate() {
                row.copy_from_slice(&grouped[co * cols + i * p..][..p]);
                epilogue.apply(co, row);
            }
        }
    });
    y
}

/// [`input_grad_f32`] of a 3x3 stride-1 convolution as the forward convolution of `g` padded
/// by `dilation (k - 1) - pad` with `flipped` (the weights transposed and flipped).
fn input_grad_as_forward(g: &[f32], flipped: &[f32], s: &Shape2d, o: &ConvOptions<2>) -> Vec<f32> {
    let padding = direct::input_grad_padding(o);
    let o = ConvOptions::new_with_padding([1, 1], padding, o.dilation, 1);
    let t = Shape2d::new(
        [s.batch, s.c_out, s.oh, s.ow],
        [s.c_in, s.c_out, 3, 3],
        [s.h, s.w],
    );
    forward_f32(g, flipped, &t, &o, &Epilogue::NONE)
}

/// [`input_grad_f32`] for small maps: one GEMM per group of images.
fn input_grad_grouped(g: &[f32], w: &[f32], s: &Shape2d, o: &ConvOptions<2>) -> Vec<f32> {
    let (k, p, plane) = (s.c_in * s.kh * s.kw, s.oh * s.ow, s.c_in * s.h * s.w);
    let mut dx = vec![0.0f32; s.batch * plane];
    for_groups(&mut dx, plane, s, |(b0, n), dxg, parallel| {
        let gg = side_by_side(&g[b0 * s.c_out * p..], n, s.c_out, p);
        let mut dpatches = Scratch::take(k * n * p);
        gemm_rm(
            [k, n * p, s.c_out],
            &mut dpatches,
            false,
            w,
            true,
            &gg,
            false,
            1.0,
            gemm_parallelism(k * n * p * s.c_out, parallel),
        );
        for (i, dxb) in dxg.chunks_mut(plane).enumerate() {
            add_patches(dxb, &dpatches[i * p..], n * p, s, o, 0, s.oh, !parallel);
        }
    });
    dx
}

/// [`weight_grad_f32`] for small maps: one GEMM per group of images, accumulated in turn.
fn weight_grad_grouped(x: &[f32], g: &[f32], s: &Shape2d, o: &ConvOptions<2>) -> Vec<f32> {
    let (k, p, plane) = (s.c_in * s.kh * s.kw, s.oh * s.ow, s.c_in * s.h * s.w);
    let mut dw = vec![0.0f32; s.c_out * k];
    let (list, _) = groups(s);
    for (i, (b0, n)) in list.into_iter().enumerate() {
        let patches = group_patches(&x[b0 * plane..], n, s, o, true);
        let gg = side_by_side(&g[b0 * s.c_out * p..], n, s.c_out, p);
        // dW[co, k] (+)= G[co, n p] . patches[k, n p]^T
        gemm_rm(
            [s.c_out, k, n * p],
            &mut dw,
            i > 0,
            &gg,
            false,
            &patches,
            true,
            1.0,
            gemm_parallelism(s.c_out * k * n * p, false),
        );
    }
    dw
}

/// `dW[co, ci, kh, kw]` for contiguous NCHW `x` and `g` (groups = 1).
fn weight_grad_f32(x: &[f32], g: &[f32], s: &Shape2d, o: &ConvOptions<2>) -> Vec<f32> {
    if winograd::weight_grad_applies(s, o) {
        return winograd::weight_grad(x, g, s, o);
    }
    if direct::weight_grad_applies(s, o) {
        return direct::weight_grad(Isa::detect(), x, g, s, o);
    }
    if images_per_group(s) > 1 {
        return weight_grad_grouped(x, g, s, o);
    }
    let k = s.c_in * s.kh * s.kw;
    let p = s.oh * s.ow;
    let mut dw = vec![0.0f32; s.c_out * k];
    let rows = rows_per_tile(s);
    let direct = pointwise(s, o);
    let mut scratch = Scratch::take(if direct { 0 } else { k * rows * s.ow });
    for b in 0..s.batch {
        let xb = &x[b * s.c_in * s.h * s.w..(b + 1) * s.c_in * s.h * s.w];
        let gb = &g[b * s.c_out * p..(b + 1) * s.c_out * p];
        for r0 in (0..s.oh).step_by(rows) {
            let nr = rows.min(s.oh - r0);
            let tile = nr * s.ow;
            let (patches, ld) = if direct {
                (&xb[r0 * s.ow..], p)
            } else {
                let patches = &mut scratch[..k * tile];
                fill_patches(patches, tile, xb, 1, s, o, r0, nr, true);
                (&*patches, tile)
            };
            // dW[co, k] (+)= G_b[co, tile] . patches[k, tile]^T
            // SAFETY: dst is dW [c_out, k] row-major (owned), lhs the [c_out, tile] window of
            // G_b at column r0 * ow (row stride p), rhs the [k, tile] patches at row stride
            // `ld` read transposed.
            unsafe {
                gemm_strided(
                    [s.c_out, k, tile],
                    (dw.as_mut_ptr(), k),
                    b > 0 || r0 > 0,
                    (gb.as_ptr().add(r0 * s.ow), p),
                    false,
                    (patches.as_ptr(), ld),
                    true,
                    1.0,
                    gemm_parallelism(s.c_out * k * tile, false),
                );
            }
        }
    }
    dw
}

/// Patches of output rows `r0..r0 + nr` of the `n` images of `x`: row `(ci, i, j)` (at `ld`
/// floats from the previous one) holds, for each image `b` (columns `b tile..`) and output
/// position of the tile, the input pixel under kernel tap `(i, j)` of channel `ci` (0 in the
/// padding). The images of a row are filled together: filled image by image, the rows of a
/// small map (VGG-16's 2x2-8x8) were 4-64 floats each, and their fill took 6% of a tiny
/// phase-1 step.
#[allow(clippy::too_many_arguments)]
fn fill_patches(
    patches: &mut [f32],
    ld: usize,
    x: &[f32],
    n: usize,
    s: &Shape2d,
    o: &ConvOptions<2>,
    r0: usize,
    nr: usize,
    parallel: bool,
) {
    let tile = nr * s.ow;
    let (sh, sw) = (o.stride[0], o.stride[1]);
    let (dh, dw) = (o.dilation[0], o.dilation[1]);
    let (ph, pw) = (o.padding[0].0 as isize, o.padding[1].0 as isize);
    let (image, hw) = (s.c_in * s.h * s.w, s.h * s.w);
    let row = |(row, dst): (usize, &mut [f32])| {
        let ci = row / (s.kh * s.kw);
        let (i, j) = ((row / s.kw) % s.kh, row % s.kw);
        let off = (j * dw) as isize - pw;
        // The valid columns of every output row (stride 1): lo..hi.
        let lo = (-off).clamp(0, s.ow as isize) as usize;
        let hi = (s.w as isize - off).clamp(lo as isize, s.ow as isize) as usize;
        for (b, dst) in dst[..n * tile].chunks_exact_mut(tile).enumerate() {
            let plane = &x[b * image + ci * hw..][..hw];
            for (r, out) in dst.chunks_mut(s.ow).enumerate() {
                let ih = ((r0 + r) * sh + i * dh) as isize - ph;
                if ih < 0 || ih >= s.h as isize {
                    out.fill(0.0);
                    continue;
                }
                let src = &plane[ih as usize * s.w..(ih as usize + 1) * s.w];
                if sw == 1 {
                    // One contiguous run of the input row, zeros either side.
                    out[..lo].fill(0.0);
                    if hi > lo {
                        let start = (lo as isize + off) as usize;
                        out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    }
                    out[hi..].fill(0.0);
                } else {
                    for (c, v) in out.iter_mut().enumerate() {
                        let iw = (c * sw) as isize + off;
                        *v = if iw < 0 || iw >= s.w as isize {
                            0.0
                        } else {
                            src[iw as usize]
                        };
                    }
                }
            }
        }
    };
    if parallel {
        patches.par_chunks_mut(ld).enumerate().for_each(row);
    } else {
        patches.chunks_mut(ld).enumerate().for_each(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d as reference;
    use burn::tensor::{Device, Distribution};

    /// The fused inference layer against burn's conv, bias add and ReLU, with ReLU on no, some
    /// and all channels, on every forward path (per image in turn and in parallel, pointwise,
    /// grouped small maps), on the CPU device and through its autodiff wrapper (the composed
    /// default).
    #[test]
    fn bias_relu_matches_burn_ops() {
        let cases: [([usize; 4], [usize; 4], ConvOptions<2>); 4] = [
            (
                [1, 3, 17, 16],
                [6, 3, 3, 3],
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ),
            (
                [3, 4, 16, 17],
                [5, 4, 1, 1],
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            ),
            (
                [4, 3, 40, 36],
                [7, 3, 3, 3],
                ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
            ),
            (
                [5, 3, 6, 5],
                [4, 3, 3, 3],
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ),
        ];
        for device in [Device::flex(), Device::flex().autodiff()] {
            for (xs, ws, options) in cases.clone() {
                let x = Tensor::<4>::random(xs, Distribution::Normal(0.0, 1.0), &device);
                let w = Tensor::<4>::random(ws, Distribution::Normal(0.0, 0.5), &device);
                let b = Tensor::<1>::random([ws[0]], Distribution::Normal(0.0, 1.0), &device);
                let y = reference(x.clone(), w.clone(), Some(b.clone()), options.clone());
                let c = ws[0];
                for relu_channels in [0, 2, c, usize::MAX] {
                    let r = relu_channels.min(c);
                    let mut parts = Vec::new();
                    if r > 0 {
                        parts.push(relu(y.clone().narrow(1, 0, r)));
                    }
                    if r < c {
                        parts.push(y.clone().narrow(1, r, c - r));
                    }
                    let expected = Tensor::cat(parts, 1);
                    let ours = conv2d_bias_relu(
                        x.clone(),
                        w.clone(),
                        b.clone(),
                        relu_channels,
                        options.clone(),
                    );
                    assert_eq!(ours.dims(), expected.dims());
                    let diff: f32 = (ours - expected).abs().max().into_scalar();
                    assert!(diff < 1e-5, "{xs:?} {ws:?} relu {relu_channels}: {diff}");
                }
            }
        }
    }

    /// Output, weight, input and bias gradients of our conv against burn's, for the kernel
    /// shapes, strides, paddings and dilations the models use (and an asymmetric padding), on
    /// every path: one GEMM per image or per group of images (small maps), batch elements or
    /// groups in turn or in parallel.
    #[test]
    fn gradients_match_burn_conv2d() {
        // The first four have maps of >= 256 pixels (the first on the direct kernels, then one
        // GEMM per image; two pointwise, read without patches, in turn and in parallel; one of
        // stride 2), the others small maps
        // (one GEMM per group of images; the last three with more output channels, 17: a
        // partly filled vector).
        let cases: [([usize; 4], [usize; 4], ConvOptions<2>); 14] = [
            (
                [1, 3, 17, 16],
                [4, 3, 3, 3],
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ),
            (
                [3, 4, 16, 17],
                [5, 4, 1, 1],
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            ),
            (
                [1, 4, 16, 17],
                [5, 4, 1, 1],
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            ),
            (
                [3, 2, 33, 20],
                [3, 2, 3, 3],
                ConvOptions::new([2, 1], [1, 1], [1, 1], 1),
            ),
            (
                [5, 3, 6, 5],
                [4, 3, 3, 3],
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ),
            (
                [20, 2, 6, 5],
                [3, 2, 3, 3],
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ),
            (
                [2, 3, 9, 7],
                [4, 3, 3, 3],
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ),
            (
                [2, 5, 8, 8],
                [6, 5, 1, 1],
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            ),
            (
                [1, 4, 11, 10],
                [3, 4, 3, 3],
                ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
            ),
            (
                [2, 3, 12, 12],
                [2, 3, 3, 3],
                ConvOptions::new([1, 1], [2, 2], [2, 2], 1),
            ),
            (
                [1, 2, 7, 6],
                [3, 2, 4, 4],
                ConvOptions::new_with_padding([2, 2], [(1, 2), (1, 2)], [1, 1], 1),
            ),
            (
                [3, 4, 4, 4],
                [24, 4, 3, 3],
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ),
            (
                [2, 5, 4, 4],
                [16, 5, 3, 3],
                ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
            ),
            (
                [2, 3, 2, 3],
                [17, 3, 1, 1],
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            ),
        ];
        matches_burn(&cases);
    }

    /// The direct kernels (3x3, stride 1: padded planes on maps at least 16 wide, channels-last
    /// on smaller maps of narrow layers) against burn's conv, forward and both gradients: one
    /// image (tiles split between threads, or output channels) and several (images split),
    /// output channels that leave the last register tile part empty, dilation, asymmetric and
    /// no padding, a deep input.
    #[test]
    fn direct_kernels_match_burn_conv2d() {
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let cases: [([usize; 4], [usize; 4], ConvOptions<2>); 9] = [
            ([1, 3, 20, 17], [5, 3, 3, 3], same.clone()),
            // One image whose weights outweigh its input: the threads split the output
            // channels (on up to 2 threads; `direct::forward_image`).
            ([1, 4, 16, 16], [40, 4, 3, 3], same.clone()),
            ([3, 16, 8, 8], [32, 16, 3, 3], same.clone()),
            ([2, 20, 4, 5], [17, 20, 3, 3], same.clone()),
            ([3, 6, 16, 18], [17, 6, 3, 3], same.clone()),
            (
                [2, 4, 20, 20],
                [8, 4, 3, 3],
                ConvOptions::new([1, 1], [2, 2], [2, 2], 1),
            ),
            (
                [2, 3, 18, 20],
                [4, 3, 3, 3],
                ConvOptions::new_with_padding([1, 1], [(0, 1), (1, 2)], [1, 1], 1),
            ),
            (
                [2, 2, 20, 20],
                [3, 2, 3, 3],
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            ),
            ([2, 40, 16, 16], [9, 40, 3, 3], same),
        ];
        for (xs, ws, options) in &cases {
            let [oh, ow] = [0, 1].map(|d| {
                xs[2 + d] + options.padding[d].0 + options.padding[d].1 - options.dilation[d] * 2
            });
            let s = Shape2d::new(*xs, *ws, [oh, ow]);
            let small = channels_last::forward_applies(&s, options)
                && channels_last::input_grad_applies(&s, options)
                && direct::weight_grad_applies(&s, options);
            assert!(
                direct::applies(&s, options) || small,
                "{xs:?} {ws:?} not direct"
            );
        }
        matches_burn(&cases);
    }

    /// [`conv2d_with`] on maps that take the Winograd kernels (forward, input gradient and,
    /// on AVX-512, weight gradient) against burn's conv: a square map with a part-filled block
    /// of output channels, and an odd width with asymmetric padding.
    #[test]
    fn winograd_matches_burn_conv2d() {
        let cases = [
            (
                [2, 32, 64, 64],
                [37, 32, 3, 3],
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ),
            (
                [1, 33, 66, 67],
                [32, 33, 3, 3],
                ConvOptions::new_with_padding([1, 1], [(0, 2), (2, 1)], [1, 1], 1),
            ),
        ];
        for (xs, ws, options) in &cases {
            let [oh, ow] =
                [0, 1].map(|d| xs[2 + d] + options.padding[d].0 + options.padding[d].1 - 2);
            assert!(winograd::applies(
                &Shape2d::new(*xs, *ws, [oh, ow]),
                options
            ));
        }
        matches_burn(&cases);
    }

    /// Checks output, input, weight and bias gradients of [`conv2d_with`] against burn's conv
    /// for each case (`x` shape, weight shape, options), and that our kernels computed them.
    fn matches_burn(cases: &[([usize; 4], [usize; 4], ConvOptions<2>)]) {
        let device = Device::flex().autodiff();
        let counts = || {
            [&GEMM_FORWARDS, &GEMM_INPUT_GRADS, &GEMM_WEIGHT_GRADS]
                .map(|c| c.load(Ordering::Relaxed))
        };
        let before = counts();
        let n = cases.len();
        for (xs, ws, options) in cases.iter().cloned() {
            let x0 = Tensor::<4>::random(xs, Distribution::Normal(0.0, 1.0), &device);
            // Weights at 1/sqrt(fan-in), so outputs are O(1): the loss below amplifies an
            // output's rounding by |y|.
            let fan_in = (ws[1] * ws[2] * ws[3]) as f64;
            let w0 = Tensor::<4>::random(ws, Distribution::Normal(0.0, fan_in.powf(-0.5)), &device);
            let b0 = Tensor::<1>::random([ws[0]], Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                let (x, w, b) = (
                    x0.clone().require_grad(),
                    w0.clone().require_grad(),
                    b0.clone().require_grad(),
                );
                let y = if ours {
                    conv2d_with(x.clone(), w.clone(), Some(b.clone()), options.clone())
                } else {
                    reference(x.clone(), w.clone(), Some(b.clone()), options.clone())
                };
                // A non-uniform output gradient, cos(y) - y sin(y), so that every weight sees
                // distinct terms.
                let grads = (y.clone() * y.clone().cos()).sum().backward();
                let flat = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().expect("f32 data");
                (
                    flat(y.detach().flatten(0, 3)),
                    flat(x.grad(&grads).unwrap().flatten(0, 3)),
                    flat(w.grad(&grads).unwrap().flatten(0, 3)),
                    flat(b.grad(&grads).unwrap()),
                )
            };
            let (ours, theirs) = (run(true), run(false));
            // Within 1e-4 relative, or 1e-5 of the tensor's largest entry: the gradients carry
            // the forward's rounding (two correct kernels differ by ~1e-6 relative), amplified
            // by the loss's derivative and summed over every position, so that entries which
            // cancel to near zero can differ by more than 1e-4 of themselves (weight gradient
            // of 32 channels 32x32, batch 2: -0.030302 vs -0.030158, entries up to ~50).
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                let largest = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (u, v) in a.iter().zip(b) {
                    assert!(
                        (u - v).abs() <= (1e-4 * (1.0 + v.abs())).max(1e-5 * largest),
                        "{what} {xs:?} {ws:?}: {u} vs {v}"
                    );
                }
            };
            close(&ours.0, &theirs.0, "output");
            close(&ours.1, &theirs.1, "input gradient");
            close(&ours.2, &theirs.2, "weight gradient");
            close(&ours.3, &theirs.3, "bias gradient");
        }
        let after = counts();
        for (what, (a, b)) in ["forward", "input gradient", "weight gradient"]
            .iter()
            .zip(after.iter().zip(before))
        {
            assert!(a - b >= n, "the {what}s did not come from our kernels");
        }
    }

    /// [`FrozenConv2d`]: output and input gradient against burn's conv (the weights frozen),
    /// on small maps of deep layers (the input gradient then a forward convolution with the
    /// flipped weights, checked to be the route taken) and on a wide map (the direct kernel).
    #[test]
    fn frozen_conv_matches_burn_conv2d() {
        let device = Device::flex().autodiff();
        let cases = [
            (
                [3, 160, 4, 4],
                144,
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ),
            (
                [2, 130, 5, 3],
                136,
                ConvOptions::new_with_padding([1, 1], [(0, 2), (2, 1)], [1, 2], 1),
            ),
            (
                [2, 3, 20, 17],
                5,
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            ),
        ];
        for (i, (xs, c_out, options)) in cases.into_iter().enumerate() {
            let ws = [c_out, xs[1], 3, 3];
            let [oh, ow] = [0, 1].map(|d| {
                xs[2 + d] + options.padding[d].0 + options.padding[d].1 - options.dilation[d] * 2
            });
            let s = Shape2d::new(xs, ws, [oh, ow]);
            let flipped_route = !direct::applies(&s, &options)
                && !channels_last::input_grad_applies(&s, &options)
                && images_per_group(&s) > 1;
            assert_eq!(flipped_route, i < 2, "{xs:?}: route");
            let x0 = Tensor::<4>::random(xs, Distribution::Normal(0.0, 1.0), &device);
            let fan_in = (xs[1] * 9) as f64;
            let w = Tensor::<4>::random(ws, Distribution::Normal(0.0, fan_in.powf(-0.5)), &device);
            let b = Tensor::<1>::random([c_out], Distribution::Normal(0.0, 1.0), &device);
            let frozen = FrozenConv2d::new(w.clone(), Some(b.clone()), options.clone());
            let run = |ours: bool| {
                let x = x0.clone().require_grad();
                let y = if ours {
                    frozen.forward(x.clone())
                } else {
                    reference(x.clone(), w.clone(), Some(b.clone()), options.clone())
                };
                let grads = (y.clone() * y.clone().cos()).sum().backward();
                let flat = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().expect("f32 data");
                let dx = flat(x.grad(&grads).unwrap().flatten(0, 3));
                (flat(y.detach().flatten(0, 3)), dx)
            };
            let (ours, theirs) = (run(true), run(false));
            direct::tests::close(&ours.0, &theirs.0, &format!("output {xs:?}"));
            direct::tests::close(&ours.1, &theirs.1, &format!("input gradient {xs:?}"));
        }
    }

    /// An image's forward is the same bits alone and in batches of any size, on the grouped
    /// path of small maps too (see [`MIN_COLUMNS`]); `k` = 576 spans two of the `gemm` crate's
    /// blocks of the sum.
    #[test]
    fn forward_is_the_same_bits_whatever_the_batch() {
        let device = Device::flex();
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        for (map, c_in, c_out) in [(4, 64, 32), (2, 8, 64), (7, 8, 17), (16, 8, 8)] {
            let x = Tensor::<4>::random(
                [12, c_in, map, map],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let w =
                Tensor::<4>::random([c_out, c_in, 3, 3], Distribution::Normal(0.0, 1.0), &device);
            let bits = |t: Tensor<4>| -> Vec<u32> {
                let v: Vec<f32> = t.into_data().try_to_vec().expect("f32 data");
                v.into_iter().map(f32::to_bits).collect()
            };
            let all = conv2d_with(x.clone(), w.clone(), None, options.clone());
            for (start, len) in [(0, 1), (3, 2), (5, 7)] {
                let part = conv2d_with(
                    x.clone().narrow(0, start, len),
                    w.clone(),
                    None,
                    options.clone(),
                );
                assert!(
                    bits(part) == bits(all.clone().narrow(0, start, len)),
                    "{map}x{map} map, {c_in} -> {c_out} channels: images {start}.. alone differ"
                );
            }
        }
    }
}
