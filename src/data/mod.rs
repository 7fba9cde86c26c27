//! Data: image folders and the built-in dataset, transforms, a threaded batch loader, image
//! tensors <-> PNGs, and the token file format.

pub mod config;
pub mod folder;
pub mod idx;
pub mod image_io;
pub mod loader;
pub mod pass;
pub mod pool;
pub mod shapes;
pub mod tokens;
pub mod transform;

use anyhow::{Result, bail};
use image::RgbImage;
use std::path::{Path, PathBuf};

pub use config::DataConfig;
pub use folder::{ImageFolder, Layout};
pub use loader::{Batch, Loader, LoaderSpec, Order};
pub use pass::for_each_batch;
pub use shapes::Shapes;

/// Index offset of the held-out split of `builtin:shapes` (`builtin:shapes:val`).
pub const SHAPES_VAL_OFFSET: u64 = 1 << 40;

/// A labelled image source.
#[derive(Clone, Debug)]
pub enum Dataset {
    /// Files on disk.
    Folder(ImageFolder),
    /// `builtin:shapes` (or `builtin:shapes:val`, a disjoint held-out split).
    Shapes(Shapes),
}

impl Dataset {
    /// `spec` is a class-folder path (`root/<class>/<image>`), `builtin:shapes` or
    /// `builtin:shapes:val`.
    pub fn open(spec: &str, builtin_len: usize) -> Result<Self> {
        Self::open_with(spec, builtin_len, Layout::Classes)
    }

    /// Like [`Dataset::open`], also accepting a flat folder of images as one class (evaluation
    /// sets and sample folders, where labels do not matter).
    pub fn open_images(spec: &str, builtin_len: usize) -> Result<Self> {
        Self::open_with(spec, builtin_len, Layout::AllowFlat)
    }

    /// `spec` read with the given folder layout rule.
    pub fn open_with(spec: &str, builtin_len: usize, layout: Layout) -> Result<Self> {
        match spec {
            "builtin:shapes" => Ok(Self::Shapes(Shapes::new(builtin_len, 0))),
            "builtin:shapes:val" => Ok(Self::Shapes(Shapes::new(builtin_len, SHAPES_VAL_OFFSET))),
            s if s.starts_with("builtin:") => {
                bail!(
                    "unknown built-in dataset `{s}` (available: builtin:shapes, builtin:shapes:val)"
                )
            }
            s => Ok(Self::Folder(ImageFolder::open(Path::new(s), layout)?)),
        }
    }

    /// Skips folder images with more than `max_pixels` pixels, before decoding them.
    pub fn with_max_pixels(self, max_pixels: u64) -> Self {
        match self {
            Self::Folder(f) => Self::Folder(f.with_max_pixels(max_pixels)),
            other => other,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Folder(f) => f.len(),
            Self::Shapes(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn class_names(&self) -> Vec<String> {
        match self {
            Self::Folder(f) => f.class_names().to_vec(),
            Self::Shapes(_) => shapes::CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn label(&self, index: usize) -> usize {
        match self {
            Self::Folder(f) => f.label(index),
            Self::Shapes(s) => s.label(index),
        }
    }

    /// A short name of item `index` for output files: the file stem, or `class-index` for
    /// the built-in data.
    pub fn item_name(&self, index: usize) -> String {
        match self {
            Self::Folder(f) => f
                .path(index)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| index.to_string()),
            Self::Shapes(s) => format!("{}-{index}", shapes::CLASS_NAMES[s.label(index)]),
        }
    }

    /// Loads image `index` at a size with shorter side >= `res` (shapes are drawn at `res`);
    /// `None` means the file was unreadable and has been counted as skipped.
    pub fn load(&self, index: usize, res: usize) -> Option<RgbImage> {
        match self {
            Self::Folder(f) => f.decode(index),
            Self::Shapes(s) => Some(s.draw(index, res)),
        }
    }

    /// Checks, before any model is built, that at least `needed` images can be read: decodes
    /// images in order until `needed` succeed. An error gives the real count and the first
    /// failures.
    pub fn ensure_loadable(&self, needed: usize, res: usize) -> Result<()> {
        let mut ok = 0;
        for index in 0..self.len() {
            if ok >= needed {
                break;
            }
            ok += usize::from(self.load(index, res).is_some());
        }
        if ok < needed {
            let failures: Vec<String> = self
                .skipped()
                .iter()
                .take(3)
                .map(|(p, why)| format!("{}: {why}", p.display()))
                .collect();
            bail!(
                "{}: only {ok} of {} images could be read, fewer than one batch of {needed} \
                 (first failures: {})",
                self.describe(),
                self.len(),
                failures.join("; ")
            );
        }
        Ok(())
    }

    /// Unreadable files met so far.
    pub fn skipped(&self) -> Vec<(PathBuf, String)> {
        match self {
            Self::Folder(f) => f.skipped(),
            Self::Shapes(_) => Vec::new(),
        }
    }

    /// Prints the skip report (count and the first few files) if anything was skipped.
    pub fn report_skipped(&self) {
        let skipped = self.skipped();
        if skipped.is_empty() {
            return;
        }
        eprintln!(
            "skipped {} image file(s) that could not be read or were too large:",
            skipped.len()
        );
        for (path, reason) in skipped.iter().take(10) {
            eprintln!("  {}: {reason}", path.display());
        }
        if skipped.len() > 10 {
            eprintln!("  ... and {} more", skipped.len() - 10);
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Folder(f) => format!(
                "{} ({} images, {} classes)",
                f.root().display(),
                f.len(),
                f.class_names().len()
            ),
            Self::Shapes(s) => format!("builtin:shapes ({} images, 10 classes)", s.len()),
        }
    }
}
