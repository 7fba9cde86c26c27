//! Dropout on the CPU device as one pass whose mask is a hash of the element index.
//!
//! burn's `Dropout` draws a Bernoulli tensor element by element from the device's ChaCha
//! generator (measured: ~12% of a `tiny` MaskGIT training step in `ElementRandom::random`
//! and its sampler), multiplies, then scales, and keeps the mask for the backward. Here one
//! 64-bit key is drawn from the device generator per call (so seeding the device still fixes
//! every mask: a resumed run draws what the uninterrupted one drew), and element `i` is kept
//! where `hash(key, i)`, read as a uniform number in [0, 1), is `>= prob`. The hash is two
//! rounds of a 32-bit integer mixer (multiply-xorshift), which the compiler vectorises; the
//! backward recomputes the same mask instead of storing it.
//!
//! Other devices (and evaluation) keep burn's `Dropout`: [`dropout`] dispatches on the device.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::Dropout;
use burn::tensor::{Distribution, Int, Tensor};

use super::simd::simd_dispatch;
use super::{contiguous_f32, f32_slice, on_cpu, par_output, wrap};
use std::mem::MaybeUninit;

/// Dropout ops the CPU device gets from us (see the module doc).
#[backend_extension(Autodiff, Flex)]
pub trait DropoutKernels: Backend {
    /// `x` with element `i` zeroed where `uniform(key, i) < prob`, the rest scaled by
    /// `1 / (1 - prob)`. Linear in `x`, so its backward is the same op on the gradient.
    fn dropout_keyed(x: FloatTensor<Self>, prob: f64, key: u64) -> FloatTensor<Self>;
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

impl DropoutKernels for Flex {
    fn dropout_keyed(x: FlexTensor, prob: f64, key: u64) -> FlexTensor {
        let dtype = x.dtype();
        let x = contiguous_f32(x);
        let xs = f32_slice(&x);
        // CHUNK divides 2^32, so no task's run of indices crosses a multiple of it.
        let threshold = keep_threshold(prob);
        let scale = (1.0 / (1.0 - prob)) as f32;
        let out = par_output(xs.len(), CHUNK, |c, o| {
            let start = c * CHUNK;
            apply_slice(
                &xs[start..start + o.len()],
                o,
                key,
                start as u64,
                threshold,
                scale,
            )
        });
        wrap(out, x.shape(), dtype)
    }
}

impl<B: DropoutKernels, C: CheckpointStrategy> DropoutKernels for Autodiff<B, C> {
    fn dropout_keyed(x: FloatTensor<Self>, prob: f64, key: u64) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct DropoutBackward;

        impl<B: DropoutKernels> Backward<B, 1> for DropoutBackward {
            type State = (f64, u64);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (prob, key) = ops.state;
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::dropout_keyed(grad, prob, key));
                }
            }
        }

        match DropoutBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((prob, key), B::dropout_keyed(x.into_primitive(), prob, key))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::dropout_keyed(x.into_primitive(), prob, key))
            }
        }
    }
}

/// `drop.forward(x)`: on the CPU device while training, the keyed mask of this module (one key
/// drawn from the device generator); burn's `Dropout` otherwise (same distribution and scale).
pub fn dropout<const D: usize>(drop: &Dropout, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if !on_cpu(&device) || !drop.training.is_enabled() || !device.is_autodiff() || drop.prob == 0.0
    {
        return drop.forward(x);
    }
    // Two 31-bit draws (the device's integers are i32): a 62-bit key.
    let key = Tensor::<1, Int>::random([2], Distribution::Uniform(0.0, 2_147_483_647.0), &device)
        .into_data()
        .iter::<i64>()
        .fold(0u64, |k, w| (k << 31) | (w as u64 & 0x7fff_ffff));
    dropout_keyed(x, drop.prob, key)
}

/// Dropout of `x` with probability `prob` under the mask of `key` (CPU device).
fn dropout_keyed<const D: usize>(x: Tensor<D>, prob: f64, key: u64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as DropoutKernels>::dropout_keyed(
        x.into_dispatch(),
        prob,
        key,
    ))
}

/// Elements whose 32-bit hash is below this are dropped: `prob * 2^32`, rounded.
fn keep_threshold(prob: f64) -> u32 {
    (prob * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
}

/// A 32-bit integer mixer (multiply-xorshift, full avalanche).
#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x21f0_aaad);
    x ^= x >> 15;
    x = x.wrapping_mul(0x735a_2d97);
    x ^ (x >> 15)
}

/// Keep flags of elements `start..start + out.len()` (a run that does not cross a multiple of
/// 2^32): element `i` is kept where `mix(mix(lo(i) ^ k1) ^ k2) >= threshold`, with `k1`, `k2`
/// the key's halves and `k2` also mixed with `hi(i)`. All u32 lanes, so it vectorises.
#[inline(always)]
fn apply_generic(
    x: &[f32],
    out: &mut [MaybeUninit<f32>],
    key: u64,
    start: u64,
    threshold: u32,
    scale: f32,
) {
    assert_eq!(x.len(), out.len());
    let k1 = key as u32;
    let k2 = (key >> 32) as u32 ^ ((start >> 32) as u32).wrapping_mul(0x9e37_79b9);
    let lo = start as u32;
    for (j, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let h = mix(mix(lo.wrapping_add(j as u32) ^ k1) ^ k2);
        o.write(if h >= threshold { v * scale } else { 0.0 });
    }
}

simd_dispatch! {
    fn apply_slice(
        x: &[f32],
        out: &mut [MaybeUninit<f32>],
        key: u64,
        start: u64,
        threshold: u32,
        scale: f32,
    ) => apply_generic
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::DropoutConfig;
    use burn::tensor::Device;

    /// The kept fraction matches `1 - prob` in every block of the tensor and in every lane
    /// position (no pattern from the index), kept values are scaled exactly, the gradient
    /// carries the same mask, and the key fixes the mask. (The key itself comes from the
    /// device generator, which the tests share across threads, so reproducibility under a
    /// device seed is checked by the resume tests, one process each.)
    #[test]
    fn masks_are_uniform_scaled_and_reproducible() {
        let device = Device::flex().autodiff();
        let n = 1 << 20;
        let x0 = Tensor::<1>::random([n], Distribution::Uniform(1.0, 2.0), &device);
        let run = |key: u64| {
            let x = x0.clone().require_grad();
            let w = Tensor::<1, Int>::arange(0..n as i64, &device).float();
            let y = dropout_keyed(x.clone(), 0.1, key);
            let grads = (y.clone() * w).sum().backward();
            let v = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
            (v(y.detach()), v(x.grad(&grads).unwrap()))
        };
        let (y, g) = run(7);
        let x = x0.clone().into_data().try_to_vec::<f32>().unwrap();
        let kept: Vec<bool> = y.iter().map(|&v| v != 0.0).collect();
        for (i, ((&yi, &xi), &gi)) in y.iter().zip(&x).zip(&g).enumerate() {
            if kept[i] {
                assert_eq!(yi, xi * (1.0f32 / 0.9), "kept value {i}");
                assert_eq!(gi, i as f32 * (1.0f32 / 0.9), "gradient {i}");
            } else {
                assert_eq!(gi, 0.0, "gradient of dropped {i}");
            }
        }
        // Binomial tolerance: 5 standard deviations of each count.
        let check = |count: usize, total: usize, what: &str| {
            let (p, t) = (0.9, total as f64);
            let sd = (t * p * (1.0 - p)).sqrt();
            assert!(
                (count as f64 - t * p).abs() < 5.0 * sd,
                "{what}: kept {count} of {total}"
            );
        };
        for (b, block) in kept.chunks(1 << 16).enumerate() {
            check(
                block.iter().filter(|&&k| k).count(),
                block.len(),
                &format!("block {b}"),
            );
        }
        for lane in 0..16 {
            let c = kept.iter().skip(lane).step_by(16).filter(|&&k| k).count();
            check(c, n / 16, &format!("lane {lane}"));
        }
        // Pairs of neighbours: both kept as often as independence predicts.
        let both = kept.windows(2).filter(|w| w[0] && w[1]).count();
        let (p, t) = (0.81, (n - 1) as f64);
        assert!((both as f64 - t * p).abs() < 5.0 * (t * p * (1.0 - p)).sqrt());
        assert!(run(7).0 == y, "same key, same mask");
        assert!(run(8).0 != y, "another key, another mask");
        // Through the module, with a key from the device generator.
        let drop = DropoutConfig::new(0.1).init();
        let y = dropout(&drop, x0.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        check(y.iter().filter(|&&v| v != 0.0).count(), n, "module");
    }
}
