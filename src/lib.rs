//! seqgan: SeQ-GAN tokenizers and generators on burn. The binary is a thin CLI over this library.
//!
//! Layers, each importing only from those below it:
//! - [`cli`], [`commands`]: argument parsing and one handler per subcommand;
//! - [`stages`]: phase 1, phase 2 and the transformer as stages of the training driver;
//! - [`tokenizer`], [`transformer`], [`perceptual`], [`pretrained`], [`eval`], [`data`]: models,
//!   losses, pretrained networks, metrics and data;
//! - [`run`], [`config`], [`device`], [`kernels`]: run folders, checkpoints, metrics, progress,
//!   the driver, config mechanics, devices, CPU kernels burn lacks.

pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod host_alloc;
pub mod kernels;
pub mod perceptual;
pub mod pretrained;
pub mod run;
pub mod stages;
pub mod tokenizer;
pub mod transformer;
