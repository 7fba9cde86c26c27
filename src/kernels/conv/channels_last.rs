//! Direct 3x3 stride-1 convolution for small maps (under 16 wide) with at least 16 output
//! channels, on a channels-last copy of the input: vectors run along output channels, so no
//! lane is spent on padding however small the map.
//!
//! The input is copied once into zero-padded channels-last planes `[batch][hp][wp][c_in]`.
//! Output pixel `p` (of any image) reads tap `(i, j)`, channel `ci` at
//! `base(p) + (i dh wp + j dw) c_in + ci`, so any `R` output pixels form a register tile: per
//! tap and input channel, `C` vectors of weights (`C L` output channels) are loaded once and
//! multiplied by `R` broadcast inputs. Each output sums over taps, then input channels, in that
//! order, whatever the batch or the split between threads. The tiles are written channels-last
//! and transposed into the NCHW output.
//!
//! The padded-plane kernels of `direct.rs` spend `(h + 2)(w + 2) / (h w)` of their work on an
//! `h x w` map (1.6x on 8x8, 2.3x on 4x4); the patch-matrix GEMMs of small maps spend theirs in
//! building the patches and scattering their gradient back (measured in the README).
//! The input gradient is the same kernel on the padded output gradient with the weights
//! transposed and flipped; the weight gradient is `direct.rs`'s on padded NCHW planes.

use rayon::prelude::*;

use super::super::scratch::Scratch;

use super::Shape2d;
use super::direct::{
    Isa, MIN_WIDTH, SMALL_MAP_MAX_CHANNELS, Shared, WeightView, Weights, stride_one_3x3,
};
use burn::tensor::ops::ConvOptions;

/// Kernel taps: 3x3 only.
const TAPS: usize = 9;

/// Fewest output channels: below one vector of them, lanes would sit idle.
const MIN_CHANNELS: usize = 16;

/// Whether the forward runs here: `direct::stride_one_3x3`, an output narrower than
/// `direct::MIN_WIDTH` (wider maps go to `direct.rs`), at least [`MIN_CHANNELS`] output channels, at most
/// `direct::SMALL_MAP_MAX_CHANNELS` input and output channels. Depends on an image's shape
/// only, never on the batch.
pub(super) fn forward_applies(s: &Shape2d, o: &ConvOptions<2>) -> bool {
    small_narrow(s, o) && s.c_out >= MIN_CHANNELS
}

/// Whether the input gradient runs here (as [`forward_applies`], its output channels being
/// the convolution's input channels).
pub(super) fn input_grad_applies(s: &Shape2d, o: &ConvOptions<2>) -> bool {
    small_narrow(s, o) && s.c_in >= MIN_CHANNELS
}

fn small_narrow(s: &Shape2d, o: &ConvOptions<2>) -> bool {
    stride_one_3x3(s, o) && s.ow < MIN_WIDTH && s.c_in.max(s.c_out) <= SMALL_MAP_MAX_CHANNELS
}

/// Register tile of a variant: `(pixels R, output channels per tile V = C L)`.
fn tile(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Wide => (6, 64),
        Isa::Narrow => (6, 16),
        Isa::Plain => (4, 16),
    }
}

/// One problem: channels-last padded input, the output pixels' base offsets, packed weights.
struct Problem<'a> {
    /// `[batch][hp][wp][c]`, then at least `c` floats of slack.
    x: &'a [f32],
    c: usize,
    /// Per output pixel (padded to a multiple of `R` with copies of the last), the offset of
    /// its tap (0, 0), channel 0 in `x`.
    pixels: &'a [usize],
    /// Offsets of the nine taps from a pixel's base.
    taps: [usize; TAPS],
    /// `[blocks][tap][c][V]`.
    weights: &'a [f32],
    /// Output `[pixels][ld]` channels-last, `ld = blocks V`.
    out: Shared,
    ld: usize,
}

/// Tiles of pixels `p0..p1` (multiples of `R`) for weight block `block`, variant `isa`.
fn tiles(isa: Isa, f: &Problem, block: usize, p0: usize, p1: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        fn wide(f: &Problem, block: usize, p0: usize, p1: usize) {
            tiles_generic::<16, 6, 4>(f, block, p0, p1)
        }
        #[target_feature(enable = "avx2,fma")]
        fn narrow(f: &Problem, block: usize, p0: usize, p1: usize) {
            tiles_generic::<8, 6, 2>(f, block, p0, p1)
        }
        match isa {
            // SAFETY: `isa` comes from `Isa::detect`: the CPU has these features.
            Isa::Wide => return unsafe { wide(f, block, p0, p1) },
            // SAFETY: as above.
            Isa::Narrow => return unsafe { narrow(f, block, p0, p1) },
            Isa::Plain => {}
        }
    }
    tiles_generic::<8, 4, 2>(f, block, p0, p1)
}

/// [`tiles`] for `R` pixels by `C` vectors of `L` output channels.
#[inline(always)]
fn tiles_generic<const L: usize, const R: usize, const C: usize>(
    f: &Problem,
    block: usize,
    p0: usize,
    p1: usize,
) {
    let v = L * C;
    let per_block = TAPS * f.c * v;
    let w = &f.weights[block * per_block..(block + 1) * per_block];
    let reach = f.taps[TAPS - 1] + f.c;
    let pixels = &f.pixels[p0..p1];
    // Every read below is at base + tap + ci < base + reach.
    assert!(pixels.iter().all(|&b| b + reach <= f.x.len()) && pixels.len().is_multiple_of(R));
    // The sum runs over (tap, input channel) in chunks of `KC` weight rows (32 KiB on
    // AVX-512, in L1) with every tile of pixels before the next chunk; a tile's partial sums
    // wait in the output between chunks.
    let kc = (8192 / v).max(1);
    for t in 0..TAPS {
        let off = f.taps[t];
        for c0 in (0..f.c).step_by(kc) {
            let c1 = (c0 + kc).min(f.c);
            let first = t == 0 && c0 == 0;
            let wt = &w[(t * f.c + c0) * v..(t * f.c + c1) * v];
            for (k, bases) in pixels.chunks_exact(R).enumerate() {
                let p = p0 + k * R;
                // SAFETY: pixels p..p + R, channels block V.. of the `[pixels][ld]` output,
                // which this task only reads and writes (tasks own disjoint pixel ranges).
                let dst: [&mut [f32]; R] = std::array::from_fn(|r| unsafe {
                    std::slice::from_raw_parts_mut(f.out.0.add((p + r) * f.ld + block * v), v)
                });
                let mut acc = [[[0.0f32; L]; C]; R];
                if !first {
                    for (a, d) in acc.iter_mut().zip(&dst) {
                        for (c, vec) in a.iter_mut().enumerate() {
                            vec.copy_from_slice(&d[c * L..(c + 1) * L]);
                        }
                    }
                }
                for (ci, wc) in (c0..c1).zip(wt.chunks_exact(v)) {
                    let mut wv = [[0.0f32; L]; C];
                    for (c, vec) in wv.iter_mut().enumerate() {
                        vec.copy_from_slice(&wc[c * L..(c + 1) * L]);
                    }
                    for r in 0..R {
                        // SAFETY: bases[r] + off + ci < bases[r] + reach <= x.len() (asserted).
                        let xs = unsafe { *f.x.get_unchecked(bases[r] + off + ci) };
                        for c in 0..C {
                            for l in 0..L {
                                acc[r][c][l] = xs.mul_add(wv[c][l], acc[r][c][l]);
                            }
                        }
                    }
                }
                for (vecs, d) in acc.iter().zip(dst) {
                    for (c, vec) in vecs.iter().enumerate() {
                        d[c * L..(c + 1) * L].copy_from_slice(vec);
                    }
                }
            }
        }
    }
}

/// `[batch][c][h][w]` into zero-padded channels-last `[batch][hp][wp][c]` (then `c` floats of
/// slack), the map at offset `top`/`left`; a scratch buffer, every entry written.
fn channels_last(
    src: &[f32],
    [batch, c, h, w]: [usize; 4],
    [hp, wp]: [usize; 2],
    [top, left]: [usize; 2],
) -> Scratch {
    let image = hp * wp * c;
    let mut out = Scratch::take(batch * image + c);
    out[batch * image..].fill(0.0);
    out[..batch * image]
        .par_chunks_mut(wp * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let (b, r) = (row / hp, row % hp);
            if r < top || r >= top + h {
                dst.fill(0.0);
                return;
            }
            dst[..left * c].fill(0.0);
            dst[(left + w) * c..].fill(0.0);
            let plane = &src[b * c * h * w..(b + 1) * c * h * w];
            for (ci, channel) in plane.chunks_exact(h * w).enumerate() {
                let line = &channel[(r - top) * w..(r - top + 1) * w];
                for (col, &v) in line.iter().enumerate() {
                    dst[(left + col) * c + ci] = v;
                }
            }
        });
    out
}

/// `direct::Convolve` on a channels-last copy of the input (see the module doc).
#[allow(clippy::too_many_arguments)]
pub(super) fn convolve(
    isa: Isa,
    x: &[f32],
    [batch, c, h, w]: [usize; 4],
    pad: [(usize, usize); 2],
    dilation: [usize; 2],
    c_out: usize,
    weight: Weights,
    y: &mut [f32],
    finish: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let (rows, v) = tile(isa);
    let [hp, wp] = [h + pad[0].0 + pad[0].1, w + pad[1].0 + pad[1].1];
    let [oh, ow] = [hp - 2 * dilation[0], wp - 2 * dilation[1]];
    let xcl = channels_last(x, [batch, c, h, w], [hp, wp], [pad[0].0, pad[1].0]);
    let taps: [usize; TAPS] =
        std::array::from_fn(|t| ((t / 3) * dilation[0] * wp + (t % 3) * dilation[1]) * c);
    let n = batch * oh * ow;
    let pixels: Vec<usize> = (0..n.next_multiple_of(rows))
        .map(|p| {
            let p = p.min(n - 1);
            let (b, r, col) = (p / (oh * ow), (p / ow) % oh, p % ow);
            ((b * hp + r) * wp + col) * c
        })
        .collect();
    let blocks = c_out.div_ceil(v);
    let weight = WeightView::new(weight, c_out, c);
    let mut weights = Scratch::take(blocks * TAPS * c * v);
    weights
        .par_chunks_mut(TAPS * c * v)
        .enumerate()
        .for_each(|(block, dst)| {
            let lanes = v.min(c_out - block * v);
            if lanes < v {
                dst.fill(0.0);
            }
            weight.visit(block * v, lanes, c, |lane, i, t, x| {
                dst[(t * c + i) * v + lane] = x;
            });
        });
    let ld = blocks * v;
    // Every entry is written: each tile's first chunk of the sum stores its accumulators.
    let mut out = Scratch::take(pixels.len() * ld);
    let f = Problem {
        x: &xcl,
        c,
        pixels: &pixels,
        taps,
        weights: &weights,
        out: Shared(out.as_mut_ptr()),
        ld,
    };
    // Tasks: each block by ranges of pixel tiles, about four per thread.
    let tiles_total = pixels.len() / rows;
    let tasks = (4 * rayon::current_num_threads()).div_ceil(blocks).max(1);
    let per_task = tiles_total.div_ceil(tasks).max(1);
    let ranges = tiles_total.div_ceil(per_task);
    (0..blocks * ranges).into_par_iter().for_each(|k| {
        let (block, range) = (k / ranges, k % ranges);
        let t0 = range * per_task;
        let t1 = (t0 + per_task).min(tiles_total);
        tiles(isa, &f, block, t0 * rows, t1 * rows);
    });
    let p = oh * ow;
    y.par_chunks_mut(p).enumerate().for_each(|(row, dst)| {
        let (b, co) = (row / c_out, row % c_out);
        for (i, d) in dst.iter_mut().enumerate() {
            *d = out[(b * p + i) * ld + co];
        }
        finish(co, dst);
    });
}

#[cfg(test)]
mod tests {
    use super::super::super::scratch::poison;
    use super::super::Epilogue;
    use super::super::direct::tests::{Loops, close, variants};
    use super::super::direct::{forward, input_grad};
    use super::*;

    /// Every variant against the loops, forward and input gradient: output channels that
    /// leave the last block of lanes part empty (17, 40), more pixels than one tile and fewer,
    /// a 2x2 map, dilation and asymmetric padding; the scratch buffers poisoned with NaN first.
    #[test]
    fn variants_match_loops() {
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let cases = [
            ([3, 16, 8, 9], 17, same.clone()),
            ([1, 20, 2, 2], 40, same.clone()),
            (
                [2, 16, 5, 4],
                16,
                ConvOptions::new_with_padding([1, 1], [(0, 2), (2, 1)], [1, 1], 1),
            ),
            (
                [2, 24, 9, 10],
                32,
                ConvOptions::new([1, 1], [2, 2], [2, 2], 1),
            ),
        ];
        for (xs, c_out, o) in cases {
            let l = Loops::new(xs, c_out, &o);
            assert!(
                forward_applies(&l.s, &o) && input_grad_applies(&l.s, &o),
                "{xs:?}"
            );
            for isa in variants() {
                poison();
                let y = forward(convolve, isa, &l.x, &l.w, &l.s, &o, &Epilogue::NONE);
                close(&y, &l.y, &format!("forward {xs:?} {isa:?}"));
                let dx = input_grad(convolve, isa, &l.g, &l.w, &l.s, &o);
                close(&dx, &l.dx, &format!("input gradient {xs:?} {isa:?}"));
            }
        }
    }
}
