//! Dense f64 linear algebra for the Fréchet distance: matrix products through the `gemm` crate,
//! a diagonally pivoted Cholesky factor of a positive semi-definite matrix, and the eigenvalues
//! of a symmetric matrix (Householder tridiagonalisation, then implicit QL with shifts).
//!
//! Every O(n^3) loop runs inside `gemm` (optimised and multi-threaded even in debug builds);
//! the code here only does O(n^2) work, so a 2048-dimensional FID takes seconds.

use gemm::Parallelism;

/// A dense row-major matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data has the wrong length");
        Self { rows, cols, data }
    }

    /// A square diagonal matrix.
    pub fn diag(values: &[f64]) -> Self {
        let n = values.len();
        let mut m = Self::zeros(n, n);
        for (i, v) in values.iter().enumerate() {
            m.data[i * n + i] = *v;
        }
        m
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    pub fn trace(&self) -> f64 {
        assert_eq!(self.rows, self.cols, "trace of a non-square matrix");
        (0..self.rows).map(|i| self.at(i, i)).sum()
    }

    /// Replaces the matrix by `(A + A^T) / 2`.
    pub fn symmetrize(&mut self) {
        let n = self.rows;
        assert_eq!(n, self.cols, "symmetrize of a non-square matrix");
        for i in 0..n {
            for j in i + 1..n {
                let v = 0.5 * (self.data[i * n + j] + self.data[j * n + i]);
                self.data[i * n + j] = v;
                self.data[j * n + i] = v;
            }
        }
    }

    fn view(&self) -> View<'_> {
        View::new(&self.data, self.rows, self.cols, self.cols, 1)
    }

    fn view_t(&self) -> View<'_> {
        View::new(&self.data, self.cols, self.rows, 1, self.cols)
    }

    /// `op(self) * op(other)`, where `op` transposes when the flag is set.
    pub fn matmul(&self, transpose_self: bool, other: &Mat, transpose_other: bool) -> Mat {
        let a = if transpose_self {
            self.view_t()
        } else {
            self.view()
        };
        let b = if transpose_other {
            other.view_t()
        } else {
            other.view()
        };
        let mut out = Mat::zeros(a.rows, b.cols);
        let cols = out.cols;
        gemm_into(&mut out.data, cols, false, a, b, 1.0);
        out
    }
}

/// A strided read-only operand: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f64],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// `rows x cols` with row stride `rs` and column stride `cs`.
    pub fn new(data: &'a [f64], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A contiguous column vector.
    pub fn column(data: &'a [f64]) -> Self {
        Self::new(data, data.len(), 1, 1, 1)
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst = (accumulate ? dst : 0) + beta * a * b`, with `dst` row-major `a.rows x b.cols` at row
/// stride `dst_rs` (so it can be a block of a larger matrix).
pub(crate) fn gemm_into(
    dst: &mut [f64],
    dst_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    beta: f64,
) {
    assert_eq!(a.cols, b.rows, "matrix product of mismatched shapes");
    a.check();
    b.check();
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_rs + n - 1 < dst.len(),
        "matrix product destination out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: all three operands were bounds-checked above for their shapes and strides; `dst` is
    // a unique borrow, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
}

/// Columns per panel of the blocked Cholesky.
const PANEL: usize = 64;

/// `A ≈ L L^T` for a symmetric positive semi-definite `a`, with `L` `n x r`: Cholesky with
/// diagonal pivoting (the largest remaining pivot first), stopping when that pivot is `<= tol`,
/// so `r` is the numerical rank. Rows of `L` keep `a`'s index order. Right-looking and blocked:
/// each panel of [`PANEL`] columns is subtracted from the working matrix with one product.
pub fn pivoted_cholesky(a: &Mat, tol: f64) -> Mat {
    let n = a.rows;
    assert_eq!(n, a.cols, "Cholesky of a non-square matrix");
    let mut w = a.data.clone(); // A minus the panels done so far
    let mut l = vec![0.0; n * n]; // column k of L at stride n
    let mut d: Vec<f64> = (0..n).map(|i| a.at(i, i)).collect(); // remaining pivots
    let mut done = vec![false; n];
    let mut col = vec![0.0; n];
    let mut k = 0;
    'panels: while k < n {
        let p0 = k;
        let mut stop = false;
        while k < n && k - p0 < PANEL {
            let Some((j, dj)) = (0..n)
                .filter(|i| !done[*i])
                .map(|i| (i, d[i]))
                .max_by(|x, y| x.1.total_cmp(&y.1))
            else {
                stop = true;
                break;
            };
            if dj <= tol || !dj.is_finite() {
                stop = true;
                break;
            }
            // Column j of the Schur complement: w[:, j] - L[:, p0..k] L[j, p0..k]^T.
            col.copy_from_slice(&w[j * n..(j + 1) * n]);
            if k > p0 {
                let lhs = View::new(&l[p0..], n, k - p0, n, 1);
                let rhs = View::new(&l[j * n + p0..], k - p0, 1, 1, 1);
                gemm_into(&mut col, 1, true, lhs, rhs, -1.0);
            }
            let s = dj.sqrt();
            done[j] = true;
            for i in 0..n {
                let v = if i == j {
                    s
                } else if done[i] {
                    0.0
                } else {
                    col[i] / s
                };
                l[i * n + k] = v;
                if !done[i] {
                    d[i] -= v * v;
                }
            }
            k += 1;
        }
        if stop {
            break 'panels;
        }
        let kb = k - p0;
        let lhs = View::new(&l[p0..], n, kb, n, 1);
        let rhs = View::new(&l[p0..], kb, n, 1, n);
        gemm_into(&mut w, n, true, lhs, rhs, -1.0);
    }
    let rank = k;
    let mut out = Mat::zeros(n, rank);
    for i in 0..n {
        out.data[i * rank..(i + 1) * rank].copy_from_slice(&l[i * n..i * n + rank]);
    }
    out
}

/// Eigenvalues (ascending) of a symmetric matrix (only the upper triangle is trusted after a
/// [`Mat::symmetrize`]; pass a symmetric matrix).
pub fn symmetric_eigenvalues(a: &Mat) -> Vec<f64> {
    let n = a.rows;
    assert_eq!(n, a.cols, "eigenvalues of a non-square matrix");
    let (mut d, mut e) = tridiagonalize(a);
    tridiagonal_eigenvalues(&mut d, &mut e);
    d.sort_by(f64::total_cmp);
    d
}

/// Householder reduction `Q^T A Q = T`; returns T's diagonal and off-diagonal (`e[k]` couples
/// `k` and `k + 1`; `e[n - 1] = 0`).
fn tridiagonalize(a: &Mat) -> (Vec<f64>, Vec<f64>) {
    let n = a.rows;
    let mut m = a.data.clone();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    let mut v = vec![0.0; n];
    let mut p = vec![0.0; n];
    let mut vw = vec![0.0; 2 * n];
    let mut wv = vec![0.0; 2 * n];
    for k in 0..n.saturating_sub(2) {
        let len = n - k - 1;
        let start = k * n + k + 1;
        d[k] = m[k * n + k];
        let row = &m[start..start + len]; // A[k, k+1..] = A[k+1.., k]
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            e[k] = 0.0;
            continue;
        }
        // Reflector H = I - tau v v^T with H x = alpha e_1 (sign chosen against cancellation).
        let alpha = if row[0] > 0.0 { -norm } else { norm };
        v[..len].copy_from_slice(row);
        v[0] -= alpha;
        let tau = 2.0 / v[..len].iter().map(|x| x * x).sum::<f64>();
        e[k] = alpha;
        // B = A[k+1.., k+1..]; p = tau B v; w = p - (tau/2)(p.v) v; B -= v w^T + w v^T.
        let off = (k + 1) * n + k + 1;
        {
            let b = View::new(&m[off..], len, len, n, 1);
            let vv = View::column(&v[..len]);
            gemm_into(&mut p[..len], 1, false, b, vv, tau);
        }
        let kk = 0.5
            * tau
            * p[..len]
                .iter()
                .zip(&v[..len])
                .map(|(x, y)| x * y)
                .sum::<f64>();
        for i in 0..len {
            let w = p[i] - kk * v[i];
            vw[2 * i] = v[i];
            vw[2 * i + 1] = w;
            wv[i] = w;
            wv[len + i] = v[i];
        }
        let lhs = View::new(&vw[..2 * len], len, 2, 2, 1);
        let rhs = View::new(&wv[..2 * len], 2, len, len, 1);
        gemm_into(&mut m[off..], n, true, lhs, rhs, -1.0);
    }
    match n {
        0 => {}
        1 => d[0] = m[0],
        _ => {
            d[n - 2] = m[(n - 2) * n + n - 2];
            e[n - 2] = m[(n - 2) * n + n - 1];
            d[n - 1] = m[(n - 1) * n + n - 1];
        }
    }
    (d, e)
}

/// Eigenvalues of the symmetric tridiagonal matrix (`d` diagonal, `e[k]` coupling `k` and
/// `k + 1`), in place in `d`: implicit QL sweeps with a shift from the leading 2x2 block, splitting
/// off blocks whose coupling is below the float64 resolution of their diagonal.
fn tridiagonal_eigenvalues(d: &mut [f64], e: &mut [f64]) {
    let n = d.len();
    if n == 0 {
        return;
    }
    e[n - 1] = 0.0;
    for l in 0..n {
        let mut sweeps = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let scale = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * scale {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            sweeps += 1;
            assert!(
                sweeps <= 100,
                "symmetric eigenvalues: QL did not converge (non-finite input?)"
            );
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + if g >= 0.0 { r } else { -r });
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut split = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    // Underflow: the block splits at i + 1.
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    split = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
            }
            if split {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random_sym(n: usize, rng: &mut StdRng) -> Mat {
        let mut m = Mat::from_vec(
            n,
            n,
            (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect(),
        );
        m.symmetrize();
        m
    }

    /// Reference eigenvalues by cyclic Jacobi rotations (slow, simple, accurate).
    fn jacobi_eigenvalues(a: &Mat) -> Vec<f64> {
        let n = a.rows;
        let mut m = a.data.clone();
        for _ in 0..100 {
            let off: f64 = (0..n)
                .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
                .map(|(i, j)| m[i * n + j].powi(2))
                .sum();
            if off < 1e-30 {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    let apq = m[p * n + q];
                    if apq == 0.0 {
                        continue;
                    }
                    let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let t = if theta == 0.0 { 1.0 } else { t };
                    let c = 1.0 / (t * t + 1.0).sqrt();
                    let s = t * c;
                    for k in 0..n {
                        let (akp, akq) = (m[k * n + p], m[k * n + q]);
                        m[k * n + p] = c * akp - s * akq;
                        m[k * n + q] = s * akp + c * akq;
                    }
                    for k in 0..n {
                        let (apk, aqk) = (m[p * n + k], m[q * n + k]);
                        m[p * n + k] = c * apk - s * aqk;
                        m[q * n + k] = s * apk + c * aqk;
                    }
                }
            }
        }
        let mut d: Vec<f64> = (0..n).map(|i| m[i * n + i]).collect();
        d.sort_by(f64::total_cmp);
        d
    }

    #[test]
    fn matmul_matches_loops() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = Mat::from_vec(3, 5, (0..15).map(|_| rng.random()).collect());
        let b = Mat::from_vec(3, 4, (0..12).map(|_| rng.random()).collect());
        let c = a.matmul(true, &b, false); // 5 x 4
        for i in 0..5 {
            for j in 0..4 {
                let want: f64 = (0..3).map(|k| a.at(k, i) * b.at(k, j)).sum();
                assert!((c.at(i, j) - want).abs() < 1e-14);
            }
        }
    }

    #[test]
    fn eigenvalues_match_jacobi() {
        let mut rng = StdRng::seed_from_u64(7);
        for n in [1, 2, 3, 5, 8, 17, 40] {
            let a = random_sym(n, &mut rng);
            let got = symmetric_eigenvalues(&a);
            let want = jacobi_eigenvalues(&a);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12, "n = {n}: {got:?} vs {want:?}");
            }
        }
        // Repeated, zero and widely scaled eigenvalues.
        let d = [0.0, 0.0, 1e-9, 1.0, 1.0, 1e6];
        let got = symmetric_eigenvalues(&Mat::diag(&d));
        assert_eq!(got, d.to_vec());
    }

    #[test]
    fn eigenvalues_of_a_rotated_diagonal() {
        // Q diag(λ) Q^T with Q from the Cholesky-free Gram-Schmidt of a random matrix.
        let mut rng = StdRng::seed_from_u64(3);
        let n = 30;
        let mut q = Mat::from_vec(
            n,
            n,
            (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect(),
        );
        for j in 0..n {
            for k in 0..j {
                let dot: f64 = (0..n).map(|i| q.at(i, j) * q.at(i, k)).sum();
                for i in 0..n {
                    q.data[i * n + j] -= dot * q.at(i, k);
                }
            }
            let norm = (0..n).map(|i| q.at(i, j).powi(2)).sum::<f64>().sqrt();
            for i in 0..n {
                q.data[i * n + j] /= norm;
            }
        }
        let lambda: Vec<f64> = (0..n)
            .map(|i| if i < 10 { 0.0 } else { i as f64 })
            .collect();
        let mut a = q
            .matmul(false, &Mat::diag(&lambda), false)
            .matmul(false, &q, true);
        a.symmetrize();
        let got = symmetric_eigenvalues(&a);
        for (g, w) in got.iter().zip(&lambda) {
            assert!((g - w).abs() < 1e-12 * n as f64, "{got:?}");
        }
    }

    #[test]
    fn pivoted_cholesky_reconstructs_and_finds_the_rank() {
        let mut rng = StdRng::seed_from_u64(5);
        let (n, k) = (12, 4);
        let g = Mat::from_vec(
            n,
            k,
            (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect(),
        );
        let mut a = g.matmul(false, &g, true); // rank 4
        a.symmetrize();
        let tol = n as f64 * f64::EPSILON * a.trace();
        let l = pivoted_cholesky(&a, tol);
        assert_eq!(l.cols, k);
        let back = l.matmul(false, &l, true);
        for (x, y) in back.data.iter().zip(&a.data) {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
        // Several panels, rank 150 of 200.
        let (n, k) = (200, 150);
        let g = Mat::from_vec(
            n,
            k,
            (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect(),
        );
        let mut a = g.matmul(false, &g, true);
        a.symmetrize();
        let l = pivoted_cholesky(&a, n as f64 * f64::EPSILON * a.trace());
        assert_eq!(l.cols, k);
        let back = l.matmul(false, &l, true);
        for (x, y) in back.data.iter().zip(&a.data) {
            assert!((x - y).abs() < 1e-10, "{x} vs {y}");
        }
        // Full rank: an exact factor; zero matrix: rank 0.
        let d = Mat::diag(&[4.0, 1.0, 9.0]);
        let l = pivoted_cholesky(&d, 0.0);
        assert_eq!(l.cols, 3);
        assert_eq!(l.matmul(false, &l, true), d);
        assert_eq!(pivoted_cholesky(&Mat::zeros(3, 3), 0.0).cols, 0);
    }
}
