//! 2D convolution whose weight gradient on the CPU device is one GEMM over im2col patches.
//!
//! burn-flex computes a convolution's weight gradient the generic way (burn-backend's
//! `conv2d_weight_backward`): a second convolution with batch and channels swapped and the
//! *output* map as its kernel. That is a GEMM whose inner size is the kernel's area (9 for a 3x3
//! conv), so it runs at a fraction of the GEMM peak; measured with `seqgan bench --stage
//! kernels` it is the slowest of the three passes of a 3x3 conv. Here the weight gradient is
//! `dW[co, (ci, kh, kw)] = sum_b G_b[co, p] . patches_b[(ci, kh, kw), p]`: one GEMM per batch
//! element and tile of output rows, accumulated in place, on patches built straight from the
//! NCHW input. The forward pass and the input gradient stay burn's own.
//!
//! The op enters through burn's backend-extension point: [`ConvKernels`] is implemented for
//! the Flex backend (our kernel) and for `Autodiff<B>` (the backward step that calls it). Other
//! devices (wgpu, CUDA) take burn's `conv2d` unchanged: [`conv2d`] dispatches on the device.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Bytes, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::on_cpu;

/// Convolution ops the CPU device gets from us (see the module doc).
#[backend_extension(Autodiff, Flex)]
pub trait ConvKernels: Backend {
    /// `conv2d(x, weight)` without bias, whose backward computes the weight gradient with
    /// [`ConvKernels::conv2d_weight_grad`].
    fn conv2d_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

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

/// Weight gradients computed by our kernel (so a test can tell that the op was routed to it).
static GEMM_WEIGHT_GRADS: AtomicUsize = AtomicUsize::new(0);

impl ConvKernels for Flex {
    fn conv2d_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Flex::conv2d(x, weight, None, options)
    }

    fn conv2d_weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        if options.groups != 1 || x.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return Flex::conv2d_weight_backward(x, weight, grad, options);
        }
        let shape = Shape2d::new(
            x.shape().dims::<4>(),
            weight.shape().dims::<4>(),
            grad.shape().dims::<4>(),
        );
        let x = x.to_contiguous();
        let grad = grad.to_contiguous();
        let (Some(xs), Some(gs)) = (x.as_slice::<f32>(), grad.as_slice::<f32>()) else {
            return Flex::conv2d_weight_backward(x, weight, grad, options);
        };
        let dw = weight_grad_f32(xs, gs, &shape, &options);
        GEMM_WEIGHT_GRADS.fetch_add(1, Ordering::Relaxed);
        FlexTensor::new(
            Bytes::from_elems(dw),
            Layout::contiguous(weight.shape()),
            DType::F32,
        )
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
                        B::conv2d_x_backward(x.clone(), w.clone(), grad.clone(), options.clone());
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

/// `conv.forward(x)`, with the weight gradient of [`ConvKernels`] on the CPU device; the same
/// values (forward and input gradient bit for bit, the weight gradient to float rounding).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let Some(options) = conv_options(conv) else {
        return conv.forward(x);
    };
    let bias = conv.bias.as_ref().map(|b| b.val());
    conv2d_with(x, conv.weight.val(), bias, options)
}

/// `burn::tensor::module::conv2d`, with the weight gradient of [`ConvKernels`] on the CPU device.
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

/// Sizes of one weight-gradient problem.
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
    fn new(x: [usize; 4], weight: [usize; 4], g: [usize; 4]) -> Self {
        Self {
            batch: x[0],
            c_in: x[1],
            h: x[2],
            w: x[3],
            c_out: weight[0],
            kh: weight[2],
            kw: weight[3],
            oh: g[2],
            ow: g[3],
        }
    }
}

/// Output rows per patch tile: the tile of patches stays under ~16 MiB however large the map.
fn rows_per_tile(s: &Shape2d) -> usize {
    const TILE_FLOATS: usize = 4 << 20;
    let k = s.c_in * s.kh * s.kw;
    (TILE_FLOATS / (k * s.ow).max(1)).clamp(1, s.oh)
}

/// `dW[co, ci, kh, kw]` for contiguous NCHW `x` and `g` (groups = 1).
fn weight_grad_f32(x: &[f32], g: &[f32], s: &Shape2d, o: &ConvOptions<2>) -> Vec<f32> {
    let k = s.c_in * s.kh * s.kw;
    let p = s.oh * s.ow;
    let mut dw = vec![0.0f32; s.c_out * k];
    let rows = rows_per_tile(s);
    let mut patches = vec![0.0f32; k * rows * s.ow];
    let mut first = true;
    for b in 0..s.batch {
        let xb = &x[b * s.c_in * s.h * s.w..(b + 1) * s.c_in * s.h * s.w];
        let gb = &g[b * s.c_out * p..(b + 1) * s.c_out * p];
        for r0 in (0..s.oh).step_by(rows) {
            let nr = rows.min(s.oh - r0);
            let tile = nr * s.ow;
            let patches = &mut patches[..k * tile];
            fill_patches(patches, xb, s, o, r0, nr);
            // dW[co, k] (+)= G_b[co, tile] . patches[k, tile]^T
            let parallelism = if s.c_out * k * tile >= 1 << 21 {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            };
            // SAFETY: every pointer and stride below addresses inside its slice: dst is
            // [c_out, k] row-major, lhs is the [c_out, tile] window of G_b at column r0 * ow
            // (row stride p), rhs is patches [k, tile] read transposed.
            unsafe {
                gemm::gemm(
                    s.c_out,
                    k,
                    tile,
                    dw.as_mut_ptr(),
                    1,
                    k as isize,
                    !first,
                    gb.as_ptr().add(r0 * s.ow),
                    1,
                    p as isize,
                    patches.as_ptr(),
                    tile as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            first = false;
        }
    }
    dw
}

/// Patches of output rows `r0..r0 + nr`: row `(ci, i, j)` holds, for each output position of
/// the tile, the input pixel under kernel tap `(i, j)` of channel `ci` (0 in the padding).
fn fill_patches(
    patches: &mut [f32],
    xb: &[f32],
    s: &Shape2d,
    o: &ConvOptions<2>,
    r0: usize,
    nr: usize,
) {
    let tile = nr * s.ow;
    let (sh, sw) = (o.stride[0], o.stride[1]);
    let (dh, dw) = (o.dilation[0], o.dilation[1]);
    let (ph, pw) = (o.padding[0].0 as isize, o.padding[1].0 as isize);
    patches
        .par_chunks_mut(tile)
        .enumerate()
        .for_each(|(row, dst)| {
            let ci = row / (s.kh * s.kw);
            let (i, j) = ((row / s.kw) % s.kh, row % s.kw);
            let plane = &xb[ci * s.h * s.w..(ci + 1) * s.h * s.w];
            for (r, out) in dst.chunks_mut(s.ow).enumerate() {
                let ih = ((r0 + r) * sh + i * dh) as isize - ph;
                if ih < 0 || ih >= s.h as isize {
                    out.fill(0.0);
                    continue;
                }
                let src = &plane[ih as usize * s.w..(ih as usize + 1) * s.w];
                let off = (j * dw) as isize - pw;
                if sw == 1 {
                    // One contiguous run of the input row, zeros either side (memcpy/memset,
                    // fast in the unoptimised test build too).
                    let lo = (-off).clamp(0, s.ow as isize) as usize;
                    let hi = (s.w as isize - off).clamp(lo as isize, s.ow as isize) as usize;
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
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d as reference;
    use burn::tensor::{Device, Distribution};

    /// Weight, input and bias gradients of our conv against burn's, for the kernel shapes,
    /// strides, paddings and dilations the models use (and an asymmetric padding).
    #[test]
    fn gradients_match_burn_conv2d() {
        let device = Device::flex().autodiff();
        let cases: [([usize; 4], [usize; 4], ConvOptions<2>); 5] = [
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
        ];
        let before = GEMM_WEIGHT_GRADS.load(Ordering::Relaxed);
        let n = cases.len();
        for (xs, ws, options) in cases {
            let x0 = Tensor::<4>::random(xs, Distribution::Normal(0.0, 1.0), &device);
            let w0 = Tensor::<4>::random(ws, Distribution::Normal(0.0, 1.0), &device);
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
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                for (u, v) in a.iter().zip(b) {
                    assert!(
                        (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                        "{what} {xs:?} {ws:?}: {u} vs {v}"
                    );
                }
            };
            assert_eq!(ours.0, theirs.0, "forward differs for {xs:?} {ws:?}");
            close(&ours.1, &theirs.1, "input gradient");
            close(&ours.2, &theirs.2, "weight gradient");
            close(&ours.3, &theirs.3, "bias gradient");
        }
        assert!(
            GEMM_WEIGHT_GRADS.load(Ordering::Relaxed) - before >= n,
            "the weight gradients did not come from our kernel"
        );
    }
}
