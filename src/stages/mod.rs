//! Training stages: phase 1 and phase 2 of the tokenizer (one GAN stage with the phase as a
//! parameter) and the generative transformer, each run under [`crate::run::driver`].

pub mod ema;
pub mod gan;
pub mod in_place;
pub mod phase2;
pub mod tokenizer;
pub mod transformer;
