//! MaskGIT's cosine masking schedule (method.md): in training, `r ~ U(0, 1)` and
//! `ceil(cos(pi/2 r) N)` of the `N` tokens are masked; in sampling, after step `t` of `T`,
//! `N - floor(N cos(pi/2 (t+1)/T))` tokens are fixed.

use rand::Rng;
use rand::rngs::StdRng;
use std::f64::consts::FRAC_PI_2;

/// Tokens masked in training for a draw `r` in [0, 1): `ceil(cos(pi/2 r) N)`, at least 1.
pub fn train_mask_count(r: f64, n: usize) -> usize {
    ((FRAC_PI_2 * r).cos() * n as f64)
        .ceil()
        .clamp(1.0, n as f64) as usize
}

/// A training mask over `n` positions: a cosine-schedule count of positions chosen uniformly.
pub fn sample_train_mask(rng: &mut StdRng, n: usize) -> Vec<bool> {
    let count = train_mask_count(rng.random::<f64>(), n);
    let mut order: Vec<usize> = (0..n).collect();
    // Partial Fisher-Yates: the first `count` entries are a uniform random subset.
    for i in 0..count {
        let j = rng.random_range(i..n);
        order.swap(i, j);
    }
    let mut mask = vec![false; n];
    for &p in &order[..count] {
        mask[p] = true;
    }
    mask
}

/// Tokens fixed (unmasked) after sampling step `t` (0-based) of `steps`, out of `n`:
/// `n - floor(n cos(pi/2 (t+1)/steps))`; all `n` after the last step.
pub fn fixed_after_step(t: usize, steps: usize, n: usize) -> usize {
    let ratio = (FRAC_PI_2 * (t + 1) as f64 / steps as f64).cos();
    let still_masked = (n as f64 * ratio).floor().max(0.0) as usize;
    if t + 1 >= steps {
        n
    } else {
        n - still_masked.min(n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn counts_follow_the_cosine_law() {
        // Closed form: P(count <= k) = P(cos(pi/2 r) <= k/N) = 1 - (2/pi) acos(k/N) (ceil only
        // moves mass within a unit), checked on 40k draws at several k.
        let n = 64;
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 40_000;
        let counts: Vec<usize> = (0..draws)
            .map(|_| {
                let m = sample_train_mask(&mut rng, n);
                m.iter().filter(|b| **b).count()
            })
            .collect();
        assert!(counts.iter().all(|c| (1..=n).contains(c)));
        for k in [8, 16, 32, 48, 60] {
            let empirical = counts.iter().filter(|c| **c <= k).count() as f64 / draws as f64;
            let exact = 1.0 - (k as f64 / n as f64).acos() / FRAC_PI_2;
            assert!(
                (empirical - exact).abs() < 0.01,
                "P(count <= {k}) = {empirical}, law {exact}"
            );
        }
        assert_eq!(train_mask_count(0.0, n), n);
        assert_eq!(train_mask_count(0.999_999, n), 1);
        assert_eq!(
            train_mask_count(0.5, n),
            (n as f64 * 0.5f64.sqrt()).ceil() as usize
        );
    }

    #[test]
    fn masked_positions_are_uniform() {
        let n = 16;
        let mut rng = StdRng::seed_from_u64(3);
        let mut hits = vec![0usize; n];
        for _ in 0..20_000 {
            for (h, m) in hits.iter_mut().zip(sample_train_mask(&mut rng, n)) {
                *h += usize::from(m);
            }
        }
        let mean = hits.iter().sum::<usize>() as f64 / n as f64;
        for h in hits {
            assert!((h as f64 - mean).abs() < 0.05 * mean, "{h} vs {mean}");
        }
    }

    #[test]
    fn sampling_schedule_fixes_everything_at_the_end() {
        let (n, steps) = (256, 12);
        let fixed: Vec<usize> = (0..steps).map(|t| fixed_after_step(t, steps, n)).collect();
        assert!(fixed.windows(2).all(|w| w[0] < w[1]), "{fixed:?}");
        assert_eq!(fixed[steps - 1], n);
        assert_eq!(
            fixed[0],
            n - (n as f64 * (FRAC_PI_2 / 12.0).cos()).floor() as usize
        );
        assert!(fixed[0] >= 1);
    }
}
