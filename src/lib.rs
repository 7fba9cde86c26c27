//! seqgan: SeQ-GAN tokenizers and generators on burn. The binary is a thin CLI over this library.

pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod encode;
pub mod eval;
pub mod image_io;
pub mod perceptual;
pub mod plot;
pub mod reconstruct;
pub mod sample;
pub mod tokenizer;
pub mod train;
pub mod transformer;
