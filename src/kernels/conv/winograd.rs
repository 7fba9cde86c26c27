//! Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions on maps of at least 32x32 (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 block of outputs (a
//! tile) is `A^T [(G g G^T) . (B^T d B)] A` for the 4x4 input patch `d` under it, so that a
//! tile costs 16 multiply-adds per (input, output) channel pair instead of the direct kernel's
//! 36.
//!
//! Per call the weights are transformed once, `U[xi][co][ci] = (G g G^T)[xi]`. Per block of
//! [`NT`] tiles (in parallel):
//! 1. input transform: `V[xi][ci][t] = (B^T d B)[xi]`, sixteen tiles per vector (the planes are
//!    split into even and odd columns first, so that the patches of consecutive tiles are
//!    contiguous vectors);
//! 2. sixteen products `M[xi] = U[xi] V[xi]` (`c_out x c_in` by `c_in x NT`), a register tile
//!    of 8 output channels by the block's tiles as in the direct forward, its loads aligned;
//! 3. output transform `A^T M A` into the NCHW output, then the epilogue per output channel.
//!
//! The input gradient of a 3x3 stride-1 convolution is a forward convolution too
//! (`direct::input_grad`), so both take this path; the weight gradient ([`weight_grad`]) sums
//! `(A dY A^T) . V` over tiles and transforms the sum back with `G`.
//!
//! Rounding: the transforms add and subtract several terms before and after the products, so
//! results differ from the direct kernel's in the last bits; against a float64 reference they
//! stay within twice the direct kernel's error (a test).

// The transforms are small matrix products written out: their loops index several arrays by
// the same coordinate, as the formulas do.
#![allow(clippy::needless_range_loop)]

use std::ops::Range;

use rayon::prelude::*;

use super::super::scratch::Scratch;
use super::super::simd::simd_dispatch;
use super::Shape2d;
use super::direct::{self, Isa, Shared, WeightView, Weights};
use burn::tensor::ops::ConvOptions;

/// Tiles per vector: the input and output transforms handle sixteen horizontally adjacent
/// tiles at once, so a row of tiles is padded to a multiple of sixteen.
const VEC: usize = 16;

/// Tiles per block: the unit of work of a task, and the width of the products' register tile.
const NT: usize = 48;

/// Transformed coordinates per tile (4 x 4).
const XI: usize = 16;

/// Smallest side (input and output) taking this path: a row of 16 tiles, so that the vectors
/// of tiles are full (a 16x16 map would fill half of each). On 32x32 maps this path lost while
/// the weights' transform ran one entry at a time (8 ms for 512 x 512 channels); vectorised,
/// it wins there too (kernel bench, batch 1, forward + backward, direct then Winograd: 512
/// channels 339-349 -> 439-471 GFLOP/s, 128 channels 312 -> 374, 64 channels 269 -> 285).
const MIN_SIDE: usize = 32;

/// Channels (input and output) this path takes: fewer leave the products too short to pay for
/// the transforms; `U` takes `16 c_out c_in` floats (16 MiB at 512).
const CHANNELS: Range<usize> = 32..513;

/// Whether this module computes this convolution (its forward, and its input gradient, which
/// is a forward convolution of the same shape class).
pub(super) fn applies(s: &Shape2d, o: &ConvOptions<2>) -> bool {
    direct::stride_one_3x3(s, o)
        && o.dilation == [1, 1]
        && s.oh.min(s.ow) >= MIN_SIDE
        && s.h.min(s.w) >= MIN_SIDE
        && CHANNELS.contains(&s.c_in)
        && CHANNELS.contains(&s.c_out)
}

/// The tile grid of one image: `th x tw` tiles of 2x2 outputs (rows of tiles padded to `twp`,
/// a multiple of [`VEC`]), over the input split into even and odd columns (`input`: per
/// channel `2 th + 2` input rows, padding included, each `twp + 1` even columns then as many
/// odd ones: tile `tx` reads even and odd columns `tx` and `tx + 1`).
struct Grid {
    c: usize,
    oh: usize,
    ow: usize,
    th: usize,
    twp: usize,
    input: Split,
}

impl Grid {
    fn new([c, h, w]: [usize; 3], pad: [(usize, usize); 2]) -> Self {
        let (oh, ow) = (h + pad[0].0 + pad[0].1 - 2, w + pad[1].0 + pad[1].1 - 2);
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
        let twp = tw.next_multiple_of(VEC);
        let input = Split::new([h, w], [pad[0].0, pad[1].0], 2 * th + 2, twp + 1);
        Self {
            c,
            oh,
            ow,
            th,
            twp,
            input,
        }
    }

    /// Floats per channel of the split input planes.
    fn plane(&self) -> usize {
        self.input.plane
    }

    /// Floats per row half of the split input planes.
    fn half(&self) -> usize {
        self.input.half
    }

    /// The [`NT`] / [`VEC`] vectors of tiles of the block from tile `t0`: `(g, ty, tx)`, the
    /// vector's index in the block and its first tile's row and column.
    fn groups(&self, t0: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..NT / VEC).map(move |g| {
            let t = t0 + g * VEC;
            (g, t / self.twp, t % self.twp)
        })
    }

    /// Tiles on the padded grid (`th` rows of `twp`).
    fn tiles(&self) -> usize {
        self.th * self.twp
    }

    /// One image `x` (`[c][h][w]`) into `dst` as zero-padded planes split into even and odd
    /// columns: padded column `p` of row `r` at `r 2 half + (p % 2) half + p / 2`.
    fn split(&self, dst: &mut [f32], x: &[f32]) {
        self.input.run(dst, x);
    }

    /// The output gradient's planes for [`weight_grad`]: `[c_out][oh][ow]` split into even and
    /// odd columns, `2 th` rows of `twp` each (zeros past the outputs), so that tile `(ty, tx)`
    /// reads rows `2 ty`, `2 ty + 1` at even and odd column `tx`.
    fn grad_split(&self) -> Split {
        Split::new([self.oh, self.ow], [0, 0], 2 * self.th, self.twp)
    }
}

/// Planes of `hw` maps placed at row and column `at` of `rows` zero rows, each row split into
/// `half` even then `half` odd columns; planes `plane` floats apart (a 64-byte multiple).
struct Split {
    hw: [usize; 2],
    at: [usize; 2],
    rows: usize,
    half: usize,
    plane: usize,
}

impl Split {
    fn new(hw: [usize; 2], at: [usize; 2], rows: usize, half: usize) -> Self {
        let plane = (rows * 2 * half).next_multiple_of(16);
        Self {
            hw,
            at,
            rows,
            half,
            plane,
        }
    }

    fn run(&self, dst: &mut [f32], x: &[f32]) {
        let ([h, w], [top, left], half) = (self.hw, self.at, self.half);
        dst.par_chunks_mut(self.plane)
            .zip(x.par_chunks(h * w))
            .for_each(|(plane, src)| {
                plane.fill(0.0);
                for (r, row) in plane[..self.rows * 2 * half]
                    .chunks_mut(2 * half)
                    .enumerate()
                {
                    let Some(ir) = r.checked_sub(top).filter(|&ir| ir < h) else {
                        continue;
                    };
                    let src = &src[ir * w..(ir + 1) * w];
                    let (even, odd) = row.split_at_mut(half);
                    // Padded column p = col + left: an odd `left` puts the first column in
                    // the odd half, and the pairs after it start on an even column.
                    let (first, pairs) = if left % 2 == 1 {
                        odd[left / 2] = src[0];
                        (left.div_ceil(2), &src[1..])
                    } else {
                        (left / 2, src)
                    };
                    // The first pairs sixteen at a time with AVX-512 (scalar moves took
                    // 5-8% of a paper256 step), the rest one by one.
                    let done = deinterleave(pairs, &mut even[first..], &mut odd[first..]);
                    let (first, pairs) = (first + done, &pairs[2 * done..]);
                    let mut chunks = pairs.chunks_exact(2);
                    for ((e, o), pair) in even[first..]
                        .iter_mut()
                        .zip(odd[first..].iter_mut())
                        .zip(&mut chunks)
                    {
                        *e = pair[0];
                        *o = pair[1];
                    }
                    if let [last] = chunks.remainder() {
                        even[first + pairs.len() / 2] = *last;
                    }
                }
            });
    }
}

/// Pairs `(a, b)` of `pairs` into `a`s to `even` and `b`s to `odd`, sixteen pairs at a time
/// while they fill both, on CPUs with AVX-512; returns the pairs moved.
fn deinterleave(pairs: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Wide {
        // SAFETY: the CPU has AVX-512.
        return unsafe { avx512::deinterleave(pairs, even, odd) };
    }
    let _ = (pairs, even, odd);
    0
}

/// `U[xi][co][ci] = (G g G^T)[xi]` for each output channel's 3x3 kernels `g`, with
/// `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`: output channels in
/// parallel, sixteen input channels at a time (one entry at a time, with sixteen scattered
/// stores each, it took 8 ms for 512 x 512 channels, as long as half the convolution on 32x32
/// maps).
fn transform_weights(w: &WeightView, c_out: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; XI * c_out * c];
    let dst = Shared(u.as_mut_ptr());
    (0..c_out)
        .into_par_iter()
        .for_each(|o| transform_kernels(w, c_out, c, o, dst));
    u
}

simd_dispatch! {
    /// Output channel `o`'s entries of `U` (see [`transform_weights`]).
    fn transform_kernels(w: &WeightView, c_out: usize, c: usize, o: usize, dst: Shared)
        => transform_kernels_generic
}

#[inline(always)]
fn transform_kernels_generic(w: &WeightView, c_out: usize, c: usize, o: usize, dst: Shared) {
    for i0 in (0..c).step_by(VEC) {
        let n = VEC.min(c - i0);
        // g[t][l]: tap t of input channel i0 + l (zeros past the last).
        let mut g = [[0.0f32; VEC]; 9];
        for l in 0..n {
            for (t, v) in w.kernel(o, i0 + l).into_iter().enumerate() {
                g[t][l] = v;
            }
        }
        let comb = |p: &[f32; VEC], q: &[f32; VEC], r: &[f32; VEC]| -> [[f32; VEC]; 4] {
            let mut out = [[0.0f32; VEC]; 4];
            for l in 0..VEC {
                out[0][l] = p[l];
                out[1][l] = 0.5 * (p[l] + q[l] + r[l]);
                out[2][l] = 0.5 * (p[l] - q[l] + r[l]);
                out[3][l] = r[l];
            }
            out
        };
        // G g: the kernel's rows combined, column by column (gg[column][row]); then (G g) G^T.
        let gg: [[[f32; VEC]; 4]; 3] = std::array::from_fn(|j| comb(&g[j], &g[3 + j], &g[6 + j]));
        for r in 0..4 {
            for (k, row) in comb(&gg[0][r], &gg[1][r], &gg[2][r]).iter().enumerate() {
                // SAFETY: entries (4 r + k, o, i0..i0 + n) of [XI][c_out][c], written by the
                // task of output channel o only.
                unsafe {
                    let at = dst.at(((4 * r + k) * c_out + o) * c + i0);
                    std::ptr::copy_nonoverlapping(row.as_ptr(), at, n);
                }
            }
        }
    }
}

/// [`direct::Convolve`] by Winograd F(2x2, 3x3) (see the module doc): images in parallel, or
/// the blocks of tiles of one image.
#[allow(clippy::too_many_arguments)]
pub(super) fn convolve(
    isa: Isa,
    x: &[f32],
    [batch, c, h, w]: [usize; 4],
    pad: [(usize, usize); 2],
    dilation: [usize; 2],
    c_out: usize,
    weights: Weights,
    y: &mut [f32],
    finish: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    assert_eq!(
        dilation,
        [1, 1],
        "Winograd F(2x2, 3x3) takes undilated kernels"
    );
    let grid = Grid::new([c, h, w], pad);
    let (oh, ow) = (grid.oh, grid.ow);
    assert_eq!(y.len(), batch * c_out * oh * ow, "output size");
    let u = transform_weights(&WeightView::new(weights, c_out, c), c_out, c);
    let blocks = grid.tiles().div_ceil(NT);
    direct::per_image(y, c_out * oh * ow, |b, yb, parallel| {
        let mut planes = Scratch::take(c * grid.plane() + 2 * VEC);
        grid.split(&mut planes, &x[b * c * h * w..(b + 1) * c * h * w]);
        let p = Problem {
            grid: &grid,
            planes: &planes,
            u: &u,
            c_out,
            out: Shared(yb.as_mut_ptr()),
        };
        let run = |k: usize| block(isa, &p, k * NT);
        if parallel {
            (0..blocks).into_par_iter().for_each(run);
            yb.par_chunks_mut(oh * ow)
                .enumerate()
                .for_each(|(co, p)| finish(co, p));
        } else {
            (0..blocks).for_each(run);
            yb.chunks_mut(oh * ow)
                .enumerate()
                .for_each(|(co, p)| finish(co, p));
        }
    });
}

/// The tiles `t0..t0 + NT` of one image (row-major on the padded grid): input transform,
/// products, output transform into `out` (`[c_out][oh][ow]`, this task's tiles only), compiled
/// for variant `isa`.
fn block(isa: Isa, p: &Problem, t0: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        fn wide(p: &Problem, t0: usize) {
            let c = p.grid.c;
            let mut v = Scratch::take(XI * c * NT);
            let mut m = Scratch::take(XI * p.c_out * NT);
            avx512::input_transform(p.grid, p.planes, t0, &mut v);
            products_avx512(p.u, &v, p.c_out, c, &mut m);
            avx512::output_transform(p.grid, &m, p.c_out, t0, p.out);
        }
        #[target_feature(enable = "avx2,fma")]
        fn narrow(p: &Problem, t0: usize) {
            block_generic(p, t0, products_generic::<8, 6, 2>);
        }
        match isa {
            // SAFETY: `isa` comes from `Isa::detect`: the CPU has these features.
            Isa::Wide => return unsafe { wide(p, t0) },
            // SAFETY: as above.
            Isa::Narrow => return unsafe { narrow(p, t0) },
            Isa::Plain => {}
        }
    }
    debug_assert_eq!(isa, Isa::Plain);
    block_generic(p, t0, products_generic::<8, 4, 2>);
}

/// One image's problem: its split planes, the transformed weights, the output.
struct Problem<'a> {
    grid: &'a Grid,
    planes: &'a [f32],
    u: &'a [f32],
    c_out: usize,
    out: Shared,
}

/// [`block`] with `products(u, v, c_out, c, m)` computing `M = U V`.
#[inline(always)]
fn block_generic(
    p: &Problem,
    t0: usize,
    products: impl Fn(&[f32], &[f32], usize, usize, &mut [f32]),
) {
    let c = p.grid.c;
    let mut v = Scratch::take(XI * c * NT);
    let mut m = Scratch::take(XI * p.c_out * NT);
    input_transform(p.grid, p.planes, t0, &mut v);
    products(p.u, &v, p.c_out, c, &mut m);
    output_transform(p.grid, &m, p.c_out, t0, p.out);
}

/// The transforms with AVX-512 intrinsics, sixteen tiles per vector: written as arrays, the
/// compiler mixed 128-bit operations and gathers (the output transform took half as long as
/// the products on 128 channels 128x128).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::super::scratch::Scratch;
    use super::{GradProblem, Grid, NT, Shared, VEC, XI};
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps,
        _mm512_mul_ps, _mm512_permutex2var_ps, _mm512_set_epi32, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps, _mm512_sub_ps,
    };

    /// `(B^T e)` for the four vectors of a row or column: e0 - e2, e1 + e2, e2 - e1, e1 - e3.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn bt(e: [__m512; 4]) -> [__m512; 4] {
        [
            _mm512_sub_ps(e[0], e[2]),
            _mm512_add_ps(e[1], e[2]),
            _mm512_sub_ps(e[2], e[1]),
            _mm512_sub_ps(e[1], e[3]),
        ]
    }

    /// `(A^T e)`: e0 + e1 + e2, e1 - e2 - e3.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn at(e: [__m512; 4]) -> [__m512; 2] {
        [
            _mm512_add_ps(_mm512_add_ps(e[0], e[1]), e[2]),
            _mm512_sub_ps(_mm512_sub_ps(e[1], e[2]), e[3]),
        ]
    }

    /// [`super::input_transform`].
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) fn input_transform(grid: &Grid, planes: &[f32], t0: usize, v: &mut [f32]) {
        let c = grid.c;
        assert!(v.len() >= XI * c * NT);
        let dst = v.as_mut_ptr();
        for g in 0..NT / VEC {
            for ci in 0..c {
                transform_tiles(grid, planes, ci, t0 + g * VEC, &mut |xi, val| {
                    // SAFETY: (xi c + ci) NT + g VEC + VEC <= XI c NT <= v.len().
                    unsafe { _mm512_storeu_ps(dst.add((xi * c + ci) * NT + g * VEC), val) }
                });
            }
        }
    }

    /// One block of tiles of the weight gradient: `V` (input channels contiguous) and
    /// `GT = A dY A^T` (tiles contiguous), then `m[xi][co][ci] += sum over t of
    /// GT[xi][co][t] V[xi][t][ci]`.
    ///
    /// # Safety
    /// The CPU has AVX-512.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) unsafe fn weight_block(p: &GradProblem, t0: usize, m: &mut [f32]) {
        let (c, c_out, cp) = (p.grid.c, p.c_out, p.cp);
        let mut v = Scratch::take(XI * NT * cp);
        let mut gt = Scratch::take(XI * c_out * NT);
        let mut tmp = Scratch::take(XI * VEC * VEC);
        // V: the forward's transform, sixteen tiles by sixteen channels at a time, transposed.
        for c0 in (0..cp).step_by(VEC) {
            for g in 0..NT / VEC {
                for cl in 0..VEC {
                    let ci = c0 + cl;
                    if ci >= c {
                        for xi in 0..XI {
                            tmp[(xi * VEC + cl) * VEC..][..VEC].fill(0.0);
                        }
                        continue;
                    }
                    transform_tiles(p.grid, p.planes, ci, t0 + g * VEC, &mut |xi, val| {
                        // SAFETY: (xi VEC + cl) VEC + VEC <= XI VEC VEC.
                        unsafe {
                            _mm512_storeu_ps(tmp.as_mut_ptr().add((xi * VEC + cl) * VEC), val)
                        }
                    });
                }
                for xi in 0..XI {
                    let block = &tmp[xi * VEC * VEC..][..VEC * VEC];
                    let dst = &mut v[(xi * NT + g * VEC) * cp + c0..];
                    for t in 0..VEC {
                        for cl in 0..VEC {
                            dst[t * cp + cl] = block[cl * VEC + t];
                        }
                    }
                }
            }
        }
        // GT = A dY A^T, A = [[1, 0], [1, 1], [1, -1], [0, -1]], sixteen tiles per vector.
        let (gs, half) = (p.gs, p.gs.half);
        for (g, ty, tx) in p.grid.groups(t0) {
            for co in 0..c_out {
                let dst = gt.as_mut_ptr();
                let store = |xi: usize, val: __m512| unsafe {
                    _mm512_storeu_ps(dst.add((xi * c_out + co) * NT + g * VEC), val)
                };
                if ty >= p.grid.th {
                    (0..XI).for_each(|xi| store(xi, _mm512_setzero_ps()));
                    continue;
                }
                // SAFETY: rows 2 ty + i < 2 th and columns tx + VEC <= twp = half of channel
                // co < c_out: inside the gradient's planes.
                let y: [[__m512; 2]; 2] = std::array::from_fn(|i| unsafe {
                    let row = p
                        .gplanes
                        .as_ptr()
                        .add(co * gs.plane + (2 * ty + i) * 2 * half + tx);
                    [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(half))]
                });
                // A y: rows; then (A y) A^T: columns.
                let a = |e: [__m512; 2]| -> [__m512; 4] {
                    [
                        e[0],
                        _mm512_add_ps(e[0], e[1]),
                        _mm512_sub_ps(e[0], e[1]),
                        _mm512_sub_ps(_mm512_setzero_ps(), e[1]),
                    ]
                };
                // z[j][a]: row a of A y at column j.
                let z: [[__m512; 4]; 2] = std::array::from_fn(|j| a([y[0][j], y[1][j]]));
                for r in 0..4 {
                    for (b, val) in a([z[0][r], z[1][r]]).into_iter().enumerate() {
                        store(4 * r + b, val);
                    }
                }
            }
        }
        // m[xi][co][ci] += GT[xi][co][..] V[xi][..][ci]: 8 output channels by 3 vectors of
        // input channels per register tile.
        for xi in 0..XI {
            let (gxi, vxi) = (gt[xi * c_out * NT..].as_ptr(), v[xi * NT * cp..].as_ptr());
            for b in 0..c_out.div_ceil(8) {
                let rows: [usize; 8] = std::array::from_fn(|r| (b * 8 + r).min(c_out - 1) * NT);
                let mut c0 = 0;
                while c0 < cp {
                    match (cp - c0) / VEC {
                        1 => products_grad::<1>(gxi, vxi, rows, c0, b, xi, p, m),
                        2 => products_grad::<2>(gxi, vxi, rows, c0, b, xi, p, m),
                        _ => products_grad::<3>(gxi, vxi, rows, c0, b, xi, p, m),
                    }
                    c0 += VEC * ((cp - c0) / VEC).min(3);
                }
            }
        }
    }

    /// `acc[r][k] = sum over j < n of a[rows[r] + j] b[j ld + 16 k..][..16]`: the register
    /// tile of both products (8 rows of broadcasts by `C` vectors, 8 C accumulators).
    ///
    /// # Safety
    /// The CPU has AVX-512; every `a[rows[r] + j]` and `b[j ld + 16 C - 1]` with `j < n` is
    /// readable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) unsafe fn outer_products<const C: usize>(
        a: *const f32,
        rows: [usize; 8],
        b: *const f32,
        ld: usize,
        n: usize,
    ) -> [[__m512; C]; 8] {
        let mut acc = [[_mm512_setzero_ps(); C]; 8];
        for j in 0..n {
            // SAFETY: the caller's contract.
            unsafe {
                let src = b.add(j * ld);
                let xv: [__m512; C] = std::array::from_fn(|k| _mm512_loadu_ps(src.add(k * VEC)));
                let pa = a.add(j);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let w = _mm512_set1_ps(*pa.add(rows[r]));
                    for (s, &x) in acc.iter_mut().zip(&xv) {
                        *s = _mm512_fmadd_ps(w, x, *s);
                    }
                }
            }
        }
        acc
    }

    /// One register tile of [`weight_block`]'s products: output channels `8 b..8 b + 8`
    /// (rows of `GT[xi]` at `rows`) by input channels `c0..c0 + 16 C`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    fn products_grad<const C: usize>(
        gxi: *const f32,
        vxi: *const f32,
        rows: [usize; 8],
        c0: usize,
        b: usize,
        xi: usize,
        p: &GradProblem,
        m: &mut [f32],
    ) {
        let (c_out, cp) = (p.c_out, p.cp);
        // SAFETY: t < NT and c0 + 16 C <= cp: inside V[xi]; rows of output channels < c_out
        // plus t < NT: inside GT[xi].
        let acc = unsafe { outer_products::<C>(gxi, rows, vxi.add(c0), cp, NT) };
        for (r, a) in acc.iter().enumerate() {
            let co = b * 8 + r;
            if co >= c_out {
                break;
            }
            let dst = m[(xi * c_out + co) * cp + c0..][..C * VEC].as_mut_ptr();
            for (k, &s) in a.iter().enumerate() {
                // SAFETY: k 16 + 16 <= 16 C floats of row co of m[xi].
                unsafe {
                    let at = dst.add(k * VEC);
                    _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), s));
                }
            }
        }
    }

    /// The input transform of sixteen tiles `t0..t0 + 16` (one row of tiles) of channel `ci`:
    /// `put(xi, (B^T d B)[xi])`, zeros past the last row of tiles.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    fn transform_tiles(
        grid: &Grid,
        planes: &[f32],
        ci: usize,
        t0: usize,
        put: &mut impl FnMut(usize, __m512),
    ) {
        let (half, plane) = (grid.half(), grid.plane());
        let (ty, tx) = (t0 / grid.twp, t0 % grid.twp);
        if ty >= grid.th {
            (0..XI).for_each(|xi| put(xi, _mm512_setzero_ps()));
            return;
        }
        assert!((ci + 1) * plane <= planes.len());
        // d[r][k]: input row 2 ty + r, padded columns 2 tx + k of the sixteen tiles: even
        // and odd columns tx and tx + 1 of the split row.
        // SAFETY: rows 2 ty + r < rows and columns up to tx + 1 + VEC <= twp + 1 = half of
        // channel ci: inside the planes (asserted above).
        let d: [[__m512; 4]; 4] = std::array::from_fn(|r| unsafe {
            let row = planes
                .as_ptr()
                .add(ci * plane + (2 * ty + r) * 2 * half + tx);
            [
                _mm512_loadu_ps(row),
                _mm512_loadu_ps(row.add(half)),
                _mm512_loadu_ps(row.add(1)),
                _mm512_loadu_ps(row.add(half + 1)),
            ]
        });
        // cols[k][a]: row a of B^T d at column k; then row a of (B^T d) B.
        let cols: [[__m512; 4]; 4] =
            std::array::from_fn(|k| bt([d[0][k], d[1][k], d[2][k], d[3][k]]));
        for a in 0..4 {
            let out = bt([cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
            for (b, val) in out.into_iter().enumerate() {
                put(4 * a + b, val);
            }
        }
    }

    /// See [`super::deinterleave`].
    ///
    /// # Safety
    /// The CPU has AVX-512.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) unsafe fn deinterleave(pairs: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
        let n = (pairs.len() / 2).min(even.len()).min(odd.len()) / VEC * VEC;
        let pick_even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let pick_odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        for k in (0..n).step_by(VEC) {
            // SAFETY: 2 (k + 16) <= 2 n <= pairs.len(), k + 16 <= n <= even.len(), odd.len().
            unsafe {
                let a = _mm512_loadu_ps(pairs.as_ptr().add(2 * k));
                let b = _mm512_loadu_ps(pairs.as_ptr().add(2 * k + VEC));
                _mm512_storeu_ps(
                    even.as_mut_ptr().add(k),
                    _mm512_permutex2var_ps(a, pick_even, b),
                );
                _mm512_storeu_ps(
                    odd.as_mut_ptr().add(k),
                    _mm512_permutex2var_ps(a, pick_odd, b),
                );
            }
        }
        n
    }

    /// Output channel `co`'s row of dW (`[c_in][9]`) from `m` (`[XI][c_out][cp]`):
    /// `G^T M G` per input channel, sixteen input channels per vector.
    ///
    /// # Safety
    /// The CPU has AVX-512.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) unsafe fn weight_transform(
        m: &[f32],
        c_out: usize,
        cp: usize,
        co: usize,
        row: &mut [f32],
    ) {
        assert!(m.len() >= XI * c_out * cp && co < c_out && row.len().is_multiple_of(9));
        let c_in = row.len() / 9;
        let half = _mm512_set1_ps(0.5);
        for c0 in (0..c_in).step_by(VEC) {
            // SAFETY: (xi c_out + co) cp + c0 + 16 <= XI c_out cp (c0 < c_in <= cp - 16 + ...:
            // cp is c_in rounded up to 16).
            let mv: [__m512; XI] = std::array::from_fn(|xi| unsafe {
                _mm512_loadu_ps(m.as_ptr().add((xi * c_out + co) * cp + c0))
            });
            // G^T M (rows a of M combined): p[i][b]; then (G^T M) G (columns b): k[i][j].
            let g = |e: [__m512; 4]| -> [__m512; 3] {
                let mid = _mm512_add_ps(e[1], e[2]);
                [
                    _mm512_fmadd_ps(half, mid, e[0]),
                    _mm512_mul_ps(half, _mm512_sub_ps(e[1], e[2])),
                    _mm512_fmadd_ps(half, mid, e[3]),
                ]
            };
            let p: [[__m512; 3]; 4] =
                std::array::from_fn(|b| g([mv[b], mv[4 + b], mv[8 + b], mv[12 + b]]));
            let mut k = [[0.0f32; VEC]; 9];
            for i in 0..3 {
                for (j, v) in g([p[0][i], p[1][i], p[2][i], p[3][i]])
                    .into_iter()
                    .enumerate()
                {
                    // SAFETY: 16 floats of row 3 i + j of k.
                    unsafe { _mm512_storeu_ps(k[3 * i + j].as_mut_ptr(), v) };
                }
            }
            for (l, taps) in row[c0 * 9..].chunks_mut(9).take(VEC).enumerate() {
                for (t, tap) in taps.iter_mut().enumerate() {
                    *tap = k[t][l];
                }
            }
        }
    }

    /// [`super::output_transform`].
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) fn output_transform(grid: &Grid, m: &[f32], c_out: usize, t0: usize, out: Shared) {
        let (oh, ow) = (grid.oh, grid.ow);
        assert!(m.len() >= XI * c_out * NT);
        let src = m.as_ptr();
        // Lanes of (even, odd) interleaved: the first and the second sixteen outputs.
        let lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        let hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        for (g, ty, tx) in grid.groups(t0) {
            if ty >= grid.th || 2 * tx >= ow {
                continue;
            }
            let width = (ow - 2 * tx).min(2 * VEC);
            for co in 0..c_out {
                // SAFETY: (xi c_out + co) NT + g VEC + VEC <= XI c_out NT (asserted above).
                let mv: [__m512; XI] = std::array::from_fn(|xi| unsafe {
                    _mm512_loadu_ps(src.add((xi * c_out + co) * NT + g * VEC))
                });
                // s[b][i]: row i of A^T m at column b.
                let s: [[__m512; 2]; 4] =
                    std::array::from_fn(|b| at([mv[b], mv[4 + b], mv[8 + b], mv[12 + b]]));
                for i in 0..2 {
                    let row = 2 * ty + i;
                    if row >= oh {
                        break;
                    }
                    let [even, odd] = at([s[0][i], s[1][i], s[2][i], s[3][i]]);
                    let first = _mm512_permutex2var_ps(even, lo, odd);
                    let second = _mm512_permutex2var_ps(even, hi, odd);
                    // SAFETY: row < oh, columns 2 tx..2 tx + width <= ow of output channel
                    // co < c_out: inside `[c_out][oh][ow]`, and only this task's tiles.
                    unsafe {
                        let dst = out.at((co * oh + row) * ow + 2 * tx);
                        if width == 2 * VEC {
                            _mm512_storeu_ps(dst, first);
                            _mm512_storeu_ps(dst.add(VEC), second);
                        } else {
                            let mask = |n: usize| ((1u32 << n.min(VEC)) - 1) as u16;
                            _mm512_mask_storeu_ps(dst, mask(width), first);
                            if width > VEC {
                                _mm512_mask_storeu_ps(dst.add(VEC), mask(width - VEC), second);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `V[xi][ci][t - t0] = (B^T d B)[xi]` for the block's tiles, with
/// `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`; tiles past the last
/// row of tiles get zeros.
#[inline(always)]
fn input_transform(grid: &Grid, planes: &[f32], t0: usize, v: &mut [f32]) {
    let (c, half, plane) = (grid.c, grid.half(), grid.plane());
    assert!(v.len() >= XI * c * NT && planes.len() >= c * plane);
    let (src, dst) = (planes.as_ptr(), v.as_mut_ptr());
    for (g, ty, tx) in grid.groups(t0) {
        for ci in 0..c {
            let at = |xi: usize| (xi * c + ci) * NT + g * VEC;
            let store = |xi: usize, val: [f32; VEC]| {
                // SAFETY: at(xi) + VEC <= XI c NT <= v.len() (asserted above).
                unsafe { dst.add(at(xi)).cast::<[f32; VEC]>().write_unaligned(val) }
            };
            if ty >= grid.th {
                (0..XI).for_each(|xi| store(xi, [0.0; VEC]));
                continue;
            }
            // d[r][k]: input row 2 ty + r, padded columns 2 tx + k of the sixteen tiles: even
            // and odd columns tx and tx + 1 of the split row.
            let row = |r: usize| ci * plane + (2 * ty + r) * 2 * half + tx;
            let load = |at: usize| -> [f32; VEC] {
                // SAFETY: rows 2 ty + r < rows and columns tx + 1 + VEC <= twp + 1 = half of
                // channel ci < c: inside the planes.
                unsafe { src.add(at).cast::<[f32; VEC]>().read_unaligned() }
            };
            let mut d = [[[0.0f32; VEC]; 4]; 4];
            for (r, dr) in d.iter_mut().enumerate() {
                let at = row(r);
                *dr = [load(at), load(at + half), load(at + 1), load(at + half + 1)];
            }
            // B^T d (rows combined), then (B^T d) B (columns): e0 - e2, e1 + e2, e2 - e1,
            // e1 - e3.
            let bt = |e: [&[f32; VEC]; 4]| -> [[f32; VEC]; 4] {
                let mut out = [[0.0f32; VEC]; 4];
                for l in 0..VEC {
                    out[0][l] = e[0][l] - e[2][l];
                    out[1][l] = e[1][l] + e[2][l];
                    out[2][l] = e[2][l] - e[1][l];
                    out[3][l] = e[1][l] - e[3][l];
                }
                out
            };
            // cols[k][a]: row a of B^T d at column k.
            let mut cols = [[[0.0f32; VEC]; 4]; 4];
            for (k, col) in cols.iter_mut().enumerate() {
                *col = bt([&d[0][k], &d[1][k], &d[2][k], &d[3][k]]);
            }
            for a in 0..4 {
                let out = bt([&cols[0][a], &cols[1][a], &cols[2][a], &cols[3][a]]);
                for (b, val) in out.into_iter().enumerate() {
                    store(4 * a + b, val);
                }
            }
        }
    }
}

/// `M[xi] = U[xi] V[xi]` for the sixteen `xi` (`[c_out][NT]` each), with register tiles of `R`
/// output channels by `C` vectors of `L` tiles.
#[inline(always)]
fn products_generic<const L: usize, const R: usize, const C: usize>(
    u: &[f32],
    v: &[f32],
    c_out: usize,
    c: usize,
    m: &mut [f32],
) {
    assert!(NT.is_multiple_of(L * C));
    assert!(u.len() >= XI * c_out * c && v.len() >= XI * c * NT && m.len() >= XI * c_out * NT);
    for xi in 0..XI {
        let (uxi, vxi) = (&u[xi * c_out * c..], &v[xi * c * NT..]);
        for b in 0..c_out.div_ceil(R) {
            // Rows past the last output channel read the last one (their results are dropped).
            let rows: [usize; R] = std::array::from_fn(|r| (b * R + r).min(c_out - 1) * c);
            for q in (0..NT).step_by(L * C) {
                let mut acc = [[[0.0f32; L]; C]; R];
                for ci in 0..c {
                    // SAFETY: ci < c and q + L C <= NT: inside V[xi] (asserted above); row
                    // offsets of output channels < c_out plus ci < c: inside U[xi].
                    unsafe {
                        let src = vxi.as_ptr().add(ci * NT + q);
                        let xv: [[f32; L]; C] =
                            std::array::from_fn(|k| src.add(k * L).cast::<[f32; L]>().read());
                        let pw = uxi.as_ptr().add(ci);
                        for r in 0..R {
                            let w = *pw.add(rows[r]);
                            for k in 0..C {
                                for l in 0..L {
                                    acc[r][k][l] = w.mul_add(xv[k][l], acc[r][k][l]);
                                }
                            }
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    let co = b * R + r;
                    if co >= c_out {
                        break;
                    }
                    let dst = &mut m[(xi * c_out + co) * NT + q..][..L * C];
                    for (k, vec) in a.iter().enumerate() {
                        dst[k * L..(k + 1) * L].copy_from_slice(vec);
                    }
                }
            }
        }
    }
}

/// [`products_generic`] for AVX-512 with intrinsics (8 output channels by 3 vectors): written
/// as arrays, the compiler vectorised this loop nest along output channels with gathers
/// (27 GFLOP/s).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn products_avx512(u: &[f32], v: &[f32], c_out: usize, c: usize, m: &mut [f32]) {
    use std::arch::x86_64::_mm512_storeu_ps;
    const L: usize = 16;
    const R: usize = 8;
    const C: usize = NT / L;
    assert!(u.len() >= XI * c_out * c && v.len() >= XI * c * NT && m.len() >= XI * c_out * NT);
    for xi in 0..XI {
        let (uxi, vxi) = (u[xi * c_out * c..].as_ptr(), v[xi * c * NT..].as_ptr());
        for b in 0..c_out.div_ceil(R) {
            // Rows past the last output channel read the last one (their results are dropped).
            let rows: [usize; R] = std::array::from_fn(|r| (b * R + r).min(c_out - 1) * c);
            // SAFETY: ci < c: inside V[xi] (asserted above); row offsets of output channels
            // < c_out plus ci < c: inside U[xi].
            let acc = unsafe { avx512::outer_products::<C>(uxi, rows, vxi, NT, c) };
            for (r, a) in acc.iter().enumerate() {
                let co = b * R + r;
                if co >= c_out {
                    break;
                }
                let dst = m[(xi * c_out + co) * NT..][..NT].as_mut_ptr();
                for (k, &s) in a.iter().enumerate() {
                    // SAFETY: k L + L <= NT floats of row co of M[xi].
                    unsafe { _mm512_storeu_ps(dst.add(k * L), s) };
                }
            }
        }
    }
}

/// `Y = A^T M A` per tile, `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`, into the outputs of the
/// block's tiles (those inside `oh x ow`).
#[inline(always)]
fn output_transform(grid: &Grid, m: &[f32], c_out: usize, t0: usize, out: Shared) {
    let (oh, ow) = (grid.oh, grid.ow);
    assert!(m.len() >= XI * c_out * NT);
    let src = m.as_ptr();
    for (g, ty, tx) in grid.groups(t0) {
        if ty >= grid.th || 2 * tx >= ow {
            continue;
        }
        let width = (ow - 2 * tx).min(2 * VEC);
        for co in 0..c_out {
            let mut mv = [[0.0f32; VEC]; XI];
            for (xi, v) in mv.iter_mut().enumerate() {
                // SAFETY: (xi c_out + co) NT + g VEC + VEC <= XI c_out NT (asserted above).
                *v = unsafe {
                    src.add((xi * c_out + co) * NT + g * VEC)
                        .cast::<[f32; VEC]>()
                        .read_unaligned()
                };
            }
            // The two rows of A^T applied to e: e0 + e1 + e2 and e1 - e2 - e3.
            let at = |e: [&[f32; VEC]; 4]| -> [[f32; VEC]; 2] {
                let mut out = [[0.0f32; VEC]; 2];
                for l in 0..VEC {
                    out[0][l] = e[0][l] + e[1][l] + e[2][l];
                    out[1][l] = e[1][l] - e[2][l] - e[3][l];
                }
                out
            };
            // s[b][i]: row i of A^T m at column b.
            let mut s = [[[0.0f32; VEC]; 2]; 4];
            for (b, col) in s.iter_mut().enumerate() {
                *col = at([&mv[b], &mv[4 + b], &mv[8 + b], &mv[12 + b]]);
            }
            for i in 0..2 {
                let row = 2 * ty + i;
                if row >= oh {
                    break;
                }
                let [even, odd] = at([&s[0][i], &s[1][i], &s[2][i], &s[3][i]]);
                let mut line = [0.0f32; 2 * VEC];
                for l in 0..VEC {
                    line[2 * l] = even[l];
                    line[2 * l + 1] = odd[l];
                }
                // SAFETY: row < oh, columns 2 tx..2 tx + width <= ow of output channel
                // co < c_out: inside `[c_out][oh][ow]`, and only this task's tiles.
                unsafe {
                    let dst = out.at((co * oh + row) * ow + 2 * tx);
                    if width == 2 * VEC {
                        dst.cast::<[f32; 2 * VEC]>().write_unaligned(line);
                    } else {
                        std::ptr::copy_nonoverlapping(line.as_ptr(), dst, width);
                    }
                }
            }
        }
    }
}

/// Whether [`weight_grad`] computes this convolution's weight gradient: as [`applies`], on
/// CPUs with AVX-512 (its kernels exist in that variant only; others take the direct kernel).
pub(super) fn weight_grad_applies(s: &Shape2d, o: &ConvOptions<2>) -> bool {
    applies(s, o) && Isa::detect() == Isa::Wide
}

/// `dW[co][ci][3][3]` of `y = conv(x, w)` from `g = dL/dy` by Winograd F(2x2, 3x3): with
/// `Y = A^T [(G w G^T) . V] A` per tile, `dW = G^T (sum over tiles of (A dY A^T) . V) G`, so
/// that per tile and pair of channels the sum costs 16 multiply-adds instead of 36.
/// `V` is the forward's input transform (laid out with input channels contiguous), the sum
/// over tiles sixteen products `M[xi] = GT[xi] V[xi]` (`c_out x tiles` by `tiles x c_in`)
/// accumulated block by block; the threads split the tiles, each summing into its own `M`.
pub(super) fn weight_grad(x: &[f32], g: &[f32], s: &Shape2d, o: &ConvOptions<2>) -> Vec<f32> {
    assert!(weight_grad_applies(s, o));
    let grid = Grid::new([s.c_in, s.h, s.w], o.padding);
    assert_eq!([grid.oh, grid.ow], [s.oh, s.ow], "output size");
    let (c_in, c_out) = (s.c_in, s.c_out);
    let cp = c_in.next_multiple_of(VEC);
    let gs = grid.grad_split();
    let blocks = grid.tiles().div_ceil(NT);
    let tasks = rayon::current_num_threads().min(blocks).max(1);
    let mut sums: Vec<Vec<f32>> = (0..tasks).map(|_| vec![0.0f32; XI * c_out * cp]).collect();
    let mut planes = Scratch::take(c_in * grid.plane() + 2 * VEC);
    let mut gplanes = Scratch::take(c_out * gs.plane + 2 * VEC);
    let (image, out) = (c_in * s.h * s.w, c_out * s.oh * s.ow);
    for b in 0..s.batch {
        grid.split(&mut planes, &x[b * image..(b + 1) * image]);
        gs.run(&mut gplanes, &g[b * out..(b + 1) * out]);
        let per_task = blocks.div_ceil(tasks);
        sums.par_iter_mut().enumerate().for_each(|(k, m)| {
            let p = GradProblem {
                grid: &grid,
                planes: &planes,
                gs: &gs,
                gplanes: &gplanes,
                c_out,
                cp,
            };
            for block in k * per_task..((k + 1) * per_task).min(blocks) {
                // SAFETY: `weight_grad_applies` checked that this CPU has AVX-512.
                unsafe { avx512::weight_block(&p, block * NT, m) };
            }
        });
    }
    let (first, rest) = sums.split_first_mut().expect("one task at least");
    for other in rest {
        first
            .par_chunks_mut(4096)
            .zip(other.par_chunks(4096))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
    }
    // dW = G^T M G per pair of channels.
    let m = &*first;
    let mut dw = vec![0.0f32; c_out * c_in * 9];
    dw.par_chunks_mut(c_in * 9)
        .enumerate()
        .for_each(|(co, row)| {
            // SAFETY: `weight_grad_applies` checked that this CPU has AVX-512.
            unsafe { avx512::weight_transform(m, c_out, cp, co, row) };
        });
    dw
}

/// One image's weight-gradient problem: the input's and the output gradient's split planes.
struct GradProblem<'a> {
    grid: &'a Grid,
    planes: &'a [f32],
    gs: &'a Split,
    gplanes: &'a [f32],
    c_out: usize,
    /// Input channels padded to a multiple of [`VEC`] (`V`'s rows).
    cp: usize,
}

#[cfg(test)]
mod tests {
    use super::super::super::scratch::poison;
    use super::super::Epilogue;
    use super::super::direct::tests::{Loops, close, variants};
    use super::*;

    /// Every variant against the loops, forward and input gradient (and the weight gradient,
    /// AVX-512 only): an output whose rows of
    /// tiles are padded (67 columns: 34 tiles in three vectors of 16) and whose last row and
    /// column of tiles are half outside it (65 x 67), a part-filled block of output channels, asymmetric
    /// padding with an odd left side (the first column in the odd half of the split planes).
    #[test]
    fn variants_match_loops() {
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let skew = ConvOptions::new_with_padding([1, 1], [(2, 0), (1, 2)], [1, 1], 1);
        let cases = [
            (Loops::new([2, 32, 65, 67], 33, &same), same.clone()),
            (Loops::new([1, 36, 66, 64], 34, &skew), skew),
        ];
        for (l, o) in &cases {
            assert!(applies(&l.s, o));
            for isa in variants() {
                poison();
                let y = direct::forward(convolve, isa, &l.x, &l.w, &l.s, o, &Epilogue::NONE);
                close(&y, &l.y, &format!("forward {isa:?}"));
                let dx = direct::input_grad(convolve, isa, &l.g, &l.w, &l.s, o);
                close(&dx, &l.dx, &format!("input gradient {isa:?}"));
            }
            if weight_grad_applies(&l.s, o) {
                poison();
                close(&weight_grad(&l.x, &l.g, &l.s, o), &l.dw, "weight gradient");
            }
        }
    }

    /// Rounding against a float64 reference, relative to the output's largest entry: within
    /// twice the direct kernel's (the transforms' extra adds against shorter sums; measured
    /// here 1.9e-6 vs 1.5e-6, and 1.2e-6 vs 2.0e-6 on 128 channels 32x32).
    #[test]
    fn as_accurate_as_the_direct_kernel() {
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let (c, side) = (96, 64);
        let l = Loops::new([1, c, side, side], c, &same);
        assert!(applies(&l.s, &same));
        let mut exact = vec![0.0f64; c * side * side];
        for (at, y) in exact.iter_mut().enumerate() {
            let (co, r, col) = (at / (side * side), (at / side) % side, at % side);
            for ci in 0..c {
                for t in 0..9 {
                    let (ih, iw) = ((r + t / 3).wrapping_sub(1), (col + t % 3).wrapping_sub(1));
                    if ih < side && iw < side {
                        let x = l.x[(ci * side + ih) * side + iw] as f64;
                        *y += l.w[(co * c + ci) * 9 + t] as f64 * x;
                    }
                }
            }
        }
        let largest = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let error = |y: &[f32]| {
            let worst = y
                .iter()
                .zip(&exact)
                .fold(0.0f64, |m, (u, v)| m.max((*u as f64 - v).abs()));
            worst / largest
        };
        let isa = Isa::detect();
        let ours = direct::forward(convolve, isa, &l.x, &l.w, &l.s, &same, &Epilogue::NONE);
        let direct = direct::forward(
            direct::convolve,
            isa,
            &l.x,
            &l.w,
            &l.s,
            &same,
            &Epilogue::NONE,
        );
        let (ours, direct) = (error(&ours), error(&direct));
        assert!(ours <= 2.0 * direct && ours < 1e-5, "{ours} vs {direct}");
    }
}
