//! Evaluation: the FID Inception network, feature statistics, FID / IS, reconstruction metrics
//! (method.md, "Evaluation").

pub mod commands;
pub mod features;
pub mod fid;
pub mod inception;
pub mod linalg;
pub mod metrics;
pub mod npz;
pub mod tokenizer;
