//! Pretrained networks that are not ours and their weight loading: the VGG-16 of the perceptual
//! loss and LPIPS, and the FID Inception network of the evaluation (weights from files the user
//! supplies or the `scripts/` that convert registry packages; nothing is downloaded at run time).

pub mod inception;
pub mod vgg16;
pub mod weights;

pub use vgg16::Vgg16;
pub use weights::WeightFile;
