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
