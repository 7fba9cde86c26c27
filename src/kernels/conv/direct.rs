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
//!   with `G` on the padded grid (zeros in the dropped columns): a register tile of up to
//!   eight output channels by one row of three taps of one input channel, `G`'s vectors and
//!   the three shifted vectors of `X` loaded once per `3 R` FMAs into vector partial sums
//!   (written with AVX-512 intrinsics: as arrays the compiler vectorised that loop nest along
//!   output channels, with gathers). Earlier versions: a tile of nine taps by three channels
//!   spilled to the stack (143 GFLOP/s forward + backward at 128 channels); one GEMM per tap
//!   on the shifted planes (253) packed both operands, whose inner dimension is contiguous.
//!
//! Measured against the patch-matrix GEMMs (`seqgan bench --stage kernels`), see the README.

use std::ops::Range;

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

    /// Output channels per forward register tile.
    fn rows(self) -> usize {
        match self {
            Isa::Wide => 8,
            Isa::Narrow => 6,
            Isa::Plain => 4,
        }
    }

    /// Weight-gradient register tile: `(most output channels R, lanes L)`, `3 R` accumulators.
    fn weight_tile(self) -> (usize, usize) {
        match self {
            Isa::Wide => (8, 16),
            Isa::Narrow => (4, 8),
            Isa::Plain => (2, 4),
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
    /// Floats from one plane to the next: `hp wp` rounded up to a multiple of 16 in the
    /// forward (each plane starts on a 64-byte boundary: kernel bench 128 channels 256x256
    /// forward 335-343 -> 351 GFLOP/s).
    stride: usize,
}

/// Floats after the last plane: a tile reads at most one tile width past the last valid `q`.
const SLACK: usize = 64;

impl Planes {
    fn plane(&self) -> usize {
        self.stride
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
    for (r, row) in dst[..p.hp * p.wp].chunks_mut(p.wp).enumerate() {
        if r < top || r >= top + h {
            row.fill(0.0);
            continue;
        }
        row[..left].fill(0.0);
        row[left..left + w].copy_from_slice(&src[(r - top) * w..(r - top + 1) * w]);
        row[left + w..].fill(0.0);
    }
    dst[p.hp * p.wp..p.plane()].fill(0.0);
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
    pub(super) unsafe fn at(&self, i: usize) -> *mut f32 {
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

/// A convolution's [`Weights`] (`c_out` output channels, `c` input channels) as the kernels
/// index them, where they lie: entry `(o, i, t)` at `o so + i si + t`, or `+ 8 - t` when
/// `flip`. The forward tiles read it directly: a packed copy per call cost as long as a third
/// of the convolution on layers whose weights were out of cache (paper256's 512-channel 16x16
/// layers: 2.6 ms a call, 0.26 s of a 7 s step in all), and the tiles' broadcasts take any
/// address.
#[derive(Clone, Copy)]
pub(super) struct WeightView<'a> {
    w: &'a [f32],
    so: usize,
    si: usize,
    flip: bool,
    c_out: usize,
}

impl<'a> WeightView<'a> {
    pub(super) fn new(weights: Weights<'a>, c_out: usize, c: usize) -> Self {
        let view = match weights {
            Weights::Forward(w) => (w, c * TAPS, TAPS, false),
            Weights::Flipped(w, c_in) => (w, TAPS, c_in * TAPS, true),
        };
        let (w, so, si, flip) = view;
        assert!(c_out > 0 && c > 0 && (c_out - 1) * so + (c - 1) * si + TAPS <= w.len());
        Self {
            w,
            so,
            si,
            flip,
            c_out,
        }
    }

    /// Calls `put(lane, i, t, w(o0 + lane, i, t))` for `lanes` output channels from `o0`, every
    /// input channel `i < c` and tap: input channel by input channel, each lane's nine taps,
    /// so that the source is read in runs of nine floats (a packing that read it along output
    /// channels, strided by a whole row, took a third of a 512-channel 16x16 convolution).
    pub(super) fn visit(
        &self,
        o0: usize,
        lanes: usize,
        c: usize,
        mut put: impl FnMut(usize, usize, usize, f32),
    ) {
        assert!(o0 + lanes <= self.c_out);
        for i in 0..c {
            for lane in 0..lanes {
                for (t, w) in self.kernel(o0 + lane, i).into_iter().enumerate() {
                    put(lane, i, t, w);
                }
            }
        }
    }

    /// The nine taps `w(o, i, t)` of output channel `o` and input channel `i`.
    pub(super) fn kernel(&self, o: usize, i: usize) -> [f32; TAPS] {
        let taps = &self.w[o * self.so + i * self.si..][..TAPS];
        std::array::from_fn(|t| taps[if self.flip { TAPS - 1 - t } else { t }])
    }
}

/// One forward problem on padded planes: input planes, weights, output layout.
struct Forward<'a> {
    x: &'a [f32],
    planes: &'a Planes,
    taps: [usize; TAPS],
    weights: WeightView<'a>,
    blocks: usize,
    /// Output `[blocks * rows][ld]`, `ld` a multiple of the tile width.
    out: Shared,
    ld: usize,
}

/// The forward tiles of positions `q` (multiples of the tile width) by blocks `b` of output
/// channels, variant `isa`.
fn forward_tiles(isa: Isa, f: &Forward, q: Range<usize>, b: Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        fn wide(f: &Forward, q: Range<usize>, b: Range<usize>) {
            match f.weights.flip {
                false => forward_generic::<16, 8, 3, false>(f, q, b),
                true => forward_generic::<16, 8, 3, true>(f, q, b),
            }
        }
        #[target_feature(enable = "avx2,fma")]
        fn narrow(f: &Forward, q: Range<usize>, b: Range<usize>) {
            match f.weights.flip {
                false => forward_generic::<8, 6, 2, false>(f, q, b),
                true => forward_generic::<8, 6, 2, true>(f, q, b),
            }
        }
        match isa {
            // SAFETY: `isa` comes from `Isa::detect`: the CPU has these features.
            Isa::Wide => return unsafe { wide(f, q, b) },
            // SAFETY: as above.
            Isa::Narrow => return unsafe { narrow(f, q, b) },
            Isa::Plain => {}
        }
    }
    debug_assert_eq!(isa, Isa::Plain);
    match f.weights.flip {
        false => forward_generic::<8, 4, 2, false>(f, q, b),
        true => forward_generic::<8, 4, 2, true>(f, q, b),
    }
}

/// Partial sums a forward task keeps between chunks of input channels, per span of positions
/// (256 KiB): on paper256's 128-channel 256x256 layers a task's whole range (4 MiB) went to
/// memory and back at every chunk (forward 301 -> 318-320 GFLOP/s in the step, input
/// gradient 315 -> 333-340); one tile per span kept the output in L1 but streamed the
/// weights of deep layers at every tile (512 channels 32x32: 368 -> 330).
const SPAN_FLOATS: usize = 65536;

/// [`forward_tiles`] for `R` output channels by `C` vectors of `L` lanes, weights flipped
/// when `FLIP`.
#[inline(always)]
fn forward_generic<const L: usize, const R: usize, const C: usize, const FLIP: bool>(
    f: &Forward,
    qs: Range<usize>,
    bs: Range<usize>,
) {
    let (c_in, plane) = (f.planes.c, f.planes.plane());
    let wv = f.weights;
    assert!(bs.end <= f.blocks && FLIP == wv.flip);
    assert!(qs.end <= f.ld && qs.end.is_multiple_of(L * C));
    // The sum over input channels runs in chunks whose inputs under one tile (its positions
    // and the two rows below, per channel) fit in about 32 KiB, so that they stay in L1 while
    // every block of output channels uses them; partial sums wait in the output between
    // chunks (the same order of terms as one pass), in spans of positions whose partial sums
    // fit in [`SPAN_FLOATS`] (so that they wait in L2, not in memory).
    let chunk = (8192 / (L * C + f.taps[TAPS - 1])).max(4);
    let span = (SPAN_FLOATS / (bs.len() * R)).max(L * C) / (L * C) * (L * C);
    // Every tile's reads lie inside the planes and their slack.
    assert!((c_in - 1) * plane + qs.end + f.taps[TAPS - 1] <= f.x.len());
    for q0 in qs.clone().step_by(span) {
        for c0 in (0..c_in).step_by(chunk) {
            let cs = c0..(c0 + chunk).min(c_in);
            for q in (q0..(q0 + span).min(qs.end)).step_by(L * C) {
                for b in bs.clone() {
                    forward_tile::<L, R, C, FLIP>(f, q, b, cs.clone());
                }
            }
        }
    }
}

/// One register tile of [`forward_generic`]: output channels `b R..(b + 1) R` at positions
/// `q..q + L C`, input channels `cs` added to the partial sums the output holds (none when
/// `cs` starts at 0).
#[inline(always)]
fn forward_tile<const L: usize, const R: usize, const C: usize, const FLIP: bool>(
    f: &Forward,
    q: usize,
    b: usize,
    cs: Range<usize>,
) {
    let (wv, plane) = (f.weights, f.planes.plane());
    // Rows past the last output channel read the last one (their outputs are dropped).
    let rows: [usize; R] = std::array::from_fn(|r| (b * R + r).min(wv.c_out - 1) * wv.so);
    // SAFETY: rows `b R + r`, positions q..q + L C of the output, which only this task reads
    // and writes (tasks own disjoint ranges of q or of blocks); inside `[blocks R][ld]`.
    let dst: [&mut [f32]; R] = std::array::from_fn(|r| unsafe {
        std::slice::from_raw_parts_mut(f.out.0.add((b * R + r) * f.ld + q), L * C)
    });
    let mut acc = [[[0.0f32; L]; C]; R];
    if cs.start > 0 {
        for (a, d) in acc.iter_mut().zip(&dst) {
            for (c, v) in a.iter_mut().enumerate() {
                v.copy_from_slice(&d[c * L..(c + 1) * L]);
            }
        }
    }
    for ci in cs {
        // SAFETY: input channel ci < c_in, positions q + tap offsets + L C within the planes
        // and their slack (asserted by the caller); weights as below.
        unsafe {
            let px = f.x.as_ptr().add(ci * plane + q);
            let pw = wv.w.as_ptr().add(ci * wv.si);
            for (t, &off) in f.taps.iter().enumerate() {
                let src = px.add(off);
                let xv: [[f32; L]; C] =
                    std::array::from_fn(|c| src.add(c * L).cast::<[f32; L]>().read_unaligned());
                let pt = pw.add(if FLIP { TAPS - 1 - t } else { t });
                for r in 0..R {
                    // `o so + i si + tap` with o < c_out, i < c_in, tap < 9 lies inside the
                    // weights (`WeightView::new`).
                    let w = *pt.add(rows[r]);
                    for c in 0..C {
                        for l in 0..L {
                            acc[r][c][l] = w.mul_add(xv[c][l], acc[r][c][l]);
                        }
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

/// `Y = conv(X, W)` for one image on its padded planes `x` (see [`Planes`]): `c_out` rows
/// of `oh x ow` written to `y`, each row finished with `finish(co, row)`. The tile ranges run
/// on the thread pool when `parallel`.
#[allow(clippy::too_many_arguments)]
fn forward_image(
    isa: Isa,
    x: &[f32],
    planes: &Planes,
    taps: [usize; TAPS],
    weights: WeightView,
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
    let (tiles, threads) = (ld / width, rayon::current_num_threads());
    if parallel && blocks >= 2 * threads && c_out * TAPS > planes.plane() {
        // Blocks of output channels in parallel, each over every tile, where the weights
        // outweigh the input: each task then streams its share of the weights once, where
        // a split of the tiles had every task stream all of them (512 channels 16x16, batch
        // 1: forward 215-251 GFLOP/s, 359-378 at batch 8, whose images run in parallel).
        let per_task = blocks.div_ceil(2 * threads);
        (0..blocks.div_ceil(per_task))
            .into_par_iter()
            .for_each(|k| {
                forward_tiles(
                    isa,
                    &f,
                    0..ld,
                    k * per_task..((k + 1) * per_task).min(blocks),
                );
            });
    } else if parallel && tiles > 1 {
        let per_task = tiles.div_ceil(4 * threads).max(1);
        (0..tiles.div_ceil(per_task)).into_par_iter().for_each(|k| {
            let (t0, t1) = (k * per_task, ((k + 1) * per_task).min(tiles));
            forward_tiles(isa, &f, t0 * width..t1 * width, 0..blocks);
        });
    } else {
        forward_tiles(isa, &f, 0..ld, 0..blocks);
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
pub(super) fn per_image(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32], bool) + Sync) {
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
    let mut dx = vec![0.0f32; s.batch * s.c_in * s.h * s.w];
    kernel(
        isa,
        g,
        [s.batch, s.c_out, s.oh, s.ow],
        input_grad_padding(o),
        o.dilation,
        s.c_in,
        Weights::Flipped(w, s.c_in),
        &mut dx,
        &|_, _| {},
    );
    dx
}

/// The padding of the output gradient under which the input gradient of a 3x3 stride-1
/// convolution is a forward convolution (with the weights transposed and flipped):
/// `dilation (k - 1) - pad` on each side.
pub(super) fn input_grad_padding(o: &ConvOptions<2>) -> [(usize, usize); 2] {
    [0, 1].map(|d| {
        let reach = 2 * o.dilation[d];
        (reach - o.padding[d].0, reach - o.padding[d].1)
    })
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
    let weights = WeightView::new(weights, c_out, c);
    let (hp, wp) = (h + pad[0].0 + pad[0].1, w + pad[1].0 + pad[1].1);
    let planes = Planes {
        c,
        hp,
        wp,
        stride: (hp * wp).next_multiple_of(16),
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
            isa, &xp, &planes, taps, weights, c_out, out, yb, parallel, finish,
        );
    });
}

/// Positions per block of the weight gradient's inner dimension: a block of a tile's output
/// gradient rows (8 x 4 KiB) stays in L1 while the tile passes over its input channels
/// (kernel bench: 1024 slightly ahead of 512, whose partial sums went in and out twice as
/// often; 64 channels 8x8 forward + backward 165 -> 179 GFLOP/s, its 800 positions now one
/// block).
const BLOCK: usize = 1024;

/// Input channels per weight-gradient task: its input rows (32 x 4 KiB a block) stay in L2,
/// its vector partial sums take 8 x 32 x 9 x 16 floats (147 KiB).
const CHANNELS_PER_TASK: usize = 32;

/// One weight-gradient problem: the output gradient and the input on the padded grid of every
/// image in turn, each channel's row `ld` floats long (zeros past the last image), and the
/// result `dW[c_out][c_in][9]`.
struct WeightGrad<'a> {
    /// `[c_out][ld]`: `G` on the padded grid (zeros in the dropped columns and rows).
    g: &'a [f32],
    /// `[c_in][ld]`, then the largest tap offset in zeros: the padded input planes.
    x: &'a [f32],
    ld: usize,
    c_in: usize,
    taps: [usize; TAPS],
    dw: Shared,
}

impl WeightGrad<'_> {
    /// dW's entry `(co, ci, t)`.
    ///
    /// # Safety
    /// `co < c_out`, `ci < c_in`, `t < 9`, and only the task owning `co` and `ci` writes it
    /// (tasks own disjoint blocks of output channels by runs of input channels).
    unsafe fn entry(&self, co: usize, ci: usize, t: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.dw.at((co * self.c_in + ci) * TAPS + t) }
    }
}

/// `dW[co, ci, kh, kw]` of `y = conv(x, w)` from `g = dL/dy`: `dW[co, ci, t] = sum over j of
/// G[co, j] X[ci, j + off_t]` with `G` the output gradient on the padded grid of every image in
/// turn (zeros in the dropped columns and rows) and `X` the padded input planes. A register
/// tile is `R` output channels by one row of three taps of one input channel: per vector of
/// positions, `R` aligned loads of `G` and three shifted loads of `X` for `3 R` FMAs into
/// vector partial sums, whose lanes are summed once at the end. No GEMM packing: the per-tap
/// GEMMs this replaces transposed both operands (the inner dimension is contiguous in each)
/// and ran at 107-191 GFLOP/s on the tiny configs' layers (timed one by one); a tile of two
/// output channels by nine taps (nine unaligned loads of `X` per 18 FMAs) was no faster than
/// they were. Each entry sums its positions in the same order whatever the split between
/// threads.
pub(super) fn weight_grad(
    isa: Isa,
    x: &[f32],
    g: &[f32],
    s: &Shape2d,
    o: &ConvOptions<2>,
) -> Vec<f32> {
    let (hp, wp) = (
        s.h + o.padding[0].0 + o.padding[0].1,
        s.w + o.padding[1].0 + o.padding[1].1,
    );
    let planes = Planes {
        c: 1,
        hp,
        wp,
        stride: hp * wp,
    };
    let taps = planes.taps(o.dilation);
    let (rows, lanes) = isa.weight_tile();
    let (p, hw, plane) = (s.oh * s.ow, s.h * s.w, planes.plane());
    let ld = (s.batch * plane).next_multiple_of(lanes);
    let reach = taps[TAPS - 1];
    let mut xp = Scratch::take(s.c_in * ld + reach);
    // G's rows start on 64-byte boundaries (scratch is aligned and `ld` a multiple of 16
    // floats), so that its vector loads, eight per three of X in a tile, are aligned.
    let mut gq = Scratch::take(s.c_out * ld);
    let at = [o.padding[0].0, o.padding[1].0];
    xp[..s.c_in * ld]
        .par_chunks_mut(ld)
        .enumerate()
        .for_each(|(ci, dst)| {
            for (b, out) in dst[..s.batch * plane].chunks_mut(plane).enumerate() {
                let src = &x[(b * s.c_in + ci) * hw..][..hw];
                pad_plane(out, src, &planes, [s.h, s.w], at);
            }
            dst[s.batch * plane..].fill(0.0);
        });
    xp[s.c_in * ld..].fill(0.0);
    gq.par_chunks_mut(ld).enumerate().for_each(|(co, dst)| {
        for (b, out) in dst[..s.batch * plane].chunks_mut(plane).enumerate() {
            let src = &g[(b * s.c_out + co) * p..][..p];
            pad_plane(out, src, &planes, [s.oh, s.ow], [0, 0]);
        }
        dst[s.batch * plane..].fill(0.0);
    });
    let mut dw = vec![0.0f32; s.c_out * s.c_in * TAPS];
    let problem = WeightGrad {
        g: &gq,
        x: &xp,
        ld,
        c_in: s.c_in,
        taps,
        dw: Shared(dw.as_mut_ptr()),
    };
    // Tasks: blocks of `rows` output channels by runs of input channels; each writes its own
    // entries of dW.
    let blocks = s.c_out.div_ceil(rows);
    let runs = s.c_in.div_ceil(CHANNELS_PER_TASK);
    (0..blocks * runs).into_par_iter().for_each(|task| {
        let (b, run) = (task / runs, task % runs);
        let ci = run * CHANNELS_PER_TASK..((run + 1) * CHANNELS_PER_TASK).min(s.c_in);
        let co = b * rows..((b + 1) * rows).min(s.c_out);
        weight_task(isa, &problem, co, ci);
    });
    dw
}

/// A block of positions of the weight gradient's inner dimension: the tiles' vector partial
/// sums start at zero in the first block and become dW's entries after the last.
#[derive(Clone)]
struct Block {
    k: Range<usize>,
    first: bool,
    last: bool,
}

/// dW's entries of output channels `co` (at most the variant's tile rows) and input channels
/// `ci`: the positions in blocks of [`BLOCK`], each block over every input channel and row of
/// taps, the tiles' vector partial sums kept in between.
fn weight_task(isa: Isa, p: &WeightGrad, co: Range<usize>, ci: Range<usize>) {
    let (most, lanes) = isa.weight_tile();
    let per_row = ci.len() * TAPS * lanes;
    let mut partial = Scratch::take(if p.ld > BLOCK { co.len() * per_row } else { 0 });
    for k0 in (0..p.ld).step_by(BLOCK) {
        let block = Block {
            k: k0..(k0 + BLOCK).min(p.ld),
            first: k0 == 0,
            last: k0 + BLOCK >= p.ld,
        };
        // Tiles of 8, 4, 2 and 1 output channels cover the block's rows.
        let mut r0 = 0;
        while r0 < co.len() {
            let rows = [8, 4, 2, 1]
                .into_iter()
                .find(|&r| r <= co.len() - r0 && r <= most)
                .expect("1 fits");
            let from = (r0 * per_row).min(partial.len());
            let sums = &mut partial[from..];
            weight_tiles(isa, p, co.start + r0, rows, ci.clone(), &block, sums);
            r0 += rows;
        }
    }
}

/// The sum of a vector's lanes, halving it in turn.
fn lane_sum<const L: usize>(mut v: [f32; L]) -> f32 {
    let mut width = L;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            v[l] += v[l + width];
        }
    }
    v[0]
}

/// The tiles of output channels `co0..co0 + rows` by input channels `ci` over the positions
/// of `block` (multiples of the vector width), their vector partial sums in `sums`
/// (`[rows][ci][9][lanes]`, unused when the block is the only one), variant `isa`.
fn weight_tiles(
    isa: Isa,
    p: &WeightGrad,
    co0: usize,
    rows: usize,
    ci: Range<usize>,
    block: &Block,
    sums: &mut [f32],
) {
    // `weight_generic::<L, R>` for the `rows` at hand, `R` among the literals given.
    macro_rules! by_rows {
        ($args:tt, $rows:ident, $lanes:literal, $($r:literal),*) => {
            match $rows {
                $($r => weight_generic::<$lanes, $r> $args,)*
                _ => unreachable!("tile rows"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        fn wide(
            p: &WeightGrad,
            co0: usize,
            rows: usize,
            ci: Range<usize>,
            block: &Block,
            sums: &mut [f32],
        ) {
            match rows {
                8 => weight_avx512::<8>(p, co0, ci, block, sums),
                4 => weight_avx512::<4>(p, co0, ci, block, sums),
                2 => weight_avx512::<2>(p, co0, ci, block, sums),
                1 => weight_avx512::<1>(p, co0, ci, block, sums),
                _ => unreachable!("tile rows"),
            }
        }
        #[target_feature(enable = "avx2,fma")]
        fn narrow(
            p: &WeightGrad,
            co0: usize,
            rows: usize,
            ci: Range<usize>,
            block: &Block,
            sums: &mut [f32],
        ) {
            by_rows!((p, co0, ci, block, sums), rows, 8, 4, 2, 1)
        }
        match isa {
            // SAFETY: `isa` comes from `Isa::detect`: the CPU has these features.
            Isa::Wide => return unsafe { wide(p, co0, rows, ci, block, sums) },
            // SAFETY: as above.
            Isa::Narrow => return unsafe { narrow(p, co0, rows, ci, block, sums) },
            Isa::Plain => {}
        }
    }
    debug_assert_eq!(isa, Isa::Plain);
    by_rows!((p, co0, ci, block, sums), rows, 4, 2, 1)
}

/// The bounds the weight-gradient tiles of output channels up to `co_end`, input channels
/// `ci`, `lanes` lanes rely on: rows inside `G` and `X` (with the largest tap offset), the
/// block inside a row in whole vectors, and `need` floats of partial sums when the block is
/// not the only one.
fn check(
    p: &WeightGrad,
    co_end: usize,
    ci: &Range<usize>,
    block: &Block,
    lanes: usize,
    need: usize,
    sums: usize,
) {
    assert!(block.k.len().is_multiple_of(lanes) && block.k.end <= p.ld);
    assert!(co_end * p.ld <= p.g.len() && ci.end * p.ld + p.taps[TAPS - 1] <= p.x.len());
    assert!((block.first && block.last) || sums >= need);
}

/// [`weight_tiles`] for `R` output channels and vectors of `L` lanes.
#[inline(always)]
fn weight_generic<const L: usize, const R: usize>(
    p: &WeightGrad,
    co0: usize,
    ci: Range<usize>,
    block: &Block,
    sums: &mut [f32],
) {
    const ROW: usize = 3;
    let (k, per_row) = (block.k.clone(), ci.len() * TAPS * L);
    check(p, co0 + R, &ci, block, L, R * per_row, sums.len());
    let g = p.g.as_ptr();
    for (i, c) in ci.enumerate() {
        let x = p.x[c * p.ld..].as_ptr();
        for row in 0..TAPS / ROW {
            let offs: [usize; ROW] = std::array::from_fn(|t| p.taps[row * ROW + t]);
            let at = |r: usize, t: usize| r * per_row + (i * TAPS + row * ROW + t) * L;
            let mut acc = [[[0.0f32; L]; ROW]; R];
            if !block.first {
                for (r, a) in acc.iter_mut().enumerate() {
                    for (t, v) in a.iter_mut().enumerate() {
                        v.copy_from_slice(&sums[at(r, t)..at(r, t) + L]);
                    }
                }
            }
            for j in k.clone().step_by(L) {
                // SAFETY: rows co0..co0 + R of G and row c of X (plus the largest tap
                // offset) lie inside their buffers (asserted above) and j + L <= k.end <= ld.
                let gv: [[f32; L]; R] = std::array::from_fn(|r| unsafe {
                    g.add((co0 + r) * p.ld + j)
                        .cast::<[f32; L]>()
                        .read_unaligned()
                });
                for (t, &off) in offs.iter().enumerate() {
                    // SAFETY: as above.
                    let xv = unsafe { x.add(j + off).cast::<[f32; L]>().read_unaligned() };
                    for r in 0..R {
                        for l in 0..L {
                            acc[r][t][l] = gv[r][l].mul_add(xv[l], acc[r][t][l]);
                        }
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                for (t, v) in a.iter().enumerate() {
                    if block.last {
                        // SAFETY: see `WeightGrad::entry`.
                        unsafe { *p.entry(co0 + r, c, row * ROW + t) = lane_sum(*v) };
                    } else {
                        sums[at(r, t)..at(r, t) + L].copy_from_slice(v);
                    }
                }
            }
        }
    }
}

/// [`weight_generic`] for AVX-512 with intrinsics (`R` output channels): written as arrays,
/// the compiler vectorised that loop nest along output channels with gathers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn weight_avx512<const R: usize>(
    p: &WeightGrad,
    co0: usize,
    ci: Range<usize>,
    block: &Block,
    sums: &mut [f32],
) {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };
    const L: usize = 16;
    const ROW: usize = 3;
    let (k, per_row) = (block.k.clone(), ci.len() * TAPS * L);
    check(p, co0 + R, &ci, block, L, R * per_row, sums.len());
    let (g, s) = (p.g.as_ptr(), sums.as_mut_ptr());
    for (i, c) in ci.enumerate() {
        let x = p.x[c * p.ld..].as_ptr();
        for row in 0..TAPS / ROW {
            let offs: [usize; ROW] = std::array::from_fn(|t| p.taps[row * ROW + t]);
            let at = |r: usize, t: usize| r * per_row + (i * TAPS + row * ROW + t) * L;
            // SAFETY: every `at(r, t) + L <= R per_row <= sums.len()` unless this block is
            // the only one (`check`).
            let mut acc: [[__m512; ROW]; R] = std::array::from_fn(|r| {
                std::array::from_fn(|t| match block.first {
                    true => _mm512_setzero_ps(),
                    false => unsafe { _mm512_loadu_ps(s.add(at(r, t))) },
                })
            });
            for j in k.clone().step_by(L) {
                // The three X vectors stay in registers while each G vector is loaded in
                // turn: 3 R accumulators + 3 + 1 registers (all R of G at once, 4 R + 1,
                // spilled at R = 8).
                // SAFETY: rows co0..co0 + R of G and row c of X (plus the largest tap
                // offset) lie inside their buffers (asserted above) and j + L <= k.end <= ld.
                let xv: [__m512; ROW] =
                    std::array::from_fn(|t| unsafe { _mm512_loadu_ps(x.add(j + offs[t])) });
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: as above.
                    let gv = unsafe { _mm512_loadu_ps(g.add((co0 + r) * p.ld + j)) };
                    for (v, &xt) in a.iter_mut().zip(&xv) {
                        *v = _mm512_fmadd_ps(gv, xt, *v);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                for (t, &v) in a.iter().enumerate() {
                    if block.last {
                        // SAFETY: see `WeightGrad::entry`.
                        unsafe { *p.entry(co0 + r, c, row * ROW + t) = _mm512_reduce_add_ps(v) };
                    } else {
                        // SAFETY: as the loads of `acc`.
                        unsafe { _mm512_storeu_ps(s.add(at(r, t)), v) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::super::scratch::poison;
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

    /// Every variant against the loops, forward and both gradients. Small odd sizes: a partly
    /// filled last tile of rows and positions; asymmetric padding, dilation along the width.
    /// The weight gradient also on the small map of a narrow layer (a batch of more images
    /// than threads and one of fewer), and on a deep layer whose inner dimension spans two
    /// blocks of positions and two tasks' runs of input channels, with a part-filled block of
    /// output channels.
    #[test]
    fn variants_match_loops() {
        let o = ConvOptions::new_with_padding([1, 1], [(1, 2), (2, 1)], [1, 2], 1);
        let l = Loops::new([2, 3, 17, 18], 7, &o);
        assert!(applies(&l.s, &o));
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let small: Vec<_> = [1, 5]
            .map(|batch| Loops::new([batch, 5, 6, 7], 7, &same))
            .into();
        let deep = Loops::new([2, 40, 20, 40], 11, &same);
        const { assert!(2 * 22 * 42 > BLOCK) };
        for isa in variants() {
            poison();
            let y = forward(convolve, isa, &l.x, &l.w, &l.s, &o, &Epilogue::NONE);
            close(&y, &l.y, &format!("forward {isa:?}"));
            let dx = input_grad(convolve, isa, &l.g, &l.w, &l.s, &o);
            close(&dx, &l.dx, &format!("input gradient {isa:?}"));
            let dw = weight_grad(isa, &l.x, &l.g, &l.s, &o);
            close(&dw, &l.dw, &format!("weight gradient {isa:?}"));
            for l in &small {
                assert!(!applies(&l.s, &same) && weight_grad_applies(&l.s, &same));
                let dw = weight_grad(isa, &l.x, &l.g, &l.s, &same);
                close(&dw, &l.dw, &format!("small-map weight gradient {isa:?}"));
            }
            let dw = weight_grad(isa, &deep.x, &deep.g, &deep.s, &same);
            close(&dw, &deep.dw, &format!("two-block weight gradient {isa:?}"));
        }
    }
}
