//! The loss composition of a GAN step: the generator's L1 + `L_alpha` + VQ + usage entropy +
//! adversarial terms, and the discriminator's loss with lazy R1.

use burn::tensor::activation::{relu, softplus};
use burn::tensor::{Device, Int, Tensor};

use super::r1;
use crate::perceptual::PerceptualLoss;
use crate::tokenizer::quantizer::usage_entropy;
use crate::tokenizer::{Discriminator, GanLossKind, LossConfig, QuantOut, VqModel};

/// Loss terms of one generator step (device scalars; read only when logging).
pub struct Terms {
    pub loss: Tensor<1>,
    pub l1: Tensor<1>,
    pub perceptual: Tensor<1>,
    pub l_low: Option<Tensor<1>>,
    pub l_sem: Option<Tensor<1>>,
    pub codebook: Tensor<1>,
    pub commit: Tensor<1>,
    pub entropy: Tensor<1>,
    pub g_adv: Option<Tensor<1>>,
}

/// The discriminator's loss and, on R1 steps, the R1 value.
pub struct DiscTerms {
    pub loss: Tensor<1>,
    pub r1: Option<Tensor<1>>,
}

/// How the usage-entropy term sees the batch.
pub enum Usage {
    /// The whole batch is on this device.
    Local,
    /// One replica of a data-parallel step with `replicas` equal shards. `others` is the sum of
    /// the other replicas' mean soft assignments divided by `replicas` (detached, on this
    /// replica's device), so the entropy is that of the global batch and its gradient reaches
    /// this replica's share; every other term is this shard's mean divided by `replicas`, so
    /// the replicas' gradients sum to the single-device gradient.
    Shared {
        others: Box<Tensor<2>>,
        replicas: usize,
    },
}

/// The generator's terms on images `x`, with the adversarial term when `disc` is given. Returns
/// the terms, the detached reconstruction and the code indices.
pub fn generator_terms(
    l: &LossConfig,
    perceptual: &PerceptualLoss,
    model: &VqModel,
    disc: Option<&Discriminator>,
    x: Tensor<4>,
) -> (Terms, Tensor<4>, Tensor<1, Int>) {
    let (x_hat, q) = model.forward(x.clone(), l.entropy_temperature);
    let indices = q.indices.clone();
    let terms = generator_loss(l, perceptual, disc, x, x_hat.clone(), q, &Usage::Local);
    (terms, x_hat.detach(), indices)
}

/// The generator's loss from its forward pass (`x_hat`, `q` of images `x`).
pub fn generator_loss(
    l: &LossConfig,
    perceptual: &PerceptualLoss,
    disc: Option<&Discriminator>,
    x: Tensor<4>,
    x_hat: Tensor<4>,
    q: QuantOut,
    usage: &Usage,
) -> Terms {
    let l1 = (x_hat.clone() - x.clone()).abs().mean();
    let p = perceptual.forward(x_hat.clone(), x);
    let reconstruction = l1.clone() * l.l1
        + p.total.clone() * l.perceptual
        + q.codebook_loss.clone() * l.codebook
        + q.commit_loss.clone() * (l.codebook * l.beta);
    let (mut loss, entropy) = match usage {
        Usage::Local => (
            reconstruction - q.usage_entropy.clone() * l.entropy_gamma,
            q.usage_entropy,
        ),
        Usage::Shared { .. } => (reconstruction, q.usage_entropy),
    };
    let g_adv = disc.map(|d| {
        let logits = d.forward(x_hat.clone());
        let g = match l.gan_loss {
            GanLossKind::NonSaturating => softplus(logits.neg(), 1.0).mean(),
            GanLossKind::Hinge => logits.neg().mean(),
        };
        loss = loss.clone() + g.clone() * l.gan;
        g
    });
    let entropy = match usage {
        Usage::Local => entropy,
        Usage::Shared { others, replicas } => {
            let r = *replicas as f64;
            let global = usage_entropy(q.p_mean / r + (**others).clone());
            // Its gradient already carries this shard's 1/r (through p_mean / r); its value
            // is split 1/r per replica, so the replicas' losses sum to the global loss.
            let share = global.clone() - global.clone().detach() + global.clone().detach() / r;
            loss = loss / r - share * l.entropy_gamma;
            global
        }
    };
    Terms {
        loss,
        l1,
        perceptual: p.total,
        l_low: p.low,
        l_sem: p.sem,
        codebook: q.codebook_loss,
        commit: q.commit_loss,
        entropy,
        g_adv,
    }
}

impl Terms {
    /// The terms of a data-parallel step from its replicas' (on `main`): the shard means
    /// averaged, the losses summed (each is already its share), the global entropy kept.
    pub fn combine(parts: Vec<Terms>, main: &Device) -> Terms {
        let n = parts.len() as f64;
        let on = |t: &Tensor<1>| t.clone().detach().to_device(main);
        let mean = |f: &dyn Fn(&Terms) -> Tensor<1>| {
            parts
                .iter()
                .map(|t| on(&f(t)))
                .reduce(|a, b| a + b)
                .expect("replicas")
                / n
        };
        Terms {
            loss: parts
                .iter()
                .map(|t| on(&t.loss))
                .reduce(|a, b| a + b)
                .expect("replicas"),
            l1: mean(&|t| t.l1.clone()),
            perceptual: mean(&|t| t.perceptual.clone()),
            l_low: parts[0]
                .l_low
                .as_ref()
                .map(|_| mean(&|t| t.l_low.clone().expect("l_low"))),
            l_sem: parts[0]
                .l_sem
                .as_ref()
                .map(|_| mean(&|t| t.l_sem.clone().expect("l_sem"))),
            codebook: mean(&|t| t.codebook.clone()),
            commit: mean(&|t| t.commit.clone()),
            entropy: on(&parts[0].entropy),
            g_adv: parts[0]
                .g_adv
                .as_ref()
                .map(|_| mean(&|t| t.g_adv.clone().expect("g_adv"))),
        }
    }
}

/// The discriminator's loss on real `x` and reconstructed `x_hat`; with `with_r1`, the lazy
/// R1 penalty `E ||grad_x D(x)||^2` without double backward (see [`r1`]), weighted
/// gamma/2 x interval as in StyleGAN2, whose forward also gives the real logits.
pub fn disc_terms(
    l: &LossConfig,
    disc: &Discriminator,
    x: Tensor<4>,
    x_hat: Tensor<4>,
    with_r1: bool,
) -> DiscTerms {
    let (real, r1) = if with_r1 && l.r1_gamma > 0.0 {
        let (real, r1) = r1::logits_and_r1(disc, x);
        (real, Some(r1.mean()))
    } else {
        (disc.forward(x), None)
    };
    let fake = disc.forward(x_hat);
    let mut loss = match l.gan_loss {
        GanLossKind::NonSaturating => softplus(real.neg(), 1.0).mean() + softplus(fake, 1.0).mean(),
        GanLossKind::Hinge => relu(real.neg() + 1.0).mean() + relu(fake + 1.0).mean(),
    };
    if let Some(r1) = &r1 {
        loss = loss + r1.clone() * (0.5 * l.r1_gamma * l.r1_interval as f64);
    }
    DiscTerms { loss, r1 }
}

impl DiscTerms {
    /// The discriminator terms of a data-parallel step: its replicas' shard means averaged.
    pub fn combine(parts: Vec<DiscTerms>, main: &Device) -> DiscTerms {
        let n = parts.len() as f64;
        let mean = |v: Vec<Tensor<1>>| {
            v.into_iter()
                .map(|t| t.detach().to_device(main))
                .reduce(|a, b| a + b)
                .map(|t| t / n)
        };
        let r1 = parts
            .iter()
            .map(|d| d.r1.clone())
            .collect::<Option<Vec<_>>>();
        DiscTerms {
            loss: mean(parts.iter().map(|d| d.loss.clone()).collect()).expect("replicas"),
            r1: r1.and_then(mean),
        }
    }
}
