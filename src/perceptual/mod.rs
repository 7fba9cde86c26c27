//! The semantic-enhanced perceptual loss (`L_low`, `L_sem`, `L_alpha`, LPIPS) on the frozen
//! VGG-16 of [`crate::pretrained::vgg16`].

pub mod config;
pub mod loss;

pub use config::{LogitMode, PerceptualConfig};
pub use loss::{PerceptualLoss, PerceptualTerms};
