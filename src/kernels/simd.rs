//! Elementwise math shared by the CPU kernels, written branch-free so that the compiler
//! vectorises it, with AVX-512 and AVX2+FMA variants chosen at run time (`simd_dispatch!`).

/// Whether the CPU has AVX2 and FMA (x86-64).
pub(super) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 (F, BW, DQ, VL) besides AVX2 and FMA (x86-64).
pub(super) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `fn $name(args)` running `$generic(args)` compiled for the widest vector unit the CPU has
/// (AVX-512, else AVX2+FMA, chosen at run time; the plain build elsewhere). `$generic` must be
/// `#[inline(always)]` so that it is compiled inside each variant.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $generic:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn wide($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn narrow($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                if $crate::kernels::simd::has_avx512() {
                    // SAFETY: the CPU has these features (checked at run time).
                    return unsafe { wide($($arg),*) };
                }
                if $crate::kernels::simd::has_avx2() {
                    // SAFETY: the CPU has these features (checked at run time).
                    return unsafe { narrow($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}
pub(super) use simd_dispatch;

/// `exp(x)` for f32 (relative error ~1e-7; underflows to ~1e-38 below -87, so `exp(-inf)` is
/// not 0: callers mask such entries themselves), branch-free: Cody-Waite reduction by ln 2 and
/// the degree-7 polynomial of Cephes' `expf`.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // ln 2 split in two so that n * LN2_HI is exact.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = p * r + c;
    }
    let p = p * r * r + r + 1.0;
    // 2^n from t's bits: t = 1.5 * 2^23 + n exactly, so its mantissa holds n. Integer lane
    // operations only: `n as i32` (Rust's saturating cast) compiled to a compare and a scalar
    // insert per lane and kept the whole function off the vector unit (measured: the softmax
    // 13.1% -> 4.7% and the GELU backward 5.7% -> 3.4% of a tiny MaskGIT step without it).
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// Lanes of the reductions below: independent partial results the compiler keeps in one
/// vector register each, instead of one chain of dependent scalar operations per row.
const LANES: usize = 16;

/// `(max, sum)`-style reduction of `x` with `op` over [`LANES`] independent accumulators,
/// folded pairwise (whole-vector operations, not a chain of 16 scalar ones per row), then the
/// tail.
#[inline(always)]
fn reduce(x: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = op(*a, v);
        }
    }
    tail.iter().fold(fold_lanes(acc, &op), |a, &v| op(a, v))
}

/// The [`LANES`] accumulators folded pairwise with `op` (whole-vector operations).
#[inline(always)]
fn fold_lanes(mut acc: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        let (low, high) = acc.split_at_mut(width);
        for (a, &b) in low.iter_mut().zip(high.iter()) {
            *a = op(*a, b);
        }
    }
    acc[0]
}

/// The sum of `values` in [`LANES`] independent partial sums (so that it vectorises; the
/// values can be computed on the fly, from several slices), folded pairwise.
#[inline(always)]
pub(super) fn lanes_sum(values: impl Iterator<Item = f32>) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (i, v) in values.enumerate() {
        acc[i % LANES] += v;
    }
    fold_lanes(acc, |a, b| a + b)
}

/// Elements per block of [`blocks_sum`].
const BLOCK: usize = 1024;

/// `sum(f(block))` over `x` in blocks of [`BLOCK`], the blocks' f32 sums added in f64: sums
/// over millions of elements (a GroupNorm row of a 256x256 map, a whole gradient) keep their
/// precision.
#[inline(always)]
pub(super) fn blocks_sum(x: &[f32], f: impl Fn(&[f32]) -> f32) -> f64 {
    x.chunks(BLOCK).map(|b| f64::from(f(b))).sum()
}

#[inline(always)]
fn softmax_generic(p: &mut [f32], cols: usize, causal: bool) {
    for (i, row) in p.chunks_mut(cols).enumerate() {
        let valid = if causal { (i + 1).min(cols) } else { cols };
        let (live, masked) = row.split_at_mut(valid);
        masked.fill(0.0);
        let max = reduce(live, f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
        for x in live.iter_mut() {
            *x = exp(*x - max);
        }
        let inv = 1.0 / reduce(live, 0.0, |a, b| a + b);
        live.iter_mut().for_each(|x| *x *= inv);
    }
}

simd_dispatch! {
    /// Row-wise softmax of `[rows, cols]` scores in place; `causal` zeroes column `j > row`.
    pub(super) fn softmax_rows(p: &mut [f32], cols: usize, causal: bool) => softmax_generic
}

#[cfg(test)]
mod tests {
    use super::*;

    /// exp against f64's over its whole useful range.
    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 3e-7, "exp max rel error {worst:e}");
    }

    /// Long rows (several reduction lanes and a tail) against an f64 softmax.
    #[test]
    fn softmax_rows_match_f64() {
        let cols = 37;
        let mut p: Vec<f32> = (0..3 * cols)
            .map(|v| ((v * 7919) % 101) as f32 * 0.13 - 6.0)
            .collect();
        let raw = p.clone();
        softmax_rows(&mut p, cols, false);
        for (row, got) in raw.chunks(cols).zip(p.chunks(cols)) {
            let max = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            for (&v, &g) in row.iter().zip(got) {
                let want = (v as f64 - max).exp() / sum;
                assert!(
                    (g as f64 - want).abs() < 1e-6 * (1.0 + want),
                    "{g} vs {want}"
                );
            }
        }
    }

    /// Rows sum to 1, follow exp ratios, and masked columns are 0.
    #[test]
    fn softmax_rows_normalise_and_mask() {
        let mut p: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 2.0).collect();
        let raw = p.clone();
        softmax_rows(&mut p, 4, true);
        for (i, row) in p.chunks(4).enumerate() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            for j in 0..4 {
                if j > i {
                    assert_eq!(row[j], 0.0);
                } else if j > 0 {
                    let want = ((raw[i * 4 + j] - raw[i * 4]) as f64).exp();
                    assert!(((row[j] / row[0]) as f64 - want).abs() < 1e-5 * want);
                }
            }
        }
    }
}
