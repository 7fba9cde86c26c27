//! Frozen VGG-16 and the semantic-enhanced perceptual loss.

pub mod loss;
pub mod vgg16;
pub mod weights;

pub use loss::{PerceptualLoss, PerceptualTerms};
pub use vgg16::Vgg16;
pub use weights::WeightFile;
