//! Evaluation: the FID Inception network, feature statistics, FID / IS, reconstruction metrics.

pub mod fid;
pub mod inception;
pub mod linalg;
