//! Direct 3x3 stride-1 convolution on zero-padded input planes: no patch matrix, no GEMM
//! packing.
//!
//! Each input channel is copied once into a plane padded by the convolution's padding,
//! `[hp, wp]`, stored row after row. On that plane, output pixel `(r, c)` sits at `q = r wp + c`
//! and kernel tap `(i, j)` reads the input at `q + i dh wp + j dw`: every tap is the same plane
//! shifted by a constant. So a run of consecutive `q`s (a few output rows, and the `wp - ow`
//! columns between them, computed and dropped) is a vector load per tap, and
//! - forward: `Y[co, q] = sum over ci, taps of W[co, ci, tap] X[ci, q + off(tap)]`, a register
//!   tile of `R` output channels by `C` vectors of `L` positions, each input vector loaded once
//!   per tap and multiplied by `R` broadcast weights, summed over `ci` then taps in that order for
//!   every output (the same bits whatever the batch or the split between threads);
//! - input gradient: the same kernel on the output gradient padded by `dilation (k - 1) - pad`,
//!   with the weights transposed and flipped;
//! - weight gradient: `dW[co, ci, tap] = sum over images, q of G[co, q] X[ci, q + off(tap)]`
//!   with `G` on the padded grid (zeros in the dropped columns): per tap one GEMM whose
//!   right-hand side is the padded planes themselves, shifted (a first version with its own
//!   register tiles, nine taps by three channels, spilled them to the stack: forward +
//!   backward at 128 channels ran at 143 GFLOP/s with it, 253 with the GEMMs).
//!
//! Measured against the patch-matrix GEMMs (`seqgan bench --stage kernels`), see the README.

use rayon::prelude::*;

use super::super::scratch::Scratch;
use super::super::simd::{has_avx2, has_avx512};
use super::{Epilogue, Shape2d};
use burn::tensor::ops::ConvOptions;

/// Kernel taps: the direct kernels serve 3x3 convolutions only.
const TAPS: usize = 9;

/// Narrowest output map the direct kernels take: on smaller maps the dropped columns between
/// rows (`wp - ow`, two for padding 1) are too large a share of each vector (measured on
/// 64 channels, 8x8: forward 112 GFLOP/s here, 149 with the patch-matrix GEMM); those go to
/// `channels_last.rs` or the GEMMs.
pub(super) const MIN_WIDTH: usize = 16;

/// Whether the kernels of this module and `channels_last.rs` can compute this convolution:
/// 3x3, stride 1, each side's padding at most the kernel's dilated reach (so that the input
/// gradient's padding `dilation (k - 1) - pad` is not negative).
pub(super) fn stride_one_3x3(s: &Shape2d, o: &ConvOptions<2>) -> bool {
    let fits = |d: usize| {
        let reach = o.dilation[d] * 2;
        o.padding[d].0 <= reach && o.padding[d].1 <= reach
    };
    s.kh == 3 && s.kw == 3 && o.stride == [1, 1] && fits(0) && fits(1)
}

/// Widest layer (input or output channels) whose small maps take the channels-last kernels
/// and [`weight_grad`]: on deeper layers (VGG-16's 256-512 channels on 8x8-2x2 maps) the
/// patch-matrix GEMMs were faster (measured in the README).
pub(super) const SMALL_MAP_MAX_CHANNELS: usize = 128;

/// Whether this module's kernels compute this convolution (forward and both gradients):
/// [`stride_one_3x3`] with an output at least [`MIN_WIDTH`] wide. Depends on an image's shape
/// only, never on the batch, so an image's forward has the same bits in any batch (see
/// `conv::MIN_COLUMNS`).
pub(super) fn applies(s: &Shape2d, o: &ConvOptions<2>) -> bool {
    stride_one_3x3(s, o) && s.ow >= MIN_WIDTH
}

/// Whether [`weight_grad`] computes this convolution's weight gradient: as [`applies`], and
/// on smaller maps for layers of at most [`SMALL_MAP_MAX_CHANNELS`] channels.
pub(super) fn weight_grad_applies(s: &Shape2d, o: &ConvOptions<2>) -> bool {
    applies(s, o) || (stride_one_3x3(s, o) && s.c_in.max(s.c_out) <= SMALL_MAP_MAX_CHANNELS)
}

/// Which compiled variant runs: AVX-512, AVX2 + FMA, or the plain build.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Isa {
    Wide,
    Narrow,
    Plain,
}

impl Isa {
    pub(super) fn detect() -> Self {
        if has_avx512() {
            Isa::Wide
        } else if has_avx2() {
            Isa::Narrow
        } else {
            Isa::Plain
        }
    }

    /// Output channels per forward register tile (weights are packed in blocks of this many).
    fn rows(self) -> usize {
        match self {
            Isa::Wide => 8,
            Isa::Narrow => 6,
            Isa::Plain => 4,
        }
    }

    /// Positions per forward register tile (`C` vectors of `L` lanes).
    fn columns(self) -> usize {
        match self {
            Isa::Wide => 16 * 3,
            Isa::Narrow | Isa::Plain => 8 * 2,
        }
    }
}

/// One input's padded planes: `c` planes of `hp x wp`, then [`SLACK`] zeros so that the last
/// tile's vectors may read past the last plane.
struct Planes {
    c: usize,
    hp: usize,
    wp: usize,
}

/// Floats after the last plane: a tile reads at most one tile width past the last valid `q`.
const SLACK: usize = 64;

impl Planes {
    fn plane(&self) -> usize {
        self.hp * self.wp
    }

    fn len(&self) -> usize {
        self.c * self.plane() + SLACK
    }

    /// The valid span of `q` for an `oh x ow` output: `(oh - 1) wp + ow`.
    fn span(&self, oh: usize, ow: usize) -> usize {
        (oh - 1) * self.wp + ow
    }

    /// Plane offsets of the nine taps for dilation `[dh, dw]`.
    fn taps(&self, [dh, dw]: [usize; 2]) -> [usize; TAPS] {
        std::array::from_fn(|t| (t / 3) * dh * self.wp + (t % 3) * dw)
    }
}

/// One `h x w` plane `src` into the `hp x wp` plane `dst` (of `p`'s geometry) at offset
/// `top`/`left`, zeros around it.
fn pad_plane(
    dst: &mut [f32],
    src: &[f32],
    p: &Planes,
    [h, w]: [usize; 2],
    [top, left]: [usize; 2],
) {
    for (r, row) in dst[..p.plane()].chunks_mut(p.wp).enumerate() {
        if r < top || r >= top + h {
            row.fill(0.0);
            continue;
        }
        row[..left].fill(0.0);
        row[left..left + w].copy_from_slice(&src[(r - top) * w..(r - top + 1) * w]);
        row[left + w..].fill(0.0);
    }
}

/// `src` (`c` planes of `h x w`) into `dst` as [`Planes`] padded by `top`/`left`, slack zeroed.
fn pad_into(dst: &mut [f32], src: &[f32], p: &Planes, hw: [usize; 2], at: [usize; 2]) {
    let (plane, image) = (p.plane(), hw[0] * hw[1]);
    for (ci, out) in dst[..p.c * plane].chunks_mut(plane).enumerate() {
        pad_plane(out, &src[ci * image..(ci + 1) * image], p, hw, at);
    }
    dst[p.c * plane..].fill(0.0);
}

/// A pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
pub(super) struct Shared(pub(super) *mut f32);
// SAFETY: every user writes a part of the buffer no other task touches (see each use).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer `i` floats on (a method, so that closures capture the `Sync` wrapper).
    ///
    /// # Safety
    /// `i` must lie inside the buffer.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(i) }
    }
}

/// A convolution's weights `[c_out][c_in][3][3]` as the kernels read them: as they are (the
/// forward), or transposed and flipped (the input gradient, a convolution whose output
/// channel `o` is the forward's input channel, its input channel `i` the forward's output
/// channel, its tap `t` the forward's `8 - t`; the field is the forward's input channel count).
#[derive(Clone, Copy)]
pub(super) enum Weights<'a> {
    Forward(&'a [f32]),
    Flipped(&'a [f32], usize),
}

impl Weights<'_> {
    /// Calls `put(lane, i, t, w(o0 + lane, i, t))` for `lanes` output channels from `o0`, every
    /// input channel `i < c` and tap, reading the source in runs of at least nine floats (a
    /// packing that read it along output channels, strided by a whole row, took a third of a
    /// 512-channel 16x16 convolution).
    pub(super) fn visit(
        self,
        o0: usize,
        lanes: usize,
        c: usize,
        mut put: impl FnMut(usize, usize, usize, f32),
    ) {
        match self {
            // w[o][i][t]: input channel by input channel, each lane's nine taps (the rows' cache
            // lines serve the next channels).
            Weights::Forward(w) => {
                let k = c * TAPS;
                for i in 0..c {
                    for lane in 0..lanes {
                        let taps = &w[(o0 + lane) * k + i * TAPS..][..TAPS];
                        for (t, &x) in taps.iter().enumerate() {
                            put(lane, i, t, x);
                        }
                    }
                }
            }
            // w[i][o][8 - t] (`c` rows of `c_in` x 9): the lanes are one run of a row.
            Weights::Flipped(w, c_in) => {
                for i in 0..c {
                    let row = &w[i * c_in * TAPS..(i + 1) * c_in * TAPS];
                    for (lane, taps) in row[o0 * TAPS..(o0 + lanes) * TAPS]
                        .chunks_exact(TAPS)
                        .enumerate()
                    {
                        for (t, &x) in taps.iter().rev().enumerate() {
                            put(lane, i, t, x);
                        }
                    }
                }
            }
        }
    }
}

/// `weights` (`c_out` output channels, `c` input channels) packed for the forward tiles:
/// blocks of `rows` output channels, each `[c][tap][rows]` (zeros past `c_out`).
fn pack(weights: Weights, c_out: usize, c: usize, rows: usize) -> Vec<f32> {
    let blocks = c_out.div_ceil(rows);
    let mut out = vec![0.0f32; blocks * c * TAPS * rows];
    out.par_chunks_mut(c * TAPS * rows)
        .enumerate()
        .for_each(|(b, block)| {
            let lanes = rows.min(c_out - b * rows);
            weights.visit(b * rows, lanes, c, |lane, i, t, x| {
                block[(i * TAPS + t) * rows + lane] = x;
            });
        });
    out
}

/// One forward problem on padded planes: input planes, packed weights, output layout.
struct Forward<'a> {
    x: &'a [f32],
    planes: &'a Planes,
    taps: [usize; TAPS],
    weights: &'a [f32],
    blocks: usize,
    /// Output `[blocks * rows][ld]`, `ld` a multiple of the tile width.
    out: Shared,
    ld: usize,
}

/// The forward tiles of positions `q0..q1` (multiples of the tile width), every block of
/// output channels, variant `isa`.
fn forward_tiles(isa: Isa, f: &Forward, q0: usize, q1: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        fn wide(f: &Forward, q0: usize, q1: usize) {
            forward_generic::<16, 8, 3>(f, q0, q1)
        }
        #[target_feature(enable = "avx2,fma")]
        fn narrow(f: &Forward, q0: usize, q1: usize) {
            forward_generic::<8, 6, 2>(f, q0, q1)
        }
        match isa {
            // SAFETY: `isa` comes from `Isa::detect`: the CPU has these features.
            Isa::Wide => return unsafe { wide(f, q0, q1) },
            // SAFETY: as above.
            Isa::Narrow => return unsafe { narrow(f, q0, q1) },
            Isa::Plain => {}
        }
    }
    debug_assert_eq!(isa, Isa::Plain);
    forward_generic::<8, 4, 2>(f, q0, q1)
}

/// [`forward_tiles`] for `R` output channels by `C` vectors of `L` lanes.
#[inline(always)]
fn forward_generic<const L: usize, const R: usize, const C: usize>(
    f: &Forward,
    q0: usize,
    q1: usize,
) {
    let (c_in, plane) = (f.planes.c, f.planes.plane());
    let per_block = c_in * TAPS * R;
    assert!(f.weights.len() >= f.blocks * per_block && q1.is_multiple_of(L * C));
    // The sum over input channels runs in chunks whose inputs under one tile (its positions
    // and the two rows below, per channel) fit in about 32 KiB, so that they stay in L1 while
    // every block of output channels uses them; partial sums wait in the output between
    // chunks (the same order of terms as one pass).
    let chunk = (8192 / (L * C + f.taps[TAPS - 1])).max(4);
    for c0 in (0..c_in).step_by(chunk) {
        let c1 = (c0 + chunk).min(c_in);
        for q in (q0..q1).step_by(L * C) {
            for b in 0..f.blocks {
                let w = &f.weights[b * per_block..(b + 1) * per_block];
                // SAFETY: rows `b R + r`, positions q..q + L C of the output, which only this
                // task reads and writes (tasks own disjoint ranges of q); inside
                // `[blocks R][ld]`.
                let dst: [&mut [f32]; R] = std::array::from_fn(|r| unsafe {
                    std::slice::from_raw_parts_mut(f.out.0.add((b * R + r) * f.ld + q), L * C)
                });
                let mut acc = [[[0.0f32; L]; C]; R];
                if c0 > 0 {
                    for (a, d) in acc.iter_mut().zip(&dst) {
                        for (c, v) in a.iter_mut().enumerate() {
                            v.copy_from_slice(&d[c * L..(c + 1) * L]);
                        }
                    }
                }
                for ci in c0..c1 {
                    let base = ci * plane + q;
                    let wc = &w[ci * TAPS * R..(ci + 1) * TAPS * R];
                    for (t, &off) in f.taps.iter().enumerate() {
                        let src = &f.x[base + off..base + off + L * C];
                        let mut xv = [[0.0f32; L]; C];
                        for (c, v) in xv.iter_mut().enumerate() {
                            v.copy_from_slice(&src[c * L..(c + 1) * L]);
                        }
                        let wt = &wc[t * R..(t + 1) * R];
                        for r in 0..R {
                            let wv = wt[r];
                            for c in 0..C {
                                for l in 0..L {
                                    acc[r][c][l] = wv.mul_add(xv[c][l], acc[r][c][l]);
                                }
                            }
                        }
                    }
                }
                for (rows, d) in acc.iter().zip(dst) {
                    for (c, v) in rows.iter().enumerate() {
                        d[c * L..(c + 1) * L].copy_from_slice(v);
                    }
                }
            }
        }
    }
}

/// `Y = conv(X, W)` for one image on its padded planes `x` (see [`Planes`]): `c_out` rows
/// of `oh x ow` written to `y`, each row finished with `finish(co, row)`. The tile ranges run
/// on the thread pool when `parallel`.
#[allow(clippy::too_many_arguments)]
fn forward_image(
    isa: Isa,
    x: &[f32],
    planes: &Planes,
    taps: [usize; TAPS],
    weights: &[f32],
    c_out: usize,
    [oh, ow]: [usize; 2],
    y: &mut [f32],
    parallel: bool,
    finish: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let (rows, width) = (isa.rows(), isa.columns());
    let blocks = c_out.div_ceil(rows);
    let ld = planes.span(oh, ow).next_multiple_of(width);
    let mut out = Scratch::take(blocks * rows * ld);
    let f = Forward {
        x,
        planes,
        taps,
        weights,
        blocks,
        out: Shared(out.as_mut_ptr()),
        ld,
    };
    let tiles = ld / width;
    if parallel && tiles > 1 {
        let per_task = tiles.div_ceil(4 * rayon::current_num_threads()).max(1);
        (0..tiles.div_ceil(per_task)).into_par_iter().for_each(|k| {
            let (t0, t1) = (k * per_task, ((k + 1) * per_task).min(tiles));
            forward_tiles(isa, &f, t0 * width, t1 * width);
        });
    } else {
        forward_tiles(isa, &f, 0, ld);
    }
    let wp = planes.wp;
    let compact = |(co, dst): (usize, &mut [f32])| {
        let src = &out[co * ld..];
        for (r, line) in dst.chunks_mut(ow).enumerate() {
            line.copy_from_slice(&src[r * wp..r * wp + ow]);
        }
        finish(co, dst);
    };
    if parallel {
        y.par_chunks_mut(oh * ow).enumerate().for_each(compact);
    } else {
        y.chunks_mut(oh * ow).enumerate().for_each(compact);
    }
}

/// Runs `f(b, out_b)` for each image's `chunk` of `out`: images in parallel (each serial) when
/// there are at least as many as threads, otherwise in turn (each parallel inside).
fn per_image(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32], bool) + Sync) {
    let batch = out.len() / chunk.max(1);
    if batch >= rayon::current_num_threads() {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(b, o)| f(b, o, false));
    } else {
        out.chunks_mut(chunk)
            .enumerate()
            .for_each(|(b, o)| f(b, o, true));
    }
}

/// A direct kernel: `conv(x, weights)` for `x` `[batch][c][h][w]` padded by `pad`
/// (`[top, bottom]`, `[left, right]`) with `c_out` output channels, into `y`
/// `[batch][c_out][oh][ow]`, each output row finished with `finish(co, row)`: [`convolve`]
/// here, `channels_last::convolve` for small maps.
pub(super) type Convolve = fn(
    Isa,
    &[f32],
    [usize; 4],
    [(usize, usize); 2],
    [usize; 2],
    usize,
    Weights,
    &mut [f32],
    &(dyn Fn(usize, &mut [f32]) + Sync),
);

/// `y = conv(x, w)` with the epilogue, NCHW, on `kernel` variant `isa`.
pub(super) fn forward(
    kernel: Convolve,
    isa: Isa,
    x: &[f32],
    w: &[f32],
    s: &Shape2d,
    o: &ConvOptions<2>,
    epilogue: &Epilogue,
) -> Vec<f32> {
    let mut y = vec![0.0f32; s.batch * s.c_out * s.oh * s.ow];
    kernel(
        isa,
        x,
        [s.batch, s.c_in, s.h, s.w],
        o.padding,
        o.dilation,
        s.c_out,
        Weights::Forward(w),
        &mut y,
        &|co, row| epilogue.apply(co, row),
    );
    y
}

/// `dx` of `y = conv(x, w)` from `g = dL/dy` on `kernel` variant `isa`: the convolution of
/// `g` padded by `dilation (k - 1) - pad` with `w` transposed and flipped
/// (`dx[ci] = sum over co, taps t of w[co, ci, 8 - t] g[co]` shifted by tap `t`).
pub(super) fn input_grad(
    kernel: Convolve,
    isa: Isa,
    g: &[f32],
    w: &[f32],
    s: &Shape2d,
    o: &ConvOptions<2>,
) -> Vec<f32> {
    let pad = [0, 1].map(|d| {
        let reach = 2 * o.dilation[d];
        (reach - o.padding[d].0, reach - o.padding[d].1)
    });
    let mut dx = vec![0.0f32; s.batch * s.c_in * s.h * s.w];
    kernel(
        isa,
        g,
        [s.batch, s.c_out, s.oh, s.ow],
        pad,
        o.dilation,
        s.c_in,
        Weights::Flipped(w, s.c_in),
        &mut dx,
        &|_, _| {},
    );
    dx
}

/// [`Convolve`] on padded planes (see the module doc): images in parallel, or the tiles of
/// one image.
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
    let packed = pack(weights, c_out, c, isa.rows());
    let planes = Planes {
        c,
        hp: h + pad[0].0 + pad[0].1,
        wp: w + pad[1].0 + pad[1].1,
    };
    let taps = planes.taps(dilation);
    let out = [planes.hp - 2 * dilation[0], planes.wp - 2 * dilation[1]];
    let image = c * h * w;
    assert_eq!(y.len(), batch * c_out * out[0] * out[1], "output size");
    per_image(y, c_out * out[0] * out[1], |b, yb, parallel| {
        let mut xp = Scratch::take(planes.len());
        let at = [pad[0].0, pad[1].0];
        pad_into(&mut xp, &x[b * image..(b + 1) * image], &planes, [h, w], at);
        forward_image(
            isa, &xp, &planes, taps, &packed, c_out, out, yb, parallel, finish,
        );
    });
}

/// `dW[co, ci, kh, kw]` of `y = conv(x, w)` from `g = dL/dy`: for each tap `t`,
/// `dW[:, :, t] = G . X_t^T` with `G` `[c_out, n]` the output gradient on the padded grid of
/// every image in turn (zeros in the dropped columns and rows) and `X_t` `[c_in, n]` the padded
/// input planes, image after image per channel, shifted by the tap's offset: nine GEMMs over
/// the whole batch, no patch matrix. The inner dimension (every image's planes in turn) is
/// split in `threads` parts (nine GEMMs each, in parallel), summed in order.
pub(super) fn weight_grad(x: &[f32], g: &[f32], s: &Shape2d, o: &ConvOptions<2>) -> Vec<f32> {
    let planes = Planes {
        c: 1,
        hp: s.h + o.padding[0].0 + o.padding[0].1,
        wp: s.w + o.padding[1].0 + o.padding[1].1,
    };
    let taps = planes.taps(o.dilation);
    let (p, hw, plane) = (s.oh * s.ow, s.h * s.w, planes.plane());
    let n = s.batch * plane;
    // X: [c_in][batch][plane] + the largest tap offset; G: [c_out][batch][plane].
    let reach = taps[TAPS - 1];
    let mut xp = Scratch::take(s.c_in * n + reach);
    let mut gq = Scratch::take(s.c_out * n);
    let at = [o.padding[0].0, o.padding[1].0];
    xp[..s.c_in * n]
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(row, dst)| {
            let (ci, b) = (row / s.batch, row % s.batch);
            let src = &x[(b * s.c_in + ci) * hw..][..hw];
            pad_plane(dst, src, &planes, [s.h, s.w], at);
        });
    xp[s.c_in * n..].fill(0.0);
    gq.par_chunks_mut(plane).enumerate().for_each(|(row, dst)| {
        let (co, b) = (row / s.batch, row % s.batch);
        let src = &g[(b * s.c_out + co) * p..][..p];
        pad_plane(dst, src, &planes, [s.oh, s.ow], [0, 0]);
    });
    let (m, k) = (s.c_out, s.c_in);
    let per_part = n.div_ceil(rayon::current_num_threads()).max(1);
    let parts = n.div_ceil(per_part);
    // Part `p`'s nine GEMMs write straight into `dW_p` `[c_out][c_in][9]` (tap `t` at column
    // stride 9 from offset `t`): no per-tap result to transpose afterwards (measured: that
    // transposition, with a zero-filled result per task, made the weight gradient of a
    // 512-channel 16x16 layer run at 91 GFLOP/s). The parts are then summed in order.
    let mut dws = vec![0.0f32; parts * m * k * TAPS];
    let out = Shared(dws.as_mut_ptr());
    (0..parts * TAPS).into_par_iter().for_each(|task| {
        let (part, t) = (task / TAPS, task % TAPS);
        let j0 = part * per_part;
        let len = per_part.min(n - j0);
        // dW_p[co, ci, t] = sum over j0 <= j < j0 + len of G[co, j] X[ci, j + off_t]
        // SAFETY: G's rows are `n` long and the window j0.. + len lies inside each; X's rows
        // are `n` apart and a window ends at most `reach` past its row (inside the next row,
        // or the `reach` floats after the last). The destination is part `part`'s `m x k`
        // entries of tap `t` (row stride 9 k, column stride 9) inside `dws`, which only this
        // task writes (tasks differ in part or tap).
        unsafe {
            let dst = out.at(part * m * k * TAPS + t);
            gemm::gemm(
                m,
                k,
                len,
                dst,
                TAPS as isize,
                (k * TAPS) as isize,
                false,
                gq.as_ptr().add(j0),
                1,
                n as isize,
                xp.as_ptr().add(j0 + taps[t]),
                n as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    let mut parts_iter = dws.chunks_exact(m * k * TAPS);
    let mut dw = parts_iter.next().expect("one part at least").to_vec();
    for part in parts_iter {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += v;
        }
    }
    dw
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The variants this CPU runs: AVX-512 and AVX2 where it has them, and the plain build.
    pub(in super::super) fn variants() -> Vec<Isa> {
        let mut variants = vec![Isa::Plain];
        if has_avx2() {
            variants.push(Isa::Narrow);
        }
        if has_avx512() {
            variants.push(Isa::Wide);
        }
        variants
    }

    /// A 3x3 stride-1 problem `x [batch, c_in, h, w]`, weights `[c_out, c_in, 3, 3]` with its
    /// options, deterministic inputs, the output gradient `g`, and the forward, input gradient
    /// and weight gradient written out as loops:
    /// `y[b, co, r, c] = sum w[co, ci, i, j] x[b, ci, r + i dh - top, c + j dw - left]`.
    pub(in super::super) struct Loops {
        pub s: Shape2d,
        pub x: Vec<f32>,
        pub w: Vec<f32>,
        pub g: Vec<f32>,
        pub y: Vec<f32>,
        pub dx: Vec<f32>,
        pub dw: Vec<f32>,
    }

    impl Loops {
        pub fn new([batch, c_in, h, w]: [usize; 4], c_out: usize, o: &ConvOptions<2>) -> Self {
            let [oh, ow] =
                [0, 1].map(|d| [h, w][d] + o.padding[d].0 + o.padding[d].1 - 2 * o.dilation[d]);
            let s = Shape2d::new([batch, c_in, h, w], [c_out, c_in, 3, 3], [oh, ow]);
            let wave =
                |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * f).sin()).collect() };
            let x = wave(batch * c_in * h * w, 0.37);
            let wt = wave(c_out * c_in * TAPS, 0.91);
            let g = wave(batch * c_out * oh * ow, 0.53);
            let mut y = vec![0.0f32; g.len()];
            let mut dx = vec![0.0f32; x.len()];
            let mut dw = vec![0.0f32; wt.len()];
            for (yi, (yv, gv)) in y.iter_mut().zip(&g).enumerate() {
                let (b, co, r, c) = (
                    yi / (c_out * oh * ow),
                    (yi / (oh * ow)) % c_out,
                    (yi / ow) % oh,
                    yi % ow,
                );
                for ci in 0..c_in {
                    for t in 0..TAPS {
                        let ih = (r + (t / 3) * o.dilation[0]) as isize - o.padding[0].0 as isize;
                        let iw = (c + (t % 3) * o.dilation[1]) as isize - o.padding[1].0 as isize;
                        if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                            continue;
                        }
                        let xi = ((b * c_in + ci) * h + ih as usize) * w + iw as usize;
                        let wi = (co * c_in + ci) * TAPS + t;
                        *yv += wt[wi] * x[xi];
                        dx[xi] += wt[wi] * gv;
                        dw[wi] += gv * x[xi];
                    }
                }
            }
            Self {
                s,
                x,
                w: wt,
                g,
                y,
                dx,
                dw,
            }
        }
    }

    /// `a` against `b` within 1e-4 relative (to 1 + |b|).
    pub(in super::super) fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (u, v)) in a.iter().zip(b).enumerate() {
            assert!(
                (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                "{what} [{i}]: {u} vs {v}"
            );
        }
    }

    /// Every variant against the loops, forward and input gradient; the weight gradient
    /// (GEMMs) too. Small odd sizes: a partly filled last tile of rows and positions;
    /// asymmetric padding, dilation along the width.
    #[test]
    fn variants_match_loops() {
        let o = ConvOptions::new_with_padding([1, 1], [(1, 2), (2, 1)], [1, 2], 1);
        let l = Loops::new([2, 3, 17, 18], 7, &o);
        assert!(applies(&l.s, &o));
        for isa in variants() {
            let y = forward(convolve, isa, &l.x, &l.w, &l.s, &o, &Epilogue::NONE);
            close(&y, &l.y, &format!("forward {isa:?}"));
            let dx = input_grad(convolve, isa, &l.g, &l.w, &l.s, &o);
            close(&dx, &l.dx, &format!("input gradient {isa:?}"));
        }
        close(&weight_grad(&l.x, &l.g, &l.s, &o), &l.dw, "weight gradient");
        // The weight gradient of a small map of a narrow layer (a batch of more images than
        // threads and one of fewer).
        for batch in [1, 5] {
            let o = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
            let l = Loops::new([batch, 5, 6, 7], 4, &o);
            assert!(!applies(&l.s, &o) && weight_grad_applies(&l.s, &o));
            close(
                &weight_grad(&l.x, &l.g, &l.s, &o),
                &l.dw,
                "small-map weight gradient",
            );
        }
    }
}
