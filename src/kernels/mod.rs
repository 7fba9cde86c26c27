//! Kernels the CPU device gets from us where burn-flex's are the limit, through burn's
//! backend-extension point (other devices use burn's ops unchanged).

pub mod conv;

pub use conv::{conv2d, conv2d_with};
