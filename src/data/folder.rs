//! ImageFolder: `root/<class>/<image>`; classes sorted by folder name give the label indices
//! (so an ImageNet train folder gives the standard indices). Hidden entries (dot-files,
//! dot-folders, AppleDouble `._*`) are ignored at every level, so a stray `.ipynb_checkpoints`
//! never shifts the labels. A folder with images and no class sub-folders is one class named
//! after the folder, where the caller allows it ([`Layout`]). Empty class folders, unsupported
//! files, nested folders and looping links are reported, one warning line per kind.

use anyhow::{Result, bail};
use image::{ImageReader, RgbImage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::transform::to_rgb;

/// Default of `data.max_pixels`: 36 Mpx (6000 x 6000); ImageNet's largest images have ~12 Mpx.
pub const DEFAULT_MAX_PIXELS: u64 = 36_000_000;

/// File extensions read as images (case-insensitive).
pub const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// A scanned image folder.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    items: Vec<(PathBuf, usize)>,
    class_names: Vec<String>,
    skipped: Arc<Mutex<BTreeMap<PathBuf, String>>>,
    /// Larger images are skipped before decoding.
    max_pixels: u64,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether a folder without class sub-folders (images directly in the root) is accepted, as
/// one class named after the folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `root/<class>/<image>` only: a flat root is an error (labels would silently be wrong).
    Classes,
    /// Class folders, or a flat folder of images as a single class (evaluation sets, samples,
    /// or training data the user declared single-class).
    AllowFlat,
}

/// Hidden entries (dot-files, dot-folders, AppleDouble `._*`) are not data.
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Entries of `dir` that are not hidden, sorted.
fn sorted_entries(dir: &Path, notes: &mut ScanNotes) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read folder {}: {e}", dir.display()))?
    {
        let path = entry?.path();
        if is_hidden(&path) {
            notes.hidden += 1;
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// What a scan passed over, reported in one warning line per kind.
#[derive(Default, Debug)]
struct ScanNotes {
    hidden: usize,
    empty_classes: Vec<PathBuf>,
    unsupported: Vec<PathBuf>,
    nested: Vec<PathBuf>,
    loops: Vec<PathBuf>,
    root_files: Vec<PathBuf>,
}

impl ScanNotes {
    fn warn(&self) {
        let list = |v: &[PathBuf]| {
            let shown: Vec<String> = v.iter().take(3).map(|p| p.display().to_string()).collect();
            let more = if v.len() > 3 { ", ..." } else { "" };
            format!("{} ({}{more})", v.len(), shown.join(", "))
        };
        if self.hidden > 0 {
            eprintln!(
                "note: ignored {} hidden entries (dot-files, dot-folders, ._*)",
                self.hidden
            );
        }
        let kinds = [
            (
                &self.empty_classes,
                "empty class folders (kept as classes, so labels stay put)",
            ),
            (
                &self.unsupported,
                "files that are not png/jpg/jpeg/webp/bmp, skipped",
            ),
            (
                &self.nested,
                "folders nested inside class folders, not read",
            ),
            (
                &self.loops,
                "links that point back into the data (or nowhere), skipped",
            ),
            (
                &self.root_files,
                "files at the root beside the class folders, not read",
            ),
        ];
        for (v, what) in kinds {
            if !v.is_empty() {
                eprintln!("WARNING: {} {what}", list(v));
            }
        }
    }
}

/// A link that resolves to the root, one of its ancestors, or nothing.
fn is_loop(path: &Path, root: &Path) -> bool {
    if !path.is_symlink() {
        return false;
    }
    match (path.canonicalize(), root.canonicalize()) {
        (Ok(target), Ok(root)) => root.starts_with(&target),
        _ => true,
    }
}

/// The images in a class folder (or a flat root), noting what is passed over.
fn images_in(dir: &Path, root: &Path, notes: &mut ScanNotes) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for p in sorted_entries(dir, notes)? {
        if is_loop(&p, root) {
            notes.loops.push(p);
        } else if p.is_dir() {
            notes.nested.push(p);
        } else if is_image(&p) {
            images.push(p);
        } else {
            notes.unsupported.push(p);
        }
    }
    Ok(images)
}

impl ImageFolder {
    /// Scans `root` (class folders; a flat folder only with [`Layout::AllowFlat`]). Missing or
    /// empty folders are errors that say what was expected; what is passed over is reported.
    pub fn open(root: &Path, layout: Layout) -> Result<Self> {
        if !root.exists() {
            bail!("data folder {} does not exist", root.display());
        }
        if !root.is_dir() {
            bail!(
                "data path {} is not a folder (expected root/<class>/<image>)",
                root.display()
            );
        }
        let mut notes = ScanNotes::default();
        let entries = sorted_entries(root, &mut notes)?;
        let mut class_dirs = Vec::new();
        let mut loose = Vec::new();
        for p in entries {
            if is_loop(&p, root) {
                notes.loops.push(p);
            } else if p.is_dir() {
                class_dirs.push(p);
            } else {
                loose.push(p);
            }
        }
        let mut items = Vec::new();
        let mut class_names = Vec::new();
        if class_dirs.is_empty() {
            let images = images_in(root, root, &mut notes)?;
            if !images.is_empty() && layout == Layout::Classes {
                bail!(
                    "data folder {} holds {} images directly, not class folders \
                     (root/<class>/<image>): every image would get label 0. Move them into \
                     class folders, or declare a single-class dataset (`--set \
                     data.single_class=true` for training, `--single-class` for encode)",
                    root.display(),
                    images.len()
                );
            }
            let name = root
                .file_name()
                .map_or("images".into(), |n| n.to_string_lossy().into_owned());
            class_names.push(name);
            items.extend(images.into_iter().map(|p| (p, 0)));
        } else {
            notes.root_files = loose;
            for dir in class_dirs {
                let label = class_names.len();
                class_names.push(
                    dir.file_name()
                        .expect("dir has a name")
                        .to_string_lossy()
                        .into_owned(),
                );
                let images = images_in(&dir, root, &mut notes)?;
                if images.is_empty() {
                    notes.empty_classes.push(dir.clone());
                }
                items.extend(images.into_iter().map(|p| (p, label)));
            }
        }
        notes.warn();
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
            max_pixels: DEFAULT_MAX_PIXELS,
        })
    }

    /// Skips images with more than `max_pixels` pixels (before decoding them).
    pub fn with_max_pixels(self, max_pixels: u64) -> Self {
        Self { max_pixels, ..self }
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
        match decode_file(path, self.max_pixels) {
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

/// Decodes any supported file to RGB8; never panics (decoder panics become errors). Images of
/// more than `max_pixels` pixels are refused from their header, before any decoding.
pub fn decode_file(path: &Path, max_pixels: u64) -> std::result::Result<RgbImage, String> {
    let result = std::panic::catch_unwind(|| -> std::result::Result<RgbImage, String> {
        let open = || {
            ImageReader::open(path)
                .map_err(|e| e.to_string())?
                .with_guessed_format()
                .map_err(|e| e.to_string())
        };
        let (w, h) = open()?.into_dimensions().map_err(|e| e.to_string())?;
        if w == 0 || h == 0 {
            return Err("image has zero size".into());
        }
        let pixels = w as u64 * h as u64;
        if pixels > max_pixels {
            return Err(format!(
                "{w}x{h} = {:.1} Mpx is over the limit data.max_pixels = {:.1} Mpx",
                pixels as f64 / 1e6,
                max_pixels as f64 / 1e6
            ));
        }
        let img = open()?.decode().map_err(|e| e.to_string())?;
        Ok(to_rgb(img))
    });
    match result {
        Ok(r) => r,
        Err(_) => Err("decoder panicked".into()),
    }
}
