//! Kernels the CPU device gets from us where burn-flex's are the limit, through burn's
//! backend-extension point (other devices use burn's ops unchanged).

pub mod activation;
pub mod adam;
pub mod attention;
pub mod conv;
pub mod dropout;
pub mod linear;
pub mod norm;
pub mod pool;
pub mod reduce;
mod scratch;
mod simd;

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Bytes, DType, DispatchDevice, Flex};
use burn::tensor::{Device, FloatDType, Shape};
use rayon::prelude::*;
use std::mem::MaybeUninit;

pub use activation::{gelu, silu};
pub use adam::{FusedAdam, FusedAdamW};
pub use attention::{merge_heads, self_attention, split_heads};
pub use conv::{FrozenConv2d, conv_options, conv2d, conv2d_bias_relu, conv2d_with};
pub use dropout::dropout;
pub use linear::linear;
pub use norm::{group_norm, layer_norm};
pub use pool::{avg_pool2d, max_pool2d};
pub use reduce::sum_squares;

/// Whether `device` (autodiff or not) is the CPU (Flex) device, the one these kernels serve.
fn on_cpu(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// `t` as contiguous f32, the kernels' one layout (other float types are cast).
fn contiguous_f32(t: FlexTensor) -> FlexTensor {
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        Flex::float_cast(t, FloatDType::F32)
    };
    t.to_contiguous()
}

/// The elements of a contiguous f32 tensor (as [`contiguous_f32`] makes them).
fn f32_slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// An f32 kernel result `t` cast back to `dtype` (the input's).
fn cast_back(t: FlexTensor, dtype: DType) -> FlexTensor {
    if dtype == DType::F32 {
        t
    } else {
        Flex::float_cast(t, dtype.into())
    }
}

/// A kernel's output `data` as a contiguous tensor of `shape`, cast back to `dtype` (the
/// input's; `DType::F32` keeps it as it is).
fn wrap(data: Vec<f32>, shape: impl Into<Shape>, dtype: DType) -> FlexTensor {
    let t = FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(shape.into()),
        DType::F32,
    );
    cast_back(t, dtype)
}

/// An elementwise kernel's output of `n` floats, written chunk by chunk in parallel by
/// `write(chunk_index, chunk)` (chunks of `chunk` floats, the last one shorter) without being
/// zero-filled first (`vec![0.0; n]` then overwritten cost a memset: ~5% of a `tiny` MaskGIT
/// step). `write` must set every element of its chunk: the kernels zip the chunk with an input
/// chunk of the same length and write each element once.
fn par_output(
    n: usize,
    chunk: usize,
    write: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(c, o)| write(c, o));
    // SAFETY: the first `n` elements were all written (the contract of `write` above).
    unsafe { out.set_len(n) };
    out
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
    assert!(dst.len() >= m * n);
    // SAFETY: `dst` holds the `m x n` result (checked above) and is borrowed mutably.
    unsafe {
        gemm_dense(
            [m, n, k],
            dst.as_mut_ptr(),
            accumulate,
            (lhs, lhs_t),
            (rhs, rhs_t),
            beta,
            parallelism,
        )
    };
}

/// [`gemm_strided`] for dense row-major operands (their lengths checked) into a dense `m x n`
/// result at `dst`.
///
/// # Safety
/// `dst` must be valid for writes (and reads with `accumulate`) of `m * n` floats that no
/// other thread accesses meanwhile.
unsafe fn gemm_dense(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    accumulate: bool,
    (lhs, lhs_t): (&[f32], bool),
    (rhs, rhs_t): (&[f32], bool),
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    assert!(lhs.len() >= m * k && rhs.len() >= k * n);
    let lhs_ld = if lhs_t { m } else { k };
    let rhs_ld = if rhs_t { k } else { n };
    // SAFETY: the operands' lengths are checked above and the strides address exactly those
    // extents; `dst` as the caller guarantees.
    unsafe {
        gemm_strided(
            [m, n, k],
            (dst, n),
            accumulate,
            (lhs.as_ptr(), lhs_ld),
            lhs_t,
            (rhs.as_ptr(), rhs_ld),
            rhs_t,
            beta,
            parallelism,
        );
    }
}

/// `beta * lhs . rhs` (operands as in [`gemm_rm`]) as a new `m x n` matrix that the GEMM
/// writes without its being zero-filled first (measured: memset 1.3% of a `base` MaskGIT
/// training step, from the linear layers' weight gradients).
fn gemm_new(
    [m, n, k]: [usize; 3],
    lhs: (&[f32], bool),
    rhs: (&[f32], bool),
    beta: f32,
    parallelism: gemm::Parallelism,
) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; m * n];
    }
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: `out` has capacity for the `m x n` result, which the GEMM writes in full without
    // reading it (no accumulation, k > 0) before the length is set.
    unsafe {
        gemm_dense(
            [m, n, k],
            out.as_mut_ptr(),
            false,
            lhs,
            rhs,
            beta,
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}

/// [`gemm_rm`] on row-major operands given as (first element, floats between rows): an
/// operand can be a window of a wider matrix, such as one head's columns of a
/// `[L, 3, heads, dh]` projection. A transposed operand's row stride is that of the stored
/// matrix (`[k, m]` / `[n, k]`).
///
/// # Safety
/// `lhs` and `rhs` must be valid for reads of their extents, `dst` for writes (and reads with
/// `accumulate`) of the `m x n` result at its row stride, and no other thread may access
/// those `dst` elements meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    [m, n, k]: [usize; 3],
    (dst, dst_ld): (*mut f32, usize),
    accumulate: bool,
    (lhs, lhs_ld): (*const f32, usize),
    lhs_t: bool,
    (rhs, rhs_ld): (*const f32, usize),
    rhs_t: bool,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    let (lhs_cs, lhs_rs) = if lhs_t { (lhs_ld, 1) } else { (1, lhs_ld) };
    let (rhs_cs, rhs_rs) = if rhs_t { (rhs_ld, 1) } else { (1, rhs_ld) };
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_ld as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
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
