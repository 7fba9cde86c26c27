//! The R1 penalty `E_i ||grad_x D(x_i)||^2` without double backward (burn 0.22 has none).
//!
//! Take `g_i = grad_x sum_j D(x_j)` at the real images (one ordinary backward; the per-sample
//! input gradients when the samples are independent) and `u_i = g_i / ||g_i||`, held fixed.
//! The directional derivative `s_i = J_x D(x)_i . u` is the `eps -> 0` limit of the central
//! difference `(D(x + eps u)_i - D(x - eps u)_i) / (2 eps)`; it is computed exactly by
//! forward-mode differentiation ([`Discriminator::forward_jvp`]). Then `s_i = u_i . g_i =
//! ||g_i||`, so `s_i^2 = ||g_i||^2`, and because `u` is held fixed,
//! `d(s_i^2)/d theta = 2 ||g_i|| u_i . d g_i / d theta = d ||g_i||^2 / d theta`: the exact R1
//! gradient, with nothing random.
//!
//! Why not the finite difference itself: D is piecewise linear (LeakyReLU), and a LeakyReLU unit
//! whose pre-activation changes sign between `x - eps u` and `x + eps u` adds an `O(1/eps)` term
//! to `d s / d theta`. On a 16x16 test discriminator that made the weight gradient 160% wrong at
//! eps = 1e-2 and up to 40x wrong at 3e-4; only eps <= 1e-4 avoided crossings there, where
//! float32 round-off left 3.5e-3 (measured while choosing the method; the tests keep the sweep
//! of the value). Forward mode has neither problem.
//!
//! Cost every `r1_interval` discriminator steps: one forward + backward of `D` for `g`, then one
//! forward carrying the tangent (about two forwards' work, whose primal half is the real
//! images' logits, reused for the loss) and its share of the discriminator's backward.

use burn::tensor::Tensor;

use crate::tokenizer::Discriminator;

/// `grad_x sum_i D(x_i)` at `x`, detached (`[B, 3, H, W]` on the plain device).
pub fn input_gradient(disc: &Discriminator, x: Tensor<4>) -> Tensor<4> {
    let x = x.detach().require_grad();
    let grads = disc.forward(x.clone()).sum().backward();
    x.grad(&grads)
        .expect("the input requires grad, so backward gives it a gradient")
}

/// Per-sample `||g_i||^2` of [`input_gradient`]: the exact R1 terms (a value, no gradient).
pub fn exact_per_sample(disc: &Discriminator, x: Tensor<4>) -> Tensor<1> {
    let g = input_gradient(disc, x);
    let [b, c, h, w] = g.dims();
    g.reshape([b, c * h * w])
        .powi_scalar(2)
        .sum_dim(1)
        .reshape([b])
}

/// The real images' logits `D(x)` (`[B, 1]`) and the per-sample R1 terms `s_i^2` (`[B]`),
/// both differentiable in the discriminator's weights.
pub fn logits_and_r1(disc: &Discriminator, x: Tensor<4>) -> (Tensor<2>, Tensor<1>) {
    let x = x.detach();
    let dims = x.dims();
    let [b, c, h, w] = dims;
    let g = input_gradient(disc, x.clone()).reshape([b, c * h * w]);
    let norm = g.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-30);
    let u = Tensor::from_inner((g / norm).reshape(dims));
    let (logits, s) = disc.forward_jvp(x, u);
    (logits, s.powi_scalar(2).reshape([b]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::{keyed_rng, normal_vec};
    use crate::tokenizer::DiscConfig;
    use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, FloatDType, TensorData};

    /// Host-seeded normal values shaped `dims` (the device generator is shared by parallel
    /// tests, so it would make the networks differ from run to run).
    fn normal<const D: usize>(key: u64, dims: [usize; D], device: &Device) -> Tensor<D> {
        let n = dims.iter().product();
        let v = normal_vec(&mut keyed_rng(0x5231, key), n);
        Tensor::from_data(TensorData::new(v, dims), device)
    }

    /// Sets every weight to a host-seeded He-normal draw (rank-1 tensors, the biases: 0.1 x
    /// normal), optionally cast to float64.
    struct Init {
        k: u64,
        f64: bool,
    }

    impl ModuleMapper for Init {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            self.k += 1;
            let (k, f64) = (self.k, self.f64);
            param.map(|t| {
                let dims = t.dims();
                let fan_in: usize = match D {
                    1 => 1,
                    2 => dims[0], // burn's Linear weight is [in, out]
                    _ => dims[1..].iter().product(),
                };
                let scale = if D == 1 {
                    0.1
                } else {
                    (2.0 / fan_in as f64).sqrt()
                };
                let w = normal(k, dims, &t.device()) * scale;
                let w = if f64 { w.cast(FloatDType::F64) } else { w };
                w.detach().require_grad()
            })
        }
    }

    /// A small discriminator (16x16 inputs) with deterministic He-normal weights.
    fn disc(minibatch_std: bool, f64: bool, device: &Device) -> Discriminator {
        let cfg = DiscConfig {
            base_channels: 8,
            max_channels: 16,
            min_resolution: 4,
            minibatch_std,
        };
        Discriminator::new(&cfg, 16, device).map(&mut Init { k: 0, f64 })
    }

    fn images(f64: bool, device: &Device) -> Tensor<4> {
        let x = normal(0, [4, 3, 16, 16], device).clamp(-1.0, 1.0);
        if f64 { x.cast(FloatDType::F64) } else { x }
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
        t.into_data().convert::<f64>().try_to_vec().unwrap()
    }

    fn max_rel_err(est: &[f64], exact: &[f64]) -> f64 {
        est.iter()
            .zip(exact)
            .map(|(e, x)| (e - x).abs() / x.abs())
            .fold(0.0, f64::max)
    }

    /// The central difference `((D(x + eps u) - D(x - eps u)) / (2 eps))^2` per sample, for
    /// comparison with its limit.
    fn central_difference(d: &Discriminator, x: Tensor<4>, eps: f64) -> Tensor<1> {
        let [b, c, h, w] = x.dims();
        let g = input_gradient(d, x.clone()).reshape([b, c * h * w]);
        let norm = g.clone().powi_scalar(2).sum_dim(1).sqrt();
        let u = Tensor::from_inner((g / norm).reshape([b, c, h, w])) * eps;
        let s = (d.forward(x.clone() + u.clone()) - d.forward(x - u)) / (2.0 * eps);
        s.powi_scalar(2).reshape([b])
    }

    /// Per-sample values against `||grad_x D(x_i)||^2` from a backward on the input.
    #[test]
    fn estimate_matches_the_exact_input_gradient_norm() {
        let device = Device::flex().autodiff();
        let x = images(false, &device);
        let d = disc(false, false, &device);
        let exact = host(exact_per_sample(&d, x.clone()));
        let (logits, r1) = logits_and_r1(&d, x.clone());
        let est = host(r1);
        let err = max_rel_err(&est, &exact);
        eprintln!(
            "R1 per sample, minibatch-std off: exact {exact:?}, estimate {est:?}, max rel err {err:.2e}"
        );
        assert!(exact.iter().all(|v| *v > 0.05), "{exact:?}");
        // Measured: 4.7e-7 (float32 round-off).
        assert!(err < 1e-5, "max relative error {err:.2e}");
        // The primal half is the plain forward.
        let plain = host(d.forward(x.clone()));
        assert!(max_rel_err(&host(logits), &plain) < 1e-6);

        // Minibatch stddev couples the samples: s_i moves all samples along u at once, while
        // ||g_i||^2 takes the gradient of sum_j D(x_j) with respect to x_i alone.
        let d = disc(true, false, &device);
        let exact = host(exact_per_sample(&d, x.clone()));
        let est = host(logits_and_r1(&d, x).1);
        let err = max_rel_err(&est, &exact);
        eprintln!(
            "R1 per sample, minibatch-std on: exact {exact:?}, estimate {est:?}, max rel err {err:.2e}"
        );
        // Measured: 2.5e-3.
        assert!(
            err < 1e-2,
            "max relative error with minibatch std {err:.2e}"
        );
    }

    /// The forward-mode value is the limit of the central difference: they agree in
    /// float64 at a step small enough to cross no LeakyReLU kink, and differ at larger ones.
    #[test]
    fn forward_mode_is_the_limit_of_the_central_difference() {
        let device = Device::flex().autodiff();
        let (x, d) = (images(true, &device), disc(true, true, &device));
        let jvp = host(logits_and_r1(&d, x.clone()).1);
        for eps in [1e-2, 1e-3, 1e-4, 1e-5] {
            let fd = host(central_difference(&d, x.clone(), eps));
            eprintln!(
                "central difference eps {eps:e}: max rel diff {:.2e}",
                max_rel_err(&fd, &jvp)
            );
        }
        let fd = host(central_difference(&d, x, 1e-6));
        let err = max_rel_err(&fd, &jvp);
        // Measured (float64, minibatch stddev on): 3.1e-1 at eps 1e-2, 2.9e-1 at 1e-3, 5.6e-2
        // at 1e-4 (kinks crossed), 1.5e-10 at 1e-5.
        assert!(
            err < 1e-6,
            "float64 central difference at 1e-6 vs forward mode: {err:.2e}"
        );
    }

    /// `<grads, delta>` over the weights, `delta` per parameter as in [`Shift`].
    struct Dot<'a> {
        grads: &'a GradientsParams,
        k: u64,
        total: f64,
    }

    impl ModuleVisitor for Dot<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.k += 1;
            if let Some(g) = self.grads.get::<D>(param.id) {
                let delta = normal(1000 + self.k, g.dims(), &g.device());
                let n = delta.shape().num_elements();
                let g = g.cast(FloatDType::F64) * delta.cast(FloatDType::F64);
                self.total += g.reshape([n]).sum().into_scalar::<f64>();
            }
        }
    }

    /// Adds `h * delta` to every (float64) weight.
    struct Shift {
        h: f64,
        k: u64,
    }

    impl ModuleMapper for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            self.k += 1;
            let (h, k) = (self.h, self.k);
            param.map(|t| {
                let delta = normal(1000 + k, t.dims(), &t.device()).cast(FloatDType::F64);
                (t.detach() + delta * h).detach().require_grad()
            })
        }
    }

    fn exact_mean(d: &Discriminator, x: &Tensor<4>) -> f64 {
        let v = host(exact_per_sample(d, x.clone()));
        v.iter().sum::<f64>() / v.len() as f64
    }

    /// `<d mean_i s_i^2 / d theta, delta>`.
    fn estimator_slope(d: &Discriminator, x: &Tensor<4>) -> f64 {
        let grads = logits_and_r1(d, x.clone()).1.mean().backward();
        let grads = GradientsParams::from_grads(grads, d);
        let mut dot = Dot {
            grads: &grads,
            k: 0,
            total: 0.0,
        };
        d.visit(&mut dot);
        dot.total
    }

    /// The weight gradient against the exact R1 gradient along a random weight direction: a
    /// float64 central difference of the exact R1 in weight space (step 1e-6, too small to flip
    /// LeakyReLU regions, across which R1 jumps).
    #[test]
    fn weight_gradient_matches_the_exact_r1_gradient() {
        let device = Device::flex().autodiff();
        let (x64, d64) = (images(true, &device), disc(false, true, &device));
        let h = 1e-6;
        let shifted = |h: f64| d64.clone().map(&mut Shift { h, k: 0 });
        let exact = (exact_mean(&shifted(h), &x64) - exact_mean(&shifted(-h), &x64)) / (2.0 * h);
        let err64 = (estimator_slope(&d64, &x64) - exact).abs() / exact.abs();
        // As training runs it: float32.
        let est32 = estimator_slope(&disc(false, false, &device), &images(false, &device));
        let err32 = (est32 - exact).abs() / exact.abs();
        eprintln!(
            "d R1/d theta along delta: exact {exact:.6e}; rel err float64 {err64:.2e}, float32 {err32:.2e}"
        );
        // Measured: 4.3e-11 (float64), 2.5e-7 (float32).
        assert!(err64 < 1e-8, "float64 relative error {err64:.2e}");
        assert!(err32 < 1e-5, "float32 relative error {err32:.2e}");
    }
}
