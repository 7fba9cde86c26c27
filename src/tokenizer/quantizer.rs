//! Vector quantiser: nearest code by squared L2, straight-through estimator, codebook and
//! commitment losses, and the soft codebook-usage entropy (method.md, "Quantizer").

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Distribution, Int, Tensor};

/// Output of one quantisation.
pub struct QuantOut {
    /// Quantised latents with straight-through gradients to the encoder, `[B, D, h, w]`.
    pub z_q: Tensor<4>,
    /// Code index per position, `[B * h * w]` in row-major `(b, y, x)` order.
    pub indices: Tensor<1, Int>,
    /// `||sg[z_e] - z_q||^2` (mean).
    pub codebook_loss: Tensor<1>,
    /// `||z_e - sg[z_q]||^2` (mean).
    pub commit_loss: Tensor<1>,
    /// Entropy of the batch-mean soft assignment softmax(-D / T) (nats).
    pub usage_entropy: Tensor<1>,
    /// The batch-mean soft assignment itself, `[1, K]` (data-parallel runs combine the replicas'
    /// before taking the entropy, see [`usage_entropy`]).
    pub p_mean: Tensor<2>,
}

/// Entropy (nats) of a mean soft assignment `[1, K]`.
pub fn usage_entropy(p_mean: Tensor<2>) -> Tensor<1> {
    (p_mean.clone() * (p_mean + 1e-10).log()).sum().neg()
}

#[derive(Module, Debug)]
pub struct Quantizer {
    /// `[K, D]` code vectors.
    pub codebook: Param<Tensor<2>>,
}

impl Quantizer {
    pub fn new(codebook_size: usize, code_dim: usize, device: &Device) -> Self {
        let bound = 1.0 / codebook_size as f64;
        let codebook = Tensor::random(
            [codebook_size, code_dim],
            Distribution::Uniform(-bound, bound),
            device,
        );
        Self {
            codebook: Param::from_tensor(codebook),
        }
    }

    pub fn codebook_size(&self) -> usize {
        self.codebook.dims()[0]
    }

    /// Squared distances `[N, K]` between rows of `flat` `[N, D]` and the codes.
    fn distances(&self, flat: Tensor<2>) -> Tensor<2> {
        let e = self.codebook.val();
        let k = e.dims()[0];
        let zz = flat.clone().powi_scalar(2).sum_dim(1); // [N, 1]
        let ee = e.clone().powi_scalar(2).sum_dim(1).reshape([1, k]); // [1, K]
        zz + ee - flat.matmul(e.transpose()) * 2.0
    }

    /// Quantises `z_e` `[B, D, h, w]`; `temperature` scales the soft assignment of the entropy.
    pub fn forward(&self, z_e: Tensor<4>, temperature: f64) -> QuantOut {
        let [b, d, h, w] = z_e.dims();
        let n = b * h * w;
        let flat = z_e.permute([0, 2, 3, 1]).reshape([n, d]);
        let dist = self.distances(flat.clone());
        let indices = dist.clone().detach().argmin(1).reshape([n]);
        let z_q = self.codebook.val().select(0, indices.clone());
        let codebook_loss = (flat.clone().detach() - z_q.clone()).powi_scalar(2).mean();
        let commit_loss = (flat.clone() - z_q.clone().detach()).powi_scalar(2).mean();
        let logits = dist.neg() / temperature;
        let p_mean = softmax(logits.clone(), 1).mean_dim(0); // [1, K]
        let usage_entropy = usage_entropy(p_mean.clone());
        let st = flat.clone() + (z_q - flat).detach();
        QuantOut {
            z_q: st.reshape([b, h, w, d]).permute([0, 3, 1, 2]),
            indices,
            codebook_loss,
            commit_loss,
            usage_entropy,
            p_mean,
        }
    }

    /// Code vectors for indices `[B, h, w]` as latents `[B, D, h, w]`.
    pub fn lookup(&self, indices: Tensor<3, Int>) -> Tensor<4> {
        let [b, h, w] = indices.dims();
        let d = self.codebook.dims()[1];
        self.codebook
            .val()
            .select(0, indices.reshape([b * h * w]))
            .reshape([b, h, w, d])
            .permute([0, 3, 1, 2])
    }
}
