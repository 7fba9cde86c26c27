//! ImageFolder: `root/<class>/<image>`; classes sorted by folder name give the label indices
//! (so an ImageNet train folder gives the standard indices). A folder with images and no class
//! sub-folders is one class named after the folder.

use anyhow::{Result, bail};
use image::{ImageReader, RgbImage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::transform::to_rgb;

/// File extensions read as images (case-insensitive).
pub const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// A scanned image folder.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    items: Vec<(PathBuf, usize)>,
    class_names: Vec<String>,
    skipped: Arc<Mutex<BTreeMap<PathBuf, String>>>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read folder {}: {e}", dir.display()))?
    {
        out.push(entry?.path());
    }
    out.sort();
    Ok(out)
}

impl ImageFolder {
    /// Scans `root`. Missing or empty folders are errors that say what was expected.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.exists() {
            bail!("data folder {} does not exist", root.display());
        }
        if !root.is_dir() {
            bail!(
                "data path {} is not a folder (expected root/<class>/<image>)",
                root.display()
            );
        }
        let entries = sorted_entries(root)?;
        let class_dirs: Vec<_> = entries.iter().filter(|p| p.is_dir()).cloned().collect();
        let mut items = Vec::new();
        let mut class_names = Vec::new();
        if class_dirs.is_empty() {
            let name = root
                .file_name()
                .map_or("images".into(), |n| n.to_string_lossy().into_owned());
            class_names.push(name);
            items.extend(
                entries
                    .into_iter()
                    .filter(|p| p.is_file() && is_image(p))
                    .map(|p| (p, 0)),
            );
        } else {
            for dir in class_dirs {
                let label = class_names.len();
                class_names.push(
                    dir.file_name()
                        .expect("dir has a name")
                        .to_string_lossy()
                        .into_owned(),
                );
                items.extend(
                    sorted_entries(&dir)?
                        .into_iter()
                        .filter(|p| p.is_file() && is_image(p))
                        .map(|p| (p, label)),
                );
            }
        }
        if items.is_empty() {
            bail!(
                "data folder {} has no images (expected root/<class>/<image> with extensions {})",
                root.display(),
                EXTENSIONS.join(", ")
            );
        }
        Ok(Self {
            root: root.to_path_buf(),
            items,
            class_names,
            skipped: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }
    pub fn label(&self, index: usize) -> usize {
        self.items[index].1
    }
    pub fn path(&self, index: usize) -> &Path {
        &self.items[index].0
    }

    /// Decodes image `index` as RGB8; a failure is recorded as a skip and returned as `None`.
    pub fn decode(&self, index: usize) -> Option<RgbImage> {
        let path = &self.items[index].0;
        match decode_file(path) {
            Ok(img) => Some(img),
            Err(reason) => {
                self.skipped
                    .lock()
                    .expect("skip log poisoned")
                    .insert(path.clone(), reason);
                None
            }
        }
    }

    /// Files skipped so far, with the reason.
    pub fn skipped(&self) -> Vec<(PathBuf, String)> {
        let log = self.skipped.lock().expect("skip log poisoned");
        log.iter().map(|(p, r)| (p.clone(), r.clone())).collect()
    }
}

/// Decodes any supported file to RGB8; never panics (decoder panics become errors).
pub fn decode_file(path: &Path) -> std::result::Result<RgbImage, String> {
    let result = std::panic::catch_unwind(|| -> std::result::Result<RgbImage, String> {
        let reader = ImageReader::open(path).map_err(|e| e.to_string())?;
        let reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
        let img = reader.decode().map_err(|e| e.to_string())?;
        if img.width() == 0 || img.height() == 0 {
            return Err("image has zero size".into());
        }
        Ok(to_rgb(img))
    });
    match result {
        Ok(r) => r,
        Err(_) => Err("decoder panicked".into()),
    }
}
