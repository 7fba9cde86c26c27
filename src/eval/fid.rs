//! Feature statistics and the Fréchet distance (FID), plus the Inception Score.
//!
//! `d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrtm(S1 S2)`, with `S` the unbiased (n - 1)
//! covariance, as pytorch-fid and the ADM evaluator compute it. The trace term is computed without
//! forming `sqrtm(S1 S2)`: with `S1 = L L^T` (pivoted Cholesky, `L` `d x r`, r = numerical
//! rank), the eigenvalues of `S1 S2` are those of the symmetric `r x r` matrix `L^T S2 L` (plus
//! zeros), whose eigenvalues are real and `>= 0` up to round-off; the trace term is the sum of
//! their square roots, with round-off-level values (`< r eps lambda_max`) taken as 0. This stays
//! accurate for the rank-deficient covariances of small sample sets, where `scipy.linalg.sqrtm`
//! needs its `eps` offset.

use anyhow::{Result, bail, ensure};

use super::linalg::{Mat, View, gemm_into, pivoted_cholesky, symmetric_eigenvalues};

/// Streaming mean and covariance of feature rows in float64.
///
/// Sums are taken about a fixed shift (the first batch's mean), so the covariance does not
/// lose precision to `E[x x^T] - mu mu^T` cancellation when features have a large mean.
#[derive(Clone, Debug)]
pub struct Moments {
    dim: usize,
    n: u64,
    shift: Option<Vec<f64>>,
    sum: Vec<f64>,
    outer: Vec<f64>,
    centred: Vec<f64>,
}

/// Mean, covariance and sample count of a feature set (what `fid-stats` writes).
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub mu: Vec<f64>,
    pub sigma: Mat,
    /// Number of samples (0 when unknown, e.g. stats files from other tools).
    pub n: u64,
}

impl Moments {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            n: 0,
            shift: None,
            sum: vec![0.0; dim],
            outer: vec![0.0; dim * dim],
            centred: Vec::new(),
        }
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// Adds `rows.len() / dim` feature rows (row-major).
    pub fn add(&mut self, rows: &[f32]) {
        let d = self.dim;
        assert_eq!(rows.len() % d, 0, "feature rows have the wrong width");
        let b = rows.len() / d;
        if b == 0 {
            return;
        }
        let shift = self.shift.get_or_insert_with(|| {
            let mut m = vec![0.0; d];
            for row in rows.chunks_exact(d) {
                for (acc, x) in m.iter_mut().zip(row) {
                    *acc += *x as f64;
                }
            }
            m.iter_mut().for_each(|v| *v /= b as f64);
            m
        });
        self.centred.clear();
        for row in rows.chunks_exact(d) {
            for ((x, s), acc) in row.iter().zip(shift.iter()).zip(self.sum.iter_mut()) {
                let c = *x as f64 - s;
                *acc += c;
                self.centred.push(c);
            }
        }
        // outer += C^T C, C the centred batch (b x d).
        let c = View::new(&self.centred, b, d, d, 1);
        let ct = View::new(&self.centred, d, b, 1, d);
        gemm_into(&mut self.outer, d, true, ct, c, 1.0);
        self.n += b as u64;
    }

    /// Mean and unbiased covariance; needs at least 2 rows.
    pub fn stats(&self) -> Result<Stats> {
        ensure!(
            self.n >= 2,
            "a covariance needs at least 2 samples, got {}",
            self.n
        );
        let d = self.dim;
        let n = self.n as f64;
        let shift = self.shift.as_ref().expect("n >= 2");
        let mean_c: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let mu = shift.iter().zip(&mean_c).map(|(s, m)| s + m).collect();
        let mut sigma = Mat::zeros(d, d);
        for i in 0..d {
            for j in 0..d {
                sigma.data[i * d + j] =
                    (self.outer[i * d + j] - n * mean_c[i] * mean_c[j]) / (n - 1.0);
            }
        }
        sigma.symmetrize();
        Ok(Stats {
            mu,
            sigma,
            n: self.n,
        })
    }
}

/// The Fréchet distance and its parts.
#[derive(Clone, Debug, PartialEq)]
pub struct Frechet {
    pub fid: f64,
    /// `|mu1 - mu2|^2`.
    pub mean_term: f64,
    pub trace1: f64,
    pub trace2: f64,
    /// `tr sqrtm(S1 S2)`.
    pub trace_sqrt: f64,
    /// Numerical rank of `S1` used for the trace term.
    pub rank1: usize,
}

/// `tr sqrtm(S1 S2)` for symmetric positive semi-definite `s1`, `s2` (see the module docs).
pub fn trace_sqrt_product(s1: &Mat, s2: &Mat) -> (f64, usize) {
    let d = s1.rows;
    let max_diag = (0..d).map(|i| s1.at(i, i)).fold(0.0f64, f64::max);
    let tol = d as f64 * f64::EPSILON * max_diag;
    let l = pivoted_cholesky(s1, tol);
    let r = l.cols;
    if r == 0 {
        return (0.0, 0);
    }
    let t = s2.matmul(false, &l, false); // d x r
    let mut m = l.matmul(true, &t, false); // r x r
    m.symmetrize();
    let eig = symmetric_eigenvalues(&m);
    let top = eig.iter().fold(0.0f64, |a, b| a.max(b.abs()));
    let floor = r as f64 * f64::EPSILON * top;
    let trace = eig.iter().filter(|v| **v > floor).map(|v| v.sqrt()).sum();
    (trace, r)
}

/// Fréchet distance between two Gaussians given by their statistics.
pub fn frechet_distance(a: &Stats, b: &Stats) -> Result<Frechet> {
    let d = a.mu.len();
    if b.mu.len() != d || a.sigma.rows != d || b.sigma.rows != d {
        bail!(
            "feature statistics of different dimension ({} vs {})",
            a.mu.len(),
            b.mu.len()
        );
    }
    let finite = |s: &Stats| s.mu.iter().chain(&s.sigma.data).all(|v| v.is_finite());
    ensure!(
        finite(a) && finite(b),
        "feature statistics contain NaN or infinity"
    );
    let mean_term = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y).powi(2)).sum();
    let (trace_sqrt, rank1) = trace_sqrt_product(&a.sigma, &b.sigma);
    let (trace1, trace2) = (a.sigma.trace(), b.sigma.trace());
    Ok(Frechet {
        fid: mean_term + trace1 + trace2 - 2.0 * trace_sqrt,
        mean_term,
        trace1,
        trace2,
        trace_sqrt,
        rank1,
    })
}

/// Streaming Inception Score: `exp(E_x KL(p(y|x) || p(y)))` per split of consecutive samples,
/// reported as the mean and (population) std over splits, as in the original TF code, the ADM
/// evaluator and torch-fidelity (10 splits; split `k` holds samples `[k N / s, (k + 1) N / s)`).
pub struct InceptionScore {
    classes: usize,
    total: usize,
    splits: usize,
    seen: usize,
    /// Per split: sum over samples of `sum_y p log p`, the summed `p(y|x)` and the count.
    parts: Vec<(f64, Vec<f64>, usize)>,
}

impl InceptionScore {
    /// `total` samples expected, in `splits` splits.
    pub fn new(classes: usize, total: usize, splits: usize) -> Self {
        let splits = splits.clamp(1, total.max(1));
        Self {
            classes,
            total,
            splits,
            seen: 0,
            parts: (0..splits).map(|_| (0.0, vec![0.0; classes], 0)).collect(),
        }
    }

    /// Adds one row of logits per sample (softmax taken here, in float64).
    pub fn add_logits(&mut self, logits: &[f32]) {
        let c = self.classes;
        assert_eq!(logits.len() % c, 0, "logit rows have the wrong width");
        for row in logits.chunks_exact(c) {
            let split = (self.seen * self.splits / self.total.max(1)).min(self.splits - 1);
            let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
            let z: f64 = row.iter().map(|v| (*v as f64 - max).exp()).sum();
            let log_z = z.ln();
            let part = &mut self.parts[split];
            for (y, v) in row.iter().enumerate() {
                let log_p = *v as f64 - max - log_z;
                let p = log_p.exp();
                part.0 += p * log_p;
                part.1[y] += p;
            }
            part.2 += 1;
            self.seen += 1;
        }
    }

    /// `(mean, std)` over the non-empty splits.
    pub fn score(&self) -> Result<(f64, f64)> {
        ensure!(self.seen > 0, "no samples for the Inception Score");
        let scores: Vec<f64> = self
            .parts
            .iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(plogp, marginal, n)| {
                let n = *n as f64;
                let cross: f64 = marginal
                    .iter()
                    .filter(|m| **m > 0.0)
                    .map(|m| m * (m / n).ln())
                    .sum();
                ((plogp - cross) / n).exp()
            })
            .collect();
        let k = scores.len() as f64;
        let mean = scores.iter().sum::<f64>() / k;
        let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / k;
        Ok((mean, var.sqrt()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mu: &[f64], sigma: &[f64]) -> Stats {
        let d = mu.len();
        Stats {
            mu: mu.to_vec(),
            sigma: Mat::from_vec(d, d, sigma.to_vec()),
            n: 0,
        }
    }

    #[test]
    fn moments_match_two_pass_formulas() {
        // Rows with a large common offset: the shifted sums keep full precision.
        let rows: Vec<Vec<f32>> = (0..7)
            .map(|i| {
                let t = i as f32;
                vec![1000.0 + t, 1000.0 - 0.5 * t * t, 3.0 * t.sin()]
            })
            .collect();
        let mut m = Moments::new(3);
        m.add(&rows[..3].concat());
        m.add(&rows[3..].concat());
        let s = m.stats().unwrap();
        let n = rows.len() as f64;
        let mu: Vec<f64> = (0..3)
            .map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / n)
            .collect();
        for j in 0..3 {
            assert!((s.mu[j] - mu[j]).abs() < 1e-12);
            for k in 0..3 {
                let c: f64 = rows
                    .iter()
                    .map(|r| (r[j] as f64 - mu[j]) * (r[k] as f64 - mu[k]))
                    .sum::<f64>()
                    / (n - 1.0);
                assert!(
                    (s.sigma.at(j, k) - c).abs() < 1e-9 * c.abs().max(1.0),
                    "{j},{k}"
                );
            }
        }
        assert_eq!(s.n, 7);
        assert!(Moments::new(3).stats().is_err());
    }

    #[test]
    fn closed_form_distances() {
        // Commuting diagonal covariances: tr sqrt = sum sqrt(a_i b_i).
        let a = stats(&[0.0, 0.0], &[1.0, 0.0, 0.0, 4.0]);
        let b = stats(&[3.0, 4.0], &[9.0, 0.0, 0.0, 1.0]);
        let f = frechet_distance(&a, &b).unwrap();
        assert!((f.trace_sqrt - (3.0 + 2.0)).abs() < 1e-12);
        assert!((f.fid - (25.0 + 5.0 + 10.0 - 10.0)).abs() < 1e-12);
        // Identical sets, including a singular covariance: 0.
        let s = stats(
            &[1.0, 2.0, 3.0],
            &[1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        );
        let f = frechet_distance(&s, &s).unwrap();
        assert!(f.fid.abs() < 1e-12, "{f:?}");
        assert_eq!(f.rank1, 1);
        // Zero covariance on one side.
        let z = stats(&[0.0, 0.0], &[0.0; 4]);
        let f = frechet_distance(&z, &a).unwrap();
        assert!((f.fid - 5.0).abs() < 1e-12);
        assert!(frechet_distance(&z, &s).is_err());
    }

    #[test]
    fn inception_score_extremes() {
        // Uniform predictions: 1. Confident and evenly spread over C classes: C.
        let c = 4;
        let mut uniform = InceptionScore::new(c, 8, 2);
        uniform.add_logits(&[0.0; 32]);
        let (mean, std) = uniform.score().unwrap();
        assert!((mean - 1.0).abs() < 1e-12 && std < 1e-12);
        let mut sharp = InceptionScore::new(c, 8, 2);
        let mut logits = vec![-60.0f32; 32];
        for i in 0..8 {
            logits[i * c + i % c] = 60.0;
        }
        sharp.add_logits(&logits);
        let (mean, _) = sharp.score().unwrap();
        assert!((mean - c as f64).abs() < 1e-9, "{mean}");
    }
}
