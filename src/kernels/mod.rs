//! Kernels the CPU device gets from us where burn-flex's are the limit, through burn's
//! backend-extension point (other devices use burn's ops unchanged).

pub mod attention;
pub mod conv;
pub mod dropout;
pub mod gelu;
mod simd;

use burn::backend::DispatchDevice;
use burn::tensor::Device;

pub use attention::attention;
pub use conv::{conv_options, conv2d, conv2d_with};
pub use dropout::dropout;
pub use gelu::gelu;

/// Whether `device` (autodiff or not) is the CPU (Flex) device, the one these kernels serve.
fn on_cpu(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}
