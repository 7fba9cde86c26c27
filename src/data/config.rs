//! Where training images come from.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Dataset, Layout};

/// Data source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// An ImageFolder path (`root/<class>/<image>`) or `builtin:shapes`.
    pub path: String,
    /// Number of images of the built-in dataset.
    pub builtin_len: usize,
    /// Random horizontal flips in training.
    pub hflip: bool,
    /// Accept a folder of images without class sub-folders as one class (otherwise an error:
    /// every label would be 0).
    pub single_class: bool,
    /// Images larger than this many pixels are skipped with a warning before they are decoded,
    /// so that a small file cannot take a run's memory (an 8000x8000 16-bit PNG is 0.5 MB on
    /// disk and 384 MB decoded).
    pub max_pixels: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: "builtin:shapes".into(),
            builtin_len: 10_000,
            hflip: true,
            single_class: false,
            max_pixels: super::folder::DEFAULT_MAX_PIXELS,
        }
    }
}

impl DataConfig {
    /// Opens the training data this config names.
    pub fn open(&self) -> Result<Dataset> {
        let layout = if self.single_class {
            Layout::AllowFlat
        } else {
            Layout::Classes
        };
        Ok(Dataset::open_with(&self.path, self.builtin_len, layout)?
            .with_max_pixels(self.max_pixels))
    }
}
