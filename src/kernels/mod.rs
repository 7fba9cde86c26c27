//! Kernels the CPU device gets from us where burn-flex's are the limit, through burn's
//! backend-extension point (other devices use burn's ops unchanged).

pub mod attention;
pub mod conv;
pub mod dropout;
pub mod gelu;
pub mod pool;
mod simd;

use burn::backend::DispatchDevice;
use burn::tensor::Device;

pub use attention::attention;
pub use conv::{conv_options, conv2d, conv2d_with};
pub use dropout::dropout;
pub use gelu::gelu;
pub use pool::{avg_pool2d, max_pool2d};

/// Whether `device` (autodiff or not) is the CPU (Flex) device, the one these kernels serve.
fn on_cpu(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// `dst = beta * lhs . rhs` (`dst += ...` with `accumulate`) for row-major operands; `lhs_t` /
/// `rhs_t` read that operand transposed (stored as `[k, m]` / `[n, k]`). `m x n` result, inner
/// size `k`.
#[allow(clippy::too_many_arguments)]
fn gemm_rm(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    let (lhs_cs, lhs_rs) = if lhs_t { (m, 1) } else { (1, k) };
    let (rhs_cs, rhs_rs) = if rhs_t { (k, 1) } else { (1, n) };
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // SAFETY: the lengths are checked above and the strides address exactly those extents.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}
