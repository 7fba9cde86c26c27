//! A GAN step data-parallel over replicas (see [`crate::run::replicas`]).
//!
//! Each micro-batch of `train.batch_size` images is split into one equal shard per replica, so
//! the data order is the single-device one whatever the device count. Generator and
//! discriminator stay in lockstep: every replica takes the generator step on the same weights
//! (forked from the main device), then the discriminator step; a parameter is gathered only in
//! the step that updates it (the discriminator's weight gradients from the generator pass are
//! never gathered). The usage-entropy term is that of the global batch: the replicas' mean soft
//! assignments are combined before the entropy is taken ([`Usage::Shared`]). R1 runs on the
//! same steps on every replica, on its own shard. Minibatch stddev is computed per replica, as
//! StyleGAN2 does, so with it on, a replicated run is not the single-device run.

use anyhow::{Context, Result};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

use super::loss::{DiscTerms, Terms, Usage, disc_terms, generator_loss};
use super::{GanPhase, GanState, StepOut, add, join};
use crate::data::Loader;
use crate::tokenizer::VqModel;

impl GanPhase<'_> {
    /// [`GanPhase::step`] over the replicas: the same update as one device at the same global
    /// batch, up to float rounding (and minibatch stddev, which is per replica).
    pub(super) fn step_replicated(
        &self,
        st: &mut GanState,
        loader: &mut Loader,
    ) -> Result<StepOut> {
        let t = &self.cfg.train;
        let l = &self.cfg.loss;
        let reps = self.replicas();
        let n = reps.count();
        let step = st.state.step;
        let gan = self.gan_on(step);
        let accum = t.grad_accum;
        let main = reps.main().clone();
        // The broadcast: this step's weights on every replica.
        let models: Vec<VqModel> = (0..n).map(|r| reps.place(&st.model, r)).collect();
        let discs: Vec<_> = (0..n)
            .map(|r| gan.then(|| reps.place(&st.disc, r)))
            .collect();
        let mut acc_g = GradientsAccumulator::new();
        let mut shards = Vec::with_capacity(accum);
        let mut indices = Vec::with_capacity(accum * n);
        let mut last = None;
        let (mut g_total, mut d_total) = (None, None);
        for _ in 0..accum {
            let batch = loader.next_batch().context(
                "the data loader found no readable image to fill a batch (see the skip report)",
            )?;
            st.state.batches_drawn += 1;
            st.state.images_seen += batch.len() as u64;
            let xs: Vec<Tensor<4>> = batch
                .split(n)
                .iter()
                .enumerate()
                .map(|(r, b)| b.to_tensor(reps.device(r)))
                .collect();
            // Forward on every replica, then the global soft usage, then each replica's loss.
            let fwd: Vec<_> = models
                .iter()
                .zip(&xs)
                .map(|(m, x)| m.forward(x.clone(), l.entropy_temperature))
                .collect();
            let shares: Vec<Tensor<2>> = fwd
                .iter()
                .map(|(_, q)| q.p_mean.clone().detach().to_device(&main) / n as f64)
                .collect();
            let total = shares
                .iter()
                .cloned()
                .reduce(|a, b| a + b)
                .expect("replicas");
            let mut parts = Vec::with_capacity(n);
            for (r, ((x_hat, q), x)) in fwd.into_iter().zip(&xs).enumerate() {
                let device = reps.device(r);
                let others = (total.clone() - shares[r].clone()).to_device(device);
                let usage = Usage::Shared {
                    others: Box::new(others),
                    replicas: n,
                };
                indices.push(q.indices.clone().to_device(&main));
                let terms = generator_loss(
                    l,
                    self.perceptual_of(r),
                    discs[r].as_ref(),
                    x.clone(),
                    x_hat.clone(),
                    q,
                    &usage,
                );
                let grads = (terms.loss.clone() / accum as f64).backward();
                let grads = GradientsParams::from_grads(grads, &models[r]);
                reps.gather(&mut acc_g, &st.model, grads);
                parts.push(terms);
                shards.push((r, x.clone(), x_hat.detach()));
            }
            let terms = Terms::combine(parts, &main);
            g_total = add(g_total, &terms.loss);
            last = Some(terms);
        }
        let mut non_finite = self.update_generator(st, step, acc_g.grads(), g_total);
        let mut d_out = None;
        if gan {
            let r1_now = (step - l.disc_start).is_multiple_of(l.r1_interval);
            let mut acc_d = GradientsAccumulator::new();
            let mut parts: Vec<DiscTerms> = Vec::with_capacity(n);
            for (i, (r, x, x_hat)) in shards.into_iter().enumerate() {
                let disc = discs[r].as_ref().expect("forked when the GAN is on");
                let terms = disc_terms(l, disc, x, x_hat, r1_now);
                let grads = (terms.loss.clone() / (accum * n) as f64).backward();
                reps.gather(
                    &mut acc_d,
                    &st.disc,
                    GradientsParams::from_grads(grads, disc),
                );
                parts.push(terms);
                if (i + 1) % n == 0 {
                    let step_terms = DiscTerms::combine(std::mem::take(&mut parts), &main);
                    d_total = add(d_total, &step_terms.loss);
                    d_out = Some(step_terms);
                }
            }
            let d_bad = self.update_discriminator(st, step, acc_d.grads(), d_total);
            non_finite = join(non_finite, d_bad);
        }
        st.state.step += 1;
        Ok(StepOut {
            terms: last.expect("grad_accum >= 1"),
            disc: d_out,
            indices,
            non_finite,
        })
    }
}
