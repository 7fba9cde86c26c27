//! Elementwise math shared by the CPU kernels, written branch-free so that the compiler
//! vectorises it, with AVX2+FMA variants chosen at run time where the CPU has them.

/// Whether the CPU has AVX2 and FMA (x86-64), for the `*_avx2` variants.
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

/// `exp(x)` for f32 (relative error ~1e-7; underflows to ~1e-38 below -87, so `exp(-inf)` is
/// not 0: callers mask such entries themselves), branch-free: Cody-Waite reduction by ln 2 and
/// the degree-7 polynomial of Cephes' `expf`.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
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
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[inline(always)]
fn softmax_generic(p: &mut [f32], cols: usize, causal: bool) {
    for (i, row) in p.chunks_mut(cols).enumerate() {
        let valid = if causal { (i + 1).min(cols) } else { cols };
        let (live, masked) = row.split_at_mut(valid);
        masked.fill(0.0);
        let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in live.iter_mut() {
            *x = exp(*x - max);
        }
        let inv = 1.0 / live.iter().sum::<f32>();
        live.iter_mut().for_each(|x| *x *= inv);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_avx2(p: &mut [f32], cols: usize, causal: bool) {
    softmax_generic(p, cols, causal)
}

/// Row-wise softmax of `[rows, cols]` scores in place; `causal` zeroes column `j > row`.
pub(super) fn softmax_rows(p: &mut [f32], cols: usize, causal: bool) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { softmax_avx2(p, cols, causal) };
    }
    softmax_generic(p, cols, causal)
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
