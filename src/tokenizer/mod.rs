//! The conv VQ tokenizer: encoder, quantiser, decoder, and the GAN discriminator.

pub mod attention;
pub mod blocks;
pub mod config;
pub mod decoder;
pub mod discriminator;
pub mod encoder;
pub mod quantizer;
pub mod run_config;
pub mod trained;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

pub use config::{DecoderAttentionConfig, DiscConfig, TokenizerModelConfig};
pub use decoder::Decoder;
pub use discriminator::Discriminator;
pub use encoder::Encoder;
pub use quantizer::{QuantOut, Quantizer};
pub use run_config::{
    FinetuneConfig, GanLossKind, LossConfig, PHASE2_PRESETS, PRESETS, TokenizerRunConfig,
    TrainConfig,
};
pub use trained::TrainedTokenizer;

use burn::store::ModuleSnapshot;

/// FNV-1a, 64 bit.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Encoder + codebook + decoder.
#[derive(Module, Debug)]
pub struct VqModel {
    pub encoder: Encoder,
    pub quantizer: Quantizer,
    pub decoder: Decoder,
}

impl VqModel {
    pub fn new(c: &TokenizerModelConfig, device: &Device) -> Self {
        Self {
            encoder: Encoder::new(c, device),
            quantizer: Quantizer::new(c.codebook_size, c.code_dim, device),
            decoder: Decoder::new(c, device),
        }
    }

    /// Reconstruction and quantiser outputs.
    pub fn forward(&self, x: Tensor<4>, entropy_temperature: f64) -> (Tensor<4>, QuantOut) {
        let q = self
            .quantizer
            .forward(self.encoder.forward(x), entropy_temperature);
        (self.decoder.forward(q.z_q.clone()), q)
    }

    /// Token maps `[B, h, w]` of images `[B, 3, H, W]`.
    pub fn encode(&self, x: Tensor<4>) -> Tensor<3, Int> {
        let z = self.encoder.forward(x);
        let [b, _, h, w] = z.dims();
        self.quantizer.forward(z, 1.0).indices.reshape([b, h, w])
    }

    /// Images from token maps.
    pub fn decode_indices(&self, indices: Tensor<3, Int>) -> Tensor<4> {
        self.decoder.forward(self.quantizer.lookup(indices))
    }

    /// `(name, parameter count)` of each part (the decoder's attention blocks, when present,
    /// are counted separately from the rest of the decoder).
    pub fn param_counts(&self) -> Vec<(&'static str, usize)> {
        let attn = self.decoder.attention_params();
        let mut parts = vec![
            ("encoder", self.encoder.num_params()),
            ("codebook", self.quantizer.num_params()),
            ("decoder", self.decoder.num_params() - attn),
        ];
        if attn > 0 {
            parts.push(("decoder attention", attn));
        }
        parts
    }

    /// A hash (FNV-1a 64, hex) of the encoder and codebook weights: names, sizes and bytes.
    /// Token maps are a function of exactly these, so two tokenizers with the same hash (a
    /// phase-1 run and the phase-2 runs made from it) make the same tokens.
    pub fn token_space_hash(&self) -> String {
        let mut h = Fnv::default();
        for (part, snapshots) in [
            ("encoder", self.encoder.collect(None, None, false)),
            ("codebook", self.quantizer.collect(None, None, false)),
        ] {
            let mut sorted: Vec<_> = snapshots
                .into_iter()
                .map(|t| {
                    let bytes = t.to_bytes().expect("weights are readable").to_vec();
                    (t.name.clone(), bytes)
                })
                .collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            h.write(part.as_bytes());
            for (name, bytes) in sorted {
                h.write(name.as_bytes());
                h.write(&(bytes.len() as u64).to_le_bytes());
                h.write(&bytes);
            }
        }
        format!("{:016x}", h.0)
    }

    /// Phase 2: encoder and codebook take no gradients (so the optimiser never sees them and
    /// token maps stay exactly those of phase 1).
    pub fn freeze_token_space(self) -> Self {
        Self {
            encoder: self.encoder.no_grad(),
            quantizer: self.quantizer.no_grad(),
            decoder: self.decoder,
        }
    }
}
