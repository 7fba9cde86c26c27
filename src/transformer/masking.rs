//! MaskGIT's masking schedules (method.md): in training, `r ~ U(0, 1)` and
//! `ceil(cos(pi/2 r) N)` of the `N` tokens are masked; in sampling, after step `t` of `T`,
//! `floor(N gamma((t+1)/T))` tokens stay masked (`gamma` = cosine by default).

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

/// How many tokens stay masked as sampling progresses: `gamma(x)` of the fraction `x` of steps
/// done (1 at the start, 0 at the end).
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum MaskSchedule {
    /// `cos(pi/2 x)` (MaskGIT's default).
    Cosine,
    /// `1 - x`.
    Linear,
    /// `1 - x^2`.
    Square,
}

impl MaskSchedule {
    pub fn gamma(self, x: f64) -> f64 {
        match self {
            Self::Cosine => (FRAC_PI_2 * x).cos(),
            Self::Linear => 1.0 - x,
            Self::Square => 1.0 - x * x,
        }
    }
}

/// Tokens still masked after sampling step `t` (0-based) of `steps`, when `unknown` were
/// masked before it. As MaskGIT's sampler: `max(1, min(unknown - 1, floor(n gamma((t+1)/T))))`
/// before the last step (at least one token is fixed per step while more than one is masked,
/// and at least one stays masked until the last step), and none after the last.
pub fn masked_after_step(
    schedule: MaskSchedule,
    t: usize,
    steps: usize,
    n: usize,
    unknown: usize,
) -> usize {
    if t + 1 >= steps {
        return 0;
    }
    let planned = (n as f64 * schedule.gamma((t + 1) as f64 / steps as f64)).floor();
    (planned.max(0.0) as usize)
        .min(unknown.saturating_sub(1))
        .max(1)
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
        for schedule in [
            MaskSchedule::Cosine,
            MaskSchedule::Linear,
            MaskSchedule::Square,
        ] {
            for (n, steps) in [(256, 12), (16, 12), (4, 8), (64, 1)] {
                let mut unknown = n;
                let mut trace = Vec::new();
                for t in 0..steps {
                    let next = masked_after_step(schedule, t, steps, n, unknown);
                    // Progress while more than one token is masked; one stays until the end.
                    if t + 1 < steps {
                        assert!(
                            next >= 1,
                            "{schedule:?} n={n}: all fixed before the last step"
                        );
                        assert!(
                            next < unknown || unknown == 1,
                            "{schedule:?} n={n}: no progress"
                        );
                    }
                    unknown = next;
                    trace.push(unknown);
                }
                assert_eq!(
                    *trace.last().unwrap(),
                    0,
                    "{schedule:?} n={n} steps={steps}"
                );
            }
        }
        let first = masked_after_step(MaskSchedule::Cosine, 0, 12, 256, 256);
        assert_eq!(first, (256.0 * (FRAC_PI_2 / 12.0).cos()).floor() as usize);
    }

    #[test]
    fn mask_len_has_maskgit_floor_of_one() {
        // MaskGIT: mask_len = max(1, min(unknown - 1, floor(N cos(pi/2 (t+1)/T)))). On a 2x2 map
        // with 8 steps the cosine plan reaches 0 masked at step 6 (floor(4 cos(7pi/16)) = 0),
        // but one token stays masked until the final step fixes it.
        let trace: Vec<usize> = (0..8)
            .scan(4, |unknown, t| {
                *unknown = masked_after_step(MaskSchedule::Cosine, t, 8, 4, *unknown);
                Some(*unknown)
            })
            .collect();
        assert_eq!(trace, vec![3, 2, 1, 1, 1, 1, 1, 0]);
        // Two steps on 256 tokens (the paper-scale smoke test): floor(256 cos(pi/4)) = 181.
        assert_eq!(masked_after_step(MaskSchedule::Cosine, 0, 2, 256, 256), 181);
        assert_eq!(masked_after_step(MaskSchedule::Cosine, 1, 2, 256, 181), 0);
    }
}
