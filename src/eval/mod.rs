//! Evaluation: the FID Inception network, feature statistics, FID / IS, reconstruction metrics
//! (method.md, "Evaluation").

pub mod features;
pub mod fid;
pub mod linalg;
pub mod metrics;
pub mod npz;
pub mod tokenizer;

use burn::tensor::Tensor;

/// A tensor's values on the host, as f32 (one device read).
pub(crate) fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("float data converts to f32")
}
