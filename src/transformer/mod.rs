//! Generative transformers on token maps (method.md, "Generative transformers"): MaskGIT
//! (bidirectional, masked-token training) and GPT (causal, raster order).

pub mod batch;
pub mod config;
pub mod masking;
pub mod model;
pub mod sampling;
pub mod trained;

pub use config::{Arch, TransformerRunConfig};
pub use model::{Transformer, Vocab};
pub use trained::TrainedTransformer;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

/// The vocabulary of a run.
pub fn vocab(cfg: &TransformerRunConfig) -> Vocab {
    Vocab {
        codes: cfg.tokens.header.codebook_size,
        classes: cfg.tokens.header.class_names.len().max(1),
        arch: cfg.arch,
    }
}

/// Forces every lazily-initialised parameter to draw its initial value now.
struct Materialise;

impl ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// A freshly initialised transformer for a run config (seeded by `train.seed`). Parameters
/// are materialised here, so the initial weights depend on the seed alone and later random
/// draws (dropout, sampling noise) do not shift them.
pub fn build(cfg: &TransformerRunConfig, device: &Device) -> Transformer {
    device.seed(cfg.train.seed);
    let v = vocab(cfg);
    let n = cfg.tokens.header.tokens_per_entry();
    let model = Transformer::new(&cfg.model, v, v.seq_len(n), device);
    model.visit(&mut Materialise);
    model
}
