//! Whole-tensor reductions on the CPU device.
//!
//! The transformer's global-norm clipping summed `g.powi_scalar(2)` over every gradient: a
//! squared copy of each gradient written and read again (measured: 2.3% of a `base` MaskGIT
//! training step in that elementwise op). Here the sum of squares is one read: per task a
//! block of the tensor, in 16 f32 lanes per 1024 elements, the lanes' sums added in f64.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::simd::{blocks_sum, lanes_sum, simd_dispatch};
use super::{contiguous_f32, f32_slice, on_cpu, wrap};

/// Reductions the CPU device gets from us (see the module doc).
#[backend_extension(Flex)]
pub trait ReduceKernels: Backend {
    /// `sum(x^2)` over all elements, as a `[1]` tensor.
    fn sum_squares(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 16;

impl ReduceKernels for Flex {
    fn sum_squares(x: FlexTensor) -> FlexTensor {
        let dtype = x.dtype();
        let x = contiguous_f32(x);
        let total: f64 = f32_slice(&x)
            .par_chunks(CHUNK)
            .map(|c| {
                let mut s = 0.0;
                sum_squares_slice(c, &mut s);
                s
            })
            .sum();
        wrap(vec![total as f32], [1], dtype)
    }
}

#[inline(always)]
fn sum_squares_generic(x: &[f32], total: &mut f64) {
    *total += blocks_sum(x, |b| lanes_sum(b.iter().map(|v| v * v)));
}

simd_dispatch! {
    /// `total += sum(x^2)`.
    fn sum_squares_slice(x: &[f32], total: &mut f64) => sum_squares_generic
}

/// `x.powi_scalar(2).sum()` without the squared copy on the CPU device, for plain (not
/// autodiff) float32 tensors such as gradients; burn's ops otherwise.
pub fn sum_squares<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    if !on_cpu(&x.device()) || x.is_autodiff() || x.dtype() != DType::F32 {
        return x.powi_scalar(2).sum();
    }
    Tensor::from_dispatch(<Dispatch as ReduceKernels>::sum_squares(x.into_dispatch()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Against the sum of squares in f64 on the host, for a size that is not a multiple of
    /// the lanes, the blocks or the tasks, and a transposed (strided) input; and against
    /// burn's ops.
    #[test]
    fn matches_a_direct_sum() {
        let device = Device::flex();
        let n = 3 * CHUNK + 1036;
        let x = Tensor::<2>::random([n / 7, 7], Distribution::Normal(0.5, 2.0), &device);
        let host = x.clone().into_data().try_to_vec::<f32>().unwrap();
        let exact: f64 = host.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        for t in [x.clone(), x.clone().transpose()] {
            let ours: f32 = sum_squares(t).into_scalar();
            assert!(
                ((ours as f64) - exact).abs() <= 1e-6 * exact,
                "{ours} vs {exact}"
            );
        }
        let burn: f32 = x.clone().powi_scalar(2).sum().into_scalar();
        let ours: f32 = sum_squares(x).into_scalar();
        assert!(
            ((ours - burn) / burn).abs() < 1e-4,
            "{ours} vs burn's {burn}"
        );
    }
}
